/* test_policy.c: core/policy.c -- policy states: the default policy's goldens, checks
 * of what a policy returns, and the guards (deadline, memory cap, locked globals)
 * against policies written into a temporary directory. */
#include "testutil.h"

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/hash.h"
#include "mkv/policy.h"

static void load_flags(mkv_config_t *cfg, const char *volumes) {
  mkv_flag_t flags[] = {
      {"volumes", volumes}, {"db", "/tmp/x"}, {"replicas", "2"}, {"subvolumes", "4"}};
  char *err = NULL;
  int rc = mkv_config_load(cfg, NULL, flags, 4, "server", &err);
  if (rc != 0) fprintf(stderr, "config: %s\n", err);
  ASSERT_EQ(rc, 0);
}

static mkv_policy_t *policy_ok(const mkv_config_t *cfg) {
  mkv_policy_t *p = NULL;
  char *err = NULL;
  int rc = mkv_policy_new(cfg, &p, &err);
  if (rc != 0) fprintf(stderr, "mkv_policy_new: %s\n", err);
  ASSERT_EQ(rc, 0);
  ASSERT(p != NULL);
  return p;
}

static int place(mkv_policy_t *p, const char *key, mkv_buf_t *out, int *n) {
  return mkv_policy_place(p, key, strlen(key), out, n);
}

TEST(default_policy_from_flags) {
  ASSERT_EQ(mkv_hash_init(), 0);
  mkv_config_t cfg;
  load_flags(&cfg, "a:1,b:2,c:3");
  mkv_policy_t *p = policy_ok(&cfg);
  mkv_buf_t v, v2;
  mkv_buf_init(&v);
  mkv_buf_init(&v2);
  int n = 0;
  ASSERT_EQ(place(p, "/hello", &v, &n), 0);
  ASSERT_EQ(n, 2);
  /* Two distinct volumes, each with a subvolume /sv00../sv03. */
  const char *comma = strchr(v.data, ',');
  ASSERT(comma != NULL && strchr(comma + 1, ',') == NULL);
  ASSERT(strncmp(v.data, comma + 1, 3) != 0);
  ASSERT(strstr(v.data, "/sv0") != NULL && strstr(comma + 1, "/sv0") == comma + 1 + 3);
  /* Deterministic. */
  ASSERT_EQ(place(p, "/hello", &v2, &n), 0);
  ASSERT_STREQ(v.data, v2.data);
  /* Keys are bytes: NUL included. */
  ASSERT_EQ(mkv_policy_place(p, "/a\0b", 4, &v, &n), 0);
  ASSERT_EQ(mkv_policy_place(p, "/a\0c", 4, &v2, &n), 0);
  ASSERT_EQ(mkv_policy_path(p, "/a\0b", 4, &v), 0);
  ASSERT(v.len > 8 && strcmp(v.data + v.len - 8, "L2EAYg==") == 0);

  ASSERT_EQ(mkv_policy_path(p, "/hello", 6, &v), 0);
  ASSERT_STREQ(v.data, "/3e/d1/L2hlbGxv"); /* md5("/hello") = 3ed10a7d... */
  ASSERT(strstr(mkv_policy_name(p, MKV_POLICY_PLACEMENT), "default") != NULL);
  mkv_buf_free(&v);
  mkv_buf_free(&v2);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
}

TEST(place_golden_wehave) {
  /* GO-ORIGINAL.md §2.4: the fixture's key, written by the Go binary. */
  ASSERT_EQ(mkv_hash_init(), 0);
  mkv_config_t cfg;
  load_flags(&cfg, "127.0.0.1:24001,127.0.0.1:24002,127.0.0.1:24003");
  mkv_policy_t *p = policy_ok(&cfg);
  mkv_buf_t v;
  mkv_buf_init(&v);
  int n = 0;
  ASSERT_EQ(place(p, "/wehave", &v, &n), 0);
  ASSERT_EQ(n, 2);
  ASSERT_STREQ(v.data, "127.0.0.1:24002/sv01,127.0.0.1:24003/sv00");
  mkv_buf_free(&v);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
}

TEST(list_limit) {
  ASSERT_EQ(mkv_hash_init(), 0);
  mkv_config_t cfg;
  load_flags(&cfg, "a:1,b:2,c:3");
  mkv_policy_t *p = policy_ok(&cfg);
  long long lim = 0;
  ASSERT_EQ(mkv_policy_list_limit(p, "list", 0, &lim), 0);
  ASSERT_EQ(lim, 1000000); /* no limit asked: the policy's cap */
  ASSERT_EQ(mkv_policy_list_limit(p, "list", 10, &lim), 0);
  ASSERT_EQ(lim, 10);
  ASSERT_EQ(mkv_policy_list_limit(p, "unlinked", 999999, &lim), 0);
  ASSERT_EQ(lim, 999999);
  ASSERT_EQ(mkv_policy_list_limit(p, "list", 5000000, &lim), 0);
  ASSERT_EQ(lim, 1000000);
  ASSERT_EQ(mkv_policy_list_limit(p, "list", -3, &lim), 0);
  ASSERT_EQ(lim, 1000000);
  ASSERT_EQ(mkv_policy_has_list_filter(p), 0); /* the default defines no show() */
  mkv_policy_free(p);
  mkv_config_free(&cfg);
}

/* ---- operator policies in a temporary directory ---- */

/* A placement policy that misbehaves on chosen keys and is the default elsewhere. */
static const char *bad_policy =
    "local mkv = require 'mkv'\n"
    "local default = require 'default'\n"
    "local M = {}\n"
    "function M.place(key, volumes, n)\n"
    "  if key == '/loop' then while true do end end\n"
    "  if key == '/loop-pcall' then\n"
    "    while true do pcall(function() while true do end end) end\n"
    "  end\n"
    "  if key == '/loop-pcall-return' then\n"
    "    pcall(function() while true do end end)\n"
    "    return default.place(key, volumes, n)\n"
    "  end\n"
    "  if key == '/alloc' then\n"
    "    local t, i = {}, 0\n"
    "    while true do i = i + 1; t[i] = string.rep('x', 1000) .. i end\n"
    "  end\n"
    "  if key == '/raise' then error('boom') end\n"
    "  if key == '/short' then return { volumes[1] } end\n"
    "  if key == '/unknown' then return { 'z:9', volumes[1] } end\n"
    "  if key == '/dup' then return { volumes[1] .. '/sv00', volumes[1] .. '/sv01' } end\n"
    "  if key == '/notable' then return 'a:1,b:2' end\n"
    "  if key == '/global' then leaked = 1 end\n"
    "  if key == '/strlib' then string.sub = nil end\n"
    "  if key == '/mutate' then\n"
    "    local out = default.place(key, volumes, n)\n"
    "    volumes[1] = 'evil:1'\n"
    "    return out\n"
    "  end\n"
    "  if key == '/mutate-raise' then\n"
    "    volumes[1] = 'evil:1'\n"
    "    error('raised after changing the volumes')\n"
    "  end\n"
    "  if key == '/append' then\n"
    "    local out = default.place(key, volumes, n)\n"
    "    volumes[#volumes + 1] = 'x:1'\n"
    "    return out\n"
    "  end\n"
    "  return default.place(key, volumes, n)\n"
    "end\n"
    "function M.path(key)\n"
    "  if key == '/badpath' then return 'no/slash' end\n"
    "  if key == '/spacepath' then return '/a b' end\n"
    "  return default.path(key)\n"
    "end\n"
    "return M\n";

typedef struct site_s {
  char *dir, *config, *policy;
} site_t;

/* Writes <dir>/p.lua and <dir>/config.lua naming it by absolute path; `extra` adds
 * config fields. */
static void site_new(site_t *s, const char *policy_src, const char *extra) {
  s->dir = tmpdir_new("policy");
  s->policy = mkv_sprintf("%s/p.lua", s->dir);
  s->config = mkv_sprintf("%s/config.lua", s->dir);
  write_file(s->policy, policy_src);
  char *cfg = mkv_sprintf("return {\n"
                          "  db = '/tmp/x',\n"
                          "  volumes = { 'a:1', 'b:2', 'c:3' },\n"
                          "  replicas = 2, subvolumes = 4,\n"
                          "  policies = { placement = '%s' },\n"
                          "  %s\n"
                          "}\n",
                          s->policy, extra ? extra : "");
  write_file(s->config, cfg);
  free(cfg);
}

static void site_free(site_t *s) {
  tmpdir_free(s->dir);
  free(s->config);
  free(s->policy);
}

static void site_load(site_t *s, mkv_config_t *cfg) {
  char *err = NULL;
  int rc = mkv_config_load(cfg, s->config, NULL, 0, "server", &err);
  if (rc != 0) fprintf(stderr, "config: %s\n", err);
  ASSERT_EQ(rc, 0);
}

/* place() fails with MKV_EPOLICY and a message holding `needle`. */
static void place_fails(mkv_policy_t *p, const char *key, const char *needle) {
  mkv_buf_t v;
  mkv_buf_init(&v);
  int n = -1;
  int rc = place(p, key, &v, &n);
  if (rc != MKV_EPOLICY || strstr(mkv_policy_error(p), needle) == NULL) {
    fprintf(stderr, "place(%s) = %d (%s), error \"%s\"; wanted EPOLICY with \"%s\"\n", key, rc,
            v.data ? v.data : "", mkv_policy_error(p), needle);
    abort();
  }
  mkv_buf_free(&v);
}

/* The state still works: a normal key places as the default policy does. */
static void still_works(mkv_policy_t *p, const char *want) {
  mkv_buf_t v;
  mkv_buf_init(&v);
  int n = 0;
  int rc = place(p, "/hello", &v, &n);
  if (rc != 0) fprintf(stderr, "place(/hello) after a failure: %s\n", mkv_policy_error(p));
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(n, 2);
  ASSERT_STREQ(v.data, want);
  mkv_buf_free(&v);
}

static char *hello_placement(mkv_policy_t *p) {
  mkv_buf_t v;
  mkv_buf_init(&v);
  int n;
  ASSERT_EQ(place(p, "/hello", &v, &n), 0);
  return v.data; /* owned */
}

TEST(operator_policy_by_path) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = policy_ok(&cfg);
  ASSERT(strstr(mkv_policy_name(p, MKV_POLICY_PLACEMENT), s.policy) != NULL);
  /* Same answers as the built-in default for ordinary keys. */
  mkv_config_t dcfg;
  load_flags(&dcfg, "a:1,b:2,c:3");
  mkv_policy_t *d = policy_ok(&dcfg);
  char *a = hello_placement(p), *b = hello_placement(d);
  ASSERT_STREQ(a, b);
  free(a);
  free(b);
  mkv_policy_free(d);
  mkv_config_free(&dcfg);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(loop_forever_hits_deadline) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, "policy_timeout = '50ms',");
  mkv_config_t cfg;
  site_load(&s, &cfg);
  ASSERT(cfg.policy_timeout_ms == 50);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);

  uint64_t t0 = uv_hrtime();
  place_fails(p, "/loop", "time budget");
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  ASSERT(ms >= 45);
  ASSERT(ms < 50 + mkv_test_timeout(0.5) * 1000);
  ASSERT(strstr(mkv_policy_error(p), "p.lua") != NULL); /* names the policy */
  still_works(p, hello);

  /* A pcall inside the policy cannot swallow the deadline. */
  t0 = uv_hrtime();
  place_fails(p, "/loop-pcall", "time budget");
  ms = (double)(uv_hrtime() - t0) / 1e6;
  ASSERT(ms < 50 + mkv_test_timeout(0.5) * 1000);
  still_works(p, hello);
  place_fails(p, "/loop-pcall-return", "time budget");
  still_works(p, hello);
  /* And again: the hook is re-armed for every call. */
  place_fails(p, "/loop", "time budget");
  still_works(p, hello);
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(memory_cap) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  /* A long deadline, so the allocator's cap is what stops the policy. */
  site_new(&s, bad_policy, "policy_timeout = '10s', policy_memory_mb = 4,");
  mkv_config_t cfg;
  site_load(&s, &cfg);
  ASSERT_EQ(cfg.policy_memory, (size_t)4 << 20);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);
  place_fails(p, "/alloc", "not enough memory");
  still_works(p, hello);
  place_fails(p, "/alloc", "not enough memory");
  still_works(p, hello);
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(results_are_checked) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);
  place_fails(p, "/raise", "boom");
  ASSERT(strstr(mkv_policy_error(p), "p.lua:") != NULL); /* source:line of the raise */
  place_fails(p, "/short", "returned 1 volume, expected 2"); /* not "1 volumes" */
  place_fails(p, "/unknown", "z:9");
  place_fails(p, "/dup", "two replicas");
  place_fails(p, "/notable", "expected a list");
  place_fails(p, "/global", "global");
  place_fails(p, "/strlib", "read-only");
  still_works(p, hello);

  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_policy_path(p, "/badpath", 8, &v), MKV_EPOLICY);
  ASSERT(strstr(mkv_policy_error(p), "'/'") != NULL);
  ASSERT_EQ(mkv_policy_path(p, "/spacepath", 10, &v), MKV_EPOLICY);
  ASSERT(strstr(mkv_policy_error(p), "0x20") != NULL);
  ASSERT_EQ(mkv_policy_path(p, "/hello", 6, &v), 0);
  ASSERT_STREQ(v.data, "/3e/d1/L2hlbGxv");
  mkv_buf_free(&v);
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(volume_table_changed_in_place_is_restored) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);
  place_fails(p, "/mutate", "modified the volumes table");
  still_works(p, hello); /* later calls see the configured volumes again */
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(volume_table_changed_before_an_error_is_restored) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);
  place_fails(p, "/mutate-raise", "raised after changing the volumes");
  /* The shared volume table must be the configured one for the next call, whatever
   * way the bad call ended. */
  still_works(p, hello);
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(volume_table_grown_is_restored) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, bad_policy, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = policy_ok(&cfg);
  char *hello = hello_placement(p);
  place_fails(p, "/append", "modified the volumes table");
  /* One bad call must not poison every later one: the table a policy receives must be
   * the configured three volumes again. */
  still_works(p, hello);
  free(hello);
  mkv_policy_free(p);
  mkv_config_free(&cfg);
  site_free(&s);
}

/* mkv_policy_new fails with a message holding `needle`. */
static void new_fails(const char *policy_src, const char *needle) {
  site_t s;
  site_new(&s, policy_src, NULL);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = NULL;
  char *err = NULL;
  uint64_t t0 = uv_hrtime();
  int rc = mkv_policy_new(&cfg, &p, &err);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  if (rc != -1 || err == NULL || strstr(err, needle) == NULL) {
    fprintf(stderr, "mkv_policy_new = %d, \"%s\"; wanted -1 with \"%s\"\n", rc,
            err ? err : "(null)", needle);
    abort();
  }
  ASSERT(ms < mkv_test_timeout(5) * 1000);
  free(err);
  mkv_config_free(&cfg);
  site_free(&s);
}

TEST(broken_policies_refused_at_load) {
  ASSERT_EQ(mkv_hash_init(), 0);
  new_fails("local M = {}\nfunction M.place() return {} end\nreturn M\n", "'path'");
  new_fails("return 42\n", "must return a table");
  new_fails("error('at load')\n", "at load");
  new_fails("this is not lua\n", "p.lua");
  new_fails("while true do end\n", "time budget");
  new_fails("local io = io\nreturn {}\n", "undefined global 'io'");
  new_fails("local f = require 'ffi'\nreturn {}\n", "ffi");
  /* Wrong on the sample keys checked at startup. */
  new_fails("local d = require 'default'\nlocal M = {}\n"
            "function M.place(k, v, n) return { v[1] } end\nM.path = d.path\nreturn M\n",
            "sample key");
}

TEST(missing_policy_file) {
  ASSERT_EQ(mkv_hash_init(), 0);
  site_t s;
  site_new(&s, "return {}\n", NULL);
  remove(s.policy);
  mkv_config_t cfg;
  site_load(&s, &cfg);
  mkv_policy_t *p = NULL;
  char *err = NULL;
  ASSERT_EQ(mkv_policy_new(&cfg, &p, &err), -1);
  ASSERT(err != NULL && strstr(err, "p.lua") != NULL);
  free(err);
  mkv_config_free(&cfg);
  site_free(&s);
}

/* The built-in default policy runs in C (default_place): byte for byte what
 * policies/default.lua computes, for placement, a handoff's placement and paths. */
TEST(builtin_default_in_c_is_the_lua_policy) {
  ASSERT_EQ(mkv_hash_init(), 0);
  static const char *const sets[][2] = {{"a:1,b:2,c:3", "1"}, {"a:1,b:2,c:3,d:4,e:5", "10"},
                                        {"10.0.0.1:3001,10.0.0.2:3001,10.0.0.3:3001", "300"}};
  for (size_t s = 0; s < MKV_ARRAY_SIZE(sets); s++) {
    mkv_config_t cfg;
    mkv_flag_t flags[] = {{"volumes", sets[s][0]}, {"db", "/tmp/x"}, {"replicas", "2"},
                          {"subvolumes", sets[s][1]}};
    char *err = NULL;
    ASSERT_EQ(mkv_config_load(&cfg, NULL, flags, 4, "server", &err), 0);
    setenv("MKV_POLICY_IN_LUA", "1", 1);
    mkv_policy_t *lua = policy_ok(&cfg);
    unsetenv("MKV_POLICY_IN_LUA");
    mkv_policy_t *c = policy_ok(&cfg);
    mkv_buf_t a, b;
    mkv_buf_init(&a);
    mkv_buf_init(&b);
    char key[64];
    for (int i = 0; i < 3000; i++) {
      int klen = snprintf(key, sizeof(key), "/key/%d\xff%c", i, i % 256);
      int na = 0, nb = 0;
      ASSERT_EQ(mkv_policy_place(lua, key, (size_t)klen, &a, &na), 0);
      ASSERT_EQ(mkv_policy_place(c, key, (size_t)klen, &b, &nb), 0);
      ASSERT_EQ(na, nb);
      ASSERT_EQ(a.len, b.len);
      ASSERT_MEMEQ(a.data, b.data, a.len);
      ASSERT_EQ(mkv_policy_path(lua, key, (size_t)klen, &a), 0);
      ASSERT_EQ(mkv_policy_path(c, key, (size_t)klen, &b), 0);
      ASSERT_EQ(a.len, b.len);
      ASSERT_MEMEQ(a.data, b.data, a.len);
      /* a handoff: every volume but the first */
      ASSERT_EQ(mkv_policy_place_among(lua, key, (size_t)klen, cfg.volumes + 1, cfg.nvolumes - 1, 2,
                                       &a, &na), 0);
      ASSERT_EQ(mkv_policy_place_among(c, key, (size_t)klen, cfg.volumes + 1, cfg.nvolumes - 1, 2,
                                       &b, &nb), 0);
      ASSERT_EQ(na, nb);
      ASSERT_EQ(a.len, b.len);
      ASSERT_MEMEQ(a.data, b.data, a.len);
    }
    mkv_buf_free(&a);
    mkv_buf_free(&b);
    mkv_policy_free(lua);
    mkv_policy_free(c);
    mkv_config_free(&cfg);
  }
}

TEST_MAIN(T(builtin_default_in_c_is_the_lua_policy), T(default_policy_from_flags), T(place_golden_wehave), T(list_limit),
          T(operator_policy_by_path), T(loop_forever_hits_deadline), T(memory_cap),
          T(results_are_checked), T(volume_table_changed_in_place_is_restored),
          T(volume_table_changed_before_an_error_is_restored),
          T(volume_table_grown_is_restored), T(broken_policies_refused_at_load),
          T(missing_policy_file))
