-- Crashes (testing-reliability.md §2.2 C1, C2, and CrashMonkey-style bounded
-- workloads): mkv killed with SIGKILL at random moments under concurrent
-- PUT/DELETE/UNLINK load, at every named step of the write order (failpoints,
-- include/mkv/failpoint.h), and at every step of every small op sequence. Each crash is
-- followed by a restart on the same directories and the ledger verifier (V1-V4).
--
-- Counts: MKV_FAULT_SEEDS (random kills, default 10; 100 with MKV_FAULT_SOAK=1) and
-- MKV_FAULT_SEQS (op sequences, default 3 sampled by the seed; all 108 with
-- MKV_FAULT_SOAK=1). The failpoint tests need a build with failpoints (build-fp or
-- build-asan; F.fp_bin()).
local H = require "helpers"
local A = require "api_support"
local F = require "fault_helpers"

describe("kill -9 at random moments under load", function()
  teardown(H.cleanup)

  it("loses no acknowledged write and leaves no live key without its copies", function()
    local base = F.seed("random kill")
    local nseeds = F.num_env("MKV_FAULT_SEEDS", F.soak and 100 or 10)
    local c = F.cluster({ n = 3, replicas = 2 })
    local ledger = F.ledger(c.logdir .. "/ledger")
    local unknown, killed_in_flight = 0, 0
    c:start()
    for i = 0, nseeds - 1 do
      local seed = base + i
      local rng = F.rng(seed)
      local kill_round = rng.int(1, 10)
      local before = ledger:counts().unknown
      local r = F.workload(c, ledger, rng, { conns = 6, keys_per_conn = 5, rounds = kill_round,
        kill_round = kill_round, kill_after = rng.int(1, 6), kill_delay = rng.int(0, 3) / 1000,
        prefix = "/rk" })
      assert.is_true(r.killed)
      local after = ledger:counts().unknown
      unknown = after
      if after > before then killed_in_flight = killed_in_flight + 1 end
      c:start()
      F.assert_verified(c, ledger, seed)
    end
    local counts = ledger:counts()
    io.stderr:write(string.format("# random kill: %d kills, ops ok %d / fail %d / unknown %d; %d kills hit ops in flight\n",
      nseeds, counts.ok, counts.fail, counts.unknown, killed_in_flight))
    -- not vacuous: the kills did land on writes in flight, and writes did succeed
    assert.is_true(unknown > 0, "no kill ever hit an op in flight")
    assert.is_true(counts.ok > nseeds, "too few acknowledged ops")
    c:stop()
  end)
end)

-- ---------------------------------------------------------------------------------------
-- One key, one op, a crash at one named step. `expect` after the restart: live (the
-- ledger's bytes), or absent with (unlinked = true) or without a soft-deleted record, or
-- with the mark of an interrupted write (writing = true: in ?writing, not ?unlinked),
-- and files = how many copies remain on the volumes.
local POINTS = {
  { "put/before_mark",      "PUT",    { live = false, unlinked = false, writing = false, files = 0 } },
  -- (nor is the mark's callback waited for by the rest of the PUT: the copies can be
  -- stored and the live record committed before the callback -- where this point is --
  -- runs; then the key is live and whole, which is as good: either state, nothing mixed)
  { "put/after_mark",       "PUT",    { live = "either", unlinked = false, writing = true } },
  -- (the mark is not waited for: a crash as the first copy lands may come before it)
  { "put/after_replica:1",  "PUT",    { live = false, unlinked = false } },
  { "put/after_replica:2",  "PUT",    { live = false, unlinked = false, writing = true, files = 2 } },
  { "put/before_live",      "PUT",    { live = false, unlinked = false, writing = true, files = 2 } },
  { "put/after_live",       "PUT",    { live = true, files = 2 } },
  { "put/after_reply",      "PUT",    { live = true, files = 2 } },
  { "put/fail_after_files", "BADPUT", { live = false, unlinked = false, writing = true, files = 0 } },
  { "delete/before_mark",   "DELETE", { live = true, files = 2 } },
  { "delete/after_mark",    "DELETE", { live = false, unlinked = true, files = 2 } },
  { "delete/after_files",   "DELETE", { live = false, unlinked = true, files = 0 } },
  { "delete/after_remove",  "DELETE", { live = false, unlinked = false, files = 0 } },
  { "unlink/before_mark",   "UNLINK", { live = true, files = 2 } },
  { "unlink/after_mark",    "UNLINK", { live = false, unlinked = true, files = 2 } },
  { "unlink/after_reply",   "UNLINK", { live = false, unlinked = true, files = 2 } },
}

-- One op on a new connection: the status, or nil when no answer came (the server died).
local function send(port, method, key, body, headers)
  return (F.send(port, method, key, body, headers, 10))
end

describe("a crash at every step of the write order (failpoints)", function()
  local c, ledger
  setup(function()
    c = F.cluster({ n = 3, replicas = 2, bin = F.fp_bin() })
    ledger = F.ledger(c.logdir .. "/ledger")
  end)
  teardown(H.cleanup)

  for _, case in ipairs(POINTS) do
    local point, op, expect = case[1], case[2], case[3]
    it(point .. " (" .. op .. ")", function()
      local key = "/fp/" .. point:gsub("[:/]", "-")
      local body = A.bytes(20000 + #key, #key)
      local md5 = H.md5_hex(body)
      if c.mkv and c.mkv:alive() then c:kill9() end -- left by a failed case
      c:start({ env = { MKV_FAILPOINT = point } })
      if op ~= "PUT" and op ~= "BADPUT" then
        -- the key is live before the op that crashes
        ledger:record("PUT", key, md5, send(c.port, "PUT", key, body))
        assert.same({ [md5] = true }, ledger.states[key])
      end
      local st
      if op == "BADPUT" then -- a Content-MD5 mismatch: 400, then the cleanup crashes
        st = send(c.port, "PUT", key, body, { "Content-MD5: " .. string.rep("0", 32) })
        ledger:record("PUT", key, md5, st)
      else
        st = send(c.port, op, key, op == "PUT" and body or nil)
        ledger:record(op, key, op == "PUT" and md5 or nil, st)
      end
      -- the failpoint was reached and killed mkv there
      local status = H.eventually(function() return not c.mkv:alive() and c.mkv.status end, 10,
        "mkv killed at " .. point)
      assert.equal(9, status.signal, "mkv did not die of SIGKILL at " .. point)
      assert.truthy(c.mkv:log():find("failpoint " .. point:gsub(":.*", "") .. " hit", 1, true), c.mkv:log())
      if op == "BADPUT" then assert.equal(400, st) end

      c:start()
      -- the exact state this step must leave
      local rd = F.reader(c.port)
      local got = rd:read(key)
      rd:close()
      local live = expect.live
      if live == "either" then
        assert.truthy(got == md5 or got == F.ABSENT, "neither the PUT's value nor absent: " .. tostring(got))
        live = got == md5
      end
      if live then assert.equal(md5, got) else assert.equal(F.ABSENT, got) end
      for _, op in ipairs({ "unlinked", "writing" }) do
        local want = expect[op]
        if live and expect.live == "either" then want = false end -- live: in neither
        if want ~= nil then
          local lst, _, keys = A.list(c.url, key, op)
          assert.equal(200, lst)
          assert.equal(want, A.contains(keys, key), "in ?" .. op)
        end
      end
      if expect.files then
        assert.equal(expect.files, #A.holders(c.volumes, key), "copies on the volumes")
      end
      F.assert_verified(c, ledger, point)
      -- and the key is usable again: nothing stuck (lock, half record)
      if got == F.ABSENT then
        local st2 = send(c.port, "PUT", key, body)
        ledger:record("PUT", key, md5, st2)
        assert.equal(201, st2)
      else
        local st2 = send(c.port, "DELETE", key)
        ledger:record("DELETE", key, nil, st2)
        assert.equal(204, st2)
      end
      F.assert_verified(c, ledger, point, { skip_v2 = true, skip_v4 = true })
      c:stop()
    end)
  end
end)

-- ---------------------------------------------------------------------------------------
-- REPLACE of a live key (README "The API"): a crash at each of its steps leaves the old
-- value live and intact, or the new one complete -- never a mix: the key reads back as
-- one of them, byte for byte, `mkv verify --deep` finds every copy its record names
-- matching the record's MD5, and the key can be replaced again.
local REPLACE_POINTS = {
  { "replace/before_record", "old" }, -- the new copies written, the old record live
  { "replace/after_record", "new" },  -- switched, before the answer
  { "replace/after_reply", "new" },   -- answered, the old copies still there
  { "replace/before_drop", "new" },   -- the grace over
  { "replace/after_drop", "new" },    -- the old copies gone, the lock still held
}

describe("a crash at every step of a REPLACE (failpoints)", function()
  local c, ledger
  setup(function()
    c = F.cluster({ n = 3, replicas = 2, bin = F.fp_bin() })
    ledger = F.ledger(c.logdir .. "/ledger")
  end)
  teardown(H.cleanup)

  for _, case in ipairs(REPLACE_POINTS) do
    local point, which = case[1], case[2]
    it(point .. " leaves the " .. which .. " value", function()
      local key = "/rfp/" .. point:gsub("[:/]", "-")
      local old, new = A.bytes(30000, #key), A.bytes(40000, #key + 1)
      if c.mkv and c.mkv:alive() then c:kill9() end
      c:start({ env = { MKV_FAILPOINT = point } })
      ledger:record("PUT", key, H.md5_hex(old), send(c.port, "PUT", key, old))
      assert.same({ [H.md5_hex(old)] = true }, ledger.states[key])
      local st = send(c.port, "REPLACE", key, new)
      ledger:record("REPLACE", key, H.md5_hex(new), st)
      local status = H.eventually(function() return not c.mkv:alive() and c.mkv.status end, 15,
        "mkv killed at " .. point)
      assert.equal(9, status.signal, "mkv did not die of SIGKILL at " .. point)
      c:start()
      local rd = F.reader(c.port)
      local got = rd:read(key)
      rd:close()
      assert.equal(H.md5_hex(which == "old" and old or new), got)
      F.assert_verified(c, ledger, point)
      -- nothing stuck: the key is replaced again
      local again = A.bytes(10000, #key + 2)
      local st2 = send(c.port, "REPLACE", key, again)
      ledger:record("REPLACE", key, H.md5_hex(again), st2)
      assert.equal(201, st2)
      F.assert_verified(c, ledger, point, { skip_v2 = true, skip_v4 = true })
      c:stop()
    end)
  end
end)

-- ---------------------------------------------------------------------------------------
-- CrashMonkey style (bounded black-box crash testing): sequences of 3 ops (PUT / DELETE /
-- UNLINK on keys a and b; those that start with b are a's mirror and left out: 108) run
-- against a fresh pair of keys with a crash at the N-th failpoint of any name ("*:N"),
-- for N = 1, 2, ... until the sequence completes without reaching N. A crash at every
-- step of a 3-op sequence is also a crash at every step of its 1- and 2-op prefixes, so
-- the 3-op sequences cover every sequence of at most 3 ops.
local function sequences()
  local ops = {}
  for _, k in ipairs({ "a", "b" }) do
    for _, m in ipairs({ "PUT", "DELETE", "UNLINK" }) do ops[#ops + 1] = { m, k } end
  end
  local out = {}
  for _, o1 in ipairs(ops) do
    if o1[2] == "a" then
      for _, o2 in ipairs(ops) do
        for _, o3 in ipairs(ops) do out[#out + 1] = { o1, o2, o3 } end
      end
    end
  end
  return out
end

describe("every small op sequence x a crash at every step (CrashMonkey)", function()
  teardown(H.cleanup)

  it("nothing lost at any crash point", function()
    local seed = F.seed("crashmonkey")
    local all = sequences()
    local rng = F.rng(seed)
    local function has_put(seq)
      for _, o in ipairs(seq) do if o[1] == "PUT" then return true end end
      return false
    end
    local pick = {}
    if F.soak then
      pick = all
    else
      -- the seed samples the sequences that write something (one without a PUT only
      -- meets 404s: no step to crash at)
      local writing = {}
      for _, seq in ipairs(all) do if has_put(seq) then writing[#writing + 1] = seq end end
      local n = F.num_env("MKV_FAULT_SEQS", 3)
      for _ = 1, n do pick[#pick + 1] = writing[rng.int(1, #writing)] end
    end
    local with_put = 0
    for _, seq in ipairs(pick) do if has_put(seq) then with_put = with_put + 1 end end
    local c = F.cluster({ n = 3, replicas = 2, bin = F.fp_bin() })
    local ledger = F.ledger(c.logdir .. "/ledger")
    local crashes, cases = 0, 0
    for si, seq in ipairs(pick) do
      local names = {}
      for _, o in ipairs(seq) do names[#names + 1] = o[1] .. " " .. o[2] end
      local label = table.concat(names, ", ")
      for n = 1, 40 do
        cases = cases + 1
        local prefix = string.format("/cm/%d-%d/", si, n)
        c:start({ env = { MKV_FAILPOINT = "*:" .. n } })
        for oi, o in ipairs(seq) do
          local key = prefix .. o[2]
          local body, md5
          if o[1] == "PUT" then
            body = A.bytes(1000 + 100 * oi, si * 100 + n)
            md5 = H.md5_hex(body)
          end
          local st = c.mkv:alive() and send(c.port, o[1], key, body) or nil
          ledger:record(o[1], key, md5, st)
          if not st then break end
        end
        -- a failpoint hit in a cleanup after the last answer may still be under way
        H.sleep(0.05 * H.slow)
        local st = c.mkv:alive() and c:stop() or c.mkv.status
        if st.code == 0 then
          break -- the sequence ran through without reaching the N-th step
        end
        crashes = crashes + 1
        assert.equal(9, st.signal, label .. " crash " .. n)
        -- V1/V3 after each crash; V2 (verify --deep over every record) once per
        -- sequence, below: the sequence's later runs touch none of these keys
        c:start()
        local ok, err = pcall(F.assert_verified, c, ledger, seed, { skip_v2 = true, skip_v4 = true })
        if not ok then error(string.format("sequence [%s], crash at step %d:\n%s", label, n, err)) end
        c:kill9()
      end
      c:start()
      local ok, err = pcall(F.assert_verified, c, ledger, seed)
      if not ok then error(string.format("sequence [%s]:\n%s", label, err)) end
      c:stop()
    end
    io.stderr:write(string.format("# crashmonkey: %d sequences, %d runs, %d crashes\n", #pick, cases, crashes))
    assert.is_true(crashes >= with_put, "fewer crashes than sequences that write")
  end)
end)
