-- policies/default.lua: the Go original's placement, byte for byte.
--
-- A policy is a module of pure functions that the C core calls on each worker's Lua
-- state; it may use the helpers of `mkv` (md5, base64, md5_scores) and `mkv.config`
-- (replicas, subvolumes, volumes, md5sum, protect, and `policy`: the config's
-- policy_config), never I/O. The config picks, for each kind of policy, the module to take it from:
--   policies = { placement = "default", replicas = "default",
--                listing = "default", rebalance = "default" }
-- so an operator's module need only define the functions it changes.
local mkv = require "mkv"

local cfg = mkv.config
local byte, format, sort = string.byte, string.format, table.sort

local M = {}

-- Replication count: the same for every key (the -replicas flag).
function M.replicas(key)
  return cfg.replicas
end

-- Placement (src/lib.go:key2volume). Each volume scores md5(key .. volume); the
-- highest scores win, ties broken by config order (Go's sort.Stable; the config
-- refuses duplicate volumes, so ties cannot happen in practice). With subvolumes > 1,
-- each replica goes to /svXX of its volume, XX = upper-case hex of the big-endian
-- uint32 of score bytes 12..15 modulo the subvolume count.
-- The indexes of `volumes`, best first by `rank` (an array parallel to volumes; higher
-- wins), ties broken by config order. Shared with the zones and weighted policies.
function M.by_rank(rank)
  local order = {}
  for i = 1, #rank do order[i] = i end
  sort(order, function(a, b)
    local ra, rb = rank[a], rank[b]
    if ra ~= rb then return ra > rb end
    return a < b
  end)
  return order
end

-- A replica's entry in the record: the volume, or its /svXX from the key's score on it.
function M.replica(volume, score)
  local sv = cfg.subvolumes
  if sv <= 1 then return volume end
  local b1, b2, b3, b4 = byte(score, 13, 16)
  return format("%s/sv%02X", volume, (((b1 * 256 + b2) * 256 + b3) * 256 + b4) % sv)
end

-- The n volumes of highest rank, as the record names them (rank: one value per volume,
-- by index; scores: md5_scores, for the subvolume). Shared with weighted.lua.
function M.pick(volumes, scores, rank, n)
  local order = M.by_rank(rank)
  local out = {}
  for i = 1, n do
    local v = order[i]
    out[i] = M.replica(volumes[v], scores[v])
  end
  return out
end

function M.place(key, volumes, n)
  local scores = mkv.md5_scores(key, volumes)
  return M.pick(volumes, scores, scores, n)
end

-- The file of a key on a volume (src/lib.go:key2path): /<md5 hex 0-1>/<2-3>/<base64>.
function M.path(key)
  local h = mkv.md5_hex(key)
  return "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. mkv.base64(key)
end

-- Listing: how many keys one page may hold. `requested` is the client's limit (0 when
-- it gave none). The Go original answered 413 past a million keys; mkv ends the page
-- there instead and returns `next`, so a client can go on.
M.max_keys = 1000000
function M.list_limit(op, requested)
  if requested > 0 and requested < M.max_keys then return requested end
  return M.max_keys
end
-- A listing policy may also define show(op, key) -> boolean to hide records; when it is
-- absent (as here) the C core skips the call entirely.

-- Rebalance: given the volumes that hold a good copy (`have`) and where placement wants
-- the key (`want`), which copies to make and which to drop. The admin runtime copies
-- first, verifies, rewrites the record, and only then drops -- never the last good copy.
function M.rebalance(key, have, want)
  local has, wants = {}, {}
  for _, v in ipairs(have) do has[v] = true end
  for _, v in ipairs(want) do wants[v] = true end
  local copy, drop = {}, {}
  for _, v in ipairs(want) do
    if not has[v] then copy[#copy + 1] = v end
  end
  for _, v in ipairs(have) do
    if not wants[v] then drop[#drop + 1] = v end
  end
  return { copy = copy, drop = drop }
end

return M
