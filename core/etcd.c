/* etcd.c: etcd v3's JSON gateway (etcd.h), with libcjson. The gateway writes int64s as
 * JSON strings ("revision": "42") and bytes as base64; fields at their zero value are
 * left out ("succeeded" is absent when a compare failed). */
#include "mkv/etcd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "mkv/hash.h"
#include "mkv/httpc.h"

struct mkv_etcd_s {
  char **endpoints;
  int n, cur;
  int timeout_ms;
};

mkv_etcd_t *mkv_etcd_new(char *const *endpoints, int n, int timeout_ms) {
  mkv_etcd_t *e = mkv_calloc(1, sizeof(*e));
  e->endpoints = mkv_calloc((size_t)n, sizeof(char *));
  for (int i = 0; i < n; i++) e->endpoints[i] = mkv_strdup(endpoints[i]);
  e->n = n;
  e->timeout_ms = timeout_ms;
  return e;
}

void mkv_etcd_free(mkv_etcd_t *e) {
  if (e == NULL) return;
  for (int i = 0; i < e->n; i++) free(e->endpoints[i]);
  free(e->endpoints);
  free(e);
}

const char *mkv_etcd_endpoint(const mkv_etcd_t *e) {
  return e->endpoints[e->cur];
}

/* ---- JSON helpers ---- */

static void add_b64(cJSON *obj, const char *name, const char *p, size_t n) {
  char *s = mkv_malloc(mkv_base64_len(n) + 1);
  mkv_base64(p, n, s);
  cJSON_AddStringToObject(obj, name, s);
  free(s);
}

static void add_i64(cJSON *obj, const char *name, int64_t v) {
  char s[24];
  snprintf(s, sizeof(s), "%lld", (long long)v);
  cJSON_AddStringToObject(obj, name, s);
}

/* An int64 field, a string or a number; 0 when absent. */
static int64_t get_i64(const cJSON *obj, const char *name) {
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (cJSON_IsString(f)) return strtoll(f->valuestring, NULL, 10);
  if (cJSON_IsNumber(f)) return (int64_t)f->valuedouble;
  return 0;
}

static int get_b64(const cJSON *obj, const char *name, mkv_buf_t *out) {
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
  mkv_buf_reset(out);
  if (!cJSON_IsString(f)) return 0; /* absent: empty */
  size_t n = strlen(f->valuestring);
  mkv_buf_reserve(out, n);
  size_t got = 0;
  if (mkv_base64_decode(f->valuestring, n, (unsigned char *)out->data, &got) != 0) return -1;
  out->len = got;
  out->data[got] = '\0';
  return 0;
}

/* POSTs req (consumed) to path on the endpoints in turn; 0 with *resp (the parsed
 * answer of a 200) or -1 with *err. */
static int call(mkv_etcd_t *e, const char *path, cJSON *req, cJSON **resp, char **err) {
  char *body = cJSON_PrintUnformatted(req);
  cJSON_Delete(req);
  if (body == NULL) mkv_fatal("cJSON: out of memory");
  mkv_buf_t out;
  mkv_buf_init(&out);
  mkv_buf_t why;
  mkv_buf_init(&why);
  int rc = -1;
  for (int i = 0; i < e->n && rc != 0; i++) {
    int k = (e->cur + i) % e->n;
    int status = 0;
    char *cerr = NULL;
    if (mkv_httpc_request(e->endpoints[k], "POST", path, body, strlen(body), e->timeout_ms,
                          &status, &out, &cerr) != 0) {
      mkv_buf_addf(&why, "%s%s", why.len ? "; " : "", cerr);
      free(cerr);
      continue;
    }
    if (status != 200) {
      mkv_buf_addf(&why, "%s%s%s answered %d: %.200s", why.len ? "; " : "", e->endpoints[k], path,
                   status, out.data ? out.data : "");
      continue;
    }
    cJSON *j = cJSON_ParseWithLength(out.data ? out.data : "", out.len);
    if (j == NULL) {
      mkv_buf_addf(&why, "%s%s%s: not JSON", why.len ? "; " : "", e->endpoints[k], path);
      continue;
    }
    e->cur = k;
    *resp = j;
    rc = 0;
  }
  if (rc != 0) *err = mkv_sprintf("etcd: %s", why.len ? why.data : "no endpoint");
  free(body);
  mkv_buf_free(&out);
  mkv_buf_free(&why);
  return rc;
}

/* ---- leases ---- */

int mkv_etcd_grant(mkv_etcd_t *e, int ttl_s, int64_t *id, char **err) {
  cJSON *req = cJSON_CreateObject();
  cJSON_AddNumberToObject(req, "TTL", ttl_s);
  cJSON *resp;
  if (call(e, "/v3/lease/grant", req, &resp, err) != 0) return -1;
  *id = get_i64(resp, "ID");
  const cJSON *msg = cJSON_GetObjectItemCaseSensitive(resp, "error");
  int rc = 0;
  if (*id == 0) {
    *err = mkv_sprintf("etcd: lease grant refused: %s",
                       cJSON_IsString(msg) ? msg->valuestring : "no ID in the answer");
    rc = -1;
  }
  cJSON_Delete(resp);
  return rc;
}

int mkv_etcd_keepalive(mkv_etcd_t *e, int64_t id, int *ttl_s, char **err) {
  cJSON *req = cJSON_CreateObject();
  add_i64(req, "ID", id);
  cJSON *resp;
  if (call(e, "/v3/lease/keepalive", req, &resp, err) != 0) return -1;
  /* A stream endpoint: the gateway answers {"result": {...}} for the one message. */
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(resp, "result");
  *ttl_s = r ? (int)get_i64(r, "TTL") : 0;
  cJSON_Delete(resp);
  return 0;
}

int mkv_etcd_revoke(mkv_etcd_t *e, int64_t id, char **err) {
  cJSON *req = cJSON_CreateObject();
  add_i64(req, "ID", id);
  cJSON *resp;
  if (call(e, "/v3/lease/revoke", req, &resp, err) != 0) return -1;
  cJSON_Delete(resp);
  return 0;
}

/* ---- keys ---- */

void mkv_etcd_kv_init(mkv_etcd_kv_t *kv) {
  memset(kv, 0, sizeof(*kv));
  mkv_buf_init(&kv->value);
}

void mkv_etcd_kv_free(mkv_etcd_kv_t *kv) {
  mkv_buf_free(&kv->value);
}

int mkv_etcd_get(mkv_etcd_t *e, const char *key, mkv_etcd_kv_t *kv, int64_t *revision,
                 char **err) {
  cJSON *req = cJSON_CreateObject();
  add_b64(req, "key", key, strlen(key));
  cJSON *resp;
  if (call(e, "/v3/kv/range", req, &resp, err) != 0) return -1;
  *revision = get_i64(cJSON_GetObjectItemCaseSensitive(resp, "header"), "revision");
  const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(resp, "kvs");
  const cJSON *first = cJSON_IsArray(kvs) ? cJSON_GetArrayItem(kvs, 0) : NULL;
  kv->exists = first != NULL;
  int rc = 0;
  mkv_buf_reset(&kv->value);
  kv->create_revision = kv->mod_revision = kv->lease = 0;
  if (first) {
    kv->create_revision = get_i64(first, "create_revision");
    kv->mod_revision = get_i64(first, "mod_revision");
    kv->lease = get_i64(first, "lease");
    if (get_b64(first, "value", &kv->value) != 0) {
      *err = mkv_sprintf("etcd: the value of %s is not base64", key);
      rc = -1;
    }
  }
  cJSON_Delete(resp);
  return rc;
}

int mkv_etcd_txn(mkv_etcd_t *e, const mkv_etcd_cmp_t *cmps, int ncmp, const mkv_etcd_op_t *ops,
                 int nops, int *succeeded, int64_t *revision, char **err) {
  cJSON *req = cJSON_CreateObject();
  cJSON *carr = cJSON_AddArrayToObject(req, "compare");
  for (int i = 0; i < ncmp; i++) {
    cJSON *c = cJSON_CreateObject();
    add_b64(c, "key", cmps[i].key, strlen(cmps[i].key));
    cJSON_AddStringToObject(c, "result", "EQUAL");
    switch (cmps[i].target) {
    case MKV_ETCD_CREATE:
      cJSON_AddStringToObject(c, "target", "CREATE");
      add_i64(c, "create_revision", cmps[i].revision);
      break;
    case MKV_ETCD_MOD:
      cJSON_AddStringToObject(c, "target", "MOD");
      add_i64(c, "mod_revision", cmps[i].revision);
      break;
    case MKV_ETCD_VALUE:
      cJSON_AddStringToObject(c, "target", "VALUE");
      add_b64(c, "value", cmps[i].value, cmps[i].vlen);
      break;
    }
    cJSON_AddItemToArray(carr, c);
  }
  cJSON *sarr = cJSON_AddArrayToObject(req, "success");
  for (int i = 0; i < nops; i++) {
    cJSON *op = cJSON_CreateObject();
    cJSON *inner = cJSON_CreateObject();
    add_b64(inner, "key", ops[i].key, strlen(ops[i].key));
    if (ops[i].value) {
      add_b64(inner, "value", ops[i].value, ops[i].vlen);
      if (ops[i].lease) add_i64(inner, "lease", ops[i].lease);
      cJSON_AddItemToObject(op, "requestPut", inner);
    } else {
      cJSON_AddItemToObject(op, "requestDeleteRange", inner);
    }
    cJSON_AddItemToArray(sarr, op);
  }
  cJSON *resp;
  if (call(e, "/v3/kv/txn", req, &resp, err) != 0) return -1;
  *succeeded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(resp, "succeeded"));
  *revision = get_i64(cJSON_GetObjectItemCaseSensitive(resp, "header"), "revision");
  cJSON_Delete(resp);
  return 0;
}
