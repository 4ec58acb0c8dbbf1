-- policies/tmp_one_replica.lua: an example of an operator's policy.
--
-- Scratch data under /tmp/ is cheap to lose and expensive to triple: keep one copy of
-- it, and the configured count of everything else. Placement stays the default one, so
-- the single copy of a /tmp/ key lands on the key's first-choice volume.
--
-- Use it with, in config.lua:
--   policies = { replicas = "tmp_one_replica" }
local mkv = require "mkv"

local cfg = mkv.config
local M = {}

function M.replicas(key)
  if key:sub(1, 5) == "/tmp/" then return 1 end
  return cfg.replicas
end

return M
