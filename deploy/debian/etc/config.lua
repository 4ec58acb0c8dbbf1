-- /etc/mkv/config.lua: the config of mkv.service, from the mkv package. A dpkg conffile:
-- an upgrade keeps your edits (and asks before replacing an edited file).
-- Every field, with its default: /usr/share/doc/mkv/config.example.lua; mkv(1);
-- /usr/share/doc/mkv/README.md, "Configuration". After an edit: systemctl reload mkv
-- (a change to listen, port, db, workers, admin_listen or leveldb needs a restart).
return {
  -- every interface; "127.0.0.1" when clients come through mkv-proxy on this machine
  listen = "*",
  port = 3000,
  db = "/var/lib/mkv/index",
  -- the cluster's volumes (mkv-volume@NAME on each volume machine), host:port
  volumes = { "10.0.0.2:3001", "10.0.0.3:3001" },
  replicas = 2,
  subvolumes = 10,
  access_log = "/var/log/mkv/access.log",
  -- admin commands, GET /health and /metrics (curl http://127.0.0.1:3100/health)
  admin_listen = "127.0.0.1:3100",
  -- "https://proxy.example:8444": redirects go to the proxy's --volume-listen port
  public_url = "",
  -- Write protection (README "Write protection"): writes need a Bearer secret, and
  -- volumes take PUT/DELETE only with mkv's key (the volumes' KEY_FILE). Make the files
  -- first: umask 027; openssl rand -base64 32 > /etc/mkv/write.secret; chgrp mkv it.
  -- auth = { write_secret_file = "/etc/mkv/write.secret",
  --          volume_key_file = "/etc/mkv/volume.key" },
}
