/* failpoint.c: see include/mkv/failpoint.h. Built only with -DMKV_FAILPOINTS=ON. */
#include "mkv/failpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_once_t fp_once = PTHREAD_ONCE_INIT;
static char fp_name[128];
static long fp_at = 1;
static int fp_armed, fp_log;
static atomic_long fp_hits;

static void fp_init(void) {
  const char *s = getenv("MKV_FAILPOINT");
  const char *l = getenv("MKV_FAILPOINT_LOG");
  fp_log = l != NULL && *l != '\0' && strcmp(l, "0") != 0;
  if (s == NULL || *s == '\0') return;
  const char *colon = strrchr(s, ':');
  size_t n = colon ? (size_t)(colon - s) : strlen(s);
  if (n >= sizeof(fp_name)) n = sizeof(fp_name) - 1;
  memcpy(fp_name, s, n);
  fp_name[n] = '\0';
  if (colon) fp_at = strtol(colon + 1, NULL, 10);
  if (fp_at < 1) fp_at = 1;
  fp_armed = 1;
}

/* One write(2) per line: async-signal-safe and unbuffered, so the line is out before
 * the kill. */
static void fp_say(const char *name, long hit, const char *what) {
  char line[256];
  int n = snprintf(line, sizeof(line), "failpoint %s %s %ld\n", name, what, hit);
  if (n > 0) {
    ssize_t w = write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    (void)w;
  }
}

void mkv_failpoint_hit(const char *name) {
  pthread_once(&fp_once, fp_init);
  if (fp_log) fp_say(name, 0, "passed");
  if (!fp_armed) return;
  if (strcmp(fp_name, "*") != 0 && strcmp(fp_name, name) != 0) return;
  long hit = atomic_fetch_add(&fp_hits, 1) + 1;
  if (hit != fp_at) return;
  fp_say(name, hit, "hit");
  raise(SIGKILL);
}
