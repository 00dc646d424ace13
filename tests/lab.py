"""A small lab of network namespaces with real WireGuard, for tests and the demo.

Every namespace, link and process lives inside namespaces this lab creates; close()
ends every process it started by its PID and deletes every namespace. Nothing
touches the host's own network.

wireguard-go and `wg` both use /var/run/wireguard for UAPI sockets, so each lab
namespace gets a private directory bind-mounted there: every command run "in" a
namespace enters its network namespace *and* a mount namespace of its own in which
/run/wireguard is that directory. (`ip netns exec` already unshares the mount
namespace, as a slave, so the bind mount never reaches the host.)
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time

RUN_WG = "/run/wireguard"  # /var/run is a link to /run on Debian and OpenWrt

# Every deadline stretches on a slow machine: the test VM runs under software
# emulation (TCG), where one Python start over 9p can take many seconds, and sets
# WGAGENT_TEST_SLOWDOWN.
SLOWDOWN = float(os.environ.get("WGAGENT_TEST_SLOWDOWN", "1"))
_serial = itertools.count()


def have_root() -> bool:
    return os.geteuid() == 0


def missing_requirements(backend: str = "uapi") -> str | None:
    """Why the lab cannot run here, or None."""
    if not have_root():
        return "needs root (network namespaces)"
    for tool in ("ip", "wg") + (("wireguard-go",) if backend == "uapi" else ()):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 wireguard-tools wireguard-go)"
    if backend == "uapi" and not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for wireguard-go"
    return None


def kernel_wireguard_available() -> bool:
    """Can this kernel create a link of type wireguard? Tried in a throwaway namespace."""
    name = f"wgaprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    try:
        r = subprocess.run(["ip", "-n", name, "link", "add", "wgprobe", "type", "wireguard"], capture_output=True)
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def genkey() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True).stdout.strip()
    return priv, pub


class Netns:
    def __init__(self, lab: "Lab", short: str):
        self.lab = lab
        self.short = short
        self.name = f"{lab.prefix}{short}"
        self.rundir = os.path.join(lab.tmp, short, "run-wireguard")
        os.makedirs(self.rundir)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        self.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, "sh", "-c",
                f'mount --bind "$0" {RUN_WG} && exec "$@"', self.rundir, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout * SLOWDOWN)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{self.short}] {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def ip(self, *args: str, check: bool = True) -> str:
        return self.run("ip", *args, check=check).stdout

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(*cmd), **kw)
        self.lab.procs.append(p)
        return p

    def ping(self, addr: str, count: int = 1, wait: float = 1) -> bool:
        return self.run("ping", "-c", str(count), "-W", str(wait), "-q", addr, check=False).returncode == 0

    def routes(self, *selector: str) -> list[str]:
        """`ip route show SELECTOR` for both families; a table that does not exist (yet) is empty."""
        out = []
        for fam in ("-4", "-6"):
            r = self.run("ip", fam, "route", "show", *selector, check=False)
            if r.returncode != 0 and "does not exist" not in r.stderr:
                raise RuntimeError(f"[{self.short}] ip {fam} route show {' '.join(selector)}: {r.stderr.strip()}")
            out += [line.strip() for line in r.stdout.splitlines() if line.strip()]
        return out

    def add_wireguard(self, ifname: str, backend: str, private_key: str, listen_port: int | None,
                      addresses: list[str] = ()) -> None:
        """A WireGuard interface, up, with a key and addresses (peers are added later)."""
        if backend == "kernel":
            self.ip("link", "add", ifname, "type", "wireguard")
        else:
            log = open(os.path.join(self.lab.tmp, f"{self.short}-{ifname}-wireguard-go.log"), "w")
            env = dict(os.environ, LOG_LEVEL="error")
            self.popen("wireguard-go", "-f", ifname, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            sock = os.path.join(self.rundir, f"{ifname}.sock")
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wireguard-go did not create {sock}")
                time.sleep(0.02)
        keyfile = os.path.join(self.lab.tmp, f"{self.short}-{ifname}.key")
        with open(keyfile, "w") as f:
            f.write(private_key + "\n")
        args = ["private-key", keyfile] + (["listen-port", str(listen_port)] if listen_port else [])
        self.run("wg", "set", ifname, *args)
        for a in addresses:
            self.ip("addr", "add", a, "dev", ifname)
        self.ip("link", "set", ifname, "up")

    def wg_peer(self, ifname: str, public_key: str, allowed_ips: list[str], endpoint: str | None = None,
                keepalive: int | None = None) -> None:
        args = ["peer", public_key, "allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            args += ["endpoint", endpoint]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.run("wg", "set", ifname, *args)

    def wg_remove_peer(self, ifname: str, public_key: str) -> None:
        self.run("wg", "set", ifname, "peer", public_key, "remove")


class Lab:
    def __init__(self, tag: str = "t"):
        # short, unique names: interface-name limits and parallel runs
        self.prefix = f"wga{os.getpid() % 100000}{tag}{next(_serial)}-"
        self.tmp = tempfile.mkdtemp(prefix="wgagent-lab-")
        self.procs: list[subprocess.Popen] = []
        self.spaces: list[Netns] = []
        os.makedirs(RUN_WG, exist_ok=True)  # the mount point for the private directories

    def netns(self, short: str) -> Netns:
        ns = Netns(self, short)
        self.spaces.append(ns)
        return ns

    def link(self, a: Netns, a_if: str, b: Netns, b_if: str, a_addrs=(), b_addrs=()) -> None:
        tmp = f"{self.prefix[:8]}{next(_serial)}"
        subprocess.run(["ip", "link", "add", tmp + "a", "netns", a.name, "type", "veth",
                        "peer", tmp + "b", "netns", b.name], check=True)
        a.ip("link", "set", tmp + "a", "name", a_if)
        b.ip("link", "set", tmp + "b", "name", b_if)
        for ns, ifname, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
            for addr in addrs:
                ns.ip("addr", "add", addr, "dev", ifname, *(["nodad"] if ":" in addr else []))
            ns.ip("link", "set", ifname, "up")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout * SLOWDOWN)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, timeout=5)
        for ns in reversed(self.spaces):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
