"""Kernel WireGuard over generic netlink (netlink.NetlinkSocket, NETLINK_GENERIC).

The protocol is small and fixed (include/uapi/linux/wireguard.h): one dump request,
WG_CMD_GET_DEVICE by interface name; the answer is nested attributes. It is decoded
here with struct, as wireguard-tools does in C, rather than through pyroute2's
generic NLA classes, which build a Python object per attribute (the cost of each:
bench/NOTES.md).

Kernel quirks handled here and nowhere else:
- a device dump is split over many messages when it is large; a peer whose
  AllowedIPs do not fit in one message appears again in the next one (its key and
  the rest of its AllowedIPs only), so peers are merged by public key;
- a dump that raced with a change carries NLM_F_DUMP_INTR: netlink.py reads it again,
  so only a whole, consistent dump is ever merged (and feeds the memo);
- an unknown interface name is ENODEV, from the dump request itself;
- the family has no multicast group: there are no handshake events, we poll.

Errors: KernelWgError (an OSError) and nothing else, whatever the kernel sends: its
errno, netlink.py's ETIMEDOUT, EMSGSIZE and EINTR, and EPROTO for a message or
attribute that does not parse (a fixed-size attribute of another size included).
"""

from __future__ import annotations

import base64
import errno as errno_
import socket
import struct
from typing import TYPE_CHECKING

from .model import Peer, normalize_prefix
from .netlink import NETLINK_GENERIC, NLA, NLA_TYPE_MASK, Malformed, NetlinkSocket, attr, attrs

if TYPE_CHECKING:
    from .rtnl_links import Link

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

WG_GENL_NAME = b"wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_LISTEN_PORT = 6
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

_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec
_PORT = struct.Struct("!H")
_ADDR_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}
# attribute lengths (header included) of the fixed-size peer attributes
_KEY_LEN, _TIMESPEC_LEN, _U64_LEN, _U16_LEN = 4 + 32, 4 + _TIMESPEC.size, 4 + 8, 4 + 2


class KernelWgError(OSError):
    pass


def _bad(detail: str) -> KernelWgError:
    return KernelWgError(errno_.EPROTO, f"malformed netlink message: {detail}")


def _attrs(buf, off: int, end: int):
    """(type, value start, value end) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        length, kind = NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise _bad(f"attribute of length {length} at offset {off}")
        yield kind & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


def _endpoint(buf, v: int, end: int) -> str | None:
    """A struct sockaddr_in / sockaddr_in6 as "addr:port"; None without a port or of
    another family (AF_UNSPEC: no endpoint yet)."""
    if end - v < 2:
        raise _bad("endpoint without an address family")
    family = _U16.unpack_from(buf, v)[0]
    if family == socket.AF_INET and end - v >= 8:
        addr, port = socket.inet_ntop(socket.AF_INET, bytes(buf[v + 4:v + 8])), _PORT.unpack_from(buf, v + 2)[0]
    elif family == socket.AF_INET6 and end - v >= 24:
        addr, port = socket.inet_ntop(socket.AF_INET6, bytes(buf[v + 8:v + 24])), _PORT.unpack_from(buf, v + 2)[0]
        scope = _U32.unpack_from(buf, v + 24)[0] if end - v >= 28 else 0
        return (f"[{addr}%{scope}]:{port}" if scope else f"[{addr}]:{port}") if port else None
    else:
        return None
    return f"{addr}:{port}" if port else None


def _allowed_ips(buf, off: int, end: int) -> list[str]:
    out = []
    for _, a, a_end in _attrs(buf, off, end):
        family = addr = cidr = None
        for kind, v, v_end in _attrs(buf, a, a_end):
            if kind == WGALLOWEDIP_A_FAMILY:
                if v_end - v != 2:
                    raise _bad(f"allowed IP family of {v_end - v} bytes")
                family = _U16.unpack_from(buf, v)[0]
            elif kind == WGALLOWEDIP_A_IPADDR:
                addr = bytes(buf[v:v_end])
            elif kind == WGALLOWEDIP_A_CIDR_MASK:
                if v_end - v != 1:
                    raise _bad(f"allowed IP mask of {v_end - v} bytes")
                cidr = buf[v]
        if family in _ADDR_SIZE and addr is not None and cidr is not None:
            if len(addr) != _ADDR_SIZE[family] or cidr > 8 * len(addr):
                raise _bad(f"allowed IP of {len(addr)} bytes, mask {cidr}, family {family}")
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


def merge_dump(payloads, memo: dict | None = None) -> tuple[Peer, ...]:
    """Peers from the payloads (bytes after the netlink header) of one whole,
    uninterrupted dump's messages, merged by public key. KernelWgError(EPROTO) when
    one does not parse.

    memo (one dict per interface, kept by the caller) maps a peer's raw attributes to
    the Peer made of them: an unchanged peer costs a dict lookup and comes back as the
    same object, as with wg_uapi.parse. A peer split over messages is never taken from
    it or put in it."""
    try:
        return _merge(payloads, memo)
    except (struct.error, IndexError, ValueError) as e:  # what the checks below did not foresee
        raise _bad(str(e)) from None


def _merge(payloads, memo: dict | None) -> tuple[Peer, ...]:
    # key -> a Peer (from the memo) or [ips, endpoint, handshake, rx, tx, keepalive]; dicts keep order
    acc: dict[str, list | Peer] = {}
    raws: dict[str, bytes | None] = {}  # key -> its raw attributes; None once it was split
    seen = memo or {}
    unpack_nla = NLA.unpack_from
    for buf in payloads:
        if len(buf) < 4:
            raise _bad(f"generic netlink message of {len(buf)} bytes")
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
                # A fixed-size attribute of another size is refused, not read past its end.
                key, ips, endpoint, hs, rx, tx, ka = None, (), False, None, None, None, None
                while off + 4 <= p_end:
                    length, kind = unpack_nla(buf, off)
                    if length < 4 or off + length > p_end:
                        raise _bad(f"attribute of length {length} at offset {off}")
                    v, v_end = off + 4, off + length
                    kind &= NLA_TYPE_MASK
                    if kind == WGPEER_A_PUBLIC_KEY:
                        if length != _KEY_LEN:
                            raise _bad(f"public key of {length - 4} bytes")
                        raw = bytes(buf[v:v_end])
                        key = _keys.get(raw) or _remember(_keys, raw, base64.b64encode(raw).decode())
                    elif kind == WGPEER_A_ALLOWEDIPS:
                        raw = bytes(buf[v:v_end])
                        ips = _allowed.get(raw)
                        if ips is None:
                            ips = _remember(_allowed, raw, tuple(_allowed_ips(buf, v, v_end)))
                    elif kind == WGPEER_A_LAST_HANDSHAKE_TIME:
                        if length != _TIMESPEC_LEN:
                            raise _bad(f"handshake time of {length - 4} bytes")
                        sec, nsec = _TIMESPEC.unpack_from(buf, v)
                        hs = sec + nsec / 1e9
                    elif kind == WGPEER_A_RX_BYTES:
                        if length != _U64_LEN:
                            raise _bad(f"rx_bytes of {length - 4} bytes")
                        rx = _U64.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_TX_BYTES:
                        if length != _U64_LEN:
                            raise _bad(f"tx_bytes of {length - 4} bytes")
                        tx = _U64.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL:
                        if length != _U16_LEN:
                            raise _bad(f"keepalive interval of {length - 4} bytes")
                        ka = _U16.unpack_from(buf, v)[0]
                    elif kind == WGPEER_A_ENDPOINT:
                        raw = bytes(buf[v:v_end])
                        endpoint = _endpoints[raw] if raw in _endpoints else \
                            _remember(_endpoints, raw, _endpoint(buf, v, v_end))
                    off += (length + 3) & ~3
                if key is None:
                    raise _bad("peer without a public key in the dump")
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
    if memo is not None:
        memo.clear()  # only this dump's peers: the memo never outgrows the interface
        memo.update((raws[p.public_key], p) for p in peers if raws[p.public_key] is not None)
    return peers


def listen_port(payloads) -> int:
    """WGDEVICE_A_LISTEN_PORT of a dump (every message carries the device's attributes
    before its peers; the first one's are read); 0 when absent."""
    for buf in payloads[:1]:
        for kind, v, v_end in _attrs(buf, 4, len(buf)):
            if kind == WGDEVICE_A_LISTEN_PORT and v_end - v == 2:
                return _U16.unpack_from(buf, v)[0]
    return 0


def _payload(data: bytes, _mtype: int, off: int, end: int) -> bytes:
    return data[off:end]


class KernelWireGuard:
    """The kernel backend (see wgsource.Backend): peers of kernel WireGuard
    interfaces, over one generic netlink socket, opened (and the family's id looked
    up) on first use and kept; closed after any error, and opened afresh on the next
    read, so a half-read answer never lingers."""

    kind = "kernel"

    def __init__(self):
        self._sock: NetlinkSocket | None = None
        self._family = 0
        self._memo: dict[str, dict] = {}  # per interface: see merge_dump
        self.ports: dict[str, int] = {}  # per interface: its listen port at the last read

    def serves(self, name: str, link: Link) -> str:
        """A link of kind wireguard is the kernel's, whatever sockets lie around."""
        return "" if link.kind == "wireguard" else f"kind {link.kind or 'none'!r}"

    def _open(self):
        try:
            sock = NetlinkSocket(NETLINK_GENERIC)
        except OSError as e:
            raise KernelWgError(e.errno, f"generic netlink socket: {e.strerror}") from None
        try:
            request = bytes((CTRL_CMD_GETFAMILY, 1, 0, 0)) + attr(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME + b"\0")
            try:
                answer = sock.request(GENL_ID_CTRL, request, "wireguard family lookup")
                family = attrs(answer, 4, len(answer)).get(CTRL_ATTR_FAMILY_ID) if len(answer) >= 4 else None
            except Malformed as e:
                raise KernelWgError(errno_.EPROTO, f"wireguard family lookup: {e.strerror}") from None
            except OSError as e:
                if e.errno == errno_.ENOENT:  # the controller knows no such family: no module loaded
                    raise KernelWgError(errno_.ENOENT, "wireguard generic netlink family unavailable "
                                                       f"({e.strerror.partition(': ')[2]})") from None
                raise KernelWgError(e.errno, e.strerror) from None
            if family is None:
                raise KernelWgError(errno_.ENOENT, "wireguard generic netlink family unavailable")
            if len(family) != 2:
                raise _bad(f"wireguard family id of {len(family)} bytes")
            self._family = _U16.unpack(family)[0]
            self._sock = sock
        except BaseException:
            sock.close()
            raise

    def read_peers(self, ifname: str) -> tuple[Peer, ...]:
        request = bytes((WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0)) + attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")
        try:
            if self._sock is None:
                self._open()
            # the whole dump first, decoded after: decoding between the reads would
            # widen the window in which a change interrupts the dump
            payloads = self._sock.dump(self._family, [request], _payload, ifname)
            peers = merge_dump(payloads, self._memo.setdefault(ifname, {}))
            self.ports[ifname] = listen_port(payloads)
            return peers
        except KernelWgError as e:  # ours: say which interface
            self.close()
            raise KernelWgError(e.errno, f"{ifname}: {e.strerror}") from None
        except OSError as e:  # netlink.py's, already "<ifname>: ..."
            self.close()
            raise KernelWgError(e.errno or errno_.EIO, e.strerror or str(e)) from None

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
