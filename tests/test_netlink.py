"""The netlink codec's error policy (wgagent/netlink.py), on a scripted socket: the
kernel cannot be made to lose an acknowledgement, cut a datagram or lie about a
length, so its side is played here byte by byte. No root. The same code against
the real kernel: test_rtnl_netns.py, test_rtnl_routes.py (rtnetlink) and
test_wg_sources.py, test_kernel_genl.py (generic netlink)."""

from __future__ import annotations

import errno
import math
import socket
import struct

import pytest

from wgagent import netlink as nl
from wgagent import rtnl_links, rtnl_routes, rtnl_rules
from wgagent.model import AF_INET, AF_INET6, RTPROT_WGAGENT, Route, Rule
from wgagent.rtnl import Rtnl

U32 = struct.Struct("=I")


class Truncated(bytes):
    """A datagram the kernel had to cut to the reader's buffer."""


class ScriptedSocket:
    """Stands in for a netlink socket: each request sent is answered by
    answer(request header, request bytes) -> datagrams (bytes, or an exception to
    raise on that read); a read with nothing queued times out, as a socket with a
    timeout does when the kernel stays silent."""

    def __init__(self, answer, log: list):
        self.answer = answer
        self.queue: list = []
        self.sent: list[bytes] = []  # each datagram sent, as one sendmsg
        self.timeout = None
        self.closed = False
        log.append(self)

    def setsockopt(self, *args):
        pass

    def settimeout(self, timeout):
        self.timeout = timeout

    def bind(self, _):
        pass

    def close(self):
        self.closed = True

    def sendall(self, data: bytes):
        self.sent.append(data)
        off = 0
        while off < len(data):
            header = nl.NLMSG.unpack_from(data, off)
            self.queue += self.answer(header, data[off:off + header[0]])
            off += (header[0] + 3) & ~3

    def _next(self, size: int) -> tuple[bytes, int]:
        if not self.queue:
            raise TimeoutError("timed out")
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item[:size], socket.MSG_TRUNC if isinstance(item, Truncated) or len(item) > size else 0

    def recvmsg_into(self, buffers):
        (view,) = buffers
        data, flags = self._next(len(view))
        view[:len(data)] = data
        return len(data), [], flags, (0, 0)


@pytest.fixture
def kernel(monkeypatch):
    """Install a script: kernel(answer) -> the list of sockets opened so far."""
    opened: list[ScriptedSocket] = []

    def install(answer):
        monkeypatch.setattr(nl.socket, "socket", lambda *args: ScriptedSocket(answer, opened))
        return opened

    return install


def msg(mtype: int, seq: int, body: bytes = b"", flags: int = nl.NLM_F_MULTI) -> bytes:
    """One message, padded to 4 bytes (the padding outside its length, as the kernel lays it out)."""
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body + b"\0" * (-len(body) % 4)


def done(seq: int, code: int = 0, flags: int = nl.NLM_F_MULTI) -> bytes:
    return msg(nl.NLMSG_DONE, seq, struct.pack("=i", -code), flags)


def ack(seq: int, code: int = 0) -> bytes:
    return msg(nl.NLMSG_ERROR, seq, struct.pack("=i", -code) + b"\0" * 16, 0)


def route(dst: str, table: int = 254, proto: int = RTPROT_WGAGENT, oif: int = 7, extra: bytes = b"") -> bytes:
    body = rtnl_routes.RTMSG.pack(2, 32, 0, 0, table, proto, 253, 1, 0)
    body += nl.attr(rtnl_routes.RTA_TABLE, U32.pack(table)) + nl.attr(rtnl_routes.RTA_DST, socket.inet_aton(dst))
    body += nl.attr(rtnl_routes.RTA_OIF, U32.pack(oif)) + extra
    return body


def route_dump(*v4_datagrams):
    """A route dump script: the IPv4 request gets the datagrams given (each a function
    of the request's seq), the IPv6 one an empty dump."""
    def answer(header, _request):
        _, mtype, flags, seq, _ = header
        assert mtype == rtnl_routes.RTM_GETROUTE and flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
        family = _request[16]
        if family == socket.AF_INET6:
            return [done(seq)]
        return [d(seq) for d in v4_datagrams]
    return answer


NAMES = {7: "wg0"}


def test_a_dump_reads_every_datagram_to_done(kernel):
    kernel(route_dump(lambda s: msg(24, s, route("10.0.0.1")) + msg(24, s, route("10.0.0.2")),
                      lambda s: msg(24, s, route("10.0.0.3")) + done(s)))
    dump = Rtnl().routes(NAMES)
    assert [r.dst for r in dump.owned] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_done_carrying_an_errno_is_an_error(kernel):
    """A dump that fails part way (the kernel's dump callback returned an error) ends
    with NLMSG_DONE carrying the errno: what came before it is not the whole table."""
    kernel(route_dump(lambda s: msg(24, s, route("10.0.0.1")) + done(s, errno.EMSGSIZE)))
    with pytest.raises(OSError) as e:
        Rtnl().routes(NAMES)
    assert e.value.errno == errno.EMSGSIZE
    assert e.value.strerror == "route dump: Message too long"


def test_an_error_answer_to_the_dump_request(kernel):
    kernel(route_dump(lambda s: ack(s, errno.EPERM)))
    with pytest.raises(OSError) as e:
        Rtnl().routes(NAMES)
    assert (e.value.errno, e.value.strerror) == (errno.EPERM, "route dump: Operation not permitted")


def test_a_truncated_datagram_is_an_error_not_a_short_table(kernel):
    """The reader gets the first part and MSG_TRUNC: the rest of the routes are lost."""
    kernel(route_dump(lambda s: Truncated(b"".join(msg(24, s, route(f"10.0.0.{i}")) for i in range(1, 50))),
                      lambda s: done(s)))
    with pytest.raises(OSError) as e:
        Rtnl().routes(NAMES)
    assert e.value.errno == errno.EMSGSIZE
    assert e.value.strerror == f"route dump: an answer larger than the {nl.RECV_SIZE}-byte receive buffer"


@pytest.mark.parametrize("call,what", [
    pytest.param(lambda r: r.routes(NAMES), "route dump", id="routes"),
    pytest.param(lambda r: r.links(), "link dump", id="links"),
    pytest.param(lambda r: r.apply_routes([("add", Route(254, "10.0.0.1", 32, "wg0", 0), 7)]), "route changes",
                 id="apply_routes"),
])
def test_no_answer_times_out_naming_what(kernel, call, what):
    opened = kernel(lambda header, request: [])  # the kernel never answers
    r = Rtnl()
    assert opened[0].timeout == nl.TIMEOUT
    with pytest.raises(OSError) as e:
        call(r)
    assert e.value.errno == errno.ETIMEDOUT
    assert e.value.strerror == f"{what}: no answer from the kernel within {nl.TIMEOUT:g} s"


def test_a_lost_ack_in_a_batch_times_out(kernel):
    def answer(header, _request):
        seq = header[3]
        return [] if seq == 3 else [ack(seq, errno.EEXIST if seq == 2 else 0)]
    kernel(answer)
    changes = [("add", Route(254, f"10.0.0.{i}", 32, "wg0", 0), 7) for i in range(1, 5)]
    with pytest.raises(OSError) as e:
        Rtnl().apply_routes(changes)
    assert e.value.errno == errno.ETIMEDOUT


def test_acks_are_matched_by_seq_whatever_their_order_and_left_overs_skipped(kernel):
    held = []

    def answer(header, _request):
        seq = header[3]
        held.append(ack(seq, errno.EEXIST if seq % 2 else 0))
        if len(held) < 4:
            return []
        out = [ack(seq + 100, errno.EPERM)] + held[::-1]  # an ack of no request of ours, then all in reverse
        held.clear()
        return out
    kernel(answer)
    changes = [("add", Route(254, f"10.0.0.{i}", 32, "wg0", 0), 7) for i in range(1, 5)]
    assert Rtnl().apply_routes(changes) == [errno.EEXIST, 0, errno.EEXIST, 0]


@pytest.mark.parametrize("n", [1, 7, nl.BATCH, nl.BATCH + 1, 2 * nl.BATCH + 3])
def test_rule_changes_go_in_batches_a_seq_and_an_answer_each(kernel, n):
    """n rule changes are ceil(n / BATCH) datagrams, not n round trips; each request
    has a sequence number of its own and asks for its acknowledgement; the kernel's
    answers (acks in reverse, one refusal, one already there) are told per change."""
    requests = []
    held = []

    def answer(header, request):
        requests.append(request)
        seq = header[3]
        held.append(ack(seq, errno.EINVAL if len(requests) == 3 else errno.EEXIST if len(requests) == n else 0))
        start = len(requests) - len(held)  # this datagram's first request
        if len(held) < min(nl.BATCH, n - start):
            return []  # its acks come after its last request, in reverse
        out = held[::-1]
        held.clear()
        return out
    opened = kernel(answer)
    rules = [Rule(AF_INET6 if i % 5 == 0 else AF_INET, 5100 + i % 3, 200 + i % 2,
                  f"fd31::{i + 1:x}" if i % 5 == 0 else f"10.64.{i // 256}.{i % 256}", 128 if i % 5 == 0 else 32)
             for i in range(n)]
    changes = [("delete" if i % 4 == 1 else "add", rule) for i, rule in enumerate(rules)]
    codes = Rtnl().apply_rules(changes)
    assert len(opened) == 1 and len(opened[0].sent) == math.ceil(n / nl.BATCH)
    assert [len(list(nl.messages(d))) for d in opened[0].sent] == [
        min(nl.BATCH, n - i) for i in range(0, n, nl.BATCH)]
    headers = [nl.NLMSG.unpack_from(r) for r in requests]
    assert len({h[3] for h in headers}) == n, "a sequence number per request"
    assert [h[1] for h in headers] == [rtnl_rules.RTM_NEWRULE if verb == "add" else rtnl_rules.RTM_DELRULE
                                       for verb, _ in changes]
    assert all(h[2] & nl.NLM_F_ACK for h in headers)
    assert [rtnl_rules.decode(r, rtnl_rules.RTM_NEWRULE, nl.NLMSG.size, len(r)) for r in requests] == rules
    want = [0] * n
    if n >= 3:
        want[2] = errno.EINVAL
    want[n - 1] = errno.EEXIST
    assert codes == want


def test_no_rule_changes_send_nothing(kernel):
    opened = kernel(lambda header, request: [ack(header[3])])
    assert Rtnl().apply_rules([]) == [] and opened[0].sent == []


RTMSG_OURS = rtnl_routes.RTMSG.pack(2, 32, 0, 0, 254, RTPROT_WGAGENT, 253, 1, 0)
ATTR_SHORT = struct.pack("=HH", 2, rtnl_routes.RTA_OIF)  # an attribute length below its own header
CASES = {
    "message length below the header": lambda s: struct.pack("=IHHII", 8, 24, nl.NLM_F_MULTI, s, 0),
    "message longer than the datagram": lambda s: msg(24, s, route("10.0.0.1"))[:-4],
    "bytes after the last message": lambda s: msg(24, s, route("10.0.0.1")) + b"\0" * 6,
    "attribute length below its header": lambda s: msg(24, s, route("10.0.0.1", extra=ATTR_SHORT + b"\0" * 4)),
    "attribute running past its message": lambda s: msg(24, s, route("10.0.0.1") + struct.pack("=HH", 12, 99)),
    "message shorter than struct rtmsg": lambda s: msg(24, s, b"\x02\x20\0\0"),
    "a u32 attribute of two bytes": lambda s: msg(24, s, RTMSG_OURS + nl.attr(rtnl_routes.RTA_PRIORITY, b"\1\0")),
    "an IPv4 destination of three bytes": lambda s: msg(24, s, RTMSG_OURS + nl.attr(rtnl_routes.RTA_DST, b"\n\0\0")),
    "an error without its code": lambda s: msg(nl.NLMSG_ERROR, s, b"\0\0", 0),
    "an error code past the kernel's": lambda s: msg(nl.NLMSG_ERROR, s, struct.pack("=i", -2 ** 31), 0),
    "a positive error code": lambda s: msg(nl.NLMSG_ERROR, s, struct.pack("=i", 5), 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_answers_are_eproto_never_struct_or_index_errors(kernel, case):
    kernel(route_dump(CASES[case], lambda s: done(s)))
    with pytest.raises(OSError) as e:
        Rtnl().routes(NAMES)
    assert type(e.value) is OSError and e.value.errno == errno.EPROTO, e.value
    assert e.value.strerror.startswith("route dump: malformed netlink message")


def test_malformed_link_and_nested_linkinfo(kernel):
    def answer(header, _request):
        seq = header[3]
        body = rtnl_links.IFINFOMSG.pack(0, 1, 7, 1, 0) + nl.attr(rtnl_links.IFLA_IFNAME, b"wg0\0")
        body += nl.attr(rtnl_links.IFLA_LINKINFO, struct.pack("=HH", 40, rtnl_links.IFLA_INFO_KIND) + b"wireguard\0")
        return [msg(16, seq, body) + done(seq)]
    kernel(answer)
    with pytest.raises(OSError) as e:
        Rtnl().links()
    assert e.value.errno == errno.EPROTO and e.value.strerror.startswith("link dump: malformed")


@pytest.mark.parametrize("where", ["message", "done"])
def test_an_interrupted_dump_is_read_again(kernel, where):
    dumps = []

    def answer(header, request):
        seq = header[3]
        if request[16] == socket.AF_INET6:
            return [done(seq)]
        dumps.append(seq)
        if len(dumps) == 1:  # a route went away mid-dump
            intr = nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR
            return [msg(24, seq, route("10.0.0.1"), intr if where == "message" else nl.NLM_F_MULTI),
                    done(seq, flags=intr if where == "done" else nl.NLM_F_MULTI)]
        return [msg(24, seq, route("10.0.0.2")) + done(seq)]
    kernel(answer)
    assert [r.dst for r in Rtnl().routes(NAMES).owned] == ["10.0.0.2"]
    assert len(dumps) == 2


def test_a_dump_interrupted_every_time_gives_up(kernel):
    intr = nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR
    kernel(lambda header, request: [done(header[3], flags=intr)])
    with pytest.raises(OSError) as e:
        Rtnl().links()
    assert (e.value.errno, e.value.strerror) == (errno.EINTR,
                                                 f"link dump: dump interrupted {nl.DUMP_RETRIES} times in a row")


def test_after_an_abandoned_dump_the_next_request_goes_on_a_fresh_socket(kernel):
    """The rest of a dump abandoned on an error would make the kernel refuse the next
    dump (EBUSY) and fill the buffer: the socket is replaced."""
    calls = []

    def answer(header, request):
        seq = header[3]
        calls.append(seq)
        if len(calls) == 1:
            return [msg(24, seq, b"\x02"), msg(24, seq, route("10.0.0.9")) + done(seq)]  # bad, then the rest
        return [msg(24, seq, route("10.0.0.1")) + done(seq)] if request[16] == socket.AF_INET else [done(seq)]
    opened = kernel(answer)
    r = Rtnl()
    with pytest.raises(OSError):
        r.routes(NAMES)
    assert len(opened) == 1
    assert [x.dst for x in r.routes(NAMES).owned] == ["10.0.0.1"]
    assert len(opened) == 2 and opened[0].closed and not opened[1].closed


def test_a_single_request_and_its_answer(kernel):
    def answer(header, request):
        _, mtype, flags, seq, _ = header
        assert flags == nl.NLM_F_REQUEST
        if request[16:] == b"boom":
            return [ack(seq, errno.ENOENT)]
        return [msg(mtype, seq - 1, b"old") + msg(mtype, seq, b"answer", 0)]
    kernel(answer)
    s = nl.NetlinkSocket(nl.NETLINK_GENERIC)
    assert s.request(0x10, b"ask", "family lookup") == b"answer"
    with pytest.raises(OSError) as e:
        s.request(0x10, b"boom", "family lookup")
    assert (e.value.errno, e.value.strerror) == (errno.ENOENT, "family lookup: No such file or directory")
