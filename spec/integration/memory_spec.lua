-- Memory per transfer is constant: a 1 GB PUT streams to three replicas without growing
-- mkv's resident memory by more than a few MB (the Go original grew by 2 GB).
local H = require "helpers"

-- 8 MB: mkv keeps at most limits.high_water_kb (4 MiB) of a body in flight, plus one
-- 64 KiB read buffer per worker and the connections' small buffers. More than that
-- means some part of the body is being held.
local MAX_GROWTH_KB = 8 * 1024

describe("a 1 GB PUT", function()
  local c, dir
  setup(function()
    c = H.cluster({ n = 3, replicas = 3 })
    dir = H.tmpdir("big")
  end)
  teardown(H.cleanup)

  local function hwm() return H.proc_status(c.mkv.pid, "VmHWM") end

  it("streams to 3 replicas with flat memory (Content-Length)", function()
    -- Warm up: the first requests allocate pools, parsers and Lua state.
    for i = 1, 5 do assert.equal(201, (H.http("PUT", c.url .. "/warm" .. i, { body = "w" }))) end
    local file = dir .. "/1g"
    H.sh("truncate -s 1G " .. file)
    local md5 = H.sh("md5sum " .. file):match("^(%x+)")
    local before = hwm()
    assert.equal(201, (H.http("PUT", c.url .. "/big", { file = file, timeout = 600 })))
    local growth = hwm() - before
    print(string.format("\n# 1 GB PUT, replicas 3: mkv VmHWM %d kB -> %d kB (+%d kB)",
      before, before + growth, growth))
    assert.is_true(growth <= MAX_GROWTH_KB, "VmHWM grew by " .. growth .. " kB")
    local _, h = H.http("HEAD", c.url .. "/big")
    assert.equal(md5, h["content-md5"])
    for _, v in ipairs(c.volumes) do
      local out = H.sh("find " .. H.shq(v.root) .. " -type f -size +1000000k | wc -l")
      assert.equal(1, tonumber(out))
    end
    assert.equal(204, (H.http("DELETE", c.url .. "/big")))
  end)

  it("streams a 256 MB chunked body with flat memory", function()
    local file = dir .. "/256m"
    H.sh("truncate -s 256M " .. file)
    local before = hwm()
    local out = H.sh("curl -sS -o /dev/null -w '%{http_code}' -H 'Transfer-Encoding: chunked' -T - "
      .. H.shq(c.url .. "/bigchunked") .. " < " .. H.shq(file))
    assert.equal("201", out)
    local growth = hwm() - before
    assert.is_true(growth <= MAX_GROWTH_KB, "VmHWM grew by " .. growth .. " kB")
    local st, h = H.http("HEAD", c.url .. "/bigchunked", { follow = true })
    assert.equal(200, st)
    assert.equal(tostring(256 * 1024 * 1024), h["content-length"])
    assert.equal(204, (H.http("DELETE", c.url .. "/bigchunked")))
  end)
end)
