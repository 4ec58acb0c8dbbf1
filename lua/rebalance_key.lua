-- lua/rebalance_key.lua: REBALANCE /key, the Go original's method -- one key moved where
-- placement wants it by the code `mkv rebalance` runs (mkv_admin.lua's move: copy,
-- verify, rewrite the record, drop the surplus copies after the grace), under the key's
-- lock. The server runs it on the worker that took the request (api.c) and answers from
-- its first report: "status <code> [why]".
local mkv = require "mkv"
local A = require "mkv_admin"

local key = mkv.base64_decode(mkv.args[1] or "")
if not key then error("usage: rebalance_key BASE64-KEY", 0) end

local function answer(code, why)
  mkv.report("status " .. code .. (why and (" " .. why) or ""))
end

if not mkv.lock(key) then return answer(409) end
local value = mkv.index_get(key)
local rec = value and A.decode(value)
if not rec or rec.deleted then
  mkv.unlock(key)
  return answer(404)
end
local ok, res = pcall(A.move, key, { grace = 5 })
mkv.unlock(key)
if not ok then return answer(500, tostring(res)) end
if res == "balanced" or res == "ordered" or res == "moved" then return answer(204) end
if res == "gone" then return answer(404) end
if res == "waiting" then
  return answer(503, "a volume placement wants cannot take a copy now (down, full, read-only or draining)")
end
answer(500, "the move failed (see the server log)")
