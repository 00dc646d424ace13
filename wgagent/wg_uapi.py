"""Userspace WireGuard (wireguard-go, boringtun) over its UAPI socket.

The protocol (wireguard.com/xplatform): send "get=1\\n\\n"; the answer is key=value
lines, interface keys first, then one block per peer starting at public_key=,
ended by errno=N and an empty line. Keys are hex here (base64 everywhere else).

Errors: UapiError (an OSError) and nothing else, whatever the socket answers:
the socket's own errors (ECONNREFUSED, ETIMEDOUT, ...), the answer's errno when it
is not 0, EPROTO for an answer that does not parse. Numbers are unsigned and at
most 20 digits (a u64's width): a longer one is refused, never turned into an
OverflowError or Python's ValueError for over-long integers.

Which sockets count (as wireguard-tools' userspace_has_wireguard_interface, and
stricter): only a socket (S_ISSOCK) that accepts a connection serves an interface;
a plain file or a socket its process left behind is no UAPI socket. One that is not
root's (nor the daemon's own uid's), by its owner or by the credentials of whoever
listens on it, is refused: whoever serves it would choose the AllowedIPs that the
daemon puts in the routing tables.
"""

from __future__ import annotations

import base64
import errno as errno_
import os
import re
import socket
import stat
import struct
import time
from typing import TYPE_CHECKING

from .model import Peer, normalize_prefix

if TYPE_CHECKING:
    from .rtnl_links import Link

SOCKET_DIR = "/var/run/wireguard"


class UapiError(OSError):
    pass


def socket_path(ifname: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, ifname + ".sock")


def probe(path: str, timeout: float = 2.0) -> str:
    """Why `path` is no UAPI socket to read; "" when it is one: a socket that accepts
    a connection (or is too busy to within the timeout: the read will say so). Who
    owns it is request()'s to check, so that a foreign socket is reported, not
    passed over."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no UAPI socket"
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return f"nothing listens on {path} (a stale socket)"
        except OSError:
            pass
    return ""


_CREDS = struct.Struct("=iII")  # struct ucred: pid, uid, gid


def _trusted(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _connect(s: socket.socket, path: str) -> None:
    """Connect to a UAPI socket only if root (or our own uid) owns it and listens on
    it. The owner is checked before, the listener's credentials (SO_PEERCRED: as of
    its listen()) after: a socket swapped in between is caught by the second."""
    owner = os.stat(path).st_uid
    if not _trusted(owner):
        raise UapiError(errno_.EPERM, f"refusing {path}: owned by uid {owner}, not root")
    s.connect(path)
    pid, uid, _gid = _CREDS.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    if not _trusted(uid):
        raise UapiError(errno_.EPERM, f"refusing {path}: served by uid {uid} (pid {pid}), not root")


# An answer is ~360 bytes a peer. Whatever the other side does, the read ends: at this
# size (~180,000 peers), and after ANSWER_SECONDS in all, so that a server that drips
# bytes (each within the timeout of one recv) or never stops cannot hold the route
# loop, nor fill its memory, for ever.
MAX_ANSWER = 64 << 20
ANSWER_SECONDS = 10.0


def request(path: str, timeout: float = 2.0, total: float = ANSWER_SECONDS) -> bytes:
    """One get=1 exchange; returns the raw answer up to and including errno=.
    UapiError for any failure of the socket, naming the path: timeout is for the
    connect and each read, total for the whole answer."""
    deadline = time.monotonic() + total
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            _connect(s, path)
            s.sendall(b"get=1\n\n")
            chunks: list[bytes] = []
            tail = b""
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UapiError(errno_.ETIMEDOUT, f"{path}: the answer took longer than {total:g} s")
                s.settimeout(min(timeout, left))
                chunk = s.recv(262144)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise UapiError(errno_.EMSGSIZE, f"{path}: an answer larger than {MAX_ANSWER >> 20} MiB")
                tail = chunk[-64:] if len(chunk) >= 64 else (tail + chunk)[-64:]
                # wireguard-go keeps the connection open: the answer ends at "errno=N\n\n"
                if tail.endswith(b"\n\n") and (b"\nerrno=" in tail or tail.startswith(b"errno=")):
                    break
    except TimeoutError:
        if time.monotonic() >= deadline:
            raise UapiError(errno_.ETIMEDOUT, f"{path}: the answer took longer than {total:g} s") from None
        raise UapiError(errno_.ETIMEDOUT, f"{path}: no answer within {timeout:g} s") from None
    except UapiError:
        raise
    except OSError as e:
        raise UapiError(e.errno or errno_.EIO, f"{path}: {e.strerror or e}") from None
    return b"".join(chunks)


def _bad(detail: str) -> UapiError:
    return UapiError(errno_.EPROTO, detail)


def _number(value: str) -> int:
    """An unsigned decimal of at most 20 digits (int() would also take signs, '_',
    spaces and other scripts' digits, and raise ValueError past 4,300 digits)."""
    if not (0 < len(value) <= 20 and value.isascii() and value.isdigit()):
        raise ValueError("not an unsigned number of at most 20 digits")
    return int(value)


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
# Its numbers are matched as _number() reads them (ASCII, at most 20 digits), so that
# no number that reaches int() and float() here can overflow.
_PEER_BLOCK = re.compile(
    r"([0-9a-f]{64})\n"
    r"(?:preshared_key=[0-9a-f]{64}\n)?"
    r"(?:protocol_version=[0-9]{1,20}\n)?"
    r"(?:endpoint=([^\n]*)\n)?"
    r"last_handshake_time_sec=([0-9]{1,20})\n"
    r"last_handshake_time_nsec=([0-9]{1,20})\n"
    r"tx_bytes=([0-9]{1,20})\n"
    r"rx_bytes=([0-9]{1,20})\n"
    r"persistent_keepalive_interval=([0-9]{1,20})\n"
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
        raise _bad("UAPI answer ended without errno=")
    value = tail.strip()
    try:  # wireguard-go writes its errors negative (errno=-5), others positive
        errno = -_number(value[1:]) if value.startswith("-") else _number(value)
    except ValueError:
        raise _bad(f"bad UAPI value 'errno={value[:40]}'") from None
    if errno != 0:
        code = abs(errno)
        known = f" ({os.strerror(code)})" if code < 4096 else ""
        raise UapiError(code if code < 4096 else errno_.EIO, f"UAPI returned errno={errno}{known}")
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


def listen_port(answer: bytes) -> int:
    """The interface's listen_port= line (before the first peer's); 0 when absent."""
    end = answer.find(b"public_key=", 0, 4096)
    head = answer[:end if end >= 0 else 4096]
    at = head.find(b"listen_port=")
    if at < 0 or (at and head[at - 1:at] != b"\n"):
        return 0
    value = head[at + 12:head.find(b"\n", at)]
    return int(value) if value.isdigit() and len(value) <= 5 and int(value) < 65536 else 0


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
            raise _bad(f"malformed UAPI line {line[:80]!r}")
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
                cur[_NUMBERS[key]] = _number(value)
        except ValueError as e:
            raise _bad(f"bad UAPI value {line[:80]!r}: {e}") from None
    flush()
    return tuple(peers)


_NUMBERS = {"last_handshake_time_sec": "sec", "last_handshake_time_nsec": "nsec", "rx_bytes": "rx",
            "tx_bytes": "tx", "persistent_keepalive_interval": "keepalive"}


class UapiWireGuard:
    """The userspace backend (see wgsource.Backend): peers of wireguard-go or
    boringtun interfaces, each read over DIRECTORY/IFNAME.sock, one connection a read."""

    kind = "uapi"

    def __init__(self, directory: str = SOCKET_DIR):
        self.directory = directory
        self._memo: dict[str, dict] = {}  # per interface: see parse
        self.ports: dict[str, int] = {}  # per interface: its listen port at the last read

    def serves(self, name: str, link: Link) -> str:
        return probe(socket_path(name, self.directory))

    def read_peers(self, ifname: str) -> tuple[Peer, ...]:
        answer = request(socket_path(ifname, self.directory))
        peers = parse(answer, self._memo.setdefault(ifname, {}))
        self.ports[ifname] = listen_port(answer)
        return peers

    def close(self):
        self._memo.clear()
