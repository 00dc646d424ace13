"""The double's ubusd: object registration, lookup and events, modelled from ubus's
source at 3cc98db (nothing of this is in the recordings):

- ubusd_obj.c (ubusd_create_object, ubusd_free_object): an object has a path, an id
  and its client; paths are unique (a second object of a path is refused:
  ubusd_handle_add_object answers INVALID_ARGUMENT); ubusd announces each object
  with the event `ubus.object.add` {"id", "path"} and, when it goes (removed, or
  its client disconnected), `ubus.object.remove`. Ids are random 32-bit numbers
  (ubusd_id.c), never below UBUS_SYSTEM_OBJECT_MAX (1024).
- ubusd_proto.c (__ubusd_handle_lookup): `ubus list` without a path gives every
  object in path order (strcmp); a path ending in "*" every one it prefixes, else
  that one; none: NOT_FOUND. Objects without a type (no methods declared) are
  left out (ubusd_send_obj).
- ubusd_event.c: a listener registers patterns on an object of its own; one ending
  in "*" matches every event id it prefixes ("*" alone: all), any other only
  itself; an empty one is PERMISSION_DENIED. `send` of an id starting with
  "ubus." is PERMISSION_DENIED (only ubusd sends those). An event reaches each
  listening object once however many of its patterns match, never the sender's
  own objects, in the order of ubusd_send_event's walk over the patterns sorted
  by strcmp, which stops once the length matched against the id shrinks (kept
  as it is: so the real one behaves). Delivery is asynchronous: send returns
  before any listener has read it.
- cli.c: what `ubus list -v`, `listen` and `send` print (in bin/ubus).

Clients are "owners": a connection of the server, or a name for the double's
in-process services (rpcd, netifd), whose objects go when close_owner() is called.
"""

from __future__ import annotations

import secrets
import threading

from .status import INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED

UBUS_SYSTEM_OBJECT_MAX = 1024
# blobmsg types (libubox blobmsg.h), as a method's policy declares them
BLOBMSG_TYPE = {"array": 1, "table": 2, "string": 3, "int64": 4, "int32": 5, "int16": 6, "int8": 7,
                "bool": 7, "double": 8}


class Object:
    __slots__ = ("path", "id", "owner", "handler", "signature")

    def __init__(self, path, oid, owner, handler, signature):
        self.path, self.id, self.owner, self.handler = path, oid, owner, handler
        self.signature = signature  # {method: {arg: blobmsg type number}}, or None: no type


class Listener:
    """A listening client's object: its patterns and where its events go."""

    def __init__(self, owner, deliver):
        self.owner = owner
        self.deliver = deliver  # deliver(event_id, data): queue it for the client
        self.id = None


class Ubusd:
    def __init__(self):
        self.lock = threading.RLock()
        self.paths: dict[str, Object] = {}
        self.ids: set[int] = set()
        self.patterns: list[tuple[str, bool, Listener]] = []  # (key, partial, listener), kept sorted by key

    def _new_id(self) -> int:
        while True:
            oid = secrets.randbits(32)
            if oid >= UBUS_SYSTEM_OBJECT_MAX and oid not in self.ids:
                self.ids.add(oid)
                return oid

    # --- objects

    def add_object(self, path: str, handler, owner, signature: dict | None = None) -> int:
        with self.lock:
            if not path or path in self.paths:
                raise _status(INVALID_ARGUMENT)
            obj = self.paths[path] = Object(path, self._new_id(), owner, handler, signature)
            self._send_obj_event(obj, True)
            return obj.id

    def remove_object(self, path: str) -> None:
        with self.lock:
            obj = self.paths.pop(path)
            self.ids.discard(obj.id)
            self._send_obj_event(obj, False)

    def close_owner(self, owner) -> None:
        """The client disconnected: its objects and its patterns go (ubusd_proto_free_client)."""
        with self.lock:
            for path in [p for p, o in self.paths.items() if o.owner is owner]:
                self.remove_object(path)
            self.patterns = [e for e in self.patterns if e[2].owner is not owner]

    def find(self, path: str) -> Object | None:
        with self.lock:
            return self.paths.get(path)

    def lookup(self, path: str | None) -> list[Object]:
        with self.lock:
            if path is None:
                found = [self.paths[p] for p in sorted(self.paths, key=str.encode)]
            elif path == "":
                raise _status(INVALID_ARGUMENT)
            elif not path.endswith("*"):
                if path not in self.paths:
                    raise _status(NOT_FOUND)
                found = [self.paths[path]]
            else:
                found = [self.paths[p] for p in sorted(self.paths, key=str.encode) if p.startswith(path[:-1])]
                if not found:
                    raise _status(NOT_FOUND)
            return [o for o in found if o.signature is not None]

    # --- events

    def register(self, listener: Listener, pattern: str) -> None:
        """ubusd_alloc_event_pattern."""
        with self.lock:
            if listener.id is None:
                listener.id = self._new_id()
            if not pattern:
                raise _status(PERMISSION_DENIED)
            partial = pattern.endswith("*")
            key = pattern[:-1] if partial else pattern
            self.patterns.append((key, partial, listener))
            # avl_strcmp order; equal keys after the ones already there (avl dup insert)
            self.patterns.sort(key=lambda e: e[0].encode())

    def send(self, sender, event_id: str, data: dict) -> None:
        """ubusd_forward_event: a client's `ubus send`."""
        if event_id.startswith("ubus."):
            raise _status(PERMISSION_DENIED)
        self._send(sender, event_id, data)

    def _send(self, sender, event_id: str, data: dict) -> None:
        """ubusd_send_event: the walk over the sorted patterns."""
        with self.lock:
            seen: set[int] = set()
            match_len = 0
            for key, partial, listener in list(self.patterns):
                full, cur = _strmatch_len(event_id, key)
                if cur < match_len:
                    break
                match_len = cur
                if not full and (not partial or match_len != len(key.encode())):
                    continue
                if listener.owner is sender or id(listener) in seen:
                    continue  # no loop back; one event per listening object
                seen.add(id(listener))
                listener.deliver(event_id, data)

    def _send_obj_event(self, obj: Object, add: bool) -> None:
        self._send(None, "ubus.object.add" if add else "ubus.object.remove", {"id": obj.id, "path": obj.path})


def _strmatch_len(s1: str, s2: str) -> tuple[bool, int]:
    """ubus_common.h's ubus_strmatch_len, on bytes: (equal, length of the common prefix)."""
    a, b = s1.encode(), s2.encode()
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return (n == len(a) == len(b)), n


def _status(code: int):
    from .status import UbusStatus

    return UbusStatus(code)
