"""The incremental steady state (tracker.PeerTracker) against the pure decision of
every peer at every poll (policy.track_activity + desired_state): the same verdicts
in the same order, routes, rules, moved, skipped and frozen interfaces, poll after
poll, on seeded random histories; and what a poll of unchanged peers costs. No root."""

from __future__ import annotations

import errno
import random

import pytest

from wgagent import config
from wgagent.model import Foreign, InterfaceState, Peer, Route
from wgagent.observer import KernelView
from wgagent.policy import (Desired, PlanMemo, RulePlan, conflicting, date_foreign, desired_rules, desired_state,
                            outranked, plan_routes, track_activity)
from wgagent.reconciler import Reconciler
from wgagent.reporter import Reporter
from wgagent.rtnl import Link
from wgagent.tracker import PeerTracker

from .test_daemon import Log

NOW = 1_700_000_000.0
KEYS = [f"{c * 43}=" for c in "ABCDEFGHIJ"]
# shared across the interfaces (both in main): two peers can claim one slot
PREFIXES = ["10.0.31.1/32", "10.0.31.2/32", "10.0.31.0/24", "fd31::1/128", "0.0.0.0/1", "128.0.0.0/1",
            "10.0.32.0/24"]
ENDPOINTS = [None, "192.0.2.1:51820", "10.0.31.1:4000", "10.0.31.77:4000", "[fd31::1]:51820", "198.51.100.3:9"]
BIRD = 12


def make_config(idle: float, seed: int) -> config.Config:
    return config.Config(
        path="t", agent=config.AgentConfig(handshake_timeout=60.0),
        interfaces=(config.InterfaceConfig("wg0", idle_timeout=idle, source_table=100 if seed % 2 else None),
                    config.InterfaceConfig("wg1", metric=5)),
        peers=(config.PeerConfig("a", "wg0", KEYS[0], "phone", idle_timeout=5.0),
               config.PeerConfig("b", "wg1", KEYS[1], "laptop", source_table=200),
               config.PeerConfig("c", "wg0", KEYS[2], route=False, source_table=300)))


class World:
    """Both interfaces' answers over time: most peers the same object as at the last
    poll, some with new counters, handshakes, endpoints or AllowedIPs, some gone or
    new, an interface now and then unreadable; clocks that move, the wall clock now
    and then stepping; other routers' claims on some slots."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.mono, self.wall = 1000.0, NOW
        self.peers = {"wg0": {}, "wg1": {}}
        self.order = {"wg0": [], "wg1": []}
        self.foreign: dict = {}

    def new_peer(self, key: str, old: Peer | None) -> Peer:
        r = self.rng
        ips = old.allowed_ips if old is not None and r.random() < 0.8 else tuple(r.sample(PREFIXES, r.randint(0, 3)))
        endpoint = old.endpoint if old is not None and r.random() < 0.7 else r.choice(ENDPOINTS)
        hs = old.last_handshake if old is not None and r.random() < 0.6 else \
            r.choice([0.0, self.wall - r.uniform(0, 90), self.wall + 5])
        rx = (old.rx_bytes if old is not None else 0) + r.choice([0, 0, 32, 1000])
        if r.random() < 0.05:
            rx = 0  # a reset
        return Peer(key, ips, endpoint, hs, rx, r.randint(0, 3), 0)

    def poll(self) -> list[InterfaceState]:
        r = self.rng
        step = r.choice([0.5, 1, 2, 3, 7, 20, 45])
        self.mono += step
        self.wall += step if r.random() > 0.05 else step + r.choice([86400 * 365, -3600])  # NTP at boot
        states = []
        for name in ("wg0", "wg1"):
            if r.random() < 0.1:
                states.append(InterfaceState(name, "uapi", None, "boom"))
                continue
            peers, order = self.peers[name], self.order[name]
            for key in KEYS[:7] if name == "wg0" else KEYS[3:]:
                old = peers.get(key)
                if old is None:
                    if r.random() < 0.3:
                        peers[key] = self.new_peer(key, None)
                        order.append(key)
                elif r.random() < 0.05:
                    del peers[key]
                    order.remove(key)
                elif r.random() < 0.3:
                    peers[key] = self.new_peer(key, old)
            if r.random() < 0.2:
                r.shuffle(order)
            states.append(InterfaceState(name, "uapi", tuple(peers[k] for k in order)))
        if r.random() < 0.2:
            slots = [(254, *p.split("/")) for p in PREFIXES]
            raw = {(t, d, int(n)): (Foreign(BIRD, r.choice([1, 32]), "192.0.2.254", "wg_s2s"),)
                   for t, d, n in r.sample(slots, r.randint(0, 3))}
            self.foreign = date_foreign(self.foreign or None, raw, self.mono)
        return states


@pytest.mark.parametrize("seed", range(40))
def test_the_tracker_decides_as_the_whole_poll_does(seed):
    world = World(seed)
    c = make_config(idle=[0.0, 10.0][seed % 2], seed=seed)
    tracker, memo, history = PeerTracker(), PlanMemo(), {}
    moved_ref: dict = {}
    moved_inc: dict = {}
    last, last_routes = set(), {}
    for n in range(150):
        if n == 90:
            c = make_config(idle=3.0, seed=seed + 1)  # a reload: a new Config object
        states = world.poll()
        mono, wall = world.mono, world.wall
        history = track_activity(history, states, mono, wall)
        ref = desired_state(c, states, wall, history, mono, memo, world.foreign, moved_ref)
        got = tracker.poll(c, states, wall, mono, world.foreign, moved_inc)
        where = f"seed {seed}, poll {n}"
        assert got.verdicts == ref.verdicts, where
        assert got.routes == ref.routes, where
        assert got.moved == ref.moved, where
        assert got.skipped == ref.skipped, where
        assert got.frozen == ref.frozen, where
        assert got.routes_in(world.foreign.keys()) == sorted(r for r in ref.routes if r.slot in world.foreign)
        assert sorted(outranked(got.routes_in(world.foreign), world.foreign, lambda i: frozenset([BIRD]))) == \
            sorted(outranked(ref.routes, world.foreign, lambda i: frozenset([BIRD]))), where
        if got.routes_added is not None:  # what the reconciler plans from
            added, removed = got.routes_added, got.routes_gone.keys()
            assert got.routes.keys() == (last - removed) | added, where
            assert removed <= last and not added & last and not removed & got.routes.keys()
            # who wanted them (owner() names it): the peer that had them
            assert all((last_routes[r].interface, last_routes[r].peer.public_key, last_routes[r].label)
                       == (v.interface, v.peer.public_key, v.label)
                       for r, v in got.routes_gone.items())
        last, last_routes = set(got.routes), dict(got.routes)
        desired_rules(c, got, [])
        desired_rules(c, ref, [])
        assert got.rules == ref.rules, where
        for v in ref.verdicts:
            assert tracker.activity(v.interface, v.peer.public_key) == history[(v.interface, v.peer.public_key)]
        deadlines = [v[3] for v in memo.verdicts.values() if v[3] != float("inf")]
        assert tracker.next_deadline() == (min(deadlines) if deadlines else None), where
        moved_ref, moved_inc = ref.moved, got.moved


def test_what_changed_is_what_a_pass_names():
    c = make_config(idle=0.0, seed=0)
    tracker = PeerTracker()
    a, b = Peer(KEYS[3], ("10.0.31.1/32",), None, NOW - 5, 1), Peer(KEYS[4], ("10.0.31.2/32",), None, NOW - 5, 1)
    assert tracker.poll(c, [InterfaceState("wg1", "uapi", (a, b))], NOW, 1000.0).changed is None  # a new config
    same = tracker.poll(c, [InterfaceState("wg1", "uapi", (a, b))], NOW + 1, 1001.0)
    assert same.changed == {} and len(same.verdicts) == 2
    b2 = b._replace(rx_bytes=2)
    d = tracker.poll(c, [InterfaceState("wg1", "uapi", (a, b2))], NOW + 2, 1002.0)
    assert list(d.changed) == [("wg1", KEYS[4])] and d.changed[("wg1", KEYS[4])].peer is b2
    d = tracker.poll(c, [InterfaceState("wg1", "uapi", (b2,))], NOW + 3, 1003.0)
    assert d.changed == {("wg1", KEYS[3]): None}
    # the handshake expires (60 s): the deadline names the peer, nothing else does
    assert tracker.next_deadline() == pytest.approx(1000.0 - 5 + 60)
    d = tracker.poll(c, [InterfaceState("wg1", "uapi", (b2,))], NOW + 60, 1055.0)
    assert d.changed[("wg1", KEYS[4])].reason == "handshake-expired" and not d.routes
    assert tracker.next_deadline() is None


def test_an_unchanged_poll_decides_nobody(monkeypatch):
    """10,000 peers, none changed: not one of them is decided again."""
    from wgagent import tracker as tracker_mod

    c = make_config(idle=0.0, seed=0)
    peers = tuple(Peer(f"{i:043d}=", (f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32",), "192.0.2.1:1",
                       NOW - 5, 1) for i in range(10000))
    tracker = PeerTracker()
    tracker.poll(c, [InterfaceState("wg1", "uapi", peers)], NOW, 1000.0)
    calls = []
    judge = tracker_mod.judge_peer
    monkeypatch.setattr(tracker_mod, "judge_peer", lambda *a: calls.append(a) or judge(*a))
    d = tracker.poll(c, [InterfaceState("wg1", "uapi", peers[:5000] + (peers[5000]._replace(rx_bytes=2),)
                                        + peers[5001:])], NOW + 1, 1001.0)
    assert len(calls) == 1 and len(d.routes) == 10000 and d.changed.keys() == {("wg1", peers[5000].public_key)}


class Kernel:
    """Routes as the kernel holds them; a change refused now and then (EPERM), a
    device down now and then."""

    def __init__(self, rng: random.Random):
        self.rng, self.owned = rng, set()

    def apply_routes(self, changes):
        out = []
        for verb, route, _ in changes:
            if self.rng.random() < 0.1:
                out.append(errno.EPERM)
                continue
            (self.owned.add if verb == "add" else self.owned.discard)(route)
            out.append(0)
        return out


@pytest.mark.parametrize("seed", range(20))
def test_the_plan_from_what_changed_is_the_whole_plan(seed):
    """The reconciler plans a tracker's pass from what changed since the one before
    (Desired.routes_added, routes_gone) and what it applied: the same plan as the
    whole difference, through refused changes, re-reads of the kernel, return-path
    routes that come and go, conflicts and unreadable interfaces."""
    world = World(seed)
    rng = random.Random(seed)
    c = make_config(idle=0.0, seed=seed)
    tracker, kernel = PeerTracker(), Kernel(rng)
    log = Reporter(Log(), str)
    r = Reconciler(kernel, log)
    moved: dict = {}
    path = Route(101, "0.0.0.0", 0, "eth0", 0, "198.51.100.1")
    for n in range(120):
        states = world.poll()
        if n == 0 or rng.random() < 0.1:  # a resync, or dirty after a refusal
            r.seen(KernelView(set(kernel.owned), dict(world.foreign), set(), [], world.mono))
        d = tracker.poll(c, states, world.wall, world.mono, r.view.foreign, moved)
        moved = d.moved
        if rng.random() < 0.5:
            d.path_routes[path] = "return_path wan"
        keep = d.frozen if rng.random() < 0.3 else set()
        wanted = set(d.routes) | set(d.path_routes)
        whole = plan_routes(wanted, r.view.owned, conflicting(wanted, r.view.foreign, lambda i: frozenset()), keep)
        plan, _ = r.plan(d, keep)
        assert (plan.add, plan.delete, plan.conflicts) == (whole.add, whole.delete, whole.conflicts), f"poll {n}"
        links = {name: Link(i, name, "wireguard", rng.random() > 0.1) for i, name in enumerate(("wg0", "wg1", "eth0"))}
        r.apply(plan, RulePlan(), links, d, Desired())
