-- What a new operator reads when the config is wrong, and what the log says when it is
-- right (issue 24): a misspelt field or flag names the one meant, counts read "1 volume",
-- and the startup log names the policies as the reload line does.
local H = require "helpers"

local function plain(s) return (s:gsub("%p", "%%%0")) end

-- The lines of `log` holding `needle` (plain text).
local function lines_with(log, needle)
  local out = {}
  for l in log:gmatch("[^\n]+") do
    if l:find(needle, 1, true) then out[#out + 1] = l end
  end
  return out
end

describe("config errors", function()
  local dir, vol
  setup(function()
    dir = H.tmpdir("cfgerr")
    vol = H.start_volume()
  end)
  teardown(H.cleanup)

  it("a misspelt field in the config file names the field meant", function()
    local cfg = H.write_file(dir .. "/volums.lua", string.format(
      'return { db = %q, volums = { %q }, replicas = 1 }', dir .. "/db1", vol.addr))
    local code, out = H.run_mkv({ "-c", cfg, "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find(plain('unknown field "volums" (did you mean "volumes"?)')), out)
    assert.truthy(out:find(cfg, 1, true), out)
  end)

  it("and inside a table the validator knows", function()
    local cfg = H.write_file(dir .. "/limits.lua", string.format(
      'return { db = %q, volumes = { %q }, replicas = 1, limits = { idle_timout = "5s" } }',
      dir .. "/db2", vol.addr))
    local code, out = H.run_mkv({ "-c", cfg, "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find(plain('unknown field "idle_timout" (did you mean "idle_timeout"?)')), out)
  end)

  it("a field nothing is near gets no guess", function()
    local cfg = H.write_file(dir .. "/colour.lua", string.format(
      'return { db = %q, volumes = { %q }, replicas = 1, colour = "red" }', dir .. "/db3", vol.addr))
    local code, out = H.run_mkv({ "-c", cfg, "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find('unknown field "colour"', 1, true), out)
    assert.is_nil(out:find("did you mean", 1, true), out)
  end)

  it("a misspelt flag names the flag meant", function()
    local code, out = H.run_mkv({ "-volums", vol.addr, "-db", dir .. "/db4", "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find("flag provided but not defined: -volums (did you mean -volumes?)", 1, true), out)
    code, out = H.run_mkv({ "--verbose", "-volumes", vol.addr, "-db", dir .. "/db4", "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find("-verbose (did you mean -v?)", 1, true), out)
    code, out = H.run_mkv({ "-colour", "red", "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find("flag provided but not defined: -colour\n", 1, true), out)
  end)

  it("one volume is \"1 volume\"", function()
    local code, out = H.run_mkv({ "-volumes", vol.addr, "-db", dir .. "/db5", "-replicas", "2",
                                  "server" })
    assert.equal(2, code, out)
    assert.truthy(out:find("replicas is 2 but there is only 1 volume (", 1, true), out)
  end)
end)

describe("the startup log", function()
  local m, vol, cfgpath
  setup(function()
    vol = H.start_volume()
    local dir = H.tmpdir("cfglog")
    cfgpath = dir .. "/config.lua"
    m = H.start_mkv({ dir = dir, config_path = cfgpath, flags = { "-workers", "1" },
                      config = string.format('return { db = %q, volumes = { %q }, replicas = 1, '
                        .. 'policies = { replicas = "tmp_one_replica" } }', dir .. "/index", vol.addr) })
  end)
  teardown(H.cleanup)

  it("names the policies of every kind, in the words of the reload line", function()
    local want = "policies placement=default replicas=tmp_one_replica listing=default "
      .. "rebalance=default read=default"
    local log = H.eventually(function()
      local l = m:log()
      return #lines_with(l, want) > 0 and l or nil, l
    end, 10, "the startup log's policies line")
    assert.equal(1, #lines_with(log, want), log)
    assert.equal(1, #lines_with(log, "serving on 127.0.0.1:" .. m.port .. " with 1 worker; volumes:"), log)

    assert.is_true(m:signal(1))
    log = H.eventually(function()
      local l = m:log()
      return #lines_with(l, "reloaded ") > 0 and l or nil, l
    end, 10, "the reload line")
    local reload = lines_with(log, "reloaded ")[1]
    assert.truthy(reload:find("reloaded " .. cfgpath .. ": 1 volume, replicas 1; " .. want, 1, true), reload)
  end)
end)
