"""The loop: wake (rtnetlink event, poll timer, signal) -> observe -> decide -> apply -> report.

Daemon.reconcile() is one pass; Runner owns the wake-ups, the signals, reload and
stop. A pass that cannot observe or apply is skipped and tried again with backoff
(1, 2, 4 ... seconds up to poll_interval): a router lives with failed reads, and
the daemon must outlive them. Only a programming error ends the process, and it
then removes nothing (procd respawns it; the new process adopts what is there).
"""

from __future__ import annotations

import enum
import gc
import os
import select
import signal
import time

from . import config as config_mod
from . import log as log_mod
from . import status, ubus
from .config import Config, ConfigError
from .control import Control
from .observer import Observer
from .model import AF_INET, AF_INET6
from .policy import Desired, add_peer_rules, desired_rules, handshake_age, outranked
from .reconciler import Reconciler
from .reporter import Reporter
from .rtnl import Changes, Interest, RtnlEvents
from .tracker import PeerTracker

RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.02  # after an event, let a burst (netifd flushing a device) arrive
FULL_READ_SPACING = 0.1  # at least this long between two full reads of the kernel that events ask for
DEADLINE_SLACK = 0.001  # a verdict's deadline is passed a little after it, not at it
DEADLINE_SPACING = 0.05  # at least this long between two passes that deadlines ask for
UNSOLICITED_SPACING = 1.0  # seconds between two series of reads for handshakes coming in unasked
INITIATION_WAIT = 5.0  # seconds a response may take to answer our initiation (REKEY_TIMEOUT)


class Pass(enum.IntEnum):
    """How a pass went. Only FAILED is false: the Runner backs off after it."""

    FAILED = 0  # could not observe or apply: skipped, retried with backoff
    WHOLE = 1
    REFUSED = 2  # observed and applied, but the kernel refused some change: retried next pass


class Daemon:
    def __init__(self, config: Config, rtnl, sources, *, clock=time.time, mono=time.monotonic):
        self.config = config
        self.clock, self.mono = clock, mono
        self.log = log_mod.get()
        self.observer = Observer(config, rtnl, sources)
        self.reporter = Reporter(self.log, lambda num: config_mod.table_name(num, self.config.tables),
                                 lambda num: config_mod.proto_name(num, self.config.protos))
        self.reconciler = Reconciler(rtnl, self.reporter)
        # per peer between passes: rx and handshake history, plans, verdicts, route
        # claims, the verdicts' deadlines (a pass decides only the peers that changed)
        self.tracker = PeerTracker()
        self.last_desired = Desired()
        self.unreadable_since: dict[str, float] = {}  # interface -> monotonic time it became unreadable
        self.firewall = None  # a firewall.FirewallSync, when want_firewall() starts one
        self.firewall_changed = lambda: None  # called from the firewall thread when its status changes
        self.last_states: list = []  # the InterfaceStates of the last pass that read them
        self.last_problems: list[str] = []
        self.reload_error = ""  # why the last reload was refused
        self.interest: Interest | None = None  # what the event filter lets through (None: everything)
        self._interest_key = None
        self._up_endpoints: tuple = (None, frozenset())  # (the Desired it was made of, its endpoints)
        self.detection: dict | None = None  # how handshakes are found, for the status (Runner)

    # --- one pass

    def reconcile(self, only: set[str] | None = None) -> Pass:
        """One pass: observe, decide, apply, report. only: read just these WireGuard
        interfaces (a handshake seen on one), the others as the last pass read them."""
        mono, wall = self.mono(), self.clock()
        try:
            links, states = self.observer.peers() if only is None else self.observer.peers(only, self.last_states)
        except OSError as e:
            self.reporter.read_failed("links", e)
            self.reconciler.dirty = True
            return Pass.FAILED
        self.reporter.read_ok("links")
        self.last_states = states
        self.reporter.interface_states(states)
        self.tracker.observe(states, mono, wall)
        r = self.reconciler
        # the kernel before the decision: other routers' claims on our peers are in it
        if r.dirty or mono - r.view.read_at >= RESYNC_SECONDS:
            try:
                r.seen(self.observer.kernel(links, mono))
            except OSError as e:
                self.reporter.read_failed("kernel", e)
                r.dirty = True
                return Pass.FAILED
            self.reporter.read_ok("kernel")
        keep: set[str] = set()
        if self.config.agent.enabled:
            desired = self.tracker.poll(self.config, states, wall, mono, r.view.foreign, self.last_desired.moved)
            keep = desired.frozen - self._released(states, mono)
            if keep:
                # an interface unreadable this pass keeps what we knew of its peers (routes and rules stay)
                held = [v for v in self.last_desired.verdicts if v.interface in keep]
                desired.verdicts += held
                add_peer_rules(desired.peer_rules, held)
                desired.moved.update((k, m) for k, m in self.last_desired.moved.items() if k[0] in keep)
            self.reporter.skipped_routes(desired.skipped)
        else:
            desired = Desired()
        self.reporter.peers(desired, {s.name for s in states if s.backend}, keep, desired.frozen - keep)
        if self.config.agent.enabled:
            self.last_problems = desired_rules(self.config, desired, r.view.paths)
            self.reporter.path_problems(self.last_problems)
            self.reporter.path_states(r.view.paths)
        foreign = r.view.foreign
        self.reporter.route_outranked(outranked(desired.routes_in(foreign.keys()) if foreign and desired.routes_in
                                                else desired.routes, foreign, self.yield_to))
        plan, rule_plan = r.plan(desired, keep, self.yield_to)
        self.reporter.route_conflicts(plan.conflicts)
        self.reporter.devices_down({x.ifname for x in plan.add if x.ifname in links and not links[x.ifname].up},
                                   links)
        previous, self.last_desired = self.last_desired, desired
        self.interest = self._interest(links)
        if not (plan or rule_plan):
            return Pass.WHOLE
        try:
            done = r.apply(plan, rule_plan, links, desired, previous)
        except OSError as e:
            self.reporter.read_failed("apply", e, event="apply_failed")
            return Pass.FAILED
        self.reporter.read_ok("apply")
        self.reporter.changes(done, desired, previous, wall, self.tracker, mono)
        return Pass.REFUSED if r.dirty else Pass.WHOLE

    def up_endpoints(self) -> frozenset:
        """(interface, endpoint) of every peer up at the last pass: a handshake with
        one of them on the wire is its rekey (every two minutes while traffic flows),
        no news. Made once per pass, on the first handshake seen after it."""
        made_of, endpoints = self._up_endpoints
        if made_of is not self.last_desired:
            endpoints = frozenset((v.interface, v.peer.endpoint) for v in self.last_desired.verdicts
                                  if v.up and v.peer.endpoint)
            self._up_endpoints = (self.last_desired, endpoints)
        return endpoints

    def next_deadline(self) -> float | None:
        """The earliest moment (monotonic) a verdict of the last pass runs out (a
        handshake expires, a peer falls idle): the loop runs a pass then, whatever the
        poll interval."""
        return self.tracker.next_deadline()

    def status_document(self, now: float) -> dict:
        """The status as of the last pass (status.py), handshake ages as of now."""
        mono = self.mono()

        def age(v):
            return handshake_age(v.peer, now, self.tracker.activity(v.interface, v.peer.public_key), mono)

        fw = self.firewall.status if self.firewall is not None else None
        return status.document(self.config, self.last_states, self.last_desired, self.reconciler.view,
                               self.last_problems, age=age, firewall=fw)

    # --- notifiers (ubus events, hotplug scripts): for `run`, not for one pass

    def start_notifiers(self) -> None:
        from . import notify

        agent = self.config.agent
        events = notify.ubus_events(self.log, agent.ubus_socket)
        self.reporter.notifiers = [n for n in (events, notify.Hotplug(self.log, agent.hotplug_timeout)) if n]

    def stop_notifiers(self) -> None:
        for n in self.reporter.notifiers:
            n.close()
        self.reporter.notifiers = []

    def yield_to(self, ifname: str) -> frozenset:
        """The protocols an interface's routes go beside (none for a return path's device)."""
        iface = self.config.interface(ifname)
        return iface.yield_to if iface is not None else frozenset()

    def _interest(self, links) -> Interest:
        """What the event filter lets through (rtnl.classify): rebuilt only when the
        config, the peers' plans, the return paths' devices or the links change."""
        cfg = self.config
        paths = tuple(p.device for p in self.reconciler.view.paths if p.device)
        by_index = {link.index: name for name, link in links.items()}  # tens of links
        key = (self.tracker.generation, paths, by_index)  # a new config starts a new generation
        if key == self._interest_key:
            return self.interest
        self._interest_key = key
        slots = self.tracker.slots()
        names = frozenset(i.name for i in cfg.interfaces) | frozenset(paths) | \
            frozenset(rp.device for rp in cfg.return_paths if rp.device)
        return Interest(slots, frozenset((AF_INET6 if ":" in dst else AF_INET, plen) for _, dst, plen in slots),
                        frozenset(rp.table for rp in cfg.return_paths),
                        frozenset(links[n].index for n in paths if n in links), names,
                        frozenset(links[n].index for n in names if n in links), by_index,
                        any(rp.network for rp in cfg.return_paths),
                        frozenset().union(*(i.yield_to for i in cfg.interfaces)))

    def _released(self, states, mono: float) -> set[str]:
        """Interfaces unreadable for longer than handshake_timeout. Until then their
        routes stay (a dump that failed once says nothing about the peers); after it,
        nobody can vouch for any of their peers, and their routes go."""
        self.unreadable_since = {s.name: self.unreadable_since.get(s.name, mono)
                                 for s in states if s.peers is None}
        limit = self.config.agent.handshake_timeout
        released = {name: mono - since for name, since in self.unreadable_since.items() if mono - since > limit}
        self.reporter.released_interfaces(released)
        return set(released)

    # --- firewall

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
        self.firewall.on_status = lambda: self.firewall_changed()
        if start:
            self.firewall.start()

    def firewall_once(self) -> bool:
        """The firewall part of one pass, in this thread (for `run --once`): what the
        firewall thread does at start. True when in step, or nothing to write."""
        from .firewall import ForeignPending

        self.want_firewall(start=False)
        if self.firewall is None:
            return True
        client = self.firewall.connect(self.config.agent.ubus_socket)
        if client is None:
            self.log.warning("firewall_unavailable", detail="no ubus here (python3-ubus or the ubus command): "
                             "firewall sections not written")
            return False
        try:
            self.firewall.sync_once(client)
        except (ForeignPending, OSError) as e:
            self.log.warning("firewall_failed", error=str(e))
            return False
        return True

    # --- reload and stop

    def reload(self) -> bool:
        try:
            new = config_mod.load(self.config.path, allow_empty=False)
        except ConfigError as e:
            self.log.error("reload_failed", error=str(e), action="keeping the running config")
            self.reload_error = str(e)
            return False
        self.reload_error = ""
        for w in new.warnings:
            self.log.warning("config_warning", detail=w)
        log_mod.set_level(new.agent.log_level)
        self.config = new
        for n in self.reporter.notifiers:  # the bus and the scripts' limit may have changed
            if hasattr(n, "socket"):
                n.socket = new.agent.ubus_socket
            if hasattr(n, "timeout"):
                n.timeout = new.agent.hotplug_timeout
        self.observer.rebind(new)
        self.reconciler.dirty = True
        self.log.info("reloaded", path=new.path, interfaces=",".join(i.name for i in new.interfaces) or "-")
        if self.firewall is not None:
            self.firewall.nudge(new)
        else:
            self.want_firewall(start=True)
        return True

    def stop(self, signame: str) -> bool:
        if self.firewall is not None:
            self.firewall.stop()  # firewall sections are configuration: they stay
        self.reporter.idle.remove()
        if self.config.agent.keep_routes_on_stop:
            self.log.info("stopping", signal=signame, routes="kept (keep_routes_on_stop)")
            return True
        self.log.info("stopping", signal=signame, routes="removing")
        try:
            self.reconciler.remove_owned(self.log)
        except OSError as e:
            self.log.error("stop_cleanup_failed", error=str(e), detail="routes and rules with proto 152 stay; "
                           "the next start adopts them")
            return False
        return True


class Runner:
    """Owns the wake-ups and the signal plumbing; runs the Daemon until told to stop."""

    def __init__(self, daemon: Daemon, events: RtnlEvents):
        self.daemon = daemon
        self.events = events
        self.control = Control(daemon.log, clock=daemon.clock, mono=daemon.mono)
        self.stop_signal: int | None = None
        self.reload_requested = False
        self.reconcile_requested = False
        self.failures = 0  # passes failed in a row: the backoff
        self.last_pass = Pass.WHOLE
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # the handshake wake-up (wake.py): its packet socket, the re-reads it asks for,
        # the listen ports it watches ({interface: port}) and by port ({port: interfaces})
        self.watch = None
        self.watch_refused = ""  # why the socket could not be opened (said once; tried again at reload)
        self.schedule = None
        self.listen_ports: dict[str, int] = {}
        self.ports_map: dict = {}
        self.wake_reads = 0  # passes a handshake asked for
        self.unsolicited_at: dict[str, float] = {}  # interface -> when a handshake in last asked for reads
        self.initiated: dict[str, float] = {}  # remote endpoint -> when we last sent it an initiation
        self.awaited: dict[str, set[str]] = {}  # interface -> the remote endpoints its reads wait to see up
        self.pass_at = -_NEVER  # when the last full pass started (monotonic)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif signum == signal.SIGUSR1:
            self.reconcile_requested = True  # `ubus call wgagent reconcile`: a pass now
        else:
            self.stop_signal = signum

    def _reconcile(self, only: set[str] | None = None) -> Pass:
        self.last_pass = self.daemon.reconcile(only)
        self.control.publish(self.daemon, self.daemon.reporter.said)
        if self.schedule is not None:
            now = time.monotonic()
            for name in (self.listen_ports if only is None else only):
                self.schedule.observed(name, now)
            if self.awaited:
                self._series_done(self.awaited.keys() if only is None else self.awaited.keys() & only)
        self._aim_watch()
        return self.last_pass

    def _series_done(self, names) -> None:
        """A read that shows every remote a series waits for up at that endpoint ends
        the series: its later reads would find nothing new (a connect's first read
        usually has it; at 10,000 peers a read is ~0.2 s of CPU). A remote never seen
        up (a forged handshake, a refused one) keeps the series to its end, as before."""
        up = None
        for name in list(names):
            if self.schedule.pending(name):
                if up is None:
                    up = self.daemon.up_endpoints()
                waiting = {r for r in self.awaited[name] if (name, r) not in up}
                if waiting:
                    self.awaited[name] = waiting
                    continue
                self.schedule.discard(name)
            del self.awaited[name]

    def poll_interval(self) -> float:
        """The poll: a safety net while the wake-up runs, the only detection without it."""
        return self.daemon.config.agent.poll(self.watch is not None)

    def _pass(self) -> float:
        """One pass; returns the seconds until the next one."""
        poll = self.poll_interval()
        self.pass_at = time.monotonic()
        if self._reconcile():
            self.failures = 0
            return poll
        self.failures += 1
        return min(poll, 2.0 ** (self.failures - 1))

    def _reload(self) -> None:
        # the callers waiting now are answered by this reload: listed after the flag is
        # cleared, so that one whose signal comes later gets the next
        self.reload_requested = False
        waiting = self.control.waiting("reload")
        d = self.daemon
        taken = d.reload()
        if taken:
            self._want_watch()  # tried again; said again only for another reason
        self.control.dirty = True
        self.control.answer(waiting, {"taken": True, "path": d.config.path} if taken else
                            {"taken": False, "error": d.reload_error})

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        d = self.daemon
        d.firewall_changed = self._firewall_changed
        if d.firewall is not None:
            d.firewall.on_status = self._firewall_changed
            d.firewall.start()
        d.start_notifiers()
        self.control.start()
        self._want_watch()
        try:
            return self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            d.stop_notifiers()
            self.control.stop()
            self._close_watch()

    def _firewall_changed(self) -> None:
        self.control.dirty = True  # published after the next pass

    # --- the handshake wake-up

    def _want_watch(self) -> None:
        """Open the packet socket when the config asks for the wake-up (at start and
        at reload), close it when it no longer does. Where it cannot be opened (no
        CAP_NET_RAW, no AF_PACKET) one warning says why, and polling goes on as before."""
        d = self.daemon
        agent = d.config.agent
        if not agent.wake:
            if self.watch is not None:
                self._close_watch()
                d.log.info("wake_stopped", detail=f"wake off: polling every {agent.poll(False):g} s")
            self.watch_refused = ""
            self._say_detection()
            return
        if self.watch is not None:
            return
        from . import wake

        watch, reason = wake.open_watch(())
        if watch is None:
            if reason != self.watch_refused:
                d.log.warning("wake_unavailable", error=reason,
                              detail=f"handshakes are found by polling every {agent.poll(False):g} s")
            self.watch_refused = reason
            self._say_detection()
            return
        self.watch, self.watch_refused = watch, ""
        self.schedule = wake.WakeSchedule()
        self.listen_ports, self.ports_map = {}, {}
        self._say_detection()

    def _say_detection(self) -> None:
        """The status's "detection" entry: the wake-up and the poll as they are now."""
        agent = self.daemon.config.agent
        state = "on" if self.watch is not None else "off" if not agent.wake else "unavailable"
        self.daemon.detection = {"wake": state, "error": self.watch_refused or None,
                                 "ports": dict(sorted(self.listen_ports.items())),
                                 "poll_interval": self.poll_interval()}
        self.control.dirty = True

    def _close_watch(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.watch = self.schedule = None
        self.listen_ports, self.ports_map = {}, {}
        self.awaited = {}

    def _aim_watch(self) -> None:
        """After a pass: the filter follows the interfaces' listen ports as read."""
        if self.watch is None:
            return
        # an interface unreadable this pass keeps the port it had (as its routes stay)
        ports = {s.name: s.listen_port if s.peers is not None else self.listen_ports.get(s.name, 0)
                 for s in self.daemon.last_states}
        ports = {name: port for name, port in ports.items() if port}
        if ports == self.listen_ports:
            return
        from . import wake

        d = self.daemon
        try:
            ports_map = wake.port_map(ports)
            self.watch.set_ports(ports_map)
        except (ValueError, OSError) as e:  # more ports than a filter holds, or the kernel refused it
            self._close_watch()
            self.watch_refused = str(e)
            d.log.warning("wake_unavailable", error=str(e),
                          detail=f"handshakes are found by polling every {d.config.agent.poll(False):g} s")
            self._say_detection()
            return
        for name in self.listen_ports.keys() - ports.keys():
            self.schedule.discard(name)
        self.listen_ports, self.ports_map = ports, ports_map
        self._say_detection()
        d.log.info("wake_watching", ports=",".join(f"{n}:{p}" for n, p in sorted(ports.items())) or "-",
                   poll_interval=d.config.agent.poll(True))

    def _handshakes(self, now: float) -> None:
        """Handshakes the socket saw: schedule reads of their interfaces. A match is a
        reason to look, never proof: the proof is the peer's last_handshake as read."""
        try:
            hits = self.watch.drain()
        except OSError as e:  # a socket that fails once would fail at every wake-up: give it up
            self._close_watch()
            self.watch_refused = f"reading the packet socket: {e.strerror or e}"
            self.daemon.log.warning("wake_unavailable", error=self.watch_refused,
                                    detail=f"polling every {self.daemon.config.agent.poll(False):g} s "
                                           "until the next reload")
            self._say_detection()
            return
        if not hits:
            return
        from . import wake

        d = self.daemon
        known = d.up_endpoints()
        debug = log_mod.enabled("debug")
        sent = self.initiated
        for hit in hits:
            remote = hit.remote_endpoint
            if hit.outgoing and hit.kind == wake.INITIATION:  # ours: a response from there is expected
                if len(sent) >= 4096:
                    self.initiated = sent = {k: t for k, t in sent.items() if now - t < INITIATION_WAIT}
                sent[remote] = now
            delays = wake.reads_for(hit)
            if not delays:
                continue
            # what comes in can be forged by anyone: unless it answers an initiation of
            # ours, at most one series of reads an interface per UNSOLICITED_SPACING. Our
            # own response is proof enough: WireGuard answers only a configured peer
            unsolicited = not hit.outgoing and now - sent.get(remote, -_NEVER) >= INITIATION_WAIT
            for name in wake.interfaces_for(hit, self.ports_map):
                if (name, remote) in known:
                    continue  # the rekey of a peer up at that address: no news
                if unsolicited:
                    if now - self.unsolicited_at.get(name, -_NEVER) < UNSOLICITED_SPACING:
                        continue
                    self.unsolicited_at[name] = now
                self.schedule.hit(name, now, delays)
                self.awaited.setdefault(name, set()).add(remote)
                if debug:
                    d.log.debug("handshake_seen", iface=name, kind=wake.KINDS.get(hit.kind, hit.kind),
                                direction="out" if hit.outgoing else "in", remote=remote,
                                reads=",".join(f"{t * 1000:.0f}ms" for t in delays))

    def _loop(self) -> int:
        d = self.daemon
        d.log.info("started", pid=os.getpid(), interfaces=",".join(i.name for i in d.config.interfaces) or "-",
                   poll_interval=self.poll_interval(), wake="on" if self.watch is not None else "off")
        next_poll = 0.0
        event_due = _NEVER  # when the pass that events asked for runs
        frozen = False
        answer_after_pass: list[str] = []  # FIFOs of `reconcile` callers
        while self.stop_signal is None:
            if self.reload_requested:
                self._reload()
                next_poll = 0.0
            if self.reconcile_requested:
                self.reconcile_requested = False
                answer_after_pass += self.control.waiting("reconcile")
                d.reconciler.dirty = True  # read the kernel again, as a resync does
                if d.firewall is not None:
                    d.firewall.nudge()
                next_poll = 0.0
            now = time.monotonic()
            # a verdict that runs out (a handshake expiring, a peer falling idle) is a
            # pass of its own, at that moment (not before the last pass, never a spin)
            deadline = None if self.failures else d.next_deadline()  # while passes fail, the backoff rules
            if deadline is not None and deadline + DEADLINE_SLACK < next_poll:
                next_poll = max(deadline + DEADLINE_SLACK, self.pass_at + DEADLINE_SPACING)
            if now >= next_poll:
                next_poll = now + self._pass()
                if answer_after_pass:
                    self.control.answer(answer_after_pass, {"done": True, "pass": self.last_pass.name.lower()})
                    answer_after_pass = []
                event_due = _NEVER
                if not frozen:
                    settle_gc()
                    frozen = True
                continue
            if now >= event_due:
                event_due = _NEVER
                if not self._reconcile():
                    self.failures = 1
                    next_poll = min(next_poll, time.monotonic() + 1.0)
                continue
            wake_due = self.schedule.next_deadline() if self.schedule is not None else None
            if wake_due is not None and now >= wake_due:
                # a handshake was seen: read those interfaces only (the rest as last read)
                due = self.schedule.due(now) & self.listen_ports.keys()
                if due and not self.failures:
                    self.wake_reads += 1
                    d.log.debug("wake_read", interfaces=",".join(sorted(due)))
                    if not self._reconcile(due):
                        self.failures = 1
                        next_poll = min(next_poll, time.monotonic() + 1.0)
                continue
            waits = [self.events, self._wake_r]
            if self.watch is not None:
                waits.append(self.watch)
            timeout = min(next_poll, event_due, _NEVER if wake_due is None else wake_due) - now
            ready, _, _ = select.select(waits, [], [], timeout)
            if self._wake_r in ready:
                _drain_pipe(self._wake_r)
            if self.watch is not None and self.watch in ready:
                self._handshakes(time.monotonic())
            if self.events in ready:
                time.sleep(SETTLE_SECONDS)
                changes = self._events()
                r = d.reconciler
                if changes.routes:
                    r.note(changes.routes, time.monotonic())
                if changes.full:
                    r.dirty = True
                if changes and not self.failures:
                    # while passes fail, the backoff decides when the next one runs. A
                    # pass that must read the whole kernel runs at most every
                    # FULL_READ_SPACING: a burst is one read, and a routing daemon's churn
                    # in our slots cannot make the loop dump its tables back to back
                    due = time.monotonic()
                    if r.dirty:  # read_at is on the daemon's clock
                        due += max(0.0, r.view.read_at + FULL_READ_SPACING - d.mono())
                    event_due = min(event_due, due)
        return 0 if d.stop(signal.Signals(self.stop_signal).name) else 1

    def _events(self) -> Changes:
        try:
            return self.events.drain(self.daemon.interest)
        except OSError as e:  # the event socket failed: whatever happened, read everything again
            self.daemon.reporter.read_failed("events", e)
            return Changes(True, [])


_NEVER = float("inf")


# Collector thresholds once started. A poll allocates a few objects per peer (tuples of
# strings and numbers, freed by reference counting: no cycles), which at the default
# 700 ran a young collection every 700 allocations and a full one every few polls.
# Cycles still get collected, only less often.
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
