/* hash.c: MD5 via a once-fetched EVP_MD, hex, a strict base64 decoder, key paths. */
#include "mkv/hash.h"

#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>
#include <uv.h>

#include "mkv/common.h"

static EVP_MD *md5_algo;
static pthread_once_t md5_once = PTHREAD_ONCE_INIT;

static void fetch_md5(void) {
  md5_algo = EVP_MD_fetch(NULL, "MD5", NULL);
}

int mkv_hash_init(void) {
  pthread_once(&md5_once, fetch_md5);
  return md5_algo ? 0 : UV_ENOSYS;
}

/* One context per thread for short hashes, made on first use and kept for the
 * thread's life: one small allocation per thread, not per hash. */
static _Thread_local EVP_MD_CTX *tls_ctx;

void mkv_hash_thread_done(void) {
  EVP_MD_CTX_free(tls_ctx);
  tls_ctx = NULL;
}

static EVP_MD_CTX *thread_ctx(void) {
  if (tls_ctx == NULL) {
    if (mkv_hash_init() != 0) mkv_fatal("OpenSSL has no MD5 (FIPS mode?)");
    tls_ctx = EVP_MD_CTX_new();
    if (tls_ctx == NULL) mkv_fatal("EVP_MD_CTX_new failed");
  }
  return tls_ctx;
}

void mkv_md5_2(const void *a, size_t an, const void *b, size_t bn,
               unsigned char out[MKV_MD5_LEN]) {
  EVP_MD_CTX *ctx = thread_ctx();
  unsigned int n = 0;
  if (!EVP_DigestInit_ex(ctx, md5_algo, NULL) || !EVP_DigestUpdate(ctx, a, an) ||
      !EVP_DigestUpdate(ctx, b, bn) || !EVP_DigestFinal_ex(ctx, out, &n))
    mkv_fatal("MD5 failed");
}

void mkv_md5(const void *p, size_t n, unsigned char out[MKV_MD5_LEN]) {
  mkv_md5_2(p, n, "", 0, out);
}

struct mkv_md5_stream_s {
  EVP_MD_CTX *ctx;
};

mkv_md5_stream_t *mkv_md5_stream_new(void) {
  if (mkv_hash_init() != 0) mkv_fatal("OpenSSL has no MD5 (FIPS mode?)");
  mkv_md5_stream_t *s = mkv_malloc(sizeof(*s));
  s->ctx = EVP_MD_CTX_new();
  if (s->ctx == NULL || !EVP_DigestInit_ex(s->ctx, md5_algo, NULL))
    mkv_fatal("MD5 init failed");
  return s;
}

void mkv_md5_stream_update(mkv_md5_stream_t *s, const void *p, size_t n) {
  if (!EVP_DigestUpdate(s->ctx, p, n)) mkv_fatal("MD5 update failed");
}

void mkv_md5_stream_final(mkv_md5_stream_t *s, unsigned char out[MKV_MD5_LEN]) {
  unsigned int n = 0;
  if (!EVP_DigestFinal_ex(s->ctx, out, &n)) mkv_fatal("MD5 final failed");
}

void mkv_md5_stream_free(mkv_md5_stream_t *s) {
  if (s == NULL) return;
  EVP_MD_CTX_free(s->ctx);
  free(s);
}

void mkv_hex(const unsigned char *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int mkv_unhex(const char *s, size_t slen, unsigned char *out) {
  if (slen % 2) return -1;
  for (size_t i = 0; i < slen / 2; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return 0;
}

size_t mkv_base64_len(size_t n) {
  return (n + 2) / 3 * 4;
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t mkv_base64(const void *p, size_t n, char *out) {
  const unsigned char *in = p;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64chars[v >> 18];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = b64chars[(v >> 6) & 63];
    out[o++] = b64chars[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = b64chars[v >> 18];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = '=';
    out[o++] = '=';
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = b64chars[v >> 18];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = b64chars[(v >> 6) & 63];
    out[o++] = '=';
  }
  out[o] = '\0';
  return o;
}

static int b64val(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Strict, unlike EVP_DecodeBlock (which keeps padding bytes in its count and skips
 * whitespace): rebuild turns file names back into keys with it, and a lenient decoder
 * would turn a stray name into a wrong key. */
int mkv_base64_decode(const char *s, size_t slen, unsigned char *out, size_t *outlen) {
  if (slen % 4) return -1;
  size_t o = 0;
  for (size_t i = 0; i < slen; i += 4) {
    int v[4], pad = 0;
    for (int j = 0; j < 4; j++) {
      char c = s[i + j];
      if (c == '=') {
        /* Padding only in the last quantum, only in its last two places, and nothing
         * but padding after it. */
        if (i + 4 != slen || j < 2) return -1;
        pad++;
        v[j] = 0;
        continue;
      }
      if (pad) return -1;
      if ((v[j] = b64val(c)) < 0) return -1;
    }
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
    out[o++] = (unsigned char)(w >> 16);
    if (pad == 2) {
      if (w & 0xffff) return -1; /* unused bits must be zero: one name, one key */
      break;
    }
    out[o++] = (unsigned char)(w >> 8);
    if (pad == 1) {
      if (w & 0xff) return -1;
      break;
    }
    out[o++] = (unsigned char)w;
  }
  *outlen = o;
  return 0;
}

char *mkv_key_path(const char *key, size_t klen, size_t *len) {
  char *p = mkv_malloc(7 + mkv_base64_len(klen) + 1);
  *len = mkv_key_path_to(key, klen, p);
  return p;
}

size_t mkv_key_path_to(const char *key, size_t klen, char *p) {
  unsigned char md[MKV_MD5_LEN];
  mkv_md5(key, klen, md);
  static const char digits[] = "0123456789abcdef";
  p[0] = '/';
  p[1] = digits[md[0] >> 4];
  p[2] = digits[md[0] & 15];
  p[3] = '/';
  p[4] = digits[md[1] >> 4];
  p[5] = digits[md[1] & 15];
  p[6] = '/';
  size_t n = mkv_base64(key, klen, p + 7);
  p[7 + n] = '\0';
  return 7 + n;
}

int mkv_path_check(const char *path, size_t len) {
  if (len == 0 || path[0] != '/') return MKV_EKEYPATH;
  if (path[len - 1] == '/') return MKV_EKEYPATH;
  int toolong = 0;
  size_t start = 1;
  for (size_t i = 1; i <= len; i++) {
    if (i < len && path[i] == '\0') return MKV_EKEYPATH;
    if (i == len || path[i] == '/') {
      size_t clen = i - start;
      if (clen == 0) return MKV_EKEYPATH;
      if ((clen == 1 && path[start] == '.') ||
          (clen == 2 && path[start] == '.' && path[start + 1] == '.'))
        return MKV_EKEYPATH;
      if (clen > MKV_NAME_MAX) toolong = 1;
      start = i + 1;
    }
  }
  return toolong ? MKV_EKEYLONG : 0;
}

uint32_t mkv_score_u32(const unsigned char score[MKV_MD5_LEN]) {
  return (uint32_t)score[12] << 24 | (uint32_t)score[13] << 16 | (uint32_t)score[14] << 8 |
         (uint32_t)score[15];
}
