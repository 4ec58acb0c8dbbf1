/* log.c: stderr logging with a timestamp, a level and the thread's name. */
#include "mkv/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

/* Also the thread's name in the kernel, "mkv-<name>" (top -H, ps -L, perf, /proc/PID/
 * task/TID/comm): an operator sees which thread burns the CPU -- a worker, the index
 * writer -- and the bench splits mkv's CPU the same way. The process keeps "mkv". */
void mkv_log_set_thread_name(const char *name) {
  thread_name = name;
  char comm[16];
  snprintf(comm, sizeof(comm), "mkv-%s", name);
  prctl(PR_SET_NAME, comm, 0, 0, 0);
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

/* ---- the access log ---- */

static _Atomic int access_fd = -1;

int mkv_access_log_open(const char *spec, char **err) {
  if (spec == NULL || spec[0] == '\0') {
    /* Off. The old descriptor stays open: a worker may be writing to it right now. */
    atomic_store(&access_fd, -1);
    return 0;
  }
  int fd;
  if (strcmp(spec, "-") == 0) {
    fd = dup(2);
  } else {
    fd = open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  }
  if (fd < 0) {
    if (err) *err = mkv_sprintf("cannot open the access log %s: %s", spec, strerror(errno));
    return -1;
  }
  int cur = atomic_load(&access_fd);
  if (cur >= 0) {
    /* Same descriptor number, new file: no worker ever sees a closed descriptor. */
    dup2(fd, cur);
    close(fd);
  } else {
    atomic_store(&access_fd, fd);
  }
  return 0;
}

int mkv_access_log_enabled(void) {
  return atomic_load_explicit(&access_fd, memory_order_relaxed) >= 0;
}

/* Bytes a log line must not carry as they are: quotes, backslashes, controls, non-ASCII
 * (a key is arbitrary bytes); written as \xHH, as nginx does. */
static size_t log_escape(char *out, size_t cap, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (size_t i = 0; i < n && o + 4 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out[o++] = '\\', out[o++] = 'x', out[o++] = hex[c >> 4], out[o++] = hex[c & 15];
    } else {
      out[o++] = (char)c;
    }
  }
  return o;
}

void mkv_access_log_write(const char *peer, const char *method, const char *target,
                          size_t target_len, int http_minor, int status,
                          unsigned long long body_bytes, double seconds) {
  int fd = atomic_load_explicit(&access_fd, memory_order_relaxed);
  if (fd < 0) return;
  char line[3072], when[40], tgt[2048];
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S +0000", &tm);
  size_t tl = log_escape(tgt, sizeof(tgt), target, target_len);
  int n = snprintf(line, sizeof(line), "%s - - [%s] \"%s %.*s HTTP/1.%d\" %d %llu %.6f\n",
                   peer && peer[0] ? peer : "-", when, method ? method : "-", (int)tl, tgt,
                   http_minor, status, body_bytes, seconds);
  if (n < 0) return;
  if ((size_t)n >= sizeof(line)) {
    n = (int)sizeof(line) - 1;
    line[n - 1] = '\n';
  }
  ssize_t w = write(fd, line, (size_t)n);
  (void)w;
}

void mkv_print_error(const char *msg) {
  /* A message built from a config or a policy's error may hold newlines or tabs (Lua's
   * "module not found" lists do): one line all the same. */
  fputs("mkv: ", stderr);
  for (const char *p = msg; *p; p++) {
    unsigned char c = (unsigned char)*p;
    fputc(c == '\n' || c == '\t' || c == '\r' ? ' ' : (int)c, stderr);
  }
  fputc('\n', stderr);
}
