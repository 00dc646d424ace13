"""The reporter's notifiers: ubus events and hotplug scripts.

Each is called as notifier(event, fields) by the reporter after its log lines
(reporter.lines: the same changes, the same burst summaries) and only queues: a
thread of its own does the work, so a hung ubusd or a slow script never holds up
the route loop. The queue is bounded: past LIMIT waiting items the newest are
dropped and said once, with their count when the queue drains.

Events (`ubus send`, the CLI: python-ubus would hold the GIL while ubusd keeps it
waiting), on change only:

    wgagent.peer  {interface, peer (public key), description, state: up|down|moved,
                   reason, endpoint, prefixes: [...]}
    wgagent.route {interface, action: added|removed, prefixes: [...], table, peer}
    a burst: {interface, state or action, count, first: [<= 5 keys or prefixes]}

Hotplug: every file in /etc/hotplug.d/wgagent, in name order, once per peer change,
the way procd's hotplug-dispatch.c runs /etc/hotplug.d/<subsystem>/*: each sourced by
/bin/sh after /lib/functions.sh (`. /lib/functions.sh; . SCRIPT`), with the
daemon's environment (LD_* left out) plus ACTION=peer-up|peer-down|peer-moved,
INTERFACE, PEER, DESCRIPTION, PREFIXES (space-separated), ENDPOINT, REASON; a burst
runs them once with COUNT instead of PEER ... (`ubus call wgagent peers` lists them).
Unlike procd each has a time limit (option hotplug_timeout): past it the script's
process group is killed (SIGKILL) and the next one runs; a timeout or a non-zero
exit is one warning line, with the end of its stderr.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading

from . import ubus

LIMIT = 1000  # items waiting per notifier
HOTPLUG_DIR = os.environ.get("WGAGENT_HOTPLUG_DIR", "/etc/hotplug.d/wgagent")
# procd's hotplug_exec: "/bin/sh -c '. /lib/functions.sh\n. <script>'"; on a host without
# /lib/functions.sh (plain Linux) the script is sourced alone (a missing file given to
# `.` would end the shell)
SOURCE = '[ ! -f /lib/functions.sh ] || . /lib/functions.sh; . "$0"'
SHELL = "/bin/sh"  # OpenWrt's is busybox ash
STATES = {"peer_up": "up", "peer_down": "down", "peer_moved": "moved",
          "peers_up": "up", "peers_down": "down", "peers_moved": "moved"}
ACTIONS = {"route_added": "added", "route_removed": "removed", "routes_added": "added", "routes_removed": "removed"}
_STOP = object()


class Worker:
    """One thread and a bounded queue; the thread starts with the first item."""

    name = "worker"

    def __init__(self, log):
        self.log = log
        self.queue: queue.Queue = queue.Queue(LIMIT)
        self.thread: threading.Thread | None = None
        self.dropped = 0
        self.stopping = False
        self.busy = False  # an item is under way

    def put(self, item) -> None:
        if self.stopping:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self.thread.start()
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            if not self.dropped:
                self.log.warning(f"{self.name}_dropped", limit=LIMIT,
                                 detail="more changes waiting than the limit: the newest are dropped")
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP or self.stopping:
                return
            self.busy = True
            try:
                self.handle(item)
            finally:
                self.busy = False
                self.queue.task_done()
            if self.dropped and self.queue.empty():
                self.log.info(f"{self.name}_dropped", count=self.dropped, detail="the queue has drained")
                self.dropped = 0

    def handle(self, item) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        """Wait until what is queued is done (tests; a stop drops it instead)."""
        with self.queue.all_tasks_done:
            return self.queue.all_tasks_done.wait_for(lambda: not self.queue.unfinished_tasks, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the item under way (what is still queued is dropped)."""
        self.stopping = True
        if self.thread is not None:
            try:
                self.queue.put_nowait(_STOP)
            except queue.Full:
                pass  # stopping is set: the thread ends after its current item
            self.thread.join(timeout)


class UbusEvents(Worker):
    """wgagent.peer and wgagent.route through `ubus send`."""

    name = "ubus_event"
    TIMEOUT = 5  # seconds for one send (the CLI's -t)

    def __init__(self, log, cli: str, socket: str = ""):
        super().__init__(log)
        self.cli = cli
        self.socket = socket  # agent option ubus_socket; a reload may change it
        self.failing = ""  # the error last said, until a send works again

    def __call__(self, event: str, fields: dict) -> None:
        if event in STATES:
            data = {"interface": fields["interface"], "state": STATES[event]}
            if "count" in fields:
                data.update(count=fields["count"], first=fields["first"])
            else:
                data.update(peer=fields["peer"], description=fields["description"] or None,
                            reason=fields["reason"], endpoint=fields["endpoint"] or None,
                            prefixes=fields["prefixes"])
            self.put(("wgagent.peer", data))
        elif event in ACTIONS:
            data = {"interface": fields["interface"], "action": ACTIONS[event]}
            if "count" in fields:
                data.update(count=fields["count"], first=fields["first"])
            else:
                data.update(prefixes=fields["prefixes"], table=fields["table"], peer=fields["peer"] or None)
            self.put(("wgagent.route", data))

    def handle(self, item) -> None:
        kind, data = item
        cmd = [self.cli] + (["-s", self.socket] if self.socket else []) + \
              ["-t", str(self.TIMEOUT), "send", kind, json.dumps(data)]
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=self.TIMEOUT + 5)
            error = "" if r.returncode == 0 else \
                (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit {r.returncode}"])[0]
        except subprocess.TimeoutExpired:
            error = f"no answer from ubus in {self.TIMEOUT + 5}s"
        except OSError as e:
            error = str(e)
        if error and error != self.failing:
            self.log.warning("ubus_event_failed", type=kind, error=error,
                             detail="events are not sent until ubus takes them again")
        elif not error and self.failing:
            self.log.info("ubus_event_recovered")
        self.failing = error


def ubus_events(log, socket: str = "") -> UbusEvents | None:
    """The events notifier, where the ubus command exists."""
    cli = ubus.cli_path()
    return UbusEvents(log, cli, socket) if cli else None


class Hotplug(Worker):
    """The scripts of /etc/hotplug.d/wgagent, for each peer change."""

    name = "hotplug"
    STDERR_TAIL = 300  # bytes of a failing script's stderr in its log line

    def __init__(self, log, timeout: float, directory: str = ""):
        super().__init__(log)
        self.timeout = timeout  # agent option hotplug_timeout; a reload may change it
        self.directory = directory or HOTPLUG_DIR
        self.running: subprocess.Popen | None = None  # the script under way

    def close(self, timeout: float = 5.0) -> None:
        """As Worker.close; a script still running then is killed with its group (the
        daemon is stopping: nobody would wait for it)."""
        super().close(timeout)
        p = self.running
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __call__(self, event: str, fields: dict) -> None:
        if event not in STATES or not os.path.isdir(self.directory):
            return
        env = {"ACTION": "peer-" + STATES[event], "INTERFACE": fields["interface"]}
        if "count" in fields:
            env["COUNT"] = str(fields["count"])
        else:
            env.update(PEER=fields["peer"], DESCRIPTION=fields["description"], REASON=fields["reason"],
                       ENDPOINT=fields["endpoint"], PREFIXES=" ".join(fields["prefixes"]))
        self.put(env)

    def scripts(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        # glob(3)'s "*" as procd uses it: no dot files
        return [p for p in (os.path.join(self.directory, n) for n in names if not n.startswith("."))
                if os.path.isfile(p)]

    def handle(self, env: dict) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
        base.update(env)
        for script in self.scripts():
            self.run(script, base)

    def run(self, script: str, env: dict) -> None:
        # stderr into an anonymous in-memory file, not a pipe: a child the script left
        # in the background may hold a pipe open long after the script is done (and
        # memfd, not tempfile, whose import costs memory the daemon has no other use for)
        err = os.memfd_create("wgagent-hotplug-stderr", os.MFD_CLOEXEC)
        try:
            self._script(script, env, err)
        finally:
            os.close(err)

    def _script(self, script: str, env: dict, err: int) -> None:
        try:
            # a session of its own: at the limit the whole group goes, children included
            p = subprocess.Popen([SHELL, "-c", SOURCE, script], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err, env=env, cwd="/",
                                 start_new_session=True)
        except OSError as e:
            self.log.warning("hotplug_failed", script=script, action=env["ACTION"], error=str(e))
            return
        self.running = p
        try:
            code = p.wait(self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            self.log.warning("hotplug_timeout", script=script, action=env["ACTION"],
                             peer=env.get("PEER", "-"), limit=f"{self.timeout:g}s",
                             detail="killed (its process group) at hotplug_timeout; the next script runs")
            return
        if code != 0:
            size = os.lseek(err, 0, os.SEEK_END)
            os.lseek(err, max(0, size - self.STDERR_TAIL), os.SEEK_SET)
            tail = os.read(err, self.STDERR_TAIL).decode(errors="replace").strip()
            self.log.warning("hotplug_failed", script=script, action=env["ACTION"], peer=env.get("PEER", "-"),
                             status=code if code >= 0 else f"signal {-code}", stderr=tail or "-")
