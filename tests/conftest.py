"""Shared fixtures. Integration tests run once per WireGuard backend available:
"uapi" (wireguard-go, always tried) and "kernel" (when this kernel can create a
wireguard link: inside the test VM, see tests/vm). WGAGENT_BACKENDS=kernel,uapi
chooses explicitly (the VM harness sets it)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import lab as lab_mod  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root, network namespaces and real WireGuard")


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
