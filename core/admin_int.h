/* admin_int.h: the admin runtime's private types, shared by its four files and nothing
 * else (libuv's uv-common.h pattern; Redis spreads its scripting the same way):
 *
 *   admin.c       the runtime's life: start, output and progress, cancel, the end of a
 *                 run, and the options every script takes
 *   admin_task.c  the scheduler: tasks (pinned coroutines), parking, spawn, wait, join,
 *                 after and sleep, the end of a task
 *   admin_xfer.c  transfers to volumes: HTTP requests, streamed copies and MD5s, the
 *                 bandwidth cap
 *   admin_lua.c   the script's Lua state: the `mkv` table (index, locks, placement,
 *                 progress) and the registration of every binding
 *
 * Everything runs on the one thread that runs the admin loop.
 *
 * The pattern (lua-nginx-module's): an async mkv.* call either completes at once --
 * returning its results, or an early error as `nil, msg, code`, without yielding -- or it
 * parks its task on an operation and yields. The libuv callback records the outcome,
 * pushes the results on the task's stack with the operation's one push function (the
 * same one the immediate path uses: lua-nginx-module's prepare_retvals) and resumes the
 * task. Cancelling a parked operation completes it with ECANCELED the same way, so
 * every operation completes exactly once. (Results must never be pushed before a
 * `return lua_yield(L, 0)`: LuaJIT cuts the stack back to the yielded values.) */
#ifndef MKV_ADMIN_INT_H
#define MKV_ADMIN_INT_H

#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "mkv/admin.h"
#include "mkv/policy.h"
#include "mkv/upstream.h"

enum { T_READY, T_RUNNING, T_PARKED, T_DONE };

/* What a task is parked on. The waits are the scheduler's own and hold no I/O: a cancel
 * wakes them by ending what they wait for. The others are I/O a cancel cuts short. */
typedef enum {
  OP_WAIT_SPAWN, /* mkv.spawn waiting for a free slot */
  OP_WAIT_TASK,  /* mkv.wait on another task */
  OP_WAIT_JOIN,  /* mkv.join until every spawned task has ended */
  OP_SLEEP,
  OP_HTTP,
  OP_XFER,        /* mkv.copy, mkv.md5_url */
  OP_INDEX_WRITE, /* completes soon: not cut short */
} op_kind_t;

typedef struct task_s task_t;
typedef struct op_s op_t;

struct op_s {
  op_kind_t kind;
  task_t *task;
  void (*cancel)(op_t *op); /* the I/O kinds but OP_INDEX_WRITE */
  op_t *next_bw;            /* in the bandwidth wait list */
};

struct task_s {
  mkv_admin_t *a;
  lua_State *T;
  int thread_ref; /* pins the coroutine */
  int handle_ref; /* the handle table the spawner got (results go there) */
  int state;
  op_t *op;
  op_t wait; /* the op of the scheduler's own waits (OP_WAIT_*) */
  task_t *next_ready;
  task_t *prev, *next; /* all live tasks */
  task_t *waiters;     /* tasks parked in mkv.wait on this one */
  task_t *next_waiter;
  /* A spawn parked for a free slot keeps what it will start here. */
  int spawn_ref;
  int is_root;
  int started; /* resumed once: the first resume passes the function's arguments */
  int exempt;  /* started by a cancel to finish committed work: may still do I/O */
  mkv_buf_t locks; /* keys this task holds locks on: length-prefixed */
};

typedef struct after_s after_t;

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

  task_t *tasks; /* live */
  task_t *ready_head, *ready_tail;
  task_t *spawn_waiters_head, *spawn_waiters_tail;
  task_t *joiners; /* parked in mkv.join until no spawned task is left */
  after_t *afters;             /* mkv.after timers not yet fired */
  after_t *due_head, *due_tail; /* fired, waiting for a free slot */
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
  /* mkv.progress{total_bytes = N}: the bytes this phase moves, counted from
   * bytes_base (a->bytes then) at bytes_base_ns. */
  double total_bytes;
  unsigned long long bytes_base;
  uint64_t bytes_base_ns;
  unsigned counted; /* the counters mkv.count touched: bit i for examined, changed,
                     * failed, skipped (the summary's order) */
  int custom;       /* an operator's script (mkv run FILE.lua), not one of lua/ */
  int progressed;   /* the script called mkv.progress */
  uv_timer_t progress_timer;

  int cancelled, root_done, finished, code;
  int usage_error; /* the script refused its options: exit code 2 */
  int closing_handles;
  void (*done)(void *arg, int code);
  void *done_arg;
};

/* ---- admin.c ---- */

/* One output line to the sink (newlines in it become spaces). */
void mkv__admin_emit(mkv_admin_t *a, int kind, const char *fmt, ...) MKV_PRINTF(3, 4);
/* The run is over (every task and delayed task ended): summary, then the handles close
 * and done runs. */
void mkv__admin_finish(mkv_admin_t *a);

/* ---- admin_task.c ---- */

/* The runtime and the task of a Lua thread (the registry holds both). */
mkv_admin_t *mkv__admin_of(lua_State *L);
task_t *mkv__task_of(lua_State *L);
/* Every async function starts here: raises unless called from a task, and (for tasks not
 * exempt) once the run is cancelled. */
task_t *mkv__task_async(lua_State *L, mkv_admin_t *a);
/* Creates the root task, running the function on top of a->L's stack. */
void mkv__task_start_root(mkv_admin_t *a);
/* Queues t to be resumed (on the next turn) with the values on its stack. */
void mkv__task_schedule(task_t *t);
/* Parks the calling task on op; the caller then returns lua_yield(L, 0). */
void mkv__task_park(task_t *t, op_t *op, op_kind_t kind);
/* Resumes a parked task now with the values its op pushed on its stack. */
void mkv__task_resume(task_t *t);
/* Cancels what every task is parked on, starts delayed work at once (exempt), and wakes
 * the tasks waiting for a slot with ECANCELED. */
void mkv__task_cancel_all(mkv_admin_t *a);
/* Whether anything is still alive: tasks, delayed tasks. */
int mkv__task_idle(mkv_admin_t *a);
/* nil, msg, code for an error code; returns 3. */
int mkv__push_error(lua_State *L, int err);

extern const luaL_Reg mkv__admin_task_funcs[];

/* ---- admin_xfer.c ---- */

extern const luaL_Reg mkv__admin_xfer_funcs[];

/* ---- admin_lua.c ---- */

/* Builds a->L: the libraries, the `mkv` table (helpers, bindings, config, args), the
 * prelude, and the script's chunk on top of the stack. 0, or -1 with *err (owned). */
int mkv__admin_build_state(mkv_admin_t *a, const char *script_path, char **err);

#endif
