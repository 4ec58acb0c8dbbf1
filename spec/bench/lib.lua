-- spec/bench/lib.lua: the machinery of the benchmark suite that needs no cluster: the
-- suite's command line, the load generators (wrk and build/ratebench), CPU time from /proc
-- and from the shell's `times`, the order in which a figure's sides take turns, medians,
-- and the run itself -- a row per figure, the JSON of the results, the --compare table.
-- spec/bench/cluster.lua is the cluster the figures measure, spec/bench/run.lua the list
-- of figures; the other benches take from here what they share with it.
local H = require "helpers"
local json = require "json"

local B = {}

-- A JSON writer for the results (strings, numbers, lists, nested tables with string keys).
function B.encode(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end -- no JSON for them
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      if c == '"' or c == "\\" then return "\\" .. c end
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return "null" end
  local parts = {}
  if #v > 0 then -- a list (the per-run detail lines): a JSON array
    for i = 1, #v do parts[i] = B.encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do parts[#parts + 1] = B.encode(tostring(k)) .. ":" .. B.encode(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- The suite's command line (run.lua's header) -> opts; anything else prints the usage and
-- exits 2.
function B.options(arg)
  local opts = { runs = 3, seconds = 5, big_index = 10000000, json = "build/bench-results.json", fs = "private" }
  local i = 1
  while i <= #arg do
    local a = arg[i]
    local v = arg[i + 1]
    if a == "--runs" then opts.runs = tonumber(v); i = i + 1
    elseif a == "--seconds" then opts.seconds = tonumber(v); i = i + 1
    elseif a == "--only" then opts.only = {}; for x in v:gmatch("[^,]+") do opts.only[x] = true end; i = i + 1
    elseif a == "--json" then opts.json = v; i = i + 1
    elseif a == "--compare" then opts.compare = v; i = i + 1
    elseif a == "--big-index" then opts.big_index = tonumber(v); i = i + 1
    elseif a == "--fs" and (v == "private" or v == "shared") then opts.fs = v; i = i + 1
    else
      io.stderr:write("usage: luajit spec/bench/run.lua [--runs N] [--seconds S] [--only id,...] " ..
        "[--json FILE] [--compare OLD.json] [--big-index N] [--fs private|shared]\n")
      os.exit(2)
    end
    i = i + 1
  end
  return opts
end

function B.sh_ok(cmd)
  local out, code = H.sh(cmd)
  if code ~= 0 then error("failed (" .. tostring(code) .. "): " .. cmd .. "\n" .. out, 0) end
  return out
end

function B.median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 end
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

-- ---- load generators ----

-- Writes the wrk scripts into a directory of their own -> its path.
function B.wrk_scripts()
  local scripts = H.tmpdir("bench-scripts")
  -- wrk scripts: PUT of unique keys, DELETE of numbered keys, HEAD
  H.write_file(scripts .. "/put.lua", [[
local counter = 0
local body = string.rep("x", 1024)
local threads = {}
function setup(thread) thread:set("tid", #threads + 1); threads[#threads + 1] = thread end
function init(args) prefix = args[1] end
function request()
  counter = counter + 1
  return wrk.format("PUT", prefix .. tid .. "-" .. counter, nil, body)
end
]])
  -- The same, spread over two levels of hex directories the way mkv lays keys out on a
  -- volume (md5-like: nearly every new key lands in a directory nginx must create first).
  H.write_file(scripts .. "/put_shaped.lua", [[
local counter = 0
local body = string.rep("x", 1024)
local threads = {}
local state
function setup(thread) thread:set("tid", #threads + 1); threads[#threads + 1] = thread end
function init(args) prefix = args[1]; state = tid * 7919 end
function request()
  counter = counter + 1
  state = (state * 1103515245 + 12345) % 2147483648
  local h = math.floor(state / 32768) % 65536
  return wrk.format("PUT", string.format("%s%02x/%02x/%d-%d", prefix, math.floor(h / 256), h % 256,
    tid, counter), nil, body)
end
]])
  H.write_file(scripts .. "/delete.lua", [[
local counter = 0
local threads = {}
function setup(thread) thread:set("tid", #threads); threads[#threads + 1] = thread end
function init(args) prefix = args[1]; per = tonumber(args[2]) end
function request()
  local i = tid * per + counter % per
  counter = counter + 1
  return wrk.format("DELETE", string.format("%s%09d", prefix, i))
end
-- Each thread has `per` keys: it stops when it has sent them all (wrk's rate is over the
-- time until the last thread stopped), so neither side is timed deleting missing keys.
function response()
  if counter >= per then wrk.thread:stop() end
end
]])
  H.write_file(scripts .. "/head.lua", 'wrk.method = "HEAD"\n')
  return scripts
end

-- Runs wrk for secs seconds; returns requests/s of the answers that had the expected
-- status class (want "2xx3xx": wrk's own count; want "any": all), the raw output, and
-- the two numbers of that rate: those answers, and wrk's seconds.
function B.wrk(url, script, args, want, secs)
  local cmd = string.format("wrk -t2 -c32 -d%ds --timeout 10s %s %s %s", secs,
    script and ("-s " .. H.shq(script)) or "", H.shq(url),
    args and ("-- " .. table.concat(args, " ")) or "")
  local out = B.sh_ok(cmd)
  local total = tonumber(out:match("(%d+) requests in"))
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local non = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  local sockerr = out:match("Socket errors:[^\n]*")
  if sockerr then error("wrk: " .. sockerr .. " on " .. url .. "\n" .. out, 0) end
  if not total or not rps or rps == 0 then error("wrk printed no rate:\n" .. out, 0) end
  local t = total / rps -- wrk's own seconds, to more digits than its "requests in 1.00s"
  if want ~= "any" then
    if non > total * 0.01 then error(string.format("wrk: %d of %d answers were not 2xx/3xx on %s", non, total, url), 0) end
    total = total - non
  end
  return total / t, out, total, t
end

-- build/ratebench: `rate` requests/s for secs seconds -> its numbers (p99, n, ...)
function B.ratebench(rate, secs, method, want, urls)
  local out = B.sh_ok(string.format("%s/ratebench -r %d -d %d -c 32 -m %s -s %d %s", H.build, rate, secs,
    method, want, table.concat(urls, " ")))
  local r = {}
  for k, v in out:gmatch("(%w+)=([%d%.]+)") do r[k] = tonumber(v) end
  if (r.errors or 1) > 0 or (r.unanswered or 0) > r.n * 0.01 then error("ratebench: " .. out, 0) end
  return r
end

-- ---- CPU time ----
-- From /proc (utime + stime, clock ticks) and from the shell's `times` (seconds).
B.TICK_US = 1e6 / tonumber((H.sh("getconf CLK_TCK"):match("%d+")) or 100)

-- A field of /proc/PID/status in kB (VmHWM, VmRSS).
function B.status_kb(pid, field)
  local v = H.proc_status(pid, field)
  return tonumber(tostring(v):match("(%d+)"))
end

-- A process's or a thread's stat file (/proc/PID/stat, /proc/PID/task/TID/stat):
-- -> utime + stime, utime
function B.stat_ticks(path)
  -- fields after the command (which may hold spaces) in parentheses
  local rest = (H.read_file(path) or ""):match("%) (.*)$") or ""
  local f = {}
  for x in rest:gmatch("%S+") do f[#f + 1] = x end
  local ut = tonumber(f[12]) or 0 -- utime, stime: fields 14, 15
  return ut + (tonumber(f[13]) or 0), ut
end

-- -> utime + stime, utime (clock ticks) summed over pids
function B.ticks(pids)
  local t, u = 0, 0
  for _, pid in ipairs(pids) do
    local a, b = B.stat_ticks("/proc/" .. pid .. "/stat")
    t, u = t + a, u + b
  end
  return t, u
end

-- The whole machine's CPU from /proc/stat: -> busy ticks, idle ticks (idle + iowait)
function B.machine_ticks()
  local l = (H.read_file("/proc/stat") or ""):match("^cpu%s+([^\n]*)") or ""
  local f = {}
  for x in l:gmatch("%d+") do f[#f + 1] = tonumber(x) end
  local idle = (f[4] or 0) + (f[5] or 0)
  local all = 0
  for i = 1, math.min(#f, 8) do all = all + f[i] end -- user..steal; guest time is in user
  return all - idle, idle
end

local function seconds_of(t)
  local mnt, sec = t:match("(%d+)m([%d%.]+)s")
  return (tonumber(mnt) or 0) * 60 + (tonumber(sec) or 0)
end

-- The CPU seconds of the shell's children (wrk, curl), from `times` at the end of out.
function B.children_seconds(out)
  -- `times` prints the shell's user and system time, then its children's
  local u, s = out:match("[%dms%.]+ [%dms%.]+\n([%dms%.]+) ([%dms%.]+)%s*$")
  if not u then error("no `times` output:\n" .. out, 0) end
  return seconds_of(u) + seconds_of(s)
end

-- ---- taking turns ----

-- The order of the sides in turn t (1-based) of n sides: forwards in odd turns and
-- backwards in even ones, the start moving on every two turns, so that each side starts
-- as often as the others and follows each of them (a plain rotation keeps the same
-- predecessor: with four sides, mkv always ran right after the direct PUTs).
function B.turn_order(t, n)
  local order, start = {}, math.floor((t - 1) / 2) % n
  for j = 0, n - 1 do order[#order + 1] = (start + j) % n + 1 end
  if t % 2 == 0 then
    for j = 1, math.floor(n / 2) do order[j], order[n + 1 - j] = order[n + 1 - j], order[j] end
  end
  return order
end

-- The rates of several sides measured in turns: `turns` turns (run.lua: --seconds) of
-- one second per side, in turn_order. Back to back, --seconds each, two sides met
-- different machines: the cost of the volumes' file creation drifts over minutes and
-- jumps for seconds (free memory handed back to the host, writeback), and one figure's
-- per-run ratio spread from 0.5 to 1.6 within a run; nginx against itself, back to
-- back, 0.97..1.52, and in turns 0.97..1.04. A side: { url, script, args = function(turn) -> list, want, pid
-- (its CPU is then accounted), before/after (run around each of its turns, untimed) }.
-- -> a list of req/s, a list of CPU us per request
function B.in_turns(sides, turns)
  local n, t, cpu = {}, {}, {}
  for i = 1, #sides do n[i], t[i], cpu[i] = 0, 0, 0 end
  for turn = 1, turns do
    for _, i in ipairs(B.turn_order(turn, #sides)) do
      local sd = sides[i]
      if sd.before then sd.before() end
      local t0 = sd.pid and B.ticks({ sd.pid })
      local ok, err, _, good, secs = pcall(B.wrk, sd.url, sd.script, sd.args and sd.args(turn), sd.want, 1)
      if sd.pid then cpu[i] = cpu[i] + (B.ticks({ sd.pid }) - t0) * B.TICK_US end
      if sd.after then sd.after() end
      if not ok then error(err, 0) end
      n[i], t[i] = n[i] + good, t[i] + secs
    end
  end
  local rates, per = {}, {}
  for i = 1, #sides do rates[i], per[i] = n[i] / t[i], cpu[i] / math.max(1, n[i]) end
  return rates, per
end

-- Runs the functions in fns one after another, each round starting one further down the
-- list: no side should always get the fresher machine (for the transfers that are too
-- long to take in turns of a second).
function B.in_rotation(round, fns)
  for i = 0, #fns - 1 do fns[(round - 1 + i) % #fns + 1]() end
end

-- ---- references ----

-- An nginx of our own (worker_processes auto, as the volumes and mkv's workers), with
-- `http_lines` in its http block and `lines` in its one server. -> base URL, process
function B.start_nginx(name, http_lines, lines)
  local http = { "proxy_http_version 1.1;", 'proxy_set_header Connection "";' }
  for _, l in ipairs(http_lines) do http[#http + 1] = l end
  local server = { "client_max_body_size 0;" }
  for _, l in ipairs(lines) do server[#server + 1] = l end
  local p = H.start_nginx(name, { workers = "auto", http = http, server = server })
  return p.url, p
end

-- ---- the run ----

-- Runs the figures that opts selects (--only), each opts.runs times (an absolute figure
-- once), and prints a row per figure, the details of its runs after it; writes the
-- results to opts.json and, with --compare, the change of each ratio. C: the cluster
-- (its filesystem and index directory are in the header).
function B.run(figures, opts, C)
  local results = {}
  print(string.format("# mkv benchmark suite: %d runs per figure, wrk -t2 -c32 -d%ds; medians; ratio = mkv / reference",
    opts.runs, opts.seconds))
  print("# volumes: " .. (C.data_dir and ("on a fresh ext4 of their own (" .. C.data_dir .. ")") or
    ("under /tmp, on the root filesystem: " .. C.fs_note)) .. "; the index under /tmp (" .. C.index_dir .. ")")
  print(string.format("%-52s %12s %12s %8s %15s  %s", "figure", "mkv", "reference", "ratio", "ratio spread", "target"))
  for _, f in ipairs(figures) do
    if not opts.only or opts.only[f.id] then
      local mv, rv, ratios, details = {}, {}, {}, {}
      local ok, err = pcall(function()
        for r = 1, (f.absolute and 1 or opts.runs) do
          local a, b, detail = f.run(r)
          if detail then details[#details + 1] = detail end
          mv[#mv + 1] = a
          if b then
            rv[#rv + 1] = b
            ratios[#ratios + 1] = a / b
          end
        end
      end)
      if not ok then
        print(string.format("%-52s  FAILED: %s", f.id, tostring(err):gsub("\n", " "):sub(1, 200)))
        results[f.id] = { what = f.what, error = tostring(err) }
      else
        local lo, hi = math.huge, -math.huge
        for _, x in ipairs(ratios) do lo = math.min(lo, x); hi = math.max(hi, x) end
        local res = { what = f.what, unit = f.unit, mkv = B.median(mv), reference = #rv > 0 and B.median(rv) or nil,
                      ratio = #ratios > 0 and B.median(ratios) or nil, ratio_min = #ratios > 0 and lo or nil,
                      ratio_max = #ratios > 0 and hi or nil, target = f.target, runs = #mv, ref = f.ref }
        results[f.id] = res
        print(string.format("%-52s %12.1f %12s %8s %15s  %s", f.what, res.mkv,
          res.reference and string.format("%.1f", res.reference) or "-",
          res.ratio and string.format("%.2fx", res.ratio) or "-",
          res.ratio and string.format("%.2f..%.2f", lo, hi) or "-", f.target))
        -- With few noisy runs the median of the per-run ratios and the ratio of the two
        -- medians can disagree (the p99 figures): then both are shown.
        if res.ratio and res.reference and res.reference ~= 0 then
          res.ratio_of_medians = res.mkv / res.reference
          if math.abs(res.ratio_of_medians / res.ratio - 1) > 0.1 then
            print(string.format("#   ratio of the medians: %.2fx (the median of the per-run ratios: %.2fx)",
              res.ratio_of_medians, res.ratio))
          end
        end
        for i, d in ipairs(details) do print(string.format("#   run %d: %s", i, d)) end
        if #details > 0 then res.details = details end
      end
    end
  end

  results._fs = C.data_dir and "private" or "shared"
  -- How the figures were taken, for --compare: 1 (or absent) = each side for --seconds,
  -- back to back, volumes under /tmp; 2 = rates in turns (in_turns), large transfers
  -- after a warm-up and in alternating order.
  results._method = 2

  local fh = io.open(opts.json, "w")
  if fh then
    fh:write(B.encode(results))
    fh:close()
    print("# written to " .. opts.json)
  end

  if opts.compare then
    local old = json.decode(H.read_file(opts.compare) or "{}")
    print(string.format("\n# against %s (ratios; the machine's noise cancels in each ratio)", opts.compare))
    if (old._method or 1) ~= results._method or (old._fs or "shared") ~= results._fs then
      print(string.format("# NOTE: %s was measured another way (method %s, volumes %s; now %d, %s): a change " ..
        "may be the method's", opts.compare, tostring(old._method or 1), tostring(old._fs or "shared"),
        results._method, results._fs))
    end
    print(string.format("%-52s %10s %10s %8s", "figure", "old", "new", "change"))
    for _, f in ipairs(figures) do
      local o, n = old[f.id], results[f.id]
      if o and n and o.ratio and n.ratio then
        print(string.format("%-52s %9.2fx %9.2fx %+7.0f%%%s", f.what, o.ratio, n.ratio, (n.ratio / o.ratio - 1) * 100,
          o.ref ~= n.ref and "  (another reference)" or ""))
      elseif o and n and o.mkv and n.mkv and f.absolute then
        print(string.format("%-52s %10.1f %10.1f %+7.0f%%", f.what, o.mkv, n.mkv, (n.mkv / o.mkv - 1) * 100))
      end
    end
  end
end

return B
