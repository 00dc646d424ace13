"""Firewall zones, forwardings, rules and NAT as UCI sections in /etc/config/firewall.

desired_sections(config) and plan(desired, owned) are pure; FirewallWriter applies a
plan through rpcd's `uci` object. Ownership: wgagent writes only named sections whose
name starts with OWNED_PREFIX, and changes or deletes nothing else. It lists the
config with one `get` (rpcd has no way to ask for names by prefix) and drops every
other section from the answer unread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import uci
from .config import Config

OWNED_PREFIX = "wgagent_"
CONFIG = "firewall"

Values = dict  # option -> str | list[str]


@dataclass(frozen=True)
class Section:
    name: str
    type: str
    values: tuple  # (option, value) pairs in writing order; a list value is a tuple

    @staticmethod
    def make(name: str, stype: str, values: Values) -> "Section":
        return Section(name, stype, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()))

    def as_dict(self) -> Values:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.values}


def desired_sections(cfg: Config) -> list[Section]:
    """The sections fw4 needs for the configured zones and NAT, in a stable order."""
    out: list[Section] = []
    for z in cfg.zones:
        out.append(Section.make(f"{OWNED_PREFIX}zone_{z.name}", "zone", {
            "name": z.name, "network": list(z.networks), "input": z.input, "output": z.output,
            "forward": z.forward, "masq": _b(z.masq), "masq_allow_invalid": _b(z.masq_allow_invalid),
            "mtu_fix": _b(z.mtu_fix)}))
        for dest in z.forward_to:
            out.append(Section.make(f"{OWNED_PREFIX}fwd_{z.name}_to_{dest}", "forwarding",
                                    {"src": z.name, "dest": dest}))
        for src in z.forward_from:
            out.append(Section.make(f"{OWNED_PREFIX}fwd_{src}_to_{z.name}", "forwarding",
                                    {"src": src, "dest": z.name}))
        if z.allow_port:
            # fw4: a rule has no default target, so it is always written
            out.append(Section.make(f"{OWNED_PREFIX}rule_{z.name}_port", "rule", {
                "name": f"wgagent-{z.name}-wireguard", "src": z.allow_from, "proto": "udp",
                "dest_port": str(z.allow_port), "target": "ACCEPT"}))
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


class ForeignPending(Exception):
    """Somebody else has uncommitted changes to the firewall config: committing now
    would commit them too."""


@dataclass
class SyncResult:
    changed: bool
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class FirewallWriter:
    def __init__(self, client):
        self.client = client

    def _call(self, method: str, **args) -> dict:
        return self.client.call("uci", method, {"config": CONFIG, **args})

    def _pending(self) -> list:
        return self._call("changes").get("changes") or []

    def read_owned(self) -> dict[str, tuple[str, Values]]:
        return owned_from_get(self._call("get"))

    def sync(self, desired: list[Section]) -> SyncResult:
        """Make the owned sections equal to desired: one commit, or none when equal.
        Raises ForeignPending, or UbusError after reverting its own staged changes."""
        pending = self._pending()
        if pending:
            if any(not str(change[1]).startswith(OWNED_PREFIX) for change in pending):
                raise ForeignPending(f"{len(pending)} uncommitted change(s) to /etc/config/{CONFIG} "
                                     "by another tool (uci set without commit, an open LuCI edit)")
            self._call("revert")  # only our own leftovers (an earlier pass that died midway)
        p = plan(desired, self.read_owned())
        if not p:
            return SyncResult(False)
        try:
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
            if any(not str(c[1]).startswith(OWNED_PREFIX) for c in self._pending()):
                # somebody staged a change while we worked: our part stays staged,
                # theirs is not ours to commit
                raise ForeignPending("another tool staged changes while wgagent was writing")
            self._call("commit")
        except ForeignPending:
            raise
        except OSError:
            self._call("revert")
            raise
        return SyncResult(True, [s.name for s in p.create], [s.name for s, _, _ in p.update] +
                          [s.name for s in p.retype], p.delete)


def render(sections: list[Section]) -> str:
    """The sections in UCI syntax, as they would stand in /etc/config/firewall."""
    return uci.render([uci.UciSection(s.type, s.name, 0, 0, s.as_dict()) for s in sections])


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
        self.connect = connect or ubus.connect
        self.wake = threading.Event()
        self.stopping = False
        self.state = ""  # last logged state: "synced", "unavailable", "pending", "failed: ..."
        self.written: set[str] = set()  # names seen in step: a missing one is a restore
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

    def _state(self, state: str, level: str = "info", **fields):
        if state != self.state:
            self.state = state
            getattr(self.log, level)("firewall_" + state.split(":")[0], **fields)

    def _run(self):
        failures = 0
        client = None
        while not self.stopping:
            self.wake.clear()
            wait = self.RESYNC
            try:
                client = client or self.connect(self.config.agent.ubus_socket)
                if client is None:
                    if self.config.zones or self.config.nats:
                        self._state("unavailable", "warning", detail="no ubus here (python3-ubus or the ubus "
                                    "command): firewall sections not written; routes keep working")
                else:
                    self.sync_once(client)
                    failures = 0
            except ForeignPending as e:
                self._state("pending", "warning", detail=str(e), action="retrying later")
                wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
                failures += 1
            except OSError as e:
                self._state(f"failed: {e}", "warning", error=str(e), action="retrying with backoff")
                wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
                failures += 1
                client = None  # reconnect: rpcd or ubusd may have restarted
            self.wake.wait(wait)

    def sync_once(self, client) -> SyncResult:
        desired = desired_sections(self.config)
        result = FirewallWriter(client).sync(desired)
        if result.changed:
            restored = sorted(set(result.created) & self.written)
            if restored:
                self.log.info("firewall_restored", sections=",".join(restored),
                              detail="owned sections removed by another tool were written again")
            self.log.info("firewall_committed", created=",".join(result.created) or "-",
                          updated=",".join(result.updated) or "-", deleted=",".join(result.deleted) or "-")
        self.written = {s.name for s in desired}
        self._state("synced", sections=len(desired))
        return result
