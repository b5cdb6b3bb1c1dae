"""Fixtures for the whole suite: a fresh zkfsd per test, one Apache ZooKeeper per session."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import (
    ApacheZooKeeper,
    ZkfsdProcess,
    apache_zookeeper_missing,
    free_port,  # noqa: F401 - re-exported for tests that import from conftest by habit
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # Remember each phase's outcome on the item so fixture finalizers can tell a failed test and
    # attach the server's log to the report.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def zkfsd_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ZkfsdProcess]]:
    """Start any number of zkfsd processes: `factory(name="a", **ZkfsdProcess kwargs)`.

    Every process started through it is stopped after the test, whatever the outcome; on failure
    the tail of each log is printed (pytest shows it under "Captured stdout teardown").
    """
    started: list[ZkfsdProcess] = []

    def factory(name: str | None = None, *, start: bool = True, **kwargs: object) -> ZkfsdProcess:
        name = name or f"zkfsd{len(started) + 1}"
        proc = ZkfsdProcess(tmp_path / name, log_path=tmp_path / f"{name}.log", **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        if start:
            proc.start()
        return proc

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for proc in started:
            try:
                proc.stop()
            except BaseException as e:  # noqa: BLE001 - stop the others before reporting
                errors.append(e)
        if _test_failed(request):
            for proc in started:
                print(f"----- {proc.name} {proc.hosts} log ({proc.log_path}), last lines -----")
                print(proc.log_tail(80))
        if errors:
            raise errors[0]


@pytest.fixture
def zkfsd(zkfsd_factory: Callable[..., ZkfsdProcess]) -> ZkfsdProcess:
    """A started standalone zkfsd (tick 200 ms, fresh data dir, free port); always stopped."""
    return zkfsd_factory("zkfsd")


@pytest.fixture(scope="session")
def apache_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheZooKeeper]:
    """One standalone Apache ZooKeeper 3.8 for the whole session (reference behaviour).

    Skipped when Java or Debian's zookeeper package is missing, except under CI, where the
    reference must be there: a skipped comparison would hide a broken setup.
    """
    missing = apache_zookeeper_missing()
    if missing:
        message = f"Apache ZooKeeper unavailable: {missing}; run scripts/setup.sh"
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error)", pytrace=False)
        pytest.skip(message)
    zk = ApacheZooKeeper(tmp_path_factory.mktemp("apache-zk"))
    try:
        zk.start()
        yield zk
    finally:
        zk.stop()
