-- `mkv backup DIR` (lua/backup.lua, mkv_index_backup): a consistent copy of the index as
-- a new LevelDB directory, online inside the running server (under writes) or offline.
-- The copy holds every record the index held when the backup started -- unlinked ones
-- and MD5s too, what `mkv rebuild` cannot restore -- byte for byte, as goleveldb (the Go
-- original's reader) sees it, and mkv serves it as it is. A backup that cannot complete
-- leaves no directory that looks like one.
local H = require "helpers"

local function exists(path)
  local _, code = H.sh("test -e " .. H.shq(path))
  return code == 0
end

local function keys_of(recs, prefix)
  local n = 0
  for k in pairs(recs) do
    if k:sub(1, #prefix) == prefix then n = n + 1 end
  end
  return n
end

describe("mkv backup", function()
  local c, tool, dir
  setup(function()
    dir = H.tmpdir("backup")
    tool = H.go_tool(dir)
    c = H.cluster({ n = 3, replicas = 2 })
    for i = 1, 300 do
      local st, _, body = H.http("PUT", c.url .. "/b/" .. i, { body = "value " .. i })
      assert(st == 201, body)
    end
    for i = 1, 20 do
      assert.equal(204, (H.http("UNLINK", c.url .. "/b/" .. i)))
    end
  end)
  teardown(H.cleanup)

  it("online, under writes: every record the index held at its start, byte for byte; "
     .. "goleveldb reads it and mkv serves it", function()
    -- a client writing new keys all along
    local writer = H.spawn("writer", { "sh", "-c",
      "i=0; while :; do i=$((i+1)); curl -s -o /dev/null -X PUT --data-binary x$i " ..
      c.url .. "/load/$i; done" })
    H.eventually(function()
      local st = H.http("GET", c.url .. "/load/3")
      return st == 302
    end, 10 * H.slow, "the writer at work")
    local out = dir .. "/online"
    local code, text = c:run({ "backup", out }, 120)
    assert.equal(0, code, text)
    assert.truthy(text:find("backup " .. out .. ": ", 1, true), text)
    H.eventually(function()
      local st = H.http("GET", c.url .. "/load/" .. 40)
      return st == 302
    end, 20 * H.slow, "the writer going on after the backup")
    writer:stop()
    assert.is_false(exists(out .. ".partial"), "no partial copy left")

    local got = H.go_dump(tool, out)
    c.mkv:stop()
    local now = H.go_dump(tool, c.db)
    -- everything that was there when it started, byte for byte (unlinked ones too)
    assert.equal(300, keys_of(got, "/b/"))
    for i = 1, 300 do
      local k = "/b/" .. i
      assert.equal(now[k], got[k], k)
      assert.truthy(got[k]:find("HASH", 1, true), k) -- the MD5 is kept
    end
    assert.truthy(got["/b/7"]:find("^DELETED"))
    -- and of what was written during the copy, only records the index held: each as it
    -- is now, or the mark of its write in progress at the snapshot (not live)
    local during = keys_of(got, "/load/")
    for k, v in pairs(got) do
      if k:sub(1, 6) == "/load/" and v ~= now[k] then
        assert.truthy(v:find("^DELETED"), k .. ": " .. v .. " / now " .. tostring(now[k]))
      end
    end
    io.stderr:write(string.format("# backup under writes: %d records of the writes in flight, %d after\n",
      during, keys_of(now, "/load/")))

    -- mkv serves the copy as it is: a live key redirects, an unlinked one is listed
    local m = H.start_mkv({ flags = { "-volumes", table.concat(c.addrs, ","), "-replicas", "2",
                                      "-subvolumes", "1", "-db", out } })
    local st, h = H.http("GET", m.url .. "/b/150")
    assert.equal(302, st)
    local fst, _, body = H.http("GET", m.url .. "/b/150", { follow = true })
    assert.same({ 200, "value 150" }, { fst, body })
    assert.truthy(h["content-md5"])
    assert.equal(404, (H.http("GET", m.url .. "/b/7")))
    local lst, _, list = H.http("GET", m.url .. "/b/?unlinked")
    assert.equal(200, lst)
    assert.truthy(list:find('"/b/7"', 1, true), list)
    m:stop()
    c:restart()
  end)

  it("offline (no server holds the index): the same copy, exactly the index", function()
    c.mkv:stop()
    local out = dir .. "/offline"
    local code, text = c:run({ "backup", out }, 120)
    assert.equal(0, code, text)
    local got, n = H.go_dump(tool, out)
    local now, m = H.go_dump(tool, c.db)
    assert.equal(m, n)
    for k, v in pairs(now) do assert.equal(v, got[k], k) end
    c:restart()
  end)

  it("refuses a directory that is not empty, a partial copy left behind, and no DIR", function()
    local full = dir .. "/full"
    H.sh("mkdir -p " .. H.shq(full) .. " && touch " .. H.shq(full .. "/x"))
    local code, text = c:run({ "backup", full }, 30)
    assert.not_equal(0, code)
    assert.truthy(text:find("exists and is not empty", 1, true), text)
    local part = dir .. "/again"
    H.sh("mkdir -p " .. H.shq(part .. ".partial") .. " && touch " .. H.shq(part .. ".partial/x"))
    code, text = c:run({ "backup", part }, 30)
    assert.not_equal(0, code)
    assert.truthy(text:find("did not finish", 1, true), text)
    assert.is_false(exists(part))
    code, text = c:run({ "backup" }, 30)
    assert.equal(2, code, text)
    assert.truthy(text:find("usage: mkv backup DIR", 1, true), text)
  end)
end)
