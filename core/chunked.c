/* chunked.c: a request body's chunked coding, decoded byte by byte (chunked.h). */
#include "mkv/chunked.h"

#include <string.h>

enum {
  S_SIZE,        /* hex digits of a chunk size */
  S_EXT,         /* extensions after the size, up to CR (ext_stage says where) */
  S_SIZE_LF,     /* the LF of a size line */
  S_DATA,        /* chunk data */
  S_DATA_CR,     /* the CRLF after chunk data */
  S_DATA_LF,
  S_TRAILER,     /* the start of a trailer line, or of the final CRLF */
  S_TRAILER_LINE,
  S_TRAILER_LF,
  S_END_LF,      /* the LF of the final CRLF */
  S_DONE,
  S_ERROR
};

enum { E_BEFORE_SEMI, E_BEFORE_NAME, E_NAME, E_AFTER_NAME, E_BEFORE_VALUE, E_TOKEN, E_QUOTED };

void mkv_chunked_init(mkv_chunked_t *d, size_t max_line) {
  memset(d, 0, sizeof(*d));
  d->state = S_SIZE;
  d->max_line = max_line;
}

int mkv_chunked_done(const mkv_chunked_t *d) {
  return d->state == S_DONE;
}

static int tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static long long fail(mkv_chunked_t *d, const char *why) {
  d->state = S_ERROR;
  d->error = why;
  return -1;
}

/* One byte of a chunk extension. 0, or -1. */
static int ext_byte(mkv_chunked_t *d, unsigned char c) {
  int ws = c == ' ' || c == '\t';
  if (c == '\r' && d->ext_stage != E_QUOTED && d->ext_stage != E_BEFORE_NAME &&
      d->ext_stage != E_BEFORE_VALUE) {
    d->state = S_SIZE_LF;
    return 0;
  }
  switch (d->ext_stage) {
  case E_BEFORE_SEMI:
    if (ws) return 0;
    if (c == ';') return d->ext_stage = E_BEFORE_NAME, 0;
    return -1;
  case E_BEFORE_NAME:
    if (ws) return 0;
    if (tchar(c)) return d->ext_stage = E_NAME, 0;
    return -1;
  case E_NAME:
    if (tchar(c)) return 0;
    if (ws) return d->ext_stage = E_AFTER_NAME, 0;
    if (c == '=') return d->ext_stage = E_BEFORE_VALUE, 0;
    if (c == ';') return d->ext_stage = E_BEFORE_NAME, 0;
    return -1;
  case E_AFTER_NAME:
    if (ws) return 0;
    if (c == '=') return d->ext_stage = E_BEFORE_VALUE, 0;
    if (c == ';') return d->ext_stage = E_BEFORE_NAME, 0;
    return -1;
  case E_BEFORE_VALUE:
    if (ws) return 0;
    if (c == '"') return d->ext_stage = E_QUOTED, d->escaped = 0, 0;
    if (tchar(c)) return d->ext_stage = E_TOKEN, 0;
    return -1;
  case E_TOKEN:
    if (tchar(c)) return 0;
    if (ws) return d->ext_stage = E_BEFORE_SEMI, 0;
    if (c == ';') return d->ext_stage = E_BEFORE_NAME, 0;
    return -1;
  case E_QUOTED:
    /* qdtext and quoted-pair: HTAB, SP, visible ASCII, obs-text; no CR, LF, NUL, DEL */
    if (c != '\t' && (c < 0x20 || c == 0x7f)) return -1;
    if (d->escaped) return d->escaped = 0, 0;
    if (c == '\\') return d->escaped = 1, 0;
    if (c == '"') d->ext_stage = E_BEFORE_SEMI;
    return 0;
  }
  return -1;
}

long long mkv_chunked_feed(mkv_chunked_t *d, const char *p, size_t len, mkv_chunked_data_cb on_data,
                           void *arg) {
  size_t i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)p[i];
    switch (d->state) {
    case S_SIZE: {
      int h = hexval(c);
      if (h >= 0) {
        if (d->digits >= 15) return fail(d, "chunk size too large");
        d->left = d->left * 16 + (uint64_t)h;
        d->digits++;
      } else if (d->digits == 0) {
        return fail(d, "a chunk size must start with a hex digit");
      } else if (c == ';' || c == ' ' || c == '\t') {
        d->state = S_EXT;
        d->ext_stage = c == ';' ? E_BEFORE_NAME : E_BEFORE_SEMI;
      } else if (c == '\r') {
        d->state = S_SIZE_LF;
      } else {
        return fail(d, "invalid character in a chunk size");
      }
      if (++d->line > d->max_line) return fail(d, "chunk size line too long");
      i++;
      break;
    }
    case S_EXT:
      if (ext_byte(d, c) != 0) return fail(d, "malformed chunk extension");
      if (++d->line > d->max_line) return fail(d, "chunk size line too long");
      i++;
      break;
    case S_SIZE_LF:
      if (c != '\n') return fail(d, "a chunk size line must end with CRLF");
      d->state = d->left == 0 ? S_TRAILER : S_DATA;
      d->line = 0;
      d->digits = 0;
      i++;
      break;
    case S_DATA: {
      size_t n = len - i;
      if ((uint64_t)n > d->left) n = (size_t)d->left;
      on_data(arg, p + i, n);
      d->left -= n;
      i += n;
      if (d->left == 0) d->state = S_DATA_CR;
      break;
    }
    case S_DATA_CR:
      if (c != '\r') return fail(d, "chunk data not followed by CRLF");
      d->state = S_DATA_LF;
      i++;
      break;
    case S_DATA_LF:
      if (c != '\n') return fail(d, "chunk data not followed by CRLF");
      d->state = S_SIZE;
      i++;
      break;
    case S_TRAILER:
      if (c == '\r') {
        d->state = S_END_LF;
        i++;
        break;
      }
      d->state = S_TRAILER_LINE; /* this byte starts a trailer line */
      /* fall through */
    case S_TRAILER_LINE:
      if (c == '\r') {
        d->state = S_TRAILER_LF;
      } else if (c == '\n' || c == '\0') {
        return fail(d, "malformed trailer line");
      }
      if (++d->trailers > d->max_line) return fail(d, "trailer section too large");
      i++;
      break;
    case S_TRAILER_LF:
      if (c != '\n') return fail(d, "a trailer line must end with CRLF");
      d->state = S_TRAILER;
      i++;
      break;
    case S_END_LF:
      if (c != '\n') return fail(d, "the chunked body must end with CRLF");
      d->state = S_DONE;
      return (long long)(i + 1);
    case S_DONE:
      return (long long)i;
    default:
      return -1;
    }
  }
  return (long long)i;
}
