"""Server side of ZooKeeper's client protocol as a sans-IO state machine (bytes in, events out).

The codec of the records themselves lives in `zkfs.jute` (shared with the client); this module
owns what a *server connection* is: the first frame is a ConnectRequest, or the connection is a
four-letter-word probe; after that every frame is a request. No sockets here, so the whole
surface that faces untrusted bytes is testable without a network.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

from zkfs import jute
from zkfs.constants import MAX_FRAME, Err

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


@dataclass(frozen=True)
class Request:
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
    """Turns received bytes into protocol events for one client connection."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.state = State.AWAIT_CONNECT
        self._frames = jute.FrameDecoder(max_frame)

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._frames.feed(data)

    def next_event(self) -> Event:
        if self.state is State.CLOSED:
            return NEED_DATA
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
        if self.state is State.AWAIT_CONNECT:
            try:
                request = jute.decode_connect_request(payload)
            except jute.JuteError as exc:
                return self._fail(f"bad connect request: {exc}")
            self.state = State.CONNECTED
            return Connect(request)
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
            return BadRequest(xid, op, Err.MARSHALLING_ERROR, fatal=True)
        return Request(header.xid, header.type, record)

    def _fail(self, reason: str) -> ProtocolError:
        self.state = State.CLOSED
        return ProtocolError(reason)
