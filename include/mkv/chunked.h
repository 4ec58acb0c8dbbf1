/* chunked.h: the chunked transfer coding of a request body, decoded strictly as RFC 9112
 * §7.1 writes it -- mkv's own, not llhttp's: Debian's llhttp 8.1 refuses a chunk with
 * several extensions ("5;a=b;c=d", valid), and accepts chunk data not followed by CRLF
 * ("5\r\nhelloXY3\r\n...": the stray bytes dropped, "helloabc" stored). The server
 * (server_parse.c) hands a chunked request's body bytes here instead of to llhttp.
 *
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-ext    = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
 *
 * Line ends are CRLF (a bare LF is refused, as llhttp's strict mode does); extensions
 * are checked and ignored; trailer fields are counted against a limit and ignored (they
 * never act on anything). Pure: no I/O, no allocation. */
#ifndef MKV_CHUNKED_H
#define MKV_CHUNKED_H

#include <stddef.h>
#include <stdint.h>

typedef struct mkv_chunked_s {
  int state;
  uint64_t left;     /* bytes of chunk-data still to come; the size being read */
  int digits;        /* hex digits of the size read */
  int quoted, escaped; /* inside a quoted extension value */
  int ext_stage;     /* where in an extension: see chunked.c */
  size_t line;       /* bytes of the current size or trailer line */
  size_t trailers;   /* bytes of trailer lines so far */
  size_t max_line;   /* the longest size line, the whole trailer section */
  const char *error; /* why it failed (static text) */
} mkv_chunked_t;

/* max_line: how long a chunk-size line (with its extensions) and the trailer section
 * may be (limits.header_bytes). */
void mkv_chunked_init(mkv_chunked_t *d, size_t max_line);

/* Decodes len bytes. Every slice of chunk data goes to on_data (borrowed, in order).
 * Returns the bytes consumed: all of them while the body goes on; fewer when it ended
 * inside the buffer (what follows belongs to the next request); or -1 on a framing
 * error (d->error says what). mkv_chunked_done() says whether the body ended. */
typedef void (*mkv_chunked_data_cb)(void *arg, const char *at, size_t len);
long long mkv_chunked_feed(mkv_chunked_t *d, const char *p, size_t len, mkv_chunked_data_cb on_data,
                           void *arg);
int mkv_chunked_done(const mkv_chunked_t *d);

#endif
