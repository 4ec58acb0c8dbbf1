/* ha.h: the standby index -- two (or more) index nodes, one primary, with the leader
 * lease in etcd and every committed index batch shipped to a standby before a write is
 * acknowledged (README "High availability").
 *
 * Roles. A node is primary only while it holds the key <cluster>/leader in etcd, put
 * with a lease it keeps alive; the key's create revision is the epoch, carried by every
 * replication message. The primary acknowledges a write only until its lease's deadline
 * (the last keepalive's send time + TTL - a margin), so by the time etcd lets the lease
 * expire and a standby take the key, the old primary has stopped answering 201/204.
 * Every other node is a standby: it streams the primary's batches into its own LevelDB.
 *
 * Synchronous replication. Each batch the index writer commits gets the next sequence
 * number; the writes in it are acknowledged once the sync standby has applied and synced
 * the batch (one round trip per batch: group commit on both sides). <cluster>/sync in
 * etcd names the nodes that hold every acknowledged write ("a" or "a,b"): only those
 * may take the lease. A sync standby that does not confirm within ha.sync_timeout is
 * dropped: the primary first records itself alone in etcd, then acknowledges
 * (ha.sync = "on"), or refuses writes until a standby is back in sync ("strict"). A
 * joining standby resumes from its last batch when the primary still holds the batches
 * after it and their history is the same; otherwise it receives a snapshot of the whole
 * index, merged into its own, then the live stream.
 *
 * Threads: a control thread talks to etcd (etcd.h, blocking); a listener and one thread
 * per connected standby on the primary; one receiver thread on a standby. The writer
 * thread of index.c calls in through the index hook. Every function here is safe from
 * any thread. Without `ha` in the config none of this runs and mkv_ha_role() is OFF. */
#ifndef MKV_HA_H
#define MKV_HA_H

#include <stddef.h>
#include <stdint.h>

#include "mkv/common.h"
#include "mkv/config.h"
#include "mkv/index.h"

typedef enum { MKV_HA_OFF = 0, MKV_HA_STANDBY, MKV_HA_PRIMARY } mkv_ha_role_t;

/* Starts HA for the server's index (cfg->ha.enabled): reads <db>/mkv.ha, binds the
 * replication listener, starts the threads and installs the index hook. The node starts
 * as a standby. admin_addr: this node's admin listener, published with the lease for
 * admin commands sent to a standby. 0, or -1 with *err (owned). */
int mkv_ha_start(const mkv_config_t *cfg, mkv_index_t *index, const char *admin_addr,
                 char **err);
/* The server is stopping and its workers are drained: a primary whose standby has every
 * batch gives the lease up (the standby takes over at once), then the threads stop. */
void mkv_ha_stop(void);

mkv_ha_role_t mkv_ha_role(void);
const char *mkv_ha_role_name(mkv_ha_role_t r);

/* A standby's view: may it answer reads from its own index (it is in etcd's sync record
 * and receiving the live stream)? Always 1 on a primary and without HA. */
int mkv_ha_reads_local(void);

/* The primary's API address ("host:port", its ha.advertise) into buf; 0, or -1 when no
 * primary is known (then writes answer 503). */
int mkv_ha_primary_api(char *buf, size_t n);

/* The primary's admin listener ("host:port"); 0, or -1 when no primary is known. */
int mkv_ha_primary_admin(char *buf, size_t n);

/* /health's "ha" object (JSON, appended) and /metrics' lines (appended). */
void mkv_ha_health_json(mkv_buf_t *out);
void mkv_ha_metrics(mkv_buf_t *out);

#endif
