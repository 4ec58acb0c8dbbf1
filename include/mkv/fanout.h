/* fanout.h: one PUT body streamed to N replica uploads, with backpressure and an
 * incremental MD5.
 *
 * Loop thread only (the worker's). The contract (library-facts §7.5):
 * - mkv_fanout_write() borrows the slice: it is copied once into a reference-counted
 *   chunk of up to 64 KiB shared by every replica upload; small slices (a chunked body's
 *   pieces) are gathered into one chunk, sent when it is full or at mkv_fanout_flush()
 *   (the owner calls it once per read from the client). A chunk's bytes count as in
 *   flight until its last replica has written it, so the slowest replica sets the pace.
 * - Above the high-water mark of bytes in flight, flow(fo, 1) asks the owner to stop
 *   reading the client (uv_read_stop, never the parser); below the low-water mark,
 *   flow(fo, 0) lets it read again.
 * - A write quorum q (1..N): the fan-out succeeds when at least q replicas answered 201
 *   or 204. A replica that fails while q can still be reached is dropped and the others
 *   go on (its chunk references are released, so it no longer sets the pace); once q
 *   cannot be reached the others are cancelled at once (closing their connections makes
 *   nginx drop its temp files; one whose whole body is sent is left to answer).
 * - With opts.replace, a replica whose volume cannot be connected to (refused, no
 *   route: nothing reached it) is replaced by the volume replace() names, before it
 *   counts as failed: until every replica is connected the fan-out keeps the body sent
 *   so far (at most high_water bytes), and the new upload gets all of it.
 * - ready(fo) runs once every replica is connected and its request line sent, or has
 *   failed, as long as q are connected: the owner answers `Expect: 100-continue` only
 *   then, so a dead volume costs no upload.
 * - done(fo, err) runs exactly once, after every replica upload has finished: err 0
 *   when the quorum was reached (mkv_fanout_written says which replicas have the
 *   value); otherwise the first failure. After done the owner may free the fanout;
 *   chunks still in a kernel write keep it alive (delayed free) until they are
 *   released.
 * - A body received chunked is forwarded chunked (nginx accepts it). */
#ifndef MKV_FANOUT_H
#define MKV_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include "mkv/hash.h"
#include "mkv/upstream.h"

typedef struct mkv_fanout_s mkv_fanout_t;
typedef void (*mkv_fanout_done_cb)(mkv_fanout_t *fo, int err);
typedef void (*mkv_fanout_flow_cb)(mkv_fanout_t *fo, int pause);
typedef void (*mkv_fanout_ready_cb)(mkv_fanout_t *fo);
/* A replica's volume (record form, borrowed) could not be connected to: set *vol to the
 * volume that takes its place and return 0, or return -1 for none. */
typedef int (*mkv_fanout_replace_cb)(mkv_fanout_t *fo, const char *failed, mkv_buf_t *vol);

typedef struct mkv_fanout_opts_s {
  const char *volumes; /* record form: "host:port/sv01,host:port/sv02" (borrowed) */
  size_t volumes_len;
  const char *path;    /* the key's file path, "/ab/cd/<base64>" (borrowed) */
  size_t path_len;
  int64_t content_length; /* -1: chunked */
  double timeout_ms;      /* per-replica inactivity timeout */
  size_t high_water, low_water;
  int md5;                /* compute the body's MD5 */
  int quorum;             /* replicas that must succeed; 0 (or > N): every one */
  mkv_fanout_replace_cb replace; /* optional: a replica that could not connect is replaced */
  mkv_fanout_done_cb done;
  mkv_fanout_flow_cb flow;
  mkv_fanout_ready_cb ready;
  void *data;
} mkv_fanout_opts_t;

/* Starts one upload per volume. Returns 0 (done will run) or < 0 (nothing started). */
int mkv_fanout_start(mkv_upstream_t *up, const mkv_fanout_opts_t *opts, mkv_fanout_t **out);
void mkv_fanout_write(mkv_fanout_t *fo, const char *at, size_t len);
/* Sends what mkv_fanout_write() has gathered. */
void mkv_fanout_flush(mkv_fanout_t *fo);
/* The body is complete. */
void mkv_fanout_end(mkv_fanout_t *fo);
/* Cancels every upload; done runs with UV_ECANCELED unless a failure came first. */
void mkv_fanout_abort(mkv_fanout_t *fo);
/* Once done has run. Frees when the last chunk is released. */
void mkv_fanout_free(mkv_fanout_t *fo);

void *mkv_fanout_data(mkv_fanout_t *fo);
int64_t mkv_fanout_bytes(mkv_fanout_t *fo);
size_t mkv_fanout_inflight(mkv_fanout_t *fo);
/* The body's MD5 (after end; only with opts.md5). */
void mkv_fanout_md5(mkv_fanout_t *fo, unsigned char out[MKV_MD5_LEN]);
/* The volumes (record form) whose upload reached a connection, so may have left a file:
 * what a failed PUT must clean up. Replicas that never connected wrote nothing. */
void mkv_fanout_touched(mkv_fanout_t *fo, mkv_buf_t *volumes);
/* After a successful done: the volumes (record form, in target order) that stored the
 * value; returns their count. */
int mkv_fanout_written(mkv_fanout_t *fo, mkv_buf_t *volumes);
/* After done: the volumes whose upload failed after it reached a connection, so may
 * hold a leftover file: what a PUT that reached its quorum still cleans up. */
void mkv_fanout_leftovers(mkv_fanout_t *fo, mkv_buf_t *volumes);
/* Which replica failed first, and how (for the log line): its URL and a reason. */
const char *mkv_fanout_failure(mkv_fanout_t *fo);

#endif
