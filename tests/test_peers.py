"""The member transport: delivery between members, and nobody else gets in."""
from __future__ import annotations

import socket
import time

import pytest
import trio

from helpers import free_port, rss_kib
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


# -- an unauthenticated peer connection is bounded (real zkfsd member) ---------------------------


def _lone_member(tmp_path):  # type: ignore[no-untyped-def]
    from ensemble_helpers import Ensemble

    secret = tmp_path / "secret"
    secret.write_text("peer-secret\n")
    ens = Ensemble(tmp_path / "ens", 3, extra_cfg=[f"peerSecretFile={secret}"])
    ens.start_member(1)  # alone: it listens on its peer port and waits for the others
    return ens


@pytest.mark.timeout(60)
def test_an_oversized_frame_before_authentication_is_refused_without_buffering(tmp_path) -> None:
    ens = _lone_member(tmp_path)
    try:
        pid = ens.members[1].pid
        assert pid is not None
        before = rss_kib(pid)
        with socket.create_connection(("127.0.0.1", ens.peer_ports[1]), timeout=10) as s:
            s.recv(4096)  # the challenge
            s.sendall((300 << 20).to_bytes(4, "big"))  # "a 300 MB frame follows"
            sent = 0
            closed = False
            try:
                while sent < 64 << 20:
                    s.sendall(b"\0" * (1 << 20))
                    sent += 1 << 20
            except OSError:
                closed = True
            if not closed:
                s.settimeout(10)
                assert s.recv(1) == b"", "the member kept reading an oversized frame"
        assert rss_kib(pid) - before < 20 * 1024, "the member buffered an unauthenticated frame"
        assert "over the limit" in ens.members[1].log_text()
    finally:
        ens.stop_all()


@pytest.mark.timeout(60)
def test_endless_small_frames_before_authentication_end_at_the_handshake_deadline(tmp_path) -> None:
    ens = _lone_member(tmp_path)
    try:
        pid = ens.members[1].pid
        assert pid is not None
        before = rss_kib(pid)
        frame = (8).to_bytes(4, "big") + b"\xa4junk" + b"\0" * 3
        with socket.create_connection(("127.0.0.1", ens.peer_ports[1]), timeout=15) as s:
            s.recv(4096)
            start = time.monotonic()
            ended = False
            while time.monotonic() - start < 12:
                try:
                    s.sendall(frame * 512)
                except OSError:
                    ended = True
                    break
                time.sleep(0.01)
        assert ended, "the member kept an unauthenticated connection open past its deadline"
        assert rss_kib(pid) - before < 20 * 1024
    finally:
        ens.stop_all()


@pytest.mark.timeout(30)
def test_a_dialled_connection_the_member_closed_is_reported_and_its_queue_dropped() -> None:
    """The other side closing the connection this member dialled (here: member 1 drops it on a
    frame it refuses) is noticed without writing into it, reported by on_link_down, and what
    was queued for it before the report never arrives later; the link then comes back."""
    addresses = _addresses(2)
    received: list[object] = []
    down: list[int] = []

    def on_message(frm: int, obj: object) -> None:
        if obj == ["close", "me"]:
            raise ValueError("refused")  # member 1 closes its side of the connection
        received.append(obj)

    async def main() -> None:
        member1 = PeerTransport(1, addresses, on_message)
        member2 = PeerTransport(2, addresses, lambda frm, obj: None, on_link_down=down.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(member1.run)
            await nursery.start(member2.run)
            await _wait_for(lambda: 1 in member2.connected_out)
            assert member2.send(1, ["close", "me"])
            # Noticed with nothing more to send: nothing is written into the dead connection.
            await _wait_for(lambda: down == [1])
            assert 1 not in member2.connected_out
            await _wait_for(lambda: 1 in member2.connected_out)
            assert member2.send(1, ["after", 1])
            await _wait_for(lambda: bool(received))
            assert received == [["after", 1]]
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.timeout(30)
def test_direct_and_queued_sends_keep_their_order() -> None:
    """Frames for an idle link are written straight to its socket; a frame too big for the
    socket's buffer sends its rest through the link's task, and every frame sent after it
    (small ones that could have gone direct) must still arrive after it, in order."""
    addresses = _addresses(2)
    received: list[object] = []

    async def main() -> None:
        member1 = PeerTransport(1, addresses, lambda frm, obj: received.append(obj), b"k")
        member2 = PeerTransport(2, addresses, lambda frm, obj: None, b"k")
        async with trio.open_nursery() as nursery:
            await nursery.start(member1.run)
            await nursery.start(member2.run)
            await _wait_for(lambda: 1 in member2.connected_out)
            expected: list[object] = []
            for i in range(200):
                # Every 50th frame is 8 MiB: far more than a socket buffer takes at once.
                obj = [i, b"x" * (8 << 20 if i % 50 == 25 else 10)]
                assert member2.send(1, obj)
                expected.append(obj)
                if i % 10 == 0:
                    await trio.sleep(0)  # let the link's task run now and then
            await _wait_for(lambda: len(received) == len(expected), 20.0)
            assert [o[0] for o in received] == list(range(200))  # type: ignore[index]
            assert received == expected
            await _wait_for(member2.all_sent)
            nursery.cancel_scope.cancel()

    trio.run(main)
