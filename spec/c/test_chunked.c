/* test_chunked.c: core/chunked.c -- RFC 9112 §7.1's chunked coding, decoded strictly:
 * every valid form taken (several extensions, quoted values, trailers), every framing
 * fault refused, whatever way the bytes are split across reads. */
#include "testutil.h"

#include "mkv/chunked.h"
#include "mkv/common.h"

static void collect(void *arg, const char *at, size_t len) {
  mkv_buf_add(arg, at, len);
}

/* Decodes s in pieces of `step` bytes: 1 done, 0 not done, -1 error. *used: the bytes of
 * s consumed; data: the body. */
static int decode(const char *s, size_t step, mkv_buf_t *data, size_t *used) {
  mkv_chunked_t d;
  mkv_chunked_init(&d, 256);
  size_t len = strlen(s), off = 0;
  mkv_buf_reset(data);
  while (off < len) {
    size_t n = MKV_MIN(step, len - off);
    long long got = mkv_chunked_feed(&d, s + off, n, collect, data);
    if (got < 0) return -1;
    off += (size_t)got;
    if (mkv_chunked_done(&d)) break;
    ASSERT_EQ((size_t)got, n); /* not done: everything is taken */
  }
  *used = off;
  return mkv_chunked_done(&d) ? 1 : 0;
}

/* Every split of s, from one byte at a time to the whole: the same answer. */
/* s is one whole chunked body: every byte consumed, the data == body. */
static void expect_body(const char *s, const char *body) {
  size_t used_want = strlen(s);
  for (size_t step = 1; step <= strlen(s); step++) {
    mkv_buf_t data;
    mkv_buf_init(&data);
    size_t used = 0;
    ASSERT_EQ(decode(s, step, &data, &used), 1);
    ASSERT_EQ(data.len, strlen(body));
    if (data.len) ASSERT_MEMEQ(data.data, body, data.len);
    ASSERT_EQ(used, used_want);
    mkv_buf_free(&data);
  }
}

static void expect_error(const char *s) {
  for (size_t step = 1; step <= strlen(s); step++) {
    mkv_buf_t data;
    mkv_buf_init(&data);
    size_t used = 0;
    ASSERT_EQ(decode(s, step, &data, &used), -1);
    mkv_buf_free(&data);
  }
}

TEST(chunked_valid_forms) {
  expect_body("5\r\nhello\r\n0\r\n\r\n", "hello");
  expect_body("0\r\n\r\n", "");
  expect_body("000\r\n\r\n", "");
  expect_body("a\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n", "0123456789!");
  expect_body("A\r\n0123456789\r\n0\r\n\r\n", "0123456789");
  /* extensions: several, bare, quoted (with ';' and an escape inside), BWS around */
  expect_body("5;a=b;c=d\r\nhello\r\n0\r\n\r\n", "hello");
  expect_body("5;a;b\r\nhello\r\n0;last\r\n\r\n", "hello");
  expect_body("5 ; a = \"x;\\\"y\" ; b\r\nhello\r\n0\r\n\r\n", "hello");
  /* trailers, ignored */
  expect_body("5\r\nhello\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n", "hello");
}

TEST(chunked_stops_at_the_end) {
  /* what follows the body is the next request's: not consumed */
  mkv_buf_t data;
  mkv_buf_init(&data);
  size_t used = 0;
  const char *s = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
  ASSERT_EQ(decode(s, strlen(s), &data, &used), 1);
  ASSERT_EQ(used, 13);
  ASSERT_EQ(data.len, 3);
  mkv_buf_free(&data);
  /* not done yet: all taken, nothing more */
  mkv_chunked_t d;
  mkv_chunked_init(&d, 256);
  ASSERT_EQ(mkv_chunked_feed(&d, "5\r\nhel", 6, collect, &data), 6);
  ASSERT(!mkv_chunked_done(&d));
  mkv_buf_free(&data);
}

TEST(chunked_framing_faults) {
  expect_error("5\r\nhelloXY3\r\nabc\r\n0\r\n\r\n");   /* data not followed by CRLF */
  expect_error("5\r\nhello\n0\r\n\r\n");                /* bare LF after data */
  expect_error("5\nhello\r\n0\r\n\r\n");                /* bare LF after the size */
  expect_error("zz\r\nhello\r\n0\r\n\r\n");             /* not hex */
  expect_error("-1\r\nx\r\n0\r\n\r\n");
  expect_error("\r\nhello\r\n0\r\n\r\n");               /* no size */
  expect_error("FFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n");  /* too large */
  expect_error("5;=b\r\nhello\r\n0\r\n\r\n");           /* extension without a name */
  expect_error("5;a=\r\nhello\r\n0\r\n\r\n");           /* '=' without a value */
  expect_error("5;a=\"x\r\nhello\r\n0\r\n\r\n");        /* an open quoted string */
  expect_error("5;a@b\r\nhello\r\n0\r\n\r\n");          /* not a token */
  expect_error("5\r\nhello\r\n0\r\nX: 1\n\r\n");        /* bare LF in a trailer */
  expect_error("5\r\nhello\r\n0\r\n\rX");               /* no LF at the end */
}

TEST(chunked_line_limit) {
  char line[400];
  memset(line, 0, sizeof(line));
  strcpy(line, "5;");
  memset(line + 2, 'a', 300);
  strcat(line, "\r\nhello\r\n0\r\n\r\n");
  expect_error(line); /* a size line over max_line (256 here) */
}

TEST_MAIN(T(chunked_valid_forms), T(chunked_stops_at_the_end), T(chunked_framing_faults),
          T(chunked_line_limit))
