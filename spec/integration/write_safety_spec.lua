-- Writes that fail: a volume down or hung, a client that goes away mid-body, a
-- Content-MD5 that does not match; the index server's own start/stop failures. After a
-- failed PUT the key must not be live and mkv must delete what it wrote
-- (ARCHITECTURE.md "Request semantics"). And writes that go on without a volume: the
-- write quorum (a majority of the copies by default), the handoff of a copy to the next
-- volume in placement's order, and the repair back to where placement wants it.
local H = require "helpers"
local A = require "api_support"

local SIGTERM, SIGSTOP, SIGCONT = 15, 19, 18

local function is_5xx(st) return type(st) == "number" and st >= 500 and st <= 599 end

local function listed(c, key, op)
  local st, _, keys = A.list(c.url, key, op)
  assert.equal(200, st)
  return A.contains(keys, key)
end

-- Not live: GET 404 and not in ?list.
local function assert_not_live(c, key)
  local st = H.http("GET", c.url .. H.urlencode_path(key))
  assert.equal(404, st)
  assert.is_false(listed(c, key, "list"))
end

-- Eventually: no file of the key on the given volumes, and no record in ?unlinked.
local function eventually_cleaned(c, key, volumes, check_unlinked)
  H.eventually(function()
    local files = A.find_files(volumes, key)
    if #files > 0 then return false, "files left: " .. table.concat(files, " ") end
    if check_unlinked ~= false and (listed(c, key, "unlinked") or listed(c, key, "writing")) then
      return false, "still in ?unlinked or ?writing"
    end
    return true
  end, 10, "cleanup of " .. key)
end

-- ---------------------------------------------------------------------------------------
describe("PUT with a volume down, write_quorum all (the Go original's)", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 3, flags = { "-write-quorum", "all" } }) end)
  teardown(H.cleanup)

  it("5xx, nothing live, nothing left on the other volumes, not in ?unlinked", function()
    local key = "/vd/key"
    local down = c.volumes[3]
    down:stop()
    assert.is_false(H.port_open(down.port))
    local st = H.http("PUT", c.url .. key, { body = A.bytes(50000, 1) })
    assert.is_true(is_5xx(st), "PUT answered " .. tostring(st))
    assert_not_live(c, key)
    eventually_cleaned(c, key, { c.volumes[1], c.volumes[2] })
    assert_not_live(c, key)
    -- the volume comes back: once the prober has seen it (within its probe interval,
    -- backed off while it was down), the same key can be written
    local v = H.restart_volume(down)
    c.volumes[3] = v
    H.eventually(function()
      local st = H.http("PUT", c.url .. key, { body = "second try" })
      return st == 201, "PUT answered " .. tostring(st)
    end, 10 * H.slow, "a PUT once the volume is back")
    assert.same({ 1, 2, 3 }, A.holders(c.volumes, key))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("PUT with a volume hung (SIGSTOP), write_quorum all", function()
  local c
  setup(function()
    c = H.cluster({ n = 3, replicas = 3, flags = { "-write-quorum", "all" },
                    config = 'return { limits = { volume_timeout = "2s" } }' })
  end)
  teardown(H.cleanup)

  it("5xx within limits.volume_timeout, nothing live", function()
    local key = "/hang/key"
    local hung = c.volumes[2]
    assert.is_true(H.T.kill(-hung.pid, SIGSTOP)) -- nginx master and worker
    local ok, err = pcall(function()
      local t0 = H.now()
      local st = H.http("PUT", c.url .. key, { body = A.bytes(100000, 2), timeout = 20 })
      local took = H.now() - t0
      assert.is_true(is_5xx(st), "PUT answered " .. tostring(st))
      assert.truthy(took >= 1.5, string.format("5xx after %.2fs, before the 2s timeout", took))
      assert.truthy(took <= (2 + 1.5) * H.slow,
        string.format("5xx after %.2fs; volume_timeout is 2s", took))
      assert_not_live(c, key)
    end)
    H.T.kill(-hung.pid, SIGCONT)
    if not ok then error(err, 0) end
    assert_not_live(c, key)
    -- the healthy volumes' copies are removed
    eventually_cleaned(c, key, { c.volumes[1], c.volumes[3] }, false)
    -- and the key's lock is free again
    H.eventually(function()
      local st = H.http("PUT", c.url .. key, { body = "after the hang" })
      return st == 201, "PUT answered " .. tostring(st)
    end, 10, "a PUT after the hang")
    local st, _, body = H.http("GET", c.url .. key, { follow = true })
    assert.equal(200, st)
    assert.equal("after the hang", body)
  end)
end)

-- ---------------------------------------------------------------------------------------
-- The volumes a key's record names, from Key-Volumes (host:port, subvolumes = 1).
local function record_volumes(c, key)
  local st, h = H.http("HEAD", c.url .. H.urlencode_path(key))
  assert.equal(302, st)
  local out = {}
  for v in (h["key-volumes"] or ""):gmatch("[^,]+") do out[#out + 1] = v end
  return out, h["key-balance"]
end

local function indexes_of(c, addrs)
  local out = {}
  for i, v in ipairs(c.volumes) do
    for _, a in ipairs(addrs) do if a == v.addr then out[#out + 1] = i end end
  end
  return out
end

-- Waits until the prober has marked the volume `state` (GET /health).
local function eventually_state(c, addr, state)
  local json = require "json"
  H.eventually(function()
    local st, _, body = H.http("GET", "http://" .. H.admin_addr(c.db) .. "/health")
    if not body then return false end
    local doc = json.decode(body)
    local v = doc.volumes and doc.volumes[addr]
    return v and v.state == state, body
  end, 10 * H.slow, addr .. " " .. state)
end

describe("PUT with a volume down, write_quorum majority (the default)", function()
  local c
  setup(function()
    c = H.cluster({ n = 3, replicas = 3, flags = { "-repair-interval", "300ms" } })
  end)
  teardown(H.cleanup)

  it("1 of 3 down: 201 with the 2 copies that exist, the record names them; back to 3 by itself", function()
    local down = c.volumes[3]
    down:stop()
    local keys = {}
    for i = 1, 5 do
      local key = "/maj/" .. i
      keys[#keys + 1] = key
      local st, _, body = H.http("PUT", c.url .. key, { body = "value " .. i })
      assert.equal(201, st, body)
      local vols, balance = record_volumes(c, key)
      assert.same({ 1, 2 }, indexes_of(c, vols))
      assert.same({ 1, 2 }, A.holders(c.volumes, key))
      assert.equal("unbalanced", balance)
      local st2, _, got = H.http("GET", c.url .. key, { follow = true })
      assert.equal(200, st2)
      assert.equal("value " .. i, got)
    end
    -- The volume returns: the background repair restores the third copy of each key.
    local v = H.restart_volume(down)
    c.volumes[3] = v
    H.eventually(function()
      for _, key in ipairs(keys) do
        local vols, balance = record_volumes(c, key)
        if balance ~= "balanced" or #vols ~= 3 then return false, key .. " " .. tostring(balance) end
        if #A.holders(c.volumes, key) ~= 3 then return false, key .. " on disk" end
      end
      return true
    end, 20 * H.slow, "the repair of every key")
  end)

  it("2 of 3 down: 503 at once, nothing written anywhere", function()
    c.volumes[2]:stop()
    c.volumes[3]:stop()
    eventually_state(c, c.volumes[2].addr, "down")
    eventually_state(c, c.volumes[3].addr, "down")
    local key = "/maj/two-down"
    local st, _, body = H.http("PUT", c.url .. key, { body = A.bytes(10000, 3) })
    assert.equal(503, st, body)
    assert.truthy(body:find("write_quorum", 1, true), body)
    assert_not_live(c, key)
    assert.same({}, A.find_files(c.volumes, key))
    assert.is_false(listed(c, key, "unlinked"))
  end)
end)

describe("PUT with a volume down or hung, 4 volumes for 3 replicas: handoff", function()
  local c
  setup(function()
    c = H.cluster({ n = 4, replicas = 3, flags = { "-repair-interval", "300ms" },
                    config = 'return { limits = { volume_timeout = "2s" } }' })
  end)
  teardown(H.cleanup)

  it("a down volume's copy goes to the next volume; 3 copies, all on live volumes", function()
    local down = c.volumes[1]
    down:stop()
    eventually_state(c, down.addr, "down")
    local n = 0
    for i = 1, 40 do
      local key = "/ho/" .. i
      local st, _, body = H.http("PUT", c.url .. key, { body = "handoff " .. i })
      assert.equal(201, st, body)
      local vols = record_volumes(c, key)
      assert.equal(3, #vols, key)
      assert.is_false(A.contains(vols, down.addr), key)
      assert.same(indexes_of(c, vols), A.holders(c.volumes, key))
      n = n + 1
    end
    assert.equal(40, n)
    -- back: every key where placement wants it, and the handoff copies gone
    local v = H.restart_volume(down)
    c.volumes[1] = v
    H.eventually(function()
      for i = 1, 40 do
        local key = "/ho/" .. i
        local vols, balance = record_volumes(c, key)
        if balance ~= "balanced" then return false, key .. " unbalanced" end
        if #A.holders(c.volumes, key) ~= 3 then return false, key .. " copies on disk" end
        for _, idx in ipairs(A.holders(c.volumes, key)) do
          if not A.contains(vols, c.volumes[idx].addr) then return false, key .. " surplus" end
        end
      end
      return true
    end, 30 * H.slow, "every key moved back")
  end)

  it("a hung volume: the first PUTs answer within volume_timeout, then it is routed around", function()
    local hung = c.volumes[2]
    assert.is_true(H.T.kill(-hung.pid, SIGSTOP))
    local ok, err = pcall(function()
      for i = 1, 10 do
        local key = "/hung/" .. i
        local t0 = H.now()
        local st, _, body = H.http("PUT", c.url .. key, { body = "hung " .. i, timeout = 20 })
        local took = H.now() - t0
        assert.equal(201, st, body)
        assert.truthy(took <= (2 + 1.5) * H.slow, string.format("201 after %.2fs", took))
        assert.is_false(A.contains((record_volumes(c, key)), hung.addr), key)
      end
      eventually_state(c, hung.addr, "down")
      local t0 = H.now()
      assert.equal(201, (H.http("PUT", c.url .. "/hung/after", { body = "x" })))
      assert.truthy(H.now() - t0 < 1 * H.slow, "a PUT once the volume is marked down waits for nothing")
    end)
    H.T.kill(-hung.pid, SIGCONT)
    if not ok then error(err, 0) end
  end)

  it("a copy lost while its volume takes no copies: the repair hands it off to the next volume, "
     .. "then moves it back", function()
    local cfgpath = c.mkv.dir .. "/config.lua"
    local base = H.read_file(cfgpath)
    local function reload(text)
      H.write_file(cfgpath, text)
      assert.is_true(H.T.kill(c.mkv.pid, 1))
    end
    local key = "/lost/1"
    for _, v in ipairs(c.volumes) do eventually_state(c, v.addr, "up") end -- after the hung one
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "lost copy" })))
    local vols, balance = record_volumes(c, key)
    assert.equal(3, #vols)
    assert.equal("balanced", balance)
    local x = c.volumes[indexes_of(c, { vols[1] })[1]]
    -- the first copy goes behind mkv's back, and its volume turns read-only
    assert.is_true(os.remove(A.key_file(x.root, key)))
    reload(base:gsub("^return {", string.format("return { volume_state = { [%q] = \"read_only\" },", x.addr)))
    eventually_state(c, x.addr, "read_only")
    -- a read finds the copy missing (HEAD 404 on the first replica) and tells the repair
    local st, _, got = H.http("GET", c.url .. key, { follow = true })
    assert.same({ 200, "lost copy" }, { st, got })
    H.eventually(function()
      local now = record_volumes(c, key)
      local on = A.holders(c.volumes, key)
      if #now ~= 3 or A.contains(now, x.addr) then return false, table.concat(now, ",") end
      if #on ~= 3 then return false, #on .. " copies on disk" end
      return true
    end, 20 * H.slow, "the copy handed off")
    st, _, got = H.http("GET", c.url .. key, { follow = true })
    assert.same({ 200, "lost copy" }, { st, got })
    -- the volume takes copies again: the key goes back where placement wants it
    reload(base)
    eventually_state(c, x.addr, "up")
    H.eventually(function()
      local now, balance = record_volumes(c, key)
      if balance ~= "balanced" then return false, table.concat(now, ",") end
      local on = A.holders(c.volumes, key)
      if #on ~= 3 then return false, #on .. " copies on disk (the surplus goes after a grace)" end
      return true
    end, 30 * H.slow, "the key moved back")
    assert.same(indexes_of(c, vols), A.holders(c.volumes, key))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("PUT bodies that go wrong", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 3 }) end)
  teardown(H.cleanup)

  it("a body trickled a byte at a time fails at limits.body_min_rate (1 KB/s over 10 s): "
     .. "408, not live, the lock free again, counted", function()
    local key = "/trickle/key"
    local conn = A.connect(c.mkv.port)
    conn:send("PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    local r
    local t0 = H.now()
    while not r and H.now() - t0 < 30 * H.slow do
      conn:send("x") -- 4 bytes a second: never a stall the body timeout (60 s) would see
      r = conn:response(0.25)
    end
    conn:close()
    assert.truthy(r, "no answer after 30 s")
    assert.equal(408, r.status)
    assert.truthy(r.body:find("body_min_rate", 1, true), r.body)
    local took = H.now() - t0
    assert.truthy(took >= 9.5 and took < 20 * H.slow, string.format("answered after %.1f s", took))
    eventually_cleaned(c, key, c.volumes)
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "after" })))
    assert.equal(204, (H.http("DELETE", c.url .. key)))
    local st, _, m = H.http("GET", "http://" .. H.admin_addr(c.db) .. "/metrics")
    assert.equal(200, st)
    assert.truthy(m:find("mkv_slow_bodies_total 1", 1, true), m)
  end)

  it("the client disconnecting mid-body: not live, partial files gone", function()
    local key = "/cut/key"
    local conn = A.connect(c.mkv.port)
    conn:send("PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
    conn:send(A.bytes(150000, 3))
    H.eventually(function() return listed(c, key, "writing") end, 5, "the PUT's record")
    conn:close()
    eventually_cleaned(c, key, c.volumes)
    assert_not_live(c, key)
    -- nothing is half-stored anywhere under the volume roots (the prober's write probe
    -- aside)
    for _, v in ipairs(c.volumes) do
      local files = H.volume_files(v)
      assert.equal("", table.concat(files, "\n"))
    end
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "whole" })))
  end)

  it("Content-MD5 matching (base64 of the md5): 201", function()
    local body = A.bytes(20000, 4)
    local md5b64 = A.base64(A.hex_to_bin(H.md5_hex(body)))
    local st = H.http("PUT", c.url .. "/md5/good", { body = body, headers = { ["Content-MD5"] = md5b64 } })
    assert.equal(201, st)
    local _, h = H.http("HEAD", c.url .. "/md5/good")
    assert.equal(H.md5_hex(body), h["content-md5"])
    local st2, _, got = H.http("GET", c.url .. "/md5/good", { follow = true })
    assert.equal(200, st2)
    assert.equal(body, got)
  end)

  it("Content-MD5 as 32 hex digits is accepted too: 201", function()
    local body = "hex digest"
    local st = H.http("PUT", c.url .. "/md5/hex",
      { body = body, headers = { ["Content-MD5"] = H.md5_hex(body) } })
    assert.equal(201, st)
    assert.equal(302, (H.http("GET", c.url .. "/md5/hex")))
  end)

  it("Content-MD5 not matching: 400, nothing live, no files", function()
    local key = "/md5/bad"
    local body = A.bytes(20000, 5)
    local wrong = A.base64(A.hex_to_bin(H.md5_hex(body .. "x")))
    local st = H.http("PUT", c.url .. key, { body = body, headers = { ["Content-MD5"] = wrong } })
    assert.equal(400, st)
    assert_not_live(c, key)
    eventually_cleaned(c, key, c.volumes)
    -- the hex form, wrong
    local st2 = H.http("PUT", c.url .. key, { body = body, headers = { ["Content-MD5"] = H.md5_hex("x") } })
    assert.equal(400, st2)
    assert_not_live(c, key)
    eventually_cleaned(c, key, c.volumes)
    -- the key is free again
    assert.equal(201, (H.http("PUT", c.url .. key, { body = body })))
  end)

  it("a malformed Content-MD5: 400, nothing stored", function()
    for i, bad in ipairs({ "not base64!!", "AAAA", "zz" .. string.rep("0", 30),
                           A.base64(string.rep("\1", 15)) }) do
      local key = "/md5/malformed" .. i
      local st = H.http("PUT", c.url .. key, { body = "abc", headers = { ["Content-MD5"] = bad } })
      assert.equal(400, st, bad)
      assert_not_live(c, key)
      eventually_cleaned(c, key, c.volumes)
    end
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("the server process", function()
  local c
  setup(function() c = H.cluster({ n = 3, replicas = 3 }) end)
  teardown(H.cleanup)

  it("a busy port: mkv server exits non-zero naming the port", function()
    local busy = c.volumes[1].port -- nginx listens on 127.0.0.1:busy
    local code, out = H.run_mkv({ "-volumes", table.concat(c.addrs, ","), "-db",
                                  H.tmpdir("db2") .. "/index", "-replicas", "3", "-subvolumes",
                                  "1", "-port", tostring(busy), "-listen", "127.0.0.1", "server" })
    assert.are_not.equal(0, code)
    assert.truthy(out:find(tostring(busy), 1, true), out)
  end)

  it("a second mkv on the same -db exits non-zero: the index is in use", function()
    local code, out = H.run_mkv({ "-volumes", table.concat(c.addrs, ","), "-db", c.db,
                                  "-replicas", "3", "-subvolumes", "1", "-port",
                                  tostring(H.free_port()), "-listen", "127.0.0.1", "server" })
    assert.are_not.equal(0, code)
    assert.truthy(out:lower():find("in use", 1, true), out)
    -- the first one is unharmed
    assert.equal(201, (H.http("PUT", c.url .. "/proc/still", { body = "ok" })))
  end)

  it("SIGTERM during a slow PUT: mkv waits for it, answers 201, exits 0; a restart serves the key", function()
    local key = "/proc/slow"
    local total = 400000
    local first, rest = A.bytes(100000, 6), A.bytes(total - 100000, 7)
    local conn = A.connect(c.mkv.port)
    conn:send("PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: " .. total .. "\r\n\r\n")
    conn:send(first)
    H.eventually(function() return listed(c, key, "writing") end, 5, "the PUT's record")
    local pid = c.mkv.pid
    assert.is_true(H.T.kill(pid, SIGTERM))
    -- mkv must not exit while the PUT is in flight (a timeout under test)
    local early = H.T.wait(pid, 0.5)
    if early then c.mkv.status = early end
    assert.is_nil(early, "mkv exited with a PUT in flight")
    conn:send(rest)
    local r, err = conn:response(20)
    conn:close()
    assert.truthy(r, err)
    assert.equal(201, r.status)
    local st = H.T.wait(pid, 20 * H.slow)
    assert.truthy(st, "mkv did not exit after the PUT")
    c.mkv.status = st
    assert.equal(0, st.code, c.mkv:log())
    c:restart()
    local st2, _, body = H.http("GET", c.url .. key, { follow = true })
    assert.equal(200, st2)
    assert.equal(H.md5_hex(first .. rest), H.md5_hex(body))
    local _, h = H.http("HEAD", c.url .. key)
    assert.equal(H.md5_hex(first .. rest), h["content-md5"])
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("-md5sum=false", function()
  local c
  setup(function() c = H.cluster({ n = 1, replicas = 1, flags = { "-md5sum=false" } }) end)
  teardown(H.cleanup)

  it("no Content-Md5 header on GET, HEAD or the 404 of an unlinked key", function()
    assert.equal(201, (H.http("PUT", c.url .. "/nomd5", { body = "no sum" })))
    for _, method in ipairs({ "GET", "HEAD" }) do
      local st, h = H.http(method, c.url .. "/nomd5")
      assert.equal(302, st)
      assert.is_nil(h["content-md5"])
      assert.equal("balanced", h["key-balance"])
    end
    local st, _, body = H.http("GET", c.url .. "/nomd5", { follow = true })
    assert.equal(200, st)
    assert.equal("no sum", body)
    assert.equal(204, (H.http("UNLINK", c.url .. "/nomd5")))
    local st2, h2 = H.http("GET", c.url .. "/nomd5")
    assert.equal(404, st2)
    assert.is_nil(h2["content-md5"])
  end)
end)
