/* test_keylock.c: core/keylock.c -- the process-wide table of keys held by writers. */
#include "runner.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include "mkv/keylock.h"

TEST(try_release) {
  ASSERT_EQ(mkv_keylock_count(), 0);
  ASSERT_EQ(mkv_keylock_try("/a", 2), 0);
  ASSERT_EQ(mkv_keylock_count(), 1);
  ASSERT_EQ(mkv_keylock_try("/a", 2), UV_EBUSY); /* no waiting: busy at once */
  ASSERT_EQ(mkv_keylock_count(), 1);
  ASSERT_EQ(mkv_keylock_try("/b", 2), 0);
  ASSERT_EQ(mkv_keylock_count(), 2);
  mkv_keylock_release("/a", 2);
  ASSERT_EQ(mkv_keylock_count(), 1);
  ASSERT_EQ(mkv_keylock_try("/a", 2), 0); /* free again */
  mkv_keylock_release("/a", 2);
  mkv_keylock_release("/b", 2);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST(release_of_unheld_key_is_harmless) {
  mkv_keylock_release("/never", 6);
  ASSERT_EQ(mkv_keylock_count(), 0);
  ASSERT_EQ(mkv_keylock_try("/x", 2), 0);
  mkv_keylock_release("/y", 2);
  ASSERT_EQ(mkv_keylock_count(), 1);
  ASSERT_EQ(mkv_keylock_try("/x", 2), UV_EBUSY);
  mkv_keylock_release("/x", 2);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST(binary_keys) {
  /* Keys hold NUL: the length is part of the key. */
  ASSERT_EQ(mkv_keylock_try("a\0b", 3), 0);
  ASSERT_EQ(mkv_keylock_try("a\0c", 3), 0);  /* differs after the NUL */
  ASSERT_EQ(mkv_keylock_try("a", 1), 0);     /* a prefix up to the NUL */
  ASSERT_EQ(mkv_keylock_try("a\0", 2), 0);
  ASSERT_EQ(mkv_keylock_count(), 4);
  ASSERT_EQ(mkv_keylock_try("a\0b", 3), UV_EBUSY);
  ASSERT_EQ(mkv_keylock_try("a\0c", 3), UV_EBUSY);
  ASSERT_EQ(mkv_keylock_try("a", 1), UV_EBUSY);
  ASSERT_EQ(mkv_keylock_try("a\0", 2), UV_EBUSY);
  mkv_keylock_release("a\0b", 3);
  ASSERT_EQ(mkv_keylock_try("a\0c", 3), UV_EBUSY); /* the neighbour is still held */
  ASSERT_EQ(mkv_keylock_try("a\0b", 3), 0);
  mkv_keylock_release("a\0b", 3);
  mkv_keylock_release("a\0c", 3);
  mkv_keylock_release("a", 1);
  mkv_keylock_release("a\0", 2);
  ASSERT_EQ(mkv_keylock_count(), 0);
  /* The empty key is a key too. */
  ASSERT_EQ(mkv_keylock_try("", 0), 0);
  ASSERT_EQ(mkv_keylock_try("", 0), UV_EBUSY);
  mkv_keylock_release("", 0);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST(many_keys) {
  /* More keys than buckets: chains must work. */
  char key[32];
  for (int i = 0; i < 20000; i++) {
    int n = snprintf(key, sizeof(key), "/k%d", i);
    ASSERT_EQ(mkv_keylock_try(key, (size_t)n), 0);
  }
  ASSERT_EQ(mkv_keylock_count(), 20000);
  for (int i = 0; i < 20000; i += 7) {
    int n = snprintf(key, sizeof(key), "/k%d", i);
    ASSERT_EQ(mkv_keylock_try(key, (size_t)n), UV_EBUSY);
  }
  for (int i = 0; i < 20000; i++) {
    int n = snprintf(key, sizeof(key), "/k%d", i);
    mkv_keylock_release(key, (size_t)n);
  }
  ASSERT_EQ(mkv_keylock_count(), 0);
}

/* ---- threads ---- */

#define NTHREADS 8
#define ROUNDS 20000

static _Atomic int holders;     /* threads holding the shared key right now */
static _Atomic int max_holders; /* the most ever seen at once */
static _Atomic long grants, busy;
static _Atomic int distinct_failures;

static void *hammer_same(void *arg) {
  (void)arg;
  for (int i = 0; i < ROUNDS; i++) {
    if (mkv_keylock_try("/same\0key", 9) == 0) {
      int h = atomic_fetch_add(&holders, 1) + 1;
      int m = atomic_load(&max_holders);
      while (h > m && !atomic_compare_exchange_weak(&max_holders, &m, h)) {
      }
      atomic_fetch_add(&grants, 1);
      if (i % 16 == 0) sched_yield(); /* hold it a little, so others collide */
      atomic_fetch_sub(&holders, 1);
      mkv_keylock_release("/same\0key", 9);
    } else {
      atomic_fetch_add(&busy, 1);
    }
  }
  return NULL;
}

static void *hammer_distinct(void *arg) {
  int id = (int)(intptr_t)arg;
  char key[32];
  for (int i = 0; i < ROUNDS; i++) {
    int n = snprintf(key, sizeof(key), "/t%d/%d", id, i % 50);
    /* Nobody else uses this thread's keys: every try must succeed. */
    if (mkv_keylock_try(key, (size_t)n) != 0) atomic_fetch_add(&distinct_failures, 1);
    mkv_keylock_release(key, (size_t)n);
  }
  return NULL;
}

TEST(threads_same_key_never_double_granted) {
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) ASSERT_EQ(pthread_create(&th[i], NULL, hammer_same, NULL), 0);
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  ASSERT_EQ(atomic_load(&max_holders), 1);
  ASSERT(atomic_load(&grants) > 0);
  ASSERT_EQ(atomic_load(&grants) + atomic_load(&busy), (long)NTHREADS * ROUNDS);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST(threads_distinct_keys_never_busy) {
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    ASSERT_EQ(pthread_create(&th[i], NULL, hammer_distinct, (void *)(intptr_t)i), 0);
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  ASSERT_EQ(atomic_load(&distinct_failures), 0);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST(threads_mixed) {
  /* Both at once: the shared key's contention must not disturb the private keys. */
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    ASSERT_EQ(pthread_create(&th[i], NULL, i % 2 ? hammer_same : hammer_distinct,
                             (void *)(intptr_t)i),
              0);
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  ASSERT_EQ(atomic_load(&max_holders), 1);
  ASSERT_EQ(atomic_load(&distinct_failures), 0);
  ASSERT_EQ(mkv_keylock_count(), 0);
}

TEST_MAIN(T(try_release), T(release_of_unheld_key_is_harmless), T(binary_keys), T(many_keys),
          T(threads_same_key_never_double_granted), T(threads_distinct_keys_never_busy),
          T(threads_mixed))
