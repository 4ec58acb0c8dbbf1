/* admin_proto.c: the admin job protocol's two encodings (admin_proto.h): the request's
 * query, and the progress line. */
#include "mkv/admin_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/text.h"

char *mkv_admin_addr_file(const char *db) {
  return mkv_sprintf("%s/mkv.admin", db);
}

static void add_param(mkv_buf_t *q, const char *name, const char *value) {
  if (q->len) mkv_buf_addc(q, '&');
  mkv_buf_adds(q, name);
  mkv_buf_addc(q, '=');
  for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '-' || *p == '.' || *p == '_')
      mkv_buf_addc(q, (char)*p);
    else
      mkv_buf_addf(q, "%%%02X", *p);
  }
}

void mkv_admin_proto_query(mkv_buf_t *q, const char *script, int argc,
                           const char *const *argv) {
  add_param(q, "script", script);
  for (int i = 0; i < argc; i++) add_param(q, "arg", argv[i]);
}

int mkv_admin_proto_parse(const char *q, size_t n, mkv_admin_request_t *r, char **err) {
  memset(r, 0, sizeof(*r));
  size_t pos = 0, nlen, vlen;
  const char *name, *val;
  mkv_buf_t k, v;
  mkv_buf_init(&k);
  mkv_buf_init(&v);
  int rc = 0;
  while (rc == 0 && mkv_query_next(q, n, &pos, &name, &nlen, &val, &vlen)) {
    mkv_buf_reset(&k);
    mkv_buf_reset(&v);
    if (mkv_query_unescape(name, nlen, &k) != 0 || mkv_query_unescape(val, vlen, &v) != 0) {
      *err = mkv_strdup("malformed query: a bad %-escape");
      rc = -1;
    } else if (k.len == 6 && memcmp(k.data, "script", 6) == 0) {
      free(r->script);
      r->script = mkv_memdup(v.data ? v.data : "", v.len);
    } else if (k.len == 3 && memcmp(k.data, "arg", 3) == 0) {
      if (r->argc == MKV_ADMIN_MAX_ARGS) {
        *err = mkv_sprintf("too many options (at most %d)", MKV_ADMIN_MAX_ARGS);
        rc = -1;
      } else {
        r->argv[r->argc++] = mkv_memdup(v.data ? v.data : "", v.len);
      }
    }
  }
  if (rc == 0 && (r->script == NULL || r->script[0] == '\0')) {
    *err = mkv_strdup("POST " MKV_ADMIN_RUN_PATH " needs script=NAME");
    rc = -1;
  }
  mkv_buf_free(&k);
  mkv_buf_free(&v);
  return rc;
}

void mkv_admin_request_free(mkv_admin_request_t *r) {
  free(r->script);
  for (int i = 0; i < r->argc; i++) free(r->argv[i]);
  memset(r, 0, sizeof(*r));
}

void mkv_admin_progress_format(char *out, size_t n, const mkv_admin_progress_t *p) {
  snprintf(out, n, "%.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %s", p->done, p->total,
           p->bytes, p->elapsed_ms, p->examined, p->changed, p->failed, p->bytes_total,
           p->bytes_phase, p->phase_ms, p->phase);
}

int mkv_admin_progress_parse(const char *text, size_t len, mkv_admin_progress_t *p) {
  char line[256];
  snprintf(line, sizeof(line), "%.*s", (int)MKV_MIN(len, sizeof(line) - 1), text);
  memset(p, 0, sizeof(*p));
  if (sscanf(line, "%lf %lf %lf %lf %lf %lf %lf %lf %lf %lf %31s", &p->done, &p->total,
             &p->bytes, &p->elapsed_ms, &p->examined, &p->changed, &p->failed, &p->bytes_total,
             &p->bytes_phase, &p->phase_ms, p->phase) < 4)
    return -1;
  return 0;
}

void mkv_admin_fmt_bytes(char *out, size_t n, double b) {
  static const char *const u[] = {"B", "KB", "MB", "GB", "TB", "PB"};
  int i = 0;
  while (b >= 1000 && i < 5) b /= 1000, i++;
  snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

int mkv_admin_progress_text(mkv_buf_t *out, const mkv_admin_progress_t *p) {
  double secs = p->elapsed_ms / 1000 > 0 ? p->elapsed_ms / 1000 : 1;
  char b[32], rate[32], total[32];
  const char *sep = "";
  if (p->done >= 0) {
    mkv_buf_addf(out, "%.0f", p->done);
    if (p->total > 0) mkv_buf_addf(out, "/%.0f", p->total);
    mkv_buf_adds(out, " done");
    sep = ", ";
  }
  if (p->examined >= 0) {
    mkv_buf_addf(out, "%s%.0f examined (%.0f/s)", sep, p->examined, p->examined / secs);
    sep = ", ";
  }
  if (p->changed >= 0) {
    mkv_buf_addf(out, "%s%.0f changed", sep, p->changed);
    sep = ", ";
  }
  if (p->failed >= 0) {
    mkv_buf_addf(out, "%s%.0f failed", sep, p->failed);
    sep = ", ";
  }
  if (p->bytes_total > 0) {
    /* A phase that knows its bytes (verify --deep): "12.0 MB of 30.0 MB", at the rate
     * since the phase began (what came before, a walk of the volumes, moved none), and
     * the ETA from the bytes left -- a key count says little when sizes vary. */
    double psecs = (p->phase_ms > 1 ? p->phase_ms : 1) / 1000;
    mkv_admin_fmt_bytes(b, sizeof(b), p->bytes_phase);
    mkv_admin_fmt_bytes(total, sizeof(total), p->bytes_total);
    mkv_admin_fmt_bytes(rate, sizeof(rate), p->bytes_phase / psecs);
    mkv_buf_addf(out, "%s%s of %s (%s/s)", sep, b, total, rate);
    sep = ", ";
    if (p->bytes_phase > 0 && p->bytes_phase < p->bytes_total && p->phase_ms >= 200)
      mkv_buf_addf(out, ", ETA %.0f s", psecs * (p->bytes_total - p->bytes_phase) / p->bytes_phase);
  } else {
    if (p->bytes >= 0) {
      mkv_admin_fmt_bytes(b, sizeof(b), p->bytes);
      mkv_admin_fmt_bytes(rate, sizeof(rate), p->bytes / secs);
      mkv_buf_addf(out, "%s%s (%s/s)", sep, b, rate);
      sep = ", ";
    }
    if (p->total > 0 && p->done > 0 && p->done < p->total)
      mkv_buf_addf(out, "%sETA %.0f s", sep, secs * (p->total - p->done) / p->done);
  }
  return sep[0] != '\0';
}
