/* fuzz_query: what a listing request's query goes through -- mkv_query_get for limit,
 * start and prefix (Go's url.ParseQuery rules), mkv_parse_int for limit -- and the text
 * helpers every request uses on the target: percent-decoding of the key, re-encoding it
 * for a Location, JSON-escaping keys for a listing. Properties: no crash; a decoded path
 * re-encodes to something that decodes to the same bytes; JSON output has no raw control
 * byte or unescaped quote. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/common.h"
#include "mkv/text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *q = malloc(size ? size : 1);
  memcpy(q, data, size);
  mkv_buf_t v, d, e, d2, j;
  mkv_buf_init(&v);
  mkv_buf_init(&d);
  mkv_buf_init(&e);
  mkv_buf_init(&d2);
  mkv_buf_init(&j);
  static const char *const names[] = {"limit", "start", "prefix", "list", "unlinked", ""};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    int rc = mkv_query_get(q, size, names[i], &v);
    if (rc == 1 && i == 0) {
      long long n;
      (void)mkv_parse_int(v.data, v.len, &n);
    }
  }
  if (mkv_pct_decode(q, size, &d) == 0) {
    mkv_pct_encode_path(&e, d.data, d.len);
    if (mkv_pct_decode(e.data, e.len, &d2) != 0) abort();
    if (d2.len != d.len || memcmp(d2.data, d.data, d.len) != 0) abort();
    for (size_t i = 0; i < e.len; i++) {
      unsigned char c = (unsigned char)e.data[i];
      if (c <= 0x20 || c >= 0x7f) abort(); /* a Location header carries no raw bytes */
    }
  }
  mkv_json_string(&j, q, size);
  if (j.len < 2 || j.data[0] != '"' || j.data[j.len - 1] != '"') abort();
  for (size_t i = 1; i + 1 < j.len; i++) {
    unsigned char c = (unsigned char)j.data[i];
    if (c < 0x20) abort();
    if (c == '"' && j.data[i - 1] != '\\') abort();
  }
  double ms; /* a duration is a C string (config values): up to the first NUL */
  char *z = strndup(q, size);
  (void)mkv_parse_duration(z, &ms);
  free(z);
  mkv_buf_free(&v);
  mkv_buf_free(&d);
  mkv_buf_free(&e);
  mkv_buf_free(&d2);
  mkv_buf_free(&j);
  free(q);
  return 0;
}
