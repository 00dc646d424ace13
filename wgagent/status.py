"""The status document: what `wgagent status --json` prints and `ubus call wgagent
status` answers, built by one pure function from what was observed, for the
command (read fresh) and for the daemon (its last pass) alike.

    {"interfaces": [{"name", "backend", "error", "table", "peers": [peer, ...]}],
     "conflicts": [...], "return_paths": [...], "problems": [...], "mesh": {...}?,
     "other_owned_routes": [...], "owned_rules": [...], "firewall": {...}?,
     "daemon": {"running": bool, "pid": int | null, "updated": unix time}}

    peer: {"interface", "public_key", "short_key", "description", "endpoint",
           "handshake_age" (seconds as of "updated"), "up", "reason",
           "state": "up" | "down" | "idle" | "moved", "rx_bytes", "tx_bytes",
           "allowed_ips", "routes", "rules",
           "moved": {"prefix", "proto", "gateway", "device"} | null}

dumps() writes it with each peer on a line of its own, starting with a tab: the rpcd
plugin answers `peers` by picking those lines with awk (it has no JSON parser).

One ubus message holds at most UBUS_MAX_MSGLEN bytes of blobmsg (ubus's
CMakeLists.txt: 1 MiB), and ubusd disconnects a client that sends more
(ubusd_main.c): a status answer that large would cut rpcd off the bus, every one
of its objects with it. fit() therefore drops peers (down ones first) until the
blobmsg encoding (blobmsg_size, as libubox's blobmsg.c lays it out) fits, and says
so in the interface entry ("peers_omitted").
"""

from __future__ import annotations

import json

from . import config as config_mod

UP, DOWN, IDLE, MOVED = "up", "down", "idle", "moved"
UBUS_MAX_MSGLEN = 1048576
# room for the message header, the reply's object id and the data attribute around
# the answer (libubus's UBUS_ATTR_OBJID and UBUS_ATTR_DATA), with margin
BUDGET = UBUS_MAX_MSGLEN - 4096


def peer_state(up: bool, reason: str) -> str:
    """policy's verdict as one word. "moved": the peer connected at another router
    (issue 13's hand-off, reason "moved")."""
    if up:
        return UP
    if reason in (IDLE, MOVED):
        return reason
    return DOWN


def document(cfg, states, desired, view, problems, *, age, idle=frozenset(), moved=None, firewall=None,
             daemon=None, mesh=None) -> dict:
    """states: the InterfaceStates read; desired: policy.Desired; view: the kernel
    as read (KernelView); age(verdict): its handshake age now, or None; idle: (iface,
    key) that the daemon holds idle, for a reader without its rx history; moved:
    (iface, key) -> where it went (reporter.moved_fields) for the peers held back
    because another router claimed them (None: desired.moved's own, the daemon's
    view); firewall: the firewall entry or None; daemon: the "daemon" entry; mesh:
    what check says of the routing daemons beside us, or None."""
    from .policy import conflicting
    from .reporter import moved_fields

    if moved is None:
        moved = {k: moved_fields(m, lambda p: config_mod.proto_name(p, cfg.protos))
                 for k, m in desired.moved.items() if not m.back}
    out = {"interfaces": [], "conflicts": [], "return_paths": [], "problems": list(problems)}
    if mesh is not None:
        out["mesh"] = mesh
    by_iface: dict[str, list] = {}
    for v in desired.verdicts:
        by_iface.setdefault(v.interface, []).append(v)
    for state in states:
        iface = cfg.interface(state.name)
        entry = {"name": state.name, "backend": state.backend or None, "error": state.error or None,
                 "table": config_mod.table_name(iface.table, cfg.tables), "peers": []}
        for v in by_iface.get(state.name, ()):
            up, reason = v.up, v.reason
            key = (v.interface, v.peer.public_key)
            # a peer that moved and then fell idle here is still where it went
            where = moved.get(key) if up or reason in (MOVED, IDLE) else None
            if where is not None:
                up, reason = False, MOVED
            elif up and key in idle:
                up, reason = False, IDLE
            a = age(v)
            entry["peers"].append({
                "interface": v.interface, "public_key": v.peer.public_key, "short_key": v.peer.short_key,
                "description": v.description or None, "endpoint": v.peer.endpoint,
                "handshake_age": None if a is None else round(a, 1),
                "up": up, "reason": reason, "state": peer_state(up, reason),
                "rx_bytes": v.peer.rx_bytes, "tx_bytes": v.peer.tx_bytes,
                "allowed_ips": list(v.peer.allowed_ips),
                "routes": [r.prefix for r in v.routes if r in view.owned],
                "rules": [r.describe() for r in v.rules if r in view.rules],
                "moved": {k: where[k] for k in ("prefix", "proto", "gateway", "device")} if where else None,
            })
        out["interfaces"].append(entry)
    def yield_to(ifname):
        iface = cfg.interface(ifname)
        return iface.yield_to if iface is not None else frozenset()

    held = conflicting({r for v in desired.verdicts for r in v.routes}, view.foreign, yield_to)
    for v in desired.verdicts:
        for r in v.routes:
            proto = held.get(r.slot)
            if proto is not None:
                out["conflicts"].append({"interface": v.interface, "prefix": r.prefix,
                                         "table": config_mod.table_name(r.table, cfg.tables), "proto": proto})
    for rp, p in zip(cfg.return_paths, view.paths):
        who = f"return_path {rp.name}"
        out["return_paths"].append({
            "name": rp.name, "device": p.device or None, "present": p.present, "error": p.error or None,
            "table": config_mod.table_name(rp.table, cfg.tables),
            "addresses": [f"{a}/{n}" for a, n in p.addresses],
            "gateways": list(rp.gateways) or [gw for _, gw in p.learned_gateways],
            "rules": sorted(r.describe() for r, w in desired.rules.items() if w == who and r in view.rules),
            "routes": sorted(f"{r.prefix}" + (f" via {r.gateway}" if r.gateway else "") + f" dev {r.ifname}"
                             for r, w in desired.path_routes.items() if w == who and r in view.owned),
        })
    described = set(desired.routes) | set(desired.path_routes) | {r for v in desired.verdicts for r in v.routes}
    out["other_owned_routes"] = [f"{r.prefix} dev {r.ifname} table {r.table}" for r in sorted(view.owned - described)]
    out["owned_rules"] = sorted(r.describe() for r in view.rules)
    if firewall is not None:
        out["firewall"] = firewall
    out["daemon"] = daemon if daemon is not None else {"running": False, "pid": None, "updated": None}
    return out


def daemon_entry(running: bool, pid: int | None, updated: float) -> dict:
    return {"running": running, "pid": pid if running else None, "updated": int(updated)}


# --- the written form


def dumps(doc: dict) -> str:
    """Compact JSON, each peer on a line of its own starting with a tab (the plugin's
    awk picks them), nothing else on such a line."""
    held = []
    for i, entry in enumerate(doc.get("interfaces", ())):
        held.append(entry["peers"])
        entry["peers"] = f"\0peers{i}\0"
    try:
        text = json.dumps(doc, separators=(",", ":"))
    finally:
        for entry, peers in zip(doc.get("interfaces", ()), held):
            entry["peers"] = peers
    for i, peers in enumerate(held):
        body = "[\n\t" + ",\n\t".join(json.dumps(p, separators=(",", ":")) for p in peers) + "\n]" if peers else "[]"
        text = text.replace(json.dumps(f"\0peers{i}\0"), body, 1)
    return text + "\n"


def blobmsg_size(value, name: str = "") -> int:
    """Bytes of one blobmsg attribute (libubox blobmsg.c, rpcd plugin.c's JSON to
    blob): a 4-byte blob_attr header, the blobmsg_hdr (2-byte name length, the name,
    its NUL) padded to 4, then the payload padded to 4: a string with its NUL, an
    integer as INT32 or INT64, a bool as one byte (u8), a double 8, null none, a
    table or array its members. Names are the document's own keys (ASCII)."""
    return ((4 + ((len(name) + 6) & ~3) + _body(value)) + 3) & ~3


def _body(value) -> int:
    if value.__class__ is str:
        return (len(value) if value.isascii() else len(value.encode())) + 1
    if value is None:
        return 0
    if value is True or value is False:
        return 1
    if value.__class__ is int:
        return 4 if -2147483648 <= value <= 2147483647 else 8
    if value.__class__ is float:
        return 8
    total = 0
    if value.__class__ is dict:
        for k, v in value.items():
            total += ((4 + ((len(k) + 6) & ~3) + _body(v)) + 3) & ~3
    else:
        for v in value:
            total += (8 + _body(v) + 3) & ~3
    return total


def fit(doc: dict, budget: int = BUDGET) -> dict:
    """doc, with peers left out (down ones first, then up ones; from the end of
    the list) until its blobmsg form is at most budget bytes; each interface that
    lost some says how many in "peers_omitted". Each peer is measured once, not the
    whole document per step."""
    entries = doc["interfaces"]
    sizes = [[blobmsg_size(p) for p in e["peers"]] for e in entries]
    # the rest of the document, and each peer's attribute once
    total = blobmsg_size(dict(doc, interfaces=[dict(e, peers=[]) for e in entries])) + sum(map(sum, sizes))
    if total <= budget:
        return doc
    order = sorted(((p["up"], -i, -j) for i, e in enumerate(entries) for j, p in enumerate(e["peers"])))
    drop: set[tuple[int, int]] = set()
    marker = blobmsg_size(0, "peers_omitted")
    marked: set[int] = set()
    for _, mi, mj in order:
        if total <= budget:
            break
        i, j = -mi, -mj
        drop.add((i, j))
        total -= sizes[i][j]
        if i not in marked:
            marked.add(i)
            total += marker
    out = dict(doc, interfaces=[])
    for i, e in enumerate(entries):
        kept = [p for j, p in enumerate(e["peers"]) if (i, j) not in drop]
        entry = dict(e, peers=kept)
        if len(kept) != len(e["peers"]):
            entry["peers_omitted"] = len(e["peers"]) - len(kept)
        out["interfaces"].append(entry)
    return out
