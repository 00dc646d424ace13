"""Stand-in for OpenWrt's python3-ubus (0.1.3) in tests: one module-level connection
per process, kept open; call() returning a list of reply dicts ([] for no data),
errors as RuntimeError("ubus error occured: <text>") without a code, an unknown
object as RuntimeError("Object 'x' was not found."), as recorded in
shared/openwrt/rpcd-uci/07-python.txt. It talks to the test double's socket.

Not recorded, modelled: a call over a connection that ubusd dropped (restarted)
fails with "ubus error occured: Connection failed" until disconnect() + connect().
With hold_gil = True a call waits for its answer inside a C call that keeps the
GIL, as the real module's ubus_invoke does (it never releases it): every other
thread of the process stands still meanwhile. Use it only with a double running
in another process (its server threads would stand still too)."""

import ctypes as _ctypes
import json as _json
import socket as _socketmod
import struct as _struct

from tests.ubus_double.wire import STATUS_TEXT as _TEXT

hold_gil = False
_socket = None  # the path
_conn = None
_libc = _ctypes.PyDLL(None)  # PyDLL: foreign calls keep the GIL


def connect(socket_path="/var/run/ubus/ubus.sock", timeout=0):
    global _socket, _conn
    if _socket is not None:
        raise RuntimeError("You are already connected to ubus.")
    conn = _socketmod.socket(_socketmod.AF_UNIX, _socketmod.SOCK_STREAM)
    try:
        conn.connect(socket_path)
    except OSError:
        conn.close()
        raise OSError(f"Failed to connect to the ubus socket '{socket_path}'") from None
    _socket, _conn = socket_path, conn
    return True


def get_connected():
    return _socket is not None


def get_socket_path():
    return _socket


def disconnect(deregister=True):
    global _socket, _conn
    if _socket is None:
        raise RuntimeError("You are not connected to ubus.")
    _conn.close()
    _socket = _conn = None


def _readline_keeping_gil(conn, timeout_ms):
    if timeout_ms:
        conn.setsockopt(_socketmod.SOL_SOCKET, _socketmod.SO_RCVTIMEO,
                        _struct.pack("ll", timeout_ms // 1000, timeout_ms % 1000 * 1000))
    buf = _ctypes.create_string_buffer(65536)
    data = b""
    while not data.endswith(b"\n"):
        n = _libc.recv(conn.fileno(), buf, len(buf), 0)
        if n < 0:
            raise RuntimeError("ubus error occured: Request timed out")
        if n == 0:
            raise RuntimeError("ubus error occured: Connection failed")
        data += buf.raw[:n]
    return data


def call(obj, method, args, timeout=0):
    if _socket is None:
        raise RuntimeError("You are not connected to ubus.")
    if timeout < 0:
        raise TypeError("timeout can't be lower than 0")
    if not isinstance(args, dict):
        raise TypeError("Failed to create json for ubus.")
    payload = _json.dumps({"object": obj, "method": method, "args": args}).encode() + b"\n"
    try:
        _conn.sendall(payload)
        if hold_gil:
            line = _readline_keeping_gil(_conn, timeout)
        else:
            _conn.settimeout(timeout / 1000 if timeout else None)
            line = _conn.makefile("rb").readline()
    except _socketmod.timeout:
        raise RuntimeError("ubus error occured: Request timed out") from None
    except OSError:
        raise RuntimeError("ubus error occured: Connection failed") from None
    if not line:
        raise RuntimeError("ubus error occured: Connection failed")
    answer = _json.loads(line)
    if answer.get("no_object"):
        raise RuntimeError(f"Object '{obj}' was not found.")
    if answer["status"]:
        raise RuntimeError(f"ubus error occured: {_TEXT[answer['status']]}")
    return [] if answer["data"] is None else [answer["data"]]
