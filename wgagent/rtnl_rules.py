"""Rules: the rtnetlink encoding of rule changes and the decoding of rule dumps.

Numbers from linux/fib_rules.h and linux/rtnetlink.h. Only rules tagged with our
protocol (FRA_PROTOCOL, Linux >= 4.17) are decoded: nobody else's rule is ever
reported, so none can be touched. Changes go as routes' do (rtnl_routes): many
requests per datagram, each acknowledged on its own, matched by sequence number.
"""

from __future__ import annotations

import socket
import struct

from .model import AF_INET, AF_INET6, RTPROT_WGAGENT, Rule
from .netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, U32, Malformed, NetlinkSocket, attr, attrs,
                      message)

RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
FRA_SRC, FRA_PRIORITY, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_PROTOCOL = 2, 6, 14, 15, 21
FR_ACT_TO_TBL = 1
NO_SUPPRESS = 0xFFFFFFFF  # what older kernels report for "no suppress_prefixlength" (-1)

FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2, action, flags
RULE_DUMPS = [FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) for family in (AF_INET, AF_INET6)]


def encode(cmd: int, rule: Rule, seq: int) -> bytes:
    """RTM_NEWRULE (create, never replace: EEXIST when it is there) or RTM_DELRULE,
    with the same attributes, so that a delete matches exactly our rule."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if cmd == RTM_NEWRULE:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    src_len = rule.src_len if rule.src else 0
    header_table = rule.table if rule.table < 256 else 0  # the header has 8 bits; FRA_TABLE has all 32
    body = FIB_RULE_HDR.pack(rule.family, 0, src_len, 0, header_table, 0, 0, FR_ACT_TO_TBL, 0)
    body += attr(FRA_PROTOCOL, bytes((RTPROT_WGAGENT,)))
    body += attr(FRA_PRIORITY, U32.pack(rule.priority)) + attr(FRA_TABLE, U32.pack(rule.table))
    if rule.src:
        body += attr(FRA_SRC, socket.inet_pton(rule.family, rule.src))
    if rule.suppress_prefixlen >= 0:
        body += attr(FRA_SUPPRESS_PREFIXLEN, U32.pack(rule.suppress_prefixlen))
    return message(cmd, flags, seq, body)


def apply(sock: NetlinkSocket, changes: list[tuple[int, Rule]]) -> list[int]:
    """Send (cmd, rule) requests in batches; returns an errno per request (0 = done)."""
    return sock.transact(lambda change, seq: encode(*change, seq), changes, "rule change")


def protocol(data: bytes, off: int, end: int) -> int:
    """FRA_PROTOCOL of the rule message whose body is data[off:end]; -1 if none."""
    value = attrs(data, off + FIB_RULE_HDR.size, end).get(FRA_PROTOCOL)
    return value[0] if value else -1


def decode(data: bytes, mtype: int, off: int, end: int) -> Rule | None:
    """A rule of ours, or None."""
    if mtype != RTM_NEWRULE:
        return None
    if end - off < FIB_RULE_HDR.size:
        raise Malformed("rule message shorter than struct fib_rule_hdr")
    family, _dst_len, src_len, _tos, table, _r1, _r2, _action, _flags = FIB_RULE_HDR.unpack_from(data, off)
    a = attrs(data, off + FIB_RULE_HDR.size, end)
    proto = a.get(FRA_PROTOCOL)
    if not proto or proto[0] != RTPROT_WGAGENT:
        return None
    suppress = U32.unpack(a[FRA_SUPPRESS_PREFIXLEN])[0] if FRA_SUPPRESS_PREFIXLEN in a else NO_SUPPRESS
    return Rule(family,
                U32.unpack(a[FRA_PRIORITY])[0] if FRA_PRIORITY in a else 0,
                (U32.unpack(a[FRA_TABLE])[0] if FRA_TABLE in a else 0) or table,
                socket.inet_ntop(family, a[FRA_SRC]) if FRA_SRC in a else "",
                src_len,
                -1 if suppress == NO_SUPPRESS else suppress)
