/* admin_task.c: the admin runtime's scheduler -- tasks (Lua coroutines pinned in the
 * registry from creation to end), parking and resuming, mkv.spawn / mkv.wait /
 * mkv.join, mkv.after and mkv.sleep.
 *
 * Invariants: a task is pinned once, when it is created, and unpinned once, in
 * task_end; a parked task is resumed exactly once per park (by its op's completion, a
 * cancel, or the end of what it waits for); a task that holds key locks gives them back
 * when it ends, however it ends. See admin_int.h for the parking pattern. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "admin_int.h"
#include "mkv/keylock.h"
#include "mkv/log.h"

static const char task_key = 'T'; /* registry: thread -> task (light userdata) */
static const char admin_key = 'A';

static void start_due(mkv_admin_t *a);
static void start_waiting_spawns(mkv_admin_t *a);
static void run_ready(uv_timer_t *timer);

mkv_admin_t *mkv__admin_of(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&admin_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  mkv_admin_t *a = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return a;
}

task_t *mkv__task_of(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&task_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushthread(L);
  lua_rawget(L, -2);
  task_t *t = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return t;
}

int mkv__push_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, mkv_strerror(err));
  lua_pushstring(L, mkv_errname(err));
  return 3;
}

task_t *mkv__task_async(lua_State *L, mkv_admin_t *a) {
  task_t *t = mkv__task_of(L);
  if (t == NULL) luaL_error(L, "async mkv functions run only inside the script or mkv.spawn");
  if (a->cancelled && !t->exempt) luaL_error(L, "ECANCELED: the run was cancelled");
  return t;
}

void mkv__task_schedule(task_t *t) {
  mkv_admin_t *a = t->a;
  t->state = T_READY;
  t->op = NULL;
  t->next_ready = NULL;
  if (a->ready_tail)
    a->ready_tail->next_ready = t;
  else
    a->ready_head = t;
  a->ready_tail = t;
  if (!uv_is_active((uv_handle_t *)&a->run_timer))
    uv_timer_start(&a->run_timer, run_ready, 0, 0);
}

void mkv__task_park(task_t *t, op_t *op, op_kind_t kind) {
  op->kind = kind;
  op->task = t;
  t->state = T_PARKED;
  t->op = op;
}

/* The registry entries of the runtime: its address, and the thread -> task table. */
static void registry_init(mkv_admin_t *a) {
  lua_State *L = a->L;
  lua_pushlightuserdata(L, (void *)&admin_key);
  lua_pushlightuserdata(L, a);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, (void *)&task_key);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
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

int mkv__task_idle(mkv_admin_t *a) {
  return a->tasks == NULL && a->afters == NULL && a->due_head == NULL;
}

/* The results of an ended task go to its handle: { done, ok, results | err }. */
static void fill_handle(task_t *t, int rc, const char *err) {
  lua_State *L = t->a->L;
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

/* A task ended (returned or raised): results to its handle, waiters woken, unpinned,
 * freed; then whatever waited for a slot starts, and the run ends if nothing is left. */
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
      mkv__admin_emit(a, MKV_ADMIN_LOG, "%s", err);
    } else if (!(a->cancelled && strstr(err, "ECANCELED"))) {
      a->failed++;
      mkv__admin_emit(a, MKV_ADMIN_LOG, "error: %s", err);
    }
  }
  if (t->handle_ref != LUA_NOREF) fill_handle(t, rc, err);
  for (task_t *w = t->waiters, *next; w; w = next) {
    next = w->next_waiter;
    lua_pushboolean(w->T, 1);
    mkv__task_schedule(w); /* resumed with `true`; mkv.wait reads the handle */
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
  /* mkv.join waits for the spawned tasks, not for mkv.after's delayed ones (the run
   * waits for those before it ends): a loop of batches with a grace period each (the
   * repair, rebalance) must not pay the grace once per batch. */
  if (a->spawned_running == 0 && a->spawn_waiters_head == NULL) {
    for (task_t *j = a->joiners, *next; j; j = next) {
      next = j->next_waiter;
      j->next_waiter = NULL;
      lua_pushboolean(j->T, 1);
      mkv__task_schedule(j);
    }
    a->joiners = NULL;
  }
  if (a->root_done && mkv__task_idle(a)) mkv__admin_finish(a);
}

/* Resumes a task with the values on its stack: its function's arguments the first
 * time (the function is below them), an operation's results after that. */
void mkv__task_resume(task_t *t) {
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
  /* A runtime error's message already says where it happened. */
  task_end(t, rc);
}

static void run_ready(uv_timer_t *timer) {
  mkv_admin_t *a = timer->data;
  task_t *t = a->ready_head;
  a->ready_head = a->ready_tail = NULL;
  while (t) {
    task_t *next = t->next_ready;
    t->next_ready = NULL;
    if (t->state == T_READY) mkv__task_resume(t);
    t = next;
  }
}

void mkv__task_start_root(mkv_admin_t *a) {
  registry_init(a);
  task_t *root = task_new(a, 1);
  lua_xmove(a->L, root->T, 1); /* the loaded chunk */
  mkv__task_schedule(root);
}

/* ---- concurrency: mkv.spawn / mkv.wait / mkv.join ---- */

/* Creates a task running the function + args held in the table at registry ref, and
 * pushes its handle on the spawner's stack (when there is a spawner). */
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
  mkv__task_schedule(t);
}

/* Spawns parked for a slot start as slots free up; after a cancel they get ECANCELED. */
static void start_waiting_spawns(mkv_admin_t *a) {
  while (a->spawn_waiters_head && a->spawned_running < a->opts.concurrency && !a->cancelled) {
    task_t *s = a->spawn_waiters_head;
    a->spawn_waiters_head = s->next_waiter;
    if (!a->spawn_waiters_head) a->spawn_waiters_tail = NULL;
    s->next_waiter = NULL;
    int ref = s->spawn_ref;
    s->spawn_ref = LUA_NOREF;
    start_task_from(a, s, ref); /* pushes the handle on s's stack */
    mkv__task_schedule(s);
  }
  if (a->cancelled) {
    while (a->spawn_waiters_head) {
      task_t *s = a->spawn_waiters_head;
      a->spawn_waiters_head = s->next_waiter;
      s->next_waiter = NULL;
      luaL_unref(a->L, LUA_REGISTRYINDEX, s->spawn_ref);
      s->spawn_ref = LUA_NOREF;
      mkv__push_error(s->T, UV_ECANCELED);
      mkv__task_schedule(s);
    }
    a->spawn_waiters_tail = NULL;
  }
}

/* mkv.spawn(fn, ...) -> handle. Waits for a free slot when `concurrency` spawned tasks
 * are running, so a script's loop over a billion keys never holds more than that. */
static int l_spawn(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
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
  mkv__task_park(t, &t->wait, OP_WAIT_SPAWN);
  return lua_yield(L, 0);
}

/* mkv._wait(handle): parks until the task behind the handle has ended (mkv.wait, in
 * lua/mkv_prelude.lua, then reads its results from the handle: a C function cannot go
 * on after it yields). */
static int l_wait_park(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "done");
  int done = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (done) return 0;
  task_t *self = mkv__task_async(L, a);
  lua_getfield(L, 1, "task");
  task_t *t = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (t == NULL || t == self) return luaL_error(L, "mkv.wait: not a task handle");
  self->next_waiter = t->waiters;
  t->waiters = self;
  mkv__task_park(self, &self->wait, OP_WAIT_TASK);
  return lua_yield(L, 0);
}

/* mkv.join(): parks until every spawned task (but the caller) has ended. */
static int l_join(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *self = mkv__task_async(L, a);
  int others = a->spawned_running - (self->is_root ? 0 : 1);
  if (others <= 0 && a->spawn_waiters_head == NULL) return 0;
  if (!self->is_root) return luaL_error(L, "mkv.join: only the script's main task may join");
  self->next_waiter = a->joiners;
  a->joiners = self;
  mkv__task_park(self, &self->wait, OP_WAIT_JOIN);
  return lua_yield(L, 0);
}

/* ---- delayed tasks: mkv.after ---- */

struct after_s {
  after_t *next, *prev; /* in a->afters, then next in the due queue */
  mkv_admin_t *a;
  uv_timer_t timer;
  int ref; /* the function and its arguments */
};

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
  if (a->root_done && mkv__task_idle(a)) mkv__admin_finish(a);
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
  mkv_admin_t *a = mkv__admin_of(L);
  /* Allowed after a cancel too (it is no I/O): a move whose record write landed while
   * the cancel came must still schedule the removal of its surplus copies -- which then
   * runs at once, exempt, as start_due says. */
  if (mkv__task_of(L) == NULL) return luaL_error(L, "mkv.after runs only inside the script");
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

/* The one push of mkv.sleep's results: true, or nil, msg, code. */
static int sleep_push(lua_State *T, int err) {
  if (err) return mkv__push_error(T, err);
  lua_pushboolean(T, 1);
  return 1;
}

static void sleep_done(uv_timer_t *timer) {
  sleep_op_t *s = timer->data;
  task_t *t = s->op.task;
  uv_close((uv_handle_t *)timer, sleep_closed);
  sleep_push(t->T, 0);
  mkv__task_resume(t);
}

static void sleep_cancel(op_t *op) {
  sleep_op_t *s = (sleep_op_t *)op;
  uv_timer_stop(&s->timer);
  task_t *t = op->task;
  uv_close((uv_handle_t *)&s->timer, sleep_closed);
  sleep_push(t->T, UV_ECANCELED);
  mkv__task_schedule(t);
}

/* mkv.sleep(seconds) -> true | nil, msg, code (ECANCELED). */
static int l_sleep(lua_State *L) {
  mkv_admin_t *a = mkv__admin_of(L);
  task_t *t = mkv__task_async(L, a);
  double ms = luaL_checknumber(L, 1) * 1000;
  sleep_op_t *s = mkv_calloc(1, sizeof(*s));
  s->op.cancel = sleep_cancel;
  uv_timer_init(a->loop, &s->timer);
  s->timer.data = s;
  uv_timer_start(&s->timer, sleep_done, ms < 0 ? 0 : (uint64_t)ms, 0);
  mkv__task_park(t, &s->op, OP_SLEEP);
  return lua_yield(L, 0);
}

/* ---- cancel ---- */

void mkv__task_cancel_all(mkv_admin_t *a) {
  start_waiting_spawns(a); /* resumes spawn waiters with ECANCELED */
  while (a->afters) {      /* delayed work runs now (see start_due) */
    after_t *d = a->afters;
    uv_timer_stop(&d->timer);
    after_fired(&d->timer);
  }
  for (task_t *t = a->tasks; t; t = t->next) {
    if (t->state != T_PARKED || t->op == NULL || t->exempt) continue;
    switch (t->op->kind) {
    case OP_WAIT_SPAWN: /* woken above */
    case OP_WAIT_TASK:  /* woken when the task it waits for ends */
    case OP_WAIT_JOIN:  /* woken when the last spawned task ends */
    case OP_INDEX_WRITE: /* completes soon; a record write is never cut short */
      break;
    case OP_SLEEP:
    case OP_HTTP:
    case OP_XFER:
      t->op->cancel(t->op);
      break;
    }
  }
}

const luaL_Reg mkv__admin_task_funcs[] = {
    {"spawn", l_spawn}, {"_wait", l_wait_park}, {"join", l_join},
    {"after", l_after}, {"sleep", l_sleep},     {NULL, NULL},
};
