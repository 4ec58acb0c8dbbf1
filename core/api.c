/* api.c: request semantics (ARCHITECTURE "Request semantics"), the write order, key
 * locks, and the mapping of every error to a status code; the reads (GET, HEAD,
 * listings) are api_read.c's.
 *
 * Write order, PUT: key lock -> record marked DELETED with its target volumes (so a
 * crash leaves a soft-deleted record, never a live key without bytes) -> body streamed
 * to every replica -> record made live (synced) -> 201. A failure anywhere deletes the
 * copies that were written, then the record, and only then releases the lock.
 * DELETE: record marked DELETED (synced) -> files removed -> record removed -> 204.
 * UNLINK: record marked DELETED (synced) -> 204. */
#include "mkv/api.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_int.h"
#include "internal.h"
#include "mkv/admin.h"
#include "mkv/failpoint.h"
#include "mkv/fanout.h"
#include "mkv/forward.h"
#include "mkv/ha.h"
#include "mkv/hash.h"
#include "mkv/health.h"
#include "mkv/index.h"
#include "mkv/keylock.h"
#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/policy.h"
#include "mkv/repair.h"
#include "mkv/text.h"

/* ---- helpers ---- */

api_t *mkv__api_of(mkv_req_t *req) {
  if (req->data == NULL) {
    api_t *a = mkv_calloc(1, sizeof(*a));
    a->req = req;
    mkv_buf_init(&a->recbuf);
    mkv_buf_init(&a->placement);
    mkv_buf_init(&a->targets);
    mkv_buf_init(&a->written);
    mkv_buf_init(&a->missed);
    mkv_buf_init(&a->order);
    mkv_buf_init(&a->path);
    mkv_buf_init(&a->old_volumes);
    mkv_index_write_init(&a->w_mark);
    mkv_index_write_init(&a->w_final);
    mkv_upreq_init(&a->probe);
    a->w_mark.data = a;
    a->w_final.data = a;
    req->data = a;
  }
  return req->data;
}

void mkv_api_free(mkv_req_t *req) {
  api_t *a = req->data;
  if (a == NULL) return;
  mkv__listing_free(a->listing);
  if (a->locked) { /* every path releases it first; this is the last line of defence */
    mkv_error("bug: key lock still held when its request was freed");
    mkv_keylock_release(req->key.data, req->key.len);
  }
  if (a->fo) mkv_fanout_free(a->fo);
  for (int i = 0; i < a->ndels; i++) mkv_upreq_free(&a->dels[i]);
  free(a->dels);
  mkv_upreq_free(&a->probe);
  mkv_buf_free(&a->recbuf);
  mkv_buf_free(&a->placement);
  mkv_buf_free(&a->targets);
  mkv_buf_free(&a->written);
  mkv_buf_free(&a->missed);
  mkv_buf_free(&a->order);
  mkv_buf_free(&a->path);
  mkv_buf_free(&a->old_volumes);
  mkv_index_write_free(&a->w_mark);
  mkv_index_write_free(&a->w_final);
  free(a);
  req->data = NULL;
}

/* A write's first check: 0, answered 503, when the index took a write error (it stays
 * read-only until a restart). */
static int index_writable(mkv_req_t *req) {
  if (!mkv_index_failure(req->worker->index)) return 1;
  mkv__api_respond_text(req, 503, "index is read-only after a write error; restart mkv");
  return 0;
}

/* What a client hears when an index write failed (all 503s). Whether the write took
 * effect is not known to it: a record committed here may still be replicated, or live
 * again after a restart. */
static const char *index_error(int status) {
  switch (status) {
  case MKV_ENOTPRIMARY:
    return "this index node is not (or no longer sure to be) the primary: the write is not "
           "acknowledged; retry, and read the key to see whether it took effect";
  case MKV_ENOSYNC:
    return "no standby index confirmed the write (ha.sync is strict): retry once a standby "
           "is in sync";
  default:
    return "index write failed; the index is read-only until mkv restarts";
  }
}

/* Status for a failure talking to volumes or the index: 503 when retrying later may
 * work (a volume unreachable or too slow, the index read-only), 500 otherwise. */
static int status_for(int err) {
  switch (err) {
  case MKV_EINDEX:
  case MKV_ENOTPRIMARY:
  case MKV_ENOSYNC:
  case UV_ECONNREFUSED:
  case UV_ETIMEDOUT:
  case UV_ECONNRESET:
  case UV_EHOSTUNREACH:
  case UV_ENETUNREACH:
  case UV_EPIPE:
  case UV_ECONNABORTED:
  case UV_EAI_NONAME:
  case UV_EAI_AGAIN:
    return 503;
  default:
    return 500;
  }
}

void mkv__api_respond_text(mkv_req_t *req, int status, const char *text) {
  if (!req->responded) mkv_req_respond_text(req, status, text);
}

void mkv__api_respond_empty(mkv_req_t *req, int status) {
  if (!req->responded) mkv_req_respond(req, status, NULL, 0, NULL, 0);
}

/* Is host:port `h` in the list s (comma-separated items "host:port[/dir]", blanks
 * allowed)? The X-Mkv-Avoid-Volume header and the bounce's mkv_miss lists. */
int mkv__api_in_host_list(const char *s, size_t n, const char *h, size_t hl) {
  size_t i = 0;
  while (i < n) {
    while (i < n && (s[i] == ' ' || s[i] == ',')) i++;
    size_t j = i; /* the item: up to ',' ; its host part: up to '/' or ' ' */
    while (j < n && s[j] != ',' && s[j] != '/' && s[j] != ' ') j++;
    if (j - i == hl && memcmp(s + i, h, hl) == 0) return 1;
    while (j < n && s[j] != ',') j++;
    i = j;
  }
  return 0;
}


void mkv__api_policy_failed(mkv_req_t *req) {
  mkv_ctr_add(&req->worker->metrics->policy_errors, 1);
  MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "%s " KEYFMT ": %s", req->method_name, KEYARG(req),
                      mkv_policy_error(req->worker->policy));
  mkv__api_respond_text(req, 500, "policy error (see the server log)");
}

static void unlock(api_t *a) {
  if (!a->locked) return;
  a->locked = 0;
  mkv_keylock_release(a->req->key.data, a->req->key.len);
}

/* Reads the key's record into a->rec. 0, UV_ENOENT, or an error already answered. */
int mkv__api_load_record(api_t *a) {
  mkv_req_t *req = a->req;
  int rc = mkv_index_get(req->worker->index, req->key.data, req->key.len, &a->recbuf);
  if (rc == UV_ENOENT) return rc;
  if (rc == 0) rc = mkv_record_decode(a->recbuf.data, a->recbuf.len, &a->rec);
  if (rc != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "%s " KEYFMT ": cannot read its record: %s",
                        req->method_name, KEYARG(req), mkv_strerror(rc));
    mkv__api_respond_text(req, 500, rc == MKV_ECORRUPT ? "corrupt index record" : "index read failed");
    return -1;
  }
  return 0;
}

/* The key's file path, checked against what nginx can store. 0, or answered. */
static int key_path(api_t *a) {
  mkv_req_t *req = a->req;
  if (mkv_policy_path(req->worker->policy, req->key.data, req->key.len, &a->path) != 0) {
    mkv__api_policy_failed(req);
    return -1;
  }
  int rc = mkv_path_check(a->path.data, a->path.len);
  if (rc == MKV_EKEYLONG) {
    mkv__api_respond_text(req, 414, "key too long: its file name on a volume would exceed 255 bytes");
    return -1;
  }
  if (rc != 0) {
    mkv__api_respond_text(req, 400, "key cannot be stored: its file path on a volume would have an "
                           "empty component (base64 ending in '/' or holding '//')");
    return -1;
  }
  return 0;
}

/* The API is done with the request: the lock goes now, the reference once no index
 * write of this request is still queued (the writes live inside the request). */
static void maybe_release(api_t *a) {
  if (a->finishing && a->index_pending == 0 && !a->released) {
    a->released = 1;
    mkv_req_unref(a->req);
  }
}

static void api_done(api_t *a) {
  unlock(a);
  a->finishing = 1;
  maybe_release(a);
}

/* ---- deleting files (DELETE, and the cleanup of a failed PUT) ---- */

static void on_del_done(mkv_upreq_t *r, int err) {
  api_t *a = r->data;
  /* 404 counts as deleted: a failed PUT may have left nothing (the Go original's PR #28). */
  if (err != 0 || (r->status != 204 && r->status != 404 && r->status != 200)) {
    a->dels_failed++;
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "DELETE http://%s%s failed: %s", r->host.data,
                        r->path.data, err ? mkv_strerror(err) : "unexpected status");
  }
  if (--a->dels_pending == 0) a->dels_done(a);
}

/* Sends DELETE for the key's file to each volume of `vols` (record form), in parallel;
 * calls done when all have answered (a->dels_failed counts the failures). */
static void delete_files(api_t *a, const char *vols, size_t vlen, double timeout_ms,
                         void (*done)(api_t *a)) {
  mkv_req_t *req = a->req;
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  int n = mkv_volumes_count(vols, vlen);
  for (int i = 0; i < a->ndels; i++) mkv_upreq_free(&a->dels[i]);
  free(a->dels);
  a->dels = mkv_calloc((size_t)MKV_MAX(n, 1), sizeof(mkv_upreq_t));
  a->ndels = n;
  a->dels_pending = 1; /* held until every request is started */
  a->dels_failed = 0;
  a->dels_done = done;
  mkv_volumes_iter(&it, vols, vlen);
  for (int i = 0; mkv_volumes_next(&it, &item, &ilen); i++) {
    mkv_upreq_t *r = &a->dels[i];
    mkv_upreq_init(r);
    if (ilen == 0) continue; /* an empty volume in a Go record: nothing there */
    size_t hlen = mkv_volume_host_len(item, ilen);
    mkv_buf_set(&r->host, item, hlen);
    mkv_buf_set(&r->path, item + hlen, ilen - hlen);
    mkv_buf_add(&r->path, a->path.data, a->path.len);
    r->method = MKV_UP_DELETE;
    r->timeout_ms = timeout_ms;
    r->done = on_del_done;
    r->data = a;
    a->dels_pending++;
    int rc = mkv_upstream_start(req->worker->up, r);
    if (rc != 0) {
      a->dels_pending--;
      a->dels_failed++;
      MKV_LOG_RATELIMITED(MKV_LOG_WARN, "DELETE http://%s%s: %s", r->host.data, r->path.data,
                          mkv_strerror(rc));
    }
  }
  if (--a->dels_pending == 0) done(a);
}

/* ---- PUT ---- */

static void on_cleanup_record_removed(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  a->index_pending--;
  api_done(a);
}

static void on_cleanup_files_deleted(api_t *a) {
  mkv_req_t *req = a->req;
  MKV_FAILPOINT("put/fail_after_files");
  if (a->replacing) { /* the record is the old value's, live: it stays */
    api_done(a);
    return;
  }
  if (a->dels_failed) {
    /* Leave the soft-deleted record: it names the copies that may remain, for gc. */
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": %d %s could not be removed after "
                        "the failed write; its record stays soft-deleted for mkv gc",
                        KEYARG(req), a->dels_failed,
                        MKV_PLURAL(a->dels_failed, "replica", "replicas"));
    api_done(a);
    return;
  }
  a->index_pending++;
  mkv_index_del(req->worker->port, &a->w_final, req->key.data, req->key.len, 0,
                on_cleanup_record_removed);
}

/* The write failed: answer (if the client is still there), delete what was written,
 * then the record. The lock is held until that is done, so no new PUT races the
 * cleanup's DELETEs. */
static void put_fail(api_t *a, int status, const char *why) {
  mkv_req_t *req = a->req;
  if (!a->client_gone) {
    if (!req->responded) mkv__api_respond_text(req, status, why);
  }
  /* Only replicas whose upload reached a connection can hold a copy; a volume that was
   * down got nothing, and a DELETE to it would only fail and keep the record. */
  mkv_buf_reset(&a->written);
  if (a->fo) mkv_fanout_touched(a->fo, &a->written);
  delete_files(a, a->written.data, a->written.len, req->worker->cfg->limits.volume_timeout_ms,
               on_cleanup_files_deleted);
}

/* ---- REPLACE (comma.ai's fork, geohot/minikeyvalue#49) ----
 *
 * A live key's new value never goes over its old copies: each new copy is written in
 * the other slot of its volume entry (record.h, MKV_ALT_SLOT) -- a path no old copy
 * has -- while the old record stays live; one synced record write then switches every
 * reader to the new copies, complete. A failure before that deletes the new copies and
 * leaves the old value live and intact; a crash leaves the old record (the new copies
 * orphans, for gc) or the new one. The old copies are deleted only after
 * REPLACE_GRACE_MS, so a reader redirected to one a moment before the switch still
 * reads it whole; the key's lock is held until then (a write of the key meanwhile is
 * 409), so nothing is written over them while they may be read. */
#define REPLACE_GRACE_MS 2000

/* The targets' entries moved to their other slot where the old record has a copy in
 * that very entry. */
static void other_slots(api_t *a) {
  mkv_buf_t out;
  mkv_buf_init(&out);
  mkv_volumes_iter_t it;
  const char *t;
  size_t tl;
  mkv_volumes_iter(&it, a->targets.data, a->targets.len);
  while (mkv_volumes_next(&it, &t, &tl)) {
    if (out.len) mkv_buf_addc(&out, ',');
    mkv_buf_add(&out, t, tl);
    if (mkv_volumes_contains(a->old_volumes.data, a->old_volumes.len, t, tl))
      mkv_buf_adds(&out, MKV_ALT_SLOT);
  }
  mkv_buf_free(&a->targets);
  a->targets = out;
}

static void on_old_dropped(api_t *a) {
  MKV_FAILPOINT("replace/after_drop");
  if (a->dels_failed)
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "REPLACE " KEYFMT ": %d old %s could not be deleted "
                        "(no record names them: mkv gc removes them)", KEYARG(a->req),
                        a->dels_failed, MKV_PLURAL(a->dels_failed, "copy", "copies"));
  api_done(a);
}

static void on_grace_closed(uv_handle_t *h) {
  api_t *a = h->data;
  MKV_FAILPOINT("replace/before_drop");
  /* The old copies the new record does not name (all of them: their paths differ). */
  mkv_buf_t drop;
  mkv_buf_init(&drop);
  mkv_volumes_iter_t it;
  const char *v;
  size_t vl;
  mkv_volumes_iter(&it, a->old_volumes.data, a->old_volumes.len);
  while (mkv_volumes_next(&it, &v, &vl)) {
    if (mkv_volumes_contains(a->written.data, a->written.len, v, vl)) continue;
    if (drop.len) mkv_buf_addc(&drop, ',');
    mkv_buf_add(&drop, v, vl);
  }
  mkv_buf_set(&a->old_volumes, drop.data ? drop.data : "", drop.len);
  mkv_buf_free(&drop);
  a->dels_failed = 0;
  delete_files(a, a->old_volumes.data, a->old_volumes.len,
               a->req->worker->cfg->limits.volume_timeout_ms, on_old_dropped);
}

static void on_grace(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, on_grace_closed);
}

/* The new record is live and on disk: the answer, then the old copies after the grace. */
static void replace_switched(api_t *a) {
  mkv_req_t *req = a->req;
  MKV_FAILPOINT("replace/after_record");
  mkv__api_respond_empty(req, 201);
  MKV_FAILPOINT("replace/after_reply");
  uv_timer_init(&req->worker->loop, &a->grace_timer);
  a->grace_timer.data = a;
  uv_timer_start(&a->grace_timer, on_grace, REPLACE_GRACE_MS, 0);
}

/* The live record is written (or failed) and the leftovers of failed replicas are
 * deleted: now the answer. */
static void put_complete(api_t *a) {
  mkv_req_t *req = a->req;
  if (!a->final_done || a->leftovers_pending) return;
  if (a->final_status != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "PUT " KEYFMT ": %s", KEYARG(req),
                        a->final_status == MKV_EINDEX ? mkv_index_failure(req->worker->index)
                                                      : mkv_strerror(a->final_status));
    /* Not put_fail: the live record may have reached LevelDB's log before its sync
     * failed, and then it is live again after a restart (or it was committed and goes on
     * to the standby); its copies must stay (orphans at worst, for mkv gc): deleting
     * them left a live key with no bytes. */
    unlock(a);
    if (!a->client_gone) mkv__api_respond_text(req, 503, index_error(a->final_status));
    api_done(a);
    return;
  }
  if (a->replacing) {
    replace_switched(a);
    return;
  }
  /* The record is live and on disk: only now does the client hear 201. The lock goes
   * first: a client may send its next request on the key the moment it reads the
   * answer, and another worker would take it while this one still held the lock (409). */
  MKV_FAILPOINT("put/after_live");
  unlock(a);
  mkv__api_respond_empty(req, 201);
  MKV_FAILPOINT("put/after_reply");
  api_done(a);
}

static void on_final_written(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  a->index_pending--;
  a->final_done = 1;
  a->final_status = status;
  put_complete(a);
}

static void on_leftovers_deleted(api_t *a) {
  a->leftovers_pending = 0;
  if (a->dels_failed)
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": %d failed %s an orphan copy "
                        "(no record names it: mkv gc removes it)", KEYARG(a->req), a->dels_failed,
                        MKV_PLURAL(a->dels_failed, "replica may keep", "replicas may keep"));
  put_complete(a);
}

/* A PUT that reached its quorum with some replicas failed: their leftovers (a file an
 * upload may have stored before it failed) go now, under the key lock, while the live
 * record is written; the record names only the copies that exist. A volume marked down
 * is skipped (a DELETE there would only wait out its timeout): what it may hold is
 * an orphan copy no record names, which mkv gc removes. */
static void delete_leftovers(api_t *a) {
  mkv_buf_t left, up;
  mkv_buf_init(&left);
  mkv_buf_init(&up);
  mkv_fanout_leftovers(a->fo, &left);
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  mkv_volumes_iter(&it, left.data, left.len);
  while (mkv_volumes_next(&it, &item, &ilen)) {
    if (!mkv_health_readable(item, mkv_volume_host_len(item, ilen))) continue;
    if (up.len) mkv_buf_addc(&up, ',');
    mkv_buf_add(&up, item, ilen);
  }
  if (up.len) {
    a->leftovers_pending = 1;
    delete_files(a, up.data, up.len, a->req->worker->cfg->voltimeout_ms, on_leftovers_deleted);
  }
  mkv_buf_free(&left);
  mkv_buf_free(&up);
}

static void on_fanout_done(mkv_fanout_t *fo, int err) {
  api_t *a = mkv_fanout_data(fo);
  mkv_req_t *req = a->req;
  const mkv_config_t *cfg = req->worker->cfg;
  a->fo_done = 1;
  if (a->mark_err) {
    put_fail(a, 503, index_error(a->mark_err));
    return;
  }
  if (err == UV_ECANCELED && a->client_gone) {
    put_fail(a, 500, "client went away");
    return;
  }
  if (err != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": replica write failed: %s", KEYARG(req),
                        mkv_fanout_failure(fo));
    mkv_buf_t b;
    mkv_buf_init(&b);
    mkv_buf_addf(&b, "replica write failed: %s", mkv_fanout_failure(fo));
    put_fail(a, err == MKV_ESTATUS ? 500 : status_for(err), b.data);
    mkv_buf_free(&b);
    return;
  }
  unsigned char md[MKV_MD5_LEN];
  char hex[MKV_MD5_HEX_LEN + 1];
  int have_md5 = cfg->md5sum || a->has_client_md5;
  if (have_md5) {
    mkv_fanout_md5(fo, md);
    mkv_hex(md, MKV_MD5_LEN, hex);
  }
  if (a->has_client_md5 && memcmp(md, a->client_md5, MKV_MD5_LEN) != 0) {
    put_fail(a, 400, "Content-MD5 does not match the body");
    return;
  }
  /* The record names the copies that exist: every target, or those of a quorum. */
  int written = mkv_fanout_written(fo, &a->written);
  if (written < mkv_volumes_count(a->targets.data, a->targets.len))
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": %d of %d %s written (the write quorum "
                        "is %d): %s", KEYARG(req), written,
                        mkv_volumes_count(a->targets.data, a->targets.len),
                        MKV_PLURAL(mkv_volumes_count(a->targets.data, a->targets.len), "copy",
                                   "copies"), a->quorum, mkv_fanout_failure(fo));
  mkv_buf_t rec;
  mkv_buf_init(&rec);
  mkv_record_encode(&rec, MKV_REC_LIVE, cfg->md5sum ? hex : NULL, a->written.data, a->written.len);
  if (a->replacing)
    MKV_FAILPOINT("replace/before_record");
  else
    MKV_FAILPOINT("put/before_live");
  a->index_pending++;
  mkv_index_put(req->worker->port, &a->w_final, req->key.data, req->key.len, rec.data, rec.len,
                1, on_final_written);
  mkv_buf_free(&rec);
  delete_leftovers(a);
  /* Not where placement wants it (a handoff, a missing copy): the repair's. */
  if (!mkv_volumes_same_places(a->written.data, a->written.len, a->placement.data,
                               a->placement.len))
    mkv_repair_note(req->key.data, req->key.len);
}

static void on_fanout_flow(mkv_fanout_t *fo, int pause) {
  api_t *a = mkv_fanout_data(fo);
  if (pause)
    mkv_req_pause_body(a->req);
  else
    mkv_req_resume_body(a->req);
}

static void on_fanout_ready(mkv_fanout_t *fo) {
  api_t *a = mkv_fanout_data(fo);
  /* Every volume is connected: now the client may send the body. */
  mkv_req_continue(a->req);
}

static void on_mark_written(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  a->index_pending--;
  if (a->finishing) { /* the write failed and was cleaned up before this mark landed */
    maybe_release(a);
    return;
  }
  if (status != 0) {
    a->mark_err = status;
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "PUT " KEYFMT ": %s", KEYARG(a->req),
                        mkv_index_failure(a->req->worker->index));
    if (a->fo && !a->fo_done) mkv_fanout_abort(a->fo);
    return;
  }
  MKV_FAILPOINT("put/after_mark");
}

/* Where a PUT's copies go. Placement's volumes when each can take a copy now -- the
 * usual case, one atomic load per volume (health.h) -- else a handoff: placement asked
 * again among the volumes that can (up, and neither read_only nor draining), so the
 * next volumes in the policy's own order take the copies the refused ones would have
 * had. Fewer volumes than the write quorum: 503, before anything is written.
 * 0 with a->targets and a->quorum set, or answered. */
static int choose_targets(api_t *a) {
  mkv_req_t *req = a->req;
  mkv_worker_t *w = req->worker;
  const mkv_config_t *cfg = w->cfg;
  a->quorum = mkv_write_quorum(cfg, a->nrep);
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  int all = 1;
  mkv_volumes_iter(&it, a->placement.data, a->placement.len);
  while (all && mkv_volumes_next(&it, &item, &ilen))
    all = mkv_health_writable(item, mkv_volume_host_len(item, ilen));
  if (all) {
    mkv_buf_set(&a->targets, a->placement.data, a->placement.len);
    return 0;
  }
  char **can;
  int ncan = mkv_health_writable_volumes(cfg, NULL, 0, &can), got = 0, rc = 0;
  if (ncan >= a->quorum &&
      (rc = mkv_policy_place_among(w->policy, req->key.data, req->key.len, can, ncan, a->nrep,
                                   &a->targets, &got)) != 0) {
    mkv__api_policy_failed(req);
  } else if (ncan < a->quorum || got < a->quorum) {
    char why[200];
    int n = ncan < a->quorum ? ncan : got;
    snprintf(why, sizeof(why), "only %d %s take a copy now (the others are down, full, "
             "read-only or draining); this PUT needs %d (write_quorum)", n,
             MKV_PLURAL(n, "volume can", "volumes can"), a->quorum);
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": %s", KEYARG(req), why);
    mkv__api_respond_text(req, 503, why);
    rc = -1;
  }
  free(can);
  return rc != 0 ? -1 : 0;
}

/* The fan-out's replacement of a replica whose volume could not be connected to (it
 * got nothing): placement is asked again among the volumes that can take a copy, the
 * failed one aside, and the one volume of that answer that holds no copy of this PUT
 * yet takes the failed one's place -- so the policy's rules (zones, weights) hold for
 * the new set as for a handoff. None when the answer differs by more than that. */
static int replace_replica(mkv_fanout_t *fo, const char *failed, mkv_buf_t *vol) {
  api_t *a = mkv_fanout_data(fo);
  mkv_req_t *req = a->req;
  const mkv_config_t *cfg = req->worker->cfg;
  char **can;
  int ncan = mkv_health_writable_volumes(cfg, failed, mkv_volume_host_len(failed, strlen(failed)),
                                         &can);
  int got = 0, fresh = 0, rc = -1;
  mkv_buf_t answer, next;
  mkv_buf_init(&answer);
  mkv_buf_init(&next);
  if (ncan > 0 && mkv_policy_place_among(req->worker->policy, req->key.data, req->key.len, can,
                                         ncan, a->nrep, &answer, &got) == 0) {
    mkv_volumes_iter_t it;
    const char *item;
    size_t ilen;
    mkv_volumes_iter(&it, answer.data, answer.len);
    while (mkv_volumes_next(&it, &item, &ilen)) {
      if (mkv__api_in_host_list(a->targets.data, a->targets.len, item, mkv_volume_host_len(item, ilen)))
        continue;
      fresh++;
      mkv_buf_set(vol, item, ilen);
      /* REPLACE: never over an old copy (other_slots) */
      if (a->replacing && mkv_volumes_contains(a->old_volumes.data, a->old_volumes.len, item, ilen))
        mkv_buf_adds(vol, MKV_ALT_SLOT);
    }
  }
  if (fresh == 1) {
    /* The targets with the failed one replaced: what the PUT's record names. */
    mkv_volumes_iter_t it;
    const char *item;
    size_t ilen;
    mkv_volumes_iter(&it, a->targets.data, a->targets.len);
    while (mkv_volumes_next(&it, &item, &ilen)) {
      if (next.len) mkv_buf_addc(&next, ',');
      if (ilen == strlen(failed) && memcmp(item, failed, ilen) == 0)
        mkv_buf_add(&next, vol->data, vol->len);
      else
        mkv_buf_add(&next, item, ilen);
    }
    mkv_buf_set(&a->targets, next.data, next.len);
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "PUT " KEYFMT ": cannot reach %s; %.*s takes its copy",
                        KEYARG(req), failed, (int)vol->len, vol->data);
    rc = 0;
  }
  mkv_buf_free(&answer);
  mkv_buf_free(&next);
  free(can);
  return rc;
}

/* Content-MD5: base64 of the 16 bytes (RFC 1864); the 32 hex digits that mkv (and the Go
 * original) answer in Content-Md5 are accepted too. */
static int parse_content_md5(const mkv_buf_t *v, unsigned char out[MKV_MD5_LEN]) {
  size_t n = 0;
  unsigned char tmp[18];
  if (v->len == 24 && mkv_base64_decode(v->data, 24, tmp, &n) == 0 && n == MKV_MD5_LEN) {
    memcpy(out, tmp, MKV_MD5_LEN);
    return 0;
  }
  if (v->len == 32 && mkv_unhex(v->data, 32, out) == 0) return 0;
  return -1;
}

static void put_start(mkv_req_t *req) {
  api_t *a = mkv__api_of(req);
  mkv_worker_t *w = req->worker;
  const mkv_config_t *cfg = w->cfg;

  if (!req->has_body && !req->chunked) {
    mkv__api_respond_empty(req, 411);
    return;
  }
  if (req->has_content_md5) {
    if (parse_content_md5(&req->content_md5, a->client_md5) != 0) {
      mkv__api_respond_text(req, 400, "Content-MD5 must be the base64 of 16 bytes (RFC 1864)");
      return;
    }
    a->has_client_md5 = 1;
  }
  if (!index_writable(req)) return;
  /* Placement and path before the lock: a key that cannot be stored is refused before
   * anything at all happens. */
  if (mkv_policy_place(w->policy, req->key.data, req->key.len, &a->placement, &a->nrep) != 0) {
    mkv__api_policy_failed(req);
    return;
  }
  if (key_path(a) != 0 || choose_targets(a) != 0) return;
  if (mkv_keylock_try(req->key.data, req->key.len) != 0) {
    mkv__api_respond_empty(req, 409);
    return;
  }
  a->locked = 1;
  int rc = mkv__api_load_record(a);
  if (rc == -1) {
    unlock(a);
    return;
  }
  if (rc == 0 && !a->rec.deleted) {
    if (req->method != MKV_M_REPLACE) {
      unlock(a);
      mkv__api_respond_empty(req, 403);
      return;
    }
    /* REPLACE of a live key: its record stays as it is until the switch. */
    a->replacing = 1;
    mkv_buf_set(&a->old_volumes, a->rec.volumes, a->rec.volumes_len);
    other_slots(a);
  }

  mkv_req_ref(req); /* held until the write (or its cleanup) has finished */
  if (!a->replacing) {
    MKV_FAILPOINT("put/before_mark");
    /* 1. The record names the target volumes, as a write in progress, before any byte
     *    is written there: a crash from here on leaves a record that ?writing and gc
     *    can see. It need not be synced: losing it leaves only orphan files, never a
     *    live key. */
    mkv_buf_t mark;
    mkv_buf_init(&mark);
    mkv_record_encode(&mark, MKV_REC_WRITING, NULL, a->targets.data, a->targets.len);
    a->index_pending++;
    mkv_index_put(w->port, &a->w_mark, req->key.data, req->key.len, mark.data, mark.len, 0,
                  on_mark_written);
    mkv_buf_free(&mark);
  }

  /* 2. Stream the body to every replica at once. */
  mkv_fanout_opts_t o = {
      .volumes = a->targets.data,
      .volumes_len = a->targets.len,
      .quorum = a->quorum,
      .replace = replace_replica,
      .path = a->path.data,
      .path_len = a->path.len,
      .content_length = req->chunked ? -1 : req->content_length,
      .timeout_ms = cfg->limits.volume_timeout_ms,
      .high_water = cfg->limits.high_water,
      .low_water = cfg->limits.low_water,
      .md5 = cfg->md5sum || a->has_client_md5,
      .done = on_fanout_done,
      .flow = on_fanout_flow,
      .ready = req->expect_continue ? on_fanout_ready : NULL,
      .data = a,
  };
  rc = mkv_fanout_start(w->up, &o, &a->fo);
  if (rc != 0) {
    a->fo = NULL;
    a->fo_done = 1;
    put_fail(a, 500, "cannot start the replica writes");
  }
}

/* ---- DELETE and UNLINK ---- */

static void on_record_removed(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  a->index_pending--;
  unlock(a); /* before the answer, as for a PUT's 201 */
  if (status != 0)
    mkv__api_respond_text(a->req, 503, index_error(status));
  else {
    MKV_FAILPOINT("delete/after_remove");
    mkv__api_respond_empty(a->req, 204);
  }
  api_done(a);
}

static void on_files_deleted(api_t *a) {
  mkv_req_t *req = a->req;
  if (a->dels_failed) {
    /* The record stays soft-deleted: a later DELETE (or mkv gc) finishes the job. */
    unlock(a);
    mkv__api_respond_text(req, 500, "could not delete every replica; the key stays unlinked, retry the "
                           "DELETE later");
    api_done(a);
    return;
  }
  MKV_FAILPOINT("delete/after_files");
  a->index_pending++;
  mkv_index_del(req->worker->port, &a->w_final, req->key.data, req->key.len, 0,
                on_record_removed);
}

static void on_delete_marked(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  mkv_req_t *req = a->req;
  a->index_pending--;
  if (status != 0) {
    unlock(a);
    mkv__api_respond_text(req, 503, index_error(status));
    api_done(a);
    return;
  }
  if (req->method == MKV_M_UNLINK) {
    MKV_FAILPOINT("unlink/after_mark");
    unlock(a);
    mkv__api_respond_empty(req, 204); /* the mark is on disk; the files stay */
    MKV_FAILPOINT("unlink/after_reply");
    api_done(a);
    return;
  }
  MKV_FAILPOINT("delete/after_mark");
  /* The mark is on disk before any file goes. A key nginx could not hold has no file
   * to delete, and a DELETE of a path ending in '/' would remove a whole directory of
   * other keys' files: such paths are never sent. */
  if (mkv_policy_path(req->worker->policy, req->key.data, req->key.len, &a->path) != 0) {
    mkv__api_policy_failed(req);
    api_done(a);
    return;
  }
  if (mkv_path_check(a->path.data, a->path.len) != 0) {
    on_files_deleted(a);
    return;
  }
  delete_files(a, a->rec.volumes, a->rec.volumes_len, req->worker->cfg->limits.volume_timeout_ms,
               on_files_deleted);
}

/* How long a DELETE, UNLINK or RELINK waits for a key that an admin job holds (an
 * operator's rebalance or verify --repair, the background repair: a check is a few
 * HEADs, a move one value's copy) before it answers 409, as it does at once for a key a
 * client's write holds: the repair a RELINK or a PUT's handoff asked for must not fail
 * the client's next write. A PUT or REPLACE, whose body is arriving, does not wait. */
#define ADMIN_LOCK_WAIT_MS 5000
#define ADMIN_LOCK_POLL_MS 10

static void on_lock_wait_closed(uv_handle_t *h) {
  api_t *a = h->data;
  mkv_req_t *req = a->req;
  if (!a->client_gone && !req->responded) a->lock_again(req);
  mkv_req_unref(req);
}

static void on_lock_wait(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, on_lock_wait_closed);
}

/* Takes the key's lock for a write without a body: 1 when taken; 0 when answered (409)
 * or parked, to run again(req) a moment later. */
static int lock_key(api_t *a, void (*again)(mkv_req_t *req)) {
  mkv_req_t *req = a->req;
  mkv_lock_owner_t holder = MKV_LOCK_CLIENT;
  if (mkv_keylock_try_as(req->key.data, req->key.len, MKV_LOCK_CLIENT, &holder) == 0) {
    a->locked = 1;
    return 1;
  }
  uint64_t now = mkv_now_ms();
  if (a->lock_wait_until == 0) a->lock_wait_until = now + ADMIN_LOCK_WAIT_MS;
  if (holder == MKV_LOCK_ADMIN && now < a->lock_wait_until) {
    a->lock_again = again;
    mkv_req_ref(req); /* until on_lock_wait_closed */
    uv_timer_init(&req->worker->loop, &a->lock_timer);
    a->lock_timer.data = a;
    uv_timer_start(&a->lock_timer, on_lock_wait, ADMIN_LOCK_POLL_MS, 0);
    return 0;
  }
  mkv__api_respond_empty(req, 409);
  return 0;
}

/* The start of a write without a body (DELETE, UNLINK, RELINK): the index writable, the
 * key's lock (lock_key), its record. 1 to go on; 0 when answered (503, 409, 404, a read
 * error) or parked to run again(req) later. */
static int lock_and_load(api_t *a, void (*again)(mkv_req_t *req)) {
  mkv_req_t *req = a->req;
  if (!index_writable(req) || !lock_key(a, again)) return 0;
  int rc = mkv__api_load_record(a);
  if (rc != 0) {
    unlock(a);
    if (rc == UV_ENOENT) mkv__api_respond_empty(req, 404);
    return 0;
  }
  return 1;
}

static void delete_start(mkv_req_t *req) {
  api_t *a = mkv__api_of(req);
  mkv_worker_t *w = req->worker;
  if (!lock_and_load(a, delete_start)) return;
  if (req->method == MKV_M_UNLINK && a->rec.deleted) {
    unlock(a);
    mkv__api_respond_empty(req, 404);
    return;
  }
  if (req->method == MKV_M_DELETE && w->cfg->protect && !a->rec.deleted) {
    unlock(a);
    mkv__api_respond_text(req, 403, "protected: UNLINK the key before deleting it");
    return;
  }
  mkv_req_ref(req);
  MKV_FAILPOINT(req->method == MKV_M_UNLINK ? "unlink/before_mark" : "delete/before_mark");
  mkv_buf_t mark;
  mkv_buf_init(&mark);
  mkv_record_encode(&mark, MKV_REC_DELETED, a->rec.has_hash ? a->rec.hash : NULL, a->rec.volumes,
                    a->rec.volumes_len);
  a->index_pending++;
  mkv_index_put(w->port, &a->w_mark, req->key.data, req->key.len, mark.data, mark.len, 1,
                on_delete_marked);
  mkv_buf_free(&mark);
}

/* ---- RELINK (comma.ai's fork, geohot/minikeyvalue#46): an unlinked key live again ---- */

static void on_relinked(mkv_index_write_t *w, int status) {
  api_t *a = w->data;
  mkv_req_t *req = a->req;
  a->index_pending--;
  unlock(a); /* before the answer, as for a PUT's 201 */
  if (status != 0) {
    mkv__api_respond_text(req, 503, index_error(status));
  } else {
    /* Its copies were left alone by the UNLINK, but one may be gone since (a volume
     * replaced): the repair looks, and restores a missing one from the others. */
    mkv_repair_note(req->key.data, req->key.len);
    mkv__api_respond_empty(req, 204);
  }
  api_done(a);
}

/* 204 once the record is live again -- its volumes and MD5 as they were -- and on disk;
 * 404 for a key that is live, absent, or whose write never finished (it has no value to
 * bring back); 409 while another write holds the key. */
static void relink_start(mkv_req_t *req) {
  api_t *a = mkv__api_of(req);
  mkv_worker_t *w = req->worker;
  if (!lock_and_load(a, relink_start)) return;
  if (!a->rec.deleted || a->rec.writing || a->rec.volumes_len == 0) {
    unlock(a);
    mkv__api_respond_empty(req, 404);
    return;
  }
  mkv_req_ref(req);
  mkv_buf_t rec;
  mkv_buf_init(&rec);
  mkv_record_encode(&rec, MKV_REC_LIVE, a->rec.has_hash ? a->rec.hash : NULL, a->rec.volumes,
                    a->rec.volumes_len);
  a->index_pending++;
  mkv_index_put(w->port, &a->w_final, req->key.data, req->key.len, rec.data, rec.len, 1,
                on_relinked);
  mkv_buf_free(&rec);
}

/* ---- REBALANCE (the Go original's method): one key moved where placement wants it ---- */

/* The job outlives neither the worker nor its own run, but may outlive the request: the
 * answer comes with the job's first report; the job then drops the surplus copies after
 * their grace, and holds a reference on the request until it ends. */
typedef struct rebalance_s {
  mkv_req_t *req;
  int answered;
} rebalance_t;

static void rebalance_line(void *ctx, int kind, const char *text, size_t len) {
  rebalance_t *rb = ctx;
  if (kind == MKV_ADMIN_LOG)
    MKV_LOG_RATELIMITED(MKV_LOG_WARN, "REBALANCE: %.*s", (int)len, text);
  if (kind != MKV_ADMIN_REPORT || rb->answered) return;
  /* "status NNN" or "status NNN text" (lua/rebalance_key.lua) */
  if (len >= 10 && memcmp(text, "status ", 7) == 0) {
    rb->answered = 1;
    int status = atoi(text + 7);
    if (len > 11)
      mkv__api_respond_text(rb->req, status, text + 11);
    else
      mkv__api_respond_empty(rb->req, status);
  }
}

static void rebalance_done(void *arg, int code) {
  rebalance_t *rb = arg;
  if (!rb->answered) mkv__api_respond_text(rb->req, 500, "the rebalance job ended without an answer");
  (void)code;
  mkv_req_unref(rb->req);
  free(rb);
}

static void rebalance_start(mkv_req_t *req) {
  mkv_worker_t *w = req->worker;
  if (!index_writable(req)) return;
  /* The key as an argument survives any byte (a NUL too) as base64. */
  char *b64 = mkv_malloc(mkv_base64_len(req->key.len) + 1);
  mkv_base64(req->key.data, req->key.len, b64);
  const char *argv[1] = {b64};
  rebalance_t *rb = mkv_calloc(1, sizeof(*rb));
  rb->req = req;
  mkv_admin_opts_t o;
  memset(&o, 0, sizeof(o));
  o.script = "rebalance_key";
  o.argc = 1;
  o.argv = argv;
  o.concurrency = MKV_ADMIN_CONCURRENCY;
  o.sink.line = rebalance_line;
  o.sink.ctx = rb;
  mkv_admin_t *job;
  char *err = NULL;
  mkv_req_ref(req);
  if (mkv_admin_start(&w->loop, w->cfg, w->index, &o, rebalance_done, rb, &job, &err) != 0) {
    mkv__api_respond_text(req, 500, err ? err : "cannot start the rebalance");
    free(err);
    mkv_req_unref(req);
    free(rb);
  }
  free(b64);
}

/* ---- entry points ---- */

/* A standby passes writes to the primary, and reads too until it is in sync (ha.h). A
 * request another node passed on is never passed on again. 1 when handled here. */
static int ha_forward(mkv_req_t *req) {
  int write = req->method == MKV_M_PUT || req->method == MKV_M_DELETE ||
              req->method == MKV_M_UNLINK || req->method == MKV_M_RELINK ||
              req->method == MKV_M_REPLACE || req->method == MKV_M_REBALANCE;
  int read = req->method == MKV_M_GET || req->method == MKV_M_HEAD;
  if (!write && !(read && !mkv_ha_reads_local())) return 0;
  char to[256];
  if (req->forwarded || mkv_ha_primary_api(to, sizeof(to)) != 0) {
    mkv__api_respond_text(req, 503, req->forwarded
                               ? "this index node is not the primary either (the primary is "
                                 "changing): retry"
                               : "this index node is a standby and knows no primary yet: retry");
    return 1;
  }
  mkv_forward_start(req, to, req->worker->cfg->ha.name); /* it answers, whatever happens */
  return 1;
}

void mkv_api_headers(mkv_req_t *req) {
  if (req->worker->cfg->auth.nwrite && !mkv__auth_allow(req)) return;
  if (mkv_ha_role() == MKV_HA_STANDBY && ha_forward(req)) return;
  switch (req->method) {
  case MKV_M_GET:
  case MKV_M_HEAD: mkv__api_get_start(req); break;
  case MKV_M_PUT:
  case MKV_M_REPLACE: put_start(req); break;
  case MKV_M_DELETE:
  case MKV_M_UNLINK: delete_start(req); break;
  case MKV_M_RELINK: relink_start(req); break;
  case MKV_M_REBALANCE: rebalance_start(req); break;
  default: {
    /* POST (the S3 subset of the original is out of scope) and anything else. */
    mkv_header_t h = {"Allow", "GET, HEAD, PUT, DELETE, UNLINK, RELINK, REPLACE, REBALANCE", 0};
    mkv_req_respond(req, 405, &h, 1, NULL, 0);
    break;
  }
  }
}

void mkv_api_body(mkv_req_t *req, const char *at, size_t len) {
  api_t *a = req->data;
  if (a && a->fo && !a->fo_done) mkv_fanout_write(a->fo, at, len);
}

void mkv_api_body_flush(mkv_req_t *req) {
  api_t *a = req->data;
  if (a && a->fo && !a->fo_done) mkv_fanout_flush(a->fo);
}

void mkv_api_complete(mkv_req_t *req) {
  api_t *a = req->data;
  if (a == NULL) return;
  a->body_complete = 1;
  if (a->fo && !a->fo_done) mkv_fanout_end(a->fo);
}

void mkv_api_abort(mkv_req_t *req) {
  api_t *a = req->data;
  if (a == NULL || a->client_gone) return;
  if (a->listing) mkv__listing_abort(a->listing);
  a->client_gone = 1;
  /* A PUT whose body did not arrive whole is abandoned (and cleaned up); one that is
   * already being made live finishes -- the client just never hears the 201. */
  if (a->fo && !a->fo_done && !a->body_complete) mkv_fanout_abort(a->fo);
  if (a->probing) mkv_upreq_cancel(&a->probe);
}

const mkv_handler_t mkv_api_handler = {mkv_api_headers, mkv_api_body, mkv_api_body_flush,
                                       mkv_api_complete, mkv_api_abort, mkv_api_free, 1};
