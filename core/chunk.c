/* chunk.c: reference-counted body chunks, and the per-thread pool that recycles the
 * streaming size (chunk.h). */
#include "mkv/chunk.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/common.h"

/* Enough for the default high_water (4 MiB in flight) to cycle without malloc. */
#define POOL_MAX 64
static _Thread_local mkv_chunk_t *pool_head; /* linked through ->data */
static _Thread_local int pool_len;

/* A chunk resting in the pool is poisoned for AddressSanitizer, all but its link
 * (->data), so a use after the last unref is caught as it would be after free(). */
#ifdef MKV_ASAN
#include <sanitizer/asan_interface.h>
static void chunk_poison(mkv_chunk_t *ch) {
  ASAN_POISON_MEMORY_REGION(ch->bytes, ch->cap);
  ASAN_POISON_MEMORY_REGION(ch, offsetof(mkv_chunk_t, data));
}
static void chunk_unpoison(mkv_chunk_t *ch) {
  ASAN_UNPOISON_MEMORY_REGION(ch, offsetof(mkv_chunk_t, data));
  ASAN_UNPOISON_MEMORY_REGION(ch->bytes, ch->cap);
}
#else
#define chunk_poison(ch) ((void)(ch))
#define chunk_unpoison(ch) ((void)(ch))
#endif

mkv_chunk_t *mkv_chunk_alloc(size_t cap, int refs, mkv_chunk_release_cb release, void *data) {
  mkv_chunk_t *ch;
  if (cap == MKV_CHUNK_POOLED && pool_head != NULL) {
    ch = pool_head;
    pool_head = ch->data;
    pool_len--;
    chunk_unpoison(ch);
  } else {
    ch = mkv_malloc(sizeof(*ch) + cap);
    ch->cap = cap;
  }
  ch->refs = refs;
  ch->len = 0;
  ch->release = release;
  ch->data = data;
  return ch;
}

mkv_chunk_t *mkv_chunk_new(const void *p, size_t len, int refs, mkv_chunk_release_cb release,
                           void *data) {
  mkv_chunk_t *ch = mkv_chunk_alloc(len, refs, release, data);
  ch->len = len;
  if (len) memcpy(ch->bytes, p, len);
  return ch;
}

void mkv_chunk_free(mkv_chunk_t *ch) {
  if (ch == NULL) return;
  if (ch->cap == MKV_CHUNK_POOLED && pool_len < POOL_MAX) {
    ch->data = pool_head;
    pool_head = ch;
    pool_len++;
    chunk_poison(ch);
    return;
  }
  free(ch);
}

void mkv_chunk_pool_drain(void) {
  while (pool_head) {
    mkv_chunk_t *next = pool_head->data;
    chunk_unpoison(pool_head);
    free(pool_head);
    pool_head = next;
  }
  pool_len = 0;
}

void mkv_chunk_unref(mkv_chunk_t *ch) {
  if (--ch->refs > 0) return;
  if (ch->release) ch->release(ch);
  mkv_chunk_free(ch);
}
