"""ZooKeeper's lock recipe (shared and exclusive), on the trio client; used by the mount's
flock/fcntl locks and by `zkfs lock`. (`zkfs elect`'s candidacy, zkfs.leadership, is the
exclusive half of the same recipe on the same names.)

The recipe (ZooKeeper's "Locks" and "Shared Locks" recipes, as kazoo implements them): every
contender creates one ephemeral sequential znode in the lock directory and then waits for the
one contender before it that conflicts with it; no contender polls, and a contender's node
goes when its session ends. Names are kazoo's: `<uuid4 hex>__lock__<seq>` for exclusive
(write) contenders, `<uuid4 hex>__rlock__<seq>` for shared (read) ones, so kazoo's
`WriteLock`/`Lock` and `ReadLock` on the same directory take part in the same queue
(kazoo's plain `Lock` ignores `__rlock__` nodes: it excludes exclusive holders only).

Where the lock of a file lives: a file znode cannot hold the lock's children (a znode with
children is a directory to the mount), so the lock directory of the file at mount-relative
path P is `/.zkfs/locks/<P percent-encoded into one name>` (`/jobs/nightly` →
`/.zkfs/locks/%2Fjobs%2Fnightly`), in the mount's hidden side tree (zkfs.meta), relative to
the connect string's chroot like everything else. Lock directories are persistent and left
in place after use, as kazoo and Curator leave theirs.
"""
from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import trio

from zkfs.client import ClientState, WatchedEvent, ZkClient
from zkfs.errors import ConnectionLossError, NoNodeError
from zkfs.leadership import LOCK_MARK, ensure_path
from zkfs.meta import META_ROOT
from zkfs.paths import base_name, join_path

__all__ = ["LOCKS_ROOT", "LockMode", "Contender", "ZkLock", "lock_dir", "contenders",
           "holders"]

#: Parent of every lock directory (hidden from the mount with the rest of META_ROOT).
LOCKS_ROOT = META_ROOT + "/locks"

_T = TypeVar("_T")
#: How the recipe makes a client call: directly, or through a caller's retry policy (the mount
#: retries through connection loss on hard mounts).
Caller = Callable[..., Awaitable[Any]]


async def _direct(fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
    return await fn(*args, **kwargs)


class LockMode(enum.Enum):
    """A contender's kind; the value is the marker in its node's name (kazoo's names)."""
    SHARED = "__rlock__"
    EXCLUSIVE = LOCK_MARK

    def conflicts_with(self, other: LockMode) -> bool:
        return self is LockMode.EXCLUSIVE or other is LockMode.EXCLUSIVE


_CONTENDER = re.compile(r"^(.*?)(__rlock__|__lock__)(-?\d{10})$")


@dataclass(frozen=True)
class Contender:
    """One child of a lock directory, as the recipe sees it."""
    name: str
    prefix: str
    mode: LockMode
    seq: int


def lock_dir(path: str) -> str:
    """The lock directory of the file at (chroot-relative) `path`."""
    return f"{LOCKS_ROOT}/{quote(path, safe='')}"


def _parse(name: str) -> Contender | None:
    m = _CONTENDER.match(name)
    if m is None:
        return None  # not a contender (e.g. a kazoo lease node): ignored, as kazoo does
    return Contender(name, m.group(1), LockMode(m.group(2)), int(m.group(3)))


async def contenders(zk: ZkClient, directory: str, call: Caller = _direct) -> list[Contender]:
    """The lock's contenders in queue order (empty if the directory does not exist)."""
    try:
        names = await call(zk.get_children, directory)
    except NoNodeError:
        return []
    parsed = [c for c in map(_parse, names) if c is not None]
    parsed.sort(key=lambda c: c.seq)
    return parsed


def holders(queue: list[Contender]) -> list[Contender]:
    """Those contenders of `queue` that hold the lock now."""
    held: list[Contender] = []
    for i, c in enumerate(queue):
        if not any(p.mode.conflicts_with(c.mode) for p in queue[:i]):
            held.append(c)
    return held


class ZkLock:
    """One contender: `acquire` queues and (optionally) waits, `release` leaves the queue.

    `ignore` names nodes that do not block this contender: the same owner's current lock
    while it converts (shared → exclusive or back) so that the conversion is atomic.
    """

    def __init__(self, zk: ZkClient, directory: str, mode: LockMode, data: bytes = b"",
                 *, call: Caller = _direct) -> None:
        self.zk = zk
        self.directory = directory
        self.mode = mode
        self.data = data
        self._call = call
        self._prefix = uuid.uuid4().hex
        #: Our node's name in the directory, once created.
        self.node: str | None = None
        self.held = False
        #: When the request that showed us holding was sent (trio clock): the ensemble heard
        #: from our session no earlier than that (zkfs.leadership.Lease counts from it).
        self.checked_at = 0.0

    @property
    def path(self) -> str | None:
        return None if self.node is None else join_path(self.directory, self.node)

    async def _create(self) -> None:
        base = f"{self.directory}/{self._prefix}{self.mode.value}"
        for _ in range(3):
            try:
                created = await self._call(self.zk.create, base, self.data, ephemeral=True,
                                           sequential=True)
            except NoNodeError:
                await self._call(ensure_path, self.zk, self.directory)
                continue
            except ConnectionLossError:
                # The create may have happened: our unique prefix finds it (kazoo does the same).
                mine = [c for c in await contenders(self.zk, self.directory, self._call)
                        if c.prefix == self._prefix]
                if not mine:
                    raise
                created = join_path(self.directory, mine[0].name)
            self.node = base_name(created)
            return
        raise NoNodeError(path=self.directory)

    async def acquire(self, *, blocking: bool = True, timeout: float | None = None,
                      ignore: Collection[str] = ()) -> bool:
        """Queue and wait until this contender holds the lock; True if it does. With
        `blocking=False` or once `timeout` seconds have passed, give up (the node is removed)
        and return False. Cancelling the wait also removes the node."""
        if self.node is None:
            await self._create()
        deadline = trio.current_time() + timeout if timeout is not None else None
        try:
            while True:
                if self.zk.state.is_terminal:
                    # The session ended (expired or closed): our node went with it.
                    raise NoNodeError(path=self.path)
                sent = trio.current_time()
                queue = await contenders(self.zk, self.directory, self._call)
                mine = next((c for c in queue if c.name == self.node), None)
                if mine is None:
                    # Our node is gone: the session that owned it ended.
                    raise NoNodeError(path=self.path)
                # Duplicates of ours (a create retried after a lost reply) would block us.
                for dup in [c for c in queue if c.prefix == self._prefix and c is not mine]:
                    await self._delete(dup.name)
                ahead = [c for c in queue if c.seq < mine.seq and c.prefix != self._prefix
                         and c.name not in ignore and c.mode.conflicts_with(self.mode)]
                if not ahead:
                    self.held = True
                    self.checked_at = sent
                    return True
                if not blocking or (deadline is not None and trio.current_time() >= deadline):
                    await self.release()
                    return False
                # Wait for the last conflicting contender before us, and only for it: when it
                # goes, look again (the queue before us may have changed meanwhile).
                gone = trio.Event()

                def wake(_event: WatchedEvent) -> None:
                    gone.set()

                def session_ended(state: ClientState) -> None:
                    # No watch fires any more: look again (and find our node gone).
                    if state.is_terminal:
                        gone.set()
                stat = await self._call(self.zk.exists, join_path(self.directory, ahead[-1].name),
                                        watch=wake)
                if stat is None:
                    continue
                self.zk.add_state_listener(session_ended)
                try:
                    with trio.move_on_at(deadline if deadline is not None else float("inf")):
                        await gone.wait()
                finally:
                    self.zk.remove_state_listener(session_ended)
        except BaseException:
            if not self.held and not self.zk.state.is_terminal:
                # Bounded: on a hard mount `call` would retry through an outage forever.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 10):
                    try:
                        await self.release()
                    except Exception:  # noqa: BLE001 - must not hide why the wait ended
                        # (ZooKeeper errors, or the mount's EIO after its timeout.) The node
                        # goes with the session at the latest.
                        pass
            raise

    async def _delete(self, name: str) -> None:
        try:
            await self._call(self.zk.delete, join_path(self.directory, name))
        except NoNodeError:
            pass

    async def release(self) -> None:
        """Leave the queue (release the lock, or stop waiting for it)."""
        node, self.node, self.held = self.node, None, False
        if node is not None:
            await self._delete(node)
