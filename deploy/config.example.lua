-- deploy/config.example.lua: every field of mkv's config, with its default.
-- Use it with `mkv -c config.lua`; flags given on the command line override it.
-- A config is a Lua chunk returning a table: mkv checks every field at startup and
-- refuses to start, naming the field, if one is wrong or unknown.
return {
  listen = "*",            -- address to bind; "*" = every interface (IPv6 and IPv4)
  port = 3000,
  db = "/var/lib/mkv/index", -- the LevelDB index directory (created if missing)
  volumes = {              -- volume servers (nginx WebDAV), host:port; order matters:
    "10.0.0.1:3001",       -- placement hashes the names as written
    "10.0.0.2:3001",
    "10.0.0.3:3001",
  },
  replicas = 3,            -- copies of each value (the replicas policy may vary it)
  write_quorum = "majority", -- copies a PUT needs for its 201: "majority", "all" (the Go
                           -- original's), or a number; the others are repaired later
  volume_state = {},       -- { ["10.0.0.3:3001"] = "read_only" | "drain" }: no new copies
                           -- there; a draining one's copies move off (README "Volume health")
  repair_interval = "10s", -- the background repair of keys not where placement wants them
                           -- ("0" = off: mkv rebalance / verify --repair do it by hand)
  repair_bandwidth = "100MB/s", -- ... at most this many bytes per second
  repair_concurrency = 4,  -- ... and this many transfers at once
  subvolumes = 10,         -- directories /sv00../svNN per volume (disks per machine)
  protect = false,         -- DELETE of a live key needs a prior UNLINK
  md5sum = true,           -- store each value's MD5 (sent back as Content-Md5)
  voltimeout = "1s",       -- how long a GET waits for a volume's HEAD probe
  read_check = "head",     -- "none": redirect to a replica on a volume that is up without
                           -- asking it (volumes bounce misses back: deploy/volume INDEX=)
  fallback = "",           -- host:port to redirect missing keys to ("" = 404)
  verbose = false,         -- log every request (debug level)
  access_log = "",         -- "" = none, "-" = stderr, or a file: one line per request,
                           -- Common Log Format + seconds; reopened on SIGHUP (logrotate)
  public_url = "",         -- "https://proxy:8444": redirects go to <public_url>/<volume>/<path>
                           -- (a proxy passes them on: deploy/proxy) instead of the volume
  admin_listen = "127.0.0.1:0", -- admin commands reach a running server here (0 = any
                           -- free port; the address is written to <db>/mkv.admin)
  status_listen = "",      -- a read-only status page, /metrics and /health for people and
                           -- scrapers ("" = off; 3100 = 127.0.0.1:3100; "0.0.0.0:3100")
  -- status_token_file = "/etc/mkv/status.token", -- then every status path needs
                           -- Authorization: Bearer <token> (or status_token = "...")
  workers = 0,             -- worker threads; 0 = one per core

  policies = {             -- which module each policy comes from (see README)
    placement = "default", -- place(key, volumes, n) and path(key)
    replicas = "default",  -- replicas(key)
    listing = "default",   -- list_limit(op, requested) [, show(op, key)]
    rebalance = "default", -- rebalance(key, have, want)
    read = "default",      -- [order(key, volumes, client)]: which copy a GET sends to first
  },
  policy_path = "",        -- ";"-separated "dir/?.lua" templates; "" = <config dir>/policies/?.lua
  policy_config = {},      -- data for the policies (zones, weights ...), as mkv.config.policy
  policy_timeout = "50ms", -- a policy call that runs longer fails its request (500)
  policy_memory_mb = 64,   -- memory cap of each worker's policy state

  limits = {
    header_bytes = 16384,  -- request head larger than this: 431
    url_bytes = 8192,      -- request target longer than this: 414
    max_connections = 10000,
    idle_timeout = "60s",  -- keep-alive connection with no request
    header_timeout = "30s",-- whole request head must arrive within this
    body_timeout = "60s",  -- request body stalled, or a client not reading its answer,
                           -- this long: connection closed
    volume_timeout = "30s",-- volume PUT/DELETE making no progress this long: failed
    suspect_time = "5s",   -- a volume that failed is probed last for this long
    probe_interval = "1s", -- each volume's health probe (a HEAD, every tenth a small PUT)
    probe_backoff = "5s",  -- ... backing off up to this while the volume stays down
    drain_timeout = "30s", -- on SIGTERM, how long in-flight requests may take
    body_min_rate = "1KB/s", -- a slower body (over 10 s) fails with 408; "0" = none
    high_water_kb = 4096,  -- PUT bytes in flight above which mkv stops reading
    low_water_kb = 1024,   -- ... and below which it reads again
    list_slice = 1000,     -- records a listing examines per loop turn
  },
  leveldb = {
    cache_mb = 64, write_buffer_mb = 16, max_open_files = 1000, max_file_mb = 2,
    bloom_bits = 10,
  },
  -- Write protection (README "Write protection"); everything off when absent. Secrets:
  -- 16-200 bytes of letters, digits and - . _ ~ + / = (openssl rand -base64 32), given
  -- inline or, better, as a file (relative to this config; re-read on SIGHUP).
  auth = {
    -- write_secret_file = "/etc/mkv/write.secret", -- PUT/DELETE/UNLINK need
    --                     -- "Authorization: Bearer <a line of it>" (two lines: rotation)
    -- write_secret = "...",   -- or inline: a string, or a list of two
    read = false,          -- true: GET/HEAD and listings need the secret too
    list = false,          -- true: only ?list and ?unlinked need it
    -- volume_key_file = "/etc/mkv/volume.key", -- sent to the volumes as X-Mkv-Volume-Key
    --                     -- (deploy/volume --key-file: PUT/DELETE only with it)
    -- redirect_secret_file = "/etc/mkv/redirect.secret", -- sign redirects for nginx
    --                     -- secure_link (deploy/volume --redirect-secret-file)
    redirect_ttl = "60s",  -- how long a signed redirect is valid
  },
  -- A standby index (README "High availability"): absent = this node alone, as ever.
  -- Every index node of a cluster has the same cluster, etcd and secret, its own name.
  -- ha = {
  --   etcd = { "http://10.0.0.21:2379", "http://10.0.0.22:2379", "http://10.0.0.23:2379" },
  --   cluster = "prod",
  --   name = "index-a",
  --   advertise = "10.0.0.1:3000",    -- this node's API, for writes other nodes pass on
  --   replication = "10.0.0.1:3002",  -- it listens here for the standbys' streams
  --   secret_file = "/etc/mkv/ha.secret", -- or secret = "..."
  --   ttl = "5s",                     -- the leader lease: about the failover time
  --   sync = "on",                    -- "strict": no writes without a standby in sync
  --   sync_timeout = "2s",            -- a standby slower than this is dropped
  --   log_size_mb = 256,              -- batches kept for standbys that reconnect
  -- },
}
