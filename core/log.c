/* log.c: stderr logging with a timestamp, a level and the thread's name. */
#include "mkv/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = MKV_LOG_INFO;
static _Thread_local const char *thread_name = "main";

static const char *level_names[] = {"error", "warn", "info", "debug"};

void mkv_log_set_level(mkv_log_level_t level) {
  log_level = level;
}

int mkv_log_enabled(mkv_log_level_t level) {
  return (int)level <= log_level;
}

void mkv_log_set_thread_name(const char *name) {
  thread_name = name;
}

void mkv_log(mkv_log_level_t level, const char *fmt, ...) {
  if (!mkv_log_enabled(level)) return;
  char line[2048];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ mkv[%s] %s: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, (int)(tv.tv_usec / 1000), thread_name, level_names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : MKV_MIN((size_t)m, sizeof(line) - (size_t)n - 2));
  /* A log line is one line: control bytes a client sent (keys may hold any byte) are
   * shown as '?', so they can neither forge lines nor hide text. */
  for (size_t i = (size_t)n; i < len; i++)
    if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) line[i] = '?';
  line[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

uint64_t mkv_log_limit_pass(mkv_log_limit_t *lim) {
  uint64_t now = mkv_now_ms() + 1000; /* + 1000 so the first call always passes */
  uint64_t last = atomic_load(&lim->last_ms);
  if (now - last < 1000 ||
      !atomic_compare_exchange_strong(&lim->last_ms, &last, now)) {
    atomic_fetch_add(&lim->suppressed, 1);
    return 0;
  }
  return atomic_exchange(&lim->suppressed, 0) + 1;
}
