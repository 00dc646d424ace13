"""The `wgagent` ubus object: the package's rpcd plugin, run by the double's rpcd
(rpcd_exec.py, modelled from plugin.c/exec.c) under busybox sh, answering from
what a real Daemon published (control.py) or, while none runs, from `wgagent
status --ubus`. No root: the daemon is test_daemon's, on an in-memory kernel.

    ubus CLI stand-in ── double's ubusd ── double's rpcd ── busybox sh wgagent.rpcd
                                                              │ cat / awk
                                       Daemon.reconcile ─> Control.publish ─> RUN/status-N.json
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest

from wgagent import rundir, status
from wgagent.control import Control
from wgagent.rtnl import Link

from . import rpcd_plugin as rp
from .lab import SLOWDOWN
from .test_daemon import K1, K2, WALL0, make, peer, world  # noqa: F401  (world: a fixture)
from .ubus_double.server import UbusDouble

pytestmark = pytest.mark.skipif(rp.busybox() is None, reason="needs busybox (OpenWrt's shell)")


@pytest.fixture
def bus(tmp_path, world):  # noqa: F811
    """The double with the package's plugin loaded by its rpcd, the plugin's files
    where world's daemon writes them."""
    confdir = tmp_path / "config"
    confdir.mkdir()
    (confdir / "firewall").write_text("")
    d = UbusDouble(str(tmp_path / "ubus.sock"), str(confdir), str(tmp_path / "delta"))
    env = rp.plugin_env(str(tmp_path), rundir.RUN_DIR, world.path, wait=2)
    assert d.load_plugins(rp.plugin_dir(str(tmp_path)), [rp.busybox(), "sh"], env, timeout=30) == ["wgagent"]
    d.env = env
    yield d
    d.close()


def publish(world, text=None):  # noqa: F811
    """A daemon with one peer up on wg0 and one never seen, its status published."""
    d = world.daemon(text or make("\toption idle_timeout '60'\n"))
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100),
                                  peer(K2, "10.0.31.6/32", 0, endpoint=None))
    assert d.reconcile()
    control = Control(world.log, clock=lambda: world.clocks.wall, mono=lambda: world.clocks.mono)
    control.start()  # the pid file: this process, as the daemon
    control.publish(d, d.reporter.said)
    return d, control


def test_rpcd_registers_the_object_from_the_plugins_list_and_ubusd_announces_it(bus, tmp_path):
    r = rp.ubus(bus.path, "-v", "list", "wgagent")
    assert r.returncode == 0, r.stderr
    head, *methods = r.stdout.splitlines()
    assert head == f"'wgagent' @{bus.ubusd.find('wgagent').id:08x}"
    assert methods == ['\t"status":{}', '\t"peers":{"interface":"String"}', '\t"reconcile":{}', '\t"reload":{}']
    assert "wgagent" in rp.ubus(bus.path, "list").stdout.split()
    # rpcd started again (its reload: SIGHUP re-executes it) re-registers it, and ubusd
    # says so to whoever listens
    # the listener's window (-t) holds the plugins' `list` runs (busybox sh each): on a
    # loaded CI machine they took longer than the 2.5 s a 3 s window left after the remove
    listen = rp.listen(bus.path, "ubus.object.*", seconds=10, ubusd=bus.ubusd)
    try:
        bus.load_plugins(rp.plugin_dir(str(tmp_path)), [rp.busybox(), "sh"], bus.env)
        out, _ = listen.communicate(timeout=20)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait()
    events = [json.loads(line) for line in out.splitlines()]
    assert [list(e)[0] for e in events] == ["ubus.object.remove", "ubus.object.add"]
    assert all(list(e.values())[0]["path"] == "wgagent" for e in events)


def test_status_is_what_the_daemon_published_with_the_daemon_running(bus, world):  # noqa: F811
    d, _ = publish(world)
    st = rp.call(bus.path, "status")
    assert st["daemon"] == {"running": True, "pid": os.getpid(), "updated": int(world.clocks.wall)}
    [iface] = st["interfaces"]
    assert iface["name"] == "wg0" and iface["backend"] == "uapi" and iface["table"] == "main"
    up, never = iface["peers"]
    assert up["public_key"] == K1 and up["interface"] == "wg0" and up["state"] == "up" and up["up"] is True
    assert up["reason"] == "handshake" and up["routes"] == ["10.0.31.5/32"] and up["handshake_age"] == 5.0
    assert never["state"] == "down" and never["reason"] == "no-handshake" and never["endpoint"] is None
    assert never["handshake_age"] is None and never["routes"] == []
    # the very document the daemon builds (blobmsg: the same values; the CLI prints
    # doubles as %lf, which parse back equal)
    want = d.status_document(world.clocks.wall)
    want["daemon"] = st["daemon"]
    assert st == json.loads(json.dumps(want))
    # idle, and its own state word
    world.clocks.step(61)
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100),)
    d.reconcile()
    Control(world.log, clock=lambda: world.clocks.wall).publish(d, d.reporter.said)
    st = rp.call(bus.path, "status")
    assert "interfaces" in st, st
    [p] = st["interfaces"][0]["peers"]
    assert (p["state"], p["reason"], p["up"], p["routes"]) == ("idle", "idle", False, [])


def test_status_while_no_daemon_runs_reads_the_kernel_and_says_so(bus, world, tmp_path):  # noqa: F811
    # nothing published, no pid file: the plugin runs `wgagent status --ubus`, which
    # reads the kernel (here: an interface that does not exist) and the config
    with open(world.path, "w") as f:
        f.write("config interface 'wgnone0'\n")
    t = time.monotonic()
    st = rp.call(bus.path, "status")
    assert time.monotonic() - t < 20 * SLOWDOWN
    assert st["daemon"]["running"] is False and st["daemon"]["pid"] is None
    assert st["interfaces"][0]["name"] == "wgnone0"
    assert st["interfaces"][0]["error"] == "interface does not exist"
    # a config that does not load: still an answer, saying why
    with open(world.path, "w") as f:
        f.write("config interface 'wg0'\n\toption table 'nosuchtable'\n")
    st = rp.call(bus.path, "status")
    assert st["daemon"] == {"running": False, "pid": None, "updated": None}
    assert "wgagent status failed (exit 2)" in st["error"] and "nosuchtable" in st["error"]


def test_a_pid_left_by_a_dead_daemon_is_never_taken_for_it_nor_signalled(bus, world, tmp_path):  # noqa: F811
    publish(world)
    # the daemon died; the kernel gave its pid to another process: same pid, another
    # start time. The plugin must not signal it (SIGHUP would end a sleep)
    other = subprocess.Popen(["sleep", "60"])
    try:
        with open(rundir.path("daemon", ".pid"), "w") as f:
            f.write(f"{other.pid} {rundir.start_time(other.pid) - 1}\n")
        assert rundir.running_pid() is None
        assert rp.call(bus.path, "reload") == {"taken": False, "error": "wgagent is not running"}
        assert rp.call(bus.path, "reconcile") == {"done": False, "error": "wgagent is not running"}
        assert other.poll() is None, "the other process got a signal"
        with open(world.path, "w") as f:
            f.write("config interface 'wgnone0'\n")
        assert rp.call(bus.path, "status")["daemon"]["running"] is False  # the stale file is not read
    finally:
        other.kill()
        other.wait()


def test_peers_of_all_interfaces_or_one(bus, world):  # noqa: F811
    world.kernel.link_map["wg1"] = Link(6, "wg1", "wireguard", True)
    publish(world, make() + "config interface 'wg1'\n")
    world.sources.peers["wg1"] = (peer("C" * 43 + "=", "10.0.41.5/32", WALL0 - 5),)
    d = world.daemons[-1]
    d.reconcile()
    Control(world.log, clock=lambda: world.clocks.wall).publish(d, d.reporter.said)
    everyone = rp.call(bus.path, "peers")["peers"]
    assert [(p["interface"], p["public_key"]) for p in everyone] == [("wg0", K1), ("wg0", K2), ("wg1", "C" * 43 + "=")]
    assert rp.call(bus.path, "peers", {}) == {"peers": everyone}
    assert rp.call(bus.path, "peers", {"interface": "wg1"}) == {"peers": everyone[2:]}
    assert rp.call(bus.path, "peers", {"interface": "wg9"}) == {"peers": []}
    # as LuCI calls it: uhttpd adds the session to the arguments (ubus.c, uh_ubus_send_request)
    assert rp.call(bus.path, "peers", {"interface": "wg0", "ubus_rpc_session": "0" * 32}) == {"peers": everyone[:2]}
    plugin = bus.plugins["wgagent"]
    assert plugin.calls[-1] == ("peers", '{"interface":"wg0","ubus_rpc_session":"' + "0" * 32 + '"}')
    # what is no interface name is refused, and nothing is run for it
    for bad in ({"interface": 5}, {"interface": "wg0/../x"}, {"interface": 'a"b'}, {"interface": ""}):
        r = rp.ubus(bus.path, "call", "wgagent", "peers", json.dumps(bad))
        assert r.returncode == 256 - 2 and "(Invalid argument)" in r.stderr, (bad, r.stderr)
    r = rp.ubus(bus.path, "call", "wgagent", "nosuch")
    assert r.returncode == 256 - 3 and "(Method not found)" in r.stderr


def test_reload_and_reconcile_wait_for_the_daemon_with_a_bound(bus, world, tmp_path):  # noqa: F811
    # a daemon that takes the signal and never answers: the caller gets its bound
    # (WGAGENT_WAIT, 2 s here) and an answer saying so; its FIFO is gone after
    publish(world)
    quiet = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "signal.signal(signal.SIGHUP, lambda *a: None)\n"
                              "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
                              "print('ready', flush=True)\ntime.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert quiet.stdout.readline().strip() == "ready"
        rundir.write(rundir.path("daemon", ".pid"), f"{quiet.pid} {rundir.start_time(quiet.pid)}\n")
        t = time.monotonic()
        assert rp.call(bus.path, "reload") == {"taken": False, "error": "no answer from wgagent within 2s"}
        assert 1.5 < time.monotonic() - t < 10 * SLOWDOWN
        assert quiet.poll() is None
        assert not [n for n in os.listdir(rundir.RUN_DIR) if n.startswith("reload-")]
    finally:
        quiet.kill()
        quiet.wait()


def test_a_fifo_answer_reaches_exactly_the_callers_waiting(world, tmp_path):  # noqa: F811
    """control.py's side: one line into each FIFO of the kind; a caller that gave up
    (no reader) costs nothing and its FIFO goes; the other kind's are left."""
    Control(world.log).start()
    a, b, gone, other = (rundir.path("reload") + ".1", rundir.path("reload") + ".2",
                         rundir.path("reload") + ".3", rundir.path("reconcile") + ".4")
    for p in (a, b, gone, other):
        os.mkfifo(p, 0o600)
    readers = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in (a, b, other)]
    try:
        c = Control(world.log)
        assert c.waiting("reload") == [a, b, gone]
        c.answer(c.waiting("reload"), {"taken": True})
        assert os.read(readers[0], 100) == os.read(readers[1], 100) == b'{"taken":true}\n'
        assert not os.path.exists(gone) and os.path.exists(other)
        assert os.read(readers[2], 100) == b""  # no writer ever came
    finally:
        for fd in readers:
            os.close(fd)


def test_the_status_always_fits_one_ubus_message():
    """ubusd drops a client that sends more than UBUS_MAX_MSGLEN: the answer must fit."""
    def entry(i, up):
        return {"interface": "wg0", "public_key": f"{i:043d}=", "short_key": f"{i:08d}", "description": None,
                "endpoint": "192.0.2.1:51820", "handshake_age": 5.5, "up": up, "reason": "handshake",
                "state": "up", "rx_bytes": 2**40, "tx_bytes": 1, "allowed_ips": ["10.0.0.1/32", "fd00::1/128"],
                "routes": ["10.0.0.1/32", "fd00::1/128"] if up else [], "rules": []}

    small = {"interfaces": [{"name": "wg0", "peers": [entry(i, True) for i in range(1000)]}],
             "daemon": {"running": True, "pid": 1, "updated": 0}}
    assert status.fit(small) is small  # 1,000 peers fit as they are
    big = copy.deepcopy(small)
    big["interfaces"][0]["peers"] = [entry(i, i % 2 == 0) for i in range(6000)]
    fitted = status.fit(big)
    assert status.blobmsg_size(fitted) <= status.BUDGET < status.blobmsg_size(big)
    kept = fitted["interfaces"][0]["peers"]
    assert fitted["interfaces"][0]["peers_omitted"] == 6000 - len(kept)
    assert all(p["up"] for p in kept) and 2000 < len(kept) < 3000, "the down ones go first"
    assert kept == [p for p in big["interfaces"][0]["peers"] if p["up"]][:len(kept)], "then the last ones"
    # blobmsg's layout (libubox blobmsg.c): header 4, name (2 + len + NUL) padded to 4,
    # payload padded to 4
    assert status.blobmsg_size("wg0", "name") == 4 + 8 + 4
    assert status.blobmsg_size(2**40, "rx") == 4 + 8 + 8 and status.blobmsg_size(True, "up") == 4 + 8 + 4
    assert status.blobmsg_size(None, "x") == 4 + 4 and status.blobmsg_size([], "a") == 4 + 4
    # dumps: each peer on its line, starting with a tab, and the whole still JSON
    text = status.dumps(small)
    assert json.loads(text) == small
    assert sum(line.startswith("\t{") for line in text.splitlines()) == 1000


def test_status_document_and_cli_json_agree_on_the_contract(world):  # noqa: F811
    """`wgagent status --json` and the daemon's document come from status.document:
    the same keys, the daemon entry, each peer's state."""
    d, _ = publish(world)
    doc = d.status_document(world.clocks.wall)
    assert list(doc) == ["interfaces", "conflicts", "return_paths", "problems", "other_owned_routes",
                         "owned_rules", "daemon"]
    assert set(doc["interfaces"][0]["peers"][0]) == {
        "interface", "public_key", "short_key", "description", "endpoint", "handshake_age", "up", "reason",
        "state", "rx_bytes", "tx_bytes", "allowed_ips", "routes", "rules", "moved"}
    assert doc["interfaces"][0]["peers"][0]["moved"] is None  # a peer held back by the hand-off: where it went
    assert status.peer_state(False, "moved") == "moved"
    assert status.peer_state(False, "handshake-expired") == "down"


def test_the_acl_grants_read_status_peers_and_write_reconcile_reload(tmp_path):
    from .ubus_double.session import RpcdSession, setup_acls

    with open(rp.ACL) as f:
        acl = json.load(f)
    assert acl["wgagent"]["read"] == {"ubus": {"wgagent": ["status", "peers"]}}
    assert acl["wgagent"]["write"] == {"ubus": {"wgagent": ["reconcile", "reload"]}}
    listed = json.loads(subprocess.run([rp.busybox(), "sh", rp.PLUGIN, "list"], capture_output=True, text=True,
                                       check=True).stdout)
    assert sorted(listed) == sorted(["status", "peers", "reconcile", "reload"])
    acl_dir = tmp_path / "acl.d"
    acl_dir.mkdir()
    (acl_dir / "wgagent.json").write_text(open(rp.ACL).read())
    sessions = RpcdSession(str(tmp_path / "run"))
    for login, allowed in (({"read": ["*"]}, {"status", "peers"}),
                           ({"read": ["*"], "write": ["*"]}, set(listed)),
                           ({"write": ["wgagent"]}, set(listed)),  # write implies read
                           ({"read": ["*", "!wgagent"]}, set())):
        sid = sessions.call("create", {})["ubus_rpc_session"]
        setup_acls(sessions, sid, str(acl_dir), login)
        got = {m for m in listed if sessions.call("access", {"ubus_rpc_session": sid, "scope": "ubus",
                                                             "object": "wgagent", "function": m})["access"]}
        assert got == allowed, login


def test_the_status_is_written_on_change_at_a_bounded_rate_and_refreshed(world):  # noqa: F811
    from wgagent import control as control_mod

    writes = []

    class Daemon:
        def status_document(self, now):
            writes.append(now)
            return {"interfaces": [], "daemon": None}

    mono = [100.0]
    c = Control(world.log, clock=lambda: mono[0] + WALL0, mono=lambda: mono[0])
    d = Daemon()
    c.publish(d, said=0)  # the first pass: written
    c.publish(d, said=0)
    assert len(writes) == 1, "nothing said since: nothing written"
    c.publish(d, said=3)
    assert len(writes) == 1, "a change within MIN_INTERVAL of the last write waits"
    mono[0] += control_mod.MIN_INTERVAL
    c.publish(d, said=3)
    assert len(writes) == 2, "... and is written at the next pass after it"
    c.cost = 0.5  # a write that cost 0.5 s (a large hub): the next change waits 20 x that
    c.publish(d, said=4)
    mono[0] += 9
    c.publish(d, said=4)
    assert len(writes) == 2
    mono[0] += 1
    c.publish(d, said=4)
    assert len(writes) == 3
    mono[0] += control_mod.REFRESH
    c.publish(d, said=4)
    assert len(writes) == 4, "ages and counters refreshed every REFRESH seconds"
    c.dirty = True  # the firewall thread's state changed
    mono[0] += 10
    c.publish(d, said=4)
    assert len(writes) == 5
    with open(rundir.path("status", ".json")) as f:
        assert json.load(f)["daemon"] == {"running": True, "pid": os.getpid(), "updated": int(mono[0] + WALL0)}


def test_every_acl_in_the_feed_is_json_and_names_only_methods_the_object_has():
    """The package's ACL and any other package's (luci-app-wgagent's) that grants on
    the wgagent object: valid JSON objects of access groups, every wgagent function
    one the plugin declares."""
    import glob

    listed = set(json.loads(subprocess.run([rp.busybox(), "sh", rp.PLUGIN, "list"], capture_output=True,
                                           text=True, check=True).stdout))
    feed = os.path.dirname(os.path.dirname(rp.FILES))
    paths = [rp.ACL] + glob.glob(os.path.join(feed, "*", "root", "usr", "share", "rpcd", "acl.d", "*.json"))
    for path in paths:
        with open(path) as f:
            groups = json.load(f)
        assert isinstance(groups, dict) and groups, path
        for group, perms in groups.items():
            for perm in ("read", "write"):
                functions = perms.get(perm, {}).get("ubus", {}).get("wgagent", [])
                assert set(functions) <= listed, (path, group, perm, set(functions) - listed)
