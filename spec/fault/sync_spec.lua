-- The index's fdatasync (testing-reliability.md §2.2 C3, C4), injected with
-- `strace -e inject=`: mkv killed at the N-th sync for every N until a fixed script runs
-- through (SQLite's "fail the N-th operation" loop); a sync that fails with EIO (LevelDB
-- makes the error sticky: no 201 after it, writes 503 until restart, /health says so,
-- reads go on, every acknowledged key survives the restart); slow syncs (no errors).
local H = require "helpers"
local A = require "api_support"
local F = require "fault_helpers"

-- Under strace, LeakSanitizer cannot stop the world at exit (it ptraces the threads, and
-- they already have a tracer): it aborts. The sanitized mkv runs with its leak check off
-- here; the other specs check leaks.
local function strace_env()
  local asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")
  if not asan then return nil end
  return { ASAN_OPTIONS = asan:gsub("detect_leaks=1", "detect_leaks=0") }
end

local function strace(inject)
  return { "strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e",
           "inject=fdatasync:" .. inject }
end

local send = F.send

-- PUT a, PUT b, DELETE a, UNLINK b, PUT a, PUT c: every kind of synced write
local SCRIPT = { { "PUT", "a" }, { "PUT", "b" }, { "DELETE", "a" }, { "UNLINK", "b" },
                 { "PUT", "a" }, { "PUT", "c" } }

-- A traced mkv left by a failed test: killed, so that teardown's SIGTERM does not go to
-- strace alone.
local c
local function kill_left()
  if c and c.mkv and c.mkv:alive() then c:kill9() end
end

-- strace counts `when=N` per thread: the main thread's syncs while the index opens
-- (6 for an empty index) come first, and the index-writer thread's N-th sync is reached
-- only for N above that. So the script starts with WARM synced PUTs: N = 1..6 crash the
-- open, N = 7.. the writer at each of the script's syncs.
local WARM = 6

describe("a crash at the N-th fdatasync of the index", function()
  after_each(kill_left)
  teardown(H.cleanup)

  it("for every N until the script completes: nothing lost", function()
    c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    local crashes, at_start, completed = 0, 0, false
    for n = 1, 60 do
      c.db = H.tmpdir("sdb") .. "/index" -- each N from an empty index: its syncs are the script's
      ledger = F.ledger(c.logdir .. "/ledger-" .. n)
      local p = c:start({ wrap = strace("signal=SIGKILL:when=" .. n), may_die = true, env = strace_env() })
      if p then
        local ops = {}
        for w = 1, WARM do ops[#ops + 1] = { "PUT", "w" .. w } end
        for _, o in ipairs(SCRIPT) do ops[#ops + 1] = o end
        for i, o in ipairs(ops) do
          local key = string.format("/sync/%d/%s", n, o[2])
          local body, md5
          if o[1] == "PUT" then
            body = A.bytes(3000 + i, n * 10 + i)
            md5 = H.md5_hex(body)
          end
          local st = send(c.port, o[1], key, body)
          ledger:record(o[1], key, md5, st)
          if not st then break end
        end
      else
        at_start = at_start + 1
      end
      -- a clean stop syncs too (the memtable flush): a crash there is one more case
      local st = c.mkv.status or c:stop()
      if st.code == 0 then
        completed = true
        break
      end
      assert.equal(9, st.signal, "mkv under strace ended with " .. tostring(st.code or st.signal))
      crashes = crashes + 1
      c:start()
      F.assert_verified(c, ledger, "sync " .. n, { skip_v4 = true })
      c:stop()
    end
    io.stderr:write(string.format("# sync crash: %d crashes (%d during startup)\n", crashes, at_start))
    assert.is_true(completed, "the script never ran through")
    assert.is_true(crashes >= WARM + #SCRIPT, "too few sync points: " .. crashes)
  end)
end)

describe("a failed fdatasync of the index (EIO)", function()
  after_each(kill_left)
  teardown(H.cleanup)

  it("no 201 after it, writes 503 until restart, /health says so, reads go on, acks survive", function()
    c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    -- an empty index syncs 6 times while it opens; the 9th sync is the third PUT's
    c:start({ wrap = strace("error=EIO:when=9"), env = strace_env() })
    local acked, failed_at = {}, nil
    for i = 1, 20 do
      local key = "/eio/k" .. i
      local body = A.bytes(5000 + i, i)
      local st = send(c.port, "PUT", key, body)
      ledger:record("PUT", key, H.md5_hex(body), st)
      if st == 201 then
        acked[#acked + 1] = key
      else
        assert.equal(503, st)
        failed_at = i
        break
      end
    end
    assert.truthy(failed_at, "no PUT failed")
    assert.is_true(#acked >= 1, "no PUT succeeded before the failed sync")
    -- sticky: the syncs work again, the index does not
    for i = 1, 3 do
      local key = "/eio/after" .. i
      local body = "after " .. i
      local st = send(c.port, "PUT", key, body)
      ledger:record("PUT", key, H.md5_hex(body), st)
      assert.equal(503, st, "a write after the failed sync")
    end
    local dst = send(c.port, "DELETE", acked[1])
    ledger:record("DELETE", acked[1], nil, dst)
    assert.equal(503, dst)
    local ust = send(c.port, "UNLINK", acked[1])
    ledger:record("UNLINK", acked[1], nil, ust)
    assert.equal(503, ust)
    local hst, hbody = c:health()
    assert.equal(503, hst, hbody)
    assert.truthy(hbody:find('"status":"failing"', 1, true), hbody)
    assert.is_nil(hbody:find('"index":"ok"', 1, true), hbody)
    -- reads go on
    local rd = F.reader(c.port)
    for _, key in ipairs(acked) do
      local got = rd:read(key)
      assert.is_true(ledger.states[key][got] == true, key .. " reads as " .. tostring(got))
    end
    rd:close()
    assert.truthy(c.mkv:log():find("index write failed", 1, true) or
      c.mkv:log():find("Input/output error", 1, true), c.mkv:log())
    local st = c:stop()
    assert.equal(0, st.code)
    -- restart: every acknowledged key is there with its bytes; the failed one is live
    -- with all its copies, or absent
    c:start()
    F.assert_verified(c, ledger, "eio")
    local hst2 = c:health()
    assert.equal(200, hst2)
    c:stop()
  end)
end)

describe("slow fdatasync of the index (100 ms each)", function()
  after_each(kill_left)
  teardown(H.cleanup)

  it("writes slow down, none fails; nothing lost", function()
    local seed = F.seed("slow sync")
    c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start({ wrap = strace("delay_enter=100000"), env = strace_env() })
    local t0 = H.now()
    F.workload(c, ledger, F.rng(seed), { conns = 4, keys_per_conn = 3, rounds = 4, prefix = "/slow" })
    local took = H.now() - t0
    local counts = ledger:counts()
    assert.equal(0, counts.unknown, "an op failed or timed out under slow syncs")
    assert.is_true(counts.ok > 0)
    assert.is_true(took > 0.2, "the syncs were not slowed: " .. took)
    F.assert_verified(c, ledger, seed)
    c:stop()
    c:start()
    F.assert_verified(c, ledger, seed)
    c:stop()
  end)
end)
