/* test_fanout.c: core/fanout.c -- one PUT body streamed to N replicas, against
 * in-process servers (testserver.h) on the test's loop. */
#include "testserver.h"

#include <signal.h>

#include "mkv/fanout.h"
#include "mkv/hash.h"
#include "mkv/upstream.h"

#define NSRV 3
#define KEYPATH "/5d/41/aGVsbG8="

typedef struct world_s {
  uv_loop_t loop;
  pump_t pump;
  ts_server_t srv[NSRV];
  mkv_upstream_t *up;
  mkv_buf_t volumes;

  mkv_fanout_t *fo;
  int done_calls, err, ready_calls;
  int flow_calls, flow_on, flow_off, flow_bad, paused;
  int in_call, early;
  int freed_in_done;
  size_t inflight_at_done;
  int pool_requests_at_done, pool_active_at_done;
} world_t;

static world_t *W; /* the fan-out's callbacks find the world through data, this checks it */

static void world_init(world_t *w, int rcvbuf) {
  signal(SIGPIPE, SIG_IGN);
  memset(w, 0, sizeof(*w));
  W = w;
  ASSERT_EQ(mkv_hash_init(), 0);
  ASSERT_EQ(uv_loop_init(&w->loop), 0);
  pump_init(&w->pump, &w->loop);
  mkv_buf_init(&w->volumes);
  for (int i = 0; i < NSRV; i++) {
    ts_start(&w->srv[i], &w->loop, rcvbuf);
    w->srv[i].status = 201;
    if (i) mkv_buf_addc(&w->volumes, ',');
    mkv_buf_addf(&w->volumes, "%s/sv%02d", w->srv[i].host, i + 1);
  }
  w->up = mkv_upstream_new(&w->loop, 5000);
}

static void world_finish(world_t *w) {
  mkv_upstream_close(w->up);
  for (int i = 0; i < NSRV; i++) ts_stop(&w->srv[i]);
  pump_close(&w->pump);
  loop_finish(&w->loop);
  for (int i = 0; i < NSRV; i++) ts_free(&w->srv[i]);
  mkv_buf_free(&w->volumes);
}

static void pool_stats(const mkv_upstream_stats_t *st, void *arg) {
  world_t *w = arg;
  w->pool_requests_at_done += (int)st->requests;
  w->pool_active_at_done += st->active;
}

static void on_done(mkv_fanout_t *fo, int err) {
  world_t *w = mkv_fanout_data(fo);
  ASSERT(w == W && fo == w->fo);
  if (w->in_call) w->early++;
  w->done_calls++;
  w->err = err;
  w->inflight_at_done = mkv_fanout_inflight(fo);
  /* Every replica has finished: each pool counted its request, none is active. */
  mkv_upstream_foreach_stats(w->up, pool_stats, w);
  if (w->freed_in_done) mkv_fanout_free(fo);
}

static void on_flow(mkv_fanout_t *fo, int pause) {
  world_t *w = mkv_fanout_data(fo);
  w->flow_calls++;
  if (pause == w->paused) w->flow_bad++; /* pause/resume alternate */
  w->paused = pause;
  if (pause)
    w->flow_on++;
  else
    w->flow_off++;
}

static void on_ready(mkv_fanout_t *fo) {
  world_t *w = mkv_fanout_data(fo);
  w->ready_calls++;
}

static void opts_for(world_t *w, mkv_fanout_opts_t *o, const char *volumes, int64_t clen) {
  memset(o, 0, sizeof(*o));
  o->volumes = volumes;
  o->volumes_len = strlen(volumes);
  o->path = KEYPATH;
  o->path_len = strlen(KEYPATH);
  o->content_length = clen;
  o->timeout_ms = 5000;
  o->high_water = 4 << 20;
  o->low_water = 1 << 20;
  o->md5 = 1;
  o->done = on_done;
  o->flow = on_flow;
  o->ready = on_ready;
  o->data = w;
}

static void fill(char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (char)(seed >> 16);
  }
}

/* mkv_fanout_touched() equals want. */
static void touched_is(mkv_fanout_t *fo, const char *want) {
  mkv_buf_t t;
  mkv_buf_init(&t);
  mkv_fanout_touched(fo, &t);
  const char *got = t.data ? t.data : "";
  if (strcmp(got, want) != 0) {
    fprintf(stderr, "touched \"%s\", want \"%s\"\n", got, want);
    abort();
  }
  mkv_buf_free(&t);
}

static int srv_requests(world_t *w) {
  int n = 0;
  for (int i = 0; i < NSRV; i++) n += w->srv[i].requests;
  return n;
}

TEST(three_replicas_all_201) {
  world_t w;
  world_init(&w, 0);
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 200000);
  size_t n = 200000;
  char *body = malloc(n);
  fill(body, n, 7);

  w.in_call = 1;
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  w.in_call = 0;
  PUMP_UNTIL(&w.pump, w.ready_calls > 0, 10);
  for (size_t off = 0; off < n; off += 10000) {
    w.in_call = 1;
    mkv_fanout_write(w.fo, body + off, MKV_MIN(10000, n - off));
    w.in_call = 0;
  }
  ASSERT_EQ(mkv_fanout_bytes(w.fo), (int64_t)n);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, 0);
  ASSERT_EQ(w.early, 0);
  ASSERT_EQ(w.ready_calls, 1);
  ASSERT_EQ(w.pool_requests_at_done, NSRV);
  ASSERT_EQ(w.pool_active_at_done, 0);

  unsigned char md[16], want[16];
  mkv_fanout_md5(w.fo, md);
  mkv_md5(body, n, want);
  ASSERT_MEMEQ(md, want, 16);
  for (int i = 0; i < NSRV; i++) {
    ts_server_t *s = &w.srv[i];
    char url[64];
    snprintf(url, sizeof(url), "/sv%02d" KEYPATH, i + 1);
    ASSERT_EQ(s->requests, 1);
    ASSERT_STREQ(s->last_method, "PUT");
    ASSERT_STREQ(s->last_url.data, url);
    ASSERT_EQ(s->last_body.len, n);
    ASSERT_MEMEQ(s->last_body.data, body, n);
  }
  pump_for(&w.pump, 20);
  ASSERT_EQ(w.done_calls, 1);
  touched_is(w.fo, w.volumes.data); /* every upload reached its volume */
  mkv_fanout_free(w.fo);
  free(body);
  world_finish(&w);
}

TEST(chunked_body_and_204) {
  world_t w;
  world_init(&w, 0);
  for (int i = 0; i < NSRV; i++) w.srv[i].status = 204;
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, -1);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  /* Written before any replica is connected: queued, then sent in order. */
  mkv_fanout_write(w.fo, "hello ", 6);
  mkv_fanout_write(w.fo, "", 0);
  mkv_fanout_write(w.fo, "world", 5);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, 0);
  for (int i = 0; i < NSRV; i++) {
    ASSERT(strstr(w.srv[i].raw.data, "Transfer-Encoding: chunked\r\n") != NULL);
    ASSERT_EQ(w.srv[i].last_body.len, 11);
    ASSERT_MEMEQ(w.srv[i].last_body.data, "hello world", 11);
  }
  unsigned char md[16], want[16];
  mkv_fanout_md5(w.fo, md);
  mkv_md5("hello world", 11, want);
  ASSERT_MEMEQ(md, want, 16);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(one_replica_500) {
  world_t w;
  world_init(&w, 0);
  w.srv[1].status = 500;
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 6);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "abcdef", 6);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, MKV_ESTATUS);
  /* done came after every replica finished, not at the first failure. */
  ASSERT_EQ(w.pool_requests_at_done, NSRV);
  ASSERT_EQ(w.pool_active_at_done, 0);
  const char *f = mkv_fanout_failure(w.fo);
  ASSERT(strstr(f, w.srv[1].host) != NULL);
  ASSERT(strstr(f, "500") != NULL);
  pump_for(&w.pump, 30);
  ASSERT_EQ(w.done_calls, 1);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(failure_cancels_slow_replicas) {
  world_t w;
  world_init(&w, 0);
  /* Replica 0 refuses at once; 1 and 2 never answer. done must not wait for their
   * timeouts: the failure cancels them, and done follows once they have finished. */
  w.srv[0].status = 500;
  w.srv[0].answer_on_headers = 1;
  w.srv[1].no_answer = 1;
  w.srv[2].no_answer = 1;
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 100);
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "0123456789", 10);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT(uv_hrtime() - t0 < 4000000000ull); /* well before the 5 s timeouts */
  ASSERT_EQ(w.err, MKV_ESTATUS);
  ASSERT_EQ(w.pool_requests_at_done, NSRV);
  ASSERT_EQ(w.pool_active_at_done, 0);
  int ready_then = w.ready_calls;
  /* The cancelled uploads' connections are closed: the volumes see them go. */
  PUMP_UNTIL(&w.pump, w.srv[1].open_conns == 0 && w.srv[2].open_conns == 0, 10);
  ASSERT_EQ(w.ready_calls, ready_then);
  ASSERT_EQ(w.done_calls, 1);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(failure_waits_for_replicas_that_have_the_whole_body) {
  world_t w;
  world_init(&w, 0);
  /* Every replica gets the whole body; then replica 0 refuses, while 1 and 2 answer 201
   * only a second after their body arrived, as volumes still storing it. Cancelling
   * them would not stop their writes, only make the cleanup's DELETEs race them: done
   * must wait for their answers. */
  w.srv[0].status = 500;
  w.srv[0].no_answer = 1; /* until every replica has the body */
  w.srv[1].status = 201;
  w.srv[2].status = 201;
  w.srv[1].answer_delay_ms = 1000;
  w.srv[2].answer_delay_ms = 1000;
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 10);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "0123456789", 10);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, srv_requests(&w) == NSRV, 10);
  ASSERT_EQ(w.srv[1].answers + w.srv[2].answers, 0);
  w.srv[0].no_answer = 0;
  ASSERT(w.srv[0].conns != NULL);
  ts_answer(w.srv[0].conns);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, MKV_ESTATUS);
  ASSERT(strstr(mkv_fanout_failure(w.fo), w.srv[0].host) != NULL);
  /* Both answered on connections mkv kept open (closing one drops its answer). */
  ASSERT_EQ(w.srv[1].answers, 1);
  ASSERT_EQ(w.srv[2].answers, 1);
  ASSERT_EQ(w.pool_active_at_done, 0);
  touched_is(w.fo, w.volumes.data);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

/* Streams n bytes in 16 KiB slices the way a server reads its client: stop at flow(1),
 * go on at flow(0). Replica 2 reads nothing at first. until_stuck: keep it stalled
 * until the fan-out has stayed paused for 300 ms (the kernel's socket buffers take
 * megabytes on loopback before that happens); otherwise resume it 200 ms after the
 * first pause. */
static void flow_run(size_t n, int until_stuck) {
  world_t w;
  /* Small receive buffers, so that a server that does not read holds the bytes back. */
  world_init(&w, 4096);
  mkv_fanout_opts_t o;
  size_t slice = 16384;
  opts_for(&w, &o, w.volumes.data, (int64_t)n);
  o.high_water = 64 << 10;
  o.low_water = 16 << 10;
  char *body = malloc(n);
  fill(body, n, 11);
  ts_pause(&w.srv[2]); /* the slow replica */
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);

  size_t off = 0, stuck_at = 0;
  int slow_released = 0, nwaits = 0;
  while (off < n) {
    if (w.paused) {
      if (!slow_released) {
        if (until_stuck) {
          /* Up to 300 ms for a flow(0), without waiting longer than needed. */
          w.pump.expired = 0;
          uv_timer_start(&w.pump.timer, pump_expired_cb, 300, 0);
          while (w.paused && !w.pump.expired) uv_run(&w.loop, UV_RUN_ONCE);
          uv_timer_stop(&w.pump.timer);
          nwaits++;
          if (!w.paused) continue; /* the kernel took the bytes: keep writing */
          /* Held back: bytes stay in flight while the slow replica reads nothing. */
          ASSERT(mkv_fanout_inflight(w.fo) > o.low_water);
          stuck_at = off;
        } else {
          pump_for(&w.pump, 200);
        }
        ts_resume(&w.srv[2]);
        slow_released = 1;
      }
      PUMP_UNTIL(&w.pump, !w.paused, 20);
      ASSERT(mkv_fanout_inflight(w.fo) <= o.low_water);
      continue;
    }
    size_t k = MKV_MIN(slice, n - off);
    mkv_fanout_write(w.fo, body + off, k);
    mkv_fanout_flush(w.fo); /* as the server does after each read */
    off += k;
    /* Pausing is immediate: never more than high_water + one slice in flight. */
    ASSERT(mkv_fanout_inflight(w.fo) <= o.high_water + slice);
  }
  if (!slow_released) ts_resume(&w.srv[2]);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 20);
  if (w.err != 0)
    fprintf(stderr, "done(%s): %s; held at %zu of %zu bytes\n", mkv_errname(w.err),
            mkv_fanout_failure(w.fo), stuck_at, n);
  ASSERT_EQ(w.err, 0);
  ASSERT(w.flow_on >= 1);
  ASSERT(w.flow_off >= 1);
  ASSERT_EQ(w.flow_bad, 0);
  if (until_stuck) ASSERT(stuck_at > 0 && stuck_at < n);
  if (getenv("MKV_TEST_VERBOSE"))
    fprintf(stderr, "held at %zu of %zu bytes after %d pauses\n", stuck_at, n, nwaits);
  for (int i = 0; i < NSRV; i++) {
    ASSERT_EQ(w.srv[i].last_body.len, n);
    ASSERT_MEMEQ(w.srv[i].last_body.data, body, n);
  }
  unsigned char md[16], want[16];
  mkv_fanout_md5(w.fo, md);
  mkv_md5(body, n, want);
  ASSERT_MEMEQ(md, want, 16);
  mkv_fanout_free(w.fo);
  free(body);
  world_finish(&w);
}

TEST(flow_control) {
  flow_run(1 << 20, 0);
}

TEST(flow_control_holds_while_a_replica_stalls) {
  /* Loopback send buffers grow to 4 MiB (tcp_wmem): 8 MiB cannot all fit. */
  flow_run(8 << 20, 1);
}

TEST(abort_gives_ecanceled) {
  world_t w;
  world_init(&w, 0);
  for (int i = 0; i < NSRV; i++) w.srv[i].no_answer = 1;
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 1000);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "partial", 7);
  PUMP_UNTIL(&w.pump, srv_requests(&w) == 0 && w.srv[0].headers_seen + w.srv[1].headers_seen +
                                                         w.srv[2].headers_seen == NSRV,
             10);
  w.in_call = 1;
  mkv_fanout_abort(w.fo);
  w.in_call = 0;
  ASSERT_EQ(w.done_calls, 0); /* not before abort returned */
  mkv_fanout_write(w.fo, "more", 4); /* ignored after the abort */
  mkv_fanout_abort(w.fo);            /* twice is harmless */
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, UV_ECANCELED);
  ASSERT_EQ(w.early, 0);
  ASSERT_STREQ(mkv_fanout_failure(w.fo), "cancelled");
  touched_is(w.fo, w.volumes.data); /* each got its request: each may hold a file */
  ASSERT_EQ(w.pool_active_at_done, 0);
  pump_for(&w.pump, 30);
  ASSERT_EQ(w.done_calls, 1);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(abort_before_connect) {
  world_t w;
  world_init(&w, 0);
  mkv_fanout_opts_t o;
  opts_for(&w, &o, w.volumes.data, 1000);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "queued", 6);
  mkv_fanout_abort(w.fo);
  ASSERT_EQ(w.done_calls, 0);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, UV_ECANCELED);
  ASSERT_EQ(mkv_fanout_inflight(w.fo), 0); /* the queued chunk was released */
  pump_for(&w.pump, 30);
  ASSERT_EQ(w.done_calls, 1);
  ASSERT_EQ(srv_requests(&w), 0);
  touched_is(w.fo, ""); /* cancelled before any connection: no volume can hold a file */
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(free_in_done_while_chunks_referenced) {
  world_t w;
  world_init(&w, 4096);
  /* One replica that refuses after the headers and then stops reading: its response
   * completes the upload while megabytes of body are still queued in libuv, each
   * chunk holding a reference. Freeing the fan-out in done must be safe (ASan). */
  w.srv[0].status = 500;
  w.srv[0].answer_on_headers = 1;
  w.srv[0].stop_reading_after_answer = 1;
  mkv_fanout_opts_t o;
  char one[64];
  snprintf(one, sizeof(one), "%s/sv01", w.srv[0].host);
  size_t n = 4 << 20;
  opts_for(&w, &o, one, (int64_t)n);
  o.high_water = 64 << 20; /* no flow control in the way: queue everything */
  o.low_water = 1 << 20;
  char *body = malloc(n);
  fill(body, n, 3);
  w.freed_in_done = 1;
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  for (size_t off = 0; off < n; off += 65536) mkv_fanout_write(w.fo, body + off, 65536);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, MKV_ESTATUS);
  ASSERT(w.inflight_at_done > 0); /* the case under test did happen */
  pump_for(&w.pump, 50);          /* the queued writes are released after the free */
  ASSERT_EQ(w.done_calls, 1);
  free(body);
  world_finish(&w);
}

TEST(free_after_done_while_chunks_referenced) {
  world_t w;
  world_init(&w, 4096);
  w.srv[0].status = 500;
  w.srv[0].answer_on_headers = 1;
  w.srv[0].stop_reading_after_answer = 1;
  mkv_fanout_opts_t o;
  char one[64];
  snprintf(one, sizeof(one), "%s/sv01", w.srv[0].host);
  size_t n = 4 << 20;
  opts_for(&w, &o, one, (int64_t)n);
  o.high_water = 64 << 20;
  o.low_water = 1 << 20;
  char *body = malloc(n);
  fill(body, n, 5);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  for (size_t off = 0; off < n; off += 65536) mkv_fanout_write(w.fo, body + off, 65536);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, MKV_ESTATUS);
  ASSERT(w.inflight_at_done > 0);
  /* After done, still inside the same loop turn's aftermath: chunks are referenced
   * by the connection being closed. */
  mkv_fanout_free(w.fo);
  pump_for(&w.pump, 50);
  ASSERT_EQ(w.done_calls, 1);
  free(body);
  world_finish(&w);
}

TEST(volume_down) {
  world_t w;
  world_init(&w, 0);
  char vols[128];
  snprintf(vols, sizeof(vols), "127.0.0.1:%d/sv01", ts_dead_port());
  mkv_fanout_opts_t o;
  opts_for(&w, &o, vols, 3);
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  mkv_fanout_write(w.fo, "abc", 3);
  mkv_fanout_end(w.fo);
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.err, UV_ECONNREFUSED);
  ASSERT_EQ(mkv_fanout_inflight(w.fo), 0);
  ASSERT(strstr(mkv_fanout_failure(w.fo), vols) != NULL);
  touched_is(w.fo, ""); /* nothing to clean up there */
  ASSERT_EQ(w.ready_calls, 0);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST(start_errors) {
  world_t w;
  world_init(&w, 0);
  mkv_fanout_opts_t o;
  /* No volume at all: refused, nothing started, no done. */
  opts_for(&w, &o, "", 1);
  ASSERT(mkv_fanout_start(w.up, &o, &w.fo) < 0);
  /* The first volume unusable: refused synchronously. */
  opts_for(&w, &o, "nohost/sv01", 1);
  ASSERT(mkv_fanout_start(w.up, &o, &w.fo) < 0);
  pump_for(&w.pump, 10);
  ASSERT_EQ(w.done_calls, 0);

  /* A later volume unusable: the started one is cancelled, and done reports the
   * first failure once it has finished. */
  char vols[128];
  snprintf(vols, sizeof(vols), "%s/sv01,nohost/sv02", w.srv[0].host);
  opts_for(&w, &o, vols, 1);
  w.in_call = 1;
  ASSERT_EQ(mkv_fanout_start(w.up, &o, &w.fo), 0);
  w.in_call = 0;
  PUMP_UNTIL(&w.pump, w.done_calls > 0, 10);
  ASSERT_EQ(w.early, 0);
  ASSERT_EQ(w.err, UV_EINVAL);
  ASSERT(strstr(mkv_fanout_failure(w.fo), "nohost") != NULL);
  pump_for(&w.pump, 30);
  ASSERT_EQ(w.done_calls, 1);
  mkv_fanout_free(w.fo);
  world_finish(&w);
}

TEST_MAIN(T(three_replicas_all_201), T(chunked_body_and_204), T(one_replica_500),
          T(failure_cancels_slow_replicas), T(failure_waits_for_replicas_that_have_the_whole_body),
          T(flow_control),
          T(flow_control_holds_while_a_replica_stalls), T(abort_gives_ecanceled),
          T(abort_before_connect), T(free_in_done_while_chunks_referenced),
          T(free_after_done_while_chunks_referenced), T(volume_down), T(start_errors))
