/* server_reply.c: request objects and their answers -- references, the status line
 * and headers, whole and streamed bodies, 100-continue, backpressure on the request
 * body, and the writes that carry them (server_int.h says how the server's files fit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/log.h"
#include "mkv/metrics.h"
#include "server_int.h"

typedef struct swrite_s {
  uv_write_t w;
  mkv_conn_t *c;
  mkv_req_t *req;
  mkv_req_write_cb cb;
  void *arg;
  char *buf;
} swrite_t;

static const char *status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 302: return "Found";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 417: return "Expectation Failed";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

static const char *http_date(mkv_server_t *s) {
  time_t now = time(NULL);
  if (now != s->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(s->date, sizeof(s->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    s->date_sec = now;
  }
  return s->date;
}

static int header_value_ok(const char *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') return 0;
  return 1;
}

static void on_write_done(uv_write_t *w, int status) {
  swrite_t *sw = (swrite_t *)w;
  mkv_conn_t *c = sw->c;
  c->writes_pending--;
  if (sw->cb) sw->cb(sw->req, status == 0, sw->arg);
  if (sw->req) mkv_req_unref(sw->req);
  free(sw->buf);
  free(sw);
  if (status < 0 || c->closing) {
    mkv__conn_close(c);
    return;
  }
  if (c->want_close && c->writes_pending == 0) {
    mkv__conn_end(c);
    return;
  }
  if (c->state == S_WAITING) {
    /* A client that stops reading its response must not hold the connection forever:
     * while bytes wait for it, the send timeout runs and restarts on progress. */
    if (c->writes_pending > 0)
      mkv__conn_arm(c, c->server->w->cfg->limits.body_timeout_ms);
    else
      uv_timer_stop(&c->timer);
  }
  if (c->write_blocked &&
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_BUDGET / 2) {
    c->write_blocked = 0;
    mkv__conn_advance(c);
  }
}

/* A write callback that cannot wait for a write (the connection is gone, nothing to
 * send, the write failed to start) still runs on a later loop turn, as the contract
 * says: a producer that writes again from its callback never recurses. */
typedef struct write_cb_s {
  mkv_req_t *req;
  mkv_req_write_cb cb;
  void *arg;
  int ok;
} write_cb_t;

static void run_write_cb(void *arg) {
  write_cb_t *d = arg;
  d->cb(d->req, d->ok, d->arg);
  mkv_req_unref(d->req);
  free(d);
}

static void defer_write_cb(mkv_req_t *req, mkv_req_write_cb cb, void *arg, int ok) {
  if (cb == NULL) return;
  write_cb_t *d = mkv_malloc(sizeof(*d));
  d->req = req;
  d->cb = cb;
  d->arg = arg;
  d->ok = ok;
  mkv_req_ref(req); /* the request outlives the wait */
  mkv_worker_defer(req->worker, run_write_cb, d);
}

/* Queues bytes (takes `buf`, a malloc'd block). */
void mkv__conn_write(mkv_conn_t *c, char *buf, size_t len, mkv_req_t *req,
                       mkv_req_write_cb cb, void *arg) {
  if (c->closing) {
    defer_write_cb(req, cb, arg, 0);
    free(buf);
    return;
  }
  if (c->server->h->public_api) mkv_ctr_add(&c->server->w->metrics->bytes_out, len);
  uv_buf_t b = uv_buf_init(buf, (unsigned)len);
  if (cb == NULL && c->writes_pending == 0 && !c->want_close) {
    /* Most answers fit the socket buffer: written here, they need no write request,
     * and libuv does not re-arm the socket's epoll entry for a finished write (one
     * epoll_ctl per response saved; syscalls dominate the small-request profile). */
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len) {
      free(buf);
      return;
    }
    if (n > 0) {
      b.base += n;
      b.len -= (unsigned)n;
    }
  }
  swrite_t *sw = mkv_calloc(1, sizeof(*sw));
  sw->c = c;
  sw->buf = buf;
  sw->cb = cb;
  sw->arg = arg;
  sw->req = req;
  if (req) mkv_req_ref(req);
  c->writes_pending++;
  if (c->state == S_WAITING && !uv_is_active((uv_handle_t *)&c->timer))
    mkv__conn_arm(c, c->server->w->cfg->limits.body_timeout_ms);
  int rc = uv_write(&sw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
  if (rc < 0) {
    c->writes_pending--;
    defer_write_cb(req, cb, arg, 0);
    if (req) mkv_req_unref(req);
    free(buf);
    free(sw);
    mkv__conn_close(c);
  }
}

/* ---- requests ---- */

void mkv_req_ref(mkv_req_t *req) {
  req->refs++;
}

static int metrics_method(const mkv_req_t *req) {
  switch (req->method) {
  case MKV_M_GET: return req->raw_query.len ? MKV_MX_LIST : MKV_MX_GET;
  case MKV_M_HEAD: return MKV_MX_HEAD;
  case MKV_M_PUT: return MKV_MX_PUT;
  case MKV_M_DELETE: return MKV_MX_DELETE;
  case MKV_M_UNLINK: return MKV_MX_UNLINK;
  case MKV_M_RELINK: return MKV_MX_RELINK;
  case MKV_M_REPLACE: return MKV_MX_REPLACE;
  case MKV_M_REBALANCE: return MKV_MX_REBALANCE;
  default: return MKV_MX_OTHER;
  }
}

/* A request of the public API is over: counted, and logged when there is an access log.
 * A client that left before any answer counts as 499, as nginx logs it. */
static void account(mkv_req_t *req) {
  uint64_t ns = mkv_now_ns() - req->start_ns;
  int status = req->responded ? req->status : 499;
  mkv_metrics_request(req->worker->metrics, metrics_method(req), status, ns);
  if (mkv_access_log_enabled()) /* a request refused before its head was whole: "-" */
    mkv_access_log_write(req->peer, req->method_name, req->target.len ? req->target.data : "-",
                         req->target.len ? req->target.len : 1,
                         req->http_minor, status, req->body_bytes, (double)ns / 1e9);
}

void mkv_req_unref(mkv_req_t *req) {
  if (--req->refs > 0) return;
  if (req->handler && req->handler->public_api) account(req);
  if (req->handler) req->handler->free(req);
  mkv_buf_free(&req->target);
  mkv_buf_free(&req->key);
  mkv_buf_free(&req->raw_query);
  mkv_buf_free(&req->content_md5);
  mkv_buf_free(&req->avoid);
  mkv_buf_free(&req->zone);
  mkv_buf_free(&req->authorization);
  req->worker->live_reqs--;
  free(req);
}

static void build_head(mkv_buf_t *b, mkv_conn_t *c, mkv_req_t *req, int status,
                       const mkv_header_t *h, int nh) {
  mkv_buf_addf(b, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, status_text(status),
               http_date(c->server));
  for (int i = 0; i < nh; i++) {
    size_t vl = h[i].value_len ? h[i].value_len : strlen(h[i].value);
    if (!header_value_ok(h[i].value, vl)) {
      MKV_LOG_RATELIMITED(MKV_LOG_WARN, "dropped response header %s: CR, LF or NUL in its value",
                          h[i].name);
      continue;
    }
    mkv_buf_adds(b, h[i].name);
    mkv_buf_adds(b, ": ");
    mkv_buf_add(b, h[i].value, vl);
    mkv_buf_adds(b, "\r\n");
  }
  if (c->close_after || !c->keepalive || c->server->draining)
    mkv_buf_adds(b, "Connection: close\r\n");
  else if (req->http_minor == 0)
    mkv_buf_adds(b, "Connection: keep-alive\r\n");
}

void mkv_req_respond(mkv_req_t *req, int status, const mkv_header_t *h, int nh,
                     const char *body, size_t len) {
  if (req->responded) {
    mkv_error("bug: second response (%d) to one request", status);
    return;
  }
  req->responded = 1;
  req->status = status;
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing) return;
  /* Answered before the body was read: the rest of the body would be parsed as the next
   * request, so the connection ends here (library-facts §2.3). */
  if (!c->msg_complete && req->has_body) c->close_after = c->linger = 1;
  if (c->server->draining) c->close_after = 1;
  mkv_buf_t b;
  mkv_buf_init(&b);
  build_head(&b, c, req, status, h, nh);
  /* RFC 9110 §8.6: no Content-Length on a 1xx or a 204 (nor a body); on a 304 it would
   * describe the resource, not this answer. */
  if (status == 204 || status == 304 || status < 200) {
    mkv_buf_adds(&b, "\r\n");
    len = 0;
  } else {
    mkv_buf_addf(&b, "Content-Length: %zu\r\n\r\n", len);
  }
  if (req->method != MKV_M_HEAD && len) {
    mkv_buf_add(&b, body, len);
    req->body_bytes += len;
  }
  if (c->close_after) {
    /* Nothing more will be read: the body timer and reading stop; the send timeout
     * (armed by the write below) bounds the rest. */
    c->want_close = 1;
    c->read_done = 1;
    c->state = S_WAITING;
    uv_timer_stop(&c->timer);
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
  }
  mkv__conn_write(c, b.data, b.len, NULL, NULL, NULL);
  c->response_done = 1;
  if (!c->in_execute) mkv__conn_advance(c);
}

void mkv_req_respond_text(mkv_req_t *req, int status, const char *text) {
  mkv_header_t h = {"Content-Type", "text/plain; charset=utf-8", 0};
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_adds(&b, text);
  mkv_buf_addc(&b, '\n');
  mkv_req_respond(req, status, &h, 1, b.data, b.len);
  mkv_buf_free(&b);
}

void mkv_req_stream_start(mkv_req_t *req, int status, const mkv_header_t *h, int nh) {
  req->responded = 1;
  req->status = status;
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing) return;
  if (!c->msg_complete && req->has_body) {
    c->close_after = c->linger = 1;
    c->read_done = 1; /* the body will not be read: stop here */
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
  }
  c->streaming = 1;
  c->stream_chunked = req->http_minor >= 1;
  if (!c->stream_chunked) c->close_after = 1; /* HTTP/1.0: the end of the body is the close */
  mkv_buf_t b;
  mkv_buf_init(&b);
  build_head(&b, c, req, status, h, nh);
  if (c->stream_chunked) mkv_buf_adds(&b, "Transfer-Encoding: chunked\r\n");
  mkv_buf_adds(&b, "\r\n");
  mkv__conn_write(c, b.data, b.len, NULL, NULL, NULL);
}

void mkv_req_stream_write(mkv_req_t *req, const char *p, size_t len, mkv_req_write_cb cb,
                          void *arg) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !c->streaming) {
    defer_write_cb(req, cb, arg, 0);
    return;
  }
  if (len == 0) {
    defer_write_cb(req, cb, arg, 1);
    return;
  }
  req->body_bytes += len;
  mkv_buf_t b;
  mkv_buf_init(&b);
  if (c->stream_chunked) mkv_buf_addf(&b, "%zx\r\n", len);
  mkv_buf_add(&b, p, len);
  if (c->stream_chunked) mkv_buf_adds(&b, "\r\n");
  mkv__conn_write(c, b.data, b.len, req, cb, arg);
}

void mkv_req_stream_end(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !c->streaming) return;
  c->streaming = 0;
  if (c->stream_chunked) mkv__conn_write(c, mkv_strdup("0\r\n\r\n"), 5, NULL, NULL, NULL);
  c->response_done = 1;
  if (c->close_after) c->want_close = 1;
  if (!c->in_execute) mkv__conn_advance(c);
}

void mkv_req_continue(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !req->expect_continue || c->sent_continue || req->responded)
    return;
  c->sent_continue = 1;
  mkv__conn_write(c, mkv_strdup("HTTP/1.1 100 Continue\r\n\r\n"), 25, NULL, NULL, NULL);
}

void mkv_req_pause_body(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing) return;
  c->body_paused = 1;
  c->rate_since_ms = 0; /* the minimum rate's window starts again at the resume */
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  /* Not the client's fault: the volumes are slower. Their own timeouts apply. */
  if (c->state == S_BODY) uv_timer_stop(&c->timer);
}

void mkv_req_resume_body(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !c->body_paused) return;
  c->body_paused = 0;
  if (c->state == S_BODY) {
    mkv__conn_arm(c, c->server->w->cfg->limits.body_timeout_ms);
    mkv__conn_start_reading(c);
  }
}

void mkv_req_abort(mkv_req_t *req) {
  if (req->conn) mkv__conn_close(req->conn);
}
