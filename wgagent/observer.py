"""The observer: what the kernel, WireGuard and netifd say now, in one snapshot.

Two reads of different cost. peers() runs every pass: the links and one dump per
WireGuard interface. kernel() reads the routes, rules and addresses (costly at
scale) and asks netifd for the return paths' devices; the daemon calls it only when
rtnetlink said somebody else changed something, when its own change failed, or at
the periodic resync. A failed read raises OSError and changes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import netifd, ubus
from .config import Config
from .model import InterfaceState, Route, Rule
from .policy import PathState, Resolution, return_path_state

RESOLVE_TIMEOUT = 1.0  # seconds for one ubus call resolving a return path's network
RESOLVE_BACKOFF = 5.0  # seconds without asking again after such a call failed


@dataclass
class KernelView:
    """The kernel's routes, rules and return-path devices as last read."""

    owned: set[Route] = field(default_factory=set)
    # (table, dst, prefixlen) -> the unicast routes of other protocols there
    # (model.Foreign), dated by the reconciler (policy.date_foreign)
    foreign: dict = field(default_factory=dict)
    rules: set[Rule] = field(default_factory=set)
    paths: list[PathState] = field(default_factory=list)
    read_at: float = -1e18  # monotonic


class Observer:
    def __init__(self, config: Config, rtnl, sources):
        self.config = config
        self.rtnl = rtnl
        self.sources = sources
        self.ubus = None  # connected on first use (a network name to resolve)
        self.path_devices: dict[str, str] = {}  # network -> the device netifd last named for it
        self._resolve_failures: dict[str, str] = {}
        self._resolve_quiet_until = -1e18

    def rebind(self, config: Config) -> None:
        """A new config: its ubus_socket may name another bus, so connect afresh."""
        self.config = config
        self.ubus = None
        self._resolve_quiet_until = -1e18

    def peers(self, only: set[str] | None = None, previous=()):
        """(links by name, an InterfaceState per configured interface). An interface
        that cannot be read has peers=None (the backends say why); OSError only when
        the links themselves cannot be read.

        only: read just these interfaces (a handshake seen on the wire, wake.py); the
        others keep their state from `previous` (the last pass's), as read then."""
        links = self.rtnl.links()
        if only is None:
            return links, [self.sources.read(i.name, links.get(i.name)) for i in self.config.interfaces]
        before = {s.name: s for s in previous}
        states: list[InterfaceState] = []
        for i in self.config.interfaces:
            kept = before.get(i.name)
            states.append(self.sources.read(i.name, links.get(i.name)) if i.name in only or kept is None else kept)
        return links, states

    def kernel(self, links, mono: float) -> KernelView:
        index_to_name = {link.index: name for name, link in links.items()}
        dump = self.rtnl.routes(index_to_name)
        rules = set(self.rtnl.rules())
        addrs = self.rtnl.addresses(index_to_name) if self.config.return_paths else {}
        resolved = self._resolve_networks(mono)
        paths = [return_path_state(rp, links, addrs, dump.gateways, resolved.get(rp.network, Resolution()),
                                   self.path_devices.get(rp.network, "")) for rp in self.config.return_paths]
        return KernelView(set(dump.owned), dump.foreign, rules, paths, mono)

    def _resolve_networks(self, mono: float) -> dict[str, Resolution]:
        """Ask netifd for the device of each network a return path names. The route
        loop waits for the answer, so: once per read of the kernel, each call at most
        RESOLVE_TIMEOUT, and after a call that failed none for RESOLVE_BACKOFF seconds
        (rpcd hanging during an event storm would otherwise stall route repair). The
        last device each network had is remembered: return_path_state() keeps it
        through such failures."""
        out: dict[str, Resolution] = {}
        for network in dict.fromkeys(rp.network for rp in self.config.return_paths if rp.network):
            if mono < self._resolve_quiet_until:
                out[network] = Resolution(error=self._resolve_failures.get(network, "ubus not answering"),
                                          transient=True)
                continue
            try:
                if self.ubus is None:
                    self.ubus = ubus.connect(self.config.agent.ubus_socket)
                out[network] = Resolution(netifd.resolve(network, self.ubus, timeout=RESOLVE_TIMEOUT))
            except netifd.ResolveError as e:
                out[network] = Resolution(error=str(e), transient=e.transient)
                if e.transient:
                    self._resolve_quiet_until = mono + RESOLVE_BACKOFF
                    self._resolve_failures[network] = str(e)
                else:
                    self.path_devices.pop(network, None)  # netifd says: no device
                continue
            self.path_devices[network] = out[network].device
            self._resolve_failures.pop(network, None)
        return out
