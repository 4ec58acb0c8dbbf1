-- The example placement policies policies/zones.lua and policies/weighted.lua in a real
-- server: nginx volumes (deploy/volume), the mkv binary, config.lua with `policies` and
-- `policy_config`. Files are checked where they land, in the volumes' data dirs
-- (subvolumes 1: <root><key path>); startup refusals are checked as the operator sees
-- them (exit status 2 and one line).
local H = require "helpers"
local mkv = require "mkv"
package.loaded.mkv = mkv

-- The keys mkv's startup check (core/policy.c check_samples) runs place() on.
local SAMPLE_KEYS = { "/", "/hello", "/wehave", "/tmp/scratch", "/a/b/c d+e=f",
                      "/\226\130\172/\255\254", "/" .. ("k"):rep(189) }

local function lua_table(t)
  local parts = {}
  for k, v in pairs(t) do
    local val = type(v) == "string" and string.format("%q", v) or tostring(v)
    parts[#parts + 1] = string.format("[%q] = %s", k, val)
  end
  table.sort(parts)
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function config(db, addrs, replicas, placement, policy_config)
  local q = {}
  for i, a in ipairs(addrs) do q[i] = string.format("%q", a) end
  return string.format([[
return {
  db = %q,
  volumes = { %s },
  replicas = %d,
  subvolumes = 1,
  policies = { placement = %q },
  policy_config = %s,
}]], db, table.concat(q, ", "), replicas, placement, policy_config)
end

-- The module as a server's policy state has it, loaded here with the same parameters.
local function load_policy(name, policy, replicas)
  mkv.config.policy = policy
  mkv.config.replicas = replicas
  mkv.config.subvolumes = 1
  return assert(loadfile(H.root .. "/policies/" .. name .. ".lua"))()
end
local function restore()
  mkv.config.policy = nil
  mkv.config.replicas = 3
  mkv.config.subvolumes = 10
end

-- The volumes (objects of H.start_volume) whose data dir holds the key's file.
local function holders(vols, key)
  local out = {}
  for _, v in ipairs(vols) do
    if H.read_file(v.root .. mkv.key_path(key)) then out[#out + 1] = v end
  end
  return out
end

-- Runs `mkv -c <config> server` on a free port; returns the exit code and the output
-- with trailing whitespace removed, and whether the index directory was created.
local function run_server(cfg_source)
  local dir = H.tmpdir("pp")
  local db = dir .. "/index"
  local cfgpath = H.write_file(dir .. "/config.lua", cfg_source(db))
  local code, out = H.run_mkv({ "-c", cfgpath, "-port", tostring(H.free_port()), "-listen",
                                "127.0.0.1", "server" }, 20)
  return code, (out:gsub("%s+$", "")), cfgpath
end

-- The common contract of a refused config: exit 2, one line "mkv: ...".
local function refused(code, out)
  assert.equal(2, code, "exit code " .. tostring(code) .. ", output:\n" .. out)
  assert.is_nil(out:find("\n"), "more than one line:\n" .. out)
  assert.truthy(out:match("^mkv: "), out)
end

describe("a config file that never returns", function()
  -- A loop, and a loop inside pcall (the deadline keeps raising): exit 2 with one line,
  -- within the load budget (5 s), never a hung start.
  for _, src in ipairs({ "while true do end", "pcall(function() while true do end end) return {}" }) do
    it(src .. ": exit 2 within the load budget", function()
      local t0 = H.now()
      local code, out = run_server(function() return src end)
      refused(code, out)
      assert.truthy(out:find("did not finish within 5 s", 1, true), out)
      assert.truthy(out:find("config.lua", 1, true), out)
      assert.truthy(H.now() - t0 < 10 * H.slow, string.format("%.1f s", H.now() - t0))
    end)
  end
end)

describe("zones policy in a server (4 volumes in 2 zones, replicas 2)", function()
  local vols, addrs, zones, m
  setup(function()
    vols, addrs, zones = {}, {}, {}
    for i = 1, 4 do
      vols[i] = H.start_volume()
      addrs[i] = vols[i].addr
      -- Interleaved: rack-a holds volumes 1 and 3, rack-b volumes 2 and 4.
      zones[addrs[i]] = i % 2 == 1 and "rack-a" or "rack-b"
    end
    local dir = H.tmpdir("zones")
    m = H.start_mkv({ dir = dir, config = config(dir .. "/index", addrs, 2, "zones",
                                                 "{ zones = " .. lua_table(zones) .. " }") })
  end)
  teardown(function()
    restore()
    H.cleanup()
  end)

  it("50 PUTs: each key's two files are on volumes of different zones, as Key-Volumes says", function()
    local Z = load_policy("zones", { zones = zones }, 2)
    local per_zone, per_vol = { ["rack-a"] = 0, ["rack-b"] = 0 }, {}
    for i = 1, 50 do
      local key = "/zoned/" .. i
      local body = "value of " .. key
      assert.equal(201, (H.http("PUT", m.url .. key, { body = body })), key)
      local on_disk = holders(vols, key)
      assert.equal(2, #on_disk, key)
      local z1, z2 = zones[on_disk[1].addr], zones[on_disk[2].addr]
      assert.are_not.equal(z1, z2, key .. " has both copies in " .. z1)
      for _, v in ipairs(on_disk) do
        assert.equal(body, H.read_file(v.root .. mkv.key_path(key)))
        per_zone[zones[v.addr]] = per_zone[zones[v.addr]] + 1
        per_vol[v.addr] = (per_vol[v.addr] or 0) + 1
      end
      -- Key-Volumes names exactly the two volumes holding the files ...
      local st, h = H.http("HEAD", m.url .. key)
      assert.equal(302, st, key)
      local listed = {}
      for v in (h["key-volumes"] or ""):gmatch("[^,]+") do listed[#listed + 1] = v end
      table.sort(listed)
      local want = { on_disk[1].addr, on_disk[2].addr }
      table.sort(want)
      assert.same(want, listed, key)
      -- ... in the order policies/zones.lua gives for this config.
      assert.equal(table.concat(Z.place(key, addrs, 2), ","), h["key-volumes"], key)
      local st2, _, got = H.http("GET", m.url .. key, { follow = true })
      assert.equal(200, st2)
      assert.equal(body, got)
    end
    -- Two zones, two replicas: every key has one copy in each zone.
    assert.same({ ["rack-a"] = 50, ["rack-b"] = 50 }, per_zone)
    local shown = {}
    for _, a in ipairs(addrs) do shown[#shown + 1] = string.format("%s(%s)=%d", a, zones[a], per_vol[a] or 0) end
    print("zones in a server: files per volume over 50 keys: " .. table.concat(shown, " "))
  end)

  it("handoff: a volume down, every copy still in a zone of its own; a whole zone down, 503", function()
    local json = require "json"
    local function state_of(addr)
      local _, _, body = H.http("GET", "http://" .. H.admin_addr(m.dir .. "/index") .. "/health")
      local doc = body and json.decode(body)
      return doc and doc.volumes and doc.volumes[addr] and doc.volumes[addr].state
    end
    local down = vols[1] -- rack-a
    down:stop()
    H.eventually(function() return state_of(down.addr) == "down" end, 10 * H.slow, "volume 1 down")
    for i = 1, 30 do
      local key = "/handoff/" .. i
      assert.equal(201, (H.http("PUT", m.url .. key, { body = key })), key)
      local on_disk = holders(vols, key)
      assert.equal(2, #on_disk, key)
      assert.are_not.equal(zones[on_disk[1].addr], zones[on_disk[2].addr], key .. ": two copies in one zone")
      for _, v in ipairs(on_disk) do assert.are_not.equal(down.addr, v.addr, key) end
    end
    -- rack-a entirely down: a second copy could only go to rack-b again, which the zones
    -- policy refuses; one copy is below the write quorum (2 of 2): 503, nothing written.
    vols[3]:stop()
    H.eventually(function() return state_of(vols[3].addr) == "down" end, 10 * H.slow, "volume 3 down")
    local st, _, body = H.http("PUT", m.url .. "/handoff/no-zone", { body = "x" })
    assert.equal(503, st, body)
    assert.equal(0, #holders(vols, "/handoff/no-zone"))
    vols[1] = H.restart_volume(down)
    vols[3] = H.restart_volume(vols[3])
  end)

  it("refuses to start with one zone only: exit 2, one line naming policies/zones.lua and the zone count",
     function()
    local one = {}
    for _, a in ipairs(addrs) do one[a] = "rack-a" end
    local code, out = run_server(function(db)
      return config(db, addrs, 2, "zones", "{ zones = " .. lua_table(one) .. " }")
    end)
    refused(code, out)
    assert.truthy(out:find("policies/zones.lua", 1, true), out)
    assert.truthy(out:find("2 replicas need 2 zones, the volumes span only 1", 1, true), out)
  end)

  it("refuses to start with a volume missing from the zones map (one the sample keys reach)", function()
    -- Which volume to leave out: one whose absence place() meets on a sample key, so this
    -- case does not depend on the ports the volumes happened to get.
    local missing
    for _, a in ipairs(addrs) do
      local z = {}
      for k, v in pairs(zones) do if k ~= a then z[k] = v end end
      local Z = load_policy("zones", { zones = z }, 2)
      for _, key in ipairs(SAMPLE_KEYS) do
        if not pcall(Z.place, key, addrs, 2) then missing = a end
      end
      if missing then break end
    end
    restore()
    assert.truthy(missing, "no volume is reached by the sample keys?")
    local z = {}
    for k, v in pairs(zones) do if k ~= missing then z[k] = v end end
    local code, out = run_server(function(db)
      return config(db, addrs, 2, "zones", "{ zones = " .. lua_table(z) .. " }")
    end)
    refused(code, out)
    assert.truthy(out:find("policies/zones.lua", 1, true), out)
    assert.truthy(out:find("volume " .. missing .. " has no zone", 1, true), out)
  end)

  -- The same configuration error, but the missing volume is one that none of the 7
  -- sample keys' zone walks reach. It is still a config that cannot serve every key: the
  -- keys whose walk does reach that volume cannot be placed. It must be refused at
  -- startup like the case above, not discovered by clients as 500s.
  it("refuses to start with a volume missing from the zones map, whichever keys reach it",
     function()
    -- A fifth volume address without a zone (nothing needs to listen there: the policy
    -- checks the volume list against the zones map when it loads, before any I/O).
    local extra = "127.0.0.1:20117"
    local all = { unpack(addrs) }
    all[5] = extra
    local unplaceable = "/unplaceable/1"

    local dir = H.tmpdir("zmiss")
    local p = H.start_mkv({ dir = dir, wait = false,
      config = config(dir .. "/index", all, 2, "zones", "{ zones = " .. lua_table(zones) .. " }") })
    local started = H.eventually(function()
      if not p:alive() then return "exited" end
      if H.port_open(p.port) then return "listening" end
    end, 10, "mkv to exit or listen")
    if started == "listening" then
      local st = H.http("PUT", p.url .. unplaceable, { body = "x" })
      p:stop()
      error(string.format("mkv started with %s missing from the zones map; a PUT of %s then "
        .. "answered %s", extra, unplaceable, tostring(st)))
    end
    local out = p:log():gsub("%s+$", "")
    refused(p.status.code, out)
    assert.truthy(out:find(extra, 1, true), out)
  end)
end)

describe("weighted policy in a server (3 volumes, weights 1, 1, 6, replicas 1)", function()
  local vols, addrs, weights, m
  setup(function()
    vols, addrs, weights = {}, {}, {}
    for i = 1, 3 do
      vols[i] = H.start_volume()
      addrs[i] = vols[i].addr
    end
    -- The heavy volume is the middle one (neither first nor last in the config).
    weights = { [addrs[1]] = 1, [addrs[2]] = 6, [addrs[3]] = 1 }
    local dir = H.tmpdir("weighted")
    m = H.start_mkv({ dir = dir, config = config(dir .. "/index", addrs, 1, "weighted",
                                                 "{ weights = " .. lua_table(weights) .. " }") })
  end)
  teardown(function()
    restore()
    H.cleanup()
  end)

  it("400 PUTs: the heavy volume holds the largest share, more than half of the files", function()
    local W = load_policy("weighted", { weights = weights }, 1)
    local count = {}
    for _, a in ipairs(addrs) do count[a] = 0 end
    local N = 400
    for i = 1, N do
      local key = "/w/" .. i
      assert.equal(201, (H.http("PUT", m.url .. key, { body = "v" .. i })), key)
      local on_disk = holders(vols, key)
      assert.equal(1, #on_disk, key)
      count[on_disk[1].addr] = count[on_disk[1].addr] + 1
      -- The volume the module picks for this config.
      assert.equal(W.place(key, addrs, 1)[1], on_disk[1].addr, key)
    end
    print(string.format("weighted in a server: files over %d keys: weight 1: %d, weight 6: %d, "
      .. "weight 1: %d (expected 50 / 300 / 50)", N, count[addrs[1]], count[addrs[2]], count[addrs[3]]))
    -- The heavy volume's count is Binomial(400, 6/8): mean 300, standard deviation
    -- sqrt(400 * 0.75 * 0.25) ~ 8.7. More than half (> 200) is 11 standard deviations
    -- below the mean, so a correct weighting never fails it; ignoring the weights (1/3,
    -- ~133 files) fails it by far.
    assert.truthy(count[addrs[2]] > N / 2, "heavy volume holds " .. count[addrs[2]])
    assert.truthy(count[addrs[2]] > count[addrs[1]] and count[addrs[2]] > count[addrs[3]])
  end)

  it("refuses a policy_config holding a function: exit 2, one line", function()
    local code, out = run_server(function(db)
      return config(db, addrs, 1, "weighted",
        string.format("{ weights = { [%q] = function() return 6 end } }", addrs[2]))
    end)
    refused(code, out)
    assert.truthy(out:find("policy_config", 1, true), out)
    assert.truthy(out:find("function", 1, true), out)
  end)

  for _, bad in ipairs({ { "0", "zero" }, { "-2", "negative" }, { '"6"', "a string" } }) do
    it("refuses a weight that is " .. bad[2] .. ": exit 2, one line naming policies/weighted.lua and "
       .. "the volume", function()
      local code, out = run_server(function(db)
        return config(db, addrs, 1, "weighted",
          string.format("{ weights = { [%q] = 1, [%q] = %s } }", addrs[1], addrs[2], bad[1]))
      end)
      refused(code, out)
      assert.truthy(out:find("policies/weighted.lua", 1, true), out)
      assert.truthy(out:find(addrs[2], 1, true), out)
      assert.truthy(out:find("must be a number above 0", 1, true), out)
    end)
  end
end)
