-- The README's operator procedures, run as written, against real nginx volumes and the
-- real binary: the admin scripts of "Writing an admin script", taken from README.md
-- itself (an example that drifts from what index_scan and record_decode really return
-- fails here), the record format it gives for an index_scan entry, and the steps of
-- "Decommissioning a volume" (Operations, "Day-to-day").
local H = require "helpers"
local json = require "json"

-- The text of README.md from the heading `heading` (its whole line) to the next heading
-- of the same level or above.
local function readme_section(heading)
  local text = assert(H.read_file(H.root .. "/README.md"))
  local level = #heading:match("^(#+) ")
  local out, inside = {}, false
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local hashes = line:match("^(#+) ")
    if inside and hashes and #hashes <= level then break end
    if line == heading then inside = true end
    if inside then out[#out + 1] = line end
  end
  assert(inside, "README.md has no heading " .. heading)
  return table.concat(out, "\n")
end

-- The ```lua blocks of a README section whose first line is "-- NAME.lua: ...",
-- by NAME.lua.
local function lua_scripts(section)
  local out = {}
  for code in section:gmatch("```lua\n(.-)```") do
    local name = code:match("^%-%- ([%w_]+%.lua):")
    if name then out[name] = code end
  end
  return out
end

-- The command's summary, "NAME: examined N, changed N, failed N, skipped N; ...": the
-- last such line of its output.
local function summary(out)
  local t
  for c, f, s in out:gmatch("examined %d+, changed (%d+), failed (%d+), skipped (%d+);") do
    t = { changed = tonumber(c), failed = tonumber(f), skipped = tonumber(s) }
  end
  return t
end

describe("README operations", function()
  local vols, m, cfgpath, db, base, scripts, dir
  local values, unlinked, where = {}, {}, {}

  local function config(extra)
    local addrs = {}
    for _, v in ipairs(vols) do addrs[#addrs + 1] = string.format("%q", v.addr) end
    return string.format([[
return {
  db = %q,
  volumes = { %s },
  replicas = 2,
  subvolumes = 3,
  %s
}]], db, table.concat(addrs, ", "), extra or "")
  end

  local function reload(text)
    H.write_file(cfgpath, text)
    assert.is_true(H.T.kill(m.pid, 1))
  end

  local function health()
    local st, _, body = H.http("GET", "http://" .. H.admin_addr(db) .. "/health")
    assert.equal(200, st, body)
    return json.decode(body), body
  end

  local function admin(args, timeout)
    local argv = { "-c", cfgpath }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return H.run_mkv(argv, timeout or 60)
  end

  -- The files on a volume's disk, but the probe's.
  local function files_on(v)
    return H.volume_files(v)
  end

  setup(function()
    scripts = lua_scripts(readme_section("### Writing an admin script"))
    vols = {}
    for i = 1, 4 do vols[i] = H.start_volume() end
    dir = H.tmpdir("readme-ops")
    db = H.tmpdir("db") .. "/index"
    cfgpath = dir .. "/config.lua"
    base = config()
    m = H.start_mkv({ config = base, config_path = cfgpath })
    for i = 1, 40 do
      local key = string.format("/ops/k%02d", i)
      values[key] = string.rep(string.char(64 + i % 26), 1000 + i)
      assert.equal(201, (H.http("PUT", m.url .. key, { body = values[key] })))
      local _, h = H.http("HEAD", m.url .. key)
      where[key] = "," .. h["key-volumes"] .. "," -- the record's volumes, as the API says
    end
    for i = 1, 40, 8 do
      local key = string.format("/ops/k%02d", i)
      assert.equal(204, (H.http("UNLINK", m.url .. key)))
      unlinked[key] = true
    end
  end)
  teardown(H.cleanup)

  it("the admin-script examples of the README run and say what the README says", function()
    assert.truthy(scripts["count.lua"], "no count.lua example in the README")
    assert.truthy(scripts["on_volume.lua"], "no on_volume.lua example in the README")
    H.write_file(dir .. "/count.lua", scripts["count.lua"])
    H.write_file(dir .. "/on_volume.lua", scripts["on_volume.lua"])
    local code, out = admin({ "run", dir .. "/count.lua" })
    assert.equal(0, code, out)
    assert.truthy(("\n" .. out):find("\n40 records\n", 1, true), out)
    -- on_volume.lua names exactly the keys whose Key-Volumes hold the volume, live or not
    local v = vols[1].addr
    local want, nwant = {}, 0
    for key in pairs(values) do
      if where[key]:find("," .. v .. "/", 1, true) then
        want[key] = true
        nwant = nwant + 1
      end
    end
    assert.is_true(nwant > 0, "volume 1 holds no copy: the test proves nothing")
    code, out = admin({ "run", dir .. "/on_volume.lua", v })
    assert.equal(0, code, out)
    assert.truthy(out:find(nwant .. " records name " .. v, 1, true), out)
    for key in pairs(values) do
      local line = out:match("\n(" .. key:gsub("%p", "%%%0") .. "[^\n]*)\n")
      if want[key] then
        assert.truthy(line, key .. " not listed:\n" .. out)
        assert.equal(unlinked[key] and key .. " (not live)" or key, line)
      else
        assert.is_nil(line, out)
      end
    end
  end)

  it("an index_scan entry is { key, record bytes } in the format the README gives", function()
    H.write_file(dir .. "/scan.lua", [[
local page = assert(mkv.index_scan("/ops/k01", 2, "/ops/k0"))
for _, e in ipairs(page) do mkv.report(#e .. " " .. e[1] .. "=" .. e[2]) end
local rec = assert(mkv.record_decode(page[1][2]))
mkv.report("decoded " .. tostring(rec.deleted) .. " " .. tostring(rec.writing) .. " " ..
  rec.hash .. " " .. table.concat(rec.volumes, ","))
]])
    local code, out = admin({ "run", dir .. "/scan.lua" })
    assert.equal(0, code, out)
    local function vols(key) return where[key]:sub(2, -2) end
    assert.truthy(unlinked["/ops/k01"] and not unlinked["/ops/k02"])
    -- unlinked: DELETED, then HASH and the MD5, then the volumes; live: no DELETED
    local function has(line) return out:find("\n" .. line .. "\n", 1, true) end
    local md5 = { H.md5_hex(values["/ops/k01"]), H.md5_hex(values["/ops/k02"]) }
    assert.truthy(has("2 /ops/k01=DELETEDHASH" .. md5[1] .. vols("/ops/k01")), out)
    assert.truthy(has("2 /ops/k02=HASH" .. md5[2] .. vols("/ops/k02")), out)
    assert.truthy(has("decoded true nil " .. md5[1] .. " " .. vols("/ops/k01")), out)
  end)

  it("decommissioning a volume, step by step: nothing needs it, every key reads back", function()
    local x = vols[1]
    local before = #files_on(x)
    assert.is_true(before > 0, "volume 1 holds no copy: the test proves nothing")
    -- 1. drain it, and reload
    reload(config(string.format("volume_state = { [%q] = \"drain\" },", x.addr)))
    H.eventually(function()
      local doc, body = health()
      return doc.volumes[x.addr] and doc.volumes[x.addr].state == "drain", body
    end, 10 * H.slow, "the volume draining")
    -- 2. rebalance, again until nothing failed or was skipped
    local s, out, code
    for _ = 1, 5 do
      code, out = admin({ "rebalance" }, 120)
      s = summary(out)
      assert.truthy(s, out)
      if code == 0 and s.failed == 0 and s.skipped == 0 then break end
    end
    assert.same({ 0, 0 }, { s.failed, s.skipped }, out)
    assert.equal(0, code, out)
    -- 3. no record needs it: the dry run has nothing to do, the script finds no record
    code, out = admin({ "rebalance", "--dry-run" })
    assert.equal(0, code, out)
    assert.same({ changed = 0, failed = 0, skipped = 0 }, summary(out), out)
    H.write_file(dir .. "/on_volume.lua", scripts["on_volume.lua"])
    code, out = admin({ "run", dir .. "/on_volume.lua", x.addr })
    assert.equal(0, code, out)
    assert.truthy(out:find("0 records name " .. x.addr, 1, true), out)
    -- after the grace period the copies are gone from its disk
    H.eventually(function()
      local left = files_on(x)
      return #left == 0, table.concat(left, "\n")
    end, 20 * H.slow, "the drained volume's files deleted")
    -- 4. out of volumes and volume_state, reload
    local rest = {}
    for i = 2, #vols do rest[#rest + 1] = vols[i] end
    vols = rest
    reload(config())
    H.eventually(function()
      local doc, body = health()
      return doc.volumes[x.addr] == nil and doc.status == "ok", body
    end, 10 * H.slow, "the volume gone from /health")
    x:stop()
    for key, value in pairs(values) do
      local st, _, got = H.http("GET", m.url .. key, { follow = true })
      if unlinked[key] then
        assert.equal(404, st, key)
      else
        assert.same({ 200, value }, { st, got }, key)
      end
    end
    code, out = admin({ "verify", "--deep" })
    assert.equal(0, code, out)
  end)
end)
