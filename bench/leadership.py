"""Leadership under load, fsyncs per write and failover of a 3-member zkfsd ensemble (issue 12).

    .venv/bin/python -m bench.leadership [--tick 200] [--duration 3] [--failovers 3]
                                         [--ops create,setData,getData,mix90/10] [--zkfsd BIN]

Starts a 3-member ensemble (bench/servers.ZkfsdEnsemble: tickTime --tick, syncLimit 5), then
for each op runs one lean-driver cell (bench/driver.run_cell, 16 sessions x 32 requests in
flight, against member 1 as bench --only ensemble does) and reads every member's `mntr` before
and after: leader changes are the rise of the highest zk_epoch (the Raft term; every election
raises it, pre-votes do not), fsyncs per write the rise of zk_fsync_count per member divided by
the writes acknowledged. Then --failovers times: kill -9 of the leader, time until a write on
another member succeeds (bench/server_bench's method), restart. One Markdown table per part.
`--zkfsd` runs another build's console script (e.g. /work/main/.venv/bin/zkfsd) for a baseline.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import helpers  # noqa: E402

from bench.driver import Cell, Session, ensure_path, made_path, run_cell  # noqa: E402
from bench.server_bench import _write_until_ok  # noqa: E402
from bench.servers import ZkfsdEnsemble, mntr  # noqa: E402

WRITES = {"create": 1.0, "setData": 1.0, "getData": 0.0, "mix90/10": 0.1}


def _epochs(shape: ZkfsdEnsemble) -> list[int]:
    return [int(mntr(m.host, m.port).get("zk_epoch", "-1")) for m in shape.live_members()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tick", type=int, default=200, help="tickTime in ms")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of load per cell")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--ops", default="create,setData,getData,mix90/10")
    ap.add_argument("--zkfsd", help="zkfsd console script to run (default: this venv's)")
    ap.add_argument("--keep", help="directory for the members' data and logs (kept)")
    args = ap.parse_args()
    if args.zkfsd:
        helpers.ZKFSD_BIN = Path(args.zkfsd)
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory(prefix="zkfs-bench-lead-")) as tmp:
        shape = ZkfsdEnsemble(Path(tmp), args.tick)
        with shape:
            address = shape.addresses[0]
            with Session(*address) as s:
                ensure_path(s, "/bench")
            print(f"| op (s={args.sessions} w={args.window}, tickTime {args.tick} ms) | ops/s "
                  "| errors | leader changes | fsyncs per write per member |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for n, op in enumerate(args.ops.split(",")):
                prefix = made_path(address, f"/bench/lead{n}")
                before = _epochs(shape)
                cell = Cell(op, args.sessions, args.window, args.duration, 10**9, prefix)
                r, f0, f1 = run_cell(address, cell, 2, shape.fsync_count)
                after = _epochs(shape)
                changes = max(after) - max(before) if min(before + after) >= 0 else "?"
                writes = r.ops * WRITES[op]
                per_write = (f"{(f1 - f0) / len(shape.members) / writes:.3f}"
                             if writes and f0 is not None and f1 is not None else "-")
                note = f" ({r.failure})" if r.failure else ""
                print(f"| {op}{note} | {r.throughput:,.0f} | {r.errors} | {changes} "
                      f"| {per_write} |", flush=True)
            if args.failovers:
                print()
                print("| run | kill -9 of the leader -> next successful write (s) |")
                print("| --- | ---: |")
            for run in range(args.failovers):
                leader = shape.leader()
                if leader is None:
                    print(f"| {run + 1} | no leader |")
                    break
                others = [(m.host, m.port) for m in shape.live_members() if m is not leader]
                path = f"/bench/fo{run}"
                with Session(*others[0]) as s:
                    ensure_path(s, path)
                t0 = time.monotonic()
                shape.kill_member(leader)
                t1 = _write_until_ok(others, path, t0 + 60)
                print(f"| {run + 1} | {'none within 60' if t1 is None else f'{t1 - t0:.3f}'} |",
                      flush=True)
                shape.restart_member(leader)


if __name__ == "__main__":
    main()
