"""Links, addresses and rules read and written by our netlink code in a namespace,
compared with what `ip -j` (iproute2's own decoder) reports of the same kernel.

    namespace "rt"
      lo                      127.0.0.1/8, ::1 (scope host: not reported)
      br0   bridge, up        192.0.2.1/24, 2001:db8::1/64, 169.254.7.7/16 scope link, fe80::/64
      v0 -- v1  veth, down    198.51.100.2/24 on v0
      t0    tun, pointopoint  10.1.1.1 peer 10.1.1.2, fd31::1/128
      rules: ours (proto 152) in both families, a table > 255, suppress_prefixlength 0;
             somebody else's (proto static) at the same priority, never reported or touched

Rule changes go in batches (one datagram, an answer each): a refused one, one
already there and one already gone are told apart within a batch, by the codec and
by the reconciler's lines.

And the daemon's commands (`run --once`, `status`, `check`) never import pyroute2.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import textwrap

import pytest

from wgagent.model import AF_INET, AF_INET6, RTPROT_WGAGENT, Rule

from .lab import genkey

pytestmark = pytest.mark.root

READ = textwrap.dedent("""
    import json
    from wgagent.rtnl import Rtnl
    r = Rtnl()
    links = r.links()
    print(json.dumps({
        "links": {n: [l.index, l.kind, l.up, l.pointopoint] for n, l in links.items()},
        "addresses": r.addresses({l.index: n for n, l in links.items()}),
        "rules": r.rules(),
    }))
""")

WRITE = textwrap.dedent("""
    import json, sys
    from wgagent.rtnl import Rtnl
    from wgagent.model import Rule
    r = Rtnl()
    verb, rules = sys.argv[1], [Rule(*x) for x in json.loads(sys.argv[2])]
    print(json.dumps(r.apply_rules([(verb, rule) for rule in rules])))
""")


RECONCILE = textwrap.dedent("""
    import json, sys
    from wgagent.model import Rule
    from wgagent.policy import Desired, RoutePlan, RulePlan
    from wgagent.reconciler import Reconciler
    from wgagent.reporter import Reporter
    from wgagent.rtnl import Rtnl

    class Log:
        def __init__(self):
            self.lines = []

        def __getattr__(self, level):
            return lambda event, **kw: self.lines.append([level, event, kw])

    add, delete = ([Rule(*x) for x in json.loads(arg)] for arg in sys.argv[1:3])
    log = Log()
    rec = Reconciler(Rtnl(), Reporter(log, str))
    done = rec.apply(RoutePlan(), RulePlan(add=add, delete=delete), {}, Desired(), Desired())
    print(json.dumps({"lines": log.lines, "dirty": rec.dirty, "view": sorted(rec.view.rules),
                      "done": {event: [r.describe() for r in rules] for (event, _, _), rules in done.items()}}))
""")


def ip_rules(ns) -> list[Rule]:
    """Rules with our protocol as iproute2 decodes them (numeric tables and protocols)."""
    out = []
    for family, flag in ((AF_INET, "-4"), (AF_INET6, "-6")):
        for r in json.loads(ns.ip("-N", "-j", flag, "rule", "show")):
            if r.get("protocol") != str(RTPROT_WGAGENT):
                continue
            src = "" if r["src"] == "all" else r["src"]
            src_len = r.get("srclen", (32 if family == AF_INET else 128) if src else 0)
            out.append(Rule(family, r["priority"], int(r["table"]), src, src_len, r.get("suppress_prefixlen", -1)))
    return sorted(out)


def read(ns) -> dict:
    out = json.loads(ns.run(sys.executable, "-c", READ).stdout)
    out["rules"] = sorted(Rule(*r) for r in out["rules"])
    return out


def write(ns, verb: str, rules: list[Rule]) -> list[int]:
    """The kernel's errno for each change (0: done), sent as one batch."""
    return json.loads(ns.run(sys.executable, "-c", WRITE, verb, json.dumps(rules)).stdout)


@pytest.fixture
def rt(lab):
    ns = lab.netns("rt")
    ns.ip("link", "add", "br0", "type", "bridge")
    ns.ip("link", "set", "br0", "up")
    for a in ("192.0.2.1/24", "169.254.7.7/16 scope link"):
        ns.ip("addr", "add", *a.split(), "dev", "br0")
    ns.ip("addr", "add", "2001:db8::1/64", "dev", "br0", "nodad")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("addr", "add", "198.51.100.2/24", "dev", "v0")
    ns.ip("tuntap", "add", "t0", "mode", "tun")
    ns.ip("addr", "add", "10.1.1.1", "peer", "10.1.1.2", "dev", "t0")
    ns.ip("addr", "add", "fd31::1/128", "dev", "t0", "nodad")
    ns.ip("link", "set", "t0", "up")
    for fam, spec in (("-4", "from 10.0.31.5 lookup 100 pref 5100"),
                      ("-4", "lookup main suppress_prefixlength 0 pref 5000"),
                      ("-6", "from fd31::/64 lookup 70000 pref 5100"),
                      ("-6", "lookup main suppress_prefixlength 0 pref 5000")):
        ns.ip(fam, "rule", "add", *spec.split(), "proto", str(RTPROT_WGAGENT))
    ns.ip("-4", "rule", "add", "from", "10.0.31.6", "lookup", "100", "pref", "5100", "proto", "static")
    return ns


def test_links_as_ip_reports_them(rt):
    expected = {}
    for link in json.loads(rt.ip("-j", "-d", "link", "show")):
        expected[link["ifname"]] = [link["ifindex"], link.get("linkinfo", {}).get("info_kind", ""),
                                    "UP" in link["flags"], "POINTOPOINT" in link["flags"]]
    got = read(rt)["links"]
    assert got == expected
    # and the cases that matter, spelled out
    assert got["lo"][1:] == ["", True, False]
    assert got["br0"][1:] == ["bridge", True, False]
    assert got["v0"][1:] == ["veth", False, False]
    assert got["t0"][1:] == ["tun", True, True]


def test_global_addresses_as_ip_reports_them(rt):
    expected: dict = {}
    for link in json.loads(rt.ip("-j", "addr", "show")):
        for a in link["addr_info"]:
            if a["scope"] == "global":  # ip's "local" is IFA_LOCAL, else IFA_ADDRESS: ours too
                expected.setdefault(link["ifname"], []).append([a["local"], a["prefixlen"]])
    got = read(rt)["addresses"]
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}
    assert sorted(got["br0"]) == [["192.0.2.1", 24], ["2001:db8::1", 64]]  # not 169.254.7.7, not fe80::
    assert sorted(got["t0"]) == [["10.1.1.1", 32], ["fd31::1", 128]]  # the local end, not the peer's
    assert got["v0"] == [["198.51.100.2", 24]] and "lo" not in got


def test_rules_as_ip_reports_them_ours_only(rt):
    got = read(rt)["rules"]
    assert got == ip_rules(rt)
    assert got == sorted([Rule(AF_INET, 5000, 254, "", 0, 0), Rule(AF_INET, 5100, 100, "10.0.31.5", 32, -1),
                          Rule(AF_INET6, 5000, 254, "", 0, 0), Rule(AF_INET6, 5100, 70000, "fd31::", 64, -1)])
    assert "10.0.31.6" in rt.ip("-4", "rule", "show")  # somebody else's: there, and not reported


def test_add_and_delete_round_trip(rt):
    mine = [Rule(AF_INET, 6000, 300, "192.0.2.0", 24), Rule(AF_INET6, 6000, 300, "2001:db8:5::", 48, 0),
            Rule(AF_INET, 6001, 70001, "", 0, 0), Rule(AF_INET6, 6002, 254, "fd31::5", 128)]
    before = ip_rules(rt)
    assert write(rt, "add", mine) == [0] * 4
    assert ip_rules(rt) == sorted(before + mine)  # iproute2 reads back exactly what we meant
    assert read(rt)["rules"] == sorted(before + mine)
    assert write(rt, "add", mine) == [errno.EEXIST] * 4  # already there
    assert write(rt, "delete", mine) == [0] * 4
    assert ip_rules(rt) == before
    assert write(rt, "delete", mine) == [errno.ENOENT] * 4  # already gone


def test_delete_leaves_somebody_elses_rule_alone(rt):
    # the same priority, source and table as the proto-static rule: only the protocol differs
    assert write(rt, "delete", [Rule(AF_INET, 5100, 100, "10.0.31.6", 32)]) == [errno.ENOENT]
    assert "from 10.0.31.6 lookup 100 proto static" in rt.ip("-4", "rule", "show")


def test_other_kernel_errors_are_that_change_s_errno(rt):
    # a source prefix longer than the family's address: the kernel says EINVAL
    assert write(rt, "add", [Rule(AF_INET, 6100, 100, "10.0.0.0", 33)]) == [errno.EINVAL]


def test_a_batch_with_refused_and_redundant_changes_answers_each(rt):
    before = ip_rules(rt)
    new = [Rule(AF_INET, 6000, 300, "192.0.2.0", 24), Rule(AF_INET6, 6000, 300, "2001:db8:5::", 48, 0),
           Rule(AF_INET, 6001, 70001, "", 0, 0)]
    bad = Rule(AF_INET, 6100, 100, "10.0.0.0", 33)  # a prefix longer than the address: EINVAL
    there = Rule(AF_INET, 5100, 100, "10.0.31.5", 32)  # the fixture's, ours
    assert write(rt, "add", [new[0], bad, new[1], there, new[2]]) == [0, errno.EINVAL, 0, errno.EEXIST, 0]
    assert ip_rules(rt) == sorted(before + new), "the others are made"
    theirs = Rule(AF_INET, 5100, 100, "10.0.31.6", 32)  # proto static: our delete does not match it
    # the bad one is refused on delete too (the request is checked before the lookup)
    assert write(rt, "delete", [new[0], bad, theirs, new[1], new[2]]) == [0, errno.EINVAL, errno.ENOENT, 0, 0]
    assert ip_rules(rt) == before
    assert "from 10.0.31.6 lookup 100 proto static" in rt.ip("-4", "rule", "show")


def test_the_reconciler_says_the_refused_rule_of_a_batch_alone(rt):
    """A pass's rule changes against the kernel: the refused add is the one line said
    (its error as an OSError of the errno reads, as one request's did), the rest are
    done, an add already there and a delete already gone included."""
    keep = Rule(AF_INET, 5100, 100, "10.0.31.5", 32)  # the fixture's: in the kernel already
    new = [Rule(AF_INET, 6000, 300, "192.0.2.0", 24), Rule(AF_INET6, 6000, 300, "2001:db8:5::", 48, 0)]
    bad = Rule(AF_INET, 6100, 100, "10.0.0.0", 33)
    drop = Rule(AF_INET6, 5000, 254, "", 0, 0)  # the fixture's
    gone = Rule(AF_INET, 6200, 300, "198.51.100.0", 24)  # never there
    before = ip_rules(rt)
    out = json.loads(rt.run(sys.executable, "-c", RECONCILE, json.dumps([new[0], bad, keep, new[1]]),
                            json.dumps([drop, gone])).stdout)
    assert out["lines"] == [["warning", "rule_add_failed", {
        "error": str(OSError(errno.EINVAL, os.strerror(errno.EINVAL))), "rule": bad.describe(),
        "retry": "every pass; logged again if the error changes"}]]
    assert out["done"] == {"rule_removed": [drop.describe(), gone.describe()],
                           "rule_added": [new[0].describe(), keep.describe(), new[1].describe()]}
    assert out["dirty"], "a refused change: the kernel is read again before the next plan"
    assert sorted(Rule(*r) for r in out["view"]) == sorted([new[0], keep, new[1]])
    assert ip_rules(rt) == sorted(set(before) - {drop} | set(new))


# --- the daemon never imports pyroute2

COMMANDS = textwrap.dedent("""
    import json, sys
    from wgagent import cli
    codes = {}
    for argv in (["check"], ["run", "--once", "--log", "stderr"], ["status", "--json"]):
        try:
            codes[argv[0]] = cli.main(argv + ["--config", sys.argv[1]])
        except SystemExit as e:
            codes[argv[0]] = e.code
    import importlib.util
    print("RESULT " + json.dumps({
        "codes": codes, "installed": importlib.util.find_spec("pyroute2") is not None,
        "pyroute2": sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")}))
""")

CONFIG = """
config agent 'main'
\toption poll_interval '0.5'

config interface 'wg0'

config return_path 'wan'
\toption device 'wan'
\toption table '100'
"""


def test_daemon_commands_never_import_pyroute2(lab, backend):
    ns = lab.netns("np")
    ns.add_wireguard("wg0", backend, genkey()[0], 51820, ["10.0.31.1/24"])
    ns.wg_peer("wg0", genkey()[1], ["10.0.31.5/32"])
    ns.ip("link", "add", "wan", "type", "veth", "peer", "name", "wan-peer")
    ns.ip("addr", "add", "198.51.100.2/24", "dev", "wan")
    ns.ip("link", "set", "wan", "up")
    ns.ip("link", "set", "wan-peer", "up")
    ns.ip("route", "add", "default", "via", "198.51.100.1", "dev", "wan")
    config = os.path.join(lab.tmp, "np.wgagent")
    with open(config, "w") as f:
        f.write(CONFIG)
    r = ns.run(sys.executable, "-c", COMMANDS, config)
    result = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    assert result["codes"] == {"check": 0, "run": 0, "status": 0}, r.stdout + r.stderr
    assert result["pyroute2"] == [], f"pyroute2 installed: {result['installed']}"
    # the pass did its work: links, addresses, routes and rules were all read and written
    assert "from 198.51.100.2 lookup 100 proto 152" in ns.ip("rule", "show")
    assert any(t.startswith("default via 198.51.100.1 dev wan proto 152") for t in ns.routes("table", "100"))
    assert '"device": "wan"' in r.stdout and "198.51.100.2/24" in r.stdout
