#!/usr/bin/env python3
"""Build wgagent_<version>-r<release>_all.ipk from this tree, without the OpenWrt SDK.

It lays out the same files as the SDK build of openwrt-package/wgagent/Makefile
(Py3Package: byte-compiled modules in site-packages with the sources removed, the
entry point in /usr/bin with a python3 shebang, the init script, the default config
as a conffile, the rt_protos name) and packs them as OpenWrt's ipkg-build does: a
gzipped tar of ./debian-binary, ./control.tar.gz and ./data.tar.gz, files owned by
root, with the postinst/prerm that the SDK generates (default_postinst enables and
starts the service; default_prerm stops and disables it).

Usage: build_ipk.py OUTDIR   (prints the path of the package)
"""

from __future__ import annotations

import compileall
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "openwrt-package", "wgagent")
PY_VERSION = "3.11"  # OpenWrt 24.10's python3; the byte code below is for this version
SITE = f"usr/lib/python{PY_VERSION}/site-packages"


def makefile_var(name: str) -> str:
    with open(os.path.join(PKG, "Makefile")) as f:
        m = re.search(rf"^{name}:=(.*)$", f.read(), re.M)
    if not m:
        raise SystemExit(f"{PKG}/Makefile: no {name}")
    return m.group(1).strip()


def version() -> str:
    with open(os.path.join(ROOT, "wgagent", "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


ENTRY_POINT = """#!/usr/bin/python3
import sys

from wgagent.cli import main

sys.exit(main())
"""

POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
"""

PRERM = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
"""


def stage(root: str) -> None:
    """The package's files under root, with their modes."""
    def put(rel: str, data: bytes | None = None, src: str | None = None, mode: int = 0o644):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if src:
            shutil.copyfile(src, path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        os.chmod(path, mode)

    pkgdir = os.path.join(root, SITE, "wgagent")
    for name in sorted(os.listdir(os.path.join(ROOT, "wgagent"))):
        if name.endswith(".py"):
            put(os.path.join(SITE, "wgagent", name), src=os.path.join(ROOT, "wgagent", name))
    if sys.version_info[:2] == tuple(int(x) for x in PY_VERSION.split(".")):
        # as Python3/CompileAll + Python3/DeleteSourceFiles in python3-package.mk
        if not compileall.compile_dir(pkgdir, quiet=1, legacy=True, ddir=f"/{SITE}/wgagent"):
            raise SystemExit("byte-compiling failed")
        for name in os.listdir(pkgdir):
            if name.endswith(".py"):
                os.remove(os.path.join(pkgdir, name))
    else:
        print(f"note: python {sys.version_info[0]}.{sys.version_info[1]} is not {PY_VERSION}: "
              "shipping sources instead of byte code", file=sys.stderr)
    put("usr/bin/wgagent", ENTRY_POINT.encode(), mode=0o755)
    put("etc/init.d/wgagent", src=os.path.join(ROOT, "init.d", "wgagent"), mode=0o755)
    put("etc/config/wgagent", src=os.path.join(PKG, "files", "wgagent.config"), mode=0o600)
    put("etc/iproute2/rt_protos.d/wgagent.conf", src=os.path.join(PKG, "files", "wgagent.rt_protos"))


def control(installed_size: int) -> str:
    depends = ["libc"] + [d.lstrip("+") for d in makefile_var("  DEPENDS").split()]
    return "".join(f"{k}: {v}\n" for k, v in [
        ("Package", "wgagent"),
        ("Version", f"{version()}-r{makefile_var('PKG_RELEASE')}"),
        ("Depends", ", ".join(depends)),
        ("Source", "feeds/packages/net/wgagent"),
        ("SourceName", "wgagent"),
        ("License", makefile_var("PKG_LICENSE")),
        ("Section", "net"),
        ("SourceDateEpoch", str(int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))),
        ("Maintainer", makefile_var("PKG_MAINTAINER")),
        ("Architecture", "all"),
        ("Installed-Size", str(installed_size)),
        ("Description", "wgagent watches WireGuard peers and keeps host routes, source rules and\n"
                        " UCI firewall sections in step with which peers are actually connected."),
    ])


def _tar_gz(members: list[tuple[str, bytes | None, int]], mtime: int) -> bytes:
    """members: (name, data or None for a directory, mode); owned by root like ipkg-build's."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, mtime, 0, 0, "root", "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tree(root: str) -> list[tuple[str, bytes | None, int]]:
    out = [("./", None, 0o755)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out.append((f"./{rel}/", None, 0o755))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out.append((f"./{os.path.relpath(path, root)}", f.read(), os.stat(path).st_mode & 0o7777))
    return out


def build(outdir: str) -> str:
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        stage(root)
        files = tree(root)
        size = sum(len(d) for _, d, _ in files if d is not None)
        data = _tar_gz(files, mtime)
        ctrl = _tar_gz([("./", None, 0o755), ("./control", control(size).encode(), 0o644),
                        ("./conffiles", b"/etc/config/wgagent\n", 0o644),
                        ("./postinst", POSTINST.encode(), 0o755), ("./prerm", PRERM.encode(), 0o755)], mtime)
    name = f"wgagent_{version()}-r{makefile_var('PKG_RELEASE')}_all.ipk"
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, name)
    with open(path, "wb") as f:
        f.write(_tar_gz([("./debian-binary", b"2.0\n", 0o644), ("./data.tar.gz", data, 0o644),
                         ("./control.tar.gz", ctrl, 0o644)], mtime))
    return path


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "dist"))
