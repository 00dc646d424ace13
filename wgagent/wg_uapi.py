"""Userspace WireGuard (wireguard-go, boringtun) over its UAPI socket.

The protocol (wireguard.com/xplatform): send "get=1\\n\\n"; the answer is key=value
lines, interface keys first, then one block per peer starting at public_key=,
ended by errno=N and an empty line. Keys are hex here (base64 everywhere else).
"""

from __future__ import annotations

import base64
import os
import re
import socket

from .model import Peer, normalize_prefix

SOCKET_DIR = "/var/run/wireguard"


class UapiError(OSError):
    pass


def socket_path(ifname: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, ifname + ".sock")


def exists(ifname: str, directory: str = SOCKET_DIR) -> bool:
    return os.path.exists(socket_path(ifname, directory))


def request(path: str, timeout: float = 2.0) -> bytes:
    """One get=1 exchange; returns the raw answer up to and including errno=."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"get=1\n\n")
        chunks: list[bytes] = []
        tail = b""
        while True:
            chunk = s.recv(262144)
            if not chunk:
                break
            chunks.append(chunk)
            tail = chunk[-64:] if len(chunk) >= 64 else (tail + chunk)[-64:]
            # wireguard-go keeps the connection open: the answer ends at "errno=N\n\n"
            if tail.endswith(b"\n\n") and (b"\nerrno=" in tail or tail.startswith(b"errno=")):
                break
    return b"".join(chunks)


_keys: dict[str, str] = {}  # hex -> base64: the same keys come back every poll


def _hex_key(value: str) -> str:
    key = _keys.get(value)
    if key is None:
        raw = bytes.fromhex(value)
        if len(raw) != 32:
            raise ValueError("key is not 32 bytes")
        if len(_keys) >= 1 << 16:
            _keys.clear()
        key = _keys[value] = base64.b64encode(raw).decode()
    return key


# A peer block as wireguard-go writes it (after its "public_key="), matched whole in C:
# a poll is ten lines per peer, and a Python loop over them was the largest cost of a
# cycle at scale (bench/NOTES.md). Any answer of another shape (boringtun's order,
# future keys) goes line by line.
_PEER_BLOCK = re.compile(
    r"([0-9a-f]{64})\n"
    r"(?:preshared_key=[0-9a-f]{64}\n)?"
    r"(?:protocol_version=\d+\n)?"
    r"(?:endpoint=([^\n]*)\n)?"
    r"last_handshake_time_sec=(\d+)\n"
    r"last_handshake_time_nsec=(\d+)\n"
    r"tx_bytes=(\d+)\n"
    r"rx_bytes=(\d+)\n"
    r"persistent_keepalive_interval=(\d+)\n"
    r"((?:allowed_ip=[^\n]*\n)*)")
_allowed: dict[str, tuple[str, ...]] = {}  # the allowed_ip lines of a block -> prefixes
_new_peer = tuple.__new__  # Peer(...) without the Python-level __new__ of a NamedTuple


def parse(answer: bytes, memo: dict | None = None) -> tuple[Peer, ...]:
    """Peers from a UAPI get answer. Raises UapiError on errno != 0 or bad lines.

    memo (one dict per interface, kept by the caller between polls) maps each peer
    block's text to the Peer made of it: most peers' blocks are the same as at the
    last poll (a handshake every two minutes, counters that move only with traffic),
    and an unchanged block then costs one dict lookup. The same Peer object comes
    back, which lets the decision core skip it too (policy.desired_state)."""
    text = answer.decode("utf-8", "replace")
    body, sep, tail = text.rpartition("errno=")
    if not sep or (body and not body.endswith("\n")):
        raise UapiError("UAPI answer ended without errno=")
    try:
        errno = int(tail.strip())
    except ValueError:
        raise UapiError(f"bad UAPI value 'errno={tail.strip()}'") from None
    if errno != 0:
        raise UapiError(f"UAPI returned errno={errno} ({os.strerror(errno)})")
    if body.count("=") != body.count("\n"):
        return _parse_lines(body)  # a line that is not one key=value: let it name the line
    blocks = ("\n" + body).split("\npublic_key=")
    seen = memo if memo is not None else {}
    fresh: dict[str, Peer] = {}
    peers = []
    match = _PEER_BLOCK.fullmatch
    last = len(blocks) - 1
    for i in range(1, last + 1):
        # the split took the newline that ended each block's last line (the last block's
        # is still there: errno= follows it)
        block = blocks[i] if i == last else blocks[i] + "\n"
        peer = seen.get(block)
        if peer is None:
            m = match(block)
            if m is None:
                return _parse_lines(body)
            key, endpoint, sec, nsec, tx, rx, keepalive, ips = m.groups()
            prefixes = _allowed.get(ips)
            if prefixes is None:
                try:
                    prefixes = tuple(normalize_prefix(ip) for ip in ips[11:-1].split("\nallowed_ip=")) if ips else ()
                except ValueError:
                    return _parse_lines(body)  # for the error message naming the line
                if len(_allowed) >= 1 << 16:
                    _allowed.clear()
                _allowed[ips] = prefixes
            peer = _new_peer(Peer, (_keys.get(key) or _hex_key(key), prefixes, endpoint or None,
                                    int(sec) + int(nsec) / 1e9, int(rx), int(tx), int(keepalive)))
        fresh[block] = peer
        peers.append(peer)
    if memo is not None:
        memo.clear()  # only this poll's blocks: the memo never outgrows the interface
        memo.update(fresh)
    return tuple(peers)


def _parse_lines(body: str) -> tuple[Peer, ...]:
    """Any well-formed answer, line by line: keys in any order, unknown keys skipped."""
    peers: list[Peer] = []
    cur: dict | None = None

    def flush():
        if cur is not None:
            peers.append(Peer(cur["key"], tuple(cur["ips"]), cur["endpoint"], cur["sec"] + cur["nsec"] / 1e9,
                              cur["rx"], cur["tx"], cur["keepalive"]))

    for line in body.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"malformed UAPI line {line!r}")
        try:
            if key == "public_key":
                flush()
                cur = {"key": _hex_key(value), "ips": [], "endpoint": None, "sec": 0, "nsec": 0,
                       "rx": 0, "tx": 0, "keepalive": 0}
            elif cur is None:
                continue  # interface-level keys: private_key, listen_port, fwmark
            elif key == "allowed_ip":
                cur["ips"].append(normalize_prefix(value))
            elif key == "endpoint":
                cur["endpoint"] = value
            elif key in _NUMBERS:
                cur[_NUMBERS[key]] = int(value)
        except ValueError as e:
            raise UapiError(f"bad UAPI value {line!r}: {e}") from None
    flush()
    return tuple(peers)


_NUMBERS = {"last_handshake_time_sec": "sec", "last_handshake_time_nsec": "nsec", "rx_bytes": "rx",
            "tx_bytes": "tx", "persistent_keepalive_interval": "keepalive"}


def read_peers(ifname: str, directory: str = SOCKET_DIR, memo: dict | None = None) -> tuple[Peer, ...]:
    return parse(request(socket_path(ifname, directory)), memo)
