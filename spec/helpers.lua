-- spec/helpers.lua: real components for the specs -- nginx volumes started with
-- deploy/volume on free loopback ports, the real mkv binary, curl for HTTP, raw sockets
-- for malformed requests. Every process a spec starts is stopped by H.cleanup(); mkv
-- must stop cleanly on SIGTERM, and a spec fails if mkv died of any other signal.
local H = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  return (src:match("^(.*)/spec/helpers%.lua$") or ".")
end

H.root = os.getenv("MKV_ROOT") or script_dir()
if H.root == "." then H.root = os.getenv("PWD") end
H.build = os.getenv("MKV_BUILD") or (H.root .. "/build")
H.mkv_bin = H.build .. "/mkv"
package.cpath = H.build .. "/?.so;" .. package.cpath

local T = require "mkv_testlib"
H.T = T
H.sleep, H.now = T.sleep, T.now

-- Timeouts stretch under AddressSanitizer (MKV_TEST_TIMEOUT_MULTIPLIER=3 in CI).
H.slow = tonumber(os.getenv("MKV_TEST_TIMEOUT_MULTIPLIER") or "1") or 1

local started = {}

-- Under the ASan run busted's luajit has the ASan runtime preloaded; the processes the
-- specs start must not inherit it (the sanitized mkv has its own, with leak checks on).
local preload = os.getenv("LD_PRELOAD")
local child_asan = os.getenv("MKV_CHILD_ASAN_OPTIONS")

-- Runs a shell command; returns its output (stdout and stderr) and exit code. (Under
-- LuaJIT, io.popen():close() does not give the exit code: the shell echoes it.)
function H.sh(cmd)
  if preload then cmd = "unset LD_PRELOAD; " .. cmd end
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"__mkv_rc=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__mkv_rc=(%d+)%s*$"))
  out = out:gsub("__mkv_rc=%d+%s*$", "")
  return out, code
end

-- Every file under a volume's root but the prober's write probe (which lands whenever
-- the prober's turn comes), sorted (byte order), as find prints them.
-- opts.relative: "./a/b", from the root; opts.dirs: directories too (every entry).
function H.volume_files(v, opts)
  opts = opts or {}
  local what = opts.dirs and " -mindepth 1" or " -type f"
  local cmd = opts.relative and ("cd " .. H.shq(v.root) .. " && find ." .. what)
    or ("find " .. H.shq(v.root) .. what)
  local out = {}
  for line in H.sh(cmd .. " ! -name mkv-probe | LC_ALL=C sort"):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- The running mkv's admin address ("host:port"), from the line it writes to <db>/mkv.admin;
-- nil until that line is whole.
function H.admin_addr(db)
  return (H.read_file(db .. "/mkv.admin") or ""):match("^(%S+:%d+)\n$")
end

function H.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

function H.tmpdir(tag)
  -- MKV_SPEC_TMP: deploy/test gives each run a prefix of its own, so that its final
  -- sweep of leftover processes touches no other run's.
  local prefix = os.getenv("MKV_SPEC_TMP") or "/tmp/mkv-spec-"
  local d = H.sh("mktemp -d " .. prefix .. (tag or "x") .. "-XXXXXX"):gsub("%s+$", "")
  started[#started + 1] = { dir = d }
  return d
end

H.free_port = T.free_port

-- Polls fn until it returns a truthy value; errors with the last failure after timeout.
function H.eventually(fn, timeout, what)
  local deadline = H.now() + (timeout or 5) * H.slow
  local last
  while true do
    local ok, res, extra = pcall(fn)
    if ok and res then return res, extra end
    last = ok and tostring(extra or res) or res
    if H.now() > deadline then
      error(string.format("%s did not happen in time: %s", what or "condition", tostring(last)), 2)
    end
    H.sleep(0.02)
  end
end

local function port_open(port)
  local fd = T.connect(port)
  if fd then T.close(fd) return true end
  return false
end
H.port_open = port_open

-- A process: pid, its log, and how to stop it.
local Proc = {}
Proc.__index = Proc

function Proc:alive()
  local st = T.wait(self.pid, 0)
  if st then self.status = st end
  return st == nil and self.status == nil
end

function Proc:log()
  return H.read_file(self.logfile) or ""
end

function Proc:signal(sig)
  return T.kill(self.pid, sig)
end

-- Stops with SIGTERM and waits. Returns the exit status table.
function Proc:stop(timeout)
  if self.status then return self.status end
  T.kill(self.pid, 15)
  local st = T.wait(self.pid, (timeout or 15) * H.slow)
  if not st then
    T.kill(-self.pid, 9)
    T.kill(self.pid, 9)
    st = T.wait(self.pid, 5)
    error(self.name .. " did not stop within its timeout after SIGTERM\n" .. self:log())
  end
  self.status = st
  return st
end

function Proc:kill9()
  T.kill(self.pid, 9)
  self.status = T.wait(self.pid, 5)
  return self.status
end

local function child_env(name, env)
  local e = {}
  for k, v in pairs(env or {}) do e[k] = v end
  if preload then e.LD_PRELOAD = "" end
  if child_asan and name:match("^mkv") then e.ASAN_OPTIONS = e.ASAN_OPTIONS or child_asan end
  return e
end

local function spawn(name, argv, opts)
  opts = opts or {}
  local logfile = opts.log or (H.tmpdir(name) .. "/" .. name .. ".log")
  local pid = T.spawn(argv, { stdout = logfile, stderr = logfile, env = child_env(name, opts.env),
                              cwd = opts.cwd })
  local p = setmetatable({ name = name, pid = pid, logfile = logfile, argv = argv }, Proc)
  started[#started + 1] = { proc = p, keep_signal = opts.keep_signal }
  return p
end
H.spawn = spawn

-- An nginx WebDAV volume (deploy/volume) on 127.0.0.1:<port>.
function H.start_volume(opts)
  opts = opts or {}
  -- A fixed port (the Go fixture's) that answers already belongs to someone else: fail
  -- rather than run the spec against a stranger's server.
  if opts.port and port_open(opts.port) then
    error("port " .. opts.port .. " is already in use (another test run?)")
  end
  local port = opts.port or H.free_port()
  local root = opts.root or (H.tmpdir("vol") .. "/data")
  local state = opts.state or (root .. ".nginx")
  -- opts.args: options of deploy/volume before the root (--key-file F ...)
  local argv = { H.root .. "/deploy/volume" }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = root
  -- opts.index: mkv's host:port, where a client's read of a missing file bounces to
  local p = spawn("nginx-" .. port, argv, {
    env = { PORT = tostring(port), BIND = "127.0.0.1", WORKERS = tostring(opts.workers or 1), STATE = state,
            INDEX = opts.index },
  })
  p.port, p.root, p.state, p.index = port, root, state, opts.index
  p.addr = "127.0.0.1:" .. port
  H.eventually(function()
    if not p:alive() then error("nginx exited: " .. p:log()) end
    return port_open(port)
  end, 10, "volume on port " .. port)
  return p
end

-- A stopped volume started again as it was: the same port, root, state and index.
function H.restart_volume(v)
  return H.start_volume({ port = v.port, root = v.root, state = v.state, index = v.index })
end

-- An nginx of a test's own (not a volume), in the foreground on 127.0.0.1:<port>:
-- opts.http (lines of the http block), opts.server (lines of its one server block),
-- opts.workers (worker_processes, default 1), opts.port. -> the process, with .port,
-- .addr and .url
function H.start_nginx(name, opts)
  local state = H.tmpdir(name)
  local port = opts.port or H.free_port()
  local conf = {
    (T.getuid() == 0) and "user root;" or "",
    "daemon off;",
    "worker_processes " .. tostring(opts.workers or 1) .. ";",
    "pid " .. state .. "/nginx.pid;",
    "error_log stderr warn;",
    "events { worker_connections 4096; }",
    "http {",
    "  access_log off;",
    "  client_body_temp_path " .. state .. "/b; proxy_temp_path " .. state .. "/p;",
    "  fastcgi_temp_path " .. state .. "/f; uwsgi_temp_path " .. state .. "/u;",
    "  scgi_temp_path " .. state .. "/s;",
  }
  for _, l in ipairs(opts.http or {}) do conf[#conf + 1] = "  " .. l end
  conf[#conf + 1] = "  server {"
  conf[#conf + 1] = "    listen 127.0.0.1:" .. port .. ";"
  for _, l in ipairs(opts.server or {}) do conf[#conf + 1] = "    " .. l end
  conf[#conf + 1] = "  }"
  conf[#conf + 1] = "}"
  H.write_file(state .. "/nginx.conf", table.concat(conf, "\n"))
  local p = spawn(name, { "nginx", "-p", state, "-e", "stderr", "-c", state .. "/nginx.conf" })
  p.port, p.addr, p.url = port, "127.0.0.1:" .. port, "http://127.0.0.1:" .. port
  H.eventually(function()
    if not p:alive() then error(name .. " exited: " .. p:log(), 0) end
    return port_open(port)
  end, 10, name .. " on port " .. port)
  return p
end

-- spec/go/goleveldb_tool.go, built into dir: it opens an index exactly as the Go
-- minikeyvalue does (goleveldb). -> the tool's path.
function H.go_tool(dir)
  local out, code = H.sh("command -v go")
  assert(code == 0, "the Go toolchain is missing: deploy/setup installs golang-go")
  local tool = dir .. "/goleveldb_tool"
  out, code = H.sh("cd " .. H.shq(H.root) .. " && GO111MODULE=off GOPATH=/usr/share/gocode " ..
    "GOCACHE=" .. H.shq(dir .. "/gocache") .. " go build -o " .. H.shq(tool) ..
    " spec/go/goleveldb_tool.go")
  assert(code == 0, "go build: " .. out)
  return tool
end

-- Every record goleveldb sees in the index at db: { [key] = value }, count.
function H.go_dump(tool, db)
  local out, code = H.sh(H.shq(tool) .. " dump " .. H.shq(db))
  assert(code == 0, "goleveldb_tool dump: " .. out)
  local function unhex(h)
    return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
  end
  local recs, n = {}, 0
  for k, v in out:gmatch("(%x*) (%x*)\n") do
    recs[unhex(k)] = unhex(v)
    n = n + 1
  end
  return recs, n
end

-- The mkv server: opts.flags (list of argv words before the command), opts.config (a
-- Lua source string written to a file), opts.args (extra words after "server").
function H.start_mkv(opts)
  opts = opts or {}
  local port = opts.port or H.free_port()
  local dir = opts.dir or H.tmpdir("mkv")
  local argv = { H.mkv_bin }
  if opts.config then
    local cfgpath = opts.config_path or (dir .. "/config.lua")
    H.write_file(cfgpath, opts.config)
    argv[#argv + 1] = "-c"
    argv[#argv + 1] = cfgpath
  end
  for _, a in ipairs(opts.flags or {}) do argv[#argv + 1] = a end
  if not opts.no_port then
    argv[#argv + 1] = "-port"
    argv[#argv + 1] = tostring(port)
    argv[#argv + 1] = "-listen"
    argv[#argv + 1] = "127.0.0.1"
  end
  if opts.command ~= false then argv[#argv + 1] = opts.command or "server" end
  local p = spawn("mkv-" .. port, argv, { log = dir .. "/mkv.log", env = opts.env })
  p.port, p.dir = port, dir
  p.url = "http://127.0.0.1:" .. port
  if opts.wait == false then return p end
  H.eventually(function()
    if not p:alive() then error("mkv exited: " .. p:log()) end
    return port_open(port)
  end, 10, "mkv on port " .. port)
  return p
end

-- Runs mkv to completion (for config errors, index-flush ...): returns code, output.
function H.run_mkv(args, timeout)
  local dir = H.tmpdir("run")
  local argv = { H.mkv_bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local log = dir .. "/out.log"
  local pid = T.spawn(argv, { stdout = log, stderr = log, env = child_env("mkv-run") })
  local st = T.wait(pid, (timeout or 10) * H.slow)
  if not st then
    T.kill(pid, 9)
    T.wait(pid, 5)
    error("mkv " .. table.concat(args, " ") .. " did not exit")
  end
  return st.code or (128 + (st.signal or 0)), H.read_file(log) or "", st
end

-- n volumes and an mkv in front of them. opts: n, replicas, subvolumes, flags (extra),
-- config (then volumes are passed as flags unless opts.volumes_in_config).
function H.cluster(opts)
  opts = opts or {}
  local c = { volumes = {} }
  local addrs = {}
  for i = 1, opts.n or 3 do
    local v = H.start_volume()
    c.volumes[i] = v
    addrs[i] = v.addr
  end
  c.addrs = addrs
  local flags = { "-volumes", table.concat(addrs, ","), "-db", H.tmpdir("db") .. "/index",
                  "-replicas", tostring(opts.replicas or 3), "-subvolumes",
                  tostring(opts.subvolumes or 1) }
  for _, f in ipairs(opts.flags or {}) do flags[#flags + 1] = f end
  c.mkv = H.start_mkv({ flags = flags, config = opts.config, env = opts.env })
  c.url = c.mkv.url
  c.db = flags[4]
  c.flags = flags
  function c:restart(more)
    self.mkv:stop()
    local f = {}
    for _, x in ipairs(self.flags) do f[#f + 1] = x end
    for _, x in ipairs(more or {}) do f[#f + 1] = x end
    self.mkv = H.start_mkv({ flags = f, config = opts.config, port = self.mkv.port })
    self.url = self.mkv.url
  end
  -- An mkv command against this cluster: H.run_mkv with its flags, then args.
  function c:run(args, timeout)
    local argv = {}
    for _, x in ipairs(self.flags) do argv[#argv + 1] = x end
    for _, x in ipairs(args) do argv[#argv + 1] = x end
    return H.run_mkv(argv, timeout)
  end
  return c
end

-- Stops everything started so far; asserts mkv exited cleanly (code 0 after SIGTERM).
function H.cleanup()
  local problems = {}
  for i = #started, 1, -1 do
    local s = started[i]
    if s.proc then
      local p = s.proc
      local was_dead = p.status ~= nil or not p:alive()
      local st = p.status
      if not was_dead then
        local ok, res = pcall(p.stop, p)
        st = ok and res or nil
        if not ok then problems[#problems + 1] = res end
      end
      if p.name:match("^mkv") and st and st.signal and st.signal ~= 15 and st.signal ~= 9
         and not s.keep_signal then
        problems[#problems + 1] = p.name .. " died of signal " .. st.signal .. "\n" .. p:log()
      end
      if p.name:match("^mkv") and st and st.code and st.code ~= 0 and not was_dead then
        problems[#problems + 1] = p.name .. " exited " .. st.code .. " on SIGTERM\n" .. p:log()
      end
    end
  end
  for i = #started, 1, -1 do
    local s = started[i]
    if s.dir and os.getenv("MKV_KEEP_TMP") == nil then H.sh("rm -rf '" .. s.dir .. "'") end
  end
  started = {}
  if #problems > 0 then error(table.concat(problems, "\n")) end
end

-- ---- HTTP with curl ----

local function shq(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
H.shq = shq

-- H.http(method, url, opts) -> status, headers (lower-case names), body, curl's output,
-- blocks (every header block, each with [":status"], when redirects were followed)
-- opts: body (string), file (path to upload), headers ({name = value}, or a list of
-- "Name: value"), chunked (bool), follow (-L), range, timeout, cacert (HTTPS), out (a
-- file for the body, which is then not returned), extra (more curl words).
function H.http(method, url, opts)
  opts = opts or {}
  local dir = opts.tmp or H.tmpdir("curl")
  local hdr, out = dir .. "/h", opts.out or (dir .. "/b")
  local cmd = { "curl -sS --path-as-is -o", shq(out), "-D", shq(hdr), "-w '%{http_code}'",
                "--max-time", tostring((opts.timeout or 30) * H.slow) }
  if opts.cacert then cmd[#cmd + 1] = "--cacert " .. shq(opts.cacert) end
  if method == "HEAD" then
    cmd[#cmd + 1] = "-I"
  else
    cmd[#cmd + 1] = "-X " .. method
  end
  if opts.body then
    local bf = H.write_file(dir .. "/in", opts.body)
    cmd[#cmd + 1] = "--data-binary @" .. shq(bf)
  elseif opts.file then
    cmd[#cmd + 1] = "-T " .. shq(opts.file)
  end
  if opts.chunked then cmd[#cmd + 1] = "-H 'Transfer-Encoding: chunked'" end
  if opts.follow then cmd[#cmd + 1] = "-L" end
  if opts.range then cmd[#cmd + 1] = "-r " .. opts.range end
  for k, v in pairs(opts.headers or {}) do
    cmd[#cmd + 1] = "-H " .. shq(type(k) == "number" and v or (k .. ": " .. v))
  end
  if opts.extra then cmd[#cmd + 1] = opts.extra end
  cmd[#cmd + 1] = shq(url)
  local code = H.sh(table.concat(cmd, " "))
  local status = tonumber(code:match("(%d%d%d)%s*$"))
  local headers, blocks = {}, {}
  local raw = H.read_file(hdr) or ""
  -- With -L there are several header blocks: `headers` is the last.
  for line in raw:gmatch("[^\r\n]+") do
    if line:match("^HTTP/") then
      headers = { [":status"] = tonumber(line:match("^HTTP/%S+ (%d+)")) }
      blocks[#blocks + 1] = headers
    end
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  local body = not opts.out and (H.read_file(out) or "") or nil
  if not opts.tmp then H.sh("rm -rf " .. shq(dir)) end
  return status, headers, body, code, blocks
end

-- Sends raw bytes on a new connection; returns what came back until the server closed
-- or `timeout` passed, and whether it closed.
function H.raw(port, bytes, timeout, opts)
  local fd = assert(T.connect(port))
  if bytes and #bytes > 0 then T.send(fd, bytes) end
  if opts and opts.shutdown then T.shutdown_write(fd) end
  local got, closed = {}, false
  local deadline = H.now() + (timeout or 2) * H.slow
  while H.now() < deadline do
    local data, err = T.recv(fd, math.max(0.01, deadline - H.now()))
    if data == nil then break end
    if data == "" then closed = true break end
    got[#got + 1] = data
  end
  T.close(fd)
  return table.concat(got), closed
end

-- Sends `parts` on a new connection to `port` (a string, or a list of strings and
-- numbers: a number is a pause in seconds between send() calls), then reads until the
-- server closes or `timeout` passes. A reset counts as a close. Returns the bytes
-- received, whether the server closed, and the seconds from connect to close/timeout.
function H.raw_parts(port, parts, timeout)
  if type(parts) == "string" then parts = { parts } end
  local fd = assert(T.connect(port))
  local t0 = H.now()
  for _, p in ipairs(parts) do
    if type(p) == "number" then H.sleep(p) else T.send(fd, p) end
  end
  local got, closed = {}, false
  local deadline = H.now() + (timeout or 3) * H.slow
  while H.now() < deadline do
    local data, err = T.recv(fd, math.max(0.01, deadline - H.now()))
    if data == "" then closed = true break end
    if data == nil then
      if err ~= "timeout" then closed = true end -- ECONNRESET: the server closed
      break
    end
    got[#got + 1] = data
  end
  local elapsed = H.now() - t0
  T.close(fd)
  return table.concat(got), closed, elapsed
end

-- Parses the status lines of a raw response (several when pipelined).
function H.statuses(raw)
  local out = {}
  for code in raw:gmatch("HTTP/1%.%d (%d%d%d)") do out[#out + 1] = tonumber(code) end
  return out
end

-- The open fds of a process, not counting its keep-alive connections to the volumes
-- (upstream pools: each worker keeps a bounded number per volume, and which worker serves
-- a request is up to the kernel, so their count is not a leak signal; /metrics'
-- mkv_volume_connections accounts for them) nor LevelDB's files in the index directory
-- (its table cache opens tables lazily, bounded by max_open_files).
-- volumes: the started volumes (anything with a .port).
-- -> others, pooled, { [volume port] = its sockets }
function H.fd_census(pid, volumes, db)
  local vp = {}
  for _, v in ipairs(volumes) do vp[v.port] = true end
  local remote = {} -- socket inode -> remote port (this network namespace's table)
  for line in (H.read_file("/proc/net/tcp") or ""):gmatch("[^\n]+") do
    local rport, inode = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) %x+ %x+:%x+ %x+:%x+ %x+%s+%d+%s+%d+%s+(%d+)")
    if rport then remote[inode] = tonumber(rport, 16) end
  end
  local out = H.sh("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  local others, pooled, by_port = 0, 0, {}
  for line in out:gmatch("[^\n]+") do
    local target = line:match(" %-> (.*)$")
    if target then
      local inode = target:match("^socket:%[(%d+)%]$")
      local port = inode and remote[inode]
      if port and vp[port] then
        pooled = pooled + 1
        by_port[port] = (by_port[port] or 0) + 1
      elseif not (db and target:sub(1, #db + 1) == db .. "/") then
        others = others + 1
      end
    end
  end
  return others, pooled, by_port
end

-- The threads of process pid: -> list of { tid = number, comm = its name in the kernel }
function H.threads(pid)
  local out = {}
  for tid in H.sh("ls /proc/" .. pid .. "/task 2>/dev/null"):gmatch("%d+") do
    local comm = (H.read_file("/proc/" .. pid .. "/task/" .. tid .. "/comm") or ""):gsub("%s+$", "")
    out[#out + 1] = { tid = tonumber(tid), comm = comm }
  end
  return out
end

function H.proc_status(pid, field)
  local s = H.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

function H.md5_hex(s)
  return require("mkv").md5_hex(s)
end

-- Percent-encodes every byte that is not unreserved (and keeps '/').
function H.urlencode_path(s)
  return (s:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

return H
