"""The filesystem contract (DESIGN.md §3, man/zkfs.5) on a real FUSE mount, against zkfsd and
Apache ZooKeeper alike: real tools drive the mount, kazoo checks the tree from the side."""
from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from mount_helpers import sh, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mnt(target, mount) -> Path:  # type: ignore[no-untyped-def]
    m = mount(target.hosts, f"session_timeout={target.session_timeout}")
    return m.mountpoint


def oserror(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


# ---------------------------------------------------------------------------- paths, kinds

def test_file_or_directory_rule(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/nulldir", None)
    kz.create("/file", b"content")
    kz.create("/empty", b"")
    kz.create("/parent/child", b"x", makepath=True)
    kz.set("/parent", b"parent data")
    assert (mnt / "nulldir").is_dir()
    assert (mnt / "file").is_file() and (mnt / "file").read_bytes() == b"content"
    assert (mnt / "empty").is_file() and (mnt / "empty").read_bytes() == b""
    # makepath creates /parent empty and childless (a file) before its child: the mount, another
    # session, may show that state until the child's event reaches it.
    wait_for(lambda: (mnt / "parent").is_dir(), 10, what="/parent as a directory")
    assert (mnt / "parent" / "child").read_bytes() == b"x"
    assert sorted(os.listdir(mnt)) == ["empty", "file", "nulldir", "parent"]


def test_first_listing_shows_each_kind(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    """A directory nobody looked at yet: its first listing (all children probed in one
    batch) gives each entry the type DESIGN.md's rule says, without a stat: file with data,
    empty file, null-data directory, directory with children and data, an empty znode this
    session may not read (shown as a file), and a many-entry directory all at once."""
    from kazoo.security import make_digest_acl
    kz.create("/l/f", b"content", makepath=True)
    kz.create("/l/empty", b"")
    kz.create("/l/nulldir", None)
    kz.create("/l/parent/child", b"x", makepath=True)
    kz.set("/l/parent", b"parent data")
    kz.create("/l/locked", b"", acl=[make_digest_acl("u", "p", all=True)])
    for i in range(300):
        kz.create(f"/l/many/n{i}", None if i % 3 == 0 else (b"" if i % 3 == 1 else b"d"),
                  makepath=True)
    kinds = {e.name: "d" if e.is_dir(follow_symlinks=False) else "f"
             for e in os.scandir(mnt / "l")}
    assert kinds == {"f": "f", "empty": "f", "nulldir": "d", "parent": "d", "locked": "f",
                     "many": "d"}
    kinds = {e.name: e.is_dir(follow_symlinks=False) for e in os.scandir(mnt / "l" / "many")}
    assert kinds == {f"n{i}": i % 3 == 0 for i in range(300)}
    assert (mnt / "l" / "f").stat().st_size == 7
    assert os.listdir(mnt / "l" / "parent") == [".data", "child"]


def test_mkdir_is_null_data_and_touch_is_empty_data(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir -p a/b/c && touch a/b/f && echo hi > a/g", cwd=mnt)
    assert kz.get("/a/b/c")[0] is None
    assert kz.get("/a/b/f")[0] == b""
    assert kz.get("/a/g")[0] == b"hi\n"
    assert kz.get("/a/b")[0] is None


def test_directory_data_pseudo_file_and_xattr(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/svc/member", b"m", makepath=True)
    kz.set("/svc", b"config=1")
    assert "user.zkfs.data" in sh("getfattr -d svc", cwd=mnt).stdout
    assert os.getxattr(mnt / "svc", "user.zkfs.data") == b"config=1"
    assert ".data" in os.listdir(mnt / "svc")
    assert (mnt / "svc" / ".data").read_bytes() == b"config=1"
    # Writing the pseudo-file sets the directory znode's data.
    sh("echo config=2 > svc/.data", cwd=mnt)
    assert kz.get("/svc")[0] == b"config=2\n"
    os.setxattr(mnt / "svc", "user.zkfs.data", b"config=3")
    assert kz.get("/svc")[0] == b"config=3"
    # A real child of that name wins.
    kz.create("/svc/.data", b"real child")
    wait_for(lambda: (mnt / "svc" / ".data").read_bytes() == b"real child", 5)
    assert kz.get("/svc")[0] == b"config=3"
    # A directory with null data has no pseudo-file and no user.zkfs.data.
    sh("mkdir plain", cwd=mnt)
    assert ".data" not in os.listdir(mnt / "plain")
    assert oserror(os.getxattr, mnt / "plain", "user.zkfs.data") == errno.ENODATA


def test_file_that_gains_a_child_becomes_a_directory(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "node").write_bytes(b"data")
    ino = os.stat(mnt / "node").st_ino
    assert (mnt / "node").is_file()
    kz.create("/node/child", b"c")
    wait_for(lambda: (mnt / "node").is_dir(), 5, what="node to become a directory")
    assert os.stat(mnt / "node").st_ino != ino
    assert os.listdir(mnt / "node") == [".data", "child"]
    assert os.getxattr(mnt / "node", "user.zkfs.data") == b"data"


# ---------------------------------------------------------------------------- reads and writes

def test_writes_are_buffered_and_committed_once_at_close(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "f").write_bytes(b"v0")
    version = kz.get("/f")[1].version
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_TRUNC)
    for i in range(50):
        os.write(fd, b"line %d\n" % i)
        if i == 25:
            assert kz.get("/f")[0] == b"v0"  # nobody sees partial content
    os.close(fd)
    data, stat = kz.get("/f")
    assert data == b"".join(b"line %d\n" % i for i in range(50))
    assert stat.version == version + 1  # one setData


def test_fsync_commits_and_reads_see_offsets(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "f").write_bytes(b"0123456789")
    with open(mnt / "f", "r+b") as f:
        f.seek(3)
        assert f.read(4) == b"3456"
        f.seek(2)
        f.write(b"AB")
        f.flush()
        os.fsync(f.fileno())
        assert kz.get("/f")[0] == b"01AB456789"
        f.seek(0)
        assert f.read() == b"01AB456789"


def test_appends_merge_and_edits_detect_lost_updates(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "f").write_bytes(b"base\n")
    # O_APPEND data goes after whatever the znode holds at commit: nothing is lost.
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"mine\n")
    kz.set("/f", b"theirs\n")
    os.close(fd)
    assert kz.get("/f")[0] == b"theirs\nmine\n"
    # In-place edit (no O_TRUNC, no O_APPEND) of a node changed since open: refused at the
    # next write once the change is known, and the znode keeps the other update.
    fd = os.open(mnt / "f", os.O_RDWR)
    kz.set("/f", b"again\n")
    wait_for(lambda: os.stat(mnt / "f").st_size == 6, 5, what="the change to arrive")
    assert oserror(os.write, fd, b"X") == errno.ESTALE
    os.close(fd)
    assert kz.get("/f")[0] == b"again\n"
    # Changed in the instant before fsync/close (before its event): refused there.
    fd = os.open(mnt / "f", os.O_RDWR)
    os.write(fd, b"Y")
    kz.set("/f", b"racing\n")
    assert oserror(os.fsync, fd) == errno.ESTALE
    os.close(fd)
    assert kz.get("/f")[0] == b"racing\n"
    # >> on an unchanged file works, and O_TRUNC overwrites whatever is there.
    sh("echo more >> f", cwd=mnt)
    assert kz.get("/f")[0] == b"racing\nmore\n"
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"truncated\n")
    kz.set("/f", b"concurrent\n")
    os.close(fd)
    assert kz.get("/f")[0] == b"truncated\n"


def test_data_over_one_mib_is_efbig(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "big").write_bytes(b"x" * 100_000)
    before = kz.get("/big")[1].version
    fd = os.open(mnt / "big", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"y" * 900_000)
    # The write that would take the buffer past 1 MiB fails at once, and the handle then
    # commits nothing at all: the znode keeps its old data.
    assert oserror(os.write, fd, b"z" * 200_000) == errno.EFBIG
    assert oserror(os.write, fd, b"z") == errno.EFBIG
    os.close(fd)
    data, stat = kz.get("/big")
    assert data == b"x" * 100_000 and stat.version == before
    assert oserror(os.truncate, mnt / "big", 2 * 1024 * 1024) == errno.EFBIG


def test_truncate_and_ftruncate(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    (mnt / "f").write_bytes(b"0123456789")
    os.truncate(mnt / "f", 4)
    assert kz.get("/f")[0] == b"0123"
    os.truncate(mnt / "f", 6)
    assert kz.get("/f")[0] == b"0123\0\0"
    with open(mnt / "f", "r+b") as f:
        f.truncate(1)
    assert kz.get("/f")[0] == b"0"
    sh(": > f", cwd=mnt)
    assert kz.get("/f")[0] == b""


# ---------------------------------------------------------------------------- create, remove, rename

def test_o_excl_is_an_atomic_create(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir locks && set -C && echo $$ > locks/job", cwd=mnt)
    r = sh("set -C; echo $$ > locks/job", cwd=mnt, check=False)
    assert r.returncode != 0 and "exist" in r.stderr
    kz.create("/locks/other", b"held elsewhere")
    assert oserror(os.open, mnt / "locks" / "other", os.O_CREAT | os.O_EXCL | os.O_WRONLY) \
        == errno.EEXIST
    assert kz.get("/locks/other")[0] == b"held elsewhere"


def test_rm_and_rmdir(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir -p d/e && echo x > d/e/f && touch d/g", cwd=mnt)
    assert oserror(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    os.unlink(mnt / "d" / "g")
    assert kz.exists("/d/g") is None
    sh("rm -r d", cwd=mnt)
    assert kz.exists("/d") is None
    assert oserror(os.unlink, mnt / "nothing") == errno.ENOENT


def test_mv_file_is_one_atomic_multi(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir d && echo src > a && echo old > d/b", cwd=mnt)
    sh("mv a d/b", cwd=mnt)
    assert kz.exists("/a") is None
    assert kz.get("/d/b")[0] == b"src\n"
    sh("mv d/b c", cwd=mnt)
    assert kz.get("/c")[0] == b"src\n" and kz.exists("/d/b") is None
    assert (mnt / "c").read_bytes() == b"src\n"


def test_mv_directory_subtree(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir -p t/a/b && echo 1 > t/a/one && echo 2 > t/a/b/two && mkdir t2", cwd=mnt)
    sh("setfattr -n user.zkfs.lifetime -v session t/a", cwd=mnt)
    sh("mv t/a t2/moved", cwd=mnt)
    assert kz.exists("/t/a") is None
    assert kz.get("/t2/moved/one")[0] == b"1\n"
    assert kz.get("/t2/moved/b/two")[0] == b"2\n"
    assert kz.get("/t2/moved/b")[0] is None
    assert sh("getfattr --only-values -n user.zkfs.lifetime t2/moved", cwd=mnt).stdout == "session"
    assert sh("find . | sort", cwd=mnt).stdout.split() == [
        ".", "./t", "./t2", "./t2/moved", "./t2/moved/b", "./t2/moved/b/two", "./t2/moved/one"]


def test_everyday_tools(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("printf 'alpha\\nbeta\\n' > f && cp f g && sed -i s/beta/gamma/ g", cwd=mnt)
    assert kz.get("/g")[0] == b"alpha\ngamma\n"
    assert kz.get("/f")[0] == b"alpha\nbeta\n"
    sh("vim -es -i NONE -N -u NONE -c '%s/alpha/ALPHA/' -c 'wq' f", cwd=mnt)
    assert kz.get("/f")[0] == b"ALPHA\nbeta\n"
    sh("cp -r /etc/default cp-dir && rm -r cp-dir", cwd=mnt)
    assert kz.exists("/cp-dir") is None
    assert sorted(kz.get_children("/")) == ["f", "g"]
    out = sh("ls -l; stat -c '%s %F' f; find . -type f | sort; touch f; chmod 600 f; "
             "chown 0:0 f", cwd=mnt).stdout
    assert "11 regular file" in out and "./f\n./g" in out


# ---------------------------------------------------------------------------- lifetimes

def test_session_lifetime_is_ephemeral_and_goes_with_the_mount(target, mount, kz) -> None:  # type: ignore[no-untyped-def]
    m = mount(target.hosts, f"session_timeout={target.session_timeout}")
    sh("mkdir workers && setfattr -n user.zkfs.lifetime -v session workers && "
       "echo host-a:2223 > workers/a", cwd=m.mountpoint)
    assert kz.get("/workers/a")[1].ephemeralOwner != 0
    assert kz.get("/workers")[1].ephemeralOwner == 0
    assert sh("getfattr -d workers", cwd=m.mountpoint).stdout.count("user.zkfs.lifetime") == 1
    t0 = time.monotonic()
    m.stop()  # clean unmount: closeSession, the file goes at once
    assert kz.exists("/workers/a") is None
    assert time.monotonic() - t0 < target.session_timeout + 3
    # The setting lives in ZooKeeper: another mount sees it.
    m2 = mount(target.hosts, f"session_timeout={target.session_timeout}")
    assert os.getxattr(m2.mountpoint / "workers", "user.zkfs.lifetime") == b"session"


def test_open_lifetime_goes_with_the_last_fd_of_its_creator(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir locks && setfattr -n user.zkfs.lifetime -v open locks", cwd=mnt)
    holder = subprocess.Popen(["bash", "-c", "exec 9>locks/job; echo $$ >&9; exec 9>&9; "
                               "sleep 60"], cwd=mnt)
    try:
        wait_for(lambda: kz.exists("/locks/job"), 5, what="lock file")
        assert kz.get("/locks/job")[1].ephemeralOwner != 0
        # Other processes' opens do not keep it alive nor remove it.
        assert (mnt / "locks" / "job").exists()
        holder.kill()
        holder.wait()
        wait_for(lambda: kz.exists("/locks/job") is None, 5, what="lock to vanish")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # A plain `echo > file` there lives exactly as long as the command.
    sh("echo x > locks/short", cwd=mnt)
    # The kernel sends FUSE's release after close() returns, so the delete follows shortly.
    wait_for(lambda: kz.exists("/locks/short") is None, 5, what="short-lived lock to vanish")


def test_sequential_directory(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir q && setfattr -n user.zkfs.sequential -v 1 q && echo a > q/item- && "
       "echo b > q/item-", cwd=mnt)
    names = sorted(os.listdir(mnt / "q"))
    assert names == ["item-0000000000", "item-0000000001"]
    assert kz.get("/q/item-0000000001")[0] == b"b\n"
    assert not (mnt / "q" / "item-").exists()


# ---------------------------------------------------------------------------- metadata

def test_stat_and_xattrs(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/f", b"12345")
    kz.set("/f", b"1234567")
    _, zstat = kz.get("/f")
    # kazoo is another client: the mount shows its write once the change event has arrived.
    wait_for(lambda: os.stat(mnt / "f").st_size == 7, 5, what="the new size")
    s = os.stat(mnt / "f")
    assert s.st_mtime_ns == zstat.mtime * 1_000_000
    assert oct(s.st_mode & 0o7777) == "0o644"
    assert s.st_uid == os.getuid() and s.st_nlink == 1
    assert oct(os.stat(mnt).st_mode & 0o7777) == "0o755"
    dump = sh("getfattr -d f", cwd=mnt).stdout
    for name in ("czxid", "mzxid", "pzxid", "ctime", "mtime", "version", "cversion",
                 "aversion", "ephemeral_owner", "data_length", "num_children"):
        assert f"user.zk.{name}=" in dump
    assert os.getxattr(mnt / "f", "user.zk.version") == b"1"
    assert os.getxattr(mnt / "f", "user.zk.ephemeral_owner") == b"0x0"
    assert os.getxattr(mnt / "f", "user.zk.czxid") == str(zstat.czxid).encode()
    assert oserror(os.setxattr, mnt / "f", "user.zk.version", b"9") == errno.EPERM


# ---------------------------------------------------------------------------- errors

def test_names_zookeeper_cannot_hold(mnt: Path, kz) -> None:  # type: ignore[no-untyped-def]
    assert oserror(os.mkdir, mnt / "bad\x01name") == errno.EINVAL
    assert oserror(os.open, os.fsencode(str(mnt)) + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY) \
        == errno.EINVAL
    assert oserror(os.mkdir, mnt / ("emoji-\U0001F600")) == errno.EINVAL
    assert oserror(os.mkdir, mnt / ("x" * 256)) == errno.ENAMETOOLONG
    assert oserror(os.mkdir, mnt / ".zkfs") == errno.EINVAL
    assert kz.get_children("/") == []  # nothing half-created
    os.mkdir(mnt / "ünïcødé")
    assert kz.get_children("/") == ["ünïcødé"]


def test_read_only_mount(target, mount, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/f", b"x")
    m = mount(target.hosts, "ro")
    assert (m.mountpoint / "f").read_bytes() == b"x"
    assert oserror(os.mkdir, m.mountpoint / "d") == errno.EROFS
    assert oserror(os.open, m.mountpoint / "f", os.O_WRONLY) == errno.EROFS
