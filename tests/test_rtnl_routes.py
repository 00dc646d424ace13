"""The batched route writer and the route dump decoder."""

import errno
import json
import socket
import struct
import sys
import textwrap

import pytest

from wgagent import netlink as nl
from wgagent import rtnl_routes as rr
from wgagent.model import RTPROT_WGAGENT, Route


def test_encode_add_request_layout():
    msg = rr.encode(rr.RTM_NEWROUTE, Route(1000, "10.0.31.5", 32, "wg0", 7, "10.0.31.1"), 9, seq=42)
    length, mtype, flags, seq, _ = nl.NLMSG.unpack_from(msg)
    assert (length, mtype, seq) == (len(msg), rr.RTM_NEWROUTE, 42)
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL  # never replace
    family, dst_len, _, _, table, proto, scope, rtype, _ = rr.RTMSG.unpack_from(msg, 16)
    assert (family, dst_len, table, proto, scope, rtype) == (socket.AF_INET, 32, 0, RTPROT_WGAGENT, 0, 1)
    attrs = nl.attrs(msg, 16 + rr.RTMSG.size, len(msg))
    assert attrs[rr.RTA_DST] == socket.inet_aton("10.0.31.5")
    assert attrs[rr.RTA_GATEWAY] == socket.inet_aton("10.0.31.1")
    assert struct.unpack("=I", attrs[rr.RTA_OIF])[0] == 9
    assert struct.unpack("=I", attrs[rr.RTA_PRIORITY])[0] == 7
    assert struct.unpack("=I", attrs[rr.RTA_TABLE])[0] == 1000


def test_encode_delete_of_a_v6_device_route():
    msg = rr.encode(rr.RTM_DELROUTE, Route(254, "fd31::5", 128, "wg0", 1024), 0, seq=1)
    _, mtype, flags, _, _ = nl.NLMSG.unpack_from(msg)
    assert mtype == rr.RTM_DELROUTE and flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    family, dst_len, _, _, table, _, scope, _, _ = rr.RTMSG.unpack_from(msg, 16)
    assert (family, dst_len, table, scope) == (socket.AF_INET6, 128, 254, rr.RT_SCOPE_NOWHERE)
    attrs = nl.attrs(msg, 16 + rr.RTMSG.size, len(msg))
    assert rr.RTA_OIF not in attrs and rr.RTA_GATEWAY not in attrs  # device gone: match without it


SCRIPT = textwrap.dedent("""
    import json, sys
    from wgagent.rtnl import Rtnl
    from wgagent.model import Route
    r = Rtnl()
    links = r.links()
    idx = links["d0"].index
    names = {l.index: n for n, l in links.items()}
    routes = [Route(254 if i % 2 else 1000, f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 32, "d0", 0)
              for i in range(1, 1500)]
    routes.append(Route(254, "fd31::5", 128, "d0", 1024))
    first = r.apply_routes([("add", x, idx) for x in routes])
    again = r.apply_routes([("add", routes[0], idx), ("add", Route(254, "10.9.9.9", 32, "d0", 0), idx)])
    dump = r.routes(names)
    gone = r.apply_routes([("delete", x, idx) for x in routes] + [("delete", routes[0], idx)])
    after = r.routes(names)
    print(json.dumps({
        "first": [e for e in first if e], "again": again,
        "owned": len(dump.owned), "same": set(dump.owned) == set(routes),
        "foreign": [list(k) for k in dump.foreign if k[1] == "10.9.9.9"], "gateways": list(dump.gateways.items()),
        "gone": gone[-2:], "left": len(after.owned),
    }, default=str))
""")


@pytest.mark.root
def test_batches_acks_and_dump_in_a_namespace(lab):
    ns = lab.netns("rt")
    ns.ip("link", "add", "d0", "type", "bridge")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "d0")
    ns.ip("link", "set", "d0", "up")
    ns.ip("route", "add", "10.9.9.9/32", "dev", "d0", "proto", "static")  # somebody else's, same slot
    ns.ip("route", "add", "default", "via", "192.0.2.254", "dev", "d0", "metric", "10")
    out = json.loads(ns.run(sys.executable, "-c", SCRIPT).stdout)
    assert out["first"] == []  # 1,500 requests over three datagrams, every one acknowledged
    # each request gets its own answer: one already there, one refused by a foreign route
    # holding the same key (never replaced)
    assert out["again"] == [errno.EEXIST, errno.EEXIST]
    assert out["owned"] == 1500 and out["same"]
    assert out["foreign"] == [[254, "10.9.9.9", 32]]
    assert out["gateways"] == [[["d0", 2], "192.0.2.254"]]
    assert out["gone"] == [0, errno.ESRCH] and out["left"] == 0  # the second delete: already gone
    assert "10.9.9.9 dev d0 proto static scope link" in ns.ip("route", "show")
