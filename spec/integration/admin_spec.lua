-- The admin commands -- rebuild, rebalance, verify, gc, run -- against real nginx
-- volumes and the real binary, offline (no server holds -db) and online (the job runs
-- inside the server that holds it, through <db>/mkv.admin).
--
-- Everything a test checks it finds out without asking the code under test how: a key's
-- file on a volume is computed here (GO-ORIGINAL.md §2.3), placement is computed here
-- (§2.4, the Go original's key2volume), values are read back through mkv's 302 and the
-- volume, and the volumes' trees are compared file by file (name, size, MD5).
local H = require "helpers"
local A = require "api_support"
local T = H.T

local SIGINT = 2

-- ---- the admin command, with stdout and stderr apart ------------------------------------

local function child_env()
  local e = {}
  if os.getenv("LD_PRELOAD") then e.LD_PRELOAD = "" end
  local asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")
  if asan then e.ASAN_OPTIONS = asan end
  return e
end

local function lines(s)
  local out = {}
  for l in (s or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- "NAME: examined N, changed N, failed N, skipped N; ..." -> table
local function parse_summary(line)
  local name, e, c, f, s = (line or ""):match(
    "^([^:]+): examined (%d+), changed (%d+), failed (%d+), skipped (%d+);")
  if not name then return nil end
  return { name = name, examined = tonumber(e), changed = tonumber(c), failed = tonumber(f),
           skipped = tonumber(s), bytes = tonumber(line:match("; (%d+) bytes moved")) }
end

-- Runs `mkv <args>` to completion: { code, out (stdout), err (stderr), took, summary,
-- lines (stdout lines) }.
local function mkv_run(args, timeout)
  local dir = H.tmpdir("admin")
  local argv = { H.mkv_bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local t0 = H.now()
  local pid = T.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err", env = child_env() })
  local st = T.wait(pid, (timeout or 60) * H.slow)
  if not st then
    T.kill(pid, 9)
    T.wait(pid, 5)
    error("mkv " .. table.concat(args, " ") .. " did not exit in time\n" ..
      (H.read_file(dir .. "/out") or "") .. (H.read_file(dir .. "/err") or ""))
  end
  local r = { code = st.code or (128 + (st.signal or 0)), status = st, took = H.now() - t0,
              out = H.read_file(dir .. "/out") or "", err = H.read_file(dir .. "/err") or "" }
  r.lines = lines(r.out)
  r.summary = parse_summary(r.lines[#r.lines])
  r.all = "--- stdout:\n" .. r.out .. "--- stderr:\n" .. r.err
  return r
end

local function has_line(r, needle)
  for _, l in ipairs(r.lines) do
    if l:find(needle, 1, true) then return l end
  end
  return nil
end

local function count_lines(r, prefix)
  local n = 0
  for _, l in ipairs(r.lines) do
    if l:sub(1, #prefix) == prefix then n = n + 1 end
  end
  return n
end

-- How a report line shows a key (lua/mkv_admin.lua's show): control and high bytes as \xNN.
local function show(key)
  return (key:gsub("[%c\127-\255]", function(ch) return string.format("\\x%02x", ch:byte()) end))
end

-- ---- placement and files, computed here --------------------------------------------------

-- The Go original's key2volume (GO-ORIGINAL.md §2.4).
local function place(key, addrs, replicas, subvolumes)
  local scored = {}
  for i, v in ipairs(addrs) do scored[i] = { v = v, s = H.md5_hex(key .. v), i = i } end
  table.sort(scored, function(a, b)
    if a.s ~= b.s then return a.s > b.s end
    return a.i < b.i
  end)
  local out = {}
  for i = 1, replicas do
    local x = scored[i]
    if subvolumes > 1 then
      out[i] = string.format("%s/sv%02X", x.v, tonumber(x.s:sub(25, 32), 16) % subvolumes)
    else
      out[i] = x.v
    end
  end
  return out
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

local function split_commas(s)
  local out = {}
  for v in (s or ""):gmatch("[^,]+") do out[#out + 1] = v end
  return out
end

-- The key's path on a volume root (GO-ORIGINAL.md §2.3).
local function key_path(key)
  local h = H.md5_hex(key)
  return "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. A.base64(key)
end

-- ---- a cluster whose volume list can grow ------------------------------------------------

local function new_cluster(n, replicas, subvolumes)
  local c = { volumes = {}, addrs = {}, by_addr = {}, replicas = replicas,
              subvolumes = subvolumes, values = {} }
  c.db = H.tmpdir("db") .. "/index"
  function c:add_volume(v)
    v = v or H.start_volume()
    self.volumes[#self.volumes + 1] = v
    self.addrs[#self.addrs + 1] = v.addr
    self.by_addr[v.addr] = v
    return v
  end
  for _ = 1, n do c:add_volume() end
  -- The server's background repair is off: these specs move keys with the commands
  -- themselves, and count what each finds (write_safety_spec covers the repair).
  function c:flags(addrs, db)
    return { "-volumes", table.concat(addrs or self.addrs, ","), "-db", db or self.db,
             "-replicas", tostring(self.replicas), "-subvolumes", tostring(self.subvolumes),
             "-repair-interval", "0" }
  end
  function c:start(addrs)
    self.mkv = H.start_mkv({ flags = self:flags(addrs), port = self.port })
    self.port, self.url = self.mkv.port, self.mkv.url
    return self.mkv
  end
  function c:stop()
    if self.mkv then
      local st = self.mkv:stop()
      self.mkv = nil
      assert(st.code == 0, "mkv exited " .. tostring(st.code or st.signal) .. " on SIGTERM")
    end
  end
  -- mkv <flags> <args...>
  function c:admin(args, timeout, addrs)
    local a = self:flags(addrs)
    for _, x in ipairs(args) do a[#a + 1] = x end
    return mkv_run(a, timeout)
  end
  function c:place(key, addrs)
    return place(key, addrs or self.addrs, self.replicas, self.subvolumes)
  end
  -- The file of `key` on a record volume "host:port[/svXX]".
  function c:file(entry, key)
    local addr, sv = entry:match("^([^/]+)(.*)$")
    local v = assert(self.by_addr[addr], "no volume " .. entry)
    return v.root .. sv .. key_path(key)
  end
  function c:put(key, value)
    self.values[key] = value
    return (H.http("PUT", self.url .. H.urlencode_path(key), { body = value }))
  end
  function c:bulk_put(keys, value_of)
    for _, k in ipairs(keys) do self.values[k] = value_of(k) end
    A.bulk_put(self.port, keys, function(k) return self.values[k] end, 8)
  end
  return c
end

-- Every file on every volume root: "relative path size md5", sorted -- a snapshot.
local function disk_tree(c)
  local out = {}
  for _, v in ipairs(c.volumes) do
    local res = {}
    for _, f in ipairs(H.volume_files(v, { relative = true })) do
      local data = H.read_file(v.root .. "/" .. f) or ""
      res[#res + 1] = string.format("%s %d %s  -\n", f, #data, H.md5_hex(data))
    end
    out[#out + 1] = "== " .. v.addr .. "\n" .. table.concat(res)
  end
  return table.concat(out, "\n")
end

-- ---- reading keys back fast: keep-alive connections to mkv and to the volumes -----------

local function client(port)
  return { port = port }
end

local function request(cl, method, path)
  for attempt = 1, 3 do
    if not cl.conn then cl.conn = A.connect(cl.port) end
    cl.conn:send(A.request(method, path))
    local r, err = cl.conn:response(20, { head = method == "HEAD" })
    if r then
      if (r.headers.connection or ""):lower() == "close" then
        cl.conn:close()
        cl.conn = nil
      end
      return r
    end
    cl.conn:close()
    cl.conn = nil
    if attempt == 3 then error(method .. " " .. path .. " on port " .. cl.port .. ": " .. tostring(err)) end
  end
end

local Reader = {}
Reader.__index = Reader

local function reader(c)
  return setmetatable({ c = c, mkv = client(c.port), vols = {} }, Reader)
end

-- GET through mkv, then (on a 302) from the volume: { status, volumes (list), md5,
-- balance, location, vstatus, body }.
function Reader:read(key)
  local r = request(self.mkv, "GET", H.urlencode_path(key))
  local info = { status = r.status, volumes = split_commas(r.headers["key-volumes"]),
                 md5 = r.headers["content-md5"], balance = r.headers["key-balance"],
                 location = r.headers.location }
  if r.status == 302 and info.location then
    local port, path = info.location:match("^http://[^/]+:(%d+)(/.*)$")
    port = tonumber(port)
    self.vols[port] = self.vols[port] or client(port)
    local r2 = request(self.vols[port], "GET", path)
    info.vstatus, info.body = r2.status, r2.body
  end
  return info
end

function Reader:close()
  if self.mkv.conn then self.mkv.conn:close() end
  for _, v in pairs(self.vols) do if v.conn then v.conn:close() end end
end

-- Reads every key of `keys` (expected values in c.values) and applies check(key, info,
-- problems); asserts no problem was found. By default: 302, the right bytes.
local function check_keys(c, keys, check, what, collect)
  local rd = reader(c)
  local problems = {}
  local ok, err = pcall(function()
    for _, k in ipairs(keys) do
      local info = rd:read(k)
      local want = c.values[k]
      if info.status ~= 302 then
        problems[#problems + 1] = string.format("%s: GET answered %s", show(k), tostring(info.status))
      elseif info.vstatus ~= 200 then
        problems[#problems + 1] = string.format("%s: the volume (%s) answered %s", show(k),
          tostring(info.location), tostring(info.vstatus))
      elseif info.body ~= want then
        problems[#problems + 1] = string.format("%s: %d bytes read back, %d written", show(k),
          #info.body, #want)
      end
      if check then check(k, info, problems) end
    end
  end)
  rd:close()
  if not ok then error(err, 0) end
  if collect then
    for _, p in ipairs(problems) do collect[#collect + 1] = p end
    return
  end
  assert(#problems == 0, string.format("%s: %d problem(s):\n  %s", what or "keys", #problems,
    table.concat(problems, "\n  ", 1, math.min(#problems, 15))))
end

local function listing(c, query)
  local st, _, body = H.http("GET", c.url .. "/?" .. (query or "list"))
  assert.equal(200, st)
  return body
end

-- A key as a JSON listing shows it: each byte that starts no valid UTF-8 sequence is
-- U+FFFD (Go's encoding/json; overlong forms, surrogates, > U+10FFFF are invalid).
local function lossy(key)
  local out, i, n = {}, 1, #key
  while i <= n do
    local c = key:byte(i)
    local len, min, v
    if c < 0x80 then len, v, min = 1, c, 0
    elseif c >= 0xc2 and c <= 0xdf then len, min, v = 2, 0x80, c % 0x20
    elseif c >= 0xe0 and c <= 0xef then len, min, v = 3, 0x800, c % 0x10
    elseif c >= 0xf0 and c <= 0xf4 then len, min, v = 4, 0x10000, c % 0x08
    end
    local ok = len ~= nil and i + len - 1 <= n
    if ok then
      for j = i + 1, i + len - 1 do
        local b = key:byte(j)
        if b < 0x80 or b > 0xbf then ok = false break end
        v = v * 64 + b % 64
      end
    end
    if ok and (v < min or v > 0x10ffff or (v >= 0xd800 and v <= 0xdfff)) then ok = false end
    if ok then
      out[#out + 1] = key:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\239\191\189"
      i = i + 1
    end
  end
  return table.concat(out)
end

local function listed(c, key, query)
  local st, _, keys = A.list(c.url, key, query)
  assert.equal(200, st)
  return A.contains(keys, lossy(key))
end

local function keys_of(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- ---------------------------------------------------------------------------------------
describe("mkv rebuild", function()
  local c
  local all -- every key, sorted
  local before_list -- GET /?list before the index was lost
  local before_vols = {} -- Key-Volumes before

  local special = {
    "/with space/a b c",
    "/ünïcödé/ключ/✓",
    "/raw\xfe/bytes\x80\xff", -- base64 L3Jhd/4vYnl0ZXOA/w==: two nested directories
    "/raw%\xe9t\xe9/x\x80",
    "/inv\xff\xfe", -- base64 L2ludv/+ : nested directory L2ludv/
    "/ab\xfc", -- base64 L2Fi/A== : the Go original rebuilt it as the wrong key /ab
    "/pct%41/plus+eq=",
    "/one byte",
  }
  local sizes = { 1, 17, 1000, 4096, 65536, 200000, 3 }

  setup(function()
    c = new_cluster(3, 2, 4)
    c:start()
    local keys = {}
    for i = 1, 192 do keys[#keys + 1] = string.format("/rb/k%03d", i) end
    for _, k in ipairs(special) do keys[#keys + 1] = k end
    local i = 0
    c:bulk_put(keys, function(k)
      i = i + 1
      if k == "/one byte" then return "x" end
      return A.bytes(sizes[i % #sizes + 1], i)
    end)
    for _, k in ipairs(special) do -- keys mkv accepts (GO-ORIGINAL.md §2.3; bad_input_spec)
      assert.is_nil(A.base64(k):find("//", 1, true), show(k))
      assert.are_not.equal("/", A.base64(k):sub(-1), show(k))
    end
    assert.truthy(A.base64("/inv\xff\xfe"):find("/", 1, true))
    assert.truthy(A.base64("/ab\xfc"):find("/", 1, true))
    all = keys_of(c.values)
    assert.equal(200, #all)
    before_list = listing(c)
    check_keys(c, all, function(k, info, problems)
      before_vols[k] = info.volumes
      if not same_list(info.volumes, c:place(k)) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",") ..
          " is not placement " .. table.concat(c:place(k), ",")
      end
    end, "after the PUTs")
  end)
  teardown(H.cleanup)

  local function fresh_rebuild(args, timeout)
    c:stop()
    local out, code = H.sh("rm -rf " .. H.shq(c.db))
    assert(code == 0, out)
    local r = c:admin(args or { "rebuild" }, timeout or 120)
    c:start()
    return r
  end

  it("into an empty index: every key reads back, replicas in placement order, the same listing", function()
    local r = fresh_rebuild()
    assert.equal(0, r.code, r.all)
    assert.is_nil(r.err:find("holds the index", 1, true), "ran offline")
    assert.truthy(r.summary, r.all)
    assert.equal("rebuild", r.summary.name)
    assert.equal(#all, r.summary.examined, r.all)
    assert.equal(#all, r.summary.changed, r.all)
    assert.equal(0, r.summary.failed)
    assert.equal(before_list, listing(c))
    assert.equal("", listing(c, "unlinked"):match('"keys":%[(.-)%]'))
    check_keys(c, all, function(k, info, problems)
      if not same_list(info.volumes, before_vols[k]) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",") ..
          ", before the rebuild " .. table.concat(before_vols[k], ",")
      end
      if info.balance ~= "balanced" then
        problems[#problems + 1] = show(k) .. ": Key-Balance " .. tostring(info.balance)
      end
      -- Without --md5 the hash cannot come back (what --md5 is for).
      if info.md5 ~= nil then problems[#problems + 1] = show(k) .. ": Content-Md5 without --md5" end
    end, "after rebuild")
  end)

  it("--md5: Content-Md5 is back for every key", function()
    local r = fresh_rebuild({ "rebuild", "--md5" })
    assert.equal(0, r.code, r.all)
    assert.equal(#all, r.summary.examined, r.all)
    assert.equal(before_list, listing(c))
    check_keys(c, all, function(k, info, problems)
      if info.md5 ~= H.md5_hex(c.values[k]) then
        problems[#problems + 1] = show(k) .. ": Content-Md5 " .. tostring(info.md5) .. ", want " ..
          H.md5_hex(c.values[k])
      end
      if not same_list(info.volumes, before_vols[k]) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",")
      end
    end, "after rebuild --md5")
  end)

  it("into an index that has an UNLINKed record (online): it stays unlinked, its MD5 kept", function()
    local gone = { "/rb/k010", "/inv\xff\xfe" }
    for _, k in ipairs(gone) do
      assert.equal(204, (H.http("UNLINK", c.url .. H.urlencode_path(k))))
    end
    local r = c:admin({ "rebuild" })
    assert.equal(0, r.code, r.all)
    assert.truthy(r.err:find("mkv: a server holds the index: running rebuild inside it", 1, true), r.all)
    assert.equal(#all, r.summary.examined, r.all)
    -- and offline too
    c:stop()
    local r2 = c:admin({ "rebuild" })
    assert.equal(0, r2.code, r2.all)
    c:start()
    for _, k in ipairs(gone) do
      local st, h = H.http("GET", c.url .. H.urlencode_path(k))
      assert.equal(404, st, show(k) .. " came back live")
      assert.equal(H.md5_hex(c.values[k]), h["content-md5"], show(k))
      assert.is_true(listed(c, k, "unlinked"), show(k) .. " not in ?unlinked")
      assert.is_false(listed(c, k, "list"), show(k) .. " in ?list")
    end
    local live = {}
    for _, k in ipairs(all) do if not contains(gone, k) then live[#live + 1] = k end end
    check_keys(c, live, nil, "live keys after rebuilding into the index")
    -- live again for the tests below
    for _, k in ipairs(gone) do assert.equal(201, c:put(k, c.values[k])) end
  end)

  it("a key found on fewer volumes than its replica count is still indexed", function()
    local k = "/rb/k033"
    local keep, lost = before_vols[k][1], before_vols[k][2]
    local lost_file = c:file(lost, k)
    assert.is_true(A.exists(lost_file))
    assert(os.remove(lost_file))
    local r = fresh_rebuild()
    assert.equal(0, r.code, r.all)
    assert.equal(#all, r.summary.examined, r.all)
    local rd = reader(c)
    local info = rd:read(k)
    rd:close()
    assert.equal(302, info.status)
    assert.same({ keep }, info.volumes)
    assert.equal(c.values[k], info.body)
    H.write_file(lost_file, c.values[k]) -- back, for the tests below
  end)

  it("a volume that is down: exit 1, a report naming it; the keys on the others are indexed", function()
    local down = c.volumes[3]
    down:stop()
    local r = fresh_rebuild()
    assert.equal(1, r.code, r.all)
    assert.truthy(has_line(r, "cannot read volume " .. down.addr), r.all)
    assert.truthy(r.summary.failed >= 1, r.all)
    assert.equal(#all, r.summary.examined, r.all) -- replicas 2 of 3: every key has a copy elsewhere
    -- the volume comes back: each key's Key-Volumes is its copies outside the dead volume
    local v = H.restart_volume(down)
    c.volumes[3], c.by_addr[v.addr] = v, v
    assert.equal(before_list, listing(c))
    check_keys(c, all, function(k, info, problems)
      local want = {}
      for _, e in ipairs(before_vols[k]) do
        if e:sub(1, #down.addr + 1) ~= down.addr .. "/" then want[#want + 1] = e end
      end
      if not same_list(info.volumes, want) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",") ..
          ", want " .. table.concat(want, ",")
      end
    end, "after a rebuild with a volume down")
    -- with every volume up again, the rebuild is whole again
    local r2 = fresh_rebuild()
    assert.equal(0, r2.code, r2.all)
    check_keys(c, all, function(k, info, problems)
      if not same_list(info.volumes, before_vols[k]) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",")
      end
    end, "after the volume came back")
  end)

  it("a file that is not a key is reported and left alone", function()
    local root = c.volumes[1].root .. "/sv00"
    local junk = { "/ab/cd/junk.tmp", "/ab/cd/" .. A.base64("/not/here") } -- a key's name, wrong directory
    assert.are_not.equal("/ab/cd/", key_path("/not/here"):sub(1, 7))
    H.sh("mkdir -p " .. H.shq(root .. "/ab/cd"))
    for _, j in ipairs(junk) do H.write_file(root .. j, "junk " .. j) end
    local r = fresh_rebuild()
    assert.equal(0, r.code, r.all)
    for _, j in ipairs(junk) do
      assert.truthy(has_line(r, "not a key file: http://" .. c.volumes[1].addr .. "/sv00" .. j), r.all)
      assert.equal("junk " .. j, H.read_file(root .. j), j .. " was touched")
    end
    assert.equal(#all, r.summary.examined, r.all)
    assert.equal(before_list, listing(c))
    assert.is_false(listed(c, "/not/here", "list"))
    assert.is_false(listed(c, "/not/here", "unlinked"))
    for _, j in ipairs(junk) do os.remove(root .. j) end
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("mkv rebalance", function()
  local c
  local old_addrs -- the 3 volumes the keys were written on
  local keys = {} -- the 300 old keys (+ specials), sorted
  local moved = {} -- keys whose placement changed with the 4th volume
  local unlinked = {} -- UNLINKed keys: 3 that move, 1 that does not

  setup(function()
    c = new_cluster(3, 2, 2)
    c:start()
    local list = {}
    for i = 1, 300 do list[#list + 1] = string.format("/rbl/k%03d", i) end
    list[#list + 1] = "/rbl/sp ace é"
    list[#list + 1] = "/rbl/!\xfc" -- base64 L3JibC8h/A==: a nested directory
    local i = 0
    c:bulk_put(list, function()
      i = i + 1
      -- every 20th value 120 KB: the bandwidth cap below then stretches the run
      return A.bytes(i % 20 == 0 and 120000 or 200 + (i * 97) % 4000, i)
    end)
    keys = keys_of(c.values)
    old_addrs = { unpack(c.addrs) }
    -- a 4th volume; mkv restarted with it
    c:add_volume()
    c:stop()
    c:start()
    local still = {}
    for _, k in ipairs(keys) do
      if not same_list(c:place(k, old_addrs), c:place(k)) then
        moved[#moved + 1] = k
      else
        still[#still + 1] = k
      end
    end
    assert.truthy(#moved > 50, "keys that move: " .. #moved)
    unlinked = { moved[3], moved[17], moved[40], still[5] }
    for _, k in ipairs(unlinked) do
      assert.equal(204, (H.http("UNLINK", c.url .. H.urlencode_path(k))))
    end
  end)
  teardown(H.cleanup)

  local function is_unlinked(k) return contains(unlinked, k) end

  local function live_keys()
    local out = {}
    for _, k in ipairs(keys) do if not is_unlinked(k) then out[#out + 1] = k end end
    return out
  end

  it("verify reports the keys a new volume makes misplaced, and only those", function()
    local r = c:admin({ "verify" })
    assert.equal(0, r.code, r.all)
    local n = 0
    for _, k in ipairs(moved) do
      if not is_unlinked(k) then
        n = n + 1
        local want = string.format("misplaced %s: on %s, placement wants %s", show(k),
          table.concat(c:place(k, old_addrs), ","), table.concat(c:place(k), ","))
        assert.truthy(has_line(r, want), want .. "\n" .. r.all)
      end
    end
    assert.equal(n, count_lines(r, "misplaced "), r.all)
  end)

  it("--dry-run changes nothing and says what it would move", function()
    local tree0, list0, unl0 = disk_tree(c), listing(c), listing(c, "unlinked")
    local heads0 = {}
    check_keys(c, live_keys(), function(k, info) heads0[k] = table.concat(info.volumes, ",") end)
    local r = c:admin({ "rebalance", "--dry-run" })
    assert.equal(0, r.code, r.all)
    assert.truthy(r.err:find("running rebalance inside it", 1, true), r.all)
    for _, k in ipairs(moved) do
      assert.truthy(has_line(r, "would move " .. show(k) .. ":"), show(k) .. "\n" .. r.all)
    end
    assert.equal(#moved, count_lines(r, "would move "), r.all)
    assert.equal(0, r.summary.failed)
    assert.equal(tree0, disk_tree(c), "the volumes changed")
    assert.equal(list0, listing(c))
    assert.equal(unl0, listing(c, "unlinked"))
    check_keys(c, live_keys(), function(k, info, problems)
      if table.concat(info.volumes, ",") ~= heads0[k] then
        problems[#problems + 1] = show(k) .. ": Key-Volumes changed to " .. table.concat(info.volumes, ",")
      end
    end, "after --dry-run")
  end)

  it("online, under traffic: every key balanced and readable, no 5xx, unlinked stay unlinked, MD5s kept", function()
    local dir = H.tmpdir("traffic")
    local keyfile = dir .. "/keys"
    local get_keys = {}
    for _, k in ipairs(keys) do
      if not is_unlinked(k) and k:match("^/rbl/k%d+$") then get_keys[#get_keys + 1] = k end
    end
    H.write_file(keyfile, table.concat(get_keys, "\n") .. "\n")
    local out, stop = dir .. "/codes", dir .. "/stop"
    H.write_file(dir .. "/gen.sh", [[
url=$1; keys=$2; out=$3; stop=$4
mapfile -t K < "$keys"
n=0
while [ ! -e "$stop" ] && [ $n -lt 5000 ]; do
  n=$((n+1))
  c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -X PUT --data-binary "new value $n" "$url/new/k$n")
  echo "PUT /new/k$n $c" >> "$out"
  p=${K[$((n % ${#K[@]}))]}
  c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$url$p")
  echo "GET $p $c" >> "$out"
done
echo "$n" > "$stop.done"
]])
    local pid = tonumber((H.sh("bash " .. H.shq(dir .. "/gen.sh") .. " " .. H.shq(c.url) .. " " ..
      H.shq(keyfile) .. " " .. H.shq(out) .. " " .. H.shq(stop) .. " >/dev/null 2>&1 & echo $!")))
    assert.truthy(pid)
    local function traffic_lines() return #lines(H.read_file(out)) end
    local ok, err = pcall(function()
      H.eventually(function() return traffic_lines() >= 20 end, 20, "traffic")
      local before = traffic_lines()
      -- a bandwidth cap stretches the run over a couple of seconds of traffic
      local r = c:admin({ "rebalance", "--bandwidth", "300KB/s" }, 120)
      local during = traffic_lines() - before
      assert.equal(0, r.code, r.all)
      assert.truthy(r.err:find("mkv: a server holds the index: running rebalance inside it", 1, true), r.all)
      assert.equal(0, r.summary.failed, r.all)
      assert.truthy(r.summary.changed >= #moved, r.all)
      -- one line per key it moved, as the dry run says what it would move
      for _, k in ipairs(moved) do
        assert.truthy(has_line(r, "moved " .. show(k) .. ":"), show(k) .. "\n" .. r.all)
      end
      assert.truthy(during >= 20, "only " .. during .. " requests ran during the rebalance (" ..
        string.format("%.1f s", r.took) .. ")")
      H.eventually(function() return traffic_lines() >= before + during + 20 end, 20, "traffic after")
    end)
    H.write_file(stop, "")
    local finished = pcall(H.eventually, function() return A.exists(stop .. ".done") end, 30, "traffic stop")
    if not finished then T.kill(pid, 9) end
    if not ok then error(err, 0) end
    -- the traffic: no 5xx; every PUT 201, every GET of an existing key a 302
    local bad, new_keys = {}, {}
    for _, l in ipairs(lines(H.read_file(out))) do
      local m, p, code = l:match("^(%u+) (%S+) (%d+)$")
      code = tonumber(code)
      if not code or (m == "PUT" and code ~= 201) or (m == "GET" and code ~= 302) then
        bad[#bad + 1] = l
      end
      if m == "PUT" and code == 201 then
        new_keys[#new_keys + 1] = p
        c.values[p] = "new value " .. p:match("(%d+)$")
      end
    end
    assert(#bad == 0, #bad .. " bad answers during the rebalance:\n" ..
      table.concat(bad, "\n", 1, math.min(#bad, 20)))
    assert.truthy(#new_keys >= 40)
    -- every key, old and new: right bytes, balanced, 2 volumes = placement; MD5 kept
    local all = live_keys()
    for _, k in ipairs(new_keys) do all[#all + 1] = k end
    check_keys(c, all, function(k, info, problems)
      if info.balance ~= "balanced" then
        problems[#problems + 1] = show(k) .. ": Key-Balance " .. tostring(info.balance)
      end
      if #info.volumes ~= 2 or not same_list(info.volumes, c:place(k)) then
        problems[#problems + 1] = show(k) .. ": Key-Volumes " .. table.concat(info.volumes, ",") ..
          ", placement " .. table.concat(c:place(k), ",")
      end
      if info.md5 ~= H.md5_hex(c.values[k]) then
        problems[#problems + 1] = show(k) .. ": Content-Md5 " .. tostring(info.md5)
      end
    end, "after rebalance")
    -- on disk: each key's files where placement wants them, none left where it did not
    local problems = {}
    for _, k in ipairs(keys) do
      for _, e in ipairs(c:place(k)) do
        if not A.exists(c:file(e, k)) then problems[#problems + 1] = show(k) .. ": no file on " .. e end
      end
      for _, e in ipairs(c:place(k, old_addrs)) do
        if not contains(c:place(k), e) and A.exists(c:file(e, k)) then
          problems[#problems + 1] = show(k) .. ": surplus copy left on " .. e
        end
      end
    end
    assert(#problems == 0, table.concat(problems, "\n", 1, math.min(#problems, 15)))
    -- the unlinked keys that had to move: still unlinked, MD5 kept, files moved
    for _, k in ipairs(unlinked) do
      local st, h = H.http("GET", c.url .. H.urlencode_path(k))
      assert.equal(404, st, show(k) .. " came back live")
      assert.equal(H.md5_hex(c.values[k]), h["content-md5"], show(k))
      assert.is_true(listed(c, k, "unlinked"), show(k) .. " not in ?unlinked")
      assert.is_false(listed(c, k, "list"), show(k) .. " in ?list")
      for _, e in ipairs(c:place(k)) do
        assert.equal(c.values[k], H.read_file(c:file(e, k)), show(k) .. " on " .. e)
      end
    end
    -- a second run has nothing left to do
    local r2 = c:admin({ "rebalance" })
    assert.equal(0, r2.code, r2.all)
    assert.equal(0, r2.summary.changed, r2.all)
    for _, k in ipairs(new_keys) do keys[#keys + 1] = k end
    table.sort(keys)
  end)

  -- Interrupting a rebalance: four 200 KB values that a 5th volume takes, moved one at a
  -- time at 64 KB/s; SIGINT once the first (then the second) copy has landed.
  local big, addrs4, v5 = {}, nil, nil

  local function new_file(k)
    for _, e in ipairs(c:place(k)) do
      if e:find(v5.addr, 1, true) then return c:file(e, k) end
    end
  end

  -- Starts `rebalance --bandwidth 64KB/s --concurrency 1`, waits until the copy of
  -- `wait_for` is on the 5th volume, then SIGINT. Returns the exit status and the output.
  -- (Reads while a value moves: see "mkv rebalance while a key is read" below.)
  local function interrupted_run(wait_for)
    local argv = { H.mkv_bin }
    for _, x in ipairs(c:flags()) do argv[#argv + 1] = x end
    for _, x in ipairs({ "rebalance", "--bandwidth", "64KB/s", "--concurrency", "1" }) do
      argv[#argv + 1] = x
    end
    local p = H.spawn("admin-rebalance", argv, { keep_signal = true })
    H.eventually(function()
      return A.exists(new_file(wait_for)) or not p:alive()
    end, 60, "a copy of " .. wait_for .. " on the new volume")
    assert(p:alive(), "the rebalance ended before it was interrupted:\n" .. p:log())
    assert.is_true(p:signal(SIGINT))
    local st = H.eventually(function()
      if p:alive() then return false end
      return p.status
    end, 20, "the command to exit after SIGINT")
    return st, p:log()
  end

  it("interrupted online (SIGINT to the command): the server ends the job, every key readable", function()
    v5 = H.start_volume()
    addrs4 = { unpack(c.addrs) }
    local addrs5 = { unpack(c.addrs) }
    addrs5[#addrs5 + 1] = v5.addr
    for i = 1, 5000 do
      local k = string.format("/big/%04d", i)
      local p = place(k, addrs5, c.replicas, c.subvolumes)
      if p[1]:find(v5.addr, 1, true) or p[2]:find(v5.addr, 1, true) then big[#big + 1] = k end
      if #big == 4 then break end
    end
    assert.equal(4, #big)
    table.sort(big) -- the order rebalance takes them in (they sort before every other key)
    for i, k in ipairs(big) do
      assert.equal(201, c:put(k, A.bytes(200000, 1000 + i)))
      keys[#keys + 1] = k
    end
    table.sort(keys)
    c:add_volume(v5)
    c:stop()
    c:start()
    -- readable before
    check_keys(c, live_keys(), nil, "before the rebalance")
    local _, log1 = interrupted_run(big[1])
    assert.truthy(log1:find("running rebalance inside it", 1, true), log1)
    H.eventually(function()
      return c.mkv:log():find("admin job finished", 1, true)
    end, 20, "the server to end the job")
    check_keys(c, live_keys(), nil, "after the online interrupt")
    local rd = reader(c)
    local last = rd:read(big[4])
    rd:close()
    assert.equal("unbalanced", last.balance, "the run was not interrupted half way")
  end)

  it("interrupted offline (SIGINT): exit 130, every key readable", function()
    c:stop()
    local st2, log2 = interrupted_run(big[2])
    c:start()
    assert.equal(130, st2.code, "exit status after SIGINT: " .. tostring(st2.code or st2.signal) .. "\n" .. log2)
    assert.truthy(log2:find("SIGINT: cancelling", 1, true), log2)
    check_keys(c, live_keys(), nil, "after the offline interrupt")
  end)

  it("run again after the interrupts: it completes, nothing half-done left behind", function()
    local r
    H.eventually(function()
      r = c:admin({ "rebalance" }, 120)
      return not r.err:find("(409)", 1, true), r.all
    end, 20, "a job slot")
    assert.equal(0, r.code, r.all)
    assert.equal(0, r.summary.failed, r.all)
    check_keys(c, live_keys(), function(k, info, problems)
      if info.balance ~= "balanced" or not same_list(info.volumes, c:place(k)) then
        problems[#problems + 1] = show(k) .. ": " .. tostring(info.balance) .. " on " ..
          table.concat(info.volumes, ",") .. ", placement " .. table.concat(c:place(k), ",")
      end
      if info.md5 ~= H.md5_hex(c.values[k]) then
        problems[#problems + 1] = show(k) .. ": Content-Md5 " .. tostring(info.md5)
      end
    end, "after the last run")
    for _, k in ipairs(unlinked) do
      assert.equal(404, (H.http("GET", c.url .. H.urlencode_path(k))), show(k))
      assert.is_true(listed(c, k, "unlinked"), show(k))
    end
    -- no orphan, no misplaced key, no broken copy
    local v = c:admin({ "verify" })
    assert.equal(0, v.code, v.all)
    assert.equal(0, count_lines(v, "orphan "), v.all)
    assert.equal(0, count_lines(v, "misplaced "), v.all)
  end)

end)

-- ---------------------------------------------------------------------------------------
describe("mkv rebalance while a key is read", function()
  local c
  local keys = {}
  local v2

  setup(function()
    c = new_cluster(1, 1, 1)
    v2 = H.start_volume()
    -- 20 values of 100 KB that a 2nd volume takes (replicas 1: each moves whole)
    local addrs2 = { c.addrs[1], v2.addr }
    for i = 1, 5000 do
      local k = string.format("/mv/%04d", i)
      if place(k, addrs2, 1, 1)[1] == v2.addr then keys[#keys + 1] = k end
      if #keys == 20 then break end
    end
    table.sort(keys) -- the order a --concurrency 1 rebalance takes them in
    c:start()
    for i, k in ipairs(keys) do assert.equal(201, c:put(k, A.bytes(100000, i))) end
    c:add_volume(v2)
    c:stop()
    c:start()
  end)
  teardown(H.cleanup)

  it("a client reading the key being moved always gets its value (online, --concurrency 1)", function()
    local argv = { H.mkv_bin }
    for _, x in ipairs(c:flags()) do argv[#argv + 1] = x end
    for _, x in ipairs({ "rebalance", "--concurrency", "1", "--bandwidth", "1MB/s" }) do
      argv[#argv + 1] = x
    end
    local p = H.spawn("admin-rebalance", argv)
    local rd = reader(c)
    local failed, reads, cur = {}, 0, 1
    local deadline = H.now() + 60 * H.slow
    -- read the key that is moving (the first not yet on the new volume) until it has moved
    while cur <= #keys and H.now() < deadline do
      local k = keys[cur]
      local info = rd:read(k)
      reads = reads + 1
      if info.status ~= 302 or info.vstatus ~= 200 or info.body ~= c.values[k] then
        failed[#failed + 1] = string.format("%s: mkv %s (Key-Volumes %s), then %s from %s", k,
          tostring(info.status), table.concat(info.volumes, ","), tostring(info.vstatus),
          tostring(info.location))
      end
      if same_list(info.volumes, c:place(k)) then
        cur = cur + 1
      elseif not p:alive() then
        break -- the run ended and this key did not move
      end
    end
    rd:close()
    H.eventually(function() return not p:alive() end, 30, "the rebalance to end")
    assert.equal(0, p.status.code, p:log())
    assert.equal(#keys + 1, cur, "not every key moved:\n" .. p:log())
    assert(#failed == 0, string.format("%d of %d reads failed while %d keys moved:\n  %s", #failed,
      reads, #keys, table.concat(failed, "\n  ", 1, math.min(#failed, 10))))
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("mkv verify", function()
  local c
  local keys = {}
  local K = { missing = "/v/missing", same = "/v/same-size", shorter = "/v/shorter",
              longer = "/v/longer", orphan = "/v/orphan (no record)" }
  local vols = {} -- Key-Volumes of each damaged key
  local damaged = {} -- file -> what was there

  setup(function()
    c = new_cluster(3, 2, 3)
    c:start()
    local list = {}
    for i = 1, 20 do list[#list + 1] = string.format("/v/k%02d", i) end
    for _, name in ipairs({ "missing", "same", "shorter", "longer" }) do list[#list + 1] = K[name] end
    local i = 0
    c:bulk_put(list, function()
      i = i + 1
      return A.bytes(10000, i)
    end)
    keys = keys_of(c.values)
    local rd = reader(c)
    for _, name in ipairs({ "missing", "same", "shorter", "longer" }) do
      vols[name] = rd:read(K[name]).volumes
      assert.equal(2, #vols[name])
    end
    rd:close()
    local function damage(file, new)
      damaged[file] = H.read_file(file)
      assert.truthy(damaged[file], file)
      if new then H.write_file(file, new) else assert(os.remove(file)) end
    end
    damage(c:file(vols.missing[2], K.missing), nil)
    damage(c:file(vols.same[1], K.same), string.rep("G", 10000))
    -- Two copies that disagree on size: one of them is wrong, and which one is not a
    -- matter of votes (there are two) -- the record's MD5 says.
    damage(c:file(vols.shorter[2], K.shorter), c.values[K.shorter]:sub(1, 7777)) -- truncated
    damage(c:file(vols.longer[1], K.longer), c.values[K.longer] .. string.rep("L", 20)) -- appended to
    -- an orphan: a key's file where placement would put it, and no record
    vols.orphan = c:place(K.orphan)
    local of = c:file(vols.orphan[1], K.orphan)
    H.sh("mkdir -p " .. H.shq(of:match("^(.*)/")))
    H.write_file(of, "nobody's value")
    -- and a file that is no key's at all, next to it: named, never touched
    H.write_file(of:match("^(.*)/") .. "/notes.txt", "an operator's notes")
  end)
  teardown(H.cleanup)

  local function orphan_url()
    return "http://" .. vols.orphan[1] .. key_path(K.orphan)
  end

  local function assert_reports_shallow(r)
    assert.truthy(has_line(r, "missing " .. K.missing .. " on " .. vols.missing[2]), r.all)
    assert.truthy(has_line(r, "corrupt " .. K.shorter .. " on " .. vols.shorter[2] .. " "), r.all)
    assert.truthy(has_line(r, "corrupt " .. K.longer .. " on " .. vols.longer[1] .. " "), r.all)
    assert.truthy(has_line(r, "orphan " .. orphan_url()), r.all)
    assert.truthy(has_line(r, "stray " .. orphan_url():match("^(.*)/") .. "/notes.txt (not a key's file"), r.all)
    -- the good copies are not blamed
    assert.is_nil(has_line(r, "corrupt " .. K.shorter .. " on " .. vols.shorter[1] .. " "), r.all)
    assert.is_nil(has_line(r, "corrupt " .. K.longer .. " on " .. vols.longer[2] .. " "), r.all)
    assert.is_nil(has_line(r, "missing " .. K.missing .. " on " .. vols.missing[1]), r.all)
  end

  it("(offline) exits 1 and names the missing copy, the copies of the wrong size and the orphan", function()
    c:stop()
    local r = c:admin({ "verify" })
    c:start()
    assert.equal(1, r.code, r.all)
    assert_reports_shallow(r)
    -- HEAD sees sizes only: the same-size garbage goes unnoticed
    assert.is_nil(has_line(r, K.same), r.all)
    assert.equal(#keys, r.summary.examined, r.all)
    assert.equal(3, r.summary.failed, r.all)
    assert.equal(0, r.summary.changed, r.all)
  end)

  it("--deep (online) also names the same-size corrupt copy", function()
    local r = c:admin({ "verify", "--deep" })
    assert.equal(1, r.code, r.all)
    assert.truthy(r.err:find("running verify inside it", 1, true), r.all)
    assert_reports_shallow(r)
    local l = has_line(r, "corrupt " .. K.same .. " on " .. vols.same[1] .. " ")
    assert.truthy(l, r.all)
    assert.truthy(l:find(H.md5_hex(string.rep("G", 10000)), 1, true), l)
    assert.is_nil(has_line(r, "corrupt " .. K.same .. " on " .. vols.same[2]), r.all)
    assert.equal(4, r.summary.failed, r.all)
    -- verify only looks
    for file, was in pairs(damaged) do
      assert.are_not.equal(was, H.read_file(file), file .. " changed")
    end
  end)

  it("--deep --repair restores every broken copy byte for byte; verify --deep then exits 0", function()
    local r = c:admin({ "verify", "--deep", "--repair" })
    assert.equal(0, r.code, r.all)
    assert.truthy(has_line(r, "repaired " .. K.missing .. " on " .. vols.missing[2]), r.all)
    assert.truthy(has_line(r, "repaired " .. K.same .. " on " .. vols.same[1]), r.all)
    assert.truthy(has_line(r, "repaired " .. K.shorter .. " on " .. vols.shorter[2]), r.all)
    assert.truthy(has_line(r, "repaired " .. K.longer .. " on " .. vols.longer[1]), r.all)
    assert.equal(4, r.summary.changed, r.all)
    assert.equal(0, r.summary.failed, r.all)
    for file, was in pairs(damaged) do
      assert.equal(was, H.read_file(file), file .. " is not what it was")
    end
    local r2 = c:admin({ "verify", "--deep" })
    assert.equal(0, r2.code, r2.all)
    for _, word in ipairs({ "missing ", "corrupt ", "misplaced ", "unreachable " }) do
      assert.equal(0, count_lines(r2, word), r2.all)
    end
    -- repair does not delete the orphan (mkv gc does): still there, still reported
    assert.equal("nobody's value", H.read_file(c:file(vols.orphan[1], K.orphan)))
    assert.equal("an operator's notes",
      H.read_file(c:file(vols.orphan[1], K.orphan):match("^(.*)/") .. "/notes.txt"))
    assert.truthy(has_line(r2, "orphan " .. orphan_url()), r2.all)
    check_keys(c, keys, function(k, info, problems)
      if info.md5 ~= H.md5_hex(c.values[k]) then problems[#problems + 1] = show(k) .. ": MD5" end
    end, "after repair")
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("mkv verify --repair without --deep", function()
  local c
  setup(function()
    c = new_cluster(2, 2, 1)
    c:start()
  end)
  teardown(H.cleanup)

  it("two copies of different sizes: the good one is kept, the truncated one restored", function()
    local k = "/v2/truncated"
    local value = A.bytes(10000, 7)
    assert.equal(201, c:put(k, value))
    local rd = reader(c)
    local vols = rd:read(k).volumes
    rd:close()
    assert.equal(2, #vols)
    local good, bad = c:file(vols[1], k), c:file(vols[2], k)
    H.write_file(bad, value:sub(1, 7777))
    local r = c:admin({ "verify", "--repair" })
    assert.equal(value, H.read_file(good), string.format(
      "the good copy (%s) was overwritten: %d bytes now, md5 %s\n%s", vols[1], #H.read_file(good),
      H.md5_hex(H.read_file(good)), r.all))
    assert.equal(value, H.read_file(bad), "the truncated copy is still bad:\n" .. r.all)
    assert.truthy(has_line(r, "repaired " .. k .. " on " .. vols[2]), r.all)
    assert.equal(0, r.code, r.all)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("mkv gc", function()
  local c
  local keys, gone, live = {}, {}, {}
  local orphans = {} -- { file, url }
  local stray -- a live key's extra copy on a volume its record does not name
  local notes -- no key's file

  setup(function()
    c = new_cluster(3, 2, 1)
    c:start()
    local list = {}
    for i = 1, 30 do list[#list + 1] = string.format("/gc/k%02d", i) end
    list[#list + 1] = "/gc/ü x"
    list[#list + 1] = "/gc/in\xfc" -- base64 L2djL2lu/A==: a nested directory
    local i = 0
    c:bulk_put(list, function()
      i = i + 1
      return A.bytes(3000 + i, i)
    end)
    keys = keys_of(c.values)
    gone = { "/gc/k03", "/gc/k07", "/gc/k20", "/gc/ü x", "/gc/in\xfc" }
    for _, k in ipairs(gone) do
      assert.equal(204, (H.http("UNLINK", c.url .. H.urlencode_path(k))))
    end
    for _, k in ipairs(keys) do if not contains(gone, k) then live[#live + 1] = k end end
    -- orphans: files of keys without a record (a failed write's leftovers), and a live
    -- key's copy on a third volume
    for _, k in ipairs({ "/gc/orphan1", "/gc/orphan 2" }) do
      local e = c:place(k)[1]
      local f = c:file(e, k)
      H.sh("mkdir -p " .. H.shq(f:match("^(.*)/")))
      H.write_file(f, "left over " .. k)
      orphans[#orphans + 1] = { file = f, url = "http://" .. e .. key_path(k) }
    end
    local k = "/gc/k11"
    for _, a in ipairs(c.addrs) do
      if not contains(c:place(k), a) then
        stray = { file = c:file(a, k), url = "http://" .. a .. key_path(k) }
      end
    end
    H.sh("mkdir -p " .. H.shq(stray.file:match("^(.*)/")))
    H.write_file(stray.file, c.values[k])
    orphans[#orphans + 1] = stray
    -- a file that is no key's at all, in a key's directory: gc must leave it be
    notes = stray.file:match("^(.*)/") .. "/notes.txt"
    H.write_file(notes, "an operator's notes")
  end)
  teardown(H.cleanup)

  local function files_of(k)
    local out = {}
    for _, e in ipairs(c:place(k)) do out[#out + 1] = c:file(e, k) end
    return out
  end

  it("--dry-run lists the unlinked keys and the orphan files and changes nothing", function()
    local tree0, list0, unl0 = disk_tree(c), listing(c), listing(c, "unlinked")
    local r = c:admin({ "gc", "--dry-run" })
    assert.equal(0, r.code, r.all)
    assert.truthy(r.err:find("running gc inside it", 1, true), r.all)
    for _, k in ipairs(gone) do
      assert.truthy(has_line(r, "would remove " .. show(k) .. " and its 2 files"), show(k) .. "\n" .. r.all)
    end
    for _, o in ipairs(orphans) do
      assert.truthy(has_line(r, "would delete orphan " .. o.url), o.url .. "\n" .. r.all)
    end
    assert.equal(#gone, count_lines(r, "would remove "), r.all)
    assert.equal(#orphans, count_lines(r, "would delete orphan "), r.all)
    assert.equal(tree0, disk_tree(c), "the volumes changed")
    assert.equal(list0, listing(c))
    assert.equal(unl0, listing(c, "unlinked"))
    for _, k in ipairs(gone) do assert.is_true(listed(c, k, "unlinked"), show(k)) end
  end)

  it("(offline) removes the unlinked keys' files and records and the orphans; live keys untouched", function()
    for _, k in ipairs(gone) do
      for _, f in ipairs(files_of(k)) do assert.is_true(A.exists(f), f) end
    end
    local list0 = nil
    list0 = listing(c)
    c:stop()
    local r = c:admin({ "gc" })
    c:start()
    assert.equal(0, r.code, r.all)
    for _, k in ipairs(gone) do
      assert.truthy(has_line(r, "removed " .. show(k)), show(k) .. "\n" .. r.all)
      for _, f in ipairs(files_of(k)) do assert.is_false(A.exists(f), f .. " still there") end
      assert.is_false(listed(c, k, "unlinked"), show(k) .. " still in ?unlinked")
      local st, h = H.http("GET", c.url .. H.urlencode_path(k))
      assert.equal(404, st)
      assert.is_nil(h["content-md5"], show(k) .. ": a record is left")
    end
    for _, o in ipairs(orphans) do
      assert.truthy(has_line(r, "deleted orphan " .. o.url), o.url .. "\n" .. r.all)
      assert.is_false(A.exists(o.file), o.file .. " still there")
    end
    assert.equal(0, r.summary.failed, r.all)
    assert.equal(#gone + #orphans, r.summary.changed, r.all)
    assert.equal("an operator's notes", H.read_file(notes))
    assert.is_nil(has_line(r, "notes.txt"), r.all)
    -- live keys: same listing, every copy in place, readable
    assert.equal(list0, listing(c))
    for _, k in ipairs(live) do
      for _, f in ipairs(files_of(k)) do assert.equal(c.values[k], H.read_file(f), f) end
    end
    check_keys(c, live, nil, "live keys after gc")
    -- a second gc has nothing to do
    local r2 = c:admin({ "gc" })
    assert.equal(0, r2.code, r2.all)
    assert.equal(0, r2.summary.changed, r2.all)
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("admin command line", function()
  local c
  local big = {}
  local nkeys

  setup(function()
    c = new_cluster(2, 1, 1)
    -- three 1 MiB values that a 3rd volume will take (placement computed with its address)
    local v3 = H.start_volume()
    local addrs3 = { c.addrs[1], c.addrs[2], v3.addr }
    for i = 1, 5000 do
      local k = string.format("/cl/big%04d", i)
      if place(k, addrs3, 1, 1)[1] == v3.addr then big[#big + 1] = k end
      if #big == 3 then break end
    end
    c.v3 = v3
    c:start()
    local list = {}
    for i = 1, 20 do list[#list + 1] = string.format("/cl/s%02d", i) end
    local i = 0
    c:bulk_put(list, function()
      i = i + 1
      return "small " .. i
    end)
    for j, k in ipairs(big) do assert.equal(201, c:put(k, A.bytes(1048576, j))) end
    nkeys = #list + #big
  end)
  teardown(H.cleanup)

  local function config_file(addrs)
    local q = {}
    for _, a in ipairs(addrs or c.addrs) do q[#q + 1] = string.format("%q", a) end
    local path = H.tmpdir("cfg") .. "/config.lua"
    H.write_file(path, string.format(
      "return { volumes = { %s }, db = %q, replicas = %d, subvolumes = %d }\n",
      table.concat(q, ", "), c.db, c.replicas, c.subvolumes))
    return path
  end

  it("-c config.lua works as the flags do, online and offline", function()
    local cfg = config_file()
    local a = c:admin({ "verify" })
    local b = mkv_run({ "-c", cfg, "verify" })
    assert.equal(0, a.code, a.all)
    assert.equal(0, b.code, b.all)
    assert.truthy(b.err:find("running verify inside it", 1, true), b.all)
    assert.equal(nkeys, a.summary.examined)
    assert.equal(nkeys, b.summary.examined)
    c:stop()
    local d = mkv_run({ "-c", cfg, "gc", "--dry-run" })
    local e = mkv_run({ "-c", cfg, "rebuild" })
    c:start()
    assert.equal(0, d.code, d.all)
    assert.is_nil(d.err:find("inside it", 1, true), d.all)
    assert.equal(nkeys, d.summary.examined, d.all)
    assert.equal(0, e.code, e.all)
    assert.equal(nkeys, e.summary.examined, e.all)
    check_keys(c, keys_of(c.values), nil, "after rebuild -c")
  end)

  it("an unknown option: non-zero exit, a message naming it, nothing done", function()
    for _, cmd in ipairs({ "rebuild", "rebalance", "verify", "gc" }) do
      local r = c:admin({ cmd, "--nope" })
      assert.are_not.equal(0, r.code, r.all)
      assert.truthy(r.err:find("--nope", 1, true), cmd .. ": " .. r.all)
      assert.equal(0, r.summary and r.summary.examined or 0, r.all)
    end
    c:stop()
    local r = c:admin({ "verify", "--frobnicate" })
    c:start()
    assert.are_not.equal(0, r.code, r.all)
    assert.truthy(r.err:find("--frobnicate", 1, true), r.all)
  end)

  it("--concurrency 0, a bad --bandwidth, an option without its value: exit 2", function()
    local cases = {
      { { "rebuild", "--concurrency", "0" }, "--concurrency" },
      { { "verify", "--concurrency", "many" }, "--concurrency" },
      { { "rebalance", "--bandwidth", "fast" }, "--bandwidth" },
      { { "gc", "--bandwidth" }, "--bandwidth" },
    }
    for _, online in ipairs({ true, false }) do
      if not online then c:stop() end
      for _, case in ipairs(cases) do
        local r = c:admin(case[1])
        local what = table.concat(case[1], " ") .. (online and " (online)" or " (offline)")
        assert.equal(2, r.code, what .. "\n" .. r.all)
        assert.truthy(r.err:find(case[2], 1, true), what .. "\n" .. r.all)
      end
    end
    c:start()
  end)

  it("run FILE.lua: a script of one's own, offline and online", function()
    local script = H.tmpdir("script") .. "/count.lua"
    H.write_file(script, [[
local mkv = require "mkv"
local n, start = 0, ""
repeat
  local page = assert(mkv.index_scan(start, 7))
  n = n + #page
  if #page > 0 then start = page[#page][1] .. "\0" end
until #page == 0
mkv.count("examined", n)
mkv.report("records: " .. n)
]])
    local on = c:admin({ "run", script })
    assert.equal(0, on.code, on.all)
    assert.truthy(on.err:find("running count.lua inside it", 1, true), on.all)
    assert.truthy(has_line(on, "records: " .. nkeys), on.all)
    -- its summary names the one counter it keeps
    assert.equal("count.lua: examined " .. nkeys, on.lines[#on.lines]:match("^(.-) in [%d.]+ s$"), on.all)
    c:stop()
    local off = c:admin({ "run", script })
    c:start()
    assert.equal(0, off.code, off.all)
    assert.is_nil(off.err:find("inside it", 1, true), off.all)
    assert.truthy(has_line(off, "records: " .. nkeys), off.all)
    -- a script that raises: exit 1 and the error on stderr
    local bad = H.tmpdir("script") .. "/bad.lua"
    H.write_file(bad, 'error("this script fails on purpose")\n')
    local b = c:admin({ "run", bad })
    assert.equal(1, b.code, b.all)
    assert.truthy(b.err:find("this script fails on purpose", 1, true), b.all)
  end)

  it("mkv.join waits for the spawned tasks, not for mkv.after's; the run waits for both", function()
    local script = H.tmpdir("script") .. "/after.lua"
    H.write_file(script, [[
local mkv = require "mkv"
local t0 = mkv.now()
for i = 1, 3 do
  mkv.spawn(function()
    mkv.after(1, function() mkv.report(string.format("after %d ran at %.1f", i, mkv.now() - t0)) end)
  end)
end
mkv.join()
mkv.report(string.format("joined at %.1f", mkv.now() - t0))
]])
    local r = c:admin({ "run", script })
    assert.equal(0, r.code, r.all)
    assert.truthy(r.out:find("joined at 0.0", 1, true), r.all) -- not after the grace
    for i = 1, 3 do assert.truthy(r.out:find("after " .. i .. " ran at 1.", 1, true), r.all) end
  end)

  it("--bandwidth 1MB/s: a rebalance of 3 MiB takes 2 s or more; progress goes to stderr", function()
    c:add_volume(c.v3)
    c:stop()
    c:start()
    local r = c:admin({ "rebalance", "--bandwidth", "1MB/s" }, 60)
    assert.equal(0, r.code, r.all)
    assert.truthy(r.took >= 2.0, string.format("took %.2f s", r.took))
    assert.truthy(r.took < 15 * H.slow, string.format("took %.2f s", r.took))
    assert.truthy(r.summary.bytes >= 3 * 1048576, r.all)
    -- a progress line (one at once when stderr is not a terminal, then every 10 s)
    assert.truthy(r.err:match("rebalance %(records%): %d+[^\n]* done, %d+ examined"), r.all)
    assert.is_nil(r.out:match("%(records%): %d+"), r.all)
    -- the summary is stdout's last line
    assert.equal("rebalance", r.summary.name)
    check_keys(c, keys_of(c.values), function(k, info, problems)
      if not same_list(info.volumes, c:place(k)) then
        problems[#problems + 1] = show(k) .. ": on " .. table.concat(info.volumes, ",")
      end
    end, "after the rebalance")
    for _, k in ipairs(big) do
      assert.equal(c.values[k], H.read_file(c:file(c.v3.addr, k)), k)
    end
  end)
end)

-- ---------------------------------------------------------------------------------------
describe("admin --bandwidth over many small values", function()
  local c
  local keys = {}

  setup(function()
    c = new_cluster(1, 1, 1)
    local v2 = H.start_volume()
    local addrs2 = { c.addrs[1], v2.addr }
    -- 300 values of 10 KB (3 MB) that a 2nd volume will take
    for i = 1, 5000 do
      local k = string.format("/bw/m%04d", i)
      if place(k, addrs2, 1, 1)[1] == v2.addr then keys[#keys + 1] = k end
      if #keys == 300 then break end
    end
    assert.equal(300, #keys)
    c:start()
    local n = 0
    c:bulk_put(keys, function()
      n = n + 1
      return A.bytes(10000, n)
    end)
    c:add_volume(v2)
    c:stop()
    c:start()
  end)
  teardown(H.cleanup)

  it("--bandwidth 1MB/s: moving 300 values of 10 KB (3 MB) takes 2 s or more", function()
    local r = c:admin({ "rebalance", "--bandwidth", "1MB/s" }, 60)
    assert.equal(0, r.code, r.all)
    assert.equal(300, r.summary.changed, r.all)
    assert.truthy(r.summary.bytes >= 3000000, r.all)
    assert.truthy(r.took >= 2.0, string.format("3 MB moved in %.2f s at --bandwidth 1MB/s\n%s",
      r.took, r.all))
    check_keys(c, keys, function(k, info, problems)
      if not same_list(info.volumes, c:place(k)) then
        problems[#problems + 1] = show(k) .. ": on " .. table.concat(info.volumes, ",")
      end
    end, "after the rebalance")
  end)
end)

-- Every async mkv.* call fails early in one of two ways: misuse raises, at once; a
-- failure before any I/O started (a volume name without a port, say) returns nil, msg,
-- code at once, without yielding. Results pushed before a yield would be cut away
-- (LuaJIT's lua_yield keeps only the yielded values): the script got `nil nil nil`.
describe("admin scripts: the early errors of every async call", function()
  local c
  local value = A.bytes(2048, 7)
  setup(function()
    c = new_cluster(1, 1, 1)
    c:start()
    assert.equal(201, c:put("/early/v", value))
  end)
  teardown(H.cleanup)

  local script = [[
local mkv = require "mkv"
local vol = mkv.config.volumes[1]
local url = "http://" .. vol .. mkv.key_path("/early/v")
local function show(name, ...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  mkv.report(name .. ": " .. table.concat(t, " | "))
end
local function raises(name, f, ...)
  local ok, err = pcall(f, ...)
  mkv.report(name .. ": " .. (ok and "did not raise" or "raised " .. tostring(err)))
end
raises("http method", mkv.http, "POST", url)
raises("http url", mkv.http, "GET", "nourl")
raises("http directory", mkv.http, "DELETE", "http://" .. vol .. "/ab/")
raises("copy url", mkv.copy, "nourl", url)
raises("md5 url", mkv.md5_url, "nourl")
raises("spawn", mkv.spawn, 42)
raises("wait", mkv.wait, {})
raises("sleep", mkv.sleep, "soon")
raises("after", mkv.after, 1)
raises("coroutine", coroutine.wrap(function() return mkv.http("HEAD", url) end))
show("http early", mkv.http("HEAD", "http://noport/a"))
show("copy early", mkv.copy("http://noport/a", "http://noport/b"))
show("md5 early", mkv.md5_url("http://noport/a"))
show("copy to noport", mkv.copy(url, "http://noport/b"))
show("md5 ok", mkv.md5_url(url))
-- the md5 above read its value in one go and left the --bandwidth budget in debt: this
-- copy waits for the budget before it begins, then fails to start, and its results
-- come on the resume path
local h = mkv.spawn(function()
  local ok, msg, code = mkv.copy("http://noport/a", "http://noport/b")
  return tostring(ok) .. " | " .. tostring(msg) .. " | " .. tostring(code)
end)
show("copy early in a task", mkv.wait(h))
show("md5 early after a wait", mkv.md5_url("http://noport/a"))
]]

  local function expect(r)
    local want = {
      "http method: raised .*method must be GET, HEAD or DELETE",
      "http url: raised .*bad URL nourl",
      "http directory: raised .*refusing to DELETE a directory",
      "copy url: raised .*mkv.copy: bad URL",
      "md5 url: raised .*mkv.md5_url: bad URL",
      "spawn: raised .*function expected",
      "wait: raised .*not a task handle",
      "sleep: raised .*number expected",
      "after: raised .*function expected",
      "coroutine: raised .*run only inside the script or mkv.spawn",
      "http early: nil | invalid argument | EINVAL",
      "copy early: nil | invalid argument | EINVAL",
      "md5 early: nil | invalid argument | EINVAL",
      "copy to noport: nil | invalid argument | EINVAL",
      "md5 ok: 2048 | " .. H.md5_hex(value),
      "copy early in a task: nil | invalid argument | EINVAL",
      "md5 early after a wait: nil | invalid argument | EINVAL",
    }
    for i, pat in ipairs(want) do
      -- "<start>.*<part>": the line starts with <start> and holds <part> after it
      local line = r.lines[i] or ""
      local start, part = pat:match("^(.-)%.%*(.*)$")
      start = start or pat
      local ok = line:sub(1, #start) == start and
        (part == nil and line == pat or part ~= nil and line:find(part, #start + 1, true))
      assert.truthy(ok, "line " .. i .. ": expected " .. pat .. "\n" .. r.all)
    end
  end

  it("online and offline: misuse raises, a failure to start returns nil, msg, code at once", function()
    local path = H.tmpdir("script") .. "/early.lua"
    H.write_file(path, script)
    local on = c:admin({ "run", path, "--bandwidth", "1KB/s" })
    assert.equal(0, on.code, on.all)
    assert.truthy(on.err:find("inside it", 1, true), on.all)
    expect(on)
    c:stop()
    local off = c:admin({ "run", path, "--bandwidth", "1KB/s" })
    c:start()
    assert.equal(0, off.code, off.all)
    expect(off)
  end)
end)

-- ---------------------------------------------------------------------------------------
-- What the command says while a job runs and when it ends (issue 24's frictions): the
-- wait for --grace, bytes and an ETA for verify --deep, Ctrl-C, and `mkv run`'s summary.
describe("admin progress lines", function()
  local c
  local big = {} -- four values of 300 000 bytes, and 30 small ones
  local total = 0 -- the bytes verify --deep hashes: every copy of every live key

  -- The client's byte count (1000s, one decimal above bytes), computed here.
  local function fmt_bytes(b)
    local u, i = { "B", "KB", "MB", "GB", "TB" }, 1
    while b >= 1000 and i < 5 do b, i = b / 1000, i + 1 end
    return i == 1 and string.format("%.0f %s", b, u[i]) or string.format("%.1f %s", b, u[i])
  end

  setup(function()
    c = new_cluster(2, 1, 1)
    c:start()
    for i = 1, 4 do
      big[i] = string.format("/pl/big%d", i)
      assert.equal(201, c:put(big[i], A.bytes(300000, 500 + i)))
    end
    for i = 1, 30 do assert.equal(201, c:put(string.format("/pl/s%02d", i), "small value " .. i)) end
    for _, v in pairs(c.values) do total = total + #v * c.replicas end
  end)
  teardown(H.cleanup)

  -- Starts `mkv <args>` with SIGINT kept for the test; returns the process.
  local function start_job(args)
    local argv = { H.mkv_bin }
    for _, x in ipairs(c:flags()) do argv[#argv + 1] = x end
    for _, x in ipairs(args) do argv[#argv + 1] = x end
    return H.spawn("admin-job", argv, { keep_signal = true })
  end

  -- SIGINT once the job's first progress line is out; the exit status and the output.
  local function interrupt(p, what)
    H.eventually(function()
      return p:log():find(what .. " (", 1, true) or not p:alive()
    end, 30, "a progress line of " .. what)
    assert(p:alive(), "the job ended before it was interrupted:\n" .. p:log())
    local t0 = H.now()
    assert.is_true(p:signal(SIGINT))
    local st = H.eventually(function()
      if p:alive() then return false end
      return p.status
    end, 20, "the command to exit after SIGINT")
    return st, p:log(), H.now() - t0
  end

  it("verify --deep counts the bytes it hashes, of the copies' total, with a rate and an ETA", function()
    -- 1.2 MB at 300 KB/s: a few seconds, so the first plain progress line (after 1 s)
    -- comes while the copies are being hashed
    local r = c:admin({ "verify", "--deep", "--bandwidth", "300KB/s" })
    assert.equal(0, r.code, r.all)
    local line = r.err:match("verify %(records%): [^\n]*")
    assert.truthy(line, r.all)
    local done, of, rate, eta = line:match(", ([%d.]+ [KMGT]?B) of ([%d.]+ [KMGT]?B) %(([%d.]+ [KMGT]?B)/s%), ETA (%d+) s")
    assert.truthy(done, "no 'X of TOTAL (RATE/s), ETA N s' in: " .. line .. "\n" .. r.all)
    assert.equal(fmt_bytes(total), of, line)
    assert.truthy(tonumber(eta) >= 1 and tonumber(eta) <= 10 * H.slow, line)
    assert.are_not.equal("0 B", rate, line)
  end)

  it("Ctrl-C online: the server cancels the job, the command says so and exits 130", function()
    local p = start_job({ "verify", "--deep", "--bandwidth", "64KB/s" })
    local st, log, took = interrupt(p, "verify")
    assert.equal(130, st.code, "exit status " .. tostring(st.code or st.signal) .. "\n" .. log)
    assert.truthy(log:find("running verify inside it", 1, true), log)
    assert.truthy(log:match("cancelled: job %d+ %(verify%) stopped by Ctrl%-C"), log)
    assert.truthy(took < 10 * H.slow, string.format("took %.1f s to stop", took))
    -- the keys it had not hashed yet are not blamed
    assert.is_nil(log:find("corrupt ", 1, true), log)
    assert.is_nil(log:find("no good copy", 1, true), log)
    -- the server ended it because it was asked to, not because the client went away
    assert.truthy(c.mkv:log():find("admin job finished with exit code 1", 1, true), c.mkv:log())
    assert.is_nil(c.mkv:log():find("admin client went away", 1, true), c.mkv:log())
    -- and takes the next job at once
    local r = c:admin({ "verify" })
    assert.equal(0, r.code, r.all)
  end)

  it("Ctrl-C offline: the command says the job was cancelled and exits 130", function()
    c:stop()
    local p = start_job({ "verify", "--deep", "--bandwidth", "64KB/s" })
    local st, log = interrupt(p, "verify")
    c:start()
    assert.equal(130, st.code, "exit status " .. tostring(st.code or st.signal) .. "\n" .. log)
    assert.truthy(log:find("SIGINT: cancelling", 1, true), log)
    assert.truthy(log:find("cancelled: verify stopped by Ctrl-C", 1, true), log)
    assert.is_nil(log:find("corrupt ", 1, true), log)
    assert.is_nil(log:find("no good copy", 1, true), log)
  end)

  it("run FILE.lua: the summary shows only the counters the script touched", function()
    local dir = H.tmpdir("script")
    H.write_file(dir .. "/some.lua", [[
local mkv = require "mkv"
mkv.count("examined", 7)
mkv.count("failed", 0)
mkv.report("counted")
]])
    H.write_file(dir .. "/none.lua", 'require("mkv").report("nothing counted")\n')
    for _, online in ipairs({ true, false }) do
      if not online then c:stop() end
      local some = c:admin({ "run", dir .. "/some.lua" })
      local none = c:admin({ "run", dir .. "/none.lua" })
      if not online then c:start() end
      assert.equal(0, some.code, some.all)
      local last = some.lines[#some.lines]
      assert.truthy(last:match("^some%.lua: examined 7, failed 0 in [%d.]+ s$"), some.all)
      -- its progress line (the last one, at the end) too
      assert.truthy(some.err:match("some%.lua: 7 examined %(%d+/s%), 0 failed\n"), some.all)
      assert.equal(0, none.code, none.all)
      last = none.lines[#none.lines]
      assert.truthy(last:match("^none%.lua: done in [%d.]+ s$"), none.all)
      assert.is_nil(none.err:find("none.lua:", 1, true), none.all)
    end
    -- the built-in scripts keep every counter (they are parsed)
    local r = c:admin({ "verify" })
    assert.truthy(r.summary, r.all)
  end)

  it("rebalance says when it waits out --grace before deleting the old copies", function()
    c:add_volume()
    c:stop()
    c:start()
    local dry = c:admin({ "rebalance", "--dry-run" })
    assert.equal(0, dry.code, dry.all)
    assert.is_nil(dry.err:find("--grace", 1, true), dry.all)
    local r = c:admin({ "rebalance", "--grace", "2s" })
    assert.equal(0, r.code, r.all)
    -- the copies it will delete: each "moved KEY: copy to A, drop B[,C]" line's drops
    local drops = 0
    for _, l in ipairs(r.lines) do
      local d = l:match("^moved .*, drop (.+)$")
      if d and d ~= "-" then drops = drops + #split_commas(d) end
    end
    assert.truthy(drops > 0, r.all)
    local secs, n = r.err:match("waiting ([%d.]+)s %(%-%-grace 2s%) before deleting (%d+) old cop")
    assert.truthy(secs, r.all)
    assert.equal(drops, tonumber(n), r.all)
    assert.truthy(tonumber(secs) > 0 and tonumber(secs) <= 2, r.all)
    assert.truthy(r.took >= 1, string.format("took %.1f s", r.took))
  end)

  it("verify --repair says so too when the keys it moved leave old copies to delete", function()
    c:add_volume()
    c:stop()
    c:start()
    local r = c:admin({ "verify", "--repair" })
    assert.equal(0, r.code, r.all)
    assert.truthy(count_lines(r, "misplaced ") > 0, r.all)
    local n = r.err:match("waiting [%d.]+s %(%-%-grace 5s%) before deleting (%d+) old cop")
    assert.truthy(n and tonumber(n) > 0, r.all)
  end)
end)
