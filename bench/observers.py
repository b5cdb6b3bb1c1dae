"""Read throughput of a 3-voter zkfsd ensemble with 0, 1 and 2 observers added.

    .venv/bin/python -m bench.observers [--duration 1.5] [--sessions 4] [--window 32]

For each shape: start the ensemble (tests/ensemble_helpers.Ensemble, observers marked
`:observer`), then run one getData cell of bench/driver.py against every member at the same
time (each member gets `--sessions` sessions with `--window` requests in flight) and add the
members' ops/s. Prints one Markdown table row per shape. Everything on 127.0.0.1, processes
stopped by PID; on a machine with few cores the members compete for the same CPUs, so the
figure shows what the observers cost or add there, not what separate hosts would give.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ensemble_helpers import Ensemble  # noqa: E402

from bench.driver import Cell, CellResult, run_cell  # noqa: E402


def measure(observers: int, duration: float, sessions: int, window: int) -> tuple[float, int]:
    """(aggregate getData ops/s over all members, errors)."""
    with tempfile.TemporaryDirectory(prefix="zkfs-bench-obs-") as tmp:
        size = 3 + observers
        ens = Ensemble(Path(tmp), size, observers=range(4, size + 1), log_level="WARNING")
        try:
            ens.start()
            ens.wait_stable(timeout=30)
            with ens.client() as k:
                for sid in ens.ids:
                    k.ensure_path(f"/bench-obs/m{sid}")
            results: dict[int, CellResult] = {}

            def one(sid: int) -> None:
                cell = Cell("getData", sessions, window, duration, 10**9, f"/bench-obs/m{sid}")
                results[sid] = run_cell(("127.0.0.1", ens.client_ports[sid]), cell, procs=1)[0]

            threads = [threading.Thread(target=one, args=(sid,)) for sid in ens.ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=duration + 180)
            failures = [r.failure for r in results.values() if r.failure]
            if failures or len(results) != size:
                raise RuntimeError(f"cell failed: {failures or 'a member did not finish'}")
            return (sum(r.throughput for r in results.values()),
                    sum(r.errors for r in results.values()))
        finally:
            ens.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--sessions", type=int, default=4, help="per member")
    ap.add_argument("--window", type=int, default=32, help="requests in flight per session")
    args = ap.parse_args()
    print("| observers | members serving reads | getData ops/s (all members) | errors |")
    print("| --- | --- | --- | --- |")
    for observers in (0, 1, 2):
        try:
            ops, errors = measure(observers, args.duration, args.sessions, args.window)
        except RuntimeError as exc:
            # A driver worker occasionally dies on a loaded machine: one more try, said so.
            print(f"(retrying {observers} observers after: {exc})", file=sys.stderr)
            ops, errors = measure(observers, args.duration, args.sessions, args.window)
        print(f"| {observers} | {3 + observers} | {ops:,.0f} | {errors} |", flush=True)


if __name__ == "__main__":
    main()
