-- A failed index write (here: the index's disk is full) turns the index read-only:
-- every write answers 503, never a 201, and reads go on. The index lives on a small
-- tmpfs mounted in a private mount namespace (unshare -rm), filled up on cue.
local H = require "helpers"

describe("after a failed index write", function()
  teardown(H.cleanup)

  it("writes answer 503 and reads go on", function()
    local v = H.start_volume()
    local dir = H.tmpdir("full")
    local port = H.free_port()
    local script = table.concat({
      "set -e",
      "mkdir -p " .. dir .. "/mnt",
      "mount -t tmpfs -o size=2m tmpfs " .. dir .. "/mnt",
      H.shq(H.mkv_bin) .. " -volumes " .. v.addr .. " -replicas 1 -subvolumes 1 -db " .. dir ..
        "/mnt/index -port " .. port .. " -listen 127.0.0.1 server &",
      "pid=$!",
      "trap 'kill -TERM $pid; wait $pid; exit $?' TERM",
      "while [ ! -e " .. dir .. "/fill ]; do sleep 0.02; done",
      "dd if=/dev/zero of=" .. dir .. "/mnt/filler bs=64k >/dev/null 2>&1 || true",
      "touch " .. dir .. "/filled",
      "wait $pid",
    }, "\n")
    local p = H.spawn("mkv-ns", { "unshare", "-rm", "sh", "-c", script })
    local url = "http://127.0.0.1:" .. port
    H.eventually(function()
      if not p:alive() then error("exited: " .. p:log()) end
      return H.port_open(port)
    end, 10, "mkv in its namespace")

    assert.equal(201, (H.http("PUT", url .. "/before", { body = "kept" })))
    H.write_file(dir .. "/fill", "")
    H.eventually(function() return H.read_file(dir .. "/filled") end, 10, "tmpfs filled")

    -- Writes go on until the index's log needs a block the disk no longer has (a few
    -- more may fit in the log file's last page). Then the write fails and is answered
    -- 503, never 201, and from then on the index is read-only.
    local acked, failed_key = {}, nil
    for i = 1, 400 do
      local key = string.format("/after/%04d/%s", i, string.rep("k", 100))
      local st = H.http("PUT", url .. key, { body = "v" .. i })
      if st == 201 then
        acked[#acked + 1] = key
      else
        assert.equal(503, st)
        failed_key = key
        break
      end
    end
    assert.truthy(failed_key, "the index never failed")
    assert.equal(503, (H.http("PUT", url .. "/after2", { body = "y" })))
    assert.equal(503, (H.http("DELETE", url .. "/before")))
    assert.equal(503, (H.http("UNLINK", url .. "/before")))

    -- Reads go on: the acknowledged key still redirects to its bytes.
    local gst, _, body = H.http("GET", url .. "/before", { follow = true })
    assert.equal(200, gst)
    assert.equal("kept", body)
    for i, key in ipairs(acked) do
      local ast, _, abody = H.http("GET", url .. key, { follow = true })
      assert.equal(200, ast)
      assert.equal("v" .. i, abody)
    end
    assert.equal(404, (H.http("GET", url .. failed_key)))
    local _, _, list = H.http("GET", url .. "/before?list")
    assert.equal('{"next":"","keys":["/before"]}', list)

    -- The failed PUT keeps its copy on the volume: its live record may have reached the
    -- index's log before the write failed, and would then be live after a restart
    -- (spec/fault/sync_spec.lua restarts and verifies). An orphan at worst, for mkv gc.
    local mkvlib = require "mkv"
    local fname = mkvlib.key_path(failed_key):match("[^/]+$")
    local out = H.sh("find " .. H.shq(v.root) .. " -type f")
    assert.truthy(out:find(fname, 1, true), out)
    assert.truthy(p:log():find("index write failed", 1, true))

    -- It still stops cleanly (exit 0) on SIGTERM.
    local status = p:stop()
    assert.equal(0, status.code)
  end)
end)
