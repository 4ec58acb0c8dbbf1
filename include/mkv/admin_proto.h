/* admin_proto.h: the protocol between an admin command (`mkv rebalance`, `mkv run
 * FILE.lua` ...: admin_client.c) and the admin listener of the server that holds the
 * index (adminsrv.c), defined once.
 *
 *   Request   POST /admin/run?script=NAME&arg=OPT&arg=OPT... HTTP/1.0
 *             The args are the command's options exactly as typed (--concurrency N and
 *             --bandwidth RATE among them); only the server parses them, with
 *             mkv_admin_parse_opts, as an offline run does. The body is the script's
 *             source for `mkv run FILE.lua` (NAME is then the file's base name); empty
 *             for a built-in script.
 *   Answer    200 with "X-Mkv-Job: N" (the job's number on this server), then the
 *             run's output lines, "<kind> <text>\n" (kinds: admin.h), and last
 *             "X <exit code>\n"; the server then closes. Any other status has a one-line
 *             text body saying why the job was refused (the command exits 2). A client
 *             that goes away cancels its job.
 *
 *   Cancel    POST /admin/cancel?job=N HTTP/1.0, on a connection of its own (Ctrl-C):
 *             200 when job N is running and now stops -- its stream then ends as any
 *             run's does, with "X 1" -- 404 when no job N is running (it has ended),
 *             400 without a job number.
 *
 * The progress line's text is "done total bytes elapsed_ms examined changed failed
 * bytes_total bytes_phase phase_ms [phase]" (numbers), formatted, parsed and put in
 * words only here;
 * a count below 0 is one the script does not keep (not shown). A mixed pair (an older
 * server) loses only the phase's name.
 *
 * Pure functions; any thread. */
#ifndef MKV_ADMIN_PROTO_H
#define MKV_ADMIN_PROTO_H

#include <stddef.h>

#include "mkv/common.h"

#define MKV_ADMIN_RUN_PATH "/admin/run"
#define MKV_ADMIN_CANCEL_PATH "/admin/cancel"
#define MKV_ADMIN_JOB_HEADER "X-Mkv-Job"

/* Returns owned: "<db>/mkv.admin", the file in which the server that holds the index at
 * db names its admin listener ("127.0.0.1:43211\n"). Written whole after the index is
 * locked, removed on a clean stop; a stale one (after a crash) fails to connect. */
char *mkv_admin_addr_file(const char *db);
#define MKV_ADMIN_EXIT 'X' /* the last line's kind: the exit code */
#define MKV_ADMIN_MAX_ARGS 64

/* Appends the request's query (without '?'). */
void mkv_admin_proto_query(mkv_buf_t *q, const char *script, int argc, const char *const *argv);

/* A request's query, decoded. */
typedef struct mkv_admin_request_s {
  char *script;
  int argc;
  char *argv[MKV_ADMIN_MAX_ARGS];
} mkv_admin_request_t;

/* Decodes a query: 0, or -1 with *err (owned): a malformed escape, no script, too many
 * args. Unknown parameters are ignored. The request is freed either way by
 * mkv_admin_request_free. */
int mkv_admin_proto_parse(const char *q, size_t n, mkv_admin_request_t *r, char **err);
void mkv_admin_request_free(mkv_admin_request_t *r);

typedef struct mkv_admin_progress_s {
  double done, total, bytes, elapsed_ms, examined, changed, failed;
  /* A phase that knows how many bytes it moves (verify --deep: the copies it hashes):
   * that total, the bytes moved since it was set, and the ms since; 0 0 0 otherwise. */
  double bytes_total, bytes_phase, phase_ms;
  char phase[32];
} mkv_admin_progress_t;

/* The progress line's text (no newline) into out (NUL-terminated, cut to n). */
void mkv_admin_progress_format(char *out, size_t n, const mkv_admin_progress_t *p);
/* Parses it (text need not be NUL-terminated). 0, or -1 when it is not a progress line. */
int mkv_admin_progress_parse(const char *text, size_t len, mkv_admin_progress_t *p);

/* Its text for people, as the command shows it and the status page does: "34/120 done,
 * 34 examined (12/s), 0 changed, 0 failed, 523.6 KB of 1.2 MB (525.7 KB/s), ETA 1 s".
 * A value below 0 is one the script does not keep (admin.c): left out, not shown as 0.
 * Appends to out; returns 0 when the script keeps nothing (then nothing is shown). */
int mkv_admin_progress_text(mkv_buf_t *out, const mkv_admin_progress_t *p);
/* Bytes for people, in powers of 1000: "523.6 KB". */
void mkv_admin_fmt_bytes(char *out, size_t n, double b);

#endif
