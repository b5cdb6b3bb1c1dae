"""The log loop's blocking steps (logsync.py) and snapshots serialized in a forked child
(snapshotter.py), on their own; the server paths are covered by test_storage, test_faults and
test_ensemble (snapshots with a small snapCount, kill -9 under load)."""
from __future__ import annotations

import errno
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from zkfs import jute
from zkfs.constants import Err, OpCode
from zkfsd import handlers, logsync
from zkfsd.config import ServerConfig
from zkfsd.logsync import LogSyncer, SyncThread
from zkfsd.server import ZkServer
from zkfsd.snapshotter import SnapshotFailed, serialize_in_child
from zkfsd.storage import Storage
from zkfsd.tree import DataTree


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


# -- a member taking snapshots (in-process ZkServer, data on disk) ---------------------------------

def _run_member(tmp_path: Path, snap_count: int,
                body: Callable[[ZkServer], Awaitable[None]]) -> None:
    async def main() -> None:
        config = ServerConfig(data_dir=str(tmp_path / "data"), client_port=0,
                              client_address="127.0.0.1", tick_time=200, snap_count=snap_count)
        (tmp_path / "data").mkdir(exist_ok=True)
        server = ZkServer(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await body(server)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _create_all(server: ZkServer, paths: list[str]) -> None:
    acl = [jute.ACL(31, jute.Id("world", "anyone"))]
    proposals = [server.propose(handlers.write_txn(OpCode.CREATE,
                                                   jute.CreateRequest(p, b"x", acl, 0), 0, []))
                 for p in paths]
    for proposal in proposals:
        await proposal.done.wait()
        assert proposal.result is not None and proposal.result.err == Err.OK


async def _snapshots_settled(server: ZkServer, tmp_path: Path) -> list[Path]:
    with trio.fail_after(10):
        while server._snapshotting or not list((tmp_path / "data").glob("snapshot.*[0-9]")):
            await trio.sleep(0.01)
    return sorted((tmp_path / "data").glob("snapshot.*[0-9]"))


def test_snapshots_taken_while_writes_flow_are_of_their_index(tmp_path: Path) -> None:
    """Writes keep being applied while the child serializes: the snapshot saved must hold
    exactly the state at its index (a prefix of the creates), and a restart from it must
    come back with every write."""
    paths = [f"/n{i:03d}" for i in range(300)]

    async def write(server: ZkServer) -> None:
        await _create_all(server, paths)
        assert await _snapshots_settled(server, tmp_path)

    _run_member(tmp_path, 40, write)
    loaded = Storage(tmp_path / "data").load()
    assert loaded.snapshot is not None
    tree = DataTree.from_snapshot(loaded.snapshot.data)
    assert tree.last_zxid & 0xFFFFFFFF == loaded.snapshot.index
    in_snapshot = sorted(p for p in paths if tree.get(p) is not None)
    assert in_snapshot == paths[:len(in_snapshot)]  # nothing applied after the fork leaked in
    # Entries 1 (the leader's empty entry) and 2.. (the creates): the snapshot's index says
    # how many creates it holds.
    assert len(in_snapshot) == loaded.snapshot.index - 1

    async def check(server: ZkServer) -> None:
        assert all(server.tree.get(p) is not None for p in paths)

    _run_member(tmp_path, 40, check)


def test_snapshot_is_taken_in_process_when_fork_fails(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "fork: resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    paths = [f"/m{i:03d}" for i in range(100)]

    async def write(server: ZkServer) -> None:
        await _create_all(server, paths)
        assert await _snapshots_settled(server, tmp_path)
        await _create_all(server, ["/after"])  # still serving

    _run_member(tmp_path, 30, write)
    loaded = Storage(tmp_path / "data").load()
    assert loaded.snapshot is not None
    assert DataTree.from_snapshot(loaded.snapshot.data).get("/m000") is not None
