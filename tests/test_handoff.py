"""The hand-off between routers ("the newest connection wins"), table-driven, no root:
(peer verdict, foreign claims, handshake at the time of the move) -> keep / moved / back,
the dating of other protocols' routes, conflicts against yield_to, and the same rule
through desired_state over several polls."""

import pytest

from wgagent import config
from wgagent.model import Foreign, InterfaceState, Peer, Route
from wgagent.policy import (BACK, KEEP, MOVED, SETTLE_SECONDS, UP, Moved, claims_for, conflicting, date_foreign, desired_state,
                            hand_off, outranked, plan_routes, track_activity, uncovered)

K1 = "A" * 43 + "="
K2 = "B" * 43 + "="
NOW = 1_700_000_000.0
BIRD, STATIC, BABEL = 12, 4, 42

R4 = Route(254, "10.0.31.5", 32, "wg0", 1)
R6 = Route(254, "fd31::5", 128, "wg0", 1)
VIA2 = Foreign(BIRD, 32, "10.0.32.21", "wg_s2s_op2", since=105.0)
VIA3 = Foreign(BIRD, 32, "10.0.32.31", "wg_s2s_op3", since=95.0)
ON_WG0 = Foreign(BIRD, 32, "", "wg0", since=105.0)

HAND_OFF = [
    # name, handshake value, its monotonic date, claims, record, expected decision, record kept
    ("no claim: keep", NOW, 100.0, [], None, KEEP, None),
    ("a claim older than our handshake: the other router's stale view, keep", NOW, 100.0, [(R4, VIA3)], None,
     KEEP, None),
    ("a claim newer than our handshake: it connected there since, moved", NOW, 100.0, [(R4, VIA2)], None,
     MOVED, Moved(NOW, R4, VIA2)),
    ("the newest of two sites' claims names the move", NOW, 100.0, [(R4, VIA3), (R6, VIA2)], None,
     MOVED, Moved(NOW, R6, VIA2)),
    ("two sites' claims, our handshake the newest: keep", NOW, 110.0, [(R4, VIA3), (R6, VIA2)], None, KEEP, None),
    ("a claim dated with our handshake: ours is as new, keep", NOW, 105.0, [(R4, VIA2)], None, KEEP, None),
    ("an undated handshake loses to any claim", NOW, None, [(R4, VIA3)], None, MOVED, Moved(NOW, R4, VIA3)),
    ("moved, the same handshake: held back, claims or none", NOW, 100.0, [], Moved(NOW, R4, VIA2), MOVED,
     Moved(NOW, R4, VIA2)),
    ("moved, the same handshake, the claim went: still held back", NOW, 100.0, [], Moved(NOW, R4, VIA2), MOVED,
     Moved(NOW, R4, VIA2)),
    ("moved, a newer handshake, the old claim still there: back", NOW + 50, 150.0, [(R4, VIA2)],
     Moved(NOW, R4, VIA2), BACK, None),
    ("moved, a newer handshake, no claim: back", NOW + 50, 150.0, [], Moved(NOW, R4, VIA2), BACK, None),
    ("moved, a newer handshake, but a claim newer still: moved again", NOW + 50, 100.0, [(R4, VIA2)],
     Moved(NOW - 50, R4, VIA3), MOVED, Moved(NOW + 50, R4, VIA2)),
    ("a handshake stamped lower after a clock step is a new one too", NOW - 3600, 150.0, [(R4, VIA2)],
     Moved(NOW, R4, VIA2), BACK, None),
]


@pytest.mark.parametrize("name,hs,hs_mono,claims,record,decision,kept", HAND_OFF, ids=[c[0] for c in HAND_OFF])
def test_hand_off(name, hs, hs_mono, claims, record, decision, kept):
    assert hand_off(hs, hs_mono, claims, record) == (decision, kept)


HELD = Moved(NOW, R4, VIA2, at=200.0)
BY_RX = [
    # name, claims, record, rx now, read at (monotonic), expected decision, record kept
    ("held back at this read: dated by it", [(R4, VIA2)], None, 500, 200.0, MOVED, HELD),
    ("rx grew within the settle time (in flight from before the move): held back, no baseline yet",
     [], HELD, 600, 200.0 + SETTLE_SECONDS / 2, MOVED, HELD),
    ("the first read after the settle time: the baseline", [(R4, VIA2)], HELD, 600, 200.0 + SETTLE_SECONDS,
     MOVED, HELD._replace(rx=600)),
    ("no packet since the baseline: held back", [(R4, VIA2)], HELD._replace(rx=600), 600, 210.0, MOVED,
     HELD._replace(rx=600)),
    ("packets since the baseline: it sends here, the claim was older news: back", [(R4, VIA2)],
     HELD._replace(rx=600), 632, 210.0, BACK, HELD._replace(at=210.0, back=True)),
    ("back by its packets: a claim from before that read stays older news", [(R4, VIA2)],
     HELD._replace(at=210.0, back=True), 700, 220.0, KEEP, HELD._replace(at=210.0, back=True)),
    ("back by its packets: a claim newer than that read is a move", [(R4, VIA2._replace(since=215.0))],
     HELD._replace(at=210.0, back=True), 700, 220.0, MOVED, Moved(NOW, R4, VIA2._replace(since=215.0), at=220.0)),
    ("a counter that went down (reset) is a new baseline, not a sign of life", [], HELD._replace(rx=600), 10,
     210.0, MOVED, HELD._replace(rx=10)),
    ("a newer handshake brings it back whatever its rx", [(R4, VIA2)], HELD._replace(rx=600), 600, 300.0, BACK,
     None),
]


@pytest.mark.parametrize("name,claims,record,rx,mono,decision,kept", BY_RX, ids=[c[0] for c in BY_RX])
def test_hand_off_by_rx(name, claims, record, rx, mono, decision, kept):
    hs = NOW + 50 if name.startswith("a newer handshake") else NOW
    assert hand_off(hs, 100.0 if hs == NOW else 290.0, claims, record, rx, mono) == (decision, kept)


def iface(**kw):
    return config.InterfaceConfig("wg0", **kw)


CLAIMS = [
    # name, interface options, routes in the slot, expected claims
    ("bird via a site tunnel", {}, (VIA2,), [(R4, VIA2)]),
    ("a routing daemon's route on the peer's own device is none", {}, (ON_WG0,), []),
    ("a static route is a conflict, not a claim", {}, (VIA2._replace(proto=STATIC),), []),
    ("yield_to names the protocols", {"yield_to": frozenset({BABEL})}, (VIA2, VIA2._replace(proto=BABEL)),
     [(R4, VIA2._replace(proto=BABEL))]),
    ("yield_to none: nothing is a claim", {"yield_to": frozenset()}, (VIA2,), []),
]


@pytest.mark.parametrize("name,opts,routes,expected", CLAIMS, ids=[c[0] for c in CLAIMS])
def test_claims_for(name, opts, routes, expected):
    assert claims_for([R4], {R4.slot: routes}, iface(**opts)) == expected


def test_conflicts_leave_out_the_protocols_an_interface_yields_to():
    foreign = {R4.slot: (VIA2,), R6.slot: (VIA2._replace(proto=STATIC), VIA2)}
    path = Route(100, "0.0.0.0", 0, "wan", 0, "198.51.100.1")
    foreign[path.slot] = (Foreign(BIRD, 32, "198.51.100.1", "wan"),)
    yields = {"wg0": config.DEFAULT_YIELD_TO}.get
    held = conflicting([R4, R6, path], foreign, lambda name: yields(name, frozenset()))
    assert held == {R6.slot: STATIC, path.slot: BIRD}, "a return path's route yields to nobody"
    plan = plan_routes({R4, R6}, set(), held)
    assert plan.add == [R4] and plan.conflicts == [(R6, STATIC)]
    # without yield_to (the behaviour before it): every route of others is a conflict
    assert conflicting([R4], foreign, lambda name: frozenset()) == {R4.slot: BIRD}


def test_outranked_names_a_routing_daemons_route_at_or_below_our_metric():
    v6_default = Route(254, "fd31::5", 128, "wg0", 1024)  # metric 0: the kernel's 1024
    foreign = {R4.slot: (VIA2,), v6_default.slot: (VIA2._replace(gateway="fe80::2"),)}
    yields = lambda name: config.DEFAULT_YIELD_TO  # noqa: E731
    assert outranked([R4, v6_default], foreign, yields) == [(v6_default, foreign[v6_default.slot][0])]
    assert outranked([R4._replace(metric=32)], foreign, yields) == [(R4._replace(metric=32), VIA2)]


DATES = [
    # name, old view (None: the first read), new view, routes held by us, expected dates
    ("first read, beside an adopted route of ours: oldest", None, (VIA2._replace(since=0),), {R4.slot},
     [float("-inf")]),
    ("first read, nothing of ours there: new", None, (VIA2._replace(since=0),), set(), [200.0]),
    ("seen before: keeps its date", (VIA2,), (VIA2._replace(since=0),), {R4.slot}, [105.0]),
    ("a changed next hop is a new route", (VIA3,), (VIA2._replace(since=0),), set(), [200.0]),
    ("the other one of two keeps its date", (VIA3,), (VIA3._replace(since=0), VIA2._replace(since=0)), set(),
     [95.0, 200.0]),
]


@pytest.mark.parametrize("name,old,new,held,dates", DATES, ids=[c[0] for c in DATES])
def test_date_foreign(name, old, new, held, dates):
    got = date_foreign(None if old is None else {R4.slot: old}, {R4.slot: new}, 200.0, held)
    assert [f.since for f in got[R4.slot]] == dates


def test_uncovered_pool_prefixes():
    assert uncovered(["10.0.31.5/32", "fd31::5/128"], ["0.0.0.0/0", "::/0"]) == []
    assert uncovered(["10.0.31.5/32", "fd31::5/128"], ["10.0.31.0/24"]) == ["fd31::5/128"]
    assert uncovered(["10.0.31.5/32"], ["192.168.36.0/24", "::/0"]) == ["10.0.31.5/32"]


# --- the rule through desired_state, poll by poll, as the daemon runs it


def cfg(**kw):
    return config.Config(path="t", interfaces=(config.InterfaceConfig("wg0", metric=1, **kw),),
                         peers=(config.PeerConfig("phone", "wg0", K1, "phone"),))


class Router:
    """One router's decisions over time: polls with the phone's handshake and rx as
    this router sees them, the routes of others as its kernel holds them."""

    def __init__(self, **kw):
        self.config = cfg(**kw)
        self.activity, self.moved, self.foreign = {}, {}, {}

    def poll(self, mono, handshake, rx, foreign=None):
        if foreign is not None:
            self.foreign = date_foreign(self.foreign, foreign, mono)
        peer = Peer(K1, ("10.0.31.5/32", "fd31::5/128"), "192.0.2.2:51820", handshake, rx)
        states = [InterfaceState("wg0", "uapi", (peer,))]
        wall = NOW + mono
        self.activity = track_activity(self.activity, states, mono, wall)
        d = desired_state(self.config, states, wall, self.activity, mono, None, self.foreign, self.moved)
        self.moved = d.moved
        v = d.verdicts[0]
        return v.reason if not v.up else UP, sorted(r.prefix for r in d.routes)


BOTH = ["10.0.31.5/32", "fd31::5/128"]


def claim(via):
    return {R4.slot: (via._replace(since=0),), R6.slot: (via._replace(gateway="fe80::2", since=0),)}


def test_the_old_router_lets_go_when_the_new_one_claims_and_only_a_new_handshake_brings_it_back():
    old = Router(idle_timeout=20)
    assert old.poll(10, NOW + 5, 100) == (UP, BOTH)
    assert old.poll(11, NOW + 5, 200, foreign={}) == (UP, BOTH)
    # the phone connects at op2: op2's route arrives through BIRD
    assert old.poll(12, NOW + 5, 200, foreign=claim(VIA2)) == (MOVED, [])
    assert old.poll(12.2, NOW + 5, 300) == (MOVED, []), "a packet in flight (rx grew) does not bring it back"
    assert old.poll(13, NOW + 5, 300) == (MOVED, []), "the baseline"
    assert old.poll(14, NOW + 5, 300, foreign={}) == (MOVED, []), "nor the claim going"
    assert old.poll(40, NOW + 5, 300)[0] == "idle", "idle after idle_timeout, still remembered"
    assert old.poll(41, NOW + 5, 300) == ("idle", []), "still idle: nothing arrived"
    # the phone comes back: a new handshake here
    assert old.poll(50, NOW + 49, 500, foreign=claim(VIA2)) == (UP, BOTH)
    assert old.moved == {}


def test_a_late_claim_of_an_older_connection_lets_go_until_the_peers_packets_say_it_is_here():
    """The phone was at op2, then connected here; Babel's update of its op2 route
    reaches this router just after the handshake here (a next hop that changes from
    op1 to op2): it looks like a move. Its keepalives keep coming here, so it comes
    back without a new handshake; a client that really went would send nothing here."""
    r = Router(idle_timeout=20)
    assert r.poll(10, 0.0, 0, foreign=claim(VIA3)) == ("no-handshake", [])
    assert r.poll(20, NOW + 19.9, 100) == (UP, BOTH)
    assert r.poll(20.3, NOW + 19.9, 200, foreign=claim(VIA2)) == (MOVED, [])
    assert r.poll(21, NOW + 19.9, 232) == (MOVED, []), "the baseline, after the settle time"
    assert r.poll(22, NOW + 19.9, 264) == (UP, BOTH), "a keepalive since: back"
    assert r.poll(23, NOW + 19.9, 296, foreign=claim(VIA2)) == (UP, BOTH), "the same claim: older news still"
    assert r.poll(24, NOW + 19.9, 296, foreign=claim(VIA3)) == (MOVED, []), "a claim newer than that: it moved"
    assert r.poll(30, NOW + 29, 400, foreign=claim(VIA3)) == (UP, BOTH), "a new handshake here"
    assert r.moved == {}


def test_the_new_router_keeps_the_peer_beside_the_old_routers_stale_claim():
    new = Router(idle_timeout=20)
    assert new.poll(10, 0.0, 0, foreign=claim(VIA3)) == ("no-handshake", [])
    assert new.poll(20, NOW + 19.5, 100) == (UP, BOTH), "the claim predates its handshake here"
    assert new.poll(21, NOW + 19.5, 200, foreign=claim(VIA3)) == (UP, BOTH)
    # the stale claim changes its next hop (RTM_NEWROUTE replacing it): a new claim,
    # newer than our handshake: the phone has moved on to op2
    assert new.poll(22, NOW + 19.5, 200, foreign=claim(VIA2)) == (MOVED, [])


def test_back_and_forth_within_three_seconds():
    a = Router(idle_timeout=20)
    assert a.poll(10, NOW + 10, 100, foreign={}) == (UP, BOTH)
    assert a.poll(11, NOW + 10, 100, foreign=claim(VIA2)) == (MOVED, [])
    assert a.poll(13, NOW + 12.5, 150) == (UP, BOTH), "back after 2 s: the claim (11) is older than 13"
    assert a.poll(14, NOW + 12.5, 200, foreign=claim(VIA2)) == (UP, BOTH), "the same claim: still ours"


def test_yield_to_none_makes_bird_routes_conflicts_again():
    r = Router(yield_to=frozenset())
    assert r.poll(10, NOW + 10, 100, foreign=claim(VIA2)) == (UP, BOTH), "no hand-off"
