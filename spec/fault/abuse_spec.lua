-- Abuse of the index server (testing-reliability §2.2 N1-N5, K1), adding to
-- spec/integration/bad_input_spec.lua what it does not cover: slowloris and slow
-- bodies (slowhttptest), fifteen thousand idle connections, the connection limit and fd
-- exhaustion (EMFILE), early answers to bodied requests followed by a smuggled
-- request, Transfer-Encoding/Content-Length shapes, odd keys ('..', NUL, non-UTF-8,
-- CR/LF into a fallback Location). Every write goes into a ledger, and every test ends
-- with mkv restarted on the same directories and the shared verifier
-- (spec/fault_helpers.lua: the bytes of every key, `mkv verify --deep`, fds, RSS).
--
-- MKV_ABUSE_CONNS: how many idle connections to hold (default 15000; the fd limit
-- here is 20000 for the client and for mkv).
local H = require "helpers"
local A = require "api_support"
local NS = require "netns"
local F = require "fault_helpers"
local T = H.T

-- The whole spec runs in a private network namespace (spec/netns.lua): its ephemeral
-- ports are its own (two rounds of 15000 connections need 30000, and the ports of
-- closed ones sit in TIME_WAIT), and other processes on the machine neither take them
-- nor see these connections.
local function private_net()
  if NS.entered then return end
  NS.enter()
  local out, code = H.sh("sysctl -qw net.ipv4.ip_local_port_range='10000 65000'")
  assert(code == 0, "sysctl ip_local_port_range: " .. out)
end

local IDLE_CONNS = tonumber(os.getenv("MKV_ABUSE_CONNS") or "15000")

local function show(s)
  s = tostring(s or "")
  if #s > 300 then s = s:sub(1, 300) .. "...(" .. #s .. " bytes)" end
  return (s:gsub("[%z\1-\31\127-\255]", function(ch)
    if ch == "\r" then return "\\r" elseif ch == "\n" then return "\\n" end
    return string.format("\\x%02x", ch:byte())
  end))
end

local raw = H.raw_parts

-- mkv's fds (its keep-alive connections to the volumes and LevelDB's files aside: how
-- many the pools keep depends on which worker served what, see H.fd_census) and RSS,
-- and checks that they come back to a baseline.
local function usage(c)
  return { fds = (H.fd_census(c.pid, c.volumes, c.db)), rss = H.proc_status(c.pid, "VmRSS") }
end

local function eventually_back(c, base, rss_slack_kb, what)
  H.eventually(function()
    local u = usage(c)
    return u.fds <= base.fds and u.rss <= base.rss + rss_slack_kb,
      string.format("fds %d (baseline %d), VmRSS %d kB (baseline %d kB)", u.fds, base.fds, u.rss, base.rss)
  end, 15, what or "mkv's fds and RSS back at the baseline")
end

-- A GET that must be answered quickly (a keep-alive-free curl). -> seconds
local function timed_get(url, want)
  local t0 = H.now()
  local st = H.http("GET", url, { timeout = 10 })
  local took = H.now() - t0
  assert.equal(want or 302, st, "GET " .. url)
  return took
end

-- A cluster (spec/fault_helpers.lua) started, with its ledger, the keys `seed` (key ->
-- value) written through it, and a baseline taken once the pools are warm.
-- -> c, ledger, base
local function abuse_cluster(opts, seed)
  local c = F.cluster(opts)
  c:start()
  local ledger = F.ledger(c.logdir .. "/ledger")
  local first
  for key, value in pairs(seed) do
    assert.equal(201, (ledger:send(c, "PUT", key, value)))
    first = first or key
  end
  for _ = 1, 8 do timed_get(c.url .. first) end
  H.sleep(0.3)
  return c, ledger, usage(c)
end

-- How every test here ends: restart, verify, and a fresh baseline.
local function verified(c, ledger, name)
  F.restart_and_verify(c, ledger, "abuse/" .. name)
  H.sleep(0.3)
  return usage(c)
end

-- ---------------------------------------------------------------------------------------
describe("slow clients with slowhttptest (header_timeout 2s, body_timeout 2s)", function()
  local c, ledger, base
  setup(function()
    private_net()
    c, ledger, base = abuse_cluster({ n = 2, replicas = 2,
      config = 'return { limits = { header_timeout = "2s", body_timeout = "2s", idle_timeout = "10s" } }' },
      { ["/live"] = "here" })
  end)
  teardown(H.cleanup)

  -- Runs slowhttptest in the background for `secs` while GETs go on; returns its
  -- output, the number of GETs and the slowest.
  local function attack(args, secs)
    local d = H.tmpdir("slow")
    H.sh(string.format("(timeout %d slowhttptest %s -l %d -p 2 -u %s > %s/out 2>&1; echo > %s/done) " ..
      ">/dev/null 2>&1 &", secs + 20, args, secs, H.shq(c.url .. "/slow"), d, d))
    local n, worst = 0, 0
    local deadline = H.now() + secs + 30
    H.sleep(1)
    while not A.exists(d .. "/done") do
      assert(H.now() < deadline, "slowhttptest did not finish")
      worst = math.max(worst, timed_get(c.url .. "/live"))
      n = n + 1
      H.sleep(0.1)
    end
    local out = H.read_file(d .. "/out") or ""
    print(string.format("\n# slowhttptest %s: %d GETs meanwhile, slowest %.2fs; %s", args, n, worst,
      (out:match("[^\n]*service available:[^\n]*") or ""):gsub("%s+", " ")))
    return out, n, worst
  end

  it("slowloris (500 connections, headers dribbled): served throughout, all closed, fds back", function()
    local out, n, worst = attack("-H -c 500 -r 250 -i 1 -x 10", 8)
    assert(n >= 5, "only " .. n .. " GETs during the attack")
    assert(worst <= 1.0 * H.slow, string.format("a GET took %.2fs during the attack", worst))
    assert.falsy(out:gsub("\27%[[%d;]*[A-Za-z]", ""):find("service available:%s*NO"), "slowhttptest saw the service unavailable:\n" .. out)
    -- mkv closed every slow connection at the header timeout: slowhttptest stops
    -- early, having no connection left, long before its 8 s.
    local plain = out:gsub("\27%[[%d;]*[A-Za-z]", "")
    assert.truthy(plain:find("Exit status:%s*No open connections left"), "slowhttptest's exit:\n" .. plain)
    local ended = tonumber(plain:match("Test ended on (%d+)")) or 99
    assert(ended <= 6, "slowhttptest ended on second " .. ended .. ": connections lived too long")
    eventually_back(c, base, 16 * 1024)
    base = verified(c, ledger, "slowloris")
  end)

  it("slow bodies (PUT, 200 connections, a byte or so a second): served, not live, fds back", function()
    local out, n, worst = attack("-B -t PUT -c 200 -r 200 -i 1 -s 4096 -x 10", 6)
    assert(n >= 5, "only " .. n .. " GETs during the attack")
    assert(worst <= 1.0 * H.slow, string.format("a GET took %.2fs during the attack", worst))
    assert.falsy(out:gsub("\27%[[%d;]*[A-Za-z]", ""):find("service available:%s*NO"), "slowhttptest saw the service unavailable:\n" .. out)
    -- None of the bodies completed: the key is not live, and can be written.
    assert.equal(404, (H.http("GET", c.url .. "/slow")))
    H.eventually(function()
      local st = ledger:send(c, "PUT", "/slow", "complete")
      return st == 201, st
    end, 10, "a PUT of /slow after the attack")
    eventually_back(c, base, 16 * 1024)
    base = verified(c, ledger, "slow-bodies")
  end)

  it("mkv is alive and serving afterwards", function()
    assert.is_true(c.mkv:alive(), c.mkv:log())
    local st, _, body = H.http("GET", c.url .. "/live", { follow = true })
    assert.equal(200, st)
    assert.equal("here", body)
    base = verified(c, ledger, "slow-afterwards")
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("many idle connections", function()
  local c, ledger, base
  setup(function()
    private_net()
    -- ASan's quarantine keeps freed blocks from being reused, which would read as
    -- growth from round to round: off here (as in memory_spec.lua).
    local asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")
    local env = asan and { ASAN_OPTIONS = asan .. ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0" }
    c, ledger, base = abuse_cluster({ n = 1, replicas = 1, flags = { "-workers", "2" }, env = env,
      -- max_connections is split evenly over the workers, but the kernel hands the
      -- connections to whichever worker accepts first (9000/6000 happens): 40000 keeps
      -- the limit out of this test (the next describe tests it).
      config = 'return { limits = { max_connections = 40000, idle_timeout = "120s" } }' },
      { ["/live"] = "here" })
  end)
  teardown(H.cleanup)

  local function hold(n)
    local fds = {}
    local t0 = H.now()
    for i = 1, n do
      local fd, err = T.connect(c.port)
      if not fd then
        for j = 1, #fds do T.close(fds[j]) end
        error("connect #" .. i .. ": " .. tostring(err))
      end
      fds[i] = fd
      -- Keep the accept queue short (its limit is 4096): a connection the kernel
      -- dropped from a full queue would only come in after SYN-ACK retries.
      if i % 500 == 0 then
        local ok = pcall(H.eventually, function()
          return T.fd_count(c.pid) >= base.fds + i - 1000
        end, 10, "mkv accepting")
        if not ok then
          for j = 1, #fds do T.close(fds[j]) end
          error("mkv accepted only " .. (T.fd_count(c.pid) - base.fds) .. " of " .. i .. " connections")
        end
      end
    end
    return fds, H.now() - t0
  end

  it(IDLE_CONNS .. " idle connections: a request is still served quickly; fds and RSS come back", function()
    local quiet = 0
    for _ = 1, 5 do quiet = math.max(quiet, timed_get(c.url .. "/live")) end
    local rss_after = {}
    for round = 1, 2 do
      local fds, took = hold(IDLE_CONNS)
      local ok, err = pcall(function()
        H.eventually(function()
          local n = T.fd_count(c.pid)
          return n >= base.fds + IDLE_CONNS, "mkv holds " .. tostring(n) .. " fds"
        end, 20, "mkv holding all " .. IDLE_CONNS .. " connections")
        local busy = 0
        for _ = 1, 5 do busy = math.max(busy, timed_get(c.url .. "/live")) end
        assert.equal(201, (ledger:send(c, "PUT", "/during" .. round, "x")))
        local u = usage(c)
        print(string.format("\n# round %d: %d connections opened in %.2fs; mkv %d fds, VmRSS %d kB " ..
          "(baseline %d fds, %d kB); GET slowest %.3fs (%.3fs before)", round, IDLE_CONNS, took,
          u.fds, u.rss, base.fds, base.rss, busy, quiet))
        assert(busy <= math.max(0.5, 10 * quiet) * H.slow,
          string.format("a GET took %.3fs with the connections held (%.3fs before)", busy, quiet))
      end)
      for i = 1, #fds do T.close(fds[i]) end
      if not ok then error(err, 0) end
      H.eventually(function()
        local n = usage(c).fds
        return n <= base.fds, "fd count " .. tostring(n) .. ", baseline " .. base.fds
      end, 20, "the fd count back at the baseline")
      H.sleep(0.5)
      rss_after[round] = H.proc_status(c.pid, "VmRSS")
    end
    print(string.format("# VmRSS after round 1: %d kB, after round 2: %d kB (baseline %d kB)",
      rss_after[1], rss_after[2], base.rss))
    -- Freed memory may stay in malloc's arenas, but a second round must mostly reuse it
    -- (measured: +0.1 MB under ASan, +0.4 to +2.4 MB release; a leak is LeakSanitizer's
    -- to find, at mkv's exit in the ASan run).
    assert(rss_after[2] <= rss_after[1] + 8192, "VmRSS grew from round 1 to round 2")
    assert(rss_after[2] <= base.rss + 64 * 1024, "VmRSS stayed " .. (rss_after[2] - base.rss) .. " kB up")
    base = verified(c, ledger, "idle")
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("at the connection limit and out of fds", function()
  setup(private_net)
  teardown(H.cleanup)

  -- Opens n connections; -> the fds, and how many the server closed within `wait` s.
  local function open_and_count_closed(port, n, wait)
    local fds = {}
    for i = 1, n do fds[i] = assert(T.connect(port)) end
    H.sleep(wait)
    local closed = 0
    for i = 1, n do
      local data, err = T.recv(fds[i], 0.001)
      if data == "" or (data == nil and err ~= "timeout") then closed = closed + 1 end
    end
    return fds, closed
  end

  it("max_connections 200 (2 workers): the surplus is closed at once, the rest served, no crash", function()
    local c, ledger, base = abuse_cluster({ n = 1, replicas = 1, flags = { "-workers", "2" },
      config = 'return { limits = { max_connections = 200 } }' }, { ["/live"] = "here" })
    local fds, closed = open_and_count_closed(c.port, 400, 1.0)
    local ok, err = pcall(function()
      print(string.format("\n# 400 connections to max_connections 200: %d closed by mkv", closed))
      -- Per worker: max_connections / workers (100 each, +1 while the surplus is being
      -- closed); the kernel spreads connections over the workers unevenly, so fewer
      -- may stay open, never more.
      assert(400 - closed <= 202, (400 - closed) .. " of 400 stayed open")
      assert(400 - closed >= 50, "only " .. (400 - closed) .. " of 400 stayed open")
      -- A connection that stayed open is served.
      for i = 1, #fds do
        local data, e = T.recv(fds[i], 0.001)
        if data == nil and e == "timeout" then
          T.send(fds[i], "GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
          local resp = T.recv(fds[i], 5 * H.slow)
          assert.equal(302, tonumber((resp or ""):match("^HTTP/1%.1 (%d+)")), show(resp))
          break
        end
      end
    end)
    for i = 1, #fds do T.close(fds[i]) end
    if not ok then error(err, 0) end
    eventually_back(c, base, 16 * 1024)
    assert.equal(302, timed_get(c.url .. "/live") and 302)
    assert.is_true(c.mkv:alive())
    verified(c, ledger, "max-connections")
  end)

  it("RLIMIT_NOFILE 256: connections past the fd limit are refused cleanly; service resumes", function()
    local c = F.cluster({ n = 1, replicas = 1, flags = { "-workers", "2" } })
    local m = c:start({ wrap = { "prlimit", "--nofile=256:256" }, exec_wrap = true })
    local port, url = c.port, c.url
    local ledger = F.ledger(c.logdir .. "/ledger")
    assert.equal(201, (ledger:send(c, "PUT", "/live", "here")))
    local base = usage(c)
    local fds, closed = open_and_count_closed(port, 600, 1.5)
    local ok, err = pcall(function()
      print(string.format("\n# 600 connections to mkv with 256 fds: %d closed by mkv; mkv holds %d fds",
        closed, T.fd_count(m.pid)))
      assert.is_true(m:alive(), "mkv died at EMFILE:\n" .. m:log())
      assert(closed >= 600 - 256, closed .. " of 600 closed")
      assert(T.fd_count(m.pid) <= 256)
    end)
    for i = 1, #fds do T.close(fds[i]) end
    if not ok then error(err, 0) end
    eventually_back(c, base, 16 * 1024)
    -- Service resumes: a PUT (upstream sockets and a file) and a GET.
    H.eventually(function()
      return ledger:send(c, "PUT", "/after", "after") == 201
    end, 10, "a PUT after the fd exhaustion")
    local st, _, body = H.http("GET", url .. "/after", { follow = true })
    assert.equal(200, st)
    assert.equal("after", body)
    assert.is_true(m:alive())
    verified(c, ledger, "nofile") -- restarted without the limit
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("smuggling shapes and odd keys (n=2, replicas=2, -fallback)", function()
  local c, ledger, port, base, fb
  setup(function()
    private_net()
    fb = "127.0.0.1:" .. H.free_port()
    c, ledger, base = abuse_cluster({ n = 2, replicas = 2, fallback = fb },
      { ["/exists"] = "old" })
    port = c.port
  end)
  teardown(H.cleanup)

  local smuggled = "GET /exists HTTP/1.1\r\nHost: x\r\n\r\n"

  -- Exactly one response, with status `want`; nothing answers the smuggled bytes.
  local function one_response(what, resp, want)
    local st = H.statuses(resp)
    assert(#st == 1, what .. ": " .. #st .. " responses: " .. show(resp))
    assert(st[1] == want, what .. ": status " .. st[1] .. ", want " .. want .. ": " .. show(resp))
  end

  it("an early 403 to a PUT with a body: the body's bytes never make a second response", function()
    local variants = {
      { "one packet", { "PUT /exists HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #smuggled .. "\r\n\r\n" .. smuggled } },
      { "body after a pause", { "PUT /exists HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #smuggled .. "\r\n\r\n",
        0.2, smuggled } },
      { "chunked", { "PUT /exists HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        string.format("%x\r\n", #smuggled) .. smuggled .. "\r\n0\r\n\r\n" } },
      { "a 1 MB body holding 30000 requests", { "PUT /exists HTTP/1.1\r\nHost: x\r\nContent-Length: " ..
        (#smuggled * 30000) .. "\r\n\r\n" .. string.rep(smuggled, 30000) } },
    }
    for _, v in ipairs(variants) do
      local resp = raw(port, v[2], 2)
      one_response(v[1], resp, 403)
      ledger:record("PUT", "/exists", H.md5_hex(smuggled), H.statuses(resp)[1])
    end
    local st, _, body = H.http("GET", c.url .. "/exists", { follow = true })
    assert.equal(200, st)
    assert.equal("old", body)
    base = verified(c, ledger, "early-403")
  end)

  it("an early 411 (a PUT with no body) followed by a request: answered in order, once each", function()
    -- A PUT with neither Content-Length nor chunked has an empty body: the next bytes are
    -- the next request on the keep-alive connection.
    local resp = raw(port, "PUT /nobody HTTP/1.1\r\nHost: x\r\n\r\n" .. smuggled ..
      "GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3)
    local st = H.statuses(resp)
    assert.same({ 411, 302, 302 }, st, show(resp))
    ledger:record("PUT", "/nobody", H.md5_hex(""), st[1])
    base = verified(c, ledger, "early-411")
  end)

  it("Transfer-Encoding and Content-Length shapes: 400 and close, one response, nothing stored", function()
    local shapes = {
      { "te-dup", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400 },
      -- Not chunked last: no framing the server knows, so no body length: 411, closed
      -- (the "body" is never read as a request).
      { "te-xchunked", "Transfer-Encoding: xchunked\r\n", 411 },
      { "te-identity", "Transfer-Encoding: identity\r\nContent-Length: 3\r\n", 400 },
      { "te-chunked-gzip", "Transfer-Encoding: chunked, gzip\r\n", 400 },
      { "te-tab", "Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n", 400 },
      { "cl-plus", "Content-Length: +3\r\n", 400 },
      { "cl-list", "Content-Length: 3, 3\r\n", 400 },
      { "cl-space-colon", "Content-Length : 3\r\n", 400 },
      { "cl-hex", "Content-Length: 0x3\r\n", 400 },
      { "cl-huge", "Content-Length: 99999999999999999999999\r\n", 400 },
    }
    local errs = {}
    for _, s in ipairs(shapes) do
      local resp, closed = raw(port, "PUT /" .. s[1] .. " HTTP/1.1\r\nHost: x\r\n" .. s[2] .. "\r\n" ..
        "3\r\nabc\r\n0\r\n\r\n" .. smuggled, 2)
      local st = H.statuses(resp)
      ledger:record("PUT", "/" .. s[1], H.md5_hex("abc"), st[1])
      if not (#st == 1 and st[1] == s[3] and closed) then
        errs[#errs + 1] = s[1] .. " (want " .. s[3] .. "): " .. show(resp) .. (closed and "" or " (not closed)")
      end
      local _, _, list = H.http("GET", c.url .. "/?list")
      if list:find('"/' .. s[1] .. '"', 1, true) then errs[#errs + 1] = s[1] .. " is live" end
    end
    assert(#errs == 0, table.concat(errs, "\n"))
    base = verified(c, ledger, "te-cl")
  end)

  it("keys with '..', NUL, non-UTF-8 bytes round-trip exactly and stay inside the volume root", function()
    local keys = {
      { "/../../etc/passwd-mkv", "/../../etc/passwd-mkv" },
      { "/%2e%2e/%2e%2e/x", "/../../x" },
      { "/a/..%2f..%2fb", "/a/../../b" },
      { "/nul%00key", "/nul\0key" },
      -- Listed as JSON, invalid UTF-8 shows as U+FFFD (as the Go original's json does).
      { "/bin%ff%fe%80", "/bin\255\254\128", "/bin" .. string.rep("\239\191\189", 3) },
      { "/sp%20and%09tab", "/sp and\ttab" },
    }
    local function nfiles()
      local n = 0
      for _, v in ipairs(c.volumes) do
        n = n + #H.volume_files(v)
      end
      return n
    end
    for i, k in ipairs(keys) do
      local body = "v" .. i
      local before = nfiles()
      local st = H.http("PUT", c.url .. k[1], { body = body })
      ledger:record("PUT", k[2], H.md5_hex(body), st)
      assert.equal(201, st, "PUT " .. k[1])
      local gst, _, got = H.http("GET", c.url .. k[1], { follow = true })
      assert.equal(200, gst, "GET " .. k[1])
      assert.equal(body, got)
      -- The file is where the key's base64 puts it, on both volumes, and nowhere else.
      assert.same({ 1, 2 }, A.holders(c.volumes, k[2]), show(k[2]))
      assert.equal(before + 2, nfiles())
      local _, _, keys_listed, list = A.list(c.url, "/")
      assert.is_true(A.contains(keys_listed, k[3] or k[2]), show(k[2]) .. " not listed: " .. show(list))
      -- Every other key stays live for the verifier's restart, which reads them back.
      if i % 2 == 0 then
        local dst = H.http("DELETE", c.url .. k[1])
        ledger:record("DELETE", k[2], nil, dst)
        assert.equal(204, dst)
        assert.same({}, A.holders(c.volumes, k[2]))
      end
    end
    -- Nothing was written outside the roots.
    assert.falsy(A.exists("/etc/passwd-mkv"))
    base = verified(c, ledger, "odd-keys")
  end)

  it("CR/LF/NUL in a missing key: the fallback Location is one encoded line", function()
    local cases = {
      { "/x%0d%0aSet-Cookie:%20a=b", "/x\r\nSet-Cookie: a=b" },
      { "/x%0aLocation:%20http://evil/", "/x\nLocation: http://evil/" },
      { "/x%00y%0d", "/x\0y\r" },
    }
    for _, case in ipairs(cases) do
      local t, key = case[1], case[2]
      local resp = raw(port, "GET " .. t .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2)
      assert.same({ 302 }, H.statuses(resp), show(resp))
      local head = resp:match("^(.-)\r\n\r\n") or resp
      local n = 0
      for _ in head:gmatch("\r\n[Ll]ocation:") do n = n + 1 end
      assert.equal(1, n, show(head))
      assert.falsy(head:lower():find("\r\nset%-cookie:"), show(head))
      assert.falsy(head:find("%z") or head:find("\r[^\n]") or head:find("[^\r]\n"), show(head))
      local loc = head:match("\r\n[Ll]ocation: ([^\r\n]*)")
      assert.equal("http://" .. fb .. H.urlencode_path(key), loc)
    end
    base = verified(c, ledger, "crlf")
  end)

  it("afterwards mkv serves, and its fds and RSS are at the baseline", function()
    assert.is_true(c.mkv:alive(), c.mkv:log())
    assert.equal(201, (ledger:send(c, "PUT", "/after", "after")))
    local st, _, body = H.http("GET", c.url .. "/after", { follow = true })
    assert.equal(200, st)
    assert.equal("after", body)
    eventually_back(c, base, 16 * 1024)
    verified(c, ledger, "afterwards")
  end)
end)
