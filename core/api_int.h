/* api_int.h: what api.c (PUT, DELETE, UNLINK, the entry points and the error mapping)
 * and api_read.c (GET, HEAD, the listings) share: a request's state and a few helpers.
 * Loop thread only. */
#ifndef MKV_API_INT_H
#define MKV_API_INT_H

#include "internal.h"
#include "mkv/api.h"
#include "mkv/fanout.h"
#include "mkv/index.h"
#include "mkv/record.h"
#include "mkv/upstream.h"

#define MAX_PROBES 64

typedef struct api_s {
  mkv_req_t *req;
  int locked, client_gone, body_complete;
  mkv_buf_t recbuf;
  mkv_record_t rec;
  mkv_buf_t placement; /* where placement wants the key, record form */
  int nrep;            /* its replica count */
  mkv_buf_t targets;   /* PUT: where its copies go (placement, or a handoff) */
  int quorum;          /* PUT: copies it needs for its 201 */
  mkv_buf_t written;   /* PUT: the volumes that stored it (the live record's) */
  mkv_buf_t path;

  /* PUT */
  mkv_fanout_t *fo;
  int fo_done, mark_err;
  int index_pending, finishing, released;
  int final_done, final_status, leftovers_pending;
  mkv_index_write_t w_mark, w_final;
  int has_client_md5;
  /* REPLACE of a live key: the old record stays live until the new copies are complete
   * (written beside the old ones, in the other slot: record.h MKV_ALT_SLOT), then one
   * record write switches; the old copies go after a grace, the lock held till then. */
  int replacing;
  mkv_buf_t old_volumes;
  uv_timer_t grace_timer;
  unsigned char client_md5[MKV_MD5_LEN];

  /* DELETE, UNLINK, RELINK waiting for a key an admin job holds (api.c lock_key) */
  uv_timer_t lock_timer;
  uint64_t lock_wait_until;
  void (*lock_again)(mkv_req_t *req);

  /* DELETE of files (a DELETE request, or the cleanup of a failed PUT) */
  mkv_upreq_t *dels;
  int ndels, dels_pending, dels_failed;
  void (*dels_done)(struct api_s *a);

  /* GET with a query: a listing */
  mkv__listing_t *listing;

  /* GET/HEAD probes */
  mkv_upreq_t probe;
  const char *probe_items[MAX_PROBES];
  size_t probe_lens[MAX_PROBES];
  int nprobes, next_probe, probing;
  int balanced;
  int probe_missing;   /* replicas that answered 404 */
  int nmissed_probes;  /* replicas left out: they missed this read already (a bounce) */
  mkv_buf_t missed;    /* the volumes that bounced this read back, comma-joined */
  mkv_buf_t order;     /* the read policy's order of the record's volumes */
} api_t;

/* A key shown in a log line: at most 100 bytes (the logger masks control bytes). */
#define KEYFMT "%.*s%s"
#define KEYARG(req)                                                                      \
  (int)MKV_MIN((req)->key.len, 100), (req)->key.data, (req)->key.len > 100 ? "..." : ""

/* The request's state, made on first use. */
api_t *mkv__api_of(mkv_req_t *req);
/* Answers, unless the request has been answered already. */
void mkv__api_respond_text(mkv_req_t *req, int status, const char *text);
void mkv__api_respond_empty(mkv_req_t *req, int status);
/* Is host:port h in the list s (comma-separated "host:port[/dir]" items, blanks
 * allowed)? */
int mkv__api_in_host_list(const char *s, size_t n, const char *h, size_t hl);
/* A policy failed: counted, logged, 500. */
void mkv__api_policy_failed(mkv_req_t *req);
/* Reads the key's record into a->rec. 0, UV_ENOENT, or an error already answered. */
int mkv__api_load_record(api_t *a);

/* api_read.c: GET and HEAD (a redirect, a listing, a bounced miss). */
void mkv__api_get_start(mkv_req_t *req);

#endif
