"""The pure core, table-driven: presence, desired routes, plans. No root."""

import pytest

from wgagent import config
from wgagent.model import InterfaceState, Peer, Route
from wgagent.policy import (EXPIRED, IDLE, NEVER, UP, Activity, PlanMemo, desired_state, handshake_age, plan_routes,
                            presence, track_activity)

K1 = "A" * 43 + "="
K2 = "B" * 43 + "="
NOW = 1_700_000_000.0


def cfg(**iface):
    return config.Config(path="t", interfaces=(config.InterfaceConfig("wg0", **iface),))


PRESENCE = [
    # name, last handshake age (None=never), handshake_timeout, idle_timeout, seconds since rx grew, expected
    ("never", None, 180, 0, None, (False, NEVER)),
    ("fresh", 5, 180, 0, None, (True, UP)),
    ("just under timeout", 179.9, 180, 0, None, (True, UP)),
    ("at timeout", 180, 180, 0, None, (False, EXPIRED)),
    ("expired", 500, 180, 0, None, (False, EXPIRED)),
    ("future stamp (clock stepped back)", -30, 180, 0, None, (True, UP)),
    ("idle off ignores silence", 5, 180, 0, 1000, (True, UP)),
    ("idle on, rx grew recently", 5, 180, 10, 3, (True, UP)),
    ("idle on, silent too long", 5, 180, 10, 10, (False, IDLE)),
    ("expired wins over idle", 200, 180, 10, 50, (False, EXPIRED)),
    ("idle on but no history yet", 5, 180, 10, None, (True, UP)),
]


@pytest.mark.parametrize("name,age,hs_timeout,idle,quiet,expected", PRESENCE, ids=[p[0] for p in PRESENCE])
def test_presence(name, age, hs_timeout, idle, quiet, expected):
    peer = Peer(K1, last_handshake=0.0 if age is None else NOW - age)
    activity = None if quiet is None else Activity(100, 1000.0 - quiet)
    assert presence(peer, NOW, hs_timeout, idle, activity, 1000.0) == expected


def test_track_activity_keeps_since_while_rx_unchanged_and_history_of_unreadable():
    s1 = InterfaceState("wg0", "uapi", (Peer(K1, rx_bytes=10), Peer(K2, rx_bytes=5)))
    a = track_activity({}, [s1], 100.0)
    assert a[("wg0", K1)][:2] == (10, 100.0)
    s2 = InterfaceState("wg0", "uapi", (Peer(K1, rx_bytes=10), Peer(K2, rx_bytes=9)))
    b = track_activity(a, [s2], 105.0)
    assert b[("wg0", K1)][:2] == (10, 100.0)  # unchanged: since stays
    assert b[("wg0", K2)][:2] == (9, 105.0)  # grew: since moves
    c = track_activity(b, [InterfaceState("wg0", "uapi", None, "boom")], 110.0)
    assert c == b  # unreadable: history kept
    d = track_activity(b, [InterfaceState("wg0", "uapi", (Peer(K2, rx_bytes=9),))], 111.0)
    assert ("wg0", K1) not in d  # a removed peer is forgotten


RX = [
    # name, rx counter at polls 1, 2, 3 (one a second), expected (rx_bytes, since) after poll 3
    ("grows", (10, 20, 30), (30, 3.0)),
    ("flat", (10, 10, 10), (10, 1.0)),
    ("reset (peer re-added, interface re-created): a new baseline, no sign of life", (10, 20, 5), (5, 2.0)),
    ("reset to zero", (10, 10, 0), (0, 1.0)),
    ("grows again after a reset", (10, 0, 5), (5, 3.0)),
]


@pytest.mark.parametrize("name,counters,expected", RX, ids=[r[0] for r in RX])
def test_track_activity_rx(name, counters, expected):
    a = {}
    for mono, rx in enumerate(counters, 1):
        a = track_activity(a, [InterfaceState("wg0", "uapi", (Peer(K1, rx_bytes=rx),))], float(mono))
    assert (a[("wg0", K1)].rx_bytes, a[("wg0", K1)].since) == expected


def test_an_rx_reset_does_not_wake_an_idle_peer():
    c, peer, a = cfg(idle_timeout=10), up(K1, ["10.0.31.5/32"], rx_bytes=500), {}
    for mono, rx in ((0.0, 500), (20.0, 500), (21.0, 0)):
        a = track_activity(a, [InterfaceState("wg0", "uapi", (peer._replace(rx_bytes=rx),))], mono)
        v = desired_state(c, [InterfaceState("wg0", "uapi", (peer._replace(rx_bytes=rx),))], NOW, a, mono).verdicts[0]
    assert (v.up, v.reason) == (False, IDLE)


def up(key, ips, age=1.0, **kw):
    return Peer(key, tuple(ips), last_handshake=NOW - age, **kw)


DESIRED = [
    ("v4 and v6 host routes",
     dict(), [up(K1, ["10.0.31.5/32", "fd31::5/128"])],
     {Route(254, "10.0.31.5", 32, "wg0", 0), Route(254, "fd31::5", 128, "wg0", 1024)}),
    ("down peer has no route",
     dict(), [Peer(K1, ("10.0.31.5/32",), last_handshake=NOW - 500)], set()),
    ("never handshaken", dict(), [Peer(K1, ("10.0.31.5/32",))], set()),
    ("default routes skipped",
     dict(), [up(K1, ["0.0.0.0/0", "::/0", "10.0.31.5/32"])], {Route(254, "10.0.31.5", 32, "wg0", 0)}),
    ("default routes kept with route_default",
     dict(route_default=True), [up(K1, ["0.0.0.0/0", "::/0"])],
     {Route(254, "0.0.0.0", 0, "wg0", 0), Route(254, "::", 0, "wg0", 1024)}),
    ("table and metric", dict(table=100, metric=7), [up(K1, ["192.168.36.0/24"])],
     {Route(100, "192.168.36.0", 24, "wg0", 7)}),
    ("v6 metric as the kernel stores it", dict(metric=5), [up(K1, ["fd31::/64"])],
     {Route(254, "fd31::", 64, "wg0", 5)}),
    ("same prefix twice: newer handshake wins",
     dict(), [up(K1, ["10.0.31.9/32"], age=50), up(K2, ["10.0.31.9/32"], age=3)],
     {Route(254, "10.0.31.9", 32, "wg0", 0)}),
]


@pytest.mark.parametrize("name,iface,peers,expected", DESIRED, ids=[d[0] for d in DESIRED])
def test_desired_routes(name, iface, peers, expected):
    d = desired_state(cfg(**iface), [InterfaceState("wg0", "uapi", tuple(peers))], NOW, {}, 0.0)
    assert set(d.routes) == expected


V4_EP, V6_EP = "203.0.113.7:51820", "[2001:db8::1]:51820"

ENDPOINTS = [
    # name, interface options, AllowedIPs, endpoint, routed prefixes, skipped prefixes
    ("wg-quick halves: the half holding the endpoint is skipped", {},
     ["0.0.0.0/1", "128.0.0.0/1", "10.0.31.5/32"], V4_EP, {"0.0.0.0/1", "10.0.31.5/32"}, ["128.0.0.0/1"]),
    ("site peer whose AllowedIPs hold its public address", {},
     ["192.168.36.0/24", "203.0.113.0/24"], V4_EP, {"192.168.36.0/24"}, ["203.0.113.0/24"]),
    ("the endpoint's own host route", {}, ["203.0.113.7/32", "10.0.31.5/32"], V4_EP, {"10.0.31.5/32"},
     ["203.0.113.7/32"]),
    ("the address next door is no cover", {}, ["203.0.113.6/32", "203.0.113.8/31"], V4_EP,
     {"203.0.113.6/32", "203.0.113.8/31"}, []),
    ("v6 endpoint", {}, ["2001:db8::/32", "fd31::/64", "10.0.0.0/8"], V6_EP, {"fd31::/64", "10.0.0.0/8"},
     ["2001:db8::/32"]),
    ("a v4 endpoint is not covered by v6 prefixes", {}, ["::/1", "8000::/1"], V4_EP, {"::/1", "8000::/1"}, []),
    ("scoped link-local endpoint: sent out of its own link whatever the routes", {},
     ["fe80::/10", "fd31::/64"], "[fe80::1%3]:51820", {"fe80::/10", "fd31::/64"}, []),
    ("no endpoint yet", {}, ["0.0.0.0/1", "128.0.0.0/1"], None, {"0.0.0.0/1", "128.0.0.0/1"}, []),
    ("route_default: the default route covers every endpoint of its family", dict(route_default=True),
     ["0.0.0.0/0", "::/0"], V4_EP, {"::/0"}, ["0.0.0.0/0"]),
    ("table local (the kernel's first rule)", dict(table=255), ["128.0.0.0/1"], V4_EP, set(), ["128.0.0.0/1"]),
    ("table default (the kernel's last rule)", dict(table=253), ["128.0.0.0/1"], V4_EP, set(), ["128.0.0.0/1"]),
    ("a table of its own: the rules that send packets there decide (wg-quick's fwmark)", dict(table=100),
     ["0.0.0.0/1", "128.0.0.0/1"], V4_EP, {"0.0.0.0/1", "128.0.0.0/1"}, []),
]


@pytest.mark.parametrize("name,iface,ips,endpoint,routed,skipped", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_routes_that_would_carry_the_peers_own_endpoint_are_skipped(name, iface, ips, endpoint, routed, skipped):
    peer = up(K1, ips, endpoint=endpoint)
    d = desired_state(cfg(**iface), [InterfaceState("wg0", "uapi", (peer,))], NOW, {}, 0.0)
    assert {r.prefix for r in d.routes} == routed
    address = endpoint and endpoint.rpartition(":")[0].strip("[]")
    assert [(v.peer, r.prefix, a) for v, r, a in d.skipped] == [(peer, p, address) for p in skipped]
    assert {r.prefix for r in d.verdicts[0].routes} == routed  # what status shows for the peer
    down = desired_state(cfg(**iface), [InterfaceState("wg0", "uapi", (peer._replace(last_handshake=0.0),))],
                         NOW, {}, 0.0)
    assert down.routes == {} and down.skipped == []  # only an up peer's routes are skipped


def test_a_roaming_endpoint_moves_the_skip_through_the_memo():
    c, memo = cfg(), PlanMemo()
    peer = up(K1, ["0.0.0.0/1", "128.0.0.0/1"], endpoint="192.0.2.2:51820")
    for endpoint, skipped in (("192.0.2.2:51820", "128.0.0.0/1"), ("192.0.2.2:51820", "128.0.0.0/1"),
                              ("100.64.1.2:4500", "0.0.0.0/1"), ("[2001:db8::1]:51820", None),
                              ("192.0.2.2:51820", "128.0.0.0/1")):
        peer = peer if peer.endpoint == endpoint else peer._replace(endpoint=endpoint)  # unchanged: the same object
        d = desired_state(c, [InterfaceState("wg0", "uapi", (peer,))], NOW, {}, 0.0, memo)
        assert [r.prefix for _, r, _ in d.skipped] == ([skipped] if skipped else [])
        assert {r.prefix for r in d.routes} == {"0.0.0.0/1", "128.0.0.0/1"} - {skipped}


def test_newer_handshake_owns_a_shared_prefix():
    peers = (up(K1, ["10.0.31.9/32"], age=50), up(K2, ["10.0.31.9/32"], age=3))
    d = desired_state(cfg(), [InterfaceState("wg0", "uapi", peers)], NOW, {}, 0.0)
    assert [v.peer.public_key for v in d.routes.values()] == [K2]


def test_unconfigured_interfaces_and_unreadable_ones():
    states = [InterfaceState("wg9", "uapi", (up(K1, ["10.0.0.1/32"]),)),
              InterfaceState("wg0", "uapi", None, "socket gone")]
    d = desired_state(cfg(), states, NOW, {}, 0.0)
    assert d.routes == {} and d.frozen == {"wg0"} and d.verdicts == []


def test_peer_section_overrides():
    c = config.Config(path="t", interfaces=(config.InterfaceConfig("wg0", idle_timeout=0),),
                      peers=(config.PeerConfig("p1", "wg0", K1, "phone", route=True, idle_timeout=5),
                             config.PeerConfig("p2", "wg0", K2, "", route=False)))
    peers = (up(K1, ["10.0.31.5/32"]), up(K2, ["10.0.31.6/32"]))
    act = {("wg0", K1): Activity(0, 0.0), ("wg0", K2): Activity(0, 0.0)}
    d = desired_state(c, [InterfaceState("wg0", "uapi", peers)], NOW, act, 100.0)
    by_key = {v.peer.public_key: v for v in d.verdicts}
    assert by_key[K1].reason == IDLE and not by_key[K1].up and by_key[K1].label == f"{K1[:8]}(phone)"
    assert by_key[K2].up and by_key[K2].routes == ()  # route '0': up, but no route
    assert d.routes == {}


R1 = Route(254, "10.0.31.5", 32, "wg0", 0)
R2 = Route(254, "10.0.31.6", 32, "wg0", 0)
R1_METRIC = Route(254, "10.0.31.5", 32, "wg0", 9)
R_WG1 = Route(254, "10.0.40.1", 32, "wg1", 0)

PLANS = [
    # name, desired, owned, foreign, frozen, add, delete, conflicts
    ("nothing to do", {R1}, {R1}, {}, (), [], [], []),
    ("add missing", {R1, R2}, {R1}, {}, (), [R2], [], []),
    ("remove stale", {R1}, {R1, R2}, {}, (), [], [R2], []),
    ("metric changed: replace", {R1_METRIC}, {R1}, {}, (), [R1_METRIC], [R1], []),
    ("foreign route holds the slot", {R1}, set(), {(254, "10.0.31.5", 32): 4}, (), [], [], [(R1, 4)]),
    ("foreign slot: ours goes", {R1}, {R1}, {(254, "10.0.31.5", 32): 4}, (), [], [R1], [(R1, 4)]),
    ("foreign route in another table is no conflict", {R1}, set(), {(100, "10.0.31.5", 32): 4}, (), [R1], [], []),
    ("frozen interface keeps its routes", set(), {R_WG1, R1}, {}, ("wg1",), [], [R1], []),
]


@pytest.mark.parametrize("name,desired,owned,foreign,frozen,add,delete,conflicts", PLANS, ids=[p[0] for p in PLANS])
def test_plan(name, desired, owned, foreign, frozen, add, delete, conflicts):
    plan = plan_routes(desired, owned, foreign, frozen)
    assert (plan.add, plan.delete, plan.conflicts) == (add, delete, conflicts)
    assert bool(plan) == bool(add or delete)


# --- clock steps: a handshake is aged on the monotonic clock from the poll that first
# showed its value; the wall clock dates only a handshake seen for the first time

Y10, D30 = 10 * 365 * 86400.0, 30 * 86400.0

CLOCKS = [
    # name, idle_timeout, polls: (wall, mono, last_handshake, rx) -> (up, reason, handshake age)
    ("+10 years mid-run, idle off: up until the handshake is 180 s old by the monotonic clock", 0, [
        ((NOW, 100, NOW - 5, 10), (True, UP, 5)),
        ((NOW + Y10, 102, NOW - 5, 10), (True, UP, 7)),
        ((NOW + Y10 + 170, 274, NOW - 5, 10), (True, UP, 179)),
        ((NOW + Y10 + 172, 276, NOW - 5, 10), (False, EXPIRED, 181)),
        # a handshake stamped in the new era is dated at the poll that shows it
        ((NOW + Y10 + 190, 294, NOW + Y10 + 189, 20), (True, UP, 0)),
        ((NOW + Y10 + 200, 304, NOW + Y10 + 189, 20), (True, UP, 10)),
    ]),
    ("+10 years mid-run, idle on: traffic keeps it up, silence makes it idle", 10, [
        ((NOW, 100, NOW - 5, 10), (True, UP, 5)),
        ((NOW + Y10, 102, NOW - 5, 20), (True, UP, 7)),
        ((NOW + Y10 + 2, 104, NOW - 5, 30), (True, UP, 9)),
        ((NOW + Y10 + 20, 122, NOW - 5, 30), (False, IDLE, 27)),
    ]),
    ("-30 days mid-run, idle off: a departed peer expires on time", 0, [
        ((NOW, 100, NOW - 5, 10), (True, UP, 5)),
        ((NOW - D30, 102, NOW - 5, 10), (True, UP, 7)),
        ((NOW - D30 + 172, 274, NOW - 5, 10), (True, UP, 179)),
        ((NOW - D30 + 174, 276, NOW - 5, 10), (False, EXPIRED, 181)),
        ((NOW - D30 + 3600, 3702, NOW - 5, 10), (False, EXPIRED, 3607)),
    ]),
    ("-30 days mid-run, idle off: a handshake after the step, then the peer leaves", 0, [
        ((NOW, 100, NOW - 5, 10), (True, UP, 5)),
        ((NOW - D30, 102, NOW - 5, 10), (True, UP, 7)),
        ((NOW - D30 + 50, 152, NOW - D30 + 49, 20), (True, UP, 0)),
        ((NOW - D30 + 229, 331, NOW - D30 + 49, 20), (True, UP, 179)),
        ((NOW - D30 + 231, 333, NOW - D30 + 49, 20), (False, EXPIRED, 181)),
    ]),
    ("-30 days mid-run, idle on: a departed peer falls idle", 10, [
        ((NOW, 100, NOW - 5, 10), (True, UP, 5)),
        ((NOW - D30, 102, NOW - 5, 20), (True, UP, 7)),
        ((NOW - D30 + 10, 112, NOW - 5, 20), (False, IDLE, 17)),
        ((NOW - D30 + 200, 302, NOW - 5, 20), (False, EXPIRED, 207)),
    ]),
    ("fresh start after +10 years: first sight takes the wall-clock age", 0, [
        ((NOW + Y10, 5, NOW - 5, 10), (False, EXPIRED, Y10 + 5)),
        ((NOW + Y10 + 3, 8, NOW + Y10 + 2, 20), (True, UP, 0)),
    ]),
    ("fresh start after -30 days: a stamp in the future counts as new, then ages", 0, [
        ((NOW - D30, 5, NOW - 5, 10), (True, UP, 0)),
        ((NOW - D30 + 179, 184, NOW - 5, 10), (True, UP, 179)),
        ((NOW - D30 + 181, 186, NOW - 5, 10), (False, EXPIRED, 181)),
    ]),
    ("fresh start, idle on, after +10 years", 10, [
        ((NOW + Y10, 5, NOW - 5, 10), (False, EXPIRED, Y10 + 5)),
    ]),
    ("fresh start, no step: the wall-clock age, then the monotonic clock", 0, [
        ((NOW, 5, NOW - 100, 10), (True, UP, 100)),
        ((NOW + 1e6, 84, NOW - 100, 10), (True, UP, 179)),
        ((NOW + 1e6, 86, NOW - 100, 10), (False, EXPIRED, 181)),
    ]),
    ("never handshaken, then a first handshake", 0, [
        ((NOW, 5, 0.0, 0), (False, NEVER, None)),
        ((NOW - D30, 7, NOW - D30 - 1, 148), (True, UP, 0)),
    ]),
]


def _run_polls(idle, polls, memo):
    """Each poll as the daemon makes it: track_activity, then desired_state. With a
    memo, an unchanged peer comes back as the same object (the backends' memos)."""
    c, history, objects, out = cfg(idle_timeout=idle), {}, {}, []
    for wall, mono, hs, rx in polls:
        peer = objects.setdefault((hs, rx), Peer(K1, ("10.0.31.5/32",), "192.0.2.2:51820", hs, rx))
        states = [InterfaceState("wg0", "uapi", (peer,))]
        history = track_activity(history, states, mono, now=wall)
        v = desired_state(c, states, wall, history, mono, memo).verdicts[0]
        age = handshake_age(peer, wall, history[("wg0", K1)], mono)  # the age log lines show
        if memo is None:
            assert v.handshake_age == age
        assert bool(d := desired_state(c, states, wall, history, mono).routes) == v.up, d
        out.append((v.up, v.reason, None if age is None else round(age, 3)))
    return out


@pytest.mark.parametrize("name,idle,polls", CLOCKS, ids=[c[0] for c in CLOCKS])
@pytest.mark.parametrize("memo", [True, False], ids=["memo", "no-memo"])
def test_clock_steps(name, idle, polls, memo):
    got = _run_polls(idle, [p for p, _ in polls], PlanMemo() if memo else None)
    assert got == [e for _, e in polls]


def test_presence_ages_a_dated_handshake_on_the_monotonic_clock():
    peer = Peer(K1, last_handshake=NOW - 5)
    dated = Activity(0, 0.0, NOW - 5, 990.0)  # track_activity saw this handshake at mono 990
    assert presence(peer, NOW + Y10, 180, 0, dated, 1000.0) == (True, UP)
    assert presence(peer, NOW - D30, 180, 0, dated, 1170.0) == (False, EXPIRED)
    assert handshake_age(peer, NOW + Y10, dated, 1000.0) == 10.0
    # a history of another handshake does not date this one: wall clock
    assert presence(peer._replace(last_handshake=NOW - 500), NOW, 180, 0, dated, 1000.0) == (False, EXPIRED)
    assert handshake_age(peer, NOW) == 5.0


def test_track_activity_dates_handshakes():
    s = lambda hs: [InterfaceState("wg0", "uapi", (Peer(K1, last_handshake=hs, rx_bytes=7),))]  # noqa: E731
    a = track_activity({}, s(NOW - 30), 100.0, now=NOW)
    assert a[("wg0", K1)] == Activity(7, 100.0, NOW - 30, 70.0)  # first sight: the wall-clock age
    b = track_activity(a, s(NOW - 30), 101.0, now=NOW + Y10)
    assert b[("wg0", K1)] is a[("wg0", K1)]  # nothing changed: the same history object (the memo's test)
    c = track_activity(b, s(NOW + Y10), 102.0, now=NOW + Y10 + 2)
    assert c[("wg0", K1)] == Activity(7, 100.0, NOW + Y10, 102.0)  # a new value: now, by the monotonic clock
    # without the wall clock a first sight stays undated, and is aged on the wall clock
    d = track_activity({}, s(NOW - 30), 100.0)
    assert d[("wg0", K1)] == Activity(7, 100.0, NOW - 30, None)
    assert track_activity(d, s(NOW - 30), 101.0)[("wg0", K1)] is d[("wg0", K1)]
    assert track_activity(d, s(NOW - 30), 101.0, now=NOW + 1)[("wg0", K1)] == Activity(7, 100.0, NOW - 30, 70.0)


def test_after_a_step_back_the_newer_handshake_by_the_monotonic_clock_owns_a_shared_prefix():
    c, a = cfg(), {}
    old = Peer(K1, ("10.0.31.9/32",), None, NOW - 5, 1)
    for wall, mono, peers in ((NOW, 100.0, (old, Peer(K2, ("10.0.31.9/32",)))),
                              (NOW - D30 + 2, 103.0, (old, Peer(K2, ("10.0.31.9/32",), None, NOW - D30 + 1, 1)))):
        states = [InterfaceState("wg0", "uapi", peers)]
        a = track_activity(a, states, mono, now=wall)
        d = desired_state(c, states, wall, a, mono, PlanMemo())
    assert [v.peer.public_key for v in d.routes.values()] == [K2]


# --- rules (P2, P3)

from wgagent.model import AF_INET, AF_INET6, Rule  # noqa: E402
from wgagent.policy import PathState, desired_rules, peer_rules, plan_rules, return_path_wants  # noqa: E402

SUPPRESS4 = Rule(AF_INET, 5000, 254, suppress_prefixlen=0)
SUPPRESS6 = Rule(AF_INET6, 5000, 254, suppress_prefixlen=0)


def test_peer_rules_skip_default_prefixes():
    assert peer_rules(None, 5000, ("10.0.31.5/32",)) == ()
    assert peer_rules(200, 5000, ("10.0.31.5/32", "fd31::5/128", "0.0.0.0/0")) == (
        Rule(AF_INET, 5100, 200, "10.0.31.5", 32), Rule(AF_INET6, 5100, 200, "fd31::5", 128))


def test_rules_only_for_up_peers_and_suppress_rule_per_family():
    c = config.Config(path="t", interfaces=(config.InterfaceConfig("wg0", source_table=200),),
                      peers=(config.PeerConfig("p2", "wg0", K2, source_table=300, route=False),))
    peers = (up(K1, ["10.0.31.5/32"]), up(K2, ["fd31::6/128"]), Peer("C" * 43 + "=", ("10.0.31.7/32",)))
    d = desired_state(c, [InterfaceState("wg0", "uapi", peers)], NOW, {}, 0.0)
    assert desired_rules(c, d, []) == []
    assert set(d.rules) == {Rule(AF_INET, 5100, 200, "10.0.31.5", 32), Rule(AF_INET6, 5100, 300, "fd31::6", 128),
                            SUPPRESS4, SUPPRESS6}
    assert set(d.routes) == {Route(254, "10.0.31.5", 32, "wg0", 0)}  # p2: route '0', rules only


def test_no_rules_no_suppress_rule():
    d = desired_state(cfg(), [InterfaceState("wg0", "uapi", (up(K1, ["10.0.31.5/32"]),))], NOW, {}, 0.0)
    desired_rules(cfg(), d, [])
    assert d.rules == {}


RP = config.ReturnPathConfig("wan", 100, device="eth0")

PATHS = [
    ("absent device: nothing", RP, PathState("wan", "eth0", error="gone"), [], [], []),
    ("learned gateway",
     RP, PathState("wan", "eth0", True, False, (("198.51.100.2", 24),), ((AF_INET, "198.51.100.1"),)),
     [Rule(AF_INET, 5010, 100, "198.51.100.2", 32)],
     [Route(100, "198.51.100.0", 24, "eth0", 0), Route(100, "0.0.0.0", 0, "eth0", 0, "198.51.100.1")], []),
    ("configured gateway wins; v6 too",
     config.ReturnPathConfig("wan", 100, device="eth0", gateways=("198.51.100.9", "2001:db8::1")),
     PathState("wan", "eth0", True, False, (("198.51.100.2", 24), ("2001:db8::2", 64)),
               ((AF_INET, "198.51.100.1"),)),
     [Rule(AF_INET, 5010, 100, "198.51.100.2", 32), Rule(AF_INET6, 5010, 100, "2001:db8::2", 128)],
     [Route(100, "198.51.100.0", 24, "eth0", 0), Route(100, "2001:db8::", 64, "eth0", 1024),
      Route(100, "0.0.0.0", 0, "eth0", 0, "198.51.100.9"), Route(100, "::", 0, "eth0", 1024, "2001:db8::1")], []),
    ("pppoe: point-to-point, no gateway needed",
     config.ReturnPathConfig("wan", 100, network="wan"),
     PathState("wan", "pppoe-wan", True, True, (("100.64.1.2", 32),)),
     [Rule(AF_INET, 5010, 100, "100.64.1.2", 32)], [Route(100, "0.0.0.0", 0, "pppoe-wan", 0)], []),
    ("no gateway known: a problem, rule kept",
     RP, PathState("wan", "eth0", True, False, (("198.51.100.2", 24),)),
     [Rule(AF_INET, 5010, 100, "198.51.100.2", 32)], [Route(100, "198.51.100.0", 24, "eth0", 0)],
     ["no IPv4 gateway known on eth0: set option gateway in return_path 'wan'"]),
]


@pytest.mark.parametrize("name,rp,state,rules,routes,problems", PATHS, ids=[p[0] for p in PATHS])
def test_return_path(name, rp, state, rules, routes, problems):
    assert return_path_wants(rp, state, 5000) == (rules, routes, problems)


def test_return_path_in_desired_rules_adds_suppress_first():
    c = config.Config(path="t", return_paths=(RP,), agent=config.AgentConfig(rule_priority=7000))
    d = desired_state(c, [], NOW, {}, 0.0)
    desired_rules(c, d, [PathState("wan", "eth0", True, False, (("198.51.100.2", 24),), ((AF_INET, "198.51.100.1"),))])
    assert d.rules == {Rule(AF_INET, 7010, 100, "198.51.100.2", 32): "return_path wan",
                       Rule(AF_INET, 7000, 254, suppress_prefixlen=0): "suppress"}
    assert set(d.path_routes.values()) == {"return_path wan"}


def test_plan_rules():
    a, b = Rule(AF_INET, 5100, 200, "10.0.31.5", 32), Rule(AF_INET, 5100, 200, "10.0.31.6", 32)
    plan = plan_rules({a, SUPPRESS4}, {b, SUPPRESS4})
    assert (plan.add, plan.delete) == ([a], [b]) and plan
    assert not plan_rules({a}, {a})


# --- the memo: a verdict is kept only while nothing it depends on has changed

def _poll(config, peer, now, act, mono, memo):
    activity = {("wg0", peer.public_key): act} if act else {}
    d = desired_state(config, [InterfaceState("wg0", "uapi", (peer,))], now, activity, mono, memo)
    return d.verdicts[0]


def test_a_verdict_is_kept_for_the_same_peer_and_history_until_a_deadline():
    config, memo = cfg(idle_timeout=10), PlanMemo()
    peer = Peer(K1, ("10.0.31.5/32",), None, NOW - 5, 100)
    act = Activity(100, 50.0, NOW - 5, 46.0)  # the handshake dated at mono 46
    first = _poll(config, peer, NOW, act, 51.0, memo)
    assert first.up and _poll(config, peer, NOW + 1, act, 52.0, memo) is first
    # a new Peer (its block changed), a new rx history, a new config: computed anew
    assert _poll(config, peer._replace(rx_bytes=101), NOW + 1, act, 52.0, memo) is not first
    first = _poll(config, peer, NOW + 1, act, 52.0, memo)
    assert _poll(config, peer, NOW + 1, act._replace(), 52.0, memo) is not first
    first = _poll(config, peer, NOW + 1, act, 52.0, memo)
    assert _poll(cfg(idle_timeout=10), peer, NOW + 1, act, 52.0, memo) is not first
    # ... but a step of the wall clock changes nothing: the deadlines are monotonic
    first = _poll(config, peer, NOW + 1, act, 52.0, memo)
    assert _poll(config, peer, NOW - D30, act, 52.0, memo) is first
    assert _poll(config, peer, NOW + Y10, act, 52.0, memo) is first
    # the deadlines: idle_timeout after rx last grew, handshake_timeout after the handshake
    assert _poll(config, peer, NOW + 2, act, 59.9, memo).up
    assert _poll(config, peer, NOW + 2, act, 60.0, memo)[2:4] == (False, IDLE)
    assert _poll(config, peer, NOW + 2, act, 225.9, memo)[2:4] == (False, IDLE)
    assert _poll(config, peer, NOW + 2, act, 226.0, memo)[2:4] == (False, EXPIRED)  # idle, then expired
    config, memo = cfg(), PlanMemo()
    assert _poll(config, peer, NOW, act, 60.0, memo).up
    assert _poll(config, peer, NOW, act, 225.9, memo).up
    assert _poll(config, peer, NOW, act, 226.0, memo)[2:4] == (False, EXPIRED)
    assert _poll(config, peer, NOW, act, 500.0, memo)[2:4] == (False, EXPIRED)
    # an undated handshake (no history): its wall-clock age, then the monotonic clock
    memo = PlanMemo()
    first = _poll(config, peer, NOW + 174.9, None, 60.0, memo)
    assert first.up and _poll(config, peer, NOW + Y10, None, 60.05, memo) is first
    assert _poll(config, peer, NOW + 175.0, None, 60.1, memo)[2:4] == (False, EXPIRED)


def test_kept_verdicts_give_the_same_routes_as_fresh_ones():
    config = cfg()
    peers = tuple(Peer(f"{i:043d}=", (f"10.0.{i // 250}.{i % 250}/32",), None, NOW - i, i) for i in range(300))
    states = [InterfaceState("wg0", "uapi", peers)]
    memo = PlanMemo()
    desired_state(config, states, NOW, {}, 0.0, memo)
    kept = desired_state(config, states, NOW + 100, {}, 100.0, memo)  # peers older than 80 s expire meanwhile
    fresh = desired_state(config, states, NOW + 100, {}, 100.0)
    assert kept.routes.keys() == fresh.routes.keys() and len(fresh.routes) == 80
    assert [(v.up, v.reason) for v in kept.verdicts] == [(v.up, v.reason) for v in fresh.verdicts]


def test_parse_prefix_agrees_with_the_kernels_spelling_and_rejects_junk():
    from wgagent.model import parse_prefix

    assert parse_prefix("10.1.2.3/8") == (AF_INET, "10.0.0.0", 8)
    assert parse_prefix("fd77:0::1/128") == (AF_INET6, "fd77::1", 128)
    assert parse_prefix("::ffff:1.2.3.4/128")[1] == "::ffff:1.2.3.4"  # inet_ntop, as a dump reads back
    for bad in ("10.0.0.0/33", "10.0.0/8", "x/1", "10.0.0.0/-1", "::/129", "10.0.0.0/\u0663"):
        with pytest.raises(ValueError):
            parse_prefix(bad)


# --- a return path named by netifd network: what a ubus hiccup may and may not drop

from wgagent.policy import Resolution, return_path_state  # noqa: E402
from wgagent.rtnl import Link  # noqa: E402

NET = config.ReturnPathConfig("wan", 100, network="wan")
ETH = {"eth0": Link(2, "eth0", "", True)}
ADDRS = {"eth0": [("198.51.100.2", 24)]}
GWS = {("eth0", AF_INET): "198.51.100.1"}
TIMEOUT = "cannot resolve network 'wan': ubus call network.interface.wan status failed (Request timed out)"
NO_DEVICE = "network 'wan' is down (device none)"

RESOLUTIONS = [
    # name, links, resolution, last device, expected (device, present, error, stale)
    ("fresh answer", ETH, Resolution("eth0"), "", ("eth0", True, "", "")),
    ("fresh answer beats the last one", ETH, Resolution("eth0"), "pppoe-wan", ("eth0", True, "", "")),
    ("ubus fails: the last device stands", ETH, Resolution(error=TIMEOUT, transient=True), "eth0",
     ("eth0", True, "", TIMEOUT)),
    ("ubus fails and the last device is gone from the kernel: path down", {},
     Resolution(error=TIMEOUT, transient=True), "eth0", ("eth0", False, "device eth0 does not exist", TIMEOUT)),
    ("ubus fails before any answer: nothing to keep", ETH, Resolution(error=TIMEOUT, transient=True), "",
     ("", False, TIMEOUT, "")),
    ("netifd answers: no device; the last one does not stand", ETH, Resolution(error=NO_DEVICE), "eth0",
     ("", False, NO_DEVICE, "")),
    ("answered device not in the kernel", ETH, Resolution("pppoe-wan"), "eth0",
     ("pppoe-wan", False, "device pppoe-wan does not exist", "")),
]


@pytest.mark.parametrize("name,links,res,last,expected", RESOLUTIONS, ids=[r[0] for r in RESOLUTIONS])
def test_return_path_state_through_ubus_failures(name, links, res, last, expected):
    st = return_path_state(NET, links, ADDRS, GWS, res, last)
    assert (st.device, st.present, st.error, st.stale) == expected
    rules, _, problems = return_path_wants(NET, st, 5000)
    assert rules == ([Rule(AF_INET, 5010, 100, "198.51.100.2", 32)] if st.present else [])
    assert problems == ([f"{TIMEOUT}; return_path 'wan' keeps device eth0, the last one netifd named"]
                        if st.present and st.stale else [])


def test_device_option_needs_no_resolution():
    st = return_path_state(RP, ETH, ADDRS, GWS)
    assert (st.device, st.present, st.learned_gateways) == ("eth0", True, ((AF_INET, "198.51.100.1"),))


def wanted(c, paths) -> set:
    """The rules and return-path table routes a config wants for these path states."""
    d = desired_state(c, [], NOW, {}, 0.0)
    desired_rules(c, d, paths)
    return set(d.rules) | set(d.path_routes)
