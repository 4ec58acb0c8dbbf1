/* server_int.h: what the server's three files share (libuv's uv-common.h pattern):
 *
 *   server.c        connections: accept, read, parse-execute, keep-alive and pipelining,
 *                   timeouts, lingering close, drain
 *   server_parse.c  the request as llhttp parses it: what a request may be, what the
 *                   server rejects by itself, the mkv_req_t it fills in
 *   server_reply.c  request objects and answers: respond, stream, 100-continue, body
 *                   backpressure, the writes and their callbacks
 *
 * Loop thread only, like everything in server.h. Nothing here is a public contract. */
#ifndef MKV_SERVER_INT_H
#define MKV_SERVER_INT_H

#include <stdint.h>
#include <time.h>

#include <llhttp.h>
#include <uv.h>

#include "mkv/chunked.h"

#include "mkv/server.h"

enum { S_IDLE, S_HEADERS, S_BODY, S_WAITING, S_LINGER };

/* Lingering close: a connection answered before its request was read whole (a 403 to a
 * PUT whose body is still coming, a 413, a 431) is not closed at once -- the client's
 * unread bytes would turn the close into a reset that can destroy the answer before the
 * client (nginx in front, say) reads it, and it would report a 502. Instead mkv sends
 * FIN after the answer and reads and drops what still comes, until the client closes,
 * pauses LINGER_IDLE_MS, or LINGER_MAX_MS have passed. */
#define LINGER_IDLE_MS 1000
#define LINGER_MAX_MS 5000

/* Response bytes libuv may hold for a client that does not read them before mkv stops
 * parsing its pipelined requests (the kernel's socket buffer comes on top). */
#define WRITE_BUDGET (256 * 1024)

/* Pipelined bytes read while a request is being answered, before the read stops. */
#define PIPELINE_BUFFER (64 * 1024)

struct mkv_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  mkv_server_t *server;
  mkv_conn_t *prev, *next;
  llhttp_t parser;
  mkv_req_t *req;
  int state;

  mkv_buf_t url;
  mkv_buf_t hfield, hvalue;
  size_t header_bytes;
  int value_seen;      /* the current header value already had a span */
  int hosts;           /* Host headers of the current request */
  int carry_lf_ws;     /* the previous read ended with LF + only SP/HT */
  const char *cur_buf; /* the buffer llhttp is executing (for the obs-fold check) */

  mkv_buf_t tail, feeding; /* pipelined bytes not yet parsed */
  int in_execute;
  int stop;          /* a callback answered an error: ignore llhttp's error code */
  int api_engaged;   /* mkv_api_headers was called for the current request */
  int msg_complete, response_done, keepalive;
  int close_after, closing, want_close;
  int reading, body_paused, read_done, write_blocked;
  int eof_seen; /* the client's EOF came behind pipelined bytes not yet parsed */
  int writes_pending, closed_handles;
  int streaming, stream_chunked, sent_continue;
  int linger;              /* closing while the client may still be sending: linger */
  uint64_t linger_until_ns;
  uv_shutdown_t shutdown_req;
  char peer[48]; /* the client's address, for the access log */
  /* A chunked request body is decoded by mkv (chunked.h), not by llhttp, which stops at
   * the end of the headers; the next request starts with a fresh parser. */
  int own_chunked;
  mkv_chunked_t chunked;
  /* A method llhttp does not know (RELINK, REPLACE, REBALANCE): fed to llhttp as one it
   * knows, restored after the headers; the first bytes of a request kept while they may
   * still become one (a method name split across reads). */
  int ext_method;
  char mbuf[16];
  size_t mbuf_len;
  /* limits.body_min_rate: body bytes read since rate_since_ms (0: not counting) */
  uint64_t rate_since_ms, rate_bytes;
};

struct mkv_server_s {
  mkv_worker_t *w;
  const mkv_handler_t *h;
  uv_tcp_t listener;
  int listening;
  /* Out of fds (EMFILE): reserve_fd is given up to accept and close the waiting
   * connections; when even that fails, accepting pauses (the listener is closed, and
   * reopened from listen_spare by accept_timer), since libuv would retry accept() at
   * once, forever, in one loop turn. */
  int reserve_fd, listen_spare, accept_paused, closing;
  uv_timer_t accept_timer;
  mkv_conn_t *conns;
  int nconns;
  int draining;
  uv_timer_t drain_timer;
  void (*drain_done)(mkv_server_t *s);
  char date[40];
  time_t date_sec;
};

/* ---- server.c ---- */

void mkv__conn_close(mkv_conn_t *c);   /* now: the handles close, the request detaches */
void mkv__conn_end(mkv_conn_t *c);     /* after the answer: FIN, then linger or close */
void mkv__conn_advance(mkv_conn_t *c); /* the exchange moved on: next request, or close */
void mkv__conn_arm(mkv_conn_t *c, double ms); /* the connection's one timer */
void mkv__conn_start_reading(mkv_conn_t *c);

/* ---- server_parse.c ---- */

/* Feeds a chunked body's bytes to the decoder: data to the handler, the end of the
 * message, what follows it kept for the next request; a framing error answered 400. */
void mkv__chunked_execute(mkv_conn_t *c, const char *data, size_t len);
/* At the start of a request: does data begin with a method only mkv knows? 1 with
 * c->ext_method set, *as the method to feed llhttp instead and *skip the bytes of data
 * it replaces; 0 no; -1 data is a prefix of one (more bytes needed). */
int mkv__ext_method(mkv_conn_t *c, const char *data, size_t len, const char **as, size_t *skip);

/* The llhttp callbacks of a request (strict: no lenient flag is ever set). */
const llhttp_settings_t *mkv__request_settings(void);
/* Answers an error for the request being parsed and ends the connection after it.
 * Returns -1 (what an llhttp callback returns to stop). */
int mkv__conn_reject(mkv_conn_t *c, int status, const char *why);
/* llhttp stopped on error e in data[0..len): answers it (400, 405 ...) or, when nothing
 * can be answered in band (a broken body), closes the connection. */
void mkv__request_failed(mkv_conn_t *c, llhttp_errno_t e, const char *data, size_t len);

/* ---- server_reply.c ---- */

/* Queues bytes (takes `buf`, a malloc'd block); cb(req, ok, arg) runs once they have
 * left or failed, always on a later loop turn. */
void mkv__conn_write(mkv_conn_t *c, char *buf, size_t len, mkv_req_t *req,
                     mkv_req_write_cb cb, void *arg);

#endif
