"""A test double of rpcd's `uci` ubus object, following the behaviour recorded from
the real rpcd in shared/openwrt/rpcd-uci/ (01..07). What it reproduces:

- add with a name is an upsert: it never fails when the name exists, silently
  changes an existing section's type, and APPENDS array values to an existing list;
  add without a name makes an anonymous cfgXXXXXX section; add to a config file that
  does not exist is NOT_FOUND (4); a bad type, name or option name is
  INVALID_ARGUMENT (2) and nothing of the call is applied;
- set with an array replaces the whole list (a "remove" then one "list-add" per
  element in the delta), a scalar turns a list into an option, "" deletes the
  option, booleans become "1"/"0" and integers their digits, while doubles, nested
  tables and null are INVALID_ARGUMENT; set on a missing section is NOT_FOUND and
  creates nothing;
- get of a missing section or option answers status 0 with no data; get of a
  config lists every section with .anonymous/.type/.name/.index;
- delete of a section, an option, or options[] (missing ones skipped, all missing
  NOT_FOUND); delete by type+match ignores match keys a section lacks (the trap);
- changes lists the pending delta, which lives outside the file and is shared by
  every caller without a session (as /tmp/.uci is with the uci CLI); revert drops
  it; commit applies it to the file (rewriting it whole, dropping # comments),
  returns no data, leaves the file untouched when nothing is pending, and counts a
  config.change event either way.
"""

from __future__ import annotations

import itertools
import os
import re
import threading

from wgagent import uci

OK, INVALID_COMMAND, INVALID_ARGUMENT, METHOD_NOT_FOUND, NOT_FOUND = 0, 1, 2, 3, 4
STATUS_TEXT = {0: "Success", 1: "Invalid command", 2: "Invalid argument", 3: "Method not found",
               4: "Not found", 5: "No response", 6: "Permission denied", 7: "Request timed out",
               8: "Operation not supported", 9: "Unknown error", 10: "Connection failed",
               11: "Out of memory", 12: "Parsing message data failed", 13: "System error"}
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")
_CONFIG = re.compile(r"[A-Za-z0-9_-]+\Z")


class UbusStatus(Exception):
    def __init__(self, status: int):
        super().__init__(STATUS_TEXT[status])
        self.status = status


class RpcdUci:
    def __init__(self, confdir: str):
        self.confdir = confdir
        self.pending: dict[str, list[list]] = {}  # config -> delta (no session: shared by all)
        self.events: list[dict] = []  # config.change notifications sent to procd
        self.calls: list[tuple[str, dict]] = []  # every call, for tests to inspect
        self.fail_after: int | None = None  # fault injection: fail the Nth write call from now
        self.lock = threading.Lock()
        self._anon = itertools.count(0x1592bd)

    # --- dispatch

    def call(self, method: str, args) -> dict | None:
        with self.lock:
            if not isinstance(args, dict):
                raise UbusStatus(INVALID_ARGUMENT)
            handler = getattr(self, "m_" + method, None)
            if handler is None:
                raise UbusStatus(METHOD_NOT_FOUND)
            self.calls.append((method, args))
            if method in ("add", "set", "delete") and self.fail_after is not None:
                if self.fail_after == 0:
                    self.fail_after = None
                    raise UbusStatus(9)
                self.fail_after -= 1
            return handler(args)

    # --- storage: the file, and the file with the delta applied

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

    def _file_sections(self, config: str) -> list[uci.UciSection]:
        with open(self._path(config)) as f:
            return uci.parse(f.read(), config)

    def _view(self, config: str) -> list[uci.UciSection]:
        sections = self._file_sections(config)
        for sec in sections:
            if sec.name is None:
                sec.name = f"cfg{abs(hash((config, sec.index, sec.type))) % 0xffffff:06x}"
        for change in self.pending.get(config, []):
            _apply(sections, change)
        return sections

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
            if isinstance(v, list):
                items = [self._value(x) for x in v]
                if replace_lists and existing is not None and opt in existing.options:
                    out.append(["remove", name, opt])
                out += [["list-add", name, opt, x] for x in items]
            else:
                value = self._value(v)
                out.append(["remove", name, opt] if value == "" else ["set", name, opt, value])
        return out

    def _stage(self, config: str, changes: list[list]):
        self.pending.setdefault(config, []).extend(changes)

    # --- methods

    def m_configs(self, args):
        return {"configs": sorted(os.listdir(self.confdir))}

    def m_get(self, args):
        sections = self._view(args.get("config"))
        if "section" not in args:
            want_type = args.get("type")
            return {"values": {s.name: _values(s, i) for i, s in enumerate(sections)
                               if want_type is None or s.type == want_type}}
        sec = self._find(sections, args["section"])
        if sec is None:
            return None
        if "option" in args:
            value = sec.options.get(args["option"])
            return None if value is None else {"value": value}
        v = _values(sec, None)
        return {"values": v}

    def m_add(self, args):
        config, stype, name = args.get("config"), args.get("type"), args.get("name")
        if not isinstance(stype, str) or not _TYPE.match(stype):
            self._path(config)
            raise UbusStatus(INVALID_ARGUMENT)
        sections = self._view(config)
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise UbusStatus(INVALID_ARGUMENT)
        if name is None:
            name = f"cfg{next(self._anon):06x}"
            head = [["add", name, stype]]
            existing = None
        else:
            head = [["set", name, stype]]
            existing = self._find(sections, name)
        # add never replaces a list: array values are appended (the upsert trap)
        changes = head + self._changes_for_values(name, args.get("values", {}), existing, replace_lists=False)
        self._stage(config, changes)
        return {"section": name}

    def m_set(self, args):
        config, section, values = args.get("config"), args.get("section"), args.get("values")
        if values is None or (section is None and "type" not in args):
            raise UbusStatus(INVALID_ARGUMENT)
        if section is not None and (not isinstance(section, str)
                                    or not (_NAME.match(section) or section.startswith("@"))):
            raise UbusStatus(INVALID_ARGUMENT)
        sections = self._view(config)
        if section is None:  # type + match: every matching section
            targets = [s for s in sections if s.type == args["type"] and _matches(s, args.get("match", {}))]
        else:
            sec = self._find(sections, section)
            if sec is None:
                raise UbusStatus(NOT_FOUND)
            targets = [sec]
        changes = []
        for sec in targets:
            changes += self._changes_for_values(sec.name, values, sec, replace_lists=True)
        self._stage(config, changes)
        return None

    def m_delete(self, args):
        config = args.get("config")
        section = args.get("section")
        if section is None and "type" not in args:
            self._path(config)
            raise UbusStatus(INVALID_ARGUMENT)
        sections = self._view(config)
        if section is None:
            # the recorded trap: match keys that a section lacks are ignored
            targets = [s for s in sections if s.type == args["type"]
                       and all(s.options.get(k) in (None, v) for k, v in args.get("match", {}).items())]
            self._stage(config, [["remove", s.name] for s in targets])
            return None
        sec = self._find(sections, section)
        if sec is None:
            raise UbusStatus(NOT_FOUND)
        if "option" in args:
            if args["option"] not in sec.options:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["remove", sec.name, args["option"]]])
        elif "options" in args:
            present = [o for o in args["options"] if o in sec.options]
            if not present:
                raise UbusStatus(NOT_FOUND)
            self._stage(config, [["remove", sec.name, o] for o in present])
        else:
            self._stage(config, [["remove", sec.name]])
        return None

    def m_changes(self, args):
        if "config" not in args:
            return {"changes": {c: d for c, d in self.pending.items() if d}}
        self._path(args["config"])
        return {"changes": list(self.pending.get(args["config"], []))}

    def m_revert(self, args):
        self._path(args.get("config"))
        self.pending.pop(args["config"], None)
        return None

    def m_commit(self, args):
        config = args.get("config")
        path = self._path(config)
        if self.pending.get(config):
            sections = self._view(config)
            for s in sections:  # anonymous sections stay anonymous in the file
                if s.name and re.match(r"cfg[0-9a-f]{6}\Z", s.name):
                    s.name = None
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write("\n" + uci.render(sections))
            os.replace(tmp, path)  # a new inode, as rpcd's temp file + rename
            self.pending[config] = []
        self.events.append({"type": "config.change", "data": {"package": config}})
        return None


def _values(sec: uci.UciSection, index) -> dict:
    out = {".anonymous": bool(re.match(r"cfg[0-9a-f]{6}\Z", sec.name or "")), ".type": sec.type, ".name": sec.name}
    if index is not None:
        out[".index"] = index
    out.update({k: (list(v) if isinstance(v, list) else v) for k, v in sec.options.items()})
    return out


def _matches(sec, match: dict) -> bool:
    return all(sec.options.get(k) == v for k, v in match.items())


def _apply(sections: list[uci.UciSection], change: list):
    op, name = change[0], change[1]
    sec = next((s for s in sections if s.name == name), None)
    if op == "add":
        sections.append(uci.UciSection(change[2], name, 0, 0))
    elif op == "set" and len(change) == 3:
        if sec is None:
            sections.append(uci.UciSection(change[2], name, 0, 0))
        else:
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
