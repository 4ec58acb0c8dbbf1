/* record.h: the index record of the Go original, byte for byte (GO-ORIGINAL.md §2.2),
 * and the volume lists it holds -- the one codec of that format. index.c stores what
 * it encodes; the API, the listing, the policies' checks and (through lua_api.c's
 * mkv.record_decode / mkv.record_encode) the admin scripts read it here.
 *
 * A record: an optional "DELETED" prefix (unlinked, or a delete in progress or failed),
 * an optional "HASH" + 32 hex digits (the MD5; lower-case as mkv and Go write it, taken
 * as it is on reading), then the volumes joined by ',' ("host:port" or
 * "host:port/<subdir>", in placement order). Decoding then encoding gives back the
 * same bytes -- but for comma.ai's fork's own records, below.
 *
 * A write in progress (or one that died) is marked "DELETEDINIT" before the hash and
 * volumes: the Go original reads it as a deleted key (never as a live one), and mkv
 * tells it from an unlinked key (RELINK, ?writing, gc). comma.ai's fork marks the same
 * state with "INIT" alone, which the original would read as a live key whose first
 * volume is "INIT...": mkv reads that form as a write in progress too, and writes its
 * own (`mkv index-flush` rewrites the fork's, for a handover to the original).
 *
 * Pure functions; any thread. Everything is length-delimited. */
#ifndef MKV_RECORD_H
#define MKV_RECORD_H

#include <stddef.h>

#include "mkv/common.h"

/* A record's state, as mkv_record_encode writes it. */
enum { MKV_REC_LIVE = 0, MKV_REC_DELETED = 1, MKV_REC_WRITING = 2 };

typedef struct mkv_record_s {
  int deleted;            /* not live: "DELETED" (unlinked), or writing */
  int writing;            /* a write in progress or interrupted: "DELETEDINIT", "INIT" */
  int fork_init;          /* in the fork's form, "INIT" without "DELETED" */
  int has_hash;
  char hash[33];          /* the 32 hex digits as stored, NUL-terminated, when has_hash */
  const char *volumes;    /* borrows from the decoded bytes: "v1/sv01,v2/sv03" */
  size_t volumes_len;
} mkv_record_t;

/* Parses a record as the Go original does. Returns 0 or MKV_ECORRUPT (a "HASH" without
 * 32 hex digits after it). */
int mkv_record_decode(const char *v, size_t n, mkv_record_t *r);
/* Replaces out's bytes with the record's; state MKV_REC_*; hash NULL or 32 hex digits. */
void mkv_record_encode(mkv_buf_t *out, int state, const char *hash, const char *volumes,
                       size_t volumes_len);

/* ---- volume lists ("v1/sv01,v2/sv03": the record's and Key-Volumes' form) ---- */

/* Iterates a list as Go's strings.Split(list, ",") does, but that an empty list holds
 * no volume (Go's one empty name ""): "a," is "a" then "", ",," three empty names. */
typedef struct mkv_volumes_iter_s {
  const char *pos, *end; /* pos NULL: no more */
} mkv_volumes_iter_t;

void mkv_volumes_iter(mkv_volumes_iter_t *it, const char *list, size_t len);
/* *item and *ilen get the next volume (borrowed from the list). Returns 0 at the end. */
int mkv_volumes_next(mkv_volumes_iter_t *it, const char **item, size_t *ilen);
int mkv_volumes_count(const char *list, size_t len);
/* Whether the list holds exactly this volume. */
int mkv_volumes_contains(const char *list, size_t len, const char *item, size_t ilen);

/* REPLACE writes a live key's new copies beside its old ones: a volume entry's second
 * slot is the same entry with this last path component ("h:p/sv03" -> "h:p/sv03/alt"),
 * and the next REPLACE goes back to the first. Placement, balance and the repair treat
 * the two slots of an entry as the same place. */
#define MKV_ALT_SLOT "/alt"
/* The length of an entry's place: the entry without its MKV_ALT_SLOT, if it has one. */
size_t mkv_volume_place_len(const char *item, size_t ilen);
/* Do two volume lists name the same places, in the same order, either slot of an entry
 * being its place? */
int mkv_volumes_same_places(const char *a, size_t al, const char *b, size_t bl);

/* Splits a record volume "host:port/sv01" at its first '/': returns the length of the
 * host ("host:port"); the rest, item + that length, is the directory ("/sv01", or ""). */
size_t mkv_volume_host_len(const char *item, size_t ilen);

#endif
