-- spec/ops_helpers.lua: tools for spec/integration/ops_spec.lua and the fault cluster's
-- Cluster:metrics -- a strict parser of the Prometheus text format (0.0.4) that mkv's
-- /metrics speaks, lookups and deltas of its series, and a parser of the access log's
-- lines (Common Log Format + seconds).
local O = {}

-- ---- Prometheus text format ----

local TYPES = { counter = true, gauge = true, histogram = true, summary = true, untyped = true }
local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*$"

local function parse_value(s)
  if s == "+Inf" then return math.huge end
  if s == "-Inf" then return -math.huge end
  if s == "NaN" then return 0 / 0 end
  if not s:match("^[-+]?%d+%.?%d*[eE]?[-+]?%d*$") and not s:match("^[-+]?%.%d+$") then return nil end
  return tonumber(s)
end

-- Parses the label block after '{' at position i of line; returns labels, position after '}'.
local function parse_labels(line, i, where)
  local labels, order = {}, {}
  while true do
    if line:sub(i, i) == "}" then return labels, i + 1, order end
    local name, eq = line:match("^([^=]*)()=", i)
    assert(name and name:match(LABEL), where .. ": bad label name at column " .. i)
    assert(labels[name] == nil, where .. ": label " .. name .. " twice")
    i = eq + 1
    assert(line:sub(i, i) == '"', where .. ": label " .. name .. "'s value is not quoted")
    i = i + 1
    local val = {}
    while true do
      local ch = line:sub(i, i)
      assert(ch ~= "", where .. ": unterminated label value")
      if ch == "\\" then
        local e = line:sub(i + 1, i + 1)
        assert(e == "\\" or e == '"' or e == "n", where .. ": bad escape \\" .. e)
        val[#val + 1] = e == "n" and "\n" or e
        i = i + 2
      elseif ch == '"' then
        i = i + 1
        break
      else
        val[#val + 1] = ch
        i = i + 1
      end
    end
    labels[name] = table.concat(val)
    order[#order + 1] = name
    local sep = line:sub(i, i)
    if sep == "," then
      i = i + 1
    else
      assert(sep == "}", where .. ": expected ',' or '}' after a label value")
    end
  end
end

local function series_key(name, labels, skip)
  local names = {}
  for k in pairs(labels) do if k ~= skip then names[#names + 1] = k end end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. string.format("%q", labels[k]) end
  return name .. "{" .. table.concat(parts, ",") .. "}"
end
O.series_key = series_key

-- The family a sample belongs to: its name, or for a histogram's _bucket/_sum/_count
-- series the histogram's name.
local function family_of(name, types)
  if types[name] then return name end
  for _, suf in ipairs({ "_bucket", "_sum", "_count" }) do
    local base = name:sub(1, -#suf - 1)
    if name:sub(-#suf) == suf and (types[base] == "histogram" or types[base] == "summary") then
      return base, suf
    end
  end
  return nil
end

-- Parses and checks an exposition; errors (naming the line) on anything malformed:
-- a line that is neither a comment nor `name{labels} value`, a TYPE or HELP given twice
-- for a name, a sample before its family's TYPE or apart from its family's other lines,
-- an unquoted or badly escaped label value, a duplicate series, a counter below zero, a
-- histogram whose buckets are not increasing in le and cumulative, without +Inf, or
-- whose +Inf bucket is not its _count.
-- Returns { types = {family = type}, values = {series_key = value}, samples = {...} }.
function O.parse(text)
  assert(type(text) == "string" and #text > 0, "empty exposition")
  assert(text:sub(-1) == "\n", "the exposition does not end with a newline")
  local types, helps, values, samples = {}, {}, {}, {}
  local seen_family, closed = {}, {}
  local current
  local n = 0
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    local where = "line " .. n .. " (" .. line .. ")"
    assert(not line:find("\r", 1, true), where .. ": carriage return")
    if line:match("^#") then
      local kind, name, rest = line:match("^# (%u+) (%S+) ?(.*)$")
      if kind == "TYPE" then
        assert(name:match(NAME), where .. ": bad metric name")
        assert(TYPES[rest], where .. ": unknown type " .. tostring(rest))
        assert(types[name] == nil, where .. ": second TYPE for " .. name)
        assert(not seen_family[name], where .. ": TYPE after samples of " .. name)
        types[name] = rest
      elseif kind == "HELP" then
        assert(name:match(NAME), where .. ": bad metric name")
        assert(helps[name] == nil, where .. ": second HELP for " .. name)
        helps[name] = rest
      end
      -- other comments are allowed and ignored
    else
      assert(line ~= "", where .. ": empty line")
      local name, i = line:match("^([a-zA-Z_:][a-zA-Z0-9_:]*)()")
      assert(name, where .. ": no metric name")
      local labels = {}
      if line:sub(i, i) == "{" then labels, i = parse_labels(line, i + 1, where) end
      local vtext, ts = line:sub(i):match("^ (%S+)( ?%-?%d*)$")
      assert(vtext, where .. ": expected ' value' after the name and labels")
      local value = parse_value(vtext)
      assert(value, where .. ": bad value " .. vtext)
      local fam, suf = family_of(name, types)
      assert(fam, where .. ": sample of " .. name .. " before (or without) its # TYPE")
      if fam ~= current then
        assert(not closed[fam], where .. ": lines of " .. fam .. " are not grouped together")
        if current then closed[current] = true end
        current = fam
      end
      seen_family[fam] = true
      local t = types[fam]
      if t == "histogram" then
        assert(suf, where .. ": histogram " .. fam .. " sample without _bucket/_sum/_count")
        if suf == "_bucket" then
          assert(labels.le, where .. ": bucket without le")
          assert(parse_value(labels.le), where .. ": bad le " .. labels.le)
        else
          assert(labels.le == nil, where .. ": le on a " .. suf .. " series")
        end
      else
        assert(labels.le == nil or t ~= "counter", where .. ": le label on a counter")
      end
      if t == "counter" then assert(value >= 0, where .. ": negative counter") end
      local key = series_key(name, labels)
      assert(values[key] == nil, where .. ": duplicate series " .. key)
      values[key] = value
      samples[#samples + 1] = { name = name, labels = labels, value = value, family = fam, suffix = suf }
    end
  end
  -- Histograms: per series (labels without le), buckets in increasing le, cumulative,
  -- ending with +Inf == _count, and a _sum.
  local hists = {}
  for _, s in ipairs(samples) do
    if types[s.family] == "histogram" then
      local hk = series_key(s.family, s.labels, "le")
      local h = hists[hk] or { buckets = {} }
      hists[hk] = h
      if s.suffix == "_bucket" then
        h.buckets[#h.buckets + 1] = { le = parse_value(s.labels.le), n = s.value }
      elseif s.suffix == "_count" then
        h.count = s.value
      else
        h.sum = s.value
      end
    end
  end
  for hk, h in pairs(hists) do
    assert(#h.buckets > 0, hk .. ": no buckets")
    for j = 2, #h.buckets do
      assert(h.buckets[j].le > h.buckets[j - 1].le, hk .. ": le not increasing")
      assert(h.buckets[j].n >= h.buckets[j - 1].n, hk .. ": buckets not cumulative")
    end
    assert(h.buckets[#h.buckets].le == math.huge, hk .. ": no +Inf bucket")
    assert(h.count, hk .. ": no _count")
    assert(h.sum, hk .. ": no _sum")
    assert(h.buckets[#h.buckets].n == h.count, hk .. ": +Inf bucket differs from _count")
    assert(h.sum >= 0, hk .. ": negative _sum")
  end
  return { types = types, helps = helps, values = values, samples = samples, hists = hists }
end

-- The value of one series (0 when absent: counters by label appear once non-zero).
function O.get(m, name, labels)
  return m.values[series_key(name, labels or {})] or 0
end

-- True when the series is present at all.
function O.has(m, name, labels)
  return m.values[series_key(name, labels or {})] ~= nil
end

-- Sum of every series of `name` whose labels include `match`.
function O.sum(m, name, match)
  local total = 0
  for _, s in ipairs(m.samples) do
    if s.name == name then
      local ok = true
      for k, v in pairs(match or {}) do
        if s.labels[k] ~= v then ok = false end
      end
      if ok then total = total + s.value end
    end
  end
  return total
end

-- ---- the access log ----

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- `127.0.0.1 - - [24/Nov/2026:16:02:34 +0000] "PUT /k1 HTTP/1.1" 201 0 0.016734`
-- -> { peer, time (epoch seconds), method, target, proto, status, bytes, seconds } or nil.
function O.parse_access(line)
  local peer, d, mon, y, hh, mm, ss, req, status, bytes, secs = line:match(
    "^(%S+) %- %- %[(%d%d)/(%a%a%a)/(%d%d%d%d):(%d%d):(%d%d):(%d%d) %+0000%] " ..
    "\"([^\"]*)\" (%d%d%d) (%d+) (%d+%.%d%d%d%d%d%d)$")
  if not peer or not MONTHS[mon] then return nil end
  local method, target, proto = req:match("^(%u+) (%S+) (HTTP/1%.[01])$")
  if not method then return nil end
  local t = days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 +
            tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
  return { peer = peer, time = t, method = method, target = target, proto = proto,
           status = tonumber(status), bytes = tonumber(bytes), seconds = tonumber(secs) }
end

function O.lines(text)
  local out = {}
  for line in (text or ""):gmatch("([^\n]*)\n") do out[#out + 1] = line end
  return out
end

return O
