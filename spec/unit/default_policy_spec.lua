-- policies/default.lua in a policy state as a server makes it (spec/policy_helpers.lua):
-- golden vectors from the Go original's tests and from the cluster it wrote
-- (spec/fixtures/go-original), then the properties placement must have (STYLE "Tests"),
-- then listing and rebalance.
local H = require "helpers"
local mkv = require "mkv"
local policy = require "policy_helpers"

-- The module in a policy state of its own, as a server loads it. A server's config never
-- changes under a loaded module, so a test that needs other values loads its own copy.
local function load_default(replicas, subvolumes)
  return policy.load("default", { replicas = replicas, subvolumes = subvolumes })
end

local P = load_default() -- replicas 3, subvolumes 10

local json_decode = require("json").decode

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

describe("default placement: golden vectors", function()
  -- The Go original's lib_test.go (Test_key2volume).
  local golden = { hello = "larry", helloworld = "curly", world = "moe", blah = "curly" }
  local stooges = { "larry", "moe", "curly" }

  it("larry/moe/curly with replicas 1, subvolumes 1", function()
    local P = load_default(1, 1)
    for key, want in pairs(golden) do
      assert.same({ want }, P.place(key, stooges, 1), key)
    end
  end)

  it("larry/moe/curly with subvolumes 3 (as Go's test calls it): same volume, /svXX added", function()
    local P = load_default(1, 3)
    for key, want in pairs(golden) do
      local got = P.place(key, stooges, 1)
      assert.equal(1, #got)
      local vol, sv = got[1]:match("^([^/]+)/sv(%x%x)$")
      assert.equal(want, vol, key)
      assert.truthy(tonumber(sv, 16) < 3)
    end
  end)

  describe("every key of the Go original's fixture", function()
    local manifest = json_decode(assert(H.read_file(H.root .. "/spec/fixtures/go-original/manifest.json")))
    local vols = {}
    for i, v in ipairs(manifest.volumes) do vols[i] = v.address end

    it("the manifest is the one described (3 volumes, replicas 2, subvolumes 4)", function()
      assert.same({ "127.0.0.1:24101", "127.0.0.1:24102", "127.0.0.1:24103" }, vols)
      assert.equal(2, manifest.replicas)
      assert.equal(4, manifest.subvolumes)
      assert.equal(73, #manifest.keys)
    end)

    it("place() gives the placement the Go original computed", function()
      local P = load_default(manifest.replicas, manifest.subvolumes)
      local wrong = {}
      for _, k in ipairs(manifest.keys) do
        local key = unhex(k.key_hex)
        local got = P.place(key, vols, manifest.replicas)
        if table.concat(got, ",") ~= table.concat(k.placement, ",") then
          wrong[#wrong + 1] = k.key_hex .. ": " .. table.concat(got, ",") .. " ~= "
            .. table.concat(k.placement, ",")
        end
      end
      assert.same({}, wrong)
    end)

    it("path() gives the Go original's file path", function()
      local wrong = {}
      for _, k in ipairs(manifest.keys) do
        local got = P.path(unhex(k.key_hex))
        if got ~= k.path then wrong[#wrong + 1] = k.key_hex .. ": " .. got .. " ~= " .. k.path end
      end
      assert.same({}, wrong)
    end)

    it("live records name the volumes placement gives (Key-Volumes)", function()
      local P = load_default(manifest.replicas, manifest.subvolumes)
      for _, k in ipairs(manifest.keys) do
        if k.state == "live" then
          assert.equal(k.key_volumes, table.concat(P.place(unhex(k.key_hex), vols, 2), ","))
        end
      end
    end)

    -- mkv.json_string (a helper, but its evidence lives here): the Go server's ?list body,
    -- rebuilt from the keys it listed, in byte order, must match byte for byte.
    it("mkv.json_string rebuilds the Go original's ?list body exactly", function()
      local listed = {}
      for _, k in ipairs(manifest.keys) do
        if k.in_list then listed[#listed + 1] = unhex(k.key_hex) end
      end
      table.sort(listed)
      local parts = {}
      for i, key in ipairs(listed) do parts[i] = mkv.json_string(key) end
      local body = '{"next":"","keys":[' .. table.concat(parts, ",") .. "]}"
      assert.equal(manifest.go_listing_responses["/?list"].body, body)
    end)
  end)
end)

describe("default placement: properties", function()
  local function volumes(n)
    local t = {}
    for i = 1, n do t[i] = string.format("10.0.0.%d:3001", i) end
    return t
  end
  local function host(entry) return (entry:match("^[^/]+")) end

  it("is deterministic: same key, same answer, also from a fresh copy of the module", function()
    local vols = volumes(7)
    local other = load_default()
    for i = 1, 500 do
      local key = "/det/" .. i
      local a = P.place(key, vols, 3)
      assert.same(a, P.place(key, vols, 3))
      assert.same(a, other.place(key, vols, 3))
    end
  end)

  it("gives distinct volumes for the replicas of a key", function()
    local vols = volumes(5)
    for i = 1, 2000 do
      local got = P.place("/distinct/" .. i, vols, 3)
      assert.equal(3, #got)
      local seen = {}
      for _, e in ipairs(got) do
        assert.is_nil(seen[host(e)], "two replicas on " .. e)
        seen[host(e)] = true
      end
    end
    -- n == #volumes: every volume exactly once.
    local all = load_default(5, 1).place("/all", vols, 5)
    table.sort(all)
    local want = { unpack(vols) }
    table.sort(want)
    assert.same(want, all)
  end)

  it("is a ranking: the first k of n replicas are the k-replica answer", function()
    local P = load_default(3, 1)
    local vols = volumes(8)
    for i = 1, 300 do
      local key = "/rank/" .. i
      local three = P.place(key, vols, 3)
      assert.same({ three[1] }, P.place(key, vols, 1))
      assert.same({ three[1], three[2] }, P.place(key, vols, 2))
    end
  end)

  it("spreads first replicas evenly: each of 10 volumes gets 1/10 of 20000 keys, +-15%", function()
    local P = load_default(1, 1)
    local vols = volumes(10)
    local count = {}
    for _, v in ipairs(vols) do count[v] = 0 end
    local N = 20000
    for i = 1, N do
      local v = P.place("/balance/" .. i, vols, 1)[1]
      count[v] = count[v] + 1
    end
    -- Each count is Binomial(20000, 0.1): mean 2000, standard deviation sqrt(20000*0.1*0.9)
    -- ~ 42. +-15% is +-300 ~ 7 standard deviations, so an unbiased hash never fails it
    -- (the keys are fixed anyway, so the result is reproducible), while a skewed one --
    -- say one that favours the config order, or uses a few bits of the score -- does.
    for v, c in pairs(count) do
      local share = c / N
      assert.truthy(share >= 0.1 * 0.85 and share <= 0.1 * 1.15,
        string.format("%s has %.4f of first replicas", v, share))
    end
  end)

  it("adding an 11th volume moves about 1/11 of first replicas, all onto the new one", function()
    local P = load_default(1, 1)
    local ten = volumes(10)
    local eleven = volumes(11)
    local N, moved = 20000, 0
    for i = 1, N do
      local key = "/move/" .. i
      local before = P.place(key, ten, 1)[1]
      local after = P.place(key, eleven, 1)[1]
      if before ~= after then
        moved = moved + 1
        -- Rendezvous hashing: a key changes volume only if the new volume outscores the
        -- old winner, so it can only move onto the new volume. Exact, no tolerance.
        assert.equal(eleven[11], after, key .. " moved from " .. before .. " to " .. after)
      end
    end
    -- Expected share 1/11 ~ 0.0909; its standard deviation over 20000 keys is ~0.002, so
    -- [0.06, 0.12] is far outside noise, yet a mod-N style hash (which would move ~10/11
    -- of the keys) or one that never uses the new volume fails it.
    local frac = moved / N
    assert.truthy(frac >= 0.06 and frac <= 0.12, string.format("moved %.4f", frac))
  end)

  it("subvolume numbers are in range and written %02X, upper-case (sv0A)", function()
    local vols = volumes(4)
    for _, sv in ipairs({ 2, 4, 10, 16, 20, 255, 256 }) do
      local P = load_default(2, sv)
      local seen = {}
      for i = 1, 1000 do
        local key = "/sv/" .. i
        local got = P.place(key, vols, 2)
        local scores = mkv.md5_scores(key, vols)
        for _, e in ipairs(got) do
          local vol, hex = e:match("^([^/]+)/sv([0-9A-F][0-9A-F])$")
          assert.truthy(vol, "bad subvolume form: " .. e)
          local n = tonumber(hex, 16)
          assert.truthy(n < sv, e .. " with subvolumes " .. sv)
          seen[hex] = true
          -- And it is the Go formula: big-endian uint32 of score bytes 12..15 mod sv.
          local idx
          for j, v in ipairs(vols) do if v == vol then idx = j end end
          local b1, b2, b3, b4 = scores[idx]:byte(13, 16)
          assert.equal(string.format("%02X", (((b1 * 256 + b2) * 256 + b3) * 256 + b4) % sv), hex)
        end
      end
      if sv >= 11 then assert.truthy(seen["0A"], "no sv0A with subvolumes " .. sv) end
    end
  end)

  it("subvolumes 1 appends no /svXX", function()
    local P = load_default(3, 1)
    local vols = volumes(3)
    for i = 1, 100 do
      for _, e in ipairs(P.place("/nosv/" .. i, vols, 3)) do assert.is_nil(e:find("/", 1, true)) end
    end
  end)

  it("breaks no ties by accident: the order is by score, highest first", function()
    local P = load_default(3, 1)
    local vols = volumes(6)
    for i = 1, 300 do
      local key = "/order/" .. i
      local got = P.place(key, vols, 3)
      local score = {}
      for j, v in ipairs(vols) do score[v] = mkv.md5_scores(key, vols)[j] end
      assert.truthy(score[got[1]] > score[got[2]] and score[got[2]] > score[got[3]])
      for _, v in ipairs(vols) do
        local chosen = v == got[1] or v == got[2] or v == got[3]
        if not chosen then assert.truthy(score[v] < score[got[3]]) end
      end
    end
  end)

  it("does not modify the volumes table it is given", function()
    local vols = volumes(5)
    local copy = { unpack(vols) }
    for i = 1, 100 do P.place("/keep/" .. i, vols, 3) end
    assert.same(copy, vols)
  end)

  it("path() equals mkv.key_path for text and binary keys", function()
    for i = 1, 500 do
      local key = "/p/" .. i .. string.char(i % 256) .. ("x"):rep(i % 50)
      assert.equal(mkv.key_path(key), P.path(key))
    end
    assert.equal(mkv.key_path(""), P.path(""))
    assert.equal("/5d/41/aGVsbG8=", P.path("hello"))
  end)

  it("replicas() is the configured count for every key", function()
    local P = load_default(2, 4)
    assert.equal(2, P.replicas("/a"))
    assert.equal(2, P.replicas("/tmp/b"))
  end)
end)

describe("default listing", function()
  it("list_limit: the client's limit, or a million when none or too large", function()
    assert.equal(1000000, P.list_limit("list", 0))
    assert.equal(1, P.list_limit("list", 1))
    assert.equal(10, P.list_limit("list", 10))
    assert.equal(7, P.list_limit("unlinked", 7))
    assert.equal(999999, P.list_limit("list", 999999))
    assert.equal(1000000, P.list_limit("list", 1000000))
    assert.equal(1000000, P.list_limit("list", 5000000))
  end)

  it("has no show() filter (the core then skips the call)", function()
    assert.is_nil(P.show)
  end)
end)

describe("default rebalance", function()
  it("copies want - have and drops have - want", function()
    assert.same({ copy = { "c" }, drop = { "a" } }, P.rebalance("/k", { "a", "b" }, { "b", "c" }))
  end)

  it("keeps the order of want for copies and of have for drops", function()
    assert.same({ copy = { "d", "c", "a" }, drop = {} }, P.rebalance("/k", {}, { "d", "c", "a" }))
    assert.same({ copy = { "z", "x" }, drop = { "c", "a" } },
      P.rebalance("/k", { "c", "b", "a" }, { "z", "b", "x" }))
    assert.same({ copy = {}, drop = { "y", "x", "w" } }, P.rebalance("/k", { "y", "x", "w" }, {}))
  end)

  it("has nothing to do when have == want, whatever the order", function()
    assert.same({ copy = {}, drop = {} }, P.rebalance("/k", { "a", "b" }, { "a", "b" }))
    assert.same({ copy = {}, drop = {} }, P.rebalance("/k", { "b", "a" }, { "a", "b" }))
  end)

  it("works on subvolume entries as opaque strings", function()
    assert.same({ copy = { "v1/sv02" }, drop = { "v1/sv01" } },
      P.rebalance("/k", { "v1/sv01", "v2/sv00" }, { "v2/sv00", "v1/sv02" }))
  end)
end)
