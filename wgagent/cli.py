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
    """What the kernel holds now, read without the daemon's memory (status.document)."""
    import time

    from . import rundir, status
    from .observer import Observer
    from .policy import desired_rules, desired_state
    from .reporter import read_idle_state, read_moved_state
    from .rtnl import Rtnl
    from .wgsource import PeerSources

    rtnl, sources = Rtnl(), PeerSources()
    try:
        observer = Observer(cfg, rtnl, sources)
        links, states = observer.peers()
        mono, now = time.monotonic(), time.time()
        desired = desired_state(cfg, states, now, {}, mono)
        view = observer.kernel(links, mono)
        problems = desired_rules(cfg, desired, view.paths)
        mesh = _mesh_status(cfg, desired, view, links, sources)
    finally:
        sources.close()
        rtnl.close()
    pid = rundir.running_pid()
    # only the running daemon knows whose rx stopped growing (its idle file), and which
    # peers it holds back because another router claimed them
    doc = status.document(cfg, states, desired, view, problems, age=lambda v: v.handshake_age,
                          idle=read_idle_state(), moved=read_moved_state(), firewall=firewall_status(cfg),
                          daemon=status.daemon_entry(pid is not None, pid, now), mesh=mesh)
    if pid is not None:  # and how it finds handshakes: its published status says
        try:
            how = json.loads(rundir.read(rundir.path("status", ".json"))).get("detection")
        except (OSError, ValueError, AttributeError):
            how = None
        if isinstance(how, dict):
            doc["detection"] = how
    return doc


def _mesh_status(cfg, desired, view, links, sources) -> dict:
    """What `check` can tell about the routing daemons next to wgagent: the WireGuard
    interfaces they route over whose peers' AllowedIPs leave out prefixes of the pool
    (WireGuard's cryptokey routing drops a packet no peer's AllowedIPs take), and
    interfaces whose routes a routing daemon's would win over (policy.outranked)."""
    from .model import AF_INET6, kernel_metric
    from .policy import uncovered

    yields = frozenset().union(*(i.yield_to for i in cfg.interfaces))
    ours = {i.name for i in cfg.interfaces}
    over: dict[str, set[str]] = {}  # device -> the protocols routing over it
    lowest: dict[tuple[int, int], tuple[int, int]] = {}  # (table, family) -> (lowest metric, its protocol)
    for (table, dst, _plen), routes in view.foreign.items():
        family = AF_INET6 if ":" in dst else 2
        for f in routes:
            if f.proto in yields:
                over.setdefault(f.device, set()).add(config_mod.proto_name(f.proto, cfg.protos))
                if f.metric < lowest.get((table, family), (1 << 32, 0))[0]:
                    lowest[(table, family)] = (f.metric, f.proto)
    pool = sorted({ip for v in desired.verdicts for ip in v.peer.allowed_ips if not ip.endswith("/0")})
    tunnels = []
    for name in sorted(over):
        if name in ours or name not in links:
            continue
        state = sources.read(name, links[name])
        if not state.backend:
            continue  # not WireGuard: nothing to tell
        entry = {"name": name, "protocols": sorted(over[name]), "error": state.error or None, "uncovered": []}
        if state.peers is not None:
            entry["peers"] = len(state.peers)
            entry["uncovered"] = uncovered(pool, [ip for p in state.peers for ip in p.allowed_ips])
        tunnels.append(entry)
    metrics = []
    for iface in cfg.interfaces:
        if not iface.yield_to:
            continue
        for family, label in ((2, "IPv4"), (AF_INET6, "IPv6")):
            found = lowest.get((iface.table, family))
            mine = kernel_metric(family, iface.metric)
            if found is not None and found[1] in iface.yield_to and found[0] <= mine:
                metrics.append({"interface": iface.name, "family": label, "metric": mine, "other_metric": found[0],
                                "proto": config_mod.proto_name(found[1], cfg.protos)})
    return {"tunnels": tunnels, "metrics": metrics}


def _print_status(st: dict):
    for entry in st["interfaces"]:
        head = f"interface {entry['name']} ({entry['backend'] or 'not WireGuard'}, table {entry['table']})"
        print(head + (f": {entry['error']}" if entry["error"] else ""))
        if not entry["peers"]:
            print("  no peers")
        for p in entry["peers"]:
            name = p["short_key"] + (f" ({p['description']})" if p["description"] else "")
            age = "never" if p["handshake_age"] is None else f"{p['handshake_age']:.0f}s ago"
            m = p.get("moved")
            if m:
                state = f"moved (claimed by {m['proto']} via {m['gateway'] or '-'} dev {m['device'] or '-'})"
            else:
                state = p["state"] if p["state"] in ("up", "idle") else f"down ({p['reason']})"
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
    d = st["daemon"]
    print(f"daemon: running (pid {d['pid']})" if d["running"] else "daemon: not running")
    how = st.get("detection")
    if how and d["running"]:
        if how["wake"] == "on":
            ports = ", ".join(f"{n}:{p}" for n, p in how["ports"].items()) or "no listen port yet"
            print(f"detection: handshake wake-up ({ports}), safety-net poll every {how['poll_interval']:g} s")
        else:
            why = "off" if how["wake"] == "off" else f"unavailable: {how['error']}"
            print(f"detection: polling every {how['poll_interval']:g} s (wake-up {why})")


def cmd_status(args) -> int:
    cfg = _load(args.config)
    st = gather_status(cfg)
    if args.ubus:
        from . import status

        sys.stdout.write(status.dumps(status.fit(st)))
    elif args.json:
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
        for t in st["mesh"]["tunnels"]:
            if t["uncovered"]:
                shown = ", ".join(t["uncovered"][:5]) + (", ..." if len(t["uncovered"]) > 5 else "")
                print(f"warning: {'/'.join(t['protocols'])} routes over {t['name']}, but no AllowedIPs of its "
                      f"peers cover {shown}: WireGuard drops packets that no peer's AllowedIPs take (give the "
                      f"site tunnel's one peer AllowedIPs 0.0.0.0/0, ::/0)")
        for m in st["mesh"]["metrics"]:
            print(f"warning: interface {m['interface']}: its {m['family']} routes get metric {m['metric']}, not "
                  f"below {m['proto']}'s {m['other_metric']}: a {m['proto']} route for a peer's prefix would win "
                  f"the lookup{' (metric 0 is 1024 in IPv6)' if m['family'] == 'IPv6' else ''}, or replace ours; "
                  f"set option metric below {m['other_metric']} (e.g. '1')")
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
    if client is None:
        return firewall.status_entry(None, error="no ubus here")
    try:
        owned, desired, warnings = firewall.FirewallWriter(client).read(firewall.desired_sections(cfg))
    except OSError as e:
        return firewall.status_entry(client.name, error=str(e))
    return firewall.status_entry(client.name, firewall.section_states(desired, owned, firewall.plan(desired, owned)),
                                 warnings=warnings)


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
    p.add_argument("--ubus", action="store_true", help="JSON in the layout and size of `ubus call wgagent "
                   "status` (the rpcd plugin's answer while the daemon is down)")
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
