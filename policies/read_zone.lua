-- policies/read_zone.lua: an example read policy -- send each client to a copy in its own
-- zone (rack, data centre) when there is one, so reads stay off the links between
-- zones. The client's zone comes from the X-Mkv-Client-Zone header, which the proxy in
-- front sets (deploy/nginx-proxy.conf: `proxy_set_header X-Mkv-Client-Zone ...`, say
-- from a map of $remote_addr); each volume's zone from the same map the zones placement
-- policy reads:
--   policies = { read = "read_zone" },
--   policy_config = { zones = { ["10.0.1.1:3001"] = "rack-a", ["10.0.2.1:3001"] = "rack-b" } },
--
-- order(key, volumes, client) gets the record's volumes ("host:port[/svXX]") and returns
-- them reordered: the client's zone first. Within each group the order is the key's
-- own (md5 of key .. volume, as placement scores), so the reads of a zone spread over
-- its copies rather than all going to one. mkv checks the answer (the same volumes,
-- each once) and still tries volumes that are down last.
local mkv = require "mkv"
local default = require "default"

local cfg = mkv.config
local zones = (cfg.policy and cfg.policy.zones) or error("read_zone policy: policy_config.zones is missing")

local M = {}

function M.order(key, volumes, client)
  local hosts = {}
  for i, v in ipairs(volumes) do hosts[i] = v:match("^[^/]+") end
  local scores = mkv.md5_scores(key, hosts)
  local rank = {}
  for i, h in ipairs(hosts) do
    -- the zone's volumes above every other; the key's score orders each group
    rank[i] = (client.zone and zones[h] == client.zone and "1" or "0") .. scores[i]
  end
  local out = {}
  for i, v in ipairs(default.by_rank(rank)) do out[i] = volumes[v] end
  return out
end

return M
