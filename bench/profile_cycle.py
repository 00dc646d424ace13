#!/usr/bin/env python3
"""Where a steady-state cycle's CPU goes, without namespaces: the pure steps of one
poll (UAPI parse, the per-peer state of tracker.PeerTracker, route plan) on a
synthetic wireguard-go answer of N peers, all up, nothing to change for the routes;
with --whole, the whole of every peer decided at every poll as before the tracker
(policy.track_activity and desired_state); with --daemon, Daemon.reconcile's whole
pass (reporter, rules, plan, event filter) against an in-memory kernel; with
--memory, what the daemon holds per peer (tracemalloc, after the steady cycles).

--changing F: the fraction of peers whose block changes between polls (rx grew, a new
handshake): 1.0 (the default) is the worst case, every peer's counters moving every
poll; on a hub of phones with PersistentKeepalive 25 s polled every 2 s it is ~0.1.

    .venv/bin/python bench/profile_cycle.py [N] [--changing F] [--whole | --daemon] [--memory] [--cprofile]
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import random
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wgagent import config as config_mod  # noqa: E402
from wgagent import wg_uapi  # noqa: E402
from wgagent.daemon import GC_THRESHOLDS  # noqa: E402
from wgagent.model import InterfaceState  # noqa: E402
from wgagent.model import Route  # noqa: E402
from wgagent.policy import PlanMemo, desired_state, plan_routes, track_activity  # noqa: E402
from wgagent.rtnl import Link  # noqa: E402
from wgagent.rtnl_routes import RouteDump  # noqa: E402
from wgagent.tracker import PeerTracker  # noqa: E402


class Answers:
    """wireguard-go's get=1 answer for n peers; next() moves a fraction's counters."""

    def __init__(self, n: int, changing: float):
        now = int(time.time())
        self.changing = changing
        self.head = "private_key=" + "11" * 32 + "\nlisten_port=51820\n"
        self.rx = [2000] * n
        self.fixed = []
        for i in range(n):
            ips = f"allowed_ip=10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32\n"
            if i % 2:
                ips += f"allowed_ip=fd77::{i:x}/128\n"
            self.fixed.append((f"public_key={os.urandom(32).hex()}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
                               f"endpoint=192.0.2.{i % 250 + 1}:{1024 + i}\nlast_handshake_time_sec={now - 5}\n"
                               "last_handshake_time_nsec=0\ntx_bytes=1000\n", f"persistent_keepalive_interval=0\n{ips}"))

    def next(self) -> bytes:
        n = len(self.rx)
        for i in (range(n) if self.changing >= 1 else random.sample(range(n), int(n * self.changing))):
            self.rx[i] += 32
        return (self.head + "".join(f"{a}rx_bytes={rx}\n{b}" for (a, b), rx in zip(self.fixed, self.rx))
                + "errno=0\n\n").encode()


class Kernel:
    """Just enough rtnetlink for Daemon.reconcile: its routes as added, no rules."""

    def __init__(self):
        self.owned: set[Route] = set()

    def links(self):
        return {"wg0": Link(5, "wg0", "wireguard", True)}

    def routes(self, index_to_name):
        return RouteDump(sorted(Route(*r) for r in self.owned), {}, {})  # as read: equal, not the same objects

    def rules(self):
        return []

    def addresses(self, index_to_name):
        return {}

    def apply_routes(self, changes):
        for verb, route, _ in changes:
            (self.owned.add if verb == "add" else self.owned.discard)(route)
        return [0] * len(changes)


class Source:
    def __init__(self):
        self.raw, self.memo = b"", {}

    def read(self, name, link):
        return InterfaceState(name, "uapi", wg_uapi.parse(self.raw, self.memo), listen_port=51820)


def main() -> int:
    args = sys.argv[1:]
    n = int(args[0]) if args and args[0].isdigit() else 10000
    changing = float(args[args.index("--changing") + 1]) if "--changing" in args else 1.0
    mode = "whole" if "--whole" in args else "daemon" if "--daemon" in args else "tracker"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("agent: {poll_interval: 1}\ninterfaces: {wg0: {}}\n")
    config = config_mod.load(f.name, {"main": 254})
    os.unlink(f.name)
    if "--memory" in args:
        tracemalloc.start()
        PeerTracker().poll(config, [InterfaceState("wg0", "uapi", ())], 0.0, 0.0)  # imports and first calls
    before = tracemalloc.get_traced_memory()[0]
    answers = Answers(n, changing)
    memo, uapi_memo, tracker = PlanMemo(), {}, PeerTracker()
    steps: dict[str, list[float]] = {}

    def timed(name, fn, *a):
        t = time.process_time()
        out = fn(*a)
        steps.setdefault(name, []).append(time.process_time() - t)
        return out

    def cycle(activity, owned, raw):
        peers = timed("parse", wg_uapi.parse, raw, uapi_memo)
        states = [InterfaceState("wg0", "uapi", peers)]
        mono = time.monotonic()
        wall = time.time()
        if mode == "whole":
            activity = timed("track_activity", track_activity, activity, states, mono, wall)
            desired = timed("desired_state", desired_state, config, states, wall, activity, mono, memo)
        else:
            desired = timed("tracker.poll", tracker.poll, config, states, wall, mono)
        plan = timed("plan_routes", plan_routes, set(desired.routes), owned, {}, desired.frozen)
        return activity, desired, plan

    if mode == "daemon":
        from wgagent import daemon as daemon_mod, log as log_mod, rundir

        log_mod.setup("warning", "stderr")
        rundir.RUN_DIR = tempfile.mkdtemp()  # the idle file
        source = Source()
        daemon = daemon_mod.Daemon(config, Kernel(), source)
        source.raw = answers.next()
        daemon.reconcile()
        daemon.reconcile()  # the view read back: from here on, nothing to change
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        for _ in range(7):
            source.raw = answers.next()
            timed("reconcile", daemon.reconcile)
        source.raw = daemon.reconciler.rtnl.owned = None  # the bench's answer and kernel, not the daemon's
        held = daemon
    else:
        activity, desired, _ = cycle({}, set(), answers.next())
        owned = {Route(*r) for r in desired.routes}  # as read from the kernel: equal, not the same objects
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)  # as the daemon runs once started
        steps.clear()
        for _ in range(7):
            activity, desired, plan = cycle(activity, owned, answers.next())
            assert not plan.add and not plan.delete
        held = (activity, desired, owned)
    print(f"{n} peers, {changing:g} of them changing per poll, {mode}; CPU per step (median of 7):")
    for name, values in steps.items():
        print(f"  {name:16s} {sorted(values)[3] * 1000:7.1f} ms")
    print(f"  {'total':16s} {sum(sorted(v)[3] for v in steps.values()) * 1000:7.1f} ms")
    if "--memory" in args:
        answers = None  # the synthetic answer's own text is not the daemon's
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - before
        print(f"  held: {size / n:7.0f} bytes per peer (tracemalloc, allocated since the peers came and still "
              f"held: parser memo, Peers, per-peer state, routes, caches, kernel view)")
        if "--top" in args:
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
                print("   ", stat)
    del held
    if "--cprofile" in args and mode != "daemon":
        raw = answers.next()
        prof = cProfile.Profile()
        prof.enable()
        cycle(activity, owned, raw)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
