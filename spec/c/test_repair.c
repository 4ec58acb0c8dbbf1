/* test_repair.c: core/repair.c -- the repair set: keys noted once each, taken in passes,
 * settled or put back for a later pass, noted again while taken, bounded in size, and
 * the scan wish. */
#include "testutil.h"

#include "mkv/repair.h"

typedef struct took_s {
  int n;
  char keys[16][32];
} took_t;

static void took(const char *key, size_t klen, void *arg) {
  took_t *t = arg;
  ASSERT(t->n < 16 && klen < 32);
  memcpy(t->keys[t->n], key, klen);
  t->keys[t->n][klen] = '\0';
  t->n++;
}

static unsigned long long keys_now(void) {
  mkv_repair_stats_t st;
  mkv_repair_stats(&st);
  return st.keys;
}

TEST(noted_once_taken_in_order_settled) {
  mkv_repair_note("/a", 2);
  mkv_repair_note("/b", 2);
  mkv_repair_note("/a", 2); /* again: still one */
  mkv_repair_note("/k\0x", 4); /* keys are bytes */
  ASSERT_EQ(keys_now(), 3);
  took_t t = {0};
  ASSERT_EQ(mkv_repair_take(10, took, &t), 0); /* no pass begun: nothing is due */
  mkv_repair_pass();
  ASSERT_EQ(mkv_repair_take(2, took, &t), 2);
  ASSERT_STREQ(t.keys[0], "/a");
  ASSERT_STREQ(t.keys[1], "/b");
  ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
  ASSERT_EQ(keys_now(), 3); /* taken keys still count until settled */
  mkv_repair_done("/a", 2);
  mkv_repair_done("/k\0x", 4);
  ASSERT_EQ(keys_now(), 1);
  mkv_repair_stats_t st;
  mkv_repair_stats(&st);
  ASSERT_EQ(st.repaired, 2);
  mkv_repair_done("/nothing", 8); /* unknown: ignored */
  mkv_repair_free();
}

TEST(retry_waits_for_the_next_pass) {
  mkv_repair_note("/r", 2);
  mkv_repair_pass();
  took_t t = {0};
  ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
  mkv_repair_retry("/r", 2, 0);
  ASSERT_EQ(mkv_repair_take(10, took, &t), 0); /* not again in the same pass */
  mkv_repair_pass();
  ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
  ASSERT_STREQ(t.keys[1], "/r");
  mkv_repair_free();
}

TEST(noted_while_taken_is_looked_at_again) {
  mkv_repair_note("/w", 2);
  mkv_repair_pass();
  took_t t = {0};
  ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
  mkv_repair_note("/w", 2); /* a PUT wrote it again meanwhile */
  mkv_repair_done("/w", 2);
  ASSERT_EQ(keys_now(), 1); /* not forgotten: back in the queue, due at once */
  ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
  mkv_repair_done("/w", 2);
  ASSERT_EQ(keys_now(), 0);
  mkv_repair_free();
}

TEST(bounded_then_a_scan_is_due) {
  ASSERT_EQ(mkv_repair_take_scan(), 1); /* due at start */
  ASSERT_EQ(mkv_repair_take_scan(), 0); /* taken */
  mkv_repair_scan_done();
  ASSERT_EQ(mkv_repair_take_scan(), 0);
  char k[16];
  for (int i = 0; i < MKV_REPAIR_MAX + 10; i++) {
    int n = snprintf(k, sizeof(k), "/%d", i);
    mkv_repair_note(k, (size_t)n);
  }
  mkv_repair_stats_t st;
  mkv_repair_stats(&st);
  ASSERT_EQ(st.keys, MKV_REPAIR_MAX);
  ASSERT_EQ(st.dropped, 10);
  ASSERT_EQ(mkv_repair_take_scan(), 1); /* what was dropped, a scan finds */
  mkv_repair_free();
}

TEST(failed_attempts_are_given_up) {
  mkv_repair_note("/f", 2);
  took_t t = {0};
  for (int i = 0; i < MKV_REPAIR_ATTEMPTS; i++) {
    mkv_repair_pass();
    t.n = 0;
    ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
    mkv_repair_retry("/f", 2, 1);
  }
  mkv_repair_stats_t st;
  mkv_repair_stats(&st);
  ASSERT_EQ(st.keys, 0);
  ASSERT_EQ(st.given_up, 1);
  /* waiting (a volume down) is no failed attempt: kept however long */
  mkv_repair_note("/w", 2);
  for (int i = 0; i < MKV_REPAIR_ATTEMPTS * 2; i++) {
    mkv_repair_pass();
    t.n = 0;
    ASSERT_EQ(mkv_repair_take(10, took, &t), 1);
    mkv_repair_retry("/w", 2, 0);
  }
  mkv_repair_stats(&st);
  ASSERT_EQ(st.keys, 1);
  mkv_repair_free();
}

TEST_MAIN(T(noted_once_taken_in_order_settled), T(retry_waits_for_the_next_pass),
          T(failed_attempts_are_given_up),
          T(noted_while_taken_is_looked_at_again), T(bounded_then_a_scan_is_due))
