"""What the consensus core (raft.py), the log storage (storage.py) and the server share: the log's
types, the Ready batch, zxids, and the one driver that takes a Ready through its steps.

The core is a sans-IO state machine in the style of etcd-io/raft. Inputs: `propose(data)`,
`tick()`, `step(message)`. Outputs, collected by `ready()`: entries and hard state to persist,
messages to send, committed entries to apply. `ReadyDriver` handles a Ready in the one safe
order (persist, fsync, send, apply, then `advance(ready)`), for the server and for the test
harnesses alike, against anything with the storage interface (`LogStorage`: the real
`storage.Storage` or the in-memory `storage.MemoryStorage`). A standalone server is an
ensemble of one and takes exactly the same path.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Application", "Entry", "HardState", "LogStorage", "NotLeader", "ReadState", "Ready",
    "ReadyDriver", "Snapshot", "make_zxid",
]


@dataclass(frozen=True)
class Entry:
    index: int
    term: int
    data: bytes


@dataclass
class HardState:
    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass
class Snapshot:
    index: int
    term: int
    data: bytes


class NotLeader(Exception):
    """Proposals go to the leader; this member is not it."""


@dataclass(frozen=True, slots=True)
class ReadState:
    """Reads with this context may be served once the local applied index reaches `index`."""

    index: int
    context: bytes


@dataclass
class Ready:
    """One batch of the core's output; see ReadyDriver for the order it is handled in."""

    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    messages: list[Any] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None  # from the leader: install before anything else
    read_states: list[ReadState] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.hard_state or self.messages or self.committed
                    or self.snapshot is not None or self.read_states)


def make_zxid(term: int, index: int) -> int:
    """ZooKeeper's zxid: epoch in the high 32 bits, a counter in the low 32.

    Terms only grow and indexes only grow within a term, so zxids are monotonic across leader
    changes, which clients rely on (they refuse a server whose zxid is behind what they saw).
    """
    return (term << 32) | (index & 0xFFFFFFFF)


class LogStorage(Protocol):
    """What the driver needs of a log: writes that become durable at `sync()`, and snapshots
    that are durable when `save_snapshot` returns (storage.Storage, storage.MemoryStorage)."""

    def append(self, entries: list[Entry]) -> None: ...
    def set_hard_state(self, hs: HardState) -> None: ...
    def sync(self) -> None: ...
    def save_snapshot(self, snap: Snapshot) -> None: ...


class Application(Protocol):
    """The state machine behind the log."""

    def install_snapshot(self, snap: Snapshot) -> None: ...
    def apply(self, entry: Entry) -> None: ...
    def read_state(self, index: int, context: bytes) -> None: ...


class _Core(Protocol):
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready: ...
    def advance(self, rd: Ready) -> None: ...


class ReadyDriver:
    """Takes the core's Readys through persist, send, apply and advance, in the only safe order:

      1. messages that vouch for nothing unpersisted (`is_urgent`: heartbeats and their
         answers, the leader's appends) leave at once, so neither the disk nor a long batch
         ever delays them;
      2. the snapshot, if any, is saved (durable on return) and handed to the application;
      3. entries, then the hard state, are written, and synced when the Ready has entries or
         a changed term or vote (a hard state whose only news is the commit index rides along
         with the next sync: a lost commit index is learned again from the leader);
      4. only now do votes and acknowledgements leave: what they vouch for is durable;
      5. committed entries (durable here by construction) are applied, read states reported;
      6. `advance`.

    The blocking steps (saving a snapshot, syncing) are not run here: `steps()` yields them as
    callables, so the server runs them on a worker thread (the core keeps taking messages and
    proposals meanwhile) and the simulation can crash a member between them. `run()` does it
    all inline, for harnesses without threads.
    """

    def __init__(self, core: _Core, storage: LogStorage, send: Callable[[Sequence[Any]], None],
                 app: Application, is_urgent: Callable[[Any], bool],
                 synced_vote: tuple[int, int] | None = None,
                 on_append: Callable[[list[Entry]], None] | None = None) -> None:
        self.core = core
        self.storage = storage
        self.send = send
        self.app = app
        self.is_urgent = is_urgent
        self.syncs = 0  # Readys that needed an fsync
        self.last: Ready | None = None  # the last Ready taken
        # (term, vote) as last made durable: a change needs a sync before the votes leave.
        self._synced_vote = synced_vote
        # Told of entries as they are written (before anything is applied): the server notes
        # the memberships they carry (reconfig).
        self.on_append = on_append

    def steps(self) -> Iterator[Callable[[], None]]:
        """Handle one Ready (nothing if the core has none), yielding its blocking steps."""
        core = self.core
        if not core.has_ready():
            return
        rd = core.ready()
        self.last = rd
        urgent = [m for m in rd.messages if self.is_urgent(m)]
        later = [m for m in rd.messages if not self.is_urgent(m)] if urgent else rd.messages
        if urgent:
            self.send(urgent)
        snapshot = rd.snapshot
        if snapshot is not None:
            yield functools.partial(self.storage.save_snapshot, snapshot)
            self.app.install_snapshot(snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
            if self.on_append is not None:
                self.on_append(rd.entries)
        hs = rd.hard_state
        vote_changed = False
        if hs is not None:
            self.storage.set_hard_state(hs)
            vote_changed = (hs.term, hs.vote) != self._synced_vote
        if rd.entries or vote_changed:
            yield self.storage.sync
            self.syncs += 1
            if hs is not None:
                self._synced_vote = (hs.term, hs.vote)
        if later:
            self.send(later)
        for entry in rd.committed:
            self.app.apply(entry)
        for rs in rd.read_states:
            self.app.read_state(rs.index, rs.context)
        core.advance(rd)

    def run(self) -> int:
        """Handle every Ready the core has, inline; how many."""
        n = 0
        while self.core.has_ready():
            for work in self.steps():
                work()
            n += 1
        return n
