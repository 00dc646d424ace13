"""The observer: return paths resolved through netifd (ubus), kept through its hiccups. No root."""


from tests.test_policy import ETH, NET, NO_DEVICE, NOW, TIMEOUT, wanted
from tests.test_policy import ADDRS, GWS  # noqa: F401  (FakeRtnl's answers)
from wgagent import config
from wgagent import observer as observer_mod
from wgagent.policy import desired_rules, desired_state
from wgagent.reporter import Reporter


class Recorder:
    def __init__(self, warned):
        self.warned = warned

    def warning(self, event, **kw):
        self.warned.append((event, kw))

    def __getattr__(self, level):
        return lambda event, **kw: None


class Reading:
    """An Observer over FakeRtnl, keeping its last view as the daemon does."""

    def __init__(self, c):
        self.observer = observer_mod.Observer(c, FakeRtnl(), sources=None)
        self.view = None

    def _read_kernel(self, links, mono):
        self.view = self.observer.kernel(links, mono)


class FakeRtnl:
    """The kernel side of Observer.kernel: one device eth0 with an address."""

    def __init__(self):
        from wgagent.rtnl_routes import RouteDump

        self.dump = RouteDump([], {}, dict(GWS))

    def routes(self, index_to_name):
        return self.dump

    def addresses(self, index_to_name):
        return {k: list(v) for k, v in ADDRS.items()}

    def rules(self):
        return []


class FakeUbus:
    """netifd behind ubus: answers with `device`, or fails with `status` (a ubus code)."""

    def __init__(self):
        self.device, self.status, self.calls = "eth0", 0, []

    def call(self, obj, method, args, timeout=10):
        from wgagent.ubus import UbusError

        self.calls.append((obj, method, timeout))
        if self.status:
            raise UbusError(self.status, {7: "Request timed out", 4: "Not found"}[self.status])
        return {"up": bool(self.device), "l3_device": self.device} if self.device else {"up": False}


def test_the_wan_device_stands_through_a_ubus_hiccup():
    c = config.Config(path="t", return_paths=(NET, config.ReturnPathConfig("wan6", 101, network="wan")))
    d = Reading(c)
    bus = d.observer.ubus = FakeUbus()
    d._read_kernel(ETH, 0.0)
    assert [p.present for p in d.view.paths] == [True, True]
    assert len(bus.calls) == 1, "one call per read for a network however many paths name it"
    assert bus.calls[0] == ("network.interface.wan", "status", observer_mod.RESOLVE_TIMEOUT)
    assert observer_mod.RESOLVE_TIMEOUT <= 1
    want = set(wanted(c, d.view.paths))
    bus.status = 7  # rpcd hangs: the call times out
    d._read_kernel(ETH, 1.0)
    assert [(p.device, p.present, bool(p.stale)) for p in d.view.paths] == [("eth0", True, True)] * 2
    assert set(wanted(c, d.view.paths)) == want, "rules and table routes stay"
    # an event storm while ubus is down: no call (and no wait) until the backoff ends
    for t in (1.5, 2.0, 5.9):
        d._read_kernel(ETH, t)
    assert len(bus.calls) == 2
    assert d.view.paths[0].present and "Request timed out" in d.view.paths[0].stale
    # the device goes from the kernel while ubus is still down: the path goes
    d._read_kernel({}, 6.5)
    assert len(bus.calls) == 3 and not d.view.paths[0].present
    assert wanted(c, d.view.paths) == set()
    # ... and returns with it
    d._read_kernel(ETH, 6.6)
    assert d.view.paths[0].present and wanted(c, d.view.paths) == want
    # ubus back (netifd restarted: Not found first, then the answer)
    bus.status = 4
    d._read_kernel(ETH, 20.0)
    assert d.view.paths[0].present and "Not found" in d.view.paths[0].stale
    bus.status = 0
    d._read_kernel(ETH, 30.0)
    assert d.view.paths[0].present and not d.view.paths[0].stale
    # netifd says the network has no device (ifdown): the path goes although eth0 is still there
    bus.device = ""
    d._read_kernel(ETH, 40.0)
    assert not d.view.paths[0].present and d.view.paths[0].error == NO_DEVICE
    bus.status = 7  # and a hiccup now has no device to keep
    d._read_kernel(ETH, 50.0)
    assert not d.view.paths[0].present


def test_a_ubus_hiccup_is_said_once_per_change():
    c = config.Config(path="t", return_paths=(NET,))
    d = Reading(c)
    bus = d.observer.ubus = FakeUbus()
    warned = []
    reporter = Reporter(Recorder(warned), str)
    for t, status in ((0.0, 0), (1.0, 7), (2.0, 7), (10.0, 7), (20.0, 0), (30.0, 0)):
        bus.status = status
        d._read_kernel(ETH, t)
        reporter.path_problems(desired_rules(c, desired_state(c, [], NOW, {}, t), d.view.paths))
    assert warned == [("return_path_problem", {"detail": f"{TIMEOUT}; return_path 'wan' keeps device eth0, "
                                                         "the last one netifd named"})]
