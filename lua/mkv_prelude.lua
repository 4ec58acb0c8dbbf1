-- lua/mkv_prelude.lua: the parts of an admin script's `mkv` table written in Lua, on top
-- of the runtime's parking primitives (core/admin.c). Run once per script state.
local mkv = ...
local unpack = unpack

-- mkv.wait(handle) -> the spawned task's return values, or nil, err if it raised.
function mkv.wait(h)
  mkv._wait(h)
  if h.ok then return unpack(h.results) end
  return nil, h.err
end
