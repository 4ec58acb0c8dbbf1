/* api.h: the HTTP API -- GET/HEAD/PUT/DELETE/UNLINK and listings, key locks, the write
 * order; the one place that maps errors to status codes.
 *
 * Loop thread only; called by server.c (see server.h for the sequence of calls). The
 * API never parses bytes; it reads the mkv_req_t the server filled in. */
#ifndef MKV_API_H
#define MKV_API_H

#include "mkv/server.h"

/* The handler table a worker's server uses. */
extern const mkv_handler_t mkv_api_handler;

void mkv_api_headers(mkv_req_t *req);
void mkv_api_body(mkv_req_t *req, const char *at, size_t len);
/* The server has parsed everything it read this time: body bytes gathered so far go
 * out now. */
void mkv_api_body_flush(mkv_req_t *req);
void mkv_api_complete(mkv_req_t *req);
/* The client is gone; the API finishes (or cleans up) on its own. */
void mkv_api_abort(mkv_req_t *req);
/* Frees the API's state of a request (called when its last reference goes). */
void mkv_api_free(mkv_req_t *req);

#endif
