"""The OpenWrt control surface end to end: a real daemon, real WireGuard handshakes,
the ubus double (its ubusd and rpcd, in the router's namespace as on the router)
running the package's rpcd plugin under busybox sh.

    phone (p1) ── veth ── router (r): wg0 + wgagent ── rundir ──┐
                            │  ubus send, hotplug scripts        │ cat / awk
                            └── double: ubusd ── rpcd ── /usr/libexec/rpcd/wgagent
                                 ^ `ubus listen`, `ubus call wgagent ...` (the CLI stand-in)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from . import rpcd_plugin as rp
from .daemonctl import SLOWDOWN, Agent, owned_prefixes, wait_for
from .test_routes_netns import POLL, Site

pytestmark = [pytest.mark.root, pytest.mark.skipif(rp.busybox() is None, reason="needs busybox (OpenWrt's shell)")]

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def site(lab, backend):
    return Site(lab, backend)


class Router:
    """The router's OpenWrt side: the double (ubusd + rpcd with the plugin) started
    in the router's namespace, a hotplug directory, the run directory."""

    def __init__(self, site, tmp_path, cli=None):
        self.site, self.tmp = site, tmp_path
        self.run_dir = str(tmp_path / "run")
        self.hotplug = tmp_path / "hotplug.d"
        self.hotplug.mkdir()
        confdir = tmp_path / "config"
        confdir.mkdir()
        with open(os.path.join(HERE, "data", "firewall.base")) as f:
            (confdir / "firewall").write_text(f.read())
        self.sock = str(tmp_path / "ubus.sock")
        self.agent = None
        self.config_path = os.path.join(site.lab.tmp, "r-wgagent")  # Agent's path for it
        plugin = rp.plugin_env(str(tmp_path), self.run_dir, self.config_path, wait=10)
        env = dict(os.environ, **{k: v for k, v in plugin.items() if k != "PATH"}, PYTHONPATH=os.path.dirname(HERE))
        self.server = site.r.popen(sys.executable, "-m", "tests.ubus_double.server", self.sock, str(confdir),
                                   "--savedir", str(tmp_path / "delta"), "--plugins", rp.plugin_dir(str(tmp_path)),
                                   "--shell", f"{rp.busybox()} sh", "--exec-timeout", "30",
                                   "--plugin-path", plugin["PATH"],
                                   stdout=subprocess.PIPE, text=True, env=env, cwd=os.path.dirname(HERE))
        assert self.server.stdout.readline().strip() == "ready"
        self.daemon_env = {"WGAGENT_RUN_DIR": self.run_dir, "WGAGENT_HOTPLUG_DIR": str(self.hotplug),
                           "WGAGENT_UBUS_CLI": cli or rp.CLI}

    def start(self, config: str) -> Agent:
        text = config.replace("config agent 'main'\n", f"config agent 'main'\n\toption ubus_socket '{self.sock}'\n"
                              "\toption hotplug_timeout '5'\n", 1)
        self.agent = Agent(self.site.lab, self.site.r, text).start(env=self.daemon_env)
        assert self.agent.config == self.config_path
        return self.agent

    def call(self, method: str, args=None, timeout=60) -> dict:
        return rp.call(self.sock, method, args, timeout=timeout)

    def listen(self, *patterns):
        p = rp.listen(self.sock, *patterns)  # the double in a process of its own: a fixed wait
        self.site.lab.procs.append(p)
        return Heard(p)

    def close(self):
        self.site.lab.stop(self.server)


@pytest.fixture
def router(site, tmp_path):
    r = Router(site, tmp_path)
    yield r
    r.close()


class Heard:
    """What a `ubus listen` printed, line by line as JSON, read by a thread."""

    def __init__(self, p):
        self.p, self.lines, self.taken = p, [], 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

    def take(self, count: int, timeout: float) -> list[dict]:
        wait_for(lambda: len(self.lines) >= self.taken + count, timeout, what=f"{count} more events")
        got = self.lines[self.taken:self.taken + count]
        self.taken += count
        return got


def test_a_peer_change_is_an_event_a_hotplug_run_and_the_status(site, router, tmp_path):
    site.phone("p1", "10.0.31.5", "fd31::5")
    _, pub, _, _ = site.phones["p1"]
    out = tmp_path / "hotplug.out"
    (router.hotplug / "10-record").write_text(
        f'echo "$ACTION|$INTERFACE|$PEER|$DESCRIPTION|$PREFIXES|${{ENDPOINT%:*}}|$REASON" >> {out}\n')
    events = router.listen("wgagent.*")
    agent = router.start(site.config() + f"\nconfig peer 'phone'\n\toption interface 'wg0'\n"
                                          f"\toption public_key '{pub}'\n\toption description 'phone'\n")
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, POLL + 2, what="the phone's routes")
    got = events.take(2, 10)
    peer_event = got[0]["wgagent.peer"]
    assert peer_event["state"] == "up" and peer_event["peer"] == pub and peer_event["description"] == "phone"
    assert peer_event["interface"] == "wg0" and peer_event["reason"] == "handshake"
    assert peer_event["prefixes"] == ["10.0.31.5/32", "fd31::5/128"] and peer_event["endpoint"].startswith("192.0.2.")
    assert got[1] == {"wgagent.route": {"interface": "wg0", "action": "added", "table": "main", "peer": pub,
                                        "prefixes": ["10.0.31.5/32", "fd31::5/128"]}}
    wait_for(lambda: out.exists(), 10, what="the hotplug script's run")
    action, iface, peer, desc, prefixes, endpoint, reason = out.read_text().strip().split("|")
    assert (action, iface, peer, desc, prefixes, reason) == ("peer-up", "wg0", pub, "phone",
                                                             "10.0.31.5/32 fd31::5/128", "handshake")
    assert endpoint.startswith("192.0.2.")

    # written at the first pass after the change that is >= 1 s after the last write
    st = wait_for(lambda: (lambda s: s if s["interfaces"][0]["peers"][0]["state"] == "up" else None)(
        router.call("status")), 5, what="the published status to say up")
    assert st["daemon"]["running"] is True and st["daemon"]["pid"] == agent.proc.pid
    assert abs(st["daemon"]["updated"] - time.time()) < 40  # refreshed at least every 30 s
    [p] = st["interfaces"][0]["peers"]
    assert p["state"] == "up" and p["routes"] == ["10.0.31.5/32", "fd31::5/128"] and p["description"] == "phone"
    assert router.call("peers", {"interface": "wg0"})["peers"] == st["interfaces"][0]["peers"]

    # reconcile: a pass now, answered when done
    assert router.call("reconcile") == {"done": True, "pass": "whole"}
    # reload: taken, or refused with the reason, the running config kept
    assert router.call("reload") == {"taken": True, "path": agent.config}
    good = open(agent.config).read()
    agent.write_config(good + "config interface 'wg0'\n\toption metric 'many'\n")
    answer = router.call("reload")
    assert answer["taken"] is False and "metric" in answer["error"] and "'many'" in answer["error"]
    assert owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}
    agent.write_config(good)

    # the peer leaves (removed from the router): down, as event and script
    site.r.wg_remove_peer("wg0", pub)
    wait_for(lambda: not owned_prefixes(site.r), POLL + 2, what="routes gone with the peer")
    got = events.take(2, 10)
    assert got[0]["wgagent.peer"]["state"] == "down" and got[0]["wgagent.peer"]["reason"] == "peer-removed"
    assert got[1]["wgagent.route"]["action"] == "removed"
    wait_for(lambda: len(out.read_text().splitlines()) == 2, 10, what="the second hotplug run")
    assert out.read_text().splitlines()[1].startswith(f"peer-down|wg0|{pub}|phone|10.0.31.5/32 fd31::5/128|")

    # the daemon stops: the object says so, and still answers from the kernel
    assert agent.stop() == 0
    st = router.call("status")
    assert st["daemon"] == {"running": False, "pid": None, "updated": st["daemon"]["updated"]}
    assert st["interfaces"][0]["name"] == "wg0" and st["interfaces"][0]["peers"] == []
    assert router.call("reload") == {"taken": False, "error": "wgagent is not running"}


def test_status_answers_during_a_4s_firewall_write(site, tmp_path):
    """The firewall thread's pass takes >= 4 s (a slow router: every `ubus call` of it
    waits 0.4 s before it starts); meanwhile `ubus call wgagent status` answers at once,
    again and again, and the route loop adds the phone's route."""
    slow = tmp_path / "slow-ubus"
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" call uci "* | *" call session "*) sleep 0.4 ;; esac\n'
                    f'exec {sys.executable} {rp.CLI} "$@"\n')
    slow.chmod(0o755)
    router = Router(site, tmp_path, cli=str(slow))
    try:
        site.phone("p1", "10.0.31.5")
        started = time.monotonic()
        agent = router.start(site.config() + "\nconfig zone 'phones'\n\toption network 'wg0'\n"
                                             "\tlist forward_to 'lan'\n\tlist forward_from 'lan'\n"
                                             "\toption allow_port '51820'\n")
        times, routed = [], None
        site.handshake("p1")
        while not agent.events("firewall_committed") and time.monotonic() - started < 60 * SLOWDOWN:
            t = time.monotonic()
            st = router.call("status", timeout=10)
            times.append(time.monotonic() - t)
            assert st["daemon"]["running"] is True
            if routed is None and owned_prefixes(site.r) == {"10.0.31.5"}:
                routed = time.monotonic() - started
            time.sleep(0.2)
        write = time.monotonic() - started
        assert agent.events("firewall_committed"), agent.log()
        assert write >= 4, f"the firewall pass took {write:.1f} s: not slow enough to show anything"
        assert routed is not None and routed < write, "the route came while the firewall was being written"
        assert len(times) >= 5 and max(times) < 2 * SLOWDOWN, times  # the stand-in CLI's own start included
        # the firewall thread's state, published after the next pass
        fw = wait_for(lambda: router.call("status").get("firewall"), 5, what="the firewall in the status")
        assert fw["error"] is None and fw["transport"] == "ubus-cli"
        assert {s["name"]: s["state"] for s in fw["sections"]}["wgagent_zone_phones"] == "ok"
    finally:
        router.close()
