-- lua/mkv_config.lua: defaults, normalisation, the Go original's flags laid over the
-- file, and one-line errors that name the field or the flag.
local H = require "helpers"
local C = require "mkv_config"

local function plain(s) return (s:gsub("%p", "%%%0")) end

-- Builds and expects a failure: nil, then one line that holds every `names` (plain text).
local function fails(t, flags, names, src)
  local cfg, msg = C.build(t, flags, src or "test.lua")
  assert.is_nil(cfg, "expected an error")
  assert.is_string(msg)
  assert.is_nil(msg:find("\n"), "more than one line: " .. msg)
  assert.is_nil(msg:find("traceback", 1, true), msg)
  for _, n in ipairs(names) do
    assert.truthy(msg:find(plain(n)), "'" .. n .. "' not named in: " .. msg)
  end
  return msg
end

local function ok(t, flags, src)
  local cfg, msg = C.build(t, flags, src or "test.lua")
  assert.is_table(cfg, msg)
  return cfg
end

describe("mkv_config.build defaults", function()
  local cfg = ok({}, {})

  it("are the Go original's flag defaults", function()
    assert.equal(3000, cfg.port)
    assert.equal(3, cfg.replicas)
    assert.equal(10, cfg.subvolumes)
    assert.equal(true, cfg.md5sum)
    assert.equal(false, cfg.protect)
    assert.equal(false, cfg.verbose)
    assert.equal(1000, cfg.voltimeout) -- "1s", in milliseconds
    assert.equal("", cfg.db)
    assert.equal("", cfg.fallback)
    assert.same({}, cfg.volumes)
  end)

  it("and mkv's own", function()
    assert.equal("*", cfg.listen)
    assert.equal(0, cfg.workers)
    assert.same({ placement = "default", replicas = "default", listing = "default",
                  rebalance = "default", read = "default" }, cfg.policies)
    assert.equal("", cfg.policy_path)
    assert.equal(50, cfg.policy_timeout)
    assert.equal(64, cfg.policy_memory_mb)
  end)

  it("limits", function()
    assert.same({
      header_bytes = 16384, url_bytes = 8192, max_connections = 10000,
      idle_timeout = 60000, header_timeout = 30000, body_timeout = 60000,
      volume_timeout = 30000, suspect_time = 5000, drain_timeout = 30000,
      high_water_kb = 4096, low_water_kb = 1024, list_slice = 1000,
      probe_interval = 1000, probe_backoff = 5000, body_min_rate = 1000,
    }, cfg.limits)
  end)

  it("leveldb", function()
    assert.same({ cache_mb = 64, write_buffer_mb = 16, max_open_files = 1000, max_file_mb = 2,
                  bloom_bits = 10 }, cfg.leveldb)
  end)
end)

describe("mkv_config.build with the Go flags", function()
  it("normalises every flag's text", function()
    local cfg = ok({}, {
      { "volumes", "a:1,b:2" }, { "replicas", "2" }, { "subvolumes", "4" }, { "port", "3001" },
      { "db", "/var/mkv" }, { "md5sum", "false" }, { "voltimeout", "500ms" }, { "protect", "true" },
      { "v", "true" }, { "fallback", "fb:80" }, { "listen", "127.0.0.1" }, { "workers", "2" },
    })
    assert.same({ "a:1", "b:2" }, cfg.volumes)
    assert.equal(2, cfg.replicas)
    assert.equal(4, cfg.subvolumes)
    assert.equal(3001, cfg.port)
    assert.equal("/var/mkv", cfg.db)
    assert.equal(false, cfg.md5sum)
    assert.equal(500, cfg.voltimeout)
    assert.equal(true, cfg.protect)
    assert.equal(true, cfg.verbose)
    assert.equal("fb:80", cfg.fallback)
    assert.equal("127.0.0.1", cfg.listen)
    assert.equal(2, cfg.workers)
  end)

  it("reads booleans as Go's strconv.ParseBool does", function()
    for _, t in ipairs({ "1", "t", "T", "true", "TRUE", "True" }) do
      assert.equal(true, ok({}, { { "md5sum", t } }).md5sum, t)
    end
    for _, f in ipairs({ "0", "f", "F", "false", "FALSE", "False" }) do
      assert.equal(false, ok({}, { { "md5sum", f } }).md5sum, f)
    end
  end)

  it("voltimeout takes Go durations", function()
    assert.equal(90000, ok({}, { { "voltimeout", "1m30s" } }).voltimeout)
    assert.equal(2000, ok({}, { { "voltimeout", "2s" } }).voltimeout)
  end)

  it("the last of a repeated flag wins (Go's flag package)", function()
    assert.equal(2, ok({}, { { "replicas", "1" }, { "replicas", "2" } }).replicas)
  end)

  it("an empty -volumes is no volumes", function()
    assert.same({}, ok({}, { { "volumes", "" } }).volumes)
  end)
end)

describe("mkv_config.build with a config table", function()
  it("normalises durations, fills the defaults of partial sub-tables", function()
    local cfg = ok({
      volumes = { "a:1", "b:2", "c:3" }, replicas = 2, subvolumes = 4, voltimeout = "2s",
      db = "/db", limits = { header_bytes = 2048, idle_timeout = 5 },
      leveldb = { cache_mb = 8 }, policies = { replicas = "tmp_one_replica" },
      policy_timeout = "100ms", policy_memory_mb = 8, workers = 1,
    })
    assert.same({ "a:1", "b:2", "c:3" }, cfg.volumes)
    assert.equal(2, cfg.replicas)
    assert.equal(2000, cfg.voltimeout)
    assert.equal(2048, cfg.limits.header_bytes)
    assert.equal(5000, cfg.limits.idle_timeout) -- a number is seconds
    assert.equal(8192, cfg.limits.url_bytes)
    assert.equal(8, cfg.leveldb.cache_mb)
    assert.equal(16, cfg.leveldb.write_buffer_mb)
    assert.same({ placement = "default", replicas = "tmp_one_replica", listing = "default",
                  rebalance = "default", read = "default" }, cfg.policies)
    assert.equal(100, cfg.policy_timeout)
    assert.equal(8, cfg.policy_memory_mb)
  end)

  it("accepts IPv6 and host names as volumes", function()
    assert.same({ "[::1]:3001", "vol-1.example.com:80", "10.0.0.1:65535" },
      ok({ volumes = { "[::1]:3001", "vol-1.example.com:80", "10.0.0.1:65535" }, replicas = 1 }).volumes)
  end)

  it("flags override the file", function()
    local cfg = ok({ volumes = { "a:1", "b:2", "c:3" }, replicas = 3, port = 4000, md5sum = false },
      { { "replicas", "1" }, { "volumes", "x:1,y:2" }, { "md5sum", "true" } })
    assert.equal(1, cfg.replicas)
    assert.same({ "x:1", "y:2" }, cfg.volumes)
    assert.equal(true, cfg.md5sum)
    assert.equal(4000, cfg.port) -- not overridden: the file's value stays
  end)

  it("a cross-field error names the flag when a flag made it", function()
    fails({ volumes = { "a:1", "b:2" }, replicas = 2 }, { { "replicas", "3" } }, { "flag -replicas" })
  end)
end)

describe("mkv_config.build errors: nil and one line naming the field or flag", function()
  it("wrong type", function()
    fails({ port = "3000" }, {}, { "port" })
    fails({ replicas = 2.5 }, {}, { "replicas" })
    fails({ volumes = "a:1,b:2" }, {}, { "volumes" })
    fails({ md5sum = "yes" }, {}, { "md5sum" })
    fails({ db = 5 }, {}, { "db" })
    fails({ limits = 5 }, {}, { "limits" })
    fails({ limits = { header_bytes = "16k" } }, {}, { "limits", "header_bytes" })
    fails({ limits = { body_min_rate = "fast" } }, {}, { "limits", "body_min_rate" })
    fails({ leveldb = { cache_mb = true } }, {}, { "leveldb", "cache_mb" })
    fails({ policies = { placement = 5 } }, {}, { "policies", "placement" })
    fails({ policies = "default" }, {}, { "policies" })
  end)

  it("the error names the config file", function()
    fails({ port = "x" }, {}, { "/etc/mkv/config.lua", "port" }, "/etc/mkv/config.lua")
  end)

  it("unknown field, at the top and inside limits, leveldb, policies", function()
    fails({ colour = "red" }, {}, { "colour" })
    fails({ limits = { header_size = 1 } }, {}, { "limits", "header_size" })
    fails({ leveldb = { cachemb = 1 } }, {}, { "leveldb", "cachemb" })
    fails({ policies = { placment = "x" } }, {}, { "policies", "placment" })
    fails({ [1] = "x" }, {}, { "unknown field" })
  end)

  -- A misspelt field is the commonest slip: the message names the field meant, when one
  -- is near (two edits at most, one per three letters), and only then.
  it("unknown field: suggests the nearest known one", function()
    local msg = fails({ volums = { "a:1" } }, {}, { '"volums"', 'did you mean "volumes"?' })
    assert.truthy(msg:find('unknown field "volums"', 1, true), msg)
    fails({ replicsa = 1 }, {}, { '"replicsa"', 'did you mean "replicas"?' }) -- a swap is one edit
    fails({ Port = 1 }, {}, { '"Port"', 'did you mean "port"?' })
    fails({ ["write-quorum"] = "all" }, {}, { 'did you mean "write_quorum"?' })
    fails({ limits = { idle_timout = "5s" } }, {}, { "limits", '"idle_timout"', 'did you mean "idle_timeout"?' })
    fails({ leveldb = { cachemb = 1 } }, {}, { "leveldb", 'did you mean "cache_mb"?' })
    fails({ ha = { etdc = {} } }, {}, { "ha", '"etdc"', 'did you mean "etcd"?' })
    fails({ auth = { write_secrets = "x" } }, {}, { "auth", 'did you mean "write_secret"?' })
    fails({ policies = { placment = "x" } }, {}, { "policies", '"placment"', 'did you mean "placement"?' })
  end)

  it("unknown field: no suggestion when nothing is near", function()
    for _, t in ipairs({ { colour = "red" }, { xy = 1 }, { limits = { header_size = 1 } },
                         { policies = { zzz = "x" } }, { [1] = "x" }, { [true] = 1 } }) do
      local msg = fails(t, {}, { "unknown" })
      assert.is_nil(msg:find("did you mean", 1, true), msg)
    end
    -- volume_state's keys are volumes, not fields: a bad one is not "corrected".
    local msg = fails({ volumes = { "a:1" }, replicas = 1, volume_state = { ["a:2"] = "drain" } }, {},
      { "volume_state", "a:2" })
    assert.is_nil(msg:find("did you mean", 1, true), msg)
  end)

  it("unknown flag: suggests the flag meant", function()
    fails({}, { { "volums", "a:1" } }, { "flag -volums", "did you mean -volumes?" })
    fails({}, { { "replcias", "1" } }, { "flag -replcias", "did you mean -replicas?" })
    fails({}, { { "verbose", "true" } }, { "flag -verbose", "did you mean -v?" }) -- the field's flag
    fails({}, { { "write_quorum", "all" } }, { "did you mean -write-quorum?" })
    fails({}, { { "admin_listen", "x" } }, { "did you mean -admin?" })
    local msg = fails({}, { { "colour", "red" } }, { "flag -colour" })
    assert.is_nil(msg:find("did you mean", 1, true), msg)
    msg = fails({}, { { "x", "1" } }, { "flag -x" }) -- one letter is not "near" -v
    assert.is_nil(msg:find("did you mean", 1, true), msg)
  end)

  it("volumes: not a list", function()
    fails({ volumes = { a = "a:1" } }, {}, { "volumes" })
  end)

  it("duplicate volume", function()
    fails({ volumes = { "a:1", "b:2", "a:1" } }, {}, { "volumes", "duplicate", "a:1" })
    fails({}, { { "volumes", "a:1,a:1" } }, { "flag -volumes", "duplicate" })
  end)

  it("bad host:port", function()
    for _, v in ipairs({ "a", "a:", ":1", "a:0", "a:65536", "a:99999", "a b:1", "a,b:1",
                         "http://a:1", "a/b:1", "a:1/sv01", "", "[::1:1", "a:1 " }) do
      fails({ volumes = { v } , replicas = 1 }, {}, { "volumes" })
    end
    fails({}, { { "volumes", "a:1,,b:2" } }, { "flag -volumes" })
    fails({}, { { "volumes", "a:1,b" } }, { "flag -volumes" })
    fails({ fallback = "nohost" }, {}, { "fallback" })
    fails({ volumes = { 5 }, replicas = 1 }, {}, { "volumes" })
  end)

  -- A value with a control byte in it is a plausible slip (a pasted line); quoting it
  -- must not break the one-line message that goes to stderr and the logs.
  it("a bad value holding a newline still gives one line", function()
    fails({ volumes = { "a:1\n" }, replicas = 1 }, {}, { "volumes" })
    fails({ voltimeout = "1\ns" }, {}, { "voltimeout" })
    fails({}, { { "md5sum", "true\n" } }, { "flag -md5sum" })
  end)

  it("replicas > #volumes", function()
    fails({ volumes = { "a:1", "b:2" }, replicas = 3 }, {}, { "replicas", "2" })
    fails({ volumes = { "a:1", "b:2" } }, {}, { "replicas" }) -- the default 3
    fails({}, { { "volumes", "a:1" }, { "replicas", "2" } }, { "flag -replicas" })
  end)

  it("counts read right when there is one", function()
    fails({ volumes = { "a:1" }, replicas = 2 }, {}, { "replicas is 2 but there is only 1 volume (" })
    fails({ volumes = { "a:1", "b:2" } }, {}, { "replicas is 3 but there are only 2 volumes (" })
    fails({ volumes = { "a:1", "b:2" }, replicas = 2, volume_state = { ["a:1"] = "drain" } }, {},
      { "replicas is 2 but only 1 volume is not draining" })
    fails({ volumes = { "a:1", "b:2" }, replicas = 1, volume_state = { ["a:1"] = "drain", ["b:2"] = "drain" } },
      {}, { "replicas is 1 but only 0 volumes are not draining" })
  end)

  it("replicas 0", function()
    fails({ replicas = 0 }, {}, { "replicas" })
    fails({}, { { "replicas", "0" } }, { "flag -replicas" })
    fails({}, { { "replicas", "-1" } }, { "flag -replicas" })
  end)

  it("subvolumes 0", function()
    fails({ subvolumes = 0 }, {}, { "subvolumes" })
    fails({}, { { "subvolumes", "0" } }, { "flag -subvolumes" })
  end)

  it("bad duration", function()
    fails({ voltimeout = "fast" }, {}, { "voltimeout" })
    fails({ voltimeout = "1" }, {}, { "voltimeout" })
    fails({ voltimeout = -1 }, {}, { "voltimeout" })
    fails({ voltimeout = "0" }, {}, { "voltimeout" }) -- too short: at least 1 ms
    fails({}, { { "voltimeout", "1x" } }, { "flag -voltimeout" })
    fails({ limits = { idle_timeout = "soon" } }, {}, { "limits", "idle_timeout" })
    fails({ policy_timeout = "1e3s" }, {}, { "policy_timeout" })
  end)

  it("low_water >= high_water", function()
    fails({ limits = { low_water_kb = 4096 } }, {}, { "low_water_kb", "high_water_kb" })
    fails({ limits = { low_water_kb = 2048, high_water_kb = 1024 } }, {}, { "low_water_kb" })
  end)

  it("bad boolean flag value", function()
    fails({}, { { "md5sum", "yes" } }, { "flag -md5sum" })
    fails({}, { { "protect", "on" } }, { "flag -protect" })
    fails({}, { { "v", "" } }, { "flag -v" })
  end)

  it("bad whole-number flag value", function()
    fails({}, { { "port", "abc" } }, { "flag -port" })
    fails({}, { { "port", "80.5" } }, { "flag -port" })
    fails({}, { { "port", "70000" } }, { "flag -port" })
  end)

  it("unknown flag", function()
    fails({}, { { "colour", "red" } }, { "flag -colour" })
    fails({}, { { "config_dir", "x" } }, { "flag -config_dir" })
  end)
end)

describe("mkv_config.distance and nearest", function()
  it("count insertions, deletions, substitutions and neighbour swaps as one edit each", function()
    assert.equal(0, C.distance("volumes", "volumes"))
    assert.equal(1, C.distance("volums", "volumes"))
    assert.equal(1, C.distance("volumess", "volumes"))
    assert.equal(1, C.distance("volumez", "volumes"))
    assert.equal(2, C.distance("vlouems", "volumes")) -- two swaps
    assert.equal(1, C.distance("ab", "ba"))
    assert.equal(3, C.distance("", "abc"))
    assert.equal(3, C.distance("kitten", "sitting"))
  end)

  it("nearest: the closest within the bound, ties by name, nil when none", function()
    assert.equal("volumes", C.nearest("volums", { port = 1, volumes = 1 }))
    assert.equal("volumes", C.nearest("volums", { "port", "volumes" }))
    assert.equal("abcd", C.nearest("abce", { "abcf", "abcd" })) -- a tie: first in byte order
    assert.is_nil(C.nearest("x", { "v" }))           -- 1 edit in 1 letter: too much
    assert.is_nil(C.nearest("abcde", { "abxyz" }))   -- 3 edits
    assert.is_nil(C.nearest("abcd", { "abxy" }))     -- 2 edits in 4 letters
    assert.equal("abcdxy", C.nearest("abcdef", { "abcdxy" })) -- 2 edits in 6 letters
    assert.is_nil(C.nearest("", { "a" }))
    assert.is_nil(C.nearest(5, { "a" }))
  end)
end)

describe("mkv_config.duration_ms", function()
  it("parses Go durations and numbers of seconds", function()
    assert.equal(1000, C.duration_ms("1s"))
    assert.equal(500, C.duration_ms("500ms"))
    assert.equal(90000, C.duration_ms("1m30s"))
    assert.equal(3600000, C.duration_ms("1h"))
    assert.equal(1500, C.duration_ms("1.5s"))
    assert.equal(0, C.duration_ms("0"))
    assert.equal(2000, C.duration_ms(2))
    assert.equal(500, C.duration_ms(0.5))
    assert.equal(0, C.duration_ms(0))
    assert.truthy(math.abs(C.duration_ms("250us") - 0.25) < 1e-12)
  end)

  it("returns nil for garbage", function()
    for _, v in ipairs({ "", "abc", "1", "s", "1x", "1s2", " 1s", "1s ", "1e3s", "1.2.3s",
                         ".s", "-1s", -1, 0 / 0, math.huge, true, {} }) do
      assert.is_nil(C.duration_ms(v), tostring(v))
    end
    assert.is_nil(C.duration_ms(nil))
  end)
end)

describe("mkv_config.load_file", function()
  local dir
  setup(function() dir = H.tmpdir("cfg") end)
  teardown(H.cleanup)

  -- load_file raises a table { msg = ... } (C reads .msg); one line naming the file.
  local function load_error(path)
    local okk, err = pcall(C.load_file, path)
    assert.is_false(okk)
    local msg = type(err) == "table" and err.msg or err
    assert.is_string(msg)
    assert.is_nil(msg:find("\n"), "more than one line: " .. msg)
    assert.truthy(msg:find(path, 1, true), "file not named: " .. msg)
    return msg
  end

  it("loads a chunk returning a table", function()
    local p = H.write_file(dir .. "/good.lua", 'return { port = 3001, volumes = { "a:1" }, replicas = 1 }')
    local t = C.load_file(p)
    assert.same({ port = 3001, volumes = { "a:1" }, replicas = 1 }, t)
    local cfg = ok(t, {})
    assert.equal(3001, cfg.port)
    assert.same({ "a:1" }, cfg.volumes)
  end)

  it("keeps the config's globals to itself", function()
    local p = H.write_file(dir .. "/globals.lua", 'leaked_by_config = 1 return {}')
    C.load_file(p)
    assert.is_nil(rawget(_G, "leaked_by_config"))
  end)

  it("a missing file", function()
    local msg = load_error(dir .. "/nope.lua")
    assert.truthy(msg:find("cannot read", 1, true), msg)
  end)

  it("a syntax error", function()
    load_error(H.write_file(dir .. "/syntax.lua", "return { port = }"))
    load_error(H.write_file(dir .. "/syntax2.lua", "return {\n port = 3000,\n volumes = {\n"))
  end)

  it("a runtime error", function()
    load_error(H.write_file(dir .. "/runtime.lua", "local x = nil\nreturn { port = x.y }"))
  end)

  it("a chunk that returns a non-table", function()
    local msg = load_error(H.write_file(dir .. "/number.lua", "return 42"))
    assert.truthy(msg:find("table", 1, true), msg)
    load_error(H.write_file(dir .. "/nothing.lua", "local x = 1"))
    load_error(H.write_file(dir .. "/string.lua", "return 'port=3000'"))
  end)
end)

describe("mkv_config auth (write protection)", function()
  local S1 = "Zq3+9vL0/r4YtE2wQ8uN6mB1xC7kP5sD0fG3hJ9aW2o="
  local S2 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
  local dir = H.tmpdir("authcfg")

  it("is off by default", function()
    assert.same({ write_secrets = {}, read = false, list = false, volume_key = "",
                  redirect_secret = "", redirect_ttl = 60000 }, ok({}, {}).auth)
  end)

  it("takes one secret or two (a rotation), inline or from a file next to the config", function()
    assert.same({ S1 }, ok({ auth = { write_secret = S1 } }, {}).auth.write_secrets)
    assert.same({ S1, S2 }, ok({ auth = { write_secret = { S1, S2 } } }, {}).auth.write_secrets)
    H.write_file(dir .. "/w.secret", "  " .. S2 .. "  \r\n\n" .. S1 .. "\n")
    local cfg = ok({ auth = { write_secret_file = "w.secret" } }, {}, dir .. "/config.lua")
    assert.same({ S2, S1 }, cfg.auth.write_secrets)
  end)

  it("a -write-secret-file flag replaces the config's inline secret", function()
    H.write_file(dir .. "/flag.secret", S2 .. "\n")
    local cfg = ok({ auth = { write_secret = S1, read = true } },
                   { { "write-secret-file", dir .. "/flag.secret" } })
    assert.same({ S2 }, cfg.auth.write_secrets)
    assert.is_true(cfg.auth.read)
  end)

  it("a file of two secrets where one is allowed: \"at most one\"", function()
    H.write_file(dir .. "/two.secret", S1 .. "\n" .. S2 .. "\n")
    local msg = fails({ auth = { volume_key_file = dir .. "/two.secret" } }, {},
                      { "auth'.volume_key_file", "holds 2 secrets; at most one" })
    assert.is_nil(msg:find("new one and the old one", 1, true), msg)
  end)

  it("never shows a secret in an error", function()
    local bad = S1 .. " x"
    local msg = fails({ auth = { write_secret = bad } }, {}, { "auth'.write_secret" })
    assert.is_nil(msg:find(S1, 1, true), msg)
    msg = fails({ auth = { volume_key = { S1 } } }, {}, { "auth'.volume_key" })
    assert.is_nil(msg:find(S1, 1, true), msg)
    H.write_file(dir .. "/bad.secret", "short\n")
    msg = fails({ auth = { redirect_secret_file = dir .. "/bad.secret", volume_key = S2 } }, {},
                { "auth'.redirect_secret_file", "16 to 200 bytes" })
    assert.is_nil(msg:find("short", 1, true), msg)
  end)
end)
