"""`python -m bench`: zkfsd side by side with Apache ZooKeeper, the mount side by side with tmpfs.

Everything runs one after the other on this machine, on 127.0.0.1, in temp directories; every
process is stopped by its PID and every mount unmounted. Prints one table, writes JSON
(bench/results/latest.json by default) and, with --markdown, a section for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import mount_bench, scale, server_bench
from bench.report import Results
from bench.server_bench import Settings
from bench.servers import ENSEMBLE, STANDALONE, Unavailable, machine_info

PARTS = ("standalone", "ensemble", "kazoo", "mount", "scale")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

FULL = Settings()
QUICK = Settings(runs=1, duration=0.15, max_ops=2000, keys=5, tick_ms=500,
                 ephemeral_timeout_ms=1000, kazoo_ops=20, strace_duration=0.2,
                 scale_nodes=2000, scale_dir=1000, mount_files=10, mount_dir_entries=50,
                 mount_iterations=50, kazoo_session_ops=20, kazoo_cap=1.0, event_writes=20,
                 cached_iterations=500)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unavailable(res: Results, shape_cls, reason: str, parts: set[str]) -> None:
    side = "a" if shape_cls.impl == "zkfsd" else "b"
    kind = shape_cls.kind
    metrics = []
    if kind in parts:
        metrics += [(f"throughput (lean driver), {kind}", "all cells", "ops/s"),
                    (f"failure detection, {kind}", "kill -9 of ephemeral holder -> NodeDeleted",
                     "s")]
    if kind == "ensemble" and kind in parts:
        metrics.append((f"failure detection, {kind}",
                        "kill -9 of the leader -> next successful write", "s"))
    if "kazoo" in parts:
        for op in ("create", "setData", "getData"):
            metrics.append((server_bench.KAZOO_SECTION, server_bench.kazoo_metric(op, kind),
                            "ops/s"))
    for sec, metric, unit in metrics:
        res.add(sec, metric, unit, side, None, f"{shape_cls.impl} {kind} not available: {reason}")


def run_servers(parts: set[str], st: Settings, res: Results, tmp: Path) -> None:
    shapes = []
    if "standalone" in parts or "kazoo" in parts:
        shapes += [STANDALONE["zkfsd"], STANDALONE["zookeeper"]]
    if "ensemble" in parts or "kazoo" in parts:
        shapes += [ENSEMBLE["zkfsd"], ENSEMBLE["zookeeper"]]
    for cls in shapes:
        shape = cls(tmp / f"{cls.impl}-{cls.kind}", st.tick_ms)
        _log(f"== {shape.label}")
        t0 = time.monotonic()
        try:
            shape.start()
        except (Unavailable, RuntimeError) as e:
            shape.stop()
            _log(f"  not available: {e}")
            _unavailable(res, cls, str(e).splitlines()[0][:200], parts)
            continue
        try:
            if cls.kind in parts:  # "standalone" / "ensemble" (kazoo alone starts both too)
                server_bench.throughput(shape, st, res, _log)
                server_bench.fsync_strace(shape, st, res, _log)
                server_bench.ephemeral_expiry(shape, st, res, _log)
            if cls.kind == "ensemble" and "ensemble" in parts:
                server_bench.leader_failover(shape, st, res, _log)
            if cls.kind == "standalone" and "kazoo" in parts:
                server_bench.kazoo_figures(shape, st, res, _log)
            if "kazoo" in parts:
                server_bench.kazoo_sessions(shape, st, res, _log)
        except Exception as e:  # noqa: BLE001 - one broken shape must not lose the others
            _log(traceback.format_exc())
            res.add("errors", shape.label, "", "a" if cls.impl == "zkfsd" else "b",
                    None, f"{type(e).__name__}: {e}")
        finally:
            shape.stop()
        _log(f"  {shape.label}: {time.monotonic() - t0:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny counts, one run: checks the harness end to end in about a minute "
                         "(the figures mean nothing)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds of load per throughput cell")
    ap.add_argument("--only", action="append", choices=PARTS,
                    help="run only this part (repeatable); default all")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    ap.add_argument("--markdown", nargs="?", const="-", metavar="FILE",
                    help="also write a Markdown section for BENCHMARKS.md (to FILE, or stdout)")
    args = ap.parse_args(argv)

    st = Settings(**vars(QUICK if args.quick else FULL))
    if args.runs:
        st.runs = args.runs
    if args.duration:
        st.duration = args.duration
    parts = set(args.only or PARTS)
    res = Results()
    res.meta.update(mode="quick" if args.quick else "full", runs=st.runs, settings=vars(st),
                    machine=machine_info())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zkfs-bench-") as tmp:
        tmp = Path(tmp)
        run_servers(parts, st, res, tmp)
        if "mount" in parts:
            _log("== mount vs tmpfs")
            try:
                mount_bench.mount_vs_tmpfs(st, res, st.tick_ms, _log)
            except Exception as e:  # noqa: BLE001
                _log(traceback.format_exc())
                res.note(mount_bench.SECTION, "error", "", f"{type(e).__name__}: {e}",
                         subject="mount", reference="tmpfs")
        if "scale" in parts:
            for impl in ("zkfsd", "zookeeper"):
                _log(f"== scale {impl}")
                try:
                    scale.scale(impl, tmp / "scale", st, res, _log)
                except Exception as e:  # noqa: BLE001
                    _log(traceback.format_exc())
                    res.add(scale.SECTION, "error", "", "a" if impl == "zkfsd" else "b", None,
                            f"{impl}: {type(e).__name__}: {e}")
    res.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print(res.table())
    res.write_json(args.json)
    _log(f"wrote {args.json} ({res.meta['elapsed_s']}s)")
    if args.markdown:
        md = res.markdown()
        if args.markdown == "-":
            print(md)
        else:
            Path(args.markdown).write_text(md)
            _log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
