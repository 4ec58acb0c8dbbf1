/* runner.c: forks one process per test case, with a timeout. */
#include "runner.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Present only when linked with a sanitizer runtime (weak: NULL otherwise). */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

double mkv_test_timeout(double seconds) {
  const char *m = getenv("MKV_TEST_TIMEOUT_MULTIPLIER");
  double k = m ? atof(m) : 1;
  return seconds * (k > 0 ? k : 1);
}

int mkv_test_main(int argc, char **argv, const test_case_t *cases, int n) {
  int passed = 0, failed = 0;
  const char *only = argc > 1 ? argv[1] : NULL;
  for (int i = 0; i < n; i++) {
    if (only && strcmp(only, cases[i].name) != 0) continue;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      alarm((unsigned)mkv_test_timeout(30));
      cases[i].fn();
      fflush(NULL);
      /* _exit skips LeakSanitizer's exit-time check: run it here (ASan builds). */
      if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check() != 0) _exit(23);
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      printf("ok %s\n", cases[i].name);
      passed++;
    } else {
      printf("FAIL %s (%s %d)\n", cases[i].name, WIFSIGNALED(status) ? "signal" : "exit",
             WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      failed++;
    }
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
