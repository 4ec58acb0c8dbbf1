-- policies/weighted.lua: capacity-weighted rendezvous hashing, in a policy state as a
-- server makes it (spec/policy_helpers.lua), as the default policy's spec loads
-- default.lua. The module reads the weights when it loads, so each weights map and
-- each replicas/subvolumes pair gets a fresh copy (load_weighted).
local mkv = require "mkv"
local policy = require "policy_helpers"

-- policy_config: the config's whole policy_config (mkv.config.policy; nil for none).
local function load_weighted(policy_config, replicas, subvolumes)
  return policy.load("weighted", { replicas = replicas, subvolumes = subvolumes, policy = policy_config })
end

local function volumes(n)
  local t = {}
  for i = 1, n do t[i] = string.format("10.0.0.%d:3001", i) end
  return t
end

local function host(entry) return (entry:match("^[^/]+")) end

-- Weights 1, 1, 2, 4: the first volume's 1 is given, the second has none (weighs 1).
local VOLS = volumes(4)
local WEIGHTS = { [VOLS[1]] = 1, [VOLS[3]] = 2, [VOLS[4]] = 4 }
local WEIGHT_OF = { 1, 1, 2, 4 }

describe("weighted placement: shares", function()
  it("each volume's share of first replicas is weight / sum of weights (40000 keys)", function()
    local W = load_weighted({ weights = WEIGHTS }, 1, 1)
    local N, total = 40000, 8
    local count = {}
    for _, v in ipairs(VOLS) do count[v] = 0 end
    for i = 1, N do
      local got = W.place("/share/" .. i, VOLS, 1)
      assert.equal(1, #got)
      count[got[1]] = count[got[1]] + 1
    end
    for i, v in ipairs(VOLS) do
      local p = WEIGHT_OF[i] / total
      local share = count[v] / N
      -- Weighted rendezvous: P(volume i has the top score w_i / -ln(u_i)) is exactly
      -- w_i / sum(w) for independent uniform u_i. Each count is then Binomial(N, p):
      -- standard deviation sqrt(N p (1-p)) -- 66 keys (0.0017 of N) for p = 1/8, 87
      -- (0.0022) for 1/4, 100 (0.0025) for 1/2. The tolerance is 5 of them: an unbiased
      -- hash never fails it (the keys are fixed, so the run is reproducible anyway),
      -- while ignoring a weight (1/4 each: off by 0.125..0.25) or using it squared or
      -- as a square root (off by >= 0.04) fails by 15 standard deviations or more.
      local sd = math.sqrt(p * (1 - p) / N)
      print(string.format("weighted balance: %s weight %d: %.4f of first replicas (expected %.4f, "
        .. "+- %.4f = 5 sd)", v, WEIGHT_OF[i], share, p, 5 * sd))
      assert.truthy(math.abs(share - p) <= 5 * sd,
        string.format("%s (weight %d): %.4f, expected %.4f +- %.4f", v, WEIGHT_OF[i], share, p, 5 * sd))
    end
  end)

  it("handoff (place among the volumes left): only the missing volume's keys move, to the "
     .. "others in proportion to their weights", function()
    local W = load_weighted({ weights = WEIGHTS }, 1, 1)
    local left = { VOLS[1], VOLS[2], VOLS[3] } -- VOLS[4] (weight 4) is down
    local N, moved = 40000, {}
    for _, v in ipairs(left) do moved[v] = 0 end
    local nmoved = 0
    for i = 1, N do
      local key = "/handoff/" .. i
      local all = W.place(key, VOLS, 1)[1]
      local got = W.place(key, left, 1)[1]
      if all ~= VOLS[4] then
        assert.equal(all, got, key .. ": a key whose volume is up moved")
      else
        moved[got] = moved[got] + 1
        nmoved = nmoved + 1
      end
    end
    -- The weights of those left: 1, 1, 2 of 4. Each count is Binomial(nmoved, p): the
    -- tolerance is 5 standard deviations, as above.
    for i, v in ipairs(left) do
      local p = WEIGHT_OF[i] / 4
      local sd = math.sqrt(p * (1 - p) / nmoved)
      local share = moved[v] / nmoved
      assert.truthy(math.abs(share - p) <= 5 * sd,
        string.format("%s (weight %d) took %.4f of the handed-off keys, expected %.4f +- %.4f",
          v, WEIGHT_OF[i], share, p, 5 * sd))
    end
  end)

  it("equal weights behave like no weights: any common weight gives the same placement, "
     .. "evenly spread", function()
    local vols = volumes(6)
    local none = load_weighted(nil, 2, 10)
    local empty = load_weighted({ weights = {} }, 2, 10)
    local ones, fives, tenth = {}, {}, {}
    for _, v in ipairs(vols) do ones[v], fives[v], tenth[v] = 1, 5, 0.1 end
    local W1 = load_weighted({ weights = ones }, 2, 10)
    local W5 = load_weighted({ weights = fives }, 2, 10)
    local Wt = load_weighted({ weights = tenth }, 2, 10)
    local count, N = {}, 12000
    for i = 1, N do
      local key = "/equal/" .. i
      local a = none.place(key, vols, 2)
      -- The score w / -ln(u) orders volumes by u whatever the common w is.
      assert.same(a, empty.place(key, vols, 2), key)
      assert.same(a, W1.place(key, vols, 2), key)
      assert.same(a, W5.place(key, vols, 2), key)
      assert.same(a, Wt.place(key, vols, 2), key)
      count[host(a[1])] = (count[host(a[1])] or 0) + 1
    end
    -- 1/6 each: Binomial sd sqrt(12000 * 1/6 * 5/6) ~ 41 keys; +-15% is +-300, 7 sd.
    for _, v in ipairs(vols) do
      local share = (count[v] or 0) / N
      assert.truthy(math.abs(share * 6 - 1) <= 0.15, string.format("%s: %.4f", v, share))
    end
  end)
end)

describe("weighted placement: the properties of its answers", function()
  for _, sv in ipairs({ 1, 10 }) do
    it("subvolumes " .. sv .. ": with replicas 2 the pair is two distinct volumes, deterministically",
       function()
      local W = load_weighted({ weights = WEIGHTS }, 2, sv)
      local other = load_weighted({ weights = WEIGHTS }, 2, sv)
      local pairs_seen = {}
      for i = 1, 20000 do
        local key = "/pair/" .. i
        local got = W.place(key, VOLS, 2)
        assert.equal(2, #got)
        local a, b = host(got[1]), host(got[2])
        assert.are_not.equal(a, b, key .. ": " .. table.concat(got, ","))
        for _, e in ipairs(got) do
          if sv > 1 then
            local hex = e:match("^[^/]+/sv([0-9A-F][0-9A-F])$")
            assert.truthy(hex and tonumber(hex, 16) < sv, e)
          else
            assert.is_nil(e:find("/", 1, true), e)
          end
        end
        pairs_seen[a .. "," .. b] = true
        if i % 10 == 0 then
          assert.same(got, W.place(key, VOLS, 2))
          assert.same(got, other.place(key, VOLS, 2))
        end
      end
      -- All 12 ordered pairs occur (even 1,2 -- the two lightest, about 0.5% of keys).
      local n = 0
      for _ in pairs(pairs_seen) do n = n + 1 end
      assert.equal(12, n)
    end)
  end

  it("is a ranking: the first replica of two is the one-replica answer", function()
    local W = load_weighted({ weights = WEIGHTS }, 2, 1)
    for i = 1, 2000 do
      local key = "/rank/" .. i
      assert.same({ W.place(key, VOLS, 2)[1] }, W.place(key, VOLS, 1))
    end
  end)

  it("subvolume numbers follow the default formula (score bytes 12..15 mod subvolumes)", function()
    local W = load_weighted({ weights = WEIGHTS }, 2, 10)
    for i = 1, 500 do
      local key = "/sv/" .. i
      local scores = mkv.md5_scores(key, VOLS)
      for _, e in ipairs(W.place(key, VOLS, 2)) do
        local vol, hex = e:match("^([^/]+)/sv(%x%x)$")
        local idx
        for j, v in ipairs(VOLS) do if v == vol then idx = j end end
        local b1, b2, b3, b4 = scores[idx]:byte(13, 16)
        assert.equal(string.format("%02X", (((b1 * 256 + b2) * 256 + b3) * 256 + b4) % 10), hex)
      end
    end
  end)

  it("does not modify the volumes table it is given", function()
    local W = load_weighted({ weights = WEIGHTS }, 2, 10)
    local copy = { unpack(VOLS) }
    for i = 1, 200 do W.place("/keep/" .. i, VOLS, 2) end
    assert.same(copy, VOLS)
  end)
end)

describe("weighted placement: movement", function()
  -- Adding a volume of weight w to total weight S: it wins a key iff its score beats the
  -- old winner's, probability w / (S + w); the others' scores do not change, so every
  -- key that moves moves ONTO it (exact, no tolerance). The moved count is
  -- Binomial(N, w/(S+w)); tolerance 5 standard deviations (0.010 at w = 2, 0.011 at
  -- w = 4, for N = 40000).
  for _, w in ipairs({ 1, 2, 4 }) do
    it("adding a volume of weight " .. w .. " moves w/(S+w) of first replicas, all onto it", function()
      local new = "10.0.0.99:3001"
      local after_vols = { unpack(VOLS) }
      after_vols[#after_vols + 1] = new
      local after_weights = {}
      for k, x in pairs(WEIGHTS) do after_weights[k] = x end
      after_weights[new] = w
      local Wb = load_weighted({ weights = WEIGHTS }, 1, 1)
      local Wa = load_weighted({ weights = after_weights }, 1, 1)
      local N, S = 40000, 8
      local moved, wrong = 0, {}
      for i = 1, N do
        local key = "/move/" .. i
        local before, after = Wb.place(key, VOLS, 1)[1], Wa.place(key, after_vols, 1)[1]
        if before ~= after then
          moved = moved + 1
          if after ~= new then wrong[#wrong + 1] = key .. ": " .. before .. " -> " .. after end
        end
      end
      local p = w / (S + w)
      local frac = moved / N
      local sd = math.sqrt(p * (1 - p) / N)
      print(string.format("weighted movement: +1 volume of weight %d (total %d -> %d): %.4f of keys "
        .. "move (expected w/(S+w) = %.4f, +- %.4f = 5 sd)", w, S, S + w, frac, p, 5 * sd))
      assert.same({}, wrong)
      assert.truthy(math.abs(frac - p) <= 5 * sd,
        string.format("moved %.4f, expected %.4f +- %.4f", frac, p, 5 * sd))
    end)
  end

  it("removing a volume moves only the keys it held (replicas 1 and 2)", function()
    for _, gone_idx in ipairs({ 2, 4 }) do -- an unweighted one and the heaviest
      local gone = VOLS[gone_idx]
      local rest = {}
      for _, v in ipairs(VOLS) do if v ~= gone then rest[#rest + 1] = v end end
      local N, held, wrong = 20000, 0, {}
      for _, n in ipairs({ 1, 2 }) do
        local Wfull = load_weighted({ weights = WEIGHTS }, n, 1)
        for i = 1, N do
          local key = "/remove/" .. i
          local before, after = Wfull.place(key, VOLS, n), Wfull.place(key, rest, n)
          local holds = false
          for _, v in ipairs(before) do if v == gone then holds = true end end
          if holds then
            if n == 1 then held = held + 1 end
            -- The surviving replicas stay, in their order; one new one follows.
            local kept = {}
            for _, v in ipairs(before) do if v ~= gone then kept[#kept + 1] = v end end
            for j, v in ipairs(kept) do
              if after[j] ~= v then wrong[#wrong + 1] = key .. " lost " .. v end
            end
          elseif table.concat(before, ",") ~= table.concat(after, ",") then
            wrong[#wrong + 1] = string.format("%s (replicas %d) did not hold %s but moved: %s -> %s", key,
              n, gone, table.concat(before, ","), table.concat(after, ","))
          end
        end
      end
      print(string.format("weighted movement: removing %s (weight %d of 8): %.4f of keys move "
        .. "(replicas 1; expected %.4f)", gone, WEIGHT_OF[gone_idx], held / N, WEIGHT_OF[gone_idx] / 8))
      assert.same({}, wrong)
    end
  end)
end)

describe("weighted placement: bad weights raise when the module loads", function()
  local bad = {
    { "zero", 0 }, { "negative", -1 }, { "a tiny negative", -1e-300 }, { "a string", "2" },
    { "a boolean", true }, { "a table", { 2 } },
  }
  for _, case in ipairs(bad) do
    it("a weight that is " .. case[1], function()
      local vol = "10.0.0.3:3001"
      local ok, err = pcall(load_weighted, { weights = { ["10.0.0.1:3001"] = 2, [vol] = case[2] } })
      assert.is_false(ok, "loaded with a weight of " .. tostring(case[2]))
      err = tostring(err)
      assert.truthy(err:find("weighted policy", 1, true), err)
      assert.truthy(err:find(vol, 1, true), err)
      assert.truthy(err:find("must be a number above 0", 1, true), err)
      assert.is_nil(err:find("\n"), err)
    end)
  end

  it("good weights (whole and fractional) load", function()
    for _, w in ipairs({ 1, 0.001, 2.5, 1e6 }) do
      local M = load_weighted({ weights = { ["10.0.0.1:3001"] = w } })
      assert.is_function(M.place)
      assert.is_function(M.path)
    end
  end)
end)
