"""The handshake wake-up: WireGuard handshakes seen on the wire, so that the daemon
reads that interface at once instead of at the next poll.

WireGuard's netlink has get and set and no events. A packet socket sees the
handshake messages go by: AF_PACKET, SOCK_DGRAM (cooked: every packet starts at its
network header, whatever the device's link layer: Ethernet, ppp, tun, wg), protocol
ETH_P_ALL (the router's own answers too, as PACKET_OUTGOING), with a classic BPF
filter built from the listen ports, so the kernel wakes us for handshakes alone and
copies their first SNAP bytes.

What is seen is a reason to look, never proof: anyone can send a datagram of the
right shape. The proof is the peer's last_handshake, as the daemon then reads it.
"""

from __future__ import annotations

import array
import errno
import heapq
import socket
import struct
from dataclasses import dataclass

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
IPPROTO_UDP = 17
PACKET_HOST, PACKET_OUTGOING = 0, 4  # sockaddr_ll's sll_pkttype
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
INITIATION, RESPONSE, COOKIE = 1, 2, 3
KINDS = {INITIATION: "initiation", RESPONSE: "response", COOKIE: "cookie"}
# each handshake message has one exact length (WireGuard's messages.h), and its first
# four bytes are the type and three reserved zeros: WireGuard itself reads them as one
# little-endian word and drops any other value
SIZES = {INITIATION: 148, RESPONSE: 92, COOKIE: 64}
UDP_HEADER = 8
SNAP = 96  # the longest IPv4 header (60) + UDP (8) + the type word (4), rounded up
MAX_PORTS = 1024  # two compares per port: ~2100 instructions, well inside BPF_MAXINSNS
BPF_MAXINSNS = 4096
DELAYS = (0.005, 0.040, 0.250)  # seconds after a hit: the reads of its interface (see reads_for)

# classic BPF (linux/filter.h): the few instructions the filter is made of
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30  # A = P[k:4], P[k:2], P[k:1]
LD_W_IND, LD_H_IND = 0x40, 0x48  # A = P[X+k:4], P[X+k:2]
LDX_IMM, LDX_B_MSH = 0x01, 0xB1  # X = k; X = 4 * (P[k] & 0xf): the IPv4 header's length
JA, JEQ_K, JSET_K = 0x05, 0x15, 0x45
RET_K = 0x06
# ancillary loads (SKF_AD_OFF is -0x1000): skb->protocol (the ethertype, host order)
# and skb->pkt_type, which the packet's own bytes do not carry on a cooked socket
SKF_AD_PROTOCOL, SKF_AD_PKTTYPE = 0xFFFFF000, 0xFFFFF004
JUMP_MAX = 255  # jt and jf are 8 bits: a compare jumps at most this far
_INSN = struct.Struct("=HBBI")  # struct sock_filter, in the host's byte order


@dataclass(frozen=True, slots=True)
class Hit:
    """One handshake message seen: on which device, which way, between which ends."""
    device: str  # "" when the interface is gone by the time it is read
    outgoing: bool  # sent by this host (its answer, or its own initiation)
    kind: int  # INITIATION, RESPONSE or COOKIE
    family: int  # 4 or 6
    src: str
    sport: int
    dst: str
    dport: int

    @property
    def local_port(self) -> int:
        return self.sport if self.outgoing else self.dport

    @property
    def remote(self) -> tuple[str, int]:
        return (self.dst, self.dport) if self.outgoing else (self.src, self.sport)

    @property
    def remote_endpoint(self) -> str:
        """The remote end as a Peer's endpoint is written ("192.0.2.7:51820",
        "[2001:db8::7]:51820"). A link-local one lacks the "%scope" the kernel adds:
        it never matches, which costs a read, no more."""
        addr, port = self.remote
        return f"[{addr}]:{port}" if self.family == 6 else f"{addr}:{port}"


class WatchUnavailable(OSError):
    """The packet socket cannot be had here (no CAP_NET_RAW, no AF_PACKET)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _ports(ports) -> frozenset[int]:
    """The set of UDP ports, without 0 and None (an interface with no port yet)."""
    out = frozenset(int(p) for p in ports if p)
    bad = sorted(p for p in out if not 0 < p < 65536)
    if bad:
        raise ValueError(f"not a UDP port: {bad[0]}")
    if len(out) > MAX_PORTS:
        raise ValueError(f"{len(out)} listen ports: the packet filter holds at most {MAX_PORTS}")
    return out


def _assemble(code: list) -> list[tuple[int, int, int, int]]:
    """Instructions and label strings -> instructions; a jt or jf that is a label is
    made relative (the next instruction is 0)."""
    where, pc = {}, 0
    for item in code:
        if isinstance(item, str):
            where[item] = pc
        else:
            pc += 1
    out: list[tuple[int, int, int, int]] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        pc = len(out)
        jt, jf = (where[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf))
        if op == JA:
            k, jt, jf = jt, 0, 0  # an unconditional jump goes k ahead, as far as it likes
        elif not (0 <= jt <= JUMP_MAX and 0 <= jf <= JUMP_MAX):
            raise AssertionError(f"jump out of reach at {pc}: {jt}, {jf}")
        out.append((op, jt, jf, k))
    return out


def _one_of(ports: list[int]) -> list[tuple[int, int, int, int]]:
    """With a port in A: accept when it is one of `ports`, else go on after these.
    A linear chain, in blocks of JUMP_MAX + 1 compares each followed by its own
    accept, so that no compare jumps further than an 8-bit offset reaches."""
    out = []
    for i in range(0, len(ports), JUMP_MAX + 1):
        block = ports[i:i + JUMP_MAX + 1]
        last = len(block) - 1
        out += [(JEQ_K, last - j, 1 if j == last else 0, port) for j, port in enumerate(block)]
        out.append((RET_K, 0, 0, SNAP))
    return out


def compile_filter(ports, *, outgoing: bool = True) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions: it passes IPv4 (not a fragment)
    or IPv6 (UDP right after the fixed header, no extension header) UDP carrying a
    handshake message, from or to one of `ports`, received for this host or sent by
    it (sent only if `outgoing`). No ports: a filter that rejects everything."""
    wanted = sorted(_ports(ports))
    if not wanted:
        return [(RET_K, 0, 0, 0)]
    code = [
        # for this host or from it: not another host's packet a promiscuous port
        # (a bridge's) sees, nor a broadcast
        (LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        (JEQ_K, "ip", 0 if outgoing else "drop", PACKET_HOST),
        *([(JEQ_K, "ip", "drop", PACKET_OUTGOING)] if outgoing else []),
        "ip",
        (LD_W_ABS, 0, 0, SKF_AD_PROTOCOL),
        (JEQ_K, 0, "ipv6", ETH_P_IP),
        (LD_B_ABS, 0, 0, 9),  # IPv4: protocol
        (JEQ_K, 0, "drop", IPPROTO_UDP),
        # MF or an offset: a fragment, whose UDP length is not what it holds
        (LD_H_ABS, 0, 0, 6),
        (JSET_K, "drop", 0, 0x3FFF),
        (LDX_B_MSH, 0, 0, 0),  # X = the header's length, options included (offset 0: cooked)
        (JA, "udp", 0, 0),
        "ipv6",
        (JEQ_K, 0, "drop", ETH_P_IPV6),
        (LD_B_ABS, 0, 0, 6),  # next header: UDP at once, or not for us
        (JEQ_K, 0, "drop", IPPROTO_UDP),
        (LDX_IMM, 0, 0, 40),
        "udp",
        # the UDP length (8 + payload), as WireGuard trims to it, against each
        # message's; then the type word: the type and the reserved zeros
        (LD_H_IND, 0, 0, 4),
        (JEQ_K, "initiation", 0, UDP_HEADER + SIZES[INITIATION]),
        (JEQ_K, "response", 0, UDP_HEADER + SIZES[RESPONSE]),
        (JEQ_K, "cookie", "drop", UDP_HEADER + SIZES[COOKIE]),
    ]
    for kind in (INITIATION, RESPONSE, COOKIE):
        code += [KINDS[kind], (LD_W_IND, 0, 0, UDP_HEADER), (JEQ_K, "ports", "drop", kind << 24)]
    code += ["drop", (RET_K, 0, 0, 0), "ports", (LD_H_IND, 0, 0, 0)]  # source port
    code += _one_of(wanted)
    code += [(LD_H_IND, 0, 0, 2)]  # destination port
    code += _one_of(wanted)
    code += [(RET_K, 0, 0, 0)]
    insns = _assemble(code)
    assert len(insns) <= BPF_MAXINSNS, len(insns)
    return insns


def pack(insns) -> bytes:
    """The instructions as the kernel reads them (an array of struct sock_filter)."""
    return b"".join(_INSN.pack(*insn) for insn in insns)


def filter_program(ports, *, outgoing: bool = True) -> bytes:
    """compile_filter, packed: what SO_ATTACH_FILTER's sock_fprog points at."""
    return pack(compile_filter(ports, outgoing=outgoing))


def _attach(sock: socket.socket, insns) -> None:
    """SO_ATTACH_FILTER: it replaces the socket's filter at once. struct sock_fprog
    holds a pointer: an array's buffer gives one without ctypes (which OpenWrt ships
    apart from python3-light); the kernel copies the program during the call."""
    prog = array.array("B", pack(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", len(insns), prog.buffer_info()[0]))


def parse(data: bytes, pkttype: int, device: str, protocol: int) -> Hit | None:
    """A cooked packet (from its network header) as a Hit, or None if it is not a
    handshake message. The filter said so already, but it is checked again here:
    the filter is a hint for the kernel, and a packet queued under an earlier one
    may be left."""
    if pkttype not in (PACKET_HOST, PACKET_OUTGOING):
        return None
    size = len(data)
    if protocol == ETH_P_IP:
        if size < 20 or data[0] >> 4 != 4:
            return None
        udp = (data[0] & 0xF) * 4
        total, frag = struct.unpack_from("!H2xH", data, 2)
        if udp < 20 or data[9] != IPPROTO_UDP or frag & 0x3FFF:
            return None
        room = total - udp  # what the IP header says it carries
        family, addr, src, dst = 4, socket.AF_INET, data[12:16], data[16:20]
    elif protocol == ETH_P_IPV6:
        if size < 40 or data[0] >> 4 != 6 or data[6] != IPPROTO_UDP:
            return None
        udp, room = 40, struct.unpack_from("!H", data, 4)[0]  # 0: a jumbogram, not ours
        family, addr, src, dst = 6, socket.AF_INET6, data[8:24], data[24:40]
    else:
        return None
    if size < udp + UDP_HEADER + 4:
        return None
    sport, dport, length = struct.unpack_from("!HHH", data, udp)
    kind = data[udp + UDP_HEADER]
    if SIZES.get(kind) != length - UDP_HEADER or length > room or any(data[udp + 9:udp + 12]):
        return None
    return Hit(device, pkttype == PACKET_OUTGOING, kind, family, socket.inet_ntop(addr, bytes(src)), sport,
               socket.inet_ntop(addr, bytes(dst)), dport)


def _unavailable(what: str, e: OSError) -> WatchUnavailable:
    why = f"{what}: {e.strerror or e}"
    if e.errno in (errno.EPERM, errno.EACCES):
        why += " (needs CAP_NET_RAW)"
    return WatchUnavailable(e.errno, why)


class HandshakeWatch:
    """The packet socket, non-blocking: select on it, then drain()."""

    def __init__(self, ports=(), *, outgoing: bool = True, rcvbuf: int = 32768):
        self.outgoing = outgoing
        self.ports: frozenset[int] = frozenset()
        self._counts = {"packets": 0, "drops": 0, "hits": 0}
        self._view = memoryview(bytearray(SNAP))
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                      socket.htons(ETH_P_ALL))
        except OSError as e:
            raise _unavailable("AF_PACKET socket", e) from None
        # Opening with protocol 0 and binding to ETH_P_ALL once filtered is not open to
        # Python: its bind() of a packet socket always names one interface ("" is
        # ENODEV). So the socket receives from its creation, and libpcap's order
        # follows: a filter that takes nothing, what came before it read and thrown
        # away, then the filter of the ports (set_ports)
        try:
            _attach(self.sock, compile_filter(()))
            while True:
                try:
                    self.sock.recv(1)
                except BlockingIOError:
                    break
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.set_ports(ports)
        except ValueError:
            self.sock.close()
            raise
        except OSError as e:
            self.sock.close()
            raise _unavailable("packet filter", e) from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_ports(self, ports) -> bool:
        """Watch these ports (any iterable of them: a port_map too). True when the
        filter changed. ValueError beyond MAX_PORTS; OSError when the kernel refuses
        the filter (the previous one stays)."""
        wanted = _ports(ports)
        if wanted == self.ports:
            return False
        _attach(self.sock, compile_filter(wanted, outgoing=self.outgoing))
        self.ports = wanted
        return True

    def drain(self, limit: int = 256) -> list[Hit]:
        """The handshakes queued, up to `limit` packets read (the rest wait for the
        next call: select says so), without blocking."""
        hits = []
        for _ in range(limit):
            try:
                size, (device, protocol, pkttype, *_) = self.sock.recvfrom_into(self._view)
            except BlockingIOError:
                break
            # Python names the device itself (SIOCGIFNAME of sll_ifindex, per packet):
            # "" when it is gone already. Handshakes are rare enough for that to cost nothing
            hit = parse(bytes(self._view[:size]), pkttype, device, protocol)
            if hit is None or hit.outgoing and not self.outgoing:
                continue
            if hit.sport not in self.ports and hit.dport not in self.ports:
                continue  # passed an earlier filter, queued before set_ports replaced it
            hits.append(hit)
        self._counts["hits"] += len(hits)
        return hits

    def stats(self) -> dict[str, int]:
        """Since the socket was opened: packets that passed the filter, those of them
        the full receive buffer dropped, and hits returned by drain."""
        # the kernel resets its counters at each read, and counts the drops in packets
        packets, drops = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self._counts["packets"] += packets
        self._counts["drops"] += drops
        return dict(self._counts)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "HandshakeWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_watch(ports=(), **options) -> tuple[HandshakeWatch | None, str | None]:
    """(watch, None), or (None, why it cannot be had here). Never raises."""
    try:
        return HandshakeWatch(ports, **options), None
    except OSError as e:
        return None, e.strerror or str(e)
    except ValueError as e:
        return None, str(e)


def port_map(listen_ports: dict) -> dict[int, frozenset[str]]:
    """{interface: listen port} -> {port: the interfaces on it}; port 0 or None: none yet."""
    out: dict[int, set[str]] = {}
    for name, port in listen_ports.items():
        if port:
            out.setdefault(int(port), set()).add(name)
    return {port: frozenset(names) for port, names in out.items()}


def interfaces_for(hit: Hit, ports_map: dict) -> frozenset[str]:
    """The interfaces whose WireGuard this hit was for: those listening on its local port."""
    return ports_map.get(hit.local_port, frozenset())


def reads_for(hit: Hit, delays=DELAYS, *, answers_seen: bool = True) -> tuple[float, ...]:
    """When to read the interface after a hit, by when WireGuard counts the handshake
    done (its last_handshake): the initiator on taking the response, the responder
    only on the initiator's first data or keepalive, a round trip after its response.
    `answers_seen`: the watch sees this host's outgoing packets (the default)."""
    if hit.kind == RESPONSE:
        # ours: done a round trip from now, at most `delays[-1]` away. Theirs: done
        # once the handshake worker takes it: soon, or a little later under load
        return tuple(delays) if hit.outgoing else tuple(delays[:2])
    if hit.kind == INITIATION and not hit.outgoing:
        # the response to it, if WireGuard takes it, is a hit of its own; one late
        # read for a response unseen (a full queue). That read is all a forged one costs
        return tuple(delays[-1:]) if answers_seen else tuple(delays)
    # our initiation completes with a response: a hit of its own. A cookie refuses a
    # handshake under load: the retry is one
    return ()


class WakeSchedule:
    """The reads that hits ask for, per interface: each hit's delays after it. An
    interface's reads are kept at least min_gap apart (the earlier kept: a read sees
    all that happened before it), so hits in a burst merge and never pile up, and a
    read that happened anyway (observed) stands for those due within min_gap."""

    def __init__(self, delays=DELAYS, min_gap: float = 0.025):
        self.delays = tuple(sorted(delays))
        self.min_gap = min_gap
        self._at: dict[str, list[float]] = {}  # interface -> its reads (monotonic), ascending
        self._heap: list[tuple[float, str]] = []  # every read in _at, and stale ones, dropped when met
        self._live = 0  # reads in _at: the heap is rebuilt when stale entries outnumber them

    def hit(self, iface: str, now: float, delays=None) -> None:
        """Schedule reads of iface at now + each delay (by default the schedule's)."""
        fresh = [now + d for d in (self.delays if delays is None else delays)]
        if not fresh:
            return
        old = self._at.get(iface, [])
        kept: list[float] = []
        for t in sorted(old + fresh):
            if not kept or t > kept[-1] and t - kept[-1] >= self.min_gap:
                kept.append(t)
        had = set(old)
        for t in kept:
            if t not in had:
                heapq.heappush(self._heap, (t, iface))
        self._at[iface] = kept
        self._live += len(kept) - len(old)
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [(t, name) for name, times in self._at.items() for t in times]
            heapq.heapify(self._heap)

    def hits(self, hits, ports_map: dict, now: float) -> set[str]:
        """Schedule the reads each hit asks for (reads_for) on its interfaces; the
        interfaces scheduled."""
        out = set()
        for h in hits:
            delays = reads_for(h, self.delays)
            if delays:
                for iface in interfaces_for(h, ports_map):
                    self.hit(iface, now, delays)
                    out.add(iface)
        return out

    def _valid(self, t: float, iface: str) -> bool:
        times = self._at.get(iface)
        return bool(times) and times[0] == t  # the heap meets an interface's reads in order

    def next_deadline(self) -> float | None:
        while self._heap and not self._valid(*self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> set[str]:
        """The interfaces with a read due by now; those reads are taken off."""
        out = set()
        while self._heap and self._heap[0][0] <= now:
            t, iface = heapq.heappop(self._heap)
            if self._valid(t, iface):
                times = self._at[iface]
                times.pop(0)
                self._live -= 1
                if not times:
                    del self._at[iface]
                out.add(iface)
        return out

    def observed(self, iface: str, now: float) -> None:
        """iface was read at `now`, for whatever reason: that read stands for every
        one due before now + min_gap."""
        times = self._at.get(iface)
        if not times:
            return
        left = [t for t in times if t >= now + self.min_gap]
        self._live -= len(times) - len(left)
        if left:
            self._at[iface] = left
        else:
            del self._at[iface]

    def pending(self, iface: str) -> bool:
        return iface in self._at

    def discard(self, iface: str) -> None:
        """iface is gone: its reads with it."""
        self._live -= len(self._at.pop(iface, ()))
