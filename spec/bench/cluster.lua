-- spec/bench/cluster.lua: the cluster the benchmark figures measure, and the means of
-- measuring it: 3 nginx volumes (deploy/volume) on a filesystem of the run's own, mkv
-- (replicas 3, subvolumes 1) on an index directory of its own, on loopback; the CPU
-- that mkv, the volumes' nginx and the clients spend on a load; the large transfers.
-- One cluster per run, held by this module: C.start(opts) makes it, C.stop() ends it.
-- The figures use C.m (mkv: C.start_mkv replaces it), C.vols, C.addrs, C.v1 (volume
-- 1's URL), C.base (the volumes' parent directory), C.db (mkv's index), C.index_dir,
-- C.scripts (the wrk scripts, spec/bench/lib.lua) and the functions below.
local H = require "helpers"
local A = require "api_support"
local B = require "bench.lib"

local C = {}

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
  local dir = B.sh_ok("mktemp -d /tmp/mkv-bench-" .. name .. "-XXXXXX"):gsub("%s+$", "")
  local img = H.root .. "/build/bench-" .. name .. ".img"
  os.remove(img)
  local dev
  local ok, err = pcall(function()
    B.sh_ok(string.format("truncate -s %s %s && mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0 %s",
      size, H.shq(img), H.shq(img)))
    dev = B.sh_ok("losetup --direct-io=on -f --show " .. H.shq(img)):match("(/dev/loop%d+)")
    if not dev then error("losetup gave no device", 0) end
    B.sh_ok(string.format("mount -o noatime %s %s", dev, H.shq(dir)))
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
-- runs this finalizer (os.exit would skip it: nothing calls it after the mount). The
-- module table holds the guard: a local of this chunk alone would be collected once
-- require returns, and its finalizer would take the volumes' filesystem away mid-run.
C.fs_guard = newproxy(true)
getmetatable(C.fs_guard).__gc = function() release_fs() end

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

-- ---- the cluster ----

local D -- --seconds
local base, vols, addrs, db, m

local function start_volumes()
  for i = 1, 3 do
    -- as many nginx workers as mkv has worker threads (one per core): the references
    -- get the same share of the machine
    vols[i] = H.start_volume({ root = base .. "/v" .. i, state = base .. "/v" .. i .. ".nginx",
                               port = vols[i] and vols[i].port, workers = "auto" })
  end
end

-- Starts mkv on the cluster (again, on the same port, after a figure stopped it) -> C.m.
-- extra: more flags (-read-check none ...).
function C.start_mkv(extra)
  local flags = { "-volumes", table.concat(addrs, ","), "-db", db, "-replicas", "3",
                  "-subvolumes", "1", "-voltimeout", "1s" }
  for _, f in ipairs(extra or {}) do flags[#flags + 1] = f end
  m = H.start_mkv({ flags = flags, port = m and m.port })
  C.m = m
  return m
end

-- Runs fn with mkv restarted with extra flags, then restarts it as it was.
function C.with_flags(extra, fn)
  m:stop()
  C.start_mkv(extra)
  local ok, a, b, c = pcall(fn)
  m:stop()
  C.start_mkv()
  if not ok then error(a, 0) end
  return a, b, c
end

-- Makes the cluster for opts (--fs, --seconds): the wrk scripts, the volumes'
-- filesystem, the index directory, the volumes and mkv. -> C
function C.start(opts)
  D = opts.seconds
  C.scripts = B.wrk_scripts()
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
  base = data_dir or H.tmpdir("bench")
  vols = {}
  start_volumes()
  addrs = { vols[1].addr, vols[2].addr, vols[3].addr }
  db = index_dir .. "/index"
  C.start_mkv()
  C.data_dir, C.fs_note, C.index_dir = data_dir, fs_note, index_dir
  C.base, C.vols, C.addrs, C.db, C.v1 = base, vols, addrs, db, "http://" .. vols[1].addr
  return C
end

-- Stops every process the run started and removes its files, then its filesystem.
function C.stop()
  H.cleanup()
  release_fs()
end

-- The file of key on volume vol_index (1..3), as mkv lays it out.
function C.key_file(vol_index, key)
  local h = H.md5_hex(key)
  return base .. "/v" .. vol_index .. "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. A.base64(key)
end

-- ---- CPU accounting ----
-- Where a request's CPU goes, from /proc (utime + stime, clock ticks) of mkv and of every
-- nginx worker of the volumes, and from the shell's `times` for wrk. On two cores
-- that all three share, throughput is bounded by CPU per request: these figures say
-- how much of it is mkv's, and what a free mkv would still reach.
local function nginx_workers(which)
  local pids = {}
  for _, i in ipairs(which) do
    for pid in H.sh("pgrep -P " .. vols[i].pid):gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  end
  return pids
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
    if th.comm == "mkv-index" then t = t + B.stat_ticks("/proc/" .. m.pid .. "/task/" .. th.tid .. "/stat") end
  end
  return t
end

-- CPU ticks of mkv (total, user, its index writer's) and of the given nginx workers, and
-- of the whole machine (busy, idle): cpu_since(cpu_now(ng), ng) is what was spent in
-- between.
local function cpu_now(ng)
  local mk, mku = B.ticks({ m.pid })
  local busy, idle = B.machine_ticks()
  return { mkv = mk, mkv_user = mku, mkv_index = index_thread_ticks(), nginx = B.ticks(ng), busy = busy,
           idle = idle }
end

local function cpu_since(c0, ng)
  local c1 = cpu_now(ng)
  local d = {}
  for k, v in pairs(c1) do d[k] = v - c0[k] end
  return d
end

-- Runs wrk like B.wrk, for --seconds, and accounts the CPU. which: the volumes (indexes)
-- whose nginx serve this load.
-- -> rps, { n = requests, mkv = us/req, nginx = us/req, wrk = us/req }
function C.wrk_cpu(url, script, args, which, want)
  local ng = nginx_workers(which)
  local c0 = cpu_now(ng)
  local cmd = string.format("wrk -t2 -c32 -d%ds --timeout 10s %s %s %s; times", D,
    script and ("-s " .. H.shq(script)) or "", H.shq(url),
    args and ("-- " .. table.concat(args, " ")) or "")
  local out = B.sh_ok(cmd)
  local c = cpu_since(c0, ng)
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local total = tonumber(out:match("(%d+) requests in"))
  if not rps or not total or total == 0 then error("wrk printed no rate:\n" .. out, 0) end
  local non = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  if want ~= "any" and non > total * 0.01 then error("wrk: " .. non .. " answers not 2xx/3xx on " .. url, 0) end
  local r = { n = total, mkv = c.mkv * B.TICK_US / total, mkv_user = c.mkv_user * B.TICK_US / total,
              mkv_index = c.mkv_index * B.TICK_US / total,
              nginx = c.nginx * B.TICK_US / total, wrk = B.children_seconds(out) * 1e6 / total,
              idle = c.idle * B.TICK_US / total }
  -- The machine's busy time that none of them was charged: kernel threads (journal
  -- commits, writeback), interrupts, other tenants' processes.
  r.other = math.max(0, c.busy * B.TICK_US / total - r.mkv - r.nginx - r.wrk)
  return rps, r
end

-- CPU per request, for the two figures whose targets may be past this machine. The
-- value is the CPU of one mkv request (mkv + every nginx it reaches + wrk), the
-- reference that of what it is compared with (three direct PUTs; one nginx 404), both
-- in microseconds; ratio > 1 is CPU mkv's path spends beyond the reference. The detail
-- line gives the split and two "ceilings" (CPU ratios): a free mkv (0 us), and mkv with
-- its own code free but its system calls kept (only its kernel time left) -- the floor
-- of a process that must take the request, ask the volume and answer.
function C.cpu_detail(a, b, times_ref)
  local path = a.mkv + a.nginx + a.wrk
  local ref = (b.nginx + b.wrk) * times_ref
  return path, ref, string.format("mkv %.0f us (user %.0f, kernel %.0f; its index writer and compaction %.0f), nginx %.0f us, wrk %.0f us, " ..
    "charged to no one %.0f us, idle %.0f us per request; reference nginx %.0f us, wrk %.0f us, charged to no " ..
    "one %.0f us, idle %.0f us (x%d); by CPU %.2fx, with mkv's own code free %.2fx, with a free mkv %.2fx",
    a.mkv, a.mkv_user, a.mkv - a.mkv_user, a.mkv_index, a.nginx, a.wrk, a.other, a.idle, b.nginx, b.wrk, b.other, b.idle,
    times_ref, ref / path, ref / (path - a.mkv_user), ref / (path - a.mkv))
end

-- ---- large transfers ----

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
function C.settle()
  H.sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true")
  H.sleep(6)
end

-- The shell command that PUTs file to every url at once, with curl -T, and waits for all.
function C.uploads(file, urls)
  local cmds = {}
  for i, u in ipairs(urls) do
    cmds[i] = string.format("curl -sS --fail -o /dev/null -T %s %s", H.shq(file), H.shq(u))
  end
  return "(" .. table.concat(cmds, " & ") .. " & wait)"
end

-- n names straight on the volumes, dealt round the three: their URLs, and their files.
function C.direct(n, name)
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
function C.warm_up(file, copies)
  C.settle()
  local urls, files = C.direct(copies, "warm")
  B.sh_ok(C.uploads(file, urls))
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
function C.timed_transfer(cmd)
  local ng = nginx_workers({ 1, 2, 3 })
  local s0 = index_sync_seconds()
  local c0 = cpu_now(ng)
  local t0 = H.now()
  local out = B.sh_ok(cmd .. "; times")
  local dt = H.now() - t0
  local c = cpu_since(c0, ng)
  local sync = index_sync_seconds() - s0
  local tick = B.TICK_US / 1e6
  return dt, { mkv = c.mkv * tick, mkv_user = c.mkv_user * tick, nginx = c.nginx * tick,
               client = B.children_seconds(out), idle = c.idle / math.max(1, c.busy + c.idle),
               sync = sync }
end

function C.transfer_detail(a, b)
  local pa, pb = a.mkv + a.nginx + a.client, b.nginx + b.client
  return string.format("CPU-s: mkv %.2f (user %.2f), nginx %.2f, curl %.2f, idle %.0f%%, index fsync %.2f s; " ..
    "reference nginx %.2f, curl %.2f, idle %.0f%%; CPU of the path / the reference's %.2fx, without mkv's own %.2fx",
    a.mkv, a.mkv_user, a.nginx, a.client, a.idle * 100, a.sync, b.nginx, b.client, b.idle * 100, pa / pb,
    (pa - a.mkv) / pb)
end

return C
