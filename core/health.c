/* health.c: the volumes' health table and its prober (health.h).
 *
 * The table is an open-addressed array of entry pointers with a fixed capacity, filled
 * only: an entry, once published (an atomic store), stays at its slot for the life of
 * the process, so a reader finds it without a lock and a pool may keep a pointer to
 * it. Writers (config load and reload, the prober's reason texts) take the mutex. The
 * health of an entry is written by the prober alone, on the admin thread's loop. */
#include "mkv/health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "mkv/log.h"

/* Entries at most: a reload that would pass half of it is refused (restart to grow). */
#define MIN_CAP 4096
/* Every this many probes of a volume that is up, the probe is a write. */
#define WRITE_PROBE_EVERY 10
#define PROBE_PATH "/mkv-probe"
#define PROBE_BODY "mkv volume write probe\n"

struct mkv_vol_s {
  char *name;
  size_t len;
  _Atomic int health;      /* mkv_vol_health_t: the prober writes it */
  _Atomic int mode;        /* mkv_vol_mode_t: the config's */
  _Atomic int configured;  /* in the current config */
  _Atomic int64_t since_ms;
  _Atomic int wake;        /* a request saw trouble (or an answer while down): probe now */
  _Atomic int want_write;  /* a PUT there answered 5xx: make the next probe a write */
  _Atomic uint64_t probes, failures;
  char reason[128];        /* under the mutex */
  /* The prober's own (its loop thread). */
  uint64_t next_ms;
  double backoff_ms;
  int in_flight, since_write, probing_write;
  mkv_upreq_t req;
};

static struct {
  pthread_mutex_t mu;
  _Atomic(mkv_vol_t *) *slots;
  size_t cap, count;
  mkv_vol_t **order; /* the configured volumes, in config order (under mu) */
  int norder;
  _Atomic uint64_t generation;

  /* the prober */
  pthread_mutex_t wake_mu; /* a send never races the close of the async handle */
  int running;
  uv_loop_t *loop;
  mkv_upstream_t *up;
  _Atomic(const mkv_config_t *) cfg;
  _Atomic int in_flight; /* probes not yet done */
  uv_timer_t tick;
  uv_async_t async;
  int closing;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake_mu = PTHREAD_MUTEX_INITIALIZER};

static int64_t wall_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static uint64_t hash_name(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

mkv_vol_t *mkv_health_find(const char *host, size_t hostlen) {
  if (H.slots == NULL) return NULL;
  size_t mask = H.cap - 1;
  for (size_t i = hash_name(host, hostlen) & mask;; i = (i + 1) & mask) {
    mkv_vol_t *v = atomic_load_explicit(&H.slots[i], memory_order_acquire);
    if (v == NULL) return NULL;
    if (v->len == hostlen && memcmp(v->name, host, hostlen) == 0) return v;
  }
}

/* Under mu. The entry of name, made if there is none. NULL when the table is full. */
static mkv_vol_t *find_or_add(const char *name) {
  size_t n = strlen(name);
  mkv_vol_t *v = mkv_health_find(name, n);
  if (v) return v;
  if ((H.count + 1) * 2 > H.cap) return NULL;
  v = mkv_calloc(1, sizeof(*v));
  v->name = mkv_memdup(name, n);
  v->len = n;
  atomic_store(&v->health, MKV_VOL_UP); /* until a probe says otherwise */
  atomic_store(&v->since_ms, wall_ms());
  mkv_upreq_init(&v->req);
  size_t mask = H.cap - 1;
  size_t i = hash_name(name, n) & mask;
  while (atomic_load_explicit(&H.slots[i], memory_order_relaxed) != NULL) i = (i + 1) & mask;
  atomic_store_explicit(&H.slots[i], v, memory_order_release);
  H.count++;
  return v;
}

/* Under mu: the configured set and modes from cfg. -1 when the table is full. */
static int apply_config(const mkv_config_t *cfg) {
  for (int i = 0; i < cfg->nvolumes; i++)
    if (mkv_health_find(cfg->volumes[i], strlen(cfg->volumes[i])) == NULL &&
        (H.count + 1) * 2 > H.cap)
      return -1;
  for (int i = 0; i < H.norder; i++) atomic_store(&H.order[i]->configured, 0);
  free(H.order);
  H.order = mkv_calloc((size_t)cfg->nvolumes + 1, sizeof(*H.order));
  H.norder = 0;
  for (int i = 0; i < cfg->nvolumes; i++) {
    mkv_vol_t *v = find_or_add(cfg->volumes[i]);
    int mode = cfg->volume_modes ? (int)cfg->volume_modes[i] : MKV_VOL_RW;
    if (atomic_exchange(&v->mode, mode) != mode) {
      atomic_store(&v->since_ms, wall_ms());
      mkv_info("volume %s: %s", v->name, mkv_vol_mode_name((mkv_vol_mode_t)mode));
    }
    atomic_store(&v->configured, 1);
    H.order[H.norder++] = v;
  }
  atomic_fetch_add(&H.generation, 1);
  return 0;
}

void mkv_health_init(const mkv_config_t *cfg) {
  pthread_mutex_lock(&H.mu);
  size_t cap = MIN_CAP;
  while (cap < (size_t)cfg->nvolumes * 8) cap *= 2;
  H.cap = cap;
  H.slots = mkv_calloc(cap, sizeof(*H.slots));
  H.count = 0;
  apply_config(cfg);
  pthread_mutex_unlock(&H.mu);
}

int mkv_health_reload(const mkv_config_t *cfg) {
  if (H.slots == NULL) return 0;
  pthread_mutex_lock(&H.mu);
  int rc = apply_config(cfg);
  pthread_mutex_unlock(&H.mu);
  return rc;
}

void mkv_health_free(void) {
  if (H.slots == NULL) return;
  for (size_t i = 0; i < H.cap; i++) {
    mkv_vol_t *v = atomic_load(&H.slots[i]);
    if (v == NULL) continue;
    mkv_upreq_free(&v->req);
    free(v->name);
    free(v);
  }
  free(H.slots);
  free(H.order);
  H.slots = NULL;
  H.order = NULL;
  H.norder = 0;
  H.count = 0;
}

/* ---- reading ---- */

mkv_vol_health_t mkv_vol_health(const mkv_vol_t *v) {
  return v ? (mkv_vol_health_t)atomic_load_explicit(&v->health, memory_order_relaxed)
           : MKV_VOL_UP;
}

mkv_vol_mode_t mkv_vol_mode(const mkv_vol_t *v) {
  return v ? (mkv_vol_mode_t)atomic_load_explicit(&v->mode, memory_order_relaxed) : MKV_VOL_RW;
}

mkv_vol_health_t mkv_health_of(const char *host, size_t hostlen) {
  return mkv_vol_health(mkv_health_find(host, hostlen));
}

int mkv_health_writable(const char *host, size_t hostlen) {
  mkv_vol_t *v = mkv_health_find(host, hostlen);
  return mkv_vol_health(v) == MKV_VOL_UP && mkv_vol_mode(v) == MKV_VOL_RW;
}

int mkv_health_writable_volumes(const mkv_config_t *cfg, const char *skip, size_t skiplen,
                                char ***out) {
  char **can = mkv_calloc((size_t)cfg->nplacement + 1, sizeof(char *));
  int n = 0;
  for (int i = 0; i < cfg->nplacement; i++) {
    char *v = cfg->placement_volumes[i];
    size_t vl = strlen(v);
    if (skiplen && vl == skiplen && memcmp(v, skip, skiplen) == 0) continue;
    if (mkv_health_writable(v, vl)) can[n++] = v;
  }
  *out = can;
  return n;
}

int mkv_health_readable(const char *host, size_t hostlen) {
  return mkv_health_of(host, hostlen) != MKV_VOL_DOWN;
}

uint64_t mkv_health_generation(void) {
  return atomic_load_explicit(&H.generation, memory_order_acquire);
}

const char *mkv_vol_mode_name(mkv_vol_mode_t m) {
  switch (m) {
  case MKV_VOL_READ_ONLY: return "read_only";
  case MKV_VOL_DRAIN: return "drain";
  case MKV_VOL_RW: break;
  }
  return "read_write";
}

static const char *health_name(int h) {
  return h == MKV_VOL_DOWN ? "down" : h == MKV_VOL_FULL ? "full" : "up";
}

void mkv_health_foreach(void (*fn)(const mkv_vol_info_t *vi, void *arg), void *arg) {
  pthread_mutex_lock(&H.mu);
  for (int i = 0; i < H.norder; i++) {
    mkv_vol_t *v = H.order[i];
    mkv_vol_info_t vi;
    memset(&vi, 0, sizeof(vi));
    int h = atomic_load(&v->health), m = atomic_load(&v->mode);
    vi.name = v->name;
    vi.up = h != MKV_VOL_DOWN;
    vi.state = h != MKV_VOL_UP ? health_name(h)
               : m != MKV_VOL_RW ? mkv_vol_mode_name((mkv_vol_mode_t)m)
                                 : "up";
    vi.since_ms = atomic_load(&v->since_ms);
    memcpy(vi.reason, v->reason, sizeof(vi.reason));
    vi.probes = atomic_load(&v->probes);
    vi.probe_failures = atomic_load(&v->failures);
    fn(&vi, arg);
  }
  pthread_mutex_unlock(&H.mu);
}

/* ---- passive signals ---- */

static void wake_prober(mkv_vol_t *v) {
  if (atomic_exchange(&v->wake, 1)) return; /* already asked */
  pthread_mutex_lock(&H.wake_mu);
  if (H.running) uv_async_send(&H.async);
  pthread_mutex_unlock(&H.wake_mu);
}

void mkv_health_observe(mkv_vol_t *v, mkv_vol_obs_t what) {
  if (v == NULL) return;
  int h = atomic_load_explicit(&v->health, memory_order_relaxed);
  switch (what) {
  case MKV_OBS_OK:
    /* An answer from a volume marked down: look again now rather than at the end of
     * its backoff. */
    if (h == MKV_VOL_DOWN) wake_prober(v);
    return;
  case MKV_OBS_WRITE_5XX:
    atomic_store(&v->want_write, 1);
    wake_prober(v);
    return;
  case MKV_OBS_FAILED:
  case MKV_OBS_5XX:
    if (h != MKV_VOL_DOWN) wake_prober(v);
    return;
  }
}

/* ---- the prober (its loop thread) ---- */

static void set_health(mkv_vol_t *v, int h, const char *reason) {
  pthread_mutex_lock(&H.mu);
  snprintf(v->reason, sizeof(v->reason), "%s", h == MKV_VOL_UP ? "" : reason);
  pthread_mutex_unlock(&H.mu);
  int was = atomic_exchange(&v->health, h);
  if (was == h) return;
  atomic_store(&v->since_ms, wall_ms());
  atomic_fetch_add(&H.generation, 1);
  if (h == MKV_VOL_UP)
    mkv_info("volume %s is up again (it was %s)", v->name, health_name(was));
  else
    mkv_warn("volume %s is %s: %s", v->name, health_name(h), reason);
}

static void on_probe_done(mkv_upreq_t *r, int err) {
  mkv_vol_t *v = r->data;
  const mkv_config_t *cfg = atomic_load(&H.cfg);
  v->in_flight = 0;
  atomic_fetch_sub(&H.in_flight, 1);
  atomic_fetch_add(&v->probes, 1);
  char why[128];
  int h;
  if (err == UV_ECANCELED && H.closing) return;
  if (err != 0) {
    h = MKV_VOL_DOWN;
    snprintf(why, sizeof(why), "%s probe: %s", v->probing_write ? "write" : "read",
             mkv_strerror(err));
  } else if (v->probing_write && (r->status < 200 || r->status > 299)) {
    /* It answers, but it cannot take a file: a full or read-only disk (nginx: 500),
     * or a volume that refuses writes. */
    h = MKV_VOL_FULL;
    snprintf(why, sizeof(why), "a write probe (PUT %s) answered %d", PROBE_PATH, r->status);
  } else if (!v->probing_write && r->status >= 500) {
    h = MKV_VOL_DOWN;
    snprintf(why, sizeof(why), "read probe answered %d", r->status);
  } else {
    /* A read probe of a volume that was full says nothing of its space. */
    h = v->probing_write ? MKV_VOL_UP : atomic_load(&v->health) == MKV_VOL_FULL ? MKV_VOL_FULL
                                                                               : MKV_VOL_UP;
    why[0] = '\0';
  }
  if (h != MKV_VOL_UP) atomic_fetch_add(&v->failures, 1);
  if (h == MKV_VOL_FULL && atomic_load(&v->health) == MKV_VOL_FULL)
    snprintf(why, sizeof(why), "%s", v->reason); /* keep the first reason */
  set_health(v, h, why);
  double interval = cfg->limits.probe_interval_ms;
  if (h == MKV_VOL_DOWN) {
    v->backoff_ms = v->backoff_ms < interval ? interval : v->backoff_ms * 2;
    if (v->backoff_ms > cfg->limits.probe_backoff_ms)
      v->backoff_ms = MKV_MAX(cfg->limits.probe_backoff_ms, interval);
  } else {
    v->backoff_ms = interval;
  }
  v->next_ms = mkv_now_ms() + (uint64_t)v->backoff_ms;
}

static void probe(mkv_vol_t *v) {
  const mkv_config_t *cfg = atomic_load(&H.cfg);
  int write = atomic_exchange(&v->want_write, 0) ||
              atomic_load(&v->health) == MKV_VOL_FULL || ++v->since_write >= WRITE_PROBE_EVERY;
  if (write) v->since_write = 0;
  atomic_store(&v->wake, 0);
  mkv_upreq_t *r = &v->req;
  mkv_upreq_free(r);
  mkv_upreq_init(r);
  mkv_buf_set(&r->host, v->name, v->len);
  mkv_buf_set(&r->path, write ? PROBE_PATH : "/", write ? strlen(PROBE_PATH) : 1);
  r->method = write ? MKV_UP_PUT : MKV_UP_HEAD;
  r->content_length = write ? (int64_t)strlen(PROBE_BODY) : -1;
  r->timeout_ms = MKV_MAX(cfg->voltimeout_ms, 10);
  r->done = on_probe_done;
  r->data = v;
  v->probing_write = write;
  int rc = mkv_upstream_start(H.up, r);
  if (rc != 0) {
    v->next_ms = mkv_now_ms() + (uint64_t)cfg->limits.probe_interval_ms;
    return;
  }
  v->in_flight = 1;
  atomic_fetch_add(&H.in_flight, 1);
  if (write) {
    mkv_upreq_write(r, mkv_chunk_new(PROBE_BODY, strlen(PROBE_BODY), 1, NULL, NULL));
    mkv_upreq_end(r);
  }
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = mkv_now_ms();
  pthread_mutex_lock(&H.mu);
  int n = H.norder;
  mkv_vol_t **vols = mkv_malloc(sizeof(*vols) * (size_t)(n + 1));
  memcpy(vols, H.order, sizeof(*vols) * (size_t)n);
  pthread_mutex_unlock(&H.mu);
  for (int i = 0; i < n; i++) {
    mkv_vol_t *v = vols[i];
    if (v->in_flight) continue;
    if (atomic_load(&v->wake) || now >= v->next_ms) probe(v);
  }
  free(vols);
}

static void on_wake(uv_async_t *a) {
  on_tick(&H.tick);
  (void)a;
}

void mkv_health_start(uv_loop_t *loop, mkv_upstream_t *up, const mkv_config_t *cfg) {
  if (H.slots == NULL) return;
  H.loop = loop;
  H.up = up;
  atomic_store(&H.cfg, cfg);
  H.closing = 0;
  uv_timer_init(loop, &H.tick);
  uv_async_init(loop, &H.async, on_wake);
  double tick = cfg->limits.probe_interval_ms / 10;
  tick = tick < 10 ? 10 : tick > 100 ? 100 : tick;
  uv_timer_start(&H.tick, on_tick, 0, (uint64_t)tick);
  pthread_mutex_lock(&H.wake_mu);
  H.running = 1;
  pthread_mutex_unlock(&H.wake_mu);
}

void mkv_health_set_config(const mkv_config_t *cfg) {
  atomic_store(&H.cfg, cfg);
}

int mkv_health_busy(void) {
  return atomic_load(&H.in_flight) > 0;
}

void mkv_health_stop(void) {
  pthread_mutex_lock(&H.wake_mu);
  int was = H.running;
  H.running = 0;
  pthread_mutex_unlock(&H.wake_mu);
  if (!was) return;
  H.closing = 1;
  /* Probes in flight are cancelled by the upstream's close (their done runs with
   * ECANCELED, which on_probe_done ignores while closing). */
  for (size_t i = 0; i < H.cap; i++) {
    mkv_vol_t *v = atomic_load(&H.slots[i]);
    if (v && v->in_flight) mkv_upreq_cancel(&v->req);
  }
  uv_close((uv_handle_t *)&H.tick, NULL);
  uv_close((uv_handle_t *)&H.async, NULL);
}
