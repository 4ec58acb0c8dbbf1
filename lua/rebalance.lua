-- lua/rebalance.lua: `mkv rebalance [--dry-run]` -- moves data to where placement wants it.
--
-- For each record whose volumes are not what placement says: find which volumes really
-- hold a good copy (HEAD; a volume that does not answer is not counted as missing, and
-- nothing is ever dropped from it), ask the rebalance policy which copies to make and
-- which to drop, copy first (streamed volume to volume) and verify each copy (size, and
-- the MD5 when the record has one), then rewrite the record -- keeping its state (an
-- unlinked key stays unlinked) and its MD5 -- and only then delete the surplus copies.
-- Never the last good one. Every step leaves a record that names good copies, so the
-- run can be interrupted at any point and started again. A surplus copy is deleted only
-- after --grace (default 5 s): a reader that mkv redirected there just before the record
-- changed still finds it.
local mkv = require "mkv"
local A = require "mkv_admin"

local opts = A.options({ ["dry-run"] = "flag", grace = "string" })
local dry = opts["dry-run"]
local grace = opts.grace and mkv.duration_ms(opts.grace)
if opts.grace and not grace then error("usage: --grace takes a duration such as 5s", 0) end
grace = (grace or 5000) / 1000

A.each_record(function(key, value)
  mkv.count("examined")
  mkv.progress({ done = 1 })
  if not mkv.lock(key) then
    mkv.report("skipped " .. A.show(key) .. ": a write of it is in flight; run rebalance again")
    mkv.count("skipped")
    return
  end
  local ok, res = pcall(A.move, key, { dry = dry, grace = grace })
  mkv.unlock(key)
  if not ok then error(res, 0) end
  if res == "moved" or res == "ordered" then
    mkv.count("changed")
  elseif res == "waiting" then
    mkv.count("skipped")
  end
end)

-- Every record is done; the run still waits for the surplus copies' grace period.
A.say_pending_drops(opts.grace)
