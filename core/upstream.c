/* upstream.c: keep-alive HTTP/1.1 client for volumes, one per worker loop.
 *
 * Life of a connection: CONNECTING -> ACTIVE (one request) -> IDLE (in its pool,
 * still reading so a close by nginx is seen at once) -> ACTIVE ... -> CLOSING. A
 * connection is freed only when both its handles (tcp, timer) have closed.
 *
 * One concern that reads best whole, a little over 1 000 lines: a request, the
 * connection it runs on and the pool that connection returns to form one state machine
 * (a retry, a reuse, a failure each move all three), and splitting it would scatter
 * each transition over files. The chunks it streams are chunk.c's. */
#include "mkv/upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <llhttp.h>

#include "mkv/health.h"
#include "mkv/log.h"
#include "mkv/metrics.h"

#define MAX_ADDRS 8
#define MAX_IDLE_PER_POOL 64
#define NBUCKETS 64
/* nginx closes idle keep-alive connections after 75 s (keepalive_timeout); closing ours
 * well before avoids reusing one that nginx is closing at that very moment. */
#define IDLE_TIMEOUT_MS 30000
/* A PUT checks a pooled connection idle for longer than this before using it. */
#define PEEK_AFTER_MS 1000
/* Re-resolve a host name at most this often after every address failed. */
#define RERESOLVE_MS 5000

enum { C_CONNECTING, C_ACTIVE, C_DRAINING, C_IDLE, C_CLOSING };

typedef struct pending_chunk_s {
  struct pending_chunk_s *next;
  mkv_chunk_t *ch;
} pending_chunk_t;

typedef struct pool_s {
  struct pool_s *next;
  mkv_upstream_t *up;
  char *host; /* "host:port" */
  char *name; /* host without brackets */
  const char *what; /* "volume", or "index node" (forward.c) -- for the log */
  char port[8];
  int numeric;
  struct sockaddr_storage addrs[MAX_ADDRS];
  int naddrs, preferred;
  int resolving;
  int stale; /* every address failed a while after resolving: resolve again */
  uv_timer_t wait_timer; /* bounds how long requests wait for the name to resolve */
  int wait_timer_init;
  uv_getaddrinfo_t gai;
  uint64_t resolved_ns;
  mkv_upreq_t *wait_head, *wait_tail;
  upconn_t *idle;
  int nidle, nactive;
  uint64_t suspect_until_ns;
  unsigned long long requests, errors, timeouts, latency_ns_sum;
  mkv_vol_metrics_t *vm; /* this volume's shared counters (/metrics); may be NULL */
  mkv_vol_t *hv;          /* its health entry (health.h); NULL when not configured */
} pool_t;

struct upconn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_connect_t creq;
  pool_t *pool;
  mkv_upreq_t *req;
  upconn_t *next_idle;
  llhttp_t parser;
  int state;
  int addr_idx;
  int reused, got_bytes, complete, keepalive, writes_pending, closed_handles;
  int pause_wanted, reading;
  int in_value; /* the response parser is in a header value (resp_headers) */
  char *held_head; /* a PUT's request head, sent with its first body bytes */
  size_t held_len;
  uint64_t idle_since; /* uv_now when pooled */
};

struct mkv_upstream_s {
  uv_loop_t *loop;
  pool_t *buckets[NBUCKETS];
  uv_timer_t defer_timer;
  mkv_upreq_t *defer_head, *defer_tail;
  double suspect_ms;
  const char *extra_headers; /* lent by the worker: the volume key line, or NULL */
  int closing;
  int live; /* connections + resolutions + the defer timer, until all are closed */
  char readbuf[65536];
};

typedef struct upwrite_s {
  uv_write_t w;
  upconn_t *c;
  mkv_chunk_t *ch;
  char *owned;
  char frame[24];
} upwrite_t;

static const llhttp_settings_t resp_settings; /* defined below its callbacks */
static void conn_fail(upconn_t *c, int err, int from_sync_call);
static void dispatch(mkv_upreq_t *req, int fresh_only);
static void maybe_free_upstream(mkv_upstream_t *up);

/* ---- requests ---- */

void mkv_upreq_init(mkv_upreq_t *req) {
  memset(req, 0, sizeof(*req));
  mkv_buf_init(&req->host);
  mkv_buf_init(&req->path);
  req->resp_length = -1;
}

void mkv_upreq_free(mkv_upreq_t *req) {
  mkv_buf_free(&req->host);
  mkv_buf_free(&req->path);
}

static void drop_pending(mkv_upreq_t *req) {
  pending_chunk_t *p = req->pending_head;
  req->pending_head = req->pending_tail = NULL;
  while (p) {
    pending_chunk_t *next = p->next;
    mkv_chunk_unref(p->ch);
    free(p);
    p = next;
  }
}

/* The one place a request completes. After req->done the request is the caller's. */
static void finish(mkv_upreq_t *req, int err) {
  pool_t *pool = req->pool;
  req->active = 0;
  req->deferred = 0;
  req->conn = NULL;
  drop_pending(req);
  req->elapsed_ns = mkv_now_ns() - req->started_ns;
  if (pool) {
    pool->requests++;
    pool->latency_ns_sum += req->elapsed_ns;
    /* a request mkv cancelled itself (the other replica of a PUT failed, a client left)
     * is no fault of this volume */
    if (err && err != UV_ECANCELED) pool->errors++;
    if (err == UV_ETIMEDOUT) pool->timeouts++;
    if (pool->vm) {
      mkv_ctr_add_shared(&pool->vm->requests, 1);
      if (err && err != UV_ECANCELED) mkv_ctr_add_shared(&pool->vm->errors, 1);
      if (err == UV_ETIMEDOUT) mkv_ctr_add_shared(&pool->vm->timeouts, 1);
      if (err != UV_ECANCELED) mkv_hist_observe(&pool->vm->latency, req->elapsed_ns, 1);
    }
    /* What this request says of the volume's health (a cancel says nothing). A volume
     * added by a reload after this pool was made is looked up when something fails. */
    if (err != UV_ECANCELED && pool->what[0] == 'v') { /* volumes only */
      mkv_vol_obs_t obs = err                 ? MKV_OBS_FAILED
                          : req->status < 500 ? MKV_OBS_OK
                          : req->method == MKV_UP_PUT ? MKV_OBS_WRITE_5XX
                                                      : MKV_OBS_5XX;
      if (pool->hv == NULL && obs != MKV_OBS_OK) pool->hv = mkv_health_find(pool->host, strlen(pool->host));
      mkv_health_observe(pool->hv, obs);
    }
  }
  req->done(req, err);
}

static void defer_timer_cb(uv_timer_t *t) {
  mkv_upstream_t *up = t->data;
  mkv_upreq_t *req = up->defer_head;
  up->defer_head = up->defer_tail = NULL;
  while (req) {
    mkv_upreq_t *next = req->next_defer;
    req->next_defer = NULL;
    finish(req, req->deferred_err);
    req = next;
  }
}

/* Completes a request on the next loop turn: for failures found inside a call the
 * caller made (start, write, cancel), whose callback must not run before it returns. */
static void defer_done(mkv_upreq_t *req, int err) {
  mkv_upstream_t *up = req->up;
  if (req->deferred) return; /* queued already: it completes once */
  req->deferred = 1;
  req->deferred_err = err;
  req->next_defer = NULL;
  req->conn = NULL;
  if (up->defer_tail)
    up->defer_tail->next_defer = req;
  else
    up->defer_head = req;
  up->defer_tail = req;
  uv_timer_start(&up->defer_timer, defer_timer_cb, 0, 0);
}

/* A flag, not a walk of the queue: the queue is detached while it is drained, and a
 * completion that cancels a sibling request must still see that it is queued. */
static int is_deferred(const mkv_upreq_t *req) {
  return req->deferred;
}

/* ---- pools ---- */

static uint32_t hash_host(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static pool_t *pool_get(mkv_upstream_t *up, const char *host, size_t hostlen, int index_node) {
  uint32_t b = hash_host(host, hostlen) % NBUCKETS;
  for (pool_t *p = up->buckets[b]; p; p = p->next)
    if (strlen(p->host) == hostlen && memcmp(p->host, host, hostlen) == 0) return p;

  /* host:port, host possibly [v6] */
  const char *colon = NULL;
  for (size_t i = hostlen; i > 0; i--)
    if (host[i - 1] == ':') {
      colon = host + i - 1;
      break;
    }
  if (colon == NULL || colon == host) return NULL;
  size_t plen = hostlen - (size_t)(colon - host) - 1;
  if (plen == 0 || plen >= sizeof(((pool_t *)0)->port)) return NULL;
  for (size_t i = 0; i < plen; i++)
    if (colon[1 + i] < '0' || colon[1 + i] > '9') return NULL;

  pool_t *p = mkv_calloc(1, sizeof(*p));
  p->up = up;
  p->host = mkv_memdup(host, hostlen);
  /* Another index node (forward.c) is no volume: no volume metrics, no health. */
  p->what = index_node ? "index node" : "volume";
  p->vm = index_node ? NULL : mkv_metrics_volume(host, hostlen);
  p->hv = index_node ? NULL : mkv_health_find(host, hostlen);
  const char *name = host;
  size_t nlen = (size_t)(colon - host);
  if (nlen >= 2 && name[0] == '[' && name[nlen - 1] == ']') name++, nlen -= 2;
  p->name = mkv_memdup(name, nlen);
  memcpy(p->port, colon + 1, plen);
  p->port[plen] = '\0';
  int port = atoi(p->port);
  struct sockaddr_in *a4 = (struct sockaddr_in *)&p->addrs[0];
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&p->addrs[0];
  if (uv_ip4_addr(p->name, port, a4) == 0 || uv_ip6_addr(p->name, port, a6) == 0) {
    p->numeric = 1;
    p->naddrs = 1;
  }
  p->next = up->buckets[b];
  up->buckets[b] = p;
  return p;
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res) {
  pool_t *p = gai->data;
  mkv_upstream_t *up = p->up;
  p->resolving = 0;
  up->live--;
  int n = 0;
  if (status == 0) {
    for (struct addrinfo *ai = res; ai && n < MAX_ADDRS; ai = ai->ai_next) {
      if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
      memcpy(&p->addrs[n++], ai->ai_addr, ai->ai_addrlen);
    }
    if (n == 0) status = UV_EAI_NONAME;
  }
  uv_freeaddrinfo(res);
  p->naddrs = n;
  p->preferred = 0;
  p->stale = 0;
  p->resolved_ns = mkv_now_ns();
  if (p->wait_timer_init) uv_timer_stop(&p->wait_timer);
  mkv_upreq_t *req = p->wait_head;
  p->wait_head = p->wait_tail = NULL;
  if (status != 0 && status != UV_ECANCELED)
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "%s %s: cannot resolve %s: %s", p->what, p->host, p->name,
                        uv_strerror(status));
  while (req) {
    mkv_upreq_t *next = req->next_wait;
    req->next_wait = NULL;
    if (status != 0)
      finish(req, status);
    else
      dispatch(req, 0);
    req = next;
  }
  maybe_free_upstream(up);
}

static int start_resolve(pool_t *p) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  p->gai.data = p;
  int rc = uv_getaddrinfo(p->up->loop, &p->gai, on_resolved, p->name, p->port, &hints);
  if (rc == 0) {
    p->resolving = 1;
    p->up->live++;
  }
  return rc;
}

int mkv_upstream_suspect(mkv_upstream_t *up, const char *host, size_t hostlen) {
  pool_t *p = pool_get(up, host, hostlen, 0);
  return p && p->suspect_until_ns > mkv_now_ns();
}

static void mark_suspect(pool_t *p) {
  p->suspect_until_ns = mkv_now_ns() + (uint64_t)(p->up->suspect_ms * 1e6);
}

/* ---- connections ---- */

static void on_conn_handle_closed(uv_handle_t *h) {
  upconn_t *c = h->data;
  if (++c->closed_handles < 2) return;
  mkv_upstream_t *up = c->pool->up;
  free(c);
  up->live--;
  maybe_free_upstream(up);
}

/* The volume's shared connection gauges (/metrics), when it has an entry. */
static void gauge_add(pool_t *p, int idle, int delta) {
  if (p->vm)
    mkv_ctr_add_shared(idle ? &p->vm->idle_conns : &p->vm->conns,
                       (unsigned long long)(long long)delta);
}

static void idle_push(upconn_t *c) {
  pool_t *p = c->pool;
  c->state = C_IDLE;
  c->next_idle = p->idle;
  p->idle = c;
  p->nidle++;
  gauge_add(p, 1, +1);
}

static void idle_unlink(pool_t *p, upconn_t **pp) {
  upconn_t *c = *pp;
  *pp = c->next_idle;
  c->next_idle = NULL;
  p->nidle--;
  gauge_add(p, 1, -1);
}

static void idle_remove(upconn_t *c) {
  pool_t *p = c->pool;
  for (upconn_t **pp = &p->idle; *pp; pp = &(*pp)->next_idle) {
    if (*pp == c) {
      idle_unlink(p, pp);
      return;
    }
  }
}

static void conn_close(upconn_t *c) {
  if (c->state == C_CLOSING) return;
  if (c->state == C_IDLE)
    idle_remove(c);
  else
    c->pool->nactive--;
  c->state = C_CLOSING;
  gauge_add(c->pool, 0, -1); /* uv_close closes the socket now */
  free(c->held_head);
  c->held_head = NULL;
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static upconn_t *conn_new(pool_t *p) {
  upconn_t *c = mkv_calloc(1, sizeof(*c));
  c->pool = p;
  c->state = C_CONNECTING;
  uv_tcp_init(p->up->loop, &c->tcp);
  uv_timer_init(p->up->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->creq.data = c;
  p->nactive++;
  p->up->live++;
  gauge_add(p, 0, +1);
  return c;
}

static void on_timer(uv_timer_t *t) {
  upconn_t *c = t->data;
  if (c->state == C_IDLE) {
    conn_close(c);
    return;
  }
  if (c->req) mark_suspect(c->pool);
  conn_fail(c, UV_ETIMEDOUT, 0);
}

static void arm_timer(upconn_t *c, double ms) {
  uv_timer_start(&c->timer, on_timer, ms < 1 ? 1 : (uint64_t)ms, 0);
}

/* A PUT's timer measures the volume's inactivity, so it runs only while the volume owes
 * progress: bytes queued for it, or its answer once the body is sent. A client that
 * pauses its body is the server's business (body_timeout), not the volume's fault. */
static void put_timer_update(upconn_t *c, mkv_upreq_t *req, int progress) {
  if (c->writes_pending > 0 || req->body_end_sent) {
    if (progress || !uv_is_active((uv_handle_t *)&c->timer)) arm_timer(c, req->timeout_ms);
  } else {
    uv_timer_stop(&c->timer);
  }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  upconn_t *c = h->data;
  buf->base = c->pool->up->readbuf;
  buf->len = sizeof(c->pool->up->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_release(upconn_t *c) {
  pool_t *p = c->pool;
  if (p->nidle >= MAX_IDLE_PER_POOL || p->up->closing) {
    conn_close(c);
    return;
  }
  if (!c->reading) { /* a GET that paused reading ended: watch for EOF again */
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    c->reading = 1;
  }
  p->nactive--;
  idle_push(c);
  c->idle_since = uv_now(p->up->loop);
  arm_timer(c, IDLE_TIMEOUT_MS);
}

static void response_complete(upconn_t *c, int clean) {
  mkv_upreq_t *req = c->req;
  c->req = NULL;
  c->complete = 1;
  uv_timer_stop(&c->timer);
  int reusable = clean && c->keepalive;
  if (req->method == MKV_UP_PUT && !req->body_end_sent) reusable = 0;
  if (!reusable)
    conn_close(c);
  else if (c->writes_pending)
    c->state = C_DRAINING; /* idle once the last write callback has run */
  else
    conn_release(c);
  finish(req, 0);
}

/* Fails the connection's request (if any) and closes the connection. A HEAD, GET or
 * DELETE that broke on a reused connection before any response byte is retried once on
 * a fresh connection: the volume most likely closed an idle connection under us. */
static void conn_fail(upconn_t *c, int err, int from_sync_call) {
  mkv_upreq_t *req = c->req;
  c->req = NULL;
  int retry = req && c->reused && !c->got_bytes && req->method != MKV_UP_PUT && !req->retried &&
              err != UV_ETIMEDOUT && err != UV_ECANCELED;
  conn_close(c);
  if (req == NULL) return;
  req->conn = NULL;
  if (retry) {
    req->retried = 1;
    dispatch(req, 1);
    return;
  }
  if (from_sync_call)
    defer_done(req, err);
  else
    finish(req, err);
}

static void on_write(uv_write_t *w, int status) {
  upwrite_t *wr = (upwrite_t *)w;
  upconn_t *c = wr->c;
  if (wr->ch) mkv_chunk_unref(wr->ch);
  free(wr->owned);
  free(wr);
  c->writes_pending--;
  if (c->state == C_CLOSING) return;
  if (status < 0) {
    conn_fail(c, status, 0);
    return;
  }
  if (c->state == C_DRAINING) {
    if (c->writes_pending == 0) conn_release(c);
    return;
  }
  mkv_upreq_t *req = c->req;
  if (req && req->method == MKV_UP_PUT) {
    put_timer_update(c, req, 1); /* progress: the inactivity timeout starts again */
    if (!req->is_ready) {
      req->is_ready = 1;
      if (req->ready) req->ready(req);
    }
  }
}

static int conn_write(upconn_t *c, uv_buf_t *bufs, unsigned n, mkv_chunk_t *ch, char *owned,
                      upwrite_t *wr) {
  mkv_upreq_t *req = c->req;
  if (c->writes_pending == 0 && req && (req->method != MKV_UP_PUT || req->hold_head)) {
    /* Bytes the kernel takes at once need no write request, and libuv then leaves the
     * socket's epoll entry alone (uv_write re-arms it even for a write it finished at
     * once). What on_write would do is done here. (Not for a PUT whose ready callback
     * waits for its head to go out: that stays asynchronous.) */
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (w > 0 && c->pool->vm) mkv_ctr_add_shared(&c->pool->vm->bytes_sent, (unsigned long long)w);
    if (w >= 0 && (size_t)w == total) {
      free(owned);
      free(wr);
      if (req->method == MKV_UP_PUT) {
        put_timer_update(c, req, 1);
        if (!req->is_ready) {
          req->is_ready = 1;
          if (req->ready) req->ready(req);
        }
      }
      if (ch) mkv_chunk_unref(ch); /* last: its release may resume the client */
      return 0;
    }
    for (size_t skip = w > 0 ? (size_t)w : 0; skip > 0;) {
      if (bufs[0].len <= skip) {
        skip -= bufs[0].len;
        bufs++;
        n--;
      } else {
        bufs[0].base += skip;
        bufs[0].len -= (unsigned)skip;
        skip = 0;
      }
    }
  }
  if (wr == NULL) wr = mkv_calloc(1, sizeof(*wr));
  wr->c = c;
  wr->ch = ch;
  wr->owned = owned;
  int rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, bufs, n, on_write);
  if (rc < 0) {
    if (ch) mkv_chunk_unref(ch);
    free(owned);
    free(wr);
    return rc;
  }
  c->writes_pending++;
  if (c->pool->vm) {
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    mkv_ctr_add_shared(&c->pool->vm->bytes_sent, total);
  }
  return 0;
}

static int write_chunk(upconn_t *c, mkv_upreq_t *req, mkv_chunk_t *ch) {
  upwrite_t *wr = mkv_calloc(1, sizeof(*wr));
  uv_buf_t bufs[4];
  unsigned n = 0;
  char *owned = c->held_head; /* conn_write frees it with the write */
  if (owned) {
    bufs[n++] = uv_buf_init(owned, (unsigned)c->held_len);
    c->held_head = NULL;
  }
  if (req->content_length < 0) {
    int fl = snprintf(wr->frame, sizeof(wr->frame), "%zx\r\n", ch->len);
    bufs[n++] = uv_buf_init(wr->frame, (unsigned)fl);
    bufs[n++] = uv_buf_init(ch->bytes, (unsigned)ch->len);
    bufs[n++] = uv_buf_init("\r\n", 2);
  } else {
    bufs[n++] = uv_buf_init(ch->bytes, (unsigned)ch->len);
  }
  return conn_write(c, bufs, n, ch, owned, wr);
}

static int send_end(upconn_t *c, mkv_upreq_t *req) {
  req->body_end_sent = 1;
  uv_buf_t b[2];
  unsigned n = 0;
  char *owned = c->held_head; /* a body that never came: the head goes alone */
  if (owned) b[n++] = uv_buf_init(owned, (unsigned)c->held_len);
  c->held_head = NULL;
  if (req->content_length < 0) b[n++] = uv_buf_init("0\r\n\r\n", 5);
  if (n == 0) return 0;
  return conn_write(c, b, n, NULL, owned, NULL);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  upconn_t *c = s->data;
  if (nread == 0 || c->state == C_CLOSING) return;
  if (c->state == C_IDLE || c->state == C_DRAINING) {
    /* A volume never speaks first: EOF (it closed the idle connection) or stray bytes
     * both end this connection. */
    conn_close(c);
    return;
  }
  if (nread < 0) {
    if (nread == UV_EOF && c->got_bytes && c->req) {
      /* A response delimited by the connection's end completes here. */
      llhttp_finish(&c->parser);
      if (c->complete) {
        c->keepalive = 0;
        response_complete(c, 0);
        return;
      }
    }
    conn_fail(c, nread == UV_EOF ? UV_ECONNRESET : (int)nread, 0);
    return;
  }
  c->got_bytes = 1;
  if (c->pool->vm) mkv_ctr_add_shared(&c->pool->vm->bytes_received, (unsigned long long)nread);
  mkv_upreq_t *req = c->req;
  if (req && (req->method == MKV_UP_PUT || req->inactivity)) arm_timer(c, req->timeout_ms);
  llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (c->state == C_CLOSING) return;
  if (e == HPE_PAUSED) {
    /* on_message_complete paused: a volume sends nothing after its response. */
    const char *pos = llhttp_get_error_pos(&c->parser);
    int clean = pos == buf->base + nread;
    response_complete(c, clean);
    return;
  }
  if (e != HPE_OK) {
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "%s %s: bad HTTP response: %s", c->pool->what, c->pool->host,
                        llhttp_get_error_reason(&c->parser));
    conn_fail(c, MKV_EPROTO, 0);
    return;
  }
  if (c->pause_wanted && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    /* Paused by its reader: waiting is not a stall of the volume. */
    if (c->req && c->req->inactivity) uv_timer_stop(&c->timer);
  }
}

/* Begins req on a connected c. */
static void conn_begin(upconn_t *c, mkv_upreq_t *req, int reused) {
  pool_t *p = c->pool;
  if (c->state == C_IDLE) {
    p->nactive++;
    c->next_idle = NULL;
  }
  c->state = C_ACTIVE;
  c->req = req;
  req->conn = c;
  req->touched = 1;
  c->reused = reused;
  c->got_bytes = c->complete = c->keepalive = c->pause_wanted = c->in_value = 0;
  llhttp_init(&c->parser, HTTP_RESPONSE, &resp_settings);
  c->parser.data = c;

  static const char *names[] = {"HEAD", "GET", "PUT", "DELETE"};
  mkv_buf_t h;
  mkv_buf_init(&h);
  mkv_buf_addf(&h, "%s ", req->method_token ? req->method_token : names[req->method]);
  mkv_buf_add(&h, req->path.data, req->path.len);
  mkv_buf_adds(&h, " HTTP/1.1\r\nHost: ");
  mkv_buf_add(&h, req->host.data, req->host.len);
  /* The volume config tells mkv's own requests by this: a GET or HEAD of a file it
   * does not have is a 404 for mkv, and a bounce back to mkv for a client. */
  mkv_buf_adds(&h, "\r\nUser-Agent: " MKV_UPSTREAM_AGENT "\r\n");
  if (req->up->extra_headers) mkv_buf_adds(&h, req->up->extra_headers);
  if (req->headers) mkv_buf_adds(&h, req->headers);
  if (req->method == MKV_UP_PUT) {
    if (req->content_length >= 0)
      mkv_buf_addf(&h, "Content-Length: %lld\r\n", (long long)req->content_length);
    else
      mkv_buf_adds(&h, "Transfer-Encoding: chunked\r\n");
  }
  mkv_buf_adds(&h, "\r\n");
  uv_buf_t b = uv_buf_init(h.data, (unsigned)h.len);
  if (!c->reading) {
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    c->reading = 1;
  }
  if (req->method == MKV_UP_PUT && req->hold_head && req->pending_head == NULL &&
      !req->body_ended) {
    /* The head waits for the first body bytes, usually a moment later in the same loop
     * turn: one write and one segment instead of two, for mkv and for the volume.
     * Nothing is owed to the volume meanwhile, so no timer runs. */
    c->held_head = h.data;
    c->held_len = h.len;
    uv_timer_stop(&c->timer);
    return;
  }
  /* HEAD, GET and DELETE have one deadline for the whole exchange, connect included;
   * a PUT's timer measures inactivity and restarts on every bit of progress. */
  double ms = req->timeout_ms;
  if (req->method != MKV_UP_PUT && !req->inactivity)
    ms -= (double)(mkv_now_ns() - req->started_ns) / 1e6;
  arm_timer(c, ms);
  int rc = conn_write(c, &b, 1, NULL, h.data, NULL);
  if (rc == 0 && req->method == MKV_UP_PUT) {
    pending_chunk_t *pc = req->pending_head;
    req->pending_head = req->pending_tail = NULL;
    while (pc && rc == 0) {
      pending_chunk_t *next = pc->next;
      rc = write_chunk(c, req, pc->ch);
      free(pc);
      pc = next;
    }
    while (pc) { /* only after a failed write */
      pending_chunk_t *next = pc->next;
      mkv_chunk_unref(pc->ch);
      free(pc);
      pc = next;
    }
    if (rc == 0 && req->body_ended) rc = send_end(c, req);
    /* Writes done at once stopped the timer as they went (nothing owed); if the whole
     * body is out, the volume owes its answer now. */
    if (rc == 0) put_timer_update(c, req, 0);
  }
  if (rc < 0) conn_fail(c, rc, 1);
}

static void conn_connect(upconn_t *c, mkv_upreq_t *req, int idx);

static void on_connect(uv_connect_t *cr, int status) {
  upconn_t *c = cr->data;
  if (c->state == C_CLOSING) return; /* cancelled */
  mkv_upreq_t *req = c->req;
  pool_t *p = c->pool;
  if (status == 0) {
    p->preferred = c->addr_idx;
    uv_tcp_nodelay(&c->tcp, 1);
    c->req = NULL;
    conn_begin(c, req, 0);
    return;
  }
  c->req = NULL;
  conn_close(c);
  if (req == NULL) return;
  req->conn = NULL;
  /* Next address of the name, until each was tried once for this request. (The list
   * may have been replaced by a new resolution meanwhile, or emptied by a failed one.) */
  int next = p->naddrs > 0 ? (c->addr_idx + 1) % p->naddrs : 0;
  if (p->naddrs > 0 && next != p->preferred) {
    upconn_t *n = conn_new(p);
    n->req = req;
    req->conn = n;
    conn_connect(n, req, next);
    return;
  }
  mark_suspect(p);
  if (!p->numeric && mkv_now_ns() - p->resolved_ns > (uint64_t)RERESOLVE_MS * 1000000u)
    p->stale = 1; /* the name may point elsewhere now: resolve again next time */
  MKV_LOG_RATELIMITED(MKV_LOG_WARN, "%s %s: cannot connect: %s", p->what, p->host,
                      uv_strerror(status));
  finish(req, status);
}

static void conn_connect(upconn_t *c, mkv_upreq_t *req, int idx) {
  pool_t *p = c->pool;
  c->addr_idx = idx;
  c->req = req;
  arm_timer(c, req->timeout_ms);
  int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&p->addrs[idx], on_connect);
  if (rc < 0) {
    /* Reported like an asynchronous failure, one loop turn later. */
    c->req = NULL;
    conn_close(c);
    req->conn = NULL;
    defer_done(req, rc);
  }
}

/* Is a pooled connection still open? A volume never sends unasked, so readable data or
 * EOF both mean it is not. */
static int conn_alive(upconn_t *c) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0) return 0;
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Requests waiting for a name to resolve are bounded by their own timeouts too: a
 * resolver that hangs must not hold a GET past voltimeout. */
static void on_wait_timer(uv_timer_t *t) {
  pool_t *p = t->data;
  uint64_t now = mkv_now_ns();
  double next_ms = 0;
  mkv_upreq_t **pp = &p->wait_head, *prev = NULL;
  while (*pp) {
    mkv_upreq_t *r = *pp;
    double left = r->timeout_ms - (double)(now - r->started_ns) / 1e6;
    if (left <= 0) {
      *pp = r->next_wait;
      if (p->wait_tail == r) p->wait_tail = prev;
      r->next_wait = NULL;
      MKV_LOG_RATELIMITED(MKV_LOG_WARN, "%s %s: name not resolved in time", p->what, p->host);
      finish(r, UV_ETIMEDOUT);
      continue;
    }
    if (next_ms == 0 || left < next_ms) next_ms = left;
    prev = r;
    pp = &r->next_wait;
  }
  if (next_ms > 0) uv_timer_start(t, on_wait_timer, (uint64_t)next_ms + 1, 0);
}

static void wait_for_name(pool_t *p, mkv_upreq_t *req) {
  req->next_wait = NULL;
  if (p->wait_tail)
    p->wait_tail->next_wait = req;
  else
    p->wait_head = req;
  p->wait_tail = req;
  if (!p->wait_timer_init) {
    uv_timer_init(p->up->loop, &p->wait_timer);
    p->wait_timer.data = p;
    p->wait_timer_init = 1;
    p->up->live++;
  }
  if (!uv_is_active((uv_handle_t *)&p->wait_timer))
    uv_timer_start(&p->wait_timer, on_wait_timer, (uint64_t)MKV_MAX(req->timeout_ms, 1) + 1, 0);
}

static void dispatch(mkv_upreq_t *req, int fresh_only) {
  pool_t *p = req->pool;
  if (p->naddrs == 0 || p->stale) {
    if (!p->resolving) {
      int rc = start_resolve(p);
      if (rc != 0) {
        defer_done(req, rc);
        return;
      }
    }
    wait_for_name(p, req);
    return;
  }
  while (!fresh_only && p->idle) {
    upconn_t *c = p->idle;
    idle_unlink(p, &p->idle);
    uv_timer_stop(&c->timer);
    /* Idle connections are read, so a volume's close is usually seen before reuse. The
     * race that is left costs a HEAD, GET or DELETE only a retry on a fresh connection
     * (conn_fail); a PUT cannot be retried, so a PUT on a connection idle for a while
     * pays a syscall to check. */
    if (req->method != MKV_UP_PUT || uv_now(p->up->loop) - c->idle_since < PEEK_AFTER_MS ||
        conn_alive(c)) {
      conn_begin(c, req, 1);
      return;
    }
    c->state = C_CONNECTING; /* counted active again before closing */
    p->nactive++;
    conn_close(c);
  }
  upconn_t *c = conn_new(p);
  req->conn = c;
  conn_connect(c, req, p->preferred);
}

int mkv_upstream_start(mkv_upstream_t *up, mkv_upreq_t *req) {
  if (req->active) return UV_EALREADY;
  if (up->closing) return UV_ECANCELED;
  pool_t *p = pool_get(up, req->host.data, req->host.len, req->index_node);
  if (p == NULL) return UV_EINVAL;
  req->up = up;
  req->pool = p;
  req->active = 1;
  req->status = 0;
  req->resp_length = -1;
  req->retried = req->is_ready = req->body_ended = req->body_end_sent = req->touched = 0;
  req->deferred = 0;
  req->body_queued = 0;
  req->conn = NULL;
  req->started_ns = mkv_now_ns();
  dispatch(req, 0);
  return 0;
}

int mkv_upreq_write(mkv_upreq_t *req, mkv_chunk_t *ch) {
  if (!req->active || is_deferred(req)) {
    mkv_chunk_unref(ch);
    return UV_ECANCELED;
  }
  if (ch->len == 0) { /* a zero-size chunk would end a chunked body */
    mkv_chunk_unref(ch);
    return 0;
  }
  req->body_queued += (int64_t)ch->len;
  upconn_t *c = req->conn;
  if (c && c->state == C_ACTIVE) {
    int rc = write_chunk(c, req, ch);
    if (rc < 0) {
      conn_fail(c, rc, 1);
      return rc;
    }
    put_timer_update(c, req, 0);
    return 0;
  }
  pending_chunk_t *pc = mkv_malloc(sizeof(*pc));
  pc->ch = ch;
  pc->next = NULL;
  if (req->pending_tail)
    req->pending_tail->next = pc;
  else
    req->pending_head = pc;
  req->pending_tail = pc;
  return 0;
}

void mkv_upreq_end(mkv_upreq_t *req) {
  if (!req->active || req->body_ended) return;
  req->body_ended = 1;
  upconn_t *c = req->conn;
  if (c && c->state == C_ACTIVE) {
    int rc = send_end(c, req);
    if (rc < 0)
      conn_fail(c, rc, 1);
    else
      put_timer_update(c, req, 0);
  }
}

void mkv_upreq_cancel(mkv_upreq_t *req) {
  if (!req->active || is_deferred(req)) return;
  pool_t *p = req->pool;
  for (mkv_upreq_t **pp = &p->wait_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next_wait) {
    if (*pp == req) {
      *pp = req->next_wait;
      if (p->wait_tail == req) p->wait_tail = prev;
      req->next_wait = NULL;
      defer_done(req, UV_ECANCELED);
      return;
    }
  }
  upconn_t *c = req->conn;
  if (c) {
    c->req = NULL;
    conn_close(c);
  }
  defer_done(req, UV_ECANCELED);
}

int mkv_upreq_body_sent(const mkv_upreq_t *req) {
  if (!req->active || is_deferred(req) || !req->touched || req->method != MKV_UP_PUT)
    return 0;
  if (req->body_end_sent) return 1;
  /* A known length all queued (the held head went out with the first bytes). */
  return req->content_length > 0 && req->body_queued >= req->content_length;
}

void mkv_upreq_resume(mkv_upreq_t *req) {
  upconn_t *c = req->conn;
  if (c == NULL || c->state != C_ACTIVE) return;
  c->pause_wanted = 0;
  if (!c->reading) {
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    c->reading = 1;
    if (req->inactivity) arm_timer(c, req->timeout_ms);
  }
}

/* ---- response parser callbacks ---- */

static int on_headers_complete(llhttp_t *p) {
  upconn_t *c = p->data;
  mkv_upreq_t *req = c->req;
  int status = p->status_code;
  if (req && req->resp_headers) {
    if (c->in_value) mkv_buf_adds(req->resp_headers, "\r\n");
    c->in_value = 0;
    if (status >= 100 && status < 200) mkv_buf_reset(req->resp_headers);
  }
  if (status >= 100 && status < 200) return 1; /* skipped; the real response follows */
  if (req) {
    req->status = status;
    req->resp_length = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    if (req->on_headers) req->on_headers(req);
  }
  /* llhttp cannot know that a HEAD response (or a 204/304) has no body: say so, or the
   * parser waits for Content-Length bytes that never come (library-facts §2.4). */
  if ((req && req->method == MKV_UP_HEAD) || status == 204 || status == 304) return 1;
  return 0;
}

/* Response header lines, for a request that keeps them (resp_headers). */
static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  upconn_t *c = p->data;
  mkv_upreq_t *req = c->req;
  if (req && req->resp_headers) {
    if (c->in_value) mkv_buf_adds(req->resp_headers, "\r\n");
    c->in_value = 0;
    mkv_buf_add(req->resp_headers, at, len);
  }
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  upconn_t *c = p->data;
  mkv_upreq_t *req = c->req;
  if (req && req->resp_headers) {
    if (!c->in_value) mkv_buf_adds(req->resp_headers, ": ");
    c->in_value = 1;
    mkv_buf_add(req->resp_headers, at, len);
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  upconn_t *c = p->data;
  mkv_upreq_t *req = c->req;
  if (req && req->on_body && (req->body_any_status || (req->status >= 200 && req->status < 300)))
    if (req->on_body(req, at, len)) c->pause_wanted = 1;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  upconn_t *c = p->data;
  if (p->status_code >= 100 && p->status_code < 200) return 0;
  c->keepalive = llhttp_should_keep_alive(p);
  c->complete = 1;
  return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- lifecycle ---- */

void mkv_upstream_set_headers(mkv_upstream_t *up, const char *lines) {
  up->extra_headers = lines;
}

mkv_upstream_t *mkv_upstream_new(uv_loop_t *loop, double suspect_ms) {
  mkv_upstream_t *up = mkv_calloc(1, sizeof(*up));
  up->loop = loop;
  up->suspect_ms = suspect_ms;
  uv_timer_init(loop, &up->defer_timer);
  up->defer_timer.data = up;
  up->live = 1;
  return up;
}

static void free_pools(mkv_upstream_t *up) {
  for (int b = 0; b < NBUCKETS; b++) {
    pool_t *p = up->buckets[b];
    while (p) {
      pool_t *next = p->next;
      free(p->host);
      free(p->name);
      free(p);
      p = next;
    }
  }
}

static void maybe_free_upstream(mkv_upstream_t *up) {
  if (!up->closing || up->live > 0) return;
  free_pools(up);
  free(up);
}

static void on_pool_timer_closed(uv_handle_t *h) {
  pool_t *p = h->data;
  mkv_upstream_t *up = p->up;
  up->live--;
  maybe_free_upstream(up);
}

static void on_defer_timer_closed(uv_handle_t *h) {
  mkv_upstream_t *up = h->data;
  up->live--;
  maybe_free_upstream(up);
}

void mkv_upstream_close(mkv_upstream_t *up) {
  up->closing = 1;
  for (int b = 0; b < NBUCKETS; b++) {
    for (pool_t *p = up->buckets[b]; p; p = p->next) {
      while (p->idle) conn_close(p->idle);
      if (p->resolving) uv_cancel((uv_req_t *)&p->gai);
      if (p->wait_timer_init) uv_close((uv_handle_t *)&p->wait_timer, on_pool_timer_closed);
    }
  }
  uv_close((uv_handle_t *)&up->defer_timer, on_defer_timer_closed);
}

void mkv_upstream_foreach_stats(mkv_upstream_t *up,
                                void (*fn)(const mkv_upstream_stats_t *st, void *arg),
                                void *arg) {
  uint64_t now = mkv_now_ns();
  for (int b = 0; b < NBUCKETS; b++) {
    for (pool_t *p = up->buckets[b]; p; p = p->next) {
      mkv_upstream_stats_t st = {p->host, p->requests, p->errors, p->timeouts,
                                 p->latency_ns_sum, p->nidle, p->nactive,
                                 p->suspect_until_ns > now};
      fn(&st, arg);
    }
  }
}
