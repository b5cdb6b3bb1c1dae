"""Server measurements against one running shape (see servers.py), same for zkfsd and ZooKeeper.

- throughput: create / setData / getData / 90-10 mix, 1 and 16 sessions, 1 and 32 in flight,
  with the lean driver (driver.py) in separate processes;
- sequential create latency (1 session, 1 in flight: p50 / p99);
- fsyncs per acknowledged write: the servers' own counters via mntr (zkfsd zk_fsync_count,
  ZooKeeper zk_cnt_fsynctime, one sample per transaction-log fsync), and, for standalone servers
  and when strace exists, fsync+fdatasync system calls counted by `strace -f -c` attached to the
  server's PID;
- ephemeral expiry: kill -9 of a process holding an ephemeral node, until another session's
  watch fires NodeDeleted;
- leader failover (ensembles): kill -9 of the leader, until the next successful write;
- kazoo-user figures (bench/kazoo_load.py's run_ops), and 16 kazoo sessions over 2-4 processes
  (kazoo_load.run_sessions) against standalone servers and ensembles (section "kazoo, 16 sessions").
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import driver
from bench.driver import Cell, Session, ensure_path, percentile
from bench.report import Results
from bench.servers import Shape

SESSIONS = (1, 16)
WINDOWS = (1, 32)


@dataclass
class Settings:
    runs: int = 3
    duration: float = 1.5          # seconds of load per cell
    max_ops: int = 200_000         # per session per cell
    keys: int = 50                 # nodes per session for setData/getData/mix
    driver_procs: int = 2
    tick_ms: int = 2000
    ephemeral_timeout_ms: int = 4000
    kazoo_ops: int = 500
    strace_duration: float = 1.0
    scale_nodes: int = 100_000
    scale_dir: int = 10_000
    mount_files: int = 200
    mount_dir_entries: int = 1000
    mount_iterations: int = 2000
    kazoo_sessions: int = 16       # "kazoo, 16 sessions": KazooClients in all
    kazoo_window: int = 8          # async requests in flight per kazoo session
    kazoo_session_ops: int = 1000  # per session per phase (create, setData, getData)
    kazoo_cap: float = 3.0         # seconds per phase at most
    event_writes: int = 1000       # writes on mount A timed until inotify on mount B
    cached_iterations: int = 20000  # cached stat / open+read+close on mount B (and tmpfs)


class _Names:
    """Fresh znode names for cells."""

    counter = itertools.count(1)

    @classmethod
    def next(cls, stem: str) -> str:
        return f"/bench/{stem}{next(cls.counter)}-{os.getpid()}"


def _side(shape: Shape) -> str:
    return "a" if shape.impl == "zkfsd" else "b"


def _section(shape: Shape, what: str) -> str:
    return f"{what}, {shape.kind}"


def _fresh_prefix(address, stem: str) -> str:
    return driver.made_path(address, _Names.next(stem))


def throughput(shape: Shape, st: Settings, res: Results, log=print) -> None:
    side = _side(shape)
    address = shape.addresses[0]
    sec = _section(shape, "throughput (lean driver)")
    for run in range(st.runs):
        busiest = 0.0
        for op in driver.OPS:
            for sessions in SESSIONS:
                for window in WINDOWS:
                    metric = f"{op} s={sessions} w={window}"
                    cell = Cell(op, sessions, window, st.duration, st.max_ops,
                                _fresh_prefix(address, "t"), keys=st.keys)
                    probe = shape.fsync_count if op in driver.WRITE_OPS else None
                    r, f0, f1 = driver.run_cell(address, cell, st.driver_procs, probe)
                    if r.failure or r.ops == 0:
                        res.add(sec, metric, "ops/s", side, None,
                                f"{shape.impl}: {r.failure or 'no replies'}", better="higher")
                        log(f"  {shape.label} {metric}: FAILED {r.failure}")
                        continue
                    note = f"{r.errors} errors" if r.errors else ""
                    res.add(sec, metric, "ops/s", side, r.throughput, note, better="higher")
                    busiest = max(busiest, r.cpu / r.elapsed)
                    log(f"  {shape.label} run {run + 1} {metric}: {r.throughput:.0f} ops/s "
                        f"(driver cpu {r.cpu / r.elapsed:.2f})")
                    if op == "create" and sessions == 1 and window == 1:
                        lat = _section(shape, "latency")
                        res.add(lat, "sequential create p50", "ms", side,
                                percentile(r.latencies, 50) * 1e3, better="lower")
                        res.add(lat, "sequential create p99", "ms", side,
                                percentile(r.latencies, 99) * 1e3, better="lower")
                    if op == "getData" and sessions == 1 and window == 1:
                        res.add(_section(shape, "latency"), "sequential getData p50", "ms", side,
                                percentile(r.latencies, 50) * 1e3, better="lower")
                    if probe and (sessions, window) in ((1, 1), (16, 32)):
                        fs = _section(shape, "fsyncs per acknowledged write")
                        m = f"{op} s={sessions} w={window} (mntr, per member)"
                        if f0 is None or f1 is None:
                            res.add(fs, m, "fsync/write", side, None,
                                    f"{shape.impl}: mntr has no {shape.fsync_key}")
                        else:
                            members = len(shape.live_members())
                            res.add(fs, m, "fsync/write", side, (f1 - f0) / members / r.ops,
                                    better="lower")
        # The driver must not be the bottleneck: CPU seconds of all driver processes per wall
        # second, in the busiest cell (2 cores here; well below 1 means the server is the limit).
        res.add(_section(shape, "load generator"), "driver CPU, busiest cell", "cores", side,
                busiest)


# --- strace -----------------------------------------------------------------------------------


def _strace_count(path: Path) -> int | None:
    """Calls of fsync + fdatasync in a `strace -c` summary file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        cols = line.split()
        if cols and cols[-1] in ("fsync", "fdatasync"):
            # % time, seconds, usecs/call, calls, [errors], syscall
            nums = [c for c in cols[:-1] if re.fullmatch(r"[\d.]+", c)]
            if len(nums) >= 4:
                total += int(nums[3])
    return total


def fsync_strace(shape: Shape, st: Settings, res: Results, log=print) -> None:
    """fsync+fdatasync syscalls per acknowledged create, counted by strace on the server PID."""
    side = _side(shape)
    sec = _section(shape, "fsyncs per acknowledged write")
    strace = shutil.which("strace")
    for sessions, window in ((1, 1), (16, 32)):
        metric = f"create s={sessions} w={window} (strace fsync+fdatasync syscalls)"
        if not strace:
            res.note(sec, metric, "fsync/write", "strace not installed")
            return
        if shape.kind != "standalone":
            return
        for _ in range(st.runs):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "strace.txt"
                pid = shape.pids()[0]
                tracer = subprocess.Popen(
                    [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out),
                     "-p", str(pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
                try:
                    time.sleep(1.0)  # attach to every thread (a JVM has dozens)
                    cell = Cell("create", sessions, window, st.strace_duration, st.max_ops,
                                _fresh_prefix(shape.addresses[0], "f"))
                    r, _, _ = driver.run_cell(shape.addresses[0], cell, st.driver_procs)
                    # Connect/close of the driver's sessions are writes too (createSession and
                    # closeSession transactions); count them with the creates.
                    writes = r.ops + 2 * sessions + 1
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        tracer.send_signal(signal.SIGINT)  # detach and write the summary
                    try:
                        tracer.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        tracer.kill()
                        tracer.wait()
                calls = _strace_count(out)
                if r.failure or calls is None or not r.ops:
                    res.add(sec, metric, "fsync/write", side, None,
                            f"{shape.impl}: strace run failed {r.failure}".strip())
                    continue
                res.add(sec, metric, "fsync/write", side, calls / writes, better="lower")
                log(f"  {shape.label} strace {metric}: {calls} calls / {writes} writes")


# --- ephemeral expiry and failover ------------------------------------------------------------


def ephemeral_expiry(shape: Shape, st: Settings, res: Results, log=print) -> None:
    side = _side(shape)
    sec = _section(shape, "failure detection")
    metric = f"kill -9 of ephemeral holder -> NodeDeleted (session timeout {st.ephemeral_timeout_ms} ms)"
    addrs = shape.addresses
    holder_addr, watcher_addr = addrs[0], addrs[-1]
    for run in range(st.runs):
        path = _Names.next("eph")
        holder = None
        try:
            with Session(*watcher_addr, timeout_ms=30000) as w:
                ensure_path(w, path.rsplit("/", 1)[0])
                holder = driver.start_ephemeral_holder(holder_addr, path, st.ephemeral_timeout_ms)
                # With an ensemble the watcher's member must have applied the create first.
                deadline = time.monotonic() + 10
                while not w.exists_watch(path) and time.monotonic() < deadline:
                    time.sleep(0.05)
                t0 = time.monotonic()
                driver.kill9(holder)
                got = w.wait_event(path, t0 + st.ephemeral_timeout_ms / 1000 * 3 + 15)
            if got is None:
                res.add(sec, metric, "s", side, None, f"{shape.impl}: no NodeDeleted event")
                continue
            res.add(sec, metric, "s", side, got[1] - t0, better="lower")
            log(f"  {shape.label} run {run + 1} ephemeral expiry: {got[1] - t0:.2f}s")
        except Exception as e:  # noqa: BLE001
            res.add(sec, metric, "s", side, None, f"{shape.impl}: {type(e).__name__}: {e}")
        finally:
            if holder is not None and holder.is_alive():
                driver.kill9(holder)


def _write_until_ok(addresses, path: str, deadline: float) -> float | None:
    """Keep trying one setData on any of `addresses` (new session per attempt) until one
    succeeds; the monotonic time of the success, or None at `deadline`."""
    for address in itertools.cycle(addresses):
        if time.monotonic() > deadline:
            return None
        try:
            with Session(*address, timeout_ms=10000, connect_timeout=1.0) as s:
                s.set(path, timeout=2.0)
                return time.monotonic()
        except Exception:  # noqa: BLE001 - connection refused/lost, not serving, timeout
            time.sleep(0.02)
    return None


def leader_failover(shape: Shape, st: Settings, res: Results, log=print) -> None:
    side = _side(shape)
    sec = _section(shape, "failure detection")
    metric = "kill -9 of the leader -> next successful write"
    for run in range(st.runs):
        leader = shape.leader()
        if leader is None:
            res.add(sec, metric, "s", side, None, f"{shape.impl}: no leader")
            return
        others = [(m.host, m.port) for m in shape.live_members() if m is not leader]
        path = _Names.next("fo")
        with Session(*others[0]) as s:
            ensure_path(s, path)
        t0 = time.monotonic()
        shape.kill_member(leader)
        t1 = _write_until_ok(others, path, t0 + 60)
        if t1 is None:
            res.add(sec, metric, "s", side, None, f"{shape.impl}: no write within 60s")
        else:
            res.add(sec, metric, "s", side, t1 - t0, better="lower")
            log(f"  {shape.label} run {run + 1} leader failover: {t1 - t0:.2f}s")
        shape.restart_member(leader)


# --- kazoo ------------------------------------------------------------------------------------


def kazoo_figures(shape: Shape, st: Settings, res: Results, log=print) -> None:
    from bench.kazoo_load import run_ops
    from bench.servers import kazoo_client

    side = _side(shape)
    sec = _section(shape, "throughput (kazoo user, 1 session)")
    with kazoo_client(shape.hosts) as zk:
        for _ in range(st.runs):
            for window in WINDOWS:
                for op, rate in run_ops(zk, st.kazoo_ops, window).items():
                    res.add(sec, f"{op} w={window}", "ops/s", side, rate, better="higher")
    log(f"  {shape.label} kazoo done")


KAZOO_SECTION = "kazoo, 16 sessions"


def kazoo_procs() -> int:
    return max(2, min(4, os.cpu_count() or 2))


def kazoo_metric(op: str, kind: str) -> str:
    where = "ensemble, clients over all 3 members" if kind == "ensemble" else "standalone"
    return f"{op} ({where})"


def kazoo_sessions(shape: Shape, st: Settings, res: Results, log=print) -> None:
    """16 KazooClients (full connect string, session k starting at member k) over 2-4 worker
    processes: create, then setData, then getData, st.kazoo_window in flight per session."""
    from bench.kazoo_load import KAZOO_PHASES, run_sessions

    side = _side(shape)
    address = shape.addresses[0]
    for run in range(st.runs):
        base = _fresh_prefix(address, "k16-")
        r = run_sessions(shape.hosts, base, st.kazoo_sessions, kazoo_procs(), st.kazoo_window,
                         st.kazoo_session_ops, st.kazoo_cap)
        if r["error"]:
            for op in KAZOO_PHASES:
                res.add(KAZOO_SECTION, kazoo_metric(op, shape.kind), "ops/s", side, None,
                        f"{shape.impl}: {r['error'][:200]}", better="higher")
            log(f"  {shape.label} kazoo x{st.kazoo_sessions}: FAILED {r['error']}")
            continue
        for op in KAZOO_PHASES:
            errs = r["errors"][op]
            res.add(KAZOO_SECTION, kazoo_metric(op, shape.kind), "ops/s", side, r["rates"][op],
                    f"{shape.impl}: {errs} errors" if errs else "", better="higher")
        res.add(KAZOO_SECTION, f"kazoo processes CPU, busiest phase ({shape.kind})", "cores",
                side, r["cpu"])
        log(f"  {shape.label} run {run + 1} kazoo x{st.kazoo_sessions} w={st.kazoo_window}: "
            + ", ".join(f"{op} {r['rates'][op] or 0:.0f}/s" for op in KAZOO_PHASES)
            + f" (kazoo cpu {r['cpu']:.2f}; sessions per client port {r['per_host']})")
