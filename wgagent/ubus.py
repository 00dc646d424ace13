"""ubus clients: python-ubus (OpenWrt's python3-ubus) when it imports, else the
`ubus` command line with JSON arguments; None where neither exists (a plain Linux
host), and the caller reports that once and carries on without.

Both give call(object, method, args) -> dict (the reply, {} for none) and raise
UbusError with the ubus status code, so the writer above never knows which it has.
A reply that is not a JSON object (a broken CLI, an odd python-ubus) is UbusError
PARSE_ERROR too, never ValueError or TypeError: callers catch OSError only, and the
route loop must outlive any answer.

Why a thread that must not stall the process uses the CLI: python-ubus keeps the
GIL for the whole of ubus_invoke (it never releases it), so a slow or hung rpcd
would freeze every thread, the route loop included, for the call's timeout. A
`ubus` subprocess waits in the kernel with the GIL free. connect(threaded=True)
therefore picks the CLI where the binary exists and python-ubus only where it does
not; one-shot commands (`wgagent status`, `wgagent firewall`) take python-ubus.

python-ubus keeps one module-level connection per process, which dies with ubusd:
a call that finds it dead disconnects and connects again (once, at once), and a
different socket path (a reload changed ubus_socket) reconnects to the new one.

The `ubus` command is run by absolute path (cli_path()), never looked up through
PATH: the daemon runs as root, and a PATH entry (a writable directory, the current
one) would choose the program it runs with the firewall's arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

STATUS_CODES = {"Invalid command": 1, "Invalid argument": 2, "Method not found": 3, "Not found": 4,
                "No response": 5, "Permission denied": 6, "Request timed out": 7,
                "Operation not supported": 8, "Unknown error": 9, "Connection failed": 10,
                "Out of memory": 11, "Parsing message data failed": 12, "System error": 13}
INVALID_ARGUMENT, NOT_FOUND, TIMEOUT, CONNECTION_FAILED = 2, 4, 7, 10
# UBUS_STATUS_PARSE_ERROR, the closest ubus has: here also for a reply that is no JSON object
PARSE_ERROR = 12
STATUS_TEXT = {code: text for text, code in STATUS_CODES.items()}
DEFAULT_SOCKET = "/var/run/ubus/ubus.sock"
# OpenWrt's package ubus installs the CLI as /bin/ubus; /usr/bin/ubus for a layout that moves it
CLI_PATHS = ("/bin/ubus", "/usr/bin/ubus")
# an absolute path that replaces CLI_PATHS (the tests name their stand-in here); set, it is
# the only candidate: a value that is not an absolute path to an executable means no CLI
CLI_ENV = "WGAGENT_UBUS_CLI"


def cli_path() -> str | None:
    """The ubus CLI to run, or None: CLI_ENV when set, else the first of CLI_PATHS."""
    override = os.environ.get(CLI_ENV)
    for path in (override,) if override else CLI_PATHS:
        if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class UbusError(OSError):
    def __init__(self, status: int, text: str):
        super().__init__(status, text)
        self.status = status


class PythonUbus:
    """python-ubus allows one connection per process: one client shares it."""

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
            try:
                return self._call(obj, method, args, timeout)
            except UbusError as e:
                if e.status != CONNECTION_FAILED:
                    raise
            return self._call(obj, method, args, timeout)  # ubusd restarted: once more, connected afresh
        finally:
            self.lock.release()

    def _drop(self):
        try:
            self.ubus.disconnect()
        except RuntimeError:
            pass  # "You are not connected to ubus."

    def _call(self, obj: str, method: str, args: dict, timeout: float) -> dict:
        if self.ubus.get_connected() and self.ubus.get_socket_path() != self.socket:
            self._drop()  # ubus_socket changed on reload
        if not self.ubus.get_connected():
            try:
                self.ubus.connect(socket_path=self.socket)
            except (OSError, RuntimeError) as e:
                raise UbusError(CONNECTION_FAILED, str(e)) from None
        try:
            replies = self.ubus.call(obj, method, args, timeout=int(timeout * 1000))
        except (TypeError, ValueError, SystemError) as e:
            # python-ubus (ubus_python.c, ubus_python_call_handler) turns each reply blob
            # into JSON text and json.loads it inside the call: a reply it cannot convert
            # ends the call with that conversion's exception (ValueError from the decode,
            # SystemError when its handler has dropped the list). TypeError: arguments it
            # could not send (the recorded "Failed to create json for ubus.").
            raise UbusError(PARSE_ERROR, f"python-ubus: ubus call {obj} {method}: "
                                         f"{type(e).__name__}: {e}") from None
        except RuntimeError as e:
            # "ubus error occured: Not found": the text is all python-ubus gives
            text = str(e).split(": ", 1)[-1]
            if "not connected" in text:
                status = CONNECTION_FAILED
            else:
                status = STATUS_CODES.get(text, NOT_FOUND if "not found" in text else 9)
            if status in (CONNECTION_FAILED, TIMEOUT):
                self._drop()  # the connection may be dead: the next call makes a new one
            raise UbusError(status, text) from None
        # a list of reply dicts, [] for none (07-python.txt); the first, as the CLI's
        if not isinstance(replies, list):
            raise UbusError(PARSE_ERROR, f"python-ubus: ubus call {obj} {method}: reply is a "
                                         f"{type(replies).__name__}, not a list")
        return _object(obj, method, replies[0]) if replies else {}


class CliUbus:
    name = "ubus-cli"

    def __init__(self, path: str, socket_path: str):
        self.path = path
        self.socket = socket_path

    def call(self, obj: str, method: str, args: dict, timeout: float = 10) -> dict:
        cmd = [self.path] + (["-s", self.socket] if self.socket else []) + \
              ["-t", str(max(1, int(timeout))), "call", obj, method, json.dumps(args)]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)  # bytes: decoded below
        except subprocess.TimeoutExpired:
            raise UbusError(TIMEOUT, f"ubus call {obj} {method}: no answer in {timeout:g}s") from None
        if r.returncode != 0:
            # stderr not a tty: "Command failed: ubus call ... (Not found)", exit 256 - status;
            # an unknown object: "Command failed: Not found", exit 4. The exit code is the
            # status; the text (the usage that may follow has parentheses of its own) is
            # only the first line, for the log.
            status = 256 - r.returncode if r.returncode > 128 else r.returncode
            first = (r.stderr.decode(errors="replace").strip().splitlines() or [""])[0]
            if r.returncode == 255 and first.startswith("Failed to connect"):
                status = CONNECTION_FAILED  # cli.c returns -1: no ubusd at that socket
            raise UbusError(status, STATUS_TEXT.get(status) or first or f"exit {r.returncode}")
        return _first_reply(obj, method, r.stdout)


def _first_reply(obj: str, method: str, out: bytes) -> dict:
    """The CLI's output: nothing for no data, else each reply as a JSON object, one
    after another (a method may reply more than once; 07-python.txt, `multi`). The
    first, as python-ubus's replies[0]."""
    try:
        text = out.decode().strip()
        if not text:
            return {}
        reply, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past Python's limit
        raise UbusError(PARSE_ERROR, f"ubus call {obj} {method}: reply is not JSON ({e})") from None
    return _object(obj, method, reply)


def _object(obj: str, method: str, reply) -> dict:
    if not isinstance(reply, dict):
        raise UbusError(PARSE_ERROR, f"ubus call {obj} {method}: reply is a {type(reply).__name__}, "
                                     "not an object")
    return reply


_python_client: PythonUbus | None = None


def connect(socket_path: str = "", threaded: bool = False):
    """The best client here, or None. socket_path "" means ubus's default.
    threaded: for a thread beside the route loop, which must never hold the GIL
    while waiting on rpcd (see above): the CLI first."""
    global _python_client
    cli = cli_path()
    if threaded and cli is not None:
        return CliUbus(cli, socket_path)
    try:
        import ubus as module  # OpenWrt's python3-ubus
    except ImportError:
        module = None
    if module is not None and hasattr(module, "call"):
        if _python_client is None or _python_client.ubus is not module:
            _python_client = PythonUbus(module, socket_path)
        _python_client.socket = socket_path or DEFAULT_SOCKET  # the next call reconnects if it changed
        return _python_client
    if cli is not None:
        return CliUbus(cli, socket_path)
    return None
