"""Which backend reads an interface's peers (wgsource.PeerSources), and what it
says when none can. No root: links are made up (kernel WireGuard runs only in the
test VM) and UAPI sockets are real unix sockets in a directory of the test's. The
real backends are read in test_wg_sources.py."""

from __future__ import annotations

from wgagent.rtnl import Link
from wgagent.wgsource import PeerSources

WG_KERNEL = Link(7, "wg0", "wireguard", True, True)
TUN = Link(7, "wg0", "tun", True, True)


def test_a_kernel_interface_stays_the_kernels_beside_a_plain_file_named_like_a_socket(tmp_path):
    (tmp_path / "wg0.sock").write_text("left over\n")
    state = PeerSources(str(tmp_path)).read("wg0", WG_KERNEL)
    assert state.backend == "kernel"
