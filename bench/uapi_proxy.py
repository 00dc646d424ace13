#!/usr/bin/env python3
"""A UAPI endpoint that speaks the real protocol, for the scale benchmark.

It listens where wgagent looks for IFNAME.sock and forwards every request to the
real wireguard-go socket, rewriting each peer's handshake time on the way back:
peers whose public key (hex) is listed in the control file are up, all others get
no handshake and no traffic. So 10,000 configured peers can be up or down without
10,000 real handshakes. The control file is re-read when it changes.

How the up peers' counters move, by a line "mode=..." in the control file:
- moving (the default; the worst case for a reader): every up peer's handshake is
  5 s old at every answer and its receive counter grows with time, so every peer's
  block differs from one poll to the next;
- keepalive (a hub of idle phones with PersistentKeepalive 25): each up peer
  re-handshakes every 120 s (REKEY_AFTER_TIME) and receives a 32-byte keepalive
  every 25 s, at its own phase, so a poll sees only a few peers changed.

Usage: uapi_proxy.py LISTEN_SOCKET UPSTREAM_SOCKET CONTROL_FILE
"""

import os
import socket
import sys
import threading
import time


class Control:
    def __init__(self, path):
        self.path, self.mtime, self.up, self.mode = path, None, set(), "moving"

    def current(self) -> tuple[set, str]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return set(), self.mode
        if mtime != self.mtime:
            with open(self.path) as f:
                lines = [line.strip() for line in f if line.strip()]
            self.up = {line for line in lines if "=" not in line}
            self.mode = next((line[5:] for line in lines if line.startswith("mode=")), "moving")
            self.mtime = mtime
        return self.up, self.mode


def rewrite(answer: bytes, up: set, mode: str = "moving") -> bytes:
    now = time.time()
    moving_sec = str(int(now) - 5).encode()
    moving_rx = str(int(now * 1000)).encode()  # 1 kB/s: keepalives and some traffic
    out, key_up, phase = [], False, 0
    for line in answer.split(b"\n"):
        if line.startswith(b"public_key="):
            key_up = line[11:].decode() in up
            phase = int(line[11:19], 16) % 120  # the peer's own phase, in seconds
        elif line.startswith(b"last_handshake_time_sec="):
            if not key_up:
                sec = b"0"
            elif mode == "keepalive":
                sec = str(int(now - (now - phase) % 120)).encode()  # its last 120 s mark
            else:
                sec = moving_sec
            line = b"last_handshake_time_sec=" + sec
        elif line.startswith(b"rx_bytes="):
            if not key_up:
                rx = b"0"
            elif mode == "keepalive":
                rx = str(32 * int((now + phase) // 25)).encode()
            else:
                rx = moving_rx
            line = b"rx_bytes=" + rx
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
                    answer = rewrite(answer, *control.current())
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
