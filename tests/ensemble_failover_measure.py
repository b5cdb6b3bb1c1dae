#!/usr/bin/env python3
"""Measure: time from kill -9 of the leader to the next acknowledged write, for a 3-member zkfsd
ensemble and a 3-member Apache ZooKeeper ensemble (Debian's package, QuorumPeerMain).

Not part of the test run (pytest does not collect it: no test_ prefix). Run by hand:

    .venv/bin/python tests/ensemble_failover_measure.py [--rounds 5] [--zk-ticks 200,2000]

Per round: a kazoo client with every member in its connect string writes one znode in a loop;
the leader (mntr zk_server_state) is killed with SIGKILL by PID; we time until a setData is
acknowledged again (each attempt bounded by 2 s; kazoo reconnects with a 50 ms retry delay);
then the killed member is restarted and we wait for the ensemble to re-form. The process shapes
(ports, zoo.cfg, myid, java command line) come from bench/servers.py, as the benchmarks use them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.servers import Unavailable, ZkfsdEnsemble, ZooKeeperEnsemble  # noqa: E402
from kazoo.client import KazooClient  # noqa: E402
from kazoo.retry import KazooRetry  # noqa: E402


def _write_until_acked(client: KazooClient, path: str, value: bytes, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        try:
            client.set_async(path, value).get(timeout=2.0)
            return time.monotonic() - start
        except Exception:  # noqa: BLE001 - any failure: the outcome is unknown, try again
            time.sleep(0.01)
    raise RuntimeError(f"no write acknowledged within {within}s")


def measure(shape_cls, tick_ms: int, rounds: int, session_timeout: float) -> list[float]:
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        shape = shape_cls(Path(tmp), tick_ms=tick_ms)
        with shape:
            client = KazooClient(
                hosts=shape.hosts, timeout=session_timeout,
                connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1, max_jitter=0.0,
                                            max_delay=0.05))
            client.start(timeout=30)
            try:
                client.ensure_path("/failover")
                for r in range(rounds):
                    _write_until_acked(client, "/failover", b"warm", within=30)
                    leader = shape.leader()
                    if leader is None:
                        raise RuntimeError("no leader found")
                    killed_at = time.monotonic()
                    shape.kill_member(leader)
                    took = _write_until_acked(client, "/failover", f"r{r}".encode(), within=60)
                    times.append(took)
                    print(f"  {shape.impl} tick {tick_ms} ms round {r + 1}: "
                          f"{took * 1000:.0f} ms", flush=True)
                    del killed_at
                    shape.restart_member(leader)
            finally:
                client.stop()
                client.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--zkfsd-tick", type=int, default=200)
    ap.add_argument("--zk-ticks", default="200,2000",
                    help="comma-separated tickTime values for Apache ZooKeeper")
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    runs = [("zkfsd", ZkfsdEnsemble, args.zkfsd_tick)]
    runs += [("zookeeper", ZooKeeperEnsemble, int(t)) for t in args.zk_ticks.split(",") if t]
    for name, cls, tick in runs:
        # Session timeout: the largest the server grants (20 ticks), so no session expires.
        try:
            results[f"{name} tick={tick}ms"] = measure(cls, tick, args.rounds, 20 * tick / 1000)
        except Unavailable as e:
            print(f"{name}: unavailable: {e}")
    print("\nkill -9 of the leader -> next acknowledged write (3 members, loopback):")
    for label, ts in results.items():
        ms = sorted(t * 1000 for t in ts)
        print(f"  {label:24s} median {statistics.median(ms):6.0f} ms   "
              f"min {ms[0]:6.0f}   max {ms[-1]:6.0f}   (n={len(ms)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
