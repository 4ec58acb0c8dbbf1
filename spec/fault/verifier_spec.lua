-- The verifier of spec/fault_helpers.lua must be able to fail: a verifier that cannot
-- is worthless. Each test breaks one promise behind mkv's back (or in the ledger) and
-- expects the verifier to name it; the same cluster, untouched, verifies clean.
local H = require "helpers"
local F = require "fault_helpers"

local function find(problems, pat)
  for _, p in ipairs(problems) do
    if p:find(pat) then return p end
  end
  return nil
end

describe("the fault verifier", function()
  local c, ledger, seed
  setup(function()
    seed = F.seed("verifier")
    -- No background repair: the verifier's reads (V1) note a copy removed behind mkv's
    -- back, and a repair pass could restore it before V2 looks -- mkv healing is right,
    -- but these tests need the damage to stay.
    c = F.cluster({ n = 3, replicas = 2, flags = { "-repair-interval", "0" } })
    c:start()
    ledger = F.ledger(c.logdir .. "/ledger")
    F.workload(c, ledger, F.rng(seed), { conns = 4, keys_per_conn = 4, rounds = 12, prefix = "/vf" })
  end)
  teardown(H.cleanup)

  it("passes a cluster that lost nothing, and the ledger has ok PUTs to check", function()
    local counts = ledger:counts()
    assert.is_true(counts.ok > 5, "too few ok ops: " .. counts.ok)
    assert.equal(0, counts.unknown)
    F.assert_verified(c, ledger, seed)
  end)

  local function live_key()
    for _, k in ipairs(ledger.keys) do
      if not ledger.states[k][F.ABSENT] then return k end
    end
    error("no live key in the ledger")
  end

  it("catches a replica file deleted behind mkv's back (V2)", function()
    local key = live_key()
    local holders = require("api_support").holders(c.volumes, key)
    assert.equal(2, #holders)
    local file = c:file(holders[1], key)
    local saved = H.read_file(file)
    assert(os.remove(file))
    local problems = F.verify(c, ledger)
    H.write_file(file, saved)
    assert.truthy(find(problems, "^V2 missing " .. key:gsub("%p", "%%%0")), table.concat(problems, "\n"))
  end)

  it("catches a replica with the wrong bytes (V2)", function()
    local key = live_key()
    local holders = require("api_support").holders(c.volumes, key)
    local file = c:file(holders[2], key)
    local saved = H.read_file(file)
    H.write_file(file, saved:sub(1, -2) .. (saved:sub(-1) == "x" and "y" or "x"))
    local problems = F.verify(c, ledger)
    H.write_file(file, saved)
    assert.truthy(find(problems, "^V2 corrupt " .. key:gsub("%p", "%%%0")), table.concat(problems, "\n"))
  end)

  it("catches an acknowledged PUT that never happened, and a deleted key that lives (V1)", function()
    -- the ledger claims a 201 for a key mkv never saw
    ledger:record("PUT", "/vf/never", H.md5_hex("x"), 201)
    -- and a 204 DELETE mkv never saw, for a live key
    local key = live_key()
    ledger:record("DELETE", key, nil, 204)
    local problems = F.verify(c, ledger)
    assert.truthy(find(problems, "^V1 /vf/never reads as absent.*acknowledged PUT is lost"),
      table.concat(problems, "\n"))
    assert.truthy(find(problems, "^V1 " .. key:gsub("%p", "%%%0") .. " reads as %x+.*deleted key is live"),
      table.concat(problems, "\n"))
  end)

  it("catches an answer no allowed state explains (a 403 for a key the ledger deleted)", function()
    local l = F.ledger()
    l:record("PUT", "/vf/h", "m1", 201)
    l:record("DELETE", "/vf/h", nil, 204)
    l:record("PUT", "/vf/h", "m2", 403)
    assert.equal(1, #l.anomalies)
    assert.truthy(l.anomalies[1]:find("answered 403", 1, true))
    -- unknown ops widen the states, exactly: after an unknown DELETE, both a 403 and a
    -- 201 are explained
    local u = F.ledger()
    u:record("PUT", "/vf/u", "m1", 201)
    u:record("DELETE", "/vf/u", nil, nil)
    assert.same({ m1 = true, absent = true }, u.states["/vf/u"])
    u:record("PUT", "/vf/u", "m2", 201)
    assert.same({ m2 = true }, u.states["/vf/u"])
    assert.equal(0, #u.anomalies)
    -- an unknown PUT over a live key cannot have happened (it would be a 403)
    u:record("PUT", "/vf/u", "m3", nil)
    assert.same({ m2 = true }, u.states["/vf/u"])
  end)

  it("catches a server that leaks fds (V4)", function()
    -- connections opened to mkv during the verification and held stand in for a leak
    local held = {}
    local T = H.T
    local orig = F.reader
    F.reader = function(port)
      for i = 1, 3 do held[i] = T.connect(port) end
      return orig(port)
    end
    local ok, problems = pcall(F.verify, c, ledger)
    F.reader = orig
    for _, fd in ipairs(held) do T.close(fd) end
    assert(ok, problems)
    assert.truthy(find(problems, "^V4 open fds"), table.concat(problems, "\n"))
  end)
end)
