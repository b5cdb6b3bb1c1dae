"""zkfsd's client-serving path in-process: a real ZkServer (log, fsync, tree, watches) in this
test's trio run, its connections served over trio memory streams instead of sockets.

Fast and deterministic tests of clients.py, wire.py and backend.py: request order, batching
(one send per turn), watch-before-reply, four-letter words, bad frames. The subprocess tests
(test_server.py, test_differential.py) cover the same path through real sockets.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
import trio.testing

from zkfs import jute
from zkfs.constants import Err, EventType, OpCode, Xid
from zkfsd.config import ServerConfig
from zkfsd.server import ZkServer

OPEN_ACL = [jute.ACL(31, jute.Id("world", "anyone"))]


class CountingStream(trio.abc.Stream):
    """The server's end of a memory stream pair, counting the server's send_all calls."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends = 0

    async def send_all(self, data: Any) -> None:
        self.sends += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RawClient:
    """The test's end: jute frames out, replies (header, body) in, op codes by xid."""

    def __init__(self, stream: trio.abc.Stream, server_end: CountingStream) -> None:
        self.stream = stream
        self.server_end = server_end
        self.frames = jute.FrameDecoder()
        self.payloads: deque[bytes] = deque()
        self.ops: dict[int, int] = {}
        self.xid = 0
        self.session_id = 0

    async def connect(self) -> None:
        await self.stream.send_all(jute.encode_connect_request(
            jute.ConnectRequest(0, 0, 10000, 0, bytes(16), False)))
        response = jute.decode_connect_response(await self.next_payload())
        assert response.session_id and response.timeout == 4000  # maxSessionTimeout: 20 ticks
        self.session_id = response.session_id

    def request(self, op: int, record: jute.Record | None) -> bytes:
        self.xid += 1
        self.ops[self.xid] = op
        return jute.encode_request(self.xid, op, record)

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    async def next_payload(self) -> bytes:
        with trio.fail_after(10):
            while not self.payloads:
                data = await self.stream.receive_some(65536)
                assert data, "server closed the connection"
                self.frames.feed(data)
                self.payloads.extend(self.frames.frames())
            return self.payloads.popleft()

    async def reply(self) -> tuple[jute.ReplyHeader, Any]:
        payload = await self.next_payload()
        xid = int.from_bytes(payload[:4], "big", signed=True)
        return jute.decode_reply(payload, self.ops.get(xid))

    async def closed(self) -> bytes:
        """Everything the server still sends before it closes the connection."""
        data = b""
        with trio.fail_after(10):
            while chunk := await self.stream.receive_some(65536):
                data += chunk
        return data


def run_with_server(tmp_path: Path,
                    scenario: Callable[[ZkServer, Callable[[], Awaitable[RawClient]]],
                                       Awaitable[None]]) -> None:
    async def main() -> None:
        config = ServerConfig(data_dir=str(tmp_path / "data"), client_port=0,
                              client_address="127.0.0.1", tick_time=200)
        (tmp_path / "data").mkdir()
        server = ZkServer(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)

            async def open_client(socketpair: bool = False) -> RawClient:
                """Memory streams (unbounded), or a socketpair: real kernel buffers that fill
                up when one side does not read."""
                if socketpair:
                    a, b = trio.socket.socketpair()
                    client_end, server_end = trio.SocketStream(a), trio.SocketStream(b)
                else:
                    client_end, server_end = trio.testing.memory_stream_pair()
                counting = CountingStream(server_end)
                nursery.start_soon(server.serve_connection, counting, ("127.0.0.1", 40000))
                return RawClient(client_end, counting)

            await scenario(server, open_client)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pipelined_writes_and_reads_answered_in_order_with_zxids(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        c = await open_client()
        await c.connect()
        frames = [c.request(OpCode.CREATE, jute.CreateRequest("/a", b"0", OPEN_ACL, 0))]
        for i in range(1, 21):
            frames.append(c.request(OpCode.SET_DATA, jute.SetDataRequest("/a", str(i).encode(), -1)))
            frames.append(c.request(OpCode.GET_DATA, jute.GetDataRequest("/a", False)))
        await c.send(*frames)
        last_write_zxid = 0
        for xid in range(1, len(frames) + 1):
            header, body = await c.reply()
            assert header.xid == xid and header.err == 0
            if c.ops[xid] != OpCode.GET_DATA:
                # A write's header carries its own zxid.
                assert header.zxid > last_write_zxid
                last_write_zxid = header.zxid
            else:
                # A read sees exactly the state the write before it left, as in ZooKeeper,
                # although the writes behind it were proposed at once and applied in the same
                # batch; its header carries that write's zxid.
                assert header.zxid == last_write_zxid
                assert body.stat.version == xid // 2
                assert body.data == str(xid // 2).encode()
        assert last_write_zxid == server.tree.last_zxid

    run_with_server(tmp_path, scenario)


def test_a_turn_of_reads_is_answered_with_one_send(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        c = await open_client()
        await c.connect()
        await c.send(c.request(OpCode.CREATE, jute.CreateRequest("/r", b"x", OPEN_ACL, 0)))
        await c.reply()
        sends = c.server_end.sends
        await c.send(*[c.request(OpCode.GET_DATA, jute.GetDataRequest("/r", False))
                       for _ in range(32)])
        for _ in range(32):
            header, body = await c.reply()
            assert header.err == 0 and body.data == b"x"
        assert c.server_end.sends - sends == 1

    run_with_server(tmp_path, scenario)


def test_watch_event_comes_before_the_reply_that_follows_the_change(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        writer, watcher = await open_client(), await open_client()
        await writer.connect()
        await watcher.connect()
        await writer.send(writer.request(OpCode.CREATE, jute.CreateRequest("/w", b"1", OPEN_ACL, 0)))
        await writer.reply()
        await watcher.send(watcher.request(OpCode.GET_DATA, jute.GetDataRequest("/w", True)))
        await watcher.reply()
        # The watcher's own write and a read behind it, pipelined: the event first.
        await watcher.send(
            watcher.request(OpCode.SET_DATA, jute.SetDataRequest("/w", b"2", -1)),
            watcher.request(OpCode.GET_DATA, jute.GetDataRequest("/w", False)))
        event_header, event = await watcher.reply()
        assert event_header.xid == Xid.NOTIFICATION
        assert (event.type, event.path) == (EventType.NODE_DATA_CHANGED, "/w")
        set_header, _ = await watcher.reply()
        get_header, body = await watcher.reply()
        assert (set_header.xid, get_header.xid) == (2, 3) and body.data == b"2"
        # One-shot: another change sends nothing to the watcher.
        await writer.send(writer.request(OpCode.SET_DATA, jute.SetDataRequest("/w", b"3", -1)))
        await writer.reply()
        await watcher.send(watcher.request(OpCode.EXISTS, jute.ExistsRequest("/w", False)))
        header, _ = await watcher.reply()
        assert header.xid == 4

    run_with_server(tmp_path, scenario)


def test_errors_keep_their_place_and_unknown_ops_are_answered(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        c = await open_client()
        await c.connect()
        unknown = jute.frame((100).to_bytes(4, "big") + (999).to_bytes(4, "big"))
        await c.send(
            c.request(OpCode.CREATE, jute.CreateRequest("/e", b"", OPEN_ACL, 0)),
            c.request(OpCode.CREATE, jute.CreateRequest("/e", b"", OPEN_ACL, 0)),
            c.request(OpCode.GET_DATA, jute.GetDataRequest("/nope", False)),
            unknown,
            c.request(OpCode.DELETE, jute.DeleteRequest("/e", 5)))
        got = [(h.xid, h.err) for h, _ in [await c.reply() for _ in range(5)]]
        assert got == [(1, Err.OK), (2, Err.NODE_EXISTS), (3, Err.NO_NODE),
                       (100, Err.UNIMPLEMENTED), (4, Err.BAD_VERSION)]

    run_with_server(tmp_path, scenario)


def test_four_letter_word_and_bad_frame_close_the_connection(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        probe = await open_client()
        await probe.send(b"ruok")
        assert await probe.closed() == b"imok"
        c = await open_client()
        await c.connect()
        await c.send((1 << 30).to_bytes(4, "big"))  # a length far over the limit
        assert await c.closed() == b""
        srvr = await open_client()
        await srvr.send(b"srvr")
        text = (await srvr.closed()).decode()
        assert "Mode: standalone" in text and f"Zxid: 0x{server.tree.last_zxid:x}" in text

    run_with_server(tmp_path, scenario)


def test_close_session_is_the_last_reply(tmp_path: Path) -> None:
    async def scenario(server: ZkServer, open_client: Any) -> None:
        c = await open_client()
        await c.connect()
        await c.send(c.request(OpCode.CREATE, jute.CreateRequest("/eph", b"", OPEN_ACL, 1)),
                     c.request(OpCode.CLOSE_SESSION, None),
                     c.request(OpCode.GET_DATA, jute.GetDataRequest("/eph", False)))
        assert (await c.reply())[0].err == 0
        assert (await c.reply())[0].xid == 2
        assert await c.closed() == b""
        assert server.tree.get("/eph") is None and c.session_id not in server.tree.sessions

    run_with_server(tmp_path, scenario)


def test_client_that_sends_everything_before_reading_is_served(tmp_path: Path) -> None:
    """Megabytes of pipelined requests, sent before the client reads a single reply: the
    server keeps reading while its replies wait to be sent (kernel buffers full both ways)."""
    async def scenario(server: ZkServer, open_client: Any) -> None:
        c = await open_client(socketpair=True)
        await c.connect()
        await c.send(c.request(OpCode.CREATE, jute.CreateRequest("/p", b"y" * 200, OPEN_ACL, 0)))
        await c.reply()
        count = 20000  # ~0.7 MB of requests, ~5 MB of replies
        with trio.fail_after(20):
            # In small pieces, each read by the server on its own: every turn's replies are
            # small, and they pile up in the kernel until the client reads.
            for _ in range(count // 200):
                await c.send(*[c.request(OpCode.GET_DATA, jute.GetDataRequest("/p", False))
                               for _ in range(200)])
                await trio.sleep(0)
        for n in range(count):
            header, body = await c.reply()
            assert header.xid == n + 2 and body.data == b"y" * 200

    run_with_server(tmp_path, scenario)
