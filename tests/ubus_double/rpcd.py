"""A test double of rpcd's `uci` ubus object, following the behaviour recorded from
the real rpcd in shared/openwrt/rpcd-uci/ (01..07). What it reproduces:

- add with a name is an upsert: it never fails when the name exists, silently
  changes an existing section's type, and APPENDS array values to an existing list;
  add without a name makes an anonymous section whose id is libuci's
  cfg<counter><hash of the type> (cfg1392bd: the 19th section, a rule), stable
  across a commit and shifting when an earlier section goes; add to a config file
  that does not exist is NOT_FOUND (4), add without a type INVALID_ARGUMENT (2)
  before the config is looked at; a bad type, name or option name is
  INVALID_ARGUMENT and nothing of the call is applied;
- set with an array replaces the whole list (a "remove" then one "list-add" per
  element), an empty array is INVALID_ARGUMENT and changes nothing, a scalar on a
  list is a "remove" then a "set", "" deletes the option, booleans become "1"/"0"
  and integers their digits, while doubles, nested tables and null are
  INVALID_ARGUMENT; set on a missing section is NOT_FOUND and creates nothing;
- get of a missing section or option answers status 0 with no data; get of a
  config (optionally by type and match) lists sections with
  .anonymous/.type/.name/.index;
- match (get, set, delete by type): a section matches when at least one match key
  is present in it and every present key matches (a list element or a
  whitespace-separated token of the value); keys it lacks are ignored (the trap:
  a two-key delete takes unrelated rules); set/delete matching nothing is NOT_FOUND;
- delete of a section, an option, or options[] (missing ones skipped, all missing
  NOT_FOUND); rename of a section or option;
- the pending delta lives in a savedir (as /tmp/.uci) in libuci's delta format
  (`|firewall.s.o='v'` list-add, `-` remove, `+` anonymous add, `@` rename), so a
  test can stage a foreign `uci set` by writing that file; changes lists it, revert
  empties it, commit replays it onto the file read at that moment, rewrites the
  file whole through a new inode in libuci's export layout (its own writer, not
  wgagent's: the golden files check wgagent against it), drops # comments, leaves
  the file untouched when nothing is pending, and counts a config.change event
  either way.

Not recorded, modelled from rpcd's uci.c at 4476687 and libuci's delta.c and file.c
at 66127cd (the session object itself: session.py):

- ubus_rpc_session (rpc_uci_read_access / rpc_uci_write_access): a call that
  names a session (a string: blobmsg_parse skips any other type, and the call is
  then one without a session) is checked against the session's ACLs, scope "uci",
  object the config, function "read" (get, changes) or "write" (add, set, delete,
  rename, revert, commit), right after the call's required arguments and before
  anything else; no such session, no grant: PERMISSION_DENIED (6). `changes`
  without a config lists only the configs the session may read.
- Its savedir (rpc_uci_set_savedir): /var/run/rpcd/uci-<session> instead of
  /tmp/.uci. rpc_uci_replace_savedir empties the cursor's delta path before
  uci_set_savedir puts that one directory on it, so libuci's uci_load_delta reads
  the session's delta and nothing else: get and changes show it alone, and commit
  (uci_file_commit: the file as it is now, that delta replayed, that delta file
  emptied) writes the session's changes only, leaving /tmp/.uci's staged changes
  staged. A call without a session reads and commits /tmp/.uci alone likewise.
- A session's end (uci.c's rpc_uci_purge_savedir_cb, on destroy or expiry) removes
  its savedir, and its uncommitted changes with it; rpcd's start removes every
  uci-* savedir (rpc_uci_purge_savedirs).
- revert and commit answer PERMISSION_DENIED while an apply with rollback awaits
  confirmation (apply_sid set: rpc_uci_revert_commit); the double has no apply:
  a test sets apply_sid.
- revert (libuci's uci_filter_delta) empties an existing delta file and creates
  none.
"""

from __future__ import annotations

import os
import re
import tempfile

from wgagent import uci

from .session import RpcdSession
from .status import (INVALID_ARGUMENT, INVALID_COMMAND, METHOD_NOT_FOUND, NOT_FOUND, OK,  # noqa: F401
                     PERMISSION_DENIED, UbusStatus)
from .wire import STATUS_TEXT  # noqa: F401

_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")
_CONFIG = re.compile(r"[A-Za-z0-9_-]+\Z")
# libuci delta-file prefixes and the names `changes` gives them
_PREFIX = {"": "set", "|": "list-add", "-": "remove", "+": "add", "@": "rename", "~": "list-del", "^": "order"}
_OP_PREFIX = {v: k for k, v in _PREFIX.items()}


def type_hash(stype: str) -> int:
    """libuci's djb hash of a section type, the last four hex digits of an anonymous id."""
    h = 5381
    for c in stype.encode():
        h = (h * 33 + c) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % 0x10000


def anon_id(counter: int, stype: str) -> str:
    return f"cfg{counter:02x}{type_hash(stype):04x}"


class _Section:
    __slots__ = ("type", "name", "anonymous", "options")

    def __init__(self, stype, name, anonymous, options=None):
        self.type, self.name, self.anonymous = stype, name, anonymous
        self.options = options if options is not None else {}


class RpcdUci:
    def __init__(self, confdir: str, savedir: str | None = None, sessions: RpcdSession | None = None):
        self.confdir = confdir
        self.savedir = savedir or tempfile.mkdtemp(prefix="uci-delta-")  # /tmp/.uci
        os.makedirs(self.savedir, exist_ok=True)
        self.sessions = sessions or RpcdSession()  # rpcd's session object, in the same process
        self.sessions.on_destroy.append(self._purge_savedir)  # rpc_uci_api_init's destroy callback
        for name in os.listdir(self.sessions.rundir):  # main.c: rpc_uci_purge_savedirs at start
            if name.startswith("uci-"):
                _purge_dir(os.path.join(self.sessions.rundir, name))
        self.apply_sid = ""  # an apply awaiting confirmation (rpc_uci_apply with rollback)
        self.events: list[dict] = []  # config.change notifications sent to procd
        self.calls: list[tuple[str, dict]] = []  # every call, for tests to inspect
        self.fail_after: int | None = None  # fault injection: fail the Nth write call from now
        self.before_call = None  # a test's hook, run before each call: another tool acting just before
        self.after_call = None  # a test's hook, run after each call: another tool acting mid-pass
        self.lock = self.sessions.lock  # rpcd is one uloop: both objects answer in turn

    # --- dispatch

    def call(self, method: str, args) -> dict | None:
        with self.lock:
            self.sessions.expire()  # uloop's timers run between calls
            if not isinstance(args, dict):
                raise UbusStatus(INVALID_ARGUMENT)
            handler = getattr(self, "m_" + method, None)
            if handler is None:
                raise UbusStatus(METHOD_NOT_FOUND)
            self.calls.append((method, args))
            if self.before_call is not None:
                self.before_call(method, args)
            if method in ("add", "set", "delete", "rename") and self.fail_after is not None:
                if self.fail_after == 0:
                    self.fail_after = None
                    raise UbusStatus(9)
                self.fail_after -= 1
            try:
                return handler(args)
            finally:
                if self.after_call is not None:
                    self.after_call(method, args)

    # --- sessions: access and savedir

    def _access(self, args, perm: str) -> str:
        """rpc_uci_read_access / rpc_uci_write_access: the savedir this call works in,
        after checking the session's grant (none asked without a session)."""
        sid = args.get("ubus_rpc_session")
        if not isinstance(sid, str):
            return self.savedir
        if not self.sessions.access(sid, "uci", args["config"], perm):
            raise UbusStatus(PERMISSION_DENIED)
        return self.sessions.savedir(sid)

    def _purge_savedir(self, sid: str):
        _purge_dir(self.sessions.savedir(sid))

    # --- storage: the file, the delta in the savedir, and the file with the delta applied

    def _path(self, config) -> str:
        if not isinstance(config, str) or not config:
            raise UbusStatus(INVALID_ARGUMENT)
        if "/" in config or config.startswith("."):
            raise UbusStatus(NOT_FOUND)
        if not _CONFIG.match(config):
            raise UbusStatus(INVALID_ARGUMENT)
        path = os.path.join(self.confdir, config)
        if not os.path.isfile(path):
            raise UbusStatus(NOT_FOUND)
        return path

    def delta(self, config: str, savedir: str | None = None) -> list[list]:
        """The pending changes of a config, read from its delta file in savedir
        (default: the stand-in for /tmp/.uci)."""
        try:
            with open(os.path.join(savedir or self.savedir, config)) as f:
                return [_parse_delta_line(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _stage(self, config: str, changes: list[list], savedir: str):
        os.makedirs(savedir, exist_ok=True)  # uci_save makes a missing savedir
        with open(os.path.join(savedir, config), "a") as f:
            f.writelines(_delta_line(config, c) + "\n" for c in changes)

    def _view(self, config: str, savedir: str) -> tuple[list[_Section], int]:
        """Sections of the file with the delta replayed, and libuci's section counter."""
        with open(self._path(config)) as f:
            parsed = uci.parse(f.read(), config)
        sections = []
        for i, s in enumerate(parsed, 1):
            anonymous = s.name is None
            sections.append(_Section(s.type, anon_id(i, s.type) if anonymous else s.name, anonymous,
                                     {k: list(v) if isinstance(v, list) else v for k, v in s.options.items()}))
        counter = len(sections)
        for change in self.delta(config, savedir):
            counter += _apply(sections, change)
        return sections, counter

    @staticmethod
    def _find(sections, name):
        if isinstance(name, str) and name.startswith("@"):
            m = re.match(r"@([A-Za-z0-9_-]+)\[(-?\d+)\]\Z", name)
            if not m:
                return None
            same = [s for s in sections if s.type == m.group(1)]
            i = int(m.group(2))
            return same[i] if -len(same) <= i < len(same) else None
        return next((s for s in sections if s.name == name), None)

    # --- values

    @staticmethod
    def _value(v):
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return v
        raise UbusStatus(INVALID_ARGUMENT)  # doubles, tables, null

    def _changes_for_values(self, name: str, values, existing, replace_lists: bool) -> list[list]:
        if not isinstance(values, dict):
            raise UbusStatus(INVALID_ARGUMENT)
        out = []
        for opt, v in values.items():
            if not _NAME.match(opt):
                raise UbusStatus(INVALID_ARGUMENT)
            old = existing.options.get(opt) if existing is not None else None
            if isinstance(v, list):
                items = [self._value(x) for x in v]
                if replace_lists:
                    if not items:
                        raise UbusStatus(INVALID_ARGUMENT)  # recorded: 254, the list unchanged
                    if old is not None:
                        out.append(["remove", name, opt])
                out += [["list-add", name, opt, x] for x in items]
                continue
            value = self._value(v)
            if value == "":
                if old is not None:  # libuci: "" deletes; nothing to delete, nothing recorded
                    out.append(["remove", name, opt])
                continue
            if isinstance(old, list):
                out.append(["remove", name, opt])  # recorded: a list becomes an option
            out.append(["set", name, opt, value])
        return out

    # --- methods

    def m_configs(self, args):
        return {"configs": sorted(os.listdir(self.confdir))}

    def m_get(self, args):
        if not isinstance(args.get("config"), str):
            raise UbusStatus(INVALID_ARGUMENT)
        sections, _ = self._view(args["config"], self._access(args, "read"))
        if "section" not in args:
            want_type, match = args.get("type"), args.get("match")
            return {"values": {s.name: _values(s, i) for i, s in enumerate(sections)
                               if (want_type is None or s.type == want_type) and _matches(s, match)}}
        sec = self._find(sections, args["section"])
        if sec is None:
            return None
        if "option" in args:
            value = sec.options.get(args["option"])
            return None if value is None else {"value": list(value) if isinstance(value, list) else value}
        return {"values": _values(sec, None)}

    def m_add(self, args):
        config, stype, name = args.get("config"), args.get("type"), args.get("name")
        if not isinstance(config, str) or not isinstance(stype, str):
            raise UbusStatus(INVALID_ARGUMENT)  # required arguments, before the config is loaded
        savedir = self._access(args, "write")
        if not _TYPE.match(stype):
            raise UbusStatus(INVALID_ARGUMENT)
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise UbusStatus(INVALID_ARGUMENT)
        sections, counter = self._view(config, savedir)  # rpc_uci_add: names checked, then uci_load
        if name is None:
            name = anon_id(counter + 1, stype)
            head = [["add", name, stype]]
            existing = None
        else:
            head = [["set", name, stype]]
            existing = self._find(sections, name)
        # add never replaces a list: array values are appended (the upsert trap)
        changes = head + self._changes_for_values(name, args.get("values", {}), existing, replace_lists=False)
        self._stage(config, changes, savedir)
        return {"section": name}

    def m_set(self, args):
        config, section, values = args.get("config"), args.get("section"), args.get("values")
        if not isinstance(config, str) or values is None or (section is None and "type" not in args):
            raise UbusStatus(INVALID_ARGUMENT)
        savedir = self._access(args, "write")
        if section is not None and (not isinstance(section, str)
                                    or not (_NAME.match(section) or section.startswith("@"))):
            raise UbusStatus(INVALID_ARGUMENT)
        sections, _ = self._view(config, savedir)
        if section is None:  # type + match: every matching section
            targets = [s for s in sections if s.type == args["type"] and _matches(s, args.get("match"))]
        else:
            sec = self._find(sections, section)
            targets = [sec] if sec is not None else []
        if not targets:
            raise UbusStatus(NOT_FOUND)
        changes = []
        for sec in targets:
            changes += self._changes_for_values(sec.name, values, sec, replace_lists=True)
        self._stage(config, changes, savedir)
        return None

    def m_delete(self, args):
        config, section = args.get("config"), args.get("section")
        if not isinstance(config, str) or (section is None and "type" not in args):
            raise UbusStatus(INVALID_ARGUMENT)
        savedir = self._access(args, "write")
        sections, _ = self._view(config, savedir)
        if section is None:
            targets = [s for s in sections if s.type == args["type"] and _matches(s, args.get("match"))]
            if not targets:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["remove", s.name] for s in targets], savedir)
            return None
        sec = self._find(sections, section)
        if sec is None:
            raise UbusStatus(NOT_FOUND)
        if "option" in args:
            if args["option"] not in sec.options:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["remove", sec.name, args["option"]]], savedir)
        elif "options" in args:
            present = [o for o in args["options"] if o in sec.options]
            if not present:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["remove", sec.name, o] for o in present], savedir)
        else:
            self._stage(config, [["remove", sec.name]], savedir)
        return None

    def m_rename(self, args):
        config, section, name = args.get("config"), args.get("section"), args.get("name")
        if not isinstance(config, str) or not isinstance(section, str) or not isinstance(name, str):
            raise UbusStatus(INVALID_ARGUMENT)
        savedir = self._access(args, "write")
        if not _NAME.match(name):
            raise UbusStatus(INVALID_ARGUMENT)  # rpc_uci_rename: the new name, then uci_load
        sections, _ = self._view(config, savedir)
        sec = self._find(sections, section)
        if sec is None:
            raise UbusStatus(NOT_FOUND)
        if "option" in args:
            if args["option"] not in sec.options:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["rename", sec.name, args["option"], name]], savedir)
        else:
            self._stage(config, [["rename", sec.name, name]], savedir)
        return None

    def m_changes(self, args):
        if isinstance(args.get("config"), str):
            savedir = self._access(args, "read")
            self._path(args["config"])
            return {"changes": self.delta(args["config"], savedir)}
        # every config (uci_list_configs), those a session may not read skipped
        sid = args.get("ubus_rpc_session")
        savedir = self.sessions.savedir(sid) if isinstance(sid, str) else self.savedir
        out = {}
        for config in self.m_configs({})["configs"]:
            if isinstance(sid, str) and not self.sessions.access(sid, "uci", config, "read"):
                continue
            delta = self.delta(config, savedir)
            if delta:
                out[config] = delta
        return {"changes": out}

    def _revert_commit(self, args) -> tuple[str, str, str]:
        """rpc_uci_revert_commit's checks: (config, its file, the savedir)."""
        if self.apply_sid:
            raise UbusStatus(PERMISSION_DENIED)  # an apply awaits confirmation or rollback
        if not isinstance(args.get("config"), str):
            raise UbusStatus(INVALID_ARGUMENT)
        savedir = self._access(args, "write")
        return args["config"], self._path(args["config"]), savedir

    def m_revert(self, args):
        config, _, savedir = self._revert_commit(args)
        path = os.path.join(savedir, config)
        if os.path.exists(path):  # uci_filter_delta opens it without O_CREAT
            open(path, "w").close()
        return None

    def m_commit(self, args):
        config, path, savedir = self._revert_commit(args)
        if self.delta(config, savedir):
            sections, _ = self._view(config, savedir)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(export(sections))
            os.replace(tmp, path)  # a new inode, as rpcd's temp file + rename
            open(os.path.join(savedir, config), "w").close()  # recorded: an empty delta file stays
        self.events.append({"type": "config.change", "data": {"package": config}})
        return None


def _purge_dir(path: str):
    """uci.c's rpc_uci_purge_dir: the directory's regular files, then the directory."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if os.path.isfile(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))
    try:
        os.rmdir(path)
    except OSError:
        pass  # rpcd does not check rmdir: a subdirectory keeps it


def export(sections) -> str:
    """libuci's export layout as a commit writes it (no 'package' line): each section
    opens with a blank line, values in single quotes with ' as '\\'', a final newline."""
    def q(v: str) -> str:
        return "'" + v.replace("'", "'\\''") + "'"

    out = []
    for s in sections:
        out.append(f"\nconfig {s.type}" + ("" if s.anonymous else f" {q(s.name)}") + "\n")
        for k, v in s.options.items():
            for item in (v if isinstance(v, list) else [v]):
                out.append(f"\t{'list' if isinstance(v, list) else 'option'} {k} {q(item)}\n")
    out.append("\n")
    return "".join(out)


def _delta_line(config: str, change: list) -> str:
    op, rest = change[0], change[1:]
    if op in ("set", "add", "list-add", "rename", "list-del") and len(rest) in (2, 3):
        path, value = ".".join([config] + rest[:-1]), rest[-1]
        return f"{_OP_PREFIX[op]}{path}='" + value.replace("'", "'\\''") + "'"
    return _OP_PREFIX[op] + ".".join([config] + rest)


def _parse_delta_line(line: str) -> list:
    line = line.rstrip("\n")
    prefix = line[0] if line[0] in "|-+@~^" else ""
    body = line[len(prefix):]
    path, eq, value = body.partition("=")
    parts = path.split(".")[1:]
    if eq:
        # libuci quoting: '...' pieces, '\'' for a quote
        parts.append("".join(a if a or not b else b for a, b in re.findall(r"'([^']*)'|\\(.)", value)))
    return [_PREFIX[prefix]] + parts


def _values(sec: _Section, index) -> dict:
    out = {".anonymous": sec.anonymous, ".type": sec.type, ".name": sec.name}
    if index is not None:
        out[".index"] = index
    out.update({k: (list(v) if isinstance(v, list) else v) for k, v in sec.options.items()})
    return out


def _matches(sec: _Section, match) -> bool:
    """rpcd's rpc_uci_match_section: keys the section lacks are ignored, at least one
    must be present, and every present one must match an element or a token."""
    if not match:
        return True
    present = False
    for key, want in match.items():
        have = sec.options.get(key)
        if have is None:
            continue
        present = True
        if str(want) not in (have if isinstance(have, list) else have.split()):
            return False
    return present


def _apply(sections: list[_Section], change: list) -> int:
    """Replay one delta entry; returns 1 when it created a section (libuci's counter)."""
    op, name = change[0], change[1]
    sec = next((s for s in sections if s.name == name), None)
    if op == "add":
        sections.append(_Section(change[2], name, True))
        return 1
    if op == "set" and len(change) == 3:
        if sec is None:
            sections.append(_Section(change[2], name, False))
            return 1
        sec.type = change[2]
    elif op == "set" and sec is not None:
        sec.options[change[2]] = change[3]
    elif op == "list-add" and sec is not None:
        old = sec.options.get(change[2])
        if old is None:
            sec.options[change[2]] = [change[3]]
        elif isinstance(old, list):
            old.append(change[3])
        else:
            sec.options[change[2]] = [old, change[3]]
    elif op == "remove" and sec is not None:
        if len(change) == 2:
            sections.remove(sec)
        else:
            sec.options.pop(change[2], None)
    elif op == "rename" and sec is not None:
        if len(change) == 3:
            sec.name, sec.anonymous = change[2], False
        elif change[2] in sec.options:
            sec.options = {(change[3] if k == change[2] else k): v for k, v in sec.options.items()}
    return 0
