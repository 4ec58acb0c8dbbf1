/* ldbtool: LevelDB chores for the benchmarks, straight through the C API.
 *
 *   ldbtool fill DIR N PREFIX VOLUMES   writes N live records "PREFIX%09d" -> the Go
 *                                       original's record format (HASH + MD5 + VOLUMES),
 *                                       in batches of 10 000, without sync
 *   ldbtool scan DIR [PREFIX]           iterates every key (with PREFIX) in order, as a
 *                                       listing does; prints "keys=N seconds=S keys_per_s=R"
 *
 * `scan` is the reference of the listing figure: the fastest a C loop can walk the same
 * keys. `fill` makes the 10-million-key index in minutes instead of hours of PUTs (the
 * records it writes are the format mkv writes; their files need not exist, since the
 * benchmark only reads keys it PUT through the API). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <leveldb/c.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static leveldb_t *open_db(const char *dir, int create) {
  leveldb_options_t *o = leveldb_options_create();
  leveldb_options_set_create_if_missing(o, (unsigned char)create);
  leveldb_options_set_write_buffer_size(o, 64u << 20);
  char *err = NULL;
  leveldb_t *db = leveldb_open(o, dir, &err);
  leveldb_options_destroy(o);
  if (err) {
    fprintf(stderr, "ldbtool: %s: %s\n", dir, err);
    exit(1);
  }
  return db;
}

int main(int argc, char **argv) {
  if (argc >= 6 && strcmp(argv[1], "fill") == 0) {
    leveldb_t *db = open_db(argv[2], 1);
    long n = atol(argv[3]);
    const char *prefix = argv[4], *vols = argv[5];
    leveldb_writeoptions_t *wo = leveldb_writeoptions_create();
    leveldb_writebatch_t *b = leveldb_writebatch_create();
    char key[512], val[1024];
    int vl = snprintf(val, sizeof(val), "HASH%032x%s", 0, vols);
    double t0 = now();
    for (long i = 0; i < n; i++) {
      int kl = snprintf(key, sizeof(key), "%s%09ld", prefix, i);
      leveldb_writebatch_put(b, key, (size_t)kl, val, (size_t)vl);
      if ((i + 1) % 10000 == 0 || i + 1 == n) {
        char *err = NULL;
        leveldb_write(db, wo, b, &err);
        if (err) {
          fprintf(stderr, "ldbtool: write: %s\n", err);
          return 1;
        }
        leveldb_writebatch_clear(b);
      }
    }
    leveldb_writebatch_destroy(b);
    leveldb_writeoptions_destroy(wo);
    leveldb_close(db);
    printf("records=%ld seconds=%.2f\n", n, now() - t0);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "scan") == 0) {
    leveldb_t *db = open_db(argv[2], 0);
    const char *prefix = argc > 3 ? argv[3] : "";
    size_t pl = strlen(prefix);
    leveldb_readoptions_t *ro = leveldb_readoptions_create();
    leveldb_readoptions_set_fill_cache(ro, 0);
    double t0 = now();
    leveldb_iterator_t *it = leveldb_create_iterator(db, ro);
    long n = 0;
    size_t bytes = 0;
    for (leveldb_iter_seek(it, prefix, pl); leveldb_iter_valid(it); leveldb_iter_next(it)) {
      size_t kl, vl;
      const char *k = leveldb_iter_key(it, &kl);
      if (kl < pl || memcmp(k, prefix, pl) != 0) break;
      (void)leveldb_iter_value(it, &vl);
      bytes += kl + vl;
      n++;
    }
    double secs = now() - t0;
    leveldb_iter_destroy(it);
    leveldb_readoptions_destroy(ro);
    leveldb_close(db);
    printf("keys=%ld seconds=%.4f keys_per_s=%.0f bytes=%zu\n", n, secs, secs > 0 ? n / secs : 0.0,
           bytes);
    return 0;
  }
  fprintf(stderr, "usage: ldbtool fill DIR N PREFIX VOLUMES | ldbtool scan DIR [PREFIX]\n");
  return 2;
}
