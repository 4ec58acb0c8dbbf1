/* server.h: client connections of one worker -- accept, llhttp parsing, limits,
 * keep-alive and pipelining, timeouts, responses.
 *
 * Loop thread only. The server never decides policy: for each request it fills an
 * mkv_req_t (method, decoded key, raw query, the few headers a handler reads) and calls
 * the handler it serves (mkv_handler_t, below): headers() once the headers are
 * complete, body() for each body slice (borrowed), body_flush() when it has parsed all
 * it read this time, complete() when the body is complete, abort() if the client goes
 * away first, and free() when the request's last reference goes. The handler answers
 * with one of the mkv_req_respond*() calls, at any time. Callbacks the server runs for
 * a handler (a stream write's) run on a later loop turn, never inside the call that
 * asked for them.
 *
 * What the server rejects by itself, before the API sees anything: malformed requests,
 * HTTP/0.9 and HTTP/2+, absolute-form and other non-'/' targets, obs-fold, Upgrade and
 * CONNECT (400, close); a target over limits.url_bytes (414); headers over
 * limits.header_bytes (431); unknown methods (405). Lenient llhttp flags are never set.
 *
 * A request object is reference-counted: the connection holds one reference until the
 * exchange is over; a handler takes one (mkv_req_ref) while it has work in flight and
 * may outlive the connection (req->conn is then NULL and responses are dropped). */
#ifndef MKV_SERVER_H
#define MKV_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "mkv/common.h"
#include "mkv/worker.h"

typedef struct mkv_conn_s mkv_conn_t;
typedef struct mkv_req_s mkv_req_t;

typedef struct mkv_header_s {
  const char *name;
  const char *value;
  size_t value_len;
} mkv_header_t;

/* RELINK, REPLACE (comma.ai's fork) and REBALANCE (the Go original) are methods llhttp
 * does not know: the server recognises their names itself (server_parse.c). */
enum { MKV_M_GET = 1, MKV_M_HEAD, MKV_M_PUT, MKV_M_DELETE, MKV_M_UNLINK, MKV_M_POST,
       MKV_M_RELINK, MKV_M_REPLACE, MKV_M_REBALANCE };

/* What a server serves: the HTTP API (api.h: mkv_api_handler) on the public listener,
 * the admin endpoints (admin.h: mkv_admin_handler) on the admin listener. The calls
 * and their order are described above; req->data is the handler's own. */
typedef struct mkv_handler_s {
  void (*headers)(mkv_req_t *req);
  void (*body)(mkv_req_t *req, const char *at, size_t len);
  void (*body_flush)(mkv_req_t *req);
  void (*complete)(mkv_req_t *req);
  void (*abort)(mkv_req_t *req);
  void (*free)(mkv_req_t *req);
  int public_api; /* counted in /metrics and the access log (the API; not the admin) */
} mkv_handler_t;

struct mkv_req_s {
  mkv_worker_t *worker;
  mkv_conn_t *conn; /* NULL once the client is gone */
  int refs;
  int method;             /* MKV_M_* */
  const char *method_name;
  mkv_buf_t key;          /* the percent-decoded path: bytes, NUL allowed */
  mkv_buf_t raw_query;    /* after '?', as sent */
  mkv_buf_t content_md5;  /* the Content-MD5 header, if any */
  int has_content_md5;
  mkv_buf_t avoid;        /* X-Mkv-Avoid-Volume: "host:port[,...]" to probe last */
  mkv_buf_t zone;         /* X-Mkv-Client-Zone: for the read policy (a proxy sets it) */
  mkv_buf_t authorization; /* the Authorization header (auth.c); never logged */
  mkv_buf_t target;       /* the request target as sent (only with an access log) */
  char peer[48];          /* the client's address (only with an access log) */
  unsigned long long body_bytes; /* response body bytes sent */
  int expect_continue;
  int forwarded;          /* X-Mkv-Forwarded: another index node passed it on (forward.h) */
  int has_body;           /* Content-Length > 0, or chunked */
  int chunked;
  int64_t content_length; /* -1 when chunked or absent */
  int http_minor;
  uint64_t start_ns;
  int responded;          /* a response was started */
  int status;             /* the status sent */
  const struct mkv_handler_s *handler;
  void *data;             /* the handler's state for this request; its free() frees it */
};

mkv_server_t *mkv_server_new(mkv_worker_t *w, const mkv_handler_t *h);
/* Starts accepting on w->listen_fd. */
int mkv_server_listen(mkv_server_t *s);
/* Serves a connected stream socket as if it had been accepted (the request-path fuzzer
 * hands it one end of a socketpair). Returns 0 or a UV error; the fd is the server's. */
int mkv_server_adopt(mkv_server_t *s, int fd);
/* Stops accepting, closes idle connections now and the others once their exchange is
 * over; calls done once every connection is closed (or after drain_ms, by closing what
 * is left). */
void mkv_server_drain(mkv_server_t *s, double drain_ms, void (*done)(mkv_server_t *s));
void mkv_server_free(mkv_server_t *s);
int mkv_server_connections(mkv_server_t *s);

void mkv_req_ref(mkv_req_t *req);
void mkv_req_unref(mkv_req_t *req);

/* A complete response: status, extra headers, optional body (borrowed; copied). The
 * server adds Date, Content-Length and Connection. Header values holding CR, LF or NUL
 * are dropped (and logged), never sent. */
void mkv_req_respond(mkv_req_t *req, int status, const mkv_header_t *h, int nh,
                     const char *body, size_t len);
/* A text answer: `text` and a newline, as text/plain (the one way handlers word an
 * error for people). */
void mkv_req_respond_text(mkv_req_t *req, int status, const char *text);
/* A streamed response (chunked for HTTP/1.1, close-delimited for 1.0). Each write's
 * bytes are copied; cb (optional) runs once the bytes have left (or failed: ok == 0),
 * which is how a producer paces itself -- always on a later loop turn, never inside
 * mkv_req_stream_write, even when the write fails at once. */
void mkv_req_stream_start(mkv_req_t *req, int status, const mkv_header_t *h, int nh);
typedef void (*mkv_req_write_cb)(mkv_req_t *req, int ok, void *arg);
void mkv_req_stream_write(mkv_req_t *req, const char *p, size_t len, mkv_req_write_cb cb,
                          void *arg);
void mkv_req_stream_end(mkv_req_t *req);
/* Sends "100 Continue" (once; only if the client asked for it). */
void mkv_req_continue(mkv_req_t *req);
/* Backpressure on the request body: stop / restart reading the client's socket. */
void mkv_req_pause_body(mkv_req_t *req);
void mkv_req_resume_body(mkv_req_t *req);
/* Ends the connection now, whatever was sent: for a streamed response that cannot be
 * finished, so the client sees a truncated body rather than a short one. */
void mkv_req_abort(mkv_req_t *req);

/* A listening socket on "host:port" or "[v6]:port" (port 0: any free one), blocking
 * setup before a loop adopts it. Returns the fd and the address it got in `bound`
 * ("127.0.0.1:43211"), or -1 with *err (owned) naming `what` (the config field). */
int mkv_listen_hostport(const char *what, const char *spec, int backlog, char *bound,
                        size_t boundlen, char **err);

#endif
