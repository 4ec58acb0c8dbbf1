/* keylock.c: a chained hash set of locked keys behind one mutex. The critical sections
 * are a hash and a short chain walk; Go's sync.Mutex + map does the same. */
#include "mkv/keylock.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "mkv/common.h"

#define NBUCKETS 4096 /* locks in flight are bounded by concurrent writes */

typedef struct entry_s {
  struct entry_s *next;
  mkv_lock_owner_t owner;
  size_t klen;
  char key[];
} entry_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry_t *buckets[NBUCKETS];
static int count;

static uint32_t hash(const char *key, size_t klen) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < klen; i++) h = (h ^ (unsigned char)key[i]) * 16777619u;
  return h;
}

int mkv_keylock_try(const char *key, size_t klen) {
  return mkv_keylock_try_as(key, klen, MKV_LOCK_CLIENT, NULL);
}

int mkv_keylock_try_as(const char *key, size_t klen, mkv_lock_owner_t owner,
                       mkv_lock_owner_t *holder) {
  uint32_t b = hash(key, klen) % NBUCKETS;
  pthread_mutex_lock(&mu);
  for (entry_t *e = buckets[b]; e; e = e->next) {
    if (e->klen == klen && memcmp(e->key, key, klen) == 0) {
      if (holder) *holder = e->owner;
      pthread_mutex_unlock(&mu);
      return UV_EBUSY;
    }
  }
  entry_t *e = mkv_malloc(sizeof(*e) + klen);
  e->owner = owner;
  e->klen = klen;
  memcpy(e->key, key, klen);
  e->next = buckets[b];
  buckets[b] = e;
  count++;
  pthread_mutex_unlock(&mu);
  return 0;
}

void mkv_keylock_release(const char *key, size_t klen) {
  uint32_t b = hash(key, klen) % NBUCKETS;
  pthread_mutex_lock(&mu);
  for (entry_t **pp = &buckets[b]; *pp; pp = &(*pp)->next) {
    entry_t *e = *pp;
    if (e->klen == klen && memcmp(e->key, key, klen) == 0) {
      *pp = e->next;
      free(e);
      count--;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
}

int mkv_keylock_count(void) {
  pthread_mutex_lock(&mu);
  int n = count;
  pthread_mutex_unlock(&mu);
  return n;
}
