/* auth.h: write protection -- the Bearer secret check of the API, the key header mkv
 * sends to volumes, and signed, expiring redirect URLs (README "Write protection").
 *
 * All of it is opt-in: a config without `auth` leaves every field zero and nothing here
 * runs on the request path. The config holds only SHA-256 digests of the write secrets,
 * computed once at load (main thread); the functions below are pure and may run on any
 * thread. The request-level guard, which answers 401, is mkv__auth_allow() in
 * internal.h (api.c calls it before it does anything else with a request). */
#ifndef MKV_AUTH_H
#define MKV_AUTH_H

#include <stddef.h>

#include "mkv/common.h"

#define MKV_AUTH_MAX_SECRETS 2 /* the new one and the old one, during a rotation */
#define MKV_AUTH_DIGEST_LEN 32 /* SHA-256 */
/* The header mkv adds to every request to a volume; the volumes' nginx config lets
 * PUT and DELETE (and, with signed redirects, unsigned reads) through only with it. */
#define MKV_AUTH_VOLUME_HEADER "X-Mkv-Volume-Key"

typedef struct mkv_auth_config_s {
  /* SHA-256 of each accepted write secret; nwrite = 0: the API is open. */
  unsigned char write_digest[MKV_AUTH_MAX_SECRETS][MKV_AUTH_DIGEST_LEN];
  int nwrite;
  int read; /* GET/HEAD and listings need the secret too */
  int list; /* only listings (?list, ?unlinked) need it */
  /* "X-Mkv-Volume-Key: <key>\r\n", ready to append to a request head; NULL = none. */
  char *volume_header;
  char *redirect_secret; /* "" or NULL = redirects are not signed */
  long long redirect_ttl_s;
} mkv_auth_config_t;

/* SHA-256 of p (a secret, or the token a client presented). */
void mkv_auth_digest(const void *p, size_t n, unsigned char out[MKV_AUTH_DIGEST_LEN]);

/* Does an Authorization header value ("Bearer <token>", the scheme in any case) carry
 * one of the write secrets? 1 or 0. The token is compared by its digest with
 * CRYPTO_memcmp against every secret, so neither the time taken nor which secret
 * matched depends on the token's bytes or length. value may be NULL (no header). */
int mkv_auth_bearer_ok(const mkv_auth_config_t *a, const char *value, size_t len);

/* Answers 401 with a Bearer challenge for realm (and error="invalid_token" when the
 * request presented a token) and body, a line of text. */
struct mkv_req_s;
void mkv_auth_refuse(struct mkv_req_s *req, const char *realm, const char *body);

/* nginx secure_link's value for uri: base64url, unpadded, of
 * md5("<expires><uri> <secret>") -- exactly the shipped volume config's
 * `secure_link_md5 "$secure_link_expires$uri <secret>"`. Writes 22 chars and a NUL. */
void mkv_auth_link_md5(const char *secret, long long expires, const char *uri, size_t ulen,
                       char out[23]);

/* Signs the redirect in `loc`: the volume's URI is loc[uri_at..] (it must not hold a
 * query yet); appends "?md5=<..>&expires=<now + redirect_ttl>". */
void mkv_auth_sign_location(const mkv_auth_config_t *a, mkv_buf_t *loc, size_t uri_at,
                            long long now);

static inline int mkv_auth_signing(const mkv_auth_config_t *a) {
  return a->redirect_secret != NULL && a->redirect_secret[0] != '\0';
}

#endif
