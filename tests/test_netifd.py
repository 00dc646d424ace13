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
