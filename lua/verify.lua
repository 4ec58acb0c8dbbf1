-- lua/verify.lua: `mkv verify [--deep] [--repair]` -- are the live keys' copies there?
--
-- For every live record: each replica answers a HEAD with the same size (with --deep
-- each copy is read and its MD5 compared with the record's); copies that are missing,
-- differ, or sit where placement does not want them are reported, one line each.
-- Keys with fewer good copies than placement wants are reported as under-replicated.
-- --repair copies a good replica over each missing or corrupt one (verified), and moves
-- a key that is misplaced or under-replicated as mkv rebalance would. Then the
-- volumes are walked for orphan files: files that no record points to (mkv gc removes
-- them); with --deep the walk comes first, for the total its progress counts bytes
-- against. Exits non-zero when it found a problem it did not repair.
local mkv = require "mkv"
local A = require "mkv_admin"

local opts = A.options({ deep = "flag", repair = "flag" })

-- --repair of a key whose copies are good but not where placement wants them, or too
-- few: moved as mkv rebalance moves it, under its lock.
local function settle(key)
  if not mkv.lock(key) then
    mkv.report("not repaired " .. A.show(key) .. ": a write of it is in flight")
    return
  end
  local ok, res = pcall(A.move, key, {})
  mkv.unlock(key)
  if not ok then error(res, 0) end
  if res == "moved" or res == "ordered" then mkv.count("changed") end
end

local function check(key, value)
  mkv.count("examined")
  mkv.progress({ done = 1 })
  local rec, err = A.decode(value)
  if not rec then return A.fail("corrupt record %s: %s", A.show(key), err) end
  -- Compared with the lower-case MD5s of copies (verify never writes the record back).
  if rec.hash then rec.hash = rec.hash:lower() end
  if rec.deleted or #rec.volumes == 0 then return end
  local path = mkv.path(key)
  local sizes, md5s, missing, unknown = {}, {}, {}, {}
  for _, v in ipairs(rec.volumes) do
    local st, len, code = mkv.http("HEAD", A.url(v, path))
    if st == 200 then
      sizes[v] = len
    elseif st == 404 then
      missing[#missing + 1] = v
    elseif code == "ECANCELED" then
      return -- the run is cancelled (Ctrl-C): this key stays unchecked, nothing blamed
    else
      unknown[#unknown + 1] = v
      A.fail("unreachable %s on %s: %s", A.show(key), v, tostring(len))
    end
  end
  -- Which copies are good. The record's MD5, when there is one, is the judge: with
  -- --deep every copy is hashed; without it, only when the sizes disagree. Without an
  -- MD5, a strict majority (of sizes, or of hashes with --deep) decides; a tie cannot
  -- be settled, and is reported, never repaired.
  local good, bad = {}, {}
  local present = {}
  for _, v in ipairs(rec.volumes) do
    if sizes[v] then present[#present + 1] = v end
  end
  local sizes_agree = true
  for _, v in ipairs(present) do
    if sizes[v] ~= sizes[present[1]] then sizes_agree = false end
  end
  local function by_majority(value_of)
    local votes, best, n = {}, nil, 0
    for _, v in ipairs(present) do
      local x = value_of(v)
      if x ~= nil then votes[x] = (votes[x] or 0) + 1 end
    end
    for x, c in pairs(votes) do
      if c > n then best, n = x, c end
    end
    if n * 2 <= #present and #present > 1 then return nil end -- no strict majority
    return best
  end
  local judge, value_of
  if opts.deep or (not sizes_agree and rec.hash) then
    -- A copy that could not be read is not a corrupt one: it is left out, as a volume
    -- that did not answer its HEAD is.
    local read = {}
    for _, v in ipairs(present) do
      local size, md5, code = mkv.md5_url(A.url(v, path))
      if size then
        md5s[v] = md5
        read[#read + 1] = v
      elseif code == "ECANCELED" then
        return -- cancelled: unchecked, nothing blamed
      else
        A.fail("unreachable %s on %s: %s", A.show(key), v, tostring(md5))
      end
    end
    present = read
    value_of = function(v) return md5s[v] end
    judge = rec.hash or by_majority(value_of)
  else
    value_of = function(v) return sizes[v] end
    judge = by_majority(value_of)
  end
  local undecided = judge == nil and #present > 1
  if undecided then
    return A.fail("conflicting %s: its copies differ and %s, so which one is good cannot be told",
      A.show(key), rec.hash and "none matches the record's MD5" or "no MD5 is recorded")
  end
  for _, v in ipairs(present) do
    if judge == nil or value_of(v) == judge then good[#good + 1] = v else bad[#bad + 1] = v end
  end
  for _, v in ipairs(missing) do mkv.report(string.format("missing %s on %s", A.show(key), v)) end
  for _, v in ipairs(bad) do
    mkv.report(string.format("corrupt %s on %s (%s)", A.show(key), v,
      md5s[v] and ("MD5 " .. tostring(md5s[v]) .. ", expected " .. tostring(rec.hash or "the others'"))
        or ("size " .. tostring(sizes[v]))))
  end
  local want = mkv.place(key)
  local misplaced = want and not A.same_places(want, rec.volumes)
  if misplaced then
    mkv.report(string.format("misplaced %s: on %s, placement wants %s (mkv rebalance moves it)",
      A.show(key), table.concat(rec.volumes, ","), table.concat(want, ",")))
  end
  -- Fewer good copies than placement wants (a write that went on without a volume that
  -- was down, a copy lost): a finding, which --repair (or the server's repair) fixes.
  local under = want and #good < #want
  if under then
    mkv.report(string.format("under-replicated %s: %d of %d %s", A.show(key), #good, #want,
      #want == 1 and "copy" or "copies"))
  end
  local broken = #missing + #bad
  if broken == 0 then
    if under then mkv.count("failed") end
    if (under or misplaced) and opts.repair then settle(key) end
    return
  end
  if not opts.repair or #good == 0 then
    if #good == 0 then mkv.report("no good copy of " .. A.show(key) .. " left: cannot repair") end
    mkv.count("failed", broken)
    return
  end
  -- --repair: copy a good replica over each broken one, under the key's lock. A corrupt
  -- copy is overwritten only from a source whose MD5 was checked against the record
  -- first: a copy cannot be taken back.
  if not mkv.lock(key) then
    mkv.report("not repaired " .. A.show(key) .. ": a write of it is in flight")
    mkv.count("failed", broken)
    return
  end
  local targets = {}
  for _, v in ipairs(missing) do targets[#targets + 1] = v end
  for _, v in ipairs(bad) do targets[#targets + 1] = v end
  local src = good[1]
  if rec.hash and #bad > 0 and md5s[src] ~= rec.hash then
    local _, md5 = mkv.md5_url(A.url(src, path))
    md5s[src] = md5
    if md5 ~= rec.hash then
      mkv.report(string.format("not repaired %s: the copy on %s does not match the record's MD5 either",
        A.show(key), src))
      mkv.count("failed", broken)
      mkv.unlock(key)
      return
    end
  end
  for _, dst in ipairs(targets) do
    local size, md5 = mkv.copy(A.url(src, path), A.url(dst, path))
    if size and (not rec.hash or md5 == rec.hash) then
      mkv.report(string.format("repaired %s on %s (copied from %s)", A.show(key), dst, src))
      mkv.count("changed")
    else
      A.fail("repair of %s on %s failed: %s", A.show(key), dst,
        size and ("MD5 " .. md5) or tostring(md5))
    end
  end
  mkv.unlock(key)
  if misplaced or (want and #rec.volumes < #want) then settle(key) end
end

-- Orphans: files no record points to (left by failed writes, or by moves that stopped
-- half way). Reported here; mkv gc removes them. Returns the bytes of the copies that
-- live records name: what --deep will read.
local function walk_volumes()
  local bytes = 0
  A.walk(mkv.config.volumes, function(ab, cd, found)
    for b64, copies in pairs(found) do
      local key = A.key_of(ab, cd, b64)
      if not key then
        -- Not the file of any key (a name that is not base64, or in another key's
        -- directory): someone else's. Named, never removed.
        for _, c in ipairs(copies) do
          mkv.report(string.format("stray %s (not a key's file; left alone)",
            A.url(c.root, "/" .. ab .. "/" .. cd .. "/" .. b64)))
        end
      else
        local value = mkv.index_get(key)
        local rec = value and A.decode(value)
        for _, c in ipairs(copies) do
          if not rec or not A.contains(rec.volumes, c.root) then
            mkv.report(string.format("orphan %s (%s)", A.url(c.root, "/" .. ab .. "/" .. cd .. "/" .. b64),
              rec and "its record names other volumes" or "no record"))
          elseif not rec.deleted then
            bytes = bytes + (tonumber(c.entry.size) or 0)
          end
        end
      end
    end
  end)
  return bytes
end

if opts.deep then
  -- --deep reads every copy: its progress counts bytes, with an ETA, and needs their
  -- total first. Records hold no size (the Go original's format: state, MD5, volumes),
  -- so the total is the volumes' own: the sizes in their listings of the files that
  -- live records name -- from the walk for orphans, done first here at no extra cost
  -- (a HEAD of every copy first would double the requests). Writes while verify runs
  -- make it an estimate.
  local total = walk_volumes()
  A.each_record(check, nil, { total_bytes = total })
else
  A.each_record(check)
  walk_volumes()
end
-- --repair moves misplaced keys as rebalance does: their old copies wait out the grace.
A.say_pending_drops()
