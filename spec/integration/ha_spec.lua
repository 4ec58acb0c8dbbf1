-- The standby index (README "High availability", include/mkv/ha.h): two index nodes over
-- the same volumes, a real etcd holding the leader lease, every index batch shipped to the
-- standby before a write is acknowledged. Roles settle; writes go through either node
-- (a standby passes them on, streamed); reads are answered by both; kill -9 of the
-- primary under writes loses no acknowledged write and the standby takes over; the old
-- primary rejoins; a standby that falls away is dropped from the sync record so that it
-- cannot be promoted, and comes back; strict mode refuses writes without a standby.
-- Then: an admin command sent to the standby runs on the primary (a backup on the
-- standby itself); deploy/proxy in front of both nodes goes on when the primary moves;
-- with etcd away writes stop within the lease and reads go on; each node's index is one
-- the Go original reads, with the same records.
local H = require "helpers"
local A = require "api_support"
local X = require "ha_helpers"

local function put(url, key, body, timeout)
  local st, _, b = H.http("PUT", url .. key, { body = body, timeout = timeout or 10 })
  return st, b
end

local function get(url, key)
  local st, _, body = H.http("GET", url .. key, { follow = true, timeout = 10 })
  return st, body
end

local function other(name) return name == "a" and "b" or "a" end

describe("standby index: two nodes, one etcd", function()
  local c
  setup(function()
    c = X.cluster({})
    c:start("a")
    c:settled("a") -- alone first: a is the primary
    c:start("b")
    c:settled("a")
  end)
  teardown(H.cleanup)

  it("roles settle: one primary, one standby in sync, both in the sync record", function()
    local ha = c:health("a").ha
    assert.equal("primary", ha.role)
    assert.equal("b", ha.sync)
    assert.equal("a,b", ha.sync_record)
    local hb = c:health("b").ha
    assert.equal("standby", hb.role)
    assert.equal("a", hb.primary)
    assert.is_true(hb.streaming)
    local st, _, m = H.http("GET", "http://" .. H.admin_addr(c.nodes.b.db) .. "/metrics")
    assert.equal(200, st)
    assert.truthy(m:find('mkv_ha_role{role="standby"} 1', 1, true), m)
    assert.truthy(m:find("mkv_ha_replication_lag_batches", 1, true))
  end)

  it("writes through either node; a read on the other node right after the 201 finds it", function()
    for i = 1, 20 do
      local via, there = (i % 2 == 0) and "a" or "b", (i % 2 == 0) and "b" or "a"
      local key = "/both/" .. i
      local st, b = put(c.nodes[via].url, key, "value " .. i)
      assert.equal(201, st, b)
      assert.same({ 200, "value " .. i }, { get(c.nodes[there].url, key) })
    end
    -- DELETE and UNLINK through the standby, listings on both
    assert.equal(204, (H.http("DELETE", c.nodes.b.url .. "/both/1")))
    assert.equal(204, (H.http("UNLINK", c.nodes.b.url .. "/both/2")))
    assert.equal(404, (get(c.nodes.a.url, "/both/1")))
    for _, n in ipairs({ "a", "b" }) do
      local st, _, keys = A.list(c.nodes[n].url, "/both/", "list")
      assert.equal(200, st)
      assert.equal(18, #keys)
      local ust, _, ukeys = A.list(c.nodes[n].url, "/both/", "unlinked")
      assert.equal(200, ust)
      assert.same({ "/both/2" }, ukeys)
    end
    -- a PUT of an existing key through the standby: the primary's answer, passed back
    local st, b = put(c.nodes.b.url, "/both/3", "again")
    assert.equal(403, st, b)
  end)

  it("a 64 MB PUT through the standby is streamed: its memory does not grow by the body", function()
    local pid = c.nodes.b.proc.pid
    local before = H.proc_status(pid, "VmRSS")
    local dir = H.tmpdir("big")
    H.sh("head -c 67108864 /dev/urandom > " .. H.shq(dir .. "/big"))
    local st = H.http("PUT", c.nodes.b.url .. "/big/1", { file = dir .. "/big", timeout = 60 })
    assert.equal(201, st)
    local after = H.proc_status(pid, "VmRSS")
    assert.truthy(after - before < 32 * 1024, string.format("RSS grew by %d kB", after - before))
    local md5 = H.sh("md5sum " .. H.shq(dir .. "/big")):match("^(%x+)")
    local gst, h = H.http("HEAD", c.nodes.a.url .. "/big/1")
    assert.equal(302, gst)
    assert.equal(md5, h["content-md5"])
  end)

  it("kill -9 of the primary under writes: the standby takes over, every acknowledged write "
     .. "reads back, the old primary rejoins and catches up", function()
    local p = c:primary()
    local s = other(p)
    local acked = {}
    local conn = A.connect(c.nodes[p].port)
    for i = 1, 50 do
      local key = "/fo/" .. i
      assert(conn:send(A.request("PUT", key, nil, "before " .. i)))
      local r = assert(conn:response(10))
      assert.equal(201, r.status, key)
      acked[key] = "before " .. i
    end
    conn:close()
    c.nodes[p].proc:kill9()
    local t0 = H.now()
    local first
    local reads, failed_reads = 0, {}
    local any_key = next(acked)
    H.eventually(function()
      -- reads on the standby never stop, during the failover too
      local rst = H.http("HEAD", c.nodes[s].url .. any_key, { timeout = 3 })
      reads = reads + 1
      if rst ~= 302 then failed_reads[#failed_reads + 1] = tostring(rst) end
      local st = put(c.nodes[s].url, "/fo/after", "after", 3)
      if st == 201 then first = H.now() - t0 return true end
      return false, "PUT answered " .. tostring(st)
    end, 30 * H.slow, s .. " taking writes")
    assert.same({}, failed_reads, reads .. " reads during the failover")
    io.stderr:write(string.format("# failover: the standby took writes %.1f s after the kill (ttl 3s)\n", first))
    assert.truthy(first < 15 * H.slow, string.format("took %.1f s", first))
    assert.equal("primary", c:role(s))
    for key, v in pairs(acked) do assert.same({ 200, v }, { get(c.nodes[s].url, key) }, key) end
    -- the old primary comes back as a standby and catches up
    c:start(p)
    c:settled(s)
    assert.same({ 200, "after" }, { get(c.nodes[p].url, "/fo/after") })
    for key, v in pairs(acked) do assert.same({ 200, v }, { get(c.nodes[p].url, key) }, key) end
  end)

  it("the standby goes away: the primary goes on alone (the sync record names it alone); "
     .. "the standby comes back and catches up", function()
    local p = c:primary()
    local s = other(p)
    c.nodes[s].proc:kill9()
    local t0 = H.now()
    assert.equal(201, (put(c.nodes[p].url, "/alone/1", "alone", 15)))
    io.stderr:write(string.format("# the first write without the standby: %.2f s (sync_timeout 1s)\n", H.now() - t0))
    H.eventually(function()
      local h = c:health(p)
      return h and h.ha.sync_record == p, h and h.ha.sync_record
    end, 10 * H.slow, "the sync record names " .. p .. " alone")
    for i = 2, 10 do assert.equal(201, (put(c.nodes[p].url, "/alone/" .. i, "alone"))) end
    c:start(s)
    c:settled(p)
    for i = 1, 10 do assert.same({ 200, "alone" }, { get(c.nodes[s].url, "/alone/" .. i) }) end
  end)

  it("a standby the sync record does not name is never promoted: with the primary gone it "
     .. "waits (writes 503); the primary back, it catches up", function()
    local p = c:primary()
    local s = other(p)
    c.nodes[s].proc:kill9()
    assert.equal(201, (put(c.nodes[p].url, "/only/1", "only on the primary", 15)))
    H.eventually(function()
      local h = c:health(p)
      return h and h.ha.sync_record == p
    end, 10 * H.slow, "the sync record names " .. p .. " alone")
    c.nodes[p].proc:kill9()
    c:start(s)
    H.sleep(6 * H.slow) -- two lease TTLs: the leader key is gone, and s may not take it
    assert.equal("standby", c:role(s))
    local st = put(c.nodes[s].url, "/only/2", "x", 5)
    assert.equal(503, st)
    c:start(p)
    c:settled(p)
    assert.same({ 200, "only on the primary" }, { get(c.nodes[s].url, "/only/1") })
  end)
end)

describe("standby index: ha.sync = strict", function()
  local c
  setup(function()
    c = X.cluster({ sync = "strict" })
    c:start("a")
    c:settled("a")
    c:start("b")
    c:settled("a")
  end)
  teardown(H.cleanup)

  it("without a standby in sync, writes are refused (503); with it back, they go on", function()
    assert.equal(201, (put(c.nodes.a.url, "/strict/1", "x")))
    c.nodes.b.proc:kill9()
    local st, body = put(c.nodes.a.url, "/strict/2", "x", 15)
    assert.equal(503, st, body)
    assert.equal(503, (put(c.nodes.a.url, "/strict/3", "x", 15)))
    c:start("b")
    c:settled("a")
    assert.equal(201, (put(c.nodes.a.url, "/strict/4", "x")))
    assert.same({ 200, "x" }, { get(c.nodes.b.url, "/strict/4") })
  end)
end)

describe("standby index: admin commands, deploy/proxy, etcd away, the Go original", function()
  local c
  setup(function()
    c = X.cluster({})
    c:start("a")
    c:settled("a")
    c:start("b")
    c:settled("a")
    for i = 1, 10 do assert.equal(201, (put(c.nodes.a.url, "/adm/" .. i, "adm " .. i))) end
  end)
  teardown(H.cleanup)

  it("an admin command sent to the standby runs on the primary; a backup runs on the standby", function()
    local code, out = H.run_mkv({ "-c", c.nodes.b.dir .. "/config.lua", "gc" }, 60)
    assert.equal(0, code, out)
    assert.truthy(out:find("is a standby index node: the primary runs gc", 1, true), out)
    assert.truthy(out:find("gc: examined", 1, true), out)
    local dir = H.tmpdir("bk") .. "/copy"
    code, out = H.run_mkv({ "-c", c.nodes.b.dir .. "/config.lua", "backup", dir }, 60)
    assert.equal(0, code, out)
    assert.falsy(out:find("the primary runs", 1, true), out)
    assert.truthy(out:find("backup " .. dir .. ": 10 records", 1, true), out)
  end)

  it("deploy/proxy in front of both nodes: the API goes on when the primary moves", function()
    local P = require "proxy_helpers"
    local tls = P.make_cert()
    local both = string.format("127.0.0.1:%d,127.0.0.1:%d", c.nodes.a.port, c.nodes.b.port)
    local proxy = P.start_proxy({ tls = tls, mkv = c.nodes.a, volumes = c.addrs,
                                  args = { "--mkv", both } })
    local cl = P.client(proxy)
    for i = 1, 10 do
      assert.equal(201, (cl.req("PUT", "/px/" .. i, { body = "px " .. i })))
      local st, _, body = cl.req("GET", "/px/" .. i)
      assert.same({ 200, "px " .. i }, { st, body })
    end
    local p = c:primary()
    c.nodes[p].proc:kill9()
    H.eventually(function()
      return cl.req("PUT", "/px/after", { body = "after", timeout = 5 }) == 201
    end, 30 * H.slow, "writes through the proxy after the failover")
    for i = 1, 10 do
      local st, _, body = cl.req("GET", "/px/" .. i)
      assert.same({ 200, "px " .. i }, { st, body })
    end
    c:start(p)
    c:settled(other(p))
  end)

  it("etcd away: writes stop within the lease TTL, reads go on on both nodes; etcd back: "
     .. "writes resume", function()
    local p = c:primary()
    c.etcd.members[1].proc:kill9()
    local t0 = H.now()
    H.eventually(function()
      return put(c.nodes[p].url, "/noetcd/" .. string.format("%.3f", H.now()), "x", 5) == 503
    end, 15 * H.slow, "writes refused without etcd")
    local took = H.now() - t0
    io.stderr:write(string.format("# etcd away: writes refused %.1f s after (ttl 3s)\n", took))
    assert.truthy(took < 3 * H.slow + 2, string.format("%.1f s", took))
    for _, n in ipairs({ "a", "b" }) do
      assert.same({ 200, "adm 3" }, { get(c.nodes[n].url, "/adm/3") })
    end
    c.etcd:restart(1)
    H.eventually(function()
      return put(c.nodes.a.url, "/etcd-back/" .. string.format("%.3f", H.now()), "x", 5) == 201
    end, 30 * H.slow, "writes once etcd is back")
    c:settled(c:primary())
  end)

  it("each node's index is one the Go original reads, and both hold the same records", function()
    local tool = H.go_tool(H.tmpdir("go"))
    local p = c:primary()
    local s = other(p)
    c.nodes[s].proc:stop()
    c.nodes[p].proc:stop()
    local rp, np = H.go_dump(tool, c.nodes[p].db)
    local rs, ns = H.go_dump(tool, c.nodes[s].db)
    assert.equal(np, ns)
    for k, v in pairs(rp) do assert.equal(v, rs[k], k) end
    assert.truthy(np >= 10)
  end)
end)
