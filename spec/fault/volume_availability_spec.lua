-- Writes through failed volumes (README "Volume health"), with the default write quorum
-- (a majority) and 4 volumes for 3 replicas, so a copy meant for a volume that is down
-- goes to the next one in placement's order:
--   - 1 of 4 volumes killed, then 1 000 PUTs of 1 MB: every one answered 201, each with
--     3 copies, all on live volumes (a copy that fails mid-write leaves 2: at most 1 %,
--     each counted by mkv_keys_underreplicated and restored by `mkv run repair`);
--   - kill -9 of mkv under load while a volume is down, over several seeds, each
--     followed by a restart (the repair's scan of the index finds the handoff copies
--     again) and the ledger's reads; at the end, every volume back, the background
--     repair brings every key to where placement wants it (mkv_keys_underreplicated 0)
--     and the whole verifier passes: no acknowledged write lost, `mkv verify --deep`
--     clean.
local H = require "helpers"
local A = require "api_support"
local F = require "fault_helpers"
local O = require "ops_helpers"

-- Waits until the repair has settled every key: a scan done since the last start, and
-- no key left in its set.
local function repaired(c, timeout)
  H.eventually(function()
    local m, why = c:metrics()
    if not m then return false, why end
    local left = O.get(m, "mkv_keys_underreplicated")
    local scans = O.get(m, "mkv_repair_scans_total")
    return left == 0 and scans >= 1, string.format("%s keys left, %s scans", tostring(left), tostring(scans))
  end, timeout * H.slow, "the repair of every key")
end

describe("writes through failed volumes (4 volumes, 3 replicas, write quorum a majority)", function()
  teardown(H.cleanup)

  it("1 of 4 killed, then 1 000 PUTs of 1 MB: every one 201, 3 copies on live volumes", function()
    local c = F.cluster({ n = 4, replicas = 3, flags = { "-repair-interval", "0" } })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start()
    local dead = 2
    c.volumes[dead]:stop()
    local N = F.num_env("MKV_AVAIL_PUTS", 1000)
    local conns = {}
    for j = 1, 8 do conns[j] = A.connect(c.port) end
    local keys, ok, three = {}, 0, 0
    local i = 1
    while i <= N do
      local batch = {}
      for j = 1, #conns do
        if i > N then break end
        local key = string.format("/avail/%04d", i)
        local body = A.bytes(1048576, i)
        assert(conns[j]:send(A.request("PUT", key, nil, body)))
        batch[j] = { key = key, md5 = H.md5_hex(body) }
        keys[#keys + 1] = key
        i = i + 1
      end
      for j = 1, #conns do
        local b = batch[j]
        if b then
          local r, err = conns[j]:response(60 * H.slow)
          ledger:record("PUT", b.key, b.md5, r and r.status, r and nil or tostring(err))
          if r and r.status == 201 then ok = ok + 1 end
        end
      end
    end
    for _, cc in ipairs(conns) do cc:close() end
    local on_dead, short = 0, {}
    for _, key in ipairs(keys) do
      local h = A.holders(c.volumes, key)
      if #h == 3 then three = three + 1 else short[#short + 1] = key end
      for _, x in ipairs(h) do if x == dead then on_dead = on_dead + 1 end end
    end
    io.stderr:write(string.format("# 1 of 4 volumes down: %d PUTs of 1 MB, %d answered 201, %d with 3 copies\n",
      N, ok, three))
    assert.equal(N, ok)
    assert.equal(0, on_dead)
    -- A replica that fails mid-write (a slow sanitizer build can time one out) leaves a
    -- key with 2 copies: a 201 under the quorum. Those are rare, and each is known to the
    -- repair; `mkv run repair` then brings every key to 3 copies on the live volumes.
    assert.is_true(#short <= math.floor(N / 100), #short .. " keys with fewer than 3 copies")
    -- the repair's set: every key not where placement wants it (the handed-off ones too)
    local m = assert(c:metrics())
    local under = O.get(m, "mkv_keys_underreplicated")
    assert.is_true(under >= #short)
    -- with volume 2 down, about 3 keys in 4 have a copy handed off to the volume next in
    -- placement's order, and each such PUT notes its key for the repair (which is off
    -- here: -repair-interval 0), so the gauge counts them however few keys are short
    if N >= 20 then
      assert.is_true(under > 0, "no handed-off key counted in mkv_keys_underreplicated")
    end
    if #short > 0 then
      local rc, out = c:run({ "run", "repair" }, 300)
      assert.equal(0, rc, out)
    end
    for _, key in ipairs(keys) do
      local h = A.holders(c.volumes, key)
      assert.equal(3, #h, key)
      for _, x in ipairs(h) do assert.not_equal(dead, x, key) end
    end
    -- every key reads back (the verifier's reads; copies are checked after the repair)
    F.assert_verified(c, ledger, "avail/1000", { skip_v2 = true })
    c:stop()
  end)

  it("kill -9 of mkv under load with a volume down, then the volume back: nothing lost, "
     .. "every key repaired, verify --deep clean", function()
    local base = F.seed("volume down + kill")
    local nseeds = F.num_env("MKV_FAULT_SEEDS", F.soak and 40 or 6)
    local c = F.cluster({ n = 4, replicas = 3, flags = { "-repair-interval", "200ms" },
      config = 'return { limits = { probe_interval = "200ms", probe_backoff = "1s" } }' })
    local ledger = F.ledger(c.logdir .. "/ledger")
    c:start()
    local unknown_kills = 0
    for s = 0, nseeds - 1 do
      local seed = base + s
      local rng = F.rng(seed)
      local down = rng.int(1, 4)
      c.volumes[down]:stop()
      local kill_round = rng.int(1, 8)
      local before = ledger:counts().unknown
      local r = F.workload(c, ledger, rng, { conns = 6, keys_per_conn = 5, rounds = kill_round,
        kill_round = kill_round, kill_after = rng.int(1, 6), kill_delay = rng.int(0, 3) / 1000,
        prefix = "/vk", max_size = 32768 })
      assert.is_true(r.killed)
      if ledger:counts().unknown > before then unknown_kills = unknown_kills + 1 end
      c:start()
      -- Reads with the volume still down: every acknowledged write is there.
      F.assert_verified(c, ledger, seed, { skip_v2 = true })
      c.volumes[down] = H.restart_volume(c.volumes[down])
    end
    -- Every volume back: the repair (its scan after the last start finds the handoff
    -- copies and the keys with 2 of 3) settles every key; then the whole verifier.
    repaired(c, 60)
    F.assert_verified(c, ledger, base)
    local counts = ledger:counts()
    io.stderr:write(string.format("# volume down + kill -9: %d kills, ops ok %d / fail %d / unknown %d; %d kills hit ops in flight\n",
      nseeds, counts.ok, counts.fail, counts.unknown, unknown_kills))
    assert.is_true(counts.ok > nseeds, "too few acknowledged ops")
    c:stop()
  end)
end)
