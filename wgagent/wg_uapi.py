"""Userspace WireGuard (wireguard-go, boringtun) over its UAPI socket.

The protocol (wireguard.com/xplatform): send "get=1\\n\\n"; the answer is key=value
lines, interface keys first, then one block per peer starting at public_key=,
ended by errno=N and an empty line. Keys are hex here (base64 everywhere else).
"""

from __future__ import annotations

import base64
import os
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
            tail = (tail + chunk)[-64:]
            # wireguard-go keeps the connection open: the answer ends at "errno=N\n\n"
            if tail.endswith(b"\n\n") and (b"\nerrno=" in tail or tail.startswith(b"errno=")):
                break
    return b"".join(chunks)


def _hex_key(value: str) -> str:
    raw = bytes.fromhex(value)
    if len(raw) != 32:
        raise ValueError("key is not 32 bytes")
    return base64.b64encode(raw).decode()


def parse(answer: bytes) -> tuple[Peer, ...]:
    """Peers from a UAPI get answer. Raises UapiError on errno != 0 or bad lines."""
    peers: list[Peer] = []
    cur: dict | None = None
    errno = None

    def flush():
        if cur is not None:
            hs = cur["sec"] + cur["nsec"] / 1e9
            peers.append(Peer(cur["key"], tuple(cur["ips"]), cur["endpoint"], hs,
                              cur["rx"], cur["tx"], cur["keepalive"]))

    for line in answer.decode("utf-8", "replace").split("\n"):
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
            elif key == "errno":
                errno = int(value)
            elif cur is None:
                continue  # interface-level keys: private_key, listen_port, fwmark
            elif key == "allowed_ip":
                cur["ips"].append(normalize_prefix(value))
            elif key == "endpoint":
                cur["endpoint"] = value
            elif key == "last_handshake_time_sec":
                cur["sec"] = int(value)
            elif key == "last_handshake_time_nsec":
                cur["nsec"] = int(value)
            elif key == "rx_bytes":
                cur["rx"] = int(value)
            elif key == "tx_bytes":
                cur["tx"] = int(value)
            elif key == "persistent_keepalive_interval":
                cur["keepalive"] = int(value)
        except ValueError as e:
            raise UapiError(f"bad UAPI value {line!r}: {e}") from None
    if errno is None:
        raise UapiError("UAPI answer ended without errno=")
    if errno != 0:
        raise UapiError(f"UAPI returned errno={errno} ({os.strerror(errno)})")
    flush()
    return tuple(peers)


def read_peers(ifname: str, directory: str = SOCKET_DIR) -> tuple[Peer, ...]:
    return parse(request(socket_path(ifname, directory)))
