/* common.h: allocation that aborts, growable byte buffers, small shared helpers.
 *
 * Used by every core file and by the Lua helper module. Thread-safe: nothing here keeps
 * state. Out of memory is not an error mkv recovers from: mkv_fatal() prints and aborts
 * (as Redis zmalloc and h2o do), so callers never check for NULL. */
#ifndef MKV_COMMON_H
#define MKV_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#define MKV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MKV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MKV_MAX(a, b) ((a) > (b) ? (a) : (b))
/* A count's noun: printf("%d %s", n, MKV_PLURAL(n, "volume", "volumes")). */
#define MKV_PLURAL(n, one, many) ((n) == 1 ? (one) : (many))

/* MKV_ASAN: built with AddressSanitizer (gcc says so with __SANITIZE_ADDRESS__, clang
 * with __has_feature); code that recycles memory poisons it then. */
#if defined(__SANITIZE_ADDRESS__)
#define MKV_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MKV_ASAN 1
#endif
#endif

#if defined(__GNUC__)
#define MKV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define MKV_NORETURN __attribute__((noreturn))
#else
#define MKV_PRINTF(f, a)
#define MKV_NORETURN
#endif

/* Prints "mkv: fatal: <msg>" to stderr and aborts. */
MKV_NORETURN void mkv_fatal(const char *fmt, ...) MKV_PRINTF(1, 2);

void *mkv_malloc(size_t n);
void *mkv_calloc(size_t n, size_t size);
void *mkv_realloc(void *p, size_t n);
char *mkv_strdup(const char *s);
char *mkv_memdup(const void *p, size_t n); /* returns owned, NUL-terminated copy */
/* Returns owned: a printf-formatted string. */
char *mkv_sprintf(const char *fmt, ...) MKV_PRINTF(1, 2);

/* A growable byte buffer, always NUL-terminated after `len` bytes (so text helpers may
 * treat it as a C string when the content has no NUL). */
typedef struct mkv_buf_s {
  char *data;
  size_t len;
  size_t cap;
} mkv_buf_t;

void mkv_buf_init(mkv_buf_t *b);
void mkv_buf_free(mkv_buf_t *b);
void mkv_buf_reset(mkv_buf_t *b); /* len = 0, keeps the memory */
void mkv_buf_reserve(mkv_buf_t *b, size_t extra);
void mkv_buf_add(mkv_buf_t *b, const void *p, size_t n);
void mkv_buf_adds(mkv_buf_t *b, const char *s);
void mkv_buf_addc(mkv_buf_t *b, char c);
void mkv_buf_addf(mkv_buf_t *b, const char *fmt, ...) MKV_PRINTF(2, 3);
void mkv_buf_set(mkv_buf_t *b, const void *p, size_t n);

/* Monotonic clock in milliseconds and nanoseconds (CLOCK_MONOTONIC). */
/* fsyncs a directory, so a rename or a new file in it survives a power loss. 0 or -1. */
int mkv_fsync_dir(const char *dir);

uint64_t mkv_now_ms(void);
uint64_t mkv_now_ns(void);

/* Error codes of mkv's own, beyond libuv's UV_E* (all negative, below libuv's range). */
#define MKV_EPOLICY (-10001)   /* a policy raised, timed out or returned garbage */
#define MKV_EINDEX (-10002)    /* the index is in its failed (read-only) state */
#define MKV_ESTATUS (-10003)   /* a volume answered with an unexpected status */
#define MKV_EKEYLONG (-10004)  /* a path component of the key's file is over 255 bytes */
#define MKV_EKEYPATH (-10005)  /* the key's file path has an empty component */
#define MKV_ECORRUPT (-10006)  /* a record or an index file is corrupt */
#define MKV_EPROTO (-10007)    /* a volume broke HTTP */
#define MKV_ENOTPRIMARY (-10008) /* HA: this node may not write (a standby, or a primary
                                    whose lease in etcd is not certain) */
#define MKV_ENOSYNC (-10009)   /* HA: no standby confirmed the write (ha.sync = "strict") */

/* A short text for any code: mkv's own or libuv's. */
const char *mkv_strerror(int err);
/* The symbolic name ("ECONNREFUSED", "EPOLICY"). */
const char *mkv_errname(int err);

#endif
