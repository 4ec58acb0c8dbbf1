/* admin.c: the admin runtime's life -- starting a run, its output and progress lines,
 * cancelling it, the end of a run -- and the options every script takes. The scheduler,
 * the transfers and the script's Lua state are in admin_task.c, admin_xfer.c and
 * admin_lua.c (admin_int.h says how they fit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "mkv/admin_proto.h"
#include "mkv/text.h"

/* ---- output ---- */

void mkv__admin_emit(mkv_admin_t *a, int kind, const char *fmt, ...) {
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
  mkv_admin_progress_t p = {
      .done = a->done_units,
      .total = a->total,
      .bytes = (double)a->bytes,
      .elapsed_ms = (double)((mkv_now_ns() - a->start_ns) / 1000000),
      .examined = (double)a->examined,
      .changed = (double)a->changed,
      .failed = (double)a->failed,
  };
  if (a->custom) {
    /* An operator's script: what it never kept goes as -1, which the command leaves
     * out (lua/'s scripts keep them all, and their lines are parsed). */
    double *v[] = {&p.examined, &p.changed, &p.failed};
    for (int i = 0; i < 3; i++)
      if (!(a->counted & (1u << i))) *v[i] = -1;
    if (!a->progressed) p.done = -1;
    if (a->bytes == 0) p.bytes = -1;
  }
  if (a->total_bytes > 0) {
    p.bytes_total = a->total_bytes;
    p.bytes_phase = (double)(a->bytes - a->bytes_base);
    p.phase_ms = (double)((mkv_now_ns() - a->bytes_base_ns) / 1000000);
  }
  snprintf(p.phase, sizeof(p.phase), "%s", a->phase);
  char line[256];
  mkv_admin_progress_format(line, sizeof(line), &p);
  mkv__admin_emit(a, MKV_ADMIN_PROGRESS, "%s", line);
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
  free(a->script);
  free(a);
  done(arg, code);
}

/* The summary of an operator's script names only the counters it touched: a count it
 * never kept is not news, and "failed 0" from a script that never counts failures
 * would claim a check it did not make. */
static void custom_summary(mkv_admin_t *a, double secs) {
  static const char *const names[] = {"examined", "changed", "failed", "skipped"};
  const unsigned long long v[] = {a->examined, a->changed, a->failed, a->skipped};
  const char *base = strrchr(a->script, '/') ? strrchr(a->script, '/') + 1 : a->script;
  mkv_buf_t b;
  mkv_buf_init(&b);
  mkv_buf_addf(&b, "%s: ", base);
  size_t start = b.len;
  for (int i = 0; i < (int)MKV_ARRAY_SIZE(names); i++)
    if (a->counted & (1u << i))
      mkv_buf_addf(&b, "%s%s %llu", b.len > start ? ", " : "", names[i], v[i]);
  if (b.len == start) mkv_buf_adds(&b, "done");
  if (a->bytes) mkv_buf_addf(&b, "; %llu bytes moved", a->bytes);
  mkv_buf_addf(&b, " in %.1f s", secs);
  mkv__admin_emit(a, MKV_ADMIN_SUMMARY, "%.*s", (int)b.len, b.data);
  mkv_buf_free(&b);
}

void mkv__admin_finish(mkv_admin_t *a) {
  if (a->finished) return;
  a->finished = 1;
  double secs = (double)(mkv_now_ns() - a->start_ns) / 1e9;
  progress_tick(&a->progress_timer);
  if (a->custom)
    custom_summary(a, secs);
  else /* lua/'s scripts: every counter, always (operators and specs parse the line) */
    mkv__admin_emit(a, MKV_ADMIN_SUMMARY,
                    "%s: examined %llu, changed %llu, failed %llu, skipped %llu; %llu bytes "
                    "moved in %.1f s",
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
  if (a->opts.concurrency < 1) a->opts.concurrency = MKV_ADMIN_CONCURRENCY;
  a->done = done;
  a->done_arg = arg;
  const char *script_path = NULL;
  size_t sl = strlen(opts->script);
  if (!opts->source &&
      (strchr(opts->script, '/') || (sl > 4 && strcmp(opts->script + sl - 4, ".lua") == 0)))
    script_path = opts->script;
  a->script = mkv_strdup(opts->script);
  a->custom = opts->source != NULL || script_path != NULL;
  if (mkv_policy_new(cfg, &a->policy, err) != 0) {
    free(a->script);
    free(a);
    return -1;
  }
  if (mkv__admin_build_state(a, script_path, err) != 0) {
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
  mkv__task_start_root(a); /* the root task runs the script's chunk */
  *out = a;
  return 0;
}

int mkv_admin_cancel(mkv_admin_t *a) {
  if (a->finished) return UV_EALREADY;
  if (a->cancelled) return 0;
  a->cancelled = 1;
  mkv__admin_emit(a, MKV_ADMIN_LOG, "cancelled: stopping every task");
  mkv__task_cancel_all(a);
  return 0;
}

/* ---- options ---- */

int mkv_admin_parse_opts(mkv_admin_opts_t *o, int argc, const char *const *argv,
                         const char **rest, int *nrest, char **err) {
  *nrest = 0;
  o->concurrency = MKV_ADMIN_CONCURRENCY;
  o->bandwidth = 0;
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
      } else if (mkv_parse_rate(val, &o->bandwidth) != 0) {
        *err = mkv_sprintf("--bandwidth: expected a rate such as 50MB/s, got %s", val);
        return -1;
      }
      continue;
    }
    rest[(*nrest)++] = arg;
  }
  return 0;
}