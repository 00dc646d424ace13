"""netifd names -> kernel devices, through ubus (`network.interface.NAME status`).

Used for `option network 'wan'` on a return path: the device behind a netifd
interface changes (pppoe-wan appears when PPPoE connects), so it is asked again on
every resync. Where ubus is missing (a plain Linux host) the answer is an error
that tells the user to name the device instead.
"""

from __future__ import annotations


class ResolveError(LookupError):
    pass


def resolve(network: str, client) -> str:
    """client: a wgagent.ubus client, or None where there is no ubus."""
    if client is None:
        raise ResolveError(f"cannot resolve network '{network}': no ubus here; use option device instead")
    try:
        status = client.call(f"network.interface.{network}", "status", {}, timeout=3)
    except OSError as e:
        # an interface netifd does not know has no object: NOT_FOUND
        raise ResolveError(f"network '{network}' unknown to netifd ({e.strerror})") from None
    # netifd gives l3_device (the device packets leave by, pppoe-wan for PPPoE) only
    # while the interface is up; "device" is the configured one and stays when down
    if not status.get("up"):
        raise ResolveError(f"network '{network}' is down (device {status.get('device') or 'none'})")
    device = status.get("l3_device") or status.get("device")
    if not device:
        raise ResolveError(f"network '{network}' is up but has no device")
    return device
