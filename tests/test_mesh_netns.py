"""Many sites: three routers, BIRD 2 (Babel, examples/bird-babel.conf as shipped) and
wgagent on each, a phone moving between them. Real wireguard-go (or kernel WireGuard in
the test VM) handshakes, real BIRD, real kernel routes; the topology is tests/mesh.py's:

        op1 ═══ op2 ═══ op3        (pairwise point-to-point site tunnels, AllowedIPs 0/0)
         ╚═══════════════╝
    h1 on op1's LAN, h2 on op2's, h3 on op3's; the phone reaches each op<i> over the
    "internet" and connects to one wg0 at a time; no static route for the pool.

One mesh per backend serves the whole module (building it and letting Babel converge
takes seconds); every test leaves the phone connected somewhere and wgagent running
on all three routers, except the last, which stops them. Deadlines are functional
limits with slack (stretched by WGAGENT_TEST_SLOWDOWN in the VM), not benchmarks:
the hand-off times are measured by `make bench-mesh`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from . import lab as lab_mod
from .conftest import BACKENDS, _cannot_run
from .daemonctl import SLOWDOWN, Agent, wait_for
from .mesh import BIRD_BABEL, BIRD_OSPF, PHONE4, SITES, Mesh, Pings, lan4, missing_bird, tunnel

pytestmark = pytest.mark.root

POLL = 1.0
IDLE = 20  # so that the idle path (20 s without rx) cannot be what lets go in time
BOUND = POLL + 2  # every LAN reaches the phone, and the old router lets go, within this of a move


def test_the_shipped_bird_configs_parse():
    why = missing_bird()
    if why:
        _cannot_run(why)
    for path in (BIRD_BABEL, BIRD_OSPF):
        r = subprocess.run(["bird", "-p", "-c", path], capture_output=True, text=True)
        assert r.returncode == 0, f"bird -p -c {path}: {r.stderr}"


@pytest.fixture(scope="module", params=BACKENDS)
def mesh(request):
    why = lab_mod.missing_requirements(request.param) or missing_bird()
    if why:
        _cannot_run(why)
    with lab_mod.Lab("m") as the_lab:
        m = Mesh(the_lab, request.param)
        wait_for(lambda: all(m.host[i].ping(f"{lan4(j)}.1") for i in SITES for j in SITES), 60,
                 what="Babel carrying the LANs")
        m.start_agents(POLL, IDLE)
        m.pings = Pings(m)
        m.connect(1)
        wait_for(lambda: m.holds(1), 10, what="op1 holding the phone")
        yield m


def move(mesh: Mesh, to: int, settled: bool = True) -> tuple[int | None, float]:
    """The phone connects to op<to>; returns the router it left and the wall-clock time
    of the move (before its fresh session to op<to> starts). settled: first wait (not
    timed) until Babel has told every router where the phone is: a move measured from
    a mesh still passing on news of the move before is test_back_and_forth's case (a
    router's late news of an older connection elsewhere, just after the phone's
    handshake there, holds it back until its packets say it is there)."""
    if settled and mesh.at is not None:
        wait_for(lambda: mesh.agrees(mesh.at), 15 * SLOWDOWN, what=f"every router's BIRD route via op{mesh.at}")
    old, t0 = mesh.at, time.time()
    mesh.connect(to)
    return old, t0


def converged(mesh: Mesh, old: int | None, to: int, t0: float) -> None:
    """Within BOUND of t0: every LAN host had answers from the phone in both families,
    op<to> holds wgagent's routes for it and the old router none."""
    limit = t0 + BOUND * SLOWDOWN
    wait_for(lambda: len(mesh.wgagent_routes(to)) == 2, max(0.1, limit - time.time()),
             what=f"op{to}'s routes for the phone")
    if old is not None and old != to:
        wait_for(lambda: not mesh.wgagent_routes(old), max(0.1, limit - time.time()),
                 what=f"op{old} letting go of the phone (idle_timeout {IDLE} s: only the hand-off can do it)")
    deadline = time.time() + BOUND * SLOWDOWN + 2  # answers to requests sent by `limit` may still be on their way
    for key in mesh.pings.files:
        wait_for(lambda: mesh.pings.answered_since(key, t0) is not None, max(0.1, deadline - time.time()),
                 what=f"h{key[0]} reaching the phone over IPv{key[1]}")
        first = mesh.pings.answered_since(key, t0)
        assert first <= limit, f"h{key[0]}/IPv{key[1]}: first answer to a request sent {first - t0:.2f} s after " \
                               f"the move (bound {BOUND * SLOWDOWN:.1f} s)"
    assert mesh.holds(to)


def test_the_phone_moves_round_the_three_sites_and_every_lan_follows(mesh):
    for to in (1, 2, 3, 1):
        old, t0 = move(mesh, to)
        converged(mesh, old, to, t0)
    assert not mesh.pings.loops(), "no routing loop"
    # each router the phone left said so, naming BIRD's route over a site tunnel
    for i, agent in mesh.agents.items():
        moved = agent.events("peer_moved")
        assert moved and all("proto=bird" in line and "device=wg_s2s_op" in line for line in moved), agent.log()
    # the old router's status names where the phone went
    st = json.loads(mesh.agents[3].run_cli("status", "--json", check=True).stdout)
    phone = st["interfaces"][0]["peers"][0]
    assert (phone["up"], phone["reason"]) == (False, "moved")
    assert phone["moved"]["proto"] == "bird" and phone["moved"]["device"] == tunnel(3, 1)
    text = mesh.agents[3].run_cli("status", check=True).stdout
    assert f"moved (claimed by bird via {phone['moved']['gateway']} dev {tunnel(3, 1)})" in text
    st = json.loads(mesh.agents[1].run_cli("status", "--json", check=True).stdout)
    assert st["interfaces"][0]["peers"][0]["up"] is True and st["interfaces"][0]["peers"][0]["moved"] is None


def test_back_and_forth_within_three_seconds(mesh):
    start = mesh.at
    other = start % 3 + 1
    old, t0 = move(mesh, other)
    time.sleep(max(0.0, 1.5 - (time.time() - t0)))
    _, t1 = move(mesh, start, settled=False)
    assert t1 - t0 < 3
    converged(mesh, other, start, t1)
    assert not mesh.wgagent_routes(other)
    assert not mesh.pings.loops()


def test_check_warns_about_a_site_tunnel_that_would_drop_the_pool(mesh):
    # check looks at the tunnels BIRD routes the pool over: here op2's to op1, with the
    # phone at op1 and op2 routing it over that tunnel (not by way of op3, as Babel may
    # for a while after the moves before)
    if mesh.at != 1:
        old, t0 = move(mesh, 1)
        converged(mesh, old, 1, t0)
    wait_for(lambda: mesh.agrees(1), 30 * SLOWDOWN, what="every router's BIRD route via op1")
    r = mesh.op[2]
    name = tunnel(2, 1)
    peer = r.run("wg", "show", name, "peers").stdout.split()[0]
    # the link-local range and Babel's multicast group stay: op1's hellos keep coming in,
    # and op2's keep going out (WireGuard sends a packet to ff02::1:6 only to a peer whose
    # AllowedIPs take it: without them op1 stops hearing op2, its IHUs say so, and op2
    # drops its routes over the tunnel within seconds; check would find nothing routed over it)
    r.run("wg", "set", name, "peer", peer, "allowed-ips",
          "192.168.35.0/24,fd35::/64,10.0.32.12/32,fe80::/64,ff02::1:6/128")
    try:
        # check reads BIRD's routes as they are now (a slow VM: waited for, not read once)
        said = [""]

        def warned():
            said[0] = mesh.agents[2].run_cli("check").stdout
            return f"routes over {name}, but no AllowedIPs of its peers cover 10.0.31.5/32, fd31::5/128" in said[0]
        try:
            wait_for(warned, 15, interval=0.5, what=f"check's warning about {name}")
        except AssertionError as e:
            raise AssertionError(f"{e}; check said last: {said[0]}") from None
    finally:
        r.run("wg", "set", name, "peer", peer, "allowed-ips", "0.0.0.0/0,::/0")
    assert "cover" not in mesh.agents[2].run_cli("check").stdout


def test_kill9_of_wgagent_where_the_phone_is_and_a_restart(mesh):
    at = mesh.at
    agent = mesh.agents[at]
    agent.kill9()
    time.sleep(2 * POLL)
    assert mesh.holds(at), "kill -9 leaves the routes (and BIRD's announcement) in place"
    fresh = Agent(mesh.lab, mesh.op[at], mesh.agent_config(POLL, IDLE), name="wgagent-restarted").start()
    mesh.agents[at] = fresh
    time.sleep(3 * POLL)
    assert mesh.holds(at) and not fresh.events("peer_moved") and not fresh.events("route_removed"), fresh.log()
    # and the hand-off still works both ways from the restarted daemon
    other = at % 3 + 1
    old, t0 = move(mesh, other)
    converged(mesh, old, other, t0)
    old, t0 = move(mesh, at)
    converged(mesh, old, at, t0)


def test_bird_restarted_where_the_phone_is_and_where_it_was(mesh):
    at = mesh.at
    was = at % 3 + 1
    old, t0 = move(mesh, was)
    converged(mesh, old, was, t0)
    old, t0 = move(mesh, at)
    converged(mesh, old, at, t0)
    # the old router's BIRD restarts: its claim on the phone goes and comes back; the
    # phone stays moved there (only a new handshake there could bring it back)
    mesh.birds[was].stop()
    time.sleep(2 * POLL)
    assert not mesh.wgagent_routes(was), "a claim that went does not bring the phone back"
    mesh.birds[was].start()
    wait_for(lambda: mesh.bird_routes(was), 20, what=f"op{was}'s BIRD learning the phone again")
    # the holder's BIRD restarts: the others lose the route, then learn it again; wgagent's
    # routes stay as they are throughout, and BIRD's are never touched by it
    changes = len(mesh.agents[at].events("route_removed") + mesh.agents[at].events("route_added"))
    mesh.birds[at].stop()
    wait_for(lambda: len(mesh.wgagent_routes(at)) == 2 and not any(mesh.bird_routes(j) for j in SITES if j != at),
             15, what="the others losing the phone with the holder's BIRD, wgagent's routes there staying")
    assert len(mesh.wgagent_routes(at)) == 2, mesh.diagnose()
    mesh.birds[at].start()
    wait_for(lambda: all(mesh.bird_routes(j) for j in SITES if j != at), 20,
             what="the others learning the phone from the restarted BIRD")
    t_back = time.time()
    for key in mesh.pings.files:
        wait_for(lambda: mesh.pings.answered_since(key, t_back) is not None, 10,
                 what=f"h{key[0]} reaching the phone over IPv{key[1]} after the restart")
    assert mesh.holds(at)
    assert len(mesh.agents[at].events("route_removed") + mesh.agents[at].events("route_added")) == changes, \
        "wgagent changed nothing while BIRD restarted"
    assert not mesh.pings.loops()


def test_a_late_claim_where_the_phone_is_is_undone_by_its_packets(mesh):
    """A routing daemon's route for the phone appears where it is connected, after its
    handshake there (as Babel's late news of an older connection elsewhere would): the
    router lets go, then takes it back within seconds because the phone's keepalives
    keep arriving, without a new handshake. The claim goes over a link to a namespace
    that forwards nothing, so the withdrawn seconds lose packets and loop none."""
    at = mesh.at
    r, agent = mesh.op[at], mesh.agents[at]
    moved, ups = len(agent.events("peer_moved")), len(agent.events("peer_up"))
    handshakes = r.run("wg", "show", "wg0", "latest-handshakes").stdout
    sink = getattr(mesh, "sink", None) or mesh.lab.netns("sink")
    mesh.sink = sink
    mesh.lab.link(r, "late0", sink, "eth0", ["198.51.100.1/30"], ["198.51.100.2/30"])
    try:
        r.run("ip", "route", "add", f"{PHONE4}/32", "via", "198.51.100.2", "dev", "late0", "proto", "bird",
              "metric", "32")
        wait_for(lambda: len(agent.events("peer_moved")) > moved, 5, what=f"op{at} letting go of the phone")
        assert "gateway=198.51.100.2" in agent.events("peer_moved")[-1]
        t0 = time.time()
        wait_for(lambda: len(agent.events("peer_up")) > ups, 10, what=f"op{at} taking the phone back")
        assert "packets kept arriving here after the move" in agent.events("peer_up")[-1], agent.log()
        assert r.run("wg", "show", "wg0", "latest-handshakes").stdout == handshakes, "no new handshake"
        wait_for(lambda: len(mesh.wgagent_routes(at)) == 2, 5, what=f"op{at}'s routes back")
        for key in mesh.pings.files:
            wait_for(lambda: mesh.pings.answered_since(key, t0) is not None, 10,
                     what=f"h{key[0]} reaching the phone over IPv{key[1]} again")
        time.sleep(2 * POLL)
        assert len(agent.events("peer_moved")) == moved + 1, "the same claim does not move it again"
        assert mesh.holds(at)
    finally:
        r.run("ip", "link", "del", "late0", check=False)
    assert not mesh.pings.loops()


def test_sigterm_on_all_leaves_no_wgagent_route_and_the_others_lose_the_learned_ones(mesh):
    assert all(mesh.bird_routes(i) for i in SITES if i != mesh.at), "the others had learned the phone"
    for agent in mesh.agents.values():
        assert agent.stop(signal.SIGTERM) == 0
    for i in SITES:
        assert not mesh.wgagent_routes(i), f"op{i}"
        assert not [line for line in mesh.op[i].routes("proto", "152", "table", "all")], f"op{i}: nothing of ours left"
    wait_for(lambda: not any(mesh.bird_routes(i) for i in SITES), 15, what="BIRD withdrawing the phone everywhere")
    mesh.pings.stop(mesh.lab)
    assert not mesh.pings.loops()
