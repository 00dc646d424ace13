"""A WireGuard hub of 1,000 peers in a namespace, and the invariant every fault run
ends with. Used by the fault suite (tests/test_faults.py) and the soak (bench/soak.py).

    hub namespace (h)
      wg0   wireguard-go holding N peers (`wg setconf`), 10.63.0.1/32
            bench/uapi_proxy.py at /run/wireguard/wg0.sock, in front of it: the peers
            the test names are handshaken (the way bench/run.py serves 1,000+ peers)
      lan0  a bridge (no ports): routes of other protocols (static, boot), the NAT's device
      rules of others: netifd's defaults (as netifd re-adds them), mwan3-style fwmark
            2000, a user's source rule inside wgagent's band (5050), iif lan0 10000
      a route of protocol static on wg0 for peer CONFLICT's prefix (netifd's
            route_allowed_ips): wgagent must leave that prefix alone
      ubusd + rpcd: the double (tests/ubus_double/server.py), a process of its own
      wgagent: peers 0, 20, 40 ... have a peer section with source_table 200 (rules);
            a zone and a NAT section in the firewall

The invariant (Hub.check): the kernel holds exactly the desired routes and rules under
protocol 152, each once; every route and rule of another protocol is byte-identical to
before (its output device compared by name: a re-created interface has a new index);
the UCI firewall holds exactly the owned sections, the others as they were, and no
pending change of ours (neither in /tmp/.uci nor in a session's savedir).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

from wgagent import config as config_mod
from wgagent import firewall as firewall_mod
from wgagent import uci
from wgagent.model import AF_INET, AF_INET6, Route, Rule

from .daemonctl import Agent, wait_for
from .lab import SLOWDOWN, Lab, genkey

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROXY = os.path.join(ROOT, "bench", "uapi_proxy.py")
UBUS_CLI = os.path.join(HERE, "ubus_double", "bin", "ubus")

SOURCE_TABLE = 200
SUBSET = 20  # every SUBSET-th peer has a peer section with source_table
CONFLICT = 7  # this peer's first AllowedIP is held by a route of protocol static on wg0
RULE_BASE = 5000


def allowed(i: int) -> list[str]:
    """1-2 AllowedIPs per peer, mixed v4/v6 (as bench/run.py's)."""
    v4 = f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
    return [v4, f"fd77::{i:x}/128"] if i % 2 else [v4]


# netifd at start: every ip rule deleted, its own re-added (system_flush_iprules); plus
# the rules of other tools on this router. Protocol and bytes as `ip rule add` makes them.
NETIFD_RULES = {
    "-4": ["add pref 0 lookup local", "add pref 32766 lookup main", "add pref 32767 lookup default"],
    "-6": ["add pref 0 lookup local", "add pref 32766 lookup main"],
}
OTHER_RULES = {
    "-4": ["add pref 2000 fwmark 0x1 lookup 100 proto static",
           "add pref 5050 from 192.168.77.0/24 lookup 100 proto static",
           "add pref 10000 iif lan0 lookup 100 proto boot"],
    "-6": ["add pref 5060 from fd77:1::/64 lookup 100 proto static"],
}
OTHER_ROUTES = [
    ["route", "add", "198.18.0.0/15", "via", "192.168.77.254", "dev", "lan0", "proto", "static"],
    ["route", "add", "198.18.5.0/24", "dev", "lan0", "table", "100", "proto", "boot"],
    ["route", "add", "10.64.0.0/16", "dev", "lan0", "proto", "static", "metric", "50"],  # the covering route
    ["-6", "route", "add", "2001:db8:77::/48", "via", "fd77:1::fe", "dev", "lan0", "proto", "static"],
]

# Runs in the hub's namespace: one line on stdin, one JSON line back: wgagent's routes
# and rules decoded, everybody else's as raw bytes (an output device by its name).
PROBE = r"""
import json, struct, sys
from wgagent.netlink import NetlinkSocket, attrs
from wgagent import rtnl_routes, rtnl_rules
from wgagent.rtnl_links import LINK_DUMP, RTM_GETLINK, decode_link
from wgagent.model import RTPROT_WGAGENT

sock = NetlinkSocket()
RTMSG = rtnl_routes.RTMSG
BODIES = [RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0) for fam in (2, 10)]


def raw(data, mtype, off, end):
    return mtype, bytes(data[off:end])


def attr_list(body, off):
    out = []
    while off + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, off)
        if length < 4:
            break
        out.append((kind, body[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


for line in sys.stdin:
    names = {l.index: l.name for l in sock.dump(RTM_GETLINK, [LINK_DUMP], decode_link, "links")}
    owned, foreign = [], []
    for mtype, body in sock.dump(rtnl_routes.RTM_GETROUTE, BODIES, raw, "routes"):
        if mtype != rtnl_routes.RTM_NEWROUTE:
            continue
        if body[5] == RTPROT_WGAGENT:
            fam, table, dst, plen, oif, metric, gw, _ = rtnl_routes.decode(body, mtype, 0, len(body))
            owned.append([table, dst, plen, names.get(oif, f"if{oif}"), metric, gw])
            continue
        parts = [body[:RTMSG.size].hex()]
        for kind, value in attr_list(body, RTMSG.size):
            parts.append(f"{kind}=dev:{names.get(struct.unpack('=I', value)[0], '?')}"
                         if kind == rtnl_routes.RTA_OIF else f"{kind}={value.hex()}")
        foreign.append(" ".join(parts))
    rules, other_rules = [], []
    for mtype, body in sock.dump(rtnl_rules.RTM_GETRULE, rtnl_rules.RULE_DUMPS, raw, "rules"):
        if mtype != rtnl_rules.RTM_NEWRULE:
            continue
        mine = rtnl_rules.decode(body, mtype, 0, len(body))
        if mine is not None:
            rules.append(list(mine))
        else:
            other_rules.append(body.hex())
    print(json.dumps({"routes": owned, "rules": rules, "foreign_routes": sorted(foreign),
                      "foreign_rules": sorted(other_rules)}), flush=True)
"""


class Hub:
    """backend "uapi": wireguard-go behind the proxy, the test names the up peers.
    backend "kernel" (the test VM): kernel WireGuard, which cannot be told a peer is
    up: the peers in `phones` get real key pairs and a namespace of their own each
    (a veth to the hub, kernel WireGuard, PersistentKeepalive 1), and are the ones up."""

    def __init__(self, lab: Lab, n: int = 1000, poll: float = 1.0, handshake_timeout: float = 180,
                 mode: str = "moving", short: str = "h", backend: str = "uapi", phones=()):
        self.lab, self.n, self.poll, self.handshake_timeout = lab, n, poll, handshake_timeout
        self.mode, self.backend = mode, backend
        self.ns = ns = lab.netns(short)
        # no IPv6 link-local on devices made from now on: a re-created wg0 would get a new
        # random one, and with it routes of the kernel that were not there before
        ns.run("sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1", "net.ipv6.conf.all.addr_gen_mode=1")
        ns.ip("link", "add", "lan0", "type", "bridge")
        ns.ip("addr", "add", "192.168.77.1/24", "dev", "lan0")
        ns.ip("addr", "add", "fd77:1::1/64", "dev", "lan0", "nodad")
        ns.ip("link", "set", "lan0", "up")
        self.keys = [os.urandom(32) for _ in range(n)]
        self.phone_keys = {i: genkey() for i in phones}
        for i, (_, pub) in self.phone_keys.items():
            self.keys[i] = base64.b64decode(pub)
        self.private, self.public = genkey()
        self.real = os.path.join(lab.tmp, f"{short}-real-wireguard")
        os.makedirs(self.real)
        self.control = os.path.join(lab.tmp, f"{short}-up")
        self.offset = 0.0
        self.up: set[int] = set()
        self.endpoints: dict[int, str] = {}
        self.settings: dict[str, float] = {}
        self.set_up(())
        self.wggo = None
        self.start_wireguard()
        if backend == "uapi":
            self.proxy = subprocess.Popen([sys.executable, PROXY, os.path.join(ns.rundir, "wg0.sock"),
                                           os.path.join(self.real, "wg0.sock"), self.control])
            lab.procs.append(self.proxy)
            wait_for(lambda: os.path.exists(os.path.join(ns.rundir, "wg0.sock")), 10, what="the UAPI proxy")
        for i in phones:
            self.add_phone(i)
        for cmd in OTHER_ROUTES:
            ns.ip(*cmd)
        self.netifd_rules()
        self.conflict_route()
        # the bus: ubusd and rpcd (the double), the firewall as the router had it
        self.confdir = os.path.join(lab.tmp, f"{short}-etc-config")
        os.makedirs(self.confdir)
        with open(os.path.join(HERE, "data", "firewall.base")) as f:
            base = f.read()
        with open(os.path.join(self.confdir, "firewall"), "w") as f:
            f.write(base)
        self.foreign_firewall = self._foreign_sections(base)
        self.savedir = os.path.join(lab.tmp, f"{short}-uci-delta")  # /tmp/.uci
        self.rpcd_run = os.path.join(lab.tmp, f"{short}-rpcd-run")  # /var/run/rpcd
        self.ubus_sock = os.path.join(lab.tmp, f"{short}-ubus.sock")
        self.bus = None
        self.start_bus()
        self.config_path = os.path.join(lab.tmp, f"{short}-wgagent")
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.config = config_mod.load(self.config_path)
        self.probe = ns.popen(sys.executable, "-c", PROBE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        self.baseline = self.snapshot()
        assert not self.baseline["routes"] and not self.baseline["rules"], "a fresh hub holds nothing of ours"

    # --- the parts

    def start_wireguard(self):
        """wg0 with every peer, up: at start, and after a test deleted it. wireguard-go
        sees the real /run/wireguard directory; wgagent, in the namespace's usual one,
        sees the proxy."""
        bind = ["ip", "netns", "exec", self.ns.name, "sh", "-c", 'mount --bind "$0" /run/wireguard && exec "$@"',
                self.real]
        if self.backend == "kernel":
            self.ns.ip("link", "add", "wg0", "type", "wireguard")
        else:
            sock = os.path.join(self.real, "wg0.sock")
            if os.path.exists(sock):
                os.unlink(sock)
            log = open(os.path.join(self.lab.tmp, "wireguard-go.log"), "a")
            self.wggo = subprocess.Popen(bind + ["wireguard-go", "-f", "wg0"], stdout=log, stderr=log,
                                         env=dict(os.environ, LOG_LEVEL="error"))
            log.close()
            self.lab.procs.append(self.wggo)
            wait_for(lambda: os.path.exists(sock), 10, what="wireguard-go's socket")
        conf = os.path.join(self.lab.tmp, "wg0.conf")
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write(f"[Interface]\nPrivateKey = {self.private}\nListenPort = 51820\n\n")
                for i, k in enumerate(self.keys):
                    f.write(f"[Peer]\nPublicKey = {base64.b64encode(k).decode()}\n"
                            f"AllowedIPs = {', '.join(allowed(i))}\n\n")
        subprocess.run(bind + ["wg", "setconf", "wg0", conf], check=True, timeout=300 * SLOWDOWN)
        self.ns.ip("addr", "add", "10.63.0.1/32", "dev", "wg0")
        self.ns.ip("link", "set", "wg0", "up")

    def add_phone(self, i: int) -> None:
        """Peer i as a real device: its own namespace, kernel WireGuard, talking to wg0."""
        priv, _ = self.phone_keys[i]
        phone = self.lab.netns(f"p{i}")
        n = len(self.lab.spaces)
        self.lab.link(phone, "eth0", self.ns, f"vp{i}", [f"192.0.2.{n}/32"], ["192.0.2.200/32"])
        phone.ip("route", "add", "192.0.2.200/32", "dev", "eth0")
        self.ns.ip("route", "add", f"192.0.2.{n}/32", "dev", f"vp{i}")
        phone.add_wireguard("wgc", self.backend, priv, None, allowed(i))
        phone.wg_peer("wgc", self.public, ["10.63.0.1/32"], endpoint="192.0.2.200:51820", keepalive=1)
        phone.ip("route", "add", "10.63.0.1/32", "dev", "wgc")
        key = base64.b64encode(self.keys[i]).decode()

        def handshaken():
            phone.ping("10.63.0.1", wait=1)  # whatever the answer: the handshake is what counts
            out = self.ns.run("wg", "show", "wg0", "latest-handshakes").stdout.split()
            return key in out and out[out.index(key) + 1] != "0"

        wait_for(handshaken, 30, interval=0.2, what=f"phone {i}'s handshake")
        self.up.add(i)

    def stop_wireguard(self, sig=None):
        """wg0 goes away with its process (wireguard-go removes the link when it ends)."""
        import signal

        self.wggo.send_signal(sig or signal.SIGTERM)
        self.wggo.wait(10)
        self.lab.procs.remove(self.wggo)
        wait_for(lambda: "wg0" not in self.ns.ip("-o", "link", "show"), 10, what="wg0 gone")

    def start_bus(self, delay: float = 0.0):
        """delay: seconds before each answer (a busy rpcd: a write then takes long enough
        to be killed in the middle)."""
        self.bus = subprocess.Popen([sys.executable, "-m", "tests.ubus_double.server", self.ubus_sock,
                                     self.confdir, "--savedir", self.savedir, "--rundir", self.rpcd_run,
                                     "--delay", str(delay)],
                                    cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.lab.procs.append(self.bus)
        assert self.bus.stdout.readline().strip() == "ready"

    def kill_bus(self):
        """ubusd and rpcd die at once (kill -9): the double is both."""
        self.bus.kill()
        self.bus.wait()
        self.lab.procs.remove(self.bus)
        if os.path.exists(self.ubus_sock):
            os.unlink(self.ubus_sock)  # ubusd removes a stale socket at start; the double binds anew

    def config_text(self, extra_agent: str = "", poll: float | None = None,
                    handshake_timeout: float | None = None) -> str:
        out = [f"config agent 'main'\n\toption poll_interval '{poll or self.poll}'\n"
               f"\toption handshake_timeout '{handshake_timeout or self.handshake_timeout}'\n"
               f"\toption ubus_socket '{self.ubus_sock}'\n"
               + extra_agent,
               "config interface 'wg0'\n"]
        for i in range(0, self.n, SUBSET):
            out.append(f"config peer 'p{i}'\n\toption interface 'wg0'\n"
                       f"\toption public_key '{base64.b64encode(self.keys[i]).decode()}'\n"
                       f"\toption description 'peer {i}'\n\toption source_table '{SOURCE_TABLE}'\n")
        out.append("config zone 'hubwg'\n\toption network 'wg0'\n\tlist forward_to 'lan'\n"
                   "\tlist forward_from 'lan'\n\toption allow_port '51820'\n")
        out.append("config nat 'pool'\n\toption src_ip '10.64.0.0/16'\n\toption device 'lan0'\n")
        return "\n".join(out)

    def agent(self, name: str = "wgagent", text: str | None = None, **config) -> Agent:
        return Agent(self.lab, self.ns, text if text is not None else self.config_text(**config), name=name)

    def start(self, agent: Agent, *extra: str, env: dict | None = None, command: list[str] | None = None,
              spawned=None) -> Agent:
        return agent.start(*extra, env=dict(self.env(), **(env or {})), command=command, spawned=spawned)

    def env(self) -> dict:
        return {"WGAGENT_UBUS_CLI": UBUS_CLI, "PYTHONPATH": ROOT}

    # --- what the peers do

    def set_up(self, indexes, endpoints: dict[int, str] | None = None, **settings) -> None:
        """These peers handshaken, the others not (uapi_proxy.py's control file; with
        kernel WireGuard only the phones are, whatever this says)."""
        self.up = set(indexes)
        if endpoints is not None:
            self.endpoints = dict(endpoints)
        self.settings.update(settings)
        lines = [f"mode={self.mode}", f"offset={self.offset}"] + [f"{k}={v}" for k, v in self.settings.items()]
        lines += [self.keys[i].hex() + (f" {self.endpoints[i]}" if i in self.endpoints else "") for i in sorted(self.up)]
        with open(self.control + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.control + ".tmp", self.control)

    # --- other tools

    def netifd_rules(self) -> None:
        """What netifd does at its start: delete every ip rule, re-add its own (and the
        other tools re-add theirs)."""
        for fam in ("-4", "-6"):
            batch = ["rule del pref 0", "rule flush"] + [f"rule {r}" for r in NETIFD_RULES[fam] + OTHER_RULES[fam]]
            self.ns.run("sh", "-c", f"printf '%s\\n' \"$@\" | ip {fam} -force -batch -", "sh", *batch)

    def flush_device(self, dev: str = "wg0") -> None:
        """What netifd's device init does (system_if_clear_entries): every route of the
        main table whose output device is dev deleted; then netifd adds its own
        (route_allowed_ips) again."""
        for fam in ("-4", "-6"):
            self.ns.run("ip", fam, "route", "flush", "dev", dev, check=False)
        if dev == "wg0":
            self.conflict_route()

    def conflict_route(self) -> None:
        self.ns.ip("route", "replace", allowed(CONFLICT)[0], "dev", "wg0", "proto", "static")

    # --- the invariant

    def snapshot(self) -> dict:
        self.probe.stdin.write("\n")
        self.probe.stdin.flush()
        line = self.probe.stdout.readline()
        if not line:
            raise RuntimeError("the probe ended")
        return json.loads(line)

    def expected(self, up=None) -> tuple[list, list]:
        """The routes and rules wgagent must hold with these peers up, as sorted lists."""
        up = self.up if up is None else up
        routes, rules = set(), set()
        families = set()
        for i in up:
            for a in allowed(i):
                dst, plen = a.split("/")
                fam = AF_INET6 if ":" in dst else AF_INET
                if not (i == CONFLICT and a == allowed(CONFLICT)[0]):
                    routes.add(Route(254, dst, int(plen), "wg0", 1024 if fam == AF_INET6 else 0, ""))
                if i % SUBSET == 0:
                    rules.add(Rule(fam, RULE_BASE + 100, SOURCE_TABLE, dst, int(plen)))
                    families.add(fam)
        for fam in families:
            rules.add(Rule(fam, RULE_BASE, 254, "", 0, 0))
        return sorted(list(r) for r in routes), sorted(list(r) for r in rules)

    def problems(self, up=None, snap: dict | None = None, firewall: bool = True, foreign: bool = True) -> list[str]:
        """What breaks the invariant now (empty: it holds)."""
        snap = snap or self.snapshot()
        want_routes, want_rules = self.expected(up)
        out = []
        got_routes = sorted(snap["routes"])
        got_rules = sorted(snap["rules"])
        # once: one route of ours per (table, prefix) whatever its metric; a rule not twice
        for what, got, want, key in (("routes", got_routes, want_routes, lambda x: tuple(x[:3])),
                                     ("rules", got_rules, want_rules, tuple)):
            twice = len(got) - len({key(x) for x in got})
            if twice:
                out.append(f"{twice} {what} of ours held twice")
            missing = [x for x in want if x not in got]
            extra = [x for x in got if x not in want]
            if missing or extra:
                out.append(f"{what}: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} not wanted "
                           f"(e.g. {extra[:2]})")
        for what in ("foreign_routes", "foreign_rules") if foreign else ():
            if snap[what] != self.baseline[what]:
                gone = sorted(set(self.baseline[what]) - set(snap[what]))
                new = sorted(set(snap[what]) - set(self.baseline[what]))
                out.append(f"{what} changed: {len(gone)} gone {gone[:2]}, {len(new)} new {new[:2]}")
        if firewall:
            out += self.firewall_problems()
        return out

    def check(self, up=None, firewall: bool = True) -> None:
        problems = self.problems(up, firewall=firewall)
        assert not problems, "the invariant does not hold: " + "; ".join(problems)

    def converge(self, timeout: float, up=None, firewall: bool = True, foreign: bool = True) -> float:
        """Seconds until the invariant holds (AssertionError naming what is off after timeout)."""
        t0 = time.monotonic()
        last: list[str] = []

        def holds():
            nonlocal last
            last = self.problems(up, firewall=firewall, foreign=foreign)
            return not last

        try:
            wait_for(holds, timeout, interval=0.05, what="the invariant")
        except AssertionError as e:
            raise AssertionError(f"{e}: {'; '.join(last)}") from None
        return time.monotonic() - t0

    # --- the firewall half of the invariant

    @staticmethod
    def _foreign_sections(text: str) -> list:
        return [(s.type, s.name, s.options) for s in uci.parse(text) if not (s.name or "").startswith("wgagent_")]

    def firewall_problems(self) -> list[str]:
        with open(os.path.join(self.confdir, "firewall")) as f:
            text = f.read()
        sections = uci.parse(text)
        out = []
        owned = {s.name: (s.type, s.options) for s in sections if (s.name or "").startswith("wgagent_")}
        want = {s.name: (s.type, s.as_dict()) for s in firewall_mod.desired_sections(self.config)}
        if owned != want:
            out.append(f"firewall: owned sections {sorted(owned)} differ from {sorted(want)}")
        if self._foreign_sections(text) != self.foreign_firewall:
            out.append("firewall: sections of others changed")
        pending = []
        for d in [self.savedir] + [os.path.join(self.rpcd_run, x) for x in
                                   (os.listdir(self.rpcd_run) if os.path.isdir(self.rpcd_run) else [])]:
            path = os.path.join(d, "firewall")
            if os.path.exists(path) and os.path.getsize(path):
                pending.append(path)
        if pending:
            out.append(f"firewall: changes pending in {pending}")
        return out

    def close(self):
        if self.probe.poll() is None:
            self.probe.stdin.close()
            self.probe.wait(5)
