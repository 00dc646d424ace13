"""The double's stand-in for ubusd: a unix socket at the path a client is given
(`ubus -s PATH`, `ubus.connect(socket_path=PATH)`), serving rpcd's `uci` and
`session` objects, rpcd's exec plugins (rpcd_exec.py: the `wgagent` object) and
netifd's `network.interface.<name>` objects, with ubusd's object registry and
events (ubusd.py: `ubus list`, `listen`, `send`, ubus.object.add/remove).

Wire format between the double's parts only (the real ubus speaks blobmsg): one
JSON request per line, one JSON answer per line. A call is {"object", "method",
"args"} -> {"status", "data", "no_object"}; {"op": "list", "path"} -> {"status",
"objects": [{"path", "id", "signature"}]}; {"op": "send", "type", "data"} ->
{"status"}; {"op": "listen", "patterns"} -> {"status"}, then one {"event", "data"}
line per event until the client disconnects. Only the stand-in CLI and the stand-in
python module speak it, so the real ubus CLI, python-ubus and ubusd+rpcd replace all
three at once. A client may keep its connection (python-ubus does); close() drops
every connection, as a ubusd restart does.

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

from . import rpcd_exec
from .rpcd import INVALID_ARGUMENT, METHOD_NOT_FOUND, NOT_FOUND, RpcdUci, UbusStatus
from .session import RpcdSession
from .ubusd import Listener, Ubusd
from .wire import request  # noqa: F401  (the stand-ins' one call)

RPCD, NETIFD = "rpcd", "netifd"  # the in-process clients that own objects


class ObjectTable(dict):
    """path -> object answering call(method, args), registered with ubusd as its
    owner would: setting a path adds the object (a path already there goes first,
    as when its old owner disconnected), deleting it removes it; each change is an
    ubus.object.add / ubus.object.remove event."""

    def __init__(self, ubusd: Ubusd):
        super().__init__()
        self.ubusd = ubusd

    def register(self, path: str, obj, owner, signature: dict | None = None) -> None:
        if path in self:
            del self[path]
        super().__setitem__(path, obj)
        self.ubusd.add_object(path, obj, owner, signature if signature is not None else {})

    def __setitem__(self, path, obj):
        self.register(path, obj, NETIFD if path.startswith("network.") else RPCD)

    def __delitem__(self, path):
        super().__delitem__(path)
        self.ubusd.remove_object(path)


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
        self.ubusd = Ubusd()
        self.objects = ObjectTable(self.ubusd)
        self.objects["uci"] = self.uci
        self.objects["session"] = self.sessions
        self.plugins: dict[str, rpcd_exec.ExecPlugin] = {}
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

    def load_plugins(self, directory: str, shell: list[str], env: dict | None = None,
                     timeout: float = rpcd_exec.RPC_EXEC_DEFAULT_TIMEOUT) -> list[str]:
        """What rpcd does at its start (and when SIGHUP makes it start again) with
        /usr/libexec/rpcd: the exec plugins' objects, registered anew (the old ones
        went with rpcd's old connection). Returns their names."""
        for name in list(self.plugins):
            del self.objects[name]
            del self.plugins[name]
        for name, (plugin, signature) in rpcd_exec.load(directory, shell, env, timeout).items():
            self.objects.register(name, plugin, RPCD, signature)
            self.plugins[name] = plugin
        return sorted(self.plugins)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.add(conn)
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        lock = threading.RLock()  # answers and pushed events share the connection (held over a listen)

        def write(f, msg):
            with lock:
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()

        try:
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    req = json.loads(line)
                    push = lambda msg, f=f: write(f, msg)  # noqa: E731
                    if req.get("op") == "listen":
                        # ubusd (one thread) answers a registration before any event it
                        # matches; here another thread's event must wait for the answer.
                        # The order is ubusd's lock, then the connection's, as in _send
                        with self.ubusd.lock, lock:
                            write(f, self._request(conn, req, push))
                    else:
                        write(f, self._request(conn, req, push))
        except (OSError, ValueError):
            pass
        finally:
            self.ubusd.close_owner(conn)
            self.conns.discard(conn)

    def _request(self, conn, req: dict, push) -> dict:
        op = req.get("op", "call")
        try:
            if op == "list":
                return {"status": 0, "objects": [{"path": o.path, "id": o.id, "signature": o.signature}
                                                 for o in self.ubusd.lookup(req.get("path"))]}
            if op == "send":
                data = req.get("data")
                self.ubusd.send(conn, req["type"], data if isinstance(data, dict) else {})
                return {"status": 0}
            if op == "listen":
                listener = Listener(conn, lambda event, data: push({"event": event, "data": data}))
                for pattern in req.get("patterns") or ["*"]:
                    self.ubusd.register(listener, pattern)
                return {"status": 0}
        except UbusStatus as e:
            return {"status": e.status}
        return self._answer(req)

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
        # shut down before closing: a thread blocked in accept() on a plain close()d
        # socket stays blocked on its fd number, and once a new socket (the next
        # test's double) gets that number it would accept that socket's clients and
        # answer them from this double's objects
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
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
    p.add_argument("--plugins", help="rpcd's exec plugin directory (/usr/libexec/rpcd)")
    p.add_argument("--shell", default="/bin/sh", help="what runs each plugin (its #!/bin/sh on OpenWrt)")
    p.add_argument("--exec-timeout", type=float, default=rpcd_exec.RPC_EXEC_DEFAULT_TIMEOUT)
    p.add_argument("--plugin-path", help="PATH for the plugins (a router's: busybox applets)")
    a = p.parse_args(argv)
    d = UbusDouble(a.socket, a.confdir, a.savedir, a.rundir)
    d.delay = a.delay
    if a.plugins:
        env = dict(os.environ, PATH=a.plugin_path) if a.plugin_path else None
        d.load_plugins(a.plugins, a.shell.split(), env, timeout=a.exec_timeout)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    d.close()


if __name__ == "__main__":
    import signal

    # blocked before the server threads start, so that sigwait() in main receives them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
