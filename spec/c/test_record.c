/* test_record.c: core/record.c -- the Go original's record format against its golden
 * bytes (GO-ORIGINAL.md §2.2, lib_test.go:Test_fromToRecord), and volume lists. */
#include "testutil.h"

#include "mkv/common.h"
#include "mkv/record.h"

#define H "5d41402abc4b2a76b9719d911017c592" /* md5("hello") */

/* ---- records (GO-ORIGINAL.md §2.2, lib_test.go:Test_fromToRecord) ---- */

static void roundtrip(const char *golden, int deleted, const char *hash, const char *vols) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_record_encode(&b, deleted, hash, vols, strlen(vols));
  ASSERT_EQ(b.len, strlen(golden));
  ASSERT_MEMEQ(b.data, golden, b.len);

  mkv_record_t r;
  ASSERT_EQ(mkv_record_decode(golden, strlen(golden), &r), 0);
  ASSERT_EQ(r.deleted, deleted);
  ASSERT_EQ(r.has_hash, hash != NULL);
  if (hash) ASSERT_STREQ(r.hash, hash);
  ASSERT_EQ(r.volumes_len, strlen(vols));
  ASSERT_MEMEQ(r.volumes, vols, r.volumes_len);
  mkv_buf_free(&b);
}

TEST(record_goldens) {
  roundtrip("DELETEDhello,world", 1, NULL, "hello,world");
  roundtrip("hello", 0, NULL, "hello");
  roundtrip("DELETEDHASH" H "hello", 1, H, "hello");
  roundtrip("HASH" H "hello", 0, H, "hello");
  roundtrip("HASH" H "127.0.0.1:24103/sv03,127.0.0.1:24101/sv01", 0, H,
            "127.0.0.1:24103/sv03,127.0.0.1:24101/sv01");
  roundtrip("", 0, NULL, "");
  roundtrip("DELETED", 1, NULL, "");
  roundtrip("HASH" H, 0, H, ""); /* a hash and no volume (Go: one volume "") */
}

TEST(record_encode_replaces_buffer) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_set(&b, "garbage", 7);
  mkv_record_encode(&b, 0, NULL, "v1", 2);
  ASSERT_EQ(b.len, 2);
  ASSERT_MEMEQ(b.data, "v1", 2);
  mkv_buf_free(&b);
}

TEST(record_corrupt) {
  mkv_record_t r;
  const char *bad[] = {"HASH",
                       "HASH5d41",
                       "HASH5d41402abc4b2a76b9719d911017c59", /* 31 hex */
                       "DELETEDHASH5d41402abc",
                       "HASHzz41402abc4b2a76b9719d911017c592hello",
                       "HASH5d41402abc4b2a76b9719d911017c59-hello"};
  for (size_t i = 0; i < MKV_ARRAY_SIZE(bad); i++)
    ASSERT_EQ(mkv_record_decode(bad[i], strlen(bad[i]), &r), MKV_ECORRUPT);
  /* Length-delimited: the 32 hex digits must be inside n. */
  ASSERT_EQ(mkv_record_decode("HASH" H, 35, &r), MKV_ECORRUPT);
}

static int split(const char *s, const char **items, size_t *lens, int max) {
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  int n = 0;
  mkv_volumes_iter(&it, s, strlen(s));
  while (mkv_volumes_next(&it, &item, &ilen)) {
    ASSERT(n < max);
    items[n] = item;
    lens[n++] = ilen;
  }
  return n;
}

TEST(volumes_next) {
  const char *it[8];
  size_t ln[8];
  ASSERT_EQ(split("a:1/sv01,b:2/sv02,c:3", it, ln, 8), 3);
  ASSERT(ln[0] == 8 && memcmp(it[0], "a:1/sv01", 8) == 0);
  ASSERT(ln[1] == 8 && memcmp(it[1], "b:2/sv02", 8) == 0);
  ASSERT(ln[2] == 3 && memcmp(it[2], "c:3", 3) == 0);
  ASSERT_EQ(split("solo", it, ln, 8), 1);
  ASSERT_EQ(ln[0], 4);
  /* Go's strings.Split, but that an empty list holds nothing (Go: one empty volume);
   * a trailing comma is one more, empty, name. */
  ASSERT_EQ(split("", it, ln, 8), 0);
  ASSERT_EQ(split("a,", it, ln, 8), 2);
  ASSERT_EQ(ln[0], 1);
  ASSERT_EQ(ln[1], 0);
  ASSERT_EQ(split(",,", it, ln, 8), 3);
  ASSERT_EQ(split(",", it, ln, 8), 2);
  ASSERT_EQ(mkv_volumes_count("a,b", 3), 2);
  ASSERT_EQ(mkv_volumes_count("", 0), 0);
  /* length-delimited: the bytes after len are not part of the list */
  ASSERT_EQ(mkv_volumes_count("a,b", 1), 1);
}

TEST(volumes_contains) {
  ASSERT(mkv_volumes_contains("a:1/sv01,b:2", 12, "b:2", 3));
  ASSERT(mkv_volumes_contains("a:1/sv01,b:2", 12, "a:1/sv01", 8));
  ASSERT(!mkv_volumes_contains("a:1/sv01,b:2", 12, "a:1", 3));
  ASSERT(!mkv_volumes_contains("", 0, "", 0));
  ASSERT(mkv_volumes_contains("a,", 2, "", 0));
}

TEST(volume_host_len) {
  ASSERT_EQ(mkv_volume_host_len("h:1/sv01", 8), 3);
  ASSERT_EQ(mkv_volume_host_len("h:1", 3), 3);
  ASSERT_EQ(mkv_volume_host_len("h:1/a/b", 7), 3);
  ASSERT_EQ(mkv_volume_host_len("/x", 2), 0);
  ASSERT_EQ(mkv_volume_host_len("", 0), 0);
}

TEST_MAIN(T(record_goldens), T(record_encode_replaces_buffer), T(record_corrupt), T(volumes_next),
          T(volumes_contains), T(volume_host_len))
