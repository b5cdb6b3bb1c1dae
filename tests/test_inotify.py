"""Issue 5: changes made anywhere in the ensemble are inotify events on every mount.

Two or three mounts of one zkfsd (separate `zkfs mount` processes); `inotifywait -m` watches
mount B while the change is made on mount A or through kazoo. B must report each change as the
event a local change gives, once, in commit order; its own changes are not reported twice.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import kazoo_client
from inotify_helpers import INOTIFYWAIT, Watcher, count, watching
from mount_helpers import wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(INOTIFYWAIT is None, reason="inotify-tools not installed"),
    pytest.mark.timeout(180),
]

SESSION_TIMEOUT = 2.0


class Cluster:
    def __init__(self, server, mount) -> None:  # type: ignore[no-untyped-def]
        self.server = server
        self.chroot = f"/t-{uuid.uuid4().hex[:10]}"
        self.hosts = server.hosts + self.chroot
        with kazoo_client(server.hosts) as k:
            k.create(self.chroot, b"")
        opts = f"session_timeout={SESSION_TIMEOUT}"
        self.a = mount(self.hosts, opts, name="A")
        self.b = mount(self.hosts, opts, name="B")
        self.A = self.a.mountpoint
        self.B = self.b.mountpoint


@pytest.fixture
def cluster(zkfsd, mount):  # type: ignore[no-untyped-def]
    return Cluster(zkfsd, mount)


@pytest.fixture
def kz(cluster):  # type: ignore[no-untyped-def]
    with kazoo_client(cluster.hosts) as k:
        yield k


def test_remote_create_write_delete(cluster, kz) -> None:  # type: ignore[no-untyped-def]
    B, A = cluster.B, cluster.A
    (A / "d").mkdir()
    wait_for(lambda: (B / "d").is_dir(), what="d on B")
    with watching(B / "d") as w:
        kz.create("/d/k1", b"one")
        w.wait_for("CREATE", B / "d/k1")
        kz.set("/d/k1", b"two!")
        w.wait_for("MODIFY", B / "d/k1")
        w.wait_for("CLOSE_WRITE", B / "d/k1")
        assert (B / "d/k1").read_bytes() == b"two!"
        kz.delete("/d/k1")
        w.wait_for("DELETE", B / "d/k1")
        assert not (B / "d/k1").exists()
        # Through mount A: create+write, append, delete, mkdir, rmdir, mv.
        (A / "d/f").write_bytes(b"hello")
        w.wait_for("CLOSE_WRITE", B / "d/f")
        assert (B / "d/f").read_bytes() == b"hello"
        with open(A / "d/f", "ab") as f:
            f.write(b" world")
        t = w.wait_for("MODIFY", B / "d/f")
        assert t
        wait_for(lambda: (B / "d/f").read_bytes() == b"hello world", timeout=2,
                 what="append visible on B")
        (A / "d/sub").mkdir()
        w.wait_for("CREATE,ISDIR", B / "d/sub")
        (A / "d/sub").rmdir()
        w.wait_for("DELETE,ISDIR", B / "d/sub")
        os.rename(A / "d/f", A / "d/g")
        w.wait_for("CREATE", B / "d/g")
        w.wait_for("DELETE", B / "d/f")
        assert (B / "d/g").read_bytes() == b"hello world"
        (A / "d/g").unlink()
        w.wait_for("DELETE", B / "d/g")
        lines = w.settle()
    # Each change exactly once.
    assert count(lines, "CREATE", B / "d/k1") == 1, lines
    assert count(lines, "DELETE", B / "d/k1") == 1, lines
    assert count(lines, "CREATE", B / "d/f") == 1, lines
    assert count(lines, "DELETE", B / "d/f") == 1, lines
    assert count(lines, "DELETE", B / "d/g") == 1, lines
    # Commit order: create before the write before the delete.
    order = [line for line in lines if line.endswith("/d/k1")]
    kinds = [line.split(" ")[0] for line in order]
    assert kinds.index("CREATE") < kinds.index("MODIFY") < kinds.index("DELETE"), order


def test_delete_self_and_modify_on_file_watch(cluster, kz) -> None:  # type: ignore[no-untyped-def]
    B = cluster.B
    kz.create("/x", b"1")
    wait_for(lambda: (B / "x").exists(), what="x on B")
    with watching(B / "x") as w:
        kz.set("/x", b"22")
        w.wait_for("MODIFY", B / "x")
        w.wait_for("CLOSE_WRITE", B / "x")
        kz.delete("/x")
        w.wait_for("DELETE_SELF", B / "x")


def test_own_changes_reported_once(cluster) -> None:  # type: ignore[no-untyped-def]
    B = cluster.B
    with watching(B) as w:
        (B / "mine").write_bytes(b"abc")
        (B / "dir").mkdir()
        os.rename(B / "mine", B / "dir/mine2")
        (B / "dir/mine2").unlink()
        (B / "dir").rmdir()
        lines = w.settle(quiet=1.0)
    assert count(lines, "CREATE", B / "mine") == 1, lines
    assert count(lines, "CLOSE_WRITE", B / "mine") == 1, lines
    assert count(lines, "MODIFY", B / "mine") <= 1, lines
    assert count(lines, "CREATE", B / "dir") == 1, lines
    assert count(lines, "DELETE", B / "dir") == 1, lines
    assert count(lines, "MOVED_FROM", B / "mine") == 1, lines
    # No replay of our own changes: the rename is not reported as a delete + create.
    assert count(lines, "DELETE", B / "mine") == 0, lines


def test_file_turns_into_directory(cluster, kz) -> None:  # type: ignore[no-untyped-def]
    B = cluster.B
    kz.create("/p", b"data")
    wait_for(lambda: (B / "p").is_file(), what="p on B")
    with watching(B) as w:
        kz.create("/p/child", b"")
        w.wait_for("CREATE,ISDIR", B / "p")
    assert (B / "p").is_dir()
    assert os.listdir(B / "p") == ["child", ".data"] or sorted(os.listdir(B / "p")) == [
        ".data", "child"]


_HOLD = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644); "
         "os.write(fd, b'me'); os.fsync(fd); print('ok', flush=True); time.sleep(600)")


def test_open_lifetime_holder_killed(cluster) -> None:  # type: ignore[no-untyped-def]
    A, B = cluster.A, cluster.B
    (A / "locks").mkdir()
    os.setxattr(A / "locks", "user.zkfs.lifetime", b"open")
    wait_for(lambda: (B / "locks").is_dir(), what="locks on B")
    with watching(B / "locks") as w:
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(A / "locks/job")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ok"
            w.wait_for("CREATE", B / "locks/job")
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        w.wait_for("DELETE", B / "locks/job")
    assert not (B / "locks/job").exists()


def test_workers_join_and_leave_recursive(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    """`inotifywait -m -r MOUNT/workers` on one mount shows workers joining and leaving on
    another, including by crash (kill -9 of that mount: its session expires)."""
    c = Cluster(zkfsd, mount)
    B = c.B
    (c.A / "workers").mkdir()
    os.setxattr(c.A / "workers", "user.zkfs.lifetime", b"session")
    wait_for(lambda: (B / "workers").is_dir(), what="workers on B")
    w3 = mount(c.hosts, f"session_timeout={SESSION_TIMEOUT}", name="C")
    with watching(B / "workers", recursive=True) as w:
        (c.A / "workers/a").write_text("host-a:1")
        (w3.mountpoint / "workers/c").write_text("host-c:1")
        w.wait_for("CREATE", B / "workers/a")
        w.wait_for("CREATE", B / "workers/c")
        w.wait_for("CLOSE_WRITE", B / "workers/c")
        (c.A / "workers/a").unlink()  # leaves cleanly
        w.wait_for("DELETE", B / "workers/a")
        t0 = time.monotonic()
        w3.kill9()  # crash: the session expires after its timeout
        w.wait_for("DELETE", B / "workers/c", timeout=SESSION_TIMEOUT * 3 + 10)
        print(f"crash to DELETE on B: {time.monotonic() - t0:.2f}s")
        lines = w.settle()
    assert count(lines, "DELETE", B / "workers/c") == 1, lines


def _proxied_cluster(zkfsd, mount, b_timeout: float):  # type: ignore[no-untyped-def]
    """Mount A directly, mount B through a fault-injecting proxy; kazoo direct."""
    from fault_proxy import FaultProxy as Link

    chroot = f"/t-{uuid.uuid4().hex[:10]}"
    with kazoo_client(zkfsd.hosts) as k:
        k.create(chroot, b"")
        k.create(chroot + "/d", b"")
        k.create(chroot + "/d/keep", b"k0")
        k.create(chroot + "/d/gone", b"g0")
    link = Link(zkfsd.port, name="B")
    b = mount(f"127.0.0.1:{link.port}{chroot}", f"session_timeout={b_timeout}", name="B")
    return link, b, zkfsd.hosts + chroot


def _warm(B: Path) -> None:
    assert sorted(os.listdir(B / "d")) == ["gone", "keep"]
    assert (B / "d/keep").read_bytes() == b"k0"
    assert (B / "d/gone").read_bytes() == b"g0"


def test_changes_missed_while_disconnected_are_reported(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    link, b, hosts = _proxied_cluster(zkfsd, mount, 4.0)
    B = b.mountpoint
    try:
        _warm(B)
        with watching(B / "d") as w, kazoo_client(hosts) as kz:
            link.set_mode("reset")  # B is cut off; its session survives (timeout 4 s)
            time.sleep(0.3)
            kz.set("/d/keep", b"k1-changed")
            kz.delete("/d/gone")
            kz.create("/d/new", b"n")
            time.sleep(0.5)
            link.set_mode("pass")
            w.wait_for("MODIFY", B / "d/keep", timeout=15)
            w.wait_for("DELETE", B / "d/gone", timeout=15)
            w.wait_for("CREATE", B / "d/new", timeout=15)
            lines = w.settle()
        assert (B / "d/keep").read_bytes() == b"k1-changed"
        assert sorted(os.listdir(B / "d")) == ["keep", "new"]
        assert count(lines, "DELETE", B / "d/gone") == 1, lines
        assert count(lines, "CREATE", B / "d/new") == 1, lines
    finally:
        link.close()


def test_session_expiry_new_session_and_diff(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    link, b, hosts = _proxied_cluster(zkfsd, mount, 2.0)
    B = b.mountpoint
    try:
        _warm(B)
        with watching(B / "d") as w, kazoo_client(hosts) as kz:
            link.set_mode("blackhole")  # longer than the session timeout: it expires
            kz.set("/d/keep", b"k2-after-expiry")
            kz.delete("/d/gone")
            kz.create("/d/new", b"n")
            time.sleep(2.0 * 2 + 1)
            link.set_mode("pass")
            w.wait_for("MODIFY", B / "d/keep", timeout=20)
            w.wait_for("DELETE", B / "d/gone", timeout=20)
            w.wait_for("CREATE", B / "d/new", timeout=20)
        # The mount works on with its new session (no EIO until a remount).
        assert (B / "d/keep").read_bytes() == b"k2-after-expiry"
        (B / "d/written-after").write_bytes(b"ok")
        assert kz_get(hosts, "/d/written-after") == b"ok"
    finally:
        link.close()


def kz_get(hosts: str, path: str) -> bytes:
    with kazoo_client(hosts) as k:
        return k.get(path)[0]


def _basic_remote_events(B: Path, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/o", None)
    kz.create("/o/held", b"h0")
    wait_for(lambda: (B / "o/held").exists(), what="o/held on B")
    assert (B / "o/held").read_bytes() == b"h0"
    with watching(B / "o") as w:
        kz.create("/o/k", b"1")
        w.wait_for("CREATE", B / "o/k")
        kz.set("/o/held", b"h1")
        w.wait_for("CLOSE_WRITE", B / "o/held")
        assert (B / "o/held").read_bytes() == b"h1"
        kz.delete("/o/k")
        w.wait_for("DELETE", B / "o/k")
        kz.create("/o/sub", None)
        w.wait_for("CREATE,ISDIR", B / "o/sub")
        lines = w.settle()
    assert count(lines, "CREATE", B / "o/k") == 1, lines
    assert count(lines, "DELETE", B / "o/k") == 1, lines


def test_one_shot_fallback(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    """Without addWatch (forced here with -o watch=oneshot) re-armed one-shot watches
    give the same events."""
    chroot = f"/t-{uuid.uuid4().hex[:10]}"
    with kazoo_client(zkfsd.hosts) as k:
        k.create(chroot, b"")
    b = mount(zkfsd.hosts + chroot, "session_timeout=2,watch=oneshot", name="B")
    with kazoo_client(zkfsd.hosts + chroot) as kz:
        _basic_remote_events(b.mountpoint, kz)


def test_apache_zookeeper(apache_zk, mount) -> None:  # type: ignore[no-untyped-def]
    chroot = f"/t-{uuid.uuid4().hex[:10]}"
    with kazoo_client(apache_zk.hosts) as k:
        k.create(chroot, b"")
    try:
        b = mount(apache_zk.hosts + chroot, "session_timeout=4", name="B")
        with kazoo_client(apache_zk.hosts + chroot) as kz:
            _basic_remote_events(b.mountpoint, kz)
        b.stop()
    finally:
        with kazoo_client(apache_zk.hosts) as k:
            k.delete(chroot, recursive=True)
