/* etcd.h: what the standby index needs of etcd v3, through its JSON gateway (/v3/...):
 * leases, reads of one key, and transactions that compare and put. Blocking (httpc.h):
 * for the HA thread only. Keys and values are bytes (base64 on the wire, done here).
 *
 * Endpoints are tried in turn from the last one that answered; a call fails only when
 * none answered within the timeout each. An answer of etcd itself that says no (a lease
 * not found, a compare that failed) is not a failure of the call. */
#ifndef MKV_ETCD_H
#define MKV_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include "mkv/common.h"

typedef struct mkv_etcd_s mkv_etcd_t;

mkv_etcd_t *mkv_etcd_new(char *const *endpoints, int n, int timeout_ms);
void mkv_etcd_free(mkv_etcd_t *e);
/* The endpoint that answered last ("http://host:port"). */
const char *mkv_etcd_endpoint(const mkv_etcd_t *e);

/* A lease of ttl_s seconds: 0 with *id, or -1 with *err (owned). */
int mkv_etcd_grant(mkv_etcd_t *e, int ttl_s, int64_t *id, char **err);
/* Renews: 0 with *ttl_s its new TTL (0 when etcd no longer knows the lease), or -1. */
int mkv_etcd_keepalive(mkv_etcd_t *e, int64_t id, int *ttl_s, char **err);
/* Revokes (every key attached goes). 0 or -1. */
int mkv_etcd_revoke(mkv_etcd_t *e, int64_t id, char **err);

/* One key as etcd holds it. */
typedef struct mkv_etcd_kv_s {
  int exists;
  mkv_buf_t value;
  int64_t create_revision, mod_revision, lease;
} mkv_etcd_kv_t;
void mkv_etcd_kv_init(mkv_etcd_kv_t *kv);
void mkv_etcd_kv_free(mkv_etcd_kv_t *kv);

/* Reads key: 0 with kv filled (exists 0 when absent) and *revision the store's, or -1. */
int mkv_etcd_get(mkv_etcd_t *e, const char *key, mkv_etcd_kv_t *kv, int64_t *revision,
                 char **err);

/* A transaction: every compare holds -> every put (and delete) is done, atomically.
 * A compare: key's create_revision, mod_revision, or value equals the one given (a
 * create_revision of 0: the key is absent). */
typedef enum { MKV_ETCD_CREATE, MKV_ETCD_MOD, MKV_ETCD_VALUE } mkv_etcd_target_t;
typedef struct mkv_etcd_cmp_s {
  const char *key;
  mkv_etcd_target_t target;
  int64_t revision;               /* CREATE / MOD */
  const char *value; size_t vlen; /* VALUE */
} mkv_etcd_cmp_t;
typedef struct mkv_etcd_op_s {
  const char *key;
  const char *value; /* NULL: delete the key */
  size_t vlen;
  int64_t lease; /* 0: none */
} mkv_etcd_op_t;

/* 0 with *succeeded (the compares held and the ops are done) and *revision (the store's
 * revision after it), or -1 when no endpoint answered. */
int mkv_etcd_txn(mkv_etcd_t *e, const mkv_etcd_cmp_t *cmps, int ncmp, const mkv_etcd_op_t *ops,
                 int nops, int *succeeded, int64_t *revision, char **err);

#endif
