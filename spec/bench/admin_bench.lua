-- spec/bench/admin_bench.lua: throughput of mkv rebuild and rebalance, against the time
-- of one `cp -r` of the same volume data (the reference, measured in the same run).
--
--   luajit spec/bench/admin_bench.lua [KEYS] [SIZE_KB]     (default 600 keys of 512 KB)
--
-- A 3-volume cluster (replicas 2, subvolumes 4) is filled through the API; then, for each
-- concurrency level: `rebuild` into an empty index (walks the volumes; no value is read),
-- `rebuild --md5` (reads every value once), and `rebalance --grace 0` after a 4th volume
-- is added (moves about half the replicas; no grace period, which would only add its
-- fixed 5 s), each from the same starting state. Prints a table:
-- keys/s, MB/s, and the time as a ratio of the `cp -r` reference.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"

local nkeys = tonumber(arg[1]) or 600
local size_kb = tonumber(arg[2]) or 512
local levels = { 1, 4, 16, 64 }

local function run(args)
  local t0 = H.now()
  local code, out = H.run_mkv(args, 3600)
  return H.now() - t0, code, out
end

local function main()
  local base = H.tmpdir("bench")
  local vols = {}
  for i = 1, 4 do vols[i] = H.start_volume({ root = base .. "/v" .. i }) end
  local three = vols[1].addr .. "," .. vols[2].addr .. "," .. vols[3].addr
  local four = three .. "," .. vols[4].addr
  local db = base .. "/index"
  local common = { "-replicas", "2", "-subvolumes", "4" }
  local function flags(vlist, extra)
    local f = { "-volumes", vlist, "-db", db }
    for _, x in ipairs(common) do f[#f + 1] = x end
    for _, x in ipairs(extra or {}) do f[#f + 1] = x end
    return f
  end
  -- Fill through the API.
  local m = H.start_mkv({ flags = flags(three) })
  local value = base .. "/value"
  H.sh("head -c " .. (size_kb * 1024) .. " /dev/urandom > " .. H.shq(value))
  local t0 = H.now()
  H.sh(string.format("seq 1 %d | xargs -P 8 -I{} curl -s -o /dev/null -T %s %s/bench/key-{}",
    nkeys, H.shq(value), m.url))
  local fill = H.now() - t0
  m:stop()
  local mb = nkeys * size_kb / 1024 * 2 -- both replicas
  print(string.format("# %d keys of %d KB, replicas 2: %.0f MB on 3 volumes; filled in %.1f s",
    nkeys, size_kb, mb, fill))

  -- The starting state, kept to restore before each run.
  H.sh("mkdir -p " .. base .. "/snap && for d in v1 v2 v3 index; do cp -a " .. base .. "/$d " ..
    base .. "/snap/$d; done")
  local function restore()
    H.sh("for d in v1 v2 v3 index; do rm -rf " .. base .. "/$d && cp -a " .. base .. "/snap/$d " ..
      base .. "/$d; done; rm -rf " .. base .. "/v4 && mkdir -p " .. base .. "/v4; sync")
  end
  -- Reference: one cp -r of the three volumes' data.
  H.sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
  t0 = H.now()
  -- (cp -r of several sources needs its target to exist; `|| exit 1` so a failed copy
  -- cannot pass for a fast one)
  local cpout, cpcode = H.sh("mkdir " .. base .. "/cpref && cp -r " .. base .. "/v1 " .. base .. "/v2 " .. base .. "/v3 " ..
    base .. "/cpref/ || exit 1; sync")
  if cpcode ~= 0 then error("the cp -r reference failed: " .. cpout) end
  local copied = H.sh("du -sm " .. base .. "/cpref | cut -f1")
  local ref = H.now() - t0
  H.sh("rm -rf " .. base .. "/cpref")
  print(string.format("# reference: cp -r of the volumes (%.0f MB; %s MB copied): %.2f s, %.0f MB/s",
    mb, tostring(copied):gsub("%s+$", ""), ref, mb / ref))
  print(string.format("%-22s %6s %10s %10s %10s %12s", "run", "conc", "seconds", "keys/s", "MB/s", "vs cp -r"))
  for _, c in ipairs(levels) do
    local cs = tostring(c)
    restore()
    H.sh("rm -rf " .. db)
    local secs, code = run(flags(three, { "rebuild", "--concurrency", cs }))
    print(string.format("%-22s %6d %10.2f %10.0f %10s %11.2fx%s", "rebuild", c, secs, nkeys / secs, "-",
      secs / ref, code == 0 and "" or "  (exit " .. code .. ")"))
    H.sh("rm -rf " .. db)
    secs, code = run(flags(three, { "rebuild", "--md5", "--concurrency", cs }))
    print(string.format("%-22s %6d %10.2f %10.0f %10.0f %11.2fx%s", "rebuild --md5", c, secs, nkeys / secs,
      mb / 2 / secs, secs / ref, code == 0 and "" or "  (exit " .. code .. ")"))
    restore()
    local out
    secs, code, out = run(flags(four, { "rebalance", "--grace", "0", "--concurrency", cs }))
    local changed = tonumber(out:match("changed (%d+)")) or 0
    local bytes = tonumber(out:match("; (%d+) bytes moved")) or 0
    print(string.format("%-22s %6d %10.2f %10.0f %10.0f %11.2fx  (%d keys moved)%s", "rebalance +1 volume", c,
      secs, nkeys / secs, bytes / 1048576 / secs, secs / ref, changed,
      code == 0 and "" or "  (exit " .. code .. ")"))
  end
  H.cleanup()
end

local ok, err = pcall(main)
if not ok then
  pcall(H.cleanup)
  error(err)
end
