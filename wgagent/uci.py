"""A reader for UCI files (/etc/config/*), so wgagent needs no libuci.

It accepts what libuci accepts and gives the same values (see the golden cases in
tests/data/uci): quoting and escapes, comments, empty values dropped, a repeated
section name merged into the first, a later `option` replacing an earlier value
and a `list` after an `option` of the same name appending to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z0-9_]+\Z")  # section and option names, as libuci allows
_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")


class UciSyntaxError(ValueError):
    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


@dataclass
class UciSection:
    type: str
    name: str | None  # None for an anonymous section
    index: int  # position among the sections of this type, for "@type[i]"
    line: int
    options: dict[str, str | list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How `uci show` names the section: 'wg0' or '@peer[0]'."""
        return self.name if self.name is not None else f"@{self.type}[{self.index}]"


def _tokens(text: str, path: str):
    """Yield (line_number, [token, ...]) per command line.

    A token is a run of unquoted text, 'single-quoted' text (taken literally) and
    "double-quoted" text (backslash escapes the next character), pieces glued
    together when nothing separates them. Quotes may span lines, as in libuci.
    """
    i, n, line = 0, len(text), 1
    tokens: list[str] = []
    start_line = 1
    while i < n:
        c = text[i]
        if c == "\n":
            if tokens:
                yield start_line, tokens
            tokens = []
            line += 1
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if not tokens:
            start_line = line
        buf: list[str] = []
        while i < n and text[i] not in " \t\r\n\f\v#":
            c = text[i]
            if c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise UciSyntaxError(path, line, "unterminated ' quote")
                piece = text[i + 1 : end]
                line += piece.count("\n")
                buf.append(piece)
                i = end + 1
            elif c == '"':
                i += 1
                while True:
                    if i >= n:
                        raise UciSyntaxError(path, line, 'unterminated " quote')
                    c = text[i]
                    if c == '"':
                        i += 1
                        break
                    if c == "\\" and i + 1 < n:
                        i += 1
                        c = text[i]
                    if c == "\n":
                        line += 1
                    buf.append(c)
                    i += 1
            elif c == "\\" and i + 1 < n and text[i + 1] != "\n":
                buf.append(text[i + 1])
                i += 2
            else:
                buf.append(c)
                i += 1
        tokens.append("".join(buf))
    if tokens:
        yield start_line, tokens


def parse(text: str, path: str = "<string>") -> list[UciSection]:
    """Parse UCI text into sections, in file order. Raises UciSyntaxError."""
    sections: list[UciSection] = []
    by_name: dict[str, UciSection] = {}
    per_type: dict[str, int] = {}
    current: UciSection | None = None
    for line, tok in _tokens(text, path):
        cmd, args = tok[0], tok[1:]
        if cmd == "package":
            if len(args) != 1:
                raise UciSyntaxError(path, line, "package takes one name")
            continue
        if cmd == "config":
            if not args or not args[0]:
                raise UciSyntaxError(path, line, "config without a section type")
            if len(args) > 2:
                raise UciSyntaxError(path, line, "too many arguments")
            stype = args[0]
            if not _TYPE.match(stype):
                raise UciSyntaxError(path, line, f"invalid character in section type {stype!r}")
            name = args[1] if len(args) == 2 and args[1] != "" else None
            if name is not None and not NAME.match(name):
                raise UciSyntaxError(path, line, f"invalid character in section name {name!r}")
            if name is not None and name in by_name:
                # libuci merges a repeated name into the first section of that name
                current = by_name[name]
                continue
            current = UciSection(stype, name, per_type.get(stype, 0), line)
            per_type[stype] = current.index + 1
            sections.append(current)
            if name is not None:
                by_name[name] = current
            continue
        if cmd in ("option", "list"):
            if current is None:
                raise UciSyntaxError(path, line, f"{cmd} found before the first section")
            if not args:
                raise UciSyntaxError(path, line, f"{cmd} without a name")
            if len(args) > 2:
                raise UciSyntaxError(path, line, "too many arguments")
            oname = args[0]
            if not NAME.match(oname):
                raise UciSyntaxError(path, line, f"invalid character in option name {oname!r}")
            if len(args) == 1 or args[1] == "":
                continue  # libuci drops an option without a value
            value = args[1]
            if cmd == "option":
                current.options[oname] = value
            else:
                old = current.options.get(oname)
                if old is None:
                    current.options[oname] = [value]
                elif isinstance(old, list):
                    old.append(value)
                else:
                    current.options[oname] = [old, value]
            continue
        raise UciSyntaxError(path, line, f"invalid command {cmd!r}")
    return sections


def quote(value: str) -> str:
    """Quote a value the way `uci export` does."""
    return "'" + value.replace("'", "'\\''") + "'"


def render(sections: list[UciSection]) -> str:
    """UCI text for sections, in the layout of `uci export` (without 'package')."""
    out: list[str] = []
    for s in sections:
        out.append(f"config {s.type}" + (f" {quote(s.name)}" if s.name else ""))
        for key, value in s.options.items():
            if isinstance(value, list):
                out.extend(f"\tlist {key} {quote(v)}" for v in value)
            else:
                out.append(f"\toption {key} {quote(value)}")
        out.append("")
    return "\n".join(out) + ("\n" if out else "")
