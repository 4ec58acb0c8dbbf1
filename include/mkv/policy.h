/* policy.h: one worker's policy state -- a LuaJIT state holding the policy modules the
 * config names, locked and called under a deadline.
 *
 * Each worker thread creates its own with mkv_policy_new() and is the only thread that
 * ever touches it. Calls are synchronous and never yield or do I/O. The state runs with
 * the JIT engine off, because LuaJIT calls count hooks only from interpreted code: one
 * count hook checks the per-call deadline and raises -- again on every later hook until
 * the call returns, so a pcall inside the policy cannot swallow it. A counting
 * allocator caps the state's memory. Globals are locked after loading (library-facts
 * §3.3). This guards against mistakes in trusted operator code; it is not a sandbox.
 *
 * What a policy returns is checked here: the placement has exactly n entries on n
 * distinct hosts, each one of the volumes the policy was given or one of them followed
 * by "/<subdir>"; a path starts with '/'. The volumes a placement is given are the
 * placement targets: every configured volume but the draining ones.
 * Any failure returns MKV_EPOLICY and leaves the message (with the policy's source:line)
 * in mkv_policy_error(). Never a silent fallback: data would land where reads do not
 * look. */
#ifndef MKV_POLICY_H
#define MKV_POLICY_H

#include <stddef.h>

#include "mkv/common.h"
#include "mkv/config.h"

typedef struct mkv_policy_s mkv_policy_t;

/* Loads the policy modules, locks the state and calls each policy on sample keys.
 * Returns 0, or -1 with *err (owned): one line naming the module and what went wrong. */
int mkv_policy_new(const mkv_config_t *cfg, mkv_policy_t **out, char **err);
void mkv_policy_free(mkv_policy_t *p);

/* Where the replicas of `key` go: the replica count comes from the replicas policy, the
 * volumes from the placement policy. `joined` gets them joined by ',' (the record's and
 * Key-Volumes' form); *n their count. */
int mkv_policy_place(mkv_policy_t *p, const char *key, size_t klen, mkv_buf_t *joined,
                     int *n);

/* Placement of `key` among `vols` only: the volumes that can take a new copy now (a
 * handoff, when a volume placement chose is down, full, read-only or draining). The
 * policy is called as for mkv_policy_place but with these volumes and n = the key's
 * replica count (at most nvols); unlike there, it may answer fewer than n volumes --
 * at least one -- when its rules cannot be kept with these (the zones policy with a
 * zone missing): the key then gets fewer copies, and the repair restores the others
 * once their volumes are back. *got is the count. */
int mkv_policy_place_among(mkv_policy_t *p, const char *key, size_t klen, char *const *vols,
                           int nvols, int n, mkv_buf_t *joined, int *got);

/* The file path of `key` on a volume ("/ab/cd/<base64>"). */
int mkv_policy_path(mkv_policy_t *p, const char *key, size_t klen, mkv_buf_t *path);

/* How many keys a listing page may hold. op is "list" or "unlinked"; requested is the
 * client's limit, 0 when none. */
int mkv_policy_list_limit(mkv_policy_t *p, const char *op, long long requested,
                          long long *limit);

/* Whether the listing policy filters records at all (show() defined); when it does,
 * mkv_policy_list_show() says whether one key is shown. */
int mkv_policy_has_list_filter(mkv_policy_t *p);
int mkv_policy_list_show(mkv_policy_t *p, const char *op, const char *key, size_t klen,
                         int *show);

/* The rebalance policy's plan for one record: which copies to make (`copy`) and which to
 * drop (`drop`), both in record form, given the volumes holding a good copy (`have`)
 * and where placement wants it (`want`). Checked: copies go only to `want` volumes that
 * lack one, drops come only from `have`, no entry twice, and never every good copy
 * without a new one. */
int mkv_policy_rebalance(mkv_policy_t *p, const char *key, size_t klen, const char *have,
                         size_t hlen, const char *want, size_t wlen, mkv_buf_t *copy,
                         mkv_buf_t *drop);

/* Whether the read policy has order() (the default has none: mkv's own order, random
 * with volumes that are down last). When it does, mkv_policy_read_order() asks it which
 * of a record's volumes a GET sends the client to first: order(key, volumes, client)
 * with client = { zone = <X-Mkv-Client-Zone, if any> }. Checked: the answer holds each
 * of the record's volumes exactly once (record form in out). */
int mkv_policy_has_read_order(mkv_policy_t *p);
int mkv_policy_read_order(mkv_policy_t *p, const char *key, size_t klen, const char *vols,
                          size_t vlen, const char *zone, size_t zlen, mkv_buf_t *out);

/* The message of the last MKV_EPOLICY (borrowed: valid until the next call). */
const char *mkv_policy_error(mkv_policy_t *p);

/* The (module name, source) a policy kind was loaded from, for log lines. */
const char *mkv_policy_name(mkv_policy_t *p, int kind);

#endif
