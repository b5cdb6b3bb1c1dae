"""Memory and scale, zkfsd and Apache ZooKeeper standalone, one after the other:

- populate N znodes of 100 bytes (directories of `scale_dir` children each), pipelined;
- resident memory (psutil RSS) of the server process holding them;
- `ls` of a directory with `scale_dir` children through a fresh `zkfs mount` (first and second);
- restart: SIGTERM, then time from starting the process to the first successful getData of a
  node written before the stop (the server must have loaded its snapshot/log); on-disk size.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench import driver
from bench.driver import Cell, Session, ensure_path
from bench.mount_bench import fuse_missing, ls_through_mount
from bench.report import Results
from bench.server_bench import Settings
from bench.servers import STANDALONE, Unavailable, rss_bytes

SECTION = "memory and scale"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _first_read(address, path: str, deadline: float) -> float | None:
    while time.monotonic() < deadline:
        try:
            with Session(*address, connect_timeout=1.0) as s:
                if s.get(path, timeout=2.0) is not None:
                    return time.monotonic()
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.02)
    return None


def scale(impl: str, base: Path, st: Settings, res: Results, log=print) -> None:
    side = "a" if impl == "zkfsd" else "b"
    n, per_dir = st.scale_nodes, st.scale_dir
    dirs = max(1, n // per_dir)
    m_pop = f"populate {dirs * per_dir} znodes of 100 B (16 in flight per session)"
    m_rss = f"resident memory with {dirs * per_dir} znodes"
    m_ls1 = f"ls of a {per_dir}-child directory through the mount, fresh mount"
    m_ls2 = f"ls of a {per_dir}-child directory through the mount, again"
    m_restart = f"restart with {dirs * per_dir} znodes: start -> first successful read"
    m_disk = f"data directory size with {dirs * per_dir} znodes"
    try:
        shape = STANDALONE[impl](base / impl, st.tick_ms)
        shape.start()
    except Unavailable as e:
        for m in (m_pop, m_rss, m_ls1, m_restart):
            res.add(SECTION, m, "", side, None, f"{impl} not available: {e}")
        return
    try:
        address = shape.addresses[0]
        with Session(*address) as s:
            ensure_path(s, "/scale")
        cell = Cell("create", dirs, 16, 3600.0, per_dir, "/scale")
        r, _, _ = driver.run_cell(address, cell, st.driver_procs)
        if r.failure or r.ops < dirs * per_dir:
            res.add(SECTION, m_pop, "ops/s", side, None,
                    f"{impl}: populate incomplete ({r.ops} ops, {r.errors} errors) {r.failure}")
            return
        res.add(SECTION, m_pop, "ops/s", side, r.throughput, better="higher")
        log(f"  {impl}: {r.ops} znodes in {r.elapsed:.1f}s")
        # RSS sampled a few times (the JVM and CPython both settle after a burst).
        member = shape.members[0]
        for _ in range(st.runs):
            time.sleep(0.5)
            res.add(SECTION, m_rss, "MiB", side, rss_bytes(member.pid) / 2**20, better="lower")
        probe = "/scale/s0/n0"
        if fuse_missing():
            res.add(SECTION, m_ls1, "ms", side, None, f"not available: {fuse_missing()}")
        else:
            for run in range(st.runs):
                first, second = ls_through_mount(shape, "/scale/s0", base / f"mnt-{impl}-{run}",
                                                 base / f"mount-{impl}-{run}.log")
                res.add(SECTION, m_ls1, "ms", side, first, better="lower")
                res.add(SECTION, m_ls2, "ms", side, second, better="lower")
        for run in range(st.runs):
            member.stop()
            t0 = time.monotonic()
            member.start()  # returns once ruok (zkfsd) / srvr (ZooKeeper) answers
            t1 = _first_read(address, probe, t0 + 120)
            if t1 is None:
                res.add(SECTION, m_restart, "s", side, None, f"{impl}: no read within 120s")
            else:
                res.add(SECTION, m_restart, "s", side, t1 - t0, better="lower")
                log(f"  {impl}: restart run {run + 1} {t1 - t0:.2f}s")
        res.add(SECTION, m_disk, "MiB", side, _dir_size(Path(member.data_dir)) / 2**20,
                "apparent size; ZooKeeper preallocates its log files 64 MiB at a time"
                if impl == "zookeeper" else "", better="lower")
    finally:
        shape.stop()
