/* listing.c: the body of GET /prefix?list, ?unlinked and ?writing, in bounded slices. api.c
 * parses and checks the request and answers every error; this file walks the index and
 * writes the JSON.
 *
 * A listing over a billion keys must not block the worker: each slice examines at most
 * limits.list_slice records (or about 10 ms), then yields until its bytes have left
 * for the client; each slice opens a fresh iterator and seeks past the last key, so no
 * LevelDB version stays pinned for the whole listing. When the whole answer fits in the
 * first slice it is sent exactly as the Go original sends it, with Content-Length:
 * {"next":"...","keys":[...]}. A longer one is streamed (chunked) as
 * {"keys":[...],"next":"..."} -- the same JSON object, with its fields in the other
 * order since `next` is only known at the end. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mkv/index.h"
#include "mkv/log.h"
#include "mkv/policy.h"
#include "mkv/server.h"
#include "mkv/text.h"

#define SLICE_NS (10u * 1000000u)
/* A listing whose answer stays below this is gathered whole and sent as the Go original
 * sends it (with Content-Length); a larger one is streamed. */
#define GATHER_MAX (64 * 1024)

struct mkv__listing_s {
  mkv_req_t *req;
  const char *op; /* "list" or "unlinked" */
  int unlinked, writing;
  mkv_buf_t resume; /* the key the next slice starts at (inclusive) */
  long long limit, count;
  mkv_buf_t out;  /* JSON not yet sent */
  mkv_buf_t next;
  int streaming, aborted, finished;
  void (*done)(void *data, int err);
  void *data;
};
typedef struct mkv__listing_s listing_t;

static void listing_end(listing_t *l, int err) {
  if (l->finished) return;
  l->finished = 1;
  l->done(l->data, err);
}

void mkv__listing_free(listing_t *l) {
  if (l == NULL) return;
  mkv_buf_free(&l->resume);
  mkv_buf_free(&l->out);
  mkv_buf_free(&l->next);
  free(l);
}

void mkv__listing_abort(listing_t *l) {
  l->aborted = 1;
}

static void slice(listing_t *l);

static void slice_later(void *arg) {
  listing_t *l = arg;
  if (l->aborted) {
    listing_end(l, 0);
    return;
  }
  slice(l);
}

static void on_written(mkv_req_t *req, int ok, void *arg) {
  listing_t *l = arg;
  if (!ok || l->aborted) {
    listing_end(l, 0);
    return;
  }
  slice(l);
}

static void slice(listing_t *l) {
  mkv_req_t *req = l->req;
  mkv_worker_t *w = req->worker;
  const mkv_buf_t *prefix = &req->key;
  int filter = mkv_policy_has_list_filter(w->policy);
  int done = 0, examined = 0, err = 0;
  uint64_t t0 = mkv_now_ns();

  mkv_index_iter_t *it = mkv_index_iter_new(w->index);
  mkv_index_iter_seek(it, l->resume.data, l->resume.len);
  for (;;) {
    if (!mkv_index_iter_valid(it)) {
      done = 1;
      break;
    }
    size_t klen, vlen;
    const char *key = mkv_index_iter_key(it, &klen);
    if (klen < prefix->len || memcmp(key, prefix->data, prefix->len) != 0) {
      done = 1;
      break;
    }
    if (examined >= w->cfg->limits.list_slice ||
        ((examined & 63) == 63 && mkv_now_ns() - t0 > SLICE_NS)) {
      mkv_buf_set(&l->resume, key, klen);
      break;
    }
    examined++;
    const char *val = mkv_index_iter_value(it, &vlen);
    mkv_record_t rec;
    int match;
    if (mkv_record_decode(val, vlen, &rec) != 0) {
      MKV_LOG_RATELIMITED(MKV_LOG_WARN, "listing skipped a corrupt record (key of %zu %s)", klen,
                          MKV_PLURAL(klen, "byte", "bytes"));
      match = 0;
    } else {
      match = l->writing ? rec.writing : l->unlinked ? rec.deleted && !rec.writing : !rec.deleted;
    }
    if (match && filter) {
      int show = 1;
      if ((err = mkv_policy_list_show(w->policy, l->op, key, klen, &show)) != 0) break;
      match = show;
    }
    if (match) {
      if (l->count == l->limit) {
        mkv_buf_set(&l->next, key, klen);
        done = 1;
        break;
      }
      if (l->count > 0) mkv_buf_addc(&l->out, ',');
      mkv_json_string(&l->out, key, klen);
      l->count++;
    }
    mkv_index_iter_next(it);
  }
  char *ierr = NULL;
  if (err == 0 && mkv_index_iter_error(it, &ierr) != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "listing stopped: index read failed: %s", ierr);
    free(ierr);
    err = UV_EIO;
  }
  mkv_index_iter_free(it);

  mkv_header_t h = {"Content-Type", "application/json", 0};
  if (err) {
    if (!l->streaming) {
      listing_end(l, err); /* nothing sent yet: api.c answers */
    } else {
      /* Mid-stream there is no status left to send: end the connection without the
       * closing bytes, so the client sees a truncated body, not a short listing. */
      mkv_req_abort(req);
      listing_end(l, 0);
    }
    return;
  }
  if (done && !l->streaming) {
    mkv_buf_t b;
    mkv_buf_init(&b);
    mkv_buf_adds(&b, "{\"next\":");
    mkv_json_string(&b, l->next.data ? l->next.data : "", l->next.len);
    mkv_buf_adds(&b, ",\"keys\":[");
    mkv_buf_add(&b, l->out.data ? l->out.data : "", l->out.len);
    mkv_buf_adds(&b, "]}");
    mkv_req_respond(req, 200, &h, 1, b.data, b.len);
    mkv_buf_free(&b);
    listing_end(l, 0);
    return;
  }
  /* Not done: let the loop serve others, then go on. Nothing to send yet (a small
   * answer so far, or a slice that matched nothing) means no write to wait for. */
  if ((!l->streaming && l->out.len < GATHER_MAX) || (l->streaming && l->out.len == 0)) {
    mkv_worker_defer(w, slice_later, l);
    return;
  }
  mkv_buf_t b;
  mkv_buf_init(&b);
  if (!l->streaming) {
    mkv_req_stream_start(req, 200, &h, 1);
    l->streaming = 1;
    mkv_buf_adds(&b, "{\"keys\":[");
  }
  mkv_buf_add(&b, l->out.data ? l->out.data : "", l->out.len);
  mkv_buf_reset(&l->out); /* later keys bring their own leading comma (count > 0) */
  if (done) {
    mkv_buf_adds(&b, "],\"next\":");
    mkv_json_string(&b, l->next.data ? l->next.data : "", l->next.len);
    mkv_buf_adds(&b, "}");
    mkv_req_stream_write(req, b.data, b.len, NULL, NULL);
    mkv_req_stream_end(req);
    mkv_buf_free(&b);
    listing_end(l, 0);
    return;
  }
  mkv_req_stream_write(req, b.data, b.len, on_written, l);
  mkv_buf_free(&b);
}

listing_t *mkv__listing_start(mkv_req_t *req, const char *op, long long limit, const char *start,
                              size_t start_len, void (*done)(void *data, int err), void *data) {
  listing_t *l = mkv_calloc(1, sizeof(*l));
  l->req = req;
  l->op = op;
  l->unlinked = strcmp(op, "unlinked") == 0;
  l->writing = strcmp(op, "writing") == 0;
  l->limit = limit;
  l->done = done;
  l->data = data;
  mkv_buf_init(&l->resume);
  mkv_buf_init(&l->out);
  mkv_buf_init(&l->next);
  mkv_buf_set(&l->resume, start, start_len);
  /* The first slice on the next turn: done never runs inside this call. */
  mkv_worker_defer(req->worker, slice_later, l);
  return l;
}
