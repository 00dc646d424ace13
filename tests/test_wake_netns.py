"""The handshake wake-up end to end: real WireGuard handshakes seen on the wire by the
daemon's packet socket (wake.py), in namespaces.

    phone (p1) ── veth ── router (r): wg0 10.0.31.1/24 (listen 51820) + wgagent
    10.0.31.5             (a bridge "lan" in r, as in test_routes_netns)

The poll here is 10 s, so a route within half a second of the handshake is the
wake-up's, not the poll's (the daemon's debug lines say which read found it).
Deadlines are functional limits with slack for a loaded machine, not benchmarks.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from .daemonctl import SLOWDOWN, Agent, RouteMonitor, owned_prefixes, wait_for
from .test_routes_netns import Site

pytestmark = pytest.mark.root

SAFETY_POLL = 10  # the default poll while the wake-up runs: the poll cannot be what finds a handshake
WAKE_AGENT = "option log_level 'debug'\n"


@pytest.fixture
def site(lab, backend):
    return Site(lab, backend)


def wake_config(site, agent: str = WAKE_AGENT) -> str:
    # poll_interval not set: the wake-up's default safety-net poll
    return site.config(agent=agent).replace("\toption poll_interval '0.5'\n", "")


def start_watching(site, config: str) -> Agent:
    agent = Agent(site.lab, site.r, config).start()
    wait_for(lambda: agent.events("wake_watching"), 10 * SLOWDOWN, what="the wake-up watching wg0's port")
    assert "ports=wg0:51820" in agent.events("wake_watching")[-1], agent.log()
    assert "wake=on" in agent.events("started")[-1], agent.log()
    return agent


def wake_reads(agent: Agent) -> list[str]:
    return agent.events("wake_read")


def test_a_new_peer_is_routed_within_half_a_second_of_its_handshake_with_poll_10(site):
    site.phone("p1", "10.0.31.5")
    agent = start_watching(site, wake_config(site))
    monitor = RouteMonitor(site.r)
    try:
        mark = monitor.mark()
        time.sleep(1.0)  # well inside the first 10 s poll interval, away from the start's pass
        t0 = time.time()
        site.handshake("p1")
        added = monitor.wait("add", mark, timeout=5 * SLOWDOWN)
    finally:
        monitor.proc.terminate()
        monitor.proc.wait()
    assert added - t0 < 0.5 * SLOWDOWN, f"route {added - t0:.3f} s after the phone's first packet\n{agent.log()}"
    assert owned_prefixes(site.r) == {"10.0.31.5"}
    # found by a read the handshake asked for: the router's answer (type 2, outgoing)
    seen = agent.events("handshake_seen")
    assert any("kind=response" in line and "direction=out" in line for line in seen), agent.log()
    assert wake_reads(agent), agent.log()
    assert len(agent.events("route_added")) == 1 and "reason=handshake" in agent.events("route_added")[0]
    wait_for(lambda: "detection: handshake wake-up (wg0:51820), safety-net poll every 10 s"
             in agent.run_cli("status").stdout, 5 * SLOWDOWN, what="`wgagent status` naming the wake-up")


def test_the_phone_rekeying_at_its_known_address_asks_for_no_read(site):
    site.phone("p1", "10.0.31.5")
    agent = start_watching(site, wake_config(site))
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 3 * SLOWDOWN, what="the phone's route")
    time.sleep(0.5)
    reads, seen = len(wake_reads(agent)), len(agent.events("handshake_seen"))
    # a fresh handshake of the same peer from the same address and port, as WireGuard's
    # rekey every two minutes is (the peer removed and added again on the phone forgets
    # its session, and its next packet starts one)
    rekey(site, site.phones["p1"][0])
    site.handshake("p1")
    time.sleep(1.0)
    assert (len(wake_reads(agent)), len(agent.events("handshake_seen"))) == (reads, seen), agent.log()


def rekey(site, ns):
    router_pub = site.keys["wg0"][1]
    ns.run("wg", "set", "wgc", "peer", router_pub, "remove")
    ns.wg_peer("wgc", router_pub, ["10.0.31.0/24", "fd31::/64"], endpoint="192.0.2.1:51820")
    ns.ip("route", "replace", "10.0.31.0/24", "dev", "wgc")


def listen_port(ns, ifname: str) -> int:
    return int(ns.run("wg", "show", ifname, "listen-port").stdout.strip())


# A datagram shaped like a handshake initiation (type 1, 148 bytes), from a plain UDP
# socket in a namespace: it passes the packet filter, and WireGuard drops it (its MACs
# are zeros)
SEND = r"""
import socket, sys
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sport:
    s.bind(("", sport))
s.sendto(bytes([1, 0, 0, 0]) + bytes(144), (host, port))
"""


def send_handshake_shaped(ns, host: str, port: int, source_port: int = 0) -> None:
    ns.run(sys.executable, "-c", SEND, host, str(port), str(source_port))


def test_a_forged_initiation_from_an_unknown_source_is_one_read_and_nothing_else(site):
    site.phone("p1", "10.0.31.5")
    stranger = site.lab.netns("x")
    site.lab.link(stranger, "eth0", site.r, "vx", ["192.0.2.99/24"], [])
    site.r.ip("link", "set", "vx", "master", "lan")
    agent = start_watching(site, wake_config(site))
    time.sleep(1.0)
    before, reads = agent.log(), len(wake_reads(agent))
    send_handshake_shaped(stranger, "192.0.2.1", 51820)
    wait_for(lambda: len(wake_reads(agent)) > reads, 3 * SLOWDOWN, what="a read of wg0 after the forged packet")
    time.sleep(1.0)
    assert len(wake_reads(agent)) == reads + 1, agent.log()[len(before):]
    assert "interfaces=wg0" in wake_reads(agent)[-1]
    # nothing else: no route, no line above debug, no answer from WireGuard (it was no
    # real initiation), so no series of reads
    assert owned_prefixes(site.r) == set()
    new = [line for line in agent.log()[len(before):].splitlines() if not re.match(r"\S+ debug ", line)]
    assert new == [], new
    # a type 4 (data) packet of the same size is not a handshake: no read at all
    reads = len(wake_reads(agent))
    stranger.run(sys.executable, "-c", SEND.replace("bytes([1, 0, 0, 0])", "bytes([4, 0, 0, 0])"),
                 "192.0.2.1", "51820", "0")
    time.sleep(1.0)
    assert len(wake_reads(agent)) == reads


def test_wake_off_polls_as_before(site):
    site.phone("p1", "10.0.31.5")
    agent = Agent(site.lab, site.r, site.config(agent="option wake '0'\noption log_level 'debug'\n")).start()
    assert "wake=off" in agent.events("started")[-1] and "poll_interval=0.5" in agent.events("started")[-1]
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 2 * SLOWDOWN, what="the route by polling")
    assert not agent.events("wake_watching") and not wake_reads(agent) and not agent.events("handshake_seen")


def test_without_cap_net_raw_one_warning_and_polling(site):
    site.phone("p1", "10.0.31.5")
    agent = Agent(site.lab, site.r, site.config())
    # root without CAP_NET_RAW in its bounding set: after exec it has no such capability
    agent.start(command=["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-m",
                         "wgagent", "run", "--log", "stderr", "--config"])
    warned = agent.events("wake_unavailable")
    assert len(warned) == 1 and "CAP_NET_RAW" in warned[0], agent.log()
    assert "wake=off" in agent.events("started")[-1]
    wait_for(lambda: "detection: polling every 0.5 s (wake-up unavailable: AF_PACKET socket: Operation not permitted"
             in agent.run_cli("status").stdout, 5 * SLOWDOWN, what="`wgagent status` saying why there is no wake-up")
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 2 * SLOWDOWN, what="the route by polling")
    # a reload tries again, and says it again only if the reason changed
    agent.send(1)  # SIGHUP
    wait_for(lambda: agent.events("reloaded"), 5 * SLOWDOWN, what="reload")
    time.sleep(0.5)
    assert len(agent.events("wake_unavailable")) == 1, agent.log()


def test_roaming_within_the_router_is_logged_as_an_endpoint_change(site):
    ns = site.phone("p1", "10.0.31.5")
    agent = start_watching(site, wake_config(site))
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 3 * SLOWDOWN, what="the phone's route")
    old = listen_port(ns, "wgc")
    # the phone roams: a new source port (a new NAT mapping, a new network), and a fresh
    # handshake from it (the peer removed and added again forgets its session)
    ns.run("wg", "set", "wgc", "listen-port", str(old + 1))
    rekey(site, ns)
    t0 = time.monotonic()
    site.handshake("p1")
    wait_for(lambda: agent.events("peer_endpoint_changed"), 3 * SLOWDOWN, what="peer_endpoint_changed")
    took = time.monotonic() - t0
    line = agent.events("peer_endpoint_changed")[0]
    assert f"endpoint=192.0.2.2:{old + 1}" in line and f"previous=192.0.2.2:{old}" in line, line
    assert took < SAFETY_POLL / 2, f"found after {took:.1f} s: by the poll, not the wake-up"
    assert owned_prefixes(site.r) == {"10.0.31.5"} and not agent.events("route_removed"), agent.log()


def test_the_filter_follows_a_new_listen_port(site):
    site.phone("p1", "10.0.31.5")
    agent = start_watching(site, wake_config(site))
    site.r.run("wg", "set", "wg0", "listen-port", "51830")
    # the next poll reads the new port (a reload would too): SIGUSR1 asks for a pass now
    agent.send(10)
    wait_for(lambda: any("ports=wg0:51830" in line for line in agent.events("wake_watching")), 5 * SLOWDOWN,
             what="the filter on the new port")
    ns, _, _, _ = site.phones["p1"]
    ns.run("wg", "set", "wgc", "peer", site.keys["wg0"][1], "endpoint", "192.0.2.1:51830")
    t0 = time.time()
    site.handshake("p1")
    wait_for(lambda: owned_prefixes(site.r) == {"10.0.31.5"}, 2 * SLOWDOWN, what="the route via the wake-up")
    assert time.time() - t0 < 2 * SLOWDOWN
    assert re.search(r"event=wake_read .*interfaces=wg0", agent.log()), agent.log()


def test_the_listen_port_comes_from_the_backend(site):
    """The listen port each backend reports is what the filter is built from."""
    code = ("import json; from wgagent.rtnl import Rtnl; from wgagent.wgsource import PeerSources;"
            "r = Rtnl(); links = r.links(); print(json.dumps(PeerSources().read('wg0', links['wg0']).listen_port))")
    assert site.r.run(sys.executable, "-c", code).stdout.strip() == "51820"
