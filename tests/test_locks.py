"""Cluster-wide locks through the mount and `zkfs lock` (issue 10, items 2-4).

Two mounts of one ensemble stand for two hosts. Shell idioms run through `bash -c`; holders and
waiters are processes of their own session, stopped by the PID (group) the test started.
Also: the patched pyfuse3 (contrib/pyfuse3) must be the one installed, and a request blocked on
a hard mount with the ensemble down dies on SIGKILL.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import kazoo_client
from mount_helpers import ZKFS_BIN, sh, wait_for

PY = sys.executable
LOCK_DIR = "/.zkfs/locks/%2Flockfile"


class Proc:
    """A process in its own session (so the whole group can be killed by its PID)."""

    def __init__(self, argv: list[str], **kwargs: object) -> None:
        self.p = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  **kwargs)  # type: ignore[call-overload]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.p.wait(timeout=timeout)

    def running(self) -> bool:
        return self.p.poll() is None


@contextlib.contextmanager
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            with contextlib.suppress(Exception):
                p.wait(10)


def hold(started: list[Proc], argv: list[str], marker: Path) -> Proc:
    """Start a holder that touches `marker` once it has the lock; wait for that."""
    p = Proc(argv)
    started.append(p)
    wait_for(lambda: marker.exists() or not p.running(), timeout=20, what="the holder")
    assert p.running() and marker.exists(), p.p.communicate(timeout=5)
    return p


def lock_nodes(hosts: str) -> list[str]:
    with kazoo_client(hosts) as k:
        return sorted(k.get_children(LOCK_DIR)) if k.exists(LOCK_DIR) else []


# ----------------------------------------------------------------------------- the binding

def test_installed_pyfuse3_has_lock_operations_and_interrupts() -> None:
    """scripts/setup.sh installs pyfuse3 with contrib/pyfuse3's patch; without it the mount's
    locks would be host-local only."""
    import pyfuse3

    for op in ("getlk", "setlk", "flock"):
        assert hasattr(pyfuse3.Operations, op), f"pyfuse3 lacks {op}: run scripts/setup.sh"
    assert hasattr(pyfuse3, "FileLock")
    assert hasattr(pyfuse3, "interruptible")
    assert hasattr(pyfuse3, "current_request_context")
    assert pyfuse3.Operations.enable_posix_locks is False  # opt-in for other file systems
    assert "+zkfs" in pyfuse3.__version__


# ----------------------------------------------------------------------------- flock(1)

def test_flock_excludes_across_mounts_and_is_released_on_death(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"echo data > {a.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        holder = hold(started, ["flock", f"{a.mountpoint}/lockfile", "bash", "-c",
                                f"touch {marker}; exec sleep 60"], marker)
        r = sh(f"flock -n {b.mountpoint}/lockfile true", check=False)
        assert r.returncode == 1, r
        # The same host excludes too (a second process on mount A).
        assert sh(f"flock -n {a.mountpoint}/lockfile true", check=False).returncode == 1
        assert len(lock_nodes(zkfsd.hosts)) == 1
        # The file itself is untouched: still a file with its data, no children.
        assert sh(f"cat {b.mountpoint}/lockfile").stdout == "data\n"
        holder.kill(signal.SIGKILL)
        holder.wait()
        r = sh(f"flock -n {b.mountpoint}/lockfile echo got", check=False)
        assert (r.returncode, r.stdout) == (0, "got\n"), r
    assert lock_nodes(zkfsd.hosts) == []


def test_flock_unlock_wait_timeout_and_handoff(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    f_a, f_b = f"{a.mountpoint}/lockfile", f"{b.mountpoint}/lockfile"
    marker, go = tmp_path / "held", tmp_path / "go"
    with procs() as started:
        # Held through fd 9; released by `flock -u` while the descriptor stays open.
        hold(started, ["bash", "-c", f"exec 9>{f_a}; flock 9; touch {marker}; "
                                     f"while [ ! -e {go} ]; do sleep 0.1; done; "
                                     f"flock -u 9; exec sleep 60"], marker)
        r = sh(f"flock -w 1 {f_b} true", check=False)
        assert r.returncode == 1, r  # timed out (SIGALRM interrupted the wait)
        waiter = Proc(["bash", "-c", f"flock {f_b} echo got"])
        started.append(waiter)
        time.sleep(1)
        assert waiter.running()
        go.touch()
        assert waiter.wait(15) == 0
        assert waiter.p.stdout.read() == "got\n"
    assert lock_nodes(zkfsd.hosts) == []


def test_shared_locks_coexist_and_exclude_exclusive(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    m1, m2 = tmp_path / "s1", tmp_path / "s2"
    with procs() as started:
        s1 = hold(started, ["flock", "-s", f"{a.mountpoint}/lockfile", "bash", "-c",
                            f"touch {m1}; exec sleep 60"], m1)
        hold(started, ["flock", "-s", "-n", f"{b.mountpoint}/lockfile", "bash", "-c",
                       f"touch {m2}; exec sleep 60"], m2)
        assert sh(f"flock -x -n {b.mountpoint}/lockfile true", check=False).returncode == 1
        assert sh(f"flock -x -n {a.mountpoint}/lockfile true", check=False).returncode == 1
        assert sh(f"flock -s -n {b.mountpoint}/lockfile true", check=False).returncode == 0
        s1.kill()
        s1.wait()
        for p in started:
            p.kill()
            p.wait()
        assert sh(f"flock -x -n {b.mountpoint}/lockfile true", check=False).returncode == 0


def test_blocked_waiter_dies_on_sigkill(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        hold(started, ["flock", f"{a.mountpoint}/lockfile", "bash", "-c",
                       f"touch {marker}; exec sleep 60"], marker)
        waiter = Proc(["python3", "-c", textwrap.dedent(f"""
            import fcntl
            f = open({str(b.mountpoint / 'lockfile')!r})
            fcntl.flock(f, fcntl.LOCK_EX)
            """)])
        started.append(waiter)
        wait_for(lambda: len(lock_nodes(zkfsd.hosts)) == 2, what="the waiter's node")
        assert waiter.running()
        waiter.kill(signal.SIGKILL)
        assert waiter.wait(5) == -signal.SIGKILL
        # Its place in the queue is gone; the holder still holds.
        wait_for(lambda: len(lock_nodes(zkfsd.hosts)) == 1, what="the waiter's node to go")
        assert sh(f"flock -n {b.mountpoint}/lockfile true", check=False).returncode == 1


def test_unmount_ends_although_a_process_waits_for_a_lock(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        hold(started, ["flock", f"{a.mountpoint}/lockfile", "bash", "-c",
                       f"touch {marker}; exec sleep 60"], marker)
        waiter = Proc(["flock", f"{b.mountpoint}/lockfile", "true"])
        started.append(waiter)
        wait_for(lambda: len(lock_nodes(zkfsd.hosts)) == 2, what="the waiter's node")
        assert b.stop(timeout=30) == 0   # clean exit, not the SIGKILL fallback
        assert waiter.wait(10) != 0      # its flock() failed
        wait_for(lambda: len(lock_nodes(zkfsd.hosts)) == 1, what="the waiter's node to go")


def test_a_waiting_flock_is_interrupted_by_a_handled_signal(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    sh(f"touch {a.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        hold(started, ["flock", f"{a.mountpoint}/lockfile", "bash", "-c",
                       f"touch {marker}; exec sleep 60"], marker)
        waiter = Proc([PY, "-c", textwrap.dedent(f"""
            import fcntl, signal
            class Interrupted(Exception):
                pass
            def handler(*args):
                raise Interrupted()
            # Python runs the handler once flock() returns EINTR; raising ends the retry.
            signal.signal(signal.SIGUSR1, handler)
            f = open({str(a.mountpoint / 'lockfile')!r})
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except Interrupted:
                print("EINTR")
            """)])
        started.append(waiter)
        wait_for(lambda: len(lock_nodes(zkfsd.hosts)) == 2, what="the waiter's node")
        waiter.kill(signal.SIGUSR1)
        assert waiter.wait(5) == 0
        assert waiter.p.stdout.read() == "EINTR\n"


@pytest.mark.parametrize("how", ["unmount", "crash"])
def test_lock_is_released_when_the_holders_mount_goes(zkfsd, mount, tmp_path, how) -> None:
    a = mount(zkfsd.hosts, "session_timeout=3", name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        hold(started, ["flock", f"{a.mountpoint}/lockfile", "bash", "-c",
                       f"touch {marker}; exec sleep 60"], marker)
        assert sh(f"flock -n {b.mountpoint}/lockfile true", check=False).returncode == 1
        if how == "unmount":
            a.stop()   # closes the session at once
        else:
            a.kill9()  # the host crashes: its session expires, its lock goes with it
        r = sh(f"flock -w 25 {b.mountpoint}/lockfile echo got", check=False)
        assert (r.returncode, r.stdout) == (0, "got\n"), r


# ----------------------------------------------------------------------------- fcntl / lockf

def _fcntl_script(path: Path, body: str) -> list[str]:
    prelude = textwrap.dedent(f"""
        import errno, fcntl, os, struct, sys, time
        path = {str(path)!r}
        def getlk(fd, kind=fcntl.F_WRLCK):
            raw = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", kind, 0, 0, 0, 0))
            t, _, _, _, pid = struct.unpack("hhqqi", raw)
            return t, pid
        """)
    return [PY, "-c", prelude + textwrap.dedent(body)]


def test_fcntl_locks_exclude_across_mounts_and_go_on_close(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    marker, go = tmp_path / "held", tmp_path / "go"
    with procs() as started:
        holder = hold(started, _fcntl_script(a.mountpoint / "lockfile", f"""
            fd = os.open(path, os.O_RDWR)
            other = os.open(path, os.O_RDONLY)
            fcntl.lockf(fd, fcntl.LOCK_EX)           # F_SETLKW, whole file
            open({str(marker)!r}, "w").close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            os.close(other)                          # any close drops the process's locks
            time.sleep(60)
            """), marker)
        probe = _fcntl_script(b.mountpoint / "lockfile", """
            fd = os.open(path, os.O_RDWR)
            print(*getlk(fd))
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # F_SETLK
                print("locked")
            except BlockingIOError:
                print("busy")
            """)
        r = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        # Held on the other host: F_WRLCK, pid 0 (not a process of this host).
        assert r.stdout == f"{int(__import__('fcntl').F_WRLCK)} 0\nbusy\n", r
        # On the holder's own host F_GETLK names the holder.
        same = _fcntl_script(a.mountpoint / "lockfile", "print(*getlk(os.open(path, os.O_RDONLY), fcntl.F_RDLCK))")
        r = subprocess.run(same, capture_output=True, text=True, timeout=30)
        assert r.stdout == f"{int(__import__('fcntl').F_WRLCK)} {holder.p.pid}\n", r
        go.touch()
        wait_for(lambda: lock_nodes(zkfsd.hosts) == [], what="the lock to go at close()")
        r = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert r.stdout == f"{int(__import__('fcntl').F_UNLCK)} 0\nlocked\n", r


def test_fcntl_shared_locks_and_atomic_conversion(zkfsd, mount, tmp_path) -> None:
    a = mount(zkfsd.hosts, name="a")
    b = mount(zkfsd.hosts, name="b")
    sh(f"touch {a.mountpoint}/lockfile")
    script = """
        fd = os.open(path, os.O_RDWR)
        def try_lock(kind):
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", kind, 0, 0, 0, 0))
                return "ok"
            except BlockingIOError:
                return "busy"
        print(try_lock(fcntl.F_RDLCK), flush=True)
        sys.stdin.readline()
        print(try_lock(fcntl.F_WRLCK), flush=True)   # upgrade
        sys.stdin.readline()
        print(try_lock(fcntl.F_RDLCK), flush=True)   # downgrade
        sys.stdin.readline()
        """
    pa = subprocess.Popen(_fcntl_script(a.mountpoint / "lockfile", script), text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pb = subprocess.Popen(_fcntl_script(b.mountpoint / "lockfile", script), text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert pa.stdout.readline() == "ok\n"
        assert pb.stdout.readline() == "ok\n"   # two readers
        pa.stdin.write("\n"); pa.stdin.flush()
        assert pa.stdout.readline() == "busy\n"  # B reads: no upgrade; A keeps its read lock
        pb.stdin.write("\n"); pb.stdin.flush()
        assert pb.stdout.readline() == "busy\n"
        pb.stdin.close()
        assert pb.wait(10) == 0                  # B exits: its lock goes
        r = subprocess.run(_fcntl_script(b.mountpoint / "lockfile", """
            fd = os.open(path, os.O_RDWR)
            print(getlk(fd)[0])
            """), capture_output=True, text=True, timeout=30)
        assert r.stdout == f"{int(__import__('fcntl').F_RDLCK)}\n"  # A's read lock remains
        pa.stdin.write("\n"); pa.stdin.flush()
        assert pa.stdout.readline() == "ok\n"    # downgrade of a read lock: a no-op
    finally:
        for p in (pa, pb):
            p.kill()
            p.wait()


def test_byte_range_locks_are_refused(zkfsd, mount) -> None:
    a = mount(zkfsd.hosts, name="a")
    sh(f"touch {a.mountpoint}/lockfile")
    r = subprocess.run(_fcntl_script(a.mountpoint / "lockfile", """
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 5)
        except OSError as e:
            print(errno.errorcode[e.errno])
        """), capture_output=True, text=True, timeout=30)
    assert r.stdout == "ENOLCK\n", r


# ----------------------------------------------------------------------------- the recipe

def test_recipe_queues_in_order_and_a_waiter_notices_its_session_ending(zkfsd) -> None:
    import trio

    from zkfs.client import open_client
    from zkfs.errors import NoNodeError
    from zkfs.lock import LockMode, ZkLock, lock_dir

    async def main() -> None:
        async with open_client(zkfsd.hosts) as z1, open_client(zkfsd.hosts) as z2:
            d = lock_dir("/job")
            first = ZkLock(z1, d, LockMode.EXCLUSIVE)
            assert await first.acquire()
            reader = ZkLock(z2, d, LockMode.SHARED)
            assert not await reader.acquire(blocking=False)
            assert not await reader.acquire(timeout=0.3)
            assert await z2.get_children(d) == [first.node]  # gave up: its node is gone
            order: list[str] = []

            async def take(lock: ZkLock, name: str) -> None:
                assert await lock.acquire()
                order.append(name)
            async with trio.open_nursery() as n:
                n.start_soon(take, ZkLock(z2, d, LockMode.SHARED), "r1")
                await trio.sleep(0.2)
                n.start_soon(take, ZkLock(z2, d, LockMode.SHARED), "r2")
                await trio.sleep(0.2)
                await first.release()
            assert sorted(order) == ["r1", "r2"]  # readers share
            # A waiter whose session ends stops waiting (no watch would ever fire).
            async with open_client(zkfsd.hosts) as z3:
                w = ZkLock(z3, d, LockMode.EXCLUSIVE)
                async with trio.open_nursery() as n:
                    async def wait_then_expect_gone() -> None:
                        with pytest.raises(NoNodeError):
                            await w.acquire()
                    n.start_soon(wait_then_expect_gone)
                    await trio.sleep(0.3)
                    with trio.fail_after(5):
                        await z3.close()
    trio.run(main)


# ----------------------------------------------------------------------------- zkfs lock

def zkfs_lock(hosts: str, *args: str) -> list[str]:
    return [str(ZKFS_BIN), "lock", "--servers", hosts, *args]


def test_zkfs_lock_and_flock_on_a_mount_exclude_each_other(target, mount, tmp_path) -> None:
    m = mount(target.hosts, f"session_timeout={target.session_timeout}")
    sh(f"touch {m.mountpoint}/lockfile")
    marker = tmp_path / "held"
    with procs() as started:
        holder = hold(started, zkfs_lock(target.hosts, "/lockfile", "--", "bash", "-c",
                                         f"touch {marker}; exec sleep 60"), marker)
        assert sh(f"flock -n {m.mountpoint}/lockfile true", check=False).returncode == 1
        assert len(lock_nodes(target.hosts)) == 1
        holder.kill(signal.SIGTERM)   # passed on to the command; then the lock is released
        holder.wait()
        wait_for(lambda: lock_nodes(target.hosts) == [], what="zkfs lock to release")
        marker.unlink()
        hold(started, ["flock", f"{m.mountpoint}/lockfile", "bash", "-c",
                       f"touch {marker}; exec sleep 60"], marker)
        r = subprocess.run(zkfs_lock(target.hosts, "-n", "/lockfile", "true"),
                           capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stderr) == (1, ""), r
        r = subprocess.run(zkfs_lock(target.hosts, "-w", "1", "-E", "9", "/lockfile", "true"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 9, r
        r = subprocess.run(zkfs_lock(target.hosts, "-s", "-n", "/lockfile", "true"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, r
        r = subprocess.run(zkfs_lock(target.hosts, "-n", "/other", "echo", "free"),
                           capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, "free\n"), r


def test_zkfs_lock_exit_status_and_queue(target, tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(zkfs_lock(target.hosts, *args), capture_output=True, text=True,
                              timeout=30)
    assert run("/l", "--", "sh", "-c", "exit 3").returncode == 3
    assert run("/l", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    r = run("/l", "/nonexistent/cmd")
    assert r.returncode == 69 and "failed to execute" in r.stderr, r
    assert run("-c", "exit 4", "/l").returncode == 4
    assert run("l", "true").returncode == 2  # relative path: usage error
    # A waiter gets the lock when the holder's command ends.
    marker = tmp_path / "held"
    with procs() as started:
        hold(started, zkfs_lock(target.hosts, "/l", "--", "bash", "-c",
                                f"touch {marker}; sleep 2"), marker)
        r = run("/l", "echo", "after")
        assert (r.returncode, r.stdout) == (0, "after\n"), r
        # A waiter stopped by SIGTERM leaves the queue at once (not at its session's end).
        marker.unlink()
        hold(started, zkfs_lock(target.hosts, "/lockfile", "--", "bash", "-c",
                                f"touch {marker}; exec sleep 60"), marker)
        waiter = Proc(zkfs_lock(target.hosts, "/lockfile", "true"))
        started.append(waiter)
        wait_for(lambda: len(lock_nodes(target.hosts)) == 2, what="the waiter's node")
        os.kill(waiter.p.pid, signal.SIGTERM)
        assert waiter.wait(5) == 128 + signal.SIGTERM
        assert len(lock_nodes(target.hosts)) == 1


def test_kazoo_locks_on_the_documented_path_exclude_too(target, mount, tmp_path) -> None:
    m = mount(target.hosts, f"session_timeout={target.session_timeout}")
    sh(f"touch {m.mountpoint}/lockfile")
    with kazoo_client(target.hosts) as k:
        wl = k.WriteLock(LOCK_DIR, "kazoo")
        assert wl.acquire(timeout=10)
        assert sh(f"flock -n {m.mountpoint}/lockfile true", check=False).returncode == 1
        assert sh(f"flock -s -n {m.mountpoint}/lockfile true", check=False).returncode == 1
        wl.release()
        assert sh(f"flock -n {m.mountpoint}/lockfile true", check=False).returncode == 0
        marker = tmp_path / "held"
        with procs() as started:
            hold(started, ["flock", "-s", f"{m.mountpoint}/lockfile", "bash", "-c",
                           f"touch {marker}; exec sleep 60"], marker)
            assert not k.WriteLock(LOCK_DIR).acquire(blocking=False)
            rl = k.ReadLock(LOCK_DIR)
            assert rl.acquire(blocking=False)   # readers share
            rl.release()


# ----------------------------------------------------------------------------- killable waits

def test_cat_on_a_hard_mount_dies_on_sigkill_while_the_ensemble_is_down(zkfsd, mount) -> None:
    m = mount(zkfsd.hosts, "hard")
    sh(f"echo x > {m.mountpoint}/f")
    zkfsd.stop()
    with procs() as started:
        cat = Proc(["cat", f"{m.mountpoint}/never-seen"])
        started.append(cat)
        time.sleep(2)
        assert cat.running()  # hard: it waits for the ensemble
        cat.kill(signal.SIGKILL)
        assert cat.wait(5) == -signal.SIGKILL
