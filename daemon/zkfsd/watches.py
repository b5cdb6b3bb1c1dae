"""Watch registrations and ZooKeeper's rules for which change fires which watch.

A watcher is any hashable object (the server uses its client connections). One-shot watches are
removed when they fire; persistent and persistent-recursive watches (addWatch) stay until removed
or their watcher goes away. One change notifies a watcher at most once.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable

from zkfs.constants import EventType, WatcherType, WatchMode

Watcher = Hashable


def _parent(path: str) -> str:
    idx = path.rfind("/")
    return "/" if idx <= 0 else path[:idx]


def _ancestors_and_self(path: str) -> Iterable[str]:
    yield path
    while path != "/":
        path = _parent(path)
        yield path


class WatchManager:
    def __init__(self) -> None:
        # getData watches and exists watches share a table, as in ZooKeeper (an exists watch on a
        # missing node fires NodeCreated; on an existing one it behaves as a data watch).
        self.data: dict[str, set[Watcher]] = defaultdict(set)
        self.child: dict[str, set[Watcher]] = defaultdict(set)
        self.persistent: dict[str, set[Watcher]] = defaultdict(set)
        self.recursive: dict[str, set[Watcher]] = defaultdict(set)

    # -- registration -------------------------------------------------------------------------
    def add_data(self, path: str, watcher: Watcher) -> None:
        self.data[path].add(watcher)

    def add_child(self, path: str, watcher: Watcher) -> None:
        self.child[path].add(watcher)

    def add_persistent(self, path: str, watcher: Watcher, mode: int) -> None:
        table = self.recursive if mode == WatchMode.PERSISTENT_RECURSIVE else self.persistent
        table[path].add(watcher)

    def remove(self, path: str, watcher: Watcher, watcher_type: int, *, dry_run: bool = False) -> bool:
        """removeWatches/checkWatches: True if the watcher had a watch of that type on path."""
        # ZooKeeper 3.8 files persistent and recursive watches under both data and child
        # watches, so a check or removal by type finds them too.
        if watcher_type == WatcherType.CHILDREN:
            tables = [self.child, self.persistent, self.recursive]
        elif watcher_type == WatcherType.DATA:
            tables = [self.data, self.persistent, self.recursive]
        else:
            tables = [self.child, self.data, self.persistent, self.recursive]
        found = False
        for table in tables:
            watchers = table.get(path)
            if watchers and watcher in watchers:
                found = True
                if not dry_run:
                    watchers.discard(watcher)
                    if not watchers:
                        del table[path]
        return found

    def remove_watcher(self, watcher: Watcher) -> None:
        """Forget every watch of a watcher (its connection closed)."""
        for table in (self.data, self.child, self.persistent, self.recursive):
            for path in [p for p, ws in table.items() if watcher in ws]:
                table[path].discard(watcher)
                if not table[path]:
                    del table[path]

    # -- firing -------------------------------------------------------------------------------
    def trigger(self, event_type: EventType, path: str) -> list[Watcher]:
        """Watchers to notify of one change, one-shot registrations consumed."""
        hit: dict[Watcher, None] = {}  # ordered set
        if event_type in (EventType.NODE_CREATED, EventType.NODE_DATA_CHANGED):
            self._take(self.data, path, hit)
        elif event_type == EventType.NODE_DELETED:
            self._take(self.data, path, hit)
            self._take(self.child, path, hit)
        elif event_type == EventType.NODE_CHILDREN_CHANGED:
            self._take(self.child, path, hit)
        for watcher in self.persistent.get(path, ()):
            hit.setdefault(watcher)
        # Recursive watches see every change below them except NodeChildrenChanged, which
        # ZooKeeper does not send to them (the NodeCreated/NodeDeleted of the child says it).
        if self.recursive and event_type != EventType.NODE_CHILDREN_CHANGED:
            for ancestor in _ancestors_and_self(path):
                for watcher in self.recursive.get(ancestor, ()):
                    hit.setdefault(watcher)
        return list(hit)

    @staticmethod
    def _take(table: dict[str, set[Watcher]], path: str, hit: dict[Watcher, None]) -> None:
        watchers = table.pop(path, None)
        if watchers:
            for watcher in watchers:
                hit.setdefault(watcher)

    # -- reporting (wchs, wchc, wchp, mntr) ------------------------------------------------------
    def count(self) -> int:
        return sum(len(ws) for t in (self.data, self.child, self.persistent, self.recursive)
                   for ws in t.values())

    def paths(self) -> int:
        return len(set(self.data) | set(self.child) | set(self.persistent) | set(self.recursive))

    def by_watcher(self) -> dict[Watcher, list[str]]:
        out: dict[Watcher, list[str]] = defaultdict(list)
        for table in (self.data, self.child, self.persistent, self.recursive):
            for path, ws in table.items():
                for w in ws:
                    out[w].append(path)
        return out
