/* server.c: connections -- accept (and running out of fds), read, execute the parser,
 * keep-alive and pipelining, timeouts, lingering close, drain. What a request may be
 * is server_parse.c's; answers and writes are server_reply.c's (server_int.h).
 *
 * One exchange at a time per connection. The parser pauses in exactly one place,
 * on_message_complete, which serialises pipelined requests: the unparsed rest of the
 * read is kept in the connection and replayed once the response is out. Backpressure
 * on a request body stops the socket (uv_read_stop), never the parser; the read
 * buffer is one per worker, since parsing consumes it before the next read. */
#include "mkv/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/text.h"
#include "mkv/worker.h"
#include "server_int.h"

static _Thread_local char worker_readbuf[65536];

static void conn_execute(mkv_conn_t *c, const char *data, size_t len);
static void on_timer(uv_timer_t *t);

void mkv__conn_arm(mkv_conn_t *c, double ms) {
  uv_timer_start(&c->timer, on_timer, ms < 1 ? 1 : (uint64_t)ms, 0);
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

void mkv__conn_close(mkv_conn_t *c) {
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
    mkv__conn_close(c);
    return;
  }
  if (nread > 0) mkv__conn_arm(c, LINGER_IDLE_MS);
}

static void on_shutdown(uv_shutdown_t *r, int status) {
  mkv_conn_t *c = r->data;
  if (status < 0 && !c->closing) mkv__conn_close(c);
}

/* The end of a connection whose last answer is out: a lingering close when the client
 * may still be sending (see LINGER_MAX_MS), else a plain one. */
void mkv__conn_end(mkv_conn_t *c) {
  if (c->closing || c->state == S_LINGER) return;
  if (!c->linger || c->server->draining) {
    mkv__conn_close(c);
    return;
  }
  conn_detach_req(c);
  c->state = S_LINGER;
  c->linger_until_ns = mkv_now_ns() + (uint64_t)LINGER_MAX_MS * 1000000u;
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    mkv__conn_close(c);
    return;
  }
  if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
  if (uv_read_start((uv_stream_t *)&c->tcp, linger_alloc, on_linger_read) != 0) {
    mkv__conn_close(c);
    return;
  }
  mkv__conn_arm(c, LINGER_IDLE_MS);
}

static void on_timer(uv_timer_t *t) {
  mkv_conn_t *c = t->data;
  if (c->state == S_LINGER) { /* the client stopped sending: the close can be clean now */
    mkv__conn_close(c);
    return;
  }
  if (c->state == S_WAITING) {
    if (c->writes_pending == 0) return;
    MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: client not reading its response");
    mkv__conn_close(c);
    return;
  }
  if (c->state == S_HEADERS || c->state == S_BODY) {
    MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: client too slow (%s)",
                        c->state == S_HEADERS ? "headers" : "body");
    if (c->req && !c->req->responded && c->state == S_HEADERS) {
      c->in_execute = 1;
      mkv__conn_reject(c, 408, "request timeout");
      c->in_execute = 0;
      if (c->writes_pending == 0) mkv__conn_close(c);
      return;
    }
  }
  mkv__conn_close(c);
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

static void conn_execute(mkv_conn_t *c, const char *data, size_t len) {
  c->in_execute = 1;
  c->stop = 0;
  c->cur_buf = data;
  if (c->own_chunked && c->state == S_BODY) { /* a chunked body: mkv's decoder */
    mkv__chunked_execute(c, data, len);
    c->in_execute = 0;
    if (c->closing) return;
    if (c->req && c->api_engaged) c->req->handler->body_flush(c->req);
    if (c->want_close && c->writes_pending == 0) mkv__conn_end(c);
    return;
  }
  llhttp_errno_t e = HPE_OK;
  if (c->state == S_IDLE && (c->mbuf_len || !c->ext_method)) {
    /* The start of a request: a method only mkv knows goes to llhttp as one it knows. */
    char joined[sizeof(c->mbuf) + 64];
    if (c->mbuf_len) { /* the first bytes came in an earlier read */
      size_t take = MKV_MIN(len, sizeof(joined) - c->mbuf_len);
      memcpy(joined, c->mbuf, c->mbuf_len);
      memcpy(joined + c->mbuf_len, data, take);
      size_t jl = c->mbuf_len + take, skip = 0;
      const char *as = NULL;
      int r = mkv__ext_method(c, joined, jl, &as, &skip);
      if (r < 0 && take == len) { /* still a prefix: wait for more */
        memcpy(c->mbuf, joined, MKV_MIN(jl, sizeof(c->mbuf)));
        c->mbuf_len = MKV_MIN(jl, sizeof(c->mbuf));
        c->in_execute = 0;
        return;
      }
      size_t held = c->mbuf_len;
      c->mbuf_len = 0;
      /* what was held, then this read: fed as if it had come whole */
      if (r == 1) {
        e = llhttp_execute(&c->parser, as, strlen(as));
        if (e == HPE_OK && skip < held) e = llhttp_execute(&c->parser, c->mbuf + skip, held - skip);
        if (e == HPE_OK) {
          size_t from = skip > held ? skip - held : 0;
          e = llhttp_execute(&c->parser, data + from, len - from);
        }
      } else {
        e = llhttp_execute(&c->parser, c->mbuf, held);
        if (e == HPE_OK) e = llhttp_execute(&c->parser, data, len);
      }
      goto executed;
    }
    size_t skip = 0;
    const char *as = NULL;
    int r = mkv__ext_method(c, data, len, &as, &skip);
    if (r < 0 && len < sizeof(c->mbuf)) {
      memcpy(c->mbuf, data, len);
      c->mbuf_len = len;
      c->in_execute = 0;
      return;
    }
    if (r == 1) {
      e = llhttp_execute(&c->parser, as, strlen(as));
      if (e == HPE_OK) e = llhttp_execute(&c->parser, data + skip, len - skip);
      goto executed;
    }
  }
  e = llhttp_execute(&c->parser, data, len);
executed:
  if (e == HPE_PAUSED && c->own_chunked && c->state == S_BODY && !c->closing) {
    /* llhttp stopped at the end of a chunked request's headers: the rest is body. */
    const char *pos = llhttp_get_error_pos(&c->parser);
    size_t used = (size_t)(pos - data);
    update_carry(c, data, used);
    if (used < len) mkv__chunked_execute(c, pos, len - used);
    c->in_execute = 0;
    if (c->closing) return;
    if (c->req && c->api_engaged) c->req->handler->body_flush(c->req);
    if (c->want_close && c->writes_pending == 0) mkv__conn_end(c);
    return;
  }
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
    if (c->want_close && c->writes_pending == 0) mkv__conn_end(c);
    return;
  }
  mkv__request_failed(c, e, data, len);
  if (c->want_close && c->writes_pending == 0) mkv__conn_end(c);
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
  mkv__conn_close(c);
}

/* limits.body_min_rate: a body read slower than the minimum over a 10 s window fails
 * as a broken upload does (408, the connection closed, the API's abort cleans up) --
 * else a client trickling bytes would hold the key's lock and the volume connections
 * as long as it liked (the body timeout only sees a complete stall). The window
 * restarts whenever mkv pauses the body (the volumes are slower: not the client's
 * fault). 1 when the request was failed. */
#define RATE_WINDOW_MS 10000
static int body_too_slow(mkv_conn_t *c, size_t n) {
  double min = c->server->w->cfg->limits.body_min_rate;
  if (min <= 0) return 0;
  uint64_t now = mkv_now_ms();
  if (c->rate_since_ms == 0) {
    c->rate_since_ms = now;
    c->rate_bytes = 0;
  }
  c->rate_bytes += n;
  uint64_t span = now - c->rate_since_ms;
  if (span < RATE_WINDOW_MS) return 0;
  if ((double)c->rate_bytes * 1000.0 / (double)span >= min) {
    c->rate_since_ms = now;
    c->rate_bytes = 0;
    return 0;
  }
  mkv_ctr_add(&c->server->w->metrics->slow_bodies, 1);
  char why[160];
  snprintf(why, sizeof(why), "request body too slow: %.0f bytes/s over %.0f s, under "
           "limits.body_min_rate (%.0f bytes/s)", (double)c->rate_bytes * 1000.0 / (double)span,
           (double)span / 1000.0, min);
  mkv__conn_reject(c, 408, why);
  if (c->writes_pending == 0) mkv__conn_end(c);
  return 1;
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
      mkv__conn_close(c);
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
  if (c->state == S_BODY && !c->body_paused) {
    mkv__conn_arm(c, c->server->w->cfg->limits.body_timeout_ms);
    if (body_too_slow(c, (size_t)nread)) return;
  }
  conn_execute(c, buf->base, (size_t)nread);
  if (!c->closing) mkv__conn_advance(c);
}

void mkv__conn_start_reading(mkv_conn_t *c) {
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
void mkv__conn_advance(mkv_conn_t *c) {
  for (;;) {
    if (c->closing || c->in_execute) return;
    if (c->req) {
      if (!(c->msg_complete && c->response_done)) break; /* the exchange goes on */
      if (c->close_after || !c->keepalive || c->server->draining) {
        c->want_close = 1;
        if (c->writes_pending == 0) mkv__conn_end(c);
        return;
      }
      mkv_req_t *req = c->req;
      c->req = NULL;
      req->conn = NULL;
      mkv_req_unref(req);
      c->msg_complete = c->response_done = 0;
      c->body_paused = 0; /* a resume may never come once the request is over */
      c->rate_since_ms = 0;
      c->state = S_IDLE;
      if (c->own_chunked) { /* llhttp stopped at its headers: it starts afresh */
        c->own_chunked = 0;
        llhttp_init(&c->parser, HTTP_REQUEST, mkv__request_settings());
        c->parser.data = c;
      } else {
        llhttp_resume(&c->parser);
      }
      mkv__conn_arm(c, c->server->w->cfg->limits.idle_timeout_ms);
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
  if (!c->closing && !c->want_close && !c->msg_complete && !c->body_paused) mkv__conn_start_reading(c);
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
  MKV_LOG_RATELIMITED(MKV_LOG_WARN, "out of file descriptors: %d %s refused%s", refused,
                      MKV_PLURAL(refused, "connection", "connections"),
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
    mkv__conn_close(c);
    return;
  }
  conn_serve(c);
}

int mkv_server_adopt(mkv_server_t *s, int fd) {
  mkv_conn_t *c = conn_new(s);
  int rc = uv_tcp_open(&c->tcp, fd);
  if (rc != 0) {
    mkv__conn_close(c);
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
    mkv__conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  /* Always: one getpeername per connection, so that a reload that turns the access log on
   * finds the address of connections already open. */
  if (s->h->public_api) peer_name(c);
  llhttp_init(&c->parser, HTTP_REQUEST, mkv__request_settings());
  c->parser.data = c;
  c->keepalive = 1;
  c->state = S_IDLE;
  mkv__conn_arm(c, cfg->limits.idle_timeout_ms);
  mkv__conn_start_reading(c);
}

/* ---- server ---- */

mkv_server_t *mkv_server_new(mkv_worker_t *w, const mkv_handler_t *h) {
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
  mkv_warn("drain timeout: closing %d %s with requests still in flight", s->nconns,
           MKV_PLURAL(s->nconns, "connection", "connections"));
  for (mkv_conn_t *c = s->conns, *next; c; c = next) {
    next = c->next;
    mkv__conn_close(c);
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
      mkv__conn_close(c);
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

int mkv_listen_hostport(const char *what, const char *spec, int backlog, char *bound,
                        size_t boundlen, char **err) {
  char host[256], port[16];
  if (mkv_hostport_split(spec, host, sizeof(host), port, sizeof(port)) != 0) {
    *err = mkv_sprintf("%s %s is not host:port", what, spec);
    return -1;
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    *err = mkv_sprintf("%s %s: %s", what, spec, gai_strerror(rc));
    return -1;
  }
  int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
    *err = mkv_sprintf("cannot listen on %s %s: %s", what, spec, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return -1;
  }
  freeaddrinfo(res);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  char ip[INET6_ADDRSTRLEN];
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
    snprintf(bound, boundlen, "[%s]:%d", ip, ntohs(a6->sin6_port));
  } else {
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
    snprintf(bound, boundlen, "%s:%d", ip, ntohs(a4->sin_port));
  }
  return fd;
}
