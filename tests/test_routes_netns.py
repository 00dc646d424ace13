"""The core daemon end to end: real WireGuard, real kernel routes, in namespaces.

    phone1 (p1) ─┐                            ┌─ wg0 10.0.31.1/24, fd31::1/64 (listen 51820)
    10.0.31.5    ├── veth 192.0.2.0/24 ── router (r)
    phone2 (p2) ─┘   (a bridge "lan" in r)    └─ wg1 10.0.41.1/24 (listen 51821), second interface
    10.0.31.6

Each phone runs its own WireGuard interface (wireguard-go, or the kernel's inside the
test VM) whose only peer is the router. wgagent runs in the router namespace and the
tests read the router's routes tagged with wgagent's protocol (152).
Deadlines here are functional limits with slack for a loaded machine, not benchmarks.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time

import pytest

from .daemonctl import SLOWDOWN, Agent, owned_prefixes, owned_routes, wait_for
from .lab import genkey

pytestmark = pytest.mark.root

POLL = 0.5


class Site:
    """The router, its WireGuard interfaces and the phones, built in a lab."""

    def __init__(self, lab, backend: str):
        self.lab, self.backend = lab, backend
        self.r = lab.netns("r")
        self.r.ip("link", "add", "lan", "type", "bridge")
        self.r.ip("addr", "add", "192.0.2.1/24", "dev", "lan")
        self.r.ip("link", "set", "lan", "up")
        self.keys = {"wg0": genkey(), "wg1": genkey()}
        self.r.add_wireguard("wg0", backend, self.keys["wg0"][0], 51820, ["10.0.31.1/24", "fd31::1/64"])
        self.phones: dict[str, tuple] = {}

    def add_wg1(self):
        self.r.add_wireguard("wg1", self.backend, self.keys["wg1"][0], 51821, ["10.0.41.1/24"])

    def phone(self, short: str, addr4: str, addr6: str | None = None, iface: str = "wg0",
              keepalive: int | None = None):
        ns = self.lab.netns(short)
        n = len(self.phones) + 2
        self.lab.link(ns, "eth0", self.r, f"v{short}", [f"192.0.2.{n}/24"], [])
        self.r.ip("link", "set", f"v{short}", "master", "lan")
        priv, pub = genkey()
        ns.add_wireguard("wgc", self.backend, priv, None, [addr4 + "/32"] + ([addr6 + "/128"] if addr6 else []))
        port = 51820 if iface == "wg0" else 51821
        net = "10.0.31.0/24" if iface == "wg0" else "10.0.41.0/24"
        ns.wg_peer("wgc", self.keys[iface][1], [net, "fd31::/64"], endpoint=f"192.0.2.1:{port}",
                   keepalive=keepalive)
        ns.ip("route", "add", net, "dev", "wgc")
        if addr6:
            ns.ip("-6", "route", "add", "fd31::/64", "dev", "wgc")
        allowed = [addr4 + "/32"] + ([addr6 + "/128"] if addr6 else [])
        self.r.wg_peer(iface, pub, allowed)
        self.phones[short] = (ns, pub, allowed, iface)
        return ns

    def handshake(self, short: str) -> float:
        """Make the phone talk to the router; returns when the router saw the handshake."""
        ns, pub, _, iface = self.phones[short]
        target = "10.0.31.1" if iface == "wg0" else "10.0.41.1"
        wait_for(lambda: ns.ping(target, wait=1), 20, what=f"{short} to reach the router through WireGuard")
        return time.monotonic()

    def config(self, extra_iface: str = "", agent: str = "", interfaces=("wg0",)) -> str:
        body = f"config agent 'main'\n\toption poll_interval '{POLL}'\n" + textwrap.indent(agent, "\t")
        for name in interfaces:
            body += f"\nconfig interface '{name}'\n" + textwrap.indent(extra_iface, "\t")
        return body


@pytest.fixture
def site(lab, backend):
    return Site(lab, backend)


def test_route_follows_handshake_v4_and_v6(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    agent = Agent(site.lab, site.r, site.config()).start()
    assert owned_routes(site.r) == []  # configured, never connected: no route
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, POLL + 1.5,
             what="the phone's v4 and v6 host routes within a poll interval of the handshake")
    routes = owned_routes(site.r)
    assert all("dev wg0" in r for r in routes), routes
    assert len(agent.events("peer_up")) == 1 and len(agent.events("route_added")) == 1, agent.log()
    line = agent.events("route_added")[0]
    assert "iface=wg0" in line and "prefixes=10.0.31.5/32,fd31::5/128" in line and "reason=handshake" in line
    # steady state: nothing logged at info level while nothing changes
    before = agent.log()
    time.sleep(3 * POLL)
    assert agent.log() == before


def test_route_goes_after_handshake_timeout(site):
    site.phone("p1", "10.0.31.5")
    agent = Agent(site.lab, site.r, site.config(agent="option handshake_timeout '4'\n")).start()
    seen = site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route after handshake")
    wait_for(lambda: not owned_prefixes(site.r), 4 + POLL + 5, what="route gone after handshake_timeout")
    assert time.monotonic() - seen >= 3.5  # not before the handshake aged out
    assert "reason=handshake-expired" in agent.events("route_removed")[0]
    assert "reason=handshake-expired" in agent.events("peer_down")[0]


def test_idle_timeout_drops_silent_keepalive_peer_and_keeps_talking_one(site):
    site.phone("p1", "10.0.31.5", keepalive=1)
    site.phone("p2", "10.0.31.6", keepalive=1)
    agent = Agent(site.lab, site.r, site.config("option idle_timeout '3'\n")).start()
    site.handshake("p1")
    site.handshake("p2")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "10.0.31.6"}, 5, what="both routes")
    p1, pub1, _, _ = site.phones["p1"]
    # p1 "leaves": its keepalives stop (as when the phone moves to the other router)
    p1.run("wg", "set", "wgc", "peer", site.keys["wg0"][1], "persistent-keepalive", "0")
    left = time.monotonic()
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.6"}, 3 + POLL + 5, what="silent peer's route gone")
    # not at once: idle_timeout (3 s) counts from the last keepalive seen, which
    # may have arrived up to one keepalive interval (1 s) before `left`
    assert time.monotonic() - left >= 1.5
    assert f"peer={pub1[:8]}" in agent.events("route_removed")[0] and "reason=idle" in agent.events("route_removed")[0]
    # status tells it too (idleness lives in the daemon: the kernel shows a fresh handshake)
    peers = {p["public_key"]: p for p in json.loads(agent.run_cli("status", "--json", check=True).stdout)
             ["interfaces"][0]["peers"]}
    assert (peers[pub1]["up"], peers[pub1]["reason"]) == (False, "idle")
    assert peers[site.phones["p2"][1]]["up"] is True
    time.sleep(4)  # longer than idle_timeout: the talking peer stays
    assert owned_prefixes(site.r) == {"10.0.31.6"}


def test_deleted_route_comes_back_at_once(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    # a long poll interval: repair must come from the rtnetlink event, not the poll
    agent = Agent(site.lab, site.r, site.config().replace(f"'{POLL}'", "'30'")).start()
    site.handshake("p1")
    agent.send(signal.SIGHUP)  # reload: reconciles at once, no need to wait 30 s for the poll
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, 10, what="routes")
    for _ in range(3):
        site.r.ip("route", "del", "10.0.31.5/32", "dev", "wg0")
        site.r.ip("-6", "route", "del", "fd31::5/128", "dev", "wg0")
        wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, 1.5,
                 what="routes restored from the rtnetlink event")
    assert len(owned_routes(site.r)) == 2


def test_interface_deleted_and_recreated(site):
    site.phone("p1", "10.0.31.5", keepalive=1)
    _, pub, allowed, _ = site.phones["p1"]
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route")
    # the interface goes away (netifd ifdown, wireguard-go restart) ...
    if site.backend == "kernel":
        site.r.ip("link", "del", "wg0")
    else:
        wgproc = next(p for p in site.lab.procs if "wireguard-go" in p.args and "wg0" in p.args)
        site.lab.stop(wgproc)
    wait_for(lambda: "interface_unavailable" in agent.log(), 10, what="interface loss noticed")
    assert owned_routes(site.r) == []
    # ... and comes back with the same peer: the route returns without a restart
    site.r.add_wireguard("wg0", site.backend, site.keys["wg0"][0], 51820, ["10.0.31.1/24"])
    site.r.wg_peer("wg0", pub, allowed)
    # the phone reconnects (a fresh session: the old one died with the interface)
    ns = site.phones["p1"][0]
    ns.wg_remove_peer("wgc", site.keys["wg0"][1])
    ns.wg_peer("wgc", site.keys["wg0"][1], ["10.0.31.0/24"], endpoint="192.0.2.1:51820", keepalive=1)
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route back on the new interface")
    assert agent.proc.poll() is None


def test_interface_created_after_start_is_picked_up(site):
    agent = Agent(site.lab, site.r, site.config(interfaces=("wg0", "wg1"))).start()
    wait_for(lambda: "iface=wg1" in " ".join(agent.events("interface_unavailable")), 5, what="wg1 reported missing")
    site.add_wg1()
    site.phone("p3", "10.0.41.7", iface="wg1")
    site.handshake("p3")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.41.7"}, 5, what="route on the late interface")
    assert "dev wg1" in owned_routes(site.r)[0]


def test_two_interfaces_at_once(site):
    site.add_wg1()
    site.phone("p1", "10.0.31.5")
    site.phone("p3", "10.0.41.7", iface="wg1")
    Agent(site.lab, site.r, site.config(interfaces=("wg0", "wg1"))).start()
    site.handshake("p1")
    site.handshake("p3")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "10.0.41.7"}, 5, what="routes on both interfaces")
    routes = owned_routes(site.r)
    assert any(r.startswith("10.0.31.5 dev wg0") for r in routes) and any(r.startswith("10.0.41.7 dev wg1") for r in routes)


def test_kill9_then_restart_adopts_without_leak_or_duplicate(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    site.phone("p2", "10.0.31.6")
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    site.handshake("p2")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5", "10.0.31.6"}, 5, what="three routes")
    agent.kill9()
    before = owned_routes(site.r)
    assert len(before) == 3  # kill -9 leaves them: nobody cleaned up
    added = len(agent.events("route_added"))
    agent.start()
    time.sleep(3 * POLL)
    assert owned_routes(site.r) == before  # adopted as they are: no duplicate, no churn
    assert len(agent.events("route_added")) == added and not agent.events("route_removed")
    # while it is dead again, p2 is removed from the router; the next run removes the leftover
    agent.kill9()
    site.r.wg_remove_peer("wg0", site.phones["p2"][1])
    agent.start()
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, 5, what="leftover of p2 removed")
    assert len(owned_routes(site.r)) == 2


def test_sigterm_removes_owned_routes_and_only_those(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    site.r.ip("route", "add", "198.51.100.0/24", "dev", "wg0", "proto", "static")
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    wait_for(lambda: len(owned_routes(site.r)) == 2, 5, what="routes")
    assert agent.stop(signal.SIGTERM) == 0
    assert owned_routes(site.r) == []
    assert any(r.startswith("198.51.100.0/24 dev wg0 proto static") for r in site.r.routes())
    assert "event=stopping" in agent.log() and "routes_removed_on_stop" in agent.log()


def test_keep_routes_on_stop(site):
    site.phone("p1", "10.0.31.5")
    agent = Agent(site.lab, site.r, site.config(agent="option keep_routes_on_stop '1'\n")).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route")
    assert agent.stop(signal.SIGINT) == 0
    assert owned_prefixes(site.r) == {"10.0.31.5"}


def test_route_of_another_protocol_is_never_touched(site):
    site.phone("p1", "10.0.31.5")
    site.phone("p2", "10.0.31.6")
    # what netifd's route_allowed_ips '1' leaves: a static route for p2's AllowedIP
    site.r.ip("route", "add", "10.0.31.6/32", "dev", "wg0", "proto", "static")
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    site.handshake("p2")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="p1's route")
    wait_for(lambda: agent.events("route_conflict"), 5, what="conflict warning")
    time.sleep(3 * POLL)
    assert len(agent.events("route_conflict")) == 1  # warned once, not every poll
    line = agent.events("route_conflict")[0]
    assert "prefix=10.0.31.6/32" in line and "route_allowed_ips" in line
    static = [r for r in site.r.routes() if r.startswith("10.0.31.6 ")]
    assert static == ["10.0.31.6 dev wg0 proto static scope link"]
    check = agent.run_cli("check")
    assert check.returncode == 1 and "10.0.31.6/32" in check.stdout and "route_allowed_ips" in check.stdout
    agent.stop()
    assert [r for r in site.r.routes() if r.startswith("10.0.31.6 ")] == static


def test_table_and_metric_and_reload(site):
    site.phone("p1", "10.0.31.5")
    agent = Agent(site.lab, site.r, site.config("option table '100'\noption metric '7'\n")).start()
    site.handshake("p1")
    wait_for(lambda: owned_routes(site.r) == ["10.0.31.5 dev wg0 table 100 scope link metric 7"],
             5, what="route in table 100 with metric 7")
    # a good reload moves the route; a bad one is reported and the running config kept
    agent.write_config(site.config("option table 'main'\noption metric '9'\n"))
    agent.send(signal.SIGHUP)
    wait_for(lambda: owned_routes(site.r) == ["10.0.31.5 dev wg0 scope link metric 9"],
             5, what="route moved by reload")
    agent.write_config(site.config("option metric 'lots'\n"))
    agent.send(signal.SIGHUP)
    wait_for(lambda: agent.events("reload_failed"), 5, what="bad reload reported")
    assert "option 'metric', value 'lots'" in agent.events("reload_failed")[0]
    time.sleep(3 * POLL)
    assert owned_routes(site.r) == ["10.0.31.5 dev wg0 scope link metric 9"]
    assert agent.proc.poll() is None


def test_bad_config_exits_2_without_touching_the_kernel(site):
    site.phone("p1", "10.0.31.5")
    site.handshake("p1")
    agent = Agent(site.lab, site.r, site.config("option table 'nosuch'\n"))
    r = site.r.run(*agent_cmd(agent), check=False)
    assert r.returncode == 2
    assert "section 'wg0', option 'table', value 'nosuch'" in r.stderr
    assert owned_routes(site.r) == []


def agent_cmd(agent: Agent) -> list[str]:
    return [sys.executable, "-m", "wgagent", "run", "--once", "--config", agent.config]


def test_once_and_status(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    site.phone("p2", "10.0.31.6")
    site.handshake("p1")
    key = site.phones["p1"][1]
    agent = Agent(site.lab, site.r, site.config() + f"\nconfig peer 'phone'\n\toption interface 'wg0'\n"
                                                   f"\toption public_key '{key}'\n\toption description 'phone'\n")
    r = site.r.run(*agent_cmd(agent), check=False)
    assert r.returncode == 0, r.stderr
    assert owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}
    st = json.loads(agent.run_cli("status", "--json", check=True).stdout)
    peers = {p["short_key"]: p for p in st["interfaces"][0]["peers"]}
    me = peers[key[:8]]
    assert me["up"] and me["description"] == "phone" and me["routes"] == ["10.0.31.5/32", "fd31::5/128"]
    assert me["endpoint"].startswith("192.0.2.") and me["handshake_age"] < 30 * SLOWDOWN  # TCG: slow execs
    other = peers[site.phones["p2"][1][:8]]
    assert not other["up"] and other["reason"] == "no-handshake" and other["routes"] == []
    text = agent.run_cli("status", check=True).stdout
    assert f"peer {key[:8]} (phone)  up" in text and "routes:      10.0.31.5/32, fd31::5/128" in text


def test_check_reports_a_configured_interface_that_is_not_wireguard(site):
    agent = Agent(site.lab, site.r, site.config(interfaces=("wg0", "lan", "wg7")))
    r = agent.run_cli("check")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "problem: interface lan: not a WireGuard interface (kind 'bridge'" in r.stdout
    assert "note: interface wg7 does not exist yet" in r.stdout
    ok = Agent(site.lab, site.r, site.config(), name="ok")
    assert ok.run_cli("check").returncode == 0


def test_disabling_by_reload_removes_routes_and_enabling_restores_them(site):
    site.phone("p1", "10.0.31.5", keepalive=1)
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route")
    agent.write_config(site.config(agent="option enabled '0'\n"))
    agent.send(signal.SIGHUP)
    wait_for(lambda: not owned_routes(site.r), 5, what="routes removed when disabled")
    agent.write_config(site.config())
    agent.send(signal.SIGHUP)
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route back when enabled")


def test_a_failing_route_is_logged_and_retried_never_fatal(site):
    site.phone("p1", "10.0.31.5", "fd31::5")
    site.r.run("sysctl", "-qw", "net.ipv6.conf.wg0.disable_ipv6=1")  # IPv6 routes on wg0 now fail
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="the IPv4 route")
    wait_for(lambda: agent.events("route_add_failed"), 5, what="the failure logged")
    assert "prefix=fd31::5/128" in agent.events("route_add_failed")[0]
    time.sleep(4 * POLL)  # retried on every pass, but warned about once
    assert len(agent.events("route_add_failed")) == 1
    site.r.run("sysctl", "-qw", "net.ipv6.conf.wg0.disable_ipv6=0")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5", "fd31::5"}, 5, what="the IPv6 route on retry")
    assert agent.proc.poll() is None


def test_a_device_that_is_down_takes_no_routes_until_it_is_up(site):
    site.phone("p1", "10.0.31.5", keepalive=1)
    agent = Agent(site.lab, site.r, site.config()).start()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route")
    site.r.ip("link", "set", "wg0", "down")  # the kernel drops the device's routes
    wait_for(lambda: agent.events("interface_down"), 5, what="interface_down logged")
    time.sleep(3 * POLL)
    assert not owned_routes(site.r)
    assert len(agent.events("interface_down")) == 1 and not agent.events("route_add_failed")
    site.r.ip("link", "set", "wg0", "up")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 5, what="route back once the device is up")
    assert agent.events("interface_up")
