/* log.h: levelled logging to stderr, one line per event.
 *
 * Any thread may log; a line is written with one write(2) so lines from workers never
 * interleave. Each thread may name itself ("main", "w1", "index") for the line prefix.
 * MKV_LOG_RATELIMITED logs at most once a second per call site and says how many lines
 * it swallowed: used where a client or a broken policy could otherwise flood the log. */
#ifndef MKV_LOG_H
#define MKV_LOG_H

#include <stdatomic.h>
#include <stdint.h>

#include "mkv/common.h"

typedef enum { MKV_LOG_ERROR = 0, MKV_LOG_WARN, MKV_LOG_INFO, MKV_LOG_DEBUG } mkv_log_level_t;

void mkv_log_set_level(mkv_log_level_t level);
int mkv_log_enabled(mkv_log_level_t level);
/* The log's name for this thread, and its kernel name "mkv-<name>" (not for the main
 * thread: the process's own name stays "mkv"). Borrows: a string literal or static. */
void mkv_log_set_thread_name(const char *name);
void mkv_log(mkv_log_level_t level, const char *fmt, ...) MKV_PRINTF(2, 3);

/* The command line's error line: "mkv: <msg>" on stderr, on one line whatever msg holds.
 * For commands, before or instead of serving (the log is for the server). */
void mkv_print_error(const char *msg);

typedef struct mkv_log_limit_s {
  _Atomic uint64_t last_ms;
  _Atomic uint64_t suppressed;
} mkv_log_limit_t;

/* Returns the number of suppressed lines + 1 when this call may log, 0 when it may not. */
uint64_t mkv_log_limit_pass(mkv_log_limit_t *lim);

#define MKV_LOG_RATELIMITED(level, ...)                                                  \
  do {                                                                                   \
    static mkv_log_limit_t mkv__lim_;                                                    \
    uint64_t mkv__n_ = mkv_log_limit_pass(&mkv__lim_);                                   \
    if (mkv__n_ > 1) mkv_log(level, "(%llu similar lines suppressed)",                  \
                             (unsigned long long)(mkv__n_ - 1));                        \
    if (mkv__n_) mkv_log(level, __VA_ARGS__);                                            \
  } while (0)

/* The access log: one line per request, Common Log Format plus the seconds it took,
 *   127.0.0.1 - - [24/Nov/2026:15:27:28 +0000] "GET /key HTTP/1.1" 302 0 0.000412
 * written with one write(2) from any worker. `spec` is "" (off), "-" (stderr) or a file,
 * appended to. Opening again (SIGHUP) swaps the file in place with dup2, so a line being
 * written meanwhile lands in one file or the other, whole: what logrotate needs. The
 * status of a request whose client left before an answer is 499, as nginx logs it. */
int mkv_access_log_open(const char *spec, char **err);
int mkv_access_log_enabled(void);
void mkv_access_log_write(const char *peer, const char *method, const char *target,
                          size_t target_len, int http_minor, int status,
                          unsigned long long body_bytes, double seconds);

#define mkv_error(...) mkv_log(MKV_LOG_ERROR, __VA_ARGS__)
#define mkv_warn(...) mkv_log(MKV_LOG_WARN, __VA_ARGS__)
#define mkv_info(...) mkv_log(MKV_LOG_INFO, __VA_ARGS__)
#define mkv_debug(...)                                                                   \
  do {                                                                                   \
    if (mkv_log_enabled(MKV_LOG_DEBUG)) mkv_log(MKV_LOG_DEBUG, __VA_ARGS__);             \
  } while (0)

#endif
