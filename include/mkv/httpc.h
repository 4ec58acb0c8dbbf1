/* httpc.h: a small blocking HTTP/1.1 client for control traffic -- etcd's JSON gateway
 * (ha.c). One request per connection (Connection: close), one deadline for the whole
 * exchange (resolve, connect, send, the whole response), a bounded response. It blocks
 * its caller: only for threads of their own, never on a loop. Plain http:// only. */
#ifndef MKV_HTTPC_H
#define MKV_HTTPC_H

#include <stddef.h>
#include <stdint.h>

#include "mkv/common.h"

#define MKV_HTTPC_MAX_RESPONSE (4u << 20)

/* Splits "http://host:port" (a trailing '/' allowed) into host and port (owned).
 * 0, or -1 when it is not of that form. */
int mkv_httpc_parse_base(const char *base, char **host, char **port);

/* A non-blocking TCP connection to host:port (each address getaddrinfo gives, in turn),
 * made by the deadline (mkv_now_ms's clock): the fd, or -1 with *err (owned). */
int mkv_httpc_connect(const char *host, const char *port, uint64_t deadline, char **err);

/* Sends `method path` with body (may be NULL) as application/json to base
 * ("http://host:port") and reads the response within timeout_ms. 0 with *status and
 * resp (replaced) set, or -1 with *err (owned): cannot resolve, connect, refused, timed
 * out, not HTTP, too big. */
int mkv_httpc_request(const char *base, const char *method, const char *path, const char *body,
                      size_t blen, int timeout_ms, int *status, mkv_buf_t *resp, char **err);

#endif
