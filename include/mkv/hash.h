/* hash.h: MD5, hex, base64 and the key -> volume path mapping. Pure functions.
 *
 * Callable from any thread once mkv_hash_init() has run (main does it before starting
 * threads; the Lua helper module does it on load). Short hashes use a per-thread
 * EVP_MD_CTX; a streamed body uses its own mkv_md5_stream_t. The MD5 algorithm is
 * fetched once per process: OpenSSL 3 fetches it implicitly on every EVP_md5() init,
 * which costs 3x (library-facts §5). */
#ifndef MKV_HASH_H
#define MKV_HASH_H

#include <stddef.h>
#include <stdint.h>

#define MKV_MD5_LEN 16
#define MKV_MD5_HEX_LEN 32
/* Longest file-name component nginx/ext4 can hold. */
#define MKV_NAME_MAX 255

/* Returns 0, or MKV_EPOLICY-free UV_ENOSYS when OpenSSL has no MD5 (FIPS). Idempotent. */
int mkv_hash_init(void);

/* Frees this thread's short-hash context; a thread that hashed calls it before it ends
 * (worker threads, and main before exit). */
void mkv_hash_thread_done(void);

void mkv_md5(const void *p, size_t n, unsigned char out[MKV_MD5_LEN]);
/* md5 of a ‖ b without copying them together (the placement score of key ‖ volume). */
void mkv_md5_2(const void *a, size_t an, const void *b, size_t bn,
               unsigned char out[MKV_MD5_LEN]);

typedef struct mkv_md5_stream_s mkv_md5_stream_t;
mkv_md5_stream_t *mkv_md5_stream_new(void); /* returns owned */
void mkv_md5_stream_update(mkv_md5_stream_t *s, const void *p, size_t n);
void mkv_md5_stream_final(mkv_md5_stream_t *s, unsigned char out[MKV_MD5_LEN]);
void mkv_md5_stream_free(mkv_md5_stream_t *s);

/* Lower-case hex; writes 2n chars and a NUL. */
void mkv_hex(const unsigned char *p, size_t n, char *out);
/* Decodes 2n hex chars (either case) into n bytes. Returns 0 or -1. */
int mkv_unhex(const char *s, size_t slen, unsigned char *out);

/* Standard base64 (with + / and = padding). Writes 4*ceil(n/3) chars and a NUL;
 * returns the length. */
size_t mkv_base64_len(size_t n);
size_t mkv_base64(const void *p, size_t n, char *out);
/* Strict decoder: standard alphabet, padding required and only at the end, no
 * whitespace, unused bits zero. out must hold 3*(slen/4) bytes. Returns 0 or -1. */
int mkv_base64_decode(const char *s, size_t slen, unsigned char *out, size_t *outlen);

/* The Go original's path: "/<hex md5[0]>/<hex md5[1]>/<base64 std(key)>".
 * Returns owned (NUL-terminated); *len gets its length. */
char *mkv_key_path(const char *key, size_t klen, size_t *len);
/* The same written to out (7 + mkv_base64_len(klen) + 1 bytes, NUL-terminated), with no
 * allocation: the length. */
size_t mkv_key_path_to(const char *key, size_t klen, char *out);

/* Can nginx store a file at this path? 0; MKV_EKEYLONG when a component is over 255
 * bytes; MKV_EKEYPATH when the path does not start with '/', ends with '/', holds "//"
 * or a "." / ".." component, or a NUL. */
int mkv_path_check(const char *path, size_t len);

/* Big-endian uint32 of score bytes 12..15: the Go original's subvolume selector. */
uint32_t mkv_score_u32(const unsigned char score[MKV_MD5_LEN]);

#endif
