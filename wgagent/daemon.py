"""The loop: wake (rtnetlink event, poll timer, signal) -> observe -> decide -> apply.

Observation is cheap for WireGuard (one dump per interface per poll) and costly
for the route table at scale, so the route view is re-read only when rtnetlink
says somebody else changed something, when our own apply failed, or every
`RESYNC_SECONDS` regardless. Everything else the daemon remembers (rx history,
who is up, what it has warned about) only shapes logs and idle detection.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import signal
import time
from dataclasses import dataclass, field

from . import config as config_mod
from . import log as log_mod
from . import netifd, ubus
from .config import Config, ConfigError
from .model import Route, Rule
from .policy import (IDLE, Desired, PathState, PeerVerdict, PlanMemo, Resolution, desired_rules, desired_state,
                     handshake_age, plan_routes, plan_rules, return_path_state, track_activity)
from .rtnl import Rtnl, RtnlEvents
from .wgsource import PeerSources

RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.02  # after an event, let a burst (netifd flushing a device) arrive
RESOLVE_TIMEOUT = 1.0  # seconds for one ubus call resolving a return path's network (see _resolve_networks)
RESOLVE_BACKOFF = 5.0  # seconds without asking again after such a call failed
BURST = 20  # more changes of one kind in one pass than this: one summary line (see _log_lines)
RUN_DIR = os.environ.get("WGAGENT_RUN_DIR", "/var/run/wgagent")


def idle_state_path() -> str:
    """Where the daemon of this network namespace says which peers it holds idle.
    Idleness is the one verdict the kernel cannot tell (it needs the rx history), so
    `wgagent status` reads it from here; one file per network namespace, so that two
    daemons on one host (the demo's routers) never share one."""
    return os.path.join(RUN_DIR, f"idle-{os.stat('/proc/self/ns/net').st_ino}.json")


def read_idle_state() -> set[tuple[str, str]]:
    """(interface, public key) of the peers the running daemon holds idle; empty when
    no daemon runs here (its file is gone, or its pid is not alive)."""
    try:
        with open(idle_state_path()) as f:
            state = json.load(f)
        os.kill(state["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {(iface, key) for iface, key in state["idle"]}


@dataclass
class KernelView:
    """The kernel's routes, rules and addresses as last read, kept current with our own changes."""

    owned: set[Route] = field(default_factory=set)
    foreign: dict = field(default_factory=dict)
    rules: set[Rule] = field(default_factory=set)
    paths: list[PathState] = field(default_factory=list)
    read_at: float = -1e18


class Daemon:
    def __init__(self, config: Config, rtnl: Rtnl, sources: PeerSources, *,
                 clock=time.time, mono=time.monotonic):
        self.config = config
        self.rtnl = rtnl
        self.sources = sources
        self.clock, self.mono = clock, mono
        self.log = log_mod.get()
        self.view = KernelView()
        self.dirty = True
        self.activity: dict = {}
        self.plans = PlanMemo()
        self.was_up: dict[tuple[str, str], PeerVerdict] = {}
        self.iface_errors: dict[str, str] = {}
        self.conflicts_warned: set = set()
        # kernel changes that failed, with the errno last warned about: a change that keeps
        # failing (IPv6 disabled on the device) is warned once, not on every poll
        self.failures_warned: dict = {}
        self.links_down: set[str] = set()
        self.idle_written: set | None = None  # what idle_state_path() holds
        self.problems_warned: set = set()
        self.path_seen: dict[str, tuple] = {}
        self.last_desired = Desired()
        self.firewall = None  # a firewall.FirewallSync, when want_firewall() starts one
        self._ubus = None  # connected on first use (a network name to resolve)
        self.path_devices: dict[str, str] = {}  # network -> the device netifd last named for it
        self._resolve_failures: dict[str, str] = {}
        self._resolve_quiet_until = -1e18

    # --- one pass

    def observe(self):
        links = self.rtnl.links()
        states = [self.sources.read(i.name, links.get(i.name)) for i in self.config.interfaces]
        return links, states

    def _read_kernel(self, links, mono: float) -> None:
        index_to_name = {link.index: name for name, link in links.items()}
        dump = self.rtnl.routes(index_to_name)
        addrs = self.rtnl.addresses(index_to_name) if self.config.return_paths else {}
        resolved = self._resolve_networks(mono)
        paths = [return_path_state(rp, links, addrs, dump.gateways, resolved.get(rp.network, Resolution()),
                                   self.path_devices.get(rp.network, "")) for rp in self.config.return_paths]
        self.view = KernelView(set(dump.owned), dump.foreign, set(self.rtnl.rules()), paths, mono)
        self.dirty = False

    def _resolve_networks(self, mono: float) -> dict[str, Resolution]:
        """Ask netifd for the device of each network a return path names. The route
        loop waits for the answer, so: once per read of the kernel (an event, a failed
        change, the resync), each call at most RESOLVE_TIMEOUT, and after a call that
        failed none for RESOLVE_BACKOFF seconds (rpcd hanging during an event storm
        would otherwise stall route repair). The last device each network had is
        remembered: return_path_state() keeps it through such failures."""
        out: dict[str, Resolution] = {}
        for network in dict.fromkeys(rp.network for rp in self.config.return_paths if rp.network):
            if mono < self._resolve_quiet_until:
                out[network] = Resolution(error=self._resolve_failures.get(network, "ubus not answering"),
                                          transient=True)
                continue
            try:
                if self._ubus is None:
                    self._ubus = ubus.connect(self.config.agent.ubus_socket)
                out[network] = Resolution(netifd.resolve(network, self._ubus, timeout=RESOLVE_TIMEOUT))
            except netifd.ResolveError as e:
                out[network] = Resolution(error=str(e), transient=e.transient)
                if e.transient:
                    self._resolve_quiet_until = mono + RESOLVE_BACKOFF
                    self._resolve_failures[network] = str(e)
                else:
                    self.path_devices.pop(network, None)  # netifd says: no device
                continue
            self.path_devices[network] = out[network].device
            self._resolve_failures.pop(network, None)
        return out

    def snapshot(self):
        """Observe and decide without changing anything (for `wgagent status`)."""
        mono = self.mono()
        links, states = self.observe()
        desired = desired_state(self.config, states, self.clock(), {}, mono)
        self._read_kernel(links, mono)
        problems = desired_rules(self.config, desired, self.view.paths)
        return states, desired, self.view, problems

    def reconcile(self) -> None:
        mono = self.mono()
        links, states = self.observe()
        self._log_interface_states(states)
        self.activity = track_activity(self.activity, states, mono)
        if self.config.agent.enabled:
            desired = desired_state(self.config, states, self.clock(), self.activity, mono, self.plans)
            # an unreadable interface keeps what we knew of its peers (routes and rules stay)
            if desired.frozen:
                desired.verdicts += [v for v in self.last_desired.verdicts if v.interface in desired.frozen]
        else:
            desired = Desired()
        self._log_peer_changes(desired, {s.name for s in states if s.backend})
        if self.dirty or mono - self.view.read_at >= RESYNC_SECONDS:
            self._read_kernel(links, mono)
        if self.config.agent.enabled:
            self._warn_problems(desired_rules(self.config, desired, self.view.paths))
            self._log_paths(self.view.paths)
        wanted_routes = set(desired.routes)
        wanted_routes.update(desired.path_routes)
        plan = plan_routes(wanted_routes, self.view.owned, self.view.foreign, desired.frozen)
        rule_plan = plan_rules(desired.rules, self.view.rules)
        self._warn_conflicts(plan.conflicts)
        self._log_links_down(plan, links)
        if plan or rule_plan:
            self._apply(plan, rule_plan, links, desired)
        self.last_desired = desired

    def _owner(self, item, desired: Desired) -> str:
        """Who wants (or wanted) a route or rule: "peer <label>", "return_path <name>", "-"."""
        for d in (desired, self.last_desired):
            v = d.routes.get(item)
            if v is not None:
                return f"peer {v.label}"
            who = d.path_routes.get(item) or d.rules.get(item)
            if who is not None:
                return who
        return "-"

    def _apply(self, plan, rule_plan, links, desired: Desired) -> None:
        done: dict[tuple[str, str, str], list] = {}

        def note(event, item, iface=""):
            done.setdefault((event, iface, self._owner(item, desired)), []).append(item)

        for rule in rule_plan.delete:
            if self._try("rule_remove_failed", self.rtnl.delete_rule, rule, rule=rule.describe()):
                self.view.rules.discard(rule)
                note("rule_removed", rule)
        changes = [("delete", r, links[r.ifname].index if r.ifname in links else None) for r in plan.delete]
        # a device that is down takes no routes (the kernel refuses them, and flushed its
        # own when it went down): they are added when its RTM_NEWLINK says it is up
        changes += [("add", r, links[r.ifname].index) for r in plan.add if r.ifname in links and links[r.ifname].up]
        for (verb, route, _), code in zip(changes, self.rtnl.apply_routes(changes)):
            if code == errno.EEXIST:
                # somebody added the same route between our read and our write: re-read
                # before believing it is ours
                self.dirty = True
            elif code and not (verb == "delete" and code in (errno.ESRCH, errno.ENOENT, errno.ENODEV)):
                self.dirty = True
                self._failed(f"route_{'add' if verb == 'add' else 'remove'}_failed", (verb, route), code,
                             iface=route.ifname, prefix=route.prefix, table=self._table(route.table))
            elif verb == "add":
                self.failures_warned.pop((verb, route), None)
                self.view.owned.add(route)
                note("route_added", route, route.ifname)
            else:
                self.failures_warned.pop((verb, route), None)
                self.view.owned.discard(route)
                note("route_removed", route, route.ifname)
        for rule in rule_plan.add:
            if self._try("rule_add_failed", self.rtnl.add_rule, rule, rule=rule.describe()):
                self.view.rules.add(rule)
                note("rule_added", rule)
        verdicts = {f"peer {v.label}": v for v in desired.verdicts} if done else {}
        lines = []
        for (event, iface, owner), items in done.items():
            fields = {"iface": iface} if iface else {}
            if event.startswith("route"):
                fields["prefixes"] = ",".join(r.prefix + (f" via {r.gateway}" if r.gateway else "") for r in items)
                fields["table"] = self._table(items[0].table)
            else:
                fields["rules"] = "; ".join(r.describe() for r in items)
            v = verdicts.get(owner)
            if v is not None:
                # from the clock, not v.handshake_age: a verdict kept from an earlier
                # poll (policy.desired_state) carries the age it had then
                fields.update(peer=v.label, handshake_age=_age(handshake_age(v.peer, self.clock())),
                              reason=v.reason)
            elif owner.startswith("peer "):
                fields.update(peer=owner[5:], reason="peer-removed")
            elif owner == "-":
                # held under our tag but wanted by nobody: left by an earlier run, or by
                # a config that has changed since
                fields.update(reason="not-wanted")
            else:
                fields.update(owner=owner)
            lines.append((event, fields))
        self._log_lines(lines)

    def _try(self, failure_event: str, fn, *args, **fields) -> bool:
        """Run one kernel change; a failure is logged, retried at the next resync, never fatal."""
        key = (fn.__name__, *args)
        try:
            fn(*args)
        except OSError as e:
            self.dirty = True
            self._failed(failure_event, key, e.errno, error_text=str(e), **fields)
            return False
        self.failures_warned.pop(key, None)
        return True

    def _failed(self, event: str, key, code, error_text: str = "", **fields) -> None:
        """Warn of a failed change once per error: it is retried on every pass, and a
        line per poll would wipe logread's ring buffer."""
        if self.failures_warned.get(key) == code:
            return
        self.failures_warned[key] = code
        self.log.warning(event, error=error_text or os.strerror(code), **fields,
                         retry="every pass; logged again if the error changes")

    def _log_links_down(self, plan, links) -> None:
        down = {r.ifname for r in plan.add if r.ifname in links and not links[r.ifname].up}
        for name in sorted(down - self.links_down):
            self.log.warning("interface_down", iface=name, detail="routes wait until it is up")
        for name in sorted(self.links_down - down):
            if name in links and links[name].up:
                self.log.info("interface_up", iface=name)
        self.links_down = down

    # --- logging of changes: one line each, nothing when nothing changed

    def _log_lines(self, lines: list[tuple[str, dict]]) -> None:
        """One info line per change; but a burst (a hub starting with thousands of
        peers) is summed up in one line per kind and interface, with the lines each
        at debug: logread's ring buffer is 64 KiB on a default OpenWrt, and 10,000
        lines would wipe it (and cost seconds to write)."""
        if len(lines) <= BURST:
            for event, fields in lines:
                self.log.info(event, **fields)
            return
        if log_mod.enabled("debug"):
            for event, fields in lines:
                self.log.debug(event, **fields)
        groups: dict[tuple[str, str], list[dict]] = {}
        for event, fields in lines:
            groups.setdefault((event, fields.get("iface", "")), []).append(fields)
        for (event, iface), group in groups.items():
            who = [f.get("peer") or f.get("owner", "-") for f in group]
            summary = {"iface": iface} if iface else {}
            summary.update(count=len(group), first=",".join(who[:5]) + (",…" if len(who) > 5 else ""),
                           detail="one line each at log_level debug")
            self.log.info(event.replace("_", "s_", 1), **summary)  # peer_up -> peers_up

    def _log_peer_changes(self, desired: Desired, present: set[str]) -> None:
        was_up = self.was_up
        now_up: dict[tuple[str, str], PeerVerdict] = {}
        lines = []
        idle = set()
        for v in desired.verdicts:
            if v.up:
                key = (v.interface, v.peer.public_key)
                now_up[key] = v
                if key not in was_up:
                    lines.append(self._peer_line("peer_up", v))
            elif v.reason == IDLE:
                idle.add((v.interface, v.peer.public_key))
        if idle != self.idle_written:
            self._write_idle(idle)
        gone = was_up.keys() - now_up.keys()
        if gone:
            seen = {(v.interface, v.peer.public_key): v for v in desired.verdicts}
            for key in sorted(gone):
                v = was_up[key]
                if v.interface in desired.frozen:
                    now_up[key] = v  # unreadable this time: keep what we knew
                elif key in seen:
                    lines.append(self._peer_line("peer_down", seen[key]))
                else:
                    lines.append(("peer_down", {"iface": v.interface, "peer": v.label,
                                                "reason": "peer-removed" if v.interface in present
                                                else "interface-gone"}))
        self.was_up = now_up
        self._log_lines(lines)

    def _write_idle(self, idle: set) -> None:
        path = idle_state_path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"pid": os.getpid(), "idle": sorted(idle)}, f)
            os.replace(path + ".tmp", path)
            self.idle_written = idle
        except OSError as e:
            self.idle_written = idle  # status then misses idleness; not worth a line per poll
            self.log.warning("state_write_failed", path=path, error=str(e))

    def forget_idle_state(self) -> None:
        if self.idle_written is not None:
            try:
                os.unlink(idle_state_path())
            except OSError:
                pass

    @staticmethod
    def _peer_line(event: str, v: PeerVerdict) -> tuple[str, dict]:
        return event, {"iface": v.interface, "peer": v.label, "endpoint": v.peer.endpoint or "-",
                       "handshake_age": _age(v.handshake_age), "reason": v.reason,
                       "prefixes": ",".join(r.prefix for r in v.routes) or "-"}

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

    def _warn_problems(self, problems) -> None:
        current = set(problems)
        for problem in sorted(current - self.problems_warned):
            self.log.warning("return_path_problem", detail=problem)
        self.problems_warned = current

    def _log_paths(self, paths) -> None:
        for p in paths:
            seen = (p.device, p.present, p.addresses, p.learned_gateways, p.error, p.stale)
            if self.path_seen.get(p.name) == seen:
                continue
            self.path_seen[p.name] = seen
            if p.present:
                self.log.info("return_path", name=p.name, device=p.device,
                              addresses=",".join(f"{a}/{n}" for a, n in p.addresses) or "-",
                              gateways=",".join(gw for _, gw in p.learned_gateways) or "-")
            else:
                self.log.warning("return_path_down", name=p.name, device=p.device or "-", error=p.error)

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
        """Remove every route and rule with our tag (on stop): read fresh, not from memory."""
        links = self.rtnl.links()
        owned = self.rtnl.routes({link.index: name for name, link in links.items()}).owned
        rules = self.rtnl.rules()
        n = 0
        for rule in rules:  # one that cannot go must not keep the others (or the routes)
            try:
                n += self.rtnl.delete_rule(rule)
            except OSError as e:
                self.log.warning("rule_remove_failed", rule=rule.describe(), error=str(e))
        changes = [("delete", r, links[r.ifname].index if r.ifname in links else None) for r in owned]
        n += sum(code == 0 for code in self.rtnl.apply_routes(changes))
        if owned:
            self.log.info("routes_removed_on_stop", count=len(owned),
                          prefixes=",".join(r.prefix for r in sorted(owned)[:20]) + (",…" if len(owned) > 20 else ""))
        if rules:
            self.log.info("rules_removed_on_stop", count=len(rules))
        return n

    # --- reload

    def reload(self) -> bool:
        ok = self._reload()
        if ok and self.firewall is not None:
            self.firewall.nudge(self.config)
        elif ok:
            self.want_firewall(start=True)
        return ok

    def want_firewall(self, start: bool) -> None:
        """Run the firewall thread where there is ubus to write through, or where the
        config asks for sections (it then says once that they cannot be written). A
        plain Linux host without either never loads it: a thread and a module less."""
        if self.firewall is not None:
            return
        if not (self.config.zones or self.config.nats or ubus.connect(self.config.agent.ubus_socket)):
            return
        from .firewall import FirewallSync

        self.firewall = FirewallSync(self.config, self.log)
        if start:
            self.firewall.start()

    def _reload(self) -> bool:
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
        if d.firewall is not None:
            d.firewall.start()
        d.log.info("started", pid=os.getpid(), interfaces=",".join(i.name for i in d.config.interfaces) or "-",
                   poll_interval=d.config.agent.poll_interval)
        next_poll = 0.0
        frozen = False
        while self.stop_signal is None:
            if self.reload_requested:
                self.reload_requested = False
                d.reload()
                next_poll = 0.0
            now = time.monotonic()
            if now >= next_poll:
                d.reconcile()
                next_poll = now + d.config.agent.poll_interval
                if not frozen:
                    settle_gc()
                    frozen = True
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
        if d.firewall is not None:
            d.firewall.stop()  # firewall sections are configuration: they stay
        d.forget_idle_state()
        name = signal.Signals(self.stop_signal).name
        if d.config.agent.keep_routes_on_stop:
            d.log.info("stopping", signal=name, routes="kept (keep_routes_on_stop)")
        else:
            d.log.info("stopping", signal=name, routes="removing")
            d.remove_owned()
        return 0


# Collector thresholds once started. A poll allocates a few objects per peer (tuples of
# strings and numbers, freed by reference counting: no cycles), which at the default
# 700 ran a young collection every 700 allocations and a full one every few polls; at
# 10,000 peers that was ~a third of a steady cycle's CPU. Cycles still get collected,
# only less often.
GC_THRESHOLDS = (50_000, 20, 20)


def settle_gc() -> None:
    # What start-up made (modules, config, sockets) lives as long as we do: keep it out
    # of the collector's full passes, which would otherwise walk it again and again.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _drain_pipe(fd: int):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
