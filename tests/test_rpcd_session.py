"""rpcd sessions in the ubus double: the `session` object and uci calls that name a
session. No transcript records them: each case says which function of rpcd's source
(session.c, uci.c at 4476687) or libuci's (66127cd) it holds the double to."""

from __future__ import annotations

import os
import re

import pytest

from wgagent import ubus as ubus_mod

from .ubus_double.rpcd import UbusStatus
from .ubus_double.server import UbusDouble
from .ubus_double.session import DEFAULT_ID

FW = {"config": "firewall"}
GRANT = {"scope": "uci", "objects": [["firewall", "read"], ["firewall", "write"]]}


def status(fn, *args):
    try:
        fn(*args)
    except UbusStatus as e:
        return e.status
    return 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(double):
    c = double.sessions.clock = Clock()
    return c


def session(double, timeout=60, grant=True) -> str:
    sid = double.sessions.call("create", {"timeout": timeout})["ubus_rpc_session"]
    if grant:
        double.sessions.call("grant", {"ubus_rpc_session": sid, **GRANT})
    return sid


def add_zone(double, name, sid=None):
    args = {**FW, "type": "zone", "name": name, "values": {"name": name}}
    if sid:
        args["ubus_rpc_session"] = sid
    double.uci.call("add", args)


def names_in_file(double) -> list[str]:
    with open(os.path.join(double.uci.confdir, "firewall")) as f:
        return re.findall(r"^config \S+ '(\S+)'", f.read(), re.M)


def test_create_grant_access_destroy_over_either_transport(double, client):
    """rpc_handle_create, rpc_handle_acl, rpc_handle_access, rpc_handle_destroy."""
    created = client.call("session", "create", {"timeout": 60})
    sid = created["ubus_rpc_session"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid)  # rpc_random: 16 bytes, hex
    assert list(created) == ["ubus_rpc_session", "timeout", "expires", "acls", "data"]  # rpc_session_dump
    assert created["timeout"] == 60 and created["expires"] in (59, 60) and created["acls"] == created["data"] == {}
    assert client.call("session", "grant", {"ubus_rpc_session": sid, **GRANT}) == {}
    ask = {"ubus_rpc_session": sid, "scope": "uci", "object": "firewall"}
    assert client.call("session", "access", {**ask, "function": "write"}) == {"access": True}
    assert client.call("session", "access", {**ask, "object": "network", "function": "read"}) == {"access": False}
    assert client.call("session", "access", {"ubus_rpc_session": sid}) == {"uci": {"firewall": ["read", "write"]}}
    assert client.call("session", "destroy", {"ubus_rpc_session": sid}) == {}
    for args, code in [({"ubus_rpc_session": sid}, 4),  # gone: NOT_FOUND
                       ({"ubus_rpc_session": DEFAULT_ID}, 6),  # the default session stays
                       ({}, 2)]:
        with pytest.raises(ubus_mod.UbusError) as e:
            client.call("session", "destroy", args)
        assert e.value.status == code
    with pytest.raises(ubus_mod.UbusError) as e:
        client.call("session", "grant", {"ubus_rpc_session": sid, **GRANT})
    assert e.value.status == 4


def test_grant_needs_objects_and_skips_malformed_entries(double):
    """rpc_handle_acl: no objects is rpc_session_grant(NULL, NULL); entries that are not
    arrays of two strings are skipped; scope defaults to "ubus"."""
    sid = session(double, grant=False)
    assert status(double.sessions.call, "grant", {"ubus_rpc_session": sid, "scope": "uci"}) == 2
    double.sessions.call("grant", {"ubus_rpc_session": sid, "scope": "uci",
                                   "objects": ["firewall", ["network"], [1, "read"], ["fire*", "read", "x"]]})
    double.sessions.call("grant", {"ubus_rpc_session": sid, "objects": [["network.interface.*", "status"]]})
    assert double.sessions.call("access", {"ubus_rpc_session": sid}) == {
        "ubus": {"network.interface.*": ["status"]}, "uci": {"fire*": ["read"]}}
    assert double.sessions.call("access", {"ubus_rpc_session": sid, "scope": "uci", "object": "firewall",
                                           "function": "read"}) == {"access": True}  # fnmatch


def test_uci_without_a_grant_is_permission_denied_before_anything_else(double):
    """rpc_uci_read_access / rpc_uci_write_access: right after the required arguments."""
    sid = session(double, grant=False)
    s = {"ubus_rpc_session": sid}
    assert status(double.uci.call, "get", {**FW, **s}) == 6
    assert status(double.uci.call, "get", {"config": "nosuchconfig", **s}) == 6  # not NOT_FOUND: not loaded
    assert status(double.uci.call, "get", s) == 2  # config missing: INVALID_ARGUMENT first
    assert status(double.uci.call, "add", {**FW, "type": "bad type", **s}) == 6  # before the type is checked
    assert status(double.uci.call, "commit", {**FW, **s}) == 6
    assert status(double.uci.call, "get", {**FW, "ubus_rpc_session": "f" * 32}) == 6  # no such session
    double.sessions.call("grant", {"ubus_rpc_session": sid, "scope": "uci", "objects": [["firewall", "read"]]})
    assert status(double.uci.call, "get", {**FW, **s}) == 0
    assert status(double.uci.call, "add", {**FW, "type": "zone", **s}) == 6  # read only


def test_a_sessions_delta_is_its_own(double):
    """rpc_uci_set_savedir: /var/run/rpcd/uci-<sid>, the only directory on the cursor's
    delta path (rpc_uci_replace_savedir), so uci_load_delta reads that one alone."""
    sid = session(double)
    s = {"ubus_rpc_session": sid}
    add_zone(double, "wgagent_zone_wg0", sid)
    add_zone(double, "theirs")  # somebody's `uci add` without commit: /tmp/.uci
    savedir = os.path.join(double.sessions.rundir, "uci-" + sid)
    assert double.uci.delta("firewall", savedir) == [["set", "wgagent_zone_wg0", "zone"],
                                                    ["set", "wgagent_zone_wg0", "name", "wgagent_zone_wg0"]]
    assert [c[1] for c in double.uci.call("changes", {**FW, **s})["changes"]] == ["wgagent_zone_wg0"] * 2
    assert [c[1] for c in double.uci.call("changes", FW)["changes"]] == ["theirs"] * 2
    assert double.uci.call("get", {**FW, "section": "theirs", **s}) is None
    assert double.uci.call("get", {**FW, "section": "wgagent_zone_wg0"}) is None
    # changes without a config: the configs the session may read
    double.uci.call("set", {"config": "network", "section": "lan", "values": {"mtu": "1400"}})
    assert set(double.uci.call("changes", {})["changes"]) == {"firewall", "network"}
    assert set(double.uci.call("changes", s)["changes"]) == {"firewall"}
    # a ubus_rpc_session that is no string is skipped by blobmsg_parse: no session at all
    assert [c[1] for c in double.uci.call("changes", {**FW, "ubus_rpc_session": 5})["changes"]] == ["theirs"] * 2


def test_a_commit_in_a_session_commits_its_delta_only(double):
    """rpc_uci_revert_commit -> uci_commit (libuci's uci_file_commit): the file as it is
    now, the session's delta replayed onto it, that delta file emptied."""
    sid = session(double)
    add_zone(double, "wgagent_zone_wg0", sid)
    add_zone(double, "theirs")
    double.uci.call("commit", {**FW, "ubus_rpc_session": sid})
    assert "wgagent_zone_wg0" in names_in_file(double) and "theirs" not in names_in_file(double)
    assert [c[1] for c in double.uci.call("changes", FW)["changes"]] == ["theirs"] * 2  # still theirs, staged
    assert double.uci.call("changes", {**FW, "ubus_rpc_session": sid})["changes"] == []
    # and the other way round: a commit without a session leaves a session's changes staged
    add_zone(double, "wgagent_zone_wg1", sid)
    double.uci.call("commit", FW)
    assert "theirs" in names_in_file(double) and "wgagent_zone_wg1" not in names_in_file(double)
    assert len(double.uci.events) == 2


def test_destroy_and_expiry_purge_the_savedir(double, clock):
    """rpc_session_destroy runs the destroy callbacks: uci.c's rpc_uci_purge_savedir_cb
    removes /var/run/rpcd/uci-<sid>, uncommitted changes and all; a timeout destroys
    it the same way (rpc_session_timeout)."""
    gone = session(double)
    add_zone(double, "wgagent_zone_wg0", gone)
    savedir = os.path.join(double.sessions.rundir, "uci-" + gone)
    assert os.listdir(savedir) == ["firewall"]
    double.sessions.call("destroy", {"ubus_rpc_session": gone})
    assert not os.path.exists(savedir) and gone not in double.sessions.sessions
    # expiry: the timeout counts from the last call naming the session (rpc_session_get
    # touches it, rpc_session_access from a uci call too)
    sid = session(double, timeout=60)
    clock.now += 50
    add_zone(double, "wgagent_zone_wg1", sid)
    clock.now += 50  # 100 s after create, 50 s after the last call
    double.sessions.expire()
    assert sid in double.sessions.sessions
    clock.now += 10
    double.sessions.expire()
    assert sid not in double.sessions.sessions
    assert not os.path.exists(os.path.join(double.sessions.rundir, "uci-" + sid))
    assert status(double.uci.call, "get", {**FW, "ubus_rpc_session": sid}) == 6
    assert "wgagent_zone_wg1" not in names_in_file(double)


def test_session_timeouts(double, clock):
    """rpc_handle_create: timeout counts as an INT32 only, else 300; rpc_touch_session
    sets no timer for timeout <= 0, and expires is then -1 / 1000 = 0."""
    for asked, timeout in [(None, 300), ("60", 300), (True, 300), (1.5, 300), (2**31, 300), (0, 0), (60, 60)]:
        reply = double.sessions.call("create", {} if asked is None else {"timeout": asked})
        assert reply["timeout"] == timeout, asked
    forever = double.sessions.call("create", {"timeout": 0})
    assert forever["expires"] == 0
    clock.now += 10 ** 6
    double.sessions.expire()
    assert forever["ubus_rpc_session"] in double.sessions.sessions
    assert sorted(s.timeout for s in double.sessions.sessions.values()) == [0, 0, 0]  # the default one too


def test_commit_and_revert_wait_for_an_apply(double):
    """rpc_uci_revert_commit: PERMISSION_DENIED while an apply with rollback is pending."""
    sid = session(double)
    add_zone(double, "wgagent_zone_wg0", sid)
    double.uci.apply_sid = "a" * 32
    for method in ("commit", "revert"):
        assert status(double.uci.call, method, {**FW, "ubus_rpc_session": sid}) == 6
        assert status(double.uci.call, method, FW) == 6
    double.uci.apply_sid = ""
    double.uci.call("commit", {**FW, "ubus_rpc_session": sid})
    assert "wgagent_zone_wg0" in names_in_file(double)


def test_revert_creates_no_delta_file(double):
    """libuci's uci_filter_delta opens the delta file without O_CREAT: a revert in a
    session that staged nothing succeeds and leaves no savedir behind."""
    sid = session(double)
    double.uci.call("revert", {**FW, "ubus_rpc_session": sid})
    assert not os.path.exists(os.path.join(double.sessions.rundir, "uci-" + sid))


def test_rpcd_start_purges_every_session_savedir(tmp_path, double):
    """main.c: rpc_uci_purge_savedirs when rpcd starts (not after a SIGHUP re-exec)."""
    sid = session(double)
    add_zone(double, "wgagent_zone_wg0", sid)
    rundir = double.sessions.rundir
    assert os.listdir(rundir) == ["uci-" + sid]
    again = UbusDouble(str(tmp_path / "again.sock"), double.uci.confdir, double.uci.savedir, rundir)
    try:
        assert os.listdir(rundir) == [] and sid not in again.sessions.sessions
    finally:
        again.close()
