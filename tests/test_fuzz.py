"""Fuzzing of every parser of outside input, with Hypothesis: random input and
mutations of real input (tests/data/captures.json, recorded by tests/capture.py; the
golden UCI cases; the configs of tests/data), each example under a timeout guard.

What each parser may do with anything it is given:
- the UCI reader: UciSyntaxError, or sections that render (uci.render) and read back
  the same; the config built from them: ConfigError;
- YAML config: ConfigError;
- UAPI answers (wg_uapi.parse): UapiError; with the memo the same peers as without;
- generic netlink (wg_kernel: merge_dump, and read_peers over a scripted socket):
  KernelWgError; with the memo the same peers as without;
- rtnetlink (links, addresses, routes, rules, acknowledgements over a scripted
  socket): OSError; the event filter (rtnl.relevant): True or False;
- ubus and rpcd replies (the ubus CLI's output, python-ubus's answers, netifd's
  status, rpcd's answers to a firewall write): UbusError (an OSError), netifd's
  ResolveError, the firewall's ForeignPending.
Never anything else, and never a hang: an example taking over GUARD seconds fails.

WGAGENT_FUZZ_EXAMPLES sets the examples per parser (CI: the default below; `make
fuzz`: many more); the counts are printed at the end of the run.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgagent import config, firewall, netifd, rtnl, uci, ubus, wg_kernel, wg_uapi
from wgagent import netlink as nl
from wgagent.config import ConfigError
from wgagent.model import Route, Rule
from wgagent.ubus import UbusError

from .test_genl_parse import FAMILY, FakeGenl, message, peer

pytestmark = pytest.mark.fuzz

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
EXAMPLES = int(os.environ.get("WGAGENT_FUZZ_EXAMPLES", "2000"))
GUARD = 5.0  # seconds for one example: a loop that never ends is a failure, not a stuck CI
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
TABLES = {"main": 254, "local": 255, "default": 253, "wan": 100, "vpn": 200}
CAPTURES = json.load(open(os.path.join(DATA, "captures.json")))


class Hang(BaseException):
    """Not an Exception: no `except Exception` in the code under test may swallow it."""


@contextlib.contextmanager
def guard():
    def fire(signum, frame):
        raise Hang(f"an example ran longer than {GUARD:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, GUARD)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Count:
    """Examples run by one test, reported at its end."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return guard()


def run(test, figures) -> None:
    count = Count()
    test(count)
    figures("examples", count.n)
    assert count.n >= min(EXAMPLES, 100)


# --- mutations


@st.composite
def mutated(draw, seeds, alphabet):
    """A seed (str or bytes) with a few edits: insertions from alphabet, deletions,
    replacements, a splice of another seed, a repeated chunk, a cut."""
    data = draw(st.sampled_from(seeds))
    empty = data[:0]
    pieces = st.binary(max_size=8) if isinstance(data, bytes) else st.text(alphabet, max_size=8)
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        end = draw(st.integers(pos, min(len(data), pos + 16)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "splice", "repeat", "cut"]))
        if op == "insert":
            data = data[:pos] + draw(pieces) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[end:]
        elif op == "replace":
            data = data[:pos] + draw(pieces) + data[end:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[:pos] + other[draw(st.integers(0, len(other))):]
        elif op == "repeat":
            data = data[:end] + data[pos:end] * draw(st.integers(1, 4)) + data[end:]
        else:
            data = data[:pos] or empty
    return data


# --- the UCI reader and the config built from it


def _golden() -> list[str]:
    cases = json.load(open(os.path.join(DATA, "uci_cases.json"), encoding="utf-8"))
    cases += json.load(open(os.path.join(DATA, "uci_cases_parser.json"), encoding="utf-8"))["cases"]
    out = [c["content"] for c in cases]
    md = open(os.path.join(DATA, "openwrt", "uci-syntax", "cases.md"), encoding="utf-8").read()
    out += [ast.literal_eval(m) for m in re.findall(r"exact bytes\):\n```\n(.*?)\n```", md, re.S)]
    for name in ("s1_op1.wgagent", "s1_op2.wgagent"):
        out.append(open(os.path.join(DATA, name), encoding="utf-8").read())
    return out


UCI_SEEDS = _golden()
UCI_ALPHABET = "'\"\\;# \t\n\r\v.=-_abcoplgnistu01@[]\u00e9\u4e2d\0"


def shape(sections):
    return [(s.type, s.name, s.options) for s in sections]


def quoted(text: str, style: int) -> str:
    if style == 1:
        return "'" + text.replace("'", "'\\''") + "'"
    if style == 2:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text  # bare: whatever libuci makes of it


names = st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True)


@st.composite
def uci_documents(draw):
    """UCI text written from random sections, every argument quoted at random (bare,
    single, double quotes): types of any printable character, values of any."""
    printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=6)
    values = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=8)
    styles = st.integers(0, 2)
    out = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.none(), names))
        out.append(f"config {quoted(draw(printable), draw(styles))}" + (f" {quoted(name, draw(styles))}" if name else ""))
        for _ in range(draw(st.integers(0, 3))):
            out.append(f"\t{draw(st.sampled_from(['option', 'list', 'o', 'l']))} {draw(names)} "
                       f"{quoted(draw(values), draw(styles))}")
    return draw(st.sampled_from(["\n", "\r\n"])).join(out) + "\n"


def test_fuzz_the_uci_reader(figures):
    """Whatever it accepts renders to text it reads back the same (uci.render);
    the config built from it is a Config or a ConfigError."""
    assert len(UCI_SEEDS) >= 40

    def test(count):
        @FUZZ
        @given(st.one_of(mutated(UCI_SEEDS, UCI_ALPHABET), uci_documents(), st.text(UCI_ALPHABET, max_size=200),
                         st.text(max_size=100)))
        def example(text):
            with count():
                try:
                    sections = uci.parse(text, "/etc/config/fuzz")
                except uci.UciSyntaxError:
                    sections = None
                if sections is not None:
                    assert shape(uci.parse(uci.render(sections))) == shape(sections)
                try:
                    config.build("/etc/config/fuzz", config.raw_from_uci("/etc/config/fuzz", text), TABLES)
                except ConfigError:
                    pass
        example()

    run(test, figures)


# --- YAML


def _yaml_seeds() -> list[str]:
    out = [open(os.path.join(os.path.dirname(HERE), "systemd", "config.yaml")).read()]
    for name in ("s1_op1.wgagent", "s1_op2.wgagent"):
        sections = uci.parse(open(os.path.join(DATA, name)).read())
        doc: dict = {}
        for s in sections:
            key = next(k for k, (t, _) in config.YAML_KEYS.items() if t == s.type)
            if key == "agent":
                doc["agent"] = s.options
            else:
                doc.setdefault(key, {})[s.label] = s.options
        out.append(yaml.safe_dump(doc))
    return out


YAML_SEEDS = _yaml_seeds()
YAML_ALPHABET = ":-[]{}&*!|>'\"#,? \n\t0123456789.abcdeilnorstuwy_~@%"
OPTION_NAMES = sorted({o for opts in config.SCHEMA.values() for o in opts} | set(config.YAML_KEYS) | {"wg0", "lan"})
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.sampled_from(["main", "wg0", "1", "0", "yes", "10.0.0.0/24", "ACCEPT", "e" * 43 + "="]))
documents = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=8), st.integers()), inner,
                    max_size=5)), max_leaves=30)


def test_fuzz_yaml_config(figures):
    def test(count):
        @FUZZ
        @given(st.one_of(mutated(YAML_SEEDS, YAML_ALPHABET), documents.map(lambda d: yaml.safe_dump(d)),
                         st.text(YAML_ALPHABET, max_size=200)))
        def example(text):
            with count():
                try:
                    config.build("/etc/wgagent/config.yaml", config.raw_from_yaml("/etc/wgagent/config.yaml", text),
                                 TABLES)
                except ConfigError:
                    pass
        example()

    run(test, figures)


# --- UAPI answers


HEX = [bytes([i] * 32).hex() for i in (1, 2, 3)]
UAPI_SEEDS = [CAPTURES["uapi"].encode(), b"errno=0\n\n", b"errno=-5\n\n",
              (f"public_key={HEX[0]}\nendpoint=[fe80::1%3]:51820\nlast_handshake_time_sec=1\n"
               f"last_handshake_time_nsec=2\ntx_bytes=3\nrx_bytes=4\npersistent_keepalive_interval=25\n"
               f"allowed_ip=10.0.0.0/8\nallowed_ip=::/0\npublic_key={HEX[1]}\nrx_bytes=9\nerrno=0\n\n").encode()]


def same_with_memo(parse, error, data, memo: dict) -> None:
    """parse(data) raises only `error`, and with the memo of earlier examples it gives
    the same peers as without (or the same refusal): the memo changes only the cost."""
    results = []
    for args in ((data,), (data, memo)):
        try:
            results.append(parse(*args))
        except error:
            results.append(None)
    assert results[1] == results[0], "the memo changes nothing but the cost"


def test_fuzz_uapi_answers(figures):
    def test(count):
        memo: dict = {}

        @FUZZ
        @given(st.one_of(mutated(UAPI_SEEDS, None), st.binary(max_size=300)))
        def example(answer):
            with count():
                same_with_memo(wg_uapi.parse, wg_uapi.UapiError, answer, memo)
        example()

    run(test, figures)


# --- generic netlink (kernel WireGuard)


def _genl_pool(n: int = 60) -> list[bytes]:
    """WG_CMD_GET_DEVICE answers as the kernel lays them out (tests/test_genl_parse.py's
    encoder, checked there against pyroute2's decoder): 0-4 peers each, every field,
    v4 and v6 AllowedIPs, endpoints with and without a scope, continuations. Built
    once: drawing them example by example would cost more than parsing them."""
    import random

    rng = random.Random(15)
    shared = [bytes(range(32)), bytes(range(100, 132))]  # keys that recur: merges, memo hits
    out = []
    for _ in range(n):
        ps = []
        for _ in range(rng.randint(0, 4)):
            key = rng.choice(shared) if rng.random() < 0.5 else rng.randbytes(32)
            ips = [f"{socket.inet_ntoa(rng.randbytes(4))}/{rng.randint(0, 32)}" if rng.random() < 0.6 else
                   f"{socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))}/{rng.randint(0, 128)}"
                   for _ in range(rng.randint(0, 4))]
            endpoint = rng.choice([None, ("192.0.2.1", rng.randint(0, 65535)),
                                   ("fe80::1", rng.randint(0, 65535), rng.randint(0, 9))])
            ps.append(peer(key, ips, endpoint, (rng.randint(-2**63, 2**63 - 1), rng.randint(0, 10**9)),
                           rng.randint(0, 2**64 - 1), full=rng.random() < 0.8))
        out.append(message(*ps))
    return out


GENL_POOL = _genl_pool()
genl_messages = st.one_of(st.sampled_from(GENL_POOL), mutated(GENL_POOL, None), st.binary(max_size=64))
payloads = st.lists(genl_messages, min_size=1, max_size=3)


def test_fuzz_generic_netlink_dumps(figures):
    def test(count):
        memo: dict = {}

        @FUZZ
        @given(payloads)
        def example(messages):
            with count():
                same_with_memo(wg_kernel.merge_dump, wg_kernel.KernelWgError, messages, memo)
        example()

    run(test, figures)


@st.composite
def genl_script(draw):
    """The datagrams answering one dump request: messages with random flags (DUMP_INTR
    among them), a DONE with a random errno or none, then cut or mutated."""
    def script(seq):
        msgs = [FakeGenl._message(flags, p, FAMILY, seq) for flags, p in parts]
        msgs.append(FakeGenl._message(done_flags, struct.pack("=i", done_errno), nl.NLMSG_DONE, seq))
        data = [b"".join(msgs[i:i + 2]) for i in range(0, len(msgs), 2)]
        return [mutate(d) for d in data]

    parts = draw(st.lists(st.tuples(st.sampled_from([0, nl.NLM_F_DUMP_INTR, 0xFFFF]), genl_messages), max_size=3))
    done_flags = draw(st.sampled_from([0, nl.NLM_F_DUMP_INTR]))
    done_errno = draw(st.sampled_from([0, -1, -4, -16, -5000, 7, 2**31 - 1]))
    edits = draw(st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=4)), max_size=2))

    def mutate(d: bytes) -> bytes:
        for pos, new in edits:
            d = d[:pos] + new + d[pos + len(new):]
        return d
    return script


def test_fuzz_kernel_wireguard_reads_over_netlink(figures):
    """KernelWireGuard.read_peers against a socket that answers the family lookup and
    then each dump request with fuzzed datagrams (a dump interrupted every time, an
    errno in DONE, lengths that lie, seqs that do not match, silence)."""
    def test(count):
        @FUZZ
        @given(st.lists(genl_script(), min_size=1, max_size=nl.DUMP_RETRIES + 1))
        def example(scripts):
            with count():
                fake = FakeGenl(scripts + [lambda seq: []] * 8)
                with mock.patch.object(socket, "socket", lambda *args: fake):
                    backend = wg_kernel.KernelWireGuard()
                    try:
                        backend.read_peers("wg0")
                    except wg_kernel.KernelWgError:
                        pass
                    finally:
                        backend.close()
        example()

    run(test, figures)


# --- rtnetlink


def _datagrams(kind: str) -> list[bytes]:
    return [bytes.fromhex(d) for d in CAPTURES[kind]]


class RtnlScript(FakeGenl):
    """Stands in for the rtnetlink socket (FakeGenl's reads, its own answers): each
    request gets the captured answer of its kind (mutated by the example),
    re-sequenced to the request; an ack for each change."""

    ANSWERS = {18: "links", 22: "addresses", 26: "routes", 34: "rules"}

    def __init__(self, mutate):
        super().__init__([])
        self.mutate = mutate

    def sendall(self, data: bytes):
        for off, length, mtype, flags, seq in nl.messages(data):
            kind = self.ANSWERS.get(mtype)
            if kind is None:  # a change: its acknowledgement
                self.pending.append(self.mutate(struct.pack("=IHHII", 36, nl.NLMSG_ERROR, 0, seq, 0) +
                                                struct.pack("=i", 0) + data[off:off + 16]))
                continue
            for d in _datagrams(kind):
                d = bytearray(d)
                for moff, _, _, _, _ in nl.messages(bytes(d)):
                    struct.pack_into("=I", d, moff + 8, seq)
                self.pending.append(self.mutate(bytes(d)))


@st.composite
def datagram_edits(draw):
    """How each datagram of an answer is changed: bytes overwritten at random places
    (lengths, types, flags, attribute headers), or cut."""
    edits = draw(st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=4)), max_size=3))
    cut = draw(st.one_of(st.none(), st.integers(0, 4000)))
    mangle = draw(st.floats(0, 1))

    def mutate(d: bytes) -> bytes:
        if mangle < 0.2:
            return d  # some answers whole: the parse then has to succeed too
        for pos, new in edits:
            pos %= max(len(d), 1)
            d = d[:pos] + new + d[pos + len(new):]
        return d if cut is None else d[:cut]
    return mutate


def test_fuzz_rtnetlink_dumps_and_acknowledgements(figures):
    route = Route(254, "10.64.0.1", 32, "wg0", 0)
    rule = Rule(2, 5100, 200, "10.64.0.1", 32)

    def test(count):
        @FUZZ
        @given(datagram_edits())
        def example(mutate):
            with count(), mock.patch.object(nl.socket, "socket", lambda *args: RtnlScript(mutate)):
                r = rtnl.Rtnl()
                for call in (r.links, lambda: r.addresses({1: "lo", 2: "lan0"}), lambda: r.routes({1: "lo"}),
                             r.rules, lambda: r.apply_routes([("add", route, 3), ("delete", route, 3)]),
                             lambda: r.apply_rules([("add", rule), ("delete", rule)])):
                    try:
                        call()
                    except OSError:
                        pass
        example()

    run(test, figures)


def test_fuzz_the_event_filter(figures):
    seeds = _datagrams("events")

    def test(count):
        @FUZZ
        @given(st.one_of(mutated(seeds, None), st.binary(max_size=100)))
        def example(data):
            with count():
                assert rtnl.relevant(data) in (True, False)
        example()

    run(test, figures)


# --- ubus and rpcd replies


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=20)


def test_fuzz_the_ubus_clis_output(figures):
    seeds = [b"", b'{\n\t"up": true\n}', b'{"a": 1}\n{"b": 2}\n', b"[1, 2]", b'"x"', b"\xff\xfe"]

    def test(count):
        @FUZZ
        @given(st.one_of(mutated(seeds, None), json_values.map(lambda v: json.dumps(v).encode()),
                         st.binary(max_size=60)))
        def example(out):
            with count():
                try:
                    assert isinstance(ubus._first_reply("uci", "get", out), dict)
                except UbusError:
                    pass
        example()

    run(test, figures)


class FakePythonUbus:
    """python-ubus's module interface; call() answers what the example says."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.connected = False

    def connect(self, socket_path=None):
        self.connected = True

    def disconnect(self):
        if not self.connected:
            raise RuntimeError("You are not connected to ubus.")
        self.connected = False

    def get_connected(self):
        return self.connected

    def get_socket_path(self):
        return ubus.DEFAULT_SOCKET

    def call(self, obj, method, args, timeout=0):
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, BaseException):
            raise answer
        return answer


python_ubus_answers = st.one_of(
    json_values, st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3), max_size=3),
    st.builds(RuntimeError, st.one_of(st.sampled_from([f"ubus error occured: {t}" for t in ubus.STATUS_CODES]
                                                      + ["You are not connected to ubus."]), st.text(max_size=20))),
    st.sampled_from([TypeError("Failed to create json for ubus."), ValueError("bad json"), SystemError("x")]))


def test_fuzz_python_ubus_answers(figures):
    def test(count):
        @FUZZ
        @given(st.lists(python_ubus_answers, min_size=1, max_size=3))
        def example(answers):
            with count():
                client = ubus.PythonUbus(FakePythonUbus(answers), "")
                try:
                    assert isinstance(client.call("network.interface.wan", "status", {}), dict)
                except UbusError:
                    pass
        example()

    run(test, figures)


class FakeClient:
    """A wgagent ubus client (its contract: a dict, or UbusError) answering in turn."""

    name = "fake"

    def __init__(self, answers):
        self.answers = list(answers)

    def call(self, obj, method, args, timeout=10):
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, BaseException):
            raise answer
        return answer


status_answers = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "up": json_values, "l3_device": json_values, "device": st.one_of(json_values, st.just("eth0"))}))


def test_fuzz_netifds_status_answers(figures):
    def test(count):
        @FUZZ
        @given(st.one_of(status_answers, st.builds(UbusError, st.integers(0, 13), st.text(max_size=10))))
        def example(answer):
            with count():
                try:
                    assert isinstance(netifd.resolve("wan", FakeClient([answer])), str)
                except netifd.ResolveError:
                    pass
        example()

    run(test, figures)


S1 = config.load(os.path.join(DATA, "s1_op1.wgagent"), TABLES)
sections = st.dictionaries(st.one_of(st.sampled_from([s.name for s in firewall.desired_sections(S1)] + ["lan"]),
                                     st.text(max_size=10)),
                           st.one_of(json_values, st.dictionaries(
                               st.one_of(st.sampled_from([".type", "name", "network", "src", "dest", ".anonymous"]),
                                         st.text(max_size=6)), json_values, max_size=4)), max_size=6)
rpcd_answers = st.one_of(
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    st.fixed_dictionaries({"ubus_rpc_session": st.one_of(st.just("0123456789abcdef0123456789abcdef"), json_values)}),
    st.fixed_dictionaries({"values": st.one_of(sections, json_values)}),
    st.fixed_dictionaries({"access": json_values}),
    st.builds(UbusError, st.sampled_from([4, 6, 7, 9, 10, 12]), st.text(max_size=10)))


def test_fuzz_rpcds_answers_to_a_firewall_write(figures):
    desired = firewall.desired_sections(S1)

    def test(count):
        @FUZZ
        @given(st.lists(rpcd_answers, min_size=1, max_size=12))
        def example(answers):
            with count():
                writer = firewall.FirewallWriter(FakeClient(answers))
                try:
                    result = writer.sync(desired)
                    assert isinstance(result, firewall.SyncResult)
                    owned, wanted, _ = writer.read(desired)
                    firewall.plan(wanted, owned)
                except (OSError, firewall.ForeignPending):
                    pass
        example()

    run(test, figures)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
