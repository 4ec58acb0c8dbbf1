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

-- Deletes a surplus copy, under the key's lock, unless the record names that volume
-- again by now (a PUT after a DELETE, another rebalance).
local function drop_copy(key, vol, path, tries)
  if not mkv.lock(key) then
    if tries < 60 then mkv.after(1, drop_copy, key, vol, path, tries + 1) return end
    mkv.report(string.format("%s: left the surplus copy on %s (the key stayed busy): mkv gc will find it",
      A.show(key), vol))
    return
  end
  local value = mkv.index_get(key)
  local rec = value and A.decode(value)
  if not (rec and A.contains(rec.volumes, vol)) then
    local st, derr = mkv.http("DELETE", A.url(vol, path))
    if st ~= 204 and st ~= 404 then
      mkv.report(string.format("%s: could not delete the surplus copy on %s (%s): mkv gc will find it",
        A.show(key), vol, tostring(st or derr)))
    end
  end
  mkv.unlock(key)
end

-- A failure to move this key: "<key>: <what>", counted. `return fail(...)` ends the move.
local function fail(key, fmt, ...)
  return A.fail("%s: " .. fmt, A.show(key), ...)
end

local function move(key)
  local value = mkv.index_get(key)
  if not value then return end -- gone meanwhile
  local rec, err = A.decode(value)
  if not rec then return fail(key, "%s", err) end
  local want, perr = mkv.place(key)
  if not want then return fail(key, "placement failed: %s", tostring(perr)) end
  if #rec.volumes == 0 or A.same_list(rec.volumes, want) then return end
  local path = mkv.path(key)

  -- Which volumes hold a copy, and how big it is.
  local have, size, unknown = {}, nil, {}
  for _, v in ipairs(rec.volumes) do
    local st, len = mkv.http("HEAD", A.url(v, path))
    if st == 200 then
      have[#have + 1] = v
      size = size or len
      if len ~= size then
        return fail(key, "copies differ in size (%s has %d, another %d): left alone, run mkv verify",
          v, len, size)
      end
    elseif st ~= 404 then
      unknown[#unknown + 1] = v
    end
  end
  if #have == 0 then
    return fail(key, "no copy found on %s%s", table.concat(rec.volumes, ","),
      #unknown > 0 and " (some did not answer)" or "")
  end
  if A.same_set(have, want) and #unknown == 0 then
    -- The copies are where they should be; only the record's order differs.
    if not dry then
      rec.volumes = want
      local ok, werr = mkv.index_put(key, A.encode(rec), true)
      if not ok then return fail(key, "cannot write its record: %s", tostring(werr)) end
    end
    mkv.count("changed")
    return
  end
  local copy, drop = mkv.rebalance_plan(key, have, want)
  if not copy then return fail(key, "rebalance policy failed: %s", tostring(drop)) end
  if dry then
    mkv.report(string.format("would move %s: copy to %s, drop %s", A.show(key),
      #copy > 0 and table.concat(copy, ",") or "-", #drop > 0 and table.concat(drop, ",") or "-"))
    mkv.count("changed")
    return
  end

  -- 1. copies, each verified
  local holds = {}
  for _, v in ipairs(have) do holds[v] = true end
  for _, dst in ipairs(copy) do
    local src = have[1]
    local got, md5, code = mkv.copy(A.url(src, path), A.url(dst, path))
    local bad
    if not got then
      bad = tostring(md5)
    elseif got ~= size then
      bad = string.format("copied %d bytes of %d", got, size)
    elseif rec.hash and md5 ~= rec.hash then
      bad = string.format("MD5 %s, the record says %s", md5, rec.hash)
    end
    if bad then
      fail(key, "copy %s -> %s failed: %s", src, dst, bad)
      if got then mkv.http("DELETE", A.url(dst, path)) end
      return
    end
    holds[dst] = true
  end
  -- 2. the record: placement's volumes that hold a copy, in its order, then any good
  -- copy the plan keeps elsewhere. Its state and its MD5 stay.
  local dropping = {}
  for _, v in ipairs(drop) do dropping[v] = true end
  local vols = {}
  for _, v in ipairs(want) do
    if holds[v] then vols[#vols + 1] = v end
  end
  for _, v in ipairs(have) do
    if not dropping[v] and not A.contains(vols, v) then vols[#vols + 1] = v end
  end
  rec.volumes = vols
  local ok, werr = mkv.index_put(key, A.encode(rec), true)
  if not ok then return fail(key, "cannot write its record: %s", tostring(werr)) end
  -- 3. only now, and after the grace period, the surplus copies go
  for _, v in ipairs(drop) do
    if not A.contains(vols, v) then mkv.after(grace, drop_copy, key, v, path, 0) end
  end
  mkv.count("changed")
end

A.each_record(function(key, value)
  mkv.count("examined")
  mkv.progress({ done = 1 })
  if not mkv.lock(key) then
    mkv.report("skipped " .. A.show(key) .. ": a write of it is in flight; run rebalance again")
    mkv.count("skipped")
    return
  end
  local ok, err = pcall(move, key)
  mkv.unlock(key)
  if not ok then error(err, 0) end
end)
