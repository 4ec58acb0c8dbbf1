/* forward.h: a client's request passed whole to another index node -- a write sent to a
 * standby goes to the primary (ha.h), as does a read the standby cannot answer yet --
 * and the answer passed back: status, headers, body. Both bodies stream with
 * backpressure (a 1 GB PUT through a standby holds a few chunks, never the whole body).
 *
 * The request carries X-Mkv-Forwarded: <this node's name>; a node that gets a forwarded
 * request it cannot serve answers 503 rather than pass it on again (no loops).
 * Loop thread only. */
#ifndef MKV_FORWARD_H
#define MKV_FORWARD_H

#include "mkv/server.h"

#define MKV_FORWARDED_HEADER "X-Mkv-Forwarded"

/* Sends req to the index node at `to` ("host:port"), from the request's headers
 * callback: the request is the forward's from then on (its handler and data are
 * replaced: the body, the end and an abort go to the forward). 0, or -1 having answered
 * 503 (nothing replaced). */
int mkv_forward_start(mkv_req_t *req, const char *to, const char *self);

#endif
