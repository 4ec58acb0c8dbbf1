-- The index's disk (testing-reliability.md §2.2 C5, L2): full (a 2 MB tmpfs, filled on
-- cue) and corrupted (bytes flipped in a .log / .ldb / MANIFEST, CURRENT deleted). Each
-- ends with a restart (after freeing space, or after `mkv rebuild` from the volumes)
-- and the ledger verifier. Two mkv on one index: the second exits naming the lock while
-- the first goes on writing, then the verifier.
local H = require "helpers"
local A = require "api_support"
local F = require "fault_helpers"

-- The status only (callers pass it straight to assert.equal).
local function send(port, method, key, body) return (F.send(port, method, key, body)) end

describe("the index locked by another process", function()
  local c
  teardown(function()
    if c and c.mkv and c.mkv:alive() then c:kill9() end
    H.cleanup()
  end)

  it("a second mkv on the same index exits non-zero saying it is in use; the first loses nothing", function()
    local seed = F.seed("second mkv")
    local rng = F.rng(seed)
    c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start()
    F.workload(c, ledger, rng, { conns = 4, keys_per_conn = 4, rounds = 6, max_size = 8192, prefix = "/lock" })
    local args = c:args()
    for _, w in ipairs({ "-port", tostring(H.free_port()), "-listen", "127.0.0.1", "server" }) do
      args[#args + 1] = w
    end
    local code, out = H.run_mkv(args, 20)
    assert.are_not.equal(0, code, out)
    assert.truthy(out:lower():find("in use", 1, true), out)
    assert.truthy(out:find(c.db, 1, true), "the message names the index: " .. out)
    -- the first server never noticed: it goes on writing
    F.workload(c, ledger, rng, { conns = 4, keys_per_conn = 4, rounds = 6, max_size = 8192, prefix = "/lock" })
    assert.is_true(c.mkv:alive())
    F.restart_and_verify(c, ledger, seed)
    assert.equal(0, c:stop().code)
  end)
end)

describe("the index disk full", function()
  local mnt, c
  teardown(function()
    if c and c.mkv and c.mkv:alive() then c:kill9() end
    if mnt then H.sh("umount -l " .. H.shq(mnt)) end
    H.cleanup()
  end)

  local is_root = H.T.getuid() == 0
  local test = is_root and it or pending
  test("writes fail cleanly with 5xx, reads go on, nothing half-live; after freeing space every ok key is there", function()
    local seed = F.seed("index disk full")
    local rng = F.rng(seed)
    mnt = H.tmpdir("full") .. "/mnt"
    local out, code = H.sh("mkdir -p " .. mnt .. " && mount -t tmpfs -o size=2m tmpfs " .. mnt)
    assert.equal(0, code, out)
    c = F.cluster({ n = 3, replicas = 2, db = mnt .. "/index" })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start()
    F.workload(c, ledger, rng, { conns = 4, keys_per_conn = 6, rounds = 4, max_size = 8192, prefix = "/full" })
    local ok_before = ledger:counts().ok
    assert.is_true(ok_before > 0)
    H.sh("dd if=/dev/zero of=" .. mnt .. "/filler bs=64k >/dev/null 2>&1; true")
    -- keys long enough that the log needs a new block soon
    local r = F.workload(c, ledger, rng, { conns = 4, keys_per_conn = 40, rounds = 400, max_size = 4096,
      stop_on_5xx = true, prefix = "/full/" .. string.rep("k", 100) })
    assert.truthy(r.failed_round, "the index never failed")
    -- from now on every write answers 503, never 2xx
    for i = 1, 3 do
      for _, m in ipairs({ "PUT", "DELETE", "UNLINK" }) do
        local key = ledger.keys[i]
        local body = m == "PUT" and ("late " .. i) or nil
        local st = send(c.port, m, key, body)
        ledger:record(m, key, body and H.md5_hex(body), st)
        assert.equal(503, st, m .. " after the index failed")
      end
    end
    local hst, hbody = c:health()
    assert.equal(503, hst, hbody)
    -- an admin script's index writes fail at once as well: nil, msg, EINDEX (no yield)
    local script = H.tmpdir("script") .. "/iw.lua"
    H.write_file(script, [=[
local mkv = require "mkv"
local function show(name, ...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  mkv.report(name .. ": " .. table.concat(t, " | "))
end
show("put", mkv.index_put("/full/by-admin", "x", true))
show("del", mkv.index_del("/full/by-admin", true))
]=])
    local acode, aout = c:run({ "run", script })
    assert.equal(0, acode, aout)
    assert.truthy(aout:find("put: nil | [^\n]* | EINDEX\n"), aout)
    assert.truthy(aout:find("del: nil | [^\n]* | EINDEX\n"), aout)
    -- reads go on, as the ledger allows; nothing half-live (V2 on the running server)
    F.assert_verified(c, ledger, seed, { skip_v4 = true })
    assert.equal(0, c:stop().code)
    -- space again, restart: every acknowledged key is there
    os.remove(mnt .. "/filler")
    c:start()
    F.assert_verified(c, ledger, seed)
    local counts = ledger:counts()
    io.stderr:write(string.format("# index disk full: ops ok %d / fail %d / unknown %d\n", counts.ok,
      counts.fail, counts.unknown))
    -- and it takes writes again
    assert.equal(201, send(c.port, "PUT", "/full/after-restart", "x"))
    c:stop()
  end)
end)

-- Damage applied to a stopped index: returns nothing; `stop` says how mkv was stopped
-- before (kill: the records sit in the .log; term: flushed into a .ldb).
local function flip(file, offset)
  local out, code = H.sh(string.format("printf 'XXXXXXXX' | dd of=%s bs=1 seek=%d conv=notrunc 2>&1",
    H.shq(file), offset))
  assert.equal(0, code, out)
end

local function one(c, glob)
  local f = H.sh("ls " .. H.shq(c.db) .. "/" .. glob .. " 2>/dev/null | head -1"):gsub("%s+$", "")
  assert.truthy(f ~= "", "no " .. glob .. " in " .. c.db .. ": " .. H.sh("ls -l " .. c.db))
  return f, tonumber((H.sh("stat -c %s " .. H.shq(f)):gsub("%s", "")))
end

-- The offsets of the records of a LevelDB log file (the .log, the MANIFEST): 32 KiB
-- blocks of records, each a header -- crc (4) length (2, LE) type (1) -- and a payload.
local function log_records(file)
  local m = H.read_file(file)
  local pos, out = 0, {}
  while pos + 7 <= #m do
    local left = 32768 - pos % 32768
    if left < 7 then
      pos = pos + left
    else
      local len = m:byte(pos + 5) + 256 * m:byte(pos + 6)
      if len == 0 and m:byte(pos + 7) == 0 then break end -- zero padding
      out[#out + 1] = pos
      pos = pos + 7 + len
    end
  end
  return out
end

local DAMAGE = {
  -- X's inside the payload of a record in the middle of the log: its checksum fails
  { "bytes flipped mid-log", "kill", function(c)
      local f = one(c, "*.log")
      local recs = log_records(f)
      assert.is_true(#recs >= 3, "too few records in the log")
      flip(f, recs[math.floor(#recs / 2)] + 7 + 4)
    end },
  { "bytes flipped in the MANIFEST's first record", "term", function(c)
      local f = one(c, "MANIFEST-*")
      flip(f, 12)
    end },
  { "CURRENT deleted", "term", function(c)
      assert(os.remove(c.db .. "/CURRENT"))
    end },
}

describe("a corrupted index", function()
  local c
  after_each(function()
    if c and c.mkv and c.mkv:alive() then c:kill9() end
  end)
  teardown(H.cleanup)

  local function loaded(seed, prefix)
    c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start()
    F.workload(c, ledger, F.rng(seed), { conns = 4, keys_per_conn = 6, rounds = 10, max_size = 8192,
      no_unlink = true, prefix = prefix })
    assert.is_true(ledger:counts().ok > 5)
    return ledger
  end

  -- Moves the index aside, rebuilds it from the volumes, restarts, verifies.
  local function rebuild_and_verify(ledger, seed)
    local mv_out, mv_code = H.sh("mv " .. H.shq(c.db) .. " " .. H.shq(c.db .. ".damaged"))
    assert.equal(0, mv_code, mv_out)
    local code, out = c:run({ "rebuild", "--md5" }, 60)
    assert.equal(0, code, out)
    c:start()
    F.assert_verified(c, ledger, seed)
    c:stop()
  end

  for _, d in ipairs(DAMAGE) do
    local what, stop, damage = d[1], d[2], d[3]
    it(what .. ": mkv refuses to start, pointing to mkv rebuild; rebuild restores every live key", function()
      local seed = F.seed(what)
      local ledger = loaded(seed, "/corrupt")
      if stop == "kill" then c:kill9() else assert.equal(0, c:stop().code) end
      damage(c)
      local p = c:start({ may_die = true })
      assert.is_nil(p, "mkv started on a damaged index")
      local st = c.mkv.status
      assert.is_true(st.code ~= nil and st.code ~= 0, "exit status")
      local log = c.mkv:log()
      assert.truthy(log:find("corrupt", 1, true) and log:find("mkv rebuild", 1, true), log)
      assert.is_false(H.port_open(c.port))
      rebuild_and_verify(ledger, seed)
    end)
  end

  it("bytes flipped in a table (.ldb): reads of its keys fail (500), never a wrong answer; verify says so; rebuild restores", function()
    -- LevelDB opens tables lazily, so the damage shows at the first read of the block,
    -- not at startup (checking every table at open would read the whole index).
    local seed = F.seed("corrupt table")
    local ledger = loaded(seed, "/ctable")
    assert.equal(0, c:stop().code)
    local f, size = one(c, "*.ldb")
    flip(f, math.floor(size / 3))
    c:start()
    local rd = F.reader(c.port)
    local failed, wrong = 0, {}
    for _, key in ipairs(ledger.keys) do
      local got, err = rd:read(key)
      if not got then
        assert.truthy(err:find("answered 500", 1, true), err)
        failed = failed + 1
      elseif not ledger.states[key][got] then
        wrong[#wrong + 1] = key .. " reads as " .. got
      end
    end
    rd:close()
    assert.same({}, wrong)
    assert.is_true(failed > 0, "no read saw the damage")
    local code, out = c:run({ "verify", "--deep" })
    assert.equal(1, code, out)
    assert.truthy(out:find("Corruption", 1, true), out)
    c:stop()
    rebuild_and_verify(ledger, seed)
  end)

  -- Known bugs (LevelDB 1.23's log reader, not mkv's code): in the LAST 32 KiB block of
  -- a log, a record header whose length field is damaged looks like a torn write, and
  -- LevelDB stops reading there without reporting a corruption, paranoid_checks or not.
  -- In the MANIFEST it drops the version edit that lists the tables: the index opens
  -- EMPTY and the tables are deleted as obsolete. In the .log it drops that record and
  -- every synced record after it. Either way mkv serves 404 for acknowledged keys until
  -- a rebuild. Run with MKV_FAULT_KNOWN_BUGS=1.
  local known = os.getenv("MKV_FAULT_KNOWN_BUGS") and it or pending
  local function must_not_start(c, ledger)
    local p = c:start({ may_die = true })
    if p then
      local problems = F.verify(c, ledger, { skip_v4 = true })
      c:stop()
      error("mkv started on the damaged index: " .. #problems .. " problem(s):\n" ..
        table.concat(problems, "\n"):sub(1, 2000))
    end
  end

  known("the MANIFEST's last record header damaged: mkv must not open a silently emptied index", function()
    local seed = F.seed("manifest tail")
    local ledger = loaded(seed, "/cmanifest")
    assert.equal(0, c:stop().code)
    local f = one(c, "MANIFEST-*")
    local recs = log_records(f)
    assert.is_true(#recs >= 2, "one record only")
    flip(f, recs[#recs])
    must_not_start(c, ledger)
  end)

  known("a .log record header damaged mid-log: mkv must not open an index without the records after it", function()
    local seed = F.seed("log header")
    local ledger = loaded(seed, "/cloghdr")
    c:kill9()
    local f = one(c, "*.log")
    local recs = log_records(f)
    assert.is_true(#recs >= 3, "too few records in the log")
    flip(f, recs[math.floor(#recs / 2)])
    must_not_start(c, ledger)
  end)
end)
