"""Command line: `wgagent run | status | check`. The only place that exits the process."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from . import config as config_mod
from . import log as log_mod
from .config import ConfigError

EXIT_OK, EXIT_PROBLEMS, EXIT_CONFIG = 0, 1, 2


def _load(path: str):
    try:
        return config_mod.load(path)
    except ConfigError as e:
        print(f"wgagent: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def cmd_run(args) -> int:
    cfg = _load(args.config)
    log_mod.setup(cfg.agent.log_level, args.log)
    log = log_mod.get()
    for w in cfg.warnings:
        log.warning("config_warning", detail=w)
    from .daemon import Daemon, Pass, Runner
    from .rtnl import RCVBUF, Rtnl, RtnlEvents
    from .wgsource import PeerSources

    # subscribe before the first dump: no change is missed between them. The buffer size
    # from the environment is for the fault tests only (an overrun, ENOBUFS, on demand)
    rcvbuf = os.environ.get("WGAGENT_EVENTS_RCVBUF", "")
    events = RtnlEvents(int(rcvbuf) if rcvbuf.isdigit() and int(rcvbuf) > 0 else RCVBUF)
    rtnl = Rtnl()
    sources = PeerSources()
    daemon = Daemon(cfg, rtnl, sources)
    try:
        if args.once:
            # one whole pass of what `run` does: routes, rules and the firewall
            routed = daemon.reconcile() == Pass.WHOLE
            written = daemon.firewall_once()
            return EXIT_OK if routed and written else EXIT_PROBLEMS
        daemon.want_firewall(start=False)
        if not cfg.agent.enabled:
            log.info("disabled", detail="option enabled '0': owned routes are removed, waiting for a reload")
        return Runner(daemon, events).run()
    except Exception:
        # a programming error: nothing is removed (procd respawns us, and the new
        # process adopts what is there). The traceback goes to the log (syslog:
        # `logread -e wgagent`), once: not to stderr as well, which procd also sends to logread
        log.exception("crashed")
        return EXIT_PROBLEMS
    finally:
        daemon.reporter.idle.remove()  # also after --once or a crash: no daemon is left to mean it
        sources.close()
        rtnl.close()
        events.close()


def gather_status(cfg) -> dict:
    """What the kernel holds now, read without the daemon's memory."""
    import time

    from .observer import Observer
    from .policy import IDLE, desired_rules, desired_state
    from .reporter import read_idle_state
    from .rtnl import Rtnl
    from .wgsource import PeerSources

    rtnl, sources = Rtnl(), PeerSources()
    try:
        observer = Observer(cfg, rtnl, sources)
        links, states = observer.peers()
        mono = time.monotonic()
        desired = desired_state(cfg, states, time.time(), {}, mono)
        view = observer.kernel(links, mono)
        problems = desired_rules(cfg, desired, view.paths)
    finally:
        sources.close()
        rtnl.close()
    idle = read_idle_state()  # only the running daemon knows whose rx stopped growing
    out = {"interfaces": [], "conflicts": [], "return_paths": [], "problems": problems}
    for state in states:
        iface = cfg.interface(state.name)
        entry = {"name": state.name, "backend": state.backend or None, "error": state.error or None,
                 "table": config_mod.table_name(iface.table, cfg.tables), "peers": []}
        for v in desired.verdicts:
            if v.interface != state.name:
                continue
            if v.up and (v.interface, v.peer.public_key) in idle:
                v = v._replace(up=False, reason=IDLE)
            entry["peers"].append({
                "public_key": v.peer.public_key, "short_key": v.peer.short_key,
                "description": v.description or None, "endpoint": v.peer.endpoint,
                "handshake_age": None if v.handshake_age is None else round(v.handshake_age, 1),
                "up": v.up, "reason": v.reason, "rx_bytes": v.peer.rx_bytes, "tx_bytes": v.peer.tx_bytes,
                "allowed_ips": list(v.peer.allowed_ips),
                "routes": [r.prefix for r in v.routes if r in view.owned],
                "rules": [r.describe() for r in v.rules if r in view.rules],
            })
        out["interfaces"].append(entry)
    for v in desired.verdicts:
        for r in v.routes:
            proto = view.foreign.get(r.slot)
            if proto is not None:
                out["conflicts"].append({"interface": v.interface, "prefix": r.prefix,
                                         "table": config_mod.table_name(r.table, cfg.tables), "proto": proto})
    for rp, p in zip(cfg.return_paths, view.paths):
        out["return_paths"].append({
            "name": rp.name, "device": p.device or None, "present": p.present, "error": p.error or None,
            "table": config_mod.table_name(rp.table, cfg.tables),
            "addresses": [f"{a}/{n}" for a, n in p.addresses],
            "gateways": list(rp.gateways) or [gw for _, gw in p.learned_gateways],
            "rules": sorted(r.describe() for r, who in desired.rules.items()
                            if who == f"return_path {rp.name}" and r in view.rules),
            "routes": sorted(f"{r.prefix}" + (f" via {r.gateway}" if r.gateway else "") + f" dev {r.ifname}"
                             for r, who in desired.path_routes.items()
                             if who == f"return_path {rp.name}" and r in view.owned),
        })
    described = set(desired.routes) | set(desired.path_routes) | {r for v in desired.verdicts for r in v.routes}
    out["other_owned_routes"] = [f"{r.prefix} dev {r.ifname} table {r.table}" for r in sorted(view.owned - described)]
    out["owned_rules"] = sorted(r.describe() for r in view.rules)
    fw = firewall_status(cfg)
    if fw is not None:
        out["firewall"] = fw
    return out


def _print_status(st: dict):
    for entry in st["interfaces"]:
        head = f"interface {entry['name']} ({entry['backend'] or 'not WireGuard'}, table {entry['table']})"
        print(head + (f": {entry['error']}" if entry["error"] else ""))
        if not entry["peers"]:
            print("  no peers")
        for p in entry["peers"]:
            name = p["short_key"] + (f" ({p['description']})" if p["description"] else "")
            age = "never" if p["handshake_age"] is None else f"{p['handshake_age']:.0f}s ago"
            state = "up" if p["up"] else f"down ({p['reason']})"
            print(f"  peer {name}  {state}  handshake {age}  endpoint {p['endpoint'] or '-'}")
            print(f"    allowed ips: {', '.join(p['allowed_ips']) or '-'}")
            print(f"    routes:      {', '.join(p['routes']) or '-'}")
            if p["rules"]:
                print(f"    rules:       {'; '.join(p['rules'])}")
    for rp in st["return_paths"]:
        state = "ok" if rp["present"] else f"down: {rp['error']}"
        print(f"return path {rp['name']} (device {rp['device'] or '-'}, table {rp['table']}): {state}")
        print(f"  addresses: {', '.join(rp['addresses']) or '-'}   gateways: {', '.join(rp['gateways']) or '-'}")
        for line in rp["rules"] + rp["routes"]:
            print(f"  {line}")
    for problem in st["problems"]:
        print(f"problem: {problem}")
    fw = st.get("firewall")
    if fw:
        print(f"firewall ({fw['transport'] or 'unavailable'})" + (f": {fw['error']}" if fw["error"] else ""))
        for sec in fw["sections"]:
            print(f"  {sec['type']:<10} {sec['name']:<36} {sec['state']}")
    for c in st["conflicts"]:
        print(f"conflict: {c['prefix']} in table {c['table']} is held by protocol {c['proto']} ({c['interface']})")
    for r in st["other_owned_routes"]:
        print(f"owned route with no configured peer: {r}")


def cmd_status(args) -> int:
    cfg = _load(args.config)
    st = gather_status(cfg)
    if args.json:
        json.dump(st, sys.stdout, indent=2)
        print()
    else:
        _print_status(st)
    return EXIT_OK


def cmd_check(args) -> int:
    cfg = _load(args.config)
    problems = 0
    for w in cfg.warnings:
        print(f"warning: {w}")
    try:
        st = gather_status(cfg)
        for entry in st["interfaces"]:
            if entry["error"] == "interface does not exist":
                print(f"note: interface {entry['name']} does not exist yet; wgagent waits for it")
            elif not entry["backend"]:
                print(f"problem: interface {entry['name']}: {entry['error']}")
                problems += 1
        for c in st["conflicts"]:
            print(f"problem: {c['prefix']} (table {c['table']}, {c['interface']}) is already routed by protocol "
                  f"{c['proto']}; set option route_allowed_ips '0' on the wireguard_{c['interface']} peers "
                  f"in /etc/config/network")
            problems += 1
    except OSError as e:
        print(f"note: kernel state not checked: {e}")
    print(f"{cfg.path}: {'OK' if not problems else f'{problems} problem(s)'}")
    return EXIT_PROBLEMS if problems else EXIT_OK


def cmd_firewall(args) -> int:
    from . import firewall, ubus

    cfg = _load(args.config)
    desired = firewall.desired_sections(cfg)
    if args.print:
        sys.stdout.write(firewall.render(desired))
        return EXIT_OK
    client = ubus.connect(cfg.agent.ubus_socket)
    if client is None:
        print("no ubus here (python3-ubus or the ubus command); `wgagent firewall --print` shows the sections",
              file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        result = firewall.FirewallWriter(client).sync(desired)
    except (firewall.ForeignPending, OSError) as e:
        print(f"firewall not written: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    print("committed: created " + (",".join(result.created) or "-") + "; updated " +
          (",".join(result.updated) or "-") + "; deleted " + (",".join(result.deleted) or "-")
          if result.changed else "in step: nothing written, nothing committed")
    return EXIT_OK


def firewall_status(cfg) -> dict | None:
    """The owned sections and whether they match; None where there is nothing to
    show (no zones or nats configured and no ubus to find leftovers through)."""
    from . import firewall, ubus

    client = ubus.connect(cfg.agent.ubus_socket)
    if client is None and not (cfg.zones or cfg.nats):
        return None
    out = {"transport": None, "sections": [], "error": None}
    if client is None:
        out["error"] = "no ubus here"
        return out
    out["transport"] = client.name
    try:
        owned, desired, out["warnings"] = firewall.FirewallWriter(client).read(firewall.desired_sections(cfg))
    except OSError as e:
        out["error"] = str(e)
        return out
    p = firewall.plan(desired, owned)
    differ = {s.name for s in p.create + p.retype} | {s.name for s, _, _ in p.update}
    for s in desired:
        out["sections"].append({"name": s.name, "type": s.type,
                                "state": "missing" if s.name not in owned else
                                "differs" if s.name in differ else "ok"})
    out["sections"] += [{"name": n, "type": owned[n][0], "state": "stale"} for n in p.delete]
    return out


def default_config() -> str:
    return os.environ.get("WGAGENT_CONFIG", config_mod.DEFAULT_UCI_PATH)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wgagent", description=(
        "Keep routes in step with which WireGuard peers are connected."))
    parser.add_argument("--version", action="version", version=f"wgagent {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def with_config(p):
        p.add_argument("--config", "-c", default=default_config(),
                       help="config file: UCI (default /etc/config/wgagent) or YAML (*.yaml)")
        return p

    p = with_config(sub.add_parser("run", help="run the daemon in the foreground"))
    p.add_argument("--once", action="store_true", help="one pass (routes, rules, firewall) and exit with its status (routes stay)")
    p.add_argument("--log", choices=("auto", "syslog", "stderr"), default="auto",
                   help="where log lines go (auto: syslog if /dev/log exists, else stderr)")
    p.set_defaults(func=cmd_run)
    p = with_config(sub.add_parser("status", help="peers, handshake ages and installed routes"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = with_config(sub.add_parser("check", help="validate the config and report conflicts (exit 1)"))
    p.set_defaults(func=cmd_check)
    p = with_config(sub.add_parser("firewall", help="write the firewall sections now, or --print them"))
    p.add_argument("--print", action="store_true", help="print the sections in UCI syntax, change nothing")
    p.set_defaults(func=cmd_firewall)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
