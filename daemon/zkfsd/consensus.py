"""The replicated log's core: a sans-IO state machine in the style of etcd-io/raft.

Inputs: `propose(data)`, `tick()`, `step(message)`. Outputs, collected by `ready()`: entries and
hard state to persist, messages to send, committed entries to apply. The caller persists (and
fsyncs) a Ready, sends its messages, applies its committed entries, then calls `advance(ready)`.
No clock, socket, disk or global randomness inside.

This version serves an ensemble of one: the member is leader of every term it starts, and an
entry is committed once it is durable on that one member (a majority of one). The ensemble issue
extends the same interface with elections and replication; the server loop does not change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zkfsd.storage import Entry, HardState


class NotLeader(Exception):
    """Proposals go to the leader; this member is not it."""


@dataclass
class Ready:
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    messages: list[Any] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.hard_state or self.messages or self.committed)


def make_zxid(term: int, index: int) -> int:
    """ZooKeeper's zxid: epoch in the high 32 bits, a counter in the low 32.

    Terms only grow and indexes only grow within a term, so zxids are monotonic across leader
    changes, which clients rely on (they refuse a server whose zxid is behind what they saw).
    """
    return (term << 32) | (index & 0xFFFFFFFF)


class LogCore:
    def __init__(self, member_id: int, voters: list[int], hard_state: HardState,
                 last_index: int, last_term: int) -> None:
        if voters != [member_id]:
            raise NotImplementedError("replication across members arrives with the ensemble issue")
        self.id = member_id
        self.voters = voters
        # A restart starts a new term, so zxids of this run are above every earlier one.
        self.term = max(hard_state.term, last_term) + 1
        self.vote = member_id
        # Everything durable on the only member is committed (a majority of one).
        self.commit = last_index
        self.last_index = last_index
        self.last_term = last_term
        self.is_leader = True
        self._unstable: list[Entry] = []
        self._unapplied: list[Entry] = []  # persisted, not yet handed out as committed
        self._persisted_index = last_index
        self._applied = last_index  # the caller replays the stored log before starting
        self._hs_dirty = True

    # -- inputs --------------------------------------------------------------------------------
    def next_position(self) -> tuple[int, int]:
        """(term, index) that the next proposal will get: the caller stamps its zxid with it."""
        return self.term, self.last_index + 1

    def propose(self, data: bytes) -> Entry:
        if not self.is_leader:
            raise NotLeader()
        entry = Entry(index=self.last_index + 1, term=self.term, data=data)
        self._unstable.append(entry)
        self.last_index = entry.index
        self.last_term = entry.term
        return entry

    def tick(self) -> None:
        """Time passes (one tick). A lone member has no elections or heartbeats to run."""

    def step(self, message: Any) -> None:
        raise NotImplementedError("no peers in an ensemble of one")

    # -- outputs -------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        return bool(self._unstable) or self._hs_dirty or bool(self._committed())

    def ready(self) -> Ready:
        hs = HardState(self.term, self.vote, self.commit) if self._hs_dirty else None
        return Ready(entries=list(self._unstable), hard_state=hs, committed=self._committed())

    def advance(self, ready: Ready) -> None:
        """The caller persisted `ready` and applied its committed entries."""
        if ready.entries:
            self._persisted_index = ready.entries[-1].index
            del self._unstable[:len(ready.entries)]
            self._unapplied.extend(ready.entries)
        if ready.hard_state is not None:
            self._hs_dirty = False
        if ready.committed:
            self._applied = ready.committed[-1].index
            del self._unapplied[:len(ready.committed)]
        # A majority of one: whatever is durable here is committed.
        if self._persisted_index > self.commit:
            self.commit = self._persisted_index

    def _committed(self) -> list[Entry]:
        return [e for e in self._unapplied if e.index <= self.commit]

    @property
    def applied(self) -> int:
        return self._applied
