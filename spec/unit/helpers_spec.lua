-- The pure C helpers of the `mkv` module (core/lua_api.c over core/hash.c and
-- core/text.c), loaded from build/mkv.so: the very code the policy states and the
-- HTTP API run. Vectors come from RFCs (MD5: RFC 1321, base64: RFC 4648), from the Go
-- original's tests and fixture (key paths), and from Go's encoding/json (json_string).
local H = require "helpers"
local mkv = require "mkv"

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- A deterministic byte generator (an LCG), so a failing case can be replayed.
local function bytes_gen(seed)
  local state = seed
  return function(n)
    local t = {}
    for i = 1, n do
      state = (state * 1103515245 + 12345) % 2147483648
      t[i] = string.char(math.floor(state / 65536) % 256)
    end
    return table.concat(t)
  end
end

describe("mkv.md5 / md5_hex / hex", function()
  local rfc1321 = {
    [""] = "d41d8cd98f00b204e9800998ecf8427e",
    ["a"] = "0cc175b9c0f1b6a831c399e269772661",
    ["abc"] = "900150983cd24fb0d6963f7d28e17f72",
    ["message digest"] = "f96b697d7cb7938d525a2f31aaf161d0",
    ["abcdefghijklmnopqrstuvwxyz"] = "c3fcd3d76192e4007dfb496cca67e13b",
    ["12345678901234567890123456789012345678901234567890123456789012345678901234567890"] =
      "57edf4a22be3c955ac49da2e2107b67a",
    ["hello"] = "5d41402abc4b2a76b9719d911017c592",
  }

  it("md5_hex matches the RFC 1321 test suite", function()
    for input, want in pairs(rfc1321) do
      assert.equal(want, mkv.md5_hex(input), input)
    end
  end)

  it("md5 returns the 16 raw bytes, and hex(md5(x)) == md5_hex(x)", function()
    for input, want in pairs(rfc1321) do
      local raw = mkv.md5(input)
      assert.equal(16, #raw)
      assert.equal(unhex(want), raw)
      assert.equal(want, mkv.hex(raw))
    end
  end)

  it("hashes every byte, NUL included (keys are length-delimited)", function()
    assert.are_not.equal(mkv.md5_hex("a"), mkv.md5_hex("a\0"))
    assert.are_not.equal(mkv.md5_hex("a\0b"), mkv.md5_hex("a\0c"))
    -- md5("\0") is a known value.
    assert.equal("93b885adfe0da089cdf634904fd59f71", mkv.md5_hex("\0"))
  end)

  it("hashes a long input (streamed through one context)", function()
    -- md5 of one million 'a' (a classic vector).
    assert.equal("7707d6ae4e027c70eea2a935c2296f21", mkv.md5_hex(("a"):rep(1000000)))
  end)

  it("hex is lower-case, two digits per byte, and keeps NULs", function()
    assert.equal("", mkv.hex(""))
    assert.equal("00", mkv.hex("\0"))
    assert.equal("00ff10abcdef", mkv.hex("\0\255\16\171\205\239"))
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    local h = mkv.hex(table.concat(all))
    assert.equal(512, #h)
    assert.is_nil(h:find("[^0-9a-f]"))
    assert.equal(table.concat(all), unhex(h))
  end)

  it("misuse raises (a non-string argument)", function()
    assert.has_error(function() mkv.md5() end)
    assert.has_error(function() mkv.md5_hex({}) end)
    assert.has_error(function() mkv.hex(nil) end)
  end)
end)

describe("mkv.base64", function()
  it("matches RFC 4648 section 10", function()
    local v = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
                fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
    for input, want in pairs(v) do assert.equal(want, mkv.base64(input), input) end
  end)

  it("uses the standard alphabet (+ and /), not the URL-safe one", function()
    assert.equal("+/8=", mkv.base64("\251\255"))
    assert.equal("////", mkv.base64("\255\255\255"))
    assert.equal("AAAA", mkv.base64("\0\0\0"))
    assert.equal("LyA/", mkv.base64("/ ?")) -- the fixture's key whose path ends in '/'
  end)

  it("encodes long inputs (past the 512-byte stack buffer)", function()
    local s = bytes_gen(7)(3000)
    local e = mkv.base64(s)
    assert.equal(4000, #e)
    assert.equal(s, mkv.base64_decode(e))
  end)
end)

describe("mkv.base64_decode (strict)", function()
  it("decodes what base64 encodes, for every length 0..64 and random bytes", function()
    local gen = bytes_gen(42)
    for n = 0, 64 do
      local s = gen(n)
      local d, msg = mkv.base64_decode(mkv.base64(s))
      assert.equal(s, d, "length " .. n .. ": " .. tostring(msg))
    end
  end)

  it("decodes the RFC 4648 vectors", function()
    assert.equal("", mkv.base64_decode(""))
    assert.equal("f", mkv.base64_decode("Zg=="))
    assert.equal("fo", mkv.base64_decode("Zm8="))
    assert.equal("foobar", mkv.base64_decode("Zm9vYmFy"))
    assert.equal("\251\255", mkv.base64_decode("+/8="))
  end)

  -- Rebuild turns volume file names back into keys with this decoder: anything but the
  -- one canonical encoding of a key must be refused, or a stray file becomes a wrong key.
  local bad = {
    { "Zg", "missing padding" },
    { "Zm8", "missing padding" },
    { "Zg=", "length not a multiple of 4" },
    { "Zm9vY", "length not a multiple of 4" },
    { "Zm9v\n", "trailing newline" },
    { "Zm9v\r\n", "CRLF" },
    { " Zm9v", "leading space" },
    { "Zm9 v", "space inside" },
    { "Zm\t9v", "tab inside" },
    { "Zm9vYmFy\nZm9v", "line break between quanta" },
    { "Zm9-", "URL-safe '-'" },
    { "Zm9_", "URL-safe '_'" },
    { "Zm9*", "bad char '*'" },
    { "Zm9\0", "NUL byte" },
    { "Zm9\200", "high byte" },
    { "Zh==", "non-zero unused bits (one byte)" },
    { "Zm9=", "non-zero unused bits (two bytes)" },
    { "Zm=v", "padding in the middle" },
    { "=Zm9", "padding first" },
    { "Z===", "three padding chars" },
    { "====", "only padding" },
    { "Zg==Zg==", "padding before the last quantum" },
    { "Zg==Zm9v", "data after padding" },
  }
  for _, case in ipairs(bad) do
    it("rejects " .. case[2] .. " with nil, msg, code", function()
      local v, msg, code = mkv.base64_decode(case[1])
      assert.is_nil(v)
      assert.is_string(msg)
      assert.truthy(#msg > 0)
      assert.is_string(code)
      assert.truthy(code:match("^E%u+$"), code)
    end)
  end

  it("the code of a rejection is EINVAL", function()
    local _, _, code = mkv.base64_decode("Zg")
    assert.equal("EINVAL", code)
  end)
end)

describe("mkv.key_path", function()
  it("matches the Go original's golden paths", function()
    assert.equal("/5d/41/aGVsbG8=", mkv.key_path("hello"))
    assert.equal("/fc/5e/aGVsbG93b3JsZA==", mkv.key_path("helloworld"))
    -- From spec/fixtures/go-original/manifest.json (key "/hello", a real Go write).
    assert.equal("/3e/d1/L2hlbGxv", mkv.key_path("/hello"))
  end)

  it("is /<md5 hex[0:2]>/<md5 hex[2:4]>/<base64 std(key)> for any bytes", function()
    local gen = bytes_gen(99)
    for n = 0, 200, 7 do
      local k = "/" .. gen(n)
      local h = mkv.md5_hex(k)
      assert.equal("/" .. h:sub(1, 2) .. "/" .. h:sub(3, 4) .. "/" .. mkv.base64(k), mkv.key_path(k))
    end
    assert.equal("/" .. mkv.md5_hex("a\0b"):sub(1, 2) .. "/" .. mkv.md5_hex("a\0b"):sub(3, 4)
      .. "/YQBi", mkv.key_path("a\0b"))
  end)
end)

describe("mkv.md5_scores", function()
  it("equals md5(key .. volume) for each volume, in volume order", function()
    local vols = { "larry", "moe", "curly", "127.0.0.1:24101", "" }
    for _, key in ipairs({ "hello", "/hello", "", "a\0b", ("k"):rep(300) }) do
      local s = mkv.md5_scores(key, vols)
      assert.equal(#vols, #s)
      for i, v in ipairs(vols) do
        assert.equal(mkv.md5(key .. v), s[i], key .. " / " .. v)
      end
    end
  end)

  it("returns an empty list for no volumes", function()
    assert.same({}, mkv.md5_scores("k", {}))
  end)

  it("raises on misuse: a volume that is not a string, or no table", function()
    assert.has_error(function() mkv.md5_scores("k", { "a", {}, "c" }) end)
    assert.has_error(function() mkv.md5_scores("k", "a") end)
    assert.has_error(function() mkv.md5_scores(nil, { "a" }) end)
  end)
end)

describe("mkv.path_check", function()
  local function check_ok(p)
    local ok, msg, code = mkv.path_check(p)
    assert.equal(true, ok, p .. ": " .. tostring(msg) .. " " .. tostring(code))
  end
  local function check_err(p, want)
    local ok, msg, code = mkv.path_check(p)
    assert.is_nil(ok, p)
    assert.is_string(msg)
    assert.truthy(#msg > 0)
    assert.equal(want, code, p)
  end

  it("accepts the paths of ordinary keys", function()
    check_ok("/5d/41/aGVsbG8=")
    check_ok("/fc/5e/aGVsbG93b3JsZA==")
    check_ok(mkv.key_path("/a/b/c d+e=f"))
    -- base64 of a key may hold '/', making nested directories: still fine.
    check_ok("/ab/cd/+/8=")
  end)

  -- 414: nginx (ext4) cannot hold a file-name component over 255 bytes.
  it("a component of 255 bytes is fine, 256 is EKEYLONG (-> 414)", function()
    check_ok("/ab/cd/" .. ("A"):rep(255))
    check_err("/ab/cd/" .. ("A"):rep(256), "EKEYLONG")
    check_err("/" .. ("A"):rep(300) .. "/cd/x", "EKEYLONG")
  end)

  it("keys of 189 bytes fit, 190 bytes do not (base64 grows 4/3)", function()
    check_ok(mkv.key_path("/" .. ("k"):rep(188)))
    check_err(mkv.key_path("/" .. ("k"):rep(189)), "EKEYLONG")
  end)

  -- 400: a path with an empty component would make nginx treat it as a directory; a
  -- DELETE of it removes a whole directory of other keys' files.
  it("a trailing '/' or an empty component '//' is EKEYPATH (-> 400)", function()
    check_err("/ab/cd/LyA/", "EKEYPATH")
    check_err(mkv.key_path("/ ?"), "EKEYPATH") -- base64 "LyA/" (the Go fixture's failed key)
    check_err("/ab/cd//x", "EKEYPATH")
    check_err("/ab//cd/x", "EKEYPATH")
    check_err("//", "EKEYPATH")
    check_err("/", "EKEYPATH")
  end)

  it("EKEYPATH also for no leading '/', '.' or '..' components, a NUL", function()
    check_err("", "EKEYPATH")
    check_err("ab/cd/x", "EKEYPATH")
    check_err("/ab/./x", "EKEYPATH")
    check_err("/ab/../x", "EKEYPATH")
    check_err("/ab/cd/x\0y", "EKEYPATH")
  end)

  it("an empty component wins over a long one (400 before 414)", function()
    check_err("/" .. ("A"):rep(300) .. "//x", "EKEYPATH")
    check_err("/" .. ("A"):rep(300) .. "/", "EKEYPATH")
  end)
end)

describe("mkv.json_string (Go's encoding/json)", function()
  local function j(s) return mkv.json_string(s) end

  it("quotes plain ASCII as is", function()
    assert.equal('"abc"', j("abc"))
    assert.equal('""', j(""))
    assert.equal('"/a b/c+d=e~!$\'()*,;:@"', j("/a b/c+d=e~!$'()*,;:@"))
  end)

  it("escapes <, >, & as \\u003c \\u003e \\u0026 (Go's HTML-safe default)", function()
    assert.equal('"\\u003c\\u003e\\u0026"', j("<>&"))
    assert.equal('"/amp\\u0026semi;colon"', j("/amp&semi;colon")) -- from the Go fixture
  end)

  it('escapes " and \\ with a backslash', function()
    assert.equal('"\\"\\\\"', j('"\\'))
  end)

  it("writes \\n \\r \\t short, every other control byte as \\u00XX (lower-case hex)", function()
    assert.equal('"\\n\\r\\t"', j("\n\r\t"))
    assert.equal('"\\u0000"', j("\0"))
    assert.equal('"a\\u0000b"', j("a\0b"))
    assert.equal('"\\u0001\\u001f"', j("\1\31"))
    -- go1.19 (the original's toolchain) has no \b or \f short forms.
    assert.equal('"\\u0008\\u000c"', j("\b\f"))
    assert.equal('"\\u001b"', j("\27"))
    for b = 0, 31 do
      local out = j(string.char(b))
      if b ~= 10 and b ~= 13 and b ~= 9 then
        assert.equal(string.format('"\\u%04x"', b), out)
      end
    end
  end)

  it("leaves DEL (0x7f) as is, as Go does", function()
    assert.equal('"\127"', j("\127"))
  end)

  it("passes valid UTF-8 through unchanged", function()
    for _, s in ipairs({ "é", "日本/ファイル", "émoji-😀", "\239\191\189" --[[ a real U+FFFD ]],
                         "\244\143\191\191" --[[ U+10FFFF ]] }) do
      assert.equal('"' .. s .. '"', j(s))
    end
  end)

  it("turns each invalid UTF-8 byte into \\ufffd", function()
    assert.equal('"\\ufffd"', j("\255"))
    assert.equal('"/inv\\ufffd\\ufffd"', j("/inv\255\254")) -- from the Go fixture
    assert.equal('"\\ufffd\\ufffd"', j("\192\175"))         -- overlong '/'
    assert.equal('"\\ufffd\\ufffd"', j("\226\130"))         -- truncated 3-byte sequence
    assert.equal('"\\ufffd\\ufffd\\ufffd"', j("\237\160\128")) -- a surrogate half
    assert.equal('"\\ufffd\\ufffd\\ufffd\\ufffd"', j("\244\144\128\128")) -- above U+10FFFF
    assert.equal('"\\ufffdA"', j("\128A"))                  -- a lone continuation byte
    assert.equal('"a\\ufffdé"', j("a\233é"))               -- Latin-1 é, then UTF-8 é
  end)

  it("escapes U+2028 and U+2029 (JavaScript line terminators)", function()
    assert.equal('"\\u2028"', j("\226\128\168"))
    assert.equal('"a\\u2029b"', j("a\226\128\169b"))
  end)
end)

describe("mkv.duration_ms", function()
  it("parses Go durations", function()
    local v = { ["1s"] = 1000, ["500ms"] = 500, ["1m30s"] = 90000, ["1h"] = 3600000,
                ["1.5s"] = 1500, ["0"] = 0, ["250us"] = 0.25, ["250µs"] = 0.25,
                ["1000000ns"] = 1, ["1h2m3s4ms"] = 3723004, ["0s"] = 0 }
    for s, want in pairs(v) do
      local got = mkv.duration_ms(s)
      assert.truthy(got and math.abs(got - want) < 1e-9, s .. " -> " .. tostring(got))
    end
  end)

  it("returns nil and a message for what Go's time.ParseDuration rejects", function()
    local accepted = {}
    for _, s in ipairs({ "", "abc", "1", "s", "1x", "1s2", " 1s", "1s ", "1 s", "ms",
                         "1.2.3s", "1e3s", "0x10s", "inf", "nan" }) do
      local v, msg = mkv.duration_ms(s)
      if v ~= nil or type(msg) ~= "string" then
        accepted[#accepted + 1] = string.format("%q -> %s", s, tostring(v))
      end
    end
    assert.same({}, accepted)
  end)

  it("agrees with the config's parser (lua/mkv_config.lua) on every input", function()
    local C = require "mkv_config"
    local differ = {}
    for _, s in ipairs({ "1s", "500ms", "1m30s", "1h", "1.5s", "0", "250us", "", "abc",
                         "1", "1x", "1s2", " 1s", "1e3s", "0x10s" }) do
      local a, b = C.duration_ms(s), (mkv.duration_ms(s))
      if a ~= b then
        differ[#differ + 1] = string.format("%q: config %s, mkv.so %s", s, tostring(a), tostring(b))
      end
    end
    assert.same({}, differ)
  end)
end)

-- The record codec (core/record.c) as the admin scripts see it: the Go original's golden
-- records (GO-ORIGINAL.md §2.2), and bytes in = bytes out for what the original wrote.
describe("mkv.record_decode / record_encode", function()
  local HX = "5d41402abc4b2a76b9719d911017c592"
  local goldens = {
    { "DELETEDhello,world", { deleted = true, volumes = { "hello", "world" } } },
    { "hello", { deleted = false, volumes = { "hello" } } },
    { "DELETEDHASH" .. HX .. "hello", { deleted = true, hash = HX, volumes = { "hello" } } },
    { "HASH" .. HX .. "hello", { deleted = false, hash = HX, volumes = { "hello" } } },
    { "HASH" .. HX .. "127.0.0.1:24103/sv03,127.0.0.1:24101/sv01",
      { deleted = false, hash = HX, volumes = { "127.0.0.1:24103/sv03", "127.0.0.1:24101/sv01" } } },
    { "", { deleted = false, volumes = {} } },
    { "DELETED", { deleted = true, volumes = {} } },
  }
  for _, g in ipairs(goldens) do
    it(string.format("%q decodes and encodes back", g[1]), function()
      local rec = assert(mkv.record_decode(g[1]))
      assert.same(g[2], rec)
      assert.equal(g[1], mkv.record_encode(rec))
    end)
  end

  it("keeps what it reads as it is: an upper-case hash, empty volume names", function()
    for _, v in ipairs({ "HASH" .. HX:upper() .. "a:1", "a:1,,b:2", "a:1,", "DELETEDHASH" .. HX .. "," }) do
      local rec = assert(mkv.record_decode(v))
      assert.equal(v, mkv.record_encode(rec))
    end
    assert.same({ "a:1", "", "b:2" }, mkv.record_decode("a:1,,b:2").volumes)
    assert.equal(HX:upper(), mkv.record_decode("HASH" .. HX:upper() .. "a:1").hash)
  end)

  it("a HASH without 32 hex digits is nil, msg, ECORRUPT", function()
    for _, v in ipairs({ "HASH", "HASH5d41", "HASHzz41402abc4b2a76b9719d911017c592hello" }) do
      local rec, msg, code = mkv.record_decode(v)
      assert.is_nil(rec)
      assert.is_string(msg)
      assert.equal("ECORRUPT", code)
    end
  end)

  it("encode raises on misuse: a bad hash, a volume holding a comma or not a string", function()
    assert.has_error(function() mkv.record_encode({ hash = "abc", volumes = {} }) end)
    assert.has_error(function() mkv.record_encode({ volumes = { "a,b" } }) end)
    assert.has_error(function() mkv.record_encode({ volumes = { 1 } }) end)
    assert.has_error(function() mkv.record_encode({}) end)
  end)
end)

describe("mkv.so", function()
  it("is the build's module, with a writable config table for specs", function()
    assert.truthy(package.searchpath("mkv", package.cpath):find(H.build, 1, true))
    assert.is_table(mkv.config)
    assert.equal(3, mkv.config.replicas)
    assert.equal(10, mkv.config.subvolumes)
  end)
end)

describe("mkv.place_of / ALT_SLOT", function()
  it("drops REPLACE's second slot, and nothing else (record.c's rule)", function()
    assert.equal("/alt", mkv.ALT_SLOT)
    assert.equal("10.0.0.1:3001/sv03", mkv.place_of("10.0.0.1:3001/sv03/alt"))
    assert.equal("10.0.0.1:3001", mkv.place_of("10.0.0.1:3001/alt"))
    assert.equal("10.0.0.1:3001/sv03", mkv.place_of("10.0.0.1:3001/sv03"))
    assert.equal("/alt", mkv.place_of("/alt")) -- nothing left but the suffix: kept
    assert.equal("h:1/salt", mkv.place_of("h:1/salt"))
  end)
end)
