#!/usr/bin/env python3
"""wgagent benchmarks: convergence, scale and footprint, against hand-written baselines.

Everything runs in network namespaces with real WireGuard (wireguard-go); timings
are medians and p95 over repeated runs, and every figure also stands as a ratio
against a baseline measured in the same run, because the machines are shared.
Writes bench/RESULTS.md. Run as root: `make bench`.

    phone ns (wgc, no keepalive) ── veth ── router ns (wg0 + wgagent)     detection, repair
    router ns: wireguard-go wg0 with N peers (`wg setconf`), and
               bench/uapi_proxy.py at /run/wireguard/wg0.sock serving   scale, footprint
               wireguard-go's answers with chosen peers "handshaken"
"""

from __future__ import annotations

import base64
import datetime
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.daemonctl import Agent, RouteMonitor, wait_for  # noqa: E402
from tests.lab import Lab, genkey  # noqa: E402

QUICK = os.environ.get("WGAGENT_BENCH_QUICK") == "1"
# --kernel: the sections that apply to kernel WireGuard, run inside the test VM by
# `make bench-kernel` (tests/vm/run_vm.py --bench); results to --out PATH
KERNEL = "--kernel" in sys.argv
MESH = "--mesh" in sys.argv  # the many-sites section alone (make bench-mesh)
BACKEND = "kernel" if KERNEL else "uapi"
TRIALS = 8 if QUICK else 30
SIZES = (10, 100, 1000) if QUICK else (10, 100, 1000, 10000)
# the rows measured before the handshake wake-up (issue 16) stay what they were: polling
# alone, every poll_interval; the wake-up's rows say wake '1' themselves
WAKE_OFF = "\toption wake '0'\n"
# the wake-up's rows: the packet socket on, its safety poll every 10 s; poll_interval 10
# too, so that a socket that could not be opened cannot pass for the wake-up
WAKE_ON = "\toption wake '1'\n\toption poll_interval '10'\n"  # 10 s: the default while the wake-up runs
WAKE = "--wake" in sys.argv  # the wake-up's sections alone (make bench-wake)
WAKE_READY = importlib.util.find_spec("wgagent.wake") is not None
WAKE_MISSING = "not measured: wgagent/wake.py is not in this tree"
WAKE_SIZES = (1000,) if QUICK else (1000, 10000)  # peers, for the CPU per hour
RESULTS: list[tuple[str, str, str]] = []  # (measure, value, baseline/ratio)
METRICS: dict[str, float] = {}  # seconds or MB, for the targets table


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(values) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, p95 {pct(values, 0.95) * 1000:.0f} ms (n={len(values)})"


def record(measure: str, value: str, against: str = ""):
    RESULTS.append((measure, value, against))
    print(f"  {measure}: {value}" + (f"   [{against}]" if against else ""), flush=True)


def handshake_time(ns, ifname: str, key_b64: str) -> float:
    """The peer's last handshake with nanoseconds (wg rounds to seconds): from the UAPI
    socket, or from the kernel over generic netlink."""
    if BACKEND == "kernel":
        code = ("import sys; from wgagent.wg_kernel import KernelWireGuard\n"
                "print(next(p.last_handshake for p in KernelWireGuard().read_peers(sys.argv[1])"
                " if p.public_key == sys.argv[2]))")
        return float(ns.run(sys.executable, "-c", code, ifname, key_b64).stdout)
    return uapi_handshake(ns, ifname, key_b64)


def uapi_handshake(ns, ifname: str, key_b64: str) -> float:
    """The peer's last handshake with nanoseconds, from the UAPI socket (wg rounds to seconds)."""
    hexkey = base64.b64decode(key_b64).hex()
    code = (f"import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/wireguard/{ifname}.sock');"
            "s.sendall(b'get=1\\n\\n'); d = b''\n"
            "while not d.endswith(b'\\n\\n'): d += s.recv(65536)\n"
            "print(d.decode())")
    out = ns.run(sys.executable, "-c", code).stdout
    sec = nsec = 0
    current = None
    for line in out.splitlines():
        k, _, v = line.partition("=")
        if k == "public_key":
            current = v
        elif current == hexkey and k == "last_handshake_time_sec":
            sec = int(v)
        elif current == hexkey and k == "last_handshake_time_nsec":
            nsec = int(v)
    return sec + nsec / 1e9


# --- 1-3: detection and repair with one real phone


def detection(lab):
    print(f"\n== connect / leave detection and repair (real handshakes, {BACKEND})", flush=True)
    r, p = lab.netns("r"), lab.netns("p")
    lab.link(r, "eth0", p, "eth0", ["192.0.2.1/24"], ["192.0.2.2/24"])
    rk, pk = genkey(), genkey()
    r.add_wireguard("wg0", BACKEND, rk[0], 51820, ["10.0.31.1/32"])
    p.add_wireguard("wgc", BACKEND, pk[0], None, ["10.0.31.5/32"])
    p.ip("route", "add", "10.0.31.0/24", "dev", "wgc")
    mon = RouteMonitor(r)

    def connect() -> float:
        """The phone starts a fresh session; returns the moment just before its first
        packet (the ping that makes it handshake)."""
        p.run("wg", "set", "wgc", "peer", rk[1], "remove")
        p.wg_peer("wgc", rk[1], ["10.0.31.0/24"], "192.0.2.1:51820")
        first = time.time()
        p.ping("10.0.31.1", count=1, wait=2)
        return first

    for poll in (() if WAKE else (2.0, 0.5)):
        r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
        agent = Agent(lab, r, f"config agent 'main'\n{WAKE_OFF}\toption poll_interval '{poll}'\nconfig interface 'wg0'\n",
                      name=f"det{poll}").start()
        samples, from_first = [], []
        for _ in range(TRIALS):
            r.wg_remove_peer("wg0", pk[1])  # down: the route goes at the next poll
            wait_for(lambda: "10.0.31.5" not in r.ip("route", "show", "proto", "152"), poll * 3 + 5,
                     what="route gone")
            r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
            time.sleep(random.uniform(0, poll))  # the handshake lands anywhere in the poll cycle
            mark = mon.mark()
            first = connect()
            added = mon.wait("add", mark, timeout=poll * 3 + 10)
            samples.append(added - handshake_time(r, "wg0", pk[1]))
            from_first.append(added - first)
        agent.stop()
        METRICS[f"connect_p95_{poll:g}"] = pct(samples, 0.95)
        record(f"connect detection, poll {poll:g} s", summary(samples),
               f"target p95 <= {poll * 1000 + 50:.0f} ms; p95/poll = {pct(samples, 0.95) / poll:.2f}; "
               f"from the phone's first packet: {summary(from_first)}")
    connect_wake(lab, r, p, rk, pk, mon, connect)

    # leave: the handshake ages past handshake_timeout (no traffic, no keepalive); polling
    # every 0.5 s (as before the wake-up), then the wake-up with its 10 s safety poll
    timeout = 3
    r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
    for mode in ("poll", "wake"):
        if mode == "wake" and not WAKE_READY:
            record("leave detection, wake-up + poll 10 s", WAKE_MISSING)
            continue
        agent_opts = (f"{WAKE_OFF}\toption poll_interval '0.5'\n" if mode == "poll" else WAKE_ON)
        agent = Agent(lab, r, f"config agent 'main'\n{agent_opts}\toption handshake_timeout '{timeout}'\n"
                              "config interface 'wg0'\n", name=f"leave-{mode}").start()
        if mode == "wake":
            watching(agent, "wg0:51820")
        samples = []
        for _ in range(TRIALS):
            wait_for(lambda: "10.0.31.5" not in r.ip("route", "show", "proto", "152"), timeout + 15,
                     what="route gone")
            time.sleep(random.uniform(0, 0.5))  # the timeout then falls anywhere in the poll cycle
            mark = mon.mark()
            connect()
            mon.wait("add", mark, timeout=15)
            hs = handshake_time(r, "wg0", pk[1])
            gone = mon.wait("del", mark, timeout=timeout + 15)
            samples.append(gone - (hs + timeout))
        agent.stop()
        METRICS[f"leave_p95_{mode}"] = pct(samples, 0.95)
        if mode == "poll":
            record("leave detection (handshake_timeout crossed -> route gone), poll 0.5 s", summary(samples),
                   f"p95/poll = {pct(samples, 0.95) / 0.5:.2f}")
        else:
            old = METRICS.get("leave_p95_poll")
            record("leave detection (handshake_timeout crossed -> route gone), wake-up + poll 10 s", summary(samples),
                   "target: unchanged or better than polling every 0.5 s"
                   + (f" (p95 {old * 1000:.0f} ms in this run)" if old is not None else ""))
    if WAKE:
        return

    # repair: another process deletes an owned route (poll 30 s: only events can repair it)
    # (the interface's source_table gives the phone a rule too: repair of an owned rule)
    agent = Agent(lab, r, f"config agent 'main'\n{WAKE_OFF}\toption poll_interval '30'\n\toption handshake_timeout '600'\n"
                          "config interface 'wg0'\n\toption source_table '200'\n", name="repair").start()
    connect()
    wait_for(lambda: "10.0.31.5" in r.ip("route", "show", "proto", "152"), 40, what="route")
    samples = []
    for _ in range(TRIALS):
        mark = mon.mark()
        t0 = time.time()
        r.ip("route", "del", "10.0.31.5/32", "dev", "wg0")
        back = mon.wait("add", mark, timeout=10)
        samples.append(back - t0)
    METRICS["repair_p95"] = pct(samples, 0.95)
    record("repair (ip route del by another process -> back)", summary(samples), "target p95 < 1000 ms")
    wait_for(lambda: "from 10.0.31.5 lookup 200" in r.ip("rule", "show", "pref", "5100"), 10, what="rule")
    samples = []
    for _ in range(TRIALS):
        mark = mon.mark()
        t0 = time.time()
        r.ip("rule", "del", "from", "10.0.31.5/32", "lookup", "200", "pref", "5100")
        back = mon.wait("radd", mark, timeout=10)
        samples.append(back - t0)
    agent.stop()
    METRICS["rule_repair_p95"] = pct(samples, 0.95)
    record("repair (ip rule del of an owned source rule by another process -> back)", summary(samples),
           "target p95 < 1000 ms")


def watching(agent: Agent, ports: str, started: bool = True) -> None:
    """The daemon runs the wake-up, its filter on these listen ports (NAME:PORT,...);
    started: it said so at its start (not after a reload that turned it on)."""
    assert not started or "wake=on" in agent.events("started")[-1], agent.log()
    wait_for(lambda: any(f"ports={ports}" in line for line in agent.events("wake_watching")), 15,
             what=f"the wake-up watching {ports}")


def connect_wake(lab, r, p, rk, pk, mon, connect):
    """Connect detection with the handshake wake-up and a 10 s poll. Before each trial
    the phone's peer is removed and a pass asked for (SIGUSR1), which puts the next poll
    10 s away: a route within the second is the wake-up's, not the poll's."""
    if not WAKE_READY:
        record("connect detection, wake-up + poll 10 s", WAKE_MISSING)
        return
    r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
    agent = Agent(lab, r, f"config agent 'main'\n{WAKE_ON}\toption log_level 'debug'\nconfig interface 'wg0'\n",
                  name="detwake").start()
    watching(agent, "wg0:51820")
    samples, from_first, reads, seen = [], [], [], []
    for _ in range(TRIALS):
        r.wg_remove_peer("wg0", pk[1])
        agent.send(signal.SIGUSR1)
        wait_for(lambda: "10.0.31.5" not in r.ip("route", "show", "proto", "152"), 5, what="route gone")
        r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
        time.sleep(random.uniform(0, 1.0))
        mark = mon.mark()
        before = len(agent.events("wake_read")), len(agent.events("handshake_seen"))
        first = connect()
        added = mon.wait("add", mark, timeout=15)
        samples.append(added - handshake_time(r, "wg0", pk[1]))
        from_first.append(added - first)
        time.sleep(0.4)  # the last read a handshake asks for is at +250 ms
        reads.append(len(agent.events("wake_read")) - before[0])
        seen.append(len(agent.events("handshake_seen")) - before[1])
    agent.stop()
    METRICS["connect_p95_wake"], METRICS["connect_first_p95_wake"] = pct(samples, 0.95), pct(from_first, 0.95)
    old = [f"poll {poll:g} s p95 {METRICS[f'connect_p95_{poll:g}'] * 1000:.0f} ms" for poll in (2, 0.5)
           if f"connect_p95_{poll:g}" in METRICS]
    record("connect detection, wake-up + poll 10 s", summary(samples),
           "from the router's handshake, as the rows above" + (f" ({', '.join(old)} in this run)" if old else ""))
    record("connect detection, wake-up + poll 10 s, from the phone's first packet", summary(from_first),
           f"target p95 < 100 ms; per connect: {statistics.median(seen):g} handshake_seen lines "
           f"({min(seen)}-{max(seen)}), {statistics.median(reads):g} wake reads ({min(reads)}-{max(reads)})")


# --- 4-6: scale, footprint, baselines


def keys(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def allowed(i: int) -> list[str]:
    # 1-2 AllowedIPs each, mixed v4/v6
    v4 = f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
    return [v4, f"fd77::{i:x}/128"] if i % 2 else [v4]


class ScaleRouter:
    """A router namespace with wireguard-go holding n peers, wgagent reading it through the proxy."""

    def __init__(self, lab: Lab, n: int):
        self.lab, self.n = lab, n
        self.ns = lab.netns(f"s{n}")
        self.real = os.path.join(lab.tmp, f"real{n}")
        os.makedirs(self.real)
        self.control = os.path.join(lab.tmp, f"up{n}")
        open(self.control, "w").close()
        self.peers = keys(n)
        bind = ["ip", "netns", "exec", self.ns.name, "sh", "-c", 'mount --bind "$0" /run/wireguard && exec "$@"',
                self.real]
        log = open(os.path.join(lab.tmp, f"wggo{n}.log"), "w")
        lab.procs.append(subprocess.Popen(bind + ["wireguard-go", "-f", "wg0"], stdout=log, stderr=log,
                                          env=dict(os.environ, LOG_LEVEL="error")))
        wait_for(lambda: os.path.exists(os.path.join(self.real, "wg0.sock")), 10, what="wireguard-go")
        conf = os.path.join(lab.tmp, f"conf{n}")
        priv = genkey()[0]
        with open(conf, "w") as f:
            self.listen_port = 40000 + n % 1000
            f.write(f"[Interface]\nPrivateKey = {priv}\nListenPort = {self.listen_port}\n\n")
            for i, k in enumerate(self.peers):
                f.write(f"[Peer]\nPublicKey = {base64.b64encode(k).decode()}\nAllowedIPs = {', '.join(allowed(i))}\n\n")
        t = time.monotonic()
        subprocess.run(bind + ["wg", "setconf", "wg0", conf], check=True, timeout=600)
        self.setconf_s = time.monotonic() - t
        self.ns.ip("link", "set", "wg0", "up")
        # wgagent (and the baselines' `wg`) read the proxy, in the namespace's usual /run/wireguard
        lab.procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "uapi_proxy.py"),
                                           os.path.join(self.ns.rundir, "wg0.sock"),
                                           os.path.join(self.real, "wg0.sock"), self.control]))
        wait_for(lambda: os.path.exists(os.path.join(self.ns.rundir, "wg0.sock")), 10, what="proxy")
        self.mon = RouteMonitor(self.ns)

    def set_up(self, indexes, mode: str = "moving", endpoints: dict[int, str] | None = None):
        """These peers up, the others down; mode: how the up peers' counters move
        (uapi_proxy.py); endpoints: the address:port the proxy reports for a peer."""
        endpoints = endpoints or {}
        with open(self.control + ".tmp", "w") as f:
            f.write(f"mode={mode}\n" + "\n".join(f"{self.peers[i].hex()} {endpoints[i]}" if i in endpoints else
                                                  self.peers[i].hex() for i in indexes) + "\n")
        os.replace(self.control + ".tmp", self.control)

    def routes_expected(self, indexes) -> int:
        return sum(len(allowed(i)) for i in indexes)


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process: every thread's run time from schedstat (nanoseconds);
    utime+stime from /proc/PID/stat (10 ms ticks) where schedstat is missing."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except FileNotFoundError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MB
    return 0.0


def children_cpu(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1200)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scale(lab):
    print("\n== scale (wireguard-go with N configured peers; presence served by the UAPI proxy)", flush=True)
    poll = 1.0
    for n in SIZES:
        s = ScaleRouter(lab, n)
        ns = s.ns
        everyone = range(n)
        s.set_up(everyone)
        expected = s.routes_expected(everyone)
        print(f"  [{n} peers: wg setconf took {s.setconf_s:.1f} s]", flush=True)

        # baseline floor: ip -batch adding the same routes
        batch = os.path.join(lab.tmp, f"batch{n}")
        with open(batch, "w") as f:
            for i in everyone:
                for a in allowed(i):
                    f.write(f"route add {a} dev wg0 proto 152\n")
        t = time.monotonic()
        ns.run("ip", "-batch", batch, timeout=600)
        ip_batch = time.monotonic() - t
        ns.run("ip", "route", "flush", "proto", "152")
        ns.run("ip", "-6", "route", "flush", "proto", "152")

        # converge from empty: exec -> every route present
        mark = s.mon.mark()  # the ip -batch events above are not the daemon's (nor, by `after`, any late ones)
        t0 = time.time()
        agent = Agent(lab, ns, f"config agent 'main'\n{WAKE_OFF}\toption poll_interval '{poll}'\n"
                               "config interface 'wg0'\n", name=f"scale{n}").start()
        done = s.mon.wait("add", mark, count=expected, timeout=600, after=t0)
        converge = done - t0
        first = s.mon.wait("add", mark, count=1, after=t0)
        METRICS[f"converge_{n}"], METRICS[f"apply_{n}"], METRICS[f"ip_batch_{n}"] = converge, done - first, ip_batch
        record(f"converge from empty, {n} peers ({expected} routes)",
               f"{converge * 1000:.0f} ms exec->all (first route -> last: {(done - first) * 1000:.0f} ms)",
               f"ip -batch {ip_batch * 1000:.0f} ms; ratio {converge / ip_batch:.1f}x (apply only: "
               f"{(done - first) / ip_batch:.1f}x)")
        pid = agent.proc.pid

        # steady state: CPU per poll cycle with nothing to change, over windows of a few
        # cycles: first with every peer's counters moving at every poll (the worst case),
        # then as a hub of idle keepalive peers would look (a few peers changed per poll)
        windows, per_window = (5, 3) if n <= 1000 else (4, 3)

        def steady() -> list[float]:
            time.sleep(2 * poll)
            samples = []
            for _ in range(windows):
                c0 = proc_cpu(pid)
                time.sleep(per_window * poll)
                samples.append((proc_cpu(pid) - c0) / per_window)
            return samples

        cycle_samples = steady()
        per_cycle = statistics.median(cycle_samples)
        s.set_up(everyone, "keepalive")
        calm_samples = steady()
        calm_cycle = statistics.median(calm_samples)
        s.set_up(everyone)

        # a change of 1% of the peers going down
        down = max(1, n // 100)
        gone_routes = s.routes_expected(range(down))
        mark = s.mon.mark()
        t0 = time.time()
        s.set_up(range(down, n))
        done = s.mon.wait("del", mark, count=gone_routes, timeout=120, after=t0)
        first_gone = s.mon.wait("del", mark, count=1, after=t0)
        change_note = (f"{(done - t0) * 1000:.0f} ms to all removed, incl. waiting for the next poll ({poll:g} s); "
                       f"first -> last removal {(done - first_gone) * 1000:.0f} ms")
        METRICS[f"scale_rss_{n}"] = proc_status(pid, "VmRSS")
        record(f"daemon peak RSS, {n} peers", f"{proc_status(pid, 'VmHWM'):.1f} MB",
               f"idle RSS now {METRICS[f'scale_rss_{n}']:.1f} MB")
        agent.stop()  # its routes go: the baselines start from the same empty table
        s.set_up(everyone)

        # baselines: the careful loop converging (first run), then its steady cycles; the naive loop
        state = os.path.join(lab.tmp, f"careful{n}")
        loop = ns.argv("sh", os.path.join(HERE, "careful_loop.sh"), "wg0")  # ns.argv: its /run/wireguard
        careful_converge, _ = children_cpu(loop + ["1", "0", state])
        careful_samples = [children_cpu(loop + ["1", "0", state])[1] for _ in range(7)]
        careful_cycle = statistics.median(careful_samples)
        METRICS[f"cycle_{n}"], METRICS[f"careful_cycle_{n}"] = per_cycle, careful_cycle
        METRICS[f"calm_cycle_{n}"] = calm_cycle
        METRICS[f"careful_converge_{n}"] = careful_converge
        s.set_up(range(down, n))  # the same 1% change, one careful cycle
        careful_change, _ = children_cpu(loop + ["1", "0", state])
        s.set_up(everyone)
        children_cpu(loop + ["1", "0", state])
        record(f"1% change ({down} peers down), {n} peers", change_note,
               f"careful shell loop: one cycle with the change {careful_change * 1000:.0f} ms")
        record(f"converge from empty, careful shell loop, {n} peers", f"{careful_converge * 1000:.0f} ms",
               f"wgagent/careful = {converge / careful_converge:.2f}")
        if n <= 1000:
            naive_samples = [children_cpu(ns.argv("sh", os.path.join(HERE, "naive_loop.sh"), "wg0", "1", "0"))[1]
                             for _ in range(3)]
            naive_cycle = statistics.median(naive_samples)
            METRICS[f"naive_cycle_{n}"] = naive_cycle
            naive_note = f"; naive loop {naive_cycle * 1000:.0f} ms = {naive_cycle / max(per_cycle, 1e-6):.0f}x wgagent"
        else:
            naive_note = "; naive loop not run at 10,000 (minutes per cycle)"
        record(f"steady-state CPU per cycle, {n} peers, every peer's counters moving",
               f"median {per_cycle * 1000:.1f} ms, p95 {pct(cycle_samples, 0.95) * 1000:.1f} ms "
               f"({windows} windows of {per_window} cycles)",
               f"careful shell loop median {careful_cycle * 1000:.1f} ms, p95 "
               f"{pct(careful_samples, 0.95) * 1000:.1f} ms (n=7; ratio wgagent/careful "
               f"{per_cycle / max(careful_cycle, 1e-6):.2f}){naive_note}")
        record(f"steady-state CPU per cycle, {n} peers, keepalive traffic (~5% of peers changed per poll)",
               f"median {calm_cycle * 1000:.1f} ms, p95 {pct(calm_samples, 0.95) * 1000:.1f} ms "
               f"({windows} windows of {per_window} cycles)",
               f"careful shell loop median {careful_cycle * 1000:.1f} ms (ratio wgagent/careful "
               f"{calm_cycle / max(careful_cycle, 1e-6):.2f})")
        ns.run("ip", "route", "flush", "dev", "wg0")


CYCLES = r"""
import json, statistics, sys, time
from wgagent import config, log
from wgagent.daemon import Daemon, settle_gc
from wgagent.rtnl import Rtnl
from wgagent.wgsource import PeerSources
log.setup("warning", "stderr")
d = Daemon(config.load(sys.argv[1]), Rtnl(), PeerSources())
d.reconcile()
settle_gc()  # as the daemon does after its first reconcile
samples = []
for _ in range(int(sys.argv[2])):
    t = time.process_time()
    d.reconcile()
    samples.append(time.process_time() - t)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
print(json.dumps({"samples": samples, "rss": rss}))
"""


def kernel_scale(lab):
    """Kernel WireGuard cannot be handed fake handshakes, so at scale its peers are all
    down: a steady cycle then is the genl dump, its parse and the decision, with
    nothing to change, against the careful loop doing the same (`wg show dump`).
    Each cycle is timed inside the process (the daemon's own reconcile(), CPU time):
    under emulation a cycle can outlast the poll interval, and CPU over a window of
    polls would then not be per cycle."""
    print("\n== scale, kernel WireGuard (N configured peers, none handshaken)", flush=True)
    for n in (1000,) if QUICK else (1000, 10000):
        ns = lab.netns(f"k{n}")
        ns.add_wireguard("wg0", "kernel", genkey()[0], 42000 + n % 1000)
        conf = os.path.join(lab.tmp, f"kconf{n}")
        with open(conf, "w") as f:
            for i, k in enumerate(keys(n)):
                f.write(f"[Peer]\nPublicKey = {base64.b64encode(k).decode()}\nAllowedIPs = {', '.join(allowed(i))}\n\n")
        ns.run("wg", "addconf", "wg0", conf, timeout=600)
        cfg = os.path.join(lab.tmp, f"kcfg{n}")
        with open(cfg, "w") as f:
            f.write("config interface 'wg0'\n")
        got = json.loads(ns.run(sys.executable, "-c", CYCLES, cfg, "7", timeout=1800).stdout)
        per_cycle = statistics.median(got["samples"])
        state = os.path.join(lab.tmp, f"kcareful{n}")
        loop = ns.argv("sh", os.path.join(HERE, "careful_loop.sh"), "wg0")
        # its previous cycle recorded without its first run: that run would `ip route
        # del` every down peer's AllowedIPs, 20,000 execs at 10,000 peers, which under
        # TCG alone outlasts the bench
        subprocess.run(["env", "SEED=1", *loop, "1", "0", state], check=True, timeout=1200)
        careful = [children_cpu(loop + ["1", "0", state])[1] for _ in range(7)]
        careful_cycle = statistics.median(careful)
        METRICS[f"cycle_{n}"], METRICS[f"careful_cycle_{n}"] = per_cycle, careful_cycle
        record(f"steady-state CPU per cycle, {n} peers (all down)",
               f"median {per_cycle * 1000:.1f} ms, p95 {pct(got['samples'], 0.95) * 1000:.1f} ms (n=7, "
               f"timed in-process)",
               f"careful shell loop median {careful_cycle * 1000:.1f} ms (n=7; ratio wgagent/careful "
               f"{per_cycle / max(careful_cycle, 1e-6):.2f}); RSS after the cycles {got['rss']:.1f} MB")


# --- the handshake wake-up at scale: CPU per hour, and the packet socket's cost to forwarding


# Handshake-shaped traffic as a hub of idle keepalive peers sends it, from a namespace
# beside the router: each peer rekeys every 120 s at the second the proxy's keepalive
# mode gives its handshake (its key's first 4 bytes mod 120, plus a fraction of a second
# from the next 2, so the pairs spread out), as a 148-byte type-1 datagram followed by a
# 92-byte type-2 one, and sends a 32-byte type-4 keepalive every 25 s (the proxy's rx
# phase). Every datagram goes to the router's listen port from the peer's own endpoint,
# 192.0.2.2:(first port + its index): a raw socket writes the UDP header, so that one process can speak from
# 10,000 source ports. Prints what it sent, as JSON.
REKEYS = r"""
import heapq, json, socket, struct, sys, time
dst, dport, first_port, keyfile, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
keys = [bytes.fromhex(line.split()[0]) for line in open(keyfile) if line.strip()]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
INIT, RESP, KEEP = bytes([1, 0, 0, 0]) + bytes(144), bytes([2, 0, 0, 0]) + bytes(88), bytes([4, 0, 0, 0]) + bytes(28)
start = time.time()
due = []  # (when, period, what, port): a heap, so a tick costs the datagrams due, not a scan
for i, k in enumerate(keys):
    phase = int.from_bytes(k[:4], "big") % 120
    for off, period, what in (((phase + int.from_bytes(k[4:6], "big") / 65536) % 120, 120.0, "hs"),
                              (((-phase) % 25 + int.from_bytes(k[6:8], "big") / 65536 * 0.99) % 25, 25.0, "ka")):
        due.append((start + (off - start) % period, period, what, first_port + i))
heapq.heapify(due)
sent = {"hs": 0, "ka": 0, "late_max": 0.0}

def send(port, payload):
    s.sendto(struct.pack("!HHHH", port, dport, 8 + len(payload), 0) + payload, (dst, 0))

while True:
    now = time.time()
    if now - start >= seconds:
        break
    while due[0][0] <= now:
        when, period, what, port = heapq.heappop(due)
        if what == "hs":
            send(port, INIT)
            send(port, RESP)
        else:
            send(port, KEEP)
        sent[what] += 1
        sent["late_max"] = max(sent["late_max"], now - when)
        heapq.heappush(due, (when + period, period, what, port))
    time.sleep(max(0.0, min(due[0][0] - time.time(), 0.05)))
sent["seconds"] = time.time() - start
print(json.dumps(sent), flush=True)
"""


def proxy_gets(s: "ScaleRouter") -> int:
    """The get=1 reads the proxy has answered so far (uapi_proxy.py counts them)."""
    try:
        with open(s.control + ".gets") as f:
            return int(f.read() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def reload_agent(agent: Agent, text: str) -> None:
    said = len(agent.events("reloaded"))
    agent.write_config(text)
    agent.send(signal.SIGHUP)
    wait_for(lambda: len(agent.events("reloaded")) > said, 30, what="reload")


def wake_cpu(lab):
    """The daemon's CPU per hour at 1,000 and 10,000 idle keepalive peers (the proxy's
    keepalive mode): polling every 2 s with the wake-up off, against the wake-up with its
    10 s safety poll, while the peers' rekeys cross the wire at their real rate (REKEYS)
    from the endpoints the proxy reports for them; and the wake-up without that traffic,
    and with the same traffic from endpoints the daemon does not know. One daemon per
    size, its config changed by reload between the windows. Each window starts just
    after a pass that SIGUSR1 asked for, so it holds a whole number of polls."""
    print("\n== the wake-up at scale: CPU per hour, idle keepalive peers (UAPI proxy, rekeys on the wire)",
          flush=True)
    for n in WAKE_SIZES:
        s = ScaleRouter(lab, n)
        g = lab.netns(f"g{n}")
        lab.link(s.ns, "eth0", g, "eth0", ["192.0.2.1/24"], ["192.0.2.2/24"])
        port = s.listen_port
        everyone = range(n)
        s.set_up(everyone, "keepalive", endpoints={i: f"192.0.2.2:{20000 + i}" for i in everyone})
        keyfile = os.path.join(lab.tmp, f"rekeys{n}")
        with open(keyfile, "w") as f:
            f.write("".join(k.hex() + "\n" for k in s.peers))
        print(f"  [{n} peers: wg setconf took {s.setconf_s:.1f} s]", flush=True)
        polling = f"config agent 'main'\n{WAKE_OFF}\toption poll_interval '2'\nconfig interface 'wg0'\n"
        waking = f"config agent 'main'\n{WAKE_ON}config interface 'wg0'\n"
        mark = s.mon.mark()
        agent = Agent(lab, s.ns, polling, name=f"wakecpu{n}").start()
        s.mon.wait("add", mark, count=s.routes_expected(everyone), timeout=600)
        pid = agent.proc.pid
        quick = 10 if QUICK else None

        def window(seconds: float, first_port: int | None) -> dict:
            gen = None
            if first_port is not None:
                gen = g.popen(sys.executable, "-c", REKEYS, "192.0.2.1", str(port), str(first_port), keyfile,
                              str(seconds + 4), stdout=subprocess.PIPE, text=True)
                time.sleep(1.0)
            before = proxy_gets(s)
            agent.send(signal.SIGUSR1)  # a pass now; the next poll a whole interval after it
            wait_for(lambda: proxy_gets(s) > before, 30, what="the pass asked for")
            time.sleep(0.5)
            c0, r0, t0 = proc_cpu(pid), proxy_gets(s), time.monotonic()
            time.sleep(seconds)
            c1, r1, t1 = proc_cpu(pid), proxy_gets(s), time.monotonic()
            out = {"cpu_hour": (c1 - c0) * 3600 / (t1 - t0), "reads": r1 - r0, "seconds": t1 - t0}
            if gen is not None:
                sent = json.loads(gen.communicate(timeout=60)[0].strip().splitlines()[-1])
                out["pairs_per_s"] = sent["hs"] / sent["seconds"]
                out["keepalives_per_s"] = sent["ka"] / sent["seconds"]
            return out

        long = quick or (60 if n >= 10000 else 30)
        a = window(long, 20000)
        if not WAKE_READY:
            agent.stop()
            record(f"CPU per hour, {n} idle keepalive peers, polling every 2 s (wake '0')", f"{a['cpu_hour']:.1f} s",
                   f"{a['reads']} reads in {a['seconds']:.0f} s; {a['pairs_per_s']:.1f} rekey pairs/s on the wire")
            record(f"CPU per hour, {n} idle keepalive peers, wake-up + poll 10 s", WAKE_MISSING)
            continue
        reload_agent(agent, waking)
        watching(agent, f"wg0:{port}", started=False)
        b = window(long, 20000)
        b0 = window(quick or 30, None)
        c = window(quick and 5 or 10, 30000)
        agent.stop()
        METRICS[f"cpu_hour_poll_{n}"], METRICS[f"cpu_hour_wake_{n}"] = a["cpu_hour"], b["cpu_hour"]
        traffic = (f"rekeys on the wire {b['pairs_per_s']:.1f} pairs/s (148 + 92 bytes) and "
                   f"{b['keepalives_per_s']:.0f} keepalives/s (32 bytes)")
        record(f"CPU per hour, {n} idle keepalive peers, polling every 2 s (wake '0')",
               f"{a['cpu_hour']:.1f} s", f"{a['reads']} reads in {a['seconds']:.0f} s; the same rekey traffic")
        record(f"CPU per hour, {n} idle keepalive peers, wake-up + poll 10 s, rekeys from the peers' endpoints",
               f"{b['cpu_hour']:.1f} s", f"target >= 5x less than polling every 2 s: {a['cpu_hour'] / b['cpu_hour']:.1f}x "
               f"less; {b['reads']} reads in {b['seconds']:.0f} s; {traffic}")
        record(f"CPU per hour, {n} idle keepalive peers, wake-up + poll 10 s, no handshake traffic",
               f"{b0['cpu_hour']:.1f} s", f"{b0['reads']} reads in {b0['seconds']:.0f} s; the traffic's share above: "
               f"{b['cpu_hour'] - b0['cpu_hour']:+.1f} s per hour")
        record(f"CPU per hour, {n} idle keepalive peers, wake-up + poll 10 s, the same rekeys from endpoints "
               "the daemon does not know", f"{c['cpu_hour']:.1f} s",
               f"{c['reads']} reads in {c['seconds']:.0f} s ({c['reads'] / c['seconds']:.1f} a second; "
               f"{c['pairs_per_s']:.1f} pairs/s)")
        s.ns.run("ip", "route", "flush", "dev", "wg0")
        s.ns.run("ip", "-6", "route", "flush", "dev", "wg0")


def packet_sockets(ns) -> int:
    """Packet sockets open in the namespace (/proc/net/packet, less its header)."""
    return len(ns.run("cat", "/proc/net/packet").stdout.strip().splitlines()) - 1


def cpu_stat() -> tuple[int, int]:
    """The machine's (busy, softirq) jiffies so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6], v[6]  # user nice system irq softirq


def forwarding(lab):
    """iperf3 from a client namespace through a router namespace to a server namespace
    (veths), the router running wireguard-go (wg0, listen port 51820) and wgagent:
    with the wake-up's packet socket open, and with wake '0' (the same daemon, reloaded
    between runs, the socket's presence checked in /proc/net/packet), interleaved."""
    print("\n== the packet socket's cost to forwarding (iperf3 through a router namespace)", flush=True)
    if shutil.which("iperf3") is None:
        record("forwarding with the wake-up's packet socket", "not measured: needs iperf3 (apt-get install iperf3)")
        return
    if not WAKE_READY:
        record("forwarding with the wake-up's packet socket", WAKE_MISSING)
        return
    c, r, sv = lab.netns("fc"), lab.netns("fr"), lab.netns("fs")
    lab.link(c, "eth0", r, "eth0", ["198.51.100.2/24"], ["198.51.100.1/24"])
    lab.link(r, "eth1", sv, "eth0", ["203.0.113.1/24"], ["203.0.113.2/24"])
    c.ip("route", "add", "default", "via", "198.51.100.1")
    sv.ip("route", "add", "default", "via", "203.0.113.1")
    rk, pk = genkey(), genkey()
    r.add_wireguard("wg0", "uapi", rk[0], 51820, ["10.0.31.1/32"])
    r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
    sv.popen("iperf3", "-s", "-B", "203.0.113.2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: ":5201" in sv.run("ss", "-ltn").stdout, 10, what="iperf3 server")

    def config(wake: bool) -> str:
        return f"config agent 'main'\n{WAKE_ON if wake else WAKE_OFF}config interface 'wg0'\n"

    agent = Agent(lab, r, config(True), name="fwd").start()
    watching(agent, "wg0:51820")
    assert packet_sockets(r) == 1, r.run("cat", "/proc/net/packet").stdout
    pid, state = agent.proc.pid, True
    seconds = 2 if QUICK else 3
    pairs = 2 if QUICK else 6
    tests = (("TCP", ["-t", str(seconds)], pairs), ("UDP, 64-byte datagrams",
             ["-u", "-b", "0", "-l", "64", "-t", str(seconds)], max(2, pairs - 2)))
    hz = os.sysconf("SC_CLK_TCK")
    for what, args, count in tests:
        runs: list[tuple[bool, dict]] = []
        order = [state, not state, not state, state] * ((count + 1) // 2)  # ABBA: a drift falls on both
        for wake in order[:2 * count]:
            if wake != state:
                reload_agent(agent, config(wake))
                wait_for(lambda: packet_sockets(r) == (1 if wake else 0), 10, what="the packet socket")
                state = wake
                time.sleep(0.5)
            m0, d0 = cpu_stat(), proc_cpu(pid)
            out = json.loads(c.run("iperf3", "-c", "203.0.113.2", *args, "-J", timeout=seconds + 30).stdout)
            m1, d1 = cpu_stat(), proc_cpu(pid)
            end = out["end"]
            if "-u" in args:
                rate = (end["sum"]["packets"] - end["sum"]["lost_packets"]) / end["sum"]["seconds"]
                units = rate * end["sum"]["seconds"] / 1e6  # million datagrams through
            else:
                rate = end["sum_received"]["bits_per_second"]
                units = end["sum_received"]["bytes"] / 1e9  # GB through
            runs.append((wake, {"rate": rate, "daemon_ms": (d1 - d0) * 1000,
                                "busy": (m1[0] - m0[0]) / hz / units, "softirq": (m1[1] - m0[1]) / hz / units}))
        on, off = [x for w, x in runs if w], [x for w, x in runs if not w]
        # each run against the other run of its pair (runs 2k and 2k+1, back to back)
        lost = [1 - (a if wa else b)["rate"] / (b if wa else a)["rate"]
                for (wa, a), (_, b) in zip(runs[0::2], runs[1::2])]
        med = {k: (statistics.median(x[k] for x in on), statistics.median(x[k] for x in off)) for k in on[0]}
        loss = statistics.median(lost)
        unit, per = ("Gbit/s", 1e9) if what == "TCP" else ("k datagrams/s received", 1e3)
        per_what = "GB" if what == "TCP" else "M datagrams"
        METRICS["fwd_loss_tcp" if what == "TCP" else "fwd_loss_udp"] = loss
        record(f"forwarding through the router, iperf3 {what}, wgagent's packet socket open (wake-up on)",
               f"median {med['rate'][0] / per:.2f} {unit} (n={len(on)}, {min(x['rate'] for x in on) / per:.2f}-"
               f"{max(x['rate'] for x in on) / per:.2f})",
               f"wake '0': median {med['rate'][1] / per:.2f} {unit} (n={len(off)}, "
               f"{min(x['rate'] for x in off) / per:.2f}-{max(x['rate'] for x in off) / per:.2f}); "
               f"throughput lost, median of {len(lost)} back-to-back pairs: {loss * 100:+.1f} % "
               f"({min(lost) * 100:+.1f} to {max(lost) * 100:+.1f})" + (" (target < 2 %)" if what == "TCP" else ""))
        record(f"... CPU during those runs ({what})",
               f"daemon {med['daemon_ms'][0]:.1f} ms a run with the socket, {med['daemon_ms'][1]:.1f} ms without",
               f"whole machine (client, router, server: one kernel) per {per_what}: {med['busy'][0]:.2f} s with, "
               f"{med['busy'][1]:.2f} s without; of which softirq {med['softirq'][0]:.2f} s / {med['softirq'][1]:.2f} s")
    agent.stop()


# --- many sites: the hand-off between three routers with BIRD, and BIRD's churn


MOVES = 6 if QUICK else 21  # per poll interval: the phone round op1 -> op2 -> op3 -> op1 ...


def mesh_handoff(lab):
    """The phone moves between the three sites of tests/mesh.py (BIRD 2 with the shipped
    Babel config, wgagent poll 1 s and 2 s, idle_timeout 20 s). Per move, from the
    phone's handshake at the new router (its UAPI last_handshake_time, ns) to when each
    router's kernel routed the phone right again (RouteWatch: wgagent's routes at the new
    router; at the old and the third, none of wgagent's and BIRD's via the tunnel to the
    new one, both families), and to when every LAN host had answers again."""
    from tests.mesh import SITES, Mesh, Pings, RouteWatch, lan4

    print(f"\n== many sites: hand-off between three routers (BIRD 2 + Babel, {BACKEND})", flush=True)
    mesh = Mesh(lab, BACKEND)
    wait_for(lambda: all(mesh.host[i].ping(f"{lan4(j)}.1") for i in SITES for j in SITES), 60, what="Babel")
    watch, pings = RouteWatch(mesh), Pings(mesh)
    polling = mesh.agent_config  # these rows are polling's: the wake-up off (WAKE_OFF)
    mesh.agent_config = lambda *a, **kw: polling(*a, **kw).replace("config agent 'main'\n",
                                                                   "config agent 'main'\n" + WAKE_OFF, 1)
    agents = mesh.start_agents(1.0, 20)
    for poll in (1.0, 2.0):
        for a in agents.values():  # a reload: a restart would forget where the phone moved
            a.write_config(mesh.agent_config(poll, 20))
            a.send(signal.SIGHUP)
        time.sleep(poll)
        mesh.connect(1)
        wait_for(lambda: mesh.holds(1), 10, what="op1 holding the phone")
        times: dict[str, list[float]] = {"new": [], "old": [], "third": [], "reach": []}
        at = 1
        for n in range(MOVES):
            to = at % 3 + 1
            third = 6 - at - to
            time.sleep(random.uniform(0, poll))  # the handshake lands anywhere in the poll cycle
            mesh.connect(to)
            hs = uapi_handshake(mesh.op[to], "wg0", mesh.phone_key[1]) if BACKEND == "uapi" else \
                handshake_time(mesh.op[to], "wg0", mesh.phone_key[1])
            done = {}
            deadline = time.monotonic() + poll + 15
            while time.monotonic() < deadline and len(done) < 4:
                for role, i in (("new", to), ("old", at), ("third", third)):
                    t = watch.settled(i, to, hs)
                    if t is not None and role not in done and time.time() - t > 0.3:  # and stays so
                        done[role] = t - hs
                reached = [pings.answered_since(k, hs) for k in pings.files]
                if all(r is not None for r in reached) and "reach" not in done:
                    done["reach"] = max(reached) - hs
                time.sleep(0.05)
            for role in times:
                if role not in done:
                    raise RuntimeError(f"move {n} op{at} -> op{to}: {role} did not settle:\n{mesh.diagnose()}")
                times[role].append(done[role])
            at = to
            time.sleep(1.0)
        loops = pings.loops()
        for role, what in (("new", "the new router (its wgagent route)"),
                           ("old", "the old router (wgagent's route gone, BIRD's to the new one)"),
                           ("third", "the third router (BIRD's route to the new one)"),
                           ("reach", "every LAN host answered again (IPv4 and IPv6)")):
            METRICS[f"handoff_{role}_p95_{poll:g}"] = pct(times[role], 0.95)
            record(f"hand-off, poll {poll:g} s: {what}", summary(times[role]),
                   f"from the phone's handshake at the new router; {MOVES} moves" +
                   (f"; routing loops seen: {len(loops)}" if role == "reach" else ""))
    for a in agents.values():
        a.stop()
    pings.stop(lab)
    # what the short Babel intervals cost: the site tunnels' traffic with nothing moving
    before = {i: tunnel_bytes(mesh, i) for i in SITES}
    window = 10 if QUICK else 30
    time.sleep(window)
    per_tunnel = [(tunnel_bytes(mesh, i) - before[i]) / window / 2 for i in SITES]  # 2 tunnels per router
    record("Babel on a site tunnel, hello 1 s, update 2 s, nothing moving (3 sites' LANs, no client)",
           f"{statistics.median(per_tunnel):.0f} bytes/s sent per tunnel end, WireGuard overhead included",
           f"over {window} s, the three tunnels' median; BIRD's defaults are hello 4 s, update 16 s")


def tunnel_bytes(mesh, i: int) -> int:
    """Bytes op<i> sent into its site tunnels so far (WireGuard's tx counters)."""
    total = 0
    for line in mesh.op[i].run("wg", "show", "all", "transfer").stdout.splitlines():
        name, _peer, _rx, tx = line.split()
        if name.startswith("wg_s2s"):
            total += int(tx)
    return total


CHURN_CONF = """log "{log}" all;
router id 10.255.0.1;
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol static churn {{
	ipv4;
{routes}
}}
"""


def churn_cpu(lab):
    """wgagent's CPU while BIRD (its kernel protocol) adds and removes 1,000 unrelated
    host routes a second in the main table (a static protocol of 1,000 /32 routes,
    disabled and enabled again every second with birdc), against the same daemon idle
    in the same run. The routes are host routes like a peer's, so the event filter
    decodes each one (the worst case: other prefix lengths are dropped undecoded)."""
    print("\n== events that matter only: wgagent while BIRD churns 1,000 routes a second", flush=True)
    r, p = lab.netns("ch"), lab.netns("chp")
    lab.link(r, "eth0", p, "eth0", ["192.0.2.1/24"], ["192.0.2.2/24"])
    rk, pk = genkey(), genkey()
    r.add_wireguard("wg0", BACKEND, rk[0], 51820, ["10.0.31.1/32"])
    r.wg_peer("wg0", pk[1], ["10.0.31.5/32"])
    p.add_wireguard("wgc", BACKEND, pk[0], None, ["10.0.31.5/32"])
    p.wg_peer("wgc", rk[1], ["10.0.31.0/24"], "192.0.2.1:51820", keepalive=1)
    p.ip("route", "add", "10.0.31.0/24", "dev", "wgc")
    lab.link(r, "churn0", p, "churn1")  # the device BIRD's routes point at
    conf, ctl = os.path.join(lab.tmp, "churn-bird.conf"), os.path.join(lab.tmp, "churn-bird.ctl")
    routes = "\n".join(f'\troute 172.16.{i // 250}.{i % 250 + 1}/32 via "churn0";' for i in range(1000))
    with open(conf, "w") as f:
        f.write(CHURN_CONF.format(log=os.path.join(lab.tmp, "churn-bird.log"), routes=routes))
    bird = r.popen("bird", "-f", "-c", conf, "-s", ctl)
    wait_for(lambda: os.path.exists(ctl), 15, what="bird")
    agent = Agent(lab, r, f"config agent 'main'\n{WAKE_OFF}\toption poll_interval '2'\nconfig interface 'wg0'\n"
                          "\toption metric '1'\n", name="churn").start()
    wait_for(lambda: p.ping("10.0.31.1"), 20, what="the phone's handshake")
    wait_for(lambda: "10.0.31.5" in r.ip("route", "show", "proto", "152"), 10, what="the phone's route")
    window = 20 if QUICK else 60
    time.sleep(2)
    c0 = proc_cpu(agent.proc.pid)
    time.sleep(window)
    idle = (proc_cpu(agent.proc.pid) - c0) * 60 / window
    count = len(r.ip("route", "show", "proto", "bird").splitlines())
    changes = 0
    c0, t0 = proc_cpu(agent.proc.pid), time.monotonic()
    verb = "disable"
    while time.monotonic() - t0 < window:
        tick = time.monotonic()
        r.run("birdc", "-s", ctl, verb, "churn")
        verb = "enable" if verb == "disable" else "disable"
        changes += 1000
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    elapsed = time.monotonic() - t0
    busy = (proc_cpu(agent.proc.pid) - c0) * 60 / elapsed
    assert "10.0.31.5" in r.ip("route", "show", "proto", "152"), "the phone's route stayed"
    lab.stop(bird)
    agent.stop()
    METRICS["churn_cpu"], METRICS["idle_cpu"] = busy, idle
    record("wgagent CPU per minute while BIRD changes 1,000 unrelated host routes a second",
           f"{busy * 1000:.0f} ms", f"idle, same daemon, same run: {idle * 1000:.0f} ms per minute; "
                                     f"{changes / elapsed:.0f} route changes a second ({count} BIRD routes "
                                     f"at the start); poll 2 s, one connected peer")


# what `wgagent run` loads and opens before its first poll (sockets included: an adapter
# may defer its imports to its constructor)
STARTUP = ("import structlog, wgagent.cli, wgagent.daemon, wgagent.log, wgagent.rtnl, wgagent.wgsource\n"
           "r = wgagent.rtnl.Rtnl(); e = wgagent.rtnl.RtnlEvents(); s = wgagent.wgsource.PeerSources()\n"
           "r.close(); e.close(); s.close()")


def footprint(lab):
    print("\n== footprint", flush=True)
    samples = []
    for _ in range(7):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", STARTUP], check=True)
        samples.append(time.monotonic() - t)
    base = []
    for _ in range(7):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.monotonic() - t)
    record("import wgagent (python -c, incl. interpreter start)", summary(samples),
           f"bare interpreter {statistics.median(base) * 1000:.0f} ms; imports add "
           f"{(statistics.median(samples) - statistics.median(base)) * 1000:.0f} ms")
    for n in (0, 1000):
        ns = lab.netns(f"f{n}")
        priv = genkey()[0]
        ns.add_wireguard("wg0", BACKEND, priv, 41000 + n)
        if n:
            conf = os.path.join(lab.tmp, f"fconf{n}")
            with open(conf, "w") as f:
                for i, k in enumerate(keys(n)):
                    f.write(f"[Peer]\nPublicKey = {base64.b64encode(k).decode()}\nAllowedIPs = {allowed(i)[0]}\n\n")
            ns.run("wg", "addconf", "wg0", conf, timeout=300)
        agent = Agent(lab, ns, f"config agent 'main'\n{WAKE_OFF}\toption log_level 'debug'\nconfig interface 'wg0'\n",
                      name=f"foot{n}")
        t = time.monotonic()
        agent.start()
        wait_for(lambda: "interface_found" in agent.log(), 30, what="first reconcile")
        first = time.monotonic() - t
        time.sleep(5)
        METRICS[f"idle_rss_{n}"] = proc_status(agent.proc.pid, "VmRSS")
        record(f"exec -> first reconcile done, {n} peers", f"{first * 1000:.0f} ms",
               f"idle RSS {proc_status(agent.proc.pid, 'VmRSS'):.1f} MB (target <= 35 MB)")
        agent.stop()


# Run inside the router's namespace (the plugin finds the daemon's files by the
# namespace's inode): the plugin as rpcd runs it, and through the double's ubusd+rpcd.
UBUS_CALLS = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from tests import rpcd_plugin as rp
from tests.ubus_double.server import UbusDouble
from tests.ubus_double.wire import request
tmp, run_dir, config, count, down = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "down"
env = rp.plugin_env(tmp, run_dir, config)
out = {}

def plugin(method, stdin):
    t = time.monotonic()
    r = subprocess.run([rp.busybox(), "sh", rp.PLUGIN, "call", method], input=stdin.encode(),
                       capture_output=True, env=env, check=True)
    json.loads(r.stdout)  # rpcd's json-c parse of the answer, roughly
    return time.monotonic() - t, len(r.stdout)

times = [plugin("status", "{}") for _ in range(count)]
out["plugin"] = [t for t, _ in times]
out["bytes"] = times[0][1]
if down:  # the daemon stopped: only the fallback
    print(json.dumps(out))
    sys.exit(0)
out["plugin_peers_wg0"] = [plugin("peers", '{"interface":"wg0"}')[0] for _ in range(max(3, count // 5))]
# the plugin's peak RSS (it and what it runs): GNU time forks it from a small process, where
# getrusage's children figure would count this Python's pages (vfork's borrowed mm)
if os.path.exists("/usr/bin/time"):
    r = subprocess.run(["/usr/bin/time", "-f", "%M", rp.busybox(), "sh", rp.PLUGIN, "call", "status"],
                       input=b"{}", capture_output=True, env=env, check=True)
    out["plugin_maxrss_kb"] = int(r.stderr.decode().split()[-1])
confdir = os.path.join(tmp, "conf")
os.makedirs(confdir, exist_ok=True)
d = UbusDouble(os.path.join(tmp, "bench-ubus.sock"), confdir)
d.load_plugins(rp.plugin_dir(tmp), [rp.busybox(), "sh"], env)
try:
    calls = []
    for _ in range(count):
        t = time.monotonic()
        answer = request(d.path, "wgagent", "status", {})
        calls.append(time.monotonic() - t)
        assert answer["status"] == 0, answer
    out["double"] = calls
    out["running"] = answer["data"]["daemon"]["running"]
    out["peers"] = sum(len(i["peers"]) for i in answer["data"]["interfaces"])
finally:
    d.close()
print(json.dumps(out))
"""


def ubus_object(lab):
    """`ubus call wgagent status` at 1,000 peers (500 up), the plugin under busybox sh,
    and what the object costs in RAM."""
    from tests import rpcd_plugin as rp

    print("\n== ubus object (the rpcd plugin under busybox sh, 1,000 peers, 500 up)", flush=True)
    if rp.busybox() is None:
        record("ubus call wgagent status", "skipped: needs busybox (OpenWrt's shell)")
        return
    n = 1000
    router = ScaleRouter(lab, n)
    router.set_up(range(0, n, 2), mode="calm")
    run_dir = os.path.join(lab.tmp, "ubus-run")
    agent = Agent(lab, router.ns, f"config agent 'main'\n{WAKE_OFF}\toption log_level 'debug'\n\toption poll_interval '1'\n"
                                  "config interface 'wg0'\n", name="ubusobj")
    agent.start(env={"WGAGENT_RUN_DIR": run_dir})
    wait_for(lambda: len(agent.events("route_added")) + len(agent.events("routes_added")) > 0, 60,
             what="the routes of the up peers")
    time.sleep(3)
    published = agent.events("status_published")
    cpu = [float(line.split("cpu_ms=")[1].split()[0]) for line in published]
    size = int(published[-1].split("bytes=")[1].split()[0])
    tmp = os.path.join(lab.tmp, "ubus-bench")
    os.makedirs(tmp, exist_ok=True)
    count = 20 if QUICK else 50
    r = router.ns.run(sys.executable, "-c", UBUS_CALLS, ROOT, tmp, run_dir, agent.config, str(count), "up",
                      timeout=600)
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["running"] and m["peers"] == n, m
    METRICS["ubus_status_p95"] = pct(m["plugin"], 0.95)
    record(f"ubus call wgagent status, {n} peers: the plugin as rpcd runs it (busybox sh + cat, {m['bytes'] // 1024} KiB)",
           summary(m["plugin"]), "target < 50 ms; rpcd's own fork/exec and JSON-to-blobmsg not included")
    record("... through the double's ubusd + rpcd (Python) to the plugin", summary(m["double"]),
           "the double's socket and server threads on top of the plugin")
    record(f"ubus call wgagent peers {{interface: wg0}}, {n} peers (busybox awk)", summary(m["plugin_peers_wg0"]))
    record("publishing the status (daemon's thread CPU per write; on change and every 30 s)",
           f"median {statistics.median(cpu):.1f} ms, max {max(cpu):.1f} ms (n={len(cpu)})",
           f"{size // 1024} KiB in /var/run (tmpfs: RAM)")
    METRICS["ubus_daemon_rss"] = proc_status(agent.proc.pid, "VmRSS")
    record(f"daemon RSS with the object's side (rundir, status, notifiers), {n} peers",
           f"VmRSS {METRICS['ubus_daemon_rss']:.1f} MB, VmHWM {proc_status(agent.proc.pid, 'VmHWM'):.1f} MB",
           "each plugin call: one busybox sh" + (f", peak RSS {m['plugin_maxrss_kb'] / 1024:.1f} MB (GNU time)"
                                                 if "plugin_maxrss_kb" in m else "") + ", gone after")
    agent.stop()
    r = router.ns.run(sys.executable, "-c", UBUS_CALLS, ROOT, tmp, run_dir, agent.config, "3", "down", timeout=600)
    m = json.loads(r.stdout.strip().splitlines()[-1])
    record(f"... while the daemon is down (the plugin runs `wgagent status --ubus`: Python, {n} peers read)",
           summary(m["plugin"]), "answers \"running\": false instead of hanging")
    base = subprocess.run([sys.executable, "-c", "import json, select, socket, threading, time\n"
                           "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    record("what serving the object from a Python process of its own would cost (bare interpreter with "
           "json/socket/threading, idle)", f"VmRSS {int(base) / 1024:.1f} MB", "the plugin's answer costs none of it")


DEFINITIONS = """\
How each figure is taken:

- connect detection: from the peer's handshake time as the router's WireGuard reports
  it (wireguard-go: UAPI last_handshake_time_sec + _nsec; kernel: WGPEER_A_LAST_HANDSHAKE_TIME
  over generic netlink; i.e. when the handshake completed) to the kernel's delivery of the
  RTM_NEWROUTE with protocol 152 to an rtnetlink listener in the router's namespace. The
  phone's handshake is started at a random point of the poll cycle.
- leave detection: from last handshake + handshake_timeout (3 s; the phone sends no traffic
  and has no keepalive, so it does not re-handshake) to the RTM_DELROUTE.
- repair: from just before `ip route del` (or `ip rule del` of the phone's source rule) by
  another process to the RTM_NEWROUTE (RTM_NEWRULE) with protocol 152 (poll interval 30 s:
  only the rtnetlink event can trigger it).
- footprint: RSS from /proc/PID/status (VmRSS, VmHWM for peak) of the daemon process; import
  time is `python -c` importing what `wgagent run` loads before its first poll and opening
  its netlink sockets, against a bare `python -c pass`. Memory per peer: the scale
  section's idle RSS with N peers up (after its steady windows and the 1% change) less
  the footprint section's idle RSS with no peer, over N.
"""

SCALE_DEFINITIONS = {
    "uapi": """\
- scale: wireguard-go really holds the N peers (`wg setconf`); wgagent reads them through
  bench/uapi_proxy.py, which forwards get=1 to wireguard-go and makes chosen peers up.
  Steady state is measured twice: with every up peer's handshake 5 s old at every answer
  and its rx counter growing (every peer's block changes at every poll: the worst case
  for a reader), and as idle keepalive peers look (a re-handshake every 120 s and a
  32-byte keepalive every 25 s per peer, at its own phase). Converge = exec of `wgagent run` to the
  last RTM_NEWROUTE; "apply only" = first to last RTM_NEWROUTE. Steady CPU = the daemon's
  run time from /proc/PID/task/*/schedstat (ns) over windows of 3 poll cycles (poll 1 s),
  per cycle. The careful and naive loops' CPU is their own plus their children's (wg,
  awk, sort, ip; getrusage), per cycle, each loop run for one cycle at a time.
""",
    "kernel": """\
- scale (kernel WireGuard, in the test VM under TCG): the kernel cannot be handed fake
  handshakes, so its N configured peers are all down and a steady cycle is the genl dump,
  its decoding and the decision with nothing to change; each cycle is the daemon's own
  reconcile() timed in-process (CPU time), against the careful loop (`wg show dump`, awk,
  sort, comm; its CPU with its children's) doing the same.
""",
}


WAKE_DEFINITIONS = """
- connect detection with the wake-up (wake '1', poll_interval 10 s (its default while the wake-up runs),
  the rows before it with wake '0'): before each trial the router's peer is removed and
  SIGUSR1 asks for a pass, which takes the route away and puts the next poll 10 s off;
  the phone connects 0-1 s later. Measured from the router's handshake time as above, and
  from the phone's first packet: time.time() just before the phone's `ping` is started
  (so the ping's own exec, a few ms, is counted in) to the RTM_NEWROUTE. The wake reads
  and handshake_seen lines per connect are the daemon's debug lines in the 0.4 s after
  the route. The polling rows give the same from-first-packet figure in their last column.
- leave detection with the wake-up: the leave row above (handshake_timeout 3 s, the phone
  silent), the daemon with wake '1' and a 10 s poll: the pass at the verdict's deadline is
  what removes the route.
- CPU per hour (wake-up): wireguard-go with N peers behind bench/uapi_proxy.py in its
  keepalive mode (every peer up, its handshake moving every 120 s and its rx every 25 s at
  its own phase), each peer's endpoint reported as 192.0.2.2:(20000 + its index). A
  namespace beside the router sends, through a raw socket, what those peers would send at
  those moments: per peer every 120 s a 148-byte type-1 and a 92-byte type-2 datagram (the
  pair of its rekey, here both towards the router's listen port, where wireguard-go drops
  them: their MACs are zeros), and every 25 s a 32-byte type-4 keepalive, each from that
  peer's endpoint, so the daemon sees the rekeys of peers up at known addresses. One daemon
  per N, reloaded between windows: polling every 2 s with wake '0', then the wake-up with
  that traffic, without it, and with the same traffic from ports 30000 + index (endpoints
  the daemon does not know). Each window starts 0.5 s after a pass asked for by SIGUSR1 and
  lasts a whole number of polls (10,000 peers: 60 s, 60 s, 30 s, 10 s; 1,000: 30 s, 30 s,
  30 s, 10 s); CPU = the daemon's schedstat run time over the window, times 3600 / window.
  Reads = get=1 requests the proxy answered in the window (polls, the wake-up's reads and
  deadline passes alike). The proxy's own CPU (it rewrites every answer) is not the
  daemon's and is not counted.
- forwarding: namespaces client -> router -> server over two veth pairs (default offloads:
  TCP crosses as GSO super-packets), the router running wireguard-go (wg0, listen port
  51820, one peer) and wgagent. iperf3 runs of 3 s, alternating ABBA between the daemon
  with its packet socket open (wake '1', the filter on port 51820; one line in the router's
  /proc/net/packet) and the same daemon reloaded with wake '0' (none): TCP, and UDP with
  64-byte datagrams sent as fast as iperf3 can (-b 0; per-packet costs). Throughput is
  iperf3's received figure; "lost" is the median over back-to-back pairs (one run of
  each mode) of 1 - with / without, so that a load changing on the machine falls on both.
  CPU: the daemon's own schedstat run time over the run (what it spent reading the
  socket), and the whole machine's busy and softirq time from /proc/stat per GB (per
  million datagrams) through: the filter runs in softirq, on whichever CPU forwards the
  packet, and client, router and server share one kernel, so the router's softirq cannot
  be told apart from theirs; the difference between the two modes is what the socket added.
"""


NOTES = """\
Where a target is missed, why, and what would close it:

- 10,000 peers converged from empty in < 0.5 s: the kernel work is done well inside it
  (first -> last route is ~0.4x `ip -batch`); what remains is Python's start and
  imports (~0.15 s), reading 10,000 peers through the UAPI proxy (itself Python,
  rewriting 3.6 MB: its time is in this figure, the shell loop pays it too) and the
  first decision for every peer. Closing it would take a leaner first pass (no
  verdicts kept for logging until the routes are in) or a compiled decoder.
- steady CPU at 10,000 peers against the careful shell loop: the shell loop's cost is
  `wg`, awk and sort in C, ~5 us a peer. wgagent keeps per-peer state between polls
  (tracker.py): an unchanged peer costs the parser's memo lookup and one identity
  check, and only the peers whose block changed are decided again, so with keepalive
  traffic most of a pass is the UAPI parser's walk over every block (see NOTES.md).
  With every peer's counters moving every peer is parsed and decided again at each
  poll, ~15 us a peer in Python; closing that would take a compiled decoder and verdict.
- CPU per hour, the wake-up + 10 s poll against polling every 2 s (5x less): with the
  incremental cycle an unchanged peer costs a lookup, so a read's cost is mostly the
  peers whose block changed, and those do not shrink with fewer reads: a keepalive
  every 25 s moves a peer's rx ~144 times an hour whatever the read rate (a read every
  2 s meets ~8% of the blocks changed, every 10 s ~40%). Fewer reads save only the
  unchanged peers' lookups and each read's fixed cost, and the incremental cycle made
  polling itself cheaper (1,000 peers every 2 s: 27.1 s an hour before it). What stays
  whatever the poll: the status published every 30 s (its handshake ages go stale;
  ~230 ms at 10,000 peers, ~18 ms at 1,000), the 30 s resync's route dump, and the
  wake-up's own cost: every rekey on the wire is two packets taken off the socket,
  parsed and named in Python (~160 a second at 10,000 peers), even though the rekey
  of a peer up at its endpoint asks for no read. Closing it would take status ages
  computed by the reader (the document published on change only), a kernel filter
  that drops known peers' rekeys (classic BPF cannot hold a set of endpoints: an eBPF
  map could), and a WireGuard read of the changed peers only, which neither the UAPI
  nor the netlink interface offers.
- memory per peer < 1 KB: the per-peer state the incremental cycle keeps is ~3.3 KB a
  peer by tracemalloc (bench/profile_cycle.py --memory, 10,000 peers): the UAPI
  parser's memo keyed by the peer's block text (~400 B), the Peer tuple with its
  key, endpoint and AllowedIPs strings (~1.1 KB with the memo's share), its routes
  (Route tuples, ~0.5 KB each with the kernel view's entry), and the tracker's record,
  rx/handshake history, plan, verdict and deadline (~730 B); the rest of the RSS per
  peer is the allocator's slack and the peaks of building the status document.
  Closing it needs the state in compact arrays (prefixes as packed integers, one
  fixed record per peer) and a memo keyed by a hash of the block: a new data model.
- forwarding with the packet socket open: the daemon itself spends nothing (the filter
  drops every forwarded packet in the kernel), but an ETH_P_ALL packet socket puts every
  packet of the namespace through the tap (packet_rcv and the filter on receive; on
  transmit a clone of each packet first, dev_queue_xmit_nit), forwarded ones included.
  On 2 shared cores iperf3's runs spread by +-15 % from one to the next: in the runs so
  far the pairs' median was 3-14 % lower with the socket (single pairs from -14 % to
  +27 %), with the machine's CPU per GB within noise. Closing it: a
  socket that leaves outgoing packets alone (PACKET_IGNORE_OUTGOING, bound to ETH_P_IP
  and ETH_P_IPV6, seeing the peers' messages only), or a firewall rule on the listen
  ports (NFLOG), which forwarded traffic never meets.
"""


# the soak writes a file of its own (it takes half an hour, `make bench` does not run it)
SOAK = ("## Soak\n\n30 minutes of 1,000 flapping peers, an owned route deleted every second, memory,\n"
        "descriptors and CPU sampled every 10 s: [SOAK.md](SOAK.md) (`make soak`).\n")


def targets() -> str:
    """The issue's targets against this run's figures."""
    m = METRICS
    rows = []

    def row(target, figure, met):
        rows.append(f"| {target} | {figure} | {'met' if met else 'MISSED'} |\n")

    for poll in (2, 0.5):
        key = f"connect_p95_{poll:g}"
        if key in m:
            row(f"connect detection p95 <= poll + 50 ms (poll {poll:g} s)", f"{m[key] * 1000:.0f} ms",
                m[key] <= poll + 0.05)
    if "connect_first_p95_wake" in m:
        row("connect detection with the wake-up p95 < 100 ms from the phone's first packet (poll 10 s)",
            f"{m['connect_first_p95_wake'] * 1000:.0f} ms", m["connect_first_p95_wake"] < 0.1)
    if "leave_p95_wake" in m and "leave_p95_poll" in m:
        row("leave detection with the wake-up (poll 10 s) p95 unchanged or better than polling every 0.5 s",
            f"{m['leave_p95_wake'] * 1000:.0f} vs {m['leave_p95_poll'] * 1000:.0f} ms",
            m["leave_p95_wake"] <= m["leave_p95_poll"])
    for size in (1000, 10000):
        if f"cpu_hour_wake_{size}" in m:
            ratio = m[f"cpu_hour_poll_{size}"] / max(m[f"cpu_hour_wake_{size}"], 1e-9)
            row(f"CPU per hour, wake-up + poll 10 s >= 5x less than polling every 2 s, {size} idle keepalive peers",
                f"{m[f'cpu_hour_wake_{size}']:.1f} vs {m[f'cpu_hour_poll_{size}']:.1f} s ({ratio:.1f}x less)",
                ratio >= 5)
    if "fwd_loss_tcp" in m:
        row("forwarding (iperf3 TCP) with the packet socket open: < 2 % less throughput",
            f"{m['fwd_loss_tcp'] * 100:+.1f} %", m["fwd_loss_tcp"] < 0.02)
    if "repair_p95" in m:
        row("repair p95 < 1 s (route)", f"{m['repair_p95'] * 1000:.0f} ms", m["repair_p95"] < 1)
    if "rule_repair_p95" in m:
        row("repair p95 < 1 s (rule)", f"{m['rule_repair_p95'] * 1000:.0f} ms", m["rule_repair_p95"] < 1)
    n = max((int(k.split("_")[1]) for k in m if k.startswith("converge_")), default=0)
    if n:
        row(f"{n} peers converged from empty < 0.5 s (exec -> all)", f"{m[f'converge_{n}'] * 1000:.0f} ms",
            m[f"converge_{n}"] < 0.5)
        row(f"... within 10x of ip -batch ({m[f'ip_batch_{n}'] * 1000:.0f} ms), exec -> all / apply only",
            f"{m[f'converge_{n}'] / m[f'ip_batch_{n}']:.1f}x / {m[f'apply_{n}'] / m[f'ip_batch_{n}']:.1f}x",
            m[f"converge_{n}"] <= 10 * m[f"ip_batch_{n}"])
    for size in (1000, 10000):
        for key, what in ((f"cycle_{size}", ", every peer's counters moving"),
                          (f"calm_cycle_{size}", ", keepalive traffic")):
            if key in m:
                ratio = m[key] / max(m[f"careful_cycle_{size}"], 1e-6)
                row(f"steady CPU per cycle <= careful loop, {size} peers{'' if KERNEL else what}",
                    f"{m[key] * 1000:.1f} vs {m[f'careful_cycle_{size}'] * 1000:.1f} ms ({ratio:.2f}x)",
                    ratio <= 1)
    if "naive_cycle_1000" in m:
        ratio = m["naive_cycle_1000"] / max(m["cycle_1000"], 1e-6)
        row("steady CPU >= 100x less than the naive loop, 1000 peers", f"{ratio:.0f}x less", ratio >= 100)
    if "ubus_status_p95" in m:
        row("`ubus call wgagent status` < 50 ms, 1000 peers (the plugin, p95)", f"{m['ubus_status_p95'] * 1000:.0f} ms",
            m["ubus_status_p95"] < 0.05)
    if "idle_rss_0" in m:  # what a peer costs: the scale section's idle RSS over the footprint's with none
        for size in (1000, 10000):
            if f"scale_rss_{size}" in m:
                per = (m[f"scale_rss_{size}"] - m["idle_rss_0"]) * 1024 / size
                row(f"memory per peer < 1 KB, {size} peers up (idle RSS over the daemon with none)",
                    f"{per:.2f} KB ({m[f'scale_rss_{size}']:.1f} against {m['idle_rss_0']:.1f} MB)", per < 1)
    for size in (0, 1000):
        if f"idle_rss_{size}" in m:
            row(f"idle RSS <= 35 MB, {size} peers", f"{m[f'idle_rss_{size}']:.1f} MB", m[f"idle_rss_{size}"] <= 35)
    return "| target | this run | |\n|---|---|---|\n" + "".join(rows)


def machine() -> str:
    import pyroute2

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return (f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"- machine: {os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}, "
            f"pyroute2 {pyroute2.__version__} (tests only: the daemon does not import it), "
            + ("kernel WireGuard, inside the test VM (tests/vm/run_vm.py) under TCG: software emulation makes "
               "every absolute time several times a real machine's; the ratios against the baselines of the same "
               "run are what carries over\n" if KERNEL else "wireguard-go (userspace backend)\n") +
            f"- commit: {commit}\n")


def many_sites() -> None:
    with Lab("e") as lab:
        mesh_handoff(lab)
    with Lab("f") as lab:
        churn_cpu(lab)


def main() -> int:
    if os.geteuid() != 0:
        print("make bench needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    if MESH:
        return mesh_only(started)
    if WAKE:
        return wake_only(started)
    with Lab("b") as lab:
        detection(lab)
    with Lab("c") as lab:
        kernel_scale(lab) if KERNEL else scale(lab)
    with Lab("d") as lab:
        footprint(lab)
    if not KERNEL:
        with Lab("e") as lab:
            ubus_object(lab)
    if not KERNEL:
        wake_sections()
    if not KERNEL and shutil.which("bird"):
        many_sites()
    took = time.monotonic() - started
    table = "| measure | wgagent | baseline, ratio, target |\n|---|---|---|\n" + "".join(
        f"| {m} | {v} | {a} |\n" for m, v, a in RESULTS)
    text = (f"# wgagent benchmark results{' (kernel WireGuard)' if KERNEL else ''}\n\n{machine()}- run time: {took / 60:.1f} min"
            f"{' (quick mode)' if QUICK else ''}\n\n{table}\n## Targets (issues 7 and 16)\n\n{targets()}\n"
            f"{'' if KERNEL else NOTES + chr(10)}## Definitions\n\n{DEFINITIONS}{SCALE_DEFINITIONS[BACKEND]}"
            f"{'' if KERNEL else WAKE_DEFINITIONS}"
            f"{'' if KERNEL else chr(10) + SOAK}")
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.path.join(HERE, "RESULTS.md")
    with open(out, "w") as f:
        f.write(text)
    print("\n" + text)
    return 0


def wake_sections() -> None:
    with Lab("w") as lab:
        wake_cpu(lab)
    with Lab("x") as lab:
        forwarding(lab)


def wake_only(started: float) -> int:
    """`make bench-wake`: the handshake wake-up's rows alone (connect and leave detection
    with the polling rows they are held against, CPU per hour at scale, forwarding),
    into bench/RESULTS-wake.md."""
    with Lab("b") as lab:
        detection(lab)
    wake_sections()
    return section_results("RESULTS-wake.md", "the handshake wake-up", "baseline, ratio, target", started,
                           f"## Targets (issue 16)\n\n{targets()}\n## Definitions\n\n{WAKE_DEFINITIONS.lstrip()}")


def section_results(name: str, title: str, third: str, started: float, tail: str) -> int:
    """A section run alone: its rows and `tail` into bench/NAME."""
    table = f"| measure | wgagent | {third} |\n|---|---|---|\n" + "".join(
        f"| {m} | {v} | {a} |\n" for m, v, a in RESULTS)
    text = (f"# wgagent benchmark results: {title}\n\n{machine()}- run time: "
            f"{(time.monotonic() - started) / 60:.1f} min{' (quick mode)' if QUICK else ''}\n\n{table}\n{tail}")
    with open(os.path.join(HERE, name), "w") as f:
        f.write(text)
    print("\n" + text)
    return 0


def mesh_only(started: float) -> int:
    """`make bench-mesh`: the many-sites section alone, into bench/RESULTS-mesh.md."""
    if not shutil.which("bird"):
        print("bench --mesh needs BIRD 2 (apt-get install bird2)", file=sys.stderr)
        return 2
    many_sites()
    return section_results("RESULTS-mesh.md", "many sites", "how, baseline", started,
                           f"## Definitions\n\n{MESH_DEFINITIONS}")


MESH_DEFINITIONS = """\
- hand-off: three routers of tests/mesh.py (pairwise wireguard-go site tunnels, BIRD 2.0.12
  with examples/bird-babel.conf as shipped: hello 1 s, update 2 s; wgagent with metric 1,
  idle_timeout 20 s). The phone moves round op1 -> op2 -> op3 -> op1 ..., connecting at a
  random point of the new router's poll cycle. Each time is from the phone's handshake at the
  new router (wireguard-go's last_handshake_time, ns) to the rtnetlink event, in that
  router's namespace, after which its kernel routed the phone right for good: the new
  router, wgagent's routes (both families); the old router, wgagent's routes gone and
  BIRD's via the tunnel to the new router; the third router, BIRD's route via that tunnel.
  "every LAN host answered again": the send time of the first ping (every 0.1 s, from each
  LAN host, both families) answered after the last one that was not, the latest host's.
- BIRD's churn: one router namespace, wgagent (poll 2 s) with one connected peer, and a
  BIRD whose static protocol of 1,000 /32 routes (exported to the kernel's main table) is
  disabled and enabled again every second; wgagent's CPU from /proc/PID/task/*/schedstat
  over 60 s, against 60 s of the same daemon idle just before.
"""


if __name__ == "__main__":
    sys.exit(main())
