/* ha_int.h: the state ha.c (roles, etcd, the index hook) and repl.c (the streams) share.
 * One global, ha, whose fields below `mu` are guarded by it. */
#ifndef MKV_HA_INT_H
#define MKV_HA_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "mkv/ha.h"

/* A committed batch, kept for standbys that are behind or resume (the log). */
typedef struct ha_entry_s {
  int64_t epoch;
  uint64_t seq;
  int sync; /* the primary fsynced it: so must a standby before it confirms */
  mkv_buf_t ops;
} ha_entry_t;

/* Writes of a committed batch, waiting for the sync standby's confirmation. */
typedef struct ha_pending_s {
  uint64_t seq;
  uint64_t since_ms;
  mkv_index_write_t *writes;
  struct ha_pending_s *next;
} ha_pending_t;

/* A standby connected to this primary. */
typedef struct ha_conn_s {
  int fd, efd;      /* the socket; an eventfd that says "new batches" */
  char name[128];   /* the standby's ha.name */
  uint64_t next_seq; /* the next batch it is to be sent */
  uint64_t acked;    /* the last batch it confirmed */
  int live;          /* past its snapshot: on the live stream */
  int closing;
  pthread_t thread;
  struct ha_conn_s *next;
} ha_conn_t;

typedef struct ha_s {
  mkv_ha_config_t c; /* a copy: a reload cannot change it */
  mkv_index_t *index;
  char *state_path;
  int listen_fd;
  pthread_t ctl_thread, listen_thread, recv_thread;
  int started;

  _Atomic int role;                 /* mkv_ha_role_t */
  _Atomic uint64_t lease_deadline;  /* ms (monotonic): a primary acknowledges before it */
  _Atomic int reads_local;

  pthread_mutex_t mu;
  pthread_cond_t cond; /* new batches, roles, stop */
  int stopping;

  /* This node's position: the last batch committed (primary) or applied (standby). */
  int64_t epoch;     /* the current primary's epoch, as far as this node knows */
  int64_t seq_epoch; /* the epoch of the batch at seq */
  uint64_t seq;
  int was_primary;   /* persisted: may hold batches no other node has (resync to rejoin) */
  int resyncing;     /* persisted: a snapshot merge did not finish */

  /* The primary, as etcd says (for a standby's stream and forwarded writes). */
  char primary_name[128], primary_api[256], primary_repl[256], primary_admin[256];
  char admin_addr[256]; /* this node's admin listener */

  /* The log of recent batches: consecutive sequence numbers, oldest first, in a ring of
   * log_cap slots from log_start; log_bytes their size. */
  ha_entry_t *log;
  size_t log_cap, log_start, log_count, log_bytes;

  /* Primary: connected standbys, the sync one, writes waiting for it. */
  ha_conn_t *conns;
  ha_conn_t *sync_conn;
  ha_pending_t *pending_head, *pending_tail;
  char sync_record[300]; /* <cluster>/sync as last read or written: "a" or "a,b" */
  int alone;            /* the sync record names only this node */
  int want_record;      /* the control thread is to rewrite the sync record */

  /* Standby: receiving the live stream from primary_name, last heard from at. */
  int streaming;
  uint64_t heard_ms;
  uint64_t primary_seq; /* the primary's last batch, as its pings say */

  /* Counters for /metrics. */
  unsigned long long snapshots_sent, failovers, sync_drops;
  char last_error[256];
} ha_t;

extern ha_t mkv__ha;

/* ha.c */
/* Waits on ha.cond (under mu) for at most ms. */
void mkv__ha_wait(int ms);
void mkv__ha_set_error(const char *fmt, ...) MKV_PRINTF(1, 2);
/* Persists the position and flags (<db>/mkv.ha); fsync when `durable`. Under mu. */
void mkv__ha_save_state(int durable);
/* Completes the pending writes that may be (the sync standby confirmed them, or the
 * record says this node is alone). Under mu. */
void mkv__ha_settle(void);
/* Appends a batch to the log (takes ops' memory) and trims it to ha.log_size. Under mu. */
void mkv__ha_log_append(int64_t epoch, uint64_t seq, int sync, mkv_buf_t *ops);
/* The logged batch seq, or NULL when the log does not hold it. Under mu. */
ha_entry_t *mkv__ha_log_find(uint64_t seq);

/* repl.c */
int mkv__repl_listen(char **err);         /* binds ha.replication */
void *mkv__repl_listen_main(void *arg);   /* accepts standbys (primary) */
void *mkv__repl_recv_main(void *arg);     /* a standby's stream from the primary */
/* Wakes every connected standby's thread (new batches, or a role change). Under mu. */
void mkv__repl_wake_all(void);
/* Closes every standby connection (this node is no longer primary). Under mu. */
void mkv__repl_drop_all(void);

#endif
