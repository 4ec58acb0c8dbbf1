-- read_check (README "Reads"): with "none" a GET is answered from the index and the
-- volumes' known health, with no request to any volume; a copy missing behind mkv's
-- back bounces back from the volume (deploy/volume with INDEX=) and mkv sends the
-- client on to a copy that has the value, or answers 410; a client following
-- redirects -- curl -L, or the TLS proxy -- ends with the bytes or 410 in a bounded
-- number of hops. 410 in "head" mode too. The read policy's order() and its guards.
local H = require "helpers"
local A = require "api_support"
local P = require "proxy_helpers"
local O = require "ops_helpers"
local json = require "json"

local SIGSTOP, SIGCONT = 19, 18
local FIX = H.root .. "/spec/fixtures/policies"

-- 3 volumes that bounce misses to mkv, and mkv (replicas 3) with read_check `mode`.
local function cluster(mode, config)
  local port = H.free_port()
  local c = { vols = {}, addrs = {}, port = port }
  for i = 1, 3 do
    c.vols[i] = H.start_volume({ index = "127.0.0.1:" .. port })
    c.addrs[i] = c.vols[i].addr
  end
  c.db = H.tmpdir("db") .. "/index"
  c.m = H.start_mkv({ port = port, config = config, flags = {
    "-volumes", table.concat(c.addrs, ","), "-db", c.db, "-replicas", "3", "-subvolumes", "1",
    "-read-check", mode } })
  c.url = c.m.url
  return c
end

-- curl -L: the final status, how many redirects it followed, the body.
local function follow(url, head)
  local dir = H.tmpdir("curl")
  local out = H.sh(string.format("curl -s %s -L --max-redirs 10 -o %s -w '%%{http_code} %%{num_redirects}' %s",
    head and "-I" or "", H.shq(dir .. "/body"), H.shq(url)))
  local st, n = out:match("(%d+) (%d+)")
  return tonumber(st), tonumber(n), H.read_file(dir .. "/body") or ""
end

local function remove_copy(vol, key)
  assert(os.remove(A.key_file(vol.root, key)))
end

local function state_of(c, addr)
  local _, _, body = H.http("GET", "http://" .. H.admin_addr(c.db) .. "/health")
  return json.decode(body).volumes[addr].state
end

describe("read_check none", function()
  local c
  setup(function()
    c = cluster("none", 'return { limits = { probe_interval = "1h", probe_backoff = "1h" } }')
  end)
  teardown(H.cleanup)

  it("answers a GET with a 302 and asks no volume anything", function()
    for i = 1, 5 do assert.equal(201, (H.http("PUT", c.url .. "/n/" .. i, { body = "v" .. i }))) end
    -- The prober's first probes (no more for an hour) and the PUTs are over: from now on
    -- the volumes' request counters move only if a GET asks a volume.
    local admin = H.admin_addr(c.db)
    local function volume_requests()
      local _, _, body = H.http("GET", "http://" .. admin .. "/metrics")
      return O.sum(O.parse(body), "mkv_volume_requests_total")
    end
    H.sleep(0.3)
    local before = volume_requests()
    for round = 1, 4 do
      for i = 1, 5 do
        local st, h = H.http("GET", c.url .. "/n/" .. i)
        assert.equal(302, st)
        assert.truthy(h.location:find("/n/", 1, true) == nil) -- the volume's path, not the key
        assert.truthy(h["content-md5"])
        assert.equal("balanced", h["key-balance"])
      end
    end
    assert.equal(before, volume_requests(), "a GET asked a volume")
    for i = 1, 5 do
      local st, _, body = follow(c.url .. "/n/" .. i)
      assert.equal(200, st)
      assert.equal("v" .. i, body)
    end
  end)

  it("a copy removed behind mkv's back: the read bounces and ends with the bytes", function()
    for _, missing in ipairs({ { 1 }, { 1, 2 } }) do
      for i = 1, 10 do
        local key = string.format("/miss%d/%d", #missing, i)
        local value = "value of " .. key
        assert.equal(201, (H.http("PUT", c.url .. key, { body = value })))
        for _, v in ipairs(missing) do remove_copy(c.vols[v], key) end
        local st, hops, body = follow(c.url .. key)
        assert.equal(200, st, key)
        assert.equal(value, body, key)
        assert.truthy(hops <= 1 + 2 * #missing, key .. ": " .. hops .. " redirects")
        local hst, hhops = follow(c.url .. key, true)
        assert.equal(200, hst, "HEAD " .. key)
        assert.truthy(hhops <= 1 + 2 * #missing)
      end
    end
  end)

  it("every copy removed: 410 after a bounded number of hops, in both methods", function()
    local key = "/gone/1"
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "soon gone" })))
    for i = 1, 3 do remove_copy(c.vols[i], key) end
    local st, hops = follow(c.url .. key)
    assert.equal(410, st)
    assert.truthy(hops <= 2, hops .. " redirects")
    assert.equal(410, (follow(c.url .. key, true)))
    -- 404 stays the answer for a key the index does not hold, or holds unlinked
    assert.equal(404, (follow(c.url .. "/never/written")))
    assert.equal(201, (H.http("PUT", c.url .. "/gone/unlinked", { body = "x" })))
    assert.equal(204, (H.http("UNLINK", c.url .. "/gone/unlinked")))
    assert.equal(404, (follow(c.url .. "/gone/unlinked")))
  end)

  it("a copy that went missing is put back by the repair", function()
    local key = "/mend/1"
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "mend me" })))
    remove_copy(c.vols[2], key)
    for _ = 1, 6 do assert.equal(200, (follow(c.url .. key))) end -- some of these bounce
    H.eventually(function()
      return A.exists(A.key_file(c.vols[2].root, key))
    end, 30 * H.slow, "the copy back on volume 2")
    assert.equal("mend me", H.read_file(A.key_file(c.vols[2].root, key)))
  end)
end)

describe("read_check none with volumes failing", function()
  local c
  setup(function()
    c = cluster("none", 'return { limits = { probe_interval = "200ms", probe_backoff = "500ms" } }')
    for i = 1, 10 do assert.equal(201, (H.http("PUT", c.url .. "/f/" .. i, { body = "f" .. i }))) end
  end)
  teardown(H.cleanup)

  it("a volume killed: once it is marked down, every read goes to another copy, at once", function()
    local dead = c.vols[1]
    dead:stop()
    H.eventually(function() return state_of(c, dead.addr) == "down" end, 10 * H.slow, "down")
    for round = 1, 3 do
      for i = 1, 10 do
        local t0 = H.now()
        local st, h = H.http("GET", c.url .. "/f/" .. i)
        assert.equal(302, st)
        assert.is_nil(h.location:find(dead.addr, 1, true), "sent to the dead volume")
        local fst, _, body = follow(c.url .. "/f/" .. i)
        assert.equal(200, fst)
        assert.equal("f" .. i, body)
        assert.truthy(H.now() - t0 < 1 * H.slow, "a read waited")
      end
    end
    c.vols[1] = H.restart_volume(dead)
    H.eventually(function() return state_of(c, dead.addr) == "up" end, 10 * H.slow, "up again")
  end)

  it("a volume hung (SIGSTOP): once it is marked down, reads avoid it", function()
    local hung = c.vols[2]
    assert.is_true(H.T.kill(-hung.pid, SIGSTOP))
    local ok, err = pcall(function()
      H.eventually(function() return state_of(c, hung.addr) == "down" end, 10 * H.slow, "down")
      for i = 1, 10 do
        local st, h = H.http("GET", c.url .. "/f/" .. i)
        assert.equal(302, st)
        assert.is_nil(h.location:find(hung.addr, 1, true), "sent to the hung volume")
        local fst, _, body = follow(c.url .. "/f/" .. i)
        assert.equal(200, fst)
        assert.equal("f" .. i, body)
      end
    end)
    H.T.kill(-hung.pid, SIGCONT)
    if not ok then error(err, 0) end
  end)
end)

describe("read_check head", function()
  local c
  -- No background repair: the HEADs note the missing copies, and a repair pass could put
  -- them back between the removals below.
  setup(function() c = cluster("head", 'return { repair_interval = "0" }') end)
  teardown(H.cleanup)

  it("410 when no volume has a copy of a live key; the bytes when one has", function()
    local key = "/h/1"
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "head mode" })))
    remove_copy(c.vols[1], key)
    remove_copy(c.vols[3], key)
    for _ = 1, 5 do
      local st, hops, body = follow(c.url .. key)
      assert.equal(200, st)
      assert.equal(1, hops) -- a HEAD found the one copy: no bounce
      assert.equal("head mode", body)
    end
    remove_copy(c.vols[2], key)
    local st, h = H.http("GET", c.url .. key)
    assert.equal(410, st)
    assert.truthy(h["key-volumes"])
  end)
end)

describe("read_check none through the TLS proxy", function()
  local c, proxy
  setup(function()
    c = cluster("none")
    proxy = P.start_proxy({ tls = P.make_cert(), mkv = c.m, volumes = c.addrs })
  end)
  teardown(H.cleanup)

  it("a missing copy bounces inside the proxy: the client gets the bytes, or 410", function()
    for i = 1, 8 do
      local key = "/px/" .. i
      assert.equal(201, (H.http("PUT", c.url .. key, { body = "proxied " .. i })))
      remove_copy(c.vols[1 + i % 3], key)
      local st, _, body = P.http("GET", proxy.url .. key, { cacert = proxy.tls.cert })
      assert.equal(200, st, key)
      assert.equal("proxied " .. i, body)
    end
    local key = "/px/gone"
    assert.equal(201, (H.http("PUT", c.url .. key, { body = "x" })))
    for i = 1, 3 do remove_copy(c.vols[i], key) end
    assert.equal(410, (P.http("GET", proxy.url .. key, { cacert = proxy.tls.cert })))
  end)
end)

describe("the read policy", function()
  teardown(H.cleanup)

  it("read_zone: a client of a zone is sent to the copy in its zone", function()
    local port = H.free_port()
    local vols, zones = {}, {}
    for i = 1, 3 do
      vols[i] = H.start_volume({ index = "127.0.0.1:" .. port })
      zones[vols[i].addr] = "zone-" .. i
    end
    local zl = {}
    for a, z in pairs(zones) do zl[#zl + 1] = string.format("[%q] = %q", a, z) end
    local db = H.tmpdir("db") .. "/index"
    local m = H.start_mkv({ port = port, config = string.format(
      "return { policies = { read = 'read_zone' }, policy_config = { zones = { %s } } }",
      table.concat(zl, ", ")), flags = { "-volumes", vols[1].addr .. "," .. vols[2].addr .. "," ..
      vols[3].addr, "-db", db, "-replicas", "3", "-subvolumes", "1", "-read-check", "none" } })
    for k = 1, 10 do
      local key = "/z/" .. k
      assert.equal(201, (H.http("PUT", m.url .. key, { body = key })))
      for i = 1, 3 do
        local st, h = H.http("GET", m.url .. key, { headers = { ["X-Mkv-Client-Zone"] = "zone-" .. i } })
        assert.equal(302, st)
        assert.truthy(h.location:find(vols[i].addr, 1, true), key .. " zone-" .. i .. ": " .. h.location)
      end
    end
  end)

  it("an order() that names a volume the record does not hold: 500, a log line", function()
    local vols = { H.start_volume(), H.start_volume() }
    local db = H.tmpdir("db") .. "/index"
    local m = H.start_mkv({ config = string.format("return { policies = { read = %q } }",
      FIX .. "/read_foreign.lua"), flags = { "-volumes", vols[1].addr .. "," .. vols[2].addr,
      "-db", db, "-replicas", "2", "-subvolumes", "1", "-read-check", "none" } })
    assert.equal(201, (H.http("PUT", m.url .. "/rp/1", { body = "x" })))
    assert.equal(500, (H.http("GET", m.url .. "/rp/1")))
    H.eventually(function() return m:log():find("order() entry", 1, true) end, 5, "a log line")
  end)
end)
