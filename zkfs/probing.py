"""What kind of file a znode is, found with as few requests as the wire allows.

DESIGN.md's mapping: a znode is a directory if it has children or null data, else a file.
exists (a Stat) tells it for most znodes; only an empty, childless znode needs its data (null
or empty) — a get. A directory listing probes all its children at once (`probe_many`): one
batch of exists, then one batch of gets for the empty childless ones, each batch one write to
the server and no task per child (ZkClient.read_many).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zkfs.client import Op
from zkfs.errors import NoAuthError, NoNodeError, ZkError
from zkfs.inodes import Kind
from zkfs.jute import Stat

__all__ = ["Probe", "kind_from_stat", "kind_from_data", "probe_many"]


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
    ambiguous ones. A znode whose data this session may not read shows as a file (as
    fs._probe_unreadable). `seq` is stored in each probe (the caller read it before)."""
    out: dict[str, Probe] = {}
    ambiguous: list[tuple[str, Stat]] = []
    for path, stat in zip(paths, await read_many([Op.exists(p) for p in paths])):
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
