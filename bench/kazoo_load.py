"""A simple kazoo load against zkfsd and Apache ZooKeeper (standalone), side by side.

Not the full harness (see bench/README.md once it exists): one kazoo session, create / setData /
getData, sequential (one request in flight) and pipelined (kazoo's *_async, a window in flight).
kazoo itself costs more CPU per request than either server, so these are kazoo-user figures.

`run_sessions` (used by `python -m bench`, section "kazoo, 16 sessions"): many KazooClients
spread over worker processes, create / setData / getData phases with a window per session.

    .venv/bin/python bench/kazoo_load.py [--ops 2000] [--window 32]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ApacheZooKeeper, ZkfsdProcess, kazoo_client  # noqa: E402


def run_ops(zk, ops: int, window: int) -> dict[str, float]:
    results = {}
    payload = b"x" * 100
    zk.ensure_path("/bench")

    def timed(name: str, make_call) -> None:
        started = time.perf_counter()
        if window <= 1:
            for i in range(ops):
                make_call(i).get()
        else:
            pending = []
            for i in range(ops):
                pending.append(make_call(i))
                if len(pending) >= window:
                    pending.pop(0).get()
            for p in pending:
                p.get()
        results[name] = ops / (time.perf_counter() - started)

    timed("create", lambda i: zk.create_async(f"/bench/n{i}", payload))
    timed("setData", lambda i: zk.set_async(f"/bench/n{i}", payload))
    timed("getData", lambda i: zk.get_async(f"/bench/n{i}"))
    for i in range(ops):
        zk.delete_async(f"/bench/n{i}")
    zk.sync("/bench")
    return results


# ---------------------------------------------------------------------------------------------
# Many kazoo sessions: KazooClient instances spread over worker processes (bench "kazoo, 16
# sessions"). Each session does its share of create, then setData, then getData (phases start
# together on all workers: a multiprocessing barrier), `window` async requests in flight per
# session, each phase stopped at `cap` seconds. ops/s = all sessions' completed requests / (last
# end - first start) of the phase; CLOCK_MONOTONIC is system-wide, so workers' times compare.

KAZOO_PHASES = ("create", "setData", "getData")


def _rotated(hosts: list[str], k: int) -> str:
    k %= len(hosts)
    return ",".join(hosts[k:] + hosts[:k])


def _session_loop(zk, make_call, n: int, window: int, deadline: float, timeout: float
                  ) -> tuple[int, int]:
    """Issue make_call(i) for i < n (until `deadline`) with `window` in flight; (done, errors)."""
    pending: deque = deque()
    done = errors = issued = 0

    def settle_one() -> None:
        nonlocal done, errors
        try:
            pending.popleft().get(timeout=timeout)
            done += 1
        except Exception:  # noqa: BLE001 - counted, the row notes it
            errors += 1

    while issued < n and time.monotonic() < deadline:
        pending.append(make_call(issued))
        issued += 1
        if len(pending) >= window:
            settle_one()
    while pending:
        settle_one()
    return done, errors


def _sessions_worker(hosts: list[str], session_ids: list[int], base: str, ops: int, window: int,
                     cap: float, barrier, out, timeout: float = 10.0) -> None:
    """One worker process: its KazooClients, one thread per session in every phase."""
    from kazoo.client import KazooClient

    report: dict = {"phases": {}, "error": "", "per_host": {}}
    clients: list = []
    try:
        try:
            for sid in session_ids:
                zk = KazooClient(hosts=_rotated(hosts, sid), timeout=10.0, randomize_hosts=False)
                clients.append(zk)
                zk.start(timeout=15)
                zk.ensure_path(f"{base}/s{sid}")
                try:  # which member this session landed on (kazoo private API: best effort)
                    host = str(zk._connection._socket.getpeername()[1])
                except Exception:  # noqa: BLE001
                    host = "?"
                report["per_host"][host] = report["per_host"].get(host, 0) + 1
        except Exception as e:  # noqa: BLE001
            report["error"] = f"connect: {type(e).__name__}: {e}"
            barrier.abort()
            return
        payload = b"x" * 100
        created = {sid: 0 for sid in session_ids}
        for phase in KAZOO_PHASES:
            barrier.wait(timeout=90)
            cpu0, t0 = time.process_time(), time.monotonic()
            deadline = t0 + cap
            stats: dict[int, tuple[int, int]] = {}

            def run(sid: int, zk) -> None:
                node = f"{base}/s{sid}/n"
                keys = max(1, created[sid])
                if phase == "create":
                    call = lambda i: zk.create_async(f"{node}{i}", payload)  # noqa: E731
                elif phase == "setData":
                    call = lambda i: zk.set_async(f"{node}{i % keys}", payload)  # noqa: E731
                else:
                    call = lambda i: zk.get_async(f"{node}{i % keys}")  # noqa: E731
                stats[sid] = _session_loop(zk, call, ops, window, deadline, timeout)

            threads = [threading.Thread(target=run, args=(sid, zk), daemon=True)
                       for sid, zk in zip(session_ids, clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=cap + window * timeout + 30)
            t1 = time.monotonic()
            if phase == "create":
                created = {sid: stats.get(sid, (0, 0))[0] for sid in session_ids}
            report["phases"][phase] = {
                "start": t0, "end": t1, "cpu": time.process_time() - cpu0,
                "ops": sum(d for d, _ in stats.values()),
                "errors": sum(e for _, e in stats.values()) + len(session_ids) - len(stats)}
    except Exception as e:  # noqa: BLE001 - a broken barrier or timeout: report, never hang
        report["error"] = report["error"] or f"{type(e).__name__}: {e}"
        barrier.abort()
    finally:
        for zk in clients:
            try:
                zk.stop()
                zk.close()
            except Exception:  # noqa: BLE001
                pass
        out.put(report)


def run_sessions(hosts: str, base: str, sessions: int = 16, procs: int = 2, window: int = 8,
                 ops: int = 1000, cap: float = 3.0) -> dict:
    """`sessions` KazooClients over `procs` processes against `hosts` (session k connects to
    the k-th member first: sessions spread evenly over an ensemble); each does up to `ops` of
    every phase under `base`/s<k>. Returns {"rates": {phase: ops/s}, "errors": {phase: n},
    "cpu": cores used by the kazoo processes in the busiest phase, "error": "" or why not}."""
    ctx = mp.get_context("spawn")
    nproc = max(1, min(procs, sessions))
    host_list = hosts.split(",")
    barrier, out = ctx.Barrier(nproc), ctx.Queue()
    workers = []
    for w in range(nproc):
        ids = list(range(w, sessions, nproc))
        p = ctx.Process(target=_sessions_worker,
                        args=(host_list, ids, base, ops, window, cap, barrier, out), daemon=True)
        p.start()
        workers.append(p)
    reports: list[dict] = []
    deadline = time.monotonic() + 120 + 3 * (cap + window * 10 + 40)
    try:
        while len(reports) < nproc and time.monotonic() < deadline:
            try:
                reports.append(out.get(timeout=0.5))
            except Exception:  # noqa: BLE001 - queue.Empty
                if all(not p.is_alive() for p in workers) and out.empty():
                    break
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()  # by PID: our own worker
                p.join(timeout=5)
    result: dict = {"rates": {}, "errors": {}, "cpu": 0.0, "error": "", "per_host": {}}
    problems = [r["error"] for r in reports if r["error"]]
    if len(reports) < nproc:
        problems.append(f"{nproc - len(reports)} kazoo worker(s) gave no report")
    if problems:
        result["error"] = problems[0]
        return result
    for r in reports:
        for host, n in r["per_host"].items():
            result["per_host"][host] = result["per_host"].get(host, 0) + n
    for phase in KAZOO_PHASES:
        parts = [r["phases"][phase] for r in reports]
        wall = max(x["end"] for x in parts) - min(x["start"] for x in parts)
        total = sum(x["ops"] for x in parts)
        result["rates"][phase] = total / wall if wall > 0 and total else None
        result["errors"][phase] = sum(x["errors"] for x in parts)
        if wall > 0:
            result["cpu"] = max(result["cpu"], sum(x["cpu"] for x in parts) / wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            "zkfsd": ZkfsdProcess(Path(tmp) / "zkfsd", tick_time=2000, log_level="WARNING"),
            "zookeeper": ApacheZooKeeper(Path(tmp) / "zk"),
        }
        for name, server in servers.items():
            with server:
                with kazoo_client(server.hosts) as zk:
                    for window in (1, args.window):
                        for _ in range(args.rounds):
                            for op, rate in run_ops(zk, args.ops, window).items():
                                table.setdefault(f"{op} w={window}", {}).setdefault(name, []).append(rate)
    print(f"{'operation':<18}{'zkfsd ops/s':>14}{'zookeeper ops/s':>18}{'ratio':>8}")
    out = {}
    for row, by_server in table.items():
        med = {k: sorted(v)[len(v) // 2] for k, v in by_server.items()}
        ratio = med["zkfsd"] / med["zookeeper"]
        out[row] = {**med, "ratio": ratio, "runs": by_server}
        print(f"{row:<18}{med['zkfsd']:>14.0f}{med['zookeeper']:>18.0f}{ratio:>8.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
