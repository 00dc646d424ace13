"""Plain value types shared by the core and the adapters. No I/O here."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

# wgagent's rtnetlink protocol number: it tags every route (and rule) wgagent owns,
# so that a restart can find them and nothing of anybody else's is touched.
# 152 is not taken in Linux's rtnetlink.h (which ends its list at 192, RTPROT_EIGRP)
# nor by the usual routing daemons (bird 12, zebra 11, babel 42, keepalived 18,
# dhcp 16, openr 99, bgp/isis/ospf/rip 186-189). `ip route` shows it as
# "proto wgagent" once /etc/iproute2/rt_protos.d/wgagent.conf names it.
RTPROT_WGAGENT = 152

AF_INET = 2
AF_INET6 = 10


# The types made by the thousand on every poll are NamedTuples, not dataclasses:
# creation, hashing and comparison then run in C, and on a hub they are most of a
# steady cycle. (A NamedTuple also equals a plain tuple of the same values; nothing
# here mixes the two.)


class Peer(NamedTuple):
    """One WireGuard peer as the backend reported it."""

    public_key: str  # base64, as `wg` prints it
    allowed_ips: tuple[str, ...] = ()  # normalised prefixes, "10.0.31.5/32"
    endpoint: str | None = None  # "203.0.113.7:51820", "[2001:db8::1]:51820", "[fe80::1%3]:51820"
    last_handshake: float = 0.0  # unix time; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0  # persistent keepalive interval, seconds; 0 = off

    @property
    def short_key(self) -> str:
        return self.public_key[:8]


@dataclass(frozen=True)
class InterfaceState:
    """What one poll of a WireGuard interface saw. peers is None when unreadable."""

    name: str
    backend: str  # "kernel" | "uapi" | "" (not a WireGuard interface, or absent)
    peers: tuple[Peer, ...] | None
    error: str = ""
    listen_port: int = 0  # the UDP port its WireGuard listens on (0: unknown); wake.py watches it


class Route(NamedTuple):
    """A host route wgagent wants, or holds, in the kernel. Equality is the whole route."""

    table: int
    dst: str  # network address, e.g. "10.0.31.5" or "fd00::5"
    prefixlen: int
    ifname: str
    metric: int
    gateway: str = ""  # "" for a device route (scope link)

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self.dst else AF_INET

    @property
    def prefix(self) -> str:
        return f"{self.dst}/{self.prefixlen}"

    @property
    def slot(self) -> tuple[int, str, int]:
        """Where the route sits: at most one route of ours per (table, prefix)."""
        return self[:3]  # (table, dst, prefixlen)


class Foreign(NamedTuple):
    """A unicast route of another protocol, by the slot it sits in: what the kernel
    holds beside (or instead of) ours. A routing daemon's route for a peer's prefix
    is another router's claim on that peer (policy.hand_off); any other is a conflict."""

    proto: int
    metric: int
    gateway: str = ""
    device: str = ""  # output device; for a multipath route, its first hop's
    since: float = 0.0  # monotonic: when this route (protocol, metric, gateway, device) was first seen

    @property
    def key(self) -> tuple:
        """The route without its date: a changed next hop is another route."""
        return self[:4]


class Rule(NamedTuple):
    """An `ip rule` wgagent wants, or holds. Equality is the whole rule."""

    family: int
    priority: int
    table: int
    src: str = ""  # network address; "" = from all
    src_len: int = 0
    suppress_prefixlen: int = -1  # -1 = none

    def describe(self) -> str:
        text = f"from {self.src}/{self.src_len}" if self.src else "from all"
        text += f" lookup {self.table}"
        if self.suppress_prefixlen >= 0:
            text += f" suppress_prefixlength {self.suppress_prefixlen}"
        return f"{text} pref {self.priority}"


def kernel_metric(family: int, metric: int) -> int:
    """The metric the kernel stores: IPv6 turns 0 into 1024 (IP6_RT_PRIO_USER)."""
    return 1024 if family == AF_INET6 and metric == 0 else metric


@lru_cache(maxsize=1 << 16)
def parse_prefix(text: str) -> tuple[int, str, int]:
    """'fd77:0::1/128' -> (AF_INET6, 'fd77::1', 128): family, network address (host
    bits cleared) and length. The address is written by inet_ntop, as the kernel's
    route dumps are read back (rtnl_routes.decode), so a wanted route and the same
    route dumped compare equal. ValueError on anything that is not a prefix.

    inet_pton rather than the ipaddress module, which costs many times more, twice per
    AllowedIP at start-up. Cached: each poll sees the same AllowedIPs again."""
    addr, sep, length = text.partition("/")
    family = AF_INET6 if ":" in addr else AF_INET
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise ValueError(f"{text!r} is not an IP prefix") from None
    bits = len(packed) * 8
    if not sep:
        plen = bits
    elif length.isascii() and length.isdigit() and int(length) <= bits:
        plen = int(length)
    else:
        raise ValueError(f"{text!r} is not an IP prefix (length must be 0..{bits})")
    if plen < bits:
        value = int.from_bytes(packed, "big") >> (bits - plen) << (bits - plen)
        packed = value.to_bytes(len(packed), "big")
    return family, socket.inet_ntop(family, packed), plen


@lru_cache(maxsize=1 << 16)
def normalize_prefix(text: str) -> str:
    """'fd77:0::1/128' -> 'fd77::1/128'; see parse_prefix."""
    _, address, plen = parse_prefix(text)
    return f"{address}/{plen}"
