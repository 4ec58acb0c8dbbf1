/* httpc.c: the blocking control-traffic HTTP client (httpc.h). Sockets are non-blocking
 * under poll() so that every step keeps to the one deadline; llhttp parses the response
 * (Content-Length, chunked, or until close). */
#include "mkv/httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>

int mkv_httpc_parse_base(const char *base, char **host, char **port) {
  const char *p = base;
  if (strncmp(p, "http://", 7) != 0) return -1;
  p += 7;
  size_t n = strlen(p);
  if (n > 0 && p[n - 1] == '/') n--;
  const char *colon = NULL;
  if (p[0] == '[') { /* [v6]:port */
    const char *close = memchr(p, ']', n);
    if (close == NULL || (size_t)(close - p) + 1 >= n || close[1] != ':') return -1;
    colon = close + 1;
    *host = mkv_memdup(p + 1, (size_t)(close - p) - 1);
  } else {
    colon = memchr(p, ':', n);
    if (colon == NULL || colon == p) return -1;
    *host = mkv_memdup(p, (size_t)(colon - p));
  }
  size_t plen = n - (size_t)(colon + 1 - p);
  if (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") < plen) {
    free(*host);
    *host = NULL;
    return -1;
  }
  *port = mkv_memdup(colon + 1, plen);
  return 0;
}

static int remaining(uint64_t deadline) {
  uint64_t now = mkv_now_ms();
  return now >= deadline ? 0 : (int)(deadline - now);
}

/* Waits for events on fd until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline) {
  for (;;) {
    int ms = remaining(deadline);
    if (ms == 0) return 0;
    struct pollfd pfd = {.fd = fd, .events = events};
    int rc = poll(&pfd, 1, ms);
    if (rc > 0) return 1;
    if (rc == 0) return 0;
    if (errno != EINTR) return -1;
  }
}

int mkv_httpc_connect(const char *host, const char *port, uint64_t deadline, char **err) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int grc = getaddrinfo(host, port, &hints, &res);
  if (grc != 0) {
    *err = mkv_sprintf("cannot resolve %s: %s", host, gai_strerror(grc));
    return -1;
  }
  int fd = -1, last = ECONNREFUSED;
  for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      int ok = 0;
      if (errno == EINPROGRESS) {
        int w = wait_fd(fd, POLLOUT, deadline);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
          ok = 1;
        else
          last = w == 0 ? ETIMEDOUT : soerr ? soerr : errno;
      } else {
        last = errno;
      }
      if (!ok) {
        close(fd);
        fd = -1;
      }
    }
  }
  freeaddrinfo(res);
  if (fd < 0) *err = mkv_sprintf("cannot connect to %s:%s: %s", host, port, strerror(last));
  return fd;
}

typedef struct {
  mkv_buf_t *body;
  int done, too_big;
} parse_t;

static int on_body(llhttp_t *p, const char *at, size_t len) {
  parse_t *st = p->data;
  if (st->body->len + len > MKV_HTTPC_MAX_RESPONSE) {
    st->too_big = 1;
    return HPE_USER;
  }
  mkv_buf_add(st->body, at, len);
  return 0;
}

static int on_complete(llhttp_t *p) {
  parse_t *st = p->data;
  st->done = 1;
  return HPE_PAUSED;
}

int mkv_httpc_request(const char *base, const char *method, const char *path, const char *body,
                      size_t blen, int timeout_ms, int *status, mkv_buf_t *resp, char **err) {
  char *host = NULL, *port = NULL;
  if (mkv_httpc_parse_base(base, &host, &port) != 0) {
    *err = mkv_sprintf("%s is not http://host:port", base);
    return -1;
  }
  uint64_t deadline = mkv_now_ms() + (uint64_t)timeout_ms;
  int fd = mkv_httpc_connect(host, port, deadline, err);
  int rc = -1;
  mkv_buf_t req;
  mkv_buf_init(&req);
  if (fd < 0) goto out;
  mkv_buf_addf(&req, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n", method, path,
               host, port);
  if (body) mkv_buf_addf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
  mkv_buf_adds(&req, "\r\n");
  if (body) mkv_buf_add(&req, body, blen);
  for (size_t off = 0; off < req.len;) {
    ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    int w = n < 0 && errno == EAGAIN ? wait_fd(fd, POLLOUT, deadline) : -1;
    if (w != 1) {
      *err = mkv_sprintf("%s: sending the request: %s", base,
                         w == 0 ? "timed out" : strerror(errno));
      goto out;
    }
  }

  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_body = on_body;
  settings.on_message_complete = on_complete;
  llhttp_t parser;
  llhttp_init(&parser, HTTP_RESPONSE, &settings);
  parse_t st = {.body = resp};
  parser.data = &st;
  mkv_buf_reset(resp);
  char buf[16384];
  while (!st.done) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      int w = wait_fd(fd, POLLIN, deadline);
      if (w != 1) {
        *err = mkv_sprintf("%s: waiting for the response: %s", base,
                           w == 0 ? "timed out" : strerror(errno));
        goto out;
      }
      continue;
    }
    if (n < 0) {
      *err = mkv_sprintf("%s: reading the response: %s", base, strerror(errno));
      goto out;
    }
    llhttp_errno_t perr = n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buf, (size_t)n);
    if (st.done) break;
    if (perr != HPE_OK || n == 0) {
      *err = st.too_big ? mkv_sprintf("%s: response over %u bytes", base, MKV_HTTPC_MAX_RESPONSE)
             : n == 0   ? mkv_sprintf("%s: connection closed before the response ended", base)
                        : mkv_sprintf("%s: not HTTP: %s", base, llhttp_errno_name(perr));
      goto out;
    }
  }
  *status = (int)parser.status_code;
  rc = 0;
out:
  if (fd >= 0) close(fd);
  mkv_buf_free(&req);
  free(host);
  free(port);
  return rc;
}
