-- spec/bench/ha_bench.lua: the standby index (README "High availability"), as ratios
-- against references measured in the same run:
--   - 1 KB PUT rate through a primary with a sync standby, against an mkv without HA on
--     the same volumes, in turns (goal >= 0.8);
--   - the 302 rate of the standby against the primary's, in turns (goal >= 0.95);
--   - failover time: median of KILLS kill -9 of the primary (default ttl 5 s), from the
--     kill to the first 201 on the new primary -- against the lease TTL;
--   - catch-up: an empty standby joining a primary whose index holds RECORDS records
--     (made with ldbtool), until it is in sync -- records/s, against ldbtool writing
--     the same records (a C loop, batches of 10 000, no sync); `cp -r` of the index
--     directory is printed too;
--   - backup of that index (mkv backup, online): records/s against the same ldbtool.
--
--   luajit spec/bench/ha_bench.lua [RECORDS] [KILLS] [SECONDS]
--                                  (default 1 000 000 records, 10 kills, 5 turns)
--
-- From the repository root after deploy/setup (build/mkv, build/ldbtool). The issue's
-- 10 million records: `luajit spec/bench/ha_bench.lua 10000000`.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local B = require "bench.lib"
local X = require "ha_helpers"

local records = tonumber(arg[1]) or 1000000
local kills = tonumber(arg[2]) or 10
local turns = tonumber(arg[3]) or 5
local only_big = os.getenv("HA_BENCH_ONLY_BIG") -- the catch-up and backup figures alone

local function line(what, a, b, unit, note)
  io.write(string.format("%-58s %12.1f %12.1f %8.3fx %s%s\n", what, a, b, a / b, unit,
    note and ("  (" .. note .. ")") or ""))
  io.flush()
end

local scripts = B.wrk_scripts()
local etcd = X.start_etcd(1)

-- ---- PUT rate and 302 rate ----
if not only_big then
local c = X.cluster({ etcd = etcd, volumes = 3, replicas = 3, ttl = "5s", sync_timeout = "2s" })
c:start("a")
c:settled("a")
c:start("b")
c:settled("a")
local solo = H.start_mkv({ flags = { "-volumes", table.concat(c.addrs, ","), "-db",
  H.tmpdir("solo") .. "/index", "-replicas", "3", "-subvolumes", "1" } })

local put_turn = 0
local function put_side(url, prefix)
  return { url = url, script = scripts .. "/put.lua",
           args = function(t) put_turn = put_turn + 1 return { string.format("%s%d-%d/k", prefix, put_turn, t) } end }
end
local r = B.in_turns({ put_side(c.nodes.a.url, "/ha-put"), put_side(solo.url, "/solo-put") }, turns)
line("PUT 1 KB x3, primary with a sync standby / no HA, req/s", r[1], r[2], "req/s")
solo:stop()

for i = 1, 20 do
  assert(H.http("PUT", c.nodes.a.url .. "/ha-get/" .. i, { body = "g" }) == 201)
end
r = B.in_turns({ { url = c.nodes.b.url .. "/ha-get/1" }, { url = c.nodes.a.url .. "/ha-get/1" } }, turns)
line("GET 302 on the standby / on the primary, req/s", r[1], r[2], "req/s")

-- ---- failover time ----
local times = {}
for k = 1, kills do
  local p = c:primary()
  local s = p == "a" and "b" or "a"
  c.nodes[p].proc:kill9()
  local t0 = H.now()
  H.eventually(function()
    return H.http("PUT", c.nodes[s].url .. "/fo/" .. k, { body = "x", timeout = 2 }) == 201
  end, 60, "failover")
  times[#times + 1] = H.now() - t0
  c:start(p)
  c:settled(s, 60)
end
if kills > 0 then
  line(string.format("failover, median of %d kills / the lease TTL, s", kills), B.median(times), 5, "s",
    string.format("min %.1f, max %.1f", math.min(unpack(times)), math.max(unpack(times))))
end
c.nodes.a.proc:stop()
c.nodes.b.proc:stop()
end

-- ---- catch-up and backup of a big index ----
local big = X.cluster({ etcd = etcd, volumes = 3, replicas = 3, ttl = "5s", nodes = { "p", "q" },
                        cluster = "big" })
local fill = B.sh_ok(string.format("%s/ldbtool fill %s %d /bench/ha/ %s", H.build,
  H.shq(big.nodes.p.db), records, table.concat(big.addrs, ",")))
io.stderr:write("ha_bench: " .. fill)
-- The reference: the fastest a C loop writes the same records into a LevelDB (ldbtool,
-- 10 000 a batch, no sync); catch-up and backup both read and write every record once.
local fill_s = tonumber(fill:match("seconds=([%d%.]+)"))
H.sh("sync")
local cp_dir = H.tmpdir("cp")
local t0 = H.now()
B.sh_ok("cp -r " .. H.shq(big.nodes.p.db) .. " " .. H.shq(cp_dir .. "/copy") .. " && sync")
local cp_s = H.now() - t0
H.sh("rm -rf " .. H.shq(cp_dir .. "/copy"))

big:start("p")
big:settled("p", 60)
t0 = H.now()
big:start("q")
big:settled("p", 3600)
local catch_s = H.now() - t0
line(string.format("catch-up of %d records / ldbtool fill, records/s", records),
  records / catch_s, records / fill_s, "rec/s", string.format("%.1f s against %.1f s; cp -r of the index %.1f s",
  catch_s, fill_s, cp_s))

t0 = H.now()
local code, out = H.run_mkv({ "-c", big.nodes.p.dir .. "/config.lua", "backup", cp_dir .. "/backup" }, 3600)
local backup_s = H.now() - t0
assert(code == 0, out)
line(string.format("backup of %d records (online) / ldbtool fill, records/s", records),
  records / backup_s, records / fill_s, "rec/s", string.format("%.1f s against %.1f s", backup_s, fill_s))
H.cleanup()
