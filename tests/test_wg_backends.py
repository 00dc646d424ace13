"""Which backend reads an interface's peers (wgsource.PeerSources), and what it
says when none can. No root: links are made up (kernel WireGuard runs only in the
test VM) and UAPI sockets are real unix sockets in a directory of the test's. The
real backends are read in test_wg_sources.py."""

from __future__ import annotations

import errno

from wgagent.model import InterfaceState, Peer
from wgagent.rtnl import Link
from wgagent.wgsource import PeerSources

WG_KERNEL = Link(7, "wg0", "wireguard", True, True)
TUN = Link(7, "wg0", "tun", True, True)


def test_a_kernel_interface_stays_the_kernels_beside_a_plain_file_named_like_a_socket(tmp_path):
    (tmp_path / "wg0.sock").write_text("left over\n")
    state = PeerSources(str(tmp_path)).read("wg0", WG_KERNEL)
    assert state.backend == "kernel"


class Scripted:
    """A backend that serves the names it is given and reads what it is told."""

    def __init__(self, kind: str, names=(), peers=(), error: OSError | None = None):
        self.kind, self.names, self.peers, self.error = kind, set(names), tuple(peers), error
        self.reads, self.closed = [], False

    def serves(self, name, link):
        return "" if name in self.names else f"{self.kind} knows no {name}"

    def read_peers(self, ifname):
        self.reads.append(ifname)
        if self.error:
            raise self.error
        return self.peers

    def close(self):
        self.closed = True


def test_a_third_backend_is_one_more_entry_and_the_first_that_serves_reads():
    peer = Peer("k" * 43 + "=", ("10.0.0.1/32",))
    a, b, c = Scripted("a", ["wg1"]), Scripted("b", ["wg0", "wg1"], [peer]), Scripted("c", ["wg0"])
    sources = PeerSources(backends=[a, b, c])
    assert sources.read("wg0", TUN) == InterfaceState("wg0", "b", (peer,))
    assert sources.read("wg1", TUN).backend == "a"
    assert (a.reads, b.reads, c.reads) == (["wg1"], ["wg0"], [])
    sources.close()
    assert a.closed and b.closed and c.closed


def test_no_backend_serving_says_why_each_did_not():
    sources = PeerSources(backends=[Scripted("a"), Scripted("b")])
    assert sources.read("wg0", TUN) == InterfaceState("wg0", "", (), "not a WireGuard interface "
                                                                     "(a knows no wg0, b knows no wg0)")
    assert sources.read("wg0", None) == InterfaceState("wg0", "", (), "interface does not exist")


def test_a_backend_that_cannot_read_leaves_the_peers_unknown():
    sources = PeerSources(backends=[Scripted("a", ["wg0"], error=OSError(errno.EIO, "wg0: gone sideways"))])
    assert sources.read("wg0", TUN) == InterfaceState("wg0", "a", None, "cannot read peers: [Errno 5] wg0: gone "
                                                                        "sideways")


def test_the_default_backends_kernel_first():
    kinds = [b.kind for b in PeerSources().backends]
    assert kinds == ["kernel", "uapi"]
    veth = Link(3, "eth0", "veth", True)
    assert PeerSources("/nonexistent").read("eth0", veth).error == \
        "not a WireGuard interface (kind 'veth', no UAPI socket)"
