-- Bad input and abuse, against real nginx volumes and the real mkv binary, over raw
-- sockets: malformed and smuggling-shaped requests, methods mkv does not serve, keys
-- nginx cannot hold (refused before anything is written), Expect, slow clients and
-- many idle connections. ARCHITECTURE.md "Request semantics" and "Keys nginx cannot
-- hold"; library-facts §2.3 and §6.2; testing-reliability §2.6.
local H = require "helpers"
local T = H.T
local mkv = require "mkv"

-- ---- local helpers (raw HTTP) ----

local raw = H.raw_parts

-- Headers of the first response in a raw reply (lower-case names).
local function headers_of(resp)
  local head = resp:match("^(.-)\r\n\r\n") or resp
  local h = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do h[k:lower()] = v end
  return h
end

local function show(s)
  s = s or ""
  if #s > 300 then s = s:sub(1, 300) .. "...(" .. #s .. " bytes)" end
  return (s:gsub("[%z\1-\31\127-\255]", function(ch)
    if ch == "\r" then return "\\r" elseif ch == "\n" then return "\\n" end
    return string.format("\\x%02x", ch:byte())
  end))
end

-- The strings of a raw() part list, as one printable line ("|" marks a pause).
local function parts_text(parts)
  local t = {}
  for _, p in ipairs(parts) do
    if type(p) == "string" then t[#t + 1] = show(p) end
  end
  return table.concat(t, " | ")
end

-- Exactly one response, whose status is in `allowed` (a list); the server closed the
-- connection after it unless `may_stay_open`.
local function assert_rejected(what, resp, closed, allowed, may_stay_open)
  local st = H.statuses(resp)
  local ok = {}
  for _, s in ipairs(allowed) do ok[s] = true end
  assert(#st == 1, string.format("%s: expected exactly one response (%s), got %d: %s", what,
    table.concat(allowed, "/"), #st, show(resp)))
  assert(ok[st[1]], string.format("%s: expected status %s, got %d: %s", what,
    table.concat(allowed, "/"), st[1], show(resp)))
  if not may_stay_open then
    assert(closed, string.format("%s: the server did not close the connection after %d: %s",
      what, st[1], show(resp)))
  end
  return st[1]
end

-- Runs fn(v) for every variant and reports all the variants that failed, not just the
-- first one.
local function each_variant(list, fn)
  local errs = {}
  for _, v in ipairs(list) do
    local ok, err = pcall(fn, v)
    if not ok then errs[#errs + 1] = tostring(err) end
  end
  if #errs > 0 then
    error(string.format("%d of %d variants failed:\n%s", #errs, #list, table.concat(errs, "\n")), 2)
  end
end

-- Reads one response from a keep-alive connection (Content-Length framing only).
-- Returns status, headers, body, extra bytes after it; or nil, why, bytes so far.
local function read_response(fd, timeout)
  local buf = ""
  local deadline = H.now() + (timeout or 3) * H.slow
  for _ = 1, 10000 do
    local hend = buf:find("\r\n\r\n", 1, true)
    if hend then
      local h = headers_of(buf)
      local status = tonumber(buf:match("^HTTP/1%.%d (%d%d%d)"))
      local cl = tonumber(h["content-length"] or "0") or 0
      if #buf >= hend + 3 + cl then
        return status, h, buf:sub(hend + 4, hend + 3 + cl), buf:sub(hend + 4 + cl)
      end
    end
    if H.now() >= deadline then return nil, "timeout", buf end
    local data, err = T.recv(fd, math.max(0.01, deadline - H.now()))
    if data == nil then return nil, err, buf end
    if data == "" then return nil, "closed by the server", buf end
    buf = buf .. data
  end
  return nil, "too many reads", buf
end

-- The Go key -> volume path (default policy): /<md5[0:2]>/<md5[2:4]>/<base64 std>.
local function key_path(key)
  local h = mkv.md5_hex(key)
  return "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. mkv.base64(key)
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- ---- the main cluster: 3 volumes, 2 replicas ----

describe("bad input and abuse (n=3, replicas=2)", function()
  local c, port, pid, baseline_fds
  local ka                -- a keep-alive connection opened at the start
  local ka_failures = {}  -- what the keep-alive connection saw go wrong, per test
  local current = "?"

  -- Every entry and directory under every volume root, as one comparable string.
  local function volume_tree()
    local parts = {}
    for i, v in ipairs(c.volumes) do
      local out = {}
      for _, f in ipairs(H.volume_files(v, { relative = true, dirs = true })) do out[#out + 1] = f .. "\n" end
      parts[#parts + 1] = "[volume " .. i .. "]\n" .. table.concat(out)
    end
    return table.concat(parts, "\n")
  end

  -- mkv's fds other than its keep-alive connections to the volumes and LevelDB's files:
  -- how many the pools keep depends on which worker served what (H.fd_census).
  local function other_fds()
    return (H.fd_census(pid, c.volumes, c.db))
  end

  local function status_of(method, path, opts)
    return (H.http(method, c.url .. path, opts))
  end

  local function assert_not_live(path, key)
    assert.equal(404, status_of("GET", path), "GET " .. path .. " after the bad request")
    local _, _, list = H.http("GET", c.url .. "/?list")
    assert.falsy(list:find('"' .. key .. '"', 1, true), key .. " is listed as live: " .. list)
  end

  local function listed_unlinked(key)
    local st, _, body = H.http("GET", c.url .. "/?unlinked")
    assert.equal(200, st)
    return body:find('"' .. key .. '"', 1, true) ~= nil, body
  end

  -- The keep-alive connection answers a GET of a live key (302) and of a missing one
  -- (404), with nothing extra on the wire.
  local function ka_check()
    local ok, err = T.send(ka, "GET /ka-key HTTP/1.1\r\nHost: x\r\n\r\n")
    if not ok then error("send on the keep-alive connection failed: " .. tostring(err)) end
    local st, h, _, extra = read_response(ka, 5)
    if st ~= 302 or not (h.location or ""):match("^http://127%.0%.0%.1:%d+/") or extra ~= "" then
      error(string.format("keep-alive GET /ka-key: status %s (%s) %s", tostring(st),
        type(h) == "table" and tostring(h.location) or tostring(h), show(extra)))
    end
    ok, err = T.send(ka, "GET /ka-missing HTTP/1.1\r\nHost: x\r\n\r\n")
    if not ok then error("send on the keep-alive connection failed: " .. tostring(err)) end
    st, h, _, extra = read_response(ka, 5)
    if st ~= 404 or extra ~= "" then
      error(string.format("keep-alive GET /ka-missing: status %s (%s) %s", tostring(st),
        tostring(h), show(extra)))
    end
    return true
  end

  -- An `it` that records its name, so the keep-alive check after it can say where.
  local function case(name, fn)
    it(name, function()
      current = name
      fn()
    end)
  end

  setup(function()
    c = H.cluster({ n = 3, replicas = 2 })
    port, pid = c.mkv.port, c.mkv.pid
    assert.equal(201, status_of("PUT", "/ka-key", { body = "keepalive" }))
    -- Warm the upstream pools (HEAD per GET) on whichever worker takes each connection.
    for _ = 1, 8 do assert.equal(302, status_of("GET", "/ka-key")) end
    H.sleep(0.3)
    baseline_fds = other_fds()
    ka = assert(T.connect(port))
    assert(ka_check())
  end)

  after_each(function()
    if ka == nil or current == "done" then return end
    local ok, err = pcall(ka_check)
    if not ok then ka_failures[#ka_failures + 1] = "after '" .. current .. "': " .. tostring(err) end
  end)

  -- ---- malformed framing ----

  case("a malformed request line gets 400 and the connection is closed", function()
    -- (Two spaces between the parts is not here: RFC 9112 §3 lets a recipient split the
    -- request line on whitespace, as nginx does.)
    local lines = {
      "GET /a HTTX/1.1\r\nHost: x\r\n\r\n",
      "GET /a HTTP/1.1 extra\r\nHost: x\r\n\r\n",
      "GET /a HTTP/1.x\r\nHost: x\r\n\r\n",
      "GET /a\tHTTP/1.1\r\nHost: x\r\n\r\n",
      "GET\r\nHost: x\r\n\r\n",
      " GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    each_variant(lines, function(l)
      local resp, closed = raw(port, l)
      assert_rejected(show(l), resp, closed, { 400 })
    end)
  end)

  case("garbage bytes get 400 and the connection is closed", function()
    local junk = {
      "\22\3\1\2\0\1\0\1\252\3\3" .. string.rep("\0", 32) .. "\r\n\r\n", -- a TLS ClientHello
      "\0\1\2\3\255\254\253 garbage\r\n\r\n",
      "\r\n\r\n\r\n\r\n" .. string.rep("\255", 64) .. "\r\n\r\n",
      "{\"json\": true}\r\n\r\n",
    }
    each_variant(junk, function(j)
      local resp, closed = raw(port, j)
      assert_rejected(show(j), resp, closed, { 400 })
    end)
  end)

  case("a bare-LF request gets 400 and the connection is closed", function()
    local resp, closed = raw(port, "GET /ka-key HTTP/1.1\nHost: x\n\n")
    assert_rejected("bare LF line ends", resp, closed, { 400 })
    resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\n\r\n")
    assert_rejected("bare LF after a header", resp, closed, { 400 })
    resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\r\n\r\n")
    assert_rejected("bare CR after a header", resp, closed, { 400 })
  end)

  case("a NUL in the URL gets 400 and the connection is closed", function()
    local resp, closed = raw(port, "GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("NUL in the target", resp, closed, { 400 })
    resp, closed = raw(port, "GET /a HTTP/1.1\r\nHost: x\0y\r\n\r\n")
    assert_rejected("NUL in a header value", resp, closed, { 400 })
  end)

  case("HTTP/0.9 (GET /a with no version) gets 400 and the connection is closed", function()
    local resp, closed = raw(port, "GET /a\r\n\r\n")
    assert_rejected("HTTP/0.9", resp, closed, { 400 })
  end)

  case("an HTTP/2.0 request line gets 505 or 400 and the connection is closed", function()
    local resp, closed = raw(port, "GET /ka-key HTTP/2.0\r\nHost: x\r\n\r\n")
    assert_rejected("HTTP/2.0", resp, closed, { 505, 400 })
    resp, closed = raw(port, "GET /ka-key HTTP/1.2\r\nHost: x\r\n\r\n")
    assert_rejected("HTTP/1.2", resp, closed, { 505, 400 })
    -- The HTTP/2 connection preface (prior knowledge).
    resp, closed = raw(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert_rejected("the h2 preface", resp, closed, { 505, 400, 405 })
  end)

  case("an absolute-form target gets 400 and the connection is closed", function()
    local resp, closed = raw(port, "GET http://evil.example/k HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert_rejected("absolute-form GET", resp, closed, { 400 })
    resp, closed = raw(port, "PUT http://evil.example/abs HTTP/1.1\r\nHost: evil.example\r\n" ..
      "Content-Length: 5\r\n\r\nhello")
    assert_rejected("absolute-form PUT", resp, closed, { 400 })
    assert_not_live("/abs", "/abs")
  end)

  -- RFC 9112 §7.1, where Debian's llhttp 8.1 errs (chunked.h): several extensions on a
  -- chunk are valid; chunk data must be followed by CRLF.
  case("a chunk with several extensions is taken; the body is the chunks' data", function()
    local resp = raw(port, { "PUT /ext2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      "5;a=b;c=d\r\nhello\r\n6 ; name=\"quoted;value\" ; bare\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" })
    assert.same({ 201 }, H.statuses(resp), show(resp))
    local st, _, body = H.http("GET", c.url .. "/ext2", { follow = true })
    assert.same({ 200, "hello world" }, { st, body })
  end)

  case("chunk data not followed by CRLF gets 400 and a close; nothing is stored", function()
    local variants = {
      { "nocrlf1", { "PUT /nocrlf1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5\r\nhelloXY3\r\nabc\r\n0\r\n\r\n" } },
      { "nocrlf2", { "PUT /nocrlf2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5\r\nhello", 0.2, "\n3\r\nabc\r\n0\r\n\r\n" } }, -- a bare LF after the data
      { "badext", { "PUT /badext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5;=\r\nhello\r\n0\r\n\r\n" } },
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1], resp, closed, { 400 })
      assert_not_live("/" .. v[1], "/" .. v[1])
    end)
  end)

  -- RFC 9112 §3.2 and §5.1 (the Go original agrees).
  case("HTTP/1.1 without Host, with two Hosts, or a header name with a space: 400, close", function()
    local variants = {
      { "nohost", { "GET /nohost HTTP/1.1\r\n\r\n" } },
      { "twohosts", { "GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" } },
      { "spacename", { "GET /spacename HTTP/1.1\r\nHost: a\r\nFoo Bar: x\r\n\r\n" } },
      { "tabname", { "PUT /tabname HTTP/1.1\r\nHost: a\r\nContent\tLength: 3\r\n\r\nabc" } },
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1], resp, closed, { 400 })
    end)
    -- HTTP/1.0 needs none
    local resp = raw(port, { "GET /nohost10 HTTP/1.0\r\n\r\n" })
    assert.same({ 404 }, H.statuses(resp), show(resp))
  end)

  case("OPTIONS * gets 405 or 400", function()
    local resp, closed = raw(port, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("OPTIONS *", resp, closed, { 405, 400 }, true)
  end)

  -- obs-fold: llhttp takes "\r\n Content-Length: 19" as a continuation of X's value;
  -- a server that does so sees no body and parses the "body" as a second request.
  local smuggled = "GET /ka-key HTTP/1.1\r\n\r\n" -- 24 bytes
  local cl_line = "Content-Length: " .. #smuggled .. "\r\n\r\n" .. smuggled
  local function fold_req(key, first)
    return "PUT /" .. key .. " HTTP/1.1\r\nHost: x\r\n" .. first
  end

  case("obs-fold (a header line starting with SP or HT) gets 400 and a close", function()
    local variants = {
      { "fold1", { fold_req("fold1", "X: 1\r\n " .. cl_line) } },
      { "fold2", { fold_req("fold2", "X: 1\r\n\t" .. cl_line) } },
      { "fold3", { fold_req("fold3", "X: 1\r\n   \t " .. cl_line) } },
      { "fold4", { fold_req("fold4", " X: 1\r\n" .. cl_line) } }, -- whitespace before the first field
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1] .. ": " .. parts_text(v[2]), resp, closed, { 400 })
      assert_not_live("/" .. v[1], "/" .. v[1])
    end)
  end)

  case("obs-fold split across two send() calls with a pause gets 400 and a close", function()
    local variants = {
      { "splitfold1", { fold_req("splitfold1", "X: 1\r\n"), 0.05, " " .. cl_line } },
      { "splitfold2", { fold_req("splitfold2", "X: 1\r\n "), 0.05, cl_line } },
      { "splitfold3", { fold_req("splitfold3", "X: 1\r"), 0.05, "\n " .. cl_line } },
      { "splitfold4", { fold_req("splitfold4", "X: 1\r\n"), 0.05, "\t", 0.05, cl_line } },
      { "splitfold5", { fold_req("splitfold5", "X: 1\r\n  "), 0.05, "  ", 0.05, cl_line } },
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1] .. ": " .. parts_text(v[2]), resp, closed, { 400 })
      assert_not_live("/" .. v[1], "/" .. v[1])
    end)
  end)

  case("obs-fold after an empty header value gets 400 and a close", function()
    local variants = {
      { "emptyfold1", { fold_req("emptyfold1", "X:\r\n " .. cl_line) } },
      { "emptyfold2", { fold_req("emptyfold2", "X: \r\n " .. cl_line) } },
      { "emptyfold3", { fold_req("emptyfold3", "X:\r\n"), 0.05, " " .. cl_line } },
      { "emptyfold4", { fold_req("emptyfold4", "X:\r\n "), 0.05, cl_line } },
      { "emptyfold5", { fold_req("emptyfold5", "X:"), 0.05, "\r\n\t" .. cl_line } },
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1] .. ": " .. parts_text(v[2]), resp, closed, { 400 })
      assert_not_live("/" .. v[1], "/" .. v[1])
    end)
  end)

  case("Upgrade: websocket gets 400 and the connection is closed", function()
    each_variant({
      function()
        local resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" ..
          "Sec-WebSocket-Version: 13\r\n\r\n")
        assert_rejected("Upgrade: websocket", resp, closed, { 400 })
      end,
      function()
        -- Bytes after the upgrade request (what a client speaks once upgraded).
        local resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
          "Connection: Upgrade\r\n\r\nGET /ka-missing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_rejected("Upgrade: websocket, then more bytes", resp, closed, { 400 })
      end,
      function()
        -- h2c with a body: nothing may be stored.
        local resp, closed = raw(port, "PUT /upg HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n" ..
          "Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n" ..
          "Content-Length: 5\r\n\r\nhello")
        assert_rejected("Upgrade: h2c on a PUT", resp, closed, { 400 })
      end,
      function() assert_not_live("/upg", "/upg") end,
    }, function(f) f() end)
  end)

  case("CONNECT gets 400 or 405 and the connection is closed", function()
    local resp, closed = raw(port, "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
    assert_rejected("CONNECT host:port", resp, closed, { 400, 405 })
    resp, closed = raw(port, "CONNECT /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("CONNECT /k", resp, closed, { 400, 405 })
  end)

  case("Content-Length together with Transfer-Encoding gets 400", function()
    local resp, closed = raw(port, "PUT /clte HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_rejected("CL then TE", resp, closed, { 400 })
    resp, closed = raw(port, "PUT /tecl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" ..
      "Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_rejected("TE then CL", resp, closed, { 400 })
    assert_not_live("/clte", "/clte")
    assert_not_live("/tecl", "/tecl")
  end)

  case("a duplicate Content-Length gets 400", function()
    local resp, closed = raw(port, "PUT /dupcl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" ..
      "Content-Length: 5\r\n\r\nhello")
    assert_rejected("CL 5 + CL 5", resp, closed, { 400 })
    resp, closed = raw(port, "PUT /dupcl2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" ..
      "Content-Length: 6\r\n\r\nhello!")
    assert_rejected("CL 5 + CL 6", resp, closed, { 400 })
    assert_not_live("/dupcl", "/dupcl")
    assert_not_live("/dupcl2", "/dupcl2")
  end)

  case("an invalid chunk size gets 400, the connection closes, the key is not live", function()
    local variants = {
      { "badchunk1", { "PUT /badchunk1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n" } },
      -- The bad size arrives after the upstream PUTs have started.
      { "badchunk2", { "PUT /badchunk2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5\r\nhello\r\n", 0.2, "-1\r\nworld\r\n0\r\n\r\n" } },
      { "badchunk3", { "PUT /badchunk3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5\r\nhello\r\n", 0.2, "FFFFFFFFFFFFFFFFF\r\nworld\r\n0\r\n\r\n" } },
    }
    each_variant(variants, function(v)
      local resp, closed = raw(port, v[2])
      assert_rejected(v[1], resp, closed, { 400 })
      local key = "/" .. v[1]
      assert_not_live(key, key)
      -- The aborted PUT cleans up and lets go of its lock: the key can be written again.
      H.eventually(function()
        local st = status_of("PUT", key, { body = "again" })
        return st == 201, st
      end, 10, "a fresh PUT of " .. key .. " after the aborted one")
      local st, _, body = H.http("GET", c.url .. key, { follow = true })
      assert.equal(200, st)
      assert.equal("again", body)
    end)
  end)

  case("headers over 16 KiB get 431 and the connection is closed", function()
    local resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nX-Big: " ..
      string.rep("a", 17 * 1024) .. "\r\n\r\n")
    assert_rejected("one 17 KiB header", resp, closed, { 431 })
    local many = {}
    for i = 1, 600 do many[i] = string.format("X-Filler-%03d: %s\r\n", i, string.rep("b", 30)) end
    resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\n" .. table.concat(many) .. "\r\n")
    assert_rejected("600 small headers (~28 KiB)", resp, closed, { 431 })
    -- A huge header name.
    resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nX-" .. string.rep("n", 17 * 1024) ..
      ": 1\r\n\r\n")
    assert_rejected("a 17 KiB header name", resp, closed, { 431 })
    -- Below the limit is fine.
    resp = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " ..
      string.rep("a", 12 * 1024) .. "\r\n\r\n")
    assert.same({ 302 }, H.statuses(resp), "a 12 KiB header: " .. show(resp))
  end)

  case("a request target over 8 KiB gets 414 and the connection is closed", function()
    local resp, closed = raw(port, "GET /" .. string.rep("a", 9000) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("a 9000-byte target", resp, closed, { 414 })
    resp, closed = raw(port, "GET /?list&start=" .. string.rep("b", 9000) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("a 9000-byte query", resp, closed, { 414 })
  end)

  case("a malformed percent escape gets 400", function()
    for _, t in ipairs({ "/bad%zz", "/bad%2", "/bad%", "/bad%g0", "/%%41" }) do
      local resp, closed = raw(port, "GET " .. t .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      assert_rejected("GET " .. t, resp, closed, { 400 }, true)
    end
    local resp, closed = raw(port, "PUT /bad%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert_rejected("PUT /bad%zz", resp, closed, { 400 }, true)
  end)

  case("a fragment '#' in the target gets 400", function()
    local resp, closed = raw(port, "GET /frag#x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("GET /frag#x", resp, closed, { 400 }, true)
    resp, closed = raw(port, "PUT /frag#x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert_rejected("PUT /frag#x", resp, closed, { 400 }, true)
    assert_not_live("/frag", "/frag")
  end)

  case("CR/LF in a key never reaches a response header", function()
    local path = "/inj%0D%0AX-Injected:%20yes%0D%0A"
    assert.equal(201, status_of("PUT", path, { body = "inj" }))
    local resp = raw(port, "GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.same({ 302 }, H.statuses(resp))
    local head = resp:match("^(.-)\r\n\r\n") or resp
    assert.falsy(head:lower():find("x%-injected"), "injected header: " .. show(head))
    assert.falsy(head:find("\r[^\n]") or head:find("[^\r]\n"), "bare CR or LF in the head: " .. show(head))
  end)

  -- ---- methods ----

  case("an unknown method FOO gets 405 with an Allow header", function()
    local resp, closed = raw(port, "FOO /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("FOO", resp, closed, { 405 }, true)
    local allow = headers_of(resp).allow
    assert.truthy(allow, "no Allow header: " .. show(resp))
    for _, m in ipairs({ "GET", "HEAD", "PUT", "DELETE" }) do
      assert.truthy(allow:find(m, 1, true), "Allow lacks " .. m .. ": " .. allow)
    end
  end)

  case("PATCH, POST and OPTIONS get 405 with an Allow header", function()
    local reqs = {
      PATCH = "PATCH /ka-key HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
      POST = "POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
      OPTIONS = "OPTIONS /ka-key HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for _, m in ipairs({ "PATCH", "POST", "OPTIONS" }) do
      local resp, closed = raw(port, reqs[m])
      assert_rejected(m, resp, closed, { 405 }, true)
      assert.truthy(headers_of(resp).allow, m .. ": no Allow header: " .. show(resp))
    end
    assert_not_live("/post", "/post")
    local _, _, body = H.http("GET", c.url .. "/ka-key", { follow = true })
    assert.equal("keepalive", body)
  end)

  case("REBALANCE of an absent key is 404; a method that only starts like it is 405", function()
    local resp, closed = raw(port, "REBALANCE /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected("REBALANCE", resp, closed, { 404 }, true)
    for _, m in ipairs({ "REBALANCEX", "REBALANC", "RELINKED", "REPLACE_" }) do
      resp, closed = raw(port, m .. " /k HTTP/1.1\r\nHost: x\r\n\r\n")
      assert_rejected(m, resp, closed, { 405, 400 }, true)
    end
  end)

  -- ---- keys nginx cannot hold ----

  case("a 190-byte key is refused with 414 before anything is written", function()
    local key = "/" .. string.rep("a", 189)
    assert.equal(190, #key)
    assert.is_true(#mkv.base64(key) > 255)
    local before = volume_tree()
    local resp, closed = raw(port, "PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert_rejected("PUT of a 190-byte key", resp, closed, { 414 })
    assert.equal("close", (headers_of(resp).connection or ""):lower(),
      "an early rejection of a request with a body says Connection: close")
    -- With Expect: 100-continue the body is not even asked for before the answer.
    resp, closed = raw(port, "PUT " .. key .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" ..
      "Expect: 100-continue\r\n\r\n")
    local st = H.statuses(resp)
    assert(#st >= 1 and st[#st] == 414 and (#st == 1 or st[1] == 100),
      "PUT with Expect: 100-continue: " .. show(resp))
    assert.equal(414, status_of("PUT", key, { body = "hello" }))
    H.sleep(0.2)
    assert.equal(before, volume_tree(), "a volume changed")
    assert.is_false((listed_unlinked(key)))
    assert_not_live(key, key)
  end)

  case("a 189-byte key (a 252-byte base64 name) is stored: 201", function()
    local key = "/" .. string.rep("a", 188)
    assert.equal(189, #key)
    local b64 = mkv.base64(key)
    assert.equal(252, #b64)
    assert.is_true(#b64 <= 255)
    assert.equal(201, status_of("PUT", key, { body = "long but fine" }))
    local st, _, body = H.http("GET", c.url .. key, { follow = true })
    assert.equal(200, st)
    assert.equal("long but fine", body)
    local n = 0
    for _, v in ipairs(c.volumes) do
      if file_exists(v.root .. key_path(key)) then n = n + 1 end
    end
    assert.equal(2, n, "copies on the volumes")
  end)

  case("a key whose base64 ends in '/' (/ ?) is refused with 400 before anything is written", function()
    local key = "/ ?"
    assert.equal("LyA/", mkv.base64(key))
    local before = volume_tree()
    local resp, closed = raw(port, "PUT /%20%3F HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert_rejected("PUT /%20%3F", resp, closed, { 400 })
    assert.equal("close", (headers_of(resp).connection or ""):lower(),
      "an early rejection of a request with a body says Connection: close")
    assert.equal(400, status_of("PUT", "/%20%3F", { body = "hello", chunked = true }))
    H.sleep(0.2)
    assert.equal(before, volume_tree(), "a volume changed")
    assert.is_false((listed_unlinked(key)))
    assert_not_live("/%20%3F", key)
  end)

  case("a key whose base64 holds '//' is refused with 400 before anything is written", function()
    local key = "/\255\255\255\255"
    assert.truthy(mkv.base64(key):find("//", 1, true))
    local before = volume_tree()
    assert.equal(400, status_of("PUT", "/%FF%FF%FF%FF", { body = "hello" }))
    H.sleep(0.2)
    assert.equal(before, volume_tree(), "a volume changed")
    assert.equal(404, status_of("GET", "/%FF%FF%FF%FF"))
  end)

  case("DELETE of a key whose base64 ends in '/' is a 404 and the other keys survive", function()
    local key = "/ ?"
    local dir = key_path(key) -- /b9/e8/LyA/ : a directory on the volume
    assert.equal("/", dir:sub(-1))
    -- A victim whose file lives inside that very directory: same md5 prefix, and its
    -- base64 starts with LyA/ because its first three bytes are "/ ?".
    local victim
    for i = 1, 3000000 do
      local k = key .. "v" .. i
      local p = key_path(k)
      if p:sub(1, #dir) == dir and not p:find("//", 1, true) and p:sub(-1) ~= "/" then
        victim = k
        break
      end
    end
    assert.truthy(victim, "no victim key found")
    local vpath = H.urlencode_path(victim)
    assert.equal(201, status_of("PUT", vpath, { body = "victim" }))
    local others = {}
    for i = 1, 6 do
      others[i] = "/survivor" .. i
      assert.equal(201, status_of("PUT", others[i], { body = "s" .. i }))
    end
    local holders = {}
    for _, v in ipairs(c.volumes) do
      if file_exists(v.root .. key_path(victim)) then holders[#holders + 1] = v end
    end
    assert.equal(2, #holders, "the victim's copies")
    local before = volume_tree()

    assert.equal(404, status_of("DELETE", "/%20%3F"))
    H.sleep(0.3)
    assert.equal(before, volume_tree(), "a volume changed")
    for _, v in ipairs(holders) do
      assert.is_true(file_exists(v.root .. key_path(victim)), "victim file gone on " .. v.addr)
    end
    local st, _, body = H.http("GET", c.url .. vpath, { follow = true })
    assert.equal(200, st)
    assert.equal("victim", body)
    for i, k in ipairs(others) do
      st, _, body = H.http("GET", c.url .. k, { follow = true })
      assert.equal(200, st)
      assert.equal("s" .. i, body)
    end
  end)

  -- ---- Expect ----

  case("Expect: something-else gets 417", function()
    local resp, closed = raw(port, "PUT /expect HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n" ..
      "Content-Length: 5\r\n\r\nhello")
    assert_rejected("PUT with Expect: something-else", resp, closed, { 417 }, true)
    resp, closed = raw(port, "GET /ka-key HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n")
    assert_rejected("GET with Expect: something-else", resp, closed, { 417 }, true)
    assert_not_live("/expect", "/expect")
  end)

  -- ---- many connections, then the aftermath ----

  case("500 idle connections: the server still answers, and their fds go after they close", function()
    local fds = {}
    for i = 1, 500 do
      local fd, err = T.connect(port)
      assert(fd, "connect #" .. i .. ": " .. tostring(err))
      fds[i] = fd
    end
    H.eventually(function()
      local n = T.fd_count(pid)
      return n >= baseline_fds + 450, "fd count " .. tostring(n) .. ", baseline " .. baseline_fds
    end, 10, "mkv holding the 500 connections")
    assert.equal(302, status_of("GET", "/ka-key"))
    assert.equal(201, status_of("PUT", "/during-500", { body = "busy" }))
    local st, _, body = H.http("GET", c.url .. "/during-500", { follow = true })
    assert.equal(200, st)
    assert.equal("busy", body)
    for i = 1, #fds do T.close(fds[i]) end
    -- +1: the keep-alive connection is still open.
    H.eventually(function()
      local n = other_fds()
      return n <= baseline_fds + 1, "fd count " .. tostring(n) .. ", baseline " .. baseline_fds
    end, 10, "the fd count back at its baseline")
  end)

  case("after all of it mkv is alive, serves PUT/GET, and its fd count is back at the baseline", function()
    assert.is_true(c.mkv:alive(), "mkv died:\n" .. c.mkv:log())
    assert.equal(201, status_of("PUT", "/after-all", { body = "still here" }))
    local st, _, body = H.http("GET", c.url .. "/after-all", { follow = true })
    assert.equal(200, st)
    assert.equal("still here", body)
    -- +1: the keep-alive connection is still open.
    H.eventually(function()
      local n = other_fds()
      return n <= baseline_fds + 1, "fd count " .. tostring(n) .. ", baseline " .. baseline_fds
    end, 10, "the fd count back at its baseline")
  end)

  case("the keep-alive connection opened at the start kept getting correct answers", function()
    assert.same({}, ka_failures)
    ka_check()
    current = "done"
    T.close(ka)
    ka = nil
  end)

  teardown(H.cleanup)
end)

-- ---- timeouts, on an mkv with short limits ----

describe("slow clients (header_timeout 1s, idle_timeout 3s, body_timeout 1s)", function()
  local c, port
  local header_t, idle_t, body_t = 1, 3, 1

  setup(function()
    c = H.cluster({
      n = 2, replicas = 1,
      config = string.format(
        'return { limits = { header_timeout = "%ds", idle_timeout = "%ds", body_timeout = "%ds" } }',
        header_t, idle_t, body_t),
    })
    port = c.mkv.port
  end)

  local function within(what, elapsed, lo, hi)
    assert(elapsed >= lo, string.format("%s: closed after %.2fs, before %.2fs", what, elapsed, lo))
    assert(elapsed <= hi * H.slow, string.format("%s: closed after %.2fs, later than %.2fs", what,
      elapsed, hi * H.slow))
  end

  it("half a request line and then nothing is closed after header_timeout (408 or a close)", function()
    local resp, closed, elapsed = raw(port, "GET /sl", idle_t + 3)
    assert(closed, "not closed: " .. show(resp))
    local st = H.statuses(resp)
    assert(#st == 0 or (#st == 1 and st[1] == 408), "answer: " .. show(resp))
    within("half request line", elapsed, header_t - 0.2, header_t + 0.8)
  end)

  it("headers dribbled a byte at a time are closed after header_timeout in total", function()
    local fd = assert(T.connect(port))
    local t0 = H.now()
    T.send(fd, "GET /ka HTTP/1.1\r\nHost: x\r\n")
    local closed, got = false, {}
    for _ = 1, 40 do -- at most 40 x 0.2 s
      T.send(fd, "X")
      local data, err = T.recv(fd, 0.2)
      if data == "" or (data == nil and err ~= "timeout") then closed = true break end
      if data then got[#got + 1] = data end
    end
    local elapsed = H.now() - t0
    T.close(fd)
    assert(closed, "not closed after 8 s of dribbling")
    local st = H.statuses(table.concat(got))
    assert(#st == 0 or (#st == 1 and st[1] == 408), "answer: " .. show(table.concat(got)))
    within("dribbled headers", elapsed, header_t - 0.2, header_t + 1.0)
  end)

  it("a connection that sends nothing is closed after idle_timeout", function()
    local resp, closed, elapsed = raw(port, {}, idle_t + 3)
    assert(closed, "not closed")
    assert.same({}, H.statuses(resp))
    within("silent connection", elapsed, idle_t - 0.3, idle_t + 1.0)
  end)

  it("an idle keep-alive connection is closed after idle_timeout", function()
    local fd = assert(T.connect(port))
    T.send(fd, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    local st = read_response(fd, 3)
    assert.equal(404, st)
    local t0 = H.now()
    local data = T.recv(fd, idle_t + 3)
    local elapsed = H.now() - t0
    T.close(fd)
    assert.equal("", data, "the idle connection was not closed")
    within("idle keep-alive", elapsed, idle_t - 0.3, idle_t + 1.0)
  end)

  it("a PUT whose body stalls is closed after body_timeout and the key is not live", function()
    local variants = {
      { "/stall-cl", "PUT /stall-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" ..
        string.rep("x", 10) },
      { "/stall-chunked", "PUT /stall-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "a\r\n" .. string.rep("y", 10) .. "\r\n" },
    }
    each_variant(variants, function(v)
      local resp, closed, elapsed = raw(port, v[2], body_t + 4)
      assert(closed, v[1] .. ": not closed: " .. show(resp))
      for _, s in ipairs(H.statuses(resp)) do
        assert(s ~= 201 and s < 300, v[1] .. ": answered " .. s)
      end
      within(v[1], elapsed, body_t - 0.2, body_t + 1.0)
      assert.equal(404, (H.http("GET", c.url .. v[1])))
      local _, _, list = H.http("GET", c.url .. "/?list")
      assert.falsy(list:find('"' .. v[1] .. '"', 1, true), v[1] .. " listed: " .. list)
      H.eventually(function()
        local st = H.http("PUT", c.url .. v[1], { body = "complete" })
        return st == 201, st
      end, 10, "a fresh PUT of " .. v[1] .. " after the stalled one")
    end)
  end)

  it("mkv is still alive and serving", function()
    assert.is_true(c.mkv:alive(), "mkv died:\n" .. c.mkv:log())
    assert.equal(201, (H.http("PUT", c.url .. "/alive", { body = "yes" })))
    local st, _, body = H.http("GET", c.url .. "/alive", { follow = true })
    assert.equal(200, st)
    assert.equal("yes", body)
  end)

  teardown(H.cleanup)
end)
