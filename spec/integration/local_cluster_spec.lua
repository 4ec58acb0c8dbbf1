-- deploy/local-cluster as a new user runs it: PORT= and DIR=, a config.lua that survives
-- its edits across starts, and clear refusals of a bad PORT or a kept config written for
-- another one. The script runs deploy/setup first (packages present: a no-op; the build
-- is incremental) and then the real build/mkv and three real nginx volumes.
local H = require "helpers"

-- A port with the next three free too: mkv on p, the volumes on p+1..p+3.
local function four_free_ports()
  for _ = 1, 50 do
    local p = H.free_port()
    if p < 65530 and not (H.port_open(p + 1) or H.port_open(p + 2) or H.port_open(p + 3)) then
      return p
    end
  end
  error("no four consecutive free ports")
end

local function start(dir, port)
  local p = H.spawn("local-cluster", { H.root .. "/deploy/local-cluster" },
    { env = { DIR = dir, PORT = tostring(port) } })
  H.eventually(function()
    if not p:alive() then error("local-cluster exited: " .. p:log()) end
    local st = H.http("GET", "http://127.0.0.1:" .. port .. "/?list")
    return st == 200
  end, 120, "local-cluster's mkv on port " .. port)
  return p
end

local function run_refused(dir, port)
  local out, code = H.sh(string.format("DIR=%q PORT=%q %s/deploy/local-cluster",
    dir, tostring(port), H.root))
  return code, out
end

describe("deploy/local-cluster", function()
  teardown(H.cleanup)

  it("runs mkv on PORT with the volumes on the next three, and keeps an edited config", function()
    local dir = H.tmpdir("lc") .. "/cluster"
    local port = four_free_ports()
    local p = start(dir, port)
    local url = "http://127.0.0.1:" .. port
    assert.equal(201, (H.http("PUT", url .. "/wehave", { body = "bigswag" })))
    local st, h = H.http("GET", url .. "/wehave")
    assert.equal(302, st)
    local vport = tonumber(h.location:match("^http://127%.0%.0%.1:(%d+)/"))
    assert.truthy(vport and vport > port and vport <= port + 3, h.location)
    local _, _, body = H.http("GET", url .. "/wehave", { follow = true })
    assert.equal("bigswag", body)
    local cfg = H.read_file(dir .. "/config.lua")
    assert.truthy(cfg:find("port = " .. port, 1, true), cfg)
    assert.truthy(cfg:find("127.0.0.1:" .. (port + 3), 1, true), cfg)
    -- SIGTERM: mkv drains, the volumes stop after it; the script exits 143.
    assert.equal(143, p:stop(60).code)

    -- The operator's edit: every key on all three volumes, and a comment of their own.
    local edited = "-- my note: three copies\n" .. cfg:gsub("replicas = 2", "replicas = 3")
    assert.truthy(edited:find("replicas = 3", 1, true))
    H.write_file(dir .. "/config.lua", edited)
    p = start(dir, port)
    assert.equal(edited, H.read_file(dir .. "/config.lua"))
    assert.truthy(p:log():find("keeping " .. dir .. "/config.lua", 1, true), p:log())
    assert.equal(201, (H.http("PUT", url .. "/three", { body = "x" })))
    local _, hh = H.http("HEAD", url .. "/three")
    local n = select(2, hh["key-volumes"]:gsub(",", ",")) + 1
    assert.equal(3, n, hh["key-volumes"])
    -- The first key is still there, read through the kept config.
    local _, _, again = H.http("GET", url .. "/wehave", { follow = true })
    assert.equal("bigswag", again)
    assert.equal(143, p:stop(60).code)
    for i = 1, 3 do assert.is_false(H.port_open(port + i)) end

    -- Another PORT with the kept config: refused before anything starts.
    local code, out = run_refused(dir, port + 10)
    assert.equal(2, code)
    assert.truthy(out:find("was written for PORT=" .. port, 1, true), out)
  end)

  it("refuses a PORT that is not a port", function()
    local dir = H.tmpdir("lc") .. "/bad"
    for _, bad in ipairs({ "abc", "0", "65534", "30x0" }) do
      local code, out = run_refused(dir, bad)
      assert.equal(2, code, bad)
      assert.truthy(out:find("PORT must be", 1, true), out)
    end
    assert.is_nil(H.read_file(dir .. "/config.lua"))
  end)
end)
