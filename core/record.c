/* record.c: the Go original's index record and its volume lists (record.h). */
#include "mkv/record.h"

#include <string.h>

static int is_hex32(const char *s) {
  for (int i = 0; i < 32; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return 0;
  }
  return 1;
}

int mkv_record_decode(const char *v, size_t n, mkv_record_t *r) {
  memset(r, 0, sizeof(*r));
  if (n >= 7 && memcmp(v, "DELETED", 7) == 0) {
    r->deleted = 1;
    v += 7, n -= 7;
  }
  if (n >= 4 && memcmp(v, "INIT", 4) == 0) {
    r->fork_init = !r->deleted;
    r->deleted = r->writing = 1;
    v += 4, n -= 4;
  }
  if (n >= 4 && memcmp(v, "HASH", 4) == 0) {
    if (n < 36 || !is_hex32(v + 4)) return MKV_ECORRUPT;
    r->has_hash = 1;
    memcpy(r->hash, v + 4, 32);
    r->hash[32] = '\0';
    v += 36, n -= 36;
  }
  r->volumes = v;
  r->volumes_len = n;
  return 0;
}

void mkv_record_encode(mkv_buf_t *out, int state, const char *hash, const char *volumes,
                       size_t volumes_len) {
  mkv_buf_reset(out);
  if (state != MKV_REC_LIVE) mkv_buf_add(out, "DELETED", 7);
  if (state == MKV_REC_WRITING) mkv_buf_add(out, "INIT", 4);
  if (hash) {
    mkv_buf_add(out, "HASH", 4);
    mkv_buf_add(out, hash, 32);
  }
  mkv_buf_add(out, volumes, volumes_len);
}

void mkv_volumes_iter(mkv_volumes_iter_t *it, const char *list, size_t len) {
  it->pos = len ? list : NULL;
  it->end = len ? list + len : NULL; /* list may be NULL when len is 0 */
}

int mkv_volumes_next(mkv_volumes_iter_t *it, const char **item, size_t *ilen) {
  const char *p = it->pos;
  if (p == NULL) return 0;
  const char *comma = memchr(p, ',', (size_t)(it->end - p));
  const char *stop = comma ? comma : it->end;
  *item = p;
  *ilen = (size_t)(stop - p);
  /* After a comma there is one more name, even an empty one at the very end. */
  it->pos = comma ? comma + 1 : NULL;
  return 1;
}

int mkv_volumes_count(const char *list, size_t len) {
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  int n = 0;
  mkv_volumes_iter(&it, list, len);
  while (mkv_volumes_next(&it, &item, &ilen)) n++;
  return n;
}

int mkv_volumes_contains(const char *list, size_t len, const char *s, size_t n) {
  mkv_volumes_iter_t it;
  const char *item;
  size_t ilen;
  mkv_volumes_iter(&it, list, len);
  while (mkv_volumes_next(&it, &item, &ilen))
    if (ilen == n && memcmp(item, s, n) == 0) return 1;
  return 0;
}

size_t mkv_volume_host_len(const char *item, size_t ilen) {
  const char *slash = memchr(item, '/', ilen);
  return slash ? (size_t)(slash - item) : ilen;
}

/* An entry without its second slot's suffix. */
size_t mkv_volume_place_len(const char *item, size_t ilen) {
  size_t sl = sizeof(MKV_ALT_SLOT) - 1;
  if (ilen > sl && memcmp(item + ilen - sl, MKV_ALT_SLOT, sl) == 0) return ilen - sl;
  return ilen;
}

int mkv_volumes_same_places(const char *a, size_t al, const char *b, size_t bl) {
  mkv_volumes_iter_t ia, ib;
  const char *x, *y;
  size_t xl, yl;
  mkv_volumes_iter(&ia, a, al);
  mkv_volumes_iter(&ib, b, bl);
  for (;;) {
    int ha = mkv_volumes_next(&ia, &x, &xl), hb = mkv_volumes_next(&ib, &y, &yl);
    if (!ha || !hb) return ha == hb;
    xl = mkv_volume_place_len(x, xl);
    yl = mkv_volume_place_len(y, yl);
    if (xl != yl || memcmp(x, y, xl) != 0) return 0;
  }
}
