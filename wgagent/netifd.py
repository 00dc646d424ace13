"""netifd names -> kernel devices, through ubus (`network.interface.NAME status`).

Used for `option network 'wan'` on a return path: the device behind a netifd
interface changes (pppoe-wan appears when PPPoE connects), so it is asked again
whenever the daemon re-reads the kernel (an rtnetlink event, a failed change, the
periodic resync). Where ubus is missing (a plain Linux host) the answer is an error
that tells the user to name the device instead.
"""

from __future__ import annotations

from .ubus import NOT_FOUND


class ResolveError(LookupError):
    """transient: netifd could not be asked (ubus down or slow, or netifd restarting
    and its objects not registered yet), as opposed to an answer that there is no
    device. The daemon keeps the last device it learned through a transient error."""

    def __init__(self, text: str, transient: bool = False):
        super().__init__(text)
        self.transient = transient


def resolve(network: str, client, timeout: float = 3) -> str:
    """client: a wgagent.ubus client, or None where there is no ubus."""
    if client is None:
        raise ResolveError(f"cannot resolve network '{network}': no ubus here; use option device instead")
    try:
        status = client.call(f"network.interface.{network}", "status", {}, timeout=timeout)
    except OSError as e:
        # NOT_FOUND: netifd has no such interface, or is restarting and has not
        # registered its objects yet; either way the daemon keeps what it knew
        if getattr(e, "status", None) == NOT_FOUND:
            raise ResolveError(f"network '{network}' unknown to netifd ({e.strerror})", transient=True) from None
        raise ResolveError(f"cannot resolve network '{network}': ubus call network.interface.{network} status "
                           f"failed ({e.strerror})",
                           transient=True) from None
    # the route loop catches ResolveError only: an answer of another shape is one too
    # (transient: the next read asks again), never an AttributeError that ends the daemon
    if not isinstance(status, dict):
        raise ResolveError(f"cannot resolve network '{network}': netifd's answer is a "
                           f"{type(status).__name__}, not an object", transient=True)
    # netifd gives l3_device (the device packets leave by, pppoe-wan for PPPoE) only
    # while the interface is up; "device" is the configured one and stays when down
    if not status.get("up"):
        raise ResolveError(f"network '{network}' is down (device {status.get('device') or 'none'})")
    device = status.get("l3_device") or status.get("device")
    if not device:
        raise ResolveError(f"network '{network}' is up but has no device")
    if not isinstance(device, str):
        raise ResolveError(f"cannot resolve network '{network}': netifd names its device {device!r}, "
                           "not a string", transient=True)
    return device
