-- spec/json.lua, the specs' JSON reader: lua-cjson, set up as lua/mkv_admin.lua sets it
-- up for nginx's listings. What mkv relies on from it: the shape of an nginx autoindex
-- listing (sizes and mtimes exact), the escapes nginx and mkv's own ?list answers write,
-- null keeping its place, and an error (never a partial table) for anything malformed.
require "helpers" -- puts build/ on package.cpath, for mkv.json_string
local mkv = require "mkv"
local json = require "json"

describe("the specs' JSON reader (lua-cjson)", function()
  it("reads an nginx autoindex listing: names, types, mtimes, exact sizes", function()
    -- As nginx 1.22's autoindex_format json writes it: CRLF between entries.
    local body = '[\r\n' ..
      '{ "name":"sv0A", "type":"directory", "mtime":"Tue, 02 Jan 2024 03:04:05 GMT" },\r\n' ..
      '{ "name":"aGVsbG8=", "type":"file", "mtime":"Tue, 02 Jan 2024 03:04:05 GMT", "size":0 },\r\n' ..
      '{ "name":"a2V5LTE=", "type":"file", "mtime":"Tue, 02 Jan 2024 03:04:06 GMT", "size":1073741824 },\r\n' ..
      '{ "name":"a2V5LTI=", "type":"file", "mtime":"Tue, 02 Jan 2024 03:04:07 GMT", "size":5497558138881 },\r\n' ..
      '{ "name":"a2V5LTM=", "type":"file", "mtime":"Tue, 02 Jan 2024 03:04:08 GMT", "size":9007199254740992 }\r\n' ..
      ']'
    local t = json.decode(body)
    assert.equal(5, #t)
    assert.same({ name = "sv0A", type = "directory", mtime = "Tue, 02 Jan 2024 03:04:05 GMT" }, t[1])
    assert.same({ name = "aGVsbG8=", type = "file", mtime = "Tue, 02 Jan 2024 03:04:05 GMT", size = 0 }, t[2])
    -- 1 GB, 5 TB + 1 and 2^53: integers, exactly (compared as their decimal digits too).
    assert.equal(1073741824, t[3].size)
    assert.equal(5497558138881, t[4].size)
    assert.equal("5497558138881", string.format("%.0f", t[4].size))
    assert.equal(2 ^ 53, t[5].size)
    assert.equal("Tue, 02 Jan 2024 03:04:08 GMT", t[5].mtime)
  end)

  it("reads an empty directory's listing as an empty table", function()
    assert.same({}, json.decode("[\r\n]"))
    assert.same({}, json.decode("{}"))
  end)

  it("gives back the bytes of names as nginx escapes them", function()
    -- nginx escapes " and \ with a backslash and control bytes as \u00XX (upper-case
    -- hex); every other byte, UTF-8 or not, is written as it is.
    local t = json.decode('[{ "name":"a\\"b\\\\c\\u0001\\u001F\\u0000d", "type":"file" },' ..
      '{ "name":"\255\254\192\128 \226\130\172", "type":"file" }]')
    assert.equal('a"b\\c\1\31\0d', t[1].name)
    assert.equal("\255\254\192\128 \226\130\172", t[2].name)
  end)

  it("gives back every key of mkv's ?list as mkv.json_string wrote it", function()
    -- mkv's listings escape as Go's encoding/json: <>& and U+2028/9 as \u, control bytes
    -- as \n \r \t or \u00XX, and each byte of invalid UTF-8 as \ufffd.
    local cases = {
      { "plain/key+with=base64~chars", "plain/key+with=base64~chars" },
      { "<a>&b", "<a>&b" },
      { "line\nsep\226\128\168para\226\128\169", "line\nsep\226\128\168para\226\128\169" },
      { "\0\1\8\9\10\12\13\27\31\127", "\0\1\8\9\10\12\13\27\31\127" },
      { 'q"b\\/', 'q"b\\/' },
      { "é€😀", "é€😀" },
      { "bad\255\254", "bad\239\191\189\239\191\189" },
      { "\237\160\128", "\239\191\189\239\191\189\239\191\189" }, -- a surrogate in UTF-8: invalid
      { "\192\175", "\239\191\189\239\191\189" },                -- an overlong '/'
    }
    for _, c in ipairs(cases) do
      local written = mkv.json_string(c[1])
      assert.equal(c[2], json.decode(written), written)
      local list = json.decode('{"keys":[' .. written .. ',' .. written .. '],"next":""}')
      assert.same({ c[2], c[2] }, list.keys)
    end
    -- \u escapes decode to UTF-8, surrogate pairs joined.
    assert.equal("é😀\n\"\\/<", json.decode([["\u00e9\ud83d\ude00\n\"\\\/<"]]))
  end)

  it("keeps null's place: json.null, and the items after it do not shift", function()
    local v = json.decode([[ {"a": [1, -2.5e1, true, false, null, "x"], "n": null} ]])
    assert.same({ 1, -25, true, false }, { v.a[1], v.a[2], v.a[3], v.a[4] })
    assert.equal(json.null, v.a[5])
    assert.equal("x", v.a[6])
    assert.equal(6, #v.a)
    assert.equal(json.null, v.n)
  end)

  it("refuses malformed input, naming the position, and numbers JSON has not", function()
    -- A listing cut short (nginx killed mid-answer) must fail, never read as fewer files.
    local cut = '[\n{ "name":"aGVsbG8=", "type":"file", "mtime":"Tue, 02 Jan 2024 03:04:05 GMT", "size":5 },\n{ "na'
    for _, bad in ipairs({ cut, "{", "[1,]", '"abc', "{\"a\" 1}", "tru", "[1] 2", "", "[NaN]", "[Infinity]",
                           "[-Infinity]", "[0x10]", '[{"size":0x10}]', "[01]" }) do
      local ok, err = pcall(json.decode, bad)
      assert.is_false(ok, bad)
      assert.truthy(tostring(err):match("character %d+"), err)
    end
  end)
end)
