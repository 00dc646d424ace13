"""A NETLINK_ROUTE socket of our own: requests in batches, each acknowledged, and dumps.

The wire format is small and stable (linux/netlink.h): a 16-byte header per message,
then a fixed struct and type-length-value attributes padded to 4 bytes. It is spoken
directly, not through pyroute2, which the daemon never imports (why: bench/NOTES.md).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x200, 0x400, 0x300
NLM_F_DUMP_INTR = 0x10
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
SO_RCVBUFFORCE = 33

NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type
U32 = struct.Struct("=I")
ERRNO = struct.Struct("=i")
BATCH = 512  # requests per datagram: well inside the socket buffers set below
DUMP_RETRIES = 5


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    pad = (4 - len(payload) % 4) % 4
    return NLA.pack(4 + len(payload), kind) + payload + b"\0" * pad


def attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """{type: payload} of the attributes in data[off:end] (one level)."""
    out = {}
    while off + 4 <= end:
        length, kind = NLA.unpack_from(data, off)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


def text(payload: bytes) -> str:
    """A NUL-terminated string attribute."""
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def messages(data: bytes):
    """(offset, length, type, flags, seq) of each netlink message in a datagram."""
    off = 0
    while off + NLMSG.size <= len(data):
        length, mtype, flags, seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            return
        yield off, length, mtype, flags, seq
        off += (length + 3) & ~3


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


class NetlinkSocket:
    def __init__(self):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:  # root may go past net.core.rmem_max: a batch's acks and a dump's parts fit
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 21)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        try:  # errors without a copy of our request: smaller answers
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        s.bind((0, 0))
        self.sock = s
        self.seq = itertools.count(1)

    def close(self):
        self.sock.close()

    def _recv(self) -> bytes:
        return self.sock.recv(1 << 20)

    def transact(self, encode, items: list) -> list[int]:
        """Send encode(item, seq) for each item, many per datagram; an errno per item
        (0 = done). Every request asks for its own acknowledgement, matched by seq."""
        results = [0] * len(items)
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            first = next(self.seq)
            for _ in range(len(chunk) - 1):
                next(self.seq)
            self.sock.sendall(b"".join(encode(item, first + i) for i, item in enumerate(chunk)))
            pending = len(chunk)
            while pending:
                data = self._recv()
                for off, _length, mtype, _flags, seq in messages(data):
                    if mtype == NLMSG_ERROR and first <= seq < first + len(chunk):
                        results[start + seq - first] = -ERRNO.unpack_from(data, off + NLMSG.size)[0]
                        pending -= 1
        return results

    def dump(self, mtype: int, bodies: list[bytes], decode, what: str) -> list:
        """One dump request of `mtype` per body, read to NLMSG_DONE; returns
        decode(data, type, body offset, end) of every answer that is not None.
        An interrupted dump (NLM_F_DUMP_INTR: a change raced with it) is read again."""
        for _ in range(DUMP_RETRIES):
            out: list = []
            interrupted = False
            for body in bodies:
                seq = next(self.seq)
                self.sock.sendall(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
                done = False
                while not done:
                    data = self._recv()
                    for off, length, rtype, flags, rseq in messages(data):
                        if rseq != seq:
                            continue
                        if flags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if rtype == NLMSG_DONE:
                            done = True
                        elif rtype == NLMSG_ERROR:
                            code = -ERRNO.unpack_from(data, off + NLMSG.size)[0]
                            raise OSError(code, f"{what} dump failed: {os.strerror(code)}")
                        else:
                            item = decode(data, rtype, off + NLMSG.size, off + length)
                            if item is not None:
                                out.append(item)
            if not interrupted:
                return out
        raise OSError(errno.EINTR, f"{what} dump interrupted {DUMP_RETRIES} times in a row")
