/* upstream.h: the async HTTP/1.1 client that talks to volumes (nginx WebDAV).
 *
 * One mkv_upstream_t per worker loop, used only from that loop's thread. It keeps a
 * keep-alive pool per volume ("host:port"), resolves names once (every address is
 * tried in turn: `localhost` is ::1 and 127.0.0.1), and remembers which volumes failed
 * recently ("suspect") so readers try them last.
 *
 * A request (mkv_upreq_t) is owned by the caller and lent to the upstream from
 * mkv_upstream_start() until its done callback: a start that returns < 0 never calls
 * back; one that returns 0 calls done exactly once -- also on cancel (UV_ECANCELED) --
 * and never before mkv_upstream_start() has returned. After done, the upstream never
 * touches the request again, so done may free it.
 *
 * Bodies: a PUT streams its body as reference-counted chunks (mkv_chunk_t). Each
 * mkv_upreq_write() takes one reference and drops it when the kernel has the bytes (or
 * the request failed), so the owner of a chunk learns when its last replica is done with
 * it. A GET's response body is handed to on_body as borrowed slices.
 *
 * Connections are reused only after a clean response whose request was fully sent; a
 * pooled connection is checked with recv(MSG_PEEK) before reuse, and a HEAD, GET or
 * DELETE that fails on a reused connection before any response byte is retried once on a
 * fresh one. A PUT is never retried. Timeouts: HEAD/GET/DELETE have a deadline for the
 * whole exchange (unless `inactivity` is set); a PUT fails when it owes the volume bytes
 * or awaits its answer and nothing moves for timeout_ms. */
#ifndef MKV_UPSTREAM_H
#define MKV_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mkv/chunk.h"
#include "mkv/common.h"

typedef struct mkv_upstream_s mkv_upstream_t;
typedef struct mkv_upreq_s mkv_upreq_t;

/* ---- requests ---- */

typedef enum { MKV_UP_HEAD, MKV_UP_GET, MKV_UP_PUT, MKV_UP_DELETE } mkv_up_method_t;

/* Every request to a volume carries User-Agent: mkv/1 (deploy/nginx-volume.conf answers
 * mkv's own reads of a missing file 404, and a client's with a bounce back to mkv). */
#define MKV_UPSTREAM_AGENT "mkv/1"

/* err is 0 when a response arrived (status holds it), else a UV_E* / MKV_E* code. */
typedef void (*mkv_upreq_done_cb)(mkv_upreq_t *req, int err);
/* A PUT's connection is up and its request line is sent: body writes will flow. */
typedef void (*mkv_upreq_ready_cb)(mkv_upreq_t *req);
/* A slice of a GET's response body (borrowed). Return nonzero to stop reading until
 * mkv_upreq_resume(). */
typedef int (*mkv_upreq_body_cb)(mkv_upreq_t *req, const char *at, size_t len);
/* The response's status and length are known (status, resp_length); its body follows. */
typedef void (*mkv_upreq_headers_cb)(mkv_upreq_t *req);

typedef struct upconn_s upconn_t;

struct mkv_upreq_s {
  /* Set by the caller before start. */
  void *data;
  mkv_up_method_t method;
  mkv_buf_t host; /* "host:port" */
  mkv_buf_t path; /* "/sv01/ab/cd/<base64>", as sent */
  int64_t content_length; /* PUT: the body's length, or -1 to send it chunked */
  double timeout_ms;
  int inactivity; /* GET: timeout_ms bounds a stall, not the whole exchange (a long
                     streamed body); paused reading does not count as a stall */
  mkv_upreq_done_cb done;
  mkv_upreq_ready_cb ready;  /* optional (PUT) */
  int hold_head;  /* PUT: send the request head with the first body bytes, not before
                     (not with a ready callback that waits for the head to go out) */
  mkv_upreq_body_cb on_body; /* optional (GET) */
  mkv_upreq_headers_cb on_headers; /* optional */
  /* Forwarding a client's request to another index node (forward.c): */
  const char *method_token; /* sent instead of the method's name ("UNLINK"); the method
                               still says how the request goes (PUT: a body) */
  const char *headers;      /* header lines ("Name: value\r\n"...) for this request */
  mkv_buf_t *resp_headers;  /* when set, the response's header lines are appended */
  int body_any_status;      /* on_body for every status, not only 2xx */
  int index_node;           /* the host is an index node, not a volume (logs, metrics) */

  /* Results, valid in done. */
  int status;                /* HTTP status, 0 without a response */
  int64_t resp_length;       /* Content-Length of the response, -1 if none */
  int touched;               /* the request went out on a connection: the volume may
                                have acted on it (a PUT may have left a file) */
  uint64_t elapsed_ns;

  /* Private. */
  mkv_upstream_t *up;
  struct pool_s *pool;
  upconn_t *conn;
  mkv_upreq_t *next_wait; /* in the pool's list while its name resolves */
  mkv_upreq_t *next_defer;
  struct pending_chunk_s *pending_head, *pending_tail; /* body queued before ready */
  uint64_t started_ns;
  int deferred_err;
  int deferred; /* its completion is queued (defer_done), whichever list holds it */
  int retried, active, body_ended, body_end_sent, is_ready, failed_early;
  int64_t body_queued;
};

void mkv_upreq_init(mkv_upreq_t *req);
void mkv_upreq_free(mkv_upreq_t *req); /* the buffers; not while started */

mkv_upstream_t *mkv_upstream_new(uv_loop_t *loop, double suspect_ms);
/* Closes idle connections and frees the upstream once its handles are closed. No
 * request may be in flight. */
void mkv_upstream_close(mkv_upstream_t *up);

/* Header lines ("Name: value\r\n"...) added to every request from now on, or NULL:
 * the volume key (auth.h). Lends: the caller keeps `lines` valid while it is set. */
void mkv_upstream_set_headers(mkv_upstream_t *up, const char *lines);

int mkv_upstream_start(mkv_upstream_t *up, mkv_upreq_t *req);
/* Takes a reference of ch (dropped when written or on failure). PUT only. Returns 0, or
 * < 0 if the request has already failed (the reference is dropped then, too). */
int mkv_upreq_write(mkv_upreq_t *req, mkv_chunk_t *ch);
/* The body is complete (sends the last chunk of a chunked body). */
void mkv_upreq_end(mkv_upreq_t *req);
/* Aborts: the connection is closed and done runs with UV_ECANCELED (later). Safe to call
 * on a request that is not started or already done: then it does nothing. */
void mkv_upreq_cancel(mkv_upreq_t *req);
/* A PUT whose whole body is handed to its connection: the volume may store it whatever
 * mkv does now (closing the socket after the last byte does not stop nginx), so a
 * cancel would not undo the write, only hide when it lands. 0 before that, and for a
 * request not started, done, or not a PUT. */
int mkv_upreq_body_sent(const mkv_upreq_t *req);
void mkv_upreq_resume(mkv_upreq_t *req);

/* Volume health, remembered per worker: a volume whose request timed out or could not
 * connect is suspect for suspect_ms. */
int mkv_upstream_suspect(mkv_upstream_t *up, const char *host, size_t hostlen);

/* Per-volume counters, for metrics: calls fn for each pool. */
typedef struct mkv_upstream_stats_s {
  const char *host;
  unsigned long long requests, errors, timeouts;
  unsigned long long latency_ns_sum;
  int idle, active;
  int suspect;
} mkv_upstream_stats_t;
void mkv_upstream_foreach_stats(mkv_upstream_t *up,
                                void (*fn)(const mkv_upstream_stats_t *st, void *arg),
                                void *arg);

#endif
