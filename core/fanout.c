/* fanout.c: N replica uploads fed from one client body. */
#include "mkv/fanout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/failpoint.h"
#include "mkv/record.h"
#include "mkv/log.h"

/* Bytes are gathered into chunks of MKV_CHUNK_POOLED: one (pooled) allocation and one
 * write per replica for up to a read buffer's worth of body, however the client sliced
 * it. */

struct mkv_fanout_s {
  void *data;
  mkv_upstream_t *up;
  int n, nready, ndone, ended, started_done, freed;
  int quorum, nfailed, ready_sent;
  char *failed;    /* per replica: its upload failed (or never started) */
  int err;         /* the fan-out failed: fewer than `quorum` replicas can succeed */
  int first_err;   /* the first replica's failure */
  int64_t bytes;
  size_t inflight, high, low;
  int paused;
  int chunks_live; /* chunks not yet released: each keeps the fanout alive */
  mkv_md5_stream_t *md5;
  unsigned char digest[MKV_MD5_LEN];
  int digest_done;
  mkv_fanout_done_cb done;
  mkv_fanout_flow_cb flow;
  mkv_fanout_ready_cb ready;
  mkv_buf_t failure;
  char **vols;       /* per replica: its volume ("host:port[/dir]"), owned */
  mkv_buf_t path;    /* the key's path on a volume */
  double timeout_ms;
  int hold_head;
  /* Replacement of a replica that could not connect (opts.replace): until every
   * replica is connected, the body sent so far is kept (one more reference on each
   * chunk, at most high_water bytes) so a replacement can be sent all of it. */
  mkv_fanout_replace_cb replace;
  mkv_chunk_t **replay;
  int nreplay, replay_cap, replaying, replacements;
  size_t replay_bytes;
  mkv_chunk_t *cur;  /* being filled, not yet sent */
  size_t cur_cap;    /* its capacity */
  int64_t content_length; /* -1: chunked */
  int64_t flushed;   /* bytes handed to the replicas */
  mkv_upreq_t *reqs;
};

static void maybe_free(mkv_fanout_t *fo) {
  if (!fo->freed || fo->chunks_live > 0) return;
  free(fo->cur);
  for (int i = 0; i < fo->n; i++) {
    mkv_upreq_free(&fo->reqs[i]);
    free(fo->vols[i]);
  }
  free(fo->vols);
  free(fo->reqs);
  mkv_md5_stream_free(fo->md5);
  mkv_buf_free(&fo->failure);
  mkv_buf_free(&fo->path);
  free(fo->failed);
  free(fo->replay);
  free(fo);
}

/* The body is no longer kept for a replacement: every replica is connected, the body
 * sent so far outgrew high_water, or the fan-out is over. */
static void replay_drop(mkv_fanout_t *fo) {
  fo->replaying = 0;
  mkv_chunk_t **list = fo->replay;
  int n = fo->nreplay;
  fo->replay = NULL;
  fo->nreplay = fo->replay_cap = 0;
  fo->replay_bytes = 0;
  for (int i = 0; i < n; i++) mkv_chunk_unref(list[i]); /* may free the fanout: last */
  free(list);
}

static void chunk_released(mkv_chunk_t *ch) {
  mkv_fanout_t *fo = ch->data;
  fo->inflight -= ch->len;
  fo->chunks_live--;
  if (fo->paused && fo->inflight <= fo->low && !fo->freed && !fo->started_done) {
    fo->paused = 0;
    if (fo->flow) fo->flow(fo, 0);
  }
  maybe_free(fo);
}

/* Stops the uploads that can still be stopped. One whose whole body is already handed
 * to its connection is left to answer: its volume may store the file however mkv closes
 * the connection, and the failed PUT's cleanup DELETE must come after that file lands,
 * not race it (a DELETE that arrived first found nothing, and the copy stayed). */
static void cancel_all(mkv_fanout_t *fo) {
  for (int i = 0; i < fo->n; i++)
    if (!mkv_upreq_body_sent(&fo->reqs[i])) mkv_upreq_cancel(&fo->reqs[i]);
}

static void maybe_ready(mkv_fanout_t *fo) {
  if (fo->ready_sent || fo->err || fo->nready + fo->nfailed < fo->n || fo->nready < fo->quorum)
    return;
  fo->ready_sent = 1;
  if (fo->ready) fo->ready(fo);
}

/* Replica i failed (err, or the volume's status). The first failure is the one the
 * log names. Below the quorum the fan-out has failed: the others stop now rather than
 * finish uploads that will be deleted; above it they go on. */
static void replica_failed(mkv_fanout_t *fo, int i, int err, int status) {
  mkv_upreq_t *req = &fo->reqs[i];
  fo->failed[i] = 1;
  fo->nfailed++;
  if (fo->failure.len == 0) {
    mkv_buf_addf(&fo->failure, "http://%.*s%.*s: ", (int)req->host.len, req->host.data,
                 (int)req->path.len, req->path.data);
    if (err)
      mkv_buf_addf(&fo->failure, "%s", mkv_strerror(err));
    else
      mkv_buf_addf(&fo->failure, "volume answered %d", status);
    fo->first_err = err ? err : MKV_ESTATUS;
  }
  if (fo->err == 0 && fo->n - fo->nfailed < fo->quorum) {
    fo->err = fo->first_err;
    cancel_all(fo);
  }
}

static void on_replica_done(mkv_upreq_t *req, int err);
static void on_replica_ready(mkv_upreq_t *req);

/* Sets up replica i's request for volume vol (its host, its directory + the key's path). */
static void replica_init(mkv_fanout_t *fo, int i, const char *vol, size_t vlen) {
  mkv_upreq_t *r = &fo->reqs[i];
  mkv_upreq_free(r);
  mkv_upreq_init(r);
  free(fo->vols[i]);
  fo->vols[i] = mkv_memdup(vol, vlen);
  r->data = fo;
  r->method = MKV_UP_PUT;
  /* "host:port/sv01" -> host "host:port", path "/sv01" + key path */
  size_t hlen = mkv_volume_host_len(vol, vlen);
  mkv_buf_set(&r->host, vol, hlen);
  mkv_buf_set(&r->path, vol + hlen, vlen - hlen);
  mkv_buf_add(&r->path, fo->path.data, fo->path.len);
  r->content_length = fo->content_length;
  r->timeout_ms = fo->timeout_ms;
  r->done = on_replica_done;
  r->ready = on_replica_ready;
  r->hold_head = fo->hold_head;
}

/* Replica i could not connect, so its volume has nothing of the body: while the body so
 * far is still kept, the owner may name another volume to take its place; the new
 * upload gets every byte from the start. 1 when replaced. */
static int try_replace(mkv_fanout_t *fo, int i) {
  mkv_upreq_t *req = &fo->reqs[i];
  if (!fo->replaying || req->touched || fo->err || fo->replacements >= fo->n) return 0;
  mkv_buf_t vol;
  mkv_buf_init(&vol);
  int ok = fo->replace(fo, fo->vols[i], &vol) == 0 && vol.len > 0;
  if (ok) {
    fo->replacements++;
    replica_init(fo, i, vol.data, vol.len);
    ok = mkv_upstream_start(fo->up, &fo->reqs[i]) == 0;
  }
  mkv_buf_free(&vol);
  if (!ok) return 0;
  for (int k = 0; k < fo->nreplay; k++) {
    fo->replay[k]->refs++; /* the new write's reference */
    mkv_upreq_write(&fo->reqs[i], fo->replay[k]);
  }
  if (fo->ended) mkv_upreq_end(&fo->reqs[i]);
  return 1;
}

static void on_replica_done(mkv_upreq_t *req, int err) {
  mkv_fanout_t *fo = req->data;
  int i = (int)(req - fo->reqs);
  int ok = err == 0 && (req->status == 201 || req->status == 204);
  if (!ok && err != UV_ECANCELED && try_replace(fo, i)) return;
  if (!ok) {
    replica_failed(fo, i, err, req->status);
    maybe_ready(fo);
  }
  if (ok) MKV_FAILPOINT("put/after_replica");
  if (++fo->ndone < fo->n) return;
  fo->started_done = 1;
  if (fo->replaying) replay_drop(fo);
  fo->done(fo, fo->err);
}

static void on_replica_ready(mkv_upreq_t *req) {
  mkv_fanout_t *fo = req->data;
  fo->nready++;
  if (fo->replaying && fo->nready == fo->n) replay_drop(fo); /* all connected */
  maybe_ready(fo);
}

int mkv_fanout_start(mkv_upstream_t *up, const mkv_fanout_opts_t *o, mkv_fanout_t **out) {
  int n = mkv_volumes_count(o->volumes, o->volumes_len);
  if (n == 0) return UV_EINVAL;
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;

  mkv_fanout_t *fo = mkv_calloc(1, sizeof(*fo));
  fo->data = o->data;
  fo->up = up;
  fo->n = n;
  fo->high = o->high_water;
  fo->low = o->low_water;
  fo->done = o->done;
  fo->flow = o->flow;
  fo->ready = o->ready;
  fo->content_length = o->content_length;
  if (o->md5) fo->md5 = mkv_md5_stream_new();
  mkv_buf_init(&fo->failure);
  mkv_buf_init(&fo->path);
  mkv_buf_set(&fo->path, o->path, o->path_len);
  fo->timeout_ms = o->timeout_ms;
  fo->hold_head = o->ready == NULL;
  fo->replace = o->replace;
  fo->replaying = o->replace != NULL;
  fo->reqs = mkv_calloc((size_t)n, sizeof(mkv_upreq_t));
  fo->vols = mkv_calloc((size_t)n, sizeof(char *));
  fo->failed = mkv_calloc((size_t)n, 1);
  fo->quorum = o->quorum < 1 || o->quorum > n ? n : o->quorum;
  mkv_volumes_iter(&it, o->volumes, o->volumes_len);
  for (int i = 0; mkv_volumes_next(&it, &item, &ilen); i++) {
    mkv_upreq_init(&fo->reqs[i]);
    replica_init(fo, i, item, ilen);
  }
  int started = 0, first_rc = 0;
  for (int i = 0; i < n; i++) {
    int rc = mkv_upstream_start(up, &fo->reqs[i]);
    if (rc == 0) {
      started++;
      continue;
    }
    /* Never started: it failed, and it is done (no callback will come). */
    if (first_rc == 0) first_rc = rc;
    fo->ndone++;
    replica_failed(fo, i, rc, 0);
  }
  if (started == 0) {
    fo->freed = 1;
    maybe_free(fo);
    return first_rc;
  }
  *out = fo;
  return 0;
}

void mkv_fanout_flush(mkv_fanout_t *fo) {
  mkv_chunk_t *ch = fo->cur;
  if (ch == NULL || ch->len == 0) return;
  fo->cur = NULL;
  if (fo->err) {
    mkv_chunk_free(ch);
    return;
  }
  fo->inflight += ch->len;
  fo->flushed += (int64_t)ch->len;
  fo->chunks_live++;
  if (fo->replaying) {
    if (fo->replay_bytes + ch->len > fo->high) {
      replay_drop(fo); /* too much to keep: a replica that fails now is not replaced */
    } else {
      if (fo->nreplay == fo->replay_cap) {
        fo->replay_cap = fo->replay_cap ? 2 * fo->replay_cap : 16;
        fo->replay = mkv_realloc(fo->replay, sizeof(*fo->replay) * (size_t)fo->replay_cap);
      }
      ch->refs++; /* the replay list's */
      fo->replay[fo->nreplay++] = ch;
      fo->replay_bytes += ch->len;
    }
  }
  /* Each write takes one of the n references, also when it fails. */
  for (int i = 0; i < fo->n; i++) mkv_upreq_write(&fo->reqs[i], ch);
  if (!fo->paused && fo->inflight > fo->high && !fo->started_done) {
    fo->paused = 1;
    if (fo->flow) fo->flow(fo, 1);
  }
}

void mkv_fanout_write(mkv_fanout_t *fo, const char *at, size_t len) {
  if (len == 0 || fo->err) return;
  if (fo->md5) mkv_md5_stream_update(fo->md5, at, len);
  fo->bytes += (int64_t)len;
  while (len > 0) {
    if (fo->cur == NULL) {
      /* A body of known length smaller than a chunk gets a chunk of its size: a 1 KB
       * PUT does not take (and page in) 64 KiB. */
      size_t cap = MKV_CHUNK_POOLED;
      if (fo->content_length >= 0 && fo->content_length - fo->flushed < (int64_t)cap)
        cap = fo->content_length - fo->flushed > 0 ? (size_t)(fo->content_length - fo->flushed)
                                                   : len;
      fo->cur = mkv_chunk_alloc(cap, fo->n, chunk_released, fo);
      fo->cur_cap = cap;
    }
    mkv_chunk_t *ch = fo->cur;
    size_t n = MKV_MIN(len, fo->cur_cap - ch->len);
    memcpy(ch->bytes + ch->len, at, n);
    ch->len += n;
    at += n;
    len -= n;
    if (ch->len == fo->cur_cap) mkv_fanout_flush(fo);
  }
}

void mkv_fanout_end(mkv_fanout_t *fo) {
  if (fo->ended) return;
  mkv_fanout_flush(fo);
  fo->ended = 1;
  if (fo->md5 && !fo->digest_done) {
    mkv_md5_stream_final(fo->md5, fo->digest);
    fo->digest_done = 1;
  }
  for (int i = 0; i < fo->n; i++) mkv_upreq_end(&fo->reqs[i]);
}

void mkv_fanout_abort(mkv_fanout_t *fo) {
  if (fo->replaying) replay_drop(fo);
  if (fo->err == 0) {
    fo->err = UV_ECANCELED;
    mkv_buf_set(&fo->failure, "cancelled", 9);
  }
  cancel_all(fo);
}

void mkv_fanout_free(mkv_fanout_t *fo) {
  fo->freed = 1;
  maybe_free(fo);
}

void *mkv_fanout_data(mkv_fanout_t *fo) {
  return fo->data;
}

int64_t mkv_fanout_bytes(mkv_fanout_t *fo) {
  return fo->bytes;
}

size_t mkv_fanout_inflight(mkv_fanout_t *fo) {
  return fo->inflight;
}

void mkv_fanout_md5(mkv_fanout_t *fo, unsigned char out[MKV_MD5_LEN]) {
  memcpy(out, fo->digest, MKV_MD5_LEN);
}

/* The targets (record form) picked by `which`: 0 every touched one, 1 the written
 * ones, 2 the failed ones that were touched. */
static void pick(mkv_fanout_t *fo, mkv_buf_t *volumes, int which) {
  mkv_buf_reset(volumes);
  for (int i = 0; i < fo->n; i++) {
    int take = which == 1 ? !fo->failed[i] : fo->reqs[i].touched && (which == 0 || fo->failed[i]);
    if (!take) continue;
    if (volumes->len) mkv_buf_addc(volumes, ',');
    mkv_buf_adds(volumes, fo->vols[i]);
  }
}

void mkv_fanout_touched(mkv_fanout_t *fo, mkv_buf_t *volumes) {
  pick(fo, volumes, 0);
}

int mkv_fanout_written(mkv_fanout_t *fo, mkv_buf_t *volumes) {
  pick(fo, volumes, 1);
  return fo->n - fo->nfailed;
}

void mkv_fanout_leftovers(mkv_fanout_t *fo, mkv_buf_t *volumes) {
  pick(fo, volumes, 2);
}

const char *mkv_fanout_failure(mkv_fanout_t *fo) {
  return fo->failure.data ? fo->failure.data : "";
}
