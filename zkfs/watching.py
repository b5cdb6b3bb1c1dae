"""Following a tree with ZooKeeper's one-shot watches, for servers without addWatch (ZooKeeper
before 3.6), shared by the mount's change follower (zkfs.events) and `zkfs watch` (zkfs.cli).

A one-shot watch fires once; it is set again by the read that learns the new state. A
NodeChildrenChanged says only that a directory's children changed, so the children each
watched directory had at its last read are kept and diffed: the event becomes the creations
and deletions it stands for (`ChildrenDiff`). Changes between an event and the re-arming read
are seen by that read, never reported twice, but intermediate states can be missed; that is the
nature of one-shot watches.

Which nodes to follow is the caller's choice (the mount follows what the kernel holds,
`zkfs watch` a subtree or one node).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zkfs.errors import NoNodeError
from zkfs.paths import is_within, join_path

if TYPE_CHECKING:  # kept light: `zkfs` imports this before it knows it needs a session
    from zkfs.client import ZkClient
    from zkfs.jute import Stat

__all__ = ["ChildrenDiff", "OneShotWatches"]


@dataclass(frozen=True)
class ChildrenDiff:
    """What a directory's NodeChildrenChanged stood for (full paths, sorted)."""
    added: list[str]
    removed: list[str]
    #: The directory itself is gone (its own delete event reports that).
    gone: bool = False


class OneShotWatches:
    """One-shot watches kept armed through `zk`; every watch set calls `watcher` once."""

    def __init__(self, zk: ZkClient, watcher: Callable[[Any], None]) -> None:
        self.zk = zk
        self.watcher = watcher
        #: Watched directory → its children at the last read.
        self._children: dict[str, set[str]] = {}

    async def arm(self, path: str, *, children: bool = True) -> Stat | None:
        """Watch `path` for data changes, deletion and (if absent) creation, and, with
        `children`, its children; returns its Stat (None: absent)."""
        stat = await self.zk.exists(path, watch=self.watcher)
        if stat is not None and children:
            await self.arm_children(path)
        return stat

    async def arm_children(self, path: str) -> None:
        """Watch the children of `path` (which existed a moment ago)."""
        try:
            self._children[path] = set(await self.zk.get_children(path, watch=self.watcher))
        except NoNodeError:
            # Deleted meanwhile (the exists watch reports it): nothing known below it.
            self._children.pop(path, None)

    async def rearm(self, path: str) -> None:
        """Watch `path` again after its data-changed event."""
        await self.zk.exists(path, watch=self.watcher)

    async def children_changed(self, path: str) -> ChildrenDiff:
        """`path`'s children watch fired: read (and watch) them again, and say what changed."""
        gone = False
        try:
            now = set(await self.zk.get_children(path, watch=self.watcher))
        except NoNodeError:
            now, gone = set(), True
        before = self._children.get(path, set())
        self._children[path] = now
        return ChildrenDiff(added=[join_path(path, n) for n in sorted(now - before)],
                            removed=[join_path(path, n) for n in sorted(before - now)],
                            gone=gone)

    def children_of(self, path: str) -> set[str]:
        """The names `path` had at its last read (empty if not read)."""
        return set(self._children.get(path, ()))

    def forget(self, path: str, *, subtree: bool = False) -> None:
        """`path` is gone: its children are no longer known."""
        if subtree:
            for p in [p for p in self._children if is_within(p, path)]:
                del self._children[p]
        else:
            self._children.pop(path, None)
