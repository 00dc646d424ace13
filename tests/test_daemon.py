"""The daemon's pass against an in-memory kernel: failed reads and writes at each
call site, clock steps, interfaces unreadable for too long, reload, the backoff,
the idle file. No root: the kernel and the WireGuard backends are stand-ins that
keep state like the real ones (routes added stay until deleted, deleting what is
gone answers ESRCH for a route, ENOENT for a rule), and fail where a test tells them to."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys

import pytest

from wgagent import config
from wgagent import daemon as daemon_mod
from wgagent import reporter as reporter_mod
from wgagent import rundir
from wgagent import ubus as ubus_mod
from wgagent.model import InterfaceState, Peer, Route
from wgagent.rtnl import Link
from wgagent.rtnl_routes import RouteDump

from .ubus_double.server import UbusDouble

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "ubus_double", "bin")
PYMOD = os.path.join(HERE, "ubus_double", "pymod")

K1 = "A" * 43 + "="
K2 = "B" * 43 + "="
WALL0 = 1_800_000_000.0
YEAR = 365 * 86400.0


class Kernel:
    """Links, routes and rules as the kernel keeps them; `fail` names a method that
    raises OSError(errno) until cleared (`once` clears it after one failure)."""

    def __init__(self):
        self.link_map = {"wg0": Link(5, "wg0", "wireguard", True), "eth0": Link(2, "eth0", "", True)}
        self.owned: set[Route] = set()
        self.rule_set: set = set()
        self.fail: dict[str, int] = {}
        self.once = False
        self.calls: list[str] = []

    def _site(self, name):
        self.calls.append(name)
        code = self.fail.get(name)
        if code:
            if self.once:
                del self.fail[name]
            raise OSError(code, f"{name}: {os.strerror(code)}")

    def links(self):
        self._site("links")
        return dict(self.link_map)

    def routes(self, index_to_name):
        self._site("routes")
        return RouteDump(sorted(self.owned), {}, {})

    def rules(self):
        self._site("rules")
        return sorted(self.rule_set)

    def addresses(self, index_to_name):
        self._site("addresses")
        return {"eth0": [("198.51.100.2", 24)]}

    def apply_routes(self, changes):
        self._site("apply_routes")
        return self._apply(self.owned, [(verb, route) for verb, route, _ in changes], errno.ESRCH)

    def apply_rules(self, changes):
        """A batch fails whole at the site of a verb it holds (add_rule, delete_rule)."""
        for verb in sorted({verb for verb, _ in changes}):
            self._site(f"{verb}_rule")
        return self._apply(self.rule_set, changes, errno.ENOENT)

    @staticmethod
    def _apply(held: set, changes, gone: int) -> list[int]:
        """An errno per change: EEXIST for an add of what is held, `gone` for a delete of what is not."""
        out = []
        for verb, item in changes:
            if verb == "add":
                out.append(errno.EEXIST if item in held else 0)
                held.add(item)
            else:
                out.append(0 if item in held else gone)
                held.discard(item)
        return out


class Sources:
    """The WireGuard side: peers per interface, or None for "cannot read"."""

    def __init__(self):
        self.peers: dict[str, tuple | None] = {"wg0": ()}

    def read(self, name, link):
        if link is None:
            return InterfaceState(name, "", (), "interface does not exist")
        peers = self.peers.get(name, ())
        if peers is None:
            return InterfaceState(name, "uapi", None, "cannot read peers: boom")
        return InterfaceState(name, "uapi", peers)


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))

    def events(self, name):
        return [kw for _, event, kw in self.lines if event == name]


class Clocks:
    def __init__(self):
        self.wall, self.mono = WALL0, 1000.0

    def step(self, seconds):
        """Time passes: both clocks move."""
        self.wall += seconds
        self.mono += seconds


def make(cfg_text: str = "", **agent):
    body = "config agent 'main'\n" + "".join(f"\toption {k} '{v}'\n" for k, v in agent.items())
    body += "config interface 'wg0'\n" + cfg_text
    return body


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "RUN_DIR", str(tmp_path / "run"))

    class World:
        daemons: list = []
        kernel = Kernel()
        sources = Sources()
        clocks = Clocks()
        log = Log()
        path = str(tmp_path / "wgagent")

        def daemon(self, text=None, **agent):
            with open(self.path, "w") as f:
                f.write(text if text is not None else make(**agent))
            d = daemon_mod.Daemon(config.load(self.path), self.kernel, self.sources,
                                  clock=lambda: self.clocks.wall, mono=lambda: self.clocks.mono)
            d.log = d.reporter.log = self.log
            self.daemons.append(d)
            return d

        def routes(self):
            return {r.prefix for r in self.kernel.owned}

    world = World()
    yield world
    for d in world.daemons:  # a reload may have started the firewall thread
        if d.firewall is not None and d.firewall.thread.is_alive():
            d.firewall.stop()


def peer(key, ip, handshake, rx=0, endpoint="192.0.2.9:51820"):
    return Peer(key, (ip,), endpoint, handshake, rx, 0, 0)


# --- failures: a pass is skipped, said once, and recovers


SITES = ["links", "routes", "rules", "addresses", "apply_routes", "add_rule", "delete_rule"]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("code", [errno.EINTR, errno.ENOBUFS, errno.ENOMEM, errno.ETIMEDOUT])
def test_a_failure_at_each_call_site_skips_the_pass_says_it_once_and_recovers(world, site, code):
    text = make("\toption source_table '100'\n") + "config return_path 'wan'\n\toption device 'eth0'\n" \
        "\toption table '101'\n\toption gateway '198.51.100.1'\n"
    d = world.daemon(text)
    w = world
    w.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    if site == "delete_rule":
        assert d.reconcile()  # a rule to delete: the peer goes down next
        w.sources.peers["wg0"] = ()
    w.kernel.fail[site] = code

    def said():
        return [kw for _, event, kw in w.log.lines
                if event in ("read_failed", "apply_failed", "rule_add_failed", "rule_remove_failed")]

    # a change the kernel refused is retried next pass (no backoff); a failed read or
    # a failed socket skips the pass
    expected = daemon_mod.Pass.REFUSED if site in ("add_rule", "delete_rule") else daemon_mod.Pass.FAILED
    w.clocks.step(1)
    assert d.reconcile() == expected
    first = said()
    for _ in range(3):
        w.clocks.step(1)
        assert d.reconcile() == expected
    assert said() == first, "said once per distinct error, not on every pass"
    # one line for a pass that could not read or apply; one per rule the kernel refused
    if site in ("add_rule", "delete_rule"):
        assert len({kw["rule"] for kw in first}) == len(first)
    else:
        assert len(first) == 1
    assert first and all(os.strerror(code) in kw["error"] for kw in first)
    del w.kernel.fail[site]
    w.clocks.step(1)
    assert d.reconcile()
    want_routes = {"10.0.31.5/32"} if site != "delete_rule" else set()
    assert w.routes() - {"0.0.0.0/0", "198.51.100.0/24"} == want_routes
    assert bool([r for r in w.kernel.rule_set if r.src == "10.0.31.5"]) == (site != "delete_rule")
    if site in ("links", "routes", "rules", "addresses", "apply_routes"):
        assert len(w.log.events("read_recovered")) == 1


def test_a_failure_mid_apply_leaves_the_view_dirty_and_the_next_pass_reads_again(world):
    d = world.daemon()
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    world.kernel.fail["apply_routes"] = errno.ENOBUFS
    assert d.reconcile() == daemon_mod.Pass.FAILED and d.reconciler.dirty
    del world.kernel.fail["apply_routes"]
    world.kernel.calls.clear()
    assert d.reconcile()
    assert "routes" in world.kernel.calls, "a pass after a failed apply reads the kernel again"
    assert world.routes() == {"10.0.31.5/32"}


def test_backoff_doubles_to_the_poll_interval_and_resets(world):
    d = world.daemon(poll_interval=5)
    runner = daemon_mod.Runner(d, events=None)
    world.kernel.fail["links"] = errno.EINTR
    assert [runner._pass() for _ in range(6)] == [1, 2, 4, 5, 5, 5]
    del world.kernel.fail["links"]
    assert runner._pass() == 5 and runner.failures == 0


def test_a_refused_change_is_retried_every_pass_without_backoff(world):
    """A route the kernel keeps refusing (IPv6 disabled on the device) must not hold
    back the others: the pass is not a failure, events are still handled at once."""
    d = world.daemon(poll_interval=5)
    runner = daemon_mod.Runner(d, events=None)
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    real = world.kernel.apply_routes
    world.kernel.apply_routes = lambda changes: [errno.EAFNOSUPPORT] * len(changes)
    assert [runner._pass() for _ in range(3)] == [5, 5, 5] and runner.failures == 0
    assert world.log.events("route_add_failed") and len(world.log.events("route_add_failed")) == 1
    world.kernel.apply_routes = real
    assert d.reconcile() == daemon_mod.Pass.WHOLE and world.routes() == {"10.0.31.5/32"}


def test_rule_changes_go_as_one_batch_and_a_refused_one_is_said_alone(world):
    """A pass's rule adds are one call (one batch); the kernel refuses one of them
    (EINVAL): that rule alone is said, once, its error as an OSError reads; the others
    are added and said; it is retried every pass until the kernel takes it."""
    d = world.daemon(make("\toption source_table '100'\n"))
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5), peer(K2, "10.0.31.6/32", WALL0 - 5))
    real = world.kernel.apply_rules
    calls = []

    def refuse_one(changes):
        calls.append([verb for verb, _ in changes])
        done = iter(real([c for c in changes if c[1].src != "10.0.31.6"]))
        return [errno.EINVAL if rule.src == "10.0.31.6" else next(done) for _, rule in changes]
    world.kernel.apply_rules = refuse_one
    for _ in range(3):
        world.clocks.step(1)
        assert d.reconcile() == daemon_mod.Pass.REFUSED
    assert calls[0] == ["add"] * 3, "the suppress rule and both source rules in one call"
    warnings = [(event, kw) for level, event, kw in world.log.lines if level == "warning"]
    assert warnings == [("rule_add_failed", {"error": str(OSError(errno.EINVAL, os.strerror(errno.EINVAL))),
                                             "rule": "from 10.0.31.6/32 lookup 100 pref 5100",
                                             "retry": "every pass; logged again if the error changes"})]
    assert said_rules(world, "rule_added") == [
        "from 10.0.31.5/32 lookup 100 pref 5100", "from all lookup 254 suppress_prefixlength 0 pref 5000"]
    assert calls[1:] == [["add"], ["add"]], "only the refused one is tried again"
    world.kernel.apply_rules = real
    world.clocks.step(1)
    assert d.reconcile() == daemon_mod.Pass.WHOLE
    assert {r.src for r in world.kernel.rule_set} == {"", "10.0.31.5", "10.0.31.6"}
    assert "from 10.0.31.6/32 lookup 100 pref 5100" in said_rules(world, "rule_added")


def test_rules_already_there_or_already_gone_are_done(world):
    """EEXIST on an add (the rule is there, with our protocol) and ENOENT on a delete
    (somebody removed it first) are done: said as added and removed, not as failures."""
    d = world.daemon(make("\toption source_table '100'\n"))
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    world.kernel.apply_rules = lambda changes: [errno.EEXIST if verb == "add" else errno.ENOENT
                                                for verb, _ in changes]
    assert d.reconcile() == daemon_mod.Pass.WHOLE
    world.sources.peers["wg0"] = ()
    world.clocks.step(1)
    assert d.reconcile() == daemon_mod.Pass.WHOLE
    assert [event for level, event, _ in world.log.lines if level == "warning"] == []
    both = ["from 10.0.31.5/32 lookup 100 pref 5100", "from all lookup 254 suppress_prefixlength 0 pref 5000"]
    assert said_rules(world, "rule_added") == both and said_rules(world, "rule_removed") == both


def said_rules(world, event: str) -> list[str]:
    """The rules of every line of that event, sorted (a line holds an owner's rules)."""
    return sorted(rule for kw in world.log.events(event) for rule in kw["rules"].split("; "))


def test_a_burst_of_refused_changes_is_one_warning_not_one_per_route(world):
    """A read that outlived its interface (deleted while it was read): the pass plans
    every route of it, and the kernel refuses each one (ENODEV). 1,500 warnings in one
    pass would wipe logread's 64 KiB ring buffer; one line per kind and error says it."""
    d = world.daemon()
    world.sources.peers["wg0"] = tuple(peer(f"{i:043d}=", f"10.64.{i // 256}.{i % 256}/32", WALL0 - 5)
                                       for i in range(1500))
    world.kernel.apply_routes = lambda changes: [errno.ENODEV] * len(changes)
    for _ in range(3):
        world.clocks.step(1)
        assert d.reconcile() == daemon_mod.Pass.REFUSED
    warnings = [(event, kw) for level, event, kw in world.log.lines if level == "warning"]
    assert warnings == [("routes_add_failed", {"iface": "wg0", "error": os.strerror(errno.ENODEV), "count": 1500,
                                               "first": "10.64.0.0/32,10.64.0.1/32,10.64.0.10/32,10.64.0.100/32,"
                                                        "10.64.0.101/32,…",
                                               "detail": "one line each at log_level debug"})]


def test_a_programming_error_is_not_swallowed(world):
    d = world.daemon()
    world.kernel.fail["links"] = 0

    def broken():
        raise KeyError("a bug")

    world.kernel.links = broken
    with pytest.raises(KeyError):
        d.reconcile()


def test_stop_removes_nothing_when_the_kernel_cannot_be_read(world):
    d = world.daemon()
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    assert d.reconcile()
    world.kernel.fail["routes"] = errno.ENOMEM
    assert d.stop("SIGTERM") is False
    assert world.routes() == {"10.0.31.5/32"}
    assert world.log.events("stop_cleanup_failed")


# --- an interface that cannot be read


def test_an_interface_unreadable_past_handshake_timeout_loses_its_routes(world):
    d = world.daemon(handshake_timeout=180)
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.sources.peers["wg0"] = None  # a stale socket, a hung wireguard-go
    for _ in range(17):
        world.clocks.step(10)
        d.reconcile()
    assert world.routes() == {"10.0.31.5/32"}, "unreadable for 160 s: nobody said the peer left"
    world.clocks.step(20)
    d.reconcile()
    assert world.routes() == {"10.0.31.5/32"}, "180 s: not yet longer than handshake_timeout"
    world.clocks.step(10)
    d.reconcile()
    assert world.routes() == set(), "unreadable for 190 s > handshake_timeout: nobody can vouch for it"
    world.clocks.step(10)
    d.reconcile()
    assert len(world.log.events("interface_routes_released")) == 1
    # readable again: the peer, still handshaken, gets its route back
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", world.clocks.wall - 5),)
    world.clocks.step(1)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.sources.peers["wg0"] = None
    for seconds in (1, 200):
        world.clocks.step(seconds)
        d.reconcile()
    assert world.routes() == set()
    assert len(world.log.events("interface_routes_released")) == 2, "said again for a new stretch"


# --- clock steps: handshake ages come from the monotonic clock


@pytest.mark.parametrize("idle", [0, 30])
def test_a_clock_stepped_forward_by_ten_years_withdraws_nothing(world, idle):
    d = world.daemon(make(f"\toption idle_timeout '{idle}'\n"))
    p = peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100)
    world.sources.peers["wg0"] = (p,)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.clocks.wall += 10 * YEAR  # NTP at boot on a router without RTC
    for i in range(5):
        world.clocks.step(2)
        world.sources.peers["wg0"] = (p._replace(rx_bytes=200 + i),)  # keepalives keep arriving
        d.reconcile()
        assert world.routes() == {"10.0.31.5/32"}
    assert not world.log.events("route_removed") and not world.log.events("peer_down")
    # its next handshake is stamped in the new time: still up
    world.sources.peers["wg0"] = (p._replace(last_handshake=world.clocks.wall - 1, rx_bytes=300),)
    world.clocks.step(2)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}


@pytest.mark.parametrize("idle", [0, 30])
def test_a_clock_stepped_back_by_thirty_days_keeps_no_departed_peer(world, idle):
    d = world.daemon(make(f"\toption idle_timeout '{idle}'\n"), handshake_timeout=180)
    p = peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100)
    world.sources.peers["wg0"] = (p,)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    world.clocks.wall -= 30 * 86400  # the handshake now looks 30 days in the future
    # the peer leaves: no new handshake, no rx
    world.clocks.step(100 if not idle else 20)
    d.reconcile()
    assert world.routes() == {"10.0.31.5/32"}
    if idle:
        world.clocks.step(20)  # its rx stopped 40 s ago: idle, whatever the clocks say
        d.reconcile()
        assert world.routes() == set()
        assert world.log.events("peer_down")[0]["reason"] == "idle"
        return
    world.clocks.step(90)  # 195 s after its handshake, on the monotonic clock
    d.reconcile()
    assert world.routes() == set()
    assert world.log.events("peer_down")[0]["reason"] == "handshake-expired"


def test_a_fresh_start_after_a_step_ages_a_peer_on_the_wall_clock(world):
    """A peer seen for the first time (start-up, adoption after kill -9) has only the
    wall-clock age to go by."""
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5), peer(K2, "10.0.31.6/32", WALL0 - 400))
    d = world.daemon(handshake_timeout=180)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    # the clock steps back while nobody runs; a new daemon starts
    world.clocks.wall -= 30 * 86400
    d2 = world.daemon(handshake_timeout=180)
    assert d2.reconcile() and world.routes() == {"10.0.31.5/32", "10.0.31.6/32"}, \
        "stamped in the future: counts as fresh (age 0) at first sight"
    world.clocks.step(181)
    d2.reconcile()
    assert world.routes() == set(), "and ages on the monotonic clock from then on"


# --- reload


def test_a_reload_with_a_bad_config_keeps_the_running_one(world):
    d = world.daemon(poll_interval=3)
    with open(world.path, "w") as f:
        f.write("config agent 'main'\n\toption poll_interval 'soon'\n")
    assert d.reload() is False
    assert d.config.agent.poll_interval == 3
    assert "poll_interval" in world.log.events("reload_failed")[0]["error"]


def test_a_reload_of_an_emptied_file_keeps_the_running_config(world):
    """A file cut to nothing (an editor's truncate, a full disk) is no config that
    means "route nothing": the running one stays, and says so once."""
    d = world.daemon()
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    open(world.path, "w").close()
    assert d.reload() is False
    assert [i.name for i in d.config.interfaces] == ["wg0"]
    world.clocks.step(1)
    assert d.reconcile() and world.routes() == {"10.0.31.5/32"}
    (line,) = world.log.events("reload_failed")
    assert line["error"].startswith(world.path + ": no sections")


@pytest.fixture(params=["python-ubus", "ubus-cli"])
def transport(request, monkeypatch):
    if request.param == "python-ubus":
        monkeypatch.syspath_prepend(PYMOD)
        sys.modules.pop("ubus", None)
        monkeypatch.setattr(ubus_mod, "_python_client", None)
    else:
        monkeypatch.setitem(sys.modules, "ubus", None)
        monkeypatch.setenv("WGAGENT_UBUS_CLI", os.path.join(BIN, "ubus"))
    yield request.param
    if request.param == "python-ubus":
        mod = sys.modules.get("ubus")
        if mod is not None and mod.get_connected():
            mod.disconnect()
        sys.modules.pop("ubus", None)


def test_a_reload_rebinds_the_route_loops_ubus_client(world, tmp_path, transport):
    """netifd is asked over the bus the running config names: after a reload that
    changes ubus_socket, the new one."""
    buses = []
    for name, device in (("a", "eth0"), ("b", "eth1")):
        (tmp_path / name).mkdir()
        bus = UbusDouble(str(tmp_path / f"{name}.sock"), str(tmp_path / name))
        bus.add_interface("wan", device=device)
        buses.append(bus)
    world.kernel.link_map["eth1"] = Link(3, "eth1", "", True)
    rp = "config return_path 'wan'\n\toption network 'wan'\n\toption table '101'\n\toption gateway '198.51.100.1'\n"
    try:
        d = world.daemon(f"config agent 'main'\n\toption ubus_socket '{buses[0].path}'\n" + rp)
        assert d.reconcile()
        assert [p.device for p in d.reconciler.view.paths] == ["eth0"]
        with open(world.path, "w") as f:
            f.write(f"config agent 'main'\n\toption ubus_socket '{buses[1].path}'\n" + rp)
        assert d.reload()
        assert d.reconcile()
        assert [p.device for p in d.reconciler.view.paths] == ["eth1"], "asked the new bus"
    finally:
        for bus in buses:
            bus.close()


# --- the idle file


def test_the_idle_file_is_private_and_never_followed_through_a_symlink(world, tmp_path):
    run = tmp_path / "run"
    d = world.daemon(make("\toption idle_timeout '10'\n"))
    p = peer(K1, "10.0.31.5/32", WALL0 - 5, rx=100)
    world.sources.peers["wg0"] = (p,)
    d.reconcile()
    world.clocks.step(11)
    d.reconcile()  # no rx for 11 s: idle
    path = reporter_mod.idle_state_path()
    assert stat.S_IMODE(os.lstat(run).st_mode) == 0o700
    with open(path) as f:
        assert json.load(f)["idle"] == [["wg0", K1]]
    assert stat.S_IMODE(os.lstat(path).st_mode) & 0o022 == 0
    assert reporter_mod.read_idle_state() == {("wg0", K1)}
    # somebody puts symlinks where the file and a predictable temporary name go: the
    # file's is replaced, and neither target is written
    target = tmp_path / "target"
    target.write_text("keep")
    os.unlink(path)
    os.symlink(target, path)
    os.symlink(target, path + ".tmp")
    assert reporter_mod.read_idle_state() == set(), "read never follows it"
    world.sources.peers["wg0"] = (p._replace(rx_bytes=200),)
    world.clocks.step(1)
    d.reconcile()
    assert target.read_text() == "keep" and not os.path.islink(path)
    assert [n for n in os.listdir(run) if n.endswith(".tmp") and not os.path.islink(run / n)] == []
    d.reporter.idle.remove()
    assert not os.path.exists(path)


def test_the_idle_directory_must_be_ours(world, tmp_path):
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run)
    d = world.daemon(make("\toption idle_timeout '10'\n"))
    world.sources.peers["wg0"] = (peer(K1, "10.0.31.5/32", WALL0 - 5),)
    d.reconcile()
    world.clocks.step(11)
    d.reconcile()
    assert os.listdir(elsewhere) == []
    assert world.log.events("state_write_failed")


def test_a_route_that_would_carry_the_peers_endpoint_is_skipped_and_said_once(world):
    d = world.daemon()
    p = Peer(K1, ("0.0.0.0/1", "128.0.0.0/1"), "203.0.113.7:51820", WALL0 - 5, 0, 0, 0)
    world.sources.peers["wg0"] = (p,)
    for _ in range(3):
        world.clocks.step(1)
        assert d.reconcile()
    assert world.routes() == {"0.0.0.0/1"}, "128.0.0.0/1 holds 203.0.113.7: the tunnel would carry itself"
    said = world.log.events("route_skipped")
    assert len(said) == 1 and said[0]["prefix"] == "128.0.0.0/1" and said[0]["endpoint"] == "203.0.113.7"
    assert said[0]["peer"] == K1[:8]
    # it roams to an address inside the other half: the skip follows, said again
    world.sources.peers["wg0"] = (p._replace(endpoint="10.9.9.9:51820"),)
    world.clocks.step(1)
    assert d.reconcile() and world.routes() == {"128.0.0.0/1"}
    assert [kw["prefix"] for kw in world.log.events("route_skipped")] == ["128.0.0.0/1", "0.0.0.0/1"]


# --- bursts: built brief, said the same


def _burst_run(world, monkeypatch, brief: bool):
    """60 peers come up, 40 of them roam, 30 are removed; returns every
    line said (but debug's) and every notifier call."""
    world.kernel, world.sources, world.log, world.clocks = Kernel(), Sources(), Log(), Clocks()
    monkeypatch.setattr(reporter_mod.Reporter, "_brief", BRIEF if brief else lambda self, count: False)
    d = world.daemon(make("\toption description 'x'\n"))
    heard = []
    d.reporter.notifiers = [lambda event, fields: heard.append((event, fields))]
    keys = [f"{i:02d}" + "C" * 41 + "=" for i in range(60)]
    world.sources.peers["wg0"] = tuple(peer(k, f"10.0.31.{i}/32", WALL0 - 5, rx=100)
                                       for i, k in enumerate(keys))
    assert d.reconcile()
    world.clocks.step(1)
    world.sources.peers["wg0"] = tuple(p._replace(endpoint=f"192.0.2.{i}:4000", rx_bytes=200) if i < 40 else p
                                       for i, p in enumerate(world.sources.peers["wg0"]))
    assert d.reconcile()
    world.clocks.step(1)
    world.sources.peers["wg0"] = world.sources.peers["wg0"][:30]
    assert d.reconcile()
    return [line for line in world.log.lines if line[0] != "debug"], heard


BRIEF = reporter_mod.Reporter._brief


def test_a_burst_built_brief_is_said_as_in_full(world, monkeypatch):  # noqa: F811
    """A hub starting builds no log record per peer and route only to sum them up:
    the summary lines and the notifiers' summaries are those of the full records."""
    full = _burst_run(world, monkeypatch, brief=False)
    brief = _burst_run(world, monkeypatch, brief=True)
    events = [event for _, event, _ in brief[0]]
    for said in ("peers_up", "routes_added", "peers_endpoint_changed", "peers_down", "routes_removed"):
        assert said in events, events
    assert brief == full
