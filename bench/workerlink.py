"""The client-worker link's CPU per write, in one process, without sockets: what the member
and a worker spend on each write besides the client path and the log.

    .venv/bin/python -m bench.workerlink              # best of 5 rounds of 200 batches of 32

  entries   the member encoding a batch of 32 applied setData entries (workerlink.Entries), a
            worker decoding the frame, decoding each transaction and applying it to its tree
  forward   a worker encoding 32 of its clients' setData writes (workerlink.Forward), the
            member decoding the frame (each transaction decoded and checked there)

CPU time (time.process_time), the best of the rounds, because other work on a shared machine
only ever adds to it.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from zkfsd import txns
from zkfsd.consensus import Entry, make_zxid
from zkfsd.tree import DataTree
from zkfsd.workerlink import TO_MEMBER, TO_WORKER, Entries, Forward, LinkDecoder, encode

OPEN_ACL = ((31, "world", "anyone"),)
BATCH = 32
KEYS = 50


def _tree() -> tuple[DataTree, int]:
    tree = DataTree()
    zxid = 1
    for path in ["/p", *(f"/p/k{k}" for k in range(KEYS))]:
        tree.apply(txns.Txn(txns.Create(1, path, b"", OPEN_ACL, 0, -1), 0), make_zxid(1, zxid))
        zxid += 1
    return tree, zxid


def _write(i: int, time_ms: int) -> txns.Txn:
    return txns.Txn(txns.SetData(f"/p/k{i % KEYS}", b"x" * 16, -1), 0x100 + i,
                    (("ip", "127.0.0.1"),), time_ms, txns.Origin(1, 5, i))


def entries_round(batches: int) -> float:
    tree, index = _tree()
    datas = [txns.encode(_write(i, 1_700_000_000_000)) for i in range(BATCH)]
    decoder = LinkDecoder(TO_WORKER)
    started = time.process_time()
    for _ in range(batches):
        frame = encode(Entries(tuple(Entry(index + i, 1, d) for i, d in enumerate(datas))))
        index += BATCH
        for message in decoder.feed(frame):
            assert isinstance(message, Entries)
            for entry in message.entries:
                tree.apply(txns.decode(entry.data), make_zxid(entry.term, entry.index))
    return time.process_time() - started


def forward_round(batches: int) -> float:
    writes = tuple(_write(i, 0) for i in range(BATCH))
    decoder = LinkDecoder(TO_MEMBER)
    started = time.process_time()
    for _ in range(batches):
        for message in decoder.feed(encode(Forward(writes))):
            assert isinstance(message, Forward) and len(message.txns) == BATCH
    return time.process_time() - started


def best(round_: Callable[[int], float], rounds: int, batches: int) -> float:
    round_(max(1, batches // 4))  # warm up
    return min(round_(batches) for _ in range(rounds)) / (batches * BATCH) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"entries: {best(entries_round, args.rounds, args.batches):.2f} µs per write "
          "(encode, decode, txn decode, apply)")
    print(f"forward: {best(forward_round, args.rounds, args.batches):.2f} µs per write "
          "(encode, decode with the txn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
