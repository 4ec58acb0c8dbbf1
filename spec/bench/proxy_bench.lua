-- spec/bench/proxy_bench.lua: what the HTTPS proxy (deploy/proxy) costs a reader, as
-- ratios against a direct GET from the volume, measured in the same run.
--
--   luajit spec/bench/proxy_bench.lua [LARGE_MB] [SECONDS]     (default 512 MB, 5 s)
--
-- A 3-volume cluster (replicas 3) with mkv and deploy/proxy in front (TLS, a
-- certificate made here with openssl). Figures, medians of 3 runs each:
--   large GET  one value of LARGE_MB: curl's download speed through the proxy (TLS,
--              mkv's 302 followed inside nginx) vs plain HTTP straight from a volume, and
--              vs the same file through the proxy's TLS volume listener (TLS alone)
--   small GET  1 KB values, wrk with 8 connections for SECONDS: requests/s through the
--              proxy vs straight from a volume over plain HTTP (and over TLS, to show
--              what TLS alone costs: nginx serving the volume's file through the proxy's
--              volume listener with no mkv in the path)
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local B = require "bench.lib"

local large_mb = tonumber(arg[1]) or 512
local secs = tonumber(arg[2]) or 5
local RUNS = 3

local median, sh_ok = B.median, B.sh_ok

local function wrk(url, extra)
  local out = sh_ok(string.format("wrk -t2 -c8 -d%ds %s %s", secs, extra or "", H.shq(url)))
  local non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  local errors = out:match("Socket errors:[^\n]*")
  if non2xx > 0 or errors then error("wrk saw failures on " .. url .. ":\n" .. out) end
  return tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
end

local function main()
  local base = H.tmpdir("pbench")
  local c = H.cluster({ n = 3, replicas = 3 })
  -- TLS material
  sh_ok(string.format("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 " ..
    "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %s/key.pem -out %s/cert.pem 2>&1",
    base, base))
  local port, vport = H.free_port(), H.free_port()
  local proxy = H.spawn("proxy", { H.root .. "/deploy/proxy", "--listen", tostring(port),
    "--bind", "127.0.0.1", "--mkv", "127.0.0.1:" .. c.mkv.port, "--cert", base .. "/cert.pem",
    "--key", base .. "/key.pem", "--state", base .. "/proxy", "--workers", "1",
    "--volume-listen", tostring(vport), "--volumes", table.concat(c.addrs, ",") }, {})
  H.eventually(function()
    if not proxy:alive() then error("deploy/proxy exited: " .. proxy:log()) end
    return H.port_open(port)
  end, 10, "proxy")
  local purl = "https://127.0.0.1:" .. port
  local curl = "curl -sS --fail --cacert " .. H.shq(base .. "/cert.pem") .. " "

  -- the large value, written through mkv directly
  sh_ok(string.format("head -c %dM /dev/urandom > %s/large", large_mb, base))
  sh_ok(string.format("curl -sS --fail -o /dev/null -T %s/large %s/bench/large", base, c.url))
  local loc = sh_ok(string.format("curl -sS -o /dev/null -w '%%{redirect_url}' %s/bench/large", c.url))
  local want = H.sh("md5sum < " .. base .. "/large | cut -d' ' -f1")
  local got = sh_ok(curl .. purl .. "/bench/large | md5sum | cut -d' ' -f1")
  if got ~= want then error("the proxy returned other bytes") end

  local direct, via, tls = {}, {}, {}
  local lvaddr, lvpath = loc:match("^http://([^/]+)(/.*)$")
  for _ = 1, RUNS do
    direct[#direct + 1] = tonumber(sh_ok("curl -sS --fail -o /dev/null -w '%{speed_download}' " ..
      H.shq(loc)))
    via[#via + 1] = tonumber(sh_ok(curl .. "-o /dev/null -w '%{speed_download}' " .. purl ..
      "/bench/large"))
    tls[#tls + 1] = tonumber(sh_ok(curl .. "-o /dev/null -w '%{speed_download}' " ..
      "https://127.0.0.1:" .. vport .. "/" .. lvaddr .. lvpath))
  end
  local d, v, t = median(direct), median(via), median(tls)
  print(string.format("# %d MB value, replicas 3; small values 1 KB, wrk -t2 -c8 -d%ds; medians of %d",
    large_mb, secs, RUNS))
  print(string.format("%-44s %14s %14s %8s", "figure", "via proxy", "reference", "ratio"))
  print(string.format("%-44s %11.0f MB/s %11.0f MB/s %7.2fx", "large GET vs direct from the volume",
    v / 1048576, d / 1048576, v / d))
  print(string.format("%-44s %11.0f MB/s %11.0f MB/s %7.2fx", "large GET vs the volume through TLS",
    v / 1048576, t / 1048576, v / t))

  -- small values
  sh_ok(string.format("head -c 1024 /dev/urandom > %s/small", base))
  sh_ok(string.format("curl -sS --fail -o /dev/null -T %s/small %s/bench/small", base, c.url))
  local sloc = sh_ok(string.format("curl -sS -o /dev/null -w '%%{redirect_url}' %s/bench/small", c.url))
  local vpath = sloc:match("^http://[^/]+(/.*)$")
  local vaddr = sloc:match("^http://([^/]+)")
  local rd, rv, rt = {}, {}, {}
  for _ = 1, RUNS do
    rd[#rd + 1] = wrk(sloc)
    rv[#rv + 1] = wrk(purl .. "/bench/small")
    rt[#rt + 1] = wrk("https://127.0.0.1:" .. vport .. "/" .. vaddr .. vpath)
  end
  print(string.format("%-44s %10.0f r/s %10.0f r/s %7.2fx", "small GET vs direct from the volume (HTTP)",
    median(rv), median(rd), median(rv) / median(rd)))
  print(string.format("%-44s %10.0f r/s %10.0f r/s %7.2fx", "small GET vs the volume through TLS",
    median(rv), median(rt), median(rv) / median(rt)))
  proxy:stop()
  H.cleanup()
end

local ok, err = pcall(main)
if not ok then
  pcall(H.cleanup)
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
