-- Operations (README "Monitoring", "Reloading", public_url, X-Mkv-Avoid-Volume), against
-- real nginx volumes and the real mkv binary: the admin listener's /health and
-- /metrics (and that the public API does not serve them), the metrics moving as
-- requests are made, the access log and its rotation, SIGHUP reloads (valid, refused,
-- and under load with wrk or curl), the SIGTERM drain of an upload in flight, public_url
-- redirects, and X-Mkv-Avoid-Volume.
local H = require "helpers"
local A = require "api_support"
local O = require "ops_helpers"
local json = require "json"
local T = H.T

local enc = H.urlencode_path

-- ---- small tools ----

-- The admin listener's address, from <db>/mkv.admin. The API port accepts connections
-- (the kernel's backlog) a moment before the file is written: wait for a whole line.
local function admin_addr(db)
  return H.eventually(function() return H.admin_addr(db) end, 5, "<db>/mkv.admin")
end

local function scrape(admin)
  local st, h, body = H.http("GET", "http://" .. admin .. "/metrics")
  assert.equal(200, st, body)
  return O.parse(body), body, h
end

-- Polls /metrics until check(metrics) holds (counters are updated when a request is
-- over, which may be a moment after its answer reached us); returns the metrics.
local function metrics_until(admin, check, what)
  local last
  local ok, err = pcall(H.eventually, function()
    last = scrape(admin)
    return check(last)
  end, 5, what)
  if not ok then error(tostring(err), 2) end
  return last
end

local function delta(m1, m0, name, labels)
  return O.get(m1, name, labels) - O.get(m0, name, labels)
end

local function req_count(m, method, code)
  return O.get(m, "mkv_requests_total", { method = method, code = tostring(code) })
end

local function count_matches(text, pat)
  local n = 0
  for _ in (text or ""):gmatch(pat) do n = n + 1 end
  return n
end

local function put(url, key, body, headers)
  return H.http("PUT", url .. enc(key), { body = body, headers = headers })
end

local function get_follow(url, key)
  local st, _, body = H.http("GET", url .. enc(key), { follow = true })
  return st, body
end

local function split_commas(s)
  local out = {}
  for item in ((s or "") .. ","):gmatch("([^,]*),") do
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

-- A config file's text: a server on 127.0.0.1:port with the given volumes; `extra` is
-- more fields, as Lua source.
-- The background repair is off: these specs say where keys stay after a reload, and the
-- repair would move them to where the new config wants them (README "Volume health").
local function config_text(port, db, volumes, replicas, extra)
  local vq = {}
  for i, v in ipairs(volumes) do vq[i] = string.format("%q", v) end
  return string.format('return { port = %d, listen = "127.0.0.1", db = %q, volumes = { %s }, ' ..
                       'replicas = %d, subvolumes = 1, repair_interval = "0"%s }', port, db, table.concat(vq, ", "),
                       replicas, extra and (", " .. extra) or "")
end

describe("operations", function()
  local v1, v2, v3
  setup(function()
    v1, v2, v3 = H.start_volume(), H.start_volume(), H.start_volume()
  end)
  teardown(H.cleanup)

  -- -------------------------------------------------------------------------------------
  describe("the metrics parser", function()
    -- The checks the specs below lean on must be able to fail.
    it("rejects malformed expositions", function()
      local good = "# HELP a_total x\n# TYPE a_total counter\na_total{m=\"G\"} 1\n" ..
                   "a_total{m=\"x\\\"y\\\\z\"} 7\n" ..
                   "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n" ..
                   "h_sum 0.5\nh_count 2\n"
      local m = O.parse(good)
      assert.equal(1, O.get(m, "a_total", { m = "G" }))
      assert.equal(7, O.get(m, "a_total", { m = 'x"y\\z' }))
      assert.equal(2, O.get(m, "h_count"))
      local bad = {
        "# TYPE a counter\n# TYPE a counter\na 1\n",             -- TYPE twice
        "# TYPE a counter\na{m=G} 1\n",                           -- unquoted label value
        "# TYPE a counter\na{m=\"G\"}\n",                         -- no value
        "a 1\n",                                                  -- no TYPE
        "# TYPE a counter\na -1\n",                               -- negative counter
        "# TYPE a counter\na 1\na 2\n",                           -- duplicate series
        "# TYPE a counter\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 1\n", -- family not grouped
        "# TYPE h histogram\nh_bucket{le=\"0.1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_sum 1\nh_count 1\n", -- no +Inf
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\n" ..
          "h_sum 1\nh_count 1\n",                               -- le not increasing
        "# TYPE a counter\na{m=\"\\q\"} 1\n",                    -- bad escape in a label value
        "# TYPE a counter\na 1",                                  -- no final newline
      }
      for i, text in ipairs(bad) do
        assert.is_false(pcall(O.parse, text), "malformed exposition #" .. i .. " was accepted")
      end
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("the admin listener", function()
    it("serves /health and /metrics; the API port serves them as ordinary keys", function()
      local aport = H.free_port()
      local db = H.tmpdir("db") .. "/index"
      local m = H.start_mkv({ flags = { "-volumes", v1.addr .. "," .. v2.addr, "-replicas", "2",
                                        "-subvolumes", "1", "-db", db,
                                        "-admin", "127.0.0.1:" .. aport } })
      local admin = "127.0.0.1:" .. aport
      assert.equal(admin, admin_addr(db))

      local st, h, body = H.http("GET", "http://" .. admin .. "/health")
      assert.equal(200, st, body)
      assert.equal("application/json", h["content-type"])
      local doc = json.decode(body)
      assert.equal("ok", doc.index)
      assert.equal("ok", doc.status)
      assert.equal("up", doc.volumes[v1.addr].state)
      assert.equal("up", doc.volumes[v2.addr].state)
      assert.truthy(doc.volumes[v1.addr].since:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))

      local st2, h2, mbody = H.http("GET", "http://" .. admin .. "/metrics")
      assert.equal(200, st2)
      assert.truthy(h2["content-type"]:find("text/plain; version=0.0.4", 1, true), h2["content-type"])
      assert.truthy(mbody:find("\nmkv_index_writable 1\n", 1, true))

      -- The public API: no such endpoints, only keys (absent ones: 404) ...
      for _, k in ipairs({ "/health", "/metrics" }) do
        local s, hh, b = H.http("GET", m.url .. k)
        assert.equal(404, s, k)
        assert.equal("", b)
        assert.is_nil(hh["content-type"])
      end
      -- ... that can be stored and read back like any other.
      assert.equal(201, (put(m.url, "/health", "value of the key /health")))
      assert.equal(201, (put(m.url, "/metrics", "value of the key /metrics")))
      assert.same({ 200, "value of the key /health" }, { get_follow(m.url, "/health") })
      assert.same({ 200, "value of the key /metrics" }, { get_follow(m.url, "/metrics") })
      local _, _, keys = A.list(m.url, "/", "list")
      assert.same({ "/health", "/metrics" }, keys)
      -- The admin side is not shadowed by those keys.
      local st3, _, body3 = H.http("GET", "http://" .. admin .. "/health")
      assert.equal(200, st3)
      assert.equal("ok", json.decode(body3).status)
      local _, mtext = scrape(admin)
      assert.truthy(mtext:find("# TYPE mkv_requests_total counter", 1, true))
      -- And it serves nothing else (no key lookups there).
      assert.equal(404, (H.http("GET", "http://" .. admin .. "/health2")))
      assert.equal(404, (H.http("GET", "http://" .. admin .. "/k")))
    end)

    it("takes admin_listen from the config, defaults to a free loopback port, names it in <db>/mkv.admin", function()
      local aport = H.free_port()
      local db1 = H.tmpdir("db") .. "/index"
      H.start_mkv({ config = string.format('return { admin_listen = "127.0.0.1:%d" }', aport),
                    flags = { "-volumes", v1.addr, "-replicas", "1", "-db", db1 } })
      assert.equal("127.0.0.1:" .. aport, admin_addr(db1))
      assert.equal(200, (H.http("GET", "http://127.0.0.1:" .. aport .. "/health")))

      local db2 = H.tmpdir("db") .. "/index"
      local m2 = H.start_mkv({ flags = { "-volumes", v1.addr, "-replicas", "1", "-db", db2 } })
      local a2 = admin_addr(db2)
      local p2 = tonumber(a2:match("^127%.0%.0%.1:(%d+)$"))
      assert.truthy(p2 and p2 > 0 and p2 ~= m2.port, a2)
      assert.equal(200, (H.http("GET", "http://" .. a2 .. "/metrics")))
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("/health", function()
    it("is 200 ok while all is well, 200 degraded with a volume down, 503 when writes cannot "
       .. "reach their quorum, and ok again once they are back", function()
      local va, vb, vc = H.start_volume(), H.start_volume(), H.start_volume()
      local db = H.tmpdir("db") .. "/index"
      H.start_mkv({ flags = { "-volumes", va.addr .. "," .. vb.addr .. "," .. vc.addr,
                              "-replicas", "2", "-subvolumes", "1", "-db", db } })
      local admin = admin_addr(db)
      local url = "http://" .. admin .. "/health"
      local function health() -- status code, document
        local st, _, body = H.http("GET", url)
        return st, json.decode(body)
      end
      local st, doc = health()
      assert.equal(200, st)
      assert.equal("ok", doc.status)
      assert.equal(3, doc.writable_volumes)
      assert.equal(2, doc.write_quorum)

      va:stop()
      H.eventually(function()
        local s2, d = health()
        return s2 == 200 and d.status == "degraded" and d.volumes[va.addr].state == "down", d
      end, 5, "degraded")
      st, doc = health()
      assert.truthy(doc.volumes[va.addr].reason:find("connection refused", 1, true), doc.volumes[va.addr].reason)
      assert.equal("up", doc.volumes[vb.addr].state)
      assert.equal(2, doc.writable_volumes)

      vb:stop()
      H.eventually(function()
        local s2, d = health()
        return s2 == 503 and d.status == "failing" and d.volumes[vb.addr].state == "down", d
      end, 5, "failing")

      -- Same ports and roots: the volumes are back.
      H.restart_volume(va)
      H.restart_volume(vb)
      H.eventually(function()
        local s2, d = health()
        return s2 == 200 and d.status == "ok", d
      end, 15, "/health back to ok")
    end)

    it("is 503 naming the index once an index write failed (and the metrics say so)", function()
      -- The index on a 2 MB tmpfs in a private mount namespace, filled on cue (as in
      -- index_failure_spec.lua).
      local dir = H.tmpdir("full")
      local port, aport = H.free_port(), H.free_port()
      local script = table.concat({
        "set -e",
        "mkdir -p " .. dir .. "/mnt",
        "mount -t tmpfs -o size=2m tmpfs " .. dir .. "/mnt",
        H.shq(H.mkv_bin) .. " -volumes " .. v3.addr .. " -replicas 1 -subvolumes 1 -db " .. dir ..
          "/mnt/index -port " .. port .. " -listen 127.0.0.1 -admin 127.0.0.1:" .. aport .. " server &",
        "pid=$!",
        "trap 'kill -TERM $pid; wait $pid; exit $?' TERM",
        "while [ ! -e " .. dir .. "/fill ]; do sleep 0.02; done",
        "dd if=/dev/zero of=" .. dir .. "/mnt/filler bs=64k >/dev/null 2>&1 || true",
        "touch " .. dir .. "/filled",
        "wait $pid",
      }, "\n")
      local p = H.spawn("mkv-ns", { "unshare", "-rm", "sh", "-c", script })
      local url, admin = "http://127.0.0.1:" .. port, "127.0.0.1:" .. aport
      H.eventually(function()
        if not p:alive() then error("exited: " .. p:log()) end
        return H.port_open(port) and H.port_open(aport)
      end, 10, "mkv in its namespace")
      local st, _, body = H.http("GET", "http://" .. admin .. "/health")
      assert.equal(200, st, body)
      local m0 = scrape(admin)
      assert.equal(1, O.get(m0, "mkv_index_writable"))
      H.write_file(dir .. "/fill", "")
      H.eventually(function() return H.read_file(dir .. "/filled") end, 10, "tmpfs filled")
      local failed
      for i = 1, 400 do
        local s = H.http("PUT", url .. string.format("/full/%04d/%s", i, string.rep("k", 100)), { body = "v" })
        if s ~= 201 then
          assert.equal(503, s)
          failed = true
          break
        end
      end
      assert.truthy(failed, "the index never failed")
      st, _, body = H.http("GET", "http://" .. admin .. "/health")
      assert.equal(503, st, body)
      local doc = json.decode(body)
      assert.equal("failing", doc.status)
      assert.equal("up", doc.volumes[v3.addr].state)
      assert.is_true(type(doc.index) == "string" and doc.index ~= "ok" and #doc.index > 0, body)
      local m1 = scrape(admin)
      assert.equal(0, O.get(m1, "mkv_index_writable"))
      assert.is_true(delta(m1, m0, "mkv_index_failed_writes_total") >= 1)
      assert.is_true(req_count(m1, "PUT", 503) >= 1)
      assert.equal(0, p:stop().code)
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("/metrics", function()
    local m, admin
    setup(function()
      local aport = H.free_port()
      m = H.start_mkv({ flags = { "-volumes", v1.addr .. "," .. v2.addr, "-replicas", "2",
                                  "-subvolumes", "1", "-db", H.tmpdir("db") .. "/index",
                                  "-admin", "127.0.0.1:" .. aport } })
      admin = "127.0.0.1:" .. aport
      assert.equal(201, (put(m.url, "/met/warmup", "w")))
    end)

    it("names its threads for top -H and perf, and keeps the process's name", function()
      -- as many workers as mkv says it started (workers = 0: one per usable CPU)
      local n = tonumber(m:log():match("serving on %S+ with (%d+) worker"))
      assert.truthy(n and n >= 1, m:log())
      local names
      H.eventually(function() -- each thread names itself when it first runs
        names = {}
        for _, th in ipairs(H.threads(m.pid)) do names[th.comm] = (names[th.comm] or 0) + 1 end
        for i = 1, n do if not names["mkv-w" .. i] then return false end end
        return names["mkv-index"] and names["mkv-admin"]
      end, 5, "named threads")
      assert.equal("mkv", (H.read_file("/proc/" .. m.pid .. "/comm") or ""):gsub("%s+$", ""))
      -- no worker names beyond those (LevelDB's compaction thread, started by the index
      -- writer, inherits "mkv-index": that one may count more than one)
      assert.is_nil(names["mkv-w0"])
      assert.is_nil(names["mkv-w" .. (n + 1)])
    end)

    it("is well-formed Prometheus text with every documented family", function()
      local mt, text = scrape(admin)
      local want = {
        mkv_requests_total = "counter", mkv_request_duration_seconds = "histogram",
        mkv_client_received_bytes_total = "counter", mkv_client_sent_bytes_total = "counter",
        mkv_policy_errors_total = "counter", mkv_volume_requests_total = "counter",
        mkv_volume_errors_total = "counter", mkv_volume_timeouts_total = "counter",
        mkv_volume_sent_bytes_total = "counter", mkv_volume_received_bytes_total = "counter",
        mkv_volume_request_duration_seconds = "histogram", mkv_volume_connections = "gauge",
        mkv_keys_locked = "gauge",
        mkv_index_batches_total = "counter", mkv_index_writes_total = "counter",
        mkv_index_syncs_total = "counter", mkv_index_failed_writes_total = "counter",
        mkv_index_sync_seconds_total = "counter",
        mkv_index_writable = "gauge", mkv_leveldb_files = "gauge",
        mkv_leveldb_memory_bytes = "gauge", mkv_config_reloads_total = "counter",
        mkv_volume_up = "gauge", mkv_volume_state = "gauge", mkv_keys_underreplicated = "gauge",
        mkv_repair_keys_total = "counter", mkv_repair_dropped_total = "counter",
        mkv_repair_scans_total = "counter", mkv_repair_given_up_total = "counter",
        mkv_slow_bodies_total = "counter",
      }
      for name, typ in pairs(want) do
        assert.equal(typ, mt.types[name], name .. "'s # TYPE")
        assert.truthy(mt.helps[name] and #mt.helps[name] > 0, name .. " has no # HELP")
      end
      -- Every sample belongs to a documented family.
      for _, s in ipairs(mt.samples) do
        assert.truthy(want[s.family], "undocumented family " .. s.family)
      end
      -- Label values: methods and codes as documented; volumes as configured.
      for _, s in ipairs(mt.samples) do
        if s.name == "mkv_requests_total" then
          assert.truthy(({ GET = 1, HEAD = 1, PUT = 1, DELETE = 1, UNLINK = 1, LIST = 1, RELINK = 1,
                           REPLACE = 1, REBALANCE = 1, OTHER = 1 })[s.labels.method])
          assert.truthy(s.labels.code:match("^[1-5]%d%d$"), s.labels.code)
        end
        if s.family:match("^mkv_volume_") then
          assert.truthy(s.labels.volume == v1.addr or s.labels.volume == v2.addr, s.labels.volume)
        end
      end
      assert.equal(1, req_count(mt, "PUT", 201))
      for _, v in ipairs({ v1, v2 }) do
        assert.is_true(O.has(mt, "mkv_volume_requests_total", { volume = v.addr }))
        assert.is_true(O.has(mt, "mkv_volume_request_duration_seconds_count", { volume = v.addr }))
      end
      for level = 0, 6 do
        assert.is_true(O.has(mt, "mkv_leveldb_files", { level = tostring(level) }), "level " .. level)
      end
      assert.equal(1, O.get(mt, "mkv_index_writable"))
      assert.equal(0, O.get(mt, "mkv_keys_locked"))
      assert.is_true(O.get(mt, "mkv_leveldb_memory_bytes") > 0)
      assert.is_true(O.has(mt, "mkv_config_reloads_total", { result = "ok" }))
      assert.is_true(O.has(mt, "mkv_config_reloads_total", { result = "refused" }))
      assert.equal(0, O.get(mt, "mkv_index_failed_writes_total"))
      -- The request histogram's _count is the method's request count.
      assert.equal(O.sum(mt, "mkv_requests_total", { method = "PUT" }),
                   O.get(mt, "mkv_request_duration_seconds_count", { method = "PUT" }))
      assert.truthy(text:find('mkv_request_duration_seconds_bucket{method="PUT",le="+Inf"} 1\n', 1, true))
    end)

    it("moves with every request: counts by method and status, bytes, index and volume traffic", function()
      local m0 = scrape(admin)
      local n = 0 -- API requests made below
      -- 5 PUTs of 1000 bytes
      for i = 1, 5 do
        assert.equal(201, (put(m.url, "/met/k" .. i, A.bytes(1000, i))))
        n = n + 1
      end
      local m1 = metrics_until(admin, function(x) return req_count(x, "PUT", 201) - req_count(m0, "PUT", 201) >= 5 end, "5 PUTs counted")
      assert.equal(5, req_count(m1, "PUT", 201) - req_count(m0, "PUT", 201))
      assert.equal(5, delta(m1, m0, "mkv_request_duration_seconds_count", { method = "PUT" }))
      local rin = delta(m1, m0, "mkv_client_received_bytes_total")
      assert.is_true(rin >= 5000 and rin < 5000 + 5 * 1024, "client received bytes +" .. rin)
      -- Two index writes per PUT (the soft-deleted record, then the live one), synced.
      assert.is_true(delta(m1, m0, "mkv_index_writes_total") >= 10,
                     "index writes +" .. delta(m1, m0, "mkv_index_writes_total"))
      assert.is_true(delta(m1, m0, "mkv_index_batches_total") >= 1)
      assert.is_true(delta(m1, m0, "mkv_index_syncs_total") >= 1)
      assert.is_true(delta(m1, m0, "mkv_index_sync_seconds_total") > 0, "no time counted in the syncs")
      for _, v in ipairs({ v1, v2 }) do
        local lab = { volume = v.addr }
        local sent = delta(m1, m0, "mkv_volume_sent_bytes_total", lab)
        assert.is_true(sent >= 5000, v.addr .. " sent bytes +" .. sent)
        assert.is_true(delta(m1, m0, "mkv_volume_requests_total", lab) >= 5)
        assert.is_true(delta(m1, m0, "mkv_volume_received_bytes_total", lab) > 0)
        assert.is_true(delta(m1, m0, "mkv_volume_request_duration_seconds_count", lab) >= 5)
        assert.equal(0, delta(m1, m0, "mkv_volume_errors_total", lab))
      end

      -- GETs, HEAD, a missing key, listings, a refused overwrite, UNLINK, DELETE, POST.
      for i = 1, 3 do
        assert.equal(302, (H.http("GET", m.url .. "/met/k" .. i)))
        n = n + 1
      end
      assert.equal(302, (H.http("HEAD", m.url .. "/met/k4")))
      assert.equal(404, (H.http("GET", m.url .. "/met/missing")))
      local st, _, listing = H.http("GET", m.url .. "/met/?list")
      assert.equal(200, st)
      assert.equal(200, (H.http("GET", m.url .. "/?unlinked")))
      assert.equal(403, (put(m.url, "/met/k1", "again")))
      assert.equal(204, (H.http("UNLINK", m.url .. "/met/k5")))
      assert.equal(404, (H.http("UNLINK", m.url .. "/met/k5")))
      assert.equal(204, (H.http("DELETE", m.url .. "/met/k4")))
      assert.equal(405, (H.http("POST", m.url .. "/met/k3", { body = "x" })))
      n = n + 9
      -- A client that leaves in the middle of its PUT's body: 499.
      local fd = assert(T.connect(m.port))
      T.send(fd, "PUT /met/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
      H.sleep(0.1)
      T.close(fd)
      n = n + 1

      local expect = {
        { "GET", 302, 3 }, { "HEAD", 302, 1 }, { "GET", 404, 1 }, { "LIST", 200, 2 },
        { "PUT", 403, 1 }, { "UNLINK", 204, 1 }, { "UNLINK", 404, 1 }, { "DELETE", 204, 1 },
        { "OTHER", 405, 1 }, { "PUT", 499, 1 },
      }
      local m2 = metrics_until(admin, function(x)
        local d = O.sum(x, "mkv_requests_total") - O.sum(m1, "mkv_requests_total")
        if d >= n - 5 then return true end -- the 5 PUTs were counted in m1
        local got = {}
        for _, s in ipairs(x.samples) do
          if s.name == "mkv_requests_total" then
            local dd = s.value - req_count(m1, s.labels.method, s.labels.code)
            if dd ~= 0 then got[#got + 1] = s.labels.method .. "/" .. s.labels.code .. " +" .. dd end
          end
        end
        return false, table.concat(got, ", ")
      end, "every request counted")
      for _, e in ipairs(expect) do
        assert.equal(e[3], req_count(m2, e[1], e[2]) - req_count(m1, e[1], e[2]),
                     e[1] .. " " .. e[2])
      end
      -- Nothing else was counted: the admin scrapes are not API requests.
      assert.equal(n, O.sum(m2, "mkv_requests_total") - O.sum(m0, "mkv_requests_total"))
      for _, meth in ipairs({ "GET", "HEAD", "PUT", "DELETE", "UNLINK", "LIST", "OTHER" }) do
        assert.equal(O.sum(m2, "mkv_requests_total", { method = meth }),
                     O.get(m2, "mkv_request_duration_seconds_count", { method = meth }), meth)
      end
      assert.is_true(delta(m2, m1, "mkv_client_sent_bytes_total") >= #listing)
      -- GETs and HEAD probe the volumes; the DELETE deletes on both.
      assert.is_true(delta(m2, m1, "mkv_volume_requests_total", { volume = v1.addr }) +
                     delta(m2, m1, "mkv_volume_requests_total", { volume = v2.addr }) >= 4 + 2)
      assert.equal(0, O.get(m2, "mkv_keys_locked"))
      local m3 = scrape(admin)
      assert.equal(O.sum(m2, "mkv_requests_total"), O.sum(m3, "mkv_requests_total"))
    end)

    it("counts the connections to each volume, busy during an upload, idle after; each one a socket", function()
      local vs = { v1, v2 }
      local function conns(x, v, state)
        return O.get(x, "mkv_volume_connections", { volume = v.addr, state = state })
      end
      local function show(x)
        local t = {}
        for _, v in ipairs(vs) do
          t[#t + 1] = string.format("%s busy %d idle %d", v.addr, conns(x, v, "busy"), conns(x, v, "idle"))
        end
        return table.concat(t, "; ")
      end
      -- Every connection the gauges count is one socket of mkv's to that volume.
      local function sockets_match()
        H.eventually(function()
          local x = scrape(admin)
          local _, _, by_port = H.fd_census(m.pid, vs)
          for _, v in ipairs(vs) do
            local open = conns(x, v, "busy") + conns(x, v, "idle")
            if (by_port[v.port] or 0) ~= open then
              return false, string.format("%s: %d sockets; %s", v.addr, by_port[v.port] or 0, show(x))
            end
          end
          return true
        end, 5, "one socket per counted connection")
      end
      -- A PUT whose client pauses halfway through its body: an upload open to both volumes.
      local fd = assert(T.connect(m.port))
      T.send(fd, "PUT /met/conns HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" .. ("a"):rep(1000))
      metrics_until(admin, function(x)
        return conns(x, v1, "busy") == 1 and conns(x, v2, "busy") == 1, show(x)
      end, "one busy connection to each volume")
      sockets_match()
      T.send(fd, ("b"):rep(1000))
      local resp = T.recv(fd, 5) or ""
      T.close(fd)
      assert.truthy(resp:match("^HTTP/1%.1 201"), resp)
      -- Done: the uploads' connections are kept alive, idle in the pools.
      metrics_until(admin, function(x)
        return conns(x, v1, "busy") == 0 and conns(x, v2, "busy") == 0 and
          conns(x, v1, "idle") >= 1 and conns(x, v2, "idle") >= 1, show(x)
      end, "no busy connection, some idle to each volume")
      sockets_match()
      -- A client that leaves mid-body: mkv abandons the half-sent uploads, so it closes
      -- those connections (they are not reusable), and the gauges drop them.
      local m0 = scrape(admin)
      fd = assert(T.connect(m.port))
      T.send(fd, "PUT /met/conns2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" .. ("a"):rep(1000))
      metrics_until(admin, function(x)
        return conns(x, v1, "busy") == 1 and conns(x, v2, "busy") == 1, show(x)
      end, "the second upload busy on both volumes")
      T.close(fd)
      metrics_until(admin, function(x)
        return conns(x, v1, "busy") == 0 and conns(x, v2, "busy") == 0 and
          req_count(x, "PUT", 499) == req_count(m0, "PUT", 499) + 1, show(x)
      end, "the abandoned uploads closed")
      sockets_match()
    end)

    describe("with a volume down", function()
      local va, vb, mm, adm, m0, m1
      setup(function()
        va, vb = H.start_volume(), H.start_volume()
        local db = H.tmpdir("db") .. "/index"
        -- No probe by the clock: mkv learns that va is down from the PUT that meets it,
        -- which therefore goes to both volumes.
        mm = H.start_mkv({ flags = { "-volumes", va.addr .. "," .. vb.addr, "-replicas", "2",
                                     "-subvolumes", "1", "-db", db, "-write-quorum", "all" },
                           config = 'return { limits = { probe_interval = "1h", probe_backoff = "1h" } }' })
        adm = admin_addr(db)
        assert.equal(201, (put(mm.url, "/down/a", "x")))
        va:stop()
        m0 = scrape(adm)
        -- The PUT fails on the volume that is down; mkv then stops the other replica's
        -- upload itself (fanout.c cancel_all) and deletes what it wrote.
        assert.equal(503, (put(mm.url, "/down/b1", "x")))
        m1 = metrics_until(adm, function(x) return req_count(x, "PUT", 503) - req_count(m0, "PUT", 503) == 1 end,
                           "a PUT 503")
      end)

      it("counts errors for the volume that is down", function()
        local errs = delta(m1, m0, "mkv_volume_errors_total", { volume = va.addr })
        assert.is_true(errs >= 1, "errors of the volume that is down +" .. errs)
        assert.is_true(delta(m1, m0, "mkv_volume_requests_total", { volume = va.addr }) >= 1)
        assert.equal(0, delta(m1, m0, "mkv_volume_timeouts_total", { volume = va.addr }))
      end)

      it("does not blame the healthy volume for the uploads mkv cancelled itself", function()
        -- "Requests to a volume that got no answer (refused, reset, timed out)": the
        -- healthy volume answered everything it was asked; mkv aborted its uploads.
        assert.is_true(delta(m1, m0, "mkv_volume_requests_total", { volume = vb.addr }) >= 1)
        assert.equal(0, delta(m1, m0, "mkv_volume_errors_total", { volume = vb.addr }))
        assert.equal(0, delta(m1, m0, "mkv_volume_timeouts_total", { volume = vb.addr }))
      end)
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("the access log", function()
    local m, dir, logpath, db
    setup(function()
      dir = H.tmpdir("alog")
      logpath = dir .. "/access.log"
      db = H.tmpdir("db") .. "/index"
      m = H.start_mkv({ dir = dir, config = string.format("return { access_log = %q }", logpath),
                        flags = { "-volumes", v3.addr, "-replicas", "1", "-subvolumes", "1", "-db", db } })
    end)

    local function log_lines()
      return O.lines(H.read_file(logpath))
    end

    local function wait_lines(n)
      return H.eventually(function()
        local l = log_lines()
        return #l >= n and l, #l .. " lines"
      end, 5, n .. " access log lines")
    end

    it("has one line per request: method, target as sent, status, body bytes, seconds", function()
      local t0 = os.time()
      local base = #log_lines()
      local value = A.bytes(1234, 9)
      assert.equal(201, (put(m.url, "/log/k1", value)))
      assert.equal(302, (H.http("GET", m.url .. "/log/k1")))
      assert.equal(302, (H.http("HEAD", m.url .. "/log/k1")))
      assert.equal(404, (H.http("GET", m.url .. "/log/none")))
      local _, _, listing = H.http("GET", m.url .. "/log/?list&limit=10")
      assert.equal('{"next":"","keys":["/log/k1"]}', listing)
      assert.equal(204, (H.http("DELETE", m.url .. "/log/k1")))
      -- Raw targets: a quote, a backslash, %20 and bytes above 0x7f; HTTP/1.0.
      local raws = {
        { "GET /log/a\"b HTTP/1.1\r\nHost: x\r\n\r\n", "/log/a\\x22b", "HTTP/1.1" },
        { "GET /log/a\\b HTTP/1.1\r\nHost: x\r\n\r\n", "/log/a\\x5Cb", "HTTP/1.1" },
        { "GET /log/a%20b HTTP/1.0\r\n\r\n", "/log/a%20b", "HTTP/1.0" },
        { "GET /log/caf\xC3\xA9 HTTP/1.1\r\nHost: x\r\n\r\n", "/log/caf\\xC3\\xA9", "HTTP/1.1" },
      }
      for _, r in ipairs(raws) do
        local conn = A.connect(m.port)
        conn:send(r[1])
        local resp = assert(conn:response(5))
        conn:close()
        assert.equal(404, resp.status)
      end
      -- A PUT whose body pauses: its line's seconds cover the pause.
      local fd = assert(T.connect(m.port))
      T.send(fd, "PUT /log/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
      H.sleep(0.3)
      T.send(fd, "def")
      local resp = T.recv(fd, 5) or ""
      T.close(fd)
      assert.truthy(resp:match("^HTTP/1%.1 201"), resp)

      local want = {
        { "PUT", "/log/k1", 201, 0 }, { "GET", "/log/k1", 302, 0 }, { "HEAD", "/log/k1", 302, 0 },
        { "GET", "/log/none", 404, 0 }, { "GET", "/log/?list&limit=10", 200, #listing },
        { "DELETE", "/log/k1", 204, 0 },
        { "GET", raws[1][2], 404, 0 }, { "GET", raws[2][2], 404, 0 },
        { "GET", raws[3][2], 404, 0, "HTTP/1.0" }, { "GET", raws[4][2], 404, 0 },
        { "PUT", "/log/slow", 201, 0 },
      }
      local lines = wait_lines(base + #want)
      H.sleep(0.2) -- nothing more comes
      lines = log_lines()
      assert.equal(base + #want, #lines, table.concat(lines, "\n"))
      for i, w in ipairs(want) do
        local line = lines[base + i]
        local e = O.parse_access(line)
        assert.truthy(e, "not a Common Log Format line: " .. line)
        assert.equal("127.0.0.1", e.peer)
        assert.equal(w[1], e.method, line)
        assert.equal(w[2], e.target, line)
        assert.equal(w[5] or "HTTP/1.1", e.proto, line)
        assert.equal(w[3], e.status, line)
        assert.equal(w[4], e.bytes, line)
        assert.is_true(e.time >= t0 - 2 and e.time <= os.time() + 2, "timestamp of " .. line)
        assert.is_true(e.seconds >= 0 and e.seconds < 5, line)
      end
      assert.is_true(O.parse_access(lines[base + #want]).seconds >= 0.29, lines[base + #want])
      -- No byte of a line is outside printable ASCII.
      for _, line in ipairs(lines) do assert.is_nil(line:find("[^\32-\126]"), line) end

      -- The admin listener's requests are not logged.
      local adm = admin_addr(db)
      assert.equal(200, (H.http("GET", "http://" .. adm .. "/health")))
      assert.equal(200, (H.http("GET", "http://" .. adm .. "/metrics")))
      assert.equal(404, (H.http("GET", "http://" .. adm .. "/nothing")))
      assert.equal(404, (H.http("GET", m.url .. "/log/marker")))
      lines = wait_lines(base + #want + 1)
      H.sleep(0.1)
      lines = log_lines()
      assert.equal(base + #want + 1, #lines)
      assert.equal("/log/marker", O.parse_access(lines[#lines]).target)
    end)

    it("reopens the file on SIGHUP (logrotate): new lines at the original path, none lost", function()
      local before = #log_lines()
      local N = 300
      -- One curl, keep-alive, ~400 requests/s: the rotation lands in the middle.
      local cl = H.spawn("curl-rot", { "sh", "-c",
        "curl -s --rate 400/s -o /dev/null -w '%{http_code}\\n' " ..
        H.shq(m.url .. "/log/rot[1-" .. N .. "]") })
      H.eventually(function() return #log_lines() >= before + 50 end, 10, "first requests logged")
      assert.truthy(os.rename(logpath, logpath .. ".1"))
      assert.is_true(m:signal(1))
      local st = T.wait(cl.pid, 20 * H.slow)
      cl.status = st
      assert.truthy(st, "curl did not finish")
      assert.equal(N, count_matches(cl:log(), "404"))
      local old = O.lines(H.read_file(logpath .. ".1"))
      local new = H.eventually(function()
        local l = O.lines(H.read_file(logpath))
        return (#old - before) + #l >= N and l
      end, 5, "every request logged")
      H.sleep(0.1)
      new = O.lines(H.read_file(logpath))
      assert.is_true(#new > 0, "nothing was written to the new file")
      assert.is_true(#old - before > 0)
      local seen = {}
      local all = {}
      for i = before + 1, #old do all[#all + 1] = old[i] end
      for _, l in ipairs(new) do all[#all + 1] = l end
      assert.equal(N, #all)
      for _, l in ipairs(all) do
        local e = O.parse_access(l)
        assert.truthy(e, "bad line: " .. l)
        local i = tonumber(e.target:match("^/log/rot(%d+)$"))
        assert.truthy(i, l)
        assert.is_nil(seen[i], "logged twice: " .. l)
        seen[i] = true
        assert.equal(404, e.status)
      end
      for i = 1, N do assert.truthy(seen[i], "request " .. i .. " not logged") end
      -- The requests after the rotation went to the new file, in order.
      local last_old = tonumber(O.parse_access(old[#old]).target:match("(%d+)$"))
      local first_new = tonumber(O.parse_access(new[1]).target:match("(%d+)$"))
      assert.equal(last_old + 1, first_new)
      assert.truthy(m:alive())
    end)

    it("follows access_log through reloads: a new path, off, on again", function()
      local adm = admin_addr(db)
      local function reload_ok(text)
        local ok0 = O.get(scrape(adm), "mkv_config_reloads_total", { result = "ok" })
        H.write_file(dir .. "/config.lua", text)
        assert.is_true(m:signal(1))
        metrics_until(adm, function(x)
          return O.get(x, "mkv_config_reloads_total", { result = "ok" }) == ok0 + 1
        end, "reload")
      end
      local function targets_in(path)
        local out = {}
        for _, l in ipairs(O.lines(H.read_file(path))) do
          local e = O.parse_access(l)
          assert.truthy(e, l)
          out[#out + 1] = e.target
        end
        return out
      end
      local path2, path3 = dir .. "/second.log", dir .. "/third.log"
      reload_ok(string.format("return { access_log = %q }", path2))
      assert.equal(404, (H.http("GET", m.url .. "/log/moved")))
      H.eventually(function() return #targets_in(path2) == 1 end, 5, "a line in the new file")
      assert.same({ "/log/moved" }, targets_in(path2))
      local n1 = #O.lines(H.read_file(logpath))

      reload_ok("return { access_log = \"\" }")
      -- A keep-alive connection accepted while the log is off.
      local conn = A.connect(m.port)
      conn:send(A.request("GET", "/log/off"))
      assert.equal(404, assert(conn:response(5)).status)
      H.sleep(0.2)
      assert.same({ "/log/moved" }, targets_in(path2))
      assert.equal(n1, #O.lines(H.read_file(logpath)))
      assert.is_nil(H.read_file(path3))

      reload_ok(string.format("return { access_log = %q }", path3))
      assert.equal(404, (H.http("GET", m.url .. "/log/on-new-conn")))
      conn:send(A.request("GET", "/log/on-old-conn"))
      assert.equal(404, assert(conn:response(5)).status)
      conn:close()
      H.eventually(function() return #targets_in(path3) == 2 end, 5, "two lines in the third file")
      assert.same({ "/log/on-new-conn", "/log/on-old-conn" }, targets_in(path3))
      assert.same({ "/log/moved" }, targets_in(path2))
      -- Both lines name the client, whenever its connection was accepted.
      for _, l in ipairs(O.lines(H.read_file(path3))) do
        assert.equal("127.0.0.1", O.parse_access(l).peer, l)
      end
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("SIGHUP reload", function()
    local m, dir, cfgpath, db, admin, port

    local function write_config(text)
      H.write_file(cfgpath, text)
    end

    local function reloads()
      local x = scrape(admin)
      return O.get(x, "mkv_config_reloads_total", { result = "ok" }),
             O.get(x, "mkv_config_reloads_total", { result = "refused" })
    end

    -- Sends SIGHUP and waits for the reload's outcome; returns "ok" or "refused".
    local function hup()
      local ok0, bad0 = reloads()
      assert.is_true(m:signal(1))
      return H.eventually(function()
        local ok1, bad1 = reloads()
        if ok1 == ok0 + 1 and bad1 == bad0 then return "ok" end
        if bad1 == bad0 + 1 and ok1 == ok0 then return "refused" end
        return nil, ok1 .. "/" .. bad1
      end, 10, "reload outcome")
    end

    local function key_volumes(key)
      local st, h = H.http("HEAD", m.url .. enc(key))
      assert.equal(302, st, key)
      return split_commas(h["key-volumes"])
    end

    setup(function()
      dir = H.tmpdir("reload")
      cfgpath = dir .. "/config.lua"
      db = dir .. "/index"
      port = H.free_port()
      H.sh("mkdir -p " .. H.shq(dir .. "/policies"))
      H.write_file(dir .. "/policies/raises_at_load.lua", 'error("raises_at_load: on purpose")\n')
      H.write_file(dir .. "/policies/raises_in_place.lua",
        'local D = require "default"\nreturn { path = D.path, place = function() error("raises_in_place: on purpose") end }\n')
      m = H.start_mkv({ dir = dir, no_port = true, port = port, config_path = cfgpath,
                        config = config_text(port, db, { v1.addr, v2.addr }, 2) })
      admin = admin_addr(db)
    end)

    it("applies a valid config: new PUTs follow it; open connections and requests in flight go on", function()
      local sorted12 = { v1.addr, v2.addr }
      table.sort(sorted12)
      assert.equal(201, (put(m.url, "/rl/a", "a")))
      local ka = key_volumes("/rl/a")
      table.sort(ka)
      assert.same(sorted12, ka)
      -- A keep-alive connection, used before the reload ...
      local conn = A.connect(m.port)
      conn:send(A.request("GET", "/rl/a"))
      local r = assert(conn:response(5))
      assert.equal(302, r.status)
      -- ... and a PUT whose body is half sent when the reload comes.
      local slow = A.connect(m.port)
      finally(function() conn:close() slow:close() end) -- a half-sent PUT would hold up the drain
      slow:send("PUT /rl/inflight HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
      H.sleep(0.1)

      write_config(config_text(port, db, { v1.addr, v2.addr }, 1))
      assert.equal("ok", hup())
      assert.truthy(m:log():find("reloaded " .. cfgpath, 1, true), m:log())

      slow:send("56789")
      local rs = assert(slow:response(5))
      slow:close()
      assert.equal(201, rs.status)
      assert.same({ 200, "0123456789" }, { get_follow(m.url, "/rl/inflight") })

      assert.equal(201, (put(m.url, "/rl/b", "b")))
      local kb = key_volumes("/rl/b")
      assert.equal(1, #kb)
      -- The old connection: still open, and serving under the new config.
      conn:send(A.request("PUT", "/rl/c", nil, "c"))
      r = assert(conn:response(5))
      assert.equal(201, r.status)
      assert.is_nil(r.headers["connection"])
      conn:send(A.request("HEAD", "/rl/c"))
      r = assert(conn:response(5, { head = true }))
      assert.equal(302, r.status)
      assert.equal(1, #split_commas(r.headers["key-volumes"]))
      conn:close()

      -- A new volume list: new keys go to v3 only; old keys are still read where they are.
      write_config(config_text(port, db, { v3.addr }, 1))
      assert.equal("ok", hup())
      -- the volumes the reload removed drop out of /metrics
      local _, mtext = scrape(admin)
      for _, gone in ipairs({ v1.addr, v2.addr }) do
        assert.is_nil(mtext:find('volume="' .. gone .. '"', 1, true), gone .. " still in /metrics")
      end
      for i = 1, 5 do
        assert.equal(201, (put(m.url, "/rl/d" .. i, "d")))
        assert.same({ v3.addr }, key_volumes("/rl/d" .. i))
      end
      local st, h = H.http("GET", m.url .. "/rl/a")
      assert.equal(302, st)
      local t = key_volumes("/rl/a")
      table.sort(t)
      assert.same(sorted12, t)
      assert.truthy(h.location:find("^http://127%.0%.0%.1:%d+/"))
      assert.same({ 200, "a" }, { get_follow(m.url, "/rl/a") })

      -- The policy scripts are loaded again too: a policy that raises for /boom keys.
      write_config(config_text(port, db, { v3.addr }, 1, string.format(
        "policies = { placement = %q }", H.root .. "/spec/fixtures/policies/runtime_raise.lua")))
      local p0 = O.get(scrape(admin), "mkv_policy_errors_total")
      assert.equal("ok", hup())
      assert.equal(500, (put(m.url, "/boom/1", "x")))
      assert.equal(201, (put(m.url, "/rl/e", "e")))
      metrics_until(admin, function(x) return O.get(x, "mkv_policy_errors_total") == p0 + 1 end,
                    "policy error counted")
      write_config(config_text(port, db, { v3.addr }, 1))
      assert.equal("ok", hup())
      assert.equal(201, (put(m.url, "/boom/2", "x")))
    end)

    it("refuses a broken config with one log line and keeps serving the previous one", function()
      write_config(config_text(port, db, { v3.addr }, 1))
      assert.equal("ok", hup())
      local fixtures = H.root .. "/spec/fixtures/policies/"
      local broken = {
        { "syntax error", "return { replicas = 1,, }", "config" },
        { "unknown field", config_text(port, db, { v3.addr }, 1, "bogus_field = 1"), "bogus_field" },
        { "bad type", config_text(port, db, { v3.addr }, 1, 'voltimeout = "soon"'), "voltimeout" },
        { "too many replicas", config_text(port, db, { v3.addr }, 2), "replicas" },
        { "missing placement policy", config_text(port, db, { v3.addr }, 1,
            'policies = { placement = "no_such_policy" }'), "no_such_policy" },
        { "policy raising at load", config_text(port, db, { v3.addr }, 1,
            'policies = { placement = "raises_at_load" }'), "raises_at_load" },
        { "policy raising in place()", config_text(port, db, { v3.addr }, 1,
            'policies = { placement = "raises_in_place" }'), "raises_in_place" },
        { "fixture raising at load", config_text(port, db, { v3.addr }, 1,
            string.format("policies = { placement = %q }", fixtures .. "raise_at_load.lua")), "raise_at_load" },
        { "changed port", config_text(H.free_port(), db, { v3.addr }, 1), "port" },
        { "changed db", config_text(port, db .. "2", { v3.addr }, 1), "db" },
        { "changed admin_listen", config_text(port, db, { v3.addr }, 1,
            'admin_listen = "127.0.0.1:' .. H.free_port() .. '"'), "admin_listen" },
        { "a loop", "while true do end", "did not finish" },
      }
      for i, b in ipairs(broken) do
        local n0 = count_matches(m:log(), "reload refused")
        write_config(b[2])
        assert.equal("refused", hup(), b[1])
        local log = m:log()
        assert.equal(n0 + 1, count_matches(log, "reload refused"), b[1])
        -- The one line names what is wrong.
        local line
        for l in log:gmatch("[^\n]+") do if l:find("reload refused", 1, true) then line = l end end
        assert.truthy(line:find(b[3], 1, true), b[1] .. ": " .. line)
        -- The previous config serves: v3, one replica; same port.
        assert.equal(201, (put(m.url, "/rf/k" .. i, "v")), b[1])
        assert.same({ v3.addr }, key_volumes("/rf/k" .. i))
        assert.is_true(m:alive())
      end
      assert.is_nil(H.read_file(db .. "2/CURRENT"))
      -- A valid config is taken again afterwards.
      write_config(config_text(port, db, { v1.addr, v2.addr }, 2))
      assert.equal("ok", hup())
      assert.equal(201, (put(m.url, "/rf/last", "v")))
      assert.equal(2, #key_volumes("/rf/last"))
    end)

    -- Load for ~4 s: wrk (2 threads, 8 keep-alive connections, half GETs of one key,
    -- half PUTs of new 1 KB keys). Returns a function that waits for the end and
    -- returns { [status] = count }, errors (text, "" when none), total requests.
    local function wrk_load(wdir)
      H.write_file(wdir .. "/load.lua", [[
local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  threads[#threads + 1] = thread
end
local n = 0
local body = string.rep("x", 1024)
statuses = {}
function request()
  n = n + 1
  if n % 2 == 0 then return wrk.format("GET", "/load/seed") end
  return wrk.format("PUT", "/load/w" .. id .. "/" .. n, nil, body)
end
function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary)
  local e = summary.errors
  io.write(string.format("ERRORS connect=%d read=%d write=%d status=%d timeout=%d\n",
    e.connect, e.read, e.write, e.status, e.timeout))
  local total = {}
  for _, t in ipairs(threads) do
    for code, c in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + c end
  end
  for code, c in pairs(total) do io.write(string.format("STATUS %d %d\n", code, c)) end
end
]])
      local w = H.spawn("wrk", { "wrk", "-t2", "-c8", "-d4s", "--timeout", "5s",
                                 "-s", wdir .. "/load.lua", m.url })
      return function()
        local st = T.wait(w.pid, 20 * H.slow)
        w.status = st
        local out = w:log()
        assert.truthy(st, "wrk did not finish")
        local errors = {}
        if st.code ~= 0 then errors[#errors + 1] = "wrk exited " .. tostring(st.code) end
        if out:find("Non-2xx", 1, true) then errors[#errors + 1] = "non-2xx/3xx answers" end
        if out:find("Socket errors", 1, true) then errors[#errors + 1] = "socket errors" end
        if not out:find("ERRORS connect=0 read=0 write=0 status=0 timeout=0", 1, true) then
          errors[#errors + 1] = "errors in wrk's summary"
        end
        local counts = {}
        for code, c in out:gmatch("STATUS (%d+) (%d+)") do counts[tonumber(code)] = tonumber(c) end
        local total = tonumber(out:match("(%d+) requests in"))
        return counts, #errors > 0 and (table.concat(errors, "; ") .. "\n" .. out) or "", total
      end
    end

    -- The same without wrk (deploy/setup does not install it): 4 curl processes, each
    -- one keep-alive connection, 2 GETting and 2 PUTting, 250 requests/s each.
    local function curl_load(wdir)
      local body = H.write_file(wdir .. "/body", string.rep("x", 1024))
      local procs = {}
      for c = 1, 4 do
        local lines = {}
        for i = 1, 1000 do
          if c <= 2 then
            lines[#lines + 1] = string.format('url = "%s/load/seed"\noutput = "/dev/null"', m.url)
          else
            lines[#lines + 1] = string.format('url = "%s/load/c%d/%d"\nupload-file = "%s"\noutput = "/dev/null"',
                                              m.url, c, i, body)
          end
        end
        local k = H.write_file(wdir .. "/curl" .. c .. ".cfg", table.concat(lines, "\n") .. "\n")
        procs[c] = H.spawn("curl-load", { "curl", "-sS", "--rate", "250/s", "--max-time", "30",
                                          "-w", "%{http_code}\n", "-K", k })
      end
      return function()
        local counts, errors, total = {}, {}, 0
        for _, p in ipairs(procs) do
          local st = T.wait(p.pid, 30 * H.slow)
          p.status = st
          assert.truthy(st, "curl did not finish")
          if st.code ~= 0 then errors[#errors + 1] = "curl exited " .. tostring(st.code) .. ": " .. p:log() end
          for line in p:log():gmatch("[^\n]+") do
            local code = tonumber(line:match("^(%d%d%d)$"))
            if code then
              counts[code] = (counts[code] or 0) + 1
              total = total + 1
            else
              errors[#errors + 1] = line
            end
          end
        end
        if total ~= 4000 then errors[#errors + 1] = total .. " answers for 4000 requests" end
        return counts, table.concat(errors, "\n"), total
      end
    end

    it("reloads under load without failing a request (wrk or curl, 16 SIGHUPs)", function()
      local cfgA = config_text(port, db, { v1.addr, v2.addr }, 2)
      local cfgB = config_text(port, db, { v1.addr, v2.addr, v3.addr }, 1)
      write_config(cfgA)
      assert.equal("ok", hup())
      assert.equal(201, (put(m.url, "/load/seed", "seed")))
      local ok0, bad0 = reloads()
      local wdir = H.tmpdir("load")
      local have_wrk = os.getenv("MKV_SPEC_NO_WRK") == nil and
                       select(2, H.sh("command -v wrk >/dev/null")) == 0
      local finish = (have_wrk and wrk_load or curl_load)(wdir)
      H.sleep(0.3)
      local sent = 0
      for i = 1, 16 do
        write_config(i % 2 == 1 and cfgB or cfgA)
        assert.is_true(m:signal(1))
        sent = sent + 1
        H.sleep(0.2)
      end
      local counts, errors, total = finish()
      assert.equal("", errors)
      for code in pairs(counts) do
        assert.truthy(code == 201 or code == 302, "got status " .. code)
      end
      assert.is_true((counts[201] or 0) > 50, "PUTs answered 201: " .. tostring(counts[201]))
      assert.is_true((counts[302] or 0) > 50, "GETs answered 302: " .. tostring(counts[302]))
      assert.equal(total, (counts[201] or 0) + (counts[302] or 0))
      -- Every SIGHUP was a reload, none refused; the server still serves, under cfgA.
      H.eventually(function()
        local ok1, bad1 = reloads()
        return ok1 == ok0 + sent and bad1 == bad0, ok1 .. "/" .. bad1
      end, 5, sent .. " reloads")
      assert.is_true(m:alive())
      assert.equal(201, (put(m.url, "/load/after", "v")))
      assert.equal(2, #key_volumes("/load/after"))
      assert.same({ 200, "seed" }, { get_follow(m.url, "/load/seed") })
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("SIGTERM", function()
    it("drains: an upload in flight completes (201, readable after a restart), new connections are refused, exit 0", function()
      local db = H.tmpdir("db") .. "/index"
      local flags = { "-volumes", v3.addr, "-replicas", "1", "-subvolumes", "1", "-db", db }
      local m = H.start_mkv({ flags = flags })
      local adm = admin_addr(db)
      -- Long enough (about 6 s) that the upload cannot end inside the 3 s the listener
      -- has to close in: a listener that stays open would show, not hide behind the exit.
      local data = A.bytes(3 * 1024 * 1024, 42)
      local file = H.write_file(H.tmpdir("up") .. "/big", data)
      local cl = H.spawn("curl-slow", { "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                        "--limit-rate", "500K", "-T", file, m.url .. "/drain/big" })
      -- In flight: the key is locked and bytes are coming in.
      metrics_until(adm, function(x)
        return O.get(x, "mkv_keys_locked") == 1 and O.get(x, "mkv_client_received_bytes_total") > 100000
      end, "the upload in flight")
      local idle = assert(T.connect(m.port)) -- an idle keep-alive connection
      assert.is_true(m:signal(15))
      H.eventually(function()
        local fd = T.connect(m.port)
        if fd then T.close(fd) end
        return fd == nil
      end, 3, "new connections refused")
      assert.is_nil(T.wait(cl.pid, 0), "the upload ended before the listener closed")
      assert.is_true(m:alive())
      -- The idle connection is closed rather than kept.
      assert.equal("", T.recv(idle, 2))
      T.close(idle)
      local cst = T.wait(cl.pid, 20 * H.slow)
      cl.status = cst
      assert.truthy(cst, "curl did not finish")
      assert.equal("201", cl:log())
      local st = T.wait(m.pid, 15 * H.slow)
      m.status = st
      assert.truthy(st, "mkv did not exit after the drain")
      assert.equal(0, st.code, m:log())
      assert.truthy(m:log():find("draining", 1, true))
      assert.is_nil(H.read_file(db .. "/mkv.admin"))
      local m2 = H.start_mkv({ flags = flags })
      local gst, body = get_follow(m2.url, "/drain/big")
      assert.equal(200, gst)
      assert.equal(#data, #body)
      assert.equal(H.md5_hex(data), H.md5_hex(body))
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("public_url", function()
    it("makes a GET's Location <public_url>/<volume>/<path on the volume>", function()
      local db = H.tmpdir("db") .. "/index"
      local m = H.start_mkv({ config = 'return { public_url = "https://proxy.example:8444", subvolumes = 10 }',
                              flags = { "-volumes", v1.addr .. "," .. v2.addr, "-replicas", "1",
                                        "-db", db } })
      for i = 1, 4 do
        local key = "/pub/key " .. i
        local value = "public value " .. i
        assert.equal(201, (put(m.url, key, value)))
        local st, h = H.http("GET", m.url .. enc(key))
        assert.equal(302, st)
        local vol, path = h.location:match("^https://proxy%.example:8444/(127%.0%.0%.1:%d+)(/sv%x%x/%x%x/%x%x/%S+)$")
        assert.truthy(vol, h.location)
        assert.truthy(vol == v1.addr or vol == v2.addr, vol)
        assert.equal(h["key-volumes"], vol .. path:match("^(/sv%x%x)"))
        local md5 = H.md5_hex(key)
        assert.equal(md5:sub(1, 2) .. "/" .. md5:sub(3, 4) .. "/" .. A.base64(key),
                     path:match("^/sv%x%x/(.*)$"))
        -- The rest of the URL is where the bytes are on the volume.
        local vst, _, vbody = H.http("GET", "http://" .. vol .. path)
        assert.equal(200, vst)
        assert.equal(value, vbody)
      end
      -- A missing key is still a 404, not a redirect to the proxy.
      assert.equal(404, (H.http("GET", m.url .. "/pub/none")))
    end)

    it("takes -public-url as a flag (and -access-log - writes to stderr)", function()
      local m = H.start_mkv({ flags = { "-volumes", v1.addr, "-replicas", "1", "-subvolumes", "1",
                                        "-db", H.tmpdir("db") .. "/index",
                                        "-public-url", "http://p.example", "-access-log", "-" } })
      assert.equal(201, (put(m.url, "/pubf/k", "v")))
      local st, h = H.http("GET", m.url .. "/pubf/k")
      assert.equal(302, st)
      local md5 = H.md5_hex("/pubf/k")
      assert.equal("http://p.example/" .. v1.addr .. "/" .. md5:sub(1, 2) .. "/" .. md5:sub(3, 4) ..
                   "/" .. A.base64("/pubf/k"), h.location)
      H.eventually(function()
        return m:log():find('"GET /pubf/k HTTP/1.1" 302 0 ', 1, true)
      end, 5, "the access log line on stderr")
    end)

    it("refuses a bad value at startup: exit 2, naming public_url", function()
      local bad = { "ftp://x", "https://proxy.example/", "https://proxy example", "proxy.example:8444",
                    "https://proxy.example:8444/a b", "https://proxy.example?x=1", "" .. "http://" }
      for _, u in ipairs(bad) do
        local db = H.tmpdir("db") .. "/index"
        local code, out = H.run_mkv({ "-volumes", v1.addr, "-db", db, "-port", tostring(H.free_port()),
                                      "-public-url", u, "server" })
        assert.equal(2, code, u .. ": " .. out)
        assert.truthy(out:find("public[-_]url"), out)
        assert.equal(1, count_matches(out, "\n"), out)
        assert.is_nil(H.read_file(db .. "/CURRENT"), "the index was opened for " .. u)
        -- The same in a config file.
        local cdir = H.tmpdir("cfg")
        H.write_file(cdir .. "/c.lua", string.format(
          "return { volumes = { %q }, db = %q, public_url = %q }", v1.addr, db, u))
        local code2, out2 = H.run_mkv({ "-c", cdir .. "/c.lua", "-port", tostring(H.free_port()), "server" })
        assert.equal(2, code2, u .. ": " .. out2)
        assert.truthy(out2:find("public_url", 1, true), out2)
      end
    end)
  end)

  -- -------------------------------------------------------------------------------------
  describe("X-Mkv-Avoid-Volume", function()
    local m, key, reps
    setup(function()
      m = H.start_mkv({ flags = { "-volumes", v1.addr .. "," .. v2.addr .. "," .. v3.addr,
                                  "-replicas", "2", "-subvolumes", "1",
                                  "-db", H.tmpdir("db") .. "/index" } })
      key = "/avoid/k"
      assert.equal(201, (put(m.url, key, "avoid me")))
      local _, h = H.http("HEAD", m.url .. key)
      reps = split_commas(h["key-volumes"])
      assert.equal(2, #reps)
    end)

    -- 20 GETs on one keep-alive connection; returns {volume = times redirected there}.
    local function targets(avoid_headers)
      local conn = A.connect(m.port)
      local seen = {}
      for _ = 1, 20 do
        conn:send(A.request("GET", key, avoid_headers))
        local r = assert(conn:response(5))
        assert.equal(302, r.status)
        local vol = r.headers.location:match("^http://([^/]+)/")
        seen[vol] = (seen[vol] or 0) + 1
      end
      conn:close()
      return seen
    end

    local function unknown_volume()
      for _, v in ipairs({ v1, v2, v3 }) do
        if v.addr ~= reps[1] and v.addr ~= reps[2] then return v.addr end
      end
    end

    it("without the header, reads are spread over both replicas", function()
      local seen = targets(nil)
      assert.equal(20, (seen[reps[1]] or 0) + (seen[reps[2]] or 0))
      assert.is_true((seen[reps[1]] or 0) > 0 and (seen[reps[2]] or 0) > 0)
    end)

    it("redirects to the other replica when one is named, every time", function()
      assert.same({ [reps[2]] = 20 }, targets({ "X-Mkv-Avoid-Volume: " .. reps[1] }))
      assert.same({ [reps[1]] = 20 }, targets({ "X-Mkv-Avoid-Volume: " .. reps[2] }))
      -- In a list, with spaces, next to a volume that holds no copy.
      assert.same({ [reps[2]] = 20 }, targets({ "X-Mkv-Avoid-Volume: " .. unknown_volume() ..
                                                 ", " .. reps[1] }))
      assert.same({ [reps[1]] = 20 }, targets({ "x-mkv-avoid-volume: 127.0.0.9:1," .. reps[2] .. "/sv00" }))
      -- Header repeated: the lists add up.
      local seen = targets({ "X-Mkv-Avoid-Volume: 127.0.0.9:1", "X-Mkv-Avoid-Volume: " .. reps[1] })
      assert.same({ [reps[2]] = 20 }, seen)
    end)

    it("still redirects when both replicas are named", function()
      local seen = targets({ "X-Mkv-Avoid-Volume: " .. reps[1] .. "," .. reps[2] })
      assert.equal(20, (seen[reps[1]] or 0) + (seen[reps[2]] or 0))
    end)

    it("changes nothing when it names a volume without a copy, or a prefix of a replica's name", function()
      local unknown = unknown_volume()
      local seen = targets({ "X-Mkv-Avoid-Volume: " .. unknown .. ",10.1.1.1:80" })
      assert.is_true((seen[reps[1]] or 0) > 0 and (seen[reps[2]] or 0) > 0)
      assert.equal(20, (seen[reps[1]] or 0) + (seen[reps[2]] or 0))
      -- "127.0.0.1:2" is not "127.0.0.1:2xxxx".
      local prefix = reps[1]:sub(1, -2)
      seen = targets({ "X-Mkv-Avoid-Volume: " .. prefix })
      assert.is_true((seen[reps[1]] or 0) > 0 and (seen[reps[2]] or 0) > 0)
    end)
  end)
end)
