"""Next to a routing daemon, without root: yield_to in the config, the event filter
that lets through only what wgagent cares about (rtnl.classify), other protocols'
routes applied to the view from events (Reconciler.note), and the daemon's pass
handing a peer off and back against an in-memory kernel."""

from __future__ import annotations

import socket
import struct

import pytest

from wgagent import config, rtnl, rtnl_rules
from wgagent import daemon as daemon_mod
from wgagent import reporter as reporter_mod
from wgagent.config import ConfigError
from wgagent.model import RTPROT_WGAGENT, Foreign, Route
from wgagent.reconciler import Reconciler
from wgagent.rtnl_routes import RouteDump

from .test_daemon import K1, WALL0, Kernel, Log, peer, world  # noqa: F401  (the world fixture)

BIRD, STATIC = 12, 4


# --- config


def load(tmp_path, text, name="wgagent"):
    p = tmp_path / name
    p.write_text(text)
    return config.load(str(p))


YIELD = [
    ("default", "", config.DEFAULT_YIELD_TO),
    ("names", "\toption yield_to 'bird babel'\n", {12, 42}),
    ("a list, numbers too", "\tlist yield_to 'ospf'\n\tlist yield_to '200'\n", {188, 200}),
    ("none: off", "\toption yield_to 'none'\n", set()),
]


@pytest.mark.parametrize("name,line,expected", YIELD, ids=[y[0] for y in YIELD])
def test_yield_to_in_uci(tmp_path, name, line, expected):
    c = load(tmp_path, "config interface 'wg0'\n" + line)
    assert c.interfaces[0].yield_to == frozenset(expected)


def test_yield_to_in_yaml(tmp_path):
    c = load(tmp_path, "interfaces:\n  wg0:\n    yield_to: [bird, 42]\n  wg1:\n    yield_to: []\n"
                       "  wg2:\n    yield_to: none\n", "c.yaml")
    assert [sorted(i.yield_to) for i in c.interfaces] == [[12, 42], [], []]


BAD = [
    ("\toption yield_to 'bird birb'\n", "option 'yield_to', value 'bird birb': unknown protocol 'birb'"),
    ("\toption yield_to '256'\n", "protocol 256 out of range"),
    ("\toption yield_to 'none bird'\n", "'none' turns yield_to off and stands alone"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[b[1] for b in BAD])
def test_yield_to_errors_name_file_section_option_value(tmp_path, line, message):
    with pytest.raises(ConfigError, match=f"{tmp_path}/wgagent: section 'wg0', .*{message}"):
        load(tmp_path, "config interface 'wg0'\n" + line)


def test_protocol_names_come_from_rt_protos(tmp_path):
    (tmp_path / "rt_protos").write_text("12 bird\n250 mydaemon # a comment\n")
    protos = config.read_rt_protos((str(tmp_path / "rt_protos"),))
    assert protos["mydaemon"] == 250 and protos["babel"] == 42  # iproute2's built-in names stay
    assert config.proto_name(12, protos) == "bird" and config.proto_name(77, protos) == "77"


# --- the event filter


def nlmsg(mtype: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, 0, 0) + body


def nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def route_msg(mtype, dst, plen, proto, oif=0, gateway="", metric=0, table=254, rtype=1, via=None):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    body = struct.pack("=BBBBBBBBI", fam, plen, 0, 0, table if table < 256 else 252, proto, 0, rtype, 0)
    body += nla(1, socket.inet_pton(fam, dst)) + nla(15, struct.pack("=I", table))
    if oif:
        body += nla(4, struct.pack("=I", oif))
    if gateway:
        body += nla(5, socket.inet_pton(fam, gateway))
    if via:
        body += nla(18, struct.pack("=H", socket.AF_INET6) + socket.inet_pton(socket.AF_INET6, via))
    body += nla(6, struct.pack("=I", metric))
    return nlmsg(mtype, body, 0x600)


def link_msg(mtype, index, name):
    return nlmsg(mtype, struct.pack("=BxHiII", 0, 0, index, 0, 0) + nla(3, name.encode() + b"\0"))


def addr_msg(mtype, index):
    return nlmsg(mtype, struct.pack("=BBBBI", 2, 24, 0, 0, index) + nla(1, bytes(4)))


SLOT4, SLOT6 = (254, "10.0.31.5", 32), (254, "fd31::5", 128)
INTEREST = rtnl.Interest(slots=frozenset({SLOT4, SLOT6}), prefixlens=frozenset({(2, 32), (10, 128)}),
                         tables=frozenset(), devices=frozenset(), links=frozenset({"wg0"}),
                         indexes=frozenset({6}), names={4: "wg_s2s_op2", 6: "wg0", 9: "wan"})
WITH_PATH = INTEREST._replace(tables=frozenset({101}), devices=frozenset({9}), links=frozenset({"wg0", "wan"}),
                              indexes=frozenset({6, 9}))
NEW, DEL = rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE

EVENTS = [
    # name, messages, interest, full, route events
    ("a routing daemon's unrelated churn: dropped undecoded", [route_msg(NEW, "172.16.5.0", 24, BIRD, 4)],
     INTEREST, False, []),
    ("... or decoded, when it is a host route elsewhere", [route_msg(NEW, "10.0.31.9", 32, BIRD, 4, "10.0.32.21")],
     INTEREST, False, []),
    ("a claim in a slot of ours", [route_msg(NEW, "10.0.31.5", 32, BIRD, 4, "10.0.32.21", 32)], INTEREST, False,
     [rtnl.RouteEvent(False, SLOT4, True, Foreign(BIRD, 32, "10.0.32.21", "wg_s2s_op2"))]),
    ("an IPv4 route via an IPv6 next hop (RTA_VIA)", [route_msg(NEW, "10.0.31.5", 32, BIRD, 4, metric=32,
                                                                via="fe80::2")], INTEREST, False,
     [rtnl.RouteEvent(False, SLOT4, True, Foreign(BIRD, 32, "fe80::2", "wg_s2s_op2"))]),
    ("Babel's unreachable route: an event, but no unicast", [route_msg(NEW, "fd31::5", 128, BIRD, metric=32,
                                                                      rtype=7)], INTEREST, False,
     [rtnl.RouteEvent(False, SLOT6, False, Foreign(BIRD, 32, "", "if0"))]),
    ("a claim withdrawn", [route_msg(DEL, "fd31::5", 128, BIRD, 4, "fe80::2", 32)], INTEREST, False,
     [rtnl.RouteEvent(True, SLOT6, True, Foreign(BIRD, 32, "fe80::2", "wg_s2s_op2"))]),
    ("our own addition echoed", [route_msg(NEW, "10.0.31.5", 32, RTPROT_WGAGENT, 6)], INTEREST, False, []),
    ("a route of ours deleted: read again", [route_msg(DEL, "10.0.31.5", 32, RTPROT_WGAGENT, 6)], INTEREST, True,
     []),
    ("a watched link", [link_msg(rtnl.RTM_NEWLINK, 6, "wg0")], INTEREST, True, []),
    ("a watched name on a new index (re-created)", [link_msg(rtnl.RTM_NEWLINK, 12, "wg0")], INTEREST, True, []),
    ("another link", [link_msg(rtnl.RTM_DELLINK, 13, "veth7")], INTEREST, False, []),
    ("an address of another device", [addr_msg(rtnl.RTM_NEWADDR, 4)], INTEREST, False, []),
    ("an address of a return path's device", [addr_msg(rtnl.RTM_DELADDR, 9)], WITH_PATH, True, []),
    ("a route on a return path's device (its gateway)", [route_msg(NEW, "0.0.0.0", 0, 16, 9, "198.51.100.1")],
     WITH_PATH, True, []),
    ("a route in a return path's table", [route_msg(DEL, "0.0.0.0", 0, 3, 4, table=101)], WITH_PATH, True, []),
    ("with return paths, unrelated routes are decoded and dropped", [route_msg(NEW, "172.16.5.0", 24, BIRD, 4)],
     WITH_PATH, False, []),
    ("a netifd network as return path: routes of netifd's protocols matter",
     [route_msg(NEW, "10.99.0.0", 16, 3, 4)], INTEREST._replace(netifd=True, quiet=frozenset({BIRD})), True, []),
    ("... a routing daemon's churn still does not", [route_msg(NEW, "172.16.5.0", 24, BIRD, 4)],
     INTEREST._replace(netifd=True, quiet=frozenset({BIRD})), False, []),
    ("... any link does", [link_msg(rtnl.RTM_NEWLINK, 21, "pppoe-wan")], INTEREST._replace(netifd=True), True, []),
    ("a batch that does not parse", [route_msg(NEW, "10.0.31.5", 32, BIRD, 4)[:-3]], INTEREST, True, []),
]


@pytest.mark.parametrize("name,msgs,interest,full,routes", EVENTS, ids=[e[0] for e in EVENTS])
def test_classify(name, msgs, interest, full, routes):
    got: list = []
    assert rtnl.classify(b"".join(msgs), interest, got) is full
    assert got == routes


def test_rules_matter_only_when_one_of_ours_goes():
    ours = nla(rtnl_rules.FRA_PROTOCOL, bytes([RTPROT_WGAGENT]))
    theirs = nla(rtnl_rules.FRA_PROTOCOL, bytes([3]))
    for mtype, attr_, full in ((rtnl.RTM_DELRULE, ours, True), (rtnl.RTM_DELRULE, theirs, False),
                               (rtnl.RTM_NEWRULE, theirs, False), (rtnl.RTM_NEWRULE, ours, False)):
        assert rtnl.classify(nlmsg(mtype, b"\0" * 12 + attr_), INTEREST, []) is full


# --- the view from events


VIA2 = Foreign(BIRD, 32, "10.0.32.21", "wg_s2s_op2")
VIA3 = Foreign(BIRD, 32, "10.0.32.31", "wg_s2s_op3")


def test_note_applies_route_events_to_the_view():
    r = Reconciler(rtnl=None, reporter=None)
    r.seen(r.view.__class__(owned={Route(254, "10.0.31.5", 32, "wg0", 1)}, foreign={}, read_at=10.0))
    r.note([rtnl.RouteEvent(False, SLOT4, True, VIA2)], 11.0)
    assert r.view.foreign[SLOT4] == (VIA2._replace(since=11.0),) and not r.dirty
    r.note([rtnl.RouteEvent(False, SLOT4, True, VIA2)], 12.0)
    assert r.view.foreign[SLOT4][0].since == 11.0, "the same route announced again keeps its date"
    r.note([rtnl.RouteEvent(False, SLOT4, True, VIA3)], 13.0)
    assert r.view.foreign[SLOT4] == (VIA3._replace(since=13.0),), "a replaced next hop: a new route, dated now"
    r.note([rtnl.RouteEvent(False, SLOT4, False, VIA3._replace(gateway="", device="if0"))], 14.0)
    assert SLOT4 not in r.view.foreign, "an unreachable route in its place removes it"
    r.note([rtnl.RouteEvent(False, SLOT4, True, VIA2), rtnl.RouteEvent(True, SLOT4, True, VIA2)], 15.0)
    assert SLOT4 not in r.view.foreign
    r.note([rtnl.RouteEvent(False, SLOT4, True, VIA2._replace(metric=1))], 16.0)
    assert r.dirty, "a route at our metric replaced ours (BIRD's IPv4 replace): read everything again"


# --- the daemon's pass, in memory


class MeshKernel(Kernel):
    """The in-memory kernel with routes of other protocols beside ours."""

    def __init__(self):
        super().__init__()
        self.foreign: dict = {}

    def routes(self, index_to_name):
        self._site("routes")
        return RouteDump(sorted(self.owned), dict(self.foreign), {})


def bird_claim(gateway="10.0.32.21", device="wg_s2s_op2"):
    return {SLOT4: (Foreign(BIRD, 32, gateway, device),)}


def test_a_peer_claimed_elsewhere_is_withdrawn_said_once_and_comes_back_with_a_new_handshake(world):  # noqa: F811
    world.kernel = MeshKernel()
    d = world.daemon(daemon_mod_config("\toption metric '1'\n\toption idle_timeout '20'\n"))
    p = peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100)
    world.sources.peers["wg0"] = (p,)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.kernel.foreign = bird_claim()
    world.clocks.step(1)
    d.reconciler.dirty = True  # as an event would (or the event path's note())
    assert d.reconcile() and world.routes() == set()
    moved = world.log.events("peer_moved")
    assert len(moved) == 1 and moved[0]["prefix"] == "10.0.31.5/32" and moved[0]["proto"] == "bird"
    assert (moved[0]["gateway"], moved[0]["device"]) == ("10.0.32.21", "wg_s2s_op2")
    assert not world.log.events("peer_down"), "peer_moved, not peer_down"
    assert world.log.events("route_removed")[0]["reason"] == "moved"
    assert reporter_mod.read_moved_state() == {("wg0", K1): {"prefix": "10.0.31.5/32", "proto": "bird",
                                                             "gateway": "10.0.32.21", "device": "wg_s2s_op2"}}
    for i in range(3):  # rx grows once (a packet in flight), the claim goes: held back all the same
        world.sources.peers["wg0"] = (p._replace(rx_bytes=200),)
        world.kernel.foreign = {} if i else world.kernel.foreign
        world.clocks.step(1)
        d.reconciler.dirty = True
        assert d.reconcile() and world.routes() == set()
    assert len(world.log.events("peer_moved")) == 1
    # nothing arrives for idle_timeout: its verdict says idle, but status still says
    # where it went (the daemon's own, and the file `wgagent status` reads)
    world.clocks.step(25)
    assert d.reconcile() and world.routes() == set()
    assert [v.reason for v in d.last_desired.verdicts] == ["idle"]
    assert reporter_mod.read_idle_state() == {("wg0", K1)}
    assert ("wg0", K1) in reporter_mod.read_moved_state(), "fallen idle, it is still where it went"
    entry = d.status_document(world.clocks.wall)["interfaces"][0]["peers"][0]
    assert (entry["state"], entry["moved"]["device"]) == ("moved", "wg_s2s_op2")
    assert len(world.log.events("peer_moved")) == 1, "not said again"
    # it connects here again
    world.kernel.foreign = bird_claim()
    world.sources.peers["wg0"] = (p._replace(last_handshake=world.clocks.wall, rx_bytes=300),)
    world.clocks.step(1)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    assert world.log.events("peer_up")[-1]["reason"] == "handshake"
    assert reporter_mod.read_moved_state() == {}
    assert not world.log.events("route_conflict"), "a routing daemon's route is no conflict"


def test_a_late_claim_is_undone_by_the_peers_packets_and_said_so(world):  # noqa: F811
    """Babel's news of the phone's older connection elsewhere reaches this router just
    after the phone's handshake here: held back, then up again once its packets keep
    arriving, without a new handshake; that claim does not move it a second time."""
    world.kernel = MeshKernel()
    d = world.daemon(daemon_mod_config("\toption metric '1'\n\toption idle_timeout '20'\n"))
    p = peer(K1, "10.0.31.5/32", WALL0, rx=100)
    world.sources.peers["wg0"] = (p,)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.kernel.foreign = bird_claim()
    world.clocks.step(0.3)
    d.reconciler.dirty = True
    assert d.reconcile() and world.routes() == set()
    assert len(world.log.events("peer_moved")) == 1
    for rx in (132, 164):  # its keepalives: the baseline, then one more
        world.sources.peers["wg0"] = (p._replace(rx_bytes=rx),)
        world.clocks.step(1)
        assert d.reconcile()
    assert world.routes() == {"10.0.31.5/32"}
    up = world.log.events("peer_up")[-1]
    assert "packets kept arriving" in up["detail"], up
    assert reporter_mod.read_moved_state() == {}
    world.sources.peers["wg0"] = (p._replace(rx_bytes=196),)
    world.clocks.step(1)
    d.reconciler.dirty = True
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}, "the same claim: older news"
    assert len(world.log.events("peer_moved")) == 1
    world.kernel.foreign = bird_claim("10.0.32.31", "wg_s2s_op3")  # a newer claim: it moved
    world.clocks.step(1)
    d.reconciler.dirty = True
    assert d.reconcile() and world.routes() == set()
    assert len(world.log.events("peer_moved")) == 2, "said again: another move"


def test_a_restart_beside_an_adopted_route_keeps_the_peer_and_elsewhere_yields(world):  # noqa: F811
    world.kernel = MeshKernel()
    world.kernel.owned = {Route(254, "10.0.31.5", 32, "wg0", 1)}
    world.kernel.foreign = bird_claim()  # a stale claim, seen by the first read
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100),)
    d = world.daemon(daemon_mod_config("\toption metric '1'\n"))
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}, "the router that held it keeps it"
    world.kernel.owned = set()
    d2 = world.daemon(daemon_mod_config("\toption metric '1'\n"))
    assert d2.reconcile() and world.routes() == set(), "the router that had let go yields at once"


def test_a_static_route_stays_a_conflict_and_metric_clashes_are_said(world):  # noqa: F811
    world.kernel = MeshKernel()
    world.kernel.foreign = {SLOT4: (Foreign(STATIC, 0, "", "wg0"),)}
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    d = world.daemon(daemon_mod_config("\toption metric '32'\n"))
    assert d.reconcile() and world.routes() == set()
    assert world.log.events("route_conflict")[0]["other_proto"] == STATIC
    world.kernel.foreign = {SLOT4: (Foreign(BIRD, 32, "", "wg0"),)}  # BIRD on wg0 itself: no claim
    d.reconciler.dirty = True
    world.clocks.step(1)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    said = world.log.events("route_outranked")
    assert len(said) == 1 and "overwrite" in said[0]["hint"] and said[0]["other_proto"] == "bird"


def daemon_mod_config(iface: str) -> str:
    return "config agent 'main'\nconfig interface 'wg0'\n" + iface


def test_interest_follows_the_plans_and_links(world):  # noqa: F811
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    d = world.daemon()
    assert d.reconcile()
    first = d.interest
    assert first.slots == {SLOT4} and first.prefixlens == {(2, 32)} and first.links == {"wg0"}
    assert first.indexes == {5} and first.names[5] == "wg0"
    world.clocks.step(1)
    assert d.reconcile() and d.interest is first, "nothing changed: not rebuilt"
    world.sources.peers["wg0"] = (peer(K1, "fd31::5/128", WALL0 - 5),)
    world.clocks.step(1)
    assert d.reconcile() and d.interest.slots == {SLOT6}


def test_runner_spaces_full_reads_and_passes_claims_without_one(world, monkeypatch):  # noqa: F811
    """The loop against scripted events: a claim runs a pass at once without reading
    the kernel; a burst that needs a full read runs one pass, no sooner than
    FULL_READ_SPACING after the last read."""
    world.kernel = MeshKernel()
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    d = world.daemon(daemon_mod_config("\toption metric '1'\n"), poll_interval=3600)
    script = [rtnl.Changes(False, [rtnl.RouteEvent(False, SLOT4, True, Foreign(BIRD, 32, "10.0.32.21",
                                                                               "wg_s2s_op2"))]),
              rtnl.Changes(True, []), rtnl.Changes(True, [])]

    class Events:
        def __init__(self):
            import os
            self.r, self.w = os.pipe()
            os.write(self.w, b"x")

        def fileno(self):
            return self.r

        def drain(self, interest):
            if script:
                return script.pop(0)
            if len(reads) >= 2:
                runner.stop_signal = 15
            return rtnl.Changes(False, [])

    runner = daemon_mod.Runner(d, Events())
    reads = []
    real = world.kernel.routes

    def routes(index_to_name):
        reads.append(daemon_mod.time.monotonic())
        return real(index_to_name)

    world.kernel.routes = routes
    world.clocks.mono = daemon_mod.time.monotonic()  # the daemon's clock is the loop's here
    d.mono = daemon_mod.time.monotonic
    monkeypatch.setattr(daemon_mod.signal, "signal", lambda *a: None)
    monkeypatch.setattr(daemon_mod.signal, "set_wakeup_fd", lambda *a, **k: -1)
    d.stop = lambda name: True
    runner.run()
    assert world.routes() == set(), "the claim, from the event alone, withdrew the route"
    assert len(reads) == 2, "the first pass's read, then one read for the two full-read bursts"
    assert reads[1] - reads[0] >= daemon_mod.FULL_READ_SPACING - 0.01


# --- status and check


def test_status_says_moved_with_the_claiming_route(capsys):
    from wgagent import cli

    peer_entry = {"short_key": K1[:8], "description": "phone", "handshake_age": 3.0, "up": False,
                  "reason": "moved", "state": "moved", "endpoint": "192.0.2.2:51820", "allowed_ips": ["10.0.31.5/32"], "routes": [],
                  "rules": [], "moved": {"proto": "bird", "gateway": "10.0.32.21", "device": "wg_s2s_op2",
                                         "prefix": "10.0.31.5/32"}}
    st = {"interfaces": [{"name": "wg0", "backend": "uapi", "error": None, "table": "main", "peers": [peer_entry]}],
          "return_paths": [], "problems": [], "conflicts": [], "other_owned_routes": [],
          "mesh": {"tunnels": [], "metrics": []}, "daemon": {"running": True, "pid": 1, "updated": 0}}
    cli._print_status(st)
    assert "moved (claimed by bird via 10.0.32.21 dev wg_s2s_op2)" in capsys.readouterr().out


def test_check_finds_tunnels_that_drop_the_pool_and_metrics_that_lose():
    from wgagent import cli
    from wgagent.model import InterfaceState, Peer
    from wgagent.observer import KernelView
    from wgagent.policy import desired_state
    from wgagent.rtnl import Link

    cfg = config.Config(path="t", interfaces=(config.InterfaceConfig("wg0"),))
    states = [InterfaceState("wg0", "uapi", (Peer(K1, ("10.0.31.5/32", "fd31::5/128"), None, WALL0 - 5),))]
    desired = desired_state(cfg, states, WALL0, {}, 100.0)
    view = KernelView(foreign={(254, "192.168.36.0", 24): (Foreign(BIRD, 32, "10.0.32.21", "wg_s2s_op2"),),
                               (254, "fd36::", 64): (Foreign(BIRD, 32, "fe80::2", "wg_s2s_op2"),),
                               (254, "192.168.37.0", 24): (Foreign(BIRD, 32, "10.0.32.31", "eth3"),)})
    links = {"wg_s2s_op2": Link(4, "wg_s2s_op2", "wireguard", True), "eth3": Link(7, "eth3", "", True)}

    class Sources:
        def read(self, name, link):
            if link.kind != "wireguard":
                return InterfaceState(name, "", (), "not a WireGuard interface")
            return InterfaceState(name, "kernel", (Peer("x", ("10.0.31.0/24", "192.168.36.0/24")),))

    mesh = cli._mesh_status(cfg, desired, view, links, Sources())
    assert mesh["tunnels"] == [{"name": "wg_s2s_op2", "protocols": ["bird"], "error": None, "peers": 1,
                                "uncovered": ["fd31::5/128"]}]
    assert mesh["metrics"] == [{"interface": "wg0", "family": "IPv6", "metric": 1024, "other_metric": 32,
                                "proto": "bird"}], "metric 0: IPv4 0 wins, IPv6 1024 loses to BIRD's 32"
