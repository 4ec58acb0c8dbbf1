/* common.c: aborting allocation, byte buffers, clocks and error names.
 *
 * Everything here is thread-safe and keeps no state. */
#include "mkv/common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

void mkv_fatal(const char *fmt, ...) {
  va_list ap;
  fputs("mkv: fatal: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  abort();
}

void *mkv_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) mkv_fatal("out of memory (%zu bytes)", n);
  return p;
}

void *mkv_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (p == NULL) mkv_fatal("out of memory (%zu x %zu bytes)", n, size);
  return p;
}

void *mkv_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (q == NULL) mkv_fatal("out of memory (%zu bytes)", n);
  return q;
}

char *mkv_strdup(const char *s) {
  return mkv_memdup(s, strlen(s));
}

char *mkv_memdup(const void *p, size_t n) {
  char *q = mkv_malloc(n + 1);
  if (n) memcpy(q, p, n);
  q[n] = '\0';
  return q;
}

char *mkv_sprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) mkv_fatal("vsnprintf failed");
  char *s = mkv_malloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

void mkv_buf_init(mkv_buf_t *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void mkv_buf_free(mkv_buf_t *b) {
  free(b->data);
  mkv_buf_init(b);
}

void mkv_buf_reset(mkv_buf_t *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

void mkv_buf_reserve(mkv_buf_t *b, size_t extra) {
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap *= 2;
  b->data = mkv_realloc(b->data, cap);
  b->cap = cap;
}

void mkv_buf_add(mkv_buf_t *b, const void *p, size_t n) {
  mkv_buf_reserve(b, n);
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void mkv_buf_adds(mkv_buf_t *b, const char *s) {
  mkv_buf_add(b, s, strlen(s));
}

void mkv_buf_addc(mkv_buf_t *b, char c) {
  mkv_buf_add(b, &c, 1);
}

void mkv_buf_addf(mkv_buf_t *b, const char *fmt, ...) {
  va_list ap;
  char small[256];
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof(small)) {
    mkv_buf_add(b, small, (size_t)n);
    return;
  }
  mkv_buf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void mkv_buf_set(mkv_buf_t *b, const void *p, size_t n) {
  mkv_buf_reset(b);
  mkv_buf_add(b, p, n);
}

uint64_t mkv_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t mkv_now_ms(void) {
  return mkv_now_ns() / 1000000u;
}

static const struct {
  int code;
  const char *name;
  const char *text;
} mkv_errors[] = {
    {MKV_EPOLICY, "EPOLICY", "policy failed"},
    {MKV_EINDEX, "EINDEX", "index is read-only after a write error"},
    {MKV_ESTATUS, "ESTATUS", "volume answered an unexpected status"},
    {MKV_EKEYLONG, "EKEYLONG", "key too long for a volume file name"},
    {MKV_EKEYPATH, "EKEYPATH", "key's volume path has an empty component"},
    {MKV_ECORRUPT, "ECORRUPT", "corrupt data"},
    {MKV_EPROTO, "EPROTO", "volume broke the HTTP protocol"},
    {MKV_ENOTPRIMARY, "ENOTPRIMARY", "this index node is not the primary (or not sure of its lease)"},
    {MKV_ENOSYNC, "ENOSYNC", "no standby index confirmed the write (ha.sync is strict)"},
};

const char *mkv_strerror(int err) {
  for (size_t i = 0; i < MKV_ARRAY_SIZE(mkv_errors); i++)
    if (mkv_errors[i].code == err) return mkv_errors[i].text;
  return uv_strerror(err);
}

const char *mkv_errname(int err) {
  for (size_t i = 0; i < MKV_ARRAY_SIZE(mkv_errors); i++)
    if (mkv_errors[i].code == err) return mkv_errors[i].name;
  return uv_err_name(err);
}

int mkv_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}
