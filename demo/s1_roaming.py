#!/usr/bin/env python3
"""Scenario S1 (../shared/MISSION.md): two sites, one roaming pool, a phone that moves.

                         "internet" (bridge, 203.0.113.0/24)
            ┌──────────────────────┼───────────────────────┐
     203.0.113.1              203.0.113.100           203.0.113.2
   ┌─────┴─────┐               ┌────┴────┐           ┌─────┴─────┐
   │    op1    │══ wg_s2s ═════│═════════│═══════════│    op2    │
   │ 10.0.32.1 │ 10.0.32.0/30  │  phone  │           │ 10.0.32.2 │
   │ wg0 :51820│◄── first ─────│10.0.31.5│── then ──►│ wg0 :51820│
   └─────┬─────┘               └─────────┘           └─────┬─────┘
   192.168.35.0/24                                   192.168.36.0/24
        h1 .10                                             h2 .10

Both routers serve the same pool 10.0.31.0/24 on wg0 with the same key and peer list
(one phone config works at either site), and route the whole pool over wg_s2s to the
other site (a static covering route). wg0 carries a /32 address so that no connected
/24 hides that covering route. wgagent on each router installs the phone's host route
only while the phone is connected there.

Run as root: `make demo`. Everything lives in namespaces and is removed at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.daemonctl import Agent, wait_for  # noqa: E402
from tests.lab import Lab, genkey, kernel_wireguard_available, missing_requirements  # noqa: E402

from show import DIM, END, GREEN, RED, result, run, step  # noqa: E402

PHONE = "10.0.31.5"
POOL = "10.0.31.0/24"
failures: list[str] = []


def show_routes(routers):
    for r in routers:
        lines = [line for line in r.ip("route", "show").splitlines() if line.startswith(("10.0.31", "192.168"))]
        print(f"   {r.short} routes:")
        for line in lines:
            print(f"      {line}")


def expect_ping(src, dst: str, should: bool, label: str):
    ok = src.ping(dst, count=2, wait=1) or src.ping(dst, count=3, wait=1)
    mark = f"{GREEN}reachable{END}" if ok else f"{RED}unreachable{END}"
    verdict = "as expected" if ok == should else "NOT AS EXPECTED"
    print(f"   ping {src.short} -> {dst}: {mark} ({verdict}) {DIM}{label}{END}", flush=True)
    if ok != should:
        failures.append(f"{src.short} -> {dst} {label}")


class LogTail:
    """Print the daemons' new log lines since the last call."""

    def __init__(self, agents):
        self.agents = agents
        self.seen = {id(a): 0 for a in agents}

    def show(self):
        for a in self.agents:
            lines = a.log().splitlines()
            for line in lines[self.seen[id(a)]:]:
                print(f"   {DIM}[wgagent@{a.ns.short}]{END} {line.split(' ', 1)[1].strip()}")
            self.seen[id(a)] = len(lines)


def main() -> int:
    why = missing_requirements("uapi")
    if why:
        print(f"demo needs: {why}", file=sys.stderr)
        return 2
    backend = "kernel" if kernel_wireguard_available() else "uapi"
    with Lab("demo") as lab:
        step(f"Building the network (WireGuard backend: {'kernel' if backend == 'kernel' else 'wireguard-go'})")
        inet = lab.netns("inet")
        inet.ip("link", "add", "sw", "type", "bridge")
        inet.ip("link", "set", "sw", "up")
        op1, op2, phone = lab.netns("op1"), lab.netns("op2"), lab.netns("phone")
        h1, h2 = lab.netns("h1"), lab.netns("h2")
        for ns, addr in ((op1, "203.0.113.1/24"), (op2, "203.0.113.2/24"), (phone, "203.0.113.100/24")):
            lab.link(ns, "wan", inet, f"p-{ns.short}", [addr])
            inet.ip("link", "set", f"p-{ns.short}", "master", "sw")
        for router, host, n in ((op1, h1, 35), (op2, h2, 36)):
            lab.link(router, "lan", host, "eth0", [f"192.168.{n}.1/24"], [f"192.168.{n}.10/24"])
            host.ip("route", "add", "default", "via", f"192.168.{n}.1")

        s2s1, s2s2, pool_key, phone_key = genkey(), genkey(), genkey(), genkey()
        op1.add_wireguard("wg_s2s", backend, s2s1[0], 51830, ["10.0.32.1/30"])
        op2.add_wireguard("wg_s2s", backend, s2s2[0], 51830, ["10.0.32.2/30"])
        op1.wg_peer("wg_s2s", s2s2[1], ["10.0.32.2/32", "192.168.36.0/24", POOL], "203.0.113.2:51830", 5)
        op2.wg_peer("wg_s2s", s2s1[1], ["10.0.32.1/32", "192.168.35.0/24", POOL], "203.0.113.1:51830", 5)
        for router, own, other, addr in ((op1, 35, 36, "10.0.31.1/32"), (op2, 36, 35, "10.0.31.2/32")):
            router.ip("route", "add", f"192.168.{other}.0/24", "dev", "wg_s2s")
            router.ip("route", "add", POOL, "dev", "wg_s2s")  # the covering route: "the pool is over there"
            router.add_wireguard("wg0", backend, pool_key[0], 51820, [addr])
            router.wg_peer("wg0", phone_key[1], [PHONE + "/32"])
        phone.add_wireguard("wgc", backend, phone_key[0], None, [PHONE + "/32"])
        phone_nets = [POOL, "192.168.35.0/24", "192.168.36.0/24"]

        def connect_phone(router_addr: str):
            # the phone (re)connects: a fresh session to the given site, keepalive 1 s
            phone.run("wg", "set", "wgc", "peer", pool_key[1], "remove")
            phone.wg_peer("wgc", pool_key[1], phone_nets, f"{router_addr}:51820", keepalive=1)

        for net in phone_nets:
            phone.ip("route", "add", net, "dev", "wgc")
        wait_for(lambda: h1.ping("192.168.36.10"), 20, what="the site-to-site tunnel")
        print("   site-to-site tunnel up: h1 192.168.35.10 <-> h2 192.168.36.10")

        step("Today: static routes for every configured peer (netifd's route_allowed_ips '1')")
        for router in (op1, op2):
            router.ip("route", "add", PHONE, "dev", "wg0", "proto", "static")
        connect_phone("203.0.113.1")
        wait_for(lambda: phone.ping("192.168.35.10"), 20, what="the phone's handshake with op1")
        print("   the phone is connected to op1")
        show_routes([op1, op2])
        expect_ping(h1, PHONE, True, "(h1 is behind op1, where the phone is)")
        expect_ping(h2, PHONE, False, "(op2 sends it into its own wg0, where the phone is not)")
        for router in (op1, op2):
            router.ip("route", "del", PHONE, "dev", "wg0", "proto", "static")

        step("With wgagent on both routers (poll 0.5 s, idle_timeout 3 s on wg0)")
        conf = ("config agent 'main'\n\toption poll_interval '0.5'\n\n"
                "config interface 'wg0'\n\toption idle_timeout '3'\n\n"
                f"config peer 'phone'\n\toption interface 'wg0'\n\toption public_key '{phone_key[1]}'\n"
                "\toption description 'phone'\n")
        agents = [Agent(lab, op1, conf).start(), Agent(lab, op2, conf).start()]
        tail = LogTail(agents)
        wait_for(lambda: PHONE in op1.ip("route", "show", "proto", "152"), 10, what="op1's host route")
        time.sleep(1)
        tail.show()
        show_routes([op1, op2])
        expect_ping(h1, PHONE, True, "(op1 holds the host route: the phone is here)")
        expect_ping(h2, PHONE, True, "(op2 has no host route: covering route to op1)")

        step("The phone moves to op2")
        connect_phone("203.0.113.2")
        moved = time.monotonic()
        wait_for(lambda: phone.ping("192.168.36.10"), 20, what="the phone's handshake with op2")
        wait_for(lambda: PHONE in op2.ip("route", "show", "proto", "152"), 10, what="op2's host route")
        wait_for(lambda: PHONE not in op1.ip("route", "show", "proto", "152"), 15, what="op1 letting go")
        print(f"   both routers converged {time.monotonic() - moved:.1f} s after the move")
        tail.show()
        show_routes([op1, op2])
        expect_ping(h2, PHONE, True, "(op2 holds the host route now)")
        expect_ping(h1, PHONE, True, "(op1 has no host route: covering route to op2)")

        step("wgagent status on op2")
        print("\n".join("   " + line for line in agents[1].run_cli("status", check=True).stdout.splitlines()))

        step("Stopping wgagent (SIGTERM removes the routes it owns)")
        for a in agents:
            a.stop()
        tail.show()
        show_routes([op1, op2])
    return result("S1 works before and after the move", failures)


if __name__ == "__main__":
    run(main)
