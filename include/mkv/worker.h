/* worker.h: one worker thread -- a libuv loop with its own Lua policy state, upstream
 * pools and index port, serving connections accepted on the shared listening socket.
 *
 * main.c binds the listening socket once (so a busy port is an error) and starts N
 * workers; each adopts a dup() of the socket with uv_tcp_open (libuv 1.44 has no
 * UV_TCP_REUSEPORT). Everything a worker owns is touched only by its thread; what it
 * shares (the index, the key locks, the config) is thread-safe or read-only. */
#ifndef MKV_WORKER_H
#define MKV_WORKER_H

#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/index.h"
#include "mkv/policy.h"
#include "mkv/upstream.h"

typedef struct mkv_server_s mkv_server_t;
struct mkv_handler_s;

typedef struct mkv_worker_s {
  int id;
  char name[16];
  const mkv_config_t *cfg;
  mkv_index_t *index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wakeup; /* main -> worker: stop */
  _Atomic int stop_requested;
  int listen_fd; /* this worker's dup() of the shared listening socket */

  mkv_index_port_t *port;
  mkv_policy_t *policy;
  mkv_upstream_t *up;
  mkv_server_t *server;

  uint32_t rng; /* replica probe order (xorshift), per worker */
  mkv_buf_t scratch; /* a buffer a request may use and drop within one call (a Location) */
  int live_reqs; /* request objects alive, including detached ones (drain waits) */
  uv_timer_t drain_poll;
  int drain_ticks;
  uv_timer_t defer_timer;
  struct mkv_deferred_s *defer_head, *defer_tail;
  int started_ok;
  struct mkv_metrics_s *metrics; /* for /metrics; written by this thread only */
  /* Optional (the admin thread's volume prober): run on the worker's loop before it
   * serves (called by mkv_worker_start, on the caller's thread, before the loop runs),
   * when it starts to drain, and polled while it drains (nonzero: still busy). */
  void (*on_start)(struct mkv_worker_s *w);
  void (*on_drain)(struct mkv_worker_s *w);
  int (*busy)(struct mkv_worker_s *w);
  _Atomic(struct mkv_reload_s *) pending_reload; /* main -> worker: a new config */
} mkv_worker_t;

/* Creates the worker's Lua policy state, on the calling thread, so that a broken policy
 * stops startup before the index is opened or a socket bound. with_policy = 0 for the
 * admin thread, whose jobs make their own. */
int mkv_worker_init(mkv_worker_t *w, int id, const mkv_config_t *cfg, int with_policy,
                    char **err);
/* Starts serving: the worker adopts listen_fd (a dup of the shared socket) and runs its
 * loop on a new thread, answering with handler h. */
int mkv_worker_start(mkv_worker_t *w, mkv_index_t *index, int listen_fd,
                     const struct mkv_handler_s *h, char **err);
/* Frees a worker that was initialised but never started. */
void mkv_worker_destroy(mkv_worker_t *w);
/* Asks the worker to drain and stop (any thread). */
void mkv_worker_stop(mkv_worker_t *w);
void mkv_worker_join(mkv_worker_t *w);

/* Hands the worker a new config and policy state (SIGHUP; any thread): it switches on
 * its next loop turn, between requests -- connections and requests in flight go on --
 * and frees its old policy state. `cfg` must outlive the worker (main keeps every
 * config it ever loaded until exit: admin jobs may hold the old one). `policy` may be
 * NULL (the admin thread has none). */
void mkv_worker_reload(mkv_worker_t *w, const mkv_config_t *cfg, mkv_policy_t *policy);

uint32_t mkv_worker_rand(mkv_worker_t *w);

/* Runs cb(arg) on a later turn of the worker's loop, after other I/O had its turn: how
 * long work (a listing's slices) yields without recursion. Loop thread only. */
void mkv_worker_defer(mkv_worker_t *w, void (*cb)(void *arg), void *arg);

#endif
