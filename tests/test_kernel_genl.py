"""Generic netlink edge cases against the real kernel (run in the test VM; skipped
where the kernel has no wireguard): big dumps split over many messages, dumps
interrupted by concurrent changes, an interface deleted while it is polled.
The big dump also runs against wireguard-go's UAPI, which has no such splitting.

The readers run in the namespace as separate processes; they watch the raw dump
messages through a subclass of netlink.NetlinkSocket put in wg_kernel's hands, so the
tests can tell that a split or an interruption really happened rather than assume it."""

from __future__ import annotations

import base64
import errno
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from wgagent.netlink import NLM_F_DUMP_INTR

from .lab import SLOWDOWN, kernel_wireguard_available
from .test_wg_sources import wg_dump

pytestmark = pytest.mark.root

READER = textwrap.dedent("""
    import json, os, sys, time
    from wgagent import netlink, wg_kernel as wk
    from wgagent.rtnl import Rtnl
    from wgagent.wgsource import PeerSources

    class Watched(netlink.NetlinkSocket):
        # of every dump on any such socket: the flags of its messages (NLMSG_DONE's
        # last); the last dump's payloads; and what each interrupted dump would have
        # given had it been taken as it came
        dump_flags, last, torn = [], [], []

        def _answers(self, seq, what, dump):
            msgs = []
            for m in super()._answers(seq, what, dump):  # (data, type, flags, offset, end)
                msgs.append(m)
                yield m
            if dump:  # read to its end (an error would have raised above)
                payloads = [d[off:end] for d, t, _, off, end in msgs if t != netlink.NLMSG_DONE]
                Watched.dump_flags.append([f for _, _, f, _, _ in msgs])
                Watched.last = payloads
                if any(f & netlink.NLM_F_DUMP_INTR for _, _, f, _, _ in msgs):
                    Watched.torn.append(as_map(wk.merge_dump(payloads)))

    def as_map(peers):
        # a peer merged twice would show its AllowedIPs twice: kept, not deduplicated
        return {p.public_key: sorted(p.allowed_ips) for p in peers}
""")

READ_ONE = READER + textwrap.dedent("""
    wk.NetlinkSocket = Watched
    s = PeerSources().read("wg0", Rtnl().links().get("wg0"))
    pieces = [[p.public_key for p in wk.merge_dump([m])] for m in Watched.last]
    print(json.dumps({"peers": None if s.peers is None else as_map(s.peers), "error": s.error,
                      "pieces": pieces, "flags": Watched.dump_flags}))
""")

# Reads until it has seen an interrupted dump and then a few more reads (or time is up).
READ_UNTIL_INTERRUPTED = READER + textwrap.dedent("""
    wk.NetlinkSocket = Watched
    k = wk.KernelWireGuard()
    reads, errors = [], []
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline and not (Watched.torn and len(reads) >= 5):
        try:
            reads.append(as_map(k.read_peers("wg0")))
        except wk.KernelWgError as e:
            errors.append([e.errno, str(e)])
    interrupted = sum(any(f & netlink.NLM_F_DUMP_INTR for f in d) for d in Watched.dump_flags)
    print(json.dumps({"dumps": len(Watched.dump_flags), "interrupted": interrupted, "reads": reads,
                      "errors": errors, "torn": Watched.torn}))
""")

# Polls as the daemon does (the link looked up each time) and with the link looked up
# once at start (so the generic netlink read itself meets the missing interface), one
# JSON line per poll, until the stop file appears.
POLL = READER + textwrap.dedent("""
    src, rtnl = PeerSources(), Rtnl()
    stale = rtnl.links().get("wg0")
    def state(s):
        return {"peers": None if s.peers is None else as_map(s.peers), "error": s.error}
    while not os.path.exists(sys.argv[1]):
        fresh = src.read("wg0", rtnl.links().get("wg0"))
        print(json.dumps([state(fresh), state(src.read("wg0", stale))]), flush=True)
        time.sleep(0.02)
""")


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def setconf(ns, lab, peers: dict[str, list[str]]):
    path = os.path.join(lab.tmp, "peers.conf")
    with open(path, "w") as f:
        for key, ips in peers.items():
            f.write(f"[Peer]\nPublicKey = {key}\nAllowedIPs = {', '.join(ips)}\n\n")
    ns.run("wg", "addconf", "wg0", path, timeout=75)


def new_interface(lab, backend, short):
    ns = lab.netns(short)
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    ns.add_wireguard("wg0", backend, priv, 51820)
    return ns


def small_peers(n: int, net: int) -> dict[str, list[str]]:
    return {random_key(): [f"10.{net}.{i // 250}.{i % 250}/32"] for i in range(n)}


# 1,000 IPv4 (28 bytes each in the dump) and 500 IPv6 (40 bytes) AllowedIPs: ~48 KB, more
# than one dump message holds (the kernel fills at most 32 KiB), so this peer is split.
WIDE_IPS = [f"172.16.{i // 250}.{i % 250}/32" for i in range(1000)] + [f"fd00:500::{i:x}/128" for i in range(1, 501)]


@pytest.fixture
def big(lab, backend):
    """1,200 peers with one AllowedIP each, then one peer with 1,500."""
    ns = new_interface(lab, backend, "g")
    peers = small_peers(1200, 10)
    wide = random_key()
    peers[wide] = WIDE_IPS
    setconf(ns, lab, peers)
    return ns, peers, wide


def test_big_dump_is_merged_by_key_and_loses_nothing(big, backend):
    ns, peers, wide = big
    got = json.loads(ns.run(sys.executable, "-c", READ_ONE, timeout=75).stdout)
    expected = {k: sorted(v) for k, v in peers.items()}
    assert got["error"] == ""
    if backend == "kernel":
        (flags,) = got["flags"]
        assert not any(f & NLM_F_DUMP_INTR for f in flags), "nothing changed: the dump must not be interrupted"
        pieces = got["pieces"]
        assert len(pieces) >= 6  # ~200 KB: many messages
        assert sum(len(p) for p in pieces) > len(expected)  # some peer came in more than one piece
        assert sum(wide in p for p in pieces) >= 2  # the wide peer really was continued
        assert all(len(p) == len(set(p)) for p in pieces)
    assert len(got["peers"]) == len(expected) == 1201
    assert got["peers"] == expected  # every peer once, every AllowedIP, none lost or doubled
    assert len(got["peers"][wide]) == 1500
    ref = wg_dump(ns)
    assert {k: v["allowed_ips"] for k, v in ref.items()} == expected


def _kernel_only(backend):
    if backend != "kernel":
        pytest.skip("generic netlink only: wireguard-go's UAPI answers in one piece")
    if not kernel_wireguard_available():
        pytest.skip("this kernel has no wireguard module (the test VM has)")


def test_dump_interrupted_by_changes_is_retried_and_consistent(lab, backend):
    """While a loop of `wg set` removes and re-adds peers from the middle of the list and
    replaces a middle peer's AllowedIPs, reads must see interrupted dumps (counted from
    the raw messages) and still return only consistent snapshots."""
    _kernel_only(backend)
    ns = new_interface(lab, backend, "i")
    stable = small_peers(1200, 10)
    churn = {random_key(): [f"192.168.{i}.0/24", f"fd01:{i + 1:x}::/64"] for i in range(120)}
    keys = list(stable)
    flip = keys[600]
    flip_a, flip_b = sorted(stable[flip] + ["10.250.0.0/24"]), sorted(["10.251.0.0/24", "10.251.1.0/24"])
    peers = {}
    for i, key in enumerate(keys):  # a churn peer after every 10th stable one
        peers[key] = flip_a if key == flip else stable[key]
        if i % 10 == 5:
            c = list(churn)[i // 10]
            peers[c] = churn[c]
    setconf(ns, lab, peers)
    # One `wg set` each (one netlink request, applied atomically): remove churn peer i
    # and put back peer i-1 (at the tail), and swap the flip peer's AllowedIPs. So a
    # consistent snapshot lacks at most one churn peer, and shows flip_a or flip_b whole.
    cks = list(churn)
    cmds = [f"peer {c} remove peer {cks[i - 1]} allowed-ips {','.join(churn[cks[i - 1]])} "
            f"peer {flip} allowed-ips {','.join(flip_b if i % 2 else flip_a)}"
            for i, c in enumerate(cks)]
    with open(os.path.join(lab.tmp, "churn.cmds"), "w") as f:
        f.write("\n".join(cmds) + "\n")
    changer = ns.popen("sh", "-c", f"while true; do while read -r c; do wg set wg0 $c; done < {lab.tmp}/churn.cmds; "
                       "done", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = json.loads(ns.run(sys.executable, "-c", READ_UNTIL_INTERRUPTED, str(60 * SLOWDOWN),
                                timeout=90).stdout)
    finally:
        lab.stop(changer)
    assert out["interrupted"] >= 1, f"no interrupted dump seen in {out['dumps']} dumps"
    assert out["interrupted"] == len(out["torn"])
    assert len(out["reads"]) >= 5, out["errors"]
    # the only acceptable failure: interrupted DUMP_RETRIES times in a row
    assert all(e[0] == errno.EINTR and "interrupted" in e[1] for e in out["errors"]), out["errors"]

    def problem(got: dict) -> str:
        """Why got is not a snapshot of the peers at one moment ('' if it is one)."""
        lost = [k for k in stable if k not in got]
        if lost:
            return f"{len(lost)} stable peers missing"
        if got[flip] not in (flip_a, flip_b):
            return f"a mix of old and new AllowedIPs: {got[flip]}"
        wrong = [k for k in stable if k != flip and got[k] != stable[k]]
        wrong += [c for c in churn if c in got and got[c] != sorted(churn[c])]  # doubled, say
        if wrong:
            return f"{len(wrong)} peers with wrong AllowedIPs, e.g. {got[wrong[0]]}"
        missing = [c for c in churn if c not in got]
        if len(missing) > 1 or set(got) - set(peers):
            return f"{len(missing)} churn peers missing, {len(set(got) - set(peers))} unknown"
        return ""

    for got in out["reads"]:
        assert problem(got) == ""
    torn = [problem(t) for t in out["torn"]]  # no assertion: how a dump tears is down to timing
    print(f"{out['dumps']} dumps, {out['interrupted']} interrupted ({sum(map(bool, torn))} of them torn: "
          f"{sorted(set(filter(None, torn)))[:3]}), {len(out['reads'])} reads, {len(out['errors'])} gave up")


def _lines(proc) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(json.loads(line))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _poll_until(q, seen, done, what, seconds=60.0):
    """Take polls from q into seen until done(poll) holds for 3 polls in a row."""
    deadline, run = time.monotonic() + seconds * SLOWDOWN, 0
    while run < 3:
        try:
            poll = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            poll = None
        if poll is None or time.monotonic() > deadline:
            raise AssertionError(f"reader: no 3 polls in a row with {what}; last: {seen[-3:]}")
        seen.append(poll)
        run = run + 1 if done(poll) else 0


def test_interface_deleted_mid_poll(lab, backend):
    """Polls see the peers, then a clean error once the interface is deleted (never a
    traceback, never a half list), then the new peers of the re-created interface."""
    _kernel_only(backend)
    ns = new_interface(lab, backend, "d")
    old, new = small_peers(100, 1), small_peers(60, 2)
    setconf(ns, lab, old)
    old_map, new_map = ({k: sorted(v) for k, v in p.items()} for p in (old, new))
    stop = os.path.join(lab.tmp, "stop")
    reader = ns.popen(sys.executable, "-c", POLL, stop, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q, before, after, again = _lines(reader), [], [], []
    try:
        _poll_until(q, before, lambda p: p[0]["peers"] == p[1]["peers"] == old_map, "all the peers")
        ns.ip("link", "del", "wg0")
        _poll_until(q, after, lambda p: p[0]["peers"] == {} and p[1]["peers"] is None,
                    "the interface gone")
        ns.ip("link", "add", "wg0", "type", "wireguard")
        setconf(ns, lab, new)
        _poll_until(q, again, lambda p: p[0]["peers"] == p[1]["peers"] == new_map, "the new peers")
    finally:
        open(stop, "w").close()
        _, err = reader.communicate(timeout=30 * SLOWDOWN)
    assert reader.returncode == 0 and "Traceback" not in err, err  # no exception escaped
    for fresh, stale in after:
        # polls already under way when the link went: all the old peers; after that, the
        # daemon's way (link looked up each poll) says the interface is gone, and a read
        # by name on the netlink socket fails with ENODEV, reported as 'cannot read'
        assert fresh == {"peers": old_map, "error": ""} or fresh in (
            {"peers": {}, "error": "interface does not exist"},
            {"peers": None, "error": "cannot read peers: [Errno 19] wg0: No such device"}), fresh
        assert stale == {"peers": old_map, "error": ""} or \
            stale == {"peers": None, "error": "cannot read peers: [Errno 19] wg0: No such device"}, stale
    for path in (0, 1):  # gone stays gone
        gone = next(i for i, p in enumerate(after) if p[path]["peers"] != old_map)
        assert all(p[path]["peers"] != old_map for p in after[gone:]), after
    for poll in again:  # while re-created and filled: some of the new peers, never an old one
        for s in poll:
            assert s["peers"] is None or set(s["peers"]) <= set(new_map), s
    print(f"polls: {len(before)} before the deletion, {len(after)} after, {len(again)} once re-created")
