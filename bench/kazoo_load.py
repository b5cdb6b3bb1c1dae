"""A simple kazoo load against zkfsd and Apache ZooKeeper (standalone), side by side.

Not the full harness (see bench/README.md once it exists): one kazoo session, create / setData /
getData, sequential (one request in flight) and pipelined (kazoo's *_async, a window in flight).
kazoo itself costs more CPU per request than either server, so these are kazoo-user figures.

    .venv/bin/python bench/kazoo_load.py [--ops 2000] [--window 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
