"""Policy rules end to end: P2 (return path) and P3 (per-peer source rules).

                 far host 192.0.2.77, 2001:db8:77::77 (on lo)
                         │
                       inet  198.51.100.1 / 2001:db8:100::1   (the WAN gateway)
                         │ wan
   lan ns ── lan ──  router r  ── s2s-underlay ── op1      (wg_s2s: the tunnel that
   192.168.36.10     │     │  198.18.0.0/30                 carries r's default route)
                     │     └── alt ── alt ns: 192.0.2.99, fd99::99 on lo (a chosen path)
                   wg0 (phone 10.0.31.5, fd31::5)

r's main table sends everything (0/0 and ::/0) into wg_s2s with metric 0; the WAN
default via the gateway has metric 100, so it is never used without wgagent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .daemonctl import Agent, wait_for
from .lab import genkey

pytestmark = pytest.mark.root

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
        lab.link(self.r, "wan", self.inet, "down0", ["198.51.100.2/24", "2001:db8:100::2/64"],
                 ["198.51.100.1/24", "2001:db8:100::1/64"])
        self.inet.ip("addr", "add", "192.0.2.77/32", "dev", "lo")
        self.inet.ip("addr", "add", "2001:db8:77::77/128", "dev", "lo")
        self.inet.ip("route", "add", "192.168.0.0/16", "via", "198.51.100.2")  # so far is not the problem
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
        self.r.ip("route", "add", "default", "via", "198.51.100.1", "dev", "wan", "metric", "100")
        self.r.ip("-6", "route", "add", "default", "via", "2001:db8:100::1", "dev", "wan", "metric", "100")
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

    def rules(self) -> list[str]:
        out = []
        for fam in ("-4", "-6"):
            out += [line.strip() for line in self.r.ip(fam, "rule", "show").splitlines() if "proto 152" in line]
        return out


RETURN_PATH = """
config agent 'main'
\toption poll_interval '0.5'

config return_path 'wan'
\toption device 'wan'
\toption table '100'
"""


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
    # DHCP hands out a new address (and re-adds its default route): the rules follow at once
    r.ip("addr", "del", "198.51.100.2/24", "dev", "wan")
    r.ip("addr", "add", "198.51.100.3/24", "dev", "wan")
    r.ip("route", "add", "default", "via", "198.51.100.1", "dev", "wan", "metric", "100")
    wait_for(lambda: "5010:\tfrom 198.51.100.3 lookup 100 proto 152" in wan.rules(), 1.5,
             what="rule for the new address within a second (address event, not the poll)")
    assert "5010:\tfrom 198.51.100.2 lookup 100 proto 152" not in wan.rules()
    assert wait_for(lambda: connects(inet, "198.51.100.3", "192.0.2.77"), 3, what="connection to the new address")
    assert "event=rule_added" in agent.log() and "owner=\"return_path wan\"" in agent.log()
    st = agent.run_cli("status", "--json", check=True).stdout
    assert '"device": "wan"' in st and "198.51.100.3/24" in st
    agent.stop()
    assert wan.rules() == [] and r.routes("table", "100") == []


def test_gateway_change_and_device_loss(wan):
    r = wan.r
    Agent(wan.lab, r, RETURN_PATH).start()
    wait_for(lambda: any("via 198.51.100.1" in t for t in r.routes("table", "100")), 5, what="table 100 default")
    # the DHCP server hands out another gateway
    r.ip("addr", "add", "198.51.100.254/24", "dev", "wan")  # a second address: two rules
    r.ip("route", "del", "default", "via", "198.51.100.1", "dev", "wan", "metric", "100")
    wan.inet.ip("addr", "add", "198.51.100.9/24", "dev", "down0")
    r.ip("route", "add", "default", "via", "198.51.100.9", "dev", "wan", "metric", "100")
    wait_for(lambda: any(t.startswith("default via 198.51.100.9 dev wan") for t in r.routes("table", "100")), 1.5,
             what="table 100 following the new gateway")
    assert "5010:\tfrom 198.51.100.254 lookup 100 proto 152" in wan.rules()
    r.ip("link", "del", "wan")
    wait_for(lambda: not any("lookup 100" in x for x in wan.rules()), 3, what="rules gone with the device")
    assert not any("lookup 100" in x for x in wan.rules())


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
        wait_for(lambda: sorted(wan.rules()) == want, 1.5, what="rules restored from the rtnetlink event")
    assert agent.proc.poll() is None


def test_per_peer_source_rule_sends_the_peer_by_the_chosen_path(wan, backend):
    lab, r = wan.lab, wan.r
    phone = lab.netns("ph")
    lab.link(phone, "eth0", r, "vph", ["203.0.113.2/30"], ["203.0.113.1/30"])
    k_wg0, k_ph = genkey(), genkey()
    r.add_wireguard("wg0", backend, k_wg0[0], 51820, ["10.0.31.1/32", "fd31::1/128"])
    r.wg_peer("wg0", k_ph[1], ["10.0.31.5/32", "fd31::5/128"])
    phone.add_wireguard("wgc", backend, k_ph[0], None, ["10.0.31.5/32", "fd31::5/128"])
    phone.wg_peer("wgc", k_wg0[1], ["0.0.0.0/0", "::/0"], "203.0.113.1:51820", keepalive=1)
    phone.ip("route", "add", "default", "dev", "wgc")
    phone.ip("-6", "route", "add", "default", "dev", "wgc")
    conf = textwrap.dedent(f"""
        config agent 'main'
        \toption poll_interval '0.5'
        config interface 'wg0'
        \toption idle_timeout '3'
        config peer 'phone'
        \toption interface 'wg0'
        \toption public_key '{k_ph[1]}'
        \toption description 'phone'
        \toption source_table '200'
    """)
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
    phone.run("wg", "set", "wgc", "peer", k_wg0[1], "persistent-keepalive", "0")
    wait_for(lambda: not any("lookup 200" in x for x in wan.rules()), 10, what="per-peer rules removed")
    assert not any("lookup 200" in x for x in wan.rules())
    assert "reason=idle" in next(x for x in agent.events("rule_removed") if "5100" in x)
