"""Security checks: what the daemon runs, writes and trusts.

- no config value reaches a shell: no shell anywhere in wgagent/ (read from the
  source's syntax tree), and a config with shell metacharacters in every string
  option, run end to end (the firewall written through the `ubus` command on a bus
  socket whose path is full of them too);
- UCI names and values that could inject sections or options (a newline, a quote,
  a dot, `=`) are refused when the config is loaded, and the firewall writer refuses
  them again before its first ubus call;
- the files wgagent writes (rundir.py: the idle file, the status, the pid file) are
  not world-writable and never written through a symlink: no other module opens a
  file for writing in wgagent/ (control.py answers into callers' FIFOs, O_NOFOLLOW),
  and the daemon end to end;
- a UAPI socket of another user is refused by the running daemon, whether the file
  or the listening process is another user's.

    daemon namespace (the end-to-end tests): wgx, wgy, wgz bridges with "UAPI
    sockets": wgx's file owned by nobody, wgy's root-owned but served by a process
    running as nobody, wgz root's (the control: its peer is routed)
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import yaml

from wgagent import config, firewall
from wgagent.config import ConfigError
from wgagent.firewall import FirewallWriter, Section

from .daemonctl import Agent, owned_prefixes, wait_for
from .hub import UBUS_CLI, Hub
from .test_wg_backends import LISTEN_AS_NOBODY
from .uapi_server import UapiServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.join(ROOT, "wgagent")
TABLES = {"main": 254, "local": 255, "default": 253}
KEY = "e++EP53PQnMQhMcJ0dJd9cvnGIl+gxJEx9a8EtSJuCY="


def modules():
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith(".py"):
            path = os.path.join(PACKAGE, name)
            with open(path) as f:
                yield name, ast.parse(f.read(), path)


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else \
                f.id if isinstance(f, ast.Name) else ""
            yield name, node


# --- no shell


def test_no_shell_anywhere_in_the_daemon():
    """No os.system, os.popen, os.exec*/spawn*, no shell=True, and every subprocess
    command a list (an argv), never a string a shell would split."""
    seen = []
    for module, tree in modules():
        for name, node in calls(tree):
            where = f"{module}:{node.lineno}"
            assert not (name.startswith("os.") and name[3:].startswith(("system", "popen", "exec", "spawn"))), where
            assert not any(k.arg == "shell" for k in node.keywords), f"{where}: shell="
            if name.startswith("subprocess.") and name not in ("subprocess.DEVNULL", "subprocess.PIPE"):
                assert name in ("subprocess.run", "subprocess.Popen"), f"{where}: {name}"
                cmd = node.args[0]
                assert isinstance(cmd, (ast.List, ast.Name, ast.BinOp)) and not isinstance(cmd, ast.JoinedStr), where
                if name == "subprocess.Popen":
                    # a hotplug script (notify.Hotplug): /bin/sh -c with a fixed line that
                    # sources the script by its path; the change reaches it as environment
                    # variables, never as words a shell parses
                    assert module == "notify.py" and isinstance(cmd, ast.List), where
                    assert [ast.unparse(e) for e in cmd.elts[:3]] == ["SHELL", "'-c'", "SOURCE"], where
                seen.append(where)
            assert name not in ("eval", "exec"), where
    # the ubus CLI, an argv (ubus.CliUbus.call; notify.UbusEvents: `ubus send`), and the
    # hotplug scripts; a module that runs another program joins this list once its
    # command is seen to be an argv of fixed words
    assert {where.split(":")[0] for where in seen} == {"ubus.py", "notify.py"}, seen


METACHARS = "$(touch {c}1);`touch {c}2`|touch {c}3&&touch {c}4>{c}5 '\"\\ *?~#!{{a,b}}"


def test_every_option_either_refuses_shell_metacharacters_or_keeps_them_as_text(tmp_path):
    """Option by option of the schema: only free text (ubus_socket, description)
    takes the string, verbatim; every other option refuses it at load, naming it."""
    value = METACHARS.format(c=tmp_path / "canary")
    needs = {"peer": {"interface": "wg0", "public_key": KEY}, "return_path": {"table": "main", "device": "eth0"},
             "nat": {"src_ip": "10.0.0.0/8", "device": "eth0"}}
    free = []
    for stype, options in config.SCHEMA.items():
        for option in options:
            head = {"agent": "config agent 'main'\n", "interface": ""}.get(stype, f"config {stype} 's'\n")
            others = "".join(f"\toption {k} '{v}'\n" for k, v in needs.get(stype, {}).items() if k != option)
            path = tmp_path / f"{stype}-{option}"
            path.write_text(f"config interface 'wg0'\n{head}{others}\toption {option} {uci_quote(value)}\n")
            try:
                cfg = config.load(str(path), TABLES)
            except ConfigError as e:
                assert str(e).startswith(f"{path}: section ") and f"option '{option}'" in str(e), str(e)
                continue
            free.append(f"{stype}.{option}")
            got = cfg.agent.ubus_socket if stype == "agent" else cfg.peers[0].description
            assert got == value
    assert sorted(free) == ["agent.ubus_socket", "peer.description"]
    assert not list(tmp_path.glob("canary*"))


def uci_quote(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"


@pytest.fixture
def small_hub(lab):
    from .lab import missing_requirements
    from .conftest import _cannot_run

    why = missing_requirements("uapi")
    if why:
        _cannot_run(why)
    return Hub(lab, n=20)


def test_shell_metacharacters_in_every_string_option_end_to_end(small_hub):
    """The daemon runs with them in description (logged) and in ubus_socket (the bus
    listens there: the `ubus` command gets it as one argument), and writes the firewall."""
    hub = small_hub
    canary = os.path.join(hub.lab.tmp, "canary")
    value = METACHARS.format(c=canary)
    hub.kill_bus()
    # a socket's path: < 108 bytes, no "/" inside (a shell would run it in its cwd, ours)
    hub.ubus_sock = f"{hub.lab.tmp}/$(touch canary6);`touch canary7`|&.sock"
    hub.start_bus()
    text = hub.config_text().replace("option description 'peer 0'", f"option description {uci_quote(value)}")
    assert uci_quote(hub.ubus_sock) in text and uci_quote(value) in text
    hub.set_up(range(hub.n))
    agent = hub.start(hub.agent("metachars", text=text))
    hub.converge(30)
    wait_for(lambda: agent.events("firewall_synced"), 20, what="the firewall written over the odd socket path")
    agent.stop()
    hub.check(up=set())
    assert not [n for d in (hub.lab.tmp, os.getcwd()) for n in os.listdir(d) if n.startswith("canary")], \
        "nothing ran"
    assert any("canary1" in e for e in agent.events("peer_up")), "the description logged as text"
    assert "Traceback" not in agent.log()


# --- UCI names and values


INJECTIONS = ["a\nconfig rule 'x'", "a'b", 'a"b', "a.b", "a=b", "a b", "a\0b", "wgagent_x\toption"]


@pytest.mark.parametrize("bad", INJECTIONS, ids=repr)
@pytest.mark.parametrize("where", ["zone name", "nat name", "zone network", "forward_to", "forward_from",
                                   "allow_from", "nat dest", "nat device", "return_path network"])
def test_names_that_could_inject_are_refused_at_load(tmp_path, where, bad):
    doc = {"interfaces": {"wg0": {}}, "zones": {"z": {"network": "wg0"}}}
    if where == "zone name":
        doc["zones"] = {bad: {}}
    elif where == "nat name":
        doc["nats"] = {bad: {"src_ip": "10.0.0.0/8", "device": "eth0"}}
    elif where in ("zone network", "forward_to", "forward_from", "allow_from"):
        option = {"zone network": "network"}.get(where, where)
        doc["zones"]["z"][option] = [bad] if option != "allow_from" else bad
        doc["zones"]["z"]["allow_port"] = 51820
    elif where == "nat dest":
        doc["nats"] = {"n": {"src_ip": "10.0.0.0/8", "dest": bad}}
    elif where == "nat device":
        doc["nats"] = {"n": {"src_ip": "10.0.0.0/8", "device": bad}}
    else:
        doc["return_paths"] = {"wan": {"network": bad, "table": "main"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    if where == "nat device" and bad in ("a.b",):
        return  # "wg0.5" is a VLAN device: a dot in a device name is a device name (and only ever a value)
    with pytest.raises(ConfigError) as e:
        config.load(str(path), TABLES)
    assert str(path) in str(e.value)


class Recording:
    name = "recording"

    def __init__(self):
        self.calls = []

    def call(self, obj, method, args, timeout=10):
        self.calls.append((obj, method, args))
        return {}


@pytest.mark.parametrize("section", [
    Section.make("wgagent_zone_a.b", "zone", {"name": "a"}),
    Section.make("wgagent_zone_a=b", "zone", {"name": "a"}),
    Section.make("wgagent_zone_a", "zone", {"name": "a\nconfig rule"}),
    Section.make("wgagent_zone_a", "zone", {"name": "a'"}),
    Section.make("wgagent_zone_a", "zone", {"network": ["lan", "x\ny"]}),
    Section.make("wgagent_zone_a", "zone", {"na.me": "a"}),
    Section.make("wgagent_zone_a", "zo'ne", {"name": "a"}),
], ids=lambda s: repr(s.name + " " + s.type + " " + json.dumps(s.as_dict())))
def test_the_firewall_writer_refuses_an_injecting_section_before_any_ubus_call(section):
    client = Recording()
    with pytest.raises(OSError, match="refusing to write"):
        FirewallWriter(client).sync([section])
    assert client.calls == []


def test_the_firewall_writer_writes_what_the_config_makes():
    cfg = config.load(os.path.join(HERE, "data", "s1_op2.wgagent"), {})
    client = Recording()
    with pytest.raises(OSError, match="rpcd made no session"):  # past the check: on to rpcd, which says nothing
        FirewallWriter(client).sync(firewall.desired_sections(cfg))
    assert client.calls[0][:2] == ("session", "create")


# --- files wgagent writes


def test_files_are_written_only_by_rundir_and_never_through_a_symlink():
    """Every call that creates or changes a file, in wgagent/: rundir's (its private
    directory, the temporary file opened O_EXCL|O_NOFOLLOW, the rename, the removal),
    and control.py's answers into the FIFOs that callers made (opened O_NOFOLLOW,
    never created); nothing else."""
    writing = {"os.mkdir", "os.makedirs", "os.chmod", "os.chown", "os.replace", "os.rename", "os.symlink",
               "os.link", "os.unlink", "os.remove", "tempfile.mkstemp", "tempfile.NamedTemporaryFile",
               "shutil.copy", "shutil.move", "os.mkfifo"}
    found = []
    for module, tree in modules():
        for name, node in calls(tree):
            if name in writing:
                found.append(f"{module}:{name}")
            if name in ("open", "os.fdopen") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and set(str(node.args[1].value)) & set("wax+"):
                found.append(f"{module}:{name}({node.args[1].value})")
            if name == "os.open":
                flags = ast.unparse(node.args[1])
                if any(f in flags for f in ("O_WRONLY", "O_RDWR", "O_CREAT")):
                    assert "O_NOFOLLOW" in flags, f"{module}:{node.lineno}: {flags}"
                    found.append(f"{module}:os.open" + ("(O_CREAT|O_EXCL)" if "O_CREAT" in flags else ""))
                    if "O_CREAT" in flags:
                        assert "O_EXCL" in flags, f"{module}:{node.lineno}: {flags}"
    assert sorted(found) == sorted(["rundir.py:os.open(O_CREAT|O_EXCL)", "rundir.py:os.fdopen(w)",
                                    "rundir.py:os.replace", "rundir.py:os.unlink", "rundir.py:os.unlink",
                                    "rundir.py:os.mkdir", "rundir.py:os.chmod", "control.py:os.open"]), found


def test_the_daemons_idle_file_is_private_and_never_written_through_a_symlink(small_hub, tmp_path):
    """End to end: peers fall idle (their rx stops, handshakes go on), so the daemon
    writes its idle file: mode 0600 in a 0700 directory. Then a run whose run directory
    is a symlink to somewhere else: refused, nothing written there."""
    hub = small_hub
    hub.mode = "real"
    hub.set_up(range(hub.n), rekey=2, keepalive=10 ** 9)  # handshaking, never receiving
    text = hub.config_text().replace("config interface 'wg0'\n", "config interface 'wg0'\n\toption idle_timeout '2'\n")
    run = tmp_path / "run"
    agent = hub.start(hub.agent("idle", text=text), env={"WGAGENT_RUN_DIR": str(run)})
    def idle_file():
        found = [p for p in run.iterdir() if p.name.startswith("idle-")] if run.is_dir() else []
        return found and len(json.loads(found[0].read_text())["idle"]) == hub.n and found[0]

    idle = wait_for(idle_file, 20, what="the idle file naming every peer")
    assert stat.S_IMODE(run.lstat().st_mode) == 0o700
    mode = stat.S_IMODE(idle.lstat().st_mode)
    assert mode & 0o002 == 0 and mode & 0o077 == 0, oct(mode)
    agent.stop()
    assert not idle.exists(), "removed on stop"
    # the run directory a symlink (somebody else's doing): the daemon refuses it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "linked"
    os.symlink(elsewhere, link)
    agent = hub.start(hub.agent("idle2", text=text), env={"WGAGENT_RUN_DIR": str(link)})
    wait_for(lambda: agent.events("state_write_failed"), 20, what="the refusal")
    agent.stop()
    assert list(elsewhere.iterdir()) == []
    assert "Traceback" not in agent.log()


# --- UAPI sockets of another user


def test_the_daemon_refuses_uapi_sockets_of_another_user(lab, tmp_path):
    from .conftest import _cannot_run
    from .lab import missing_requirements

    why = missing_requirements("uapi")
    if why:
        _cannot_run(why)
    ns = lab.netns("u")
    for name in ("wgx", "wgy", "wgz"):
        ns.ip("link", "add", name, "type", "bridge")
        ns.ip("link", "set", name, "up")

    def answer(ip: str) -> bytes:  # a peer that handshook a second ago: routed if believed
        return (f"public_key={'58' * 32}\nlast_handshake_time_sec={int(time.time()) - 1}\n"
                f"last_handshake_time_nsec=0\ntx_bytes=1\nrx_bytes=1\npersistent_keepalive_interval=0\n"
                f"allowed_ip={ip}/32\nerrno=0\n\n").encode()

    owned_by_nobody = UapiServer(ns.rundir, answer("10.99.1.1"), name="wgx")
    os.chown(owned_by_nobody.path, 65534, 65534)
    served_by_nobody = subprocess.Popen([sys.executable, "-c", LISTEN_AS_NOBODY, os.path.join(ns.rundir, "wgy.sock"),
                                         answer("10.99.2.1").decode()], stdout=subprocess.PIPE, text=True)
    lab.procs.append(served_by_nobody)
    assert served_by_nobody.stdout.readline() == "listening\n"
    ours = UapiServer(ns.rundir, answer("10.99.3.1"), name="wgz")
    try:
        conf = "config agent 'main'\n\toption poll_interval '0.5'\n" + "".join(
            f"config interface '{n}'\n" for n in ("wgx", "wgy", "wgz"))
        agent = Agent(lab, ns, conf).start(env={"WGAGENT_UBUS_CLI": UBUS_CLI})
        wait_for(lambda: owned_prefixes(ns) == {"10.99.3.1"}, 10, what="the trusted socket's peer routed")
        time.sleep(1.5)
        assert owned_prefixes(ns) == {"10.99.3.1"}, "nothing from the sockets of another user"
        said = agent.events("interface_unavailable")
        assert any("iface=wgx" in e and "owned by uid 65534, not root" in e for e in said), said
        assert any("iface=wgy" in e and "served by uid 65534" in e for e in said), said
        assert owned_by_nobody.requests == 0, "never asked"
        agent.stop()
    finally:
        owned_by_nobody.close()
        ours.close()
