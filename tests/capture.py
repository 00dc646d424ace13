#!/usr/bin/env python3
"""Records the real captures the fuzz tests mutate: tests/data/captures.json.

Run as root (`python3 -m tests.capture`): in a hub of 40 peers (tests/hub.py:
wireguard-go behind the UAPI proxy, routes and rules of others, wgagent's own
routes and rules after one pass), whole datagrams as the kernel sends them:
the answers to link, address, route and rule dumps; the multicast events of
routes, rules, links and addresses changing; and wireguard-go's UAPI answer.
Generic netlink (kernel WireGuard) cannot be recorded here (no module on this
kernel): the fuzz tests build those messages (tests/test_genl_parse.py's encoder,
checked against pyroute2's decoder).
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.hub import Hub  # noqa: E402
from tests.lab import Lab  # noqa: E402

OUT = os.path.join(HERE, "data", "captures.json")

# Runs in the hub: each dump request sent raw, every datagram of its answer kept;
# then the events of a few changes made while subscribed.
RECORD = r"""
import json, socket, struct, subprocess, sys, time
from wgagent import netlink as nl
from wgagent.rtnl import GROUPS, NETLINK_ADD_MEMBERSHIP
from wgagent.rtnl_links import ADDR_DUMP, LINK_DUMP, RTM_GETADDR, RTM_GETLINK
from wgagent.rtnl_routes import RTM_GETROUTE, RTMSG
from wgagent.rtnl_rules import RTM_GETRULE, RULE_DUMPS


def dump(mtype, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.bind((0, 0))
    s.sendall(nl.message(mtype, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1, body))
    out = []
    while True:
        data = s.recv(1 << 16)
        out.append(data.hex())
        if any(t == nl.NLMSG_DONE for _, _, t, _, _ in nl.messages(data)):
            return out


out = {"links": dump(RTM_GETLINK, LINK_DUMP), "addresses": dump(RTM_GETADDR, ADDR_DUMP),
       "routes": dump(RTM_GETROUTE, RTMSG.pack(2, 0, 0, 0, 0, 0, 0, 0, 0)) +
       dump(RTM_GETROUTE, RTMSG.pack(10, 0, 0, 0, 0, 0, 0, 0, 0)),
       "rules": dump(RTM_GETRULE, RULE_DUMPS[0]) + dump(RTM_GETRULE, RULE_DUMPS[1])}
ev = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
ev.bind((0, 0))
for group in GROUPS:
    ev.setsockopt(nl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
for cmd in (["ip", "route", "add", "198.19.1.0/24", "dev", "lan0", "proto", "static"],
            ["ip", "route", "add", "198.19.2.0/24", "dev", "lan0", "proto", "152"],
            ["ip", "route", "del", "198.19.1.0/24", "dev", "lan0"],
            ["ip", "rule", "add", "pref", "7000", "from", "198.19.3.0/24", "lookup", "100", "proto", "152"],
            ["ip", "rule", "add", "pref", "7001", "from", "198.19.4.0/24", "lookup", "100"],
            ["ip", "addr", "add", "198.19.5.1/24", "dev", "lan0"],
            ["ip", "link", "add", "capx", "type", "bridge"], ["ip", "link", "del", "capx"]):
    subprocess.run(cmd, check=True)
time.sleep(0.2)
out["events"] = []
while True:
    try:
        out["events"].append(ev.recv(1 << 16).hex())
    except BlockingIOError:
        break
print(json.dumps(out))
"""

UAPI = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect('/run/wireguard/wg0.sock')\n"
        "s.sendall(b'get=1\\n\\n'); d = b''\n"
        "while not d.endswith(b'\\n\\n'): d += s.recv(65536)\n"
        "sys.stdout.write(d.decode())")


def main() -> int:
    with Lab("c") as lab:
        hub = Hub(lab, n=40)
        hub.set_up(range(0, 40, 3), endpoints={3: "203.0.113.9:51820", 9: "[2001:db8::9]:4500"})
        agent = hub.start(hub.agent("capture"))
        hub.converge(30)
        r = hub.ns.run(sys.executable, "-c", RECORD)
        captures = json.loads(r.stdout)
        captures["uapi"] = hub.ns.run(sys.executable, "-c", UAPI).stdout
        agent.stop()
        hub.close()
    captures["about"] = __doc__.strip().splitlines()[0] + " See tests/capture.py."
    with open(OUT, "w") as f:
        json.dump(captures, f, indent=0, sort_keys=True)
        f.write("\n")
    print(f"{OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(captures.items()) if isinstance(v, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
