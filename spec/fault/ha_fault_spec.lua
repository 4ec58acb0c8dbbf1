-- The standby index under faults (README "High availability"), with the ledger of every
-- answer (spec/fault_helpers.lua) checked on both index nodes:
--   - kill -9 of the primary while writes are in flight, again and again (6 kills; 24
--     with MKV_FAULT_SOAK=1): each time the standby takes the lease and the writes,
--     every acknowledged write reads back from it, the killed node rejoins and catches
--     up, and reads back the same; the failover times are printed (kill -> first 201);
--   - the primary cut off from etcd and from the standby (nft in a private network
--     namespace, a three-member etcd): it stops acknowledging writes within its lease,
--     the standby takes over, and no write is acknowledged on both sides in conflicting
--     ways -- the same keys written through both nodes during the partition end up as
--     the ledger allows, with nothing acknowledged lost;
--   - the etcd member that leads etcd killed: writes go on (after at most a short
--     pause), nothing acknowledged is lost, the same node stays primary.
local H = require "helpers"
local A = require "api_support"
local F = require "fault_helpers"
local X = require "ha_helpers"
local NS = require "netns"

local function other(name) return name == "a" and "b" or "a" end

-- Every key of the ledger read through node `name` (mkv's redirect, then the volume) is
-- in a state the ledger allows. -> problems
local function check_reads(c, ledger, name)
  local rd = F.reader(c.nodes[name].port)
  local problems = {}
  for _, key in ipairs(ledger.keys) do
    local S = ledger.states[key]
    local got, err = rd:read(key)
    if not got then
      problems[#problems + 1] = name .. ": " .. err
    elseif not S[got] then
      problems[#problems + 1] = string.format("%s: %s reads as %s, the ledger allows %s%s", name, key,
        got, F.show_set(S), got == F.ABSENT and " (an acknowledged PUT is lost)" or "")
    else
      ledger:observe(key, got)
    end
  end
  rd:close()
  for _, a in ipairs(ledger.anomalies) do problems[#problems + 1] = "history " .. a end
  return problems
end

local function assert_reads(c, ledger, name, seed)
  F.assert_none(check_reads(c, ledger, name), ledger, seed, 3)
end

-- Waits until `name` takes writes; -> seconds since t0.
local function takes_writes(c, name, t0)
  local took
  H.eventually(function()
    local st = H.http("PUT", c.nodes[name].url .. "/probe/" .. string.format("%.6f", H.now()),
      { body = "p", timeout = 3 })
    if st == 201 then took = H.now() - t0 return true end
    return false, "PUT answered " .. tostring(st)
  end, 40 * H.slow, name .. " taking writes")
  return took
end

local function median(t)
  table.sort(t)
  local n = #t
  if n == 0 then return 0 end
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

describe("standby index under faults", function()
  setup(function() NS.enter() end)
  teardown(H.cleanup)

  it("kill -9 of the primary under writes, again and again: nothing acknowledged lost, "
     .. "the killed node rejoins", function()
    local seed = F.seed("ha kill -9")
    local rng = F.rng(seed)
    local kills = F.num_env("MKV_FAULT_SEEDS", F.soak and 24 or 6)
    local c = X.cluster({ ttl = "3s" })
    c:start("a")
    c:settled("a")
    c:start("b")
    c:settled("a")
    local ledger = F.ledger(c.nodes.a.dir .. "/ledger")
    local times = {}
    for k = 1, kills do
      local p = c:primary()
      assert(p, "no primary")
      local s = other(p)
      local node = c.nodes[p]
      local killed_at
      local target = { port = node.port,
                       kill9 = function() node.proc:kill9() killed_at = H.now() end }
      F.workload(target, ledger, rng, { conns = 4, keys_per_conn = 5, rounds = 8,
        kill_round = rng.int(2, 8), kill_after = rng.int(1, 4), kill_delay = rng.int(0, 30) / 1000,
        prefix = "/ha" .. k, min_size = 512, max_size = 16384 })
      if not killed_at then
        node.proc:kill9()
        killed_at = H.now()
      end
      times[#times + 1] = takes_writes(c, s, killed_at)
      assert_reads(c, ledger, s, seed)
      c:start(p)
      c:settled(s)
      assert_reads(c, ledger, p, seed)
    end
    local c2 = ledger:counts()
    io.stderr:write(string.format("# %d kills of the primary (ttl 3s): failover median %.1f s, "
      .. "max %.1f s; ops ok %d / fail %d / unknown %d\n", kills, median(times),
      math.max(unpack(times)), c2.ok, c2.fail, c2.unknown))
    assert.truthy(c2.ok > kills * 5, "too few acknowledged ops")
  end)

  it("the primary cut off from etcd and from the standby: it stops acknowledging within its "
     .. "lease, the standby takes over, nothing is acknowledged twice in conflict", function()
    local seed = F.seed("ha partition")
    local rng = F.rng(seed)
    local etcd = X.start_etcd(3)
    -- a reaches etcd through member 1 only, b through members 2 and 3: cutting member 1's
    -- client port cuts a off from etcd, and etcd keeps its quorum
    local c = X.cluster({ etcd = etcd, ttl = "3s", etcd_for = { a = { etcd.urls[1] },
                                                                b = { etcd.urls[2], etcd.urls[3] } } })
    c:start("a")
    c:settled("a")
    c:start("b")
    c:settled("a")
    local ledger = F.ledger(c.nodes.a.dir .. "/ledger")
    -- writes before
    for i = 1, 20 do
      local key = "/part/before/" .. i
      local body = "before " .. i
      ledger:record("PUT", key, H.md5_hex(body), (H.http("PUT", c.nodes.a.url .. key, { body = body })))
    end
    -- the partition
    local a = c.nodes.a
    -- (a's API stays reachable: clients on its side of the partition keep writing to it,
    -- and it must refuse them once its lease is over)
    NS.nft(string.format("add rule inet mkv out tcp dport { %d, %d } drop",
      etcd.members[1].client, a.repl))
    local t0 = H.now()
    -- the same keys written through both sides while it lasts (b passes its writes to
    -- a until it takes over, and they fail: a is unreachable)
    local both = {}
    while H.now() - t0 < 10 * H.slow do
      for _, via in ipairs({ "a", "b" }) do
        local key = "/part/during/" .. rng.int(1, 8)
        local body = via .. " " .. rng.next()
        local node = c.nodes[via]
        local st = H.http("PUT", "http://127.0.0.1:" .. node.port .. key, { body = body, timeout = 5 })
        ledger:record("PUT", key, H.md5_hex(body), st)
        if st == 201 then both[via] = (both[via] or 0) + 1 end
        if via == "a" and st == 201 then
          -- a may acknowledge only while its lease lasts (3 s - a margin)
          assert.truthy(H.now() - t0 < 3 * H.slow + 1, string.format(
            "the cut-off primary acknowledged a write %.1f s into the partition", H.now() - t0))
        end
      end
    end
    assert.equal("primary", c:role("b"))
    io.stderr:write(string.format("# partition: a acknowledged %d writes, b %d\n", both.a or 0, both.b or 0))
    assert.truthy((both.b or 0) > 0, "the standby never took over")
    -- healed: a rejoins as a standby of b and catches up
    NS.clear_nft()
    c:settled("b", 40)
    assert_reads(c, ledger, "b", seed)
    assert_reads(c, ledger, "a", seed)
  end)

  it("the etcd member that leads etcd killed: writes go on, nothing acknowledged lost", function()
    local seed = F.seed("ha etcd leader")
    local etcd = X.start_etcd(3)
    local c = X.cluster({ etcd = etcd, ttl = "5s" })
    c:start("a")
    c:settled("a")
    c:start("b")
    c:settled("a")
    local ledger = F.ledger(c.nodes.a.dir .. "/ledger")
    local leader
    H.eventually(function() leader = etcd:leader() return leader ~= nil end, 10, "an etcd leader")
    local before = c:primary()
    assert.truthy(before, "a primary before the etcd leader's death")
    local killed_at, last_fail
    for i = 1, 60 do
      local via = (i % 2 == 0) and "a" or "b"
      local key = "/el/" .. i
      local body = "v" .. i
      local st = H.http("PUT", c.nodes[via].url .. key, { body = body, timeout = 10 })
      ledger:record("PUT", key, H.md5_hex(body), st)
      if st ~= 201 then last_fail = H.now() end
      if i == 20 then
        etcd.members[leader].proc:kill9()
        killed_at = H.now()
      end
      H.sleep(0.05)
    end
    local pause = last_fail and killed_at and math.max(0, last_fail - killed_at) or 0
    io.stderr:write(string.format("# etcd leader killed: writes failed for %.1f s after it\n", pause))
    -- writes go on after at most a short pause
    if last_fail then
      assert.truthy(pause < 5 * H.slow, string.format("writes failed for %.1f s after the etcd leader's death", pause))
    end
    local p = c:primary()
    assert.truthy(p, "a primary after the etcd leader's death")
    -- the same node stays primary
    assert.equal(before, p)
    assert_reads(c, ledger, p, seed)
    assert_reads(c, ledger, other(p), seed)
    -- every write after etcd settled again succeeded
    for i = 61, 70 do
      assert.equal(201, (H.http("PUT", c.nodes.a.url .. "/el/" .. i, { body = "after" })))
    end
  end)
end)
