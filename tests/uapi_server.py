"""A UAPI socket that answers what a test tells it to: a real unix socket in a
directory of the test's, served by a thread. For answers wireguard-go never gives
(garbage, cut short, numbers too large for a float, silence)."""

from __future__ import annotations

import os
import socket
import threading


class UapiServer:
    """Listens on DIRECTORY/NAME.sock; to each connection that sends a request (a
    line ending in a blank line), sends `answer` and closes, or with answer=None says
    nothing and keeps the connection open until close(). A connection closed without
    a request (a probe) is just closed. `requests` counts the requests answered."""

    def __init__(self, directory: str, answer: bytes | None, name: str = "wg0"):
        self.path = os.path.join(directory, f"{name}.sock")
        self.answer = answer
        self.requests = 0
        self._held: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # shut down by close()
                return
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data:
                conn.close()
                continue
            self.requests += 1
            if self.answer is None:
                self._held.append(conn)
                continue
            try:
                conn.sendall(self.answer)
            except OSError:
                pass
            conn.close()

    def close(self):
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
