"""The write path, zkfsd against Apache ZooKeeper in one run: standalone servers (data on the
same disk, /tmp), the lean driver's create and setData cells, alternating between the two
servers round by round so both see the same machine load.

    .venv/bin/python -m bench.writes                        # 1x1 and 16x32, 3 rounds, 1.5 s cells
    .venv/bin/python -m bench.writes --rounds 5 --shapes 1x1
    .venv/bin/python -m bench.writes --ensemble             # 3-member ensembles, driven at member 1

Prints the median ops/s per cell and server, their ratio, and the 1x1 cells' p50 latency.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import driver
from bench.driver import Cell
from bench.servers import (Shape, ZkfsdEnsemble, ZkfsdStandalone, ZooKeeperEnsemble,
                           ZooKeeperStandalone)


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        s, w = part.lower().split("x")
        out.append((int(s), int(w)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="create,setData")
    ap.add_argument("--shapes", default="1x1,16x32", help="sessions x window, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--ensemble", action="store_true",
                    help="3-member ensembles (member 1 takes the load) instead of standalone")
    args = ap.parse_args()
    ops, shapes = args.ops.split(","), _shapes(args.shapes)
    with tempfile.TemporaryDirectory(prefix="bench-writes-", dir="/tmp") as tmp:
        zkfsd: Shape = (ZkfsdEnsemble if args.ensemble else ZkfsdStandalone)(Path(tmp), 2000)
        zk: Shape = (ZooKeeperEnsemble if args.ensemble else ZooKeeperStandalone)(Path(tmp), 2000)
        with zkfsd, zk:
            servers = [("zkfsd", zkfsd), ("zookeeper", zk)]
            results: dict[tuple[str, str, int, int], list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                for op in ops:
                    for s, w in shapes:
                        for name, shape in servers:
                            address = shape.addresses[0]
                            prefix = driver.made_path(
                                address, f"/w{r}{op}{s}x{w}-{int(time.time() * 1000)}")
                            cell = Cell(op, s, w, args.duration, 10**9, prefix)
                            res, _, _ = driver.run_cell(address, cell)
                            if res.failure:
                                print(f"{name} {op} {s}x{w}: {res.failure}")
                                continue
                            p50 = driver.percentile(res.latencies, 50) if res.latencies else 0.0
                            results.setdefault((name, op, s, w), []).append((res.throughput, p50))
    print(f"{'cell':18s} {'zkfsd ops/s':>12s} {'ZK ops/s':>10s} {'ratio':>6s}  "
          f"{'zkfsd p50 ms':>12s} {'ZK p50 ms':>10s}")
    for op in ops:
        for s, w in shapes:
            a = results.get(("zkfsd", op, s, w), [])
            b = results.get(("zookeeper", op, s, w), [])
            if not a or not b:
                continue
            ta = statistics.median(x[0] for x in a)
            tb = statistics.median(x[0] for x in b)
            la = statistics.median(x[1] for x in a) * 1000
            lb = statistics.median(x[1] for x in b) * 1000
            print(f"{op + f' {s}x{w}':18s} {ta:12,.0f} {tb:10,.0f} {ta / tb:5.2f}x  "
                  f"{la:12.3f} {lb:10.3f}")


if __name__ == "__main__":
    main()
