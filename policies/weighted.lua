-- policies/weighted.lua: capacity-weighted placement -- a volume with twice the disk
-- gets twice the keys.
--
-- Weights come from the config (a volume without one weighs 1):
--   policies = { placement = "weighted" },
--   policy_config = { weights = { ["10.0.0.1:3001"] = 4, ["10.0.0.2:3001"] = 8 } },
--
-- Weighted rendezvous hashing: each volume draws u = md5(key .. volume) as a number in
-- (0, 1) and scores weight / -ln(u); the n highest scores win. A volume's share of first
-- replicas is its share of the total weight (with more replicas the heavy volumes' shares
-- flatten, since one key cannot take a volume twice); adding a volume moves only the keys
-- it wins -- its weight over the new total -- all of them onto it. Subvolumes as the
-- default policy.
local mkv = require "mkv"
local default = require "default"

local cfg = mkv.config
local byte, format, log = string.byte, string.format, math.log
local weights = (cfg.policy and cfg.policy.weights) or {}
if type(weights) ~= "table" then
  error("weighted policy: policy_config.weights must be a table volume -> weight")
end
local configured = {}
for _, vol in ipairs(cfg.volumes or {}) do configured[vol] = true end
for vol, w in pairs(weights) do
  if type(w) ~= "number" or w <= 0 or w ~= w or w == math.huge then
    error(format("weighted policy: the weight of %s must be a number above 0", tostring(vol)))
  end
  -- A weight for an address that is no volume is a typo that would go unnoticed.
  if cfg.volumes and not configured[vol] then
    error(format("weighted policy: policy_config.weights names %s, which is not a configured volume",
      tostring(vol)))
  end
end

local M = {}

-- The first 7 bytes of the score as a fraction in (0, 1): 56 bits fit a double exactly.
local function unit(score)
  local x = 0
  for i = 1, 7 do x = x * 256 + byte(score, i) end
  return (x + 0.5) / 72057594037927936 -- 2^56
end

function M.place(key, volumes, n)
  local scores = mkv.md5_scores(key, volumes)
  local rank = {}
  for i, vol in ipairs(volumes) do
    rank[i] = (weights[vol] or 1) / -log(unit(scores[i]))
  end
  return default.pick(volumes, scores, rank, n)
end

M.path = default.path

return M
