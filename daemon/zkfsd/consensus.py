"""What the server loop and the consensus core (raft.py) share: the Ready batch and zxids.

The core is a sans-IO state machine in the style of etcd-io/raft. Inputs: `propose(data)`,
`tick()`, `step(message)`. Outputs, collected by `ready()`: entries and hard state to persist,
messages to send, committed entries to apply. The caller persists (and fsyncs) a Ready, sends its
messages, applies its committed entries, then calls `advance(ready)`. A standalone server is an
ensemble of one and takes exactly the same path.
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
