/* keylock.h: the process-wide table of keys locked by a PUT, DELETE or UNLINK in flight.
 *
 * Any thread. A writer takes the lock before its existence check and keeps it until its
 * final index write has completed, on every path (success, volume failure, client gone,
 * policy error, shutdown). No waiting here: a lock a client's write holds is a 409 at
 * once, as in the Go original; the API waits a little for one an admin job holds
 * (api.c), since an operator's job or the repair must not make clients' writes fail. Keys are bytes (NUL is legal), compared with their lengths. */
#ifndef MKV_KEYLOCK_H
#define MKV_KEYLOCK_H

#include <stddef.h>

/* Who holds a lock: a client's write (the API) or an admin job (an operator's command,
 * the background repair). */
typedef enum { MKV_LOCK_CLIENT = 1, MKV_LOCK_ADMIN = 2 } mkv_lock_owner_t;

/* 0 when taken; UV_EBUSY when another writer holds it. */
int mkv_keylock_try(const char *key, size_t klen);
/* The same for an owner; on UV_EBUSY, *holder (if not NULL) says who holds it. */
int mkv_keylock_try_as(const char *key, size_t klen, mkv_lock_owner_t owner,
                       mkv_lock_owner_t *holder);
void mkv_keylock_release(const char *key, size_t klen);
/* How many keys are locked now (metrics, tests). */
int mkv_keylock_count(void);

#endif
