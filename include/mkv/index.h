/* index.h: the LevelDB index -- the only unit that includes LevelDB.
 *
 * Records: the Go original's format, byte for byte (record.h encodes and decodes it).
 * Nothing else is ever written into the index.
 *
 * Threads: mkv_index_open/close run on the main thread. Point reads and iterators may
 * run on any thread (a worker's loop): LevelDB shares one handle between threads, but an
 * iterator belongs to one thread. Writes never run on a loop: each worker owns a port
 * (an mkv_index_port_t) and hands writes to the one index-writer thread, which commits
 * everything queued by every worker in one LevelDB batch -- synced if any entry asks for
 * it -- and posts completions back through the port's uv_async_t. A write's callback
 * runs on the port's loop, exactly once, never before mkv_index_put/del returned.
 *
 * After a failed LevelDB write (disk full, EIO), LevelDB fails every later write; the
 * index then turns failed: every write completes with MKV_EINDEX and
 * mkv_index_failure() says why, until the process is restarted. Reads go on.
 *
 * The directory is locked with flock(LOCK_EX|LOCK_NB) on <db>/LOCK (goleveldb's lock; C++
 * LevelDB's fcntl lock does not exclude it, library-facts §4.2). Close flushes the
 * memtable, so no journal holds live records that goleveldb would drop (§4.1). */
#ifndef MKV_INDEX_H
#define MKV_INDEX_H

#include <stdatomic.h>
#include <stddef.h>

#include <uv.h>

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/record.h"

typedef struct mkv_index_s mkv_index_t;
typedef struct mkv_index_port_s mkv_index_port_t;
typedef struct mkv_index_iter_s mkv_index_iter_t;
typedef struct mkv_index_write_s mkv_index_write_t;

/* ---- the index ---- */

/* Creates `dir` if needed, takes the flock, opens LevelDB with paranoid checks and starts
 * the writer thread. cfg may be NULL (default LevelDB settings). Returns 0, or -1 with a
 * one-line *err (owned): in use by another process; corrupt (pointing to mkv rebuild). */
int mkv_index_open(mkv_index_t **out, const char *dir, const mkv_config_t *cfg, char **err);
/* Stops the writer once its queue is empty, flushes the memtable, closes, unlocks.
 * Every port must be closed first. */
void mkv_index_close(mkv_index_t *idx);
/* Flushes the memtable to a table file now (what close does). */
void mkv_index_flush(mkv_index_t *idx);

/* Point read. 0 with *val set (replaced); UV_ENOENT; or MKV_ECORRUPT / UV_EIO with the
 * reason logged. */
int mkv_index_get(mkv_index_t *idx, const char *key, size_t klen, mkv_buf_t *val);

/* NULL while writes work; the reason once the index has failed. */
const char *mkv_index_failure(mkv_index_t *idx);

/* Counters for logs and metrics. */
typedef struct mkv_index_stats_s {
  unsigned long long batches, writes, syncs, failed_writes;
  unsigned long long sync_ns; /* wall time the writer spent in synced writes (the fsync) */
} mkv_index_stats_t;
void mkv_index_stats(mkv_index_t *idx, mkv_index_stats_t *st);
/* LevelDB's own statistics text ("leveldb.stats"); returns owned, or NULL. */
char *mkv_index_property(mkv_index_t *idx, const char *name);
/* LevelDB's table files at each level (/metrics, the status page); -1 when unknown. */
#define MKV_INDEX_LEVELS 7
void mkv_index_level_files(mkv_index_t *idx, int files[MKV_INDEX_LEVELS]);

/* ---- iteration (one thread per iterator; fill_cache off) ---- */

mkv_index_iter_t *mkv_index_iter_new(mkv_index_t *idx);
void mkv_index_iter_seek(mkv_index_iter_t *it, const char *key, size_t klen);
int mkv_index_iter_valid(mkv_index_iter_t *it);
const char *mkv_index_iter_key(mkv_index_iter_t *it, size_t *len);     /* borrows */
const char *mkv_index_iter_value(mkv_index_iter_t *it, size_t *len);   /* borrows */
void mkv_index_iter_next(mkv_index_iter_t *it);
/* 0, or -1 with *err (owned) when the iteration stopped on an error. */
int mkv_index_iter_error(mkv_index_iter_t *it, char **err);
void mkv_index_iter_free(mkv_index_iter_t *it);

/* ---- backup ---- */

typedef struct mkv_index_backup_progress_s {
  _Atomic unsigned long long keys, bytes; /* copied so far (any thread may read them) */
  _Atomic int cancel;                     /* set to stop the copy */
} mkv_index_backup_progress_t;

/* Copies the index as it is at the call (one LevelDB snapshot) into a new LevelDB at
 * dir -- absent or empty -- written first as <dir>.partial and renamed when complete
 * and flushed (no journal left: the Go original serves it as it is). Blocks; runs on
 * any thread but a loop. 0, or -1 with *err (owned). */
int mkv_index_backup(mkv_index_t *idx, const char *dir, const mkv_config_t *cfg,
                     mkv_index_backup_progress_t *pr, char **err);

/* ---- writes through the writer thread ---- */

typedef void (*mkv_index_write_cb)(mkv_index_write_t *w, int status);

/* Owned by the caller (usually inside its request); must stay valid until the callback.
 * Fields are private but for `data`. */
struct mkv_index_write_s {
  void *data;
  mkv_index_port_t *port;
  mkv_index_write_cb cb;
  int status;
  int is_delete;
  int sync;
  mkv_buf_t key, val;
  mkv_index_write_t *next;
};

void mkv_index_write_init(mkv_index_write_t *w);
void mkv_index_write_free(mkv_index_write_t *w); /* the buffers; not while in flight */

/* Creates a worker's port on its loop. Loop thread only. */
int mkv_index_port_new(mkv_index_t *idx, uv_loop_t *loop, mkv_index_port_t **out);
/* Closes the port's handle; no write may be in flight. */
void mkv_index_port_close(mkv_index_port_t *port);
/* How many writes of this port are in flight. */
int mkv_index_port_pending(mkv_index_port_t *port);

/* Queues a put (val != NULL) or a delete (val == NULL); copies key and value. sync: the
 * write must reach the disk before the callback (the batch is fsynced). Returns 0 and
 * calls cb(w, 0 | MKV_EINDEX) later on the port's loop. */
int mkv_index_put(mkv_index_port_t *port, mkv_index_write_t *w, const char *key, size_t klen,
                  const char *val, size_t vlen, int sync, mkv_index_write_cb cb);
int mkv_index_del(mkv_index_port_t *port, mkv_index_write_t *w, const char *key, size_t klen,
                  int sync, mkv_index_write_cb cb);

/* ---- replication (ha.h) ----
 *
 * A batch travels as its operations, each: u8 kind (1 put, 2 delete), u32 key length,
 * key, then for a put u32 value length and value (lengths big-endian). */

typedef struct mkv_index_hook_s {
  /* Before a batch is committed (writer thread): 0 to commit it, else the status every
   * write of it fails with (this node may not write now). */
  int (*admit)(void *arg);
  /* After a batch is committed (writer thread): ops holds its operations (the hook may
   * take the buffer's memory: it is reset after); sync says it was fsynced. Returns 1
   * when it takes the writes (the list through ->next) and completes them later with
   * mkv_index_complete, 0 when they complete now with status 0. */
  int (*committed)(void *arg, mkv_buf_t *ops, int sync, mkv_index_write_t *writes);
  void *arg;
} mkv_index_hook_t;

/* Sets (or with NULL clears) the hook, before any write is queued. */
void mkv_index_set_hook(mkv_index_t *idx, const mkv_index_hook_t *hook);
/* Completes a list of writes (through ->next) with status, on their ports' loops. */
void mkv_index_complete(mkv_index_write_t *writes, int status);

/* Appends one operation (val NULL: a delete) to an encoded batch. */
void mkv_index_ops_add(mkv_buf_t *ops, const char *key, size_t klen, const char *val,
                       size_t vlen);
/* Walks an encoded batch: 1 with the next operation (val NULL for a delete; borrowed),
 * 0 at its end, -1 when it is malformed. *off starts at 0. */
int mkv_index_ops_next(const char *ops, size_t len, size_t *off, const char **key, size_t *klen,
                       const char **val, size_t *vlen);
/* Writes an encoded batch (a standby's copy of the primary's; synced if asked) on the
 * calling thread (not a loop). 0, or -1 with *err (owned) -- malformed, or LevelDB
 * failed. */
int mkv_index_apply(mkv_index_t *idx, const char *ops, size_t len, int sync, char **err);

/* Synchronous write on the calling thread, for offline commands (index-flush, admin
 * scripts without a server). Never on a loop thread. */
int mkv_index_put_sync(mkv_index_t *idx, const char *key, size_t klen, const char *val,
                       size_t vlen, int sync, char **err);

#endif
