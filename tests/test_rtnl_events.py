"""The rtnetlink event filter (rtnl.relevant): which batches of events wake the
daemon for a resync. Our own additions are not news; anything else is. No root:
the messages are built here byte by byte."""

import struct

from wgagent import rtnl, rtnl_rules
from wgagent.model import RTPROT_WGAGENT


def _nlmsg(mtype: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def _rtmsg(proto: int) -> bytes:
    return bytes([2, 32, 0, 0, 254, proto, 0, 1]) + b"\0" * 4


def test_event_filter_ignores_only_our_own_additions():
    assert not rtnl.relevant(_nlmsg(rtnl.RTM_NEWROUTE, _rtmsg(RTPROT_WGAGENT)))
    assert rtnl.relevant(_nlmsg(rtnl.RTM_NEWROUTE, _rtmsg(4)))
    assert rtnl.relevant(_nlmsg(rtnl.RTM_DELROUTE, _rtmsg(RTPROT_WGAGENT)))
    assert rtnl.relevant(_nlmsg(rtnl.RTM_NEWLINK, b"\0" * 16))
    ours = _nlmsg(rtnl.RTM_NEWROUTE, _rtmsg(RTPROT_WGAGENT))
    assert rtnl.relevant(ours + _nlmsg(rtnl.RTM_DELADDR, b"\0" * 8))
    rule_attr = struct.pack("=HHB3x", 5, rtnl_rules.FRA_PROTOCOL, RTPROT_WGAGENT)
    assert not rtnl.relevant(_nlmsg(rtnl.RTM_NEWRULE, b"\0" * 12 + rule_attr))
    other = struct.pack("=HHB3x", 5, rtnl_rules.FRA_PROTOCOL, 3)
    assert rtnl.relevant(_nlmsg(rtnl.RTM_NEWRULE, b"\0" * 12 + other))


def test_event_batches_that_do_not_parse_are_taken_for_a_change():
    ours = _nlmsg(rtnl.RTM_NEWROUTE, _rtmsg(RTPROT_WGAGENT))
    assert not rtnl.relevant(ours)
    assert rtnl.relevant(ours[:-3])  # cut short
    assert rtnl.relevant(_nlmsg(rtnl.RTM_NEWROUTE, b"\x02\x20"))  # no room for the protocol byte
    assert rtnl.relevant(ours + b"\0" * 5)
