/* relay: the floor of a replicating PUT, for the benchmark suite. It does only what any
 * index server must do with a PUT's bytes, and nothing else: read the body once, MD5 it,
 * write it to every volume, and answer 201 when every volume answered 2xx. Without -d
 * no index; never a placement policy, a key lock, timeouts or error recovery: a thread
 * per client connection with blocking I/O and one keep-alive connection per volume.
 *
 *   relay -l PORT HOST:PORT...
 *
 * A request for key K (the path, "/" included) goes to /xx/yy/B on every volume: xx and
 * yy the first two bytes of MD5(K) in hex, B the base64 of K, as mkv (and the Go
 * original) lay a key out with subvolumes 1, so both write the same files. Only
 * PUT with a Content-Length is served; anything else closes the connection. The bench
 * compares mkv with it on the same volumes, a moment apart: mkv's cost above this floor
 * is its own, and the floor's ratio to the direct references is what the machine
 * allows an index server on that path.
 *
 *   relay -l PORT -d DIR HOST:PORT...
 *
 * With -d, a durable relay done the plainest way: it keeps an index in DIR -- opened,
 * encoded and read by mkv's own index module, so its records and LevelDB settings are
 * mkv's, but written straight to LevelDB from the connection's thread, never through
 * mkv's writer thread (which sits idle) -- looks the key up first (403 for a live one, as mkv), writes the soft-deleted record with its
 * volumes (not synced) while the volumes store the body -- mkv too streams while its
 * mark is being written -- and the live record with the body's MD5 (synced) once every
 * volume answered, and answers 201 only after that. Each connection's thread writes its
 * own records and LevelDB's own writer queue groups the synced ones of concurrent
 * threads under one fsync. Not a lower bound: LevelDB does not put synced writes into a
 * group that a non-synced one leads, so its groups are smaller than mkv's writer
 * thread makes them. It is what the same durable work costs without mkv's machinery
 * (event loops, policies, locks, timeouts, recovery). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mkv/hash.h"
#include "mkv/index.h"

#define MAXVOL 8
#define CHUNK (64 * 1024)
#define HEADMAX 8192

typedef struct {
  char host[64];
  struct sockaddr_in addr;
} volume_t;

static volume_t vols[MAXVOL];
static int nvols;
static EVP_MD *md5_algo; /* fetched once: EVP_md5() per call takes a lock in OpenSSL 3 */
static mkv_index_t *db;  /* -d: the index, opened as mkv opens its own (no writer use) */
static char volume_list[MAXVOL * 64]; /* the record's volumes, "h1:p1,h2:p2,..." */
static size_t volume_list_len;

/* A connection with a little read-ahead: the bytes after a head are the body's. */
typedef struct {
  int fd;
  char buf[HEADMAX];
  size_t len;
} conn_t;

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static int writev_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Reads until a whole head is in c->buf; returns its length (through "\r\n\r\n"), or -1
 * (closed, error, head too large). */
static long read_head(conn_t *c) {
  for (;;) {
    char *e = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
    if (e) return e + 4 - c->buf;
    if (c->len == sizeof c->buf) return -1;
    ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    c->len += (size_t)r;
  }
}

static void consume(conn_t *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* The value of header `name` (any case) in head [p, p+n), leading blanks skipped; NULL if
 * absent. */
static const char *header_find(const char *p, size_t n, const char *name) {
  size_t nl = strlen(name);
  const char *end = p + n;
  for (const char *l = p; l < end;) {
    const char *eol = memmem(l, (size_t)(end - l), "\r\n", 2);
    if (!eol) break;
    if ((size_t)(eol - l) > nl + 1 && strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
      const char *v = l + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      return v;
    }
    l = eol + 2;
  }
  return NULL;
}

static long long header_num(const char *p, size_t n, const char *name) {
  const char *v = header_find(p, n, name);
  return v ? strtoll(v, NULL, 10) : -1;
}

static int connect_volume(const volume_t *v) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)&v->addr, sizeof v->addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Reads one answer from a volume: its status, with any body skipped. -1: broken. */
static int read_answer(conn_t *c) {
  long h = read_head(c);
  if (h < 12) return -1;
  int status = atoi(c->buf + 9);
  long long cl = header_num(c->buf, (size_t)h, "Content-Length");
  consume(c, (size_t)h);
  while (cl > 0) {
    if (c->len == 0) {
      ssize_t r = read(c->fd, c->buf, sizeof c->buf);
      if (r <= 0) return -1;
      c->len = (size_t)r;
    }
    size_t take = (size_t)cl < c->len ? (size_t)cl : c->len;
    consume(c, take);
    cl -= (long long)take;
  }
  return status;
}

/* Writes key k's record with mkv's encoder, straight to LevelDB on this thread:
 * soft-deleted with its volumes when md5 is NULL, else live with the hex MD5. rec is the
 * connection's buffer, reused. 0, or -1 (reported). */
static int record(mkv_buf_t *rec, const char *k, size_t kl, const unsigned char *md5, int sync) {
  char hex[33];
  if (md5) mkv_hex(md5, 16, hex);
  mkv_record_encode(rec, md5 == NULL, md5 ? hex : NULL, volume_list, volume_list_len);
  char *err = NULL;
  if (mkv_index_put_sync(db, k, kl, rec->data, rec->len, sync, &err) != 0) {
    fprintf(stderr, "relay: index write failed: %s\n", err);
    free(err);
    return -1;
  }
  return 0;
}

/* 1 if key k has a live record, 0 if none or soft-deleted, -1 on a read error (mkv's
 * index logs it). rec is the connection's buffer, reused. */
static int exists(mkv_buf_t *rec, const char *k, size_t kl) {
  int rc = mkv_index_get(db, k, kl, rec);
  if (rc == UV_ENOENT) return 0;
  mkv_record_t r;
  if (rc != 0 || mkv_record_decode(rec->data, rec->len, &r) != 0) return -1;
  return !r.deleted;
}

static void *serve(void *arg) {
  int fd = (int)(intptr_t)arg;
  conn_t *cl = malloc(sizeof *cl);
  conn_t *up = calloc((size_t)nvols, sizeof *up);
  for (int i = 0; up && i < nvols; i++) up[i].fd = -1;
  char *chunk = malloc(CHUNK);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  mkv_buf_t rec; /* -d: the record read or written */
  mkv_buf_init(&rec);
  if (!cl || !up || !chunk || !md) goto out;
  cl->fd = fd;
  cl->len = 0;
  for (int i = 0; i < nvols; i++) {
    up[i].len = 0;
    if ((up[i].fd = connect_volume(&vols[i])) < 0) goto out;
  }
  for (;;) {
    long h = read_head(cl);
    if (h < 0 || strncmp(cl->buf, "PUT /", 5) != 0) break;
    long long len = header_num(cl->buf, (size_t)h, "Content-Length");
    if (len < 0) break;
    const char *ex = header_find(cl->buf, (size_t)h, "Expect");
    int expect = ex && strncasecmp(ex, "100-continue", 12) == 0;
    const char *k = cl->buf + 4, *sp = memchr(k, ' ', (size_t)h - 4);
    if (!sp || sp - k > 700) break;
    int kl = (int)(sp - k);
    unsigned char d[16], key[1024];
    char name[701]; /* the key (the bench's need no percent-decoding), kept past consume() */
    memcpy(name, k, (size_t)kl);
    EVP_Digest(name, (size_t)kl, d, NULL, md5_algo, NULL);
    EVP_EncodeBlock(key, (const unsigned char *)name, kl);
    consume(cl, (size_t)h);
    char heads[MAXVOL][1300]; /* each volume's request head: key <= 700 bytes fits */
    size_t hlen[MAXVOL];
    for (int i = 0; i < nvols; i++)
      hlen[i] = (size_t)snprintf(heads[i], sizeof heads[i], "PUT /%02x/%02x/%s HTTP/1.1\r\nHost: "
                                 "%s\r\nContent-Length: %lld\r\n\r\n", d[0], d[1], (char *)key,
                                 vols[i].host, len);
    if (db) { /* a live key is not overwritten (403, as mkv): look first */
      int live = exists(&rec, name, (size_t)kl);
      if (live < 0) goto out;
      if (live) {
        static const char no[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        static const char no_close[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
        if (expect) { /* the body was never asked for: answer, then close */
          write_all(cl->fd, no_close, sizeof no_close - 1);
          break;
        }
        for (long long skip = len; skip > 0;) { /* the body, read and dropped */
          if (cl->len == 0) {
            ssize_t r = read(cl->fd, cl->buf, sizeof cl->buf);
            if (r <= 0) goto out;
            cl->len = (size_t)r;
          }
          size_t take = (size_t)skip < cl->len ? (size_t)skip : cl->len;
          consume(cl, take);
          skip -= (long long)take;
        }
        if (write_all(cl->fd, no, sizeof no - 1) != 0) goto out;
        continue;
      }
    }
    EVP_DigestInit_ex(md, md5_algo, NULL);
    /* The head goes to every volume with the first bytes of the body, as mkv sends it;
     * but alone, before "100 Continue", when the client waits for that (curl does for
     * large uploads, and waits a second without it), again as mkv does. How the body's
     * first bytes reach nginx decides how its temp file is written (see run.lua,
     * put1g_dfloor), so the floor must do here exactly what mkv does. */
    int first = 1, bad = 0;
    long long left = len;
    if (expect) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      for (int i = 0; i < nvols; i++)
        if (write_all(up[i].fd, heads[i], hlen[i]) != 0) goto out;
      if (write_all(cl->fd, cont, sizeof cont - 1) != 0) goto out;
      first = 0;
    }
    do {
      size_t n;
      if (cl->len > 0) {
        n = cl->len < (size_t)left ? cl->len : (size_t)left;
        memcpy(chunk, cl->buf, n);
        consume(cl, n);
      } else if (left > 0) {
        ssize_t r = read(cl->fd, chunk, (size_t)left < CHUNK ? (size_t)left : CHUNK);
        if (r <= 0) goto out;
        n = (size_t)r;
      } else {
        n = 0;
      }
      left -= (long long)n;
      EVP_DigestUpdate(md, chunk, n);
      for (int i = 0; i < nvols; i++) {
        struct iovec iov[2];
        int iovn = 0;
        if (first) iov[iovn++] = (struct iovec){heads[i], hlen[i]};
        if (n) iov[iovn++] = (struct iovec){chunk, n};
        if (writev_all(up[i].fd, iov, iovn) != 0) goto out;
      }
      first = 0;
    } while (left > 0);
    unsigned char body_md5[16];
    EVP_DigestFinal_ex(md, body_md5, NULL); /* computed as mkv must; -d keeps it */
    /* The mark, while the volumes store what they were sent. Like mkv's, which is not
     * waited for before the body goes out, it may land after a volume's copy. */
    if (db && record(&rec, name, (size_t)kl, NULL, 0) != 0) goto out;
    for (int i = 0; i < nvols; i++) {
      int st = read_answer(&up[i]);
      if (st < 0) goto out;
      if (st < 200 || st > 299) bad = 1;
    }
    if (db && !bad && record(&rec, name, (size_t)kl, body_md5, 1) != 0) goto out;
    static const char ok[] = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    static const char fail[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    if (write_all(cl->fd, bad ? fail : ok, bad ? sizeof fail - 1 : sizeof ok - 1)) break;
  }
out:
  close(fd);
  for (int i = 0; up && i < nvols; i++)
    if (up[i].fd >= 0) close(up[i].fd);
  free(cl);
  free(up);
  free(chunk);
  EVP_MD_CTX_free(md);
  mkv_buf_free(&rec);
  return NULL;
}

static void usage(void) {
  fprintf(stderr, "usage: relay -l PORT [-d INDEX_DIR] HOST:PORT...\n");
  exit(2);
}

int main(int argc, char **argv) {
  int port = 0, opt;
  const char *dir = NULL;
  while ((opt = getopt(argc, argv, "l:d:")) != -1) {
    if (opt == 'l') port = atoi(optarg);
    else if (opt == 'd') dir = optarg;
    else usage();
  }
  if (port <= 0 || optind >= argc) usage();
  for (int i = optind; i < argc && nvols < MAXVOL; i++, nvols++) {
    volume_t *v = &vols[nvols];
    snprintf(v->host, sizeof v->host, "%s", argv[i]);
    char *colon = strrchr(argv[i], ':');
    if (!colon) usage();
    *colon = 0;
    v->addr.sin_family = AF_INET;
    v->addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, argv[i], &v->addr.sin_addr) != 1) usage();
    size_t used = strlen(volume_list);
    snprintf(volume_list + used, sizeof volume_list - used, "%s%s", nvols ? "," : "", v->host);
  }
  volume_list_len = strlen(volume_list);
  if (dir) { /* mkv's own open: its LevelDB options, paranoid checks and lock */
    char *err = NULL;
    if (mkv_index_open(&db, dir, NULL, &err) != 0) {
      fprintf(stderr, "relay: %s\n", err);
      return 1;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  md5_algo = EVP_MD_fetch(NULL, "MD5", NULL);
  if (!md5_algo) {
    fprintf(stderr, "relay: OpenSSL has no MD5\n");
    return 1;
  }
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 512) != 0) {
    perror("relay: listen");
    return 1;
  }
  printf("relay: listening on 127.0.0.1:%d, %d volumes%s%s\n", port, nvols, dir ? ", index " : "",
         dir ? dir : "");
  fflush(stdout);
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) {
      usleep(10000); /* EMFILE and the like: do not spin */
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, serve, (void *)(intptr_t)fd) != 0) close(fd);
    pthread_attr_destroy(&at);
  }
}
