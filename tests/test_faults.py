"""The fault suite: what a router lives with, done to a hub of 1,000 peers, each run
ending with the invariant of tests/hub.py (exactly the desired routes and rules under
protocol 152, each once; everybody else's routes and rules byte-identical; the
firewall's owned sections exact and nothing of ours pending).

    hub namespace: wireguard-go wg0 with 1,000 peers behind bench/uapi_proxy.py,
    lan0 with routes of others, rules of others, the ubus double, wgagent
    (see tests/hub.py for the picture)

Short counts here (`make test`); WGAGENT_FAULTS=full (`make faults`) runs the full
counts that README's "What it survives" reports. Every count and figure is printed
at the end of the run (tests/conftest.py, figures). The torn generic netlink dumps
need kernel WireGuard: tests/test_faults_kernel.py, in the VM.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time

import pytest

from . import lab as lab_mod
from .conftest import _cannot_run
from .daemonctl import wait_for
from .hub import CONFLICT, Hub, allowed

pytestmark = [pytest.mark.root, pytest.mark.faults]

FULL = os.environ.get("WGAGENT_FAULTS") == "full"
YEAR = 365 * 86400.0


def count(short: int, full: int) -> int:
    return full if FULL else short


def p95(values) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def ms(values) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, p95 {p95(values) * 1000:.0f} ms (n={len(values)})"


@pytest.fixture(scope="module")
def hub():
    why = lab_mod.missing_requirements("uapi")
    if why:
        _cannot_run(why)
    with lab_mod.Lab("f") as lab:
        h = Hub(lab)
        try:
            yield h
        finally:
            h.close()


@pytest.fixture
def fresh(hub):
    """The hub with nothing of ours in the kernel (a test's daemon removes its routes on
    SIGTERM; one killed leaves them, and the next test must not adopt them)."""
    hub.mode = "moving"
    hub.settings.clear()
    hub.offset = 0.0
    hub.set_up(())
    for fam in ("-4", "-6"):
        hub.ns.run("ip", fam, "route", "flush", "proto", "152", "table", "all", check=False)
        hub.ns.run("ip", fam, "rule", "flush", "proto", "152", check=False)
    yield hub


def no_crash(agent):
    log = agent.log()
    assert "event=crashed" not in log and "Traceback" not in log, log[-3000:]


# --- kill -9 during applies, then restart


# Runs in the hub's namespace. A line "DELAY" on stdin arms it: it answers "armed",
# and at the first route or rule change with protocol 152 after that (the daemon's
# apply has begun: rtnetlink delivers each change as the kernel makes it) it reads the
# daemon's PID (the next line: the test writes it as soon as the process exists),
# sleeps DELAY seconds, kills PID with SIGKILL and answers "killed". Killing from here,
# not from the test, takes the test's own latency out of the aim.
KILLER = r"""
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)
s.bind((0, (1 << 6) | (1 << 10) | (1 << 7)))  # RTNLGRP_IPV4_ROUTE, IPV6_ROUTE, IPV4_RULE
s.setsockopt(270, 1, 19)  # RTNLGRP_IPV6_RULE


def ours(data):
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16:
            return False
        if mtype in (24, 25) and data[off + 21] == 152:
            return True
        if mtype in (32, 33):
            a = off + 28
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x3FFF == 21 and data[a + 4] == 152:  # FRA_PROTOCOL
                    return True
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return False


for line in sys.stdin:
    delay = float(line)
    while select.select([s], [], [], 0)[0]:
        s.recv(1 << 20)  # what came before: not this apply
    print("armed", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (select.select([s], [], [], 1)[0] and ours(s.recv(1 << 20))):
        pass
    pid = int(sys.stdin.readline())
    if time.monotonic() >= deadline:
        print("no apply", flush=True)
        continue
    time.sleep(delay)
    os.kill(pid, 9)
    print("killed", flush=True)
"""


def tell(proc, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_kill9_at_random_moments_during_applies_then_restart(fresh, figures):
    """Each kill comes at a random moment of an apply of a change of up to 1,000 peers:
    0-20 ms after its first route or rule change reached rtnetlink (the apply's
    batches, of up to 512 routes or rules a datagram, are the moments a kill can fall
    between). Half of them hit a running daemon applying the
    change at its next poll, the other half a daemon that starts into the change (and
    adopts what the dead one left). Each restart must adopt what the dead one left
    and converge."""
    hub = fresh
    n = count(6, 200)
    rng = random.Random(1501)
    killer = hub.ns.popen(sys.executable, "-c", KILLER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    hub.set_up(range(hub.n))
    agent = hub.start(hub.agent("kill9"))
    hub.converge(60)
    times, between = [], 0
    i = 0
    while i < n or (not between and i < 3 * n):  # a few more if none came mid-apply yet
        i += 1
        old = hub.expected()
        if i % 2:
            agent.kill9()  # dead when the peers change: its successor starts into the change
        tell(killer, f"{rng.uniform(0, 0.02)}")
        assert killer.stdout.readline().strip() == "armed"
        hub.set_up(rng.sample(range(hub.n), rng.randint(0, hub.n)))
        new = hub.expected()
        if i % 2:
            hub.start(agent, spawned=lambda pid: tell(killer, str(pid)))
        else:
            tell(killer, str(agent.proc.pid))
        assert killer.stdout.readline().strip() == "killed", "an apply within 30 s"
        agent.proc.wait(10)
        snap = hub.snapshot()
        held = (sorted(snap["routes"]), sorted(snap["rules"]))
        between += held != old and held != new  # the kernel held part of the change
        t0 = time.monotonic()
        hub.start(agent)
        hub.converge(60)
        times.append(time.monotonic() - t0)
    agent.stop()
    killer.stdin.close()
    hub.lab.stop(killer)
    hub.check(up=set())
    no_crash(agent)
    figures("restarts converged", f"{len(times)} of {i}")
    figures("kills that left the kernel holding part of a change", f"{between} of {i}")
    figures("restart (exec) -> invariant holds", ms(times))
    assert len(times) == i and between > 0


# --- netifd: every ip rule flushed, every route of a device flushed


def test_netifd_flushing_every_rule_and_every_route_of_the_device(fresh, figures):
    hub = fresh
    n = count(4, 100)
    hub.set_up(range(0, hub.n, 2))
    agent = hub.start(hub.agent("flush"))
    hub.converge(60)
    rules, routes, both = [], [], []
    for _ in range(n):
        hub.netifd_rules()
        rules.append(hub.converge(10))
        hub.flush_device("wg0")
        routes.append(hub.converge(10))
        hub.netifd_rules()
        hub.flush_device("wg0")
        both.append(hub.converge(10))
    for _ in range(count(5, 50)):  # back to back, as netifd restarting in a loop
        hub.netifd_rules()
        hub.flush_device("wg0")
    burst = hub.converge(10)
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    figures("rules flushed, back", ms(rules))
    figures("wg0's routes flushed, back", ms(routes))
    figures("both, back", ms(both))
    figures(f"{count(5, 50)} flushes back to back, then back", f"{burst * 1000:.0f} ms")


# --- WireGuard interfaces deleted and re-created


def test_the_wireguard_interface_deleted_and_recreated_also_mid_read(fresh, figures):
    """wireguard-go is killed (SIGKILL) or stopped at a random moment, the daemon
    polling every 0.2 s through the proxy, which takes 0.15 s over each answer (pause):
    most deletions fall in the middle of a read, which then describes an interface
    that is gone by the time its routes are applied. It is started again and given its
    1,000 peers while the daemon reads it."""
    hub = fresh
    n = count(3, 30)
    rng = random.Random(1503)
    hub.set_up(range(hub.n), pause=0.15)
    agent = hub.start(hub.agent("recreate", poll=0.2))
    hub.converge(60)
    times = []
    for i in range(n):
        time.sleep(rng.uniform(0, 0.2))
        hub.stop_wireguard(signal.SIGKILL if i % 2 == 0 else signal.SIGTERM)
        time.sleep(rng.uniform(0, 0.5))
        t0 = time.monotonic()
        hub.start_wireguard()
        hub.conflict_route()  # netifd's route_allowed_ips route, on the new wg0
        hub.converge(30)
        times.append(time.monotonic() - t0)
        assert agent.proc.poll() is None, agent.log()[-3000:]
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    unreadable = [e for e in agent.events("interface_unavailable") if "cannot read peers" in e]
    refused = [e for kind in ("route_add_failed", "routes_add_failed", "route_remove_failed",
                              "routes_remove_failed") for e in agent.events(kind)]
    try:
        with open(hub.control + ".outlived") as f:
            outlived = len(f.readlines())
    except FileNotFoundError:
        outlived = 0
    figures("re-creations survived", f"{len(times)} of {n}")
    figures("reads under way when wg0 went (the answer outlived its wireguard-go)", outlived)
    figures("reads that failed (interface_unavailable: cannot read peers)", len(unreadable))
    figures("passes whose read outlived the interface (route changes refused, retried)", len(refused))
    figures("re-created (wireguard-go start + 1,000 peers) -> invariant holds", ms(times))


# --- rtnetlink event overrun


def netlink_drops(pid: int) -> int:
    """Messages the kernel dropped for the process's multicast netlink sockets
    (ENOBUFS), from /proc/PID/net/netlink (the process's network namespace)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    drops = 0
    with open(f"/proc/{pid}/net/netlink") as f:
        header = f.readline().split()
        for line in f:
            row = dict(zip(header, line.split()))
            if row["Inode"] in inodes and int(row["Groups"], 16):
                drops += int(row["Drops"])
    return drops


def test_an_event_overrun_is_a_full_resync_and_nothing_is_missed(fresh, figures):
    """The event socket's buffer made tiny (WGAGENT_EVENTS_RCVBUF); a storm of 20,000
    route changes of another protocol, with owned routes deleted in its middle. Poll
    and resync are 30 s: only the events, lost or not, can bring the routes back."""
    hub = fresh
    n = count(2, 20)
    rng = random.Random(1504)
    hub.set_up(range(hub.n))
    agent = hub.start(hub.agent("enobufs", poll=30), env={"WGAGENT_EVENTS_RCVBUF": "2048"})
    hub.converge(60)
    pid = agent.proc.pid
    times, drops = [], []
    batch = os.path.join(hub.lab.tmp, "storm")
    for i in range(n):
        before = netlink_drops(pid)
        for verb in ("add", "del"):
            # not CONFLICT: its prefix on wg0 is a route of protocol static. No "proto 152"
            # in the batch either: `ip -batch` (iproute2 6.1) then gives later lines'
            # "proto static" routes protocol 152
            victims = rng.sample(sorted(set(range(hub.n)) - {CONFLICT}), 50)
            lines = [f"route {verb} 172.{16 + i % 16}.{k // 256}.{k % 256}/32 dev lan0 table 100 proto static"
                     for k in range(10000)]
            lines[5000:5000] = [f"route del {allowed(v)[0]} dev wg0" for v in victims]
            with open(batch, "w") as f:
                f.write("\n".join(lines) + "\n")
            t0 = time.monotonic()
            hub.ns.run("ip", "-force", "-batch", batch, timeout=120)
            hub.converge(20, foreign=verb == "del")
            times.append(time.monotonic() - t0)
        drops.append(netlink_drops(pid) - before)
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    figures("storms (10,000 route adds, then 10,000 deletes, 50 owned routes deleted inside each)", n)
    figures("events the kernel dropped per storm pair (ENOBUFS)", drops)
    figures("storm start -> invariant holds", ms(times))
    assert all(d > 0 for d in drops), "every storm overran the event socket"
    assert max(times) < 15, "brought back by the events, not by the 30 s resync"


# --- ubusd and rpcd killed during a firewall write


def test_ubusd_and_rpcd_killed_and_restarted_during_a_firewall_write(fresh, figures):
    """The owned sections are removed from /etc/config/firewall (another tool), the
    daemon is told to reload (its firewall thread writes them again: some 15 calls,
    rpcd answering each after 50 ms), and ubusd+rpcd die at a random moment of that
    write and come back. rpcd's restart drops the killed session's staged changes;
    the next write of the daemon's (after its 5 s backoff) puts everything in step."""
    hub = fresh
    n = count(3, 30)
    rng = random.Random(1506)
    hub.set_up(range(0, hub.n, 3))
    hub.kill_bus()
    hub.start_bus(delay=0.05)
    agent = hub.start(hub.agent("bus"))
    hub.converge(60)
    base = open(os.path.join(os.path.dirname(__file__), "data", "firewall.base")).read()
    times, staged = [], 0
    try:
        for _ in range(n):
            with open(os.path.join(hub.confdir, "firewall"), "w") as f:
                f.write(base)
            agent.send(signal.SIGHUP)
            time.sleep(rng.uniform(0.1, 2.0))
            staged += any(os.path.getsize(os.path.join(hub.rpcd_run, d, "firewall"))
                          for d in os.listdir(hub.rpcd_run)
                          if os.path.exists(os.path.join(hub.rpcd_run, d, "firewall")))
            hub.kill_bus()
            time.sleep(rng.uniform(0, 1.0))
            t0 = time.monotonic()
            hub.start_bus(delay=0.05)
            hub.converge(60)
            times.append(time.monotonic() - t0)
    finally:
        if hub.bus.poll() is None:
            hub.kill_bus()
        hub.start_bus()
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    figures("kills of ubusd+rpcd during a firewall write, all converged", f"{len(times)} of {n}")
    figures("kills that found changes of ours staged in rpcd (mid-write)", staged)
    figures("bus back -> firewall in step", ms(times))
    assert staged > 0 or not FULL


# --- the clock stepped by years


# The daemon as `wgagent run` runs it (Runner, rtnetlink events, the firewall thread),
# with its wall clock read from the proxy's control file ("offset=" seconds added to
# time.time()), so that the test steps the daemon's clock and WireGuard's (the
# proxy's) together, as NTP steps a router's. Test-only: the real daemon reads time.time().
CLOCKED = r"""
import os, sys, time
from wgagent import config, log
from wgagent.daemon import Daemon, Runner
from wgagent.rtnl import Rtnl, RtnlEvents
from wgagent.wgsource import PeerSources

control, path = sys.argv[1], sys.argv[2]
seen = [None, 0.0]


def wall():
    mtime = os.stat(control).st_mtime_ns
    if mtime != seen[0]:
        with open(control) as f:
            seen[1] = next((float(l[7:]) for l in f if l.startswith("offset=")), 0.0)
        seen[0] = mtime
    return time.time() + seen[1]


cfg = config.load(path)
log.setup(cfg.agent.log_level, "stderr")
events, rtnl, sources = RtnlEvents(), Rtnl(), PeerSources()
d = Daemon(cfg, rtnl, sources, clock=wall)
d.want_firewall(start=False)
sys.exit(Runner(d, events).run())
"""


def test_the_clock_stepped_forward_and_back_by_years(fresh, figures):
    """mode=real: a handshake keeps the stamp of the moment it happened. After each
    step nothing is withdrawn while the peers keep handshaking; peers that stop are
    withdrawn handshake_timeout after their last handshake on the monotonic clock, not
    at once and not years later; peers that come back are routed at once."""
    hub = fresh
    steps = [10 * YEAR, -20 * YEAR] + ([56 * YEAR, -56 * YEAR, 30 * 86400, -30 * 86400, YEAR, -YEAR] if FULL else [])
    ht, rekey, poll = 6.0, 2.0, 0.5
    rng = random.Random(1507)
    hub.mode = "real"
    hub.set_up(range(hub.n), rekey=rekey)
    agent = hub.agent("clock", poll=poll, handshake_timeout=ht)
    hub.start(agent, command=[sys.executable, "-c", CLOCKED, hub.control])
    hub.converge(60)
    everyone = set(range(hub.n))
    withdrawn = []
    for step in steps:
        removed = len(agent.events("route_removed")) + len(agent.events("routes_removed"))
        hub.offset += step
        hub.set_up(everyone)  # WireGuard's clock steps with the daemon's
        deadline = time.monotonic() + (2 if FULL else 1) * ht
        while time.monotonic() < deadline:
            hub.check(firewall=False)  # not a route withdrawn, not one added twice
            time.sleep(0.25)
        assert len(agent.events("route_removed")) + len(agent.events("routes_removed")) == removed
        gone = set(rng.sample(sorted(everyone), 100))
        t0 = time.monotonic()
        hub.set_up(everyone - gone)
        hub.converge(ht + 10, firewall=False)
        took = time.monotonic() - t0
        withdrawn.append(took)
        assert ht - rekey - poll - 0.5 <= took <= ht + 3 * poll + 2, f"withdrawn {took:.1f} s after they stopped"
        hub.set_up(everyone)
        assert hub.converge(3 * poll + 3) < 3 * poll + 3
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    figures("clock steps (seconds)", ", ".join(f"{s:+.0f}" for s in steps))
    figures(f"peers that stopped, withdrawn after (handshake_timeout {ht:g} s, rekey {rekey:g} s)", ms(withdrawn))


# --- the config file made garbage, then SIGHUP


def garbage_variants(path: str, good: str, rng: random.Random) -> list[tuple[str, object]]:
    """(name, how): how writes the bad file in place of path."""

    def text(body):
        def write():
            with open(path + ".new", "wb") as f:
                f.write(body if isinstance(body, bytes) else body.encode())
            os.replace(path + ".new", path)
        return write

    def replace(make):
        def write():
            os.unlink(path)
            make()
        return write

    cut = good.index("option interface")  # inside a statement
    quote = good.index("'", good.index("public_key")) + 5  # inside a quoted key
    return [
        ("random bytes", text(bytes(rng.randrange(256) for _ in range(4096)))),
        ("random printable text", text("".join(rng.choice("abc '\"\\;#\n\t=.config option") for _ in range(4096)))),
        ("a NUL byte", text(good[:200] + "\0" + good[200:])),
        ("truncated mid-statement", text(good[:cut + 8])),
        ("truncated inside a quote", text(good[:quote])),
        ("truncated to nothing", text("")),
        ("a bad value", text(good.replace("option poll_interval '1.0'", "option poll_interval 'soon'"))),
        ("YAML in a UCI file", text("agent:\n  poll_interval: 1\ninterfaces:\n  wg0: {}\n")),
        ("17 MiB of comments", text("#" * (17 << 20))),
        ("a directory", replace(lambda: os.mkdir(path))),
        ("a dangling symlink", replace(lambda: os.symlink(path + ".nowhere", path))),
        ("deleted", replace(lambda: None)),
        ("a FIFO", replace(lambda: os.mkfifo(path))),
        ("a symlink to /dev/zero", replace(lambda: os.symlink("/dev/zero", path))),
    ]


def restore(path: str, good: str):
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(good)


def test_a_config_made_garbage_truncated_or_unreadable_then_sighup_keeps_the_running_one(fresh, figures):
    hub = fresh
    rounds = count(1, 10)
    rng = random.Random(1508)
    hub.set_up(range(hub.n))
    agent = hub.start(hub.agent("config"))
    hub.converge(60)
    path = agent.config
    with open(path) as f:
        good = f.read()
    tried = 0
    for _ in range(rounds):
        for name, write in garbage_variants(path, good, rng):
            failed = len(agent.events("reload_failed"))
            write()
            agent.send(signal.SIGHUP)
            wait_for(lambda: len(agent.events("reload_failed")) > failed or agent.proc.poll() is not None, 10,
                     what=f"reload_failed for {name}")
            lines = agent.events("reload_failed")[failed:]
            assert len(lines) == 1 and path in lines[0], f"{name}: one error line naming the file: {lines}"
            assert not agent.events("reloaded"), f"{name}: reloaded"
            # the running config stays: it keeps routing the peers as before
            hub.set_up(rng.sample(range(hub.n), rng.randint(0, hub.n)))
            hub.converge(10)
            restore(path, good)
            tried += 1
    agent.send(signal.SIGHUP)
    wait_for(lambda: agent.events("reloaded"), 10, what="the good file reloaded")
    agent.stop()
    hub.check(up=set())
    no_crash(agent)
    figures("bad config files reloaded, each refused with one line, the running config kept", tried)
