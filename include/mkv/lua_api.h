/* lua_api.h: the `mkv` module that Lua code sees.
 *
 * luaopen_mkv() builds the table of pure helpers (md5, md5_hex, hex, base64,
 * base64_decode, md5_scores, key_path, path_check, json_string, duration_ms, and the
 * record codec: record_decode, record_encode). It is opened in every
 * policy state by policy.c, and CMake also builds it as a Lua C module (mkv.so) so
 * busted specs test the very same C code under LuaJIT. Nothing here does I/O or keeps
 * state, so any thread may use it on its own lua_State. */
#ifndef MKV_LUA_API_H
#define MKV_LUA_API_H

#include <lua.h>

#include "mkv/common.h"

int luaopen_mkv(lua_State *L);

/* Pushes a volume list in record form ("v1/sv01,v2") as a Lua list (record.h's
 * iteration: an empty list is an empty table). */
void mkv_lua_push_volumes(lua_State *L, const char *list, size_t len);
/* Appends the Lua list at idx in record form; raises on an entry that is not a string
 * or holds ','. Returns the number of entries. */
int mkv_lua_join_volumes(lua_State *L, int idx, mkv_buf_t *out);

#endif
