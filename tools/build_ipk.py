#!/usr/bin/env python3
"""Build wgagent's .ipk and python3-structlog's .ipk without the OpenWrt SDK.

Both follow their feed Makefiles (openwrt-package/*/Makefile), read here rather
than restated, and the steps of the SDK build of a Py3Package (OpenWrt 24.10's
python3-package.mk and package-pack.mk):

- the source is built into a wheel (wgagent from this tree; structlog from the PyPI
  sdist that pypi.mk fetches, checked against PKG_HASH), and python-installer 0.7.0
  (the SDK's host version) installs it under /usr, dist-info and console scripts
  included;
- the package gets site-packages plus what `Py3Package/<pkg>/install` lists (the
  default: PKG_INSTALL_DIR/usr/bin/*), is byte-compiled for Python 3.11 with
  `compileall -b -d /`, its .py sources deleted, /usr/bin shebangs set to
  /usr/bin/python3;
- the control file has package-pack.mk's fields in its order, and the postinst/prerm
  that it generates (default_postinst enables and starts the service,
  default_prerm stops and disables it); ipkg-build packs a gzipped tar of
  ./debian-binary, ./data.tar.gz and ./control.tar.gz, sorted by name, numeric
  owner root, Installed-Size the length of the uncompressed data tar.

luci-app-wgagent's .ipk follows its Makefile through luci.mk (openwrt/luci,
since its PKG_RELEASE fix of 2024-04, which 24.10's LuCI feed has): Package/<name>
from the LUCI_* variables (section luci, version PKG_VERSION-rPKG_RELEASE), the
package folder's htdocs/ under /www and root/ under /, as `cp -pR` leaves them,
and luci.mk's postinst, which package-pack.mk ships as postinst-pkg for
default_postinst to run (it clears LuCI's caches and has rpcd reread its ACLs).
The SDK also minifies the JavaScript (CONFIG_LUCI_JSMIN); this build ships it as
written.

Building needs pip and PyPI (setuptools, hatchling, structlog, installer).

Usage: build_ipk.py OUTDIR   (prints the path of each package, one a line)
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEED = os.path.join(ROOT, "openwrt-package")
PY_VERSION = "3.11"  # OpenWrt 24.10's python3; the byte code below is for this version
SITE = f"usr/lib/python{PY_VERSION}/site-packages"  # PYTHON3_PKG_DIR
INSTALLER = "installer==0.7.0"
# where each feed folder sits in the packages feed: the control file's Source
FEED_PATHS = {"wgagent": "net/wgagent", "python-structlog": "lang/python/python-structlog"}
LUCI_APPS = ("luci-app-wgagent",)  # folders built through luci.mk, as in the LuCI feed's applications/

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

# luci.mk's Package/$(PKG_NAME)/postinst, for no LUCI_DEFAULTS (root/etc/uci-defaults)
LUCI_POSTINST = """[ -n "${IPKG_INSTROOT}" ] || {
\trm -f /tmp/luci-indexcache
\trm -rf /tmp/luci-modulecache/
\tkillall -HUP rpcd 2>/dev/null
\texit 0
}
"""

# rules.mk's install commands and the modes they give
INSTALL_MODES = {"INSTALL_BIN": 0o755, "INSTALL_CONF": 0o600, "INSTALL_DATA": 0o644}


class FeedMakefile:
    """The declarations of one feed Makefile: top-level `NAME:=value` and the
    `define ... endef` blocks (Package/<pkg>, its description, conffiles, install)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, "Makefile")
        with open(self.path) as f:
            text = f.read()
        self.defines = {m.group(1): m.group(2) for m in
                        re.finditer(r"^define (\S+)\n(.*?)^endef$", text, re.M | re.S)}
        outside = re.sub(r"^define .*?^endef$", "", text, flags=re.M | re.S)
        self.vars = dict(re.findall(r"^([A-Z0-9_]+):=(.*)$", outside, re.M))
        self.packages = re.findall(r"^\$\(eval \$\(call Py3Package,(\S+)\)\)$", text, re.M)
        if len(self.packages) != 1:
            raise SystemExit(f"{self.path}: expected one Py3Package, found {self.packages}")
        self.name = self.packages[0]
        block = self.defines.get(f"Package/{self.name}")
        if block is None:
            raise SystemExit(f"{self.path}: no 'define Package/{self.name}'")
        self.fields = dict(re.findall(r"^\s*([A-Z_]+):=(.*)$", block, re.M))

    def var(self, name: str) -> str:
        if name not in self.vars:
            raise SystemExit(f"{self.path}: no {name}")
        return self.vars[name].strip()

    def field(self, name: str) -> str:
        if name not in self.fields:
            raise SystemExit(f"{self.path}: Package/{self.name} has no {name}")
        return self.fields[name].strip()

    @property
    def version(self) -> str:  # package-defaults.mk's VERSION
        return f"{self.var('PKG_VERSION')}-r{self.var('PKG_RELEASE')}"

    def depends(self) -> list[str]:
        out = ["libc"]  # every target package depends on libc (PKG_FIXUP_DEPENDS)
        for dep in self.field("DEPENDS").split():
            if not dep.startswith("+") or ":" in dep:
                raise SystemExit(f"{self.path}: DEPENDS entry {dep!r}: only plain +package is supported here")
            out.append(dep[1:])
        return out

    def conffiles(self) -> list[str]:
        return self.defines.get(f"Package/{self.name}/conffiles", "").split()

    def description(self) -> str:
        # package-pack.mk: `printf "Description: "; echo "$DESCRIPTION" | sed 's,^[[:space:]]*, ,g'`
        text = self.defines[f"Package/{self.name}/description"].rstrip("\n")
        return "Description: " + "\n".join(" " + line.lstrip() for line in text.split("\n")) + "\n"

    def source_date_epoch(self) -> int:
        """SOURCE_DATE_EPOCH, else the time of the last commit of the folder, as the SDK's
        get_source_date_epoch.sh does."""
        if os.environ.get("SOURCE_DATE_EPOCH"):
            return int(os.environ["SOURCE_DATE_EPOCH"])
        r = subprocess.run(["git", "-C", self.folder, "log", "-1", "--format=%ct", "--", "."],
                           capture_output=True, text=True)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else int(time.time())

    def control_source(self) -> str:
        return f"feeds/packages/{FEED_PATHS[os.path.basename(self.folder)]}"

    def scripts(self) -> list[tuple[str, str, int]]:
        """The CONTROL scripts package-pack.mk writes for a package without its own."""
        return [("postinst", POSTINST, 0o755), ("prerm", PRERM, 0o755)]

    def control(self, installed_size: int) -> str:
        fields = [
            ("Package", self.name),
            ("Version", self.version),
            ("Depends", ", ".join(self.depends())),
            ("Source", self.control_source()),
            ("SourceName", self.var("PKG_NAME")),
            ("License", self.vars.get("PKG_LICENSE", "").strip()),
            ("LicenseFiles", self.vars.get("PKG_LICENSE_FILES", "").strip()),
            ("Section", self.field("SECTION")),
            ("SourceDateEpoch", str(self.source_date_epoch())),
            ("URL", self.fields.get("URL", "").strip()),
            ("Maintainer", self.vars.get("PKG_MAINTAINER", "").strip()),
            ("Architecture", self.field("PKGARCH")),
            ("Installed-Size", str(installed_size)),
        ]
        return "".join(f"{k}: {v}\n" for k, v in fields if v) + self.description()


class LuciMakefile(FeedMakefile):
    """A LuCI app's Makefile: LUCI_* variables that luci.mk turns into Package/<name>
    (luci.mk's defaults where the Makefile sets none)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, "Makefile")
        with open(self.path) as f:
            text = f.read()
        if not re.search(r"^include .*luci\.mk\b", text, re.M):
            raise SystemExit(f"{self.path}: does not include luci.mk")
        self.defines = {}
        raw = dict(re.findall(r"^([A-Z0-9_]+):=(.*)$", text, re.M))
        self.vars = {k: self._expand(v, raw) for k, v in raw.items()}
        self.name = self.vars.get("PKG_NAME", os.path.basename(folder)).strip()  # luci.mk: PKG_NAME?=$(LUCI_NAME)
        if self.name != os.path.basename(folder):
            raise SystemExit(f"{self.path}: PKG_NAME {self.name} is not the folder's name (LUCI_NAME)")
        self.fields = {
            "SECTION": self.vars.get("LUCI_SECTION", "luci"),
            "PKGARCH": self.var("LUCI_PKGARCH"),
            "DEPENDS": self.vars.get("LUCI_DEPENDS", ""),
            "URL": self.vars.get("LUCI_URL", "https://github.com/openwrt/luci"),
            "TITLE": self.var("LUCI_TITLE"),
        }
        # luci.mk's MAINTAINER:=$(LUCI_MAINTAINER) is what package-pack.mk writes
        self.vars["PKG_MAINTAINER"] = self.vars.get("LUCI_MAINTAINER", "OpenWrt LuCI community")
        # Package/<name>/description is $(strip $(LUCI_DESCRIPTION)), else the title
        self.defines[f"Package/{self.name}/description"] = " ".join(
            self.vars.get("LUCI_DESCRIPTION", self.fields["TITLE"]).split()) + "\n"

    @staticmethod
    def _expand(value: str, raw: dict) -> str:
        def one(m):
            if m.group(1) not in raw:
                raise SystemExit(f"cannot expand $({m.group(1)})")
            return raw[m.group(1)]
        return re.sub(r"\$\(([A-Z0-9_]+)\)", one, value).strip()

    def control_source(self) -> str:
        return f"feeds/luci/applications/{self.name}"

    def scripts(self) -> list[tuple[str, str, int]]:
        return super().scripts() + [("postinst-pkg", LUCI_POSTINST, 0o755)]


def luci_package_dir(mk: LuciMakefile, ipkg: str) -> None:
    """luci.mk's Build/Prepare and Package/<name>/install: htdocs/* into /www,
    root/* into /, with `cp -pR` (modes kept)."""
    for src, dest in (("htdocs", "www"), ("root", "")):
        folder = os.path.join(mk.folder, src)
        if os.path.isdir(folder):
            shutil.copytree(folder, os.path.join(ipkg, dest), dirs_exist_ok=True, copy_function=shutil.copy2)


def _pip(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pip {' '.join(args)} failed:\n{r.stdout}{r.stderr}")


def _load_installer(tmp: str):
    try:
        import installer  # noqa: F401
    except ImportError:
        _pip("install", "--target", os.path.join(tmp, "installer"), INSTALLER)
        sys.path.insert(0, os.path.join(tmp, "installer"))
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile
    return install, SchemeDictionaryDestination, WheelFile


def wgagent_wheel(mk: FeedMakefile, tmp: str) -> str:
    """Build/Prepare copies the source into the build dir; Py3Build builds the wheel."""
    src = os.path.join(tmp, "build-wgagent")
    os.makedirs(src)
    for name in ("wgagent", "setup.py", "pyproject.toml", "LICENSE"):
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(src, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src)
    out = os.path.join(tmp, "wheels")
    _pip("wheel", "--no-deps", "-w", out, src)
    return _one(out, f"wgagent-{mk.var('PKG_VERSION')}-*.whl")


def pypi_wheel(mk: FeedMakefile, tmp: str) -> str:
    """pypi.mk downloads the sdist <PYPI_NAME>-<PKG_VERSION>.tar.gz and checks PKG_HASH."""
    name, version = mk.var("PYPI_NAME"), mk.var("PKG_VERSION")
    dl = os.path.join(tmp, "sdist")
    _pip("download", "--no-deps", "--no-binary", ":all:", "-d", dl, f"{name}=={version}")
    sdist = os.path.join(dl, f"{name}-{version}.tar.gz")
    with open(sdist, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != mk.var("PKG_HASH"):
        raise SystemExit(f"{mk.path}: PKG_HASH {mk.var('PKG_HASH')} but {os.path.basename(sdist)} "
                         f"from PyPI has sha256 {digest}")
    out = os.path.join(tmp, "wheels")
    _pip("wheel", "--no-deps", "-w", out, sdist)
    return _one(out, f"{name.replace('-', '_')}-{version}-*.whl")


def _one(folder: str, pattern: str) -> str:
    found = glob.glob(os.path.join(folder, pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {folder}, found {found}")
    return found[0]


def install_wheel(wheel: str, destdir: str, tmp: str) -> None:
    """Py3Build/Install: `python -m installer --destdir --no-compile-bytecode --prefix /usr`,
    with the target's scheme (not this host's) and the shebang FixShebang gives."""
    install, Destination, WheelFile = _load_installer(tmp)
    scheme = {"purelib": f"/{SITE}", "platlib": f"/{SITE}", "scripts": "/usr/bin", "data": "/usr",
              "headers": f"/usr/include/python{PY_VERSION}"}
    with WheelFile.open(wheel) as source:
        install(source, Destination(scheme, "/usr/bin/python3", "posix", destdir=destdir), {})


def run_install_define(mk: FeedMakefile, ipkg: str, pkg_install: str) -> None:
    """Py3Package/<pkg>/install, with rules.mk's INSTALL_* commands; without one, the
    default: PKG_INSTALL_DIR/usr/bin/* into /usr/bin."""
    block = mk.defines.get(f"Py3Package/{mk.name}/install")
    if block is None:
        bindir = os.path.join(pkg_install, "usr/bin")
        if os.path.isdir(bindir):
            shutil.copytree(bindir, os.path.join(ipkg, "usr/bin"))
        return
    # WGAGENT_SRC: the checkout, as the Makefile falls back to when there is no ./src
    subst = {"$(1)": ipkg, "$(PKG_INSTALL_DIR)": pkg_install, "$(WGAGENT_SRC)": ROOT}
    for line in block.splitlines():
        words = line.split()
        if not words:
            continue
        args = []
        for w in words[1:]:
            for k, v in subst.items():
                w = w.replace(k, v)
            if w.startswith("./"):
                w = os.path.join(mk.folder, w[2:])
            if "$(" in w:
                raise SystemExit(f"{mk.path}: cannot expand {w!r} in: {line.strip()}")
            args.append(w)
        cmd = words[0][2:-1] if words[0].startswith("$(") else words[0]
        if cmd == "INSTALL_DIR":
            for d in args:
                os.makedirs(d, mode=0o755, exist_ok=True)
        elif cmd in INSTALL_MODES and len(args) == 2:
            src, dst = args
            if dst.endswith("/"):
                dst = os.path.join(dst, os.path.basename(src))
            shutil.copyfile(src, dst)
            os.chmod(dst, INSTALL_MODES[cmd])
        else:
            raise SystemExit(f"{mk.path}: build_ipk.py does not run: {line.strip()}")


def package_dir(mk: FeedMakefile, pkg_install: str, ipkg: str) -> None:
    """python3-package.mk's Package/<pkg>/install."""
    run_install_define(mk, ipkg, pkg_install)
    shutil.copytree(os.path.join(pkg_install, SITE), os.path.join(ipkg, SITE), dirs_exist_ok=True)  # filespec
    if sys.version_info[:2] == tuple(int(x) for x in PY_VERSION.split(".")):
        # Python3/CompileAll + Python3/DeleteSourceFiles
        env = dict(os.environ, PYTHONHASHSEED=str(mk.source_date_epoch()))
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-r", "20", "-b", "-d", "/", ipkg],
                       env=env, check=True)
        for dirpath, _, filenames in os.walk(ipkg):
            for name in filenames:
                if name.endswith(".py"):
                    os.remove(os.path.join(dirpath, name))
    else:
        print(f"note: python {sys.version_info[0]}.{sys.version_info[1]} is not {PY_VERSION}: "
              "shipping sources instead of byte code", file=sys.stderr)
    for dirpath, dirnames, filenames in os.walk(ipkg, topdown=False):  # Python3/DeleteEmptyDirs
        if dirpath != ipkg and not os.listdir(dirpath):
            os.rmdir(dirpath)
    bindir = os.path.join(ipkg, "usr/bin")
    for name in sorted(os.listdir(bindir)) if os.path.isdir(bindir) else ():  # Python3/FixShebang
        path = os.path.join(bindir, name)
        with open(path, "rb") as f:
            lines = f.read().split(b"\n", 1)
        if re.match(rb"^#!.*python", lines[0]):
            with open(path, "wb") as f:
                f.write(b"\n".join([b"#!/usr/bin/python3"] + lines[1:]))


def _tar_gz(root: str, names: list[str], mtime: int) -> tuple[bytes, int]:
    """GNU tar --format=gnu --numeric-owner --sort=name | gzip -n: the gzipped tar and
    the length of the tar itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(rel: str) -> None:
            path = os.path.join(root, rel)
            info = tar.gettarinfo(path, arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if info.isdir():
                info.name = rel.rstrip("/") + "/"
                tar.addfile(info)
                for name in sorted(os.listdir(path)):
                    add(f"{rel.rstrip('/')}/{name}")
            else:
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        for name in names:
            add(name)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), len(raw)


def pack(mk: FeedMakefile, ipkg: str, outdir: str) -> str:
    mtime = mk.source_date_epoch()
    data, size = _tar_gz(ipkg, ["."], mtime)
    with tempfile.TemporaryDirectory() as tmp:
        ctrl = os.path.join(tmp, "CONTROL")
        os.mkdir(ctrl)
        for name, text, mode in [("control", mk.control(size), 0o644)] + mk.scripts():
            with open(os.path.join(ctrl, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(ctrl, name), mode)
        # ipkg-build keeps the conffiles that the package holds, sorted
        kept = sorted(c for c in mk.conffiles() if os.path.isfile(os.path.join(ipkg, c.lstrip("/"))))
        if kept:
            with open(os.path.join(ctrl, "conffiles"), "w") as f:
                f.write("".join(c + "\n" for c in kept))
            os.chmod(os.path.join(ctrl, "conffiles"), 0o644)
        control, _ = _tar_gz(ctrl, ["."], mtime)
        outer = os.path.join(tmp, "outer")
        os.mkdir(outer)
        for name, blob in [("debian-binary", b"2.0\n"), ("data.tar.gz", data), ("control.tar.gz", control)]:
            with open(os.path.join(outer, name), "wb") as f:
                f.write(blob)
            os.chmod(os.path.join(outer, name), 0o644)
        ipk, _ = _tar_gz(outer, ["./debian-binary", "./data.tar.gz", "./control.tar.gz"], mtime)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"{mk.name}_{mk.version}_{mk.field('PKGARCH')}.ipk")
    with open(path, "wb") as f:
        f.write(ipk)
    return path


def build(outdir: str) -> list[str]:
    """wgagent's package, the structlog package it needs (the feed has none), and
    its LuCI pages."""
    os.umask(0o022)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder, wheel_of in [("wgagent", wgagent_wheel), ("python-structlog", pypi_wheel)]:
            mk = FeedMakefile(os.path.join(FEED, folder))
            wheel = wheel_of(mk, tmp)
            pkg_install, ipkg = os.path.join(tmp, f"install-{folder}"), os.path.join(tmp, f"ipkg-{folder}")
            install_wheel(wheel, pkg_install, tmp)
            os.makedirs(ipkg)
            package_dir(mk, pkg_install, ipkg)
            out.append(pack(mk, ipkg, outdir))
        for folder in LUCI_APPS:
            mk = LuciMakefile(os.path.join(FEED, folder))
            ipkg = os.path.join(tmp, f"ipkg-{folder}")
            os.makedirs(ipkg)
            luci_package_dir(mk, ipkg)
            out.append(pack(mk, ipkg, outdir))
    return out


if __name__ == "__main__":
    for path in build(sys.argv[1] if len(sys.argv) > 1 else "dist"):
        print(path)
