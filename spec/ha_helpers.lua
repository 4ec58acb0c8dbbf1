-- Helpers of the standby-index specs (README "High availability"): a real etcd (Debian's
-- etcd-server) on free loopback ports, one member or three, and mkv index nodes with an
-- `ha` section, over real nginx volumes.
local H = require "helpers"
local json = require "json"

local X = {}

X.SECRET = "spec-ha-secret-0123456789"

-- One etcd member per name (1 or 3), a cluster of them. -> { urls = {...}, members = {
-- { name, proc, client, peer, dir } }, url = first client URL }
function X.start_etcd(n)
  n = n or 1
  local members, initial = {}, {}
  for i = 1, n do
    local m = { name = "e" .. i, client = H.free_port(), peer = H.free_port(), dir = H.tmpdir("etcd") }
    members[i] = m
    initial[i] = string.format("%s=http://127.0.0.1:%d", m.name, m.peer)
  end
  local urls = {}
  for i, m in ipairs(members) do
    m.url = "http://127.0.0.1:" .. m.client
    urls[i] = m.url
    m.argv = { "etcd", "--name", m.name, "--data-dir", m.dir .. "/data",
      "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
      "--listen-peer-urls", "http://127.0.0.1:" .. m.peer,
      "--initial-advertise-peer-urls", "http://127.0.0.1:" .. m.peer,
      "--initial-cluster", table.concat(initial, ","), "--initial-cluster-state", "new",
      "--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "warn" }
    m.proc = H.spawn("etcd-" .. m.client, m.argv)
  end
  local e = { members = members, urls = urls, url = urls[1] }
  function e:restart(i)
    local m = self.members[i]
    m.proc = H.spawn("etcd-" .. m.client, m.argv)
  end
  -- The member that leads the etcd cluster now (index), or nil.
  function e:leader()
    for i, m in ipairs(self.members) do
      if m.proc:alive() then
        local st, _, body = H.http("POST", m.url .. "/v3/maintenance/status", { body = "{}", timeout = 2 })
        if st == 200 then
          local doc = json.decode(body)
          if doc.leader and doc.leader == doc.header.member_id then return i end
        end
      end
    end
  end
  H.eventually(function()
    for _, m in ipairs(members) do
      if not m.proc:alive() then error("etcd exited: " .. m.proc:log()) end
    end
    local st = H.http("POST", urls[1] .. "/v3/kv/range", { body = '{"key":"eA=="}', timeout = 2 })
    return st == 200
  end, 20 * H.slow, "etcd on " .. urls[1])
  return e
end

-- The config of one index node. o: etcd (urls), volumes (addrs), name, port, repl,
-- db, sync ("on" | "strict"), ttl, sync_timeout, replicas, extra (more Lua fields).
function X.node_config(o)
  local eq = {}
  for i, u in ipairs(o.etcd) do eq[i] = string.format("%q", u) end
  local vq = {}
  for i, v in ipairs(o.volumes) do vq[i] = string.format("%q", v) end
  return string.format([[
return {
  port = %d, listen = "127.0.0.1", db = %q, volumes = { %s }, replicas = %d, subvolumes = 1,
  repair_interval = "0",
  ha = { etcd = { %s }, cluster = %q, name = %q, advertise = "127.0.0.1:%d",
         replication = "127.0.0.1:%d", secret = %q, ttl = %q, sync = %q,
         sync_timeout = %q },
  %s
}
]], o.port, o.db, table.concat(vq, ", "), o.replicas or 2, table.concat(eq, ", "),
    o.cluster or "spec", o.name, o.port, o.repl, X.SECRET, o.ttl or "3s", o.sync or "on",
    o.sync_timeout or "1s", o.extra or "")
end

-- A cluster: etcd (given, or one member), n volumes, and index nodes "a", "b" (opts.nodes
-- names them; opts.etcd_for[name]: the etcd endpoints that node is given, default all).
-- Each node: { name, port, repl, db, dir, config, proc, url }.
function X.cluster(opts)
  opts = opts or {}
  local c = { etcd = opts.etcd or X.start_etcd(1), volumes = {}, addrs = {}, nodes = {} }
  for i = 1, opts.volumes or 2 do
    c.volumes[i] = H.start_volume()
    c.addrs[i] = c.volumes[i].addr
  end
  for _, name in ipairs(opts.nodes or { "a", "b" }) do
    local dir = H.tmpdir("ha-" .. name)
    local n = { name = name, port = H.free_port(), repl = H.free_port(), dir = dir,
                db = dir .. "/index" }
    n.url = "http://127.0.0.1:" .. n.port
    local etcd_urls = (opts.etcd_for and opts.etcd_for[name]) or c.etcd.urls
    n.config = X.node_config({ etcd = etcd_urls, volumes = c.addrs, name = name, port = n.port,
      repl = n.repl, db = n.db, sync = opts.sync, ttl = opts.ttl, cluster = opts.cluster,
      sync_timeout = opts.sync_timeout, replicas = opts.replicas, extra = opts.extra })
    c.nodes[name] = n
  end
  local C = c
  -- Starts (or restarts) node name; waits until it serves.
  function C:start(name)
    local n = self.nodes[name]
    n.proc = H.start_mkv({ config = n.config, dir = n.dir, port = n.port, no_port = true })
    return n
  end
  -- /health of a node (the parsed document), or nil.
  function C:health(name)
    local n = self.nodes[name]
    local addr = H.admin_addr(n.db)
    if not addr then return nil end
    local st, _, body = H.http("GET", "http://" .. addr .. "/health", { timeout = 3 })
    if not st or (st ~= 200 and st ~= 503) then return nil end
    local ok, doc = pcall(json.decode, body)
    return ok and doc or nil
  end
  function C:role(name)
    local h = self:health(name)
    return h and h.ha and h.ha.role
  end
  -- Waits until `primary` is the primary and every other running node streams from it
  -- in sync (the sync record names them).
  function C:settled(primary, timeout)
    H.eventually(function()
      local h = self:health(primary)
      if not (h and h.ha and h.ha.role == "primary") then return false, primary .. " not primary" end
      for name, n in pairs(self.nodes) do
        if name ~= primary and n.proc and n.proc:alive() then
          local s = self:health(name)
          if not (s and s.ha and s.ha.role == "standby" and s.ha.reads_local and s.ha.streaming
                  and s.ha.primary == primary) then
            return false, name .. " not a standby in sync: " .. json.encode(s and s.ha or {})
          end
        end
      end
      return true
    end, (timeout or 20) * H.slow, primary .. " primary, the others in sync")
  end
  -- The running node that is primary now, or nil.
  function C:primary()
    for name, n in pairs(self.nodes) do
      if n.proc and n.proc:alive() and self:role(name) == "primary" then return name end
    end
  end
  return c
end

return X
