/* statussrv.c: the status listener (status_listen; off by default), read-only, served
 * by a thread of its own with the same HTTP machinery as the API (server.c):
 *
 *   GET /          an HTML page for people: every volume with its state and since when,
 *                  request and error rates by method, the index (size, fsync time), the
 *                  high-availability role and lag, the admin jobs running and their
 *                  progress. Inline CSS, no script, no request to anything but mkv; it
 *                  reloads itself every 5 s (a meta refresh).
 *   GET /metrics   the admin listener's Prometheus text, the same bytes;
 *   GET /health    the admin listener's health document, the same bytes.
 *
 * Anything else is 404 (a path) or 405 (a method): it never starts or cancels a job,
 * so it may face a scraper on another machine where the admin listener must not. With
 * status_token set, every path needs "Authorization: Bearer <token>" (401 otherwise;
 * the comparison is auth.c's, constant time); the token follows SIGHUP.
 *
 * Everything it reads is shared and thread-safe (health.h, metrics.h, the index's
 * stats, ha.h, the jobs' snapshot in adminsrv.c). Rates come from samples of the
 * request counters that this thread takes every RATE_STEP_MS, so a page compares the
 * counters now with those of up to a minute ago -- no state but this thread's. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "mkv/admin.h"
#include "mkv/auth.h"
#include "mkv/ha.h"
#include "mkv/health.h"
#include "mkv/index.h"
#include "mkv/metrics.h"
#include "mkv/repair.h"
#include "mkv/server.h"
#include "mkv/status.h"
#include "mkv/worker.h"

#define RATE_STEP_MS 5000
#define RATE_SLOTS 13 /* 12 steps: rates over the last minute */

typedef struct sample_s {
  uint64_t ms; /* mkv_now_ms() */
  unsigned long long c[MKV_MX_N][3];
} sample_t;

/* This thread's alone. */
static struct {
  uv_timer_t timer;
  int started;
  sample_t ring[RATE_SLOTS];
  int n, next;
  int64_t started_wall_ms;
  double index_bytes; /* the index directory's files, at the last sample; -1 unknown */
  const char *version;
} st;

void mkv_status_set_version(const char *version) {
  st.version = version;
}

static double dir_bytes(const char *path) {
  double total = 0;
  DIR *d = opendir(path);
  if (d == NULL) return -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *p = mkv_sprintf("%s/%s", path, e->d_name);
    struct stat sb;
    if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) total += (double)sb.st_size;
    free(p);
  }
  closedir(d);
  return total;
}

static void take_sample(uv_timer_t *t) {
  /* The index's size on disk too: a walk of its directory (LevelDB's table files), on
   * this timer rather than per page view. */
  mkv_worker_t *w = t->data;
  st.index_bytes = dir_bytes(w->cfg->db);
  sample_t *s = &st.ring[st.next];
  s->ms = mkv_now_ms();
  mkv_metrics_totals(s->c);
  st.next = (st.next + 1) % RATE_SLOTS;
  if (st.n < RATE_SLOTS) st.n++;
}

void mkv_status_thread_start(mkv_worker_t *w) {
  st.started_wall_ms = (int64_t)time(NULL) * 1000;
  uv_timer_init(&w->loop, &st.timer);
  st.timer.data = w;
  uv_timer_start(&st.timer, take_sample, 0, RATE_STEP_MS);
  st.started = 1;
}

void mkv_status_thread_drain(mkv_worker_t *w) {
  (void)w;
  if (!st.started) return;
  st.started = 0;
  uv_close((uv_handle_t *)&st.timer, NULL);
}

/* ---- HTML ---- */

static void esc(mkv_buf_t *b, const char *s) {
  for (; *s; s++) {
    switch (*s) {
    case '&': mkv_buf_adds(b, "&amp;"); break;
    case '<': mkv_buf_adds(b, "&lt;"); break;
    case '>': mkv_buf_adds(b, "&gt;"); break;
    case '"': mkv_buf_adds(b, "&quot;"); break;
    default: mkv_buf_addc(b, *s);
    }
  }
}

static void utc(char *out, size_t n, int64_t wall_ms) {
  time_t secs = (time_t)(wall_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  strftime(out, n, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

/* "3d 4h", "2h 5m", "4m 10s", "12s" */
static void span(char *out, size_t n, double secs) {
  long long s = secs < 0 ? 0 : (long long)secs;
  if (s >= 86400) snprintf(out, n, "%lldd %lldh", s / 86400, s % 86400 / 3600);
  else if (s >= 3600) snprintf(out, n, "%lldh %lldm", s / 3600, s % 3600 / 60);
  else if (s >= 60) snprintf(out, n, "%lldm %llds", s / 60, s % 60);
  else snprintf(out, n, "%llds", s);
}

static const char css[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}"
    "h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}"
    "table{border-collapse:collapse;min-width:40em}"
    "th,td{border-bottom:1px solid #ddd;padding:.25em .8em .25em 0;text-align:left;"
    "vertical-align:top}th{color:#555;font-weight:600}td.n{text-align:right;"
    "font-variant-numeric:tabular-nums}"
    ".state{font-weight:700;padding:0 .4em;border-radius:3px}"
    ".up,.ok,.primary{background:#d7f5dd;color:#135c22}"
    ".down,.failing{background:#fbd5d5;color:#8a1111}"
    ".full,.degraded,.read_only,.drain,.standby{background:#fdecc8;color:#7a4b00}"
    ".muted{color:#777}footer{margin-top:2em;color:#777;font-size:.9em}";

typedef struct vol_ctx_s {
  mkv_buf_t *b;
  int64_t now_ms;
} vol_ctx_t;

static void page_volume(const mkv_vol_info_t *vi, void *arg) {
  vol_ctx_t *c = arg;
  mkv_buf_t *b = c->b;
  char since[40], dur[32];
  utc(since, sizeof(since), vi->since_ms);
  span(dur, sizeof(dur), (double)(c->now_ms - vi->since_ms) / 1000);
  mkv_buf_adds(b, "<tr class=\"volume\" data-volume=\"");
  esc(b, vi->name);
  mkv_buf_adds(b, "\" data-state=\"");
  esc(b, vi->state);
  mkv_buf_adds(b, "\"><td>");
  esc(b, vi->name);
  mkv_buf_adds(b, "</td><td><span class=\"state ");
  esc(b, vi->state);
  mkv_buf_adds(b, "\">");
  esc(b, vi->state);
  mkv_buf_addf(b, "</span></td><td>%s</td><td>for %s</td><td>", since, dur);
  esc(b, vi->reason[0] ? vi->reason : "");
  mkv_vol_metrics_t *m = mkv_metrics_volume(vi->name, strlen(vi->name));
  unsigned long long req = m ? atomic_load(&m->requests) : 0;
  unsigned long long err = m ? atomic_load(&m->errors) : 0;
  mkv_buf_addf(b, "</td><td class=\"n\">%llu</td><td class=\"n\">%llu</td>"
                  "<td class=\"n\">%llu / %llu</td></tr>\n",
               req, err, (unsigned long long)vi->probe_failures, (unsigned long long)vi->probes);
}

static void page_requests(mkv_buf_t *b) {
  unsigned long long now[MKV_MX_N][3];
  mkv_metrics_totals(now);
  const sample_t *old = NULL;
  uint64_t now_ms = mkv_now_ms();
  if (st.n > 0) old = &st.ring[(st.next - st.n + RATE_SLOTS) % RATE_SLOTS];
  double dt = old ? (double)(now_ms - old->ms) / 1000 : 0;
  if (dt < 1) old = NULL;
  mkv_buf_adds(b, "<h2>Requests</h2>\n");
  if (old)
    mkv_buf_addf(b, "<p class=\"muted\">Rates over the last %.0f s; totals since the start.</p>\n", dt);
  else
    mkv_buf_adds(b, "<p class=\"muted\">Rates show after the first seconds; totals since the start.</p>\n");
  mkv_buf_adds(b, "<table id=\"requests\"><tr><th>Method</th><th>Total</th><th>Per second</th>"
                  "<th>4xx per second</th><th>5xx per second</th><th>5xx total</th></tr>\n");
  int any = 0;
  for (int mx = 0; mx < MKV_MX_N; mx++) {
    if (now[mx][0] == 0) continue;
    mkv_buf_addf(b, "<tr class=\"method\" data-method=\"%s\"><td>%s</td><td class=\"n\">%llu</td>",
                 mkv_metrics_method_name(mx), mkv_metrics_method_name(mx), now[mx][0]);
    for (int k = 0; k < 3; k++) {
      if (old)
        mkv_buf_addf(b, "<td class=\"n\">%.2f</td>", (double)(now[mx][k] - old->c[mx][k]) / dt);
      else
        mkv_buf_adds(b, "<td class=\"n muted\">-</td>");
    }
    mkv_buf_addf(b, "<td class=\"n\">%llu</td></tr>\n", now[mx][2]);
    any = 1;
  }
  if (!any) mkv_buf_adds(b, "<tr><td colspan=\"6\" class=\"muted\">none yet</td></tr>\n");
  mkv_buf_adds(b, "</table>\n");
}

static void page_index(mkv_buf_t *b, const mkv_config_t *cfg, mkv_index_t *index) {
  mkv_index_stats_t s;
  mkv_index_stats(index, &s);
  const char *failure = mkv_index_failure(index);
  char size[32] = "?";
  if (st.index_bytes >= 0) mkv_admin_fmt_bytes(size, sizeof(size), st.index_bytes);
  mkv_buf_adds(b, "<h2>Index</h2>\n<table id=\"index\"><tr><th>Directory</th><td>");
  esc(b, cfg->db);
  mkv_buf_addf(b, "</td></tr><tr><th>Size on disk</th><td>%s</td></tr>"
                  "<tr><th>State</th><td><span class=\"state %s\">%s</span> ",
               size, failure ? "failing" : "ok", failure ? "read-only" : "writable");
  if (failure) esc(b, failure);
  mkv_buf_addf(b, "</td></tr><tr><th>Records written</th><td>%llu in %llu batches</td></tr>"
                  "<tr><th>Fsyncs</th><td>%llu",
               (unsigned long long)s.writes, (unsigned long long)s.batches,
               (unsigned long long)s.syncs);
  if (s.syncs)
    mkv_buf_addf(b, ", %.2f ms each on average (%.1f s in all)",
                 (double)s.sync_ns / 1e6 / (double)s.syncs, (double)s.sync_ns / 1e9);
  mkv_buf_adds(b, "</td></tr><tr><th>LevelDB files by level</th><td>");
  int files[MKV_INDEX_LEVELS];
  mkv_index_level_files(index, files);
  for (int level = 0; level < MKV_INDEX_LEVELS; level++)
    mkv_buf_addf(b, files[level] >= 0 ? "%sL%d: %d" : "%sL%d: ?", level ? ", " : "", level,
                 files[level]);
  mkv_buf_adds(b, "</td></tr></table>\n");
}

/* The ha section from ha.h's own JSON (the one /health shows), so the page and /health
 * never disagree: its scalars as rows, its standbys as a table. */
static void page_ha(mkv_buf_t *b) {
  mkv_buf_adds(b, "<h2>High availability</h2>\n");
  if (mkv_ha_role() == MKV_HA_OFF) {
    mkv_buf_adds(b, "<p id=\"ha\" class=\"muted\">Off: no <code>ha</code> in the config "
                    "(this index runs alone).</p>\n");
    return;
  }
  mkv_buf_t j;
  mkv_buf_init(&j);
  mkv_ha_health_json(&j);
  cJSON *doc = cJSON_ParseWithLength(j.data ? j.data : "", j.len);
  mkv_buf_free(&j);
  if (doc == NULL) {
    mkv_buf_adds(b, "<p id=\"ha\">(no state yet)</p>\n");
    return;
  }
  mkv_buf_adds(b, "<table id=\"ha\">");
  cJSON *it;
  cJSON_ArrayForEach(it, doc) {
    if (cJSON_IsArray(it)) continue;
    mkv_buf_adds(b, "<tr><th>");
    esc(b, it->string);
    mkv_buf_adds(b, "</th><td>");
    if (cJSON_IsString(it)) {
      int role = strcmp(it->string, "role") == 0;
      if (role) {
        mkv_buf_adds(b, "<span class=\"state ");
        esc(b, it->valuestring);
        mkv_buf_adds(b, "\">");
      }
      esc(b, it->valuestring);
      if (role) mkv_buf_adds(b, "</span>");
    } else {
      char *txt = cJSON_PrintUnformatted(it);
      if (txt) esc(b, txt);
      free(txt);
    }
    mkv_buf_adds(b, "</td></tr>");
  }
  mkv_buf_adds(b, "</table>\n");
  cJSON *sb = cJSON_GetObjectItemCaseSensitive(doc, "standbys");
  if (cJSON_IsArray(sb)) {
    mkv_buf_adds(b, "<table id=\"standbys\"><tr><th>Standby</th><th>State</th>"
                    "<th>Confirmed batch</th><th>Lag (batches)</th></tr>");
    cJSON_ArrayForEach(it, sb) {
      cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
      cJSON *state = cJSON_GetObjectItemCaseSensitive(it, "state");
      cJSON *conf = cJSON_GetObjectItemCaseSensitive(it, "confirmed");
      cJSON *lag = cJSON_GetObjectItemCaseSensitive(it, "lag");
      mkv_buf_adds(b, "<tr><td>");
      esc(b, cJSON_IsString(name) ? name->valuestring : "?");
      mkv_buf_adds(b, "</td><td>");
      esc(b, cJSON_IsString(state) ? state->valuestring : "?");
      mkv_buf_addf(b, "</td><td class=\"n\">%.0f</td><td class=\"n\">%.0f</td></tr>",
                   cJSON_IsNumber(conf) ? conf->valuedouble : 0,
                   cJSON_IsNumber(lag) ? lag->valuedouble : 0);
    }
    if (cJSON_GetArraySize(sb) == 0)
      mkv_buf_adds(b, "<tr><td colspan=\"4\" class=\"muted\">none connected</td></tr>");
    mkv_buf_adds(b, "</table>\n");
  }
  cJSON_Delete(doc);
}

static void page_jobs(mkv_buf_t *b, int64_t now_ms) {
  mkv_admin_job_info_t jobs[2];
  mkv_admin_jobs_info(jobs);
  mkv_repair_stats_t rs;
  mkv_repair_stats(&rs);
  mkv_buf_adds(b, "<h2>Admin jobs</h2>\n<table id=\"jobs\"><tr><th>Job</th><th>Running for</th>"
                  "<th>Phase</th><th>Progress</th></tr>\n");
  int any = 0;
  for (int i = 0; i < 2; i++) {
    const mkv_admin_job_info_t *j = &jobs[i];
    if (!j->running) continue;
    any = 1;
    char dur[32];
    span(dur, sizeof(dur), (double)(now_ms - j->started_ms) / 1000);
    mkv_buf_adds(b, "<tr class=\"job\"><td>");
    esc(b, j->script);
    mkv_buf_addf(b, "</td><td>%s</td><td>", dur);
    esc(b, j->has_progress && j->progress.phase[0] ? j->progress.phase : "-");
    mkv_buf_adds(b, "</td><td>");
    /* the command's own words for it (admin_proto.h) */
    mkv_buf_t text;
    mkv_buf_init(&text);
    if (j->has_progress && mkv_admin_progress_text(&text, &j->progress)) esc(b, text.data);
    else mkv_buf_adds(b, "<span class=\"muted\">starting</span>");
    mkv_buf_free(&text);
    mkv_buf_adds(b, "</td></tr>\n");
  }
  if (!any)
    mkv_buf_adds(b, "<tr><td colspan=\"4\" class=\"muted\">none running</td></tr>\n");
  mkv_buf_addf(b, "</table>\n<p>Keys waiting for the background repair: "
                  "<span id=\"underreplicated\">%llu</span>; repaired since the start: %llu; "
                  "given up: %llu.</p>\n",
               rs.keys, rs.repaired, rs.given_up);
}

static void page_respond(mkv_req_t *req) {
  const mkv_config_t *cfg = req->worker->cfg;
  mkv_index_t *index = req->worker->index;
  int64_t now_ms = (int64_t)time(NULL) * 1000;
  int writable, quorum;
  const char *status = mkv_admin_health_status(cfg, index, &writable, &quorum);
  char now[40], started[40], up[32];
  utc(now, sizeof(now), now_ms);
  utc(started, sizeof(started), st.started_wall_ms);
  span(up, sizeof(up), (double)(now_ms - st.started_wall_ms) / 1000);

  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_addf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                   "<meta http-equiv=\"refresh\" content=\"5\">"
                   "<meta name=\"viewport\" content=\"width=device-width\">"
                   "<title>mkv %s:%d: %s</title><style>%s</style></head><body>\n",
               cfg->listen, cfg->port, status, css);
  mkv_buf_addf(&b, "<h1>mkv on %s:%d <span id=\"status\" class=\"state %s\">%s</span></h1>\n",
               cfg->listen, cfg->port, status, status);
  mkv_buf_addf(&b, "<p>Version %s; up %s (since %s). Replicas %d, write quorum %d; %d of %d "
                   "volumes take new copies.</p>\n",
               st.version ? st.version : "?", up, started, cfg->replicas, quorum, writable, cfg->nvolumes);

  mkv_buf_adds(&b, "<h2>Volumes</h2>\n<table id=\"volumes\"><tr><th>Volume</th><th>State</th>"
                   "<th>Since</th><th></th><th>Why</th><th>Requests</th><th>Errors</th>"
                   "<th>Failed probes</th></tr>\n");
  vol_ctx_t vc = {&b, now_ms};
  mkv_health_foreach(page_volume, &vc);
  mkv_buf_adds(&b, "</table>\n");

  page_requests(&b);
  page_index(&b, cfg, index);
  page_ha(&b);
  page_jobs(&b, now_ms);
  mkv_buf_addf(&b, "<footer>Read-only: this listener starts and cancels nothing. Machine "
                   "readable: <a href=\"/metrics\">/metrics</a>, <a href=\"/health\">/health</a>. "
                   "Page made %s; it reloads every 5 s.</footer>\n</body></html>\n",
               now);
  mkv_header_t h[3] = {{"Content-Type", "text/html; charset=utf-8", 0},
                       {"Cache-Control", "no-store", 0},
                       {"Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'", 0}};
  mkv_req_respond(req, 200, h, 3, b.data, b.len);
  mkv_buf_free(&b);
}

/* ---- the handler ---- */

static void on_headers(mkv_req_t *req) {
  const mkv_config_t *cfg = req->worker->cfg;
  if (cfg->status_auth.nwrite &&
      !mkv_auth_bearer_ok(&cfg->status_auth, req->authorization.data, req->authorization.len)) {
    mkv_auth_refuse(req, "mkv-status",
                    "401: the status listener needs Authorization: Bearer <status_token>\n");
    return;
  }
  const char *k = req->key.data ? req->key.data : "";
  size_t kl = req->key.len;
  int page = kl == 1 && k[0] == '/';
  int metrics = kl == 8 && memcmp(k, "/metrics", 8) == 0;
  int health = kl == 7 && memcmp(k, "/health", 7) == 0;
  if (!page && !metrics && !health) {
    mkv_req_respond_text(req, 404, "not found: the status listener serves GET /, /metrics and /health");
    return;
  }
  if (req->method != MKV_M_GET && req->method != MKV_M_HEAD) {
    mkv_header_t h[2] = {{"Allow", "GET, HEAD", 0}, {"Content-Type", "text/plain; charset=utf-8", 0}};
    static const char body[] = "405: the status listener is read-only (GET, HEAD)\n";
    mkv_req_respond(req, 405, h, 2, body, sizeof(body) - 1);
    return;
  }
  if (page) page_respond(req);
  else if (metrics) mkv_admin_metrics_respond(req);
  else mkv_admin_health_respond(req);
}

static void on_body(mkv_req_t *req, const char *at, size_t len) {
  (void)req, (void)at, (void)len;
}

static void on_nothing(mkv_req_t *req) {
  (void)req;
}

const mkv_handler_t mkv_status_handler = {on_headers, on_body,    on_nothing, on_nothing,
                                          on_nothing, on_nothing, 0};
