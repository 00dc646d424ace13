"""UAPI answers (the cross-platform userspace protocol) parsed into peers, and what is
not one refused. No root: crafted answers, some from a real unix socket."""

import base64
import errno
import os
import threading
import time

import pytest

from wgagent import wg_uapi

from .uapi_server import UapiServer

HEX1 = "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceae59e2b1c47"
HEX2 = "662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58"
KEY1 = base64.b64encode(bytes.fromhex(HEX1)).decode()

ANSWER = (f"private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n"
          f"listen_port=12912\n"
          f"public_key={HEX1}\n"
          f"preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
          f"protocol_version=1\n"
          f"endpoint=[abcd:23::33%2]:51820\n"
          f"last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
          f"tx_bytes=38333\nrx_bytes=2224\npersistent_keepalive_interval=25\n"
          f"allowed_ip=192.168.4.4/32\nallowed_ip=fd00:0:0::4/128\n"
          f"public_key={HEX2}\nendpoint=182.122.22.19:3233\n"
          f"last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
          f"tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
          f"allowed_ip=10.0.0.0/8\n"
          f"errno=0\n\n").encode()


def test_parse_peers():
    p1, p2 = wg_uapi.parse(ANSWER)
    assert p1.public_key == KEY1 and p1.short_key == KEY1[:8]
    assert p1.allowed_ips == ("192.168.4.4/32", "fd00::4/128")
    assert p1.endpoint == "[abcd:23::33%2]:51820"
    assert p1.last_handshake == 1700000000.5
    assert (p1.rx_bytes, p1.tx_bytes, p1.keepalive) == (2224, 38333, 25)
    assert p2.last_handshake == 0 and p2.allowed_ips == ("10.0.0.0/8",) and p2.endpoint == "182.122.22.19:3233"


def test_the_fast_path_and_the_line_by_line_path_agree(monkeypatch):
    expected = wg_uapi._parse_lines(ANSWER.decode().rpartition("errno=")[0])
    monkeypatch.setattr(wg_uapi, "_parse_lines", None)
    assert wg_uapi.parse(ANSWER) == expected


def test_blocks_of_another_shape_are_read_line_by_line():
    # boringtun's order (allowed_ip before the counters, rx before tx) and a key
    # this version does not know: same peer, whatever the order
    odd = (f"listen_port=1\npublic_key={HEX1}\nallowed_ip=192.168.4.4/32\nendpoint=1.2.3.4:5\n"
           f"rx_bytes=2224\ntx_bytes=38333\nsome_future_key=7\nlast_handshake_time_sec=1700000000\n"
           f"last_handshake_time_nsec=500000000\npersistent_keepalive_interval=25\nerrno=0\n\n").encode()
    (p,) = wg_uapi.parse(odd)
    assert p == (KEY1, ("192.168.4.4/32",), "1.2.3.4:5", 1700000000.5, 2224, 38333, 25)


def test_many_peers_parse_the_same_either_way(monkeypatch):
    lines = []
    for i in range(300):
        lines += [f"public_key={i:064x}", "protocol_version=1", f"last_handshake_time_sec={i}",
                  f"last_handshake_time_nsec={i * 7}", f"tx_bytes={i}", f"rx_bytes={2 * i}",
                  "persistent_keepalive_interval=0", f"allowed_ip=10.1.{i // 256}.{i % 256}/32"]
        lines += [f"allowed_ip=fd00::{i:x}/128"] * (i % 2)
    text = "\n".join(lines) + "\n"
    expected = wg_uapi._parse_lines(text)
    monkeypatch.setattr(wg_uapi, "_parse_lines", None)  # wireguard-go's shape: the fast path only
    peers = wg_uapi.parse((text + "errno=0\n\n").encode())
    assert len(peers) == 300 and peers == expected
    assert peers[5].allowed_ips == ("10.1.0.5/32", "fd00::5/128") and peers[5].endpoint is None


def test_no_peers():
    assert wg_uapi.parse(b"private_key=00\nlisten_port=1\nerrno=0\n\n") == ()


@pytest.mark.parametrize("answer,fragment", [
    (b"errno=19\n\n", "errno=19"),
    (b"public_key=" + HEX1.encode() + b"\n", "without errno"),
    (b"public_key=abcd\nerrno=0\n\n", "bad UAPI value"),
    (b"public_key=" + HEX1.encode() + b"\nrx_bytes=lots\nerrno=0\n\n", "bad UAPI value"),
    (b"garbage\nerrno=0\n\n", "malformed"),
    (b"public_key=" + HEX1.encode() + b"\nlast_handshake_time_sec=1\nallowed_ip=10.0.0.300/32\nerrno=0\n\n",
     "bad UAPI value 'allowed_ip=10.0.0.300/32'"),
])
def test_errors(answer, fragment):
    with pytest.raises(wg_uapi.UapiError, match=fragment):
        wg_uapi.parse(answer)


def test_the_memo_gives_back_the_same_peer_for_an_unchanged_block():
    memo: dict = {}
    p1, p2 = wg_uapi.parse(ANSWER, memo)
    assert len(memo) == 2
    again = wg_uapi.parse(ANSWER, memo)
    assert again[0] is p1 and again[1] is p2
    moved = ANSWER.replace(b"rx_bytes=2224", b"rx_bytes=2225")
    q1, q2 = wg_uapi.parse(moved, memo)
    assert q1 is not p1 and q1.rx_bytes == 2225 and q2 is p2
    assert len(memo) == 2  # only the last poll's blocks
    assert wg_uapi.parse(moved, memo) == wg_uapi.parse(moved)  # with or without: the same peers


# --- outside input that does not parse: UapiError and nothing else

BLOCK = (f"public_key={HEX1}\nprotocol_version=1\nendpoint=1.2.3.4:5\n"
         "last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\ntx_bytes={tx}\nrx_bytes={rx}\n"
         "persistent_keepalive_interval={ka}\nallowed_ip=10.0.0.1/32\n")


def block(**values) -> bytes:
    fields = {"sec": "1700000000", "nsec": "0", "tx": "1", "rx": "2", "ka": "0", **values}
    return (BLOCK.format(**fields) + "errno=0\n\n").encode()


GARBAGE = {
    # wireguard-go's shape, each number too large: a float overflows, and int() refuses
    # more than 4,300 digits
    "handshake seconds of 400 digits": block(sec="9" * 400),
    "handshake nanoseconds of 400 digits": block(nsec="9" * 400),
    "rx_bytes of 5,000 digits": block(rx="7" * 5000),
    "keepalive of 21 digits": block(ka="1" * 21),
    "a negative counter": block(tx="-5"),
    "digits of another script": block(rx="\u0661\u0662"),
    "a number with an underscore": block(rx="1_000"),
    "errno of 400 digits": b"errno=" + b"9" * 400 + b"\n\n",
    "errno of 5,000 digits": b"errno=" + b"9" * 5000 + b"\n\n",
    "errno not a number": b"errno=x\n\n",
    "binary garbage": bytes(range(256)) + b"\n\n",
    "no errno at all": b"public_key=" + HEX1.encode() + b"\nrx_bytes=1\n",
    "cut in the middle of a block": block()[:60],
    "a key of 31 bytes": b"public_key=" + HEX1[:62].encode() + b"\nerrno=0\n\n",
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_is_uapierror_and_nothing_else(case):
    with pytest.raises(wg_uapi.UapiError) as e:
        wg_uapi.parse(GARBAGE[case])
    assert e.value.errno == errno.EPROTO, e.value
    assert len(str(e.value)) < 200  # the bad line is quoted, not 5,000 digits of it


def test_an_errno_from_wireguard_go_is_negative():
    with pytest.raises(wg_uapi.UapiError) as e:
        wg_uapi.parse(b"errno=-5\n\n")
    assert e.value.errno == errno.EIO and e.value.strerror == f"UAPI returned errno=-5 ({os.strerror(errno.EIO)})"


def test_twenty_digits_still_parse_on_both_paths(monkeypatch):
    big = "18446744073709551615"  # 2**64 - 1
    expected = wg_uapi._parse_lines(block(rx=big, tx=big).decode().rpartition("errno=")[0])
    monkeypatch.setattr(wg_uapi, "_parse_lines", None)
    (p,) = wg_uapi.parse(block(rx=big, tx=big))
    assert (p,) == expected and p.rx_bytes == p.tx_bytes == 2 ** 64 - 1


@pytest.mark.parametrize("case", ["handshake seconds of 400 digits", "binary garbage", "cut in the middle of a block",
                                  "errno of 400 digits"])
def test_a_real_socket_answering_garbage(tmp_path, case):
    with UapiServer(str(tmp_path), GARBAGE[case]) as server:
        with pytest.raises(wg_uapi.UapiError) as e:
            wg_uapi.UapiWireGuard(str(tmp_path)).read_peers("wg0")
    assert e.value.errno == errno.EPROTO and server.requests == 1


def test_a_real_socket_closing_without_an_answer(tmp_path):
    with UapiServer(str(tmp_path), b""):
        with pytest.raises(wg_uapi.UapiError, match="ended without errno="):
            wg_uapi.UapiWireGuard(str(tmp_path)).read_peers("wg0")


def test_a_real_socket_that_never_answers_times_out(tmp_path):
    with UapiServer(str(tmp_path), None) as server:
        with pytest.raises(wg_uapi.UapiError) as e:
            wg_uapi.request(server.path, timeout=0.2)
    assert (e.value.errno, e.value.strerror) == (errno.ETIMEDOUT, f"{server.path}: no answer within 0.2 s")


class Streaming(UapiServer):
    """A UAPI socket that answers a request with bytes and never ends: `chunk` every
    `every` seconds (each read within its timeout)."""

    def __init__(self, directory, chunk: bytes, every: float):
        self.chunk, self.every, self.stop = chunk, every, threading.Event()
        super().__init__(directory, None)

    def _serve(self):
        conn, _ = self._listener.accept()
        with conn:
            conn.recv(64)
            while not self.stop.wait(self.every):
                try:
                    conn.sendall(self.chunk)
                except OSError:
                    return

    def close(self):
        self.stop.set()
        super().close()


def test_a_socket_that_drips_an_answer_for_ever_is_cut_off(tmp_path):
    """One byte every 50 ms: every read within its timeout, the answer never whole.
    It used to hold the route loop for as long as the server kept dripping."""
    server = Streaming(str(tmp_path), b"x", 0.05)
    try:
        t0 = time.monotonic()
        with pytest.raises(wg_uapi.UapiError) as e:
            wg_uapi.request(server.path, timeout=0.2, total=1.0)
        assert time.monotonic() - t0 < 2
    finally:
        server.close()
    assert (e.value.errno, e.value.strerror) == (errno.ETIMEDOUT, f"{server.path}: the answer took longer than 1 s")


def test_a_socket_that_never_stops_answering_is_cut_off_at_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(wg_uapi, "MAX_ANSWER", 1 << 20)
    server = Streaming(str(tmp_path), b"x" * 65536, 0.0)
    try:
        with pytest.raises(wg_uapi.UapiError) as e:
            wg_uapi.request(server.path)
    finally:
        server.close()
    assert (e.value.errno, e.value.strerror) == (errno.EMSGSIZE, f"{server.path}: an answer larger than 1 MiB")


def test_nothing_listening_is_uapierror_naming_the_path(tmp_path):
    path = str(tmp_path / "wg0.sock")
    with pytest.raises(wg_uapi.UapiError) as e:
        wg_uapi.request(path)
    assert e.value.errno == errno.ENOENT and e.value.strerror.startswith(path)
