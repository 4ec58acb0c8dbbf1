-- Volume faults (testing-reliability §2.2 C6-C11), with the whole cluster -- mkv, three
-- nginx volumes, curl -- inside a private network namespace and mount namespace
-- (spec/netns.lua): one volume refuses (nft reject with tcp reset), is blackholed (nft
-- drop), answers 500 (its root read-only), is full (an 8 MB tmpfs), is slow (tbf on its
-- port only) or resets mid-body during a 1 GB PUT (nft ct original bytes).
--
-- These run with write_quorum = "all" (the Go original's rule): every copy is needed, so
-- each fault fails the PUT, and what is checked is that a failed write leaves nothing.
-- The default, a majority, writes on through the same faults: volume_availability_spec.
--
-- For each: the PUT's answer and how long it took; the key is not live (GET 404, not in
-- ?list) and the healthy volumes keep no file of it; GETs of other keys keep working
-- while the fault lasts; mkv's peak memory stays flat; fds go back to the baseline; once
-- the fault is gone the same key can be written. Every fault vanishes with the
-- namespace, and each test also removes its own in a finally. Every write goes into a
-- ledger, and each test ends with mkv restarted on the same directories and the shared
-- verifier (spec/fault_helpers.lua: bytes of every key, `mkv verify --deep`, fds, RSS).
--
-- MKV_FAULT_SOAK=1: the mid-body reset comes after 900 MB instead of 256 MB, and the
-- slow volume carries a 256 MB body.
local H = require "helpers"
local A = require "api_support"
local NS = require "netns"
local F = require "fault_helpers"
local O = require "ops_helpers"
local T = H.T
local SIGSTOP, SIGCONT = 19, 18

local soak = os.getenv("MKV_FAULT_SOAK") == "1"
local VOLUME_TIMEOUT = 2 -- s, limits.volume_timeout
local MAX_GROWTH_KB = 16 * 1024

local function show(s)
  s = tostring(s or "")
  if #s > 300 then s = s:sub(1, 300) .. "..." end
  return s
end

describe("volume faults in a private network namespace (n=3, replicas=3)", function()
  local c, url, vols, baseline_fds, dir, fullfs, ledger
  local readkeys = {}

  local function hwm() return H.proc_status(c.pid, "VmHWM") end

  -- Warm the pools, let the connections settle, take the fd baseline (again after
  -- every restart): fds other than the connections to volumes and LevelDB's files.
  local function take_baseline()
    for _ = 1, 8 do assert.equal(302, (H.http("GET", url .. readkeys[1]))) end
    H.sleep(0.3)
    baseline_fds = H.fd_census(c.pid, vols, c.db)
  end

  -- How each test ends.
  local function verified(name)
    F.restart_and_verify(c, ledger, "volume-faults/" .. name)
    take_baseline()
  end

  setup(function()
    NS.enter()
    dir = H.tmpdir("fault")
    fullfs = dir .. "/full"
    -- ASan's quarantine would read as growth (see memory_spec.lua).
    local asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")
    c = F.cluster({
      n = 3, replicas = 3, voltimeout = VOLUME_TIMEOUT .. "s", flags = { "-write-quorum", "all" },
      config = string.format('return { limits = { volume_timeout = "%ds", suspect_time = "1s" } }',
        VOLUME_TIMEOUT),
      env = asan and { ASAN_OPTIONS = asan .. ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0" },
    })
    vols = c.volumes -- the disk-full test replaces one in place: the cluster sees it too
    c:start()
    url = c.url
    ledger = F.ledger(c.logdir .. "/ledger")
    for i = 1, 6 do
      local k = "/read/" .. i
      readkeys[#readkeys + 1] = k
      assert.equal(201, (ledger:send(c, "PUT", k, "value " .. i)))
    end
    take_baseline()
  end)

  teardown(function()
    NS.clear_nft()
    NS.clear_tc()
    H.cleanup()
    if fullfs then NS.umount(fullfs) end
  end)

  -- Starts `curl -T src` as a PUT in the background; returns a function that says
  -- whether it finished, and its status (a number, or nil and curl's error output).
  local function start_put(key, src, extra)
    local st = H.tmpdir("put") .. "/status"
    H.sh(string.format("(curl -sS -o /dev/null -w '%%{http_code}' --max-time %d %s -T %s %s > %s 2> %s.err;" ..
      " echo > %s.done) >/dev/null 2>&1 &", math.floor(120 * H.slow), extra or "", H.shq(src),
      H.shq(url .. key), H.shq(st), H.shq(st), H.shq(st)))
    return function()
      if not A.exists(st .. ".done") then return false end
      return true, tonumber((H.read_file(st) or ""):match("(%d%d%d)")), H.read_file(st .. ".err")
    end
  end

  -- GETs (following the redirect) of the keys written before the fault, until done()
  -- says the PUT finished. Returns how many were read and the slowest.
  local function read_while(done, max_read_s)
    local n, worst, i = 0, 0, 0
    local deadline = H.now() + 200 * H.slow
    while not done() do
      assert(H.now() < deadline, "the PUT did not finish")
      i = i % #readkeys + 1
      local t0 = H.now()
      local st, _, body = H.http("GET", url .. readkeys[i], { follow = true, timeout = 10 })
      local took = H.now() - t0
      assert.equal(200, st, "GET " .. readkeys[i] .. " during the fault")
      assert.equal("value " .. i, body)
      assert(took <= max_read_s * H.slow, string.format("GET %s took %.2fs during the fault",
        readkeys[i], took))
      n, worst = n + 1, math.max(worst, took)
    end
    return n, worst
  end

  local function assert_not_live(key)
    assert.equal(404, (H.http("GET", url .. key)), "GET " .. key .. " after the failed PUT")
    local st, _, keys = A.list(url, key, "list")
    assert.equal(200, st)
    assert.is_false(A.contains(keys, key), key .. " is listed")
  end

  local function eventually_no_files(key, volumes)
    H.eventually(function()
      local files = A.find_files(volumes, key)
      return #files == 0, "files left: " .. table.concat(files, " ")
    end, 10, "no file of " .. key .. " on the healthy volumes")
  end

  -- mkv's fds back at the baseline once the fault is gone: no connection to a volume is
  -- still busy, every socket to a volume is one /metrics accounts for (the pools keep
  -- some idle, how many depends on which worker served what), and no other fd is left.
  local function fds_back()
    H.eventually(function()
      local m, why = c:metrics()
      if not m then return false, why end
      local busy = O.sum(m, "mkv_volume_connections", { state = "busy" })
      local open = O.sum(m, "mkv_volume_connections")
      local others, sockets = H.fd_census(c.pid, vols, c.db)
      return busy == 0 and sockets == open and others <= baseline_fds, string.format(
        "%d busy and %d idle connections to volumes by /metrics, %d sockets to them, " ..
        "%d other fds (baseline %d)", busy, open - busy, sockets, others, baseline_fds)
    end, 10, "mkv's fds back at their baseline")
  end

  -- The same key written once the fault is gone (its lock was let go; the volume's
  -- suspect mark fades), read back, and deleted again (the tmpfs is small).
  local function rewrite_after(key)
    H.eventually(function()
      local st = ledger:send(c, "PUT", key, "after the fault")
      return st == 201, "PUT answered " .. tostring(st)
    end, 10, "a PUT of " .. key .. " after the fault")
    assert.same({ 1, 2, 3 }, A.holders(vols, key))
    local st, _, body = H.http("GET", url .. key, { follow = true })
    assert.equal(200, st)
    assert.equal("after the fault", body)
    assert.equal(204, (ledger:send(c, "DELETE", key)))
  end

  -- One fault: inject(), a PUT of `size` bytes (a sparse file) of `key` with reads
  -- going on meanwhile, heal() in any case. Returns status, seconds, VmHWM growth (kB),
  -- reads done.
  local function with_fault(key, size_mb, inject, heal, max_read_s)
    local src = dir .. "/src-" .. size_mb
    if not A.exists(src) then H.sh("truncate -s " .. size_mb .. "M " .. H.shq(src)) end
    local md5 = H.sh("md5sum " .. H.shq(src)):match("^(%x+)")
    local before = hwm()
    inject()
    local ok, res = pcall(function()
      local t0 = H.now()
      local done = start_put(key, src)
      local reads, worst = read_while(done, max_read_s or 1.5)
      local _, st, err = done()
      ledger:record("PUT", key, md5, st)
      local took = H.now() - t0
      local growth = hwm() - before
      print(string.format("\n# %s: %d MB PUT -> %s in %.2fs; %d GETs meanwhile, slowest %.2fs; VmHWM +%d kB",
        key, size_mb, tostring(st), took, reads, worst, growth))
      return { st = st, err = err, took = took, growth = growth, reads = reads }
    end)
    heal()
    if not ok then error(res, 0) end
    return res
  end

  it("refused (nft: reject with tcp reset): 503 at once, not live, others cleaned, reads go on", function()
    local key, bad = "/fault/refused", vols[2]
    local r = with_fault(key, 1,
      function() NS.nft("add rule inet mkv out tcp dport " .. bad.port .. " reject with tcp reset") end,
      NS.clear_nft)
    assert.equal(503, r.st, show(r.err))
    assert(r.took < 1.5 * H.slow, string.format("503 after %.2fs", r.took))
    assert_not_live(key)
    eventually_no_files(key, vols)
    fds_back()
    rewrite_after(key)
    verified("refused")
  end)

  it("blackholed (nft: drop): 503 within volume_timeout, not live, others cleaned, reads go on", function()
    local key, bad = "/fault/blackhole", vols[1]
    local r = with_fault(key, 1,
      function() NS.nft("add rule inet mkv out tcp dport " .. bad.port .. " drop") end,
      NS.clear_nft, 1 + 1.5) -- a GET may wait voltimeout (1s) for the dead volume's HEAD
    assert.equal(503, r.st, show(r.err))
    assert(r.took >= VOLUME_TIMEOUT - 0.5, string.format("503 after %.2fs, before the volume timeout", r.took))
    assert(r.took <= (VOLUME_TIMEOUT + 1.5) * H.slow, string.format("503 after %.2fs", r.took))
    assert_not_live(key)
    eventually_no_files(key, { vols[2], vols[3] })
    fds_back()
    rewrite_after(key)
    verified("blackhole")
  end)

  it("hung (SIGSTOP of its nginx): 503 within volume_timeout, not live, others cleaned, reads go on", function()
    local key, bad = "/fault/hung", vols[3]
    local stopped = false
    local r = with_fault(key, 1,
      function() stopped = assert(T.kill(-bad.pid, SIGSTOP)) end, -- master and worker
      function() if stopped then T.kill(-bad.pid, SIGCONT) end end,
      1 + 1.5)
    assert.equal(503, r.st, show(r.err))
    assert(r.took >= VOLUME_TIMEOUT - 0.5, string.format("503 after %.2fs, before the volume timeout", r.took))
    assert(r.took <= (VOLUME_TIMEOUT + 1.5) * H.slow, string.format("503 after %.2fs", r.took))
    assert_not_live(key)
    -- Once woken, the hung nginx may still finish the PUT it had queued: an orphan file
    -- there is allowed (the verifier's V2 checks live records only), a live key is not.
    eventually_no_files(key, { vols[1], vols[2] })
    fds_back()
    rewrite_after(key)
    verified("hung")
  end)

  it("answering 500 (a read-only root): 5xx, not live, others cleaned, reads go on", function()
    local key, bad = "/fault/readonly", vols[2]
    local r = with_fault(key, 1,
      function() NS.readonly(bad.root) end,
      function() NS.umount(bad.root) end)
    assert.equal(500, r.st, show(r.err))
    assert_not_live(key)
    eventually_no_files(key, vols)
    fds_back()
    rewrite_after(key)
    verified("readonly")
  end)

  it("slow (tbf on its port): the PUT completes, slowed, with flat memory; reads go on", function()
    local key, bad = "/fault/slow", vols[1]
    local mb = soak and 256 or 48
    local rate_mb = 24 -- MB/s: tbf rate 192mbit
    local r = with_fault(key, mb,
      function() NS.slow_port(bad.port, (rate_mb * 8) .. "mbit") end,
      NS.clear_tc, 1.5)
    assert.equal(201, r.st, show(r.err))
    assert(r.took >= 0.7 * mb / rate_mb, string.format("took %.2fs: not slowed", r.took))
    assert(r.growth <= MAX_GROWTH_KB, "VmHWM grew by " .. r.growth .. " kB")
    assert.same({ 1, 2, 3 }, A.holders(vols, key))
    assert.equal(204, (ledger:send(c, "DELETE", key)))
    fds_back()
    verified("slow")
  end)

  it("reset mid-body during a 1 GB PUT (nft: ct original bytes): 503, flat memory, not live", function()
    local key, bad = "/fault/reset1g", vols[2]
    local after = (soak and 900 or 256) * 1024 * 1024
    local r = with_fault(key, 1024,
      function()
        NS.nft("add rule inet mkv out tcp dport " .. bad.port .. " ct original bytes gt " .. after ..
          " reject with tcp reset")
      end,
      NS.clear_nft, 2.0) -- 1 GB through mkv and nginx on two cores: reads slow down
    assert.equal(503, r.st, show(r.err))
    assert(r.growth <= MAX_GROWTH_KB, "VmHWM grew by " .. r.growth .. " kB")
    assert_not_live(key)
    eventually_no_files(key, { vols[1], vols[3] })
    fds_back()
    verified("reset1g")
  end)

  it("disk full (an 8 MB tmpfs, a 24 MB PUT): 5xx, not live, others cleaned, space back", function()
    -- Volume 3 is restarted on the same port with its root (and its nginx state and
    -- upload temp files) on an 8 MB tmpfs; the keys it held are then missing there, and
    -- GETs go to the other replicas.
    local key, old = "/fault/full", vols[3]
    old:stop()
    NS.tmpfs(fullfs, "8m")
    local ok, err = pcall(function()
      vols[3] = H.start_volume({ port = old.port, root = fullfs .. "/data", state = fullfs .. "/data.nginx" })
      local r = with_fault(key, 24, function() end, function() end)
      assert.equal(500, r.st, show(r.err))
      assert_not_live(key)
      eventually_no_files(key, vols)
      -- nginx removed its partial temp file: the tmpfs is (nearly) empty again.
      H.eventually(function()
        local used = tonumber(H.sh("df -Pk " .. H.shq(fullfs) .. " | tail -1"):match("^%S+%s+%d+%s+(%d+)"))
        return used and used < 512, "tmpfs used kB: " .. tostring(used)
      end, 10, "the full volume's space back")
      assert(r.growth <= MAX_GROWTH_KB, "VmHWM grew by " .. r.growth .. " kB")
      fds_back()
      H.eventually(function()
        local st = ledger:send(c, "PUT", key, "after the fault")
        return st == 201, "PUT answered " .. tostring(st)
      end, 10, "a small PUT of " .. key .. " on the emptied volume")
      assert.equal(204, (ledger:send(c, "DELETE", key)))
    end)
    if vols[3] ~= old then vols[3]:stop() end
    NS.umount(fullfs)
    vols[3] = H.restart_volume(old)
    if not ok then error(err, 0) end
    verified("full")
  end)

  it("after every fault mkv is alive, serves, and its fds are at the baseline", function()
    assert.is_true(c.mkv:alive(), "mkv died:\n" .. c.mkv:log())
    for i, k in ipairs(readkeys) do
      local st, _, body = H.http("GET", url .. k, { follow = true })
      assert.equal(200, st)
      assert.equal("value " .. i, body)
    end
    fds_back()
    verified("all")
  end)
end)
