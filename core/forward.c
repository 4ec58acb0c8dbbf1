/* forward.c: a client's request passed to another index node, and its answer passed
 * back (forward.h), over the worker's upstream client. */
#include "mkv/forward.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mkv/chunk.h"
#include "mkv/log.h"
#include "mkv/text.h"
#include "mkv/upstream.h"
#include "mkv/worker.h"

/* A response body up to this size is passed back whole; a bigger one (a listing) is
 * streamed. */
#define BUFFERED_MAX (64u << 10)
#define MAX_HEADERS 32

typedef struct mkv_forward_s {
  mkv_req_t *req;
  char to[256];
  mkv_upreq_t up;
  int finished, client_gone;
  mkv_buf_t headers;      /* the request's header lines */
  mkv_buf_t resp_headers; /* the answer's */
  mkv_buf_t body;         /* a small answer's body */
  int streaming, writes_pending, reading_paused;
  /* the client's body */
  mkv_chunk_t *cur;
  size_t in_flight, high, low;
  int client_paused;
} mkv_forward_t;

static void send_cur(mkv_forward_t *f);

static void chunk_released(mkv_chunk_t *ch) {
  mkv_forward_t *f = ch->data;
  f->in_flight -= ch->len;
  if (f->client_paused && f->in_flight <= f->low && !f->client_gone) {
    f->client_paused = 0;
    mkv_req_resume_body(f->req);
  }
}

static void send_cur(mkv_forward_t *f) {
  mkv_chunk_t *ch = f->cur;
  if (ch == NULL || ch->len == 0) return;
  f->cur = NULL;
  f->in_flight += ch->len;
  if (mkv_upreq_write(&f->up, ch) != 0) return; /* failed: done says so */
  if (f->in_flight > f->high && !f->client_paused) {
    f->client_paused = 1;
    mkv_req_pause_body(f->req);
  }
}

static void fw_body(mkv_req_t *req, const char *at, size_t len) {
  mkv_forward_t *f = req->data;
  if (f->up.method != MKV_UP_PUT) return; /* a body on a DELETE is not passed on */
  while (len > 0) {
    if (f->cur == NULL) f->cur = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, chunk_released, f);
    size_t n = MKV_MIN(len, f->cur->cap - f->cur->len);
    memcpy(f->cur->bytes + f->cur->len, at, n);
    f->cur->len += n;
    at += n;
    len -= n;
    if (f->cur->len == f->cur->cap) send_cur(f);
  }
}

static void fw_flush(mkv_req_t *req) {
  send_cur(req->data);
}

static void fw_complete(mkv_req_t *req) {
  mkv_forward_t *f = req->data;
  send_cur(f);
  if (f->up.method == MKV_UP_PUT) mkv_upreq_end(&f->up);
}

/* ---- the answer ---- */

static int hop_by_hop(const char *name, size_t n) {
  static const char *const skip[] = {"connection", "keep-alive", "transfer-encoding",
                                     "content-length", "date", "server", "upgrade", "te",
                                     "trailer", "proxy-connection"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(skip); i++)
    if (strlen(skip[i]) == n && strncasecmp(name, skip[i], n) == 0) return 1;
  return 0;
}

/* The answer's header lines as mkv_header_t (pointing into resp_headers, cut with NULs),
 * without the hop-by-hop ones the server sets itself. */
static int parse_headers(mkv_forward_t *f, mkv_header_t *h) {
  int n = 0;
  char *p = f->resp_headers.data;
  char *end = p ? p + f->resp_headers.len : NULL;
  while (p && p < end && n < MAX_HEADERS) {
    char *eol = strstr(p, "\r\n");
    if (eol == NULL) break;
    *eol = '\0';
    char *colon = strchr(p, ':');
    if (colon && !hop_by_hop(p, (size_t)(colon - p))) {
      *colon = '\0';
      char *v = colon + 1;
      while (*v == ' ' || *v == '\t') v++;
      h[n++] = (mkv_header_t){p, v, strlen(v)};
    }
    p = eol + 2;
  }
  return n;
}

static void on_stream_written(mkv_req_t *req, int ok, void *arg) {
  (void)req;
  (void)ok;
  mkv_forward_t *f = arg;
  f->writes_pending--;
  if (f->reading_paused && f->writes_pending < 2 && !f->finished) {
    f->reading_paused = 0;
    mkv_upreq_resume(&f->up);
  }
}

static void on_answer_headers(mkv_upreq_t *up) {
  mkv_forward_t *f = up->data;
  int small = up->method == MKV_UP_HEAD ||
              (up->resp_length >= 0 && up->resp_length <= (int64_t)BUFFERED_MAX);
  if (small || f->client_gone) return;
  mkv_header_t h[MAX_HEADERS];
  int nh = parse_headers(f, h);
  f->streaming = 1;
  mkv_req_stream_start(f->req, up->status, h, nh);
}

static int on_answer_body(mkv_upreq_t *up, const char *at, size_t len) {
  mkv_forward_t *f = up->data;
  if (f->client_gone) return 0;
  if (!f->streaming) {
    mkv_buf_add(&f->body, at, len);
    return 0;
  }
  f->writes_pending++;
  mkv_req_stream_write(f->req, at, len, on_stream_written, f);
  if (f->writes_pending >= 8) {
    f->reading_paused = 1;
    return 1;
  }
  return 0;
}

static void on_done(mkv_upreq_t *up, int err) {
  mkv_forward_t *f = up->data;
  mkv_req_t *req = f->req;
  f->finished = 1;
  if (f->cur) {
    mkv_chunk_free(f->cur);
    f->cur = NULL;
  }
  if (!f->client_gone) {
    if (err == 0 && !f->streaming) {
      mkv_header_t h[MAX_HEADERS];
      int nh = parse_headers(f, h);
      mkv_req_respond(req, up->status, h, nh, f->body.data, f->body.len);
    } else if (err == 0) {
      mkv_req_stream_end(req);
    } else if (!req->responded) {
      char why[400];
      snprintf(why, sizeof(why), "the primary index node %s did not answer (%s): retry", f->to,
               mkv_strerror(err));
      MKV_LOG_RATELIMITED(MKV_LOG_WARN, "forwarding %s: %s", req->method_name, why);
      mkv_req_respond_text(req, 503, why);
    } else {
      mkv_req_abort(req); /* a truncated answer must look truncated */
    }
  }
  mkv_req_unref(req);
}

static void forward_free(mkv_forward_t *f) {
  if (f->cur) mkv_chunk_free(f->cur);
  mkv_upreq_free(&f->up);
  mkv_buf_free(&f->headers);
  mkv_buf_free(&f->resp_headers);
  mkv_buf_free(&f->body);
  free(f);
}

static void fw_abort(mkv_req_t *req) {
  mkv_forward_t *f = req->data;
  f->client_gone = 1;
  if (!f->finished) mkv_upreq_cancel(&f->up);
}

static void fw_free(mkv_req_t *req) {
  forward_free(req->data);
  req->data = NULL;
}

/* Counted in /metrics and the access log as the API's own requests. */
static const mkv_handler_t forward_handler = {NULL, fw_body, fw_flush, fw_complete, fw_abort,
                                              fw_free, 1};

/* ---- start ---- */

int mkv_forward_start(mkv_req_t *req, const char *to, const char *self) {
  mkv_worker_t *w = req->worker;
  mkv_forward_t *f = mkv_calloc(1, sizeof(*f));
  f->req = req;
  snprintf(f->to, sizeof(f->to), "%s", to);
  mkv_buf_init(&f->headers);
  mkv_buf_init(&f->resp_headers);
  mkv_buf_init(&f->body);
  f->high = w->cfg->limits.high_water;
  f->low = w->cfg->limits.low_water;
  mkv_upreq_init(&f->up);
  mkv_upreq_t *up = &f->up;
  up->data = f;
  switch (req->method) {
  case MKV_M_GET: up->method = MKV_UP_GET; break;
  case MKV_M_HEAD: up->method = MKV_UP_HEAD; break;
  case MKV_M_PUT: up->method = MKV_UP_PUT; break;
  case MKV_M_REPLACE:
    up->method = MKV_UP_PUT;
    up->method_token = req->method_name;
    break;
  default: /* DELETE, UNLINK, RELINK, REBALANCE */
    up->method = MKV_UP_DELETE;
    up->method_token = req->method_name;
    break;
  }
  mkv_buf_set(&up->host, to, strlen(to));
  mkv_pct_encode_path(&up->path, req->key.data, req->key.len);
  if (req->raw_query.len) {
    mkv_buf_addc(&up->path, '?');
    mkv_buf_add(&up->path, req->raw_query.data, req->raw_query.len);
  }
  mkv_buf_addf(&f->headers, "%s: %s\r\n", MKV_FORWARDED_HEADER, self);
  if (req->has_content_md5) {
    mkv_buf_adds(&f->headers, "Content-MD5: ");
    mkv_buf_add(&f->headers, req->content_md5.data, req->content_md5.len);
    mkv_buf_adds(&f->headers, "\r\n");
  }
  const struct {
    const char *name;
    const mkv_buf_t *v;
  } pass[] = {{"Authorization", &req->authorization},
              {"X-Mkv-Client-Zone", &req->zone},
              {"X-Mkv-Avoid-Volume", &req->avoid}};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(pass); i++) {
    if (pass[i].v->len == 0) continue;
    mkv_buf_addf(&f->headers, "%s: ", pass[i].name);
    mkv_buf_add(&f->headers, pass[i].v->data, pass[i].v->len);
    mkv_buf_adds(&f->headers, "\r\n");
  }
  up->headers = f->headers.data;
  up->resp_headers = &f->resp_headers;
  up->body_any_status = 1;
  up->index_node = 1;
  up->on_headers = on_answer_headers;
  up->on_body = on_answer_body;
  up->done = on_done;
  up->content_length = req->chunked ? -1 : (req->content_length > 0 ? req->content_length : 0);
  /* The other node's own work (volume writes, deletes) takes what it takes: the bound is
   * on silence, as for a client's body. */
  up->timeout_ms = w->cfg->limits.body_timeout_ms;
  up->inactivity = 1;
  mkv_req_ref(req);
  if (mkv_upstream_start(w->up, up) < 0) {
    mkv_req_unref(req);
    char why[400];
    snprintf(why, sizeof(why), "cannot reach the primary index node %s: retry", to);
    mkv_req_respond_text(req, 503, why);
    forward_free(f);
    return -1;
  }
  req->data = f;
  req->handler = &forward_handler;
  if (req->expect_continue) mkv_req_continue(req);
  return 0;
}
