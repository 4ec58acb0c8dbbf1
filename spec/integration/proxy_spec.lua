-- deploy/proxy, the HTTPS front of a cluster (deploy/nginx-proxy.conf), against real
-- nginx volumes, the real mkv binary and a certificate made at test time: every API call
-- through the proxy only, reads that survive a broken or killed volume (the retry through
-- mkv with X-Mkv-Avoid-Volume), mkv's public_url mode, a 1 GB value up and down with
-- bounded memory, and the operator's kit (deploy/install into a staging root, the
-- systemd units).
local H = require "helpers"
local P = require "proxy_helpers"
local A = require "api_support"

local enc = H.urlencode_path

-- A cluster of n volumes and mkv, and deploy/proxy in front of it.
local function proxied_cluster(opts)
  opts = opts or {}
  local tls = P.make_cert()
  local c = H.cluster({ n = opts.n or 3, replicas = opts.replicas or 2, flags = opts.flags,
                        env = opts.env })
  local proxy = P.start_proxy({ tls = tls, mkv = c.mkv, volumes = c.addrs,
                                volume_listen = opts.volume_listen, workers = opts.workers })
  c.tls, c.proxy = tls, proxy
  c.client = P.client(proxy)
  return c
end

-- The volume address that served each logged read (the last upstream of a 200/206).
local function served_by(proxy, from_line)
  local out = {}
  local lines = P.access_lines(proxy)
  for i = (from_line or 0) + 1, #lines do
    local e = P.parse_access(lines[i])
    out[#out + 1] = e
  end
  return out
end

-- ---------------------------------------------------------------------------------------
describe("deploy/proxy: the command line", function()
  local tls
  setup(function() tls = P.make_cert() end)
  teardown(H.cleanup)

  local function run(args)
    return H.sh(H.shq(H.root .. "/deploy/proxy") .. " " .. args)
  end

  it("--help prints the options and exits 0", function()
    local out, code = run("--help")
    assert.equal(0, code)
    for _, opt in ipairs({ "--listen", "--mkv", "--cert", "--key", "--volumes", "--volume-listen",
                           "--bind", "--state", "--workers" }) do
      assert.truthy(out:find(opt, 1, true), opt .. " missing from --help")
    end
  end)

  it("refuses a missing or bad option with one clear line and exit 2", function()
    local base = "--cert " .. H.shq(tls.cert) .. " --key " .. H.shq(tls.key)
    local cases = {
      { "", "--listen PORT is required" },
      { "--listen 8443 " .. base, "--mkv HOST:PORT is required" },
      { "--listen 8443 --mkv 127.0.0.1:3000", "--cert FILE is required" },
      { "--listen 99999 --mkv 127.0.0.1:3000 " .. base, "--listen must be a port number" },
      { "--listen 8443 --mkv 127.0.0.1 " .. base, "--mkv must be host:port" },
      { "--listen 8443 --mkv 127.0.0.1:3000 --cert /nonexistent --key /nonexistent", "cannot read" },
      { "--listen 8443 --mkv 127.0.0.1:3000 " .. base .. " --volumes a:1,a:1", "twice" },
      { "--listen 8443 --mkv 127.0.0.1:3000 " .. base .. " --volume-listen 8444", "needs --volumes" },
      { "--listen 8443 --mkv 127.0.0.1:3000 " .. base .. " --workers many", "--workers" },
      { "--listen 8443 --mkv 127.0.0.1:3000 " .. base .. " --state '/tmp/a;b'", "misread" },
      { "--listen 8443 --mkv 127.0.0.1:3000 " .. base .. " --frobnicate 1", "unknown option --frobnicate" },
      { "--listen", "--listen needs a value" },
    }
    for _, case in ipairs(cases) do
      local out, code = run(case[1])
      assert.equal(2, code, case[1] .. ": " .. out)
      assert.truthy(out:find(case[2], 1, true), case[1] .. ": expected '" .. case[2] .. "' in: " .. out)
    end
  end)

  it("--check writes a config nginx accepts, with every placeholder filled", function()
    local state = H.tmpdir("check") .. "/state"
    local out, code = run("--listen 18443 --mkv 127.0.0.1:3000 --cert " .. H.shq(tls.cert)
      .. " --key " .. H.shq(tls.key) .. " --volumes 127.0.0.1:3001,localhost:3002"
      .. " --volume-listen 18444 --state " .. H.shq(state) .. " --check")
    assert.equal(0, code, out)
    local conf = H.read_file(state .. "/nginx.conf")
    assert.falsy(conf:find("@[A-Z_]+@"))
    assert.truthy(conf:find('"127.0.0.1:3001" vol_1;', 1, true))
    assert.truthy(conf:find("server localhost:3002 max_fails=0;", 1, true))
    assert.truthy(conf:find("listen 18444 ssl;", 1, true))
    -- Without --volume-listen the public_url server is left out.
    local out2, code2 = run("--listen 18443 --mkv 127.0.0.1:3000 --cert " .. H.shq(tls.cert)
      .. " --key " .. H.shq(tls.key) .. " --state " .. H.shq(state) .. " --check")
    assert.equal(0, code2, out2)
    conf = H.read_file(state .. "/nginx.conf")
    assert.falsy(conf:find("public_hostport", 1, true))
    assert.falsy(conf:find("\n#@begin", 1, true))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("the API through the HTTPS proxy", function()
  local c, cl
  setup(function()
    c = proxied_cluster({ n = 3, replicas = 2 })
    cl = c.client
  end)
  teardown(H.cleanup)

  it("PUT, then GET gives the bytes (200, not a redirect) and mkv's metadata", function()
    local v = A.bytes(100000, 7)
    local st, h = cl.req("PUT", "/api/one", { body = v })
    assert.equal(201, st)
    local st2, h2, body, _, blocks = cl.req("GET", "/api/one")
    assert.equal(200, st2)
    assert.equal(1, #blocks) -- one response: the redirect was followed by the proxy
    assert.equal(#v, #body)
    assert.equal(v, body)
    assert.equal(H.md5_hex(v), h2["content-md5"])
    assert.equal("balanced", h2["key-balance"])
    local vols = h2["key-volumes"]
    assert.truthy(vols and #vols > 0)
    assert.is_nil(h2["location"])
    assert.is_nil(h["location"])
    -- The same record as mkv answers directly.
    local _, hd = H.http("HEAD", c.url .. "/api/one")
    assert.equal(hd["key-volumes"], vols)
    assert.equal(hd["content-md5"], h2["content-md5"])
  end)

  it("HEAD gives the value's metadata: Content-Length, Content-Md5", function()
    local v = A.bytes(12345, 8)
    assert.equal(201, (cl.req("PUT", "/api/head", { body = v })))
    local st, h = cl.req("HEAD", "/api/head")
    assert.equal(200, st)
    assert.equal("12345", h["content-length"])
    assert.equal(H.md5_hex(v), h["content-md5"])
    assert.equal("bytes", h["accept-ranges"])
    assert.is_nil(h["transfer-encoding"])
  end)

  it("serves Range reads: bytes=0-9, bytes=-5, an open range, and 416 past the end", function()
    local v = A.bytes(1000, 9)
    assert.equal(201, (cl.req("PUT", "/api/range", { body = v })))
    local st, h, body = cl.req("GET", "/api/range", { range = "bytes=0-9" })
    assert.equal(206, st)
    assert.equal(v:sub(1, 10), body)
    assert.equal("bytes 0-9/1000", h["content-range"])
    assert.equal(H.md5_hex(v), h["content-md5"]) -- the whole value's MD5, as mkv says
    st, h, body = cl.req("GET", "/api/range", { range = "bytes=-5" })
    assert.equal(206, st)
    assert.equal(v:sub(-5), body)
    assert.equal("bytes 995-999/1000", h["content-range"])
    st, _, body = cl.req("GET", "/api/range", { range = "bytes=990-" })
    assert.equal(206, st)
    assert.equal(v:sub(991), body)
    st = cl.req("GET", "/api/range", { range = "bytes=5000-6000" })
    assert.equal(416, st)
  end)

  it("passes mkv's own answers through: 404s, 403 on overwrite, 411, 400 on a bad MD5", function()
    local st, h = cl.req("GET", "/api/missing")
    assert.equal(404, st)
    assert.equal("0", h["content-length"])
    assert.equal(404, (cl.req("HEAD", "/api/missing")))
    assert.equal(404, (cl.req("DELETE", "/api/missing")))
    assert.equal(404, (cl.req("UNLINK", "/api/missing")))
    assert.equal(201, (cl.req("PUT", "/api/twice", { body = "first" })))
    assert.equal(403, (cl.req("PUT", "/api/twice", { body = "second" })))
    assert.equal(411, (cl.req("PUT", "/api/empty", { body = "" })))
    assert.equal(400, (cl.req("PUT", "/api/badmd5", { body = "hello",
      headers = { ["Content-MD5"] = "AAAAAAAAAAAAAAAAAAAAAA==" } })))
    assert.equal(404, (cl.req("GET", "/api/badmd5")))
    assert.equal(405, (cl.req("POST", "/api/post", { body = "x" })))
  end)

  it("a large PUT refused early (key exists): the 403 reaches the client every time, the value stays", function()
    assert.equal(201, (cl.req("PUT", "/api/early", { body = "original" })))
    local file = H.tmpdir("early") .. "/64m"
    H.sh("truncate -s 64M " .. H.shq(file))
    for i = 1, 12 do
      local st = cl.req("PUT", "/api/early", { file = file })
      -- mkv answers 403 before reading the body. Closing at once would make the close
      -- a reset (the body unread) that can destroy the 403 before nginx reads it, and
      -- nginx would answer 502; mkv's lingering close (FIN after the answer, then read
      -- and drop what still comes) lets the 403 through.
      assert.equal(403, st, "try " .. i)
    end
    local st2, _, body = cl.req("GET", "/api/early")
    assert.equal(200, st2)
    assert.equal("original", body)
    assert.equal(403, (H.http("PUT", c.url .. "/api/early", { file = file })))
  end)

  it("DELETE and UNLINK, and ?unlinked lists what UNLINK hid", function()
    assert.equal(201, (cl.req("PUT", "/del/a", { body = "a" })))
    assert.equal(201, (cl.req("PUT", "/del/b", { body = "b" })))
    assert.equal(204, (cl.req("DELETE", "/del/a")))
    assert.equal(404, (cl.req("GET", "/del/a")))
    assert.equal(204, (cl.req("UNLINK", "/del/b")))
    assert.equal(404, (cl.req("GET", "/del/b")))
    local st, _, body = cl.req("GET", "/del/?unlinked", { raw = true })
    assert.equal(200, st)
    local nxt, keys = A.parse_listing(body)
    assert.equal("", nxt)
    assert.same({ "/del/b" }, keys)
    assert.equal(204, (cl.req("DELETE", "/del/b")))
    _, _, body = cl.req("GET", "/del/?unlinked", { raw = true })
    assert.same({}, select(2, A.parse_listing(body)))
  end)

  it("lists with prefix, limit and start, following next, as mkv does directly", function()
    for i = 1, 7 do
      assert.equal(201, (cl.req("PUT", string.format("/ls/k%02d", i), { body = "v" .. i })))
    end
    assert.equal(201, (cl.req("PUT", "/lsx", { body = "outside" })))
    local all, start, pages = {}, nil, 0
    repeat
      local q = "/ls/?list&limit=3" .. (start and ("&start=" .. enc(start)) or "")
      local st, _, body = cl.req("GET", q, { raw = true })
      assert.equal(200, st)
      local nxt, keys = A.parse_listing(body)
      for _, k in ipairs(keys) do all[#all + 1] = k end
      pages = pages + 1
      start = nxt ~= "" and nxt or nil
    until not start or pages > 10
    assert.equal(3, pages)
    assert.same({ "/ls/k01", "/ls/k02", "/ls/k03", "/ls/k04", "/ls/k05", "/ls/k06", "/ls/k07" }, all)
    local _, _, via_proxy = cl.req("GET", "/ls?list", { raw = true })
    local _, _, direct = H.http("GET", c.url .. "/ls?list")
    assert.equal(direct, via_proxy)
    assert.truthy(via_proxy:find('"/lsx"', 1, true))
  end)

  it("streams a chunked PUT (curl, Transfer-Encoding: chunked) to mkv", function()
    local v = A.bytes(300000, 10)
    local st = cl.req("PUT", "/api/chunked", { body = v, chunked = true })
    assert.equal(201, st)
    local st2, h, body = cl.req("GET", "/api/chunked")
    assert.equal(200, st2)
    assert.equal(v, body)
    assert.equal(H.md5_hex(v), h["content-md5"])
  end)

  it("keeps keys byte for byte: spaces, '+', %2F, '//', unicode, '?' and ';' escaped", function()
    -- Sent percent-encoded (and '+', '//' and ';' as they are): the proxy must pass the
    -- request target on untouched for mkv to decode the same key.
    local keys = { "/k e y", "/a+b", "/a/b%2Fc", "/x//y", "/ünïcødé/ключ", "/q?mark",
                   "/semi;colon", "/tilde~", "/%41literal" }
    local raw = {}
    for i, k in ipairs(keys) do
      local target = enc(k):gsub("%%2B", "+"):gsub("%%3B", ";")
      if k == "/a/b%2Fc" then target = "/a/b%252Fc" end -- the key holds "%2F" itself
      raw[i] = target
      local st = cl.req("PUT", target, { raw = true, body = "value of " .. k })
      assert.equal(201, st, k)
    end
    assert.equal(201, (cl.req("PUT", "/slash%2Fin%2Fkey", { raw = true, body = "slashes" })))
    for i, k in ipairs(keys) do
      local st, _, body = cl.req("GET", raw[i], { raw = true })
      assert.equal(200, st, k)
      assert.equal("value of " .. k, body)
      local st2, h2 = cl.req("HEAD", raw[i], { raw = true })
      assert.equal(200, st2, k)
      assert.equal(H.md5_hex("value of " .. k), h2["content-md5"])
    end
    -- mkv saw exactly these keys: the listing (direct, and through the proxy) has them.
    local _, _, body = H.http("GET", c.url .. "/?list")
    local _, listed = A.parse_listing(body)
    for _, k in ipairs(keys) do assert.is_true(A.contains(listed, k), k .. " not listed") end
    assert.is_true(A.contains(listed, "/slash/in/key"))
    local _, _, body2 = cl.req("GET", "/?list", { raw = true })
    assert.equal(body, body2)
    local st, _, v = cl.req("GET", "/slash/in/key", { raw = true })
    assert.equal(200, st)
    assert.equal("slashes", v)
  end)

  it("drops a client's X-Mkv-Avoid-Volume: only the proxy may send it", function()
    local v = "avoid me"
    assert.equal(201, (cl.req("PUT", "/api/inject", { body = v })))
    local _, h = H.http("HEAD", c.url .. "/api/inject")
    local holders = {}
    for vol in h["key-volumes"]:gmatch("([^,/]+)[^,]*") do holders[#holders + 1] = vol end
    assert.equal(2, #holders)
    -- Directly, mkv honours the header: the avoided replica is probed last.
    for _ = 1, 10 do
      local st, hh = H.http("GET", c.url .. "/api/inject",
        { headers = { ["X-Mkv-Avoid-Volume"] = holders[1] } })
      assert.equal(302, st)
      assert.truthy(hh.location:find("http://" .. holders[2] .. "/", 1, true), hh.location)
    end
    -- Through the proxy the header is dropped: reads still go to both replicas.
    local before = #P.access_lines(c.proxy)
    for _ = 1, 30 do
      local st, _, body = cl.req("GET", "/api/inject", { headers = { ["X-Mkv-Avoid-Volume"] = holders[1] } })
      assert.equal(200, st)
      assert.equal(v, body)
    end
    P.wait_access(c.proxy, before + 30)
    local count = {}
    for _, e in ipairs(served_by(c.proxy, before)) do
      assert.equal(2, #e.upstreams)
      local vol = e.upstreams[2]
      count[vol] = (count[vol] or 0) + 1
    end
    -- 30 random picks out of 2 all landing on one replica: 1 in 2^29.
    assert.truthy(count[holders[1]], "the avoided replica never served: the header reached mkv")
    assert.truthy(count[holders[2]])
  end)

  it("logs one line per request: the request, mkv and the volume that served", function()
    local before = #P.access_lines(c.proxy)
    assert.equal(201, (cl.req("PUT", "/api/logged", { body = "x" })))
    assert.equal(200, (cl.req("GET", "/api/logged")))
    P.wait_access(c.proxy, before + 2)
    local lines = P.access_lines(c.proxy)
    local put, get = P.parse_access(lines[before + 1]), P.parse_access(lines[before + 2])
    assert.equal("PUT /api/logged HTTP/1.1", put.request)
    assert.equal(201, put.status)
    assert.same({ "127.0.0.1:" .. c.mkv.port }, put.upstreams)
    assert.equal("GET /api/logged HTTP/1.1", get.request)
    assert.same({ 302, 200 }, get.ustatus)
    assert.is_true(A.contains(c.addrs, get.upstreams[2]))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("reads through the proxy when a volume fails", function()
  local c, cl
  setup(function()
    c = proxied_cluster({ n = 3, replicas = 2 })
    cl = c.client
  end)
  teardown(H.cleanup)

  it("a volume that passes mkv's HEAD probe but drops GETs: the proxy asks mkv again, avoiding it", function()
    local keys = {}
    for i = 1, 12 do
      keys[i] = "/flaky/" .. i
      assert.equal(201, (cl.req("PUT", keys[i], { body = "value " .. i })))
    end
    -- Volume 1 is replaced, on its port and root, by an nginx that answers HEAD from the
    -- same files but closes the connection on every GET.
    local v1 = c.volumes[1]
    v1:stop()
    local flaky = P.start_flaky_volume(v1.port, v1.root)
    local before = #P.access_lines(c.proxy)
    for _ = 1, 4 do
      for i, k in ipairs(keys) do
        local st, _, body = cl.req("GET", k)
        assert.equal(200, st, k)
        assert.equal("value " .. i, body)
      end
    end
    P.wait_access(c.proxy, before + 48)
    local retried = 0
    for _, e in ipairs(served_by(c.proxy, before)) do
      if #e.upstreams == 4 then
        -- mkv -> the flaky volume (502) -> mkv, told to avoid it -> another volume
        assert.same({ 302, 502, 302, 200 }, e.ustatus)
        assert.equal(flaky.addr, e.upstreams[2])
        assert.are_not.equal(flaky.addr, e.upstreams[4])
        retried = retried + 1
      else
        assert.same({ 302, 200 }, e.ustatus)
      end
    end
    -- mkv picks a random replica first; with 2/3 of the keys on the flaky volume, some
    -- reads must have met it (all 48 missing it: about 1 in 10^6).
    assert.is_true(retried > 0, "no read went to the flaky volume")
    -- A HEAD goes the same way.
    for i, k in ipairs(keys) do
      local st, h = cl.req("HEAD", k)
      assert.equal(200, st)
      assert.equal(tostring(#("value " .. i)), h["content-length"])
    end
    flaky:stop()
  end)

  it("a volume killed while GETs run: every GET started after the kill gets the right bytes", function()
    -- The volume of the previous test is back as a real volume.
    local v1 = c.volumes[1]
    c.volumes[1] = H.restart_volume(v1)
    local dir = H.tmpdir("killrun")
    local keys, md5s = {}, {}
    local n = 30
    for i = 1, n do
      local v = A.bytes(20000 + i * 100, 100 + i)
      keys[i] = "/kill/" .. i
      md5s[i] = H.md5_hex(v)
      assert.equal(201, (cl.req("PUT", keys[i], { body = v })))
    end
    -- 4 clients, each GETting keys in turn for 5 s and logging start time, key, status
    -- and the MD5 of what came back.
    local script = { "#!/bin/bash", "url=" .. H.shq(c.proxy.url), "ca=" .. H.shq(c.tls.cert),
      "w=$1", "end=$(( $(date +%s) + 5 ))", "i=$w",
      "while [ $(date +%s) -lt $end ]; do",
      "  k=$(( i % " .. n .. " + 1 )); i=$((i + 1))",
      "  t=$(date +%s.%N)",
      "  code=$(curl -s --max-time 10 --cacert \"$ca\" -o \"$0.$w.body\" -w '%{http_code}' \"$url/kill/$k\")",
      "  echo \"$t $k $code $(md5sum < \"$0.$w.body\" | cut -c1-32)\"",
      "done" }
    local sfile = H.write_file(dir .. "/loop.sh", table.concat(script, "\n") .. "\n")
    local loops = {}
    for w = 1, 4 do
      loops[w] = H.spawn("getloop" .. w, { "bash", sfile, tostring(w) }, { log = dir .. "/out" .. w })
    end
    H.sleep(1.5)
    -- Kill volume 2's nginx, master and workers at once, as a crash would.
    P.kill_group(c.volumes[2])
    local killed_at = P.wall()
    for _, l in ipairs(loops) do
      H.eventually(function() return not l:alive() end, 20, "GET loop to finish")
    end
    local after, before_kill, total = 0, 0, 0
    for w = 1, 4 do
      for line in (H.read_file(dir .. "/out" .. w) or ""):gmatch("[^\n]+") do
        local t, k, code, md5 = line:match("^(%S+) (%d+) (%d+) (%x+)$")
        assert.truthy(t, "bad loop line: " .. line)
        total = total + 1
        if tonumber(t) > killed_at then
          after = after + 1
          assert.equal("200", code, "GET /kill/" .. k .. " after the kill: " .. line)
          assert.equal(md5s[tonumber(k)], md5, "GET /kill/" .. k .. " after the kill")
        else
          before_kill = before_kill + 1
        end
      end
    end
    print(string.format("\n# %d GETs: %d before the kill, %d after (all 200, right bytes)",
      total, before_kill, after))
    assert.is_true(before_kill >= 4, "too few GETs before the kill: " .. before_kill)
    assert.is_true(after >= 12, "too few GETs after the kill: " .. after)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("public_url mode", function()
  local c, tls, proxy, vport
  setup(function()
    tls = P.make_cert()
    vport = H.free_port()
    c = H.cluster({ n = 3, replicas = 2, flags = { "-public-url", "https://127.0.0.1:" .. vport } })
    -- Only volumes 1 and 2 are on the proxy's list.
    proxy = P.start_proxy({ tls = tls, mkv = c.mkv, volumes = { c.addrs[1], c.addrs[2] },
                            volume_listen = vport })
  end)
  teardown(H.cleanup)

  -- A key both of whose replicas are on volumes of the proxy's list (1 and 2), so that
  -- wherever mkv redirects, the proxy serves it.
  local function put_listed(prefix)
    for i = 1, 100 do
      local k = prefix .. i
      assert.equal(201, (H.http("PUT", c.url .. k, { body = "bytes of " .. k })))
      local _, h = H.http("HEAD", c.url .. k)
      if not h["key-volumes"]:find(c.addrs[3], 1, true) then return k, h end
    end
    error("no key landed on volumes 1 and 2")
  end

  it("mkv redirects to the proxy; a client following it gets the bytes, never a volume", function()
    local k = put_listed("/pub/a")
    local st, h = H.http("GET", c.url .. k)
    assert.equal(302, st)
    local loc = h.location
    local prefix = "https://127.0.0.1:" .. vport .. "/"
    assert.equal(prefix, loc:sub(1, #prefix))
    -- curl -L follows mkv's redirect to the proxy's volume port.
    local st2, h2, body, _, blocks = P.http("GET", c.url .. k, { follow = true, cacert = tls.cert })
    assert.equal(200, st2)
    assert.equal("bytes of " .. k, body)
    assert.equal(2, #blocks)
    assert.equal("0", blocks[1]["content-length"])
    local st3, h3 = P.http("HEAD", c.url .. k, { follow = true, cacert = tls.cert })
    assert.equal(200, st3)
    assert.equal(tostring(#("bytes of " .. k)), h3["content-length"])
    local st4, _, part = P.http("GET", loc, { range = "bytes=0-4", cacert = tls.cert })
    assert.equal(206, st4)
    assert.equal("bytes", part)
    assert.is_nil(h2.location)
  end)

  it("the main port follows public_url redirects itself", function()
    local cl = P.client(proxy)
    for i = 1, 6 do
      local k = "/pub/main" .. i
      assert.equal(201, (cl.req("PUT", k, { body = "main " .. i })))
      local st, h, body = cl.req("GET", k)
      assert.equal(200, st)
      assert.equal("main " .. i, body)
      assert.equal(H.md5_hex("main " .. i), h["content-md5"])
    end
  end)

  it("serves only GET/HEAD of files of listed volumes: others 404, writes 405", function()
    local k = put_listed("/pub/b")
    local _, h = H.http("GET", c.url .. k)
    local loc = h.location
    local vol1 = "/" .. c.addrs[1] .. "/"
    local path = loc:match("^https://[^/]+/[^/]+(/.*)$")
    local base = "https://127.0.0.1:" .. vport
    local function get(p, method, opts)
      opts = opts or {}
      opts.cacert = tls.cert
      return P.http(method or "GET", base .. p, opts)
    end
    assert.equal(200, (get(vol1:sub(1, -2) .. path)))
    -- A volume not on the list (3), one that does not exist, no volume at all.
    assert.equal(404, (get("/" .. c.addrs[3] .. path)))
    assert.equal(404, (get("/127.0.0.1:1" .. path)))
    assert.equal(404, (get(path)))
    assert.equal(404, (get("/")))
    -- Directories (autoindex would list keys), dot segments, escapes.
    -- A real directory of the volume (the file's first), asked every way that could
    -- reach its listing.
    local d = path:match("^/([^/]+)/")
    assert.equal(200, (P.http("GET", "http://" .. c.addrs[1] .. "/" .. d .. "/")))
    assert.equal(404, (get(vol1)))
    assert.equal(404, (get(vol1 .. d)))
    assert.equal(404, (get(vol1 .. d .. "/")))
    assert.equal(404, (get(vol1 .. d .. "/.")))
    assert.equal(404, (get(vol1 .. d .. "/%2e")))
    assert.equal(404, (get(vol1 .. d .. "%2F")))
    assert.equal(404, (get(vol1 .. d .. "/x/..")))
    assert.equal(404, (get(vol1:sub(1, -2) .. path .. "/..")))
    local st = get(vol1 .. "../../etc/passwd")
    assert.is_true(st == 400 or st == 404, tostring(st))
    -- No writes: PUT, DELETE (the file stays).
    local stp, hp = get(vol1 .. "sv00/new", "PUT", { body = "x" })
    assert.equal(405, stp)
    assert.equal("GET, HEAD", hp.allow)
    assert.equal(405, (get(vol1:sub(1, -2) .. path, "DELETE")))
    assert.equal(405, (get(vol1:sub(1, -2) .. path, "POST", { body = "x" })))
    assert.equal(200, (get(vol1:sub(1, -2) .. path)))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("a 1 GB value through the proxy", function()
  local c, dir
  setup(function()
    -- Under AddressSanitizer freed blocks sit in a quarantine instead of being reused,
    -- which would read as growth (as in memory_spec.lua): off for this measurement.
    local asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")
    local env = asan and { ASAN_OPTIONS = asan .. ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0" }
    c = proxied_cluster({ n = 3, replicas = 2, env = env, workers = 2 })
    dir = H.tmpdir("big")
  end)
  teardown(H.cleanup)

  -- 64 MB: nginx relays a body through 8 x 64 KiB buffers and mkv holds at most 4 MiB of
  -- a PUT in flight; a value held whole, or spooled through memory, would be 1 GB.
  local MAX_GROWTH_KB = 64 * 1024

  local function mem(pids)
    local out = {}
    for _, pid in ipairs(pids) do
      out[pid] = { hwm = H.proc_status(pid, "VmHWM") or 0, rss = H.proc_status(pid, "VmRSS") or 0 }
    end
    return out
  end

  -- Runs a shell command in the background, sampling VmRSS of pids every 50 ms; returns
  -- the command's output and the highest RSS seen per pid.
  local function sampled(cmd, pids)
    local log = dir .. "/cmd.log"
    os.remove(log)
    local p = H.spawn("transfer", { "bash", "-c", cmd }, { log = log })
    local peak = {}
    repeat
      for _, pid in ipairs(pids) do
        local rss = H.proc_status(pid, "VmRSS")
        if rss and rss > (peak[pid] or 0) then peak[pid] = rss end
      end
      H.sleep(0.05)
    until not p:alive()
    assert.equal(0, p.status.code, "transfer failed: " .. p:log())
    return (p:log():gsub("%s+$", "")), peak
  end

  it("PUT and GET 1 GiB (random MiBs at start, middle, end): MD5 intact, mkv and nginx memory flat", function()
    local cl = c.client
    for i = 1, 5 do -- warm up pools, TLS sessions, Lua states
      assert.equal(201, (cl.req("PUT", "/warm" .. i, { body = A.bytes(70000, i) })))
      assert.equal(200, (cl.req("GET", "/warm" .. i)))
    end
    local file = dir .. "/1g"
    -- 1 GiB: 1023 MiB of zeros (sparse, fast to make) with a random MiB at the start, the
    -- middle and the end -- bytes that come back misplaced or mixed up change the MD5.
    assert.equal(0, select(2, H.sh("truncate -s 1G " .. H.shq(file)
      .. " && for off in 0 511 1023; do head -c 1M /dev/urandom | dd of=" .. H.shq(file)
      .. " bs=1M seek=$off conv=notrunc status=none; done")))
    local md5 = H.sh("md5sum " .. H.shq(file)):match("^(%x+)")
    local pids = { c.mkv.pid }
    for _, w in ipairs(P.workers(c.proxy)) do pids[#pids + 1] = w end
    assert.is_true(#pids >= 2, "no proxy workers found")
    local m0 = mem(pids)
    local curl = "curl -sS --http1.1 --cacert " .. H.shq(c.tls.cert) .. " --max-time "
      .. (300 * H.slow) .. " "
    local t0 = H.now()
    local code, peak_put = sampled(curl .. "-o /dev/null -w '%{http_code}' -T " .. H.shq(file) .. " "
      .. H.shq(c.proxy.url .. "/big"), pids)
    local t_put = H.now() - t0
    assert.equal("201", code)
    t0 = H.now()
    local got, peak = sampled(curl .. H.shq(c.proxy.url .. "/big") .. " | md5sum | cut -c1-32", pids)
    for pid, rss in pairs(peak_put) do peak[pid] = math.max(peak[pid] or 0, rss) end
    local t_get = H.now() - t0
    assert.equal(md5, got)
    local _, h = cl.req("HEAD", "/big")
    assert.equal(tostring(1024 * 1024 * 1024), h["content-length"])
    assert.equal(md5, h["content-md5"])
    local m1 = mem(pids)
    print(string.format("\n# 1 GiB through the proxy: PUT %.1f s, GET %.1f s", t_put, t_get))
    for i, pid in ipairs(pids) do
      local name = i == 1 and "mkv" or ("nginx worker " .. pid)
      local grew = m1[pid].hwm - m0[pid].hwm
      print(string.format("# %s: VmHWM %d kB -> %d kB (+%d kB), peak VmRSS sampled %d kB",
        name, m0[pid].hwm, m1[pid].hwm, grew, peak[pid] or 0))
      assert.is_true(grew <= MAX_GROWTH_KB, name .. " VmHWM grew by " .. grew .. " kB")
      assert.is_true((peak[pid] or 0) - m0[pid].rss <= MAX_GROWTH_KB, name .. " RSS grew too much")
    end
    -- Nothing was spooled to disk on the way.
    local spooled = H.sh("find " .. H.shq(c.proxy.state) .. " -path '*_temp/*' -type f | wc -l")
    assert.equal(0, tonumber(spooled))
    assert.equal(204, (cl.req("DELETE", "/big")))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("deploy/install into a staging root, and the systemd units", function()
  teardown(H.cleanup)

  local function install(root, args)
    return H.sh(H.shq(H.root .. "/deploy/install") .. " --root " .. H.shq(root)
      .. " --binary " .. H.shq(H.mkv_bin) .. " " .. (args or ""))
  end

  local function mode(path)
    return (H.sh("stat -c %a " .. H.shq(path)):gsub("%s+", ""))
  end

  local args = "--role all --volume 1:3001 --volume disk2:3002"
    .. " --volumes 10.1.0.2:3001,10.1.0.3:3001 --public-url https://proxy.example:8444"

  it("lays down the binary, scripts, units and example configs, and says what to run next", function()
    local root = H.tmpdir("root")
    local out, code = install(root, args)
    assert.equal(0, code, out)
    local files = {
      ["/usr/local/bin/mkv"] = "755",
      ["/usr/local/lib/mkv/volume"] = "755",
      ["/usr/local/lib/mkv/proxy"] = "755",
      ["/usr/local/lib/mkv/nginx-proxy.conf"] = "644",
      -- deploy/volume reads its nginx config from beside itself
      ["/usr/local/lib/mkv/nginx-volume.conf"] = "644",
      ["/usr/local/share/doc/mkv/config.example.lua"] = "644",
      ["/etc/systemd/system/mkv.service"] = "644",
      ["/etc/systemd/system/mkv-volume@.service"] = "644",
      ["/etc/systemd/system/mkv-proxy.service"] = "644",
      ["/etc/mkv/config.lua"] = "640",
      ["/etc/mkv/volume-1.env"] = "644",
      ["/etc/mkv/volume-disk2.env"] = "644",
      ["/etc/mkv/proxy.env"] = "644",
      ["/etc/logrotate.d/mkv"] = "644",
    }
    for f, m in pairs(files) do
      assert.truthy(A.exists(root .. f), f .. " missing")
      assert.equal(m, mode(root .. f), f)
    end
    for _, d in ipairs({ "/etc/mkv/tls", "/var/lib/mkv", "/var/lib/mkv/proxy", "/var/log/mkv",
                         "/srv/mkv/1", "/srv/mkv/disk2", "/var/lib/nginx/proxy" }) do
      assert.equal(0, select(2, H.sh("test -d " .. H.shq(root .. d))), d .. " missing")
    end
    assert.equal(H.read_file(H.mkv_bin), H.read_file(root .. "/usr/local/bin/mkv"))
    assert.equal(H.read_file(H.root .. "/deploy/proxy"), H.read_file(root .. "/usr/local/lib/mkv/proxy"))
    -- The example config is one mkv accepts.
    local C = require "mkv_config"
    local cfg, err = C.build(C.load_file(root .. "/etc/mkv/config.lua"), {}, "config.lua")
    assert.truthy(cfg, err)
    assert.same({ "10.1.0.2:3001", "10.1.0.3:3001" }, cfg.volumes)
    assert.equal("https://proxy.example:8444", cfg.public_url)
    assert.equal("/var/lib/mkv/index", cfg.db)
    assert.equal("PORT=3002", H.read_file(root .. "/etc/mkv/volume-disk2.env"):match("PORT=%d+"))
    -- The next steps name every unit, the volumes before mkv (it probes them).
    for _, s in ipairs({ "systemctl enable --now mkv\n", "systemctl enable --now mkv-volume@1 ",
                         "systemctl enable --now mkv-volume@disk2 ", "systemctl enable --now mkv-proxy\n" }) do
      assert.truthy(out:find(s, 1, true), "missing: " .. s)
    end
    assert.truthy(out:find("mkv-volume@1 ", 1, true) < out:find("systemctl enable --now mkv\n", 1, true),
      "mkv started before its volumes:\n" .. out)
    -- The staged proxy runs with the options proxy.env gives it (cert, key and log moved
    -- to test files) and writes a config nginx accepts.
    local tls = P.make_cert()
    local opts = H.read_file(root .. "/etc/mkv/proxy.env"):match("\nPROXY_OPTS=([^\n]+)")
    assert.truthy(opts)
    local out2, code2 = H.sh(H.shq(root .. "/usr/local/lib/mkv/proxy") .. " --state "
      .. H.shq(root .. "/var/lib/mkv/proxy") .. " " .. opts .. " --cert " .. H.shq(tls.cert)
      .. " --key " .. H.shq(tls.key) .. " --access-log off --check")
    assert.equal(0, code2, out2)
  end)

  it("--self-signed: a certificate for the host name, localhost and the host's addresses",
     function()
    local root = H.tmpdir("root")
    local out, code = install(root, "--role proxy --volumes 10.1.0.2:3001 --self-signed")
    assert.equal(0, code, out)
    local text = H.sh("openssl x509 -noout -ext subjectAltName -in " ..
      H.shq(root .. "/etc/mkv/tls/proxy.crt"))
    assert.truthy(text:find("DNS:localhost", 1, true), text)
    assert.truthy(text:find("IP Address:127.0.0.1", 1, true), text)
    local host = (H.sh("hostname -f 2>/dev/null || hostname"):gsub("%s+$", ""))
    assert.truthy(text:find("DNS:" .. host, 1, true), text)
    for a in H.sh("hostname -I 2>/dev/null"):gmatch("%S+") do
      if not a:find(":", 1, true) then
        assert.truthy(text:find("IP Address:" .. a, 1, true), a .. " missing: " .. text)
      end
    end
  end)

  it("is idempotent: a second run changes nothing and keeps an edited config", function()
    local root = H.tmpdir("root")
    assert.equal(0, select(2, install(root, args)))
    local cfg = root .. "/etc/mkv/config.lua"
    H.write_file(cfg, H.read_file(cfg) .. "-- edited by the operator\n")
    local edited = H.read_file(cfg)
    local out, code = install(root, args)
    assert.equal(0, code, out)
    assert.falsy(out:find("\ninstalled ", 1, true), out)
    assert.falsy(out:find("\ncreated ", 1, true), out)
    assert.truthy(out:find("kept " .. cfg, 1, true))
    assert.equal(edited, H.read_file(cfg))
    -- An updated script is installed again.
    local script = root .. "/usr/local/lib/mkv/proxy"
    H.write_file(script, "stale")
    out = install(root, args)
    assert.truthy(out:find("installed " .. script, 1, true))
    assert.equal(H.read_file(H.root .. "/deploy/proxy"), H.read_file(script))
  end)

  it("--dry-run prints what it would do and writes nothing; --prefix moves the paths", function()
    local root = H.tmpdir("root")
    local out, code = install(root, args .. " --dry-run")
    assert.equal(0, code, out)
    assert.truthy(out:find("would install " .. root .. "/usr/local/bin/mkv", 1, true))
    assert.truthy(out:find("would create directory " .. root .. "/srv/mkv/disk2", 1, true))
    assert.equal("", (H.sh("find " .. H.shq(root) .. " -mindepth 1")))
    local out2, code2 = install(root, "--role index --prefix /opt/mkv")
    assert.equal(0, code2, out2)
    local unit = H.read_file(root .. "/etc/systemd/system/mkv.service")
    assert.truthy(unit:find("ExecStart=/opt/mkv/bin/mkv -c /etc/mkv/config.lua", 1, true))
    assert.falsy(unit:find("/usr/local/", 1, true))
    assert.truthy(A.exists(root .. "/opt/mkv/bin/mkv"))
    -- The index role alone installs no volume or proxy unit.
    assert.falsy(A.exists(root .. "/etc/systemd/system/mkv-proxy.service"))
    assert.falsy(A.exists(root .. "/etc/systemd/system/mkv-volume@.service"))
    local _, bad = install(root, "--role everything")
    assert.equal(2, bad)
  end)

  it("the units say what the operator needs: run as mkv, reload by SIGHUP, stop after the drain", function()
    local function unit(name) return H.read_file(H.root .. "/deploy/systemd/" .. name) end
    local mkv = unit("mkv.service")
    for _, line in ipairs({ "ExecStart=/usr/local/bin/mkv -c /etc/mkv/config.lua", "User=mkv",
                            "KillSignal=SIGTERM", "ExecReload=/bin/kill -HUP $MAINPID",
                            "Restart=on-failure", "LimitNOFILE=65536", "ProtectSystem=strict",
                            "ReadWritePaths=/var/lib/mkv /var/log/mkv" }) do
      assert.truthy(mkv:find("\n" .. line .. "\n", 1, true), "mkv.service: " .. line)
    end
    -- Longer than mkv's default drain (30 s) plus the index flush.
    assert.is_true(tonumber(mkv:match("\nTimeoutStopSec=(%d+)")) > 30)
    -- LuaJIT needs executable memory: this setting would break mkv.
    assert.falsy(mkv:find("\nMemoryDenyWriteExecute=yes", 1, true))
    local vol = unit("mkv-volume@.service")
    assert.truthy(vol:find("\nEnvironmentFile=/etc/mkv/volume-%i.env\n", 1, true))
    assert.truthy(vol:find("\nExecStart=/usr/local/lib/mkv/volume /srv/mkv/%i\n", 1, true))
    local px = unit("mkv-proxy.service")
    assert.truthy(px:find("\nEnvironmentFile=/etc/mkv/proxy.env\n", 1, true))
    assert.truthy(px:find("\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n", 1, true))
  end)

  it("systemd-analyze verify finds nothing wrong in the installed units", function()
    local _, has = H.sh("command -v systemd-analyze")
    assert.equal(0, has, "systemd-analyze is missing (deploy/setup installs systemd)")
    local root = H.tmpdir("root")
    assert.equal(0, select(2, install(root, args)))
    -- verify --root resolves ExecStart= and the units' dependencies inside the root: give
    -- it /bin/kill and the system's own units, as a real machine has them.
    assert.equal(0, select(2, H.sh("mkdir -p " .. H.shq(root .. "/bin") .. " " .. H.shq(root .. "/usr/lib/systemd")
      .. " && cp /bin/kill " .. H.shq(root .. "/bin/") .. " && cp -r /lib/systemd/system "
      .. H.shq(root .. "/usr/lib/systemd/"))))
    local out, code = H.sh("systemd-analyze verify --root=" .. H.shq(root)
      .. " /etc/systemd/system/mkv.service /etc/systemd/system/mkv-volume@.service"
      .. " /etc/systemd/system/mkv-proxy.service")
    assert.equal(0, code, out)
    assert.equal("", out)
  end)
end)
