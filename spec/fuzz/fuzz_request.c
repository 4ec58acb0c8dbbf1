/* fuzz_request: raw bytes from a client, through the whole request path -- llhttp with
 * mkv's callbacks and limits (server.c), the API (api.c, listing.c), the policy state,
 * the index -- without a network: the input is written into one end of a socketpair
 * whose other end the server adopts as an accepted connection. The one volume is
 * 127.0.0.1:1, which refuses at once, so writes fail the way a dead volume fails them.
 *
 * Properties: no crash, no leak, no UB; every input ends with the connection closed
 * (the server never hangs on a client that has sent all it will send); what comes back
 * starts with a status line whenever anything comes back. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "mkv/api.h"
#include "mkv/config.h"
#include "mkv/hash.h"
#include "mkv/index.h"
#include "mkv/log.h"
#include "mkv/server.h"
#include "mkv/upstream.h"
#include "mkv/worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mkv_config_t cfg;
static mkv_index_t *idx;
static mkv_worker_t w;

static void setup(void) {
  char dir[] = "/tmp/mkv-fuzz-request-XXXXXX";
  if (!mkdtemp(dir)) abort();
  char db[64];
  snprintf(db, sizeof(db), "%s/index", dir);
  mkv_flag_t flags[] = {{"volumes", "127.0.0.1:1"}, {"db", db}, {"replicas", "1"},
                        {"workers", "1"}, {"voltimeout", "100ms"}};
  char *err = NULL;
  if (mkv_hash_init() != 0) abort();
  mkv_log_set_level(MKV_LOG_ERROR);
  if (mkv_config_load(&cfg, NULL, flags, 5, "server", &err) != 0) {
    fprintf(stderr, "fuzz_request: config: %s\n", err);
    abort();
  }
  /* Short timeouts: an input that stops mid-request must not cost seconds. */
  cfg.limits.header_timeout_ms = cfg.limits.body_timeout_ms = cfg.limits.idle_timeout_ms = 200;
  cfg.limits.volume_timeout_ms = 200;
  if (mkv_index_open(&idx, cfg.db, &cfg, &err) != 0) {
    fprintf(stderr, "fuzz_request: index: %s\n", err);
    abort();
  }
  if (mkv_worker_init(&w, 1, &cfg, 1, &err) != 0) {
    fprintf(stderr, "fuzz_request: worker: %s\n", err);
    abort();
  }
  /* What mkv_worker_start does, minus the thread and the listening socket. */
  w.index = idx;
  uv_loop_init(&w.loop);
  if (mkv_index_port_new(idx, &w.loop, &w.port) != 0) abort();
  w.up = mkv_upstream_new(&w.loop, cfg.limits.suspect_time_ms);
  w.server = mkv_server_new(&w, &mkv_api_handler);
  uv_timer_init(&w.loop, &w.defer_timer); /* listings and stream callbacks defer work */
  w.defer_timer.data = &w;
}

typedef struct {
  int fd;
  uv_poll_t poll;
  char head[16];
  size_t got;
  int eof;
} client_t;

static void on_client(uv_poll_t *p, int status, int events) {
  client_t *c = p->data;
  (void)status;
  (void)events;
  char buf[65536];
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n > 0) {
      size_t keep = sizeof(c->head) - c->got < (size_t)n ? sizeof(c->head) - c->got : (size_t)n;
      memcpy(c->head + c->got, buf, keep);
      c->got += keep;
      continue;
    }
    /* the end, or a reset (the server closed with our bytes unread: ECONNRESET) */
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) c->eof = 1;
    break;
  }
  if (c->eof) uv_poll_stop(p);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    setup();
    ready = 1;
  }
  if (size > 1 << 16) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) abort();
  int big = 1 << 18;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  size_t off = 0;
  while (off < size) { /* fits the buffer: inputs are at most 64 KiB */
    ssize_t n = write(sv[1], data + off, size - off);
    if (n <= 0) abort();
    off += (size_t)n;
  }
  shutdown(sv[1], SHUT_WR); /* all the client will ever send */
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  if (mkv_server_adopt(w.server, sv[0]) != 0) abort();
  client_t c = {.fd = sv[1]};
  uv_poll_init(&w.loop, &c.poll, sv[1]);
  c.poll.data = &c;
  uv_poll_start(&c.poll, UV_READABLE, on_client);
  /* The server must close the connection by itself: within the short timeouts set
   * above, whatever the input. 10 s of loop time would be a hang. */
  uint64_t t0 = uv_hrtime();
  uv_timer_t tick; /* so that the loop wakes up to check, whatever it waits for */
  uv_timer_init(&w.loop, &tick);
  uv_timer_start(&tick, on_tick, 100, 100);
  while (!c.eof || mkv_server_connections(w.server) > 0 || w.live_reqs > 0) {
    uv_run(&w.loop, UV_RUN_ONCE);
    if (uv_hrtime() - t0 > 10ull * 1000000000ull) {
      fprintf(stderr, "fuzz_request: the connection was still open after 10 s (eof %d, "
              "connections %d, requests %d)\n", c.eof, mkv_server_connections(w.server),
              w.live_reqs);
      abort();
    }
  }
  uv_close((uv_handle_t *)&c.poll, NULL);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&w.loop, UV_RUN_NOWAIT);
  close(sv[1]);
  if (c.got > 0 && !(c.got >= 5 && memcmp(c.head, "HTTP/", 5) == 0)) abort();
  return 0;
}
