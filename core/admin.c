/* admin.c: the admin runtime -- tasks (Lua coroutines), parked operations, transfers,
 * bandwidth and concurrency bounds, progress.
 *
 * STYLE puts the functions Lua calls in lua_api.c; the admin script's async functions
 * live here instead, beside the task and operation machinery they park on, which no
 * other file needs to see. The pure helpers (md5, base64, records ...) stay in
 * lua_api.c and are shared with policies and busted.
 *
 * The pattern (lua-nginx-module's): an async mkv.* call either completes at once, or
 * creates an operation that points at its task, marks the task parked, and yields.
 * The libuv callback only records the outcome and resumes the task with the results
 * (`value` or `nil, msg, code`); cancelling a parked operation resumes it with
 * ECANCELED the same way, so every operation completes exactly once. */
#include "mkv/admin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>

#include "internal.h"
#include "mkv/hash.h"
#include "mkv/keylock.h"
#include "mkv/log.h"
#include "mkv/lua_api.h"
#include "mkv/lua_vm.h"
#include "mkv/text.h"
#include "mkv/upstream.h"

/* A listing or other body read whole: bigger is an error, not an allocation. */
#define MAX_BODY (256u << 20)
/* Bytes of a copy in flight to its destination before the source stops being read. */
#define COPY_HIGH (4u << 20)
#define COPY_LOW (1u << 20)
#define BW_TICK_MS 50

enum { T_READY, T_RUNNING, T_PARKED, T_DONE };

typedef struct task_s task_t;
typedef struct op_s op_t;

struct op_s {
  task_t *task;
  void (*cancel)(op_t *op);
  op_t *next_bw; /* in the bandwidth wait list */
};

struct task_s {
  mkv_admin_t *a;
  lua_State *T;
  int thread_ref; /* pins the coroutine */
  int handle_ref; /* the handle table the spawner got (results go there) */
  int state;
  op_t *op;
  task_t *next_ready;
  task_t *prev, *next; /* all live tasks */
  task_t *waiters;     /* tasks parked in mkv.wait on this one */
  task_t *next_waiter;
  task_t *waiting_on;  /* the task this one waits for */
  /* A spawn parked for a free slot keeps what it will start here. */
  int spawn_ref;
  int is_root;
  int started; /* resumed once: the first resume passes the function's arguments */
  int exempt;  /* started by a cancel to finish committed work: may still do I/O */
  mkv_buf_t locks; /* keys this task holds locks on: NUL-separated, length-prefixed */
};

struct mkv_admin_s {
  uv_loop_t *loop;
  const mkv_config_t *cfg;
  mkv_index_t *index;
  mkv_index_port_t *port;
  mkv_upstream_t *up;
  mkv_policy_t *policy;
  lua_State *L;
  mkv_admin_opts_t opts;
  char *script;
  mkv_buf_t script_args;

  task_t *tasks; /* live */
  task_t *ready_head, *ready_tail;
  task_t *spawn_waiters_head, *spawn_waiters_tail;
  task_t *joiners; /* parked in mkv.join until no spawned task is left */
  struct after_s *afters;             /* mkv.after timers not yet fired */
  struct after_s *due_head, *due_tail; /* fired, waiting for a free slot */
  int spawned_running; /* spawned tasks alive (not the root) */
  uv_timer_t run_timer;

  double tokens;
  uint64_t tokens_ns;
  op_t *bw_waiters;
  uv_timer_t bw_timer;

  uint64_t start_ns;
  double total, done_units;
  char phase[32];
  unsigned long long bytes, examined, changed, failed, skipped;
  uv_timer_t progress_timer;

  int cancelled, root_done, finished, code;
  int usage_error; /* the script refused its options: exit code 2 */
  int closing_handles;
  void (*done)(void *arg, int code);
  void *done_arg;
};

static const char task_key = 'T'; /* registry: thread -> task (light userdata) */
static const char admin_key = 'A';

static void schedule(task_t *t);
static void finish_script(mkv_admin_t *a);
static void start_due(mkv_admin_t *a);

/* ---- output ---- */

static void emit(mkv_admin_t *a, int kind, const char *fmt, ...) MKV_PRINTF(3, 4);
static void emit(mkv_admin_t *a, int kind, const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = MKV_MIN((size_t)n, sizeof(line) - 1);
  for (size_t i = 0; i < len; i++)
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  a->opts.sink.line(a->opts.sink.ctx, kind, line, len);
}

static void progress_tick(uv_timer_t *t) {
  mkv_admin_t *a = t->data;
  emit(a, MKV_ADMIN_PROGRESS, "%.0f %.0f %llu %llu %llu %llu %llu %s", a->done_units, a->total,
       a->bytes, (unsigned long long)((mkv_now_ns() - a->start_ns) / 1000000), a->examined,
       a->changed, a->failed, a->phase);
}

/* ---- tasks ---- */

static mkv_admin_t *admin_of(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&admin_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  mkv_admin_t *a = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return a;
}

static task_t *task_of(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&task_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushthread(L);
  lua_rawget(L, -2);
  task_t *t = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return t;
}

static void run_ready(uv_timer_t *timer);

static void schedule(task_t *t) {
  mkv_admin_t *a = t->a;
  t->state = T_READY;
  t->next_ready = NULL;
  if (a->ready_tail)
    a->ready_tail->next_ready = t;
  else
    a->ready_head = t;
  a->ready_tail = t;
  if (!uv_is_active((uv_handle_t *)&a->run_timer))
    uv_timer_start(&a->run_timer, run_ready, 0, 0);
}

static task_t *task_new(mkv_admin_t *a, int is_root) {
  task_t *t = mkv_calloc(1, sizeof(*t));
  t->a = a;
  t->is_root = is_root;
  t->thread_ref = t->handle_ref = t->spawn_ref = LUA_NOREF;
  mkv_buf_init(&t->locks);
  t->T = lua_newthread(a->L);
  t->thread_ref = luaL_ref(a->L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(a->L, (void *)&task_key);
  lua_rawget(a->L, LUA_REGISTRYINDEX);
  lua_rawgeti(a->L, LUA_REGISTRYINDEX, t->thread_ref);
  lua_pushlightuserdata(a->L, t);
  lua_rawset(a->L, -3);
  lua_pop(a->L, 1);
  t->next = a->tasks;
  if (a->tasks) a->tasks->prev = t;
  a->tasks = t;
  if (!is_root) a->spawned_running++;
  return t;
}

static void release_locks(task_t *t) {
  size_t off = 0;
  while (off < t->locks.len) {
    size_t klen;
    memcpy(&klen, t->locks.data + off, sizeof(klen));
    mkv_keylock_release(t->locks.data + off + sizeof(klen), klen);
    off += sizeof(klen) + klen;
  }
  mkv_buf_free(&t->locks);
}

static void start_waiting_spawns(mkv_admin_t *a);

/* A task ended (returned or raised): results to its handle, waiters woken, freed. */
static void task_end(task_t *t, int rc) {
  mkv_admin_t *a = t->a;
  lua_State *L = a->L;
  t->state = T_DONE;
  release_locks(t);
  const char *err = NULL;
  if (rc != 0) {
    err = lua_tostring(t->T, -1);
    if (err == NULL) err = "(error object is not a string)";
    if (t->is_root && strncmp(err, "usage: ", 7) == 0) {
      a->usage_error = 1;
      emit(a, MKV_ADMIN_LOG, "%s", err);
    } else if (!(a->cancelled && strstr(err, "ECANCELED"))) {
      a->failed++;
      emit(a, MKV_ADMIN_LOG, "error: %s", err);
    }
  }
  if (t->handle_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->handle_ref);
    int h = lua_gettop(L);
    lua_pushboolean(L, 1);
    lua_setfield(L, h, "done");
    lua_pushboolean(L, rc == 0);
    lua_setfield(L, h, "ok");
    if (rc != 0) {
      lua_pushstring(L, err);
      lua_setfield(L, h, "err");
    } else {
      int n = lua_gettop(t->T);
      lua_createtable(L, n, 0);
      for (int i = 1; i <= n; i++) {
        lua_pushvalue(t->T, i);
        lua_xmove(t->T, L, 1);
        lua_rawseti(L, -2, i);
      }
      lua_setfield(L, h, "results");
    }
    lua_pushnil(L);
    lua_setfield(L, h, "task");
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, t->handle_ref);
  }
  for (task_t *w = t->waiters, *next; w; w = next) {
    next = w->next_waiter;
    w->waiting_on = NULL;
    lua_pushboolean(w->T, 1);
    w->op = NULL;
    schedule(w); /* resumed with `true`; mkv.wait reads the handle */
  }
  /* unlink, unpin */
  if (t->prev)
    t->prev->next = t->next;
  else
    a->tasks = t->next;
  if (t->next) t->next->prev = t->prev;
  lua_pushlightuserdata(L, (void *)&task_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->thread_ref);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, t->thread_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, t->spawn_ref);
  int root = t->is_root;
  if (!root) a->spawned_running--;
  free(t);
  if (root) a->root_done = 1;
  start_waiting_spawns(a);
  start_due(a);
  if (a->spawned_running == 0 && a->spawn_waiters_head == NULL && a->afters == NULL &&
      a->due_head == NULL) {
    for (task_t *j = a->joiners, *next; j; j = next) {
      next = j->next_waiter;
      j->next_waiter = NULL;
      lua_pushboolean(j->T, 1);
      schedule(j);
    }
    a->joiners = NULL;
  }
  if (a->root_done && a->tasks == NULL && a->afters == NULL && a->due_head == NULL)
    finish_script(a);
}

/* Resumes a task with the values on its stack: its function's arguments the first
 * time (the function is below them), an operation's results after that. */
static void task_resume(task_t *t) {
  int nargs = lua_gettop(t->T);
  if (!t->started) {
    t->started = 1;
    nargs--;
  }
  t->state = T_RUNNING;
  t->op = NULL;
  int rc = lua_resume(t->T, nargs);
  if (rc == LUA_YIELD) {
    if (t->state == T_RUNNING) {
      /* A bare coroutine.yield: not something scripts may do. */
      lua_settop(t->T, 0);
      lua_pushliteral(t->T, "scripts must not yield except through mkv.* calls");
      task_end(t, LUA_ERRRUN);
    }
    return;
  }
  if (rc != 0) {
    /* Add where it happened: the message of a runtime error has it already. */
    task_end(t, rc);
    return;
  }
  task_end(t, 0);
}

static void run_ready(uv_timer_t *timer) {
  mkv_admin_t *a = timer->data;
  task_t *t = a->ready_head;
  a->ready_head = a->ready_tail = NULL;
  while (t) {
    task_t *next = t->next_ready;
    t->next_ready = NULL;
    if (t->state == T_READY) task_resume(t);
    t = next;
  }
}

/* Parks the calling task on op; the caller then returns lua_yield(L, 0). */
static void park(task_t *t, op_t *op) {
  t->state = T_PARKED;
  t->op = op;
  op->task = t;
}

/* Completes a parked op: the task resumes with what the op pushed on its stack. */
static void unpark(op_t *op) {
  task_resume(op->task);
}

static int push_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, mkv_strerror(err));
  lua_pushstring(L, mkv_errname(err));
  return 3;
}

/* Every async function starts here: in a task, and not after a cancel. */
static task_t *async_task(lua_State *L, mkv_admin_t *a) {
  task_t *t = task_of(L);
  if (t == NULL) luaL_error(L, "async mkv functions run only inside the script or mkv.spawn");
  if (a->cancelled && !t->exempt) luaL_error(L, "ECANCELED: the run was cancelled");
  return t;
}

/* ---- concurrency: mkv.spawn / mkv.wait ---- */

static void start_task_from(mkv_admin_t *a, task_t *spawner, int fn_index_ref);

static void start_waiting_spawns(mkv_admin_t *a) {
  while (a->spawn_waiters_head && a->spawned_running < a->opts.concurrency && !a->cancelled) {
    task_t *s = a->spawn_waiters_head;
    a->spawn_waiters_head = s->next_waiter;
    if (!a->spawn_waiters_head) a->spawn_waiters_tail = NULL;
    s->next_waiter = NULL;
    int ref = s->spawn_ref;
    s->spawn_ref = LUA_NOREF;
    start_task_from(a, s, ref); /* pushes the handle on s's stack */
    s->op = NULL;
    schedule(s);
  }
  if (a->cancelled) {
    while (a->spawn_waiters_head) {
      task_t *s = a->spawn_waiters_head;
      a->spawn_waiters_head = s->next_waiter;
      s->next_waiter = NULL;
      luaL_unref(a->L, LUA_REGISTRYINDEX, s->spawn_ref);
      s->spawn_ref = LUA_NOREF;
      push_error(s->T, UV_ECANCELED);
      schedule(s);
    }
    a->spawn_waiters_tail = NULL;
  }
}

/* Creates a task running the function + args held in the table at registry ref, and
 * pushes its handle on the spawner's stack. */
static void start_task_from(mkv_admin_t *a, task_t *spawner, int ref) {
  lua_State *L = a->L;
  task_t *t = task_new(a, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  int args = lua_gettop(L);
  int n = (int)lua_objlen(L, args);
  for (int i = 1; i <= n; i++) lua_rawgeti(L, args, i);
  lua_xmove(L, t->T, n); /* function first, then its arguments */
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  /* the handle: { task = <light userdata> } until done, then { done, ok, results|err } */
  lua_createtable(L, 0, 4);
  lua_pushlightuserdata(L, t);
  lua_setfield(L, -2, "task");
  lua_pushvalue(L, -1);
  t->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (spawner)
    lua_xmove(L, spawner->T, 1);
  else
    lua_pop(L, 1);
  /* The new task's first resume takes the function's arguments: n - 1 of them. */
  t->state = T_READY;
  schedule(t);
}

static void cancel_nothing(op_t *op) {
  (void)op;
}

static op_t spawn_wait_op = {NULL, cancel_nothing, NULL};
static op_t task_wait_op = {NULL, cancel_nothing, NULL};

/* mkv.spawn(fn, ...) -> handle. Waits for a free slot when `concurrency` spawned tasks
 * are running, so a script's loop over a billion keys never holds more than that. */
static int l_spawn(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int n = lua_gettop(L);
  lua_createtable(L, n, 0);
  lua_insert(L, 1);
  for (int i = n; i >= 1; i--) lua_rawseti(L, 1, i);
  lua_xmove(L, a->L, 1);
  int ref = luaL_ref(a->L, LUA_REGISTRYINDEX);
  if (a->spawned_running < a->opts.concurrency) {
    start_task_from(a, t, ref); /* pushes the handle on L (t->T == L) */
    return 1;
  }
  t->spawn_ref = ref;
  t->next_waiter = NULL;
  if (a->spawn_waiters_tail)
    a->spawn_waiters_tail->next_waiter = t;
  else
    a->spawn_waiters_head = t;
  a->spawn_waiters_tail = t;
  t->state = T_PARKED;
  t->op = &spawn_wait_op;
  return lua_yield(L, 0);
}

static op_t join_op = {NULL, cancel_nothing, NULL};

/* mkv._wait(handle): parks until the task behind the handle has ended (mkv.wait, in
 * lua/mkv_prelude.lua, then reads its results from the handle: a C function cannot go
 * on after it yields). */
static int l_wait_park(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "done");
  int done = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (done) return 0;
  task_t *self = async_task(L, a);
  lua_getfield(L, 1, "task");
  task_t *t = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (t == NULL || t == self) return luaL_error(L, "mkv.wait: not a task handle");
  self->next_waiter = t->waiters;
  t->waiters = self;
  self->waiting_on = t;
  self->state = T_PARKED;
  self->op = &task_wait_op;
  return lua_yield(L, 0);
}

/* mkv.join(): parks until every spawned task (but the caller) has ended. */
static int l_join(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *self = async_task(L, a);
  int others = a->spawned_running - (self->is_root ? 0 : 1);
  if (others <= 0 && a->spawn_waiters_head == NULL) return 0;
  if (!self->is_root) return luaL_error(L, "mkv.join: only the script's main task may join");
  self->next_waiter = a->joiners;
  a->joiners = self;
  self->state = T_PARKED;
  self->op = &join_op;
  return lua_yield(L, 0);
}

/* ---- delayed tasks: mkv.after ---- */

typedef struct after_s {
  struct after_s *next, *prev; /* in a->afters, then next in the due queue */
  mkv_admin_t *a;
  uv_timer_t timer;
  int ref; /* the function and its arguments */
} after_t;

static void after_closed(uv_handle_t *h) {
  free(h->data);
}

/* Starts the tasks whose delay has passed, as slots free up (they count against
 * --concurrency only once they run). A cancel starts them all at once, exempt from it:
 * delayed work finishes what the run already committed (rebalance's surplus copies of
 * moved keys), and dropping it would leave that half done. */
static void start_due(mkv_admin_t *a) {
  while (a->due_head && a->spawned_running < a->opts.concurrency) {
    after_t *d = a->due_head;
    a->due_head = d->next;
    if (!a->due_head) a->due_tail = NULL;
    start_task_from(a, NULL, d->ref);
    if (a->cancelled) a->tasks->exempt = 1; /* start_task_from put it first */
    uv_close((uv_handle_t *)&d->timer, after_closed);
  }
  if (a->root_done && a->tasks == NULL && a->afters == NULL && a->due_head == NULL)
    finish_script(a);
}

static void after_fired(uv_timer_t *timer) {
  after_t *d = timer->data;
  mkv_admin_t *a = d->a;
  if (d->prev)
    d->prev->next = d->next;
  else
    a->afters = d->next;
  if (d->next) d->next->prev = d->prev;
  d->next = d->prev = NULL;
  if (a->due_tail)
    a->due_tail->next = d;
  else
    a->due_head = d;
  a->due_tail = d;
  start_due(a);
}

/* mkv.after(seconds, fn, ...): runs fn(...) in a task of its own once `seconds` have
 * passed; the script does not end before it has run. Nothing waits meanwhile: how
 * rebalance deletes a surplus copy only after a grace period, without holding a slot. */
static int l_after(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  /* Allowed after a cancel too (it is no I/O): a move whose record write landed while
   * the cancel came must still schedule the removal of its surplus copies -- which then
   * runs at once, exempt, as start_due says. */
  if (task_of(L) == NULL) return luaL_error(L, "mkv.after runs only inside the script");
  double secs = luaL_checknumber(L, 1);
  if (a->cancelled) secs = 0;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int n = lua_gettop(L) - 1;
  lua_createtable(L, n, 0);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  lua_xmove(L, a->L, 1);
  after_t *d = mkv_calloc(1, sizeof(*d));
  d->a = a;
  d->ref = luaL_ref(a->L, LUA_REGISTRYINDEX);
  uv_timer_init(a->loop, &d->timer);
  d->timer.data = d;
  d->next = a->afters;
  if (a->afters) a->afters->prev = d;
  a->afters = d;
  uv_timer_start(&d->timer, after_fired, secs <= 0 ? 0 : (uint64_t)(secs * 1000), 0);
  return 0;
}

/* ---- sleeping ---- */

typedef struct sleep_op_s {
  op_t op;
  uv_timer_t timer;
} sleep_op_t;

static void sleep_closed(uv_handle_t *h) {
  free(h->data);
}

static void sleep_done(uv_timer_t *timer) {
  sleep_op_t *s = timer->data;
  task_t *t = s->op.task;
  uv_close((uv_handle_t *)timer, sleep_closed);
  lua_pushboolean(t->T, 1);
  unpark(&s->op);
}

static void sleep_cancel(op_t *op) {
  sleep_op_t *s = (sleep_op_t *)op;
  uv_timer_stop(&s->timer);
  task_t *t = op->task;
  uv_close((uv_handle_t *)&s->timer, sleep_closed);
  push_error(t->T, UV_ECANCELED);
  schedule(t);
}

static int l_sleep(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  double ms = luaL_checknumber(L, 1) * 1000;
  sleep_op_t *s = mkv_calloc(1, sizeof(*s));
  s->op.cancel = sleep_cancel;
  uv_timer_init(a->loop, &s->timer);
  s->timer.data = s;
  uv_timer_start(&s->timer, sleep_done, ms < 0 ? 0 : (uint64_t)ms, 0);
  park(t, &s->op);
  return lua_yield(L, 0);
}

/* ---- bandwidth ---- */

static void bw_refill(mkv_admin_t *a) {
  uint64_t now = mkv_now_ns();
  double rate = a->opts.bandwidth;
  a->tokens += rate * (double)(now - a->tokens_ns) / 1e9;
  /* At most a quarter of a second's worth banked: no bursts after idling. */
  if (a->tokens > rate / 4) a->tokens = rate / 4;
  a->tokens_ns = now;
}

typedef struct xfer_s xfer_t;
static void xfer_resume_source(xfer_t *x);

static void bw_tick(uv_timer_t *timer) {
  mkv_admin_t *a = timer->data;
  bw_refill(a);
  while (a->bw_waiters && a->tokens > 0) {
    op_t *op = a->bw_waiters;
    a->bw_waiters = op->next_bw;
    op->next_bw = NULL;
    xfer_resume_source((xfer_t *)op);
  }
  if (!a->bw_waiters) uv_timer_stop(timer);
}

/* Takes n bytes of budget; 0 when the transfer may go on, 1 when it must wait (it is
 * then queued once, until the budget refills: `queued` says it already is). */
static int bw_take(mkv_admin_t *a, op_t *op, size_t n, int queued) {
  if (a->opts.bandwidth <= 0) return 0;
  bw_refill(a);
  a->tokens -= (double)n;
  if (a->tokens >= 0 && !queued) return 0;
  if (queued) return 1;
  op->next_bw = a->bw_waiters;
  a->bw_waiters = op;
  if (!uv_is_active((uv_handle_t *)&a->bw_timer))
    uv_timer_start(&a->bw_timer, bw_tick, BW_TICK_MS, BW_TICK_MS);
  return 1;
}

static void bw_forget(mkv_admin_t *a, op_t *op) {
  for (op_t **pp = &a->bw_waiters; *pp; pp = &(*pp)->next_bw)
    if (*pp == op) {
      *pp = op->next_bw;
      break;
    }
}

/* ---- HTTP to volumes ---- */

/* Splits "http://host:port/path" (or "host:port/path"). 0 or -1. */
static int split_url(const char *url, size_t n, mkv_buf_t *host, mkv_buf_t *path) {
  if (n >= 7 && memcmp(url, "http://", 7) == 0) url += 7, n -= 7;
  const char *slash = memchr(url, '/', n);
  if (slash == NULL || slash == url) return -1;
  mkv_buf_set(host, url, (size_t)(slash - url));
  mkv_buf_set(path, slash, n - (size_t)(slash - url));
  return 0;
}

typedef struct http_op_s {
  op_t op;
  mkv_upreq_t req;
  mkv_buf_t body;
  int want_body;
  int too_big;
} http_op_t;

static void http_op_free(http_op_t *h) {
  mkv_upreq_free(&h->req);
  mkv_buf_free(&h->body);
  free(h);
}

static int http_on_body(mkv_upreq_t *r, const char *at, size_t len) {
  http_op_t *h = r->data;
  if (!h->want_body) return 0;
  if (h->body.len + len > MAX_BODY) {
    h->too_big = 1;
    return 0;
  }
  mkv_buf_add(&h->body, at, len);
  return 0;
}

static void http_done(mkv_upreq_t *r, int err) {
  http_op_t *h = r->data;
  task_t *t = h->op.task;
  lua_State *T = t->T;
  if (err != 0) {
    push_error(T, err);
  } else if (h->too_big) {
    lua_pushnil(T);
    lua_pushstring(T, "response body too large");
    lua_pushliteral(T, "E2BIG");
  } else {
    lua_pushinteger(T, r->status);
    if (h->want_body)
      lua_pushlstring(T, h->body.data ? h->body.data : "", h->body.len);
    else
      lua_pushnumber(T, (lua_Number)r->resp_length);
  }
  http_op_free(h);
  task_resume(t);
}

static void http_cancel(op_t *op) {
  http_op_t *h = (http_op_t *)op;
  mkv_upreq_cancel(&h->req); /* done runs later with ECANCELED */
}

/* mkv.http(method, url [, timeout_s]) -> status, body (GET) or content length (HEAD,
 * DELETE: -1 when none) | nil, msg, code. Bodies are for listings: at most 256 MB. */
static int l_http(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  const char *m = luaL_checkstring(L, 1);
  size_t ulen;
  const char *url = luaL_checklstring(L, 2, &ulen);
  double timeout = luaL_optnumber(L, 3, a->cfg->limits.volume_timeout_ms / 1000.0);
  mkv_up_method_t method;
  if (strcmp(m, "GET") == 0)
    method = MKV_UP_GET;
  else if (strcmp(m, "HEAD") == 0)
    method = MKV_UP_HEAD;
  else if (strcmp(m, "DELETE") == 0)
    method = MKV_UP_DELETE;
  else
    return luaL_error(L, "mkv.http: method must be GET, HEAD or DELETE");
  http_op_t *h = mkv_calloc(1, sizeof(*h));
  mkv_upreq_init(&h->req);
  mkv_buf_init(&h->body);
  if (split_url(url, ulen, &h->req.host, &h->req.path) != 0) {
    http_op_free(h);
    return luaL_error(L, "mkv.http: bad URL %s", url);
  }
  if (method == MKV_UP_DELETE && h->req.path.data[h->req.path.len - 1] == '/') {
    /* nginx deletes a whole directory for a path ending in '/' (library-facts §6.2). */
    http_op_free(h);
    return luaL_error(L, "mkv.http: refusing to DELETE a directory: %s", url);
  }
  h->op.cancel = http_cancel;
  h->want_body = method == MKV_UP_GET;
  h->req.data = h;
  h->req.method = method;
  h->req.timeout_ms = timeout * 1000;
  h->req.done = http_done;
  h->req.on_body = http_on_body;
  int rc = mkv_upstream_start(a->up, &h->req);
  if (rc != 0) {
    http_op_free(h);
    return push_error(L, rc);
  }
  park(t, &h->op);
  return lua_yield(L, 0);
}

/* ---- transfers: streamed copies and MD5s ---- */

struct xfer_s {
  op_t op;
  mkv_admin_t *a;
  int waiting_start; /* held back by the bandwidth cap before it began */
  mkv_upreq_t src;
  mkv_upreq_t dst;
  int has_dst, dst_started, src_done, dst_done;
  int src_err, dst_err;
  int paused_flow, paused_bw;
  size_t inflight;
  int chunks_live, finished;
  int64_t bytes;
  mkv_md5_stream_t *md5;
  mkv_chunk_t *cur;
};

static void xfer_maybe_free(xfer_t *x) {
  if (!x->finished || x->chunks_live > 0) return;
  mkv_upreq_free(&x->src);
  mkv_upreq_free(&x->dst);
  mkv_md5_stream_free(x->md5);
  mkv_chunk_free(x->cur);
  free(x);
}

static void xfer_begin(xfer_t *x);

static void xfer_resume_source(xfer_t *x) {
  if (x->waiting_start) {
    x->waiting_start = 0;
    xfer_begin(x);
    return;
  }
  x->paused_bw = 0;
  if (!x->paused_flow && !x->src_done) mkv_upreq_resume(&x->src);
}

static void xfer_chunk_released(mkv_chunk_t *ch) {
  xfer_t *x = ch->data;
  x->inflight -= ch->len;
  x->chunks_live--;
  if (x->paused_flow && x->inflight <= COPY_LOW && !x->finished) {
    x->paused_flow = 0;
    if (!x->paused_bw && !x->src_done) mkv_upreq_resume(&x->src);
  }
  xfer_maybe_free(x);
}

static void xfer_complete(xfer_t *x) {
  task_t *t = x->op.task;
  lua_State *T = t->T;
  mkv_admin_t *a = x->a;
  bw_forget(a, &x->op);
  int dst_failed = x->has_dst && x->dst_done &&
                   (x->dst_err || (x->dst.status != 201 && x->dst.status != 204));
  if (dst_failed && x->dst_err) {
    push_error(T, x->dst_err);
  } else if (dst_failed) {
    lua_pushnil(T);
    lua_pushfstring(T, "destination answered %d", x->dst.status);
    lua_pushliteral(T, "ESTATUS");
  } else if (x->src_err) {
    push_error(T, x->src_err);
  } else if (x->src.status != 200) {
    lua_pushnil(T);
    lua_pushfstring(T, "source answered %d", x->src.status);
    if (x->src.status == 404)
      lua_pushliteral(T, "ENOENT");
    else
      lua_pushliteral(T, "ESTATUS");
  } else if (x->has_dst && !x->dst_started) {
    push_error(T, x->dst_err ? x->dst_err : UV_EINVAL);
  } else if (x->src.resp_length >= 0 && x->bytes != x->src.resp_length) {
    lua_pushnil(T);
    lua_pushliteral(T, "short read from the source");
    lua_pushliteral(T, "EPROTO");
  } else {
    unsigned char md[MKV_MD5_LEN];
    char hex[MKV_MD5_HEX_LEN + 1];
    mkv_md5_stream_final(x->md5, md);
    mkv_hex(md, MKV_MD5_LEN, hex);
    lua_pushnumber(T, (lua_Number)x->bytes);
    lua_pushstring(T, hex);
  }
  x->finished = 1;
  xfer_maybe_free(x);
  task_resume(t);
}

static void xfer_maybe_complete(xfer_t *x) {
  if (!x->src_done) return;
  if (x->has_dst && x->dst_started && !x->dst_done) return;
  xfer_complete(x);
}

static void xfer_dst_done(mkv_upreq_t *r, int err) {
  xfer_t *x = r->data;
  x->dst_done = 1;
  x->dst_err = err;
  if (!x->src_done && (err || (r->status != 201 && r->status != 204)))
    mkv_upreq_cancel(&x->src);
  xfer_maybe_complete(x);
}

static void xfer_flush(xfer_t *x) {
  mkv_chunk_t *ch = x->cur;
  if (ch == NULL || ch->len == 0) return;
  x->cur = NULL;
  x->inflight += ch->len;
  x->chunks_live++;
  mkv_upreq_write(&x->dst, ch);
}

static void xfer_src_headers(mkv_upreq_t *r) {
  xfer_t *x = r->data;
  if (!x->has_dst || r->status != 200) return;
  /* The destination gets exactly what the source announces; a chunked source (no
   * length) is forwarded chunked. */
  x->dst.content_length = r->resp_length;
  if (mkv_upstream_start(x->a->up, &x->dst) == 0) {
    x->dst_started = 1;
  } else {
    x->dst_err = UV_EINVAL;
    mkv_upreq_cancel(r);
  }
}

static int xfer_src_body(mkv_upreq_t *r, const char *at, size_t len) {
  xfer_t *x = r->data;
  size_t total = len;
  mkv_md5_stream_update(x->md5, at, len);
  x->bytes += (int64_t)len;
  x->a->bytes += len;
  int pause = 0;
  if (x->has_dst && x->dst_started && !x->dst_done) {
    while (len > 0) {
      if (x->cur == NULL) x->cur = mkv_chunk_alloc(MKV_CHUNK_POOLED, 1, xfer_chunk_released, x);
      size_t n = MKV_MIN(len, MKV_CHUNK_POOLED - x->cur->len);
      memcpy(x->cur->bytes + x->cur->len, at, n);
      x->cur->len += n;
      at += n;
      len -= n;
      if (x->cur->len == MKV_CHUNK_POOLED) xfer_flush(x);
    }
    xfer_flush(x);
    if (x->inflight > COPY_HIGH) {
      x->paused_flow = 1;
      pause = 1;
    }
  }
  if (bw_take(x->a, &x->op, total, x->paused_bw)) {
    x->paused_bw = 1;
    pause = 1;
  }
  return pause;
}

static void xfer_src_done(mkv_upreq_t *r, int err) {
  xfer_t *x = r->data;
  x->src_done = 1;
  x->src_err = err;
  if (x->has_dst && x->dst_started && !x->dst_done) {
    if (err == 0 && r->status == 200)
      mkv_upreq_end(&x->dst);
    else
      mkv_upreq_cancel(&x->dst);
  }
  xfer_maybe_complete(x);
}

static void xfer_cancel(op_t *op) {
  xfer_t *x = (xfer_t *)op;
  bw_forget(x->a, op);
  if (x->waiting_start) { /* never started: complete it here */
    x->waiting_start = 0;
    task_t *t = x->op.task;
    push_error(t->T, UV_ECANCELED);
    x->finished = 1;
    xfer_maybe_free(x);
    t->op = NULL;
    schedule(t);
    return;
  }
  if (!x->src_done) mkv_upreq_cancel(&x->src);
  if (x->has_dst && x->dst_started && !x->dst_done) mkv_upreq_cancel(&x->dst);
}

/* mkv.copy(src_url, dst_url) -> size, md5hex | nil, msg, code: streams a value from one
 * volume to another (GET piped into PUT, never whole in memory), hashing it on the way.
 * mkv.md5(url) -> size, md5hex: the same without a destination. */
static int start_xfer(lua_State *L, int with_dst) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  size_t slen, dlen = 0;
  const char *src = luaL_checklstring(L, 1, &slen);
  const char *dst = with_dst ? luaL_checklstring(L, 2, &dlen) : NULL;
  xfer_t *x = mkv_calloc(1, sizeof(*x));
  x->a = a;
  x->op.cancel = xfer_cancel;
  mkv_upreq_init(&x->src);
  mkv_upreq_init(&x->dst);
  x->md5 = mkv_md5_stream_new();
  x->has_dst = with_dst;
  if (split_url(src, slen, &x->src.host, &x->src.path) != 0 ||
      (with_dst && split_url(dst, dlen, &x->dst.host, &x->dst.path) != 0)) {
    x->finished = 1;
    xfer_maybe_free(x);
    return luaL_error(L, "mkv.%s: bad URL", with_dst ? "copy" : "md5");
  }
  double timeout = a->cfg->limits.volume_timeout_ms;
  (void)timeout;
  x->src.data = x;
  x->src.method = MKV_UP_GET;
  x->src.timeout_ms = timeout;
  x->src.inactivity = 1; /* a whole value may take long: time out only when it stalls */
  x->src.on_headers = xfer_src_headers;
  x->src.on_body = xfer_src_body;
  x->src.done = xfer_src_done;
  x->dst.data = x;
  x->dst.method = MKV_UP_PUT;
  x->dst.timeout_ms = timeout;
  x->dst.done = xfer_dst_done;
  park(t, &x->op);
  /* The cap is an average: bytes already sent over it are a debt that new transfers
   * wait out (a small value goes in one read, which pausing alone cannot slow). */
  if (a->opts.bandwidth > 0) {
    bw_refill(a);
    if (a->tokens < 0) {
      x->waiting_start = 1;
      x->op.next_bw = a->bw_waiters;
      a->bw_waiters = &x->op;
      if (!uv_is_active((uv_handle_t *)&a->bw_timer))
        uv_timer_start(&a->bw_timer, bw_tick, BW_TICK_MS, BW_TICK_MS);
      return lua_yield(L, 0);
    }
  }
  xfer_begin(x);
  return lua_yield(L, 0);
}

/* Starts the source request; a failure to start completes the op at once (the task has
 * not resumed yet: the results wait on its stack for the next loop turn). */
static void xfer_begin(xfer_t *x) {
  int rc = mkv_upstream_start(x->a->up, &x->src);
  if (rc != 0) {
    x->src_done = 1;
    x->src_err = rc;
    task_t *t = x->op.task;
    push_error(t->T, rc);
    x->finished = 1;
    xfer_maybe_free(x);
    t->op = NULL;
    schedule(t);
  }
}

static int l_copy(lua_State *L) {
  return start_xfer(L, 1);
}

static int l_md5_url(lua_State *L) {
  return start_xfer(L, 0);
}

/* ---- the index ---- */

/* mkv.index_scan(start, limit [, prefix]) -> { {key, value}, ... }: a page of records
 * from `start` (inclusive) in byte order, within `prefix` if given. A fresh iterator
 * each page: a long scan never pins an old LevelDB version. */
static int l_index_scan(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t slen, plen = 0;
  const char *start = luaL_checklstring(L, 1, &slen);
  int limit = (int)luaL_checkinteger(L, 2);
  const char *prefix = luaL_optlstring(L, 3, "", &plen);
  mkv_index_iter_t *it = mkv_index_iter_new(a->index);
  mkv_index_iter_seek(it, start, slen);
  lua_createtable(L, limit > 0 && limit < 100000 ? limit : 0, 0);
  int n = 0;
  for (; n < limit && mkv_index_iter_valid(it); mkv_index_iter_next(it)) {
    size_t klen, vlen;
    const char *k = mkv_index_iter_key(it, &klen);
    if (plen && (klen < plen || memcmp(k, prefix, plen) != 0)) break;
    const char *v = mkv_index_iter_value(it, &vlen);
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, k, klen);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, v, vlen);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, ++n);
  }
  char *err = NULL;
  int failed = mkv_index_iter_error(it, &err);
  mkv_index_iter_free(it);
  if (failed) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    free(err);
    lua_pushliteral(L, "EIO");
    return 3;
  }
  return 1;
}

static int l_index_get(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t v;
  mkv_buf_init(&v);
  int rc = mkv_index_get(a->index, key, klen, &v);
  if (rc == UV_ENOENT) {
    mkv_buf_free(&v);
    lua_pushnil(L);
    return 1;
  }
  if (rc != 0) {
    mkv_buf_free(&v);
    return push_error(L, rc);
  }
  lua_pushlstring(L, v.data ? v.data : "", v.len);
  mkv_buf_free(&v);
  return 1;
}

typedef struct iw_op_s {
  op_t op;
  mkv_index_write_t w;
  int done;
} iw_op_t;

static void iw_done(mkv_index_write_t *w, int status) {
  iw_op_t *o = w->data;
  task_t *t = o->op.task;
  if (status == 0)
    lua_pushboolean(t->T, 1);
  else
    push_error(t->T, status);
  mkv_index_write_free(&o->w);
  free(o);
  task_resume(t);
}

/* mkv.index_put(key, value [, sync]) / mkv.index_del(key [, sync]) -> true | nil, msg:
 * through the index-writer thread, as the API's writes. */
static int index_write(lua_State *L, int del) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  size_t klen, vlen = 0;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *val = del ? NULL : luaL_checklstring(L, 2, &vlen);
  int sync = lua_toboolean(L, del ? 2 : 3);
  if (mkv_index_failure(a->index)) return push_error(L, MKV_EINDEX);
  iw_op_t *o = mkv_calloc(1, sizeof(*o));
  o->op.cancel = cancel_nothing; /* an index write completes soon; it is not cut short */
  mkv_index_write_init(&o->w);
  o->w.data = o;
  if (del)
    mkv_index_del(a->port, &o->w, key, klen, sync, iw_done);
  else
    mkv_index_put(a->port, &o->w, key, klen, val, vlen, sync, iw_done);
  park(t, &o->op);
  return lua_yield(L, 0);
}

static int l_index_put(lua_State *L) {
  return index_write(L, 0);
}

static int l_index_del(lua_State *L) {
  return index_write(L, 1);
}

/* mkv.lock(key) -> true | false: the API's key lock, without waiting (a key a PUT or
 * DELETE holds is left for later). Released by mkv.unlock or when the task ends. */
static int l_lock(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  if (mkv_keylock_try(key, klen) != 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  mkv_buf_add(&t->locks, &klen, sizeof(klen));
  mkv_buf_add(&t->locks, key, klen);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_unlock(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  task_t *t = async_task(L, a);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  size_t off = 0;
  while (off < t->locks.len) {
    size_t l;
    memcpy(&l, t->locks.data + off, sizeof(l));
    size_t rec = sizeof(l) + l;
    if (l == klen && memcmp(t->locks.data + off + sizeof(l), key, klen) == 0) {
      mkv_keylock_release(key, klen);
      memmove(t->locks.data + off, t->locks.data + off + rec, t->locks.len - off - rec);
      t->locks.len -= rec;
      lua_pushboolean(L, 1);
      return 1;
    }
    off += rec;
  }
  return luaL_error(L, "mkv.unlock: this task holds no lock on that key");
}

/* ---- placement, through a checked policy state ---- */

static void push_list(lua_State *L, const char *joined, size_t len) {
  lua_newtable(L);
  const char *pos = joined, *end = joined + len, *item;
  size_t ilen;
  int i = 0;
  while (len && mkv_volumes_next(&pos, end, &item, &ilen)) {
    lua_pushlstring(L, item, ilen);
    lua_rawseti(L, -2, ++i);
  }
}

/* mkv.place(key) -> { "host:port[/svXX]", ... } (placement and replica count). */
static int l_place(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t j;
  mkv_buf_init(&j);
  int n;
  if (mkv_policy_place(a->policy, key, klen, &j, &n) != 0) {
    mkv_buf_free(&j);
    lua_pushnil(L);
    lua_pushstring(L, mkv_policy_error(a->policy));
    lua_pushliteral(L, "EPOLICY");
    return 3;
  }
  push_list(L, j.data, j.len);
  mkv_buf_free(&j);
  return 1;
}

static int l_path(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t p;
  mkv_buf_init(&p);
  if (mkv_policy_path(a->policy, key, klen, &p) != 0) {
    mkv_buf_free(&p);
    lua_pushnil(L);
    lua_pushstring(L, mkv_policy_error(a->policy));
    lua_pushliteral(L, "EPOLICY");
    return 3;
  }
  lua_pushlstring(L, p.data, p.len);
  mkv_buf_free(&p);
  return 1;
}

static int join_table(lua_State *L, int idx, mkv_buf_t *out) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)lua_objlen(L, idx);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    size_t l;
    const char *s = lua_tolstring(L, -1, &l);
    if (s == NULL || memchr(s, ',', l)) {
      lua_pop(L, 1);
      return luaL_error(L, "volume lists hold strings without commas");
    }
    if (i > 1) mkv_buf_addc(out, ',');
    mkv_buf_add(out, s, l);
    lua_pop(L, 1);
  }
  return n;
}

/* mkv.rebalance_plan(key, have, want) -> copy, drop: the rebalance policy's answer,
 * checked (copies only to `want`, drops only from `have`, never every good copy). */
static int l_rebalance_plan(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  mkv_buf_t have, want, copy, drop;
  mkv_buf_init(&have);
  mkv_buf_init(&want);
  mkv_buf_init(&copy);
  mkv_buf_init(&drop);
  join_table(L, 2, &have);
  join_table(L, 3, &want);
  int rc = mkv_policy_rebalance(a->policy, key, klen, have.data ? have.data : "", have.len,
                                want.data ? want.data : "", want.len, &copy, &drop);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, mkv_policy_error(a->policy));
    lua_pushliteral(L, "EPOLICY");
  } else {
    push_list(L, copy.data, copy.len);
    push_list(L, drop.data, drop.len);
  }
  mkv_buf_free(&have);
  mkv_buf_free(&want);
  mkv_buf_free(&copy);
  mkv_buf_free(&drop);
  return rc != 0 ? 3 : 2;
}

/* ---- progress and output ---- */

/* mkv.progress{ phase = "name", total = N, done = n }: a new phase starts its own count;
 * `done` adds to it. */
static int l_progress(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "phase");
  if (lua_isstring(L, -1)) {
    snprintf(a->phase, sizeof(a->phase), "%s", lua_tostring(L, -1));
    a->done_units = 0;
    a->total = 0;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "total");
  if (lua_isnumber(L, -1)) a->total = lua_tonumber(L, -1);
  lua_getfield(L, 1, "done");
  if (lua_isnumber(L, -1)) a->done_units += lua_tonumber(L, -1);
  return 0;
}

/* mkv.count(name [, n]): examined, changed, failed or skipped. */
static int l_count(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  const char *name = luaL_checkstring(L, 1);
  unsigned long long n = (unsigned long long)luaL_optinteger(L, 2, 1);
  if (strcmp(name, "examined") == 0)
    a->examined += n;
  else if (strcmp(name, "changed") == 0)
    a->changed += n;
  else if (strcmp(name, "failed") == 0)
    a->failed += n;
  else if (strcmp(name, "skipped") == 0)
    a->skipped += n;
  else
    return luaL_error(L, "mkv.count: unknown counter %s", name);
  return 0;
}

static int l_report(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  emit(a, MKV_ADMIN_REPORT, "%.*s", (int)n, s);
  return 0;
}

static int l_log(lua_State *L) {
  mkv_admin_t *a = admin_of(L);
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  emit(a, MKV_ADMIN_LOG, "%.*s", (int)n, s);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)mkv_now_ns() / 1e9);
  return 1;
}

static const luaL_Reg admin_funcs[] = {
    {"spawn", l_spawn},         {"_wait", l_wait_park},     {"join", l_join},
    {"sleep", l_sleep},         {"after", l_after},         {"http", l_http},
    {"copy", l_copy},           {"md5_url", l_md5_url},
    {"index_scan", l_index_scan}, {"index_get", l_index_get},
    {"index_put", l_index_put}, {"index_del", l_index_del},
    {"lock", l_lock},           {"unlock", l_unlock},
    {"place", l_place},         {"path", l_path},
    {"rebalance_plan", l_rebalance_plan},
    {"progress", l_progress},   {"count", l_count},
    {"report", l_report},       {"log", l_log},
    {"now", l_now},             {NULL, NULL},
};

/* ---- the script's state ---- */

/* package.loaders entry: modules of lua/ compiled into the binary ("mkv_admin"). */
static int embedded_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char path[256];
  snprintf(path, sizeof(path), "lua/%s.lua", name);
  const mkv__embedded_t *e = mkv__embedded_find(path);
  if (e == NULL) {
    lua_pushfstring(L, " no built-in module lua/%s.lua", name);
    return 1;
  }
  char chunk[300];
  snprintf(chunk, sizeof(chunk), "@%s", path);
  if (luaL_loadbuffer(L, e->src, e->len, chunk) != 0) return lua_error(L);
  return 1;
}

int mkv_admin_script_exists(const char *name) {
  char path[256];
  snprintf(path, sizeof(path), "lua/%s.lua", name);
  return mkv__embedded_find(path) != NULL;
}

static void push_config(lua_State *L, const mkv_config_t *cfg) {
  lua_createtable(L, 0, 8);
  lua_createtable(L, cfg->nvolumes, 0);
  for (int i = 0; i < cfg->nvolumes; i++) {
    lua_pushstring(L, cfg->volumes[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "volumes");
  lua_pushinteger(L, cfg->replicas);
  lua_setfield(L, -2, "replicas");
  lua_pushinteger(L, cfg->subvolumes);
  lua_setfield(L, -2, "subvolumes");
  lua_pushboolean(L, cfg->md5sum);
  lua_setfield(L, -2, "md5sum");
  lua_pushboolean(L, cfg->protect);
  lua_setfield(L, -2, "protect");
  lua_pushnumber(L, cfg->voltimeout_ms / 1000.0);
  lua_setfield(L, -2, "voltimeout");
  lua_pushnumber(L, cfg->limits.volume_timeout_ms / 1000.0);
  lua_setfield(L, -2, "volume_timeout");
  const char *pc = cfg->policy_config && cfg->policy_config[0] ? cfg->policy_config : "{}";
  char *src = mkv_sprintf("return %s", pc);
  if (luaL_loadbuffer(L, src, strlen(src), "=policy_config") == 0 && lua_pcall(L, 0, 1, 0) == 0)
    lua_setfield(L, -2, "policy");
  else
    lua_pop(L, 1);
  free(src);
}

static int build_state(mkv_admin_t *a, const char *script_path, char **err) {
  lua_State *L = luaL_newstate();
  if (L == NULL) mkv_fatal("cannot create a Lua state");
  a->L = L;
  luaL_openlibs(L);
  lua_pushlightuserdata(L, (void *)&admin_key);
  lua_pushlightuserdata(L, a);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, (void *)&task_key);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);

  /* mkv = the pure helpers + the runtime's functions + config + args */
  lua_pushcfunction(L, luaopen_mkv);
  lua_call(L, 0, 1);
  luaL_register(L, NULL, admin_funcs);
  push_config(L, a->cfg);
  lua_setfield(L, -2, "config");
  lua_newtable(L);
  for (int i = 0; i < a->opts.argc; i++) {
    lua_pushstring(L, a->opts.argv[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "args");
  lua_pushinteger(L, a->opts.concurrency);
  lua_setfield(L, -2, "concurrency");
  /* mkv.wait and friends, written in Lua on top of the parking primitives */
  const mkv__embedded_t *pre = mkv__embedded_find("lua/mkv_prelude.lua");
  if (pre == NULL || luaL_loadbuffer(L, pre->src, pre->len, "@lua/mkv_prelude.lua") != 0) {
    *err = mkv_strdup(pre ? lua_tostring(L, -1) : "lua/mkv_prelude.lua is not compiled in");
    return -1;
  }
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    *err = mkv_strdup(lua_tostring(L, -1));
    return -1;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "mkv");
  lua_pop(L, 1);
  /* built-in lua/ modules after the usual searchers */
  lua_getfield(L, -1, "loaders");
  lua_pushcfunction(L, embedded_searcher);
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  lua_pop(L, 2);
  lua_setglobal(L, "mkv");

  /* the script: sent over the wire, a file given by path, or lua/<name>.lua compiled in */
  int rc;
  if (a->opts.source) {
    char chunk[300];
    snprintf(chunk, sizeof(chunk), "@%s", a->script);
    rc = luaL_loadbuffer(L, a->opts.source, a->opts.source_len, chunk);
  } else if (script_path) {
    rc = luaL_loadfile(L, script_path);
  } else {
    char path[256];
    snprintf(path, sizeof(path), "lua/%s.lua", a->script);
    const mkv__embedded_t *e = mkv__embedded_find(path);
    if (e == NULL) {
      *err = mkv_sprintf("no admin script named '%s'", a->script);
      return -1;
    }
    char chunk[300];
    snprintf(chunk, sizeof(chunk), "@%s", path);
    rc = luaL_loadbuffer(L, e->src, e->len, chunk);
  }
  if (rc != 0) {
    *err = mkv_sprintf("%s", lua_tostring(L, -1));
    return -1;
  }
  return 0;
}

/* ---- life ---- */

static void on_handle_closed(uv_handle_t *h) {
  mkv_admin_t *a = h->data;
  if (--a->closing_handles > 0) return;
  void (*done)(void *, int) = a->done;
  void *arg = a->done_arg;
  int code = a->code;
  lua_close(a->L);
  mkv_policy_free(a->policy);
  mkv_buf_free(&a->script_args);
  free(a->script);
  free(a);
  done(arg, code);
}

static void finish_script(mkv_admin_t *a) {
  if (a->finished) return;
  a->finished = 1;
  double secs = (double)(mkv_now_ns() - a->start_ns) / 1e9;
  progress_tick(&a->progress_timer);
  emit(a, MKV_ADMIN_SUMMARY,
       "%s: examined %llu, changed %llu, failed %llu, skipped %llu; %llu bytes moved in %.1f s",
       a->script, a->examined, a->changed, a->failed, a->skipped, a->bytes, secs);
  a->code = a->usage_error ? 2 : a->failed || a->cancelled ? 1 : 0;
  /* The upstream and the port free themselves once their handles have closed; the
   * admin goes when its three timers have. */
  mkv_upstream_close(a->up);
  mkv_index_port_close(a->port);
  a->closing_handles = 3;
  uv_close((uv_handle_t *)&a->run_timer, on_handle_closed);
  uv_close((uv_handle_t *)&a->bw_timer, on_handle_closed);
  uv_close((uv_handle_t *)&a->progress_timer, on_handle_closed);
}

int mkv_admin_start(uv_loop_t *loop, const mkv_config_t *cfg, mkv_index_t *index,
                    const mkv_admin_opts_t *opts, void (*done)(void *arg, int code),
                    void *arg, mkv_admin_t **out, char **err) {
  mkv_admin_t *a = mkv_calloc(1, sizeof(*a));
  a->loop = loop;
  a->cfg = cfg;
  a->index = index;
  a->opts = *opts;
  if (a->opts.concurrency < 1) a->opts.concurrency = 16;
  a->done = done;
  a->done_arg = arg;
  mkv_buf_init(&a->script_args);
  const char *script_path = NULL;
  size_t sl = strlen(opts->script);
  if (!opts->source &&
      (strchr(opts->script, '/') || (sl > 4 && strcmp(opts->script + sl - 4, ".lua") == 0)))
    script_path = opts->script;
  a->script = mkv_strdup(opts->script);
  if (mkv_policy_new(cfg, &a->policy, err) != 0) {
    free(a->script);
    free(a);
    return -1;
  }
  if (build_state(a, script_path, err) != 0) {
    lua_close(a->L);
    mkv_policy_free(a->policy);
    free(a->script);
    free(a);
    return -1;
  }
  if (mkv_index_port_new(index, loop, &a->port) != 0) mkv_fatal("cannot create an index port");
  a->up = mkv_upstream_new(loop, cfg->limits.suspect_time_ms);
  mkv_upstream_set_headers(a->up, cfg->auth.volume_header); /* keyed volumes (auth.h) */
  uv_timer_init(loop, &a->run_timer);
  a->run_timer.data = a;
  uv_timer_init(loop, &a->bw_timer);
  a->bw_timer.data = a;
  uv_timer_init(loop, &a->progress_timer);
  a->progress_timer.data = a;
  a->start_ns = a->tokens_ns = mkv_now_ns();
  uv_timer_start(&a->progress_timer, progress_tick, 1000, 1000);

  /* The root task runs the script's chunk. */
  task_t *root = task_new(a, 1);
  lua_xmove(a->L, root->T, 1); /* the loaded chunk */
  schedule(root);
  *out = a;
  return 0;
}

void mkv_admin_cancel(mkv_admin_t *a) {
  if (a->cancelled || a->finished) return;
  a->cancelled = 1;
  emit(a, MKV_ADMIN_LOG, "cancelled: stopping every task");
  start_waiting_spawns(a); /* resumes spawn waiters with ECANCELED */
  while (a->afters) { /* delayed work runs now (see start_due) */
    after_t *d = a->afters;
    uv_timer_stop(&d->timer);
    after_fired(&d->timer);
  }
  for (task_t *t = a->tasks; t; t = t->next) {
    if (t->state != T_PARKED || t->op == NULL || t->exempt) continue;
    op_t *op = t->op;
    if (op == &task_wait_op || op == &spawn_wait_op || op == &join_op) continue;
    op->cancel(op);
  }
}

/* ---- options ---- */

static int parse_rate(const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v <= 0) return -1;
  double mult = 1;
  if (strncasecmp(end, "k", 1) == 0)
    mult = 1e3, end++;
  else if (strncasecmp(end, "m", 1) == 0)
    mult = 1e6, end++;
  else if (strncasecmp(end, "g", 1) == 0)
    mult = 1e9, end++;
  if (*end == 'i' || *end == 'I') { /* KiB, MiB, GiB */
    mult = mult == 1e3 ? 1024 : mult == 1e6 ? 1048576 : mult == 1e9 ? 1073741824 : mult;
    end++;
  }
  if (*end == 'B' || *end == 'b') end++;
  if (strcmp(end, "/s") == 0) end += 2;
  if (*end != '\0') return -1;
  *out = v * mult;
  return 0;
}

int mkv_admin_parse_opts(mkv_admin_opts_t *o, int argc, const char *const *argv,
                         const char **rest, int *nrest, char **err) {
  *nrest = 0;
  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = NULL;
    const char *name = arg;
    while (*name == '-') name++;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    int is_conc = nlen == 11 && strncmp(name, "concurrency", 11) == 0;
    int is_bw = nlen == 9 && strncmp(name, "bandwidth", 9) == 0;
    if (arg[0] == '-' && (is_conc || is_bw)) {
      if (eq)
        val = eq + 1;
      else if (i + 1 < argc)
        val = argv[++i];
      else {
        *err = mkv_sprintf("%s needs a value", arg);
        return -1;
      }
      if (is_conc) {
        long long n;
        if (mkv_parse_int(val, strlen(val), &n) != 0 || n < 1 || n > 10000) {
          *err = mkv_sprintf("--concurrency: expected a whole number from 1 to 10000, got %s", val);
          return -1;
        }
        o->concurrency = (int)n;
      } else if (parse_rate(val, &o->bandwidth) != 0) {
        *err = mkv_sprintf("--bandwidth: expected a rate such as 50MB/s, got %s", val);
        return -1;
      }
      continue;
    }
    rest[(*nrest)++] = arg;
  }
  return 0;
}
