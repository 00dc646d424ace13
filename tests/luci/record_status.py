#!/usr/bin/env python3
"""Record the `status` answers the LuCI tests and the screenshot use: scenario S1
(demo/s1_roaming.py's network) after the phone moved from op1 to op2, read with
`wgagent status --json` in each router's namespace while its daemon runs.

    inet bridge 203.0.113.0/24 ── op1 (.1)  wg0 :51820, wg_s2s 10.0.32.1
                                 op2 (.2)  wg0 :51820, wg_s2s 10.0.32.2, return path 'wan'
                                 phone (.100) wgc 10.0.31.5: first op1, then op2

Each router runs wgagent with S1's firewall config (tests/data/s1_op*.wgagent, its
zone 'wg0' renamed 'pool': the interface section is 'wg0') and
the rpcd double (tests/ubus_double) as its ubus, so the answer's firewall part is
what the daemon wrote; op2 also has a peer 'laptop' that never connects and the
return path of README's P2 example (its default route goes through wg_s2s).

The data contract of issue 14 adds two things that `wgagent status --json` does
not have yet (the ubus object adds them): each peer's "state" and the top-level
"daemon". They are added here the way the contract defines them: "state" from up
and reason (up, idle, else down; this network has no "moved" peer), "daemon" from
the daemon process (running, its pid, the time of the read). Re-record from `ubus
call wgagent status` once the object exists.

It also writes each router's config (wgagent_s1_op*, less its ubus_socket) and the
double's `uci get` answer for it (uci_get_s1_op*.json): what the settings page
loads there.

Run as root: python3 tests/luci/record_status.py [OUTDIR]  (default tests/data/luci)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from tests.daemonctl import Agent, wait_for  # noqa: E402
from tests.lab import Lab, genkey, missing_requirements  # noqa: E402

PHONE = "10.0.31.5"
POOL = "10.0.31.0/24"
UBUS_CLI = os.path.join(ROOT, "tests", "ubus_double", "bin", "ubus")


def contract(status: dict, pid: int) -> dict:
    """What the ubus object adds to `wgagent status --json` (see the docstring)."""
    for iface in status["interfaces"]:
        for p in iface["peers"]:
            p["state"] = "up" if p["up"] else "idle" if p["reason"] == "idle" else "down"
    status["daemon"] = {"running": True, "pid": pid, "updated": int(time.time())}
    return status


def uci_get(confdir: str, name: str) -> dict:
    """`ubus call uci get {"config": name}` as the rpcd double answers it."""
    from tests.ubus_double.rpcd import RpcdUci
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return RpcdUci(confdir, tmp).call("get", {"config": name})


def main(outdir: str) -> int:
    why = missing_requirements("uapi")
    if why:
        print(f"needs: {why}", file=sys.stderr)
        return 2
    with Lab("rec") as lab:
        inet = lab.netns("inet")
        inet.ip("link", "add", "sw", "type", "bridge")
        inet.ip("link", "set", "sw", "up")
        op1, op2, phone = lab.netns("op1"), lab.netns("op2"), lab.netns("phone")
        for ns, addr in ((op1, "203.0.113.1/24"), (op2, "203.0.113.2/24"), (phone, "203.0.113.100/24")):
            lab.link(ns, "wan", inet, f"p-{ns.short}", [addr])
            inet.ip("link", "set", f"p-{ns.short}", "master", "sw")
        s2s1, s2s2, pool_key, phone_key, laptop_key = genkey(), genkey(), genkey(), genkey(), genkey()
        op1.add_wireguard("wg_s2s", "uapi", s2s1[0], 51830, ["10.0.32.1/30"])
        op2.add_wireguard("wg_s2s", "uapi", s2s2[0], 51830, ["10.0.32.2/30"])
        op1.wg_peer("wg_s2s", s2s2[1], ["10.0.32.2/32", POOL], "203.0.113.2:51830", 5)
        op2.wg_peer("wg_s2s", s2s1[1], ["10.0.32.1/32", POOL], "203.0.113.1:51830", 5)
        for router, addr in ((op1, "10.0.31.1/32"), (op2, "10.0.31.2/32")):
            router.ip("route", "add", POOL, "dev", "wg_s2s")
            router.add_wireguard("wg0", "uapi", pool_key[0], 51820, [addr])
            router.wg_peer("wg0", phone_key[1], [PHONE + "/32"])
        op2.wg_peer("wg0", laptop_key[1], ["10.0.31.6/32"])
        op2.ip("route", "add", "default", "dev", "wg_s2s")  # op2 reaches the internet through op1
        phone.add_wireguard("wgc", "uapi", phone_key[0], None, [PHONE + "/32"])
        phone.ip("route", "add", POOL, "dev", "wgc")

        def connect_phone(router_addr: str):
            phone.run("wg", "set", "wgc", "peer", pool_key[1], "remove")
            phone.wg_peer("wgc", pool_key[1], [POOL], f"{router_addr}:51820", keepalive=1)

        agents, servers, configs = {}, [], {}
        for router, n in ((op1, 1), (op2, 2)):
            confdir = os.path.join(lab.tmp, f"{router.short}-config")
            os.makedirs(confdir)
            with open(os.path.join(ROOT, "tests", "data", "firewall.base")) as f, \
                    open(os.path.join(confdir, "firewall"), "w") as out:
                out.write(f.read())
            sock = os.path.join(lab.tmp, f"{router.short}-ubus.sock")
            server = subprocess.Popen([sys.executable, "-m", "tests.ubus_double.server", sock, confdir,
                                       "--savedir", os.path.join(lab.tmp, f"{router.short}-delta")],
                                      cwd=ROOT, stdout=subprocess.PIPE, text=True)
            lab.procs.append(server)  # ended by its pid when the lab closes
            servers.append(server)
            assert server.stdout.readline().strip() == "ready"
            conf = (f"config agent 'main'\n\toption poll_interval '0.5'\n\toption ubus_socket '{sock}'\n\n"
                    "config interface 'wg0'\n\toption idle_timeout '3'\n\n"
                    f"config peer 'phone'\n\toption interface 'wg0'\n\toption public_key '{phone_key[1]}'\n"
                    "\toption description 'phone'\n\n")
            if n == 2:
                conf += (f"config peer 'laptop'\n\toption interface 'wg0'\n\toption public_key '{laptop_key[1]}'\n"
                         "\toption description 'laptop'\n\n"
                         "config return_path 'wan'\n\toption device 'wan'\n\toption table '100'\n"
                         "\tlist gateway '203.0.113.254'\n\n")
            # UCI section names are one namespace across types: S1's zone 'wg0' and
            # the interface section 'wg0' cannot share a file, so the zone is 'pool'
            with open(os.path.join(ROOT, "tests", "data", f"s1_op{n}.wgagent")) as f:
                conf += f.read().replace("config zone 'wg0'", "config zone 'pool'")
            env = {"WGAGENT_UBUS_CLI": UBUS_CLI, "PYTHONPATH": ROOT}
            agents[router.short] = Agent(lab, router, conf).start(env=env)
            configs[router.short] = conf.replace(f"\toption ubus_socket '{sock}'\n", "")
        env = dict(os.environ, WGAGENT_UBUS_CLI=UBUS_CLI, PYTHONPATH=ROOT)

        connect_phone("203.0.113.1")
        wait_for(lambda: PHONE in op1.ip("route", "show", "proto", "152"), 30, what="op1's host route")
        connect_phone("203.0.113.2")
        wait_for(lambda: PHONE in op2.ip("route", "show", "proto", "152"), 30, what="op2's host route")
        wait_for(lambda: PHONE not in op1.ip("route", "show", "proto", "152"), 30, what="op1 letting go")
        for a in agents.values():
            wait_for(lambda: a.events("firewall_committed"), 30, what="the firewall written")
        time.sleep(1)

        os.makedirs(outdir, exist_ok=True)
        for short, agent in agents.items():
            r = subprocess.run(agent.ns.argv(sys.executable, "-m", "wgagent", "status", "--json",
                                             "--config", agent.config),
                               capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            status = contract(json.loads(r.stdout), agent.proc.pid)
            path = os.path.join(outdir, f"status_s1_{short}.json")
            with open(path, "w") as f:
                json.dump(status, f, indent=2)
                f.write("\n")
            print(path)
            # the config it ran with (less its socket), and rpcd's `uci get` of it:
            # what the settings page loads on that router
            path = os.path.join(outdir, f"wgagent_s1_{short}")
            with open(path, "w") as f:
                f.write(configs[short])
            print(path)
            path = os.path.join(outdir, f"uci_get_s1_{short}.json")
            with open(path, "w") as f:
                json.dump(uci_get(outdir, f"wgagent_s1_{short}"), f, indent=2)
                f.write("\n")
            print(path)
        for a in agents.values():
            a.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data", "luci")))
