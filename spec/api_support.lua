-- spec/api_support.lua: small tools shared by the API integration specs
-- (spec/integration/api_spec.lua, write_safety_spec.lua): listing parsing, an
-- independent base64 (to find a key's file on a volume without
-- asking mkv), and a raw HTTP/1.1 connection that parses responses one by one, for
-- keep-alive, pipelining, Expect: 100-continue and slow clients.
local H = require "helpers"
local T = H.T

local A = {}

-- ---- JSON: spec/json.lua ----

local json = require "json"
A.json_decode = json.decode
A.null = json.null

function A.parse_listing(body)
  local obj = A.json_decode(body)
  assert(type(obj) == "table", "listing is not an object: " .. body)
  local n = 0
  for k in pairs(obj) do
    n = n + 1
    assert(k == "next" or k == "keys", "unexpected member " .. tostring(k) .. " in " .. body)
  end
  assert(n == 2, "listing must have exactly next and keys: " .. body)
  assert(type(obj.next) == "string", "next is not a string: " .. body)
  assert(type(obj.keys) == "table" and obj.keys ~= A.null, "keys is not an array: " .. body)
  for i, k in ipairs(obj.keys) do
    assert(type(k) == "string", "keys[" .. i .. "] is not a string")
  end
  return obj.next, obj.keys
end

function A.contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- ---- base64 (standard alphabet, padded), and the file of a key on a volume ----

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function A.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {
      alphabet:sub(math.floor(n / 262144) % 64 + 1, math.floor(n / 262144) % 64 + 1),
      alphabet:sub(math.floor(n / 4096) % 64 + 1, math.floor(n / 4096) % 64 + 1),
      b and alphabet:sub(math.floor(n / 64) % 64 + 1, math.floor(n / 64) % 64 + 1) or "=",
      c and alphabet:sub(n % 64 + 1, n % 64 + 1) or "=",
    }
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

function A.hex_to_bin(hex)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- The Go original's path of a key on a volume (GO-ORIGINAL.md §2.3), subvolumes = 1.
function A.key_file(volume_root, key)
  local h = H.md5_hex(key)
  return volume_root .. "/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. A.base64(key)
end

function A.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- Which of the volumes (procs from H.start_volume) hold the key's file.
function A.holders(volumes, key)
  local out = {}
  for i, v in ipairs(volumes) do
    if A.exists(A.key_file(v.root, key)) then out[#out + 1] = i end
  end
  return out
end

-- Every regular file under a volume root whose name is the key's base64 (wherever it is).
function A.find_files(volumes, key)
  local out = {}
  local name = A.base64(key)
  for _, v in ipairs(volumes) do
    local res = H.sh("find " .. H.shq(v.root) .. " -type f -name " .. H.shq(name) .. " 2>/dev/null")
    for line in res:gmatch("[^\n]+") do out[#out + 1] = line end
  end
  return out
end

-- ---- listings through curl ----

-- GET <prefix>?<query> -> status, next, keys, body
function A.list(url, prefix, query)
  local st, h, body = H.http("GET", url .. H.urlencode_path(prefix) .. "?" .. (query or "list"))
  if st ~= 200 then return st, nil, nil, body, h end
  local next_key, keys = A.parse_listing(body)
  return st, next_key, keys, body, h
end

-- ---- a raw HTTP connection ----

local Conn = {}
Conn.__index = Conn

function A.connect(port)
  local fd = assert(T.connect(port))
  return setmetatable({ fd = fd, buf = "", eof = false }, Conn)
end

function Conn:send(bytes)
  local n, err = T.send(self.fd, bytes)
  return n, err
end

-- Reads more into the buffer; false on EOF or when the deadline passed.
function Conn:fill(deadline)
  if self.eof then return false end
  local left = deadline - H.now()
  if left <= 0 then return false end
  local data = T.recv(self.fd, left)
  if data == nil then return false end
  if data == "" then self.eof = true return false end
  self.buf = self.buf .. data
  return true
end

-- Parses one response off the connection: { status, headers (lower-case names), body,
-- head (the raw head) } or nil, "timeout" | "closed". opts.head: the request was a HEAD.
function Conn:response(timeout, opts)
  local deadline = H.now() + (timeout or 5) * H.slow
  local e
  while true do
    e = self.buf:find("\r\n\r\n", 1, true)
    if e then break end
    if not self:fill(deadline) then return nil, self.eof and "closed" or "timeout", self.buf end
  end
  local head = self.buf:sub(1, e + 3)
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then error("not an HTTP response: " .. head) end
  local headers, dup = {}, {}
  for line in head:gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = k:lower()
      if headers[k] then dup[k] = true end
      headers[k] = v
    end
  end
  self.buf = self.buf:sub(e + 4)
  local res = { status = status, headers = headers, head = head, dup = dup, body = "" }
  if status < 200 or status == 204 or status == 304 or (opts and opts.head) then return res end
  if (headers["transfer-encoding"] or ""):lower():find("chunked") then
    local parts = {}
    while true do
      local le = self.buf:find("\r\n", 1, true)
      while not le do
        if not self:fill(deadline) then return nil, "timeout in chunk size" end
        le = self.buf:find("\r\n", 1, true)
      end
      local size = tonumber(self.buf:sub(1, le - 1):match("^%x+"), 16)
      if not size then error("bad chunk size line: " .. self.buf:sub(1, le - 1)) end
      while #self.buf < le + 1 + size + 2 do
        if not self:fill(deadline) then return nil, "timeout in chunk" end
      end
      if size == 0 then
        -- no trailers expected
        self.buf = self.buf:sub(le + 4)
        break
      end
      parts[#parts + 1] = self.buf:sub(le + 2, le + 1 + size)
      self.buf = self.buf:sub(le + 1 + size + 3)
    end
    res.body = table.concat(parts)
    res.chunked = true
    return res
  end
  local len = tonumber(headers["content-length"] or "")
  if len then
    while #self.buf < len do
      if not self:fill(deadline) then return nil, "timeout in body" end
    end
    res.body = self.buf:sub(1, len)
    self.buf = self.buf:sub(len + 1)
    return res
  end
  -- Close-delimited body.
  while self:fill(deadline) do end
  res.body = self.buf
  self.buf = ""
  return res
end

-- True when the server closes the connection within timeout (any unread bytes are kept).
function Conn:wait_closed(timeout)
  local deadline = H.now() + (timeout or 2) * H.slow
  while not self.eof do
    if not self:fill(deadline) then break end
  end
  return self.eof
end

function Conn:close()
  if self.fd then T.close(self.fd) self.fd = nil end
end

-- Builds a request head.
function A.request(method, path, headers, body)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  for _, h in ipairs(headers or {}) do lines[#lines + 1] = h end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Deterministic filler bytes of length n.
function A.bytes(n, seed)
  local unit = string.format("%08d:%s|", seed or 0, "abcdefghijklmnopqrstuvwxyz0123456789")
  local s = string.rep(unit, math.floor(n / #unit) + 1)
  return s:sub(1, n)
end

-- PUTs many keys over `nconn` keep-alive connections at once (value_of(key) -> bytes,
-- default: the key itself); asserts every answer is 201.
function A.bulk_put(port, keys, value_of, nconn)
  local conns = {}
  for i = 1, nconn or 16 do conns[i] = A.connect(port) end
  local i = 1
  while i <= #keys do
    local batch = {}
    for j = 1, #conns do
      local k = keys[i]
      if not k then break end
      local v = value_of and value_of(k) or k
      assert(conns[j]:send(A.request("PUT", H.urlencode_path(k), nil, v)))
      batch[j] = k
      i = i + 1
    end
    for j = 1, #conns do
      local k = batch[j]
      if k then
        local r, err = conns[j]:response(20)
        assert(r and r.status == 201, "PUT " .. k .. ": " .. tostring(r and r.status or err))
      end
    end
  end
  for _, c in ipairs(conns) do c:close() end
end

return A
