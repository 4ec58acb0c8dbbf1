/* test_index.c: core/index.c -- the LevelDB index behind its flock, and the
 * group-committing writer thread reached through ports. (The record format: test_record.c.) */
#include "testutil.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "mkv/common.h"
#include "mkv/index.h"

#define H "5d41402abc4b2a76b9719d911017c592" /* md5("hello") */

/* ---- opening, reading ---- */

static mkv_index_t *open_ok(const char *dir) {
  mkv_index_t *idx = NULL;
  char *err = NULL;
  int rc = mkv_index_open(&idx, dir, NULL, &err);
  if (rc != 0) fprintf(stderr, "mkv_index_open: %s\n", err ? err : "?");
  ASSERT_EQ(rc, 0);
  ASSERT(idx != NULL);
  return idx;
}

TEST(open_get_missing) {
  char *dir = tmpdir_new("index");
  char *sub = mkv_sprintf("%s/a/b/db", dir); /* created with its parents */
  mkv_index_t *idx = open_ok(sub);
  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_index_get(idx, "/nope", 5, &v), UV_ENOENT);
  ASSERT(mkv_index_failure(idx) == NULL);
  char *err = NULL;
  ASSERT_EQ(mkv_index_put_sync(idx, "/k\0x", 4, "HASH" H "v1", 38, 0, &err), 0);
  ASSERT_EQ(mkv_index_get(idx, "/k\0x", 4, &v), 0);
  ASSERT_EQ(v.len, 38);
  ASSERT_MEMEQ(v.data, "HASH" H "v1", 38);
  ASSERT_EQ(mkv_index_get(idx, "/k", 2, &v), UV_ENOENT); /* keys are length-delimited */
  ASSERT_EQ(mkv_index_put_sync(idx, "/k\0x", 4, NULL, 0, 1, &err), 0); /* NULL = delete */
  ASSERT_EQ(mkv_index_get(idx, "/k\0x", 4, &v), UV_ENOENT);
  char *stats = mkv_index_property(idx, "leveldb.stats");
  ASSERT(stats != NULL);
  free(stats);
  mkv_buf_free(&v);
  mkv_index_close(idx);
  free(sub);
  tmpdir_free(dir);
}

/* ---- writes through a port ---- */

typedef struct wctx_s {
  uv_loop_t loop;
  pump_t pump;
  mkv_index_port_t *port;
  mkv_index_write_t *w;
  int *calls;
  int n, ncb, order_bad, status_bad, early;
  int in_call; /* set around mkv_index_put/del: a callback must not see it */
  const char *prefix;
} wctx_t;

static void wcb(mkv_index_write_t *w, int status) {
  wctx_t *c = w->data;
  int i = (int)(w - c->w);
  if (c->in_call) c->early++;
  if (status != 0) c->status_bad++;
  if (i != c->ncb) c->order_bad++; /* callbacks come in submission order */
  c->calls[i]++;
  c->ncb++;
}

static void wctx_init(wctx_t *c, mkv_index_t *idx, int n, const char *prefix) {
  memset(c, 0, sizeof(*c));
  ASSERT_EQ(uv_loop_init(&c->loop), 0);
  pump_init(&c->pump, &c->loop);
  ASSERT_EQ(mkv_index_port_new(idx, &c->loop, &c->port), 0);
  c->n = n;
  c->prefix = prefix;
  c->w = mkv_calloc((size_t)n, sizeof(*c->w));
  c->calls = mkv_calloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; i++) {
    mkv_index_write_init(&c->w[i]);
    c->w[i].data = c;
  }
}

static void wctx_finish(wctx_t *c) {
  ASSERT_EQ(mkv_index_port_pending(c->port), 0);
  mkv_index_port_close(c->port);
  pump_close(&c->pump);
  loop_finish(&c->loop);
  for (int i = 0; i < c->n; i++) mkv_index_write_free(&c->w[i]);
  free(c->w);
  free(c->calls);
}

static void key_of(const char *prefix, int i, char *out, size_t cap, size_t *len) {
  *len = (size_t)snprintf(out, cap, "/%s/%05d", prefix, i);
}

/* Queues n puts (every third one a delete of an earlier key would complicate the final
 * check, so: puts, then the caller may delete). */
static void submit_puts(wctx_t *c, int first, int count, int sync) {
  char key[64], val[64];
  for (int i = first; i < first + count; i++) {
    size_t kl;
    key_of(c->prefix, i, key, sizeof(key), &kl);
    int vl = snprintf(val, sizeof(val), "HASH" H "vol%d", i);
    c->in_call = 1;
    int rc = mkv_index_put(c->port, &c->w[i], key, kl, val, (size_t)vl, sync, wcb);
    c->in_call = 0;
    ASSERT_EQ(rc, 0);
  }
}

static void check_all_called_once(wctx_t *c) {
  for (int i = 0; i < c->n; i++) ASSERT_EQ(c->calls[i], 1);
  ASSERT_EQ(c->ncb, c->n);
  ASSERT_EQ(c->early, 0);
  ASSERT_EQ(c->order_bad, 0);
  ASSERT_EQ(c->status_bad, 0);
}

TEST(port_put_del_callbacks) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  wctx_t c;
  wctx_init(&c, idx, 4, "pd");

  submit_puts(&c, 0, 3, 0);
  ASSERT_EQ(c.ncb, 0); /* nothing ran inside the calls */
  ASSERT_EQ(mkv_index_port_pending(c.port), 3);
  c.in_call = 1;
  ASSERT_EQ(mkv_index_del(c.port, &c.w[3], "/pd/00001", 9, 0, wcb), 0);
  c.in_call = 0;
  ASSERT_EQ(mkv_index_port_pending(c.port), 4);
  PUMP_UNTIL(&c.pump, c.ncb == 4, 10);
  /* A few more turns: no callback runs twice. */
  pump_for(&c.pump, 20);
  check_all_called_once(&c);

  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_index_get(idx, "/pd/00000", 9, &v), 0);
  ASSERT(v.len == 4 + 32 + 4 && memcmp(v.data, "HASH" H "vol0", v.len) == 0);
  ASSERT_EQ(mkv_index_get(idx, "/pd/00001", 9, &v), UV_ENOENT); /* put, then deleted */
  ASSERT_EQ(mkv_index_get(idx, "/pd/00002", 9, &v), 0);
  mkv_buf_free(&v);

  mkv_index_stats_t st;
  mkv_index_stats(idx, &st);
  ASSERT_EQ(st.writes, 4);
  ASSERT(st.batches >= 1 && st.batches <= 4);
  ASSERT_EQ(st.failed_writes, 0);
  wctx_finish(&c);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

TEST(port_write_reuse_after_callback) {
  /* One write struct, reused once its callback has run (what a request does). */
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  wctx_t c;
  wctx_init(&c, idx, 1, "re");
  for (int round = 0; round < 5; round++) {
    char val[8];
    int vl = snprintf(val, sizeof(val), "v%d", round);
    c.ncb = 0;
    c.calls[0] = 0;
    ASSERT_EQ(mkv_index_put(c.port, &c.w[0], "/re", 3, val, (size_t)vl, round % 2, wcb), 0);
    PUMP_UNTIL(&c.pump, c.ncb == 1, 10);
    ASSERT_EQ(c.calls[0], 1);
  }
  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_index_get(idx, "/re", 3, &v), 0);
  ASSERT(v.len == 2 && memcmp(v.data, "v4", 2) == 0);
  mkv_buf_free(&v);
  wctx_finish(&c);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

TEST(sync_counts) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  wctx_t c;
  wctx_init(&c, idx, 2, "sy");
  mkv_index_stats_t st;

  submit_puts(&c, 0, 1, 0);
  PUMP_UNTIL(&c.pump, c.ncb == 1, 10);
  mkv_index_stats(idx, &st);
  ASSERT_EQ(st.syncs, 0); /* an unsynced write is not a sync */
  ASSERT_EQ(st.sync_ns, 0); /* nor is its time */

  submit_puts(&c, 1, 1, 1);
  PUMP_UNTIL(&c.pump, c.ncb == 2, 10);
  mkv_index_stats(idx, &st);
  ASSERT_EQ(st.syncs, 1);
  ASSERT_EQ(st.writes, 2);
  ASSERT(st.sync_ns > 0); /* the synced write's time is counted */
  check_all_called_once(&c);
  wctx_finish(&c);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

/* ---- two workers: ports on two loops in two threads ---- */

#define NW 1500

static void *worker(void *arg) {
  wctx_t *c = arg;
  /* Everything queued at once: the writer thread must batch it. */
  submit_puts(c, 0, c->n, 0);
  PUMP_UNTIL(&c->pump, c->ncb == c->n, 20);
  return NULL;
}

TEST(two_ports_two_threads_group_commit) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  wctx_t a, b;
  /* Ports are made here but only ever used by their thread's loop afterwards; the
   * thread start is the hand-over (a happens-before edge). */
  wctx_init(&a, idx, NW, "wa");
  wctx_init(&b, idx, NW, "wb");
  pthread_t ta, tb;
  ASSERT_EQ(pthread_create(&ta, NULL, worker, &a), 0);
  ASSERT_EQ(pthread_create(&tb, NULL, worker, &b), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  check_all_called_once(&a);
  check_all_called_once(&b);

  mkv_index_stats_t st;
  mkv_index_stats(idx, &st);
  ASSERT_EQ(st.writes, 2 * NW);
  /* Group commit: 3000 writes queued as fast as two threads can go cannot each have had a
   * LevelDB batch of their own. */
  ASSERT(st.batches < st.writes);
  ASSERT_EQ(st.failed_writes, 0);

  mkv_buf_t v;
  mkv_buf_init(&v);
  char key[64], val[64];
  for (int t = 0; t < 2; t++) {
    for (int i = 0; i < NW; i++) {
      size_t kl;
      key_of(t ? "wb" : "wa", i, key, sizeof(key), &kl);
      int vl = snprintf(val, sizeof(val), "HASH" H "vol%d", i);
      ASSERT_EQ(mkv_index_get(idx, key, kl, &v), 0);
      ASSERT(v.len == (size_t)vl && memcmp(v.data, val, v.len) == 0);
    }
  }
  mkv_buf_free(&v);
  wctx_finish(&a);
  wctx_finish(&b);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

/* ---- iteration ---- */

TEST(iterator_byte_order) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  /* Inserted shuffled; bytewise order is memcmp with shorter-is-smaller. */
  static const struct {
    const char *k;
    size_t n;
  } keys[] = {{"/b", 2}, {"/a\0", 3}, {"\xff", 1}, {"/A", 2}, {"/a", 2},
              {"\x00", 1}, {"/a/b", 4}, {"/\xc3\xa9", 3}, {"/a\x01", 3}, {"/B", 2}};
  static const int order[] = {5, 3, 9, 4, 1, 8, 6, 0, 7, 2}; /* indices, sorted */
  char *err = NULL;
  for (size_t i = 0; i < MKV_ARRAY_SIZE(keys); i++)
    ASSERT_EQ(mkv_index_put_sync(idx, keys[i].k, keys[i].n, "v", 1, 0, &err), 0);

  mkv_index_iter_t *it = mkv_index_iter_new(idx);
  mkv_index_iter_seek(it, "", 0);
  size_t n = 0;
  for (; mkv_index_iter_valid(it); mkv_index_iter_next(it), n++) {
    size_t kl, vl;
    const char *k = mkv_index_iter_key(it, &kl);
    const char *v = mkv_index_iter_value(it, &vl);
    ASSERT(n < MKV_ARRAY_SIZE(keys));
    ASSERT_EQ(kl, keys[order[n]].n);
    ASSERT_MEMEQ(k, keys[order[n]].k, kl);
    ASSERT(vl == 1 && v[0] == 'v');
  }
  ASSERT_EQ(n, MKV_ARRAY_SIZE(keys));
  ASSERT_EQ(mkv_index_iter_error(it, &err), 0);

  /* Seek lands on the first key >= the target. */
  mkv_index_iter_seek(it, "/a\0", 3);
  ASSERT(mkv_index_iter_valid(it));
  size_t kl;
  const char *k = mkv_index_iter_key(it, &kl);
  ASSERT(kl == 3 && memcmp(k, "/a\0", 3) == 0);
  mkv_index_iter_seek(it, "/a\0\0", 4);
  k = mkv_index_iter_key(it, &kl);
  ASSERT(kl == 3 && memcmp(k, "/a\x01", 3) == 0);
  mkv_index_iter_seek(it, "\xff\xff", 2);
  ASSERT(!mkv_index_iter_valid(it));
  mkv_index_iter_free(it);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

/* ---- the flock, close and reopen ---- */

TEST(second_open_is_refused) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  mkv_index_t *idx2 = NULL;
  char *err = NULL;
  ASSERT_EQ(mkv_index_open(&idx2, dir, NULL, &err), -1);
  ASSERT(err != NULL);
  if (strstr(err, "in use") == NULL) fprintf(stderr, "message: %s\n", err);
  ASSERT(strstr(err, "in use") != NULL);
  ASSERT(strstr(err, dir) != NULL); /* names the directory */
  free(err);

  /* The refused open must not have disturbed the one that holds the directory. */
  ASSERT_EQ(mkv_index_put_sync(idx, "/still", 6, "ok", 2, 1, &err), 0);
  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_index_get(idx, "/still", 6, &v), 0);
  mkv_buf_free(&v);
  mkv_index_close(idx);

  /* Released at close. */
  idx = open_ok(dir);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

TEST(second_open_from_another_process_is_refused) {
  /* The real case: another process (another mkv, or goleveldb's flock). */
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  int pfd[2];
  ASSERT_EQ(pipe(pfd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    mkv_index_t *i2 = NULL;
    char *err = NULL;
    int rc = mkv_index_open(&i2, dir, NULL, &err);
    char ok = rc == -1 && err && strstr(err, "in use") ? 'y' : 'n';
    if (write(pfd[1], &ok, 1) != 1) _exit(2);
    _exit(0);
  }
  char ok = 0;
  ASSERT_EQ(read(pfd[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');
  int status;
  waitpid(pid, &status, 0);
  close(pfd[0]);
  close(pfd[1]);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

/* The highest-numbered NNNNNN.log in dir: its size, or -1 when there is none. */
static long long newest_log_size(const char *dir) {
  DIR *d = opendir(dir);
  ASSERT(d != NULL);
  unsigned long long best = 0;
  int found = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned long long num;
    char tail[8];
    if (sscanf(e->d_name, "%llu.%7s", &num, tail) == 2 && strcmp(tail, "log") == 0 &&
        (!found || num > best)) {
      best = num;
      found = 1;
    }
  }
  closedir(d);
  if (!found) return -1;
  char path[512];
  snprintf(path, sizeof(path), "%s/%06llu.log", dir, best);
  struct stat sb;
  ASSERT_EQ(stat(path, &sb), 0);
  return (long long)sb.st_size;
}

TEST(close_flushes_and_reopen_has_everything) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  wctx_t c;
  wctx_init(&c, idx, 1000, "cl");
  submit_puts(&c, 0, 1000, 0);
  PUMP_UNTIL(&c.pump, c.ncb == 1000, 20);
  check_all_called_once(&c);
  wctx_finish(&c);
  /* The records are in the journal now (unsynced, in the memtable). */
  ASSERT(newest_log_size(dir) > 0);
  mkv_index_close(idx);

  /* Close flushed the memtable into a table: no journal holds live records that
   * goleveldb would drop (library-facts §4.1). */
  long long sz = newest_log_size(dir);
  if (sz > 0) fprintf(stderr, "newest .log after close holds %lld bytes\n", sz);
  ASSERT(sz <= 0);

  idx = open_ok(dir);
  mkv_buf_t v;
  mkv_buf_init(&v);
  char key[64], val[64];
  for (int i = 0; i < 1000; i++) {
    size_t kl;
    key_of("cl", i, key, sizeof(key), &kl);
    int vl = snprintf(val, sizeof(val), "HASH" H "vol%d", i);
    ASSERT_EQ(mkv_index_get(idx, key, kl, &v), 0);
    ASSERT(v.len == (size_t)vl && memcmp(v.data, val, v.len) == 0);
  }
  mkv_index_iter_t *it = mkv_index_iter_new(idx);
  int n = 0;
  for (mkv_index_iter_seek(it, "", 0); mkv_index_iter_valid(it); mkv_index_iter_next(it)) n++;
  ASSERT_EQ(n, 1000);
  mkv_index_iter_free(it);
  mkv_buf_free(&v);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

TEST(flush_empties_the_journal) {
  char *dir = tmpdir_new("index");
  mkv_index_t *idx = open_ok(dir);
  char *err = NULL;
  ASSERT_EQ(mkv_index_put_sync(idx, "/f", 2, "v", 1, 0, &err), 0);
  ASSERT(newest_log_size(dir) > 0);
  mkv_index_flush(idx);
  ASSERT(newest_log_size(dir) <= 0);
  mkv_buf_t v;
  mkv_buf_init(&v);
  ASSERT_EQ(mkv_index_get(idx, "/f", 2, &v), 0);
  mkv_buf_free(&v);
  mkv_index_close(idx);
  tmpdir_free(dir);
}

TEST(open_error_on_unusable_dir) {
  char *dir = tmpdir_new("index");
  char *file = mkv_sprintf("%s/plainfile", dir);
  write_file(file, "x");
  char *sub = mkv_sprintf("%s/db", file); /* a directory under a regular file */
  mkv_index_t *idx = NULL;
  char *err = NULL;
  ASSERT_EQ(mkv_index_open(&idx, sub, NULL, &err), -1);
  ASSERT(err != NULL && strstr(err, sub) != NULL);
  free(err);
  free(sub);
  free(file);
  tmpdir_free(dir);
}

TEST_MAIN(T(open_get_missing), T(port_put_del_callbacks), T(port_write_reuse_after_callback),
          T(sync_counts), T(two_ports_two_threads_group_commit), T(iterator_byte_order),
          T(second_open_is_refused), T(second_open_from_another_process_is_refused),
          T(close_flushes_and_reopen_has_everything), T(flush_empties_the_journal),
          T(open_error_on_unusable_dir))
