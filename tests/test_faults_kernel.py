"""Torn generic netlink dumps under `wg set` churn: kernel WireGuard only (the test VM,
tests/vm/run_vm.py; wireguard-go has no generic netlink family).

    hub namespace (tests/hub.py, backend kernel): wg0 with 1,000 peers; peer 500 is a
    real phone (its own namespace, kernel WireGuard, keepalive 1): the one peer up
    churn (a shell loop in the hub): 20 other peers removed and re-added with `wg set`
    as fast as it goes, so the device changes under every dump of its 1,000 peers
    the daemon's passes, in-process, counting the dump messages that come back with
    NLM_F_DUMP_INTR (each such dump is read again, netlink.py)

A dump merged from a torn read could lose the phone (its route withdrawn) or give
the churned peers what they do not have; neither may happen, and the run ends with
the invariant of tests/hub.py.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

from .hub import SUBSET, Hub, allowed
from .lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.faults]

FULL = os.environ.get("WGAGENT_FAULTS") == "full"
PHONE = 500
CHURNED = [i for i in range(1, 1000, 50) if i != PHONE][:20]

# The daemon's passes, one every 50 ms, until `want` interrupted dump messages were
# seen (and 20 passes made) or time is up; then one JSON line of what it counted.
TORN = r"""
import json, sys, time
from wgagent import config, log, netlink
from wgagent.daemon import Daemon
from wgagent.rtnl import Rtnl
from wgagent.wgsource import PeerSources

seen = {"interrupted": 0}
answers = netlink.NetlinkSocket._answers


def counting(self, seq, what, dump):
    for item in answers(self, seq, what, dump):
        if dump and self.protocol == netlink.NETLINK_GENERIC and item[2] & netlink.NLM_F_DUMP_INTR:
            seen["interrupted"] += 1
        yield item


netlink.NetlinkSocket._answers = counting
cfg = config.load(sys.argv[1])
seconds, want = float(sys.argv[2]), int(sys.argv[3])
log.setup("info", "stderr")
d = Daemon(cfg, Rtnl(), PeerSources())
# the firewall written once, before the passes (as `run --once` does): a thread
# stopped when the passes end could be cut in the middle of a write (under TCG a
# write through the ubus stand-in takes many seconds), leaving changes staged
assert d.firewall_once(), "firewall written"
passes = failed = 0
t0 = time.monotonic()
while time.monotonic() - t0 < seconds and not (seen["interrupted"] >= want and passes >= 20):
    failed += d.reconcile() == 0
    passes += 1
    time.sleep(0.05)
print(json.dumps(dict(seen, passes=passes, failed=failed)), flush=True)
"""


def test_torn_generic_netlink_dumps_under_wg_set_churn(backend, figures):
    if backend != "kernel":
        pytest.skip("torn generic netlink dumps need kernel WireGuard (wireguard-go answers over UAPI): "
                    "run in the VM, tests/vm/run_vm.py")
    with Lab("k") as lab:
        hub = Hub(lab, backend="kernel", phones=(PHONE,))
        keys = {i: base64.b64encode(hub.keys[i]).decode() for i in CHURNED}
        loop = "; ".join(f"wg set wg0 peer {keys[i]} remove; wg set wg0 peer {keys[i]} allowed-ips {allowed(i)[0]}"
                         for i in CHURNED)
        churn = hub.ns.popen("sh", "-c", f"while :; do {loop}; done")
        agent = hub.agent("torn")
        try:
            env = [f"{k}={v}" for k, v in hub.env().items()]
            r = hub.ns.run("env", *env, sys.executable, "-c", TORN, agent.config, str(120 if FULL else 40),
                           str(50 if FULL else 5), timeout=200, check=False)
        finally:
            lab.stop(churn)
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout)
        figures("passes under churn", got["passes"])
        figures("dump messages flagged NLM_F_DUMP_INTR (each dump read again)", got["interrupted"])
        figures("passes that failed (a dump interrupted 5 times in a row: EINTR, pass skipped)", got["failed"])
        # the churn may have stopped between a remove and its add: every peer back
        for i in CHURNED:
            hub.ns.run("wg", "set", "wg0", "peer", keys[i], "allowed-ips", allowed(i)[0])
        log = r.stderr
        assert "Traceback" not in log, log[-3000:]
        assert "peer_down" not in log and "route_removed" not in log and "routes_removed" not in log, \
            "the phone's route was never withdrawn: no dump lost it"
        assert got["interrupted"] > 0, f"no dump was torn in {got['passes']} passes"
        hub.converge(30)  # wait_for stretches it by WGAGENT_TEST_SLOWDOWN
        assert PHONE % SUBSET == 0 and hub.snapshot()["rules"], "the phone's source rule (its peer section)"
        hub.close()
