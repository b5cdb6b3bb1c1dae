"""The mount's state: what the FUSE handlers (zkfs.fs) and the change follower (zkfs.events)
share, behind one narrow interface.

* the inode table (zkfs.inodes);
* the cached views of znodes and of directories' settings, trusted only while the follower
  keeps them coherent;
* the coherence sequence: every event the follower sees is counted (`note`), a value read at
  count N may be cached only if no event for its path came after N (`unchanged_since`), and an
  inode's kernel pages are trusted only if their invalidation (`inval_seq`) caught up with the
  last event noted for it (`noted_seq`);
* the events the mount expects from its own writes (derived from the ops it sends), which the
  follower does not replay;
* the replay in progress (what the replay responder in zkfs.fs answers with);
* invalidation of the kernel's caches.

The handlers own the open files; the follower reaches them only through `OpenHandles`.
Neither side reaches into the other: the follower never sees the Operations object.
"""
from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyfuse3

from zkfs.client import Op
from zkfs.constants import CreateMode, EventType, OpCode
from zkfs.inodes import Inode, InodeTable, Kind
from zkfs.jute import Stat
from zkfs.meta import META_ROOT, DirSettings
from zkfs.paths import base_name, is_within, parent_path

__all__ = ["DATA_NAME", "MountState", "OpenHandles", "ReplayState", "Expected", "View",
           "expected_events", "fake_stat", "inval_inode", "inval_entry"]

log = logging.getLogger(__name__)

#: The pseudo-file showing a directory znode's own data.
DATA_NAME = ".data"

#: How long an expected own event is remembered (a write whose event never came).
_EXPECT_TTL = 60.0
#: Events remembered to decide whether a fetched value may be cached (see `unchanged_since`).
_RECENT = 4096

_CREATES = (OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL)


def fake_stat(size: int = 0) -> Stat:
    """A Stat for a node the mount shows without having read it (now, nothing known)."""
    now = int(time.time() * 1000)
    return Stat(0, 0, now, now, 0, 0, 0, 0, size, 0, 0)


@dataclass(frozen=True)
class View:
    """A cached znode as a coherent read saw it."""
    kind: Kind
    stat: Stat
    #: The data, or NO_DATA when only the Stat is known.
    data: Any


@dataclass
class ReplayState:
    """What the replay thread's FUSE requests are answered with."""
    tid: int = 0
    #: path → (kind, stat, data) the replay shows, or None: "does not exist" (ENOENT).
    entries: dict[str, tuple[Kind, Stat, bytes | None] | None] = field(default_factory=dict)
    #: path → what the replayed mknod/mkdir creates (its lookup still answers ENOENT).
    creates: dict[str, tuple[Kind, Stat, bytes | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    """An event one of this mount's own writes will cause (the kernel reported that change
    already: it is not replayed)."""
    type: EventType
    path: str
    #: A sequential create: the name gets ZooKeeper's 10-digit suffix (matched by prefix).
    prefix: bool = False


def expected_events(ops: Iterable[Op]) -> list[Expected]:
    """The events a successful write of `ops` (one request, or one multi) causes."""
    out: list[Expected] = []
    for op in ops:
        if op.code in _CREATES:
            out.append(Expected(EventType.NODE_CREATED, op.path,
                                CreateMode(op.flags).is_sequential))
        elif op.code is OpCode.DELETE:
            out.append(Expected(EventType.NODE_DELETED, op.path))
        elif op.code is OpCode.SET_DATA:
            out.append(Expected(EventType.NODE_DATA_CHANGED, op.path))
    return out


class _Expectations:
    """Events this mount's own writes will cause, keyed by (type, path)."""

    def __init__(self) -> None:
        self._exact: dict[tuple[EventType, str], deque[float]] = {}
        #: Sequential creates: (parent, name prefix) → deadlines.
        self._prefix: dict[tuple[str, str], deque[float]] = {}

    def add(self, items: list[Expected]) -> None:
        deadline = time.monotonic() + _EXPECT_TTL
        for item in items:
            kind, path, prefix = item.type, item.path, item.prefix
            if prefix:
                self._prefix.setdefault((parent_path(path), base_name(path)),
                                        deque()).append(deadline)
            else:
                self._exact.setdefault((kind, path), deque()).append(deadline)

    def remove(self, items: list[Expected]) -> None:
        for item in items:
            kind, path, prefix = item.type, item.path, item.prefix
            table: dict[Any, deque[float]] = self._prefix if prefix else self._exact  # type: ignore[assignment]
            key = (parent_path(path), base_name(path)) if prefix else (kind, path)
            q = table.get(key)
            if q:
                q.pop()
                if not q:
                    del table[key]

    def consume(self, kind: EventType, path: str) -> bool:
        now = time.monotonic()
        q = self._exact.get((kind, path))
        while q and q[0] < now:
            q.popleft()
        if q:
            q.popleft()
            if not q:
                del self._exact[(kind, path)]
            return True
        if kind is EventType.NODE_CREATED and path != "/":
            name = base_name(path)
            if len(name) >= 10 and name[-10:].isdigit():
                key = (parent_path(path), name[:-10])
                q = self._prefix.get(key)
                while q and q[0] < now:
                    q.popleft()
                if q:
                    q.popleft()
                    if not q:
                        del self._prefix[key]
                    return True
        return False


class OpenHandles(Protocol):
    """What the follower may tell the handlers' open files (zkfs.fs keeps them)."""

    def note_remote(self, path: str, kind: EventType) -> None:
        """A change of `path` the open handles did not make."""

    def notify_pollers(self, path: str) -> None:
        """`path` changed: wake poll(2)/select(2) waiters on it."""


def inval_inode(ino: int, attr_only: bool = False) -> None:
    """Make the kernel drop its attributes (and, unless `attr_only`, pages) of `ino`."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only)
    except (FileNotFoundError, OSError) as exc:
        if getattr(exc, "errno", None) not in (errno.ENOENT, None):
            log.debug("invalidate_inode(%d): %r", ino, exc)


def inval_entry(parent: int, name: bytes) -> None:
    """Make the kernel drop its dentry `name` in directory `parent` (blocks: not inside a
    request that holds the directory's lock)."""
    try:
        pyfuse3.invalidate_entry(parent, name)
    except (FileNotFoundError, OSError) as exc:
        if getattr(exc, "errno", None) not in (errno.ENOENT, None):
            log.debug("invalidate_entry(%d, %r): %r", parent, name, exc)


class MountState:
    """One mount's state (see the module's docstring)."""

    def __init__(self) -> None:
        self.inodes = InodeTable()
        #: A change follower is attached: caches may be kept, and an expired session is
        #: replaced by a new one (zkfs.mount) rather than failing requests.
        self.following = False
        #: True while the follower's watch is armed and the session connected: cached values
        #: are current. Never true without a follower.
        self.coherent = False
        #: The replay in progress (set by the follower's replay thread), or None.
        self.replay: ReplayState | None = None
        #: The handlers' open files (set by zkfs.fs).
        self.handles: OpenHandles | None = None
        self._seq = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=_RECENT)
        self._expect = _Expectations()
        #: Settings znode path → DirSettings (zkfs.meta).
        self._settings: dict[str, DirSettings] = {}
        self._on_bound: Callable[[Inode], None] | None = None

    def follow(self, on_bound: Callable[[Inode], None]) -> None:
        """A follower is attached; `on_bound` learns of every inode handed to the kernel
        (the one-shot fallback arms watches for them)."""
        self.following = True
        self._on_bound = on_bound

    @staticmethod
    def reserved(path: str) -> bool:
        """Paths the mount never shows or creates (the settings' side tree)."""
        return is_within(path, META_ROOT)

    # ------------------------------------------------------------------ coherence sequence

    @property
    def seq(self) -> int:
        """The count of events seen so far (-1 without a follower: nothing may be cached)."""
        return self._seq if self.following else -1

    def note(self, path: str, created: bool = False) -> None:
        """An event for `path` arrived (called in wire order, before it is handled): cached
        values it may have changed are dropped and its kernel pages become suspect.
        `created`: the event says `path` was created (NodeCreated)."""
        self._seq += 1
        self._recent.append((self._seq, path))
        if self.reserved(path):
            self._settings.clear()  # a directory's settings (zkfs.meta) changed
            return
        # Cached values of the node and of its directory (child count, kind) are now suspect.
        # Except a directory's view when a child was created: a directory that gains a child
        # stays one, and what its attributes show (data length, mtime, ACL version) does not
        # move with its children; only the child count in its Stat is behind, and a view's
        # child count is only ever read for the kind. (So `echo x > d/f` twice does not
        # make the second open read d's Stat again for the kernel's permission check.)
        parent = parent_path(path)
        for p in (path, parent) if path != "/" else (path,):
            for inode in self.inodes.bound_at(p):
                if not (created and p == parent and inode.kind is Kind.DIR):
                    inode.view = None
                inode.listed = False
        # A child that changes kind shows in its directory's listing with a new inode number.
        grand = self.inodes.find(parent_path(parent_path(path)), Kind.DIR)
        if grand is not None:
            grand.listed = False
        # The kernel's pages of the node are suspect until invalidated (`inval_steps`): no
        # open is served from them meanwhile (zkfs.fs `_new_handle`).
        for inode in self.inodes.bound_at(path):
            inode.noted_seq = self._seq

    def unchanged_since(self, seq: int, path: str) -> bool:
        """No event that could change `path`'s stat or data arrived after `seq`."""
        if not self.coherent:
            return False
        if seq == self._seq:
            return True
        if not self._recent or self._recent[0][0] > seq + 1:
            return False  # forgotten: assume the worst
        for s, p in reversed(self._recent):
            if s <= seq:
                break
            if p == path or parent_path(p) == path:
                return False
        return True

    # ------------------------------------------------------------------ own events

    def expect(self, items: list[Expected]) -> None:
        """This mount is about to send writes causing `items` (not replayed when they come)."""
        if self.following:
            self._expect.add([i for i in items if not self.reserved(i.path)])

    def unexpect(self, items: list[Expected]) -> None:
        """The writes announced with `expect(items)` failed."""
        if self.following:
            self._expect.remove([i for i in items if not self.reserved(i.path)])

    def own(self, kind: EventType, path: str) -> bool:
        """Whether this event is one this mount's own writes caused (consumes it)."""
        return self._expect.consume(kind, path)

    # ------------------------------------------------------------------ cached views

    def bound(self, inode: Inode) -> None:
        """The kernel was handed `inode`."""
        if self._on_bound is not None:
            self._on_bound(inode)

    def view(self, path: str) -> View | None:
        """The cached znode at `path`, while the follower keeps it coherent."""
        if not self.coherent:
            return None
        for kind in (Kind.FILE, Kind.DIR):
            inode = self.inodes.find(path, kind)
            if inode is not None and inode.view is not None:
                stat, data = inode.view
                return View(kind, stat, data)
        return None

    def store_view(self, path: str, kind: Kind, stat: Stat, data: Any, seq: int) -> None:
        """Cache what a read at event count `seq` returned (data NO_DATA: only the stat),
        unless an event overtook it."""
        inode = self.inodes.find(path, kind)
        if inode is None or not inode.bound or not self.following:
            return
        if self.unchanged_since(seq, path):
            inode.view = (stat, data)

    def store_written(self, path: str, kind: Kind, stat: Stat, data: Any, seq: int,
                      caused: int = 1) -> None:
        """Cache what this mount's own write left at `path` (the Stat its reply carried, the
        data it sent), `seq` read before the write was sent. Kept only if at most the
        `caused` events of that write came for the path since: ZooKeeper sends a session its
        notifications in zxid order and a write's own before its reply, so any other write
        that overtook it shows as one more event here (not cached), and one after it comes
        after the reply (and drops the view when it is noted)."""
        inode = self.inodes.find(path, kind)
        if inode is None or not inode.bound or not self.following or not self.coherent:
            return
        if self._recent and self._recent[0][0] > seq + 1:
            return  # forgotten: assume the worst
        count = 0
        for s, p in reversed(self._recent):
            if s <= seq:
                break
            if p == path:
                count += 1
        if count <= caused:
            inode.view = (stat, data)

    def drop_views(self) -> None:
        """Events may have been missed: trust no cached value (nor the kernel's listings)."""
        for inode in self.inodes.all():
            inode.view = None
            inode.listed = False
        self._settings.clear()

    def settings(self, settings_path: str) -> DirSettings | None:
        """A directory's cached settings (by their znode's path), while coherent."""
        return self._settings.get(settings_path) if self.coherent else None

    def store_settings(self, settings_path: str, settings: DirSettings, seq: int) -> None:
        """Cache settings read at event count `seq`, unless an event overtook them."""
        if self.following and self.unchanged_since(seq, settings_path):
            self._settings[settings_path] = settings

    def forget_settings(self, settings_path: str) -> None:
        self._settings.pop(settings_path, None)

    # ------------------------------------------------------------------ open handles

    def remote_change(self, path: str, kind: EventType) -> None:
        """Open handles learn of a change they did not make (their next write reports it)."""
        if self.handles is not None:
            self.handles.note_remote(path, kind)

    def wake_pollers(self, path: str) -> None:
        if self.handles is not None:
            self.handles.notify_pollers(path)

    # ------------------------------------------------------------------ binding and detaching

    def bind(self, path: str, kind: Kind) -> Inode:
        """The inode of `path` seen as `kind`, created if needed; the inode the same path had
        as the other kind (the znode changed kind) loses its dentry."""
        inode, displaced = self.inodes.bind(path, kind)
        self.drop_dentries_async(displaced)
        return inode

    def detach(self, path: str, kinds: tuple[Kind, ...] = (Kind.FILE, Kind.DIR, Kind.DATA),
               *, subtree: bool = True) -> None:
        """The znode at `path` is gone (see InodeTable.unbind): its inodes no longer stand
        for the path, and the kernel drops their dentries."""
        self.drop_dentries_async(self.inodes.unbind(path, kinds, subtree=subtree))

    def detach_inode(self, inode: Inode) -> None:
        """`inode` no longer stands for its path (deleted, or changed kind): the kernel
        drops its dentry even if the table had let go of it already."""
        self.inodes.unbind(inode.path, (inode.kind,), subtree=False)
        self.drop_dentries_async([inode])

    # ------------------------------------------------------------------ kernel invalidation

    def drop_attrs(self, inode: Inode) -> None:
        """The kernel's attributes of `inode` are stale (its pages are not: see zkfs.fs
        `_drop_kernel_data`). Safe inside a request: it touches no page or lock."""
        inode.view = None
        inval_inode(inode.ino, attr_only=True)

    def drop_dentries_async(self, inodes: list[Inode]) -> None:
        """Make the kernel drop its dentries for inodes no longer mapped to their path;
        asynchronous, because a request may hold the directory's lock."""
        for old in inodes:
            if old.path == "/":
                continue
            parent = self.inodes.find(parent_path(old.path), Kind.DIR)
            name = DATA_NAME if old.kind is Kind.DATA else base_name(old.path)
            if parent is not None:
                pyfuse3.invalidate_entry_async(parent.ino, name.encode(), ignore_enoent=True)

    def inval_steps(self, inodes: list[Inode], *, data: bool) -> list[Callable[[], object]]:
        """Invalidations of `inodes` to run in a thread (they block until the kernel is
        done); pages dropped count as caught up with the events noted so far."""
        steps: list[Callable[[], object]] = []
        seq = self._seq
        for inode in inodes:
            def step(inode: Inode = inode) -> None:
                inval_inode(inode.ino, attr_only=not data)
                if data:
                    inode.inval_seq = max(inode.inval_seq, seq)
            steps.append(step)
        return steps

    def dentry_steps(self, inodes: list[Inode]) -> list[Callable[[], object]]:
        """Dentry invalidations of `inodes` to run in a thread (blocking)."""
        steps: list[Callable[[], object]] = []
        for inode in inodes:
            if inode.path == "/":
                continue
            parent = self.inodes.find(parent_path(inode.path), Kind.DIR)
            if parent is None:
                continue
            name = (DATA_NAME if inode.kind is Kind.DATA else base_name(inode.path)).encode()
            steps.append(lambda p=parent.ino, n=name: inval_entry(p, n))
        return steps
