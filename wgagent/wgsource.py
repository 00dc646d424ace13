"""Where a WireGuard interface's peers come from, picked per interface.

A link of kind "wireguard" is the kernel's, whatever sockets lie around (a leftover
UAPI socket must not take a kernel interface's peers away); otherwise a UAPI socket
means a userspace implementation (wireguard-go, boringtun).
"""

from __future__ import annotations

from . import wg_uapi
from .model import InterfaceState
from .rtnl import Link
from .wg_kernel import KernelWireGuard


class PeerSources:
    def __init__(self, uapi_dir: str = wg_uapi.SOCKET_DIR):
        self.uapi_dir = uapi_dir
        self.kernel = KernelWireGuard()
        self.uapi_memo: dict[str, dict] = {}  # per interface: see wg_uapi.parse

    def backend(self, name: str, link: Link | None) -> str:
        if link is None:
            return ""
        if link.kind == "wireguard":
            return "kernel"
        if wg_uapi.exists(name, self.uapi_dir):
            return "uapi"
        return ""

    def read(self, name: str, link: Link | None) -> InterfaceState:
        """Peers of one interface. peers=None means 'could not read, try again';
        peers=() with an error means 'not a WireGuard interface (now)'."""
        if link is None:
            return InterfaceState(name, "", (), "interface does not exist")
        backend = self.backend(name, link)
        if not backend:
            return InterfaceState(name, "", (), f"not a WireGuard interface (kind {link.kind or 'none'!r}, "
                                                f"no UAPI socket)")
        try:
            if backend == "uapi":
                peers = wg_uapi.read_peers(name, self.uapi_dir, self.uapi_memo.setdefault(name, {}))
            else:
                peers = self.kernel.read_peers(name)
        except OSError as e:
            return InterfaceState(name, backend, None, f"cannot read peers: {e}")
        return InterfaceState(name, backend, peers)

    def close(self):
        self.kernel.close()
