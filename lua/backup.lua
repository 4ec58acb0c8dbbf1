-- lua/backup.lua: `mkv backup DIR` -- a consistent copy of the index, as a new LevelDB
-- directory that mkv and the Go original serve as it is.
--
-- The copy reads one LevelDB snapshot: every record as it was when the backup started,
-- unlinked ones and MD5s included (what `mkv rebuild` cannot find on the volumes),
-- whatever is written while it runs. Online (a server holds the index) it runs inside
-- the server while it serves; offline it opens the index itself. It writes DIR.partial
-- and renames it to DIR only once it is complete and flushed (no journal left for
-- goleveldb to drop), so DIR is either a whole backup or absent. DIR must be absent or
-- empty; the server's user must be able to create it.
local mkv = require "mkv"

local args = mkv.args
if #args ~= 1 or args[1]:sub(1, 1) == "-" then
  error("usage: mkv backup DIR (a new directory: the copy of the index)", 0)
end
local dir = args[1]

local b, err = mkv.backup(dir)
if not b then error(err, 0) end
mkv.progress({ phase = "records" })
local seen = 0
while true do
  local keys, bytes, done, ferr = b:poll()
  mkv.progress({ done = keys - seen })
  mkv.count("examined", keys - seen)
  seen = keys
  if done then
    if ferr then
      error(ferr, 0)
    end
    mkv.report(string.format("backup %s: %d %s, %.1f MB of keys and records", dir, keys,
      keys == 1 and "record" or "records", bytes / 1e6))
    break
  end
  mkv.sleep(0.1)
end
