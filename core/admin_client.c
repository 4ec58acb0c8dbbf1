/* admin_client.c: the command side of the admin commands (`mkv rebuild`, `rebalance`,
 * `verify`, `gc`, `run FILE.lua`): it runs the job inside the server that holds the
 * index when there is one (found through <db>/mkv.admin; admin_proto.h), else opens
 * the index and runs the job in this process, as the Go original's subcommands do --
 * and shows the output of both the same way: reports on stdout, logs and a progress
 * line on stderr (one live line on a terminal, a plain line every 10 s otherwise). */
#include "mkv/admin_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <uv.h>

#include "mkv/admin.h"
#include "mkv/admin_proto.h"
#include "mkv/httpc.h"
#include "mkv/index.h"
#include "mkv/log.h"
#include "mkv/text.h"

typedef struct admin_out_s {
  int tty;
  int live_line; /* a progress line is on the terminal, to be overwritten */
  uint64_t last_plain_ms;
  const char *script;
  int code;
} admin_out_t;

/* One progress line. A value below 0 is one the script does not keep (an operator's
 * script that never counts failures, say: admin.c): left out, not shown as 0; a script
 * that keeps none gets no progress line. */
static void show_progress(admin_out_t *o, const char *text, size_t len) {
  mkv_admin_progress_t p;
  if (mkv_admin_progress_parse(text, len, &p) != 0) return;
  mkv_buf_t line;
  mkv_buf_init(&line);
  mkv_buf_addf(&line, "%s%s%s%s: ", o->script, p.phase[0] ? " (" : "", p.phase,
               p.phase[0] ? ")" : "");
  if (!mkv_admin_progress_text(&line, &p)) {
    /* nothing the script keeps: no line at all */
  } else if (o->tty) {
    fprintf(stderr, "\r\033[K%s", line.data);
    o->live_line = 1;
  } else if (mkv_now_ms() - o->last_plain_ms >= 10000) {
    /* Not a terminal: a plain line every 10 s, for logs. */
    fprintf(stderr, "%s\n", line.data);
    o->last_plain_ms = mkv_now_ms();
  }
  fflush(stderr);
  mkv_buf_free(&line);
}

/* The sink of both kinds of run: text is borrowed and not NUL-terminated. */
static void admin_line(void *ctx, int kind, const char *text, size_t len) {
  admin_out_t *o = ctx;
  if (kind == MKV_ADMIN_PROGRESS) {
    show_progress(o, text, len);
    return;
  }
  if (o->live_line) {
    fputs("\r\033[K", stderr);
    o->live_line = 0;
  }
  FILE *f = kind == MKV_ADMIN_LOG ? stderr : stdout;
  fwrite(text, 1, len, f);
  fputc('\n', f);
  fflush(f);
}

/* ---- offline: the job runs here ---- */

static void admin_done(void *arg, int code) {
  admin_out_t *o = arg;
  if (o->live_line) fputc('\n', stderr);
  o->code = code;
}

/* How a signal that stopped a job is named to the operator. */
static const char *stopped_by(int signum) {
  return signum == SIGINT ? "Ctrl-C" : "SIGTERM";
}

static const char *base_name(const char *script) {
  return strrchr(script, '/') ? strrchr(script, '/') + 1 : script;
}

static uv_signal_t admin_sigint, admin_sigterm;
static mkv_admin_t *admin_running;
static int admin_signal; /* the signal that cancelled the offline run, or 0 */

static void on_admin_signal(uv_signal_t *h, int signum) {
  (void)h;
  fprintf(stderr, "\nmkv: %s: cancelling (every step so far is safe to keep)\n",
          signum == SIGINT ? "SIGINT" : "SIGTERM");
  /* A run that had already ended keeps its own exit code. */
  if (admin_running && mkv_admin_cancel(admin_running) == 0) admin_signal = signum;
  uv_close((uv_handle_t *)&admin_sigint, NULL);
  uv_close((uv_handle_t *)&admin_sigterm, NULL);
}

static int run_offline(const mkv_config_t *cfg, mkv_index_t *index, mkv_admin_opts_t *o) {
  admin_out_t out = {isatty(STDERR_FILENO), 0, 0, o->script, 2};
  o->sink.line = admin_line;
  o->sink.ctx = &out;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char *err = NULL;
  if (mkv_admin_start(&loop, cfg, index, o, admin_done, &out, &admin_running, &err) != 0) {
    mkv_print_error(err);
    free(err);
    uv_loop_close(&loop);
    return 2;
  }
  uv_signal_init(&loop, &admin_sigint);
  uv_signal_init(&loop, &admin_sigterm);
  uv_signal_start(&admin_sigint, on_admin_signal, SIGINT);
  uv_signal_start(&admin_sigterm, on_admin_signal, SIGTERM);
  uv_unref((uv_handle_t *)&admin_sigint);
  uv_unref((uv_handle_t *)&admin_sigterm);
  uv_run(&loop, UV_RUN_DEFAULT);
  admin_running = NULL;
  if (!uv_is_closing((uv_handle_t *)&admin_sigint)) {
    uv_close((uv_handle_t *)&admin_sigint, NULL);
    uv_close((uv_handle_t *)&admin_sigterm, NULL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) mkv_error("admin loop closed with handles open");
  if (admin_signal) {
    /* The shell's convention for a command a signal stopped: 128 + its number. */
    fprintf(stderr, "mkv: cancelled: %s stopped by %s\n", base_name(o->script),
            stopped_by(admin_signal));
    return 128 + admin_signal;
  }
  return out.code;
}

/* ---- online: the job runs in the server ---- */

/* Connects to an admin listener at "host:port": a connected fd, or -1. */
static int connect_addr(const char *line) {
  char host[256], port[16], *err = NULL;
  if (mkv_hostport_split(line, host, sizeof(host), port, sizeof(port)) != 0) return -1;
  int fd = mkv_httpc_connect(host, port, mkv_now_ms() + 10000, &err);
  free(err);
  /* the protocol reads and writes blocking (with SO_RCVTIMEO where it must not hang) */
  if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

/* Connects to the admin listener named in <db>/mkv.admin: a connected fd, or -1 when
 * there is no such file or nothing answers there (a stale file after a crash). */
static int connect_admin(const mkv_config_t *cfg, char *addr, size_t addrlen) {
  char *path = mkv_admin_addr_file(cfg->db);
  FILE *f = fopen(path, "r");
  free(path);
  if (f == NULL) return -1;
  char line[300] = "";
  if (fgets(line, sizeof(line), f) == NULL) line[0] = '\0';
  fclose(f);
  line[strcspn(line, "\r\n")] = '\0';
  snprintf(addr, addrlen, "%s", line);
  return connect_addr(line);
}

static int send_all(int fd, const char *p, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t k = send(fd, p + off, n - off, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    off += (size_t)k;
  }
  return 0;
}

/* Ctrl-C (or SIGTERM) while a job runs in the server: the handler only records it, and
 * interrupts the blocking recv (no SA_RESTART); read_answer then asks the server to
 * cancel. SA_RESETHAND: a second Ctrl-C ends the command at once (the server then
 * cancels the job because its client went away). */
static volatile sig_atomic_t online_signal;

static void on_online_signal(int signum) {
  online_signal = signum;
}

/* Asks the server at addr to cancel job `job`, on a connection of its own: the job's
 * answer keeps streaming on the first one, to its end. 1 when the server stops the job,
 * 0 when it is no longer running (it ended meanwhile: its exit code stands), -1 when the
 * server could not be asked. */
static int ask_cancel(const char *addr, const char *job) {
  int fd = connect_addr(addr);
  if (fd < 0) return -1;
  struct timeval tv = {10, 0}; /* a server that does not answer: the command goes */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char req[256], ans[256];
  int n = snprintf(req, sizeof(req),
                   "POST %s?job=%s HTTP/1.0\r\nHost: mkv\r\nContent-Length: 0\r\n\r\n",
                   MKV_ADMIN_CANCEL_PATH, job);
  int status = -1;
  size_t got = 0;
  if (send_all(fd, req, (size_t)n) == 0) {
    while (got < sizeof(ans) - 1 && memchr(ans, '\n', got) == NULL) {
      ssize_t k = recv(fd, ans + got, sizeof(ans) - 1 - got, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break;
      got += (size_t)k;
    }
    ans[got] = '\0';
    if (sscanf(ans, "HTTP/1.%*d %d", &status) != 1) status = -1;
  }
  close(fd);
  return status == 200 ? 1 : status == 404 ? 0 : -1;
}

/* Reads the answer: an HTTP/1.0 status line and headers, then the job's lines until the
 * server closes. Returns the exit code; -421 when the server is a standby index node that
 * names the primary's admin listener (into primary). After Ctrl-C, the server is asked to
 * cancel the job (at addr) and the command says so once the job has ended: 128 + the
 * signal's number. */
static int read_answer(int fd, admin_out_t *out, const char *addr, char *primary, size_t plen) {
  mkv_buf_t in;
  mkv_buf_init(&in);
  int status = 0, in_body = 0, got_exit = 0, asked = 0, cancelled = 0;
  char buf[65536], job[32] = "";
  for (;;) {
    if (online_signal && !asked && in_body && status == 200 && job[0]) {
      asked = online_signal;
      if (out->live_line) {
        fputc('\n', stderr);
        out->live_line = 0;
      }
      fprintf(stderr, "mkv: %s: cancelling job %s (every step so far is safe to keep)\n",
              online_signal == SIGINT ? "SIGINT" : "SIGTERM", job);
      int rc = ask_cancel(addr, job);
      if (rc < 0) {
        fprintf(stderr, "mkv: the server at %s did not take the cancel: closing the "
                        "connection (the server cancels a job whose command went away)\n", addr);
        mkv_buf_free(&in);
        return 128 + asked;
      }
      cancelled = rc;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    mkv_buf_add(&in, buf, (size_t)n);
    size_t start = 0;
    char *nl;
    while ((nl = memchr(in.data + start, '\n', in.len - start)) != NULL) {
      char *line = in.data + start;
      size_t len = (size_t)(nl - line);
      if (len && line[len - 1] == '\r') len--;
      start = (size_t)(nl - in.data) + 1;
      if (!in_body) {
        if (status == 0 && sscanf(line, "HTTP/1.%*d %d", &status) != 1) status = -1;
        if (len > 20 && strncasecmp(line, "X-Mkv-Primary-Admin:", 20) == 0) {
          const char *v = line + 20;
          while (*v == ' ') v++;
          snprintf(primary, plen, "%.*s", (int)(len - (size_t)(v - line)), v);
        }
        size_t hl = strlen(MKV_ADMIN_JOB_HEADER);
        if (len > hl + 1 && strncasecmp(line, MKV_ADMIN_JOB_HEADER ":", hl + 1) == 0) {
          const char *v = line + hl + 1;
          size_t vl = len - hl - 1;
          while (vl && *v == ' ') v++, vl--;
          if (vl < sizeof(job) && strspn(v, "0123456789") >= vl)
            snprintf(job, sizeof(job), "%.*s", (int)vl, v);
        }
        if (len == 0) in_body = 1;
      } else if (status == 421 && primary[0]) { /* a standby: the primary runs it */
        continue;
      } else if (status != 200) { /* why the job was refused */
        fprintf(stderr, "mkv: the server refused the job (%d): %.*s\n", status, (int)len, line);
      } else if (len >= 2 && line[0] == MKV_ADMIN_EXIT && line[1] == ' ') {
        out->code = atoi(line + 2);
        got_exit = 1;
      } else if (len >= 2 && line[1] == ' ') {
        admin_line(out, line[0], line + 2, len - 2);
      }
    }
    memmove(in.data, in.data + start, in.len - start);
    in.len -= start;
  }
  mkv_buf_free(&in);
  if (out->live_line) fputc('\n', stderr);
  if (status == 421 && primary[0]) return -421;
  if (status != 200) return 2;
  if (!got_exit) {
    fprintf(stderr, "mkv: the server closed the connection before the job ended\n");
    return asked ? 128 + asked : 1;
  }
  if (cancelled) {
    fprintf(stderr, "mkv: cancelled: job %s (%s) stopped by %s\n", job, out->script,
            stopped_by(asked));
    return 128 + asked;
  }
  return out->code;
}

/* Runs the job inside the server that holds the index; its options go as typed.
 * Ctrl-C asks the server to cancel the job (read_answer); a command that goes away
 * without asking (a second Ctrl-C, a kill) cancels it too. */
static int run_online(int fd, const char *addr, const char *name, int argc,
                      const char *const *argv, const char *source, size_t slen, int redirected) {
  mkv_buf_t q, req;
  mkv_buf_init(&q);
  mkv_buf_init(&req);
  mkv_admin_proto_query(&q, name, argc, argv);
  /* HTTP/1.0: the answer streams until the server closes; no chunk framing to undo. */
  mkv_buf_addf(&req, "POST %s?%s HTTP/1.0\r\nHost: mkv\r\nContent-Length: %zu\r\n\r\n",
               MKV_ADMIN_RUN_PATH, q.data, slen);
  mkv_buf_add(&req, source ? source : "", slen);
  int sent = send_all(fd, req.data, req.len);
  mkv_buf_free(&q);
  mkv_buf_free(&req);
  if (sent != 0) {
    fprintf(stderr, "mkv: cannot talk to the server's admin listener at %s: %s\n", addr,
            strerror(errno));
    close(fd);
    return 2;
  }
  fprintf(stderr, "mkv: a server holds the index: running %s inside it (%s)\n", name, addr);
  admin_out_t out = {isatty(STDERR_FILENO), 0, 0, name, 2};
  char primary[256] = "";
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_online_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int code = read_answer(fd, &out, addr, primary, sizeof(primary));
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  close(fd);
  if (code == -421) {
    /* A standby index node: the job goes to the primary's admin listener, once. */
    int pfd = redirected ? -1 : connect_addr(primary);
    if (pfd < 0) {
      fprintf(stderr, "mkv: this index node is a standby; the primary's admin listener %s %s: "
                      "run the command on the primary\n", primary,
              redirected ? "is a standby too" : "cannot be reached from here");
      return 2;
    }
    fprintf(stderr, "mkv: %s is a standby index node: the primary runs %s\n", addr, name);
    return run_online(pfd, primary, name, argc, argv, source, slen, 1);
  }
  return code;
}

/* Reads a whole file (an operator's script sent to the server). */
static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  mkv_buf_t b;
  mkv_buf_init(&b);
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) mkv_buf_add(&b, chunk, n);
  fclose(f);
  *len = b.len;
  return b.data ? b.data : mkv_strdup("");
}

static int is_script_file(const char *script) {
  size_t sl = strlen(script);
  return strchr(script, '/') || (sl > 4 && strcmp(script + sl - 4, ".lua") == 0);
}

int mkv_admin_client_run(const mkv_config_t *cfg, const char *script, int argc, char **argv) {
  /* The same command works whether or not a server holds the index: with one, the job
   * runs inside it, under its key locks, while it serves. */
  char addr[300];
  int fd = connect_admin(cfg, addr, sizeof(addr));
  if (fd >= 0) {
    size_t slen = 0;
    char *source = NULL;
    const char *name = script;
    if (is_script_file(script)) {
      source = read_file(script, &slen);
      if (source == NULL) {
        fprintf(stderr, "mkv: cannot read %s: %s\n", script, strerror(errno));
        close(fd);
        return 2;
      }
      name = strrchr(script, '/') ? strrchr(script, '/') + 1 : script;
    }
    int rc = run_online(fd, addr, name, argc, (const char *const *)argv, source, slen, 0);
    free(source);
    return rc;
  }
  mkv_admin_opts_t o;
  memset(&o, 0, sizeof(o));
  o.script = script;
  const char **rest = mkv_calloc((size_t)argc + 1, sizeof(char *));
  int nrest = 0, rc;
  char *err = NULL;
  mkv_index_t *index = NULL;
  if (mkv_admin_parse_opts(&o, argc, (const char *const *)argv, rest, &nrest, &err) != 0) {
    mkv_print_error(err);
    rc = 2;
  } else if (mkv_index_open(&index, cfg->db, cfg, &err) != 0) {
    mkv_print_error(err);
    rc = 1;
  } else {
    o.argc = nrest;
    o.argv = rest;
    rc = run_offline(cfg, index, &o);
    mkv_index_close(index);
  }
  free(err);
  free(rest);
  return rc;
}
