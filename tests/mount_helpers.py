"""Helpers for the FUSE mount tests: a `zkfs mount` process we own by PID, and polling.

Every mount started here is unmounted and its process stopped by PID, whatever the test did
(SIGTERM; then fusermount3 -u; then umount -l; SIGKILL as the last resort).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PYTHON = os.path.abspath(sys.executable)
ZKFS_BIN = Path(PYTHON).parent / "zkfs"

# Foreground mount through the library entry point, so the tests do not depend on the CLI.
_RUN = ("import sys; from zkfs.mount import run_mount, parse_options; "
        "sys.exit(run_mount(sys.argv[1], sys.argv[2], parse_options(sys.argv[3]), True))")


def sh(script: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a bash script the way a user would (bounded); fail the test with its output."""
    r = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{script!r} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(path: str | Path) -> None:
    """Unmount `path` if it is mounted (also a dead FUSE mount whose process is gone)."""
    for cmd in (["fusermount3", "-u", str(path)], ["fusermount3", "-uz", str(path)],
                ["umount", "-l", str(path)]):
        if not is_mounted(path):
            return
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)


def abort_fuse_connection(path: str | Path) -> bool:
    """Abort the FUSE connection mounted at `path` (/sys/fs/fuse/connections/N/abort, N the
    mount's device minor from mountinfo, which is read without touching the mount)."""
    target = os.path.realpath(path)
    minor = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                minor = fields[2].split(":")[1]
    if minor is None:
        return False
    conns = Path("/sys/fs/fuse/connections")
    if not (conns / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], capture_output=True,
                       timeout=10, stdin=subprocess.DEVNULL)
    try:
        (conns / minor / "abort").write_text("1")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def two_hosts(zkfsd: Any, mount: Callable[..., MountProcess], options: str
              ) -> Iterator[tuple[MountProcess, MountProcess, Any]]:
    """Two mounts (host A, host B) of one zkfsd through a fresh chroot, and a kazoo client on
    that chroot: what two hosts of a cluster see."""
    from helpers import kazoo_client

    chroot = f"/t-{uuid.uuid4().hex[:10]}"
    with kazoo_client(zkfsd.hosts) as k:
        k.create(chroot, b"")
    hosts = zkfsd.hosts + chroot
    a = mount(hosts, options, name="A")
    b = mount(hosts, options, name="B")
    with kazoo_client(hosts) as kz:
        yield a, b, kz


class MountProcess:
    """`zkfs mount -f SERVERS MOUNTPOINT -o OPTIONS` as a subprocess of the test."""

    def __init__(self, hosts: str, mountpoint: Path, log_path: Path, options: str = "") -> None:
        self.hosts = hosts
        self.mountpoint = Path(mountpoint)
        self.log_path = log_path
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> MountProcess:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        opts = ",".join(x for x in (f"logfile={self.log_path}", "debug", self.options) if x)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([PYTHON, "-c", _RUN, self.hosts, str(self.mountpoint), opts],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(str(self.log_path) + ".stderr", "wb"), env=env)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount of {self.hosts} on {self.mountpoint} failed:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for p in (self.log_path, Path(str(self.log_path) + ".stderr")):
            with contextlib.suppress(OSError):
                out.append("\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (clean unmount and closeSession), then force if needed."""
        proc = self.proc
        rc = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    force_unmount(self.mountpoint)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            rc = proc.returncode
        force_unmount(self.mountpoint)
        self.proc = None
        return rc

    def kill9(self) -> None:
        """A crash: SIGKILL, no closeSession. The dead mount is lazily unmounted.

        A FUSE server killed while one of its own threads waits on its own mount (the change
        follower's replay) cannot finish exiting: that thread waits for an answer only the dead
        server could give. As an administrator would, the connection is then aborted through
        fusectl, which fails that request and lets the process go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                abort_fuse_connection(self.mountpoint)
                self.proc.wait(timeout=20)
        force_unmount(self.mountpoint)


class Target:
    """Where a test's mount points: a server, and a fresh chroot on it (so that tests sharing
    the one Apache ZooKeeper of the session cannot see each other)."""

    def __init__(self, name: str, hosts: str, session_timeout: float) -> None:
        self.name = name
        self.server_hosts = hosts
        self.chroot = f"/t-{uuid.uuid4().hex[:10]}"
        self.hosts = hosts + self.chroot
        self.session_timeout = session_timeout


@contextlib.contextmanager
def mounts(tmp_path: Path) -> Iterator[Callable[..., MountProcess]]:
    """A factory `mount(hosts, options="", name=None)`; all its mounts are torn down after."""
    started: list[MountProcess] = []

    def factory(hosts: str, options: str = "", name: str | None = None) -> MountProcess:
        name = name or f"mnt{len(started) + 1}"
        m = MountProcess(hosts, tmp_path / name, tmp_path / f"{name}.log", options)
        started.append(m)
        return m.start()

    try:
        yield factory
    finally:
        for m in started:
            with contextlib.suppress(Exception):
                m.stop()
