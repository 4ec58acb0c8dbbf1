/* testutil.h: helpers the C unit tests share -- pumping a libuv loop until a condition
 * holds (with a timer as the deadline), closing a loop while asserting no handle
 * leaked, and temporary directories. Test code only. */
#ifndef MKV_TESTUTIL_H
#define MKV_TESTUTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw; must come before any system header */
#endif
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "runner.h"

/* A deadline for pumping one loop. The timer lives as long as the test's loop and is
 * closed by pump_close(). */
typedef struct pump_s {
  uv_loop_t *loop;
  uv_timer_t timer;
  int expired;
} pump_t;

static inline void pump_expired_cb(uv_timer_t *t) {
  pump_t *p = t->data;
  p->expired = 1;
}

static inline void pump_init(pump_t *p, uv_loop_t *loop) {
  p->loop = loop;
  p->expired = 0;
  ASSERT_EQ(uv_timer_init(loop, &p->timer), 0);
  p->timer.data = p;
}

/* Arms the deadline: seconds scaled by MKV_TEST_TIMEOUT_MULTIPLIER. */
static inline void pump_arm(pump_t *p, double seconds) {
  p->expired = 0;
  uv_timer_start(&p->timer, pump_expired_cb, (uint64_t)(mkv_test_timeout(seconds) * 1000), 0);
}

static inline void pump_close(pump_t *p) {
  uv_close((uv_handle_t *)&p->timer, NULL);
}

/* Runs the loop one turn at a time until cond holds; fails the test at the deadline. */
#define PUMP_UNTIL(p, cond, seconds)                                                     \
  do {                                                                                   \
    pump_arm((p), (seconds));                                                            \
    while (!(cond) && !(p)->expired) uv_run((p)->loop, UV_RUN_ONCE);                     \
    uv_timer_stop(&(p)->timer);                                                          \
    if (!(cond)) {                                                                       \
      fprintf(stderr, "%s:%d: timed out waiting for %s\n", __FILE__, __LINE__, #cond);  \
      abort();                                                                           \
    }                                                                                    \
  } while (0)

/* Runs the loop for `ms` milliseconds of wall time (unscaled): for tests where time
 * passing is itself the point. */
static inline void pump_for(pump_t *p, double ms) {
  p->expired = 0;
  /* From now, not from the loop's cached time. The timer repeats: libuv 1.44's
   * UV_RUN_ONCE runs due timers before it polls, and a one-shot timer that fired there
   * left nothing to wake the poll (a test hung whenever it was slow to get here). */
  uv_update_time(p->loop);
  uv_timer_start(&p->timer, pump_expired_cb, (uint64_t)ms, 1);
  while (!p->expired) uv_run(p->loop, UV_RUN_ONCE);
  uv_timer_stop(&p->timer);
}

/* Lets closing handles finish, then asserts the loop closes: a handle the code under
 * test leaked (open or merely initialised) makes uv_loop_close() fail with UV_EBUSY. */
static inline void loop_finish(uv_loop_t *loop) {
  uint64_t deadline = uv_hrtime() + (uint64_t)(mkv_test_timeout(5) * 1e9);
  while (uv_loop_alive(loop) && uv_hrtime() < deadline) uv_run(loop, UV_RUN_NOWAIT);
  int rc = uv_loop_close(loop);
  if (rc != 0) {
    fprintf(stderr, "uv_loop_close: %s; handles still open:\n", uv_err_name(rc));
    uv_print_all_handles(loop, stderr);
  }
  ASSERT_EQ(rc, 0);
}

/* ---- temporary directories ---- */

static inline char *tmpdir_new(const char *tag) {
  char *t = malloc(256);
  snprintf(t, 256, "/tmp/mkv-%s-XXXXXX", tag);
  ASSERT(mkdtemp(t) != NULL);
  return t;
}

static inline int tmpdir_rm_one(const char *path, const struct stat *sb, int flag,
                                struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

static inline void tmpdir_free(char *dir) {
  nftw(dir, tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
}

static inline void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ASSERT(f != NULL);
  ASSERT_EQ(fputs(text, f) >= 0, 1);
  ASSERT_EQ(fclose(f), 0);
}

#endif
