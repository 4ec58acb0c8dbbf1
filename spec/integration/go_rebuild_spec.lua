-- mkv rebuild over the Go original's volumes: the records it rebuilds for the live keys
-- are byte for byte the ones the Go original wrote (with --md5: the hash too), keys in
-- nested directories included -- which the original's own rebuild loses.
local H = require "helpers"
local json = require "json"

local fixture = H.root .. "/spec/fixtures/go-original"
local manifest = json.decode(H.read_file(fixture .. "/manifest.json"))

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

describe("mkv rebuild over the Go original's volumes", function()
  local dir, tool
  setup(function()
    dir = H.tmpdir("gorebuild")
    local out, code = H.sh("tar xzf " .. H.shq(fixture .. "/data.tar.gz") .. " -C " .. H.shq(dir) ..
      " && chmod -R a+rwX " .. H.shq(dir))
    assert(code == 0, out)
    for _, v in ipairs(manifest.volumes) do
      H.start_volume({ port = tonumber(v.address:match(":(%d+)$")), root = dir .. "/" .. v.dir,
                       state = dir .. "/." .. v.dir .. ".nginx" })
    end
    tool = dir .. "/goleveldb_tool"
    out, code = H.sh("cd " .. H.shq(H.root) .. " && GO111MODULE=off GOPATH=/usr/share/gocode " ..
      "GOCACHE=" .. H.shq(dir .. "/gocache") .. " go build -o " .. H.shq(tool) ..
      " spec/go/goleveldb_tool.go")
    assert(code == 0, "go build: " .. out)
  end)
  teardown(H.cleanup)

  it("rebuilds every live key's record exactly as the original wrote it", function()
    local args = {}
    for _, f in ipairs(manifest.flags) do args[#args + 1] = f end
    for _, x in ipairs({ "-db", dir .. "/rebuilt", "rebuild", "--md5" }) do args[#args + 1] = x end
    local code, out = H.run_mkv(args, 120)
    assert.equal(0, code, out)
    -- Read back what goleveldb sees: the Go original could open this index as it is.
    local recs = H.go_dump(tool, dir .. "/rebuilt")
    local live, nested = 0, 0
    for _, k in ipairs(manifest.keys) do
      local key = unhex(k.key_hex)
      if k.state == "live" then
        live = live + 1
        assert.equal(k.record, recs[key], "record of " .. k.key_hex)
        if k.path:sub(8):find("/", 1, true) then nested = nested + 1 end
      elseif k.state == "deleted" then
        assert.is_nil(recs[key], "a deleted key came back: " .. k.key_hex)
      end
    end
    assert.equal(manifest.counts.live, live)
    assert.is_true(nested > 0, "the fixture has keys in nested directories")
  end)
end)
