"""rpcd's exec plugins (/usr/libexec/rpcd/*), modelled from rpcd's plugin.c and
exec.c at 4476687 (not in the recordings):

- at rpcd's start (rpc_plugin_api_init) every regular file of the directory with
  the owner's execute bit is run as `PATH list`, stdin and stderr /dev/null; the
  first JSON value it prints, if an object, declares the methods: each member
  whose value is a table is a method, its members the arguments, typed by their
  JSON values (a string: String; a number: Integer, 8/16/64 for those sizes; true
  or false: Boolean; an array, a table); any other member is skipped. The object
  is registered under the file's name (rpc_plugin_register_exec). A plugin printing
  no object, or an empty one, registers nothing.
- a call (rpc_plugin_call) runs `PATH call METHOD` with the message on stdin as
  blobmsg_format_json(msg, true) writes it: compact, no newline at the end; the
  arguments are not checked against the declared ones (libubus checks nothing,
  ubus_process_invoke). Stdout is fed to a json-c tokener until its first value is
  complete (rpc_plugin_call_stdout_cb); at the end (rpc_plugin_call_finish_cb) an
  object is the reply, no value at all "No response" (NO_DATA, 5), anything else
  (not an object, incomplete, not JSON) INVALID_ARGUMENT (2). The exit status and
  stderr are ignored. A plugin still running after rpcd's exec timeout (-t, from
  option timeout of /etc/config/rpcd: 30 s on OpenWrt; 120 s built in) is killed
  with SIGKILL and the call answers TIMEOUT (7) (rpc_exec_timeout_cb).
- the reply's JSON becomes blobmsg (rpc_plugin_json_element_to_blob): integers
  INT32 or INT64 by range, doubles DOUBLE, null UNSPEC (printed back as null).

Where the double departs: rpcd runs the file itself (its #!/bin/sh being OpenWrt's
busybox ash); the double runs it with the shell it is given, busybox sh in the tests.
rpcd is one uloop that waits for plugins without blocking; the double runs each call
in the thread of the client's connection, which comes to the same for its clients.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

from .status import INVALID_ARGUMENT, METHOD_NOT_FOUND, UbusStatus
from .ubusd import BLOBMSG_TYPE

NO_DATA, TIMEOUT = 5, 7
RPC_EXEC_DEFAULT_TIMEOUT = 120.0


def _type(value) -> int:
    """rpc_plugin_parse_signature: a declared argument's blobmsg type."""
    if isinstance(value, bool):
        return BLOBMSG_TYPE["bool"]
    if isinstance(value, int):
        if not -2**31 <= value < 2**31:
            return BLOBMSG_TYPE["int64"]  # blobmsg_add_json_element made it an INT64
        return {8: BLOBMSG_TYPE["int8"], 16: BLOBMSG_TYPE["int16"], 64: BLOBMSG_TYPE["int64"]}.get(
            value, BLOBMSG_TYPE["int32"])
    if isinstance(value, float):
        return BLOBMSG_TYPE["double"]
    if isinstance(value, str):
        return BLOBMSG_TYPE["string"]
    if isinstance(value, list):
        return BLOBMSG_TYPE["array"]
    return BLOBMSG_TYPE["table"] if isinstance(value, dict) else 0


def first_json_value(out: bytes):
    """What json-c's tokener makes of a plugin's stdout: (True, value) for a complete
    first value (trailing text ignored), (False, None) for no bytes at all, else
    raises ValueError (incomplete or not JSON)."""
    if not out:
        return False, None
    text = out.decode(errors="replace").lstrip(" \t\n\r")
    value, end = json.JSONDecoder().raw_decode(text)
    # a bare number is complete only once something follows it (json-c waits for more)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and end == len(text):
        raise ValueError("incomplete")
    return True, value


def format_json(value) -> str:
    """blobmsg_format_json(msg, true), as the plugin's stdin: compact, doubles as %lf."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{format_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(format_json(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "%f" % value
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return _string(value)


def _string(s: str) -> str:
    """blobmsg_format_string: \\b \\n \\t \\r \\" \\\\ escaped, other control
    characters as \\u00XX, everything else (UTF-8 too) as it is."""
    out = []
    for ch in s:
        esc = {"\b": "\\b", "\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}.get(ch)
        out.append(esc if esc else f"\\u00{ord(ch):02x}" if ord(ch) < 0x20 else ch)
    return '"' + "".join(out) + '"'


class ExecPlugin:
    """One plugin's object: call() runs the file."""

    def __init__(self, path: str, methods: dict, shell: list[str], env: dict | None, timeout: float):
        self.path, self.methods, self.shell, self.env, self.timeout = path, methods, shell, env, timeout
        self.calls: list[tuple[str, str]] = []  # (method, stdin) as the plugin got them

    def call(self, method: str, args) -> dict:
        if method not in self.methods:
            raise UbusStatus(METHOD_NOT_FOUND)
        stdin = format_json(args if isinstance(args, dict) else {})
        self.calls.append((method, stdin))
        p = subprocess.Popen(self.shell + [self.path, "call", method], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd="/")
        try:
            out, _ = p.communicate(stdin.encode(), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # rpc_exec_timeout_cb: SIGKILL to the plugin and the answer at once, not
            # waiting for its pipes (a child it left may hold them)
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
            raise UbusStatus(TIMEOUT) from None
        try:
            complete, value = first_json_value(out)
        except ValueError:
            raise UbusStatus(INVALID_ARGUMENT) from None
        if not complete:
            raise UbusStatus(NO_DATA)
        if not isinstance(value, dict):
            raise UbusStatus(INVALID_ARGUMENT)
        return value


def load(directory: str, shell: list[str], env: dict | None = None,
         timeout: float = RPC_EXEC_DEFAULT_TIMEOUT) -> dict[str, tuple[ExecPlugin, dict]]:
    """rpc_plugin_api_init's scan: {object name: (plugin, signature)}."""
    out = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
            continue
        r = subprocess.run(shell + [path, "list"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=env, cwd="/", timeout=timeout)
        try:
            complete, decl = first_json_value(r.stdout)
        except ValueError:
            continue
        if not complete or not isinstance(decl, dict):
            continue
        if not decl:
            continue  # no member: rpc_plugin_parse_exec makes no object
        # members that are no table are skipped, the object is made all the same
        signature = {m: {arg: _type(v) for arg, v in sig.items()} for m, sig in decl.items() if isinstance(sig, dict)}
        out[name] = (ExecPlugin(path, signature, shell, env, timeout), signature)
    return out
