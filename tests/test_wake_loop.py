"""The wake-up in the loop, against the in-memory kernel of test_daemon (no root): which
handshakes ask for a read, which interfaces a read reads, the poll while the wake-up
runs, the filter following the listen ports, the deadlines of verdicts."""

from __future__ import annotations

import pytest

from wgagent import daemon as daemon_mod
from wgagent import wake
from wgagent.model import InterfaceState
from wgagent.rtnl import Link

from . import test_daemon
from .test_daemon import K1, K2, WALL0, make, peer

world = test_daemon.world  # the fixture: test_daemon's in-memory kernel and WireGuard


class Watch:
    """The packet socket's stand-in: the hits a test gives, the ports it was aimed at."""

    def __init__(self):
        self.hits: list[wake.Hit] = []
        self.ports = None
        self.closed = False

    def drain(self, limit=256):
        out, self.hits = self.hits, []
        return out

    def set_ports(self, ports):
        changed = self.ports != set(ports)
        self.ports = set(ports)
        return changed

    def fileno(self):
        return -1

    def close(self):
        self.closed = True


class Counting:
    """test_daemon's Sources with listen ports, counting the reads of each interface."""

    def __init__(self, sources, ports):
        self.sources, self.ports, self.reads = sources, ports, {}

    def read(self, name, link):
        self.reads[name] = self.reads.get(name, 0) + 1
        s = self.sources.read(name, link)
        port = self.ports.get(name, 0) if s.peers is not None else 0  # as PeerSources: no read, no port
        return InterfaceState(s.name, s.backend, s.peers, s.error, port)


def hit(kind=wake.RESPONSE, outgoing=True, remote=("192.0.2.50", 40000), port=51820):
    addr, rport = remote
    if outgoing:
        return wake.Hit("eth0", True, kind, 4, "192.0.2.1", port, addr, rport)
    return wake.Hit("eth0", False, kind, 4, addr, rport, "192.0.2.1", port)


@pytest.fixture
def loop(world):
    """A Runner on a daemon with wg0 (port 51820) and wg1 (51821), its watch a stand-in."""
    text = make() + "config interface 'wg1'\n"  # poll_interval not set: 10 s with the wake-up, 2 s without
    d = world.daemon(text)
    world.kernel.link_map["wg1"] = Link(6, "wg1", "wireguard", True)
    world.sources.peers["wg1"] = ()
    counting = Counting(world.sources, {"wg0": 51820, "wg1": 51821})
    d.observer.sources = counting
    runner = daemon_mod.Runner(d, events=None)
    runner.watch, runner.schedule = Watch(), wake.WakeSchedule()
    runner.counting = counting
    return runner


def test_the_poll_is_a_safety_net_only_while_the_wake_up_runs(loop, world):
    assert loop.poll_interval() == 10
    loop._close_watch()
    assert loop.poll_interval() == 2
    # a poll_interval set is the poll either way
    d = world.daemon(make(poll_interval=0.5))
    runner = daemon_mod.Runner(d, events=None)
    assert runner.poll_interval() == 0.5
    runner.watch = Watch()
    assert runner.poll_interval() == 0.5


def test_the_filter_follows_the_listen_ports_read(loop):
    loop._reconcile()
    assert loop.watch.ports == {51820, 51821}
    assert loop.ports_map == {51820: frozenset({"wg0"}), 51821: frozenset({"wg1"})}
    loop.counting.ports["wg1"] = 51830
    loop._reconcile()
    assert loop.watch.ports == {51820, 51830} and loop.listen_ports == {"wg0": 51820, "wg1": 51830}
    said = loop.daemon.log.events("wake_watching")
    assert [s["ports"] for s in said] == ["wg0:51820,wg1:51821", "wg0:51820,wg1:51830"]


def test_a_handshake_from_a_new_address_schedules_reads_of_its_interface_alone(loop, world):
    loop._reconcile()
    loop.watch.hits = [hit(wake.RESPONSE, outgoing=True)]  # the router answered someone new
    loop._handshakes(100.0)
    assert loop.schedule.pending("wg0") and not loop.schedule.pending("wg1")
    assert loop.schedule.next_deadline() == pytest.approx(100.0 + wake.DELAYS[0])
    due = loop.schedule.due(100.0 + wake.DELAYS[-1])
    assert due == {"wg0"}


def test_a_series_ends_at_the_read_that_shows_its_peer_up(loop, world):
    """The router answered a new address: reads at +5, +40, +250 ms. The first read
    that shows a peer up at that address ends the series; a read that shows nothing
    new (the initiator's first data not in yet) lets it go on."""
    loop._reconcile()
    t = daemon_mod.time.monotonic() + 100  # the loop's clock: a pass's read stands for reads due by then
    loop.watch.hits = [hit(wake.RESPONSE, outgoing=True)]
    loop._handshakes(t)
    reads = loop.counting.reads["wg0"]
    loop.schedule.due(t + wake.DELAYS[0])
    loop._reconcile({"wg0"})  # nothing yet: its handshake completes on its first data
    assert loop.schedule.pending("wg0"), "the series goes on"
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0, endpoint="192.0.2.50:40000"),)
    loop.schedule.due(t + wake.DELAYS[1])
    loop._reconcile({"wg0"})
    assert world.routes() == {"10.0.31.5/32"}
    assert not loop.schedule.pending("wg0") and not loop.awaited, "its last read would find nothing new"
    assert loop.counting.reads["wg0"] == reads + 2


def test_a_series_waits_for_every_address_it_was_asked_for(loop, world):
    loop._reconcile()
    t = daemon_mod.time.monotonic() + 100
    loop.watch.hits = [hit(wake.RESPONSE, True), hit(wake.RESPONSE, True, remote=("192.0.2.51", 40000))]
    loop._handshakes(t)
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0, endpoint="192.0.2.50:40000"),)
    loop.schedule.due(t + wake.DELAYS[0])
    loop._reconcile({"wg0"})
    assert loop.schedule.pending("wg0") and loop.awaited == {"wg0": {"192.0.2.51:40000"}}
    # the other one never comes (a refused or forged handshake): the series runs out
    while loop.schedule.next_deadline() is not None:
        loop.schedule.due(loop.schedule.next_deadline())
        loop._reconcile({"wg0"})
    assert not loop.awaited


def test_the_rekey_of_a_peer_up_at_that_address_asks_for_nothing(loop, world):
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5, endpoint="192.0.2.50:40000"),)
    loop._reconcile()
    assert world.routes() == {"10.0.31.5/32"}
    loop.watch.hits = [hit(wake.RESPONSE, True), hit(wake.INITIATION, False)]
    loop._handshakes(100.0)
    assert not loop.schedule.pending("wg0")
    # the same peer from a new port (roaming) is news; so is an address of a peer down
    loop.watch.hits = [hit(wake.INITIATION, False, remote=("192.0.2.50", 40001))]
    loop._handshakes(100.0)
    assert loop.schedule.pending("wg0")


def test_a_forged_initiation_is_one_read(loop):
    loop._reconcile()
    loop.watch.hits = [hit(wake.INITIATION, outgoing=False)]  # no answer of ours follows
    loop._handshakes(100.0)
    reads = []
    t = 100.0
    while loop.schedule.next_deadline() is not None:
        t = loop.schedule.next_deadline()
        reads.append(loop.schedule.due(t))
    assert reads == [{"wg0"}]


def test_our_own_initiation_and_cookies_ask_for_nothing(loop):
    loop._reconcile()
    loop.watch.hits = [hit(wake.INITIATION, outgoing=True), hit(wake.COOKIE, outgoing=False),
                       hit(wake.RESPONSE, True, port=9999)]  # not a port of ours
    loop._handshakes(100.0)
    assert loop.schedule.next_deadline() is None


def test_a_read_the_wake_up_asks_for_reads_that_interface_only(loop, world):
    loop._reconcile()
    before = dict(loop.counting.reads)
    world.sources.peers["wg1"] = (peer(K2, "10.0.41.5/32", WALL0 - 1),)  # not read: stays unseen
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 1),)
    assert loop._reconcile({"wg0"})
    assert loop.counting.reads["wg0"] == before["wg0"] + 1 and loop.counting.reads["wg1"] == before["wg1"]
    assert world.routes() == {"10.0.31.5/32"}
    assert [s.name for s in loop.daemon.last_states] == ["wg0", "wg1"]
    assert loop._reconcile()  # the next full pass reads both
    assert world.routes() == {"10.0.31.5/32", "10.0.41.5/32"}


def test_the_next_deadline_is_the_earliest_verdicts(world):
    d = world.daemon(handshake_timeout=180)
    assert d.next_deadline() is None
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5), peer(K2, "10.0.31.6/32", WALL0 - 50))
    d.reconcile()
    assert d.next_deadline() == pytest.approx(world.clocks.mono + 130)
    world.clocks.step(131)
    d.reconcile()
    assert world.routes() == {"10.0.31.5/32"}
    assert d.next_deadline() == pytest.approx(world.clocks.mono + 44)


def test_a_packet_socket_that_fails_is_given_up_for_polling(loop):
    loop._reconcile()

    def broken(limit=256):
        raise OSError(100, "Network is down")
    loop.watch.drain = broken
    watch = loop.watch
    loop._handshakes(100.0)
    assert watch.closed and loop.watch is None and loop.poll_interval() == 2
    said = loop.daemon.log.events("wake_unavailable")
    assert len(said) == 1 and "Network is down" in said[0]["error"]
    assert loop.daemon.detection["wake"] == "unavailable"


@pytest.mark.parametrize("idle", [0, 30])  # with idle_timeout, every rx that grows moves the deadline
def test_the_deadline_heap_stays_bounded_when_every_verdict_changes(world, idle):
    d = world.daemon(make(f"\toption idle_timeout '{idle}'\n", handshake_timeout=180) if idle else None,
                     handshake_timeout=180)
    for i in range(50):
        world.sources.peers["wg0"] = tuple(peer(f"{k:043d}=", f"10.0.31.{k}/32", WALL0 - 5, rx=i) for k in range(20))
        d.reconcile()
        # idle: 30 s after this rx; else the handshake (5 s old when first seen) expires
        assert d.next_deadline() == pytest.approx(world.clocks.mono + 30 if idle else 1000.0 + 175)
        world.clocks.step(1)
    assert len(d.tracker.heap) <= 2 * 20 + 64


def test_a_flood_of_forged_initiations_is_one_read_a_second(loop):
    loop._reconcile()
    reads = 0
    for i in range(300):  # 100 a second for 3 s, each from another address
        now = 100.0 + i * 0.01
        loop.watch.hits = [hit(wake.INITIATION, outgoing=False, remote=(f"198.51.100.{i % 250}", 40000 + i))]
        loop._handshakes(now)
        reads += len(loop.schedule.due(now))
    reads += len(loop.schedule.due(200.0))
    assert reads == 3
    # an answer of ours (a real peer) is never held back by it
    loop.watch.hits = [hit(wake.RESPONSE, outgoing=True, remote=("198.51.100.7", 50000))]
    loop._handshakes(300.0)
    assert loop.schedule.next_deadline() == pytest.approx(300.0 + wake.DELAYS[0])


def test_a_response_to_our_own_initiation_is_never_held_back(loop):
    loop._reconcile()
    loop.watch.hits = [hit(wake.INITIATION, outgoing=False, remote=("198.51.100.1", 1))]  # unasked
    loop._handshakes(100.0)
    loop.schedule.due(101.0)
    loop.watch.hits = [hit(wake.RESPONSE, outgoing=False, remote=("198.51.100.2", 2))]  # unasked: held back
    loop._handshakes(100.5)
    assert loop.schedule.next_deadline() is None
    loop.watch.hits = [hit(wake.INITIATION, outgoing=True, remote=("198.51.100.3", 3)),
                       hit(wake.RESPONSE, outgoing=False, remote=("198.51.100.3", 3))]  # the answer to ours
    loop._handshakes(100.6)
    assert loop.schedule.next_deadline() == pytest.approx(100.6 + wake.DELAYS[0])


def test_an_interface_unreadable_for_a_pass_keeps_its_port_in_the_filter(loop, world):
    loop._reconcile()
    world.sources.peers["wg1"] = None  # cannot be read: no listen port either
    loop._reconcile()
    assert loop.watch.ports == {51820, 51821}
    assert len(loop.daemon.log.events("wake_watching")) == 1
