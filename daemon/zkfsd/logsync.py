"""Where the log loop runs its blocking steps (the fsync of a Ready, saving a snapshot).

Two ways, chosen per step by `LogSyncer`:

- On one persistent thread (`SyncThread`), while the event loop keeps serving clients and peer
  messages. The hand-off is one lock release to wake the thread and one `run_sync_soon` back;
  `trio.to_thread.run_sync` did the same plus a capacity limiter, a context copy, the thread
  cache's bookkeeping and a cancellation hook per call (~30% of the CPU of a write at one
  request in flight, in the profiles of BENCHMARKS.md's write-path section).
- Inline on the event loop, which skips the hand-off and the two thread switches altogether,
  but stalls everything else in this process for as long as the sync takes. So only for a
  small batch (`SMALL_BATCH` entries: one client writing one at a time, where the hand-off
  was most of the CPU and a good part of the latency), and only where
  nothing else can starve: on an ensemble's leader only when the Ready's appends have already
  been written to the followers' sockets (the server's `inline_allowed` asks the transport),
  so that they sync while it does and nothing they need waits behind its disk, and only while
  the disk answers within `SLOW_SYNC` (20 ms, the shortest raft tick): one slower sync sends
  the syncs of the next `SLOW_WINDOW` seconds to the thread. A stall that short is of the order
  of a collector pause: a standalone server's readers wait that long at worst, and a member's
  heartbeats, their answers and acknowledgements are late by at most a tenth of a tickTime,
  far inside the election timeout (syncLimit ticks). On a leader the hand-off to the thread
  was 0.3-0.6 ms of a 2.5-3.5 ms ensemble write (BENCHMARKS.md, "Ensemble write latency").
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["SLOW_SYNC", "SLOW_WINDOW", "SMALL_BATCH", "LogSyncer", "SyncThread"]

# Inline only for a Ready of at most this many entries: a small batch means few writers, so
# there is little to overlap with the fsync, while a big batch means many clients whose next
# requests the event loop can read and propose while the thread syncs (at 16 sessions x 32 in
# flight the thread served 15-25% more writes than inline syncs, medians of alternating runs).
SMALL_BATCH = 4

# After a sync slower than SLOW_SYNC, syncs go to the thread for SLOW_WINDOW seconds.
SLOW_SYNC = 0.02
SLOW_WINDOW = 1.0


class SyncThread:
    """One daemon thread that runs the log's blocking steps, one at a time, for one trio run.

    The thread holds no state between jobs; a job's exception is raised in the caller. The
    caller must not be cancelled while a job runs (the log loop shields it): the job cannot be
    interrupted, and the log must not move on before its sync returned."""

    def __init__(self, name: str = "zkfsd-log-sync") -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._go = threading.Lock()
        self._go.acquire()
        self._job: tuple[Callable[[], Any], trio.lowlevel.Task] | None = None
        self._closed = False
        self._name = name
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:  # closed
                return
            fn, task = job
            self._job = None
            result = outcome.capture(fn)
            assert self._token is not None
            try:
                self._token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the thread; its result, or its exception raised here."""
        if self._thread is None:
            self._start()
        assert self._job is None, "one job at a time"
        self._job = (fn, trio.lowlevel.current_task())
        self._go.release()

        def abort(_: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the job runs to its end; the caller shields

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """Let the thread end (after the job it may be running)."""
        if self._thread is not None and not self._closed:
            self._closed = True
            self._job = None
            self._go.release()


class LogSyncer:
    """Runs a blocking step of the log inline or on the `SyncThread` (module docstring)."""

    def __init__(self, inline_allowed: Callable[[], bool]) -> None:
        self.thread = SyncThread()
        self._inline_allowed = inline_allowed
        self._slow_until = 0.0  # monotonic time until which syncs go to the thread

    async def run(self, fn: Callable[[], Any], *, may_inline: bool = True) -> Any:
        """`fn()`, inline if `may_inline` (the caller's say: a sync of a small batch) and the
        rules above allow, else on the thread; not cancellable while it runs."""
        started = time.monotonic()
        try:
            if may_inline and started >= self._slow_until and self._inline_allowed():
                return fn()
            with trio.CancelScope(shield=True):
                return await self.thread.run(fn)
        finally:
            # Only the syncs that could run inline tell how fast the disk is now (a snapshot's
            # save is slow by nature).
            ended = time.monotonic()
            if may_inline and ended - started > SLOW_SYNC:
                self._slow_until = ended + SLOW_WINDOW

    def close(self) -> None:
        self.thread.close()
