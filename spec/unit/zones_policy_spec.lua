-- policies/zones.lua: zone- (rack-) aware placement, in a policy state as a server makes
-- it (spec/policy_helpers.lua), as the default policy's spec loads default.lua; the
-- zones map arrives as mkv.config.policy.zones, as policy.c gives policy_config to a
-- policy state.
--
-- The module reads the zones map when it loads, so every zones map and every
-- replicas/subvolumes pair loads a fresh copy (load_zones); the default policy it is
-- compared with is loaded with the same values (load_default).
local policy = require "policy_helpers"

local function load_default(replicas, subvolumes)
  return policy.load("default", { replicas = replicas, subvolumes = subvolumes })
end

local function load_zones(zones, replicas, subvolumes)
  return policy.load("zones", { replicas = replicas, subvolumes = subvolumes, policy = { zones = zones } })
end

local function host(entry) return (entry:match("^[^/]+")) end

-- 10 volumes over 4 zones, deliberately uneven (3, 3, 2, 2) and interleaved in the
-- volume list, so that neither config order nor zone size lines up with anything.
local ZONE_OF_INDEX = { "a", "b", "c", "a", "d", "b", "c", "a", "d", "b" }
local function cluster(zone_of_index)
  local vols, zones = {}, {}
  for i, z in ipairs(zone_of_index) do
    vols[i] = string.format("10.0.%d.%d:3001", i, 10 + i)
    zones[vols[i]] = "rack-" .. z
  end
  return vols, zones
end

local function zone_sizes(vols, zones)
  local size, names = {}, {}
  for _, v in ipairs(vols) do
    local z = zones[v]
    if not size[z] then names[#names + 1] = z end
    size[z] = (size[z] or 0) + 1
  end
  table.sort(names)
  return size, names
end

-- The exact probability that zone z holds one of the n replicas of a random key, for
-- the algorithm the module documents (rank the volumes as the default policy does, take
-- the best-ranked volume of each zone until n zones are found). md5 ranks are a uniform
-- random permutation, which is the order of i.i.d. uniform times t: zone w's first
-- volume arrives at T_w = min of s_w uniforms, P(T_w < t) = 1 - (1-t)^s_w, and zone z
-- is taken iff fewer than n other zones arrived before T_z:
--   P(z taken) = integral_0^1 s_z (1-t)^(s_z-1) * P(#{w ~= z : T_w < t} <= n-1) dt
-- (the count of earlier zones is a Poisson-binomial; integrated with Simpson's rule).
local function presence(size, names, z, n)
  local steps = 4000
  local function f(t)
    local dist = { [0] = 1 } -- dist[k] = P(k other zones arrived before t)
    local m = 0
    for _, w in ipairs(names) do
      if w ~= z then
        local q = 1 - (1 - t) ^ size[w]
        m = m + 1
        local nd = {}
        for k = 0, m do
          nd[k] = (dist[k] or 0) * (1 - q) + (dist[k - 1] or 0) * q
        end
        dist = nd
      end
    end
    local p = 0
    for k = 0, n - 1 do p = p + (dist[k] or 0) end
    return size[z] * (1 - t) ^ (size[z] - 1) * p
  end
  local h, sum = 1 / steps, f(0) + f(1)
  for i = 1, steps - 1 do sum = sum + (i % 2 == 1 and 4 or 2) * f(i * h) end
  return sum * h / 3
end

describe("zones placement: the properties of its answers", function()
  for _, sv in ipairs({ 1, 10 }) do
    it("subvolumes " .. sv .. ": 20000 keys get 3 replicas in 3 distinct zones, on distinct volumes, "
       .. "deterministically", function()
      local vols, zones = cluster(ZONE_OF_INDEX)
      local Z = load_zones(zones, 3, sv)
      local other = load_zones(zones, 3, sv) -- a fresh copy of the module
      local bad = {}
      for i = 1, 20000 do
        local key = "/z/" .. i
        local got = Z.place(key, vols, 3)
        assert.equal(3, #got)
        local seen_vol, seen_zone = {}, {}
        for _, e in ipairs(got) do
          local v = host(e)
          assert.truthy(zones[v], "not a configured volume: " .. e)
          if sv > 1 then
            assert.truthy(e:match("^[^/]+/sv[0-9A-F][0-9A-F]$"), "bad subvolume form: " .. e)
            assert.truthy(tonumber(e:match("sv(%x%x)$"), 16) < sv, e)
          else
            assert.is_nil(e:find("/", 1, true), e)
          end
          if seen_vol[v] or seen_zone[zones[v]] then bad[#bad + 1] = key .. ": " .. table.concat(got, ",") end
          seen_vol[v], seen_zone[zones[v]] = true, true
        end
        if i % 10 == 0 then -- determinism: same module again, and a fresh copy
          assert.same(got, Z.place(key, vols, 3))
          assert.same(got, other.place(key, vols, 3))
        end
      end
      assert.same({}, bad)
    end)

    it("subvolumes " .. sv .. ": the first replica is the default policy's first replica", function()
      local vols, zones = cluster(ZONE_OF_INDEX)
      local Z, D = load_zones(zones, 3, sv), load_default(3, sv)
      for i = 1, 20000 do
        local key = "/first/" .. i
        -- Whole entries, /svXX included: same volume, same subvolume formula.
        assert.equal(D.place(key, vols, 3)[1], Z.place(key, vols, 3)[1], key)
      end
    end)

    it("subvolumes " .. sv .. ": with one volume per zone the placement is the default one", function()
      local vols, zones = cluster({ "a", "b", "c", "d", "e", "f" })
      for _, n in ipairs({ 1, 2, 3, 6 }) do
        local Z, D = load_zones(zones, n, sv), load_default(n, sv)
        for i = 1, 3000 do
          local key = "/one-per-zone/" .. i
          assert.same(D.place(key, vols, n), Z.place(key, vols, n), key)
        end
      end
    end)
  end

  it("its replicas are the best-ranked volume of each zone it takes, zones in rank order", function()
    local vols, zones = cluster(ZONE_OF_INDEX)
    local Z, D = load_zones(zones, 3, 1), load_default(3, 1)
    for i = 1, 2000 do
      local key = "/walk/" .. i
      local ranked = D.place(key, vols, #vols) -- the full default ranking
      local want, used = {}, {}
      for _, v in ipairs(ranked) do
        if not used[zones[v]] and #want < 3 then used[zones[v]] = true; want[#want + 1] = v end
      end
      assert.same(want, Z.place(key, vols, 3), key)
    end
  end)

  it("does not modify the volumes table it is given", function()
    local vols, zones = cluster(ZONE_OF_INDEX)
    local Z = load_zones(zones, 3, 10)
    local copy = { unpack(vols) }
    for i = 1, 200 do Z.place("/keep/" .. i, vols, 3) end
    assert.same(copy, vols)
  end)
end)

describe("zones placement: configuration errors", function()
  it("no policy_config.zones: the module raises when it loads", function()
    local ok, err = pcall(policy.load, "zones", { policy = {} })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("policy_config.zones is missing", 1, true), tostring(err))
  end)

  it("a volume missing from the zones map: place() raises naming it (keys that reach it)", function()
    local vols, zones = cluster(ZONE_OF_INDEX)
    local missing = vols[5]
    zones[missing] = nil
    local Z, D = load_zones(zones, 3, 1), load_default(3, 1)
    local checked = 0
    for i = 1, 2000 do
      local key = "/missing/" .. i
      -- The keys whose default ranking puts the missing volume first: the zone walk
      -- must look at it before anything else.
      if D.place(key, vols, 1)[1] == missing then
        checked = checked + 1
        local ok, err = pcall(Z.place, key, vols, 3)
        assert.is_false(ok, key)
        assert.truthy(tostring(err):find(missing, 1, true), tostring(err))
        assert.truthy(tostring(err):find("no zone", 1, true), tostring(err))
      end
    end
    assert.truthy(checked > 100, checked)
  end)

  -- A volume without a zone is a configuration error, not a property of some keys. If
  -- place() only notices it for the keys whose zone walk happens to reach that volume,
  -- mkv's startup check (place() on 7 sample keys) can pass, and the server then fails
  -- PUTs and GETs of a fraction of the keys at run time (500s) instead of refusing the
  -- config. So every call must raise, whatever the key.
  it("a volume missing from the zones map: place() raises for every key, not only some", function()
    local vols, zones = cluster(ZONE_OF_INDEX)
    local missing = vols[5]
    zones[missing] = nil
    local Z = load_zones(zones, 3, 1)
    local passed = {}
    local N = 2000
    for i = 1, N do
      local key = "/missing-all/" .. i
      local ok, res = pcall(Z.place, key, vols, 3)
      if ok then passed[#passed + 1] = key .. " -> " .. table.concat(res, ",") end
    end
    assert.equal(0, #passed, string.format("%d of %d keys placed without error despite %s having no "
      .. "zone, e.g. %s", #passed, N, missing, tostring(passed[1])))
  end)

  it("fewer zones than replicas among the volumes given (a handoff): one copy per zone, "
     .. "never two in one", function()
    local vols, zones = cluster({ "a", "b", "a", "b", "a" })
    local Z = load_zones(zones, 2, 1)
    for i = 1, 200 do
      local res = Z.place("/few/" .. i, vols, 3)
      assert.equal(2, #res, "/few/" .. i)
      assert.are_not.equal(zones[res[1]], zones[res[2]])
    end
    -- Enough zones for 2 replicas: two.
    for i = 1, 200 do assert.equal(2, #Z.place("/few/" .. i, vols, 2)) end
  end)
end)

describe("zones placement: balance and movement", function()
  it("each zone's share of replicas: the documented algorithm's exact share, and near its "
     .. "capacity share", function()
    local vols, zones = cluster(ZONE_OF_INDEX)
    local n, N = 3, 20000
    local Z = load_zones(zones, n, 1)
    local size, names = zone_sizes(vols, zones)
    local count, per_vol = {}, {}
    for _, z in ipairs(names) do count[z] = 0 end
    for i = 1, N do
      for _, v in ipairs(Z.place("/balance/" .. i, vols, n)) do
        count[zones[v]] = count[zones[v]] + 1
        per_vol[v] = (per_vol[v] or 0) + 1
      end
    end
    for _, z in ipairs(names) do
      local share = count[z] / (n * N)
      local p = presence(size, names, z, n)
      local exact = p / n
      local capacity = size[z] / #vols
      print(string.format("zones balance: %s (%d volumes): %.4f of replicas; algorithm's exact %.4f; "
        .. "capacity share %.4f (%+.1f%%); per volume %.4f vs 1/%d = %.4f", z, size[z], share, exact,
        capacity, (share / capacity - 1) * 100, share / size[z], #vols, 1 / #vols))
      -- (1) The implementation is the documented algorithm. The zone holds a replica of
      -- a key with probability p, independently per key, so its count is
      -- Binomial(N, p) and its share's standard deviation is sqrt(p(1-p)/N)/n (~0.001
      -- here). 5 standard deviations: an unbiased hash never fails it (and the keys are
      -- fixed, so the result is reproducible), a different selection rule does.
      local sd = math.sqrt(p * (1 - p) / N) / n
      assert.truthy(math.abs(share - exact) <= 5 * sd,
        string.format("%s: share %.4f, expected %.4f +- %.4f", z, share, exact, 5 * sd))
      -- (2) Fairness to the disks: with equal volumes a zone's fair share is its share
      -- of the volumes (3/10, 2/10 here -- feasible, as no zone holds more than 1/n of
      -- them). Taking zones greedily by their best-ranked volume cannot hit it exactly:
      -- a zone with fewer volumes is reached later and so is the one left out less
      -- often than its size says -- here +13% for the 2-volume zones, -9% for the
      -- 3-volume ones (the exact figures above). +-15% bounds that inherent skew for
      -- these sizes, yet fails the naive zone-aware scheme (pick n zones uniformly, then
      -- a volume in each: 1/4 per zone, +25% / -17%) and any scheme that ignores zones
      -- altogether would fail the distinct-zone test above.
      assert.truthy(math.abs(share / capacity - 1) <= 0.15,
        string.format("%s: share %.4f vs capacity share %.4f", z, share, capacity))
    end
    -- Within a zone the volumes share evenly (they are symmetric in the ranking):
    -- each gets count/size, Binomial, sd ~ 0.0007 of replicas; +-15% relative is far outside.
    for _, v in ipairs(vols) do
      local z = zones[v]
      local expect = count[z] / size[z]
      assert.truthy(math.abs(per_vol[v] / expect - 1) <= 0.15,
        string.format("%s: %d replicas, zone average %.0f", v, per_vol[v], expect))
    end
  end)

  -- Adding one volume to a zone. The zone walk looks at the volumes in the default
  -- ranking, which the new volume does not change for the others; it changes a key only
  -- if the new volume is now one of the key's replicas -- either it outranks its
  -- zone's former pick (which it replaces) or it brings its zone in earlier than
  -- before (and the last-picked zone drops out). Either way exactly ONE replica changes
  -- and it moves ONTO the new volume: nothing is shuffled between the old volumes. That
  -- is the least any placement can move while the new volume gets its share, so the
  -- moved fraction must equal the new volume's share of keys (exact, by the formula of
  -- presence()/size), and it must not cost more than the default policy's movement for
  -- the same change, 3/11 of keys (the new volume's fair share of 11) by more than the
  -- zone skew itself (bounded at 15% above).
  for _, case in ipairs({ { zone = "c", from = 2 }, { zone = "a", from = 3 } }) do
    it(string.format("movement: a volume added to zone %s (%d -> %d volumes) moves one replica of "
       .. "the keys it takes, all onto it", case.zone, case.from, case.from + 1), function()
      local n, N = 3, 20000
      local vols, zones = cluster(ZONE_OF_INDEX)
      local new = "10.0.99.99:3001"
      local after_vols = { unpack(vols) }
      after_vols[#after_vols + 1] = new
      local after_zones = {}
      for k, z in pairs(zones) do after_zones[k] = z end
      after_zones[new] = "rack-" .. case.zone
      local Zb, Za = load_zones(zones, n, 1), load_zones(after_zones, n, 1)
      local D = load_default(n, 1)

      local zmoved, zreplicas, dmoved, dreplicas = 0, 0, 0, 0
      local bad = {}
      for i = 1, N do
        local key = "/move/" .. i
        local before, after = Zb.place(key, vols, n), Za.place(key, after_vols, n)
        local had, changed = {}, 0
        for _, v in ipairs(before) do had[v] = true end
        local gained
        for _, v in ipairs(after) do
          if not had[v] then changed = changed + 1; gained = v end
        end
        if changed > 0 then
          zmoved, zreplicas = zmoved + 1, zreplicas + changed
          if changed ~= 1 or gained ~= new then
            bad[#bad + 1] = key .. ": " .. table.concat(before, ",") .. " -> " .. table.concat(after, ",")
          end
        end
        -- The default policy on the same change.
        local db, da = D.place(key, vols, n), D.place(key, after_vols, n)
        local dhad, dchanged = {}, 0
        for _, v in ipairs(db) do dhad[v] = true end
        for _, v in ipairs(da) do if not dhad[v] then dchanged = dchanged + 1 end end
        if dchanged > 0 then dmoved, dreplicas = dmoved + 1, dreplicas + dchanged end
      end
      local zfrac, dfrac = zmoved / N, dmoved / N
      local size, names = zone_sizes(after_vols, after_zones)
      local expect = presence(size, names, "rack-" .. case.zone, n) / size["rack-" .. case.zone]
      print(string.format("zones movement: +1 volume in zone %s (%d->%d): %.4f of keys change "
        .. "placement (%.4f of replicas move; exact expectation %.4f); default policy on the same "
        .. "change: %.4f of keys (%.4f of replicas); ratio zones/default %.2f", case.zone, case.from,
        case.from + 1, zfrac, zreplicas / (n * N), expect, dfrac, dreplicas / (n * N), zfrac / dfrac))
      assert.same({}, bad)
      -- The key's change is Bernoulli(expect): sd sqrt(e(1-e)/N) ~ 0.003; 5 sd.
      local sd = math.sqrt(expect * (1 - expect) / N)
      assert.truthy(math.abs(zfrac - expect) <= 5 * sd,
        string.format("moved %.4f, expected %.4f +- %.4f", zfrac, expect, 5 * sd))
      assert.truthy(zfrac <= dfrac * 1.15, string.format("zones %.4f vs default %.4f", zfrac, dfrac))
    end)
  end
end)
