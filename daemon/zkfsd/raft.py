"""Raft for an ensemble of 1, 3 or 5: a sans-IO core in the style of etcd-io/raft.

The server loop drives it through the interface described in consensus.py:

    inputs   tick(), step(message), propose(data), read_index(ctx), compact(...)
    outputs  ready() -> RaftReady: snapshot to install, entries + hard state to persist,
             messages to send, committed entries to apply, read states.

consensus.ReadyDriver handles each Ready (it is the one implementation, used by the server and
the test harnesses): urgent messages out at once (below), the snapshot saved and installed,
entries and hard state written and fsync'd, only then the other messages (a vote or an
acknowledgement must never leave before the term, vote or entries it vouches for are durable,
or a crash could make this member vote twice or "forget" an entry a leader counted towards a
majority), committed entries applied (always durable here already), read states reported,
then `advance(ready)` before the next `ready()`.
`step()` may be called between `ready()` and `advance()` (the fsync runs on a worker thread);
anything it changes goes into the next Ready.

Messages that vouch for nothing unpersisted (`is_urgent`: heartbeats and their answers, the
leader's appends and snapshots, read-index traffic) leave before the Ready's fsync, so the
leader's disk write overlaps its followers' (Raft thesis 10.2.1); `take_urgent()` hands out
heartbeats, their answers and read-index messages at any time, so liveness (leases, election
timers) never waits for the disk. Votes and append acknowledgements wait for the fsync.

No clock, socket, disk or global randomness: time is `tick()`, randomness an injected Random.

Member ids are positive integers (0 means "nobody" in HardState.vote and leader_id).

Learners (ZooKeeper's observers, etcd's learners) receive the log like any follower (the leader
tracks their progress and sends them appends, heartbeats and snapshots) but have no say: they
never campaign, never vote (vote requests are not even sent to them), and the commit index,
check-quorum, the leader lease and read-index rounds count voters only. Safety therefore never
depends on them; a learner only makes more copies.

Membership changes (reconfig.py has the request side) are single-server changes, as in
Ongaro's thesis §4.1: a log entry that `conf_of_entry` recognises carries the complete new
set of voters and learners, differing from the previous set in at most one voter; a member uses
the newest configuration in its log, committed or not (and falls back to the previous one if that
entry is truncated away). The leader accepts such an entry only once an entry of its own term is
committed and no earlier change is still uncommitted (ConfChangeRefused otherwise), so changes
never overlap; any majority of the old voters then overlaps any majority of the new ones. A leader
that removed itself keeps leading (without counting itself) until the entry commits, then steps
down. Before a voter is added, the caller lets it catch up as a temporary learner
(`start_catch_up`), so the new majority does not have to wait for its log. With changes enabled
(`conf_of_entry` given) members heed a leader from outside their configuration and answer vote
requests whatever their own role (thesis §4.2: a newer configuration they lack may count them),
while vote requests from non-members are still ignored, so a removed member cannot disrupt.

On restart the caller restores its application state from the snapshot only and lets the first
Readys hand it the committed entries after it: entries in the stored log beyond the commit index
may not be committed and can be replaced by the next leader (pass `applied=` if the application
state is further along than the snapshot).
"""
from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zkfsd.consensus import Entry, HardState, NotLeader, ReadState, Ready, Snapshot

__all__ = [
    "ConfChangeRefused",
    "ConfState",
    "MsgType",
    "Message",
    "NotLeader",
    "RaftNode",
    "RaftReady",
    "ReadState",
    "Role",
]

NONE = 0  # "no member": no vote cast, no leader known
_U64 = 1 << 64


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class MsgType(enum.IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # install snapshot; answered with APPEND_RESP
    READ_INDEX = 10  # follower -> leader: "what is a safe read index?" (context identifies it)
    READ_INDEX_RESP = 11


@dataclass(frozen=True, slots=True)
class Message:
    """One peer message. Field use by type (as in etcd's raftpb.Message):

    PRE_VOTE/VOTE      term = proposed term, index/log_term = candidate's last entry
    *_VOTE_RESP        reject; term = the proposed term when granted, the voter's when rejected
    APPEND             index/log_term = entry before `entries`; commit = leader's commit
    APPEND_RESP        index = last matching index; on reject: index = the rejected prev index,
                       reject_hint/log_term = follower's guess (fast backtracking)
    HEARTBEAT          commit = min(follower's match, leader commit); context = read-index round
    HEARTBEAT_RESP     context echoed; index = the follower's last index
    SNAPSHOT           snapshot (index, term, data)
    READ_INDEX(_RESP)  context = caller's request id; index = the read index in the response

    sent_tick: on APPEND and HEARTBEAT, the leader's tick count when it sent them; echoed in
    APPEND_RESP and HEARTBEAT_RESP. An answer thus proves the follower heard the leader no
    earlier than that tick, which is what the leader's lease is measured from (see has_lease).
    """

    type: MsgType
    frm: int
    to: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    sent_tick: int = 0

    def to_wire(self) -> list[Any]:
        snap = None
        if self.snapshot is not None:
            snap = [self.snapshot.index, self.snapshot.term, self.snapshot.data]
        return [
            int(self.type), self.frm, self.to, self.term, self.log_term, self.index,
            [[e.index, e.term, e.data] for e in self.entries],
            self.commit, self.reject, self.reject_hint, snap, self.context, self.sent_tick,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> Message:
        """Decode what `to_wire` produced (after msgpack). Peer frames are untrusted: anything
        malformed raises ValueError rather than reaching the state machine."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 13:
            raise ValueError("message: expected a 13-element array")
        (typ, frm, to, term, log_term, index, ents, commit, reject, hint, snap, ctx,
         sent_tick) = obj
        _uints("message", typ, frm, to, term, log_term, index, commit, hint, sent_tick)
        try:
            mtype = MsgType(typ)
        except ValueError:
            raise ValueError(f"message: unknown type {typ}") from None
        if not isinstance(reject, bool):
            raise ValueError("message: reject must be a boolean")
        if not isinstance(ctx, bytes):
            raise ValueError("message: context must be bytes")
        if not isinstance(ents, (list, tuple)):
            raise ValueError("message: entries must be an array")
        if ents and mtype != MsgType.APPEND:
            raise ValueError(f"message: {mtype.name} carries no entries")
        entries = []
        for i, e in enumerate(ents):
            if not isinstance(e, (list, tuple)) or len(e) != 3:
                raise ValueError("message: entry must be [index, term, data]")
            _uints("entry", e[0], e[1])
            if not isinstance(e[2], bytes):
                raise ValueError("message: entry data must be bytes")
            # The follower's log-matching logic assumes a contiguous run right after `index`.
            if e[0] != index + 1 + i:
                raise ValueError("message: entries must follow `index` contiguously")
            if e[1] > term or (entries and e[1] < entries[-1].term):
                raise ValueError("message: entry terms must be ascending and <= the message term")
            entries.append(Entry(e[0], e[1], e[2]))
        snapshot = None
        if mtype == MsgType.SNAPSHOT:
            if not isinstance(snap, (list, tuple)) or len(snap) != 3:
                raise ValueError("message: SNAPSHOT needs [index, term, data]")
            _uints("snapshot", snap[0], snap[1])
            if snap[0] == 0 or not isinstance(snap[2], bytes):
                raise ValueError("message: malformed snapshot")
            snapshot = Snapshot(snap[0], snap[1], snap[2])
        elif snap is not None:
            raise ValueError(f"message: {mtype.name} carries no snapshot")
        if frm == NONE or to == NONE:
            raise ValueError("message: member ids must be positive")
        return cls(mtype, frm, to, term, log_term, index, tuple(entries), commit, reject, hint,
                   snapshot, ctx, sent_tick)


def _uints(what: str, *values: Any) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _U64:
            raise ValueError(f"{what}: expected an unsigned 64-bit integer, got {v!r}")


@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership as the core sees it: who votes and who only learns (etcd's ConfState)."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()


class ConfChangeRefused(Exception):
    """The leader cannot take a configuration change now. `in_progress`: an earlier change is
    still uncommitted, or this leader has not committed an entry of its term yet (retry);
    otherwise the change itself is unsafe (more than one voter changed)."""

    def __init__(self, message: str, *, in_progress: bool) -> None:
        super().__init__(message)
        self.in_progress = in_progress


# The Ready the core hands out (consensus.Ready carries snapshots and read states too).
RaftReady = Ready


# What take_urgent() may hand out before the Ready they were produced with is persisted: nothing
# here vouches for the sender's durable state. A heartbeat answer carries the follower's last
# index, which the leader only uses to notice a member that lost entries (a higher, unpersisted
# index cannot trigger that). The leader's own entries count towards a commit only once
# persisted (advance()), whatever it sent.
_URGENT = frozenset({MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP, MsgType.APPEND,
                     MsgType.SNAPSHOT, MsgType.READ_INDEX, MsgType.READ_INDEX_RESP})
# What take_urgent() hands out between Readys: only what liveness and reads wait for. Appends
# wait for the next Ready (and leave before its fsync), so that followers get one append per
# leader batch and fsync as rarely as before.
_LIVENESS = frozenset({MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP, MsgType.READ_INDEX,
                       MsgType.READ_INDEX_RESP})


def is_urgent(m: Message) -> bool:
    """May `m` leave before the Ready it came in is persisted? (See take_urgent.)"""
    return m.type in _URGENT


class _PState(enum.Enum):
    PROBE = "probe"  # next is a guess: one append at a time until the follower answers
    REPLICATE = "replicate"  # next is known: stream appends, at most max_inflight outstanding
    SNAPSHOT = "snapshot"  # a snapshot is on its way; nothing else until it is acknowledged


class _Progress:
    """The leader's view of one member's log (etcd's tracker.Progress, trimmed)."""

    __slots__ = ("match", "next", "state", "paused", "inflight", "recent_active",
                 "pending_snapshot", "snapshot_ticks", "heard_tick")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PState.PROBE
        self.paused = False
        self.inflight: list[int] = []  # last index of each unacknowledged append, ascending
        self.recent_active = True
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        # The newest sent_tick this member echoed in this term: it heard us no earlier.
        self.heard_tick = -1

    def _reset(self, state: _PState) -> None:
        self.state = state
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.snapshot_ticks = 0

    def become_probe(self) -> None:
        # After a snapshot the follower holds at least the snapshot, even if it has not said so.
        nxt = max(self.match + 1, self.pending_snapshot + 1)
        self._reset(_PState.PROBE)
        self.next = nxt

    def become_replicate(self) -> None:
        self._reset(_PState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(_PState.SNAPSHOT)
        self.pending_snapshot = index
        self.next = index + 1

    def maybe_update(self, n: int) -> bool:
        updated = n > self.match
        if updated:
            self.match = n
            self.paused = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        if rejected <= self.match and hint < self.match:
            # The member no longer has entries it acknowledged: its data dir was lost. Start
            # over from what it has (a delayed, stale rejection lands here too, and costs only
            # a resend: lowering `match` never lowers the commit index).
            self.match = hint
            self.become_probe()
            self.next = hint + 1
            return True
        if self.state == _PState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection of something since acknowledged
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # answer to an older probe
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.paused = False
        return True

    def is_paused(self, max_inflight: int) -> bool:
        if self.state == _PState.PROBE:
            return self.paused
        if self.state == _PState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def free_le(self, index: int) -> None:
        i = 0
        while i < len(self.inflight) and self.inflight[i] <= index:
            i += 1
        del self.inflight[:i]


@dataclass
class _PendingRead:
    context: bytes
    index: int
    requester: int
    acks: set[int]


class RaftNode:
    def __init__(
        self,
        id: int,
        voters: Sequence[int],
        *,
        hard_state: HardState,
        snapshot: Snapshot | None = None,
        entries: Iterable[Entry] = (),
        rng: random.Random,
        applied: int | None = None,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 64,
        max_msg_entries: int = 256,
        max_msg_bytes: int = 1 << 20,
        compact_keep: int = 0,
        rebuilding: bool = False,
        learners: Sequence[int] = (),
        conf_of_entry: Callable[[bytes], ConfState | None] | None = None,
        conf_of_snapshot: Callable[[bytes], ConfState | None] | None = None,
        lost_leader_ticks: int | None = None,
        snapshot_timeout_ticks: int | None = None,
        retry_ticks: int | None = None,
    ) -> None:
        if id <= 0 or any(v <= 0 for v in voters) or any(v <= 0 for v in learners):
            raise ValueError("member ids must be positive integers")
        members = [*voters, *learners]
        # A member a reconfig removed may restart with a configuration that lacks it: it then
        # neither campaigns nor votes (nobody sends it anything any more).
        if len(set(members)) != len(members) or not voters or (
                id not in members and conf_of_entry is None):
            raise ValueError(f"voters {list(voters)} and learners {list(learners)} must be "
                             f"distinct, include {id} and at least one voter")
        if not 0 < heartbeat_ticks < election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if max_inflight < 1 or max_msg_entries < 1 or max_msg_bytes < 1 or compact_keep < 0:
            raise ValueError("flow-control limits must be positive")
        self.id = id
        self._conf_of_entry = conf_of_entry
        self._conf_of_snapshot = conf_of_snapshot
        self._catch_up: set[int] = set()  # leader only: joining voters, replicated to first
        # Leader only: members the newest change removed. They still get appends and
        # heartbeats (never counted), so they learn that the change committed and can answer
        # a client that asked through them; dropped at the next change or leader.
        self._retiring: set[int] = set()
        self._member_set: frozenset[int] = frozenset()
        self._progress: dict[int, _Progress] = {}
        self.role = Role.FOLLOWER
        self.voters: list[int] = []
        self.learners: list[int] = []
        self._set_conf(ConfState(tuple(voters), tuple(learners)))
        self._rng = rng
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_inflight = max_inflight
        self.max_msg_entries = max_msg_entries
        self.max_msg_bytes = max_msg_bytes
        self.compact_keep = compact_keep
        # After its leader's connection died, a follower campaigns within this many ticks
        # (random, so that two followers rarely collide); a snapshot not acknowledged within
        # snapshot_timeout_ticks is sent again.
        self.lost_leader_ticks = max(1, election_ticks // 3 if lost_leader_ticks is None
                                     else lost_leader_ticks)
        self.snapshot_timeout_ticks = (2 * election_ticks if snapshot_timeout_ticks is None
                                       else snapshot_timeout_ticks)
        if self.snapshot_timeout_ticks < 1:
            raise ValueError("snapshot_timeout_ticks must be positive")
        # A member that knows no leader (at start, after losing it, during an election that
        # did not settle) has nobody to wait for: it campaigns again after retry_ticks to twice
        # that, which may be shorter than the election timeout a follower gives a leader it
        # knows (a split vote then costs little however long the election timeout is).
        self.retry_ticks = retry_ticks
        if retry_ticks is not None and not 0 < retry_ticks:
            raise ValueError("retry_ticks must be positive")
        # A member that lost its data dir may be missing entries it once acknowledged, so it
        # must neither vote nor campaign until it holds everything the leader had committed
        # when they first spoke (the caller persists this flag across restarts).
        self.rebuilding = rebuilding
        self._rebuild_target: int | None = None

        # The log in memory: entries after `_offset`, whose term is `_offset_term`. Everything
        # at or below `_offset` is covered by `_snapshot` (the latest one, kept to send it).
        self._snapshot = snapshot
        self._offset = snapshot.index if snapshot is not None else 0
        self._offset_term = snapshot.term if snapshot is not None else 0
        self._log: list[Entry] = [e for e in entries if e.index > self._offset]
        for i, e in enumerate(self._log):
            if e.index != self._offset + 1 + i:
                raise ValueError(f"entries must be contiguous after index {self._offset}")
        # The configuration at the snapshot (the caller's), then every change logged after it.
        self._confs: list[tuple[int, ConfState]] = [(self._offset, self.conf)]
        self._scan_confs(self._log)
        # `_persisted`: entries up to here are durable AND equal to the in-memory ones (a
        # conflict truncation lowers it). `_unstable_from`: first entry not yet handed out.
        self._persisted = self.last_index
        self._unstable_from = self.last_index + 1

        # A torn write can leave entries of a term whose hard-state record was lost; never run
        # in a term below our own last entry (that would break term order in the log and make
        # zxids go backwards). Any vote of that term was never sent, so it is safe to drop.
        self.term = hard_state.term
        self.vote = hard_state.vote
        if self.last_term > self.term:
            self.term, self.vote = self.last_term, NONE
        commit = max(hard_state.commit, self._offset)
        if commit > self.last_index:
            raise ValueError(f"commit {commit} is past the last stored entry {self.last_index}")
        self.commit = commit
        applied = self._offset if applied is None else applied
        if not self._offset <= applied <= self.commit:
            raise ValueError(f"applied {applied} outside [{self._offset}, {self.commit}]")
        self._applied = applied
        self._applying = applied  # highest index handed out for applying
        self._prev_hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)

        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_snapshot: Snapshot | None = None  # received from a leader, not handed out
        self._outstanding: RaftReady | None = None

        self.role = Role.FOLLOWER
        self.leader_id = NONE
        # Ticks since this node was created: the clock of the leader lease and of the session
        # rules built on it (sessions.py). Only ever grows within one incarnation.
        self.ticks = 0
        # On a follower: the newest sent_tick heard from the current leader in this term.
        self.leader_tick = -1
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = election_ticks
        self._randomized_retry = election_ticks
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, _Progress] = {}
        self._reads: list[_PendingRead] = []
        self._reads_waiting: list[tuple[bytes, int]] = []  # until commit reaches our term
        self._bcast_entries = False
        self._bcast_commit = False
        self._become_follower(self.term, NONE)
        if self.voters == [self.id] and not self.is_learner:
            # Nobody to wait for: an ensemble of one leads at once, as a standalone server must.
            self._campaign(pre=False)

    # -- membership ------------------------------------------------------------------------
    @property
    def conf(self) -> ConfState:
        """The configuration in force here: the newest one in the log, committed or not."""
        return ConfState(tuple(self.voters), tuple(self.learners))

    @property
    def conf_index(self) -> int:
        """Index of the entry that set the configuration in force (the snapshot's index, or 0)."""
        return self._confs[-1][0]

    @property
    def conf_change_pending(self) -> bool:
        return self.conf_index > self.commit

    def _set_conf(self, conf: ConfState) -> None:
        before = {*self.voters, *self.learners}
        voters, learners = sorted(conf.voters), sorted(conf.learners)
        self.voters = voters  # sorted: message order must not depend on config order
        self._voter_set = frozenset(voters)
        self.learners = learners
        self.is_learner = self.id in learners
        members = {*voters, *learners}
        self._catch_up -= members
        member_set = frozenset(members | self._catch_up)
        if self.role == Role.LEADER and members != before:
            self._retiring = before - members - {self.id}
        self._retiring -= members
        self._member_set = member_set
        # Everyone we replicate to:
        self._peers = sorted(v for v in member_set | self._retiring if v != self.id)
        self._voting_peers = [v for v in voters if v != self.id]
        self._quorum = len(voters) // 2 + 1
        if self.role == Role.LEADER:
            nxt = self.last_index + 1
            for v in self._member_set:
                if v not in self._progress:
                    self._progress[v] = _Progress(nxt)
            for v in list(self._progress):
                if v not in self._member_set and v not in self._retiring and v != self.id:
                    del self._progress[v]

    def _scan_confs(self, entries: Iterable[Entry]) -> None:
        if self._conf_of_entry is None:
            return
        changed = False
        for e in entries:
            if e.data:
                conf = self._conf_of_entry(e.data)
                if conf is not None:
                    self._confs.append((e.index, conf))
                    changed = True
        if changed:
            self._set_conf(self._confs[-1][1])

    def start_catch_up(self, member: int) -> None:
        """Leader: replicate to `member` (a voter about to be added) as if it were a learner,
        before the configuration entry makes it count. Ends with the leadership or the change."""
        if self.role != Role.LEADER or member in self._member_set:
            return
        self._catch_up.add(member)
        self._set_conf(self.conf)
        self._send_append(member, send_if_empty=True)

    def stop_catch_up(self, member: int) -> None:
        if member in self._catch_up:
            self._catch_up.discard(member)
            self._set_conf(self.conf)

    def match_of(self, member: int) -> int | None:
        """Leader: the highest index `member` is known to hold (None: not tracked, or not
        heard from within the last election timeout)."""
        if self.role != Role.LEADER:
            return None
        if member == self.id:
            return self._persisted
        pr = self._progress.get(member)
        if pr is None or pr.heard_tick < 0 or self.ticks - pr.heard_tick > self.election_ticks:
            return None
        return pr.match

    # -- log helpers -----------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self._offset + len(self._log)

    @property
    def last_term(self) -> int:
        return self._log[-1].term if self._log else self._offset_term

    @property
    def first_index(self) -> int:
        return self._offset + 1

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None if compacted away or not (yet) in the log."""
        if index == self._offset:
            return self._offset_term
        if self._offset < index <= self.last_index:
            return self._log[index - self._offset - 1].term
        return None

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) held in memory (lo > the compaction point)."""
        if lo <= self._offset or hi > self.last_index + 1:
            raise IndexError(f"entries[{lo}, {hi}) not in memory")
        return self._log[lo - self._offset - 1 : hi - self._offset - 1]

    def _up_to_date(self, index: int, term: int) -> bool:
        return term > self.last_term or (term == self.last_term and index >= self.last_index)

    def _truncate_append(self, ents: Sequence[Entry]) -> None:
        first = ents[0].index
        if first <= self.commit:
            # Only a bug or a byzantine peer gets here: committed entries are forever.
            raise RuntimeError(f"refusing to overwrite committed entry {first} (commit "
                               f"{self.commit})")
        del self._log[first - self._offset - 1 :]
        self._log.extend(ents)
        self._unstable_from = min(self._unstable_from, first)
        self._persisted = min(self._persisted, first - 1)
        if self._confs[-1][0] >= first:
            # A change in the replaced suffix never happened: back to the one before it.
            while self._confs[-1][0] >= first:
                self._confs.pop()
            self._set_conf(self._confs[-1][1])
        self._scan_confs(ents)

    def _find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= `term`, with its term: the follower (or leader)
        can skip every entry of a term the other side cannot have."""
        index = min(index, self.last_index)
        while True:
            t = self.term_at(index)
            if t is None:
                return index, 0
            if t <= term or index <= self._offset:
                return index, t
            index -= 1

    # -- public state ----------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def applied(self) -> int:
        return self._applied

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def next_position(self) -> tuple[int, int]:
        """(term, index) the next proposal gets, so the caller can stamp its zxid first."""
        return self.term, self.last_index + 1

    # -- role changes ----------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader_id = NONE
        self.leader_tick = -1
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomize_timeouts()
        self._votes = {}
        self._progress = {}
        # Pending reads die with the leadership; callers time out and retry elsewhere.
        self._reads = []
        self._reads_waiting = []
        self._bcast_entries = self._bcast_commit = False
        if self._catch_up or self._retiring:
            self._catch_up.clear()
            self._retiring.clear()
            self._set_conf(self.conf)

    def _randomize_timeouts(self) -> None:
        self._randomized_timeout = self.election_ticks + self._rng.randrange(self.election_ticks)
        retry = self.retry_ticks
        self._randomized_retry = (self._randomized_timeout if retry is None
                                  else retry + self._rng.randrange(retry))

    def _timeout(self) -> int:
        """Ticks without a leader's word before campaigning (see retry_ticks)."""
        if self.role == Role.FOLLOWER and self.leader_id != NONE:
            return self._randomized_timeout
        return self._randomized_retry

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader

    def _become_pre_candidate(self) -> None:
        # A pre-candidate changes neither term nor vote: that is the whole point of pre-vote.
        self.role = Role.PRE_CANDIDATE
        self.leader_id = NONE
        self._votes = {}
        self._randomize_timeouts()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self.rebuilding = False  # elected: its log is the reference now
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        nxt = self.last_index + 1
        self._progress = {v: _Progress(nxt) for v in (*self.voters, *self.learners)}
        self._progress[self.id].match = self._persisted
        # Raft §5.4.2: entries of earlier terms are committed only by counting replicas of an
        # entry of ours. The empty entry gives us one at once, and puts this term's zxids above
        # every earlier one. The server applies empty data as a no-op.
        self._log.append(Entry(nxt, self.term, b""))
        self._bcast_entries = True

    def _campaign(self, pre: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_term, mtype = self.term + 1, MsgType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term, mtype = self.term, MsgType.VOTE
        self._votes[self.id] = True
        if self._tally() == 1:
            return
        for peer in self._voting_peers:
            self._send(Message(mtype, self.id, peer, vote_term, log_term=self.last_term,
                               index=self.last_index))

    def _tally(self) -> int:
        """After recording a vote: 1 won (and acted on), -1 lost (and acted on), 0 pending."""
        granted = sum(1 for g in self._votes.values() if g)
        rejected = len(self._votes) - granted
        if granted >= self._quorum:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
            return 1
        if rejected > len(self.voters) - self._quorum:
            self._become_follower(self.term, NONE)
            return -1
        return 0

    # -- inputs ----------------------------------------------------------------------------
    def tick(self, n: int = 1) -> None:
        """`n` ticks of time passed (more than one after the caller was paused or starved).
        Past a few election timeouts more ticks change nothing but the clock: by then a leader
        has stepped down or a follower campaigned, so the rest is skipped."""
        for i in range(n):
            if i == 4 * self.election_ticks:
                self.ticks += n - i
                return
            self._tick_one()

    def _tick_one(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout():
            self._election_elapsed = 0
            if self.id not in self._voter_set:
                return  # a learner (or a removed member) waits for the voters' leader
            if self.rebuilding and self.last_index > 0:
                return  # partly rebuilt: it could win without entries it once acknowledged
            self._campaign(pre=self.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        for pr in self._progress.values():
            if pr.state == _PState.SNAPSHOT:
                # A lost snapshot would otherwise stall this follower forever.
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self.snapshot_timeout_ticks:
                    pr.pending_snapshot = 0
                    pr.become_probe()
        if self._election_elapsed >= self.election_ticks:
            self._election_elapsed = 0
            if self.check_quorum:
                active = sum(1 for v in self.voters
                             if v == self.id or self._progress[v].recent_active)
                if active < self._quorum:
                    # Cut off from a majority: a new leader may exist already, and clients
                    # should go find it instead of waiting on us.
                    self._become_follower(self.term, NONE)
                    return
                for v in self._peers:  # learners too: only their liveness display uses it
                    self._progress[v].recent_active = False
        if self._heartbeat_elapsed >= self.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads[-1].context if self._reads else b"")

    def has_lease(self) -> bool:
        """True while no other member can have become leader: a majority (us included) answered
        a message we sent within the last `election_ticks - 1` ticks.

        Followers refuse votes for `election_ticks` of their ticks after hearing from us
        (step(): the check-quorum lease), and a message sent at our tick s reached them no
        earlier than s; one tick of margin covers tick phases differing between members. The
        caller must keep ticks in step with real time (the server ticks for time that passed
        while it was paused), or the lease would outlive a pause. Without check-quorum
        followers do not honour leases, so there is none.
        """
        if self.role != Role.LEADER:
            return False
        if self.voters == [self.id]:
            return True
        if not self.check_quorum:
            return False
        heard = sorted((self.ticks if v == self.id else self._progress[v].heard_tick
                        for v in self.voters), reverse=True)
        oldest = heard[self._quorum - 1]
        return oldest >= 0 and self.ticks - oldest < self.election_ticks - 1

    def peer_lost(self, member: int) -> None:
        """The transport saw `member`'s connection die. A follower campaigns early when that
        was its leader (leader_lost); a leader stops counting the member towards its lease at
        once, since that follower may now vote before its election timeout."""
        if self.role == Role.LEADER and member in self._progress:
            self._progress[member].heard_tick = -1
        else:
            self.leader_lost(member)

    def propose(self, data: bytes) -> Entry:
        if self.role != Role.LEADER:
            exc = NotLeader(f"member {self.id} is not the leader (leader: {self.leader_id or '?'})")
            exc.leader_id = self.leader_id  # type: ignore[attr-defined]
            raise exc
        if not isinstance(data, bytes):
            raise TypeError("proposal data must be bytes")
        conf = self._conf_of_entry(data) if self._conf_of_entry is not None and data else None
        if conf is not None:
            self._check_conf_change(conf)
        entry = Entry(self.last_index + 1, self.term, data)
        self._log.append(entry)
        if conf is not None:
            # Raft's rule for single-server changes: in force from the moment it is logged.
            self._confs.append((entry.index, conf))
            self._set_conf(conf)
        # Sent at the next ready(): a burst of proposals then leaves in few messages.
        self._bcast_entries = True
        return entry

    def _check_conf_change(self, conf: ConfState) -> None:
        if self.conf_change_pending or self.term_at(self.commit) != self.term:
            # One change at a time, and none before this leader's first entry is committed:
            # the entry it would follow could still be a change we do not know is committed.
            raise ConfChangeRefused("a configuration change is in progress", in_progress=True)
        if len(set(conf.voters) ^ self._voter_set) > 1 or not conf.voters or (
                set(conf.voters) & set(conf.learners)):
            raise ConfChangeRefused(f"unsafe change of voters {self.voters} -> "
                                    f"{sorted(conf.voters)}: one voter at a time",
                                    in_progress=False)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState with this context in a
        later Ready. Dropped when no leader is known or leadership changes: retry on timeout.
        Contexts must be unique among this member's outstanding requests."""
        if self.role == Role.LEADER:
            self._leader_read(context, self.id)
        elif self.leader_id != NONE:
            self._send(Message(MsgType.READ_INDEX, self.id, self.leader_id, self.term,
                               context=context))

    def leader_lost(self, member: int) -> None:
        """The transport saw `member`'s connection die (its process exited, say).

        If that was our leader, stop honouring its lease and campaign after a short random
        delay instead of waiting out the whole election timeout. Pre-vote keeps this safe: a
        leader that is in fact alive keeps the other followers' leases, and they refuse.
        """
        if self.role != Role.FOLLOWER or self.leader_id != member:
            return
        self.leader_id = NONE
        jitter = 1 + self._rng.randrange(self.lost_leader_ticks)
        self._election_elapsed = max(self._election_elapsed, self._timeout() - jitter)

    def compact(self, snapshot_index: int, snapshot_term: int, data: bytes) -> None:
        """The application saved a snapshot of its state at `snapshot_index` (<= applied).

        Entries up to it (minus `compact_keep` kept for slightly-lagging followers) leave
        memory; followers that need them get this snapshot instead."""
        if snapshot_index <= (self._snapshot.index if self._snapshot else 0):
            return
        if snapshot_index > self._applied:
            raise ValueError(f"snapshot {snapshot_index} is past applied {self._applied}")
        # Keep the configuration in force at the snapshot, and every change after it.
        keep = max(i for i, (index, _) in enumerate(self._confs) if index <= snapshot_index)
        self._confs = self._confs[keep:]
        if self.term_at(snapshot_index) not in (None, snapshot_term):
            raise ValueError(f"snapshot term {snapshot_term} != log term at {snapshot_index}")
        self._snapshot = Snapshot(snapshot_index, snapshot_term, data)
        new_offset = snapshot_index - self.compact_keep
        if new_offset > self._offset:
            t = self.term_at(new_offset)
            assert t is not None
            del self._log[: new_offset - self._offset]
            self._offset, self._offset_term = new_offset, t

    def step(self, m: Message) -> None:
        if m.to != self.id or m.frm == self.id:
            return  # not for us
        if m.frm not in self._member_set and (
                self._conf_of_entry is None or m.type in (MsgType.VOTE, MsgType.PRE_VOTE)):
            # From a non-member. With membership changes, a leader (or an answer) from outside
            # our configuration is heeded: a newer configuration we lack may include it, and
            # terms keep a stale one harmless. Elections stay closed to strangers, so a removed
            # member cannot disrupt the ensemble it left.
            return
        if m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP) and (
                self.id not in self._voter_set or m.frm not in self._voter_set):
            return  # only the votes of our configuration's voters count
        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE) and self._conf_of_entry is None and (
                self.is_learner or m.frm not in self._voter_set):
            # Elections are the voters' business only: a learner neither answers vote requests
            # nor lets them move its term (which would make it reject the live leader). With
            # membership changes every member answers (Ongaro's thesis §4.2): a newer
            # configuration it has not received yet may make it, or the candidate, a voter,
            # and without its answer no leader could be elected to tell it so.
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                # Leader lease: we heard from a live leader within the minimum election
                # timeout, so this candidate is the disruptive one (e.g. just back from a
                # partition); ignore it without even learning its term.
                if (self.check_quorum and self.leader_id != NONE
                        and self._election_elapsed < self.election_ticks):
                    return
            if m.type == MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # granted for the term we would campaign in; counted below
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MsgType.APPEND,
                                                                   MsgType.HEARTBEAT):
                # A stale leader. With pre-vote/check-quorum we may have raised our term in a
                # partition and nobody would ever raise theirs to meet us; our answer makes
                # the old leader step down so a fresh election can include us.
                self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term))
            elif m.type == MsgType.PRE_VOTE:
                # Tell the pre-candidate our term so it stops campaigning for an old one.
                self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.frm, self.term,
                                   reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_vote(self, m: Message) -> None:
        resp = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        can_vote = (self.vote == m.frm
                    or (self.vote == NONE and self.leader_id == NONE)
                    or (m.type == MsgType.PRE_VOTE and m.term > self.term))
        # A member whose log is empty may have lost its data dir (and with it the entries and
        # the vote it once acknowledged): it must not help a member that is missing committed
        # entries win. It votes only for members as empty as itself (a brand-new ensemble) and
        # otherwise waits until a leader has brought it up to date.
        if self.rebuilding:
            empty_ok = self.last_index == 0 and m.index == 0
        else:
            empty_ok = self.last_index > 0 or m.index == 0
        if can_vote and empty_ok and self._up_to_date(m.index, m.log_term):
            self._send(Message(resp, self.id, m.frm, m.term))
            if m.type == MsgType.VOTE:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.id, m.frm, self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._election_elapsed = 0
            self.leader_id = m.frm
            self.leader_tick = max(self.leader_tick, m.sent_tick)
            self._handle_from_leader(m)
        elif m.type == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            # Someone won this term.
            self._become_follower(m.term, m.frm)
            self.leader_tick = m.sent_tick
            self._handle_from_leader(m)
        elif ((m.type == MsgType.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE)
              or (m.type == MsgType.VOTE_RESP and self.role == Role.CANDIDATE)):
            self._votes.setdefault(m.frm, not m.reject)
            self._tally()

    def _handle_from_leader(self, m: Message) -> None:
        if self.rebuilding and m.type in (MsgType.APPEND, MsgType.SNAPSHOT):
            seen = m.commit if m.type == MsgType.APPEND else m.snapshot.index  # type: ignore[union-attr]
            self._rebuild_target = max(self._rebuild_target or 0, seen)
        commit_before = self.commit
        if m.type == MsgType.APPEND:
            self._handle_append(m)
        elif m.type == MsgType.HEARTBEAT:
            self._commit_to(m.commit)
            # Our last index lets the leader notice a member that lost its log even when
            # there is nothing new to append (see _step_leader).
            self._send(Message(MsgType.HEARTBEAT_RESP, self.id, m.frm, self.term,
                               index=self.last_index, context=m.context, sent_tick=m.sent_tick))
        else:
            self._handle_snapshot(m)
        if (self.rebuilding and self._rebuild_target is not None
                and max(self.commit, self._leader_matched(m, commit_before))
                >= self._rebuild_target):
            self.rebuilding = False

    def _leader_matched(self, m: Message, commit_before: int) -> int:
        """How far our log is now known to equal the leader's: voting needs the entries, not
        the knowledge that they committed (which lags behind under a steady write load and
        would keep a member that just joined from ever voting). Only an append that was
        processed (not one answered early as already committed) tells."""
        if (m.type == MsgType.APPEND and m.index >= commit_before
                and self.term_at(m.index) == m.log_term):
            return min(m.index + len(m.entries), self.last_index)
        return 0

    def _commit_to(self, index: int) -> None:
        # The leader only sends commit indexes we are known to hold; the clamp keeps a bad
        # peer from pointing our commit past our log.
        index = min(index, self.last_index)
        if index > self.commit:
            self.commit = index

    def _handle_append(self, m: Message) -> None:
        if m.index < self.commit:
            # Already committed here: tell the leader where we really are.
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=self.commit,
                               sent_tick=m.sent_tick))
            return
        if self.term_at(m.index) == m.log_term:
            last_new = m.index + len(m.entries)
            for e in m.entries:
                if self.term_at(e.index) != e.term:
                    self._truncate_append(m.entries[e.index - m.index - 1 :])
                    break
            self._commit_to(min(m.commit, last_new))
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=last_new,
                               sent_tick=m.sent_tick))
            return
        hint, hint_term = self._find_conflict_by_term(min(m.index, self.last_index), m.log_term)
        self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=m.index,
                           reject=True, reject_hint=hint, log_term=hint_term,
                           sent_tick=m.sent_tick))

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        assert s is not None
        if s.index <= self.commit:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=self.commit))
            return
        if self.term_at(s.index) == s.term:
            # We already hold the snapshot's last entry: fast-forward the commit instead.
            self._commit_to(s.index)
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term,
                               index=self.last_index))
            return
        # Raft §7: the snapshot replaces our whole log (Storage.save_snapshot drops it too).
        conf = self._conf_of_snapshot(s.data) if self._conf_of_snapshot is not None else None
        self._confs = [(s.index, conf or self.conf)]
        self._set_conf(self._confs[0][1])
        self._snapshot = s
        self._pending_snapshot = s
        self._offset, self._offset_term = s.index, s.term
        self._log = []
        self.commit = s.index
        self._persisted = s.index  # committed entries stay blocked until the snapshot is in
        self._unstable_from = s.index + 1
        self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=s.index))

    def _step_leader(self, m: Message) -> None:
        pr = self._progress.get(m.frm)
        if pr is None:
            return
        if m.type in (MsgType.APPEND_RESP, MsgType.HEARTBEAT_RESP):
            # Same term as ours (step() filtered the others), so we stamped sent_tick ourselves;
            # the clamp keeps a bad peer from stretching our lease into the future.
            pr.heard_tick = max(pr.heard_tick, min(m.sent_tick, self.ticks))
        if m.type == MsgType.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif m.type == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.paused = False
            if m.index < pr.match:
                # It no longer holds what it acknowledged (its data dir was lost): start over
                # from what it has. A delayed answer lands here too and costs only a resend.
                pr.match = m.index
                pr.become_probe()
                pr.next = m.index + 1
            if pr.state == _PState.REPLICATE and len(pr.inflight) >= self.max_inflight:
                # Appends may have been lost; make room so the next one can find out.
                del pr.inflight[0]
            if pr.match < self.last_index:
                self._send_append(m.frm, send_if_empty=True)
            if m.context:
                self._read_ack(m.frm, m.context)
        elif m.type == MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)

    def _handle_append_resp(self, m: Message, pr: _Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self._find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == _PState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm, send_if_empty=True)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state == _PState.PROBE:
            pr.become_replicate()
        elif pr.state == _PState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == _PState.REPLICATE:
            pr.free_le(m.index)
        if self._maybe_commit():
            self._bcast_commit = True
        if self.role != Role.LEADER:
            return  # it removed itself, and that just committed
        while self._send_append(m.frm, send_if_empty=False):
            pass

    def _maybe_commit(self) -> bool:
        matches = sorted((self._progress[v].match for v in self.voters), reverse=True)
        index = matches[self._quorum - 1]
        # Only entries of our own term are committed by counting (Raft §5.4.2).
        if index > self.commit and self.term_at(index) == self.term:
            self.commit = index
            self._release_waiting_reads()
            if self.id not in self._voter_set and self.commit >= self.conf_index:
                # We removed ourselves and that is now committed: tell the others (so they
                # apply it too) and step down; the remaining voters elect a leader.
                self._bcast_commit = True
                self._flush()
                self._become_follower(self.term, NONE)
                return False
            return True
        return False

    def _send_append(self, to: int, *, send_if_empty: bool) -> bool:
        pr = self._progress[to]
        if pr.is_paused(self.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None:
            # The entries this follower needs were compacted away: send the snapshot.
            if self._snapshot is None or prev > self.last_index:
                return False
            self._send(Message(MsgType.SNAPSHOT, self.id, to, self.term,
                               snapshot=self._snapshot))
            pr.become_snapshot(self._snapshot.index)
            return True
        hi = min(self.last_index, prev + self.max_msg_entries)
        ents: list[Entry] = []
        size = 0
        for e in self._log[prev - self._offset : hi - self._offset]:
            size += len(e.data)
            if ents and size > self.max_msg_bytes:
                break
            ents.append(e)
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APPEND, self.id, to, self.term, log_term=prev_term,
                           index=prev, entries=tuple(ents), commit=self.commit,
                           sent_tick=self.ticks))
        if pr.state == _PState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.paused = True  # probing: one message until the follower answers
        return True

    def _bcast_heartbeat(self, context: bytes) -> None:
        for peer in self._peers:
            pr = self._progress[peer]
            self._send(Message(MsgType.HEARTBEAT, self.id, peer, self.term,
                               commit=min(pr.match, self.commit), context=context,
                               sent_tick=self.ticks))

    def _flush(self) -> None:
        """Send the appends that proposals and commit advances asked for."""
        if self.role == Role.LEADER and (self._bcast_entries or self._bcast_commit):
            for peer in self._peers:
                sent = False
                while self._send_append(peer, send_if_empty=False):
                    sent = True
                if self._bcast_commit and not sent:
                    self._send_append(peer, send_if_empty=True)
        self._bcast_entries = self._bcast_commit = False

    # -- read index ------------------------------------------------------------------------
    def _leader_read(self, context: bytes, requester: int) -> None:
        if self.voters == [self.id]:
            self._read_answer(context, self.commit, requester)
        elif self.term_at(self.commit) != self.term:
            # Until an entry of our term commits we do not know the true commit index.
            self._reads_waiting.append((context, requester))
        else:
            self._reads.append(_PendingRead(context, self.commit, requester,
                                            {self.id} & self._voter_set))
            self._bcast_heartbeat(context)

    def _release_waiting_reads(self) -> None:
        waiting, self._reads_waiting = self._reads_waiting, []
        for context, requester in waiting:
            self._leader_read(context, requester)

    def _read_ack(self, frm: int, context: bytes) -> None:
        for i, rd in enumerate(self._reads):
            if rd.context == context:
                if frm in self._voter_set:  # a learner's ack proves nothing about a majority
                    rd.acks.add(frm)
                if len(rd.acks) >= self._quorum:
                    # A majority still followed us after every earlier request arrived too.
                    done, self._reads = self._reads[: i + 1], self._reads[i + 1 :]
                    for r in done:
                        self._read_answer(r.context, r.index, r.requester)
                return

    def _read_answer(self, context: bytes, index: int, requester: int) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, context))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, self.id, requester, self.term,
                               index=index, context=context))

    # -- outputs ---------------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _committed_to_apply(self) -> list[Entry]:
        if self._pending_snapshot is not None:
            return []  # the application must install the snapshot first
        hi = min(self.commit, self._persisted)
        lo = self._applying + 1
        if lo > hi:
            return []
        return self.entries(lo, hi + 1)

    def has_ready(self) -> bool:
        # Called after every event by the server loop (and the simulation): keep it cheap.
        if self._bcast_entries or self._bcast_commit:
            self._flush()
        if (self._msgs or self._unstable_from <= self._offset + len(self._log)
                or self._pending_snapshot is not None or self._read_states):
            return True
        p = self._prev_hs
        if p.term != self.term or p.vote != self.vote or p.commit != self.commit:
            return True
        return self._outstanding is None and self._applying < min(self.commit, self._persisted)

    def take_urgent(self) -> list[Message]:
        """The pending heartbeats, their answers and read-index messages, in the order they
        were produced, for sending at once; everything else stays for ready() (appends leave
        with the next Ready, before its fsync: see is_urgent)."""
        msgs = self._msgs
        if not msgs:
            return []
        urgent = [m for m in msgs if m.type in _LIVENESS]
        if urgent:
            self._msgs = [m for m in msgs if m.type not in _LIVENESS]
        return urgent

    def ready(self) -> RaftReady:
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready first")
        self._flush()
        hs = self.hard_state
        rd = RaftReady(
            entries=self._log[self._unstable_from - self._offset - 1 :],
            hard_state=hs if hs != self._prev_hs else None,
            messages=self._msgs,
            committed=self._committed_to_apply(),
            snapshot=self._pending_snapshot,
            read_states=self._read_states,
        )
        self._msgs, self._read_states = [], []
        self._unstable_from = self.last_index + 1
        self._prev_hs = hs
        if rd.snapshot is not None:
            self._applying = rd.snapshot.index
            self._pending_snapshot = None
        if rd.committed:
            self._applying = rd.committed[-1].index
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """`rd` is persisted, its messages sent and its committed entries applied."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() takes the Ready last returned by ready()")
        self._outstanding = None
        if rd.snapshot is not None:
            self._applied = max(self._applied, rd.snapshot.index)
        for e in reversed(rd.entries):
            # A step() between ready() and advance() may have replaced some of these entries;
            # by log matching, the highest one we still hold vouches for all below it.
            if self.term_at(e.index) == e.term:
                self._persisted = max(self._persisted, e.index)
                break
        if rd.committed:
            self._applied = rd.committed[-1].index
        if self.role == Role.LEADER:
            if self._progress[self.id].maybe_update(self._persisted) and self._maybe_commit():
                self._bcast_commit = True

    def status(self) -> dict[str, Any]:
        """For logs and the four-letter words."""
        st: dict[str, Any] = {
            "id": self.id, "role": str(self.role), "term": self.term, "vote": self.vote,
            "leader": self.leader_id, "commit": self.commit, "applied": self._applied,
            "last_index": self.last_index, "first_index": self.first_index,
            "learner": self.is_learner,
        }
        if self.role == Role.LEADER:
            st["progress"] = {v: {"match": p.match, "next": p.next, "state": p.state.value}
                              for v, p in sorted(self._progress.items())}
        return st
