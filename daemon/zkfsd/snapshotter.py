"""Serializing the tree for a snapshot in a forked child, off the event loop.

A snapshot of the whole tree is a Python loop over every znode: ~0.4-0.9 s at 100,000 znodes
on this machine, which on the event loop stalled every client, and an ensemble leader's
heartbeats, once every snapCount writes (and cost ~11% of a write's CPU at 16 x 32 in the
profiles). A forked child sees the tree exactly as it was at the fork (copy-on-write), so the
snapshot is consistent at that log index while the member goes on applying; the child sends
the bytes back through a pipe and exits. The member then saves them through the log loop as
before (storage.save_snapshot on the sync thread) and hands them to the core.

The price is memory while the child runs: CPython's reference counting writes to every object
the child visits, so the pages of the tree are copied, up to the tree's size again for the
child's lifetime (about a second at 100,000 znodes); the member's own resident size does not
change.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

import trio

__all__ = ["ChildSnapshot", "SnapshotFailed", "serialize_in_child"]

_CHUNK = 1 << 20


class SnapshotFailed(Exception):
    """The child did not deliver a whole snapshot."""


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def _child(write_fd: int, serialize: Callable[[], bytes]) -> None:
    """In the child: never return (no trio, no finalizers, no atexit, no buffered output)."""
    status = 1
    try:
        # Let go of every inherited descriptor but the pipe (and stdio): otherwise a client or
        # peer connection the parent closes, or the listening port, would stay open as long as
        # the child lives, and a killed leader's peers would not see its connections drop.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _max_fd())
        # The parent's signal wakeup fd and handlers are trio's; a signal here is not for it.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        data = serialize()
        view = memoryview(data)
        # A length first, so a short read (a child killed half-way) is never taken for a
        # snapshot.
        os.write(write_fd, len(data).to_bytes(8, "big"))
        while view:
            view = view[os.write(write_fd, view[:_CHUNK]):]
        status = 0
    finally:
        os._exit(status)


class ChildSnapshot:
    """`serialize()` running in a child forked when this is made: the snapshot is of the
    state at that moment, whatever the member does meanwhile. OSError if the fork fails (the
    caller's state has not moved: it may serialize in-process instead)."""

    def __init__(self, serialize: Callable[[], bytes]) -> None:
        self._read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(self._read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # pragma: no cover - the child
            os.close(self._read_fd)
            _child(write_fd, serialize)
        os.close(write_fd)
        self.pid = pid

    async def result(self) -> bytes:
        """The child's bytes, read without blocking the event loop. SnapshotFailed if the
        child failed; cancellation kills the child. Once only."""
        read_fd, pid = self._read_fd, self.pid
        reaped = False
        try:
            os.set_blocking(read_fd, False)
            chunks: list[bytes] = []
            while True:
                await trio.lowlevel.wait_readable(read_fd)
                try:
                    chunk = os.read(read_fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
            # The child exits right after its last write; reap it off the event loop anyway.
            _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
            reaped = True
            # The 8-byte length arrives whole in the first read (pipe writes that small are
            # atomic).
            expected = int.from_bytes(chunks[0][:8], "big") if chunks else -1
            if chunks:
                chunks[0] = chunks[0][8:]
            data = b"".join(chunks)
            if status != 0 or len(data) != expected:
                raise SnapshotFailed(f"snapshot child {pid} ended with status {status} after "
                                     f"{len(data)} of {expected} bytes")
            return data
        finally:
            os.close(read_fd)
            if not reaped:
                with trio.CancelScope(shield=True):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    await trio.to_thread.run_sync(os.waitpid, pid, 0)


async def serialize_in_child(serialize: Callable[[], bytes]) -> bytes:
    """`serialize()` run in a child forked now, its result read back without blocking."""
    return await ChildSnapshot(serialize).result()
