/* lua_api.c: the `mkv` helper module. Every function is pure: strings and numbers in,
 * strings and tables out. Misuse raises (luaL_check*); a failure a caller should handle
 * returns nil, msg, code. */
#include "mkv/lua_api.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "mkv/common.h"
#include "mkv/hash.h"
#include "mkv/text.h"

static int l_md5(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[MKV_MD5_LEN];
  mkv_md5(s, n, md);
  lua_pushlstring(L, (const char *)md, MKV_MD5_LEN);
  return 1;
}

static int l_md5_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[MKV_MD5_LEN];
  char hex[MKV_MD5_HEX_LEN + 1];
  mkv_md5(s, n, md);
  mkv_hex(md, MKV_MD5_LEN, hex);
  lua_pushlstring(L, hex, MKV_MD5_HEX_LEN);
  return 1;
}

static int l_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char *out = mkv_malloc(2 * n + 1);
  mkv_hex((const unsigned char *)s, n, out);
  lua_pushlstring(L, out, 2 * n);
  free(out);
  return 1;
}

static int l_base64(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char small[512];
  size_t need = mkv_base64_len(n) + 1;
  char *out = need <= sizeof(small) ? small : mkv_malloc(need);
  size_t len = mkv_base64(s, n, out);
  lua_pushlstring(L, out, len);
  if (out != small) free(out);
  return 1;
}

static int l_base64_decode(lua_State *L) {
  size_t n, outlen = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char *out = mkv_malloc(n / 4 * 3 + 1);
  if (mkv_base64_decode(s, n, out, &outlen) != 0) {
    free(out);
    lua_pushnil(L);
    lua_pushfstring(L, "not standard base64: %s", s);
    lua_pushliteral(L, "EINVAL");
    return 3;
  }
  lua_pushlstring(L, (const char *)out, outlen);
  free(out);
  return 1;
}

/* md5_scores(key, volumes) -> { md5(key .. volumes[1]), ... }: every placement score in
 * one C call, so a placement over many volumes costs one crossing (library-facts §5). */
static int l_md5_scores(lua_State *L) {
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)lua_objlen(L, 2);
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    size_t vlen;
    lua_rawgeti(L, 2, i);
    const char *v = lua_tolstring(L, -1, &vlen);
    if (v == NULL) return luaL_error(L, "md5_scores: volumes[%d] is not a string", i);
    unsigned char md[MKV_MD5_LEN];
    mkv_md5_2(key, klen, v, vlen, md);
    lua_pop(L, 1);
    lua_pushlstring(L, (const char *)md, MKV_MD5_LEN);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

static int l_key_path(lua_State *L) {
  size_t klen, plen;
  const char *key = luaL_checklstring(L, 1, &klen);
  char *p = mkv_key_path(key, klen, &plen);
  lua_pushlstring(L, p, plen);
  free(p);
  return 1;
}

static int l_path_check(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  int rc = mkv_path_check(p, n);
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, mkv_strerror(rc));
  lua_pushstring(L, mkv_errname(rc));
  return 3;
}

static int l_json_string(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_json_string(&b, s, n);
  lua_pushlstring(L, b.data, b.len);
  mkv_buf_free(&b);
  return 1;
}

static int l_duration_ms(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  double ms;
  if (mkv_parse_duration(s, &ms) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "not a duration: %s", s);
    return 2;
  }
  lua_pushnumber(L, ms);
  return 1;
}

static const luaL_Reg mkv_funcs[] = {
    {"md5", l_md5},
    {"md5_hex", l_md5_hex},
    {"hex", l_hex},
    {"base64", l_base64},
    {"base64_decode", l_base64_decode},
    {"md5_scores", l_md5_scores},
    {"key_path", l_key_path},
    {"path_check", l_path_check},
    {"json_string", l_json_string},
    {"duration_ms", l_duration_ms},
    {NULL, NULL},
};

int luaopen_mkv(lua_State *L) {
  if (mkv_hash_init() != 0) return luaL_error(L, "OpenSSL has no MD5 (FIPS mode?)");
  lua_createtable(L, 0, (int)MKV_ARRAY_SIZE(mkv_funcs) + 1);
  luaL_register(L, NULL, mkv_funcs);
  /* A config table for specs that load policies outside a server; lua_vm.c replaces it
   * with the real one. */
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, 3);
  lua_setfield(L, -2, "replicas");
  lua_pushinteger(L, 10);
  lua_setfield(L, -2, "subvolumes");
  lua_setfield(L, -2, "config");
  return 1;
}
