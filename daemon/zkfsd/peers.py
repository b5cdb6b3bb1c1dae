"""Member-to-member transport: msgpack frames over TCP between the `server.N` addresses.

Each member listens on its own peer port and dials every other member; a dialled connection only
carries messages *to* that member, an accepted one only messages *from* it, so there is no tie to
break between two members dialling each other. Messages may be lost (a full queue, a reconnect):
the consensus core retransmits. What is not retransmitted (a follower's forwarded writes) relies
on one promise instead: a message queued for a member either goes out on the dialled connection
that was up, or that connection's end is reported (`on_link_down`) after anything still queued
for it is dropped, so a message queued before the report can no longer arrive late.

Joining takes a challenge: the listener sends a random nonce, the dialler answers with its member
id and HMAC-SHA256(secret, nonce || id). With a shared secret configured, an outsider cannot join
or speak as a member; without one, any process that knows a member id can (loopback-only setups).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import struct
from typing import Any, Callable

import msgpack
import trio

log = logging.getLogger("zkfsd.peers")

MAX_PEER_FRAME = 512 << 20  # a snapshot of a large tree travels as one frame
# Until the other side has proved it knows the secret, it gets no more than this: the challenge
# and the hello are a few dozen bytes, and nobody unauthenticated may make us buffer more.
MAX_HANDSHAKE_FRAME = 4096
QUEUE_DEPTH = 4096
_LEN = struct.Struct(">I")
HANDSHAKE_TIMEOUT = 5.0


def _mac(secret: bytes, nonce: bytes, member_id: int) -> bytes:
    return hmac.new(secret, nonce + member_id.to_bytes(8, "big"), hashlib.sha256).digest()


class _FrameReader:
    """Frames from one peer connection. `limit` starts at the handshake bound and is raised
    only once the peer has authenticated."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.limit = MAX_HANDSHAKE_FRAME

    async def read(self) -> Any:
        """The next decoded frame, or None at end of stream."""
        while True:
            if len(self._buf) >= 4:
                (length,) = _LEN.unpack_from(self._buf)
                if length > self.limit:
                    raise ValueError(f"peer frame of {length} bytes is over the limit "
                                     f"({self.limit})")
                if len(self._buf) >= 4 + length:
                    payload = bytes(self._buf[4:4 + length])
                    del self._buf[:4 + length]
                    try:
                        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
                    except Exception as exc:  # msgpack raises several types on garbage
                        raise ValueError(f"undecodable peer frame: {exc}") from None
            # Never hold more than one frame's worth beyond the limit in the buffer.
            data = await self._stream.receive_some(min(1 << 20, self.limit + 4))
            if not data:
                return None
            self._buf += data
            if len(self._buf) > self.limit + 4 + (1 << 20):
                raise ValueError("peer sent more than its frame limit allows")


def _frame(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(payload)) + payload


class PeerTransport:
    def __init__(self, member_id: int, addresses: dict[int, tuple[str, int]],
                 on_message: Callable[[int, Any], None], secret: bytes | None = None,
                 on_lost: Callable[[int], None] | None = None,
                 tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
                 on_link_down: Callable[[int], None] | None = None) -> None:
        """`tls`: (server context, client context) to run every member link over TLS
        (sslQuorum); the shared-secret challenge still runs inside it. `on_link_down(member)`:
        the connection this member dialled to `member` ended; whatever was queued for it
        before may have been lost, and nothing queued before will still be sent."""
        self.member_id = member_id
        self.addresses = addresses
        self.on_message = on_message
        # Told when a member's connection to us ends: on one machine or a LAN that is how a
        # crashed member shows itself long before any timeout.
        self.on_lost = on_lost
        self.on_link_down = on_link_down
        self.secret = secret or b""
        self._tls = tls
        self._queues: dict[int, tuple[trio.MemorySendChannel[bytes],
                                      trio.MemoryReceiveChannel[bytes]]] = {
            peer: trio.open_memory_channel[bytes](QUEUE_DEPTH)
            for peer in addresses if peer != member_id}
        self.connected_out: set[int] = set()
        self.connected_in: set[int] = set()
        # An idle plain-TCP link to a member: its socket's descriptor, so that `send` writes a
        # frame at once instead of waking the link's task for it (one scheduling round less on
        # each hop of a write: the leader's append, the follower's acknowledgement, a forward).
        # A link is idle while nothing of it is queued or being sent by its task
        # (`_unsent[peer] == 0`), so a direct write never overtakes a queued frame.
        self._direct: dict[int, int] = {}
        self._unsent: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None

    def add_peer(self, peer: int, address: tuple[str, int]) -> None:
        """A reconfig named a member (or moved one): dial it, and accept it when it dials."""
        if peer == self.member_id or self.addresses.get(peer) == address:
            return
        self.addresses[peer] = address  # the dial loop reads it on its next attempt
        if peer not in self._queues:
            self._queues[peer] = trio.open_memory_channel[bytes](QUEUE_DEPTH)
            if self._nursery is not None:
                self._nursery.start_soon(self._dial_loop, peer)

    def send(self, to: int, obj: Any) -> bool:
        """Queue a message for a member; False if it was dropped (queue full or unknown)."""
        queue = self._queues.get(to)
        if queue is None:
            return False
        frame = _frame(obj)
        fd = self._direct.get(to)
        if fd is not None and not self._unsent.get(to):
            try:
                sent = os.write(fd, frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                # Nothing was written: the frame waits in the queue, as it did before direct
                # sends, while the link's task finds the broken link and reconnects.
                log.debug("direct send to member %d failed: %s", to, errno.errorcode.get(
                    exc.errno or 0, exc))
                self._direct.pop(to, None)
                sent = 0
            if sent == len(frame):
                return True
            # The rest (all of it if the socket's buffer is full) goes through the queue, and
            # no direct write follows until the link's task has sent it.
            frame = frame[sent:]
        try:
            queue[0].send_nowait(frame)
        except trio.WouldBlock:
            return False
        self._unsent[to] = self._unsent.get(to, 0) + 1
        return True

    def all_sent(self) -> bool:
        """Has every frame queued so far been handed to its socket (none waits for a task)?"""
        return not any(self._unsent.values())

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.addresses[self.member_id]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(functools.partial(trio.serve_tcp, self._accept, port, host=host))
            for peer in self._queues:
                nursery.start_soon(self._dial_loop, peer)
            log.info("peer transport listening on %s:%d", host, port)
            task_status.started()

    # -- outgoing ------------------------------------------------------------------------------
    async def _dial_loop(self, peer: int) -> None:
        delay = 0.05
        receive = self._queues[peer][1]
        while True:
            host, port = self.addresses[peer]
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                if self._tls is not None:
                    stream = trio.SSLStream(stream, self._tls[1], server_hostname=host)
                async with stream:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        reader = _FrameReader(stream)
                        challenge = await reader.read()
                        if not isinstance(challenge, dict) or not isinstance(
                                challenge.get("nonce"), bytes):
                            raise ValueError("bad challenge")
                        await stream.send_all(_frame({
                            "id": self.member_id,
                            "mac": _mac(self.secret, challenge["nonce"], self.member_id)}))
                    delay = 0.05
                    self.connected_out.add(peer)
                    log.info("connected to member %d at %s:%d", peer, host, port)
                    if isinstance(stream, trio.SocketStream):
                        self._direct[peer] = stream.socket.fileno()
                    try:
                        await self._carry(peer, stream, receive)
                    finally:
                        # Before the socket closes: its descriptor number may be reused.
                        self._direct.pop(peer, None)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError) as exc:
                if peer in self.connected_out:
                    log.info("lost connection to member %d: %s", peer, exc or type(exc).__name__)
            finally:
                if peer in self.connected_out:
                    self.connected_out.discard(peer)
                    self._link_down(peer, receive)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _carry(self, peer: int, stream: trio.abc.Stream,
                     receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """Send what is queued for the member over its connection until that breaks. The
        member never writes on a connection it accepted after the challenge, so anything
        read here (end of stream, an error) means it closed its side: stop at once rather
        than write more frames into a connection nobody reads (they would be lost)."""
        closed = False
        failure: BaseException | None = None

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal closed
            try:
                await stream.receive_some(1)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            closed = True
            scope.cancel()

        async with trio.open_nursery() as link:
            link.start_soon(watch, link.cancel_scope)
            try:
                async for first in receive:
                    batch = [first]
                    while len(batch) < 512:
                        try:
                            batch.append(receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    try:
                        await stream.send_all(b"".join(batch))
                    finally:
                        # Only now may `send` write directly again (if nothing was queued
                        # meanwhile); a failed batch is lost with the link.
                        self._unsent[peer] -= len(batch)
            except (OSError, trio.BrokenResourceError) as exc:
                failure = exc
            link.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if closed:
            raise trio.BrokenResourceError("closed by the member")

    def _link_down(self, peer: int, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """An established connection to `peer` ended: a batch that failed to send and frames
        written just before the other side's close are lost. Drop what is still queued (the
        core retransmits its part), then report, so the caller can fail whatever it sent
        that is not retransmitted: after the report, nothing queued before it can arrive."""
        while True:
            try:
                receive.receive_nowait()
            except trio.WouldBlock:
                break
        self._unsent[peer] = 0  # nothing of it is queued any more: direct sends may resume
        if self.on_link_down is not None:
            self.on_link_down(peer)

    # -- incoming ------------------------------------------------------------------------------
    async def _accept(self, tcp: trio.SocketStream) -> None:
        peer = None
        stream: trio.abc.Stream = tcp
        try:
            if self._tls is not None:
                stream = trio.SSLStream(tcp, self._tls[0], server_side=True)
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
            reader = _FrameReader(stream)
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                nonce = secrets.token_bytes(16)
                await stream.send_all(_frame({"nonce": nonce}))
                hello = await reader.read()
            if (not isinstance(hello, dict) or not isinstance(hello.get("id"), int)
                    or not isinstance(hello.get("mac"), bytes)):
                raise ValueError("malformed hello")
            claimed = hello["id"]
            if claimed == self.member_id or claimed not in self.addresses:
                raise ValueError(f"unknown member id {claimed}")
            if not hmac.compare_digest(hello["mac"], _mac(self.secret, nonce, claimed)):
                raise ValueError(f"bad credentials for member id {claimed}")
            peer = claimed
            reader.limit = MAX_PEER_FRAME
            self.connected_in.add(peer)
            while True:
                obj = await reader.read()
                if obj is None:
                    return
                self.on_message(peer, obj)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError) as exc:
            log.info("peer connection from %s refused or dropped: %s",
                     _peer_name(tcp), exc or type(exc).__name__)
        finally:
            if peer is not None:
                self.connected_in.discard(peer)
                if self.on_lost is not None:
                    self.on_lost(peer)
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
