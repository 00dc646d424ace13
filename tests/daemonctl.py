"""Run a real wgagent daemon inside a lab namespace and watch what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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

    def start(self, *extra: str, env: dict | None = None) -> "Agent":
        log = open(self.logfile, "a")
        self.proc = self.ns.popen(sys.executable, "-m", "wgagent", "run", "--config", self.config,
                                  "--log", "stderr", *extra, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, **(env or {})))
        log.close()
        wait_for(lambda: "event=started" in self.log() or self.proc.poll() is not None, 20, what="daemon start")
        assert self.proc.poll() is None, f"wgagent exited {self.proc.returncode}:\n{self.log()}"
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
