"""Fixtures for the whole suite: a fresh zkfsd per test, one Apache ZooKeeper per session."""
from __future__ import annotations

import contextlib
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


# scripts/test.sh runs the suite as two pytest processes side by side: most tests wait on
# processes, sockets and timeouts (one core is mostly idle meanwhile), while these modules keep
# a core busy in-process (the Raft simulations, codecs, the tree) or run long subprocesses
# with generous timeouts that assert nothing about speed (the benchmark harness, zkCli's
# outputs, kazoo's own tests, pip install): about a third of the suite's time, so that both
# lanes end at about the same time. They get the marker `side_lane` and run in the second
# process ("-m side_lane"), the rest in the first.
SIDE_LANE_MODULES = frozenset({
    "test_raft_sim", "test_raft_reconfig_sim", "test_raft", "test_tree", "test_jute",
    "test_storage", "test_txns", "test_wire", "test_server_inprocess", "test_linearizability",
    "test_paths", "test_mountstate", "test_watches", "test_sessions", "test_config",
    "test_bench", "test_zkcli", "test_kazoo_suite", "test_packaging",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SIDE_LANE_MODULES:
            item.add_marker(pytest.mark.side_lane)


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


# ===================== zkfs mount fixtures (tests/test_mount*.py) — begin =====================
# Kept in this one block; helpers live in tests/mount_helpers.py.

@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """`mount(hosts, options="", name=None)` → a started MountProcess (foreground `zkfs mount`);
    every mount is unmounted and its process stopped by PID after the test."""
    from mount_helpers import mounts

    with mounts(tmp_path) as factory:
        yield factory


@pytest.fixture(params=["zkfsd", "apache"])
def target(request: pytest.FixtureRequest) -> Iterator[object]:
    """The server a contract test mounts: a fresh zkfsd, or the session's Apache ZooKeeper;
    either way through a fresh chroot (`target.hosts`), created here and removed after."""
    from helpers import kazoo_client
    from mount_helpers import Target

    if request.param == "zkfsd":
        server = request.getfixturevalue("zkfsd")
        t = Target("zkfsd", server.hosts, 2.0)
    else:
        server = request.getfixturevalue("apache_zk")
        # Apache's minimum session timeout is 2 ticks of 2 s.
        t = Target("apache", server.hosts, 4.0)
    with kazoo_client(server.hosts) as k:
        k.create(t.chroot, b"")
    try:
        yield t
    finally:
        if request.param == "apache":
            with contextlib.suppress(Exception), kazoo_client(server.hosts) as k:
                k.delete(t.chroot, recursive=True)


@pytest.fixture
def kz(target: object) -> Iterator[object]:
    """A kazoo client chrooted like the mount: the same paths on both sides."""
    from helpers import kazoo_client

    with kazoo_client(target.hosts) as k:  # type: ignore[attr-defined]
        yield k
# ===================== zkfs mount fixtures — end =============================================
