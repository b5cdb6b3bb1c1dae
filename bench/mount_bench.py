"""The FUSE mount (`zkfs mount` on zkfsd) against tmpfs, the same file operations on both.

Operations: stat, open+read+close, `ls -l` of a directory of N entries (a fresh `ls` process
each run), small-file create+write+close. The tmpfs is mounted by us in a temp dir and unmounted
afterwards; the zkfs mount is a subprocess we own by PID (tests/mount_helpers.py), with default
mount options (no debug logging) so it is what users get.

Not measured yet: a write on host A reaching an inotify watcher on host B; see
`write_to_event_latency` (the hook the harness already calls).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.driver import PAYLOAD, Session, ensure_path
from bench.report import Results
from bench.server_bench import Settings
from bench.servers import ZkfsdStandalone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mount_helpers import _RUN, PYTHON, force_unmount, is_mounted  # noqa: E402

SECTION = "mount (zkfs mount on zkfsd standalone) vs tmpfs"


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing"
    if os.geteuid() != 0:
        return "not root (tmpfs mount needs root)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return f"pyfuse3 not importable: {e}"
    return None


@contextlib.contextmanager
def zkfs_mount(hosts: str, mountpoint: Path, log_path: Path, options: str = "") -> Iterator[Path]:
    """`zkfs mount` in the foreground as our subprocess; unmounted and stopped by PID after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = ",".join(x for x in (f"logfile={log_path}", options) if x)
    with open(str(log_path) + ".stderr", "wb") as err:
        proc = subprocess.Popen([PYTHON, "-c", _RUN, hosts, str(mountpoint), opts],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"zkfs mount of {hosts} failed: "
                                   f"{Path(str(log_path) + '.stderr').read_text()[-2000:]}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                force_unmount(mountpoint)
                proc.kill()
                proc.wait()
        force_unmount(mountpoint)


@contextlib.contextmanager
def tmpfs(mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "zkfs-bench",
                    str(mountpoint)], check=True, capture_output=True, timeout=20)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=20)
        if is_mounted(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=20)


def _per_op_us(fn, items: list, iterations: int) -> float:
    """Microseconds per call of fn(item), cycling through items `iterations` times in all."""
    n = max(1, iterations)
    t0 = time.perf_counter()
    for i in range(n):
        fn(items[i % len(items)])
    return (time.perf_counter() - t0) / n * 1e6


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read()


def _ls_l(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ls", "-l", str(path)], stdout=subprocess.DEVNULL, check=True, timeout=120)
    return (time.perf_counter() - t0) * 1e3


def _fs_ops(root: Path, st: Settings, run: int) -> dict[str, float]:
    """One run of every operation under `root` (already holding files/ and big/)."""
    files = [str(root / "files" / f"f{i}") for i in range(st.mount_files)]
    out = {"stat": _per_op_us(os.stat, files, st.mount_iterations),
           "open+read+close": _per_op_us(_read, files, st.mount_iterations),
           f"ls -l of {st.mount_dir_entries} entries": _ls_l(root / "big")}
    new = root / f"new{run}"
    new.mkdir()
    names = [str(new / f"c{i}") for i in range(st.mount_files)]
    t0 = time.perf_counter()
    for name in names:
        with open(name, "wb") as f:
            f.write(PAYLOAD)
    out["create+write+close"] = (time.perf_counter() - t0) / len(names) * 1e6
    return out


UNITS = {"stat": "µs/op", "open+read+close": "µs/op", "create+write+close": "µs/op"}


def _populate_local(root: Path, st: Settings) -> None:
    (root / "files").mkdir()
    (root / "big").mkdir()
    for i in range(st.mount_files):
        (root / "files" / f"f{i}").write_bytes(PAYLOAD)
    for i in range(st.mount_dir_entries):
        (root / "big" / f"e{i}").write_bytes(PAYLOAD)


def _populate_znodes(address, base: str, st: Settings) -> None:
    """Same tree as _populate_local, written straight into the server (faster than the mount)."""
    with Session(*address) as s:
        ensure_path(s, base)
        s.create(f"{base}/files", None)
        s.create(f"{base}/big", None)
        for i in range(st.mount_files):
            s.create(f"{base}/files/f{i}")
        for i in range(st.mount_dir_entries):
            s.create(f"{base}/big/e{i}")


def write_to_event_latency(*_args, **_kw) -> float | None:
    """Hook: write through mount A -> inotify event on mount B (two mounts, one ensemble).
    Not implemented yet; the harness reports it as not measured."""
    return None


def mount_vs_tmpfs(st: Settings, res: Results, tick_ms: int, log=print) -> None:
    missing = fuse_missing()
    metrics = ["stat", "open+read+close", f"ls -l of {st.mount_dir_entries} entries",
               "create+write+close"]
    if missing:
        for m in metrics:
            res.note(SECTION, m, UNITS.get(m, "ms"), f"not available: {missing}",
                     subject="mount", reference="tmpfs")
        return
    with tempfile.TemporaryDirectory(prefix="zkfs-bench-mount-") as tmp:
        tmp = Path(tmp)
        with tmpfs(tmp / "tmpfs") as t:
            _populate_local(t, st)
            for run in range(st.runs):
                for m, v in _fs_ops(t, st, run).items():
                    res.add(SECTION, m, UNITS.get(m, "ms"), "b", v, subject="mount",
                            reference="tmpfs", better="lower")
        with ZkfsdStandalone(tmp / "srv", tick_ms) as shape:
            _populate_znodes(shape.addresses[0], "/m", st)
            with zkfs_mount(shape.hosts + "/m", tmp / "mnt", tmp / "mount.log") as mnt:
                for run in range(st.runs):
                    for m, v in _fs_ops(mnt, st, run).items():
                        res.add(SECTION, m, UNITS.get(m, "ms"), "a", v, subject="mount",
                                reference="tmpfs", better="lower")
                    log(f"  mount run {run + 1} done")
            value = write_to_event_latency(shape)
    res.add(SECTION, "write on mount A -> inotify event on mount B", "ms", "a", value,
            "not measured yet (hook: mount_bench.write_to_event_latency)" if value is None else "",
            subject="mount", reference="tmpfs")


def ls_through_mount(shape, path: str, mnt_dir: Path, log_path: Path) -> tuple[float, float]:
    """(first, second) wall ms of `ls` of znode `path` through a fresh mount of `shape`."""
    with zkfs_mount(shape.hosts, mnt_dir, log_path) as mnt:
        target = mnt / path.lstrip("/")
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run(["ls", str(target)], stdout=subprocess.DEVNULL, check=True, timeout=300)
            times.append((time.perf_counter() - t0) * 1e3)
    return times[0], times[1]


__all__ = ["mount_vs_tmpfs", "ls_through_mount", "zkfs_mount", "tmpfs", "fuse_missing",
           "write_to_event_latency"]
