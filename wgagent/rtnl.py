"""rtnetlink: links, addresses, routes, rules, and change events.

Everything here is the project's own netlink code (netlink.py for the socket and
the wire format; rtnl_links, rtnl_routes and rtnl_rules for each kind of object),
not pyroute2 (why: bench/NOTES.md). Events come from a second socket, bound to the
link, address, route and rule groups: the daemon only needs to know *that*
something changed, so it reads message headers and decodes nothing else.

Rtnl's methods raise OSError and nothing else, under netlink.py's error policy: the
kernel's errno, ETIMEDOUT (no answer), EMSGSIZE (a cut datagram), EPROTO (a message
that does not parse), EINTR (a dump interrupted again and again).
"""

from __future__ import annotations

import errno
import socket

import struct
from typing import Mapping, NamedTuple

from . import rtnl_routes, rtnl_rules
from .model import RTPROT_WGAGENT, Foreign, Route, Rule
from .netlink import NLMSG, SO_RCVBUFFORCE, SOL_NETLINK, Malformed, NetlinkSocket, attrs, messages, text
from .rtnl_links import ADDR_DUMP, IFADDRMSG, IFINFOMSG, IFLA_IFNAME, LINK_DUMP, RTM_GETADDR, RTM_GETLINK, \
    RTM_NEWADDR, RTM_NEWLINK, Link, decode_address, decode_link
from .rtnl_routes import RTM_DELROUTE, RTM_NEWROUTE, RTMSG, RTN_UNICAST, RouteDump
from .rtnl_rules import RTM_DELRULE, RTM_GETRULE, RTM_NEWRULE, RULE_DUMPS

__all__ = ["Changes", "Interest", "Link", "RouteEvent", "Rtnl", "RtnlEvents", "relevant"]

RTM_DELLINK, RTM_DELADDR = 17, 21
# multicast groups (linux/rtnetlink.h)
GROUPS = (1, 5, 7, 8, 9, 11, 19)  # LINK, IPV4_IFADDR, IPV4_ROUTE, IPV4_RULE, IPV6_IFADDR, IPV6_ROUTE, IPV6_RULE
NETLINK_ADD_MEMBERSHIP = 1
RCVBUF = 1 << 22  # the event socket's receive buffer (the tests make it small to provoke ENOBUFS)


class Rtnl:
    def __init__(self):
        self.sock = NetlinkSocket()

    def close(self):
        self.sock.close()

    def links(self) -> dict[str, Link]:
        return {link.name: link for link in self.sock.dump(RTM_GETLINK, [LINK_DUMP], decode_link, "link dump")}

    def addresses(self, index_to_name: dict[int, str]) -> dict[str, list[tuple[str, int]]]:
        """Global-scope addresses per device: {name: [(address, prefixlen), ...]}."""
        out: dict[str, list[tuple[str, int]]] = {}
        for index, addr, prefixlen in self.sock.dump(RTM_GETADDR, [ADDR_DUMP], decode_address, "address dump"):
            name = index_to_name.get(index)
            if name:
                out.setdefault(name, []).append((addr, prefixlen))
        return out

    def routes(self, index_to_name: dict[int, str]) -> RouteDump:
        return rtnl_routes.dump(self.sock, index_to_name)

    def apply_routes(self, changes: list[tuple[str, Route, int | None]]) -> list[int]:
        """("add"|"delete", route, ifindex) in batches; an errno per change, 0 = done."""
        if not changes:
            return []
        return rtnl_routes.apply(self.sock, [(RTM_NEWROUTE if verb == "add" else RTM_DELROUTE, route, index or 0)
                                             for verb, route, index in changes])

    def rules(self) -> list[Rule]:
        """The ip rules we own (protocol tag), both families."""
        return self.sock.dump(RTM_GETRULE, RULE_DUMPS, rtnl_rules.decode, "rule dump")

    def apply_rules(self, changes: list[tuple[str, Rule]]) -> list[int]:
        """("add"|"delete", rule) in batches, as routes; an errno per change, 0 = done.
        EEXIST (already there) and ENOENT (already gone) are the caller's to judge."""
        return rtnl_rules.apply(self.sock, [(RTM_NEWRULE if verb == "add" else RTM_DELRULE, rule)
                                            for verb, rule in changes])


class RtnlEvents:
    """A netlink socket that wakes the daemon when links, addresses, routes or rules
    change. It subscribes before the daemon's first dump, so nothing is missed
    between the two; an overrun (ENOBUFS) is reported as a change: resync."""

    def __init__(self, rcvbuf: int = RCVBUF):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        try:  # as root, past net.core.rmem_max: a flush of thousands of routes fits
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((0, 0))
        for group in GROUPS:
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def drain(self, interest: "Interest | None" = None) -> "Changes":
        """Read everything pending: what of it is somebody else's change that matters
        (see classify; without an interest, every change but our own echoes)."""
        full = False
        routes: list[RouteEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return Changes(full, routes)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    full = True  # events were lost: only a full read tells what changed
                    continue
                raise
            if not full:
                full = relevant(data) if interest is None else classify(data, interest, routes)


class Interest(NamedTuple):
    """What the daemon cares about, for the event filter (classify)."""

    slots: frozenset  # (table, dst, prefixlen) of its peers' routes: routes of others there are claims or conflicts
    prefixlens: frozenset  # (family, prefixlen) of those slots: a cheap first test
    tables: frozenset  # tables it owns whole (return paths'): any route change there
    devices: frozenset  # ifindexes of its return paths' devices: their routes (gateways) and addresses
    links: frozenset  # link names it watches (its interfaces, return paths' devices)
    indexes: frozenset  # the ifindexes those names have now
    names: Mapping  # ifindex -> name, to name a route's device
    # A return path names a netifd network, whose device netifd may change at any
    # time: then any link or address event, and any route but a routing daemon's
    # (quiet: the yield_to protocols), may be netifd at work, and is read again.
    netifd: bool = False
    quiet: frozenset = frozenset()


class RouteEvent(NamedTuple):
    """A route of another protocol that appeared (or changed) or went, in a slot of interest."""

    deleted: bool
    slot: tuple
    unicast: bool  # False: unreachable, blackhole, ... (Babel's for a lost prefix): no claim
    route: Foreign


class Changes(NamedTuple):
    full: bool  # the kernel must be read again: something the events do not tell in full changed
    routes: list  # RouteEvent, in order, when not full

    def __bool__(self) -> bool:
        return self.full or bool(self.routes)


def classify(data: bytes, interest: Interest, routes: list) -> bool:
    """Sort a batch of rtnetlink messages. True: something that needs a full re-read
    (a route or rule of ours deleted, a route in a table of ours or on a return path's
    device, a watched link, an address of a return path's device, a batch that does
    not parse). Routes of others in a slot of interest are appended to routes, to be
    applied to the view without a dump (a claim for one peer costs no read of every
    table). Everything else (a routing daemon's churn in unrelated prefixes, other
    links, others' rules, our own additions echoed) is dropped."""
    try:
        for off, length, mtype, _flags, _seq in messages(data):
            body, end = off + NLMSG.size, off + length
            if mtype == RTM_NEWROUTE or mtype == RTM_DELROUTE:
                if length < NLMSG.size + RTMSG.size:
                    return True
                proto = data[body + 5]
                if proto == RTPROT_WGAGENT:
                    if mtype == RTM_DELROUTE:
                        return True
                    continue  # our own addition
                if interest.netifd and proto not in interest.quiet:
                    return True
                if (data[body], data[body + 1]) not in interest.prefixlens and not interest.tables \
                        and not interest.devices:
                    continue  # cannot be in a slot of interest (family, prefix length): not even decoded
                rtype, family, table, dst, plen, oif, metric, gateway, proto = rtnl_routes.decode_any(data, body, end)
                if table in interest.tables or oif in interest.devices:
                    return True
                slot = (table, dst, plen)
                if slot in interest.slots:
                    routes.append(RouteEvent(mtype == RTM_DELROUTE, slot, rtype == RTN_UNICAST,
                                             Foreign(proto, metric, gateway, interest.names.get(oif, f"if{oif}"))))
            elif mtype == RTM_DELRULE:
                if rtnl_rules.protocol(data, body, end) == RTPROT_WGAGENT:
                    return True
            elif mtype == RTM_NEWLINK or mtype == RTM_DELLINK:
                if length < NLMSG.size + IFINFOMSG.size:
                    return True
                index = IFINFOMSG.unpack_from(data, body)[2]
                if index in interest.indexes or interest.netifd:
                    return True
                name = attrs(data, body + IFINFOMSG.size, end).get(IFLA_IFNAME)
                if name is not None and text(name) in interest.links:
                    return True
            elif mtype == RTM_NEWADDR or mtype == RTM_DELADDR:
                if length < NLMSG.size + IFADDRMSG.size:
                    return True
                if IFADDRMSG.unpack_from(data, body)[4] in interest.devices or interest.netifd:
                    return True
    except (Malformed, struct.error, ValueError):
        return True
    return False


def relevant(data: bytes) -> bool:
    """Does a batch of rtnetlink messages hold a change that is not our own echo?
    Our own additions (RTM_NEWROUTE/NEWRULE with our protocol) are not news. A batch
    that does not parse is taken for a change: the resync then reads the truth."""
    try:
        for off, length, mtype, _flags, _seq in messages(data):
            body = off + NLMSG.size
            if mtype == RTM_NEWROUTE:
                # struct rtmsg: family, dst_len, src_len, tos, table, protocol, ...
                if length < NLMSG.size + 6 or data[body + 5] != RTPROT_WGAGENT:
                    return True
            elif mtype == RTM_NEWRULE:
                if rtnl_rules.protocol(data, body, off + length) != RTPROT_WGAGENT:
                    return True
            elif mtype in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_DELROUTE, RTM_DELRULE):
                return True
    except Malformed:
        return True
    return False

