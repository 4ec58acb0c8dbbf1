-- policies/zones.lua: zone- (rack-) aware placement -- no two replicas of a key in one
-- zone, so losing a rack, a switch or a power feed loses at most one copy.
--
-- Each volume's zone comes from the config:
--   policies = { placement = "zones" },
--   policy_config = { zones = { ["10.0.1.1:3001"] = "rack-a", ["10.0.1.2:3001"] = "rack-a",
--                               ["10.0.2.1:3001"] = "rack-b", ["10.0.3.1:3001"] = "rack-c" } },
--
-- Volumes are ranked exactly as the default policy ranks them (md5(key .. volume),
-- highest first), and the replicas are the best-ranked volumes of distinct zones. So a
-- key moves only when a volume of a better rank, or of a zone it lacked, appears; and
-- with one volume per zone the placement is the default one. Subvolumes as the default.
local mkv = require "mkv"
local default = require "default"

local cfg = mkv.config
local zones = (cfg.policy and cfg.policy.zones) or error("zones policy: policy_config.zones is missing")
if type(zones) ~= "table" then error("zones policy: policy_config.zones must be a table volume -> zone") end

-- Checked once, when the module loads (so at startup): every volume has a zone, and
-- there are enough zones for the replica count. A volume without one would otherwise
-- fail only the keys whose ranking happens to reach it.
do
  local seen, nzones = {}, 0
  for _, vol in ipairs(cfg.volumes or {}) do
    local z = zones[vol]
    if type(z) ~= "string" or z == "" then
      error("zones policy: volume " .. vol .. " has no zone in policy_config.zones")
    end
    if not seen[z] then
      seen[z] = true
      nzones = nzones + 1
    end
  end
  if cfg.volumes and nzones < cfg.replicas then
    error(string.format("zones policy: %d replicas need %d zones, the volumes span only %d",
      cfg.replicas, cfg.replicas, nzones))
  end
end

local M = {}

function M.place(key, volumes, n)
  -- Every volume, not just those the walk below reaches: a missing zone fails every key.
  for _, vol in ipairs(volumes) do
    if not zones[vol] then error("zones policy: volume " .. vol .. " has no zone in policy_config.zones") end
  end
  local scores = mkv.md5_scores(key, volumes)
  local out, used = {}, {}
  for _, v in ipairs(default.by_rank(scores)) do
    local vol = volumes[v]
    local zone = zones[vol]
    if not used[zone] then
      used[zone] = true
      out[#out + 1] = default.replica(vol, scores[v])
      if #out == n then return out end
    end
  end
  -- Fewer zones than replicas among the volumes given: with every volume (placement)
  -- the core refuses the answer -- the load-time check above makes that a config
  -- error -- but on a handoff (mkv gives only the volumes that can take a copy now) one
  -- copy per zone that is left is what keeps the rule: fewer copies, never two in a zone.
  return out
end

M.path = default.path

return M
