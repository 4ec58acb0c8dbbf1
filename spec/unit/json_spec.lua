-- spec/json.lua, the specs' JSON reader: what the fixture manifest and listings need.
local json = require "json"

describe("the specs' JSON reader", function()
  it("reads objects, arrays, numbers, booleans and null", function()
    local v = json.decode([[ {"a": [1, -2.5e1, true, false, null, "x"], "d": [], "e": {}} ]])
    assert.same({ 1, -25, true, false }, { v.a[1], v.a[2], v.a[3], v.a[4] })
    assert.equal(json.null, v.a[5]) -- null keeps its place: the items after it do not shift
    assert.equal("x", v.a[6])
    assert.same({}, v.d)
    assert.same({}, v.e)
  end)

  it("decodes string escapes to bytes, surrogate pairs included", function()
    assert.equal("é😀\n\"\\/<", json.decode([["\u00e9\ud83d\ude00\n\"\\\/<"]]))
    assert.equal("a\0b", json.decode([["a\u0000b"]]))
  end)

  it("refuses malformed input, naming the offset", function()
    for _, bad in ipairs({ "{", "[1,]", '"abc', "{\"a\" 1}", "tru", "[1] 2" }) do
      local ok, err = pcall(json.decode, bad)
      assert.is_false(ok, bad)
      assert.truthy(tostring(err):match("offset %d+"), err)
    end
  end)
end)
