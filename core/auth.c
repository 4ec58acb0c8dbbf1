/* auth.c: the Bearer check, volume-key plumbing and redirect signatures (auth.h).
 *
 * Why digests: CRYPTO_memcmp is constant-time only over equal lengths. Comparing the
 * SHA-256 of the presented token with the SHA-256 of each secret makes every comparison
 * 32 bytes, so a client learns nothing from timing -- not even the secret's length. Every
 * configured secret is compared, also after a match. */
#include "mkv/auth.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "internal.h"
#include "mkv/hash.h"
#include "mkv/server.h"

static EVP_MD *sha256_algo;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void fetch_sha256(void) {
  sha256_algo = EVP_MD_fetch(NULL, "SHA2-256", NULL);
}

void mkv_auth_digest(const void *p, size_t n, unsigned char out[MKV_AUTH_DIGEST_LEN]) {
  pthread_once(&sha256_once, fetch_sha256);
  unsigned int len = 0;
  if (sha256_algo == NULL || !EVP_Digest(p, n, out, &len, sha256_algo, NULL) ||
      len != MKV_AUTH_DIGEST_LEN)
    mkv_fatal("SHA-256 failed");
}

int mkv_auth_bearer_ok(const mkv_auth_config_t *a, const char *value, size_t len) {
  if (value == NULL || len < 7 || strncasecmp(value, "Bearer ", 7) != 0) return 0;
  const char *tok = value + 7, *end = value + len;
  while (tok < end && (*tok == ' ' || *tok == '\t')) tok++;
  while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) end--;
  if (tok == end) return 0;
  unsigned char d[MKV_AUTH_DIGEST_LEN];
  mkv_auth_digest(tok, (size_t)(end - tok), d);
  int ok = 0;
  for (int i = 0; i < a->nwrite; i++)
    ok |= CRYPTO_memcmp(d, a->write_digest[i], MKV_AUTH_DIGEST_LEN) == 0;
  return ok;
}

void mkv_auth_link_md5(const char *secret, long long expires, const char *uri, size_t ulen,
                       char out[23]) {
  mkv_buf_t s;
  mkv_buf_init(&s);
  mkv_buf_addf(&s, "%lld", expires);
  mkv_buf_add(&s, uri, ulen);
  mkv_buf_addc(&s, ' ');
  mkv_buf_adds(&s, secret);
  unsigned char md[MKV_MD5_LEN];
  mkv_md5(s.data, s.len, md);
  OPENSSL_cleanse(s.data, s.len);
  mkv_buf_free(&s);
  char b64[25];
  mkv_base64(md, MKV_MD5_LEN, b64); /* 24 chars, the last two '=' */
  for (int i = 0; i < 22; i++) out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
  out[22] = '\0';
}

void mkv_auth_sign_location(const mkv_auth_config_t *a, mkv_buf_t *loc, size_t uri_at,
                            long long now) {
  const char *uri = memchr(loc->data + uri_at, '/', loc->len - uri_at);
  size_t ulen = uri ? (size_t)(loc->data + loc->len - uri) : 0;
  long long expires = now + a->redirect_ttl_s;
  char md5[23];
  mkv_auth_link_md5(a->redirect_secret, expires, uri ? uri : "/", uri ? ulen : 1, md5);
  mkv_buf_addf(loc, "?md5=%s&expires=%lld", md5, expires);
}

/* Which requests need the secret: every write; reads only when configured (a listing
 * is a GET with a query: api.c's get_start makes the same test). */
static int needs_secret(const mkv_auth_config_t *a, const mkv_req_t *req) {
  switch (req->method) {
  case MKV_M_PUT:
  case MKV_M_DELETE:
  case MKV_M_UNLINK:
  case MKV_M_RELINK:
  case MKV_M_REPLACE:
  case MKV_M_REBALANCE: return 1;
  case MKV_M_GET: return a->read || (a->list && req->raw_query.len > 0);
  case MKV_M_HEAD: return a->read;
  default: return 0; /* POST and the like: 405 whoever asks */
  }
}

int mkv__auth_allow(mkv_req_t *req) {
  const mkv_auth_config_t *a = &req->worker->cfg->auth;
  if (!needs_secret(a, req)) return 1;
  if (mkv_auth_bearer_ok(a, req->authorization.data, req->authorization.len)) return 1;
  mkv_auth_refuse(req, "mkv", "401: this request needs Authorization: Bearer <secret>\n");
  return 0;
}

/* RFC 6750 §3: a missing token gets the bare challenge, a wrong one "invalid_token".
 * Answered before any body byte is read (the server then closes with a linger) and
 * before the index or a volume is touched. Nothing of the header is logged. */
void mkv_auth_refuse(mkv_req_t *req, const char *realm, const char *body) {
  char challenge[128];
  snprintf(challenge, sizeof(challenge), "Bearer realm=\"%s\"%s", realm,
           req->authorization.len ? ", error=\"invalid_token\"" : "");
  mkv_header_t h[2] = {{"WWW-Authenticate", challenge, 0},
                       {"Content-Type", "text/plain; charset=utf-8", 0}};
  mkv_req_respond(req, 401, h, 2, body, strlen(body));
}
