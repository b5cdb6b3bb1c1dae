"""Issue 10: the promises a shell script relies on, each reproduced with the issue's own command
through `bash -c`, checking the exit status and then the znode (kazoo). Two mounts of one
ensemble stand for two hosts (host A, host B); where behaviour could differ, against zkfsd and
Apache ZooKeeper alike (`target`).

Numbers in the test names are the issue's problem items.
"""
from __future__ import annotations

import os
import re
import stat as st
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import kazoo_client
from mount_helpers import ZKFS_BIN, force_unmount, is_mounted, sh, wait_for

pytestmark = pytest.mark.timeout(90)


def opts(target) -> str:  # type: ignore[no-untyped-def]
    return f"session_timeout={target.session_timeout}"


@pytest.fixture
def hosts(target, mount):  # type: ignore[no-untyped-def]
    """Host A and host B: two mounts of the same tree."""
    return (mount(target.hosts, opts(target), name="host-a").mountpoint,
            mount(target.hosts, opts(target), name="host-b").mountpoint)


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return sh(script, check=False)


def until_gone(path: Path) -> str:
    """Bash: wait (bounded) until this host no longer sees `path`."""
    return f"for i in $(seq 100); do [ -e {path} ] || break; sleep 0.05; done"


# ---------------------------------------------------------------------------- 1: when errors come

def test_1_write_refused_by_acl_fails_at_open(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    from kazoo.security import make_acl
    a, _ = hosts
    kz.create("/ro", b"x", acl=[make_acl("world", "anyone", read=True)])
    r = bash(f"echo y > {a}/ro")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    for script in (f"echo y >> {a}/ro", f"exec 3<>{a}/ro", f"truncate -s 0 {a}/ro"):
        r = bash(script)
        assert r.returncode != 0 and "Permission denied" in r.stderr, script
    data, stat = kz.get("/ro")
    assert data == b"x" and stat.version == 0
    # Reading is still allowed.
    assert bash(f"cat {a}/ro").stdout == "x"
    # The ACL is read at every open for writing: ZooKeeper sends no event for an ACL change,
    # so a file this host already wrote and cached is refused as soon as it became read-only.
    sh(f"echo 1 > {a}/later && cat {a}/later")
    kz.set_acls("/later", [make_acl("world", "anyone", read=True, admin=True)])
    r = bash(f"echo 2 > {a}/later")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert kz.get("/later")[0] == b"1\n"
    # ...and allowed again once writable.
    kz.set_acls("/later", [make_acl("world", "anyone", all=True)])
    sh(f"echo 3 > {a}/later")
    assert kz.get("/later")[0] == b"3\n"


@pytest.mark.parametrize("server", ["zkfsd", "apache"])
def test_1_reserved_paths_fail_at_open(server, request, mount) -> None:  # type: ignore[no-untyped-def]
    zk = request.getfixturevalue("zkfsd" if server == "zkfsd" else "apache_zk")
    m = mount(zk.hosts, "session_timeout=4", name="root").mountpoint  # the ensemble root
    with kazoo_client(zk.hosts) as k:
        before = {p: k.get(p) for p in ("/zookeeper/config", "/zookeeper/quota")
                  if k.exists(p) is not None}
        assert "/zookeeper/config" in before
        for script in (f"echo hi > {m}/zookeeper/config", f"echo hi >> {m}/zookeeper/quota",
                       f"echo hi > {m}/zookeeper/new", f"mkdir {m}/zookeeper/d",
                       f"rm -f {m}/zookeeper/config"):
            r = bash(script)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (script, r.stderr)
        for path, (data, stat) in before.items():
            now_data, now_stat = k.get(path)
            assert now_data == data and now_stat.version == stat.version
        assert k.exists("/zookeeper/new") is None and k.exists("/zookeeper/d") is None


def test_1_read_only_mount_fails_at_open(target, mount, kz) -> None:  # type: ignore[no-untyped-def]
    kz.create("/f", b"x")
    m = mount(target.hosts, f"ro,{opts(target)}").mountpoint
    r = bash(f"echo y > {m}/f")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert kz.get("/f")[0] == b"x"


def test_1_deleted_or_replaced_since_open_fails_at_next_write(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    sh(f"echo base > {a}/f")
    # Deleted on host B: host A's next write through its open descriptor says ENOENT.
    r = bash(f"exec 3>{a}/f; echo one >&3 || exit 10; rm {b}/f; {until_gone(a / 'f')}; "
             f"echo two >&3 || exit 20; exit 0")
    assert r.returncode == 20 and "No such file or directory" in r.stderr, r.stderr
    assert kz.exists("/f") is None
    # Replaced (deleted and created anew) on host B: ESTALE, and the new node is left alone.
    sh(f"echo base > {a}/g")
    r = bash(f"exec 3>>{a}/g; rm {b}/g; {until_gone(a / 'g')}; echo new > {b}/g; "
             f"for i in $(seq 100); do [ -e {a}/g ] && break; sleep 0.05; done; "
             f"echo mine >&3 || exit 20; exit 0")
    assert r.returncode == 20 and "Stale file handle" in r.stderr, r.stderr
    assert kz.get("/g")[0] == b"new\n"


def test_1_in_place_edit_of_a_changed_node_fails_at_next_write(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    sh(f"echo base > {a}/f")
    version = kz.get("/f")[1].version
    # `exec 3<>` is neither O_TRUNC nor O_APPEND: an in-place edit of what was read.
    r = bash(f"exec 3<>{a}/f; read -u 3 line; echo theirs > {b}/f; "
             f"for i in $(seq 100); do [ \"$(cat {a}/f)\" = theirs ] && break; sleep 0.05; done; "
             f"echo mine >&3 || exit 20; exit 0")
    assert r.returncode == 20 and "Stale file handle" in r.stderr, r.stderr
    data, stat = kz.get("/f")
    assert data == b"theirs\n" and stat.version == version + 1


# ---------------------------------------------------------------------------- 2: appends merge

def test_2_appends_through_an_open_descriptor_survive_another_hosts_write(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    # The command. bash's `echo one >&3` dups fd 3 onto stdout and closes that copy
    # afterwards: that close commits "one" (like any close on a local filesystem, where the
    # line is in the file at once). Host B then *replaces* the file; "two" is appended to
    # what is there then. The result is exactly what one host's ext4 gives for the same
    # commands: the replace wins over what came before it, nothing after it is lost.
    r = bash(f"exec 3>>{a}/app; echo one >&3; echo remote > {b}/app; echo two >&3; exec 3>&-")
    assert r.returncode == 0, r.stderr
    assert kz.get("/app")[0] == b"remote\ntwo\n"
    # Host B appending instead: every line of both hosts stays, in commit order.
    r = bash(f"exec 3>>{a}/log; echo one >&3; echo remote >> {b}/log; echo two >&3; "
             f"exec 3>&-")
    assert r.returncode == 0, r.stderr
    assert kz.get("/log")[0] == b"one\nremote\ntwo\n"
    # Appends that all race (one descriptor each, flushed at the very end): nothing lost.
    r = bash(f"exec 3>>{a}/race 4>>{b}/race; echo a1 >&3; echo b1 >&4; echo a2 >&3; "
             f"exec 3>&- 4>&-")
    assert r.returncode == 0, r.stderr
    assert sorted(kz.get("/race")[0].split()) == [b"a1", b"a2", b"b1"]


def test_2_many_hosts_appending_lose_no_line(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    sh(f": > {a}/log")
    r = bash(f"for i in $(seq 25); do echo a$i >> {a}/log & echo b$i >> {b}/log & done; wait")
    assert r.returncode == 0, r.stderr
    lines = kz.get("/log")[0].split()
    assert sorted(lines) == sorted([b"a%d" % i for i in range(1, 26)]
                                   + [b"b%d" % i for i in range(1, 26)])


# ---------------------------------------------------------------------------- 3: EFBIG

def test_3_too_big_commits_nothing(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, _ = hosts
    r = bash(f"head -c 2000000 /dev/zero > {a}/big")
    assert r.returncode != 0 and "File too large" in r.stderr
    assert kz.exists("/big") is None  # the file its open created went again
    sh(f"echo small > {a}/small")
    version = kz.get("/small")[1].version
    r = bash(f"head -c 2000000 /dev/zero > {a}/small")
    assert r.returncode != 0 and "File too large" in r.stderr
    r = bash(f"head -c 1100000 /dev/urandom > {a}/../src.bin && cp {a}/../src.bin {a}/small")
    assert r.returncode != 0 and "File too large" in r.stderr
    data, stat = kz.get("/small")
    assert data == b"small\n" and stat.version == version
    # What a descriptor committed before it went past 1 MiB stays; nothing after it.
    r = bash(f"exec 3>{a}/partial; echo a >&3; head -c 2000000 /dev/zero >&3; st=$?; "
             f"echo b >&3; exec 3>&-; exit $st")
    assert r.returncode != 0 and "File too large" in r.stderr
    assert kz.get("/partial")[0] == b"a\n"


# ---------------------------------------------------------------------------- 7: statfs

def test_7_df_shows_plausible_figures(target, mount, kz) -> None:  # type: ignore[no-untyped-def]
    m = mount(target.hosts, opts(target)).mountpoint
    sh(f"mkdir -p {m}/d/e && echo x > {m}/d/f && echo y > {m}/g")
    out = sh(f"df -P {m} | tail -1").stdout.split()
    size_kb, used_kb, avail_kb = int(out[1]), int(out[2]), int(out[3])
    assert size_kb > 0 and avail_kb > 0 and used_kb + avail_kb <= size_kb
    f = sh(f"stat -f -c '%S %b %f %a %c %d %l' {m}").stdout.split()
    assert all(int(v) > 0 for v in f)
    # File count = znodes under the mount root (the chroot itself and the settings tree too).
    count = 0
    todo = ["/"]
    while todo:
        path = todo.pop()
        count += 1
        todo += [path.rstrip("/") + "/" + c for c in kz.get_children(path)]
    iused = int(sh(f"df -P -i {m} | tail -1").stdout.split()[2])
    assert iused == count
    # The script the issue means: check free space, then write.
    sh(f"[ \"$(df --output=avail {m} | tail -1)\" -gt 1024 ] && echo ok > {m}/checked")
    assert kz.get("/checked")[0] == b"ok\n"


# ---------------------------------------------------------------------------- 8: mount -t fuse.zkfs

def _helper_is_ours() -> None:
    helper = Path("/sbin/mount.fuse.zkfs")
    ours = ZKFS_BIN.parent / "mount.fuse.zkfs"
    if not helper.exists() or os.path.realpath(helper) != os.path.realpath(ours):
        pytest.fail(f"{helper} is not {ours}: run scripts/setup.sh", pytrace=False)


def test_8_mount_t_fuse_zkfs_and_fstab(zkfsd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _helper_is_ours()
    mp = tmp_path / "zk"
    mp.mkdir()
    try:
        r = bash(f"mount -t fuse.zkfs -o session_timeout=2 {zkfsd.hosts} {mp}")
        assert r.returncode == 0, r.stderr
        assert is_mounted(mp)
        line = [x for x in open("/proc/mounts") if f" {mp} " in x][0].split()
        assert line[0] == zkfsd.hosts and line[2] == "fuse.zkfs"
        sh(f"echo hi > {mp}/f")
        with kazoo_client(zkfsd.hosts) as k:
            assert k.get("/f")[0] == b"hi\n"
        assert bash(f"umount {mp}").returncode == 0
        assert not is_mounted(mp)
        # An fstab line of type fuse.zkfs (mount -T reads another fstab: the same parser).
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{zkfsd.hosts}  {mp}  fuse.zkfs  defaults,_netdev,nofail,"
                         f"session_timeout=2  0  0\n")
        r = bash(f"mount -T {fstab} {mp}")
        assert r.returncode == 0, r.stderr
        line = [x for x in open("/proc/mounts") if f" {mp} " in x][0].split()
        assert line[2] == "fuse.zkfs"
        assert bash(f"cat {mp}/f").stdout == "hi\n"
    finally:
        force_unmount(mp)


# ---------------------------------------------------------------------------- 9: options

def _zkfs_mount(args: str) -> subprocess.CompletedProcess[str]:
    return bash(f"{ZKFS_BIN} mount {args}")


def test_9_mount_options(zkfsd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mp = tmp_path / "zk"
    mp.mkdir()
    with kazoo_client(zkfsd.hosts) as k:
        k.create("/d/f", b"x", makepath=True)
    try:
        r = _zkfs_mount(f"-o session_timeout=2,umask=077,uid=1234,gid=5678,noatime "
                        f"{zkfsd.hosts} {mp}")
        assert r.returncode == 0, r.stderr
        f, d = os.stat(mp / "d" / "f"), os.stat(mp / "d")
        assert st.S_IMODE(f.st_mode) == 0o600 and st.S_IMODE(d.st_mode) == 0o700
        assert (f.st_uid, f.st_gid) == (1234, 5678)
        options = [x for x in open("/proc/mounts") if f" {mp} " in x][0].split()[3]
        assert "noatime" in options.split(",")
        sh(f"fusermount3 -u {mp}")
        r = _zkfs_mount(f"-o session_timeout=2,file_mode=0640,dir_mode=0750 {zkfsd.hosts} {mp}")
        assert r.returncode == 0, r.stderr
        assert st.S_IMODE(os.stat(mp / "d" / "f").st_mode) == 0o640
        assert st.S_IMODE(os.stat(mp / "d").st_mode) == 0o750
        sh(f"fusermount3 -u {mp}")
        # Later options override earlier ones: ro,rw is read-write.
        r = _zkfs_mount(f"-o session_timeout=2,ro,rw {zkfsd.hosts} {mp}")
        assert r.returncode == 0, r.stderr
        sh(f"echo w > {mp}/w")
        # Mounting onto a mounted path is refused, and nothing is stacked.
        before = sum(f" {mp} " in x for x in open("/proc/mounts"))
        r = _zkfs_mount(f"{zkfsd.hosts} {mp}")
        assert r.returncode != 0 and "already mounted" in r.stderr
        r = bash(f"mount -t fuse.zkfs {zkfsd.hosts} {mp}")
        assert r.returncode != 0 and "already mounted" in r.stderr
        assert sum(f" {mp} " in x for x in open("/proc/mounts")) == before == 1
        sh(f"fusermount3 -u {mp}")
        # Refused options say so.
        r = _zkfs_mount(f"-o strictatime {zkfsd.hosts} {mp}")
        assert r.returncode == 2 and "strictatime" in r.stderr
        r = _zkfs_mount(f"-o umask=9 {zkfsd.hosts} {mp}")
        assert r.returncode == 2 and "umask" in r.stderr
        assert not is_mounted(mp)
    finally:
        force_unmount(mp)
    with kazoo_client(zkfsd.hosts) as k:
        assert k.get("/w")[0] == b"w\n"


def test_9_dead_mount_is_refused_unless_replace(zkfsd, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(zkfsd.hosts, "session_timeout=2", name="dead")
    mp = m.mountpoint
    try:
        m.proc.kill()  # the mount process dies; its mount stays, dead
        m.proc.wait()
        r = bash(f"ls {mp}")
        assert "Transport endpoint is not connected" in r.stderr
        r = _zkfs_mount(f"{zkfsd.hosts} {mp}")
        assert r.returncode != 0 and "dead mount" in r.stderr and "replace" in r.stderr
        r = _zkfs_mount(f"-o replace,session_timeout=2 {zkfsd.hosts} {mp}")
        assert r.returncode == 0, r.stderr
        assert sum(f" {mp} " in x for x in open("/proc/mounts")) == 1
        sh(f"echo alive > {mp}/f")
    finally:
        force_unmount(mp)


# ---------------------------------------------------------------------------- 10: listings

def test_10_dot_entries_hidden_names_and_data_rule(target, mount, kz) -> None:  # type: ignore[no-untyped-def]
    m = mount(target.hosts, opts(target), name="m")
    mp = m.mountpoint
    kz.create("/d", None)  # a directory from the start (makepath would make an empty file)
    kz.create("/d/short", b"s")
    long_name = "n" * 300
    kz.create(f"/d/{long_name}", b"x")
    r = bash(f"ls -a {mp}/d")
    assert r.returncode == 0 and r.stdout.split() == [".", "..", "short"]
    assert bash(f"ls -a {mp}").stdout.split()[:2] == [".", ".."]
    # The name a listing cannot show is counted in an xattr of its directory, and logged once.
    r = bash(f"getfattr --only-values -n user.zkfs.hidden_names {mp}/d")
    assert r.returncode == 0 and r.stdout == "1"
    assert "user.zkfs.hidden_names" in bash(f"getfattr -d {mp}/d").stdout
    sh(f"ls {mp}/d; ls {mp}/d")
    log_text = m.log_path.read_text()
    assert sum(long_name in line and "cannot be shown" in line
               for line in log_text.splitlines()) == 1
    # One rule for `.data`: it is always the directory's own data, never a real child.
    sh(f"mkdir {mp}/nulldir && echo x > {mp}/nulldir/child")  # null data, a child
    kz.create("/withdata", b"old")
    kz.create("/withdata/child", b"c")
    wait_for(lambda: os.path.isdir(mp / "withdata"), 5, what="withdata to be a directory")
    for name in ("nulldir", "withdata"):
        r = bash(f"echo conf > {mp}/{name}/.data")
        assert r.returncode == 0, r.stderr
        assert kz.get(f"/{name}")[0] == b"conf\n"
        assert kz.get_children(f"/{name}") == ["child"]
        assert bash(f"cat {mp}/{name}/.data").stdout == "conf\n"
    r = bash(f"mkdir {mp}/nulldir/.data")
    assert r.returncode != 0 and "File exists" in r.stderr
    # Removing it makes the data null; the directory stays.
    sh(f"rm {mp}/nulldir/.data")
    assert kz.get("/nulldir")[0] is None
    # The mount never makes a real child of that name.
    r = bash(f"mkdir {mp}/nulldir/.data")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert kz.get_children("/nulldir") == ["child"]
    # A childless directory given data is a file by the file-or-directory rule.
    sh(f"mkdir {mp}/empty && echo e > {mp}/empty/.data")
    assert kz.get("/empty")[0] == b"e\n" and kz.get_children("/empty") == []
    wait_for(lambda: os.path.isfile(mp / "empty"), 5, what="the directory to become a file")


# ---------------------------------------------------------------------------- 11: one version

def test_11_rewrite_commits_once(hosts, kz) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    sh(f"echo old > {a}/x")
    seen: list[bytes] = []
    versions: list[int] = []
    done = threading.Event()

    def watch(data, stat) -> None:  # type: ignore[no-untyped-def]
        if data is not None:
            seen.append(data)
            versions.append(stat.version)
        if data == b"builtin-2\n":
            done.set()

    kz.DataWatch("/x", watch)
    wait_for(lambda: seen, 5, what="the watch")
    v0 = kz.get("/x")[1].version
    # A builtin (bash dups the descriptor and closes the original before echo writes),
    # an external command, and a printf: each one version, never empty in between.
    for i, script in enumerate((f"echo new > {a}/x", f"/bin/echo ext > {a}/x",
                                f"printf 'p\\n' > {a}/x", f"echo builtin-2 > {a}/x"), 1):
        r = bash(script)
        assert r.returncode == 0, r.stderr
        assert kz.get("/x")[1].version == v0 + i, script
    assert done.wait(10)
    assert b"" not in seen and seen[0] == b"old\n"
    # Host B read every version as it came: never an empty one either.
    assert bash(f"cat {b}/x").stdout == "builtin-2\n"
    # `: > f` truncates (one version, empty), as it must.
    sh(f": > {a}/x")
    data, stat = kz.get("/x")
    assert data == b"" and stat.version == v0 + 5


# ---------------------------------------------------------------------------- units under them

def test_acl_judgement_refuses_only_what_cannot_match() -> None:
    from zkfs.access import Identity, may
    from zkfs.client import make_acl
    from zkfs.constants import Perm
    ip = [Identity("ip", "127.0.0.1")]
    assert not may([make_acl("world", "anyone", Perm.READ)], Perm.WRITE, ip)
    assert may([make_acl("world", "anyone", Perm.ALL)], Perm.WRITE, ip)
    assert may([make_acl("ip", "127.0.0.0/8", Perm.WRITE)], Perm.WRITE, ip)
    assert not may([make_acl("ip", "10.0.0.1", Perm.WRITE)], Perm.WRITE, ip)
    # Without the session's address (no whoami), an ip entry might match: not refused.
    assert may([make_acl("ip", "10.0.0.1", Perm.WRITE)], Perm.WRITE, [], ip_known=False)
    # digest: whoami reports the user name only; an entry for another user cannot match.
    bob = make_acl("digest", "bob:hash=", Perm.WRITE)
    assert not may([bob], Perm.WRITE, ip)
    assert may([bob], Perm.WRITE, ip + [Identity("digest", "bob")])
    assert not may([bob], Perm.WRITE, ip + [Identity("digest", "alice")])
    assert may([bob], Perm.WRITE, [Identity("super", "admin")])


def test_later_mount_options_override_earlier_ones() -> None:
    from zkfs.mount import MountOptionError, build_config, parse_options
    assert parse_options("ro,rw") == {"rw": ""}
    assert parse_options("rw,ro,hard,soft,noatime,relatime,noatime") == {
        "ro": "", "soft": "", "noatime": ""}
    assert parse_options("uid=1,uid=2") == {"uid": "2"}
    cfg, _, fuse = build_config(parse_options("umask=027,file_mode=0640,noatime,ro,rw"))
    assert (cfg.umask, cfg.file_mode, cfg.dir_mode, cfg.read_only) == (0o027, 0o640, 0o777, False)
    assert "noatime" in fuse and "ro" not in fuse
    with pytest.raises(MountOptionError, match="octal"):
        build_config(parse_options("umask=abc"))
    with pytest.raises(MountOptionError, match="strictatime"):
        build_config(parse_options("strictatime"))
