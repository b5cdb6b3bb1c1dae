"""zkfsd.sessions.SessionKeeper, the session-expiry rules, driven tick by tick.

The whole-ensemble version of these rules runs in the Raft simulation (test_raft_sim.py); these
tests pin each rule down on its own. Members 1 (the leader here), 2 and 3; timeouts in ticks.
"""
from __future__ import annotations

import pytest

from zkfsd.sessions import ReportAck, SessionKeeper, SessionReport

CUTOFF = 30
EVERY = 5


def keeper(me: int = 1) -> SessionKeeper:
    return SessionKeeper(me, [1, 2, 3], cutoff=CUTOFF, report_every=EVERY)


def leader_with_session(timeout: int = 20, now: int = 0) -> SessionKeeper:
    k = keeper()
    k.opened(7, timeout, now)
    k.set_role(1, now)
    return k


def report_from(k: SessionKeeper, member: int, now: int, covered: int, *sessions: int,
                term: int = 1) -> ReportAck | None:
    return k.on_report(member, SessionReport(term, covered, now, tuple(sessions)), now,
                       lease=True)


def test_a_follower_never_judges() -> None:
    k = keeper()
    k.opened(7, 20, 0)
    assert k.expired(1000, lease=True) == []


def test_no_expiry_without_a_lease() -> None:
    k = leader_with_session()
    for m in (2, 3):
        report_from(k, m, 25, 25)
    assert k.expired(25, lease=False) == []
    assert k.expired(25, lease=True) == [7]


def test_a_new_leader_gives_every_session_a_whole_timeout() -> None:
    k = keeper()
    k.opened(7, 20, 0)
    k.set_role(4, 100)  # becomes leader of term 4 long after the session was created
    for m in (2, 3):
        report_from(k, m, 115, 115, term=4)
    assert k.expired(115, lease=True) == []
    for m in (2, 3):
        report_from(k, m, 120, 120, term=4)
    assert k.expired(120, lease=True) == [7]


def test_deadlines_belong_to_one_term() -> None:
    k = leader_with_session()
    k.set_role(None, 10)  # deposed
    k.set_role(3, 50)  # leads again later: starts afresh, nothing judged from term 1
    assert k.expired(60, lease=True) == []


def test_waits_until_every_member_reported_past_the_deadline() -> None:
    k = leader_with_session()
    report_from(k, 2, 25, 25)
    report_from(k, 3, 25, 19)  # member 3 had not heard anything sent after tick 19
    assert k.expired(25, lease=True) == []
    report_from(k, 3, 27, 21)
    assert k.expired(27, lease=True) == [7]


def test_a_touch_in_a_report_keeps_the_session() -> None:
    k = leader_with_session()
    report_from(k, 2, 15, 14, 7)
    report_from(k, 3, 15, 14)
    for m in (2, 3):
        report_from(k, m, 30, 30)
    assert k.expired(30, lease=True) == []  # deadline moved to 35
    for m in (2, 3):
        report_from(k, m, 36, 36)
    assert k.expired(36, lease=True) == [7]


def test_a_report_of_another_term_touches_but_does_not_cover() -> None:
    k = leader_with_session()
    report_from(k, 2, 25, 25, term=0)
    report_from(k, 3, 25, 25)
    assert k.expired(25, lease=True) == []


def test_a_silent_member_delays_expiry_by_its_cutoff() -> None:
    k = leader_with_session(timeout=20)
    report_from(k, 2, 25, 25)
    report_from(k, 3, 4, 4)  # then member 3 goes silent
    assert k.expired(4 + CUTOFF + 20 - 1, lease=True) == []
    assert k.expired(4 + CUTOFF + 20, lease=True) == [7]


def test_each_expiry_is_reported_once_and_stops_touches() -> None:
    k = leader_with_session()
    for m in (2, 3):
        report_from(k, m, 25, 25)
    assert k.expired(25, lease=True) == [7]
    assert k.expired(26, lease=True) == []
    assert not k.touch(7, 26)
    k.closed(7)
    assert not k.is_live(7)


def test_a_follower_serves_only_with_fresh_acks() -> None:
    k = keeper(me=2)
    k.opened(7, 20, 0)
    assert not k.follower_serving(0)
    k.acknowledged(ReportAck(1, 10))
    assert k.follower_serving(10 + CUTOFF - 1)
    assert not k.follower_serving(10 + CUTOFF)
    k.acknowledged(ReportAck(1, 5))  # a late ack never moves it back
    assert not k.follower_serving(10 + CUTOFF)


def test_touches_are_repeated_until_a_report_holding_them_is_acked() -> None:
    k = keeper(me=2)
    k.opened(7, 20, 0)
    k.opened(8, 20, 0)
    assert k.touch(7, 3)
    first = k.report(1, 2, 5)
    assert first.sessions == (7,)
    assert k.touch(8, 6)
    second = k.report(1, 6, 10)  # the first may be lost or overtaken: 7 goes again
    assert second.sessions == (7, 8)
    k.acknowledged(ReportAck(1, first.sent))
    assert k.report(1, 11, 15).sessions == (8,)
    k.acknowledged(ReportAck(1, second.sent))
    assert k.report(1, 16, 20).sessions == ()


def test_a_touch_of_an_unknown_session_fails() -> None:
    assert not keeper().touch(99, 0)


def test_acks_only_with_a_lease() -> None:
    k = leader_with_session()
    rep = SessionReport(1, 3, 4, ())
    assert k.on_report(2, rep, 5, lease=False) is None
    assert k.on_report(2, rep, 5, lease=True) == ReportAck(1, 4)


def test_wire_round_trip_and_validation() -> None:
    rep = SessionReport(3, 10, 12, (1, 2))
    assert SessionReport.from_wire(rep.to_wire()) == rep
    ack = ReportAck(3, 12)
    assert ReportAck.from_wire(ack.to_wire()) == ack
    for bad in (None, [], [1, 2, 3], [1, 2, 3, "x"], [1, True, 3, []], [1, 2, 3, [1.5]]):
        with pytest.raises(ValueError):
            SessionReport.from_wire(bad)
    for bad in (None, [1], [1, "2"], [1, 2, 3]):
        with pytest.raises(ValueError):
            ReportAck.from_wire(bad)
