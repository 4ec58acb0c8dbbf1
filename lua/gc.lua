-- lua/gc.lua: `mkv gc [--dry-run]` -- reclaims what UNLINK and failed writes left.
--
-- 1. Every soft-deleted record (an UNLINKed key, or a write that failed or is in
--    flight): under the key's lock -- a write in flight holds it, and is skipped -- its
--    files are deleted (a missing one is fine), then its record.
-- 2. Orphan files: files on a volume that no record points to (a failed write's copy
--    whose record is gone, a move that stopped half way). Each is deleted under its
--    key's lock after the record has been read again.
-- --dry-run reports what would go and changes nothing.
local mkv = require "mkv"
local A = require "mkv_admin"

local opts = A.options({ ["dry-run"] = "flag" })
local dry = opts["dry-run"]

A.each_record(function(key, value)
  mkv.count("examined")
  mkv.progress({ done = 1 })
  local rec = A.decode(value)
  if not rec or not rec.deleted then return end
  if not mkv.lock(key) then
    mkv.report("skipped " .. A.show(key) .. ": a write of it is in flight")
    mkv.count("skipped")
    return
  end
  value = mkv.index_get(key) -- again, under the lock
  rec = value and A.decode(value)
  if not rec or not rec.deleted then
    mkv.unlock(key)
    return
  end
  local path = mkv.path(key)
  if dry then
    mkv.report(string.format("would remove %s and its %d %s", A.show(key), #rec.volumes,
      #rec.volumes == 1 and "file" or "files"))
    mkv.count("changed")
    mkv.unlock(key)
    return
  end
  local failed = false
  if mkv.path_check(path) then -- a path nginx could not hold has no file to delete
    for _, v in ipairs(rec.volumes) do
      local st, err = mkv.http("DELETE", A.url(v, path))
      if st ~= 204 and st ~= 404 then
        failed = true
        mkv.report(string.format("cannot delete %s: %s", A.url(v, path), tostring(st or err)))
      end
    end
  end
  if failed then
    mkv.count("failed")
  else
    local ok, err = mkv.index_del(key)
    if ok then
      mkv.report("removed " .. A.show(key))
      mkv.count("changed")
    else
      A.fail("cannot remove the record of %s: %s", A.show(key), tostring(err))
    end
  end
  mkv.unlock(key)
end)

A.walk(mkv.config.volumes, function(ab, cd, found)
  for b64, copies in pairs(found) do
    local key = A.key_of(ab, cd, b64)
    if key then
      local function orphans()
        local value = mkv.index_get(key)
        local rec = value and A.decode(value)
        local out = {}
        for _, c in ipairs(copies) do
          if not rec or not A.contains(rec.volumes, c.root) then out[#out + 1] = c.root end
        end
        return out
      end
      if #orphans() > 0 then
        if not mkv.lock(key) then
          mkv.report("skipped orphan of " .. A.show(key) .. ": a write of it is in flight")
          mkv.count("skipped")
        else
          for _, root in ipairs(orphans()) do -- again, under the lock
            local url = A.url(root, "/" .. ab .. "/" .. cd .. "/" .. b64)
            if dry then
              mkv.report("would delete orphan " .. url)
              mkv.count("changed")
            else
              local st, err = mkv.http("DELETE", url)
              if st == 204 or st == 404 then
                mkv.report("deleted orphan " .. url)
                mkv.count("changed")
              else
                A.fail("cannot delete orphan %s: %s", url, tostring(st or err))
              end
            end
          end
          mkv.unlock(key)
        end
      end
    end
  end
end)
