-- The original's README, call for call, against real nginx volumes: started with the Go
-- flags, and again with -c config.lua.
local H = require "helpers"

for _, mode in ipairs({ "flags", "config" }) do
  describe("README examples (" .. mode .. ")", function()
    local c
    setup(function()
      if mode == "flags" then
        c = H.cluster({ n = 3, replicas = 3 })
      else
        local vols = {}
        for i = 1, 3 do vols[i] = H.start_volume() end
        local db = H.tmpdir("db") .. "/index"
        local cfg = string.format([[
return {
  db = %q,
  volumes = { %q, %q, %q },
  replicas = 3,
  subvolumes = 10,
}]], db, vols[1].addr, vols[2].addr, vols[3].addr)
        local m = H.start_mkv({ config = cfg })
        c = { mkv = m, url = m.url, volumes = vols }
      end
    end)
    teardown(H.cleanup)

    it("PUT with -d, then GET with -L returns the bytes", function()
      local st = H.http("PUT", c.url .. "/wehave", { body = "bigswag" })
      assert.equal(201, st)
      local st2, _, body = H.http("GET", c.url .. "/wehave", { follow = true })
      assert.equal(200, st2)
      assert.equal("bigswag", body)
      local _, h = H.http("HEAD", c.url .. "/wehave")
      assert.equal(H.md5_hex("bigswag"), h["content-md5"])
    end)

    it("PUT with -T uploads a file", function()
      local dir = H.tmpdir("f")
      local f = H.write_file(dir .. "/file", string.rep("0123456789", 10000))
      assert.equal(201, (H.http("PUT", c.url .. "/file.txt", { file = f })))
      local st, _, body = H.http("GET", c.url .. "/file.txt", { follow = true })
      assert.equal(200, st)
      assert.equal(100000, #body)
    end)

    it("GET without -L is a 302 to a volume with the key's headers", function()
      local st, h = H.http("GET", c.url .. "/wehave")
      assert.equal(302, st)
      assert.truthy(h.location:match("^http://127%.0%.0%.1:%d+/"))
      assert.equal("balanced", h["key-balance"])
      assert.truthy(h["key-volumes"])
      assert.equal("0", h["content-length"])
    end)

    it("DELETE removes the key", function()
      assert.equal(201, (H.http("PUT", c.url .. "/todelete", { body = "x" })))
      assert.equal(204, (H.http("DELETE", c.url .. "/todelete")))
      assert.equal(404, (H.http("GET", c.url .. "/todelete")))
    end)

    it("UNLINK hides the key and ?unlinked lists it", function()
      assert.equal(201, (H.http("PUT", c.url .. "/tounlink", { body = "x" })))
      assert.equal(204, (H.http("UNLINK", c.url .. "/tounlink")))
      assert.equal(404, (H.http("GET", c.url .. "/tounlink")))
      local st, h, body = H.http("GET", c.url .. "/?unlinked")
      assert.equal(200, st)
      assert.equal("application/json", h["content-type"])
      assert.truthy(body:find('"/tounlink"', 1, true))
    end)

    it("?list lists live keys under a prefix", function()
      for _, k in ipairs({ "/we/a", "/we/b", "/we/c" }) do
        assert.equal(201, (H.http("PUT", c.url .. k, { body = k })))
      end
      local st, _, body = H.http("GET", c.url .. "/we/?list")
      assert.equal(200, st)
      assert.equal('{"next":"","keys":["/we/a","/we/b","/we/c"]}', body)
      local _, _, page = H.http("GET", c.url .. "/we/?list&limit=2")
      assert.equal('{"next":"/we/c","keys":["/we/a","/we/b"]}', page)
      local _, _, rest = H.http("GET", c.url .. "/we/?list&limit=2&start=/we/c")
      assert.equal('{"next":"","keys":["/we/c"]}', rest)
    end)
  end)
end
