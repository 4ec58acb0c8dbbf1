/* testserver.h: a tiny in-process HTTP/1.1 server on 127.0.0.1 for the upstream and
 * fan-out tests. It runs on the test's own loop, parses requests with llhttp, records
 * what it received (raw bytes included) and answers with canned responses; switches
 * make it misbehave the ways volumes do (never answer, answer early, close an idle
 * connection, read slowly). Test code only. */
#ifndef MKV_TESTSERVER_H
#define MKV_TESTSERVER_H

#include "testutil.h"

#include <llhttp.h>

#include "mkv/common.h"

typedef struct ts_server_s ts_server_t;
typedef struct ts_delay_s ts_delay_t;

typedef struct ts_conn_s {
  uv_tcp_t tcp;
  ts_server_t *srv;
  struct ts_conn_s *next;
  llhttp_t parser;
  int nreq;     /* requests begun on this connection */
  int answered; /* the current request has its response */
  int closing;
  ts_delay_t *delay; /* an answer waiting for answer_delay_ms */
  char method[16];
  mkv_buf_t url, body;
} ts_conn_t;

struct ts_delay_s {
  uv_timer_t timer;
  ts_conn_t *c;
};

struct ts_server_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  llhttp_settings_t settings;
  int port;
  char host[32]; /* "127.0.0.1:<port>" */
  ts_conn_t *conns;
  int accepted, open_conns, headers_seen, requests, answers;

  /* Behaviour, set by the test. */
  int status;             /* default 200 */
  int put_status;         /* a PUT's, when set (a volume whose disk is full: 500) */
  long long resp_clen;    /* Content-Length sent; -1: the length of resp_body */
  const char *resp_body;  /* not sent to a HEAD */
  const char *resp_extra; /* extra header lines, each ending in \r\n */
  int resp_chunked;       /* send resp_body with chunked encoding */
  const char *resp_raw;   /* if set, sent as the whole response instead */
  int no_answer;
  int answer_on_headers;  /* answer as soon as the headers are in (before the body) */
  int stop_reading_after_answer;
  int close_on_nth_request; /* close, unanswered, when a connection gets its Nth request */
  int close_after_answer;
  int answer_delay_ms; /* answer a whole request this long after it arrived (a volume
                          still storing it) */
  int paused; /* do not read */

  /* Records. */
  mkv_buf_t raw; /* every byte received, all connections in arrival order */
  mkv_buf_t last_url, last_body;
  char last_method[16];
  char readbuf[65536];
};

static inline void ts_conn_closed(uv_handle_t *h) {
  ts_conn_t *c = h->data;
  mkv_buf_free(&c->url);
  mkv_buf_free(&c->body);
  free(c);
}

static inline void ts_delay_closed(uv_handle_t *h) {
  free(h->data);
}

static inline void ts_conn_close(ts_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  if (c->delay) { /* the answer is not sent: the peer went away first */
    uv_close((uv_handle_t *)&c->delay->timer, ts_delay_closed);
    c->delay = NULL;
  }
  ts_server_t *s = c->srv;
  for (ts_conn_t **pp = &s->conns; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  s->open_conns--;
  uv_close((uv_handle_t *)&c->tcp, ts_conn_closed);
}

typedef struct ts_write_s {
  uv_write_t w;
  ts_conn_t *c;
  int close_after;
  char *data;
} ts_write_t;

static inline void ts_write_cb(uv_write_t *w, int status) {
  ts_write_t *tw = (ts_write_t *)w;
  if (tw->close_after && status != UV_ECANCELED) ts_conn_close(tw->c);
  free(tw->data);
  free(tw);
}

static inline void ts_answer(ts_conn_t *c) {
  ts_server_t *s = c->srv;
  c->answered = 1;
  s->answers++;
  const char *body = s->resp_body ? s->resp_body : "";
  int is_head = strcmp(c->method, "HEAD") == 0;
  mkv_buf_t r;
  mkv_buf_init(&r);
  if (s->resp_raw) {
    mkv_buf_adds(&r, s->resp_raw);
    goto send;
  }
  int status = s->put_status && strcmp(c->method, "PUT") == 0 ? s->put_status : s->status;
  mkv_buf_addf(&r, "HTTP/1.1 %d Canned\r\n", status ? status : 200);
  if (s->resp_chunked)
    mkv_buf_adds(&r, "Transfer-Encoding: chunked\r\n");
  else
    mkv_buf_addf(&r, "Content-Length: %lld\r\n",
                 s->resp_clen >= 0 ? s->resp_clen : (long long)strlen(body));
  if (s->resp_extra) mkv_buf_adds(&r, s->resp_extra);
  mkv_buf_adds(&r, "\r\n");
  if (!is_head) {
    if (s->resp_chunked) {
      size_t n = strlen(body);
      for (size_t i = 0; i < n; i += 7) { /* several small chunks */
        size_t k = MKV_MIN(7, n - i);
        mkv_buf_addf(&r, "%zx\r\n", k);
        mkv_buf_add(&r, body + i, k);
        mkv_buf_adds(&r, "\r\n");
      }
      mkv_buf_adds(&r, "0\r\n\r\n");
    } else {
      mkv_buf_adds(&r, body);
    }
  }
send:;
  ts_write_t *tw = calloc(1, sizeof(*tw));
  tw->c = c;
  tw->close_after = s->close_after_answer;
  tw->data = r.data;
  uv_buf_t b = uv_buf_init(r.data, (unsigned)r.len);
  ASSERT_EQ(uv_write(&tw->w, (uv_stream_t *)&c->tcp, &b, 1, ts_write_cb), 0);
  if (s->stop_reading_after_answer) uv_read_stop((uv_stream_t *)&c->tcp);
}

static inline int ts_on_message_begin(llhttp_t *p) {
  ts_conn_t *c = p->data;
  c->nreq++;
  c->answered = 0;
  mkv_buf_reset(&c->url);
  mkv_buf_reset(&c->body);
  if (c->srv->close_on_nth_request && c->nreq == c->srv->close_on_nth_request) {
    ts_conn_close(c);
    return -1; /* stop parsing: the connection is gone */
  }
  return 0;
}

static inline int ts_on_url(llhttp_t *p, const char *at, size_t len) {
  ts_conn_t *c = p->data;
  mkv_buf_add(&c->url, at, len);
  return 0;
}

static inline int ts_on_headers_complete(llhttp_t *p) {
  ts_conn_t *c = p->data;
  snprintf(c->method, sizeof(c->method), "%s", llhttp_method_name(llhttp_get_method(p)));
  c->srv->headers_seen++;
  if (c->srv->answer_on_headers && !c->srv->no_answer) ts_answer(c);
  return 0;
}

static inline int ts_on_body(llhttp_t *p, const char *at, size_t len) {
  ts_conn_t *c = p->data;
  mkv_buf_add(&c->body, at, len);
  return 0;
}

static inline void ts_delay_fire(uv_timer_t *t) {
  ts_delay_t *d = t->data;
  ts_conn_t *c = d->c;
  c->delay = NULL;
  uv_close((uv_handle_t *)&d->timer, ts_delay_closed);
  ts_answer(c);
}

static inline int ts_on_message_complete(llhttp_t *p) {
  ts_conn_t *c = p->data;
  ts_server_t *s = c->srv;
  s->requests++;
  mkv_buf_set(&s->last_url, c->url.data, c->url.len);
  mkv_buf_set(&s->last_body, c->body.data, c->body.len);
  snprintf(s->last_method, sizeof(s->last_method), "%s", c->method);
  if (c->answered || s->no_answer) return 0;
  if (s->answer_delay_ms > 0 && c->delay == NULL) {
    ts_delay_t *d = calloc(1, sizeof(*d));
    d->c = c;
    ASSERT_EQ(uv_timer_init(s->loop, &d->timer), 0);
    d->timer.data = d;
    c->delay = d;
    ASSERT_EQ(uv_timer_start(&d->timer, ts_delay_fire, (uint64_t)s->answer_delay_ms, 0), 0);
    return 0;
  }
  ts_answer(c);
  return 0;
}

static inline void ts_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  ts_conn_t *c = h->data;
  buf->base = c->srv->readbuf;
  buf->len = sizeof(c->srv->readbuf);
}

static inline void ts_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  ts_conn_t *c = st->data;
  if (nread == 0 || c->closing) return;
  if (nread < 0) {
    ts_conn_close(c);
    return;
  }
  mkv_buf_add(&c->srv->raw, buf->base, (size_t)nread);
  llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (c->closing) return;
  if (e != HPE_OK) {
    fprintf(stderr, "test server: bad request: %s\n", llhttp_errno_name(e));
    ts_conn_close(c);
  }
}

static inline void ts_on_connection(uv_stream_t *l, int status) {
  ts_server_t *s = l->data;
  ASSERT_EQ(status, 0);
  ts_conn_t *c = calloc(1, sizeof(*c));
  c->srv = s;
  mkv_buf_init(&c->url);
  mkv_buf_init(&c->body);
  ASSERT_EQ(uv_tcp_init(s->loop, &c->tcp), 0);
  c->tcp.data = c;
  ASSERT_EQ(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
  llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
  c->parser.data = c;
  c->next = s->conns;
  s->conns = c;
  s->accepted++;
  s->open_conns++;
  if (!s->paused) uv_read_start((uv_stream_t *)&c->tcp, ts_alloc, ts_read);
}

/* Listens on 127.0.0.1:<free port>. rcvbuf > 0 shrinks the receive buffer of every
 * accepted socket (it is inherited from the listener), so a paused server really
 * stops the sender. */
static inline void ts_start(ts_server_t *s, uv_loop_t *loop, int rcvbuf) {
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->resp_clen = -1;
  mkv_buf_init(&s->raw);
  mkv_buf_init(&s->last_url);
  mkv_buf_init(&s->last_body);
  llhttp_settings_init(&s->settings);
  s->settings.on_message_begin = ts_on_message_begin;
  s->settings.on_url = ts_on_url;
  s->settings.on_headers_complete = ts_on_headers_complete;
  s->settings.on_body = ts_on_body;
  s->settings.on_message_complete = ts_on_message_complete;
  ASSERT_EQ(uv_tcp_init(loop, &s->listener), 0);
  s->listener.data = s;
  struct sockaddr_in a;
  ASSERT_EQ(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  ASSERT_EQ(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
  if (rcvbuf > 0) {
    int v = rcvbuf;
    ASSERT_EQ(uv_recv_buffer_size((uv_handle_t *)&s->listener, &v), 0);
  }
  ASSERT_EQ(uv_listen((uv_stream_t *)&s->listener, 128, ts_on_connection), 0);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  ASSERT_EQ(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len), 0);
  s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  snprintf(s->host, sizeof(s->host), "127.0.0.1:%d", s->port);
}

static inline void ts_pause(ts_server_t *s) {
  s->paused = 1;
  for (ts_conn_t *c = s->conns; c; c = c->next) uv_read_stop((uv_stream_t *)&c->tcp);
}

static inline void ts_resume(ts_server_t *s) {
  s->paused = 0;
  for (ts_conn_t *c = s->conns; c; c = c->next)
    uv_read_start((uv_stream_t *)&c->tcp, ts_alloc, ts_read);
}

/* Closes every accepted connection now (the fd is closed at once: the peer sees EOF). */
static inline void ts_close_conns(ts_server_t *s) {
  while (s->conns) ts_conn_close(s->conns);
}

static inline void ts_stop(ts_server_t *s) {
  ts_close_conns(s);
  uv_close((uv_handle_t *)&s->listener, NULL);
}

/* Frees the records; after the loop has closed the handles. */
static inline void ts_free(ts_server_t *s) {
  mkv_buf_free(&s->raw);
  mkv_buf_free(&s->last_url);
  mkv_buf_free(&s->last_body);
}

/* A loopback port with nothing listening on it. Taken from below the ephemeral range
 * (ip_local_port_range starts at 32768): a port from bind(0) could be picked again as
 * the source port of the test's own connect, which then connects to itself. */
static inline int ts_dead_port(void) {
  unsigned seed = (unsigned)getpid() ^ (unsigned)uv_hrtime();
  for (int tries = 0; tries < 1000; tries++) {
    seed = seed * 1103515245u + 12345u;
    int port = 20000 + (int)((seed >> 8) % 12000);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    if (ok) return port; /* free now, and nothing listens on it */
  }
  ASSERT(!"no free port below 32000");
  return -1;
}

#endif
