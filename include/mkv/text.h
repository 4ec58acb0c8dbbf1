/* text.h: pure text helpers of the HTTP API: percent-decoding, query parameters, JSON
 * strings the way Go's encoding/json writes them, Go durations, Location escaping.
 *
 * No state; any thread. Every input is length-delimited (keys may hold NUL). */
#ifndef MKV_TEXT_H
#define MKV_TEXT_H

#include <stddef.h>

#include "mkv/common.h"

/* Percent-decodes a URL path as Go's url.PathUnescape does ('+' stays '+'). Appends to
 * out. Returns 0, or -1 on a malformed escape ("%zz", a lone "%"). */
int mkv_pct_decode(const char *s, size_t n, mkv_buf_t *out);

/* Decodes a query value as Go's url.QueryUnescape does ('+' is a space). */
int mkv_query_unescape(const char *s, size_t n, mkv_buf_t *out);

/* Walks the pairs of a raw query ("a=1&b=2"), from *pos (0 to start): the next pair's
 * name and value, raw (not decoded; borrowed from q; the value is empty when the pair
 * has no '='). Returns 1, or 0 after the last pair. Empty pairs are skipped. */
int mkv_query_next(const char *q, size_t qlen, size_t *pos, const char **name, size_t *nlen,
                   const char **val, size_t *vlen);

/* Finds the first `name` parameter of a raw query ("a=1&b=2") and decodes its value into
 * out. Returns 1 found, 0 absent, -1 malformed escape in its value. */
int mkv_query_get(const char *q, size_t qlen, const char *name, mkv_buf_t *out);

/* Appends s as a JSON string with its quotes, byte-for-byte as Go's json.Marshal does:
 * invalid UTF-8 -> \ufffd per byte, <>& and U+2028/9 escaped, control bytes \u00XX
 * except \n \r \t. */
void mkv_json_string(mkv_buf_t *out, const char *s, size_t n);

/* Parses a Go duration ("1s", "500ms", "1m30s", "250us", "0"). Returns 0 and sets *ms,
 * or -1. */
int mkv_parse_duration(const char *s, double *ms);

/* Appends a key percent-encoded for a URL path: unreserved bytes and '/' as is,
 * everything else %XX. The result never holds CR, LF, NUL or space. */
void mkv_pct_encode_path(mkv_buf_t *out, const char *s, size_t n);

/* Splits "host:port", "[v6]:port" (brackets dropped) into NUL-terminated host and port,
 * as getaddrinfo takes them. 0, or -1 when there is no ':', no host, or it does not fit. */
int mkv_hostport_split(const char *spec, char *host, size_t hostcap, char *port,
                       size_t portcap);

/* Parses a decimal int64 with an optional sign, as Go's strconv.Atoi does on 64-bit
 * ("+5" and "-5" yes, spaces no). Returns 0 or -1 (also on overflow). */
int mkv_parse_int(const char *s, size_t n, long long *out);

/* Parses a rate in bytes per second: "50MB/s", "1GB/s", "800KB/s", "100MiB/s", "1e6"
 * (decimal units k, M, G; binary ones with 'i'; "B" and "/s" optional). Returns 0 and
 * sets *out (> 0), or -1. */
int mkv_parse_rate(const char *s, double *out);

#endif
