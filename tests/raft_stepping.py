"""The server's Ready driver, one blocking step at a time, for the Raft simulations.

A simulated member takes a Ready (`take_ready`) and then finishes each blocking step (saving a
snapshot, a sync) as its own action (`complete_ready`), so the simulation can deliver messages,
tick, or crash the member between them: a crash while `outstanding` is set tears what that step
would have made durable (MemoryStorage.crash).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from zkfsd.consensus import ReadyDriver


class SteppedDriver:
    def __init__(self, driver: ReadyDriver) -> None:
        self.driver = driver
        self._work: Iterator[Callable[[], None]] | None = None
        # The blocking step the member is "in", if any.
        self.outstanding: Callable[[], None] | None = None

    def _continue(self) -> None:
        """Run the Ready's handling up to its next blocking step (or to its end)."""
        assert self._work is not None
        self.outstanding = next(self._work, None)
        if self.outstanding is None:
            self._work = None

    def take_ready(self) -> None:
        assert self.outstanding is None
        self._work = self.driver.steps()
        self._continue()

    def complete_ready(self) -> None:
        assert self.outstanding is not None
        self.outstanding()
        self._continue()


class SteppedMember:
    """What a simulated member exposes of its SteppedDriver (None while it is crashed)."""

    stepper: SteppedDriver | None

    @property
    def outstanding(self) -> Callable[[], None] | None:
        return self.stepper.outstanding if self.stepper is not None else None

    def take_ready(self) -> None:
        assert self.stepper is not None
        self.stepper.take_ready()

    def complete_ready(self) -> None:
        assert self.stepper is not None
        self.stepper.complete_ready()
