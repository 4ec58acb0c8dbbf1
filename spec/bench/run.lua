-- spec/bench/run.lua: the benchmark suite. Every figure is a ratio against a reference
-- measured in the same run, on the same machine, a moment apart (these machines are
-- shared and noisy): mkv's value, the reference's, their ratio, as medians over RUNS
-- runs, with the ratio's spread (min..max).
--
--   luajit spec/bench/run.lua [--runs N] [--seconds S] [--only id,id] [--json FILE]
--                             [--compare OLD.json] [--big-index N] [--fs private|shared]
--
-- From the repository root, after deploy/setup (it uses build/mkv, build/ratebench and
-- build/ldbtool). A cluster of 3 nginx volumes (deploy/volume) and mkv (replicas 3,
-- subvolumes 1) on loopback; wrk drives HTTP load with keep-alive (-t2 -c32); memory is
-- mkv's VmHWM/VmRSS from /proc. --json writes the table (default
-- build/bench-results.json) so that a later run can --compare against it.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local A = require "api_support"
local json = require "json"

-- A JSON writer for the results (strings, numbers, lists, nested tables with string keys).
local function encode(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end -- no JSON for them
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      if c == '"' or c == "\\" then return "\\" .. c end
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return "null" end
  local parts = {}
  if #v > 0 then -- a list (the per-run detail lines): a JSON array
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do parts[#parts + 1] = encode(tostring(k)) .. ":" .. encode(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local opts = { runs = 3, seconds = 5, big_index = 10000000, json = "build/bench-results.json", fs = "private" }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    local v = arg[i + 1]
    if a == "--runs" then opts.runs = tonumber(v); i = i + 1
    elseif a == "--seconds" then opts.seconds = tonumber(v); i = i + 1
    elseif a == "--only" then opts.only = {}; for x in v:gmatch("[^,]+") do opts.only[x] = true end; i = i + 1
    elseif a == "--json" then opts.json = v; i = i + 1
    elseif a == "--compare" then opts.compare = v; i = i + 1
    elseif a == "--big-index" then opts.big_index = tonumber(v); i = i + 1
    elseif a == "--fs" and (v == "private" or v == "shared") then opts.fs = v; i = i + 1
    else
      io.stderr:write("usage: luajit spec/bench/run.lua [--runs N] [--seconds S] [--only id,...] " ..
        "[--json FILE] [--compare OLD.json] [--big-index N] [--fs private|shared]\n")
      os.exit(2)
    end
    i = i + 1
  end
end

local BIN = H.build
local D = opts.seconds

local function sh_ok(cmd)
  local out, code = H.sh(cmd)
  if code ~= 0 then error("failed (" .. tostring(code) .. "): " .. cmd .. "\n" .. out, 0) end
  return out
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 end
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

-- ---- load generators ----

local scripts = H.tmpdir("bench-scripts")

-- wrk scripts: PUT of unique keys, DELETE of numbered keys, HEAD
H.write_file(scripts .. "/put.lua", [[
local counter = 0
local body = string.rep("x", 1024)
local threads = {}
function setup(thread) thread:set("tid", #threads + 1); threads[#threads + 1] = thread end
function init(args) prefix = args[1] end
function request()
  counter = counter + 1
  return wrk.format("PUT", prefix .. tid .. "-" .. counter, nil, body)
end
]])
-- The same, spread over two levels of hex directories the way mkv lays keys out on a
-- volume (md5-like: nearly every new key lands in a directory nginx must create first).
H.write_file(scripts .. "/put_shaped.lua", [[
local counter = 0
local body = string.rep("x", 1024)
local threads = {}
local state
function setup(thread) thread:set("tid", #threads + 1); threads[#threads + 1] = thread end
function init(args) prefix = args[1]; state = tid * 7919 end
function request()
  counter = counter + 1
  state = (state * 1103515245 + 12345) % 2147483648
  local h = math.floor(state / 32768) % 65536
  return wrk.format("PUT", string.format("%s%02x/%02x/%d-%d", prefix, math.floor(h / 256), h % 256,
    tid, counter), nil, body)
end
]])
H.write_file(scripts .. "/delete.lua", [[
local counter = 0
local threads = {}
function setup(thread) thread:set("tid", #threads); threads[#threads + 1] = thread end
function init(args) prefix = args[1]; per = tonumber(args[2]) end
function request()
  local i = tid * per + counter % per
  counter = counter + 1
  return wrk.format("DELETE", string.format("%s%09d", prefix, i))
end
-- Each thread has `per` keys: it stops when it has sent them all (wrk's rate is over the
-- time until the last thread stopped), so neither side is timed deleting missing keys.
function response()
  if counter >= per then wrk.thread:stop() end
end
]])
H.write_file(scripts .. "/head.lua", 'wrk.method = "HEAD"\n')

-- Runs wrk for secs (default --seconds); returns requests/s of the answers that had the
-- expected status class (want "2xx3xx": wrk's own count; want "any": all), the raw
-- output, and the two numbers of that rate: those answers, and wrk's seconds.
local function wrk(url, script, args, want, secs)
  local cmd = string.format("wrk -t2 -c32 -d%ds --timeout 10s %s %s %s", secs or D,
    script and ("-s " .. H.shq(script)) or "", H.shq(url),
    args and ("-- " .. table.concat(args, " ")) or "")
  local out = sh_ok(cmd)
  local total = tonumber(out:match("(%d+) requests in"))
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local non = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  local sockerr = out:match("Socket errors:[^\n]*")
  if sockerr then error("wrk: " .. sockerr .. " on " .. url .. "\n" .. out, 0) end
  if not total or not rps or rps == 0 then error("wrk printed no rate:\n" .. out, 0) end
  local t = total / rps -- wrk's own seconds, to more digits than its "requests in 1.00s"
  if want ~= "any" then
    if non > total * 0.01 then error(string.format("wrk: %d of %d answers were not 2xx/3xx on %s", non, total, url), 0) end
    total = total - non
  end
  return total / t, out, total, t
end

local function ratebench(rate, secs, method, want, urls)
  local out = sh_ok(string.format("%s/ratebench -r %d -d %d -c 32 -m %s -s %d %s", BIN, rate, secs,
    method, want, table.concat(urls, " ")))
  local r = {}
  for k, v in out:gmatch("(%w+)=([%d%.]+)") do r[k] = tonumber(v) end
  if (r.errors or 1) > 0 or (r.unanswered or 0) > r.n * 0.01 then error("ratebench: " .. out, 0) end
  return r
end

local function status_kb(pid, field)
  local v = H.proc_status(pid, field)
  return tonumber(tostring(v):match("(%d+)"))
end

-- ---- where the data lives ----
-- On these machines the root filesystem is ext4 without a journal, and there ext4 checks
-- every free inode it considers for a new file against the inode's deletion time: one
-- deleted in the last 60 s -- 360 s while its inode table block is still dirty -- is
-- skipped, after a read of that block. After a bulk delete (a test run, or this suite's
-- own cleanup) every file and directory created nearby walks past all those inodes:
-- seen here, 45 % of the machine's CPU in nginx's open() and mkdir() (recently_deleted,
-- find_get_block_common), direct 1 KB PUTs down from 10 000/s to 1 500/s for minutes,
-- and a figure whose two sides met that state differently was noise. So by default
-- (--fs private, as root) the volumes live on a filesystem of the run's own: ext4 on a
-- loop device with direct I/O, made empty at the start and thrown away at the end. Its
-- image file is unlinked as soon as it is attached: when the suite dies of an error its
-- finalizer releases the device and nothing is left; when it is killed, the next run
-- releases what it left (release_stale). Without a journal, as the root filesystem, so
-- that the large transfers take the kernel paths they took before; noatime, so that a
-- GET writes nothing. The index stays on the root filesystem, in a directory of its own:
-- on the real disk rather than a second loop device, whose fsync costs two flushes (its
-- own and its image file's) and the loop's workers, which slowed a durable PUT by a
-- third for nothing LevelDB does. It creates a file per 16 MB of records: the deletions
-- above barely reach it. --fs shared (or not root) keeps the volumes under /tmp too.
local mounts = {}
local function private_fs(name, size)
  -- not H.tmpdir: H.cleanup would empty it file by file before it is unmounted
  local dir = sh_ok("mktemp -d /tmp/mkv-bench-" .. name .. "-XXXXXX"):gsub("%s+$", "")
  local img = H.root .. "/build/bench-" .. name .. ".img"
  os.remove(img)
  local dev
  local ok, err = pcall(function()
    sh_ok(string.format("truncate -s %s %s && mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0 %s",
      size, H.shq(img), H.shq(img)))
    dev = sh_ok("losetup --direct-io=on -f --show " .. H.shq(img)):match("(/dev/loop%d+)")
    if not dev then error("losetup gave no device", 0) end
    sh_ok(string.format("mount -o noatime %s %s", dev, H.shq(dir)))
  end)
  os.remove(img) -- the loop device holds it open; its space goes when it is detached
  if not ok then
    if dev then H.sh("losetup -d " .. dev) end
    H.sh("rmdir " .. H.shq(dir))
    return nil, err
  end
  mounts[#mounts + 1] = { dir = dir, dev = dev }
  return dir
end

-- After H.cleanup (nothing holds a file there any more); a lazy unmount otherwise, and
-- a busy loop device detaches itself when its last user closes it.
local function release_fs()
  for i = #mounts, 1, -1 do
    local mt = mounts[i]
    local _, code = H.sh("umount " .. H.shq(mt.dir))
    if code ~= 0 then H.sh("umount -l " .. H.shq(mt.dir)) end
    H.sh("losetup -d " .. mt.dev .. "; rmdir " .. H.shq(mt.dir))
  end
  mounts = {}
end
-- Also when the suite dies of an error: luajit closes its state on the way out, which
-- runs this finalizer (os.exit would skip it: nothing calls it after the mount).
local fs_guard = newproxy(true)
getmetatable(fs_guard).__gc = function() release_fs() end

-- What a killed run left: loop devices on an unlinked build/bench-*.img and their
-- mounts, and the processes it never stopped: its volumes' nginx (their command lines
-- name the mount), its mkv and durable relay (they name a bench index directory; this
-- run has not made its own yet).
local function release_stale()
  local out = H.sh("losetup -l -n -O NAME,BACK-FILE 2>/dev/null")
  for dev, file in out:gmatch("(/dev/loop%d+)%s+(%S+) %(deleted%)") do
    if file == H.root .. "/build/bench-volumes.img" then
      -- (each pattern's first character bracketed: the shell running pkill has the
      -- pattern in its own command line, and must not match it)
      H.sh("pkill -f -- '[m]kv-spec-bench-index-'")
      for mnt in H.sh("findmnt -n -o TARGET -S " .. dev):gmatch("[^\n]+") do
        H.sh("pkill -f -- " .. H.shq("[" .. mnt:sub(1, 1) .. "]" .. mnt:sub(2)) .. "; sleep 1")
        H.sh("umount " .. H.shq(mnt) .. " || umount -l " .. H.shq(mnt) .. "; rmdir " .. H.shq(mnt))
      end
      H.sh("losetup -d " .. dev)
      io.stderr:write("bench: released " .. dev .. " and stopped what a killed run left running\n")
    end
  end
end

local data_dir, fs_note
if opts.fs == "private" then
  local err
  release_stale()
  data_dir, err = private_fs("volumes", "64G")
  if not data_dir then fs_note = "no private filesystem (" .. tostring(err):gsub("%s+", " "):sub(1, 120) .. ")" end
else
  fs_note = "--fs shared"
end
local index_dir = H.tmpdir("bench-index")

-- ---- the cluster ----

local base = data_dir or H.tmpdir("bench")
local vols = {}
local function start_volumes()
  for i = 1, 3 do
    -- as many nginx workers as mkv has worker threads (one per core): the references
    -- get the same share of the machine
    vols[i] = H.start_volume({ root = base .. "/v" .. i, state = base .. "/v" .. i .. ".nginx",
                               port = vols[i] and vols[i].port, workers = "auto" })
  end
end
start_volumes()
local addrs = { vols[1].addr, vols[2].addr, vols[3].addr }
local db = index_dir .. "/index"
local m
local function start_mkv()
  m = H.start_mkv({ flags = { "-volumes", table.concat(addrs, ","), "-db", db, "-replicas", "3",
                              "-subvolumes", "1", "-voltimeout", "1s" }, port = m and m.port })
  return m
end
start_mkv()
local v1 = "http://" .. vols[1].addr

local function key_file(vol_index, key)
  local h = H.md5_hex(key)
  return base .. "/v" .. vol_index .. "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. A.base64(key)
end

-- ---- CPU accounting ----
-- Where a request's CPU goes, from /proc (utime + stime, clock ticks) of mkv and of every
-- nginx worker of the volumes, and from the shell's `times` for wrk. On two cores
-- that all three share, throughput is bounded by CPU per request: these figures say
-- how much of it is mkv's, and what a free mkv would still reach.
local TICK_US = 1e6 / tonumber((H.sh("getconf CLK_TCK"):match("%d+")) or 100)

-- -> utime + stime, utime (clock ticks) summed over pids
-- A process's or a thread's stat file (/proc/PID/stat, /proc/PID/task/TID/stat):
-- -> utime + stime, utime
local function stat_ticks(path)
  -- fields after the command (which may hold spaces) in parentheses
  local rest = (H.read_file(path) or ""):match("%) (.*)$") or ""
  local f = {}
  for x in rest:gmatch("%S+") do f[#f + 1] = x end
  local ut = tonumber(f[12]) or 0 -- utime, stime: fields 14, 15
  return ut + (tonumber(f[13]) or 0), ut
end

local function ticks(pids)
  local t, u = 0, 0
  for _, pid in ipairs(pids) do
    local a, b = stat_ticks("/proc/" .. pid .. "/stat")
    t, u = t + a, u + b
  end
  return t, u
end

-- The whole machine's CPU from /proc/stat: -> busy ticks, idle ticks (idle + iowait)
local function machine_ticks()
  local l = (H.read_file("/proc/stat") or ""):match("^cpu%s+([^\n]*)") or ""
  local f = {}
  for x in l:gmatch("%d+") do f[#f + 1] = tonumber(x) end
  local idle = (f[4] or 0) + (f[5] or 0)
  local all = 0
  for i = 1, math.min(#f, 8) do all = all + f[i] end -- user..steal; guest time is in user
  return all - idle, idle
end

local function nginx_workers(which)
  local pids = {}
  for _, i in ipairs(which) do
    for pid in H.sh("pgrep -P " .. vols[i].pid):gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  end
  return pids
end

local function seconds_of(t)
  local mnt, sec = t:match("(%d+)m([%d%.]+)s")
  return (tonumber(mnt) or 0) * 60 + (tonumber(sec) or 0)
end

-- The CPU seconds of the shell's children (wrk, curl), from `times` at the end of out.
local function children_seconds(out)
  -- `times` prints the shell's user and system time, then its children's
  local u, s = out:match("[%dms%.]+ [%dms%.]+\n([%dms%.]+) ([%dms%.]+)%s*$")
  if not u then error("no `times` output:\n" .. out, 0) end
  return seconds_of(u) + seconds_of(s)
end

-- Seconds mkv's index writer has spent in fsynced writes (its /metrics, on the admin
-- address it writes next to the index).
local function index_sync_seconds()
  local addr = H.admin_addr(db)
  if not addr then error("mkv wrote no admin address in " .. db, 0) end
  local st, _, body = H.http("GET", "http://" .. addr .. "/metrics")
  local v = st == 200 and tonumber((body or ""):match("\nmkv_index_sync_seconds_total (%S+)"))
  if not v then error("no mkv_index_sync_seconds_total in mkv's /metrics (" .. tostring(st) .. ")", 0) end
  return v
end

-- The CPU ticks of mkv's threads named mkv-index in the kernel: the index writer, and
-- LevelDB's compaction thread, which the writer starts (a thread inherits its creator's
-- name). Summed: which of them runs at a given moment does not change the total.
local function index_thread_ticks()
  local t = 0
  for _, th in ipairs(H.threads(m.pid)) do
    if th.comm == "mkv-index" then t = t + stat_ticks("/proc/" .. m.pid .. "/task/" .. th.tid .. "/stat") end
  end
  return t
end

-- CPU ticks of mkv (total, user, its index writer's) and of the given nginx workers, and
-- of the whole machine (busy, idle): cpu_since(cpu_now(ng), ng) is what was spent in
-- between.
local function cpu_now(ng)
  local mk, mku = ticks({ m.pid })
  local busy, idle = machine_ticks()
  return { mkv = mk, mkv_user = mku, mkv_index = index_thread_ticks(), nginx = ticks(ng), busy = busy,
           idle = idle }
end

local function cpu_since(c0, ng)
  local c1 = cpu_now(ng)
  local d = {}
  for k, v in pairs(c1) do d[k] = v - c0[k] end
  return d
end

-- Runs wrk like wrk() and accounts the CPU. which: the volumes (indexes) whose nginx
-- serve this load. -> rps, { n = requests, mkv = us/req, nginx = us/req, wrk = us/req }
local function wrk_cpu(url, script, args, which, want)
  local ng = nginx_workers(which)
  local c0 = cpu_now(ng)
  local cmd = string.format("wrk -t2 -c32 -d%ds --timeout 10s %s %s %s; times", D,
    script and ("-s " .. H.shq(script)) or "", H.shq(url),
    args and ("-- " .. table.concat(args, " ")) or "")
  local out = sh_ok(cmd)
  local c = cpu_since(c0, ng)
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local total = tonumber(out:match("(%d+) requests in"))
  if not rps or not total or total == 0 then error("wrk printed no rate:\n" .. out, 0) end
  local non = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  if want ~= "any" and non > total * 0.01 then error("wrk: " .. non .. " answers not 2xx/3xx on " .. url, 0) end
  local r = { n = total, mkv = c.mkv * TICK_US / total, mkv_user = c.mkv_user * TICK_US / total,
              mkv_index = c.mkv_index * TICK_US / total,
              nginx = c.nginx * TICK_US / total, wrk = children_seconds(out) * 1e6 / total,
              idle = c.idle * TICK_US / total }
  -- The machine's busy time that none of them was charged: kernel threads (journal
  -- commits, writeback), interrupts, other tenants' processes.
  r.other = math.max(0, c.busy * TICK_US / total - r.mkv - r.nginx - r.wrk)
  return rps, r
end

-- The order of the sides in turn t (1-based) of n sides: forwards in odd turns and
-- backwards in even ones, the start moving on every two turns, so that each side starts
-- as often as the others and follows each of them (a plain rotation keeps the same
-- predecessor: with four sides, mkv always ran right after the direct PUTs).
local function turn_order(t, n)
  local order, start = {}, math.floor((t - 1) / 2) % n
  for j = 0, n - 1 do order[#order + 1] = (start + j) % n + 1 end
  if t % 2 == 0 then
    for j = 1, math.floor(n / 2) do order[j], order[n + 1 - j] = order[n + 1 - j], order[j] end
  end
  return order
end

-- The rates of several sides measured in turns: --seconds turns of one second per side,
-- in turn_order. Back to back, D seconds each, two sides met different machines: the
-- cost of the volumes' file creation drifts over minutes and jumps for seconds (free
-- memory handed back to the host, writeback), and one figure's per-run ratio spread
-- from 0.5 to 1.6 within a run; nginx against itself, back to back, 0.97..1.52, and in
-- turns 0.97..1.04. A side: { url, script, args = function(turn) -> list, want, pid
-- (its CPU is then accounted), before/after (run around each of its turns, untimed) }.
-- -> a list of req/s, a list of CPU us per request
local function in_turns(sides)
  local n, t, cpu = {}, {}, {}
  for i = 1, #sides do n[i], t[i], cpu[i] = 0, 0, 0 end
  for turn = 1, D do
    for _, i in ipairs(turn_order(turn, #sides)) do
      local sd = sides[i]
      if sd.before then sd.before() end
      local t0 = sd.pid and ticks({ sd.pid })
      local ok, err, _, good, secs = pcall(wrk, sd.url, sd.script, sd.args and sd.args(turn), sd.want, 1)
      if sd.pid then cpu[i] = cpu[i] + (ticks({ sd.pid }) - t0) * TICK_US end
      if sd.after then sd.after() end
      if not ok then error(err, 0) end
      n[i], t[i] = n[i] + good, t[i] + secs
    end
  end
  local rates, per = {}, {}
  for i = 1, #sides do rates[i], per[i] = n[i] / t[i], cpu[i] / math.max(1, n[i]) end
  return rates, per
end

-- ---- the figures ----
-- Each: id, what, reference, target (text), and run() -> mkv value, reference value,
-- unit; "higher" or "lower" is better for mkv's value (ratio = mkv / reference).

local figures = {}
local function fig(t) figures[#figures + 1] = t end

fig { id = "get404", what = "GET of a missing key (404), req/s",
  ref = "nginx answering a 404 for a missing file", target = ">= 1.0", unit = "req/s", better = "higher",
  run = function()
    local r = in_turns({ { url = m.url .. "/bench/missing", want = "any" }, { url = v1 .. "/missing", want = "any" } })
    return r[1], r[2]
  end }

local small_keys
local function ensure_small_keys()
  if small_keys then return end
  small_keys = {}
  for i = 1, 100 do
    local k = "/bench/small/" .. i
    local st = H.http("PUT", m.url .. k, { body = string.rep("s", 1024) })
    assert(st == 201, "PUT " .. k .. ": " .. tostring(st))
    small_keys[i] = k
  end
end

fig { id = "get302", what = "GET of an existing key (302 after one HEAD), req/s",
  ref = "nginx answering a 404 for a missing file", target = ">= 0.45", unit = "req/s", better = "higher",
  run = function()
    ensure_small_keys()
    local r = in_turns({ { url = m.url .. small_keys[1] }, { url = v1 .. "/missing", want = "any" } })
    return r[1], r[2]
  end }

-- An nginx of our own (worker_processes auto, as the volumes and mkv's workers), with
-- `http_lines` in its http block and `lines` in its one server. -> base URL, process
local function start_nginx(name, http_lines, lines)
  local http = { "proxy_http_version 1.1;", 'proxy_set_header Connection "";' }
  for _, l in ipairs(http_lines) do http[#http + 1] = l end
  local server = { "client_max_body_size 0;" }
  for _, l in ipairs(lines) do server[#server + 1] = l end
  local p = H.start_nginx(name, { workers = "auto", http = http, server = server })
  return p.url, p
end

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
    local r = in_turns({ { url = m.url .. small_keys[1] }, { url = url }, { url = v1 .. "/missing", want = "any" } })
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
    local r = in_turns({ put_side(m.url, "/bench/put"), put_side(v1, "/direct-put", true) })
    return r[1], r[2] / 3
  end }

fig { id = "put1k_flat", what = "PUT of new 1 KB keys, replicas 3, req/s",
  ref = "nginx answering 1 KB PUTs directly into one directory, / 3", target = ">= 0.8",
  unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local r = in_turns({ put_side(m.url, "/bench/put"), put_side(v1, "/direct-putflat") })
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
    local r = in_turns({ put_side(m.url, "/bench/put"), put_side(url, "/mirror-put", true),
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

-- Runs the functions in fns one after another, each round starting one further down the
-- list: no side should always get the fresher machine (for the transfers that are too
-- long to take in turns of a second).
local function in_rotation(round, fns)
  for i = 0, #fns - 1 do fns[(round - 1 + i) % #fns + 1]() end
end

fig { id = "put1k_dfloor", what = "PUT 1 KB x3: mkv against the durable relay, req/s",
  ref = "relay.c -d: body read once, MD5, written to the 3 volumes, a synced LevelDB record per PUT",
  target = "report", unit = "req/s", better = "higher",
  run = function()
    put_round = put_round + 1
    local rd, r = ensure_relay(true), ensure_relay(false)
    local rate, cpu = in_turns({ put_side(m.url, "/bench/putf", false, m.pid),
      put_side(rd.url, "/drelay-put", false, rd.pid), put_side(r.url, "/relay-put", false, r.pid),
      put_side(v1, "/direct-putr", true) })
    local a, d, b, c = rate[1], rate[2], rate[3], rate[4]
    local ac, dc, bc = cpu[1], cpu[2], cpu[3]
    return a, d, string.format("CPU per PUT: mkv %.0f us, the durable relay %.0f us, the bare relay %.0f us; " ..
      "against direct PUTs / 3: mkv %.2fx, the durable relay %.2fx, the bare relay %.2fx; mkv / the bare relay %.2fx",
      ac, dc, bc, a / (c / 3), d / (c / 3), b / (c / 3), a / b)
  end }

-- CPU per request, for the two figures whose targets may be past this machine. The
-- value is the CPU of one mkv request (mkv + every nginx it reaches + wrk), the
-- reference that of what it is compared with (three direct PUTs; one nginx 404), both
-- in microseconds; ratio > 1 is CPU mkv's path spends beyond the reference. The detail
-- line gives the split and two "ceilings" (CPU ratios): a free mkv (0 us), and mkv with
-- its own code free but its system calls kept (only its kernel time left) -- the floor
-- of a process that must take the request, ask the volume and answer.
local function cpu_detail(a, b, times_ref)
  local path = a.mkv + a.nginx + a.wrk
  local ref = (b.nginx + b.wrk) * times_ref
  return path, ref, string.format("mkv %.0f us (user %.0f, kernel %.0f; its index writer and compaction %.0f), nginx %.0f us, wrk %.0f us, " ..
    "charged to no one %.0f us, idle %.0f us per request; reference nginx %.0f us, wrk %.0f us, charged to no " ..
    "one %.0f us, idle %.0f us (x%d); by CPU %.2fx, with mkv's own code free %.2fx, with a free mkv %.2fx",
    a.mkv, a.mkv_user, a.mkv - a.mkv_user, a.mkv_index, a.nginx, a.wrk, a.other, a.idle, b.nginx, b.wrk, b.other, b.idle,
    times_ref, ref / path, ref / (path - a.mkv_user), ref / (path - a.mkv))
end

fig { id = "put1k_cpu", what = "CPU per 1 KB PUT (mkv+nginx+wrk), us",
  ref = "3 direct nginx PUTs into mkv-shaped dirs, with wrk", target = "report", unit = "us", better = "lower",
  run = function()
    put_round = put_round + 1
    local _, a = wrk_cpu(m.url, scripts .. "/put.lua", { "/bench/put" .. put_round .. "/k" }, { 1, 2, 3 })
    local _, b = wrk_cpu(v1, scripts .. "/put_shaped.lua", { "/direct-put" .. put_round .. "/" }, { 1 })
    return cpu_detail(a, b, 3)
  end }

fig { id = "get302_cpu", what = "CPU per 302 (mkv+nginx HEAD+wrk), us",
  ref = "one nginx 404 with wrk", target = "report", unit = "us", better = "lower",
  run = function()
    ensure_small_keys()
    local _, a = wrk_cpu(m.url .. small_keys[1], nil, nil, { 1, 2, 3 })
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
    m:stop()
    sh_ok(string.format("%s/ldbtool fill %s %d %s %s", BIN, H.shq(db), per * 2, prefix,
      table.concat(addrs, ",")))
    start_mkv()
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
    local a = wrk(m.url, scripts .. "/delete.lua", { prefix, tostring(per) })
    local b = wrk(v1, scripts .. "/delete.lua", { "/direct-del" .. del_round .. "/", tostring(per) })
    return a, b / 3
  end }

local big
local function ensure_big()
  if big then return end
  big = base .. "/big"
  sh_ok("head -c 1G /dev/urandom > " .. H.shq(big))
end

-- Before each timed large transfer: dirty pages written back and the page cache
-- dropped (root only; otherwise just the sync), so that neither side writes into
-- memory the other has just dirtied. Writing 3 GB into the page cache costs this VM
-- 2-11 s depending on that state alone, which swamped the difference being measured.
-- Then a wait: the VM hands free memory back to its host (virtio-balloon free page
-- reporting, in 2 MB blocks, about 2 s after they are freed), and a page the host took
-- back faults again on first touch -- inside nginx's copy into the page cache. After a
-- 1 s wait the dropped cache was still being handed back during the transfer, so nginx
-- spent 6.2-12.7 CPU-s writing the same 3 GB: the longer a transfer lasted, the more
-- of its writes met pages handed back meanwhile (mkv's side, as a rule). After 6 s
-- both sides start with all free memory handed back, and nginx spends the same.
local function settle()
  H.sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true")
  H.sleep(6)
end

-- The shell command that PUTs file to every url at once, with curl -T, and waits for all.
local function uploads(file, urls)
  local cmds = {}
  for i, u in ipairs(urls) do
    cmds[i] = string.format("curl -sS --fail -o /dev/null -T %s %s", H.shq(file), H.shq(u))
  end
  return "(" .. table.concat(cmds, " & ") .. " & wait)"
end

-- n names straight on the volumes, dealt round the three: their URLs, and their files.
local function direct(n, name)
  local urls, files = {}, {}
  for i = 1, n do
    local v = (i - 1) % 3 + 1
    urls[i] = string.format("http://%s/%s-%d", addrs[v], name, i)
    files[i] = string.format("%s/v%d/%s-%d", base, v, name, i)
  end
  return urls, files
end

-- And before each round of a large-transfer figure, the same bytes sent once untimed,
-- straight to the volumes, then removed: of a round's two timed transfers the first
-- paid more for the same bytes, whichever side it was (nginx 11-17 CPU-s where the
-- second paid 6-12, in 5 rounds of 6), and with 3 runs one side went first twice.
local function warm_up(file, copies)
  settle()
  local urls, files = direct(copies, "warm")
  sh_ok(uploads(file, urls))
  for _, f in ipairs(files) do os.remove(f) end
end

-- CPU of a large transfer, every process on the path: mkv, the three volumes' nginx
-- workers, the clients (curl, from the shell's `times`), and how idle the machine was.
-- On two cores a transfer is CPU-bound when idle is near 0: the wall-time ratio then
-- follows the CPU ratio, and mkv's share says how much of the gap is its own. Also
-- printed: mkv's time in the index's fsyncs. Index and volumes share this machine's one
-- ext4 disk, and a PUT's final, synced commit waits there behind the volumes' writeback
-- of the gigabytes just written (0 to 0.7 s, with the whole machine idle meanwhile).
-- (Read outside the CPU window: the scrape is a request to mkv.)

local function timed_transfer(cmd)
  local ng = nginx_workers({ 1, 2, 3 })
  local s0 = index_sync_seconds()
  local c0 = cpu_now(ng)
  local t0 = H.now()
  local out = sh_ok(cmd .. "; times")
  local dt = H.now() - t0
  local c = cpu_since(c0, ng)
  local sync = index_sync_seconds() - s0
  local tick = TICK_US / 1e6
  return dt, { mkv = c.mkv * tick, mkv_user = c.mkv_user * tick, nginx = c.nginx * tick,
               client = children_seconds(out), idle = c.idle / math.max(1, c.busy + c.idle),
               sync = sync }
end

local function transfer_detail(a, b)
  local pa, pb = a.mkv + a.nginx + a.client, b.nginx + b.client
  return string.format("CPU-s: mkv %.2f (user %.2f), nginx %.2f, curl %.2f, idle %.0f%%, index fsync %.2f s; " ..
    "reference nginx %.2f, curl %.2f, idle %.0f%%; CPU of the path / the reference's %.2fx, without mkv's own %.2fx",
    a.mkv, a.mkv_user, a.nginx, a.client, a.idle * 100, a.sync, b.nginx, b.client, b.idle * 100, pa / pb,
    (pa - a.mkv) / pb)
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
      local hwm0 = status_kb(m.pid, "VmHWM")
      local rss0 = status_kb(m.pid, "VmRSS")
      a, ca = timed_transfer(uploads(big, { m.url .. "/bench/big" .. round }))
      put1g_mem[#put1g_mem + 1] = { hwm0 = hwm0, hwm1 = status_kb(m.pid, "VmHWM"), rss0 = rss0 }
    end, function()
      settle()
      b, cb = timed_transfer(uploads(big, direct_urls))
    end })
    -- the space back for the next runs
    local st = H.http("DELETE", m.url .. "/bench/big" .. round)
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
      a, ca = timed_transfer(uploads(big, { m.url .. key }))
    end, function()
      d, dc = timed_pid(n.pid, n.url .. nkey)
    end, function()
      settle()
      c = timed_transfer(uploads(big, direct_urls))
    end })
    for _, x in ipairs({ { m.url, key }, { n.url, nkey } }) do
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
    for i = 1, 8 do keys[i] = m.url .. "/bench/c" .. tag .. "-" .. i end
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
      m:stop()
      sh_ok(string.format("%s/ldbtool fill %s 100000 /bench/list/ %s", BIN, H.shq(db), table.concat(addrs, ",")))
      start_mkv()
      listed = true
    end
    -- one keep-alive connection, as a client paging through a listing would hold
    local conn = A.connect(m.port)
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
    m:stop()
    local out = sh_ok(string.format("%s/ldbtool scan %s /bench/list/", BIN, H.shq(db)))
    start_mkv()
    local b = tonumber(out:match("keys_per_s=(%d+)"))
    return a, b
  end }

fig { id = "p99_302", what = "p99 latency of the 302 at a fixed 1 000 req/s, ms",
  ref = "nginx HEAD p99 at the same rate", target = "<= 3", unit = "ms", better = "lower",
  run = function(round)
    ensure_small_keys()
    local urls = {}
    for i = 1, 20 do urls[i] = m.url .. small_keys[i] end
    local f = key_file(1, small_keys[1]):sub(#(base .. "/v1") + 1)
    -- What the figures before left dirty is written back first: a tail latency measured
    -- during 12 GB of writeback was the writeback's (nginx's own HEAD p99 7 ms, not 2.3).
    H.sh("sync")
    local a, b
    in_rotation(round, { function() a = ratebench(1000, math.max(D, 5), "GET", 302, urls).p99 end,
                     function() b = ratebench(1000, math.max(D, 5), "HEAD", 200, { v1 .. f }).p99 end })
    return a, b
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
    local url = m.url .. small_keys[3]
    local r = in_turns({ { url = url, before = function() vols[2]:signal(19) end, -- SIGSTOP
                           after = function() vols[2]:signal(18) end },            -- SIGCONT
                         { url = url } })
    return r[1], r[2]
  end }

-- ---- running ----

local results = {}
print(string.format("# mkv benchmark suite: %d runs per figure, wrk -t2 -c32 -d%ds; medians; ratio = mkv / reference",
  opts.runs, D))
print("# volumes: " .. (data_dir and ("on a fresh ext4 of their own (" .. data_dir .. ")") or
  ("under /tmp, on the root filesystem: " .. fs_note)) .. "; the index under /tmp (" .. index_dir .. ")")
print(string.format("%-52s %12s %12s %8s %15s  %s", "figure", "mkv", "reference", "ratio", "ratio spread", "target"))
for _, f in ipairs(figures) do
  if not opts.only or opts.only[f.id] then
    local mv, rv, ratios, details = {}, {}, {}, {}
    local ok, err = pcall(function()
      for r = 1, (f.absolute and 1 or opts.runs) do
        local a, b, detail = f.run(r)
        if detail then details[#details + 1] = detail end
        mv[#mv + 1] = a
        if b then
          rv[#rv + 1] = b
          ratios[#ratios + 1] = a / b
        end
      end
    end)
    if not ok then
      print(string.format("%-52s  FAILED: %s", f.id, tostring(err):gsub("\n", " "):sub(1, 200)))
      results[f.id] = { what = f.what, error = tostring(err) }
    else
      local lo, hi = math.huge, -math.huge
      for _, x in ipairs(ratios) do lo = math.min(lo, x); hi = math.max(hi, x) end
      local res = { what = f.what, unit = f.unit, mkv = median(mv), reference = #rv > 0 and median(rv) or nil,
                    ratio = #ratios > 0 and median(ratios) or nil, ratio_min = #ratios > 0 and lo or nil,
                    ratio_max = #ratios > 0 and hi or nil, target = f.target, runs = #mv, ref = f.ref }
      results[f.id] = res
      print(string.format("%-52s %12.1f %12s %8s %15s  %s", f.what, res.mkv,
        res.reference and string.format("%.1f", res.reference) or "-",
        res.ratio and string.format("%.2fx", res.ratio) or "-",
        res.ratio and string.format("%.2f..%.2f", lo, hi) or "-", f.target))
      -- With few noisy runs the median of the per-run ratios and the ratio of the two
      -- medians can disagree (the p99 figures): then both are shown.
      if res.ratio and res.reference and res.reference ~= 0 then
        res.ratio_of_medians = res.mkv / res.reference
        if math.abs(res.ratio_of_medians / res.ratio - 1) > 0.1 then
          print(string.format("#   ratio of the medians: %.2fx (the median of the per-run ratios: %.2fx)",
            res.ratio_of_medians, res.ratio))
        end
      end
      for i, d in ipairs(details) do print(string.format("#   run %d: %s", i, d)) end
      if #details > 0 then res.details = details end
    end
  end
end

results._fs = data_dir and "private" or "shared"
-- How the figures were taken, for --compare: 1 (or absent) = each side for --seconds,
-- back to back, volumes under /tmp; 2 = rates in turns (in_turns), large transfers
-- after a warm-up and in alternating order.
results._method = 2

local fh = io.open(opts.json, "w")
if fh then
  fh:write(encode(results))
  fh:close()
  print("# written to " .. opts.json)
end

if opts.compare then
  local old = json.decode(H.read_file(opts.compare) or "{}")
  print(string.format("\n# against %s (ratios; the machine's noise cancels in each ratio)", opts.compare))
  if (old._method or 1) ~= results._method or (old._fs or "shared") ~= results._fs then
    print(string.format("# NOTE: %s was measured another way (method %s, volumes %s; now %d, %s): a change " ..
      "may be the method's", opts.compare, tostring(old._method or 1), tostring(old._fs or "shared"),
      results._method, results._fs))
  end
  print(string.format("%-52s %10s %10s %8s", "figure", "old", "new", "change"))
  for _, f in ipairs(figures) do
    local o, n = old[f.id], results[f.id]
    if o and n and o.ratio and n.ratio then
      print(string.format("%-52s %9.2fx %9.2fx %+7.0f%%%s", f.what, o.ratio, n.ratio, (n.ratio / o.ratio - 1) * 100,
        o.ref ~= n.ref and "  (another reference)" or ""))
    elseif o and n and o.mkv and n.mkv and f.absolute then
      print(string.format("%-52s %10.1f %10.1f %+7.0f%%", f.what, o.mkv, n.mkv, (n.mkv / o.mkv - 1) * 100))
    end
  end
end

H.cleanup()
release_fs()
