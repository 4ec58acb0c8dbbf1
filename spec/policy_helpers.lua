-- spec/policy_helpers.lua: loads a policy module in busted the way a server loads it
-- (core/policy.c build_state() and require_policy()), so that the policy specs run it
-- under the same locked globals: only the allow-listed base functions; read-only
-- string, table, math, bit, mkv and mkv.config; reading an undefined global or setting
-- any global raises; require finds other policies only while the module loads.
--
--   local policy = require "policy_helpers"
--   local Z = policy.load("zones", { replicas = 3, subvolumes = 1, policy = { zones = z } })
--
-- Each load is a policy state of its own: lua/mkv_sandbox.lua run afresh, a fresh
-- mkv.config, the module and every module it requires loaded again in it.
--
-- Why not run the sandbox on busted's own globals: it changes for good what it is
-- handed. It sets string.dump to nil, locks the string metatable (shared by every string
-- in the process: penlight's pl.pretty reads getmetatable("")), empties package.loaded,
-- preload, path and cpath (busted's own modules), and sets mkv.config on the module it
-- is given. A second run would fail outright: getmetatable("") is false after the first.
-- So each load hands it a stand-in for a fresh state's globals: the base functions,
-- copies of string, table, math and bit, a package table of its own with a require
-- bound to it (the real require always looks in the real package.loaders and loaded),
-- and a copy of the mkv module. What the sandbox changes are those copies, gone with
-- the load; busted and later specs never see it.
--
-- Where this still differs from a server: the sandbox's lock of the string metatable
-- is stood in for -- getmetatable(s) inside the policy answers false, as in a server,
-- but ("").dump still reaches the real string.dump through the metatable's __index (a
-- server has none). No deadline hook or memory cap, and the JIT stays on: those are
-- proved by the integration specs against the real binary. And mkv.config.volumes (with
-- nvolumes) is there only when the spec gives volumes; a server always has it, and the
-- modules' load-time checks against the volume list run only then.
local H = require "helpers"
local mkv_c = require "mkv"

local P = {}

local SANDBOX = H.root .. "/lua/mkv_sandbox.lua"
-- Where policies are found, first to last. A spec may put a directory of its own first,
-- as a server looks in its policy_path before the built-in policies/.
P.dirs = { H.root .. "/policies/" }

-- What luaopen_base gives a new LuaJIT state (build_state opens it first).
local BASE = {
  "assert", "collectgarbage", "coroutine", "dofile", "error", "gcinfo", "getfenv",
  "getmetatable", "ipairs", "load", "loadfile", "loadstring", "newproxy", "next", "pairs",
  "pcall", "print", "rawequal", "rawget", "rawset", "select", "setfenv", "setmetatable",
  "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION",
}

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- policy_config as the server hands it over: the state's own copy.
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[deep_copy(k)] = deep_copy(x) end
  return c
end

-- Lua 5.1's require, on the given package table rather than the real one.
local function require_in(pkg)
  local loading = {}
  return function(name)
    if type(name) ~= "string" then error("bad argument #1 to 'require' (string expected)", 2) end
    local got = pkg.loaded[name]
    if got == loading then error("loop or previous error loading module '" .. name .. "'", 2) end
    if got then return got end
    local tried = {}
    for _, searcher in ipairs(pkg.loaders) do
      local chunk = searcher(name)
      if type(chunk) == "function" then
        pkg.loaded[name] = loading
        local r = chunk(name)
        if r ~= nil then pkg.loaded[name] = r end
        if pkg.loaded[name] == loading then pkg.loaded[name] = true end
        return pkg.loaded[name]
      end
      if type(chunk) == "string" then tried[#tried + 1] = chunk end
    end
    error("module '" .. name .. "' not found:" .. table.concat(tried), 2)
  end
end

-- The globals of a new state with the allow-listed libraries open, before the sandbox.
local function fresh_globals()
  local G = {}
  for _, k in ipairs(BASE) do G[k] = _G[k] end
  G.string, G.table, G.math, G.bit = copy(string), copy(table), copy(math), copy(bit)
  -- Stands in for the one string metatable of the process: the sandbox locks this one.
  local string_mt = { __index = G.string }
  G.getmetatable = function(v)
    if type(v) ~= "string" then return getmetatable(v) end
    local locked = rawget(string_mt, "__metatable")
    if locked ~= nil then return locked end
    return string_mt
  end
  local pkg = { loaders = {}, preload = {}, path = package.path, cpath = package.cpath,
                config = package.config, loadlib = package.loadlib, seeall = package.seeall }
  pkg.loaded = { _G = G, package = pkg, string = G.string, table = G.table, math = G.math,
                 bit = G.bit, coroutine = G.coroutine }
  G.package, G.require = pkg, require_in(pkg)
  G._G = G
  return G, pkg
end

-- mkv.config as build_state fills it; c: the spec's values.
local function config(c)
  return {
    replicas = c.replicas or 3, subvolumes = c.subvolumes or 10,
    volumes = deep_copy(c.volumes), nvolumes = c.volumes and #c.volumes,
    md5sum = c.md5sum ~= false, protect = c.protect == true,
    policy = c.policy == nil and {} or deep_copy(c.policy), -- "{}" when the config has none
  }
end

-- Loads <name>.lua from P.dirs in a state of its own; c: replicas, subvolumes (default 3,
-- 10, the values mkv.so's own mkv.config has), volumes, md5sum, protect, policy (the
-- policy_config table). -> the module. A module that raises while it loads raises here
-- with its own message.
function P.load(name, c)
  local G0, pkg = fresh_globals()
  local sandbox = assert(loadfile(SANDBOX))
  setfenv(sandbox, G0)
  local G = sandbox(G0, pkg, copy(mkv_c), config(c or {}))
  -- policy.c's policy_searcher: a policy requires another from P.dirs, in the same
  -- globals, and only while the first one loads (set_loaders).
  pkg.loaders = { function(mod)
    local tried = {}
    for _, dir in ipairs(P.dirs) do
      local chunk, err = loadfile(dir .. mod .. ".lua")
      if chunk then return setfenv(chunk, G) end
      tried[#tried + 1] = "\n\t" .. err
    end
    return table.concat(tried)
  end }
  local M = G.require(name)
  pkg.loaders = {}
  if type(M) ~= "table" then
    error("policy '" .. name .. "': the module must return a table of functions, it returned " .. type(M), 0)
  end
  return M
end

return P
