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
from . import ubus
from .config import Config, ConfigError
from .observer import Observer
from .policy import Desired, PlanMemo, desired_rules, desired_state, track_activity
from .reconciler import Reconciler
from .reporter import Reporter
from .rtnl import RtnlEvents

RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.02  # after an event, let a burst (netifd flushing a device) arrive


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
        self.reporter = Reporter(self.log, lambda num: config_mod.table_name(num, self.config.tables))
        self.reconciler = Reconciler(rtnl, self.reporter)
        self.activity: dict = {}  # rx and handshake history per peer (policy.track_activity)
        self.plans = PlanMemo()
        self.last_desired = Desired()
        self.unreadable_since: dict[str, float] = {}  # interface -> monotonic time it became unreadable
        self.firewall = None  # a firewall.FirewallSync, when want_firewall() starts one

    # --- one pass

    def reconcile(self) -> Pass:
        """One pass: observe, decide, apply, report."""
        mono, wall = self.mono(), self.clock()
        try:
            links, states = self.observer.peers()
        except OSError as e:
            self.reporter.read_failed("links", e)
            self.reconciler.dirty = True
            return Pass.FAILED
        self.reporter.read_ok("links")
        self.reporter.interface_states(states)
        self.activity = track_activity(self.activity, states, mono, wall)
        keep: set[str] = set()
        if self.config.agent.enabled:
            desired = desired_state(self.config, states, wall, self.activity, mono, self.plans)
            keep = desired.frozen - self._released(states, mono)
            # an interface unreadable this pass keeps what we knew of its peers (routes and rules stay)
            desired.verdicts += [v for v in self.last_desired.verdicts if v.interface in keep]
            self.reporter.skipped_routes(desired.skipped)
        else:
            desired = Desired()
        self.reporter.peers(desired, {s.name for s in states if s.backend}, keep)
        r = self.reconciler
        if r.dirty or mono - r.view.read_at >= RESYNC_SECONDS:
            try:
                r.seen(self.observer.kernel(links, mono))
            except OSError as e:
                self.reporter.read_failed("kernel", e)
                r.dirty = True
                return Pass.FAILED
            self.reporter.read_ok("kernel")
        if self.config.agent.enabled:
            self.reporter.path_problems(desired_rules(self.config, desired, r.view.paths))
            self.reporter.path_states(r.view.paths)
        plan, rule_plan = r.plan(desired, keep)
        self.reporter.route_conflicts(plan.conflicts)
        self.reporter.devices_down({x.ifname for x in plan.add if x.ifname in links and not links[x.ifname].up},
                                   links)
        previous, self.last_desired = self.last_desired, desired
        if not (plan or rule_plan):
            return Pass.WHOLE
        try:
            done = r.apply(plan, rule_plan, links, desired, previous)
        except OSError as e:
            self.reporter.read_failed("apply", e, event="apply_failed")
            return Pass.FAILED
        self.reporter.read_ok("apply")
        self.reporter.changes(done, desired, previous, wall, self.activity, mono)
        return Pass.REFUSED if r.dirty else Pass.WHOLE

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
            return False
        for w in new.warnings:
            self.log.warning("config_warning", detail=w)
        log_mod.set_level(new.agent.log_level)
        self.config = new
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
        self.stop_signal: int | None = None
        self.reload_requested = False
        self.failures = 0  # passes failed in a row: the backoff
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_signal = signum

    def _pass(self) -> float:
        """One pass; returns the seconds until the next one."""
        poll = self.daemon.config.agent.poll_interval
        if self.daemon.reconcile():
            self.failures = 0
            return poll
        self.failures += 1
        return min(poll, 2.0 ** (self.failures - 1))

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
                next_poll = now + self._pass()
                if not frozen:
                    settle_gc()
                    frozen = True
                continue
            ready, _, _ = select.select([self.events, self._wake_r], [], [], next_poll - now)
            if self._wake_r in ready:
                _drain_pipe(self._wake_r)
            if self.events in ready:
                time.sleep(SETTLE_SECONDS)
                if self._events_changed() and not self.failures:
                    # while passes fail, the backoff decides when the next one runs
                    d.reconciler.dirty = True
                    if not d.reconcile():
                        self.failures = 1
                        next_poll = min(next_poll, time.monotonic() + 1.0)
        signal.set_wakeup_fd(-1)
        return 0 if d.stop(signal.Signals(self.stop_signal).name) else 1

    def _events_changed(self) -> bool:
        try:
            return self.events.drain()
        except OSError as e:  # the event socket failed: whatever happened, read everything again
            self.daemon.reporter.read_failed("events", e)
            return True


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
