-- lua/mkv_config.lua: the config's defaults and its validation.
--
-- The C core runs this once at startup, on the main thread, in a throw-away Lua state:
-- it loads the operator's config.lua (a chunk returning a table), lays the command
-- line's flags over it, checks every field and returns a normalised table that C copies
-- into a plain struct. Errors are one line naming the field (or the flag) and what was
-- wrong; nothing here is called on the request path.
local mkv = require "mkv" -- the C helpers: Go durations, the policy kinds
local M = {}

local function fail(where, fmt, ...)
  error({ msg = where .. ": " .. string.format(fmt, ...) }, 0)
end

-- Quotes a value for an error message that must stay one line: control bytes, quotes
-- and backslashes are escaped (string.format("%q") would keep a newline as is).
local function quote(s)
  return '"' .. s:gsub('[%c"\\\127]', function(c)
    local named = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }
    return named[c] or string.format("\\x%02x", c:byte())
  end) .. '"'
end
M.quote = quote

local function describe(v)
  if type(v) == "string" then return quote(v) end
  return type(v) .. " " .. tostring(v)
end

-- The optimal-string-alignment form of the Damerau-Levenshtein distance: insertions,
-- deletions, substitutions and swaps of two neighbouring bytes each cost one.
function M.distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 1, lb do d[0][j] = j end
  for i = 1, la do
    local ca = a:byte(i)
    for j = 1, lb do
      local cb = b:byte(j)
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ca == cb and 0 or 1))
      if i > 1 and j > 1 and ca == b:byte(j - 1) and a:byte(i - 1) == cb then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

-- The known name nearest to `name`, or nil when none is near enough to be a slip: at
-- most two edits, and at most one per three bytes of the name, so that a short name
-- ("x") is not "corrected" into an unrelated one ("v"). Case is ignored; a tie goes to
-- the name first in byte order, so the message does not depend on table order.
-- `known` is a set (name -> anything) or a list of names.
function M.nearest(name, known)
  if type(name) ~= "string" or name == "" then return nil end
  local lname = name:lower()
  local best, best_d
  local function consider(k)
    if type(k) ~= "string" then return end
    local dist = M.distance(lname, k:lower())
    if dist <= 2 and dist * 3 <= #name
        and (not best_d or dist < best_d or (dist == best_d and k < best)) then
      best, best_d = k, dist
    end
  end
  if #known > 0 then
    for _, k in ipairs(known) do consider(k) end
  else
    for k in pairs(known) do consider(k) end
  end
  return best
end

-- "unknown field \"volums\" (did you mean \"volumes\"?)", or without the hint.
local function unknown_field(where, k, known)
  local near = M.nearest(k, known)
  if near then fail(where, "unknown field %s (did you mean %s?)", describe(k), quote(near)) end
  fail(where, "unknown field %s", describe(k))
end

-- Go duration strings ("1s", "500ms", "1m30s": the C parser the server uses everywhere)
-- or a number of seconds -> milliseconds; nil when it is neither.
function M.duration_ms(v)
  if type(v) == "number" then
    if v ~= v or v < 0 or v == math.huge then return nil end
    return v * 1000
  end
  if type(v) ~= "string" then return nil end
  return (mkv.duration_ms(v))
end

local function int(where, v, min, max)
  if type(v) ~= "number" or v ~= math.floor(v) then
    fail(where, "expected a whole number, got %s", describe(v))
  end
  if (min and v < min) or (max and v > max) then
    fail(where, "%d is out of range (%s..%s)", v, tostring(min or "-inf"), tostring(max or "inf"))
  end
  return v
end

local function bool(where, v)
  if type(v) ~= "boolean" then fail(where, "expected true or false, got %s", describe(v)) end
  return v
end

local function str(where, v, allow_empty)
  if type(v) ~= "string" then fail(where, "expected a string, got %s", describe(v)) end
  if not allow_empty and v == "" then fail(where, "must not be empty") end
  return v
end

local function dur(where, v, min_ms)
  local ms = M.duration_ms(v)
  if not ms then
    fail(where, "expected a duration such as \"1s\" or \"500ms\" (or seconds as a number), got %s",
      describe(v))
  end
  if min_ms and ms < min_ms then fail(where, "%s is too short (at least %g ms)", describe(v), min_ms) end
  return ms
end

-- host:port, host being a name, an IPv4 address or a bracketed IPv6 address. No
-- commas (records join volumes with them), no slashes, no spaces or control bytes.
function M.check_hostport(v)
  if type(v) ~= "string" then return nil, "expected \"host:port\", got " .. describe(v) end
  local host, port = v:match("^(%[[%x:%.]+%]):(%d+)$")
  if not host then host, port = v:match("^([%w%.%-_]+):(%d+)$") end
  if not host then return nil, quote(v) .. " is not host:port" end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, quote(v) .. ": port out of range" end
  return v
end

M.limit_fields = {
  header_bytes = { 16384, function(w, v) return int(w, v, 1024, 1048576) end },
  url_bytes = { 8192, function(w, v) return int(w, v, 256, 65536) end },
  max_connections = { 10000, function(w, v) return int(w, v, 1, 1000000) end },
  idle_timeout = { "60s", function(w, v) return dur(w, v, 1) end },
  header_timeout = { "30s", function(w, v) return dur(w, v, 1) end },
  body_timeout = { "60s", function(w, v) return dur(w, v, 1) end },
  -- A body that arrives slower than this, on average over any 10 s while mkv reads it
  -- (not while mkv itself waits for the volumes), fails like any other broken upload
  -- (408): a trickling client would hold its key's lock and the volume connections.
  -- "0" = no minimum.
  body_min_rate = { "1KB/s", function(w, v)
    if v == "0" or v == 0 then return 0 end
    str(w, v)
    local r = mkv.rate(v)
    if not r then fail(w, "expected a rate such as \"1KB/s\" (or \"0\": none), got %s", describe(v)) end
    return r
  end },
  volume_timeout = { "30s", function(w, v) return dur(w, v, 1) end },
  suspect_time = { "5s", function(w, v) return dur(w, v, 0) end },
  -- Volume health (README "Volume health"): each volume is probed this often, and a
  -- volume that stays down this often at most.
  probe_interval = { "1s", function(w, v) return dur(w, v, 10) end },
  probe_backoff = { "5s", function(w, v) return dur(w, v, 10) end },
  drain_timeout = { "30s", function(w, v) return dur(w, v, 0) end },
  high_water_kb = { 4096, function(w, v) return int(w, v, 64, 1048576) end },
  low_water_kb = { 1024, function(w, v) return int(w, v, 0, 1048576) end },
  list_slice = { 1000, function(w, v) return int(w, v, 1, 1000000) end },
}

M.leveldb_fields = {
  cache_mb = { 64, function(w, v) return int(w, v, 0, 1048576) end },
  write_buffer_mb = { 16, function(w, v) return int(w, v, 1, 4096) end },
  max_open_files = { 1000, function(w, v) return int(w, v, 16, 1000000) end },
  max_file_mb = { 2, function(w, v) return int(w, v, 1, 4096) end },
  bloom_bits = { 10, function(w, v) return int(w, v, 0, 64) end },
}

M.policy_kinds = mkv.policy_kinds

local function subtable(where, v, fields)
  local out = {}
  if v == nil then v = {} end
  if type(v) ~= "table" then fail(where, "expected a table, got %s", describe(v)) end
  for k in pairs(v) do
    if type(k) ~= "string" or not fields[k] then unknown_field(where, k, fields) end
  end
  for name, spec in pairs(fields) do
    local val = v[name]
    if val == nil then val = spec[1] end
    out[name] = spec[2](where .. "." .. name, val)
  end
  return out
end

-- ---- auth: write protection (README "Write protection") ----
--
-- Secrets are tokens an operator makes with `openssl rand -base64 32` or `-hex 32`: 16 to
-- 200 bytes of letters, digits and - . _ ~ + / =, so that each fits a Bearer header, an
-- HTTP header value and a quoted string of the volumes' nginx config alike. They may sit
-- in the config or, better, in a file (one per line; blank lines and trailing newlines
-- are ignored) that only mkv's user can read. No error message ever shows a secret.
M.auth_max_secrets = 2 -- the new one and the old one, while clients change over

local function check_token(where, v)
  if type(v) ~= "string" then fail(where, "expected a string, got %s", type(v)) end
  if v == "" then fail(where, "must not be empty") end
  if #v < 16 or #v > 200 then
    fail(where, "must be 16 to 200 bytes long (it is %d; make one with `openssl rand -base64 32`)", #v)
  end
  if v:find("[^%w%-%._~%+/=]") then
    fail(where, "may hold only letters, digits and - . _ ~ + / = (make one with `openssl rand -base64 32`)")
  end
  return v
end
M.check_token = check_token

-- The non-blank lines of a secret file. A relative path is relative to the config file.
local function read_secret_file(where, path)
  str(where, path)
  if path:sub(1, 1) ~= "/" and M.base_dir then path = M.base_dir .. "/" .. path end
  local f, err = io.open(path, "rb")
  if not f then fail(where, "cannot read %s", err or quote(path)) end
  local data = f:read("*a") or ""
  f:close()
  local out = {}
  for line in data:gmatch("[^\n]+") do
    line = line:gsub("[ \t\r]+$", ""):gsub("^[ \t]+", "")
    if line ~= "" then out[#out + 1] = line end
  end
  if #out == 0 then fail(where, "%s holds no secret (the file is empty)", quote(path)) end
  return out
end

-- One secret (or, for rotation, a list of them) given inline or as a file, not both.
-- Returns a list of checked tokens (empty when neither is given).
local function secrets(v, inline, file, where, max)
  local w_in, w_file = where(inline), where(file)
  if v[inline] ~= nil and v[file] ~= nil then
    fail(w_in, "give %s or %s, not both", inline, file)
  end
  local list, src = {}, w_in
  if v[file] ~= nil then
    list, src = read_secret_file(w_file, v[file]), w_file
  elseif type(v[inline]) == "table" and max > 1 then
    for k in pairs(v[inline]) do
      if type(k) ~= "number" or k ~= math.floor(k) or k < 1 or k > #v[inline] then
        fail(w_in, "expected a string or a list of strings")
      end
    end
    list = v[inline]
    if #list == 0 then fail(w_in, "must not be empty") end
  elseif v[inline] ~= nil then
    list = { v[inline] }
  end
  if #list > max then
    fail(src, "holds %d secrets; at most %s", #list,
      max == 1 and "one" or string.format("%d (the new one and the old one)", max))
  end
  local out = {}
  for i, s in ipairs(list) do
    out[i] = check_token(#list > 1 and (src .. "[" .. i .. "]") or src, s)
  end
  return out
end

M.auth_keys = { write_secret = true, write_secret_file = true, read = true, list = true,
                volume_key = true, volume_key_file = true, redirect_secret = true,
                redirect_secret_file = true, redirect_ttl = true }

-- `sub_where` names a flag for sub-fields that came from one (-write-secret-file ...).
function M.check_auth(w, v, sub_where)
  if v == nil then v = {} end
  if type(v) ~= "table" then fail(w, "expected a table, got %s", describe(v)) end
  for k in pairs(v) do
    if type(k) ~= "string" or not M.auth_keys[k] then unknown_field(w, k, M.auth_keys) end
  end
  local function where(k) return (sub_where and sub_where[k]) or (w .. "." .. k) end
  local out = {}
  out.write_secrets = secrets(v, "write_secret", "write_secret_file", where, M.auth_max_secrets)
  out.read, out.list = false, false
  if v.read ~= nil then out.read = bool(where("read"), v.read) end
  if v.list ~= nil then out.list = bool(where("list"), v.list) end
  if (out.read or out.list) and #out.write_secrets == 0 then
    fail(where(out.read and "read" or "list"), "needs a write_secret (or write_secret_file): "
      .. "readers present the same Bearer secret as writers")
  end
  local vk = secrets(v, "volume_key", "volume_key_file", where, 1)
  out.volume_key = vk[1] or ""
  local rs = secrets(v, "redirect_secret", "redirect_secret_file", where, 1)
  out.redirect_secret = rs[1] or ""
  local ttl = v.redirect_ttl
  if ttl == nil then ttl = "60s" end
  out.redirect_ttl = dur(where("redirect_ttl"), ttl, 1000)
  if out.redirect_ttl > 86400000 then
    fail(where("redirect_ttl"), "is longer than a day: a signed URL is a short-lived capability")
  end
  if out.redirect_secret ~= "" and out.volume_key == "" then
    fail(where("redirect_secret"), "needs a volume_key (or volume_key_file): the volumes let "
      .. "mkv's own reads through by that key, not by a signature")
  end
  return out
end

-- The standby index (README "High availability"): absent = one index node, as ever.
M.ha_keys = { etcd = true, cluster = true, name = true, advertise = true, replication = true,
              secret = true, secret_file = true, ttl = true, sync = true, sync_timeout = true,
              log_size_mb = true }

local function ident(where, v)
  str(where, v)
  if not v:match("^[%w_%.%-]+$") or #v > 64 then
    fail(where, "%s: expected 1 to 64 letters, digits, '_', '.' or '-'", quote(v))
  end
  return v
end

function M.check_ha(w, v)
  if v == nil then return { enabled = false } end
  if type(v) ~= "table" then fail(w, "expected a table, got %s", describe(v)) end
  for k in pairs(v) do
    if type(k) ~= "string" or not M.ha_keys[k] then unknown_field(w, k, M.ha_keys) end
  end
  local function where(k) return w .. "." .. k end
  local out = { enabled = true }
  if type(v.etcd) ~= "table" or #v.etcd == 0 then
    fail(where("etcd"), "expected a list of etcd endpoints such as { \"http://10.0.0.1:2379\" }, got %s",
      describe(v.etcd))
  end
  out.etcd = {}
  for i, e in ipairs(v.etcd) do
    local ew = where("etcd") .. "[" .. i .. "]"
    str(ew, e)
    local host, port = e:match("^http://([^/:%s]+):(%d+)/?$")
    if not host or tonumber(port) < 1 or tonumber(port) > 65535 then
      fail(ew, "%s is not http://host:port (etcd's client URL; https is not supported)", quote(e))
    end
    out.etcd[i] = e
  end
  if v.cluster == nil then fail(where("cluster"), "is required: the name shared by the index nodes of one cluster") end
  out.cluster = ident(where("cluster"), v.cluster)
  if v.name == nil then fail(where("name"), "is required: this index node's own name, unique in the cluster") end
  out.name = ident(where("name"), v.name)
  for _, k in ipairs({ "advertise", "replication" }) do
    if v[k] == nil then
      fail(where(k), "is required: %s", k == "advertise"
        and "host:port where the other index nodes reach this one's API (forwarded writes)"
        or "host:port this node listens on for the replication stream")
    end
    local ok, err = M.check_hostport(v[k])
    if not ok then fail(where(k), "%s", err) end
    out[k] = v[k]
  end
  local sec = secrets(v, "secret", "secret_file", where, 1)
  if #sec == 0 then
    fail(where("secret"), "is required (or secret_file): the index nodes of a cluster share it")
  end
  out.secret = sec[1]
  out.ttl = dur(where("ttl"), v.ttl == nil and "5s" or v.ttl, 2000)
  if out.ttl > 60000 then fail(where("ttl"), "is over a minute: writes would stop that long after a failure") end
  local sync = v.sync == nil and "on" or v.sync
  if sync ~= "on" and sync ~= "strict" then
    fail(where("sync"), "expected \"on\" (go on alone when the standby fails) or \"strict\" "
      .. "(refuse writes until one is back), got %s", describe(sync))
  end
  out.strict = sync == "strict"
  out.sync_timeout = dur(where("sync_timeout"), v.sync_timeout == nil and "2s" or v.sync_timeout, 100)
  out.log_size_mb = v.log_size_mb == nil and 256 or int(where("log_size_mb"), v.log_size_mb, 1, 65536)
  return out
end

-- Top-level fields: default and checker. `where` is "field 'x'" or "flag -x".
M.fields = {
  listen = { "*", function(w, v) return str(w, v) end },
  port = { 3000, function(w, v) return int(w, v, 1, 65535) end },
  db = { "", function(w, v) return str(w, v, true) end },
  volumes = { {}, function(w, v)
    if type(v) ~= "table" then fail(w, "expected a list of \"host:port\" strings, got %s", describe(v)) end
    local out, seen = {}, {}
    for k in pairs(v) do
      if type(k) ~= "number" or k ~= math.floor(k) or k < 1 or k > #v then
        fail(w, "expected a list, found key %s", describe(k))
      end
    end
    for i, vol in ipairs(v) do
      local ok, err = M.check_hostport(vol)
      if not ok then fail(w .. "[" .. i .. "]", "%s", err) end
      if seen[vol] then fail(w .. "[" .. i .. "]", "duplicate volume %s (also volumes[%d])", quote(vol), seen[vol]) end
      seen[vol] = i
      out[i] = vol
    end
    return out
  end },
  replicas = { 3, function(w, v) return int(w, v, 1, 255) end },
  -- How many copies of a PUT must be written for its 201: "majority" (of the key's
  -- replica count: 2 of 3, 1 of 1, 2 of 2), "all" (the Go original), or a number (at
  -- most the replica count). Kept as a number: 0 majority, -1 all.
  write_quorum = { "majority", function(w, v)
    if v == "majority" then return 0 end
    if v == "all" then return -1 end
    if type(v) == "string" and v:match("^%d+$") then v = tonumber(v) end
    if type(v) ~= "number" then
      fail(w, "expected \"majority\", \"all\" or a number of copies, got %s", describe(v))
    end
    return int(w, v, 1, 255)
  end },
  -- The operator's volume states: { ["host:port"] = "read_only" | "drain" }. A volume not
  -- named is read-write. read_only: reads and deletes, no new copies; drain: the same,
  -- and no longer a placement target (rebalance and the repair move its copies off).
  volume_state = { {}, function(w, v)
    if type(v) ~= "table" then fail(w, "expected a table { [\"host:port\"] = state }, got %s", describe(v)) end
    local out = {}
    for k, s in pairs(v) do
      local ok, err = M.check_hostport(k)
      if not ok then fail(w, "%s", err) end
      if s ~= "read_only" and s ~= "drain" and s ~= "read_write" then
        fail(w .. "[" .. quote(k) .. "]", "expected \"read_only\", \"drain\" or \"read_write\", got %s",
          describe(s))
      end
      out[k] = s
    end
    return out
  end },
  -- The background repair (README "Volume health"): how often it looks for keys with
  -- fewer copies than their replica count or copies where placement does not want them
  -- ("0" turns it off), and the bounds it keeps to.
  repair_interval = { "10s", function(w, v) return dur(w, v, 0) end },
  repair_bandwidth = { "100MB/s", function(w, v)
    str(w, v)
    if not mkv.rate(v) then fail(w, "expected a rate such as \"100MB/s\", got %s", describe(v)) end
    return v
  end },
  repair_concurrency = { 4, function(w, v) return int(w, v, 1, 1000) end },
  subvolumes = { 10, function(w, v) return int(w, v, 1, 65536) end },
  protect = { false, bool },
  md5sum = { true, bool },
  voltimeout = { "1s", function(w, v) return dur(w, v, 1) end },
  -- How a GET picks the replica it redirects to: "head" (a HEAD to each in turn until
  -- one has the value: the Go original's) or "none" (the first on a volume that is up,
  -- with no request on the path; a miss bounces back from the volume).
  read_check = { "head", function(w, v)
    if v ~= "head" and v ~= "none" then fail(w, "expected \"head\" or \"none\", got %s", describe(v)) end
    return v
  end },
  fallback = { "", function(w, v)
    str(w, v, true)
    if v ~= "" then
      local ok, err = M.check_hostport(v)
      if not ok then fail(w, "%s", err) end
    end
    return v
  end },
  -- Where clients are sent for the bytes when they must not reach the volumes: redirects
  -- become <public_url>/<volume>/<path> (deploy/proxy serves that form). "" = the volume.
  public_url = { "", function(w, v)
    str(w, v, true)
    if v ~= "" then
      local scheme, host = v:match("^(https?)://([^/?#@%s]+)")
      if not scheme or v:find("[%s?#]") then
        fail(w, "%s is not an http(s):// base URL", quote(v))
      end
      if v:sub(-1) == "/" then fail(w, "%s must not end with '/'", quote(v)) end
    end
    return v
  end },
  -- The access log: "" = none, "-" = stderr, else a file to append to (reopened on SIGHUP,
  -- for logrotate). One line per request, Common Log Format plus the time taken.
  access_log = { "", function(w, v) return str(w, v, true) end },
  verbose = { false, bool },
  -- The admin listener: admin commands run inside a running server through it. Port 0
  -- picks a free one; either way the server writes the address to <db>/mkv.admin.
  admin_listen = { "127.0.0.1:0", function(w, v)
    str(w, v)
    local host, port = v:match("^(.+):(%d+)$")
    if not host or tonumber(port) > 65535 then fail(w, "%s is not host:port", quote(v)) end
    return v
  end },
  -- The status listener, off by default: a read-only page (GET /), /metrics and /health
  -- for people and scrapers, apart from the admin listener (whose jobs can delete
  -- files). A bare port ("3100" or 3100) listens on loopback only.
  status_listen = { "", function(w, v)
    if type(v) == "number" then v = tostring(int(w, v, 0, 65535)) end
    str(w, v, true)
    if v == "" then return v end
    if v:match("^%d+$") then v = "127.0.0.1:" .. v end
    local host, port = v:match("^(.+):(%d+)$")
    if not host or tonumber(port) > 65535 then
      fail(w, "%s is not host:port (or a port, for loopback)", quote(v))
    end
    return v
  end },
  -- Its Bearer token (required on every path when set), inline or as a file; a list of
  -- two while scrapers change over. Checked with the other fields in M.build.
  status_token = { nil, function(_, v) return v end },
  status_token_file = { nil, function(_, v) return v end },
  workers = { 0, function(w, v) return int(w, v, 0, 256) end },
  policies = { {}, function(w, v)
    if type(v) ~= "table" then fail(w, "expected a table, got %s", describe(v)) end
    local out, known = {}, {}
    for _, k in ipairs(M.policy_kinds) do known[k] = true end
    for k in pairs(v) do
      if not known[k] then
        local near = M.nearest(k, M.policy_kinds)
        fail(w, "unknown policy kind %s (%sexpected %s)", describe(k),
          near and ("did you mean " .. quote(near) .. "? ") or "", table.concat(M.policy_kinds, ", "))
      end
    end
    for _, k in ipairs(M.policy_kinds) do
      local name = v[k]
      if name == nil then name = "default" end
      out[k] = str(w .. "." .. k, name)
    end
    return out
  end },
  policy_path = { "", function(w, v) return str(w, v, true) end },
  -- Parameters for the policies (zones, weights ...): plain data, given to every policy
  -- state as mkv.config.policy. The policies check what they need of it when they load.
  policy_config = { {}, function(w, v)
    if type(v) ~= "table" then fail(w, "expected a table, got %s", describe(v)) end
    return M.serialize(w, v, 0)
  end },
  policy_timeout = { "50ms", function(w, v) return dur(w, v, 1) end },
  policy_memory_mb = { 64, function(w, v) return int(w, v, 4, 4096) end },
  limits = { {}, function(w, v) return subtable(w, v, M.limit_fields) end },
  leveldb = { {}, function(w, v) return subtable(w, v, M.leveldb_fields) end },
  -- Write protection (opt-in): see M.check_auth above and README "Write protection".
  auth = { nil, function(w, v, sub_where) return M.check_auth(w, v, sub_where) end },
  ha = { nil, function(w, v) return M.check_ha(w, v) end },
}

-- Plain data (tables, strings, numbers, booleans) as Lua source, so the C core can hand
-- a copy to every policy state. Raises on anything else (functions, cycles, depth > 8).
function M.serialize(where, v, depth)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then fail(where, "numbers must be finite") end
    return string.format("%.17g", v)
  end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then fail(where, "holds a %s: only tables, strings, numbers and booleans", t) end
  if depth > 8 then fail(where, "is nested too deep (or holds a cycle)") end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" and type(k) ~= "number" then
      fail(where, "has a key of type %s", type(k))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = "[" .. M.serialize(where, k, depth + 1) .. "]=" ..
      M.serialize(where .. "." .. tostring(k), v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- The Go original's flags (GO-ORIGINAL.md §1) plus mkv's own; value kinds for parsing.
M.flags = {
  port = { field = "port", kind = "int" },
  db = { field = "db", kind = "string" },
  fallback = { field = "fallback", kind = "string" },
  replicas = { field = "replicas", kind = "int" },
  subvolumes = { field = "subvolumes", kind = "int" },
  volumes = { field = "volumes", kind = "list" },
  protect = { field = "protect", kind = "bool" },
  v = { field = "verbose", kind = "bool" },
  md5sum = { field = "md5sum", kind = "bool" },
  voltimeout = { field = "voltimeout", kind = "string" },
  listen = { field = "listen", kind = "string" },
  workers = { field = "workers", kind = "int" },
  admin = { field = "admin_listen", kind = "string" },
  status = { field = "status_listen", kind = "string" },
  ["status-token-file"] = { field = "status_token_file", kind = "string" },
  ["write-quorum"] = { field = "write_quorum", kind = "string" },
  ["repair-interval"] = { field = "repair_interval", kind = "string" },
  ["read-check"] = { field = "read_check", kind = "string" },
  ["public-url"] = { field = "public_url", kind = "string" },
  ["access-log"] = { field = "access_log", kind = "string" },
  -- Secrets only as files: a secret on the command line shows in ps and in the journal.
  ["write-secret-file"] = { field = "auth.write_secret_file", kind = "string" },
  ["volume-key-file"] = { field = "auth.volume_key_file", kind = "string" },
  ["redirect-secret-file"] = { field = "auth.redirect_secret_file", kind = "string" },
}

-- Flags main.c reads itself, before any of the above.
M.own_flags = { "c", "config", "h", "help", "version" }

-- The flag an operator most likely meant by an unknown `name` (without dashes), or nil:
-- the flag of a config field given by its field name (-verbose: -v, -write_quorum:
-- -write-quorum), else the nearest flag name (-volums: -volumes).
function M.suggest_flag(name)
  if type(name) ~= "string" or name == "" then return nil end
  local as_field = name:gsub("-", "_")
  local names = {}
  for flag, f in pairs(M.flags) do
    if f.field == as_field then return flag end
    names[#names + 1] = flag
  end
  for _, flag in ipairs(M.own_flags) do names[#names + 1] = flag end
  return M.nearest(name, names)
end

local bools = { ["1"] = true, t = true, T = true, TRUE = true, ["true"] = true, True = true,
                ["0"] = false, f = false, F = false, FALSE = false, ["false"] = false, False = false }

-- Converts one flag's text as Go's flag package does. Returns field, value.
function M.flag_value(name, text)
  local f = M.flags[name]
  local where = "flag -" .. name
  if not f then
    local near = M.suggest_flag(name)
    if near then fail(where, "flag provided but not defined (did you mean -%s?)", near) end
    fail(where, "flag provided but not defined")
  end
  if f.kind == "int" then
    local n = text:match("^[+-]?%d+$") and tonumber(text)
    if not n then fail(where, "invalid value %s: not a whole number", quote(text)) end
    return f.field, n
  elseif f.kind == "bool" then
    local b = bools[text]
    if b == nil then fail(where, "invalid boolean value %s", quote(text)) end
    return f.field, b
  elseif f.kind == "list" then
    local out = {}
    if text == "" then return f.field, out end
    for item in (text .. ","):gmatch("([^,]*),") do out[#out + 1] = item end
    return f.field, out
  end
  return f.field, text
end

-- Loads config.lua: a chunk that returns a table. Its globals live in their own table,
-- so a stray assignment does not leak into anything else.
function M.load_file(path)
  local chunk, err = loadfile(path)
  if not chunk then
    error({ msg = (err or path):gsub("^cannot open", "cannot read") }, 0)
  end
  local env = setmetatable({}, { __index = _G })
  setfenv(chunk, env)
  local ok, t = pcall(chunk)
  if not ok then error({ msg = path .. ": " .. tostring(t) }, 0) end
  if type(t) ~= "table" then
    error({ msg = path .. ": the config must return a table, it returned " .. type(t) }, 0)
  end
  return t
end

-- Validates `t` (the config file's table, or {}), with `flags` (name -> text, in the
-- order given) laid over it. Returns the normalised config, or nil and a one-line error.
function M.build(t, flags, source)
  local ok, res = pcall(function()
    local where = {}
    local src = source or "config"
    for k in pairs(t) do
      if type(k) ~= "string" or not M.fields[k] then unknown_field(src, k, M.fields) end
    end
    local merged = {}
    for k, v in pairs(t) do
      merged[k] = v
      where[k] = src .. ": field '" .. k .. "'"
    end
    -- Relative secret files are found next to the config (or in the working directory).
    M.base_dir = source and source ~= "flags" and (source:match("^(.*)/[^/]*$") or ".") or nil
    local sub_where = {}
    for _, f in ipairs(flags or {}) do
      local field, value = M.flag_value(f[1], f[2])
      local top, sub = field:match("^([^.]+)%.(.+)$")
      if top then -- a flag for one field of a table (auth.write_secret_file)
        local copy = {}
        if type(merged[top]) == "table" then
          for k, x in pairs(merged[top]) do copy[k] = x end
        end
        -- The flag replaces the field, and its inline twin (write_secret) too.
        copy[sub:gsub("_file$", "")] = nil
        copy[sub] = value
        merged[top] = copy
        sub_where[top] = sub_where[top] or {}
        sub_where[top][sub] = "flag -" .. f[1]
      else
        merged[field] = value
        where[field] = "flag -" .. f[1]
      end
    end
    local out = {}
    for name, spec in pairs(M.fields) do
      local v = merged[name]
      if v == nil then v = spec[1] end
      out[name] = spec[2](where[name] or (src .. ": field '" .. name .. "'"), v, sub_where[name])
    end
    -- Checks across fields.
    if out.replicas > #out.volumes and #out.volumes > 0 then
      fail(where.replicas or where.volumes or src,
        "replicas is %d but there %s only %d %s (need at least as many volumes as replicas)",
        out.replicas, #out.volumes == 1 and "is" or "are", #out.volumes,
        #out.volumes == 1 and "volume" or "volumes")
    end
    local known, targets = {}, 0
    for _, vol in ipairs(out.volumes) do known[vol] = true end
    for _, vol in ipairs(out.volumes) do
      if out.volume_state[vol] ~= "drain" then targets = targets + 1 end
    end
    if #out.volumes > 0 and targets < out.replicas then
      fail(where.volume_state or src, "replicas is %d but only %d %s not draining "
        .. "(a draining volume takes no new copies)", out.replicas, targets,
        targets == 1 and "volume is" or "volumes are")
    end
    for vol in pairs(out.volume_state) do
      if #out.volumes > 0 and not known[vol] then
        fail(where.volume_state or src, "volume_state names %s, which is not one of the volumes",
          quote(vol))
      end
    end
    if out.write_quorum > out.replicas then
      fail(where.write_quorum or src, "write_quorum is %d but replicas is %d: a PUT could never "
        .. "reach it", out.write_quorum, out.replicas)
    end
    out.status_tokens = secrets(out, "status_token", "status_token_file", function(k)
      return where[k] or (src .. ": field '" .. k .. "'")
    end, M.auth_max_secrets)
    out.status_token, out.status_token_file = nil, nil
    if out.limits.low_water_kb >= out.limits.high_water_kb then
      fail(src .. ": field 'limits'", "low_water_kb (%d) must be below high_water_kb (%d)",
        out.limits.low_water_kb, out.limits.high_water_kb)
    end
    out.where = where
    return out
  end)
  if ok then return res end
  if type(res) == "table" then return nil, res.msg end
  return nil, tostring(res)
end

-- Checks what only a given command needs (the server needs volumes and a db).
function M.require_for(cfg, command)
  if cfg.db == "" then
    return nil, "no index directory: give -db DIR or db = \"DIR\" in the config"
  end
  if (command == "server" or command == "rebuild" or command == "rebalance"
      or command == "verify" or command == "gc") and #cfg.volumes == 0 then
    return nil, "no volumes: give -volumes host:port,... or volumes = { ... } in the config"
  end
  return cfg
end

return M
