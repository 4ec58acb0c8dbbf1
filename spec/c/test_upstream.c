/* test_upstream.c: core/upstream.c -- the keep-alive HTTP client for volumes, against an
 * in-process server (testserver.h) on the same loop. */
#include "testserver.h"

#include <signal.h>

#include "mkv/upstream.h"

typedef struct client_s {
  mkv_upreq_t req;
  int done_calls, err, status;
  int64_t resp_length;
  int in_call; /* set around start/write/cancel: done must not run inside them */
  int early;   /* done ran inside one of those calls */
  int ready_calls;
  mkv_buf_t body; /* GET body slices */
  int pause_body; /* on_body asks to stop after each slice */
  int body_calls;
} client_t;

static void on_done(mkv_upreq_t *r, int err) {
  client_t *c = r->data;
  if (c->in_call) c->early++;
  c->done_calls++;
  c->err = err;
  c->status = r->status;
  c->resp_length = r->resp_length;
}

static void on_ready(mkv_upreq_t *r) {
  client_t *c = r->data;
  c->ready_calls++;
}

static int on_body(mkv_upreq_t *r, const char *at, size_t len) {
  client_t *c = r->data;
  c->body_calls++;
  mkv_buf_add(&c->body, at, len);
  return c->pause_body;
}

static void client_init(client_t *c, mkv_up_method_t m, const char *host, const char *path,
                        double timeout_ms) {
  memset(c, 0, sizeof(*c));
  mkv_upreq_init(&c->req);
  mkv_buf_init(&c->body);
  c->req.data = c;
  c->req.method = m;
  mkv_buf_set(&c->req.host, host, strlen(host));
  mkv_buf_set(&c->req.path, path, strlen(path));
  c->req.timeout_ms = timeout_ms;
  c->req.done = on_done;
  c->req.ready = on_ready;
  c->req.on_body = on_body;
}

static void client_free(client_t *c) {
  mkv_upreq_free(&c->req);
  mkv_buf_free(&c->body);
}

static int start(mkv_upstream_t *up, client_t *c) {
  c->in_call = 1;
  int rc = mkv_upstream_start(up, &c->req);
  c->in_call = 0;
  return rc;
}

/* The world of one test: a loop, its deadline pump, one server, one upstream. */
typedef struct world_s {
  uv_loop_t loop;
  pump_t pump;
  ts_server_t srv;
  mkv_upstream_t *up;
} world_t;

static void world_init(world_t *w, int rcvbuf) {
  signal(SIGPIPE, SIG_IGN); /* as main.c does: a reset peer must not kill the process */
  ASSERT_EQ(uv_loop_init(&w->loop), 0);
  pump_init(&w->pump, &w->loop);
  ts_start(&w->srv, &w->loop, rcvbuf);
  w->up = mkv_upstream_new(&w->loop, 5000);
  ASSERT(w->up != NULL);
}

static void world_finish(world_t *w) {
  mkv_upstream_close(w->up);
  ts_stop(&w->srv);
  pump_close(&w->pump);
  loop_finish(&w->loop);
  ts_free(&w->srv);
}

/* ---- HEAD ---- */

TEST(head_status_and_length) {
  world_t w;
  world_init(&w, 0);
  /* A HEAD response carries the file's Content-Length and no body: the client must
   * not wait for 1234 bytes that never come. */
  w.srv.resp_clen = 1234;
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/sv01/5d/41/aGVsbG8=", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(c.done_calls, 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT_EQ(c.resp_length, 1234);
  ASSERT_EQ(c.early, 0);
  ASSERT_STREQ(w.srv.last_method, "HEAD");
  ASSERT_STREQ(w.srv.last_url.data, "/sv01/5d/41/aGVsbG8=");
  ASSERT(c.req.elapsed_ns > 0);
  /* The request line, Host and User-Agent, as sent. */
  char want[160];
  snprintf(want, sizeof(want), "HEAD /sv01/5d/41/aGVsbG8= HTTP/1.1\r\nHost: %s\r\nUser-Agent: mkv/1\r\n",
           w.srv.host);
  ASSERT(strncmp(w.srv.raw.data, want, strlen(want)) == 0);
  pump_for(&w.pump, 20);
  ASSERT_EQ(c.done_calls, 1);
  client_free(&c);
  world_finish(&w);
}

TEST(head_404_and_no_content_length) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 404;
  w.srv.resp_clen = 0;
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/x", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0); /* a response arrived: err 0, status says what */
  ASSERT_EQ(c.status, 404);
  ASSERT_EQ(c.resp_length, 0);
  client_free(&c);
  world_finish(&w);
}

TEST(keepalive_reuse) {
  world_t w;
  world_init(&w, 0);
  w.srv.resp_clen = 5;
  for (int i = 0; i < 3; i++) {
    client_t c;
    client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
    ASSERT_EQ(start(w.up, &c), 0);
    PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.status, 200);
    ASSERT_EQ(c.early, 0);
    client_free(&c);
  }
  ASSERT_EQ(w.srv.requests, 3);
  ASSERT_EQ(w.srv.accepted, 1); /* one connection, reused */
  world_finish(&w);
}

TEST(idle_connection_closed_by_server_is_detected) {
  world_t w;
  world_init(&w, 0);
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  client_free(&c);

  /* The volume closes the idle connection, and the next request starts before this
   * loop has seen the EOF: the pooled connection must be found dead (MSG_PEEK). */
  ts_close_conns(&w.srv);
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT_EQ(c.done_calls, 1);
  ASSERT_EQ(c.early, 0);
  ASSERT_EQ(w.srv.accepted, 2);
  client_free(&c);
  world_finish(&w);
}

TEST(idle_connection_seen_closing_is_not_reused) {
  world_t w;
  world_init(&w, 0);
  w.srv.close_after_answer = 1;
  for (int i = 0; i < 2; i++) {
    client_t c;
    client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
    ASSERT_EQ(start(w.up, &c), 0);
    PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.status, 200);
    client_free(&c);
    pump_for(&w.pump, 20); /* the client sees the EOF while idle */
  }
  ASSERT_EQ(w.srv.accepted, 2);
  world_finish(&w);
}

TEST(reused_connection_dropped_mid_request_is_retried) {
  world_t w;
  world_init(&w, 0);
  /* The race a peek cannot see: the volume closes the connection just as the next
   * request arrives on it, without a byte of response. A HEAD is retried once on a
   * fresh connection. */
  w.srv.close_on_nth_request = 2;
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  client_free(&c);

  client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT_EQ(c.done_calls, 1);
  ASSERT_EQ(w.srv.accepted, 2);
  ASSERT_EQ(w.srv.requests, 2); /* the first HEAD and the retry */
  client_free(&c);
  world_finish(&w);
}

/* ---- GET ---- */

TEST(get_body_streamed) {
  world_t w;
  world_init(&w, 0);
  w.srv.resp_body = "hello, volume";
  client_t c;
  client_init(&c, MKV_UP_GET, w.srv.host, "/g", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT_EQ(c.resp_length, 13);
  ASSERT(c.body.len == 13 && memcmp(c.body.data, "hello, volume", 13) == 0);
  client_free(&c);

  /* Chunked response bodies arrive decoded, and the connection is reused after. */
  w.srv.resp_chunked = 1;
  w.srv.resp_body = "a chunked body, in pieces of seven";
  client_init(&c, MKV_UP_GET, w.srv.host, "/g", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.resp_length, -1);
  ASSERT(c.body.len == 34 && memcmp(c.body.data, "a chunked body, in pieces of seven", 34) == 0);
  ASSERT_EQ(w.srv.accepted, 1);
  client_free(&c);
  world_finish(&w);
}

TEST(get_pause_and_resume) {
  world_t w;
  world_init(&w, 0);
  enum { LEN = 600000 };
  char *big = malloc(LEN + 1);
  for (int i = 0; i < LEN; i++) big[i] = (char)('a' + i % 26);
  big[LEN] = '\0';
  w.srv.resp_body = big;
  client_t c;
  client_init(&c, MKV_UP_GET, w.srv.host, "/big", 5000);
  c.pause_body = 1; /* stop reading after every slice */
  ASSERT_EQ(start(w.up, &c), 0);
  int pauses = 0;
  while (c.done_calls == 0) {
    int calls = c.body_calls;
    PUMP_UNTIL(&w.pump, c.body_calls > calls || c.done_calls > 0, 10);
    if (c.done_calls) break;
    /* Paused: no more body while the owner does not resume. */
    calls = c.body_calls;
    size_t have = c.body.len;
    pump_for(&w.pump, 5);
    ASSERT_EQ(c.body_calls, calls);
    ASSERT_EQ(c.body.len, have);
    pauses++;
    mkv_upreq_resume(&c.req);
  }
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT(pauses >= 1);
  ASSERT_EQ(c.body.len, (size_t)LEN);
  ASSERT_MEMEQ(c.body.data, big, LEN);
  client_free(&c);

  /* The connection was released with reading on again: it is reused. */
  w.srv.resp_body = "ok";
  client_init(&c, MKV_UP_GET, w.srv.host, "/small", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT(c.body.len == 2 && memcmp(c.body.data, "ok", 2) == 0);
  ASSERT_EQ(w.srv.accepted, 1);
  client_free(&c);
  free(big);
  world_finish(&w);
}

TEST(get_body_until_close) {
  world_t w;
  world_init(&w, 0);
  /* No Content-Length, no chunking: the body ends with the connection. */
  w.srv.resp_raw = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end";
  w.srv.close_after_answer = 1;
  client_t c;
  client_init(&c, MKV_UP_GET, w.srv.host, "/eof", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT(c.body.len == 10 && memcmp(c.body.data, "to the end", 10) == 0);
  client_free(&c);
  world_finish(&w);
}

TEST(garbage_response_is_eproto) {
  world_t w;
  world_init(&w, 0);
  w.srv.resp_raw = "SPDY/9 what\r\n\r\n";
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/g", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, MKV_EPROTO);
  ASSERT_EQ(c.status, 0);
  client_free(&c);
  /* That connection is gone: the next request opens another. */
  w.srv.resp_raw = NULL;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/g", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(w.srv.accepted, 2);
  client_free(&c);
  world_finish(&w);
}

/* ---- PUT ---- */

static int releases[16];
static void count_release(mkv_chunk_t *ch) {
  releases[(intptr_t)ch->data]++;
}

TEST(put_content_length_streams_chunks) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 201;
  static const char *parts[] = {"first part|", "second|", "third and last"};
  size_t total = 0;
  for (int i = 0; i < 3; i++) total += strlen(parts[i]);
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/sv02/5d/41/aGVsbG8=", 5000);
  c.req.content_length = (int64_t)total;
  ASSERT_EQ(start(w.up, &c), 0);
  /* Before the connection is up: queued. */
  c.in_call = 1;
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new(parts[0], strlen(parts[0]), 1, count_release,
                                                  (void *)(intptr_t)0)),
            0);
  c.in_call = 0;
  PUMP_UNTIL(&w.pump, c.ready_calls > 0, 10);
  ASSERT_EQ(c.ready_calls, 1);
  /* Connected: written at once. */
  for (int i = 1; i < 3; i++) {
    c.in_call = 1;
    ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new(parts[i], strlen(parts[i]), 1, count_release,
                                                    (void *)(intptr_t)i)),
              0);
    c.in_call = 0;
  }
  mkv_upreq_end(&c.req);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 201);
  ASSERT_EQ(c.early, 0);
  PUMP_UNTIL(&w.pump, releases[0] + releases[1] + releases[2] == 3, 10);
  pump_for(&w.pump, 20);
  for (int i = 0; i < 3; i++) ASSERT_EQ(releases[i], 1); /* each exactly once */
  ASSERT_EQ(c.ready_calls, 1);
  ASSERT_STREQ(w.srv.last_method, "PUT");
  ASSERT_EQ(w.srv.last_body.len, total);
  ASSERT_MEMEQ(w.srv.last_body.data, "first part|second|third and last", total);
  char want[128];
  snprintf(want, sizeof(want), "Content-Length: %zu\r\n", total);
  ASSERT(strstr(w.srv.raw.data, want) != NULL);
  ASSERT(strstr(w.srv.raw.data, "Transfer-Encoding") == NULL);
  ASSERT_EQ(c.done_calls, 1);
  client_free(&c);
  world_finish(&w);
}

TEST(put_chunked_encoding) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 201;
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/c", 5000);
  c.req.content_length = -1;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("hello", 5, 1, count_release, (void *)0)), 0);
  PUMP_UNTIL(&w.pump, c.ready_calls > 0, 10);
  /* A zero-length slice must not end the body early (a "0" chunk would). */
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("", 0, 1, count_release, (void *)1)), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new(" ", 1, 1, count_release, (void *)2)), 0);
  char big[300];
  memset(big, 'z', sizeof(big));
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new(big, sizeof(big), 1, count_release, (void *)3)),
            0);
  mkv_upreq_end(&c.req);
  mkv_upreq_end(&c.req); /* twice is harmless */
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 201);
  pump_for(&w.pump, 20);
  for (int i = 0; i < 4; i++) ASSERT_EQ(releases[i], 1);

  const char *raw = w.srv.raw.data;
  ASSERT(strstr(raw, "PUT /c HTTP/1.1\r\n") == raw);
  ASSERT(strstr(raw, "Transfer-Encoding: chunked\r\n") != NULL);
  ASSERT(strstr(raw, "Content-Length") == NULL);
  const char *body = strstr(raw, "\r\n\r\n");
  ASSERT(body != NULL);
  body += 4;
  mkv_buf_t want;
  mkv_buf_init(&want);
  mkv_buf_adds(&want, "5\r\nhello\r\n1\r\n \r\n12c\r\n");
  mkv_buf_add(&want, big, sizeof(big));
  mkv_buf_adds(&want, "\r\n0\r\n\r\n");
  size_t got = w.srv.raw.len - (size_t)(body - raw);
  if (got != want.len || memcmp(body, want.data, want.len) != 0)
    fprintf(stderr, "chunked body on the wire: %.*s\n", (int)got, body);
  ASSERT_EQ(got, want.len);
  ASSERT_MEMEQ(body, want.data, want.len);
  ASSERT_EQ(w.srv.last_body.len, 306); /* llhttp decodes it back */
  mkv_buf_free(&want);
  client_free(&c);
  world_finish(&w);
}

TEST(put_connection_reused_after_clean_put) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 201;
  for (int i = 0; i < 2; i++) {
    client_t c;
    client_init(&c, MKV_UP_PUT, w.srv.host, "/r", 5000);
    c.req.content_length = 3;
    ASSERT_EQ(start(w.up, &c), 0);
    ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("abc", 3, 1, NULL, NULL)), 0);
    mkv_upreq_end(&c.req);
    PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.status, 201);
    client_free(&c);
  }
  ASSERT_EQ(w.srv.accepted, 1);
  world_finish(&w);
}

TEST(put_answered_early_is_not_reused) {
  world_t w;
  world_init(&w, 0);
  /* The volume refuses the upload before its body was sent: the connection has an
   * unsent body on it and must not go back to the pool. */
  w.srv.status = 500;
  w.srv.answer_on_headers = 1;
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/e", 5000);
  c.req.content_length = 1000;
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 500);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("x", 1, 1, count_release, (void *)0)),
            UV_ECANCELED); /* done already ran: refused, and the reference dropped */
  ASSERT_EQ(releases[0], 1);
  client_free(&c);

  w.srv.status = 200;
  w.srv.answer_on_headers = 0;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/e", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(w.srv.accepted, 2);
  client_free(&c);
  world_finish(&w);
}

/* ---- failures ---- */

TEST(timeout_marks_suspect) {
  world_t w;
  world_init(&w, 0);
  w.srv.no_answer = 1;
  ASSERT_EQ(mkv_upstream_suspect(w.up, w.srv.host, strlen(w.srv.host)), 0);
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/slow", 200);
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  ASSERT_EQ(c.err, UV_ETIMEDOUT);
  ASSERT_EQ(c.status, 0);
  ASSERT(ms >= 190);                       /* not before its deadline */
  ASSERT(ms < 200 + mkv_test_timeout(1) * 1000); /* nor much after */
  ASSERT_EQ(w.srv.headers_seen, 1);        /* it did reach the server */
  ASSERT_EQ(mkv_upstream_suspect(w.up, w.srv.host, strlen(w.srv.host)), 1);
  pump_for(&w.pump, 20);
  ASSERT_EQ(c.done_calls, 1);
  ASSERT_EQ(c.early, 0);
  client_free(&c);
  world_finish(&w);
}

/* The whole body is sent; the volume never answers. With hold_head (the API's PUTs) the
 * head goes out with the body: written at once at connect time, that still leaves the
 * volume owing its answer. */
static void put_times_out(int hold_head) {
  world_t w;
  world_init(&w, 0);
  w.srv.no_answer = 1;
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/p", 200);
  c.req.hold_head = hold_head;
  c.req.content_length = 3;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("abc", 3, 1, count_release, (void *)0)), 0);
  mkv_upreq_end(&c.req);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ETIMEDOUT);
  ASSERT_EQ(releases[0], 1);
  ASSERT_EQ(mkv_upstream_suspect(w.up, w.srv.host, strlen(w.srv.host)), 1);
  client_free(&c);
  world_finish(&w);
}

TEST(put_inactivity_timeout) {
  put_times_out(0);
}

TEST(put_inactivity_timeout_head_held) {
  put_times_out(1);
}

TEST(put_head_held_until_the_body_on_a_reused_connection) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 201;
  for (int i = 0; i < 3; i++) {
    client_t c;
    client_init(&c, MKV_UP_PUT, w.srv.host, "/h", 2000);
    c.req.hold_head = 1;
    c.req.content_length = i == 2 ? -1 : 5;
    ASSERT_EQ(start(w.up, &c), 0);
    if (i > 0) { /* reused: the head waits for the body, and the volume sees nothing */
      pump_for(&w.pump, 30);
      ASSERT_EQ(w.srv.headers_seen, i);
    }
    if (i < 2) ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("hello", 5, 1, NULL, NULL)), 0);
    mkv_upreq_end(&c.req); /* the third: chunked and empty, head and terminator at once */
    PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
    ASSERT_EQ(c.err, 0);
    ASSERT_EQ(c.status, 201);
    ASSERT_EQ(w.srv.last_body.len, i < 2 ? 5u : 0u);
    client_free(&c);
  }
  ASSERT_EQ(w.srv.accepted, 1);
  ASSERT_EQ(w.srv.requests, 3);
  world_finish(&w);
}

TEST(put_stalled_body_is_not_the_volumes_fault) {
  /* The client stops sending (3 of 10 bytes): nothing is owed by the volume, so its
   * inactivity timer does not run; the server's body_timeout handles the client. */
  world_t w;
  world_init(&w, 0);
  w.srv.no_answer = 1;
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/p", 100);
  c.req.content_length = 10;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("abc", 3, 1, count_release, (void *)0)), 0);
  pump_for(&w.pump, 400);
  ASSERT_EQ(c.done_calls, 0);
  ASSERT_EQ(mkv_upstream_suspect(w.up, w.srv.host, strlen(w.srv.host)), 0);
  mkv_upreq_cancel(&c.req);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECANCELED);
  ASSERT_EQ(releases[0], 1);
  client_free(&c);
  world_finish(&w);
}

TEST(connection_refused) {
  world_t w;
  world_init(&w, 0);
  char host[32];
  snprintf(host, sizeof(host), "127.0.0.1:%d", ts_dead_port());
  client_t c;
  client_init(&c, MKV_UP_HEAD, host, "/x", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(c.done_calls, 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECONNREFUSED);
  ASSERT_EQ(c.early, 0);
  ASSERT_EQ(mkv_upstream_suspect(w.up, host, strlen(host)), 1);
  client_free(&c);

  /* A PUT to it: the queued chunk is released too. */
  client_init(&c, MKV_UP_PUT, host, "/x", 5000);
  c.req.content_length = 1;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("x", 1, 1, count_release, (void *)0)), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECONNREFUSED);
  ASSERT_EQ(releases[0], 1);
  client_free(&c);
  world_finish(&w);
}

TEST(put_on_dropped_reused_connection_is_not_retried) {
  world_t w;
  world_init(&w, 0);
  w.srv.status = 201;
  w.srv.close_on_nth_request = 2;
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/k", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  client_free(&c);
  /* The pooled connection dies under a PUT: its body may be half-sent, so the PUT
   * fails rather than being sent again. */
  client_init(&c, MKV_UP_PUT, w.srv.host, "/k", 5000);
  c.req.content_length = 3;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("abc", 3, 1, count_release, (void *)0)), 0);
  mkv_upreq_end(&c.req);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT(c.err < 0);
  ASSERT_EQ(c.status, 0);
  ASSERT_EQ(releases[0], 1);
  pump_for(&w.pump, 30);
  ASSERT_EQ(c.done_calls, 1);
  ASSERT_EQ(w.srv.accepted, 1); /* no second connection */
  client_free(&c);
  world_finish(&w);
}

TEST(suspect_expires) {
  world_t w;
  world_init(&w, 0);
  mkv_upstream_t *up = mkv_upstream_new(&w.loop, 100); /* suspect for 100 ms */
  char host[32];
  snprintf(host, sizeof(host), "127.0.0.1:%d", ts_dead_port());
  client_t c;
  client_init(&c, MKV_UP_HEAD, host, "/x", 5000);
  ASSERT_EQ(start(up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECONNREFUSED);
  ASSERT_EQ(mkv_upstream_suspect(up, host, strlen(host)), 1);
  pump_for(&w.pump, 150);
  ASSERT_EQ(mkv_upstream_suspect(up, host, strlen(host)), 0);
  /* Suspicion is per upstream (per worker): the other one never tried. */
  ASSERT_EQ(mkv_upstream_suspect(w.up, host, strlen(host)), 0);
  client_free(&c);
  mkv_upstream_close(up);
  world_finish(&w);
}

TEST(connect_failing_inside_start_is_deferred) {
  world_t w;
  world_init(&w, 0);
  /* connect(2) to the broadcast address fails at once (not EINPROGRESS): the error
   * surfaces inside mkv_upstream_start, and done must still wait for a loop turn. */
  client_t c;
  client_init(&c, MKV_UP_GET, "255.255.255.255:80", "/x", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(c.done_calls, 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT(c.err < 0);
  ASSERT_EQ(c.early, 0);
  pump_for(&w.pump, 20);
  ASSERT_EQ(c.done_calls, 1);
  client_free(&c);
  world_finish(&w);
}

TEST(name_resolution_tries_every_address) {
  world_t w;
  world_init(&w, 0);
  /* "localhost" may resolve to ::1 first, where nothing listens; 127.0.0.1 answers. */
  char host[32];
  snprintf(host, sizeof(host), "localhost:%d", w.srv.port);
  w.srv.resp_clen = 7;
  client_t c;
  client_init(&c, MKV_UP_HEAD, host, "/n", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(c.done_calls, 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, 0);
  ASSERT_EQ(c.status, 200);
  ASSERT_EQ(c.resp_length, 7);
  ASSERT_EQ(c.early, 0);
  client_free(&c);
  world_finish(&w);
}

TEST(bad_host_is_refused_synchronously) {
  world_t w;
  world_init(&w, 0);
  const char *bad[] = {"nohostport", "host:", ":80", "host:8x", "host:123456789"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(bad); i++) {
    client_t c;
    client_init(&c, MKV_UP_HEAD, bad[i], "/x", 5000);
    ASSERT(start(w.up, &c) < 0);
    pump_for(&w.pump, 5);
    ASSERT_EQ(c.done_calls, 0); /* < 0: never called back */
    client_free(&c);
  }
  world_finish(&w);
}

/* ---- cancel ---- */

TEST(cancel_in_flight) {
  world_t w;
  world_init(&w, 0);
  w.srv.no_answer = 1;
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/c", 5000);
  mkv_upreq_cancel(&c.req); /* not started: nothing happens */
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, w.srv.headers_seen > 0, 10);
  c.in_call = 1;
  mkv_upreq_cancel(&c.req);
  c.in_call = 0;
  ASSERT_EQ(c.done_calls, 0); /* not before cancel returned */
  mkv_upreq_cancel(&c.req);   /* twice: still one done */
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECANCELED);
  ASSERT_EQ(c.early, 0);
  mkv_upreq_cancel(&c.req); /* after done: nothing happens */
  pump_for(&w.pump, 30);
  ASSERT_EQ(c.done_calls, 1);
  PUMP_UNTIL(&w.pump, w.srv.open_conns == 0, 10); /* the connection was closed */
  client_free(&c);
  world_finish(&w);
}

TEST(cancel_while_connecting) {
  world_t w;
  world_init(&w, 0);
  client_t c;
  client_init(&c, MKV_UP_PUT, w.srv.host, "/c", 5000);
  c.req.content_length = 5;
  ASSERT_EQ(start(w.up, &c), 0);
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("abcde", 5, 1, count_release, (void *)0)), 0);
  c.in_call = 1;
  mkv_upreq_cancel(&c.req);
  c.in_call = 0;
  ASSERT_EQ(c.done_calls, 0);
  /* A write after cancel is refused and its reference dropped. */
  ASSERT_EQ(mkv_upreq_write(&c.req, mkv_chunk_new("f", 1, 1, count_release, (void *)1)),
            UV_ECANCELED);
  ASSERT_EQ(releases[1], 1);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECANCELED);
  ASSERT_EQ(releases[0], 1);
  pump_for(&w.pump, 30);
  ASSERT_EQ(c.done_calls, 1);
  ASSERT_EQ(w.srv.requests, 0);
  client_free(&c);
  world_finish(&w);
}

TEST(cancel_while_resolving) {
  world_t w;
  world_init(&w, 0);
  char host[32];
  snprintf(host, sizeof(host), "localhost:%d", w.srv.port);
  client_t c;
  client_init(&c, MKV_UP_HEAD, host, "/c", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  c.in_call = 1;
  mkv_upreq_cancel(&c.req);
  c.in_call = 0;
  ASSERT_EQ(c.done_calls, 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  ASSERT_EQ(c.err, UV_ECANCELED);
  pump_for(&w.pump, 50); /* the resolution finishes later, with nobody waiting */
  ASSERT_EQ(c.done_calls, 1);
  client_free(&c);
  world_finish(&w);
}

/* ---- many at once, and closing ---- */

static int total_done(const client_t *c, int n) {
  int all = 0;
  for (int i = 0; i < n; i++) all += c[i].done_calls;
  return all;
}

TEST(concurrent_requests_one_pool) {
  world_t w;
  world_init(&w, 0);
  w.srv.resp_clen = 1;
  enum { N = 20 };
  client_t c[N];
  for (int i = 0; i < N; i++) {
    client_init(&c[i], MKV_UP_HEAD, w.srv.host, "/m", 5000);
    ASSERT_EQ(start(w.up, &c[i]), 0);
  }
  PUMP_UNTIL(&w.pump, total_done(c, N) == N, 10);
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(c[i].done_calls, 1);
    ASSERT_EQ(c[i].err, 0);
    ASSERT_EQ(c[i].status, 200);
    ASSERT_EQ(c[i].early, 0);
    client_free(&c[i]);
  }
  ASSERT_EQ(w.srv.requests, N);
  /* A second wave reuses the pooled connections. */
  int before = w.srv.accepted;
  for (int i = 0; i < N; i++) {
    client_init(&c[i], MKV_UP_HEAD, w.srv.host, "/m", 5000);
    ASSERT_EQ(start(w.up, &c[i]), 0);
  }
  PUMP_UNTIL(&w.pump, total_done(c, N) == N, 10);
  for (int i = 0; i < N; i++) client_free(&c[i]);
  ASSERT_EQ(w.srv.accepted, before);
  world_finish(&w);
}

static void count_stats(const mkv_upstream_stats_t *st, void *arg) {
  int *n = arg;
  n[0]++;
  n[1] += (int)st->requests;
  n[2] += st->idle;
}

TEST(stats_and_close_with_idle_connections) {
  world_t w;
  world_init(&w, 0);
  client_t c;
  client_init(&c, MKV_UP_HEAD, w.srv.host, "/s", 5000);
  ASSERT_EQ(start(w.up, &c), 0);
  PUMP_UNTIL(&w.pump, c.done_calls > 0, 10);
  client_free(&c);
  int n[3] = {0, 0, 0};
  mkv_upstream_foreach_stats(w.up, count_stats, n);
  ASSERT_EQ(n[0], 1); /* one pool */
  ASSERT_EQ(n[1], 1); /* one request */
  ASSERT_EQ(n[2], 1); /* its connection idle in the pool */
  /* world_finish closes the upstream with that idle connection open: every handle
   * must still be closed (uv_loop_close() == 0). */
  world_finish(&w);
}

TEST(close_unused_upstream) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  mkv_upstream_t *up = mkv_upstream_new(&loop, 1000);
  mkv_upstream_close(up);
  loop_finish(&loop);
}

#ifdef MKV_ASAN
#include <sanitizer/asan_interface.h>
#endif

TEST(chunk_pool_reuses_and_poisons) {
  /* A released 64 KiB chunk goes back to the thread's pool and is the next one handed
   * out; while it rests there, ASan builds must see it as poisoned (but for its link),
   * or a use after release would pass unnoticed there. */
  mkv_chunk_t *a = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, NULL, NULL);
  memset(a->bytes, 'x', MKV_CHUNK_POOLED);
  a->len = MKV_CHUNK_POOLED;
  mkv_chunk_unref(a);
#ifdef MKV_ASAN
  ASSERT(__asan_address_is_poisoned(a->bytes));
  ASSERT(__asan_address_is_poisoned(a->bytes + MKV_CHUNK_POOLED - 1));
  ASSERT(__asan_address_is_poisoned(&a->refs));
  ASSERT(__asan_address_is_poisoned(&a->len));
  ASSERT(!__asan_address_is_poisoned(&a->data));
#endif
  mkv_chunk_t *b = mkv_chunk_alloc(MKV_CHUNK_POOLED, 2, NULL, NULL);
  ASSERT(b == a);
  ASSERT_EQ(b->len, 0);
  ASSERT_EQ(b->refs, 2);
  ASSERT_EQ(b->cap, MKV_CHUNK_POOLED);
#ifdef MKV_ASAN
  ASSERT(!__asan_address_is_poisoned(b->bytes));
  ASSERT(!__asan_address_is_poisoned(b->bytes + MKV_CHUNK_POOLED - 1));
#endif
  b->bytes[MKV_CHUNK_POOLED - 1] = 'y';
  mkv_chunk_unref(b);
  mkv_chunk_unref(b);
  /* Chunks of other sizes are never pooled: had this 3-byte one gone on top of the
   * pool, the next 64 KiB chunk handed out would be it. */
  mkv_chunk_t *c = mkv_chunk_new("abc", 3, 1, NULL, NULL);
  mkv_chunk_unref(c);
  mkv_chunk_t *d = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, NULL, NULL);
  ASSERT(d == a);
  mkv_chunk_unref(d);
  mkv_chunk_free(NULL);
  mkv_chunk_pool_drain(); /* frees the poisoned chunk: LSan/ASan must stay quiet */
  mkv_chunk_t *e = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, NULL, NULL);
  mkv_chunk_unref(e);
  mkv_chunk_pool_drain();
}

TEST_MAIN(T(head_status_and_length), T(head_404_and_no_content_length), T(keepalive_reuse),
          T(idle_connection_closed_by_server_is_detected),
          T(idle_connection_seen_closing_is_not_reused),
          T(reused_connection_dropped_mid_request_is_retried), T(get_body_streamed),
          T(get_pause_and_resume), T(get_body_until_close), T(garbage_response_is_eproto),
          T(put_content_length_streams_chunks), T(put_chunked_encoding),
          T(put_connection_reused_after_clean_put), T(put_answered_early_is_not_reused),
          T(timeout_marks_suspect), T(put_inactivity_timeout), T(put_inactivity_timeout_head_held),
          T(put_head_held_until_the_body_on_a_reused_connection), T(put_stalled_body_is_not_the_volumes_fault), T(connection_refused),
          T(put_on_dropped_reused_connection_is_not_retried), T(suspect_expires),
          T(connect_failing_inside_start_is_deferred), T(name_resolution_tries_every_address),
          T(bad_host_is_refused_synchronously), T(cancel_in_flight), T(cancel_while_connecting),
          T(cancel_while_resolving), T(concurrent_requests_one_pool),
          T(stats_and_close_with_idle_connections), T(close_unused_upstream), T(chunk_pool_reuses_and_poisons))
