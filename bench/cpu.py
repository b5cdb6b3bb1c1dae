"""Server CPU per request: one standalone zkfsd, one lean-driver cell per op, CPU seconds of the
zkfsd process (user + system, all threads, and its reaped snapshot children) divided by the requests it answered.

    .venv/bin/python -m bench.cpu                       # 16 sessions x 32 in flight, 2 s per op
    .venv/bin/python -m bench.cpu --cpus 0              # zkfsd pinned to one core (taskset)
    .venv/bin/python -m bench.cpu --flame bench/flame   # also py-spy flame graphs, one per op
    .venv/bin/python -m bench.cpu --flame /tmp/prof.txt # collapsed stacks instead of svg

The figure includes everything the process does for a request: decoding, the tree, the log
append and its share of an fsync, encoding and the send. `--flame PREFIX` writes
PREFIX-<op>.svg (py-spy must be installed in the venv: `.venv/bin/pip install py-spy`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import driver
from bench.driver import Cell

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ZkfsdProcess  # noqa: E402


@dataclass(frozen=True)
class CpuFigure:
    op: str
    ops_per_s: float
    server_cpu_us: float   # zkfsd CPU µs per request
    server_cores: float    # zkfsd CPU seconds per wall second


def _cpu_seconds(proc: psutil.Process) -> float:
    # With the children it reaped: zkfsd serializes snapshots in forked children.
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def measure(port: int, pid: int, ops: list[str], sessions: int, window: int, duration: float,
            flame: str | None = None) -> list[CpuFigure]:
    address = ("127.0.0.1", port)
    proc = psutil.Process(pid)
    figures = []
    for n, op in enumerate(ops):
        prefix = driver.made_path(
            address, f"/cpu/{op.replace('/', '')}{n}-{int(time.time() * 1000)}")
        cell = Cell(op, sessions, window, duration, 10**9, prefix)
        spy = None
        if flame:
            # PREFIX-op.svg, or collapsed stacks (py-spy's raw format) for PREFIX ending in .txt
            raw = flame.endswith(".txt")
            out = f"{flame.removesuffix('.txt')}-{op.replace('/', '')}.{'txt' if raw else 'svg'}"
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                    "-o", out, "--pid", str(pid), "--rate", "200",
                                    "--duration", str(int(duration) + 2), "--nonblocking",
                                    *(["--format", "raw"] if raw else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        result, before, after = driver.run_cell(address, cell, 2, lambda: _cpu_seconds(proc))
        if spy is not None:
            spy.wait(timeout=duration + 30)
        if result.failure or not result.ops or before is None or after is None:
            print(f"{op}: failed: {result.failure}", file=sys.stderr)
            continue
        used = after - before
        figures.append(CpuFigure(op, result.throughput, used / result.ops * 1e6,
                                 used / result.elapsed))
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="getData,setData,create")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--cpus", default="", help="taskset CPU list for zkfsd, e.g. 0 or 0,1")
    ap.add_argument("--flame", default=None, help="py-spy flame graph prefix (PREFIX-op.svg)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="zkfs-cpu-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                else None))
    server = ZkfsdProcess(tmp / "data", tick_time=2000, log_level="WARNING")
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        if args.cpus:
            subprocess.run(["taskset", "-a", "-p", "-c", args.cpus, str(pid)], check=True,
                           stdout=subprocess.DEVNULL)
        figures = measure(server.port, pid, args.ops.split(","), args.sessions, args.window,
                          args.duration, args.flame)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    cpus = args.cpus or "any"
    print(f"zkfsd standalone, {args.sessions} sessions x {args.window} in flight, cpus {cpus}")
    print(f"{'op':10} {'ops/s':>9} {'cpu µs/req':>11} {'server cores':>13}")
    for f in figures:
        print(f"{f.op:10} {f.ops_per_s:9.0f} {f.server_cpu_us:11.1f} {f.server_cores:13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
