"""The double's ubusd and rpcd exec plugins against what ubus's and rpcd's sources
do (ubusd_obj.c, ubusd_event.c, ubusd_proto.c, cli.c; rpcd plugin.c, exec.c): the
cases a client of them could trip over, through the CLI stand-in as a script sees
them (stderr not a tty)."""

from __future__ import annotations

import json
import os

import pytest

from . import rpcd_plugin as rp
from .ubus_double.status import UbusStatus
from .ubus_double.ubusd import Listener, Ubusd


def hear(ubusd, owner, *patterns):
    got = []
    listener = Listener(owner, lambda event, data: got.append((event, data)))
    for p in patterns:
        ubusd.register(listener, p)
    return got


def test_event_patterns_match_as_ubusd_matches_them():
    u = Ubusd()
    exact, partial, everything, other = (hear(u, "a", "wgagent.peer"), hear(u, "b", "wgagent.*"),
                                         hear(u, "c", "*"), hear(u, "d", "wgagent"))
    both = hear(u, "e", "wgagent.peer", "wgagent.*")
    u.send("sender", "wgagent.peer", {"x": 1})
    u.send("sender", "wgagent.route", {"x": 2})
    assert exact == [("wgagent.peer", {"x": 1})]
    assert partial == everything == [("wgagent.peer", {"x": 1}), ("wgagent.route", {"x": 2})]
    assert other == [], "no * : the id itself only"
    assert both == partial, "one event per listening object, however many patterns match"
    mine = hear(u, "sender", "*")
    u.send("sender", "wgagent.peer", {})
    assert mine == [], "never looped back to the sender"
    with pytest.raises(UbusStatus) as e:
        u.send("sender", "ubus.object.add", {})
    assert e.value.status == 6
    with pytest.raises(UbusStatus):
        u.register(Listener("f", print), "")


def test_objects_have_unique_paths_and_are_announced(double):
    got = hear(double.ubusd, "listener", "ubus.object.*")
    oid = double.ubusd.add_object("wgagent", object(), "rpcd", {"status": {}})
    assert oid >= 1024 and got == [("ubus.object.add", {"id": oid, "path": "wgagent"})]
    with pytest.raises(UbusStatus) as e:
        double.ubusd.add_object("wgagent", object(), "other")
    assert e.value.status == 2  # ubusd_handle_add_object: INVALID_ARGUMENT
    double.ubusd.close_owner("rpcd")  # rpcd went away: its objects with it
    assert got[-1] == ("ubus.object.remove", {"id": oid, "path": "wgagent"})
    assert double.ubusd.find("wgagent") is None


def test_the_cli_list_send_and_listen(double):
    r = rp.ubus(double.path, "list")
    assert r.stdout.split() == ["session", "uci"]  # strcmp order
    assert rp.ubus(double.path, "list", "u*").stdout.split() == ["uci"]
    r = rp.ubus(double.path, "list", "nosuch")
    assert (r.returncode, r.stderr) == (4, "Command failed: Not found\n")
    listener = rp.listen(double.path, "wgagent.*", seconds=5, ubusd=double.ubusd)
    try:
        assert rp.ubus(double.path, "send", "wgagent.peer", '{"a":"b\\"c","n":1,"f":1.5,"z":null,"t":true}').returncode == 0
        r = rp.ubus(double.path, "send", "ubus.object.add", "{}")
        assert (r.returncode, r.stderr) == (6, "Command failed: Permission denied\n")
        r = rp.ubus(double.path, "send", "wgagent.peer", "[1]")
        assert (r.returncode, r.stderr) == (12, "Command failed: Parsing message data failed\n")
        out, _ = listener.communicate(timeout=20)  # -t 5: it ends by itself, status 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert listener.returncode == 0
    # cli.c print_event: '{ "%s": %s }', blobmsg's compact JSON, doubles as %lf
    assert out == '{ "wgagent.peer": {"a":"b\\"c","n":1,"f":1.500000,"z":null,"t":true} }\n'


def plugin(tmp_path, name, text):
    d = tmp_path / "libexec"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    (d / name).chmod(0o755)
    return str(d)


@pytest.mark.skipif(rp.busybox() is None, reason="needs busybox (OpenWrt's shell)")
def test_exec_plugins_as_rpcd_runs_them(double, tmp_path):
    d = plugin(tmp_path, "echoer", """
case "$1" in
list) echo '{"echo":{"s":"str","n":32,"b":true,"big":64},"empty":{},"bad":{},"hang":{},"notatable":5}' ;;
call)
	read -r input || :
	case "$2" in
	echo) echo "{\\"got\\":\\"$(echo "$input" | sed 's/"/_/g')\\"} trailing text ignored" ;;
	empty) ;;
	bad) echo '[1, 2]' ;;
	hang) exec sleep 30 ;;
	esac ;;
esac
""")
    plugin(tmp_path, "noexec", "echo '{\"m\":{}}'")
    os.chmod(os.path.join(d, "noexec"), 0o644)  # rpcd registers only files with the owner's x bit
    plugin(tmp_path, "silent", "true")
    assert double.load_plugins(d, [rp.busybox(), "sh"], {"PATH": rp.applets(str(tmp_path / "bin"))},
                            timeout=1) == ["echoer"]
    r = rp.ubus(double.path, "-v", "list", "echoer")
    assert r.stdout.splitlines()[1:] == [
        '\t"echo":{"s":"String","n":"Integer","b":"Boolean","big":"(unknown)"}',
        '\t"empty":{}', '\t"bad":{}', '\t"hang":{}']
    # the message on stdin, compact and without a newline; the first JSON value answers
    r = rp.ubus(double.path, "call", "echoer", "echo", '{"s": "x", "n": 1}')
    assert json.loads(r.stdout) == {"got": "{_s_:_x_,_n_:1}"}, r.stderr
    assert double.plugins["echoer"].calls[-1] == ("echo", '{"s":"x","n":1}')
    for method, status in (("empty", 5), ("bad", 2), ("hang", 7), ("nosuch", 3)):
        r = rp.ubus(double.path, "call", "echoer", method)
        assert r.returncode == 256 - status, (method, r.stderr)
