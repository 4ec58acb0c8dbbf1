-- lua/mkv_sandbox.lua: locks the globals of a policy state (library-facts §3.3).
--
-- policy.c runs this once per worker state, after the allow-listed libraries and the
-- `mkv` helpers are in and before any policy module is loaded, and makes the table it
-- returns the state's globals. Afterwards: reading an undefined global raises, setting
-- any global raises, and `string`, `table`, `math`, `bit`, `mkv` are read-only. This is
-- a guard against mistakes in trusted operator code, not a sandbox against hostile code
-- (Mike Pall: only a separate process is).
local G0, package, mkv_real, config = ...

local setmetatable, getmetatable, error, tostring, pairs = setmetatable, getmetatable, error, tostring, pairs

local function readonly(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("attempt to modify read-only table '" .. name .. "' (field '" .. tostring(k) .. "')", 2)
    end,
    __metatable = false,
  })
end

-- What a policy may use: pure functions only. No io, os, debug, jit, ffi, load*,
-- dofile, setfenv/getfenv, rawset, module, collectgarbage, coroutine, print.
local keep = {
  assert = true, error = true, ipairs = true, next = true, pairs = true, pcall = true,
  select = true, tonumber = true, tostring = true, type = true, unpack = true,
  xpcall = true, setmetatable = true, getmetatable = true, rawequal = true,
  rawget = true, require = true, _VERSION = true,
}

string.dump = nil
-- ("").sub would otherwise reach the real string table through the metatable.
getmetatable("").__metatable = false

-- The deadline (policy.c) fires between Lua instructions, never inside a C function:
-- one pattern match can backtrack for hours ("a*a*a*a*b" over a long subject). So the
-- pattern functions refuse work they cannot finish quickly, before they start: a
-- subject over 16 KB, or a pattern whose worst case -- about n^(q+1) steps for n bytes
-- and q quantifiers (* + -) -- is over a few million. Keys and volume names are far
-- below either; the worst a policy can do is fail its request. (Methods, s:gsub(...),
-- reach the same table: it is changed in place.)
do
  local MAX_SUBJECT, BUDGET = 16384, 4e6
  local find, match, gmatch, gsub = string.find, string.match, string.gmatch, string.gsub
  local type, tostring = type, tostring
  local function check(name, s, pattern, plain)
    if type(s) == "number" then s = tostring(s) end
    if type(s) ~= "string" then return end -- the C function says what is wrong
    if #s > MAX_SUBJECT then
      error(name .. ": subject of " .. #s .. " bytes (policies may match at most 16 KB)", 3)
    end
    if plain or type(pattern) ~= "string" then return end
    local q = 0
    local i, n = 1, #pattern
    while i <= n do
      local c = pattern:byte(i)
      if c == 37 then i = i + 1 -- '%': the next byte is escaped
      elseif c == 42 or c == 43 or c == 45 then q = q + 1 end -- * + -
      i = i + 1
    end
    if (#s + 1) ^ (q + 1) > BUDGET then
      error(name .. ": pattern with " .. q .. (q == 1 and " quantifier" or " quantifiers")
        .. " over " .. #s .. " bytes could take too long", 3)
    end
  end
  string.find = function(s, p, init, plain)
    check("string.find", s, p, plain)
    return find(s, p, init, plain)
  end
  string.match = function(s, p, init)
    check("string.match", s, p)
    return match(s, p, init)
  end
  string.gmatch = function(s, p)
    check("string.gmatch", s, p)
    return gmatch(s, p)
  end
  string.gsub = function(s, p, r, n)
    check("string.gsub", s, p)
    return gsub(s, p, r, n)
  end
end

for k in pairs(package.preload) do package.preload[k] = nil end
package.cpath = ""
package.path = ""
package.loadlib = nil

mkv_real.config = readonly(config, "mkv.config")
local mkv = readonly(mkv_real, "mkv")
package.loaded.mkv = mkv

local real = {}
for k in pairs(keep) do real[k] = G0[k] end

-- xpcall's message handler runs where the error was raised, and LuaJIT calls no hook
-- there: a handler that loops would outlive the deadline. The handler runs here after
-- the call has unwound, as ordinary code the deadline reaches.
do
  local pcall, type = G0.pcall, G0.type
  local function finish(handler, ok, ...)
    if ok then return true, ... end
    return false, handler((...))
  end
  real.xpcall = function(f, handler, ...)
    if type(handler) ~= "function" then error("bad argument #2 to 'xpcall' (function expected)", 2) end
    return finish(handler, pcall(f, ...))
  end
end
real.string = readonly(string, "string")
real.table = readonly(table, "table")
real.math = readonly(math, "math")
real.bit = readonly(bit, "bit")

local G = setmetatable({}, {
  __index = function(_, k)
    local v = real[k]
    if v == nil then error("undefined global '" .. tostring(k) .. "'", 2) end
    return v
  end,
  __newindex = function(_, k)
    error("attempt to set global '" .. tostring(k) .. "' (policies must not set globals)", 2)
  end,
  __metatable = false,
})
real._G = G

-- require("string") must not hand out the writable originals either.
for k in pairs(package.loaded) do package.loaded[k] = nil end
package.loaded.string, package.loaded.table = real.string, real.table
package.loaded.math, package.loaded.bit = real.math, real.bit
package.loaded._G, package.loaded.mkv = G, mkv
return G
