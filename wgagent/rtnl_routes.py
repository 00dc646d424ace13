"""Routes: the rtnetlink encoding of route changes and the decoding of route dumps.

Routes are the one hot path at scale (thousands per start, a dump per resync;
figures in bench/NOTES.md). Their wire format is small and stable (struct rtmsg +
five attributes), so they are encoded here and sent many requests per datagram
(netlink.NetlinkSocket); every request still gets its own acknowledgement, matched
by sequence number.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .model import AF_INET, AF_INET6, RTPROT_WGAGENT, Foreign, Route
from .netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, U32, Malformed, NetlinkSocket, attr, attrs,
                      message)

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE, RTA_VIA = 1, 4, 5, 6, 9, 15, 18
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_MAIN = 254

RTMSG = struct.Struct("=BBBBBBBBI")
RTNEXTHOP = struct.Struct("=HBBi")  # struct rtnexthop: len, flags, hops, ifindex


@dataclass
class RouteDump:
    owned: list[Route]
    # (table, dst, prefixlen) -> the unicast routes of others in that slot (since unset)
    foreign: dict[tuple[int, str, int], tuple[Foreign, ...]]
    # (device, family) -> gateway of the device's best default route in main (others' routes)
    gateways: dict[tuple[str, int], str]


def encode(cmd: int, route: Route, index: int, seq: int) -> bytes:
    """One RTM_NEWROUTE (create, never replace: a route of somebody else must make the
    request fail, not be overwritten) or RTM_DELROUTE for a route of ours."""
    family = route.family
    if cmd == RTM_NEWROUTE:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        scope = RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK
    else:
        flags = NLM_F_REQUEST | NLM_F_ACK
        scope = RT_SCOPE_NOWHERE  # as iproute2: match the route whatever its scope
    header_table = route.table if route.table < 256 else 0
    body = RTMSG.pack(family, route.prefixlen, 0, 0, header_table, RTPROT_WGAGENT, scope, RTN_UNICAST, 0)
    if route.prefixlen:
        body += attr(RTA_DST, socket.inet_pton(family, route.dst))
    if index:
        body += attr(RTA_OIF, U32.pack(index))
    if route.gateway:
        body += attr(RTA_GATEWAY, socket.inet_pton(family, route.gateway))
    body += attr(RTA_PRIORITY, U32.pack(route.metric)) + attr(RTA_TABLE, U32.pack(route.table))
    return message(cmd, flags, seq, body)


def apply(sock: NetlinkSocket, changes: list[tuple[int, Route, int]]) -> list[int]:
    """Send (cmd, route, ifindex) requests in batches; returns an errno per request (0 = done)."""
    return sock.transact(lambda change, seq: encode(*change, seq), changes, "route changes")


def decode(data: bytes, mtype: int, off: int, end: int):
    """(family, table, dst, dst_len, oif, metric, gateway, protocol) of a unicast route.
    A field of the wrong size raises struct.error or ValueError: NetlinkSocket.dump
    reports either as a malformed message."""
    if mtype != RTM_NEWROUTE:
        return None
    fields = decode_any(data, off, end)
    return fields[1:] if fields[0] == RTN_UNICAST else None


def decode_any(data: bytes, off: int, end: int):
    """(type, family, table, dst, dst_len, oif, metric, gateway, protocol) of a route
    message of any type (unicast, unreachable, ...). The gateway is RTA_GATEWAY's, or
    RTA_VIA's (an IPv4 route via an IPv6 next hop), or the first hop's of a multipath
    route, whose device is then the oif."""
    if end - off < RTMSG.size:
        raise Malformed("route message shorter than struct rtmsg")
    (fam, dst_len, _src_len, _tos, table, proto, _scope, rtype, _flags) = RTMSG.unpack_from(data, off)
    a = attrs(data, off + RTMSG.size, end)
    if RTA_TABLE in a:
        table = U32.unpack(a[RTA_TABLE])[0]
    dst = socket.inet_ntop(fam, a[RTA_DST]) if RTA_DST in a else ("::" if fam == AF_INET6 else "0.0.0.0")
    oif = U32.unpack(a[RTA_OIF])[0] if RTA_OIF in a else 0
    metric = U32.unpack(a[RTA_PRIORITY])[0] if RTA_PRIORITY in a else 0
    hop = a
    if RTA_MULTIPATH in a and RTA_OIF not in a:
        first = a[RTA_MULTIPATH]
        length, _, _, oif = RTNEXTHOP.unpack_from(first, 0)
        hop = attrs(first, RTNEXTHOP.size, min(length, len(first)))
    gateway = _gateway(fam, hop)
    return rtype, fam, table, dst, dst_len, oif, metric, gateway, proto


def _gateway(family: int, a: dict) -> str:
    if RTA_GATEWAY in a:
        return socket.inet_ntop(family, a[RTA_GATEWAY])
    if RTA_VIA in a:  # struct rtvia: the address family, then the address
        via = a[RTA_VIA]
        return socket.inet_ntop(struct.unpack_from("=H", via)[0], via[2:])
    return ""


def dump(sock: NetlinkSocket, index_to_name: dict[int, str]) -> RouteDump:
    """All unicast routes of both families and every table, split into ours and others'."""
    owned: list[Route] = []
    foreign: dict[tuple[int, str, int], tuple[Foreign, ...]] = {}
    get = foreign.get
    best: dict[tuple[str, int], tuple[int, str]] = {}
    bodies = [RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) for family in (AF_INET, AF_INET6)]
    for fam, table, dst, dst_len, oif, metric, gateway, proto in sock.dump(RTM_GETROUTE, bodies, decode, "route dump"):
        if proto == RTPROT_WGAGENT:
            owned.append(Route(table, dst, dst_len, index_to_name.get(oif, f"if{oif}"), metric, gateway))
            continue
        slot = (table, dst, dst_len)
        foreign[slot] = get(slot, ()) + (Foreign(proto, metric, gateway, index_to_name.get(oif, f"if{oif}")),)
        if dst_len == 0 and table == RT_TABLE_MAIN and oif in index_to_name and gateway:
            key = (index_to_name[oif], fam)
            if key not in best or metric < best[key][0]:
                best[key] = (metric, gateway)
    return RouteDump(owned, foreign, {k: gw for k, (_, gw) in best.items()})
