/* admin_xfer.c: the admin runtime's transfers to volumes -- mkv.http (HEAD, GET of
 * listings, DELETE), mkv.copy (a value streamed from one volume to another, never whole
 * in memory) and mkv.md5_url (the same without a destination), and the bandwidth cap
 * they share.
 *
 * Each operation has one function that pushes its results (`push`), used on the
 * immediate path (an error before any I/O: returned at once, the task never parks) and
 * on the resume path (the libuv callback pushes onto the task's stack, then resumes it);
 * see admin_int.h. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "admin_int.h"
#include "mkv/hash.h"

/* A listing or other body read whole: bigger is an error, not an allocation. */
#define MAX_BODY (256u << 20)
/* Bytes of a copy in flight to its destination before the source stops being read. */
#define COPY_HIGH (4u << 20)
#define COPY_LOW (1u << 20)
#define BW_TICK_MS 50

typedef struct xfer_s xfer_t;
static void xfer_resume_source(xfer_t *x);

/* ---- bandwidth: a token bucket over every transfer of the run ---- */

static void bw_refill(mkv_admin_t *a) {
  uint64_t now = mkv_now_ns();
  double rate = a->opts.bandwidth;
  a->tokens += rate * (double)(now - a->tokens_ns) / 1e9;
  /* At most a quarter of a second's worth banked: no bursts after idling. */
  if (a->tokens > rate / 4) a->tokens = rate / 4;
  a->tokens_ns = now;
}

static void bw_tick(uv_timer_t *timer) {
  mkv_admin_t *a = timer->data;
  bw_refill(a);
  while (a->bw_waiters && a->tokens > 0) {
    op_t *op = a->bw_waiters;
    a->bw_waiters = op->next_bw;
    op->next_bw = NULL;
    xfer_resume_source((xfer_t *)op);
  }
  if (!a->bw_waiters) uv_timer_stop(timer);
}

/* Queues op until the budget refills. */
static void bw_wait(mkv_admin_t *a, op_t *op) {
  op->next_bw = a->bw_waiters;
  a->bw_waiters = op;
  if (!uv_is_active((uv_handle_t *)&a->bw_timer))
    uv_timer_start(&a->bw_timer, bw_tick, BW_TICK_MS, BW_TICK_MS);
}

/* Takes n bytes of budget; 0 when the transfer may go on, 1 when it must wait (it is
 * then queued once, until the budget refills: `queued` says it already is). */
static int bw_take(mkv_admin_t *a, op_t *op, size_t n, int queued) {
  if (a->opts.bandwidth <= 0) return 0;
  bw_refill(a);
  a->tokens -= (double)n;
  if (a->tokens >= 0 && !queued) return 0;
  if (!queued) bw_wait(a, op);
  return 1;
}

static void bw_forget(mkv_admin_t *a, op_t *op) {
  for (op_t **pp = &a->bw_waiters; *pp; pp = &(*pp)->next_bw)
    if (*pp == op) {
      *pp = op->next_bw;
      break;
    }
}

/* Splits "http://host:port/path" (or "host:port/path"). 0 or -1. */
static int split_url(const char *url, size_t n, mkv_buf_t *host, mkv_buf_t *path) {
  if (n >= 7 && memcmp(url, "http://", 7) == 0) url += 7, n -= 7;
  const char *slash = memchr(url, '/', n);
  if (slash == NULL || slash == url) return -1;
  mkv_buf_set(host, url, (size_t)(slash - url));
  mkv_buf_set(path, slash, n - (size_t)(slash - url));
  return 0;
}

/* ---- mkv.http ---- */

typedef struct http_op_s {
  op_t op;
  mkv_upreq_t req;
  mkv_buf_t body;
  int want_body;
  int too_big;
} http_op_t;

static void http_op_free(http_op_t *h) {
  mkv_upreq_free(&h->req);
  mkv_buf_free(&h->body);
  free(h);
}

static int http_on_body(mkv_upreq_t *r, const char *at, size_t len) {
  http_op_t *h = r->data;
  if (!h->want_body) return 0;
  if (h->body.len + len > MAX_BODY) {
    h->too_big = 1;
    return 0;
  }
  mkv_buf_add(&h->body, at, len);
  return 0;
}

/* The one push of mkv.http's results: status, body | length; or nil, msg, code. */
static int http_push(lua_State *L, http_op_t *h, int err) {
  if (err != 0) return mkv__push_error(L, err);
  if (h->too_big) {
    lua_pushnil(L);
    lua_pushstring(L, "response body too large");
    lua_pushliteral(L, "E2BIG");
    return 3;
  }
  lua_pushinteger(L, h->req.status);
  if (h->want_body)
    lua_pushlstring(L, h->body.data ? h->body.data : "", h->body.len);
  else
    lua_pushnumber(L, (lua_Number)h->req.resp_length);
  return 2;
}

static void http_done(mkv_upreq_t *r, int err) {
  http_op_t *h = r->data;
  task_t *t = h->op.task;
  http_push(t->T, h, err);
  http_op_free(h);
  mkv__task_resume(t);
}

static void http_cancel(op_t *op) {
  http_op_t *h = (http_op_t *)op;
  mkv_upreq_cancel(&h->req); /* done runs later with ECANCELED */
}

/* mkv.http(method, url [, timeout_s]) -> status, body (GET) or content length (HEAD,
 * DELETE: -1 when none) | nil, msg, code. Bodies are for listings: at most 256 MB. */
static int l_http(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  const char *m = luaL_checkstring(L, 1);
  size_t ulen;
  const char *url = luaL_checklstring(L, 2, &ulen);
  double timeout = luaL_optnumber(L, 3, a->cfg->limits.volume_timeout_ms / 1000.0);
  mkv_up_method_t method;
  if (strcmp(m, "GET") == 0)
    method = MKV_UP_GET;
  else if (strcmp(m, "HEAD") == 0)
    method = MKV_UP_HEAD;
  else if (strcmp(m, "DELETE") == 0)
    method = MKV_UP_DELETE;
  else
    return luaL_error(L, "mkv.http: method must be GET, HEAD or DELETE");
  http_op_t *h = mkv_calloc(1, sizeof(*h));
  mkv_upreq_init(&h->req);
  mkv_buf_init(&h->body);
  if (split_url(url, ulen, &h->req.host, &h->req.path) != 0) {
    http_op_free(h);
    return luaL_error(L, "mkv.http: bad URL %s", url);
  }
  if (method == MKV_UP_DELETE && h->req.path.data[h->req.path.len - 1] == '/') {
    /* nginx deletes a whole directory for a path ending in '/' (library-facts §6.2). */
    http_op_free(h);
    return luaL_error(L, "mkv.http: refusing to DELETE a directory: %s", url);
  }
  h->op.cancel = http_cancel;
  h->want_body = method == MKV_UP_GET;
  h->req.data = h;
  h->req.method = method;
  h->req.timeout_ms = timeout * 1000;
  h->req.done = http_done;
  h->req.on_body = http_on_body;
  int rc = mkv_upstream_start(a->up, &h->req);
  if (rc != 0) {
    int n = http_push(L, h, rc);
    http_op_free(h);
    return n;
  }
  mkv__task_park(t, &h->op, OP_HTTP);
  return lua_yield(L, 0);
}

/* ---- transfers: mkv.copy and mkv.md5_url ---- */

struct xfer_s {
  op_t op;
  mkv_admin_t *a;
  int waiting_start; /* held back by the bandwidth cap before it began */
  mkv_upreq_t src;
  mkv_upreq_t dst;
  int has_dst, dst_started, src_done, dst_done;
  int src_err, dst_err;
  int paused_flow, paused_bw;
  size_t inflight;
  int chunks_live, finished;
  int64_t bytes;
  mkv_md5_stream_t *md5;
  mkv_chunk_t *cur;
};

static void xfer_maybe_free(xfer_t *x) {
  if (!x->finished || x->chunks_live > 0) return;
  mkv_upreq_free(&x->src);
  mkv_upreq_free(&x->dst);
  mkv_md5_stream_free(x->md5);
  mkv_chunk_free(x->cur);
  free(x);
}

/* The one push of a transfer's results: size, md5hex; or nil, msg, code. The first
 * failure in the order below names what went wrong. */
static int xfer_push(lua_State *L, xfer_t *x) {
  int dst_failed = x->has_dst && x->dst_done &&
                   (x->dst_err || (x->dst.status != 201 && x->dst.status != 204));
  if (dst_failed && x->dst_err) return mkv__push_error(L, x->dst_err);
  if (dst_failed) {
    lua_pushnil(L);
    lua_pushfstring(L, "destination answered %d", x->dst.status);
    lua_pushliteral(L, "ESTATUS");
    return 3;
  }
  /* A destination that could not start cancelled the source: its error is the one. */
  if (x->has_dst && !x->dst_started && x->dst_err) return mkv__push_error(L, x->dst_err);
  if (x->src_err) return mkv__push_error(L, x->src_err);
  if (x->src.status != 200) {
    lua_pushnil(L);
    lua_pushfstring(L, "source answered %d", x->src.status);
    if (x->src.status == 404)
      lua_pushliteral(L, "ENOENT");
    else
      lua_pushliteral(L, "ESTATUS");
    return 3;
  }
  if (x->has_dst && !x->dst_started) return mkv__push_error(L, UV_EINVAL);
  if (x->src.resp_length >= 0 && x->bytes != x->src.resp_length) {
    lua_pushnil(L);
    lua_pushliteral(L, "short read from the source");
    lua_pushliteral(L, "EPROTO");
    return 3;
  }
  unsigned char md[MKV_MD5_LEN];
  char hex[MKV_MD5_HEX_LEN + 1];
  mkv_md5_stream_final(x->md5, md);
  mkv_hex(md, MKV_MD5_LEN, hex);
  lua_pushnumber(L, (lua_Number)x->bytes);
  lua_pushstring(L, hex);
  return 2;
}

/* Completes a parked transfer: results on its task's stack, the transfer freed once its
 * chunks are released. `later`: resume on the next turn (a completion reached from the
 * bandwidth timer's walk over its waiters), not now. */
static void xfer_finish(xfer_t *x, int later) {
  task_t *t = x->op.task;
  bw_forget(x->a, &x->op);
  xfer_push(t->T, x);
  x->finished = 1;
  xfer_maybe_free(x);
  if (later)
    mkv__task_schedule(t);
  else
    mkv__task_resume(t);
}

static void xfer_maybe_complete(xfer_t *x) {
  if (!x->src_done) return;
  if (x->has_dst && x->dst_started && !x->dst_done) return;
  xfer_finish(x, 0);
}

static void xfer_chunk_released(mkv_chunk_t *ch) {
  xfer_t *x = ch->data;
  x->inflight -= ch->len;
  x->chunks_live--;
  if (x->paused_flow && x->inflight <= COPY_LOW && !x->finished) {
    x->paused_flow = 0;
    if (!x->paused_bw && !x->src_done) mkv_upreq_resume(&x->src);
  }
  xfer_maybe_free(x);
}

static void xfer_dst_done(mkv_upreq_t *r, int err) {
  xfer_t *x = r->data;
  x->dst_done = 1;
  x->dst_err = err;
  if (!x->src_done && (err || (r->status != 201 && r->status != 204)))
    mkv_upreq_cancel(&x->src);
  xfer_maybe_complete(x);
}

static void xfer_flush(xfer_t *x) {
  mkv_chunk_t *ch = x->cur;
  if (ch == NULL || ch->len == 0) return;
  x->cur = NULL;
  x->inflight += ch->len;
  x->chunks_live++;
  mkv_upreq_write(&x->dst, ch);
}

static void xfer_src_headers(mkv_upreq_t *r) {
  xfer_t *x = r->data;
  if (!x->has_dst || r->status != 200) return;
  /* The destination gets exactly what the source announces; a chunked source (no
   * length) is forwarded chunked. */
  x->dst.content_length = r->resp_length;
  int rc = mkv_upstream_start(x->a->up, &x->dst);
  if (rc == 0) {
    x->dst_started = 1;
  } else {
    x->dst_err = rc;
    mkv_upreq_cancel(r);
  }
}

static int xfer_src_body(mkv_upreq_t *r, const char *at, size_t len) {
  xfer_t *x = r->data;
  size_t total = len;
  mkv_md5_stream_update(x->md5, at, len);
  x->bytes += (int64_t)len;
  x->a->bytes += len;
  int pause = 0;
  if (x->has_dst && x->dst_started && !x->dst_done) {
    while (len > 0) {
      if (x->cur == NULL) x->cur = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, xfer_chunk_released, x);
      size_t n = MKV_MIN(len, MKV_CHUNK_POOLED - x->cur->len);
      memcpy(x->cur->bytes + x->cur->len, at, n);
      x->cur->len += n;
      at += n;
      len -= n;
      if (x->cur->len == MKV_CHUNK_POOLED) xfer_flush(x);
    }
    xfer_flush(x);
    if (x->inflight > COPY_HIGH) {
      x->paused_flow = 1;
      pause = 1;
    }
  }
  if (bw_take(x->a, &x->op, total, x->paused_bw)) {
    x->paused_bw = 1;
    pause = 1;
  }
  return pause;
}

static void xfer_src_done(mkv_upreq_t *r, int err) {
  xfer_t *x = r->data;
  x->src_done = 1;
  x->src_err = err;
  if (x->has_dst && x->dst_started && !x->dst_done) {
    if (err == 0 && r->status == 200)
      mkv_upreq_end(&x->dst);
    else
      mkv_upreq_cancel(&x->dst);
  }
  xfer_maybe_complete(x);
}

/* Starts the source request. Returns 0, or the error of a start that failed (nothing
 * was sent, no callback will run). */
static int xfer_begin(xfer_t *x) {
  int rc = mkv_upstream_start(x->a->up, &x->src);
  if (rc != 0) {
    x->src_done = 1;
    x->src_err = rc;
  }
  return rc;
}

static void xfer_resume_source(xfer_t *x) {
  if (x->waiting_start) { /* the cap let it begin: a failure to start completes it */
    x->waiting_start = 0;
    if (xfer_begin(x) != 0) xfer_finish(x, 1);
    return;
  }
  x->paused_bw = 0;
  if (!x->paused_flow && !x->src_done) mkv_upreq_resume(&x->src);
}

static void xfer_cancel(op_t *op) {
  xfer_t *x = (xfer_t *)op;
  if (x->waiting_start) { /* never started: complete it here */
    x->waiting_start = 0;
    x->src_done = 1;
    x->src_err = UV_ECANCELED;
    xfer_finish(x, 1);
    return;
  }
  if (!x->src_done) mkv_upreq_cancel(&x->src);
  if (x->has_dst && x->dst_started && !x->dst_done) mkv_upreq_cancel(&x->dst);
}

/* mkv.copy(src_url, dst_url) -> size, md5hex | nil, msg, code: streams a value from one
 * volume to another (GET piped into PUT, never whole in memory), hashing it on the way.
 * mkv.md5_url(url) -> size, md5hex: the same without a destination. */
static int start_xfer(lua_State *L, int with_dst) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  size_t slen, dlen = 0;
  const char *src = luaL_checklstring(L, 1, &slen);
  const char *dst = with_dst ? luaL_checklstring(L, 2, &dlen) : NULL;
  xfer_t *x = mkv_calloc(1, sizeof(*x));
  x->a = a;
  x->op.cancel = xfer_cancel;
  mkv_upreq_init(&x->src);
  mkv_upreq_init(&x->dst);
  x->md5 = mkv_md5_stream_new();
  x->has_dst = with_dst;
  if (split_url(src, slen, &x->src.host, &x->src.path) != 0 ||
      (with_dst && split_url(dst, dlen, &x->dst.host, &x->dst.path) != 0)) {
    x->finished = 1;
    xfer_maybe_free(x);
    return luaL_error(L, "mkv.%s: bad URL", with_dst ? "copy" : "md5_url");
  }
  double timeout = a->cfg->limits.volume_timeout_ms;
  x->src.data = x;
  x->src.method = MKV_UP_GET;
  x->src.timeout_ms = timeout;
  x->src.inactivity = 1; /* a whole value may take long: time out only when it stalls */
  x->src.on_headers = xfer_src_headers;
  x->src.on_body = xfer_src_body;
  x->src.done = xfer_src_done;
  x->dst.data = x;
  x->dst.method = MKV_UP_PUT;
  x->dst.timeout_ms = timeout;
  x->dst.done = xfer_dst_done;
  /* The cap is an average: bytes already sent over it are a debt that new transfers
   * wait out (a small value goes in one read, which pausing alone cannot slow). */
  if (a->opts.bandwidth > 0) {
    bw_refill(a);
    if (a->tokens < 0) {
      x->waiting_start = 1;
      bw_wait(a, &x->op);
      mkv__task_park(t, &x->op, OP_XFER);
      return lua_yield(L, 0);
    }
  }
  if (xfer_begin(x) != 0) { /* an early error: the results now, no yield */
    int n = xfer_push(L, x);
    x->finished = 1;
    xfer_maybe_free(x);
    return n;
  }
  mkv__task_park(t, &x->op, OP_XFER);
  return lua_yield(L, 0);
}

static int l_copy(lua_State *L) {
  return start_xfer(L, 1);
}

static int l_md5_url(lua_State *L) {
  return start_xfer(L, 0);
}

const luaL_Reg mkv__admin_xfer_funcs[] = {
    {"http", l_http}, {"copy", l_copy}, {"md5_url", l_md5_url}, {NULL, NULL},
};
