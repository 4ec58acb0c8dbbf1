-- The operator example policies/tmp_one_replica.lua: one copy of scratch data under
-- /tmp/, the configured count of everything else. Loaded by name as a built-in policy,
-- and from an operator's own copy in <configdir>/policies/ (the default policy_path).
local H = require "helpers"
local mkv = require "mkv"

local function config(db, addrs, extra)
  return string.format([[
return {
  db = %q,
  volumes = { %q, %q, %q },
  replicas = 3,
  subvolumes = 1,
  policies = { replicas = "tmp_one_replica" },
  %s
}]], db, addrs[1], addrs[2], addrs[3], extra or "")
end

-- The volumes whose data root holds the key's file (subvolumes 1: <root><path>).
local function holders(vols, key)
  local out = {}
  for _, v in ipairs(vols) do
    local data = H.read_file(v.root .. mkv.key_path(key))
    if data then out[#out + 1] = { addr = v.addr, data = data } end
  end
  return out
end

local function count_entries(s)
  local n = 0
  for _ in (s or ""):gmatch("[^,]+") do n = n + 1 end
  return n
end

for _, mode in ipairs({ "built in", "operator's copy" }) do
  describe("tmp_one_replica (" .. mode .. ")", function()
    local vols, m
    setup(function()
      vols = {}
      local addrs = {}
      for i = 1, 3 do
        vols[i] = H.start_volume()
        addrs[i] = vols[i].addr
      end
      local dir = H.tmpdir("cp")
      if mode == "operator's copy" then
        -- Found through the default policy_path, <configdir>/policies/?.lua, before the
        -- built-in policies.
        H.sh("mkdir -p " .. H.shq(dir .. "/policies"))
        H.write_file(dir .. "/policies/tmp_one_replica.lua",
          assert(H.read_file(H.root .. "/policies/tmp_one_replica.lua")))
      end
      m = H.start_mkv({ dir = dir, config = config(dir .. "/index", addrs) })
    end)
    teardown(H.cleanup)

    it("a PUT under /tmp/ lands on exactly one volume", function()
      assert.equal(201, (H.http("PUT", m.url .. "/tmp/x", { body = "scratch" })))
      local st, h = H.http("GET", m.url .. "/tmp/x")
      assert.equal(302, st)
      assert.equal(1, count_entries(h["key-volumes"]), h["key-volumes"])
      assert.equal("balanced", h["key-balance"])
      local on_disk = holders(vols, "/tmp/x")
      assert.equal(1, #on_disk)
      assert.equal("scratch", on_disk[1].data)
      assert.equal(h["key-volumes"], on_disk[1].addr)
      -- The single copy is the default placement's first choice.
      local addrs = {}
      for i, v in ipairs(vols) do addrs[i] = v.addr end
      local scores = mkv.md5_scores("/tmp/x", addrs)
      local best = 1
      for i = 2, #addrs do if scores[i] > scores[best] then best = i end end
      assert.equal(addrs[best], h["key-volumes"])
      local st2, _, body = H.http("GET", m.url .. "/tmp/x", { follow = true })
      assert.equal(200, st2)
      assert.equal("scratch", body)
    end)

    it("a PUT elsewhere lands on all three", function()
      assert.equal(201, (H.http("PUT", m.url .. "/data/x", { body = "precious" })))
      local st, h = H.http("GET", m.url .. "/data/x")
      assert.equal(302, st)
      assert.equal(3, count_entries(h["key-volumes"]), h["key-volumes"])
      local on_disk = holders(vols, "/data/x")
      assert.equal(3, #on_disk)
      for _, f in ipairs(on_disk) do assert.equal("precious", f.data) end
    end)

    it("only the /tmp/ prefix counts (/tmpx, /tmp without a slash get 3)", function()
      for _, key in ipairs({ "/tmpx/y", "/tmp" }) do
        assert.equal(201, (H.http("PUT", m.url .. key, { body = "z" })))
        local _, h = H.http("HEAD", m.url .. key)
        assert.equal(3, count_entries(h["key-volumes"]), key)
        assert.equal(3, #holders(vols, key), key)
      end
    end)

    it("DELETE of a one-copy key removes its one file", function()
      assert.equal(201, (H.http("PUT", m.url .. "/tmp/gone", { body = "g" })))
      assert.equal(1, #holders(vols, "/tmp/gone"))
      assert.equal(204, (H.http("DELETE", m.url .. "/tmp/gone")))
      assert.equal(0, #holders(vols, "/tmp/gone"))
      assert.equal(404, (H.http("GET", m.url .. "/tmp/gone")))
    end)
  end)
end

describe("tmp_one_replica: the operator's copy wins over the built-in one", function()
  teardown(H.cleanup)

  it("a broken copy in <configdir>/policies/ is the one mkv loads", function()
    local dir = H.tmpdir("cp")
    H.sh("mkdir -p " .. H.shq(dir .. "/policies"))
    H.write_file(dir .. "/policies/tmp_one_replica.lua", 'error("the operator\'s copy was loaded")')
    local cfg = H.write_file(dir .. "/config.lua",
      config(dir .. "/index", { "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3" }))
    local code, out = H.run_mkv({ "-c", cfg, "-port", tostring(H.free_port()), "-listen",
                                  "127.0.0.1", "server" })
    out = out:gsub("%s+$", "")
    assert.are_not.equal(0, code)
    assert.is_nil(out:find("\n"), out)
    assert.truthy(out:find(dir .. "/policies/tmp_one_replica.lua", 1, true), out)
    assert.truthy(out:find("the operator's copy was loaded", 1, true), out)
  end)
end)
