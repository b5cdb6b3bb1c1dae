"""The mount's inode table: which inode number stands for which znode path, and for how long.

ZooKeeper has no inode numbers, so the mount hands them out. An inode is identified by
(path, kind): a znode path seen as a regular file, as a directory, or as the pseudo-file that
shows a directory's own data. When a znode changes kind (a file gains a child and becomes a
directory) the path gets a *new* inode number, so the kernel never sees an inode change type.

Lookup counts follow the FUSE protocol: every successful lookup/create/mkdir/readdirplus entry
adds one, `forget` removes them; an inode is dropped once its count is zero. An inode whose path
was deleted or renamed over stays in the table ("unbound") until the kernel forgets it, so fstat
on an open, deleted file still answers.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from zkfs.paths import is_within

__all__ = ["Kind", "Inode", "InodeTable", "NO_DATA"]

#: `Inode.view` data when only the Stat is known.
NO_DATA = object()


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    #: The pseudo-file inside a directory showing the directory znode's own data.
    DATA = "data"


@dataclass(eq=False)
class Inode:
    ino: int
    #: Mount-relative znode path ("/" is the mount root). For Kind.DATA: the directory's path.
    path: str
    kind: Kind
    lookups: int = 0
    #: False once the path no longer names this inode (deleted, renamed over, changed kind).
    bound: bool = True
    #: Last attributes handed to the kernel (answers getattr on an unbound, still open inode).
    last_attr: pyfuse3.EntryAttributes | None = field(default=None, repr=False)
    #: The znode's Stat as last handed to the kernel (resync compares it with the tree).
    known_stat: Any = field(default=None, repr=False)
    #: Cached (stat, data) while the mount follows changes coherently (zkfs.mountstate); data is
    #: NO_DATA when only the stat is known. Dropped on every event touching the path.
    view: tuple[Any, Any] | None = field(default=None, repr=False)
    #: While page-cache handles are open (`pins` of them): the Stat of the version they read.
    #: The kernel is told that version's size until they are closed (zkfs.fs `_attr`).
    pinned: Any = field(default=None, repr=False)
    pins: int = 0
    #: The version (mzxid) whose data the kernel's page cache may hold (-1: none).
    pages_mzxid: int = -1
    #: For directories: the names seen at the last listing (kept up to date by events).
    children: set[str] | None = field(default=None, repr=False)
    #: For directories: the kernel holds a complete listing (FOPEN_CACHE_DIR) that no event
    #: has made stale since; opendir lets the kernel keep it.
    listed: bool = False
    #: The follower's event count of the last change noted for this node, and of the last
    #: invalidation of its kernel pages: pages are trusted only if inval_seq >= noted_seq.
    noted_seq: int = 0
    inval_seq: int = 0
    #: (aversion, permission bits the mount's identities may have by the znode's ACL): what
    #: `ls -l` shows. None: not known yet (the configured modes are shown).
    acl_mode: tuple[int, int] | None = field(default=None, repr=False)


class InodeTable:
    """inode number ↔ (path, kind), with FUSE lookup counts."""

    def __init__(self) -> None:
        self._by_ino: dict[int, Inode] = {}
        self._by_key: dict[tuple[str, Kind], Inode] = {}
        # Never reuse a number within one mount: a reused number could alias a stale kernel inode.
        self._next = pyfuse3.ROOT_INODE + 1
        root = Inode(pyfuse3.ROOT_INODE, "/", Kind.DIR, lookups=1)
        self._by_ino[root.ino] = root
        self._by_key[("/", Kind.DIR)] = root

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def all(self) -> list[Inode]:
        return list(self._by_ino.values())

    def find(self, path: str, kind: Kind) -> Inode | None:
        return self._by_key.get((path, kind))

    def bound_at(self, path: str) -> list[Inode]:
        """Every bound inode of `path` (file, directory or data pseudo-file)."""
        return [i for k in Kind if (i := self._by_key.get((path, k))) is not None]

    def bind(self, path: str, kind: Kind) -> tuple[Inode, list[Inode]]:
        """The inode of `path` seen as `kind`, created if needed; plus the inodes it displaced
        (the same path bound as the other of FILE/DIR: the znode changed kind)."""
        displaced: list[Inode] = []
        if kind is not Kind.DATA:
            other = Kind.DIR if kind is Kind.FILE else Kind.FILE
            old = self._by_key.get((path, other))
            if old is not None and old.ino != pyfuse3.ROOT_INODE:
                self._unbind_one(old)
                displaced.append(old)
        inode = self._by_key.get((path, kind))
        if inode is None:
            inode = Inode(self._next, path, kind)
            self._next += 1
            self._by_ino[inode.ino] = inode
            self._by_key[(path, kind)] = inode
        return inode, displaced

    def incref(self, inode: Inode, n: int = 1) -> None:
        inode.lookups += n

    def forget(self, ino: int, n: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None or ino == pyfuse3.ROOT_INODE:
            return
        inode.lookups -= n
        if inode.lookups <= 0:
            del self._by_ino[ino]
            if inode.bound and self._by_key.get((inode.path, inode.kind)) is inode:
                del self._by_key[(inode.path, inode.kind)]

    def _unbind_one(self, inode: Inode) -> None:
        if self._by_key.get((inode.path, inode.kind)) is inode:
            del self._by_key[(inode.path, inode.kind)]
        inode.bound = False
        inode.view = None
        if inode.lookups <= 0:
            self._by_ino.pop(inode.ino, None)

    def unbind(self, path: str, kinds: tuple[Kind, ...] = (Kind.FILE, Kind.DIR, Kind.DATA),
               subtree: bool = True) -> list[Inode]:
        """The znode at `path` is gone: detach its inodes (and, if `subtree`, its descendants')."""
        gone = [i for (p, k), i in list(self._by_key.items())
                if i.ino != pyfuse3.ROOT_INODE and (
                    (p == path and k in kinds) or (subtree and p != path and is_within(p, path)))]
        for inode in gone:
            self._unbind_one(inode)
        return gone

    def rename(self, old: str, new: str) -> None:
        """Move the bindings of `old` and everything below it to `new`."""
        self.unbind(new)
        moved = [i for (p, _), i in list(self._by_key.items())
                 if is_within(p, old)]
        for inode in moved:
            del self._by_key[(inode.path, inode.kind)]
        for inode in moved:
            inode.path = new + inode.path[len(old):]
            self._by_key[(inode.path, inode.kind)] = inode
