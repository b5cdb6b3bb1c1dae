"""The log loop's blocking steps (logsync.py) and snapshots serialized in a forked child
(snapshotter.py), on their own; the server paths are covered by test_storage, test_faults and
test_ensemble (snapshots with a small snapCount, kill -9 under load)."""
from __future__ import annotations

import os
import threading

import pytest
import trio

from zkfsd import logsync
from zkfsd.logsync import LogSyncer, SyncThread
from zkfsd.snapshotter import SnapshotFailed, serialize_in_child


def test_sync_thread_runs_jobs_in_order_on_one_thread() -> None:
    async def main() -> None:
        worker = SyncThread()
        names = [await worker.run(lambda: threading.current_thread().name) for _ in range(50)]
        worker.close()
        assert set(names) == {"zkfsd-log-sync"}

    trio.run(main)


def test_sync_thread_raises_the_jobs_exception_in_the_caller() -> None:
    async def main() -> None:
        worker = SyncThread()

        def fail() -> None:
            raise OSError(5, "EIO from fsync")

        with pytest.raises(OSError, match="EIO"):
            await worker.run(fail)
        assert await worker.run(lambda: 7) == 7  # the thread survives
        worker.close()

    trio.run(main)


def test_sync_thread_job_finishes_when_the_caller_is_cancelled() -> None:
    async def main() -> None:
        syncer = LogSyncer(lambda: False)
        done = threading.Event()

        def slow() -> None:
            threading.Event().wait(0.2)
            done.set()

        with trio.move_on_after(0.01):
            await syncer.run(slow, may_inline=False)
        assert done.is_set()  # shielded: the log never moves on before its sync returned
        syncer.close()

    trio.run(main)


def test_log_syncer_inline_only_when_allowed_and_the_disk_is_fast(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsync, "SLOW_SYNC", 0.05)

    async def main() -> None:
        allowed = True
        syncer = LogSyncer(lambda: allowed)
        here = threading.current_thread()

        def where() -> bool:
            return threading.current_thread() is here

        assert await syncer.run(where) is True
        assert await syncer.run(where, may_inline=False) is False  # e.g. a snapshot's save
        allowed = False  # e.g. this member became an ensemble's leader
        assert await syncer.run(where) is False
        allowed = True
        # One slow sync sends the next ones to the thread for SLOW_WINDOW seconds.
        await syncer.run(lambda: threading.Event().wait(0.1))
        assert await syncer.run(where) is False
        monkeypatch.setattr(logsync, "SLOW_WINDOW", 0.0)
        await syncer.run(lambda: threading.Event().wait(0.1))
        assert await syncer.run(where) is True
        syncer.close()

    trio.run(main)


def test_snapshot_serialized_in_a_child_sees_the_state_at_the_fork() -> None:
    state = {"n": list(range(100_000))}

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            result: list[bytes] = []
            forking = trio.Event()

            async def snap() -> None:
                forking.set()  # the fork happens before serialize_in_child first yields
                result.append(await serialize_in_child(
                    lambda: (os.getpid().to_bytes(4, "big") + repr(state["n"][-3:]).encode())))

            nursery.start_soon(snap)
            await forking.wait()
            state["n"].append(-1)  # after the fork: not in the child's copy
        return result[0]

    data = trio.run(main)
    assert int.from_bytes(data[:4], "big") != os.getpid()
    assert data[4:] == repr([99_997, 99_998, 99_999]).encode()


def test_snapshot_child_that_fails_is_an_error_not_a_short_snapshot() -> None:
    def boom() -> bytes:
        raise MemoryError

    async def main() -> None:
        with pytest.raises(SnapshotFailed):
            await serialize_in_child(boom)

    trio.run(main)


def test_large_snapshot_crosses_the_pipe_whole() -> None:
    blob = os.urandom(3 << 20)

    async def main() -> bytes:
        return await serialize_in_child(lambda: blob)

    assert trio.run(main) == blob


def test_snapshot_child_does_not_hold_the_members_connections_open() -> None:
    """A connection the member closes while a snapshot child runs must close at once (the
    child would otherwise keep the socket, and a dead leader's peer connections, open)."""
    import socket
    import time

    a, b = socket.socketpair()

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            forking = trio.Event()

            async def snap() -> None:
                forking.set()
                await serialize_in_child(lambda: (time.sleep(1.0), b"x")[1])

            nursery.start_soon(snap)
            await forking.wait()
            started = time.monotonic()
            a.close()  # the member closes its end while the child serializes
            b.settimeout(5)
            assert b.recv(1) == b""  # EOF: no copy of `a` is left in the child
            return time.monotonic() - started

    try:
        assert trio.run(main) < 0.5
    finally:
        b.close()
