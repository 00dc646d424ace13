"""Policy rules end to end: P2 (return path) and P3 (per-peer source rules).

                 far host 192.0.2.77, 2001:db8:77::77 (on lo)
                         │
                       inet  198.51.100.1 / 2001:db8:100::1   (the WAN gateway)
                         │ wan
   lan ns ── lan ──  router r  ── s2s-underlay ── op1      (wg_s2s: the tunnel that
   192.168.36.10     │     │  198.18.0.0/30                 carries r's default route)
                     │     └── alt ── alt ns: 192.0.2.99, fd99::99 on lo (a chosen path)
                   wg0 (phone 10.0.31.5, fd31::5)

r's main table sends everything (0/0 and ::/0) into wg_s2s with metric 1; the WAN
default via the gateway has metric 100, so it is never used without wgagent.
The phone (ns ph, behind veth vph 203.0.113.0/30) is added by the tests that need it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from .daemonctl import PROTO, Agent, wait_for
from .lab import SLOWDOWN, genkey
from .ubus_double.server import UbusDouble

pytestmark = pytest.mark.root

# "Within a second" of an address, link or rule event: the daemon reacts to
# rtnetlink, not to the poll, so one second is the whole budget from the moment the
# command that made the event returns (wait_for stretches it by WGAGENT_TEST_SLOWDOWN).
EVENT = 1.0
HERE = os.path.dirname(os.path.abspath(__file__))

SERVER = textwrap.dedent("""
    import socket, sys, threading
    def serve(family, addr):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 8080)); s.listen(16)
        while True:
            c, _ = s.accept(); c.sendall(b"hello\\n"); c.close()
    threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
    serve(socket.AF_INET, "0.0.0.0")
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    dst, src = sys.argv[1], sys.argv[2]
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(1.5)
    if src != "-": s.bind((src, 0))
    try:
        s.connect((dst, 8080)); sys.exit(0 if s.recv(16) == b"hello\\n" else 1)
    except OSError:
        sys.exit(1)
""")


def connects(ns, dst: str, src: str = "-") -> bool:
    return ns.run(sys.executable, "-c", CLIENT, dst, src, check=False).returncode == 0


class Wan:
    def __init__(self, lab, backend: str):
        self.lab = lab
        self.r, self.inet, self.lan, self.op1, self.alt = (lab.netns(n) for n in ("r", "inet", "lan", "op1", "alt"))
        self.inet.ip("addr", "add", "192.0.2.77/32", "dev", "lo")
        self.inet.ip("addr", "add", "2001:db8:77::77/128", "dev", "lo")
        # no duplicate address detection on the WAN: it holds every new address (the
        # link-locals of a re-created link too) tentative for a second, which would
        # hide what the tests time, wgagent's reaction
        for ns in (self.r, self.inet):
            ns.run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        self.link_wan()
        lab.link(self.r, "lan", self.lan, "eth0", ["192.168.36.1/24", "fd36::1/64"], ["192.168.36.10/24", "fd36::10/64"])
        self.lan.ip("route", "add", "default", "via", "192.168.36.1")
        self.lan.ip("-6", "route", "add", "default", "via", "fd36::1")
        # the site tunnel that carries r's default route
        lab.link(self.r, "under", self.op1, "under", ["198.18.0.1/30"], ["198.18.0.2/30"])
        k_r, k_op1 = genkey(), genkey()
        self.r.add_wireguard("wg_s2s", backend, k_r[0], 51830, ["10.0.32.2/30"])
        self.op1.add_wireguard("wg_s2s", backend, k_op1[0], 51830, ["10.0.32.1/30"])
        self.r.wg_peer("wg_s2s", k_op1[1], ["0.0.0.0/0", "::/0"], "198.18.0.2:51830", 5)
        self.op1.wg_peer("wg_s2s", k_r[1], ["10.0.32.2/32"], "198.18.0.1:51830", 5)
        for fam in ("-4", "-6"):
            self.r.ip(fam, "route", "add", "default", "dev", "wg_s2s", "metric", "1")
        # a second path, for per-peer source rules (table 200)
        lab.link(self.r, "alt", self.alt, "up0", ["198.19.0.1/30", "fd19::1/64"], ["198.19.0.2/30", "fd19::2/64"])
        self.alt.ip("addr", "add", "192.0.2.99/32", "dev", "lo")
        self.alt.ip("addr", "add", "fd99::99/128", "dev", "lo")
        self.alt.ip("route", "add", "10.0.31.0/24", "via", "198.19.0.1")
        self.alt.ip("-6", "route", "add", "fd31::/64", "via", "fd19::1")
        self.r.ip("route", "add", "default", "via", "198.19.0.2", "table", "200")
        self.r.ip("-6", "route", "add", "default", "via", "fd19::2", "table", "200")
        self.server = self.r.popen(sys.executable, "-c", SERVER, stdout=subprocess.DEVNULL)
        wait_for(lambda: connects(self.r, "127.0.0.1"), 10, what="test server")

    def link_wan(self):
        """The WAN link with its addresses and DHCP's default routes (again, after it went)."""
        self.lab.link(self.r, "wan", self.inet, "down0", ["198.51.100.2/24", "2001:db8:100::2/64"],
                      ["198.51.100.1/24", "2001:db8:100::1/64"])
        self.inet.ip("route", "replace", "192.168.0.0/16", "via", "198.51.100.2")  # so far is not the problem
        self.wan_defaults()

    def wan_defaults(self):
        self.r.ip("route", "replace", "default", "via", "198.51.100.1", "dev", "wan", "metric", "100")
        self.r.ip("-6", "route", "replace", "default", "via", "2001:db8:100::1", "dev", "wan", "metric", "100")

    def rules(self) -> list[str]:
        out = []
        for fam in ("-4", "-6"):
            out += [line.strip() for line in self.r.ip(fam, "rule", "show").splitlines() if f"proto {PROTO}" in line]
        return out

    def add_phone(self, backend: str) -> tuple[object, str, str]:
        """wg0 on r with one peer, the phone (ns ph), which keeps its tunnel up with
        keepalives. Returns (phone ns, r's wg0 public key, the phone's public key)."""
        lab, r = self.lab, self.r
        phone = lab.netns("ph")
        lab.link(phone, "eth0", r, "vph", ["203.0.113.2/30"], ["203.0.113.1/30"])
        k_wg0, k_ph = genkey(), genkey()
        r.add_wireguard("wg0", backend, k_wg0[0], 51820, ["10.0.31.1/32", "fd31::1/128"])
        r.wg_peer("wg0", k_ph[1], ["10.0.31.5/32", "fd31::5/128"])
        phone.add_wireguard("wgc", backend, k_ph[0], None, ["10.0.31.5/32", "fd31::5/128"])
        phone.wg_peer("wgc", k_wg0[1], ["0.0.0.0/0", "::/0"], "203.0.113.1:51820", keepalive=1)
        phone.ip("route", "add", "default", "dev", "wgc")
        phone.ip("-6", "route", "add", "default", "dev", "wgc")
        return phone, k_wg0[1], k_ph[1]


def rule_dump(ns) -> list[str]:
    """Every rule of both families (`ip -j rule`), one canonical JSON string each,
    sorted: two equal dumps hold the same rules, each as many times."""
    out = []
    for fam in ("-4", "-6"):
        out += [json.dumps(dict(rule, family=fam), sort_keys=True) for rule in json.loads(ns.ip(fam, "-j", "rule"))]
    return sorted(out)


def foreign(dump: list[str]) -> list[str]:
    return [x for x in dump if json.loads(x).get("protocol") != PROTO]


def owned(dump: list[str]) -> list[str]:
    return [x for x in dump if json.loads(x).get("protocol") == PROTO]


RETURN_PATH = """
config agent 'main'
\toption poll_interval '0.5'

config return_path 'wan'
\toption device 'wan'
\toption table '100'
"""


def phone_conf(public_key: str, idle_timeout: str = "0") -> str:
    return textwrap.dedent(f"""
        config interface 'wg0'
        \toption idle_timeout '{idle_timeout}'
        config peer 'phone'
        \toption interface 'wg0'
        \toption public_key '{public_key}'
        \toption description 'phone'
        \toption source_table '200'
    """)


@pytest.fixture
def wan(lab, backend):
    return Wan(lab, backend)


def test_return_path_follows_the_wan_address(wan):
    r, inet, lan = wan.r, wan.inet, wan.lan
    assert not connects(inet, "198.51.100.2", "192.0.2.77"), "without wgagent the reply must go into the tunnel"
    assert not connects(inet, "2001:db8:100::2", "2001:db8:77::77")
    agent = Agent(wan.lab, r, RETURN_PATH).start()
    wait_for(lambda: "from 198.51.100.2 lookup 100" in " ".join(wan.rules()), 5, what="return-path rule")
    rules = wan.rules()
    assert "5000:\tfrom all lookup main suppress_prefixlength 0 proto 152" in rules
    assert "5010:\tfrom 198.51.100.2 lookup 100 proto 152" in rules
    assert "5010:\tfrom 2001:db8:100::2 lookup 100 proto 152" in rules
    table = r.routes("table", "100")
    assert "default via 198.51.100.1 dev wan proto 152" in table[0] and any(
        t.startswith("198.51.100.0/24 dev wan proto 152") for t in table), table
    assert wait_for(lambda: connects(inet, "198.51.100.2", "192.0.2.77"), 5, what="connection from the internet")
    assert connects(inet, "2001:db8:100::2", "2001:db8:77::77")
    # the LAN still reaches the router's WAN address (the suppress rule's job)
    assert connects(lan, "198.51.100.2") and connects(lan, "2001:db8:100::2")
    # DHCP hands out a new address (and re-adds its default route): the rules follow at once.
    # The table's routes are written before the rules, so once the rule shows, a
    # connection works at the first try.
    r.ip("addr", "del", "198.51.100.2/24", "dev", "wan")
    r.ip("addr", "add", "198.51.100.3/24", "dev", "wan")
    wan.wan_defaults()
    wait_for(lambda: "5010:\tfrom 198.51.100.3 lookup 100 proto 152" in wan.rules(), EVENT,
             what="rule for the new address within a second (address event, not the poll)")
    assert "5010:\tfrom 198.51.100.2 lookup 100 proto 152" not in wan.rules()
    assert connects(inet, "198.51.100.3", "192.0.2.77"), "connection to the new address"
    # SLAAC or DHCPv6 moves the IPv6 address (accept_dad is off on wan, see Wan)
    r.ip("-6", "addr", "del", "2001:db8:100::2/64", "dev", "wan")
    r.ip("-6", "addr", "add", "2001:db8:100::3/64", "dev", "wan")
    wan.wan_defaults()
    wait_for(lambda: "5010:\tfrom 2001:db8:100::3 lookup 100 proto 152" in wan.rules(), EVENT,
             what="rule for the new IPv6 address within a second")
    assert "5010:\tfrom 2001:db8:100::2 lookup 100 proto 152" not in wan.rules()
    assert connects(inet, "2001:db8:100::3", "2001:db8:77::77"), "connection to the new IPv6 address"
    assert connects(lan, "2001:db8:100::3")
    assert "event=rule_added" in agent.log() and "owner=\"return_path wan\"" in agent.log()
    st = agent.run_cli("status", "--json", check=True).stdout
    assert '"device": "wan"' in st and "198.51.100.3/24" in st and "2001:db8:100::3/64" in st
    agent.stop()
    assert wan.rules() == [] and r.routes("table", "100") == []


def test_gateway_change(wan):
    r = wan.r
    Agent(wan.lab, r, RETURN_PATH).start()
    wait_for(lambda: any("via 198.51.100.1" in t for t in r.routes("table", "100")), 5, what="table 100 default")
    # the DHCP server hands out another gateway
    r.ip("addr", "add", "198.51.100.254/24", "dev", "wan")  # a second address: two rules
    r.ip("route", "del", "default", "via", "198.51.100.1", "dev", "wan", "metric", "100")
    wan.inet.ip("addr", "add", "198.51.100.9/24", "dev", "down0")
    r.ip("route", "add", "default", "via", "198.51.100.9", "dev", "wan", "metric", "100")
    wait_for(lambda: any(t.startswith("default via 198.51.100.9 dev wan") for t in r.routes("table", "100")), EVENT,
             what="table 100 following the new gateway within a second")
    assert "5010:\tfrom 198.51.100.254 lookup 100 proto 152" in wan.rules()
    assert not any("198.51.100.1 " in t for t in r.routes("table", "100"))


def test_return_path_device_goes_and_returns(wan):
    r, inet = wan.r, wan.inet
    agent = Agent(wan.lab, r, RETURN_PATH).start()
    wait_for(lambda: len(wan.rules()) == 4 and len(r.routes("table", "100")) == 4, 5,
             what="four rules and four table routes (v4 and v6)")
    rules, table = sorted(wan.rules()), r.routes("table", "100")

    def back():
        return sorted(wan.rules()) == rules and r.routes("table", "100") == table

    # the device goes (a USB modem unplugged, a VLAN device deleted) ...
    r.ip("link", "del", "wan")
    wait_for(lambda: not wan.rules(), EVENT, what="rules gone with the device within a second")
    assert r.routes("table", "100") == []
    # ... and returns with its addresses and DHCP's default routes
    wan.link_wan()
    wait_for(back, EVENT, what="rules and table routes back within a second of the device")
    assert connects(inet, "198.51.100.2", "192.0.2.77") and connects(inet, "2001:db8:100::2", "2001:db8:77::77")
    # netifd's ifdown: the device stays but goes down and loses its addresses ...
    r.ip("link", "set", "wan", "down")
    r.ip("addr", "flush", "dev", "wan")
    wait_for(lambda: not wan.rules(), EVENT, what="rules gone with the addresses within a second")
    assert r.routes("table", "100") == []
    # ... ifup: up, addresses, default routes
    r.ip("link", "set", "wan", "up")
    r.ip("addr", "add", "198.51.100.2/24", "dev", "wan")
    r.ip("addr", "add", "2001:db8:100::2/64", "dev", "wan")
    wan.wan_defaults()
    wait_for(back, EVENT, what="rules and table routes back within a second of ifup")
    assert connects(inet, "198.51.100.2", "192.0.2.77") and connects(inet, "2001:db8:100::2", "2001:db8:77::77")
    assert agent.events("return_path_down") and agent.proc.poll() is None


def test_deleted_rules_are_restored_at_once(wan):
    r = wan.r
    agent = Agent(wan.lab, r, RETURN_PATH.replace("'0.5'", "'30'")).start()
    wait_for(lambda: len(wan.rules()) == 4, 5, what="four rules (suppress and return path, v4 and v6)")
    want = sorted(wan.rules())
    for _ in range(2):
        # what netifd does when it starts: every rule goes, then it adds its own
        for fam in ("-4", "-6"):
            r.ip(fam, "rule", "flush")
            r.ip(fam, "rule", "add", "pref", "32766", "lookup", "main")
        r.ip("-4", "rule", "add", "pref", "32767", "lookup", "default")
        wait_for(lambda: sorted(wan.rules()) == want, EVENT, what="rules restored from the rtnetlink event")
    assert agent.proc.poll() is None


def test_per_peer_source_rule_sends_the_peer_by_the_chosen_path(wan, backend):
    lab, r = wan.lab, wan.r
    phone, k_wg0, k_ph = wan.add_phone(backend)
    conf = "config agent 'main'\n\toption poll_interval '0.5'\n" + phone_conf(k_ph, idle_timeout="3")
    assert not phone.ping("192.0.2.99"), "without the rule the phone's traffic takes the main table"
    agent = Agent(lab, r, conf).start()
    wait_for(lambda: phone.ping("10.0.31.1") or phone.ping("192.0.2.99"), 10, what="phone handshake")
    wait_for(lambda: "5100:\tfrom 10.0.31.5 lookup 200 proto 152" in wan.rules(), 5, what="per-peer rule")
    assert "5100:\tfrom fd31::5 lookup 200 proto 152" in wan.rules()
    rx_before = int(r.run("cat", "/sys/class/net/alt/statistics/tx_packets").stdout)
    assert phone.ping("192.0.2.99", count=3) and phone.ping("fd99::99", count=3)
    rx_after = int(r.run("cat", "/sys/class/net/alt/statistics/tx_packets").stdout)
    assert rx_after - rx_before >= 6, "the pings left by the alt link"
    st = agent.run_cli("status", check=True).stdout
    assert "rules:       from 10.0.31.5/32 lookup 200 pref 5100" in st
    line = next(x for x in agent.events("rule_added") if "5100" in x)
    assert "peer=" in line and "(phone)" in line
    # the phone leaves (keepalives stop): the rules go with it
    phone.run("wg", "set", "wgc", "peer", k_wg0, "persistent-keepalive", "0")
    wait_for(lambda: not any("lookup 200" in x for x in wan.rules()), 10, what="per-peer rules removed")
    assert not any("lookup 200" in x for x in wan.rules())
    assert "reason=idle" in next(x for x in agent.events("rule_removed") if "5100" in x)


PHONE_AND_WAN_RULES = 6  # suppress, return path and the phone's: IPv4 and IPv6 each


def start_with_phone(wan, backend, extra: str = "") -> tuple[Agent, str]:
    phone, _, k_ph = wan.add_phone(backend)
    agent = Agent(wan.lab, wan.r, RETURN_PATH + extra + phone_conf(k_ph)).start()
    wait_for(lambda: phone.ping("10.0.31.1"), 10, what="phone handshake")
    wait_for(lambda: len(owned(rule_dump(wan.r))) == PHONE_AND_WAN_RULES, 5, what="the six owned rules")
    return agent, k_ph


def settle():
    """Two polls (poll_interval 0.5): long enough for a pass to add or remove what it would."""
    time.sleep(1.0 * SLOWDOWN)


def test_kill9_then_restart_converges_without_duplicates(wan, backend):
    r = wan.r
    agent, _ = start_with_phone(wan, backend)
    before, table = rule_dump(r), r.routes("table", "100")
    agent.kill9()
    assert rule_dump(r) == before, "kill -9 leaves the rules where they are"
    # while it is dead, another process deletes one of its rules, and a rule of an
    # older config (a peer since removed) is still there
    r.ip("rule", "del", "pref", "5010", "from", "198.51.100.2", "lookup", "100", "proto", PROTO)
    r.ip("-6", "rule", "add", "pref", "5100", "from", "fd31::99", "lookup", "200", "proto", PROTO)
    seen = len(agent.events("rule_added"))
    agent.start()
    wait_for(lambda: rule_dump(r) == before, 5, what="the rules of before the kill, each once")
    settle()
    assert rule_dump(r) == before and r.routes("table", "100") == table
    assert len(agent.events("rule_added")[seen:]) == 1, "only the deleted rule is added again"
    assert any("fd31::99" in x for x in agent.events("rule_removed"))


FOREIGN = [
    # rules of others in wgagent's band (5000-5999) and outside it; the first two differ
    # from wgagent's own only by their protocol
    ("-4", "pref 5000 from all lookup main suppress_prefixlength 0 proto static"),
    ("-4", "pref 5100 from 10.0.31.5 lookup 200 proto static"),
    ("-4", "pref 5500 from 10.9.0.0/16 lookup 300"),
    ("-4", "pref 4000 from 10.8.0.0/16 lookup 300 proto static"),
    ("-4", "pref 6100 fwmark 0x5 lookup 300"),
    ("-6", "pref 5010 from 2001:db8:100::2 lookup 300 proto static"),
    ("-6", "pref 7000 from fd00::/8 lookup 300"),
]


def test_foreign_rules_are_never_touched_and_stop_removes_only_its_own(wan, backend):
    r = wan.r
    for fam, rule in FOREIGN:
        r.ip(fam, "rule", "add", *rule.split())
    base = rule_dump(r)
    agent, k_ph = start_with_phone(wan, backend)
    assert foreign(rule_dump(r)) == base, "start"
    # reload with keep_routes_on_stop, then stop: everything stays, ours and theirs
    agent.write_config(RETURN_PATH.replace("config agent 'main'\n", "config agent 'main'\n"
                                           "\toption keep_routes_on_stop '1'\n") + phone_conf(k_ph))
    agent.send(signal.SIGHUP)
    wait_for(lambda: agent.events("reloaded"), 5, what="reload")
    settle()
    running, table = rule_dump(r), r.routes("table", "100")
    assert foreign(running) == base and len(owned(running)) == PHONE_AND_WAN_RULES, "reload"
    assert agent.stop() == 0 and 'routes="kept (keep_routes_on_stop)"' in agent.log()
    assert rule_dump(r) == running and r.routes("table", "100") == table, "keep_routes_on_stop keeps rules and routes"
    # started again without it: nothing added or removed
    agent.write_config(RETURN_PATH + phone_conf(k_ph))
    seen = len(agent.events("rule_added")), len(agent.events("rule_removed"))
    agent.start()
    settle()
    assert rule_dump(r) == running
    assert (len(agent.events("rule_added")), len(agent.events("rule_removed"))) == seen
    # the peer goes: its rules go, nothing else
    r.wg_remove_peer("wg0", k_ph)
    wait_for(lambda: len(owned(rule_dump(r))) == PHONE_AND_WAN_RULES - 2, 5, what="the phone's rules removed")
    assert foreign(rule_dump(r)) == base, "peer down"
    # stop: every rule of ours goes, every other one stays
    assert agent.stop() == 0
    assert rule_dump(r) == base and r.routes("table", "100") == []
    assert "event=rules_removed_on_stop count=4" in agent.log()


class Netifd:
    """netifd's network.interface.<name> object on the ubus double."""

    def __init__(self, device: str):
        self.device = device

    def call(self, method: str, args) -> dict:
        return {"up": True, "device": self.device, "l3_device": self.device}


def test_ubus_hiccup_keeps_the_return_path_until_the_device_goes(wan, tmp_path):
    r = wan.r
    sock = str(tmp_path / "ubus.sock")
    bus = UbusDouble(sock, str(tmp_path))
    bus.objects["network.interface.wan"] = Netifd("wan")
    conf = RETURN_PATH.replace("option device 'wan'", "option network 'wan'").replace(
        "config agent 'main'\n", f"config agent 'main'\n\toption ubus_socket '{sock}'\n")
    env = {"PYTHONPATH": os.pathsep.join([os.path.join(HERE, "ubus_double", "pymod"), os.path.dirname(HERE)])}
    try:
        agent = Agent(wan.lab, r, conf).start(env=env)
        wait_for(lambda: len(wan.rules()) == 4, 5, what="four rules, device wan from netifd")
        rules, table = sorted(wan.rules()), r.routes("table", "100")
        # netifd restarts: its objects are gone from ubus for a while. An event makes
        # wgagent ask again; the answer fails and the path stays as it was.
        del bus.objects["network.interface.wan"]
        r.ip("route", "add", "10.99.0.0/16", "dev", "lan")
        wait_for(lambda: agent.events("return_path_problem"), EVENT, what="the failure, logged")
        settle()
        assert sorted(wan.rules()) == rules and r.routes("table", "100") == table
        assert not agent.events("rule_removed")
        assert len(agent.events("return_path_problem")) == 1, "logged once, not at every pass"
        # ubus gone altogether, and then the device too: now the path goes
        bus.close()
        r.ip("link", "del", "wan")
        wait_for(lambda: not wan.rules(), EVENT, what="rules gone with the device")
        # the device returns while ubus is still away: the path comes back on it
        wan.link_wan()
        wait_for(lambda: sorted(wan.rules()) == rules and r.routes("table", "100") == table, EVENT,
                 what="rules back with the device netifd named last")
        assert agent.proc.poll() is None
    finally:
        bus.close()
