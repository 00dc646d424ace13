"""What the daemon says, and when: each thing once per change, bursts summed up.

A router logs into a 64 KiB ring buffer (logd): a state that persists across passes
(a route the kernel keeps refusing, a conflict, an unreadable interface) must be
said when it starts and when it changes, never on every poll. `Once` is the one
helper for that; the Reporter keeps one per subject. The idle file is here too: it
is what the daemon tells `wgagent status` (the one verdict the kernel cannot give).

Peer and route changes are said to the notifiers too (ubus events, hotplug
scripts): each is called as notifier(event, fields) after the log lines, with the
same changes and the same burst summaries (peer_up / peers_up ...), fields being
plain data: see peer_note() and route notes in changes(). A notifier only queues.
"""

from __future__ import annotations

import json
import os

from . import log as log_mod
from . import rundir
from .policy import IDLE, MOVED, Desired, PeerVerdict, handshake_age

BURST = 20  # more changes of one kind in one pass than this: one summary line (see lines())
UP_LINE, ROAMED_LINE, DOWN_LINE = 0, 1, 2  # Reporter._render's entries
PEER_EVENTS = ("peer_up", "peer_endpoint_changed", "peer_down")

_NOTHING = object()


class Once:
    """What was last said about each key. changed() is True the first time a key is
    seen and whenever its value differs from the last one; keep() forgets the keys
    that are no longer current, so a state that ends and comes back is said again."""

    def __init__(self):
        self._said: dict = {}

    def changed(self, key, value=True) -> bool:
        if self._said.get(key, _NOTHING) == value:
            return False
        self._said[key] = value
        return True

    def get(self, key, default=None):
        return self._said.get(key, default)

    def forget(self, key) -> bool:
        """True if the key was said (its state has now ended)."""
        return self._said.pop(key, _NOTHING) is not _NOTHING

    def keep(self, keys) -> list:
        """Forget every key not in keys; returns the forgotten keys, sorted."""
        gone = sorted(k for k in self._said if k not in keys)
        for k in gone:
            del self._said[k]
        return gone

    def __contains__(self, key) -> bool:
        return key in self._said


def _age(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f}s"


def peer_note(v: PeerVerdict, reason: str = "") -> dict:
    """What notifiers hear of a peer change: whole keys and lists, not log text.
    prefixes: the routes the peer has while up (for a peer that went down, the ones
    it had)."""
    return {"interface": v.interface, "peer": v.peer.public_key, "description": v.description,
            "reason": reason or v.reason, "endpoint": v.peer.endpoint or "",
            "prefixes": [r.prefix for r in v.routes]}


class _Counting:
    """The log, counting the lines said at info and above: each is a change of
    state, so whatever the daemon publishes of its state is stale (control.py)."""

    def __init__(self, log):
        self._log = log
        self.count = 0

    def __getattr__(self, name):
        return getattr(self._log, name)

    def info(self, *args, **kw):
        self.count += 1
        return self._log.info(*args, **kw)

    def warning(self, *args, **kw):
        self.count += 1
        return self._log.warning(*args, **kw)

    def error(self, *args, **kw):
        self.count += 1
        return self._log.error(*args, **kw)


def peer_fields(v: PeerVerdict) -> dict:
    return {"iface": v.interface, "peer": v.label, "endpoint": v.peer.endpoint or "-",
            "handshake_age": _age(v.handshake_age), "reason": v.reason,
            "prefixes": ",".join(r.prefix for r in v.routes) or "-"}


class Reporter:
    def __init__(self, log, table_name, proto_name=str):
        self.log = log
        self.notifiers: list = []  # called with (event, fields) after the log lines (see lines())
        self.table_name = table_name  # number -> name from rt_tables
        self.proto_name = proto_name  # number -> name from rt_protos
        self.up: dict[tuple[str, str], PeerVerdict] = {}  # peers said to be up
        self.idle_keys: set[tuple[str, str]] = set()  # peers held idle, and as last written
        self._idle_written: frozenset = frozenset()
        self.held: dict[tuple[str, str], PeerVerdict] = {}  # peers held back as moved
        self.interfaces = Once()  # name -> error ("" when readable)
        self.failures = Once()  # a kernel change -> errno, while it keeps failing
        self.reads = Once()  # what could not be read -> error
        self.conflicts = Once()  # (slot, protocol)
        self.problems = Once()  # return path problem texts
        self.paths = Once()  # return path name -> what the kernel holds for it
        self.links_down = Once()  # device names that hold back routes
        self.skipped = Once()  # (interface, peer key, prefix) routes that would carry the endpoint
        self.released = Once()  # interfaces unreadable for too long
        self.moved = Once()  # (interface, key) of peers held back -> their handshake when they moved
        self.outranked = Once()  # (slot, protocol, metric) of yield_to routes that win over ours
        self.idle = IdleFile()

    # --- one line per change; bursts summed up

    @property
    def log(self):
        return self._log

    @log.setter
    def log(self, log):
        self._log = _Counting(log)

    @property
    def said(self) -> int:
        """How many lines (info and above) have been said so far."""
        return self._log.count

    def lines(self, lines: list[tuple[str, dict, dict | None]], level: str = "info",
              by: tuple[str, ...] = ("iface",)) -> None:
        """(event, log fields, notifier fields or None) per change. One line per
        change; but a burst (a hub starting with thousands of peers) is summed up in
        one line per kind and per value of the fields `by` (the interface), with the
        lines each at debug: logread's ring buffer is 64 KiB on a default OpenWrt, and
        10,000 lines would wipe it (and cost seconds to write). The notifiers hear the
        same: each change, or each summary (event peers_up ..., fields interface,
        count, first)."""
        say = getattr(self.log, level)
        if len(lines) <= BURST:
            for event, fields, _ in lines:
                say(event, **fields)
            self._notify([(event, note) for event, _, note in lines if note is not None])
            return
        if log_mod.enabled("debug"):
            for event, fields, _ in lines:
                self.log.debug(event, **fields)
        groups: dict[tuple, list] = {}
        for line in lines:
            groups.setdefault((line[0], *(line[1].get(k, "") for k in by)), []).append(line)
        summaries = []
        for (event, *values), group in groups.items():
            who = [f.get("peer") or f.get("owner") or f.get("prefix") or f.get("rule", "-") for _, f, _ in group]
            summary = {k: v for k, v in zip(by, values) if v}
            summary.update(count=len(group), first=",".join(who[:5]) + (",…" if len(who) > 5 else ""),
                           detail="one line each at log_level debug")
            name = event.replace("_", "s_", 1)  # peer_up -> peers_up, route_add_failed -> routes_add_failed
            say(name, **summary)
            notes = [note for _, _, note in group if note is not None]
            if notes:
                first = [n["prefixes"][0] if event.startswith("route") else n["peer"] for n in notes[:5]]
                summaries.append((name, {"interface": summary.get("iface", ""), "count": len(notes),
                                         "first": first}))
        self._notify(summaries)

    def _notify(self, notes: list[tuple[str, dict]]) -> None:
        for notifier in self.notifiers:
            for event, fields in notes:
                notifier(event, fields)

    # --- peers

    def peers(self, desired: Desired, present: set[str], kept: set[str], dropped: set[str] = frozenset()) -> None:
        """peer_up / peer_down lines, and the idle file. present: the interfaces that
        exist; kept: those unreadable this pass, whose peers keep their state;
        dropped: those whose peers have no verdict this pass (unreadable for too long).
        With desired.changed (tracker.PeerTracker), only the peers named there (and
        those of dropped interfaces) are looked at: the others are as they were."""
        if desired.changed is None:
            self._all_peers(desired, present, kept)
        else:
            self._changed_peers(desired, present, dropped)

    def _changed_peers(self, desired: Desired, present: set[str], dropped: set[str]) -> None:
        changed = desired.changed
        if dropped:
            changed = dict(changed)
            for known in (self.up, self.idle_keys, self.held):
                changed.update((k, None) for k in known if k[0] in dropped and k not in changed)
        up, idle, held = self.up, self.idle_keys, self.held
        lines = []
        gone = []
        idle_changed = False
        for key, v in changed.items():
            before = up.get(key)
            if v is not None and v.up:
                up[key] = v
                if before is None:
                    lines.append((UP_LINE, key, v, self.held.get(key)))
                elif before.peer.endpoint != v.peer.endpoint and before.peer.endpoint and v.peer.endpoint:
                    lines.append((ROAMED_LINE, before, v))
            elif before is not None:
                del up[key]
                gone.append((key, before, v))
            if (v is not None and v.reason == IDLE) != (key in idle):
                idle_changed = True
                idle.symmetric_difference_update((key,))
            if v is not None and v.reason == MOVED:
                held[key] = v
            else:
                held.pop(key, None)
        if idle_changed:
            self._idle_written = frozenset(idle)
        self.idle.write(self._idle_written, self.log, self._where(desired, held, idle))
        for key, before, now in sorted(gone, key=lambda g: g[0]):
            if key in held:
                continue  # said as peer_moved
            lines.append((DOWN_LINE, key, before, now, present))
        lines = self._render(lines)
        self._say_moved(desired, held, lines)
        self.lines(lines)

    def _brief(self, count: int) -> bool:
        """count lines of a pass are a burst that lines() sums up (at info; each one is
        said only at debug): build only what its summary reads."""
        return count > BURST and not log_mod.enabled("debug")

    def _render(self, entries: list) -> list:
        """The peer lines of (kind, args...) entries: in full, or for a burst (a hub
        starting: 10,000 peer_up) only the interface, the peer and the key each, which
        is all lines() reads of them then."""
        if not self._brief(len(entries)):
            return [(self._up, self._roamed, self._down)[kind](*args) for kind, *args in entries]
        out = []
        for kind, *args in entries:
            v = args[1]  # _up's v, _roamed's v, _down's before (or its verdict now, as _down says it)
            if kind == DOWN_LINE and args[2] is not None:
                v = args[2]
            out.append((PEER_EVENTS[kind], {"iface": v.interface, "peer": v.label}, {"peer": v.peer.public_key}))
        return out

    @staticmethod
    def _up(key, v: PeerVerdict, was: PeerVerdict | None) -> tuple:
        """The peer_up line; one held back as moved until now (was: as of the pass
        before) and up again without a new handshake came back by its packets
        (policy.hand_off), and says so."""
        fields = peer_fields(v)
        if was is not None and was.peer.last_handshake == v.peer.last_handshake:
            fields["detail"] = "its packets kept arriving here after the move: the claim was older news of " \
                               "another router"
        return ("peer_up", fields, peer_note(v))

    def _roamed(self, before: PeerVerdict, v: PeerVerdict) -> tuple:
        """Roaming while connected here (a new address, the same router): its routes
        stay, the tunnel follows WireGuard's endpoint on its own."""
        return ("peer_endpoint_changed",
                {"iface": v.interface, "peer": v.label, "endpoint": v.peer.endpoint,
                 "previous": before.peer.endpoint},
                dict(peer_note(v), previous=before.peer.endpoint))

    @staticmethod
    def _down(key, before: PeerVerdict, now: PeerVerdict | None, present: set[str]) -> tuple:
        """The peer_down line of a peer that was up: now its verdict, None when it has none."""
        if now is not None:
            return ("peer_down", peer_fields(now), dict(peer_note(before, now.reason), endpoint=now.peer.endpoint or ""))
        reason = "peer-removed" if before.interface in present else "interface-gone"
        return ("peer_down", {"iface": before.interface, "peer": before.label, "reason": reason},
                peer_note(before, reason))

    def _where(self, desired: Desired, held, idle) -> dict:
        """Where the peers held back went (moved_fields), for the idle file: those held
        now, and those that fell idle here since (policy keeps their record until a new
        handshake here): `wgagent status` says where they are, not only "idle"."""
        return {k: moved_fields(r, self.proto_name) for k, r in desired.moved.items()
                if k in held or (k in idle and not r.back)}

    def _say_moved(self, desired: Desired, held: dict, lines: list) -> None:
        for key, v in sorted(held.items()):
            record = desired.moved[key]
            if self.moved.changed(key, (record.handshake, record.at)):  # once per move
                fields = {"iface": v.interface, "peer": v.label}
                fields.update((k, v or "-") for k, v in moved_fields(record, self.proto_name).items())
                fields["detail"] = "connected at another router since its last handshake here: routes withdrawn " \
                                   "until its next handshake here, or its packets show it here"
                lines.append(("peer_moved", fields, peer_note(v, "moved")))
        self.moved.keep(desired.moved)  # a held peer that falls idle is not said moved again

    def _all_peers(self, desired: Desired, present: set[str], kept: set[str]) -> None:
        was_up = self.up
        now_up: dict[tuple[str, str], PeerVerdict] = {}
        lines = []
        idle = set()
        held: dict[tuple[str, str], PeerVerdict] = {}
        for v in desired.verdicts:
            if v.up:
                key = (v.interface, v.peer.public_key)
                now_up[key] = v
                before = was_up.get(key)
                if before is None:
                    lines.append((UP_LINE, key, v, self.held.get(key)))
                elif before.peer.endpoint != v.peer.endpoint and before.peer.endpoint and v.peer.endpoint:
                    lines.append((ROAMED_LINE, before, v))
            elif v.reason == IDLE:
                idle.add((v.interface, v.peer.public_key))
            elif v.reason == MOVED:
                held[(v.interface, v.peer.public_key)] = v
        self.idle.write(idle, self.log, self._where(desired, held, idle))
        gone = was_up.keys() - now_up.keys()
        if gone:
            seen = {(v.interface, v.peer.public_key): v for v in desired.verdicts}
            for key in sorted(gone):
                v = was_up[key]
                if v.interface in kept:
                    now_up[key] = v  # unreadable this time: keep what we knew
                elif key not in held:  # else said as peer_moved
                    lines.append((DOWN_LINE, key, v, seen.get(key), present))
        lines = self._render(lines)
        self._say_moved(desired, held, lines)
        self.up = now_up
        self.idle_keys, self._idle_written, self.held = set(idle), frozenset(idle), held
        self.lines(lines)

    def route_outranked(self, outranked) -> None:
        """Our routes beside a routing daemon's that wins the kernel's lookup or sits at
        our metric (policy.outranked): the hand-off cannot work so."""
        current = set()
        for route, f in outranked:
            key = (route.slot, f.proto, f.metric)
            current.add(key)
            if self.outranked.changed(key):
                same = f.metric == route.metric
                self.log.warning(
                    "route_outranked", iface=route.ifname, prefix=route.prefix, metric=route.metric,
                    other_proto=self.proto_name(f.proto), other_metric=f.metric,
                    hint=("the same metric as the other protocol's route: BIRD's IPv4 replace would overwrite ours"
                          if same else "the other protocol's route wins the lookup (an IPv6 metric 0 is 1024)") +
                    f"; set option metric below {f.metric} (1 for BIRD's default 32) on interface {route.ifname}")
        self.outranked.keep(current)

    def interface_states(self, states) -> None:
        for s in states:
            old = self.interfaces.get(s.name)
            if not self.interfaces.changed(s.name, s.error):
                continue
            if s.error:
                self.log.warning("interface_unavailable", iface=s.name, error=s.error)
            elif old is None:
                self.log.info("interface_found", iface=s.name, backend=s.backend)
            else:
                self.log.info("interface_available", iface=s.name, backend=s.backend)

    def released_interfaces(self, released: dict[str, float]) -> None:
        """Interfaces unreadable for longer than handshake_timeout: nobody can vouch
        for their peers any more, so their routes go (see Daemon.reconcile)."""
        for name, since in sorted(released.items()):
            if self.released.changed(name):
                self.log.warning("interface_routes_released", iface=name, unreadable_for=_age(since),
                                 detail="unreadable for longer than handshake_timeout: its routes and rules "
                                        "are removed until it can be read again")
        self.released.keep(released)

    def skipped_routes(self, skipped) -> None:
        """Routes left out because they would carry the peer's own endpoint into its
        interface (policy: the encrypted packets would then route into the tunnel)."""
        current = set()
        for v, route, endpoint in skipped:
            key = (v.interface, v.peer.public_key, route.prefix)
            current.add(key)
            if self.skipped.changed(key, endpoint):
                self.log.warning("route_skipped", iface=v.interface, peer=v.label, prefix=route.prefix,
                                 endpoint=endpoint,
                                 detail="this AllowedIP covers the peer's own endpoint: a route for it would "
                                        "send the tunnel's packets into the tunnel")
        self.skipped.keep(current)

    # --- failures: said once per distinct error, again when it changes

    def read_failed(self, what: str, error: OSError, event: str = "read_failed") -> None:
        """A pass that could not observe (or apply: event apply_failed) what it needed."""
        text = str(error) or os.strerror(error.errno or 0)
        if self.reads.changed(what, text):
            self.log.warning(event, what=what, error=text, action="pass skipped; retrying with backoff")

    def read_ok(self, what: str) -> None:
        if self.reads.forget(what):
            self.log.info("read_recovered", what=what)

    def changes_failed(self, failed: list[tuple[str, object, int, str, dict]]) -> None:
        """The changes the kernel refused in one pass: (event, key, errno, error text,
        fields). Each is said once per distinct error, and again when it changes; more
        than BURST of one kind and error (a read that outlived its interface: every
        route of it refused, ENODEV) are one warning per kind, interface and error."""
        lines = [(event, {"error": text or os.strerror(code), **fields,
                          "retry": "every pass; logged again if the error changes"}, None)
                 for event, key, code, text, fields in failed if self.failures.changed(key, code)]
        self.lines(lines, "warning", by=("iface", "error"))

    def change_done(self, key) -> None:
        self.failures.forget(key)

    # --- kernel state worth a warning while it lasts

    def devices_down(self, down: set[str], links) -> None:
        for name in sorted(down):
            if self.links_down.changed(name):
                self.log.warning("interface_down", iface=name, detail="routes wait until it is up")
        for name in self.links_down.keep(down):
            if name in links and links[name].up:
                self.log.info("interface_up", iface=name)

    def route_conflicts(self, conflicts) -> None:
        current = set()
        for route, proto in conflicts:
            key = (route.slot, proto)
            current.add(key)
            if self.conflicts.changed(key):
                self.log.warning(
                    "route_conflict", iface=route.ifname, prefix=route.prefix, table=self.table_name(route.table),
                    other_proto=proto,
                    hint=f"a route of protocol {proto} holds this prefix; wgagent leaves it alone. If netifd "
                         f"installs it, set option route_allowed_ips '0' on the wireguard_{route.ifname} "
                         f"peer sections in /etc/config/network")
        self.conflicts.keep(current)

    def path_problems(self, problems) -> None:
        current = set(problems)
        for problem in sorted(current):
            if self.problems.changed(problem):
                self.log.warning("return_path_problem", detail=problem)
        self.problems.keep(current)

    def path_states(self, paths) -> None:
        for p in paths:
            if not self.paths.changed(p.name, (p.device, p.present, p.addresses, p.learned_gateways, p.error,
                                               p.stale)):
                continue
            if p.present:
                self.log.info("return_path", name=p.name, device=p.device,
                              addresses=",".join(f"{a}/{n}" for a, n in p.addresses) or "-",
                              gateways=",".join(gw for _, gw in p.learned_gateways) or "-")
            else:
                self.log.warning("return_path_down", name=p.name, device=p.device or "-", error=p.error)

    # --- what a pass changed

    def changes(self, done: dict, desired: Desired, previous: Desired, now: float, activity, mono: float) -> None:
        """done: (event, interface, owner) -> the routes or rules of that change."""
        if self._brief(len(done)):
            self.lines(_brief_changes(done))
            return
        verdicts = {f"peer {v.label}": v for v in desired.verdicts} if done else {}
        lines = []
        for (event, iface, owner), items in done.items():
            fields = {"iface": iface} if iface else {}
            note = None
            if event.startswith("route"):
                fields["prefixes"] = ",".join(r.prefix + (f" via {r.gateway}" if r.gateway else "") for r in items)
                fields["table"] = self.table_name(items[0].table)
                note = {"interface": iface, "action": event[len("route_"):], "prefixes": [r.prefix for r in items],
                        "table": fields["table"], "peer": ""}
            else:
                fields["rules"] = "; ".join(r.describe() for r in items)
            v = verdicts.get(owner)
            if note is not None and v is not None:
                note["peer"] = v.peer.public_key
            if v is not None:
                # from the clocks, not v.handshake_age: a verdict kept from an earlier
                # poll (policy.desired_state) carries the age it had then
                age = handshake_age(v.peer, now, activity.get((v.interface, v.peer.public_key)), mono)
                fields.update(peer=v.label, handshake_age=_age(age), reason=v.reason)
            elif owner.startswith("peer "):
                fields.update(peer=owner[5:], reason="peer-removed")
            elif owner == "-":
                # held under our tag but wanted by nobody: left by an earlier run, or by
                # a config that has changed since
                fields.update(reason="not-wanted")
            else:
                fields.update(owner=owner)
            lines.append((event, fields, note))
        self.lines(lines)


def _brief_changes(done: dict) -> list:
    """changes()'s lines of a burst, with what lines() reads of each: the interface,
    who (its peer, as changes() names it from the owner, or the owner), and for a
    route the first prefix its notifiers' summary names."""
    lines = []
    for (event, iface, owner), items in done.items():
        fields = {"iface": iface} if iface else {}
        if owner.startswith("peer "):
            fields["peer"] = owner[5:]
        elif owner != "-":
            fields["owner"] = owner
        lines.append((event, fields, {"prefixes": [items[0].prefix]} if event.startswith("route") else None))
    return lines


def moved_fields(record, proto_name) -> dict:
    """Where a held-back peer went: the claiming route, as log lines and status say it."""
    claim = record.claim
    return {"prefix": record.route.prefix, "proto": proto_name(claim.proto), "gateway": claim.gateway or None,
            "device": claim.device or None}


def owner(item, desired: Desired, previous: Desired) -> str:
    """Who wants (or wanted) a route or rule: "peer <label>", "return_path <name>", "-".
    (A tracker's Desired shares its routes with the one before: those it removed are
    in its routes_gone.)"""
    for d in (desired, previous):
        v = d.routes.get(item) or desired.routes_gone.get(item)
        if v is not None:
            return f"peer {v.label}"
        who = d.path_routes.get(item) or d.rules.get(item)
        if who is not None:
            return who
    return "-"


# --- the idle file


def idle_state_path() -> str:
    """Where the daemon of this network namespace says which peers it holds idle.
    Idleness is the one verdict the kernel cannot tell (it needs the rx history), so
    `wgagent status` reads it from here (rundir: one file per network namespace)."""
    return rundir.path("idle", ".json")


def read_idle_state() -> set[tuple[str, str]]:
    """(interface, public key) of the peers the running daemon holds idle; empty when
    no daemon runs here (its file is gone, or its pid is not alive)."""
    try:
        return {(iface, key) for iface, key in _read_state()["idle"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def read_moved_state() -> dict[tuple[str, str], dict]:
    """(interface, public key) -> where it went (moved_fields), for the peers the
    running daemon holds back because another router claimed them."""
    try:
        return {(iface, key): dict(where) for iface, key, where in _read_state().get("moved", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _read_state() -> dict:
    state = json.loads(rundir.read(idle_state_path()))
    os.kill(state["pid"], 0)
    return state


class IdleFile:
    """The idle file (the peers held idle, and those held back as moved), written
    (rundir.write: private, atomic) only when its content changes."""

    def __init__(self):
        self.written: tuple | None = None  # what the file holds; None: nothing written yet

    def write(self, idle: set, log, moved: dict | None = None) -> None:
        content = (idle, moved or {})
        if content == self.written:
            return
        path = idle_state_path()
        try:
            state = {"pid": os.getpid(), "idle": sorted(idle)}
            if moved:
                state["moved"] = [[iface, key, where] for (iface, key), where in sorted(moved.items())]
            rundir.write(path, json.dumps(state))
        except OSError as e:
            log.warning("state_write_failed", path=path, error=str(e))
        self.written = content  # after a failure too: status then misses it; not worth a line per poll

    def remove(self) -> None:
        if self.written is not None:
            rundir.remove(idle_state_path())
            self.written = None
