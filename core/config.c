/* config.c: runs lua/mkv_config.lua over config.lua and the flags; copies the result
 * into mkv_config_t. Main thread only, before any worker exists. */
#include "mkv/config.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <uv.h>

#include "internal.h"
#include "mkv/common.h"
#include "mkv/lua_api.h"
#include "mkv/text.h"

const char *const mkv_policy_kind_names[MKV_POLICY_KINDS] = {
#define KIND_NAME(id, name) name,
    MKV_POLICY_KIND_LIST(KIND_NAME)
#undef KIND_NAME
};

/* A fresh state holding the module table of lua/mkv_config.lua on top, with the `mkv`
 * helpers it requires (durations, the policy kinds). NULL with *err on failure. */
static lua_State *validator_state(char **err) {
  lua_State *L = luaL_newstate();
  if (L == NULL) mkv_fatal("cannot create a Lua state");
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushcfunction(L, luaopen_mkv);
  lua_call(L, 0, 1);
  lua_setfield(L, -2, "mkv");
  lua_pop(L, 2);
  const mkv__embedded_t *e = mkv__embedded_find("lua/mkv_config.lua");
  if (e == NULL) {
    *err = mkv_strdup("lua/mkv_config.lua is not compiled into this binary");
  } else if (luaL_loadbuffer(L, e->src, e->len, "@lua/mkv_config.lua") != 0 ||
             lua_pcall(L, 0, 1, 0) != 0) {
    *err = mkv_sprintf("lua/mkv_config.lua: %s", lua_tostring(L, -1));
  } else {
    return L;
  }
  lua_close(L);
  return NULL;
}

int mkv_config_flag_kind(const char *name, int *is_bool) {
  char *err = NULL;
  lua_State *L = validator_state(&err);
  if (L == NULL) mkv_fatal("%s", err);
  lua_getfield(L, -1, "flags");
  lua_getfield(L, -1, name);
  int known = lua_istable(L, -1);
  if (known) {
    lua_getfield(L, -1, "kind");
    const char *kind = lua_tostring(L, -1);
    *is_bool = kind != NULL && strcmp(kind, "bool") == 0;
  }
  lua_close(L);
  return known ? 0 : -1;
}

char *mkv_config_flag_suggest(const char *name) {
  char *err = NULL;
  lua_State *L = validator_state(&err);
  if (L == NULL) mkv_fatal("%s", err);
  lua_getfield(L, -1, "suggest_flag");
  lua_pushstring(L, name);
  char *out = NULL;
  if (lua_pcall(L, 1, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING)
    out = mkv_strdup(lua_tostring(L, -1));
  lua_close(L);
  return out;
}

int mkv_write_quorum(const mkv_config_t *cfg, int nrep) {
  if (cfg->write_quorum < 0) return nrep;
  if (cfg->write_quorum == 0) return nrep / 2 + 1;
  return MKV_MIN(cfg->write_quorum, nrep);
}

int mkv_config_push(lua_State *L, const mkv_config_t *cfg) {
  lua_createtable(L, 0, 10);
  lua_createtable(L, cfg->nvolumes, 0);
  for (int i = 0; i < cfg->nvolumes; i++) {
    lua_pushstring(L, cfg->volumes[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "volumes");
  lua_pushinteger(L, cfg->nvolumes);
  lua_setfield(L, -2, "nvolumes");
  lua_pushinteger(L, cfg->replicas);
  lua_setfield(L, -2, "replicas");
  lua_pushinteger(L, cfg->subvolumes);
  lua_setfield(L, -2, "subvolumes");
  lua_pushboolean(L, cfg->md5sum);
  lua_setfield(L, -2, "md5sum");
  lua_pushboolean(L, cfg->protect);
  lua_setfield(L, -2, "protect");
  lua_pushnumber(L, cfg->voltimeout_ms / 1000.0);
  lua_setfield(L, -2, "voltimeout");
  lua_pushnumber(L, cfg->limits.volume_timeout_ms / 1000.0);
  lua_setfield(L, -2, "volume_timeout");
  /* policy_config is plain data that mkv_config.lua serialised (M.serialize): its
   * chunk only builds tables, so it needs no deadline. */
  const char *pc = cfg->policy_config && cfg->policy_config[0] ? cfg->policy_config : "{}";
  mkv_buf_t src;
  mkv_buf_init(&src);
  mkv_buf_addf(&src, "return %s", pc);
  int rc = luaL_loadbuffer(L, src.data, src.len, "=policy_config");
  mkv_buf_free(&src);
  if (rc == 0) rc = lua_pcall(L, 0, 1, 0);
  if (rc != 0) {
    lua_remove(L, -2); /* the half-built table: the message takes its place */
    return -1;
  }
  lua_setfield(L, -2, "policy");
  return 0;
}

static char *get_str(lua_State *L, int t, const char *name) {
  lua_getfield(L, t, name);
  char *s = mkv_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
  return s;
}

static double get_num(lua_State *L, int t, const char *name) {
  lua_getfield(L, t, name);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int get_bool(lua_State *L, int t, const char *name) {
  lua_getfield(L, t, name);
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The SHA-256 of each secret in the list t[name] (at most MKV_AUTH_MAX_SECRETS), for
 * mkv_auth_bearer_ok: the secrets themselves are not kept. */
static void get_digests(lua_State *L, int t, const char *name, mkv_auth_config_t *a) {
  lua_getfield(L, t, name);
  int n = (int)MKV_MIN(lua_objlen(L, -1), MKV_AUTH_MAX_SECRETS);
  for (int i = 0; i < n; i++) {
    size_t len;
    lua_rawgeti(L, -1, i + 1);
    const char *s = lua_tolstring(L, -1, &len);
    mkv_auth_digest(s, len, a->write_digest[i]);
    lua_pop(L, 1);
  }
  a->nwrite = n;
  lua_pop(L, 1);
}

static void copy_out(lua_State *L, int t, mkv_config_t *cfg) {
  cfg->listen = get_str(L, t, "listen");
  cfg->port = (int)get_num(L, t, "port");
  cfg->db = get_str(L, t, "db");
  cfg->replicas = (int)get_num(L, t, "replicas");
  cfg->subvolumes = (int)get_num(L, t, "subvolumes");
  cfg->protect = get_bool(L, t, "protect");
  cfg->md5sum = get_bool(L, t, "md5sum");
  cfg->voltimeout_ms = get_num(L, t, "voltimeout");
  cfg->fallback = get_str(L, t, "fallback");
  cfg->public_url = get_str(L, t, "public_url");
  cfg->access_log = get_str(L, t, "access_log");
  cfg->verbose = get_bool(L, t, "verbose");
  cfg->admin_listen = get_str(L, t, "admin_listen");
  cfg->workers = (int)get_num(L, t, "workers");
  if (cfg->workers == 0) cfg->workers = (int)MKV_MIN(uv_available_parallelism(), 64);
  cfg->policy_path = get_str(L, t, "policy_path");
  cfg->policy_config = get_str(L, t, "policy_config");
  cfg->policy_timeout_ms = get_num(L, t, "policy_timeout");
  cfg->policy_memory = (size_t)get_num(L, t, "policy_memory_mb") << 20;

  lua_getfield(L, t, "volumes");
  cfg->nvolumes = (int)lua_objlen(L, -1);
  cfg->volumes = mkv_calloc((size_t)cfg->nvolumes + 1, sizeof(char *));
  for (int i = 0; i < cfg->nvolumes; i++) {
    lua_rawgeti(L, -1, i + 1);
    cfg->volumes[i] = mkv_strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  /* volume_state: { ["host:port"] = "read_only" | "drain" | "read_write" } */
  cfg->volume_modes = mkv_calloc((size_t)cfg->nvolumes + 1, sizeof(mkv_vol_mode_t));
  cfg->placement_volumes = mkv_calloc((size_t)cfg->nvolumes + 1, sizeof(char *));
  lua_getfield(L, t, "volume_state");
  for (int i = 0; i < cfg->nvolumes; i++) {
    lua_getfield(L, -1, cfg->volumes[i]);
    const char *s = lua_tostring(L, -1);
    cfg->volume_modes[i] = s == NULL                      ? MKV_VOL_RW
                           : strcmp(s, "read_only") == 0 ? MKV_VOL_READ_ONLY
                           : strcmp(s, "drain") == 0     ? MKV_VOL_DRAIN
                                                         : MKV_VOL_RW;
    lua_pop(L, 1);
    if (cfg->volume_modes[i] != MKV_VOL_DRAIN)
      cfg->placement_volumes[cfg->nplacement++] = cfg->volumes[i];
  }
  lua_pop(L, 1);
  cfg->write_quorum = (int)get_num(L, t, "write_quorum");
  char *rc = get_str(L, t, "read_check");
  cfg->read_check = strcmp(rc, "none") == 0 ? MKV_READ_CHECK_NONE : MKV_READ_CHECK_HEAD;
  free(rc);
  cfg->repair_interval_ms = get_num(L, t, "repair_interval");
  char *rate = get_str(L, t, "repair_bandwidth");
  if (mkv_parse_rate(rate, &cfg->repair_bandwidth) != 0) cfg->repair_bandwidth = 0;
  free(rate);
  cfg->repair_concurrency = (int)get_num(L, t, "repair_concurrency");

  lua_getfield(L, t, "policies");
  for (int k = 0; k < MKV_POLICY_KINDS; k++)
    cfg->policies[k] = get_str(L, lua_gettop(L), mkv_policy_kind_names[k]);
  lua_pop(L, 1);

  lua_getfield(L, t, "limits");
  int l = lua_gettop(L);
  cfg->limits.header_bytes = (size_t)get_num(L, l, "header_bytes");
  cfg->limits.url_bytes = (size_t)get_num(L, l, "url_bytes");
  cfg->limits.max_connections = (int)get_num(L, l, "max_connections");
  cfg->limits.idle_timeout_ms = get_num(L, l, "idle_timeout");
  cfg->limits.header_timeout_ms = get_num(L, l, "header_timeout");
  cfg->limits.body_timeout_ms = get_num(L, l, "body_timeout");
  cfg->limits.body_min_rate = get_num(L, l, "body_min_rate");
  cfg->limits.volume_timeout_ms = get_num(L, l, "volume_timeout");
  cfg->limits.suspect_time_ms = get_num(L, l, "suspect_time");
  cfg->limits.probe_interval_ms = get_num(L, l, "probe_interval");
  cfg->limits.probe_backoff_ms = get_num(L, l, "probe_backoff");
  cfg->limits.drain_timeout_ms = get_num(L, l, "drain_timeout");
  cfg->limits.high_water = (size_t)get_num(L, l, "high_water_kb") << 10;
  cfg->limits.low_water = (size_t)get_num(L, l, "low_water_kb") << 10;
  cfg->limits.list_slice = (int)get_num(L, l, "list_slice");
  lua_pop(L, 1);

  cfg->status_listen = get_str(L, t, "status_listen");
  get_digests(L, t, "status_tokens", &cfg->status_auth);

  lua_getfield(L, t, "auth");
  l = lua_gettop(L);
  get_digests(L, l, "write_secrets", &cfg->auth);
  cfg->auth.read = get_bool(L, l, "read");
  cfg->auth.list = get_bool(L, l, "list");
  char *vk = get_str(L, l, "volume_key");
  if (vk[0]) cfg->auth.volume_header = mkv_sprintf("%s: %s\r\n", MKV_AUTH_VOLUME_HEADER, vk);
  free(vk);
  cfg->auth.redirect_secret = get_str(L, l, "redirect_secret");
  cfg->auth.redirect_ttl_s = (long long)(get_num(L, l, "redirect_ttl") / 1000);
  lua_pop(L, 1);

  lua_getfield(L, t, "ha");
  l = lua_gettop(L);
  cfg->ha.enabled = get_bool(L, l, "enabled");
  if (cfg->ha.enabled) {
    lua_getfield(L, l, "etcd");
    cfg->ha.netcd = (int)lua_objlen(L, -1);
    cfg->ha.etcd = mkv_calloc((size_t)cfg->ha.netcd + 1, sizeof(char *));
    for (int i = 0; i < cfg->ha.netcd; i++) {
      lua_rawgeti(L, -1, i + 1);
      cfg->ha.etcd[i] = mkv_strdup(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    cfg->ha.cluster = get_str(L, l, "cluster");
    cfg->ha.name = get_str(L, l, "name");
    cfg->ha.advertise = get_str(L, l, "advertise");
    cfg->ha.replication = get_str(L, l, "replication");
    cfg->ha.secret = get_str(L, l, "secret");
    cfg->ha.ttl_ms = get_num(L, l, "ttl");
    cfg->ha.sync_timeout_ms = get_num(L, l, "sync_timeout");
    cfg->ha.strict = get_bool(L, l, "strict");
    cfg->ha.log_bytes = (size_t)get_num(L, l, "log_size_mb") << 20;
  }
  lua_pop(L, 1);

  lua_getfield(L, t, "leveldb");
  l = lua_gettop(L);
  cfg->leveldb.cache_mb = (size_t)get_num(L, l, "cache_mb");
  cfg->leveldb.write_buffer_mb = (size_t)get_num(L, l, "write_buffer_mb");
  cfg->leveldb.max_file_mb = (size_t)get_num(L, l, "max_file_mb");
  cfg->leveldb.max_open_files = (int)get_num(L, l, "max_open_files");
  cfg->leveldb.bloom_bits = (int)get_num(L, l, "bloom_bits");
  lua_pop(L, 1);
}

/* The directory part of a path ("." when it has none). */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) return mkv_strdup(".");
  if (slash == path) return mkv_strdup("/");
  return mkv_memdup(path, (size_t)(slash - path));
}

/* A config file is a program: one that never returns (a loop, a metatable whose
 * __index loops) must not hang the start. Its evaluation runs under a deadline: the hook
 * fires every LOAD_HOOK_COUNT instructions (the JIT is off in this state: compiled code
 * calls no hook); once the deadline has passed every instruction raises, so a pcall in
 * the file cannot swallow it. One state at a time loads (main thread, SIGHUP). */
#define LOAD_BUDGET_MS 5000
#define LOAD_HOOK_COUNT 10000
static uint64_t load_deadline_ms;

static void load_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (mkv_now_ms() < load_deadline_ms) return;
  lua_sethook(L, load_hook, LUA_MASKCOUNT, 1);
  lua_pushfstring(L, "did not finish within %d s (a loop?)", LOAD_BUDGET_MS / 1000);
  lua_error(L);
}

int mkv_config_load(mkv_config_t *cfg, const char *path, const mkv_flag_t *flags,
                    int nflags, const char *command, char **err) {
  memset(cfg, 0, sizeof(*cfg));
  lua_State *L = validator_state(err);
  if (L == NULL) return -1;
  int rc = -1;
  int M = lua_gettop(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  load_deadline_ms = mkv_now_ms() + LOAD_BUDGET_MS;
  lua_sethook(L, load_hook, LUA_MASKCOUNT, LOAD_HOOK_COUNT);

  /* t = path and M.load_file(path) or {} */
  if (path != NULL) {
    lua_getfield(L, M, "load_file");
    lua_pushstring(L, path);
    if (lua_pcall(L, 1, 1, 0) != 0) {
      if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "msg");
        *err = mkv_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "cannot load config");
      } else { /* the deadline, raised past load_file's own pcall */
        *err = mkv_sprintf("%s: %s", path, lua_isstring(L, -1) ? lua_tostring(L, -1) : "failed");
      }
      goto cleanup;
    }
  } else {
    lua_newtable(L);
  }
  int t = lua_gettop(L);

  lua_getfield(L, M, "build");
  lua_pushvalue(L, t);
  lua_createtable(L, nflags, 0);
  for (int i = 0; i < nflags; i++) {
    lua_createtable(L, 2, 0);
    lua_pushstring(L, flags[i].name);
    lua_rawseti(L, -2, 1);
    lua_pushstring(L, flags[i].value);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushstring(L, path ? path : "flags");
  if (lua_pcall(L, 3, 2, 0) != 0 || lua_isnil(L, -2)) {
    *err = mkv_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "invalid config");
    goto cleanup;
  }
  lua_pop(L, 1);
  int res = lua_gettop(L);

  lua_getfield(L, M, "require_for");
  lua_pushvalue(L, res);
  lua_pushstring(L, command);
  if (lua_pcall(L, 2, 2, 0) != 0 || lua_isnil(L, -2)) {
    *err = mkv_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "invalid config");
    goto cleanup;
  }
  lua_pop(L, 2);

  copy_out(L, res, cfg);
  cfg->source = path ? mkv_strdup(path) : NULL;
  cfg->config_dir = path ? dir_of(path) : mkv_strdup(".");
  if (cfg->policy_path[0] == '\0' && path != NULL) {
    /* Operators' policies sit next to the config, in policies/; the built-in ones
     * (policies/default.lua ...) are found after these. */
    free(cfg->policy_path);
    cfg->policy_path = mkv_sprintf("%s/policies/?.lua", cfg->config_dir);
  }
  rc = 0;

cleanup:
  lua_close(L);
  if (rc != 0) mkv_config_free(cfg);
  return rc;
}

void mkv_config_free(mkv_config_t *cfg) {
  free(cfg->source);
  free(cfg->config_dir);
  free(cfg->listen);
  free(cfg->db);
  if (cfg->volumes)
    for (int i = 0; i < cfg->nvolumes; i++) free(cfg->volumes[i]);
  free(cfg->volumes);
  free(cfg->volume_modes);
  free(cfg->placement_volumes);
  free(cfg->fallback);
  free(cfg->public_url);
  free(cfg->access_log);
  free(cfg->admin_listen);
  free(cfg->status_listen);
  for (int k = 0; k < MKV_POLICY_KINDS; k++) free(cfg->policies[k]);
  free(cfg->policy_path);
  free(cfg->policy_config);
  mkv_ha_config_free(&cfg->ha);
  free(cfg->auth.volume_header);
  if (cfg->auth.redirect_secret) {
    OPENSSL_cleanse(cfg->auth.redirect_secret, strlen(cfg->auth.redirect_secret));
    free(cfg->auth.redirect_secret);
  }
  OPENSSL_cleanse(cfg, sizeof(*cfg));
}

/* ---- the ha part ---- */

static char *dup_or_null(const char *s) {
  return s ? mkv_strdup(s) : NULL;
}

void mkv_ha_config_copy(mkv_ha_config_t *dst, const mkv_ha_config_t *src) {
  *dst = *src;
  dst->etcd = mkv_calloc((size_t)src->netcd + 1, sizeof(char *));
  for (int i = 0; i < src->netcd; i++) dst->etcd[i] = mkv_strdup(src->etcd[i]);
  dst->cluster = dup_or_null(src->cluster);
  dst->name = dup_or_null(src->name);
  dst->advertise = dup_or_null(src->advertise);
  dst->replication = dup_or_null(src->replication);
  dst->secret = dup_or_null(src->secret);
}

void mkv_ha_config_free(mkv_ha_config_t *c) {
  if (c->etcd)
    for (int i = 0; i < c->netcd; i++) free(c->etcd[i]);
  free(c->etcd);
  free(c->cluster);
  free(c->name);
  free(c->advertise);
  free(c->replication);
  if (c->secret) {
    OPENSSL_cleanse(c->secret, strlen(c->secret));
    free(c->secret);
  }
  memset(c, 0, sizeof(*c));
}

static int str_differs(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

int mkv_ha_config_differs(const mkv_ha_config_t *a, const mkv_ha_config_t *b) {
  if (a->enabled != b->enabled) return 1;
  if (!a->enabled) return 0;
  if (a->netcd != b->netcd) return 1;
  for (int i = 0; i < a->netcd; i++)
    if (strcmp(a->etcd[i], b->etcd[i]) != 0) return 1;
  return str_differs(a->cluster, b->cluster) || str_differs(a->name, b->name) ||
         str_differs(a->advertise, b->advertise) || str_differs(a->replication, b->replication) ||
         str_differs(a->secret, b->secret) || a->ttl_ms != b->ttl_ms ||
         a->sync_timeout_ms != b->sync_timeout_ms || a->strict != b->strict ||
         a->log_bytes != b->log_bytes;
}
