"""Server side of ZooKeeper's client protocol as a sans-IO state machine, h11-style: bytes in,
events out; replies in, bytes out.

The codec of the records themselves lives in `zkfs.jute` (shared with the client); this module
owns what a *server connection* is: the first frame is a ConnectRequest, or the connection is a
four-letter-word probe; after that every frame is a request. Replies, watch events and the
connect response are appended to one outgoing buffer that the connection sends with one
syscall per turn (`data_to_send`). No sockets here, so the whole surface that faces untrusted
bytes is testable without a network.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from zkfs import jute
from zkfs.constants import MAX_FRAME, Err, KeeperState, Xid

# Every four-letter word ZooKeeper 3.8 defines; the config's whitelist is checked against it too.
FOUR_LETTER_WORDS = frozenset({"ruok", "srvr", "stat", "mntr", "conf", "cons", "wchs", "dump",
                               "envi", "isro", "wchc", "wchp", "crst", "srst", "dirs", "gtmk",
                               "stmk", "hash"})


class State(enum.Enum):
    AWAIT_CONNECT = "await_connect"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class FourLetterWord:
    command: str


@dataclass(frozen=True)
class Connect:
    request: Any  # jute.ConnectRequest


class Request(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per request, and a frozen
    # dataclass's __init__ costs several times more.
    xid: int
    op: int
    record: Any


@dataclass(frozen=True)
class BadRequest:
    """A request whose header was readable but whose body was not (or whose op is unknown).

    `fatal` says the stream can no longer be trusted and the connection must be closed after the
    error reply; an unknown op code with a well-formed frame is answered and the connection lives.
    """
    xid: int
    op: int
    err: Err
    fatal: bool


@dataclass(frozen=True)
class ProtocolError:
    """The peer sent bytes that are not ZooKeeper's protocol: close without a reply."""
    reason: str


class NeedData:
    pass


NEED_DATA = NeedData()
Event = Union[FourLetterWord, Connect, Request, BadRequest, ProtocolError, NeedData]


class ServerConnection:
    """One client connection's protocol state: received bytes → events, replies → bytes."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.state = State.AWAIT_CONNECT
        self._frames = jute.FrameDecoder(max_frame)
        self._payloads: deque[bytes] = deque()  # complete frames not yet turned into events
        self._out = bytearray()
        self._frames_out = 0  # replies and events encoded since take_frame_count

    # -- receiving ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._frames.feed(data)

    def events(self) -> list[Event]:
        """Every event the received bytes hold (none after one that closes the connection)."""
        out: list[Event] = []
        while self.state is not State.CLOSED:
            event = self.next_event()
            if event is NEED_DATA:
                break
            out.append(event)
        return out

    def next_event(self) -> Event:
        if self.state is State.CLOSED:
            return NEED_DATA
        if self.state is State.CONNECTED:
            if not self._payloads:
                try:
                    self._payloads.extend(self._frames.frames())
                except jute.JuteError as exc:
                    return self._fail(f"bad frame: {exc}")
                if not self._payloads:
                    return NEED_DATA
            return self._request(self._payloads.popleft())
        if self.state is State.AWAIT_CONNECT:
            raw = self._frames.peek_raw4()
            if raw is None:
                return NEED_DATA
            # A four-letter word arrives instead of a length prefix; ZooKeeper tells them apart
            # the same way, before any length check.
            try:
                word = raw.decode("ascii")
            except UnicodeDecodeError:
                word = ""
            if word in FOUR_LETTER_WORDS:
                self.state = State.CLOSED
                return FourLetterWord(word)
        try:
            payload = self._frames.next_frame()
        except jute.JuteError as exc:
            return self._fail(f"bad frame: {exc}")
        if payload is None:
            return NEED_DATA
        try:
            request = jute.decode_connect_request(payload)
        except jute.JuteError as exc:
            return self._fail(f"bad connect request: {exc}")
        self.state = State.CONNECTED
        return Connect(request)

    def _request(self, payload: bytes) -> Event:
        try:
            header, record = jute.decode_request(payload)
        except jute.UnknownOpCode as exc:
            return BadRequest(exc.xid, exc.op, Err.UNIMPLEMENTED, fatal=False)
        except jute.JuteError as exc:
            if len(payload) < 8:
                return self._fail(f"request too short for a header: {exc}")
            xid = int.from_bytes(payload[0:4], "big", signed=True)
            op = int.from_bytes(payload[4:8], "big", signed=True)
            self.state = State.CLOSED
            self._payloads.clear()
            return BadRequest(xid, op, Err.MARSHALLING_ERROR, fatal=True)
        return Request(header.xid, header.type, record)

    def _fail(self, reason: str) -> ProtocolError:
        self.state = State.CLOSED
        self._payloads.clear()
        return ProtocolError(reason)

    # -- sending ------------------------------------------------------------------------------
    def send_reply(self, xid: int, zxid: int, err: int, body: jute.Record | None = None) -> None:
        """A reply (the body goes out only with err 0, as ZooKeeper's ReplyHeader rules)."""
        jute.append_reply(self._out, xid, zxid, err, body)
        self._frames_out += 1

    def send_event(self, event_type: int, path: str,
                   state: int = KeeperState.SYNC_CONNECTED) -> None:
        """A watch notification (xid -1)."""
        jute.append_reply(self._out, Xid.NOTIFICATION, -1, 0,
                          jute.WatcherEvent(int(event_type), int(state), path))
        self._frames_out += 1

    def send_connect_response(self, response: jute.ConnectResponse) -> None:
        self._out += jute.encode_connect_response(response)

    def send_text(self, text: str) -> None:
        """A four-letter word's answer: plain text, no framing."""
        self._out += text.encode()

    @property
    def outgoing(self) -> int:
        """Bytes encoded but not yet taken by data_to_send."""
        return len(self._out)

    def take_frame_count(self) -> int:
        """Replies and events encoded since the last call (the server's packet counters)."""
        count, self._frames_out = self._frames_out, 0
        return count

    def data_to_send(self) -> bytearray:
        """Everything encoded since the last call, for one send (handed over, not copied:
        replies of 1 MiB each add up)."""
        data, self._out = self._out, bytearray()
        return data
