"""One core or two: zkfsd with clientWorkers=1 and 2, and Apache ZooKeeper, each pinned with
taskset to one core and to two, under the lean driver (16 sessions x 32 in flight).

    .venv/bin/python -m bench.cores                      # getData and setData, 3 s per cell
    .venv/bin/python -m bench.cores --ops getData --workers 1,2,3 --duration 5

The server's processes (every thread, and zkfsd's client workers) are pinned; the driver's
processes are not, so on a 2-core machine the load generator shares the cores with the
server: the figures are what the server gets while the machine is also busy making its load.
The load average and the machine's CPU use are printed beside each run, because other work on
a shared machine moves these figures.
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
from helpers import ApacheZooKeeper, ZkfsdProcess, apache_zookeeper_missing  # noqa: E402


@dataclass(frozen=True)
class CoresFigure:
    server: str       # "zkfsd w=N" or "zookeeper"
    cpus: str
    op: str
    ops_per_s: float
    server_cpu_us: float   # server CPU µs per request, all its processes
    member_cpu_us: float   # of which the member process (zkfsd) or the JVM (ZooKeeper)
    server_cores: float    # server CPU seconds per wall second
    load: float            # 1-minute load average after the cell
    machine_busy: float    # percent of all cores busy during the cell


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process `pid` and of it with all its descendants."""
    total = own = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if proc.pid == pid:
            own = t.user + t.system
    return own, total


def _pin(pid: int, cpus: str) -> None:
    for proc in _tree(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)


def _wait_workers(pid: int, port: int, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = 0
        for proc in _tree(pid):
            try:
                conns = getattr(proc, "net_connections", proc.connections)(kind="tcp")
                listening += sum(1 for c in conns
                                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port)
            except psutil.NoSuchProcess:
                pass
        if listening >= workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"zkfsd did not get {workers} client processes listening in {timeout}s")


def measure(server: str, cpus: str, port: int, pid: int, ops: list[str], sessions: int,
            window: int, duration: float) -> list[CoresFigure]:
    address = ("127.0.0.1", port)
    figures = []
    for n, op in enumerate(ops):
        prefix = driver.made_path(address, f"/cores/{op}{n}-{int(time.time() * 1000)}")
        cell = Cell(op, sessions, window, duration, 10**9, prefix)
        psutil.cpu_percent()  # starts the machine-wide interval
        result, before, after = driver.run_cell(address, cell, 2, lambda: _cpu(pid))
        busy = psutil.cpu_percent()
        if result.failure or not result.ops or before is None or after is None:
            print(f"{server} cpus {cpus} {op}: failed: {result.failure}", file=sys.stderr)
            continue
        own = after[0] - before[0]  # type: ignore[index]
        used = after[1] - before[1]  # type: ignore[index]
        figures.append(CoresFigure(server, cpus, op, result.throughput,
                                   used / result.ops * 1e6, own / result.ops * 1e6,
                                   used / result.elapsed, os.getloadavg()[0], busy))
    return figures


def run_zkfsd(workers: int, cpus: str, ops: list[str], args: argparse.Namespace,
              tmp: Path) -> list[CoresFigure]:
    base = tmp / f"zkfsd-w{workers}-{cpus.replace(',', '')}"
    base.mkdir()
    cfg = base / "zoo.cfg"
    cfg.write_text(f"dataDir={base / 'data'}\nclientWorkers={workers}\n")
    server = ZkfsdProcess(base / "data", tick_time=2000, log_level="WARNING",
                          extra_args=["--config", str(cfg)])
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        _wait_workers(pid, server.port, workers)
        _pin(pid, cpus)
        return measure(f"zkfsd w={workers}", cpus, server.port, pid, ops, args.sessions,
                       args.window, args.duration)
    finally:
        server.stop()


def run_zookeeper(cpus: str, ops: list[str], args: argparse.Namespace,
                  tmp: Path) -> list[CoresFigure]:
    zk = ApacheZooKeeper(tmp / f"zk-{cpus.replace(',', '')}")
    try:
        zk.start()
        assert zk.proc is not None
        _pin(zk.proc.pid, cpus)
        return measure("zookeeper", cpus, zk.port, zk.proc.pid, ops, args.sessions,
                       args.window, args.duration)
    finally:
        zk.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="getData,setData")
    ap.add_argument("--workers", default="1,2", help="clientWorkers values to run")
    ap.add_argument("--cpus", default="0;0,1", help="taskset CPU lists, ';'-separated")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--no-zookeeper", action="store_true")
    args = ap.parse_args(argv)
    ops = args.ops.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="zkfs-cores-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                else None))
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores; "
          f"{args.sessions} sessions x {args.window} in flight, {args.duration:.0f} s per cell")
    figures: list[CoresFigure] = []
    try:
        for cpus in args.cpus.split(";"):
            for workers in (int(w) for w in args.workers.split(",")):
                figures += run_zkfsd(workers, cpus, ops, args, tmp)
            if not args.no_zookeeper and not apache_zookeeper_missing():
                figures += run_zookeeper(cpus, ops, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'server':12} {'cpus':5} {'op':8} {'ops/s':>9} {'cpu µs/req':>11} "
          f"{'member µs':>9} {'srv cores':>9} {'load1':>6} {'machine%':>8} {'vs zk':>6}")
    zk = {(f.cpus, f.op): f.ops_per_s for f in figures if f.server == "zookeeper"}
    for f in figures:
        ratio = f.ops_per_s / zk[(f.cpus, f.op)] if zk.get((f.cpus, f.op)) else float("nan")
        print(f"{f.server:12} {f.cpus:5} {f.op:8} {f.ops_per_s:9.0f} {f.server_cpu_us:11.1f} "
              f"{f.member_cpu_us:9.1f} {f.server_cores:9.2f} {f.load:6.2f} {f.machine_busy:8.0f} {ratio:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
