/* ratebench: requests at a fixed rate over keep-alive connections, and the latency
 * distribution, measured from when each request was due (not when it was sent), so a
 * server that stalls is charged for the requests queued behind the stall (no
 * "coordinated omission"; a request sent within 2 ms of its due time -- the timer's
 * tick -- is timed from its send). What wrk2 does; Debian has only wrk, which cannot
 * hold a rate.
 *
 *   ratebench -r RATE -d SECONDS [-c CONNS] [-m GET|HEAD] [-s STATUS] http://HOST:PORT/PATH...
 *
 * Each request takes the next URL in turn (all on one HOST:PORT). Prints one line:
 *   rate=<achieved/s> n=<requests> errors=<n> p50=<ms> p90= p99= p999= max=
 * An answer with a status other than -s (default: any 2xx or 3xx) counts as an error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>
#include <uv.h>

typedef struct conn_s {
  uv_tcp_t tcp;
  uv_connect_t creq;
  llhttp_t parser;
  int busy, connected;
  uint64_t due_ns; /* when the request in flight was due */
  struct conn_s *next_idle;
  char reqbuf[2048];
} conn_t;

static uv_loop_t *loop;
static struct sockaddr_in addr;
static char host[256];
static char **paths;
static int npaths, next_path;
static const char *method = "GET";
static int want_status = 0;
static double rate = 1000, seconds = 10;
static int nconns = 16;
static conn_t *conns, *idle;
static uint64_t start_ns, end_ns;
static uint64_t scheduled; /* requests made due so far */
static uint64_t *lat;      /* ns, one per completed request */
static size_t nlat, caplat;
static uint64_t errors;
static uint64_t *backlog; /* due times of requests waiting for a free connection */
static size_t bl_head, bl_tail, bl_cap;
static uv_timer_t tick;
static int stopping;

static void send_on(conn_t *c, uint64_t due);

static void record(uint64_t ns) {
  if (nlat == caplat) {
    caplat = caplat ? caplat * 2 : 1 << 16;
    lat = realloc(lat, caplat * sizeof(*lat));
  }
  lat[nlat++] = ns;
}

static int on_headers_complete(llhttp_t *p) {
  int st = p->status_code;
  int ok = want_status ? st == want_status : (st >= 200 && st < 400);
  if (!ok) errors++;
  return strcmp(method, "HEAD") == 0 ? 1 : 0; /* a HEAD answer has no body */
}

static void give_back(conn_t *c) {
  if (bl_head != bl_tail && !stopping) {
    uint64_t due = backlog[bl_head++ % bl_cap];
    send_on(c, due);
    return;
  }
  c->next_idle = idle;
  idle = c;
}

static int on_message_complete(llhttp_t *p) {
  conn_t *c = p->data;
  record(uv_hrtime() - c->due_ns);
  c->busy = 0;
  give_back(c);
  return 0;
}

static llhttp_settings_t settings;

static void alloc_cb(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)h;
  static char buf[65536];
  (void)s;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn_t *c = s->data;
  if (n < 0) {
    if (stopping) return;
    fprintf(stderr, "ratebench: connection lost: %s\n", uv_strerror((int)n));
    exit(1);
  }
  if (n == 0) return;
  if (llhttp_execute(&c->parser, b->base, (size_t)n) != HPE_OK) {
    fprintf(stderr, "ratebench: bad response: %s\n", llhttp_get_error_reason(&c->parser));
    exit(1);
  }
}

static void write_cb(uv_write_t *w, int status) {
  free(w);
  if (status < 0 && !stopping) {
    fprintf(stderr, "ratebench: write failed: %s\n", uv_strerror(status));
    exit(1);
  }
}

static void send_on(conn_t *c, uint64_t due) {
  c->busy = 1;
  c->due_ns = due;
  const char *path = paths[next_path++ % npaths];
  int n = snprintf(c->reqbuf, sizeof(c->reqbuf), "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", method,
                   path, host);
  uv_write_t *w = malloc(sizeof(*w));
  uv_buf_t b = uv_buf_init(c->reqbuf, (unsigned)n);
  uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = uv_hrtime();
  if (now >= end_ns) {
    stopping = 1;
    uv_timer_stop(&tick);
    for (int i = 0; i < nconns; i++) uv_close((uv_handle_t *)&conns[i].tcp, NULL);
    return;
  }
  uint64_t due_total = (uint64_t)((double)(now - start_ns) / 1e9 * rate);
  while (scheduled < due_total) {
    uint64_t due = start_ns + (uint64_t)((double)scheduled / rate * 1e9);
    scheduled++;
    if (idle) {
      /* Sent in the timer tick it fell due in: timed from now, so the 1 ms tick does not
       * add to every latency. One that must wait for a connection keeps its due time. */
      conn_t *c = idle;
      idle = c->next_idle;
      send_on(c, now > due + 2000000 ? due : now);
    } else {
      if (bl_tail - bl_head == bl_cap) {
        size_t ncap = bl_cap ? bl_cap * 2 : 1024;
        uint64_t *nb = malloc(ncap * sizeof(*nb));
        for (size_t i = 0; i < bl_tail - bl_head; i++) nb[i] = backlog[(bl_head + i) % bl_cap];
        bl_tail -= bl_head;
        bl_head = 0;
        free(backlog);
        backlog = nb;
        bl_cap = ncap;
      }
      backlog[bl_tail++ % bl_cap] = due;
    }
  }
}

static int connected;

static void connect_cb(uv_connect_t *r, int status) {
  conn_t *c = r->data;
  if (status < 0) {
    fprintf(stderr, "ratebench: cannot connect: %s\n", uv_strerror(status));
    exit(1);
  }
  c->connected = 1;
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  c->next_idle = idle;
  idle = c;
  if (++connected == nconns) {
    start_ns = uv_hrtime();
    end_ns = start_ns + (uint64_t)(seconds * 1e9);
    uv_timer_start(&tick, on_tick, 1, 1);
  }
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (nlat == 0) return 0;
  size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
  return (double)lat[i] / 1e6;
}

int main(int argc, char **argv) {
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i += 2) {
    if (i + 1 >= argc) break;
    const char *v = argv[i + 1];
    switch (argv[i][1]) {
    case 'r': rate = atof(v); break;
    case 'd': seconds = atof(v); break;
    case 'c': nconns = atoi(v); break;
    case 'm': method = v; break;
    case 's': want_status = atoi(v); break;
    default: i = argc; break;
    }
  }
  if (i >= argc || rate <= 0 || seconds <= 0 || nconns <= 0) {
    fprintf(stderr, "usage: ratebench -r RATE -d SECONDS [-c CONNS] [-m GET|HEAD] [-s STATUS] "
                    "http://HOST:PORT/PATH...\n");
    return 2;
  }
  npaths = argc - i;
  paths = calloc((size_t)npaths, sizeof(char *));
  for (int k = 0; k < npaths; k++) {
    const char *u = argv[i + k];
    if (strncmp(u, "http://", 7) != 0) {
      fprintf(stderr, "ratebench: only http:// URLs: %s\n", u);
      return 2;
    }
    const char *slash = strchr(u + 7, '/');
    size_t hl = slash ? (size_t)(slash - (u + 7)) : strlen(u + 7);
    if (k == 0) {
      snprintf(host, sizeof(host), "%.*s", (int)hl, u + 7);
      char ip[256];
      snprintf(ip, sizeof(ip), "%s", host);
      char *colon = strrchr(ip, ':');
      if (!colon || uv_ip4_addr((*colon = 0, ip), atoi(colon + 1), &addr) != 0) {
        fprintf(stderr, "ratebench: need an IPv4 address and port: %s\n", u);
        return 2;
      }
    }
    paths[k] = strdup(slash ? slash : "/");
  }
  loop = uv_default_loop();
  llhttp_settings_init(&settings);
  settings.on_headers_complete = on_headers_complete;
  settings.on_message_complete = on_message_complete;
  uv_timer_init(loop, &tick);
  conns = calloc((size_t)nconns, sizeof(conn_t));
  for (int k = 0; k < nconns; k++) {
    conn_t *c = &conns[k];
    uv_tcp_init(loop, &c->tcp);
    uv_tcp_nodelay(&c->tcp, 1);
    c->tcp.data = c;
    c->creq.data = c;
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, connect_cb);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  qsort(lat, nlat, sizeof(*lat), cmp);
  printf("rate=%.1f n=%zu errors=%llu unanswered=%llu p50=%.3f p90=%.3f p99=%.3f p999=%.3f "
         "max=%.3f\n",
         (double)nlat / seconds, nlat, (unsigned long long)errors,
         (unsigned long long)(scheduled - nlat), pct(0.5), pct(0.9), pct(0.99), pct(0.999),
         nlat ? (double)lat[nlat - 1] / 1e6 : 0.0);
  return 0;
}
