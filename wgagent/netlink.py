"""Netlink sockets of our own, for rtnetlink and generic netlink: the wire format,
requests in batches (each acknowledged), single requests, and dumps.

The wire format is small and stable (linux/netlink.h): a 16-byte header per message,
then a fixed struct and type-length-value attributes padded to 4 bytes. It is spoken
directly, not through pyroute2, which the daemon never imports (why: bench/NOTES.md).

One error policy for both protocols. Everything that reaches a caller is an OSError:
- the errno the kernel puts in NLMSG_ERROR, and in NLMSG_DONE (a dump that fails
  part way ends with a DONE carrying it): OSError(errno, "<what>: <strerror>");
- no answer within the socket's timeout (a lost acknowledgement must not block the
  daemon's loop forever): ETIMEDOUT, naming what was waited for;
- an answer larger than the receive buffer (MSG_TRUNC: the rest of it is lost): EMSGSIZE;
- a message or attribute whose lengths do not add up, a fixed header cut short, a
  field of the wrong size: EPROTO, never struct.error, IndexError or ValueError;
- a dump that raced with a change (NLM_F_DUMP_INTR on any of its messages, DONE
  included) is read again, up to DUMP_RETRIES times; then EINTR.
Answers are matched to requests by sequence number: a message with another one is a
left-over of an earlier request and is skipped. After any error while answers were
being read, the socket is replaced before the next request, so that the rest of an
abandoned dump (which would make the kernel refuse the next one with EBUSY) never
lingers.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct

NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLMSG_MIN_TYPE = 0x10  # below: control messages (NOOP, ERROR, DONE, OVERRUN)
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
MAX_ERRNO = 4096  # the kernel's errnos are below (include/linux/err.h)
TIMEOUT = 5.0  # seconds to wait for each datagram of an answer
# The kernel fills a dump's datagrams up to 32 KiB when the reader's buffer allows
# (netlink_recvmsg caps max_recvmsg_len there), and acknowledgements are small: 64 KiB
# leaves room, and a datagram that does not fit is reported (EMSGSIZE), never cut.
RECV_SIZE = 1 << 16


class Malformed(OSError):
    """EPROTO: a message that does not parse. The socket's methods re-raise it as a
    plain OSError(EPROTO) naming what was being read."""

    def __init__(self, detail: str):
        super().__init__(errno.EPROTO, f"malformed netlink message: {detail}")


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    pad = (4 - len(payload) % 4) % 4
    return NLA.pack(4 + len(payload), kind) + payload + b"\0" * pad


def attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """{type: payload} of the attributes in data[off:end] (one level). EPROTO when an
    attribute's length is below its header or runs past `end`; fewer than 4 bytes
    left over at the end are padding (as libmnl's mnl_attr_ok reads it)."""
    out = {}
    while off + 4 <= end:
        length, kind = NLA.unpack_from(data, off)
        if length < 4 or off + length > end:
            raise Malformed(f"attribute of length {length} at offset {off} in {end - off} bytes")
        out[kind & NLA_TYPE_MASK] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


def text(payload: bytes) -> str:
    """A NUL-terminated string attribute."""
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def messages(data: bytes):
    """(offset, length, type, flags, seq) of each netlink message in a datagram.
    EPROTO when a length is below the header's or runs past the datagram, or when
    bytes are left over that cannot hold a header."""
    off, size = 0, len(data)
    while off < size:
        if off + NLMSG.size > size:
            raise Malformed(f"{size - off} bytes after the last message")
        length, mtype, flags, seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size or off + length > size:
            raise Malformed(f"message of length {length} at offset {off} of a {size}-byte datagram")
        yield off, length, mtype, flags, seq
        off += (length + 3) & ~3


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


def _errno(data: bytes, off: int, end: int, mtype: int) -> int:
    """The errno of an NLMSG_ERROR or NLMSG_DONE whose body is data[off:end] (0: none).
    DONE may come without one (some families send it empty); ERROR may not."""
    if end - off < ERRNO.size:
        if mtype == NLMSG_DONE:
            return 0
        raise Malformed("NLMSG_ERROR without an error code")
    code = -ERRNO.unpack_from(data, off)[0]
    if not 0 <= code < MAX_ERRNO:
        raise Malformed(f"error code {-code}")
    return code


class NetlinkSocket:
    """A netlink socket of one protocol (NETLINK_ROUTE or NETLINK_GENERIC), bound to
    the kernel, with the error policy above. Not thread-safe."""

    def __init__(self, protocol: int = NETLINK_ROUTE, timeout: float = TIMEOUT):
        self.protocol = protocol
        self.timeout = timeout
        self.seq = itertools.count(1)
        self._view = memoryview(bytearray(RECV_SIZE))
        self._stale = False
        self.sock = self._open()

    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, self.protocol)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            try:  # root may go past net.core.rmem_max: a batch's acks and a dump's parts fit
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 21)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            try:  # errors without a copy of our request: smaller answers
                s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass
            s.settimeout(self.timeout)
            s.bind((0, 0))
        except BaseException:
            s.close()
            raise
        return s

    def close(self):
        self.sock.close()

    def _send(self, data: bytes, what: str):
        if self._stale:  # the previous request's answers were abandoned part way
            self.sock.close()
            self.sock = self._open()
            self._stale = False
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise OSError(e.errno or errno.EIO, f"{what}: {e.strerror or e}") from None

    def _recv(self, what: str) -> bytes:
        """One datagram."""
        try:
            n, _, flags, _ = self.sock.recvmsg_into([self._view])
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"{what}: no answer from the kernel within {self.timeout:g} s") from None
        except OSError as e:
            raise OSError(e.errno or errno.EIO, f"{what}: {e.strerror or e}") from None
        if flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, f"{what}: an answer larger than the {RECV_SIZE}-byte receive buffer")
        return bytes(self._view[:n])

    def _answers(self, seq: int, what: str, dump: bool):
        """(datagram, type, flags, body offset, end) of each answer to request `seq`:
        every message of a dump, its NLMSG_DONE last, or the single answer to another
        request. An errno in NLMSG_ERROR or NLMSG_DONE raises."""
        while True:
            data = self._recv(what)
            for off, length, mtype, flags, rseq in messages(data):
                if rseq != seq:
                    continue  # left over from an earlier request
                body, end = off + NLMSG.size, off + length
                if mtype < NLMSG_MIN_TYPE:
                    if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
                        code = _errno(data, body, end, mtype)
                        if code:
                            raise OSError(code, f"{what}: {os.strerror(code)}")
                        if mtype == NLMSG_DONE or not dump:
                            yield data, mtype, flags, body, end
                            return
                    continue  # NOOP, OVERRUN, an ack within a dump: nothing to read
                yield data, mtype, flags, body, end
                if not dump:
                    return

    @contextlib.contextmanager
    def _exchange(self, what: str):
        """Around reading one request's answers: a malformed message is EPROTO naming
        what was asked, and after any failure the socket is replaced before the next
        request (the rest of an abandoned dump would make the kernel refuse it: EBUSY)."""
        try:
            yield
        except Malformed as e:
            self._stale = True
            raise OSError(errno.EPROTO, f"{what}: {e.strerror}") from None
        except BaseException:
            self._stale = True
            raise

    def request(self, mtype: int, body: bytes, what: str, flags: int = 0) -> bytes:
        """One request that is not a dump; the body of its answer (b"" for a bare ack)."""
        seq = next(self.seq)
        self._send(message(mtype, NLM_F_REQUEST | flags, seq, body), what)
        with self._exchange(what):
            data, rtype, _flags, off, end = next(self._answers(seq, what, dump=False))
        return b"" if rtype < NLMSG_MIN_TYPE else data[off:end]

    def transact(self, encode, items: list, what: str = "request") -> list[int]:
        """Send encode(item, seq) for each item, many per datagram; an errno per item
        (0 = done). Every request asks for its own acknowledgement, matched by seq."""
        results = [0] * len(items)
        with self._exchange(what):
            for start in range(0, len(items), BATCH):
                chunk = items[start:start + BATCH]
                first = next(self.seq)
                for _ in range(len(chunk) - 1):
                    next(self.seq)
                self._send(b"".join(encode(item, first + i) for i, item in enumerate(chunk)), what)
                answered = bytearray(len(chunk))
                pending = len(chunk)
                while pending:
                    data = self._recv(what)
                    for off, length, mtype, _flags, seq in messages(data):
                        i = seq - first
                        if mtype == NLMSG_ERROR and 0 <= i < len(chunk) and not answered[i]:
                            results[start + i] = _errno(data, off + NLMSG.size, off + length, mtype)
                            answered[i] = 1
                            pending -= 1
        return results

    def dump(self, mtype: int, bodies: list[bytes], decode, what: str) -> list:
        """One dump request of `mtype` per body, read to NLMSG_DONE; returns
        decode(data, type, body offset, end) of every answer that is not None.
        decode may raise Malformed; a struct.error, IndexError or ValueError from it
        (a field of the wrong size, say) is taken for one too. An interrupted dump is
        read again."""
        with self._exchange(what):
            for _ in range(DUMP_RETRIES):
                out: list = []
                interrupted = False
                for body in bodies:
                    seq = next(self.seq)
                    self._send(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body), what)
                    for data, rtype, flags, off, end in self._answers(seq, what, dump=True):
                        if flags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if rtype == NLMSG_DONE:
                            continue  # the last one: _answers ends after it
                        try:
                            item = decode(data, rtype, off, end)
                        except (struct.error, IndexError, ValueError) as e:
                            raise Malformed(str(e)) from None
                        if item is not None:
                            out.append(item)
                if not interrupted:
                    return out
        raise OSError(errno.EINTR, f"{what}: dump interrupted {DUMP_RETRIES} times in a row")
