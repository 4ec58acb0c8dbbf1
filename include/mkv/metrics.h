/* metrics.h: counters for the admin listener's Prometheus /metrics.
 *
 * Each worker owns one mkv_metrics_t and is its only writer; counters are relaxed
 * atomics, so the admin thread reads them while workers count, without locks and
 * without a lock prefix on the hot path (a single writer stores load + n). Volumes are
 * counted in a process-wide table, one entry per "host:port", shared by every worker's
 * pool to that volume (found once, when the pool is made), with atomic adds. */
#ifndef MKV_METRICS_H
#define MKV_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mkv/common.h"

typedef _Atomic unsigned long long mkv_ctr_t;

/* Methods as the metrics name them; LIST is a GET with a query (?list, ?unlinked). */
enum { MKV_MX_GET, MKV_MX_HEAD, MKV_MX_PUT, MKV_MX_DELETE, MKV_MX_UNLINK, MKV_MX_LIST,
       MKV_MX_RELINK, MKV_MX_REPLACE, MKV_MX_REBALANCE, MKV_MX_OTHER, MKV_MX_N };

#define MKV_LAT_NB 15 /* latency buckets, plus +Inf */

typedef struct mkv_hist_s {
  mkv_ctr_t le[MKV_LAT_NB + 1]; /* not cumulative here; summed when rendered */
  mkv_ctr_t sum_ns;
} mkv_hist_t;

typedef struct mkv_metrics_s {
  mkv_ctr_t status[MKV_MX_N][500]; /* [method][code - 100] */
  mkv_hist_t latency[MKV_MX_N];
  mkv_ctr_t bytes_in, bytes_out; /* client request bodies in, responses out */
  mkv_ctr_t policy_errors;
  mkv_ctr_t slow_bodies; /* uploads failed for arriving under limits.body_min_rate */
} mkv_metrics_t;

typedef struct mkv_vol_metrics_s {
  char host[256];
  mkv_ctr_t requests, errors, timeouts, bytes_sent, bytes_received;
  mkv_hist_t latency;
  /* Gauges, moved by +1 and -1 (modulo 2^64) with shared adds: connections open (from
   * the first connect to the close, so one fd each) and, of those, idle in a pool. */
  mkv_ctr_t conns, idle_conns;
} mkv_vol_metrics_t;

/* Single-writer add (the owning thread only). */
static inline void mkv_ctr_add(mkv_ctr_t *c, unsigned long long n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}
/* Many-writer add. */
static inline void mkv_ctr_add_shared(mkv_ctr_t *c, unsigned long long n) {
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* A worker's counters, allocated zeroed and registered for rendering; never freed
 * before exit (the admin thread may be reading them). */
mkv_metrics_t *mkv_metrics_new(void);
/* Counts one finished request of the public API. */
void mkv_metrics_request(mkv_metrics_t *m, int mx, int status, uint64_t elapsed_ns);
void mkv_hist_observe(mkv_hist_t *h, uint64_t ns, int shared);

/* The entry of a volume ("host:port"), made on first use; NULL when the table is full. */
mkv_vol_metrics_t *mkv_metrics_volume(const char *host, size_t len);

/* The volumes of the config now (at the start, and after each reload): only their
 * series are rendered -- a volume a reload removed drops out of /metrics (its requests
 * still count, and show again if it comes back). Copies the names. */
void mkv_metrics_configured(char *const *volumes, int n);

/* Every worker's requests summed, by method: [0] all, [1] 4xx, [2] 5xx (any thread). */
void mkv_metrics_totals(unsigned long long out[MKV_MX_N][3]);
const char *mkv_metrics_method_name(int mx); /* "GET", ..., "OTHER" */
/* SIGHUP reloads, counted by main. */
void mkv_metrics_reload(int ok);
unsigned long long mkv_reloads_ok(void);
unsigned long long mkv_reloads_refused(void);

/* Gauges read at render time by whoever holds them (the server: index, locks). */
typedef void (*mkv_metrics_extra_fn)(mkv_buf_t *out, void *arg);

/* Appends every metric in the Prometheus text format (version 0.0.4). */
void mkv_metrics_render(mkv_buf_t *out, mkv_metrics_extra_fn extra, void *arg);

#endif
