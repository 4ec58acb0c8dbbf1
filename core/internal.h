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

/* listing.c, for api.c: GET /prefix?list|unlinked[&start=K][&limit=N], and the client
 * going away during one. */
struct mkv_req_s;
void mkv__listing_start(struct mkv_req_s *req);
void mkv__listing_abort(struct mkv_req_s *req);
void mkv__listing_free(struct mkv_req_s *req);

/* auth.c, for api.c: 1 when the request may go on (auth off, a read that needs no
 * secret, or the right Bearer secret); 0 when it has been answered 401. */
int mkv__auth_allow(struct mkv_req_s *req);

#endif
