"""luci-app-wgagent: the node tests of its views (tests/luci, against a stand-in of
LuCI's client API), and what needs config.py: the settings form against
config.SCHEMA (every option there, with its default), each field's verdict against
config.py's on a corpus of values, and the form's edits, sent to the rpcd double
as LuCI sends them, loading in wgagent.

Needs node (Debian's nodejs; `make test` installs it): without it these tests skip,
and fail under WGAGENT_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from wgagent import config as config_mod

from .conftest import _cannot_run
from .ubus_double.rpcd import RpcdUci

HERE = os.path.dirname(os.path.abspath(__file__))
LUCI = os.path.join(HERE, "luci")
DATA = os.path.join(HERE, "data", "luci")
NODE = shutil.which("node")

# the rt_tables the harness's pages see (rpcd's file object in the stand-in) and
# config.read_rt_tables reads from a copy on disk: lines that int(x, 0) reads, and
# lines it does not
RT_TABLES = {
    "/etc/iproute2/rt_tables": "#\n# reserved values\n#\n255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n"
                               "100 wan\n0x12c hex # a comment\n010 leadingzero\n1_000 under\n-5 minus\n"
                               "7 main\n200\njunk line here\n",
    "/etc/iproute2/rt_tables.d/s2s.conf": "200 via_s2s\n100 wan_again\n",
    "/etc/iproute2/rt_tables.d/README": "201 notconf\n",
    "/usr/share/iproute2/rt_tables": "300 vpn\n301 hex\n",
}


@pytest.fixture(scope="module")
def node():
    if NODE is None:
        _cannot_run("needs node (apt-get install nodejs)")
    return NODE


def harness(node, request: dict) -> object:
    r = subprocess.run([node, os.path.join(LUCI, "harness.js")], input=json.dumps(request),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def uci_get(name: str) -> dict:
    """rpcd's `uci get` of tests/data/luci/<name>, as the double answers it."""
    with tempfile.TemporaryDirectory() as tmp:
        return RpcdUci(DATA, tmp).call("get", {"config": name})


@pytest.fixture(scope="module")
def values():
    return uci_get("wgagent_s1_op2")["values"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """config.read_rt_tables of RT_TABLES written out"""
    root = tmp_path_factory.mktemp("iproute2")
    for path, text in RT_TABLES.items():
        os.makedirs(os.path.dirname(str(root) + path), exist_ok=True)
        with open(str(root) + path, "w") as f:
            f.write(text)
    return config_mod.read_rt_tables(tuple(str(root) + p for p in ("/etc/iproute2/rt_tables",
                                                                     "/usr/share/iproute2/rt_tables")))


def test_node_tests_of_the_views_pass(node):
    # the files by name: node 18 (Debian 12's) searches a directory argument, node 21+
    # takes globs instead
    files = sorted(glob.glob(os.path.join(LUCI, "*.test.js")))
    assert len(files) == 4, files
    r = subprocess.run([node, "--test", *files], capture_output=True, text=True, timeout=120)
    summary = [line for line in r.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok"))]
    assert r.returncode == 0, "\n".join(summary) + "\n" + r.stdout[-6000:] + r.stderr[-2000:]
    assert "# fail 0" in summary, summary


def test_uci_get_fixtures_are_what_the_rpcd_double_answers():
    # the node tests start from these files: they must be rpcd's answer for the configs
    for router in ("op1", "op2"):
        with open(os.path.join(DATA, f"uci_get_s1_{router}.json")) as f:
            assert json.load(f) == uci_get(f"wgagent_s1_{router}"), router


def test_recorded_configs_load_in_wgagent():
    for router in ("op1", "op2"):
        cfg = config_mod.load(os.path.join(DATA, f"wgagent_s1_{router}"))
        assert cfg.warnings == () and cfg.interface("wg0") is not None


# --- the form against config.SCHEMA

# dataclass field -> option, where the names differ
FIELD_OPTION = {("return_path", "gateways"): "gateway", ("zone", "networks"): "network"}
MODELS = {"agent": config_mod.AgentConfig, "interface": config_mod.InterfaceConfig, "peer": config_mod.PeerConfig,
          "return_path": config_mod.ReturnPathConfig, "zone": config_mod.ZoneConfig, "nat": config_mod.NatConfig}
CHOICES = {("agent", "log_level"): config_mod.LOG_LEVELS, ("zone", "input"): config_mod.POLICIES,
           ("zone", "output"): config_mod.POLICIES, ("zone", "forward"): config_mod.POLICIES,
           ("nat", "target"): config_mod.NAT_TARGETS, ("nat", "family"): ("ipv4", "ipv6", "any")}


@pytest.fixture(scope="module")
def schema(node, values):
    return harness(node, {"cmd": "schema", "values": values, "files": RT_TABLES})


def test_form_has_every_section_type_and_option_of_config_schema(schema):
    assert set(schema) == set(config_mod.SCHEMA)
    for stype, options in config_mod.SCHEMA.items():
        assert set(schema[stype]["options"]) == set(options), stype
    assert schema["agent"]["class"] == "CBI.TypedSection" and schema["agent"]["anonymous"]
    for stype in ("interface", "peer", "return_path", "zone", "nat"):
        s = schema[stype]
        assert (s["class"], s["anonymous"], s["addremove"]) == ("CBI.GridSection", False, True), stype


def test_form_defaults_and_choices_are_config_defaults(schema, tables):
    booleans = choices = 0
    for stype, model in MODELS.items():
        for f in dataclasses.fields(model):
            if f.name == "name":
                continue
            option = FIELD_OPTION.get((stype, f.name), f.name)
            o = schema[stype]["options"][option]
            if o["class"] == "CBI.FlagValue":
                # LuCI removes a Flag left at its default: its default must be wgagent's
                assert o["default"] == ("1" if f.default else "0"), (stype, option)
                booleans += 1
            elif o["class"] == "CBI.ListValue":
                assert tuple(o["choices"]) == CHOICES[stype, option], (stype, option)
                assert o["default"] == f.default, (stype, option)
                choices += 1
            elif f.default is dataclasses.MISSING:
                assert o["rmempty"] is False, (stype, option)  # config.REQUIRED
            elif o["placeholder"] is not None and isinstance(f.default, (int, float)):
                # the placeholder shows the value an empty field means
                if option in ("table", "source_table"):
                    assert tables[o["placeholder"]] == f.default, (stype, option)
                else:
                    assert type(f.default)(o["placeholder"]) == f.default, (stype, option)
    assert (booleans, choices) == (8, 6)
    for stype, required in config_mod.REQUIRED.items():
        for option in required:
            assert schema[stype]["options"][option]["rmempty"] is False, (stype, option)


def test_table_choices_are_config_read_rt_tables(schema, tables):
    o = schema["interface"]["options"]["table"]
    offered = {name: int(label.rsplit("(", 1)[1].rstrip(")")) for name, label in zip(o["choices"], o["labels"])}
    assert offered == tables


# --- each field's verdict against config.py's

KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
NUMBERS = ["0", "1", "2", "0.5", "0.0", "-0", "-1", "3600", "3600.0", "3600.5", "3601", "86400", "86401", "31765",
           "31766", "65535", "65536", "4294967295", "4294967296", "080", "007", "1e3", ".5", "5.", "+5", " 5", "5 ",
           "1_0", "nan", "inf", "abc", "0x10", "\u0663", "1.5"]
TABLES = ["main", "local", "default", "wan", "via_s2s", "vpn", "hex", "minus", "unspec", "under", "nosuch", "100", "0",
          "007", "4294967295", "4294967296", " main", "main ", "-1", "1.5", "\u0663", "\u00b2", "0x10"]
IFNAMES = ["wg0", "wg_s2s", "eth0.2", "pppoe-wan", "a@b", "x" * 15, "x" * 16, ".", "..", "...", "wg 0", "wg/0", "wg:0",
           "wg+", "wg#1", "wg%1", "wg\u00e4", "-", "@", "wg0\n"]
UCINAMES = ["lan", "wg_s2s", "A1", "_", "wg-0", "wg.0", "wg 0", "\u00e4", "wan\n"]
KEYS = [KEY, KEY[:42] + "h=", KEY[:42] + "A=", KEY[:42] + "=", KEY + "=", KEY[1:], KEY[:42] + "==", " " + KEY,
        KEY + " ", KEY.replace("x", "-"), KEY.replace("=", "A"), "A" * 43 + "=", "/" * 42 + "w=", "+" * 42 + "8="]
ADDRESSES = ["1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1",
             " 1.2.3.4", "::", "::1", "1::", "fe80::1", "2001:db8::1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::",
             "::ffff:1.2.3.4", "::ffff:01.2.3.4", "1::2::3", ":1::", "::1:", "1:2:3:4:5:6:7", "12345::", "fe80::1%wan",
             "1.2.3.4/32", "g::1", "ABCD::EF"]
PREFIXES = ["10.0.31.0/24", "10.0.31.5/32", "10.0.31.5/24", "0.0.0.0/0", "10.0.31.0/33", "10.0.31.0/024",
            "10.0.31.0/255.255.255.0", "01.0.0.0/8", "2001:db8::/32", "2001:db8::1/64", "::/0", "::/129",
            "10.0.31.0/", "/24", "10.0.31.0/24/1"] + ADDRESSES
CHOICE_VALUES = ["debug", "info", "warning", "error", "INFO", "ACCEPT", "REJECT", "DROP", "accept", "MASQUERADE",
                 "SNAT", "ipv4", "ipv6", "any", "IPv4"]

# section type, section, option -> values (context: the other fields, so that the
# checks spanning options pass and only the value's own validity is judged)
CORPUS = [
    ("agent", "main", "poll_interval", NUMBERS, {}),
    ("agent", "main", "handshake_timeout", NUMBERS, {}),
    ("agent", "main", "rule_priority", NUMBERS, {}),
    ("agent", "main", "ubus_socket", ["/var/run/ubus/ubus.sock", "x y", "\u00e4"], {}),
    ("interface", "wg0", "table", TABLES, {}),
    ("interface", "wg0", "source_table", TABLES, {}),
    ("interface", "wg0", "metric", NUMBERS, {}),
    ("interface", "wg0", "idle_timeout", NUMBERS, {}),
    ("interface", "wg0", "yield_to", ["bird", "babel", "12", "0", "255", "256", "-1", "none", "BIRD", "birb",
                                      "bird babel", "1.5", "\u0663"], {}),
    ("peer", "laptop", "public_key", KEYS, {}),
    ("peer", "laptop", "interface", ["wg0", "wg1", "WG0"], {}),
    ("peer", "laptop", "description", ["laptop", "a b", "\u00e4 '\""], {}),
    ("peer", "laptop", "idle_timeout", NUMBERS, {}),
    ("peer", "laptop", "source_table", TABLES, {}),
    ("return_path", "wan", "device", IFNAMES, {"network": ""}),
    ("return_path", "wan", "network", UCINAMES, {"device": ""}),
    ("return_path", "wan", "table", TABLES, {}),
    ("return_path", "wan", "gateway", ADDRESSES, {}),
    ("zone", "s2s", "network", UCINAMES, {}),
    ("zone", "s2s", "forward_to", UCINAMES, {}),
    ("zone", "s2s", "forward_from", UCINAMES, {}),
    ("zone", "s2s", "allow_port", NUMBERS, {}),
    ("zone", "s2s", "allow_from", UCINAMES, {}),
    ("nat", "pool_via_s2s", "src_ip", PREFIXES, {"family": "any"}),
    ("nat", "pool_via_s2s", "device", IFNAMES, {"dest": ""}),
    ("nat", "pool_via_s2s", "dest", UCINAMES, {"device": ""}),
    ("nat", "pool_via_s2s", "snat_ip", ADDRESSES, {"target": "SNAT", "family": "any"}),
]
CHOICE_OPTIONS = [("agent", "main", "log_level"), ("zone", "s2s", "input"), ("zone", "s2s", "output"),
                  ("zone", "s2s", "forward"), ("nat", "pool_via_s2s", "target"), ("nat", "pool_via_s2s", "family")]

# where the form refuses what wgagent would take, on purpose: none of these is a
# spelling wgagent's own docs or `uci show` give (see validate.js's comment)
STRICTER = {
    "numbers": {"1e3", ".5", "5.", "+5", " 5", "5 ", "1_0", "\u0663"},  # Python's int()/float() spellings
    "tables": {" main", "main ", "\u0663"},  # stripped, a non-ASCII digit
    "keys": {" " + KEY, KEY + " "},  # stripped
    # a scope id; a '::' for the last group alone, which LuCI's ipaddr datatype refuses
    "addresses": {"fe80::1%wan", "1:2:3:4:5:6:7::"},
    # and a netmask
    "prefixes": {"10.0.31.0/255.255.255.0", "fe80::1%wan"},
    "text": set(),
}


def _kind(option: str, values: list) -> str:
    if values is NUMBERS:
        return "numbers"
    if values is TABLES:
        return "tables"
    if values is KEYS:
        return "keys"
    if values is ADDRESSES:
        return "addresses"
    if values is PREFIXES:
        return "prefixes"
    return "text"


# what config.build adds to an option's converter (a check across sections), for
# the corpus' sections
ACROSS = {("peer", "interface"): lambda v: v == "wg0"}  # an interface section of that name


def _config_accepts(stype: str, option: str, raw, tables: dict) -> bool:
    try:
        config_mod.SCHEMA[stype][option](raw, tables)
    except ValueError:
        return False
    return ACROSS.get((stype, option), lambda v: True)(raw)


def test_each_field_refuses_what_config_refuses(node, values, schema, tables):
    cases, where = [], []
    for stype, sid, option, vals, context in CORPUS:
        is_list = schema[stype]["options"][option]["class"] == "CBI.DynamicList"
        for v in vals:
            cases.append({"type": stype, "sid": sid, "option": option, "value": [v] if is_list else v,
                          "context": context})
            where.append((stype, option, v, [v] if is_list else v, _kind(option, vals)))
    answers = harness(node, {"cmd": "validate", "values": values, "files": RT_TABLES, "cases": cases})
    unsound, stricter, allowed = [], [], {k: set() for k in STRICTER}
    for (stype, option, v, raw, kind), a in zip(where, answers):
        py = _config_accepts(stype, option, raw, tables)
        if a["valid"] and not py:
            unsound.append((stype, option, v))
        elif py and not a["valid"]:
            if v in STRICTER[kind]:
                allowed[kind].add(v)
            else:
                stricter.append((stype, option, v, a["error"]))
    assert unsound == [], "the form lets through what wgagent refuses: %r" % unsound
    assert stricter == [], "the form refuses what wgagent takes, beyond STRICTER: %r" % stricter
    assert allowed == STRICTER, "STRICTER lists a value the form takes now"
    assert len(answers) > 400


def test_choice_fields_offer_exactly_config_choices(schema):
    for stype, sid, option in CHOICE_OPTIONS:
        o = schema[stype]["options"][option]
        for v in CHOICE_VALUES:
            assert (v in o["choices"]) == _config_accepts(stype, option, v, {}), (stype, option, v)


# --- edits, as LuCI sends them, loading in wgagent

def test_form_edits_sent_to_rpcd_load_in_wgagent(node, values, tables, tmp_path):
    steps = [
        {"op": "set", "sid": "main", "option": "poll_interval", "value": "1"},
        {"op": "set", "sid": "main", "option": "enabled", "value": False},
        {"op": "edit", "type": "interface", "sid": "wg0", "values": {"table": "via_s2s", "source_table": "hex"}},
        {"op": "add", "type": "peer", "sid": "tablet",
         "values": {"interface": "wg0", "public_key": KEY, "description": "tablet", "route": False}},
        {"op": "remove", "type": "peer", "sid": "laptop"},
        {"op": "edit", "type": "return_path", "sid": "wan", "values": {"gateway": ["203.0.113.254", "2001:db8::1"]}},
        {"op": "edit", "type": "nat", "sid": "pool_via_s2s", "values": {"target": "SNAT", "snat_ip": "10.0.32.1"}},
        {"op": "add", "type": "zone", "sid": "guests",
         "values": {"network": ["wg1", "wg2"], "forward_to": ["wan"], "input": "REJECT", "mtu_fix": False}},
        {"op": "apply"},
    ]
    out = harness(node, {"cmd": "edit", "values": values, "files": RT_TABLES, "steps": steps})
    assert out["error"] is None, out
    assert [c[0] for c in out["commits"]] == ["apply", "confirm"]
    # replay what LuCI sent on the rpcd double, commit, and load the file
    confdir = tmp_path / "config"
    confdir.mkdir()
    shutil.copy(os.path.join(DATA, "wgagent_s1_op2"), confdir / "wgagent")
    rpcd = RpcdUci(str(confdir), str(tmp_path / "delta"))
    for method, args in out["calls"]:
        # uhttpd-mod-ubus makes blobmsg of the JSON-RPC params (libubox
        # blobmsg_add_json_element): a null is an attribute of no type, which
        # rpcd's policies skip, so uci.js' `options: null` (delete the section) and
        # `name: null` (anonymous add) arrive as absent
        rpcd.call(method, {k: v for k, v in args.items() if v is not None})
    rpcd.call("commit", {"config": "wgagent"})
    cfg = config_mod.load(str(confdir / "wgagent"), tables)
    assert cfg.warnings == ()
    assert cfg.agent.poll_interval == 1.0 and cfg.agent.enabled is False and cfg.agent.log_level == "info"
    wg0 = cfg.interface("wg0")
    assert (wg0.table, wg0.source_table, wg0.idle_timeout) == (200, 300, 3.0)
    assert [p.name for p in cfg.peers] == ["phone", "tablet"]
    tablet = cfg.peer("wg0", KEY)
    assert (tablet.description, tablet.route) == ("tablet", False)
    assert cfg.return_paths[0].gateways == ("203.0.113.254", "2001:db8::1")
    nat = cfg.nats[0]
    assert (nat.target, nat.snat_ip, nat.device) == ("SNAT", "10.0.32.1", "wg_s2s")
    guests = next(z for z in cfg.zones if z.name == "guests")
    assert (guests.networks, guests.forward_to, guests.input, guests.mtu_fix) == (("wg1", "wg2"), ("wan",), "REJECT",
                                                                                     False)


def test_form_refuses_an_edit_wgagent_would_refuse(node, values):
    for steps, message in [
        ([{"op": "add", "type": "zone", "sid": "wg0", "values": {}}], "already the interface section's"),
        ([{"op": "edit", "type": "nat", "sid": "pool_via_s2s", "values": {"dest": "wan"}}], "exactly one"),
        ([{"op": "edit", "type": "interface", "sid": "wg0", "values": {"table": "nosuch"}}], "unknown table name"),
    ]:
        out = harness(node, {"cmd": "edit", "values": values, "files": RT_TABLES, "steps": steps})
        assert out["error"] and message in out["error"], out
        assert out["calls"] == []
