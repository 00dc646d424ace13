"""Links and addresses: the decoding of rtnetlink link and address dumps.

Numbers from linux/if_link.h, linux/if_addr.h and linux/rtnetlink.h.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .netlink import Malformed, attrs, text

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP, IFF_POINTOPOINT = 0x1, 0x10
RT_SCOPE_UNIVERSE = 0

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# the dump requests: every family
LINK_DUMP = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
ADDR_DUMP = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "wireguard", "tun", "veth", ...; "" if none
    up: bool
    pointopoint: bool = False


def decode_link(data: bytes, mtype: int, off: int, end: int) -> Link | None:
    if mtype != RTM_NEWLINK:
        return None
    if end - off < IFINFOMSG.size:
        raise Malformed("link message shorter than struct ifinfomsg")
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, off)
    a = attrs(data, off + IFINFOMSG.size, end)
    if IFLA_IFNAME not in a:
        return None
    kind = ""
    info = a.get(IFLA_LINKINFO)
    if info is not None:
        kind = text(attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b""))
    return Link(index, text(a[IFLA_IFNAME]), kind, bool(flags & IFF_UP), bool(flags & IFF_POINTOPOINT))


def decode_address(data: bytes, mtype: int, off: int, end: int) -> tuple[int, str, int] | None:
    """(ifindex, address, prefixlen) of a global-scope address. IFA_LOCAL first: on a
    point-to-point link IFA_ADDRESS is the peer's address."""
    if mtype != RTM_NEWADDR:
        return None
    if end - off < IFADDRMSG.size:
        raise Malformed("address message shorter than struct ifaddrmsg")
    family, prefixlen, _flags, scope, index = IFADDRMSG.unpack_from(data, off)
    if scope != RT_SCOPE_UNIVERSE:
        return None
    a = attrs(data, off + IFADDRMSG.size, end)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if not raw:
        return None
    return index, socket.inet_ntop(family, raw), prefixlen
