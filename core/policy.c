/* policy.c: policy states. One per worker, made at startup, locked, called under a
 * deadline with a capped allocator; what policies return is checked here. */
#include "mkv/policy.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>

#include "internal.h"
#include "mkv/hash.h"
#include "mkv/record.h"
#include "mkv/log.h"
#include "mkv/lua_api.h"

/* Instructions between two deadline checks: small enough that a runaway loop is caught
 * within microseconds of its deadline, large enough that the hook costs nothing for a
 * policy that returns in a few hundred instructions. */
#define HOOK_COUNT 1000
/* Loading a module may do more work (tables of weights ...) than one call. */
#define LOAD_BUDGET_MS 1000.0

enum { REF_PLACE, REF_PATH, REF_REPLICAS, REF_LIST_LIMIT, REF_LIST_SHOW, REF_REBALANCE,
       REF_READ_ORDER,
       REF_VOLUMES, NREFS };

struct mkv_policy_s {
  lua_State *L;
  const mkv_config_t *cfg;
  size_t mem_used, mem_limit;
  uint64_t deadline_ns;
  double budget_ms;
  int in_call, expired;
  int refs[NREFS];
  char *sources[MKV_POLICY_KINDS]; /* "name (file)" per kind, for messages */
  /* Placement, path and replica count are the built-in default policy's: computed in C
   * (default_place), byte for byte what policies/default.lua computes, with no call
   * into Lua -- on every PUT, and on every GET for Key-Balance. */
  int builtin_default;
  mkv_buf_t err;
};

/* The policy whose call is running on this thread (a worker runs one at a time). */
static _Thread_local mkv_policy_t *running;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  mkv_policy_t *p = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    p->mem_used -= old;
    return NULL;
  }
  if (nsize > old && p->mem_used + (nsize - old) > p->mem_limit) return NULL;
  void *q = realloc(ptr, nsize);
  if (q == NULL) return NULL;
  p->mem_used = p->mem_used - old + nsize;
  return q;
}

static void deadline_hook(lua_State *L, lua_Debug *ar) {
  mkv_policy_t *p = running;
  if (p == NULL || !p->in_call) return;
  if (!p->expired && mkv_now_ns() < p->deadline_ns) return;
  if (!p->expired) {
    /* From now on every instruction raises until the call returns to C, so a pcall
     * inside the policy cannot swallow the error and carry on. */
    p->expired = 1;
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  /* Where it was running: the hook's own record names the policy's line (luaL_error's
   * level 1 would be its caller's). */
  if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    lua_pushfstring(L, "%s:%d: policy exceeded its time budget of %d ms", ar->short_src,
                    ar->currentline, (int)p->budget_ms);
  else
    lua_pushfstring(L, "policy exceeded its time budget of %d ms", (int)p->budget_ms);
  lua_error(L);
}

/* Message handler: keeps the message (which carries source:line) and turns non-string
 * errors into text. */
static int msgh(lua_State *L) {
  if (!lua_isstring(L, 1)) {
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
  }
  return 1;
}

/* Calls the function below nargs arguments with the deadline armed. Stack index 1 is
 * the message handler. Returns 0 or MKV_EPOLICY with p->err set to "<what>: <msg>". */
static int pcall_budget(mkv_policy_t *p, int nargs, int nres, double budget_ms,
                        const char *what) {
  lua_State *L = p->L;
  p->budget_ms = budget_ms;
  p->deadline_ns = mkv_now_ns() + (uint64_t)(budget_ms * 1e6);
  p->expired = 0;
  p->in_call = 1;
  running = p;
  int rc = lua_pcall(L, nargs, nres, 1);
  p->in_call = 0;
  running = NULL;
  if (p->expired) lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (rc != 0) {
    const char *msg = lua_tostring(L, -1);
    if (rc == LUA_ERRMEM) msg = "not enough memory (policy_memory_mb reached)";
    mkv_buf_reset(&p->err);
    mkv_buf_addf(&p->err, "%s: %s", what, msg ? msg : "unknown error");
    lua_pop(L, 1);
    /* LuaJIT has no emergency collection: what the failed call allocated would keep
     * the state at its cap, and every later call would fail too. */
    if (rc == LUA_ERRMEM) lua_gc(L, LUA_GCCOLLECT, 0);
    return MKV_EPOLICY;
  }
  return 0;
}

static int policy_fail(mkv_policy_t *p, const char *fmt, ...) MKV_PRINTF(2, 3);
static int policy_fail(mkv_policy_t *p, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  mkv_buf_set(&p->err, msg, strlen(msg));
  return MKV_EPOLICY;
}

/* Pushes the chunk of a policy file: 0 with *where = the path, or -2 with *where = the
 * load error (a syntax error names the file and line). */
static int load_file_chunk(lua_State *L, const char *path, mkv_buf_t *where) {
  if (luaL_loadfile(L, path) == 0) {
    mkv_buf_set(where, path, strlen(path));
    return 0;
  }
  const char *e = lua_tostring(L, -1);
  mkv_buf_set(where, e, strlen(e));
  lua_pop(L, 1);
  return -2;
}

/* Finds a policy module: each template of policy_path with '?' replaced, then the
 * built-in policies/<name>.lua. Pushes the loaded chunk, or returns -1 with a message
 * listing where it looked. */
static int load_module_chunk(mkv_policy_t *p, const char *name, mkv_buf_t *where) {
  lua_State *L = p->L;
  const mkv_config_t *cfg = p->cfg;
  mkv_buf_t path, tried;
  mkv_buf_init(&path);
  mkv_buf_init(&tried);
  int rc = -1;
  /* A name with a '/' or ending in .lua is a file, relative to the config's dir. */
  size_t nlen = strlen(name);
  if (strchr(name, '/') || (nlen > 4 && strcmp(name + nlen - 4, ".lua") == 0)) {
    if (name[0] == '/')
      mkv_buf_adds(&path, name);
    else
      mkv_buf_addf(&path, "%s/%s", cfg->config_dir, name);
    rc = load_file_chunk(L, path.data, where);
    goto cleanup;
  }
  const char *t = cfg->policy_path ? cfg->policy_path : "";
  while (*t) {
    const char *end = strchr(t, ';');
    size_t tlen = end ? (size_t)(end - t) : strlen(t);
    mkv_buf_reset(&path);
    for (size_t i = 0; i < tlen; i++) {
      if (t[i] == '?')
        mkv_buf_adds(&path, name);
      else
        mkv_buf_addc(&path, t[i]);
    }
    if (tlen) {
      FILE *f = fopen(path.data, "r");
      if (f) {
        fclose(f);
        rc = load_file_chunk(L, path.data, where);
        goto cleanup;
      }
      mkv_buf_addf(&tried, "%s, ", path.data);
    }
    t += tlen;
    if (*t == ';') t++;
  }
  mkv_buf_reset(&path);
  mkv_buf_addf(&path, "policies/%s.lua", name);
  const mkv__embedded_t *e = mkv__embedded_find(path.data);
  if (e) {
    mkv_buf_t chunk;
    mkv_buf_init(&chunk);
    mkv_buf_addf(&chunk, "@%s", path.data);
    int lrc = luaL_loadbuffer(L, e->src, e->len, chunk.data);
    mkv_buf_free(&chunk);
    if (lrc == 0) {
      mkv_buf_addf(&path, " (built in)");
      mkv_buf_set(where, path.data, path.len);
      rc = 0;
    } else {
      mkv_buf_set(where, lua_tostring(L, -1), strlen(lua_tostring(L, -1)));
      lua_pop(L, 1);
      rc = -2;
    }
    goto cleanup;
  }
  mkv_buf_reset(where);
  mkv_buf_addf(where, "module '%s' not found (looked in %sand the built-in policies/)", name,
               tried.data ? tried.data : "");
cleanup:
  mkv_buf_free(&path);
  mkv_buf_free(&tried);
  return rc;
}

/* package.loaders entry while modules load: lets policies require each other. */
static int policy_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  mkv_policy_t *p = running;
  mkv_buf_t where;
  mkv_buf_init(&where);
  int rc = p ? load_module_chunk(p, name, &where) : -1;
  if (rc != 0) {
    /* One line: the message ends up in a startup error that must stay one line. */
    lua_pushfstring(L, " %s", where.data ? where.data : "no policy state");
    mkv_buf_free(&where);
    return 1;
  }
  mkv_buf_free(&where);
  return 1;
}

/* Pushes the module table of policy `name`, loading it once (package.loaded caches). */
static int require_policy(mkv_policy_t *p, const char *name, char **source) {
  lua_State *L = p->L;
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_getfield(L, -1, name);
  if (lua_istable(L, -1)) {
    lua_remove(L, -2);
    return 0;
  }
  lua_pop(L, 1);
  mkv_buf_t where;
  mkv_buf_init(&where);
  int rc = load_module_chunk(p, name, &where);
  if (rc != 0) {
    policy_fail(p, "%s", where.data ? where.data : "cannot load");
    mkv_buf_free(&where);
    lua_pop(L, 1);
    return MKV_EPOLICY;
  }
  *source = mkv_sprintf("'%s' (%s)", name, where.data);
  mkv_buf_free(&where);
  lua_pushstring(L, name);
  if (pcall_budget(p, 1, 1, MKV_MAX(LOAD_BUDGET_MS, p->cfg->policy_timeout_ms), *source) != 0) {
    lua_pop(L, 1);
    return MKV_EPOLICY;
  }
  if (!lua_istable(L, -1)) {
    policy_fail(p, "%s: the module must return a table of functions, it returned %s",
                *source, luaL_typename(L, -1));
    lua_pop(L, 2);
    return MKV_EPOLICY;
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name);
  lua_remove(L, -2);
  return 0;
}

static int ref_function(mkv_policy_t *p, int kind, const char *fn, int optional, int slot) {
  lua_State *L = p->L;
  lua_getfield(L, -1, fn);
  if (lua_isnil(L, -1) && optional) {
    lua_pop(L, 1);
    p->refs[slot] = LUA_NOREF;
    return 0;
  }
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return policy_fail(p, "%s policy %s has no function '%s'", mkv_policy_kind_names[kind],
                       p->sources[kind], fn);
  }
  p->refs[slot] = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static void open_lib(lua_State *L, lua_CFunction f, const char *name) {
  lua_pushcfunction(L, f);
  lua_pushstring(L, name);
  lua_call(L, 1, 0);
}

/* Builds the state up to the locked globals: libraries, mkv helpers, sandbox. */
static int build_state(mkv_policy_t *p) {
  lua_State *L = p->L;
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
  open_lib(L, luaopen_base, "");
  open_lib(L, luaopen_package, LUA_LOADLIBNAME);
  open_lib(L, luaopen_table, LUA_TABLIBNAME);
  open_lib(L, luaopen_string, LUA_STRLIBNAME);
  open_lib(L, luaopen_math, LUA_MATHLIBNAME);
  open_lib(L, luaopen_bit, LUA_BITLIBNAME);
  lua_settop(L, 0);
  lua_pushcfunction(L, msgh); /* stays at index 1 for every call */

  const mkv__embedded_t *e = mkv__embedded_find("lua/mkv_sandbox.lua");
  if (e == NULL) return policy_fail(p, "lua/mkv_sandbox.lua is not compiled in");
  if (luaL_loadbuffer(L, e->src, e->len, "@lua/mkv_sandbox.lua") != 0)
    return policy_fail(p, "%s", lua_tostring(L, -1));
  lua_getglobal(L, "package");
  lua_setfield(L, LUA_REGISTRYINDEX, "mkv.package"); /* for set_loaders() */
  lua_pushvalue(L, LUA_GLOBALSINDEX);
  lua_getglobal(L, "package");
  lua_pushcfunction(L, luaopen_mkv);
  lua_call(L, 0, 1);
  if (mkv_config_push(L, p->cfg) != 0)
    return policy_fail(p, "policy_config: %s", lua_tostring(L, -1));
  if (pcall_budget(p, 4, 1, LOAD_BUDGET_MS, "lua/mkv_sandbox.lua") != 0) return MKV_EPOLICY;
  lua_replace(L, LUA_GLOBALSINDEX);
  return 0;
}

/* Policies find each other with require() while they load; afterwards no module can be
 * loaded (package.loaders is emptied). */
static void set_loaders(mkv_policy_t *p, int enabled) {
  lua_State *L = p->L;
  lua_getfield(L, LUA_REGISTRYINDEX, "mkv.package");
  lua_newtable(L);
  if (enabled) {
    lua_pushcfunction(L, policy_searcher);
    lua_rawseti(L, -2, 1);
  }
  lua_setfield(L, -2, "loaders");
  lua_pop(L, 1);
}

/* The placement targets: every volume but the draining ones (config order). */
static void push_volumes_table(mkv_policy_t *p) {
  lua_State *L = p->L;
  lua_createtable(L, p->cfg->nplacement, 0);
  for (int i = 0; i < p->cfg->nplacement; i++) {
    lua_pushstring(L, p->cfg->placement_volumes[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static const char *sample_keys[] = {"/", "/hello", "/wehave", "/tmp/scratch", "/a/b/c d+e=f",
                                    "/\xe2\x82\xac/\xff\xfe", NULL};

static int check_samples(mkv_policy_t *p, char **err) {
  mkv_buf_t joined, path;
  mkv_buf_init(&joined);
  mkv_buf_init(&path);
  char longkey[190];
  longkey[0] = '/';
  memset(longkey + 1, 'k', sizeof(longkey) - 1);
  int rc = 0;
  for (int i = 0; sample_keys[i] || i == (int)MKV_ARRAY_SIZE(sample_keys) - 1; i++) {
    const char *key = sample_keys[i] ? sample_keys[i] : longkey;
    size_t klen = sample_keys[i] ? strlen(key) : sizeof(longkey);
    int n;
    if ((rc = mkv_policy_place(p, key, klen, &joined, &n)) != 0 ||
        (rc = mkv_policy_path(p, key, klen, &path)) != 0) {
      mkv_buf_t shown;
      mkv_buf_init(&shown);
      for (size_t j = 0; j < klen && j < 40; j++) {
        unsigned char c = (unsigned char)key[j];
        if (c >= 0x20 && c < 0x7f && c != '"')
          mkv_buf_addc(&shown, (char)c);
        else
          mkv_buf_addf(&shown, "\\x%02x", c);
      }
      *err = mkv_sprintf("on sample key \"%s%s\": %s", shown.data ? shown.data : "",
                         klen > 40 ? "..." : "", p->err.data);
      mkv_buf_free(&shown);
      break;
    }
    if (!sample_keys[i]) break;
  }
  mkv_buf_free(&joined);
  mkv_buf_free(&path);
  return rc;
}

int mkv_policy_new(const mkv_config_t *cfg, mkv_policy_t **out, char **err) {
  mkv_policy_t *p = mkv_calloc(1, sizeof(*p));
  p->cfg = cfg;
  p->mem_limit = cfg->policy_memory;
  mkv_buf_init(&p->err);
  for (int i = 0; i < NREFS; i++) p->refs[i] = LUA_NOREF;
  p->L = lua_newstate(capped_alloc, p);
  if (p->L == NULL) {
    *err = mkv_strdup("cannot create a Lua state (is this LuaJIT built with GC64?)");
    free(p);
    return -1;
  }
  lua_State *L = p->L;
  running = p;
  if (build_state(p) != 0) goto fail;

  static const struct {
    int kind;
    const char *fn;
    int optional;
    int slot;
  } wanted[] = {{MKV_POLICY_PLACEMENT, "place", 0, REF_PLACE},
                {MKV_POLICY_PLACEMENT, "path", 0, REF_PATH},
                {MKV_POLICY_REPLICAS, "replicas", 0, REF_REPLICAS},
                {MKV_POLICY_LISTING, "list_limit", 0, REF_LIST_LIMIT},
                {MKV_POLICY_LISTING, "show", 1, REF_LIST_SHOW},
                {MKV_POLICY_READ, "order", 1, REF_READ_ORDER},
                {MKV_POLICY_REBALANCE, "rebalance", 0, REF_REBALANCE}};
  int default_is_builtin = 0;
  set_loaders(p, 1);
  for (size_t i = 0; i < MKV_ARRAY_SIZE(wanted); i++) {
    int kind = wanted[i].kind;
    char *source = NULL;
    if (require_policy(p, cfg->policies[kind], &source) != 0) {
      free(source);
      *err = mkv_sprintf("%s policy '%s': %s", mkv_policy_kind_names[kind], cfg->policies[kind],
                         p->err.data);
      goto fail;
    }
    /* The module "default" loads once (later kinds find it in package.loaded): its
     * source says whether it is the built-in one or an operator's file of that name. */
    if (source && strcmp(cfg->policies[kind], "default") == 0)
      default_is_builtin = strstr(source, "(built in)") != NULL;
    /* A module that several kinds share loads once: the later kinds name it too (their
     * messages would otherwise say "(null)"). */
    for (int k = 0; source == NULL && k < MKV_POLICY_KINDS; k++)
      if (p->sources[k] && strcmp(cfg->policies[k], cfg->policies[kind]) == 0)
        source = mkv_strdup(p->sources[k]);
    if (p->sources[kind] == NULL)
      p->sources[kind] = source;
    else
      free(source);
    int rc = ref_function(p, kind, wanted[i].fn, wanted[i].optional, wanted[i].slot);
    lua_pop(L, 1);
    if (rc != 0) {
      *err = mkv_strdup(p->err.data);
      goto fail;
    }
  }
  set_loaders(p, 0);
  /* MKV_POLICY_IN_LUA=1 runs the built-in policy in Lua all the same: how the specs
   * check that the two agree. */
  p->builtin_default = default_is_builtin &&
                       strcmp(cfg->policies[MKV_POLICY_PLACEMENT], "default") == 0 &&
                       strcmp(cfg->policies[MKV_POLICY_REPLICAS], "default") == 0 &&
                       cfg->replicas <= cfg->nplacement && !getenv("MKV_POLICY_IN_LUA");

  /* The volume list crosses into Lua once; calls pass this same table. */
  push_volumes_table(p);
  p->refs[REF_VOLUMES] = luaL_ref(L, LUA_REGISTRYINDEX);

  char *serr = NULL;
  if (check_samples(p, &serr) != 0) {
    *err = serr;
    goto fail;
  }
  running = NULL;
  *out = p;
  return 0;

fail:
  if (*err == NULL) *err = mkv_strdup(p->err.data ? p->err.data : "policy state failed");
  running = NULL;
  mkv_policy_free(p);
  return -1;
}

void mkv_policy_free(mkv_policy_t *p) {
  if (p == NULL) return;
  if (p->L) lua_close(p->L);
  for (int k = 0; k < MKV_POLICY_KINDS; k++) free(p->sources[k]);
  mkv_buf_free(&p->err);
  free(p);
}

const char *mkv_policy_error(mkv_policy_t *p) {
  return p->err.data ? p->err.data : "";
}

const char *mkv_policy_name(mkv_policy_t *p, int kind) {
  return p->sources[kind] ? p->sources[kind] : "?";
}

/* Is s one of vols, or one of vols + "/<dir>[/<dir>...]" (a subvolume)? Each <dir> is
 * letters, digits, '-', '_' and '.', and never "." or "..": an answer that climbs out of
 * the volume's root ("h:1/../../etc") is refused like any other bad answer. */
static int known_volume(char *const *vols, int nvols, const char *s, size_t n) {
  for (int i = 0; i < nvols; i++) {
    size_t vl = strlen(vols[i]);
    if (n < vl || memcmp(s, vols[i], vl) != 0) continue;
    if (n == vl) return 1;
    /* the components: hash.c's rules for a path (no empty, ".", ".."), then the bytes */
    if (s[vl] != '/' || mkv_path_check(s + vl, n - vl) == MKV_EKEYPATH) continue;
    int ok = 1;
    for (size_t j = vl + 1; j < n && ok; j++) {
      char c = s[j];
      ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '/';
    }
    if (ok) return 1;
  }
  return 0;
}

/* Whether the table on top holds exactly vols, in order, and nothing else. */
static int same_volumes(lua_State *L, char *const *vols, int nvols) {
  if (!lua_istable(L, -1)) return 0;
  int nkeys = 0;
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_pop(L, 1);
    nkeys++;
  }
  if (nkeys != nvols) return 0;
  for (int i = 0; i < nvols; i++) {
    lua_rawgeti(L, -1, i + 1);
    int same = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), vols[i]) == 0;
    lua_pop(L, 1);
    if (!same) return 0;
  }
  return 1;
}

/* The volume table is shared by every call: a policy that changed it -- even in a
 * call that then failed -- would skew every later placement. If it is not exactly the
 * placement list any more, a fresh one replaces it, and a call that had succeeded
 * fails. */
static int restore_volumes(mkv_policy_t *p, int rc, const char *src) {
  lua_State *L = p->L;
  const mkv_config_t *cfg = p->cfg;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_VOLUMES]);
  int changed = !same_volumes(L, cfg->placement_volumes, cfg->nplacement);
  lua_pop(L, 1);
  if (!changed) return rc;
  luaL_unref(L, LUA_REGISTRYINDEX, p->refs[REF_VOLUMES]);
  push_volumes_table(p);
  p->refs[REF_VOLUMES] = luaL_ref(L, LUA_REGISTRYINDEX);
  if (rc == 0) rc = policy_fail(p, "%s: place() modified the volumes table it was given", src);
  return rc;
}

/* The replica count of key: 0 and *n set, or MKV_EPOLICY. */
static int call_replicas(mkv_policy_t *p, const char *key, size_t klen, int *n) {
  lua_State *L = p->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_REPLICAS]);
  lua_pushlstring(L, key, klen);
  int rc = pcall_budget(p, 1, 1, p->cfg->policy_timeout_ms, p->sources[MKV_POLICY_REPLICAS]);
  if (rc != 0) return rc;
  lua_Number r = lua_tonumber(L, -1);
  int is_num = lua_type(L, -1) == LUA_TNUMBER;
  lua_pop(L, 1);
  int max = MKV_MIN(p->cfg->nvolumes, 255);
  if (!is_num || r != (lua_Number)(int)r || r < 1 || r > max)
    return policy_fail(p, "%s: replicas() must return a whole number from 1 to %d",
                       p->sources[MKV_POLICY_REPLICAS], max);
  *n = (int)r;
  return 0;
}

/* Calls place(key, volumes, want) -- the function and the volumes table are on the
 * stack -- and checks the answer against vols: exactly `want` entries (with
 * allow_fewer, 1 to want), each one of vols or a subvolume of one, no two on one host.
 * joined gets the answer in record form, *got its count. */
static int call_place(mkv_policy_t *p, const char *key, size_t klen, char *const *vols,
                      int nvols, int want, int allow_fewer, mkv_buf_t *joined, int *got) {
  lua_State *L = p->L;
  const char *src = p->sources[MKV_POLICY_PLACEMENT];
  lua_pushlstring(L, key, klen);
  lua_insert(L, -2); /* place, key, volumes */
  lua_pushinteger(L, want);
  int rc = pcall_budget(p, 3, 1, p->cfg->policy_timeout_ms, src);
  if (rc != 0) return rc;
  mkv_buf_reset(joined);
  int count = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : -1;
  if (count < 0) {
    rc = policy_fail(p, "%s: place() returned %s, expected a list of %d %s", src,
                     luaL_typename(L, -1), want, MKV_PLURAL(want, "volume", "volumes"));
    goto done;
  }
  if (allow_fewer ? count < 1 || count > want : count != want) {
    rc = policy_fail(p, "%s: place() returned %d %s, expected %s%d", src, count,
                     MKV_PLURAL(count, "volume", "volumes"), allow_fewer ? "1 to " : "", want);
    goto done;
  }
  size_t starts[256];
  for (int i = 1; i <= count; i++) {
    lua_rawgeti(L, -1, i);
    size_t vl;
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
    if (v == NULL || !known_volume(vols, nvols, v, vl)) {
      rc = policy_fail(p, "%s: place() entry %d is %s%s%s, not one of the %s", src, i,
                       v ? "\"" : "a ", v ? v : luaL_typename(L, -1), v ? "\"" : "",
                       allow_fewer ? "volumes it was given (those that can take a copy now)"
                                   : "configured volumes");
      lua_pop(L, 1);
      goto done;
    }
    /* Distinct hosts, not just distinct strings: two subvolumes of one volume are one
     * machine, and a second copy there protects nothing. */
    for (int j = 0; j < i - 1; j++) {
      const char *prev = joined->data + starts[j];
      size_t plen = (j + 1 < i - 1 ? starts[j + 1] - 1 : joined->len) - starts[j];
      size_t ph = mkv_volume_host_len(prev, plen), vh = mkv_volume_host_len(v, vl);
      if (ph == vh && memcmp(prev, v, vh) == 0) {
        rc = policy_fail(p, "%s: place() put two replicas on volume \"%.*s\"", src, (int)vh, v);
        lua_pop(L, 1);
        goto done;
      }
    }
    if (i > 1) mkv_buf_addc(joined, ',');
    starts[i - 1] = joined->len;
    mkv_buf_add(joined, v, vl);
    lua_pop(L, 1);
  }
  *got = count;
done:
  lua_pop(L, 1);
  return rc;
}

/* policies/default.lua's place(key, vols, n) in C (GO-ORIGINAL.md §2.4): each volume
 * scores md5(key .. volume), the n highest win (ties: config order), each with /svXX
 * from its score's last four bytes when subvolumes > 1. */
static void default_place(const mkv_config_t *cfg, const char *key, size_t klen,
                          char *const *vols, int nvols, int n, mkv_buf_t *out) {
  unsigned char small[64][MKV_MD5_LEN];
  unsigned char (*md)[MKV_MD5_LEN] = nvols <= 64 ? small : mkv_malloc((size_t)nvols * MKV_MD5_LEN);
  char taken_small[64];
  char *taken = nvols <= 64 ? taken_small : mkv_malloc((size_t)nvols);
  for (int i = 0; i < nvols; i++) {
    mkv_md5_2(key, klen, vols[i], strlen(vols[i]), md[i]);
    taken[i] = 0;
  }
  mkv_buf_reset(out);
  for (int r = 0; r < n && r < nvols; r++) {
    int best = -1;
    for (int i = 0; i < nvols; i++)
      if (!taken[i] && (best < 0 || memcmp(md[i], md[best], MKV_MD5_LEN) > 0)) best = i;
    taken[best] = 1;
    if (r) mkv_buf_addc(out, ',');
    mkv_buf_adds(out, vols[best]);
    if (cfg->subvolumes > 1) {
      mkv_buf_addf(out, "/sv%02X", (unsigned)(mkv_score_u32(md[best]) % (uint32_t)cfg->subvolumes));
    }
  }
  if (md != small) free(md);
  if (taken != taken_small) free(taken);
}

int mkv_policy_place(mkv_policy_t *p, const char *key, size_t klen, mkv_buf_t *joined,
                     int *n) {
  lua_State *L = p->L;
  const mkv_config_t *cfg = p->cfg;
  int want = 0, got = 0, rc;
  if (p->builtin_default) {
    default_place(cfg, key, klen, cfg->placement_volumes, cfg->nplacement, cfg->replicas, joined);
    *n = cfg->replicas;
    return 0;
  }
  if ((rc = call_replicas(p, key, klen, &want)) != 0) return rc;
  if (want > cfg->nplacement)
    return policy_fail(p, "%s: replicas() wants %d copies, but only %d %s placement "
                       "%s (the others drain)", p->sources[MKV_POLICY_REPLICAS], want,
                       cfg->nplacement, MKV_PLURAL(cfg->nplacement, "volume is a", "volumes are"),
                       MKV_PLURAL(cfg->nplacement, "target", "targets"));
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_PLACE]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_VOLUMES]);
  rc = call_place(p, key, klen, cfg->placement_volumes, cfg->nplacement, want, 0, joined, &got);
  rc = restore_volumes(p, rc, p->sources[MKV_POLICY_PLACEMENT]);
  if (rc == 0) *n = want;
  return rc;
}

int mkv_policy_place_among(mkv_policy_t *p, const char *key, size_t klen, char *const *vols,
                           int nvols, int n, mkv_buf_t *joined, int *got) {
  lua_State *L = p->L;
  if (p->builtin_default) {
    default_place(p->cfg, key, klen, vols, nvols, MKV_MIN(n, nvols), joined);
    *got = MKV_MIN(n, nvols);
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_PLACE]);
  lua_createtable(L, nvols, 0); /* a table of its own: the shared one stays whole */
  for (int i = 0; i < nvols; i++) {
    lua_pushstring(L, vols[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return call_place(p, key, klen, vols, nvols, MKV_MIN(n, nvols), 1, joined, got);
}

int mkv_policy_path(mkv_policy_t *p, const char *key, size_t klen, mkv_buf_t *path) {
  lua_State *L = p->L;
  if (p->builtin_default) { /* policies/default.lua's path(): /<md5 hex 0-1>/<2-3>/<base64> */
    mkv_buf_reset(path);
    mkv_buf_reserve(path, 7 + mkv_base64_len(klen) + 1);
    path->len = mkv_key_path_to(key, klen, path->data);
    return 0;
  }
  const char *src = p->sources[MKV_POLICY_PLACEMENT];
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_PATH]);
  lua_pushlstring(L, key, klen);
  int rc = pcall_budget(p, 1, 1, p->cfg->policy_timeout_ms, src);
  if (rc != 0) return rc;
  size_t n;
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  if (s == NULL) {
    rc = policy_fail(p, "%s: path() returned %s, expected a string", src, luaL_typename(L, -1));
  } else if (n == 0 || s[0] != '/' || n > 4096) {
    rc = policy_fail(p, "%s: path() must return a path starting with '/' (at most 4096 bytes)",
                     src);
  } else {
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c <= 0x20 || c == 0x7f || c == '?' || c == '#' || c == '%') {
        rc = policy_fail(p, "%s: path() returned a path with byte 0x%02x, which URLs cannot hold "
                         "as is", src, c);
        break;
      }
    }
    if (rc == 0) mkv_buf_set(path, s, n);
  }
  lua_pop(L, 1);
  return rc;
}

/* Reads field `name` of the table on top: a list of volumes, each in `allowed` and not
 * in `forbidden`, no entry twice, into out (record form). */
static int plan_list(mkv_policy_t *p, const char *name, const char *allowed, size_t alen,
                     const char *forbidden, size_t flen, mkv_buf_t *out) {
  lua_State *L = p->L;
  const char *src = p->sources[MKV_POLICY_REBALANCE];
  mkv_buf_reset(out);
  lua_getfield(L, -1, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return policy_fail(p, "%s: rebalance().%s must be a list of volumes", src, name);
  }
  int n = (int)lua_objlen(L, -1);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    size_t l;
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &l) : NULL;
    int ok = v && mkv_volumes_contains(allowed, alen, v, l) &&
             !mkv_volumes_contains(forbidden, flen, v, l) &&
             !mkv_volumes_contains(out->data, out->len, v, l);
    if (!ok) {
      lua_pop(L, 2);
      return policy_fail(p, "%s: rebalance().%s entry %d is not allowed there (%s)", src, name, i,
                         v ? v : "not a string");
    }
    if (out->len) mkv_buf_addc(out, ',');
    mkv_buf_add(out, v, l);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

int mkv_policy_rebalance(mkv_policy_t *p, const char *key, size_t klen, const char *have,
                         size_t hlen, const char *want, size_t wlen, mkv_buf_t *copy,
                         mkv_buf_t *drop) {
  lua_State *L = p->L;
  const char *src = p->sources[MKV_POLICY_REBALANCE];
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_REBALANCE]);
  lua_pushlstring(L, key, klen);
  mkv_lua_push_volumes(L, have, hlen);
  mkv_lua_push_volumes(L, want, wlen);
  int rc = pcall_budget(p, 3, 1, p->cfg->policy_timeout_ms, src);
  if (rc != 0) return rc;
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return policy_fail(p, "%s: rebalance() must return { copy = {...}, drop = {...} }", src);
  }
  if ((rc = plan_list(p, "copy", want, wlen, have, hlen, copy)) != 0 ||
      (rc = plan_list(p, "drop", have, hlen, "", 0, drop)) != 0) {
    lua_pop(L, 1);
    return rc;
  }
  lua_pop(L, 1);
  /* Never the last good copy: dropping everything there is needs a new copy first. */
  int kept = 0;
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  mkv_volumes_iter(&it, have, hlen);
  while (mkv_volumes_next(&it, &item, &ilen))
    if (!mkv_volumes_contains(drop->data, drop->len, item, ilen)) kept = 1;
  if (hlen && !kept && copy->len == 0)
    return policy_fail(p, "%s: rebalance() would drop every good copy", src);
  return 0;
}

int mkv_policy_list_limit(mkv_policy_t *p, const char *op, long long requested,
                          long long *limit) {
  lua_State *L = p->L;
  const char *src = p->sources[MKV_POLICY_LISTING];
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_LIST_LIMIT]);
  lua_pushstring(L, op);
  lua_pushnumber(L, (lua_Number)(requested < 0 ? 0 : requested));
  int rc = pcall_budget(p, 2, 1, p->cfg->policy_timeout_ms, src);
  if (rc != 0) return rc;
  lua_Number v = lua_tonumber(L, -1);
  int ok = lua_type(L, -1) == LUA_TNUMBER && v >= 1 && v <= 1e12 && v == (lua_Number)(long long)v;
  lua_pop(L, 1);
  if (!ok) return policy_fail(p, "%s: list_limit() must return a whole number >= 1", src);
  *limit = (long long)v;
  return 0;
}

int mkv_policy_has_list_filter(mkv_policy_t *p) {
  return p->refs[REF_LIST_SHOW] != LUA_NOREF;
}

int mkv_policy_list_show(mkv_policy_t *p, const char *op, const char *key, size_t klen,
                         int *show) {
  lua_State *L = p->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_LIST_SHOW]);
  lua_pushstring(L, op);
  lua_pushlstring(L, key, klen);
  int rc = pcall_budget(p, 2, 1, p->cfg->policy_timeout_ms, p->sources[MKV_POLICY_LISTING]);
  if (rc != 0) return rc;
  *show = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return 0;
}

int mkv_policy_has_read_order(mkv_policy_t *p) {
  return p->refs[REF_READ_ORDER] != LUA_NOREF;
}

int mkv_policy_read_order(mkv_policy_t *p, const char *key, size_t klen, const char *vols,
                          size_t vlen, const char *zone, size_t zlen, mkv_buf_t *out) {
  lua_State *L = p->L;
  const char *src = p->sources[MKV_POLICY_READ];
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->refs[REF_READ_ORDER]);
  lua_pushlstring(L, key, klen);
  mkv_lua_push_volumes(L, vols, vlen);
  lua_createtable(L, 0, 1);
  if (zone) {
    lua_pushlstring(L, zone, zlen);
    lua_setfield(L, -2, "zone");
  }
  int rc = pcall_budget(p, 3, 1, p->cfg->policy_timeout_ms, src);
  if (rc != 0) return rc;
  /* A reordering of the record's volumes, nothing else: each exactly once. */
  int n = mkv_volumes_count(vols, vlen);
  mkv_buf_reset(out);
  if (!lua_istable(L, -1) || (int)lua_objlen(L, -1) != n) {
    rc = policy_fail(p, "%s: order() must return the %d %s it was given, reordered", src, n,
                     MKV_PLURAL(n, "volume", "volumes"));
  } else {
    for (int i = 1; i <= n && rc == 0; i++) {
      lua_rawgeti(L, -1, i);
      size_t l;
      const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &l) : NULL;
      if (v == NULL || !mkv_volumes_contains(vols, vlen, v, l) ||
          mkv_volumes_contains(out->data, out->len, v, l))
        rc = policy_fail(p, "%s: order() entry %d is %s%s%s: not one of the record's volumes, or "
                         "twice", src, i, v ? "\"" : "a ", v ? v : luaL_typename(L, -1), v ? "\"" : "");
      else {
        if (out->len) mkv_buf_addc(out, ',');
        mkv_buf_add(out, v, l);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return rc;
}
