"""The UCI reader against what the real libuci made of the same bytes:
tests/data/uci_cases.json (recorded on OpenWrt, shared/openwrt/uci-syntax/cases.md) and
tests/data/uci_cases_parser.json (`;`, abbreviated commands, backslash-newline and
other rules of libuci's parser, from libuci built from the same source; each case
names the function of libuci that decides it)."""

import json
import os

import pytest

from wgagent import uci

DATA = os.path.join(os.path.dirname(__file__), "data")
CASES = json.load(open(os.path.join(DATA, "uci_cases.json"), encoding="utf-8"))
CASES += json.load(open(os.path.join(DATA, "uci_cases_parser.json"), encoding="utf-8"))["cases"]


def uci_show(package: str, sections) -> str:
    """Render parsed sections the way `uci show PACKAGE` prints them."""
    out = []
    for s in sections:
        base = f"{package}.{s.label}"
        out.append(f"{base}={s.type}")
        for key, value in s.options.items():
            values = value if isinstance(value, list) else [value]
            out.append(f"{base}.{key}=" + " ".join(uci.quote(v) for v in values))
    return "\n".join(out)  # a value may hold a newline: compare text, not lines


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case):
    if case["ok"]:
        assert uci_show(case["name"], uci.parse(case["content"], case["name"])) == "\n".join(case["show"])
    else:
        with pytest.raises(uci.UciSyntaxError) as err:
            uci.parse(case["content"], f"/etc/config/{case['name']}")
        assert f"/etc/config/{case['name']}:" in str(err.value)
        # libuci names the line; so do we
        expected_line = int(case["show"][0].split(" at line ")[1].split(",")[0])
        assert err.value.line == expected_line


def test_what_libuci_drops_after_a_semicolon_is_a_warning():
    # libuci reads only `option table main` (semi_after_unquoted_value_ends_the_line)
    warnings: list[str] = []
    text = "config interface 'wg0'\n\toption table main; option metric '5'\n"
    sections = uci.parse(text, "/etc/config/wgagent", warnings)
    assert sections[0].options == {"table": "main"}
    assert warnings == ["/etc/config/wgagent:2: ignored after ';': \"option metric '5'\" (libuci ends the line at "
                        "a ';' right after an unquoted value; quote the value or put a space before the ';')"]
    # nothing is lost, or only a comment: no warning
    for text in ("config interface 'wg0'\n\toption table 'main'; option metric '5'\n",
                 "config interface 'wg0'\n\toption table main ; option metric '5'\n",
                 "config interface 'wg0'\n\toption table main; # why\n",
                 "config interface 'wg0'\n\toption table main;\n"):
        warnings = []
        uci.parse(text, "x", warnings)
        assert warnings == [], text


def test_an_error_on_a_last_line_without_newline_names_that_line():
    # libuci counts a line when it reads its '\n' and says "line 1" here
    with pytest.raises(uci.UciSyntaxError) as err:
        uci.parse("config interface 'wg0'\nbogus", "f")
    assert err.value.line == 2 and "invalid command 'bogus'" in str(err.value)


def test_a_nul_character_is_refused_with_its_line():
    # fgets and strlen in libuci would cut the line there and splice the next one on
    with pytest.raises(uci.UciSyntaxError, match=r"^f:2: NUL character"):
        uci.parse("config interface 'wg0'\n\toption a 'b\0c'\n", "f")


@pytest.mark.parametrize("text,message", [
    ("conf interface 'wg0'\n", "invalid command 'conf' (libuci knows package/p, config/c, option/o, list/l)"),
    ("config\n", "invalid command: 'config' without arguments"),
    ("config interface 'wg-0'\n", "invalid character in section name 'wg-0' (libuci allows A-Z a-z 0-9 _)"),
    ("config interface 'wg0'\n\toption table ma\\\n\tin\n", "too many arguments: 'in' (quote a value with spaces)"),
    ("config interface 'wg0'\nconfig peer 'wg0'\n",
     "section 'wg0' of type 'peer' overwrites a prior section of that name of type 'interface' (line 1)"),
])
def test_errors_say_what_is_wrong(text, message):
    with pytest.raises(uci.UciSyntaxError) as err:
        uci.parse(text, "/etc/config/wgagent")
    assert str(err.value).endswith(message)


def test_render_round_trip():
    text = "config interface 'wg0'\n\toption table 'main'\n\tlist x 'a b'\n\tlist x \"it's\"\n\nconfig peer\n\toption d 'q'\n"
    sections = uci.parse(text)
    again = uci.parse(uci.render(sections))
    assert [(s.type, s.name, s.options) for s in again] == [(s.type, s.name, s.options) for s in sections]
    assert "list x 'it'\\''s'" in uci.render(sections)


@pytest.mark.parametrize("stype", ["a#b", "a;b", "0\\", "it's", 'say"', "x\\'y"])
def test_render_reads_back_a_section_type_of_any_printable_character(stype):
    """Found by fuzzing (tests/test_fuzz.py): a type was written bare, and `a#b` read
    back as type `a` (the rest a comment), `0\\` as `0` joined to the next line."""
    sections = [uci.UciSection(stype, "x", 0, 1, {"o": "v"}), uci.UciSection("plain-type", None, 0, 3, {})]
    text = uci.render(sections)
    assert [(s.type, s.name, s.options) for s in uci.parse(text)] == \
        [(stype, "x", {"o": "v"}), ("plain-type", None, {})]
    assert text.startswith("config ") and "config plain-type\n" in text  # the usual types stay bare

