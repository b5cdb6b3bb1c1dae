"""The mount's cluster-wide file locks: flock(2) and POSIX (fcntl) locks as zkfs.lock contenders.

Who holds a lock, as the kernel sees it:
* a flock(2) lock belongs to an open file description (all dup'ed and inherited descriptors of
  one open()): the FUSE file handle, `FlockKey(fh)`. It goes at LOCK_UN and when the last
  descriptor of that open file is closed (pyfuse3 then calls flock(LOCK_UN) before release);
* a POSIX lock belongs to a process (the kernel's lock owner id) and a file:
  `PosixKey(owner, inode)`. It goes at F_UNLCK and at *any* close() by that process of a
  descriptor of the file (pyfuse3 calls setlk(F_UNLCK) before every flush), exit and kill -9
  included.
Both kinds are the same ZooKeeper lock of the file (as flock is emulated with POSIX locks on
NFS), so flock(1), lockf, fcntl and `zkfs lock` all exclude each other, on every host.

Each key holds at most one contender. Converting a flock lock releases it first, then queues
again (flock(2) documents that conversions are not atomic); a POSIX conversion queues the new
mode while the old one is still held and ignored by the new one, so it is atomic.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from zkfs.client import ZkClient
from zkfs.errors import ConnectionLossError, NoNodeError
from zkfs.lock import Caller, Contender, LockMode, ZkLock, contenders, holders, lock_dir

__all__ = ["FlockKey", "PosixKey", "HeldLock", "MountLocks", "fatal_signal_pending"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlockKey:
    fh: int


@dataclass(frozen=True)
class PosixKey:
    owner: int
    inode: int


LockKey = FlockKey | PosixKey


@dataclass
class HeldLock:
    lock: ZkLock
    #: The process that took it (reported by F_GETLK to other processes on this host).
    pid: int


class MountLocks:
    """The locks this mount holds, by owner; `zk()` is the mount's current session and `call`
    its retry policy for client calls."""

    def __init__(self, zk: Callable[[], ZkClient], call: Caller) -> None:
        self._zk = zk
        self._call = call
        self._held: dict[LockKey, HeldLock] = {}

    def _current(self, key: LockKey) -> HeldLock | None:
        held = self._held.get(key)
        if held is not None and held.lock.zk is not self._zk():
            # Taken in a session that has ended since: its node (and the lock) went with it.
            log.warning("lock %s of pid %d was lost with the session", held.lock.path,
                        held.pid)
            del self._held[key]
            return None
        return held

    async def lock(self, key: LockKey, path: str, mode: LockMode, *, blocking: bool,
                   pid: int) -> bool:
        """Take (or convert to) `mode` on the file at `path` for `key`; False if it is busy and
        not `blocking`. A blocking wait ends only by acquiring or by being cancelled."""
        current = self._current(key)
        if current is not None and current.lock.mode is mode:
            return True
        ignore: tuple[str, ...] = ()
        if current is not None:
            if isinstance(key, FlockKey):
                await self.unlock(key)
                current = None
            elif current.lock.node is not None:
                ignore = (current.lock.node,)
        data = f"{socket.gethostname()} pid {pid} (zkfs mount {os.getpid()})".encode()
        for attempt in range(3):
            contender = ZkLock(self._zk(), lock_dir(path), mode, data, call=self._call)
            try:
                if not await contender.acquire(blocking=blocking, ignore=ignore):
                    return False
                break
            except NoNodeError:
                # Our node went with an expired session while we waited: the mount has a new
                # session by now (or `call` waits for it); queue again there, as kazoo does.
                if attempt == 2 or current is not None:
                    raise
                # `call` returns once the mount has a live session again (or fails).
                await self._call(trio.sleep, 0)
        self._held[key] = HeldLock(contender, pid)
        if current is not None:
            await self._release(current)
        return True

    async def unlock(self, key: LockKey) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            await self._release(held)

    async def _release(self, held: HeldLock) -> None:
        if held.lock.zk is not self._zk():
            return
        try:
            await held.lock.release()
        except (ConnectionLossError, NoNodeError) as exc:
            # The node goes with the session at the latest.
            log.warning("releasing lock %s: %r", held.lock.path, exc)

    def forget_all(self) -> None:
        """The session ended: every lock went with it."""
        for held in self._held.values():
            log.warning("lock %s of pid %d was lost with the session", held.lock.path,
                        held.pid)
        self._held.clear()

    def mine(self, key: LockKey) -> set[str]:
        held = self._current(key)
        return {held.lock.node} if held is not None and held.lock.node else set()

    def local_pid(self, node: str) -> int:
        for held in self._held.values():
            if held.lock.node == node:
                return held.pid
        return 0

    async def conflict(self, key: LockKey, path: str, mode: LockMode) -> Contender | None:
        """A holder of the lock of `path` that would keep `key` from taking `mode`, if any."""
        queue = await contenders(self._zk(), lock_dir(path), self._call)
        own = self.mine(key)
        for c in holders(queue):
            if c.name not in own and c.mode.conflicts_with(mode):
                return c
        return None


_SIGKILL_BIT = 1 << (9 - 1)


def fatal_signal_pending(pid: int) -> bool:
    """Whether the thread `pid` (a FUSE request's pid is the calling thread's id) has SIGKILL
    pending, or is gone. A process waiting for a FUSE reply that was already sent to us cannot
    die until we answer: the kernel waits uninterruptibly then."""
    if pid <= 0:
        return False  # the requester is in a pid namespace we cannot see: nothing to tell
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigPnd:", b"ShdPnd:")):
                    if int(line.split()[1], 16) & _SIGKILL_BIT:
                        return True
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return False
