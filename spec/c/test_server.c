/* test_server.c: core/server*.c -- the handler contract, with a handler of the test's
 * own on a server that adopts one end of a socketpair (as the request fuzzer does): a
 * stream write's callback runs on a later loop turn, never inside the call, whether the
 * bytes go out, there are none, or the client is gone. */
#include "testutil.h"

#include <signal.h>
#include <sys/socket.h>

#include "mkv/config.h"
#include "mkv/hash.h"
#include "mkv/log.h"
#include "mkv/server.h"
#include "mkv/worker.h"

typedef struct world_s {
  mkv_config_t cfg;
  mkv_worker_t w;
  pump_t pump;
  int client; /* the test's end of the socketpair */
  mkv_req_t *req;
  int in_call, cb_calls, cb_inside, last_ok;
  int freed;
} world_t;

static world_t *W;

static void on_write(mkv_req_t *req, int ok, void *arg) {
  world_t *w = arg;
  ASSERT(w == W && req == w->req);
  if (w->in_call) w->cb_inside++;
  w->cb_calls++;
  w->last_ok = ok;
}

/* Streams a response as soon as the headers are in, and keeps the request. */
static void h_headers(mkv_req_t *req) {
  W->req = req;
  mkv_req_ref(req);
  mkv_header_t h = {"Content-Type", "text/plain", 0};
  mkv_req_stream_start(req, 200, &h, 1);
}
static void h_body(mkv_req_t *req, const char *at, size_t len) {
  (void)req, (void)at, (void)len;
}
static void h_flush(mkv_req_t *req) {
  (void)req;
}
static void h_complete(mkv_req_t *req) {
  (void)req;
}
static void h_abort(mkv_req_t *req) {
  (void)req;
}
static void h_free(mkv_req_t *req) {
  (void)req;
  W->freed++;
}

static const mkv_handler_t handler = {h_headers, h_body, h_flush, h_complete, h_abort, h_free, 0};

static void world_init(world_t *w) {
  signal(SIGPIPE, SIG_IGN);
  memset(w, 0, sizeof(*w));
  W = w;
  ASSERT_EQ(mkv_hash_init(), 0);
  mkv_log_set_level(MKV_LOG_ERROR);
  mkv_flag_t flags[] = {{"volumes", "127.0.0.1:1"}, {"db", "/nonexistent"}, {"replicas", "1"}};
  char *err = NULL;
  ASSERT_EQ(mkv_config_load(&w->cfg, NULL, flags, 3, "server", &err), 0);
  ASSERT_EQ(mkv_worker_init(&w->w, 1, &w->cfg, 0, &err), 0);
  /* What mkv_worker_start does that a server needs, minus the thread and the socket. */
  ASSERT_EQ(uv_loop_init(&w->w.loop), 0);
  uv_timer_init(&w->w.loop, &w->w.defer_timer);
  w->w.defer_timer.data = &w->w;
  w->w.server = mkv_server_new(&w->w, &handler);
  pump_init(&w->pump, &w->w.loop);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_EQ(mkv_server_adopt(w->w.server, sv[0]), 0);
  w->client = sv[1];
  const char *get = "GET /k HTTP/1.1\r\nHost: t\r\n\r\n";
  ASSERT_EQ(write(w->client, get, strlen(get)), (ssize_t)strlen(get));
  PUMP_UNTIL(&w->pump, w->req != NULL, 5);
}

static void world_finish(world_t *w) {
  if (w->client >= 0) close(w->client);
  mkv_req_unref(w->req);
  PUMP_UNTIL(&w->pump, mkv_server_connections(w->w.server) == 0, 5);
  ASSERT_EQ(w->freed, 1);
  mkv_server_free(w->w.server);
  uv_close((uv_handle_t *)&w->w.defer_timer, NULL);
  pump_close(&w->pump);
  loop_finish(&w->w.loop);
  mkv_worker_destroy(&w->w);
  mkv_config_free(&w->cfg);
}

/* Writes with the callback armed to notice a call from inside. */
static void write_watched(world_t *w, const char *p, size_t len) {
  w->in_call = 1;
  mkv_req_stream_write(w->req, p, len, on_write, w);
  w->in_call = 0;
}

TEST(stream_write_callback_after_the_bytes_left) {
  world_t w;
  world_init(&w);
  write_watched(&w, "hello", 5);
  ASSERT_EQ(w.cb_calls, 0);
  PUMP_UNTIL(&w.pump, w.cb_calls == 1, 5);
  ASSERT_EQ(w.cb_inside, 0);
  ASSERT_EQ(w.last_ok, 1);
  world_finish(&w);
}

TEST(stream_write_of_nothing_calls_back_later) {
  world_t w;
  world_init(&w);
  write_watched(&w, "", 0);
  ASSERT_EQ(w.cb_calls, 0);
  PUMP_UNTIL(&w.pump, w.cb_calls == 1, 5);
  ASSERT_EQ(w.cb_inside, 0);
  ASSERT_EQ(w.last_ok, 1);
  world_finish(&w);
}

TEST(stream_write_to_a_gone_client_calls_back_later_not_ok) {
  world_t w;
  world_init(&w);
  mkv_req_abort(w.req); /* the connection ends now: later writes cannot go out */
  write_watched(&w, "hello", 5);
  ASSERT_EQ(w.cb_calls, 0);
  write_watched(&w, "again", 5); /* a second one queues behind the first, in order */
  PUMP_UNTIL(&w.pump, w.cb_calls == 2, 5);
  ASSERT_EQ(w.cb_inside, 0);
  ASSERT_EQ(w.last_ok, 0);
  world_finish(&w);
}

TEST_MAIN(T(stream_write_callback_after_the_bytes_left),
          T(stream_write_of_nothing_calls_back_later),
          T(stream_write_to_a_gone_client_calls_back_later_not_ok))
