"""Replays a recorded transcript (tests/data/openwrt/rpcd-uci/0N-*.txt, copied from
the project's shared/openwrt/rpcd-uci) against the double: every `ubus call`
through the CLI stand-in (in this process, stderr not a tty, as recorded), and the file looks the transcripts take (cat, head, tail, grep,
sed of /etc/config and /tmp/.uci, an appended line, `uci set`/`uci changes` on the
shared delta), each compared with the recorded output and exit status, exactly.

Left out, with the reason in SKIPPED: inode numbers (stat), directory listings,
`ubus monitor`, the harness's jsonfilter pipe and `uci show` of the real uci CLI.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import os
import re
import shlex
import shutil

from .server import UbusDouble

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "harness")
# the copies in the repository; WGAGENT_TRANSCRIPTS names another directory (a new recording)
TRANSCRIPTS = os.environ.get("WGAGENT_TRANSCRIPTS",
                             os.path.join(os.path.dirname(HERE), "data", "openwrt", "rpcd-uci"))
USAGE_TRIMMED = "[... ubus CLI usage text trimmed ...]"
SKIPPED = ("stat ", "ls ", "ubus monitor", "[in ns] uci show", "[in ns] sh -c uci show")


def _cli():
    loader = importlib.machinery.SourceFileLoader("ubus_cli_standin", os.path.join(HERE, "bin", "ubus"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def blocks(text: str):
    """(command, recorded output, exit status) for each command; status None where
    the transcript records none (its effect still counts: printf >> the file)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        cmd, out, status, i = lines[i][2:], [], None, i + 1
        while i < len(lines) and not lines[i].startswith("$ "):
            m = re.fullmatch(r"\[exit (\d+)\]", lines[i])
            i += 1
            if m:
                status = int(m.group(1))
                break
            out.append(lines[i - 1])
        yield cmd, out, status


class Replay:
    def __init__(self, tmp: str):
        self.confdir, self.savedir = os.path.join(tmp, "config"), os.path.join(tmp, "uci")
        os.makedirs(self.confdir)
        for name in ("firewall", "network", "rpcd", "wgagent"):
            shutil.copy(os.path.join(HARNESS, name), self.confdir)
        self.double = UbusDouble(os.path.join(tmp, "ubus.sock"), self.confdir, self.savedir)
        self.cli = _cli()

    def close(self):
        self.double.close()

    def _file(self, path: str) -> str:
        path = path.replace("$CONF/", "/etc/config/")
        if path.startswith("/etc/config/"):
            return os.path.join(self.confdir, path[len("/etc/config/"):])
        if path.startswith("/tmp/.uci/"):
            return os.path.join(self.savedir, path[len("/tmp/.uci/"):])
        raise ValueError(path)

    def _read(self, path: str) -> list[str]:
        with open(self._file(path)) as f:
            return f.read().splitlines()

    def run(self, cmd: str) -> tuple[str, int] | None:
        """(output, exit status), or None for a command that is not replayed."""
        if cmd.startswith(SKIPPED) or "| jsonfilter" in cmd:
            return None
        m = re.fullmatch(r"ubus -s \$SOCK call (\S+) (\S+)(?: '(.*)')?", cmd)
        if m:  # the JSON is recorded unescaped: all between the outer quotes
            argv = ["-s", self.double.path, "call", m.group(1), m.group(2)] + ([m.group(3)] if m.group(3) else [])
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = self.cli.main(argv)
            return out.getvalue() + err.getvalue(), code
        argv = shlex.split(cmd)
        if argv[:2] == ["[in", "ns]"]:
            return self._uci(argv[3:])
        if argv[0] == "sh" and argv[1] == "-c":
            argv = argv[2:]
        name, args = argv[0], argv[1:]
        if name == "cat":
            return _text(self._read(args[0])), 0
        if name == "tail":
            return _text(self._read(args[2])[-int(args[1]):]), 0
        if name == "head":
            return _text(self._read(args[1])[:int(args[0][1:])]), 0
        if name == "grep":
            count = args[0] == "-c"
            pattern, path = args[-2], args[-1]
            hits = [line for line in self._read(path) if pattern in line]
            return (f"{len(hits)}\n" if count else _text(hits)), 0 if hits else 1
        if name == "sed" and args[:1] == ["-n"]:
            m = re.fullmatch(r"/(.*)/,\$p", args[1])
            lines = self._read(args[2])
            start = next((i for i, line in enumerate(lines) if m.group(1) in line), len(lines))
            return _text(lines[start:]), 0
        if name == "printf" and args[1] == ">>":
            with open(self._file(args[2]), "a") as f:
                f.write(args[0].encode().decode("unicode_escape"))
            return "", 0
        return None

    def _uci(self, argv) -> tuple[str, int]:
        """The uci CLI's set and changes, on the same delta directory (its /tmp/.uci)."""
        if argv[0] == "set":
            path, value = argv[1].split("=", 1)
            config = path.split(".")[0]
            with open(os.path.join(self.savedir, config), "a") as f:
                f.write(f"{path}='" + value.replace("'", "'\\''") + "'\n")
            return "", 0
        if argv[0] == "changes":
            config = argv[1]
            out = []
            for change in self.double.uci.delta(config):
                op, parts = change[0], change[1:]
                if op == "remove":
                    out.append("-" + ".".join([config] + parts))
                    continue
                path = ".".join([config] + parts[:-1])
                sep = {"set": "=", "add": "=", "list-add": "+=", "list-del": "-=", "rename": "=@"}[op]
                out.append(f"{path}{sep}'" + parts[-1].replace("'", "'\\''") + "'")
            return _text(out), 0
        raise ValueError(argv)


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def compare(recorded: list[str], got: str) -> bool:
    """The recorded output, where the transcript's trimmed usage text stands for
    whatever usage text follows the first line."""
    if USAGE_TRIMMED in recorded:
        head = recorded[:recorded.index(USAGE_TRIMMED)]
        lines = got.splitlines()
        return lines[:len(head)] == head and len(lines) > len(head) and lines[len(head)].startswith("Usage: ubus")
    return got == _text(recorded)

