"""clientWorkers: a member serving clients from several processes that share the client port.

The zkfsd here runs with clientWorkers=3 (the member and two workers); each session's
process is found through /proc (the process holding the server end of its TCP connection).
The steps whose outcome ZooKeeper defines (reading one's own writes, watch order, ephemeral
lifetime, sync) run against Apache ZooKeeper as well.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import four_letter_word, kazoo_client
from mount_helpers import wait_for

from zkfsd.config import ConfigError, build_config

WORKERS = 3

pytestmark = pytest.mark.timeout(120)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (any of its threads may have started them)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return sorted(found)


def _tcp_rows() -> list[list[str]]:
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(name).read_text().splitlines()[1:]]
    return rows


def _listeners(port: int) -> int:
    """Sockets listening on `port` (state 0A)."""
    return sum(1 for row in _tcp_rows()
               if int(row[1].rsplit(":", 1)[1], 16) == port and row[3] == "0A")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def serving_pid(client: Any, server_port: int, pids: list[int]) -> int | None:
    """The process among `pids` that holds the server end of kazoo `client`'s connection."""
    sock = client._connection._socket  # kazoo keeps its socket there
    local_port = sock.getsockname()[1]
    inode = None
    for row in _tcp_rows():
        local, remote = row[1], row[2]
        if (int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == local_port):
            inode = row[9]
    if inode is None:
        return None
    return next((pid for pid in pids if inode in _socket_inodes(pid)), None)


class Server:
    """The server under test: `hosts`, a fresh path prefix, and for zkfsd its processes."""

    def __init__(self, kind: str, hosts: str, port: int, member_pid: int | None) -> None:
        self.kind = kind
        self.hosts = hosts
        self.port = port
        self.member_pid = member_pid
        self.prefix = f"/workers-{uuid.uuid4().hex[:8]}"

    def pids(self) -> list[int]:
        assert self.member_pid is not None
        return [self.member_pid, *_children(self.member_pid)]


def start_with_workers(zkfsd_factory: Callable[..., Any], tmp_path: Path, workers: int = WORKERS,
                       name: str = "zkfsd") -> Any:
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f"dataDir={tmp_path / name}\nclientWorkers={workers}\n"
                   f"4lw.commands.whitelist=*\n")
    proc = zkfsd_factory(name, extra_args=["--config", str(cfg)])
    # Every process listens before a test counts on connections spreading.
    wait_for(lambda: _listeners(proc.port) == workers, 20, what=f"{workers} listeners")
    return proc


@pytest.fixture(params=["workers", "apache"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "workers":
        proc = start_with_workers(request.getfixturevalue("zkfsd_factory"), tmp_path)
        s = Server("workers", proc.hosts, proc.port, proc.pid)
        s.process = proc  # type: ignore[attr-defined]
    else:
        zk = request.getfixturevalue("apache_zk")
        s = Server("apache", zk.hosts, zk.port, None)
    with kazoo_client(s.hosts) as k:
        k.create(s.prefix, b"")
    try:
        yield s
    finally:
        with contextlib.suppress(Exception), kazoo_client(s.hosts) as k:
            k.delete(s.prefix, recursive=True)


@contextlib.contextmanager
def clients(hosts: str, n: int, **kwargs: Any) -> Iterator[list[Any]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(kazoo_client(hosts, **kwargs)) for _ in range(n)]


def two_processes(server: Server, pool: list[Any]) -> tuple[Any, Any]:
    """Two clients of `pool` served by different processes (any two against ZooKeeper)."""
    if server.kind != "workers":
        return pool[0], pool[1]
    pids = server.pids()
    by_pid: dict[int | None, Any] = {}
    for client in pool:
        by_pid.setdefault(serving_pid(client, server.port, pids), client)
    by_pid.pop(None, None)
    assert len(by_pid) >= 2, f"all {len(pool)} sessions landed on one process"
    first, second = list(by_pid.values())[:2]
    return first, second


def test_sessions_spread_over_processes_and_read_their_own_writes(server: Server) -> None:
    with clients(server.hosts, 12) as pool:
        if server.kind == "workers":
            pids = server.pids()
            assert len(pids) == WORKERS
            landed = {serving_pid(c, server.port, pids) for c in pool}
            assert None not in landed
            assert len(landed) >= 2, f"12 sessions on {landed}"
        for i, c in enumerate(pool):
            path = f"{server.prefix}/n{i}"
            c.create(path, b"0")
            for value in range(5):
                c.set(path, str(value).encode())
                # The reply to a read after a write on the same session shows the write.
                assert c.get(path)[0] == str(value).encode()
            # Pipelined: the read is sent before the write's reply arrives.
            w = c.set_async(path, b"piped")
            r = c.get_async(path)
            w.get(timeout=10)
            assert r.get(timeout=10)[0] == b"piped"
            # Sequential creates answered in order with their own names.
            names = [c.create(f"{server.prefix}/seq{i}-", b"", sequence=True) for _ in range(3)]
            assert names == sorted(names)
        # A reconfig is refused alike by every process (reconfigEnabled is off by default).
        from kazoo.exceptions import ReconfigDisabledError
        for c in pool:
            with pytest.raises(ReconfigDisabledError):
                c.reconfig(joining=None, leaving="2", new_members=None)
        # Another session, on another process, sees every write after a sync.
        reader = pool[-1]
        reader.sync(server.prefix)
        children = reader.get_children(server.prefix)
        for i in range(12):
            assert f"n{i}" in children
            assert reader.get(f"{server.prefix}/n{i}")[0] == b"piped"


def test_watches_fire_once_in_order_across_processes(server: Server) -> None:
    with clients(server.hosts, 8) as pool:
        watcher, writer = two_processes(server, pool)
        base = f"{server.prefix}/w"
        writer.create(base, b"")
        writer.create(f"{base}/x", b"0")
        watcher.sync(base)
        events: list[tuple[str, str]] = []
        seen_data: list[bytes] = []
        lock = threading.Lock()

        def record(event: Any) -> None:
            with lock:
                events.append((event.type, event.path))

        assert watcher.get(f"{base}/x", watch=record)[0] == b"0"
        watcher.get_children(base, watch=record)
        watcher.exists(f"{base}/y", watch=record)
        writer.set(f"{base}/x", b"1")
        writer.set(f"{base}/x", b"2")  # the data watch is used up: no second event
        writer.create(f"{base}/y", b"")
        writer.delete(f"{base}/y")
        wait_for(lambda: len(events) >= 3, 10, what="three watch events")
        time.sleep(0.5)  # room for a wrong extra event to arrive
        with lock:
            got = list(events)
        assert got == [("CHANGED", f"{base}/x"), ("CREATED", f"{base}/y"),
                       ("CHILD", base)], got
        # After the event, the watcher's reads show at least the change that fired it.
        watcher.sync(base)
        seen_data.append(watcher.get(f"{base}/x")[0])
        assert seen_data == [b"2"]


def test_ephemeral_nodes_die_with_their_session(server: Server, tmp_path: Path) -> None:
    with clients(server.hosts, 8) as pool:
        owner, other = two_processes(server, pool)
        path = f"{server.prefix}/eph"
        owner.create(path, b"", ephemeral=True)
        other.sync(path)
        assert other.exists(path) is not None
        owner.stop()  # closeSession
        other.sync(path)
        assert other.exists(path) is None
        # A session whose client dies expires (its process stops touching it), and its
        # ephemeral node goes with it.
        script = tmp_path / "die.py"
        script.write_text(
            "import sys, time\nfrom kazoo.client import KazooClient\n"
            f"c = KazooClient(hosts={server.hosts!r}, timeout=1.0)\nc.start(timeout=15)\n"
            f"c.create({path!r} + '2', b'', ephemeral=True)\nprint('created', flush=True)\n"
            "time.sleep(60)\n")
        child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "created"
            other.sync(path)
            assert other.exists(path + "2") is not None
        finally:
            child.kill()
            child.wait()
        # zkfsd negotiates the 1 s asked for; ZooKeeper raises it to 2 ticks of 2 s.
        wait_for(lambda: other.sync(path) is not None and other.exists(path + "2") is None,
                   20, what="the dead client's ephemeral node to go")


def test_kill9_of_a_worker_loses_its_connections_only(zkfsd_factory: Callable[..., Any],
                                                      tmp_path: Path) -> None:
    proc = start_with_workers(zkfsd_factory, tmp_path)
    member = proc.pid
    states: dict[int, list[str]] = {}
    with clients(proc.hosts, 12, timeout=4.0) as pool:
        pids = [member, *_children(member)]
        on_worker = [c for c in pool
                     if serving_pid(c, proc.port, pids) not in (None, member)]
        assert on_worker, "no session landed on a worker"
        victim_client = on_worker[0]
        victim = serving_pid(victim_client, proc.port, pids)
        assert victim is not None
        for i, c in enumerate(pool):
            states[i] = []
            c.add_listener(lambda state, i=i: states[i].append(str(state)))
        sessions = [c.client_id[0] for c in pool]
        victims = [i for i, c in enumerate(pool) if serving_pid(c, proc.port, pids) == victim]
        acknowledged = {}
        for i, c in enumerate(pool):
            path = f"/k{i}"
            c.create(path, b"")
            for n in range(10):
                c.set(path, str(n).encode())
            acknowledged[path] = b"9"
        os.kill(victim, signal.SIGKILL)
        # Its clients reconnect (to another process) and keep their sessions.
        for i in victims:
            wait_for(lambda i=i: pool[i].connected and "CONNECTED" in states[i][1:], 20,
                     what=f"client {i} to reconnect")
        for i, c in enumerate(pool):
            assert c.client_id[0] == sessions[i]
            assert "LOST" not in states[i]
            if i not in victims:
                assert states[i] == [], f"client {i} on another process saw {states[i]}"
            c.sync("/")
            for path, value in acknowledged.items():
                assert c.get(path)[0] == value
        for i, c in enumerate(pool):
            c.set(f"/k{i}", b"after")
            assert c.get(f"/k{i}")[0] == b"after"
        assert proc.running
        # The member starts the worker again.
        wait_for(lambda: _listeners(proc.port) == WORKERS and victim not in _children(member),
                   30, what="the worker to be started again")


def test_four_letter_words_from_any_process(zkfsd_factory: Callable[..., Any],
                                            tmp_path: Path) -> None:
    proc = start_with_workers(zkfsd_factory, tmp_path)
    with clients(proc.hosts, 3) as pool:
        pool[0].create("/fourlw", b"x")
        seen_worker = set()
        seen_member = False
        for _ in range(30):  # new connections land on every process sooner or later
            srvr = four_letter_word(proc.host, proc.port, "srvr")
            assert "Mode: standalone" in srvr
            assert "Node count:" in srvr
            mntr = four_letter_word(proc.host, proc.port, "mntr")
            assert "zk_server_state\tstandalone" in mntr
            for line in mntr.splitlines():
                if line.startswith("zk_client_worker\t"):
                    seen_worker.add(int(line.split("\t")[1]))
                elif line.startswith("zk_client_workers_running\t"):
                    # The member's answer: it counts the processes and its workers' clients.
                    assert line == f"zk_client_workers_running\t{WORKERS}"
                    seen_member = True
            assert four_letter_word(proc.host, proc.port, "ruok") == "imok"
            if len(seen_worker) == WORKERS - 1 and seen_member:
                break
        assert seen_worker == set(range(1, WORKERS)), seen_worker
        assert seen_member


def test_client_workers_config(tmp_path: Path) -> None:
    cfg = tmp_path / "zoo.cfg"
    cfg.write_text(f"dataDir={tmp_path}\nclientWorkers=4\n")
    assert build_config(str(cfg)).client_workers == 4
    cfg.write_text(f"dataDir={tmp_path}\n")
    assert build_config(str(cfg)).client_workers == 1
    for bad in ("0", "-1", "two"):
        cfg.write_text(f"dataDir={tmp_path}\nclientWorkers={bad}\n")
        with pytest.raises(ConfigError, match="clientWorkers"):
            build_config(str(cfg))


def test_workers_of_a_follower_across_a_leader_change(tmp_path: Path) -> None:
    """Writes through a follower's workers go to the leader; when the leader dies, the
    follower's workers drop their clients like the follower does, the clients come back
    to the new majority with their sessions, and no acknowledged write is lost."""
    from ensemble_helpers import Ensemble

    from kazoo.exceptions import NodeExistsError

    # A longer tick than the ensemble tests' default: nine zkfsd processes share this
    # machine's cores with other work, and a starved leader must not look dead before the kill.
    ens = Ensemble(tmp_path / "ens", 3, tick_time=500, extra_cfg=[f"clientWorkers={WORKERS}"])
    try:
        ens.start()
        leader = ens.wait_stable()
        follower = next(sid for sid in ens.ids if sid != leader)
        port = ens.client_ports[follower]
        wait_for(lambda: _listeners(port) == WORKERS, 20, what="the follower's workers")
        survivors = [sid for sid in ens.ids if sid != leader]
        with clients(ens.hosts([follower]), 8, timeout=10.0) as pool:
            pids = [ens.pids()[follower], *_children(ens.pids()[follower])]
            landed = {serving_pid(c, port, pids) for c in pool}
            assert len(landed - {None}) >= 2, landed
            sessions = [c.client_id[0] for c in pool]
            for i, c in enumerate(pool):
                # ConnectionLoss is an answer ZooKeeper may give any time (a member that loses
                # contact with its leader drops its clients): retried, as clients do.
                with contextlib.suppress(NodeExistsError):
                    c.retry(c.create, f"/f{i}", b"")
                c.retry(c.set, f"/f{i}", b"before")
                assert c.retry(c.get, f"/f{i}")[0] == b"before"
            ens.kill9(leader)
            # kazoo retries the one host it was given; the follower serves again once the
            # two survivors elected a leader.
            ens.wait_stable(survivors, timeout=30)
            for i, c in enumerate(pool):
                wait_for(lambda c=c: c.connected, 30, what=f"client {i} to reconnect")
                assert c.client_id[0] == sessions[i]
                c.retry(c.sync, "/")
                for j in range(len(pool)):
                    assert c.retry(c.get, f"/f{j}")[0] == b"before"
            for i, c in enumerate(pool):
                c.retry(c.set, f"/f{i}", b"after")
                assert c.retry(c.get, f"/f{i}")[0] == b"after"
        with ens.client(survivors) as check:
            check.retry(check.sync, "/")
            assert all(check.retry(check.get, f"/f{i}")[0] == b"after" for i in range(8))
    finally:
        ens.stop_all()


def test_workers_exit_with_their_member(zkfsd_factory: Callable[..., Any],
                                        tmp_path: Path) -> None:
    """kill -9 of the member leaves no worker holding the client port."""
    proc = start_with_workers(zkfsd_factory, tmp_path)
    workers = _children(proc.pid)
    assert len(workers) == WORKERS - 1
    proc.kill9()

    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    wait_for(lambda: not any(alive(pid) for pid in workers), 10, what="the workers to exit")
    wait_for(lambda: _listeners(proc.port) == 0, 10, what="the client port to close")


# The trio client's single-session contract tests (tests/test_client.py), run once more
# against a member with client workers (each test's session lands on any of the processes):
# every operation, containers and TTLs, multi, cancelled and concurrent requests. Imported
# under other names so that pytest collects them here with this module's `hosts` fixture.
# test_client.py's tests with two sessions are left out: they read what another session just
# wrote without a sync, which only a single server process answers for sure (ZooKeeper
# promises it within one session or after sync; in an ensemble, as across client workers,
# another session's write shows once its server applied it). The cross-process behaviour is
# what the tests above check, with syncs where ZooKeeper needs them.
from test_client import (  # noqa: E402
    base,
    test_cancelled_and_concurrent_requests as test_client_cancelled_and_concurrent_requests,
    test_container_and_ttl_nodes as test_client_container_and_ttl_nodes,
    test_every_operation as test_client_every_operation,
    test_multi as test_client_multi,
)

__all__ = ["base"]  # a fixture the imported tests use


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One zkfsd with client workers for the imported client tests (each uses its own paths)."""
    from helpers import ZkfsdProcess

    tmp = tmp_path_factory.mktemp("client-workers")
    cfg = tmp / "zoo.cfg"
    cfg.write_text(f"dataDir={tmp / 'data'}\nclientWorkers={WORKERS}\n")
    proc = ZkfsdProcess(tmp / "data", log_path=tmp / "zkfsd.log", extra_args=["--config", str(cfg)])
    proc.start()
    try:
        wait_for(lambda: _listeners(proc.port) == WORKERS, 20, what=f"{WORKERS} listeners")
        yield proc.hosts
    finally:
        proc.stop()


def test_mount_on_a_member_with_workers(zkfsd_factory: Callable[..., Any], mount: Any,
                                        tmp_path: Path) -> None:
    """Two zkfs mounts (two sessions, likely on different processes): each sees its own
    writes at once, and the other's through its change follower (watches)."""
    from mount_helpers import sh
    from mount_helpers import wait_for as mount_wait_for

    proc = start_with_workers(zkfsd_factory, tmp_path)
    one = mount(proc.hosts, "session_timeout=4").mountpoint
    two = mount(proc.hosts, "session_timeout=4").mountpoint
    sh("mkdir -p svc/a && echo one > svc/a/f && cat svc/a/f && test \"$(cat svc/a/f)\" = one",
       cwd=one)
    mount_wait_for(lambda: (two / "svc" / "a" / "f").exists()
                   and (two / "svc" / "a" / "f").read_text() == "one\n",
                   what="the other mount to see the file")
    sh("echo two > svc/a/f && test \"$(cat svc/a/f)\" = two && rm svc/a/f && test ! -e svc/a/f",
       cwd=two)
    mount_wait_for(lambda: not (one / "svc" / "a" / "f").exists(),
                   what="the removal to reach the first mount")
    with kazoo_client(proc.hosts) as k:
        k.sync("/svc")
        assert k.get_children("/svc/a") == []


def test_workers_of_a_stopped_member_stop_serving(zkfsd_factory: Callable[..., Any],
                                                   tmp_path: Path) -> None:
    """SIGSTOP of the member: within syncLimit ticks its workers drop their clients instead of
    answering from a tree that no longer moves; after SIGCONT the sessions carry on."""
    proc = start_with_workers(zkfsd_factory, tmp_path)
    member = proc.pid
    with clients(proc.hosts, 8, timeout=4.0) as pool:
        pids = [member, *_children(member)]
        client = next(c for c in pool if serving_pid(c, proc.port, pids) not in (None, member))
        session = client.client_id[0]
        client.create("/stopped", b"0")
        states: list[str] = []
        client.add_listener(lambda state: states.append(str(state)))
        os.kill(member, signal.SIGSTOP)
        try:
            # tickTime 200 ms x syncLimit 5: a second of silence, then the worker lets go.
            wait_for(lambda: "SUSPENDED" in states, 10, what="the worker to drop its client")
        finally:
            os.kill(member, signal.SIGCONT)
        wait_for(lambda: client.connected, 20, what="the client to reconnect")
        assert client.client_id[0] == session
        assert "LOST" not in states
        client.retry(client.set, "/stopped", b"1")
        assert client.get("/stopped")[0] == b"1"
