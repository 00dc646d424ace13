"""Logging: structlog, one key=value line per event, to syslog when there is one.

Configured once, by the CLI. On OpenWrt /dev/log is logd's socket, so
`logread -e wgagent` shows every line; elsewhere (no /dev/log) lines go to stderr.
The syslog client is a few lines of our own rather than the stdlib's `syslog`
module so that its socket path can be pointed elsewhere (WGAGENT_SYSLOG_SOCKET),
which lets the tests read what a real syslog daemon would receive.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# syslog severities (RFC 5424) for our levels; facility daemon (3)
SEVERITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}
FACILITY_DAEMON = 3
IDENT = "wgagent"


class SyslogSink:
    """Sends RFC 3164 datagrams the way libc's syslog() does: '<PRI>Mmm dd hh:mm:ss ident[pid]: msg'."""

    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        s.connect(self.path)
        self.sock = s

    def write(self, level: str, line: str):
        pri = FACILITY_DAEMON * 8 + SEVERITY.get(level, 6)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        msg = f"<{pri}>{stamp[:4]}{int(stamp[4:6]):2d}{stamp[6:]} {IDENT}[{os.getpid()}]: {line}".encode()
        for _ in range(2):  # logd restarted: reconnect once
            try:
                if self.sock is None:
                    self._connect()
                self.sock.send(msg)
                return
            except OSError:
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
        sys.stderr.write(line + "\n")  # syslog is gone: do not lose the line


class StderrSink:
    def write(self, level: str, line: str):
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level:<7} {line}\n")
        sys.stderr.flush()


class _Logger:
    def __init__(self, sink):
        self.sink = sink

    def _emit(self, level):
        def emit(message):
            self.sink.write(level, message)
        return emit

    def __getattr__(self, name):
        return self._emit(name if name in LEVELS else "info")


_state = {"level": LEVELS["info"], "sink": None}


def _filter_level(logger, method, event_dict):
    if LEVELS.get(method, 20) < _state["level"]:
        raise structlog.DropEvent
    return event_dict


def setup(level: str = "info", target: str = "auto"):
    """target: 'auto' (syslog if the socket exists, else stderr), 'syslog' or 'stderr'."""
    path = os.environ.get("WGAGENT_SYSLOG_SOCKET", "/dev/log")
    if target == "syslog" or (target == "auto" and os.path.exists(path)):
        sink = SyslogSink(path)
    else:
        sink = StderrSink()
    _state["sink"] = sink
    set_level(level)
    structlog.configure(
        processors=[_filter_level, structlog.processors.format_exc_info,
                    structlog.processors.LogfmtRenderer(key_order=["event"], bool_as_flag=False)],
        logger_factory=lambda *args: _Logger(_state["sink"]),
        cache_logger_on_first_use=False,
    )


def set_level(level: str):
    _state["level"] = LEVELS[level]


def enabled(level: str) -> bool:
    """Would a line at this level be written? (To skip building thousands that would not.)"""
    return LEVELS[level] >= _state["level"]


def get(**bound):
    return structlog.get_logger().bind(**bound) if bound else structlog.get_logger()
