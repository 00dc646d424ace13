"""The reconciler: desired state against what the kernel holds under our tag.

It keeps the kernel view as last read and updates it with its own changes, so an
unchanged pass costs no dump. Whatever made the view doubtful (a failed or refused
change, a route that appeared between our read and our write) sets `dirty`, and
the daemon reads the kernel again before the next plan: that re-read and re-plan
is the retry. Only routes and rules with our protocol tag are ever changed.
"""

from __future__ import annotations

import errno
import os

from .observer import KernelView
from .model import Route
from .policy import Desired, RoutePlan, RulePlan, conflicting, date_foreign, plan_routes, plan_rules
from .reporter import Reporter, owner

GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)  # a delete of what is already gone: done
# The kernel's answers that make a rule change done: a rule already there (its key
# includes our protocol, so it is ours) is added; one already gone is deleted.
RULE_DONE = {"add": (0, errno.EEXIST), "delete": (0, errno.ENOENT, errno.ESRCH)}
RULE_FAILED = {"add": "rule_add_failed", "delete": "rule_remove_failed"}


class Reconciler:
    def __init__(self, rtnl, reporter: Reporter):
        self.rtnl = rtnl
        self.reporter = reporter
        self.view = KernelView()
        self.read = False  # the kernel read at least once
        self.dirty = True
        # The route plan's difference kept between passes (W: the routes wanted, H: the
        # view's owned): missing = W - H, extra = H - W, as of the Desired routes and the
        # view in basis. While both stand (no fresh read, no unreadable interface),
        # a pass moves them by what the tracker says changed in W (Desired.routes_delta)
        # and apply by what it did to H: no walk over every route.
        self._missing: set[Route] = set()
        self._extra: set[Route] = set()
        self._basis: tuple = (0, None, None)  # (Desired.serial, Desired.path_routes, view)

    def seen(self, view: KernelView) -> None:
        """A fresh read of the kernel. The routes of others keep the date they were
        first seen (the hand-off compares it with handshakes); in the first read,
        those beside a route we adopted count as older than any handshake."""
        view.foreign = date_foreign(self.view.foreign if self.read else None, view.foreign, view.read_at,
                                    {r.slot for r in view.owned})
        self.view = view
        self.read = True
        self.dirty = False

    def note(self, events, mono: float) -> None:
        """Routes of others that appeared, changed or went in slots of interest
        (rtnl.RouteEvent), applied to the view without a dump. A route is one per
        (slot, metric): an RTM_NEWROUTE replaces what sat there (a changed next hop is
        a new route, dated now), a non-unicast one (Babel's unreachable) only removes
        it. One that replaced a route of ours (the same metric: BIRD's IPv4 replace
        does not check the protocol) leaves the view dirty: read it all again."""
        foreign = self.view.foreign
        for ev in events:
            f = ev.route
            here = foreign.get(ev.slot, ())
            if ev.deleted:
                rest = tuple(x for x in here if not (x.metric == f.metric and x.proto == f.proto))
            else:
                if any(r.slot == ev.slot and r.metric == f.metric for r in self.view.owned):
                    self.dirty = True
                rest = tuple(x for x in here if x.metric != f.metric)
                if ev.unicast:
                    before = next((x.since for x in here if x.key == f.key), mono)
                    rest += (f._replace(since=before),)
            if rest:
                foreign[ev.slot] = rest
            else:
                foreign.pop(ev.slot, None)

    def plan(self, desired: Desired, keep: set[str], yield_to=lambda ifname: frozenset()) -> tuple[RoutePlan, RulePlan]:
        """keep: interfaces whose routes stay as they are (unreadable this pass);
        yield_to(ifname): the protocols whose routes beside ours are no conflict."""
        view = self.view
        routes, paths = desired.routes, desired.path_routes
        added = desired.routes_added
        basis_serial, basis_paths, basis_view = self._basis
        self._basis = (desired.serial, paths, view) if not keep else (0, None, None)
        if keep or added is None or desired.serial != basis_serial + 1 or basis_view is not view:
            wanted = set(routes)
            wanted.update(paths)
            self._missing, self._extra = wanted - view.owned, view.owned - wanted
            return (plan_routes(wanted, view.owned, conflicting(wanted, view.foreign, yield_to), keep),
                    plan_rules(desired.rules, view.rules))
        owned, missing, extra = view.owned, self._missing, self._extra
        removed = desired.routes_gone.keys()
        if paths is not basis_paths and paths != basis_paths:
            added = added | (paths.keys() - basis_paths.keys())
            removed = removed | (basis_paths.keys() - paths.keys())
        for route in added:
            extra.discard(route)
            if route not in owned:
                missing.add(route)
        for route in removed:
            if route not in routes and route not in paths:
                missing.discard(route)
                if route in owned:
                    extra.add(route)
        foreign = view.foreign
        # only wanted routes in a slot of other protocols' can conflict
        near = desired.routes_in(foreign.keys()) + [r for r in paths if r.slot in foreign] if foreign else []
        held = conflicting(near, foreign, yield_to) if near else {}
        plan = RoutePlan()
        if held:
            taken = {r for r in near if r.slot in held}
            plan.conflicts = [(r, held[r.slot]) for r in sorted(taken)]
            plan.add = sorted(missing - taken)
            plan.delete = sorted(extra | (taken & owned))
        else:
            plan.add, plan.delete = sorted(missing), sorted(extra)
        return plan, plan_rules(desired.rules, view.rules)

    def apply(self, plan: RoutePlan, rule_plan: RulePlan, links, desired: Desired, previous: Desired) -> dict:
        """Make the changes; returns {(event, interface, owner): [route or rule]} of
        those done. A change that fails is reported once per error and leaves the
        view dirty. OSError only when the netlink socket itself fails (the view is
        then dirty too)."""
        done: dict[tuple[str, str, str], list] = {}

        def note(event, item, iface=""):
            done.setdefault((event, iface, owner(item, desired, previous)), []).append(item)

        self.dirty = True  # until the changes are through: an exception midway leaves it so
        failed: list = []  # said at the end, also when the socket fails midway: bursts summed up
        try:
            self.dirty = not self._apply(plan, rule_plan, links, note, failed)
        finally:
            self.reporter.changes_failed(failed)
        return done

    def _apply(self, plan: RoutePlan, rule_plan: RulePlan, links, note, failed: list) -> bool:
        removed = self._rules("delete", rule_plan.delete, failed)
        for rule in removed:
            self.view.rules.discard(rule)
            note("rule_removed", rule)
        ok = len(removed) == len(rule_plan.delete)
        changes = [("delete", r, links[r.ifname].index if r.ifname in links else None) for r in plan.delete]
        # a device that is down takes no routes (the kernel refuses them, and flushed its
        # own when it went down): they are added when its RTM_NEWLINK says it is up
        changes += [("add", r, links[r.ifname].index) for r in plan.add if r.ifname in links and links[r.ifname].up]
        for (verb, route, _), code in zip(changes, self.rtnl.apply_routes(changes)):
            key = (verb, route)
            if code == errno.EEXIST:
                # somebody added the same route between our read and our write: re-read
                # before believing it is ours
                ok = False
            elif code and not (verb == "delete" and code in GONE):
                ok = False
                failed.append((f"route_{'add' if verb == 'add' else 'remove'}_failed", key, code, "",
                               {"iface": route.ifname, "prefix": route.prefix,
                                "table": self.reporter.table_name(route.table)}))
            elif verb == "add":
                self.reporter.change_done(key)
                self.view.owned.add(route)
                self._missing.discard(route)
                note("route_added", route, route.ifname)
            else:
                self.reporter.change_done(key)
                self.view.owned.discard(route)
                self._extra.discard(route)
                note("route_removed", route, route.ifname)
        added = self._rules("add", rule_plan.add, failed)
        for rule in added:
            self.view.rules.add(rule)
            note("rule_added", rule)
        return ok and len(added) == len(rule_plan.add)

    def _rules(self, verb: str, rules: list, failed: list) -> list:
        """Rule changes of one verb, in batches; returns the rules done. A refused one
        is reported once per error and retried after the next read of the kernel."""
        done = []
        for rule, (code, error) in zip(rules, self._send_rules(verb, rules)):
            key = (f"{verb}_rule", rule)
            if not error:
                self.reporter.change_done(key)
                done.append(rule)
            else:
                failed.append((RULE_FAILED[verb], key, code, error, {"rule": rule.describe()}))
        return done

    def _send_rules(self, verb: str, rules: list) -> list[tuple[int, str]]:
        """(errno, error) per rule change, in batches; the error is "" for a change done
        (RULE_DONE). A socket that fails (no answer, a cut or malformed one) fails every
        change of the call with its error: the kernel may have made some of them, and
        the next read of it tells which."""
        if not rules:
            return []
        try:
            codes = self.rtnl.apply_rules([(verb, rule) for rule in rules])
        except OSError as e:
            return [(e.errno, str(e))] * len(rules)
        # a refusal reads as the OSError of the kernel's errno, as these lines always have
        return [(code, "" if code in RULE_DONE[verb] else f"[Errno {code}] {os.strerror(code)}") for code in codes]

    def remove_owned(self, log) -> int:
        """Remove every route and rule with our tag (on stop): read fresh, not from
        memory. Raises OSError when the kernel cannot be read: then nothing is removed
        that we could not vouch for."""
        links = self.rtnl.links()
        owned = self.rtnl.routes({link.index: name for name, link in links.items()}).owned
        rules = self.rtnl.rules()
        n = 0
        # one that cannot go must not keep the others (or the routes)
        for rule, (code, error) in zip(rules, self._send_rules("delete", rules)):
            if error:
                log.warning("rule_remove_failed", rule=rule.describe(), error=error)
            elif code == 0:  # not one that was already gone
                n += 1
        changes = [("delete", r, links[r.ifname].index if r.ifname in links else None) for r in owned]
        n += sum(code == 0 for code in self.rtnl.apply_routes(changes))
        if owned:
            log.info("routes_removed_on_stop", count=len(owned),
                     prefixes=",".join(r.prefix for r in sorted(owned)[:20]) + (",…" if len(owned) > 20 else ""))
        if rules:
            log.info("rules_removed_on_stop", count=len(rules))
        return n

