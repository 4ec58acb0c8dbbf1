/* test_auth.c: core/auth.c -- the Bearer check over digests, and redirect signatures
 * that match nginx's secure_link_md5 (golden values from the nginx docs' shell recipe:
 * printf '%s' "<expires><uri> <secret>" | openssl md5 -binary | openssl base64 |
 * tr +/ -_ | tr -d =). */
#include "runner.h"

#include "mkv/auth.h"
#include "mkv/common.h"
#include "mkv/hash.h"

static const char S1[] = "Zq3+9vL0/r4YtE2wQ8uN6mB1xC7kP5sD0fG3hJ9aW2o=";
static const char S2[] = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978";

static mkv_auth_config_t two_secrets(void) {
  mkv_auth_config_t a;
  memset(&a, 0, sizeof(a));
  mkv_auth_digest(S1, strlen(S1), a.write_digest[0]);
  mkv_auth_digest(S2, strlen(S2), a.write_digest[1]);
  a.nwrite = 2;
  return a;
}

static int ok(const mkv_auth_config_t *a, const char *v) {
  return mkv_auth_bearer_ok(a, v, v ? strlen(v) : 0);
}

TEST(digest_is_sha256) {
  unsigned char d[MKV_AUTH_DIGEST_LEN];
  char hex[2 * MKV_AUTH_DIGEST_LEN + 1];
  mkv_auth_digest(S1, strlen(S1), d);
  mkv_hex(d, sizeof(d), hex);
  ASSERT_STREQ(hex, "df7c3bf430f0dc44ab3b7823c0d648948f785fd0969ea701946a9907b459d8cc");
}

TEST(bearer_accepts_either_secret) {
  mkv_auth_config_t a = two_secrets();
  char v[256];
  snprintf(v, sizeof(v), "Bearer %s", S1);
  ASSERT_EQ(ok(&a, v), 1);
  snprintf(v, sizeof(v), "Bearer %s", S2);
  ASSERT_EQ(ok(&a, v), 1);
  /* the scheme in any case, blanks around the token */
  snprintf(v, sizeof(v), "bEARER \t %s \t", S1);
  ASSERT_EQ(ok(&a, v), 1);
  /* a secret that was rotated out no longer works */
  a.nwrite = 1;
  snprintf(v, sizeof(v), "Bearer %s", S2);
  ASSERT_EQ(ok(&a, v), 0);
}

TEST(bearer_refuses_the_rest) {
  mkv_auth_config_t a = two_secrets();
  char v[256];
  ASSERT_EQ(ok(&a, NULL), 0);
  ASSERT_EQ(ok(&a, ""), 0);
  ASSERT_EQ(ok(&a, "Bearer"), 0);
  ASSERT_EQ(ok(&a, "Bearer "), 0);
  ASSERT_EQ(ok(&a, S1), 0); /* no scheme */
  snprintf(v, sizeof(v), "Basic %s", S1);
  ASSERT_EQ(ok(&a, v), 0);
  snprintf(v, sizeof(v), "Bearer %.*s", (int)strlen(S1) - 1, S1); /* a prefix */
  ASSERT_EQ(ok(&a, v), 0);
  snprintf(v, sizeof(v), "Bearer %sx", S1); /* longer */
  ASSERT_EQ(ok(&a, v), 0);
  snprintf(v, sizeof(v), "Bearer %s %s", S1, S2);
  ASSERT_EQ(ok(&a, v), 0);
  snprintf(v, sizeof(v), "Bearer %s", S1);
  v[10] ^= 0x20; /* one letter's case */
  ASSERT_EQ(ok(&a, v), 0);
  /* no secrets configured: nothing passes */
  a.nwrite = 0;
  snprintf(v, sizeof(v), "Bearer %s", S1);
  ASSERT_EQ(ok(&a, v), 0);
}

TEST(link_md5_matches_nginx) {
  char out[23];
  mkv_auth_link_md5("s3cret-for-the-test-vector", 2147483647LL, "/sv05/3a/d3/L2sx", 16, out);
  ASSERT_STREQ(out, "CSpCrJgPPqq1r4IXdbUd-w");
  mkv_auth_link_md5("s3cret-for-the-test-vector", 1700000060LL, "/5d/41/aGVsbG8=", 15, out);
  ASSERT_STREQ(out, "yyHbucSUXxIxHshPlUuTCg");
}

TEST(sign_location) {
  mkv_auth_config_t a;
  memset(&a, 0, sizeof(a));
  char secret[] = "s3cret-for-the-test-vector";
  a.redirect_secret = secret;
  a.redirect_ttl_s = 60;
  ASSERT_EQ(mkv_auth_signing(&a), 1);
  /* the signed URI is the volume's: after host:port, whatever comes before it (a
   * public_url prefix) */
  mkv_buf_t loc;
  mkv_buf_init(&loc);
  mkv_buf_adds(&loc, "https://proxy.example:8444/");
  size_t at = loc.len;
  mkv_buf_adds(&loc, "10.0.0.2:3001/5d/41/aGVsbG8=");
  mkv_auth_sign_location(&a, &loc, at, 1700000000LL);
  ASSERT_STREQ(loc.data, "https://proxy.example:8444/10.0.0.2:3001/5d/41/aGVsbG8="
                         "?md5=yyHbucSUXxIxHshPlUuTCg&expires=1700000060");
  mkv_buf_free(&loc);
  a.redirect_secret = NULL;
  ASSERT_EQ(mkv_auth_signing(&a), 0);
}

TEST_MAIN(T(digest_is_sha256), T(bearer_accepts_either_secret), T(bearer_refuses_the_rest),
          T(link_md5_matches_nginx), T(sign_location))
