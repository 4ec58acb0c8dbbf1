-- lua/repair.lua: the background repair -- run by the server on its admin thread every
-- repair_interval while it has work (core/adminsrv.c), with repair_bandwidth and
-- repair_concurrency as its bounds; `mkv run repair` is the same by hand.
--
-- Its work is the server's repair set (include/mkv/repair.h): keys that are not where
-- placement wants them -- fewer copies than their replica count, or copies on other
-- volumes (a PUT's handoff around a volume that was down or full, a replica that failed
-- under the write quorum, a volume draining or added). When a scan of the whole index
-- is due (after a start: the set lives in memory; after a reload: placement may have
-- changed) it first walks every record, comparing it with placement, and notes the
-- keys that differ. Then each noted key is moved where placement wants it, under its
-- lock, exactly as `mkv rebalance` moves a key (mkv_admin.lua's move): copy, verify,
-- rewrite the record, drop surplus copies after a grace period. A key whose target
-- volume cannot take a copy yet (still down, full) waits for a later pass; so does
-- one a client is writing.
local mkv = require "mkv"
local A = require "mkv_admin"

local opts = A.options({ grace = "string" })
local grace = opts.grace and mkv.duration_ms(opts.grace)
if opts.grace and not grace then error("usage: --grace takes a duration such as 5s", 0) end
grace = (grace or 5000) / 1000

if mkv.repair_scan() then
  local ok, err = pcall(A.each_record, function(key, value)
    local rec = A.decode(value)
    local want = rec and mkv.place(key)
    if want and #rec.volumes > 0 and not A.same_places(rec.volumes, want) then mkv.repair_note(key) end
  end)
  mkv.repair_scan_done()
  if not ok then error(err, 0) end
end

mkv.repair_pass()
mkv.progress({ phase = "keys" })
while true do
  local keys = mkv.repair_take(100)
  if #keys == 0 then break end
  for _, key in ipairs(keys) do
    mkv.spawn(function()
      mkv.count("examined")
      mkv.progress({ done = 1 })
      if not mkv.lock(key) then
        mkv.repair_retry(key) -- a client's write holds it: a later pass
        mkv.count("skipped")
        return
      end
      local ok, res = pcall(A.move, key, { grace = grace, check = true })
      mkv.unlock(key)
      if not ok then
        mkv.repair_retry(key, true)
        error(res, 0)
      end
      if res == "waiting" or res == "failed" then
        mkv.repair_retry(key, res == "failed") -- a failure is given up after a few passes
        if res == "waiting" then mkv.count("skipped") end
      else
        mkv.repair_done(key)
        if res == "moved" or res == "ordered" then mkv.count("changed") end
      end
    end)
  end
  mkv.join()
end
