/* adminsrv.c: the endpoints of the admin listener (loopback by default), served by the
 * server's admin thread with the same HTTP machinery as the API (server.c).
 *
 *   POST /admin/run?script=NAME[&arg=OPT]...
 *     Runs an admin script inside the server -- under its key locks, while it serves --
 *     and streams its output back (the protocol: admin_proto.h). One job at a time (409
 *     otherwise). A client that goes away cancels its job.
 *
 *   GET /health
 *     200 when the index is open and writable and every volume answers (a HEAD of its
 *     root within voltimeout, any status below 500), else 503; the body (JSON) says
 *     which check failed and why.
 *
 *   GET /metrics
 *     Prometheus text: requests by method and status, latency histograms, bytes, per
 *     volume requests/errors/latency/bytes, keys locked, the index writer's counters and
 *     LevelDB's files per level, config reloads.
 *
 * The command side is admin_client.c: it finds this listener through <db>/mkv.admin. */
#include <stdlib.h>
#include <string.h>

#include "mkv/admin.h"
#include "mkv/admin_proto.h"
#include "mkv/index.h"
#include "mkv/keylock.h"
#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/server.h"
#include "mkv/text.h"
#include "mkv/upstream.h"
#include "mkv/worker.h"

#define MAX_SCRIPT (1u << 20)

typedef struct job_s {
  mkv_req_t *req;
  mkv_worker_t *w;
  mkv_admin_t *admin;
  int running, gone, is_run;
  mkv_buf_t query;
  mkv_buf_t source;
  int too_big;
} job_t;

/* The job running on this server, if any: one at a time. The admin listener has one
 * thread, the only one that touches this. */
static job_t *running_job;

static void job_line(void *ctx, int kind, const char *text, size_t len) {
  job_t *j = ctx;
  if (j->gone) return;
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_addf(&b, "%c ", kind);
  mkv_buf_add(&b, text, len);
  mkv_buf_addc(&b, '\n');
  mkv_req_stream_write(j->req, b.data, b.len, NULL, NULL);
  mkv_buf_free(&b);
}

static void job_done(void *arg, int code) {
  job_t *j = arg;
  mkv_info("admin job finished with exit code %d", code);
  if (!j->gone) {
    char line[32];
    int n = snprintf(line, sizeof(line), "%c %d\n", MKV_ADMIN_EXIT, code);
    mkv_req_stream_write(j->req, line, (size_t)n, NULL, NULL);
    mkv_req_stream_end(j->req);
  }
  j->running = 0;
  j->admin = NULL;
  running_job = NULL;
  mkv_req_unref(j->req);
}

static job_t *job_of(mkv_req_t *req) {
  if (req->data == NULL) {
    job_t *j = mkv_calloc(1, sizeof(*j));
    j->req = req;
    j->w = req->worker;
    mkv_buf_init(&j->query);
    mkv_buf_init(&j->source);
    req->data = j;
  }
  return req->data;
}

/* ---- /health ---- */

typedef struct health_s health_t;
typedef struct probe_s {
  mkv_upreq_t up;
  health_t *h;
  int err, status, done;
} probe_t;

struct health_s {
  mkv_req_t *req;
  int n, pending;
  probe_t *probes;
};

static void health_answer(health_t *h) {
  mkv_req_t *req = h->req;
  const mkv_config_t *cfg = req->worker->cfg;
  const char *failure = mkv_index_failure(req->worker->index);
  int ok = failure == NULL;
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_adds(&b, "{\"index\":");
  const char *ix = failure ? failure : "ok";
  mkv_json_string(&b, ix, strlen(ix));
  mkv_buf_adds(&b, ",\"volumes\":{");
  for (int i = 0; i < h->n; i++) {
    probe_t *p = &h->probes[i];
    char why[96];
    if (p->err)
      snprintf(why, sizeof(why), "%s", uv_strerror(p->err));
    else if (p->status >= 500)
      snprintf(why, sizeof(why), "answered %d", p->status);
    else
      snprintf(why, sizeof(why), "ok");
    if (strcmp(why, "ok") != 0) ok = 0;
    if (i) mkv_buf_addc(&b, ',');
    mkv_json_string(&b, cfg->volumes[i], strlen(cfg->volumes[i]));
    mkv_buf_addc(&b, ':');
    mkv_json_string(&b, why, strlen(why));
  }
  mkv_buf_addf(&b, "},\"status\":\"%s\"}\n", ok ? "ok" : "failing");
  mkv_header_t hd[2] = {{"Content-Type", "application/json", 0}, {"Cache-Control", "no-store", 0}};
  mkv_req_respond(req, ok ? 200 : 503, hd, 2, b.data, b.len);
  mkv_buf_free(&b);
  for (int i = 0; i < h->n; i++) mkv_upreq_free(&h->probes[i].up);
  free(h->probes);
  free(h);
  mkv_req_unref(req);
}

static void health_probe_done(mkv_upreq_t *r, int err) {
  probe_t *p = r->data;
  p->err = err;
  p->status = r->status;
  p->done = 1;
  if (--p->h->pending == 0) health_answer(p->h);
}

static void health_start(mkv_req_t *req) {
  mkv_worker_t *w = req->worker;
  const mkv_config_t *cfg = w->cfg;
  health_t *h = mkv_calloc(1, sizeof(*h));
  h->req = req;
  h->n = cfg->nvolumes;
  h->probes = mkv_calloc((size_t)MKV_MAX(1, h->n), sizeof(probe_t));
  mkv_req_ref(req);
  h->pending = 1; /* held until every probe is started */
  for (int i = 0; i < h->n; i++) {
    probe_t *p = &h->probes[i];
    p->h = h;
    mkv_upreq_init(&p->up);
    mkv_buf_set(&p->up.host, cfg->volumes[i], strlen(cfg->volumes[i]));
    mkv_buf_set(&p->up.path, "/", 1);
    p->up.method = MKV_UP_HEAD;
    p->up.timeout_ms = MKV_MAX(cfg->voltimeout_ms, 100);
    p->up.done = health_probe_done;
    p->up.data = p;
    h->pending++;
    if (mkv_upstream_start(w->up, &p->up) != 0) {
      p->err = UV_EINVAL;
      h->pending--;
    }
  }
  if (--h->pending == 0) health_answer(h);
}

/* ---- /metrics ---- */

static void metrics_extra(mkv_buf_t *out, void *arg) {
  mkv_worker_t *w = arg;
  mkv_buf_adds(out, "# HELP mkv_keys_locked Keys locked right now (writes and admin work in flight).\n"
                    "# TYPE mkv_keys_locked gauge\n");
  mkv_buf_addf(out, "mkv_keys_locked %d\n", mkv_keylock_count());
  mkv_index_stats_t st;
  mkv_index_stats(w->index, &st);
  static const char *const names[4][2] = {
      {"mkv_index_batches_total", "Batches the index writer committed (one LevelDB write each)."},
      {"mkv_index_writes_total", "Records written or deleted through the index writer."},
      {"mkv_index_syncs_total", "Batches written with fsync."},
      {"mkv_index_failed_writes_total", "Index writes that failed."}};
  unsigned long long v[4] = {st.batches, st.writes, st.syncs, st.failed_writes};
  for (int i = 0; i < 4; i++)
    mkv_buf_addf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", names[i][0], names[i][1],
                 names[i][0], names[i][0], v[i]);
  /* Durable commits wait for the disk: on a filesystem shared with busy volumes (ext4,
   * data=ordered) one fsync can wait for their writeback, and every PUT answer with it. */
  mkv_buf_addf(out, "# HELP mkv_index_sync_seconds_total Time the index writer spent in "
                    "fsynced batch writes.\n# TYPE mkv_index_sync_seconds_total counter\n"
                    "mkv_index_sync_seconds_total %.6f\n", (double)st.sync_ns / 1e9);
  mkv_buf_addf(out, "# HELP mkv_index_writable 1 while index writes work; 0 after a write "
                    "error (writes answer 503 until a restart).\n# TYPE mkv_index_writable gauge\n"
                    "mkv_index_writable %d\n", mkv_index_failure(w->index) ? 0 : 1);
  mkv_buf_adds(out, "# HELP mkv_leveldb_files LevelDB table files, by level.\n"
                    "# TYPE mkv_leveldb_files gauge\n");
  for (int level = 0; level < 7; level++) {
    char name[64];
    snprintf(name, sizeof(name), "leveldb.num-files-at-level%d", level);
    char *val = mkv_index_property(w->index, name);
    if (val) mkv_buf_addf(out, "mkv_leveldb_files{level=\"%d\"} %s\n", level, val);
    free(val);
  }
  char *mem = mkv_index_property(w->index, "leveldb.approximate-memory-usage");
  if (mem) {
    mkv_buf_addf(out, "# HELP mkv_leveldb_memory_bytes LevelDB's memtables and block cache in use.\n"
                      "# TYPE mkv_leveldb_memory_bytes gauge\nmkv_leveldb_memory_bytes %s\n", mem);
    free(mem);
  }
  mkv_buf_addf(out, "# HELP mkv_config_reloads_total SIGHUP reloads, by result.\n"
                    "# TYPE mkv_config_reloads_total counter\n"
                    "mkv_config_reloads_total{result=\"ok\"} %llu\n"
                    "mkv_config_reloads_total{result=\"refused\"} %llu\n",
               mkv_reloads_ok(), mkv_reloads_refused());
}

static void metrics_respond(mkv_req_t *req) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_metrics_render(&b, metrics_extra, req->worker);
  mkv_header_t h[2] = {{"Content-Type", "text/plain; version=0.0.4; charset=utf-8", 0},
                       {"Cache-Control", "no-store", 0}};
  mkv_req_respond(req, 200, h, 2, b.data, b.len);
  mkv_buf_free(&b);
}

static void on_headers(mkv_req_t *req) {
  job_t *j = job_of(req);
  const char *k = req->key.data;
  int get = req->method == MKV_M_GET || req->method == MKV_M_HEAD;
  if (get && req->key.len == 7 && memcmp(k, "/health", 7) == 0) {
    health_start(req);
    return;
  }
  if (get && req->key.len == 8 && memcmp(k, "/metrics", 8) == 0) {
    metrics_respond(req);
    return;
  }
  if (req->method == MKV_M_POST && req->key.len == strlen(MKV_ADMIN_RUN_PATH) &&
      memcmp(k, MKV_ADMIN_RUN_PATH, req->key.len) == 0) {
    j->is_run = 1;
    mkv_buf_set(&j->query, req->raw_query.data ? req->raw_query.data : "", req->raw_query.len);
    return; /* the job starts once the body (the script, if any) is in */
  }
  mkv_req_respond_text(req, 404, "not found: the admin listener serves POST /admin/run, GET /health and GET /metrics");
}

static void on_body(mkv_req_t *req, const char *at, size_t len) {
  job_t *j = job_of(req);
  if (!j->is_run) return;
  if (j->source.len + len > MAX_SCRIPT) {
    j->too_big = 1;
    return;
  }
  mkv_buf_add(&j->source, at, len);
}

static void on_flush(mkv_req_t *req) {
  (void)req;
}

static void on_complete(mkv_req_t *req) {
  job_t *j = job_of(req);
  if (!j->is_run || req->responded) return;
  mkv_worker_t *w = req->worker;
  if (j->too_big) {
    mkv_req_respond_text(req, 413, "script too large");
    return;
  }
  if (running_job) {
    mkv_req_respond_text(req, 409, "an admin job is already running on this server");
    return;
  }
  mkv_admin_request_t r;
  mkv_admin_opts_t o;
  memset(&o, 0, sizeof(o));
  const char *rest[MKV_ADMIN_MAX_ARGS];
  int nrest = 0;
  char *err = NULL;
  if (mkv_admin_proto_parse(j->query.data ? j->query.data : "", j->query.len, &r, &err) != 0) {
    mkv_req_respond_text(req, 400, err);
  } else if (j->source.len == 0 && !mkv_admin_script_exists(r.script)) {
    mkv_req_respond_text(req, 404, "no such admin script");
  } else if (mkv_admin_parse_opts(&o, r.argc, (const char *const *)r.argv, rest, &nrest,
                                  &err) != 0) {
    mkv_req_respond_text(req, 400, err);
  } else {
    o.script = r.script;
    o.argc = nrest;
    o.argv = rest;
    if (j->source.len) {
      o.source = j->source.data;
      o.source_len = j->source.len;
    }
    o.sink.line = job_line;
    o.sink.ctx = j;
    if (mkv_admin_start(&w->loop, w->cfg, w->index, &o, job_done, j, &j->admin, &err) != 0) {
      mkv_req_respond_text(req, 400, err);
    } else {
      j->running = 1;
      running_job = j;
      mkv_req_ref(req); /* until job_done */
      mkv_header_t h = {"Content-Type", "text/plain; charset=utf-8", 0};
      mkv_req_stream_start(req, 200, &h, 1);
      mkv_info("admin job started: %s", r.script);
    }
  }
  free(err);
  mkv_admin_request_free(&r);
}

static void on_abort(mkv_req_t *req) {
  job_t *j = req->data;
  if (j == NULL) return;
  j->gone = 1;
  if (j->running && j->admin) {
    mkv_warn("admin client went away: cancelling its job");
    mkv_admin_cancel(j->admin);
  }
}

static void on_free(mkv_req_t *req) {
  job_t *j = req->data;
  if (j == NULL) return;
  mkv_buf_free(&j->query);
  mkv_buf_free(&j->source);
  free(j);
  req->data = NULL;
}

const mkv_handler_t mkv_admin_handler = {on_headers,  on_body,  on_flush, on_complete,
                                         on_abort,    on_free,  0};
