-- Handing the index back to the Go original: after mkv has served the Go original's
-- cluster and written to it, goleveldb -- opened exactly as minikeyvalue opens it --
-- must see every record mkv wrote, byte for byte, in the original's format. Also after a
-- kill -9 followed by `mkv index-flush` (goleveldb drops journal records written by C++
-- LevelDB otherwise: library-facts §4.1). And the two must never have the index open at
-- once: mkv takes goleveldb's flock.
local H = require "helpers"
local json = require "json"
local mkvlib = require "mkv"
local T = H.T

local fixture = H.root .. "/spec/fixtures/go-original"
local manifest = json.decode(H.read_file(fixture .. "/manifest.json"))

local function hex(s) return mkvlib.hex(s) end
local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- The records of the Go original's format: DELETED?, HASH + 32 hex?, then volumes
-- "host:port[/svXX]" joined by ','.
local function go_format(v)
  local rest = v:gsub("^DELETED", "")
  rest = rest:gsub("^HASH%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x", "")
  for vol in (rest .. ","):gmatch("([^,]*),") do
    if not vol:match("^[%w%.%-]+:%d+$") and not vol:match("^[%w%.%-]+:%d+/sv%x%x+$") then
      return false, vol
    end
  end
  return true
end

describe("handing the index back to the Go original", function()
  local dir, tool, url, m, flags

  local function go_dump()
    return H.go_dump(tool, dir .. "/index")
  end

  local function start()
    m = H.start_mkv({ flags = flags })
    url = m.url
  end

  setup(function()
    dir = H.tmpdir("handover")
    tool = H.go_tool(dir)
    local out, code = H.sh("tar xzf " .. H.shq(fixture .. "/data.tar.gz") .. " -C " .. H.shq(dir) ..
      " && chmod -R a+rwX " .. H.shq(dir))
    assert(code == 0, out)
    for _, v in ipairs(manifest.volumes) do
      H.start_volume({ port = tonumber(v.address:match(":(%d+)$")), root = dir .. "/" .. v.dir,
                       state = dir .. "/." .. v.dir .. ".nginx" })
    end
    flags = {}
    for _, f in ipairs(manifest.flags) do flags[#flags + 1] = f end
    flags[#flags + 1] = "-db"
    flags[#flags + 1] = dir .. "/index"
  end)
  teardown(H.cleanup)

  -- What the index must hold: the fixture's records, then what mkv did to them.
  local expected = {}
  for _, k in ipairs(manifest.keys) do
    if type(k.record) == "string" then expected[unhex(k.key_hex)] = k.record end
  end

  local function by_state(state, n)
    local out = {}
    for _, k in ipairs(manifest.keys) do
      if k.state == state and #out < n and k.size > 0 then out[#out + 1] = k end
    end
    return out
  end

  it("sees every record mkv wrote after a clean stop, in the original's format", function()
    -- Go -> mkv: the Go original's records, read by goleveldb before mkv touches them.
    local before, nbefore = go_dump()
    assert.equal(#(function() local t = {} for k in pairs(expected) do t[#t + 1] = k end return t end)(), nbefore)
    for k, v in pairs(expected) do assert.equal(v, before[k]) end

    start()
    -- New keys, each record as mkv wrote it: HASH + md5 + placement.
    for i = 1, 20 do
      local key = string.format("/handover/new-%02d", i)
      local body = string.rep("v" .. i, 100)
      assert.equal(201, (H.http("PUT", url .. key, { body = body })))
      local _, h = H.http("HEAD", url .. key)
      expected[key] = "HASH" .. mkvlib.md5_hex(body) .. h["key-volumes"]
    end
    -- Old live keys unlinked and deleted; an old unlinked key deleted, another re-put.
    local live = by_state("live", 4)
    assert.equal(204, (H.http("UNLINK", url .. live[1].url_path)))
    expected[unhex(live[1].key_hex)] = "DELETED" .. live[1].record
    assert.equal(204, (H.http("DELETE", url .. live[2].url_path)))
    expected[unhex(live[2].key_hex)] = nil
    local unlinked = by_state("unlinked", 2)
    assert.equal(204, (H.http("DELETE", url .. unlinked[1].url_path)))
    expected[unhex(unlinked[1].key_hex)] = nil
    assert.equal(201, (H.http("PUT", url .. unlinked[2].url_path, { body = "again" })))
    local _, h = H.http("HEAD", url .. unlinked[2].url_path)
    expected[unhex(unlinked[2].key_hex)] = "HASH" .. mkvlib.md5_hex("again") .. h["key-volumes"]
    -- A failed write of the original's, deleted through mkv (its record goes).
    local failed = by_state("failed", 1)[1] or manifest.keys[1]
    if failed.state == "failed" then
      assert.equal(204, (H.http("DELETE", url .. failed.url_path)))
      expected[unhex(failed.key_hex)] = nil
    end

    assert.equal(0, m:stop().code)
    -- mkv -> Go: goleveldb sees exactly the expected records, nothing else.
    local after, nafter = go_dump()
    local nexp = 0
    for k, v in pairs(expected) do
      nexp = nexp + 1
      assert.equal(hex(v), hex(after[k] or ""), "record of " .. k)
    end
    assert.equal(nexp, nafter)
    for k, v in pairs(after) do
      local ok, bad = go_format(v)
      assert.is_true(ok, "record of " .. k .. " is not in the original's format: " .. tostring(bad))
    end
  end)

  it("sees every record after a kill -9 followed by mkv index-flush", function()
    start()
    for i = 1, 50 do
      local key = string.format("/handover/crash-%02d", i)
      assert.equal(201, (H.http("PUT", url .. key, { body = "c" .. i })))
      local _, h = H.http("HEAD", url .. key)
      expected[key] = "HASH" .. mkvlib.md5_hex("c" .. i) .. h["key-volumes"]
    end
    m:kill9()
    local code, out = H.run_mkv({ "-db", dir .. "/index", "index-flush" })
    assert.equal(0, code, out)
    assert.truthy(out:find("flushed", 1, true))
    local after, nafter = go_dump()
    local nexp = 0
    for k, v in pairs(expected) do
      nexp = nexp + 1
      assert.equal(hex(v), hex(after[k] or ""), "record of " .. k)
    end
    assert.equal(nexp, nafter)
  end)

  it("serves again what goleveldb has opened and closed (Go -> mkv -> Go -> mkv)", function()
    start()
    for k, v in pairs(expected) do
      if not v:match("^DELETED") then
        local st = H.http("HEAD", url .. H.urlencode_path(k))
        assert.equal(302, st, k)
      end
    end
    assert.equal(0, m:stop().code)
  end)

  it("refuses to open the index while the Go original holds it, and the other way round", function()
    -- goleveldb holds it (its flock): mkv must not open it, and says why.
    local fifo = dir .. "/hold.in"
    H.sh("mkfifo " .. H.shq(fifo))
    local holder = H.spawn("goleveldb-hold", { "sh", "-c", H.shq(tool) .. " hold " ..
      H.shq(dir .. "/index") .. " < " .. H.shq(fifo) })
    local feeder = H.spawn("feeder", { "sh", "-c", "exec sleep 30 > " .. H.shq(fifo) })
    H.eventually(function() return holder:log():find("held", 1, true) end, 10, "goleveldb holding the index")
    local code, out = H.run_mkv({ "-volumes", manifest.flags[2], "-db", dir .. "/index",
      "-port", tostring(H.free_port()), "-listen", "127.0.0.1", "server" })
    assert.equal(1, code)
    assert.truthy(out:find("in use by another process", 1, true), out)
    feeder:kill9() -- its stdin closes: goleveldb closes the index and exits
    holder.status = T.wait(holder.pid, 5 * H.slow)
    assert.truthy(holder.status, "goleveldb_tool hold did not exit")
    -- mkv holds it: goleveldb cannot open it (the Go original would panic the same way).
    start()
    local gout, gcode = H.sh(H.shq(tool) .. " dump " .. H.shq(dir .. "/index"))
    assert.is_not.equal(0, gcode)
    assert.truthy(gout:find("resource temporarily unavailable", 1, true), gout)
    assert.equal(0, m:stop().code)
  end)
end)
