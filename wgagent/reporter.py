"""What the daemon says, and when: each thing once per change, bursts summed up.

A router logs into a 64 KiB ring buffer (logd): a state that persists across passes
(a route the kernel keeps refusing, a conflict, an unreadable interface) must be
said when it starts and when it changes, never on every poll. `Once` is the one
helper for that; the Reporter keeps one per subject. The idle file is here too: it
is what the daemon tells `wgagent status` (the one verdict the kernel cannot give).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile

from . import log as log_mod
from .policy import IDLE, Desired, PeerVerdict, handshake_age

BURST = 20  # more changes of one kind in one pass than this: one summary line (see lines())
RUN_DIR = os.environ.get("WGAGENT_RUN_DIR", "/var/run/wgagent")

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


def peer_fields(v: PeerVerdict) -> dict:
    return {"iface": v.interface, "peer": v.label, "endpoint": v.peer.endpoint or "-",
            "handshake_age": _age(v.handshake_age), "reason": v.reason,
            "prefixes": ",".join(r.prefix for r in v.routes) or "-"}


class Reporter:
    def __init__(self, log, table_name):
        self.log = log
        self.table_name = table_name  # number -> name from rt_tables
        self.up: dict[tuple[str, str], PeerVerdict] = {}  # peers said to be up
        self.interfaces = Once()  # name -> error ("" when readable)
        self.failures = Once()  # a kernel change -> errno, while it keeps failing
        self.reads = Once()  # what could not be read -> error
        self.conflicts = Once()  # (slot, protocol)
        self.problems = Once()  # return path problem texts
        self.paths = Once()  # return path name -> what the kernel holds for it
        self.links_down = Once()  # device names that hold back routes
        self.skipped = Once()  # (interface, peer key, prefix) routes that would carry the endpoint
        self.released = Once()  # interfaces unreadable for too long
        self.idle = IdleFile()

    # --- one line per change; bursts summed up

    def lines(self, lines: list[tuple[str, dict]], level: str = "info", by: tuple[str, ...] = ("iface",)) -> None:
        """One line per change; but a burst (a hub starting with thousands of peers)
        is summed up in one line per kind and per value of the fields `by` (the
        interface), with the lines each at debug: logread's ring buffer is 64 KiB on
        a default OpenWrt, and 10,000 lines would wipe it (and cost seconds to write)."""
        say = getattr(self.log, level)
        if len(lines) <= BURST:
            for event, fields in lines:
                say(event, **fields)
            return
        if log_mod.enabled("debug"):
            for event, fields in lines:
                self.log.debug(event, **fields)
        groups: dict[tuple, list[dict]] = {}
        for event, fields in lines:
            groups.setdefault((event, *(fields.get(k, "") for k in by)), []).append(fields)
        for (event, *values), group in groups.items():
            who = [f.get("peer") or f.get("owner") or f.get("prefix") or f.get("rule", "-") for f in group]
            summary = {k: v for k, v in zip(by, values) if v}
            summary.update(count=len(group), first=",".join(who[:5]) + (",…" if len(who) > 5 else ""),
                           detail="one line each at log_level debug")
            say(event.replace("_", "s_", 1), **summary)  # peer_up -> peers_up, route_add_failed -> routes_add_failed

    # --- peers

    def peers(self, desired: Desired, present: set[str], kept: set[str]) -> None:
        """peer_up / peer_down lines, and the idle file. present: the interfaces that
        exist; kept: those unreadable this pass, whose peers keep their state."""
        was_up = self.up
        now_up: dict[tuple[str, str], PeerVerdict] = {}
        lines = []
        idle = set()
        for v in desired.verdicts:
            if v.up:
                key = (v.interface, v.peer.public_key)
                now_up[key] = v
                if key not in was_up:
                    lines.append(("peer_up", peer_fields(v)))
            elif v.reason == IDLE:
                idle.add((v.interface, v.peer.public_key))
        self.idle.write(idle, self.log)
        gone = was_up.keys() - now_up.keys()
        if gone:
            seen = {(v.interface, v.peer.public_key): v for v in desired.verdicts}
            for key in sorted(gone):
                v = was_up[key]
                if v.interface in kept:
                    now_up[key] = v  # unreadable this time: keep what we knew
                elif key in seen:
                    lines.append(("peer_down", peer_fields(seen[key])))
                else:
                    lines.append(("peer_down", {"iface": v.interface, "peer": v.label,
                                                "reason": "peer-removed" if v.interface in present
                                                else "interface-gone"}))
        self.up = now_up
        self.lines(lines)

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
                          "retry": "every pass; logged again if the error changes"})
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
        verdicts = {f"peer {v.label}": v for v in desired.verdicts} if done else {}
        lines = []
        for (event, iface, owner), items in done.items():
            fields = {"iface": iface} if iface else {}
            if event.startswith("route"):
                fields["prefixes"] = ",".join(r.prefix + (f" via {r.gateway}" if r.gateway else "") for r in items)
                fields["table"] = self.table_name(items[0].table)
            else:
                fields["rules"] = "; ".join(r.describe() for r in items)
            v = verdicts.get(owner)
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
            lines.append((event, fields))
        self.lines(lines)


def owner(item, desired: Desired, previous: Desired) -> str:
    """Who wants (or wanted) a route or rule: "peer <label>", "return_path <name>", "-"."""
    for d in (desired, previous):
        v = d.routes.get(item)
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
    `wgagent status` reads it from here; one file per network namespace, so that two
    daemons on one host (the demo's routers) never share one."""
    return os.path.join(RUN_DIR, f"idle-{os.stat('/proc/self/ns/net').st_ino}.json")


def read_idle_state() -> set[tuple[str, str]]:
    """(interface, public key) of the peers the running daemon holds idle; empty when
    no daemon runs here (its file is gone, or its pid is not alive)."""
    try:
        fd = os.open(idle_state_path(), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as f:
            state = json.load(f)
        os.kill(state["pid"], 0)
        return {(iface, key) for iface, key in state["idle"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


class IdleFile:
    """The idle file, written only when its content changes. Written as root into a
    directory anybody may look at (/var/run), so: a 0700 directory of ours, a unique
    temporary name opened O_EXCL|O_NOFOLLOW (mkstemp), then rename(2), which replaces
    a symlink at the destination instead of following it."""

    def __init__(self):
        self.written: set | None = None  # what the file holds; None: nothing written yet

    def write(self, idle: set, log) -> None:
        if idle == self.written:
            return
        path = idle_state_path()
        try:
            directory = _private_dir(os.path.dirname(path))
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".idle-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"pid": os.getpid(), "idle": sorted(idle)}, f)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("state_write_failed", path=path, error=str(e))
        self.written = idle  # after a failure too: status then misses idleness; not worth a line per poll

    def remove(self) -> None:
        if self.written is not None:
            try:
                os.unlink(idle_state_path())
            except OSError:
                pass
            self.written = None


def _private_dir(path: str) -> str:
    """path as a real directory of ours with mode 0700; OSError if something else
    stands there (a symlink, a file, a directory of another user)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{path} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
