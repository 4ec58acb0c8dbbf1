/* lua_api.h: the `mkv` module that Lua code sees.
 *
 * luaopen_mkv() builds the table of pure helpers (md5, md5_hex, hex, base64,
 * base64_decode, md5_scores, key_path, path_check, json_string). It is opened in every
 * policy state by lua_vm.c, and CMake also builds it as a Lua C module (mkv.so) so
 * busted specs test the very same C code under LuaJIT. Nothing here does I/O or keeps
 * state, so any thread may use it on its own lua_State. */
#ifndef MKV_LUA_API_H
#define MKV_LUA_API_H

#include <lua.h>

int luaopen_mkv(lua_State *L);

#endif
