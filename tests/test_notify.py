"""The reporter's notifiers: ubus events through the ubus CLI (the double's stand-in,
to the double's ubusd, heard by a real `ubus listen` stand-in) and hotplug scripts
run by busybox sh. No root."""

from __future__ import annotations

import json
import os
import time

import pytest

from wgagent import notify
from wgagent.reporter import Reporter

from . import rpcd_plugin as rp
from .lab import SLOWDOWN
from .test_daemon import K1, K2, WALL0, Log, make, peer, world  # noqa: F401  (world: a fixture)


class Heard:
    def __init__(self):
        self.notes = []

    def __call__(self, event, fields):
        self.notes.append((event, fields))

    def close(self):
        pass


def test_peer_and_route_changes_reach_the_notifiers_after_the_log_lines(world):  # noqa: F811
    d = world.daemon(make("\toption idle_timeout '30'\n") + "config peer 'phone'\n\toption interface 'wg0'\n"
                     f"\toption public_key '{K1}'\n\toption description 'phone'\n")
    heard = Heard()
    d.reporter.notifiers = [heard]
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100),)
    assert d.reconcile()
    assert heard.notes == [
        ("peer_up", {"interface": "wg0", "peer": K1, "description": "phone", "reason": "handshake",
                     "endpoint": "192.0.2.9:51820", "prefixes": ["10.0.31.5/32"]}),
        ("route_added", {"interface": "wg0", "action": "added", "prefixes": ["10.0.31.5/32"], "table": "main",
                         "peer": K1}),
    ]
    events = [e for _, e, _ in world.log.lines]
    assert events.index("peer_up") < events.index("route_added")
    heard.notes.clear()
    world.clocks.step(31)  # no rx for 31 s: idle
    assert d.reconcile()
    assert [(e, f.get("reason"), f["prefixes"]) for e, f in heard.notes] == [
        ("peer_down", "idle", ["10.0.31.5/32"]), ("route_removed", None, ["10.0.31.5/32"])]
    heard.notes.clear()
    world.clocks.step(1)
    assert d.reconcile() and heard.notes == []  # on change only


def test_a_burst_is_summarised_for_the_notifiers_as_for_the_log():
    log = Log()
    r = Reporter(log, str)
    heard = Heard()
    r.notifiers = [heard]
    keys = [f"{i:043d}=" for i in range(30)]
    r.lines([("peer_up", {"iface": "wg0", "peer": k[:8]},
              {"interface": "wg0", "peer": k, "description": "", "reason": "handshake", "endpoint": "",
               "prefixes": [f"10.0.0.{i}/32"]}) for i, k in enumerate(keys)] +
            [("route_added", {"iface": "wg0", "prefixes": "10.0.9.9/32", "table": "main"},
              {"interface": "wg0", "action": "added", "prefixes": ["10.0.9.9/32"], "table": "main", "peer": ""})])
    assert heard.notes == [("peers_up", {"interface": "wg0", "count": 30, "first": keys[:5]}),
                           ("routes_added", {"interface": "wg0", "count": 1, "first": ["10.0.9.9/32"]})]
    assert [e for _, e, _ in log.lines] == ["peers_up", "routes_added"]


# --- ubus events (conftest's double: its ubusd)


def listen(double, *patterns, seconds=8):
    return rp.listen(double.path, *patterns, seconds=seconds, ubusd=double.ubusd)


def heard(p) -> list[dict]:
    try:
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return [json.loads(line) for line in out.splitlines()]


def test_events_are_sent_with_ubus_send_and_heard_by_ubus_listen(double):
    log = Log()
    events = notify.UbusEvents(log, rp.CLI, double.path)
    listener = listen(double, "wgagent.*")
    try:
        events("peer_up", {"interface": "wg0", "peer": K1, "description": "", "reason": "handshake",
                           "endpoint": "192.0.2.9:51820", "prefixes": ["10.0.31.5/32", "fd31::5/128"]})
        events("route_added", {"interface": "wg0", "action": "added", "prefixes": ["10.0.31.5/32"], "table": "main",
                               "peer": K1})
        events("peers_down", {"interface": "wg0", "count": 25, "first": [K1, K2]})
        events("rule_added", {})  # not an event kind: nothing sent
    finally:
        got = heard(listener)
        events.close()
    assert got == [
        {"wgagent.peer": {"interface": "wg0", "state": "up", "peer": K1, "description": None, "reason": "handshake",
                          "endpoint": "192.0.2.9:51820", "prefixes": ["10.0.31.5/32", "fd31::5/128"]}},
        {"wgagent.route": {"interface": "wg0", "action": "added", "prefixes": ["10.0.31.5/32"], "table": "main",
                           "peer": K1}},
        {"wgagent.peer": {"interface": "wg0", "state": "down", "count": 25, "first": [K1, K2]}},
    ]
    assert not log.lines


def test_a_failing_bus_is_said_once_and_its_recovery_once(double, tmp_path):
    log = Log()
    events = notify.UbusEvents(log, rp.CLI, str(tmp_path / "nobus.sock"))
    fields = {"interface": "wg0", "peer": K1, "description": "", "reason": "handshake", "endpoint": "",
              "prefixes": []}
    for _ in range(3):
        events("peer_up", fields)
    assert events.flush(30)
    events.socket = double.path
    events("peer_up", fields)
    assert events.flush(30)
    events.close()
    assert [e for _, e, _ in log.lines] == ["ubus_event_failed", "ubus_event_recovered"]
    assert log.events("ubus_event_failed")[0]["error"] == "Failed to connect to ubus"


def test_the_queue_never_makes_the_caller_wait_and_says_what_it_dropped(monkeypatch):
    log = Log()
    monkeypatch.setattr(notify, "LIMIT", 3)

    class Slow(notify.Worker):
        name = "slow"

        def __init__(self, log):
            super().__init__(log)
            self.done = []

        def handle(self, item):
            time.sleep(0.3)
            self.done.append(item)

    w = Slow(log)
    w.put(0)
    wait_until(lambda: w.busy)
    t = time.monotonic()
    for i in range(1, 10):
        w.put(i)
    assert time.monotonic() - t < 0.1 * SLOWDOWN
    deadline = time.monotonic() + 10
    while len(w.done) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.close()
    assert w.done == [0, 1, 2, 3]  # one under way, three waiting; the rest dropped
    assert log.events("slow_dropped") == [
        {"limit": 3, "detail": "more changes waiting than the limit: the newest are dropped"},
        {"count": 6, "detail": "the queue has drained"}]


# --- hotplug


pytestmark_busybox = pytest.mark.skipif(rp.busybox() is None, reason="needs busybox (OpenWrt's shell)")


@pytest.fixture
def hotplug_dir(tmp_path, monkeypatch):
    """/etc/hotplug.d/wgagent, and /bin/sh being busybox's for the scripts: PATH has
    only busybox applets."""
    d = tmp_path / "hotplug.d"
    d.mkdir()
    monkeypatch.setenv("PATH", rp.applets(str(tmp_path / "applets")))
    monkeypatch.setattr(notify, "SHELL", os.path.join(str(tmp_path / "applets"), "sh"))
    return d


UP = {"interface": "wg0", "peer": K1, "description": "phone", "reason": "handshake",
      "endpoint": "192.0.2.9:51820", "prefixes": ["10.0.31.5/32", "fd31::5/128"]}


def wait_until(predicate, timeout=20):
    deadline = time.monotonic() + timeout * SLOWDOWN
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytestmark_busybox
def test_hotplug_scripts_run_in_order_with_the_environment(hotplug_dir, tmp_path):
    out = tmp_path / "out"
    for name in ("20-second", "10-first", ".hidden"):
        (hotplug_dir / name).write_text(
            f'echo "{name} $ACTION $INTERFACE $PEER [$DESCRIPTION] [$PREFIXES] $ENDPOINT $REASON '
            f'${{COUNT:-no-count}}" >> {out}\n')
    (hotplug_dir / "30-dir").mkdir()  # not a file: skipped
    log = Log()
    h = notify.Hotplug(log, timeout=5, directory=str(hotplug_dir))
    h("peer_up", UP)
    h("peer_down", dict(UP, reason="idle"))
    h("peers_up", {"interface": "wg1", "count": 30, "first": [K1]})
    h("route_added", {})  # routes run no scripts
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 6)
    h.close()
    assert out.read_text().splitlines() == [
        f"10-first peer-up wg0 {K1} [phone] [10.0.31.5/32 fd31::5/128] 192.0.2.9:51820 handshake no-count",
        f"20-second peer-up wg0 {K1} [phone] [10.0.31.5/32 fd31::5/128] 192.0.2.9:51820 handshake no-count",
        f"10-first peer-down wg0 {K1} [phone] [10.0.31.5/32 fd31::5/128] 192.0.2.9:51820 idle no-count",
        f"20-second peer-down wg0 {K1} [phone] [10.0.31.5/32 fd31::5/128] 192.0.2.9:51820 idle no-count",
        "10-first peer-up wg1  [] []   30",
        "20-second peer-up wg1  [] []   30",
    ]
    assert not log.lines


@pytestmark_busybox
def test_a_hung_script_is_killed_at_its_limit_and_the_next_one_runs(hotplug_dir, tmp_path):
    pids = tmp_path / "pids"
    (hotplug_dir / "10-hangs").write_text(f"sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n")
    (hotplug_dir / "20-fails").write_text("echo 'something broke' >&2\nexit 3\n")
    (hotplug_dir / "30-after").write_text(f"echo ran >> {tmp_path / 'after'}\n")
    log = Log()
    h = notify.Hotplug(log, timeout=1, directory=str(hotplug_dir))
    t = time.monotonic()
    h("peer_up", UP)
    assert time.monotonic() - t < 0.1 * SLOWDOWN, "the caller (the route loop) never waits"
    wait_until(lambda: (tmp_path / "after").exists())
    took = time.monotonic() - t
    h.close()
    assert 1 <= took < 10 * SLOWDOWN
    [timeout] = log.events("hotplug_timeout")
    assert timeout["script"].endswith("10-hangs") and timeout["limit"] == "1s" and timeout["peer"] == K1
    [failed] = log.events("hotplug_failed")
    assert failed["script"].endswith("20-fails") and failed["status"] == 3 and failed["stderr"] == "something broke"
    for pid in map(int, pids.read_text().split()):  # the script and what it started: gone
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z"))


@pytestmark_busybox
def test_the_shipped_example_does_nothing_until_enabled(hotplug_dir, tmp_path, monkeypatch):
    # busybox sh prefers its own applets to PATH (FEATURE_PREFER_APPLETS): its logger
    # would go to syslog. The stand-in logger needs a shell that looks in PATH: dash
    # here (busybox sh parses the example in test_package)
    monkeypatch.setattr(notify, "SHELL", "/bin/sh")
    logged = tmp_path / "logged"
    (tmp_path / "applets" / "logger").unlink()
    (tmp_path / "applets" / "logger").write_text(f'#!{rp.busybox()} sh\necho "$*" >> {logged}\n')
    (tmp_path / "applets" / "logger").chmod(0o755)
    text = open(rp.HOTPLUG_EXAMPLE).read()
    (hotplug_dir / "50-example").write_text(text)
    log = Log()
    h = notify.Hotplug(log, timeout=5, directory=str(hotplug_dir))
    h("peer_up", UP)
    assert h.flush(10)
    h.close()
    assert not logged.exists() and not log.lines
    (hotplug_dir / "50-example").write_text(text.replace("ENABLED=0", "ENABLED=1"))
    h = notify.Hotplug(log, timeout=5, directory=str(hotplug_dir))
    h("peer_up", UP)
    h("peers_down", {"interface": "wg0", "count": 25, "first": []})
    assert h.flush(20), log.lines
    h.close()
    assert logged.read_text().splitlines() == [
        "-t wgagent-hotplug phone connected on wg0 from 192.0.2.9:51820: 10.0.31.5/32 fd31::5/128",
        "-t wgagent-hotplug peer-down: 25 peers on wg0"]
    assert not log.lines
