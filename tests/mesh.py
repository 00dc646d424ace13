"""Three sites joined pairwise by WireGuard, BIRD 2 carrying the roaming client.

The source write-up's network (../shared/seeds, MISSION.md): three routers op1, op2,
op3, each with a LAN and a host on it, joined pairwise by point-to-point site tunnels;
each router's wg0 serves the same pool with the same key and peer list; a phone that
moves between them. No static route for the pool anywhere: BIRD (examples/
bird-babel.conf, as shipped) carries wgagent's host routes over Babel.

                       "internet" (bridge sw, 203.0.113.0/24)
          203.0.113.1         203.0.113.2         203.0.113.3      203.0.113.100
        ┌─────┴─────┐       ┌─────┴─────┐       ┌─────┴─────┐      ┌────┴────┐
        │    op1    │═══════│    op2    │═══════│    op3    │      │  phone  │
        │ wg0 :51820│       │ wg0 :51820│       │ wg0 :51820│      │10.0.31.5│
        └─────┬─────┘       └─────┬─────┘       └─────┬─────┘      │ fd31::5 │
              ╚═══════════════════╪═══════════════════╝            └─────────┘
        br-lan 192.168.35.1  br-lan 192.168.36.1  br-lan 192.168.37.1
        fd35::1/64 ── h1     fd36::1/64 ── h2     fd37::1/64 ── h3  (.10, ::10)

Site tunnel between op<i> and op<j>: on op<i> it is wg_s2s_op<j>, listening on
51830 + j, with one peer (op<j>'s end) whose AllowedIPs are 0.0.0.0/0 and ::/0;
addresses 10.0.32.<ij>/32 peer 10.0.32.<ji> and the link-local fe80::<i>/64 that
Babel speaks from (WireGuard interfaces get none by themselves).

Every process (wireguard-go, bird, wgagent) is started through the lab and kept by
its PID; Lab.close() ends them and deletes the namespaces.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

from .daemonctl import Agent, owned_routes, wait_for
from .lab import Lab, Netns, genkey

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIRD_BABEL = os.path.join(ROOT, "examples", "bird-babel.conf")
BIRD_OSPF = os.path.join(ROOT, "examples", "bird-ospf.conf")

PHONE4, PHONE6 = "10.0.31.5", "fd31::5"
POOL4, POOL6 = "10.0.31.0/24", "fd31::/64"
SITES = (1, 2, 3)


def lan4(i: int) -> str:
    return f"192.168.{34 + i}"


def lan6(i: int) -> str:
    return f"fd{34 + i}::"


def tunnel(i: int, j: int) -> str:
    """op<i>'s end of the site tunnel to op<j>."""
    return f"wg_s2s_op{j}"


def tunnel_addr(i: int, j: int) -> str:
    return f"10.0.32.{10 * i + j}"


def missing_bird() -> str | None:
    if shutil.which("bird") is None or shutil.which("birdc") is None:
        return "needs BIRD 2 (apt-get install bird2)"
    return None


class Bird:
    """One BIRD in a router namespace: the shipped config with the lab's log file and
    control socket, started in the foreground (-f) so that its PID is the process's."""

    def __init__(self, lab: Lab, ns: Netns, template: str = BIRD_BABEL):
        self.lab, self.ns = lab, ns
        self.conf = os.path.join(lab.tmp, f"{ns.short}-bird.conf")
        self.ctl = os.path.join(lab.tmp, f"{ns.short}-bird.ctl")
        self.logfile = os.path.join(lab.tmp, f"{ns.short}-bird.log")
        with open(template) as f:
            text = f.read()
        # the shipped config logs to syslog: here each BIRD writes a file of its own
        text, n = re.subn(r"^log syslog all;$", f'log "{self.logfile}" all;', text, flags=re.M)
        assert n == 1, "the shipped config's log line changed"
        with open(self.conf, "w") as f:
            f.write(text)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Bird":
        out = open(self.logfile + ".stderr", "a")
        self.proc = self.ns.popen("bird", "-f", "-c", self.conf, "-s", self.ctl, stdout=out,
                                  stderr=subprocess.STDOUT)
        out.close()
        wait_for(lambda: os.path.exists(self.ctl) or self.proc.poll() is not None, 15, what="bird's socket")
        assert self.proc.poll() is None, f"bird exited {self.proc.returncode}: {self.log()}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None

    def birdc(self, *args: str) -> str:
        return self.ns.run("birdc", "-s", self.ctl, *args, check=False).stdout

    def log(self) -> str:
        text = ""
        for path in (self.logfile, self.logfile + ".stderr"):
            if os.path.exists(path):
                with open(path) as f:
                    text += f.read()
        return text


class Mesh:
    """The three sites, the phone, BIRD on each router (unless bird=False) and wgagent
    on each router (start_agents)."""

    def __init__(self, lab: Lab, backend: str, bird: bool = True, template: str = BIRD_BABEL):
        self.lab, self.backend = lab, backend
        inet = self.inet = lab.netns("inet")
        inet.ip("link", "add", "sw", "type", "bridge")
        inet.ip("link", "set", "sw", "up")
        self.op = {i: lab.netns(f"op{i}") for i in SITES}
        self.host = {i: lab.netns(f"h{i}") for i in SITES}
        self.phone = lab.netns("phone")
        for i, r in self.op.items():
            self._wan(r, f"203.0.113.{i}/24")
            lab.link(r, "br-lan", self.host[i], "eth0", [f"{lan4(i)}.1/24", f"{lan6(i)}1/64"],
                     [f"{lan4(i)}.10/24", f"{lan6(i)}10/64"])
            self.host[i].ip("route", "add", "default", "via", f"{lan4(i)}.1")
            self.host[i].ip("-6", "route", "add", "default", "via", f"{lan6(i)}1")
        self._wan(self.phone, "203.0.113.100/24")
        keys = {(i, j): genkey() for i in SITES for j in SITES if i != j}
        for i in SITES:
            for j in SITES:
                if i == j:
                    continue
                r, name = self.op[i], tunnel(i, j)
                r.add_wireguard(name, backend, keys[(i, j)][0], 51830 + j)
                r.ip("addr", "add", tunnel_addr(i, j), "peer", tunnel_addr(j, i), "dev", name)
                r.ip("addr", "add", f"fe80::{i}/64", "dev", name, "nodad")
                # kernel WireGuard comes without IFF_MULTICAST (wireguard-go's tun has it):
                # Babel's hellos go to ff02::1:6
                r.ip("link", "set", name, "multicast", "on")
                r.wg_peer(name, keys[(j, i)][1], ["0.0.0.0/0", "::/0"], f"203.0.113.{j}:{51830 + i}")
        self.pool_key, self.phone_key = genkey(), genkey()
        for i, r in self.op.items():
            r.add_wireguard("wg0", backend, self.pool_key[0], 51820, [f"10.0.31.{i}/32", f"fd31::{i}/128"])
            r.wg_peer("wg0", self.phone_key[1], [PHONE4 + "/32", PHONE6 + "/128"])
        self.phone.add_wireguard("wgc", backend, self.phone_key[0], None, [PHONE4 + "/32", PHONE6 + "/128"])
        self.phone_nets = [POOL4, POOL6] + [f"{lan4(i)}.0/24" for i in SITES] + [f"{lan6(i)}/64" for i in SITES]
        for net in self.phone_nets:
            self.phone.ip("route", "add", net, "dev", "wgc")
        self.at: int | None = None
        self.birds = {i: Bird(lab, r, template) for i, r in self.op.items()} if bird else {}
        for b in self.birds.values():
            b.start()
        self.agents: dict[int, Agent] = {}

    def _wan(self, ns: Netns, addr: str) -> None:
        self.lab.link(ns, "wan", self.inet, f"p-{ns.short}", [addr])
        self.inet.ip("link", "set", f"p-{ns.short}", "master", "sw")

    # --- wgagent

    def agent_config(self, poll: float, idle_timeout: float, metric: int = 1, extra_iface: str = "") -> str:
        return (f"config agent 'main'\n\toption poll_interval '{poll}'\n\n"
                f"config interface 'wg0'\n\toption idle_timeout '{idle_timeout:g}'\n\toption metric '{metric}'\n"
                + textwrap.indent(extra_iface, "\t") +
                f"\nconfig peer 'phone'\n\toption interface 'wg0'\n\toption public_key '{self.phone_key[1]}'\n"
                "\toption description 'phone'\n")

    def start_agents(self, poll: float, idle_timeout: float = 20, metric: int = 1, **kw) -> dict[int, Agent]:
        for i, r in self.op.items():
            self.agents[i] = Agent(self.lab, r, self.agent_config(poll, idle_timeout, metric, **kw)).start()
        return self.agents

    # --- the phone

    def connect(self, i: int) -> float:
        """The phone (re)connects to op<i> as a phone that switched networks: a fresh
        session (its peer removed and added again), keepalive 1 s, from a new source
        port. The port matters: every router holds the pool's key, and a router that
        sent the phone packets it never answered (those in flight at the move) starts
        a handshake of its own 15 s later (WireGuard's new-handshake timer, REKEY_TIMEOUT
        + KEEPALIVE_TIMEOUT); reaching the phone at its old address, it would take the
        phone back. A phone on another network is not at its old address any more.
        Returns when op<i> saw the handshake (monotonic)."""
        self.port = getattr(self, "port", 40000) + 1
        # the old session goes first: a packet from the new port would tell the old
        # router (WireGuard roams a peer's endpoint to where its packets come from)
        self.phone.run("wg", "set", "wgc", "peer", self.pool_key[1], "remove")
        self.phone.run("wg", "set", "wgc", "listen-port", str(self.port))
        self.phone.wg_peer("wgc", self.pool_key[1], self.phone_nets, f"203.0.113.{i}:51820", keepalive=1)
        self.at = i
        try:
            wait_for(lambda: self.phone.ping(f"10.0.31.{i}", wait=1), 20, what=f"the phone's handshake with op{i}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose()}") from None
        return time.monotonic()

    def diagnose(self) -> str:
        """What the phone, the routers and their daemons say: for a failure's message."""
        out = [f"phone: {self.phone.run('wg', 'show', 'wgc', check=False).stdout}"]
        for i, r in self.op.items():
            out.append(f"op{i} wg0: {r.run('wg', 'show', 'wg0', check=False).stdout}")
            out.append(f"op{i} routes for the phone: {self.routes_for_phone(i)}")
            if i in self.agents:
                out.append(f"op{i} wgagent:\n{self.agents[i].log()[-1500:]}")
        return "\n".join(out)

    # --- what the kernels say

    def wgagent_routes(self, i: int) -> list[str]:
        return [r for r in owned_routes(self.op[i]) if r.startswith((PHONE4 + " ", PHONE6 + " "))]

    def bird_routes(self, i: int) -> list[str]:
        """BIRD's unicast routes for the phone in op<i>'s kernel (unreachable ones left out)."""
        return [r for r in self.op[i].routes("proto", "bird")
                if r.startswith((PHONE4 + " ", PHONE6 + " ")) and not r.startswith("unreachable")]

    def routes_for_phone(self, i: int) -> list[str]:
        return [line for line in self.op[i].routes() if line.split()[:1] in ([PHONE4], [PHONE6])
                or line.startswith(("unreachable " + PHONE4, "unreachable " + PHONE6))]

    def reaches_phone(self, i: int, family: int = 4, wait: float = 1) -> bool:
        """Does h<i> get an answer from the phone?"""
        target = PHONE4 if family == 4 else PHONE6
        return self.host[i].ping(target, wait=wait)

    def everyone_reaches_phone(self) -> bool:
        return all(self.reaches_phone(i, fam) for i in SITES for fam in (4, 6))

    def agrees(self, i: int) -> bool:
        """Every other router's kernel routes the phone (both families) over its site
        tunnel to op<i> by BIRD's route alone: Babel has told them all where it is."""
        for j in SITES:
            if j != i:
                routes = self.bird_routes(j)
                if len(routes) != 2 or not all(f" dev {tunnel(j, i)} " in r + " " for r in routes):
                    return False
        return True

    def holds(self, i: int) -> bool:
        """op<i> holds wgagent's routes for the phone (both families) and no other does."""
        return all(len(self.wgagent_routes(j)) == (2 if j == i else 0) for j in SITES)


class Pings:
    """Pings from every LAN host to the phone, both families, every 0.1 s, running in
    the hosts' namespaces (kept by PID, ended by the lab); their output, timestamped
    by ping -D, tells when each host had answers again and whether any packet met a
    routing loop (time to live / hop limit exceeded)."""

    INTERVAL = 0.1

    def __init__(self, mesh: Mesh):
        self.files: dict[tuple[int, int], str] = {}
        self.procs = []
        for i, host in mesh.host.items():
            for family, target in ((4, PHONE4), (6, PHONE6)):
                path = os.path.join(mesh.lab.tmp, f"ping-h{i}-{family}.log")
                out = open(path, "w")
                self.procs.append(host.popen("ping", "-D", "-n", "-O", "-i", str(self.INTERVAL), "-W", "1", target,
                                             stdout=out, stderr=subprocess.STDOUT))
                out.close()
                self.files[(i, family)] = path

    def _lines(self, key) -> list[str]:
        with open(self.files[key]) as f:
            return f.read().splitlines()

    def _requests(self, key) -> tuple[dict[int, float], dict[int, float]]:
        """{icmp_seq: wall-clock send time} of the answered requests and of those ping
        said had no answer yet when it sent the next one (-O; late or lost)."""
        answered, missed = {}, {}
        for line in self._lines(key):
            m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from \S+: icmp_seq=(\d+) .*time=([\d.]+) ms", line)
            if m:
                answered[int(m.group(2))] = float(m.group(1)) - float(m.group(3)) / 1000
                continue
            m = re.match(r"\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)", line)
            if m:
                missed[int(m.group(2))] = float(m.group(1)) - self.INTERVAL
        return answered, missed

    def answered_since(self, key, since: float) -> float | None:
        """When the host had answers again after `since` (wall clock): the send time of
        the first request answered in time after the last one sent since then that was
        not; `since` itself when none went unanswered; None while none is answered."""
        answered, missed = self._requests(key)
        late = [seq for seq, t in missed.items() if t >= since]
        after = max(late) if late else -1
        good = sorted((seq, t) for seq, t in answered.items() if t >= since and seq > after and seq not in missed)
        if not good:
            return None
        return since if not late else good[0][1]

    def loops(self) -> list[str]:
        return [f"h{i}/IPv{fam}: {line}" for (i, fam) in self.files for line in self._lines((i, fam))
                if "exceeded" in line.lower()]

    def stop(self, lab: Lab) -> None:
        for p in self.procs:
            lab.stop(p)


class RouteWatch:
    """The routes for the phone in each router's kernel, as rtnetlink announces them:
    a small listener per router namespace (kept by PID, ended by the lab) prints every
    RTM_NEWROUTE and RTM_DELROUTE for the phone's two host prefixes with the time it
    was read. `settled(i, to, since)` says when, after `since`, op<i> last started
    routing the phone the right way for a phone at op<to> (wgagent's routes at op<to>;
    elsewhere none of wgagent's and BIRD's via the tunnel to op<to>, both families)."""

    CODE = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE
s.bind((0, (1 << 6) | (1 << 10)))  # RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE
WANT = {(2, 32, socket.inet_pton(2, sys.argv[1])), (10, 128, socket.inet_pton(10, sys.argv[2]))}
print("ready", flush=True)
while True:
    data = s.recv(1 << 20)
    t = time.time()
    off, out = 0, []
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if mtype in (24, 25):
            fam, plen, _, _, _, proto, _, rtype = struct.unpack_from("=8B", data, off + 16)
            a, dst, oif, metric = off + 28, b"", 0, 0
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == 1:
                    dst = data[a + 4:a + alen]
                elif atype == 4:
                    oif = struct.unpack_from("=I", data, a + 4)[0]
                elif atype == 6:
                    metric = struct.unpack_from("=I", data, a + 4)[0]
                a += (alen + 3) & ~3
            if (fam, plen, dst) in WANT:
                out.append(f"{t:.6f} {'new' if mtype == 24 else 'del'} {fam} {proto} {rtype} {metric} {oif}\n")
        off += (length + 3) & ~3
    if out:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
"""

    def __init__(self, mesh: Mesh):
        import threading

        self.mesh = mesh
        self.events: dict[int, list] = {i: [] for i in SITES}
        self.lock = threading.Lock()
        self.tunnel_index: dict[tuple[int, int], int] = {}
        for i, r in mesh.op.items():
            for j in SITES:
                if j != i:
                    self.tunnel_index[(i, j)] = int(r.run("cat", f"/sys/class/net/{tunnel(i, j)}/ifindex").stdout)
            proc = r.popen(sys.executable, "-c", self.CODE, PHONE4, PHONE6, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()
        # what each kernel holds already: (family, proto, metric) -> oif, from `ip route`
        self.initial = {i: self._now(i) for i in SITES}

    def _now(self, i: int) -> dict:
        """(family, protocol, metric) -> ifindex of the unicast routes for the phone now."""
        held = {}
        for fam, prefix in ((2, PHONE4), (10, PHONE6)):
            for line in self.mesh.op[i].ip("-N", "-d", "route", "show", "table", "main", prefix).splitlines():
                w = line.split()
                if not w or w[0] not in ("unicast", "1"):  # -N: the type as a number too
                    continue
                held[(fam, int(w[w.index("proto") + 1]), int(w[w.index("metric") + 1]) if "metric" in w else 0)] = \
                    int(self.mesh.op[i].run("cat", f"/sys/class/net/{w[w.index('dev') + 1]}/ifindex").stdout)
        return held

    def _read(self, i: int, proc) -> None:
        for line in proc.stdout:
            t, verb, fam, proto, rtype, metric, oif = line.split()
            with self.lock:
                self.events[i].append((float(t), verb, int(fam), int(proto), int(rtype), int(metric), int(oif)))

    def _right(self, i: int, to: int, held: dict) -> bool:
        for fam in (2, 10):
            ours = any(f == fam and p == 152 for f, p, _ in held)
            if i == to:
                if not ours:
                    return False
            elif ours or not any(f == fam and p == 12 and oif == self.tunnel_index[(i, to)]
                                 for (f, p, _), oif in held.items()):
                return False
        return True

    def settled(self, i: int, to: int, since: float) -> float | None:
        """When, not before `since`, op<i> began routing the phone right for a phone at
        op<to> and has since; None while it does not."""
        held = dict(self.initial[i])
        right_since = float("-inf") if self._right(i, to, held) else None
        with self.lock:
            events = list(self.events[i])
        for t, verb, fam, proto, rtype, metric, oif in events:
            key = (fam, proto, metric)
            if verb == "new" and rtype == 1:
                held[key] = oif
            else:
                held.pop(key, None)
            if not self._right(i, to, held):
                right_since = None
            elif right_since is None:
                right_since = t
        return None if right_since is None else max(right_since, since)

    def routes_now(self, i: int) -> list[str]:
        return self.mesh.routes_for_phone(i)


__all__ = ["BIRD_BABEL", "BIRD_OSPF", "Bird", "Mesh", "PHONE4", "PHONE6", "POOL4", "POOL6", "Pings", "RouteWatch",
           "SITES", "lan4", "lan6", "missing_bird", "tunnel", "tunnel_addr"]
