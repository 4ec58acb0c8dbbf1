/* main.c: the command line (a config file and the Go original's flags), subcommands,
 * the listening socket, signals, and the worker threads. */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "mkv/admin.h"
#include "mkv/admin_client.h"
#include "mkv/admin_proto.h"
#include "mkv/api.h"
#include "mkv/config.h"
#include "mkv/hash.h"
#include "mkv/ha.h"
#include "mkv/health.h"
#include "mkv/index.h"
#include "mkv/record.h"
#include "mkv/log.h"
#include "mkv/policy.h"
#include "mkv/metrics.h"
#include "mkv/repair.h"
#include "mkv/status.h"
#include "mkv/worker.h"

#define MKV_VERSION "0.1.0"
#define MAX_FLAGS 64

static const char usage_text[] =
    "Usage: mkv [-c config.lua] [flags] <command> [options]\n"
    "\n"
    "Commands:\n"
    "  server        serve the HTTP API (the default with -c)\n"
    "  index-flush   flush the index's journal into its tables, for the Go original\n"
    "  rebuild [--md5]            rebuild the index from the volumes\n"
    "  rebalance [--dry-run] [--grace D]  move data to where placement wants it\n"
    "  verify [--deep] [--repair] check every live key's copies; find orphan files\n"
    "  gc [--dry-run]             remove unlinked keys' files and orphan files\n"
    "  backup DIR                 copy the index (a consistent snapshot) to a new DIR\n"
    "  run FILE.lua [options]     run an admin script of your own\n"
    "  (admin commands also take --concurrency N and --bandwidth RATE, e.g. 100MB/s)\n"
    "\n"
    "Flags (those of the Go minikeyvalue; given with -c they override the file):\n"
    "  -c FILE           config file (a Lua chunk returning a table)\n"
    "  -volumes H:P,...  volume servers, comma-separated\n"
    "  -db DIR           index directory (LevelDB)\n"
    "  -port N           port to listen on (default 3000)\n"
    "  -replicas N       copies of each value (default 3)\n"
    "  -subvolumes N     directories per volume (default 10)\n"
    "  -protect          DELETE requires a prior UNLINK\n"
    "  -md5sum=BOOL      store each value's MD5 (default true)\n"
    "  -voltimeout D     timeout of the volume probe of a GET (default 1s)\n"
    "  -fallback H:P     redirect missing keys there\n"
    "  -v                log every request\n"
    "  -listen ADDR      address to bind (default: every interface)\n"
    "  -workers N        worker threads (default: one per core)\n"
    "  -admin HOST:PORT  admin listener (default 127.0.0.1:0, a free port)\n"
    "  -status HOST:PORT read-only status page, /metrics, /health (default off;\n"
    "                    a bare PORT is loopback)\n"
    "  -status-token-file FILE     the status listener needs Authorization: Bearer\n"
    "                    <a line of FILE>\n"
    "  -public-url URL   redirect clients to URL/<volume>/<path> (a proxy) instead of\n"
    "                    to the volumes\n"
    "  -access-log FILE  one line per request (Common Log Format + seconds); - = stderr\n"
    "  -write-secret-file FILE     writes need Authorization: Bearer <a line of FILE>\n"
    "  -volume-key-file FILE       send the key in FILE to the volumes (X-Mkv-Volume-Key)\n"
    "  -redirect-secret-file FILE  sign redirects for the volumes' nginx secure_link\n"
    "  -write-quorum Q   copies a PUT needs for its 201: majority (default), all, or N\n"
    "  -repair-interval D  background repair's pace (default 10s; 0 = off)\n"
    "  -read-check MODE  head (default: a HEAD per replica) or none (volume health)\n";

static void usage(FILE *f) {
  fputs(usage_text, f);
}

typedef struct args_s {
  const char *config;
  mkv_flag_t flags[MAX_FLAGS];
  int nflags;
  const char *command;
  char **rest;
  int nrest;
} args_t;

/* Go's flag package: -flag, --flag, -flag=value, -flag value (not for booleans);
 * parsing stops at the first non-flag argument or at "--". */
static int parse_args(int argc, char **argv, args_t *a) {
  memset(a, 0, sizeof(*a));
  int i = 1;
  for (; i < argc; i++) {
    char *arg = argv[i];
    if (arg[0] != '-' || arg[1] == '\0') break;
    if (strcmp(arg, "--") == 0) {
      i++;
      break;
    }
    char *namebuf = arg + 1;
    if (*namebuf == '-') namebuf++;
    /* argv is ours to cut: "-name=value" becomes "name" and "value" in place. */
    char *eq = strchr(namebuf, '=');
    if (eq) *eq = '\0';
    if (*namebuf == '\0') {
      fprintf(stderr, "mkv: bad flag syntax: %s\n", arg);
      return -1;
    }
    if (strcmp(namebuf, "h") == 0 || strcmp(namebuf, "help") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strcmp(namebuf, "version") == 0) {
      printf("mkv %s\n", MKV_VERSION);
      exit(0);
    }
    const char *value = NULL;
    if (strcmp(namebuf, "c") == 0 || strcmp(namebuf, "config") == 0) {
      if (eq)
        value = eq + 1;
      else if (i + 1 < argc)
        value = argv[++i];
      else {
        fprintf(stderr, "mkv: flag needs an argument: -%s\n", namebuf);
        return -1;
      }
      a->config = value;
      continue;
    }
    int is_bool;
    if (mkv_config_flag_kind(namebuf, &is_bool) != 0) {
      char *near = mkv_config_flag_suggest(namebuf);
      if (near)
        fprintf(stderr, "mkv: flag provided but not defined: -%s (did you mean -%s?)\n",
                namebuf, near);
      else
        fprintf(stderr, "mkv: flag provided but not defined: -%s\n", namebuf);
      free(near);
      return -1;
    }
    if (eq)
      value = eq + 1;
    else if (is_bool)
      value = "true";
    else if (i + 1 < argc)
      value = argv[++i];
    else {
      fprintf(stderr, "mkv: flag needs an argument: -%s\n", namebuf);
      return -1;
    }
    if (a->nflags == MAX_FLAGS) {
      fprintf(stderr, "mkv: too many flags\n");
      return -1;
    }
    a->flags[a->nflags].name = namebuf;
    a->flags[a->nflags].value = value;
    a->nflags++;
  }
  if (i < argc) a->command = argv[i++];
  a->rest = argv + i;
  a->nrest = argc - i;
  return 0;
}

/* ---- the listening socket ---- */

static int bind_listener(const mkv_config_t *cfg, char **err) {
  char port[16];
  snprintf(port, sizeof(port), "%d", cfg->port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int any = strcmp(cfg->listen, "*") == 0;
  int rc;
  if (any) {
    hints.ai_family = AF_INET6; /* dual-stack "::" first, as Go's ":port" */
    rc = getaddrinfo(NULL, port, &hints, &res);
  } else {
    hints.ai_family = AF_UNSPEC;
    rc = getaddrinfo(cfg->listen, port, &hints, &res);
  }
  if (rc != 0) {
    *err = mkv_sprintf("cannot resolve listen address %s: %s", cfg->listen, gai_strerror(rc));
    return -1;
  }
  int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
  if (fd < 0 && any && (errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT)) {
    freeaddrinfo(res);
    hints.ai_family = AF_INET;
    if (getaddrinfo(NULL, port, &hints, &res) != 0) res = NULL;
    fd = res ? socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0) : -1;
  }
  if (fd < 0) {
    *err = mkv_sprintf("cannot create a socket: %s", strerror(errno));
    if (res) freeaddrinfo(res);
    return -1;
  }
  int one = 1, zero = 0;
  /* SO_REUSEADDR lets a restart bind while old connections sit in TIME_WAIT; it does
   * not let two listeners share the port on Linux, so a busy port still fails. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (res->ai_family == AF_INET6 && any)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
    int e = errno;
    *err = e == EADDRINUSE
               ? mkv_sprintf("port %d is already in use (another mkv or server is running?)",
                             cfg->port)
               : mkv_sprintf("cannot bind %s:%d: %s", cfg->listen, cfg->port, strerror(e));
    close(fd);
    freeaddrinfo(res);
    return -1;
  }
  freeaddrinfo(res);
  if (listen(fd, 4096) != 0) {
    *err = mkv_sprintf("cannot listen on port %d: %s", cfg->port, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* ---- server ---- */

static mkv_worker_t *workers;
static int nworkers;
static mkv_worker_t *admin_worker_p;
static mkv_worker_t *status_worker_p; /* the status listener's, when status_listen is on */
static uv_signal_t sigint, sigterm, sighup;

/* ---- SIGHUP: reload ---- */

static const args_t *server_args;
static const mkv_config_t *current_cfg;
static mkv_config_t **retired; /* every config replaced by a reload: freed at exit */
static int nretired;

/* What a reload cannot change: the sockets, the index and the threads. A new value
 * there refuses the whole reload (nothing half-applied). Returns the field's name. */
static const char *restart_only_change(const mkv_config_t *a, const mkv_config_t *b) {
  if (strcmp(a->listen, b->listen) != 0) return "listen";
  if (a->port != b->port) return "port";
  if (strcmp(a->db, b->db) != 0) return "db";
  if (strcmp(a->admin_listen, b->admin_listen) != 0) return "admin_listen";
  if (strcmp(a->status_listen, b->status_listen) != 0) return "status_listen";
  if (a->workers != b->workers) return "workers";
  if (a->leveldb.cache_mb != b->leveldb.cache_mb ||
      a->leveldb.write_buffer_mb != b->leveldb.write_buffer_mb ||
      a->leveldb.max_file_mb != b->leveldb.max_file_mb ||
      a->leveldb.max_open_files != b->leveldb.max_open_files ||
      a->leveldb.bloom_bits != b->leveldb.bloom_bits)
    return "leveldb";
  if (a->limits.suspect_time_ms != b->limits.suspect_time_ms) return "limits.suspect_time";
  if (mkv_ha_config_differs(&a->ha, &b->ha)) return "ha";
  return NULL;
}

/* Returns owned: the policy of each kind, as both the startup and the reload log lines
 * give it ("placement=default replicas=default ... read=read_zone"). */
static char *policies_text(const mkv_config_t *cfg) {
  mkv_buf_t b;
  mkv_buf_init(&b);
  for (int k = 0; k < MKV_POLICY_KINDS; k++)
    mkv_buf_addf(&b, "%s%s=%s", k ? " " : "", mkv_policy_kind_names[k], cfg->policies[k]);
  return b.data;
}

/* Loads the config file and policy scripts again, checks them as at startup, and only
 * if all is well hands every worker the new config and a fresh policy state; otherwise
 * the old one keeps serving and one log line says why. Also reopens the access log
 * (logrotate). */
static void reload(void) {
  char *err = NULL;
  mkv_config_t *next = mkv_calloc(1, sizeof(*next));
  mkv_policy_t **pol = mkv_calloc((size_t)nworkers, sizeof(*pol));
  const char *field;
  int i = 0;
  if (mkv_config_load(next, server_args->config, server_args->flags, server_args->nflags,
                      "server", &err) != 0) {
    mkv_error("reload refused: %s; still serving the previous config", err);
    free(next);
    goto refused;
  }
  if ((field = restart_only_change(current_cfg, next)) != NULL) {
    mkv_error("reload refused: %s changed, which needs a restart; still serving the "
              "previous config", field);
    goto refused_cfg;
  }
  for (i = 0; i < nworkers; i++) {
    if (mkv_policy_new(next, &pol[i], &err) != 0) {
      mkv_error("reload refused: %s; still serving the previous config", err);
      goto refused_cfg;
    }
  }
  if (mkv_access_log_open(next->access_log, &err) != 0) {
    mkv_error("reload refused: %s; still serving the previous config", err);
    goto refused_cfg;
  }
  if (mkv_health_reload(next) != 0) {
    mkv_error("reload refused: too many volumes were added for this process (restart mkv "
              "to serve them); still serving the previous config");
    goto refused_cfg;
  }
  mkv_health_set_config(next);
  mkv_repair_want_scan(); /* placement may have changed */
  for (i = 0; i < nworkers; i++) mkv_worker_reload(&workers[i], next, pol[i]);
  mkv_metrics_configured(next->volumes, next->nvolumes);
  if (admin_worker_p) mkv_worker_reload(admin_worker_p, next, NULL);
  if (status_worker_p) mkv_worker_reload(status_worker_p, next, NULL);
  retired = mkv_realloc(retired, (size_t)(nretired + 1) * sizeof(*retired));
  retired[nretired++] = (mkv_config_t *)current_cfg;
  current_cfg = next;
  if (next->verbose) mkv_log_set_level(MKV_LOG_DEBUG);
  else mkv_log_set_level(MKV_LOG_INFO);
  char *pols = policies_text(next);
  mkv_info("reloaded %s: %d %s, replicas %d; policies %s",
           next->source ? next->source : "the flags", next->nvolumes,
           MKV_PLURAL(next->nvolumes, "volume", "volumes"), next->replicas, pols);
  free(pols);
  mkv_metrics_reload(1);
  free(pol);
  return;
refused_cfg:
  for (int j = 0; j < i; j++) mkv_policy_free(pol[j]);
  mkv_config_free(next);
  free(next);
refused:
  free(pol);
  free(err);
  mkv_metrics_reload(0);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (signum == SIGHUP) {
    mkv_info("SIGHUP: reloading the config and policies");
    reload();
    return;
  }
  mkv_info("%s: draining in-flight requests, then exiting (a second signal stops mkv at "
           "once)",
           signum == SIGINT ? "SIGINT" : "SIGTERM");
  for (int i = 0; i < nworkers; i++) mkv_worker_stop(&workers[i]);
  if (admin_worker_p) mkv_worker_stop(admin_worker_p);
  if (status_worker_p) mkv_worker_stop(status_worker_p);
  /* Closing the watchers restores the default action, so a second SIGINT or SIGTERM
   * kills the process while it drains; the main loop then has nothing left and
   * returns, and main joins the workers. */
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sighup, NULL);
  signal(SIGHUP, SIG_IGN);
}

/* The admin thread's background work: the volume prober (health.h) and the repair
 * (repair.h). */
static void admin_thread_start(mkv_worker_t *w) {
  mkv_health_start(&w->loop, w->up, w->cfg);
  mkv_repair_schedule_start(w);
}

static void admin_thread_drain(mkv_worker_t *w) {
  (void)w;
  mkv_repair_schedule_stop();
  mkv_health_stop();
}

static int admin_thread_busy(mkv_worker_t *w) {
  (void)w;
  return mkv_health_busy() || mkv_repair_schedule_busy();
}

static int run_server(const mkv_config_t *cfg, const args_t *args) {
  char *err = NULL;
  int rc = 1;
  mkv_index_t *index = NULL;
  int lfd = -1;

  server_args = args;
  current_cfg = cfg;
  if (mkv_access_log_open(cfg->access_log, &err) != 0) {
    mkv_print_error(err);
    free(err);
    return 1;
  }

  nworkers = cfg->workers;
  workers = mkv_calloc((size_t)nworkers, sizeof(mkv_worker_t));
  /* Policies first: a broken policy stops startup before the index or the port. */
  for (int i = 0; i < nworkers; i++) {
    if (mkv_worker_init(&workers[i], i + 1, cfg, 1, &err) != 0) {
      mkv_print_error(err);
      for (int j = 0; j < i; j++) mkv_worker_destroy(&workers[j]);
      free(err);
      free(workers);
      return 2;
    }
  }
  if (mkv_index_open(&index, cfg->db, cfg, &err) != 0) {
    mkv_print_error(err);
    goto cleanup_workers;
  }
  if ((lfd = bind_listener(cfg, &err)) < 0) {
    mkv_print_error(err);
    goto cleanup_index;
  }
  char admin_addr[300];
  int afd = mkv_listen_hostport("admin_listen", cfg->admin_listen, 64, admin_addr, sizeof(admin_addr), &err);
  if (afd < 0) {
    mkv_print_error(err);
    close(lfd);
    goto cleanup_index;
  }
  /* The status listener (status.h), when on: bound now, so a busy port stops startup. */
  char status_addr[300] = "";
  int sfd = -1;
  if (cfg->status_listen[0] &&
      (sfd = mkv_listen_hostport("status_listen", cfg->status_listen, 64, status_addr,
                                 sizeof(status_addr), &err)) < 0) {
    mkv_print_error(err);
    close(lfd);
    close(afd);
    goto cleanup_index;
  }
  /* The standby index (ha.h): the node starts as a standby; etcd decides the rest. */
  if (cfg->ha.enabled && mkv_ha_start(cfg, index, admin_addr, &err) != 0) {
    mkv_print_error(err);
    close(lfd);
    close(afd);
    if (sfd >= 0) close(sfd);
    goto cleanup_index;
  }
  mkv_worker_t admin_worker;
  mkv_worker_init(&admin_worker, 0, cfg, 0, &err);
  /* The admin thread probes the volumes (health.h) for every thread. */
  mkv_health_init(cfg);
  mkv_metrics_configured(cfg->volumes, cfg->nvolumes);
  admin_worker.on_start = admin_thread_start;
  admin_worker.on_drain = admin_thread_drain;
  admin_worker.busy = admin_thread_busy;

  uv_loop_t *loop = uv_default_loop();
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sighup);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sighup, on_signal, SIGHUP);

  /* The admin thread first, and its address announced before the API serves: a
   * command that sees the server answering also finds its admin listener. */
  int admin_started = 0;
  if (mkv_worker_start(&admin_worker, index, afd, &mkv_admin_handler, &err) != 0) {
    mkv_print_error(err);
    close(afd);
  } else {
    admin_started = 1;
    /* Written whole under a temp name, then renamed: a command racing startup sees no
     * file or the whole line, never an empty one. */
    char *path = mkv_admin_addr_file(cfg->db);
    char *tmp = mkv_sprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f && fprintf(f, "%s\n", admin_addr) > 0 && fclose(f) == 0 && rename(tmp, path) == 0) {
      f = NULL;
    } else {
      if (f) fclose(f);
      unlink(tmp);
      mkv_warn("cannot write %s: admin commands will not find this server", path);
    }
    free(tmp);
    free(path);
  }

  int started = 0;
  for (int i = 0; i < nworkers && admin_started; i++) {
    int fd = dup(lfd);
    if (fd < 0 || mkv_worker_start(&workers[i], index, fd, &mkv_api_handler, &err) != 0) {
      mkv_print_error(err ? err : strerror(errno));
      break;
    }
    started++;
  }
  close(lfd);
  mkv_worker_t status_worker;
  int status_started = 0, status_failed = 0;
  if (sfd >= 0) {
    mkv_worker_init(&status_worker, -1, cfg, 0, &err);
    status_worker.on_start = mkv_status_thread_start;
    status_worker.on_drain = mkv_status_thread_drain;
    mkv_status_set_version(MKV_VERSION);
    if (started == nworkers && admin_started &&
        mkv_worker_start(&status_worker, index, sfd, &mkv_status_handler, &err) == 0) {
      status_started = 1;
    } else {
      if (started == nworkers && admin_started) mkv_print_error(err);
      status_failed = 1;
      close(sfd);
      mkv_worker_destroy(&status_worker);
    }
  }
  if (started == nworkers && admin_started && !status_failed) {
    mkv_info("mkv %s serving on %s:%d with %d %s; volumes:", MKV_VERSION, cfg->listen,
             cfg->port, nworkers, MKV_PLURAL(nworkers, "worker", "workers"));
    for (int i = 0; i < cfg->nvolumes; i++) mkv_info("  %s", cfg->volumes[i]);
    mkv_info("replicas %d, subvolumes %d, md5sum %s, protect %s, index %s", cfg->replicas,
             cfg->subvolumes, cfg->md5sum ? "on" : "off", cfg->protect ? "on" : "off", cfg->db);
    char *pols = policies_text(cfg);
    mkv_info("policies %s", pols);
    free(pols);
    mkv_info("admin listener on %s", admin_addr);
    if (status_started) {
      int loopback = strncmp(status_addr, "127.", 4) == 0 || strncmp(status_addr, "[::1]:", 6) == 0;
      if (cfg->status_auth.nwrite)
        mkv_info("status listener (read-only) on %s, Bearer token required", status_addr);
      else if (loopback)
        mkv_info("status listener (read-only) on %s", status_addr);
      else
        mkv_warn("status listener (read-only) on %s with no status_token: anyone who reaches "
                 "it reads the volumes, the metrics and the jobs", status_addr);
      status_worker_p = &status_worker;
    }
    admin_worker_p = &admin_worker;
    uv_run(loop, UV_RUN_DEFAULT);
    rc = 0;
  } else {
    for (int i = 0; i < started; i++) mkv_worker_stop(&workers[i]);
  }
  if (status_started) {
    if (!status_worker_p) mkv_worker_stop(&status_worker);
    mkv_worker_join(&status_worker);
    status_worker_p = NULL;
  }
  for (int i = 0; i < started; i++) mkv_worker_join(&workers[i]);
  for (int i = started; i < nworkers; i++) mkv_worker_destroy(&workers[i]);
  if (admin_started) {
    if (!admin_worker_p) mkv_worker_stop(&admin_worker);
    mkv_worker_join(&admin_worker);
    admin_worker_p = NULL;
    char *path = mkv_admin_addr_file(cfg->db);
    unlink(path);
    free(path);
  }
  if (!uv_is_closing((uv_handle_t *)&sigint)) {
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sighup, NULL);
  }
  uv_run(loop, UV_RUN_NOWAIT);
  uv_loop_close(loop);
  /* Every write is answered: a primary with a standby in step hands the lease over. */
  mkv_ha_stop();
  mkv_index_stats_t st;
  mkv_index_stats(index, &st);
  mkv_info("index: %llu %s in %llu %s, %llu %s", st.writes,
           MKV_PLURAL(st.writes, "write", "writes"), st.batches,
           MKV_PLURAL(st.batches, "batch", "batches"), st.syncs,
           MKV_PLURAL(st.syncs, "fsync", "fsyncs"));
  mkv_index_close(index); /* flushes the memtable: the Go original can open it now */
  mkv_health_free();
  mkv_repair_free();
  mkv_info("stopped cleanly");
  free(workers);
  /* The first config is the caller's; later ones were made by reload(). */
  for (int i = 0; i < nretired; i++) {
    if (retired[i] == cfg) continue;
    mkv_config_free(retired[i]);
    free(retired[i]);
  }
  if (current_cfg != cfg) {
    mkv_config_free((mkv_config_t *)current_cfg);
    free((void *)current_cfg);
  }
  current_cfg = NULL;
  free(retired);
  retired = NULL;
  nretired = 0;
  free(err);
  return rc;

cleanup_index:
  mkv_index_close(index);
cleanup_workers:
  for (int i = 0; i < nworkers; i++) mkv_worker_destroy(&workers[i]);
  free(workers);
  free(err);
  return rc;
}

static int run_index_flush(const mkv_config_t *cfg) {
  char *err = NULL;
  mkv_index_t *index;
  if (mkv_index_open(&index, cfg->db, cfg, &err) != 0) {
    mkv_print_error(err);
    free(err);
    return 1;
  }
  /* comma.ai's fork marks a write in progress "INIT<volumes>", which the Go original
   * would read as a live key on a volume named "INIT...": rewritten in mkv's form,
   * "DELETEDINIT<volumes>", which it reads as a deleted key (record.h). */
  unsigned long long rewritten = 0;
  mkv_index_iter_t *it = mkv_index_iter_new(index);
  mkv_buf_t key, out;
  mkv_buf_init(&key);
  mkv_buf_init(&out);
  int rc = 0;
  for (mkv_index_iter_seek(it, "", 0); mkv_index_iter_valid(it) && rc == 0;
       mkv_index_iter_next(it)) {
    size_t kl, vl;
    const char *k = mkv_index_iter_key(it, &kl), *v = mkv_index_iter_value(it, &vl);
    mkv_record_t r;
    if (mkv_record_decode(v, vl, &r) != 0 || !r.fork_init) continue;
    mkv_buf_set(&key, k, kl);
    mkv_record_encode(&out, MKV_REC_WRITING, r.has_hash ? r.hash : NULL, r.volumes, r.volumes_len);
    if (mkv_index_put_sync(index, key.data, key.len, out.data, out.len, 1, &err) != 0) {
      mkv_print_error(err);
      free(err);
      rc = 1;
    }
    rewritten++;
  }
  mkv_index_iter_free(it);
  mkv_buf_free(&key);
  mkv_buf_free(&out);
  mkv_index_close(index);
  if (rc != 0) return rc;
  if (rewritten)
    printf("index %s: %llu %s of comma.ai's fork in its INIT state rewritten as "
           "DELETEDINIT (a write that never finished)\n", cfg->db, rewritten,
           MKV_PLURAL(rewritten, "record", "records"));
  printf("index %s flushed: the Go minikeyvalue can open it now\n", cfg->db);
  return 0;
}

int main(int argc, char **argv) {
  /* A write to a client that reset its connection must fail, not kill the server. */
  signal(SIGPIPE, SIG_IGN);
  args_t a;
  if (parse_args(argc, argv, &a) != 0) {
    usage(stderr);
    return 2;
  }
  const char *command = a.command;
  if (command == NULL) {
    if (a.config == NULL) {
      usage(stderr);
      return 2;
    }
    command = "server";
  }
  int is_admin = strcmp(command, "rebuild") == 0 || strcmp(command, "rebalance") == 0 ||
                 strcmp(command, "verify") == 0 || strcmp(command, "gc") == 0 ||
                 strcmp(command, "backup") == 0 ||
                 strcmp(command, "run") == 0;
  int known = is_admin || strcmp(command, "server") == 0 || strcmp(command, "index-flush") == 0;
  if (!known) {
    fprintf(stderr, "mkv: unknown command '%s'\n", command);
    usage(stderr);
    return 2;
  }
  const char *script = command;
  if (strcmp(command, "run") == 0) {
    if (a.nrest < 1) {
      fprintf(stderr, "mkv: run needs the path of a Lua admin script\n");
      return 2;
    }
    script = a.rest[0];
    a.rest++;
    a.nrest--;
  }
  static char backup_dir[8192];
  if (strcmp(command, "backup") == 0 && a.nrest == 1 && a.rest[0][0] != '-' &&
      a.rest[0][0] != '/') {
    /* The copy may be written by the server, whose working directory is not ours. */
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == NULL) {
      fprintf(stderr, "mkv: backup: cannot tell the current directory: %s\n", strerror(errno));
      return 2;
    }
    snprintf(backup_dir, sizeof(backup_dir), "%s/%s", cwd, a.rest[0]);
    a.rest[0] = backup_dir;
  }
  if (!is_admin && a.nrest > 0) {
    fprintf(stderr, "mkv: %s takes no arguments (flags go before the command)\n", command);
    return 2;
  }
  if (mkv_hash_init() != 0) {
    fprintf(stderr, "mkv: OpenSSL provides no MD5 (FIPS mode?)\n");
    return 1;
  }
  mkv_config_t cfg;
  char *err = NULL;
  if (mkv_config_load(&cfg, a.config, a.flags, a.nflags, command, &err) != 0) {
    mkv_print_error(err);
    free(err);
    return 2;
  }
  if (cfg.verbose) mkv_log_set_level(MKV_LOG_DEBUG);
  int rc;
  if (strcmp(command, "index-flush") == 0)
    rc = run_index_flush(&cfg);
  else if (is_admin)
    rc = mkv_admin_client_run(&cfg, script, a.nrest, a.rest);
  else
    rc = run_server(&cfg, &a);
  mkv_config_free(&cfg);
  mkv_hash_thread_done();
  return rc;
}
