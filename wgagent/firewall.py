"""Firewall zones, forwardings, rules and NAT as UCI sections in /etc/config/firewall.

desired_sections(config) and plan(desired, owned) are pure; FirewallWriter applies a
plan through rpcd's `uci` object, in an rpcd session of its own. Ownership: wgagent writes only named sections whose
name starts with OWNED_PREFIX, and changes or deletes nothing else. It lists the
config with one `get` (rpcd has no way to ask for names by prefix) and drops every
other section from the answer unread.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import re

from . import uci
from .config import Config
from .ubus import INVALID_ARGUMENT, PARSE_ERROR, UbusError

OWNED_PREFIX = "wgagent_"
CONFIG = "firewall"

Values = dict  # option -> str | list[str]


@dataclass(frozen=True)
class Section:
    name: str
    type: str
    values: tuple  # (option, value) pairs in writing order; a list value is a tuple
    zone: str = field(default="", compare=False)  # the wgagent zone it is written for

    @staticmethod
    def make(name: str, stype: str, values: Values, zone: str = "") -> "Section":
        return Section(name, stype, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()), zone)

    def as_dict(self) -> Values:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.values}


def desired_sections(cfg: Config) -> list[Section]:
    """The sections fw4 needs for the configured zones and NAT, in a stable order."""
    out: list[Section] = []
    seen: set[str] = set()  # a -> b asked for by both zones (forward_to and forward_from) is one section
    for z in cfg.zones:
        out.append(Section.make(f"{OWNED_PREFIX}zone_{z.name}", "zone", {
            "name": z.name, "network": list(z.networks), "input": z.input, "output": z.output,
            "forward": z.forward, "masq": _b(z.masq), "masq_allow_invalid": _b(z.masq_allow_invalid),
            "mtu_fix": _b(z.mtu_fix)}, z.name))
        # config.build rejects pairs whose names collide (a -> b_to_c, a_to_b -> c)
        for src, dest in [(z.name, d) for d in z.forward_to] + [(s, z.name) for s in z.forward_from]:
            name = f"{OWNED_PREFIX}fwd_{src}_to_{dest}"
            if name not in seen:
                seen.add(name)
                out.append(Section.make(name, "forwarding", {"src": src, "dest": dest}, z.name))
        if z.allow_port:
            # fw4: a rule has no default target, so it is always written
            out.append(Section.make(f"{OWNED_PREFIX}rule_{z.name}_port", "rule", {
                "name": f"wgagent-{z.name}-wireguard", "src": z.allow_from, "proto": "udp",
                "dest_port": str(z.allow_port), "target": "ACCEPT"}, z.name))
    for n in cfg.nats:
        values: Values = {"name": f"wgagent-{n.name}", "family": n.family, "proto": "all",
                          "src_ip": n.src_ip, "target": n.target}
        if n.device:
            values.update(src="*", device=n.device)
        else:
            values["src"] = n.dest
        if n.snat_ip:
            values["snat_ip"] = n.snat_ip
        out.append(Section.make(f"{OWNED_PREFIX}nat_{n.name}", "nat", values))
    return out


def _b(flag: bool) -> str:
    return "1" if flag else "0"


@dataclass
class Plan:
    create: list[Section] = field(default_factory=list)
    update: list[tuple[Section, Values, list[str]]] = field(default_factory=list)  # (section, set, delete)
    retype: list[Section] = field(default_factory=list)  # same name, another type: delete, then create
    delete: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.retype or self.delete)


def owned_from_get(reply: dict) -> dict[str, tuple[str, Values]]:
    """Our sections from `uci get {config: firewall}`: {name: (type, values)}."""
    out = {}
    for name, body in (reply.get("values") or {}).items():
        if not name.startswith(OWNED_PREFIX):
            continue  # somebody else's: not looked at
        out[name] = (body.get(".type", ""), {k: v for k, v in body.items() if not k.startswith(".")})
    return out


def foreign_zones(reply: dict) -> set[str]:
    """The zone names (option name) of zone sections wgagent does not own: the only
    thing read from them, to check references and clashes."""
    return {str(body.get("name")) for name, body in (reply.get("values") or {}).items()
            if not name.startswith(OWNED_PREFIX) and body.get(".type") == "zone" and body.get("name")}


def check_zones(desired: list[Section], existing: set[str]) -> tuple[list[Section], list[str]]:
    """Drop the sections of a wgagent zone whose name an existing zone already has
    (fw4 would see two zones of one name), and name every referenced zone that
    exists nowhere. Returns (sections to write, warnings)."""
    warnings = []
    clash = {s.zone for s in desired if s.type == "zone" and s.as_dict()["name"] in existing}
    for zone in sorted(clash):
        warnings.append(f"zone '{zone}': /etc/config/firewall already has a zone of that name; "
                        "wgagent's zone and its forwardings and rule are not written")
    keep = [s for s in desired if s.zone not in clash]
    ours = {s.as_dict()["name"] for s in keep if s.type == "zone"}
    missing: dict[str, list[str]] = {}
    for s in keep:
        v = s.as_dict()
        refs = [v.get("src"), v.get("dest")] if s.type in ("forwarding", "rule") else \
            [v.get("src")] if s.type == "nat" else []
        for ref in refs:
            if ref and ref != "*" and ref not in ours and ref not in existing:
                missing.setdefault(ref, []).append(s.name)
    for ref, names in sorted(missing.items()):
        warnings.append(f"zone '{ref}' (used by {', '.join(names)}) is not in /etc/config/firewall: "
                        "fw4 will skip those sections")
    return keep, warnings


def plan(desired: list[Section], owned: dict[str, tuple[str, Values]]) -> Plan:
    p = Plan()
    want = {s.name: s for s in desired}
    for s in desired:
        have = owned.get(s.name)
        if have is None:
            p.create.append(s)
            continue
        htype, hvalues = have
        if htype != s.type:
            p.retype.append(s)
            continue
        dv = s.as_dict()
        to_set = {k: v for k, v in dv.items() if hvalues.get(k) != v}
        to_delete = sorted(k for k in hvalues if k not in dv)
        if to_set or to_delete:
            p.update.append((s, to_set, to_delete))
    p.delete = sorted(name for name in owned if name not in want)
    return p


_VALUE = re.compile(r"[^\x00-\x1f\x7f'\"\\]*\Z")  # no control characters, no quotes, no backslash


def _writable(s: Section) -> None:
    """The config's validation already keeps out names and values that could make
    another section or option of a UCI file (a newline, a quote, a dot, '='): once
    more here, before the first ubus call, for whatever reaches the writer."""
    bad = [f"section name {s.name!r}"] if not (s.name.startswith(OWNED_PREFIX) and uci.NAME.match(s.name)) else []
    bad += [f"type {s.type!r}"] if not uci.NAME.match(s.type) else []
    for option, value in s.values:
        if not uci.NAME.match(option):
            bad.append(f"option name {option!r}")
        bad += [f"option {option}: value {v!r}" for v in (value if isinstance(value, tuple) else (value,))
                if not isinstance(v, str) or not _VALUE.match(v)]
    if bad:
        raise UbusError(INVALID_ARGUMENT, f"refusing to write firewall section {s.name!r}: " + "; ".join(bad))


class ForeignPending(Exception):
    """Another tool holds the firewall config: rpcd refuses every commit while an
    apply with rollback awaits confirmation (LuCI's Save & Apply). The pass wrote
    nothing that stays; the next one writes it."""


# rpcd expires an idle session after this many seconds and removes its savedir with it
# (session.c: rpc_session_timeout -> rpc_session_destroy, whose callback in uci.c,
# rpc_uci_purge_savedir_cb, deletes /var/run/rpcd/uci-<sid>). Every call that names
# the session starts the count again (rpc_session_get), so it has only to outlast the
# longest wait between two of one pass's calls (a call's timeout is 10 s). It bounds
# how long a killed pass's uncommitted changes lie in /var/run/rpcd, where no other
# commit reads them. Never 0: a session of timeout 0 never expires.
SESSION_TIMEOUT = 60
PERMISSION_DENIED, UNKNOWN_ERROR = 6, 9  # UBUS_STATUS_*


@dataclass
class SyncResult:
    changed: bool
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # the owned sections now in step


class FirewallWriter:
    """Reads and writes the firewall config through rpcd, in a private rpcd session.

    Why a session: without one, rpcd keeps uncommitted changes in /tmp/.uci, shared
    with the uci CLI and every other caller, and a commit commits all of them. A
    session has a savedir of its own (uci.c: rpc_uci_set_savedir, /var/run/rpcd/
    uci-<sid>), and rpcd empties the cursor's delta path before it puts that one
    directory on it (rpc_uci_replace_savedir), so libuci (uci_load_delta, and
    uci_file_commit for a commit) reads the session's delta and nothing else. Hence:
    - a commit in the session writes our changes only: whatever another tool stages
      in /tmp/.uci meanwhile, at any moment up to the commit, stays staged and is
      theirs to commit; their commit carries nothing of ours;
    - get in the session shows the file as committed (what fw4 renders), not other
      tools' staged edits, so the plan is made against the file the commit rewrites;
    - a pass that fails midway leaves its changes in its savedir only, and destroying
      the session (session.c: rpc_session_destroy, its uci.c callback) removes them:
      nothing to revert. rpcd's revert takes a whole config, another tool's staged
      edits included, and is never needed now;
    - a pass killed midway (no destroy) leaves them there too, read by nobody, until
      the session expires (SESSION_TIMEOUT) or rpcd restarts (main.c purges every
      uci-* savedir at start).
    So there is nothing left to check with `changes`: other tools' pending changes
    neither block us nor ride along. The one foreign state that still stops a pass is
    an apply awaiting confirmation (ForeignPending).

    The session is granted read and write on the firewall config only (scope uci):
    without a grant rpcd answers PERMISSION_DENIED to every uci call naming it."""

    def __init__(self, client):
        self.client = client
        self.session = ""  # the rpcd session of the pass under way

    def _call(self, method: str, **args) -> dict:
        # only inside _in_session(): "" names no session, and rpcd would refuse the call
        return self.client.call("uci", method, {"config": CONFIG, **args, "ubus_rpc_session": self.session})

    @contextmanager
    def _in_session(self):
        """A private rpcd session for the calls inside; destroyed after them, also when
        one fails. Nested use (read() inside sync()) stays in the open one."""
        if self.session:
            yield
            return
        reply = self.client.call("session", "create", {"timeout": SESSION_TIMEOUT})
        sid = reply.get("ubus_rpc_session")
        if not isinstance(sid, str) or not sid:
            # rpc_handle_create answers status 0 and no data when rpc_session_create fails
            raise UbusError(UNKNOWN_ERROR, f"ubus call session create: rpcd made no session ({reply!r:.80})")
        self.session = sid
        try:
            self.client.call("session", "grant", {"ubus_rpc_session": sid, "scope": "uci",
                                                  "objects": [[CONFIG, "read"], [CONFIG, "write"]]})
            yield
        finally:
            self.session = ""
            try:
                self.client.call("session", "destroy", {"ubus_rpc_session": sid})
            except OSError:
                # rpcd gone, restarted (its sessions and savedirs purged) or the session
                # expired: then its savedir is gone already, or goes when it expires. The
                # pass's own outcome, error or not, is what the caller hears
                pass

    def read(self, desired: list[Section]) -> tuple[dict[str, tuple[str, Values]], list[Section], list[str]]:
        """One `get` of the firewall config, as committed: the sections we own, desired
        as it can be written (check_zones against the zones of others), and the warnings."""
        with self._in_session():
            reply = self._call("get")
        values = reply.get("values")
        # rpcd answers a config's get with a table of section tables: anything else is
        # a UbusError like any bad reply (the caller catches OSError), not an AttributeError
        if not isinstance(values, dict) or not all(isinstance(b, dict) for b in values.values()):
            raise UbusError(PARSE_ERROR, f"ubus call uci get {{config: {CONFIG}}}: the reply's values "
                                         "are not a table of sections")
        desired, warnings = check_zones(desired, foreign_zones(reply))
        return owned_from_get(reply), desired, warnings

    def sync(self, desired: list[Section]) -> SyncResult:
        """Make the owned sections equal to desired: one commit, or none when equal.
        Raises ForeignPending or UbusError; either way nothing of this pass stays staged."""
        for s in desired:
            _writable(s)
        with self._in_session():
            owned, desired, warnings = self.read(desired)
            p = plan(desired, owned)
            written = [s.name for s in desired]
            if not p:
                return SyncResult(False, warnings=warnings, written=written)
            for name in p.delete + [s.name for s in p.retype]:
                self._call("delete", section=name)
            for s in p.create + p.retype:
                # a named add is an upsert that APPENDS to lists: create the bare
                # section, then set the values (set replaces lists)
                self._call("add", type=s.type, name=s.name)
                self._call("set", section=s.name, values=s.as_dict())
            for s, to_set, to_delete in p.update:
                if to_set:
                    self._call("set", section=s.name, values=to_set)
                if to_delete:
                    self._call("delete", section=s.name, options=to_delete)
            self._commit()
        return SyncResult(True, [s.name for s in p.create], [s.name for s, _, _ in p.update] +
                          [s.name for s in p.retype], p.delete, warnings, written)

    def _commit(self):
        try:
            self._call("commit")
        except UbusError as e:
            # rpc_uci_revert_commit answers PERMISSION_DENIED before anything else while
            # an apply with rollback is pending (apply_sid). So does any uci call once the
            # session has lost its grant (rpcd re-executed on SIGHUP thaws sessions
            # without ACLs) or is gone: the session's own access, asked again, tells them apart
            if e.status != PERMISSION_DENIED or not self._may_write():
                raise
            raise ForeignPending("rpcd refuses commits while another tool's apply awaits confirmation "
                                 "(LuCI's Save & Apply, until confirmed or rolled back); "
                                 "nothing written, the next pass writes it") from None

    def _may_write(self) -> bool:
        try:
            reply = self.client.call("session", "access", {"ubus_rpc_session": self.session, "scope": "uci",
                                                           "object": CONFIG, "function": "write"})
        except OSError:
            return False  # no such session any more
        return reply.get("access") is True


def render(sections: list[Section]) -> str:
    """The sections in UCI syntax, as they would stand in /etc/config/firewall."""
    return uci.render([uci.UciSection(s.type, s.name, 0, 0, s.as_dict()) for s in sections])


def status_entry(transport: str | None, sections=(), error: str | None = None, warnings=None) -> dict:
    """The "firewall" entry of the status document (status.py): the owned sections,
    each "ok", "missing", "differs" or "stale"."""
    out = {"transport": transport, "sections": list(sections), "error": error}
    if warnings is not None:
        out["warnings"] = list(warnings)
    return out


def section_states(desired: list[Section], owned: dict, p: Plan) -> list[dict]:
    differ = {s.name for s in p.create + p.retype} | {s.name for s, _, _ in p.update}
    out = [{"name": s.name, "type": s.type,
            "state": "missing" if s.name not in owned else "differs" if s.name in differ else "ok"}
           for s in desired]
    return out + [{"name": n, "type": owned[n][0], "state": "stale"} for n in p.delete]


class FirewallSync:
    """Keeps the firewall sections in step, in a thread of its own: the route loop
    never waits on ubus. Woken at start, on reload and every RESYNC seconds; a
    failure is retried with backoff and logged once per change of state."""

    RESYNC = 60.0
    BACKOFF = (5.0, 10.0, 30.0, 60.0, 300.0)

    def __init__(self, config: Config, log, connect=None):
        import threading

        from . import ubus

        self.config = config
        self.log = log
        # threaded: the CLI where it exists, never python-ubus's GIL-holding call (see ubus.py)
        self.connect = connect or (lambda sock: ubus.connect(sock, threaded=True))
        self.wake = threading.Event()
        self.stopping = False
        self.state = ""  # last logged state: "synced", "unavailable", "pending", "failed: ..."
        self.warned: tuple = ()  # the zone warnings last logged
        self.written: set[str] = set()  # names seen in step: a missing one is a restore
        # the status document's "firewall" entry as of the last pass, replaced whole (the
        # route loop reads it); on_status: called from this thread when it changes
        self.status: dict | None = None
        self.on_status = None
        self.thread = threading.Thread(target=self._run, name="firewall", daemon=True)

    def start(self):
        self.thread.start()

    def nudge(self, config: Config | None = None):
        if config is not None:
            self.config = config
        self.wake.set()

    def stop(self):
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=5)

    def _set_status(self, entry: dict):
        if entry != self.status:
            self.status = entry
            if self.on_status is not None:
                self.on_status()

    def _state(self, state: str, level: str = "info", **fields):
        if state != self.state:
            self.state = state
            getattr(self.log, level)("firewall_" + state.split(":")[0], **fields)

    def _run(self):
        failures = 0
        client, socket = None, None
        while not self.stopping:
            self.wake.clear()
            wait = self.RESYNC
            try:
                if self.config.agent.ubus_socket != socket:
                    client, socket = None, self.config.agent.ubus_socket  # a reload changed it
                client = client or self.connect(socket)
                if client is None:
                    if self.config.zones or self.config.nats:
                        self._set_status(status_entry(None, error="no ubus here"))
                        self._state("unavailable", "warning", detail="no ubus here (python3-ubus or the ubus "
                                    "command): firewall sections not written; routes keep working")
                else:
                    self.sync_once(client)
                    failures = 0
            except ForeignPending as e:
                self._set_status(status_entry(client.name, error=str(e)))
                self._state("pending", "warning", detail=str(e), action="retrying later")
                wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
                failures += 1
            except OSError as e:
                self._set_status(status_entry(client.name if client else None, error=str(e)))
                self._state(f"failed: {e}", "warning", error=str(e), action="retrying with backoff")
                wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
                failures += 1
                client = None  # reconnect: rpcd or ubusd may have restarted
            except Exception as e:  # a bug must not end the thread: say so, keep trying
                import traceback

                self._state(f"failed: {type(e).__name__}: {e}", "error", error=f"{type(e).__name__}: {e}",
                            action="retrying with backoff")
                self.log.debug("firewall_traceback", traceback=traceback.format_exc())
                wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
                failures += 1
                client = None
            self.wake.wait(wait)

    def sync_once(self, client) -> SyncResult:
        result = FirewallWriter(client).sync(desired_sections(self.config))
        if tuple(result.warnings) != self.warned:
            self.warned = tuple(result.warnings)
            for w in result.warnings:
                self.log.warning("firewall_zone", detail=w)
        if result.changed:
            restored = sorted(set(result.created) & self.written)
            if restored:
                self.log.info("firewall_restored", sections=",".join(restored),
                              detail="owned sections removed by another tool were written again")
            self.log.info("firewall_committed", created=",".join(result.created) or "-",
                          updated=",".join(result.updated) or "-", deleted=",".join(result.deleted) or "-")
        self.written = set(result.written)
        types = {s.name: s.type for s in desired_sections(self.config)}
        self._set_status(status_entry(client.name, [{"name": n, "type": types.get(n, ""), "state": "ok"}
                                                    for n in result.written], warnings=result.warnings))
        self._state("synced", sections=len(result.written))
        return result
