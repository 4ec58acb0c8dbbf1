-- lua/mkv_admin.lua: what the admin scripts (rebuild, rebalance, verify, gc) share --
-- records in the Go original's format, volume URLs, option parsing, and the walk over
-- every file on every volume through nginx's autoindex JSON.
local mkv = require "mkv"

-- nginx's listings are read with Debian's lua-cjson (package lua-cjson, found on
-- LuaJIT's default package.cpath; policy states cannot load it). A leaf directory can
-- list hundreds of thousands of files. A private instance, so that no script's settings
-- reach it; strict about numbers (no NaN, Infinity or hex, which nginx never writes).
-- Sizes decode exactly up to 2^53 bytes.
local has_cjson, cjson = pcall(require, "cjson")
if not has_cjson then
  error("the admin scripts need lua-cjson (Debian: apt-get install lua-cjson): " ..
    tostring(cjson):match("^[^\n]*"), 0)
end
local json = cjson.new()
json.decode_invalid_numbers(false)

local M = {}

-- ---- records ----

-- The Go original's record, read and written by the server's own codec (core/record.c),
-- so a script re-encodes a record to exactly the bytes it read:
-- decode(value) -> { deleted = bool, hash = "32 hex as stored" | nil, volumes = {...} }
-- | nil, msg, code; encode(rec) -> value.
M.decode = mkv.record_decode
M.encode = mkv.record_encode

-- Whether two MD5s in hex are the same (a record's hash is kept as stored, and a Go
-- record could hold upper-case digits; mkv's own are lower-case).
function M.same_md5(a, b)
  return a ~= nil and b ~= nil and a:lower() == b:lower()
end

-- ---- volumes ----

-- A record volume is "host:port" or "host:port/svXX": its URL prefix. A record that
-- names an empty volume (a damaged one: "a,,b") fails its key's task here.
function M.url(vol, path)
  if vol == "" then error("the record names an empty volume", 0) end
  return "http://" .. vol .. path
end

-- Do two volume lists name the same places in the same order, either slot of an entry
-- being its place ("h:p/sv03" and "h:p/sv03/alt": REPLACE writes a live key's new copies
-- in the other slot, record.h)? What "where placement wants it" means; record.c's rule
-- (mkv.place_of), the one the API's Key-Balance uses.
local ALT = mkv.ALT_SLOT
local place_of = mkv.place_of
function M.same_places(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if place_of(a[i]) ~= place_of(b[i]) then return false end end
  return true
end

function M.same_set(a, b)
  if #a ~= #b then return false end
  local s = {}
  for _, v in ipairs(a) do s[v] = true end
  for _, v in ipairs(b) do if not s[v] then return false end end
  return true
end

-- Does the list hold x's place, in either slot?
function M.contains_place(list, x)
  local px = place_of(x)
  for _, v in ipairs(list) do if place_of(v) == px then return true end end
  return false
end

function M.contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- A key shown in a report: control bytes escaped, long keys cut.
function M.show(key)
  local s = key:gsub("[%c\127-\255]", function(c) return string.format("\\x%02x", c:byte()) end)
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return s
end

-- A failure: one report line, string.format(fmt, ...), counted as "failed". Returns
-- nothing, so that `return M.fail(...)` also ends the caller's work on that key.
function M.fail(fmt, ...)
  mkv.report(string.format(fmt, ...))
  mkv.count("failed")
end

-- ---- options ----

-- M.options({ md5 = "flag", ["dry-run"] = "flag", ["min-age"] = "string" }) parses
-- mkv.args; an unknown option raises with the list of known ones.
function M.options(spec)
  local out, args = {}, mkv.args
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, val = a:match("^%-%-?([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-?([%w%-]+)$")
    local kind = name and spec[name]
    if not kind then
      local known = {}
      for k in pairs(spec) do known[#known + 1] = "--" .. k end
      table.sort(known)
      error(string.format("usage: unknown option %s (this command takes %s, --concurrency N and --bandwidth RATE)",
        a, #known > 0 and table.concat(known, ", ") or "no other options"), 0)
    end
    if kind == "flag" then
      out[name] = val == nil or val == "true" or val == "1"
    else
      if val == nil then
        i = i + 1
        val = args[i]
        if val == nil then error("usage: option --" .. name .. " needs a value", 0) end
      end
      out[name] = val
    end
    i = i + 1
  end
  return out
end

-- ---- listings ----

-- The entries of a directory on a volume ({name, type, size, mtime}, nginx's autoindex
-- JSON), {} when it does not exist, or nil, err when the volume could not be read.
function M.list(vol, dir)
  local st, body, code = mkv.http("GET", M.url(vol, dir))
  if not st then return nil, string.format("%s: %s", M.url(vol, dir), body) end
  if st == 404 then return {} end
  if st ~= 200 then return nil, string.format("%s: volume answered %d", M.url(vol, dir), st) end
  local ok, t = pcall(json.decode, body)
  if not ok or type(t) ~= "table" then
    return nil, string.format("%s: not an autoindex JSON listing (autoindex_format json?)", M.url(vol, dir))
  end
  return t
end

local function is_hex2(name)
  return #name == 2 and name:match("^%x%x$") ~= nil
end

-- The data roots of a volume: its "svXX" subdirectories when it has any (as the Go
-- original decides, per volume, whatever -subvolumes says), else the volume itself.
-- nil, err when the volume cannot be read: a volume that is down is not an empty one.
function M.roots(vol)
  local entries, err = M.list(vol, "/")
  if not entries then return nil, err end
  local subs = {}
  for _, e in ipairs(entries) do
    if e.type == "directory" and #e.name == 4 and e.name:match("^sv%x%x$") then
      subs[#subs + 1] = vol .. "/" .. e.name
    end
  end
  table.sort(subs)
  if #subs == 0 then subs[1] = vol end
  -- each root's second slot, where a REPLACE writes a live key's new copies
  local out = {}
  for _, r in ipairs(subs) do
    out[#out + 1] = r
    local inner = r == vol and entries or (M.list(r, "/")) or {}
    for _, e in ipairs(inner) do
      if e.type == "directory" and e.name == ALT:sub(2) then out[#out + 1] = r .. ALT end
    end
  end
  return out
end

-- Every file below a leaf directory /ab/cd/ of one root, as base64 names relative to it:
-- a key whose base64 holds '/' sits in nested directories (the Go original's rebuild
-- lost those). Calls fn(b64, entry) per file. Returns true or nil, err.
local function walk_leaf(root, dir, prefix, fn, depth)
  if depth > 64 then return nil, "directories nested too deep below " .. M.url(root, dir) end
  local entries, err = M.list(root, dir .. prefix)
  if not entries then return nil, err end
  for _, e in ipairs(entries) do
    if e.type == "directory" then
      local ok, werr = walk_leaf(root, dir, prefix .. e.name .. "/", fn, depth + 1)
      if not ok then return nil, werr end
    elseif e.type == "file" then
      fn(prefix .. e.name, e)
    end
  end
  return true
end

-- Walks every key file on the given volumes, leaf directory by leaf directory, each
-- leaf in a task of its own: on_leaf(ab, cd, found) where found[b64] = { {root, entry},
-- ... } lists every copy of that name across all roots. Unreadable volumes and
-- directories are reported and counted as failures; the walk goes on with the others.
-- Returns the number of leaves walked.
function M.walk(volumes, on_leaf)
  local roots = {}
  for _, v in ipairs(volumes) do
    local r, err = M.roots(v)
    if not r then
      M.fail("cannot read volume %s: %s", v, err)
    else
      for _, x in ipairs(r) do roots[#roots + 1] = x end
    end
  end
  -- First level: which roots have which /ab/ (non-hex names are nginx's own or
  -- someone else's files: skipped, as the original's valid() does).
  local tops = {}
  for _, root in ipairs(roots) do
    local entries, err = M.list(root, "/")
    if not entries then
      M.fail("cannot list %s: %s", root, err)
    else
      for _, e in ipairs(entries) do
        if e.type == "directory" and is_hex2(e.name) then
          tops[e.name] = tops[e.name] or {}
          table.insert(tops[e.name], root)
        end
      end
    end
  end
  local names = {}
  for ab in pairs(tops) do names[#names + 1] = ab end
  table.sort(names)
  mkv.progress({ phase = "volumes", total = #names })
  local leaves = 0
  for _, ab in ipairs(names) do
    -- Second level, then each leaf /ab/cd/ with every root that has it, in a task.
    local cds = {}
    for _, root in ipairs(tops[ab]) do
      local entries, err = M.list(root, "/" .. ab .. "/")
      if not entries then
        M.fail("cannot list %s: %s", M.url(root, "/" .. ab .. "/"), err)
      else
        for _, e in ipairs(entries) do
          if e.type == "directory" and is_hex2(e.name) then
            cds[e.name] = cds[e.name] or {}
            table.insert(cds[e.name], root)
          end
        end
      end
    end
    for cd, croots in pairs(cds) do
      leaves = leaves + 1
      mkv.spawn(function()
        local dir = "/" .. ab .. "/" .. cd .. "/"
        local found = {}
        for _, root in ipairs(croots) do
          local ok, err = walk_leaf(root, dir, "", function(b64, e)
            found[b64] = found[b64] or {}
            table.insert(found[b64], { root = root, entry = e })
          end, 0)
          if not ok then M.fail("cannot list %s: %s", M.url(root, dir), err) end
        end
        on_leaf(ab, cd, found)
      end)
    end
    mkv.progress({ done = 1 })
  end
  mkv.join()
  return leaves
end

-- The key a file name stands for, if it is one: the strict base64 of the key, at the
-- key's own /ab/cd/ directory. Anything else (a temp file, a stray copy) is not a key.
function M.key_of(ab, cd, b64)
  local key = mkv.base64_decode(b64)
  if not key then return nil end
  if mkv.key_path(key) ~= "/" .. ab .. "/" .. cd .. "/" .. b64 then return nil end
  return key
end

-- Every record of the index, in pages, each handed to fn(key, value) in a task of its
-- own (at most --concurrency at once). progress: more of the phase's mkv.progress
-- fields ({ total_bytes = N }). Returns the number of records.
function M.each_record(fn, prefix, progress)
  local p = { phase = "records" }
  for k, v in pairs(progress or {}) do p[k] = v end
  mkv.progress(p)
  local start, n = prefix or "", 0
  while true do
    local page, err = mkv.index_scan(start, 1000, prefix)
    if not page then error("index read failed: " .. tostring(err), 0) end
    if #page == 0 then break end
    for _, kv in ipairs(page) do
      n = n + 1
      mkv.spawn(fn, kv[1], kv[2])
    end
    start = page[#page][1] .. "\0"
  end
  mkv.join()
  return n
end

-- ---- moving one key where placement wants it (rebalance, verify --repair, the repair) ----

-- The surplus copies waiting out their grace period (M.move's step 3): how many, and
-- when the last of them is due (mkv.now()'s clock).
local drops = { n = 0, due = 0 }

-- -> how many surplus copies wait for their grace period to end, and the seconds until
-- the last one is due (what a run that has done everything else still waits for).
function M.pending_drops()
  return drops.n, math.max(0, drops.due - mkv.now())
end

-- Says, once every record is done, that the run still waits out the surplus copies'
-- grace period (mkv.after), or a finished-looking run sits silent for it. `grace` is the
-- option as typed ("5s" when none was).
function M.say_pending_drops(grace)
  local n, left = M.pending_drops()
  if n > 0 then
    mkv.log(string.format("waiting %gs (--grace %s) before deleting %d old %s",
      math.ceil(left * 10) / 10, grace or "5s", n, n == 1 and "copy" or "copies"))
  end
end

-- Deletes a surplus copy, under the key's lock, unless the record names that volume
-- again by now (a PUT after a DELETE, another rebalance).
local function drop_copy(key, vol, path, tries)
  if not mkv.lock(key) then
    if tries < 60 then mkv.after(1, drop_copy, key, vol, path, tries + 1) return end
    drops.n = drops.n - 1
    mkv.report(string.format("%s: left the surplus copy on %s (the key stayed busy): mkv gc will find it",
      M.show(key), vol))
    return
  end
  drops.n = drops.n - 1
  local value = mkv.index_get(key)
  local rec = value and M.decode(value)
  if not (rec and M.contains(rec.volumes, vol)) then
    local st, derr = mkv.http("DELETE", M.url(vol, path))
    if st ~= 204 and st ~= 404 then
      mkv.report(string.format("%s: could not delete the surplus copy on %s (%s): mkv gc will find it",
        M.show(key), vol, tostring(st or derr)))
    end
  end
  mkv.unlock(key)
end

-- A failure to move this key: "<key>: <what>", counted; "failed".
local function move_failed(key, fmt, ...)
  M.fail("%s: " .. fmt, M.show(key), ...)
  return "failed"
end

-- Copies key's value from src to dst (streamed volume to volume) and checks the copy:
-- its size, and its MD5 when the record has one. nil, or why it failed (the bad copy
-- deleted).
local function copy_verified(rec, src, dst, path, size)
  local got, md5 = mkv.copy(M.url(src, path), M.url(dst, path))
  local bad
  if not got then
    bad = tostring(md5)
  elseif got ~= size then
    bad = string.format("copied %d %s of %d", got, got == 1 and "byte" or "bytes", size)
  elseif rec.hash and not M.same_md5(md5, rec.hash) then
    bad = string.format("MD5 %s, the record says %s", md5, rec.hash)
  end
  if bad and got then mkv.http("DELETE", M.url(dst, path)) end
  return bad
end

-- The record's volumes split in two, in its order: those that hold a good copy or did
-- not answer (kept: nothing is known to be wrong there), and those that answered 404.
local function split_answered(rec, have, unknown)
  local kept, missing = {}, {}
  for _, v in ipairs(rec.volumes) do
    local t = (M.contains(have, v) or M.contains(unknown, v)) and kept or missing
    t[#t + 1] = v
  end
  return kept, missing
end

-- A key with fewer copies than placement wants (its record names fewer, or a volume
-- answered 404) whose missing copies' volumes cannot take one now (down, full,
-- read-only, draining): the repair (opts.check) copies it to the next volumes that can,
-- in placement's order -- the handoff a PUT would have made -- so a volume that stays
-- down leaves no key short of copies. Only copies are added; the record names them and
-- keeps every volume it named that did not answer. The key stays in the repair's set
-- ("waiting"): once the volume is back, a later pass moves it where placement wants it.
local function handoff(key, rec, have, unknown, want, path, size, opts)
  local need = #want - #have - #unknown
  if not opts.check or need <= 0 then return "waiting" end
  local alt, perr = mkv.place_writable(key, #want)
  if not alt then return move_failed(key, "placement failed: %s", tostring(perr)) end
  local to = {}
  for _, v in ipairs(alt) do
    -- a volume that holds the key in either slot already is no new place
    if #to < need and not M.contains_place(have, v) and not M.contains_place(unknown, v) then
      to[#to + 1] = v
    end
  end
  if #to == 0 then return "waiting" end
  if opts.dry then
    mkv.report(string.format("would hand %s off to %s", M.show(key), table.concat(to, ",")))
    return "waiting"
  end
  for _, dst in ipairs(to) do
    local bad = copy_verified(rec, have[1], dst, path, size)
    if bad then return move_failed(key, "handing its copy off to %s failed: %s", dst, bad) end
  end
  local vols = split_answered(rec, have, unknown)
  for _, v in ipairs(to) do vols[#vols + 1] = v end
  rec.volumes = vols
  local ok, werr = mkv.index_put(key, M.encode(rec), true)
  if not ok then
    -- the new copies are orphans now: mkv gc finds them
    return move_failed(key, "cannot write its record: %s", tostring(werr))
  end
  mkv.report(string.format("handed %s off to %s (placement's volume cannot take it now)",
    M.show(key), table.concat(to, ",")))
  return "waiting"
end

-- A balanced record whose volumes do not all hold a copy (one lost behind mkv's back:
-- a GET bounced, a disk swapped): a good copy goes back to each that answered 404,
-- verified. Volumes that did not answer are left alone (not "missing").
local function restore_copies(key, rec, have, unknown, path, size, opts)
  local _, missing = split_answered(rec, have, unknown)
  for _, dst in ipairs(missing) do
    local state = mkv.volume_state(dst)
    if state ~= "up" then
      mkv.report(string.format("waiting %s: %s is %s", M.show(key), dst, state))
      return handoff(key, rec, have, unknown, rec.volumes, path, size, opts)
    end
  end
  if opts.dry then
    mkv.report(string.format("would restore %s on %s", M.show(key), table.concat(missing, ",")))
    return "moved"
  end
  for _, dst in ipairs(missing) do
    local bad = copy_verified(rec, have[1], dst, path, size)
    if bad then return move_failed(key, "restoring its copy on %s failed: %s", dst, bad) end
    mkv.report(string.format("restored %s on %s (copied from %s)", M.show(key), dst, have[1]))
  end
  return "moved"
end

-- Moves one key where placement wants it; the caller holds its lock. For a record not
-- where placement says: HEAD its volumes to see which hold a good copy (a volume that
-- does not answer is not "missing", and nothing is dropped from it), ask the rebalance
-- policy what to copy and drop, copy first (streamed volume to volume) and verify each
-- copy (size, and the MD5 when the record has one), rewrite the record -- keeping its
-- state and MD5 -- and only then, after opts.grace seconds (so a reader redirected to
-- the old copy a moment before still finds it), delete the surplus copies. Never the
-- last good one. opts.dry: only say what it would do. Returns "balanced" (nothing to
-- do), "ordered" (only the record's order changed), "moved", "waiting" (a volume it
-- would copy to cannot take a copy now: down, full, read-only or draining; nothing
-- done), "gone" or "failed" (reported and counted). Reports one line per change.
-- opts.check (what the repair does for the keys it is told of): also look at a record
-- that is where placement wants it, and put back a copy missing from one of its volumes;
-- and when a key short of copies waits for a volume, hand the missing copies off to the
-- next volumes that can take them (handoff above).
function M.move(key, opts)
  local value = mkv.index_get(key)
  if not value then return "gone" end
  local rec, err = M.decode(value)
  if not rec then return move_failed(key, "%s", err) end
  local want, perr = mkv.place(key)
  if not want then return move_failed(key, "placement failed: %s", tostring(perr)) end
  local balanced = M.same_places(rec.volumes, want)
  if #rec.volumes == 0 or (balanced and not opts.check) then return "balanced" end
  local path = mkv.path(key)

  -- Which volumes hold a copy, and how big it is.
  local have, size, unknown = {}, nil, {}
  for _, v in ipairs(rec.volumes) do
    local st, len = mkv.http("HEAD", M.url(v, path))
    if st == 200 then
      have[#have + 1] = v
      size = size or len
      if len ~= size then
        return move_failed(key, "copies differ in size (%s has %d, another %d): left alone, run mkv verify",
          v, len, size)
      end
    elseif st ~= 404 then
      unknown[#unknown + 1] = v
    end
  end
  if #have == 0 and rec.deleted and #unknown == 0 then
    -- a write that never finished (or a deleted key's last record): nothing to move;
    -- mkv gc removes the record
    return "gone"
  end
  if #have == 0 then
    return move_failed(key, "no copy found on %s%s", table.concat(rec.volumes, ","),
      #unknown > 0 and " (some did not answer)" or "")
  end
  if balanced then -- opts.check: the record is right; are its copies all there?
    if #have + #unknown == #rec.volumes then return "balanced" end
    return restore_copies(key, rec, have, unknown, path, size, opts)
  end
  if M.same_set(have, want) and #unknown == 0 then
    -- The copies are where they should be; only the record's order differs.
    if opts.dry then
      mkv.report(string.format("would reorder %s's record: %s", M.show(key), table.concat(want, ",")))
      return "ordered"
    end
    rec.volumes = want
    local ok, werr = mkv.index_put(key, M.encode(rec), true)
    if not ok then return move_failed(key, "cannot write its record: %s", tostring(werr)) end
    mkv.report(string.format("reordered %s's record: %s", M.show(key), table.concat(want, ",")))
    return "ordered"
  end
  local copy, drop = mkv.rebalance_plan(key, have, want)
  if not copy then return move_failed(key, "rebalance policy failed: %s", tostring(drop)) end
  for _, dst in ipairs(copy) do
    local state = mkv.volume_state(dst)
    if state ~= "up" then
      mkv.report(string.format("waiting %s: %s is %s", M.show(key), dst, state))
      return handoff(key, rec, have, unknown, want, path, size, opts)
    end
  end
  local plan = string.format("copy to %s, drop %s", #copy > 0 and table.concat(copy, ",") or "-",
    #drop > 0 and table.concat(drop, ",") or "-")
  if opts.dry then
    mkv.report(string.format("would move %s: %s", M.show(key), plan))
    return "moved"
  end

  -- 1. copies, each verified
  local holds = {}
  for _, v in ipairs(have) do holds[v] = true end
  for _, dst in ipairs(copy) do
    local bad = copy_verified(rec, have[1], dst, path, size)
    if bad then return move_failed(key, "copy %s -> %s failed: %s", have[1], dst, bad) end
    holds[dst] = true
  end
  -- 2. the record: placement's volumes that hold a copy, in its order, then any good
  -- copy the plan keeps elsewhere. Its state and its MD5 stay.
  local dropping = {}
  for _, v in ipairs(drop) do dropping[v] = true end
  local vols = {}
  for _, v in ipairs(want) do
    if holds[v] then vols[#vols + 1] = v end
  end
  for _, v in ipairs(have) do
    if not dropping[v] and not M.contains(vols, v) then vols[#vols + 1] = v end
  end
  rec.volumes = vols
  local ok, werr = mkv.index_put(key, M.encode(rec), true)
  if not ok then return move_failed(key, "cannot write its record: %s", tostring(werr)) end
  mkv.report(string.format("moved %s: %s", M.show(key), plan))
  -- 3. only now, and after the grace period, the surplus copies go
  for _, v in ipairs(drop) do
    if not M.contains(vols, v) then
      drops.n = drops.n + 1
      drops.due = math.max(drops.due, mkv.now() + (opts.grace or 5))
      mkv.after(opts.grace or 5, drop_copy, key, v, path, 0)
    end
  end
  return "moved"
end

return M
