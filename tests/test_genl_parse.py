"""Generic netlink dumps of kernel WireGuard decoded into peers. No root: the
messages are built here byte by byte as the kernel lays them out
(drivers/net/wireguard/netlink.c), and pyroute2's independent decoder checks them.
The real kernel's dumps are read in the test VM (test_kernel_genl.py)."""

from __future__ import annotations

import base64
import errno
import socket
import struct

import pytest

from wgagent import netlink as nl
from wgagent import wg_kernel as wk
from wgagent.wg_kernel import KernelWgError

nla = nl.attr

NESTED = 0x8000
KEY1, KEY2 = bytes(range(32)), bytes(range(100, 132))


def nest(kind: int, *items: bytes) -> bytes:
    return nla(kind | NESTED, b"".join(items))


def sockaddr(addr: str, port: int, scope: int = 0) -> bytes:
    if ":" in addr:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + \
            socket.inet_pton(socket.AF_INET6, addr) + struct.pack("=I", scope)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, addr) + \
        b"\0" * 8


def allowed(*prefixes: str) -> bytes:
    items = []
    for i, prefix in enumerate(prefixes):
        addr, cidr = prefix.split("/")
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        items.append(nest(i, nla(wk.WGALLOWEDIP_A_FAMILY, struct.pack("=H", family)),
                          nla(wk.WGALLOWEDIP_A_IPADDR, socket.inet_pton(family, addr)),
                          nla(wk.WGALLOWEDIP_A_CIDR_MASK, bytes((int(cidr),)))))
    return nest(wk.WGPEER_A_ALLOWEDIPS, *items)


def peer(key: bytes, ips=(), endpoint=None, handshake=(0, 0), rx=0, tx=0, keepalive=0, full=True) -> bytes:
    """One peer as the kernel puts it: everything in its first piece, only the key
    and more AllowedIPs in a continuation (full=False)."""
    attrs = [nla(wk.WGPEER_A_PUBLIC_KEY, key)]
    if full:
        attrs += [nla(2, b"\0" * 32),  # preshared key: not read
                  nla(wk.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", *handshake)),
                  nla(wk.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", keepalive)),
                  nla(wk.WGPEER_A_TX_BYTES, struct.pack("=Q", tx)),
                  nla(wk.WGPEER_A_RX_BYTES, struct.pack("=Q", rx)),
                  nla(10, struct.pack("=I", 1))]  # protocol version: not read
        if endpoint:
            attrs.append(nla(wk.WGPEER_A_ENDPOINT, sockaddr(*endpoint)))
    if ips:
        attrs.append(allowed(*ips))
    return nest(0, *attrs)


def message(*peers: bytes) -> bytes:
    """A WG_CMD_GET_DEVICE answer's payload: genl header, device attributes, peers."""
    return (bytes((wk.WG_CMD_GET_DEVICE, 1, 0, 0)) + nla(1, struct.pack("=I", 7)) + nla(2, b"wg0\0") +
            nla(6, struct.pack("=H", 51820)) + nest(wk.WGDEVICE_A_PEERS, *peers))


def test_one_message_every_field():
    msg = message(peer(KEY1, ("10.0.31.5/32", "fd00::5/128"), ("203.0.113.7", 51820), (1700000000, 500000000),
                       rx=2224, tx=38333, keepalive=25),
                  peer(KEY2, ("10.0.0.0/8",), ("2001:db8::1", 4500, 3)),
                  peer(bytes(32)))
    p1, p2, p3 = wk.merge_dump([msg])
    assert p1.public_key == base64.b64encode(KEY1).decode()
    assert p1.allowed_ips == ("10.0.31.5/32", "fd00::5/128")
    assert p1.endpoint == "203.0.113.7:51820"
    assert p1.last_handshake == 1700000000.5
    assert (p1.rx_bytes, p1.tx_bytes, p1.keepalive) == (2224, 38333, 25)
    assert p2.endpoint == "[2001:db8::1%3]:4500" and p2.last_handshake == 0
    assert p3.allowed_ips == () and p3.endpoint is None  # no AllowedIPs, no endpoint yet


def test_peer_split_over_messages_is_merged_by_key():
    first = message(peer(KEY1, [f"10.1.0.{i}/32" for i in range(1, 200)], ("192.0.2.1", 1), (5, 0), rx=9))
    rest = message(peer(KEY1, [f"10.1.1.{i}/32" for i in range(1, 100)] + ["fd00:1::/64"], full=False),
                   peer(KEY2, ("10.2.0.1/32",)))
    p1, p2 = wk.merge_dump([first, rest])
    assert len(p1.allowed_ips) == 199 + 100 and p1.allowed_ips[-1] == "fd00:1::/64"
    assert (p1.endpoint, p1.last_handshake, p1.rx_bytes) == ("192.0.2.1:1", 5.0, 9)  # the continuation keeps them
    assert p2.allowed_ips == ("10.2.0.1/32",)


def test_host_bits_and_ipv6_spelling_are_normalised_like_uapi():
    (p,) = wk.merge_dump([message(peer(KEY1, ("10.0.0.7/24", "fd00:0:0::1/128")))])
    assert p.allowed_ips == ("10.0.0.0/24", "fd00::1/128")


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_truncated_attribute_is_an_error_not_a_guess(cut):
    msg = message(peer(KEY1, ("10.0.0.1/32",)))
    with pytest.raises(KernelWgError) as e:
        wk.merge_dump([msg[:-cut]])
    assert e.value.errno == errno.EPROTO


def test_peer_without_key_is_an_error():
    with pytest.raises(KernelWgError, match="without a public key"):
        wk.merge_dump([message(nest(0, allowed("10.0.0.1/32")))])


def test_agrees_with_pyroute2s_decoder():
    """An independent reading of the same bytes: pyroute2's wgmsg NLA classes."""
    wgmsg = pytest.importorskip("pyroute2.netlink.generic.wireguard").wgmsg
    peers = [peer(bytes([i]) * 32, (f"10.9.{i}.0/24", f"fd09:{i}::/64"), ("198.51.100.9", 1000 + i),
                  (1700000000 + i, 250000000), rx=i * 1000, tx=i * 7, keepalive=i % 30) for i in range(1, 40)]
    payload = message(*peers)
    header = struct.pack("=IHHII", 16 + len(payload), 30, 2, 1, 0)
    decoded = wgmsg(header + payload)
    decoded.decode()
    ours = wk.merge_dump([payload])
    assert len(ours) == len(decoded.get_attr("WGDEVICE_A_PEERS")) == 39
    for mine, theirs in zip(ours, decoded.get_attr("WGDEVICE_A_PEERS")):
        key = theirs.get_attr("WGPEER_A_PUBLIC_KEY")
        key = key if isinstance(key, bytes) else key["value"]  # 0.9 gives the value, 0.7 the nla
        assert mine.public_key == (key.decode() if isinstance(key, bytes) else key)
        assert mine.rx_bytes == theirs.get_attr("WGPEER_A_RX_BYTES")
        assert mine.tx_bytes == theirs.get_attr("WGPEER_A_TX_BYTES")
        assert mine.keepalive == theirs.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
        hs = theirs.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
        assert mine.last_handshake == hs["tv_sec"] + hs["tv_nsec"] / 1e9
        ep = theirs.get_attr("WGPEER_A_ENDPOINT")
        assert mine.endpoint == f"{ep['addr']}:{ep['port']}"
        assert mine.allowed_ips == tuple(a["addr"] for a in theirs.get_attr("WGPEER_A_ALLOWEDIPS"))


def test_missing_family_is_a_clear_error():
    try:
        wk.KernelWireGuard().read_peers("wgx0")
    except KernelWgError as e:
        if e.errno != errno.ENOENT or "generic netlink family" not in str(e):
            pytest.skip(f"this kernel has the wireguard family ({e})")
        assert str(e).startswith("[Errno 2] wgx0: wireguard generic netlink family unavailable")
    else:
        pytest.skip("this kernel has the wireguard family and an interface wgx0")


FAMILY = 0x1B  # any id: the fake socket hands it out and checks that dumps use it


class Truncated(bytes):
    """A datagram the kernel had to cut to the reader's buffer (MSG_TRUNC)."""


class FakeGenl:
    """Stands in for the netlink socket: answers the family lookup, then each dump
    request with the next scripted dump: a list of (flags, payload) messages and the
    flags of the NLMSG_DONE after them, sent two messages per datagram as the kernel
    may; or a function of the request's seq giving the datagrams themselves (bytes,
    Truncated, or an exception to raise on that read). A read with nothing queued
    times out, as a socket with a timeout does when the kernel stays silent."""

    def __init__(self, dumps, family_attrs: bytes = nla(wk.CTRL_ATTR_FAMILY_ID, struct.pack("=H", FAMILY))):
        self.dumps = list(dumps)
        self.family_attrs = family_attrs
        self.dump_requests = self.lookups = self.closed = 0
        self.pending: list = []

    def setsockopt(self, *args):
        pass

    def settimeout(self, _):
        pass

    def bind(self, _):
        pass

    def close(self):
        self.closed += 1

    def sendall(self, data: bytes):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data)
        assert length == len(data)
        if kind == wk.GENL_ID_CTRL:
            assert flags == nl.NLM_F_REQUEST
            assert data[16] == wk.CTRL_CMD_GETFAMILY and nla(wk.CTRL_ATTR_FAMILY_NAME, b"wireguard\0") in data
            self.lookups += 1
            answer = [(0, bytes((1, 2, 0, 0)) + self.family_attrs)]
            self.pending = [b"".join(self._message(f, p, kind, seq) for f, p in answer)]
            return
        assert kind == FAMILY and flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
        assert data[16:20] == bytes((wk.WG_CMD_GET_DEVICE, 1, 0, 0)) and data[20:] == nla(wk.WGDEVICE_A_IFNAME,
                                                                                       b"wg0\0")
        self.dump_requests += 1
        script = self.dumps.pop(0)  # IndexError: more dump requests than scripted
        if callable(script):
            self.pending = list(script(seq))
            return
        messages, done_flags = script
        messages = [(f, p, FAMILY) for f, p in messages] + [(done_flags, struct.pack("=i", 0), nl.NLMSG_DONE)]
        self.pending = [b"".join(self._message(*m, seq) for m in messages[i:i + 2])
                        for i in range(0, len(messages), 2)]

    @staticmethod
    def _message(flags: int, payload: bytes, kind: int, seq: int) -> bytes:
        return struct.pack("=IHHII", 16 + len(payload), kind, flags | 0x2, seq, 0) + payload  # 0x2: NLM_F_MULTI

    def recvmsg_into(self, buffers):
        (view,) = buffers
        if not self.pending:
            raise TimeoutError("timed out")
        data = self.pending.pop(0)
        if isinstance(data, BaseException):
            raise data
        n = min(len(data), len(view))
        view[:n] = data[:n]
        return n, [], socket.MSG_TRUNC if isinstance(data, Truncated) or n < len(data) else 0, (0, 0)


def kernel_with(monkeypatch, fake: FakeGenl) -> wk.KernelWireGuard:
    monkeypatch.setattr(socket, "socket", lambda *args: fake)
    return wk.KernelWireGuard()


def dump_of(*payloads, done: bytes = struct.pack("=i", 0), length_delta: int = 0):
    """A scripted dump: each payload one message of its own datagram, then DONE; the last
    data message's length field off by length_delta (a lying length)."""
    def script(seq):
        out = [FakeGenl._message(0, p, FAMILY, seq) for p in payloads]
        if length_delta:
            head = struct.unpack_from("=I", out[-1])[0] + length_delta
            out[-1] = struct.pack("=I", head) + out[-1][4:]
        return out + [FakeGenl._message(0, done, nl.NLMSG_DONE, seq)]
    return script


KEY3 = bytes(range(200, 232))
B64 = {k: base64.b64encode(k).decode() for k in (KEY1, KEY2, KEY3)}
WIDE1 = [f"10.1.0.{i}/32" for i in range(1, 101)]
WIDE2 = [f"10.1.1.{i}/32" for i in range(1, 101)]
# What the kernel sends when peers change mid-dump: KEY1's AllowedIPs were replaced
# between its two pieces, and KEY2, the cursor, was removed, which ends the dump early.
TORN = [(0, message(peer(KEY1, WIDE1))), (nl.NLM_F_DUMP_INTR, message(peer(KEY1, ["10.9.9.9/32"], full=False)))]
CLEAN = [(0, message(peer(KEY1, WIDE1))), (0, message(peer(KEY1, WIDE2, full=False), peer(KEY3, ["10.3.0.1/32"])))]


@pytest.mark.parametrize("where", ["message", "done"])
def test_interrupted_dump_is_retried_and_the_clean_one_returned(monkeypatch, where):
    torn = TORN if where == "message" else [(0, TORN[0][1]), (0, TORN[1][1])]
    fake = FakeGenl([(torn, nl.NLM_F_DUMP_INTR if where == "done" else 0), (CLEAN, 0)])
    k = kernel_with(monkeypatch, fake)
    peers = k.read_peers("wg0")
    assert fake.dump_requests == 2 and not fake.dumps
    assert {p.public_key: p.allowed_ips for p in peers} == {B64[KEY1]: tuple(WIDE1 + WIDE2),
                                                            B64[KEY3]: ("10.3.0.1/32",)}
    # the memo holds the clean dump's whole peers only: KEY1 was split, the torn dump never fed it
    assert [p.public_key for p in k._memo["wg0"].values()] == [B64[KEY3]]


def test_dump_interrupted_every_time_is_an_error(monkeypatch):
    fake = FakeGenl([(TORN, nl.NLM_F_DUMP_INTR)] * (nl.DUMP_RETRIES + 1))
    with pytest.raises(KernelWgError) as e:
        kernel_with(monkeypatch, fake).read_peers("wg0")
    assert e.value.errno == errno.EINTR
    assert str(e.value) == f"[Errno {errno.EINTR}] wg0: dump interrupted {nl.DUMP_RETRIES} times in a row"
    assert fake.dump_requests == nl.DUMP_RETRIES  # then it gives up: one spare dump left unasked


def test_the_memo_gives_back_unchanged_peers_and_never_holds_a_split_one():
    memo: dict = {}
    whole = message(peer(KEY1, ("10.0.31.5/32",), ("192.0.2.1", 1), (5, 0), rx=9), peer(KEY2, ("10.2.0.1/32",)))
    p1, p2 = wk.merge_dump([whole], memo)
    assert len(memo) == 2
    q1, q2 = wk.merge_dump([whole], memo)
    assert q1 is p1 and q2 is p2
    moved = message(peer(KEY1, ("10.0.31.5/32",), ("192.0.2.1", 1), (5, 0), rx=10), peer(KEY2, ("10.2.0.1/32",)))
    r1, r2 = wk.merge_dump([moved], memo)
    assert r1 is not p1 and r1.rx_bytes == 10 and r2 is p2
    # KEY2's first part is the same bytes as the whole peer was: taken from the memo,
    # then extended by its continuation, and not remembered as whole
    rest = message(peer(KEY2, ("10.2.0.2/32",), full=False))
    _, s2 = wk.merge_dump([moved, rest], memo)
    assert s2.allowed_ips == ("10.2.0.1/32", "10.2.0.2/32") and s2 is not p2
    assert [p.public_key for p in memo.values()] == [r1.public_key]


# --- outside input that does not parse: KernelWgError and nothing else

def with_attr(kind: int, value: bytes) -> bytes:
    """A dump message whose one peer has a key and the attribute given."""
    return message(nest(0, nla(wk.WGPEER_A_PUBLIC_KEY, KEY1), nla(kind, value)))


def with_allowed_ip(*attrs: bytes) -> bytes:
    return message(nest(0, nla(wk.WGPEER_A_PUBLIC_KEY, KEY1), nest(wk.WGPEER_A_ALLOWEDIPS, nest(0, *attrs))))


V4 = nla(wk.WGALLOWEDIP_A_FAMILY, struct.pack("=H", socket.AF_INET))
MALFORMED = {
    "key of 31 bytes": message(nest(0, nla(wk.WGPEER_A_PUBLIC_KEY, KEY1[:31]))),
    "handshake time of 8 bytes": with_attr(wk.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=q", 5)),
    "rx_bytes of 4 bytes": with_attr(wk.WGPEER_A_RX_BYTES, struct.pack("=I", 5)),
    "tx_bytes of 2 bytes": with_attr(wk.WGPEER_A_TX_BYTES, b"\1\0"),
    "keepalive of 4 bytes": with_attr(wk.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=I", 25)),
    "endpoint of 1 byte": with_attr(wk.WGPEER_A_ENDPOINT, b"\2"),
    "allowed IP family of 1 byte": with_allowed_ip(nla(wk.WGALLOWEDIP_A_FAMILY, b"\2"),
                                                   nla(wk.WGALLOWEDIP_A_IPADDR, bytes(4)),
                                                   nla(wk.WGALLOWEDIP_A_CIDR_MASK, b"\x20")),
    "IPv4 allowed IP of 3 bytes": with_allowed_ip(V4, nla(wk.WGALLOWEDIP_A_IPADDR, bytes(3)),
                                                  nla(wk.WGALLOWEDIP_A_CIDR_MASK, b"\x20")),
    "IPv4 mask 33": with_allowed_ip(V4, nla(wk.WGALLOWEDIP_A_IPADDR, bytes(4)), nla(wk.WGALLOWEDIP_A_CIDR_MASK, b"!")),
    "empty mask": with_allowed_ip(V4, nla(wk.WGALLOWEDIP_A_IPADDR, bytes(4)), nla(wk.WGALLOWEDIP_A_CIDR_MASK, b"")),
    "peer attribute past its peer": message(nest(0, struct.pack("=HH", 44, wk.WGPEER_A_PUBLIC_KEY) + KEY1)),
    "generic netlink header cut short": b"\0\1",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_dump_is_eproto_never_struct_index_or_value_error(monkeypatch, case):
    fake = FakeGenl([dump_of(MALFORMED[case]), dump_of(message(peer(KEY2, ("10.2.0.1/32",))))])
    k = kernel_with(monkeypatch, fake)
    with pytest.raises(KernelWgError) as e:
        k.read_peers("wg0")
    assert e.value.errno == errno.EPROTO and e.value.strerror.startswith("wg0: malformed netlink message"), e.value
    assert fake.closed == 1
    (p,) = k.read_peers("wg0")  # and the next read, on a new socket with a new family lookup, works
    assert p.public_key == B64[KEY2] and fake.lookups == 2


@pytest.mark.parametrize("script,code,text", [
    pytest.param(dump_of(message(peer(KEY1)), length_delta=8), errno.EPROTO, "wg0: malformed netlink message",
                 id="message length past the datagram"),
    pytest.param(dump_of(message(peer(KEY1)), length_delta=-30), errno.EPROTO, "wg0: malformed netlink message",
                 id="message length cutting into its attributes"),
    pytest.param(dump_of(message(peer(KEY1)), done=struct.pack("=i", -errno.EMSGSIZE)), errno.EMSGSIZE,
                 "wg0: Message too long", id="errno in NLMSG_DONE"),
    pytest.param(lambda seq: [Truncated(FakeGenl._message(0, message(peer(KEY1)), FAMILY, seq))], errno.EMSGSIZE,
                 f"wg0: an answer larger than the {nl.RECV_SIZE}-byte receive buffer", id="MSG_TRUNC"),
    pytest.param(lambda seq: [], errno.ETIMEDOUT, f"wg0: no answer from the kernel within {nl.TIMEOUT:g} s",
                 id="no answer"),
])
def test_netlink_failures_are_kernelwgerror_with_the_errno(monkeypatch, script, code, text):
    fake = FakeGenl([script])
    with pytest.raises(KernelWgError) as e:
        kernel_with(monkeypatch, fake).read_peers("wg0")
    assert e.value.errno == code and e.value.strerror.startswith(text), e.value


@pytest.mark.parametrize("family_attrs,code,text", [
    pytest.param(struct.pack("=HH", 9, wk.CTRL_ATTR_FAMILY_ID) + b"\0\0", errno.EPROTO,
                 "wg0: wireguard family lookup: malformed netlink message", id="attribute past the message"),
    pytest.param(nla(wk.CTRL_ATTR_FAMILY_ID, struct.pack("=I", FAMILY)), errno.EPROTO,
                 "wg0: malformed netlink message: wireguard family id of 4 bytes", id="id of 4 bytes"),
    pytest.param(nla(wk.CTRL_ATTR_FAMILY_NAME, b"wireguard\0"), errno.ENOENT,
                 "wg0: wireguard generic netlink family unavailable", id="no id"),
])
def test_a_family_lookup_answer_that_does_not_parse(monkeypatch, family_attrs, code, text):
    fake = FakeGenl([], family_attrs)
    with pytest.raises(KernelWgError) as e:
        kernel_with(monkeypatch, fake).read_peers("wg0")
    assert e.value.errno == code and e.value.strerror.startswith(text), e.value
    assert fake.dump_requests == 0
