"""Kernel WireGuard over generic netlink, read straight off a netlink socket.

The protocol is small and fixed (include/uapi/linux/wireguard.h): one dump request,
WG_CMD_GET_DEVICE by interface name; the answer is nested attributes. It is decoded
here with struct, as wireguard-tools does in C, rather than through pyroute2's
generic NLA classes, which build a Python object per attribute (the cost of each:
bench/NOTES.md).

Kernel quirks handled here and nowhere else:
- a device dump is split over many messages when it is large; a peer whose
  AllowedIPs do not fit in one message appears again in the next one (its key and
  the rest of its AllowedIPs only), so peers are merged by public key;
- a dump that raced with a change carries NLM_F_DUMP_INTR and is retried;
- the family has no multicast group: there are no handshake events, we poll.
"""

from __future__ import annotations

import base64
import errno as errno_
import os
import socket
import struct

from .model import Peer, normalize_prefix

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

WG_GENL_NAME = b"wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PEERS = 8
WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3

DUMP_RETRIES = 5
RECV_SIZE = 1 << 16  # the kernel fills dump messages up to 32 KiB when the reader's buffer allows
TIMEOUT = 5.0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # len, type
_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec
_PORT = struct.Struct("!H")


class KernelWgError(OSError):
    pass


def nla(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    body = _NLA.pack(4 + len(value), kind) + value
    return body + b"\0" * (-len(body) % 4)


def _attrs(buf, off: int, end: int):
    """(type, value start, value end) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        length, kind = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise KernelWgError(errno_.EPROTO, f"malformed netlink attribute at offset {off}")
        yield kind & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


def _endpoint(buf, v: int, end: int) -> str | None:
    family = _U16.unpack_from(buf, v)[0]
    if family == socket.AF_INET and end - v >= 8:
        addr, port = socket.inet_ntop(socket.AF_INET, bytes(buf[v + 4:v + 8])), _PORT.unpack_from(buf, v + 2)[0]
    elif family == socket.AF_INET6 and end - v >= 24:
        addr, port = socket.inet_ntop(socket.AF_INET6, bytes(buf[v + 8:v + 24])), _PORT.unpack_from(buf, v + 2)[0]
        scope = _U32.unpack_from(buf, v + 24)[0] if end - v >= 28 else 0
        return (f"[{addr}%{scope}]:{port}" if scope else f"[{addr}]:{port}") if port else None
    else:
        return None  # AF_UNSPEC: no endpoint yet
    return f"{addr}:{port}" if port else None


def _allowed_ips(buf, off: int, end: int) -> list[str]:
    out = []
    for _, a, a_end in _attrs(buf, off, end):
        family = addr = cidr = None
        for kind, v, v_end in _attrs(buf, a, a_end):
            if kind == WGALLOWEDIP_A_FAMILY:
                family = _U16.unpack_from(buf, v)[0]
            elif kind == WGALLOWEDIP_A_IPADDR:
                addr = bytes(buf[v:v_end])
            elif kind == WGALLOWEDIP_A_CIDR_MASK:
                cidr = buf[v]
        if family in (socket.AF_INET, socket.AF_INET6) and addr is not None and cidr is not None:
            out.append(normalize_prefix(f"{socket.inet_ntop(family, addr)}/{cidr}"))
    return out


# The same peers come back every poll: their keys, AllowedIPs and endpoints are decoded once
# and looked up by their raw bytes after that.
_keys: dict[bytes, str] = {}
_allowed: dict[bytes, tuple[str, ...]] = {}
_endpoints: dict[bytes, str | None] = {}


def _remember(cache: dict, raw: bytes, value):
    if len(cache) >= 1 << 16:
        cache.clear()
    cache[raw] = value
    return value


def merge_dump(messages, memo: dict | None = None) -> tuple[tuple[Peer, ...], bool]:
    """Peers from the payloads (bytes after the netlink header) and flags of one
    dump's messages, merged by public key; and whether the dump was interrupted
    (NLM_F_DUMP_INTR on any message).

    memo (one dict per interface, kept by the caller; updated only from a whole,
    uninterrupted dump) maps a peer's raw attributes to the Peer made of them: an
    unchanged peer costs a dict lookup and comes back as the same object, as with
    wg_uapi.parse. A peer split over messages is never taken from it or put in it."""
    # key -> a Peer (from the memo) or [ips, endpoint, handshake, rx, tx, keepalive]; dicts keep order
    acc: dict[str, list | Peer] = {}
    raws: dict[str, bytes | None] = {}  # key -> its raw attributes; None once it was split
    seen = memo or {}
    interrupted = False
    unpack_nla = _NLA.unpack_from
    for flags, buf in messages:
        if flags & NLM_F_DUMP_INTR:
            interrupted = True
        for kind, d, d_end in _attrs(buf, 4, len(buf)):  # 4: the genl header (cmd, version, reserved)
            if kind != WGDEVICE_A_PEERS:
                continue
            for _, off, p_end in _attrs(buf, d, d_end):
                attrs_raw = bytes(buf[off:p_end])
                hit = seen.get(attrs_raw)
                if hit is not None and hit.public_key not in acc:
                    acc[hit.public_key] = hit
                    raws[hit.public_key] = attrs_raw
                    continue
                # One peer's attributes, walked inline: this loop runs for every attribute
                # of every peer on every poll, and a generator here was the dump's largest cost.
                key, ips, endpoint, hs, rx, tx, ka = None, (), False, None, None, None, None
                while off < p_end:
                    length, kind = unpack_nla(buf, off)
                    if length < 4 or off + length > p_end:
                        raise KernelWgError(errno_.EPROTO, f"malformed netlink attribute at offset {off}")
                    v, v_end = off + 4, off + length
                    kind &= NLA_TYPE_MASK
                    if kind == WGPEER_A_PUBLIC_KEY:
                        raw = bytes(buf[v:v_end])
                        key = _keys.get(raw) or _remember(_keys, raw, base64.b64encode(raw).decode())
                    elif kind == WGPEER_A_ALLOWEDIPS:
                        raw = bytes(buf[v:v_end])
                        ips = _allowed.get(raw)
                        if ips is None:
                            ips = _remember(_allowed, raw, tuple(_allowed_ips(buf, v, v_end)))
                    elif kind == WGPEER_A_LAST_HANDSHAKE_TIME:
                        sec, nsec = _TIMESPEC.unpack_from(buf, v)
                        hs = sec + nsec / 1e9
                    elif kind == WGPEER_A_RX_BYTES:
                        rx = _U64.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_TX_BYTES:
                        tx = _U64.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL:
                        ka = _U16.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_ENDPOINT:
                        raw = bytes(buf[v:v_end])
                        endpoint = _endpoints[raw] if raw in _endpoints else \
                            _remember(_endpoints, raw, _endpoint(buf, v, v_end))
                    off += (length + 3) & ~3
                if key is None:
                    raise KernelWgError(errno_.EPROTO, "peer without a public key in the dump")
                cur = acc.get(key)
                if cur is None:
                    cur = acc[key] = [list(ips), None, 0.0, 0, 0, 0]
                    raws[key] = attrs_raw
                else:
                    if isinstance(cur, Peer):  # its first part came from the memo
                        cur = acc[key] = [list(cur.allowed_ips), *cur[2:]]
                    cur[0].extend(ips)  # a continuation: more AllowedIPs of a peer already seen
                    raws[key] = None
                if endpoint is not False:
                    cur[1] = endpoint
                if hs is not None:
                    cur[2] = hs
                if rx is not None:
                    cur[3] = rx
                if tx is not None:
                    cur[4] = tx
                if ka is not None:
                    cur[5] = ka
    peers = tuple(c if isinstance(c, Peer) else Peer(k, tuple(c[0]), c[1], c[2], c[3], c[4], c[5])
                  for k, c in acc.items())
    if memo is not None and not interrupted:
        memo.clear()  # only this dump's peers: the memo never outgrows the interface
        memo.update((raws[p.public_key], p) for p in peers if raws[p.public_key] is not None)
    return peers, interrupted


class KernelWireGuard:
    """One generic netlink socket, opened on first use and kept; closed (and opened
    afresh on the next read) after any error, so a half-read answer never lingers."""

    def __init__(self):
        self._sock: socket.socket | None = None
        self._family = 0
        self._seq = 0
        self._buf = bytearray(RECV_SIZE)
        self._memo: dict[str, dict] = {}  # per interface: see merge_dump

    def _request(self, kind: int, flags: int, cmd: int, version: int, attrs: bytes):
        """Send one request; yield (flags, payload) of each answer message until
        the end of the dump (or the single answer), raising on a netlink error."""
        self._seq += 1
        seq = self._seq
        body = bytes((cmd, version, 0, 0)) + attrs
        self._sock.send(_NLMSGHDR.pack(16 + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        view = memoryview(self._buf)
        while True:
            n, _, msg_flags, _ = self._sock.recvmsg_into([view])
            if msg_flags & socket.MSG_TRUNC:
                raise KernelWgError(errno_.EMSGSIZE, "netlink answer larger than the receive buffer")
            off = 0
            while off + 16 <= n:
                length, mtype, mflags, mseq, _ = _NLMSGHDR.unpack_from(view, off)
                if length < 16 or off + length > n:
                    raise KernelWgError(errno_.EPROTO, "malformed netlink message")
                payload = bytes(view[off + 16:off + length])
                off += (length + 3) & ~3
                if mseq != seq:
                    continue  # left over from an earlier request
                if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code:
                        raise KernelWgError(code, os.strerror(code))
                    if mtype == NLMSG_DONE or not flags & NLM_F_DUMP:
                        yield mflags, b""  # DONE carries DUMP_INTR too
                        return
                    continue  # an ack within a dump: cannot happen, but harmless
                yield mflags, payload
                if not flags & NLM_F_DUMP:
                    return

    def _open(self):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        try:
            sock.settimeout(TIMEOUT)
            sock.bind((0, 0))
            self._sock = sock
            family = 0
            try:
                for _, payload in self._request(GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, 1,
                                                nla(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME + b"\0")):
                    for kind, v, _ in _attrs(payload, 4, len(payload)):
                        if kind == CTRL_ATTR_FAMILY_ID:
                            family = _U16.unpack_from(payload, v)[0]
            except KernelWgError as e:
                raise KernelWgError(errno_.ENOENT, f"wireguard generic netlink family unavailable ({e.strerror})") from None
            if not family:
                raise KernelWgError(errno_.ENOENT, "wireguard generic netlink family unavailable")
            self._family = family
        except BaseException:
            self._sock = None
            sock.close()
            raise

    def read_peers(self, ifname: str) -> tuple[Peer, ...]:
        request = nla(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")
        try:
            for _ in range(DUMP_RETRIES):
                if self._sock is None:
                    self._open()
                # the whole dump first, decoded after: decoding between the reads
                # would widen the window in which a change interrupts the dump
                messages = list(self._request(self._family, NLM_F_DUMP, WG_CMD_GET_DEVICE, WG_GENL_VERSION,
                                              request))
                peers, interrupted = merge_dump(messages, self._memo.setdefault(ifname, {}))
                if not interrupted:
                    return peers
        except OSError as e:
            self.close()
            if isinstance(e, KernelWgError):
                raise KernelWgError(e.errno, f"{ifname}: {e.strerror}") from None
            raise KernelWgError(e.errno or errno_.EIO, f"{ifname}: {e}") from None
        raise KernelWgError(errno_.EINTR, f"{ifname}: dump interrupted {DUMP_RETRIES} times in a row")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
