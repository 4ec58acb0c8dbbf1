-- lua/rebuild.lua: `mkv rebuild [--md5]` -- the index, from the files on the volumes.
--
-- Walks every volume (and subvolume) through nginx's autoindex, leaf directory by leaf
-- directory, so each key's copies on every volume are seen together: replicas of one key
-- are merged into one record, the volumes placement wants first (in placement order),
-- then the others. A key found on fewer volumes than its replica count is still
-- indexed. Keys whose base64 holds '/' are found in their nested directories (the Go
-- original loses them). A record the index already has keeps its state and its MD5: an
-- unlinked key stays unlinked (the original made it live again). --md5 reads every value
-- once and records its hash. A volume that cannot be read is an error, not an empty
-- volume: the run goes on with the others and exits non-zero.
local mkv = require "mkv"
local A = require "mkv_admin"

local opts = A.options({ md5 = "flag" })

local function rebuild_key(key, copies)
  mkv.count("examined")
  if not mkv.lock(key) then
    mkv.report("skipped " .. A.show(key) .. ": a write of it is in flight")
    mkv.count("skipped")
    return
  end
  local found = {}
  for _, c in ipairs(copies) do
    if not A.contains(found, c.root) then found[#found + 1] = c.root end
  end
  -- Placement order first, then the rest in the order they were found.
  local want = mkv.place(key) or {}
  local vols = {}
  for _, v in ipairs(want) do
    if A.contains(found, v) then vols[#vols + 1] = v end
  end
  for _, v in ipairs(found) do
    if not A.contains(vols, v) then vols[#vols + 1] = v end
  end
  local old = mkv.index_get(key)
  local rec = { deleted = false, volumes = vols }
  if old then
    local o = A.decode(old)
    if o then
      rec.deleted = o.deleted
      rec.writing = o.writing -- an interrupted write stays one (mkv gc's to remove)
      rec.hash = o.hash
    end
  end
  if opts.md5 then
    local size, md5 = mkv.md5_url(A.url(vols[1], mkv.path(key)))
    if not size then
      A.fail("cannot hash %s on %s: %s", A.show(key), vols[1], tostring(md5))
    else
      if rec.hash and not A.same_md5(rec.hash, md5) then
        mkv.report(string.format("%s: the index said MD5 %s, the value on %s has %s", A.show(key),
          rec.hash, vols[1], md5))
      end
      rec.hash = md5
    end
  end
  local value = A.encode(rec)
  if value ~= old then
    local ok, err = mkv.index_put(key, value)
    if not ok then
      A.fail("cannot write the record of %s: %s", A.show(key), tostring(err))
    else
      mkv.count("changed")
    end
  end
  mkv.unlock(key)
end

local stray = 0
A.walk(mkv.config.volumes, function(ab, cd, found)
  for b64, copies in pairs(found) do
    local key = A.key_of(ab, cd, b64)
    if key then
      rebuild_key(key, copies)
    else
      stray = stray + 1
      mkv.report("not a key file: " .. A.url(copies[1].root, "/" .. ab .. "/" .. cd .. "/" .. b64))
    end
  end
end)
if stray > 0 then
  mkv.log(stray == 1 and "1 file that is no key's was left alone"
    or stray .. " files that are no key's were left alone")
end
