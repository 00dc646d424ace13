"""wgagent's configuration: one typed model, read from UCI or from YAML.

Every value is validated once, at load. An error names the file, the section, the
option and the bad value; the loader raises ConfigError and the caller decides what
to do (the CLI exits 2, a reload keeps the running config). Unknown options and
section types are returned as warnings, never ignored silently.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from . import uci

DEFAULT_UCI_PATH = "/etc/config/wgagent"
RT_TABLES = ("/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables")
BUILTIN_TABLES = {"main": 254, "local": 255, "default": 253}
RT_PROTOS = ("/etc/iproute2/rt_protos", "/usr/share/iproute2/rt_protos")
# iproute2's own names (lib/rt_names.c, rtnl_rtprot_tab), for a router without the
# file (BusyBox ip): the numbers of linux/rtnetlink.h
BUILTIN_PROTOS = {"unspec": 0, "redirect": 1, "kernel": 2, "boot": 3, "static": 4, "gated": 8, "ra": 9, "mrt": 10,
                  "zebra": 11, "bird": 12, "dnrouted": 13, "xorp": 14, "ntk": 15, "dhcp": 16, "keepalived": 18,
                  "babel": 42, "openr": 99, "bgp": 186, "isis": 187, "ospf": 188, "rip": 189, "eigrp": 192}
# The routing daemons' protocols whose routes for a peer's prefix mean "another router
# has this peer" (yield_to, see policy.hand_off) rather than a conflict.
ROUTING_DAEMONS = ("bird", "zebra", "babel", "bgp", "isis", "ospf", "rip", "eigrp")
DEFAULT_YIELD_TO = frozenset(BUILTIN_PROTOS[name] for name in ROUTING_DAEMONS)
YIELD_NONE = "none"  # yield_to 'none': off (an empty value cannot say it: libuci drops empty options)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A bad config value: names where it is and what is wrong."""

    def __init__(self, path: str, section: str | None, option: str | None, value: Any, message: str):
        where = path
        if section is not None:
            where += f": section '{section}'"
        if option is not None:
            where += f", option '{option}'"
        if value is not None:
            where += f", value {_show(value)}"
        super().__init__(f"{where}: {message}")
        self.path, self.section, self.option, self.value = path, section, option, value


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


# --- converters: raw string (or list of strings) -> typed value, ValueError on bad input

_TRUE = ("1", "yes", "on", "true", "enabled")
_FALSE = ("0", "no", "off", "false", "disabled")


def boolean(raw: str) -> bool:
    low = _scalar(raw).lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected a boolean (1/0, yes/no, on/off, true/false)")


def _scalar(raw: Any) -> str:
    if isinstance(raw, list):
        raise ValueError("expected a single value, not a list")
    return raw


def number(lo: float, hi: float, integer: bool = False, lo_open: bool = False) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        text = _scalar(raw).strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise ValueError("expected an integer" if integer else "expected a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if value < lo or value > hi or (lo_open and value == lo):
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise ValueError(f"out of range: must be {low} and <= {hi:g}")
        return value

    return convert


def choice(*allowed: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = _scalar(raw)
        if value not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return value

    return convert


def text(raw: str) -> str:
    return _scalar(raw)


_IFNAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}\Z")


def ifname(raw: str) -> str:
    value = _scalar(raw)
    if not _IFNAME.match(value) or value in (".", ".."):
        raise ValueError("not a valid interface name (1-15 characters, no spaces or '/')")
    return value


def wg_key(raw: str) -> str:
    """A WireGuard key as wg(8) and the kernel spell it: 44 characters of base64, 32 bytes.

    32 bytes take 43 base64 characters and the 43rd carries 2 padding bits, which
    Python's decoder ignores: "...B=" decodes to the same bytes as "...A=". Such a key
    is refused, not mended. wg refuses it (wireguard-tools src/encoding.c,
    key_from_base64, checks those bits), and the kernel and `wg show` give only the
    form with them clear, so it would never match a peer: it comes from a hand edit
    or a typo, and mending it quietly would hide a mistake whose neighbours (the
    other bits of that character) are a different key. The error says what wg reads.
    """
    value = _scalar(raw).strip()
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32 or len(value) != 44:
        raise ValueError("not a WireGuard key (44 characters of base64, 32 bytes)")
    canonical = base64.b64encode(decoded).decode()
    if value != canonical:
        raise ValueError(f"not a WireGuard key as wg prints it: the padding bits of character 43 "
                         f"({value[42]!r}) are set, which wg refuses; compare with `wg show` (with them "
                         f"clear it would read {canonical!r})")
    return value


def prefix(raw: str) -> str:
    value = _scalar(raw)
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as e:
        raise ValueError(f"not an IP prefix ({e})") from None


def ip_address(raw: str) -> str:
    value = _scalar(raw)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("not an IP address") from None


def read_rt_tables(paths: tuple[str, ...] = RT_TABLES) -> dict[str, int]:
    """Table names from iproute2's rt_tables (and rt_tables.d/*.conf)."""
    return _read_names(paths, BUILTIN_TABLES)


def read_rt_protos(paths: tuple[str, ...] = RT_PROTOS) -> dict[str, int]:
    """Route protocol names from iproute2's rt_protos (and rt_protos.d/*.conf)."""
    return _read_names(paths, BUILTIN_PROTOS)


def _read_names(paths: tuple[str, ...], builtin: dict[str, int]) -> dict[str, int]:
    names = dict(builtin)
    files: list[str] = []
    for path in paths:
        files.append(path)
        d = path + ".d"
        if os.path.isdir(d):
            files.extend(os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".conf"))
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split("#", 1)[0].split()
                    if len(parts) >= 2:
                        try:
                            names.setdefault(parts[1], int(parts[0], 0))
                        except ValueError:
                            continue
        except OSError:
            continue
    return names


def table(raw: str, tables: dict[str, int]) -> int:
    value = _scalar(raw).strip()
    if value.isdigit():
        num = int(value)
        if 1 <= num <= 2**32 - 1:
            return num
        raise ValueError("table number out of range: must be 1..4294967295")
    if value in tables:
        num = tables[value]
        if 1 <= num <= 2**32 - 1:
            return num
        raise ValueError(f"table {value!r} is number {num} in rt_tables: must be 1..4294967295")
    raise ValueError("unknown table name (not a number and not in /etc/iproute2/rt_tables)")


def table_name(num: int, tables: dict[str, int] | None = None) -> str:
    for name, n in (tables or BUILTIN_TABLES).items():
        if n == num:
            return name
    return str(num)


def proto_name(num: int, protos: dict[str, int] | None = None) -> str:
    """12 -> 'bird' (rt_protos), a number without a name as itself."""
    return table_name(num, protos or BUILTIN_PROTOS)


def protocols(raw, protos: dict[str, int]) -> frozenset[int]:
    """yield_to: protocol names (rt_protos) or numbers 0..255, a list or one
    space-separated option; 'none' alone (or, in YAML, an empty list): no protocol."""
    if raw == []:
        return frozenset()
    items = raw if isinstance(raw, list) else _scalar(raw).split()
    if [i.strip() for i in items] == [YIELD_NONE]:
        return frozenset()
    out = set()
    for item in items:
        value = item.strip()
        if value.isascii() and value.isdigit():
            if int(value) > 255:
                raise ValueError(f"protocol {value} out of range: must be 0..255")
            out.add(int(value))
        elif value in protos:
            out.add(protos[value])
        elif value == YIELD_NONE:
            raise ValueError(f"'{YIELD_NONE}' turns yield_to off and stands alone")
        else:
            raise ValueError(f"unknown protocol {value!r} (not a number 0..255 and not in /etc/iproute2/rt_protos)")
    if not out:
        raise ValueError(f"no protocol named (to turn yield_to off, set it to '{YIELD_NONE}')")
    return frozenset(out)


POLICIES = ("ACCEPT", "REJECT", "DROP")
NAT_TARGETS = ("MASQUERADE", "SNAT", "ACCEPT")


def names(raw) -> tuple[str, ...]:
    """An option or a list of names; a space-separated option counts as a list (fw4 style)."""
    items = raw if isinstance(raw, list) else _scalar(raw).split()
    return tuple(uci_name(v) for v in items)


def uci_name(raw: str) -> str:
    value = _scalar(raw)
    if not uci.NAME.match(value):
        raise ValueError("not a netifd interface name ([A-Za-z0-9_])")
    return value


# wgagent's ip rule band: rule_priority .. rule_priority + RULE_BAND - 1. The default,
# 5000, is clear of mwan3 (1000-3999), netifd (10000, 20000, 90000+) and pbr (30000+).
RULE_BAND = 1000
RULE_PRIORITY_MAX = 32765 - RULE_BAND  # the main table's rule sits at 32766

# --- the typed model


POLL_INTERVAL = 2.0  # seconds: the poll without the handshake wake-up
WAKE_POLL_INTERVAL = 10.0  # seconds: the safety-net poll while it runs (bench/RESULTS.md)


@dataclass(frozen=True)
class AgentConfig:
    enabled: bool = True
    log_level: str = "info"
    # seconds between reads of every peer; None (not set): WAKE_POLL_INTERVAL while the
    # handshake wake-up runs (a safety net), POLL_INTERVAL without it. Set, it is the poll
    poll_interval: float | None = None
    handshake_timeout: float = 180.0
    keep_routes_on_stop: bool = False
    rule_priority: int = 5000  # first priority of wgagent's ip rule band (see RULE_BAND)
    ubus_socket: str = ""  # "" = ubus's default socket
    hotplug_timeout: float = 10.0  # seconds each /etc/hotplug.d/wgagent script may run
    # the handshake wake-up (wake.py): a packet socket that sees WireGuard handshakes on
    # the wire and reads that interface at once
    wake: bool = True

    def poll(self, waking: bool) -> float:
        """The poll interval, with the wake-up running or not."""
        if self.poll_interval is not None:
            return self.poll_interval
        return WAKE_POLL_INTERVAL if waking else POLL_INTERVAL


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    table: int = 254
    metric: int = 0
    route_default: bool = False
    idle_timeout: float = 0.0  # 0 = off
    source_table: int | None = None  # ip rule "from <AllowedIP> lookup" this, for up peers
    # protocols whose route for a peer's prefix is another router's claim on the peer,
    # beside which ours is installed, not a conflict (policy.hand_off)
    yield_to: frozenset[int] = DEFAULT_YIELD_TO


@dataclass(frozen=True)
class PeerConfig:
    name: str  # the section's label
    interface: str
    public_key: str
    description: str = ""
    route: bool = True
    idle_timeout: float | None = None  # None = the interface's
    source_table: int | None = None  # None = the interface's


@dataclass(frozen=True)
class ReturnPathConfig:
    """P2: replies from a WAN address leave by the WAN, whatever the default route."""

    name: str
    table: int
    device: str = ""  # kernel device, or ...
    network: str = ""  # ... a netifd interface, resolved through ubus
    gateways: tuple[str, ...] = ()  # at most one per family; default: learned


@dataclass(frozen=True)
class ZoneConfig:
    """P4: a firewall zone for WireGuard networks, with its forwardings and port rule."""

    name: str
    networks: tuple[str, ...] = ()
    input: str = "ACCEPT"
    output: str = "ACCEPT"
    forward: str = "REJECT"
    masq: bool = False
    masq_allow_invalid: bool = False
    mtu_fix: bool = True
    forward_to: tuple[str, ...] = ()
    forward_from: tuple[str, ...] = ()
    allow_port: int = 0  # 0: no rule
    allow_from: str = "wan"


@dataclass(frozen=True)
class NatConfig:
    name: str
    src_ip: str
    device: str = ""  # outgoing device, or ...
    dest: str = ""  # ... outgoing zone
    target: str = "MASQUERADE"
    snat_ip: str = ""
    family: str = "ipv4"


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentConfig = AgentConfig()
    interfaces: tuple[InterfaceConfig, ...] = ()
    peers: tuple[PeerConfig, ...] = ()
    return_paths: tuple[ReturnPathConfig, ...] = ()
    zones: tuple[ZoneConfig, ...] = ()
    nats: tuple[NatConfig, ...] = ()
    warnings: tuple[str, ...] = ()
    tables: dict[str, int] = field(default_factory=lambda: dict(BUILTIN_TABLES), compare=False)
    protos: dict[str, int] = field(default_factory=lambda: dict(BUILTIN_PROTOS), compare=False)

    def interface(self, name: str) -> InterfaceConfig | None:
        return self._interfaces.get(name)

    def peer(self, interface: str, public_key: str) -> PeerConfig | None:
        return self._peers.get((interface, public_key))

    # lookups per poll and peer: dicts, built once (cached_property writes around frozen)
    @cached_property
    def _interfaces(self) -> dict[str, InterfaceConfig]:
        return {i.name: i for i in self.interfaces}

    @cached_property
    def _peers(self) -> dict[tuple[str, str], PeerConfig]:
        return {(p.interface, p.public_key): p for p in self.peers}


# --- schema: section type -> option -> converter(raw, tables)

class Names(dict):
    """What names in a config refer to, as read at load: rt_tables (the mapping itself,
    what every converter takes) and rt_protos (`protos`, for yield_to)."""

    def __init__(self, tables: dict[str, int], protos: dict[str, int]):
        super().__init__(tables)
        self.protos = protos


Converter = Callable[[Any, dict], Any]  # (raw value, rt_tables: a dict or Names)


def _plain(fn: Callable[[Any], Any]) -> Converter:
    return lambda raw, tables: fn(raw)


SCHEMA: dict[str, dict[str, Converter]] = {
    "agent": {
        "enabled": _plain(boolean),
        "log_level": _plain(choice(*LOG_LEVELS)),
        "poll_interval": _plain(number(0, 3600, lo_open=True)),
        "handshake_timeout": _plain(number(0, 86400, lo_open=True)),
        "keep_routes_on_stop": _plain(boolean),
        "rule_priority": _plain(number(1, RULE_PRIORITY_MAX, integer=True)),
        "ubus_socket": _plain(text),
        "hotplug_timeout": _plain(number(0, 3600, lo_open=True)),
        "wake": _plain(boolean),
    },
    "interface": {
        "table": table,
        "metric": _plain(number(0, 2**32 - 1, integer=True)),
        "route_default": _plain(boolean),
        "idle_timeout": _plain(number(0, 86400)),
        "source_table": table,
        "yield_to": lambda raw, tables: protocols(raw, getattr(tables, "protos", BUILTIN_PROTOS)),
    },
    "peer": {
        "interface": _plain(ifname),
        "public_key": _plain(wg_key),
        "description": _plain(text),
        "route": _plain(boolean),
        "idle_timeout": _plain(number(0, 86400)),
        "source_table": table,
    },
    "return_path": {
        "device": _plain(ifname),
        "network": _plain(lambda raw: uci_name(raw)),
        "table": table,
        "gateway": lambda raw, tables: tuple(ip_address(v) for v in (raw if isinstance(raw, list) else [raw])),
    },
    "zone": {
        "network": _plain(lambda raw: names(raw)),
        "input": _plain(choice(*POLICIES)),
        "output": _plain(choice(*POLICIES)),
        "forward": _plain(choice(*POLICIES)),
        "masq": _plain(boolean),
        "masq_allow_invalid": _plain(boolean),
        "mtu_fix": _plain(boolean),
        "forward_to": _plain(lambda raw: names(raw)),
        "forward_from": _plain(lambda raw: names(raw)),
        "allow_port": _plain(number(1, 65535, integer=True)),
        "allow_from": _plain(uci_name),
    },
    "nat": {
        "src_ip": _plain(lambda raw: prefix(raw) if "/" in _scalar(raw) else ip_address(raw)),
        "device": _plain(ifname),
        "dest": _plain(uci_name),
        "target": _plain(choice(*NAT_TARGETS)),
        "snat_ip": _plain(ip_address),
        "family": _plain(choice("ipv4", "ipv6", "any")),
    },
}
REQUIRED = {"peer": ("interface", "public_key"), "return_path": ("table",), "nat": ("src_ip",)}

# YAML top-level keys: key -> (section type, is a single section named 'main')
YAML_KEYS = {"agent": ("agent", True), "interfaces": ("interface", False), "peers": ("peer", False),
             "return_paths": ("return_path", False), "zones": ("zone", False), "nats": ("nat", False)}


@dataclass
class RawSection:
    """A section before validation, from either syntax."""

    type: str
    label: str
    options: dict[str, Any]


def _convert(path: str, raw: RawSection, tables: dict, warnings: list[str]) -> dict[str, Any]:
    schema = SCHEMA[raw.type]
    values: dict[str, Any] = {}
    for option, value in raw.options.items():
        conv = schema.get(option)
        if conv is None:
            warnings.append(f"{path}: section '{raw.label}': unknown option '{option}' ignored")
            continue
        try:
            values[option] = conv(value, tables)
        except ValueError as e:
            raise ConfigError(path, raw.label, option, value, str(e)) from None
    for option in REQUIRED.get(raw.type, ()):
        if option not in values:
            raise ConfigError(path, raw.label, option, None, "required option is missing")
    return values


def build(path: str, raw_sections: list[RawSection], tables: dict[str, int] | None = None,
          warnings: tuple[str, ...] | list[str] = (), protos: dict[str, int] | None = None) -> Config:
    """Validate raw sections into a Config; `warnings` (from reading the file) come
    first in its warnings. Raises ConfigError."""
    tables = read_rt_tables() if tables is None else tables
    protos = read_rt_protos() if protos is None else protos
    names = Names(tables, protos)
    warnings = list(warnings)
    agent = AgentConfig()
    interfaces: dict[str, InterfaceConfig] = {}
    peers: list[PeerConfig] = []
    return_paths: list[ReturnPathConfig] = []
    zones: list[ZoneConfig] = []
    nats: list[NatConfig] = []
    agents_seen = 0
    for raw in raw_sections:
        if raw.type not in SCHEMA:
            warnings.append(f"{path}: section '{raw.label}': unknown section type '{raw.type}' ignored")
            continue
        values = _convert(path, raw, names, warnings)
        if raw.type == "agent":
            agents_seen += 1
            if agents_seen > 1:
                raise ConfigError(path, raw.label, None, None, "only one 'agent' section is allowed")
            agent = AgentConfig(**values)
        elif raw.type == "interface":
            try:
                name = ifname(raw.label)
            except ValueError as e:
                raise ConfigError(path, raw.label, None, None, f"section name: {e}") from None
            interfaces[name] = InterfaceConfig(name=name, **values)
        elif raw.type == "peer":
            peers.append(PeerConfig(name=raw.label, **values))
        elif raw.type == "return_path":
            return_paths.append(_return_path(path, raw.label, values))
        elif raw.type == "zone":
            zones.append(_zone(path, raw.label, values))
        elif raw.type == "nat":
            nats.append(_nat(path, raw.label, values))
    seen: dict[tuple[str, str], str] = {}
    for p in peers:
        if p.interface not in interfaces:
            raise ConfigError(path, p.name, "interface", p.interface, "no 'interface' section of that name")
        key = (p.interface, p.public_key)
        if key in seen:
            raise ConfigError(path, p.name, "public_key", p.public_key,
                              f"the same peer is already configured in section '{seen[key]}'")
        seen[key] = p.name
    _check_zones(path, zones, nats, warnings)
    return Config(path=path, agent=agent, interfaces=tuple(interfaces.values()), peers=tuple(peers),
                  return_paths=tuple(return_paths), zones=tuple(zones), nats=tuple(nats),
                  warnings=tuple(warnings), tables=tables, protos=protos)


def _zone(path: str, label: str, values: dict) -> ZoneConfig:
    try:
        uci_name(label)
    except ValueError as e:
        raise ConfigError(path, label, None, None, f"section name: {e}") from None
    values.setdefault("networks", values.pop("network", (label,)))
    for option in ("forward_to", "forward_from"):
        if label in values.get(option, ()):
            raise ConfigError(path, label, option, list(values[option]), "a zone cannot forward to itself")
    return ZoneConfig(name=label, **values)


USUAL_ZONES = ("lan", "wan")  # in every stock /etc/config/firewall


def _check_zones(path: str, zones: list[ZoneConfig], nats: list[NatConfig], warnings: list[str]) -> None:
    """Forwarding section names must not collide (wgagent_fwd_<src>_to_<dest>: 'a' to
    'b_to_c' and 'a_to_b' to 'c' would be one section, rewritten on every pass), and
    a zone reference that names neither a wgagent zone nor lan/wan is worth a warning:
    the firewall config, where it may live, is only read at write time."""
    known = {z.name for z in zones} | set(USUAL_ZONES)
    names: dict[str, tuple[str, str, str, str]] = {}  # section name -> (src, dest, zone, option)
    for z in zones:
        pairs = [(z.name, d, "forward_to") for d in z.forward_to] + [(s, z.name, "forward_from") for s in z.forward_from]
        for src, dest, option in pairs:
            name = f"{src}_to_{dest}"
            other = names.get(name)
            if other is not None and other[:2] != (src, dest):
                raise ConfigError(path, z.name, option, dest if option == "forward_to" else src,
                                  f"forwarding {src} -> {dest} and forwarding {other[0]} -> {other[1]} "
                                  f"(section '{other[2]}', option '{other[3]}') would both be the firewall "
                                  f"section wgagent_fwd_{name}; rename one of the zones")
            names.setdefault(name, (src, dest, z.name, option))
        refs = [("forward_to", r) for r in z.forward_to] + [("forward_from", r) for r in z.forward_from]
        if z.allow_port:
            refs.append(("allow_from", z.allow_from))
        for option, ref in refs:
            if ref not in known:
                warnings.append(f"{path}: section '{z.name}', option '{option}', value '{ref}': not a wgagent "
                                "zone nor lan/wan; it must exist in /etc/config/firewall (checked when written)")
    for n in nats:
        if n.dest and n.dest not in known:
            warnings.append(f"{path}: section '{n.name}', option 'dest', value '{n.dest}': not a wgagent zone "
                            "nor lan/wan; it must exist in /etc/config/firewall (checked when written)")


def _nat(path: str, label: str, values: dict) -> NatConfig:
    try:  # it names the firewall section (wgagent_nat_<label>): a YAML label may hold anything
        uci_name(label)
    except ValueError as e:
        raise ConfigError(path, label, None, None, f"section name: {e}") from None
    if bool(values.get("device")) == bool(values.get("dest")):
        raise ConfigError(path, label, "device", values.get("device"),
                          "set exactly one of 'device' (outgoing device) or 'dest' (outgoing zone)")
    target = values.get("target", "MASQUERADE")
    if target == "SNAT" and not values.get("snat_ip"):
        raise ConfigError(path, label, "snat_ip", None, "target SNAT needs snat_ip")
    if target != "SNAT" and values.get("snat_ip"):
        # fw4 drops such a section ("must not use 'snat_ip' for non-snat target")
        raise ConfigError(path, label, "snat_ip", values["snat_ip"], f"snat_ip is only for target SNAT, not {target}")
    family = values.get("family", "ipv4")
    for option in ("src_ip", "snat_ip"):
        v = values.get(option)
        if v and family != "any" and (":" in v) != (family == "ipv6"):
            raise ConfigError(path, label, option, v, f"not an {family} address")
    return NatConfig(name=label, **values)


def _return_path(path: str, label: str, values: dict) -> ReturnPathConfig:
    if bool(values.get("device")) == bool(values.get("network")):
        raise ConfigError(path, label, "device", values.get("device"),
                          "set exactly one of 'device' (a kernel device) or 'network' (a netifd interface)")
    gateways = values.pop("gateway", ())
    families = [":" in g for g in gateways]
    if len(families) != len(set(families)):
        raise ConfigError(path, label, "gateway", list(gateways), "at most one gateway per address family")
    return ReturnPathConfig(name=label, gateways=gateways, **values)


def raw_from_uci(path: str, text_: str, warnings: list[str] | None = None) -> list[RawSection]:
    try:
        sections = uci.parse(text_, path, warnings)
    except uci.UciSyntaxError as e:
        raise ConfigError(path, None, None, None, f"line {e.line}: {str(e).split(': ', 1)[1]}") from None
    return [RawSection(s.type, s.label, dict(s.options)) for s in sections]


def _yaml_scalar(path: str, label: str, option: str, value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    shown = "null" if value is None else value  # YAML's null (ConfigError leaves None out)
    raise ConfigError(path, label, option, shown, "expected a string, a number, a boolean or a list of them")


def raw_from_yaml(path: str, text_: str) -> list[RawSection]:
    import yaml  # only YAML hosts pay for it

    try:
        doc = yaml.safe_load(text_)
    except yaml.YAMLError as e:
        raise ConfigError(path, None, None, None, f"YAML syntax: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(path, None, None, None, "expected a mapping at the top level")
    out: list[RawSection] = []
    for key, body in doc.items():
        if key not in YAML_KEYS:
            raise ConfigError(path, str(key), None, None,
                              "unknown top-level key (expected " + ", ".join(YAML_KEYS) + ")")
        stype, single = YAML_KEYS[key]
        groups = {key: body} if single else body  # YAML names the agent section "agent"
        if groups is None:
            continue
        if not isinstance(groups, dict):
            raise ConfigError(path, str(key), None, None, "expected a mapping")
        for label, opts in groups.items():
            label = str(label)
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise ConfigError(path, label, None, None, "expected a mapping of options")
            options = {str(k): _yaml_scalar(path, label, str(k), v) for k, v in opts.items() if v != ""}
            out.append(RawSection(stype, label, options))
    return out


# far above any real config (10,000 peer sections are ~2 MB): what is larger is not one
MAX_BYTES = 16 << 20


def _read(path: str) -> str:
    """The file's text. Only a regular file is read, and at most MAX_BYTES of it: a
    FIFO in its place would block the daemon's loop in open() until somebody writes
    to it (O_NONBLOCK: the open returns at once, and the type check refuses it), and
    /dev/zero or a huge file would be read into memory for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(path, None, None, None, "not a regular file")
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, None, None, None, f"cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(path, None, None, None, f"larger than {MAX_BYTES >> 20} MiB: not a wgagent config")
    try:  # as open(path, encoding="utf-8").read() always read it: universal newlines
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, None, f"not UTF-8 text: {e}") from None


def load(path: str, tables: dict[str, int] | None = None, allow_empty: bool = True) -> Config:
    """Read and validate a config file; YAML by extension, UCI otherwise.
    allow_empty=False (a reload): a file without a single section is an error. An
    empty file at start means nothing to do; on a reload it is far more likely a file
    cut short or being written than the wish to drop every route."""
    body = _read(path)
    warnings: list[str] = []
    if path.endswith((".yaml", ".yml")):
        raw = raw_from_yaml(path, body)
    else:
        raw = raw_from_uci(path, body, warnings)
    if not raw and not allow_empty:
        raise ConfigError(path, None, None, None, "no sections (an empty file: cut short, or being written?); "
                          "a config that routes nothing says so with option enabled '0'")
    return build(path, raw, tables, warnings)
