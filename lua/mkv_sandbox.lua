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

for k in pairs(package.preload) do package.preload[k] = nil end
package.cpath = ""
package.path = ""
package.loadlib = nil

mkv_real.config = readonly(config, "mkv.config")
local mkv = readonly(mkv_real, "mkv")
package.loaded.mkv = mkv

local real = {}
for k in pairs(keep) do real[k] = G0[k] end
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
