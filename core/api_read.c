/* api_read.c: GET and HEAD -- the redirect to a replica (read_check "head": a HEAD to
 * each in turn; "none": the first on a volume that is up, with no request on the path),
 * a miss a volume bounced back, 410 when every copy is gone, the read policy's order --
 * and the listings (GET /prefix?list|unlinked, walked by listing.c). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_int.h"
#include "mkv/auth.h"
#include "mkv/ha.h"
#include "mkv/hash.h"
#include "mkv/health.h"
#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/policy.h"
#include "mkv/repair.h"
#include "mkv/text.h"
#include "mkv/worker.h"

/* ---- listings: GET /prefix?list|unlinked[&start=K][&limit=N] ---- */

static void on_listing_done(void *data, int err) {
  api_t *a = data;
  if (err == MKV_EPOLICY) {
    mkv__api_policy_failed(a->req);
  } else if (err != 0) {
    mkv__api_respond_text(a->req, 500, "index read failed");
  }
  mkv_req_unref(a->req);
}

static void listing_start(api_t *a) {
  mkv_req_t *req = a->req;
  mkv_worker_t *w = req->worker;
  const char *q = req->raw_query.data;
  size_t qlen = req->raw_query.len;
  const char *amp = memchr(q, '&', qlen);
  size_t oplen = amp ? (size_t)(amp - q) : qlen;
  const char *op;
  if (oplen == 4 && memcmp(q, "list", 4) == 0)
    op = "list";
  else if (oplen == 8 && memcmp(q, "unlinked", 8) == 0)
    op = "unlinked";
  else if (oplen == 7 && memcmp(q, "writing", 7) == 0)
    op = "writing";
  else {
    /* As the original: any GET with a query is a listing, and an unknown one is 403. */
    mkv__api_respond_empty(req, 403);
    return;
  }
  mkv_buf_t v;
  mkv_buf_init(&v);
  long long requested = 0, limit;
  int rc = mkv_query_get(q, qlen, "limit", &v);
  if (rc < 0 || (rc == 1 && v.len > 0 && mkv_parse_int(v.data, v.len, &requested) != 0)) {
    mkv__api_respond_empty(req, 400);
  } else if (mkv_policy_list_limit(w->policy, op, requested > 0 ? requested : 0, &limit) != 0) {
    mkv__api_policy_failed(req);
  } else if ((rc = mkv_query_get(q, qlen, "start", &v)) < 0) {
    mkv__api_respond_empty(req, 400);
  } else {
    /* The lower bound is the prefix, or `start` when it is above it. Unlike the
     * original, a start below the prefix does not list keys outside the prefix. */
    const char *from = req->key.data;
    size_t from_len = req->key.len;
    if (rc == 1 && v.len > 0) {
      size_t m = MKV_MIN(v.len, req->key.len);
      int cmp = memcmp(v.data, req->key.data, m);
      if (cmp > 0 || (cmp == 0 && v.len > req->key.len)) from = v.data, from_len = v.len;
    }
    mkv_req_ref(req); /* until on_listing_done */
    a->listing = mkv__listing_start(req, op, limit, from, from_len, on_listing_done, a);
  }
  mkv_buf_free(&v);
}

/* ---- GET and HEAD ---- */

static void get_respond(api_t *a, int status, const char *location, size_t loclen) {
  mkv_req_t *req = a->req;
  mkv_header_t h[4];
  int n = 0;
  if (a->rec.has_hash) h[n++] = (mkv_header_t){"Content-Md5", a->rec.hash, 32};
  if (a->placement.data) { /* live key */
    h[n++] = (mkv_header_t){"Key-Balance", a->balanced ? "balanced" : "unbalanced", 0};
    h[n++] = (mkv_header_t){"Key-Volumes", a->rec.volumes_len ? a->rec.volumes : "",
                            a->rec.volumes_len};
  }
  if (location) h[n++] = (mkv_header_t){"Location", location, loclen};
  mkv_req_respond(req, status, h, n, NULL, 0);
}

/* 302 to replica `item` ("host:port[/svXX]") of the key: Location is the volume's URL
 * (or the public_url form), signed when redirects are. After a bounce the volumes that
 * missed ride along in the query (?mkv_miss=...), so that a volume missing too bounces
 * back with all of them and the chain stays bounded. */
static void redirect_to(api_t *a, const char *item, size_t ilen) {
  mkv_req_t *req = a->req;
  const mkv_config_t *cfg = req->worker->cfg;
  mkv_buf_t *loc = &req->worker->scratch;
  mkv_buf_reset(loc);
  if (cfg->public_url[0]) {
    mkv_buf_adds(loc, cfg->public_url);
    mkv_buf_addc(loc, '/');
  } else {
    mkv_buf_adds(loc, "http://");
  }
  size_t vol_at = loc->len;
  mkv_buf_add(loc, item, ilen);
  mkv_buf_add(loc, a->path.data, a->path.len);
  if (mkv_auth_signing(&cfg->auth))
    mkv_auth_sign_location(&cfg->auth, loc, vol_at, (long long)time(NULL));
  if (a->missed.len) {
    mkv_buf_addc(loc, memchr(loc->data + vol_at, '?', loc->len - vol_at) ? '&' : '?');
    mkv_buf_adds(loc, "mkv_miss=");
    mkv_buf_add(loc, a->missed.data, a->missed.len);
  }
  get_respond(a, 302, loc->data, loc->len);
}

/* No replica to send the client to: 410 when every one was asked and has no copy (the
 * value is lost: comma.ai's fork answers so), else 404 (none answered in time). */
static void get_not_found(api_t *a) {
  int gone = a->nprobes + a->nmissed_probes > 0 && a->probe_missing == a->nprobes;
  if (gone) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "GET " KEYFMT ": no volume holds a copy of this live key "
                        "(410): restore it from a backup, or DELETE it", KEYARG(a->req));
  }
  get_respond(a, gone ? 410 : 404, NULL, 0);
}

static void probe_next(api_t *a);

static void on_probe_done(mkv_upreq_t *r, int err) {
  api_t *a = r->data;
  mkv_req_t *req = a->req;
  a->probing = 0;
  if (a->client_gone) {
    mkv_req_unref(req);
    return;
  }
  if (err == 0 && r->status == 200) {
    redirect_to(a, a->probe_items[a->next_probe - 1], a->probe_lens[a->next_probe - 1]);
    mkv_req_unref(req);
    return;
  }
  /* A live key without one of its copies: the repair's, noted once per request (a
   * bounced read noted it already). */
  if (err == 0 && r->status == 404 && a->probe_missing++ == 0 && a->missed.len == 0)
    mkv_repair_note(req->key.data, req->key.len);
  probe_next(a);
}

/* HEAD each replica in turn, each within voltimeout; the first 200 wins. */
static void probe_next(api_t *a) {
  mkv_req_t *req = a->req;
  while (a->next_probe < a->nprobes) {
    const char *item = a->probe_items[a->next_probe];
    size_t ilen = a->probe_lens[a->next_probe];
    a->next_probe++;
    mkv_upreq_t *r = &a->probe;
    size_t hlen = mkv_volume_host_len(item, ilen);
    mkv_buf_set(&r->host, item, hlen);
    mkv_buf_set(&r->path, item + hlen, ilen - hlen);
    mkv_buf_add(&r->path, a->path.data, a->path.len);
    r->method = MKV_UP_HEAD;
    r->timeout_ms = req->worker->cfg->voltimeout_ms;
    r->done = on_probe_done;
    r->data = a;
    if (mkv_upstream_start(req->worker->up, r) == 0) {
      a->probing = 1;
      return;
    }
  }
  /* No replica answered: 410 or 404, still with the record's headers (as the original). */
  get_not_found(a);
  mkv_req_unref(req);
}

static int volume_ok_for_url(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '@' || c == '\\') return 0;
  }
  return 1;
}

/* ---- a miss bounced back by a volume (read_check = "none") ---- */

/* The volume config mkv ships answers a GET or HEAD of a file it does not have with
 *   302 http://<mkv>/<the volume path>?mkv_miss=<the volume>[&<the query it got>]
 * The volume path is the replica's directory then the key's path (path() of the
 * placement policy: /ab/cd/<base64> by default); the key is the base64 after the first
 * /xx/yy/ (two hex levels) whose decoding has exactly that path. 0 with the key in
 * *key and the volumes that missed (every mkv_miss value, comma-joined) in a->missed;
 * -1 when the request is not such a bounce (nothing answered); 1 when it is one whose
 * key cannot be told (answered 404). */
static int parse_bounce(api_t *a, mkv_buf_t *key) {
  mkv_req_t *req = a->req;
  const char *q = req->raw_query.data;
  size_t qlen = req->raw_query.len, pos = 0, nlen, vlen;
  const char *name, *val;
  int found = 0;
  mkv_buf_t v;
  mkv_buf_init(&v);
  while (mkv_query_next(q, qlen, &pos, &name, &nlen, &val, &vlen)) {
    if (nlen != 8 || memcmp(name, "mkv_miss", 8) != 0) continue;
    found = 1;
    mkv_buf_reset(&v);
    if (mkv_query_unescape(val, vlen, &v) != 0 || v.len == 0) continue;
    if (a->missed.len) mkv_buf_addc(&a->missed, ',');
    mkv_buf_add(&a->missed, v.data, v.len);
  }
  mkv_buf_free(&v);
  if (!found) return -1;
  const char *p = req->key.data;
  size_t n = req->key.len;
  for (size_t i = 0; i + 7 < n; i++) {
    if (p[i] != '/' || p[i + 3] != '/' || p[i + 6] != '/' || !isxdigit((unsigned char)p[i + 1]) ||
        !isxdigit((unsigned char)p[i + 2]) || !isxdigit((unsigned char)p[i + 4]) ||
        !isxdigit((unsigned char)p[i + 5]))
      continue;
    const char *b64 = p + i + 7;
    size_t blen = n - i - 7, klen = 0;
    char *k = mkv_malloc(blen + 1);
    int ok = mkv_base64_decode(b64, blen, (unsigned char *)k, &klen) == 0;
    if (ok) {
      mkv_buf_t path;
      mkv_buf_init(&path);
      ok = mkv_policy_path(req->worker->policy, k, klen, &path) == 0 && path.len == n - i &&
           memcmp(path.data, p + i, path.len) == 0;
      mkv_buf_free(&path);
    }
    if (ok) mkv_buf_set(key, k, klen);
    free(k);
    if (ok) return 0;
  }
  return 1;
}

/* ---- GET and HEAD ---- */

/* The order in which the key's replicas are tried: the read policy's order() when it
 * has one, else random (spreads reads over replicas, as the original's rand.Perm);
 * then those on volumes marked down (health.h), that failed recently on this worker,
 * or that the client asks to avoid (X-Mkv-Avoid-Volume: a proxy whose fetch from a
 * volume failed asks again) last, so a dead volume costs a read nothing while another
 * replica is up. Volumes that already missed this read (a bounce) are left out. Returns
 * how many are in front (believed able to serve), or -1 when the policy failed. */
static int order_replicas(api_t *a) {
  mkv_req_t *req = a->req;
  mkv_worker_t *w = req->worker;
  const char *vols = a->rec.volumes;
  size_t vlen = a->rec.volumes_len;
  if (mkv_policy_has_read_order(w->policy)) {
    if (mkv_policy_read_order(w->policy, req->key.data, req->key.len, vols, vlen,
                              req->zone.len ? req->zone.data : NULL, req->zone.len,
                              &a->order) != 0)
      return -1;
    vols = a->order.data;
    vlen = a->order.len;
  }
  mkv_volumes_iter_t vit;
  const char *item;
  size_t ilen;
  a->nprobes = 0;
  mkv_volumes_iter(&vit, vols, vlen);
  while (mkv_volumes_next(&vit, &item, &ilen) && a->nprobes < MAX_PROBES) {
    if (!volume_ok_for_url(item, ilen)) continue;
    size_t hl = mkv_volume_host_len(item, ilen);
    if (a->missed.len && mkv__api_in_host_list(a->missed.data, a->missed.len, item, hl)) {
      a->nmissed_probes++;
      continue;
    }
    a->probe_items[a->nprobes] = item;
    a->probe_lens[a->nprobes] = ilen;
    a->nprobes++;
  }
  if (!mkv_policy_has_read_order(w->policy)) {
    for (int i = a->nprobes - 1; i > 0; i--) {
      int j = (int)(mkv_worker_rand(w) % (uint32_t)(i + 1));
      const char *ti = a->probe_items[i];
      size_t tl = a->probe_lens[i];
      a->probe_items[i] = a->probe_items[j], a->probe_lens[i] = a->probe_lens[j];
      a->probe_items[j] = ti, a->probe_lens[j] = tl;
    }
  }
  const char *good[MAX_PROBES], *bad[MAX_PROBES];
  size_t goodl[MAX_PROBES], badl[MAX_PROBES];
  int ng = 0, nb = 0;
  for (int i = 0; i < a->nprobes; i++) {
    const char *it = a->probe_items[i];
    size_t hl = mkv_volume_host_len(it, a->probe_lens[i]);
    if (mkv_upstream_suspect(w->up, it, hl) ||
        (req->avoid.len && mkv__api_in_host_list(req->avoid.data, req->avoid.len, it, hl)) ||
        !mkv_health_readable(it, hl))
      bad[nb] = it, badl[nb++] = a->probe_lens[i];
    else
      good[ng] = it, goodl[ng++] = a->probe_lens[i];
  }
  for (int i = 0; i < ng; i++) a->probe_items[i] = good[i], a->probe_lens[i] = goodl[i];
  for (int i = 0; i < nb; i++) a->probe_items[ng + i] = bad[i], a->probe_lens[ng + i] = badl[i];
  return ng;
}

void mkv__api_get_start(mkv_req_t *req) {
  api_t *a = mkv__api_of(req);
  mkv_worker_t *w = req->worker;
  const mkv_config_t *cfg = w->cfg;
  int bounced = 0;
  if (req->raw_query.len > 0) {
    mkv_buf_t key;
    mkv_buf_init(&key);
    int rc = parse_bounce(a, &key);
    if (rc == 0) { /* the rest of the request is about the key the volume missed */
      mkv_buf_free(&req->key);
      req->key = key;
      bounced = 1;
    } else {
      mkv_buf_free(&key);
      if (rc == 1) {
        mkv__api_respond_empty(req, 404);
        return;
      }
      if (req->method == MKV_M_GET) {
        listing_start(a);
        return;
      }
    }
  }
  int rc = mkv__api_load_record(a);
  if (rc == -1) return;
  if (rc == UV_ENOENT || a->rec.deleted) {
    if (rc == UV_ENOENT) memset(&a->rec, 0, sizeof(a->rec));
    if (cfg->fallback[0] && !bounced) {
      /* Unlike the original, the key is escaped: it may hold bytes a Location cannot. */
      mkv_buf_t loc;
      mkv_buf_init(&loc);
      mkv_buf_addf(&loc, "http://%s", cfg->fallback);
      mkv_pct_encode_path(&loc, req->key.data, req->key.len);
      get_respond(a, 302, loc.data, loc.len);
      mkv_buf_free(&loc);
    } else {
      get_respond(a, 404, NULL, 0);
    }
    return;
  }
  /* Key-Balance: does the record match what placement says now (order included)? */
  int n;
  if (mkv_policy_place(w->policy, req->key.data, req->key.len, &a->placement, &n) != 0) {
    mkv__api_policy_failed(req);
    return;
  }
  a->balanced = mkv_volumes_same_places(a->placement.data, a->placement.len, a->rec.volumes,
                                        a->rec.volumes_len);
  if (mkv_policy_path(w->policy, req->key.data, req->key.len, &a->path) != 0) {
    mkv__api_policy_failed(req);
    return;
  }
  int up = order_replicas(a);
  if (up < 0) {
    mkv__api_policy_failed(req);
    return;
  }
  if (bounced) {
    /* A copy is missing behind mkv's back: the repair restores it. The others are asked
     * (as read_check "head" does), so the client is sent only where the value is. */
    mkv_repair_note(req->key.data, req->key.len);
  } else if (cfg->read_check == MKV_READ_CHECK_NONE && up > 0) {
    /* No request to any volume: the first replica on a volume that is up. */
    redirect_to(a, a->probe_items[0], a->probe_lens[0]);
    return;
  }
  mkv_req_ref(req);
  probe_next(a);
}
