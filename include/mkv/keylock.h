/* keylock.h: the process-wide table of keys locked by a PUT, DELETE or UNLINK in flight.
 *
 * Any thread. A writer takes the lock before its existence check and keeps it until its
 * final index write has completed, on every path (success, volume failure, client gone,
 * policy error, shutdown). No waiting: a held lock is a 409 at once, as in the Go
 * original. Keys are bytes (NUL is legal), compared with their lengths. */
#ifndef MKV_KEYLOCK_H
#define MKV_KEYLOCK_H

#include <stddef.h>

/* 0 when taken; UV_EBUSY when another writer holds it. */
int mkv_keylock_try(const char *key, size_t klen);
void mkv_keylock_release(const char *key, size_t klen);
/* How many keys are locked now (metrics, tests). */
int mkv_keylock_count(void);

#endif
