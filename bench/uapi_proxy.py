#!/usr/bin/env python3
"""A UAPI endpoint that speaks the real protocol, for the scale benchmark.

It listens where wgagent looks for IFNAME.sock and forwards every request to the
real wireguard-go socket, rewriting each peer's handshake time on the way back:
peers whose public key (hex) is listed in the control file get a handshake 5 s old
and a receive counter that grows with time (traffic, as with a keepalive), all others
no handshake and no traffic. So 10,000 configured peers can be up or down without
10,000 real handshakes. The control file is re-read when it changes.

Usage: uapi_proxy.py LISTEN_SOCKET UPSTREAM_SOCKET CONTROL_FILE
"""

import os
import socket
import sys
import threading
import time


class Control:
    def __init__(self, path):
        self.path, self.mtime, self.up = path, None, set()

    def current(self) -> set:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return set()
        if mtime != self.mtime:
            with open(self.path) as f:
                self.up = {line.strip() for line in f if line.strip()}
            self.mtime = mtime
        return self.up


def rewrite(answer: bytes, up: set) -> bytes:
    now = time.time()
    sec = str(int(now) - 5).encode()
    rx = str(int(now * 1000)).encode()  # 1 kB/s: keepalives and some traffic
    out, key_up = [], False
    for line in answer.split(b"\n"):
        if line.startswith(b"public_key="):
            key_up = line[11:].decode() in up
        elif line.startswith(b"last_handshake_time_sec="):
            line = b"last_handshake_time_sec=" + (sec if key_up else b"0")
        elif line.startswith(b"rx_bytes="):
            line = b"rx_bytes=" + (rx if key_up else b"0")
        out.append(line)
    return b"\n".join(out)


def exchange(upstream: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(upstream)
        s.sendall(request)
        chunks, tail = [], b""
        while True:
            chunk = s.recv(1 << 18)
            if not chunk:
                break
            chunks.append(chunk)
            tail = (tail + chunk)[-64:]
            if tail.endswith(b"\n\n") and b"errno=" in tail:
                break
    return b"".join(chunks)


def serve(conn, upstream: str, control: Control):
    with conn:
        buf = b""
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                request, buf = buf.split(b"\n\n", 1)
                answer = exchange(upstream, request + b"\n\n")
                if request.startswith(b"get=1"):
                    answer = rewrite(answer, control.current())
                conn.sendall(answer)


def main(listen: str, upstream: str, control_path: str):
    control = Control(control_path)
    if os.path.exists(listen):
        os.unlink(listen)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listen)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, upstream, control), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:4])
