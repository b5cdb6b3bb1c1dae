"""Issue 5: coherent caching on every mount (long kernel caches invalidated on every event),
plus the measurements asked for (printed, not asserted): event latency and cached throughput.
"""
from __future__ import annotations

import os
import random
import select
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pytest

from inotify_helpers import INOTIFYWAIT, watching
from mount_helpers import two_hosts, wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(INOTIFYWAIT is None, reason="inotify-tools not installed"),
    pytest.mark.timeout(240),
]


@pytest.fixture
def pair(zkfsd, mount):  # type: ignore[no-untyped-def]
    with two_hosts(zkfsd, mount, "session_timeout=2") as (a, b, kz):
        yield a.mountpoint, b.mountpoint, kz, b


def test_cat_and_ls_right_after_the_event(pair) -> None:  # type: ignore[no-untyped-def]
    A, B, kz, _ = pair
    with watching(B) as w:
        kz.create("/f", b"v0")
        # B replays the creation (CREATE, MODIFY, CLOSE_WRITE) whenever its follower gets to
        # it: wait for it, or its CLOSE_WRITE would pass for the first rewrite's below.
        w.wait_for("CLOSE_WRITE", B / "f")
        w.take()
        assert (B / "f").read_bytes() == b"v0"  # cached from now on
        assert os.listdir(B) == ["f"]
        for i in range(1, 30):
            value = f"value-{i}-" + "x" * random.randrange(0, 3000)
            if i % 2:
                kz.set("/f", value.encode())
            else:
                (A / "f").write_text(value)
            w.wait_for("CLOSE_WRITE", B / "f")
            w.take()
            assert (B / "f").read_text() == value
            assert os.stat(B / "f").st_size == len(value)
        kz.create("/g", b"new")
        w.wait_for("CREATE", B / "g")
        assert sorted(os.listdir(B)) == ["f", "g"]
        assert (B / "g").read_bytes() == b"new"
        kz.delete("/g")
        w.wait_for("DELETE", B / "g")
        assert os.listdir(B) == ["f"]
        assert not (B / "g").exists()


def test_own_writes_cached_then_overtaken_by_other_hosts(pair) -> None:  # type: ignore[no-untyped-def]
    """What A's own write left answers A's stat and cat at once (no read), and a write from
    B (or a kazoo client) after it still reaches A: its event drops what A cached. A directory
    kept cached while A creates files in it still changes kind when its last child goes."""
    A, B, kz, _ = pair
    kz.create("/d/seed", b"s", makepath=True)
    kz.set("/d", b"dir data")  # a directory with data: a file once it has no child
    # kazoo's makepath creates /d empty and childless (a file) before /d/seed: A may see that
    # state until the child event reaches it (another session's write, as in ZooKeeper).
    wait_for(lambda: os.path.isdir(A / "d"), 10)
    for i in range(20):
        mine, theirs = f"mine-{i}-" + "a" * i, f"theirs-{i}-" + "b" * (3000 + i)
        (A / "d" / f"f{i}").write_text(mine)
        assert os.stat(A / "d" / f"f{i}").st_size == len(mine)
        assert (A / "d" / f"f{i}").read_text() == mine
        (A / "d" / f"f{i}").write_text(mine + "!")  # an overwrite: its permission check
        assert (A / "d" / f"f{i}").read_text() == mine + "!"
        if i % 2:
            (B / "d" / f"f{i}").write_text(theirs)
        else:
            kz.set(f"/d/f{i}", theirs.encode())
        wait_for(lambda i=i, theirs=theirs: os.stat(A / "d" / f"f{i}").st_size == len(theirs),
                 10)
        assert (A / "d" / f"f{i}").read_text() == theirs
    assert os.path.isdir(A / "d")
    for name in ["seed"] + [f"f{i}" for i in range(20)]:
        kz.delete(f"/d/{name}")
    wait_for(lambda: os.path.isfile(A / "d"), 10)
    assert (A / "d").read_bytes() == b"dir data"


def test_stress_no_stale_no_invented_values(pair) -> None:  # type: ignore[no-untyped-def]
    """~10 s of random writes from A and kazoo with concurrent reads on B: every read shows a
    value that was written, reads never go back in time, and in sampled lock-step rounds a
    read right after the event shows exactly the value just committed."""
    A, B, kz, _ = pair
    kz.create("/s", b"00000000")
    assert (B / "s").read_bytes() == b"00000000"
    written = {b"00000000"}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    counter = [0]

    def value(n: int) -> bytes:
        return f"{n:08d}".encode() + b"." * random.randrange(0, 5000)

    def reader() -> None:
        last = -1
        while not stop.is_set():
            try:
                data = (B / "s").read_bytes()
            except OSError as exc:
                errors.append(f"read failed: {exc!r}")
                return
            if data not in written:
                real = [len(v) for v in list(written) if v[:8] == data[:8]]
                zeros = data.count(b"\0")
                errors.append(f"never written: {data[:20]!r}... ({len(data)} bytes, "
                              f"{zeros} NULs; written with that prefix: {real} bytes)")
                return
            n = int(data[:8])
            if n < last:
                errors.append(f"went back in time: {last} then {n}")
                return
            last = n

    readers = [threading.Thread(target=reader) for _ in range(3)]
    sampled = 0
    # Only changes: the readers' own opens and reads would keep the watcher busy.
    with watching(B, events=("modify", "close_write")) as w:
        for t in readers:
            t.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not errors:
                with lock:
                    counter[0] += 1
                    n = counter[0]
                    data = value(n)
                    written.add(data)
                    lockstep = n % 25 == 0
                    if lockstep:
                        w.settle(quiet=0.15, limit=3)  # earlier events all delivered
                        w.take()
                    if random.random() < 0.5:
                        kz.set("/s", data)
                    else:
                        with open(A / "s", "wb") as f:
                            f.write(data)
                    if lockstep:
                        w.wait_for("CLOSE_WRITE", B / "s", timeout=10)
                        got = (B / "s").read_bytes()
                        assert got == data, (n, got[:8])
                        sampled += 1
                w.take()
        finally:
            stop.set()
            for t in readers:
                t.join(timeout=10)
    print(f"\nstress: {counter[0]} writes, {sampled} lock-step checks, errors: {errors[:3]}")
    assert not errors
    assert sampled >= 5


def test_poll_reports_change(pair) -> None:  # type: ignore[no-untyped-def]
    A, B, kz, _ = pair
    kz.create("/p", b"one")
    fd = os.open(B / "p", os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLPRI)
        assert p.poll(300) == []  # unchanged: nothing to report
        threading.Timer(0.3, lambda: kz.set("/p", b"two")).start()
        t0 = time.monotonic()
        ready = p.poll(10_000)
        assert ready and ready[0][1] & select.POLLIN, ready
        assert time.monotonic() - t0 < 5
        assert (B / "p").read_bytes() == b"two"
    finally:
        os.close(fd)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def test_measure_event_latency_and_cached_throughput(pair) -> None:  # type: ignore[no-untyped-def]
    A, B, kz, _ = pair
    kz.create("/lat", b"0")
    assert (B / "lat").read_bytes() == b"0"
    # Every write must bring its own event; 300 of them show that (and give a p99) in a third
    # of the time 1000 took. The figures worth quoting come from `python -m bench`;
    # ZKFS_LATENCY_WRITES asks for more here.
    n = int(os.environ.get("ZKFS_LATENCY_WRITES", "300"))
    lat: list[float] = []
    with watching(B / "lat", events=("close_write",)) as w:
        for i in range(n):
            w.take()
            kz.set("/lat", str(i).encode())
            t_commit = time.monotonic()
            t_event = w.wait_for("CLOSE_WRITE", B / "lat", timeout=10)
            lat.append(max(0.0, t_event - t_commit))
    print(f"\nevent latency over {n} writes (kazoo set returned -> inotify CLOSE_WRITE on B): "
          f"p50 {statistics.median(lat) * 1000:.2f} ms, p99 {_pct(lat, 0.99) * 1000:.2f} ms, "
          f"max {max(lat) * 1000:.2f} ms")

    files = 200
    kz.create("/many", b"")
    for i in range(files):
        kz.create(f"/many/f{i:03d}", f"content of file {i}\n".encode() * 4)
    wait_for(lambda: len(os.listdir(B / "many")) == files, what="listing on B")
    shm = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        for i in range(files):
            (Path(tmp) / f"f{i:03d}").write_bytes(f"content of file {i}\n".encode() * 4)
        results = {}
        for label, root in (("zkfs B", B / "many"), ("tmpfs", Path(tmp))):
            paths = [str(root / f"f{i:03d}") for i in range(files)]
            for p in paths:  # warm the caches
                os.stat(p)
                with open(p, "rb") as f:
                    f.read()
            for op in ("stat", "cat"):
                done = 0
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 0.5:
                    for p in paths:
                        if op == "stat":
                            os.stat(p)
                        else:
                            with open(p, "rb") as f:
                                f.read()
                    done += len(paths)
                results[(label, op)] = done / (time.perf_counter() - t0)
    for op in ("stat", "cat"):
        z, t = results[("zkfs B", op)], results[("tmpfs", op)]
        print(f"cached {op}: zkfs B {z:,.0f} ops/s, tmpfs {t:,.0f} ops/s, ratio {z / t:.2f}")
