-- spec/bench/availability_bench.lua: writes through a failed volume (README "Volume
-- health"), as ratios against references measured in the same run:
--   - the PUT rate with one of four volumes down (copies handed off to the next
--     volume) against the PUT rate with all four up, rounds taken in turns;
--   - the background repair's throughput once the volume is back (every handed-off key
--     moved where placement wants it, mkv_keys_underreplicated down to 0) against the
--     time of one `cp -r` of the same bytes.
--
--   luajit spec/bench/availability_bench.lua [KEYS] [SIZE_KB] [ROUNDS]
--                                             (default 400 keys of 256 KB, 3 rounds)
--
-- From the repository root after deploy/setup (build/mkv). Prints one line per figure:
-- the medians of each side and of their ratio, with the ratios' spread.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local B = require "bench.lib"
local O = require "ops_helpers"

local nkeys = tonumber(arg[1]) or 400
local size_kb = tonumber(arg[2]) or 256
local rounds = tonumber(arg[3]) or 3

local base = H.tmpdir("availbench")
local value = base .. "/value"
H.sh("head -c " .. (size_kb * 1024) .. " /dev/urandom > " .. H.shq(value))

local vols, addrs = {}, {}
for i = 1, 4 do
  vols[i] = H.start_volume({ root = base .. "/v" .. i })
  addrs[i] = vols[i].addr
end
local db = base .. "/index"
local m = H.start_mkv({ flags = { "-volumes", table.concat(addrs, ","), "-db", db, "-replicas", "3",
                                  "-subvolumes", "1", "-repair-interval", "200ms" },
                        config = 'return { repair_bandwidth = "10GB/s", repair_concurrency = 16, '
                          .. 'limits = { probe_interval = "200ms", probe_backoff = "500ms" } }' })
local admin = H.eventually(function() return H.admin_addr(db) end, 5, "admin address")

local function metric(name)
  local st, _, body = H.http("GET", "http://" .. admin .. "/metrics")
  assert(st == 200, "metrics")
  return O.get(O.parse(body), name)
end

local function state_of(addr)
  local json = require "json"
  local _, _, body = H.http("GET", "http://" .. admin .. "/health")
  return json.decode(body).volumes[addr].state
end

-- nkeys PUTs of the value, 8 at a time; returns PUTs per second.
local function put_round(prefix)
  local t0 = H.now()
  local out = H.sh(string.format("seq 1 %d | xargs -P 8 -I{} curl -s -o /dev/null -w '%%{http_code}\\n' "
    .. "-T %s %s/%s/k{} | sort | uniq -c", nkeys, H.shq(value), m.url, prefix))
  local took = H.now() - t0
  local ok = tonumber(out:match("(%d+) 201")) or 0
  assert(ok == nkeys, "not every PUT answered 201: " .. out)
  return nkeys / took
end

local function stop_volume(i)
  vols[i]:stop()
  H.eventually(function() return state_of(addrs[i]) == "down" end, 10, "volume down")
end

local function start_volume(i)
  vols[i] = H.restart_volume(vols[i])
  H.eventually(function() return state_of(addrs[i]) == "up" end, 10, "volume up")
end

-- ---- the PUT rate, all up against one down, in turns ----
local up_rates, down_rates, ratios = {}, {}, {}
for r = 1, rounds do
  local sides = {
    function() up_rates[#up_rates + 1] = put_round("up" .. r) end,
    function()
      stop_volume(4)
      down_rates[#down_rates + 1] = put_round("down" .. r)
      start_volume(4)
      H.eventually(function() return metric("mkv_keys_underreplicated") == 0 end, 300, "repaired")
    end,
  }
  if r % 2 == 0 then sides[1], sides[2] = sides[2], sides[1] end
  sides[1]()
  sides[2]()
  ratios[#ratios + 1] = down_rates[#down_rates] / up_rates[#up_rates]
end
table.sort(ratios)
print(string.format("PUT %d KB, 4 volumes, 3 replicas: one volume down %.1f/s, all up %.1f/s: "
  .. "ratio %.2fx (%.2f..%.2f over %d rounds)", size_kb, B.median(down_rates), B.median(up_rates),
  B.median(ratios), ratios[1], ratios[#ratios], rounds))

-- ---- the repair's throughput against cp -r ----
local repair_s, cp_s, rratios = {}, {}, {}
for r = 1, rounds do
  stop_volume(2)
  put_round("rep" .. r)
  local moved = metric("mkv_keys_underreplicated")
  local t0 = H.now()
  start_volume(2)
  H.eventually(function() return metric("mkv_keys_underreplicated") == 0 end, 600, "repaired")
  -- the volume's probe back to up is part of the figure: the repair waits for it
  repair_s[#repair_s + 1] = H.now() - t0
  -- Reference: cp -r of the same bytes (one copy of each moved key), caches dropped.
  local src, dst = base .. "/cpsrc" .. r, base .. "/cpdst" .. r
  H.sh("mkdir -p " .. src .. " && for i in $(seq 1 " .. moved .. "); do cp " .. H.shq(value) .. " " ..
    src .. "/f$i; done; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
  local c0 = H.now()
  H.sh("cp -r " .. src .. " " .. dst .. " && sync")
  cp_s[#cp_s + 1] = H.now() - c0
  H.sh("rm -rf " .. src .. " " .. dst)
  rratios[#rratios + 1] = repair_s[#repair_s] / cp_s[#cp_s]
  print(string.format("# round %d: %d keys repaired in %.2f s; cp -r of their bytes %.2f s", r, moved,
    repair_s[#repair_s], cp_s[#cp_s]))
end
table.sort(rratios)
print(string.format("repair of a volume's handed-off keys (%d KB each): %.2f s, cp -r %.2f s: "
  .. "ratio %.2fx the time (%.2f..%.2f over %d rounds)", size_kb, B.median(repair_s), B.median(cp_s),
  B.median(rratios), rratios[1], rratios[#rratios], rounds))
m:stop()
H.cleanup()
