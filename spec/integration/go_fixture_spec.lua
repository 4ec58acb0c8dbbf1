-- The Go original's own cluster, served by mkv as it is: spec/fixtures/go-original holds
-- an index and three nginx volumes written by minikeyvalue@451d248 through its HTTP API,
-- and a manifest of every key (state, bytes, record, placement, what Go answered). The
-- volumes listen on the manifest's exact addresses (they are part of every record and of
-- the placement hash) and mkv runs with the manifest's flags on the unpacked index.
local H = require "helpers"
local json = require "json"
local mkvlib = require "mkv"

local fixture = H.root .. "/spec/fixtures/go-original"
local manifest = json.decode(H.read_file(fixture .. "/manifest.json"))

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local function show(k)
  return (k.key_hex and unhex(k.key_hex) or "?"):gsub("[^%w%p ]", "?")
end

-- Keys in index (byte) order, as LevelDB's bytewise comparator sorts them.
local function byte_order(keys)
  table.sort(keys, function(a, b) return unhex(a.key_hex) < unhex(b.key_hex) end)
  return keys
end

local function listing_keys(body)
  local t = json.decode(body)
  return t.keys, t.next
end

describe("the Go original's cluster served by mkv", function()
  local url, dir
  setup(function()
    dir = H.tmpdir("gofx")
    local out, code = H.sh("tar xzf " .. H.shq(fixture .. "/data.tar.gz") .. " -C " .. H.shq(dir) ..
      " && chmod -R a+rwX " .. H.shq(dir))
    assert(code == 0, out)
    for _, v in ipairs(manifest.volumes) do
      H.start_volume({ port = tonumber(v.address:match(":(%d+)$")), root = dir .. "/" .. v.dir,
                       state = dir .. "/." .. v.dir .. ".nginx" })
    end
    local flags = {}
    for _, f in ipairs(manifest.flags) do flags[#flags + 1] = f end
    flags[#flags + 1] = "-db"
    flags[#flags + 1] = dir .. "/" .. manifest.index_dir
    local m = H.start_mkv({ flags = flags })
    url = m.url
  end)
  teardown(H.cleanup)

  for _, k in ipairs(manifest.keys) do
    if k.state == "live" then
      it("serves live key " .. show(k) .. " with its bytes and headers", function()
        local st, h = H.http("HEAD", url .. k.url_path)
        assert.equal(302, st)
        assert.equal(k.md5, h["content-md5"])
        assert.equal(k.key_volumes, h["key-volumes"])
        assert.equal(k.go_head.headers["Key-Balance"], h["key-balance"])
        -- The redirect names one of the record's replicas, at the key's path.
        local loc = h.location
        local ok = false
        for _, v in ipairs(k.placement) do
          if loc == "http://" .. v .. k.path then ok = true end
        end
        assert.is_true(ok, "Location " .. tostring(loc))
        local gst, _, body = H.http("GET", loc)
        assert.equal(200, gst)
        assert.equal(k.size, #body)
        assert.equal(k.md5, mkvlib.md5_hex(body))
        if k.size > 1 then
          local rst, _, part = H.http("GET", url .. k.url_path, { follow = true, range = "1-1" })
          assert.equal(206, rst)
          assert.equal(body:sub(2, 2), part)
        end
      end)
    elseif k.state == "unlinked" then
      it("answers 404 for unlinked key " .. show(k) .. ", with its Content-Md5", function()
        local st, h = H.http("GET", url .. k.url_path)
        assert.equal(404, st)
        assert.equal("0", h["content-length"])
        assert.equal(k.md5, h["content-md5"])
      end)
    else
      it("answers 404 for " .. k.state .. " key " .. show(k), function()
        local st, h = H.http("GET", url .. k.url_path)
        assert.equal(404, st)
        assert.equal("0", h["content-length"])
      end)
    end
  end

  it("lists exactly the live keys in byte order, as the original did byte for byte", function()
    local live = {}
    for _, k in ipairs(manifest.keys) do
      if k.state == "live" then live[#live + 1] = k end
    end
    byte_order(live)
    local st, _, body = H.http("GET", url .. "/?list")
    assert.equal(200, st)
    local keys = listing_keys(body)
    assert.equal(#live, #keys)
    for i, k in ipairs(live) do assert.equal(k.go_list_repr, keys[i]) end
    assert.equal(manifest.go_listing_responses["/?list"].body, body)
  end)

  it("lists records of unlinked and failed writes under ?unlinked, as the original", function()
    local want = {}
    for _, k in ipairs(manifest.keys) do
      if k.in_unlinked then want[#want + 1] = k end
      assert.is_true(k.state == "unlinked" or k.state == "failed" or not k.in_unlinked)
    end
    byte_order(want)
    local st, _, body = H.http("GET", url .. "/?unlinked")
    assert.equal(200, st)
    local keys = listing_keys(body)
    assert.equal(#want, #keys)
    for i, k in ipairs(want) do assert.equal(k.go_list_repr, keys[i]) end
    assert.equal(manifest.go_listing_responses["/?unlinked"].body, body)
  end)

  it("answers the original's listing queries the same way (but for start outside the prefix)", function()
    for q, resp in pairs(manifest.go_listing_responses) do
      if q ~= "/zz?list&start=/a" then -- a documented difference: no keys outside the prefix
        local st, _, body = H.http("GET", url .. q)
        assert.equal(resp.status, st, q)
        if resp.status == 200 then assert.equal(resp.body, body, q) end
      end
    end
    local st, _, body = H.http("GET", url .. "/zz?list&start=/a")
    assert.equal(200, st)
    assert.equal('{"next":"","keys":[]}', body)
  end)

  it("pages through ?list with limit and start exactly as the original", function()
    for _, page in ipairs(manifest.go_list_pages) do
      local st, _, body = H.http("GET", url .. page.query)
      assert.equal(page.status, st)
      assert.equal(page.body, body, page.query)
    end
  end)
end)
