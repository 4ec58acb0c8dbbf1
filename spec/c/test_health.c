/* test_health.c: core/health.c -- the volumes' health table (lock-free reads, modes from
 * the config, reloads) and its prober against in-process volumes (testserver.h): a
 * volume that stops answering is marked down and comes back when it answers; a volume
 * whose writes fail with 500 is marked full by a write probe, and writable again once
 * a write probe succeeds; a passive signal wakes the prober before its interval. */
#include "testserver.h"

#include <signal.h>

#include "mkv/hash.h"
#include "mkv/health.h"
#include "mkv/upstream.h"

typedef struct world_s {
  uv_loop_t loop;
  pump_t pump;
  ts_server_t srv;
  mkv_upstream_t *up;
  mkv_config_t cfg;
  char *vols[4];
  mkv_vol_mode_t modes[4];
} world_t;

static void config(world_t *w, int n, const char *const *names) {
  memset(&w->cfg, 0, sizeof(w->cfg));
  for (int i = 0; i < n; i++) w->vols[i] = (char *)names[i];
  w->cfg.volumes = w->vols;
  w->cfg.nvolumes = n;
  w->cfg.volume_modes = w->modes;
  w->cfg.voltimeout_ms = mkv_test_timeout(0.2) * 1000;
  w->cfg.limits.probe_interval_ms = 50;
  w->cfg.limits.probe_backoff_ms = 200;
}

TEST(table_modes_and_reload) {
  world_t w;
  memset(&w, 0, sizeof(w));
  const char *names[] = {"a:1", "b:2", "c:3"};
  config(&w, 3, names);
  w.modes[1] = MKV_VOL_READ_ONLY;
  w.modes[2] = MKV_VOL_DRAIN;
  ASSERT(mkv_health_find("a:1", 3) == NULL); /* no table yet: everything up */
  ASSERT(mkv_health_writable("a:1", 3));
  mkv_health_init(&w.cfg);
  ASSERT(mkv_health_find("a:1", 3) != NULL);
  ASSERT(mkv_health_find("a:", 2) == NULL);
  ASSERT(mkv_health_find("z:9", 3) == NULL);
  ASSERT(mkv_health_writable("a:1", 3));
  ASSERT(!mkv_health_writable("b:2", 3)); /* read_only */
  ASSERT(!mkv_health_writable("c:3", 3)); /* drain */
  ASSERT(mkv_health_readable("b:2", 3) && mkv_health_readable("c:3", 3));
  ASSERT_EQ(mkv_vol_mode(mkv_health_find("c:3", 3)), MKV_VOL_DRAIN);
  /* A reload: b back to read-write, a new volume d. Entries found before stay valid. */
  mkv_vol_t *a = mkv_health_find("a:1", 3);
  uint64_t gen = mkv_health_generation();
  const char *names2[] = {"a:1", "b:2", "c:3", "d:4"};
  config(&w, 4, names2);
  w.modes[1] = MKV_VOL_RW;
  w.modes[2] = MKV_VOL_DRAIN;
  w.modes[3] = MKV_VOL_RW;
  ASSERT_EQ(mkv_health_reload(&w.cfg), 0);
  ASSERT(mkv_health_generation() > gen);
  ASSERT(mkv_health_find("a:1", 3) == a);
  ASSERT(mkv_health_writable("b:2", 3));
  ASSERT(mkv_health_writable("d:4", 3));
  /* Observations without a prober change nothing. */
  mkv_health_observe(a, MKV_OBS_FAILED);
  ASSERT_EQ(mkv_vol_health(a), MKV_VOL_UP);
  mkv_health_free();
  ASSERT(mkv_health_find("a:1", 3) == NULL);
}

static mkv_vol_health_t health_of(world_t *w) {
  return mkv_health_of(w->srv.host, strlen(w->srv.host));
}

static void world_start(world_t *w) {
  signal(SIGPIPE, SIG_IGN);
  memset(w, 0, sizeof(*w));
  ASSERT_EQ(mkv_hash_init(), 0);
  ASSERT_EQ(uv_loop_init(&w->loop), 0);
  pump_init(&w->pump, &w->loop);
  ts_start(&w->srv, &w->loop, 0);
  const char *names[] = {w->srv.host};
  config(w, 1, names);
  mkv_health_init(&w->cfg);
  w->up = mkv_upstream_new(&w->loop, 1000);
  mkv_health_start(&w->loop, w->up, &w->cfg);
}

static void world_finish(world_t *w) {
  mkv_health_stop();
  PUMP_UNTIL(&w->pump, !mkv_health_busy(), 5);
  mkv_upstream_close(w->up);
  ts_stop(&w->srv);
  pump_close(&w->pump);
  loop_finish(&w->loop);
  ts_free(&w->srv);
  mkv_health_free();
}

TEST(prober_marks_a_silent_volume_down_and_back_up) {
  world_t w;
  world_start(&w);
  PUMP_UNTIL(&w.pump, w.srv.requests >= 2, 5);
  ASSERT_EQ(health_of(&w), MKV_VOL_UP);
  w.srv.no_answer = 1; /* hung: probes time out */
  PUMP_UNTIL(&w.pump, health_of(&w) == MKV_VOL_DOWN, 5);
  ASSERT(!mkv_health_writable(w.srv.host, strlen(w.srv.host)));
  ASSERT(!mkv_health_readable(w.srv.host, strlen(w.srv.host)));
  w.srv.no_answer = 0;
  ts_close_conns(&w.srv); /* the hung connections go; the next probe connects anew */
  PUMP_UNTIL(&w.pump, health_of(&w) == MKV_VOL_UP, 5);
  world_finish(&w);
}

static int seen_state;
static char seen_reason[128];

static void grab(const mkv_vol_info_t *vi, void *arg) {
  (void)arg;
  seen_state = strcmp(vi->state, "full") == 0;
  snprintf(seen_reason, sizeof(seen_reason), "%s", vi->reason);
}

TEST(write_probe_marks_full_and_writable_again) {
  world_t w;
  world_start(&w);
  PUMP_UNTIL(&w.pump, w.srv.requests >= 1, 5);
  w.srv.put_status = 500; /* reads fine, writes fail: a full disk */
  /* What a PUT's 500 tells: the next probe is a write. */
  mkv_health_observe(mkv_health_find(w.srv.host, strlen(w.srv.host)), MKV_OBS_WRITE_5XX);
  PUMP_UNTIL(&w.pump, health_of(&w) == MKV_VOL_FULL, 5);
  ASSERT(!mkv_health_writable(w.srv.host, strlen(w.srv.host)));
  ASSERT(mkv_health_readable(w.srv.host, strlen(w.srv.host))); /* a full volume serves reads */
  ASSERT_STREQ(w.srv.last_method, "PUT");
  ASSERT(strstr(w.srv.last_url.data, "/mkv-probe") != NULL);
  mkv_health_foreach(grab, NULL);
  ASSERT(seen_state);
  ASSERT(strstr(seen_reason, "500") != NULL);
  w.srv.put_status = 0; /* space again */
  PUMP_UNTIL(&w.pump, health_of(&w) == MKV_VOL_UP, 5);
  world_finish(&w);
}

TEST(a_failure_wakes_the_prober_before_its_interval) {
  world_t w;
  world_start(&w);
  PUMP_UNTIL(&w.pump, w.srv.requests >= 2, 5);
  w.cfg.limits.probe_interval_ms = 60000; /* no probe by the clock from now on ... */
  pump_for(&w.pump, 200);                 /* ... once one already due has gone */
  int before = w.srv.requests;
  w.srv.no_answer = 1;
  mkv_health_observe(mkv_health_find(w.srv.host, strlen(w.srv.host)), MKV_OBS_FAILED);
  PUMP_UNTIL(&w.pump, health_of(&w) == MKV_VOL_DOWN, 5);
  ASSERT(w.srv.requests > before);
  world_finish(&w);
}

TEST_MAIN(T(table_modes_and_reload), T(prober_marks_a_silent_volume_down_and_back_up),
          T(write_probe_marks_full_and_writable_again),
          T(a_failure_wakes_the_prober_before_its_interval))
