"""Where a WireGuard interface's peers come from: one backend per implementation,
picked per interface in one place (PeerSources.pick).

A backend is a small interface, as wireguard-tools' ipc_* functions and unetd's
wg_ops are (Backend below): its kind, whether it serves an interface, its peers,
close. The backends are tried in order and the first that serves an interface reads
it: the kernel's first (wg_kernel: a link of kind "wireguard", whatever sockets lie
around), then userspace (wg_uapi: wireguard-go, boringtun). A third implementation
is a new module with one such class, put in the list here.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .model import InterfaceState, Peer
from .rtnl import Link
from .wg_kernel import KernelWireGuard
from .wg_uapi import SOCKET_DIR, UapiWireGuard


class Backend(Protocol):
    kind: str  # InterfaceState.backend: "kernel", "uapi"

    def serves(self, name: str, link: Link) -> str:
        """Why this backend does not read interface `name` (shown in the "not a
        WireGuard interface" error); the empty string when it does. Runs every poll."""

    def read_peers(self, ifname: str) -> tuple[Peer, ...]:
        """The interface's peers; an OSError (the backend's own subclass) when it
        cannot read them, and no other exception whatever the other side sends."""

    # optional: ports, {interface: its listen port at the last read} (wake.py watches them)

    def close(self) -> None:
        ...


class PeerSources:
    def __init__(self, uapi_dir: str = SOCKET_DIR, backends: Sequence[Backend] | None = None):
        # the order is the choice: see the module's docstring
        self.backends: list[Backend] = list(backends) if backends is not None else [
            KernelWireGuard(), UapiWireGuard(uapi_dir)]

    def pick(self, name: str, link: Link) -> tuple[Backend | None, list[str]]:
        """The backend that reads this interface (None: no backend serves it), and
        why each one tried before it did not."""
        reasons = []
        for backend in self.backends:
            why = backend.serves(name, link)
            if not why:
                return backend, reasons
            reasons.append(why)
        return None, reasons

    def read(self, name: str, link: Link | None) -> InterfaceState:
        """Peers of one interface. peers=None means 'could not read, try again';
        peers=() with an error means 'not a WireGuard interface (now)'."""
        if link is None:
            return InterfaceState(name, "", (), "interface does not exist")
        backend, reasons = self.pick(name, link)
        if backend is None:
            return InterfaceState(name, "", (), f"not a WireGuard interface ({', '.join(reasons)})")
        try:
            peers = backend.read_peers(name)
        except OSError as e:
            return InterfaceState(name, backend.kind, None, f"cannot read peers: {e}")
        return InterfaceState(name, backend.kind, peers, listen_port=getattr(backend, "ports", {}).get(name, 0))

    def close(self):
        for backend in self.backends:
            backend.close()
