-- The methods comma.ai's production fork added (pull requests on geohot/minikeyvalue)
-- and the Go original's REBALANCE, recognised by mkv before llhttp (which knows none of
-- them), and the state of a write in flight (README "The API"):
--   RELINK /key     an unlinked key live again -> 204; live, absent, interrupted -> 404
--   ?writing        keys whose write is in flight or died; ?unlinked no longer lists them
--   REBALANCE /key  one key moved where placement wants it -> 204; not live -> 404
--   the fork's "INIT" records read as writes in progress; `mkv index-flush` rewrites them
--   in mkv's form ("DELETEDINIT"), which the Go original reads as deleted
-- Every other unknown method is still 405; auth, metrics and the access log cover the
-- new ones.
local H = require "helpers"
local A = require "api_support"

local function req(c, method, key, opts)
  local st, h, body = H.http(method, c.url .. key, opts)
  return st, h, body
end

local function listed(c, prefix, op)
  local st, _, keys = A.list(c.url, prefix, op)
  assert.equal(200, st)
  return keys
end

-- Writes a raw record through an admin script (mkv run, inside the server).
local function put_raw(c, key, value)
  local dir = H.tmpdir("raw")
  local script = H.write_file(dir .. "/raw.lua", string.format([[
local mkv = require "mkv"
assert(mkv.index_put(%q, %q, true))
]], key, value))
  local code, out = c:run({ "run", script }, 30)
  assert.equal(0, code, out)
end

describe("RELINK, ?writing, REBALANCE and unknown methods", function()
  local c
  setup(function()
    c = H.cluster({ n = 3, replicas = 2, flags = { "-repair-interval", "0" } })
  end)
  teardown(H.cleanup)

  it("RELINK: an unlinked key is live again with its volumes and MD5 (204); a live, an "
     .. "absent or an interrupted key is 404", function()
    assert.equal(201, (req(c, "PUT", "/rl/a", { body = "relink me" })))
    local _, h0 = req(c, "HEAD", "/rl/a")
    assert.equal(404, (req(c, "RELINK", "/rl/a")))          -- live
    assert.equal(404, (req(c, "RELINK", "/rl/absent")))     -- absent
    assert.equal(204, (req(c, "UNLINK", "/rl/a")))
    assert.equal(404, (req(c, "GET", "/rl/a")))
    assert.equal(204, (req(c, "RELINK", "/rl/a")))
    local st, _, body = req(c, "GET", "/rl/a", { follow = true })
    assert.same({ 200, "relink me" }, { st, body })
    local _, h1 = req(c, "HEAD", "/rl/a")
    assert.equal(h0["content-md5"], h1["content-md5"])
    assert.equal(h0["key-volumes"], h1["key-volumes"])
    -- an interrupted write (mkv's own mark) is not an unlinked key
    put_raw(c, "/rl/dead", "DELETEDINIT" .. c.addrs[1] .. "," .. c.addrs[2])
    assert.equal(404, (req(c, "RELINK", "/rl/dead")))
    assert.same({ "/rl/dead" }, listed(c, "/rl/", "writing"))
    assert.same({}, listed(c, "/rl/", "unlinked"))
  end)

  it("?writing lists a write in flight, ?unlinked does not; the write done, neither", function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /wr/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
    H.eventually(function()
      local keys = listed(c, "/wr/", "writing")
      return #keys == 1 and keys[1] == "/wr/slow"
    end, 5, "the write in ?writing")
    assert.same({}, listed(c, "/wr/", "unlinked"))
    assert.same({}, listed(c, "/wr/", "list"))
    -- the key's lock is held by the write: RELINK, REBALANCE and REPLACE are refused
    assert.equal(409, (req(c, "RELINK", "/wr/slow")))
    assert.equal(409, (req(c, "REBALANCE", "/wr/slow")))
    assert.equal(409, (req(c, "REPLACE", "/wr/slow", { body = "x" })))
    conn:send("56789")
    local r = assert(conn:response(10))
    conn:close()
    assert.equal(201, r.status)
    assert.same({}, listed(c, "/wr/", "writing"))
    assert.same({ "/wr/slow" }, listed(c, "/wr/", "list"))
  end)

  it("?writing after a kill -9 mid-upload lists the interrupted write; mkv gc removes it",
     function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /wk/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    conn:send(A.bytes(50000, 1))
    H.eventually(function()
      local keys = listed(c, "/wk/", "writing")
      return #keys == 1
    end, 5, "the write in ?writing")
    c.mkv:kill9()
    conn:close()
    c:restart()
    assert.same({ "/wk/cut" }, listed(c, "/wk/", "writing"))
    assert.same({}, listed(c, "/wk/", "unlinked"))
    assert.equal(404, (req(c, "GET", "/wk/cut")))
    local code, out = c:run({ "gc" }, 60)
    assert.equal(0, code, out)
    assert.same({}, listed(c, "/wk/", "writing"))
    assert.equal(201, (req(c, "PUT", "/wk/cut", { body = "whole" })))
  end)

  it("the fork's INIT records: read as writes in progress; mkv gc removes them", function()
    put_raw(c, "/fk/init", "INIT" .. c.addrs[1] .. "," .. c.addrs[2])
    assert.equal(404, (req(c, "GET", "/fk/init")))
    assert.equal(404, (req(c, "RELINK", "/fk/init")))
    assert.same({ "/fk/init" }, listed(c, "/fk/", "writing"))
    assert.same({}, listed(c, "/fk/", "unlinked"))
    local code, out = c:run({ "gc" }, 60)
    assert.equal(0, code, out)
    assert.same({}, listed(c, "/fk/", "writing"))
  end)

  it("REBALANCE: 204 for a live key (moved where placement wants it), 404 otherwise", function()
    assert.equal(201, (req(c, "PUT", "/rb/a", { body = "rebalance me" })))
    assert.equal(204, (req(c, "REBALANCE", "/rb/a")))
    assert.equal(404, (req(c, "REBALANCE", "/rb/absent")))
    assert.equal(204, (req(c, "UNLINK", "/rb/a")))
    assert.equal(404, (req(c, "REBALANCE", "/rb/a")))
  end)

  it("REPLACE: creates an absent key, overwrites a live one beside its old copies, 411 "
     .. "empty, 409 under another write and through its grace, old value kept on failure",
     function()
    assert.equal(201, (req(c, "REPLACE", "/rp/a", { body = "first" })))
    local _, h1 = req(c, "HEAD", "/rp/a")
    assert.equal(201, (req(c, "REPLACE", "/rp/a", { body = "second value" })))
    local st, _, body = req(c, "GET", "/rp/a", { follow = true })
    assert.same({ 200, "second value" }, { st, body })
    local _, h2h = req(c, "HEAD", "/rp/a")
    assert.equal(H.md5_hex("second value"), h2h["content-md5"])
    assert.equal("balanced", h2h["key-balance"])
    -- beside the old copies: each entry in its other slot
    for v in h1["key-volumes"]:gmatch("[^,]+") do
      assert.truthy(h2h["key-volumes"]:find(v .. "/alt", 1, true), h2h["key-volumes"])
    end
    assert.equal(409, (req(c, "REPLACE", "/rp/a", { body = "too soon" }))) -- the grace
    assert.equal(409, (req(c, "DELETE", "/rp/a")))
    H.eventually(function()
      return #A.find_files(c.volumes, "/rp/a") == 2
    end, 10, "the old copies deleted after the grace")
    assert.equal(411, (req(c, "REPLACE", "/rp/a")))
    -- a failed REPLACE (a Content-MD5 that does not match): the old value, intact
    local bad = req(c, "REPLACE", "/rp/a", { body = "third", headers = { ["Content-MD5"] = string.rep("0", 32) } })
    assert.equal(400, bad)
    st, _, body = req(c, "GET", "/rp/a", { follow = true })
    assert.same({ 200, "second value" }, { st, body })
    H.eventually(function()
      return #A.find_files(c.volumes, "/rp/a") == 2
    end, 10, "the failed REPLACE's copies gone")
    -- and flips back to the first slot
    assert.equal(201, (req(c, "REPLACE", "/rp/a", { body = "third" })))
    local _, h3 = req(c, "HEAD", "/rp/a")
    assert.equal(h1["key-volumes"], h3["key-volumes"])
    H.sleep(2.5)
    local code, out = c:run({ "verify", "--deep" }, 60)
    assert.equal(0, code, out)
  end)

  it("REPLACE under readers: every read is one value or the other, whole", function()
    local values = { "A" .. string.rep("a", 200000), "B" .. string.rep("b", 300000) }
    assert.equal(201, (req(c, "PUT", "/rp/readers", { body = values[1] })))
    local dir = H.tmpdir("readers")
    -- three readers, each reading the key over and over until told to stop
    local script = H.write_file(dir .. "/read.sh", string.format([[
i=0
while [ ! -e %s/stop ]; do
  i=$((i+1))
  curl -s -L -o %s/r$1-$i %s/rp/readers
done
]], dir, dir, c.url))
    local readers = {}
    for r = 1, 3 do readers[r] = H.spawn("reader" .. r, { "sh", script, tostring(r) }) end
    local n = 0
    for i = 1, 6 do
      local v = values[i % 2 + 1]
      H.eventually(function()
        return req(c, "REPLACE", "/rp/readers", { body = v }) == 201
      end, 10, "REPLACE " .. i)
      n = n + 1
    end
    H.write_file(dir .. "/stop", "")
    -- each reader sees the stop file after its current read and exits by itself
    for r = 1, 3 do
      H.eventually(function() return not readers[r]:alive() end, 20, "reader " .. r .. " to stop")
      if readers[r]:alive() then readers[r]:stop(20) end
    end
    local reads, bad = 0, {}
    for f in H.sh("ls " .. H.shq(dir)):gmatch("r%d+%-%d+") do
      local got = H.read_file(dir .. "/" .. f) or ""
      reads = reads + 1
      if got ~= values[1] and got ~= values[2] then bad[#bad + 1] = f .. " (" .. #got .. " bytes)" end
    end
    io.stderr:write(string.format("# REPLACE under readers: %d replaces, %d reads\n", n, reads))
    assert.truthy(reads > 10, reads .. " reads")
    assert.same({}, bad)
  end)

  it("any other unknown method is 405 and names the methods there are", function()
    for _, m in ipairs({ "FOO", "PROPFIND", "RELINKX", "REPLAC", "MOVE" }) do
      local st, h = req(c, m, "/x")
      assert.equal(405, st, m)
      assert.truthy((h.allow or ""):find("RELINK", 1, true), m)
    end
  end)

  it("through the TLS proxy: RELINK, REPLACE and REBALANCE pass as they are", function()
    local P = require "proxy_helpers"
    local proxy = P.start_proxy({ tls = P.make_cert(), mkv = c.mkv, volumes = c.addrs })
    local cl = P.client(proxy)
    assert.equal(201, (cl.req("PUT", "/px/m", { body = "via proxy" })))
    assert.equal(204, (cl.req("REBALANCE", "/px/m")))
    assert.equal(204, (cl.req("UNLINK", "/px/m")))
    assert.equal(204, (cl.req("RELINK", "/px/m")))
    local st, _, body = cl.req("GET", "/px/m")
    assert.same({ 200, "via proxy" }, { st, body })
    assert.equal(201, (cl.req("REPLACE", "/px/m", { body = "replaced via proxy" })))
    st, _, body = cl.req("GET", "/px/m")
    assert.same({ 200, "replaced via proxy" }, { st, body })
    assert.equal(405, (cl.req("FOO", "/px/m")))
  end)

  it("/metrics counts the new methods by name", function()
    local st, _, m = H.http("GET", "http://" .. H.admin_addr(c.db) .. "/metrics")
    assert.equal(200, st)
    assert.truthy(m:find('method="RELINK"', 1, true), m)
    assert.truthy(m:find('method="REBALANCE"', 1, true), m)
    assert.truthy(m:find('method="REPLACE"', 1, true), m)
  end)
  it("a handover to the Go original (mkv index-flush) leaves no INIT record it would misread",
     function()
    put_raw(c, "/fk/handover", "INIT" .. c.addrs[1])
    put_raw(c, "/fk/handover-hash", "INITHASH" .. string.rep("a", 32) .. c.addrs[2])
    c.mkv:stop()
    local code, out = c:run({ "index-flush" }, 30)
    assert.equal(0, code, out)
    assert.truthy(out:find("2 records of comma.ai's fork", 1, true), out)
    local recs = H.go_dump(H.go_tool(H.tmpdir("go")), c.db)
    assert.equal("DELETEDINIT" .. c.addrs[1], recs["/fk/handover"])
    assert.equal("DELETEDINITHASH" .. string.rep("a", 32) .. c.addrs[2], recs["/fk/handover-hash"])
    for k, v in pairs(recs) do
      assert.is_nil(v:find("^INIT"), k .. " would read as live on a volume named INIT...")
    end
    c:restart()
    assert.same({ "/fk/handover", "/fk/handover-hash" }, listed(c, "/fk/", "writing"))
  end)
end)

describe("REBALANCE of a key placement moved, and the new methods under write protection", function()
  local v, dir, secret, m
  setup(function()
    v = { H.start_volume(), H.start_volume(), H.start_volume() }
    dir = H.tmpdir("rbm")
    secret = "methods-secret-0123456789"
    H.write_file(dir .. "/secret", secret .. "\n")
  end)
  teardown(H.cleanup)

  local function start(vols)
    local q = {}
    for i, x in ipairs(vols) do q[i] = string.format("%q", x.addr) end
    m = H.start_mkv({ dir = dir, port = m and m.port, config = string.format([[
return { db = %q, volumes = { %s }, replicas = 1, subvolumes = 1, repair_interval = "0",
         auth = { write_secret_file = %q } }]], dir .. "/index", table.concat(q, ", "), dir .. "/secret") })
  end

  it("moves the key's copy to the volume placement names now; 401 without the secret", function()
    start({ v[1] })
    local auth = { Authorization = "Bearer " .. secret }
    assert.equal(201, (H.http("PUT", m.url .. "/mv/k", { body = "moving", headers = auth })))
    m:stop()
    start({ v[2] }) -- placement can only name v[2] now
    local _, h = H.http("HEAD", m.url .. "/mv/k")
    assert.equal("unbalanced", h["key-balance"])
    assert.equal(401, (H.http("REBALANCE", m.url .. "/mv/k")))
    assert.equal(401, (H.http("RELINK", m.url .. "/mv/k")))
    -- v[1] is no longer in the config, but the record still names it: the copy comes from it
    assert.equal(204, (H.http("REBALANCE", m.url .. "/mv/k", { headers = auth })))
    local _, h2 = H.http("HEAD", m.url .. "/mv/k")
    assert.equal("balanced", h2["key-balance"])
    assert.equal(v[2].addr, h2["key-volumes"])
    local st, _, body = H.http("GET", m.url .. "/mv/k", { follow = true })
    assert.same({ 200, "moving" }, { st, body })
  end)
end)
