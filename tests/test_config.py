"""Config loading and validation: every error names file, section, option and value."""

import os
import textwrap

import pytest

from wgagent import config
from wgagent.config import ConfigError

KEY = "e++EP53PQnMQhMcJ0dJd9cvnGIl+gxJEx9a8EtSJuCY="
# the same 32 bytes with padding bits set in the last character ('Y' is 24, 'Z' 25):
# what wg refuses and the kernel never reports
KEY_PADDED = [KEY[:42] + c + "=" for c in "Zab"]
TABLES = {"main": 254, "local": 255, "default": 253, "wan": 100}


def load_text(tmp_path, body: str, name: str = "wgagent"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return config.load(str(path), TABLES)


def test_defaults_and_full_uci(tmp_path):
    cfg = load_text(tmp_path, f"""
        config agent 'main'
            option enabled '1'
            option log_level 'debug'
            option poll_interval '0.5'
            option handshake_timeout '120'
            option keep_routes_on_stop 'yes'

        config interface 'wg0'
            option table 'wan'
            option metric '10'
            option route_default '1'
            option idle_timeout '5'

        config interface 'wg1'

        config peer 'phone'
            option interface 'wg0'
            option public_key '{KEY}'
            option description 'Bob''s phone'
            option route '0'
            option idle_timeout '7'
    """)
    assert cfg.agent == config.AgentConfig(True, "debug", 0.5, 120.0, True)
    assert cfg.interface("wg0") == config.InterfaceConfig("wg0", 100, 10, True, 5.0)
    assert cfg.interface("wg1") == config.InterfaceConfig("wg1")
    assert cfg.peer("wg0", KEY) == config.PeerConfig("phone", "wg0", KEY, "Bobs phone", False, 7.0)
    assert cfg.warnings == ()


def test_yaml_maps_to_the_same_model(tmp_path):
    cfg = load_text(tmp_path, f"""
        agent:
          poll_interval: 0.5
          keep_routes_on_stop: true
        interfaces:
          wg0:
            table: 100
            metric: 10
            idle_timeout: 5
          wg1: {{}}
        peers:
          phone:
            interface: wg0
            public_key: "{KEY}"
    """, "config.yaml")
    assert cfg.agent.poll_interval == 0.5 and cfg.agent.keep_routes_on_stop is True
    assert cfg.interface("wg0") == config.InterfaceConfig("wg0", 100, 10, False, 5.0)
    assert cfg.interface("wg1") == config.InterfaceConfig("wg1")
    assert cfg.peer("wg0", KEY).name == "phone"


def test_unknown_options_and_sections_are_warned_about(tmp_path):
    cfg = load_text(tmp_path, """
        config interface 'wg0'
            option tabel 'main'
        config frobnicator 'x'
    """)
    assert any("unknown option 'tabel'" in w and "section 'wg0'" in w for w in cfg.warnings)
    assert any("unknown section type 'frobnicator'" in w for w in cfg.warnings)


BAD = [
    # (section type + name, option, bad value, part of the message)
    ("agent 'main'", "enabled", "maybe", "boolean"),
    ("agent 'main'", "log_level", "loud", "one of debug, info, warning, error"),
    ("agent 'main'", "poll_interval", "0", "out of range"),
    ("agent 'main'", "poll_interval", "-1", "out of range"),
    ("agent 'main'", "poll_interval", "fast", "expected a number"),
    ("agent 'main'", "poll_interval", "nan", "finite"),
    ("agent 'main'", "handshake_timeout", "0", "out of range"),
    ("agent 'main'", "handshake_timeout", "1e9", "out of range"),
    ("agent 'main'", "keep_routes_on_stop", "2", "boolean"),
    ("interface 'wg0'", "table", "nosuchtable", "unknown table name"),
    ("interface 'wg0'", "table", "0", "out of range"),
    ("interface 'wg0'", "table", "4294967296", "out of range"),
    ("interface 'wg0'", "metric", "-1", "out of range"),
    ("interface 'wg0'", "metric", "1.5", "integer"),
    ("interface 'wg0'", "metric", "4294967296", "out of range"),
    ("interface 'wg0'", "route_default", "sometimes", "boolean"),
    ("interface 'wg0'", "idle_timeout", "-5", "out of range"),
    ("interface 'wg0'", "idle_timeout", "soon", "expected a number"),
]


@pytest.mark.parametrize("section,option,value,message", BAD, ids=[f"{b[1]}={b[2]}" for b in BAD])
def test_bad_value_names_file_section_option_value(tmp_path, section, option, value, message):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, f"config {section}\n\toption {option} '{value}'\n")
    text = str(err.value)
    label = section.split("'")[1]
    assert str(tmp_path / "wgagent") in text
    assert f"section '{label}'" in text and f"option '{option}'" in text and repr(value) in text
    assert message in text
    assert (err.value.section, err.value.option, err.value.value) == (label, option, value)


def test_list_where_a_single_value_is_expected(tmp_path):
    with pytest.raises(ConfigError, match="option 'metric'.*single value"):
        load_text(tmp_path, "config interface 'wg0'\n\tlist metric '1'\n\tlist metric '2'\n")


@pytest.mark.parametrize("body,fragment", [
    (f"config peer 'p'\n\toption public_key '{KEY}'\n", "option 'interface'.*required"),
    ("config interface 'wg0'\nconfig peer 'p'\n\toption interface 'wg0'\n", "option 'public_key'.*required"),
    ("config interface 'wg0'\nconfig peer 'p'\n\toption interface 'wg0'\n\toption public_key 'abc'\n",
     "option 'public_key', value 'abc'.*not a WireGuard key"),
    (f"config interface 'wg0'\nconfig peer 'p'\n\toption interface 'wg9'\n\toption public_key '{KEY}'\n",
     "section 'p', option 'interface', value 'wg9'.*no 'interface' section"),
    (f"config interface 'wg0'\nconfig peer 'p'\n\toption interface 'wg0'\n\toption public_key '{KEY}'\n"
     f"config peer 'q'\n\toption interface 'wg0'\n\toption public_key '{KEY}'\n",
     "section 'q', option 'public_key'.*already configured in section 'p'"),
    (f"config interface 'wg0'\nconfig peer 'p'\n\toption interface 'wg/0'\n\toption public_key '{KEY}'\n",
     "option 'interface', value 'wg/0'.*interface name"),
    ("config interface 'averyveryverylongname'\n", "section 'averyveryverylongname'.*interface name"),
    ("config agent 'a'\nconfig agent 'b'\n", "section 'b'.*only one 'agent'"),
    ("config interface 'wg0'\n\toption table 'main\n", "line 2"),
    ("option x 'y'\n", "line 1: option found before the first section"),
])
def test_structural_errors(tmp_path, body, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_text(tmp_path, body)


@pytest.mark.parametrize("body,fragment", [
    ("agent: [1, 2]\n", "section 'agent'.*mapping of options"),
    ("interfaces:\n  wg0:\n    table: {a: 1}\n", "section 'wg0', option 'table'.*expected a string"),
    ("routers: {}\n", "section 'routers'.*unknown top-level key"),
    ("- a\n", "mapping at the top level"),
    ("agent: {poll_interval: [\n", "YAML syntax"),
    ("interfaces:\n  wg0:\n    metric: -3\n", "section 'wg0', option 'metric', value '-3'"),
    ("interfaces:\n  wg0:\n    route_default: 7\n", "option 'route_default', value '7'.*boolean"),
    ("interfaces: [wg0, wg1]\n", "section 'interfaces'.*expected a mapping"),
    ("interfaces:\n  wg0:\n    metric: null\n", "section 'wg0', option 'metric', value 'null'.*expected a string"),
    ("interfaces:\n  wg0:\n    metric: [1, true]\n", "option 'metric'.*expected a string"),
])
def test_yaml_errors(tmp_path, body, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_text(tmp_path, body, "c.yaml")


def test_statements_that_libuci_drops_after_a_semicolon_are_warned_about(tmp_path):
    # libuci (and so the init script and LuCI) never sees the metric: neither does
    # wgagent, but it says so
    cfg = load_text(tmp_path, "config interface 'wg0'\n\toption table main; option metric '5'\n")
    assert cfg.interface("wg0") == config.InterfaceConfig("wg0", 254, 0)
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith(f"{tmp_path / 'wgagent'}:2: ignored after ';': \"option metric '5'\"")


@pytest.mark.parametrize("bad", KEY_PADDED)
def test_a_key_with_padding_bits_set_is_refused_in_uci_and_yaml(tmp_path, bad):
    import base64
    assert base64.b64decode(bad) == base64.b64decode(KEY)  # Python alone would take it
    uci_text = f"config interface 'wg0'\nconfig peer 'phone'\n\toption interface 'wg0'\n\toption public_key '{bad}'\n"
    yaml_text = f"interfaces:\n  wg0: {{}}\npeers:\n  phone:\n    interface: wg0\n    public_key: '{bad}'\n"
    for name, body in (("wgagent", uci_text), ("c.yaml", yaml_text)):
        with pytest.raises(ConfigError) as err:
            load_text(tmp_path, body, name)
        assert (err.value.path, err.value.section, err.value.option, err.value.value) == (
            str(tmp_path / name), "phone", "public_key", bad)
        assert f"section 'phone', option 'public_key', value '{bad}'" in str(err.value)
        assert "padding bits" in str(err.value) and f"it would read '{KEY}'" in str(err.value)


def test_key_check_agrees_with_wg(tmp_path):
    # wg pubkey reads its input with key_from_base64, as `wg set ... peer` does
    import shutil
    import subprocess
    if shutil.which("wg") is None:
        pytest.skip("needs wg (wireguard-tools)")
    for key in [KEY] + KEY_PADDED:
        wg_ok = subprocess.run(["wg", "pubkey"], input=key + "\n", capture_output=True, text=True).returncode == 0
        try:
            config.wg_key(key)
            ours = True
        except ValueError:
            ours = False
        assert ours == wg_ok, key


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "absent"), TABLES)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_only_a_regular_file_is_read(tmp_path, kind):
    """A FIFO in the config's place blocked open() until somebody wrote to it (a daemon
    reloading hung for good); /dev/zero was read into memory without end."""
    path = tmp_path / "wgagent"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    else:
        path.mkdir()
    with pytest.raises(ConfigError, match=f"^{path}: (not a regular file|cannot read: Is a directory)$"):
        config.load(str(path), TABLES)


def test_a_file_too_large_to_be_a_config_is_not_read_whole(tmp_path):
    path = tmp_path / "wgagent"
    path.write_text("#" * (config.MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        config.load(str(path), TABLES)


def test_crlf_lines_read_as_before(tmp_path):
    cfg = load_text(tmp_path, "config agent 'main'\r\n\toption poll_interval '3'\r\n")
    assert cfg.agent.poll_interval == 3


@pytest.mark.parametrize("body", ["", "\n\n", "# nothing but a comment\n"])
def test_an_empty_file_is_no_config_only_when_the_caller_says_so(tmp_path, body):
    path = tmp_path / "wgagent"
    path.write_text(body)
    assert config.load(str(path), TABLES).interfaces == ()  # at start: nothing to do
    with pytest.raises(ConfigError, match="no sections"):
        config.load(str(path), TABLES, allow_empty=False)  # a reload: keep the running config


def test_rt_tables_names(tmp_path):
    rt = tmp_path / "rt_tables"
    rt.write_text("# comment\n255 local\n100\twan  # the uplink\nbad line\n0x20 hex\n")
    (tmp_path / "rt_tables.d").mkdir()
    (tmp_path / "rt_tables.d" / "vpn.conf").write_text("200 vpn\n")
    tables = config.read_rt_tables((str(rt),))
    assert tables["wan"] == 100 and tables["vpn"] == 200 and tables["hex"] == 32 and tables["main"] == 254
    assert config.table_name(100, tables) == "wan" and config.table_name(7, tables) == "7"


def test_rules_options(tmp_path):
    cfg = load_text(tmp_path, f"""
        config agent 'main'
            option rule_priority '7000'
        config interface 'wg0'
            option source_table 'wan'
        config peer 'phone'
            option interface 'wg0'
            option public_key '{KEY}'
            option source_table '300'
        config return_path 'up'
            option network 'wan'
            option table 'wan'
            list gateway '198.51.100.1'
            list gateway '2001:db8::1'
        config return_path 'up2'
            option device 'eth1'
            option table '101'
    """)
    assert cfg.agent.rule_priority == 7000
    assert cfg.interface("wg0").source_table == 100 and cfg.peer("wg0", KEY).source_table == 300
    assert cfg.return_paths == (config.ReturnPathConfig("up", 100, "", "wan", ("198.51.100.1", "2001:db8::1")),
                                config.ReturnPathConfig("up2", 101, "eth1"))


@pytest.mark.parametrize("body,fragment", [
    ("config return_path 'w'\n\toption device 'eth0'\n", "section 'w', option 'table'.*required"),
    ("config return_path 'w'\n\toption table '100'\n", "section 'w', option 'device'.*exactly one of"),
    ("config return_path 'w'\n\toption table '100'\n\toption device 'eth0'\n\toption network 'wan'\n",
     "section 'w', option 'device', value 'eth0'.*exactly one"),
    ("config return_path 'w'\n\toption table '100'\n\toption network 'wan-1'\n",
     "option 'network', value 'wan-1'.*netifd interface name"),
    ("config return_path 'w'\n\toption table '100'\n\toption device 'eth0'\n\toption gateway '1.2.3'\n",
     "option 'gateway', value '1.2.3'.*not an IP address"),
    ("config return_path 'w'\n\toption table '100'\n\toption device 'eth0'\n\tlist gateway '1.2.3.4'\n"
     "\tlist gateway '1.2.3.5'\n", "option 'gateway'.*one gateway per address family"),
    ("config agent 'main'\n\toption rule_priority '32000'\n", "option 'rule_priority', value '32000'.*out of range"),
    ("config interface 'wg0'\n\toption source_table 'nope'\n", "option 'source_table', value 'nope'"),
])
def test_rules_option_errors(tmp_path, body, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_text(tmp_path, body)


PEER = f"config interface 'wg0'\nconfig peer 'phone'\n\toption interface 'wg0'\n\toption public_key '{KEY}'\n"


@pytest.mark.parametrize("option,value,message", [
    ("route", "perhaps", "boolean"),
    ("idle_timeout", "-1", "out of range"),
    ("idle_timeout", "later", "expected a number"),
    ("source_table", "nosuchtable", "unknown table name"),
    ("source_table", "0", "out of range"),
])
def test_bad_peer_values(tmp_path, option, value, message):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, PEER + f"\toption {option} '{value}'\n")
    assert (err.value.section, err.value.option, err.value.value) == ("phone", option, value)
    assert message in str(err.value)


def test_a_table_name_whose_number_is_out_of_range(tmp_path):
    # rt_tables names 0 "unspec": the kernel would file such a route in main, where
    # wgagent would never find it again (and re-add it on every pass)
    path = tmp_path / "wgagent"
    path.write_text("config interface 'wg0'\n\toption table 'unspec'\n")
    with pytest.raises(ConfigError, match=r"option 'table', value 'unspec'.*number 0 in rt_tables"):
        config.load(str(path), dict(TABLES, unspec=0))


def test_not_utf8(tmp_path):
    path = tmp_path / "wgagent"
    path.write_bytes(b"config interface 'wg\xff0'\n")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text"):
        config.load(str(path), TABLES)


def test_check_exits_2_on_a_bad_config_and_names_the_value(tmp_path, capsys):
    from wgagent import cli

    path = tmp_path / "wgagent"
    path.write_text("config agent 'main'\n\toption poll_interval 'fast'\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{path}: section 'main', option 'poll_interval', value 'fast'" in err
