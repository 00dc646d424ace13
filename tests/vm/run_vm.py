#!/usr/bin/env python3
"""Run tests against kernel WireGuard in a throwaway VM.

This machine's kernel has no wireguard module, so: boot Debian's stock kernel
(linux-image-amd64, wireguard as a module) under qemu, with the host's root file
system shared read-only over 9p. The guest runs the host's own Python and the
project's venv, so what is tested is this checkout, unchanged.

    host                                   guest (qemu, TCG unless KVM really works)
    .cache/vm/kernel/  (apt-get download,  /init from a tiny initramfs: busybox, the
      dpkg-deb -x, depmod; never            virtio/9p modules -> mount / (9p, ro),
      installed on the host)                tmpfs on /tmp /run /var/tmp, the kernel's
    .cache/vm/out/     <-- writable 9p -->  modules on /usr/lib/modules -> switch_root
                                            -> pytest ... --junitxml out/junit.xml
                                            -> sysrq 'o' (power off)

Pass or fail comes from the result files the guest writes, never from qemu's exit
status (a kernel panic also ends qemu with 0). On failure the guest's console and
pytest output are printed.

Usage: run_vm.py [pytest arguments...]   (default: the kernel-backend suite)
       run_vm.py --bench                  (bench/run.py --kernel -> bench/RESULTS-kernel.md)
Exit: 0 passed, 1 failed, 77 could not run here (the reason is printed).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "vm")
KDIR = os.path.join(CACHE, "kernel")
OUT = os.path.join(CACHE, "out")
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
DEFAULT_TESTS = ["tests/test_wg_sources.py", "tests/test_kernel_genl.py", "tests/test_routes_netns.py",
                 "tests/test_rules_netns.py", "tests/test_daemon_netns.py", "tests/test_faults_kernel.py",
                 "tests/test_wake_netns.py", "tests/test_mesh_netns.py"]
SKIP = 77


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:  # say why (a failed apt-get download, say), not just that it failed
        raise SystemExit(f"vm: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def ensure_tools() -> str | None:
    """Install what is missing (CI starts from a fresh machine); None, or why not."""
    need = {"qemu-system-x86_64": "qemu-system-x86", "depmod": "kmod"}
    missing = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return f"cannot install {' '.join(missing)}: {r.stderr.strip()[-300:]}"
    return None


def kernel() -> tuple[str, str]:
    """(kernel version, vmlinuz path) of Debian's current linux-image-amd64, unpacked in the cache."""
    def depends() -> list[str]:
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        return [line.split(":", 1)[1].strip() for line in r.stdout.splitlines() if "Depends: linux-image-" in line]

    found = depends()
    if not found:  # a fresh machine: no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        found = depends()
    if not found:
        raise SystemExit("vm: apt knows no linux-image-amd64")
    pkg = found[0]
    kver = pkg[len("linux-image-"):]
    vmlinuz = os.path.join(KDIR, "boot", f"vmlinuz-{kver}")
    if not os.path.exists(os.path.join(KDIR, "lib", "modules", kver, "modules.dep")):
        shutil.rmtree(KDIR, ignore_errors=True)
        os.makedirs(KDIR)
        sh("apt-get", "download", "-qq", pkg, cwd=CACHE)
        deb = next(f for f in os.listdir(CACHE) if f.startswith(pkg + "_") and f.endswith(".deb"))
        sh("dpkg-deb", "-x", os.path.join(CACHE, deb), KDIR)
        os.remove(os.path.join(CACHE, deb))
        sh("depmod", "-b", KDIR, kver)
    return kver, vmlinuz


def static_busybox() -> str:
    path = shutil.which("busybox")
    if path and "statically linked" in sh("file", "-L", path).stdout:
        return path
    sh("apt-get", "download", "-qq", "busybox-static", cwd=CACHE)
    deb = next(f for f in os.listdir(CACHE) if f.startswith("busybox-static_"))
    sh("dpkg-deb", "-x", os.path.join(CACHE, deb), os.path.join(CACHE, "busybox"))
    return os.path.join(CACHE, "busybox", "bin", "busybox")


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive: (name, mode, data); directories have mode 0o40755 and no data."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4)  # header and name, padded to 4
        out += data
        out += b"\0" * (-len(out) % 4)  # data, padded to 4
    return bytes(out)


INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod "$m" || echo "init: insmod $m failed"; done
mkdir -p /newroot
# cache=loose: the guest keeps what it read (the share is read-only and the host does
# not change it during the run); every Python start was ~2x slower without it
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro root /newroot || exec sh
# the checkout may live under /tmp (a CI clone): keep a view of it before the tmpfs
# mounts cover those directories, and put it back on top of them
mkdir -p /project
mount --bind /newroot{root} /project
for d in tmp run var/tmp usr/lib/modules; do mount -t tmpfs tmpfs /newroot/$d; done
mkdir -p /newroot{root}
mount --bind /project /newroot{root}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot{out}
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/usr/lib/modules/{kver}
mount --bind /newroot{kdir}/lib/modules/{kver} /newroot/usr/lib/modules/{kver}
exec switch_root /newroot /bin/sh {out}/guest.sh
"""

GUEST = """set -u
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm /run/netns
mount -t devpts devpts /dev/pts
ip link set lo up
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 WGAGENT_BACKENDS=kernel WGAGENT_TEST_SLOWDOWN={slowdown}
export WGAGENT_BENCH_QUICK={quick} WGAGENT_FAULTS={faults}
cd {root}
echo "guest: kernel $(uname -r), $(nproc) cpus; starting {what}"
start=$(date +%s)
{command} > {out}/pytest.log 2>&1
echo $? > {out}/rc
echo "guest: {what} done in $(( $(date +%s) - start ))s"
tail -n 3 {out}/pytest.log
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def kvm_usable() -> bool:
    """/dev/kvm can exist and still not boot a stock kernel (a nested PVM backend): use it
    only when the kvm_intel or kvm_amd module is really loaded."""
    try:
        with open("/proc/modules") as f:
            mods = f.read()
    except OSError:
        return False
    return os.path.exists("/dev/kvm") and ("kvm_intel" in mods or "kvm_amd" in mods)


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("SKIPPED: the kernel WireGuard VM needs root", flush=True)
        return SKIP
    why = ensure_tools()
    if why:
        print(f"SKIPPED: {why}", flush=True)
        return SKIP
    os.makedirs(CACHE, exist_ok=True)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    started = time.monotonic()
    kver, vmlinuz = kernel()
    mods = sh("modprobe", "-a", "-d", KDIR, "-S", kver, "--show-depends", *BOOT_MODULES).stdout.split()
    paths = list(dict.fromkeys(p for p in mods if p.endswith(".ko")))  # shared dependencies once
    entries = [(d, 0o40755, b"") for d in ("bin", "proc", "sys", "dev", "newroot", "lib", "project")]
    with open(static_busybox(), "rb") as f:
        entries.append(("bin/busybox", 0o100755, f.read()))
    names = []
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            entries.append((f"lib/{i:02d}-{os.path.basename(p)}", 0o100644, f.read()))
        names.append(f"/lib/{i:02d}-{os.path.basename(p)}")
    entries.append(("modules", 0o100644, "\n".join(names).encode() + b"\n"))
    entries.append(("init", 0o100755, INIT.format(out=OUT, kver=kver, kdir=KDIR, root=ROOT).encode()))
    initrd = os.path.join(CACHE, "initrd.gz")
    with gzip.open(initrd, "wb", compresslevel=1) as f:
        f.write(_cpio(entries))
    accel = "kvm" if kvm_usable() else "tcg"
    tests = [a for a in argv if a != "--bench"] or DEFAULT_TESTS
    # the venv's own python, not its link target: its site-packages come from the venv's
    # pyvenv.cfg; without a venv, the real path of this one (a pyenv shim is not in the guest)
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    python = venv_python if os.path.exists(venv_python) else os.path.realpath(sys.executable)
    bench = argv[:1] == ["--bench"]  # make bench-kernel: bench/run.py's kernel sections instead of tests
    if bench:
        what, command = "the benchmark", f"{python} bench/run.py --kernel --out {OUT}/RESULTS-kernel.md"
    else:
        what = "pytest"
        command = f"{python} -m pytest -p no:cacheprovider -v -rs --junitxml={OUT}/junit.xml {' '.join(tests)}"
    with open(os.path.join(OUT, "guest.sh"), "w") as f:
        f.write(GUEST.format(root=ROOT, out=OUT, command=command, what=what,
                             quick=os.environ.get("WGAGENT_BENCH_QUICK", "0"),
                             faults=os.environ.get("WGAGENT_FAULTS", "short"),  # make faults: full counts
                             slowdown=1 if accel == "kvm" else 6))
    console = os.path.join(OUT, "console.log")
    cmd = ["qemu-system-x86_64", "-accel", accel, "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
           "-kernel", vmlinuz, "-initrd", initrd,
           "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
           "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
           "-virtfs", f"local,path={OUT},mount_tag=out,security_model=none,multidevs=remap",
           "-nic", "none"]
    print(f"vm: booting {kver} ({accel}, 2 vCPU, 1 GiB) for: {what if bench else ' '.join(tests)}", flush=True)
    with open(console, "w") as con:
        try:
            subprocess.run(cmd, stdout=con, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=float(os.environ.get("WGAGENT_VM_TIMEOUT", 2400)))
        except subprocess.TimeoutExpired:
            print("vm: timed out", flush=True)
    elapsed = time.monotonic() - started
    log = _read(os.path.join(OUT, "pytest.log"))
    rc = _read(os.path.join(OUT, "rc")).strip()
    print(log, flush=True)
    print(f"vm: done in {elapsed:.0f}s (boot, {what} and power-off); guest exit {rc or 'missing'}", flush=True)
    if not bench:
        print(f"vm: guest pytest: {_junit_counts(os.path.join(OUT, 'junit.xml'))}", flush=True)
    if rc != "0":
        print("vm: guest console:\n" + _read(console)[-6000:], flush=True)
        return 1
    if bench:
        shutil.copy(os.path.join(OUT, "RESULTS-kernel.md"), os.path.join(ROOT, "bench", "RESULTS-kernel.md"))
    return 0


def _junit_counts(path: str) -> str:
    """'N passed, N failed, N errors, N skipped in Ns' from pytest's junit.xml."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return f"no junit.xml ({e})"
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(x.get(k, 0)) for x in suites) for k in ("tests", "failures", "errors", "skipped")}
    seconds = sum(float(x.get("time", 0)) for x in suites)
    return (f"{n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, {n['failures']} failed, "
            f"{n['errors']} errors, {n['skipped']} skipped in {seconds:.0f}s")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
