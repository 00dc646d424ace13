"""Which backend reads an interface's peers (wgsource.PeerSources), which UAPI
sockets count, and what is said when none can. Links are made up (kernel WireGuard
runs only in the test VM); UAPI sockets are real unix sockets in a directory of the
test's, and the tests of a socket of another uid need root. The real backends
(kernel, wireguard-go) are read in namespaces in test_wg_sources.py."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from wgagent.model import InterfaceState, Peer
from wgagent.rtnl import Link
from wgagent.wgsource import PeerSources

from .uapi_server import UapiServer

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


# --- which UAPI sockets count (tun links: how wireguard-go's interfaces look)

ANSWER = (b"private_key=" + b"a" * 64 + b"\nlisten_port=51820\npublic_key=" + b"58" * 32 +
          b"\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
          b"persistent_keepalive_interval=0\nallowed_ip=10.0.0.2/32\nerrno=0\n\n")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a socket of another uid)")


def test_a_plain_file_named_like_a_socket_is_no_uapi_socket(tmp_path):
    (tmp_path / "wg0.sock").write_text("left over\n")
    state = PeerSources(str(tmp_path)).read("wg0", TUN)
    assert state == InterfaceState("wg0", "", (), f"not a WireGuard interface (kind 'tun', {tmp_path}/wg0.sock "
                                                  "is not a socket)")


def test_a_socket_nothing_listens_on_is_left_over_not_served(tmp_path):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "wg0.sock"))
    dead.listen(1)
    dead.close()  # its process died: the file stays, connections are refused
    state = PeerSources(str(tmp_path)).read("wg0", TUN)
    assert state == InterfaceState("wg0", "", (), f"not a WireGuard interface (kind 'tun', nothing listens on "
                                                  f"{tmp_path}/wg0.sock (a stale socket))")


def test_a_live_socket_of_ours_is_read(tmp_path):
    with UapiServer(str(tmp_path), ANSWER) as server:
        state = PeerSources(str(tmp_path)).read("wg0", TUN)
    assert (state.backend, state.error) == ("uapi", "")
    assert [p.allowed_ips for p in state.peers] == [("10.0.0.2/32",)]
    assert server.requests == 1


@needs_root
def test_a_socket_owned_by_another_uid_is_refused_and_never_asked(tmp_path):
    with UapiServer(str(tmp_path), ANSWER) as server:
        os.chown(server.path, 65534, 65534)
        state = PeerSources(str(tmp_path)).read("wg0", TUN)
    assert state == InterfaceState("wg0", "uapi", None, f"cannot read peers: [Errno {errno.EPERM}] refusing "
                                                        f"{server.path}: owned by uid 65534, not root")
    assert server.requests == 0


LISTEN_AS_NOBODY = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])  # as root: the file is root's
os.setgid(65534)
os.setuid(65534)
s.listen(4)  # as nobody: SO_PEERCRED tells
print("listening", flush=True)
while True:
    c, _ = s.accept()
    if c.recv(64):
        c.sendall(sys.argv[2].encode())
    c.close()
"""


@needs_root
def test_a_root_owned_socket_served_by_another_uid_is_refused(tmp_path):
    path = str(tmp_path / "wg0.sock")
    server = subprocess.Popen([sys.executable, "-c", LISTEN_AS_NOBODY, path, ANSWER.decode()],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "listening\n"
        assert os.stat(path).st_uid == 0
        state = PeerSources(str(tmp_path)).read("wg0", TUN)
    finally:
        server.kill()
        server.wait()
    assert (state.backend, state.peers) == ("uapi", None)
    assert state.error == (f"cannot read peers: [Errno {errno.EPERM}] refusing {path}: served by uid 65534 "
                           f"(pid {server.pid}), not root")
