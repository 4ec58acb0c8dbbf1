/* repair.c: the set of keys the background repair has to look at (repair.h): a chained
 * hash table of the keys, and a FIFO of those waiting for a pass. */
#include "mkv/repair.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { E_TODO, E_TAKEN };

typedef struct entry_s {
  struct entry_s *next_hash;
  struct entry_s *prev, *next; /* in the FIFO while E_TODO */
  int state;
  int again;                   /* noted again while taken: back to the FIFO on done */
  int failures;                /* failed attempts so far */
  unsigned long long pass;     /* a retried key waits for a pass after this one */
  size_t klen;
  char key[];
} entry_t;

static struct {
  pthread_mutex_t mu;
  entry_t **buckets;
  size_t nbuckets, count;
  entry_t *head, *tail;
  unsigned long long pass;
  unsigned long long repaired, dropped, given_up;
  int scan_due, scanning, scans_done;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .scan_due = 1};

static uint64_t hash_key(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static entry_t **slot(const char *key, size_t klen) {
  if (R.buckets == NULL) {
    R.nbuckets = 1024;
    R.buckets = mkv_calloc(R.nbuckets, sizeof(*R.buckets));
  }
  entry_t **pp = &R.buckets[hash_key(key, klen) & (R.nbuckets - 1)];
  while (*pp && !((*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
    pp = &(*pp)->next_hash;
  return pp;
}

static void grow(void) {
  size_t n = R.nbuckets * 2;
  entry_t **b = mkv_calloc(n, sizeof(*b));
  for (size_t i = 0; i < R.nbuckets; i++) {
    for (entry_t *e = R.buckets[i], *next; e; e = next) {
      next = e->next_hash;
      size_t j = hash_key(e->key, e->klen) & (n - 1);
      e->next_hash = b[j];
      b[j] = e;
    }
  }
  free(R.buckets);
  R.buckets = b;
  R.nbuckets = n;
}

static void fifo_push(entry_t *e) {
  e->state = E_TODO;
  e->prev = R.tail;
  e->next = NULL;
  if (R.tail)
    R.tail->next = e;
  else
    R.head = e;
  R.tail = e;
}

static void fifo_remove(entry_t *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    R.head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    R.tail = e->prev;
  e->prev = e->next = NULL;
}

void mkv_repair_note(const char *key, size_t klen) {
  pthread_mutex_lock(&R.mu);
  entry_t **pp = slot(key, klen);
  if (*pp) {
    if ((*pp)->state == E_TAKEN) (*pp)->again = 1;
  } else if (R.count >= MKV_REPAIR_MAX) {
    /* Past the bound the set stops growing: a scan of the index finds these keys. */
    R.dropped++;
    R.scan_due = 1;
  } else {
    entry_t *e = mkv_calloc(1, sizeof(*e) + klen);
    e->klen = klen;
    memcpy(e->key, key, klen);
    *pp = e;
    R.count++;
    fifo_push(e);
    if (R.count > R.nbuckets * 2) grow();
  }
  pthread_mutex_unlock(&R.mu);
}

void mkv_repair_pass(void) {
  pthread_mutex_lock(&R.mu);
  R.pass++;
  pthread_mutex_unlock(&R.mu);
}

int mkv_repair_take(int n, void (*fn)(const char *key, size_t klen, void *arg), void *arg) {
  pthread_mutex_lock(&R.mu);
  int taken = 0;
  while (taken < n && R.head && R.head->pass < R.pass) {
    entry_t *e = R.head;
    fifo_remove(e);
    e->state = E_TAKEN;
    e->again = 0;
    fn(e->key, e->klen, arg);
    taken++;
  }
  pthread_mutex_unlock(&R.mu);
  return taken;
}

void mkv_repair_done(const char *key, size_t klen) {
  pthread_mutex_lock(&R.mu);
  entry_t **pp = slot(key, klen);
  entry_t *e = *pp;
  if (e && e->state == E_TAKEN) {
    if (e->again) { /* written again meanwhile: look at it once more */
      e->pass = 0;
      fifo_push(e);
    } else {
      *pp = e->next_hash;
      free(e);
      R.count--;
      R.repaired++;
    }
  }
  pthread_mutex_unlock(&R.mu);
}

void mkv_repair_retry(const char *key, size_t klen, int failed) {
  pthread_mutex_lock(&R.mu);
  entry_t **pp = slot(key, klen);
  entry_t *e = *pp;
  if (e && e->state == E_TAKEN) {
    if (failed && ++e->failures >= MKV_REPAIR_ATTEMPTS && !e->again) {
      *pp = e->next_hash;
      free(e);
      R.count--;
      R.given_up++;
    } else {
      e->pass = e->again ? 0 : R.pass;
      fifo_push(e);
    }
  }
  pthread_mutex_unlock(&R.mu);
}

void mkv_repair_want_scan(void) {
  pthread_mutex_lock(&R.mu);
  R.scan_due = 1;
  pthread_mutex_unlock(&R.mu);
}

int mkv_repair_take_scan(void) {
  pthread_mutex_lock(&R.mu);
  int due = R.scan_due && !R.scanning;
  if (due) {
    R.scan_due = 0;
    R.scanning = 1;
  }
  pthread_mutex_unlock(&R.mu);
  return due;
}

void mkv_repair_scan_done(void) {
  pthread_mutex_lock(&R.mu);
  R.scanning = 0;
  R.scans_done++;
  pthread_mutex_unlock(&R.mu);
}

void mkv_repair_stats(mkv_repair_stats_t *st) {
  pthread_mutex_lock(&R.mu);
  st->keys = R.count;
  st->repaired = R.repaired;
  st->dropped = R.dropped;
  st->given_up = R.given_up;
  st->scanning = R.scanning;
  st->scan_due = R.scan_due;
  st->scans_done = R.scans_done;
  pthread_mutex_unlock(&R.mu);
}

void mkv_repair_free(void) {
  pthread_mutex_lock(&R.mu);
  for (size_t i = 0; i < R.nbuckets; i++) {
    for (entry_t *e = R.buckets[i], *next; e; e = next) {
      next = e->next_hash;
      free(e);
    }
  }
  free(R.buckets);
  R.buckets = NULL;
  R.nbuckets = R.count = 0;
  R.head = R.tail = NULL;
  pthread_mutex_unlock(&R.mu);
}
