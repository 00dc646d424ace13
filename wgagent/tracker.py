"""Per-peer state carried from poll to poll, so that a poll costs work only for the
peers whose answer changed. Pure, like policy.py, whose decisions it makes peer by peer.

The backends hand back the same Peer object for a peer whose answer is unchanged
(wg_uapi.parse, wg_kernel.merge_dump). Such a peer costs one dict lookup here and
nothing after it. A peer is decided again only when its Peer object is another one,
when it appears or goes, when its verdict's deadline comes (a handshake expiring, a
peer falling idle: policy._valid_until, kept in a heap), or when another router may
have claimed it (the hand-off: only peers with a routing daemon's route in one of
their slots, or held back as moved). Route claims are kept per slot, so a change
re-decides only the slots of the peers that changed.

A pass gives what policy.desired_state gives for the same polls (with the history
of policy.track_activity): the same verdicts in the same order, routes, moved,
skipped and frozen interfaces; tests run the two side by side.
"""

from __future__ import annotations

import heapq
from operator import attrgetter, itemgetter
from typing import Iterable, Mapping

from .config import Config
from .model import Foreign, InterfaceState, Peer, Route, Rule
from .policy import (MOVED, Activity, Desired, Moved, PeerVerdict, claims_for, fold_activity, hand_off, judge_peer,
                     peer_plan)

_FOREVER = float("inf")
_KEY = itemgetter(0)  # a Peer's public_key
_VERDICT = attrgetter("verdict")


class _Peer:
    """One peer between polls. A few hundred bytes a peer in all: the Peer itself is
    the parser's (shared), the plan mostly cached tuples (policy.peer_routes)."""

    __slots__ = ("seen", "peer", "activity", "plan", "base", "verdict", "until")

    def __init__(self):
        self.seen: Peer | None = None  # as last folded into the history (observe)
        self.peer: Peer | None = None  # as last decided (poll): an unchanged answer is this same object
        self.activity: Activity | None = None  # rx and handshake history (policy.track_activity)
        self.plan = None  # policy.PeerPlan: what the config makes of it
        self.base: PeerVerdict | None = None  # its presence, before the hand-off
        self.verdict: PeerVerdict | None = None  # what Desired.verdicts says (MOVED or base); None: not decided
        self.until: float | None = None  # the deadline of base as pushed on the heap; None: none pushed

    def rank(self) -> tuple:
        """The claim order of a slot: the newest handshake first (the ages at any
        moment compare as the dates do), then interface, then key (policy._newer)."""
        return -self.activity.handshake_mono, self.verdict.interface, self.peer.public_key


class _Iface:
    __slots__ = ("name", "observed", "pending", "peers", "recs", "keys", "verdicts", "frozen")

    def __init__(self, name: str):
        self.name = name
        self.observed: tuple | None = None  # the peers tuple last folded into the history
        self.pending: list | None = None  # its peers that changed since the one decided; None: not known
        self.peers: tuple | None = None  # the peers tuple last decided: the same one again needs no scan
        self.recs: dict[str, _Peer] = {}  # public key -> state
        self.keys: list[str] = []  # public keys in the backend's order (Desired.verdicts keeps it)
        self.verdicts: list[PeerVerdict] = []  # in that order
        self.frozen = True  # unread, or unreadable: every peer is decided at the next read


class PeerTracker:
    """The caller keeps one between polls and calls poll() with each poll's states.
    A new Config object starts afresh (the rx and handshake history stays, as the
    daemon's always has); an unreadable interface keeps its peers' history, and its
    peers are decided afresh when it can be read again."""

    def __init__(self):
        self.config: Config | None = None
        self.ifaces: dict[str, _Iface] = {}
        # slot -> the up peers whose routes want it: one _Peer, or a list whose first is
        # the winner; routes: the winners' routes (Desired.routes, kept up to date)
        self.claims: dict[tuple[int, str, int], object] = {}
        self.routes: dict[Route, PeerVerdict] = {}
        self.rule_claims: dict[Rule, object] = {}  # rule -> the up peers that want it (as claims)
        self.rule_owners: dict[Rule, str] = {}  # rule -> "peer <label>" of the first of them in verdict order
        self.contested: set[Rule] = set()  # rules more than one up peer wants
        self.skipping: set[_Peer] = set()  # up peers with routes left out (policy.peer_plan's skipped)
        self.skipped: list = []  # their Desired.skipped entries, in verdict order
        self.heap: list[tuple[float, str, str]] = []  # (deadline, interface, key); lazy deletion
        self.generation = 0  # counts the passes after which the peers' slots may differ (Daemon._interest)
        # one pass's work: the slots and rules touched (slot -> the winner and its route
        # before), the peers decided, the verdicts changed
        self._touched: dict = {}
        self._rules_touched: set = set()
        self._done: set = set()
        self._changes: dict | None = None
        self._stale: set = set()
        self._skipped_stale = False
        self._added: set[Route] = set()  # the winners' routes this pass added, and removed (with their verdicts)
        self._gone: dict[Route, PeerVerdict] = {}
        self.serial = 0

    # --- the loop's view

    def next_deadline(self) -> float | None:
        """The earliest moment (monotonic) a verdict of the last pass runs out: a pass
        then decides that peer again. Stale entries (a verdict replaced since) are
        dropped as they come to the top."""
        heap = self.heap
        while heap:
            until, name, key = heap[0]
            if self._current(until, name, key) is not None:
                return until
            heapq.heappop(heap)
        return None

    def activity(self, interface: str, key: str) -> Activity | None:
        it = self.ifaces.get(interface)
        rec = it.recs.get(key) if it is not None else None
        return rec.activity if rec is not None else None

    def slots(self) -> frozenset:
        """The slots of every readable peer's routes, up or not (the event filter's)."""
        return frozenset(slot for it in self.ifaces.values() if not it.frozen
                         for rec in it.recs.values() if rec.plan is not None for slot in rec.plan.slots)

    def get(self, key: tuple[str, str], default=None) -> Activity | None:
        """The history of (interface, public key), as track_activity's map has it."""
        return self.activity(*key) or default

    def routes_in(self, slots) -> list[Route]:
        """The routes of Desired.routes in these slots, sorted: where other protocols'
        routes sit (conflicts, outranked), found without a walk over every route."""
        out = []
        claims = self.claims
        for slot in claims.keys() & slots:
            c = claims[slot]
            out.append(_route_in((c[0] if c.__class__ is list else c).plan, slot))
        return sorted(out)

    # --- one pass

    def observe(self, states: Iterable[InterfaceState], mono: float, now: float) -> None:
        """Fold a poll into the history (policy.track_activity), as soon as it is read:
        rx growth and new handshakes are dated by this poll even if the pass goes no
        further. poll() does it itself for states not observed yet."""
        for state in states:
            peers = state.peers
            if peers is None:
                continue  # unreadable: its history stays
            it = self.ifaces.get(state.name)
            if it is None:
                it = self.ifaces[state.name] = _Iface(state.name)
            if peers is it.observed:
                continue
            recs = it.recs
            get = recs.get
            fresh = []
            for peer in peers:
                rec = get(peer[0])
                if rec is None:
                    rec = recs[peer[0]] = _Peer()
                elif rec.seen is peer:
                    continue
                rec.activity = fold_activity(rec.activity, peer, mono, now)
                rec.seen = peer
                fresh.append(peer)
            if len(recs) != len(peers):  # gone: the history goes now, the rest when decided
                for key in recs.keys() - set(map(_KEY, peers)):
                    recs[key].activity = recs[key].seen = None
            it.pending = fresh if it.observed is it.peers and not it.frozen else None
            it.observed = peers

    def poll(self, config: Config, states: Iterable[InterfaceState], now: float, mono: float,
             foreign: Mapping[tuple[int, str, int], tuple[Foreign, ...]] | None = None,
             moved: Mapping[tuple[str, str], Moved] | None = None) -> Desired:
        """Desired for this poll (policy.desired_state's), and in Desired.changed the
        peers whose verdict differs from the last pass's ((interface, key) -> verdict,
        None when it has none now); None after a new config: compare them all."""
        fresh = config is not self.config
        if fresh:
            self._restart(config)
        result = Desired()
        self._result, self._now, self._mono = result, now, mono
        self._foreign, self._moved = foreign or {}, moved or {}
        self._handing = bool(foreign) or bool(moved)  # a hub without a routing daemon skips all of it
        self._timeout = config.agent.handshake_timeout
        states = list(states)
        self.observe(states, mono, now)
        self._changes = result.changed = {}
        order: list[_Iface] = []
        for state in states:
            cfg = config.interface(state.name)
            if cfg is None:
                continue
            it = self.ifaces.get(state.name)
            if it is None:
                it = self.ifaces[state.name] = _Iface(state.name)
            if state.peers is None:
                result.frozen.add(state.name)
                if not it.frozen:
                    self._freeze(it)
                continue
            order.append(it)
            if it.frozen or state.peers is not it.peers:
                self._scan(it, cfg, state.peers)
        self._deadlines(config, mono)
        if self._handing:
            self._hand_offs(config)
        self._resolve(order)
        verdicts = result.verdicts
        for it in order:
            if it in self._stale:
                it.verdicts = list(map(_VERDICT, map(it.recs.__getitem__, it.keys)))
            verdicts += it.verdicts
        self.serial += 1
        result.serial, result.routes, result.routes_in = self.serial, self.routes, self.routes_in
        gone, added = self._gone, self._added
        again = added & gone.keys()  # won again (by another peer, or the same one's new verdict)
        for route in again:
            del gone[route]
        result.routes_gone = gone
        if not fresh:
            result.routes_added = added - again
        result.peer_rules = dict(self.rule_owners)
        result.skipped = list(self.skipped)
        if fresh:
            result.changed = None
        self._touched, self._rules_touched, self._done, self._stale = {}, set(), set(), set()
        self._added, self._gone = set(), {}
        self._changes = self._result = None
        return result

    def _restart(self, config: Config) -> None:
        """A new config: every verdict, plan and claim goes; the history stays, for the
        interfaces still configured."""
        self.config = config
        kept = {}
        for name, it in self.ifaces.items():
            if config.interface(name) is None:
                continue
            it.frozen, it.peers, it.pending = True, None, None
            for rec in it.recs.values():
                rec.plan = rec.base = rec.verdict = rec.until = None
            kept[name] = it
        self.ifaces = kept
        self.claims, self.routes, self.rule_claims, self.rule_owners = {}, {}, {}, {}
        self.skipping, self.skipped, self.heap, self.contested = set(), [], [], set()
        self.generation += 1

    def _freeze(self, it: _Iface) -> None:
        """An interface that cannot be read: its peers claim nothing until it can (the
        caller keeps their last verdicts); their history stays."""
        for rec in it.recs.values():
            if rec.verdict is not None and rec.verdict.up:
                self._unclaim(rec, rec.plan)
            rec.base = rec.verdict = rec.until = None
        it.frozen, it.peers, it.pending, it.verdicts = True, None, None, []
        self.generation += 1

    def _scan(self, it: _Iface, cfg, peers: tuple[Peer, ...]) -> None:
        recs = it.recs
        get = recs.get
        if it.frozen:
            changed = peers
            self.generation += 1
        elif it.pending is not None and it.observed is peers:
            changed = it.pending  # observe() found them
        else:
            changed = [p for p in peers if (r := get(p[0])) is None or r.peer is not p]
        name = it.name
        for peer in changed:
            self._decide(it, cfg, recs[peer[0]], peer)
        keys = list(map(_KEY, peers))
        if len(recs) != len(keys):  # peers removed
            for key in recs.keys() - set(keys):
                rec = recs.pop(key)
                if rec.verdict is not None and rec.verdict.up:
                    self._unclaim(rec, rec.plan)
                if rec.plan is not None and rec.plan.routes:
                    self.generation += 1
                self._changes[(name, key)] = None
        if changed or keys != it.keys:
            self._stale.add(it)
            if keys != it.keys:  # the first in verdict order owns a shared rule, skipped routes go in that order
                self._rules_touched.update(self.contested)
                self._skipped_stale = self._skipped_stale or bool(self.skipping)
        it.keys, it.peers, it.pending, it.frozen = keys, peers, None, False

    def _deadlines(self, config: Config, mono: float) -> None:
        """Decide again the peers whose verdict ran out (not before: it stood)."""
        heap = self.heap
        while heap and heap[0][0] <= mono:
            until, name, key = heapq.heappop(heap)
            rec = self._current(until, name, key)
            if rec is not None and rec not in self._done:
                self._decide(self.ifaces[name], config.interface(name), rec, rec.peer)
        if len(heap) > 2 * sum(len(it.recs) for it in self.ifaces.values()) + 64:
            # replaced verdicts' entries piling up (every peer's rx moving with idle_timeout set)
            self.heap = [(rec.until, it.name, key) for it in self.ifaces.values() for key, rec in it.recs.items()
                         if rec.until is not None and rec.until != _FOREVER]
            heapq.heapify(self.heap)

    def _current(self, until: float, name: str, key: str) -> _Peer | None:
        it = self.ifaces.get(name)
        rec = it.recs.get(key) if it is not None else None
        return rec if rec is not None and rec.until == until else None

    def _hand_offs(self, config: Config) -> None:
        """The hand-off again for the peers it may concern without a change of their
        own: those held back (moved), and the up peers with a route of another
        protocol in one of their slots. For any other, hand_off keeps the verdict."""
        cands = []
        for name, key in self._moved:
            it = self.ifaces.get(name)
            rec = it.recs.get(key) if it is not None and not it.frozen else None
            if rec is not None:
                cands.append((it, rec))
        if self._foreign:
            for slot in self._foreign.keys() & self.claims.keys():
                c = self.claims[slot]
                for rec in (c if c.__class__ is list else (c,)):
                    cands.append((self.ifaces[rec.verdict.interface], rec))
        for it, rec in cands:
            if rec not in self._done and rec.base is not None:
                self._done.add(rec)
                self._set(it, rec, self._hand(config.interface(it.name), rec, rec.base, rec.plan), rec.plan)

    # --- one peer

    def _decide(self, it: _Iface, cfg, rec: _Peer, peer: Peer) -> None:
        self._done.add(rec)
        rec.peer = peer
        act, plan = rec.activity, rec.plan
        if plan is None or plan.allowed_ips != peer.allowed_ips or plan.endpoint != peer.endpoint:
            new = peer_plan(self.config, cfg, peer)
            if plan is None or new.routes != plan.routes:
                self.generation += 1
            plan = new
        base, until = judge_peer(it.name, peer, plan, act, self._now, self._mono, self._timeout)
        if until != _FOREVER and until != rec.until:
            heapq.heappush(self.heap, (until, it.name, peer[0]))
        rec.until, rec.base = until, base
        self._set(it, rec, self._hand(cfg, rec, base, plan) if self._handing and plan.routes else base, plan)

    def _hand(self, cfg, rec: _Peer, base: PeerVerdict, plan) -> PeerVerdict:
        """policy.hand_off for one peer: its verdict, and its record in Desired.moved."""
        if not (self._handing and plan.routes):
            return base
        peer = rec.peer
        key = (base.interface, peer.public_key)
        record = self._moved.get(key)
        verdict = base
        if base.up:
            found = claims_for(plan.routes, self._foreign, cfg) if self._foreign else ()
            decision, record = hand_off(peer.last_handshake, rec.activity.handshake_mono, found, record,
                                        peer.rx_bytes, self._mono)
            if decision == MOVED:
                verdict = base._replace(up=False, reason=MOVED)
        elif record is not None and record.handshake != peer.last_handshake:
            record = None  # a newer handshake (the peer is down for another reason)
        if record is not None:
            self._result.moved[key] = record
        return verdict

    def _set(self, it: _Iface, rec: _Peer, verdict: PeerVerdict, plan) -> None:
        old, old_plan = rec.verdict, rec.plan
        if old is not None and old.reason == MOVED and old == verdict:  # made again from the same: keep it
            rec.plan = plan
            return
        rec.verdict = verdict
        self._changes[(it.name, rec.peer.public_key)] = verdict
        self._stale.add(it)
        if old is not None and old.up:
            if verdict.up and old_plan.routes is plan.routes and old_plan.rules is plan.rules \
                    and old_plan.skipped is plan.skipped:
                # up before and now with the same claims (its counters moved): only the
                # verdict its routes map to is new, and in a shared slot its rank may be
                rec.plan = plan
                for slot, route in zip(plan.slots, plan.routes):
                    if self.claims[slot] is rec:
                        self.routes[route] = verdict
                    else:
                        self._touch(slot)
                if rec in self.skipping:
                    self._skipped_stale = True
                return
            self._unclaim(rec, old_plan)  # the winners before are found by the plans before
        rec.plan = plan
        if verdict.up:
            self._claim(rec, plan)

    def _claim(self, rec: _Peer, plan) -> None:
        for slot in plan.slots:
            self._touch(slot)
            _add(self.claims, slot, rec)
        for rule in plan.rules:
            self._rules_touched.add(rule)
            if _add(self.rule_claims, rule, rec):
                self.contested.add(rule)
        if plan.skipped:
            self.skipping.add(rec)
            self._skipped_stale = True

    def _unclaim(self, rec: _Peer, plan) -> None:
        for slot in plan.slots:
            self._touch(slot)
            _remove(self.claims, slot, rec)
        for rule in plan.rules:
            self._rules_touched.add(rule)
            if not _remove(self.rule_claims, rule, rec):
                self.contested.discard(rule)
        if rec in self.skipping:
            self.skipping.discard(rec)
            self._skipped_stale = True

    def _touch(self, slot) -> None:
        """Remember the slot's winner and its route as they were before this pass."""
        if slot not in self._touched:
            c = self.claims.get(slot)
            if c is None:
                self._touched[slot] = None
            else:
                w = c[0] if c.__class__ is list else c
                self._touched[slot] = _route_in(w.plan, slot)

    def _resolve(self, order: list[_Iface]) -> None:
        """The touched slots' winners, rules' owners and the skipped routes."""
        routes, claims = self.routes, self.claims
        for slot, before in self._touched.items():
            c = claims.get(slot)
            if before is not None:
                self._gone[before] = routes.pop(before)
            if c is None:
                continue
            if c.__class__ is list:
                w = min(c, key=_Peer.rank)
                if c[0] is not w:
                    c.remove(w)
                    c.insert(0, w)
            else:
                w = c
            route = _route_in(w.plan, slot)
            routes[route] = w.verdict
            self._added.add(route)
        if self._rules_touched:
            position = _positions(order)
            for rule in self._rules_touched:
                c = self.rule_claims.get(rule)
                if c is None:
                    self.rule_owners.pop(rule, None)
                    continue
                first = min(c, key=position) if c.__class__ is list else c
                self.rule_owners[rule] = f"peer {first.verdict.label}"
        if self._skipped_stale:
            self._skipped_stale = False
            position = _positions(order)
            self.skipped = [(rec.verdict, r, rec.plan.endpoint_address)
                            for rec in sorted(self.skipping, key=position) for r in rec.plan.skipped]


def _route_in(plan, slot) -> Route:
    for s, route in zip(plan.slots, plan.routes):
        if s == slot:
            return route
    raise KeyError(slot)


def _add(claims: dict, key, rec: _Peer) -> bool:
    """True: the key has more than one claimant now."""
    c = claims.get(key)
    if c is None:
        claims[key] = rec
        return False
    if c.__class__ is list:
        c.append(rec)
    else:
        claims[key] = [c, rec]
    return True


def _remove(claims: dict, key, rec: _Peer) -> bool:
    """True: the key has more than one claimant still."""
    c = claims[key]
    if c.__class__ is not list:
        del claims[key]
        return False
    c.remove(rec)
    if len(c) == 1:
        claims[key] = c[0]
        return False
    return True


def _positions(order: list[_Iface]):
    """A sort key: a peer's place in Desired.verdicts (interface, then the backend's
    order). Made on first use, for the few peers that share a rule or skip a route."""
    index: dict[str, dict[str, int]] = {}
    rank = {it.name: i for i, it in enumerate(order)}

    def position(rec: _Peer) -> tuple[int, int]:
        name = rec.verdict.interface
        where = index.get(name)
        if where is None:
            it = next(i for i in order if i.name == name)
            where = index[name] = dict(zip(it.keys, range(len(it.keys))))
        return rank[name], where[rec.peer.public_key]

    return position
