"""What kind of file a znode is, found with as few requests as the wire allows; and a
directory's listing built from those probes as their replies arrive.

DESIGN.md's mapping: a znode is a directory if it has children or null data, else a file.
exists (a Stat) tells it for most znodes; only an empty, childless znode needs its data (null
or empty) — a get. A directory listing probes all its children at once (`Listing`): one
batch of exists sent in one write with no task per child (ZkClient.send_reads), read back
chunk by chunk, plus one batch of gets per chunk for its empty childless ones.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zkfs.client import Op, PendingReads
from zkfs.errors import NoAuthError, NoNodeError, ZkError
from zkfs.inodes import Kind
from zkfs.jute import Stat

__all__ = ["Probe", "Entry", "Listing", "kind_from_stat", "kind_from_data", "probe_many",
           "probes_from_stats"]


@dataclass
class Probe:
    stat: Stat
    kind: Kind
    #: The data if it had to be fetched (only for empty, childless znodes), else None.
    data: bytes | None = None
    #: The follower's event count when the probe started (see MountState.unchanged_since).
    seq: int = -1
    #: Whether `data` is the znode's data (else: not fetched).
    has_data: bool = False


def kind_from_stat(path: str, stat: Stat) -> Kind | None:
    """The kind a Stat alone tells, or None (empty and childless: only the data tells)."""
    if path == "/" or stat.num_children > 0:
        return Kind.DIR
    if stat.data_length > 0:
        return Kind.FILE
    return None


def kind_from_data(stat: Stat, data: bytes | None) -> Kind:
    return Kind.DIR if (data is None or stat.num_children > 0) else Kind.FILE


#: Sends independent reads in one batch (ZkClient.read_many, through the mount's retrying
#: wrapper): one result per op, a ZkError instance for a failed one.
ReadMany = Callable[[Sequence[Op]], Awaitable[list[Any]]]


async def probe_many(read_many: ReadMany, paths: Sequence[str], seq: int) -> dict[str, Probe]:
    """Probes of `paths` (absent ones left out): one exists batch, one get batch for the
    ambiguous ones. `seq` is stored in each probe (the caller read it before)."""
    stats = await read_many([Op.exists(p) for p in paths])
    return await probes_from_stats(read_many, paths, stats, seq)


async def probes_from_stats(read_many: ReadMany, paths: Sequence[str], stats: Sequence[Any],
                            seq: int) -> dict[str, Probe]:
    """Probes of `paths` from their exists results (`stats`), with one get batch for the
    ambiguous ones. A znode whose data this session may not read shows as a file (as
    fs._probe_unreadable)."""
    out: dict[str, Probe] = {}
    ambiguous: list[tuple[str, Stat]] = []
    for path, stat in zip(paths, stats):
        if isinstance(stat, ZkError):
            raise stat
        if stat is None:
            continue  # vanished since the listing
        kind = kind_from_stat(path, stat)
        if kind is None:
            ambiguous.append((path, stat))
        else:
            out[path] = Probe(stat, kind, seq=seq)
    if not ambiguous:
        return out
    gets = await read_many([Op.get(p) for p, _ in ambiguous])
    for (path, stat), got in zip(ambiguous, gets):
        if isinstance(got, NoNodeError):
            continue
        if isinstance(got, NoAuthError):
            out[path] = Probe(stat, Kind.FILE, seq=seq)
        elif isinstance(got, ZkError):
            raise got
        else:
            data, stat = got
            out[path] = Probe(stat, kind_from_data(stat, data), data, seq=seq, has_data=True)
    return out


#: One readdir entry: (name, znode path, kind, Stat).
Entry = tuple[str, str, Kind, Stat]


class Listing:
    """A directory's entries for readdir: `head` (`.`, `..`, `.data`) known at once, then
    the children in name order as their probes' replies come in (ZkClient.send_reads sent
    them all at once), so the kernel gets the first entries while the server still answers
    for the rest. `entries` only grows: an index handed to the kernel stays valid."""

    def __init__(self, head: list[Entry], names: list[str], paths: list[str],
                 cached: dict[str, Probe], sent: list[str], reads: PendingReads | None,
                 read_many: ReadMany, seq: int, chunk: int = 128) -> None:
        self.entries: list[Entry] = list(head)
        self._names = names
        self._paths = paths
        self._cached = cached
        #: Where each path not answered from the cache is among the reads sent.
        self._sent_at = {p: i for i, p in enumerate(sent)}
        self._reads = reads
        self._read_many = read_many
        self._seq = seq
        self._chunk = chunk
        self._pos = 0  # names[:_pos] are resolved

    @staticmethod
    def empty() -> Listing:
        """The listing of a directory that is gone."""

        async def nothing(ops: Sequence[Op]) -> list[Any]:
            return []
        return Listing([], [], [], {}, [], None, nothing, -1)

    @property
    def complete(self) -> bool:
        return self._pos >= len(self._names)

    async def entry(self, i: int) -> Entry | None:
        """Entry `i`, waiting for its probe if needed; None past the end."""
        while i >= len(self.entries) and not self.complete:
            await self._resolve_next()
        return self.entries[i] if i < len(self.entries) else None

    async def _resolve_next(self) -> None:
        lo, hi = self._pos, min(self._pos + self._chunk, len(self._names))
        paths = self._paths[lo:hi]
        probes = {p: self._cached[p] for p in paths if p in self._cached}
        sent = [p for p in paths if p not in self._cached]
        if sent:
            assert self._reads is not None
            try:
                stats = await self._reads.results(self._sent_at[sent[0]],
                                                  self._sent_at[sent[-1]] + 1)
            except ZkError:
                # The connection went before the replies came: read them again (the mount's
                # reads retry through reconnects).
                stats = await self._read_many([Op.exists(p) for p in sent])
            probes.update(await probes_from_stats(self._read_many, sent, stats, self._seq))
        for name, path in zip(self._names[lo:hi], paths):
            probe = probes.get(path)
            if probe is not None:  # else vanished meanwhile: just not listed
                self.entries.append((name, path, probe.kind, probe.stat))
        self._pos = hi
