"""The UCI reader against what the real libuci made of the same bytes
(tests/data/uci_cases.json, from shared/openwrt/uci-syntax/cases.md)."""

import json
import os

import pytest

from wgagent import uci

CASES = json.load(open(os.path.join(os.path.dirname(__file__), "data", "uci_cases.json"), encoding="utf-8"))


def uci_show(package: str, sections) -> list[str]:
    """Render parsed sections the way `uci show PACKAGE` prints them."""
    out = []
    for s in sections:
        base = f"{package}.{s.label}"
        out.append(f"{base}={s.type}")
        for key, value in s.options.items():
            values = value if isinstance(value, list) else [value]
            out.append(f"{base}.{key}=" + " ".join(uci.quote(v) for v in values))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case):
    if case["ok"]:
        assert uci_show(case["name"], uci.parse(case["content"], case["name"])) == case["show"]
    else:
        with pytest.raises(uci.UciSyntaxError) as err:
            uci.parse(case["content"], f"/etc/config/{case['name']}")
        assert f"/etc/config/{case['name']}:" in str(err.value)
        # libuci names the line; so do we
        expected_line = int(case["show"][0].split(" at line ")[1].split(",")[0])
        assert err.value.line == expected_line


def test_render_round_trip():
    text = "config interface 'wg0'\n\toption table 'main'\n\tlist x 'a b'\n\tlist x \"it's\"\n\nconfig peer\n\toption d 'q'\n"
    sections = uci.parse(text)
    again = uci.parse(uci.render(sections))
    assert [(s.type, s.name, s.options) for s in again] == [(s.type, s.name, s.options) for s in sections]
    assert "list x 'it'\\''s'" in uci.render(sections)
