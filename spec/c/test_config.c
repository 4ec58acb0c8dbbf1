/* test_config.c: core/config.c -- loading flags and config.lua through
 * lua/mkv_config.lua into mkv_config_t, and one-line errors that name the field. */
#include "testutil.h"

#include "mkv/common.h"
#include "mkv/config.h"

#define NF(a) ((int)MKV_ARRAY_SIZE(a))

static void load_ok(mkv_config_t *cfg, const char *path, const mkv_flag_t *f, int n,
                    const char *command) {
  char *err = NULL;
  int rc = mkv_config_load(cfg, path, f, n, command, &err);
  if (rc != 0) fprintf(stderr, "mkv_config_load: %s\n", err ? err : "(null)");
  ASSERT_EQ(rc, 0);
}

/* Loading fails with -1 and a one-line message holding every needle. */
static void load_fails(const char *path, const mkv_flag_t *f, int n, const char *command,
                       const char *needle1, const char *needle2) {
  mkv_config_t cfg;
  char *err = NULL;
  int rc = mkv_config_load(&cfg, path, f, n, command, &err);
  if (rc != -1 || err == NULL || strstr(err, needle1) == NULL ||
      (needle2 && strstr(err, needle2) == NULL) || strchr(err, '\n') != NULL) {
    fprintf(stderr, "mkv_config_load = %d, \"%s\"; wanted -1 with \"%s\"%s%s%s\n", rc,
            err ? err : "(null)", needle1, needle2 ? " and \"" : "", needle2 ? needle2 : "",
            needle2 ? "\"" : "");
    abort();
  }
  free(err);
}

static const mkv_flag_t base_flags[] = {
    {"volumes", "a:1,b:2,c:3"}, {"db", "/tmp/x"}, {"replicas", "2"}, {"subvolumes", "4"}};

TEST(from_flags_with_defaults) {
  mkv_config_t cfg;
  load_ok(&cfg, NULL, base_flags, NF(base_flags), "server");
  ASSERT(cfg.source == NULL);
  ASSERT_STREQ(cfg.config_dir, ".");
  ASSERT_EQ(cfg.nvolumes, 3);
  ASSERT_STREQ(cfg.volumes[0], "a:1");
  ASSERT_STREQ(cfg.volumes[1], "b:2");
  ASSERT_STREQ(cfg.volumes[2], "c:3");
  ASSERT(cfg.volumes[3] == NULL);
  ASSERT_STREQ(cfg.db, "/tmp/x");
  ASSERT_EQ(cfg.replicas, 2);
  ASSERT_EQ(cfg.subvolumes, 4);
  /* The Go original's defaults (GO-ORIGINAL.md §1). */
  ASSERT_EQ(cfg.port, 3000);
  ASSERT_STREQ(cfg.listen, "*");
  ASSERT_EQ(cfg.md5sum, 1);
  ASSERT_EQ(cfg.protect, 0);
  ASSERT_EQ(cfg.verbose, 0);
  ASSERT(cfg.voltimeout_ms == 1000);
  ASSERT_STREQ(cfg.fallback, "");
  /* mkv's own. */
  ASSERT(cfg.workers >= 1); /* 0 = one per core, resolved */
  for (int k = 0; k < MKV_POLICY_KINDS; k++) ASSERT_STREQ(cfg.policies[k], "default");
  ASSERT(cfg.policy_timeout_ms == 50);
  ASSERT_EQ(cfg.policy_memory, (size_t)64 << 20);
  ASSERT_EQ(cfg.limits.high_water, (size_t)4096 << 10);
  ASSERT_EQ(cfg.limits.low_water, (size_t)1024 << 10);
  ASSERT(cfg.limits.volume_timeout_ms == 30000);
  ASSERT_EQ(cfg.limits.list_slice, 1000);
  ASSERT_EQ(cfg.leveldb.cache_mb, 64);
  ASSERT_EQ(cfg.leveldb.bloom_bits, 10);
  mkv_config_free(&cfg);
  mkv_config_free(&cfg); /* zeroed by the first free: harmless */
}

TEST(flag_values_as_go_parses_them) {
  const mkv_flag_t f[] = {{"volumes", "a:1,b:2,c:3"},
                          {"db", "/tmp/x"},
                          {"protect", "true"},
                          {"md5sum", "false"},
                          {"v", "1"},
                          {"voltimeout", "500ms"},
                          {"port", "+8080"},
                          {"fallback", "fb:99"},
                          {"workers", "3"},
                          {"listen", "127.0.0.1"}};
  mkv_config_t cfg;
  load_ok(&cfg, NULL, f, NF(f), "server");
  ASSERT_EQ(cfg.protect, 1);
  ASSERT_EQ(cfg.md5sum, 0);
  ASSERT_EQ(cfg.verbose, 1);
  ASSERT(cfg.voltimeout_ms == 500);
  ASSERT_EQ(cfg.port, 8080);
  ASSERT_STREQ(cfg.fallback, "fb:99");
  ASSERT_EQ(cfg.workers, 3);
  ASSERT_STREQ(cfg.listen, "127.0.0.1");
  ASSERT_EQ(cfg.replicas, 3); /* default */
  mkv_config_free(&cfg);
}

TEST(later_flag_wins) {
  const mkv_flag_t f[] = {{"volumes", "a:1,b:2,c:3"}, {"db", "/a"}, {"db", "/b"}};
  mkv_config_t cfg;
  load_ok(&cfg, NULL, f, NF(f), "server");
  ASSERT_STREQ(cfg.db, "/b");
  mkv_config_free(&cfg);
}

TEST(from_file_and_flags_over_it) {
  char *dir = tmpdir_new("config");
  char *path = mkv_sprintf("%s/config.lua", dir);
  write_file(path, "-- a config\n"
                   "local vols = {}\n"
                   "for i = 1, 4 do vols[i] = '10.0.0.' .. i .. ':80' end\n"
                   "return {\n"
                   "  db = '/var/lib/mkv',\n"
                   "  volumes = vols,\n"
                   "  replicas = 3, subvolumes = 10,\n"
                   "  voltimeout = 2,\n" /* seconds as a number */
                   "  policies = { replicas = 'tmp_one_replica' },\n"
                   "  limits = { high_water_kb = 128, low_water_kb = 32 },\n"
                   "  leveldb = { cache_mb = 8 },\n"
                   "}\n");
  mkv_config_t cfg;
  load_ok(&cfg, path, NULL, 0, "server");
  ASSERT_STREQ(cfg.source, path);
  ASSERT_STREQ(cfg.config_dir, dir);
  ASSERT_EQ(cfg.nvolumes, 4);
  ASSERT_STREQ(cfg.volumes[3], "10.0.0.4:80");
  ASSERT_STREQ(cfg.db, "/var/lib/mkv");
  ASSERT_EQ(cfg.replicas, 3);
  ASSERT(cfg.voltimeout_ms == 2000);
  ASSERT_STREQ(cfg.policies[MKV_POLICY_REPLICAS], "tmp_one_replica");
  ASSERT_STREQ(cfg.policies[MKV_POLICY_PLACEMENT], "default");
  ASSERT_EQ(cfg.limits.high_water, (size_t)128 << 10);
  ASSERT_EQ(cfg.limits.low_water, (size_t)32 << 10);
  ASSERT_EQ(cfg.leveldb.cache_mb, 8);
  ASSERT_EQ(cfg.leveldb.write_buffer_mb, 16); /* the rest of the sub-table defaults */
  /* Operators' policies are looked for next to the config. */
  char *pp = mkv_sprintf("%s/policies/?.lua", dir);
  ASSERT_STREQ(cfg.policy_path, pp);
  free(pp);
  mkv_config_free(&cfg);

  /* Flags lay over the file. */
  const mkv_flag_t f[] = {{"replicas", "2"}, {"volumes", "x:1,y:2"}};
  load_ok(&cfg, path, f, NF(f), "server");
  ASSERT_EQ(cfg.replicas, 2);
  ASSERT_EQ(cfg.nvolumes, 2);
  ASSERT_STREQ(cfg.db, "/var/lib/mkv");
  mkv_config_free(&cfg);
  free(path);
  tmpdir_free(dir);
}

TEST(errors_name_the_field) {
  char *dir = tmpdir_new("config");
  char *path = mkv_sprintf("%s/config.lua", dir);
  const mkv_flag_t none[] = {{"db", "/tmp/x"}};

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, replicas = 'two' }\n");
  load_fails(path, NULL, 0, "server", "replicas", "two");
  load_fails(path, NULL, 0, "server", path, NULL); /* and the file */

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, replica = 1 }\n");
  load_fails(path, NULL, 0, "server", "unknown field", "replica");

  write_file(path, "return { db = '/x', volumes = { 'a:1', 'no port' } }\n");
  load_fails(path, NULL, 0, "server", "volumes'[2]", "no port");

  write_file(path, "return { db = '/x', volumes = { 'a:1', 'a:1' } }\n");
  load_fails(path, NULL, 0, "server", "duplicate", "a:1");

  write_file(path, "return { db = '/x', volumes = { 'a:1', 'b:2' }, replicas = 3 }\n");
  load_fails(path, NULL, 0, "server", "replicas", "2 volumes");

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, limits = { high_water_kb = 1 } }\n");
  load_fails(path, NULL, 0, "server", "limits", "high_water_kb");

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, limits = { nope = 1 } }\n");
  load_fails(path, NULL, 0, "server", "limits", "nope");

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, voltimeout = '1 s' }\n");
  load_fails(path, NULL, 0, "server", "voltimeout", NULL);

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, policies = { placment = 'x' } }\n");
  load_fails(path, NULL, 0, "server", "policies", "placment");

  write_file(path, "return { db = '/x', volumes = { 'a:1' }, policy_memory_mb = 1 }\n");
  load_fails(path, NULL, 0, "server", "policy_memory_mb", NULL);

  /* The file itself. */
  write_file(path, "return { db = \n");
  load_fails(path, NULL, 0, "server", "config.lua", NULL);
  write_file(path, "error('no config for you')\n");
  load_fails(path, NULL, 0, "server", "no config for you", NULL);
  write_file(path, "return 'a string'\n");
  load_fails(path, NULL, 0, "server", "must return a table", NULL);
  char *missing = mkv_sprintf("%s/absent.lua", dir);
  load_fails(missing, NULL, 0, "server", "absent.lua", NULL);
  free(missing);

  /* Flags are named with their dash. */
  const mkv_flag_t f1[] = {{"db", "/x"}, {"volumes", "a:1"}, {"replicas", "abc"}};
  load_fails(NULL, f1, NF(f1), "server", "-replicas", "abc");
  const mkv_flag_t f2[] = {{"db", "/x"}, {"volumes", "a:1"}, {"md5sum", "yes"}};
  load_fails(NULL, f2, NF(f2), "server", "-md5sum", "yes");
  const mkv_flag_t f3[] = {{"db", "/x"}, {"volumes", "a:1"}, {"bogus", "1"}};
  load_fails(NULL, f3, NF(f3), "server", "-bogus", "not defined");
  const mkv_flag_t f4[] = {{"db", "/x"}, {"volumes", "a:1,b:2"}, {"replicas", "3"}};
  load_fails(NULL, f4, NF(f4), "server", "-replicas", NULL);
  const mkv_flag_t f5[] = {{"db", "/x"}, {"volumes", "a:1"}, {"port", "70000"}};
  load_fails(NULL, f5, NF(f5), "server", "-port", "70000");
  const mkv_flag_t f6[] = {{"db", "/x"}, {"volumes", "a:1"}, {"subvolumes", "0"}};
  load_fails(NULL, f6, NF(f6), "server", "-subvolumes", NULL);

  /* What a command requires. */
  load_fails(NULL, NULL, 0, "server", "db", NULL);
  load_fails(NULL, none, NF(none), "server", "volumes", NULL);
  mkv_config_t cfg;
  load_ok(&cfg, NULL, none, NF(none), "index-flush"); /* needs no volumes */
  ASSERT_EQ(cfg.nvolumes, 0);
  mkv_config_free(&cfg);

  free(path);
  tmpdir_free(dir);
}

TEST(failed_load_leaves_nothing) {
  mkv_config_t cfg;
  memset(&cfg, 0x5a, sizeof(cfg));
  char *err = NULL;
  const mkv_flag_t f[] = {{"db", "/x"}, {"volumes", "a:1"}, {"replicas", "x"}};
  ASSERT_EQ(mkv_config_load(&cfg, NULL, f, NF(f), "server", &err), -1);
  free(err);
  /* Freed and zeroed: freeing again is safe. */
  ASSERT(cfg.db == NULL && cfg.volumes == NULL && cfg.listen == NULL);
  mkv_config_free(&cfg);
}

TEST(flag_kind) {
  int is_bool = -1;
  ASSERT_EQ(mkv_config_flag_kind("volumes", &is_bool), 0);
  ASSERT_EQ(is_bool, 0);
  static const char *bools[] = {"protect", "v", "md5sum"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(bools); i++) {
    is_bool = -1;
    ASSERT_EQ(mkv_config_flag_kind(bools[i], &is_bool), 0);
    ASSERT_EQ(is_bool, 1);
  }
  static const char *vals[] = {"port", "db", "fallback", "replicas", "subvolumes",
                               "voltimeout", "listen", "workers"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(vals); i++) {
    is_bool = -1;
    ASSERT_EQ(mkv_config_flag_kind(vals[i], &is_bool), 0);
    ASSERT_EQ(is_bool, 0);
  }
  ASSERT_EQ(mkv_config_flag_kind("nope", &is_bool), -1);
  ASSERT_EQ(mkv_config_flag_kind("", &is_bool), -1);
  ASSERT_EQ(mkv_config_flag_kind("-v", &is_bool), -1); /* names come without dashes */
  ASSERT_EQ(mkv_config_flag_kind("verbose", &is_bool), -1); /* the field, not the flag */
}

/* What main.c adds to "flag provided but not defined". */
TEST(flag_suggest) {
  static const struct {
    const char *typed, *meant;
  } near[] = {{"volums", "volumes"}, {"replcias", "replicas"}, {"verbose", "v"},
              {"write_quorum", "write-quorum"}, {"confg", "config"}, {"Port", "port"}};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(near); i++) {
    char *s = mkv_config_flag_suggest(near[i].typed);
    if (s == NULL || strcmp(s, near[i].meant) != 0) {
      fprintf(stderr, "suggest(%s) = %s, wanted %s\n", near[i].typed, s ? s : "NULL",
              near[i].meant);
      abort();
    }
    free(s);
  }
  static const char *far[] = {"colour", "x", "", "zzzzzzzz"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(far); i++) ASSERT(mkv_config_flag_suggest(far[i]) == NULL);
}

TEST(every_known_flag_is_accepted_by_the_validator) {
  /* mkv_config_flag_kind and lua/mkv_config.lua each keep a flag list: they agree. */
  static const struct {
    const char *name, *value;
  } all[] = {{"port", "1"},        {"db", "/x"},         {"fallback", ""},
             {"replicas", "1"},    {"subvolumes", "1"},  {"volumes", "a:1,b:2,c:3"},
             {"protect", "true"},  {"v", "true"},        {"md5sum", "true"},
             {"voltimeout", "1s"}, {"listen", "0.0.0.0"}, {"workers", "1"}};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(all); i++) {
    int is_bool;
    ASSERT_EQ(mkv_config_flag_kind(all[i].name, &is_bool), 0);
    mkv_flag_t f[] = {{"db", "/x"}, {"volumes", "a:1,b:2,c:3"}, {all[i].name, all[i].value}};
    mkv_config_t cfg;
    load_ok(&cfg, NULL, f, NF(f), "server");
    mkv_config_free(&cfg);
  }
}

TEST_MAIN(T(from_flags_with_defaults), T(flag_values_as_go_parses_them), T(later_flag_wins),
          T(from_file_and_flags_over_it), T(errors_name_the_field), T(failed_load_leaves_nothing),
          T(flag_kind), T(flag_suggest), T(every_known_flag_is_accepted_by_the_validator))
