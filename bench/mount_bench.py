"""The FUSE mount (`zkfs mount` on zkfsd) against tmpfs, the same file operations on both.

Operations (issue 11's targets, each side by side with tmpfs): stat, open+read+close of an
already-read file, listdir and scandir+stat (`ls -l`'s calls, in-process) of a directory of N
entries the first time (a directory nobody listed yet) and again, `ls -l` of it (a fresh `ls`
process), a new file (`echo x > f`: O_CREAT|O_TRUNC, write, close), an overwrite (O_TRUNC,
write, close), an O_EXCL create+write+close; the writes also against one kazoo create/set on
the same zkfsd in the same run (section WRITE_SECTION). And the mount process's memory (RSS)
once it has looked up MEM_ZNODES znodes (section MEM_SECTION). The tmpfs is mounted by us in a
temp dir and unmounted afterwards; the zkfs mount is a subprocess we own by PID
(tests/mount_helpers.py), with default mount options (no debug logging) so it is what users get.

Two mounts of one server (`write_to_event_latency`, section EV_SECTION): a write (open, write,
close) through mount A until `inotifywait -m` on mount B prints CLOSE_WRITE for that file, p50 and
p99 over st.event_writes writes, against the same write on a tmpfs seen by inotifywait on that
tmpfs; and cached stat / open+read+close on mount B of a file written on A, against tmpfs.
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

from bench.driver import PAYLOAD, Session, ensure_path, percentile
from bench.report import Results
from bench.server_bench import Settings
from bench.servers import ZkfsdStandalone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from inotify_helpers import INOTIFYWAIT, watching  # noqa: E402
from mount_helpers import _RUN, PYTHON, force_unmount, is_mounted, wait_for  # noqa: E402

SECTION = "mount (zkfs mount on zkfsd standalone) vs tmpfs"
EV_SECTION = "mount A -> mount B (two zkfs mounts of one zkfsd standalone) vs tmpfs"
EV_P50 = "write on A -> inotify CLOSE_WRITE on B, p50"
EV_P99 = "write on A -> inotify CLOSE_WRITE on B, p99"
CACHED = ("cached stat on B (file written on A)", "cached open+read+close on B")
EV_METRICS = [(EV_P50, "ms", "lower"), (EV_P99, "ms", "lower"),
              (CACHED[0], "ops/s", "higher"), (CACHED[1], "ops/s", "higher")]
WRITE_SECTION = "mount writes vs one kazoo request on the same zkfsd standalone"
MEM_SECTION = "mount memory"
NEW_FILE = "new file (O_CREAT|O_TRUNC, write, close)"
OVERWRITE = "overwrite (O_TRUNC, write, close)"
EXCL = "O_EXCL create+write+close"


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


#: Mountpoint → PID of the `zkfs mount` process serving it (for its RSS).
_MOUNT_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def zkfs_mount(hosts: str, mountpoint: Path, log_path: Path, options: str = "") -> Iterator[Path]:
    """`zkfs mount` in the foreground as our subprocess; unmounted and stopped by PID after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = ",".join(x for x in (f"logfile={log_path}", options) if x)
    with open(str(log_path) + ".stderr", "wb") as err:
        proc = subprocess.Popen([PYTHON, "-c", _RUN, hosts, str(mountpoint), opts],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    _MOUNT_PIDS[str(mountpoint)] = proc.pid
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


def _ms(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def _scandir_stat(path: str) -> None:
    """What `ls -l` does: list, then stat every entry."""
    for e in os.scandir(path):
        os.stat(e.path)


def _write(path: str, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, PAYLOAD)
    finally:
        os.close(fd)


def _writes_us(names: list[str], flags: int) -> float:
    t0 = time.perf_counter()
    for name in names:
        _write(name, flags)
    return (time.perf_counter() - t0) / len(names) * 1e6


def _best_ms(fn, path: str, times: int = 5) -> float:
    return min(_ms(fn, path) for _ in range(times))


def _fs_ops(root: Path, st: Settings, run: int) -> dict[str, float]:
    """One run of every operation under `root` (holding files/ and big{run}/, which nobody has
    listed yet)."""
    n = st.mount_dir_entries
    files = [str(root / "files" / f"f{i}") for i in range(st.mount_files)]
    for f in files:  # already read: what the caches are for
        _read(f)
    big = str(root / f"big{run}")
    out = {"stat": _per_op_us(os.stat, files, st.mount_iterations),
           "open+read+close of an already-read file": _per_op_us(_read, files,
                                                                 st.mount_iterations),
           f"listdir of {n} entries, first time": _ms(os.listdir, big),
           f"listdir of {n} entries, again": _best_ms(os.listdir, big),
           f"scandir+stat (ls -l) of {n} entries, again": _best_ms(_scandir_stat, big),
           f"ls -l of {n} entries (ls process), again": _ls_l(Path(big))}
    new = root / f"new{run}"
    new.mkdir()
    names = [str(new / f"c{i}") for i in range(st.mount_files)]
    out[NEW_FILE] = _writes_us(names, os.O_CREAT | os.O_TRUNC)
    out[OVERWRITE] = _writes_us(names, os.O_TRUNC)
    excl = [str(new / f"x{i}") for i in range(st.mount_files)]
    out[EXCL] = _writes_us(excl, os.O_CREAT | os.O_EXCL)
    return out


REREAD_PC = "open+read+close of an already-read file, -o page_cache"


def _reread_us(root: Path, st: Settings) -> float:
    files = [str(root / "files" / f"f{i}") for i in range(st.mount_files)]
    for f in files:
        _read(f)
    return _per_op_us(_read, files, st.mount_iterations)


def _unit(metric: str) -> str:
    return "ms" if metric.startswith(("listdir", "scandir", "ls ")) else "µs/op"


def _kazoo_writes(hosts: str, base: str, count: int) -> dict[str, float]:
    """µs per kazoo create and per set of a 100-byte node, one at a time, on `hosts`."""
    from kazoo.client import KazooClient

    kz = KazooClient(hosts=hosts, timeout=30)
    kz.start(timeout=30)
    try:
        kz.ensure_path(base)
        names = [f"{base}/k{i}" for i in range(count)]
        t0 = time.perf_counter()
        for name in names:
            kz.create(name, PAYLOAD)
        create = (time.perf_counter() - t0) / count * 1e6
        t0 = time.perf_counter()
        for name in names:
            kz.set(name, PAYLOAD)
        set_ = (time.perf_counter() - t0) / count * 1e6
    finally:
        kz.stop()
        kz.close()
    return {NEW_FILE: create, OVERWRITE: set_, EXCL: create}


def _rss_kib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _populate_local(root: Path, st: Settings) -> None:
    (root / "files").mkdir()
    for i in range(st.mount_files):
        (root / "files" / f"f{i}").write_bytes(PAYLOAD)
    for run in range(st.runs):
        (root / f"big{run}").mkdir()
        for i in range(st.mount_dir_entries):
            (root / f"big{run}" / f"e{i}").write_bytes(PAYLOAD)


def _populate_znodes(address, base: str, st: Settings) -> None:
    """Same tree as _populate_local, written straight into the server (faster than the mount)."""
    with Session(*address) as s:
        ensure_path(s, base)
        s.create(f"{base}/files", None)
        for i in range(st.mount_files):
            s.create(f"{base}/files/f{i}")
        for run in range(st.runs):
            s.create(f"{base}/big{run}", None)
            for i in range(st.mount_dir_entries):
                s.create(f"{base}/big{run}/e{i}")


def mount_memory(shape, st: Settings, res: Results, tmp: Path, log=print) -> None:
    """RSS of a mount process before and after it looked up (ls -l) MEM_ZNODES znodes."""
    dirs, per_dir = st.mount_dir_entries // 10, st.mount_dir_entries
    total = dirs * per_dir
    with Session(*shape.addresses[0]) as s:
        ensure_path(s, "/mem")
        for d in range(dirs):
            s.create(f"/mem/d{d}", None)
            for i in range(per_dir):
                s.create(f"/mem/d{d}/e{i}")
    with zkfs_mount(shape.hosts + "/mem", tmp / "mntM", tmp / "mountM.log") as mnt:
        pid = _MOUNT_PIDS[str(mnt)]
        before = _rss_kib(pid)
        for d in range(dirs):
            _scandir_stat(str(mnt / f"d{d}"))
        after = _rss_kib(pid)
    metric = f"mount process RSS with {total} znodes looked up (ls -l)"
    if before is None or after is None:
        res.note(MEM_SECTION, metric, "MiB", "RSS not readable", subject="mount",
                 reference="fresh mount")
        return
    res.add(MEM_SECTION, metric, "MiB", "a", after / 1024, subject="mount",
            reference="fresh mount", better="lower")
    res.add(MEM_SECTION, metric, "MiB", "b", before / 1024, subject="mount",
            reference="fresh mount", better="lower")
    log(f"  mount RSS: {before / 1024:.1f} MiB fresh, {after / 1024:.1f} MiB with {total} "
        f"znodes looked up ({(after - before) * 1024 / total:.0f} B per znode)")


def _event_latencies(write_dir: Path, watch_dir: Path, n: int, log=print
                     ) -> tuple[list[float], int]:
    """Write (open, write, close) write_dir/w{i} for i < n, each time until `inotifywait -m`
    on watch_dir prints CLOSE_WRITE for watch_dir/w{i}: (seconds per write, missed events).
    The files exist already (a pure data write); a distinct file per write, so a late or
    doubled event of an earlier write cannot be taken for this one. Gives up after 3 misses."""
    lat: list[float] = []
    misses = 0
    with watching(watch_dir, events=("close_write",)) as w:
        for i in range(n):
            w.take()
            t0 = time.monotonic()
            with open(write_dir / f"w{i}", "wb") as f:
                f.write(b"%d " % i + PAYLOAD)
            try:
                t1 = w.wait_for("CLOSE_WRITE", watch_dir / f"w{i}", timeout=10)
            except AssertionError:
                misses += 1
                log(f"  no CLOSE_WRITE for w{i} on {watch_dir} within 10s")
                if misses >= 3:
                    break
                continue
            lat.append(t1 - t0)
    return lat, misses


def _cached_rates(path: Path, iterations: int) -> tuple[float, float]:
    """(stat ops/s, open+read+close ops/s) of one file, caches warmed first."""
    p = str(path)
    os.stat(p)
    _read(p)
    stat_us = _per_op_us(os.stat, [p], iterations)
    read_us = _per_op_us(_read, [p], iterations)
    return 1e6 / stat_us, 1e6 / read_us


def _add_event_rows(res: Results, side: str, lat: list[float], misses: int, n: int,
                    rates: tuple[float, float] | None, label: str) -> None:
    note = f"{label}: {misses} of {n} events missed" if misses else ""
    if lat:
        res.add(EV_SECTION, EV_P50, "ms", side, percentile(lat, 50) * 1e3, note,
                subject="mount", reference="tmpfs", better="lower")
        res.add(EV_SECTION, EV_P99, "ms", side, percentile(lat, 99) * 1e3, note,
                subject="mount", reference="tmpfs", better="lower")
    else:
        for m in (EV_P50, EV_P99):
            res.add(EV_SECTION, m, "ms", side, None, f"{label}: no events", subject="mount",
                    reference="tmpfs", better="lower")
    if rates:
        for m, v in zip(CACHED, rates):
            res.add(EV_SECTION, m, "ops/s", side, v, subject="mount", reference="tmpfs",
                    better="higher")


def event_reference_tmpfs(root: Path, st: Settings, res: Results, log=print) -> None:
    """The tmpfs side: a write on the tmpfs seen by inotifywait on the same tmpfs (local event
    latency), and cached stat / open+read+close of a file on it."""
    for run in range(st.runs):
        d = root / f"ev{run}"
        d.mkdir()
        for i in range(st.event_writes):
            (d / f"w{i}").write_bytes(PAYLOAD)
        (d / "cached").write_bytes(PAYLOAD)
        lat, misses = _event_latencies(d, d, st.event_writes, log)
        rates = _cached_rates(d / "cached", st.cached_iterations)
        _add_event_rows(res, "b", lat, misses, st.event_writes, rates, "tmpfs")


def write_to_event_latency(shape, st: Settings, res: Results, tmp: Path, log=print
                           ) -> list[float]:
    """Write through mount A -> inotify event on mount B: two `zkfs mount` processes (default
    options) of `shape`, chrooted at /ev; then cached stat / open+read+close on B of a file
    written on A. Adds EV_SECTION rows (side "a"); returns the p50s in ms, one per run."""
    p50s: list[float] = []
    with Session(*shape.addresses[0]) as s:
        ensure_path(s, "/ev")
        for run in range(st.runs):
            s.create(f"/ev/r{run}", None)
            for i in range(st.event_writes):
                s.create(f"/ev/r{run}/w{i}")
    hosts = shape.hosts + "/ev"
    with zkfs_mount(hosts, tmp / "mntA", tmp / "mountA.log") as A, \
            zkfs_mount(hosts, tmp / "mntB", tmp / "mountB.log") as B:
        for run in range(st.runs):
            a_dir, b_dir = A / f"r{run}", B / f"r{run}"
            names = [f"w{i}" for i in range(st.event_writes)]
            for d in (a_dir, b_dir):  # both mounts have looked every file up, as a user's would
                wait_for(lambda d=d: len(os.listdir(d)) >= len(names), timeout=30,
                         what=f"{len(names)} files on {d}")
                for name in names:
                    os.stat(d / name)
            lat, misses = _event_latencies(a_dir, b_dir, st.event_writes, log)
            rates = None
            with watching(b_dir, events=("close_write",)) as w:
                (a_dir / "cached").write_bytes(PAYLOAD)
                try:
                    w.wait_for("CLOSE_WRITE", b_dir / "cached", timeout=10)
                    wait_for(lambda: (b_dir / "cached").read_bytes() == PAYLOAD, timeout=10,
                             what="cached file content on B")
                    rates = _cached_rates(b_dir / "cached", st.cached_iterations)
                except AssertionError as e:
                    res.add(EV_SECTION, CACHED[0], "ops/s", "a", None, f"mount: {e}"[:200],
                            subject="mount", reference="tmpfs", better="higher")
            _add_event_rows(res, "a", lat, misses, st.event_writes, rates, "mount")
            if lat:
                p50s.append(percentile(lat, 50) * 1e3)
                log(f"  mount A->B run {run + 1}: {len(lat)} writes, p50 "
                    f"{percentile(lat, 50) * 1e3:.2f} ms, p99 {percentile(lat, 99) * 1e3:.2f} ms"
                    + (f"; cached stat {rates[0]:.0f}/s, cat {rates[1]:.0f}/s" if rates else ""))
    return p50s


def mount_vs_tmpfs(st: Settings, res: Results, tick_ms: int, log=print) -> None:
    missing = fuse_missing()
    n = st.mount_dir_entries
    metrics = ["stat", "open+read+close of an already-read file",
               f"listdir of {n} entries, first time", f"listdir of {n} entries, again",
               f"scandir+stat (ls -l) of {n} entries, again",
               f"ls -l of {n} entries (ls process), again", NEW_FILE, OVERWRITE, EXCL]
    if missing:
        for m in metrics:
            res.note(SECTION, m, _unit(m), f"not available: {missing}",
                     subject="mount", reference="tmpfs")
        for m, unit, _better in EV_METRICS:
            res.note(EV_SECTION, m, unit, f"not available: {missing}", subject="mount",
                     reference="tmpfs")
        return
    no_inotify = None if INOTIFYWAIT else "inotifywait not installed (inotify-tools)"
    with tempfile.TemporaryDirectory(prefix="zkfs-bench-mount-") as tmp:
        tmp = Path(tmp)
        with tmpfs(tmp / "tmpfs") as t:
            _populate_local(t, st)
            for run in range(st.runs):
                for m, v in _fs_ops(t, st, run).items():
                    res.add(SECTION, m, _unit(m), "b", v, subject="mount",
                            reference="tmpfs", better="lower")
                res.add(SECTION, REREAD_PC, "µs/op", "b", _reread_us(t, st), subject="mount",
                        reference="tmpfs", better="lower")
            if not no_inotify:
                event_reference_tmpfs(t, st, res, log)
        with ZkfsdStandalone(tmp / "srv", tick_ms) as shape:
            _populate_znodes(shape.addresses[0], "/m", st)
            with zkfs_mount(shape.hosts + "/m", tmp / "mnt", tmp / "mount.log") as mnt:
                for run in range(st.runs):
                    ops = _fs_ops(mnt, st, run)
                    for m, v in ops.items():
                        res.add(SECTION, m, _unit(m), "a", v, subject="mount",
                                reference="tmpfs", better="lower")
                    # The same writes as one kazoo request each, same server, same run.
                    ref = _kazoo_writes(shape.hosts, f"/kz{run}", st.mount_files)
                    for m, v in ref.items():
                        kw = dict(subject="mount", reference="kazoo", better="lower")
                        res.add(WRITE_SECTION, m, "µs/op", "a", ops[m], **kw)
                        res.add(WRITE_SECTION, m, "µs/op", "b", v, **kw)
                    log(f"  mount run {run + 1} done")
            # The opt-in page cache (`-o page_cache`, zkfs(5)): re-reads served by the kernel.
            with zkfs_mount(shape.hosts + "/m", tmp / "mntP", tmp / "mountP.log",
                            "page_cache") as mnt:
                for run in range(st.runs):
                    res.add(SECTION, REREAD_PC, "µs/op", "a", _reread_us(mnt, st),
                            subject="mount", reference="tmpfs", better="lower")
            try:
                mount_memory(shape, st, res, tmp, log)
            except Exception as e:  # noqa: BLE001 - keep the other rows
                res.note(MEM_SECTION, "mount process RSS", "MiB",
                         f"{type(e).__name__}: {e}"[:300], subject="mount",
                         reference="fresh mount")
            if no_inotify:
                for m, unit, _better in EV_METRICS:
                    res.note(EV_SECTION, m, unit, no_inotify, subject="mount", reference="tmpfs")
            else:
                try:
                    write_to_event_latency(shape, st, res, tmp, log)
                except Exception as e:  # noqa: BLE001 - keep the single-mount rows
                    for m, unit, better in EV_METRICS:
                        res.add(EV_SECTION, m, unit, "a", None,
                                f"mount: {type(e).__name__}: {e}"[:300], subject="mount",
                                reference="tmpfs", better=better)


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
           "write_to_event_latency", "event_reference_tmpfs"]
