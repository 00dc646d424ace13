"""netifd names -> kernel devices, through ubus (`network.interface.NAME status`).

Used for `option network 'wan'` on a return path: the device behind a netifd
interface changes (pppoe-wan appears when PPPoE connects), so it is asked again on
every resync. Where ubus is missing (a plain Linux host) the answer is an error
that tells the user to name the device instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess


class ResolveError(LookupError):
    pass


def resolve(network: str, socket_path: str | None = None, timeout: float = 3.0) -> str:
    ubus = shutil.which("ubus")
    if ubus is None:
        raise ResolveError(f"cannot resolve network '{network}': no ubus here; use option device instead")
    cmd = [ubus] + (["-s", socket_path] if socket_path else []) + ["call", f"network.interface.{network}", "status"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ResolveError(f"ubus did not answer for network '{network}' within {timeout:g}s") from None
    if r.returncode != 0:
        raise ResolveError(f"network '{network}' unknown to netifd ({r.stderr.strip() or r.returncode})")
    try:
        status = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise ResolveError(f"unexpected answer from ubus for network '{network}'") from None
    device = status.get("l3_device") or status.get("device")
    if not device:
        raise ResolveError(f"network '{network}' has no device now (up: {status.get('up')})")
    return device
