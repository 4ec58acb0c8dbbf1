-- spec/netns.lua: moves the running busted process (and so every process it starts
-- afterwards: mkv, the nginx volumes, curl) into a private network namespace with only
-- a loopback, and a private mount namespace. nft rules, tc qdiscs and tmpfs mounts made
-- there vanish with the process, whatever way the spec ends: nothing to clean up on the
-- host, and no packet can leave (testing-reliability §2.3 "Network faults in a private
-- namespace").
--
--   local NS = require "netns"
--   NS.enter()                       -- once, before the first process is started
--   NS.nft("add rule inet mkv out tcp dport 3002 drop")
--   NS.clear_nft()  NS.tc(...)  NS.clear_tc()
--
-- As root this is unshare(CLONE_NEWNET | CLONE_NEWNS); as another user a user
-- namespace is made too (the `unshare -rn` of the notes), mapping the user to root.
local H = require "helpers"
local ffi = require "ffi"

ffi.cdef [[
int unshare(int flags);
int mount(const char *src, const char *target, const char *type, unsigned long flags,
          const void *data);
char *strerror(int errnum);
int getuid(void);
int getgid(void);
]]

local CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
local MS_REC, MS_PRIVATE = 16384, 262144

local NS = { entered = false }

local function errstr() return ffi.string(ffi.C.strerror(ffi.errno())) end

local function write(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

local function must(cmd)
  local out, code = H.sh(cmd)
  if code ~= 0 then error(cmd .. " failed (" .. tostring(code) .. "): " .. out, 2) end
  return out
end

-- The base nft table: one output chain every fault rule goes into.
local BASE = "add table inet mkv; add chain inet mkv out { type filter hook output priority 0; }"

function NS.enter()
  if NS.entered then return end
  local uid, gid = ffi.C.getuid(), ffi.C.getgid()
  if uid == 0 then
    if ffi.C.unshare(CLONE_NEWNET + CLONE_NEWNS) ~= 0 then
      error("unshare(CLONE_NEWNET|CLONE_NEWNS): " .. errstr())
    end
  else
    if ffi.C.unshare(CLONE_NEWUSER + CLONE_NEWNET + CLONE_NEWNS) ~= 0 then
      error("unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS): " .. errstr())
    end
    write("/proc/self/setgroups", "deny")
    write("/proc/self/uid_map", "0 " .. uid .. " 1")
    write("/proc/self/gid_map", "0 " .. gid .. " 1")
  end
  -- Mounts made from now on stay in this namespace.
  if ffi.C.mount(nil, "/", nil, MS_REC + MS_PRIVATE, nil) ~= 0 then
    error("mount --make-rprivate /: " .. errstr())
  end
  must("ip link set lo up")
  -- Only a loopback: the namespace's own, not the host's.
  local links = must("ip -o link show")
  local n = 0
  for _ in links:gmatch("[^\n]+") do n = n + 1 end
  assert(n == 1, "the private namespace has more than lo: " .. links)
  must("nft " .. H.shq(BASE))
  NS.entered = true
end

-- nft commands (one string, ';'-separated) in the private namespace.
function NS.nft(cmds)
  assert(NS.entered, "NS.enter() first")
  return must("nft " .. H.shq(cmds))
end

-- Removes every fault rule (keeps the table and chain).
function NS.clear_nft()
  if NS.entered then H.sh("nft flush chain inet mkv out") end
end

function NS.tc(args)
  assert(NS.entered, "NS.enter() first")
  return must("tc " .. args)
end

function NS.clear_tc()
  if NS.entered then H.sh("tc qdisc del dev lo root 2>/dev/null") end
end

-- Slows only the traffic to one TCP port on lo: an htb root whose default class is
-- unlimited, a class for the port limited to `rate` (a token bucket under it), and a u32
-- filter sending that port's packets there. The other volumes and the clients keep full
-- speed. (This kernel has htb, tbf and u32, but no prio/netem: testing-reliability §0.)
-- rate as tc spells it ("192mbit").
function NS.slow_port(port, rate)
  NS.tc("qdisc add dev lo root handle 1: htb default 10 r2q 100000")
  NS.tc("class add dev lo parent 1: classid 1:10 htb rate 100gbit")
  NS.tc("class add dev lo parent 1: classid 1:30 htb rate " .. rate .. " burst 256kb")
  NS.tc("qdisc add dev lo parent 1:30 handle 30: tbf rate " .. rate .. " burst 256kb latency 50ms")
  NS.tc("filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport " .. port ..
    " 0xffff flowid 1:30")
end

-- A tmpfs of `size` (e.g. "8m") at dir, in the private mount namespace.
function NS.tmpfs(dir, size)
  assert(NS.entered, "NS.enter() first")
  must("mkdir -p " .. H.shq(dir) .. " && mount -t tmpfs -o size=" .. size .. " tmpfs " .. H.shq(dir))
end

function NS.umount(dir)
  H.sh("umount -l " .. H.shq(dir) .. " 2>/dev/null")
end

-- dir made read-only (a read-only bind mount of itself).
function NS.readonly(dir)
  must("mount --bind " .. H.shq(dir) .. " " .. H.shq(dir) .. " && mount -o remount,ro,bind " ..
    H.shq(dir) .. " " .. H.shq(dir))
end

return NS
