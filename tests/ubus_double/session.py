"""A test double of rpcd's `session` ubus object. No transcript records it: it is
modelled from rpcd's source at the recorded commit 4476687 (session.c; the savedir
purge is uci.c's) and libubox 1aa36ee (uloop.c), function by function:

- create {timeout}: rpc_handle_create / rpc_session_create. The id is 32 hex digits
  (rpc_random: 16 bytes of /dev/urandom); `timeout` counts only as an INT32 (a JSON
  integer that fits; blobmsg_parse skips any other type), else
  RPC_DEFAULT_SESSION_TIMEOUT (300). The reply is rpc_session_dump's:
  {ubus_rpc_session, timeout, expires, acls, data}. timeout <= 0 sets no timer: the
  session never expires (rpc_touch_session).
- Every look-up of a session touches it (rpc_session_get -> rpc_touch_session): the
  timeout counts from the last call that named it, uci calls included
  (rpc_session_access). At its deadline uloop destroys it (rpc_session_timeout ->
  rpc_session_destroy), which runs the destroy callbacks: uci.c's
  rpc_uci_purge_savedir_cb removes /var/run/rpcd/uci-<id> (its files, then the
  directory). Here expire() does what uloop's timer does; every call runs it first.
- grant / revoke {ubus_rpc_session, scope, objects}: rpc_handle_acl. scope defaults
  to "ubus"; objects is an array of [object, function] arrays (other elements
  skipped, a third string ignored); grant without objects is INVALID_ARGUMENT
  (rpc_session_grant with no object), revoke without objects drops the scope.
- access {ubus_rpc_session, scope, object, function}: rpc_handle_access,
  {"access": bool}; rpc_session_acl_allowed matches object and function as fnmatch
  patterns (FNM_NOESCAPE).
- list {ubus_rpc_session}: rpc_handle_list for one session; destroy:
  rpc_handle_destroy. The default session (all zeros, with the ACLs of rpcd's
  unauthenticated.json) cannot be destroyed (PERMISSION_DENIED).
- Missing ubus_rpc_session (or not a string): INVALID_ARGUMENT; an unknown one:
  NOT_FOUND.

- What a login grants (rpc_login_setup_acls, setup_acls() here, without the login
  call itself): every /usr/share/rpcd/acl.d/*.json in glob order, each a JSON
  object of access groups; per group only "read" and "write" (tables) count, each
  only if the login's list of that name allows the group (rpc_login_test_permission:
  fnmatch patterns, "!pattern" denying first, write implying read); in it each scope
  is either a table of object -> [function, ...] (strings only) granting those, or
  an array of objects granting each with the permission's name as function; every
  scope granted also grants ("access-group", group, permission). A file that is no
  JSON object is skipped ("Failed to parse").

Left out: list without a session (rpcd answers once per session: the double's
server gives one answer per call), set, get, unset and login (METHOD_NOT_FOUND here,
unlike rpcd), and freeze/thaw across an rpcd SIGHUP (rpc_session_freeze keeps no
ACLs: a thawed session without a login user comes back with none).

Both transports reach it as they reach the uci object: the CLI stand-in and the
python-ubus stand-in pass any object's calls through the double's server.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
import tempfile
import threading
import time

from .status import INVALID_ARGUMENT, METHOD_NOT_FOUND, NOT_FOUND, PERMISSION_DENIED, UbusStatus

DEFAULT_TIMEOUT = 300  # RPC_DEFAULT_SESSION_TIMEOUT (include/rpcd/session.h)
DEFAULT_ID = "0" * 32  # RPC_DEFAULT_SESSION_ID
INT_MAX = 2**31 - 1
# the default session's ACLs: rpc_login_setup_acls(ses, NULL) grants the acl.d groups an
# unauthenticated caller has; rpcd's own unauthenticated.json, and its access-group entry
UNAUTHENTICATED = {"access-group": [("unauthenticated", "read")],
                   "ubus": [("session", "access"), ("session", "login")]}


def _is_int32(v) -> bool:
    """A JSON integer that blobmsg_add_json_element makes an INT32 (bool is BOOL)."""
    return isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31


def _tv_diff_ms(t1_us: int, t2_us: int) -> int:
    """uloop.c's tv_diff: seconds and microseconds apart, each truncated toward zero."""
    s1, u1 = divmod(t1_us, 1_000_000)
    s2, u2 = divmod(t2_us, 1_000_000)
    du = u1 - u2
    return (s1 - s2) * 1000 + (abs(du) // 1000) * (1 if du >= 0 else -1)


class _Session:
    __slots__ = ("id", "timeout", "deadline", "acls", "data")

    def __init__(self, sid: str, timeout: int):
        self.id, self.timeout = sid, timeout
        self.deadline: int | None = None  # microseconds on the double's clock; None: no timer
        self.acls: dict[str, list[tuple[str, str]]] = {}  # scope -> [(object, function)] in grant order
        self.data: dict = {}


class RpcdSession:
    def __init__(self, rundir: str | None = None):
        self.rundir = rundir or tempfile.mkdtemp(prefix="rpcd-run-")  # /var/run/rpcd
        os.makedirs(self.rundir, exist_ok=True)
        self.clock = time.monotonic  # uloop's CLOCK_MONOTONIC; a test may set its own
        self.on_destroy: list = []  # rpc_session_destroy_cb: called with the session id
        self.lock = threading.RLock()  # rpcd is one uloop: the uci object shares this lock
        self.sessions: dict[str, _Session] = {}
        default = self.sessions[DEFAULT_ID] = _Session(DEFAULT_ID, 0)
        default.acls = {scope: list(objs) for scope, objs in UNAUTHENTICATED.items()}

    def _now(self) -> int:
        return int(self.clock() * 1_000_000)

    def savedir(self, sid: str) -> str:
        """RPC_UCI_SAVEDIR_PREFIX "%s" (include/rpcd/uci.h): /var/run/rpcd/uci-<id>."""
        return os.path.join(self.rundir, "uci-" + sid)

    # --- the life of a session

    def _touch(self, ses: _Session):
        # rpc_touch_session -> uloop_timeout_set(rpc_session_timeout_ms(timeout))
        if ses.timeout > 0:
            ses.deadline = self._now() + min(ses.timeout * 1000, INT_MAX) * 1000

    def _destroy(self, ses: _Session):
        for cb in self.on_destroy:
            cb(ses.id)
        del self.sessions[ses.id]

    def expire(self):
        """What uloop_process_timeouts does: destroy each session whose deadline has
        come (tv_diff(deadline, now) <= 0)."""
        with self.lock:
            now = self._now()
            for ses in [s for s in self.sessions.values() if s.deadline is not None]:
                if _tv_diff_ms(ses.deadline, now) <= 0:
                    self._destroy(ses)

    def get(self, sid) -> _Session | None:
        """rpc_session_get: the session, touched; None when there is none."""
        ses = self.sessions.get(sid) if isinstance(sid, str) else None
        if ses is not None:
            self._touch(ses)
        return ses

    def access(self, sid, scope: str, obj: str, function: str) -> bool:
        """rpc_session_access, as uci.c's rpc_uci_read_access/write_access ask it."""
        with self.lock:
            self.expire()
            ses = self.get(sid)
            return ses is not None and _allowed(ses, scope, obj, function)

    # --- the methods

    def call(self, method: str, args) -> dict | None:
        with self.lock:
            self.expire()
            if not isinstance(args, dict):
                raise UbusStatus(INVALID_ARGUMENT)
            handler = getattr(self, "m_" + method, None)
            if handler is None:
                raise UbusStatus(METHOD_NOT_FOUND)
            return handler(args)

    def _dump(self, ses: _Session, acls: bool = True) -> dict:
        # rpc_session_to_blob; expires: uloop_timeout_remaining64 / 1000, -1 / 1000 = 0
        # in C when no timer is set
        remaining = _tv_diff_ms(ses.deadline, self._now()) if ses.deadline is not None else -1
        out = {"ubus_rpc_session": ses.id, "timeout": ses.timeout, "expires": int(remaining / 1000)}
        if acls:
            out["acls"] = {scope: _grouped(objs) for scope, objs in sorted(ses.acls.items())}
        out["data"] = dict(ses.data)
        return out

    def _sid(self, args) -> _Session:
        sid = args.get("ubus_rpc_session")
        if not isinstance(sid, str):
            raise UbusStatus(INVALID_ARGUMENT)
        ses = self.get(sid)
        if ses is None:
            raise UbusStatus(NOT_FOUND)
        return ses

    def m_create(self, args):
        timeout = args.get("timeout")
        timeout = timeout if _is_int32(timeout) else DEFAULT_TIMEOUT
        sid = secrets.token_hex(16)
        ses = self.sessions[sid] = _Session(sid, timeout)
        self._touch(ses)
        return self._dump(ses)

    def m_list(self, args):
        if not isinstance(args.get("ubus_rpc_session"), str):
            raise NotImplementedError("session list of every session (one reply each) is left out")
        return self._dump(self._sid(args))

    def _acl(self, args, grant: bool):
        ses = self._sid(args)
        scope = args.get("scope") if isinstance(args.get("scope"), str) else "ubus"
        objects = args.get("objects")
        if not isinstance(objects, list):
            if grant:
                raise UbusStatus(INVALID_ARGUMENT)  # rpc_session_grant(ses, scope, NULL, NULL)
            ses.acls.pop(scope, None)  # rpc_session_revoke with no object: the whole scope
            return None
        for entry in objects:
            if not isinstance(entry, list):
                continue
            strings = [x for x in entry if isinstance(x, str)][:2]
            if len(strings) < 2:
                continue
            acl = (strings[0], strings[1])
            have = ses.acls.setdefault(scope, [])
            if grant and acl not in have:
                have.append(acl)
            elif not grant and acl in have:
                have.remove(acl)
        if not grant and not ses.acls.get(scope):
            ses.acls.pop(scope, None)
        return None

    def m_grant(self, args):
        return self._acl(args, grant=True)

    def m_revoke(self, args):
        return self._acl(args, grant=False)

    def m_access(self, args):
        ses = self._sid(args)
        obj, function = args.get("object"), args.get("function")
        if isinstance(obj, str) and isinstance(function, str):
            scope = args.get("scope") if isinstance(args.get("scope"), str) else "ubus"
            return {"access": _allowed(ses, scope, obj, function)}
        return {scope: _grouped(objs) for scope, objs in sorted(ses.acls.items())}

    def m_destroy(self, args):
        sid = args.get("ubus_rpc_session")
        if not isinstance(sid, str):
            raise UbusStatus(INVALID_ARGUMENT)
        if sid == DEFAULT_ID:
            raise UbusStatus(PERMISSION_DENIED)
        self._destroy(self._sid(args))
        return None


def setup_acls(sessions: RpcdSession, sid: str, acl_dir: str, login: dict[str, list[str]]) -> None:
    """rpc_login_setup_acls for a login section whose lists are login["read"] and
    login["write"] (rpcd's `config login` ... `list read '*'`)."""
    import glob
    import json

    with sessions.lock:
        ses = sessions.sessions[sid]
        for path in sorted(glob.glob(os.path.join(acl_dir, "*.json"))):
            try:
                with open(path) as f:
                    groups = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(groups, dict):
                continue
            for group, perms in groups.items():
                if not isinstance(perms, dict):
                    continue
                for perm, scopes in perms.items():
                    if perm not in ("read", "write") or not isinstance(scopes, dict):
                        continue
                    if not _login_allows(login, perm, group):
                        continue
                    for scope, objs in scopes.items():
                        if isinstance(objs, dict):
                            for obj, functions in objs.items():
                                if isinstance(functions, list):
                                    for fn in functions:
                                        if isinstance(fn, str):
                                            _grant(ses, scope, obj, fn)
                        elif isinstance(objs, list):
                            for obj in objs:
                                if isinstance(obj, str):
                                    _grant(ses, scope, obj, perm)
                        _grant(ses, "access-group", group, perm)


def _grant(ses: _Session, scope: str, obj: str, function: str) -> None:
    have = ses.acls.setdefault(scope, [])
    if (obj, function) not in have:
        have.append((obj, function))


def _login_allows(login: dict, perm: str, group: str) -> bool:
    """rpc_login_test_permission."""
    patterns = login.get(perm, [])
    for p in patterns:
        if p.startswith("!") and p[1:].strip() and fnmatch.fnmatchcase(group, p[1:].strip()):
            return False
    if any(p and not p.startswith("!") and fnmatch.fnmatchcase(group, p) for p in patterns):
        return True
    return perm == "read" and _login_allows(login, "write", group)


def _allowed(ses: _Session, scope: str, obj: str, function: str) -> bool:
    """rpc_session_acl_allowed: object and function matched as fnmatch patterns."""
    return any(fnmatch.fnmatchcase(obj, o) and fnmatch.fnmatchcase(function, f) for o, f in ses.acls.get(scope, ()))


def _grouped(objs) -> dict:
    """rpc_session_dump_acls: {object: [functions]}, in the order of the scope's avl
    tree: keyed by the object up to its first wildcard (uh_id_len), equal keys in
    the order granted."""
    out: dict[str, list[str]] = {}
    for o, f in sorted(objs, key=lambda acl: _prefix(acl[0])):
        out.setdefault(o, []).append(f)
    return out


def _prefix(obj: str) -> str:
    """uh_id_len: the object up to its first wildcard character."""
    for i, c in enumerate(obj):
        if c in "*?[":
            return obj[:i]
    return obj
