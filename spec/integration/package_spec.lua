-- deploy/package, mkv's Debian package (deploy/debian): it is built once from this tree,
-- unpacked with dpkg-deb into a scratch root and read there -- its control fields, every
-- file the operator is promised, the units (systemd-analyze verify), the maintainer
-- scripts, the man page against the packaged mkv's --help, lintian's verdict -- and the
-- packaged mkv, config, volume script and nginx config are run together from the root.
-- The package tools come from deploy/setup --test: without them this spec fails.
local H = require "helpers"

local shq = H.shq

local function exists(path) return H.read_file(path) ~= nil end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- One build for the whole file: the package's stdout, stderr, exit code, the .deb and
-- the root it is unpacked into.
local P = {}

local function built()
  assert(P.code == 0, "deploy/package failed (exit " .. tostring(P.code) .. "):\n"
    .. P.stdout .. "\n" .. P.stderr)
  return P
end

describe("deploy/package", function()
  setup(function()
    P.out = H.tmpdir("deb")
    local stdout
    stdout, P.code = H.sh(shq(H.root .. "/deploy/package") .. " --out " .. shq(P.out)
      .. " 2>" .. shq(P.out .. "/stderr"))
    P.stdout, P.stderr = stdout, H.read_file(P.out .. "/stderr") or ""
    local all = lines(stdout)
    P.last = all[#all] or ""
    P.version = H.read_file(H.root .. "/core/main.c"):match('#define MKV_VERSION "([^"]+)"')
    P.arch = trim((H.sh("dpkg --print-architecture")))
    if P.code == 0 and exists(P.last) then
      P.root = H.tmpdir("debroot")
      P.ctl = H.tmpdir("debctl")
      local out, code = H.sh("dpkg-deb -x " .. shq(P.last) .. " " .. shq(P.root)
        .. " && dpkg-deb -e " .. shq(P.last) .. " " .. shq(P.ctl .. "/DEBIAN"))
      assert(code == 0, out)
    end
  end)
  teardown(H.cleanup)

  it("prints the absolute path of mkv_<version>_<arch>.deb as its last line", function()
    built()
    assert.truthy(P.version, "no MKV_VERSION in core/main.c")
    assert.equal(P.out .. "/mkv_" .. P.version .. "_" .. P.arch .. ".deb", P.last)
    assert.truthy(exists(P.last), P.last)
    -- dpkg-deb itself agrees it is a package, of that name, version and architecture.
    local f = H.sh("dpkg-deb -f " .. shq(P.last) .. " Package Version Architecture")
    assert.equal("Package: mkv\nVersion: " .. P.version .. "\nArchitecture: " .. P.arch,
      trim(f))
  end)

  it("lintian ran on it and reports no error", function()
    built()
    assert.truthy(P.stdout:find("deploy/package: lintian mkv_" .. P.version, 1, true),
      P.stdout)
    assert.truthy(P.stdout:find("\ndeploy/package: lintian: 0 errors, %d+ warnings?\n"),
      P.stdout)
    for _, l in ipairs(lines(P.stdout)) do
      assert.falsy(l:match("^%s*E: "), "lintian error: " .. l)
    end
  end)

  it("Depends: the package of every library the binary links, nginx, lua-cjson, adduser",
     function()
    built()
    local depends = trim((H.sh("dpkg-deb -f " .. shq(P.last) .. " Depends")))
    local names = {}
    for alt in depends:gsub("%b()", ""):gmatch("[^,|]+") do
      names[trim(alt):gsub(":%w+$", "")] = true
    end
    for _, want in ipairs({ "libuv1", "libluajit2-5.1-2", "libssl3", "libcjson1", "nginx",
                            "lua-cjson", "adduser" }) do
      assert.truthy(names[want], want .. " is not in Depends: " .. depends)
    end
    local leveldb = false
    for name in pairs(names) do leveldb = leveldb or name:match("^libleveldb") ~= nil end
    assert.truthy(leveldb, "no libleveldb in Depends: " .. depends)
    -- Each shared library the packaged binary needs comes from a package in Depends
    -- (dpkg-shlibdeps computed them; a hand-written list would miss one some day).
    local multiarch = trim((H.sh("dpkg-architecture -qDEB_HOST_MULTIARCH")))
    local needed = H.sh("objdump -p " .. shq(P.root .. "/usr/bin/mkv")
      .. " | awk '$1 == \"NEEDED\" {print $2}'")
    local n = 0
    for lib in needed:gmatch("%S+") do
      local owner, code = H.sh("dpkg -S " .. shq("*/" .. multiarch .. "/" .. lib))
      assert.equal(0, code, lib .. ": no package owns it: " .. owner)
      local pkg = owner:match("^([^:,]+)")
      assert.truthy(names[pkg], lib .. " comes from " .. pkg .. ", not in Depends: " .. depends)
      n = n + 1
    end
    assert.is_true(n >= 5, "the binary needs only " .. n .. " libraries?\n" .. needed)
  end)

  it("holds every file the operator is promised", function()
    built()
    local r = P.root
    for _, f in ipairs({
      "/usr/bin/mkv",
      "/lib/systemd/system/mkv.service", "/lib/systemd/system/mkv-volume@.service",
      "/lib/systemd/system/mkv-proxy.service",
      "/etc/mkv/config.lua", "/etc/mkv/volume-1.env", "/etc/mkv/proxy.env",
      "/etc/logrotate.d/mkv",
      "/usr/share/mkv/volume", "/usr/share/mkv/proxy",
      "/usr/share/mkv/nginx-volume.conf", "/usr/share/mkv/nginx-proxy.conf",
      "/usr/share/man/man1/mkv.1.gz",
      "/usr/share/doc/mkv/copyright", "/usr/share/doc/mkv/changelog.gz",
      "/usr/share/doc/mkv/README.md", "/usr/share/doc/mkv/config.example.lua",
    }) do
      assert.truthy(exists(r .. f), f .. " is not in the package")
    end
    for _, f in ipairs({ "/usr/bin/mkv", "/usr/share/mkv/volume", "/usr/share/mkv/proxy" }) do
      assert.equal(0, select(2, H.sh("test -x " .. shq(r .. f))), f .. " is not executable")
    end
    -- The scripts and nginx configs are the repository's, byte for byte.
    for _, f in ipairs({ "volume", "proxy", "nginx-volume.conf", "nginx-proxy.conf" }) do
      assert.equal(H.read_file(H.root .. "/deploy/" .. f), H.read_file(r .. "/usr/share/mkv/" .. f),
        f .. " differs from deploy/" .. f)
    end
    -- The changelog is gzip'd and names the version.
    local cl = H.sh("zcat " .. shq(r .. "/usr/share/doc/mkv/changelog.gz"))
    assert.truthy(cl:find("mkv (" .. P.version .. ")", 1, true), cl)
    -- /etc files are conffiles: an upgrade keeps the operator's edits.
    local conffiles = H.read_file(P.ctl .. "/DEBIAN/conffiles") or ""
    for _, f in ipairs({ "/etc/mkv/config.lua", "/etc/mkv/volume-1.env", "/etc/mkv/proxy.env",
                         "/etc/logrotate.d/mkv" }) do
      assert.truthy(conffiles:find(f .. "\n", 1, true), f .. " is not a conffile: " .. conffiles)
    end
    -- Nothing of a build or a spec run leaked in.
    local all = H.sh("cd " .. shq(r) .. " && find . -type f | sort")
    assert.falsy(all:find("/usr/local", 1, true), all)
    assert.falsy(all:find("test_", 1, true), all)
    assert.falsy(all:find("%.so\n"), all)
  end)

  it("the units are deploy/install's with the package's paths, and systemd-analyze verify passes",
     function()
    built()
    local r = P.root
    local function unit(name) return H.read_file(r .. "/lib/systemd/system/" .. name) end
    local mkv, vol, px = unit("mkv.service"), unit("mkv-volume@.service"), unit("mkv-proxy.service")
    assert.truthy(mkv:find("\nExecStart=/usr/bin/mkv -c /etc/mkv/config.lua\n", 1, true), mkv)
    assert.truthy(vol:find("\nExecStart=/usr/share/mkv/volume /srv/mkv/%i\n", 1, true), vol)
    assert.truthy(px:find("\nExecStart=/usr/share/mkv/proxy --state /var/lib/mkv/proxy $PROXY_OPTS\n",
      1, true), px)
    -- Every setting of deploy/systemd that names no install path is there unchanged.
    for _, name in ipairs({ "mkv.service", "mkv-volume@.service", "mkv-proxy.service" }) do
      local packaged = unit(name)
      assert.falsy(packaged:find("/usr/local", 1, true), name)
      for l in H.read_file(H.root .. "/deploy/systemd/" .. name):gmatch("[^\n]+") do
        if not l:match("^#") and not l:find("/usr/local", 1, true) then
          assert.truthy(("\n" .. packaged):find("\n" .. l .. "\n", 1, true),
            name .. " lacks: " .. l)
        end
      end
    end
    -- verify --root resolves ExecStart= inside the root: give it /bin/kill and the
    -- system's own units, as a real machine has them; MANPATH: Documentation=man:mkv(1)
    -- must name the packaged man page.
    local vroot = H.tmpdir("verify")
    assert.equal(0, select(2, H.sh("cp -a " .. shq(r) .. "/. " .. shq(vroot)
      .. " && mkdir -p " .. shq(vroot .. "/bin") .. " " .. shq(vroot .. "/usr/lib/systemd")
      .. " && cp /bin/kill " .. shq(vroot .. "/bin/") .. " && cp -r /lib/systemd/system "
      .. shq(vroot .. "/usr/lib/systemd/"))))
    local out, code = H.sh("MANPATH=" .. shq(vroot .. "/usr/share/man") .. " systemd-analyze verify --root="
      .. shq(vroot) .. " /lib/systemd/system/mkv.service /lib/systemd/system/mkv-volume@.service"
      .. " /lib/systemd/system/mkv-proxy.service")
    assert.equal(0, code, out)
    assert.equal("", out)
  end)

  it("postinst creates the system user mkv and enables or starts nothing", function()
    built()
    local d = P.ctl .. "/DEBIAN/"
    local postinst = H.read_file(d .. "postinst")
    assert.truthy(postinst, "no postinst")
    assert.truthy(postinst:find("adduser --system --group", 1, true), postinst)
    assert.truthy(postinst:find("--home /var/lib/mkv", 1, true), postinst)
    for _, script in ipairs({ "preinst", "postinst", "prerm", "postrm" }) do
      local text = H.read_file(d .. script)
      if text then
        local out, code = H.sh("sh -n " .. shq(d .. script))
        assert.equal(0, code, script .. ": " .. out)
        -- Starting a unit, or enabling one, is what must not happen on install.
        assert.falsy(text:find("systemctl[^\n]* start", 1) or text:find("systemctl[^\n]* enable"),
          script .. " starts or enables a unit:\n" .. text)
        assert.falsy(text:find("deb%-systemd%-invoke[^\n]* start") or
                     text:find("deb%-systemd%-invoke[^\n]* restart") or
                     text:find("_dh_action"), script .. " starts a unit:\n" .. text)
        -- dh_installsystemd --no-enable puts its re-enable under "debian-installed";
        -- without it the same snippet enables every unit on a fresh install.
        if text:find("deb-systemd-helper enable", 1, true) then
          assert.truthy(text:find("if deb-systemd-helper debian-installed", 1, true),
            script .. " enables units on install:\n" .. text)
        end
      end
    end
    -- An upgrade stops nothing either: the operator restarts, volumes before mkv.
    local preinst = H.read_file(d .. "preinst") or ""
    assert.falsy(preinst:find("stop", 1, true), preinst)
  end)

  it("the packaged mkv runs from the root: --version and --help", function()
    built()
    local bin = P.root .. "/usr/bin/mkv"
    local v, code = H.sh(shq(bin) .. " --version")
    assert.equal(0, code, v)
    assert.equal("mkv " .. P.version, trim(v))
    local help, hcode = H.sh(shq(bin) .. " --help")
    assert.equal(0, hcode, help)
    assert.truthy(help:find("Usage: mkv", 1, true), help)
    -- It is a stripped release build, not the spec run's (perhaps sanitized) build.
    local file = H.sh("file -L " .. shq(bin) .. " 2>/dev/null || true")
    if file:find("ELF", 1, true) then assert.truthy(file:find("stripped", 1, true), file) end
    -- The same without file(1): no symbol table (objdump -h never lists .symtab, -t reads
    -- it) and no debug sections.
    local syms, scode = H.sh("objdump -t " .. shq(bin) .. " 2>&1")
    assert.equal(0, scode, syms)
    assert.truthy(syms:find("SYMBOL TABLE:\nno symbols", 1, true), syms)
    local sections, hcode2 = H.sh("objdump -h " .. shq(bin) .. " 2>&1")
    assert.equal(0, hcode2, sections)
    assert.truthy(sections:find(" .text ", 1, true), sections)
    assert.falsy(sections:find(" .debug_", 1, true), sections)
    local asan = H.sh("objdump -p " .. shq(bin) .. " | grep -c 'NEEDED.*asan' || true")
    assert.equal("0", trim(asan))
  end)

  it("the man page covers every command and flag of the packaged mkv --help", function()
    built()
    local help = H.sh(shq(P.root .. "/usr/bin/mkv") .. " --help")
    local roff = H.sh("zcat " .. shq(P.root .. "/usr/share/man/man1/mkv.1.gz"))
    -- The words as a reader sees them: roff's escaped hyphens and font changes gone.
    local text = roff:gsub("\\%-", "-"):gsub("\\f[BIRP]", ""):gsub("\\%(..", "")
    assert.truthy(text:find("\n.TH MKV 1 \"%d%d%d%d%-%d%d%-%d%d\" \"mkv " .. P.version:gsub("%p", "%%%0") .. "\""),
      "the .TH line: " .. (text:match("\n(%.TH[^\n]*)") or "none"))
    local commands, flags = {}, {}
    local in_commands = false
    for l in help:gmatch("[^\n]*") do
      if l:match("^Commands:") then in_commands = true
      elseif l:match("^%S") then in_commands = false end
      local cmd = in_commands and l:match("^  ([%w][%w-]*)")
      if cmd then commands[#commands + 1] = cmd end
      for f in l:gmatch("%f[%w%-]%-%-?[%a][%w-]*") do flags[f] = true end
    end
    assert.is_true(#commands >= 8, "commands read from --help: " .. table.concat(commands, " "))
    local missing = {}
    for _, c in ipairs(commands) do
      -- Each command is an item of its own: .TP, then the command in bold.
      if not text:find("\n%.TP\n%.BI? " .. c:gsub("%-", "%%-") .. "%f[^%w-]")
         and not text:find("\n%.TP\n%.BR " .. c:gsub("%-", "%%-") .. "%f[^%w-]") then
        missing[#missing + 1] = "command " .. c
      end
    end
    local nflags = 0
    for f in pairs(flags) do
      nflags = nflags + 1
      if not text:find("%f[%w%-]" .. f:gsub("%-", "%%-") .. "%f[^%w%-]") then
        missing[#missing + 1] = "flag " .. f
      end
    end
    assert.is_true(nflags >= 20, "flags read from --help: " .. nflags)
    assert.same({}, missing)
    -- man renders it without a warning.
    local out, code = H.sh("MANWIDTH=80 man --warnings -E UTF-8 -l "
      .. shq(P.root .. "/usr/share/man/man1/mkv.1.gz") .. " 2>&1 >/dev/null")
    assert.equal(0, code, out)
    assert.equal("", out)
  end)

  it("the packaged mkv, config, volume script and nginx config serve a PUT and a GET", function()
    built()
    local r = P.root
    -- A volume as mkv-volume@1 runs it: the packaged script, which finds the packaged
    -- nginx-volume.conf next to itself.
    local vdir = H.tmpdir("pkgvol")
    local vport = H.free_port()
    local vol = H.spawn("nginx-pkg", { r .. "/usr/share/mkv/volume", vdir .. "/data" },
      { env = { PORT = tostring(vport), BIND = "127.0.0.1", WORKERS = "1",
                STATE = vdir .. "/state" } })
    H.eventually(function()
      if not vol:alive() then error("the packaged volume exited: " .. vol:log()) end
      local st = H.http("GET", "http://127.0.0.1:" .. vport .. "/", { timeout = 2 })
      return st and st > 0
    end, 10, "the packaged volume")
    -- mkv with the packaged /etc/mkv/config.lua: it loads as shipped; the flags move only
    -- what a scratch run must (its volume, the ports, the index, the log).
    local db = H.tmpdir("pkgdb") .. "/index"
    local port = H.free_port()
    local m = H.spawn("mkv-pkg", { r .. "/usr/bin/mkv", "-c", r .. "/etc/mkv/config.lua",
      "-volumes", "127.0.0.1:" .. vport, "-replicas", "1", "-db", db, "-port", tostring(port),
      "-listen", "127.0.0.1", "-admin", "127.0.0.1:0", "-access-log", "", "server" })
    local url = "http://127.0.0.1:" .. port
    H.eventually(function()
      if not m:alive() then error("the packaged mkv exited: " .. m:log()) end
      local st = H.http("GET", url .. "/?list", { timeout = 2 })
      return st and st > 0
    end, 10, "the packaged mkv")
    local st = H.http("PUT", url .. "/pkgkey", { body = "from the package" })
    assert.equal(201, st, m:log())
    local gst, hdrs = H.http("GET", url .. "/pkgkey")
    assert.equal(302, gst)
    assert.truthy(hdrs.location:find("127.0.0.1:" .. vport, 1, true), hdrs.location)
    local fst, _, body = H.http("GET", url .. "/pkgkey", { follow = true })
    assert.equal(200, fst)
    assert.equal("from the package", body)
    -- An admin command through the running server: its Lua needs lua-cjson at run time
    -- (a dependency of the package).
    local out, code = H.sh(shq(r .. "/usr/bin/mkv") .. " -c " .. shq(r .. "/etc/mkv/config.lua")
      .. " -volumes 127.0.0.1:" .. vport .. " -replicas 1 -db " .. shq(db) .. " verify")
    assert.equal(0, code, out)
  end)

  it("a missing package tool is named, with deploy/setup --test, before any build", function()
    -- A PATH with every command of this machine but lintian and dh.
    local bin = H.tmpdir("nopkgtools")
    assert.equal(0, select(2, H.sh("for f in /usr/local/bin/* /usr/bin/* /bin/*; do [ -e \"$f\" ] || continue; n=$(basename \"$f\"); "
      .. "case $n in lintian|dh) ;; *) [ -e " .. shq(bin) .. "/\"$n\" ] || ln -s \"$f\" " .. shq(bin)
      .. "/\"$n\" ;; esac; done")))
    local out, code = H.sh("PATH=" .. shq(bin) .. " " .. shq(H.root .. "/deploy/package")
      .. " --out " .. shq(bin .. "/out"))
    assert.equal(1, code, out)
    assert.truthy(out:find("missing packages: debhelper lintian (deploy/setup --test installs them)",
      1, true), out)
    assert.falsy(out:find("building", 1, true), out)
    local bad, bcode = H.sh(shq(H.root .. "/deploy/package") .. " --frobnicate")
    assert.equal(2, bcode, bad)
    assert.truthy(bad:find("unknown option --frobnicate", 1, true), bad)
  end)
end)
