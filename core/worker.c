/* worker.c: a worker thread's life: init (policy state), start (loop thread), drain. */
#include "mkv/worker.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mkv/hash.h"
#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/server.h"

uint32_t mkv_worker_rand(mkv_worker_t *w) {
  uint32_t x = w->rng; /* xorshift32: probe order needs spread, not secrecy */
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return w->rng = x;
}

typedef struct mkv_deferred_s {
  struct mkv_deferred_s *next;
  void (*cb)(void *arg);
  void *arg;
} deferred_t;

static void on_defer(uv_timer_t *t) {
  mkv_worker_t *w = t->data;
  deferred_t *d = w->defer_head;
  w->defer_head = w->defer_tail = NULL;
  while (d) {
    deferred_t *next = d->next;
    d->cb(d->arg);
    free(d);
    d = next;
  }
}

void mkv_worker_defer(mkv_worker_t *w, void (*cb)(void *arg), void *arg) {
  deferred_t *d = mkv_malloc(sizeof(*d));
  d->next = NULL;
  d->cb = cb;
  d->arg = arg;
  if (w->defer_tail)
    w->defer_tail->next = d;
  else
    w->defer_head = d;
  w->defer_tail = d;
  if (!uv_is_active((uv_handle_t *)&w->defer_timer))
    uv_timer_start(&w->defer_timer, on_defer, 0, 0);
}

int mkv_worker_init(mkv_worker_t *w, int id, const mkv_config_t *cfg, int with_policy,
                    char **err) {
  memset(w, 0, sizeof(*w));
  w->id = id;
  w->cfg = cfg;
  w->listen_fd = -1;
  if (id == 0)
    snprintf(w->name, sizeof(w->name), "admin");
  else if (id < 0)
    snprintf(w->name, sizeof(w->name), "status");
  else
    snprintf(w->name, sizeof(w->name), "w%d", id);
  w->rng = (uint32_t)(mkv_now_ns() ^ ((uint64_t)id * 2654435761u)) | 1u;
  w->metrics = mkv_metrics_new();
  mkv_buf_init(&w->scratch);
  return with_policy ? mkv_policy_new(cfg, &w->policy, err) : 0;
}

void mkv_worker_destroy(mkv_worker_t *w) {
  mkv_policy_free(w->policy);
  w->policy = NULL;
  mkv_buf_free(&w->scratch);
}

static void close_handles(mkv_worker_t *w) {
  mkv_server_free(w->server);
  mkv_upstream_close(w->up);
  mkv_index_port_close(w->port);
  uv_close((uv_handle_t *)&w->wakeup, NULL);
  uv_close((uv_handle_t *)&w->drain_poll, NULL);
  uv_close((uv_handle_t *)&w->defer_timer, NULL);
}

/* Connections are closed; requests may live on (a failed PUT deleting its copies, a
 * final index write): wait for them, each is bounded by a volume or index timeout. */
static void on_drain_poll(uv_timer_t *t) {
  mkv_worker_t *w = t->data;
  /* Every connection closed too: a closing one still writes into the server. */
  if (w->live_reqs > 0 || mkv_index_port_pending(w->port) > 0 ||
      mkv_server_connections(w->server) > 0 || w->defer_head || (w->busy && w->busy(w))) {
    if (++w->drain_ticks % 500 == 0) /* every 5 s */
      mkv_info("draining: %d %s still finishing", w->live_reqs,
               MKV_PLURAL(w->live_reqs, "request", "requests"));
    return;
  }
  uv_timer_stop(t);
  close_handles(w);
}

static void on_drained(mkv_server_t *s) {
  (void)s;
}

typedef struct mkv_reload_s {
  const mkv_config_t *cfg;
  mkv_policy_t *policy;
} reload_t;

void mkv_worker_reload(mkv_worker_t *w, const mkv_config_t *cfg, mkv_policy_t *policy) {
  reload_t *r = mkv_calloc(1, sizeof(*r));
  r->cfg = cfg;
  r->policy = policy;
  reload_t *old = atomic_exchange(&w->pending_reload, r);
  if (old) { /* never seen by the worker: superseded */
    mkv_policy_free(old->policy);
    free(old);
  }
  uv_async_send(&w->wakeup);
}

static void apply_reload(mkv_worker_t *w) {
  reload_t *r = atomic_exchange(&w->pending_reload, NULL);
  if (!r) return;
  w->cfg = r->cfg;
  if (r->policy) {
    mkv_policy_free(w->policy);
    w->policy = r->policy;
  }
  free(r);
}

static void on_wakeup(uv_async_t *a) {
  mkv_worker_t *w = a->data;
  apply_reload(w);
  /* The volume key may have changed (the wakeup handle closes with the upstream, so
   * w->up is alive here). */
  mkv_upstream_set_headers(w->up, w->cfg->auth.volume_header);
  if (!w->stop_requested || w->server == NULL) return;
  mkv_server_t *s = w->server;
  if (w->on_drain) w->on_drain(w);
  mkv_server_drain(s, w->cfg->limits.drain_timeout_ms, on_drained);
  uv_timer_start(&w->drain_poll, on_drain_poll, 10, 10);
}

static void worker_main(void *arg) {
  mkv_worker_t *w = arg;
  mkv_log_set_thread_name(w->name);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  apply_reload(w); /* one that came too late to be applied: freed with the rest */
  int rc = uv_loop_close(&w->loop);
  if (rc != 0) mkv_error("worker loop closed with handles still open: %s", uv_strerror(rc));
  mkv_policy_free(w->policy);
  w->policy = NULL;
  mkv_buf_free(&w->scratch);
  mkv_hash_thread_done();
  mkv_chunk_pool_drain();
}

int mkv_worker_start(mkv_worker_t *w, mkv_index_t *index, int listen_fd,
                     const mkv_handler_t *h, char **err) {
  w->index = index;
  w->listen_fd = listen_fd;
  int rc = uv_loop_init(&w->loop);
  if (rc != 0) goto fail;
  if ((rc = mkv_index_port_new(index, &w->loop, &w->port)) != 0) goto fail;
  w->up = mkv_upstream_new(&w->loop, w->cfg->limits.suspect_time_ms);
  mkv_upstream_set_headers(w->up, w->cfg->auth.volume_header);
  w->server = mkv_server_new(w, h);
  uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  w->wakeup.data = w;
  uv_timer_init(&w->loop, &w->drain_poll);
  w->drain_poll.data = w;
  uv_timer_init(&w->loop, &w->defer_timer);
  w->defer_timer.data = w;
  if ((rc = mkv_server_listen(w->server)) != 0) goto fail;
  if (w->on_start) w->on_start(w);
  if ((rc = uv_thread_create(&w->thread, worker_main, w)) != 0) goto fail;
  w->started_ok = 1;
  return 0;
fail:
  *err = mkv_sprintf("worker %d: cannot start: %s", w->id, uv_strerror(rc));
  return -1;
}

void mkv_worker_stop(mkv_worker_t *w) {
  w->stop_requested = 1;
  uv_async_send(&w->wakeup);
}

void mkv_worker_join(mkv_worker_t *w) {
  if (w->started_ok) uv_thread_join(&w->thread);
}
