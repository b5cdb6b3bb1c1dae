"""Following the ensemble's changes on a mount: coherent kernel caches and real inotify events.

inotify on a FUSE mount only reports what passes through this host's VFS, and the kernel's
invalidation calls raise no inotify events (DESIGN.md §4). So a change made elsewhere is
*replayed* through this mount's own mountpoint, from a worker thread:

* data changed     → `os.truncate(path, new_size)` (IN_MODIFY), then `open(O_WRONLY)` + close
                     (IN_OPEN, IN_CLOSE_WRITE) — on the file and in its directory;
* node created     → `os.mknod` or `os.mkdir` (IN_CREATE, with IN_ISDIR for a directory);
* node deleted     → `os.unlink` / `os.rmdir` (IN_DELETE in the directory, IN_DELETE_SELF on it);
* kind changed     → delete + create of the path (a file that gained a child is a new
                     directory inode, DESIGN.md §3).

The FUSE handlers (zkfs.fs) recognise the replay by the request context's pid, which is the
worker thread's native id, and answer from `MountState.replay` without touching the ensemble (for a
create, the lookup answers ENOENT first). Because the replay runs in a thread, the trio loop
keeps serving those requests while the replay waits for them.

Which changes: one persistent-recursive watch (addWatch) on the mount root; events on paths the
kernel holds no inode for (neither the znode nor its directory) are dropped, so every inotify
watch a user can set (it needs the inode) is covered. Servers without addWatch get re-armed
one-shot watches (zkfs.watching, shared with `zkfs watch`: exists on every held path,
getChildren on every held directory).

The mount's own changes are not replayed (the kernel already reported them): each mutation
registers the events it will cause (`MountState.expect`) and the follower consumes them
(`_own`). Kernel caches are invalidated for every event, own or not.

The follower shares the mount's state (zkfs.mountstate: inodes, cached views, the coherence
sequence, expected events, the replay in progress) with the handlers, and nothing else.

After a reconnect (the session survived) and after a session expiry (the mount opens a new
session), `resync` compares what the kernel holds with the tree and feeds the differences to
the same pipeline as events, so missed changes are reported too.
"""
from __future__ import annotations

import logging
import os
import stat as st
import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio

from zkfs.client import ClientState, WatchedEvent, ZkClient
from zkfs.constants import EventType, WatchMode
from zkfs.errors import NoNodeError, UnimplementedError, ZkError
from zkfs.inodes import Inode, Kind
from zkfs.jute import Stat
from zkfs.mountstate import DATA_NAME, MountState, ReplayState, fake_stat, inval_entry
from zkfs.paths import base_name, join_path, parent_path
from zkfs.watching import OneShotWatches

__all__ = ["ChangeFollower", "Change"]

log = logging.getLogger(__name__)

CREATED = EventType.NODE_CREATED
DELETED = EventType.NODE_DELETED
CHANGED = EventType.NODE_DATA_CHANGED
CHILDREN = EventType.NODE_CHILDREN_CHANGED


@dataclass
class Change:
    type: EventType
    path: str
    #: Produced by resync (a difference found), not by the server: never the mount's own.
    synthetic: bool = False


class ChangeFollower:
    """Watches the tree for the mount whose state is `state`, at `mountpoint`, and replays
    what changed."""

    def __init__(self, state: MountState, mountpoint: str, *, one_shot: bool = False,
                 replay: bool = True) -> None:
        self.state = state
        state.follow(self.track)
        self.mountpoint = mountpoint
        self.force_one_shot = one_shot
        #: False on a read-only mount: the VFS refuses the replay (EROFS); caches only.
        self.replay_enabled = replay
        self._send, self._receive = trio.open_memory_channel[Change](float("inf"))
        self._zk: ZkClient | None = None
        self.one_shot = False
        # One-shot mode: what is armed, and the watches of this session.
        self._armed: set[str] = set()
        self._watches: OneShotWatches | None = None
        self._arm_send, self._arm_receive = trio.open_memory_channel[str](float("inf"))
        self._resync_needed = trio.Event()
        #: Number of changes fully processed (for tests/diagnostics).
        self.processed = 0
        self.replayed = 0

    # ---------------------------------------------------------- called through MountState

    def track(self, inode: Inode) -> None:
        """The kernel holds `inode` (one-shot mode arms watches for it)."""
        if self.one_shot and inode.path not in self._armed and inode.kind is not Kind.DATA:
            self._armed.add(inode.path)
            self._arm_send.send_nowait(inode.path)

    # ------------------------------------------------------------------ session plumbing

    async def attach(self, zk: ZkClient, *, new_session: bool) -> None:
        """Start following through `zk` (the first session, or a new one after expiry)."""
        self._zk = zk
        self.state.coherent = False
        zk.add_state_listener(self._on_state)
        self.one_shot = self.force_one_shot
        if not self.one_shot:
            try:
                await zk.add_watch("/", WatchMode.PERSISTENT_RECURSIVE, self._on_event)
            except UnimplementedError:
                log.info("server has no addWatch: following with one-shot watches")
                self.one_shot = True
        if self.one_shot:
            self._armed.clear()
            self._watches = OneShotWatches(zk, self._on_event)
            for inode in list(self.state.inodes.all()):
                if inode.bound and inode.kind is not Kind.DATA:
                    self._armed.add(inode.path)
                    self._arm_send.send_nowait(inode.path)
        if new_session:
            # Everything the kernel holds may be stale: diff it against the tree.
            self._resync_needed.set()
        else:
            self.state.coherent = True

    def _on_state(self, state: ClientState) -> None:
        if state is ClientState.SUSPENDED:
            # Events may be missed until the reconnect: stop trusting cached values.
            self.state.coherent = False
            self.state.drop_views()
        elif state is ClientState.CONNECTED and self._zk is not None and not self.state.coherent:
            self._resync_needed.set()

    def _on_event(self, event: WatchedEvent) -> None:
        """Called synchronously by the client's reader, in wire order."""
        if event.type not in (CREATED, DELETED, CHANGED, CHILDREN):
            return
        path = event.path
        self.state.note(path, created=event.type is CREATED)
        if self.one_shot:
            self._arm_send.send_nowait("\0" + f"{int(event.type)}\0{path}")
            return
        self._send.send_nowait(Change(event.type, path))

    def _note(self, path: str) -> None:
        self.state.note(path)

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consume)
            nursery.start_soon(self._arm_loop)
            nursery.start_soon(self._resync_loop)

    async def _consume(self) -> None:
        async for change in self._receive:
            try:
                await self._handle(change)
            except ZkError as exc:
                log.info("following %s %s: %r", change.type.name, change.path, exc)
            except Exception:
                log.exception("following %s %s failed", change.type.name, change.path)
            self.processed += 1

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_needed.wait()
            self._resync_needed = trio.Event()
            zk = self._zk
            if zk is None or zk.state is not ClientState.CONNECTED:
                continue
            try:
                await self.resync(zk)
                self.state.coherent = True
            except ZkError as exc:
                log.info("resync failed (%r); will retry on the next reconnect", exc)

    # ------------------------------------------------------------------ one-shot fallback

    async def _arm_loop(self) -> None:
        async for item in self._arm_receive:
            watches = self._watches
            if watches is None:
                continue
            try:
                if item.startswith("\0"):
                    _, kind, path = item.split("\0", 2)
                    await self._one_shot_event(watches, EventType(int(kind)), path)
                else:
                    await self._arm(watches, item)
            except ZkError as exc:
                log.debug("one-shot watch on %s: %r", item, exc)

    async def _arm(self, watches: OneShotWatches, path: str) -> None:
        stat = await watches.arm(path, children=False)
        # Changed between the kernel's lookup and the arming: no event will say so.
        for inode in self.state.inodes.bound_at(path):
            known = inode.known_stat
            if inode.kind is not Kind.DATA and known is not None and stat is not None and (
                    stat.mzxid != known.mzxid or stat.num_children != known.num_children):
                self._note(path)
                await self._send.send(Change(CHANGED, path, True))
                break
        if stat is not None:
            await watches.arm_children(path)

    async def _one_shot_event(self, watches: OneShotWatches, kind: EventType,
                              path: str) -> None:
        if kind is CHILDREN:
            diff = await watches.children_changed(path)
            for child in diff.removed:
                await self._send.send(Change(DELETED, child))
            for child in diff.added:
                self._note(child)
                await self._send.send(Change(CREATED, child))
            return
        if kind is DELETED:
            watches.forget(path)
            if path in self._armed:
                self._armed.discard(path)
            return  # the parent's child event reports it
        if kind is CREATED:
            return  # likewise
        await self._send.send(Change(kind, path))
        if path in self._armed or self.state.inodes.bound_at(path):
            await watches.rearm(path)

    # ------------------------------------------------------------------ resync

    async def resync(self, zk: ZkClient) -> None:
        """Compare every znode the kernel holds with the tree; queue the differences."""
        inodes = [i for i in self.state.inodes.all() if i.bound and i.kind is not Kind.DATA]
        inodes.sort(key=lambda i: (i.path.count("/"), i.path))
        changes: list[Change] = []
        for inode in inodes:
            if self.state.reserved(inode.path):
                continue
            known = inode.known_stat
            stat = await zk.exists(inode.path)
            if stat is None:
                if inode.path != "/":
                    changes.append(Change(DELETED, inode.path, True))
                continue
            if known is None or stat.mzxid != known.mzxid or stat.num_children != known.num_children:
                changes.append(Change(CHANGED, inode.path, True))
            if inode.kind is Kind.DIR and (known is None or stat.pzxid != known.pzxid
                                           or inode.children is None):
                try:
                    kids = set(await zk.get_children(inode.path))
                except NoNodeError:
                    continue
                if inode.path == "/":
                    kids.discard(".zkfs")
                held = {base_name(i.path) for i in self.state.inodes.all()
                        if i.bound and i.path != "/" and parent_path(i.path) == inode.path
                        and i.kind is not Kind.DATA}
                before = (inode.children or set()) | held
                for name in sorted(kids - before):
                    changes.append(Change(CREATED, join_path(inode.path, name), True))
                for name in sorted((inode.children or set()) - kids - held):
                    changes.append(Change(DELETED, join_path(inode.path, name), True))
        self.state.drop_views()
        for change in changes:
            log.info("resync: %s %s", change.type.name, change.path)
            self._note(change.path)
            await self._send.send(change)

    # ------------------------------------------------------------------ handling one change

    def _own(self, change: Change) -> bool:
        return not change.synthetic and self.state.own(change.type, change.path)

    async def _handle(self, change: Change) -> None:
        path = change.path
        if self.state.reserved(path):
            return
        own = self._own(change)
        replay = self.replay_enabled and not own
        log.debug("change %s %s%s%s", change.type.name, path, " (own)" if own else "",
                  " (resync)" if change.synthetic else "")
        if not own:
            # Open handles learn it before anything else (their next write reports it).
            self.state.remote_change(path, change.type)
        if change.type is CHANGED:
            await self._changed(path, replay, own)
        elif change.type is CREATED:
            await self._created(path, replay, own)
        elif change.type is DELETED:
            await self._deleted(path, replay, own)

    def _held_dir(self, path: str) -> Inode | None:
        return self.state.inodes.find(path, Kind.DIR)

    async def _get(self, path: str) -> tuple[Kind, Stat, bytes | None] | None:
        try:
            data, stat = await self._client().get(path)
        except NoNodeError:
            return None
        kind = Kind.DIR if (path == "/" or data is None or stat.num_children > 0) else Kind.FILE
        return kind, stat, data

    async def _fetch(self, path: str) -> tuple[Kind, Stat, bytes | None] | None:
        seq = self.state.seq
        now = await self._get(path)
        if now is not None:
            self.state.store_view(path, now[0], now[1], now[2], seq)
        return now

    async def _changed(self, path: str, replay: bool, own: bool) -> None:
        inodes = self.state.inodes.bound_at(path)
        parent = self._held_dir(parent_path(path)) if path != "/" else None
        if not inodes and parent is None:
            return
        if own and self.state.inodes.find(path, Kind.DIR) is None:
            # This mount's own write of a file: the kernel reported it, and the file cannot
            # have changed kind; only its pages and size are dropped.
            await self._thread(self.state.inval_steps(inodes, data=True), None)
            self.state.wake_pollers(path)
            return
        # The kernel drops the old pages and size while the new version is fetched, and
        # before it can be cached and told (a page of the old version must never sit next
        # to the new size).
        seq = self.state.seq
        fetched: list[tuple[Kind, Stat, bytes | None] | None] = []

        async def fetch() -> None:
            fetched.append(await self._get(path))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._thread, self.state.inval_steps(inodes, data=True), None)
                nursery.start_soon(fetch)
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        now = fetched[0]
        if now is None:
            return  # deleted meanwhile: its delete event follows
        kind, stat, data = now
        self.state.store_view(path, kind, stat, data, seq)
        file_inode = self.state.inodes.find(path, Kind.FILE)
        dir_inode = self.state.inodes.find(path, Kind.DIR)
        if (file_inode is not None and kind is Kind.DIR) or (
                dir_inode is not None and kind is Kind.FILE and path != "/"):
            await self._kind_changed(path, kind, stat, data, replay)
            return
        if kind is Kind.DIR:
            # A directory's own data: the `.data` pseudo-file and the directory's attributes.
            if dir_inode is not None:
                await self._thread([lambda: inval_entry(dir_inode.ino, DATA_NAME.encode())],
                                   None)
            return
        self.state.wake_pollers(path)
        state = ReplayState(entries={path: (Kind.FILE, stat, data)})
        steps: list[Callable[[], object]] = []
        if replay:
            target = self._local(path)
            steps.append(lambda: os.truncate(target, stat.data_length))
            steps.append(lambda: os.close(os.open(target, os.O_WRONLY | os.O_NOFOLLOW)))
        await self._thread(steps, state)

    async def _created(self, path: str, replay: bool, own: bool) -> None:
        parent_p = parent_path(path)
        parent_file = self.state.inodes.find(parent_p, Kind.FILE)
        if parent_file is not None and parent_p != "/":
            # A file gained a child: it is a directory now.
            now = await self._fetch(parent_p)
            if now is not None and now[0] is Kind.DIR:
                await self._kind_changed(parent_p, now[0], now[1], now[2], replay and not own)
            return
        parent = self._held_dir(parent_p)
        if parent is None:
            return
        name = base_name(path)
        if parent.children is not None:
            parent.children.add(name)
        if own:
            return
        now = await self._fetch(path)
        if now is None:
            kind, stat, data = Kind.FILE, fake_stat(), b""
        else:
            kind, stat, data = now
        # If the kernel already looked it up (after the create), its dentry is dropped first so
        # that the replayed create reports it; the inode number stays the same.
        existing = self.state.inodes.bound_at(path)
        steps = self.state.inval_steps(existing, data=True)
        steps.append(lambda: inval_entry(parent.ino, name.encode()))
        state = ReplayState(entries={path: None})
        if replay:
            target = self._local(path)

            state.creates[path] = (kind, stat, data)
            # The lookup before the create answers ENOENT; the create binds the inode.
            steps.append(lambda: _make_node(target, kind))
            if kind is Kind.FILE:
                # A file created with its content (the mount's `echo x > f` is one create):
                # what a local create-and-write reports, IN_MODIFY and IN_CLOSE_WRITE.
                if stat.data_length:
                    steps.append(lambda: os.truncate(target, stat.data_length))
                steps.append(lambda: os.close(os.open(target, os.O_WRONLY | os.O_NOFOLLOW)))
        await self._thread(steps, state)

    async def _deleted(self, path: str, replay: bool, own: bool) -> None:
        parent_p = parent_path(path)
        parent = self._held_dir(parent_p)
        if parent is not None and parent.children is not None:
            parent.children.discard(base_name(path))
        inodes = [i for i in self.state.inodes.bound_at(path) if i.kind is not Kind.DATA]
        if not own and (inodes or parent is not None):
            self.state.wake_pollers(path)
            kind = inodes[0].kind if inodes else Kind.FILE
            stat = inodes[0].known_stat if inodes and inodes[0].known_stat else fake_stat()
            state = ReplayState(entries={path: (kind, stat, None)})
            if replay and parent is not None:
                target = self._local(path)
                steps: list[Callable[[], object]] = [
                    (lambda: os.rmdir(target)) if kind is Kind.DIR else (lambda: os.unlink(target))]
            else:
                steps = []
            await self._thread(steps, state)
            # Whatever the replay did not reach (no dentry in the kernel): detach it here.
            gone = self.state.inodes.unbind(path)
            if gone:
                await self._thread(self.state.dentry_steps(gone), None)
        # The directory may have become a file (data, and no children left).
        if parent is not None and parent_p != "/" and not own:
            try:
                stat = await self._client().exists(parent_p)
            except ZkError:
                return
            if stat is not None and stat.num_children == 0 and stat.data_length > 0:
                now = await self._fetch(parent_p)
                if now is not None and now[0] is Kind.FILE:
                    await self._kind_changed(parent_p, now[0], now[1], now[2], replay)

    async def _kind_changed(self, path: str, kind: Kind, stat: Stat, data: bytes | None,
                            replay: bool) -> None:
        """`path` is now `kind`: report the old one deleted and the new one created."""
        old_kind = Kind.FILE if kind is Kind.DIR else Kind.DIR
        old = self.state.inodes.find(path, old_kind)
        parent = self._held_dir(parent_path(path))
        old_stat = (old.known_stat if old is not None and old.known_stat else fake_stat())
        state = ReplayState(entries={path: (old_kind, old_stat, None)})
        steps: list[Callable[[], object]] = []
        target = self._local(path)
        if replay and parent is not None:
            steps.append((lambda: os.rmdir(target)) if old_kind is Kind.DIR
                         else (lambda: os.unlink(target)))

            state.creates[path] = (kind, stat, data)

            def forget_old() -> None:
                state.entries[path] = None
            steps += [forget_old, lambda: _make_node(target, kind)]
        await self._thread(steps, state)
        gone = [i for i in self.state.inodes.unbind(path, (old_kind,), subtree=True)]
        if parent is not None and gone:
            await self._thread(self.state.dentry_steps(gone), None)

    # ------------------------------------------------------------------ thread work

    def _client(self) -> ZkClient:
        # The session now (a new one after an expiry: `attach` gave it).
        assert self._zk is not None
        return self._zk

    def _local(self, path: str) -> str:
        return self.mountpoint if path == "/" else self.mountpoint + path

    async def _thread(self, steps: list[Callable[[], object]],
                      state: ReplayState | None) -> None:
        if not steps:
            return
        shared = self.state

        def work() -> None:
            if state is not None:
                state.tid = threading.get_native_id()
                shared.replay = state
            try:
                for step in steps:
                    try:
                        step()
                    except OSError as exc:
                        log.debug("replay step failed: %r", exc)
            finally:
                if state is not None:
                    shared.replay = None
        # Abandoned on cancel: at unmount a replay blocked in the VFS ends with ENOTCONN.
        await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        if state is not None:
            self.replayed += 1


def _make_node(target: str, kind: Kind) -> None:
    """The replayed create of a `kind` node at `target` (what raises IN_CREATE)."""
    if kind is Kind.DIR:
        os.mkdir(target)
    else:
        os.mknod(target, st.S_IFREG | 0o644)
