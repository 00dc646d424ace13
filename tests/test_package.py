"""The OpenWrt package: the .ipk that `make ipk` builds, the procd init script, the
default config, and the plain-Linux install. Inspected with standard tools."""

from __future__ import annotations

import io
import os
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


@pytest.fixture(scope="module")
def ipk(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    path = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_ipk.py"), str(out)],
                          capture_output=True, text=True, check=True).stdout.strip()
    return path


def _members(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            out[m.name] = (m, tar.extractfile(m).read() if m.isfile() else None)
    return out


@pytest.fixture(scope="module")
def parts(ipk):
    with open(ipk, "rb") as f:
        outer = _members(f.read())
    return outer, _members(outer["./control.tar.gz"][1]), _members(outer["./data.tar.gz"][1])


def test_outer_archive_is_what_opkg_reads(ipk, parts):
    assert os.path.basename(ipk) == "wgagent_0.1.0-r1_all.ipk"
    outer, _, _ = parts
    assert list(outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
    assert outer["./debian-binary"][1] == b"2.0\n"
    # the same check with the standard tool
    listing = subprocess.run(["tar", "tzf", ipk], capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]


def test_control_fields_depends_conffiles_scripts(parts):
    _, control, _ = parts
    fields = {}
    for line in control["./control"][1].decode().splitlines():
        if not line.startswith(" "):
            key, _, value = line.partition(": ")
            fields[key] = value
    assert fields["Package"] == "wgagent" and fields["Version"] == "0.1.0-r1"
    assert fields["Architecture"] == "all" and fields["Section"] == "net"
    assert [d.strip() for d in fields["Depends"].split(",")] == ["libc"] + DEPENDS
    assert int(fields["Installed-Size"]) > 0
    assert control["./conffiles"][1] == b"/etc/config/wgagent\n"
    postinst, prerm = control["./postinst"], control["./prerm"]
    assert postinst[0].mode == 0o755 and prerm[0].mode == 0o755
    # what OpenWrt's SDK generates: enable + start on install (not in an image build), stop on removal
    assert b"default_postinst $0 $@" in postinst[1] and b"IPKG_INSTROOT" in postinst[1]
    assert b"default_prerm $0 $@" in prerm[1]


def test_data_paths_and_modes(parts):
    _, _, data = parts
    modes = {name: info.mode for name, (info, _) in data.items() if info.isfile()}
    assert modes["./usr/bin/wgagent"] == 0o755
    assert modes["./etc/init.d/wgagent"] == 0o755
    assert modes["./etc/config/wgagent"] == 0o600
    assert modes["./etc/iproute2/rt_protos.d/wgagent.conf"] == 0o644
    site = "./usr/lib/python3.11/site-packages/wgagent/"
    assert site + "cli.pyc" in modes and site + "daemon.pyc" in modes
    assert not any(n.endswith(".py") for n in modes)  # byte code only, as Py3Package ships it
    assert all(info.uid == 0 and info.gid == 0 for info, _ in data.values())
    assert data["./etc/init.d/wgagent"][1] == open(INIT, "rb").read()
    assert data["./usr/bin/wgagent"][1].startswith(b"#!/usr/bin/python3\n")
    assert b"152\twgagent" in data["./etc/iproute2/rt_protos.d/wgagent.conf"][1]


def test_installed_into_a_root_it_runs_help_and_check(ipk, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(f"tar xzf {ipk} -O ./data.tar.gz | tar xzf - -C {root}", shell=True, check=True)
    env = dict(os.environ, PYTHONPATH=str(root / "usr/lib/python3.11/site-packages"))
    entry = [sys.executable, str(root / "usr/bin/wgagent")]
    help_ = subprocess.run(entry + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "run" in help_.stdout and "status" in help_.stdout
    # the modules come from the package, not from the source tree
    where = subprocess.run([sys.executable, "-c", "import wgagent.cli; print(wgagent.cli.__file__)"],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path), check=True).stdout
    assert where.strip().startswith(str(root))
    check = subprocess.run(entry + ["check", "--config", str(root / "etc/config/wgagent")],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout


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
start() { echo "start" >> "$LOG"; }
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


def test_triggers_reload_on_commit_and_on_the_wireguard_networks(tmp_path):
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


def test_reload_is_a_sighup_not_a_restart(tmp_path):
    assert run_init(tmp_path, S1, "reload_service", running=True) == [
        "running? wgagent main", "send_signal wgagent main HUP"]
    assert run_init(tmp_path, S1, "reload_service", running=False) == ["running? wgagent main", "start"]


def test_init_script_syntax_and_shellcheck():
    r = subprocess.run([_busybox(), "sh", "-n", INIT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("needs shellcheck (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-s", "sh", INIT], capture_output=True, text=True)
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
    out = subprocess.run([str(dest / "opt/wgagent/bin/wgagent"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "status" in out.stdout
