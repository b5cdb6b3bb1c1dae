"""zkfs.probing without a server: the kind rule and a Listing resolved chunk by chunk (the
mount tests list real directories; these cover what is hard to time there: replies lost with
the connection, and znodes that vanish between getChildren and their probes)."""
from __future__ import annotations

from typing import Any

import trio

from zkfs.client import Op
from zkfs.constants import OpCode
from zkfs.errors import ConnectionLossError, NoNodeError
from zkfs.inodes import Kind
from zkfs.jute import Stat
from zkfs.probing import Listing, Probe


def _stat(size: int, children: int = 0) -> Stat:
    return Stat(1, 1, 0, 0, 0, 0, 0, 0, size, children, 1)


#: name → data; None data: a directory (null data); missing: vanished after getChildren.
TREE: dict[str, bytes | None] = {}
for i in range(300):
    TREE[f"n{i:03}"] = None if i % 3 == 0 else (b"" if i % 3 == 1 else b"data")
NAMES = sorted(TREE) + ["vanished"]
PATHS = [f"/d/{n}" for n in NAMES]


class Server:
    """read_many over TREE, counting what it was asked."""

    def __init__(self) -> None:
        self.asked: list[OpCode] = []

    async def read_many(self, ops: list[Op]) -> list[Any]:
        out: list[Any] = []
        for op in ops:
            self.asked.append(op.code)
            name = op.path.rsplit("/", 1)[1]
            if name not in TREE:
                out.append(None if op.code is OpCode.EXISTS else NoNodeError(path=op.path))
                continue
            data = TREE[name]
            st = _stat(len(data or b""))
            out.append(st if op.code is OpCode.EXISTS else (data, st))
        return out


class Sent:
    """PendingReads answered from `Server`, or lost with the connection."""

    def __init__(self, server: Server, ops: list[Op], lost: bool) -> None:
        self.server, self.ops, self.lost = server, ops, lost

    async def results(self, start: int, stop: int) -> list[Any]:
        if self.lost:
            raise ConnectionLossError()
        return await Server().read_many(self.ops[start:stop])


def _kinds(listing: Listing) -> dict[str, Kind]:
    return {name: kind for name, _, kind, _ in listing.entries}


def test_listing_resolves_by_chunk_and_through_a_lost_connection() -> None:
    async def main() -> None:
        for lost in (False, True):
            server = Server()
            cached = {"/d/n001": Probe(_stat(0), Kind.FILE)}
            sent = [p for p in PATHS if p not in cached]
            reads = Sent(server, [Op.exists(p) for p in sent], lost)
            head = [(".", "/d", Kind.DIR, _stat(0, 300))]
            listing = Listing(head, NAMES, PATHS, cached, sent, reads,  # type: ignore[arg-type]
                              server.read_many, seq=0, chunk=128)
            entry = await listing.entry(1)
            assert entry is not None and entry[0] == "n000" and not listing.complete
            assert len(listing.entries) == 1 + 128  # one chunk resolved, not more
            assert await listing.entry(10_000) is None and listing.complete
            kinds = _kinds(listing)
            assert "vanished" not in kinds and len(kinds) == 301
            for name, data in TREE.items():
                assert kinds[name] is (Kind.DIR if data is None else Kind.FILE), name
            # Exists were asked again only when the replies were lost; gets only for the
            # empty childless ones not cached (n001 is).
            exists = server.asked.count(OpCode.EXISTS)
            assert exists == (len(sent) if lost else 0)
            assert server.asked.count(OpCode.GET_DATA) == 200 - 1
        # A directory gone before its listing: no entries.
        assert await Listing.empty().entry(0) is None
    trio.run(main)
