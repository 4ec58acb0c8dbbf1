/* index.c: LevelDB behind a flock, the Go original's records, and the index-writer
 * thread that group-commits the writes of every worker. */
#include "mkv/index.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <leveldb/c.h>

#include "mkv/log.h"

struct mkv_index_s {
  leveldb_t *db;
  leveldb_options_t *opts;
  leveldb_cache_t *cache;
  leveldb_filterpolicy_t *filter;
  leveldb_readoptions_t *ropts;
  leveldb_readoptions_t *scan_ropts;
  leveldb_writeoptions_t *wopts_sync, *wopts_nosync;
  int lock_fd;
  char *dir;

  pthread_t writer;
  int writer_started;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  mkv_index_write_t *head, *tail; /* queued, FIFO */
  int stopping;

  _Atomic int failed;
  char failure[512];

  mkv_index_hook_t hook; /* replication; hook.committed NULL when there is none */
  mkv_buf_t ops;         /* the batch's operations, for the hook */

  _Atomic unsigned long long batches, writes, syncs, failed_writes;
  _Atomic unsigned long long sync_ns; /* time spent in synced batch writes */
};

struct mkv_index_port_s {
  mkv_index_t *idx;
  uv_async_t async;
  pthread_mutex_t mu;
  mkv_index_write_t *head, *tail; /* completed, waiting for the loop */
  int pending;                    /* submitted and not yet called back (loop thread) */
};

struct mkv_index_iter_s {
  leveldb_iterator_t *it;
};

/* ---- open / close ---- */

static int mkdir_p(const char *dir) {
  char *tmp = mkv_strdup(dir);
  int rc = 0;
  for (char *p = tmp + 1; *p && rc == 0; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) rc = -1;
    *p = '/';
  }
  if (rc == 0 && mkdir(tmp, 0755) != 0 && errno != EEXIST) rc = -1;
  free(tmp);
  return rc;
}

/* LevelDB with create_if_missing treats a directory without CURRENT as a new index and
 * opens it empty, whatever tables and logs sit next to it. A directory that lost CURRENT
 * but holds a table or a non-empty log is a damaged index, not a new one: returns the
 * name of such a file (to be freed), or NULL. (A crash while LevelDB creates a new index
 * leaves only a MANIFEST and an empty log: that one may be created again.) */
static char *data_without_current(const char *dir) {
  char *cur = mkv_sprintf("%s/CURRENT", dir);
  struct stat st;
  int has_current = stat(cur, &st) == 0;
  free(cur);
  if (has_current) return NULL;
  DIR *d = opendir(dir);
  if (d == NULL) return NULL;
  char *found = NULL;
  struct dirent *e;
  while (found == NULL && (e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    int table = (n > 4 && (strcmp(e->d_name + n - 4, ".ldb") == 0 ||
                           strcmp(e->d_name + n - 4, ".sst") == 0));
    int log = n > 4 && strcmp(e->d_name + n - 4, ".log") == 0;
    if (log) {
      char *path = mkv_sprintf("%s/%s", dir, e->d_name);
      log = stat(path, &st) == 0 && st.st_size > 0;
      free(path);
    }
    if (table || log) found = mkv_strdup(e->d_name);
  }
  closedir(d);
  return found;
}

static void *writer_main(void *arg);

int mkv_index_open(mkv_index_t **out, const char *dir, const mkv_config_t *cfg, char **err) {
  mkv_index_t *idx = mkv_calloc(1, sizeof(*idx));
  idx->lock_fd = -1;
  idx->dir = mkv_strdup(dir);
  pthread_mutex_init(&idx->mu, NULL);
  pthread_cond_init(&idx->cond, NULL);
  mkv_buf_init(&idx->ops);
  char *lerr = NULL;

  if (mkdir_p(dir) != 0) {
    *err = mkv_sprintf("cannot create index directory %s: %s", dir, strerror(errno));
    goto fail;
  }
  char *lockpath = mkv_sprintf("%s/LOCK", dir);
  idx->lock_fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  free(lockpath);
  if (idx->lock_fd < 0) {
    *err = mkv_sprintf("cannot open %s/LOCK: %s", dir, strerror(errno));
    goto fail;
  }
  if (flock(idx->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      *err = mkv_sprintf("index %s is in use by another process (another mkv, or the Go "
                         "minikeyvalue?): stop it first",
                         dir);
    else
      *err = mkv_sprintf("cannot lock %s/LOCK: %s", dir, strerror(errno));
    goto fail;
  }

  idx->opts = leveldb_options_create();
  leveldb_options_set_create_if_missing(idx->opts, 1);
  /* A corrupt log or table must stop the open, not be skipped silently (the default
   * loses records without a word: testing-reliability §0 finding 2). */
  leveldb_options_set_paranoid_checks(idx->opts, 1);
  leveldb_options_set_compression(idx->opts, leveldb_snappy_compression);
  size_t cache_mb = cfg ? cfg->leveldb.cache_mb : 64;
  if (cache_mb) {
    idx->cache = leveldb_cache_create_lru(cache_mb << 20);
    leveldb_options_set_cache(idx->opts, idx->cache);
  }
  int bloom = cfg ? cfg->leveldb.bloom_bits : 10;
  if (bloom) {
    idx->filter = leveldb_filterpolicy_create_bloom(bloom);
    leveldb_options_set_filter_policy(idx->opts, idx->filter);
  }
  leveldb_options_set_write_buffer_size(idx->opts, (cfg ? cfg->leveldb.write_buffer_mb : 16) << 20);
  leveldb_options_set_max_file_size(idx->opts, (cfg ? cfg->leveldb.max_file_mb : 2) << 20);
  leveldb_options_set_max_open_files(idx->opts, cfg ? cfg->leveldb.max_open_files : 1000);

  char *orphan = data_without_current(dir);
  if (orphan != NULL) {
    *err = mkv_sprintf("index %s is corrupt (its CURRENT file is missing, yet it holds %s): "
                       "move it aside and rebuild it from the volumes with `mkv rebuild`",
                       dir, orphan);
    free(orphan);
    goto fail;
  }
  idx->db = leveldb_open(idx->opts, dir, &lerr);
  if (lerr != NULL) {
    if (strstr(lerr, "Corruption"))
      *err = mkv_sprintf("index %s is corrupt (%s): move it aside and rebuild it from the "
                         "volumes with `mkv rebuild`",
                         dir, lerr);
    else
      *err = mkv_sprintf("cannot open index %s: %s", dir, lerr);
    leveldb_free(lerr);
    goto fail;
  }
  idx->ropts = leveldb_readoptions_create();
  leveldb_readoptions_set_verify_checksums(idx->ropts, 1);
  idx->scan_ropts = leveldb_readoptions_create();
  leveldb_readoptions_set_verify_checksums(idx->scan_ropts, 1);
  /* A listing over millions of keys must not evict the point reads' hot blocks. */
  leveldb_readoptions_set_fill_cache(idx->scan_ropts, 0);
  idx->wopts_sync = leveldb_writeoptions_create();
  leveldb_writeoptions_set_sync(idx->wopts_sync, 1);
  idx->wopts_nosync = leveldb_writeoptions_create();
  leveldb_writeoptions_set_sync(idx->wopts_nosync, 0);

  if (pthread_create(&idx->writer, NULL, writer_main, idx) != 0) {
    *err = mkv_sprintf("cannot start the index writer thread: %s", strerror(errno));
    goto fail;
  }
  idx->writer_started = 1;
  *out = idx;
  return 0;

fail:
  mkv_index_close(idx);
  return -1;
}

void mkv_index_flush(mkv_index_t *idx) {
  /* CompactRange flushes the memtable before anything else; the range holds no key
   * (every key starts with '/'), so nothing else is compacted (library-facts §4.1). */
  if (idx->db) leveldb_compact_range(idx->db, "\xff\xff", 2, "\xff\xff\xff", 3);
}

void mkv_index_close(mkv_index_t *idx) {
  if (idx == NULL) return;
  if (idx->writer_started) {
    pthread_mutex_lock(&idx->mu);
    idx->stopping = 1;
    pthread_cond_signal(&idx->cond);
    pthread_mutex_unlock(&idx->mu);
    pthread_join(idx->writer, NULL);
  }
  if (idx->db) {
    mkv_index_flush(idx);
    leveldb_close(idx->db);
  }
  if (idx->ropts) leveldb_readoptions_destroy(idx->ropts);
  if (idx->scan_ropts) leveldb_readoptions_destroy(idx->scan_ropts);
  if (idx->wopts_sync) leveldb_writeoptions_destroy(idx->wopts_sync);
  if (idx->wopts_nosync) leveldb_writeoptions_destroy(idx->wopts_nosync);
  if (idx->opts) leveldb_options_destroy(idx->opts);
  if (idx->cache) leveldb_cache_destroy(idx->cache);
  if (idx->filter) leveldb_filterpolicy_destroy(idx->filter);
  if (idx->lock_fd >= 0) close(idx->lock_fd); /* releases the flock */
  pthread_mutex_destroy(&idx->mu);
  pthread_cond_destroy(&idx->cond);
  mkv_buf_free(&idx->ops);
  free(idx->dir);
  free(idx);
}

/* ---- reads ---- */

int mkv_index_get(mkv_index_t *idx, const char *key, size_t klen, mkv_buf_t *val) {
  char *err = NULL;
  size_t vlen = 0;
  char *v = leveldb_get(idx->db, idx->ropts, key, klen, &vlen, &err);
  if (err != NULL) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "index read failed: %s", err);
    int rc = strstr(err, "Corruption") ? MKV_ECORRUPT : UV_EIO;
    leveldb_free(err);
    return rc;
  }
  if (v == NULL) return UV_ENOENT;
  mkv_buf_set(val, v, vlen);
  leveldb_free(v);
  return 0;
}

const char *mkv_index_failure(mkv_index_t *idx) {
  return atomic_load_explicit(&idx->failed, memory_order_acquire) ? idx->failure : NULL;
}

void mkv_index_stats(mkv_index_t *idx, mkv_index_stats_t *st) {
  st->batches = idx->batches;
  st->writes = idx->writes;
  st->syncs = idx->syncs;
  st->sync_ns = idx->sync_ns;
  st->failed_writes = idx->failed_writes;
}

char *mkv_index_property(mkv_index_t *idx, const char *name) {
  char *v = leveldb_property_value(idx->db, name);
  if (v == NULL) return NULL;
  char *out = mkv_strdup(v);
  leveldb_free(v);
  return out;
}

void mkv_index_level_files(mkv_index_t *idx, int files[MKV_INDEX_LEVELS]) {
  for (int level = 0; level < MKV_INDEX_LEVELS; level++) {
    char name[64];
    snprintf(name, sizeof(name), "leveldb.num-files-at-level%d", level);
    char *val = mkv_index_property(idx, name);
    files[level] = val ? atoi(val) : -1;
    free(val);
  }
}

mkv_index_iter_t *mkv_index_iter_new(mkv_index_t *idx) {
  mkv_index_iter_t *it = mkv_malloc(sizeof(*it));
  it->it = leveldb_create_iterator(idx->db, idx->scan_ropts);
  return it;
}

void mkv_index_iter_seek(mkv_index_iter_t *it, const char *key, size_t klen) {
  leveldb_iter_seek(it->it, key, klen);
}

int mkv_index_iter_valid(mkv_index_iter_t *it) {
  return leveldb_iter_valid(it->it);
}

const char *mkv_index_iter_key(mkv_index_iter_t *it, size_t *len) {
  return leveldb_iter_key(it->it, len);
}

const char *mkv_index_iter_value(mkv_index_iter_t *it, size_t *len) {
  return leveldb_iter_value(it->it, len);
}

void mkv_index_iter_next(mkv_index_iter_t *it) {
  leveldb_iter_next(it->it);
}

int mkv_index_iter_error(mkv_index_iter_t *it, char **err) {
  char *e = NULL;
  leveldb_iter_get_error(it->it, &e);
  if (e == NULL) return 0;
  *err = mkv_strdup(e);
  leveldb_free(e);
  return -1;
}

void mkv_index_iter_free(mkv_index_iter_t *it) {
  if (it == NULL) return;
  leveldb_iter_destroy(it->it);
  free(it);
}

/* ---- backup ---- */

/* Is dir absent, or an empty directory? */
static int absent_or_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return errno == ENOENT;
  struct dirent *e;
  int empty = 1;
  while (empty && (e = readdir(d)) != NULL)
    empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
  closedir(d);
  return empty;
}

int mkv_index_backup(mkv_index_t *idx, const char *dir, const mkv_config_t *cfg,
                     mkv_index_backup_progress_t *pr, char **err) {
  if (!absent_or_empty(dir)) {
    *err = mkv_sprintf("%s exists and is not empty: a backup goes to a new directory", dir);
    return -1;
  }
  char *tmp = mkv_sprintf("%s.partial", dir);
  if (!absent_or_empty(tmp)) {
    *err = mkv_sprintf("%s exists (a backup that did not finish?): remove it first", tmp);
    free(tmp);
    return -1;
  }
  mkv_index_t *out = NULL;
  if (mkv_index_open(&out, tmp, cfg, err) != 0) {
    free(tmp);
    return -1;
  }
  /* The iterator reads one snapshot: the index as it was at this instant, whatever is
   * written while the copy runs. */
  leveldb_iterator_t *it = leveldb_create_iterator(idx->db, idx->scan_ropts);
  leveldb_writebatch_t *wb = leveldb_writebatch_create();
  size_t pending = 0;
  char *lerr = NULL;
  for (leveldb_iter_seek_to_first(it); leveldb_iter_valid(it) && lerr == NULL;
       leveldb_iter_next(it)) {
    if (atomic_load(&pr->cancel)) {
      lerr = mkv_strdup("cancelled");
      break;
    }
    size_t kl, vl;
    const char *k = leveldb_iter_key(it, &kl);
    const char *v = leveldb_iter_value(it, &vl);
    leveldb_writebatch_put(wb, k, kl, v, vl);
    pending += kl + vl;
    atomic_fetch_add(&pr->keys, 1);
    atomic_fetch_add(&pr->bytes, kl + vl);
    if (pending >= (4u << 20)) {
      leveldb_write(out->db, out->wopts_nosync, wb, &lerr);
      leveldb_writebatch_clear(wb);
      pending = 0;
    }
  }
  if (lerr == NULL) leveldb_iter_get_error(it, &lerr);
  if (lerr == NULL) leveldb_write(out->db, out->wopts_sync, wb, &lerr);
  leveldb_writebatch_destroy(wb);
  leveldb_iter_destroy(it);
  /* Close flushes the memtable into a table: nothing is left in a journal that the Go
   * original's goleveldb would drop (library-facts §4.1). */
  mkv_index_close(out);
  int rc = 0;
  if (lerr != NULL) {
    *err = mkv_sprintf("backup to %s stopped: %s (the partial copy %s is not a backup: remove it)",
                       dir, lerr, tmp);
    rc = -1;
  } else if (mkv_fsync_dir(tmp) != 0 || rename(tmp, dir) != 0) {
    *err = mkv_sprintf("cannot move %s to %s: %s", tmp, dir, strerror(errno));
    rc = -1;
  } else {
    char *parent = mkv_strdup(dir);
    char *slash = strrchr(parent, '/');
    if (slash) *slash = '\0';
    mkv_fsync_dir(slash && slash != parent ? parent : slash ? "/" : ".");
    free(parent);
  }
  free(lerr); /* mkv_strdup or LevelDB (leveldb_free is free): either way malloc'd */
  free(tmp);
  return rc;
}

/* ---- the writer thread ---- */

static void port_post(mkv_index_port_t *port, mkv_index_write_t *w) {
  w->next = NULL;
  pthread_mutex_lock(&port->mu);
  if (port->tail)
    port->tail->next = w;
  else
    port->head = w;
  port->tail = w;
  /* Under the lock: once the loop has drained this write it may close and free the
   * port, and it takes this lock before freeing (port_closed). */
  uv_async_send(&port->async); /* coalesces: the callback drains the whole list */
  pthread_mutex_unlock(&port->mu);
}

static void *writer_main(void *arg) {
  mkv_index_t *idx = arg;
  mkv_log_set_thread_name("index");
  leveldb_writebatch_t *wb = leveldb_writebatch_create();
  pthread_mutex_lock(&idx->mu);
  for (;;) {
    while (idx->head == NULL && !idx->stopping) pthread_cond_wait(&idx->cond, &idx->mu);
    if (idx->head == NULL) break; /* stopping, and the queue is drained */
    mkv_index_write_t *batch = idx->head;
    idx->head = idx->tail = NULL;
    pthread_mutex_unlock(&idx->mu);

    /* Everything queued while the previous batch was being written goes in one
     * LevelDB batch: one log write and at most one fsync for all of it. */
    int status = 0, sync = 0;
    unsigned long long n = 0;
    leveldb_writebatch_clear(wb);
    mkv_buf_reset(&idx->ops);
    for (mkv_index_write_t *w = batch; w; w = w->next, n++) {
      if (w->is_delete)
        leveldb_writebatch_delete(wb, w->key.data, w->key.len);
      else
        leveldb_writebatch_put(wb, w->key.data, w->key.len, w->val.data, w->val.len);
      if (idx->hook.committed)
        mkv_index_ops_add(&idx->ops, w->key.data, w->key.len, w->is_delete ? NULL : w->val.data,
                          w->val.len);
      sync |= w->sync;
    }
    if (atomic_load(&idx->failed)) {
      status = MKV_EINDEX;
    } else if (idx->hook.admit && (status = idx->hook.admit(idx->hook.arg)) != 0) {
      /* this node may not write now (a standby, or a primary without its lease) */
    } else {
      char *err = NULL;
      uint64_t t0 = mkv_now_ns();
      leveldb_write(idx->db, sync ? idx->wopts_sync : idx->wopts_nosync, wb, &err);
      if (sync) idx->sync_ns += mkv_now_ns() - t0;
      if (err != NULL) {
        /* LevelDB keeps failing every write after an I/O error (its background error is
         * sticky); say so once and turn the index read-only. */
        snprintf(idx->failure, sizeof(idx->failure), "index write failed: %s", err);
        atomic_store_explicit(&idx->failed, 1, memory_order_release);
        mkv_error("%s -- writes answer 503 from now on; fix the disk and restart mkv",
                  idx->failure);
        leveldb_free(err);
        status = MKV_EINDEX;
      }
    }
    idx->batches++;
    idx->writes += n;
    if (sync && status == 0) idx->syncs++;
    if (status) idx->failed_writes += n;

    /* Replicated: the hook completes the writes once the standby has the batch. */
    if (status != 0 || idx->hook.committed == NULL ||
        !idx->hook.committed(idx->hook.arg, &idx->ops, sync, batch))
      mkv_index_complete(batch, status);
    pthread_mutex_lock(&idx->mu);
  }
  pthread_mutex_unlock(&idx->mu);
  leveldb_writebatch_destroy(wb);
  return NULL;
}

void mkv_index_complete(mkv_index_write_t *writes, int status) {
  for (mkv_index_write_t *w = writes, *next; w; w = next) {
    next = w->next;
    w->status = status;
    port_post(w->port, w);
  }
}

void mkv_index_set_hook(mkv_index_t *idx, const mkv_index_hook_t *hook) {
  if (hook)
    idx->hook = *hook;
  else
    memset(&idx->hook, 0, sizeof(idx->hook));
}

static void put_u32(mkv_buf_t *b, size_t v) {
  unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                        (unsigned char)v};
  mkv_buf_add(b, x, 4);
}

static int get_u32(const char *p, size_t len, size_t *off, size_t *v) {
  if (len - *off < 4) return -1;
  const unsigned char *x = (const unsigned char *)p + *off;
  *v = ((size_t)x[0] << 24) | ((size_t)x[1] << 16) | ((size_t)x[2] << 8) | x[3];
  *off += 4;
  return 0;
}

void mkv_index_ops_add(mkv_buf_t *ops, const char *key, size_t klen, const char *val,
                       size_t vlen) {
  mkv_buf_addc(ops, val ? 1 : 2);
  put_u32(ops, klen);
  mkv_buf_add(ops, key, klen);
  if (val) {
    put_u32(ops, vlen);
    mkv_buf_add(ops, val, vlen);
  }
}

int mkv_index_ops_next(const char *ops, size_t len, size_t *off, const char **key, size_t *klen,
                       const char **val, size_t *vlen) {
  if (*off == len) return 0;
  if (*off > len) return -1;
  unsigned char kind = (unsigned char)ops[(*off)++];
  if ((kind != 1 && kind != 2) || get_u32(ops, len, off, klen) != 0 || len - *off < *klen)
    return -1;
  *key = ops + *off;
  *off += *klen;
  *val = NULL;
  *vlen = 0;
  if (kind == 1) {
    if (get_u32(ops, len, off, vlen) != 0 || len - *off < *vlen) return -1;
    *val = ops + *off;
    *off += *vlen;
  }
  return 1;
}

int mkv_index_apply(mkv_index_t *idx, const char *ops, size_t len, int sync, char **err) {
  leveldb_writebatch_t *wb = leveldb_writebatch_create();
  size_t off = 0, klen, vlen;
  const char *key, *val;
  int rc;
  while ((rc = mkv_index_ops_next(ops, len, &off, &key, &klen, &val, &vlen)) == 1) {
    if (val)
      leveldb_writebatch_put(wb, key, klen, val, vlen);
    else
      leveldb_writebatch_delete(wb, key, klen);
  }
  if (rc < 0) {
    leveldb_writebatch_destroy(wb);
    *err = mkv_strdup("a malformed batch");
    return -1;
  }
  char *lerr = NULL;
  leveldb_write(idx->db, sync ? idx->wopts_sync : idx->wopts_nosync, wb, &lerr);
  leveldb_writebatch_destroy(wb);
  if (lerr) {
    *err = mkv_sprintf("index write failed: %s", lerr);
    leveldb_free(lerr);
    return -1;
  }
  return 0;
}

static void port_async_cb(uv_async_t *h) {
  mkv_index_port_t *port = h->data;
  pthread_mutex_lock(&port->mu);
  mkv_index_write_t *w = port->head;
  port->head = port->tail = NULL;
  pthread_mutex_unlock(&port->mu);
  while (w) {
    mkv_index_write_t *next = w->next;
    w->next = NULL;
    port->pending--;
    w->cb(w, w->status);
    w = next;
  }
}

int mkv_index_port_new(mkv_index_t *idx, uv_loop_t *loop, mkv_index_port_t **out) {
  mkv_index_port_t *port = mkv_calloc(1, sizeof(*port));
  port->idx = idx;
  pthread_mutex_init(&port->mu, NULL);
  int rc = uv_async_init(loop, &port->async, port_async_cb);
  if (rc != 0) {
    pthread_mutex_destroy(&port->mu);
    free(port);
    return rc;
  }
  port->async.data = port;
  *out = port;
  return 0;
}

static void port_closed(uv_handle_t *h) {
  mkv_index_port_t *port = h->data;
  /* The writer may still be inside port_post for the last write: wait it out. */
  pthread_mutex_lock(&port->mu);
  pthread_mutex_unlock(&port->mu);
  pthread_mutex_destroy(&port->mu);
  free(port);
}

void mkv_index_port_close(mkv_index_port_t *port) {
  uv_close((uv_handle_t *)&port->async, port_closed);
}

int mkv_index_port_pending(mkv_index_port_t *port) {
  return port->pending;
}

void mkv_index_write_init(mkv_index_write_t *w) {
  memset(w, 0, sizeof(*w));
  mkv_buf_init(&w->key);
  mkv_buf_init(&w->val);
}

void mkv_index_write_free(mkv_index_write_t *w) {
  mkv_buf_free(&w->key);
  mkv_buf_free(&w->val);
}

static int submit(mkv_index_port_t *port, mkv_index_write_t *w, int sync,
                  mkv_index_write_cb cb) {
  mkv_index_t *idx = port->idx;
  w->port = port;
  w->cb = cb;
  w->sync = sync;
  w->status = 0;
  w->next = NULL;
  port->pending++;
  pthread_mutex_lock(&idx->mu);
  if (idx->tail)
    idx->tail->next = w;
  else
    idx->head = w;
  idx->tail = w;
  pthread_cond_signal(&idx->cond);
  pthread_mutex_unlock(&idx->mu);
  return 0;
}

int mkv_index_put(mkv_index_port_t *port, mkv_index_write_t *w, const char *key, size_t klen,
                  const char *val, size_t vlen, int sync, mkv_index_write_cb cb) {
  mkv_buf_set(&w->key, key, klen);
  mkv_buf_set(&w->val, val, vlen);
  w->is_delete = 0;
  return submit(port, w, sync, cb);
}

int mkv_index_del(mkv_index_port_t *port, mkv_index_write_t *w, const char *key, size_t klen,
                  int sync, mkv_index_write_cb cb) {
  mkv_buf_set(&w->key, key, klen);
  mkv_buf_reset(&w->val);
  w->is_delete = 1;
  return submit(port, w, sync, cb);
}

int mkv_index_put_sync(mkv_index_t *idx, const char *key, size_t klen, const char *val,
                       size_t vlen, int sync, char **err) {
  char *lerr = NULL;
  if (val)
    leveldb_put(idx->db, sync ? idx->wopts_sync : idx->wopts_nosync, key, klen, val, vlen, &lerr);
  else
    leveldb_delete(idx->db, sync ? idx->wopts_sync : idx->wopts_nosync, key, klen, &lerr);
  if (lerr) {
    *err = mkv_strdup(lerr);
    leveldb_free(lerr);
    return UV_EIO;
  }
  return 0;
}
