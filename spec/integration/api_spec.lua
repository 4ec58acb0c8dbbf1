-- The HTTP API, request by request (ARCHITECTURE.md "Request semantics", GO-ORIGINAL.md
-- §3), against real nginx volumes and the real mkv binary. The failure cases of writes
-- live in write_safety_spec.lua.
local H = require "helpers"
local A = require "api_support"

local enc = H.urlencode_path

-- The volume proc whose address is host:port.
local function volume_at(c, addr)
  for _, v in ipairs(c.volumes) do
    if v.addr == addr then return v end
  end
end

local function split_commas(s)
  local out = {}
  for item in (s .. ","):gmatch("([^,]*),") do out[#out + 1] = item end
  return out
end

local function put(c, key, body, opts)
  opts = opts or {}
  opts.body = body
  return H.http("PUT", c.url .. enc(key), opts)
end

local function get_value(c, key)
  local st, _, body = H.http("GET", c.url .. enc(key), { follow = true })
  return st, body
end

-- ---------------------------------------------------------------------------------------
describe("PUT", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 3 }) end)
  teardown(H.cleanup)

  it("stores a new key: 201, and the bytes come back through the redirect", function()
    local v = A.bytes(3000, 1)
    assert.equal(201, (put(c, "/put/new", v)))
    local st, body = get_value(c, "/put/new")
    assert.equal(200, st)
    assert.equal(v, body)
    assert.same({ 1, 2, 3 }, A.holders(c.volumes, "/put/new"))
  end)

  it("refuses to overwrite a live key: 403, the value is unchanged", function()
    assert.equal(201, (put(c, "/put/twice", "first")))
    local st, h = put(c, "/put/twice", "second")
    assert.equal(403, st)
    assert.equal("0", h["content-length"])
    local _, body = get_value(c, "/put/twice")
    assert.equal("first", body)
  end)

  it("answers 411 to Content-Length: 0 and stores nothing", function()
    local st = put(c, "/put/empty", "")
    assert.equal(411, st)
    assert.equal(404, (H.http("GET", c.url .. "/put/empty")))
    local _, _, keys = A.list(c.url, "/put/empty", "unlinked")
    assert.same({}, keys)
    assert.same({}, A.find_files(c.volumes, "/put/empty"))
  end)

  it("answers 411 to a PUT with neither a body nor a length (raw socket)", function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /put/nolen HTTP/1.1\r\nHost: x\r\n\r\n")
    local r, err = conn:response(5)
    conn:close()
    assert.truthy(r, err)
    assert.equal(411, r.status)
    assert.equal(404, (H.http("GET", c.url .. "/put/nolen")))
  end)

  it("accepts a chunked body (curl, Transfer-Encoding: chunked): 201, bytes intact", function()
    local v = A.bytes(70000, 2)
    local st = put(c, "/put/chunked", v, { chunked = true })
    assert.equal(201, st)
    local st2, body = get_value(c, "/put/chunked")
    assert.equal(200, st2)
    assert.equal(#v, #body)
    assert.equal(v, body)
    local _, h = H.http("HEAD", c.url .. "/put/chunked")
    assert.equal(H.md5_hex(v), h["content-md5"])
  end)

  it("accepts a chunked body of several chunks on a raw socket", function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /put/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhello\r\n6\r\n world\r\n1;ext=1\r\n!\r\n0\r\n\r\n")
    local r, err = conn:response(5)
    conn:close()
    assert.truthy(r, err)
    assert.equal(201, r.status)
    local _, body = get_value(c, "/put/chunks")
    assert.equal("hello world!", body)
  end)

  it("stores a 0-byte value from an EMPTY chunked body (Go quirk kept): 201", function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /put/emptychunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    local r, err = conn:response(5)
    conn:close()
    assert.truthy(r, err)
    assert.equal(201, r.status)
    local st, h = H.http("HEAD", c.url .. "/put/emptychunked")
    assert.equal(302, st)
    assert.equal("d41d8cd98f00b204e9800998ecf8427e", h["content-md5"])
    local st2, body = get_value(c, "/put/emptychunked")
    assert.equal(200, st2)
    assert.equal("", body)
  end)

  it("overwrites an UNLINKed key: 201 and the new bytes", function()
    assert.equal(201, (put(c, "/put/relink", "old value")))
    assert.equal(204, (H.http("UNLINK", c.url .. "/put/relink")))
    assert.equal(201, (put(c, "/put/relink", "new value")))
    local st, body = get_value(c, "/put/relink")
    assert.equal(200, st)
    assert.equal("new value", body)
    local _, h = H.http("HEAD", c.url .. "/put/relink")
    assert.equal(H.md5_hex("new value"), h["content-md5"])
    local _, _, unl = A.list(c.url, "/put/relink", "unlinked")
    assert.same({}, unl)
  end)

  it("stores a key again after DELETE: 201", function()
    assert.equal(201, (put(c, "/put/again", "one")))
    assert.equal(204, (H.http("DELETE", c.url .. "/put/again")))
    assert.equal(201, (put(c, "/put/again", "two")))
    local _, body = get_value(c, "/put/again")
    assert.equal("two", body)
  end)

  it("Expect: 100-continue with curl on a >1 KB body: 201, bytes intact", function()
    local v = A.bytes(5000, 3)
    local st = put(c, "/put/expect-curl", v, { headers = { Expect = "100-continue" } })
    assert.equal(201, st)
    local _, body = get_value(c, "/put/expect-curl")
    assert.equal(v, body)
  end)

  it("Expect: 100-continue on a raw socket: 100 Continue comes before the body is sent", function()
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /put/expect-raw HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
      .. "Expect: 100-continue\r\n\r\n")
    local r1, err = conn:response(5)
    assert.truthy(r1, err)
    assert.equal(100, r1.status)
    assert.truthy(r1.head:match("^HTTP/1%.1 100 Continue\r\n"), r1.head)
    conn:send("hello world")
    local r2, err2 = conn:response(5)
    conn:close()
    assert.truthy(r2, err2)
    assert.equal(201, r2.status)
    local _, body = get_value(c, "/put/expect-raw")
    assert.equal("hello world", body)
  end)

  it("Expect: 100-continue to an existing key: 403 without a 100, Connection: close", function()
    assert.equal(201, (put(c, "/put/expect-exists", "here")))
    local conn = A.connect(c.mkv.port)
    conn:send("PUT /put/expect-exists HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
      .. "Expect: 100-continue\r\n\r\n")
    local r, err = conn:response(5)
    assert.truthy(r, err)
    assert.equal(403, r.status) -- the first answer, so no 100 came before it
    assert.equal("close", (r.headers.connection or ""):lower())
    assert.is_true(conn:wait_closed(3))
    assert.equal("", conn.buf) -- nothing after the 403 either
    conn:close()
    local _, body = get_value(c, "/put/expect-exists")
    assert.equal("here", body)
  end)

  describe("per-key lock", function()
    it("a PUT in flight makes PUT, DELETE and UNLINK of its key 409; other keys go on", function()
      local key = "/lock/slow"
      local total = 1000000
      local conn = A.connect(c.mkv.port)
      conn:send("PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: " .. total .. "\r\n\r\n")
      local first = A.bytes(100000, 9)
      conn:send(first)
      -- The PUT holds the lock once its record is marked (it shows in ?writing).
      H.eventually(function()
        local _, _, keys = A.list(c.url, "/lock/", "writing")
        return keys and A.contains(keys, key)
      end, 5, "the slow PUT's record")
      local ok, e = pcall(function()
        assert.equal(409, (put(c, key, "other")))
        assert.equal(409, (H.http("DELETE", c.url .. key)))
        assert.equal(409, (H.http("UNLINK", c.url .. key)))
        assert.equal(201, (put(c, "/lock/other", "fine")))
        assert.equal(404, (H.http("GET", c.url .. key))) -- readers see no live key yet
      end)
      local rest = A.bytes(total - #first, 10)
      conn:send(rest)
      local r, err = conn:response(20)
      conn:close()
      if not ok then error(e, 0) end
      assert.truthy(r, err)
      assert.equal(201, r.status)
      local st, body = get_value(c, key)
      assert.equal(200, st)
      assert.equal(total, #body)
      assert.equal(H.md5_hex(first .. rest), H.md5_hex(body))
      -- the lock is gone with the request
      assert.equal(204, (H.http("UNLINK", c.url .. key)))
    end)

    it("is let go before the answer: the next write, sent the moment it arrives, is never 409", function()
      -- Keep-alive connections spread over the workers; each write goes out on the
      -- next one as soon as the previous answer is read, so another worker takes it
      -- while the first may still be finishing its request.
      local conns = {}
      for i = 1, 4 do conns[i] = A.connect(c.mkv.port) end
      local n = 0
      local function send(method, key, body)
        n = n + 1
        local conn = conns[n % #conns + 1]
        conn:send(A.request(method, enc(key), nil, body))
        local r, err = conn:response(10)
        assert.truthy(r, err)
        return r.status
      end
      local seen = {}
      for i = 1, 300 do
        local key = "/lock/fast/" .. (i % 3)
        local got = { send("PUT", key, "v" .. i), send("UNLINK", key), send("DELETE", key) }
        local want = { 201, 204, 204 }
        for j = 1, 3 do
          if got[j] ~= want[j] then seen[#seen + 1] = string.format("round %d op %d: %d", i, j, got[j]) end
        end
      end
      for _, conn in ipairs(conns) do conn:close() end
      assert.equal("", table.concat(seen, ", "))
    end)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("GET and HEAD", function()
  local c
  local value = "0123456789abcdefghij"
  setup(function()
    c = H.cluster({ n = 3, replicas = 3 })
    assert.equal(201, (put(c, "/get/k", value)))
  end)
  teardown(H.cleanup)

  for _, method in ipairs({ "GET", "HEAD" }) do
    it(method .. " of a live key: 302 to a volume that holds it, with the key's headers", function()
      local st, h = H.http(method, c.url .. "/get/k")
      assert.equal(302, st)
      local addr, path = h.location:match("^http://([^/]+)(/.*)$")
      assert.truthy(addr, h.location)
      local v = volume_at(c, addr)
      assert.truthy(v, "Location points at no volume: " .. h.location)
      assert.equal(A.key_file("", "/get/k"), path)
      assert.is_true(A.exists(A.key_file(v.root, "/get/k")))
      assert.equal(H.md5_hex(value), h["content-md5"])
      assert.truthy(h["content-md5"]:match("^[0-9a-f]+$") and #h["content-md5"] == 32)
      assert.equal("balanced", h["key-balance"])
      local vols = split_commas(h["key-volumes"])
      assert.equal(3, #vols)
      local seen = {}
      for _, kv in ipairs(vols) do
        assert.truthy(volume_at(c, kv), "unknown volume in Key-Volumes: " .. kv)
        assert.is_nil(seen[kv])
        seen[kv] = true
      end
      assert.equal("0", h["content-length"])
      local st2, _, body = H.http("GET", h.location)
      assert.equal(200, st2)
      assert.equal(value, body)
    end)

    it(method .. " of a missing key: 404 with Content-Length: 0", function()
      local st, h = H.http(method, c.url .. "/get/missing")
      assert.equal(404, st)
      assert.equal("0", h["content-length"])
      assert.is_nil(h.location)
      assert.is_nil(h["content-md5"])
    end)
  end

  it("an UNLINKed key: 404 that still carries Content-Md5 (Go quirk)", function()
    assert.equal(201, (put(c, "/get/unlinked", "soon hidden")))
    assert.equal(204, (H.http("UNLINK", c.url .. "/get/unlinked")))
    for _, method in ipairs({ "GET", "HEAD" }) do
      local st, h = H.http(method, c.url .. "/get/unlinked")
      assert.equal(404, st)
      assert.equal("0", h["content-length"])
      assert.equal(H.md5_hex("soon hidden"), h["content-md5"])
      assert.is_nil(h.location)
    end
  end)

  it("a Range read after the redirect: 206 with the right 4 bytes", function()
    local st, h, body = H.http("GET", c.url .. "/get/k", { follow = true, range = "0-3" })
    assert.equal(206, st)
    assert.equal("0123", body)
    assert.equal("4", h["content-length"])
    local st2, _, body2 = H.http("GET", c.url .. "/get/k", { follow = true, range = "10-13" })
    assert.equal(206, st2)
    assert.equal("abcd", body2)
  end)

  it("HEAD -L gives the volume's Content-Length", function()
    local st, h = H.http("HEAD", c.url .. "/get/k", { follow = true })
    assert.equal(200, st)
    assert.equal(tostring(#value), h["content-length"])
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("GET with replicas down", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 2 }) end)
  teardown(H.cleanup)

  it("replicas 2 of 3 volumes: Key-Volumes has 2 entries, the files are on those two", function()
    assert.equal(201, (put(c, "/down/k", "two copies")))
    local st, h = H.http("GET", c.url .. "/down/k")
    assert.equal(302, st)
    local vols = split_commas(h["key-volumes"])
    assert.equal(2, #vols)
    assert.are_not.equal(vols[1], vols[2])
    local want = {}
    for i, v in ipairs(c.volumes) do
      if v.addr == vols[1] or v.addr == vols[2] then want[#want + 1] = i end
    end
    assert.equal(2, #want)
    assert.same(want, A.holders(c.volumes, "/down/k"))
  end)

  it("one replica stopped: still 302 to the other; both stopped: 404", function()
    local _, h = H.http("GET", c.url .. "/down/k")
    local vols = split_commas(h["key-volumes"])
    local first, second = volume_at(c, vols[1]), volume_at(c, vols[2])
    first:stop()
    assert.is_false(H.port_open(first.port))
    for _ = 1, 6 do
      local st, h2 = H.http("GET", c.url .. "/down/k")
      assert.equal(302, st)
      assert.equal("http://" .. second.addr .. "/", h2.location:sub(1, #second.addr + 8))
      local st3, _, body = H.http("GET", h2.location)
      assert.equal(200, st3)
      assert.equal("two copies", body)
    end
    second:stop()
    for _, method in ipairs({ "GET", "HEAD" }) do
      local st, h3 = H.http(method, c.url .. "/down/k")
      assert.equal(404, st)
      assert.equal("0", h3["content-length"])
      assert.is_nil(h3.location)
    end
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("-fallback", function()
  local c, fb
  setup(function()
    fb = "127.0.0.1:" .. H.free_port()
    c = H.cluster({ n = 1, replicas = 1, flags = { "-fallback", fb } })
  end)
  teardown(H.cleanup)

  it("a missing key: 302 to http://fallback/<key>, the key percent-encoded", function()
    for _, method in ipairs({ "GET", "HEAD" }) do
      local st, h = H.http(method, c.url .. "/fb/no%20such")
      assert.equal(302, st)
      assert.equal("http://" .. fb .. "/fb/no%20such", h.location)
    end
    local st, h = H.http("GET", c.url .. "/fb/plain")
    assert.equal(302, st)
    assert.equal("http://" .. fb .. "/fb/plain", h.location)
  end)

  it("a live key still redirects to its volume", function()
    assert.equal(201, (put(c, "/fb/live", "v")))
    local st, h = H.http("GET", c.url .. "/fb/live")
    assert.equal(302, st)
    assert.equal("http://" .. c.volumes[1].addr .. "/", h.location:sub(1, #c.volumes[1].addr + 8))
  end)

  it("an UNLINKed key goes to the fallback too, with its Content-Md5 (Go quirk)", function()
    assert.equal(201, (put(c, "/fb/gone", "gone value")))
    assert.equal(204, (H.http("UNLINK", c.url .. "/fb/gone")))
    local st, h = H.http("GET", c.url .. "/fb/gone")
    assert.equal(302, st)
    assert.equal("http://" .. fb .. "/fb/gone", h.location)
    assert.equal(H.md5_hex("gone value"), h["content-md5"])
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("DELETE and UNLINK", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 3 }) end)
  teardown(H.cleanup)

  it("DELETE: 204, the files are gone from every volume and the key from every listing", function()
    local key = "/del/one"
    assert.equal(201, (put(c, key, "to be deleted")))
    assert.same({ 1, 2, 3 }, A.holders(c.volumes, key))
    assert.equal(204, (H.http("DELETE", c.url .. key)))
    assert.same({}, A.holders(c.volumes, key))
    assert.same({}, A.find_files(c.volumes, key))
    assert.equal(404, (H.http("GET", c.url .. key)))
    local st, _, keys = A.list(c.url, "/del/", "list")
    assert.equal(200, st)
    assert.is_false(A.contains(keys, key))
    local st2, _, unl = A.list(c.url, "/del/", "unlinked")
    assert.equal(200, st2)
    assert.is_false(A.contains(unl, key))
  end)

  it("a 204 carries no Content-Length (RFC 9110 §8.6): DELETE, UNLINK, RELINK", function()
    assert.equal(201, (put(c, "/del/nocl", "x")))
    for _, m in ipairs({ "UNLINK", "RELINK", "DELETE" }) do
      local st, h = H.http(m, c.url .. "/del/nocl")
      assert.equal(204, st, m)
      assert.is_nil(h["content-length"], m)
    end
    -- and keep-alive goes on after one (nothing to delimit)
    local conn = A.connect(c.mkv.port)
    conn:send(A.request("PUT", "/del/nocl2", nil, "y"))
    assert.equal(201, assert(conn:response(5)).status)
    conn:send(A.request("UNLINK", "/del/nocl2"))
    assert.equal(204, assert(conn:response(5)).status)
    conn:send(A.request("GET", "/del/nocl2"))
    assert.equal(404, assert(conn:response(5)).status)
    conn:close()
  end)

  -- An admin job (the background repair a RELINK asks for, an operator's rebalance)
  -- holds a key's lock while it checks or moves it: a DELETE, UNLINK or RELINK then waits
  -- for it (up to 5 s) instead of failing with 409; a PUT, whose body is arriving, does not.
  it("DELETE, UNLINK and RELINK wait for a key an admin job holds; 409 only past 5 s", function()
    local dir = H.tmpdir("hold")
    local function hold(key, secs)
      secs = secs * H.slow
      local script = string.format("%s/hold%g.lua", dir, secs)
      H.write_file(script, string.format([[
local mkv = require "mkv"
assert(mkv.lock(%q), "the lock")
mkv.report("holding")
mkv.sleep(%g)
mkv.unlock(%q)
]], key, secs, key))
      local argv = { H.mkv_bin }
      for _, x in ipairs(c.flags) do argv[#argv + 1] = x end
      argv[#argv + 1] = "run"
      argv[#argv + 1] = script
      local p = H.spawn("admin-hold", argv)
      H.eventually(function() return p:log():find("holding", 1, true) end, 20, "the job to hold " .. key)
      return p
    end
    assert.equal(201, (put(c, "/held/a", "held")))
    for _, m in ipairs({ "UNLINK", "RELINK", "DELETE" }) do
      local p = hold("/held/a", 0.6)
      assert.equal(409, (put(c, "/held/a", "a PUT does not wait")), m)
      local t0 = H.now()
      local st = H.http(m, c.url .. "/held/a")
      local waited = H.now() - t0
      assert.equal(204, st, m .. " while an admin job held the key")
      -- it waited for the job (which held the key 0.6 s after it said so), not a free key
      assert.truthy(waited >= 0.2, string.format("%s answered after %.2f s", m, waited))
      H.eventually(function() return not p:alive() end, 20, "the job to end")
    end
    assert.equal(404, (H.http("GET", c.url .. "/held/a")))
    -- held past the bound: 409, and the key as it was
    assert.equal(201, (put(c, "/held/b", "still here")))
    local p = hold("/held/b", 8)
    local t0 = H.now()
    assert.equal(409, (H.http("DELETE", c.url .. "/held/b")))
    -- only after waiting out the bound
    assert.truthy(H.now() - t0 >= 4.5, string.format("409 after %.2f s", H.now() - t0))
    H.eventually(function() return not p:alive() end, 30, "the job to end")
    assert.same({ 200, "still here" }, { get_value(c, "/held/b") })
  end)

  it("DELETE of a missing key: 404", function()
    assert.equal(404, (H.http("DELETE", c.url .. "/del/never")))
  end)

  it("UNLINK keeps the files; a second UNLINK is 404; DELETE then removes them", function()
    local key = "/del/unl"
    assert.equal(201, (put(c, key, "kept on disk")))
    assert.equal(204, (H.http("UNLINK", c.url .. key)))
    assert.same({ 1, 2, 3 }, A.holders(c.volumes, key))
    assert.equal("kept on disk", H.read_file(A.key_file(c.volumes[2].root, key)))
    assert.equal(404, (H.http("UNLINK", c.url .. key)))
    local _, _, unl = A.list(c.url, "/del/unl", "unlinked")
    assert.same({ key }, unl)
    local _, _, live = A.list(c.url, "/del/unl", "list")
    assert.same({}, live)
    assert.equal(204, (H.http("DELETE", c.url .. key)))
    assert.same({}, A.holders(c.volumes, key))
    local _, _, unl2 = A.list(c.url, "/del/unl", "unlinked")
    assert.same({}, unl2)
  end)

  it("UNLINK of a missing key: 404", function()
    assert.equal(404, (H.http("UNLINK", c.url .. "/del/never-unl")))
  end)
end)

describe("-protect", function()
  local c
  setup(function() c = H.cluster({ n = 1, replicas = 1, flags = { "-protect" } }) end)
  teardown(H.cleanup)

  it("DELETE of a live key: 403; UNLINK then DELETE: 204", function()
    local key = "/prot/k"
    assert.equal(201, (put(c, key, "protected")))
    assert.equal(403, (H.http("DELETE", c.url .. key)))
    assert.equal(302, (H.http("GET", c.url .. key)))
    assert.same({ 1 }, A.holders(c.volumes, key))
    assert.equal(204, (H.http("UNLINK", c.url .. key)))
    assert.equal(204, (H.http("DELETE", c.url .. key)))
    assert.same({}, A.holders(c.volumes, key))
    assert.equal(404, (H.http("DELETE", c.url .. key)))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("listing", function()
  local c
  setup(function() c = H.cluster({ n = 1, replicas = 1 }) end)
  teardown(H.cleanup)

  it("?list: exact JSON bytes, keys in byte order", function()
    for _, k in ipairs({ "/ls/b", "/ls/a", "/ls/B", "/ls/a/x", "/ls/a-" }) do
      assert.equal(201, (put(c, k, k)))
    end
    local st, h, body = H.http("GET", c.url .. "/ls/?list")
    assert.equal(200, st)
    assert.equal("application/json", h["content-type"])
    assert.equal('{"next":"","keys":["/ls/B","/ls/a","/ls/a-","/ls/a/x","/ls/b"]}', body)
    local _, _, none = H.http("GET", c.url .. "/ls-nothing/?list")
    assert.equal('{"next":"","keys":[]}', none)
  end)

  it("the prefix is a byte prefix: /dir also matches /dirt", function()
    for _, k in ipairs({ "/px/dir", "/px/dir/a", "/px/dirt", "/px/dis", "/px/di" }) do
      assert.equal(201, (put(c, k, "x")))
    end
    local _, _, body = H.http("GET", c.url .. "/px/dir?list")
    assert.equal('{"next":"","keys":["/px/dir","/px/dir/a","/px/dirt"]}', body)
  end)

  it("limit/start paging following next returns every key exactly once", function()
    local want = {}
    for i = 1, 23 do want[#want + 1] = string.format("/pg/%02d", i) end
    A.bulk_put(c.mkv.port, want, nil, 4)
    assert.equal(201, (put(c, "/ph", "outside")))
    local got, seen, start, pages = {}, {}, nil, 0
    repeat
      local q = "list&limit=5" .. (start and ("&start=" .. enc(start)) or "")
      local st, nxt, keys = A.list(c.url, "/pg/", q)
      assert.equal(200, st)
      assert.truthy(#keys <= 5)
      for _, k in ipairs(keys) do
        assert.is_nil(seen[k], "key listed twice: " .. k)
        seen[k] = true
        got[#got + 1] = k
      end
      pages = pages + 1
      assert.truthy(pages <= 10, "paging does not end")
      if nxt ~= "" then assert.equal(5, #keys) end
      start = nxt ~= "" and nxt or nil
    until not start
    assert.equal(5, pages)
    assert.same(want, got)
    local _, _, body = H.http("GET", c.url .. "/pg/?list&limit=2")
    assert.equal('{"next":"/pg/03","keys":["/pg/01","/pg/02"]}', body)
  end)

  it("limit=abc: 400", function()
    assert.equal(400, (H.http("GET", c.url .. "/ls/?list&limit=abc")))
  end)

  it("queries that are not exactly list/unlinked first: 403", function()
    assert.equal(403, (H.http("GET", c.url .. "/ls/?list=1")))
    assert.equal(403, (H.http("GET", c.url .. "/ls/?limit=3&list")))
    assert.equal(403, (H.http("GET", c.url .. "/ls/?foo")))
  end)

  it("GET /key?v=2 is a listing request too (Go quirk): 403, not a redirect", function()
    assert.equal(302, (H.http("GET", c.url .. "/ls/a")))
    local st, h = H.http("GET", c.url .. "/ls/a?v=2")
    assert.equal(403, st)
    assert.is_nil(h.location)
  end)

  it("a start below the prefix lists only keys inside the prefix", function()
    for _, k in ipairs({ "/zz1", "/zz2", "/za" }) do assert.equal(201, (put(c, k, "z"))) end
    local _, _, body = H.http("GET", c.url .. "/zz?list&start=/a")
    assert.equal('{"next":"","keys":["/zz1","/zz2"]}', body)
    local _, _, body2 = H.http("GET", c.url .. "/zz?list&start=/zz2")
    assert.equal('{"next":"","keys":["/zz2"]}', body2)
    local _, _, body3 = H.http("GET", c.url .. "/zz?list&start=/zzz")
    assert.equal('{"next":"","keys":[]}', body3)
  end)

  it("?unlinked lists unlinked keys only, ?list live keys only", function()
    for _, k in ipairs({ "/ul/a", "/ul/b", "/ul/c" }) do assert.equal(201, (put(c, k, "u"))) end
    assert.equal(204, (H.http("UNLINK", c.url .. "/ul/b")))
    local _, _, body = H.http("GET", c.url .. "/ul/?unlinked")
    assert.equal('{"next":"","keys":["/ul/b"]}', body)
    local _, _, body2 = H.http("GET", c.url .. "/ul/?list")
    assert.equal('{"next":"","keys":["/ul/a","/ul/c"]}', body2)
  end)

  it("odd keys round-trip through PUT, GET and the listing, escaped as Go does", function()
    local keys = { "/sp/a b", "/sp/a+b", "/sp/a=b", "/sp/caf\195\169", "/sp/nul\0x",
                   "/sp/<tag>&", "/sp/bad\255", "/sp/j\226\130\172", "/sp/q\"\\" }
    for i, k in ipairs(keys) do
      assert.equal(201, (put(c, k, "value " .. i)), k)
    end
    for i, k in ipairs(keys) do
      local st, body = get_value(c, k)
      assert.equal(200, st, k)
      assert.equal("value " .. i, body, k)
      assert.same({ 1 }, A.holders(c.volumes, k))
    end
    -- `+` is not a space: /sp/a+b and /sp/a b are two keys
    local _, body = get_value(c, "/sp/a+b")
    assert.equal("value 2", body)
    local _, _, list = H.http("GET", c.url .. "/sp/?list")
    assert.equal('{"next":"","keys":["/sp/\\u003ctag\\u003e\\u0026","/sp/a b","/sp/a+b","/sp/a=b",'
      .. '"/sp/bad\\ufffd","/sp/caf\195\169","/sp/j\226\130\172","/sp/nul\\u0000x","/sp/q\\"\\\\"]}',
      list)
    -- a next that holds such a key pages on correctly
    local _, _, page = H.http("GET", c.url .. "/sp/?list&limit=1&start=" .. enc("/sp/a b"))
    assert.equal('{"next":"/sp/a+b","keys":["/sp/a b"]}', page)
  end)
end)

describe("long listings (default list_slice 1000)", function()
  local c
  local want = {}
  setup(function()
    c = H.cluster({ n = 1, replicas = 1 })
    -- 1050 keys of 70 bytes: a 76 KB answer, above the 64 KiB that mkv gathers whole,
    -- so it is streamed.
    for i = 1, 1050 do want[i] = string.format("/big/k%04d-%s", i, string.rep("x", 60)) end
    A.bulk_put(c.mkv.port, want, function() return "b" end, 16)
    A.bulk_put(c.mkv.port, { "/bia", "/bih", "/big", "/bigger" }, nil, 2)
  end)
  teardown(H.cleanup)

  it("a listing of more than 1000 keys is streamed and parses to exactly the keys", function()
    local st, h, body = H.http("GET", c.url .. "/big/?list")
    assert.equal(200, st)
    assert.equal("application/json", h["content-type"])
    assert.equal("chunked", (h["transfer-encoding"] or ""):lower())
    local nxt, keys = A.parse_listing(body)
    assert.equal("", nxt)
    assert.equal(1050, #keys)
    assert.same(want, keys)
  end)

  it("limit paging through more than one slice", function()
    local st, nxt, keys = A.list(c.url, "/big/", "list&limit=1020")
    assert.equal(200, st)
    assert.equal(1020, #keys)
    assert.equal(want[1021], nxt)
    local _, nxt2, keys2 = A.list(c.url, "/big/", "list&limit=1020&start=" .. nxt)
    assert.equal("", nxt2)
    assert.equal(30, #keys2)
    assert.equal(want[1021], keys2[1])
    assert.equal(want[1050], keys2[30])
  end)
end)

describe("long listings (list_slice = 10)", function()
  local c
  local live, unlinked = {}, {}
  setup(function()
    c = H.cluster({ n = 1, replicas = 1, config = "return { limits = { list_slice = 10 } }" })
    local all = {}
    for i = 1, 95 do all[i] = string.format("/s/k%03d", i) end
    A.bulk_put(c.mkv.port, all, nil, 8)
    A.bulk_put(c.mkv.port, { "/r/x", "/s", "/t/y", "/s0" }, nil, 2)
    for i, k in ipairs(all) do
      if i % 4 == 0 or (i >= 30 and i <= 52) then
        assert.equal(204, (H.http("UNLINK", c.url .. k)))
        unlinked[#unlinked + 1] = k
      else
        live[#live + 1] = k
      end
    end
  end)
  teardown(H.cleanup)

  it("?list over many slices: exactly the live keys, in order", function()
    local st, nxt, keys, body, h = A.list(c.url, "/s/", "list")
    assert.equal(200, st)
    assert.equal("application/json", h["content-type"])
    -- Gathered over ten slices, but small: sent whole, in the original's exact form.
    assert.is_nil(h["transfer-encoding"])
    assert.equal(tostring(#body), h["content-length"])
    assert.equal('{"next":""', body:sub(1, 10))
    assert.equal("", nxt)
    assert.same(live, keys)
  end)

  it("?unlinked over many slices: exactly the unlinked keys", function()
    local st, nxt, keys = A.list(c.url, "/s/", "unlinked")
    assert.equal(200, st)
    assert.equal("", nxt)
    assert.same(unlinked, keys)
  end)

  it("paging with limit=7 across slices returns every live key once", function()
    local got, start, pages = {}, nil, 0
    repeat
      local st, nxt, keys = A.list(c.url, "/s/", "list&limit=7" .. (start and ("&start=" .. start) or ""))
      assert.equal(200, st)
      for _, k in ipairs(keys) do got[#got + 1] = k end
      pages = pages + 1
      assert.truthy(pages <= 20)
      start = nxt ~= "" and nxt or nil
    until not start
    assert.same(live, got)
  end)

  it("the whole key space: every key, live ones only", function()
    local st, nxt, keys = A.list(c.url, "/", "list")
    assert.equal(200, st)
    assert.equal("", nxt)
    local want = { "/r/x", "/s" }
    for _, k in ipairs(live) do want[#want + 1] = k end
    want[#want + 1] = "/s0"
    want[#want + 1] = "/t/y"
    assert.same(want, keys)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("keep-alive and pipelining", function()
  local c
  setup(function()
    c = H.cluster({ n = 1, replicas = 1 })
    assert.equal(201, (put(c, "/ka/live", "alive")))
  end)
  teardown(H.cleanup)

  it("two requests in one send get two responses, in order", function()
    local conn = A.connect(c.mkv.port)
    conn:send(A.request("GET", "/ka/live") .. A.request("GET", "/ka/missing"))
    local r1, e1 = conn:response(5)
    local r2, e2 = conn:response(5)
    assert.truthy(r1, e1)
    assert.truthy(r2, e2)
    assert.equal(302, r1.status)
    assert.equal(404, r2.status)
    -- and the other way round, on the same connection
    conn:send(A.request("GET", "/ka/missing") .. A.request("HEAD", "/ka/live"))
    local r3, e3 = conn:response(5)
    local r4, e4 = conn:response(5, { head = true })
    conn:close()
    assert.truthy(r3, e3)
    assert.truthy(r4, e4)
    assert.equal(404, r3.status)
    assert.equal(302, r4.status)
    assert.equal(H.md5_hex("alive"), r4.headers["content-md5"])
  end)

  it("a PUT and a GET of the same key pipelined: 201 then 302", function()
    local conn = A.connect(c.mkv.port)
    conn:send(A.request("PUT", "/ka/pp", nil, "pipelined") .. A.request("GET", "/ka/pp")
      .. A.request("DELETE", "/ka/pp") .. A.request("GET", "/ka/pp"))
    local want = { 201, 302, 204, 404 }
    for i, w in ipairs(want) do
      local r, err = conn:response(5)
      assert.truthy(r, "response " .. i .. ": " .. tostring(err))
      assert.equal(w, r.status)
    end
    conn:close()
  end)

  it("pipelined requests followed by a half-close are all answered, then the connection closes", function()
    -- The socket stays read while a request is answered: the EOF behind the pipelined
    -- requests must not cut them off.
    local reqs = A.request("PUT", "/ka/hc", nil, "half") .. A.request("GET", "/ka/hc")
      .. A.request("GET", "/ka/missing") .. A.request("DELETE", "/ka/hc")
    local raw, closed = H.raw(c.mkv.port, reqs, 5, { shutdown = true })
    assert.same({ 201, 302, 404, 204 }, H.statuses(raw))
    assert.is_true(closed)
  end)

  it("requests pipelined while the first is still being answered are answered in order", function()
    local conn = A.connect(c.mkv.port)
    conn:send(A.request("PUT", "/ka/late", nil, "late"))
    conn:send(A.request("GET", "/ka/late"))
    conn:send(A.request("GET", "/ka/missing") .. A.request("DELETE", "/ka/late"))
    for i, w in ipairs({ 201, 302, 404, 204 }) do
      local r, err = conn:response(5)
      assert.truthy(r, "response " .. i .. ": " .. tostring(err))
      assert.equal(w, r.status)
    end
    conn:close()
  end)

  it("an HTTP/1.0 request gets its response and the connection closes", function()
    local conn = A.connect(c.mkv.port)
    local t0 = H.now()
    conn:send("GET /ka/live HTTP/1.0\r\n\r\n")
    local r, err = conn:response(5)
    assert.truthy(r, err)
    assert.equal(302, r.status)
    assert.truthy(r.head:match("^HTTP/1%.[01] 302"))
    assert.is_true(conn:wait_closed(3))
    assert.truthy(H.now() - t0 < 3 * H.slow)
    conn:close()
  end)

  it("50 sequential requests on one keep-alive connection", function()
    local conn = A.connect(c.mkv.port)
    for i = 1, 25 do
      local key = string.format("/ka/seq%02d", i)
      conn:send(A.request("PUT", key, nil, "v" .. i))
      local r, err = conn:response(5)
      assert.truthy(r, "PUT " .. i .. ": " .. tostring(err))
      assert.equal(201, r.status)
      assert.is_nil(r.headers.connection and r.headers.connection:lower():find("close"))
      conn:send(A.request("GET", key))
      local r2, err2 = conn:response(5)
      assert.truthy(r2, "GET " .. i .. ": " .. tostring(err2))
      assert.equal(302, r2.status)
    end
    conn:send(A.request("GET", "/ka/seq?list"))
    local r, err = conn:response(5)
    conn:close()
    assert.truthy(r, err)
    assert.equal(200, r.status)
    local _, keys = A.parse_listing(r.body)
    assert.equal(25, #keys)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("volumes named by a host name (localhost)", function()
  local m, vols
  setup(function()
    vols = {}
    local names = {}
    for i = 1, 3 do
      vols[i] = H.start_volume()
      names[i] = "localhost:" .. vols[i].port
    end
    m = H.start_mkv({ flags = { "-volumes", table.concat(names, ","), "-db",
                                H.tmpdir("db") .. "/index", "-replicas", "3", "-subvolumes", "1" } })
  end)
  teardown(H.cleanup)

  it("PUT, GET and DELETE work", function()
    local key = "/lh/key"
    assert.equal(201, (H.http("PUT", m.url .. key, { body = "via localhost" })))
    assert.same({ 1, 2, 3 }, A.holders(vols, key))
    local st, h = H.http("GET", m.url .. key)
    assert.equal(302, st)
    assert.truthy(h.location:match("^http://localhost:%d+/"), h.location)
    local kv = split_commas(h["key-volumes"])
    assert.equal(3, #kv)
    for _, v in ipairs(kv) do assert.truthy(v:match("^localhost:%d+$"), v) end
    local st2, _, body = H.http("GET", m.url .. key, { follow = true })
    assert.equal(200, st2)
    assert.equal("via localhost", body)
    assert.equal(204, (H.http("DELETE", m.url .. key)))
    assert.same({}, A.holders(vols, key))
    assert.equal(404, (H.http("GET", m.url .. key)))
  end)
end)
