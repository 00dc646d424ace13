"""The daemon's side of the `wgagent` ubus object.

rpcd serves the object: /usr/libexec/rpcd/wgagent, an exec plugin (plain sh), which
rpcd runs for each call. The daemon never talks to ubus for it: python-ubus holds
the GIL while it waits on ubusd (see ubus.py), so a ubus object served from the
daemon would stop the route loop for as long as any caller or ubusd kept it
waiting, and a process of its own would cost a second Python (~10 MB). Instead the
daemon leaves in rundir (private, atomic writes):

- daemon-N.pid: "PID STARTTIME", from start to stop: whether it runs (a pid alone
  could name another process after a crash, and must never be signalled);
- status-N.json: the status document (status.py) as of its last change, which the
  plugin answers `status` and `peers` from with cat and awk: the answer costs no
  Python and never waits on the daemon. Written when the reporter said something
  (a change of state: every peer_up, route_added, warning... is one), on reload, when
  the firewall thread's state changes, and every REFRESH seconds (handshake ages and
  counters are as of "updated");
- the answers to `reload` and `reconcile`: the plugin makes a FIFO named
  <kind>-N.<its pid> here, then signals the daemon (SIGHUP: reload; SIGUSR1:
  reconcile) and waits on the FIFO with a bound. The daemon lists the FIFOs of that
  kind before it acts on the signal and writes one JSON line into each when done:
  opened O_NONBLOCK, so a caller that gave up (no reader: ENXIO) costs nothing and
  its FIFO is removed; a line shorter than PIPE_BUF into an empty FIFO never blocks.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time

from . import rundir, status

REFRESH = 30.0  # seconds: ages and counters in the published status are at most this old
# a change is published at once, but never sooner after the last write than this many
# times what that write cost (10,000 peers: ~0.15 s a write, so at most one in 3 s:
# < 5% of a core while peers keep changing), and at least MIN_INTERVAL
COST_FACTOR, MIN_INTERVAL = 20, 1.0
KINDS = ("reload", "reconcile")


class Control:
    def __init__(self, log, clock=time.time, mono=time.monotonic):
        self.log = log
        self.clock, self.mono = clock, mono
        self.dirty = True  # publish at the next chance
        self.said = -1  # the reporter's count of lines when the status was last written
        self.written_at: float | None = None  # monotonic
        self.cost = 0.0  # CPU seconds of the last write
        self.failed = ""  # the last write error said

    # --- start and stop

    def start(self) -> None:
        """The pid file, and the FIFOs of callers of a daemon that died (nobody will
        answer them: their plugin has given up or will at its bound)."""
        try:
            rundir.write(rundir.path("daemon", ".pid"), rundir.identity())
        except OSError as e:
            self._failed(e)
            return
        for kind in KINDS:
            for fifo in self.waiting(kind):
                rundir.remove(fifo)

    def stop(self) -> None:
        """Nothing of a stopped daemon may be read as current: while no daemon runs the
        plugin reads the kernel through `wgagent status`."""
        rundir.remove(rundir.path("status", ".json"))
        rundir.remove(rundir.path("daemon", ".pid"))

    # --- the status

    def publish(self, daemon, said: int) -> None:
        """Write the daemon's status when it may have changed: said is the reporter's
        count of lines so far."""
        mono = self.mono()
        if self.written_at is not None:
            since = mono - self.written_at
            changed = self.dirty or said != self.said
            if not (since >= REFRESH or changed and since >= max(MIN_INTERVAL, COST_FACTOR * self.cost)):
                return
        self.dirty, self.said, self.written_at = False, said, mono
        now = self.clock()
        took = time.thread_time()
        doc = daemon.status_document(now)
        doc["daemon"] = status.daemon_entry(True, os.getpid(), now)
        if getattr(daemon, "detection", None) is not None:  # the Runner's: how handshakes are found
            doc["detection"] = daemon.detection
        text = status.dumps(status.fit(doc))
        try:
            rundir.write(rundir.path("status", ".json"), text)
        except OSError as e:
            self._failed(e)
            return
        self.cost = time.thread_time() - took
        self.log.debug("status_published", bytes=len(text), cpu_ms=round(self.cost * 1000, 1))
        if self.failed:
            self.failed = ""
            self.log.info("state_write_recovered", path=rundir.RUN_DIR)

    def _failed(self, e: OSError) -> None:
        if str(e) != self.failed:
            self.failed = str(e)
            self.log.warning("state_write_failed", path=rundir.RUN_DIR, error=str(e),
                             detail="`ubus call wgagent status` reads the kernel instead (slower)")

    # --- answers to reload and reconcile

    def waiting(self, kind: str) -> list[str]:
        """The FIFOs of the callers waiting for an answer of this kind now."""
        prefix = os.path.basename(rundir.path(kind)) + "."
        try:
            names = os.listdir(rundir.RUN_DIR)
        except OSError:
            return []
        out = []
        for name in sorted(names):
            if not name.startswith(prefix):
                continue
            path = os.path.join(rundir.RUN_DIR, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid():
                out.append(path)
        return out

    def answer(self, fifos: list[str], reply: dict) -> None:
        line = (json.dumps(reply, separators=(",", ":")) + "\n").encode()
        for fifo in fifos:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader: the caller gave up
                    rundir.remove(fifo)
                continue
            try:
                os.write(fd, line)
            except OSError:
                pass  # the caller went away between open and write
            finally:
                os.close(fd)
