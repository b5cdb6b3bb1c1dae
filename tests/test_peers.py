"""The member transport: delivery between members, and nobody else gets in."""
from __future__ import annotations

import socket

import pytest
import trio

from helpers import free_port
from zkfsd.peers import PeerTransport


def _addresses(n: int) -> dict[int, tuple[str, int]]:
    return {i: ("127.0.0.1", free_port()) for i in range(1, n + 1)}


async def _wait_for(predicate, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.timeout(30)
def test_members_with_the_secret_talk_and_an_outsider_cannot() -> None:
    addresses = _addresses(2)
    received: list[tuple[int, object]] = []
    lost: list[int] = []

    async def main() -> None:
        member1 = PeerTransport(1, addresses, lambda frm, obj: received.append((frm, obj)),
                                b"s3cret", on_lost=lost.append)
        member2 = PeerTransport(2, addresses, lambda frm, obj: None, b"s3cret")
        # Same id and address book as member 2, but the wrong secret.
        rogue_book = dict(addresses)
        rogue_book[2] = ("127.0.0.1", free_port())
        rogue = PeerTransport(2, rogue_book, lambda frm, obj: None, b"guess")
        async with trio.open_nursery() as nursery:
            await nursery.start(member1.run)
            await nursery.start(rogue.run)
            await trio.sleep(0.3)
            assert rogue.send(1, ["from", "rogue"])
            await trio.sleep(0.5)
            assert received == [] and 2 not in member1.connected_in
            # Garbage on the peer port is dropped without harming the listener.
            with socket.create_connection(addresses[1]) as s:
                s.sendall(b"\xff" * 64)
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            await nursery.start(member1.run)
            await nursery.start(member2.run)
            await _wait_for(lambda: 1 in member2.connected_out)
            assert member2.send(1, ["hello", 1])
            await _wait_for(lambda: bool(received))
            assert received == [(2, ["hello", 1])]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert 2 in lost  # member 2's connection ended when it stopped


@pytest.mark.timeout(30)
def test_a_member_without_any_secret_is_refused_by_one_that_has_it() -> None:
    addresses = _addresses(2)
    received: list[object] = []

    async def main() -> None:
        member1 = PeerTransport(1, addresses, lambda frm, obj: received.append(obj), b"k")
        member2 = PeerTransport(2, addresses, lambda frm, obj: None, None)
        async with trio.open_nursery() as nursery:
            await nursery.start(member1.run)
            await nursery.start(member2.run)
            member2.send(1, "x")
            await trio.sleep(0.8)
            assert received == [] and not member1.connected_in
            nursery.cancel_scope.cancel()

    trio.run(main)
