"""wgagent's ubus clients (wgagent.ubus): the ubus CLI and python-ubus, against the
ubus double (tests/ubus_double): status codes, reconnection."""

from __future__ import annotations

import os
import sys

import pytest

from wgagent import ubus as ubus_mod

from .ubus_double.server import UbusDouble

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
BIN = os.path.join(HERE, "ubus_double", "bin")
PYMOD = os.path.join(HERE, "ubus_double", "pymod")


def test_cli_client_takes_the_status_from_the_exit_code(double):
    c = ubus_mod.CliUbus(os.path.join(BIN, "ubus"), double.path)
    with pytest.raises(ubus_mod.UbusError) as e:
        c.call("uci", "add", {"config": "firewall", "type": "bad type"})
    # the usage text after it has parentheses of its own: "(for monitor)"
    assert (e.value.status, e.value.strerror) == (2, "Invalid argument")
    with pytest.raises(ubus_mod.UbusError) as e:
        c.call("nosuchobject", "get", {})
    assert (e.value.status, e.value.strerror) == (4, "Not found")  # exit 4, not 256 - 4
    with pytest.raises(ubus_mod.UbusError) as e:
        c.call("uci", "set", {"config": "firewall", "section": "nope", "values": {"a": "b"}})
    assert e.value.status == 4
    with pytest.raises(ubus_mod.UbusError) as e:
        ubus_mod.CliUbus(os.path.join(BIN, "ubus"), double.path + ".gone").call("uci", "changes", {})
    assert e.value.status == ubus_mod.CONNECTION_FAILED


def test_python_ubus_reconnects_after_ubusd_restarts_and_follows_the_socket(tmp_path, monkeypatch):
    confdir = tmp_path / "config"
    confdir.mkdir()
    (confdir / "firewall").write_text(open(os.path.join(DATA, "firewall.base")).read())
    monkeypatch.syspath_prepend(PYMOD)
    sys.modules.pop("ubus", None)
    monkeypatch.setattr(ubus_mod, "_python_client", None)
    sock = str(tmp_path / "ubus.sock")
    d = UbusDouble(sock, str(confdir), str(tmp_path / "delta"))
    other = None
    try:
        c = ubus_mod.connect(sock)
        assert c.name == "python-ubus"
        assert c.call("uci", "changes", {"config": "firewall"}) == {"changes": []}
        d.close()  # ubusd restarts: the module's connection is dead
        d = UbusDouble(sock, str(confdir), str(tmp_path / "delta"))
        assert c.call("uci", "changes", {"config": "firewall"}) == {"changes": []}
        # a reload with another ubus_socket: the next call goes there
        other = UbusDouble(str(tmp_path / "other.sock"), str(confdir), str(tmp_path / "delta2"))
        c2 = ubus_mod.connect(other.path)
        assert c2.call("uci", "changes", {"config": "firewall"}) == {"changes": []}
        assert other.uci.calls and sys.modules["ubus"].get_socket_path() == other.path
    finally:
        mod = sys.modules.pop("ubus", None)
        if mod is not None and mod.get_connected():
            mod.disconnect()
        d.close()
        if other is not None:
            other.close()


def test_the_ubus_cli_is_run_by_absolute_path_never_through_path(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ubus", None)  # no python-ubus: the CLI or nothing
    monkeypatch.delenv(ubus_mod.CLI_ENV, raising=False)
    # a `ubus` first in PATH (a writable directory, the current one) is never run
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ["PATH"])
    monkeypatch.setattr(ubus_mod, "CLI_PATHS", (str(tmp_path / "bin" / "ubus"), str(tmp_path / "usr" / "ubus")))
    assert ubus_mod.connect("", threaded=True) is None and ubus_mod.connect("") is None
    # the fixed places, in order (OpenWrt: /bin/ubus)
    for where in ("usr", "bin"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "ubus").write_text("#!/bin/sh\n")
        (tmp_path / where / "ubus").chmod(0o755)
    c = ubus_mod.connect("/run/ubus.sock", threaded=True)
    assert (c.name, c.path, c.socket) == ("ubus-cli", str(tmp_path / "bin" / "ubus"), "/run/ubus.sock")
    # WGAGENT_UBUS_CLI replaces them: the tests' stand-in; set, it is the only candidate
    monkeypatch.setenv(ubus_mod.CLI_ENV, os.path.join(BIN, "ubus"))
    assert ubus_mod.connect("", threaded=True).path == os.path.join(BIN, "ubus")
    for unusable in ("ubus", str(tmp_path / "missing"), str(tmp_path / "usr")):  # relative, absent, a directory
        monkeypatch.setenv(ubus_mod.CLI_ENV, unusable)
        assert ubus_mod.cli_path() is None and ubus_mod.connect("", threaded=True) is None


# --- a malformed reply is a UbusError (an OSError), never ValueError or TypeError

CLI_OUTPUTS = [
    ("not JSON", b"Segmentation fault\n"),
    ("not UTF-8", b'{"value": "\xff\xfe"}\n'),
    ("an array", b'[\n\t"wg0"\n]\n'),
    ("a number", b"42\n"),
    ("a string", b'"up"\n'),
    ("cut short", b'{\n\t"values": {\n'),
    ("nested past the recursion limit", b"[" * 100000 + b"]" * 100000),
]


@pytest.mark.parametrize("name,out", CLI_OUTPUTS, ids=[c[0] for c in CLI_OUTPUTS])
def test_a_cli_reply_that_is_no_json_object_is_a_ubus_error(tmp_path, name, out):
    (tmp_path / "out").write_bytes(out)
    cli = tmp_path / "ubus"
    cli.write_text(f"#!/bin/sh\ncat '{tmp_path / 'out'}'\n")
    cli.chmod(0o755)
    with pytest.raises(ubus_mod.UbusError) as e:
        ubus_mod.CliUbus(str(cli), "").call("uci", "get", {"config": "firewall"})
    assert e.value.status == ubus_mod.PARSE_ERROR and "ubus call uci get" in e.value.strerror


def test_the_cli_gives_the_first_of_several_replies(tmp_path):
    cli = tmp_path / "ubus"
    # 07-python.txt, `ubus call wgagent multi`: each reply an object of its own
    cli.write_text("#!/bin/sh\nprintf '{\\n\\t\"part\": 1\\n}\\n{\\n\\t\"part\": 2\\n}\\n'\n")
    cli.chmod(0o755)
    assert ubus_mod.CliUbus(str(cli), "").call("wgagent", "multi", {}) == {"part": 1}


class OddUbus:
    """python-ubus with a connection, whose call answers `reply` or raises it."""

    def __init__(self, reply):
        self.reply = reply

    def get_connected(self):
        return True

    def get_socket_path(self):
        return ubus_mod.DEFAULT_SOCKET

    def call(self, obj, method, args, timeout=0):
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


ODD = [
    ("None", None),
    ("a dict, not a list", {"values": {}}),
    ("a string", "values"),
    ("a list of None", [None]),
    ("a list of lists", [["wg0"]]),
    ("a list of strings", ["up"]),
    # ubus_python_call_handler: json.loads of the reply failed inside the call
    ("json.loads failed", ValueError("Expecting value: line 1 column 1 (char 0)")),
    ("its handler dropped the list", SystemError("<built-in function call> returned a result with an exception set")),
    ("arguments it cannot send", TypeError("Failed to create json for ubus.")),
]


@pytest.mark.parametrize("name,reply", ODD, ids=[o[0] for o in ODD])
def test_odd_python_ubus_answers_are_a_ubus_error(name, reply):
    with pytest.raises(ubus_mod.UbusError) as e:
        ubus_mod.PythonUbus(OddUbus(reply), "").call("uci", "get", {"config": "firewall"})
    assert e.value.status == ubus_mod.PARSE_ERROR and "ubus call uci get" in e.value.strerror


def test_python_ubus_gives_the_first_reply_and_an_empty_one_for_none():
    assert ubus_mod.PythonUbus(OddUbus([{"part": 1}, {"part": 2}]), "").call("wgagent", "multi", {}) == {"part": 1}
    assert ubus_mod.PythonUbus(OddUbus([]), "").call("uci", "commit", {"config": "firewall"}) == {}
