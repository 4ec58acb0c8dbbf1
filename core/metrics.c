/* metrics.c: the counters behind /metrics and their Prometheus text rendering. */
#include "mkv/metrics.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORKER_METRICS 300
#define MAX_VOLUMES 512

static const double bounds[MKV_LAT_NB] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,  0.1,    0.25,  0.5,
                                          1,      2.5,   10,     30,    120};
static const char *const bound_text[MKV_LAT_NB] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",   "0.5",   "1",      "2.5",   "10",   "30",    "120"};
static const char *const method_names[MKV_MX_N] = {
    "GET", "HEAD", "PUT", "DELETE", "UNLINK", "LIST", "RELINK", "REPLACE", "REBALANCE", "OTHER"};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static char **configured; /* under reg_lock; NULL: every registered volume is shown */
static int nconfigured;

void mkv_metrics_configured(char *const *vols, int n) {
  pthread_mutex_lock(&reg_lock);
  for (int i = 0; i < nconfigured; i++) free(configured[i]);
  free(configured);
  configured = mkv_calloc((size_t)n + 1, sizeof(char *));
  for (int i = 0; i < n; i++) configured[i] = mkv_strdup(vols[i]);
  nconfigured = n;
  pthread_mutex_unlock(&reg_lock);
}

/* Is the volume in the config now? Under reg_lock. */
static int shown(const char *host) {
  if (configured == NULL) return 1;
  for (int i = 0; i < nconfigured; i++)
    if (strcmp(configured[i], host) == 0) return 1;
  return 0;
}
static mkv_metrics_t *workers[MAX_WORKER_METRICS];
static _Atomic int nworkers;
static mkv_vol_metrics_t volumes[MAX_VOLUMES];
static _Atomic int nvolumes;

mkv_metrics_t *mkv_metrics_new(void) {
  mkv_metrics_t *m = mkv_calloc(1, sizeof(*m));
  pthread_mutex_lock(&reg_lock);
  int n = atomic_load(&nworkers);
  if (n < MAX_WORKER_METRICS) {
    workers[n] = m;
    atomic_store_explicit(&nworkers, n + 1, memory_order_release);
  }
  pthread_mutex_unlock(&reg_lock);
  return m;
}

void mkv_metrics_totals(unsigned long long out[MKV_MX_N][3]) {
  memset(out, 0, sizeof(unsigned long long) * MKV_MX_N * 3);
  int nw = atomic_load_explicit(&nworkers, memory_order_acquire);
  for (int i = 0; i < nw; i++)
    for (int mx = 0; mx < MKV_MX_N; mx++)
      for (int code = 100; code < 600; code++) {
        unsigned long long n =
            atomic_load_explicit(&workers[i]->status[mx][code - 100], memory_order_relaxed);
        out[mx][0] += n;
        if (code >= 400) out[mx][code >= 500 ? 2 : 1] += n;
      }
}

const char *mkv_metrics_method_name(int mx) {
  return mx >= 0 && mx < MKV_MX_N ? method_names[mx] : "?";
}

void mkv_hist_observe(mkv_hist_t *h, uint64_t ns, int shared) {
  double s = (double)ns / 1e9;
  int i = 0;
  while (i < MKV_LAT_NB && s > bounds[i]) i++;
  if (shared) {
    mkv_ctr_add_shared(&h->le[i], 1);
    mkv_ctr_add_shared(&h->sum_ns, ns);
  } else {
    mkv_ctr_add(&h->le[i], 1);
    mkv_ctr_add(&h->sum_ns, ns);
  }
}

void mkv_metrics_request(mkv_metrics_t *m, int mx, int status, uint64_t elapsed_ns) {
  if (mx < 0 || mx >= MKV_MX_N) mx = MKV_MX_OTHER;
  if (status >= 100 && status < 600) mkv_ctr_add(&m->status[mx][status - 100], 1);
  mkv_hist_observe(&m->latency[mx], elapsed_ns, 0);
}

mkv_vol_metrics_t *mkv_metrics_volume(const char *host, size_t len) {
  if (len >= sizeof(volumes[0].host)) len = sizeof(volumes[0].host) - 1;
  pthread_mutex_lock(&reg_lock);
  int n = atomic_load(&nvolumes);
  mkv_vol_metrics_t *v = NULL;
  for (int i = 0; i < n; i++) {
    if (strlen(volumes[i].host) == len && memcmp(volumes[i].host, host, len) == 0) {
      v = &volumes[i];
      break;
    }
  }
  if (!v && n < MAX_VOLUMES) {
    v = &volumes[n];
    memcpy(v->host, host, len);
    v->host[len] = '\0';
    atomic_store_explicit(&nvolumes, n + 1, memory_order_release);
  }
  pthread_mutex_unlock(&reg_lock);
  return v;
}

static unsigned long long rd(const mkv_ctr_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

/* A label value: backslash, quote and newline escaped, as the text format wants. */
static void add_label(mkv_buf_t *out, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"') mkv_buf_addc(out, '\\');
    if (*s == '\n') {
      mkv_buf_adds(out, "\\n");
      continue;
    }
    mkv_buf_addc(out, *s);
  }
}

static void help(mkv_buf_t *out, const char *name, const char *type, const char *text) {
  mkv_buf_addf(out, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* One histogram's series; `labels` is "method=\"GET\"" or "volume=\"h:p\"". */
static void render_hist(mkv_buf_t *out, const char *name, const char *labels,
                        const unsigned long long *le, unsigned long long sum_ns) {
  unsigned long long cum = 0;
  for (int i = 0; i < MKV_LAT_NB; i++) {
    cum += le[i];
    mkv_buf_addf(out, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, bound_text[i], cum);
  }
  cum += le[MKV_LAT_NB];
  mkv_buf_addf(out, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, cum);
  mkv_buf_addf(out, "%s_sum{%s} %.9f\n", name, labels, (double)sum_ns / 1e9);
  mkv_buf_addf(out, "%s_count{%s} %llu\n", name, labels, cum);
}

void mkv_metrics_render(mkv_buf_t *out, mkv_metrics_extra_fn extra, void *arg) {
  int nw = atomic_load_explicit(&nworkers, memory_order_acquire);
  /* Sum the workers first: one pass over each worker's counters. */
  static _Thread_local unsigned long long status[MKV_MX_N][500];
  unsigned long long lat[MKV_MX_N][MKV_LAT_NB + 1], lat_sum[MKV_MX_N];
  unsigned long long bin = 0, bout = 0, perr = 0, slow = 0;
  memset(status, 0, sizeof(status));
  memset(lat, 0, sizeof(lat));
  memset(lat_sum, 0, sizeof(lat_sum));
  for (int w = 0; w < nw; w++) {
    mkv_metrics_t *m = workers[w];
    for (int mx = 0; mx < MKV_MX_N; mx++) {
      for (int c = 0; c < 500; c++) status[mx][c] += rd(&m->status[mx][c]);
      for (int i = 0; i <= MKV_LAT_NB; i++) lat[mx][i] += rd(&m->latency[mx].le[i]);
      lat_sum[mx] += rd(&m->latency[mx].sum_ns);
    }
    bin += rd(&m->bytes_in);
    bout += rd(&m->bytes_out);
    perr += rd(&m->policy_errors);
    slow += rd(&m->slow_bodies);
  }

  help(out, "mkv_requests_total", "counter",
       "Requests of the public API answered, by method (LIST: ?list and ?unlinked) and "
       "status (499: the client left first).");
  for (int mx = 0; mx < MKV_MX_N; mx++)
    for (int c = 0; c < 500; c++)
      if (status[mx][c])
        mkv_buf_addf(out, "mkv_requests_total{method=\"%s\",code=\"%d\"} %llu\n",
                     method_names[mx], c + 100, status[mx][c]);
  help(out, "mkv_request_duration_seconds", "histogram",
       "Time from a request's first byte until mkv is done with it, by method.");
  for (int mx = 0; mx < MKV_MX_N; mx++) {
    unsigned long long n = 0;
    for (int i = 0; i <= MKV_LAT_NB; i++) n += lat[mx][i];
    if (n == 0) continue;
    char labels[64];
    snprintf(labels, sizeof(labels), "method=\"%s\"", method_names[mx]);
    render_hist(out, "mkv_request_duration_seconds", labels, lat[mx], lat_sum[mx]);
  }
  help(out, "mkv_client_received_bytes_total", "counter", "Request bytes read from clients.");
  mkv_buf_addf(out, "mkv_client_received_bytes_total %llu\n", bin);
  help(out, "mkv_client_sent_bytes_total", "counter", "Response bytes written to clients.");
  mkv_buf_addf(out, "mkv_client_sent_bytes_total %llu\n", bout);
  help(out, "mkv_policy_errors_total", "counter",
       "Policy calls that failed (raised, timed out, returned something invalid).");
  mkv_buf_addf(out, "mkv_policy_errors_total %llu\n", perr);
  help(out, "mkv_slow_bodies_total", "counter",
       "Uploads failed because their body came slower than limits.body_min_rate.");
  mkv_buf_addf(out, "mkv_slow_bodies_total %llu\n", slow);

  int nv = atomic_load_explicit(&nvolumes, memory_order_acquire);
  int show[MAX_VOLUMES];
  pthread_mutex_lock(&reg_lock);
  for (int i = 0; i < nv; i++) show[i] = shown(volumes[i].host);
  pthread_mutex_unlock(&reg_lock);
  static const struct {
    const char *name, *help;
    size_t off;
  } vc[] = {
      {"mkv_volume_requests_total", "Requests to a volume, by any worker or admin job.",
       offsetof(mkv_vol_metrics_t, requests)},
      {"mkv_volume_errors_total", "Requests to a volume that got no answer (refused, reset, timed out).",
       offsetof(mkv_vol_metrics_t, errors)},
      {"mkv_volume_timeouts_total", "Requests to a volume that timed out.",
       offsetof(mkv_vol_metrics_t, timeouts)},
      {"mkv_volume_sent_bytes_total", "Bytes written to a volume (request heads and bodies).",
       offsetof(mkv_vol_metrics_t, bytes_sent)},
      {"mkv_volume_received_bytes_total", "Bytes read from a volume.",
       offsetof(mkv_vol_metrics_t, bytes_received)},
  };
  for (size_t k = 0; k < MKV_ARRAY_SIZE(vc); k++) {
    help(out, vc[k].name, "counter", vc[k].help);
    for (int i = 0; i < nv; i++) {
      if (!show[i]) continue;
      mkv_buf_addf(out, "%s{volume=\"", vc[k].name);
      add_label(out, volumes[i].host);
      mkv_buf_addf(out, "\"} %llu\n", rd((const mkv_ctr_t *)((const char *)&volumes[i] + vc[k].off)));
    }
  }
  help(out, "mkv_volume_connections", "gauge",
       "Connections to a volume open now, by state: idle (kept alive in a worker's pool) or "
       "busy (connecting, carrying a request, or finishing one).");
  for (int i = 0; i < nv; i++) {
    if (!show[i]) continue;
    /* Two gauges read one after the other: clamp what a move in between could skew. */
    long long open = MKV_MAX((long long)rd(&volumes[i].conns), 0);
    long long idle = MKV_MIN(MKV_MAX((long long)rd(&volumes[i].idle_conns), 0), open);
    static const char *const state[2] = {"idle", "busy"};
    long long v[2] = {idle, open - idle};
    for (int k = 0; k < 2; k++) {
      mkv_buf_adds(out, "mkv_volume_connections{volume=\"");
      add_label(out, volumes[i].host);
      mkv_buf_addf(out, "\",state=\"%s\"} %lld\n", state[k], v[k]);
    }
  }
  help(out, "mkv_volume_request_duration_seconds", "histogram",
       "Time a volume took to answer a request (a PUT: its whole body), by volume.");
  for (int i = 0; i < nv; i++) {
    if (!show[i]) continue;
    unsigned long long le[MKV_LAT_NB + 1];
    for (int b = 0; b <= MKV_LAT_NB; b++) le[b] = rd(&volumes[i].latency.le[b]);
    mkv_buf_t labels;
    mkv_buf_init(&labels);
    mkv_buf_adds(&labels, "volume=\"");
    add_label(&labels, volumes[i].host);
    mkv_buf_addc(&labels, '"');
    render_hist(out, "mkv_volume_request_duration_seconds", labels.data, le,
                rd(&volumes[i].latency.sum_ns));
    mkv_buf_free(&labels);
  }
  if (extra) extra(out, arg);
}

static mkv_ctr_t reloads_ok, reloads_refused;

void mkv_metrics_reload(int ok) {
  mkv_ctr_add_shared(ok ? &reloads_ok : &reloads_refused, 1);
}
unsigned long long mkv_reloads_ok(void) {
  return rd(&reloads_ok);
}
unsigned long long mkv_reloads_refused(void) {
  return rd(&reloads_refused);
}
