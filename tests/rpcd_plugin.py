"""The package's rpcd plugin (/usr/libexec/rpcd/wgagent) on the ubus double, run as
OpenWrt runs it: by busybox sh (OpenWrt's /bin/sh) with only busybox's applets on
PATH, `wgagent` being this checkout's (a wrapper), its files in a private run
directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FILES = os.path.join(ROOT, "openwrt-package", "wgagent", "files")
PLUGIN = os.path.join(FILES, "wgagent.rpcd")
ACL = os.path.join(FILES, "wgagent.acl.json")
HOTPLUG_EXAMPLE = os.path.join(FILES, "wgagent.hotplug")
CLI = os.path.join(HERE, "ubus_double", "bin", "ubus")
# what the plugin runs, from busybox; logger for the hotplug example
APPLETS = ("sh", "cat", "awk", "readlink", "mkfifo", "mktemp", "rm", "tr", "sed", "sleep", "logger")


BUSYBOX = shutil.which("busybox")  # looked up once: tests put a router's PATH in place


def busybox() -> str | None:
    return BUSYBOX


def applets(directory: str) -> str:
    """A directory of busybox applet links: the PATH of a router."""
    os.makedirs(directory, exist_ok=True)
    for name in APPLETS:
        link = os.path.join(directory, name)
        if not os.path.lexists(link):
            os.symlink(busybox(), link)
    return directory


def wgagent_wrapper(path: str) -> str:
    """/usr/bin/wgagent as the package installs it: this checkout's, with this Python."""
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {ROOT!r})\n"
                "from wgagent.cli import main\nsys.exit(main())\n")
    os.chmod(path, 0o755)
    return path


def plugin_env(tmp: str, run_dir: str, config: str, wait: int = 10) -> dict:
    return {"PATH": applets(os.path.join(tmp, "applets")), "WGAGENT_RUN_DIR": run_dir,
            "WGAGENT_BIN": wgagent_wrapper(os.path.join(tmp, "wgagent-bin")), "WGAGENT_CONFIG": config,
            "WGAGENT_WAIT": str(wait)}


def plugin_dir(tmp: str) -> str:
    """/usr/libexec/rpcd with the package's plugin, mode 0755 as INSTALL_BIN makes it."""
    d = os.path.join(tmp, "libexec-rpcd")
    os.makedirs(d, exist_ok=True)
    shutil.copy(PLUGIN, os.path.join(d, "wgagent"))
    os.chmod(os.path.join(d, "wgagent"), 0o755)
    return d


def ubus(sock: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The ubus CLI (the double's stand-in), stderr not a tty as in a script."""
    return subprocess.run([sys.executable, CLI, "-s", sock, *args], capture_output=True, text=True,
                          timeout=timeout)


def call(sock: str, method: str, args: dict | None = None, timeout: float = 60) -> dict:
    r = ubus(sock, "call", "wgagent", method, *([json.dumps(args)] if args is not None else []), timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def listen(sock: str, *patterns: str, seconds: int = 0, ubusd=None) -> subprocess.Popen:
    """`ubus [-t SECONDS] listen PATTERNS` started, and, given the in-process double's
    ubusd, back only once its patterns are registered (an interpreter's start on a loaded
    machine outlasts any fixed sleep; -t counts from the registration, as in cli.c)."""
    before = len(ubusd.patterns) if ubusd is not None else 0
    p = subprocess.Popen([sys.executable, CLI, "-s", sock, *(["-t", str(seconds)] if seconds else []),
                          "listen", *patterns], stdout=subprocess.PIPE, text=True)
    if ubusd is None:
        time.sleep(0.5)
        return p
    deadline = time.monotonic() + 30
    while len(ubusd.patterns) < before + max(len(patterns), 1):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError(f"ubus listen {' '.join(patterns)}: not registered (exit {p.returncode})")
        time.sleep(0.02)
    return p
