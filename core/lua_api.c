/* lua_api.c: the `mkv` helper module. Every function is pure: strings and numbers in,
 * strings and tables out. Misuse raises (luaL_check*); a failure a caller should handle
 * returns nil, msg, code. */
#include "mkv/lua_api.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/hash.h"
#include "mkv/record.h"
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

void mkv_lua_push_volumes(lua_State *L, const char *list, size_t len) {
  lua_createtable(L, mkv_volumes_count(list, len), 0);
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  int i = 0;
  mkv_volumes_iter(&it, list, len);
  while (mkv_volumes_next(&it, &item, &ilen)) {
    lua_pushlstring(L, item, ilen);
    lua_rawseti(L, -2, ++i);
  }
}

int mkv_lua_join_volumes(lua_State *L, int idx, mkv_buf_t *out) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)lua_objlen(L, idx);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    size_t l;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &l) : NULL;
    if (s == NULL || memchr(s, ',', l)) {
      mkv_buf_free(out);
      return luaL_error(L, "a volume list holds strings without commas (entry %d)", i);
    }
    if (i > 1) mkv_buf_addc(out, ',');
    mkv_buf_add(out, s, l);
    lua_pop(L, 1);
  }
  return n;
}

/* record_decode(value) -> { deleted = bool, hash = "32 hex" | nil, volumes = {...} } |
 * nil, msg, "ECORRUPT": record.h's decoder, so scripts read and write the Go format
 * exactly as the server does (the hash as stored, every volume name in order). */
static int l_record_decode(lua_State *L) {
  size_t n;
  const char *v = luaL_checklstring(L, 1, &n);
  mkv_record_t r;
  if (mkv_record_decode(v, n, &r) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "corrupt record (bad HASH)");
    lua_pushstring(L, mkv_errname(MKV_ECORRUPT));
    return 3;
  }
  lua_createtable(L, 0, 4);
  lua_pushboolean(L, r.deleted);
  lua_setfield(L, -2, "deleted");
  if (r.writing) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "writing");
  }
  if (r.has_hash) {
    lua_pushlstring(L, r.hash, 32);
    lua_setfield(L, -2, "hash");
  }
  mkv_lua_push_volumes(L, r.volumes, r.volumes_len);
  lua_setfield(L, -2, "volumes");
  return 1;
}

/* record_encode{ deleted = bool, writing = bool, hash = "32 hex" | nil, volumes = {...} }
 * -> the record's bytes (writing: a write in progress, "DELETEDINIT"). Misuse (a hash
 * that is not 32 hex digits, a volume holding ',') raises. */
static int l_record_encode(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "hash");
  size_t hl = 0;
  unsigned char md[MKV_MD5_LEN];
  const char *hash = lua_isnil(L, -1) ? NULL : lua_tolstring(L, -1, &hl);
  if (!lua_isnil(L, -1) && (hash == NULL || hl != 32 || mkv_unhex(hash, 32, md) != 0))
    return luaL_error(L, "record_encode: hash must be 32 hex digits");
  lua_getfield(L, 1, "deleted");
  int deleted = lua_toboolean(L, -1);
  lua_getfield(L, 1, "writing");
  int state = lua_toboolean(L, -1) ? MKV_REC_WRITING : deleted ? MKV_REC_DELETED : MKV_REC_LIVE;
  lua_getfield(L, 1, "volumes");
  mkv_buf_t vols, out;
  mkv_buf_init(&vols);
  mkv_buf_init(&out);
  mkv_lua_join_volumes(L, lua_gettop(L), &vols);
  mkv_record_encode(&out, state, hash, vols.data ? vols.data : "", vols.len);
  lua_pushlstring(L, out.data, out.len);
  mkv_buf_free(&vols);
  mkv_buf_free(&out);
  return 1;
}

/* place_of("h:p/sv03/alt") -> "h:p/sv03": an entry's place, either slot (record.h). */
static int l_place_of(lua_State *L) {
  size_t n;
  const char *v = luaL_checklstring(L, 1, &n);
  lua_pushlstring(L, v, mkv_volume_place_len(v, n));
  return 1;
}

/* rate("100MB/s") -> bytes per second | nil, msg (the admin commands' --bandwidth). */
static int l_rate(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  double v;
  if (mkv_parse_rate(s, &v) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "not a rate: %s", s);
    return 2;
  }
  lua_pushnumber(L, v);
  return 1;
}

static const luaL_Reg mkv_funcs[] = {
    {"rate", l_rate},
    {"place_of", l_place_of},
    {"record_decode", l_record_decode},
    {"record_encode", l_record_encode},
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
  lua_pushliteral(L, MKV_ALT_SLOT); /* REPLACE's second slot of a volume entry */
  lua_setfield(L, -2, "ALT_SLOT");
  /* The policy kinds (config.h), for lua/mkv_config.lua's check of `policies`. */
  static const char *const kinds[] = {
#define KIND_NAME(id, name) name,
      MKV_POLICY_KIND_LIST(KIND_NAME)
#undef KIND_NAME
  };
  lua_createtable(L, (int)MKV_ARRAY_SIZE(kinds), 0);
  for (size_t i = 0; i < MKV_ARRAY_SIZE(kinds); i++) {
    lua_pushstring(L, kinds[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_setfield(L, -2, "policy_kinds");
  /* A config table for specs that load policies outside a server; policy.c replaces it
   * with the real one. */
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, 3);
  lua_setfield(L, -2, "replicas");
  lua_pushinteger(L, 10);
  lua_setfield(L, -2, "subvolumes");
  lua_setfield(L, -2, "config");
  return 1;
}
