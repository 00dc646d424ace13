"""The OpenWrt package: the .ipk that `make ipk` builds, the procd init script, the
default config, and the plain-Linux install. Inspected with standard tools."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from wgagent import config as config_mod
from wgagent import uci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT = os.path.join(ROOT, "init.d", "wgagent")
DEPENDS = ["python3-light", "python3-yaml", "python3-ubus", "python3-structlog"]


FEED = os.path.join(ROOT, "openwrt-package")
SITE = "./usr/lib/python3.11/site-packages/"
# package-pack.mk's control fields, in its order (the optional ones this feed uses)
CONTROL_ORDER = ["Package", "Version", "Depends", "Source", "SourceName", "License", "LicenseFiles",
                 "Section", "SourceDateEpoch", "URL", "Maintainer", "Architecture", "Installed-Size",
                 "Description"]


def feed(folder: str) -> dict:
    """What a feed Makefile declares, read here independently of build_ipk.py."""
    text = open(os.path.join(FEED, folder, "Makefile")).read()
    name = re.search(r"^\$\(eval \$\(call Py3Package,(\S+)\)\)$", text, re.M).group(1)
    block = re.search(rf"^define Package/{re.escape(name)}\n(.*?)^endef", text, re.M | re.S).group(1)
    desc = re.search(rf"^define Package/{re.escape(name)}/description\n(.*?)^endef", text, re.M | re.S).group(1)
    conf = re.search(rf"^define Package/{re.escape(name)}/conffiles\n(.*?)^endef", text, re.M | re.S)
    top = dict(re.findall(r"^([A-Z0-9_]+):=(.*)$", text, re.M))
    pkg = dict(re.findall(r"^\s+([A-Z_]+):=(.*)$", block, re.M))
    return {"name": name, "folder": folder, "top": top, "pkg": pkg,
            "conffiles": conf.group(1).split() if conf else [],
            "description": [line.strip() for line in desc.strip("\n").splitlines()],
            "version": f"{top['PKG_VERSION']}-r{top['PKG_RELEASE']}"}


WGAGENT, STRUCTLOG = feed("wgagent"), feed("python-structlog")

LUCI_NAME = "luci-app-wgagent"
LUCI_DIR = os.path.join(FEED, LUCI_NAME)
# luci.mk (openwrt/luci) and package-pack.mk: what the SDK makes of the LUCI_* variables
LUCI = dict(re.findall(r"^([A-Z0-9_]+):=(.*)$", open(os.path.join(LUCI_DIR, "Makefile")).read(), re.M))
LUCI["LUCI_MAINTAINER"] = LUCI["LUCI_MAINTAINER"].replace("$(PKG_MAINTAINER)", LUCI["PKG_MAINTAINER"])


@pytest.fixture(scope="module")
def ipks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_ipk.py"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    paths = r.stdout.split()
    return {os.path.basename(p).split("_")[0]: p for p in paths}


def _members(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            out[m.name] = (m, tar.extractfile(m).read() if m.isfile() else None)
    return out


def _parts(path: str):
    with open(path, "rb") as f:
        outer = _members(f.read())
    return outer, _members(outer["./control.tar.gz"][1]), _members(outer["./data.tar.gz"][1])


@pytest.fixture(scope="module")
def parts(ipks):
    return _parts(ipks["wgagent"])


def _control(path: str) -> list[tuple[str, str]]:
    """The control file's fields in order, read with tar (continuation lines joined)."""
    text = subprocess.run(f"tar xzOf {path} ./control.tar.gz | tar xzOf - ./control", shell=True,
                          capture_output=True, text=True, check=True).stdout
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith(" "):
            fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line)
        else:
            key, _, value = line.partition(": ")
            fields.append((key, value))
    return fields


def test_make_ipk_builds_wgagent_and_structlog(ipks):
    import wgagent
    assert os.path.basename(ipks["wgagent"]) == f"wgagent_{wgagent.__version__}-r{WGAGENT['top']['PKG_RELEASE']}_all.ipk"
    assert os.path.basename(ipks["python3-structlog"]) == f"python3-structlog_{STRUCTLOG['version']}_all.ipk"
    for path in ipks.values():
        outer, _, _ = _parts(path)
        assert outer["./debian-binary"][1] == b"2.0\n"
        # the same check with the standard tool
        listing = subprocess.run(["tar", "tzf", path], capture_output=True, text=True, check=True).stdout.split()
        assert listing == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]


@pytest.mark.parametrize("mk", [WGAGENT, STRUCTLOG], ids=["wgagent", "python3-structlog"])
def test_control_is_what_the_feed_makefile_declares(ipks, mk):
    path = ipks[mk["name"]]
    fields = _control(path)
    assert [k for k, _ in fields] == CONTROL_ORDER
    f = dict(fields)
    top, pkg = mk["top"], mk["pkg"]
    assert f["Package"] == mk["name"] and f["Version"] == mk["version"]
    assert f["Depends"].split(", ") == ["libc"] + [d.lstrip("+") for d in pkg["DEPENDS"].split()]
    assert f["SourceName"] == top["PKG_NAME"] and f["Source"].endswith("/" + top["PKG_NAME"])
    assert f["License"] == top["PKG_LICENSE"] and f["LicenseFiles"] == top["PKG_LICENSE_FILES"]
    assert f["Maintainer"] == top["PKG_MAINTAINER"]
    assert f["Section"] == pkg["SECTION"] and f["URL"] == pkg["URL"] and f["Architecture"] == pkg["PKGARCH"] == "all"
    # package-pack.mk: each description line with one leading space, after "Description: "
    assert f["Description"] == " " + "\n ".join(mk["description"])
    assert int(f["SourceDateEpoch"]) > 0
    # ipkg-build: the length of the uncompressed data tar
    size = subprocess.run(f"tar xzOf {path} ./data.tar.gz | zcat | wc -c", shell=True,
                          capture_output=True, text=True, check=True).stdout
    assert int(f["Installed-Size"]) == int(size)
    _, control, _ = _parts(path)
    if mk["conffiles"]:
        assert control["./conffiles"][1].decode().split() == sorted(mk["conffiles"])
    else:
        assert "./conffiles" not in control
    # Package/<pkg>/postinst becomes postinst-pkg (BuildPackVariable), sourced by default_postinst
    text = open(os.path.join(FEED, mk["folder"], "Makefile")).read()
    script = re.search(rf"^define Package/{re.escape(mk['name'])}/postinst\n(.*?)^endef", text, re.M | re.S)
    if script:
        assert control["./postinst-pkg"][0].mode == 0o755
        assert control["./postinst-pkg"][1].decode() == script.group(1).replace("$$", "$")
    else:
        assert "./postinst-pkg" not in control
    postinst, prerm = control["./postinst"], control["./prerm"]
    assert postinst[0].mode == 0o755 and prerm[0].mode == 0o755
    # what OpenWrt's SDK generates: enable + start on install (not in an image build), stop on removal
    assert b"default_postinst $0 $@" in postinst[1] and b"IPKG_INSTROOT" in postinst[1]
    assert b"default_prerm $0 $@" in prerm[1]


def test_data_paths_and_modes(parts):
    import wgagent
    _, _, data = parts
    modes = {name: info.mode for name, (info, _) in data.items() if info.isfile()}
    assert modes["./usr/bin/wgagent"] == 0o755
    assert modes["./etc/init.d/wgagent"] == 0o755
    assert modes["./etc/config/wgagent"] == 0o600
    assert modes["./etc/iproute2/rt_protos.d/wgagent.conf"] == 0o644
    # the ubus object (rpcd exec plugin), its ACL, the hotplug example (sourced: no x bit)
    assert modes["./usr/libexec/rpcd/wgagent"] == 0o755
    assert modes["./usr/share/rpcd/acl.d/wgagent.json"] == 0o644
    assert modes["./etc/hotplug.d/wgagent/50-example"] == 0o644
    files = os.path.join(FEED, "wgagent", "files")
    for member, src in (("./usr/libexec/rpcd/wgagent", "wgagent.rpcd"), ("./etc/hotplug.d/wgagent/50-example",
                        "wgagent.hotplug"), ("./usr/share/rpcd/acl.d/wgagent.json", "wgagent.acl.json")):
        assert data[member][1] == open(os.path.join(files, src), "rb").read()
    json.loads(data["./usr/share/rpcd/acl.d/wgagent.json"][1])
    assert SITE + "wgagent/cli.pyc" in modes and SITE + "wgagent/daemon.pyc" in modes
    assert not any(n.endswith(".py") for n in modes)  # byte code only, as Py3Package ships it
    assert all(info.uid == 0 and info.gid == 0 for info, _ in data.values())
    assert data["./etc/init.d/wgagent"][1] == open(INIT, "rb").read()
    assert data["./usr/bin/wgagent"][1].startswith(b"#!/usr/bin/python3\n")
    assert b"152\twgagent" in data["./etc/iproute2/rt_protos.d/wgagent.conf"][1]
    # the wheel's dist-info, as python-installer leaves it in the SDK build
    info = f"{SITE}wgagent-{wgagent.__version__}.dist-info/"
    assert f"Version: {wgagent.__version__}" in data[info + "METADATA"][1].decode()
    assert "wgagent = wgagent.cli:main" in data[info + "entry_points.txt"][1].decode()
    record = data[info + "RECORD"][1].decode()
    assert "wgagent/cli.py," in record and "../../../bin/wgagent," in record


def test_structlog_package_paths(ipks):
    _, _, data = _parts(ipks["python3-structlog"])
    names = {n for n, (i, _) in data.items() if i.isfile()}
    assert SITE + "structlog/__init__.pyc" in names and SITE + "structlog/stdlib.pyc" in names
    assert not any(n.endswith(".py") for n in names)
    assert f"{SITE}structlog-{STRUCTLOG['top']['PKG_VERSION']}.dist-info/METADATA" in names
    assert all(n.startswith(SITE) for n in names)


@pytest.fixture(scope="module")
def installed(ipks, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    for path in ipks.values():
        subprocess.run(f"tar xzf {path} -O ./data.tar.gz | tar xzf - -C {root}", shell=True, check=True)
    return root


def test_structlog_imports_from_its_package_alone(ipks, installed, tmp_path):
    # -S: no site-packages, only the standard library and the package's data
    env = dict(os.environ, PYTHONPATH=str(installed / SITE))
    r = subprocess.run([sys.executable, "-S", "-c", "import sys, structlog; print(structlog.__file__); "
                        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    where, modules = r.stdout.splitlines()
    assert where.startswith(str(installed))
    # standard modules that OpenWrt ships apart from python3-light must be in Depends
    # (lzma, bz2 and ssl are imported inside try by shutil and asyncio)
    split = {"asyncio": "python3-asyncio", "uuid": "python3-uuid", "logging": "python3-logging",
             "ctypes": "python3-ctypes", "email": "python3-email", "urllib": "python3-urllib",
             "xml": "python3-xml", "sqlite3": "python3-sqlite3", "decimal": "python3-decimal",
             "multiprocessing": "python3-multiprocessing", "unittest": "python3-unittest",
             "dbm": "python3-dbm", "pydoc": "python3-pydoc", "readline": "python3-readline"}
    depends = dict(_control(ipks["python3-structlog"]))["Depends"].split(", ")
    missing = {split[m] for m in modules.split() if m in split} - set(depends)
    assert not missing, f"import structlog needs {missing}"


def test_installed_into_a_root_it_runs_help_and_check(installed, tmp_path):
    root = installed
    env = dict(os.environ, PYTHONPATH=str(root / SITE))
    entry = [sys.executable, str(root / "usr/bin/wgagent")]
    help_ = subprocess.run(entry + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "run" in help_.stdout and "status" in help_.stdout
    # the modules come from the packages, not from the source tree or the venv
    where = subprocess.run([sys.executable, "-c", "import wgagent.cli, structlog; "
                            "print(wgagent.cli.__file__); print(structlog.__file__)"],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path), check=True).stdout
    assert all(w.startswith(str(root)) for w in where.split())
    check = subprocess.run(entry + ["check", "--config", str(root / "etc/config/wgagent")],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout


def test_one_version_and_a_numeric_release():
    import wgagent
    assert WGAGENT["top"]["PKG_VERSION"] == wgagent.__version__
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split()[-1] == wgagent.__version__, out.stderr
    for mk in (WGAGENT, STRUCTLOG):  # apk takes -r<digits> only
        assert mk["top"]["PKG_RELEASE"].isdigit()


def _make_var(folder: str, line: str, var: str) -> str:
    mk = os.path.join(folder, "probe.mk")
    with open(mk, "w") as f:
        f.write(line + f"\nall:\n\t@echo $({var})\n")
    try:
        return subprocess.run(["make", "-s", "-C", folder, "-f", "probe.mk"], capture_output=True,
                              text=True, check=True).stdout.strip()
    finally:
        os.remove(mk)


def test_feed_folder_builds_from_the_checkout_or_from_src(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    text = open(os.path.join(FEED, "wgagent", "Makefile")).read()
    line = re.search(r"^WGAGENT_SRC:=.*$", text, re.M).group(0)
    # a checkout, and a feed that reaches it through symlinks as scripts/feeds makes them
    checkout = tmp_path / "checkout"
    pkg = checkout / "openwrt-package" / "wgagent"
    pkg.mkdir(parents=True)
    (tmp_path / "sdk/package/feeds/wga").mkdir(parents=True)
    os.symlink(checkout / "openwrt-package", tmp_path / "sdk/package/feeds/wga/all")
    assert _make_var(str(pkg), line, "WGAGENT_SRC") == str(checkout)
    assert _make_var(str(tmp_path / "sdk/package/feeds/wga/all/wgagent"), line, "WGAGENT_SRC") == str(checkout)
    (pkg / "src").mkdir()
    (pkg / "src" / "setup.py").write_text("")
    assert _make_var(str(pkg), line, "WGAGENT_SRC") == str(pkg / "src")
    # what Build/Prepare and the install take from there is in the checkout, and
    # `make feed-src` copies the same
    prepare = re.search(r"addprefix \$\(WGAGENT_SRC\)/,([^)]*)\)", text).group(1).split()
    used = prepare + re.findall(r"\$\(WGAGENT_SRC\)/(\w[\w./-]*)", text)
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in used), used
    feed_src = open(os.path.join(ROOT, "Makefile")).read().split("feed-src:")[1].split("\n\n")[0]
    assert all(p.split("/")[0] in feed_src for p in used)


def test_default_config_parses_and_is_the_documented_default():
    path = os.path.join(ROOT, "openwrt-package", "wgagent", "files", "wgagent.config")
    cfg = config_mod.load(path)
    assert cfg.agent == config_mod.AgentConfig() and cfg.warnings == ()


# --- the procd init script, sourced with recording stand-ins

# Stand-ins for /etc/rc.common, /lib/functions/procd.sh and /lib/functions.sh. The
# config functions read CONFIG_<section>_<option> and CONFIG_SECTIONS, which is where
# functions.sh's config_load leaves a parsed config.
STANDINS = r"""
LOG="$WGA_LOG"
procd_open_instance() { echo "open_instance $*" >> "$LOG"; }
procd_set_param() { echo "set_param $*" >> "$LOG"; }
procd_close_instance() { echo "close_instance" >> "$LOG"; }
procd_add_reload_trigger() { echo "reload_trigger $*" >> "$LOG"; }
procd_add_interface_trigger() { echo "interface_trigger $*" >> "$LOG"; }
procd_send_signal() { echo "send_signal $*" >> "$LOG"; }
procd_running() { echo "running? $*" >> "$LOG"; [ "$WGA_RUNNING" = 1 ]; }
# rc.common's start: start_service, then procd_close_service calls service_triggers
start() { echo "start" >> "$LOG"; start_service; service_triggers; }
# rc.common's reload when USE_PROCD is set: reload_service if the script has one
reload() { echo "reload" >> "$LOG"; reload_service; }
config_load() { echo "config_load $1" >> "$LOG"; }
config_get() { eval "$1=\${CONFIG_$2_$3:-$4}"; }
config_get_bool() {
	local _v
	eval "_v=\${CONFIG_$2_$3:-$4}"
	case "$_v" in
		1|on|true|yes|enabled) _v=1 ;;
		0|off|false|no|disabled) _v=0 ;;
		*) _v="$4" ;;
	esac
	eval "$1=\$_v"
}
config_foreach() {
	local _fn="$1" _type="$2" _s _t
	for _s in $CONFIG_SECTIONS; do
		eval "_t=\$CONFIG_${_s}_TYPE"
		[ "$_t" = "$_type" ] && "$_fn" "$_s"
	done
	return 0
}
"""


def run_init(tmp_path, uci_text: str, *calls: str, running: bool = False) -> list[str]:
    """Source the init script under busybox sh (OpenWrt's shell) and call functions."""
    lines, names = [], []
    for i, s in enumerate(uci.parse(uci_text)):
        name = s.name or f"cfg{i:06x}"
        names.append(name)
        lines.append(f"CONFIG_{name}_TYPE='{s.type}'")
        for key, value in s.options.items():
            lines.append(f"CONFIG_{name}_{key}='{value}'")
    lines.append(f"CONFIG_SECTIONS='{' '.join(names)}'")
    log = tmp_path / "calls.log"
    log.write_text("")
    script = STANDINS + "\n".join(lines) + f"\n. {INIT}\n" + "\n".join(calls) + "\n"
    env = dict(os.environ, WGA_LOG=str(log), WGA_RUNNING="1" if running else "0")
    r = subprocess.run([_busybox(), "sh", "-c", script], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines()


def _busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        pytest.skip("needs busybox (apt-get install busybox): OpenWrt's shell")
    return path


S1 = """
config agent 'main'
	option enabled '1'
config interface 'wg0'
	option idle_timeout '3'
config interface 'wg_s2s'
config peer 'phone'
	option interface 'wg0'
"""


def test_start_service_runs_one_respawning_instance(tmp_path):
    calls = run_init(tmp_path, S1, "start_service")
    assert calls == [
        "config_load wgagent",
        "open_instance main",
        "set_param command /usr/bin/wgagent run",
        "set_param respawn 3600 5 5",
        "set_param stderr 1",
        "set_param term_timeout 15",
        "close_instance",
    ]
    assert not any("stdout" in c for c in calls)  # the daemon logs to syslog itself: once per line


def test_triggers_reload_on_a_config_change_event_and_on_the_wireguard_networks(tmp_path):
    # the reload trigger fires on procd's config.change event for wgagent, which rpcd
    # sends after `ubus call uci commit` (LuCI) and reload_config after a change; a
    # plain `uci commit` sends nothing (test_uci_commit_alone_tells_nobody)
    calls = run_init(tmp_path, S1, "service_triggers")
    assert calls == [
        "reload_trigger wgagent",
        "config_load wgagent",
        "interface_trigger interface.* wg0 /etc/init.d/wgagent reload",
        "interface_trigger interface.* wg_s2s /etc/init.d/wgagent reload",
    ]


def test_disabled_starts_nothing(tmp_path):
    calls = run_init(tmp_path, S1.replace("option enabled '1'", "option enabled '0'"), "start_service")
    assert calls == ["config_load wgagent"]
    assert "open_instance main" in run_init(tmp_path, "config interface 'wg0'\n", "start_service")  # default on
    # the daemon takes its one agent section by any name, or none: so does the init script
    for head in ("config agent 'globals'", "config agent"):
        text = S1.replace("config agent 'main'", head)
        assert "open_instance main" in run_init(tmp_path, text, "start_service")
        assert run_init(tmp_path, text.replace("option enabled '1'", "option enabled 'no'"),
                        "start_service") == ["config_load wgagent"]


S1_PLUS = S1 + "config interface 'wg_new'\n"


def test_reload_reregisters_triggers_then_sighups_without_a_restart(tmp_path):
    # an interface section committed since the start gets its trigger on reload
    calls = run_init(tmp_path, S1_PLUS, "reload_service", running=True)
    assert calls[:2] == ["running? wgagent main", "start"]
    assert "interface_trigger interface.* wg_new /etc/init.d/wgagent reload" in calls
    # the instance is handed to procd unchanged (procd then keeps it running) ...
    assert calls[calls.index("start") + 1:].count("open_instance main") == 1
    assert calls[2:9] == run_init(tmp_path, S1_PLUS, "start_service")
    # ... and the daemon rereads its config on SIGHUP
    assert calls[-1] == "send_signal wgagent main HUP"


def test_reload_of_a_stopped_or_disabled_daemon_sends_no_signal(tmp_path):
    calls = run_init(tmp_path, S1, "reload_service", running=False)
    assert calls[:2] == ["running? wgagent main", "start"] and "open_instance main" in calls
    assert not any(c.startswith("send_signal") for c in calls)  # just started: it has read the config
    calls = run_init(tmp_path, S1.replace("option enabled '1'", "option enabled '0'"), "reload_service",
                     running=True)
    assert "open_instance main" not in calls  # procd stops the instance it no longer gets
    assert not any(c.startswith("send_signal") for c in calls)


# --- after `uci commit wgagent`: who tells procd (README, "Scenario S1 with uci")
#
# Stand-ins for what runs on the router, with the paths under $ROOT:
# - reload_config: the steps of OpenWrt's /sbin/reload_config (openwrt/openwrt
#   package/system/procd/files/reload_config, run once by /etc/init.d/boot at the end
#   of boot()): the `uci show` of every config is hashed, each config whose hash
#   differs from the one in /var/run/config.md5 gets a config.change event, and the
#   new hashes replace the file. `md5sum -c` checks only the configs the file lists:
#   one that appeared since (opkg install after boot) gets no event, only a line.
# - uci: `show` prints what wgagent.uci reads (the format of `uci show`); `commit`
#   puts the staged file in place and tells nobody (libuci links no ubus: openwrt/uci
#   CMakeLists.txt links ubox only, and cli.c's commit ends in uci_commit, a file write).
# - ubus: `call service event JSON` appends the event to $ROOT/events for the procd
#   double below.
RELOAD_CONFIG = r"""#!/bin/sh
md5file="$ROOT/var/run/config.md5"
cd "$ROOT/etc/config" && dir=$(mktemp -d) && [ -d "$dir" ] || exit 1
for conf in *; do
	uci show "$conf" > "$dir/$conf"
done
cd "$dir"
if [ -f "$md5file" ]; then
	md5sum -c "$md5file" 2>/dev/null | awk -F: '/FAILED$/ {print $1}' | while read -r conf; do
		ubus call service event "{'type':'config.change','data':{'package':'$conf'}}"
	done
fi
md5sum * > "$md5file"
cd / && rm -rf "$dir"
"""
UCI_STANDIN = """#!{python}
import os, sys
sys.path.insert(0, {src!r})
from wgagent import uci
root, (cmd, conf) = os.environ["ROOT"], sys.argv[1:3]
if cmd == "show":
    for s in uci.parse(open(os.path.join(root, "etc/config", conf)).read(), conf):
        print(f"{{conf}}.{{s.label}}={{s.type}}")
        for key, value in s.options.items():
            print(f"{{conf}}.{{s.label}}.{{key}}=" + " ".join(uci.quote(v) for v in (value if isinstance(value, list) else [value])))
elif cmd == "commit":
    os.replace(os.path.join(root, "tmp/.uci", conf), os.path.join(root, "etc/config", conf))
"""
UBUS_STANDIN = """#!/bin/sh
[ "$1 $2 $3" = "call service event" ] && echo "$4" >> "$ROOT/events"
"""


class Router:
    """A root with /etc/config, /var/run/config.md5 and the stand-ins above; busybox
    (OpenWrt's) gives sh, md5sum, awk, mktemp and rm."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.root = tmp_path / "root"
        self.bin = tmp_path / "bin"
        for d in (self.root / "etc/config", self.root / "var/run", self.root / "tmp/.uci", self.bin):
            d.mkdir(parents=True)
        for applet in ("sh", "md5sum", "awk", "mktemp", "rm"):
            os.symlink(_busybox(), self.bin / applet)
        for name, text in (("reload_config", RELOAD_CONFIG), ("ubus", UBUS_STANDIN),
                           ("uci", UCI_STANDIN.format(python=sys.executable, src=ROOT))):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.env = dict(os.environ, ROOT=str(self.root), PATH=str(self.bin), TMPDIR=str(tmp_path))
        self.write("network", "config interface 'lan'\n\toption proto 'static'\n")

    def write(self, conf: str, text: str) -> None:
        """The file as opkg or an editor leaves it."""
        (self.root / "etc/config" / conf).write_text(text)

    def config(self, conf: str) -> str:
        return (self.root / "etc/config" / conf).read_text()

    def uci_commit(self, conf: str, text: str) -> None:
        """`uci set ...` staged the new text; `uci commit CONF` writes it."""
        (self.root / "tmp/.uci" / conf).write_text(text)
        subprocess.run([str(self.bin / "uci"), "commit", conf], env=self.env, check=True)

    def reload_config(self) -> list[dict]:
        """Run reload_config; the events it sent to procd."""
        events = self.root / "events"
        events.write_text("")
        r = subprocess.run([str(self.bin / "sh"), str(self.bin / "reload_config")], env=self.env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # json-c, which the ubus CLI parses with, takes single-quoted strings
        return [json.loads(line.replace("'", '"')) for line in events.read_text().splitlines()]

    def procd(self, events: list[dict], running: bool = True) -> list[list[str]]:
        """procd's side (procd service/trigger.c): the init script's triggers, as its
        service_triggers registers them, matched against each event; a command
        already waiting out its delay is not queued again (trigger_command_add), so it
        runs once. Returns the calls of each run of `/etc/init.d/wgagent reload`."""
        text = self.config("wgagent")
        registered = run_init(self.tmp_path, text, "service_triggers")
        packages = {c.split()[1] for c in registered if c.startswith("reload_trigger ")}
        queued: list[str] = []
        for event in events:
            if event["type"] == "config.change" and event["data"]["package"] in packages:
                command = "/etc/init.d/wgagent reload"  # procd.sh _procd_add_reload_trigger
                if command not in queued:
                    queued.append(command)
        return [run_init(self.tmp_path, text, "reload", running=running) for _ in queued]


S1_EDITED = S1 + "config peer 'laptop'\n\toption interface 'wg0'\n"


def _sighups(runs: list[list[str]]) -> int:
    return sum(c == "send_signal wgagent main HUP" for run in runs for c in run)


def test_uci_commit_alone_tells_nobody(tmp_path):
    router = Router(tmp_path)
    router.write("wgagent", S1)
    assert router.reload_config() == []  # at boot: no md5 file yet, so no event; it is filled
    router.uci_commit("wgagent", S1_EDITED)
    assert router.config("wgagent") == S1_EDITED
    assert not (router.root / "events").read_text()  # nothing reached procd: no reload, no SIGHUP


def test_reload_config_after_a_change_to_a_config_seen_at_boot_reloads_once(tmp_path):
    router = Router(tmp_path)
    router.write("wgagent", S1)
    assert router.reload_config() == []  # /etc/init.d/boot
    assert router.procd(router.reload_config()) == []  # nothing changed: nothing sent
    router.uci_commit("wgagent", S1_EDITED)
    router.write("network", "config interface 'lan'\n\toption proto 'dhcp'\n")
    events = router.reload_config()
    assert sorted(e["data"]["package"] for e in events) == ["network", "wgagent"]
    runs = router.procd(events)
    assert len(runs) == 1 and runs[0][:2] == ["reload", "running? wgagent main"]
    assert _sighups(runs) == 1
    # a comment changes no `uci show`: no event
    router.uci_commit("wgagent", "# note\n" + S1_EDITED)
    assert router.reload_config() == []


def test_reload_config_is_silent_for_a_config_not_seen_since_boot(tmp_path):
    router = Router(tmp_path)
    assert router.reload_config() == []  # boot, before wgagent is installed
    router.write("wgagent", S1)  # opkg install (postinst starts wgagent, which reads it)
    router.uci_commit("wgagent", S1_EDITED)
    assert router.reload_config() == []  # the md5 file had no line for wgagent: no event ...
    assert "  wgagent" in (router.root / "var/run/config.md5").read_text()  # ... only a line now
    # from then on a change does reach procd
    router.uci_commit("wgagent", S1_EDITED + "config interface 'wg9'\n")
    assert _sighups(router.procd(router.reload_config())) == 1


def test_init_reload_always_rereads(tmp_path):
    router = Router(tmp_path)
    assert router.reload_config() == []
    router.write("wgagent", S1)
    router.uci_commit("wgagent", S1_EDITED)
    assert router.procd(router.reload_config()) == []  # the silent case above
    # what the README says always works: /etc/init.d/wgagent reload
    calls = run_init(tmp_path, router.config("wgagent"), "reload", running=True)
    assert calls[0] == "reload" and calls[-1] == "send_signal wgagent main HUP"


SHELL_FILES = [INIT] + [os.path.join(FEED, "wgagent", "files", f) for f in ("wgagent.rpcd", "wgagent.hotplug")]


@pytest.mark.parametrize("path", SHELL_FILES, ids=os.path.basename)
def test_shell_scripts_parse_in_busybox_sh_and_pass_shellcheck(path):
    r = subprocess.run([_busybox(), "sh", "-n", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("needs shellcheck (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-s", "sh", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_feed_makefiles_name_what_the_ipk_holds():
    text = open(os.path.join(ROOT, "openwrt-package", "wgagent", "Makefile")).read()
    assert "PKGARCH:=all" in text and "$(eval $(call Py3Package,wgagent))" in text
    assert "+" + " +".join(DEPENDS) in text
    assert "/etc/config/wgagent" in text.split("define Package/wgagent/conffiles")[1]
    structlog = open(os.path.join(ROOT, "openwrt-package", "python-structlog", "Makefile")).read()
    assert "PYPI_NAME:=structlog" in structlog and "PKG_HASH:=" in structlog
    assert "$(eval $(call Py3Package,python3-structlog))" in structlog


@pytest.mark.root
def test_make_install_into_a_destdir(tmp_path):
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "-C", ROOT, "install", f"DESTDIR={dest}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    unit = (dest / "etc/systemd/system/wgagent.service").read_text()
    assert "ExecStart=/usr/local/bin/wgagent run --config /etc/wgagent/config.yaml" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert os.readlink(dest / "usr/local/bin/wgagent") == "/opt/wgagent/bin/wgagent"
    cfg = config_mod.load(str(dest / "etc/wgagent/config.yaml"))
    assert cfg.interface("wg0") is not None
    script = dest / "opt/wgagent/bin/wgagent"
    # staged: the script names the venv where it will live, not the staging directory
    assert script.read_text().splitlines()[0] .startswith("#!/opt/wgagent/bin/python")
    assert not [p for p in (dest / "opt/wgagent/bin").iterdir()
                if p.is_file() and not p.is_symlink() and str(dest).encode() in p.read_bytes()]
    out = subprocess.run([str(dest / "opt/wgagent/bin/python"), str(script), "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "status" in out.stdout


def _install_section() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    return text.split("## Install", 1)[1].split("\n## ", 1)[0]


def test_readme_install_lines_name_what_make_ipk_builds(ipks):
    # wgagent and structlog in Install; the LuCI pages in the LuCI section
    line = next(ln for ln in _install_section().splitlines() if ln.strip().startswith("opkg install"))
    assert sorted(line.split()[2:]) == sorted("./" + os.path.basename(p) for n, p in ipks.items() if n != LUCI_NAME)
    luci = open(os.path.join(ROOT, "README.md")).read().split("\n## LuCI", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in luci.splitlines() if ln.strip().startswith("opkg install"))
    assert line.split()[2:] == ["./" + os.path.basename(ipks[LUCI_NAME])]


# --- luci-app-wgagent: the LuCI pages, built as luci.mk builds a LuCI app

def test_luci_ipk_control_is_what_luci_mk_makes_of_the_makefile(ipks):
    path = ipks[LUCI_NAME]
    assert os.path.basename(path) == f"{LUCI_NAME}_{LUCI['PKG_VERSION']}-r{LUCI['PKG_RELEASE']}_all.ipk"
    fields = _control(path)
    assert [k for k, _ in fields] == [k for k in CONTROL_ORDER if k != "LicenseFiles"]
    f = dict(fields)
    assert f["Package"] == LUCI["PKG_NAME"] == LUCI_NAME  # luci.mk: PKG_NAME?=$(LUCI_NAME), the folder
    assert f["Version"] == f"{LUCI['PKG_VERSION']}-r{LUCI['PKG_RELEASE']}"  # luci.mk since openwrt/luci#7042
    assert f["Depends"].split(", ") == ["libc"] + [d.lstrip("+") for d in LUCI["LUCI_DEPENDS"].split()]
    assert f["Depends"].split(", ")[1:] == ["luci-base", "wgagent"]
    assert f["Source"] == f"feeds/luci/applications/{LUCI_NAME}" and f["SourceName"] == LUCI_NAME
    assert (f["Section"], f["Architecture"], f["License"]) == ("luci", "all", LUCI["PKG_LICENSE"])
    assert (f["URL"], f["Maintainer"]) == (LUCI["LUCI_URL"], LUCI["LUCI_MAINTAINER"])
    assert f["Description"] == " " + LUCI["LUCI_DESCRIPTION"]
    _, control, data = _parts(path)
    assert "./conffiles" not in control
    assert b"default_postinst $0 $@" in control["./postinst"][1] and b"default_prerm $0 $@" in control["./prerm"][1]
    # luci.mk's own postinst, which default_postinst runs: LuCI's caches cleared, rpcd rereads the ACLs
    pkg = control["./postinst-pkg"]
    assert pkg[0].mode == 0o755
    assert pkg[1].decode().splitlines() == ['[ -n "${IPKG_INSTROOT}" ] || {', "\trm -f /tmp/luci-indexcache",
                                            "\trm -rf /tmp/luci-modulecache/", "\tkillall -HUP rpcd 2>/dev/null",
                                            "\texit 0", "}"]
    size = subprocess.run(f"tar xzOf {path} ./data.tar.gz | zcat | wc -c", shell=True,
                          capture_output=True, text=True, check=True).stdout
    assert int(f["Installed-Size"]) == int(size)
    r = subprocess.run([_busybox(), "sh", "-n", "-c", pkg[1].decode()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_luci_ipk_holds_htdocs_under_www_and_root_under_slash(ipks):
    _, _, data = _parts(ipks[LUCI_NAME])
    want = {}
    for src, dest in (("htdocs", "./www"), ("root", ".")):
        for dirpath, _, names in os.walk(os.path.join(LUCI_DIR, src)):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), os.path.join(LUCI_DIR, src))
                want[f"{dest}/{rel}"] = open(os.path.join(dirpath, n), "rb").read()
    files = {n: body for n, (info, body) in data.items() if info.isfile()}
    assert files == want
    assert set(files) == {"./www/luci-static/resources/view/wgagent/status.js",
                          "./www/luci-static/resources/view/wgagent/settings.js",
                          "./www/luci-static/resources/wgagent/validate.js",
                          "./usr/share/luci/menu.d/luci-app-wgagent.json",
                          "./usr/share/rpcd/acl.d/luci-app-wgagent.json"}
    assert all(info.mode == (0o755 if info.isdir() else 0o644) and info.uid == 0 for info, _ in data.values())
    for name in ("./usr/share/luci/menu.d/luci-app-wgagent.json", "./usr/share/rpcd/acl.d/luci-app-wgagent.json"):
        json.loads(files[name])


def test_luci_makefile_finds_luci_mk_in_the_luci_feed_or_beside_it(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    text = open(os.path.join(LUCI_DIR, "Makefile")).read()
    expr = re.search(r"^include (.*luci\.mk.*)$", text, re.M).group(1)
    line = f"TOPDIR:=/sdk\nLUCI_MK:={expr}"
    # this repository's feed: no luci.mk two levels up, so the SDK's LuCI feed
    checkout = tmp_path / "checkout" / "openwrt-package" / LUCI_NAME
    checkout.mkdir(parents=True)
    assert _make_var(str(checkout), line, "LUCI_MK") == "/sdk/feeds/luci/luci.mk"
    # openwrt/luci's applications/, as the apps there include it
    upstream = tmp_path / "luci" / "applications" / LUCI_NAME
    upstream.mkdir(parents=True)
    (tmp_path / "luci" / "luci.mk").write_text("")
    assert _make_var(str(upstream), line, "LUCI_MK") == "../../luci.mk"
    assert "include $(TOPDIR)/rules.mk" in text and "LUCI_PKGARCH:=all" in text


def test_readme_follows_every_uci_commit_of_wgagent_with_a_reload():
    # a CLI commit tells procd nothing (test_uci_commit_alone_tells_nobody): an
    # example that commits goes on with a reload, and no comment says the commit does it
    text = open(os.path.join(ROOT, "README.md")).read()
    commits = [m.end() for m in re.finditer(r"uci commit wgagent", text)]
    assert commits
    for end in commits:
        line = text[text.rfind("\n", 0, end) + 1:text.find("\n", end)]
        assert "procd reloads" not in line, line
        follow = text[end:end + 100]
        assert "/etc/init.d/wgagent reload" in follow or "reload_config" in follow, text[end - 60:end + 100]


def test_readme_install_commands_are_valid_shell():
    # the indented blocks are commands to paste: each must parse (no stray quotes)
    blocks, block = [], []
    for ln in _install_section().splitlines() + [""]:
        if ln.startswith("    "):
            block.append(ln[4:])
        elif block and ln.strip() == "":
            blocks.append("\n".join(block))
            block = []
    assert any("uci set wgagent.phone.public_key" in b for b in blocks)
    for b in blocks:
        r = subprocess.run([_busybox(), "sh", "-n", "-c", b.replace("<sdk>", "sdk")], capture_output=True, text=True)
        assert r.returncode == 0, f"{b}\n{r.stderr}"


def test_the_bird_examples_are_shipped(parts):
    """README "Many sites": the BIRD configs, as examples/ has them, in /usr/share/wgagent."""
    _, _, data = parts
    for name in ("bird-babel.conf", "bird-ospf.conf"):
        info, body = data[f"./usr/share/wgagent/{name}"]
        assert info.mode == 0o644
        assert body == open(os.path.join(ROOT, "examples", name), "rb").read()
