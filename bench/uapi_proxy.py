#!/usr/bin/env python3
"""A UAPI endpoint that speaks the real protocol, for the scale benchmark, the fault
suite and the soak.

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
  every 25 s, at its own phase, so a poll sees only a few peers changed;
- real (flapping peers, a stepping clock): what WireGuard itself keeps. A peer that
  comes up handshakes at once, then every `rekey=` seconds (default 120) of the
  monotonic clock, and receives 32 bytes every `keepalive=` seconds (default 25);
  each handshake is stamped with the proxy's wall clock, time.time() plus
  `offset=` seconds (a clock stepped by NTP), at the moment it happens, and keeps
  that stamp when the clock steps. A peer that goes down keeps its last stamp and
  counter, as the kernel does: its handshake ages out.
A line "HEXKEY ENDPOINT" (any mode) also makes that peer up and sets the endpoint
it is reported at (a roaming peer). A line "pause=SECONDS" sends each answer in two
halves that far apart: a read then lasts long enough for the interface to go away
in the middle of it (each answer that outlived its wireguard-go so is counted, a
line in CONTROL_FILE.outlived). Every get=1 answered is counted in CONTROL_FILE.gets (the
number, rewritten at each read): the reads a daemon made, whatever asked for them.

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
        self.endpoints: dict[str, str] = {}
        self.settings: dict[str, float] = {}

    def current(self) -> tuple[set, str]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return set(), self.mode
        if mtime != self.mtime:
            with open(self.path) as f:
                lines = [line.strip() for line in f if line.strip()]
            settings = dict(line.split("=", 1) for line in lines if "=" in line)
            self.mode = settings.pop("mode", "moving")
            self.settings = {k: float(v) for k, v in settings.items()}
            peers = [line.split() for line in lines if "=" not in line]
            self.up = {p[0] for p in peers}
            self.endpoints = {p[0]: p[1] for p in peers if len(p) > 1}
            self.mtime = mtime
        return self.up, self.mode


class Real:
    """The state WireGuard keeps per peer, for mode=real (see the docstring)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.peers: dict[str, list] = {}  # hexkey -> [sec, nsec, rx, mono of the last handshake, mono of rx]

    def values(self, key: str, up: bool, control: Control) -> tuple[int, int, int]:
        mono = time.monotonic()
        rekey = control.settings.get("rekey", 120.0)
        keepalive = control.settings.get("keepalive", 25.0)
        with self.lock:
            state = self.peers.get(key)
            if not up:
                return (state[0], state[1], state[2]) if state else (0, 0, 0)
            if state is None or state[3] is None or mono - state[3] >= rekey:
                wall = time.time() + control.settings.get("offset", 0.0)
                if state is None:
                    state = self.peers[key] = [0, 0, 0, None, mono]
                state[0], state[1], state[3] = int(wall), int(wall % 1 * 1e9), mono
            ticks = int((mono - state[4]) // keepalive)
            if ticks > 0:
                state[2] += 32 * ticks
                state[4] += ticks * keepalive
            return state[0], state[1], state[2]

    def down(self, up: set) -> None:
        """A peer that went down re-handshakes at once when it comes back."""
        with self.lock:
            for key, state in self.peers.items():
                if key not in up:
                    state[3] = None


def rewrite(answer: bytes, up: set, mode: str = "moving", control: Control | None = None,
            real: Real | None = None) -> bytes:
    now = time.time()
    moving_sec = str(int(now) - 5).encode()
    moving_rx = str(int(now * 1000)).encode()  # 1 kB/s: keepalives and some traffic
    endpoints = control.endpoints if control is not None else {}
    if real is not None:
        real.down(up)
    out, key, key_up, phase, values = [], "", False, 0, (0, 0, 0)
    for line in answer.split(b"\n"):
        if line.startswith(b"public_key="):
            key = line[11:].decode()
            key_up = key in up
            phase = int(line[11:19], 16) % 120  # the peer's own phase, in seconds
            if mode == "real" and real is not None:
                values = real.values(key, key_up, control)
        elif line.startswith(b"endpoint=") and key in endpoints:
            line = b"endpoint=" + endpoints[key].encode()
        elif line.startswith(b"last_handshake_time_sec="):
            if key in endpoints and not out[-1].startswith(b"endpoint="):
                out.append(b"endpoint=" + endpoints[key].encode())  # a peer that had none: roamed in
            if mode == "real":
                sec = str(values[0]).encode()
            elif not key_up:
                sec = b"0"
            elif mode == "keepalive":
                sec = str(int(now - (now - phase) % 120)).encode()  # its last 120 s mark
            else:
                sec = moving_sec
            line = b"last_handshake_time_sec=" + sec
        elif line.startswith(b"last_handshake_time_nsec=") and mode == "real":
            line = b"last_handshake_time_nsec=" + str(values[1]).encode()
        elif line.startswith(b"rx_bytes="):
            if mode == "real":
                rx = str(values[2]).encode()
            elif not key_up:
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


def alive(upstream: str) -> bool:
    """Does wireguard-go still listen (a SIGKILL leaves its socket file behind)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(upstream)
        except OSError:
            return False
    return True


class Gets:
    """How many get=1 requests were answered, in CONTROL_FILE.gets."""

    def __init__(self, path: str):
        self.path, self.count, self.lock = path, 0, threading.Lock()

    def one(self) -> None:
        with self.lock:
            self.count += 1
            with open(self.path, "w") as f:
                f.write(f"{self.count}\n")


def serve(conn, upstream: str, control: Control, real: Real, gets: Gets):
    with conn:
        buf = b""
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                request, buf = buf.split(b"\n\n", 1)
                try:
                    answer = exchange(upstream, request + b"\n\n")
                except OSError:
                    # wireguard-go gone (the fault suite deletes it): the connection
                    # ends without an answer, as a dying wireguard-go's would
                    return
                if request.startswith(b"get=1"):
                    up, mode = control.current()
                    answer = rewrite(answer, up, mode, control, real)
                    gets.one()
                pause = control.settings.get("pause", 0.0)
                if pause:
                    conn.sendall(answer[:len(answer) // 2])
                    time.sleep(pause)
                    answer = answer[len(answer) // 2:]
                    if not alive(upstream):  # wireguard-go went away in the middle of this read
                        with open(control.path + ".outlived", "a") as f:
                            f.write("1\n")
                conn.sendall(answer)


def main(listen: str, upstream: str, control_path: str):
    control = Control(control_path)
    real = Real()
    gets = Gets(control_path + ".gets")
    if os.path.exists(listen):
        os.unlink(listen)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listen)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, upstream, control, real, gets), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:4])
