/* ha.c: roles and the lease in etcd, the position file, the index hook that holds
 * writes until the sync standby confirms them, and what /health and /metrics say
 * (ha.h). The streams themselves are repl.c's.
 *
 * etcd keys, under /mkv/<cluster>/:
 *   leader  "name\napi host:port\nreplication host:port", put with this node's lease;
 *           its create revision is the epoch
 *   sync    the nodes that hold every acknowledged write, "a" or "a,b": only they may
 *           take the leader key (Patroni's synchronous mode) */
#include "ha_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mkv/etcd.h"
#include "mkv/log.h"
#include "mkv/record.h"
#include "mkv/text.h"

ha_t mkv__ha;

/* Before the shorthand below (the config's field is called ha too). */
static void copy_config(mkv_ha_config_t *dst, const mkv_config_t *cfg) {
  mkv_ha_config_copy(dst, &cfg->ha);
}

#define ha mkv__ha

/* How often the control thread reads the leader and sync keys (and so, with the lease
 * TTL, how soon a standby sees that the primary is gone). */
#define HA_POLL_MS 200
/* A primary stops acknowledging this long before its lease could expire in etcd. */
#define HA_MARGIN_MS(ttl) ((ttl) / 5 > 1000 ? 1000 : (ttl) / 5)

const char *mkv_ha_role_name(mkv_ha_role_t r) {
  return r == MKV_HA_PRIMARY ? "primary" : r == MKV_HA_STANDBY ? "standby" : "off";
}

mkv_ha_role_t mkv_ha_role(void) {
  return (mkv_ha_role_t)atomic_load(&ha.role);
}

int mkv_ha_reads_local(void) {
  int r = atomic_load(&ha.role);
  return r != MKV_HA_STANDBY || atomic_load(&ha.reads_local);
}

int mkv_ha_primary_admin(char *buf, size_t n) {
  if (atomic_load(&ha.role) == MKV_HA_OFF) return -1;
  pthread_mutex_lock(&ha.mu);
  int rc = ha.primary_admin[0] ? 0 : -1;
  if (rc == 0) snprintf(buf, n, "%s", ha.primary_admin);
  pthread_mutex_unlock(&ha.mu);
  return rc;
}

int mkv_ha_primary_api(char *buf, size_t n) {
  if (atomic_load(&ha.role) == MKV_HA_OFF) return -1;
  pthread_mutex_lock(&ha.mu);
  int rc = ha.primary_api[0] ? 0 : -1;
  if (rc == 0) snprintf(buf, n, "%s", ha.primary_api);
  pthread_mutex_unlock(&ha.mu);
  return rc;
}

void mkv__ha_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ha.last_error, sizeof(ha.last_error), fmt, ap);
  va_end(ap);
}

/* ---- the position file: <db>/mkv.ha ---- */

void mkv__ha_save_state(int durable) {
  char tmp[4200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", ha.state_path);
  char text[256];
  int n = snprintf(text, sizeof(text), "epoch %lld\nseq_epoch %lld\nseq %llu\nwas_primary %d\nresyncing %d\n",
                   (long long)ha.epoch, (long long)ha.seq_epoch, (unsigned long long)ha.seq,
                   ha.was_primary, ha.resyncing);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "ha: cannot write %s: %s", tmp, strerror(errno));
    return;
  }
  int ok = write(fd, text, (size_t)n) == n && (!durable || fsync(fd) == 0);
  close(fd);
  if (!ok || rename(tmp, ha.state_path) != 0) {
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "ha: cannot write %s: %s", ha.state_path, strerror(errno));
    return;
  }
  /* durable: the rename itself too (a power loss must not bring back an older file) */
  char dir[4200];
  snprintf(dir, sizeof(dir), "%s", ha.state_path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  if (durable && mkv_fsync_dir(slash ? dir : ".") != 0)
    MKV_LOG_RATELIMITED(MKV_LOG_ERROR, "ha: cannot sync the directory of %s: %s", ha.state_path,
                        strerror(errno));
}

static void load_state(void) {
  FILE *f = fopen(ha.state_path, "r");
  if (f == NULL) return; /* a new node: position 0 */
  char name[32];
  long long v;
  while (fscanf(f, "%31s %lld", name, &v) == 2) {
    if (strcmp(name, "epoch") == 0) ha.epoch = v;
    else if (strcmp(name, "seq_epoch") == 0) ha.seq_epoch = v;
    else if (strcmp(name, "seq") == 0) ha.seq = (uint64_t)v;
    else if (strcmp(name, "was_primary") == 0) ha.was_primary = (int)v;
    else if (strcmp(name, "resyncing") == 0) ha.resyncing = (int)v;
  }
  fclose(f);
}

/* ---- the write gate and the index hook ---- */

/* May a primary acknowledge now? 0, or the status its writes fail with. */
static int gate(void) {
  if (atomic_load(&ha.role) != MKV_HA_PRIMARY) return MKV_ENOTPRIMARY;
  return mkv_now_ms() < atomic_load(&ha.lease_deadline) ? 0 : MKV_ENOTPRIMARY;
}

static int hook_admit(void *arg) {
  (void)arg;
  int rc = gate();
  if (rc == 0 && ha.c.strict) {
    pthread_mutex_lock(&ha.mu);
    if (ha.sync_conn == NULL) rc = MKV_ENOSYNC;
    pthread_mutex_unlock(&ha.mu);
  }
  return rc;
}

void mkv__ha_settle(void) {
  ha_pending_t *p;
  while ((p = ha.pending_head) != NULL) {
    int st;
    if (ha.sync_conn && ha.sync_conn->acked >= p->seq)
      st = gate();
    else if (ha.sync_conn == NULL && ha.c.strict)
      st = MKV_ENOSYNC;
    else if (ha.sync_conn == NULL && ha.alone)
      st = gate();
    else
      break;
    ha.pending_head = p->next;
    if (ha.pending_head == NULL) ha.pending_tail = NULL;
    mkv_index_complete(p->writes, st);
    free(p);
  }
}

static void fail_pending(int status) {
  ha_pending_t *p;
  while ((p = ha.pending_head) != NULL) {
    ha.pending_head = p->next;
    mkv_index_complete(p->writes, status);
    free(p);
  }
  ha.pending_tail = NULL;
}

void mkv__ha_log_append(int64_t epoch, uint64_t seq, int sync, mkv_buf_t *ops) {
  if (ha.log_count > 0 && ha.log[(ha.log_start + ha.log_count - 1) % ha.log_cap].seq + 1 != seq) {
    /* not the next one (a snapshot moved the position): the log starts again */
    while (ha.log_count > 0) {
      mkv_buf_free(&ha.log[ha.log_start].ops);
      ha.log_start = (ha.log_start + 1) % ha.log_cap;
      ha.log_count--;
    }
    ha.log_bytes = 0;
  }
  if (ha.log_count == ha.log_cap) { /* grow: unroll into a ring twice as big */
    size_t cap = ha.log_cap ? ha.log_cap * 2 : 1024;
    ha_entry_t *ring = mkv_calloc(cap, sizeof(*ring));
    for (size_t i = 0; i < ha.log_count; i++) ring[i] = ha.log[(ha.log_start + i) % ha.log_cap];
    free(ha.log);
    ha.log = ring;
    ha.log_cap = cap;
    ha.log_start = 0;
  }
  ha_entry_t *e = &ha.log[(ha.log_start + ha.log_count) % ha.log_cap];
  e->epoch = epoch;
  e->seq = seq;
  e->sync = sync;
  e->ops = *ops; /* taken */
  mkv_buf_init(ops);
  ha.log_count++;
  ha.log_bytes += e->ops.len + sizeof(*e);
  while (ha.log_count > 1 && ha.log_bytes > ha.c.log_bytes) {
    ha_entry_t *old = &ha.log[ha.log_start];
    ha.log_bytes -= old->ops.len + sizeof(*old);
    mkv_buf_free(&old->ops);
    ha.log_start = (ha.log_start + 1) % ha.log_cap;
    ha.log_count--;
  }
}

ha_entry_t *mkv__ha_log_find(uint64_t seq) {
  if (ha.log_count == 0) return NULL;
  uint64_t first = ha.log[ha.log_start].seq;
  if (seq < first || seq - first >= ha.log_count) return NULL;
  return &ha.log[(ha.log_start + (seq - first)) % ha.log_cap];
}

static int hook_committed(void *arg, mkv_buf_t *ops, int sync, mkv_index_write_t *writes) {
  (void)arg;
  pthread_mutex_lock(&ha.mu);
  uint64_t seq = ++ha.seq;
  ha.seq_epoch = ha.epoch;
  mkv__ha_log_append(ha.epoch, seq, sync, ops);
  mkv__repl_wake_all();
  ha_pending_t *p = mkv_calloc(1, sizeof(*p));
  p->seq = seq;
  p->since_ms = mkv_now_ms();
  p->writes = writes;
  *(ha.pending_tail ? &ha.pending_tail->next : &ha.pending_head) = p;
  ha.pending_tail = p;
  mkv__ha_settle();
  pthread_mutex_unlock(&ha.mu);
  return 1;
}

/* ---- roles ---- */

static char *key_of(const char *what) {
  return mkv_sprintf("/mkv/%s/%s", ha.c.cluster, what);
}

/* Is name one of the comma-separated names of record? */
static int names(const char *record, const char *name) {
  return mkv_volumes_contains(record, strlen(record), name, strlen(name));
}

void mkv__ha_wait(int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += (long)ms * 1000000L;
  ts.tv_sec += ts.tv_nsec / 1000000000L;
  ts.tv_nsec %= 1000000000L;
  pthread_cond_timedwait(&ha.cond, &ha.mu, &ts);
}

/* May a standby answer reads from its own index? While the sync record names it, every
 * acknowledged write is here: the primary acknowledges only what this node confirmed,
 * until it has rewritten the record without it -- which this node sees at its next
 * read of etcd (HA_POLL_MS), and nothing else can be acknowledged meanwhile, with the
 * primary dead, stepped down or out of reach alike: so it answers reads itself, during
 * a failover too. While etcd is out of reach, the last record read stands (in a
 * partition the other side may promote and write: README). One exception narrows the
 * window: a stream that is up but silent for half the sync timeout is one the primary
 * may be dropping for slowness. Under mu. */
static void update_reads_local(void) {
  int quiet = ha.streaming &&
              mkv_now_ms() - ha.heard_ms >= (uint64_t)(ha.c.sync_timeout_ms / 2);
  atomic_store(&ha.reads_local, names(ha.sync_record, ha.c.name) && !ha.resyncing && !quiet);
}

/* record_mine: the campaign's transaction wrote the sync record naming this node alone.
 * Otherwise (a reclaimed key) the record may still name a standby that has not had
 * this node's batches: nothing is acknowledged alone until it is rewritten. */
static void become_primary(int64_t epoch, uint64_t lease_valid_until, int record_mine) {
  pthread_mutex_lock(&ha.mu);
  ha.epoch = epoch;
  ha.was_primary = 1;
  ha.alone = record_mine;
  if (record_mine)
    snprintf(ha.sync_record, sizeof(ha.sync_record), "%s", ha.c.name);
  else
    ha.want_record = 1;
  snprintf(ha.primary_name, sizeof(ha.primary_name), "%s", ha.c.name);
  snprintf(ha.primary_api, sizeof(ha.primary_api), "%s", ha.c.advertise);
  snprintf(ha.primary_repl, sizeof(ha.primary_repl), "%s", ha.c.replication);
  snprintf(ha.primary_admin, sizeof(ha.primary_admin), "%s", ha.admin_addr);
  ha.streaming = 0;
  ha.failovers++;
  mkv__ha_save_state(1);
  atomic_store(&ha.reads_local, 1);
  atomic_store(&ha.lease_deadline, lease_valid_until);
  atomic_store(&ha.role, MKV_HA_PRIMARY);
  pthread_cond_broadcast(&ha.cond);
  pthread_mutex_unlock(&ha.mu);
  mkv_info("ha: primary of cluster %s (epoch %lld, at batch %llu)", ha.c.cluster,
           (long long)epoch, (unsigned long long)ha.seq);
}

static void step_down(const char *why) {
  pthread_mutex_lock(&ha.mu);
  if (atomic_load(&ha.role) != MKV_HA_PRIMARY) {
    pthread_mutex_unlock(&ha.mu);
    return;
  }
  atomic_store(&ha.role, MKV_HA_STANDBY);
  atomic_store(&ha.lease_deadline, 0);
  update_reads_local();
  mkv__repl_drop_all();
  fail_pending(MKV_ENOTPRIMARY);
  ha.primary_name[0] = ha.primary_api[0] = ha.primary_repl[0] = ha.primary_admin[0] = '\0';
  mkv__ha_save_state(1);
  pthread_cond_broadcast(&ha.cond);
  pthread_mutex_unlock(&ha.mu);
  mkv_warn("ha: no longer primary: %s", why);
}

/* Parses the leader key's value into the primary fields. Under mu. */
static void set_primary(const mkv_buf_t *v) {
  char name[128] = "", api[256] = "", repl[256] = "", admin[256] = "";
  if (v->data)
    sscanf(v->data, "%127[^\n]\n%255[^\n]\n%255[^\n]\n%255[^\n]", name, api, repl, admin);
  snprintf(ha.primary_name, sizeof(ha.primary_name), "%s", name);
  snprintf(ha.primary_api, sizeof(ha.primary_api), "%s", api);
  snprintf(ha.primary_repl, sizeof(ha.primary_repl), "%s", repl);
  snprintf(ha.primary_admin, sizeof(ha.primary_admin), "%s", admin);
}

/* The control loop: the lease, the leader and sync keys, campaigns, the sync record,
 * and the sync standby's deadline. */
static void *ctl_main(void *arg) {
  (void)arg;
  mkv_log_set_thread_name("ha");
  int ttl_ms = (int)ha.c.ttl_ms;
  int call_ms = ttl_ms / 4 < 1000 ? ttl_ms / 4 : 1000;
  mkv_etcd_t *etcd = mkv_etcd_new(ha.c.etcd, ha.c.netcd, call_ms);
  char *leader_key = key_of("leader"), *sync_key = key_of("sync");
  char *leader_value = mkv_sprintf("%s\n%s\n%s\n%s", ha.c.name, ha.c.advertise,
                                   ha.c.replication, ha.admin_addr);
  int64_t lease = 0;
  uint64_t lease_valid_until = 0, next_keepalive = 0, next_poll = 0;
  mkv_etcd_kv_t leader, sync;
  mkv_etcd_kv_init(&leader);
  mkv_etcd_kv_init(&sync);
  int etcd_ok = 1;

  pthread_mutex_lock(&ha.mu);
  while (!ha.stopping) {
    pthread_mutex_unlock(&ha.mu);
    char *err = NULL;
    uint64_t now = mkv_now_ms();

    /* 1. The lease. Its deadline counts from when the request was sent: etcd's countdown
     *    starts later than that, never earlier. */
    if (lease == 0) {
      if (mkv_etcd_grant(etcd, (ttl_ms + 999) / 1000, &lease, &err) == 0) {
        lease_valid_until = now + (uint64_t)ttl_ms - HA_MARGIN_MS(ttl_ms);
        next_keepalive = now + (uint64_t)ttl_ms / 3;
      } else {
        lease = 0;
      }
    } else if (now >= next_keepalive) {
      int ttl_s = 0;
      if (mkv_etcd_keepalive(etcd, lease, &ttl_s, &err) == 0) {
        if (ttl_s > 0) {
          lease_valid_until = now + (uint64_t)ttl_ms - HA_MARGIN_MS(ttl_ms);
          next_keepalive = now + (uint64_t)ttl_ms / 3;
        } else {
          lease = 0; /* expired in etcd: a new one, and no longer the primary */
          lease_valid_until = 0;
          step_down("the lease expired in etcd");
        }
      } else {
        next_keepalive = now + 200; /* etcd unreachable: try again soon */
      }
    }
    if (atomic_load(&ha.role) == MKV_HA_PRIMARY) atomic_store(&ha.lease_deadline, lease_valid_until);
    if (mkv_now_ms() >= lease_valid_until) step_down("its lease could not be renewed in time");

    /* 2. The keys. */
    if (err == NULL && mkv_now_ms() >= next_poll) {
      int64_t rev;
      next_poll = mkv_now_ms() + HA_POLL_MS;
      if (mkv_etcd_get(etcd, leader_key, &leader, &rev, &err) == 0 &&
          mkv_etcd_get(etcd, sync_key, &sync, &rev, &err) == 0) {
        pthread_mutex_lock(&ha.mu);
        int primary = atomic_load(&ha.role) == MKV_HA_PRIMARY;
        if (primary && !(leader.exists && leader.create_revision == ha.epoch &&
                         leader.lease == lease)) {
          pthread_mutex_unlock(&ha.mu);
          step_down("the leader key in etcd is no longer this node's");
          pthread_mutex_lock(&ha.mu);
          primary = 0;
        }
        if (!primary) {
          if (leader.exists) {
            set_primary(&leader.value);
            if (leader.create_revision > ha.epoch) {
              ha.epoch = leader.create_revision;
              mkv__ha_save_state(0);
            }
          } else {
            ha.primary_name[0] = ha.primary_api[0] = ha.primary_repl[0] = ha.primary_admin[0] = '\0';
          }
          snprintf(ha.sync_record, sizeof(ha.sync_record), "%s", sync.exists ? sync.value.data : "");
          update_reads_local();
        }
        int eligible = !primary && !leader.exists && lease != 0 && !ha.resyncing &&
                       (!sync.exists || names(ha.sync_record, ha.c.name));
        /* The key is still this node's (it stepped down when it could not renew the
         * lease, etcd was away, and the lease outlived it): nobody else could take it
         * meanwhile, and this node acknowledged nothing since. It is the primary again,
         * of the same epoch. */
        int reclaim = !primary && leader.exists && lease != 0 && leader.lease == lease &&
                      mkv_now_ms() < lease_valid_until;
        int64_t reclaim_epoch = leader.create_revision;
        pthread_mutex_unlock(&ha.mu);
        if (reclaim) become_primary(reclaim_epoch, lease_valid_until, 0);

        /* 3. A campaign: the leader key if nobody holds it and the sync record allows. */
        if (eligible) {
          mkv_etcd_cmp_t cmps[2] = {
              {.key = leader_key, .target = MKV_ETCD_CREATE, .revision = 0},
              {.key = sync_key, .target = sync.exists ? MKV_ETCD_MOD : MKV_ETCD_CREATE,
               .revision = sync.exists ? sync.mod_revision : 0}};
          mkv_etcd_op_t ops[2] = {
              {.key = leader_key, .value = leader_value, .vlen = strlen(leader_value), .lease = lease},
              {.key = sync_key, .value = ha.c.name, .vlen = strlen(ha.c.name)}};
          int ok = 0;
          int64_t trev = 0;
          if (mkv_etcd_txn(etcd, cmps, 2, ops, 2, &ok, &trev, &err) == 0 && ok)
            become_primary(trev, lease_valid_until, 1);
        }
      }
    }

    /* 4. A primary: the sync standby's deadline, and the sync record to rewrite. A
     *    standby: whether it answers reads (its stream may have gone quiet). */
    pthread_mutex_lock(&ha.mu);
    if (atomic_load(&ha.role) == MKV_HA_STANDBY) update_reads_local();
    if (err == NULL && atomic_load(&ha.role) == MKV_HA_PRIMARY) {
      if (ha.sync_conn && ha.pending_head &&
          mkv_now_ms() - ha.pending_head->since_ms > (uint64_t)ha.c.sync_timeout_ms) {
        mkv_warn("ha: standby %s did not confirm batch %llu within %.0f ms: %s",
                 ha.sync_conn->name, (unsigned long long)ha.pending_head->seq,
                 ha.c.sync_timeout_ms,
                 ha.c.strict ? "writes are refused until a standby is in sync (ha.sync = strict)"
                                : "going on without it");
        ha.sync_conn = NULL;
        ha.sync_drops++;
        ha.want_record = 1;
        mkv__ha_settle();
      }
      if (ha.want_record) {
        char record[300];
        if (ha.sync_conn)
          snprintf(record, sizeof(record), "%s,%s", ha.c.name, ha.sync_conn->name);
        else
          snprintf(record, sizeof(record), "%s", ha.c.name);
        int64_t epoch = ha.epoch;
        ha.want_record = 0;
        pthread_mutex_unlock(&ha.mu);
        mkv_etcd_cmp_t cmps[2] = {
            {.key = leader_key, .target = MKV_ETCD_CREATE, .revision = epoch},
            {.key = leader_key, .target = MKV_ETCD_VALUE, .value = leader_value,
             .vlen = strlen(leader_value)}};
        mkv_etcd_op_t op = {.key = sync_key, .value = record, .vlen = strlen(record)};
        int ok = 0;
        int64_t trev;
        int rc = mkv_etcd_txn(etcd, cmps, 2, &op, 1, &ok, &trev, &err);
        pthread_mutex_lock(&ha.mu);
        if (rc == 0 && ok) {
          snprintf(ha.sync_record, sizeof(ha.sync_record), "%s", record);
          ha.alone = strchr(record, ',') == NULL;
          mkv_info("ha: the sync record is now %s", record);
          mkv__ha_settle();
        } else {
          ha.want_record = 1; /* again at the next turn (or step down when the key is gone) */
        }
      }
    }
    if (err) {
      if (etcd_ok) mkv_warn("ha: %s", err);
      etcd_ok = 0;
      mkv__ha_set_error("%s", err);
      free(err);
      if (atomic_load(&ha.role) == MKV_HA_STANDBY) update_reads_local();
    } else if (!etcd_ok) {
      mkv_info("ha: etcd answers again (%s)", mkv_etcd_endpoint(etcd));
      etcd_ok = 1;
    }
    if (!ha.stopping) mkv__ha_wait(50);
  }
  /* Stopping: a primary whose standby has every batch hands over at once (it deletes
   * the leader key); the lease goes either way. */
  int hand_over = atomic_load(&ha.role) == MKV_HA_PRIMARY;
  if (hand_over && ha.sync_conn && ha.sync_conn->acked == ha.seq && !ha.alone) {
    ha.was_primary = 0; /* the standby holds every batch this node wrote */
    mkv__ha_save_state(1);
  }
  atomic_store(&ha.lease_deadline, 0);
  int64_t epoch = ha.epoch;
  pthread_mutex_unlock(&ha.mu);
  char *err = NULL;
  if (hand_over) {
    mkv_etcd_cmp_t cmp = {.key = leader_key, .target = MKV_ETCD_CREATE, .revision = epoch};
    mkv_etcd_op_t op = {.key = leader_key, .value = NULL};
    int ok;
    int64_t trev;
    if (mkv_etcd_txn(etcd, &cmp, 1, &op, 1, &ok, &trev, &err) == 0 && ok)
      mkv_info("ha: gave the leader key up");
    free(err);
    err = NULL;
  }
  if (lease) mkv_etcd_revoke(etcd, lease, &err);
  free(err);
  atomic_store(&ha.role, MKV_HA_STANDBY);
  mkv_etcd_kv_free(&leader);
  mkv_etcd_kv_free(&sync);
  mkv_etcd_free(etcd);
  free(leader_key);
  free(sync_key);
  free(leader_value);
  return NULL;
}

/* ---- start / stop ---- */

int mkv_ha_start(const mkv_config_t *cfg, mkv_index_t *index, const char *admin_addr,
                 char **err) {
  memset(&ha, 0, sizeof(ha));
  copy_config(&ha.c, cfg);
  ha.index = index;
  ha.listen_fd = -1;
  pthread_mutex_init(&ha.mu, NULL);
  pthread_cond_init(&ha.cond, NULL);
  ha.state_path = mkv_sprintf("%s/mkv.ha", cfg->db);
  snprintf(ha.admin_addr, sizeof(ha.admin_addr), "%s", admin_addr);
  load_state();
  if (mkv__repl_listen(err) != 0) {
    free(ha.state_path);
    mkv_ha_config_free(&ha.c);
    return -1;
  }
  atomic_store(&ha.role, MKV_HA_STANDBY);
  mkv_index_hook_t hook = {.admit = hook_admit, .committed = hook_committed};
  mkv_index_set_hook(index, &hook);
  if (pthread_create(&ha.ctl_thread, NULL, ctl_main, NULL) != 0 ||
      pthread_create(&ha.listen_thread, NULL, mkv__repl_listen_main, NULL) != 0 ||
      pthread_create(&ha.recv_thread, NULL, mkv__repl_recv_main, NULL) != 0) {
    *err = mkv_sprintf("cannot start the HA threads: %s", strerror(errno));
    return -1; /* the process exits */
  }
  ha.started = 1;
  mkv_info("ha: node %s of cluster %s, a standby until etcd says otherwise (at batch %llu%s)",
           ha.c.name, ha.c.cluster, (unsigned long long)ha.seq,
           ha.was_primary || ha.resyncing ? "; rejoins with a snapshot" : "");
  return 0;
}

void mkv_ha_stop(void) {
  if (!ha.started) return;
  pthread_mutex_lock(&ha.mu);
  ha.stopping = 1;
  pthread_cond_broadcast(&ha.cond);
  pthread_mutex_unlock(&ha.mu);
  pthread_join(ha.ctl_thread, NULL);
  pthread_mutex_lock(&ha.mu);
  mkv__repl_drop_all();
  fail_pending(MKV_ENOTPRIMARY);
  pthread_mutex_unlock(&ha.mu);
  if (ha.listen_fd >= 0) shutdown(ha.listen_fd, SHUT_RDWR);
  pthread_join(ha.listen_thread, NULL);
  pthread_join(ha.recv_thread, NULL);
  if (ha.listen_fd >= 0) close(ha.listen_fd);
  mkv_index_set_hook(ha.index, NULL);
  for (size_t i = 0; i < ha.log_count; i++) mkv_buf_free(&ha.log[(ha.log_start + i) % ha.log_cap].ops);
  free(ha.log);
  free(ha.state_path);
  mkv_ha_config_free(&ha.c);
  ha.started = 0;
  atomic_store(&ha.role, MKV_HA_OFF);
}

/* ---- what /health and /metrics say ---- */

void mkv_ha_health_json(mkv_buf_t *out) {
  if (!ha.started) return;
  pthread_mutex_lock(&ha.mu);
  int role = atomic_load(&ha.role);
  mkv_buf_addf(out, "{\"role\":\"%s\",\"name\":", mkv_ha_role_name(role));
  mkv_json_string(out, ha.c.name, strlen(ha.c.name));
  mkv_buf_addf(out, ",\"epoch\":%lld,\"batch\":%llu,\"primary\":", (long long)ha.epoch,
               (unsigned long long)ha.seq);
  mkv_json_string(out, ha.primary_name, strlen(ha.primary_name));
  mkv_buf_adds(out, ",\"sync_record\":");
  mkv_json_string(out, ha.sync_record, strlen(ha.sync_record));
  if (role == MKV_HA_PRIMARY) {
    uint64_t now = mkv_now_ms(), dl = atomic_load(&ha.lease_deadline);
    mkv_buf_addf(out, ",\"lease_ms\":%llu,\"sync\":", (unsigned long long)(dl > now ? dl - now : 0));
    if (ha.sync_conn)
      mkv_json_string(out, ha.sync_conn->name, strlen(ha.sync_conn->name));
    else
      mkv_buf_adds(out, "null");
    mkv_buf_adds(out, ",\"standbys\":[");
    int first = 1;
    for (ha_conn_t *c = ha.conns; c; c = c->next) {
      mkv_buf_adds(out, first ? "{\"name\":" : ",{\"name\":");
      first = 0;
      mkv_json_string(out, c->name, strlen(c->name));
      mkv_buf_addf(out, ",\"state\":\"%s\",\"confirmed\":%llu,\"lag\":%llu}",
                   c == ha.sync_conn ? "sync" : c->live ? "streaming" : "snapshot",
                   (unsigned long long)c->acked, (unsigned long long)(ha.seq - c->acked));
    }
    mkv_buf_adds(out, "]");
  } else {
    mkv_buf_addf(out, ",\"streaming\":%s,\"reads_local\":%s,\"lag\":%llu,\"resyncing\":%s",
                 ha.streaming ? "true" : "false", atomic_load(&ha.reads_local) ? "true" : "false",
                 (unsigned long long)(ha.primary_seq > ha.seq ? ha.primary_seq - ha.seq : 0),
                 ha.resyncing ? "true" : "false");
  }
  if (ha.last_error[0]) {
    mkv_buf_adds(out, ",\"last_error\":");
    mkv_json_string(out, ha.last_error, strlen(ha.last_error));
  }
  mkv_buf_adds(out, "}");
  pthread_mutex_unlock(&ha.mu);
}

void mkv_ha_metrics(mkv_buf_t *out) {
  if (!ha.started) return;
  pthread_mutex_lock(&ha.mu);
  int role = atomic_load(&ha.role);
  unsigned long long lag = 0;
  if (role == MKV_HA_PRIMARY) {
    for (ha_conn_t *c = ha.conns; c; c = c->next)
      if (ha.seq - c->acked > lag) lag = ha.seq - c->acked;
  } else if (ha.primary_seq > ha.seq) {
    lag = ha.primary_seq - ha.seq;
  }
  mkv_buf_addf(out,
               "# HELP mkv_ha_role This index node's role (1 for the one it has).\n"
               "# TYPE mkv_ha_role gauge\n"
               "mkv_ha_role{role=\"primary\"} %d\nmkv_ha_role{role=\"standby\"} %d\n"
               "# HELP mkv_ha_batch The last index batch this node committed or applied.\n"
               "# TYPE mkv_ha_batch gauge\nmkv_ha_batch %llu\n"
               "# HELP mkv_ha_replication_lag_batches Primary: batches its slowest standby has "
               "not confirmed; standby: batches it has not applied.\n"
               "# TYPE mkv_ha_replication_lag_batches gauge\nmkv_ha_replication_lag_batches %llu\n"
               "# HELP mkv_ha_standbys_in_sync Standbys whose confirmation writes wait for.\n"
               "# TYPE mkv_ha_standbys_in_sync gauge\nmkv_ha_standbys_in_sync %d\n"
               "# HELP mkv_ha_promotions_total Times this node became the primary.\n"
               "# TYPE mkv_ha_promotions_total counter\nmkv_ha_promotions_total %llu\n"
               "# HELP mkv_ha_sync_drops_total Times the sync standby was dropped for not "
               "confirming in time.\n"
               "# TYPE mkv_ha_sync_drops_total counter\nmkv_ha_sync_drops_total %llu\n"
               "# HELP mkv_ha_snapshots_sent_total Snapshots of the index sent to joining "
               "standbys.\n"
               "# TYPE mkv_ha_snapshots_sent_total counter\nmkv_ha_snapshots_sent_total %llu\n",
               role == MKV_HA_PRIMARY, role == MKV_HA_STANDBY, (unsigned long long)ha.seq, lag,
               role == MKV_HA_PRIMARY && ha.sync_conn ? 1 : 0, ha.failovers, ha.sync_drops,
               ha.snapshots_sent);
  pthread_mutex_unlock(&ha.mu);
}
