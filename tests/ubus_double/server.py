"""The double's stand-in for ubusd: a unix socket at the path a client is given
(`ubus -s PATH`, `ubus.connect(socket_path=PATH)`), serving rpcd's `uci` and
`session` objects and netifd's `network.interface.<name>` objects.

Wire format between the double's parts only (the real ubus speaks blobmsg): one
JSON request per line, {"object", "method", "args"}, one JSON answer per line,
{"status", "data", "no_object"}. Only the stand-in CLI and the stand-in python
module speak it, so the real ubus CLI, python-ubus and ubusd+rpcd replace all three
at once. A client may keep its connection (python-ubus does); close() drops every
connection, as a ubusd restart does.

Run as a process of its own (`python -m tests.ubus_double.server SOCK CONFDIR
[--savedir D] [--rundir D] [--delay S]`) when the client under test must not share
the test's interpreter, or must see ubusd and rpcd die (kill -9) and come back: a
restart with the same --rundir purges the sessions' savedirs, as rpcd's start does.
"""

from __future__ import annotations

import json
import os
import socket
import threading

from .rpcd import INVALID_ARGUMENT, METHOD_NOT_FOUND, NOT_FOUND, RpcdUci, UbusStatus
from .session import RpcdSession
from .wire import request  # noqa: F401  (the stand-ins' one call)


class NetifdInterface:
    """netifd's `network.interface.<name>` object, `status` as interface_dump_status()
    answers it: "up", "pending", "available", "autostart", "dynamic", "proto",
    "device" when the interface has a main device, and "l3_device" (the device
    packets leave by, e.g. pppoe-wan) plus "uptime" only while it is up."""

    def __init__(self, proto: str = "static", device: str = "", l3_device: str = "", up: bool = True):
        self.proto, self.device, self.l3_device, self.up = proto, device, l3_device, up

    def call(self, method: str, args) -> dict:
        if method != "status":
            raise UbusStatus(METHOD_NOT_FOUND)
        if args:
            raise UbusStatus(INVALID_ARGUMENT)
        out = {"up": self.up, "pending": False, "available": True, "autostart": True, "dynamic": False}
        if self.up:
            out["uptime"] = 42
            out["l3_device"] = self.l3_device or self.device
        out["proto"] = self.proto
        if self.device:
            out["device"] = self.device
        out.update({"metric": 0, "dns_metric": 0, "delegation": True, "ipv4-address": [],
                    "ipv6-address": [], "ipv6-prefix": [], "ipv6-prefix-assignment": [], "route": [],
                    "dns-server": [], "dns-search": [], "neighbors": [], "inactive": {}, "data": {}})
        return out


class UbusDouble:
    def __init__(self, socket_path: str, confdir: str, savedir: str | None = None, rundir: str | None = None):
        self.path = socket_path
        self.sessions = RpcdSession(rundir)  # rundir: /var/run/rpcd (the sessions' savedirs)
        self.uci = RpcdUci(confdir, savedir, self.sessions)
        self.objects = {"uci": self.uci, "session": self.sessions}
        self.delay = 0.0  # seconds before each answer: a slow rpcd
        self.conns: set = set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(socket_path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def add_interface(self, name: str, **kw) -> NetifdInterface:
        obj = self.objects[f"network.interface.{name}"] = NetifdInterface(**kw)
        return obj

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.add(conn)
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        try:
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    f.write(json.dumps(self._answer(json.loads(line))).encode() + b"\n")
                    f.flush()
        except (OSError, ValueError):
            pass
        finally:
            self.conns.discard(conn)

    def _answer(self, req: dict) -> dict:
        obj = self.objects.get(req.get("object"))
        if obj is None:
            return {"status": NOT_FOUND, "data": None, "no_object": True}
        if self.delay:
            threading.Event().wait(self.delay)
        try:
            return {"status": 0, "data": obj.call(req.get("method"), req.get("args", {}))}
        except UbusStatus as e:
            return {"status": e.status, "data": None}

    def close(self):
        self.sock.close()
        for conn in list(self.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def main(argv=None):
    import argparse
    import signal

    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("confdir")
    p.add_argument("--savedir")
    p.add_argument("--rundir", help="rpcd's /var/run/rpcd (sessions' savedirs): one that outlives a restart")
    p.add_argument("--delay", type=float, default=0.0)
    a = p.parse_args(argv)
    d = UbusDouble(a.socket, a.confdir, a.savedir, a.rundir)
    d.delay = a.delay
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    d.close()


if __name__ == "__main__":
    import signal

    # blocked before the server threads start, so that sigwait() in main receives them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
