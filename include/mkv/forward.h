/* forward.h: a client's request passed whole to another index node -- a write sent to a
 * standby goes to the primary (ha.h), as does a read the standby cannot answer yet --
 * and the answer passed back: status, headers, body. Both bodies stream with
 * backpressure (a 1 GB PUT through a standby holds a few chunks, never the whole body).
 *
 * The request carries X-Mkv-Forwarded: <this node's name>; a node that gets a forwarded
 * request it cannot serve answers 503 rather than pass it on again (no loops).
 * Loop thread only; the forward belongs to its request (api.c frees it with it). */
#ifndef MKV_FORWARD_H
#define MKV_FORWARD_H

#include "mkv/server.h"

#define MKV_FORWARDED_HEADER "X-Mkv-Forwarded"

typedef struct mkv_forward_s mkv_forward_t;

/* Sends req to the index node at `to` ("host:port"). Takes a reference on req until the
 * exchange is over. Returns the forward, or NULL having answered 503. */
mkv_forward_t *mkv_forward_start(mkv_req_t *req, const char *to, const char *self);
/* The client's body, as the server hands it over; then its end. */
void mkv_forward_body(mkv_forward_t *f, const char *at, size_t len);
void mkv_forward_flush(mkv_forward_t *f);
void mkv_forward_end(mkv_forward_t *f);
/* The client went away: the exchange with the other node is cut. */
void mkv_forward_abort(mkv_forward_t *f);
void mkv_forward_free(mkv_forward_t *f);

#endif
