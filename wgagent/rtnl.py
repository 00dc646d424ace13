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
import os
import socket

from . import rtnl_routes, rtnl_rules
from .model import RTPROT_WGAGENT, Route, Rule
from .netlink import NLMSG, SO_RCVBUFFORCE, SOL_NETLINK, Malformed, NetlinkSocket, messages
from .rtnl_links import ADDR_DUMP, LINK_DUMP, RTM_GETADDR, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, Link, \
    decode_address, decode_link
from .rtnl_routes import RTM_DELROUTE, RTM_NEWROUTE, RouteDump
from .rtnl_rules import RTM_DELRULE, RTM_GETRULE, RTM_NEWRULE, RULE_DUMPS

__all__ = ["Link", "Rtnl", "RtnlEvents", "relevant"]

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

    def add_rule(self, rule: Rule) -> bool:
        return self._rule(RTM_NEWRULE, rule, (errno.EEXIST,))

    def delete_rule(self, rule: Rule) -> bool:
        return self._rule(RTM_DELRULE, rule, (errno.ENOENT, errno.ESRCH))

    def _rule(self, cmd: int, rule: Rule, ignore: tuple[int, ...]) -> bool:
        """One rule request. Errors in `ignore` ("already there", "already gone") give
        False; any other becomes an OSError, which the daemon logs and retries."""
        code = self.sock.transact(lambda r, seq: rtnl_rules.encode(cmd, r, seq), [rule], "rule change")[0]
        if code in ignore:
            return False
        if code:
            raise OSError(code, os.strerror(code))
        return True


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

