/* server.c: accept, parse (llhttp, strict), enforce limits, respond, keep-alive.
 *
 * One exchange at a time per connection. The parser pauses in exactly one place,
 * on_message_complete, which serialises pipelined requests: the unparsed rest of the
 * read is kept in the connection and replayed once the response is out. Backpressure
 * on a request body stops the socket (uv_read_stop), never the parser; the read
 * buffer is one per worker, since parsing consumes it before the next read. */
#include "mkv/server.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>

#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/text.h"
#include "mkv/worker.h"

enum { S_IDLE, S_HEADERS, S_BODY, S_WAITING, S_LINGER };

/* Lingering close: a connection answered before its request was read whole (a 403 to a
 * PUT whose body is still coming, a 413, a 431) is not closed at once -- the client's
 * unread bytes would turn the close into a reset that can destroy the answer before the
 * client (nginx in front, say) reads it, and it would report a 502. Instead mkv sends
 * FIN after the answer and reads and drops what still comes, until the client closes,
 * pauses LINGER_IDLE_MS, or LINGER_MAX_MS have passed. */
#define LINGER_IDLE_MS 1000
#define LINGER_MAX_MS 5000

/* Response bytes libuv may hold for a client that does not read them before mkv stops
 * parsing its pipelined requests (the kernel's socket buffer comes on top). */
#define WRITE_BUDGET (256 * 1024)

/* Pipelined bytes read while a request is being answered, before the read stops. */
#define PIPELINE_BUFFER (64 * 1024)

struct mkv_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  mkv_server_t *server;
  mkv_conn_t *prev, *next;
  llhttp_t parser;
  mkv_req_t *req;
  int state;

  mkv_buf_t url;
  mkv_buf_t hfield, hvalue;
  size_t header_bytes;
  int value_seen;      /* the current header value already had a span */
  int carry_lf_ws;     /* the previous read ended with LF + only SP/HT */
  const char *cur_buf; /* the buffer llhttp is executing (for the obs-fold check) */

  mkv_buf_t tail, feeding; /* pipelined bytes not yet parsed */
  int in_execute;
  int stop;          /* a callback answered an error: ignore llhttp's error code */
  int api_engaged;   /* mkv_api_headers was called for the current request */
  int msg_complete, response_done, keepalive;
  int close_after, closing, want_close;
  int reading, body_paused, read_done, write_blocked;
  int eof_seen; /* the client's EOF came behind pipelined bytes not yet parsed */
  int writes_pending, closed_handles;
  int streaming, stream_chunked, sent_continue;
  int linger;              /* closing while the client may still be sending: linger */
  uint64_t linger_until_ns;
  uv_shutdown_t shutdown_req;
  char peer[48]; /* the client's address, for the access log */
};

struct mkv_server_s {
  mkv_worker_t *w;
  const mkv_handler_t *h;
  uv_tcp_t listener;
  int listening;
  /* Out of fds (EMFILE): reserve_fd is given up to accept and close the waiting
   * connections; when even that fails, accepting pauses (the listener is closed, and
   * reopened from listen_spare by accept_timer), since libuv would retry accept() at
   * once, forever, in one loop turn. */
  int reserve_fd, listen_spare, accept_paused, closing;
  uv_timer_t accept_timer;
  mkv_conn_t *conns;
  int nconns;
  int draining;
  uv_timer_t drain_timer;
  void (*drain_done)(mkv_server_t *s);
  char date[40];
  time_t date_sec;
};

typedef struct swrite_s {
  uv_write_t w;
  mkv_conn_t *c;
  mkv_req_t *req;
  mkv_req_write_cb cb;
  void *arg;
  char *buf;
} swrite_t;

static llhttp_settings_t req_settings;
static _Thread_local char worker_readbuf[65536];

static void conn_close(mkv_conn_t *c);
static void conn_end(mkv_conn_t *c);
static void conn_advance(mkv_conn_t *c);
static void conn_execute(mkv_conn_t *c, const char *data, size_t len);

/* ---- helpers ---- */

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

static void on_timer(uv_timer_t *t);

static void arm(mkv_conn_t *c, double ms) {
  uv_timer_start(&c->timer, on_timer, ms < 1 ? 1 : (uint64_t)ms, 0);
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
    conn_close(c);
    return;
  }
  if (c->want_close && c->writes_pending == 0) {
    conn_end(c);
    return;
  }
  if (c->state == S_WAITING) {
    /* A client that stops reading its response must not hold the connection forever:
     * while bytes wait for it, the send timeout runs and restarts on progress. */
    if (c->writes_pending > 0)
      arm(c, c->server->w->cfg->limits.body_timeout_ms);
    else
      uv_timer_stop(&c->timer);
  }
  if (c->write_blocked &&
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_BUDGET / 2) {
    c->write_blocked = 0;
    conn_advance(c);
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
static void conn_write(mkv_conn_t *c, char *buf, size_t len, mkv_req_t *req,
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
    arm(c, c->server->w->cfg->limits.body_timeout_ms);
  int rc = uv_write(&sw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
  if (rc < 0) {
    c->writes_pending--;
    defer_write_cb(req, cb, arg, 0);
    if (req) mkv_req_unref(req);
    free(buf);
    free(sw);
    conn_close(c);
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
  mkv_buf_addf(&b, "Content-Length: %zu\r\n\r\n", len);
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
  conn_write(c, b.data, b.len, NULL, NULL, NULL);
  c->response_done = 1;
  if (!c->in_execute) conn_advance(c);
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
  conn_write(c, b.data, b.len, NULL, NULL, NULL);
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
  conn_write(c, b.data, b.len, req, cb, arg);
}

void mkv_req_stream_end(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !c->streaming) return;
  c->streaming = 0;
  if (c->stream_chunked) conn_write(c, mkv_strdup("0\r\n\r\n"), 5, NULL, NULL, NULL);
  c->response_done = 1;
  if (c->close_after) c->want_close = 1;
  if (!c->in_execute) conn_advance(c);
}

void mkv_req_continue(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing || !req->expect_continue || c->sent_continue || req->responded)
    return;
  c->sent_continue = 1;
  conn_write(c, mkv_strdup("HTTP/1.1 100 Continue\r\n\r\n"), 25, NULL, NULL, NULL);
}

static void start_reading(mkv_conn_t *c);

void mkv_req_pause_body(mkv_req_t *req) {
  mkv_conn_t *c = req->conn;
  if (c == NULL || c->closing) return;
  c->body_paused = 1;
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
    arm(c, c->server->w->cfg->limits.body_timeout_ms);
    start_reading(c);
  }
}

void mkv_req_abort(mkv_req_t *req) {
  if (req->conn) conn_close(req->conn);
}

/* ---- errors the server answers itself ---- */

/* Answers an error for the request being parsed and ends the connection after it. */
static int s_public_api(const mkv_conn_t *c) {
  return c->server->h->public_api;
}

static int conn_reject(mkv_conn_t *c, int status, const char *why) {
  mkv_req_t *req = c->req;
  c->stop = 1;
  c->close_after = 1;
  if (!c->msg_complete) c->linger = 1;
  MKV_LOG_RATELIMITED(MKV_LOG_INFO, "rejected a request with %d: %s", status, why);
  if (req == NULL || req->responded) {
    c->want_close = 1;
    if (c->writes_pending == 0) conn_end(c);
    return -1;
  }
  /* for the access log: as much of the target as was read (a 414's is cut short) */
  if (req->target.len == 0 && c->url.len && s_public_api(c) && mkv_access_log_enabled())
    mkv_buf_set(&req->target, c->url.data, MKV_MIN(c->url.len, 1024));
  char body[256];
  int n = snprintf(body, sizeof(body), "%s\n", why);
  mkv_header_t h[2] = {{"Content-Type", "text/plain; charset=utf-8", 0},
                       {"Allow", "GET, HEAD, PUT, DELETE, UNLINK", 0}};
  int was = c->in_execute;
  c->in_execute = 1;
  mkv_req_respond(req, status, h, status == 405 ? 2 : 1, body, (size_t)n);
  c->in_execute = was;
  return -1;
}

/* ---- llhttp callbacks ---- */

static int on_message_begin(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_server_t *s = c->server;
  mkv_req_t *req = mkv_calloc(1, sizeof(*req));
  req->worker = s->w;
  req->handler = s->h;
  s->w->live_reqs++;
  req->conn = c;
  req->refs = 1;
  req->content_length = -1;
  req->start_ns = mkv_now_ns();
  mkv_buf_init(&req->key);
  mkv_buf_init(&req->raw_query);
  mkv_buf_init(&req->content_md5);
  mkv_buf_init(&req->avoid);
  mkv_buf_init(&req->authorization);
  mkv_buf_init(&req->target);
  memcpy(req->peer, c->peer, sizeof(req->peer));
  c->req = req;
  c->state = S_HEADERS;
  c->api_engaged = c->msg_complete = c->response_done = 0;
  c->sent_continue = c->streaming = 0;
  c->body_paused = 0;
  c->header_bytes = 0;
  c->value_seen = 0;
  mkv_buf_reset(&c->url);
  mkv_buf_reset(&c->hfield);
  mkv_buf_reset(&c->hvalue);
  /* The whole head must arrive within header_timeout (slowloris). */
  arm(c, s->w->cfg->limits.header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (c->url.len + len > c->server->w->cfg->limits.url_bytes)
    return conn_reject(c, 414, "request target too long");
  mkv_buf_add(&c->url, at, len);
  return 0;
}

static int count_header_bytes(mkv_conn_t *c, size_t len) {
  c->header_bytes += len;
  if (c->header_bytes > c->server->w->cfg->limits.header_bytes)
    return conn_reject(c, 431, "request headers too large");
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (count_header_bytes(c, len + 4)) return -1;
  if (c->hfield.len < 64) mkv_buf_add(&c->hfield, at, MKV_MIN(len, 64));
  return 0;
}

/* obs-fold: llhttp accepts a header line that starts with SP or HT as a continuation
 * of the previous value, which is how CVE-2024-27982 smuggled a second request. It
 * shows up as a value span preceded (across whitespace) by a line feed. */
static int is_fold(mkv_conn_t *c, const char *at) {
  const char *q = at;
  while (q > c->cur_buf && (q[-1] == ' ' || q[-1] == '\t')) q--;
  if (q > c->cur_buf) return q[-1] == '\n';
  return c->carry_lf_ws;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (count_header_bytes(c, len)) return -1;
  if (is_fold(c, at)) return conn_reject(c, 400, "obs-fold (a header line starting with whitespace)");
  c->value_seen = 1;
  if (c->hvalue.len + len <= 256) mkv_buf_add(&c->hvalue, at, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  if (c->state != S_HEADERS) { /* a chunked body's trailer: counted, never acted on */
    mkv_buf_reset(&c->hfield);
    mkv_buf_reset(&c->hvalue);
    return 0;
  }
  if (c->hfield.len == 11 && strncasecmp(c->hfield.data, "content-md5", 11) == 0) {
    mkv_buf_set(&req->content_md5, c->hvalue.data, c->hvalue.len);
    req->has_content_md5 = 1;
  } else if (c->hfield.len == 18 && strncasecmp(c->hfield.data, "x-mkv-avoid-volume", 18) == 0) {
    if (req->avoid.len) mkv_buf_addc(&req->avoid, ',');
    mkv_buf_add(&req->avoid, c->hvalue.data, c->hvalue.len);
  } else if (c->hfield.len == 13 && strncasecmp(c->hfield.data, "authorization", 13) == 0) {
    mkv_buf_set(&req->authorization, c->hvalue.data, c->hvalue.len);
  } else if (c->hfield.len == 6 && strncasecmp(c->hfield.data, "expect", 6) == 0) {
    if (c->hvalue.len == 12 && strncasecmp(c->hvalue.data, "100-continue", 12) == 0)
      req->expect_continue = 1;
    else
      return conn_reject(c, 417, "unsupported Expect");
  }
  mkv_buf_reset(&c->hfield);
  mkv_buf_reset(&c->hvalue);
  c->value_seen = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  const mkv_config_t *cfg = c->server->w->cfg;
  /* llhttp reports an upgrade only after the whole message, too late to keep the API
   * from acting on it: refuse it here, before anything happens. */
  if (p->upgrade) return conn_reject(c, 400, "Upgrade and CONNECT are not supported");
  if (p->http_major != 1 || p->http_minor > 1)
    return conn_reject(c, p->http_major == 0 ? 400 : 505,
                       p->http_major == 0 ? "HTTP/0.9 is not supported" : "only HTTP/1.x");
  req->http_minor = p->http_minor;
  c->keepalive = llhttp_should_keep_alive(p);
  switch (p->method) {
  case HTTP_GET: req->method = MKV_M_GET, req->method_name = "GET"; break;
  case HTTP_HEAD: req->method = MKV_M_HEAD, req->method_name = "HEAD"; break;
  case HTTP_PUT: req->method = MKV_M_PUT, req->method_name = "PUT"; break;
  case HTTP_DELETE: req->method = MKV_M_DELETE, req->method_name = "DELETE"; break;
  case HTTP_UNLINK: req->method = MKV_M_UNLINK, req->method_name = "UNLINK"; break;
  case HTTP_POST: req->method = MKV_M_POST, req->method_name = "POST"; break;
  default: return conn_reject(c, 405, "method not allowed");
  }
  /* Origin-form only: the key is the path, and an absolute-form target would let a
   * client name another host (testing-reliability §0 finding 4). */
  if (c->url.len == 0 || c->url.data[0] != '/')
    return conn_reject(c, 400, "the request target must start with '/'");
  const char *q = memchr(c->url.data, '?', c->url.len);
  size_t plen = q ? (size_t)(q - c->url.data) : c->url.len;
  const char *hash = memchr(c->url.data, '#', plen);
  if (hash) return conn_reject(c, 400, "fragment in the request target");
  if (mkv_pct_decode(c->url.data, plen, &req->key) != 0)
    return conn_reject(c, 400, "malformed percent-escape in the path");
  if (q) mkv_buf_set(&req->raw_query, q + 1, c->url.len - plen - 1);

  if (p->flags & F_CHUNKED) {
    req->chunked = 1;
    req->has_body = 1;
  } else if (p->flags & F_CONTENT_LENGTH) {
    req->content_length = (int64_t)p->content_length;
    req->has_body = req->content_length > 0;
  }
  if (s_public_api(c) && mkv_access_log_enabled())
    mkv_buf_set(&req->target, c->url.data, c->url.len);
  if (cfg->verbose)
    mkv_info("%s %s %lld", req->method_name, c->url.data,
             (long long)(req->chunked ? -1 : req->content_length));
  c->state = req->has_body ? S_BODY : S_WAITING;
  if (req->has_body)
    arm(c, cfg->limits.body_timeout_ms);
  else
    uv_timer_stop(&c->timer);
  c->api_engaged = 1;
  req->handler->headers(req);
  if (c->closing) return -1;
  if (req->responded && req->has_body && c->close_after) {
    /* Early answer to a bodied request: the body is never read. */
    c->stop = 1;
    return -1;
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  if (c->server->h->public_api) mkv_ctr_add(&c->server->w->metrics->bytes_in, len);
  if (!req->responded || c->streaming) req->handler->body(req, at, len);
  return c->closing ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  c->msg_complete = 1;
  c->state = S_WAITING;
  uv_timer_stop(&c->timer);
  c->req->handler->complete(c->req);
  if (c->closing) return -1;
  /* The one pause: pipelined requests wait until this one is answered. */
  return HPE_PAUSED;
}

/* ---- connection lifecycle ---- */

static void on_conn_closed(uv_handle_t *h) {
  mkv_conn_t *c = h->data;
  if (++c->closed_handles < 2) return;
  mkv_server_t *s = c->server;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  mkv_buf_free(&c->url);
  mkv_buf_free(&c->hfield);
  mkv_buf_free(&c->hvalue);
  mkv_buf_free(&c->tail);
  mkv_buf_free(&c->feeding);
  free(c);
  if (s->draining && s->nconns == 0 && s->drain_done) {
    uv_timer_stop(&s->drain_timer);
    void (*done)(mkv_server_t *) = s->drain_done;
    s->drain_done = NULL;
    done(s);
  }
}

static void conn_detach_req(mkv_conn_t *c) {
  mkv_req_t *req = c->req;
  c->req = NULL;
  if (req) {
    req->conn = NULL;
    /* The client is gone before the exchange ended: the API cleans up on its own. */
    if (c->api_engaged && !(c->msg_complete && c->response_done)) req->handler->abort(req);
    mkv_req_unref(req);
  }
}

static void conn_close(mkv_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  conn_detach_req(c);
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void linger_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void on_linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mkv_conn_t *c = s->data;
  (void)buf;
  if (c->closing) return;
  if (nread < 0 || mkv_now_ns() > c->linger_until_ns) { /* the client closed, or enough */
    conn_close(c);
    return;
  }
  if (nread > 0) arm(c, LINGER_IDLE_MS);
}

static void on_shutdown(uv_shutdown_t *r, int status) {
  mkv_conn_t *c = r->data;
  if (status < 0 && !c->closing) conn_close(c);
}

/* The end of a connection whose last answer is out: a lingering close when the client
 * may still be sending (see LINGER_MAX_MS), else a plain one. */
static void conn_end(mkv_conn_t *c) {
  if (c->closing || c->state == S_LINGER) return;
  if (!c->linger || c->server->draining) {
    conn_close(c);
    return;
  }
  conn_detach_req(c);
  c->state = S_LINGER;
  c->linger_until_ns = mkv_now_ns() + (uint64_t)LINGER_MAX_MS * 1000000u;
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
  if (uv_read_start((uv_stream_t *)&c->tcp, linger_alloc, on_linger_read) != 0) {
    conn_close(c);
    return;
  }
  arm(c, LINGER_IDLE_MS);
}

static void on_timer(uv_timer_t *t) {
  mkv_conn_t *c = t->data;
  if (c->state == S_LINGER) { /* the client stopped sending: the close can be clean now */
    conn_close(c);
    return;
  }
  if (c->state == S_WAITING) {
    if (c->writes_pending == 0) return;
    MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: client not reading its response");
    conn_close(c);
    return;
  }
  if (c->state == S_HEADERS || c->state == S_BODY) {
    MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: client too slow (%s)",
                        c->state == S_HEADERS ? "headers" : "body");
    if (c->req && !c->req->responded && c->state == S_HEADERS) {
      c->in_execute = 1;
      conn_reject(c, 408, "request timeout");
      c->in_execute = 0;
      if (c->writes_pending == 0) conn_close(c);
      return;
    }
  }
  conn_close(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  buf->base = worker_readbuf;
  buf->len = sizeof(worker_readbuf);
}

static void linger_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  alloc_cb(h, suggested, buf);
}

/* The obs-fold check looks back across reads: remember whether this one ended with a
 * line feed followed only by spaces or tabs. */
static void update_carry(mkv_conn_t *c, const char *data, size_t len) {
  size_t i = len;
  while (i > 0 && (data[i - 1] == ' ' || data[i - 1] == '\t')) i--;
  if (i == 0) return; /* all whitespace: the earlier state stands */
  c->carry_lf_ws = data[i - 1] == '\n';
}

/* Is the request line a well-formed one with a method llhttp does not know (405), or
 * not a request line at all (400)? A method is a token followed by one space and a
 * target. The message starts at the beginning of the buffer llhttp was given (a
 * pipelined one is replayed from its own buffer), after any empty lines it skips. */
static int looks_like_method(const char *data, size_t len) {
  size_t i = 0;
  while (i < len && (data[i] == '\r' || data[i] == '\n')) i++;
  size_t start = i;
  while (i < len && (isalnum((unsigned char)data[i]) || strchr("!#$%&'*+-.^_`|~", data[i])) &&
         data[i] != '\0')
    i++;
  return i > start && i + 1 < len && data[i] == ' ' && data[i + 1] != ' ' &&
         (unsigned char)data[i + 1] > 0x20 && data[i + 1] != 0x7f;
}

static void conn_execute(mkv_conn_t *c, const char *data, size_t len) {
  c->in_execute = 1;
  c->stop = 0;
  c->cur_buf = data;
  llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
  c->in_execute = 0;
  if (c->closing) return;
  /* Body bytes of this read that the API gathered go out now, not with the next read. */
  if (c->req && c->api_engaged) c->req->handler->body_flush(c->req);
  if (!c->stop) update_carry(c, data, len);
  if (e == HPE_OK) return;
  if (e == HPE_PAUSED) {
    const char *pos = llhttp_get_error_pos(&c->parser);
    size_t used = (size_t)(pos - data);
    if (used < len) {
      update_carry(c, data, used);
      mkv_buf_set(&c->tail, pos, len - used);
    }
    /* The socket stays read: what the client pipelines meanwhile waits in c->tail
     * (on_read), up to PIPELINE_BUFFER. Stopping and restarting the read for every
     * request would cost two epoll_ctl calls per request. */
    if (c->reading && c->tail.len > PIPELINE_BUFFER) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
    return;
  }
  if (c->stop) {
    if (c->want_close && c->writes_pending == 0) conn_end(c);
    return;
  }
  if (e == HPE_PAUSED_UPGRADE) {
    conn_reject(c, 400, "Upgrade and CONNECT are not supported");
  } else if (e == HPE_INVALID_METHOD) {
    if (c->req == NULL) on_message_begin(&c->parser);
    if (looks_like_method(data, len))
      conn_reject(c, 405, "method not allowed");
    else
      conn_reject(c, 400, "malformed request line");
  } else {
    if (c->req == NULL && c->state != S_BODY) on_message_begin(&c->parser);
    char why[160];
    snprintf(why, sizeof(why), "malformed request: %s", llhttp_get_error_reason(&c->parser));
    if (c->state == S_BODY || (c->req && c->req->responded)) {
      /* The body broke (bad chunk framing ...): nothing can be answered in band. */
      MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: %s", why);
      conn_close(c);
      return;
    }
    conn_reject(c, 400, why);
  }
  if (c->want_close && c->writes_pending == 0) conn_end(c);
}

/* The client's EOF. A client that half-closes after sending a whole request still gets
 * its answer; any other EOF ends the connection. */
static void conn_eof(mkv_conn_t *c) {
  if (c->msg_complete && !c->response_done) {
    c->close_after = 1;
    if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    return;
  }
  conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mkv_conn_t *c = s->data;
  if (nread == 0 || c->closing) return;
  if (nread < 0) {
    if (nread == UV_EOF && c->msg_complete && c->tail.len > 0) {
      /* Pipelined requests came before the EOF: they are answered first. */
      c->eof_seen = 1;
      uv_read_stop(s);
      c->reading = 0;
      return;
    }
    if (nread == UV_EOF)
      conn_eof(c);
    else
      conn_close(c);
    return;
  }
  if (c->msg_complete) {
    /* The parser waits for the current answer (the one pause): keep the bytes. */
    mkv_buf_add(&c->tail, buf->base, (size_t)nread);
    if (c->tail.len > PIPELINE_BUFFER) {
      uv_read_stop(s);
      c->reading = 0;
    }
    return;
  }
  if (c->state == S_BODY && !c->body_paused) arm(c, c->server->w->cfg->limits.body_timeout_ms);
  conn_execute(c, buf->base, (size_t)nread);
  if (!c->closing) conn_advance(c);
}

static void start_reading(mkv_conn_t *c) {
  if (c->reading || c->closing || c->want_close || c->read_done || c->write_blocked) return;
  if (c->eof_seen) { /* every byte before the EOF was parsed */
    conn_eof(c);
    return;
  }
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) == 0) c->reading = 1;
}

/* Ends an exchange whose request is complete and whose response is out, then parses
 * what the client pipelined behind it. A loop, not recursion: each replayed request
 * may be answered at once. */
static void conn_advance(mkv_conn_t *c) {
  for (;;) {
    if (c->closing || c->in_execute) return;
    if (c->req) {
      if (!(c->msg_complete && c->response_done)) break; /* the exchange goes on */
      if (c->close_after || !c->keepalive || c->server->draining) {
        c->want_close = 1;
        if (c->writes_pending == 0) conn_end(c);
        return;
      }
      mkv_req_t *req = c->req;
      c->req = NULL;
      req->conn = NULL;
      mkv_req_unref(req);
      c->msg_complete = c->response_done = 0;
      c->body_paused = 0; /* a resume may never come once the request is over */
      c->state = S_IDLE;
      llhttp_resume(&c->parser);
      arm(c, c->server->w->cfg->limits.idle_timeout_ms);
      continue;
    }
    /* A client that pipelines requests without reading the answers gets no more
     * answers until it reads: responses would otherwise pile up without bound.
     * on_write_done calls back here once the queue has drained. */
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_BUDGET) {
      c->write_blocked = 1;
      if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
      }
      return;
    }
    if (c->tail.len == 0) break;
    mkv_buf_t t = c->feeding;
    c->feeding = c->tail;
    c->tail = t;
    mkv_buf_reset(&c->tail);
    conn_execute(c, c->feeding.data, c->feeding.len);
  }
  if (!c->closing && !c->want_close && !c->msg_complete && !c->body_paused) start_reading(c);
}

static void peer_name(mkv_conn_t *c) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return;
  if (ss.ss_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof(c->peer));
  else
    uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof(c->peer));
}

static mkv_conn_t *conn_new(mkv_server_t *s) {
  mkv_conn_t *c = mkv_calloc(1, sizeof(*c));
  c->server = s;
  uv_tcp_init(&s->w->loop, &c->tcp);
  uv_timer_init(&s->w->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  return c;
}

static void conn_serve(mkv_conn_t *c);

static void on_connection(uv_stream_t *ls, int status);

static void on_accept_resume(uv_timer_t *t) {
  mkv_server_t *s = t->data;
  if (s->draining) {
    s->accept_paused = 0;
    return;
  }
  int fd = dup(s->listen_spare);
  if (fd < 0) { /* still no fd to spare */
    uv_timer_start(&s->accept_timer, on_accept_resume, 100, 0);
    return;
  }
  uv_tcp_init(&s->w->loop, &s->listener);
  s->listener.data = s;
  if (uv_tcp_open(&s->listener, fd) != 0 ||
      uv_listen((uv_stream_t *)&s->listener, 4096, on_connection) != 0) {
    mkv_warn("could not resume accepting connections");
    uv_close((uv_handle_t *)&s->listener, NULL);
    s->accept_paused = 0;
    return;
  }
  s->listening = 1;
  s->accept_paused = 0;
}

static void on_listener_paused(uv_handle_t *h) {
  mkv_server_t *s = h->data;
  if (s->draining) {
    s->accept_paused = 0;
    return;
  }
  uv_timer_start(&s->accept_timer, on_accept_resume, 100, 0);
}

/* accept() failed for want of an fd. Refuse the waiting connections (accept and close
 * them with the reserve fd's slot); if that is not possible either, stop accepting for
 * 100 ms instead of spinning on accept(). */
static void out_of_fds(mkv_server_t *s) {
  int refused = 0, err = EMFILE;
  if (s->reserve_fd >= 0) {
    close(s->reserve_fd);
    s->reserve_fd = -1;
    int lfd = -1;
    uv_fileno((uv_handle_t *)&s->listener, &lfd);
    for (;;) {
      int fd = accept(lfd, NULL, NULL); /* the listener is non-blocking */
      if (fd < 0) {
        err = errno;
        if (err == EINTR || err == ECONNABORTED) continue;
        break;
      }
      close(fd);
      refused++;
    }
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  MKV_LOG_RATELIMITED(MKV_LOG_WARN, "out of file descriptors: %d connection(s) refused%s", refused,
                      err == EAGAIN || err == EWOULDBLOCK ? "" : ", accepting paused");
  if (err == EAGAIN || err == EWOULDBLOCK) return; /* the queue is empty */
  if (!s->listening || s->listen_spare < 0) return;
  uv_close((uv_handle_t *)&s->listener, on_listener_paused);
  s->listening = 0;
  s->accept_paused = 1;
}

static void on_connection(uv_stream_t *ls, int status) {
  mkv_server_t *s = ls->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    out_of_fds(s);
    return;
  }
  if (status < 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "accept failed: %s", uv_strerror(status));
    return;
  }
  mkv_conn_t *c = conn_new(s);
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  conn_serve(c);
}

int mkv_server_adopt(mkv_server_t *s, int fd) {
  mkv_conn_t *c = conn_new(s);
  int rc = uv_tcp_open(&c->tcp, fd);
  if (rc != 0) {
    conn_close(c);
    return rc;
  }
  conn_serve(c);
  return 0;
}

static void conn_serve(mkv_conn_t *c) {
  mkv_server_t *s = c->server;
  const mkv_config_t *cfg = s->w->cfg;
  int per_worker = MKV_MAX(1, cfg->limits.max_connections / MKV_MAX(1, cfg->workers));
  if (s->nconns > per_worker || s->draining) {
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "too many connections (%d on this worker): closing new ones",
                        s->nconns - 1);
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  /* Always: one getpeername per connection, so that a reload that turns the access log on
   * finds the address of connections already open. */
  if (s->h->public_api) peer_name(c);
  llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
  c->parser.data = c;
  c->keepalive = 1;
  c->state = S_IDLE;
  arm(c, cfg->limits.idle_timeout_ms);
  start_reading(c);
}

/* ---- server ---- */

mkv_server_t *mkv_server_new(mkv_worker_t *w, const mkv_handler_t *h) {
  if (req_settings.on_message_complete == NULL) {
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = on_message_begin;
    req_settings.on_url = on_url;
    req_settings.on_header_field = on_header_field;
    req_settings.on_header_value = on_header_value;
    req_settings.on_header_value_complete = on_header_value_complete;
    req_settings.on_headers_complete = on_headers_complete;
    req_settings.on_body = on_body;
    req_settings.on_message_complete = on_message_complete;
  }
  mkv_server_t *s = mkv_calloc(1, sizeof(*s));
  s->w = w;
  s->h = h;
  uv_timer_init(&w->loop, &s->drain_timer);
  s->drain_timer.data = s;
  uv_timer_init(&w->loop, &s->accept_timer);
  s->accept_timer.data = s;
  s->reserve_fd = s->listen_spare = -1;
  return s;
}

int mkv_server_listen(mkv_server_t *s) {
  int rc = uv_tcp_init(&s->w->loop, &s->listener);
  if (rc) return rc;
  s->listener.data = s;
  if ((rc = uv_tcp_open(&s->listener, s->w->listen_fd)) != 0) return rc;
  if ((rc = uv_listen((uv_stream_t *)&s->listener, 4096, on_connection)) != 0) return rc;
  s->listening = 1;
  s->listen_spare = fcntl(s->w->listen_fd, F_DUPFD_CLOEXEC, 0);
  s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return 0;
}

static void on_drain_timeout(uv_timer_t *t) {
  mkv_server_t *s = t->data;
  mkv_warn("drain timeout: closing %d connection(s) with requests still in flight", s->nconns);
  for (mkv_conn_t *c = s->conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
}

void mkv_server_drain(mkv_server_t *s, double drain_ms, void (*done)(mkv_server_t *s)) {
  s->draining = 1;
  s->drain_done = done;
  uv_timer_stop(&s->accept_timer);
  if (s->listening) {
    uv_close((uv_handle_t *)&s->listener, NULL);
    s->listening = 0;
  }
  /* The spare is a dup of the listening socket: while it is open the kernel still
   * completes handshakes into the backlog, so new clients would hang instead of being
   * refused for the whole drain. */
  if (s->listen_spare >= 0) {
    close(s->listen_spare);
    s->listen_spare = -1;
  }
  for (mkv_conn_t *c = s->conns, *next; c; c = next) {
    next = c->next;
    /* Idle and half-read connections go now; one with a request in progress is closed
     * when its response is out. */
    if (c->req == NULL || c->state == S_HEADERS)
      conn_close(c);
    else
      c->close_after = 1;
  }
  if (s->nconns == 0) {
    s->drain_done = NULL;
    done(s);
    return;
  }
  uv_timer_start(&s->drain_timer, on_drain_timeout, drain_ms < 1 ? 1 : (uint64_t)drain_ms, 0);
}

static void on_timer_closed(uv_handle_t *h) {
  mkv_server_t *s = h->data;
  if (--s->closing == 0) free(s);
}

void mkv_server_free(mkv_server_t *s) {
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  if (s->listen_spare >= 0) close(s->listen_spare);
  s->closing = 2;
  uv_close((uv_handle_t *)&s->drain_timer, on_timer_closed);
  uv_close((uv_handle_t *)&s->accept_timer, on_timer_closed);
}

int mkv_server_connections(mkv_server_t *s) {
  return s->nconns;
}
