"""zkfs.watching: re-armed one-shot watches turned into typed change records, the part the
mount's change follower and `zkfs watch` share (servers without addWatch)."""
from __future__ import annotations

import os

import trio

from zkfs.client import WatchedEvent, open_client
from zkfs.constants import EventType
from zkfs.watching import OneShotWatches


async def _next(receive: trio.MemoryReceiveChannel[WatchedEvent]) -> WatchedEvent:
    with trio.fail_after(10):
        return await receive.receive()


def test_children_diffed_and_watches_rearmed(target) -> None:  # type: ignore[no-untyped-def]
    base = f"/watching-{os.getpid()}"

    async def main() -> None:
        send, receive = trio.open_memory_channel[WatchedEvent](100)
        async with open_client(target.hosts) as zk, open_client(target.hosts) as other:
            await other.create(base, None)
            await other.create(base + "/a", b"1")
            watches = OneShotWatches(zk, send.send_nowait)
            stat = await watches.arm(base)
            assert stat is not None and stat.num_children == 1
            assert watches.children_of(base) == {"a"}
            assert await watches.arm(base + "/none") is None

            # One event per change; each is turned into what it stands for, and re-armed.
            await other.create(base + "/b", b"")
            event = await _next(receive)
            assert (event.type, event.path) == (EventType.NODE_CHILDREN_CHANGED, base)
            diff = await watches.children_changed(base)
            assert (diff.added, diff.removed, diff.gone) == ([base + "/b"], [], False)

            await other.delete(base + "/a")
            event = await _next(receive)
            assert (event.type, event.path) == (EventType.NODE_CHILDREN_CHANGED, base)
            diff = await watches.children_changed(base)
            assert (diff.added, diff.removed) == ([], [base + "/a"])

            await other.set(base, b"x")
            event = await _next(receive)
            assert (event.type, event.path) == (EventType.NODE_DATA_CHANGED, base)
            await watches.rearm(base)
            await other.set(base, b"y")
            event = await _next(receive)
            assert (event.type, event.path) == (EventType.NODE_DATA_CHANGED, base)
            await watches.rearm(base)

            await other.create(base + "/none", b"")
            event = await _next(receive)
            assert (event.type, event.path) == (EventType.NODE_CREATED, base + "/none")

            # The directory goes: its children watch fires too, and its diff says so.
            for child in ("b", "none"):
                await other.delete(f"{base}/{child}")
            await other.delete(base)
            seen = set()
            while (EventType.NODE_DELETED, base) not in seen:
                event = await _next(receive)
                seen.add((event.type, event.path))
            diff = await watches.children_changed(base)
            assert diff.gone and diff.added == []
            watches.forget(base, subtree=True)
            assert watches.children_of(base) == set()

    trio.run(main)
