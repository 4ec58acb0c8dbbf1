/* testlib.c: a Lua C module (mkv_testlib.so) that the busted specs use for what plain
 * LuaJIT lacks: sleeping, clocks, child processes, raw TCP, free ports, /proc reads.
 * Test code only; nothing here ships in mkv. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <leveldb/c.h>
#include <lua.h>

int luaopen_mkv_testlib(lua_State *L);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, now_s());
  return 1;
}

static int l_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/* spawn({argv...}, {stdout=path, stderr=path, stdin=path, cwd=dir, env={K=V}}) -> pid */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int argc = (int)lua_objlen(L, 1);
  if (argc < 1) return luaL_error(L, "spawn: empty argv");
  char **argv = calloc((size_t)argc + 1, sizeof(char *));
  for (int i = 0; i < argc; i++) {
    lua_rawgeti(L, 1, i + 1);
    argv[i] = strdup(luaL_checkstring(L, -1));
    lua_pop(L, 1);
  }
  const char *out = NULL, *errp = NULL, *in = NULL, *cwd = NULL;
  int has_opts = lua_istable(L, 2);
  if (has_opts) {
    lua_getfield(L, 2, "stdout");
    out = lua_tostring(L, -1);
    lua_getfield(L, 2, "stderr");
    errp = lua_tostring(L, -1);
    lua_getfield(L, 2, "stdin");
    in = lua_tostring(L, -1);
    lua_getfield(L, 2, "cwd");
    cwd = lua_tostring(L, -1);
  }
  /* env overrides, collected before the fork */
  char *envs[64];
  int nenv = 0;
  if (has_opts) {
    lua_getfield(L, 2, "env");
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, -2) != 0 && nenv < 63) {
        lua_pushvalue(L, -2);
        const char *k = lua_tostring(L, -1);
        const char *v = lua_tostring(L, -2);
        size_t n = strlen(k) + strlen(v) + 2;
        envs[nenv] = malloc(n);
        snprintf(envs[nenv], n, "%s=%s", k, v);
        nenv++;
        lua_pop(L, 2);
      }
    }
  }
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    if (in) {
      int fd = open(in, O_RDONLY);
      if (fd >= 0) dup2(fd, 0);
    } else {
      int fd = open("/dev/null", O_RDONLY);
      if (fd >= 0) dup2(fd, 0);
    }
    if (out) {
      int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 1);
    }
    if (errp) {
      int fd = open(errp, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 2);
    }
    for (int fd = 3; fd < 1024; fd++) close(fd);
    if (cwd && chdir(cwd) != 0) _exit(126);
    for (int i = 0; i < nenv; i++) putenv(envs[i]);
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv);
    _exit(127);
  }
  for (int i = 0; i < argc; i++) free(argv[i]);
  free(argv);
  for (int i = 0; i < nenv; i++) free(envs[i]);
  if (pid < 0) return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

static void push_status(lua_State *L, int status) {
  lua_createtable(L, 0, 3);
  lua_pushboolean(L, WIFEXITED(status));
  lua_setfield(L, -2, "exited");
  if (WIFEXITED(status)) {
    lua_pushinteger(L, WEXITSTATUS(status));
    lua_setfield(L, -2, "code");
  }
  if (WIFSIGNALED(status)) {
    lua_pushinteger(L, WTERMSIG(status));
    lua_setfield(L, -2, "signal");
  }
}

/* wait(pid, timeout_s) -> status table, or nil if it is still running */
static int l_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  double timeout = luaL_optnumber(L, 2, 0);
  double deadline = now_s() + timeout;
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      push_status(L, status);
      return 1;
    }
    if (r < 0) {
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
    if (now_s() >= deadline) {
      lua_pushnil(L);
      lua_pushliteral(L, "running");
      return 2;
    }
    usleep(5000);
  }
}

static int l_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_optinteger(L, 2, SIGTERM);
  lua_pushboolean(L, kill(pid, sig) == 0);
  return 1;
}

/* A free port below the kernel's ephemeral range (32768-60999 here), so that the local
 * port of some outgoing connection cannot take it between this check and the bind of
 * the server it is for. 24100-24199 stay free for the Go fixture's fixed addresses. */
static int l_free_port(lua_State *L) {
  static unsigned next;
  if (next == 0) next = (unsigned)getpid() * 7919u + (unsigned)time(NULL);
  for (int tries = 0; tries < 2000; tries++) {
    int port = 20000 + (int)(next++ * 2654435761u % 12000u);
    if (port >= 24100 && port < 24200) continue;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return luaL_error(L, "free_port: %s", strerror(errno));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    if (ok) {
      lua_pushinteger(L, port);
      return 1;
    }
  }
  return luaL_error(L, "free_port: no free port found");
}

/* connect(port[, host]) -> fd or nil, err */
static int l_connect(lua_State *L) {
  int port = (int)luaL_checkinteger(L, 1);
  const char *host = luaL_optstring(L, 2, "127.0.0.1");
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    int e = errno;
    close(fd);
    lua_pushnil(L);
    lua_pushstring(L, strerror(e));
    return 2;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  lua_pushinteger(L, fd);
  return 1;
}

static int l_send(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  size_t off = 0;
  while (off < n) {
    ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
    off += (size_t)w;
  }
  lua_pushinteger(L, (lua_Integer)off);
  return 1;
}

/* recv(fd, timeout_s[, max]) -> data | nil,"timeout" | "" at EOF | nil,err */
static int l_recv(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  double timeout = luaL_optnumber(L, 2, 5);
  size_t max = (size_t)luaL_optinteger(L, 3, 65536);
  struct pollfd p = {fd, POLLIN, 0};
  int r = poll(&p, 1, (int)(timeout * 1000));
  if (r == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  char *buf = malloc(max);
  ssize_t n = recv(fd, buf, max, 0);
  if (n < 0) {
    free(buf);
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushlstring(L, buf, (size_t)n);
  free(buf);
  return 1;
}

static int l_shutdown_write(lua_State *L) {
  shutdown((int)luaL_checkinteger(L, 1), SHUT_WR);
  return 0;
}

static int l_close(lua_State *L) {
  close((int)luaL_checkinteger(L, 1));
  return 0;
}

/* fd_count(pid) -> number of open file descriptors */
static int l_fd_count(lua_State *L) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)luaL_checkinteger(L, 1));
  DIR *d = opendir(path);
  if (!d) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  lua_pushinteger(L, n);
  return 1;
}

static int l_getuid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getuid());
  return 1;
}

/* index_fill(dir, prefix, n, value) writes n records "<prefix><%09d>" -> value into a
 * LevelDB directory (created if missing), in batches: big indexes for specs and
 * benchmarks in seconds instead of hours of PUTs. Returns true or nil, err. */
static int l_index_fill(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  size_t plen, vlen;
  const char *prefix = luaL_checklstring(L, 2, &plen);
  long n = (long)luaL_checkinteger(L, 3);
  const char *val = luaL_checklstring(L, 4, &vlen);
  char *err = NULL;
  leveldb_options_t *o = leveldb_options_create();
  leveldb_options_set_create_if_missing(o, 1);
  leveldb_options_set_compression(o, leveldb_snappy_compression);
  leveldb_options_set_write_buffer_size(o, 64 << 20);
  leveldb_t *db = leveldb_open(o, dir, &err);
  if (err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    leveldb_free(err);
    leveldb_options_destroy(o);
    return 2;
  }
  leveldb_writeoptions_t *wo = leveldb_writeoptions_create();
  leveldb_writebatch_t *b = leveldb_writebatch_create();
  char *key = malloc(plen + 32);
  memcpy(key, prefix, plen);
  for (long i = 0; i < n && !err; i++) {
    int kl = snprintf(key + plen, 32, "%09ld", i);
    leveldb_writebatch_put(b, key, plen + (size_t)kl, val, vlen);
    if ((i + 1) % 10000 == 0 || i + 1 == n) {
      leveldb_write(db, wo, b, &err);
      leveldb_writebatch_clear(b);
    }
  }
  free(key);
  leveldb_writebatch_destroy(b);
  leveldb_writeoptions_destroy(wo);
  /* Flush the memtable so the directory is all tables, as after a clean mkv stop. */
  if (!err) leveldb_compact_range(db, "\xff\xff", 2, "\xff\xff\xff", 3);
  leveldb_close(db);
  leveldb_options_destroy(o);
  if (err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    leveldb_free(err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"index_fill", l_index_fill},
    {"now", l_now},         {"sleep", l_sleep},       {"spawn", l_spawn},
    {"wait", l_wait},       {"kill", l_kill},         {"free_port", l_free_port},
    {"connect", l_connect}, {"send", l_send},         {"recv", l_recv},
    {"shutdown_write", l_shutdown_write}, {"close", l_close}, {"fd_count", l_fd_count},
    {"getuid", l_getuid},   {NULL, NULL},
};

int luaopen_mkv_testlib(lua_State *L) {
  lua_newtable(L);
  luaL_register(L, NULL, funcs);
  return 1;
}
