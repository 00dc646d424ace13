"""The daemon outliving faults, end to end in namespaces with real WireGuard.

    phone (p1) ── veth ── router (r): wg0 10.0.31.1/24 + wgagent
    10.0.31.5             (wgx: a dummy link whose "UAPI socket" answers garbage)

- the rtnetlink socket fails at each of its calls in turn, inside one pass;
- the WireGuard interface is deleted and re-created while the daemon polls it;
- a UAPI socket answers garbage (a number too large for a float);
- `run --once` is one whole pass: routes, rules and the firewall (the rpcd double).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from .daemonctl import Agent, owned_prefixes, wait_for
from .test_routes_netns import POLL, Site
from .uapi_server import UapiServer

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "ubus_double", "bin")


@pytest.fixture
def site(lab, backend):
    return Site(lab, backend)


# A pass of the real daemon in the router's namespace, its rtnetlink socket wrapped
# so that its k-th send or receive fails. Each k gets a fresh daemon and an empty
# route table (so the pass has routes and rules to add); after the failed pass, a
# second pass must converge. Prints one JSON line per k.
SCRIPTED = r"""
import errno, json, os, subprocess, sys
from wgagent import config, log
from wgagent.daemon import Daemon
from wgagent.rtnl import Rtnl
from wgagent.wgsource import PeerSources

CALLS = {"send", "sendall", "sendmsg", "recv", "recv_into", "recvmsg", "recvmsg_into"}


class Scripted:
    def __init__(self, sock, fail_at, code):
        self._sock, self.fail_at, self.code, self.calls = sock, fail_at, code, 0

    def __getattr__(self, name):
        attr = getattr(self._sock, name)
        if name not in CALLS:
            return attr

        def call(*a, **kw):
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(self.code, os.strerror(self.code))
            return attr(*a, **kw)
        return call


def flush():
    for fam in ("-4", "-6"):
        subprocess.run(["ip", fam, "route", "flush", "proto", "152", "table", "all"], capture_output=True)
        subprocess.run(["ip", fam, "rule", "flush", "proto", "152"], capture_output=True)


def owned():
    out = subprocess.run(["ip", "-4", "route", "show", "proto", "152", "table", "all"], capture_output=True,
                         text=True).stdout.split("\n")
    rules = subprocess.run(["ip", "-4", "rule", "show"], capture_output=True, text=True).stdout.split("\n")
    return sorted(l.split()[0] for l in out if l.strip()), sum("proto 152" in l or "lookup 100" in l for l in rules)


log.setup("warning", "stderr")
cfg = config.load(sys.argv[1])
code = getattr(errno, sys.argv[2])
k, total = 1, None
while total is None or k <= total:
    flush()
    rtnl, sources = Rtnl(), PeerSources()
    scripted = rtnl.sock.sock = Scripted(rtnl.sock.sock, k if total is not None else 0, code)
    d = Daemon(cfg, rtnl, sources)
    first = d.reconcile()
    if total is None:  # the clean pass: how many calls a pass makes
        total, want = scripted.calls, owned()
        print(json.dumps({"calls": total, "want": want}), flush=True)
        continue
    second = d.reconcile()
    print(json.dumps({"k": k, "first": int(first), "second": int(second), "got": owned(), "want": want}), flush=True)
    sources.close()
    rtnl.close()
    k += 1
"""


@pytest.mark.parametrize("code", ["EINTR", "ENOBUFS", "ETIMEDOUT"])
def test_the_rtnetlink_socket_failing_at_each_call_in_turn(site, code):
    site.phone("p1", "10.0.31.5")
    site.handshake("p1")
    conf = os.path.join(site.lab.tmp, "scripted.wgagent")
    with open(conf, "w") as f:
        f.write(site.config("option source_table '100'\n"))
    r = site.r.run(sys.executable, "-c", SCRIPTED, conf, code, check=False, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    head, runs = lines[0], lines[1:]
    assert head["calls"] >= 6 and head["want"][0] == ["10.0.31.5"] and head["want"][1] >= 2, head
    assert len(runs) == head["calls"], "every call site of a pass failed once"
    for run in runs:
        # a failed dump or batch skips the pass (0, Pass.FAILED); a failed single rule
        # request is that change refused (2, Pass.REFUSED), retried by the next pass
        assert run["first"] in (0, 2), f"call {run['k']} failed: the pass says so"
        assert run["second"] == 1 and run["got"] == run["want"], \
            f"call {run['k']}: the next pass converges: {run}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr


def test_the_interface_deleted_and_recreated_while_polled(site):
    """Deleted mid-read as often as the timing allows: 20 times, the daemon polling
    every 50 ms. It never dies, and the route follows the interface."""
    site.phone("p1", "10.0.31.5", keepalive=1)
    _, pub, allowed, _ = site.phones["p1"]
    agent = Agent(site.lab, site.r, site.config().replace(f"'{POLL}'", "'0.05'")).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route")
    for i in range(20):
        if site.backend == "kernel":
            site.r.ip("link", "del", "wg0")
        else:
            wgproc = next(p for p in site.lab.procs if "wireguard-go" in p.args and "wg0" in p.args
                          and p.poll() is None)
            site.lab.stop(wgproc)
        time.sleep(0.01 * (i % 5))
        site.r.add_wireguard("wg0", site.backend, site.keys["wg0"][0], 51820, ["10.0.31.1/24"])
        site.r.wg_peer("wg0", pub, allowed)
        assert agent.proc.poll() is None, agent.log()[-3000:]
    ns = site.phones["p1"][0]
    ns.wg_remove_peer("wgc", site.keys["wg0"][1])
    ns.wg_peer("wgc", site.keys["wg0"][1], ["10.0.31.0/24"], endpoint="192.0.2.1:51820", keepalive=1)
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route back on the last interface")
    assert agent.proc.poll() is None and "event=crashed" not in agent.log()
    # said once per change of its error (gone, not yet WireGuard, back), not per poll
    assert len(agent.events("interface_unavailable")) <= 3 * 20


HUGE = ("public_key=" + "ab" * 32 + "\nlast_handshake_time_sec=" + "9" * 400 +
        "\nlast_handshake_time_nsec=0\nrx_bytes=1\ntx_bytes=1\npersistent_keepalive_interval=0\n"
        "allowed_ip=10.0.51.5/32\nerrno=0\n\n").encode()


@pytest.mark.parametrize("answer", [HUGE, b"\xff\xfe garbage\n\n", HUGE[:100]],
                         ids=["number-too-large-for-a-float", "garbage", "truncated"])
def test_a_uapi_socket_answering_garbage_is_an_unreadable_interface(site, answer):
    site.phone("p1", "10.0.31.5")
    site.r.ip("link", "add", "wgx", "type", "bridge")
    site.r.ip("link", "set", "wgx", "up")
    bad = UapiServer(site.r.rundir, answer, name="wgx")
    try:
        agent = Agent(site.lab, site.r, site.config(interfaces=("wg0", "wgx"))).start()
        wait_for(lambda: "iface=wgx" in " ".join(agent.events("interface_unavailable")), 5,
                 what="wgx reported unreadable")
        site.handshake("p1")
        wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="wg0's routes unaffected")
        time.sleep(3 * POLL)
        assert agent.proc.poll() is None and "event=crashed" not in agent.log()
        assert len([e for e in agent.events("interface_unavailable") if "iface=wgx" in e]) == 1
    finally:
        bad.close()


# --- run --once: one whole pass


def test_once_writes_the_firewall_too_and_exits_with_the_pass_status(site, tmp_path):
    site.phone("p1", "10.0.31.5")
    site.handshake("p1")
    confdir = tmp_path / "config"
    confdir.mkdir()
    with open(os.path.join(HERE, "data", "firewall.base")) as f:
        (confdir / "firewall").write_text(f.read())
    sock = str(tmp_path / "ubus.sock")
    server = subprocess.Popen([sys.executable, "-m", "tests.ubus_double.server", sock, str(confdir),
                               "--savedir", str(tmp_path / "delta")], cwd=os.path.dirname(HERE),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        conf = site.config(agent=f"option ubus_socket '{sock}'\n") + \
            "\nconfig zone 'phones'\n\toption network 'wg0'\n\tlist forward_to 'lan'\n"
        agent = Agent(site.lab, site.r, conf)
        env = dict(os.environ, WGAGENT_UBUS_CLI=os.path.join(BIN, "ubus"), PYTHONPATH=os.path.dirname(HERE))
        once = [sys.executable, "-m", "wgagent", "run", "--once", "--log", "stderr", "--config", agent.config]
        r = subprocess.run(site.r.argv(*once), capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert owned_prefixes(site.r) == {"10.0.31.5"}
        text = (confdir / "firewall").read_text()
        assert "wgagent_zone_phones" in text and "wgagent_fwd_phones_to_lan" in text, r.stderr
        assert "event=firewall_committed" in r.stderr
        # the bus goes away: the routes are still done, the pass is not whole: exit 1
        server.terminate()
        server.wait(10)
        (confdir / "firewall").write_text(text.replace("wgagent_fwd_phones_to_lan", "wgagent_gone"))
        r = subprocess.run(site.r.argv(*once), capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 1, r.stderr
        assert owned_prefixes(site.r) == {"10.0.31.5"}
        assert "event=firewall_failed" in r.stderr or "event=firewall_unavailable" in r.stderr
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)
