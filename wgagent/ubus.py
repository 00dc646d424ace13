"""ubus clients: python-ubus (OpenWrt's python3-ubus) when it imports, else the
`ubus` command line with JSON arguments; None where neither exists (a plain Linux
host), and the caller reports that once and carries on without.

Both give call(object, method, args) -> dict (the reply, {} for none) and raise
UbusError with the ubus status code, so the writer above never knows which it has.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

STATUS_CODES = {"Invalid command": 1, "Invalid argument": 2, "Method not found": 3, "Not found": 4,
                "No response": 5, "Permission denied": 6, "Request timed out": 7,
                "Operation not supported": 8, "Unknown error": 9, "Connection failed": 10,
                "Out of memory": 11, "Parsing message data failed": 12, "System error": 13}
NOT_FOUND = 4
DEFAULT_SOCKET = "/var/run/ubus/ubus.sock"


class UbusError(OSError):
    def __init__(self, status: int, text: str):
        super().__init__(status, text)
        self.status = status


class PythonUbus:
    """python-ubus keeps one module-level connection per process: connect once, keep it."""

    name = "python-ubus"

    def __init__(self, module, socket_path: str):
        self.ubus = module
        self.socket = socket_path or DEFAULT_SOCKET
        self.lock = threading.Lock()  # the firewall thread and the route loop share it

    def call(self, obj: str, method: str, args: dict, timeout: float = 10) -> dict:
        # the timeout covers the wait for the other thread's call too: the route loop
        # asks netifd with a short one and must not sit behind a slow firewall commit
        if not self.lock.acquire(timeout=timeout):
            raise UbusError(7, f"ubus call {obj} {method}: connection busy for {timeout:g}s")
        try:
            return self._call(obj, method, args, timeout)
        finally:
            self.lock.release()

    def _call(self, obj: str, method: str, args: dict, timeout: float) -> dict:
        if not self.ubus.get_connected():
            try:
                self.ubus.connect(socket_path=self.socket)
            except (OSError, RuntimeError) as e:
                raise UbusError(10, str(e)) from None
        try:
            replies = self.ubus.call(obj, method, args, timeout=int(timeout * 1000))
        except RuntimeError as e:
            # "ubus error occured: Not found": the text is all python-ubus gives
            text = str(e).split(": ", 1)[-1]
            raise UbusError(STATUS_CODES.get(text, NOT_FOUND if "not found" in text else 9), text) from None
        return replies[0] if replies else {}


class CliUbus:
    name = "ubus-cli"

    def __init__(self, path: str, socket_path: str):
        self.path = path
        self.socket = socket_path

    def call(self, obj: str, method: str, args: dict, timeout: float = 10) -> dict:
        cmd = [self.path] + (["-s", self.socket] if self.socket else []) + \
              ["-t", str(max(1, int(timeout))), "call", obj, method, json.dumps(args)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            raise UbusError(7, f"ubus call {obj} {method}: no answer in {timeout:g}s") from None
        if r.returncode != 0:
            # stderr not a tty: "Command failed: ubus call ... (Not found)", exit 256 - status
            status = 256 - r.returncode if r.returncode > 128 else r.returncode
            text = r.stderr.strip().rsplit("(", 1)[-1].rstrip(")") if "(" in r.stderr else r.stderr.strip()
            raise UbusError(status, text or f"exit {r.returncode}")
        return json.loads(r.stdout) if r.stdout.strip() else {}


_python_clients: dict[str, PythonUbus] = {}


def connect(socket_path: str = ""):
    """The best client here, or None. socket_path "" means ubus's default.
    python-ubus allows one connection per process: its client is shared."""
    try:
        import ubus as module  # OpenWrt's python3-ubus
    except ImportError:
        module = None
    if module is not None and hasattr(module, "call"):
        if socket_path not in _python_clients:
            _python_clients[socket_path] = PythonUbus(module, socket_path)
        return _python_clients[socket_path]
    path = shutil.which("ubus")
    if path is not None:
        return CliUbus(path, socket_path)
    return None
