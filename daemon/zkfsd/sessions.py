"""Session liveness: when may a session be expired? Sans-IO, shared by the server and the
simulation tests.

The set of live sessions and their timeouts is replicated state (createSession/closeSession in
the log, `opened`/`closed` here as they are applied). Who touched which session when is local to
each member. Time is the member's Raft tick count (`RaftNode.ticks`, kept in step with real time
by the server), passed in; nothing here reads a clock.

The rules, which together keep a session that a client keeps pinging through any member alive
whatever the members go through (pauses, kills, partitions, leader changes):

- Deadlines belong to a leadership term. A member that becomes leader starts every session
  afresh (deadline = now + timeout): it cannot know when clients last spoke to its predecessor.
  A member that is not leader has no deadlines at all, so a stale view can never judge.
- Only a leader that holds its lease (`RaftNode.has_lease`: no other leader can exist) proposes
  expiries, so a deposed leader proposes none.
- Followers report to the leader every `report_every` ticks, even when nothing was touched:
  the sessions touched through them since their last acknowledged report (so a report that is
  lost or overtaken by a later one loses nothing), the newest leader tick they had heard
  (`covered`) and their own tick (`sent`). The leader acknowledges a report (echoing `sent`) only while it holds its
  lease. A follower serves clients only while its newest acknowledged report was sent less than
  `cutoff` ticks ago, so a follower cut off from the leader stops serving within `cutoff` ticks
  of its last report that reached it. A leader serves while it leads; check-quorum steps it
  down within two election timeouts of losing its majority, and `cutoff` is at least that.
- The leader expires session s (deadline d, timeout t) at tick `now` only when d <= now and,
  for every other member m, either m's reports cover d (m heard the leader at or after d and
  then reported everything it saw: nothing for s), or m cannot have served anybody for t ticks:
  now >= (last report from m) + cutoff + t. The leader's view is then at least as fresh as
  that of every member that could be serving the session.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_NEVER = -(1 << 62)


@dataclass(frozen=True, slots=True)
class SessionReport:
    """Follower -> leader: sessions touched here since the last acknowledged report."""

    term: int
    covered: int  # the newest leader tick this member had heard when sending
    sent: int  # this member's tick when sending; the leader echoes it in its ack
    sessions: tuple[int, ...]

    def to_wire(self) -> list[Any]:
        return [self.term, self.covered, self.sent, list(self.sessions)]

    @classmethod
    def from_wire(cls, obj: Any) -> SessionReport:
        if not isinstance(obj, list) or len(obj) != 4:
            raise ValueError("session report: expected [term, covered, sent, sessions]")
        term, covered, sent, sessions = obj
        if not all(_is_int(v) for v in (term, covered, sent)):
            raise ValueError("session report: term, covered and sent must be integers")
        if not isinstance(sessions, list) or not all(_is_int(s) for s in sessions):
            raise ValueError("session report: sessions must be a list of integers")
        return cls(term, covered, sent, tuple(sessions))


@dataclass(frozen=True, slots=True)
class ReportAck:
    """Leader -> follower: your report sent at `sent` reached a leader holding its lease."""

    term: int
    sent: int

    def to_wire(self) -> list[Any]:
        return [self.term, self.sent]

    @classmethod
    def from_wire(cls, obj: Any) -> ReportAck:
        if not isinstance(obj, list) or len(obj) != 2 or not all(_is_int(v) for v in obj):
            raise ValueError("report ack: expected [term, sent]")
        return cls(obj[0], obj[1])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SessionKeeper:
    """One member's part in deciding session expiry (see the module docstring)."""

    def __init__(self, me: int, members: Iterable[int], *, cutoff: int, report_every: int) -> None:
        if report_every < 1 or cutoff <= report_every:
            raise ValueError("need 1 <= report_every < cutoff")
        self.me = me
        self._others = [m for m in sorted(set(members)) if m != me]
        self.cutoff = cutoff
        self.report_every = report_every
        self._timeout: dict[int, int] = {}  # replicated: live session -> timeout in ticks
        # Follower side.
        self._touched: dict[int, int] = {}  # session -> tick of its latest touch, until acked
        self._acked = _NEVER  # `sent` of the newest acknowledged report
        # Leader side: present only while leading `_term`.
        self._term: int | None = None
        self._deadline: dict[int, int] = {}
        self._expiring: set[int] = set()
        self._covered: dict[int, int] = {}
        self._reported_at: dict[int, int] = {}

    # -- replicated facts, as entries are applied ---------------------------------------------
    def reset(self, sessions: Mapping[int, int], now: int) -> None:
        """The whole live set (after recovery or installing a snapshot): id -> timeout ticks."""
        self._timeout = dict(sessions)
        self._touched = {sid: t for sid, t in self._touched.items() if sid in self._timeout}
        if self._term is not None:
            self._lead(self._term, now)

    def opened(self, session_id: int, timeout: int, now: int) -> None:
        self._timeout[session_id] = timeout
        if self._term is not None:
            self._deadline[session_id] = now + timeout

    def closed(self, session_id: int) -> None:
        self._timeout.pop(session_id, None)
        self._deadline.pop(session_id, None)
        self._expiring.discard(session_id)
        self._touched.pop(session_id, None)

    def is_live(self, session_id: int) -> bool:
        return session_id in self._timeout

    # -- role ------------------------------------------------------------------------------------
    @property
    def leading_term(self) -> int | None:
        return self._term

    def set_role(self, leading_term: int | None, now: int) -> None:
        """Call with the Raft term while this member leads, None otherwise, before every use:
        deadlines from another term (or from being a follower) must never judge anything."""
        if leading_term == self._term:
            return
        if leading_term is None:
            self._term = None
            self._deadline, self._expiring = {}, set()
            self._covered, self._reported_at = {}, {}
        else:
            self._lead(leading_term, now)

    def set_members(self, members: Iterable[int], now: int) -> None:
        """A reconfig changed the ensemble: a new member's reports count from now (as if it
        had just reported), a removed one's are no longer waited for."""
        others = [m for m in sorted(set(members)) if m != self.me]
        if others == self._others:
            return
        removed = set(self._others) - set(others)
        self._others = others
        if self._term is not None:
            self._covered = {m: self._covered.get(m, _NEVER) for m in others}
            self._reported_at = {m: self._reported_at.get(m, now) for m in others}
            if removed:
                # Pings a removed member accepted but has not reported yet are lost with it:
                # every session gets a fresh timeout, as under a new leader.
                self._deadline = {sid: max(d, now + self._timeout[sid])
                                  for sid, d in self._deadline.items()}

    def _lead(self, term: int, now: int) -> None:
        self._term = term
        self._deadline = {sid: now + t for sid, t in self._timeout.items()}
        self._expiring = set()
        self._covered = {m: _NEVER for m in self._others}
        self._reported_at = {m: now for m in self._others}
        self._touched.clear()

    # -- client activity ---------------------------------------------------------------------------
    def touch(self, session_id: int, now: int) -> bool:
        """A client spoke through this member. False: the session is gone or being expired."""
        timeout = self._timeout.get(session_id)
        if timeout is None or session_id in self._expiring:
            return False
        if self._term is not None:
            self._deadline[session_id] = max(self._deadline.get(session_id, now), now + timeout)
        else:
            self._touched[session_id] = now
        return True

    # -- follower ----------------------------------------------------------------------------------
    def report(self, term: int, covered: int, now: int) -> SessionReport:
        """What to send the leader now (every `report_every` ticks, even if empty)."""
        return SessionReport(term, covered, now, tuple(sorted(self._touched)))

    def acknowledged(self, ack: ReportAck) -> None:
        # Any leader that acknowledged held its lease then, whatever its term: crediting an old
        # leader's late ack is safe, because its lease ended before any successor was elected.
        self._acked = max(self._acked, ack.sent)
        # Touches before that report was sent were in it (or in an earlier acked one).
        self._touched = {sid: t for sid, t in self._touched.items() if t >= ack.sent}

    def follower_serving(self, now: int) -> bool:
        return now - self._acked < self.cutoff

    # -- leader ------------------------------------------------------------------------------------
    def on_report(self, member: int, report: SessionReport, now: int, *, lease: bool
                  ) -> ReportAck | None:
        """A follower's report; returns the ack to send back (None without a lease)."""
        if self._term is None or member not in self._reported_at:
            return None
        for session_id in report.sessions:
            self.touch(session_id, now)
        self._reported_at[member] = now
        if report.term == self._term:
            # `covered` is in our ticks only if it was our heartbeat the member had heard.
            self._covered[member] = max(self._covered[member], min(report.covered, now))
        return ReportAck(self._term, report.sent) if lease else None

    def expired(self, now: int, *, lease: bool) -> list[int]:
        """Sessions to expire now, each returned once (it is 'expiring' from then on)."""
        if self._term is None or not lease:
            return []
        due = []
        for session_id, deadline in self._deadline.items():
            if deadline > now or session_id in self._expiring:
                continue
            timeout = self._timeout[session_id]
            if all(self._covered[m] >= deadline
                   or now >= self._reported_at[m] + self.cutoff + timeout
                   for m in self._others):
                due.append(session_id)
        self._expiring.update(due)
        return sorted(due)


class SessionIdGenerator:
    """ZooKeeper's layout: server id in the top byte, a time-seeded counter below it."""

    def __init__(self, server_id: int, now_ms: int) -> None:
        self._next = ((server_id & 0xFF) << 56) | ((now_ms << 24) & 0x00FFFFFFFFFFFFFF) >> 8 << 8
        self._next &= 0x7FFFFFFFFFFFFFFF  # session ids are positive longs

    def next(self, taken: "set[int] | dict[int, object]") -> int:
        while True:
            self._next += 1
            if self._next not in taken:
                return self._next


def new_password() -> bytes:
    return secrets.token_bytes(16)
