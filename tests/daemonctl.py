"""Run a real wgagent daemon inside a lab namespace and watch what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from wgagent.model import RTPROT_WGAGENT

from .lab import SLOWDOWN, Lab, Netns

PROTO = str(RTPROT_WGAGENT)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value, or fail naming what was awaited."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def owned_routes(ns: Netns) -> list[str]:
    """Routes with wgagent's tag, in every table, as `ip route` prints them."""
    return sorted(ns.routes("proto", PROTO, "table", "all"))


def owned_prefixes(ns: Netns) -> set[str]:
    return {line.split()[0] for line in owned_routes(ns)}


class Agent:
    """A wgagent daemon process in a namespace, its log in a file."""

    def __init__(self, lab: Lab, ns: Netns, config_text: str, name: str = "wgagent", suffix: str = ""):
        self.lab, self.ns = lab, ns
        self.config = os.path.join(lab.tmp, f"{ns.short}-{name}{suffix}")
        self.write_config(config_text)
        self.logfile = os.path.join(lab.tmp, f"{ns.short}-{name}.log")
        self.proc: subprocess.Popen | None = None

    def write_config(self, text: str):
        with open(self.config, "w") as f:
            f.write(text)

    def start(self, *extra: str, env: dict | None = None, command: list[str] | None = None,
              spawned=None) -> "Agent":
        """`wgagent run` on this agent's config; or `command` (a harness that runs the
        daemon in-process, e.g. with an injected clock), which is given the config path.
        spawned(pid) is called as soon as the process exists, before it has started."""
        started = len(self.events("started"))  # a restart appends to the same log
        log = open(self.logfile, "a")
        argv = [*command, self.config, *extra] if command else \
            [sys.executable, "-m", "wgagent", "run", "--config", self.config, "--log", "stderr", *extra]
        self.proc = self.ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        log.close()
        if spawned is not None:
            spawned(self.proc.pid)
        wait_for(lambda: len(self.events("started")) > started or self.proc.poll() is not None, 20,
                 what="daemon start")
        # started (it may be gone again since: a test that kills it at once)
        assert len(self.events("started")) > started, f"wgagent exited {self.proc.returncode}:\n{self.log()}"
        return self

    def log(self) -> str:
        try:
            with open(self.logfile) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def events(self, event: str) -> list[str]:
        return [line for line in self.log().splitlines() if f"event={event}" in line]

    def send(self, sig: int):
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.lab.stop(self.proc, sig)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def run_cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.ns.run(sys.executable, "-m", "wgagent", *args, "--config", self.config, check=check)


class RouteMonitor:
    """Timestamps of rtnetlink route and rule events with wgagent's tag ("add"/"del" for
    routes, "radd"/"rdel" for rules), read in the namespace by a small helper process
    (so the clock is the kernel's delivery, not a poll)."""

    CODE = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 26)  # SO_RCVBUFFORCE: 10,000 routes arrive at once
s.bind((0, (1 << 6) | (1 << 10) | (1 << 7)))  # RTNLGRP_IPV4_ROUTE, IPV6_ROUTE, IPV4_RULE
s.setsockopt(270, 1, 19)  # NETLINK_ADD_MEMBERSHIP RTNLGRP_IPV6_RULE (past the 32-bit mask)


def rule_proto(data, off, end):
    a = off + 16 + 12  # nlmsghdr + struct fib_rule_hdr
    while a + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, a)
        if alen < 4:
            break
        if atype & 0x3FFF == 21:  # FRA_PROTOCOL
            return data[a + 4]
        a += (alen + 3) & ~3
    return -1


print("ready", flush=True)
while True:
    data = s.recv(1 << 20)
    t = time.time()
    out = []
    while True:  # drain the burst, stamping each message, then write once: printing per
        off = 0  # event would slow the reader and delay the stamps of 10,000-route bursts
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if mtype in (24, 25) and data[off + 16 + 5] == %d:
                out.append("%%s %%.6f\n" %% ("add" if mtype == 24 else "del", t))
            elif mtype in (32, 33) and rule_proto(data, off, off + length) == %d:
                out.append("%%s %%.6f\n" %% ("radd" if mtype == 32 else "rdel", t))
            off += (length + 3) & ~3
        try:
            data = s.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        t = time.time()
    if out:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
""" % (RTPROT_WGAGENT, RTPROT_WGAGENT)

    def __init__(self, ns):
        self.proc = ns.popen(sys.executable, "-c", self.CODE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.events: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            kind, t = line.split()
            with self.lock:
                self.events.append((kind, float(t)))

    def mark(self) -> int:
        """Where new events start: after the backlog of earlier ones has been read."""
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 0.3:
            with self.lock:
                n = len(self.events)
            if n != last:
                last, quiet_since = n, time.monotonic()
            time.sleep(0.02)
        return last

    def wait(self, kind: str | None, since: int, count: int = 1, timeout: float = 60,
             after: float | None = None) -> float:
        """Time of the count-th event of kind (None: of any kind) after mark `since`;
        with `after` (time.time()), of those the kernel delivered after it: the helper
        writes a burst once it is drained, so a backlog read before the mark may still
        be on its way in (10,000 routes flushed just before)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [t for k, t in self.events[since:] if (kind is None or k == kind)
                         and (after is None or t >= after)]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.005)
        raise TimeoutError(f"no {count} {kind or 'route or rule'} event(s) in {timeout}s")
