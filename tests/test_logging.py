"""Log lines as a syslog daemon (OpenWrt's logd on /dev/log) receives them."""

import os
import re
import socket
import subprocess
import sys

import structlog

from wgagent import log


def test_syslog_datagrams_have_ident_pid_priority_and_logfmt(tmp_path):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    code = ("import os; from wgagent import log; log.setup('info', 'auto'); l = log.get();"
            "l.info('route_added', iface='wg0', prefixes='10.0.31.5/32', peer='abc (phone)');"
            "l.debug('hidden'); l.warning('route_conflict', prefix='10.0.31.6/32'); print(os.getpid())")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, WGAGENT_SYSLOG_SOCKET=path),
                         capture_output=True, text=True, check=True)
    pid = out.stdout.strip()
    first = server.recv(4096).decode()
    second = server.recv(4096).decode()
    server.close()
    # daemon facility (3): info = <30>, warning = <28>; "Mmm dd hh:mm:ss ident[pid]: "
    assert re.match(r"<30>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d wgagent\[" + pid + r"\]: ", first), first
    assert first.endswith('event=route_added iface=wg0 prefixes=10.0.31.5/32 peer="abc (phone)"')
    assert second.startswith("<28>") and second.endswith("event=route_conflict prefix=10.0.31.6/32")
    assert out.stderr == ""  # nothing twice: syslog only


def test_stderr_without_syslog(tmp_path, capsys):
    os.environ["WGAGENT_SYSLOG_SOCKET"] = str(tmp_path / "absent")
    try:
        log.setup("warning", "auto")
        log.get().info("quiet")
        log.get().warning("loud", x=1)
    finally:
        del os.environ["WGAGENT_SYSLOG_SOCKET"]
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "quiet" not in err and "warning event=loud x=1" in err


class Recorder:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **fields: self.lines.append((level, event, fields))


def burst_reporter(level):
    from wgagent.reporter import Reporter

    log.set_level(level)
    return Reporter(Recorder(), str)


def test_a_few_changes_are_one_line_each(tmp_path):
    d = burst_reporter("info")
    d.lines([("peer_up", {"iface": "wg0", "peer": f"p{i}"}, None) for i in range(20)])
    assert [(lv, ev) for lv, ev, _ in d.log.lines] == [("info", "peer_up")] * 20


def test_a_burst_is_summed_up_with_the_details_at_debug(tmp_path):
    d = burst_reporter("info")
    lines = [("peer_up", {"iface": "wg0", "peer": f"p{i}"}, None) for i in range(30)]
    lines += [("peer_up", {"iface": "wg1", "peer": "q"}, None), ("peer_down", {"iface": "wg0", "peer": "r"}, None)]
    d.lines(lines)
    assert d.log.lines == [
        ("info", "peers_up", {"iface": "wg0", "count": 30, "first": "p0,p1,p2,p3,p4,…",
                              "detail": "one line each at log_level debug"}),
        ("info", "peers_up", {"iface": "wg1", "count": 1, "first": "q", "detail": "one line each at log_level debug"}),
        ("info", "peers_down", {"iface": "wg0", "count": 1, "first": "r", "detail": "one line each at log_level debug"}),
    ]
    d = burst_reporter("debug")
    d.lines(lines)
    assert [lv for lv, _, _ in d.log.lines] == ["debug"] * 32 + ["info"] * 3
    log.set_level("info")
