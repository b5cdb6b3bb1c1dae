"""Run a command for `zkfs elect` / `zkfs register`, and stop it when the claim it runs under
is lost.

The command runs in its own process group, so stopping it reaches what it started (`sh -c`
pipelines, worker children): SIGTERM to the group, then SIGKILL to the group at the deadline.
It also gets PR_SET_PDEATHSIG=SIGKILL: if the supervising `zkfs` process itself is killed
(kill -9, OOM), the command dies with it instead of running on unsupervised while another host
takes over. The fork happens on the trio thread (not a worker thread), because the death
signal fires when the forking *thread* exits.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

__all__ = ["Child", "Outcome", "start", "run_supervised", "exit_status", "FORWARDED",
           "STOPPING"]

#: Signals that end the supervisor too: passed on to the command, which decides how to stop.
STOPPING = (signal.SIGTERM, signal.SIGINT)
#: Signals only passed on (a daemon's "reload" and user signals).
FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child may only make system calls (no dlopen, no locks).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _child_setup(parent: int) -> None:
    # Runs in the child between fork and exec.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)
    # The supervisor blocks nothing and ignores nothing the command should see.
    for sig in STOPPING + FORWARDED:
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class Child:
    """The command, in its own process group."""
    process: subprocess.Popen[bytes]
    pidfd: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> None:
        """Send `sig` to the command's whole process group (if it still exists)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait(self) -> int:
        """The command's returncode once it has exited (negative: killed by that signal)."""
        await trio.lowlevel.wait_readable(self.pidfd)
        code = self.process.wait()
        os.close(self.pidfd)
        self.pidfd = -1
        return code


def start(argv: Sequence[str]) -> Child:
    """Start `argv` (searched on PATH) in a new session and process group."""
    process = subprocess.Popen(list(argv), start_new_session=True,
                               preexec_fn=lambda parent=os.getpid(): _child_setup(parent))
    return Child(process, os.pidfd_open(process.pid))


def exit_status(returncode: int) -> int:
    """A shell's exit status for a returncode: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Outcome:
    """How the supervised command ended."""
    status: int            # its exit status, shell style
    lost: str | None       # why it was stopped by us, if the claim was lost
    stopped_by: int | None = None  # the signal (SIGTERM/SIGINT) we were stopped with, if any


async def run_supervised(child: Child, signals: trio.abc.ReceiveChannel[int],
                         wait_lost: Callable[[], Awaitable[str]] | None,
                         kill_deadline: Callable[[], float],
                         on_lost: Callable[[str], None] = lambda _reason: None) -> Outcome:
    """Wait for `child` to exit; pass signals on; when `wait_lost()` returns, SIGTERM the
    command's group at once and SIGKILL it at `kill_deadline()` (trio clock)."""
    outcome = Outcome(status=0, lost=None)
    async with trio.open_nursery() as nursery:
        async def pass_signals() -> None:
            async for sig in signals:
                if sig in STOPPING:
                    outcome.stopped_by = sig
                child.signal(sig)

        async def guard() -> None:
            assert wait_lost is not None
            reason = await wait_lost()
            outcome.lost = reason
            on_lost(reason)
            child.signal(signal.SIGTERM)
            await trio.sleep_until(kill_deadline())
            child.signal(signal.SIGKILL)

        nursery.start_soon(pass_signals)
        if wait_lost is not None:
            nursery.start_soon(guard)
        code = await child.wait()
        # The command is gone, but what it started may not be: the group goes with it.
        child.signal(signal.SIGKILL)
        outcome.status = exit_status(code)
        nursery.cancel_scope.cancel()
    return outcome
