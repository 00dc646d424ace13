#!/usr/bin/env python3
"""Where a steady-state cycle's CPU goes, without namespaces: the pure steps of one
poll (UAPI parse, rx history, desired state, route plan, peer-change logging) on a
synthetic wireguard-go answer of N peers, all up, nothing to change.

    .venv/bin/python bench/profile_cycle.py [N] [--cprofile]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wgagent import config as config_mod  # noqa: E402
from wgagent import wg_uapi  # noqa: E402
from wgagent.model import InterfaceState  # noqa: E402
from wgagent.model import Route  # noqa: E402
from wgagent.policy import PlanMemo, desired_state, plan_routes, track_activity  # noqa: E402


def answer(n: int, now: int) -> bytes:
    lines = ["private_key=" + "11" * 32, "listen_port=51820"]
    for i in range(n):
        lines += [f"public_key={os.urandom(32).hex()}", "preshared_key=" + "00" * 32,
                  "protocol_version=1", f"endpoint=192.0.2.{i % 250 + 1}:{1024 + i}",
                  f"last_handshake_time_sec={now - 5}", "last_handshake_time_nsec=0",
                  "tx_bytes=1000", "rx_bytes=2000", "persistent_keepalive_interval=0",
                  f"allowed_ip=10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"]
        if i % 2:
            lines.append(f"allowed_ip=fd77::{i:x}/128")
    return ("\n".join(lines) + "\nerrno=0\n\n").encode()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 10000
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("agent: {poll_interval: 1}\ninterfaces: {wg0: {}}\n")
    config = config_mod.load(f.name, {"main": 254})
    os.unlink(f.name)
    raw = answer(n, int(time.time()))

    memo = PlanMemo()

    def cycle(activity, owned):
        peers = wg_uapi.parse(raw)
        states = [InterfaceState("wg0", "uapi", peers)]
        activity = track_activity(activity, states, time.monotonic())
        desired = desired_state(config, states, time.time(), activity, time.monotonic(), memo)
        plan = plan_routes(set(desired.routes), owned, {}, desired.frozen)
        return activity, desired, plan

    activity, desired, _ = cycle({}, set())
    owned = {Route(*r) for r in desired.routes}  # as read from the kernel: equal, not the same objects
    steps = {}
    for _ in range(5):
        t = time.process_time()
        peers = wg_uapi.parse(raw)
        steps.setdefault("parse", []).append(time.process_time() - t)
        states = [InterfaceState("wg0", "uapi", peers)]
        t = time.process_time()
        activity = track_activity(activity, states, time.monotonic())
        steps.setdefault("track_activity", []).append(time.process_time() - t)
        t = time.process_time()
        desired = desired_state(config, states, time.time(), activity, time.monotonic(), memo)
        steps.setdefault("desired_state", []).append(time.process_time() - t)
        t = time.process_time()
        plan = plan_routes(set(desired.routes), owned, {}, desired.frozen)
        steps.setdefault("plan_routes", []).append(time.process_time() - t)
        assert not plan.add and not plan.delete
    print(f"{n} peers, {len(raw)} bytes of UAPI answer; CPU per step (min of 5):")
    for name, values in steps.items():
        print(f"  {name:16s} {min(values) * 1000:7.1f} ms")
    print(f"  {'total':16s} {sum(min(v) for v in steps.values()) * 1000:7.1f} ms")
    if "--cprofile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        cycle(activity, owned)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
