"""Shared fixtures. Integration tests run once per WireGuard backend available:
"uapi" (wireguard-go, always tried) and "kernel" (when this kernel can create a
wireguard link: inside the test VM, see tests/vm). WGAGENT_BACKENDS=kernel,uapi
chooses explicitly (the VM harness sets it).

The ubus double (tests/ubus_double: rpcd's uci object, netifd's interfaces) and a
wgagent ubus client over each transport, for the firewall and netifd tests."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import lab as lab_mod  # noqa: E402
from tests.ubus_double.server import UbusDouble  # noqa: E402
from wgagent import ubus as ubus_mod  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
UBUS_BIN = os.path.join(HERE, "ubus_double", "bin")  # the ubus CLI stand-in
UBUS_PYMOD = os.path.join(HERE, "ubus_double", "pymod")  # the python-ubus stand-in


def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root, network namespaces and real WireGuard")
    config.addinivalue_line("markers", "faults: the fault suite (tests/test_faults*.py; full counts with "
                                       "WGAGENT_FAULTS=full, `make faults`)")
    config.addinivalue_line("markers", "fuzz: Hypothesis fuzzing of the parsers (WGAGENT_FUZZ_EXAMPLES, `make fuzz`)")


# What the fault and fuzz tests counted (faults run, restarts converged, examples tried),
# printed at the end of the run, and appended as JSON lines to $WGAGENT_FIGURES if set
_FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figures(request):
    """figures(what, value): one line of the run's summary, named after the test."""
    def say(what: str, value) -> None:
        _FIGURES.append((f"{request.node.name}: {what}", str(value)))
        out = os.environ.get("WGAGENT_FIGURES")
        if out:
            import json

            with open(out, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, "what": what, "value": str(value)}) + "\n")
    return say


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("wgagent figures (faults, fuzzing)")
        for what, value in _FIGURES:
            terminalreporter.write_line(f"{what}: {value}")


def _backends() -> list[str]:
    env = os.environ.get("WGAGENT_BACKENDS")
    if env:
        return [b.strip() for b in env.split(",") if b.strip()]
    found = ["uapi"]
    if lab_mod.have_root() and lab_mod.kernel_wireguard_available():
        found.append("kernel")
    return found


BACKENDS = _backends()
# CI sets this (.ci/run): there an integration test that cannot run is a failure, not a
# skip, so a machine that lost root, wireguard-go or /dev/net/tun cannot pass quietly
REQUIRE = os.environ.get("WGAGENT_REQUIRE_INTEGRATION") == "1"


def _cannot_run(why: str):
    if REQUIRE:
        pytest.fail(f"integration test cannot run: {why} (WGAGENT_REQUIRE_INTEGRATION=1)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The WireGuard implementation under test: 'uapi' (wireguard-go) or 'kernel'."""
    why = lab_mod.missing_requirements(request.param)
    if why:
        _cannot_run(why)
    return request.param


@pytest.fixture
def lab(request):
    """A fresh namespace lab, closed (processes ended, namespaces deleted) after the test."""
    why = lab_mod.missing_requirements("uapi")
    if why and "wireguard-go" not in why:
        _cannot_run(why)
    with lab_mod.Lab() as the_lab:
        yield the_lab


@pytest.fixture
def double(tmp_path):
    """The ubus double on a socket of its own: rpcd's uci object over a config
    directory holding tests/data/firewall.base and a one-section network file."""
    confdir = tmp_path / "config"
    confdir.mkdir()
    with open(os.path.join(HERE, "data", "firewall.base")) as f:
        (confdir / "firewall").write_text(f.read())
    (confdir / "network").write_text("config interface 'lan'\n\toption proto 'static'\n")
    d = UbusDouble(str(tmp_path / "ubus.sock"), str(confdir), str(tmp_path / "uci-delta"))
    yield d
    d.close()


@pytest.fixture(params=["python-ubus", "ubus-cli"])
def client(request, double, monkeypatch):
    """A wgagent ubus client as picked by ubus.connect(), over each transport."""
    if request.param == "python-ubus":
        monkeypatch.syspath_prepend(UBUS_PYMOD)
        sys.modules.pop("ubus", None)
        monkeypatch.setattr(ubus_mod, "_python_client", None)
    else:
        monkeypatch.setitem(sys.modules, "ubus", None)  # import ubus fails: as on a host without it
        monkeypatch.setenv(ubus_mod.CLI_ENV, os.path.join(UBUS_BIN, "ubus"))
    c = ubus_mod.connect(double.path)
    assert c is not None and c.name == request.param
    yield c
    if request.param == "python-ubus":
        mod = sys.modules.get("ubus")
        if mod is not None and mod.get_connected():
            mod.disconnect()
        sys.modules.pop("ubus", None)
