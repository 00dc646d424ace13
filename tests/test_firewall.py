"""Firewall sections: the pure part table-driven, the writer against the rpcd double
(tests/ubus_double) over both transports, and golden files of S1's two routers."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from wgagent import config as config_mod
from wgagent import firewall, uci
from wgagent import ubus as ubus_mod
from wgagent.config import ConfigError
from wgagent.firewall import OWNED_PREFIX, ForeignPending, Section

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
GOLDEN = os.path.join(HERE, "golden")
BIN = os.path.join(HERE, "ubus_double", "bin")
PYMOD = os.path.join(HERE, "ubus_double", "pymod")


def load(tmp_path, text: str):
    path = tmp_path / "wgagent"
    path.write_text(text)
    return config_mod.load(str(path), {})


# --- config validation


@pytest.mark.parametrize("body,fragment", [
    ("config zone 'wg0'\n\toption input 'MAYBE'\n", "section 'wg0', option 'input', value 'MAYBE'.*one of ACCEPT"),
    ("config zone 'wg0'\n\toption allow_port '99999'\n", "option 'allow_port', value '99999'.*out of range"),
    ("config zone 'wg0'\n\tlist forward_to 'l-an'\n", "option 'forward_to'.*name"),
    ("config zone 'wg0'\n\tlist forward_to 'wg0'\n", "option 'forward_to'.*cannot forward to itself"),
    ("config zone 'wg0'\n\toption masq 'perhaps'\n", "option 'masq', value 'perhaps'.*boolean"),
    ("config nat 'n'\n\toption device 'wg_s2s'\n", "section 'n', option 'src_ip'.*required"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/33'\n\toption device 'x'\n", "option 'src_ip', value '10.0.31.0/33'"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n", "option 'device'.*exactly one of"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption device 'a'\n\toption dest 'lan'\n", "exactly one"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption device 'a'\n\toption target 'SNAT'\n",
     "option 'snat_ip'.*target SNAT needs snat_ip"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption device 'a'\n\toption snat_ip '192.0.2.1'\n",
     "option 'snat_ip', value '192.0.2.1'.*only for target SNAT"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption device 'a'\n\toption target 'DNAT'\n",
     "option 'target', value 'DNAT'"),
    ("config nat 'n'\n\toption src_ip 'fd31::/64'\n\toption device 'a'\n", "option 'src_ip', value 'fd31::/64'.*ipv4"),
    ("config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption device 'a'\n\toption family 'ipx'\n", "family"),
])
def test_config_errors(tmp_path, body, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load(tmp_path, body)


# --- pure: config -> sections, sections -> plan

def sections_of(tmp_path, text):
    return firewall.desired_sections(load(tmp_path, text))


def test_zone_sections(tmp_path):
    got = sections_of(tmp_path, "config zone 'wg0'\n\tlist forward_to 'lan'\n\tlist forward_from 'lan'\n"
                                "\toption allow_port '51820'\n")
    assert [(s.name, s.type) for s in got] == [
        ("wgagent_zone_wg0", "zone"), ("wgagent_fwd_wg0_to_lan", "forwarding"),
        ("wgagent_fwd_lan_to_wg0", "forwarding"), ("wgagent_rule_wg0_port", "rule")]
    zone, _, _, rule = got
    assert zone.as_dict() == {"name": "wg0", "network": ["wg0"], "input": "ACCEPT", "output": "ACCEPT",
                              "forward": "REJECT", "masq": "0", "masq_allow_invalid": "0", "mtu_fix": "1"}
    assert rule.as_dict()["target"] == "ACCEPT" and rule.as_dict()["dest_port"] == "51820"  # fw4: always a target


NATS = [
    ("masquerade out of a device", "option device 'wg_s2s'\n",
     {"src": "*", "device": "wg_s2s", "target": "MASQUERADE"}),
    ("snat into a zone", "option dest 'wan'\n\toption target 'SNAT'\n\toption snat_ip '192.0.2.1'\n",
     {"src": "wan", "target": "SNAT", "snat_ip": "192.0.2.1"}),
    ("accept (no nat)", "option device 'wg_s2s'\n\toption target 'ACCEPT'\n", {"target": "ACCEPT"}),
]


@pytest.mark.parametrize("name,extra,expected", NATS, ids=[n[0] for n in NATS])
def test_nat_sections(tmp_path, name, extra, expected):
    (nat,) = sections_of(tmp_path, "config nat 'pool'\n\toption src_ip '10.0.31.0/24'\n\t" + extra)
    values = nat.as_dict()
    assert nat.name == "wgagent_nat_pool" and nat.type == "nat"
    assert values["src_ip"] == "10.0.31.0/24" and values["family"] == "ipv4"
    assert {k: values.get(k) for k in expected} == expected


Z = Section.make("wgagent_zone_wg0", "zone", {"name": "wg0", "network": ["wg0"], "input": "ACCEPT"})
F = Section.make("wgagent_fwd_wg0_to_lan", "forwarding", {"src": "wg0", "dest": "lan"})

PLANS = [
    ("in step", [Z, F], {Z.name: ("zone", Z.as_dict()), F.name: ("forwarding", F.as_dict())}, [], [], [], []),
    ("missing is created", [Z, F], {Z.name: ("zone", Z.as_dict())}, [F.name], [], [], []),
    ("changed option is set", [Z], {Z.name: ("zone", {**Z.as_dict(), "input": "DROP"})},
     [], [(Z.name, {"input": "ACCEPT"}, [])], [], []),
    ("list changed", [Z], {Z.name: ("zone", {**Z.as_dict(), "network": ["wg0", "old"]})},
     [], [(Z.name, {"network": ["wg0"]}, [])], [], []),
    ("extra option deleted", [Z], {Z.name: ("zone", {**Z.as_dict(), "masq": "1"})}, [], [(Z.name, {}, ["masq"])], [], []),
    ("type changed under us", [Z], {Z.name: ("rule", Z.as_dict())}, [], [], [Z.name], []),
    ("owned but no longer wanted", [], {Z.name: ("zone", Z.as_dict())}, [], [], [], [Z.name]),
]


@pytest.mark.parametrize("name,desired,owned,create,update,retype,delete", PLANS, ids=[p[0] for p in PLANS])
def test_plan(name, desired, owned, create, update, retype, delete):
    p = firewall.plan(desired, owned)
    assert [s.name for s in p.create] == create
    assert [(s.name, st, de) for s, st, de in p.update] == update
    assert [s.name for s in p.retype] == retype and p.delete == delete
    assert bool(p) == bool(create or update or retype or delete)


def test_owned_from_get_ignores_every_other_section():
    reply = {"values": {"lan": {".type": "zone", "name": "lan"},
                        "wgagent_zone_wg0": {".anonymous": False, ".type": "zone", ".name": "wgagent_zone_wg0",
                                             ".index": 3, "name": "wg0"},
                        "cfg1592bd": {".type": "rule", "name": "wgagent-lookalike"}}}
    assert firewall.owned_from_get(reply) == {"wgagent_zone_wg0": ("zone", {"name": "wg0"})}


# --- the writer against the rpcd double, over both transports


def file_sections(double) -> list[tuple]:
    with open(os.path.join(double.uci.confdir, "firewall")) as f:
        return [(s.type, s.name, s.options) for s in uci.parse(f.read())]


def foreign(double) -> list[tuple]:
    return [s for s in file_sections(double) if not (s[1] or "").startswith(OWNED_PREFIX)]


def writes(double) -> list[str]:
    return [m for m, _ in double.uci.calls if m in ("add", "set", "delete", "commit", "revert")]


def op_config(tmp_path, router: str):
    return load(tmp_path, open(os.path.join(DATA, f"s1_{router}.wgagent")).read())


def test_sync_writes_commits_once_and_then_nothing(tmp_path, double, client):
    before = foreign(double)
    desired = firewall.desired_sections(op_config(tmp_path, "op1"))
    result = firewall.FirewallWriter(client).sync(desired)
    assert result.changed and sorted(result.created) == sorted(s.name for s in desired)
    assert writes(double).count("commit") == 1 and len(double.uci.events) == 1
    assert foreign(double) == before  # nothing of anybody else's changed
    double.uci.calls.clear()
    again = firewall.FirewallWriter(client).sync(desired)
    assert not again.changed
    assert writes(double) == []  # idempotent: no write and no commit (a commit would reload fw4)
    assert len(double.uci.events) == 1


@pytest.mark.parametrize("router", ["op1", "op2"])
def test_golden_firewall_file(tmp_path, double, client, router):
    firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, router)))
    with open(os.path.join(double.uci.confdir, "firewall")) as f:
        written = f.read()
    golden = os.path.join(GOLDEN, f"s1_{router}.firewall")
    if os.environ.get("WGAGENT_UPDATE_GOLDEN"):
        with open(golden, "w") as f:
            f.write(written)
    with open(golden) as f:
        assert written == f.read()


def stage_foreign(double, how: str = "uci CLI"):
    """Another tool's uncommitted change to the firewall, in the shared /tmp/.uci."""
    if how == "uci CLI":  # what `uci set firewall.lan.input=DROP` leaves in /tmp/.uci/firewall
        with open(os.path.join(double.uci.savedir, "firewall"), "a") as f:
            f.write("firewall.lan.input='DROP'\n")
    else:  # `ubus call uci set` without a session (a script; LuCI has a session of its own)
        double.uci.call("set", {"config": "firewall", "section": "lan", "values": {"input": "DROP"}})


def shared_changes(double) -> list:
    return double.uci.call("changes", {"config": "firewall"})["changes"]


def sessions_left(double) -> list[str]:
    """Sessions other than rpcd's default one, and savedirs in /var/run/rpcd."""
    return [sid for sid in double.sessions.sessions if sid != "0" * 32] + os.listdir(double.sessions.rundir)


@pytest.mark.parametrize("how", ["uci CLI", "rpcd without a session"])
def test_another_tools_staged_change_is_neither_committed_nor_in_the_way(tmp_path, double, client, how):
    stage_foreign(double, how)
    desired = firewall.desired_sections(op_config(tmp_path, "op1"))
    result = firewall.FirewallWriter(client).sync(desired)
    assert result.changed and sorted(result.created) == sorted(s.name for s in desired)
    lan = next(s for s in file_sections(double) if s[1] == "lan")
    assert lan[2]["input"] == "ACCEPT"  # theirs is not ours to commit ...
    assert shared_changes(double) == [["set", "lan", "input", "DROP"]]  # ... and is still theirs, staged
    assert sessions_left(double) == []


def test_a_change_staged_just_before_the_commit_is_not_committed(tmp_path, double, client):
    def somebody(method, args):  # `uci set` lands between wgagent's last check and its commit
        if method == "commit":
            stage_foreign(double)

    double.uci.before_call = somebody
    firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    double.uci.before_call = None
    assert next(s for s in file_sections(double) if s[1] == "lan")[2]["input"] == "ACCEPT"
    assert shared_changes(double) == [["set", "lan", "input", "DROP"]]
    assert "wgagent_zone_wg0" in [s[1] for s in file_sections(double)]


def test_every_uci_call_is_made_in_a_session_of_its_own(tmp_path, double, client):
    firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    sids = {args.get("ubus_rpc_session") for _, args in double.uci.calls}
    assert len(sids) == 1 and re.fullmatch(r"[0-9a-f]{32}", sids.pop())
    assert [m for m, _ in double.uci.calls][-1] == "commit"
    assert sessions_left(double) == []  # destroyed: its savedir with it
    double.uci.calls.clear()
    firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    assert [m for m, _ in double.uci.calls] == ["get"]  # in step: a read, no write, no commit
    assert sessions_left(double) == []


def test_a_failure_midway_leaves_nothing_staged_anywhere(tmp_path, double, client):
    before = file_sections(double)
    double.uci.fail_after = 3  # the fourth write call fails
    with pytest.raises(ubus_mod.UbusError):
        firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    assert file_sections(double) == before  # nothing half-written
    assert "commit" not in writes(double) and "revert" not in writes(double)
    assert shared_changes(double) == [] and sessions_left(double) == []  # the session went, its savedir too
    # and the next pass writes it all
    assert firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1"))).changed


KILLED_PASS = """
import sys
sys.path[:0] = sys.argv[4:]
if sys.argv[3] == "ubus-cli":
    sys.modules["ubus"] = None
from wgagent import config, firewall, ubus
client = ubus.connect(sys.argv[2], threaded=sys.argv[3] == "ubus-cli")
assert client.name == sys.argv[3], client.name
firewall.FirewallWriter(client).sync(firewall.desired_sections(config.load(sys.argv[1], {})))
"""


@pytest.mark.parametrize("transport", ["python-ubus", "ubus-cli"])
def test_a_pass_killed_midway_leaves_nothing_for_somebody_elses_commit(tmp_path, double, transport):
    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = double.sessions.clock = Clock()
    killed = []

    def kill(method, args):  # SIGKILL while rpcd answers the third write: no finally runs
        if method in ("add", "set") and len([m for m, _ in double.uci.calls if m in ("add", "set")]) == 3:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(args)

    double.uci.after_call = kill
    path = [os.path.dirname(HERE)] + ([PYMOD] if transport == "python-ubus" else [])
    env = dict(os.environ, **{ubus_mod.CLI_ENV: os.path.join(BIN, "ubus")})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PASS, os.path.join(DATA, "s1_op1.wgagent"), double.path,
                             transport, *path], env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    double.uci.after_call = None
    assert killed and proc.returncode == -signal.SIGKILL, err
    # somebody's `uci set` + `uci commit` commits only theirs ...
    stage_foreign(double)
    double.uci.call("commit", {"config": "firewall"})
    assert [s[1] for s in file_sections(double) if (s[1] or "").startswith(OWNED_PREFIX)] == []
    assert next(s for s in file_sections(double) if s[1] == "lan")[2]["input"] == "DROP"
    # ... for the killed pass's half-made change waits in its session's savedir
    (sid,) = [sid for sid in double.sessions.sessions if sid != "0" * 32]
    assert len(double.uci.delta("firewall", double.sessions.savedir(sid))) >= 3
    # until rpcd drops it when the session times out (rpc_session_timeout -> rpc_uci_purge_savedir_cb)
    clock.now += firewall.SESSION_TIMEOUT + 1
    double.sessions.expire()
    assert sessions_left(double) == []


def test_older_leftovers_in_the_shared_delta_are_not_touched_and_go_once_committed(tmp_path, double, client):
    # what an older wgagent, killed midway, left in /tmp/.uci: staged there, it is not ours to revert
    # (a revert takes the whole config, with whatever another tool staged meanwhile)
    double.uci.call("add", {"config": "firewall", "type": "zone", "name": "wgagent_zone_half"})
    w = firewall.FirewallWriter(client)
    w.sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    assert [c[1] for c in shared_changes(double)] == ["wgagent_zone_half"]
    double.uci.call("commit", {"config": "firewall"})  # somebody commits it: now it is in the file ...
    assert "wgagent_zone_half" in [s[1] for s in file_sections(double)]
    assert w.sync(firewall.desired_sections(op_config(tmp_path, "op1"))).deleted == ["wgagent_zone_half"]
    assert "wgagent_zone_half" not in [s[1] for s in file_sections(double)]  # ... and the next pass takes it out


def test_an_apply_awaiting_confirmation_is_waited_for(tmp_path, double, client):
    # LuCI's Save & Apply: until it is confirmed or rolled back, rpcd refuses every commit
    double.uci.apply_sid = "a" * 32
    before = file_sections(double)
    with pytest.raises(ForeignPending, match="apply"):
        firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    assert file_sections(double) == before and sessions_left(double) == []
    double.uci.apply_sid = ""
    assert firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1"))).changed


def test_a_session_lost_midway_is_a_failure_not_an_apply(tmp_path, double, client):
    # rpcd restarted (or re-executed on SIGHUP: a thawed session has no ACLs) during the pass
    def restart(method, args):
        if method == "set":
            double.sessions.sessions.pop(args["ubus_rpc_session"], None)

    double.uci.after_call = restart
    with pytest.raises(ubus_mod.UbusError) as e:
        firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    double.uci.after_call = None
    assert e.value.status == 6 and not isinstance(e.value, ForeignPending)


def test_removed_from_config_removed_from_firewall(tmp_path, double, client):
    w = firewall.FirewallWriter(client)
    w.sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    smaller = load(tmp_path, "config zone 'wg0'\n\tlist forward_to 'lan'\n")
    result = w.sync(firewall.desired_sections(smaller))
    names = [s[1] for s in file_sections(double) if (s[1] or "").startswith(OWNED_PREFIX)]
    assert names == ["wgagent_zone_wg0", "wgagent_fwd_wg0_to_lan"]
    assert "wgagent_nat_pool_via_s2s" in result.deleted and "wgagent_zone_s2s" in result.deleted


def test_upsert_trap_lists_are_replaced_not_appended(tmp_path, double, client):
    # an owned zone that somebody edited: its network list holds an extra entry
    client.call("uci", "add", {"config": "firewall", "type": "zone", "name": "wgagent_zone_wg0",
                               "values": {"name": "wg0", "network": ["wg0", "wg7"]}})
    client.call("uci", "commit", {"config": "firewall"})
    # what a naive writer would get from add: the list appended to
    client.call("uci", "add", {"config": "firewall", "type": "zone", "name": "wgagent_zone_wg0",
                               "values": {"network": ["wg0"]}})
    assert client.call("uci", "get", {"config": "firewall", "section": "wgagent_zone_wg0", "option": "network"}) \
        == {"value": ["wg0", "wg7", "wg0"]}
    client.call("uci", "revert", {"config": "firewall"})
    firewall.FirewallWriter(client).sync(firewall.desired_sections(load(tmp_path, "config zone 'wg0'\n")))
    zone = next(s for s in file_sections(double) if s[1] == "wgagent_zone_wg0")
    assert zone[2]["network"] == ["wg0"]


def test_a_section_removed_by_another_tool_is_restored_and_logged(tmp_path, double, client):
    events = []

    class Log:
        def info(self, event, **kw):
            events.append((event, kw))

        warning = info

    sync = firewall.FirewallSync(op_config(tmp_path, "op1"), Log(), connect=lambda sock: client)
    sync.sync_once(client)
    client.call("uci", "delete", {"config": "firewall", "section": "wgagent_rule_wg0_port"})
    client.call("uci", "commit", {"config": "firewall"})
    sync.sync_once(client)
    assert "wgagent_rule_wg0_port" in [s[1] for s in file_sections(double)]
    restored = [kw for e, kw in events if e == "firewall_restored"]
    assert restored and restored[0]["sections"] == "wgagent_rule_wg0_port"


# --- recorded rpcd and CLI behaviour, as the double reproduces it


@pytest.mark.parametrize("name", ["01-roundtrip", "02-sections", "03-lists", "04-delete", "05-commit", "06-errors"])
def test_the_double_replays_the_transcripts_exactly(tmp_path, name):
    from .ubus_double import replay

    path = os.path.join(replay.TRANSCRIPTS, name + ".txt")
    r = replay.Replay(str(tmp_path))
    replayed, diffs = 0, []
    try:
        with open(path) as f:
            for cmd, recorded, status in replay.blocks(f.read()):
                got = r.run(cmd)
                if got is None or status is None:
                    continue
                replayed += 1
                if got[1] != status or not replay.compare(recorded, got[0]):
                    diffs.append(f"$ {cmd}\nrecorded [exit {status}]:\n" + "\n".join(recorded) +
                                 f"\ngot [exit {got[1]}]:\n{got[0]}")
    finally:
        r.close()
    assert replayed >= 10
    assert not diffs, "\n\n".join(diffs)


def test_cli_exit_codes_and_messages(double):
    def ubus(*args):
        return subprocess.run([os.path.join(BIN, "ubus"), "-s", double.path, *args], capture_output=True, text=True)

    r = ubus("call", "uci", "set", '{"config":"firewall","section":"does_not_exist","values":{"input":"ACCEPT"}}')
    assert r.returncode == 252 and r.stderr.strip() == (
        'Command failed: ubus call uci set {"config":"firewall","section":"does_not_exist",'
        '"values":{"input":"ACCEPT"}} (Not found)')
    r = ubus("call", "uci", "add", '{"config":"firewall","type":"bad type"}')
    first, *usage = r.stderr.splitlines()
    assert r.returncode == 254 and first == \
        'Command failed: ubus call uci add {"config":"firewall","type":"bad type"} (Invalid argument)'
    assert usage and usage[0].startswith("Usage: ubus")  # cli.c prints its usage after INVALID_ARGUMENT
    r = ubus("call", "nosuchobject", "get", "{}")  # recorded in 06: exit 4, tty or not
    assert (r.returncode, r.stderr) == (4, "Command failed: Not found\n")
    r = ubus("call", "uci", "get", '{"config":')  # recorded in 06: a client-side parse error
    assert (r.returncode, r.stderr) == (
        244, 'Command failed: ubus call uci get {"config": (Parsing message data failed)\n')
    r = ubus("call", "uci", "frobnicate", "{}")
    assert (r.returncode, r.stderr) == (253, "Command failed: ubus call uci frobnicate {} (Method not found)\n")
    r = ubus("call", "uci", "get", '{"config":"firewall","section":"no_such_section"}')
    assert r.returncode == 0 and r.stdout == ""  # status 0, no data
    r = ubus("call", "uci", "commit", '{"config":"firewall"}')
    assert r.returncode == 0 and r.stdout == ""
    r = ubus("call", "uci", "add", '{"config":"firewall","type":"zone","name":"wgagent_x","values":{"network":["a"]}}')
    assert r.stdout == '{\n\t"section": "wgagent_x"\n}\n'


def test_python_ubus_standin_behaviour(double, monkeypatch):
    monkeypatch.syspath_prepend(PYMOD)
    sys.modules.pop("ubus", None)
    mod = importlib.import_module("ubus")
    try:
        assert mod.connect(socket_path=double.path) is True
        with pytest.raises(RuntimeError, match="already connected"):
            mod.connect(socket_path=double.path)
        assert mod.call("uci", "get", {"config": "firewall", "section": "missing"}) == []
        with pytest.raises(RuntimeError, match="^ubus error occured: Not found$"):
            mod.call("uci", "set", {"config": "firewall", "section": "missing", "values": {"a": "b"}})
        with pytest.raises(RuntimeError, match="Object 'nosuchobject' was not found"):
            mod.call("nosuchobject", "get", {})
        with pytest.raises(TypeError):
            mod.call("uci", "get", "firewall")
        assert mod.call("uci", "commit", {"config": "firewall"}) == []
    finally:
        mod.disconnect()
        sys.modules.pop("ubus", None)


RECORDED = [
    # (calls before, the call, expected status, expected data) from shared/openwrt/rpcd-uci
    ([], ("add", {"config": "nosuchconfig", "type": "zone"}), 4, None),
    ([], ("get", {"config": "../etc/passwd"}), 4, None),
    ([], ("get", {"config": "fire wall"}), 2, None),
    ([], ("add", {"config": "firewall", "type": "zone", "name": "wgagent-wg0"}), 2, None),
    ([], ("add", {"config": "firewall", "type": "zone", "name": "wgagent_x", "values": {"good": "1", "bad-opt": "2"}}),
     2, None),
    ([], ("set", {"config": "firewall", "section": "wg_wan_in", "values": {"x": 1.5}}), 2, None),
    ([], ("delete", {"config": "firewall", "section": "wg_wan_in", "options": ["nope1", "nope2"]}), 4, None),
    ([("add", {"config": "firewall", "type": "zone", "name": "wgagent_wg0", "values": {"network": ["wg0"]}})],
     ("set", {"config": "firewall", "section": "wgagent_wg0", "values": {"network": ["wg1", "wg2"]}}), 0, None),
    ([("add", {"config": "firewall", "type": "rule", "name": "wg_wan_in", "values": {"name": "x"}})],
     ("get", {"config": "firewall", "section": "wg_wan_in", "option": "proto"}), 0, {"value": "udp"}),
]


@pytest.mark.parametrize("before,call,status,data", RECORDED)
def test_recorded_rpcd_answers(double, before, call, status, data):
    from .ubus_double.rpcd import UbusStatus

    for method, args in before:
        double.uci.call(method, args)
    try:
        got = (0, double.uci.call(*call))
    except UbusStatus as e:
        got = (e.status, None)
    assert got == (status, data)


def test_set_replaces_a_list_in_the_delta(double):
    u = double.uci
    u.call("add", {"config": "firewall", "type": "zone", "name": "wgagent_wg0", "values": {"network": ["wg0"]}})
    u.call("set", {"config": "firewall", "section": "wgagent_wg0", "values": {"network": ["wg1"], "masq": True}})
    assert u.call("changes", {"config": "firewall"})["changes"][-3:] == [
        ["remove", "wgagent_wg0", "network"], ["list-add", "wgagent_wg0", "network", "wg1"],
        ["set", "wgagent_wg0", "masq", "1"]]
    # add with a name of an existing section of another type silently changes its type
    u.call("add", {"config": "firewall", "type": "zone", "name": "wg_wan_in", "values": {"name": "oops"}})
    assert u.call("get", {"config": "firewall", "section": "wg_wan_in"})["values"][".type"] == "zone"
    # delete by type+match ignores keys a section lacks (rpc_uci_match_section): a
    # section matches when at least one key is present and every present key matches
    u.call("revert", {"config": "firewall"})
    u.call("delete", {"config": "firewall", "type": "rule", "match": {"icmp_type": "echo-request", "family": "ipv4"}})
    removed = [c[1] for c in u.call("changes", {"config": "firewall"})["changes"]]
    assert removed == ["cfg0592bd"]  # Allow-Ping; wg_wan_in has neither key and stays
    u.call("revert", {"config": "firewall"})
    # the trap: a key the section lacks does not stop it matching (wg_wan_in has no icmp_type)
    u.call("delete", {"config": "firewall", "type": "rule", "match": {"target": "ACCEPT", "icmp_type": "nope"}})
    assert [c[1] for c in u.call("changes", {"config": "firewall"})["changes"]] == ["wg_wan_in"]


# --- the daemon side: never waits on ubus


def test_firewall_sync_runs_beside_and_reports_unavailable_once(tmp_path):
    events = []

    class Log:
        def info(self, event, **kw):
            events.append(event)

        warning = info

    sync = firewall.FirewallSync(op_config(tmp_path, "op1"), Log(), connect=lambda sock: None)
    sync.start()
    for _ in range(3):
        sync.nudge()
        time.sleep(0.05)
    sync.stop()
    assert events == ["firewall_unavailable"]


def test_slow_rpcd_does_not_block_the_caller(tmp_path, double, client):
    double.delay = 0.2
    done = threading.Event()

    class Log:
        def info(self, event, **kw):
            if event == "firewall_committed":
                done.set()

        warning = info

    sync = firewall.FirewallSync(op_config(tmp_path, "op1"), Log(), connect=lambda sock: client)
    started = time.monotonic()
    sync.start()
    sync.nudge()
    assert time.monotonic() - started < 0.2  # the caller (the route loop) goes on at once
    assert done.wait(180)  # ~25 calls, each a process start under the CLI on a loaded machine
    sync.stop()


def test_print_shows_the_sections_without_ubus(tmp_path):
    path = os.path.join(DATA, "s1_op1.wgagent")
    r = subprocess.run([sys.executable, "-m", "wgagent", "firewall", "--print", "--config", path],
                       capture_output=True, text=True, env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert r.returncode == 0, r.stderr
    assert "config zone 'wgagent_zone_wg0'" in r.stdout and "config nat 'wgagent_nat_pool_via_s2s'" in r.stdout
    assert uci.parse(r.stdout)  # valid UCI


@pytest.mark.parametrize("zones,has_ubus,runs", [
    (False, False, False),  # plain Linux, nothing to write: no thread, no module
    (False, True, True),  # OpenWrt: owned sections left by an older config must go
    (True, False, True),  # asked for, cannot: the thread says so once
])
def test_the_firewall_thread_runs_only_where_it_has_work(tmp_path, monkeypatch, zones, has_ubus, runs):
    from wgagent.daemon import Daemon

    monkeypatch.setattr(ubus_mod, "connect", lambda sock="": object() if has_ubus else None)
    cfg = load(tmp_path, "config zone 'wg0'\n" if zones else "config agent 'main'\n")
    d = Daemon(cfg, rtnl=None, sources=None)
    d.want_firewall(start=False)
    assert (d.firewall is not None) == runs


def test_a_reload_that_adds_zones_starts_the_firewall_thread(tmp_path, monkeypatch):
    from wgagent.daemon import Daemon

    monkeypatch.setattr(ubus_mod, "connect", lambda sock="": None)
    d = Daemon(load(tmp_path, "config agent 'main'\n"), rtnl=None, sources=None)
    d.want_firewall(start=False)
    assert d.firewall is None
    (tmp_path / "wgagent").write_text("config zone 'wg0'\n")
    assert d.reload()
    try:
        assert d.firewall is not None and d.firewall.thread.is_alive()
    finally:
        d.firewall.stop()


# --- the audit's cases: each fails on the code before its fix


def test_add_without_a_type_is_checked_before_the_config(double):
    from .ubus_double.rpcd import UbusStatus

    with pytest.raises(UbusStatus) as e:
        double.uci.call("add", {"config": "nosuchconfig"})
    assert e.value.status == 2  # rpcd: required arguments first; with a type it is NOT_FOUND (06)


def test_anonymous_ids_are_libucis_and_survive_a_commit(double):
    u = double.uci
    sid = u.call("add", {"config": "firewall", "type": "rule", "values": {"name": "x"}})["section"]
    # the base file holds 6 sections: the 7th, and the djb hash of "rule" (as cfg1392bd in 02)
    assert sid == "cfg0792bd"
    u.call("commit", {"config": "firewall"})
    assert u.call("get", {"config": "firewall", "type": "rule", "match": {"name": "x"}})["values"].keys() == {sid}


def test_a_change_staged_in_the_savedir_by_another_tool_is_seen(double, client):
    stage_foreign(double)  # what `uci set firewall.lan.input=DROP` leaves in /tmp/.uci/firewall
    assert client.call("uci", "changes", {"config": "firewall"})["changes"] == [["set", "lan", "input", "DROP"]]


UCI_CASES = os.path.join(DATA, "openwrt", "uci-syntax", "cases.md")


def test_the_doubles_commit_writer_follows_libuci_export():
    """The double writes the file itself (not with wgagent.uci.render), so the golden
    files check wgagent's sections against libuci's layout as recorded."""
    import ast
    import re as _re

    from .ubus_double.rpcd import _Section, export

    text = open(UCI_CASES).read()
    checked = 0
    for name, body in _re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, flags=_re.S | _re.M):
        m = _re.search(r"file content.*?```\n(.*?)\n```.*?uci export \S+:\n```\n(.*?)\[exit 0\]\n```", body, _re.S)
        if not m:
            continue  # a broken file: nothing exported
        content = ast.literal_eval(m.group(1))
        recorded = m.group(2).split("\n", 1)[1]  # without "package NAME": a commit writes none
        sections = [_Section(s.type, s.name or "", s.name is None, dict(s.options)) for s in uci.parse(content)]
        assert export(sections) == recorded, name
        checked += 1
    assert checked >= 5


def test_forwarding_names_that_collide_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"section 'a_to_b', option 'forward_to', value 'c'.*"
                                          r"forwarding a -> b_to_c \(section 'a', option 'forward_to'\).*"
                                          r"wgagent_fwd_a_to_b_to_c"):
        load(tmp_path, "config zone 'a'\n\tlist forward_to 'b_to_c'\n\nconfig zone 'b_to_c'\n\n"
                       "config zone 'a_to_b'\n\tlist forward_to 'c'\n\nconfig zone 'c'\n")
    # the same pair asked for from both ends is one section, not a collision
    got = sections_of(tmp_path, "config zone 'a'\n\tlist forward_to 'b'\n\nconfig zone 'b'\n\tlist forward_from 'a'\n")
    assert [s.name for s in got].count("wgagent_fwd_a_to_b") == 1


def test_zone_references_warned_at_load(tmp_path):
    cfg = load(tmp_path, "config zone 'wg0'\n\tlist forward_to 'lan'\n\tlist forward_to 'guest'\n\n"
                         "config nat 'n'\n\toption src_ip '10.0.31.0/24'\n\toption dest 'dmz'\n")
    assert any("section 'wg0', option 'forward_to', value 'guest'" in w for w in cfg.warnings)
    assert any("section 'n', option 'dest', value 'dmz'" in w for w in cfg.warnings)
    assert not any("'lan'" in w for w in cfg.warnings)


def test_write_time_zone_checks(tmp_path, double, client):
    # a zone 'wg0' of the user's own: wgagent's zone of that name would be a second one
    with open(os.path.join(double.uci.confdir, "firewall"), "a") as f:
        f.write("\nconfig zone 'mine'\n\toption name 'wg0'\n\nconfig zone\n\toption name 'guest'\n")
    cfg = load(tmp_path, "config zone 'wg0'\n\tlist forward_to 'lan'\n\n"
                         "config zone 'wg1'\n\tlist forward_to 'guest'\n\tlist forward_to 'dmz'\n")
    result = firewall.FirewallWriter(client).sync(firewall.desired_sections(cfg))
    names = [s[1] for s in file_sections(double)]
    assert "wgagent_zone_wg0" not in names and "wgagent_fwd_wg0_to_lan" not in names
    assert "wgagent_zone_wg1" in names and "wgagent_fwd_wg1_to_guest" in names
    assert any("zone 'wg0'" in w and "already has a zone" in w for w in result.warnings)
    assert any("zone 'dmz'" in w and "wgagent_fwd_wg1_to_dmz" in w for w in result.warnings)
    assert not any("'guest'" in w for w in result.warnings)


def owned_in_file(double):
    return sorted((s[1], s[0], repr(s[2])) for s in file_sections(double) if (s[1] or "").startswith(OWNED_PREFIX))


@pytest.mark.parametrize("fail", [False, True], ids=["foreign change mid-pass", "and then a failure"])
def test_a_foreign_change_mid_pass_and_ours_stay_apart(tmp_path, double, client, fail):
    w = firewall.FirewallWriter(client)
    w.sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    before = owned_in_file(double)
    staged = []

    def somebody(method, args):  # `uci set` while wgagent writes
        if method in ("delete", "set") and not staged:
            staged.append(1)
            stage_foreign(double)

    double.uci.after_call = somebody
    if fail:
        double.uci.fail_after = 2
    smaller = load(tmp_path, "config zone 'wg0'\n\tlist forward_to 'lan'\n\toption masq '1'\n")
    first = len(double.uci.calls)
    if fail:
        with pytest.raises(ubus_mod.UbusError):
            w.sync(firewall.desired_sections(smaller))
    else:
        assert w.sync(firewall.desired_sections(smaller)).changed
    double.uci.after_call = None
    assert staged and "revert" not in [m for m, _ in double.uci.calls[first:]]  # that would drop their edit
    after = owned_in_file(double)
    assert (after == before) == fail  # ours committed, or (failed) nothing of ours anywhere
    # their change is still staged, not committed by us; their commit carries theirs alone
    assert shared_changes(double) == [["set", "lan", "input", "DROP"]] and sessions_left(double) == []
    assert next(s for s in file_sections(double) if s[1] == "lan")[2]["input"] == "ACCEPT"
    client.call("uci", "commit", {"config": "firewall"})
    assert owned_in_file(double) == after
    assert next(s for s in file_sections(double) if s[1] == "lan")[2]["input"] == "DROP"


def test_the_firewall_thread_survives_any_exception(tmp_path, double, client):
    events = []
    synced = threading.Event()

    class Log:
        def _log(self, level, event, **kw):
            events.append((level, event, kw))
            if event == "firewall_synced":
                synced.set()

        def info(self, event, **kw):
            self._log("info", event, **kw)

        def warning(self, event, **kw):
            self._log("warning", event, **kw)

        def error(self, event, **kw):
            self._log("error", event, **kw)

        def debug(self, event, **kw):
            self._log("debug", event, **kw)

    calls = []

    def connect(sock):
        calls.append(sock)
        if len(calls) == 1:
            class Broken:
                def call(self, *a, **kw):
                    raise ValueError("a bug")
            return Broken()
        return client

    sync = firewall.FirewallSync(op_config(tmp_path, "op1"), Log(), connect=connect)
    sync.BACKOFF = (0.05,)
    sync.start()
    try:
        assert synced.wait(60)
    finally:
        sync.stop()
    failed = [e for e in events if e[1] == "firewall_failed"]
    assert failed and failed[0][0] == "error" and "ValueError: a bug" in failed[0][2]["error"]
    assert any(e[1] == "firewall_traceback" and "ValueError" in e[2]["traceback"] for e in events)


def test_status_shows_leftover_sections_without_zones(tmp_path, double, client):
    from wgagent import cli

    firewall.FirewallWriter(client).sync(firewall.desired_sections(op_config(tmp_path, "op1")))
    cfg = load(tmp_path, f"config agent 'main'\n\toption ubus_socket '{double.path}'\n")
    st = cli.firewall_status(cfg)
    assert st["sections"] and {s["state"] for s in st["sections"]} == {"stale"}
    if os.geteuid() == 0:  # gather_status reads the kernel's routes and rules (netlink)
        assert cli.gather_status(cfg)["firewall"] == st


class Replies:
    """A ubus client whose uci get answers `reply` (and session create a session)."""

    def __init__(self, reply):
        self.reply = reply

    def call(self, obj, method, args, timeout=10):
        if (obj, method) == ("session", "create"):
            return {"ubus_rpc_session": "5" * 32, "timeout": args["timeout"], "expires": args["timeout"],
                    "acls": {}, "data": {}}
        return self.reply if (obj, method) == ("uci", "get") else {}


@pytest.mark.parametrize("reply", [{}, {"values": ["wgagent_zone_wg0"]}, {"values": {"wgagent_zone_wg0": "zone"}},
                                   {"values": {"lan": None}}], ids=repr)
def test_a_malformed_get_is_a_ubus_error(tmp_path, reply):
    desired = firewall.desired_sections(op_config(tmp_path, "op1"))
    with pytest.raises(ubus_mod.UbusError) as e:
        firewall.FirewallWriter(Replies(reply)).read(desired)
    assert e.value.status == ubus_mod.PARSE_ERROR


def test_status_without_ubus_and_zones_says_nothing(tmp_path, monkeypatch):
    from wgagent import cli

    monkeypatch.setattr(ubus_mod, "connect", lambda sock="", threaded=False: None)
    assert cli.firewall_status(load(tmp_path, "config agent 'main'\n")) is None


# --- transports: the GIL, reconnection


def test_the_firewall_thread_takes_the_cli_where_both_exist(tmp_path, double, monkeypatch):
    monkeypatch.syspath_prepend(PYMOD)
    sys.modules.pop("ubus", None)
    monkeypatch.setattr(ubus_mod, "_python_client", None)
    monkeypatch.setenv(ubus_mod.CLI_ENV, os.path.join(BIN, "ubus"))
    try:
        sync = firewall.FirewallSync(op_config(tmp_path, "op1"), None)
        assert sync.connect(double.path).name == "ubus-cli"  # its waits leave the GIL free
        assert ubus_mod.connect(double.path).name == "python-ubus"  # one-shot commands
    finally:
        sys.modules.pop("ubus", None)


def _longest_pause_of_another_thread(client, seconds: float) -> float:
    """Run one call in a thread (as the firewall thread does) while this thread ticks;
    the longest gap between ticks is how long the route loop would stand still."""
    t = threading.Thread(target=client.call, args=("uci", "changes", {"config": "firewall"}), kwargs={"timeout": 30})
    last, longest = time.monotonic(), 0.0
    t.start()
    while t.is_alive():
        time.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


def test_a_slow_rpcd_leaves_the_route_loop_running(tmp_path, monkeypatch):
    confdir = tmp_path / "config"
    confdir.mkdir()
    (confdir / "firewall").write_text(open(os.path.join(DATA, "firewall.base")).read())
    sock = str(tmp_path / "ubus.sock")
    # the double in a process of its own: python-ubus's call keeps this one's GIL
    proc = subprocess.Popen([sys.executable, "-m", "tests.ubus_double.server", sock, str(confdir), "--delay", "4",
                             "--savedir", str(tmp_path / "delta")],
                            cwd=os.path.dirname(HERE), stdout=subprocess.PIPE, text=True)
    monkeypatch.syspath_prepend(PYMOD)
    sys.modules.pop("ubus", None)
    monkeypatch.setattr(ubus_mod, "_python_client", None)
    monkeypatch.setenv(ubus_mod.CLI_ENV, os.path.join(BIN, "ubus"))
    try:
        assert proc.stdout.readline() == "ready\n"
        cli_client = firewall.FirewallSync(op_config(tmp_path, "op1"), None).connect(sock)
        assert cli_client.name == "ubus-cli"
        assert _longest_pause_of_another_thread(cli_client, 4) < 2.0
        # the same through python-ubus: the other thread stands still for the whole call
        py = ubus_mod.connect(sock)
        assert py.name == "python-ubus"
        sys.modules["ubus"].hold_gil = True
        assert _longest_pause_of_another_thread(py, 4) > 3.0
    finally:
        mod = sys.modules.pop("ubus", None)
        if mod is not None and mod.get_connected():
            mod.disconnect()
        proc.terminate()
        proc.wait(10)
