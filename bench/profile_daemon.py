#!/usr/bin/env python3
"""The daemon under cProfile at scale: N peers in wireguard-go, all up through the
UAPI proxy (as in run.py's scale section), converge, then SECONDS of steady polls.
Prints the top functions by own time and the CPU per steady cycle. Root only.

    .venv/bin/python bench/profile_daemon.py [N] [SECONDS]
"""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import run as bench  # noqa: E402
from tests.lab import Lab  # noqa: E402


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    with Lab("prof") as lab:
        s = bench.ScaleRouter(lab, n)
        s.set_up(range(n))
        config = os.path.join(lab.tmp, "prof.conf")
        with open(config, "w") as f:
            f.write("config agent 'main'\n\toption wake '0'\n\toption poll_interval '1'\n\toption keep_routes_on_stop '1'\n"
                    "config interface 'wg0'\n")
        out = os.path.join(lab.tmp, "prof.out")
        log = open(os.path.join(lab.tmp, "prof.log"), "w")
        mark = s.mon.mark()
        proc = s.ns.popen(sys.executable, "-m", "cProfile", "-o", out, "-m", "wgagent", "run", "--config", config,
                          "--log", "stderr", stdout=log, stderr=subprocess.STDOUT)
        lab.procs.append(proc)
        s.mon.wait("add", mark, count=s.routes_expected(range(n)), timeout=300)
        time.sleep(3)
        c0 = bench.proc_cpu(proc.pid)
        time.sleep(seconds)
        per_cycle = (bench.proc_cpu(proc.pid) - c0) / seconds
        lab.stop(proc)
        print(f"{n} peers: steady CPU per cycle {per_cycle * 1000:.1f} ms (poll 1 s, {seconds:g} s)")
        pstats.Stats(out).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
