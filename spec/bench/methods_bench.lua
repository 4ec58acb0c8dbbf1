-- spec/bench/methods_bench.lua: what this round's request paths cost, as ratios against
-- references measured in the same run, rates taken in turns (B.in_turns):
--   - a chunked 1 KB PUT (mkv's own chunked decoder, core/chunked.c) against the same
--     PUT with Content-Length;
--   - `?writing` (the records of writes in flight or interrupted, issue 23) against
--     `?list` over the same index of live keys: the cost of telling the states apart
--     while walking (REPLACE, RELINK and the REBALANCE method cannot be timed with wrk:
--     its request check refuses a method its parser does not know);
--   - the status page (GET / on status_listen) against /metrics on the same listener;
--   - the 302 rate while a scraper reads the status page 20 times a second against the
--     302 rate with nobody reading it.
--
--   luajit spec/bench/methods_bench.lua [TURNS] [LIVE_KEYS]
--
--   (default 5 turns, 6000 live keys)
-- From the repository root after deploy/setup (build/mkv). Prints one line per figure:
-- each side's rate and their ratio.
package.path = "spec/?.lua;lua/?.lua;" .. package.path
local H = require "helpers"
local B = require "bench.lib"

local turns = tonumber(arg[1]) or 5
local nlive = tonumber(arg[2]) or 6000

local base = H.tmpdir("methodsbench")
local vols, addrs = {}, {}
for i = 1, 3 do
  vols[i] = H.start_volume({ root = base .. "/v" .. i, workers = 2 })
  addrs[i] = vols[i].addr
end
local sport = H.free_port()
local m = H.start_mkv({ flags = { "-volumes", table.concat(addrs, ","), "-db", base .. "/index",
                                  "-replicas", "3", "-subvolumes", "1", "-repair-interval", "0",
                                  "-status", tostring(sport) } })
local status = "http://127.0.0.1:" .. sport
local scripts = B.wrk_scripts()

H.write_file(scripts .. "/chunked.lua", [[
local counter = 0
local body = "400\r\n" .. string.rep("x", 1024) .. "\r\n0\r\n\r\n"
local threads = {}
function setup(thread) thread:set("tid", #threads + 1); threads[#threads + 1] = thread end
function init(args) prefix = args[1] end
function request()
  counter = counter + 1
  -- by hand: wrk.format would add a Content-Length beside the Transfer-Encoding
  return "PUT " .. prefix .. tid .. "-" .. counter .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    .. "Transfer-Encoding: chunked\r\n\r\n" .. body
end
]])
-- the live keys the listings walk (curl, 8 at a time: untimed)
H.write_file(base .. "/value", string.rep("x", 1024))
B.sh_ok(string.format("seq 0 %d | xargs -P 8 -I{} curl -sf -o /dev/null -X PUT --data-binary @%s %s/live/{}",
  nlive - 1, H.shq(base .. "/value"), m.url))
for _, k in ipairs({ 0, 1, nlive - 1 }) do
  assert(H.http("HEAD", m.url .. "/live/" .. k) == 302, "live key " .. k .. " missing")
end

local function line(what, a, an, b, bn)
  print(string.format("%-58s %9.0f/s  %-22s %9.0f/s  %5.2fx", what, a, an, b, b > 0 and a / b or 0))
end

-- 1: chunked PUT against a plain PUT
local rates = B.in_turns({
  { url = m.url, script = scripts .. "/put.lua", args = function(t) return { "/cl" .. t .. "-" } end },
  { url = m.url, script = scripts .. "/chunked.lua", args = function(t) return { "/ch" .. t .. "-" } end },
}, turns)
line("PUT 1 KB, chunked (mkv's decoder)", rates[2], "PUT with Content-Length", rates[1])

-- 2: ?writing against ?list, 1000 records a page, over the live keys
rates = B.in_turns({
  { url = m.url .. "/live/?list&limit=1000" },
  { url = m.url .. "/live/?writing&limit=1000" },
}, turns)
line("?writing, 1000 a page (finds none)", rates[2], "?list, 1000 a page", rates[1])

-- 3: the page against /metrics on the same listener
rates = B.in_turns({
  { url = status .. "/" },
  { url = status .. "/metrics" },
}, turns)
line("status page (GET / on status_listen)", rates[1], "/metrics, same listener", rates[2])

-- 4: 302s while the page is read 20 times a second
local scraper
rates = B.in_turns({
  { url = m.url .. "/live/1" },
  { url = m.url .. "/live/1",
    before = function()
      -- build/ratebench at a fixed 20 requests/s on one connection (a curl loop would
      -- measure process starts on a 2-core machine)
      scraper = H.spawn("scraper", { H.build .. "/ratebench", "-r", "20", "-d", "3600", "-c", "1",
        "-m", "GET", "-s", "200", status .. "/" })
    end,
    after = function() scraper:stop() end },
}, turns)
line("302 while the status page is read 20/s", rates[2], "302, nobody reading it", rates[1])

H.cleanup()
