/* adminsrv.c: the endpoints of the admin listener (loopback by default), served by the
 * server's admin thread with the same HTTP machinery as the API (server.c).
 *
 *   POST /admin/run?script=NAME[&arg=OPT]...[&concurrency=N][&bandwidth=RATE]
 *     Runs an admin script inside the server -- under its key locks, while it serves --
 *     and streams the output back: one line per output line, "<kind> <text>" (kinds as
 *     in admin.h), and a last line "X <exit code>". A body, if any, is the script's own
 *     source (`mkv run FILE.lua`); without one NAME is a built-in script. One job at a
 *     time (409 otherwise). A client that goes away cancels its job.
 *
 * The command side is in main.c: it finds this listener through <db>/mkv.admin. */
#include <stdlib.h>
#include <string.h>

#include "mkv/admin.h"
#include "mkv/log.h"
#include "mkv/server.h"
#include "mkv/text.h"

#define MAX_SCRIPT (1u << 20)
#define MAX_ARGS 64

typedef struct job_s {
  mkv_req_t *req;
  mkv_worker_t *w;
  mkv_admin_t *admin;
  int running, gone, is_run;
  mkv_buf_t query;
  mkv_buf_t source;
  int too_big;
} job_t;

static void respond_text(mkv_req_t *req, int status, const char *text) {
  mkv_header_t h = {"Content-Type", "text/plain; charset=utf-8", 0};
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_addf(&b, "%s\n", text);
  mkv_req_respond(req, status, &h, 1, b.data, b.len);
  mkv_buf_free(&b);
}

static void job_line(void *ctx, int kind, const char *text, size_t len) {
  job_t *j = ctx;
  if (j->gone) return;
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_addf(&b, "%c ", kind);
  mkv_buf_add(&b, text, len);
  mkv_buf_addc(&b, '\n');
  mkv_req_stream_write(j->req, b.data, b.len, NULL);
  mkv_buf_free(&b);
}

static void job_done(void *arg, int code) {
  job_t *j = arg;
  mkv_info("admin job finished with exit code %d", code);
  if (!j->gone) {
    char line[32];
    int n = snprintf(line, sizeof(line), "X %d\n", code);
    mkv_req_stream_write(j->req, line, (size_t)n, NULL);
    mkv_req_stream_end(j->req);
  }
  j->running = 0;
  j->admin = NULL;
  j->w->admin_job = NULL;
  mkv_req_unref(j->req);
}

static job_t *job_of(mkv_req_t *req) {
  if (req->api == NULL) {
    job_t *j = mkv_calloc(1, sizeof(*j));
    j->req = req;
    j->w = req->worker;
    mkv_buf_init(&j->query);
    mkv_buf_init(&j->source);
    req->api = j;
  }
  return req->api;
}

static void on_headers(mkv_req_t *req) {
  job_t *j = job_of(req);
  const char *k = req->key.data;
  if (req->method == MKV_M_POST && req->key.len == 10 && memcmp(k, "/admin/run", 10) == 0) {
    j->is_run = 1;
    mkv_buf_set(&j->query, req->raw_query.data ? req->raw_query.data : "", req->raw_query.len);
    return; /* the job starts once the body (the script, if any) is in */
  }
  respond_text(req, 404, "not found: the admin listener serves POST /admin/run");
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
    respond_text(req, 413, "script too large");
    return;
  }
  if (w->admin_job) {
    respond_text(req, 409, "an admin job is already running on this server");
    return;
  }
  /* script=NAME, arg=OPT (repeatable), concurrency=N, bandwidth=RATE */
  char *script = NULL;
  const char *argv[MAX_ARGS + 4];
  char *owned[MAX_ARGS + 4];
  int argc = 0, nowned = 0, bad = 0;
  const char *q = j->query.data ? j->query.data : "";
  size_t qlen = j->query.len, i = 0;
  mkv_buf_t key, val;
  mkv_buf_init(&key);
  mkv_buf_init(&val);
  while (i < qlen && !bad) {
    size_t end = i;
    while (end < qlen && q[end] != '&') end++;
    size_t eq = i;
    while (eq < end && q[eq] != '=') eq++;
    mkv_buf_reset(&key);
    mkv_buf_reset(&val);
    if (mkv_query_unescape(q + i, eq - i, &key) != 0 ||
        (eq < end && mkv_query_unescape(q + eq + 1, end - eq - 1, &val) != 0)) {
      bad = 1;
      break;
    }
    const char *v = val.data ? val.data : "";
    if (key.len && strcmp(key.data, "script") == 0) {
      free(script);
      script = mkv_strdup(v);
    } else if (key.len && strcmp(key.data, "arg") == 0 && argc < MAX_ARGS) {
      argv[argc++] = owned[nowned++] = mkv_strdup(v);
    } else if (key.len && (strcmp(key.data, "concurrency") == 0 ||
                           strcmp(key.data, "bandwidth") == 0)) {
      argv[argc++] = owned[nowned++] = mkv_sprintf("--%s", key.data);
      argv[argc++] = owned[nowned++] = mkv_strdup(v);
    }
    i = end + 1;
  }
  mkv_buf_free(&key);
  mkv_buf_free(&val);
  mkv_admin_opts_t o;
  memset(&o, 0, sizeof(o));
  o.concurrency = 16;
  const char *rest[MAX_ARGS + 4];
  int nrest = 0;
  char *err = NULL;
  if (bad || script == NULL || script[0] == '\0') {
    respond_text(req, 400, "POST /admin/run needs script=NAME");
  } else if (j->source.len == 0 && !mkv_admin_script_exists(script)) {
    respond_text(req, 404, "no such admin script");
  } else if (mkv_admin_parse_opts(&o, argc, argv, rest, &nrest, &err) != 0) {
    respond_text(req, 400, err);
  } else {
    o.script = script;
    o.argc = nrest;
    o.argv = rest;
    if (j->source.len) {
      o.source = j->source.data;
      o.source_len = j->source.len;
    }
    o.sink.line = job_line;
    o.sink.ctx = j;
    if (mkv_admin_start(&w->loop, w->cfg, w->index, &o, job_done, j, &j->admin, &err) != 0) {
      respond_text(req, 400, err);
    } else {
      j->running = 1;
      w->admin_job = j;
      mkv_req_ref(req); /* until job_done */
      mkv_header_t h = {"Content-Type", "text/plain; charset=utf-8", 0};
      mkv_req_stream_start(req, 200, &h, 1);
      mkv_info("admin job started: %s", script);
    }
  }
  free(err);
  free(script);
  for (int k = 0; k < nowned; k++) free(owned[k]);
}

static void on_abort(mkv_req_t *req) {
  job_t *j = req->api;
  if (j == NULL) return;
  j->gone = 1;
  if (j->running && j->admin) {
    mkv_warn("admin client went away: cancelling its job");
    mkv_admin_cancel(j->admin);
  }
}

static void on_free(mkv_req_t *req) {
  job_t *j = req->api;
  if (j == NULL) return;
  mkv_buf_free(&j->query);
  mkv_buf_free(&j->source);
  free(j);
  req->api = NULL;
}

const mkv_handler_t mkv_admin_handler = {on_headers, on_body,  on_flush,
                                         on_complete, on_abort, on_free};
