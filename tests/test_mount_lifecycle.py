"""The mount process's life: background start, unmount, signals, crashes (kill -9), races
between hosts, and an unreachable ensemble (soft/hard). Against zkfsd (tick 200 ms, so a 2 s
session timeout is allowed and crashes are noticed quickly)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import kazoo_client
from mount_helpers import ZKFS_BIN, force_unmount, is_mounted, sh, wait_for

pytestmark = pytest.mark.timeout(90)

SESSION = "session_timeout=2"


def test_kill9_of_the_mount_takes_its_session_files_after_the_timeout(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    a = mount(zkfsd.hosts, SESSION, name="host-a")
    sh("mkdir eph && setfattr -n user.zkfs.lifetime -v session eph && echo a > eph/a && "
       "echo keep > persistent", cwd=a.mountpoint)
    with kazoo_client(zkfsd.hosts) as k:
        assert k.exists("/eph/a") is not None
        a.kill9()
        t0 = time.monotonic()
        assert k.exists("/eph/a") is not None  # a crash does not close the session...
        wait_for(lambda: k.exists("/eph/a") is None, 10, what="expiry")  # ...expiry does
        assert 1.0 < time.monotonic() - t0 < 8
        assert k.get("/persistent")[0] == b"keep\n"


def test_seed_example_master_and_workers(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    host_a = mount(zkfsd.hosts, SESSION, name="host-a")
    host_b = mount(zkfsd.hosts, SESSION, name="host-b")
    sh("echo -n master-1.foobar.com:2223 > master-1 && mkdir workers && "
       "setfattr -n user.zkfs.lifetime -v session workers", cwd=host_a.mountpoint)
    sh("echo a.foobar.com:2224 > workers/a", cwd=host_a.mountpoint)
    sh("echo b.foobar.com:2224 > workers/b", cwd=host_b.mountpoint)
    assert (host_b.mountpoint / "master-1").read_text() == "master-1.foobar.com:2223"
    assert sorted(os.listdir(host_b.mountpoint / "workers")) == ["a", "b"]
    with kazoo_client(zkfsd.hosts) as k:
        assert k.get("/master-1")[0] == b"master-1.foobar.com:2223"
        assert k.get("/workers")[0] is None
    host_a.kill9()
    wait_for(lambda: os.listdir(host_b.mountpoint / "workers") == ["b"], 10,
             what="host a's worker to vanish on host b")
    assert (host_b.mountpoint / "master-1").read_text() == "master-1.foobar.com:2223"


def test_o_excl_race_between_two_mounts(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    a = mount(zkfsd.hosts, SESSION, name="a")
    b = mount(zkfsd.hosts, SESSION, name="b")
    os.mkdir(a.mountpoint / "locks")
    for i in range(20):
        results: list[int] = []
        barrier = threading.Barrier(2)

        def grab(root: Path) -> None:
            barrier.wait()
            try:
                fd = os.open(root / "locks" / f"job{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(root).encode())
                os.close(fd)
                results.append(1)
            except FileExistsError:
                results.append(0)

        threads = [threading.Thread(target=grab, args=(m.mountpoint,)) for m in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [0, 1], f"round {i}: {results}"


def test_sigterm_unmounts_and_closes_the_session_at_once(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(zkfsd.hosts, "session_timeout=4,lifetime=session")
    sh("echo x > e", cwd=m.mountpoint)
    with kazoo_client(zkfsd.hosts) as k:
        assert k.get("/e")[1].ephemeralOwner != 0
        t0 = time.monotonic()
        assert m.stop() == 0
        assert not is_mounted(m.mountpoint)
        assert k.exists("/e") is None
        assert time.monotonic() - t0 < 3


def _daemon_pids(mountpoint: Path) -> list[int]:
    """PIDs of processes whose command line names our (unique) mountpoint."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mountpoint).encode() in cmd:
                pids.append(int(entry))
    return pids


@pytest.mark.skipif(not ZKFS_BIN.exists(), reason="zkfs console script not installed")
def test_background_mount_then_umount(zkfsd, tmp_path: Path) -> None:
    mp = tmp_path / "bg"
    mp.mkdir()
    try:
        r = subprocess.run(["bash", "-c", f"{ZKFS_BIN} mount -o {SESSION},lifetime=session "
                                          f"{zkfsd.hosts} {mp} && echo x > {mp}/f && ls {mp}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["f", "zookeeper"]
        pids = _daemon_pids(mp)
        assert len(pids) == 1
        with kazoo_client(zkfsd.hosts) as k:
            assert k.exists("/f") is not None
            subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=10)
            assert k.exists("/f") is None or wait_for(lambda: k.exists("/f") is None, 2)
        wait_for(lambda: not os.path.exists(f"/proc/{pids[0]}"), 10, what="daemon exit")
    finally:
        force_unmount(mp)
        for pid in _daemon_pids(mp):
            os.kill(pid, 9)


def test_mount_of_an_unreachable_ensemble_fails_cleanly(tmp_path: Path) -> None:
    from helpers import free_port
    mp = tmp_path / "m"
    mp.mkdir()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from zkfs.mount import run_mount, parse_options; "
                        f"sys.exit(run_mount('127.0.0.1:{free_port()}', '{mp}', "
                        "parse_options('session_timeout=1'), False))"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 10
    assert not is_mounted(mp)


def test_soft_mount_gives_eio_after_timeout(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(zkfsd.hosts, "session_timeout=4,soft,timeout=1.5")
    (m.mountpoint / "f").write_bytes(b"x")
    zkfsd.stop()
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        (m.mountpoint / "f").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - t0 < 6


def test_hard_mount_blocks_until_the_ensemble_is_back(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(zkfsd.hosts, "session_timeout=4,hard")
    (m.mountpoint / "f").write_bytes(b"x")
    time.sleep(1.2)  # let the kernel's caches expire
    zkfsd.stop()
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append((m.mountpoint / "f").read_bytes()))
    reader.start()
    reader.join(2.5)
    assert reader.is_alive() and not result  # blocked, like NFS
    zkfsd.start()
    reader.join(15)
    assert result == [b"x"]


def test_ensemble_root_reserved_names(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(zkfsd.hosts, SESSION)
    sh("mkdir d && setfattr -n user.zkfs.sequential -v 1 d", cwd=m.mountpoint)
    # The settings tree is hidden; ZooKeeper's own subtree is shown but not writable.
    assert sorted(os.listdir(m.mountpoint)) == ["d", "zookeeper"]
    with pytest.raises(OSError) as info:
        os.mkdir(m.mountpoint / "zookeeper" / "x")
    assert info.value.errno == errno.EACCES
    with kazoo_client(zkfsd.hosts) as k:
        assert k.exists("/.zkfs") is not None
        assert k.exists("/zookeeper/x") is None
