"""netifd names -> kernel devices (wgagent.netifd), against netifd's
network.interface.<name> objects on the ubus double, over both transports."""

from __future__ import annotations

import pytest

from wgagent import netifd


def test_netifd_resolve(double, client):
    double.add_interface("wan", proto="pppoe", device="eth1", l3_device="pppoe-wan")
    double.add_interface("lan", device="br-lan")
    double.add_interface("wwan", proto="dhcp", device="wlan0", up=False)
    assert netifd.resolve("wan", client) == "pppoe-wan"  # the device packets leave by
    assert netifd.resolve("lan", client) == "br-lan"
    with pytest.raises(netifd.ResolveError, match="network 'wwan' is down"):
        netifd.resolve("wwan", client)  # not its configured wlan0
    with pytest.raises(netifd.ResolveError, match="network 'nope' unknown to netifd"):
        netifd.resolve("nope", client)
    with pytest.raises(netifd.ResolveError, match="no ubus here"):
        netifd.resolve("wan", None)


class Answers:
    """A ubus client whose netifd answers `status` with whatever it is given."""

    def __init__(self, answer):
        self.answer = answer

    def call(self, obj, method, args, timeout=10):
        return self.answer


@pytest.mark.parametrize("answer", [
    [], ["up"], "up", None, 5,  # not an object
    {"up": True, "l3_device": 5}, {"up": True, "l3_device": ["eth0"]}, {"up": True, "device": {"name": "eth0"}},
], ids=repr)
def test_an_answer_of_another_shape_is_a_transient_resolve_error(answer):
    with pytest.raises(netifd.ResolveError) as e:
        netifd.resolve("wan", Answers(answer))
    assert e.value.transient and "network 'wan'" in str(e.value)


class ListAnswer:
    """A netifd object answering an array where netifd answers a table."""

    def call(self, method, args):
        return ["wan", "up"]


def test_a_malformed_answer_over_either_transport_is_a_resolve_error(double, client):
    double.objects["network.interface.wan"] = ListAnswer()
    with pytest.raises(netifd.ResolveError) as e:
        netifd.resolve("wan", client)
    assert e.value.transient and "not an object" in str(e.value)


def test_resolution_does_not_wait_behind_a_slow_firewall_call():
    """python-ubus has one connection per process, shared with the firewall thread:
    the route loop's short call gives up rather than wait for a long one."""
    import threading
    import time

    from wgagent import netifd
    from wgagent.ubus import PythonUbus

    release = threading.Event()

    class Module:  # python-ubus, with rpcd stuck in the firewall's call
        def get_connected(self):
            return True

        def get_socket_path(self):
            return "/var/run/ubus/ubus.sock"

        def call(self, obj, method, args, timeout):
            if obj == "uci":
                release.wait(10)
                return []
            return [{"up": True, "l3_device": "eth0"}]

    client = PythonUbus(Module(), "")
    slow = threading.Thread(target=client.call, args=("uci", "commit", {}))
    slow.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(netifd.ResolveError) as e:
            netifd.resolve("wan", client, timeout=0.2)
        assert e.value.transient and time.monotonic() - t0 < 1
    finally:
        release.set()
        slow.join()
    assert netifd.resolve("wan", client, timeout=0.2) == "eth0"
