/* repl.c: the replication streams between index nodes (ha.h), over plain TCP on each
 * node's ha.replication address: a standby connects to the primary, says where it is,
 * and receives either the batches after that (a resume) or a snapshot of the whole index
 * followed by them; it confirms each group of batches once applied and synced.
 *
 * Frames: u32 length (of what follows), u8 kind, payload; integers big-endian.
 *   H hello    standby -> primary  text: cluster, name, secret, epoch, seq, fresh
 *   W welcome  primary -> standby  text: mode (resume|snapshot), epoch, seq_epoch, seq
 *   S snapshot primary -> standby  a page of records in key order (index ops, puts)
 *   E end      primary -> standby  u64 seq_epoch, u64 seq: the snapshot's position
 *   B batch    primary -> standby  u64 epoch, u64 seq, u8 sync, index ops
 *   P ping     primary -> standby  u64 epoch, u64 seq (the primary's last batch)
 *   A ack      standby -> primary  u64 seq (the last batch applied and synced)
 *   X error    either              text: why the other side closes
 * Sockets are blocking with poll() for every wait, so each step has a deadline. */
#include "ha_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "mkv/httpc.h"
#include "mkv/log.h"
#include "mkv/server.h"
#include "mkv/text.h"

#define ha mkv__ha

#define IO_TIMEOUT_MS 5000     /* a peer that takes no bytes (or sends none) this long is gone */
/* The primary pings an idle standby every min(500 ms, sync_timeout / 4): a standby
 * that heard nothing for half the sync timeout stops answering reads itself (ha.c). */
#define PING_MS ((int)(ha.c.sync_timeout_ms / 4 < 500 ? ha.c.sync_timeout_ms / 4 : 500))
#define SILENCE_MS 3000        /* a standby that hears nothing this long reconnects */
#define PAGE_BYTES (1u << 20)  /* a snapshot page */
#define SEND_BYTES (4u << 20)  /* batches sent per turn */
#define MAX_FRAME (256u << 20)

/* ---- bytes ---- */

static void put_u64(mkv_buf_t *b, uint64_t v) {
  unsigned char x[8];
  for (int i = 7; i >= 0; i--, v >>= 8) x[i] = (unsigned char)v;
  mkv_buf_add(b, x, 8);
}

static uint64_t get_u64(const char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | (unsigned char)p[i];
  return v;
}

/* Starts a frame of kind k in b; frame_end fills its length in. */
static size_t frame_begin(mkv_buf_t *b, char k) {
  size_t at = b->len;
  mkv_buf_add(b, "\0\0\0\0", 4);
  mkv_buf_addc(b, k);
  return at;
}

static void frame_end(mkv_buf_t *b, size_t at) {
  uint32_t n = htonl((uint32_t)(b->len - at - 4));
  memcpy(b->data + at, &n, 4);
}

static int wait_fd(int fd, short ev, int ms) {
  struct pollfd p = {.fd = fd, .events = ev};
  for (;;) {
    int rc = poll(&p, 1, ms);
    if (rc >= 0) return rc;
    if (errno != EINTR) return -1;
  }
}

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_fd(fd, POLLOUT, IO_TIMEOUT_MS) <= 0) return -1;
      continue;
    }
    return -1;
  }
  return 0;
}

static int send_frame(int fd, char kind, const char *payload, size_t n) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  size_t at = frame_begin(&b, kind);
  mkv_buf_add(&b, payload, n);
  frame_end(&b, at);
  int rc = send_all(fd, b.data, b.len);
  mkv_buf_free(&b);
  return rc;
}

/* A connection's incoming bytes. */
typedef struct {
  mkv_buf_t buf;
  size_t off; /* consumed */
} rbuf_t;

/* Reads what the socket has (waiting up to ms for something): 1 got bytes, 0 nothing in
 * time, -1 closed or failed. */
static int fill(int fd, rbuf_t *r, int ms) {
  if (r->off > 0 && r->off == r->buf.len) {
    mkv_buf_reset(&r->buf);
    r->off = 0;
  } else if (r->off > (1u << 20)) {
    memmove(r->buf.data, r->buf.data + r->off, r->buf.len - r->off);
    r->buf.len -= r->off;
    r->off = 0;
  }
  int w = wait_fd(fd, POLLIN, ms);
  if (w <= 0) return w;
  mkv_buf_reserve(&r->buf, 65536);
  ssize_t n = recv(fd, r->buf.data + r->buf.len, 65536, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) return -1;
  r->buf.len += (size_t)n;
  return 1;
}

/* The next whole frame in r: 1 with kind, payload and its length; 0 none yet; -1 one
 * too big to be ours. */
static int next_frame(rbuf_t *r, char *kind, const char **p, size_t *n) {
  size_t have = r->buf.len - r->off;
  if (have < 5) return 0;
  uint32_t len;
  memcpy(&len, r->buf.data + r->off, 4);
  len = ntohl(len);
  if (len < 1 || len > MAX_FRAME) return -1;
  if (have < 4 + (size_t)len) return 0;
  *kind = r->buf.data[r->off + 4];
  *p = r->buf.data + r->off + 5;
  *n = len - 1;
  r->off += 4 + (size_t)len;
  return 1;
}

/* Waits for one whole frame within ms. 1, 0 (timed out), -1. */
static int read_frame(int fd, rbuf_t *r, int ms, char *kind, const char **p, size_t *n) {
  uint64_t deadline = mkv_now_ms() + (uint64_t)ms;
  for (;;) {
    int f = next_frame(r, kind, p, n);
    if (f != 0) return f;
    uint64_t now = mkv_now_ms();
    if (now >= deadline) return 0;
    if (fill(fd, r, (int)(deadline - now)) < 0) return -1;
  }
}

/* "name value" lines: the value of name (owned), or NULL. */
static char *text_field(const char *p, size_t n, const char *name) {
  size_t nl = strlen(name);
  const char *end = p + n;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    if ((size_t)(eol - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == ' ')
      return mkv_memdup(p + nl + 1, (size_t)(eol - p) - nl - 1);
    p = eol + 1;
  }
  return NULL;
}

static long long text_num(const char *p, size_t n, const char *name) {
  char *v = text_field(p, n, name);
  long long x = v ? strtoll(v, NULL, 10) : -1;
  free(v);
  return x;
}

static void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
}

/* ---- the listener (every node; only a primary serves) ---- */

int mkv__repl_listen(char **err) {
  char bound[300];
  int fd = mkv_listen_hostport("ha.replication", ha.c.replication, 16, bound, sizeof(bound), err);
  if (fd < 0) return -1;
  ha.listen_fd = fd;
  return 0;
}

void mkv__repl_wake_all(void) {
  for (ha_conn_t *c = ha.conns; c; c = c->next) eventfd_write(c->efd, 1);
}

void mkv__repl_drop_all(void) {
  for (ha_conn_t *c = ha.conns; c; c = c->next) {
    c->closing = 1;
    shutdown(c->fd, SHUT_RDWR);
    eventfd_write(c->efd, 1);
  }
  ha.sync_conn = NULL;
}

/* May a standby at (epoch, seq), which only ever applied a primary's batches, go on from
 * seq + 1? Only when this node's batch seq is the same batch (same epoch: a batch is
 * named by its epoch and number), and the log holds every batch after it. A standby
 * that never applied a batch gets a snapshot: its index is whatever it was before HA.
 * Under mu. */
static int can_resume(int64_t epoch, uint64_t seq) {
  if (epoch == 0) return 0;   /* no batch yet: its index may hold anything (from before HA) */
  if (seq > ha.seq) return 0; /* it holds batches this node never had */
  if (seq == ha.seq) return epoch == ha.seq_epoch;
  ha_entry_t *at = mkv__ha_log_find(seq), *after = mkv__ha_log_find(seq + 1);
  return at && after && at->epoch == epoch;
}

static void conn_unlink(ha_conn_t *c) {
  for (ha_conn_t **pp = &ha.conns; *pp; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  }
  if (ha.sync_conn == c) {
    ha.sync_conn = NULL;
    if (atomic_load(&ha.role) == MKV_HA_PRIMARY) {
      ha.sync_drops++;
      ha.want_record = 1;
      mkv_warn("ha: sync standby %s is gone", c->name);
    }
    mkv__ha_settle();
  }
  pthread_cond_broadcast(&ha.cond);
}

/* A confirmation from c: its writes may be acknowledged; a standby that has caught up
 * becomes the sync one when there is none. Under mu. */
static void on_ack(ha_conn_t *c, uint64_t seq) {
  if (seq > c->acked && seq <= ha.seq) c->acked = seq;
  if (ha.sync_conn == NULL && c->live && c->acked == ha.seq &&
      atomic_load(&ha.role) == MKV_HA_PRIMARY) {
    ha.sync_conn = c; /* from now on every write waits for it; it has all before */
    ha.want_record = 1;
    mkv_info("ha: standby %s is in sync (batch %llu)", c->name, (unsigned long long)c->acked);
    pthread_cond_broadcast(&ha.cond);
  }
  if (c == ha.sync_conn) mkv__ha_settle();
}

/* Reads the acks that arrived; -1 when the standby is gone or broke the protocol. */
static int read_acks(ha_conn_t *c, rbuf_t *r, int wait_ms) {
  int got = fill(c->fd, r, wait_ms);
  if (got < 0) return -1;
  char kind;
  const char *p;
  size_t n;
  int f;
  while ((f = next_frame(r, &kind, &p, &n)) == 1) {
    if (kind != 'A' || n != 8) return -1;
    pthread_mutex_lock(&ha.mu);
    on_ack(c, get_u64(p));
    pthread_mutex_unlock(&ha.mu);
  }
  return f < 0 ? -1 : 0;
}

/* Streams the index as it is now (one LevelDB snapshot) in pages. 0, or -1. */
static int send_snapshot(ha_conn_t *c, mkv_index_iter_t *it, rbuf_t *r) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  int rc = 0;
  size_t at = frame_begin(&b, 'S');
  for (mkv_index_iter_seek(it, "", 0); mkv_index_iter_valid(it) && rc == 0;
       mkv_index_iter_next(it)) {
    size_t kl, vl;
    const char *k = mkv_index_iter_key(it, &kl), *v = mkv_index_iter_value(it, &vl);
    mkv_index_ops_add(&b, k, kl, v, vl);
    if (b.len - at >= PAGE_BYTES) {
      frame_end(&b, at);
      if (c->closing || send_all(c->fd, b.data, b.len) != 0 || read_acks(c, r, 0) != 0) rc = -1;
      mkv_buf_reset(&b);
      at = frame_begin(&b, 'S');
    }
  }
  char *ierr = NULL;
  if (rc == 0 && mkv_index_iter_error(it, &ierr) != 0) {
    mkv_error("ha: reading the index for standby %s's snapshot: %s", c->name, ierr);
    free(ierr);
    rc = -1;
  }
  if (rc == 0 && b.len - at > 1) {
    frame_end(&b, at);
    if (send_all(c->fd, b.data, b.len) != 0) rc = -1;
  }
  mkv_buf_free(&b);
  return rc;
}

/* Refuses a connection with a reason the other side logs. */
static void refuse(int fd, const char *why) {
  send_frame(fd, 'X', why, strlen(why));
}

static void *conn_main(void *arg) {
  ha_conn_t *c = arg;
  mkv_log_set_thread_name("ha-send");
  rbuf_t r = {0};
  mkv_buf_init(&r.buf);
  mkv_buf_t out;
  mkv_buf_init(&out);
  mkv_index_iter_t *it = NULL;
  char kind;
  const char *p;
  size_t n;
  int registered = 0;

  /* 1. hello */
  if (read_frame(c->fd, &r, IO_TIMEOUT_MS, &kind, &p, &n) != 1 || kind != 'H') goto done;
  char *cluster = text_field(p, n, "cluster"), *name = text_field(p, n, "name"),
       *secret = text_field(p, n, "secret");
  int ok = cluster && name && secret && strcmp(cluster, ha.c.cluster) == 0 &&
           strlen(secret) == strlen(ha.c.secret) &&
           CRYPTO_memcmp(secret, ha.c.secret, strlen(secret)) == 0;
  if (name) snprintf(c->name, sizeof(c->name), "%s", name);
  free(cluster);
  free(name);
  if (secret) OPENSSL_cleanse(secret, strlen(secret));
  free(secret);
  if (!ok) {
    mkv_warn("ha: refused a replication connection (%s): wrong cluster or secret", c->name);
    refuse(c->fd, "wrong cluster or secret");
    goto done;
  }
  int64_t their_epoch = text_num(p, n, "epoch");
  long long their_seq = text_num(p, n, "seq");
  int fresh = text_num(p, n, "fresh") != 0;

  /* 2. where it starts: a resume, or a snapshot taken now */
  pthread_mutex_lock(&ha.mu);
  if (atomic_load(&ha.role) != MKV_HA_PRIMARY || ha.stopping) {
    pthread_mutex_unlock(&ha.mu);
    refuse(c->fd, "not the primary");
    goto done;
  }
  int resume = !fresh && their_seq >= 0 && can_resume(their_epoch, (uint64_t)their_seq);
  int64_t snap_epoch = ha.seq_epoch;
  uint64_t snap_seq = ha.seq;
  if (resume) {
    c->next_seq = (uint64_t)their_seq + 1;
    c->acked = (uint64_t)their_seq;
    c->live = 1;
  } else {
    /* The writer may have committed one batch past snap_seq (it waits on mu to log it):
     * the snapshot then holds it too, and applying it again on top changes nothing
     * (a batch puts and deletes whole records). */
    it = mkv_index_iter_new(ha.index);
    c->next_seq = snap_seq + 1;
    c->acked = 0;
    ha.snapshots_sent++;
  }
  c->next = ha.conns;
  ha.conns = c;
  registered = 1;
  int64_t epoch = ha.epoch;
  pthread_mutex_unlock(&ha.mu);
  mkv_info("ha: standby %s joins: %s", c->name,
           resume ? "resumes after its last batch" : "a snapshot of the index, then the stream");

  char welcome[200];
  int wl = snprintf(welcome, sizeof(welcome), "mode %s\nepoch %lld\nseq_epoch %lld\nseq %llu\n",
                    resume ? "resume" : "snapshot", (long long)epoch, (long long)snap_epoch,
                    (unsigned long long)(resume ? (uint64_t)their_seq : snap_seq));
  if (send_frame(c->fd, 'W', welcome, (size_t)wl) != 0) goto done;
  if (!resume) {
    if (send_snapshot(c, it, &r) != 0) goto done;
    mkv_index_iter_free(it);
    it = NULL;
    mkv_buf_t end;
    mkv_buf_init(&end);
    put_u64(&end, (uint64_t)snap_epoch);
    put_u64(&end, snap_seq);
    int rc = send_frame(c->fd, 'E', end.data, end.len);
    mkv_buf_free(&end);
    if (rc != 0) goto done;
    pthread_mutex_lock(&ha.mu);
    c->live = 1; /* its first ack (snap_seq) says it has applied the snapshot */
    pthread_mutex_unlock(&ha.mu);
  }

  /* 3. the live stream */
  uint64_t last_send = mkv_now_ms();
  for (;;) {
    pthread_mutex_lock(&ha.mu);
    if (c->closing || ha.stopping || atomic_load(&ha.role) != MKV_HA_PRIMARY) {
      pthread_mutex_unlock(&ha.mu);
      break;
    }
    mkv_buf_reset(&out);
    int behind = 0;
    while (c->next_seq <= ha.seq && out.len < SEND_BYTES) {
      ha_entry_t *e = mkv__ha_log_find(c->next_seq);
      if (e == NULL) {
        behind = 1;
        break;
      }
      size_t at = frame_begin(&out, 'B');
      put_u64(&out, (uint64_t)e->epoch);
      put_u64(&out, e->seq);
      mkv_buf_addc(&out, (char)(e->sync ? 1 : 0));
      mkv_buf_add(&out, e->ops.data, e->ops.len);
      frame_end(&out, at);
      c->next_seq++;
    }
    int64_t ping_epoch = ha.epoch;
    uint64_t ping_seq = ha.seq;
    pthread_mutex_unlock(&ha.mu);
    if (behind) {
      mkv_warn("ha: standby %s fell behind the log (ha.log_size): it must start over with a "
               "snapshot", c->name);
      refuse(c->fd, "fell behind the primary's log: reconnect for a snapshot");
      break;
    }
    if (out.len == 0 && mkv_now_ms() - last_send >= (uint64_t)PING_MS) {
      size_t at = frame_begin(&out, 'P');
      put_u64(&out, (uint64_t)ping_epoch);
      put_u64(&out, ping_seq);
      frame_end(&out, at);
    }
    if (out.len > 0) {
      if (send_all(c->fd, out.data, out.len) != 0) break;
      last_send = mkv_now_ms();
    }
    /* Wait for acks or new batches. */
    struct pollfd pf[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = c->efd, .events = POLLIN}};
    int pr = poll(pf, 2, out.len >= SEND_BYTES ? 0 : PING_MS);
    if (pr < 0 && errno != EINTR) break;
    if (pf[1].revents & POLLIN) {
      eventfd_t v;
      eventfd_read(c->efd, &v);
    }
    if ((pf[0].revents & (POLLIN | POLLHUP | POLLERR)) && read_acks(c, &r, 0) != 0) break;
  }

done:
  if (it) mkv_index_iter_free(it);
  pthread_mutex_lock(&ha.mu);
  if (registered) conn_unlink(c);
  pthread_mutex_unlock(&ha.mu);
  if (registered) mkv_info("ha: standby %s disconnected", c->name);
  close(c->fd);
  close(c->efd);
  mkv_buf_free(&r.buf);
  mkv_buf_free(&out);
  free(c);
  return NULL;
}

void *mkv__repl_listen_main(void *arg) {
  (void)arg;
  mkv_log_set_thread_name("ha-listen");
  for (;;) {
    int fd = accept(ha.listen_fd, NULL, NULL);
    if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
    pthread_mutex_lock(&ha.mu);
    int stopping = ha.stopping;
    pthread_mutex_unlock(&ha.mu);
    if (stopping) {
      if (fd >= 0) close(fd);
      break;
    }
    if (fd < 0) {
      if (errno != EINTR && errno != ECONNABORTED) usleep(100000);
      continue;
    }
    tune(fd);
    ha_conn_t *c = mkv_calloc(1, sizeof(*c));
    c->fd = fd;
    c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    snprintf(c->name, sizeof(c->name), "?");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (c->efd < 0 || pthread_create(&c->thread, &attr, conn_main, c) != 0) {
      close(fd);
      if (c->efd >= 0) close(c->efd);
      free(c);
    }
    pthread_attr_destroy(&attr);
  }
  /* Detached senders: wait until each has left the list. */
  pthread_mutex_lock(&ha.mu);
  mkv__repl_drop_all();
  while (ha.conns) pthread_cond_wait(&ha.cond, &ha.mu);
  pthread_mutex_unlock(&ha.mu);
  return NULL;
}

/* ---- the standby's stream ---- */

static int connect_to(const char *addr) {
  char host[256], port[16], *err = NULL;
  if (mkv_hostport_split(addr, host, sizeof(host), port, sizeof(port)) != 0) return -1;
  int fd = mkv_httpc_connect(host, port, mkv_now_ms() + 1000, &err);
  free(err); /* the caller logs the address; it retries */
  if (fd >= 0) tune(fd);
  return fd;
}

static int send_ack(int fd, uint64_t seq) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  put_u64(&b, seq);
  int rc = send_frame(fd, 'A', b.data, b.len);
  mkv_buf_free(&b);
  return rc;
}

/* Merges one snapshot page into the index: the page's records are put, and this node's
 * own records between the previous page's last key and this page's last key that the
 * page does not hold are deleted (own: an iterator over the index as it was before the
 * snapshot began). last == NULL: the end -- every own key left goes. */
static int merge_page(mkv_index_iter_t *own, const char *p, size_t n, int final, char **err) {
  mkv_buf_t ops;
  mkv_buf_init(&ops);
  size_t off = 0, kl, vl;
  const char *k, *v;
  int rc;
  while ((rc = mkv_index_ops_next(p, n, &off, &k, &kl, &v, &vl)) == 1) {
    if (v == NULL) {
      rc = -1;
      break;
    }
    for (; mkv_index_iter_valid(own); mkv_index_iter_next(own)) {
      size_t okl;
      const char *ok = mkv_index_iter_key(own, &okl);
      int cmp = memcmp(ok, k, MKV_MIN(okl, kl));
      if (cmp == 0) cmp = okl < kl ? -1 : okl > kl;
      if (cmp >= 0) break;
      mkv_index_ops_add(&ops, ok, okl, NULL, 0); /* not in the primary's index */
    }
    int same = 0;
    if (mkv_index_iter_valid(own)) {
      size_t okl, ovl;
      const char *ok = mkv_index_iter_key(own, &okl);
      if (okl == kl && memcmp(ok, k, kl) == 0) {
        const char *ov = mkv_index_iter_value(own, &ovl);
        same = ovl == vl && memcmp(ov, v, vl) == 0;
        mkv_index_iter_next(own);
      }
    }
    if (!same) mkv_index_ops_add(&ops, k, kl, v, vl);
  }
  if (rc < 0) {
    *err = mkv_strdup("a malformed snapshot page");
    mkv_buf_free(&ops);
    return -1;
  }
  if (final) {
    for (; mkv_index_iter_valid(own); mkv_index_iter_next(own)) {
      size_t okl;
      const char *ok = mkv_index_iter_key(own, &okl);
      mkv_index_ops_add(&ops, ok, okl, NULL, 0);
    }
  }
  rc = ops.len ? mkv_index_apply(ha.index, ops.data, ops.len, final, err) : 0;
  mkv_buf_free(&ops);
  return rc;
}

/* One session with the primary at addr, until it breaks. */
static void stream_from(const char *addr, const char *primary_name) {
  int fd = connect_to(addr);
  if (fd < 0) {
    mkv__ha_set_error("cannot connect to the primary %s at %s", primary_name, addr);
    return;
  }
  rbuf_t r = {0};
  mkv_buf_init(&r.buf);
  mkv_buf_t ops;
  mkv_buf_init(&ops);
  mkv_index_iter_t *own = NULL;
  char *err = NULL;
  char kind;
  const char *p;
  size_t n;

  pthread_mutex_lock(&ha.mu);
  int fresh = ha.was_primary || ha.resyncing;
  char hello[700];
  int hl = snprintf(hello, sizeof(hello), "cluster %s\nname %s\nsecret %s\nepoch %lld\nseq %llu\nfresh %d\n",
                    ha.c.cluster, ha.c.name, ha.c.secret, (long long)ha.seq_epoch,
                    (unsigned long long)ha.seq, fresh);
  pthread_mutex_unlock(&ha.mu);
  int rc = send_frame(fd, 'H', hello, (size_t)hl);
  OPENSSL_cleanse(hello, sizeof(hello));
  if (rc != 0 || read_frame(fd, &r, IO_TIMEOUT_MS, &kind, &p, &n) != 1) goto done;
  if (kind == 'X') {
    mkv__ha_set_error("the primary %s refused: %.*s", primary_name, (int)n, p);
    goto done;
  }
  if (kind != 'W') goto done;
  char *mode = text_field(p, n, "mode");
  int snapshot = mode && strcmp(mode, "snapshot") == 0;
  free(mode);
  int64_t epoch = text_num(p, n, "epoch");
  int64_t snap_epoch = text_num(p, n, "seq_epoch");
  long long snap_seq = text_num(p, n, "seq");
  pthread_mutex_lock(&ha.mu);
  if (epoch < ha.epoch) { /* an old primary: a newer one holds the lease */
    pthread_mutex_unlock(&ha.mu);
    mkv__ha_set_error("%s is the primary of epoch %lld, older than %lld", primary_name,
                      (long long)epoch, (long long)ha.epoch);
    goto done;
  }
  ha.epoch = epoch;
  if (snapshot) {
    ha.resyncing = 1;
    mkv__ha_save_state(1);
  }
  pthread_mutex_unlock(&ha.mu);

  if (snapshot) {
    mkv_info("ha: receiving a snapshot of the index from %s", primary_name);
    own = mkv_index_iter_new(ha.index);
    mkv_index_iter_seek(own, "", 0);
    for (;;) {
      int f = read_frame(fd, &r, IO_TIMEOUT_MS * 2, &kind, &p, &n);
      if (f != 1) goto done;
      if (kind == 'S') {
        if (merge_page(own, p, n, 0, &err) != 0) goto done;
      } else if (kind == 'E' && n == 16) {
        if (merge_page(own, "", 0, 1, &err) != 0) goto done;
        snap_epoch = (int64_t)get_u64(p);
        snap_seq = (long long)get_u64(p + 8);
        break;
      } else {
        goto done;
      }
    }
    mkv_index_iter_free(own);
    own = NULL;
    pthread_mutex_lock(&ha.mu);
    ha.seq = (uint64_t)snap_seq;
    ha.seq_epoch = snap_epoch;
    ha.resyncing = 0;
    ha.was_primary = 0;
    mkv__ha_save_state(1);
    pthread_mutex_unlock(&ha.mu);
    mkv_info("ha: snapshot applied (batch %lld)", snap_seq);
  }
  if (send_ack(fd, (uint64_t)snap_seq) != 0) goto done;
  pthread_mutex_lock(&ha.mu);
  ha.streaming = 1;
  ha.heard_ms = mkv_now_ms();
  pthread_mutex_unlock(&ha.mu);

  /* The live stream: every whole batch frame that has arrived goes in one LevelDB write,
   * then one ack. */
  uint64_t heard = mkv_now_ms();
  for (;;) {
    pthread_mutex_lock(&ha.mu);
    int go = !ha.stopping && atomic_load(&ha.role) == MKV_HA_STANDBY &&
             strcmp(ha.primary_name, primary_name) == 0;
    pthread_mutex_unlock(&ha.mu);
    if (!go) break;
    int got = fill(fd, &r, 250);
    if (got < 0) break;
    if (got == 0) {
      if (mkv_now_ms() - heard >= SILENCE_MS) {
        mkv__ha_set_error("the primary %s went silent", primary_name);
        break;
      }
      continue;
    }
    heard = mkv_now_ms();
    pthread_mutex_lock(&ha.mu);
    ha.heard_ms = heard;
    pthread_mutex_unlock(&ha.mu);
    mkv_buf_reset(&ops);
    uint64_t first = 0, last = 0;
    int64_t last_epoch = 0;
    int ping = 0, sync = 0, f;
    while ((f = next_frame(&r, &kind, &p, &n)) == 1) {
      if (kind == 'B' && n >= 17) {
        int64_t be = (int64_t)get_u64(p);
        uint64_t bs = get_u64(p + 8);
        pthread_mutex_lock(&ha.mu);
        uint64_t want = (last ? last : ha.seq) + 1;
        int64_t known = ha.epoch;
        pthread_mutex_unlock(&ha.mu);
        if (bs != want || be < known) {
          mkv__ha_set_error("batch %llu of epoch %lld from %s, expected batch %llu",
                            (unsigned long long)bs, (long long)be, primary_name,
                            (unsigned long long)want);
          goto done;
        }
        if (!first) first = bs;
        last = bs;
        last_epoch = be;
        int bsync = p[16] != 0;
        sync |= bsync;
        /* Logged one by one (a promoted standby serves resumes from its log). */
        mkv_buf_t one;
        mkv_buf_init(&one);
        mkv_buf_add(&one, p + 17, n - 17);
        mkv_buf_add(&ops, p + 17, n - 17);
        pthread_mutex_lock(&ha.mu);
        mkv__ha_log_append(be, bs, bsync, &one);
        pthread_mutex_unlock(&ha.mu);
        mkv_buf_free(&one);
      } else if (kind == 'P' && n == 16) {
        pthread_mutex_lock(&ha.mu);
        ha.primary_seq = get_u64(p + 8);
        pthread_mutex_unlock(&ha.mu);
        ping = 1;
      } else if (kind == 'X') {
        mkv__ha_set_error("the primary %s closed the stream: %.*s", primary_name, (int)n, p);
        goto done;
      } else {
        goto done;
      }
    }
    if (f < 0) goto done;
    if (last) {
      /* Synced when any batch of the group was on the primary: a confirmation then
       * means on disk here too; the others (a PUT's soft-deleted mark) need not be. */
      if (mkv_index_apply(ha.index, ops.data, ops.len, sync, &err) != 0) goto done;
      pthread_mutex_lock(&ha.mu);
      ha.seq = last;
      ha.seq_epoch = last_epoch;
      if (ha.primary_seq < last) ha.primary_seq = last;
      mkv__ha_save_state(0);
      pthread_mutex_unlock(&ha.mu);
    }
    if ((last || ping) && send_ack(fd, last ? last : ha.seq) != 0) break;
  }

done:
  if (err) {
    mkv__ha_set_error("%s", err);
    mkv_error("ha: the stream from %s stopped: %s", primary_name, err);
    free(err);
  }
  if (own) mkv_index_iter_free(own);
  pthread_mutex_lock(&ha.mu);
  ha.streaming = 0; /* reads: the control thread decides (ha.c, update_reads_local) */
  pthread_mutex_unlock(&ha.mu);
  close(fd);
  mkv_buf_free(&r.buf);
  mkv_buf_free(&ops);
}

void *mkv__repl_recv_main(void *arg) {
  (void)arg;
  mkv_log_set_thread_name("ha-recv");
  pthread_mutex_lock(&ha.mu);
  while (!ha.stopping) {
    char addr[256], name[128];
    int ready = atomic_load(&ha.role) == MKV_HA_STANDBY && ha.primary_repl[0] &&
                strcmp(ha.primary_name, ha.c.name) != 0;
    if (ready) {
      snprintf(addr, sizeof(addr), "%s", ha.primary_repl);
      snprintf(name, sizeof(name), "%s", ha.primary_name);
      pthread_mutex_unlock(&ha.mu);
      stream_from(addr, name);
      pthread_mutex_lock(&ha.mu);
    }
    if (ha.stopping) break;
    mkv__ha_wait(200);
  }
  pthread_mutex_unlock(&ha.mu);
  return NULL;
}
