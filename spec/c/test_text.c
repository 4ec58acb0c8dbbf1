/* test_text.c: core/text.c against the Go functions it mirrors (url.PathUnescape,
 * url.QueryUnescape, url.Values.Get, json.Marshal of a string, time.ParseDuration,
 * strconv.Atoi). Expected values are what Go 1.19 returns for the same input. */
#include "runner.h"

#include <limits.h>

#include "mkv/common.h"
#include "mkv/text.h"

/* Asserts that buffer b holds exactly the n bytes of s (which may include NUL). */
#define ASSERT_BUF(b, s, n)                                                              \
  do {                                                                                   \
    if ((b)->len != (size_t)(n) || memcmp((b)->data, (s), (n)) != 0) {                   \
      fprintf(stderr, "%s:%d: buffer is \"%.*s\" (%zu bytes), expected %zu bytes\n",     \
              __FILE__, __LINE__, (int)(b)->len, (b)->data ? (b)->data : "", (b)->len,    \
              (size_t)(n));                                                              \
      abort();                                                                           \
    }                                                                                    \
  } while (0)
#define ASSERT_BUFS(b, s) ASSERT_BUF(b, s, strlen(s))

static int pct(const char *s, mkv_buf_t *out) {
  mkv_buf_reset(out);
  return mkv_pct_decode(s, strlen(s), out);
}

/* ---- mkv_pct_decode: url.PathUnescape ---- */

TEST(pct_decode_plain_and_plus) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(pct("/hello", &b), 0);
  ASSERT_BUFS(&b, "/hello");
  /* PathUnescape keeps '+': only query decoding turns it into a space. */
  ASSERT_EQ(pct("/a+b", &b), 0);
  ASSERT_BUFS(&b, "/a+b");
  ASSERT_EQ(pct("/a%2Bb", &b), 0);
  ASSERT_BUFS(&b, "/a+b");
  ASSERT_EQ(pct("", &b), 0);
  ASSERT_EQ(b.len, 0);
  mkv_buf_free(&b);
}

TEST(pct_decode_escapes) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(pct("/a%2Fb", &b), 0); /* %2F is a '/' in the key (GO-ORIGINAL §2.1) */
  ASSERT_BUFS(&b, "/a/b");
  ASSERT_EQ(pct("/a%2fb", &b), 0);
  ASSERT_BUFS(&b, "/a/b");
  ASSERT_EQ(pct("/%c3%a9", &b), 0); /* lower-case hex */
  ASSERT_BUFS(&b, "/\xc3\xa9");
  ASSERT_EQ(pct("/%C3%A9", &b), 0);
  ASSERT_BUFS(&b, "/\xc3\xa9");
  ASSERT_EQ(pct("/x%00y", &b), 0); /* NUL becomes a key byte */
  ASSERT_BUF(&b, "/x\0y", 4);
  ASSERT_EQ(pct("%09%0A%0D%FF%20", &b), 0);
  ASSERT_BUF(&b, "\t\n\r\xff ", 5);
  ASSERT_EQ(pct("%41", &b), 0); /* an escape that ends the string exactly */
  ASSERT_BUFS(&b, "A");
  ASSERT_EQ(pct("%25", &b), 0);
  ASSERT_BUFS(&b, "%");
  mkv_buf_free(&b);
}

TEST(pct_decode_malformed) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(pct("/bad%zz", &b), -1);
  ASSERT_EQ(pct("/bad%", &b), -1);   /* trailing % */
  ASSERT_EQ(pct("/bad%4", &b), -1);  /* one hex digit, then the end */
  ASSERT_EQ(pct("/bad%4g", &b), -1);
  ASSERT_EQ(pct("/bad%g4", &b), -1);
  ASSERT_EQ(pct("%", &b), -1);
  ASSERT_EQ(pct("%%41", &b), -1);
  mkv_buf_free(&b);
}

TEST(pct_decode_is_length_delimited) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  /* "%41" cut after 2 bytes is a malformed escape, whatever follows in memory. */
  ASSERT_EQ(mkv_pct_decode("%41", 2, &b), -1);
  mkv_buf_reset(&b);
  ASSERT_EQ(mkv_pct_decode("ab%41", 2, &b), 0);
  ASSERT_BUFS(&b, "ab");
  /* It appends. */
  mkv_buf_set(&b, "x", 1);
  ASSERT_EQ(mkv_pct_decode("%2F", 3, &b), 0);
  ASSERT_BUFS(&b, "x/");
  mkv_buf_free(&b);
}

/* ---- mkv_query_unescape / mkv_query_get: url.QueryUnescape and url.Values.Get ---- */

TEST(query_unescape) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(mkv_query_unescape("a+b%20c%2B", 10, &b), 0);
  ASSERT_BUFS(&b, "a b c+");
  mkv_buf_reset(&b);
  ASSERT_EQ(mkv_query_unescape("%zz", 3, &b), -1);
  mkv_buf_reset(&b);
  ASSERT_EQ(mkv_query_unescape("x%", 2, &b), -1);
  mkv_buf_free(&b);
}

static int qget(const char *q, const char *name, mkv_buf_t *out) {
  mkv_buf_reset(out);
  return mkv_query_get(q, strlen(q), name, out);
}

TEST(query_get) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(qget("a=1&b=2", "a", &b), 1);
  ASSERT_BUFS(&b, "1");
  ASSERT_EQ(qget("a=1&b=2", "b", &b), 1);
  ASSERT_BUFS(&b, "2");
  ASSERT_EQ(qget("a=1&b=2", "c", &b), 0); /* absent */
  ASSERT_EQ(qget("", "a", &b), 0);
  ASSERT_EQ(qget("start=%2Fa+b&limit=10", "start", &b), 1); /* '+' is a space here */
  ASSERT_BUFS(&b, "/a b");
  ASSERT_EQ(qget("limit=1&limit=2", "limit", &b), 1); /* first value wins */
  ASSERT_BUFS(&b, "1");
  ASSERT_EQ(qget("list", "list", &b), 1); /* no '=': present, empty value */
  ASSERT_EQ(b.len, 0);
  ASSERT_EQ(qget("list&limit=", "limit", &b), 1);
  ASSERT_EQ(b.len, 0);
  ASSERT_EQ(qget("a=x=y", "a", &b), 1); /* split at the first '=' */
  ASSERT_BUFS(&b, "x=y");
  ASSERT_EQ(qget("my+key=1", "my key", &b), 1); /* keys are decoded too */
  ASSERT_BUFS(&b, "1");
  ASSERT_EQ(qget("%61=5", "a", &b), 1);
  ASSERT_BUFS(&b, "5");
  ASSERT_EQ(qget("ab=1", "a", &b), 0); /* whole names only */
  ASSERT_EQ(qget("&&a=3&", "a", &b), 1);
  ASSERT_BUFS(&b, "3");
  ASSERT_EQ(qget("x=%00", "x", &b), 1);
  ASSERT_BUF(&b, "\0", 1);
  mkv_buf_free(&b);
}

TEST(query_get_malformed) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  ASSERT_EQ(qget("limit=%zz", "limit", &b), -1);
  ASSERT_EQ(qget("a=1&limit=5%", "limit", &b), -1);
  /* A malformed pair for another name does not matter. */
  ASSERT_EQ(qget("x=%zz&limit=5", "limit", &b), 1);
  ASSERT_BUFS(&b, "5");
  ASSERT_EQ(qget("%zz=1&limit=6", "limit", &b), 1);
  ASSERT_BUFS(&b, "6");
  mkv_buf_free(&b);
}

TEST(query_get_length_delimited) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  /* Only the first qlen bytes are the query. */
  ASSERT_EQ(mkv_query_get("a=1&b=2", 3, "b", &b), 0);
  mkv_buf_reset(&b);
  ASSERT_EQ(mkv_query_get("a=12", 3, "a", &b), 1);
  ASSERT_BUFS(&b, "1");
  mkv_buf_free(&b);
}

/* ---- mkv_json_string: json.Marshal(string) ---- */

static void json_is(const char *in, size_t n, const char *want) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_json_string(&b, in, n);
  if (b.len != strlen(want) || memcmp(b.data, want, b.len) != 0) {
    fprintf(stderr, "json of %zu bytes: got %.*s, want %s\n", n, (int)b.len, b.data, want);
    abort();
  }
  mkv_buf_free(&b);
}
#define JSON(lit, want) json_is(lit, sizeof(lit) - 1, want)

TEST(json_ascii) {
  JSON("", "\"\"");
  JSON("/hello", "\"/hello\"");
  JSON("a\"b\\c", "\"a\\\"b\\\\c\"");
  JSON("\n\r\t", "\"\\n\\r\\t\"");
  /* Go escapes HTML's special characters by default. */
  JSON("<a&b>", "\"\\u003ca\\u0026b\\u003e\"");
  /* Other control bytes are \u00XX, lower-case hex (Go before 1.22 has no \b \f). */
  JSON("\x01\x08\x0c\x1f", "\"\\u0001\\u0008\\u000c\\u001f\"");
  JSON("\0", "\"\\u0000\"");
  /* DEL and the rest of printable ASCII pass as is. */
  JSON("\x7f ~'/", "\"\x7f ~'/\"");
}

TEST(json_utf8) {
  JSON("\xc3\xa9", "\"\xc3\xa9\"");                         /* é */
  JSON("\xe2\x82\xac", "\"\xe2\x82\xac\"");                 /* € */
  JSON("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");         /* U+1F600 */
  JSON("\xe2\x80\xa8|\xe2\x80\xa9", "\"\\u2028|\\u2029\""); /* JS line separators */
}

TEST(json_invalid_utf8) {
  /* One U+FFFD per byte that starts no valid sequence (utf8.DecodeRuneInString). */
  JSON("\xff", "\"\\ufffd\"");
  JSON("a\xfe" "b", "\"a\\ufffdb\"");
  JSON("\xc3", "\"\\ufffd\"");                          /* truncated */
  JSON("\xe2\x82", "\"\\ufffd\\ufffd\"");               /* truncated 3-byte */
  JSON("\xc0\x80", "\"\\ufffd\\ufffd\"");               /* overlong NUL */
  JSON("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");    /* overlong '/' */
  JSON("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");    /* surrogate U+D800 */
  JSON("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* above U+10FFFF */
  JSON("\x80\xc3\xa9", "\"\\ufffd\xc3\xa9\"");          /* stray continuation, then é */
  JSON("\xc3(", "\"\\ufffd(\"");
}

/* ---- mkv_parse_duration: time.ParseDuration ---- */

static void dur_is(const char *s, double want) {
  double ms = -12345;
  if (mkv_parse_duration(s, &ms) != 0) {
    fprintf(stderr, "duration \"%s\" was refused, want %g ms\n", s, want);
    abort();
  }
  double d = ms - want;
  if (d < 0) d = -d;
  if (d > 1e-9 * (want < 0 ? -want : want) + 1e-12) {
    fprintf(stderr, "duration \"%s\" = %.12g ms, want %.12g ms\n", s, ms, want);
    abort();
  }
}

static void dur_bad(const char *s) {
  double ms = 0;
  if (mkv_parse_duration(s, &ms) != -1) {
    fprintf(stderr, "duration \"%s\" was accepted as %g ms, Go refuses it\n", s, ms);
    abort();
  }
}

TEST(duration_valid) {
  dur_is("0", 0);
  dur_is("0s", 0);
  dur_is("1s", 1000);
  dur_is("500ms", 500);
  dur_is("1m30s", 90000);
  dur_is("250us", 0.25);
  dur_is("250\xc2\xb5s", 0.25); /* µ (micro sign) */
  dur_is("250\xce\xbcs", 0.25); /* μ (Greek mu) */
  dur_is("1000000ns", 1);
  dur_is("1.5h", 5400000);
  dur_is("2h45m", 9900000);
  dur_is(".5s", 500);
  dur_is("1.s", 1000);
  dur_is("1h1m1s1ms", 3661001);
}

TEST(duration_invalid) {
  dur_bad("");
  dur_bad("1");    /* missing unit */
  dur_bad("10");
  dur_bad("s");
  dur_bad(".s");
  dur_bad("1x");
  dur_bad("1sx");
  dur_bad(" 1s");
  dur_bad("1 s");
  dur_bad("1s ");
  dur_bad("1S");
}

TEST(duration_number_syntax_is_go_not_strtod) {
  /* Go reads [0-9]*(\.[0-9]*)? and then a unit: exponents, hex and "inf" are not
   * numbers there. strtod would take them. */
  dur_bad("1e3s");
  dur_bad("1E3ms");
  dur_bad("0x10s");
  dur_bad("1.5e1s");
}

/* ---- mkv_pct_encode_path ---- */

TEST(pct_encode_path) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_pct_encode_path(&b, "/a-b_c.d~e/F9", 13);
  ASSERT_BUFS(&b, "/a-b_c.d~e/F9");
  mkv_buf_reset(&b);
  mkv_pct_encode_path(&b, "/a b\r\n\0+%?#", 11);
  ASSERT_BUFS(&b, "/a%20b%0D%0A%00%2B%25%3F%23");
  mkv_buf_free(&b);
}

TEST(pct_encode_path_every_byte) {
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  mkv_buf_t enc, dec;
  mkv_buf_init(&enc);
  mkv_buf_init(&dec);
  mkv_pct_encode_path(&enc, all, sizeof(all));
  for (size_t i = 0; i < enc.len; i++) {
    unsigned char c = (unsigned char)enc.data[i];
    /* Nothing that could end or split a header line or a request line. */
    ASSERT(c != '\r' && c != '\n' && c != ' ' && c != '\0' && c != '\t');
    ASSERT(c > 0x20 && c < 0x7f);
  }
  /* Lossless: PathUnescape gives the bytes back. */
  ASSERT_EQ(mkv_pct_decode(enc.data, enc.len, &dec), 0);
  ASSERT_BUF(&dec, all, sizeof(all));
  mkv_buf_free(&enc);
  mkv_buf_free(&dec);
}

/* ---- mkv_parse_int: strconv.Atoi ---- */

static int pint(const char *s, long long *v) {
  return mkv_parse_int(s, strlen(s), v);
}

TEST(parse_int) {
  long long v = 0;
  ASSERT_EQ(pint("5", &v), 0);
  ASSERT_EQ(v, 5);
  ASSERT_EQ(pint("+5", &v), 0);
  ASSERT_EQ(v, 5);
  ASSERT_EQ(pint("-5", &v), 0);
  ASSERT_EQ(v, -5);
  ASSERT_EQ(pint("0", &v), 0);
  ASSERT_EQ(v, 0);
  ASSERT_EQ(pint("-0", &v), 0);
  ASSERT_EQ(v, 0);
  ASSERT_EQ(pint("007", &v), 0);
  ASSERT_EQ(v, 7);
  ASSERT_EQ(pint("9223372036854775807", &v), 0);
  ASSERT_EQ(v, LLONG_MAX);
  ASSERT_EQ(pint("-9223372036854775808", &v), 0);
  ASSERT_EQ(v, LLONG_MIN);
}

TEST(parse_int_invalid) {
  long long v = 42;
  ASSERT_EQ(pint("", &v), -1);
  ASSERT_EQ(pint("+", &v), -1);
  ASSERT_EQ(pint("-", &v), -1);
  ASSERT_EQ(pint("5x", &v), -1);
  ASSERT_EQ(pint("x5", &v), -1);
  ASSERT_EQ(pint(" 5", &v), -1);
  ASSERT_EQ(pint("5 ", &v), -1);
  ASSERT_EQ(pint("--5", &v), -1);
  ASSERT_EQ(pint("0x10", &v), -1);
  ASSERT_EQ(pint("1.0", &v), -1);
  ASSERT_EQ(pint("9223372036854775808", &v), -1); /* LLONG_MAX + 1 */
  ASSERT_EQ(pint("-9223372036854775809", &v), -1);
  ASSERT_EQ(pint("18446744073709551616", &v), -1); /* 2^64 */
  ASSERT_EQ(pint("99999999999999999999999999", &v), -1);
  ASSERT_EQ(v, 42); /* untouched on failure */
}

TEST(parse_int_length_delimited) {
  long long v = 0;
  ASSERT_EQ(mkv_parse_int("12x", 2, &v), 0);
  ASSERT_EQ(v, 12);
  ASSERT_EQ(mkv_parse_int("-7", 1, &v), -1);
}

TEST(hostport_split) {
  char h[64], p[8];
  ASSERT_EQ(mkv_hostport_split("10.0.0.1:3001", h, sizeof(h), p, sizeof(p)), 0);
  ASSERT_STREQ(h, "10.0.0.1");
  ASSERT_STREQ(p, "3001");
  /* IPv6: brackets dropped, as getaddrinfo wants the address alone */
  ASSERT_EQ(mkv_hostport_split("[::1]:7000", h, sizeof(h), p, sizeof(p)), 0);
  ASSERT_STREQ(h, "::1");
  ASSERT_STREQ(p, "7000");
  ASSERT_EQ(mkv_hostport_split("idx-a.example:7000", h, sizeof(h), p, sizeof(p)), 0);
  ASSERT_STREQ(h, "idx-a.example");
  ASSERT_EQ(mkv_hostport_split("nocolon", h, sizeof(h), p, sizeof(p)), -1);
  ASSERT_EQ(mkv_hostport_split(":3000", h, sizeof(h), p, sizeof(p)), -1);
  ASSERT_EQ(mkv_hostport_split("[]:3000", h, sizeof(h), p, sizeof(p)), -1);
  ASSERT_EQ(mkv_hostport_split("host:", h, sizeof(h), p, sizeof(p)), -1);
  ASSERT_EQ(mkv_hostport_split("h:123456789", h, sizeof(h), p, sizeof(p)), -1);
}

TEST_MAIN(T(hostport_split), T(pct_decode_plain_and_plus), T(pct_decode_escapes), T(pct_decode_malformed),
          T(pct_decode_is_length_delimited), T(query_unescape), T(query_get),
          T(query_get_malformed), T(query_get_length_delimited), T(json_ascii), T(json_utf8),
          T(json_invalid_utf8), T(duration_valid), T(duration_invalid),
          T(duration_number_syntax_is_go_not_strtod), T(pct_encode_path),
          T(pct_encode_path_every_byte), T(parse_int), T(parse_int_invalid),
          T(parse_int_length_delimited))
