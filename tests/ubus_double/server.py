"""The double's stand-in for ubusd: a unix socket at the path a client is given
(`ubus -s PATH`, `ubus.connect(socket_path=PATH)`), serving rpcd's `uci` object.

Wire format between the double's parts only (the real ubus speaks blobmsg): one
JSON request per line, {"object", "method", "args"}, one JSON answer per line,
{"status", "data"}. Only the stand-in CLI and the stand-in python module speak it,
so the real ubus CLI, python-ubus and ubusd+rpcd replace all three at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading

from .rpcd import NOT_FOUND, RpcdUci, UbusStatus


class UbusDouble:
    def __init__(self, socket_path: str, confdir: str):
        self.path = socket_path
        self.uci = RpcdUci(confdir)
        self.objects = {"uci": self.uci}
        self.delay = 0.0  # seconds before each answer: a slow rpcd
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(socket_path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        with conn, conn.makefile("rwb") as f:
            for line in f:
                req = json.loads(line)
                obj = self.objects.get(req.get("object"))
                try:
                    if obj is None:
                        raise UbusStatus(NOT_FOUND)
                    if self.delay:
                        threading.Event().wait(self.delay)
                    data, status = obj.call(req.get("method"), req.get("args", {})), 0
                except UbusStatus as e:
                    data, status = None, e.status
                f.write(json.dumps({"status": status, "data": data}).encode() + b"\n")
                f.flush()

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def request(path: str, obj: str, method: str, args) -> tuple[int, object]:
    """One call over the double's socket (used by both stand-ins)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"object": obj, "method": method, "args": args}).encode() + b"\n")
        with s.makefile("rb") as f:
            answer = json.loads(f.readline())
    return answer["status"], answer["data"]
