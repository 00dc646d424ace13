"""rtnetlink links, addresses and rules, encoded and decoded. No root: the messages
are built here byte by byte as the kernel lays them out (net/core/rtnetlink.c
rtnl_fill_ifinfo, net/ipv4/devinet.c inet_fill_ifaddr, net/ipv6/addrconf.c,
net/core/fib_rules.c fib_nl_fill_rule), with attributes we do not read in between;
pyroute2's independent decoders (a test-only dependency) read the same bytes.
The real kernel's answers are compared with `ip -j` in test_rtnl_netns.py."""

from __future__ import annotations

import socket
import struct

import pytest

from wgagent import netlink as nl
from wgagent import rtnl_links as rl
from wgagent import rtnl_rules as rr
from wgagent.model import AF_INET, AF_INET6, RTPROT_WGAGENT, Rule

NESTED = 0x8000
U8, U32 = struct.Struct("=B"), struct.Struct("=I")
IFA_LABEL, IFA_BROADCAST, IFA_CACHEINFO, IFA_FLAGS = 3, 4, 6, 8
IFLA_MTU, IFLA_OPERSTATE, IFLA_INFO_DATA = 4, 16, 2
RT_SCOPE_LINK, RT_SCOPE_HOST = 253, 254
RT_TABLE_COMPAT = 252  # what the kernel puts in the 8-bit header for a table > 255
FRA_IIFNAME, FRA_OIFNAME = 3, 17


def nlmsg(mtype: int, body: bytes, flags: int = nl.NLM_F_MULTI, seq: int = 9) -> bytes:
    return nl.message(mtype, flags, seq, body)


def link_msg(index: int, name: str, flags: int, kind: str | None = None, nested_flag: bool = True) -> bytes:
    body = rl.IFINFOMSG.pack(socket.AF_UNSPEC, 65534, index, flags, 0)
    body += nl.attr(rl.IFLA_IFNAME, name.encode() + b"\0")
    body += nl.attr(IFLA_MTU, U32.pack(1420)) + nl.attr(IFLA_OPERSTATE, U8.pack(6))
    if kind is not None:
        info = nl.attr(rl.IFLA_INFO_KIND, kind.encode() + b"\0") + nl.attr(IFLA_INFO_DATA | NESTED, b"")
        body += nl.attr(rl.IFLA_LINKINFO | (NESTED if nested_flag else 0), info)
    return nlmsg(rl.RTM_NEWLINK, body)


def addr_msg(family: int, index: int, prefixlen: int, scope: int, address: str, local: str | None = None,
             label: str = "") -> bytes:
    body = rl.IFADDRMSG.pack(family, prefixlen, 0x80, scope, index)  # IFA_F_PERMANENT
    body += nl.attr(rl.IFA_ADDRESS, socket.inet_pton(family, address))
    if local is not None:
        body += nl.attr(rl.IFA_LOCAL, socket.inet_pton(family, local))
    if label:
        body += nl.attr(IFA_LABEL, label.encode() + b"\0")
    body += nl.attr(IFA_FLAGS, U32.pack(0x80)) + nl.attr(IFA_CACHEINFO, b"\xff" * 16)
    return nlmsg(rl.RTM_NEWADDR, body)


def rule_msg(family: int, priority: int, table: int, src: str = "", src_len: int = 0, suppress: int | None = None,
             proto: int | None = RTPROT_WGAGENT) -> bytes:
    header_table = table if table < 256 else RT_TABLE_COMPAT
    body = rr.FIB_RULE_HDR.pack(family, 0, src_len, 0, header_table, 0, 0, rr.FR_ACT_TO_TBL, 0)
    body += nl.attr(rr.FRA_TABLE, U32.pack(table))
    if suppress is not None:
        body += nl.attr(rr.FRA_SUPPRESS_PREFIXLEN, U32.pack(suppress))
    if priority:
        body += nl.attr(rr.FRA_PRIORITY, U32.pack(priority))
    if src:
        body += nl.attr(rr.FRA_SRC, socket.inet_pton(family, src))
    if proto is not None:
        body += nl.attr(rr.FRA_PROTOCOL, U8.pack(proto))
    return nlmsg(rr.RTM_NEWRULE, body)


def decoded(decode, datagram: bytes) -> list:
    """What NetlinkSocket.dump keeps of one datagram."""
    out = []
    for off, length, mtype, _flags, _seq in nl.messages(datagram):
        item = decode(datagram, mtype, off + nl.NLMSG.size, off + length)
        if item is not None:
            out.append(item)
    return out


# --- links

def test_links_kind_up_and_pointopoint():
    datagram = (link_msg(1, "lo", 0x49, None)  # UP|LOOPBACK|RUNNING: no IFLA_LINKINFO
                + link_msg(7, "wg0", 0x91, "wireguard")  # UP|POINTOPOINT|NOARP
                + link_msg(8, "tun9", 0x1090, "tun", nested_flag=False)  # down; LINKINFO without NLA_F_NESTED
                + link_msg(9, "d0", 0x1003, "dummy")
                + nlmsg(nl.NLMSG_DONE, U32.pack(0)))
    assert decoded(rl.decode_link, datagram) == [
        rl.Link(1, "lo", "", True, False),
        rl.Link(7, "wg0", "wireguard", True, True),
        rl.Link(8, "tun9", "tun", False, True),
        rl.Link(9, "d0", "dummy", True, False),
    ]


def test_link_without_a_name_or_of_another_type_is_skipped():
    body = rl.IFINFOMSG.pack(0, 1, 3, 1, 0) + nl.attr(IFLA_MTU, U32.pack(1500))
    assert decoded(rl.decode_link, nlmsg(rl.RTM_NEWLINK, body)) == []
    assert decoded(rl.decode_link, nlmsg(17, link_msg(3, "x", 1)[16:])) == []  # RTM_DELLINK


# --- addresses

def test_addresses_global_scope_only_local_before_address():
    datagram = (addr_msg(AF_INET, 1, 8, RT_SCOPE_HOST, "127.0.0.1", "127.0.0.1", "lo")
                + addr_msg(AF_INET, 4, 24, 0, "192.0.2.1", "192.0.2.1", "eth0")
                + addr_msg(AF_INET, 7, 32, 0, "10.0.31.2", "10.0.31.1", "wg0")  # peer address: IFA_LOCAL is ours
                + addr_msg(AF_INET, 4, 16, RT_SCOPE_LINK, "169.254.7.7", "169.254.7.7", "eth0")
                + addr_msg(AF_INET6, 4, 64, 0, "2001:db8::1")  # IPv6: IFA_ADDRESS alone
                + addr_msg(AF_INET6, 4, 64, RT_SCOPE_LINK, "fe80::1")
                + addr_msg(AF_INET6, 7, 128, 0, "fd31::2", "fd31::1"))
    assert decoded(rl.decode_address, datagram) == [
        (4, "192.0.2.1", 24), (7, "10.0.31.1", 32), (4, "2001:db8::1", 64), (7, "fd31::1", 128)]


# --- rules

def test_rule_dump_keeps_only_ours_and_reads_every_field():
    datagram = (rule_msg(AF_INET, 0, 255, proto=2)  # the kernel's own "0: from all lookup local"
                + rule_msg(AF_INET, 5000, 254, suppress=0)
                + rule_msg(AF_INET, 5010, 1000, "198.51.100.2", 32, suppress=0xFFFFFFFF)  # older kernels: -1 sent
                + rule_msg(AF_INET, 5020, 100, "10.0.31.5", 32, proto=4)  # somebody else's
                + rule_msg(AF_INET, 5030, 100, "10.0.31.6", 32, proto=None)  # kernel < 4.17: no protocol
                + rule_msg(AF_INET6, 5010, 70000, "2001:db8:100::", 48)
                + rule_msg(AF_INET6, 0, 200, suppress=64))
    assert decoded(rr.decode, datagram) == [
        Rule(AF_INET, 5000, 254, "", 0, 0),
        Rule(AF_INET, 5010, 1000, "198.51.100.2", 32, -1),
        Rule(AF_INET6, 5010, 70000, "2001:db8:100::", 48, -1),  # FRA_TABLE, not the header's 252
        Rule(AF_INET6, 0, 200, "", 0, 64),  # priority 0: FRA_PRIORITY absent
    ]


def test_rule_table_falls_back_to_the_header():
    body = rr.FIB_RULE_HDR.pack(AF_INET, 0, 0, 0, 100, 0, 0, 1, 0) + nl.attr(rr.FRA_PRIORITY, U32.pack(7)) \
        + nl.attr(rr.FRA_PROTOCOL, U8.pack(RTPROT_WGAGENT))
    assert decoded(rr.decode, nlmsg(rr.RTM_NEWRULE, body)) == [Rule(AF_INET, 7, 100)]


def test_rule_protocol_for_the_event_filter():
    msg = rule_msg(AF_INET, 5, 100, proto=4)
    assert rr.protocol(msg, 16, len(msg)) == 4
    msg = rule_msg(AF_INET, 5, 100, proto=None)
    assert rr.protocol(msg, 16, len(msg)) == -1


@pytest.mark.parametrize("cmd,flags", [
    (rr.RTM_NEWRULE, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL),
    (rr.RTM_DELRULE, nl.NLM_F_REQUEST | nl.NLM_F_ACK),
])
def test_rule_encoding(cmd, flags):
    msg = rr.encode(cmd, Rule(AF_INET6, 5010, 70000, "2001:db8:100::", 48, 0), seq=42)
    length, mtype, mflags, seq, _ = nl.NLMSG.unpack_from(msg)
    assert (length, mtype, mflags, seq) == (len(msg), cmd, flags, 42)
    family, dst_len, src_len, tos, table, _, _, action, rflags = rr.FIB_RULE_HDR.unpack_from(msg, 16)
    assert (family, dst_len, src_len, tos, table, action, rflags) == (AF_INET6, 0, 48, 0, 0, rr.FR_ACT_TO_TBL, 0)
    a = nl.attrs(msg, 16 + rr.FIB_RULE_HDR.size, len(msg))
    assert a == {rr.FRA_PROTOCOL: bytes((RTPROT_WGAGENT,)), rr.FRA_PRIORITY: U32.pack(5010),
                 rr.FRA_TABLE: U32.pack(70000), rr.FRA_SRC: socket.inet_pton(AF_INET6, "2001:db8:100::"),
                 rr.FRA_SUPPRESS_PREFIXLEN: U32.pack(0)}


def test_rule_encoding_from_all_without_suppress():
    msg = rr.encode(rr.RTM_NEWRULE, Rule(AF_INET, 5000, 254, "", 24, -1), seq=1)  # src_len without src: ignored
    family, _, src_len, _, table, _, _, _, _ = rr.FIB_RULE_HDR.unpack_from(msg, 16)
    assert (family, src_len, table) == (AF_INET, 0, 254)  # a table < 256 in the header too
    assert set(nl.attrs(msg, 16 + rr.FIB_RULE_HDR.size, len(msg))) == {rr.FRA_PROTOCOL, rr.FRA_PRIORITY,
                                                                        rr.FRA_TABLE}


def test_encoded_rule_decodes_to_itself():
    for rule in (Rule(AF_INET, 5000, 254, "", 0, 0), Rule(AF_INET, 5010, 100, "198.51.100.2", 32),
                 Rule(AF_INET6, 6000, 4242, "fd31::5", 128, 64)):
        msg = rr.encode(rr.RTM_NEWRULE, rule, seq=1)
        assert decoded(rr.decode, msg) == [rule]


# --- pyroute2's decoders read the same bytes (test-only dependency)

def test_pyroute2_reads_our_rule_requests_alike():
    fibmsg = pytest.importorskip("pyroute2.netlink.rtnl.fibmsg").fibmsg
    m = fibmsg(rr.encode(rr.RTM_DELRULE, Rule(AF_INET6, 5010, 70000, "2001:db8:100::", 48, 0), seq=5))
    m.decode()
    assert (m["family"], m["src_len"], m["table"], m["action"]) == (AF_INET6, 48, 0, 1)
    assert m["header"]["type"] == rr.RTM_DELRULE and m["header"]["sequence_number"] == 5
    assert dict((k, v) for k, v, *_ in m["attrs"]) == {
        "FRA_PROTOCOL": RTPROT_WGAGENT, "FRA_PRIORITY": 5010, "FRA_TABLE": 70000, "FRA_SRC": "2001:db8:100::",
        "FRA_SUPPRESS_PREFIXLEN": 0}


def test_pyroute2_reads_the_link_and_address_fixtures_alike():
    ifinfmsg = pytest.importorskip("pyroute2.netlink.rtnl.ifinfmsg").ifinfmsg
    ifaddrmsg = pytest.importorskip("pyroute2.netlink.rtnl.ifaddrmsg").ifaddrmsg
    raw = link_msg(7, "wg0", 0x91, "wireguard")
    m = ifinfmsg(raw)
    m.decode()
    ours = decoded(rl.decode_link, raw)[0]
    assert (m["index"], m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")) == (
        ours.index, ours.name, ours.kind)
    raw = addr_msg(AF_INET, 7, 32, 0, "10.0.31.2", "10.0.31.1", "wg0")
    m = ifaddrmsg(raw)
    m.decode()
    assert (m["index"], m.get_attr("IFA_LOCAL"), m["prefixlen"]) == decoded(rl.decode_address, raw)[0]
