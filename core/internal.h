/* internal.h: what core files share with each other but not with the world (libuv's
 * uv-common.h pattern). Nothing here is a public contract. */
#ifndef MKV_INTERNAL_H
#define MKV_INTERNAL_H

#include <stddef.h>

/* Lua sources compiled into the binary (CMake generates the table from lua/ and
 * policies/), so a bare `mkv` binary needs no files beside it. Names are the paths
 * relative to the repository: "lua/mkv_config.lua", "policies/default.lua". */
typedef struct mkv__embedded_s {
  const char *name;
  const char *src;
  size_t len;
} mkv__embedded_t;

extern const mkv__embedded_t mkv__embedded[];
extern const size_t mkv__nembedded;

const mkv__embedded_t *mkv__embedded_find(const char *name);

/* listing.c, for api.c: the answer of GET /prefix?list|unlinked, checked and parsed by
 * api.c. Lists the records of op ("list": live, "unlinked": soft-deleted) from `start`
 * (inclusive; borrowed) while their keys hold the request's key as a prefix, at most
 * `limit` keys, and answers 200 with the JSON. done(data, err) runs once, on a later
 * loop turn: err 0 when the answer is sent (or the client went away, or a failure after
 * streaming began ended the connection), else MKV_EPOLICY (the listing policy failed:
 * its message is in mkv_policy_error) or UV_EIO, with nothing sent: the caller answers.
 * The caller keeps the request referenced until done, and frees the listing after. */
struct mkv_req_s;
typedef struct mkv__listing_s mkv__listing_t;
mkv__listing_t *mkv__listing_start(struct mkv_req_s *req, const char *op, long long limit,
                                   const char *start, size_t start_len,
                                   void (*done)(void *data, int err), void *data);
/* The client went away: the listing stops at its next slice. */
void mkv__listing_abort(mkv__listing_t *l);
void mkv__listing_free(mkv__listing_t *l);

/* auth.c, for api.c: 1 when the request may go on (auth off, a read that needs no
 * secret, or the right Bearer secret); 0 when it has been answered 401. */
int mkv__auth_allow(struct mkv_req_s *req);

#endif
