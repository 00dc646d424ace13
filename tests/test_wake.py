"""The handshake wake-up (wgagent/wake.py): its packet filter run by a small classic
BPF interpreter (tests/cbpf.py) on handmade packets, parse() on the same packets,
the schedule of reads; then the socket itself in namespaces (root):

    ns a (the router: HandshakeWatch)              ns b (peers, and strangers)
      wa 10.9.0.1/24, fd09::1/64  ──── veth ────  wb 10.9.0.2/24, fd09::2/64

Packets come from plain UDP sockets with handshake-shaped payloads; no WireGuard is
needed to see them (tests/test_wake_netns.py has the daemon and real handshakes).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import threading

import pytest

from wgagent import wake

from . import cbpf
from .conftest import _cannot_run
from .lab import SLOWDOWN, Lab

PORT = 51820
HOST, BROADCAST, OTHERHOST, OUTGOING = 0, 1, 3, 4
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806


# --- handmade packets, from the network header on (as a SOCK_DGRAM packet socket reads them)

def message(kind: int, size: int | None = None, reserved: bytes = b"\0\0\0") -> bytes:
    """A WireGuard message's bytes: type, reserved, then zeros up to `size` (by default
    the type's own length)."""
    size = wake.SIZES.get(kind, 32) if size is None else size
    return bytes([kind]) + reserved + bytes(size - 4)


def udp(payload: bytes, sport: int = 40000, dport: int = PORT) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(l4: bytes, src: str = "192.0.2.2", dst: str = "192.0.2.1", proto: int = 17, ihl: int = 5,
         frag: int = 0x4000) -> bytes:
    """frag: flags and fragment offset; by default DF, as Linux sends UDP."""
    options = b"\x01" * (4 * ihl - 20)  # NOPs
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(l4), 1, frag, 64, proto, 0,
                       socket.inet_pton(socket.AF_INET, src), socket.inet_pton(socket.AF_INET, dst)) + options + l4


def ipv6(l4: bytes, src: str = "2001:db8::2", dst: str = "2001:db8::1", nh: int = 17,
         hop_by_hop: bool = False) -> bytes:
    if hop_by_hop:  # next header UDP, length 0 (8 bytes), a PadN of 4
        l4, nh = bytes([nh, 0, 1, 4, 0, 0, 0, 0]) + l4, 0
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + l4


# name, ethertype, packet, pkttype, passes the filter of {PORT}, parses as a handshake
CASES = [
    ("ipv4 initiation to the port", ETH_P_IP, ipv4(udp(message(1))), HOST, True, True),
    ("ipv4 initiation from the port, sent", ETH_P_IP, ipv4(udp(message(1), PORT, 40000)), OUTGOING, True, True),
    ("ipv4 initiation from the port, received", ETH_P_IP, ipv4(udp(message(1), PORT, 40000)), HOST, True, True),
    ("ipv4 response", ETH_P_IP, ipv4(udp(message(2))), HOST, True, True),
    ("ipv4 cookie", ETH_P_IP, ipv4(udp(message(3))), HOST, True, True),
    ("ipv6 initiation", ETH_P_IPV6, ipv6(udp(message(1))), HOST, True, True),
    ("ipv6 response", ETH_P_IPV6, ipv6(udp(message(2))), HOST, True, True),
    ("ipv6 response sent", ETH_P_IPV6, ipv6(udp(message(2), PORT, 40000)), OUTGOING, True, True),
    ("ipv6 cookie", ETH_P_IPV6, ipv6(udp(message(3))), HOST, True, True),
    ("ipv4 with options (ihl 6)", ETH_P_IP, ipv4(udp(message(1)), ihl=6), HOST, True, True),
    ("ipv4 with the longest header (ihl 15)", ETH_P_IP, ipv4(udp(message(2)), ihl=15), HOST, True, True),
    ("ipv4 without DF", ETH_P_IP, ipv4(udp(message(1)), frag=0), HOST, True, True),
    ("initiation of 149 bytes", ETH_P_IP, ipv4(udp(message(1, 149))), HOST, False, False),
    ("initiation of 147 bytes", ETH_P_IP, ipv4(udp(message(1, 147))), HOST, False, False),
    ("response of 148 bytes", ETH_P_IP, ipv4(udp(message(2, 148))), HOST, False, False),
    ("ipv6 initiation of 149 bytes", ETH_P_IPV6, ipv6(udp(message(1, 149))), HOST, False, False),
    ("data (type 4) of 148 bytes", ETH_P_IP, ipv4(udp(message(4, 148))), HOST, False, False),
    ("keepalive (type 4, 32 bytes)", ETH_P_IP, ipv4(udp(message(4, 32))), HOST, False, False),
    ("type 0 of 148 bytes", ETH_P_IP, ipv4(udp(message(0, 148))), HOST, False, False),
    ("reserved byte 1 set", ETH_P_IP, ipv4(udp(message(1, reserved=b"\1\0\0"))), HOST, False, False),
    ("reserved byte 3 set", ETH_P_IPV6, ipv6(udp(message(2, reserved=b"\0\0\x80"))), HOST, False, False),
    ("another port", ETH_P_IP, ipv4(udp(message(1), 40000, 51821)), HOST, False, True),
    ("another port, ipv6", ETH_P_IPV6, ipv6(udp(message(1), 40000, 51821)), HOST, False, True),
    ("ipv4 first fragment (MF)", ETH_P_IP, ipv4(udp(message(1)), frag=0x2000), HOST, False, False),
    ("ipv4 later fragment (offset)", ETH_P_IP, ipv4(udp(message(1)), frag=0x0010), HOST, False, False),
    ("ipv6 with a hop-by-hop header", ETH_P_IPV6, ipv6(udp(message(1)), hop_by_hop=True), HOST, False, False),
    ("tcp", ETH_P_IP, ipv4(udp(message(1)), proto=6), HOST, False, False),
    ("ipv6 tcp", ETH_P_IPV6, ipv6(udp(message(1)), nh=6), HOST, False, False),
    ("arp carrying the same bytes", ETH_P_ARP, ipv4(udp(message(1))), HOST, False, False),
    ("ipv4 bytes as ipv6", ETH_P_IPV6, ipv4(udp(message(1))), HOST, False, False),
    ("another host's (promiscuous)", ETH_P_IP, ipv4(udp(message(1))), OTHERHOST, False, False),
    ("a broadcast", ETH_P_IP, ipv4(udp(message(1)), dst="192.0.2.255"), BROADCAST, False, False),
    ("ipv4 header alone", ETH_P_IP, ipv4(udp(message(1)))[:20], HOST, False, False),
    ("cut in the type word", ETH_P_IP, ipv4(udp(message(1)))[:30], HOST, False, False),
]


@pytest.mark.parametrize("name, proto, packet, pkttype, passes, parses", CASES, ids=[c[0] for c in CASES])
def test_the_filter(name, proto, packet, pkttype, passes, parses):
    got = cbpf.run(wake.compile_filter([PORT]), packet, proto, pkttype)
    assert got == (wake.SNAP if passes else 0)


@pytest.mark.parametrize("name, proto, packet, pkttype, passes, parses", CASES, ids=[c[0] for c in CASES])
def test_parse(name, proto, packet, pkttype, passes, parses):
    # what the socket reads: the first SNAP bytes the filter keeps
    hit = wake.parse(packet[:wake.SNAP], pkttype, "eth0", proto)
    assert (hit is not None) == parses, hit


def test_the_filter_without_outgoing_packets():
    prog = wake.compile_filter([PORT], outgoing=False)
    assert cbpf.run(prog, ipv4(udp(message(2), PORT, 40000)), ETH_P_IP, OUTGOING) == 0
    assert cbpf.run(prog, ipv4(udp(message(1))), ETH_P_IP, HOST) == wake.SNAP


def test_no_ports_rejects_everything():
    prog = wake.compile_filter([])
    assert prog == wake.compile_filter([0, None]) == [(wake.RET_K, 0, 0, 0)]
    for _, proto, packet, pkttype, _, _ in CASES:
        assert cbpf.run(prog, packet, proto, pkttype) == 0


def test_several_ports_either_way():
    prog = wake.compile_filter([51820, 51821, 4500])
    for port in (51820, 51821, 4500):
        assert cbpf.run(prog, ipv4(udp(message(1), 40000, port)), ETH_P_IP, HOST) == wake.SNAP
        assert cbpf.run(prog, ipv6(udp(message(2), port, 40000)), ETH_P_IPV6, OUTGOING) == wake.SNAP
    assert cbpf.run(prog, ipv4(udp(message(1), 40000, 51822)), ETH_P_IP, HOST) == 0


def test_max_ports_fit_in_one_program_and_one_more_is_refused():
    ports = range(40000, 40000 + wake.MAX_PORTS)
    prog = wake.compile_filter(ports)
    cbpf.check(prog)  # every jump inside, within reach of its 8 bits
    assert len(prog) <= cbpf.BPF_MAXINSNS
    # across the blocks of compares: each one's first, last, and neighbours
    for port in (40000, 40254, 40255, 40256, 40257, 40511, 40512, 40767, 40768, 41023):
        assert cbpf.run(prog, ipv4(udp(message(1), 30000, port)), ETH_P_IP, HOST) == wake.SNAP, port
        assert cbpf.run(prog, ipv4(udp(message(1), port, 30000)), ETH_P_IP, OUTGOING) == wake.SNAP, port
    for port in (39999, 41024):
        assert cbpf.run(prog, ipv4(udp(message(1), 30000, port)), ETH_P_IP, HOST) == 0, port
    with pytest.raises(ValueError, match="at most 1024"):
        wake.compile_filter(range(40000, 40000 + wake.MAX_PORTS + 1))


@pytest.mark.parametrize("bad", [65536, -1])
def test_a_port_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="not a UDP port"):
        wake.compile_filter([PORT, bad])


def test_packed_as_struct_sock_filter():
    prog = wake.compile_filter([PORT, 4500])
    blob = wake.filter_program([PORT, 4500])
    assert blob == wake.pack(prog) and len(blob) == 8 * len(prog)
    assert cbpf.unpack(blob) == prog


def test_a_hit_says_which_end_is_ours():
    hit = wake.parse(ipv4(udp(message(1), 40000, PORT)), HOST, "wan", ETH_P_IP)
    assert hit == wake.Hit("wan", False, 1, 4, "192.0.2.2", 40000, "192.0.2.1", PORT)
    assert (hit.local_port, hit.remote, hit.remote_endpoint) == (PORT, ("192.0.2.2", 40000), "192.0.2.2:40000")
    sent = wake.parse(ipv6(udp(message(2), PORT, 40000), src="2001:db8::1", dst="2001:db8::2"), OUTGOING, "wan",
                      ETH_P_IPV6)
    assert sent == wake.Hit("wan", True, 2, 6, "2001:db8::1", PORT, "2001:db8::2", 40000)
    assert (sent.local_port, sent.remote, sent.remote_endpoint) == \
        (PORT, ("2001:db8::2", 40000), "[2001:db8::2]:40000")


def test_parse_checks_the_ip_length_against_the_udp_length():
    packet = bytearray(ipv4(udp(message(1))))
    packet[2:4] = struct.pack("!H", 20 + 8 + 100)  # the IP header says it carries less
    assert wake.parse(bytes(packet), HOST, "eth0", ETH_P_IP) is None
    packet6 = bytearray(ipv6(udp(message(1))))
    packet6[4:6] = b"\0\0"  # payload length 0: a jumbogram
    assert wake.parse(bytes(packet6), HOST, "eth0", ETH_P_IPV6) is None


def test_port_map_and_interfaces_for():
    ports = wake.port_map({"wg0": 51820, "wg1": 51821, "wg2": 51820, "wg3": 0, "wg4": None})
    assert ports == {51820: frozenset({"wg0", "wg2"}), 51821: frozenset({"wg1"})}
    hit = wake.Hit("eth0", False, 1, 4, "192.0.2.2", 40000, "192.0.2.1", 51820)
    assert wake.interfaces_for(hit, ports) == {"wg0", "wg2"}
    # sent from 40000 to a peer's 51820: not ours
    assert wake.interfaces_for(wake.Hit("eth0", True, 1, 4, "192.0.2.1", 40000, "192.0.2.2", 51820), ports) == set()


@pytest.mark.parametrize("kind, outgoing, reads", [
    (2, True, wake.DELAYS),  # our response: done at their first data, a round trip later
    (2, False, wake.DELAYS[:2]),  # their response to our initiation: done once taken
    (1, False, wake.DELAYS[-1:]),  # their initiation: our response asks for the series
    (1, True, ()),
    (3, True, ()),
    (3, False, ()),
])
def test_reads_for(kind, outgoing, reads):
    hit = wake.Hit("eth0", outgoing, kind, 4, "192.0.2.1", PORT, "192.0.2.2", 40000)
    assert wake.reads_for(hit) == reads
    assert wake.KINDS[kind] in ("initiation", "response", "cookie")


def test_an_initiation_asks_for_the_series_when_our_answers_go_unseen():
    hit = wake.Hit("eth0", False, 1, 4, "192.0.2.2", 40000, "192.0.2.1", PORT)
    assert wake.reads_for(hit, answers_seen=False) == wake.DELAYS


# --- the schedule of reads

def reads(schedule: wake.WakeSchedule, until: float = 10.0) -> list[tuple[float, set[str]]]:
    """Every read the schedule asks for, in order, each at its deadline."""
    out = []
    while (t := schedule.next_deadline()) is not None and t <= until:
        out.append((round(t, 6), schedule.due(t)))
    return out


def test_a_hit_asks_for_reads_at_its_delays_then_none():
    s = wake.WakeSchedule()
    assert s.next_deadline() is None and not s.pending("wg0")
    s.hit("wg0", 100.0)
    assert s.pending("wg0") and s.next_deadline() == pytest.approx(100.005)
    assert s.due(100.004) == set()
    assert reads(s, 1000) == [(100.005, {"wg0"}), (100.04, {"wg0"}), (100.25, {"wg0"})]
    assert not s.pending("wg0") and s.next_deadline() is None and s.due(1000.0) == set()


def test_late_due_takes_every_read_past():
    s = wake.WakeSchedule()
    s.hit("wg0", 0.0)
    assert s.due(0.1) == {"wg0"}  # the 5 and 40 ms reads: one read now
    assert s.next_deadline() == pytest.approx(0.25)


def test_due_in_order_across_interfaces():
    s = wake.WakeSchedule(delays=(0.005, 0.040))
    s.hit("wg0", 0.0)
    s.hit("wg1", 0.010)
    s.hit("wg2", 0.010)
    assert reads(s) == [(0.005, {"wg0"}), (0.015, {"wg1", "wg2"}), (0.04, {"wg0"}), (0.05, {"wg1", "wg2"})]


def test_a_second_hit_merges_reads_closer_than_min_gap():
    s = wake.WakeSchedule()
    s.hit("wg0", 0.0)
    s.hit("wg0", 0.030)  # 0.035 and 0.040 are 5 ms apart: one read, the earlier
    assert [t for t, _ in reads(s)] == [0.005, 0.035, 0.07, 0.25, 0.28]


def test_a_burst_of_hits_never_piles_up():
    s = wake.WakeSchedule()
    for i in range(10000):  # a handshake flood: a hit every 0.1 ms for a second
        s.hit("wg0", i * 0.0001)
        if i % 100 == 0:
            s.due(i * 0.0001)
    times = [t for t, _ in reads(s)]
    assert len(times) <= 1 + wake.DELAYS[-1] / s.min_gap
    assert all(b - a >= s.min_gap - 1e-9 for a, b in zip(times, times[1:]))
    # the last hit's last read: merged into one at most min_gap earlier, never lost
    assert 0.9999 + 0.25 - s.min_gap < times[-1] <= 0.9999 + 0.25
    assert len(s._heap) == 0


def test_hits_that_never_come_due_keep_the_heap_bounded():
    s = wake.WakeSchedule()
    for i in range(10000):
        s.hit("wg0", float(i))  # nobody calls due()
        s.observed("wg0", float(i) + 0.3)
    assert len(s._heap) < 200


def test_a_read_that_happened_stands_for_those_due_within_min_gap():
    s = wake.WakeSchedule()
    s.hit("wg0", 0.0)
    s.hit("wg1", 0.0)
    s.observed("wg0", 0.020)  # 0.005 is past, 0.040 is 20 ms away: both served
    assert reads(s) == [(0.005, {"wg1"}), (0.04, {"wg1"}), (0.25, {"wg0", "wg1"})]
    s.hit("wg0", 1.0)
    s.observed("wg0", 1.0)  # 1.040 is 40 ms away: still wanted
    assert reads(s) == [(1.04, {"wg0"}), (1.25, {"wg0"})]
    s.observed("wg5", 2.0)  # an interface with nothing pending
    assert s.next_deadline() is None


def test_a_hit_with_its_own_delays():
    s = wake.WakeSchedule()
    s.hit("wg0", 0.0, (0.25,))
    s.hit("wg1", 0.0, ())
    assert reads(s) == [(0.25, {"wg0"})] and not s.pending("wg1")


def test_discard_forgets_an_interface():
    s = wake.WakeSchedule()
    s.hit("wg0", 0.0)
    s.hit("wg1", 0.001)
    s.discard("wg0")
    s.discard("wg9")
    assert not s.pending("wg0")
    assert reads(s) == [(0.006, {"wg1"}), (0.041, {"wg1"}), (0.251, {"wg1"})]


def test_hits_schedules_the_interfaces_on_the_local_port():
    s = wake.WakeSchedule()
    ports = wake.port_map({"wg0": 51820, "wg1": 51821})
    ours = wake.Hit("eth0", True, 2, 4, "192.0.2.1", 51820, "192.0.2.2", 40000)  # our response
    theirs = wake.Hit("eth0", False, 1, 4, "192.0.2.2", 40000, "192.0.2.1", 51821)  # an initiation to wg1
    initiating = wake.Hit("eth0", True, 1, 4, "192.0.2.1", 51821, "192.0.2.2", 51820)  # no read: its answer is one
    stranger = wake.Hit("eth0", False, 2, 4, "192.0.2.2", 40000, "192.0.2.1", 40001)  # no interface there
    assert s.hits([ours, theirs, initiating, stranger], ports, 0.0) == {"wg0", "wg1"}
    assert reads(s) == [(0.005, {"wg0"}), (0.04, {"wg0"}), (0.25, {"wg0", "wg1"})]
    assert s.hits([], ports, 1.0) == set()


# --- the socket, in namespaces (root)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A4, B4, A6, B6 = "10.9.0.1", "10.9.0.2", "fd09::1", "fd09::2"

# Runs in ns a: a HandshakeWatch, its hits as JSON lines; commands on stdin
WATCH = r"""
import json, select, sys
from wgagent import wake
ports, outgoing = json.loads(sys.argv[1]), sys.argv[2] == "1"
watch = wake.HandshakeWatch(ports, outgoing=outgoing)
say = lambda **kw: print(json.dumps(kw), flush=True)
say(ready=wake.__file__)
while True:
    ready, _, _ = select.select([watch, sys.stdin], [], [])
    if watch in ready:
        for h in watch.drain():
            say(hit=[h.device, h.outgoing, h.kind, h.family, h.src, h.sport, h.dst, h.dport])
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        if "ports" in cmd:
            try:
                say(changed=watch.set_ports(cmd["ports"]))
            except ValueError as e:
                say(refused=str(e))
        if "stats" in cmd:
            say(stats=watch.stats())
"""

# Runs in ns a or b: [host, port, source port (0: any), payload in hex], one socket each, in order
SEND = r"""
import json, socket, sys
for host, port, sport, payload in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        s.bind(("", sport))
    s.sendto(bytes.fromhex(payload), (host, port))
    s.close()
"""

# Runs in ns a without CAP_NET_RAW
REFUSED = "from wgagent import wake; print(wake.open_watch([51820])[1])"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, a packet socket)"
    if shutil.which("ip") is None:
        return "needs ip (apt-get install iproute2)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "needs `ip netns` (network namespaces)"
    return None


@pytest.fixture
def pair():
    """(a, b): two namespaces joined by a veth pair, addressed in both families,
    neighbours known both ways; deleted (and every process ended) afterwards."""
    why = _missing()
    if why:
        _cannot_run(why)
    with Lab("wk") as lab:
        a, b = lab.netns("a"), lab.netns("b")
        lab.link(a, "wa", b, "wb", [f"{A4}/24", f"{A6}/64"], [f"{B4}/24", f"{B6}/64"])
        for ns, peers in ((a, (B4, B6)), (b, (A4, A6))):
            for peer in peers:
                assert ns.ping(peer, wait=2), f"{ns.short} cannot reach {peer}"
        yield a, b


class Watcher:
    """The WATCH script in a namespace, its lines read by a thread."""

    def __init__(self, ns, ports, outgoing: bool = True):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = ns.popen(sys.executable, "-c", WATCH, json.dumps(list(ports)), "1" if outgoing else "0",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next("ready")
        assert ready.startswith(os.path.join(ROOT, "wgagent")), ready  # this tree's wake.py

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, key: str, timeout: float = 10):
        try:
            msg = self.lines.get(timeout=timeout * SLOWDOWN)
        except queue.Empty:
            raise AssertionError(f"nothing from the watch within {timeout} s (waiting for {key})") from None
        assert msg is not None, f"the watch ended (exit {self.proc.wait()})"
        assert key in msg, msg
        return msg[key]

    def command(self, key: str, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.next(key)

    def hits_until(self, sport: int) -> list[wake.Hit]:
        """The hits before the one from `sport` (the sentinel, sent last)."""
        out = []
        while True:
            hit = wake.Hit(*self.next("hit"))
            if hit.sport == sport and not hit.outgoing:
                return out
            out.append(hit)


def send(ns, *datagrams) -> None:
    ns.run(sys.executable, "-c", SEND, json.dumps([[h, p, s, data.hex()] for h, p, s, data in datagrams]))


SENTINEL = 40999


@pytest.mark.root
@pytest.mark.parametrize("family", [4, 6])
def test_the_socket_sees_handshakes_both_ways_and_nothing_else(pair, family):
    a, b = pair
    ha, hb = (A4, B4) if family == 4 else (A6, B6)
    watch = Watcher(a, [PORT])
    send(b, (ha, PORT, 40001, message(1)),  # an initiation: seen
         (ha, PORT, 40002, message(1, 149)),  # one byte too many
         (ha, PORT, 40002, message(4, 148)),  # data
         (ha, PORT, 40002, message(1, reserved=b"\0\1\0")),
         (ha, 51821, 40002, message(1)),  # another port
         (ha, PORT, 40003, message(2)),  # a response: seen
         (ha, PORT, 40004, message(3)),  # a cookie: seen
         (ha, 40006, PORT, message(1)))  # from the port, to another: the filter takes either
    send(a, (hb, 40005, PORT, message(2)),  # our own response, going out: seen
         (hb, 40005, 51821, message(2)))  # from another port
    send(b, (ha, PORT, SENTINEL, message(1)))
    got = watch.hits_until(SENTINEL)
    Hit = wake.Hit
    assert got == [Hit("wa", False, 1, family, hb, 40001, ha, PORT),
                   Hit("wa", False, 2, family, hb, 40003, ha, PORT),
                   Hit("wa", False, 3, family, hb, 40004, ha, PORT),
                   Hit("wa", False, 1, family, hb, PORT, ha, 40006),
                   Hit("wa", True, 2, family, ha, PORT, hb, 40005)]
    assert [h.local_port for h in got] == [PORT, PORT, PORT, 40006, PORT]
    stats = watch.command("stats", stats=1)
    # six passed the kernel's filter: the others never reached the socket
    assert stats == {"packets": 6, "drops": 0, "hits": 6}, stats


@pytest.mark.root
def test_set_ports_changes_what_passes(pair):
    a, b = pair
    watch = Watcher(a, [PORT])
    send(b, (A4, 51821, 40001, message(1)), (A4, PORT, SENTINEL, message(1)))
    assert watch.hits_until(SENTINEL) == []
    assert watch.command("changed", ports=[51821]) is True
    assert watch.command("changed", ports=[51821, 0]) is False
    send(b, (A4, PORT, 40002, message(1)), (A4, 51821, 40003, message(1)), (A4, 51821, SENTINEL, message(1)))
    assert [(h.sport, h.dport) for h in watch.hits_until(SENTINEL)] == [(40003, 51821)]
    assert watch.command("changed", ports=[]) is True  # rejects everything
    send(b, (A4, 51821, 40004, message(1)), (A6, 51821, 40005, message(2)))
    assert watch.command("changed", ports=[51821, PORT]) is True
    send(b, (A6, PORT, 40006, message(2)), (A4, PORT, SENTINEL, message(1)))
    assert [(h.sport, h.family) for h in watch.hits_until(SENTINEL)] == [(40006, 6)]
    # the longest filter: the kernel takes it, and it works to its last port
    many = list(range(50000, 50000 + wake.MAX_PORTS))
    assert watch.command("changed", ports=many) is True
    assert "at most 1024" in watch.command("refused", ports=many + [PORT])
    send(b, (A4, many[-1], 40007, message(3)), (A4, PORT, 40008, message(1)), (A4, many[0], SENTINEL, message(1)))
    assert [(h.sport, h.dport) for h in watch.hits_until(SENTINEL)] == [(40007, many[-1])]


@pytest.mark.root
def test_without_outgoing_only_received_handshakes(pair):
    a, b = pair
    watch = Watcher(a, [PORT], outgoing=False)
    send(a, (B4, 40005, PORT, message(2)))
    send(b, (A4, PORT, 40001, message(1)), (A4, PORT, SENTINEL, message(1)))
    assert watch.hits_until(SENTINEL) == [wake.Hit("wa", False, 1, 4, B4, 40001, A4, PORT)]


@pytest.mark.root
def test_open_watch_says_why_it_cannot(pair):
    a, _ = pair
    if shutil.which("setpriv") is None:
        _cannot_run("needs setpriv (util-linux)")
    r = a.run("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", REFUSED)
    assert r.stdout.strip() == "AF_PACKET socket: Operation not permitted (needs CAP_NET_RAW)"
    # with it, but more ports than a filter holds: no watch either, and no exception
    r = a.run(sys.executable, "-c", REFUSED.replace("[51820]", "range(1, 2000)"))
    assert r.stdout.strip() == "1999 listen ports: the packet filter holds at most 1024"
