/* admin_lua.c: the admin script's Lua state -- the `mkv` table a script sees (the pure
 * helpers of lua_api.c, the scheduler's and the transfers' bindings, and those here:
 * index pages, reads and writes, the API's key locks, placement through a checked
 * policy state, progress and output), the prelude written in Lua, the script's chunk,
 * and the built-in modules of lua/ it may require. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "admin_int.h"
#include "internal.h"
#include "mkv/health.h"
#include "mkv/keylock.h"
#include "mkv/log.h"
#include "mkv/lua_api.h"
#include "mkv/repair.h"

/* ---- the index ---- */

/* mkv.index_scan(start, limit [, prefix]) -> { {key, value}, ... }: a page of records
 * from `start` (inclusive) in byte order, within `prefix` if given. A fresh iterator
 * each page: a long scan never pins an old LevelDB version. */
static int l_index_scan(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t slen, plen = 0;
  const char *start = luaL_checklstring(L, 1, &slen);
  int limit = (int)luaL_checkinteger(L, 2);
  const char *prefix = luaL_optlstring(L, 3, "", &plen);
  mkv_index_iter_t *it = mkv_index_iter_new(a->index);
  mkv_index_iter_seek(it, start, slen);
  lua_createtable(L, limit > 0 && limit < 100000 ? limit : 0, 0);
  int n = 0;
  for (; n < limit && mkv_index_iter_valid(it); mkv_index_iter_next(it)) {
    size_t klen, vlen;
    const char *k = mkv_index_iter_key(it, &klen);
    if (plen && (klen < plen || memcmp(k, prefix, plen) != 0)) break;
    const char *v = mkv_index_iter_value(it, &vlen);
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, k, klen);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, v, vlen);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, ++n);
  }
  char *err = NULL;
  int failed = mkv_index_iter_error(it, &err);
  mkv_index_iter_free(it);
  if (failed) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    free(err);
    lua_pushliteral(L, "EIO");
    return 3;
  }
  return 1;
}

static int l_index_get(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t v;
  mkv_buf_init(&v);
  int rc = mkv_index_get(a->index, key, klen, &v);
  if (rc == UV_ENOENT) {
    mkv_buf_free(&v);
    lua_pushnil(L);
    return 1;
  }
  if (rc != 0) {
    mkv_buf_free(&v);
    return mkv__push_error(L, rc);
  }
  lua_pushlstring(L, v.data ? v.data : "", v.len);
  mkv_buf_free(&v);
  return 1;
}

typedef struct iw_op_s {
  op_t op;
  mkv_index_write_t w;
} iw_op_t;

/* The one push of an index write's results: true, or nil, msg, code. */
static int iw_push(lua_State *L, int status) {
  if (status != 0) return mkv__push_error(L, status);
  lua_pushboolean(L, 1);
  return 1;
}

static void iw_done(mkv_index_write_t *w, int status) {
  iw_op_t *o = w->data;
  task_t *t = o->op.task;
  iw_push(t->T, status);
  mkv_index_write_free(&o->w);
  free(o);
  mkv__task_resume(t);
}

/* mkv.index_put(key, value [, sync]) / mkv.index_del(key [, sync]) -> true | nil, msg:
 * through the index-writer thread, as the API's writes. */
static int index_write(lua_State *L, int del) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  size_t klen, vlen = 0;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *val = del ? NULL : luaL_checklstring(L, 2, &vlen);
  int sync = lua_toboolean(L, del ? 2 : 3);
  if (mkv_index_failure(a->index)) return iw_push(L, MKV_EINDEX);
  iw_op_t *o = mkv_calloc(1, sizeof(*o));
  mkv_index_write_init(&o->w);
  o->w.data = o;
  if (del)
    mkv_index_del(a->port, &o->w, key, klen, sync, iw_done);
  else
    mkv_index_put(a->port, &o->w, key, klen, val, vlen, sync, iw_done);
  mkv__task_park(t, &o->op, OP_INDEX_WRITE); /* completes soon: a cancel waits for it */
  return lua_yield(L, 0);
}

static int l_index_put(lua_State *L) {
  return index_write(L, 0);
}

static int l_index_del(lua_State *L) {
  return index_write(L, 1);
}

/* mkv.lock(key) -> true | false: the API's key lock, without waiting (a key a PUT or
 * DELETE holds is left for later). Released by mkv.unlock or when the task ends. */
static int l_lock(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  if (mkv_keylock_try_as(key, klen, MKV_LOCK_ADMIN, NULL) != 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  mkv_buf_add(&t->locks, &klen, sizeof(klen));
  mkv_buf_add(&t->locks, key, klen);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_unlock(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  size_t off = 0;
  while (off < t->locks.len) {
    size_t l;
    memcpy(&l, t->locks.data + off, sizeof(l));
    size_t rec = sizeof(l) + l;
    if (l == klen && memcmp(t->locks.data + off + sizeof(l), key, klen) == 0) {
      mkv_keylock_release(key, klen);
      memmove(t->locks.data + off, t->locks.data + off + rec, t->locks.len - off - rec);
      t->locks.len -= rec;
      lua_pushboolean(L, 1);
      return 1;
    }
    off += rec;
  }
  return luaL_error(L, "mkv.unlock: this task holds no lock on that key");
}

/* ---- placement, through a checked policy state ---- */

/* A policy call's failure, as the script sees it: nil, the policy's message, EPOLICY. */
static int push_policy_error(lua_State *L, mkv_admin_t *a) {
  lua_pushnil(L);
  lua_pushstring(L, mkv_policy_error(a->policy));
  lua_pushstring(L, mkv_errname(MKV_EPOLICY));
  return 3;
}

/* mkv.place(key) -> { "host:port[/svXX]", ... } | nil, msg, code;
 * mkv.path(key) -> "/ab/cd/<base64>" | nil, msg, code. */
static int place_or_path(lua_State *L, int place) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t b;
  mkv_buf_init(&b);
  int n, rc = place ? mkv_policy_place(a->policy, key, klen, &b, &n)
                    : mkv_policy_path(a->policy, key, klen, &b);
  if (rc != 0)
    n = push_policy_error(L, a);
  else if (place)
    mkv_lua_push_volumes(L, b.data, b.len), n = 1;
  else
    lua_pushlstring(L, b.data, b.len), n = 1;
  mkv_buf_free(&b);
  return n;
}

static int l_place(lua_State *L) {
  return place_or_path(L, 1);
}

static int l_path(lua_State *L) {
  return place_or_path(L, 0);
}

/* mkv.place_writable(key, n) -> { volume, ... } | nil, msg, code: placement asked again
 * among the volumes that can take a copy now (up, neither full, read-only nor draining),
 * at most n of them -- the order a PUT hands copies off in. */
static int l_place_writable(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  int n = (int)luaL_checkinteger(L, 2);
  const mkv_config_t *cfg = a->cfg;
  char **can;
  int ncan = mkv_health_writable_volumes(cfg, NULL, 0, &can), got = 0, rc = 0;
  mkv_buf_t b;
  mkv_buf_init(&b);
  if (ncan > 0 && n > 0) rc = mkv_policy_place_among(a->policy, key, klen, can, ncan, n, &b, &got);
  free(can);
  int nret = 1;
  if (rc != 0)
    nret = push_policy_error(L, a);
  else
    mkv_lua_push_volumes(L, b.data, b.len);
  mkv_buf_free(&b);
  return nret;
}

/* mkv.rebalance_plan(key, have, want) -> copy, drop: the rebalance policy's answer,
 * checked (copies only to `want`, drops only from `have`, never every good copy). */
static int l_rebalance_plan(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t have, want, copy, drop;
  mkv_buf_init(&have);
  mkv_buf_init(&want);
  mkv_buf_init(&copy);
  mkv_buf_init(&drop);
  mkv_lua_join_volumes(L, 2, &have);
  mkv_lua_join_volumes(L, 3, &want);
  int rc = mkv_policy_rebalance(a->policy, key, klen, have.data ? have.data : "", have.len,
                                want.data ? want.data : "", want.len, &copy, &drop);
  if (rc != 0) {
    push_policy_error(L, a);
  } else {
    mkv_lua_push_volumes(L, copy.data, copy.len);
    mkv_lua_push_volumes(L, drop.data, drop.len);
  }
  mkv_buf_free(&have);
  mkv_buf_free(&want);
  mkv_buf_free(&copy);
  mkv_buf_free(&drop);
  return rc != 0 ? 3 : 2;
}

/* ---- progress and output ---- */

/* mkv.progress{ phase = "name", total = N, done = n, total_bytes = B }: a new phase
 * starts its own count; `done` adds to it. total_bytes: the bytes the phase will move
 * (read or copy), counted from now, for a byte rate and an ETA. */
static int l_progress(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  a->progressed = 1;
  lua_getfield(L, 1, "phase");
  if (lua_isstring(L, -1)) {
    snprintf(a->phase, sizeof(a->phase), "%s", lua_tostring(L, -1));
    a->done_units = 0;
    a->total = 0;
    a->total_bytes = 0;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "total");
  if (lua_isnumber(L, -1)) a->total = lua_tonumber(L, -1);
  lua_getfield(L, 1, "done");
  if (lua_isnumber(L, -1)) a->done_units += lua_tonumber(L, -1);
  lua_getfield(L, 1, "total_bytes");
  if (lua_isnumber(L, -1)) {
    a->total_bytes = lua_tonumber(L, -1);
    a->bytes_base = a->bytes;
    a->bytes_base_ns = mkv_now_ns();
  }
  return 0;
}

/* mkv.count(name [, n]): examined, changed, failed or skipped. */
static int l_count(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  const char *name = luaL_checkstring(L, 1);
  unsigned long long n = (unsigned long long)luaL_optinteger(L, 2, 1);
  static const char *const names[] = {"examined", "changed", "failed", "skipped"};
  unsigned long long *ctr[] = {&a->examined, &a->changed, &a->failed, &a->skipped};
  for (int i = 0; i < (int)MKV_ARRAY_SIZE(names); i++)
    if (strcmp(name, names[i]) == 0) {
      *ctr[i] += n;
      a->counted |= 1u << i; /* mkv.count(name, 0) too: the script keeps that count */
      return 0;
    }
  return luaL_error(L, "mkv.count: unknown counter %s", name);
}

static int l_report(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mkv__admin_emit(a, MKV_ADMIN_REPORT, "%.*s", (int)n, s);
  return 0;
}

static int l_log(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mkv__admin_emit(a, MKV_ADMIN_LOG, "%.*s", (int)n, s);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)mkv_now_ns() / 1e9);
  return 1;
}

/* ---- volume health and the repair set (health.h, repair.h: the server's; offline, every
 * volume reads as up and the set is empty) ---- */

/* mkv.volume_state("host:port") -> "up" | "down" | "full" | "read_only" | "drain" */
static int l_volume_state(lua_State *L) {
  size_t n;
  const char *v = luaL_checklstring(L, 1, &n);
  mkv_vol_t *hv = mkv_health_find(v, mkv_volume_host_len(v, n));
  mkv_vol_health_t h = mkv_vol_health(hv);
  mkv_vol_mode_t m = mkv_vol_mode(hv);
  lua_pushstring(L, h == MKV_VOL_DOWN ? "down" : h == MKV_VOL_FULL ? "full"
                    : m == MKV_VOL_RW ? "up" : mkv_vol_mode_name(m));
  return 1;
}

static int l_repair_note(lua_State *L) {
  size_t n;
  const char *k = luaL_checklstring(L, 1, &n);
  mkv_repair_note(k, n);
  return 0;
}

static void push_taken(const char *key, size_t klen, void *arg) {
  lua_State *L = arg;
  lua_pushlstring(L, key, klen);
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
}

/* mkv.repair_pass(): a new pass; mkv.repair_take(n) -> { key, ... } noted before it. */
static int l_repair_pass(lua_State *L) {
  (void)L;
  mkv_repair_pass();
  return 0;
}

static int l_repair_take(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  lua_newtable(L);
  mkv_repair_take(n, push_taken, L);
  return 1;
}

static int l_repair_done(lua_State *L) {
  size_t n;
  const char *k = luaL_checklstring(L, 1, &n);
  mkv_repair_done(k, n);
  return 0;
}

/* mkv.repair_retry(key [, failed]) */
static int l_repair_retry(lua_State *L) {
  size_t n;
  const char *k = luaL_checklstring(L, 1, &n);
  mkv_repair_retry(k, n, lua_toboolean(L, 2));
  return 0;
}

/* mkv.repair_scan() -> true when a scan of the whole index is due (it is then the
 * caller's, until mkv.repair_scan_done()). */
static int l_repair_scan(lua_State *L) {
  lua_pushboolean(L, mkv_repair_take_scan());
  return 1;
}

static int l_repair_scan_done(lua_State *L) {
  (void)L;
  mkv_repair_scan_done();
  return 0;
}

/* ---- backup: a thread copies the index; the script watches it ---- */

#define BACKUP_MT "mkv.backup"

typedef struct backup_s {
  pthread_t thread;
  int joined;
  mkv_index_t *index;
  const mkv_config_t *cfg;
  char *dir;
  mkv_index_backup_progress_t pr;
  _Atomic int done;
  char *err; /* set by the thread before done */
} backup_t;

static void *backup_main(void *arg) {
  backup_t *b = arg;
  mkv_log_set_thread_name("backup");
  mkv_index_backup(b->index, b->dir, b->cfg, &b->pr, &b->err);
  atomic_store(&b->done, 1);
  return NULL;
}

static void backup_join(backup_t *b) {
  if (b->joined) return;
  atomic_store(&b->pr.cancel, 1);
  pthread_join(b->thread, NULL);
  b->joined = 1;
}

/* mkv.backup(dir) -> handle | nil, msg: starts copying the index (a snapshot of it as it
 * is now) into a new LevelDB at dir, on a thread of its own. */
static int l_backup(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  const char *dir = luaL_checkstring(L, 1);
  backup_t *b = lua_newuserdata(L, sizeof(*b));
  memset(b, 0, sizeof(*b));
  b->joined = 1; /* until the thread runs */
  b->index = a->index;
  b->cfg = a->cfg;
  b->dir = mkv_strdup(dir);
  luaL_getmetatable(L, BACKUP_MT);
  lua_setmetatable(L, -2);
  if (pthread_create(&b->thread, NULL, backup_main, b) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start the backup thread: %s", strerror(errno));
    return 2;
  }
  b->joined = 0;
  return 1;
}

/* handle:poll() -> keys, bytes, done, err: how far the copy is; err once it failed. */
static int l_backup_poll(lua_State *L) {
  backup_t *b = luaL_checkudata(L, 1, BACKUP_MT);
  int done = atomic_load(&b->done);
  lua_pushnumber(L, (lua_Number)atomic_load(&b->pr.keys));
  lua_pushnumber(L, (lua_Number)atomic_load(&b->pr.bytes));
  lua_pushboolean(L, done);
  if (done && b->err)
    lua_pushstring(L, b->err);
  else
    lua_pushnil(L);
  return 4;
}

/* The script ended (or was cancelled) before the copy did: stop it, then free. */
static int l_backup_gc(lua_State *L) {
  backup_t *b = luaL_checkudata(L, 1, BACKUP_MT);
  backup_join(b);
  free(b->dir);
  free(b->err);
  b->dir = b->err = NULL;
  return 0;
}

static void backup_register(lua_State *L) {
  luaL_newmetatable(L, BACKUP_MT);
  lua_newtable(L);
  lua_pushcfunction(L, l_backup_poll);
  lua_setfield(L, -2, "poll");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_backup_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

static const luaL_Reg admin_funcs[] = {
    {"index_scan", l_index_scan}, {"index_get", l_index_get},
    {"index_put", l_index_put}, {"index_del", l_index_del},
    {"lock", l_lock},           {"unlock", l_unlock},
    {"place", l_place},         {"path", l_path},
    {"place_writable", l_place_writable},
    {"rebalance_plan", l_rebalance_plan},
    {"progress", l_progress},   {"count", l_count},
    {"report", l_report},       {"log", l_log},
    {"now", l_now},             {"volume_state", l_volume_state},
    {"repair_note", l_repair_note}, {"repair_pass", l_repair_pass},
    {"repair_take", l_repair_take}, {"repair_done", l_repair_done},
    {"repair_retry", l_repair_retry}, {"repair_scan", l_repair_scan},
    {"repair_scan_done", l_repair_scan_done}, {"backup", l_backup}, {NULL, NULL},
};

/* ---- the script's state ---- */

/* package.loaders entry: modules of lua/ compiled into the binary ("mkv_admin"). */
static int embedded_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char path[256];
  snprintf(path, sizeof(path), "lua/%s.lua", name);
  const mkv__embedded_t *e = mkv__embedded_find(path);
  if (e == NULL) {
    lua_pushfstring(L, " no built-in module lua/%s.lua", name);
    return 1;
  }
  char chunk[300];
  snprintf(chunk, sizeof(chunk), "@%s", path);
  if (luaL_loadbuffer(L, e->src, e->len, chunk) != 0) return lua_error(L);
  return 1;
}

int mkv_admin_script_exists(const char *name) {
  char path[256];
  snprintf(path, sizeof(path), "lua/%s.lua", name);
  return mkv__embedded_find(path) != NULL;
}

int mkv__admin_build_state(mkv_admin_t *a, const char *script_path, char **err) {
  lua_State *L = luaL_newstate();
  if (L == NULL) mkv_fatal("cannot create a Lua state");
  a->L = L;
  luaL_openlibs(L);

  /* mkv = the pure helpers + the runtime's functions + config + args */
  lua_pushcfunction(L, luaopen_mkv);
  lua_call(L, 0, 1);
  luaL_register(L, NULL, mkv__admin_task_funcs);
  luaL_register(L, NULL, mkv__admin_xfer_funcs);
  luaL_register(L, NULL, admin_funcs);
  backup_register(L);
  if (mkv_config_push(L, a->cfg) != 0) {
    *err = mkv_sprintf("policy_config: %s", lua_tostring(L, -1));
    return -1;
  }
  lua_setfield(L, -2, "config");
  lua_newtable(L);
  for (int i = 0; i < a->opts.argc; i++) {
    lua_pushstring(L, a->opts.argv[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "args");
  lua_pushinteger(L, a->opts.concurrency);
  lua_setfield(L, -2, "concurrency");
  /* mkv.wait and friends, written in Lua on top of the parking primitives */
  const mkv__embedded_t *pre = mkv__embedded_find("lua/mkv_prelude.lua");
  if (pre == NULL || luaL_loadbuffer(L, pre->src, pre->len, "@lua/mkv_prelude.lua") != 0) {
    *err = mkv_strdup(pre ? lua_tostring(L, -1) : "lua/mkv_prelude.lua is not compiled in");
    return -1;
  }
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    *err = mkv_strdup(lua_tostring(L, -1));
    return -1;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "mkv");
  lua_pop(L, 1);
  /* built-in lua/ modules after the usual searchers */
  lua_getfield(L, -1, "loaders");
  lua_pushcfunction(L, embedded_searcher);
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  lua_pop(L, 2);
  lua_setglobal(L, "mkv");

  /* the script: sent over the wire, a file given by path, or lua/<name>.lua compiled in */
  int rc;
  if (a->opts.source) {
    char chunk[300];
    snprintf(chunk, sizeof(chunk), "@%s", a->script);
    rc = luaL_loadbuffer(L, a->opts.source, a->opts.source_len, chunk);
  } else if (script_path) {
    rc = luaL_loadfile(L, script_path);
  } else {
    char path[256];
    snprintf(path, sizeof(path), "lua/%s.lua", a->script);
    const mkv__embedded_t *e = mkv__embedded_find(path);
    if (e == NULL) {
      *err = mkv_sprintf("no admin script named '%s'", a->script);
      return -1;
    }
    char chunk[300];
    snprintf(chunk, sizeof(chunk), "@%s", path);
    rc = luaL_loadbuffer(L, e->src, e->len, chunk);
  }
  if (rc != 0) {
    *err = mkv_sprintf("%s", lua_tostring(L, -1));
    return -1;
  }
  return 0;
}
