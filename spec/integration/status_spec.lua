-- The status listener (README "Status page"): status_listen (off by default; a bare port
-- listens on loopback) serves a read-only HTML page, /metrics and /health; anything else
-- is 404/405 and never runs or cancels a job; status_token is a Bearer token on every
-- path and follows SIGHUP. The page is checked in a real browser (headless Chromium):
-- its text names every volume with its state, and a volume that goes down shows as
-- down. The browser's screenshots are kept as test artifacts (ARTIFACTS below).
local H = require "helpers"
local json = require "json"

local ARTIFACTS = os.getenv("MKV_ARTIFACTS") or (H.root .. "/build/test-artifacts")

local function status_url(port, path) return "http://127.0.0.1:" .. port .. (path or "/") end

local function get(port, path, opts)
  return H.http((opts and opts.method) or "GET", status_url(port, path), opts)
end

-- A cluster whose mkv has a status listener on a free port, with `extra` config lines.
local function cluster(extra, n)
  local sport = H.free_port()
  local config = "return { status_listen = " .. sport .. ", limits = { probe_interval = '200ms', "
    .. "probe_backoff = '400ms' }" .. (extra and (", " .. extra) or "") .. " }"
  local c = H.cluster({ n = n or 3, replicas = 2, config = config })
  c.sport = sport
  return c
end

-- Chromium, headless, with a profile of its own: the DOM it built, and a screenshot.
local function browser(url, shot)
  local chromium = H.sh("command -v chromium || command -v chromium-browser || true"):gsub("%s+$", "")
  assert(chromium ~= "", "chromium is not installed (deploy/setup --test installs it)")
  local profile = H.tmpdir("chromium")
  local base = string.format("%s --headless --no-sandbox --disable-gpu --no-first-run "
    .. "--disable-dev-shm-usage --user-data-dir=%s --window-size=1200,1600 ",
    H.shq(chromium), H.shq(profile))
  local dom = H.sh("timeout 60 " .. base .. "--dump-dom " .. H.shq(url) .. " 2>/dev/null")
  os.execute("mkdir -p " .. H.shq(ARTIFACTS))
  os.remove(shot)
  H.sh("timeout 60 " .. base .. "--screenshot=" .. H.shq(shot) .. " " .. H.shq(url) .. " >/dev/null 2>&1")
  local png = H.read_file(shot)
  assert(png and #png > 1000, "no screenshot at " .. shot)
  assert.equal("\137PNG", png:sub(1, 4))
  return dom
end

-- The volume rows of a page: addr -> state, from the DOM's data attributes.
local function volume_rows(html)
  local rows = {}
  for addr, state in html:gmatch('<tr class="volume" data%-volume="([^"]+)" data%-state="([^"]+)"') do
    rows[addr] = state
  end
  return rows
end

-- The page's visible text for a volume's row (what a person reads).
local function row_text(html, addr)
  local row = html:match('<tr class="volume" data%-volume="' .. addr:gsub("%p", "%%%0") .. '".-</tr>')
  return row and row:gsub("<[^>]+>", " "):gsub("%s+", " ") or nil
end

describe("status listener", function()
  teardown(H.cleanup)

  it("is off by default: no listener, no log line", function()
    local c = H.cluster({ n = 1, replicas = 1 })
    local log = c.mkv:log()
    assert.falsy(log:find("status listener", 1, true), log)
    -- the admin listener still serves /metrics as before
    assert.equal(200, (H.http("GET", "http://" .. H.admin_addr(c.db) .. "/metrics")))
    c.mkv:stop()
  end)

  it("serves the page, /metrics and /health on loopback; nothing else, and never a job", function()
    local c = cluster()
    H.eventually(function() return c.mkv:log():find("status listener", 1, true) end, 10, "log line")
    assert.truthy(c.mkv:log():find("status listener (read-only) on 127.0.0.1:" .. c.sport, 1, true),
      c.mkv:log())
    for i = 1, 10 do assert.equal(201, (H.http("PUT", c.url .. "/s/" .. i, { body = "v" .. i }))) end
    H.sleep(1.2)

    local st, h, page = get(c.sport, "/")
    assert.equal(200, st)
    assert.truthy(h["content-type"]:find("text/html", 1, true))
    -- works without the network: nothing loaded from anywhere
    assert.falsy(page:find("<script", 1, true))
    assert.falsy(page:find("<link", 1, true))
    for url in page:gmatch("https?://[^\"'<> ]+") do
      assert.equal("http://127.0.0.1", url:sub(1, #"http://127.0.0.1"), url)
    end
    local rows = volume_rows(page)
    for _, a in ipairs(c.addrs) do assert.equal("up", rows[a], page) end
    -- request counts and a rate per method
    local put = page:match('<tr class="method" data%-method="PUT">(.-)</tr>')
    assert.truthy(put, page)
    local cells = {}
    for cell in put:gmatch("<td[^>]*>(.-)</td>") do cells[#cells + 1] = cell end
    assert.equal("PUT", cells[1])
    assert.equal("10", cells[2])
    assert.truthy(tonumber(cells[3]), "a PUT rate: " .. put)
    assert.truthy(page:find('id="index"', 1, true))
    assert.truthy(page:find("Fsyncs", 1, true))
    assert.truthy(page:find("Size on disk", 1, true))
    assert.truthy(page:find("High availability", 1, true))
    assert.truthy(page:find('id="status" class="state ok">ok<', 1, true), page)

    local st2, h2, metrics = get(c.sport, "/metrics")
    assert.equal(200, st2)
    assert.truthy(h2["content-type"]:find("text/plain", 1, true))
    assert.truthy(metrics:find('mkv_volume_up{volume="' .. c.addrs[1] .. '"} 1', 1, true), metrics)
    assert.truthy(metrics:find('mkv_requests_total{method="PUT",code="201"} 10', 1, true), metrics)
    local st3, _, health = get(c.sport, "/health")
    assert.equal(200, st3)
    assert.equal("ok", json.decode(health).status)

    -- read-only: a job request is refused by method, other paths are 404
    for _, m in ipairs({ "POST", "PUT", "DELETE" }) do
      local s, hh = get(c.sport, "/", { method = m, body = "x" })
      assert.equal(405, s, m)
      assert.equal("GET, HEAD", hh.allow)
    end
    assert.equal(405, (get(c.sport, "/metrics", { method = "POST", body = "" })))
    assert.equal(404, (get(c.sport, "/admin/run?script=gc", { method = "POST", body = "" })))
    assert.equal(404, (get(c.sport, "/admin/run?script=gc")))
    assert.equal(404, (get(c.sport, "/index.html")))
    assert.equal(404, (get(c.sport, "/s/1")))
    assert.equal(200, (get(c.sport, "/", { method = "HEAD" })))
    H.sleep(0.3)
    assert.falsy(c.mkv:log():find("admin job started", 1, true), c.mkv:log())
    c.mkv:stop()
  end)

  it("shows a running admin job with its progress", function()
    local c = cluster()
    local big = string.rep("x", 64 * 1024)
    for i = 1, 6 do assert.equal(201, (H.http("PUT", c.url .. "/j/" .. i, { body = big }))) end
    local argv = { H.mkv_bin }
    for _, x in ipairs(c.flags) do argv[#argv + 1] = x end
    for _, x in ipairs({ "verify", "--deep", "--bandwidth", "64KB/s", "--concurrency", "1" }) do
      argv[#argv + 1] = x
    end
    local p = H.spawn("admin-verify", argv)
    local last
    local ok, page = pcall(H.eventually, function()
      local _, _, body = get(c.sport, "/")
      last = body
      local row = body:match('<tr class="job">(.-)</tr>')
      -- its phase and counts, from the job's progress lines
      return row and row:find("verify", 1, true) and row:find("records", 1, true) and body
    end, 30, "the verify job with its progress on the page")
    assert(ok, tostring(page) .. "\n" .. tostring(last and last:match('<table id="jobs">.-</table>'))
      .. "\n" .. p:log())
    assert.truthy(page:match('<tr class="job"><td>verify</td>'), page)
    -- verify --deep knows the bytes it will hash: how far it is, and an ETA
    local row = H.eventually(function()
      local _, _, body = get(c.sport, "/")
      local r = body:match('<tr class="job">(.-)</tr>') or ""
      return r:find(" of [%d.]+ [KM]?B") and r:find("ETA", 1, true) and r
    end, 20, "bytes and an ETA")
    assert.truthy(row:find(" of [%d.]+ [KM]?B"), row)
    assert.truthy(row:find("ETA", 1, true), row)
    H.eventually(function() return not p:alive() end, 60, "verify to finish")
    local _, _, after = get(c.sport, "/")
    assert.truthy(after:find("none running", 1, true), after)
    c.mkv:stop()
  end)

  it("with status_token: a Bearer token on every path, changed by SIGHUP", function()
    local dir = H.tmpdir("tok")
    local sport = H.free_port()
    local function config(tok)
      return string.format("return { status_listen = '127.0.0.1:%d', status_token = %q }", sport, tok)
    end
    local c = H.cluster({ n = 1, replicas = 1, config = config("first-status-token-123") })
    for _, path in ipairs({ "/", "/metrics", "/health" }) do
      local st, h = get(sport, path)
      assert.equal(401, st, path)
      assert.equal('Bearer realm="mkv-status"', h["www-authenticate"])
      st, h = get(sport, path, { headers = { Authorization = "Bearer wrong" } })
      assert.equal(401, st, path)
      assert.truthy(h["www-authenticate"]:find("invalid_token", 1, true))
      assert.equal(200, (get(sport, path, { headers = { Authorization = "Bearer first-status-token-123" } })), path)
    end
    -- the token is not the API's: the public API is open as before
    assert.equal(201, (H.http("PUT", c.url .. "/t", { body = "t" })))
    -- a method that is not allowed still needs the token first (no probing without it)
    assert.equal(401, (get(sport, "/", { method = "POST", body = "" })))
    H.write_file(c.mkv.dir .. "/config.lua", config("second-status-token-456"))
    c.mkv:signal(1)
    H.eventually(function() return c.mkv:log():find("reloaded", 1, true) end, 10, "reload")
    assert.equal(401, (get(sport, "/metrics", { headers = { Authorization = "Bearer first-status-token-123" } })))
    assert.equal(200, (get(sport, "/metrics", { headers = { Authorization = "Bearer second-status-token-456" } })))
    assert.falsy(c.mkv:log():find("second-status-token", 1, true), "the token reached the log")
    c.mkv:stop()
    -- from a file, relative to the config
    H.write_file(dir .. "/status.token", "file-status-token-789\n")
    local sport2 = H.free_port()
    local c2 = H.cluster({ n = 1, replicas = 1, config = string.format(
      "return { status_listen = %d, status_token_file = %q }", sport2, dir .. "/status.token") })
    assert.equal(401, (get(sport2, "/health")))
    assert.equal(200, (get(sport2, "/health", { headers = { Authorization = "Bearer file-status-token-789" } })))
    c2.mkv:stop()
  end)

  it("bad settings: a clear error and exit 2; a changed status_listen needs a restart", function()
    local dir = H.tmpdir("bad")
    local function run(cfg)
      H.write_file(dir .. "/c.lua", cfg)
      return H.run_mkv({ "-c", dir .. "/c.lua", "-volumes", "127.0.0.1:1", "-replicas", "1", "-db", dir .. "/db",
        "server" })
    end
    local code, out = run("return { status_listen = 'nope' }")
    assert.equal(2, code, out)
    assert.truthy(out:find("status_listen", 1, true) and out:find("not host:port", 1, true), out)
    code, out = run("return { status_listen = 70000 }")
    assert.equal(2, code, out)
    assert.truthy(out:find("status_listen", 1, true), out)
    code, out = run("return { status_listen = 3100, status_token = 'abcdefgh12abcdefgh', status_token_file = 'x' }")
    assert.equal(2, code, out)
    assert.truthy(out:find("not both", 1, true), out)
    code, out = run("return { status_listen = 3100, status_token = '' }")
    assert.equal(2, code, out)
    assert.truthy(out:find("status_token", 1, true), out)

    local fcode, fout = H.run_mkv({ "-volumes", "127.0.0.1:1", "-replicas", "1", "-db", dir .. "/db",
      "-status", "nope", "server" })
    assert.equal(2, fcode, fout)
    assert.truthy(fout:find("flag -status", 1, true), fout)

    -- a port already taken: startup stops and says which
    local busy = H.cluster({ n = 1, replicas = 1 })
    local code2, out2 = run("return { status_listen = " .. busy.mkv.port .. " }")
    assert.equal(1, code2, out2)
    assert.truthy(out2:find("cannot listen on status_listen 127.0.0.1:" .. busy.mkv.port, 1, true), out2)
    busy.mkv:stop()

    local sport, sport2 = H.free_port(), H.free_port()
    local c = H.cluster({ n = 1, replicas = 1, config = "return { status_listen = " .. sport .. " }" })
    H.write_file(c.mkv.dir .. "/config.lua", "return { status_listen = " .. sport2 .. " }")
    c.mkv:signal(1)
    H.eventually(function() return c.mkv:log():find("reload refused", 1, true) end, 10, "refusal")
    assert.truthy(c.mkv:log():find("status_listen changed, which needs a restart", 1, true), c.mkv:log())
    assert.equal(200, (get(sport, "/health")))
    c.mkv:stop()
  end)

  it("in a real browser: every volume with its state; a volume that goes down shows down", function()
    local c = cluster(nil, 3)
    H.eventually(function()
      local _, _, b = get(c.sport, "/health")
      return json.decode(b).status == "ok"
    end, 10, "all volumes up")
    local dom = browser(status_url(c.sport), ARTIFACTS .. "/status-page-all-up.png")
    local rows = volume_rows(dom)
    for _, a in ipairs(c.addrs) do
      assert.equal("up", rows[a], dom)
      local text = row_text(dom, a)
      assert.truthy(text:find(a, 1, true) and text:find(" up ", 1, true), text)
    end

    c.volumes[2]:stop()
    H.eventually(function()
      local _, _, b = get(c.sport, "/health")
      return json.decode(b).volumes[c.addrs[2]].state == "down"
    end, 10, "volume 2 seen down")
    dom = browser(status_url(c.sport), ARTIFACTS .. "/status-page-volume-down.png")
    rows = volume_rows(dom)
    assert.equal("down", rows[c.addrs[2]], dom)
    assert.equal("up", rows[c.addrs[1]])
    assert.equal("up", rows[c.addrs[3]])
    local text = row_text(dom, c.addrs[2])
    assert.truthy(text:find(" down ", 1, true), text)
    assert.truthy(text:find("probe", 1, true), "the reason: " .. text) -- why it is down
    assert.truthy(dom:find('id="status" class="state degraded">degraded<', 1, true), dom)
    c.mkv:stop()
  end)
end)
