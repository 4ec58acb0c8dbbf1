/* runner.h: a tiny test runner in the spirit of libuv's test/runner.c -- each case runs
 * in its own forked process with a timeout, so static state and crashes never leak
 * between cases. A test file defines its cases with TEST(name) and lists them with
 * TEST_LIST(...). Prints one line per case and "N passed, M failed". */
#ifndef MKV_TEST_RUNNER_H
#define MKV_TEST_RUNNER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
typedef struct {
  const char *name;
  test_fn fn;
} test_case_t;

#define TEST(name) static void test_##name(void)
#define T(name) {#name, test_##name}

#define ASSERT(cond)                                                                     \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);       \
      abort();                                                                           \
    }                                                                                    \
  } while (0)
#define ASSERT_EQ(a, b) ASSERT((a) == (b))
#define ASSERT_STREQ(a, b)                                                               \
  do {                                                                                   \
    const char *a_ = (a), *b_ = (b);                                                     \
    if (strcmp(a_, b_) != 0) {                                                           \
      fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_, b_);          \
      abort();                                                                           \
    }                                                                                    \
  } while (0)
#define ASSERT_MEMEQ(a, b, n) ASSERT(memcmp((a), (b), (n)) == 0)

int mkv_test_main(int argc, char **argv, const test_case_t *cases, int n);
/* Seconds a case may run, scaled by MKV_TEST_TIMEOUT_MULTIPLIER (ASan builds). */
double mkv_test_timeout(double seconds);

#define TEST_MAIN(...)                                                                   \
  static const test_case_t mkv_cases_[] = {__VA_ARGS__};                                 \
  int main(int argc, char **argv) {                                                      \
    return mkv_test_main(argc, argv, mkv_cases_,                                         \
                         (int)(sizeof(mkv_cases_) / sizeof(mkv_cases_[0])));             \
  }

#endif
