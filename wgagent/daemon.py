"""The loop: wake (rtnetlink event, poll timer, signal) -> observe -> decide -> apply.

Observation is cheap for WireGuard (one dump per interface per poll) and costly
for the route table at scale, so the route view is re-read only when rtnetlink
says somebody else changed something, when our own apply failed, or every
`RESYNC_SECONDS` regardless. Everything else the daemon remembers (rx history,
who is up, what it has warned about) only shapes logs and idle detection.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field

from . import config as config_mod
from . import log as log_mod
from .config import Config, ConfigError
from .model import Route
from .policy import Desired, PeerVerdict, desired_state, plan_routes, track_activity
from .rtnl import Rtnl, RtnlEvents
from .wgsource import PeerSources

RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.02  # after an event, let a burst (netifd flushing a device) arrive


@dataclass
class RouteView:
    """The kernel's routes as last read, kept current with our own changes."""

    owned: set[Route] = field(default_factory=set)
    foreign: dict = field(default_factory=dict)
    read_at: float = -1e18


class Daemon:
    def __init__(self, config: Config, rtnl: Rtnl, sources: PeerSources, *,
                 clock=time.time, mono=time.monotonic):
        self.config = config
        self.rtnl = rtnl
        self.sources = sources
        self.clock, self.mono = clock, mono
        self.log = log_mod.get()
        self.view = RouteView()
        self.dirty = True
        self.activity: dict = {}
        self.was_up: dict[tuple[str, str], PeerVerdict] = {}
        self.route_owner: dict[Route, PeerVerdict] = {}
        self.iface_errors: dict[str, str] = {}
        self.conflicts_warned: set = set()
        self.last_desired = Desired()

    # --- one pass

    def observe(self):
        links = self.rtnl.links()
        states = [self.sources.read(i.name, links.get(i.name)) for i in self.config.interfaces]
        return links, states

    def reconcile(self) -> None:
        mono = self.mono()
        links, states = self.observe()
        self._log_interface_states(states)
        self.activity = track_activity(self.activity, states, mono)
        if self.config.agent.enabled:
            desired = desired_state(self.config, states, self.clock(), self.activity, mono)
        else:
            desired = Desired()
        self._log_peer_changes(desired)
        if self.dirty or mono - self.view.read_at >= RESYNC_SECONDS:
            index_to_name = {link.index: name for name, link in links.items()}
            owned, foreign = self.rtnl.routes(index_to_name)
            self.view = RouteView(set(owned), foreign, mono)
            self.dirty = False
        plan = plan_routes(desired.routes, self.view.owned, self.view.foreign, desired.frozen)
        self._warn_conflicts(plan.conflicts)
        self._apply(plan, desired, links)
        self.last_desired = desired
        self.route_owner = dict(desired.routes)

    def _apply(self, plan, desired: Desired, links) -> None:
        removed: dict[tuple, list[Route]] = {}
        added: dict[tuple, list[Route]] = {}
        for route in plan.delete:
            link = links.get(route.ifname)
            try:
                self.rtnl.delete_route(route, link.index if link else None)
            except OSError as e:
                self.dirty = True
                self.log.warning("route_remove_failed", iface=route.ifname, prefix=route.prefix,
                                 table=self._table(route.table), error=str(e))
                continue
            self.view.owned.discard(route)
            removed.setdefault(self._owner_key(route, desired), []).append(route)
        for route in plan.add:
            link = links.get(route.ifname)
            if link is None:
                continue
            try:
                self.rtnl.add_route(route, link.index)
            except OSError as e:
                self.dirty = True
                self.log.warning("route_add_failed", iface=route.ifname, prefix=route.prefix,
                                 table=self._table(route.table), error=str(e))
                continue
            self.view.owned.add(route)
            added.setdefault(self._owner_key(route, desired), []).append(route)
        for (iface, key), routes in removed.items():
            self._log_routes("route_removed", iface, key, routes, desired)
        for (iface, key), routes in added.items():
            self._log_routes("route_added", iface, key, routes, desired)

    # --- logging of changes: one line each, nothing when nothing changed

    def _owner_key(self, route: Route, desired: Desired) -> tuple[str, str]:
        owner = desired.routes.get(route) or self.route_owner.get(route)
        return (route.ifname, owner.peer.public_key if owner else "")

    def _log_routes(self, event: str, iface: str, key: str, routes: list[Route], desired: Desired):
        verdict = None
        for v in desired.verdicts:
            if v.interface == iface and v.peer.public_key == key:
                verdict = v
        fields = {"iface": iface, "prefixes": ",".join(r.prefix for r in routes),
                  "table": self._table(routes[0].table)}
        if verdict is not None:
            fields.update(peer=verdict.label, handshake_age=_age(verdict.handshake_age), reason=verdict.reason)
        elif key:
            fields.update(peer=key[:8], reason="peer-removed")
        else:
            fields.update(peer="-", reason="not-desired")
        self.log.info(event, **fields)

    def _log_peer_changes(self, desired: Desired) -> None:
        now_up: dict[tuple[str, str], PeerVerdict] = {}
        seen: set[tuple[str, str]] = set()
        for v in desired.verdicts:
            key = (v.interface, v.peer.public_key)
            seen.add(key)
            if v.up:
                now_up[key] = v
                if key not in self.was_up:
                    self._log_peer("peer_up", v)
            elif key in self.was_up:
                self._log_peer("peer_down", v)
        for key, v in self.was_up.items():
            if key not in seen and v.interface not in desired.frozen:
                self.log.info("peer_down", iface=v.interface, peer=v.label, reason="peer-removed")
            elif v.interface in desired.frozen:
                now_up[key] = v  # unreadable this time: keep what we knew
        self.was_up = now_up

    def _log_peer(self, event: str, v: PeerVerdict):
        self.log.info(event, iface=v.interface, peer=v.label, endpoint=v.peer.endpoint or "-",
                      handshake_age=_age(v.handshake_age), reason=v.reason,
                      prefixes=",".join(r.prefix for r in v.routes) or "-")

    def _log_interface_states(self, states) -> None:
        for s in states:
            old = self.iface_errors.get(s.name)
            self.iface_errors[s.name] = s.error
            if old == s.error:
                continue
            if s.error:
                self.log.warning("interface_unavailable", iface=s.name, error=s.error)
            elif old is None:
                self.log.info("interface_found", iface=s.name, backend=s.backend)
            else:
                self.log.info("interface_available", iface=s.name, backend=s.backend)

    def _warn_conflicts(self, conflicts) -> None:
        current = set()
        for route, proto in conflicts:
            key = (route.slot, proto)
            current.add(key)
            if key not in self.conflicts_warned:
                self.log.warning(
                    "route_conflict", iface=route.ifname, prefix=route.prefix, table=self._table(route.table),
                    other_proto=proto,
                    hint=f"a route of protocol {proto} holds this prefix; wgagent leaves it alone. If netifd "
                         f"installs it, set option route_allowed_ips '0' on the wireguard_{route.ifname} "
                         f"peer sections in /etc/config/network")
        self.conflicts_warned = current

    def _table(self, num: int) -> str:
        return config_mod.table_name(num, self.config.tables)

    # --- stop

    def remove_owned(self) -> int:
        links = self.rtnl.links()
        owned, _ = self.rtnl.routes({link.index: name for name, link in links.items()})
        n = 0
        for route in owned:
            link = links.get(route.ifname)
            if self.rtnl.delete_route(route, link.index if link else None):
                n += 1
        if owned:
            self.log.info("routes_removed_on_stop", count=n,
                          prefixes=",".join(r.prefix for r in sorted(owned)[:20]) + (",…" if len(owned) > 20 else ""))
        return n

    # --- reload

    def reload(self) -> bool:
        try:
            new = config_mod.load(self.config.path)
        except ConfigError as e:
            self.log.error("reload_failed", error=str(e), action="keeping the running config")
            return False
        for w in new.warnings:
            self.log.warning("config_warning", detail=w)
        log_mod.set_level(new.agent.log_level)
        self.config = new
        self.dirty = True
        self.log.info("reloaded", path=new.path, interfaces=",".join(i.name for i in new.interfaces) or "-")
        return True


def _age(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f}s"


class Runner:
    """Owns the sockets and the signal plumbing; runs the Daemon until told to stop."""

    def __init__(self, daemon: Daemon, events: RtnlEvents):
        self.daemon = daemon
        self.events = events
        self.stop_signal: int | None = None
        self.reload_requested = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_signal = signum

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        d = self.daemon
        d.log.info("started", pid=os.getpid(), interfaces=",".join(i.name for i in d.config.interfaces) or "-",
                   poll_interval=d.config.agent.poll_interval)
        next_poll = 0.0
        while self.stop_signal is None:
            if self.reload_requested:
                self.reload_requested = False
                d.reload()
                next_poll = 0.0
            now = time.monotonic()
            if now >= next_poll:
                d.reconcile()
                next_poll = now + d.config.agent.poll_interval
                continue
            ready, _, _ = select.select([self.events, self._wake_r], [], [], next_poll - now)
            if self._wake_r in ready:
                _drain_pipe(self._wake_r)
            if self.events in ready:
                time.sleep(SETTLE_SECONDS)
                if self.events.drain():
                    d.dirty = True
                    d.reconcile()
        signal.set_wakeup_fd(-1)
        name = signal.Signals(self.stop_signal).name
        if d.config.agent.keep_routes_on_stop:
            d.log.info("stopping", signal=name, routes="kept (keep_routes_on_stop)")
        else:
            d.log.info("stopping", signal=name, routes="removing")
            d.remove_owned()
        return 0


def _drain_pipe(fd: int):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
