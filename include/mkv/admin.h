/* admin.h: the admin runtime -- runs an admin script (lua/rebuild.lua, rebalance.lua,
 * verify.lua, gc.lua) on one libuv loop, each unit of work a Lua coroutine that yields
 * while its I/O is in flight, so one thread keeps hundreds of transfers moving.
 *
 * What a script gets (the `mkv` table of its Lua state; see lua_api.c): async HTTP to
 * volumes (HEAD, GET of listings, DELETE, streamed volume-to-volume copies and MD5s
 * that never hold a value in memory), index pages, reads and writes, the key locks the
 * API uses, placement through a checked policy state, mkv.spawn/mkv.wait, a bound on
 * transfers in flight (concurrency), an optional bandwidth cap, and progress counters.
 *
 * Threads: everything runs on the thread that calls mkv_admin_run -- the command's main
 * thread when no server holds the index (offline), or the server's admin thread
 * (online); the index, the key locks and the config are the shared, thread-safe ones.
 * Output goes through the sink, one line at a time, on that same thread. */
#ifndef MKV_ADMIN_H
#define MKV_ADMIN_H

#include <stddef.h>

#include <uv.h>

#include "mkv/admin_proto.h"
#include "mkv/config.h"
#include "mkv/index.h"

typedef struct mkv_admin_s mkv_admin_t;

/* Kinds of output lines. */
enum {
  MKV_ADMIN_REPORT = 'R',   /* a finding or an action: "missing /k on host:port/sv01" */
  MKV_ADMIN_LOG = 'L',      /* a log line (errors the script met) */
  MKV_ADMIN_PROGRESS = 'P', /* every second: mkv_admin_progress_format (admin_proto.h) */
  MKV_ADMIN_SUMMARY = 'S',  /* the final line: examined, changed, failed ... */
};

typedef struct mkv_admin_sink_s {
  /* text is borrowed: valid during the call; no newline in it. */
  void (*line)(void *ctx, int kind, const char *text, size_t len);
  void *ctx;
} mkv_admin_sink_t;

typedef struct mkv_admin_opts_s {
  const char *script;       /* "rebuild", "rebalance", "verify", "gc", or a file's path */
  const char *source;       /* the script's text when it came over the wire, or NULL */
  size_t source_len;
  int argc;                 /* the script's own options ("--md5", "--dry-run" ...) */
  const char *const *argv;
  int concurrency;          /* transfers in flight at most (MKV_ADMIN_CONCURRENCY) */
  double bandwidth;         /* bytes per second over all transfers, 0 = no cap */
  mkv_admin_sink_t sink;
} mkv_admin_opts_t;

#define MKV_ADMIN_CONCURRENCY 16 /* transfers in flight at most, by default */

/* Parses the options common to every script (--concurrency N, --bandwidth RATE such as
 * "50MB/s", "1GB/s", "800KB/s") out of argv into o (their defaults first); what remains
 * is the script's own, in rest (lends: rest[i] are argv's strings). Returns 0 or -1
 * with *err (owned). The one parser of these options: offline runs call it in the
 * command, online ones in the server (admin_proto.h). */
int mkv_admin_parse_opts(mkv_admin_opts_t *o, int argc, const char *const *argv,
                         const char **rest, int *nrest, char **err);

/* Starts the script on `loop` (which must be running or be run by the caller until
 * done runs). done(arg, code) runs once, on the loop, when the script has ended: code 0
 * when nothing failed, 1 when something failed, 2 when the script itself could not run.
 * Returns 0, or -1 with *err (owned) when the script could not start. */
int mkv_admin_start(uv_loop_t *loop, const mkv_config_t *cfg, mkv_index_t *index,
                    const mkv_admin_opts_t *opts, void (*done)(void *arg, int code),
                    void *arg, mkv_admin_t **out, char **err);
/* Cancels every task and parked operation; done still runs (with code 1). Returns 0
 * when the run stops (now, or from an earlier cancel), UV_EALREADY when it had already
 * ended (its summary is out; done runs with its own code). */
int mkv_admin_cancel(mkv_admin_t *a);

/* The names of the scripts there are (compiled in from lua/). */
int mkv_admin_script_exists(const char *name);

/* The admin listener's endpoints (adminsrv.c), served by the server's admin thread:
 * POST /admin/run runs a job (admin_proto.h), GET /health, GET /metrics. */
struct mkv_handler_s;
extern const struct mkv_handler_s mkv_admin_handler;

/* The same answers for the status listener (statussrv.c), on its own thread: both read
 * only shared, thread-safe state (health.h, metrics.h, the index's stats, ha.h). */
struct mkv_req_s;
void mkv_admin_health_respond(struct mkv_req_s *req);
void mkv_admin_metrics_respond(struct mkv_req_s *req);
/* /health's status word ("ok", "degraded", "failing") and what it rests on. */
const char *mkv_admin_health_status(const mkv_config_t *cfg, mkv_index_t *index,
                                    int *writable, int *quorum);

/* The admin jobs running now, for the status page (any thread): [0] the operator's job
 * (one at a time), [1] the background repair. Copied under a mutex. */
typedef struct mkv_admin_job_info_s {
  int running;
  char script[64];
  int64_t started_ms; /* wall clock */
  int has_progress;
  mkv_admin_progress_t progress; /* the last progress line */
} mkv_admin_job_info_t;
void mkv_admin_jobs_info(mkv_admin_job_info_t out[2]);

/* The background repair (repair.h), on the admin thread w: started before its loop
 * runs, stopped (cancelling a run) when it drains; busy while a run is finishing. */
struct mkv_worker_s;
void mkv_repair_schedule_start(struct mkv_worker_s *w);
void mkv_repair_schedule_stop(void);
int mkv_repair_schedule_busy(void);

#endif
