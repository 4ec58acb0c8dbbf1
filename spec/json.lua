-- spec/json.lua: the specs use the JSON reader that ships in lua/ (mkv_json).
return require "mkv_json"
