#!/usr/bin/env python3
"""Many sites: three routers, BIRD 2 carrying the phone between them (README "Many sites").

The source write-up's network: op1, op2 and op3 joined pairwise by point-to-point
WireGuard site tunnels (AllowedIPs 0.0.0.0/0, ::/0; IPv6 link-local addresses for
Babel), each router's wg0 serving the same pool with the same key and peer list, a
host on each LAN, and no static route for the pool anywhere. BIRD 2 runs in each
router's namespace with the shipped examples/bird-babel.conf (its PID kept, ended on
exit); wgagent runs on each router (poll 1 s, metric 1, idle_timeout 20 s).

        op1 ═══ op2 ═══ op3          h1, h2, h3 on the LANs 192.168.35-37.0/24, fd35-37::/64
         ╚═══════════════╝           the phone 10.0.31.5, fd31::5 on the "internet"

The phone moves op1 -> op2 -> op3 -> op1 while every host pings it (IPv4 and IPv6,
every 0.1 s). For each move the demo prints when each router routed the phone the
right way again (its own wgagent route, or BIRD's route towards the new site), when
each host had answers again, and the routers' routes for the phone.

Run as root: `make demo-mesh`. Everything lives in namespaces and is removed at the
end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.daemonctl import wait_for  # noqa: E402
from tests.lab import Lab, kernel_wireguard_available, missing_requirements  # noqa: E402
from tests.mesh import SITES, Mesh, Pings, RouteWatch, lan4, missing_bird  # noqa: E402

from show import DIM, END, RED, result, run, step  # noqa: E402

POLL, IDLE = 1.0, 20


def show_routes(mesh: Mesh):
    for i in SITES:
        print(f"   op{i}:")
        for line in mesh.routes_for_phone(i):
            print(f"      {line}")


def main() -> int:
    why = missing_requirements("uapi") or missing_bird()
    if why:
        print(f"demo-mesh needs: {why}", file=sys.stderr)
        return 2
    backend = "kernel" if kernel_wireguard_available() else "uapi"
    failures = []
    with Lab("dm") as lab:
        step(f"Building three sites (WireGuard: {'kernel' if backend == 'kernel' else 'wireguard-go'}; "
             "BIRD 2 with examples/bird-babel.conf on each router)")
        mesh = Mesh(lab, backend)
        for i, b in mesh.birds.items():
            print(f"   op{i}: bird pid {b.proc.pid}, control socket {b.ctl}")
        t = time.monotonic()
        wait_for(lambda: all(mesh.host[i].ping(f"{lan4(j)}.10") for i in SITES for j in SITES if i != j), 60,
                 what="Babel carrying the LANs")
        print(f"   Babel carries the three LANs after {time.monotonic() - t:.1f} s (no static route anywhere)")
        mesh.start_agents(POLL, IDLE)
        print(f"   wgagent on op1, op2, op3: poll {POLL:g} s, metric 1, idle_timeout {IDLE} s")
        watch = RouteWatch(mesh)
        pings = Pings(mesh)
        print("   h1, h2, h3 ping the phone every 0.1 s, IPv4 and IPv6")
        route = [1, 2, 3, 1]
        said: set[str] = set()  # peer_moved lines shown
        for n, to in enumerate(route):
            step(f"The phone connects to op{to}" + (f" (it was at op{route[n - 1]})" if n else ""))
            t0 = time.time()
            mesh.connect(to)
            time.sleep(POLL + 2)
            for i in SITES:
                when = watch.settled(i, to, t0)
                role = "new" if i == to else "old" if n and i == route[n - 1] else "third"
                text = f"{when - t0:5.2f} s" if when is not None else f"{RED}not yet{END}"
                print(f"   op{i} ({role:>5}) routes the phone right after {text}")
                if when is None:
                    failures.append(f"op{i} after the move to op{to}")
            for (i, fam) in sorted(pings.files):
                first = pings.answered_since((i, fam), t0)
                text = f"{first - t0:5.2f} s" if first is not None else f"{RED}no answer{END}"
                print(f"   h{i} reaches the phone over IPv{fam} again after {text}")
                if first is None:
                    failures.append(f"h{i} IPv{fam} after the move to op{to}")
            print("   routes for the phone:")
            show_routes(mesh)
            for i in SITES:
                for line in mesh.agents[i].events("peer_moved"):
                    if line not in said:
                        said.add(line)
                        print(f"   {DIM}[wgagent@op{i}] {line.split(' ', 1)[1].strip()}{END}")
        loops = pings.loops()
        if loops:
            failures.append(f"routing loop: {loops[0]}")
        step("wgagent status on op3 (the phone left it for op1)")
        print("\n".join("   " + line for line in mesh.agents[3].run_cli("status", check=True).stdout.splitlines()))
        step("Stopping wgagent everywhere (SIGTERM removes its routes; BIRD withdraws the phone)")
        for a in mesh.agents.values():
            a.stop()
        wait_for(lambda: not any(mesh.bird_routes(i) for i in SITES), 15, what="BIRD withdrawing the phone")
        show_routes(mesh)
    return result("every site reached the phone after every move", failures)


if __name__ == "__main__":
    run(main)
