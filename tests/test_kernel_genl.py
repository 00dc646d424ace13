"""Generic netlink edge cases against the real kernel (run in the test VM; skipped
where the kernel has no wireguard): big dumps split over many messages, dumps
interrupted by concurrent changes, an interface deleted while it is polled.
The big dump also runs against wireguard-go's UAPI, which has no such splitting."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from .lab import kernel_wireguard_available
from .test_wg_sources import wg_dump

pytestmark = pytest.mark.root

READ_MANY = textwrap.dedent("""
    import json, sys, time
    from wgagent.rtnl import Rtnl
    from wgagent.wgsource import PeerSources
    src = PeerSources()
    link = Rtnl().links().get("wg0")
    out = []
    for _ in range(int(sys.argv[1])):
        s = src.read("wg0", link)
        out.append(None if s.peers is None else {p.public_key: sorted(p.allowed_ips) for p in s.peers})
        if s.peers is None:
            out[-1] = {"error": s.error}
    print(json.dumps(out))
""")


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def setconf(ns, lab, peers: dict[str, list[str]]):
    path = os.path.join(lab.tmp, "peers.conf")
    with open(path, "w") as f:
        for key, ips in peers.items():
            f.write(f"[Peer]\nPublicKey = {key}\nAllowedIPs = {', '.join(ips)}\n\n")
    ns.run("wg", "addconf", "wg0", path, timeout=75)


@pytest.fixture
def big(lab, backend):
    """1,200 peers with one AllowedIP each, and one peer with 500."""
    ns = lab.netns("g")
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    ns.add_wireguard("wg0", backend, priv, 51820)
    peers = {random_key(): [f"10.{i // 250}.{i % 250}.1/32"] for i in range(1200)}
    wide = random_key()
    peers[wide] = [f"172.16.{i // 250}.{i % 250}/32" for i in range(499)] + ["fd00:500::/64"]
    setconf(ns, lab, peers)
    return ns, peers, wide


def test_big_dump_is_merged_by_key_and_loses_nothing(big, backend):
    ns, peers, wide = big
    (got,) = json.loads(ns.run(sys.executable, "-c", READ_MANY, "1", timeout=75).stdout)
    expected = {k: sorted(v) for k, v in peers.items()}
    assert len(got) == len(expected) == 1201
    assert got == expected  # every peer once, every AllowedIP, none lost or doubled
    assert len(got[wide]) == 500
    ref = wg_dump(ns)
    assert {k: v["allowed_ips"] for k, v in ref.items()} == expected


def _kernel_only(backend):
    if backend != "kernel":
        pytest.skip("generic netlink only: wireguard-go's UAPI answers in one piece")
    if not kernel_wireguard_available():
        pytest.skip("this kernel has no wireguard module (the test VM has)")


def test_dump_interrupted_by_changes_is_retried_and_consistent(big, backend, lab):
    _kernel_only(backend)
    ns, peers, wide = big
    churn = random_key()
    script = (f"while true; do wg set wg0 peer {churn} allowed-ips 192.168.200.0/24,192.168.201.0/24; "
              f"wg set wg0 peer {churn} remove; done")
    changer = ns.popen("sh", "-c", script, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        reads = json.loads(ns.run(sys.executable, "-c", READ_MANY, "8", timeout=150).stdout)
    finally:
        lab.stop(changer)
    expected = {k: sorted(v) for k, v in peers.items()}
    seen_churn = 0
    for got in reads:
        assert "error" not in got, got
        extra = {k: v for k, v in got.items() if k not in expected}
        assert {k: got[k] for k in expected} == expected  # the stable peers, always complete
        assert extra in ({}, {churn: ["192.168.200.0/24", "192.168.201.0/24"]})  # never half a peer
        seen_churn += bool(extra)
    assert len(reads) == 8


def test_interface_deleted_mid_poll(lab, backend):
    _kernel_only(backend)
    ns = lab.netns("d")
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    ns.add_wireguard("wg0", backend, priv, 51820)
    setconf(ns, lab, {random_key(): [f"10.1.{i // 250}.{i % 250}/32"] for i in range(100)})
    reader = ns.popen(sys.executable, "-c", READ_MANY, "60", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    ns.ip("link", "del", "wg0")
    out, err = reader.communicate(timeout=600)
    assert reader.returncode == 0, err  # no traceback: an error state, then the next poll
    reads = json.loads(out)
    assert all(r is not None for r in reads)
    assert any("error" in r for r in reads) or all(len(r) in (0, 100) for r in reads)
    assert "error" in reads[-1] or reads[-1] == {}
