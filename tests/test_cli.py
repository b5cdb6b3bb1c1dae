"""The `zkfs` command line, run as the installed console script against real servers.

Every test runs `zkfs` as a subprocess (as scripts do) against a fresh zkfsd, and a few against
Apache ZooKeeper; kazoo checks the results independently. Every wait is bounded.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import kazoo_client

BIN = Path(os.path.abspath(sys.executable)).parent
ZKFS = BIN / "zkfs"
ZKFS_MOUNT = BIN / "zkfs-mount"
COMMANDS = ["get", "set", "ls", "create", "rm", "stat", "watch", "mount"]

pytestmark = pytest.mark.timeout(60)


def _env(servers: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKFS_")}
    if servers is not None:
        env["ZKFS_SERVERS"] = servers
    env.update(extra or {})
    return env


def zkfs(servers: str | None, *args: str, input: bytes | None = None, timeout: float = 20.0,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `zkfs ARGS` with ZKFS_SERVERS=servers; returns the completed process (bytes)."""
    if not ZKFS.exists():
        pytest.fail(f"{ZKFS} not installed: pip install -e .")
    return subprocess.run([str(ZKFS), *args], input=input if input is not None else b"",
                          capture_output=True, timeout=timeout, env=_env(servers, env))


def ok(servers: str | None, *args: str, input: bytes | None = None) -> bytes:
    r = zkfs(servers, *args, input=input)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    assert r.stderr == b"", r.stderr
    return r.stdout


def fails(servers: str | None, status: int, *args: str, input: bytes | None = None,
          env: dict[str, str] | None = None) -> str:
    """Run a command that must fail with `status` and one line on stderr; return that line."""
    r = zkfs(servers, *args, input=input, env=env)
    assert r.returncode == status, (args, r.returncode, r.stdout, r.stderr)
    err = r.stderr.decode()
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("zkfs: "), err
    assert r.stdout == b""
    return err.rstrip("\n")


class Background:
    """A long-running `zkfs` (watch, create --ephemeral) whose stdout lines are read with a
    deadline; always stopped (by its own PID) at the end."""

    def __init__(self, servers: str, *args: str) -> None:
        self.proc = subprocess.Popen([str(ZKFS), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env(servers))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = 10.0) -> str:
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s") from None
        if item is None:
            raise AssertionError(f"exited ({self.proc.poll()}): {self.stderr()}")
        return item

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for b in started:
        b.stop()


def start(started: list[Background], servers: str, *args: str) -> Background:
    b = Background(servers, *args)
    started.append(b)
    return b


def _unique() -> str:
    return "/cli-" + uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------- no server needed

def test_help_of_every_command_and_version() -> None:
    # Started together: each is a separate interpreter, and there are many.
    runs = {args: subprocess.Popen([str(ZKFS), *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=_env(None))
            for args in [("--help",), ("--version",), ("ls", "-h"),
                         *((command, "--help") for command in COMMANDS)]}
    runs[("zkfs-mount",)] = subprocess.Popen([str(ZKFS_MOUNT), "--help"], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=_env(None))
    out = {}
    for args, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0 and stderr == b"", (args, stderr)
        out[args] = stdout.decode()
    top = out[("--help",)]
    assert "Exit status" in top
    for command in COMMANDS:
        assert command in top
        assert out[(command, "--help")].startswith(f"Usage: zkfs {command} ")
        assert "--help" in out[(command, "--help")]
    assert out[("ls", "-h")] == out[("ls", "--help")]
    assert out[("--version",)].startswith("zkfs ")
    assert out[("zkfs-mount",)].startswith("Usage: zkfs-mount ")


def test_usage_errors_are_one_line_with_status_2() -> None:
    assert "Missing argument 'PATH'" in fails(None, 2, "get")
    assert "No such command" in fails(None, 2, "frobnicate")
    assert "No such option" in fails(None, 2, "ls", "--frob", "/")
    assert fails(None, 2, "get", "relative") == (
        "zkfs: get relative: path must be absolute (start with /): 'relative'")
    assert "--null" in fails(None, 2, "create", "--null", "/x", "data")
    assert "--container" in fails(None, 2, "create", "--container", "--ephemeral", "/x")
    assert "invalid --servers" in fails(None, 2, "--servers", "h:notaport", "get", "/")
    assert "invalid --servers" in fails(None, 2, "get", "/", "--servers", "")


def test_unreachable_server_exits_7_within_timeout() -> None:
    from helpers import free_port
    servers = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    line = fails(servers, 7, "get", "/", "--timeout", "1")
    assert time.monotonic() - t0 < 8
    assert line == f"zkfs: get /: cannot connect to {servers} within 1s"
    # ZKFS_TIMEOUT is the same setting.
    assert fails(servers, 7, "ls", "/", env={"ZKFS_TIMEOUT": "0.5"}).endswith("within 0.5s")


# ---------------------------------------------------------------------------- against zkfsd

def test_create_get_set_roundtrip(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    assert ok(s, "create", "/a", "hello") == b"/a\n"
    assert ok(s, "get", "/a") == b"hello"  # raw: no newline added
    # Binary data through stdin, byte for byte.
    blob = bytes(range(256)) * 4
    assert ok(s, "set", "/a", "-", input=blob) == b""
    assert ok(s, "get", "/a") == blob
    # create with data from stdin; default data is empty; --null is ZooKeeper's null.
    assert ok(s, "create", "/b", "-", input=b"from stdin\n") == b"/b\n"
    assert ok(s, "get", "/b") == b"from stdin\n"
    ok(s, "create", "/empty")
    ok(s, "create", "--null", "/dir")
    assert ok(s, "get", "/empty") == b"" and ok(s, "get", "/dir") == b""
    with kazoo_client(s) as kz:
        assert kz.get("/empty")[0] == b""
        assert kz.get("/dir")[0] is None
        assert kz.get("/a")[0] == blob
    # set --create makes the node if it is missing, and sets it otherwise.
    ok(s, "set", "--create", "/c", "one")
    ok(s, "set", "--create", "/c", "two")
    assert ok(s, "get", "/c") == b"two"
    stat = dict(line.split("=", 1) for line in ok(s, "get", "--stat", "/c").decode().splitlines())
    assert stat["version"] == "1" and stat["dataLength"] == "3"


def fails_all(servers: str, cases: list[tuple[int, tuple[str, ...], str]]) -> None:
    """Run independent failing commands concurrently: (status, args, exact stderr line)."""
    procs = [(status, args, line, subprocess.Popen(
        [str(ZKFS), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=_env(servers))) for status, args, line in cases]
    for status, args, line, proc in procs:
        out, err = proc.communicate(timeout=30)
        expected = line + "\n" if line else ""
        assert (proc.returncode, out, err.decode()) == (status, b"", expected), args


def test_error_messages_and_exit_codes(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    with kazoo_client(s) as kz:
        kz.create("/p/child", makepath=True)
    fails_all(s, [
        (3, ("get", "/missing"), "zkfs: get /missing: no such node"),
        (3, ("set", "/missing", "x"), "zkfs: set /missing: no such node"),
        (3, ("stat", "/missing"), "zkfs: stat /missing: no such node"),
        (3, ("ls", "/missing"), "zkfs: ls /missing: no such node"),
        (3, ("rm", "/missing"), "zkfs: rm /missing: no such node"),
        (3, ("create", "/no/parent"), "zkfs: create /no/parent: no such node"),
        (4, ("create", "/p"), "zkfs: create /p: node exists"),
        (6, ("rm", "/p"), "zkfs: rm /p: node has children"),
        (0, ("rm", "-f", "/missing"), ""),
    ])


def test_version_compare_and_set(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    ok(s, "create", "/cas", "v0")
    ok(s, "set", "--version", "0", "/cas", "v1")
    assert fails(s, 5, "set", "--version", "0", "/cas", "lost") == \
        "zkfs: set /cas: version mismatch"
    assert ok(s, "get", "/cas") == b"v1"
    out = ok(s, "set", "--version", "1", "--stat", "/cas", "v2").decode()
    assert "version=2\n" in out
    assert fails(s, 5, "rm", "--version", "1", "/cas") == "zkfs: rm /cas: version mismatch"
    ok(s, "rm", "--version", "2", "/cas")
    assert "--create" in fails(s, 2, "set", "--create", "--version", "1", "/cas", "x")


def test_stat_fields(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    ok(s, "create", "/st", "12345")
    ok(s, "create", "/st/k")
    lines = ok(s, "stat", "/st").decode().splitlines()
    names = [line.split("=", 1)[0] for line in lines]
    assert names == ["czxid", "mzxid", "pzxid", "ctime", "mtime", "version", "cversion",
                     "aversion", "ephemeralOwner", "dataLength", "numChildren"]
    stat = dict(line.split("=", 1) for line in lines)
    with kazoo_client(s) as kz:
        _, ref = kz.get("/st")
    assert stat["czxid"] == hex(ref.czxid) and stat["pzxid"] == hex(ref.pzxid)
    assert stat["ctime"] == str(ref.ctime) and stat["mtime"] == str(ref.mtime)
    assert stat["ephemeralOwner"] == "0x0"
    assert (stat["dataLength"], stat["numChildren"], stat["cversion"]) == ("5", "1", "1")


def test_sequential_parents_ls_and_rm_recursive(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    assert ok(s, "create", "-p", "/q/jobs/job-", "--sequential", "a") == b"/q/jobs/job-0000000000\n"
    assert ok(s, "create", "--sequential", "/q/jobs/job-") == b"/q/jobs/job-0000000001\n"
    with kazoo_client(s) as kz:
        assert kz.get("/q")[0] is None  # parents are created with null data
    ok(s, "create", "/q/b", "xyz")
    ok(s, "create", "/q/a")
    assert ok(s, "ls", "/q").decode() == "a\nb\njobs\n"
    assert ok(s, "ls", "-R", "/q").decode() == (
        "a\nb\njobs\njobs/job-0000000000\njobs/job-0000000001\n")
    long = ok(s, "ls", "-l", "/q").decode().splitlines()
    assert [line.split()[-1] for line in long] == ["a", "b", "jobs"]
    flag, version, length, mtime, name = long[1].split()
    assert (flag, version, length, name) == ("-", "0", "3", "b")
    assert mtime.endswith("Z") and mtime[4] == "-" and "T" in mtime
    assert ok(s, "ls", "/").decode().splitlines() == ["q", "zookeeper"]
    ok(s, "rm", "-r", "/q")
    assert fails(s, 3, "get", "/q")


def test_ephemeral_create_held_until_killed(zkfsd, background) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    ok(s, "create", "/workers")
    for sig in (signal.SIGTERM, signal.SIGINT):
        holder = start(background, s, "create", "--ephemeral", "/workers/w1", "host-a")
        assert holder.line() == "/workers/w1"
        time.sleep(0.3)
        assert holder.proc.poll() is None, "an ephemeral create must keep its session"
        stat = dict(line.split("=", 1) for line in ok(s, "stat", "/workers/w1").decode().split())
        assert stat["ephemeralOwner"] != "0x0"
        # A second holder finds the node taken: that is what makes it a lock or an election.
        assert fails(s, 4, "create", "--ephemeral", "/workers/w1") == \
            "zkfs: create /workers/w1: node exists"
        holder.signal(sig)
        assert holder.wait() == 0
        # The session was closed on the way out: the node is gone at once, not after a timeout.
        assert fails(s, 3, "get", "/workers/w1")
    # Sequential ephemeral members print their generated names.
    member = start(background, s, "create", "-e", "-S", "/workers/m-")
    name = member.line()
    assert re.fullmatch(r"/workers/m-\d{10}", name), name
    assert ok(s, "ls", "/workers").decode() == name.rsplit("/", 1)[1] + "\n"
    member.signal(signal.SIGTERM)
    assert member.wait() == 0
    assert ok(s, "ls", "/workers") == b""


def _collect(b: Background, n: int) -> list[str]:
    return [b.line() for _ in range(n)]


def test_watch_recursive_prints_events(zkfsd, background) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    ok(s, "create", "/w")
    w = start(background, s, "watch", "-r", "--ready", "--count", "5", "/w")
    assert w.line() == "READY /w"
    ok(s, "create", "/w/a", "1")
    ok(s, "set", "/w/a", "2")
    ok(s, "create", "/w/a/b")
    ok(s, "rm", "/w/a/b")
    ok(s, "set", "/w", "x")
    assert _collect(w, 5) == ["CREATED /w/a", "CHANGED /w/a", "CREATED /w/a/b",
                              "DELETED /w/a/b", "CHANGED /w"]
    assert w.wait() == 0  # --count reached


@pytest.mark.parametrize("one_shot", [False, True], ids=["persistent", "one-shot"])
def test_watch_node_and_children(zkfsd, background, one_shot) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    extra = ["--one-shot"] if one_shot else []
    # The node need not exist yet.
    w = start(background, s, "watch", "--ready", "--count", "6", *extra, "/m")
    assert w.line() == "READY /m"
    ok(s, "create", "/m")
    ok(s, "create", "/m/x")
    ok(s, "set", "/m", "d")
    ok(s, "create", "/m/x/deeper")  # not a child of /m: no event without -r
    ok(s, "rm", "-r", "/m")
    ok(s, "create", "/m")
    assert _collect(w, 6) == ["CREATED /m", "CHILD /m", "CHANGED /m", "CHILD /m",
                              "DELETED /m", "CREATED /m"]
    assert w.wait() == 0


def test_watch_recursive_one_shot_fallback(zkfsd, background) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    ok(s, "create", "-p", "/r/old/leaf")
    w = start(background, s, "watch", "-r", "--one-shot", "--ready", "-n", "4", "/r")
    assert w.line() == "READY /r"
    ok(s, "set", "/r/old/leaf", "x")
    ok(s, "create", "/r/new")
    ok(s, "rm", "/r/old/leaf")
    ok(s, "set", "/r/new", "y")
    assert _collect(w, 4) == ["CHANGED /r/old/leaf", "CREATED /r/new", "DELETED /r/old/leaf",
                              "CHANGED /r/new"]
    assert w.wait() == 0


def test_watch_stops_on_sigterm(zkfsd, background) -> None:  # type: ignore[no-untyped-def]
    w = start(background, zkfsd.hosts, "watch", "--ready", "/x")
    assert w.line() == "READY /x"
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


def test_servers_env_option_and_chroot(zkfsd) -> None:  # type: ignore[no-untyped-def]
    s = zkfsd.hosts
    with kazoo_client(s) as kz:
        kz.create("/app")
        # The chroot of the connect string: paths are relative to it.
        assert ok(f"{s}/app", "create", "/x", "in-chroot") == b"/x\n"
        assert kz.get("/app/x")[0] == b"in-chroot"
    assert ok(f"{s}/app", "ls", "/").decode() == "x\n"
    # --servers (-s), before or after the command, wins over ZKFS_SERVERS.
    from helpers import free_port
    dead = f"127.0.0.1:{free_port()}"
    assert ok(dead, "--servers", s, "get", "/app/x") == b"in-chroot"
    assert ok(dead, "get", "-s", f"{s}/app", "/x") == b"in-chroot"
    assert ok(None, "--servers", s, "ls", "/app") == b"x\n"


# ---------------------------------------------------------------------------- Apache ZooKeeper

def test_against_apache_zookeeper(apache_zk, background) -> None:  # type: ignore[no-untyped-def]
    s = apache_zk.hosts
    base = _unique()
    assert ok(s, "create", base, "v") == f"{base}\n".encode()
    assert ok(s, "create", "-S", f"{base}/s-") == f"{base}/s-0000000000\n".encode()
    ok(s, "set", "--version", "0", base, "w")
    assert fails(s, 5, "set", "--version", "0", base, "x").endswith("version mismatch")
    assert ok(s, "get", base) == b"w"
    assert fails(s, 3, "get", f"{base}/nope") == f"zkfs: get {base}/nope: no such node"
    w = start(background, s, "watch", "-r", "--ready", "-n", "3", base)
    assert w.line() == f"READY {base}"
    holder = start(background, s, "create", "--ephemeral", f"{base}/e", "me")
    assert holder.line() == f"{base}/e"
    ok(s, "set", f"{base}/e", "changed")
    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0
    assert _collect(w, 3) == [f"CREATED {base}/e", f"CHANGED {base}/e", f"DELETED {base}/e"]
    assert w.wait() == 0
    with kazoo_client(s) as kz:
        assert kz.exists(f"{base}/e") is None
    assert fails(s, 6, "rm", base).endswith("node has children")
    ok(s, "rm", "-r", base)
    assert fails(s, 3, "stat", base)


# ---------------------------------------------------------------------------- mount plumbing

_STUB = '''
import json, os, sys, types
mod = types.ModuleType("zkfs.mount")
def parse_options(s):
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in s.split(",") if o)
def run_mount(servers, mountpoint, options, foreground):
    with open(os.environ["ZKFS_TEST_MOUNT_LOG"], "w") as f:
        json.dump([servers, mountpoint, options, foreground], f)
    return int(os.environ.get("ZKFS_TEST_MOUNT_STATUS", "0"))
mod.parse_options, mod.run_mount = parse_options, run_mount
sys.modules["zkfs.mount"] = mod
'''


@pytest.fixture
def mount_stub(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python replaces zkfs.mount with a recorder (via sitecustomize)."""
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "sitecustomize.py").write_text(_STUB)
    log = tmp_path / "mount.json"
    env = _env(None, {"PYTHONPATH": str(tmp_path / "stub"), "ZKFS_TEST_MOUNT_LOG": str(log)})
    return env, log


def test_mount_commands_pass_arguments(mount_stub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    env, log = mount_stub
    mp = tmp_path / "mp"
    mp.mkdir()
    r = subprocess.run([str(ZKFS), "mount", "-f", "-o", "hard,lifetime=session", "-o", "ro",
                        "h1:2181,h2:2181/app", str(mp)], capture_output=True, timeout=20, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(log.read_text()) == [
        "h1:2181,h2:2181/app", str(mp), {"hard": "", "lifetime": "session", "ro": ""}, True]
    # zkfs-mount, called the way mount.fuse3 calls it: fstab-only options are dropped.
    r = subprocess.run([str(ZKFS_MOUNT), "h1:2181", str(mp), "-o",
                        "rw,defaults,_netdev,noauto,nofail,x-systemd.automount,dev,suid,exec,"
                        "auto,nouser,lifetime=open"],
                       capture_output=True, timeout=20, env={**env, "ZKFS_TEST_MOUNT_STATUS": "3"})
    assert r.returncode == 3, r.stderr
    assert json.loads(log.read_text()) == ["h1:2181", str(mp), {"lifetime": "open"}, False]


@pytest.mark.skipif(shutil.which("mount.fuse3") is None, reason="mount.fuse3 not installed")
def test_mount_fuse3_runs_the_helper(mount_stub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The fstab line of contrib/fstab.example: mount(8) runs `mount.fuse3 SOURCE MP -t
    fuse.zkfs-mount -o OPTS`, which runs `zkfs-mount SOURCE MP -o OPTS` from PATH."""
    import json
    env, log = mount_stub
    mp = tmp_path / "mp"
    mp.mkdir()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    r = subprocess.run([shutil.which("mount.fuse3") or "", "127.0.0.1:2181,h2:2181/app", str(mp),
                        "-t", "fuse.zkfs-mount", "-o",
                        "_netdev,noauto,nofail,x-systemd.automount,rw,hard"],
                       capture_output=True, timeout=20, env=env)
    assert r.returncode == 0, r.stderr
    servers, mountpoint, options, foreground = json.loads(log.read_text())
    assert (servers, mountpoint, foreground) == ("127.0.0.1:2181,h2:2181/app", str(mp), False)
    # mount.fuse3 may add nodev/nosuid (or dev/suid as root); the helper keeps only ours.
    assert set(options) - {"nodev", "nosuid"} == {"hard"}


def test_filter_mount_options_unit() -> None:
    from zkfs.cli import filter_mount_options
    assert filter_mount_options(["defaults,_netdev", "x-systemd.requires=zkfsd.service,hard",
                                 "comment=x,ro,lifetime=session"]) == "hard,ro,lifetime=session"
    # Later options override earlier ones: ro,rw is read-write (and rw,ro read-only).
    assert filter_mount_options(["ro,hard", "rw"]) == "hard"
    assert filter_mount_options(["rw,ro"]) == "ro"
    assert filter_mount_options([]) == ""


def test_ephemeral_holder_exits_7_when_its_session_is_lost(zkfsd, background) -> None:  # type: ignore[no-untyped-def]
    holder = start(background, zkfsd.hosts, "create", "--ephemeral", "--timeout", "1", "/h")
    assert holder.line() == "/h"
    zkfsd.kill9()  # the ensemble is gone: after a session timeout the node must count as lost
    assert holder.wait(timeout=15) == 7
    assert holder.stderr() == (
        "zkfs: create /h: session lost: disconnected for longer than the session timeout\n")
