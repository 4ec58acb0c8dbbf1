/* adminsrv.c: the endpoints of the admin listener (loopback by default), served by the
 * server's admin thread with the same HTTP machinery as the API (server.c).
 *
 *   POST /admin/run?script=NAME[&arg=OPT]...
 *     Runs an admin script inside the server -- under its key locks, while it serves --
 *     and streams its output back (the protocol: admin_proto.h). One job at a time (409
 *     otherwise), each numbered (X-Mkv-Job). A client that goes away cancels its job.
 *
 *   POST /admin/cancel?job=N
 *     Cancels job N if it is the one running (Ctrl-C in the command): 200, and its
 *     stream ends as any run's does; 404 when no job N runs.
 *
 *   GET /health
 *     The index and each volume's state (health.h) with since when, and a status:
 *     200 "ok", 200 "degraded" (a volume down or full, writes still reach their
 *     quorum), or 503 "failing" (the index is read-only, or too few volumes can take a
 *     copy). No request to any volume: the prober's knowledge.
 *
 *   GET /metrics
 *     Prometheus text: requests by method and status, latency histograms, bytes, per
 *     volume requests/errors/latency/bytes, keys locked, the index writer's counters and
 *     LevelDB's files per level, config reloads.
 *
 * The command side is admin_client.c: it finds this listener through <db>/mkv.admin. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mkv/admin.h"
#include "mkv/admin_proto.h"
#include "mkv/ha.h"
#include "mkv/health.h"
#include "mkv/index.h"
#include "mkv/keylock.h"
#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/repair.h"
#include "mkv/server.h"
#include "mkv/text.h"
#include "mkv/upstream.h"
#include "mkv/worker.h"

#define MAX_SCRIPT (1u << 20)

typedef struct job_s {
  mkv_req_t *req;
  mkv_worker_t *w;
  mkv_admin_t *admin;
  int running, gone, is_run, is_cancel;
  unsigned long long id; /* the job's number, from 1 (X-Mkv-Job) */
  mkv_buf_t query;
  mkv_buf_t source;
  int too_big;
} job_t;

/* The job running on this server, if any: one at a time. The admin listener has one
 * thread, the only one that touches this. */
static job_t *running_job;
static unsigned long long job_count; /* jobs started since the server did */

/* What the status page shows of the jobs (mkv_admin_jobs_info): written here on the
 * admin thread, read by the status listener's thread, under the mutex. Slot 0 is the
 * operator's job, slot 1 the background repair. */
static pthread_mutex_t jobs_mu = PTHREAD_MUTEX_INITIALIZER;
static mkv_admin_job_info_t jobs[2];

static void jobs_set(int slot, const char *script) {
  pthread_mutex_lock(&jobs_mu);
  memset(&jobs[slot], 0, sizeof(jobs[slot]));
  if (script) {
    jobs[slot].running = 1;
    snprintf(jobs[slot].script, sizeof(jobs[slot].script), "%s", script);
    jobs[slot].started_ms = (int64_t)time(NULL) * 1000;
  }
  pthread_mutex_unlock(&jobs_mu);
}

static void jobs_progress(int slot, const char *text, size_t len) {
  mkv_admin_progress_t p;
  if (mkv_admin_progress_parse(text, len, &p) != 0) return;
  pthread_mutex_lock(&jobs_mu);
  jobs[slot].progress = p;
  jobs[slot].has_progress = 1;
  pthread_mutex_unlock(&jobs_mu);
}

void mkv_admin_jobs_info(mkv_admin_job_info_t out[2]) {
  pthread_mutex_lock(&jobs_mu);
  memcpy(out, jobs, sizeof(jobs));
  pthread_mutex_unlock(&jobs_mu);
}

static void job_line(void *ctx, int kind, const char *text, size_t len) {
  job_t *j = ctx;
  if (kind == MKV_ADMIN_PROGRESS) jobs_progress(0, text, len);
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
  mkv_info("admin job finished with exit code %d (job %llu)", code, j->id);
  if (!j->gone) {
    char line[32];
    int n = snprintf(line, sizeof(line), "%c %d\n", MKV_ADMIN_EXIT, code);
    mkv_req_stream_write(j->req, line, (size_t)n, NULL, NULL);
    mkv_req_stream_end(j->req);
  }
  j->running = 0;
  j->admin = NULL;
  running_job = NULL;
  jobs_set(0, NULL);
  mkv_req_unref(j->req);
}

/* ---- the background repair ---- */

/* lua/repair.lua, started on this thread every repair_interval while there is work for
 * it (keys in the repair set, or a scan due), with its own bandwidth and concurrency;
 * it runs beside an operator's job (both take the key locks). Its reports go to the
 * log at debug level, its summary at info. */
static struct {
  mkv_worker_t *w;
  uv_timer_t timer;
  mkv_admin_t *job;
  int started, stopping;
  uint64_t last_end_ms; /* when the last pass ended: the next waits repair_interval */
} repair;

static void repair_line(void *ctx, int kind, const char *text, size_t len) {
  (void)ctx;
  if (kind == MKV_ADMIN_PROGRESS) {
    jobs_progress(1, text, len);
    return;
  }
  if (kind == MKV_ADMIN_LOG)
    mkv_warn("repair: %.*s", (int)len, text);
  else if (kind == MKV_ADMIN_SUMMARY) {
    /* A pass that did or met something is news; an idle one is not. */
    char line[512];
    snprintf(line, sizeof(line), "%.*s", (int)len, text);
    if (strstr(line, " changed 0,") && strstr(line, " failed 0,"))
      mkv_debug("%s", line);
    else
      mkv_info("%s", line);
  }
  else
    mkv_debug("repair: %.*s", (int)len, text);
}

static void repair_done(void *arg, int code) {
  (void)arg;
  (void)code;
  repair.job = NULL;
  jobs_set(1, NULL);
  repair.last_end_ms = mkv_now_ms();
}

static void on_repair_timer(uv_timer_t *t) {
  mkv_worker_t *w = repair.w;
  const mkv_config_t *cfg = w->cfg;
  (void)t;
  if (repair.job || repair.stopping || cfg->repair_interval_ms <= 0) return;
  if (mkv_ha_role() == MKV_HA_STANDBY) return; /* the primary's work: it holds the writes */
  mkv_repair_stats_t st;
  mkv_repair_stats(&st);
  /* A scan (after a start or a reload) begins at once; passes over the noted keys come
   * every repair_interval. */
  if (!st.scan_due && (st.keys == 0 || mkv_now_ms() - repair.last_end_ms <
                                           (uint64_t)cfg->repair_interval_ms))
    return;
  mkv_admin_opts_t o;
  memset(&o, 0, sizeof(o));
  o.script = "repair";
  o.concurrency = cfg->repair_concurrency;
  o.bandwidth = cfg->repair_bandwidth;
  o.sink.line = repair_line;
  char *err = NULL;
  if (mkv_admin_start(&w->loop, cfg, w->index, &o, repair_done, NULL, &repair.job, &err) != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "repair: cannot start: %s", err);
    free(err);
    repair.job = NULL;
    return;
  }
  if (repair.job) jobs_set(1, "repair (background)");
}

void mkv_repair_schedule_start(mkv_worker_t *w) {
  repair.w = w;
  repair.started = 1;
  repair.stopping = 0;
  uv_timer_init(&w->loop, &repair.timer);
  /* Ticks a few times a second; repair_interval is read at each, so a reload changes
   * it. The first comes soon: after a start the scan finds what a stop left behind. */
  uv_timer_start(&repair.timer, on_repair_timer, 100, 250);
}

void mkv_repair_schedule_stop(void) {
  if (!repair.started || repair.stopping) return;
  repair.stopping = 1;
  if (repair.job) mkv_admin_cancel(repair.job);
  uv_close((uv_handle_t *)&repair.timer, NULL);
}

int mkv_repair_schedule_busy(void) {
  return repair.job != NULL;
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

typedef struct health_doc_s {
  mkv_buf_t *b;
  int n, down, full, writable;
} health_doc_t;

/* Counts the volume; with d->b, adds it to the /health document too. */
static void health_volume(const mkv_vol_info_t *vi, void *arg) {
  health_doc_t *d = arg;
  if (!vi->up) d->down++;
  if (strcmp(vi->state, "full") == 0) d->full++;
  if (strcmp(vi->state, "up") == 0) d->writable++;
  if (d->b == NULL) return;
  char since[40];
  time_t secs = (time_t)(vi->since_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (d->n++) mkv_buf_addc(d->b, ',');
  mkv_json_string(d->b, vi->name, strlen(vi->name));
  mkv_buf_adds(d->b, ":{\"state\":");
  mkv_json_string(d->b, vi->state, strlen(vi->state));
  mkv_buf_addf(d->b, ",\"since\":\"%s\"", since);
  if (vi->reason[0]) {
    mkv_buf_adds(d->b, ",\"reason\":");
    mkv_json_string(d->b, vi->reason, strlen(vi->reason));
  }
  mkv_buf_addc(d->b, '}');
}

static const char *health_status(const char *failure, const health_doc_t *d, int quorum) {
  return failure || d->writable < quorum ? "failing"
         : d->down || d->full           ? "degraded"
                                        : "ok";
}

const char *mkv_admin_health_status(const mkv_config_t *cfg, mkv_index_t *index,
                                    int *writable, int *quorum) {
  health_doc_t d = {NULL, 0, 0, 0, 0};
  mkv_health_foreach(health_volume, &d);
  *writable = d.writable;
  *quorum = mkv_write_quorum(cfg, cfg->replicas);
  return health_status(mkv_index_failure(index), &d, *quorum);
}

/* From what the prober knows (health.h), with no request to any volume: 200 "ok" when
 * the index is writable and every volume is up; 200 "degraded" when a volume is down
 * or full but a PUT can still reach its write quorum; 503 "failing" when the index is
 * read-only or too few volumes can take a copy for any PUT to succeed. */
void mkv_admin_health_respond(mkv_req_t *req) {
  const mkv_config_t *cfg = req->worker->cfg;
  const char *failure = mkv_index_failure(req->worker->index);
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_adds(&b, "{\"index\":");
  const char *ix = failure ? failure : "ok";
  mkv_json_string(&b, ix, strlen(ix));
  mkv_buf_adds(&b, ",\"volumes\":{");
  health_doc_t d = {&b, 0, 0, 0, 0};
  mkv_health_foreach(health_volume, &d);
  int quorum = mkv_write_quorum(cfg, cfg->replicas);
  const char *status = health_status(failure, &d, quorum);
  mkv_buf_addf(&b, "},\"writable_volumes\":%d,\"write_quorum\":%d,\"status\":\"%s\"",
               d.writable, quorum, status);
  if (mkv_ha_role() != MKV_HA_OFF) {
    mkv_buf_adds(&b, ",\"ha\":");
    mkv_ha_health_json(&b);
  }
  mkv_buf_adds(&b, "}\n");
  mkv_header_t hd[2] = {{"Content-Type", "application/json", 0}, {"Cache-Control", "no-store", 0}};
  mkv_req_respond(req, strcmp(status, "failing") == 0 ? 503 : 200, hd, 2, b.data, b.len);
  mkv_buf_free(&b);
}

/* ---- /metrics ---- */

static void metric_volume_up(const mkv_vol_info_t *vi, void *arg) {
  mkv_buf_addf(arg, "mkv_volume_up{volume=\"%s\"} %d\n", vi->name, vi->up);
}

static void metric_volume_state(const mkv_vol_info_t *vi, void *arg) {
  static const char *const states[] = {"up", "down", "full", "read_only", "drain"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(states); i++)
    mkv_buf_addf(arg, "mkv_volume_state{volume=\"%s\",state=\"%s\"} %d\n", vi->name,
                 states[i], strcmp(vi->state, states[i]) == 0);
}

static void metrics_extra(mkv_buf_t *out, void *arg) {
  mkv_worker_t *w = arg;
  mkv_ha_metrics(out);
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
  int files[MKV_INDEX_LEVELS];
  mkv_index_level_files(w->index, files);
  for (int level = 0; level < MKV_INDEX_LEVELS; level++)
    if (files[level] >= 0) mkv_buf_addf(out, "mkv_leveldb_files{level=\"%d\"} %d\n", level, files[level]);
  char *mem = mkv_index_property(w->index, "leveldb.approximate-memory-usage");
  if (mem) {
    mkv_buf_addf(out, "# HELP mkv_leveldb_memory_bytes LevelDB's memtables and block cache in use.\n"
                      "# TYPE mkv_leveldb_memory_bytes gauge\nmkv_leveldb_memory_bytes %s\n", mem);
    free(mem);
  }
  mkv_buf_adds(out, "# HELP mkv_volume_up 1 while the volume answers its probes, 0 while it is "
                    "down.\n# TYPE mkv_volume_up gauge\n");
  mkv_health_foreach(metric_volume_up, out);
  mkv_buf_adds(out, "# HELP mkv_volume_state The volume's state: 1 for the one it is in (up, "
                    "down, full, read_only, drain).\n# TYPE mkv_volume_state gauge\n");
  mkv_health_foreach(metric_volume_state, out);
  mkv_repair_stats_t rs;
  mkv_repair_stats(&rs);
  mkv_buf_addf(out, "# HELP mkv_keys_underreplicated Keys known to have fewer copies than their "
                    "replica count, or copies where placement does not want them (the repair's "
                    "work).\n# TYPE mkv_keys_underreplicated gauge\nmkv_keys_underreplicated %llu\n"
                    "# HELP mkv_repair_keys_total Keys the background repair settled.\n"
                    "# TYPE mkv_repair_keys_total counter\nmkv_repair_keys_total %llu\n"
                    "# HELP mkv_repair_dropped_total Keys not kept for the repair (its set was "
                    "full): a scan of the index finds them.\n# TYPE mkv_repair_dropped_total "
                    "counter\nmkv_repair_dropped_total %llu\n"
                    "# HELP mkv_repair_scans_total Scans of the whole index the repair finished "
                    "(one after each start and reload).\n# TYPE mkv_repair_scans_total counter\n"
                    "mkv_repair_scans_total %d\n"
                    "# HELP mkv_repair_given_up_total Keys the repair gave up on after failed "
                    "attempts (mkv verify says what is wrong).\n"
                    "# TYPE mkv_repair_given_up_total counter\nmkv_repair_given_up_total %llu\n",
               rs.keys, rs.repaired, rs.dropped, rs.scans_done, rs.given_up);
  mkv_buf_addf(out, "# HELP mkv_config_reloads_total SIGHUP reloads, by result.\n"
                    "# TYPE mkv_config_reloads_total counter\n"
                    "mkv_config_reloads_total{result=\"ok\"} %llu\n"
                    "mkv_config_reloads_total{result=\"refused\"} %llu\n",
               mkv_reloads_ok(), mkv_reloads_refused());
}

void mkv_admin_metrics_respond(mkv_req_t *req) {
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
    mkv_admin_health_respond(req);
    return;
  }
  if (get && req->key.len == 8 && memcmp(k, "/metrics", 8) == 0) {
    mkv_admin_metrics_respond(req);
    return;
  }
  if (req->method == MKV_M_POST && req->key.len == strlen(MKV_ADMIN_RUN_PATH) &&
      memcmp(k, MKV_ADMIN_RUN_PATH, req->key.len) == 0) {
    j->is_run = 1;
    mkv_buf_set(&j->query, req->raw_query.data ? req->raw_query.data : "", req->raw_query.len);
    return; /* the job starts once the body (the script, if any) is in */
  }
  if (req->method == MKV_M_POST && req->key.len == strlen(MKV_ADMIN_CANCEL_PATH) &&
      memcmp(k, MKV_ADMIN_CANCEL_PATH, req->key.len) == 0) {
    j->is_cancel = 1;
    mkv_buf_set(&j->query, req->raw_query.data ? req->raw_query.data : "", req->raw_query.len);
    return;
  }
  mkv_req_respond_text(req, 404, "not found: the admin listener serves POST /admin/run, "
                                 "POST /admin/cancel, GET /health and GET /metrics");
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

/* verify's --repair (written as mkv_admin.lua's options parser takes it: -repair,
 * --repair, --repair=VALUE), which writes. An option's value ("--prefix repair/") is no
 * option. */
static int is_repair_option(const char *a) {
  if (a[0] != '-') return 0;
  a += a[1] == '-' ? 2 : 1;
  return strcspn(a, "=") == 6 && memcmp(a, "repair", 6) == 0;
}

/* A standby runs the jobs that only read (backup, verify without --repair); the others
 * write the index under key locks that only the primary's writes respect: they go to
 * the primary, whose admin address the answer names (421, X-Mkv-Primary-Admin) for the
 * command to go on there when it can reach it. 1 when it may run here. */
static int standby_may_run(mkv_req_t *req, job_t *j) {
  mkv_admin_request_t r;
  char *err = NULL;
  int ok = 0;
  if (mkv_admin_proto_parse(j->query.data ? j->query.data : "", j->query.len, &r, &err) == 0) {
    ok = j->source.len == 0 &&
         (strcmp(r.script, "backup") == 0 || strcmp(r.script, "verify") == 0);
    for (int i = 0; ok && i < r.argc; i++)
      if (is_repair_option(r.argv[i])) ok = 0;
    mkv_admin_request_free(&r);
  }
  free(err);
  if (ok) return 1;
  char admin[256], why[600];
  int known = mkv_ha_primary_admin(admin, sizeof(admin)) == 0;
  snprintf(why, sizeof(why), "this index node is a standby: run the command on the primary%s%s",
           known ? ", whose admin listener is " : " (none is known right now)", known ? admin : "");
  mkv_header_t h = {"X-Mkv-Primary-Admin", admin, 0};
  mkv_req_respond(req, 421, known ? &h : NULL, known ? 1 : 0, why, strlen(why));
  return 0;
}

/* POST /admin/cancel?job=N: the command's Ctrl-C. The job's own stream says the rest
 * ("cancelled: stopping every task", then its exit code). */
static void cancel_respond(mkv_req_t *req, job_t *j) {
  size_t pos = 0, nlen, vlen;
  const char *name, *val;
  long long id = -1;
  while (mkv_query_next(j->query.data ? j->query.data : "", j->query.len, &pos, &name, &nlen,
                        &val, &vlen))
    if (nlen == 3 && memcmp(name, "job", 3) == 0 && mkv_parse_int(val, vlen, &id) != 0) id = -1;
  if (id < 1) {
    mkv_req_respond_text(req, 400, "POST " MKV_ADMIN_CANCEL_PATH " needs job=N (the X-Mkv-Job "
                                   "of the job's answer)");
    return;
  }
  job_t *run = running_job;
  if (run == NULL || run->id != (unsigned long long)id || run->admin == NULL ||
      mkv_admin_cancel(run->admin) != 0) {
    char why[96];
    snprintf(why, sizeof(why), "no job %lld is running", id);
    mkv_req_respond_text(req, 404, why);
    return;
  }
  mkv_warn("admin job %lld: cancelled at its command's request", id);
  char ok[64];
  snprintf(ok, sizeof(ok), "cancelling job %lld", id);
  mkv_req_respond_text(req, 200, ok);
}

static void on_complete(mkv_req_t *req) {
  job_t *j = job_of(req);
  if (j->is_cancel && !req->responded) {
    cancel_respond(req, j);
    return;
  }
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
  if (mkv_ha_role() == MKV_HA_STANDBY && !standby_may_run(req, j)) return;
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
      j->id = ++job_count;
      running_job = j;
      jobs_set(0, r.script);
      mkv_req_ref(req); /* until job_done */
      char id[24];
      snprintf(id, sizeof(id), "%llu", j->id);
      mkv_header_t h[2] = {{"Content-Type", "text/plain; charset=utf-8", 0},
                           {MKV_ADMIN_JOB_HEADER, id, 0}};
      mkv_req_stream_start(req, 200, h, 2);
      mkv_info("admin job started: %s (job %llu)", r.script, j->id);
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
