/* text.c: percent-coding, query parameters, Go-compatible JSON strings, durations. */
#include "mkv/text.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexdigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int unescape(const char *s, size_t n, mkv_buf_t *out, int plus_is_space) {
  mkv_buf_reserve(out, n);
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= n) return -1;
      int hi = hexdigit(s[i + 1]), lo = hexdigit(s[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      mkv_buf_addc(out, (char)(hi << 4 | lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      mkv_buf_addc(out, ' ');
    } else {
      mkv_buf_addc(out, c);
    }
  }
  return 0;
}

int mkv_pct_decode(const char *s, size_t n, mkv_buf_t *out) {
  return unescape(s, n, out, 0);
}

int mkv_query_unescape(const char *s, size_t n, mkv_buf_t *out) {
  return unescape(s, n, out, 1);
}

int mkv_query_next(const char *q, size_t qlen, size_t *pos, const char **name, size_t *nlen,
                   const char **val, size_t *vlen) {
  size_t i = *pos;
  while (i < qlen) {
    size_t end = i;
    while (end < qlen && q[end] != '&') end++;
    *pos = end + 1;
    if (end == i) { /* "a=1&&b=2": an empty pair is no pair */
      i = end + 1;
      continue;
    }
    /* Go splits the pair at its first '='. */
    size_t eq = i;
    while (eq < end && q[eq] != '=') eq++;
    *name = q + i;
    *nlen = eq - i;
    *val = eq < end ? q + eq + 1 : q + end;
    *vlen = eq < end ? end - eq - 1 : 0;
    return 1;
  }
  *pos = qlen;
  return 0;
}

int mkv_query_get(const char *q, size_t qlen, const char *name, mkv_buf_t *out) {
  size_t want = strlen(name), pos = 0, nlen, vlen;
  const char *n, *v;
  mkv_buf_t k;
  mkv_buf_init(&k);
  int found = 0;
  while (!found && mkv_query_next(q, qlen, &pos, &n, &nlen, &v, &vlen)) {
    mkv_buf_reset(&k);
    if (mkv_query_unescape(n, nlen, &k) != 0 || k.len != want || memcmp(k.data, name, want) != 0)
      continue;
    mkv_buf_reset(out);
    found = mkv_query_unescape(v, vlen, out) == 0 ? 1 : -1;
  }
  mkv_buf_free(&k);
  return found;
}

/* Decodes one UTF-8 sequence as Go's utf8.DecodeRune does: returns its length, or 0 if
 * the byte at s starts no valid sequence (overlong forms, surrogates and code points
 * above U+10FFFF are invalid). */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp) {
  unsigned c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  unsigned min, v;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2, min = 0x80, v = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3, min = 0x800, v = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4, min = 0x10000, v = c & 0x07;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    v = v << 6 | (s[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return len;
}

void mkv_json_string(mkv_buf_t *out, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s;
  mkv_buf_reserve(out, n + 2);
  mkv_buf_addc(out, '"');
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\' && c != '<' && c != '>' &&
        c != '&') {
      mkv_buf_addc(out, (char)c);
      i++;
      continue;
    }
    if (c < 0x80) {
      switch (c) {
      case '"': mkv_buf_adds(out, "\\\""); break;
      case '\\': mkv_buf_adds(out, "\\\\"); break;
      case '\n': mkv_buf_adds(out, "\\n"); break;
      case '\r': mkv_buf_adds(out, "\\r"); break;
      case '\t': mkv_buf_adds(out, "\\t"); break;
      default: {
        char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        mkv_buf_add(out, e, 6);
      }
      }
      i++;
      continue;
    }
    unsigned cp;
    size_t len = utf8_seq(p + i, n - i, &cp);
    if (len == 0) {
      mkv_buf_adds(out, "\\ufffd");
      i++;
    } else if (cp == 0x2028 || cp == 0x2029) {
      mkv_buf_adds(out, cp == 0x2028 ? "\\u2028" : "\\u2029");
      i += len;
    } else {
      mkv_buf_add(out, p + i, len);
      i += len;
    }
  }
  mkv_buf_addc(out, '"');
}

int mkv_parse_duration(const char *s, double *ms) {
  static const struct {
    const char *unit;
    double ms;
  } units[] = {{"ns", 1e-6}, {"us", 1e-3}, {"\xc2\xb5s", 1e-3}, {"\xce\xbcs", 1e-3},
               {"ms", 1},    {"s", 1000},  {"m", 60000},        {"h", 3600000}};
  if (s == NULL || *s == '\0') return -1;
  if (strcmp(s, "0") == 0) {
    *ms = 0;
    return 0;
  }
  double total = 0;
  const char *p = s;
  while (*p) {
    /* A decimal number as Go reads it: digits, an optional '.', digits; at least one
     * digit. No exponent, no hex, no sign (strtod would take "1e3" and "0x10"). */
    double v = 0, scale = 1;
    int digits = 0;
    while (*p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0'), digits++;
    if (*p == '.') {
      p++;
      while (*p >= '0' && *p <= '9') scale /= 10, v += (*p++ - '0') * scale, digits++;
    }
    if (digits == 0) return -1;
    size_t best = 0;
    double mult = 0;
    for (size_t i = 0; i < MKV_ARRAY_SIZE(units); i++) {
      size_t ul = strlen(units[i].unit);
      if (strncmp(p, units[i].unit, ul) == 0 && ul > best) best = ul, mult = units[i].ms;
    }
    if (best == 0) return -1;
    total += v * mult;
    p += best;
  }
  *ms = total;
  return 0;
}

void mkv_pct_encode_path(mkv_buf_t *out, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
        c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      mkv_buf_addc(out, (char)c);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      mkv_buf_add(out, e, 3);
    }
  }
}

int mkv_parse_int(const char *s, size_t n, long long *out) {
  size_t i = 0;
  int neg = 0;
  if (n == 0) return -1;
  if (s[0] == '+' || s[0] == '-') {
    neg = s[0] == '-';
    i = 1;
    if (n == 1) return -1;
  }
  unsigned long long v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    if (v > (ULLONG_MAX - 9) / 10) return -1;
    v = v * 10 + (unsigned)(s[i] - '0');
    if (v > (unsigned long long)LLONG_MAX + (unsigned long long)neg) return -1;
  }
  *out = neg ? (long long)(0 - v) : (long long)v;
  return 0;
}

int mkv_parse_rate(const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v <= 0) return -1;
  double mult = 1;
  if (strncasecmp(end, "k", 1) == 0)
    mult = 1e3, end++;
  else if (strncasecmp(end, "m", 1) == 0)
    mult = 1e6, end++;
  else if (strncasecmp(end, "g", 1) == 0)
    mult = 1e9, end++;
  if (*end == 'i' || *end == 'I') { /* KiB, MiB, GiB */
    mult = mult == 1e3 ? 1024 : mult == 1e6 ? 1048576 : mult == 1e9 ? 1073741824 : mult;
    end++;
  }
  if (*end == 'B' || *end == 'b') end++;
  if (strcmp(end, "/s") == 0) end += 2;
  if (*end != '\0') return -1;
  *out = v * mult;
  return 0;
}

int mkv_hostport_split(const char *spec, char *host, size_t hostcap, char *port,
                       size_t portcap) {
  const char *colon = strrchr(spec, ':');
  if (colon == NULL || colon == spec) return -1;
  const char *h = spec;
  size_t hl = (size_t)(colon - spec);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
  size_t pl = strlen(colon + 1);
  if (hl == 0 || hl >= hostcap || pl == 0 || pl >= portcap) return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  memcpy(port, colon + 1, pl + 1);
  return 0;
}
