/* config.h: the validated configuration as a plain C struct.
 *
 * mkv_config_load() runs on the main thread before any worker starts: it loads
 * config.lua (if any) in a throw-away Lua state, lays the command line's flags over it,
 * and lets lua/mkv_config.lua check every field. Afterwards the struct is read-only and
 * shared by all threads. An error is one line (owned, in *err) naming the field or flag. */
#ifndef MKV_CONFIG_H
#define MKV_CONFIG_H

#include <stddef.h>

#include "mkv/auth.h"

typedef struct mkv_flag_s {
  const char *name;  /* without dashes: "volumes", "v" */
  const char *value; /* as given; "true" for a bare boolean flag */
} mkv_flag_t;

/* The policy kinds, listed once: the enum below, their names (mkv_policy_kind_names),
 * and the list lua/mkv_config.lua checks the config's `policies` against
 * (mkv.policy_kinds, lua_api.c). */
#define MKV_POLICY_KIND_LIST(X)                                                          \
  X(PLACEMENT, "placement") X(REPLICAS, "replicas") X(LISTING, "listing")               \
  X(REBALANCE, "rebalance") X(READ, "read")

enum {
#define MKV_POLICY_KIND_ENUM(id, name) MKV_POLICY_##id,
  MKV_POLICY_KIND_LIST(MKV_POLICY_KIND_ENUM)
#undef MKV_POLICY_KIND_ENUM
  MKV_POLICY_KINDS
};

/* How a GET finds the replica it redirects to: a HEAD to each in turn until one has
 * the value (the Go original's), or none: the first on a volume that is up (health.h),
 * misses bouncing back from the volume (README "Reads"). */
enum { MKV_READ_CHECK_HEAD, MKV_READ_CHECK_NONE };

/* A volume's mode, set by the operator (volume_state; health.h says what each means). */
typedef enum { MKV_VOL_RW, MKV_VOL_READ_ONLY, MKV_VOL_DRAIN } mkv_vol_mode_t;

/* The standby index (ha.h); enabled 0 without `ha` in the config. */
typedef struct mkv_ha_config_s {
  int enabled;
  char **etcd; /* "http://host:port" */
  int netcd;
  char *cluster, *name, *advertise, *replication, *secret;
  double ttl_ms, sync_timeout_ms;
  int strict;       /* ha.sync = "strict" */
  size_t log_bytes; /* ha.log_size_mb */
} mkv_ha_config_t;

typedef struct mkv_config_s {
  char *source;     /* the config file's path, or NULL when only flags were given */
  char *config_dir; /* its directory ("." without a file) */
  char *listen;     /* "*" = every interface, IPv6 and IPv4, as Go's ":port" */
  int port;
  char *db;
  char **volumes; /* "host:port", in config order (placement depends on the order) */
  int nvolumes;
  int replicas;
  int write_quorum; /* copies a PUT needs for its 201: 0 a majority, -1 all, else n */
  mkv_vol_mode_t *volume_modes; /* parallel to `volumes` */
  /* The placement targets: `volumes` without the draining ones, in config order (the
   * policies' volume table). Borrows the strings of `volumes`. */
  char **placement_volumes;
  int nplacement;
  int subvolumes;
  int read_check; /* MKV_READ_CHECK_HEAD (the Go original's) or MKV_READ_CHECK_NONE */
  int protect;
  int md5sum;
  double voltimeout_ms;
  char *fallback; /* "" = none */
  /* "" = redirect to the volumes themselves; else "scheme://host[:port][/prefix]", and a
   * redirect to volume V, path P is <public_url>/V/P (a proxy passes it on: deploy/proxy) */
  char *public_url;
  char *access_log; /* "" = none, "-" = stderr, else a file (appended; reopened on SIGHUP) */
  int verbose;
  char *admin_listen; /* "host:port" of the admin listener; port 0 = any free one */
  char *status_listen; /* "" = off, else "host:port" of the read-only status listener */
  mkv_auth_config_t status_auth; /* its Bearer tokens (write_digest/nwrite only); 0 = open */
  int workers; /* resolved: 0 in the config means one per core */
  char *policies[MKV_POLICY_KINDS];
  char *policy_path; /* ";"-separated templates with "?", like package.path */
  char *policy_config; /* Lua source of the policy_config table, e.g. {["zones"]={...}} */
  double policy_timeout_ms;
  size_t policy_memory;
  struct {
    size_t header_bytes, url_bytes;
    int max_connections;
    double idle_timeout_ms, header_timeout_ms, body_timeout_ms, volume_timeout_ms;
    double body_min_rate; /* bytes/s over a 10 s window; 0 = none */
    double suspect_time_ms, drain_timeout_ms;
    double probe_interval_ms, probe_backoff_ms;
    size_t high_water, low_water;
    int list_slice;
  } limits;
  struct {
    size_t cache_mb, write_buffer_mb, max_file_mb;
    int max_open_files, bloom_bits;
  } leveldb;
  mkv_auth_config_t auth; /* write protection (auth.h); all off by default */
  double repair_interval_ms; /* 0: no background repair */
  double repair_bandwidth;   /* bytes per second */
  int repair_concurrency;
  mkv_ha_config_t ha;
} mkv_config_t;

/* Deep copies and frees of the ha part (the HA threads keep their own). */
void mkv_ha_config_copy(mkv_ha_config_t *dst, const mkv_ha_config_t *src);
void mkv_ha_config_free(mkv_ha_config_t *c);
/* Do two differ (a reload cannot change ha)? */
int mkv_ha_config_differs(const mkv_ha_config_t *a, const mkv_ha_config_t *b);

extern const char *const mkv_policy_kind_names[MKV_POLICY_KINDS];

/* Loads and validates. `path` may be NULL (flags only). `command` ("server",
 * "index-flush", ...) decides which fields are required. Returns 0, or -1 with *err. */
int mkv_config_load(mkv_config_t *cfg, const char *path, const mkv_flag_t *flags,
                    int nflags, const char *command, char **err);
void mkv_config_free(mkv_config_t *cfg);

/* Is `name` a known flag, and is it boolean (takes no separate value)? -1 unknown. The
 * flags are lua/mkv_config.lua's table (M.flags): asked there, never listed twice. */
int mkv_config_flag_kind(const char *name, int *is_bool);

/* For an unknown flag: returns owned, the known flag (without dashes) the operator most
 * likely meant ("volumes" for "volums"), or NULL when none is near. */
char *mkv_config_flag_suggest(const char *name);

/* The copies a PUT of a key with nrep replicas must write for its 201 (write_quorum):
 * a majority (nrep / 2 + 1), all nrep, or the number configured (at most nrep). */
int mkv_write_quorum(const mkv_config_t *cfg, int nrep);

/* Pushes the config as the Lua table that policies and admin scripts see as
 * mkv.config: volumes, nvolumes, replicas, subvolumes, md5sum, protect, voltimeout and
 * volume_timeout (seconds), and policy (the policy_config table). Returns 0, or -1 with
 * the error message pushed instead (policy_config failed to load: no memory). */
struct lua_State;
int mkv_config_push(struct lua_State *L, const mkv_config_t *cfg);

#endif
