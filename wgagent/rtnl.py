"""rtnetlink: links, addresses, routes, rules, and change events.

Links, addresses and rules go through pyroute2's IPRoute; routes, the hot path at
scale, through rtnl_routes (batched). Events come from a plain netlink socket
of our own, bound to the link, address, route and rule groups: the daemon only
needs to know *that* something changed, so it reads message headers and never
pays for pyroute2's full decoding of every event.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from .model import AF_INET, AF_INET6, RTPROT_WGAGENT, Route, Rule
from .rtnl_routes import RTM_DELROUTE, RTM_NEWROUTE, RouteDump, RouteSocket, messages


# rtnetlink message types and multicast groups (linux/rtnetlink.h)
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWRULE, RTM_DELRULE = 32, 33
GROUPS = (1, 5, 7, 8, 9, 11, 19)  # LINK, IPV4_IFADDR, IPV4_ROUTE, IPV4_RULE, IPV6_IFADDR, IPV6_ROUTE, IPV6_RULE
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
NETLINK_ADD_MEMBERSHIP = 1
FRA_PROTOCOL = 21
NLMSG_HDR = struct.Struct("=IHHII")


IFF_UP, IFF_POINTOPOINT = 0x1, 0x10
RT_SCOPE_UNIVERSE = 0
FR_ACT_TO_TBL = 1


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "wireguard", "tun", "veth", ...; "" if none
    up: bool
    pointopoint: bool = False


class Rtnl:
    def __init__(self):
        from pyroute2 import IPRoute  # deferred: `wgagent check` on a bad config never needs it

        self.ipr = IPRoute()
        self.route_sock = RouteSocket()

    def close(self):
        self.route_sock.close()
        self.ipr.close()

    def links(self) -> dict[str, Link]:
        out = {}
        for msg in self.ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME")
            kind = ""
            info = msg.get_attr("IFLA_LINKINFO")
            if info is not None:
                kind = info.get_attr("IFLA_INFO_KIND") or ""
            out[name] = Link(msg["index"], name, kind, bool(msg["flags"] & IFF_UP),
                             bool(msg["flags"] & IFF_POINTOPOINT))
        return out

    def addresses(self, index_to_name: dict[int, str]) -> dict[str, list[tuple[str, int]]]:
        """Global-scope addresses per device: {name: [(address, prefixlen), ...]}."""
        out: dict[str, list[tuple[str, int]]] = {}
        for msg in self.ipr.get_addr():
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            name = index_to_name.get(msg["index"])
            if addr and name:
                out.setdefault(name, []).append((addr, msg["prefixlen"]))
        return out

    def routes(self, index_to_name: dict[int, str]) -> RouteDump:
        return self.route_sock.dump(index_to_name)

    def apply_routes(self, changes: list[tuple[str, Route, int | None]]) -> list[int]:
        """("add"|"delete", route, ifindex) in batches; an errno per change, 0 = done."""
        if not changes:
            return []
        return self.route_sock.apply([(RTM_NEWROUTE if verb == "add" else RTM_DELROUTE, route, index or 0)
                                      for verb, route, index in changes])

    def rules(self) -> list[Rule]:
        """The ip rules we own (protocol tag), both families."""
        out: list[Rule] = []
        for family in (AF_INET, AF_INET6):
            for msg in self.ipr.get_rules(family=family):
                if msg.get_attr("FRA_PROTOCOL") != RTPROT_WGAGENT:
                    continue
                suppress = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
                out.append(Rule(family, msg.get_attr("FRA_PRIORITY") or 0,
                                msg.get_attr("FRA_TABLE") or msg["table"],
                                msg.get_attr("FRA_SRC") or "", msg["src_len"],
                                -1 if suppress is None or suppress == 0xFFFFFFFF else suppress))
        return out

    def _rule(self, cmd: str, rule: Rule):
        kw = {"family": rule.family, "priority": rule.priority, "table": rule.table,
              "protocol": RTPROT_WGAGENT, "action": FR_ACT_TO_TBL}
        if rule.src:
            kw.update(src=rule.src, src_len=rule.src_len)
        if rule.suppress_prefixlen >= 0:
            kw["suppress_prefixlen"] = rule.suppress_prefixlen
        self.ipr.rule(cmd, **kw)

    def add_rule(self, rule: Rule) -> bool:
        return _call(self._rule, "add", rule, ignore=(errno.EEXIST,))

    def delete_rule(self, rule: Rule) -> bool:
        return _call(self._rule, "del", rule, ignore=(errno.ENOENT, errno.ESRCH))


def _call(fn, *args, ignore=(), **kw) -> bool:
    """One netlink request. Errors in `ignore` ("already there", "already gone") give
    False; any other becomes an OSError, which the daemon logs and retries."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code in ignore:
            return False
        raise OSError(e.code, os.strerror(e.code) if isinstance(e.code, int) and e.code > 0 else str(e)) from None
    return True


class RtnlEvents:
    """A netlink socket that wakes the daemon when links, addresses, routes or rules
    change. It subscribes before the daemon's first dump, so nothing is missed
    between the two; an overrun (ENOBUFS) is reported as a change: resync."""

    def __init__(self):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        try:  # as root, past net.core.rmem_max: a flush of thousands of routes fits
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((0, 0))
        for group in GROUPS:
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def drain(self) -> bool:
        """Read everything pending; True if any of it is somebody else's change."""
        changed = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    changed = True
                    continue
                raise
            changed = changed or relevant(data)


def relevant(data: bytes) -> bool:
    """Does a batch of rtnetlink messages hold a change that is not our own echo?
    Our own additions (RTM_NEWROUTE/NEWRULE with our protocol) are not news."""
    for off, length, mtype, _flags, _seq in messages(data):
        body = off + NLMSG_HDR.size
        if mtype == RTM_NEWROUTE:
            # struct rtmsg: family, dst_len, src_len, tos, table, protocol, ...
            if data[body + 5] != RTPROT_WGAGENT:
                return True
        elif mtype == RTM_NEWRULE:
            if _rule_protocol(data, body, off + length) != RTPROT_WGAGENT:
                return True
        elif mtype in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_DELROUTE, RTM_DELRULE):
            return True
    return False


def _rule_protocol(data: bytes, body: int, end: int) -> int:
    off = body + 12  # struct fib_rule_hdr
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype & 0x3FFF == FRA_PROTOCOL:
            return data[off + 4]
        off += (alen + 3) & ~3
    return -1
