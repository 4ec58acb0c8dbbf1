-- spec/bench/run.lua: the benchmark suite. Every figure is a ratio against a reference
-- measured in the same run, on the same machine, a moment apart (these machines are
-- shared and noisy): mkv's value, the reference's, their ratio, as medians over RUNS
-- runs, with the ratio's spread (min..max).
--
--   luajit spec/bench/run.lua [--runs N] [--seconds S] [--only id,id] [--json FILE]
--                             [--compare OLD.json] [--big-index N] [--fs private|shared]
--
-- From the repository root, after deploy/setup (it uses build/mkv, build/ratebench,
-- build/ldbtool and build/relay). A cluster of 3 nginx volumes (deploy/volume) and mkv
-- (replicas 3, subvolumes 1) on loopback; wrk drives HTTP load with keep-alive (-t2
-- -c32); memory is mkv's VmHWM/VmRSS from /proc. --json writes the table (default
-- build/bench-results.json) so that a later run can --compare against it.
--
-- This file is the list of figures, each a `fig` whose run() measures one round. The
-- machinery is in spec/bench/lib.lua (the command line, wrk and ratebench, CPU time,
-- turns, the run and its JSON) and spec/bench/cluster.lua (the volumes' filesystem, the
-- cluster, its CPU accounting, the large transfers).
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local A = require "api_support"
local B = require "bench.lib"
local cluster = require "bench.cluster"

local opts = B.options(arg)
local BIN = H.build
local D = opts.seconds
local C = cluster.start(opts)

-- What the figures use. mkv is C.m, never a local: C.start_mkv() replaces it.
local vols, addrs, base, db, v1 = C.vols, C.addrs, C.base, C.db, C.v1
local index_dir, scripts = C.index_dir, C.scripts
local sh_ok, ratebench, status_kb, ticks, TICK_US = B.sh_ok, B.ratebench, B.status_kb, B.ticks, B.TICK_US
local in_rotation, start_nginx = B.in_rotation, B.start_nginx
local key_file, wrk_cpu, cpu_detail = C.key_file, C.wrk_cpu, C.cpu_detail
local settle, uploads, direct, warm_up = C.settle, C.uploads, C.direct, C.warm_up
local timed_transfer, transfer_detail = C.timed_transfer, C.transfer_detail

-- The rates of the sides in turns, --seconds turns of a second each (B.in_turns).
local function in_turns(sides) return B.in_turns(sides, D) end

-- ---- the figures ----
-- Each: id, what, reference, target (text), and run() -> mkv value, reference value,
-- unit; "higher" or "lower" is better for mkv's value (ratio = mkv / reference).

local figures = {}
local function fig(t) figures[#figures + 1] = t end

fig { id = "get404", what = "GET of a missing key (404), req/s",
  ref = "nginx answering a 404 for a missing file", target = ">= 1.0", unit = "req/s", better = "higher",
  run = function()
    local r = in_turns({ { url = C.m.url .. "/bench/missing", want = "any" }, { url = v1 .. "/missing", want = "any" } })
    return r[1], r[2]
  end }

local small_keys
local function ensure_small_keys()
  if small_keys then return end
  small_keys = {}
  for i = 1, 100 do
    local k = "/bench/small/" .. i
    local st = H.http("PUT", C.m.url .. k, { body = string.rep("s", 1024) })
    assert(st == 201, "PUT " .. k .. ": " .. tostring(st))
    small_keys[i] = k
  end
end

fig { id = "get302", what = "GET of an existing key (302 after one HEAD), req/s",
  ref = "nginx answering a 404 for a missing file", target = ">= 0.45", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    local r = in_turns({ { url = C.m.url .. small_keys[1] }, { url = v1 .. "/missing", want = "any" } })
    return r[1], r[2]
  end }

-- The same 4-hop path (client -> index -> HEAD to a volume -> 302) served by nginx
-- itself: auth_request sends each GET's HEAD to a volume over keep-alive connections
-- (round robin over the three, as mkv spreads its probes over the replicas), then the
-- static handler's 404 becomes a 302 by error_page. It shows what the machine allows
-- for this path with the reference server in mkv's place.
local nginx_index
local PROBE = "/bench-probe/3a/d3/cHJvYmU="
local function ensure_nginx_index()
  if nginx_index then return nginx_index end
  for _, v in ipairs(vols) do
    local st = H.http("PUT", "http://" .. v.addr .. PROBE, { body = string.rep("p", 1024) })
    assert(st == 201 or st == 204, "PUT " .. PROBE .. " to " .. v.addr .. ": " .. tostring(st))
  end
  local empty = H.tmpdir("nginx-index-root")
  local url, p = start_nginx("nginx-index", {
    "upstream bench_vols { server " .. table.concat(addrs, "; server ") .. "; keepalive 64; }",
  }, {
    "location / {",
    "  auth_request /probe;",
    "  root " .. empty .. ";",
    "  error_page 404 " .. v1 .. PROBE .. ";",
    "}",
    "location = /probe {",
    "  internal;",
    "  proxy_pass http://bench_vols" .. PROBE .. ";",
    "  proxy_method HEAD;",
    "  proxy_pass_request_body off;",
    -- proxy_set_header here replaces the http block's: Connection "" again (keep-alive)
    '  proxy_set_header Content-Length "";',
    '  proxy_set_header Connection "";',
    "}",
  })
  nginx_index = url .. "/k"
  local st = H.http("GET", nginx_index)
  assert(st == 302, "nginx as the index answered " .. tostring(st) .. ": " .. p:log())
  return nginx_index
end

fig { id = "get302_nginx", what = "GET 302: mkv against nginx doing the same, req/s",
  ref = "nginx as the index: a keep-alive HEAD to a volume (auth_request), then a 302",
  target = "report", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    local url = ensure_nginx_index()
    local r = in_turns({ { url = C.m.url .. small_keys[1] }, { url = url }, { url = v1 .. "/missing", want = "any" } })
    local a, b, c = r[1], r[2], r[3]
    return a, b, string.format("against the nginx 404 figure: mkv %.2fx, nginx doing the same %.2fx",
      a / c, b / c)
  end }

-- Two references for the 1 KB PUT. nginx's own work differs with the path: a PUT into
-- a directory that does not exist yet costs nginx a failed rename and a mkdir per level
-- (create_full_put_path), about twice a PUT into one flat directory. mkv's layout (the Go
-- original's, kept byte for byte) puts nearly every new key in a new directory, so
-- "put1k" compares with nginx PUTs spread the same way; "put1k_flat" with the flat ones.
local put_round = 0
-- A side of in_turns that PUTs new 1 KB keys to url: a prefix of its own per round and
-- turn; shaped: spread over two levels of hex directories as mkv lays keys out.
local function put_side(url, prefix, shaped, pid)
  return { url = url, pid = pid, script = scripts .. (shaped and "/put_shaped.lua" or "/put.lua"),
           args = function(turn)
             return { string.format("%s%d-%d/%s", prefix, put_round, turn, shaped and "" or "k") }
           end }
end

fig { id = "put1k", what = "PUT of new 1 KB keys, replicas 3, req/s",
  ref = "nginx answering 1 KB PUTs directly into mkv-shaped dirs, / 3", target = ">= 0.8",
  unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local r = in_turns({ put_side(C.m.url, "/bench/put"), put_side(v1, "/direct-put", true) })
    return r[1], r[2] / 3
  end }

fig { id = "put1k_flat", what = "PUT of new 1 KB keys, replicas 3, req/s",
  ref = "nginx answering 1 KB PUTs directly into one directory, / 3", target = ">= 0.8",
  unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local r = in_turns({ put_side(C.m.url, "/bench/put"), put_side(v1, "/direct-putflat") })
    return r[1], r[2] / 3
  end }

-- The 1 KB PUT's fan-out done by nginx itself: each PUT proxied to one volume and
-- mirrored to the two others, over keep-alive connections, into mkv-shaped dirs. The
-- client's answer is the first volume's and the mirrors' answers are ignored; there is
-- no index, no MD5 and no all-replicas check: less work than mkv does, on the same path.
local nginx_mirror
local function ensure_nginx_mirror()
  if nginx_mirror then return nginx_mirror end
  local ups = {}
  for i, a in ipairs(addrs) do ups[i] = "upstream bench_v" .. i .. " { server " .. a .. "; keepalive 64; }" end
  nginx_mirror = start_nginx("nginx-mirror", ups, {
    "location / { mirror /bench-m2; mirror /bench-m3; proxy_pass http://bench_v1; }",
    "location = /bench-m2 { internal; proxy_pass http://bench_v2$request_uri; }",
    "location = /bench-m3 { internal; proxy_pass http://bench_v3$request_uri; }",
  })
  local st = H.http("PUT", nginx_mirror .. "/bench-mirror-check/ab/cd/k", { body = "x" })
  assert(st == 201, "nginx mirroring PUTs answered " .. tostring(st))
  for i = 1, 3 do
    assert(A.exists(base .. "/v" .. i .. "/bench-mirror-check/ab/cd/k"), "no mirrored copy on volume " .. i)
  end
  return nginx_mirror
end

fig { id = "put1k_nginx", what = "PUT 1 KB x3: mkv against nginx's own fan-out, req/s",
  ref = "nginx proxying each PUT to a volume and mirroring it to the two others", target = "report",
  unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local url = ensure_nginx_mirror()
    local r = in_turns({ put_side(C.m.url, "/bench/put"), put_side(url, "/mirror-put", true),
                         put_side(v1, "/direct-putm", true) })
    local a, b, c = r[1], r[2], r[3]
    return a, b, string.format("against direct PUTs / 3: mkv %.2fx, nginx's fan-out %.2fx", a / (c / 3), b / (c / 3))
  end }

-- A replicating PUT done the plainest way: spec/bench/c/relay.c, a thread per client
-- connection that reads the body once, MD5s it, writes it to the three volumes and
-- answers 201 once all three have -- no policy, no key lock, no timeouts or recovery --
-- on the same volumes, into the same files mkv would write (its key layout). Two of
-- them: the bare relay, with no index at all (the floor of the fan-out alone), and the
-- durable relay (-d), which also keeps mkv's records in a LevelDB index of its own next
-- to mkv's (a lookup, the soft-deleted mark, the live record synced before the 201),
-- the synced writes of concurrent connections grouped by LevelDB's own writer queue.
-- The durable relay is not a strict lower bound (LevelDB groups less than mkv's writer
-- thread does: see relay.c), but it is the same durable work without mkv's machinery:
-- mkv against it is what that machinery costs, and the relays against the direct
-- references are what this machine gives such a server on that path, measured.
local relays = {}
local function ensure_relay(durable)
  local kind = durable and "durable" or "bare"
  if relays[kind] then return relays[kind] end
  local port = H.free_port()
  local argv = { BIN .. "/relay", "-l", tostring(port), addrs[1], addrs[2], addrs[3] }
  if durable then table.insert(argv, 2, "-d"); table.insert(argv, 3, index_dir .. "/relay-index") end
  local p = H.spawn("relay-" .. kind, argv)
  H.eventually(function()
    if not p:alive() then error("relay exited: " .. p:log(), 0) end
    return H.port_open(port)
  end, 10, "relay on port " .. port)
  local r = { pid = p.pid, url = "http://127.0.0.1:" .. port }
  local key = "/bench-relay-check-" .. kind
  local st = H.http("PUT", r.url .. key, { body = "x" })
  assert(st == 201, "the relay answered " .. tostring(st) .. ": " .. p:log())
  for i = 1, 3 do
    assert(A.exists(key_file(i, key)), "the relay wrote no copy on volume " .. i)
  end
  if durable then
    st = H.http("PUT", r.url .. key, { body = "x" })
    assert(st == 403, "the durable relay let a live key be overwritten: " .. tostring(st))
  end
  relays[kind] = r
  return r
end

fig { id = "put1k_dfloor", what = "PUT 1 KB x3: mkv against the durable relay, req/s",
  ref = "relay.c -d: body read once, MD5, written to the 3 volumes, a synced LevelDB record per PUT",
  target = "report", unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local rd, r = ensure_relay(true), ensure_relay(false)
    local rate, cpu = in_turns({ put_side(C.m.url, "/bench/putf", false, C.m.pid),
      put_side(rd.url, "/drelay-put", false, rd.pid), put_side(r.url, "/relay-put", false, r.pid),
      put_side(v1, "/direct-putr", true) })
    local a, d, b, c = rate[1], rate[2], rate[3], rate[4]
    local ac, dc, bc = cpu[1], cpu[2], cpu[3]
    return a, d, string.format("CPU per PUT: mkv %.0f us, the durable relay %.0f us, the bare relay %.0f us; " ..
      "against direct PUTs / 3: mkv %.2fx, the durable relay %.2fx, the bare relay %.2fx; mkv / the bare relay %.2fx",
      ac, dc, bc, a / (c / 3), d / (c / 3), b / (c / 3), a / b)
  end }

fig { id = "put1k_cpu", what = "CPU per 1 KB PUT (mkv+nginx+wrk), us",
  ref = "3 direct nginx PUTs into mkv-shaped dirs, with wrk", target = "report", unit = "us", better = "lower",
  run = function()
    put_round = put_round + 1
    local _, a = wrk_cpu(C.m.url, scripts .. "/put.lua", { "/bench/put" .. put_round .. "/k" }, { 1, 2, 3 })
    local _, b = wrk_cpu(v1, scripts .. "/put_shaped.lua", { "/direct-put" .. put_round .. "/" }, { 1 })
    return cpu_detail(a, b, 3)
  end }

fig { id = "get302_cpu", what = "CPU per 302 (mkv+nginx HEAD+wrk), us",
  ref = "one nginx 404 with wrk", target = "report", unit = "us", better = "lower",
  run = function()
    ensure_small_keys()
    local _, a = wrk_cpu(C.m.url .. small_keys[1], nil, nil, { 1, 2, 3 })
    local _, b = wrk_cpu(v1 .. "/missing", nil, nil, { 1 }, "any")
    return cpu_detail(a, b, 1)
  end }

local del_round = 0
fig { id = "delete", what = "DELETE, req/s",
  ref = "nginx answering DELETEs directly, / 3", target = ">= 0.8", unit = "req/s", better = "higher",
  run = function()
    -- Keys made without the API (it would take longer than the figure): records with
    -- ldbtool while mkv is down, and their files on the three volumes; the same number
    -- of plain files on volume 1 for nginx.
    del_round = del_round + 1
    local per = 6000 * D -- keys per wrk thread (it stops when they are gone)
    local prefix = "/bench/del" .. del_round .. "/"
    C.m:stop()
    sh_ok(string.format("%s/ldbtool fill %s %d %s %s", BIN, H.shq(db), per * 2, prefix,
      table.concat(addrs, ",")))
    C.start_mkv()
    -- files: the directories first, all with one mkdir (a shell per directory took
    -- minutes: nearly every key has directories of its own), then a Lua loop
    local made, dirs, files = {}, {}, {}
    local function want(f)
      files[#files + 1] = f
      local d = f:match("^(.*)/")
      if not made[d] then made[d] = true; dirs[#dirs + 1] = d end
    end
    for i = 0, per * 2 - 1 do
      local k = string.format("%s%09d", prefix, i)
      for v = 1, 3 do want(key_file(v, k)) end
      want(base .. "/v1/direct-del" .. del_round .. string.format("/%09d", i))
    end
    local list = H.write_file(scripts .. "/dirs", table.concat(dirs, "\0") .. "\0")
    sh_ok("xargs -0 mkdir -p < " .. H.shq(list))
    for _, f in ipairs(files) do
      local fh = assert(io.open(f, "w"))
      fh:write("d")
      fh:close()
    end
    local a = B.wrk(C.m.url, scripts .. "/delete.lua", { prefix, tostring(per) }, nil, D)
    local b = B.wrk(v1, scripts .. "/delete.lua", { "/direct-del" .. del_round .. "/", tostring(per) }, nil, D)
    return a, b / 3
  end }

local big
local function ensure_big()
  if big then return end
  big = base .. "/big"
  sh_ok("head -c 1G /dev/urandom > " .. H.shq(big))
end

local put1g_mem = {}
fig { id = "put1g", what = "PUT of a 1 GB value, replicas 3, seconds",
  ref = "three parallel curl -T of the file to the three volumes", target = "<= 1.15", unit = "s", better = "lower",
  run = function(round)
    ensure_big()
    warm_up(big, 3)
    local direct_urls, direct_files = direct(3, "direct-big" .. round)
    local a, ca, b, cb
    -- in rotation: the first large transfer after a while pays more for the same
    -- bytes (seen: nginx 20 CPU-s for the 6 GB one time, 12 the next, on either side)
    in_rotation(round, { function()
      settle()
      local hwm0 = status_kb(C.m.pid, "VmHWM")
      local rss0 = status_kb(C.m.pid, "VmRSS")
      a, ca = timed_transfer(uploads(big, { C.m.url .. "/bench/big" .. round }))
      put1g_mem[#put1g_mem + 1] = { hwm0 = hwm0, hwm1 = status_kb(C.m.pid, "VmHWM"), rss0 = rss0 }
    end, function()
      settle()
      b, cb = timed_transfer(uploads(big, direct_urls))
    end })
    -- the space back for the next runs
    local st = H.http("DELETE", C.m.url .. "/bench/big" .. round)
    assert(st == 204, "DELETE /bench/big" .. round .. ": " .. tostring(st))
    for _, f in ipairs(direct_files) do os.remove(f) end
    return a, b, transfer_detail(ca, cb)
  end }

-- The 1 GB PUT through the durable relay (relay.c -d, above), through mkv, through mkv
-- without the MD5, and straight to the volumes, in turns. Each side's copies are deleted after
-- the run.
-- On these machines (Linux 6.18 in a Firecracker VM) most of nginx's CPU in a large PUT
-- is filling its temp file, and that costs 3 to 7 times more when the 1 MB writes land
-- 1 MB-aligned (large page-cache folios) than when they are offset by a few bytes: a
-- plain loop of 1 MB pwrites shows it, without nginx. nginx's writes are aligned when the
-- request head reached it alone -- curl's direct PUTs, and mkv's after a client's
-- "Expect: 100-continue" -- and offset when body bytes came with the head. So the relay
-- sends the head exactly when mkv does, or it would be measured on a cheaper kernel path.
local floor_round = 0
-- mkv with -md5sum=false on the same volumes (an index of its own), for put1g_dfloor: the
-- MD5 of the body is the one thing mkv (and the relay) must do that three direct uploads
-- do not, and over a gigabyte the largest.
local nomd5
local function ensure_nomd5()
  if nomd5 then return nomd5 end
  nomd5 = H.start_mkv({ flags = { "-volumes", table.concat(addrs, ","), "-db", index_dir .. "/index-nomd5",
                                  "-replicas", "3", "-subvolumes", "1", "-voltimeout", "1s", "-md5sum=false" } })
  return nomd5
end

fig { id = "put1g_dfloor", what = "PUT of a 1 GB value: mkv against the durable relay, s",
  ref = "relay.c -d: body read once, MD5, written to the 3 volumes, a synced record", target = "report",
  unit = "s", better = "lower",
  run = function()
    ensure_big()
    local r, n = ensure_relay(true), ensure_nomd5()
    floor_round = floor_round + 1
    local key = "/bench/floorbig" .. floor_round
    local rkey = "/relay-big" .. floor_round
    local nkey = "/bench/nomd5big" .. floor_round
    local direct_urls, direct_files = direct(3, "direct-fbig" .. floor_round)
    local a, ca, b, rc, c, d, dc
    local function timed_pid(pid, url)
      settle()
      local t0 = ticks({ pid })
      local t = timed_transfer(uploads(big, { url }))
      return t, (ticks({ pid }) - t0) * TICK_US / 1e6
    end
    warm_up(big, 3)
    in_rotation(floor_round, { function()
      b, rc = timed_pid(r.pid, r.url .. rkey)
    end, function()
      settle()
      a, ca = timed_transfer(uploads(big, { C.m.url .. key }))
    end, function()
      d, dc = timed_pid(n.pid, n.url .. nkey)
    end, function()
      settle()
      c = timed_transfer(uploads(big, direct_urls))
    end })
    for _, x in ipairs({ { C.m.url, key }, { n.url, nkey } }) do
      local st = H.http("DELETE", x[1] .. x[2])
      assert(st == 204, "DELETE " .. x[2] .. ": " .. tostring(st))
    end
    for i = 1, 3 do os.remove(key_file(i, rkey)) end
    for _, f in ipairs(direct_files) do os.remove(f) end
    return a, b, string.format("CPU-s: mkv %.2f, the relay %.2f, mkv -md5sum=false %.2f; index fsync %.2f s; " ..
      "against three direct PUTs: mkv %.2fx, the relay %.2fx, mkv -md5sum=false %.2fx", ca.mkv, rc, dc, ca.sync,
      a / c, b / c, d / c)
  end }

fig { id = "put1g_mem", what = "mkv memory growth during the 1 GB PUT, MB (VmHWM)",
  ref = "-", target = "<= 16 MB", unit = "MB", better = "lower", absolute = true,
  run = function()
    -- from the put1g runs: the peak growth of the first (the high-water mark only rises)
    local e = put1g_mem[1]
    if not e then error("needs put1g", 0) end
    return (e.hwm1 - e.hwm0) / 1024, nil
  end }

fig { id = "put256x8", what = "8 concurrent 256 MB PUTs, total MB/s",
  ref = "24 parallel direct curl PUTs of the same file", target = ">= 0.85", unit = "MB/s", better = "higher",
  run = function(round)
    local f = base .. "/v256"
    if not H.read_file(f .. ".ok") then
      sh_ok("head -c 256M /dev/urandom > " .. H.shq(f) .. " && touch " .. H.shq(f .. ".ok"))
    end
    local tag = tostring(math.random(1e9))
    warm_up(f, 24)
    local a, ca, b, cb
    local keys = {}
    for i = 1, 8 do keys[i] = C.m.url .. "/bench/c" .. tag .. "-" .. i end
    local direct_urls, direct_files = direct(24, "direct-c" .. tag)
    in_rotation(round, { function() -- in rotation, as put1g
      settle()
      local ta
      ta, ca = timed_transfer(uploads(f, keys))
      a = 8 * 256 / ta
    end, function()
      settle()
      local tb
      tb, cb = timed_transfer(uploads(f, direct_urls))
      b = 8 * 256 / tb
    end })
    -- the space back for the next run
    for _, df in ipairs(direct_files) do os.remove(df) end
    for _, k in ipairs(keys) do H.http("DELETE", k) end
    return a, b, transfer_detail(ca, cb)
  end }

local listed
fig { id = "list100k", what = "listing 100 000 keys page by page (limit 1000), keys/s",
  ref = "a C loop iterating the same LevelDB keys", target = "report", unit = "keys/s", better = "higher",
  run = function()
    if not listed then
      C.m:stop()
      sh_ok(string.format("%s/ldbtool fill %s 100000 /bench/list/ %s", BIN, H.shq(db), table.concat(addrs, ",")))
      C.start_mkv()
      listed = true
    end
    -- one keep-alive connection, as a client paging through a listing would hold
    local conn = A.connect(C.m.port)
    local t0 = H.now()
    local start, n, seen, dups = "", 0, {}, 0
    while true do
      local path = "/bench/list/?list&limit=1000" .. -- the prefix is the path, as in Go
        (start ~= "" and ("&start=" .. H.urlencode_path(start)) or "")
      conn:send(A.request("GET", path))
      local res, why = conn:response(30)
      assert(res and res.status == 200, "listing: " .. tostring(res and res.status or why))
      local nxt, keys = A.parse_listing(res.body)
      for _, k in ipairs(keys) do
        if seen[k] then dups = dups + 1 end
        seen[k] = true
      end
      n = n + #keys
      if nxt == "" or #keys == 0 then break end
      start = nxt
    end
    conn:close()
    local a = n / (H.now() - t0)
    assert(n == 100000 and dups == 0, "listed " .. n .. " keys, " .. dups .. " of them twice")
    C.m:stop()
    local out = sh_ok(string.format("%s/ldbtool scan %s /bench/list/", BIN, H.shq(db)))
    C.start_mkv()
    local b = tonumber(out:match("keys_per_s=(%d+)"))
    return a, b
  end }

-- The p99 of mkv's 302 and of nginx's own HEAD, each at 1000 req/s, in rotation.
local function p99_302(round)
  ensure_small_keys()
  local urls = {}
  for i = 1, 20 do urls[i] = C.m.url .. small_keys[i] end
  local f = key_file(1, small_keys[1]):sub(#(base .. "/v1") + 1)
  -- What the figures before left dirty is written back first: a tail latency measured
  -- during 12 GB of writeback was the writeback's (nginx's own HEAD p99 7 ms, not 2.3).
  H.sh("sync")
  local a, b
  in_rotation(round, { function() a = ratebench(1000, math.max(D, 5), "GET", 302, urls).p99 end,
                       function() b = ratebench(1000, math.max(D, 5), "HEAD", 200, { v1 .. f }).p99 end })
  return a, b
end

fig { id = "p99_302", what = "p99 latency of the 302 at a fixed 1 000 req/s, ms",
  ref = "nginx HEAD p99 at the same rate", target = "<= 3", unit = "ms", better = "lower",
  run = p99_302 }

-- read_check = "none" (README "Reads"): the 302 from the index and the volumes' known
-- health, no request to a volume on the path.
fig { id = "get302_none", what = "GET 302 with read_check none, req/s",
  ref = "nginx answering a 404 for a missing file", target = ">= 0.9", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    return C.with_flags({ "-read-check", "none" }, function()
      local r = in_turns({ { url = C.m.url .. small_keys[1] }, { url = v1 .. "/missing", want = "any" } })
      return r[1], r[2]
    end)
  end }

fig { id = "p99_302_none", what = "p99 latency of the 302 at 1 000 req/s, read_check none, ms",
  ref = "nginx HEAD p99 at the same rate", target = "<= 1.5", unit = "ms", better = "lower",
  run = function(round)
    ensure_small_keys()
    return C.with_flags({ "-read-check", "none" }, function() return p99_302(round) end)
  end }

-- A dead volume with read_check none: every key has a copy on it (3 volumes, 3
-- replicas); once it is marked down, the 302 goes to another replica with no wait.
fig { id = "none_dead", what = "read_check none, one of 3 volumes down: 302 req/s",
  ref = "the same with every volume up", target = ">= 0.9", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    return C.with_flags({ "-read-check", "none" }, function()
      local admin = H.admin_addr(db)
      local json = require "json"
      local function state()
        local _, _, body = H.http("GET", "http://" .. admin .. "/health")
        return json.decode(body).volumes[addrs[2]].state
      end
      local url = C.m.url .. small_keys[3]
      local r = in_turns({ { url = url, before = function()
                               H.T.kill(-vols[2].pid, 19) -- SIGSTOP, master and workers: its
                               -- probes time out, it is marked down
                               H.eventually(function() return state() == "down" end, 15, "volume 2 down")
                             end,
                             after = function()
                               H.T.kill(-vols[2].pid, 18)
                               H.eventually(function() return state() == "up" end, 15, "volume 2 up")
                             end },
                           { url = url } })
      return r[1], r[2]
    end)
  end }

-- Index size. Two indexes made with ldbtool: 10 thousand and --big-index (10 million)
-- records. In each, 100 records spread evenly through the key space get real files on
-- the volumes; the load cycles through those 100 keys, so every GET looks up a
-- different part of the index. An mkv on each index, same volumes, taken in turns.
local index_sets = {}
local function index_set(name, n)
  if index_sets[name] then return index_sets[name] end
  local dir = index_dir .. "/index-" .. name
  local prefix = "/bench/ix-" .. name .. "/"
  local out = sh_ok(string.format("%s/ldbtool fill %s %d %s %s", BIN, H.shq(dir), n, prefix,
    table.concat(addrs, ",")))
  io.stderr:write("bench: index " .. name .. ": " .. out)
  local keys, made, dirs, files = {}, {}, {}, {}
  for k = 0, 99 do
    local key = string.format("%s%09d", prefix, math.floor(k * n / 100))
    keys[#keys + 1] = key
    for v = 1, 3 do
      local f = key_file(v, key)
      files[#files + 1] = f
      local d = f:match("^(.*)/")
      if not made[d] then made[d] = true; dirs[#dirs + 1] = d end
    end
  end
  local quoted = {}
  for i, d in ipairs(dirs) do quoted[i] = H.shq(d) end
  sh_ok("mkdir -p " .. table.concat(quoted, " "))
  for _, f in ipairs(files) do H.write_file(f, "d") end
  local list = {}
  for i, k in ipairs(keys) do list[i] = string.format("%q", k) end
  local script = H.write_file(scripts .. "/cycle-" .. name .. ".lua", string.format([[
local keys = { %s }
local counter = 0
local threads = {}
function setup(thread) thread:set("tid", #threads); threads[#threads + 1] = thread end
function request()
  counter = counter + 1
  return wrk.format("GET", keys[(counter * 7 + tid * 50) %% #keys + 1])
end
]], table.concat(list, ", ")))
  index_sets[name] = { dir = dir, keys = keys, script = script }
  return index_sets[name]
end

-- An mkv of its own on an index set (the bench's mkv keeps running on its own index).
local function index_server(set)
  return H.start_mkv({ flags = { "-volumes", table.concat(addrs, ","), "-db", set.dir, "-replicas", "3",
                                 "-subvolumes", "1", "-voltimeout", "1s" } })
end

local function p99_on(server, set)
  local urls = {}
  for i = 1, 20 do urls[i] = server.url .. set.keys[i * 5] end
  return ratebench(1000, math.max(D, 5), "GET", 302, urls).p99
end

local bigindex_p99 = {}
fig { id = "bigindex", what = "302 req/s with a 10-million-key index",
  ref = "the same with 10 thousand keys", target = ">= 0.8", unit = "req/s", better = "higher",
  run = function(round)
    local small, big = index_set("small", 10000), index_set("big", opts.big_index)
    -- both served at once, by two mkv on the same volumes, and measured in turns
    local ms, mb = index_server(small), index_server(big)
    H.sh("sync") -- the indexes just written, and what earlier figures left, written back first
    local r, p, p_small
    local ok, err = pcall(function()
      r = in_turns({ { url = mb.url, script = big.script }, { url = ms.url, script = small.script } })
      in_rotation(round, { function() p = p99_on(mb, big) end, function() p_small = p99_on(ms, small) end })
    end)
    ms:stop() -- also after a failure: the next round opens the same indexes
    mb:stop()
    if not ok then error(err, 0) end
    bigindex_p99[#bigindex_p99 + 1] = { p, p_small }
    return r[1], r[2]
  end }

fig { id = "bigindex_p99", what = "p99 of the 302 at 1000 req/s, 10-million-key index, ms",
  ref = "the same with 10 thousand keys", target = "<= 1.25", unit = "ms", better = "lower",
  run = function(r)
    local m99 = bigindex_p99[r]
    if not m99 then error("run the bigindex figure first (--only bigindex,bigindex_p99)", 0) end
    return m99[1], m99[2]
  end }

fig { id = "hung", what = "a volume hung (SIGSTOP): 302 req/s",
  ref = "the same with all volumes healthy", target = ">= 0.5", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    local url = C.m.url .. small_keys[3]
    -- SIGSTOP and SIGCONT to the volume's process group: nginx's workers, not only its
    -- master, which serves nothing
    local r = in_turns({ { url = url, before = function() H.T.kill(-vols[2].pid, 19) end,
                           after = function() H.T.kill(-vols[2].pid, 18) end },
                         { url = url } })
    return r[1], r[2]
  end }
-- ---- running ----

B.run(figures, opts, C)
C.stop()
