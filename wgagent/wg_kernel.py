"""Kernel WireGuard over generic netlink (pyroute2's WireGuard).

Kernel quirks handled here and nowhere else:
- a device dump is split over many messages when it is large; a peer whose
  AllowedIPs do not fit in one message appears again in the next one with the
  rest, so peers are merged by public key;
- a dump that raced with a change carries NLM_F_DUMP_INTR and is retried;
- the family has no multicast group: there are no handshake events, we poll.
"""

from __future__ import annotations

import base64
import errno as errno_
import ipaddress

from .model import Peer, normalize_prefix

NLM_F_DUMP_INTR = 0x10
DUMP_RETRIES = 5


class KernelWgError(OSError):
    pass


def _field(obj, name):
    """A decoded NLA's field, whether pyroute2 gave a dict-like nla or a plain dict."""
    try:
        return obj[name]
    except (KeyError, TypeError, IndexError):
        return None


def _key(nla_value) -> str:
    raw = _field(nla_value, "key")
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 32:
        return base64.b64encode(bytes(raw)).decode()
    value = _field(nla_value, "value")
    if value is None:
        value = nla_value
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _endpoint(ep) -> str | None:
    if ep is None:
        return None
    addr, port = _field(ep, "addr"), _field(ep, "port")
    if not addr or addr in ("0.0.0.0", "::") or not port:
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _allowed_ip(aip) -> str | None:
    addr = _field(aip, "addr")
    if not addr:
        get = getattr(aip, "get_attr", None)
        if get is None or get("WGALLOWEDIP_A_IPADDR") is None:
            return None
        family = get("WGALLOWEDIP_A_FAMILY")
        raw = bytes.fromhex(get("WGALLOWEDIP_A_IPADDR").replace(":", ""))
        net = ipaddress.ip_address(raw if family == 10 else raw[:4])
        addr = f"{net}/{get('WGALLOWEDIP_A_CIDR_MASK')}"
    return normalize_prefix(addr)


def merge_dump(messages) -> tuple[tuple[Peer, ...], bool]:
    """Peers from the messages of one dump, merged by public key; and whether the
    dump was interrupted (NLM_F_DUMP_INTR on any message)."""
    order: list[str] = []
    acc: dict[str, dict] = {}
    interrupted = False
    for msg in messages:
        if msg["header"]["flags"] & NLM_F_DUMP_INTR:
            interrupted = True
        for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            cur = acc.get(key)
            if cur is None:
                cur = acc[key] = {"ips": [], "endpoint": None, "hs": 0.0, "rx": 0, "tx": 0, "ka": 0}
                order.append(key)
            for aip in p.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                prefix = _allowed_ip(aip)
                if prefix is not None:
                    cur["ips"].append(prefix)
            ep = _endpoint(p.get_attr("WGPEER_A_ENDPOINT"))
            if ep is not None:
                cur["endpoint"] = ep
            hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if hs is not None:
                cur["hs"] = (_field(hs, "tv_sec") or 0) + (_field(hs, "tv_nsec") or 0) / 1e9
            for attr, slot in (("WGPEER_A_RX_BYTES", "rx"), ("WGPEER_A_TX_BYTES", "tx"),
                               ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "ka")):
                value = p.get_attr(attr)
                if value is not None:
                    cur[slot] = value
    peers = tuple(Peer(k, tuple(acc[k]["ips"]), acc[k]["endpoint"], acc[k]["hs"], acc[k]["rx"],
                       acc[k]["tx"], acc[k]["ka"]) for k in order)
    return peers, interrupted


class KernelWireGuard:
    """One generic netlink socket, opened on first use and kept."""

    def __init__(self):
        self._wg = None

    def _socket(self):
        if self._wg is None:
            from pyroute2 import WireGuard  # imported only where kernel WireGuard is used

            try:
                self._wg = WireGuard()
            except Exception as e:  # pyroute2 raises various types when the family is absent
                raise KernelWgError(errno_.ENOENT, f"wireguard generic netlink family unavailable: {e}") from None
        return self._wg

    def read_peers(self, ifname: str) -> tuple[Peer, ...]:
        from pyroute2.netlink.exceptions import NetlinkError

        for _ in range(DUMP_RETRIES):
            try:
                peers, interrupted = merge_dump(self._socket().info(ifname))
            except NetlinkError as e:
                raise KernelWgError(e.code, f"{ifname}: {e}") from None
            if not interrupted:
                return peers
        raise KernelWgError(errno_.EINTR, f"{ifname}: dump interrupted {DUMP_RETRIES} times in a row")

    def close(self):
        if self._wg is not None:
            self._wg.close()
            self._wg = None
