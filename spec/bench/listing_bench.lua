-- spec/bench/listing_bench.lua: how fast the admin commands read nginx's listings --
-- lua-cjson (what lua/mkv_admin.lua decodes them with) against the hand-written decoder
-- it replaced (lua/mkv_json.lua, taken from git history at run time), on the real
-- autoindex JSON of one leaf directory with many files.
--
--   luajit spec/bench/listing_bench.lua [--files N] [--runs R] [--old REV]
--                                       [--rebuild-old BUILD_DIR] [--keys K] [--dense]
--
-- Listing: N files (default 100000) named like base64 keys, with sizes from 1 MB to past
-- 1 GB (sparse files), in one directory served by deploy/volume (nginx, autoindex_format
-- json); the listing is fetched once. Each run decodes it with each decoder and walks the
-- entries as mkv_admin's walk does, repeating for at least a second; the sides take
-- turns, in alternating order. Prints entries/s per run, the medians over R runs
-- (default 5), and the ratio new/old of the medians. --old names the commit to take
-- lua/mkv_json.lua from (default: the parent of the commit that removed it, or HEAD
-- while it is still there).
--
-- With --rebuild-old (a build directory of the mkv from before, e.g. made with
-- `git worktree add` or `git archive` at that commit): also `mkv rebuild` of one volume of
-- K keys (default 100000) at their real paths, with that build's mkv and with
-- $MKV_BUILD/mkv (default build/), in turns, R runs each, into an empty index each time.
-- Prints seconds per run, keys/s, the ratio of the median times old/new and the median
-- of the per-run ratios. Keys spread over all 65536 leaves, a few per leaf; --dense keeps
-- only keys under /00/, so that each of those 256 leaves holds K/256 files, as every
-- leaf of a volume of 256 K keys would.
--
-- Figures only; nothing here asserts a time.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local mkv = require "mkv"

local opts = { files = 100000, runs = 5, keys = 100000 }
do
  local valued = { ["--files"] = "files", ["--runs"] = "runs", ["--keys"] = "keys", ["--old"] = "old",
                   ["--rebuild-old"] = "rebuild_old" }
  local i = 1
  while i <= #arg do
    local a, name, ok = arg[i], valued[arg[i]], false
    if a == "--dense" then
      opts.dense, ok = true, true
    elseif name and arg[i + 1] then
      opts[name] = (name == "old" or name == "rebuild_old") and arg[i + 1] or tonumber(arg[i + 1])
      ok = opts[name] ~= nil
      i = i + 1
    end
    if not ok then
      io.stderr:write("usage: luajit spec/bench/listing_bench.lua [--files N] [--runs R] [--old REV] " ..
        "[--rebuild-old BUILD_DIR] [--keys K] [--dense]\n")
      os.exit(2)
    end
    i = i + 1
  end
end

local function median(t)
  local s = {}
  for i, x in ipairs(t) do s[i] = x end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

local function sh_ok(cmd)
  local out, code = H.sh(cmd)
  if code ~= 0 then error(cmd .. "\n" .. out) end
  return out
end

-- The old decoder, from git history into a temp file, loaded, the file removed.
local function old_decoder()
  local git = "git -C " .. H.shq(H.root)
  local rev = opts.old
  if not rev then
    local gone = sh_ok(git .. " log -1 --format=%H --diff-filter=D HEAD -- lua/mkv_json.lua"):gsub("%s+$", "")
    rev = gone ~= "" and (gone .. "^") or "HEAD"
  end
  local tmp = H.tmpdir("oldjson") .. "/mkv_json.lua"
  sh_ok(git .. " show " .. H.shq(rev .. ":lua/mkv_json.lua") .. " > " .. H.shq(tmp))
  local json = dofile(tmp)
  os.remove(tmp)
  local sha = sh_ok(git .. " rev-parse --short " .. H.shq(rev)):gsub("%s+$", "")
  return json, sha
end

-- Files named like base64 keys (no '/': those sit in nested directories) in `dir`, each
-- name collected in `names`; sizes in 16 classes from 1 MB to 1.2 GB, as sparse files.
local function make_files(dir, n, key_of)
  local lists, paths = {}, {}
  local made, i = 0, 0
  while made < n do
    i = i + 1
    local rel = key_of(i)
    if rel then
      made = made + 1
      local c = made % 16
      lists[c] = lists[c] or {}
      table.insert(lists[c], rel)
      paths[#paths + 1] = rel
    end
  end
  for c, list in pairs(lists) do
    local f = dir .. "/list-" .. c
    H.write_file(f, table.concat(list, "\0") .. "\0")
    local size = 1048576 + c * 80 * 1048576 -- 1 MB .. 1.2 GB
    sh_ok(string.format("cd %s && xargs -0 -a %s truncate -s %d --", H.shq(dir .. "/data"), H.shq(f), size))
    os.remove(f)
  end
  return paths
end

-- What mkv_admin's walk does with a decoded listing: each file's name, by type.
local function walk(entries)
  local files = 0
  for _, e in ipairs(entries) do
    if e.type == "file" then
      local _ = "" .. e.name
      files = files + 1
    end
  end
  return files
end

local function decode_rate(decode, body, n)
  collectgarbage()
  collectgarbage()
  local reps, t0 = 0, H.now()
  local secs
  repeat
    local files = walk(decode(body))
    if files ~= n then error("the decoder found " .. files .. " files of " .. n) end
    reps = reps + 1
    secs = H.now() - t0
  until secs >= 1
  return n * reps / secs
end

local function listing_bench()
  local old, rev = old_decoder()
  local new = require "json"
  local base = H.tmpdir("listing")
  local leaf = base .. "/data/ab/cd"
  sh_ok("mkdir -p " .. H.shq(leaf))
  make_files(base, opts.files, function(i)
    local b64 = mkv.base64(string.format("bench/listing/key-%07d", i))
    if b64:find("/", 1, true) then return nil end
    return "ab/cd/" .. b64
  end)
  local vol = H.start_volume({ root = base .. "/data" })
  local url = "http://" .. vol.addr .. "/ab/cd/"
  local file = base .. "/listing.json"
  local fetch = {}
  for r = 1, opts.runs do
    local out = sh_ok(string.format("curl -s -f -o %s -w '%%{time_total}' %s", H.shq(file), H.shq(url)))
    fetch[r] = opts.files / tonumber(out)
  end
  local body = assert(H.read_file(file))
  vol:stop()
  print(string.format("# one leaf directory of %d files: a %.1f MB listing, which nginx serves at " ..
    "%.0f entries/s (curl, median of %d)", opts.files, #body / 1048576, median(fetch), opts.runs))
  print(string.format("# old: lua/mkv_json.lua at %s; new: lua-cjson, set up as in spec/json.lua " ..
    "and lua/mkv_admin.lua", rev))
  local rates, ratios = { old = {}, new = {} }, {}
  for r = 1, opts.runs do
    local order = r % 2 == 1 and { "old", "new" } or { "new", "old" }
    for _, side in ipairs(order) do
      rates[side][r] = decode_rate(side == "old" and old.decode or new.decode, body, opts.files)
    end
    ratios[r] = rates.new[r] / rates.old[r]
    print(string.format("run %d: old %.0f entries/s, new %.0f entries/s, new/old %.2fx", r, rates.old[r],
      rates.new[r], rates.new[r] / rates.old[r]))
  end
  local mo, mn = median(rates.old), median(rates.new)
  print(string.format("decode + walk, median of %d: old %.0f entries/s, new %.0f entries/s; " ..
    "new/old %.2fx (median of the per-run ratios %.2fx)", opts.runs, mo, mn, mn / mo, median(ratios)))
end

local function rebuild_bench()
  local old_bin = opts.rebuild_old .. "/mkv"
  local new_bin = H.mkv_bin
  local base = H.tmpdir("rebuildbench")
  sh_ok("mkdir -p " .. H.shq(base .. "/data"))
  -- Every key at its own path (/ab/cd/<base64>, nested where the base64 holds '/').
  local dirs, seen = {}, {}
  local paths, i = {}, 0
  while #paths < opts.keys do
    i = i + 1
    local p = mkv.key_path(string.format("bench/rebuild/key-%09d", i)):sub(2)
    if not opts.dense or p:sub(1, 3) == "00/" then
      paths[#paths + 1] = p
      local d = p:match("^(.*)/[^/]*$")
      if not seen[d] then seen[d] = true dirs[#dirs + 1] = d end
    end
  end
  H.write_file(base .. "/dirs", table.concat(dirs, "\0") .. "\0")
  H.write_file(base .. "/files", table.concat(paths, "\0") .. "\0")
  sh_ok(string.format("cd %s && xargs -0 -a %s mkdir -p -- && xargs -0 -a %s touch --",
    H.shq(base .. "/data"), H.shq(base .. "/dirs"), H.shq(base .. "/files")))
  local vol = H.start_volume({ root = base .. "/data" })
  local db = base .. "/index"
  local function rebuild(bin)
    sh_ok("rm -rf " .. H.shq(db))
    local t0 = H.now()
    local out = sh_ok(string.format("%s -volumes %s -replicas 1 -subvolumes 1 -db %s rebuild 2>&1",
      H.shq(bin), vol.addr, H.shq(db)))
    local secs = H.now() - t0
    local examined = tonumber(out:match("examined (%d+)"))
    if examined ~= opts.keys then error("rebuild examined " .. tostring(examined) .. " keys:\n" .. out) end
    return secs
  end
  print(string.format("# mkv rebuild of one volume, %d keys in %d directories; old %s, new %s",
    opts.keys, #dirs, old_bin, new_bin))
  rebuild(new_bin) -- untimed: the volume's directories into the page cache
  local times, ratios = { old = {}, new = {} }, {}
  for r = 1, opts.runs do
    local order = r % 2 == 1 and { "old", "new" } or { "new", "old" }
    for _, side in ipairs(order) do times[side][r] = rebuild(side == "old" and old_bin or new_bin) end
    ratios[r] = times.old[r] / times.new[r]
    print(string.format("run %d: old %.2f s, new %.2f s, old/new %.2fx", r, times.old[r], times.new[r],
      ratios[r]))
  end
  local mo, mn = median(times.old), median(times.new)
  print(string.format("rebuild, median of %d: old %.2f s (%.0f keys/s), new %.2f s (%.0f keys/s); " ..
    "time old/new %.2fx (median of the per-run ratios %.2fx)", opts.runs, mo, opts.keys / mo, mn,
    opts.keys / mn, mo / mn, median(ratios)))
  vol:stop()
end

local ok, err = pcall(function()
  listing_bench()
  if opts.rebuild_old then rebuild_bench() end
end)
pcall(H.cleanup)
if not ok then error(err, 0) end
