/* test_hash.c: golden vectors of core/hash.c (the Go original's lib_test.go cases). */
#include "runner.h"

#include "mkv/common.h"
#include "mkv/hash.h"

TEST(key_path_golden) {
  size_t n;
  char *p = mkv_key_path("hello", 5, &n);
  ASSERT_STREQ(p, "/5d/41/aGVsbG8=");
  free(p);
  p = mkv_key_path("helloworld", 10, &n);
  ASSERT_STREQ(p, "/fc/5e/aGVsbG93b3JsZA==");
  free(p);
}

TEST(md5_hex) {
  unsigned char md[16];
  char hex[33];
  mkv_md5("hello", 5, md);
  mkv_hex(md, 16, hex);
  ASSERT_STREQ(hex, "5d41402abc4b2a76b9719d911017c592");
  mkv_md5_2("hel", 3, "lo", 2, md);
  mkv_hex(md, 16, hex);
  ASSERT_STREQ(hex, "5d41402abc4b2a76b9719d911017c592");
}

TEST(base64_roundtrip) {
  char out[64];
  unsigned char back[64];
  size_t n;
  for (size_t len = 0; len < 20; len++) {
    unsigned char in[20];
    for (size_t i = 0; i < len; i++) in[i] = (unsigned char)(i * 37 + len);
    size_t el = mkv_base64(in, len, out);
    ASSERT_EQ(el, mkv_base64_len(len));
    ASSERT_EQ(mkv_base64_decode(out, el, back, &n), 0);
    ASSERT_EQ(n, len);
    ASSERT_MEMEQ(back, in, len);
  }
}

TEST(base64_strict) {
  unsigned char b[16];
  size_t n;
  ASSERT_EQ(mkv_base64_decode("aGVsbG8", 7, b, &n), -1);   /* no padding */
  ASSERT_EQ(mkv_base64_decode("aGVsbG8=", 8, b, &n), 0);
  ASSERT_EQ(n, 5);
  ASSERT_EQ(mkv_base64_decode("aGVsbG9=", 8, b, &n), -1);  /* unused bits set */
  ASSERT_EQ(mkv_base64_decode("aG=sbG8=", 8, b, &n), -1);  /* padding in the middle */
  ASSERT_EQ(mkv_base64_decode("aGVs bG8", 8, b, &n), -1);  /* whitespace */
  ASSERT_EQ(mkv_base64_decode("a===", 4, b, &n), -1);
}

TEST(path_check) {
  ASSERT_EQ(mkv_path_check("/5d/41/aGVsbG8=", 15), 0);
  ASSERT_EQ(mkv_path_check("/aa/bb/Zm9v/", 12), MKV_EKEYPATH);
  ASSERT_EQ(mkv_path_check("/aa/bb/x2//y", 12), MKV_EKEYPATH);
  char p[300];
  memcpy(p, "/aa/bb/", 7);
  memset(p + 7, 'A', 256);
  ASSERT_EQ(mkv_path_check(p, 7 + 255), 0);
  ASSERT_EQ(mkv_path_check(p, 7 + 256), MKV_EKEYLONG);
}

TEST(score_u32) {
  unsigned char s[16] = {0};
  s[12] = 0x01, s[13] = 0x02, s[14] = 0x03, s[15] = 0x04;
  ASSERT_EQ(mkv_score_u32(s), 0x01020304u);
}

TEST_MAIN(T(key_path_golden), T(md5_hex), T(base64_roundtrip), T(base64_strict), T(path_check),
          T(score_u32))
