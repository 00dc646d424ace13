"""The decision core: which peers are up and which routes should exist. Pure.

(config, observed interfaces, clocks, rx history) -> peer verdicts and desired routes;
(peer verdict, other routers' claims, handshake at the time of a move) -> keep / moved / back;
(desired routes, routes held under our tag, routes of others) -> a plan.
No I/O: everything here is tested without root.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, NamedTuple

from .config import Config, ReturnPathConfig
from .model import AF_INET, AF_INET6, Foreign, InterfaceState, Peer, Route, Rule, kernel_metric, parse_prefix

# Why a peer is up or down, as logged and shown by `wgagent status`.
UP = "handshake"  # a handshake younger than handshake_timeout, and not idle
NEVER = "no-handshake"
EXPIRED = "handshake-expired"
IDLE = "idle"
MOVED = "moved"  # up here by its handshake, but connected at another router since (hand_off)


class Activity(NamedTuple):
    """What wgagent remembers of a peer between polls, because the kernel cannot tell
    it (after a restart a peer starts fresh): when its rx counter last grew, and when
    its handshake happened, both on the monotonic clock.

    The kernel stamps a handshake with the wall clock of the moment it happened, and an
    OpenWrt router without RTC steps that clock by years when NTP first answers. So, as
    unetd does, a handshake is dated on the monotonic clock at the poll that first shows
    its value (up to one poll interval late), and aged from there; the wall clock
    dates only a handshake seen for the first time (start-up, a new peer)."""

    rx_bytes: int
    since: float  # rx_bytes last grew (or the peer was first seen)
    handshake: float = 0.0  # the peer's last_handshake value the next field dates
    handshake_mono: float | None = None  # when that handshake happened; None: not dated


ActivityMap = Mapping[tuple[str, str], Activity]


def track_activity(prev: ActivityMap, states: Iterable[InterfaceState], mono_now: float,
                   now: float | None = None) -> dict:
    """Fold one poll into the history. Unreadable interfaces keep their history.

    now (the wall clock) dates the handshakes of peers seen for the first time; without
    it they stay undated, and are aged on the wall clock until their value changes."""
    out: dict[tuple[str, str], Activity] = {}
    get = prev.get
    for state in states:
        name = state.name
        if state.peers is None:
            out.update({k: v for k, v in prev.items() if k[0] == name})
            continue
        for peer in state.peers:
            key = (name, peer.public_key)
            out[key] = fold_activity(get(key), peer, mono_now, now)
    return out


def fold_activity(old: Activity | None, peer: Peer, mono_now: float, now: float | None) -> Activity:
    """One peer's history after one poll (see track_activity): the same object when
    nothing changed, on which a kept verdict keys."""
    rx, hs = peer.rx_bytes, peer.last_handshake
    if old is None:
        return Activity(rx, mono_now, hs, _first_sight(hs, now, mono_now))
    if rx == old.rx_bytes and hs == old.handshake and (old.handshake_mono is not None or now is None):
        return old
    # fewer bytes than before is a reset (peer removed and re-added, interface
    # re-created): a new baseline, not a sign of life
    since = mono_now if rx > old.rx_bytes else old.since
    if hs != old.handshake:
        hs_mono = mono_now if hs > 0 else 0.0
    elif old.handshake_mono is None:
        hs_mono = _first_sight(hs, now, mono_now)
    else:
        hs_mono = old.handshake_mono
    return Activity(rx, since, hs, hs_mono)


def _first_sight(handshake: float, now: float | None, mono_now: float) -> float | None:
    """The monotonic time of a handshake seen for the first time, from its wall-clock
    age (0 for one stamped in the future); None without a wall clock to age it by."""
    if handshake <= 0:
        return 0.0  # never: nothing to date, and nothing to date later either
    if now is None:
        return None
    return mono_now - (now - handshake if now > handshake else 0.0)


def handshake_age(peer: Peer, now: float, activity: Activity | None = None,
                  mono_now: float | None = None) -> float | None:
    """Seconds since the peer's last handshake; None: never. On the monotonic clock when
    activity (this peer's track_activity history) dates this handshake, else on the
    wall clock (0 for a handshake stamped in the future)."""
    hs = peer.last_handshake
    if hs <= 0:
        return None
    if activity is not None and mono_now is not None and activity.handshake == hs \
            and activity.handshake_mono is not None:
        age = mono_now - activity.handshake_mono
    else:
        age = now - hs
    return age if age > 0 else 0.0


def presence(peer: Peer, now: float, handshake_timeout: float, idle_timeout: float,
             activity: Activity | None, mono_now: float) -> tuple[bool, str]:
    """Is the peer connected to us now? Returns (up, reason)."""
    return _judge(handshake_age(peer, now, activity, mono_now), handshake_timeout, idle_timeout, activity, mono_now)


def _judge(age: float | None, handshake_timeout: float, idle_timeout: float,
           activity: Activity | None, mono_now: float) -> tuple[bool, str]:
    if age is None:
        return False, NEVER
    if age >= handshake_timeout:
        return False, EXPIRED
    if idle_timeout > 0 and activity is not None and mono_now - activity.since >= idle_timeout:
        return False, IDLE
    return True, UP


class PeerVerdict(NamedTuple):
    interface: str
    peer: Peer
    up: bool
    reason: str
    handshake_age: float | None  # None: never
    description: str = ""
    routes: tuple[Route, ...] = ()  # what this peer asks for while up
    rules: tuple[Rule, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.peer.short_key}({self.description})" if self.description else self.peer.short_key


@dataclass
class Desired:
    verdicts: list[PeerVerdict] = field(default_factory=list)
    routes: dict[Route, PeerVerdict] = field(default_factory=dict)
    # Rules and the routes of return-path tables, with who wants them ("peer <label>",
    # "return_path <name>"): filled by desired_rules().
    rules: dict[Rule, str] = field(default_factory=dict)
    path_routes: dict[Route, str] = field(default_factory=dict)
    # Interfaces we could not read this time: their routes stay as they are.
    frozen: set[str] = field(default_factory=set)
    # Routes of up peers left out because they would carry the peer's own endpoint into
    # its interface (see peer_plan): (verdict, route, the endpoint's address, e.g.
    # "203.0.113.7" or "2001:db8::1"). Listed again at every poll while it holds, so a
    # caller that warns does it once per change. Neither in routes nor in the
    # verdict's routes.
    skipped: list[tuple[PeerVerdict, Route, str]] = field(default_factory=list)
    # Peers held back because another router claimed them (hand_off): what to remember
    # of each until its next handshake here. Their verdicts say MOVED, except for those
    # up again by their packets (Moved.back), kept to date the claims that follow.
    moved: dict[tuple[str, str], "Moved"] = field(default_factory=dict)
    # Made by tracker.PeerTracker, which keeps them between polls: the up peers' rules
    # with who wants them (desired_rules takes them as they are), and the peers whose
    # verdict differs from the last pass's ((interface, key) -> verdict, None: gone);
    # None: not known, compare every verdict.
    peer_rules: dict[Rule, str] | None = None
    changed: dict[tuple[str, str], PeerVerdict | None] | None = None
    # tracker.PeerTracker's: its pass number, whose routes dict is the tracker's own
    # (kept up to date, not copied: the next pass changes it); the routes it added since
    # the pass before, and those it removed with who wanted them (routes_gone): what
    # the reconciler plans from (None: not known) and what owner() names.
    serial: int = 0
    routes_added: set[Route] | None = None
    routes_in: Callable[[Iterable], list[Route]] | None = None  # routes' slots among these (this pass only)
    routes_gone: dict[Route, PeerVerdict] = field(default_factory=dict)


@lru_cache(maxsize=1 << 16)  # the same inputs every poll: computed once
def peer_routes(interface: str, table: int, metric: int, route_default: bool,
                allowed_ips: tuple[str, ...]) -> tuple[Route, ...]:
    out = []
    for prefix in allowed_ips:
        family, address, plen = parse_prefix(prefix)
        if plen == 0 and not route_default:
            continue  # a default route would take over the whole table
        out.append(Route(table, address, plen, interface, kernel_metric(family, metric)))
    return tuple(out)


class PeerPlan(NamedTuple):
    """What the config makes of one peer, whatever its presence: computed once per
    (config, AllowedIPs, endpoint) and reused every poll (see PlanMemo)."""

    allowed_ips: tuple[str, ...]
    description: str
    idle_timeout: float
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    slots: tuple[tuple[int, str, int], ...]  # each route's slot (Route.slot), made once
    endpoint: str | None = None
    skipped: tuple[Route, ...] = ()  # routes that would carry the endpoint (see peer_plan)
    endpoint_address: str = ""


def peer_plan(config: Config, iface, peer: Peer) -> PeerPlan:
    pconf = config.peer(iface.name, peer.public_key)
    idle = iface.idle_timeout
    source_table = iface.source_table
    if pconf is not None:
        if pconf.idle_timeout is not None:
            idle = pconf.idle_timeout
        if pconf.source_table is not None:
            source_table = pconf.source_table
    routes: tuple[Route, ...] = ()
    skipped: tuple[Route, ...] = ()
    address = ""
    if pconf is None or pconf.route:
        routes = peer_routes(iface.name, iface.table, iface.metric, iface.route_default, peer.allowed_ips)
        # A route that holds the peer's own endpoint would carry the encrypted packets
        # into the tunnel itself: the session dies, the route goes, and round again. So
        # such a prefix is skipped. Not a host exception for the endpoint instead (as
        # wg-quick's users add by hand): that needs the endpoint's current route, i.e.
        # I/O outside this core, and would fight netifd or wg-quick for the default
        # path. Only in the tables of the kernel's own rules, which every packet of the
        # router looks up; any other table carries only what some rule sends there,
        # rules wgagent does not see (wg-quick exempts its own packets by fwmark).
        endpoint = endpoint_address(peer.endpoint) if routes and iface.table in _EVERY_PACKETS_TABLES else None
        if endpoint is not None:
            skipped = _covering(routes, endpoint)
            if skipped:
                routes = tuple(r for r in routes if r not in skipped)
                address = endpoint[2]
    return PeerPlan(peer.allowed_ips, pconf.description if pconf else "", idle, routes,
                    peer_rules(source_table, config.agent.rule_priority, peer.allowed_ips),
                    tuple(r.slot for r in routes), peer.endpoint, skipped, address)


# local, main, default: the tables of the kernel's own rules (0, 32766, 32767)
_EVERY_PACKETS_TABLES = frozenset((255, 254, 253))


def endpoint_address(endpoint: str | None) -> tuple[int, int, str] | None:
    """'203.0.113.7:51820' or '[2001:db8::1]:51820' -> (family, address as an integer,
    address as inet_ntop spells it, as routes are). None: no endpoint, one we cannot
    read, or one with a scope ('[fe80::1%3]:51820'), which goes out of that interface
    whatever the routes say."""
    if not endpoint:
        return None
    host = endpoint.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:
        return None
    family = AF_INET6 if ":" in host else AF_INET
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        return None
    return family, int.from_bytes(packed, "big"), socket.inet_ntop(family, packed)


def _covering(routes: tuple[Route, ...], endpoint: tuple[int, int, str]) -> tuple[Route, ...]:
    """The routes whose prefix holds the endpoint's address."""
    family, value, address = endpoint
    bits, v6 = (128, True) if family == AF_INET6 else (32, False)
    out = []
    for route in routes:
        if route.prefixlen == bits:  # a host route (most of a hub's): the same spelling or not
            if route.dst == address:
                out.append(route)
        elif (":" in route.dst) == v6:
            shift = bits - route.prefixlen
            if int.from_bytes(socket.inet_pton(family, route.dst), "big") >> shift == value >> shift:
                out.append(route)
    return tuple(out)


class PlanMemo:
    """Peer plans and verdicts of the last poll, for one config. The caller keeps it
    between polls; desired_state() starts it afresh when the config object changes and
    keeps only the peers it saw, so it never outgrows the interfaces."""

    def __init__(self):
        self.config: Config | None = None
        self.plans: dict[tuple[str, str], PeerPlan] = {}
        # (interface, key) -> (the Peer object, its Activity object, verdict, valid until
        # monotonic time)
        self.verdicts: dict[tuple[str, str], tuple] = {}
        self.generation = 0  # counts the polls whose plans differ from the last one's (or the config)


_FOREVER = float("inf")
_new_verdict = tuple.__new__  # PeerVerdict(...) without a NamedTuple's Python-level __new__


def _valid_until(reason: str, age: float, timeout: float, idle: float, activity: Activity | None,
                 mono_now: float) -> float:
    """Until when (monotonic) a verdict stands if neither the peer nor its history
    changes: an up peer's until its handshake expires or it falls idle; an idle one's
    until its handshake expires (it then reads expired, as a fresh verdict would); any
    other for good (only a new handshake, i.e. a changed peer, lifts it). Only the
    monotonic clock: a step of the wall clock changes no verdict.

    A handshake that activity dates expires at its date + timeout, the same float at
    every poll (mono_now - age would differ in its last bits from poll to poll)."""
    if reason != UP and reason != IDLE:
        return _FOREVER
    if activity is not None and activity.handshake_mono and mono_now - activity.handshake_mono == age:
        until = activity.handshake_mono + timeout
    else:
        until = mono_now - age + timeout
    if reason == UP and idle > 0 and activity is not None and activity.since + idle < until:
        return activity.since + idle
    return until


def judge_peer(interface: str, peer: Peer, plan: PeerPlan, activity: Activity | None, now: float,
               mono_now: float, timeout: float) -> tuple[PeerVerdict, float]:
    """One peer's verdict, and until when (monotonic) it stands (_valid_until)."""
    age = handshake_age(peer, now, activity, mono_now)
    up, reason = _judge(age, timeout, plan.idle_timeout, activity, mono_now)
    verdict = _new_verdict(PeerVerdict, (interface, peer, up, reason, age, plan.description, plan.routes, plan.rules))
    return verdict, _valid_until(reason, age, timeout, plan.idle_timeout, activity, mono_now)


def desired_state(config: Config, states: Iterable[InterfaceState], now: float,
                  activity: ActivityMap, mono_now: float, memo: PlanMemo | None = None,
                  foreign: Mapping[tuple[int, str, int], tuple[Foreign, ...]] | None = None,
                  moved: Mapping[tuple[str, str], "Moved"] | None = None) -> Desired:
    """Verdicts for every observed peer of a configured interface, the routes the
    kernel should hold, and the routes left out because they would carry a peer's own
    endpoint (Desired.skipped). When two up peers claim the same prefix in the same
    table, the one with the newer handshake wins (ties: interface, then key).

    foreign: the kernel's routes of other protocols by slot, dated (date_foreign);
    moved: Desired.moved of the previous pass. With them, an up peer that another
    router has claimed since its last handshake here is held back (hand_off): its
    verdict says MOVED and Desired.moved remembers it.

    activity is track_activity's history of the same poll: it dates handshakes and rx
    on the monotonic clock; a peer without one is judged by the wall clock (status).

    This runs for every peer on every poll, so the per-peer config work is memoised,
    and a verdict stands while its Peer object and history do (see PlanMemo)."""
    result = Desired()
    memo = memo or PlanMemo()
    fresh = memo.config is not config
    old_plans = {} if fresh else memo.plans
    old_verdicts = {} if fresh else memo.verdicts
    plans: dict[tuple[str, str], PeerPlan] = {}
    kept: dict[tuple[str, str], tuple] = {}
    timeout = config.agent.handshake_timeout
    claims: dict[tuple[int, str, int], tuple[Route, PeerVerdict]] = {}
    verdicts = result.verdicts
    moved = moved or {}
    changed = False  # a plan made anew this poll
    handing = bool(foreign) or bool(moved)  # a hub without a routing daemon skips all of it
    for state in states:
        iface = config.interface(state.name)
        if iface is None:
            continue
        if state.peers is None:
            result.frozen.add(state.name)
            continue
        name = state.name
        for peer in state.peers:
            key = (name, peer.public_key)
            act = activity.get(key)
            prev = old_verdicts.get(key)
            # the same Peer object (wg_uapi's memo: an unchanged block) with the same rx
            # history, and no deadline passed: the verdict stands (its handshake_age is
            # then as of when it was made; log lines compute their own with
            # handshake_age(peer, now, activity, mono_now))
            if prev is not None and prev[0] is peer and prev[1] is act and mono_now < prev[3]:
                verdict = prev[2]
                plan = plans[key] = old_plans[key]
                kept[key] = prev
                up = verdict.up
            else:
                plan = old_plans.get(key)
                if plan is None or plan.allowed_ips != peer.allowed_ips or plan.endpoint != peer.endpoint:
                    plan = peer_plan(config, iface, peer)
                    changed = True
                plans[key] = plan
                verdict, until = judge_peer(name, peer, plan, act, now, mono_now, timeout)
                kept[key] = (peer, act, verdict, until)
                up = verdict.up
            if handing and plan.routes:
                record = moved.get(key)
                if up:
                    found = claims_for(plan.routes, foreign, iface) if foreign else ()
                    hs_mono = act.handshake_mono if act is not None and act.handshake == peer.last_handshake else None
                    decision, record = hand_off(peer.last_handshake, hs_mono, found, record, peer.rx_bytes, mono_now)
                    if decision == MOVED:
                        verdict, up = verdict._replace(up=False, reason=MOVED), False
                elif record is not None and record.handshake != peer.last_handshake:
                    record = None  # a newer handshake (the peer is down for another reason)
                if record is not None:
                    result.moved[key] = record
            verdicts.append(verdict)
            if up:
                for slot, route in zip(plan.slots, plan.routes):
                    rival = claims.get(slot)
                    if rival is None or _newer(verdict, rival[1], now, activity, mono_now):
                        claims[slot] = (route, verdict)
                if plan.skipped:
                    result.skipped += [(verdict, r, plan.endpoint_address) for r in plan.skipped]
    if changed or fresh or len(plans) != len(old_plans):
        memo.generation += 1
    memo.config, memo.plans, memo.verdicts = config, plans, kept
    result.routes = dict(claims.values())
    return result


# Offsets inside wgagent's rule band (config.RULE_BAND wide, from agent.rule_priority):
# the suppress rule first, so that connected and other specific routes of main win
# over every source rule (LAN clients reaching the router's WAN address); then the
# return paths; then per-peer source rules.
SUPPRESS_OFFSET, RETURN_PATH_OFFSET, PEER_OFFSET = 0, 10, 100


@lru_cache(maxsize=1 << 16)
def peer_rules(table: int | None, base: int, allowed_ips: tuple[str, ...]) -> tuple[Rule, ...]:
    if table is None:
        return ()
    out = []
    for prefix in allowed_ips:
        family, address, plen = parse_prefix(prefix)
        if plen == 0:
            continue  # "from all" would take every packet of the router
        out.append(Rule(family, base + PEER_OFFSET, table, address, plen))
    return tuple(out)


@dataclass(frozen=True)
class PathState:
    """What the kernel says about a return path's device now."""

    name: str
    device: str = ""  # "" when it could not be resolved
    present: bool = False
    pointopoint: bool = False
    addresses: tuple[tuple[str, int], ...] = ()  # global addresses with prefix length
    learned_gateways: tuple[tuple[int, str], ...] = ()  # (family, gateway) from the device's default routes
    error: str = ""
    stale: str = ""  # why the device is the one netifd named last rather than a fresh answer


class Resolution(NamedTuple):
    """What netifd said about a return path's `option network` this time."""

    device: str = ""
    error: str = ""
    transient: bool = False  # netifd could not be asked (see netifd.ResolveError)


def return_path_state(cfg: ReturnPathConfig, links: Mapping, addrs: Mapping, gateways: Mapping,
                      resolution: Resolution = Resolution(), last_device: str = "") -> PathState:
    """The path's device and what the kernel holds for it. A ubus hiccup (netifd
    restarting, rpcd slow) must not drop a working return path: while netifd cannot
    be asked, the device it named last stands, and the path goes only when that
    device is gone from the kernel. An answer that the network has no device wins."""
    device, stale = cfg.device, ""
    if cfg.network:
        device = resolution.device
        if not device and resolution.transient and last_device:
            device, stale = last_device, resolution.error
        if not device:
            return PathState(cfg.name, error=resolution.error)
    link = links.get(device)
    if link is None:
        return PathState(cfg.name, device, error=f"device {device} does not exist", stale=stale)
    learned = tuple((fam, gw) for (dev, fam), gw in sorted(gateways.items()) if dev == device)
    return PathState(cfg.name, device, True, link.pointopoint, tuple(addrs.get(device, ())), learned, stale=stale)


def return_path_wants(cfg: ReturnPathConfig, state: PathState, base: int) -> tuple[list[Rule], list[Route], list[str]]:
    """Rules and table routes for one return path; and problems worth a warning."""
    rules: list[Rule] = []
    routes: list[Route] = []
    problems: list[str] = []
    if not state.present:
        return rules, routes, problems
    if state.stale:
        problems.append(f"{state.stale}; return_path '{cfg.name}' keeps device {state.device}, "
                        f"the last one netifd named")
    families = set()
    for addr, plen in state.addresses:
        ip = ipaddress.ip_interface(f"{addr}/{plen}")
        family = AF_INET6 if ip.version == 6 else AF_INET
        families.add(family)
        rules.append(Rule(family, base + RETURN_PATH_OFFSET, cfg.table, str(ip.ip), ip.max_prefixlen))
        if plen < ip.max_prefixlen:
            routes.append(Route(cfg.table, str(ip.network.network_address), plen, state.device,
                                kernel_metric(family, 0)))
    configured = {AF_INET6 if ":" in g else AF_INET: g for g in cfg.gateways}
    learned = dict(state.learned_gateways)
    for family in sorted(families):
        gateway = configured.get(family, learned.get(family))
        if gateway is None and not state.pointopoint:
            problems.append(f"no {'IPv6' if family == AF_INET6 else 'IPv4'} gateway known on {state.device}: "
                            f"set option gateway in return_path '{cfg.name}'")
            continue
        routes.append(Route(cfg.table, "::" if family == AF_INET6 else "0.0.0.0", 0, state.device,
                            kernel_metric(family, 0), gateway or ""))
    return rules, routes, problems


def desired_rules(config: Config, desired: Desired, paths: Iterable[PathState]) -> list[str]:
    """Fill desired.rules and desired.path_routes; returns problems to warn about."""
    base = config.agent.rule_priority
    problems: list[str] = []
    if desired.peer_rules is None:
        add_peer_rules(desired.rules, desired.verdicts)
    else:
        desired.rules.update(desired.peer_rules)
    by_name = {p.name: p for p in paths}
    for rp in config.return_paths:
        rules, routes, trouble = return_path_wants(rp, by_name.get(rp.name, PathState(rp.name)), base)
        problems += trouble
        for rule in rules:
            desired.rules.setdefault(rule, f"return_path {rp.name}")
        for route in routes:
            desired.path_routes.setdefault(route, f"return_path {rp.name}")
    for family in {r.family for r in desired.rules}:
        desired.rules[Rule(family, base + SUPPRESS_OFFSET, 254, suppress_prefixlen=0)] = "suppress"
    return problems


def add_peer_rules(rules: dict[Rule, str], verdicts: Iterable[PeerVerdict]) -> None:
    """The up peers' rules, each wanted by the first peer that has it."""
    for v in verdicts:
        if v.up:
            for rule in v.rules:
                rules.setdefault(rule, f"peer {v.label}")


@dataclass
class RulePlan:
    add: list[Rule] = field(default_factory=list)
    delete: list[Rule] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)


def plan_rules(desired: Iterable[Rule], owned: Iterable[Rule]) -> RulePlan:
    want, have = set(desired), set(owned)
    return RulePlan(add=sorted(want - have), delete=sorted(have - want))


def _newer(a: PeerVerdict, b: PeerVerdict, now: float, activity: ActivityMap, mono_now: float) -> bool:
    """Has a the newer handshake (ties: interface, then key)? By the ages now: not the
    verdicts' (a kept verdict's is as of when it was made), nor the wall-clock stamps
    (across a step of the clock their order is not the handshakes')."""
    age_a = handshake_age(a.peer, now, activity.get((a.interface, a.peer.public_key)), mono_now)
    age_b = handshake_age(b.peer, now, activity.get((b.interface, b.peer.public_key)), mono_now)
    return (age_a, a.interface, a.peer.public_key) < (age_b, b.interface, b.peer.public_key)


# --- the hand-off between routers: "the newest connection wins"

KEEP, BACK = "keep", "back"  # hand_off's decisions, with MOVED


# A held-back peer whose packets still arrive here after this long is connected here
# (its claim was older news); packets in flight from before a move arrive sooner.
SETTLE_SECONDS = 0.5


class Moved(NamedTuple):
    """A peer held back because another router claimed it: until it has a newer
    handshake here than `handshake` (its last_handshake when it moved), or its packets
    keep arriving here after the move (see hand_off)."""

    handshake: float
    route: Route  # our route whose slot was claimed
    claim: Foreign  # the other router's route that claimed it
    at: float = 0.0  # monotonic: when it was held back (back: when its packets showed it here)
    rx: int | None = None  # its rx_bytes at the first read SETTLE_SECONDS after `at`
    back: bool = False  # up again by its packets: claims dated up to `at` are older news


def hand_off(handshake: float, handshake_mono: float | None, claims: Iterable[tuple[Route, Foreign]],
             moved: Moved | None, rx: int | None = None, mono: float | None = None) -> tuple[str, Moved | None]:
    """For a peer that is up here by its handshake: keep its routes, hold them back
    (MOVED, with what to remember), or bring them back (BACK) after a move.

    claims: (our route, a routing daemon's route for the same slot via another device)
    for the peer's prefixes; each claim dated (Foreign.since) when it appeared or last
    changed its next hop. handshake_mono: when the peer's current handshake happened
    (track_activity), None when undated. rx, mono: the peer's rx_bytes in this read and
    the read's monotonic time (None: the rx rule below is not applied).

    A peer claimed elsewhere AFTER its handshake here has connected at that router
    since: it moved. It stays held back, whatever the claims do, until its handshake
    here changes, or until its packets show it never left: a client sends to one
    endpoint, so rx that grows between two reads both at least SETTLE_SECONDS after
    the move means it sends here, and the claim was the routing protocol's late news
    of an older connection elsewhere (a Babel update that reached this router just
    after the client's handshake here). Packets in flight from before a move arrive
    within the settle time; the first read after it is the baseline. With a newer
    handshake, claims older than it are the other router's stale view (it lets go when
    it sees our claim): our route comes back and wins locally at its lower metric."""
    same = moved is not None and handshake == moved.handshake
    if same and not moved.back:
        if rx is None or mono is None or mono < moved.at + SETTLE_SECONDS:
            return MOVED, moved
        if moved.rx is None or rx < moved.rx:  # the baseline (or a reset counter's new one)
            return MOVED, moved._replace(rx=rx)
        if rx == moved.rx:
            return MOVED, moved
        return BACK, moved._replace(at=mono, rx=None, back=True)
    since = moved.at if same else handshake_mono  # back by its packets: claims after that read
    newest = max(claims, key=lambda c: c[1].since, default=None)
    if newest is not None and (since is None or newest[1].since > since):
        return MOVED, Moved(handshake, *newest, at=mono or 0.0)
    if same:
        return KEEP, moved
    return (BACK if moved is not None else KEEP), None


def claims_for(routes: Iterable[Route], foreign: Mapping[tuple[int, str, int], tuple[Foreign, ...]],
               iface) -> list[tuple[Route, Foreign]]:
    """The routes of the interface's yield_to protocols that hold a slot of ours via
    another device: another router's. (Unreachable routes, which Babel installs for a
    prefix it lost, are no unicast routes: the observer never lists them.)"""
    out = []
    yields = iface.yield_to
    for route in routes:
        for f in foreign.get(route.slot, ()):
            if f.proto in yields and f.device != route.ifname:
                out.append((route, f))
    return out


def conflicting(wanted: Iterable[Route], foreign: Mapping[tuple[int, str, int], tuple[Foreign, ...]],
                yield_to: Callable[[str], frozenset]) -> dict[tuple[int, str, int], int]:
    """Slot -> protocol of the wanted routes' slots held by a route of a protocol the
    route's interface does not yield to (yield_to(ifname)): a conflict, left to its
    owner (plan_routes). A yield_to protocol's route is none: ours goes beside it."""
    out: dict[tuple[int, str, int], int] = {}
    if not foreign:
        return out
    for route in wanted:
        others = foreign.get(route.slot)
        if others:
            yields = yield_to(route.ifname)
            for f in others:
                if f.proto not in yields:
                    out[route.slot] = f.proto
                    break
    return out


def outranked(kept: Iterable[Route], foreign: Mapping[tuple[int, str, int], tuple[Foreign, ...]],
              yield_to: Callable[[str], frozenset]) -> list[tuple[Route, Foreign]]:
    """Our routes beside a yield_to route whose metric is not above ours: theirs wins
    the lookup (an IPv6 metric 0 is 1024 in the kernel, BIRD's is 32), or, at the same
    metric, BIRD's IPv4 replace would overwrite ours (it does not check the protocol)."""
    out: list[tuple[Route, Foreign]] = []
    if not foreign:
        return out
    for route in kept:
        for f in foreign.get(route.slot, ()):
            if f.proto in yield_to(route.ifname) and f.metric <= route.metric:
                out.append((route, f))
    return out


def uncovered(prefixes: Iterable[str], allowed_ips: Iterable[str]) -> list[str]:
    """The prefixes no AllowedIP holds whole (for `check`: a site tunnel's peers must
    take the pool, or WireGuard drops what a routing daemon sends into the tunnel)."""
    nets = [ipaddress.ip_network(a, strict=False) for a in allowed_ips]
    out = []
    for prefix in prefixes:
        p = ipaddress.ip_network(prefix, strict=False)
        if not any(n.version == p.version and p.subnet_of(n) for n in nets):
            out.append(prefix)
    return out


_OLDEST = float("-inf")


def date_foreign(old: Mapping | None, new: Mapping[tuple[int, str, int], tuple[Foreign, ...]], mono: float,
                 held: Iterable[tuple[int, str, int]] = ()) -> dict[tuple[int, str, int], tuple[Foreign, ...]]:
    """The new view's routes of others, dated: one the old view had (same protocol,
    metric, next hop and device) keeps its date; any other, a changed next hop
    included (a claim can arrive as RTM_NEWROUTE replacing a route that was there), is
    dated mono. In the first view (old None) a route in a slot where we hold a route
    of our own (adopted from an earlier run) is dated oldest: after kill -9 and a
    restart, the router that held a peer keeps it; elsewhere the claim is new."""
    out = {}
    held = set(held) if old is None else set()
    for slot, routes in new.items():
        before = {f.key: f.since for f in old.get(slot, ())} if old else {}
        default = _OLDEST if slot in held else mono
        out[slot] = tuple(f._replace(since=before.get(f.key, default)) for f in routes)
    return out


@dataclass
class RoutePlan:
    add: list[Route] = field(default_factory=list)
    delete: list[Route] = field(default_factory=list)
    # Desired routes not installed because a route of another protocol holds the
    # same (table, prefix): (our route, the other route's protocol).
    conflicts: list[tuple[Route, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)


def plan_routes(desired: Iterable[Route], owned: Iterable[Route],
                foreign: Mapping[tuple[int, str, int], int], frozen: Iterable[str] = ()) -> RoutePlan:
    """The difference between what we want and what the kernel holds under our tag.

    foreign maps (table, dst, prefixlen) of routes of other protocols to their
    protocol: such a slot is left to its owner. Routes on frozen interfaces (not
    readable this time) are kept as they are."""
    frozen = set(frozen)
    plan = RoutePlan()
    want: set[Route] = set(desired)
    if foreign:
        for route in sorted(r for r in want if r.slot in foreign):
            plan.conflicts.append((route, foreign[route.slot]))
            want.discard(route)
    have = set(owned)
    plan.delete = sorted(r for r in have - want if r.ifname not in frozen)
    plan.add = sorted(want - have)
    return plan
