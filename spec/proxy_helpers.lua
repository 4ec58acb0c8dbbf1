-- spec/proxy_helpers.lua: tools for spec/integration/proxy_spec.lua -- a self-signed
-- certificate made at test time, deploy/proxy started on free loopback ports, HTTPS
-- requests with curl --cacert, the proxy's access log, its worker processes, and a
-- "flaky" volume: nginx serving a volume's files to HEAD but dropping every GET.
local H = require "helpers"
local T = H.T

local P = {}
local shq = H.shq

-- A key and a self-signed certificate for 127.0.0.1 (valid one day) in a temp dir.
function P.make_cert()
  local dir = H.tmpdir("tls")
  local cert, key = dir .. "/proxy.crt", dir .. "/proxy.key"
  local out, code = H.sh("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout " .. shq(key) .. " -out " .. shq(cert))
  assert(code == 0, "openssl failed: " .. out)
  return { dir = dir, cert = cert, key = key }
end

-- deploy/proxy in the foreground on free ports. opts: tls (from make_cert), mkv (an
-- H.start_mkv proc), volumes (list of "host:port"), volume_listen (true: a free port),
-- workers, args (extra words).
function P.start_proxy(opts)
  local port = opts.port or H.free_port()
  local state = H.tmpdir("proxy") .. "/state"
  local argv = { H.root .. "/deploy/proxy", "--listen", tostring(port),
                 "--mkv", "127.0.0.1:" .. opts.mkv.port, "--cert", opts.tls.cert,
                 "--key", opts.tls.key, "--bind", "127.0.0.1", "--state", state,
                 "--workers", tostring(opts.workers or 2) }
  if opts.volumes then
    argv[#argv + 1] = "--volumes"
    argv[#argv + 1] = table.concat(opts.volumes, ",")
  end
  local vport
  if opts.volume_listen then
    vport = type(opts.volume_listen) == "number" and opts.volume_listen or H.free_port()
    argv[#argv + 1] = "--volume-listen"
    argv[#argv + 1] = tostring(vport)
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local p = H.spawn("proxy-" .. port, argv)
  p.port, p.state, p.vport = port, state, vport
  p.url = "https://127.0.0.1:" .. port
  p.vurl = vport and ("https://127.0.0.1:" .. vport)
  p.tls = opts.tls
  H.eventually(function()
    if not p:alive() then error("deploy/proxy exited: " .. p:log()) end
    return H.port_open(port) and (not vport or H.port_open(vport))
  end, 10, "proxy on port " .. port)
  return p
end

-- The proxy's nginx worker processes (children of the master, which is p.pid: the
-- script execs nginx).
function P.workers(p)
  local out = H.sh("pgrep -P " .. p.pid)
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

-- Like H.http, over HTTPS with the test CA. opts as H.http, plus: cacert (default the
-- proxy's), follow, headers (a list of "Name: value" strings or a map), out (a file to
-- write the body to instead of returning it), extra (more curl words, a string).
function P.http(method, url, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  -- a Range header as given ("bytes=-5"), not curl's -r; HTTP/1.1 as the proxy speaks
  o.range = nil
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[#headers + 1] = type(k) == "number" and v or (k .. ": " .. v) end
  if opts.range then headers[#headers + 1] = "Range: " .. opts.range end
  o.headers = headers
  o.extra = "--http1.1" .. (opts.extra and (" " .. opts.extra) or "")
  return H.http(method, url, o)
end

-- A client of the proxy: c:get(key) etc., keys percent-encoded with H.urlencode_path
-- unless raw = true.
function P.client(proxy)
  local c = { proxy = proxy }
  function c.url(key, raw) return proxy.url .. (raw and key or H.urlencode_path(key)) end
  function c.req(method, key, opts)
    opts = opts or {}
    opts.cacert = opts.cacert or proxy.tls.cert
    return P.http(method, c.url(key, opts.raw), opts)
  end
  return c
end

-- The access log's lines (deploy/proxy writes <state>/access.log). n: only the last n.
function P.access_lines(p)
  local lines = {}
  for line in (H.read_file(p.state .. "/access.log") or ""):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

-- Parses one access log line: request, status, upstream addresses and statuses.
function P.parse_access(line)
  local req, status = line:match('"([^"]*)" (%d+)')
  local up = line:match('up="([^"]*)"') or ""
  local us = line:match('us="([^"]*)"') or ""
  local ups, uss = {}, {}
  for a in up:gmatch("[^%s:,]+:%d+") do ups[#ups + 1] = a end
  for s in us:gmatch("%d+") do uss[#uss + 1] = tonumber(s) end
  return { request = req, status = tonumber(status), upstreams = ups, ustatus = uss }
end

-- Waits until the access log holds at least n lines (nginx writes it after the answer).
function P.wait_access(p, n)
  return H.eventually(function() return #P.access_lines(p) >= n end, 5, "access log lines")
end

-- A volume that answers HEAD from root's files but closes the connection on every GET
-- without a word (nginx's 444): to mkv's probe it is healthy, to a reader it is broken.
function P.start_flaky_volume(port, root)
  local p = H.start_nginx("flaky-" .. port, { port = port, server = {
    "location / {",
    "  root " .. root .. ";",
    "  if ($request_method = GET) { return 444; }",
    "}",
  } })
  p.root = root
  return p
end

-- Kills a whole process group at once (an nginx master and its workers), as a crash or
-- a power cut would, and reaps the leader.
function P.kill_group(p)
  T.kill(-p.pid, 9)
  p.status = T.wait(p.pid, 5)
  return p.status
end

-- Wall-clock seconds (the same clock as `date +%s.%N` in shell loops).
function P.wall()
  return tonumber((H.sh("date +%s.%N"):gsub("%s+", "")))
end

return P
