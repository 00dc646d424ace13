#!/usr/bin/env python3
"""The soak: 1,000 flapping peers for 30 minutes, an owned route deleted every second
by another process, and the daemon's memory, descriptors and CPU sampled throughout.
Writes bench/SOAK.md and its figures and samples as bench/SOAK.json (bench/RESULTS.md,
which `make bench` rewrites, links to it).
Run as root: `make soak` (not in CI: it takes the whole half hour).

    hub namespace (tests/hub.py): wireguard-go with 1,000 peers behind
    bench/uapi_proxy.py in mode=real (handshakes stamped when they happen, kept when
    a peer stops, re-made every REKEY seconds while it is up), the ubus double,
    wgagent (poll 1 s), and:
      flapper (this process): every second ~1% of the peers stop or resume
              handshaking, and ~0.5% of the up peers roam to another endpoint
      deleter (a process in the namespace): every second 1-3 random routes with
              protocol 152 deleted (`ip route del` as another tool would)
    sampled every 10 s: VmRSS, open descriptors, CPU time (schedstat) of the daemon

At the end the flapping and deleting stop, the peers settle (handshake_timeout
passes) and the invariant of tests/hub.py is checked.

Usage: soak.py [--minutes M] [--out PATH]   |   soak.py --report SOAK.json [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from run import proc_cpu, proc_status  # noqa: E402  (bench/run.py's readers of /proc)

from tests.hub import Hub  # noqa: E402
from tests.lab import Lab  # noqa: E402

N = 1000
POLL = 1.0
HANDSHAKE_TIMEOUT = 30.0  # peers that stop handshaking leave within half a minute
REKEY = 10.0  # an up peer re-handshakes this often (the proxy's clock)
SAMPLE = 10.0
WARMUP = 60.0  # "flat after the first minute"
FLAP = 0.01  # share of the peers that change each second
ROAM = 0.005  # share of the up peers that move to another endpoint each second

# Runs in the namespace: deletes 1-3 random routes with protocol 152 every second,
# prints how many it deleted when stdin closes.
DELETER = r"""
import random, select, sys
from wgagent.netlink import NetlinkSocket
from wgagent import rtnl_routes
from wgagent.rtnl_links import LINK_DUMP, RTM_GETLINK, decode_link
sock = NetlinkSocket()
deleted = 0
while not select.select([sys.stdin], [], [], 1.0)[0]:
    links = {l.name: l.index for l in sock.dump(RTM_GETLINK, [LINK_DUMP], decode_link, "links")}
    owned = rtnl_routes.dump(sock, {v: k for k, v in links.items()}).owned
    victims = random.sample(owned, min(len(owned), random.randint(1, 3)))
    codes = rtnl_routes.apply(sock, [(rtnl_routes.RTM_DELROUTE, r, links.get(r.ifname, 0)) for r in victims])
    deleted += sum(code == 0 for code in codes)
print(deleted, flush=True)
"""


def fds(pid: int) -> tuple[int, list[str]]:
    """Open descriptors: the least of five looks 0.3 s apart (a UAPI read holds its
    socket for a moment every poll, the firewall thread's `ubus` subprocess a few pipes
    every minute), and what the extra ones of the first look were."""
    looks = []
    for _ in range(5):
        fd_dir = f"/proc/{pid}/fd"
        targets = []
        for fd in os.listdir(fd_dir):
            try:
                targets.append(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                pass
        looks.append(sorted(targets))
        time.sleep(0.3)
    least = min(looks, key=len)
    return len(least), sorted(set(looks[0]) - set(least))


def endpoint(rng: random.Random) -> str:
    return f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}:{rng.randint(1024, 65535)}"


def commit() -> str:
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or os.environ.get("WGAGENT_COMMIT", "unknown")


def soak(minutes: float, out: str) -> int:
    rng = random.Random(15)
    started = datetime.datetime.now(datetime.timezone.utc)
    with Lab("s") as lab:
        hub = Hub(lab, N, poll=POLL, handshake_timeout=HANDSHAKE_TIMEOUT, mode="real")
        up = set(rng.sample(range(N), N // 2))
        endpoints = {i: endpoint(rng) for i in range(N) if rng.random() < 0.5}
        hub.set_up(up, endpoints, rekey=REKEY)
        agent = hub.start(hub.agent("soak"))
        pid = agent.proc.pid
        hub.converge(60)
        deleter = hub.ns.popen(sys.executable, "-c", DELETER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        t0 = time.monotonic()
        cpu0 = proc_cpu(pid)
        samples = []  # (seconds, rss MB, fds, cpu s)
        flaps = roams = 0
        next_sample = t0
        print(f"soak: {minutes:g} min, {N} peers, poll {POLL:g} s, pid {pid}", flush=True)
        while time.monotonic() - t0 < minutes * 60:
            now = time.monotonic()
            if now >= next_sample:
                count, extra = fds(pid)
                samples.append((now - t0, proc_status(pid, "VmRSS"), count, proc_cpu(pid) - cpu0))
                s = samples[-1]
                print(f"  {s[0]:6.0f} s  rss {s[1]:.2f} MB  fds {s[2]}  cpu {s[3]:.1f} s  flaps {flaps} "
                      f"roams {roams}" + (f"  (a moment ago also {', '.join(extra)})" if extra else ""), flush=True)
                next_sample += SAMPLE
            for i in rng.sample(range(N), int(N * FLAP)):
                up.symmetric_difference_update({i})
                flaps += 1
            for i in rng.sample(sorted(up), int(len(up) * ROAM)):
                endpoints[i] = endpoint(rng)
                roams += 1
            hub.set_up(up, endpoints)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            assert agent.proc.poll() is None, agent.log()[-3000:]
        took = time.monotonic() - t0
        cpu = proc_cpu(pid) - cpu0
        deleter.stdin.close()
        deleted = int(deleter.stdout.readline() or 0)
        deleter.wait(10)
        # settle: the peers set down stop handshaking; after handshake_timeout they are gone
        hub.set_up(up, endpoints)
        time.sleep(HANDSHAKE_TIMEOUT + 3 * POLL)
        settle = hub.converge(HANDSHAKE_TIMEOUT + 30)
        problems = hub.problems()
        crashed = "event=crashed" in agent.log()
        agent.stop()
    results = {"date": f"{started:%Y-%m-%d %H:%M UTC}", "commit": commit(), "cores": os.cpu_count(),
               "kernel": platform.release(), "python": platform.python_version(), "minutes": took / 60,
               "flaps": flaps, "roams": roams, "deleted": deleted, "cpu": cpu, "settle": settle,
               "problems": problems, "crashed": crashed, "samples": samples}
    with open(out.replace(".md", ".json"), "w") as f:
        json.dump(results, f, indent=0)
    return report(results, out)


def report(r: dict, out: str) -> int:
    """SOAK.md from a run's results (soak() wrote them to SOAK.json beside it)."""
    samples = r["samples"]
    took, cpu = r["minutes"] * 60, r["cpu"]
    # growth that stays: the last five minutes against the second, each a median (a
    # single sample that is back down 10 s later is a moment's allocation, not a leak)
    base = statistics.median(s[1] for s in samples if WARMUP <= s[0] < 2 * WARMUP)
    end = statistics.median(s[1] for s in samples[-30:])
    growth = end - base
    spikes = [(samples[i][0], samples[i][1]) for i in range(1, len(samples) - 1)
              if samples[i][1] - max(samples[i - 1][1], samples[i + 1][1]) > 0.5]
    after = [s[2] for s in samples if s[0] >= WARMUP]
    usual = statistics.mode(after)
    # constant: the count after the first minute is the count at the end, and no other
    # count lasts two samples in a row (a descriptor that stays would)
    lasting = any(a != usual and a == b for a, b in itertools.pairwise(after))
    constant = after[0] == after[-1] == usual and not lasting
    others = sorted((s[0], s[2]) for s in samples if s[0] >= WARMUP and s[2] != usual)
    ok = not r["problems"] and not r["crashed"] and growth < 1.0 and constant
    rows = "".join(f"| {s[0]:.0f} | {s[1]:.2f} | {s[2]} | {s[3]:.1f} |\n" for s in samples)
    text = f"""# wgagent soak

- date: {r["date"]}; {r["minutes"]:.1f} min; commit {r["commit"]}; machine: {r["cores"]} cores (shared with
  other work), kernel {r["kernel"]}, Python {r["python"]}; wireguard-go behind bench/uapi_proxy.py (mode=real)
- {N} peers, poll {POLL:g} s, handshake_timeout {HANDSHAKE_TIMEOUT:g} s, an up peer re-handshakes every
  {REKEY:g} s; each second {FLAP:.0%} of the peers stop or resume handshaking ({r["flaps"]} flaps in all) and
  {ROAM:.1%} of the up peers roam to another endpoint ({r["roams"]} roams); another process deleted
  {r["deleted"]} owned routes (1-3 a second)
- the daemon also kept its firewall sections (zone, forwardings, rule, NAT) through the ubus double
{"- " + r["note"] + chr(10) if r.get("note") else ""}
| figure | value |
|---|---|
| RSS, median of the second minute | {base:.2f} MB |
| RSS, median of the last five minutes | {end:.2f} MB |
| RSS growth after the first minute | {growth * 1024:+.0f} kB (target < 1 MB) |
| RSS min / max of all samples | {min(s[1] for s in samples):.2f} / {max(s[1] for s in samples):.2f} MB |
| single samples > 0.5 MB above both neighbours (back down 10 s later) | {", ".join(f"{t:.0f} s: {v:.2f} MB" for t, v in spikes) or "none"} |
| open descriptors after the first minute | {usual} in {after.count(usual)} of {len(after)} samples{"; " + ", ".join(f"{c} at {t:.0f} s" for t, c in others) if others else ""} (constant: {"yes" if constant else "no"}) |
| CPU | {cpu:.1f} s in {r["minutes"]:.1f} min = {cpu / took * 3600:.0f} s per hour ({cpu / took:.1%} of one core) |
| settled after the end (invariant holds) | {r["settle"]:.1f} s after handshake_timeout + 3 polls |
| invariant at the end | {"holds" if not r["problems"] else "; ".join(r["problems"])} |
| crashed | {"yes" if r["crashed"] else "no"} |
| result | {"PASS" if ok else "FAIL"} |

How: RSS is VmRSS from /proc/PID/status, one look every {SAMPLE:g} s; descriptors the entries of
/proc/PID/fd{FD_HOW.get(r.get("fd_looks", 5), "")}; CPU the daemon's threads' run time from
/proc/PID/task/*/schedstat. The invariant is tests/hub.py's: exactly the desired routes and rules under
protocol 152, each once; others' routes and rules byte-identical; the firewall's owned sections exact and
nothing of ours pending. The figures and the samples below are SOAK.json's (`soak.py --report SOAK.json`
writes this file again from them).

| seconds | VmRSS MB | fds | CPU s |
|---|---|---|---|
{rows}"""
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 0 if ok else 1


# how descriptors were counted (the first runs took three looks 0.1 s apart)
FD_HOW = {3: " (the least of three looks 0.1 s apart)",
          5: " (the least of five looks 0.3 s apart: a UAPI read holds its socket a moment every poll, the "
             "firewall thread's `ubus` subprocess a few pipes every minute)"}


def main() -> int:
    if os.geteuid() != 0 and "--report" not in sys.argv:
        print("make soak needs root (network namespaces)", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--out", default=os.path.join(HERE, "SOAK.md"))
    p.add_argument("--report", metavar="JSON", help="only write --out again from a run's results")
    a = p.parse_args()
    if a.report:
        with open(a.report) as f:
            return report(json.load(f), a.out)
    return soak(a.minutes, a.out)


if __name__ == "__main__":
    sys.exit(main())
