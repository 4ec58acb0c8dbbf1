-- spec/json.lua: the specs' JSON reader, Debian's lua-cjson set up as lua/mkv_admin.lua
-- sets it up for nginx's listings: a private instance, strict about numbers. null
-- decodes to json.null (cjson.null), so that an array keeps its length.
local cjson = require("cjson").new()
cjson.decode_invalid_numbers(false)

-- decode(s) takes s alone: cjson's refuses more arguments, and busted's assert returns
-- more than its value (json.decode(assert(H.read_file(path)))).
return { null = cjson.null, decode = function(s) return cjson.decode(s) end }
