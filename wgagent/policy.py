"""The decision core: which peers are up and which routes should exist. Pure.

(config, observed interfaces, clocks, rx history) -> peer verdicts and desired routes;
(desired routes, routes held under our tag, routes of others) -> a plan.
No I/O: everything here is tested without root.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .config import Config
from .model import InterfaceState, Peer, Route, kernel_metric

# Why a peer is up or down, as logged and shown by `wgagent status`.
UP = "handshake"  # a handshake younger than handshake_timeout, and not idle
NEVER = "no-handshake"
EXPIRED = "handshake-expired"
IDLE = "idle"


@dataclass(frozen=True)
class Activity:
    """When a peer's rx counter last grew (monotonic clock). wgagent keeps this in
    memory because the kernel cannot tell it; after a restart a peer starts fresh."""

    rx_bytes: int
    since: float


ActivityMap = Mapping[tuple[str, str], Activity]


def track_activity(prev: ActivityMap, states: Iterable[InterfaceState], mono_now: float) -> dict:
    """Fold one poll into the rx history. Unreadable interfaces keep their history."""
    out: dict[tuple[str, str], Activity] = {}
    for state in states:
        if state.peers is None:
            out.update({k: v for k, v in prev.items() if k[0] == state.name})
            continue
        for peer in state.peers:
            key = (state.name, peer.public_key)
            old = prev.get(key)
            if old is None or peer.rx_bytes != old.rx_bytes:
                out[key] = Activity(peer.rx_bytes, mono_now)
            else:
                out[key] = old
    return out


def presence(peer: Peer, now: float, handshake_timeout: float, idle_timeout: float,
             activity: Activity | None, mono_now: float) -> tuple[bool, str]:
    """Is the peer connected to us now? Returns (up, reason)."""
    if peer.last_handshake <= 0:
        return False, NEVER
    # A handshake stamped in the future (the clock stepped back, e.g. NTP at boot on
    # a router without RTC) counts as fresh rather than ancient.
    if max(0.0, now - peer.last_handshake) >= handshake_timeout:
        return False, EXPIRED
    if idle_timeout > 0 and activity is not None and mono_now - activity.since >= idle_timeout:
        return False, IDLE
    return True, UP


@dataclass(frozen=True)
class PeerVerdict:
    interface: str
    peer: Peer
    up: bool
    reason: str
    handshake_age: float | None  # None: never
    description: str = ""
    routes: tuple[Route, ...] = ()  # what this peer asks for while up

    @property
    def label(self) -> str:
        return f"{self.peer.short_key}({self.description})" if self.description else self.peer.short_key


@dataclass
class Desired:
    verdicts: list[PeerVerdict] = field(default_factory=list)
    routes: dict[Route, PeerVerdict] = field(default_factory=dict)
    # Interfaces we could not read this time: their routes stay as they are.
    frozen: set[str] = field(default_factory=set)


def peer_routes(interface: str, table: int, metric: int, route_default: bool,
                allowed_ips: Iterable[str]) -> tuple[Route, ...]:
    out = []
    for prefix in allowed_ips:
        net = ipaddress.ip_network(prefix, strict=False)
        if net.prefixlen == 0 and not route_default:
            continue  # a default route would take over the whole table
        family = 10 if net.version == 6 else 2
        out.append(Route(table, str(net.network_address), net.prefixlen, interface,
                         kernel_metric(family, metric)))
    return tuple(out)


def desired_state(config: Config, states: Iterable[InterfaceState], now: float,
                  activity: ActivityMap, mono_now: float) -> Desired:
    """Verdicts for every observed peer of a configured interface, and the routes
    the kernel should hold. When two up peers claim the same prefix in the same
    table, the one with the newer handshake wins (ties: interface, then key)."""
    result = Desired()
    claims: dict[tuple[int, str, int], tuple[Route, PeerVerdict]] = {}
    for state in states:
        iface = config.interface(state.name)
        if iface is None:
            continue
        if state.peers is None:
            result.frozen.add(state.name)
            continue
        for peer in state.peers:
            pconf = config.peer(state.name, peer.public_key)
            idle = iface.idle_timeout
            if pconf is not None and pconf.idle_timeout is not None:
                idle = pconf.idle_timeout
            up, reason = presence(peer, now, config.agent.handshake_timeout, idle,
                                  activity.get((state.name, peer.public_key)), mono_now)
            age = max(0.0, now - peer.last_handshake) if peer.last_handshake > 0 else None
            routes: tuple[Route, ...] = ()
            if pconf is None or pconf.route:
                routes = peer_routes(state.name, iface.table, iface.metric, iface.route_default,
                                     peer.allowed_ips)
            verdict = PeerVerdict(state.name, peer, up, reason, age,
                                  pconf.description if pconf else "", routes)
            result.verdicts.append(verdict)
            if not up:
                continue
            for route in routes:
                rival = claims.get(route.slot)
                if rival is None or _newer(verdict, rival[1]):
                    claims[route.slot] = (route, verdict)
    result.routes = dict(claims.values())
    return result


def _newer(a: PeerVerdict, b: PeerVerdict) -> bool:
    return (-a.peer.last_handshake, a.interface, a.peer.public_key) < \
           (-b.peer.last_handshake, b.interface, b.peer.public_key)


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
    want: set[Route] = set()
    for route in desired:
        proto = foreign.get(route.slot)
        if proto is not None:
            plan.conflicts.append((route, proto))
        else:
            want.add(route)
    have = set(owned)
    plan.delete = sorted(r for r in have - want if r.ifname not in frozen)
    plan.add = sorted(want - have)
    return plan
