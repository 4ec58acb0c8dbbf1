/* repair.h: the keys that are not where placement wants them -- fewer copies than their
 * replica count, or copies on other volumes (a PUT's handoff around a volume that was
 * down, a copy that failed, a volume draining or added) -- kept for the background
 * repair (lua/repair.lua, run by the server on its admin thread) and counted for
 * /metrics (mkv_keys_underreplicated) without a scan per scrape.
 *
 * Keys come in from the request path (mkv_repair_note: a PUT that wrote elsewhere or
 * fewer copies) and from the repair's own scans of the whole index, which run when the
 * server starts (the set lives in memory only) and after a reload (placement may have
 * changed). The repair takes keys in passes and either settles them (done) or puts
 * them back for a later pass (retry: a volume it needs is still down).
 *
 * Any thread; a mutex guards the set (nothing on the request path takes it unless a
 * PUT was degraded). At most MKV_REPAIR_MAX keys are kept; past that, notes are
 * dropped and counted, and a scan is due again. */
#ifndef MKV_REPAIR_H
#define MKV_REPAIR_H

#include <stddef.h>

#include "mkv/common.h"

#define MKV_REPAIR_MAX 1000000

/* Adds a key (copied), or marks it to be looked at again if the repair holds it. */
void mkv_repair_note(const char *key, size_t klen);

/* For the repair job, one pass at a time: begins a pass; takes up to n keys noted before
 * it (each is then the repair's until done or retry), calling fn for each. Returns how
 * many were taken. */
void mkv_repair_pass(void);
int mkv_repair_take(int n, void (*fn)(const char *key, size_t klen, void *arg), void *arg);
/* The key is where placement wants it (or gone): forgotten. */
void mkv_repair_done(const char *key, size_t klen);
/* Not now: back in the set for the next pass. failed: the attempt failed (a copy that
 * did not verify, no good copy found: reported), rather than waited (a volume still
 * down, a client's write in flight); after MKV_REPAIR_ATTEMPTS failed attempts the key
 * is given up (counted: mkv verify says what is wrong with it). */
#define MKV_REPAIR_ATTEMPTS 5
void mkv_repair_retry(const char *key, size_t klen, int failed);

/* A scan of the whole index is wanted (at start, after a reload, after an overflow). */
void mkv_repair_want_scan(void);
/* Takes the wish: 1 when a scan was due (and is now the caller's), else 0. */
int mkv_repair_take_scan(void);
/* The scan the caller took has finished. */
void mkv_repair_scan_done(void);

typedef struct mkv_repair_stats_s {
  unsigned long long keys;        /* in the set: noted or being repaired */
  unsigned long long repaired;    /* settled since start */
  unsigned long long dropped;     /* notes dropped at MKV_REPAIR_MAX */
  unsigned long long given_up;    /* keys whose repair failed MKV_REPAIR_ATTEMPTS times */
  int scanning, scan_due, scans_done;
} mkv_repair_stats_t;
void mkv_repair_stats(mkv_repair_stats_t *st);

/* Frees the set (at exit). */
void mkv_repair_free(void);

#endif
