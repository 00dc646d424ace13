"""Stand-in for OpenWrt's python3-ubus (0.1.3) in tests: one module-level connection
per process, call() returning a list of reply dicts ([] for no data), errors as
RuntimeError("ubus error occured: <text>") without a code, as recorded in
shared/openwrt/rpcd-uci/07-python.txt. It talks to the test double's socket."""

import json as _json

from tests.ubus_double.rpcd import STATUS_TEXT as _TEXT
from tests.ubus_double.server import request as _request

_socket = None


def connect(socket_path="/var/run/ubus/ubus.sock", timeout=0):
    global _socket
    if _socket is not None:
        raise RuntimeError("You are already connected to ubus.")
    import os

    if not os.path.exists(socket_path):
        raise OSError(f"Failed to connect to the ubus socket '{socket_path}'")
    _socket = socket_path
    return True


def get_connected():
    return _socket is not None


def get_socket_path():
    return _socket


def disconnect(deregister=True):
    global _socket
    if _socket is None:
        raise RuntimeError("You are not connected to ubus.")
    _socket = None


def call(obj, method, args, timeout=0):
    if _socket is None:
        raise RuntimeError("You are not connected to ubus.")
    if timeout < 0:
        raise TypeError("timeout can't be lower than 0")
    if not isinstance(args, dict):
        raise TypeError("Failed to create json for ubus.")
    _json.dumps(args)  # raises TypeError for what JSON cannot carry, as the real module
    status, data = _request(_socket, obj, method, args)
    if status == 4 and obj != "uci":
        raise RuntimeError(f"Object '{obj}' was not found.")
    if status:
        raise RuntimeError(f"ubus error occured: {_TEXT[status]}")
    return [] if data is None else [data]
