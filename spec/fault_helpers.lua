-- spec/fault_helpers.lua: the "nothing lost" machinery every fault spec (spec/fault/)
-- shares (testing-reliability.md §2.1):
--
--   F.seed / F.rng   a seeded RNG; the seed is printed, MKV_FAULT_SEED=N replays it
--   F.cluster        real nginx volumes + the real mkv, restartable on the same dirs,
--                    optionally with a failpoint armed or under strace
--   F.ledger         the client-side history: every PUT/DELETE/UNLINK with its key, body
--                    md5 and outcome ok / fail / unknown, and per key the set of states
--                    the history allows (Jepsen's model: an unknown op may or may not
--                    have happened; a fail op did not, but what it answered narrows the
--                    states; an ok op fixes the state)
--   F.workload       concurrent ops over keep-alive raw connections, from the seeded RNG,
--                    with an optional kill -9 of mkv while a round of ops is in flight
--   F.verify         after a restart: V1 (every key reads back as the ledger allows,
--                    bytes by md5), V2 (`mkv verify --deep`: every live record's replicas
--                    exist with the record's md5), V3 (an unknown op's key is either
--                    live with all its copies or absent), V4 (fds and RSS of the
--                    restarted server near its baseline after the traffic)
--
-- F.verify returns a list of problems (empty = nothing lost); F.assert_verified fails the
-- test with all of them and the seed. spec/fault/verifier_spec.lua proves it can fail.
local H = require "helpers"
local A = require "api_support"
local O = require "ops_helpers"
local T = H.T

local F = {}

F.soak = os.getenv("MKV_FAULT_SOAK") ~= nil and os.getenv("MKV_FAULT_SOAK") ~= "" and
  os.getenv("MKV_FAULT_SOAK") ~= "0"

-- A number from the environment (MKV_FAULT_SEEDS=40 ...), or default.
function F.num_env(name, default)
  return tonumber(os.getenv(name) or "") or default
end

-- ---- seeds ------------------------------------------------------------------------------

-- The test's seed: MKV_FAULT_SEED when set (replay), else a fresh one. Printed, so a
-- failing run can be repeated exactly (up to the timing of the processes).
function F.seed(what)
  local s = tonumber(os.getenv("MKV_FAULT_SEED") or "")
  if not s then
    local f = io.open("/dev/urandom", "rb")
    local b = f:read(4)
    f:close()
    s = ((b:byte(1) * 256 + b:byte(2)) * 256 + b:byte(3)) * 128 + b:byte(4) % 128 + 1
  end
  io.stderr:write(string.format("# %s: seed %d (replay: MKV_FAULT_SEED=%d)\n", what or "fault", s, s))
  return s
end

-- Park-Miller minimal standard generator: exact in doubles, the same on every LuaJIT.
function F.rng(seed)
  local state = (math.floor(seed) % 2147483646) + 1
  local r = {}
  function r.next()
    state = (state * 48271) % 2147483647
    return state
  end
  -- integer in [a, b]
  function r.int(a, b) return a + r.next() % (b - a + 1) end
  function r.float() return r.next() / 2147483647 end
  function r.pick(list) return list[r.int(1, #list)] end
  return r
end

-- ---- the binaries -----------------------------------------------------------------------

-- The mkv with failpoints: build-asan has them (the ASan pass); the release pass uses
-- build-fp (deploy/setup builds it next to build/). MKV_FP_BUILD overrides.
function F.fp_bin()
  local b = os.getenv("MKV_FP_BUILD")
  if not b then
    b = H.build:match("build%-asan/?$") and H.build or (H.root .. "/build-fp")
  end
  return b .. "/mkv"
end

-- ---- a cluster that survives restarts ----------------------------------------------------

local Cluster = {}
Cluster.__index = Cluster

-- One op on a new connection: the status and the response, or nil when no answer came
-- (the server died, or was never up).
function F.send(port, method, key, body, headers, timeout)
  local okc, conn = pcall(A.connect, port)
  if not okc then return nil end
  conn:send(A.request(method, H.urlencode_path(key), headers, body))
  local r = conn:response(timeout or 20)
  conn:close()
  return r and r.status, r
end

-- opts: n volumes (3), replicas (2), bin (H.mkv_bin), db (a fresh dir), flags (extra),
-- config (a config.lua's text, passed with -c to every command), env (for every start),
-- voltimeout ("5s"), fallback (the -fallback address: its redirects read as absent)
function F.cluster(opts)
  opts = opts or {}
  local c = setmetatable({ volumes = {}, addrs = {}, opts = opts }, Cluster)
  for i = 1, opts.n or 3 do
    c.volumes[i] = H.start_volume()
    c.addrs[i] = c.volumes[i].addr
  end
  c.port = H.free_port()
  c.url = "http://127.0.0.1:" .. c.port
  c.db = opts.db or (H.tmpdir("fdb") .. "/index")
  c.bin = opts.bin or H.mkv_bin
  c.logdir = H.tmpdir("flog")
  c.starts = 0
  if opts.config then
    c.config = c.logdir .. "/config.lua"
    H.write_file(c.config, opts.config)
  end
  return c
end

-- The flags every mkv command of this cluster takes, then the command.
function Cluster:args(command)
  local a = {}
  if self.config then a[1], a[2] = "-c", self.config end
  for _, w in ipairs({ "-volumes", table.concat(self.addrs, ","), "-db", self.db, "-replicas",
                       tostring(self.opts.replicas or 2), "-subvolumes", "1", "-voltimeout",
                       self.opts.voltimeout or "5s" }) do
    a[#a + 1] = w
  end
  if self.opts.fallback then a[#a + 1], a[#a + 2] = "-fallback", self.opts.fallback end
  for _, f in ipairs(self.opts.flags or {}) do a[#a + 1] = f end
  if command then a[#a + 1] = command end
  return a
end

-- Starts mkv on the cluster's dirs and port. opts.env (e.g. MKV_FAILPOINT), opts.wrap
-- (argv words before the binary, e.g. strace), opts.exec_wrap (the wrapper execs mkv,
-- e.g. prlimit: no child to look for), opts.bin, opts.wait (default true: until the port
-- answers; false: return at once, for starts that must fail).
function Cluster:start(o)
  o = o or {}
  self.starts = self.starts + 1
  self.pid, self.wrapped = nil, o.wrap ~= nil and not o.exec_wrap
  local argv = {}
  for _, w in ipairs(o.wrap or {}) do argv[#argv + 1] = w end
  argv[#argv + 1] = o.bin or self.bin
  for _, w in ipairs(self:args()) do argv[#argv + 1] = w end
  for _, w in ipairs({ "-port", tostring(self.port), "-listen", "127.0.0.1", "server" }) do
    argv[#argv + 1] = w
  end
  -- keep_signal: a SIGKILL is what these specs do; H.cleanup still stops what is left
  local log = self.logdir .. "/mkv-" .. self.starts .. ".log"
  local env = o.env
  if self.opts.env then
    env = {}
    for k, v in pairs(self.opts.env) do env[k] = v end
    for k, v in pairs(o.env or {}) do env[k] = v end
  end
  local p = H.spawn("mkv-" .. self.port, argv, { log = log, env = env, keep_signal = true })
  self.mkv = p
  if o.wait == false then return p end
  -- o.may_die: a crash during startup (a failpoint, an injected sync) is an outcome,
  -- not an error: returns nil when the process died before its port answered
  local up = H.eventually(function()
    if not p:alive() then
      if o.may_die then return "died" end
      return false, "mkv exited: " .. p:log()
    end
    return H.port_open(self.port) and "up"
  end, 15, "mkv on port " .. self.port)
  if up == "died" then return nil end
  -- under a wrapper, the process to watch (RSS, fds, signals) is the server itself
  self.pid = p.pid
  if self.wrapped then
    self.pid = H.eventually(function()
      local out = H.sh("pgrep -P " .. p.pid)
      return tonumber(out:match("%d+"))
    end, 5, "the traced mkv's pid")
  end
  return p
end

function Cluster:kill9()
  if self.wrapped and self.pid then T.kill(self.pid, 9) end
  return self.mkv:kill9()
end

-- SIGTERM (to the server itself, under a wrapper) and wait. -> the exit status (of the
-- wrapper, if any: strace exits as its tracee did)
function Cluster:stop()
  if not self.wrapped then return self.mkv:stop() end
  if self.mkv.status then return self.mkv.status end
  T.kill(self.pid, 15)
  local st = T.wait(self.mkv.pid, 20 * H.slow)
  if not st then
    T.kill(self.pid, 9)
    self.mkv:kill9()
    error("traced mkv did not stop after SIGTERM")
  end
  self.mkv.status = st
  return st
end

-- A clean stop (SIGTERM, exit 0) and a start on the same directories and port.
function Cluster:restart(o)
  local st = self:stop()
  assert(st and st.code == 0, "mkv did not stop cleanly: " .. tostring(st and (st.code or st.signal)) ..
    "\n" .. self.mkv:log())
  return self:start(o)
end

function Cluster:health()
  local addr = H.admin_addr(self.db)
  if not addr then return nil, "no admin address" end
  local st, _, body = H.http("GET", "http://" .. addr .. "/health")
  return st, body
end

-- The admin listener's /metrics, parsed (ops_helpers.lua); nil, why when unreachable.
function Cluster:metrics()
  local addr = H.admin_addr(self.db)
  if not addr then return nil, "no admin address" end
  local st, _, body = H.http("GET", "http://" .. addr .. "/metrics")
  if st ~= 200 then return nil, "/metrics answered " .. tostring(st) end
  return O.parse(body)
end

-- Runs an mkv command (verify, rebuild ...) on the cluster's index: inside the running
-- server when one holds it, else offline. -> code, output
function Cluster:run(args, timeout)
  local a = self:args(args[1])
  for i = 2, #args do a[#a + 1] = args[i] end
  return H.run_mkv(a, timeout or 60)
end

-- The file of a key on volume i (subvolumes = 1).
function Cluster:file(i, key)
  return A.key_file(self.volumes[i].root, key)
end

-- ---- the ledger -------------------------------------------------------------------------

local Ledger = {}
Ledger.__index = Ledger

-- path: where the history is appended (one line per op), for a failing run's post mortem.
function F.ledger(path)
  local l = setmetatable({ ops = {}, keys = {}, states = {}, anomalies = {}, path = path }, Ledger)
  if path then l.file = io.open(path, "ab") end
  return l
end

local ABSENT = "absent"
F.ABSENT = ABSENT

local function set_of(...)
  local s = {}
  for _, x in ipairs({ ... }) do s[x] = true end
  return s
end

local function show_set(s)
  local t = {}
  for k in pairs(s) do t[#t + 1] = k end
  table.sort(t)
  return "{" .. table.concat(t, ",") .. "}"
end
F.show_set = show_set

function Ledger:state(key)
  if not self.states[key] then
    self.states[key] = set_of(ABSENT)
    self.keys[#self.keys + 1] = key
  end
  return self.states[key]
end

-- Outcome of an HTTP answer (nil = no answer: connection reset, timeout, server killed).
function F.outcome(method, status)
  if not status then return "unknown" end
  if (method == "PUT" or method == "REPLACE") and status == 201 then return "ok" end
  if (method == "DELETE" or method == "UNLINK") and status == 204 then return "ok" end
  if status >= 400 and status < 500 then return "fail" end
  return "unknown" -- 5xx: the write may have got anywhere before it failed
end

local function is_live(v) return v ~= ABSENT end

-- Records one completed op and applies it to the key's possible states. md5: the PUT
-- body's. An answer no allowed state explains is an anomaly (e.g. a 403 for a key the
-- ledger knows is deleted: a lost DELETE, seen before any verifier runs).
function Ledger:record(method, key, md5, status, note)
  local S = self:state(key)
  local out = F.outcome(method, status)
  local op = { method = method, key = key, md5 = md5, status = status, outcome = out, note = note,
               n = #self.ops + 1 }
  self.ops[#self.ops + 1] = op
  if self.file then
    self.file:write(string.format("%d %s %s %s %s %s\n", op.n, method, key, md5 or "-",
      tostring(status or "-"), out))
    self.file:flush()
  end
  local before = show_set(S)
  local function keep(pred)
    local n = {}
    local any = false
    for v in pairs(S) do
      if pred(v) then n[v] = true any = true end
    end
    if not any then
      self.anomalies[#self.anomalies + 1] = string.format(
        "op #%d %s %s answered %s, which no state the ledger allows (%s) explains",
        op.n, method, key, tostring(status), before)
      return
    end
    self.states[key] = n
  end
  if out == "ok" and method == "REPLACE" then
    self.states[key] = set_of(md5) -- whatever lived there before
  elseif out == "ok" then
    if method == "PUT" then
      keep(function(v) return v == ABSENT end) -- a PUT succeeds only where nothing lives
      self.states[key] = set_of(md5)
    else
      if method == "UNLINK" then keep(is_live) end -- UNLINK of a dead key is a 404
      self.states[key] = set_of(ABSENT)
    end
  elseif out == "fail" then
    if status == 403 and method == "PUT" then keep(is_live)
    elseif status == 404 then keep(function(v) return v == ABSENT end) end
    -- 409 (locked) and other 4xx: nothing happened, nothing learnt
  elseif method == "REPLACE" then
    -- 4xx: nothing happened; unknown: the old value or the new one (never a mix)
    if out == "unknown" then S[md5] = true end
  else -- unknown: happened or not; a PUT only where nothing lived
    if method == "PUT" then
      if S[ABSENT] then S[md5] = true end
    else
      S[ABSENT] = true
    end
  end
  return op
end

-- After a verified observation the key's state is known again.
function Ledger:observe(key, value)
  self:state(key)
  self.states[key] = set_of(value)
end

function Ledger:counts()
  local c = { ok = 0, fail = 0, unknown = 0 }
  for _, op in ipairs(self.ops) do c[op.outcome] = c[op.outcome] + 1 end
  return c
end

-- ---- reading a key back through mkv and the volume ---------------------------------------

local Reader = {}
Reader.__index = Reader

-- fallback: the -fallback address ("127.0.0.1:port"), whose redirects mean absent.
function F.reader(port, fallback)
  return setmetatable({ port = port, fallback = fallback, conns = {} }, Reader)
end

function Reader:conn(port)
  local c = self.conns[port]
  if not c or c.eof then
    if c then c:close() end
    c = A.connect(port)
    self.conns[port] = c
  end
  return c
end

function Reader:request(port, method, path)
  for _ = 1, 2 do
    local c = self:conn(port)
    c:send(A.request(method, path))
    local r, err = c:response(10)
    if r then
      if (r.headers.connection or ""):lower() == "close" then c:close() self.conns[port] = nil end
      return r
    end
    c:close()
    self.conns[port] = nil
    if err ~= "closed" then return nil, err end
  end
  return nil, "closed twice"
end

-- -> ABSENT, or the md5 of the bytes the 302 leads to; or nil, why
function Reader:read(key)
  local r, err = self:request(self.port, "GET", H.urlencode_path(key))
  if not r then return nil, "GET " .. key .. ": " .. tostring(err) end
  if r.status == 404 then return ABSENT end
  if r.status ~= 302 then return nil, "GET " .. key .. " answered " .. r.status end
  local loc = r.headers.location or ""
  if self.fallback and loc:sub(1, #self.fallback + 8) == "http://" .. self.fallback .. "/" then
    return ABSENT -- not here: sent on to the fallback
  end
  local port, path = loc:match("^http://127%.0%.0%.1:(%d+)(/.*)$")
  if not port then return nil, "GET " .. key .. ": odd Location " .. loc end
  local v = self:request(tonumber(port), "GET", path)
  if not v then return nil, "GET " .. loc .. " failed" end
  if v.status ~= 200 then return nil, "GET " .. loc .. " (for " .. key .. ") answered " .. v.status end
  return H.md5_hex(v.body)
end

function Reader:close()
  for _, c in pairs(self.conns) do c:close() end
  self.conns = {}
end

-- ---- the workload -------------------------------------------------------------------------

-- Drives rounds of concurrent ops: in each round every connection sends one op on one of
-- its own keys (a key belongs to one connection, so each key's history is sequential),
-- then all answers are read. opts: conns (6), keys_per_conn (6), rounds (20), prefix
-- ("/f"), min_size/max_size (1 KB .. 64 KB), kill_round (the round during which mkv is
-- killed with SIGKILL: kill_delay seconds after the kill_after-th request of the round
-- went out; the requests after it find no server), stop_on_5xx (stop after the first
-- round with a 5xx answer), no_unlink (PUT and DELETE only: a rebuild from the volumes
-- cannot know which keys were unlinked). Returns { rounds, killed, failed_round }.
function F.workload(c, ledger, rng, opts)
  opts = opts or {}
  local nconn = opts.conns or 6
  local kpc = opts.keys_per_conn or 6
  local conns = {}
  local stalled = {}
  local killed = false
  local rounds = 0
  local failed_round
  local function conn(i)
    if not conns[i] or conns[i].eof then
      if conns[i] then conns[i]:close() end
      local ok, cc = pcall(A.connect, c.port)
      conns[i] = ok and cc or nil
    end
    return conns[i]
  end
  for round = 1, opts.rounds or 20 do
    if killed or (opts.stop_on_5xx and failed_round) then break end
    rounds = round
    local sent = {}
    for i = 1, nconn do
      if not stalled[i] then
        local key = string.format("%s/c%d/k%d", opts.prefix or "/f", i, rng.int(1, kpc))
        local x = rng.int(1, 100)
        local method = x <= 50 and "PUT" or (x <= 75 and "DELETE" or "UNLINK")
        if opts.no_unlink and method == "UNLINK" then method = "PUT" end
        local body, md5
        if method == "PUT" then
          body = A.bytes(rng.int(opts.min_size or 1024, opts.max_size or 65536), rng.next())
          md5 = H.md5_hex(body)
        end
        if not killed then -- after the kill, nothing more is sent (nor recorded)
          local cc = conn(i)
          local ok = false
          if cc then ok = cc:send(A.request(method, H.urlencode_path(key), nil, body)) end
          sent[i] = { method = method, key = key, md5 = md5, conn = cc, sent_ok = ok }
        end
        -- the kill lands right after this request went out: it is in flight
        if opts.kill_round == round and (opts.kill_after or nconn) == i then
          H.sleep(opts.kill_delay or 0)
          c:kill9()
          killed = true
        end
      end
    end
    for i = 1, nconn do
      local s = sent[i]
      if s then
        local r, err
        if s.conn then r, err = s.conn:response(killed and 2 or 20) end
        if r and (r.headers.connection or ""):lower() == "close" then
          s.conn:close()
          s.conn.eof = true
        end
        ledger:record(s.method, s.key, s.md5, r and r.status, r and nil or tostring(err))
        if r and r.status >= 500 and not failed_round then failed_round = round end
        if not r then
          if s.conn then s.conn:close() s.conn.eof = true end
          -- timed out with the server alive: the op may still be running; this
          -- connection's keys get no more ops in this run
          if not killed and err == "timeout" then stalled[i] = true end
        end
      end
    end
  end
  for _, cc in pairs(conns) do cc:close() end
  return { rounds = rounds, killed = killed, failed_round = failed_round }
end

-- ---- the verifier ------------------------------------------------------------------------

-- Lines of `mkv verify --deep` that mean a live record lacks a good copy somewhere.
local BAD = { "^missing ", "^corrupt ", "^unreachable ", "^conflicting ", "^no good copy",
              "^corrupt record" }

-- V2 (and V3's "live with all its copies"): every live record's replicas exist and match
-- its md5. Orphan files (failed or interrupted writes) are allowed.
function F.verify_replicas(c)
  local code, out = c:run({ "verify", "--deep" }, 120)
  local problems = {}
  for line in out:gmatch("[^\n]+") do
    for _, pat in ipairs(BAD) do
      if line:find(pat) then problems[#problems + 1] = "V2 " .. line break end
    end
  end
  if code ~= 0 and #problems == 0 then
    problems[#problems + 1] = "V2 mkv verify --deep exited " .. tostring(code) .. ":\n" .. out
  end
  if not out:find("verify: examined", 1, true) and #problems == 0 then
    problems[#problems + 1] = "V2 mkv verify --deep printed no summary:\n" .. out
  end
  return problems
end

local function proc_rss_kb(pid) return H.proc_status(pid, "VmRSS") end

-- V1 and V3: every key of the ledger read back through mkv and a volume.
local function check_reads(c, ledger, problems)
  local rd = F.reader(c.port, c.opts.fallback)
  local unknown_keys = {}
  for _, op in ipairs(ledger.ops) do
    if op.outcome == "unknown" then unknown_keys[op.key] = true end
  end
  for _, key in ipairs(ledger.keys) do
    local S = ledger.states[key]
    local got, err = rd:read(key)
    if not got then
      problems[#problems + 1] = "V1 " .. err
    elseif not S[got] then
      local only_absent = S[ABSENT] and next(S, next(S)) == nil
      local what = got == ABSENT and " (an acknowledged PUT is lost)"
        or (only_absent and " (a deleted key is live again)" or " (wrong bytes)")
      problems[#problems + 1] = string.format("V%s %s reads as %s, the ledger allows %s%s",
        unknown_keys[key] and "3" or "1", key, got, show_set(S), what)
    else
      ledger:observe(key, got)
    end
  end
  rd:close()
end

-- The whole check after a restart. Returns problems (a list of strings); the ledger's
-- states are narrowed to what was observed. V4: after the verification traffic (its
-- connections closed), the server holds no more fds than before it (keep-alive
-- connections to the volumes aside) and its RSS has not grown by more than a slack.
-- opts.skip_v2, opts.skip_v4: for loops that run V2 once at their end (a live record
-- without its copies stays so until then: nothing repairs it behind the verifier).
function F.verify(c, ledger, opts)
  opts = opts or {}
  local problems = {}
  for _, a in ipairs(ledger.anomalies) do problems[#problems + 1] = "history " .. a end
  local pid = c.pid or c.mkv.pid
  local fd0, rss0 = H.fd_census(pid, c.volumes, c.db), proc_rss_kb(pid)
  check_reads(c, ledger, problems)
  if not opts.skip_v2 then
    for _, p in ipairs(F.verify_replicas(c)) do problems[#problems + 1] = p end
  end
  if opts.skip_v4 then return problems end
  local ok = pcall(H.eventually, function()
    return H.fd_census(pid, c.volumes, c.db) <= fd0
  end, 3, "fds back")
  if not ok then
    local others, pooled = H.fd_census(pid, c.volumes, c.db)
    problems[#problems + 1] = string.format(
      "V4 open fds of mkv (volume connections aside): %d before the verification, %d after (and %d to volumes)",
      fd0, others, pooled)
  end
  local rss1 = proc_rss_kb(pid)
  local slack = 32 * 1024 * H.slow
  if rss0 and rss1 and rss1 > rss0 + slack then
    problems[#problems + 1] = string.format("V4 RSS of mkv grew from %d kB to %d kB", rss0, rss1)
  end
  return problems
end

-- Sends one write (or any op) and records it in the ledger. -> status, response
function Ledger:send(c, method, key, body, headers, timeout)
  local st, r = F.send(c.port, method, key, body, headers, timeout)
  if method == "PUT" or method == "REPLACE" or method == "DELETE" or method == "UNLINK" then
    self:record(method, key, (method == "PUT" or method == "REPLACE") and H.md5_hex(body or "") or nil, st)
  end
  return st, r
end

-- How every fault test ends: mkv restarted on the same directories, then the verifier.
function F.restart_and_verify(c, ledger, seed, opts)
  c:restart()
  F.assert_verified(c, ledger, seed, opts)
end

function F.assert_verified(c, ledger, seed, opts)
  F.assert_none(F.verify(c, ledger, opts), ledger, seed, 3)
end

-- Fails the test with every problem, the seed to replay and the ledger's path.
function F.assert_none(problems, ledger, seed, level)
  if #problems > 0 then
    error(string.format("%d problem(s) (seed %s, replay: MKV_FAULT_SEED=%s; ledger %s):\n%s",
      #problems, tostring(seed), tostring(seed), tostring(ledger.path),
      table.concat(problems, "\n")), level or 2)
  end
end

return F
