"""A reader for UCI files (/etc/config/*), so wgagent needs no libuci.

It reads a file the way libuci's parser does (file.c of openwrt/uci at 66127cd:
uci_import, uci_parse_line, next_arg, parse_str and the functions they call, ported
step by step), so it accepts what libuci accepts, gives the same values and rejects
what libuci rejects. The golden cases in tests/data/uci_cases*.json hold what the real
libuci made of each file. What that entails, some of it surprising:

- a command is `package`/`p`, `config`/`c`, `option`/`o` or `list`/`l`, nothing else;
- `;` ends a statement, but right after an unquoted value it ends the whole line (the
  value's terminating NUL is written over the `;`): `option a x; option b y` sets
  only a (reported as a warning, see parse());
- a backslash at the end of a line, outside single quotes, joins the next line on,
  dropping both; an indented next line then starts a new argument or statement;
- in double quotes a backslash escapes the next character, single quotes are literal,
  and adjacent quoted and unquoted pieces make one argument;
- `option x ''` and `option x` change nothing, while `list x ''` adds an empty item;
  a later `option` replaces a value or list, a `list` after an `option` appends to it;
- a section name seen before merges into that section, unless its type differs
  (an error); section types may hold any printable ASCII but a space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NoReturn

NAME = re.compile(r"[A-Za-z0-9_]+\Z")  # section and option names (uci_validate_name)
_PACKAGE = re.compile(r"[A-Za-z0-9_-]+\Z")  # the name after `package` (uci_validate_package)
_TYPE = re.compile(r"[!-~]+\Z")  # section types: printable ASCII but space (uci_validate_type)
_KEYWORDS = {"package": "package", "p": "package", "config": "config", "c": "config",
             "option": "option", "o": "option", "list": "list", "l": "list"}  # uci_parse_line
_SPACE = frozenset(" \t\n\v\f\r")  # C's isspace() in the C locale, which uci never changes
_SPACES = re.compile(r"[ \t\n\v\f\r]*")
_WORD = re.compile(r"[ \t]*([^ \t\0]*)")  # strtok(str, " \t")
# a run of characters that parse_str copies one at a time with nothing else to do
_PLAIN = re.compile(r"[^'\"#;\\ \t\n\v\f\r\0]+")
_DQ_PLAIN = re.compile(r'[^"\\\0]+')  # the same inside double quotes


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


class _Parser:
    """libuci's parse context (struct uci_parse_context) and the functions of file.c
    that work on it, over a str.

    pctx->buf is `buf`, the logical line: uci_getln(offset) replaces everything from
    offset on with the next physical line, which is how a quoted value or a
    backslash-newline continues. `buf` always ends in "\\0", C's NUL (a file that
    holds one is refused, so it means nothing else). libuci also writes NULs into the
    buffer: where one lands before `pos` nothing reads it again, so only the two that
    land on `pos` are kept, as a cut of `buf` there (a `#` that starts a comment, and
    the terminator of an unquoted argument that stopped at a `;`). The arguments are
    collected apart, not copied within the buffer as libuci does.
    """

    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.at = 0  # where the next physical line starts in text
        self.line = 0  # physical lines read
        self.buf = "\0"
        self.pos = 0
        self.filled = 0  # pctx->buf_filled: not lowered by a cut, as in C
        self.sections: list[UciSection] = []
        self.by_name: dict[str, UciSection] = {}
        self.per_type: dict[str, int] = {}
        self.section: UciSection | None = None
        self.warnings: list[str] = []

    def error(self, message: str) -> NoReturn:
        # libuci counts a line once its '\n' is read, so on a last line without one it
        # names the line before; this names the line itself
        raise UciSyntaxError(self.path, self.line, message)

    def getln(self, offset: int) -> None:
        """uci_getln: buf from offset on becomes the next line (with its '\\n'), or
        nothing at the end of the file."""
        if self.at >= len(self.text):
            self.buf = self.buf[:offset] + "\0"
            return
        end = self.text.find("\n", self.at)
        end = len(self.text) if end < 0 else end + 1
        self.buf = self.buf[:offset] + self.text[self.at:end] + "\0"
        self.at = end
        self.line += 1
        self.filled = len(self.buf) - 1

    def cut(self) -> None:
        """A NUL written at pos: nothing after it is read again."""
        self.buf = self.buf[:self.pos] + "\0"

    def parse_backslash(self) -> bool:
        """parse_backslash: skip the backslash; at the end of the line (a '\\n', a
        '\\r\\n' or the end of the file) fetch the next line in place of the line end
        and return False, else True (the next character is taken as it is)."""
        self.pos += 1
        c = self.buf[self.pos]
        if c in "\0\n" or (c == "\r" and self.buf[self.pos:] == "\r\n\0"):
            self.getln(self.pos)
            return False
        return True

    def skip_whitespace(self) -> None:
        self.pos = _SPACES.match(self.buf, self.pos).end()

    def parse_double_quote(self, out: list[str]) -> int:
        """parse_double_quote: returns the number of characters copied."""
        self.pos += 1
        copied = 0
        while True:
            c = self.buf[self.pos]
            if c == '"':
                self.pos += 1
                return copied
            if c == "\0":  # the value goes on on the next line, with the '\n' kept
                self.getln(self.pos)
                if self.buf[self.pos] == "\0":
                    self.error('EOF with unterminated "')
                continue
            if c == "\\":
                if not self.parse_backslash():
                    continue  # backslash-newline: both dropped
                out.append(self.buf[self.pos])
                self.pos += 1
                copied += 1
                continue
            m = _DQ_PLAIN.match(self.buf, self.pos)
            out.append(m.group())
            copied += m.end() - self.pos
            self.pos = m.end()

    def parse_single_quote(self, out: list[str]) -> int:
        """parse_single_quote: everything up to the next ', across lines."""
        self.pos += 1
        copied = 0
        while True:
            end = self.buf.find("'", self.pos)
            if end >= 0:
                out.append(self.buf[self.pos:end])
                copied += end - self.pos
                self.pos = end + 1
                return copied
            end = len(self.buf) - 1  # the NUL
            out.append(self.buf[self.pos:end])
            copied += end - self.pos
            self.pos = end
            self.getln(self.pos)
            if self.buf[self.pos] == "\0":
                self.error("EOF with unterminated '")

    def parse_str(self, out: list[str]) -> None:
        """parse_str: one argument, from pieces in any quoting, up to whitespace, a
        `#` or a `;`."""
        start = self.pos
        copied = 0  # libuci's target is start + copied
        stop_at_semicolon = False
        while True:  # C's do { ... } while (cur && !isspace(cur))
            c = self.buf[self.pos]
            if c == "'":
                copied += self.parse_single_quote(out)
            elif c == '"':
                copied += self.parse_double_quote(out)
            elif c == "#":
                self.cut()
                break
            elif c == "\0":
                break
            elif c == ";":
                stop_at_semicolon = True
                break
            elif c == "\\":
                if self.parse_backslash():
                    out.append(self.buf[self.pos])
                    self.pos += 1
                    copied += 1
                # else the C `continue` goes to the loop condition: an indented
                # continuation line ends the argument here
            else:
                m = _PLAIN.match(self.buf, self.pos)
                out.append(m.group())
                copied += m.end() - self.pos
                self.pos = m.end()
            c = self.buf[self.pos]
            if c == "\0" or c in _SPACE:
                break
        if self.buf[self.pos] != "\0" and not stop_at_semicolon:
            self.pos += 1  # past the whitespace
        if stop_at_semicolon and start + copied == self.pos:
            # an unquoted argument stopped at a `;` with nothing skipped (no quote, no
            # backslash): its NUL goes on the `;` and ends the line there
            rest = self.buf[self.pos + 1:-1].strip()
            if rest and not rest.startswith("#"):
                self.warnings.append(
                    f"{self.path}:{self.line}: ignored after ';': {rest!r} (libuci ends the line at a ';' "
                    f"right after an unquoted value; quote the value or put a space before the ';')")
            self.cut()

    def next_arg(self, what: str, required: bool = False, check: re.Pattern | None = None) -> str:
        """next_arg: the next argument, or '' at the end of the statement. `what` names
        it in errors; `check` is the name check (uci_validate_name or _package)."""
        self.skip_whitespace()
        if self.buf[self.pos] == ";":
            self.pos += 1
            return self.error(f"insufficient arguments: no {what}") if required else ""
        out: list[str] = []
        self.parse_str(out)
        value = "".join(out)
        if not value:
            return self.error(f"insufficient arguments: no {what}") if required else ""
        if check is not None and not check.match(value):
            allowed = "A-Z a-z 0-9 _ -" if check is _PACKAGE else "A-Z a-z 0-9 _"
            self.error(f"invalid character in {what} {value!r} (libuci allows {allowed})")
        return value

    def assert_eol(self) -> None:
        self.skip_whitespace()
        extra = self.next_arg("argument")
        if extra:
            self.error(f"too many arguments: {extra!r} (quote a value with spaces)")

    def skip_command_word(self, end: int, command: str) -> None:
        """uci_increase_pos(strlen(cur_str) + 1): past the word and the one space or
        tab after it, which strtok turned into a NUL."""
        if end + 1 > self.filled:
            self.error(f"{command} without arguments")
        self.pos = end + 1

    def parse_line(self) -> None:
        """uci_parse_line: the statements of one logical line."""
        self.skip_whitespace()
        while True:
            # strtok(cur_str, " \t"): only space and tab separate, so "config\n" is
            # one word (an invalid command) and so is anything glued to a ';'
            m = _WORD.match(self.buf, self.pos)
            word, j = m.group(1), m.end()
            if not word:
                return
            if word[0] == "#":
                return
            command = _KEYWORDS.get(word)
            if command is None:
                bare = word.rstrip("\r\n\v\f")
                if bare in _KEYWORDS:
                    self.error(f"invalid command: {bare!r} without arguments")
                self.error(f"invalid command {bare!r} (libuci knows package/p, config/c, option/o, list/l)")
            if command == "package":
                self.parse_package(j)
            elif command == "config":
                self.parse_config(j)
            else:
                self.parse_option(j, command)

    def parse_package(self, end: int) -> None:
        """uci_parse_package, as uci_load reads a file (single): the name is checked
        and ignored."""
        self.skip_command_word(end, "package")
        self.next_arg("package name", True, _PACKAGE)
        self.assert_eol()

    def parse_config(self, end: int) -> None:
        """uci_parse_config."""
        line = self.line
        self.skip_command_word(end, "config")
        stype = self.next_arg("section type", True)
        if not _TYPE.match(stype):
            self.error(f"invalid character in section type {stype!r} (libuci allows printable ASCII but space)")
        name = self.next_arg("section name", check=NAME)
        self.assert_eol()
        if name:
            section = self.by_name.get(name)
            if section is not None:
                # uci_set on the existing section: the same type merges into it
                if section.type != stype:
                    self.error(f"section {name!r} of type {stype!r} overwrites a prior section of that name "
                               f"of type {section.type!r} (line {section.line})")
                self.section = section
                return
        section = UciSection(stype, name or None, self.per_type.get(stype, 0), line)
        self.per_type[stype] = section.index + 1
        self.sections.append(section)
        if name:
            self.by_name[name] = section
        self.section = section

    def parse_option(self, end: int, command: str) -> None:
        """uci_parse_option, then what uci_set or uci_add_list does with it."""
        if self.section is None:
            self.error(f"{command} found before the first section")
        self.skip_command_word(end, command)
        name = self.next_arg("option name", True, NAME)
        value = self.next_arg("value")
        self.assert_eol()
        options = self.section.options
        if command == "option":
            if value:  # uci_set of '' on a parsed option returns without a change
                options[name] = value
            return
        old = options.get(name)  # uci_add_list, which takes '' too
        if old is None:
            options[name] = [value]
        elif isinstance(old, list):
            old.append(value)
        else:
            options[name] = [old, value]

    def parse(self) -> list[UciSection]:
        """uci_import's loop: one logical line at a time."""
        if "\0" in self.text:
            # fgets and strlen would cut lines at it and splice the next line on
            self.line = self.text.count("\n", 0, self.text.index("\0")) + 1
            self.error("NUL character in the file")
        while self.at < len(self.text):
            self.pos = 0
            self.getln(0)
            self.parse_line()
        return self.sections


def parse(text: str, path: str = "<string>", warnings: list[str] | None = None) -> list[UciSection]:
    """Parse UCI text into sections, in file order, as libuci does. Raises
    UciSyntaxError. What libuci drops without a word that a user surely meant
    (statements after `value;`) is appended to `warnings`, when given."""
    parser = _Parser(text, path)
    sections = parser.parse()
    if warnings is not None:
        warnings.extend(parser.warnings)
    return sections


def quote(value: str) -> str:
    """Quote a value the way `uci export` does."""
    return "'" + value.replace("'", "'\\''") + "'"


_BARE_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")  # a type written as it is, as `uci export` does


def render(sections: list[UciSection]) -> str:
    """UCI text for sections, in the layout of `uci export` (without 'package'), that
    reads back as the same sections. A section type may hold any printable character
    but a space; one holding others than [A-Za-z0-9_-] (# ; \\ quotes) is quoted, where
    `uci export` writes it bare and libuci then reads another type back."""
    out: list[str] = []
    for s in sections:
        stype = s.type if _BARE_TYPE.match(s.type) else quote(s.type)
        out.append(f"config {stype}" + (f" {quote(s.name)}" if s.name else ""))
        for key, value in s.options.items():
            if isinstance(value, list):
                out.extend(f"\tlist {key} {quote(v)}" for v in value)
            else:
                out.append(f"\toption {key} {quote(value)}")
        out.append("")
    return "\n".join(out) + ("\n" if out else "")
