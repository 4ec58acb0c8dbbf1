/* server_parse.c: the request as llhttp parses it -- strictly, no lenient flag ever
 * set -- into an mkv_req_t: what a request may be (HTTP/1.0 or 1.1, origin-form target,
 * a known method, no obs-fold, no Upgrade, limits on the target and the headers), the
 * few headers a handler reads, and the answers the server gives by itself when a
 * request is not one (server_int.h says how the server's files fit). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mkv/log.h"
#include "mkv/metrics.h"
#include "mkv/text.h"
#include "server_int.h"

/* ---- errors the server answers itself ---- */

/* Answers an error for the request being parsed and ends the connection after it. */
static int s_public_api(const mkv_conn_t *c) {
  return c->server->h->public_api;
}

int mkv__conn_reject(mkv_conn_t *c, int status, const char *why) {
  mkv_req_t *req = c->req;
  c->stop = 1;
  c->close_after = 1;
  if (!c->msg_complete) c->linger = 1;
  MKV_LOG_RATELIMITED(MKV_LOG_INFO, "rejected a request with %d: %s", status, why);
  if (req == NULL || req->responded) {
    c->want_close = 1;
    if (c->writes_pending == 0) mkv__conn_end(c);
    return -1;
  }
  /* for the access log: as much of the target as was read (a 414's is cut short) */
  if (req->target.len == 0 && c->url.len && s_public_api(c) && mkv_access_log_enabled())
    mkv_buf_set(&req->target, c->url.data, MKV_MIN(c->url.len, 1024));
  char body[256];
  int n = snprintf(body, sizeof(body), "%s\n", why);
  mkv_header_t h[2] = {{"Content-Type", "text/plain; charset=utf-8", 0},
                       {"Allow", "GET, HEAD, PUT, DELETE, UNLINK, RELINK, REPLACE, REBALANCE", 0}};
  int was = c->in_execute;
  c->in_execute = 1;
  mkv_req_respond(req, status, h, status == 405 ? 2 : 1, body, (size_t)n);
  c->in_execute = was;
  return -1;
}

/* The methods llhttp does not know, recognised here before llhttp sees the request
 * line: each is fed to llhttp as a method it knows of the same kind (with a body or
 * without), and set back on the request once its headers are parsed. Any other unknown
 * method still reaches llhttp as it is, and is answered 405. */
static const struct {
  const char *name;
  int method;
  const char *as;
} ext_methods[] = {{"RELINK", MKV_M_RELINK, "UNLINK"},
                   {"REPLACE", MKV_M_REPLACE, "PUT"},
                   {"REBALANCE", MKV_M_REBALANCE, "UNLINK"}};

/* ---- llhttp callbacks ---- */

static int on_message_begin(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_server_t *s = c->server;
  c->hosts = 0;
  mkv_req_t *req = mkv_calloc(1, sizeof(*req));
  req->worker = s->w;
  req->handler = s->h;
  s->w->live_reqs++;
  req->conn = c;
  req->refs = 1;
  req->content_length = -1;
  req->start_ns = mkv_now_ns();
  mkv_buf_init(&req->key);
  mkv_buf_init(&req->raw_query);
  mkv_buf_init(&req->content_md5);
  mkv_buf_init(&req->avoid);
  mkv_buf_init(&req->zone);
  mkv_buf_init(&req->authorization);
  mkv_buf_init(&req->target);
  memcpy(req->peer, c->peer, sizeof(req->peer));
  c->req = req;
  c->state = S_HEADERS;
  c->api_engaged = c->msg_complete = c->response_done = 0;
  c->sent_continue = c->streaming = 0;
  c->body_paused = 0;
  c->header_bytes = 0;
  c->value_seen = 0;
  mkv_buf_reset(&c->url);
  mkv_buf_reset(&c->hfield);
  mkv_buf_reset(&c->hvalue);
  /* The whole head must arrive within header_timeout (slowloris). */
  mkv__conn_arm(c, s->w->cfg->limits.header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (c->url.len + len > c->server->w->cfg->limits.url_bytes)
    return mkv__conn_reject(c, 414, "request target too long");
  mkv_buf_add(&c->url, at, len);
  return 0;
}

static int count_header_bytes(mkv_conn_t *c, size_t len) {
  c->header_bytes += len;
  if (c->header_bytes > c->server->w->cfg->limits.header_bytes)
    return mkv__conn_reject(c, 431, "request headers too large");
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (count_header_bytes(c, len + 4)) return -1;
  /* A field name is a token (RFC 9110 §5.1): llhttp 8.1 takes "Foo Bar:" whole. */
  if (memchr(at, ' ', len) || memchr(at, '\t', len))
    return mkv__conn_reject(c, 400, "whitespace in a header name");
  if (c->hfield.len < 64) mkv_buf_add(&c->hfield, at, MKV_MIN(len, 64));
  return 0;
}

/* obs-fold: llhttp accepts a header line that starts with SP or HT as a continuation
 * of the previous value, which is how CVE-2024-27982 smuggled a second request. It
 * shows up as a value span preceded (across whitespace) by a line feed. */
static int is_fold(mkv_conn_t *c, const char *at) {
  const char *q = at;
  while (q > c->cur_buf && (q[-1] == ' ' || q[-1] == '\t')) q--;
  if (q > c->cur_buf) return q[-1] == '\n';
  return c->carry_lf_ws;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  if (count_header_bytes(c, len)) return -1;
  if (is_fold(c, at)) return mkv__conn_reject(c, 400, "obs-fold (a header line starting with whitespace)");
  c->value_seen = 1;
  if (c->hvalue.len + len <= 256) mkv_buf_add(&c->hvalue, at, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  if (c->state != S_HEADERS) { /* a chunked body's trailer: counted, never acted on */
    mkv_buf_reset(&c->hfield);
    mkv_buf_reset(&c->hvalue);
    return 0;
  }
  if (c->hfield.len == 11 && strncasecmp(c->hfield.data, "content-md5", 11) == 0) {
    mkv_buf_set(&req->content_md5, c->hvalue.data, c->hvalue.len);
    req->has_content_md5 = 1;
  } else if (c->hfield.len == 18 && strncasecmp(c->hfield.data, "x-mkv-avoid-volume", 18) == 0) {
    if (req->avoid.len) mkv_buf_addc(&req->avoid, ',');
    mkv_buf_add(&req->avoid, c->hvalue.data, c->hvalue.len);
  } else if (c->hfield.len == 17 && strncasecmp(c->hfield.data, "x-mkv-client-zone", 17) == 0) {
    mkv_buf_set(&req->zone, c->hvalue.data, c->hvalue.len);
  } else if (c->hfield.len == 4 && strncasecmp(c->hfield.data, "host", 4) == 0) {
    c->hosts++;
  } else if (c->hfield.len == 15 && strncasecmp(c->hfield.data, "x-mkv-forwarded", 15) == 0) {
    req->forwarded = 1; /* from another index node (forward.h): never passed on again */
  } else if (c->hfield.len == 13 && strncasecmp(c->hfield.data, "authorization", 13) == 0) {
    mkv_buf_set(&req->authorization, c->hvalue.data, c->hvalue.len);
  } else if (c->hfield.len == 6 && strncasecmp(c->hfield.data, "expect", 6) == 0) {
    if (c->hvalue.len == 12 && strncasecmp(c->hvalue.data, "100-continue", 12) == 0)
      req->expect_continue = 1;
    else
      return mkv__conn_reject(c, 417, "unsupported Expect");
  }
  mkv_buf_reset(&c->hfield);
  mkv_buf_reset(&c->hvalue);
  c->value_seen = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  const mkv_config_t *cfg = c->server->w->cfg;
  /* llhttp reports an upgrade only after the whole message, too late to keep the API
   * from acting on it: refuse it here, before anything happens. */
  if (p->upgrade) return mkv__conn_reject(c, 400, "Upgrade and CONNECT are not supported");
  if (p->http_major != 1 || p->http_minor > 1)
    return mkv__conn_reject(c, p->http_major == 0 ? 400 : 505,
                       p->http_major == 0 ? "HTTP/0.9 is not supported" : "only HTTP/1.x");
  /* RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host (the Go original says so
   * too). */
  if (p->http_minor == 1 && c->hosts != 1)
    return mkv__conn_reject(c, 400, c->hosts ? "more than one Host header" : "HTTP/1.1 request without Host");
  req->http_minor = p->http_minor;
  c->keepalive = llhttp_should_keep_alive(p);
  switch (c->ext_method ? -1 : (int)p->method) {
  case -1:
    req->method = c->ext_method;
    for (size_t k = 0; k < MKV_ARRAY_SIZE(ext_methods); k++)
      if (ext_methods[k].method == c->ext_method) req->method_name = ext_methods[k].name;
    c->ext_method = 0;
    break;
  case HTTP_GET: req->method = MKV_M_GET, req->method_name = "GET"; break;
  case HTTP_HEAD: req->method = MKV_M_HEAD, req->method_name = "HEAD"; break;
  case HTTP_PUT: req->method = MKV_M_PUT, req->method_name = "PUT"; break;
  case HTTP_DELETE: req->method = MKV_M_DELETE, req->method_name = "DELETE"; break;
  case HTTP_UNLINK: req->method = MKV_M_UNLINK, req->method_name = "UNLINK"; break;
  case HTTP_POST: req->method = MKV_M_POST, req->method_name = "POST"; break;
  default: return mkv__conn_reject(c, 405, "method not allowed");
  }
  /* Origin-form only: the key is the path, and an absolute-form target would let a
   * client name another host (testing-reliability §0 finding 4). */
  if (c->url.len == 0 || c->url.data[0] != '/')
    return mkv__conn_reject(c, 400, "the request target must start with '/'");
  const char *q = memchr(c->url.data, '?', c->url.len);
  size_t plen = q ? (size_t)(q - c->url.data) : c->url.len;
  const char *hash = memchr(c->url.data, '#', plen);
  if (hash) return mkv__conn_reject(c, 400, "fragment in the request target");
  if (mkv_pct_decode(c->url.data, plen, &req->key) != 0)
    return mkv__conn_reject(c, 400, "malformed percent-escape in the path");
  if (q) mkv_buf_set(&req->raw_query, q + 1, c->url.len - plen - 1);

  if (p->flags & F_CHUNKED) {
    req->chunked = 1;
    req->has_body = 1;
  } else if (p->flags & F_CONTENT_LENGTH) {
    req->content_length = (int64_t)p->content_length;
    req->has_body = req->content_length > 0;
  }
  if (s_public_api(c) && mkv_access_log_enabled())
    mkv_buf_set(&req->target, c->url.data, c->url.len);
  if (cfg->verbose)
    mkv_info("%s %s %lld", req->method_name, c->url.data,
             (long long)(req->chunked ? -1 : req->content_length));
  c->state = req->has_body ? S_BODY : S_WAITING;
  if (req->has_body)
    mkv__conn_arm(c, cfg->limits.body_timeout_ms);
  else
    uv_timer_stop(&c->timer);
  c->api_engaged = 1;
  req->handler->headers(req);
  if (c->closing) return -1;
  if (req->responded && req->has_body && c->close_after) {
    /* Early answer to a bodied request: the body is never read. */
    c->stop = 1;
    return -1;
  }
  if (req->chunked) {
    /* The body is mkv's to decode (chunked.h says why): llhttp stops here. */
    mkv_chunked_init(&c->chunked, cfg->limits.header_bytes);
    c->own_chunked = 1;
    return HPE_PAUSED;
  }
  return 0;
}

static void on_chunk_data(void *arg, const char *at, size_t len) {
  mkv_conn_t *c = arg;
  mkv_req_t *req = c->req;
  if (c->closing) return;
  if (c->server->h->public_api) mkv_ctr_add(&c->server->w->metrics->bytes_in, len);
  if (!req->responded || c->streaming) req->handler->body(req, at, len);
}

int mkv__ext_method(mkv_conn_t *c, const char *data, size_t len, const char **as, size_t *skip) {
  size_t i = 0;
  while (i < len && (data[i] == '\r' || data[i] == '\n')) i++; /* llhttp skips these */
  if (i == len) return 0;
  for (size_t k = 0; k < MKV_ARRAY_SIZE(ext_methods); k++) {
    size_t n = strlen(ext_methods[k].name);
    size_t have = len - i;
    if (have <= n) { /* the name and its space not all here yet */
      if (memcmp(data + i, ext_methods[k].name, have) == 0) return -1;
      continue;
    }
    if (memcmp(data + i, ext_methods[k].name, n) == 0 && data[i + n] == ' ') {
      c->ext_method = ext_methods[k].method;
      *as = ext_methods[k].as;
      *skip = i + n;
      return 1;
    }
  }
  return 0;
}

void mkv__chunked_execute(mkv_conn_t *c, const char *data, size_t len) {
  long long n = mkv_chunked_feed(&c->chunked, data, len, on_chunk_data, c);
  if (c->closing) return;
  if (n < 0) {
    char why[160];
    snprintf(why, sizeof(why), "malformed chunked body: %s", c->chunked.error);
    /* Answered in band when nothing was (the API stops at the abort that follows the
     * close); either way the connection ends: the framing is lost. */
    mkv__conn_reject(c, 400, why);
    if (c->want_close || c->writes_pending == 0) mkv__conn_end(c);
    return;
  }
  if (!mkv_chunked_done(&c->chunked)) return;
  c->msg_complete = 1;
  c->state = S_WAITING;
  uv_timer_stop(&c->timer);
  c->req->handler->complete(c->req);
  if (c->closing) return;
  /* What follows is the next request's: it waits for this one's answer, as llhttp's
   * pause at a message's end makes it wait. */
  if ((size_t)n < len) mkv_buf_add(&c->tail, data + n, len - (size_t)n);
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  mkv_conn_t *c = p->data;
  mkv_req_t *req = c->req;
  if (c->server->h->public_api) mkv_ctr_add(&c->server->w->metrics->bytes_in, len);
  if (!req->responded || c->streaming) req->handler->body(req, at, len);
  return c->closing ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
  mkv_conn_t *c = p->data;
  c->msg_complete = 1;
  c->state = S_WAITING;
  uv_timer_stop(&c->timer);
  c->req->handler->complete(c->req);
  if (c->closing) return -1;
  /* The one pause: pipelined requests wait until this one is answered. */
  return HPE_PAUSED;
}

/* Is the request line a well-formed one with a method llhttp does not know (405), or
 * not a request line at all (400)? A method is a token followed by one space and a
 * target. The message starts at the beginning of the buffer llhttp was given (a
 * pipelined one is replayed from its own buffer), after any empty lines it skips. */
static int looks_like_method(const char *data, size_t len) {
  size_t i = 0;
  while (i < len && (data[i] == '\r' || data[i] == '\n')) i++;
  size_t start = i;
  while (i < len && (isalnum((unsigned char)data[i]) || strchr("!#$%&'*+-.^_`|~", data[i])) &&
         data[i] != '\0')
    i++;
  return i > start && i + 1 < len && data[i] == ' ' && data[i + 1] != ' ' &&
         (unsigned char)data[i + 1] > 0x20 && data[i + 1] != 0x7f;
}

void mkv__request_failed(mkv_conn_t *c, llhttp_errno_t e, const char *data, size_t len) {
  if (e == HPE_PAUSED_UPGRADE) {
    mkv__conn_reject(c, 400, "Upgrade and CONNECT are not supported");
  } else if (e == HPE_INVALID_METHOD) {
    if (c->req == NULL) on_message_begin(&c->parser);
    if (looks_like_method(data, len))
      mkv__conn_reject(c, 405, "method not allowed");
    else
      mkv__conn_reject(c, 400, "malformed request line");
  } else {
    if (c->req == NULL && c->state != S_BODY) on_message_begin(&c->parser);
    char why[160];
    snprintf(why, sizeof(why), "malformed request: %s", llhttp_get_error_reason(&c->parser));
    if (c->req && c->req->responded) {
      /* Answered already: nothing more can be said in band. */
      MKV_LOG_RATELIMITED(MKV_LOG_INFO, "closed a connection: %s", why);
      mkv__conn_close(c);
      return;
    }
    mkv__conn_reject(c, 400, why);
  }
}

static llhttp_settings_t settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static void settings_init(void) {
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_header_value_complete = on_header_value_complete;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
}

const llhttp_settings_t *mkv__request_settings(void) {
  uv_once(&settings_once, settings_init); /* every worker's thread shares one table */
  return &settings;
}
