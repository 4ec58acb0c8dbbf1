/* health.h: what mkv knows of each volume's health, known before a request needs it,
 * and the same for every thread.
 *
 * Each configured volume ("host:port") has one entry, made when the config is loaded
 * and never freed while the process runs, holding:
 *   - its health, `up`, `down` or `full`, written only by the prober (the admin
 *     thread's loop): a HEAD of the volume's root every limits.probe_interval (backing
 *     off, up to limits.probe_backoff, while it stays down), and now and then -- and at
 *     once after a PUT there failed with 5xx -- a small write (PUT <volume>/mkv-probe),
 *     whose 5xx marks the volume `full` (nginx answers a write on a full or read-only
 *     disk with 500; only a write shows it). One failed probe marks a volume down, one
 *     answered probe marks it up again.
 *   - passive signals from every request to it (mkv_health_observe, called by the
 *     upstream's one completion point on any thread): a failure wakes the prober to
 *     probe that volume at once, so a dead volume is routed around within a probe's
 *     timeout, not the next interval; an answer from a volume marked down wakes it too.
 *   - the operator's mode from the config (volume_state): `read_only` (reads and
 *     deletes, no new copies) or `drain` (the same, and no longer a placement target).
 * Readers (the request path) take no lock: one atomic load per volume.
 *
 * Without mkv_health_init (an offline admin command, a unit test) every volume reads
 * as up and writable, and observations are dropped. */
#ifndef MKV_HEALTH_H
#define MKV_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/upstream.h"

typedef enum { MKV_VOL_UP, MKV_VOL_DOWN, MKV_VOL_FULL } mkv_vol_health_t;

/* What a finished request to a volume says about it. */
typedef enum {
  MKV_OBS_OK,         /* it answered below 500 */
  MKV_OBS_FAILED,     /* no answer: refused, reset, timed out */
  MKV_OBS_5XX,        /* it answered 5xx to a read or a delete */
  MKV_OBS_WRITE_5XX,  /* it answered 5xx to a PUT: maybe full */
} mkv_vol_obs_t;

/* Makes the table from cfg's volumes and modes. Main thread, before any worker starts. */
void mkv_health_init(const mkv_config_t *cfg);
/* A reloaded config: new volumes get entries (up until a probe says otherwise), modes
 * are set again, volumes no longer configured are forgotten by the prober. Any thread
 * (main, on SIGHUP); readers see the change at once. -1, changing nothing, when the
 * table cannot hold that many more volumes (a restart can). */
int mkv_health_reload(const mkv_config_t *cfg);
/* Frees the table (at exit, after every thread has stopped). */
void mkv_health_free(void);

/* Starts probing on `loop` with its upstream (the admin thread's), before the loop runs
 * or on its thread. mkv_health_stop (its loop thread) cancels the probes in flight and
 * closes the prober's handles; mkv_health_busy says whether a cancelled probe has yet
 * to finish (the upstream must not close before). */
void mkv_health_start(uv_loop_t *loop, mkv_upstream_t *up, const mkv_config_t *cfg);
void mkv_health_stop(void);
int mkv_health_busy(void);
/* The prober's config after a reload (any thread: the config outlives the process's
 * use of it, as main keeps every config it loaded). */
void mkv_health_set_config(const mkv_config_t *cfg);

/* An opaque entry, found once (a pool keeps it) and read many times. NULL: the volume is
 * not configured (or there is no table). */
typedef struct mkv_vol_s mkv_vol_t;
mkv_vol_t *mkv_health_find(const char *host, size_t hostlen);

/* Any thread. The health of host ("host:port"; a record volume's host part). */
mkv_vol_health_t mkv_health_of(const char *host, size_t hostlen);
mkv_vol_health_t mkv_vol_health(const mkv_vol_t *v);
mkv_vol_mode_t mkv_vol_mode(const mkv_vol_t *v);
/* May a new copy go there now: up, and neither read_only nor draining. */
int mkv_health_writable(const char *host, size_t hostlen);
/* The placement volumes (cfg->placement_volumes, in order) that may take a new copy now,
 * but any on host `skip` (skiplen 0: none): what placement is asked again among for a
 * handoff. Returns how many; *out (owned, free it) borrows the config's strings. */
int mkv_health_writable_volumes(const mkv_config_t *cfg, const char *skip, size_t skiplen,
                                char ***out);
/* Is it believed able to serve a read: not down (a full volume serves reads). */
int mkv_health_readable(const char *host, size_t hostlen);
/* Bumped whenever some volume's health or mode changes: callers that cache a list of
 * writable volumes rebuild it when this moves. */
uint64_t mkv_health_generation(void);

/* Any thread: what a request to `v` saw. Cheap when nothing changes. */
void mkv_health_observe(mkv_vol_t *v, mkv_vol_obs_t what);

/* For /health and /metrics: calls fn for every configured volume, in config order. */
typedef struct mkv_vol_info_s {
  const char *name;
  const char *state; /* "up", "down", "full", "read_only" or "drain" */
  int up;            /* answers: not down */
  int64_t since_ms;  /* wall clock (ms since the epoch) of the last change of state */
  char reason[128];  /* why it is not up (the last failed probe), "" when it is */
  uint64_t probes, probe_failures;
} mkv_vol_info_t;
void mkv_health_foreach(void (*fn)(const mkv_vol_info_t *vi, void *arg), void *arg);

/* Names, for configs and logs. */
const char *mkv_vol_mode_name(mkv_vol_mode_t m);

#endif
