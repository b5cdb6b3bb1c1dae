"""The link between a member and its client workers (workers.py, worker.py): its messages as
typed records and their codec, sans-IO in the manner of h11 (bytes in, messages out; no
socket, no trio).

Member to worker: `Hello` (first, once: configuration, logging, client port, the member's
status and tree), `Entries` (applied log entries, in apply order, consecutive ones batched),
`Opened`, `Synced`, `Failed` (answers to the worker's requests), `Drop` (close the connection
holding a session), `Gone` (a session the member no longer knows), `Status` (the member's
state, on change and every half tick) and `NewTree` (the member installed a snapshot).
Worker to member: `Forward` (writes, batched, each a transaction carrying the worker's
origin), `Touch` (sessions used since the last report, and the worker's connection count),
`Open` (a session request), `Sync` and `Closed` (a connection holding a session ended).

A frame is a 4-byte big-endian length and a msgpack array [tag, fields...], the tag a small
integer per message class. `LinkDecoder` takes bytes in any chunks and returns whole messages;
every field is checked there, once, so the two ends dispatch on the record's class and never
see a malformed message: anything else (a bad length, garbage, an unknown tag, a field of the
wrong type, a message for the other direction) raises `LinkError`. Both ends are the same
zkfsd, so a `LinkError` is a bug on the other end: the link ends and the member starts the
worker afresh. The configuration travels pickled (a ServerConfig with its nested dataclasses),
which is fine only because the socket pair is private to the two processes.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import msgpack

from zkfs import jute

from zkfsd import txns
from zkfsd.config import ServerConfig
from zkfsd.consensus import Entry

__all__ = [
    "MAX_LINK_FRAME", "TO_MEMBER", "TO_WORKER", "Closed", "Drop", "Entries", "Failed",
    "Forward", "Gone", "Hello", "LinkDecoder", "LinkError", "LinkMessage", "MemberStatus",
    "NewTree", "Open", "Opened", "Status", "Sync", "Synced", "ToMember", "ToWorker", "Touch",
    "decode", "encode",
]

# The member's tree travels in one frame (the length prefix is a signed 32-bit int, as in
# jute's framing, whose decoder this reuses).
MAX_LINK_FRAME = (1 << 31) - 1
_LEN = struct.Struct(">I")
_I32 = 1 << 31
_I64 = 1 << 63
_U64 = 1 << 64


class LinkError(ValueError):
    """Bytes that are not a message of the link (or not one for this end)."""


# -- field checks (what msgpack gives back: int, bool, str, bytes, list, None) ------------------

def _int(v: Any, what: str, bound: int = _I64) -> int:
    # type() rather than isinstance: msgpack's booleans are not integers here.
    if type(v) is not int or not -bound <= v < bound:
        raise LinkError(f"{what}: expected an integer, got {v!r:.40}")
    return v


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < _U64:
        raise LinkError(f"{what}: expected an unsigned integer, got {v!r:.40}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise LinkError(f"{what}: expected a boolean, got {v!r:.40}")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise LinkError(f"{what}: expected a string, got {v!r:.40}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise LinkError(f"{what}: expected bytes, got {v!r:.40}")
    return v


def _list(v: Any, what: str, length: int | None = None) -> list[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        shape = "an array" if length is None else f"an array of {length}"
        raise LinkError(f"{what}: expected {shape}, got {v!r:.40}")
    return v


# -- the records ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What a worker knows of its member's state (for serving decisions and the 4lw)."""
    serving: bool
    read_only: bool
    mode: str
    standalone: bool
    leader_id: int
    epoch: int
    peers: tuple[tuple[int, str], ...]

    def to_wire(self) -> list[Any]:
        return [self.serving, self.read_only, self.mode, self.standalone, self.leader_id,
                self.epoch, [list(p) for p in self.peers]]

    @classmethod
    def from_wire(cls, obj: Any) -> MemberStatus:
        serving, read_only, mode, standalone, leader_id, epoch, peers = _list(obj, "status", 7)
        return cls(_bool(serving, "status.serving"), _bool(read_only, "status.read_only"),
                   _str(mode, "status.mode"), _bool(standalone, "status.standalone"),
                   _uint(leader_id, "status.leader_id"), _uint(epoch, "status.epoch"),
                   tuple((_uint(sid, "status.peer"), _str(state, "status.peer state"))
                         for sid, state in (_list(p, "status.peer", 2)
                                            for p in _list(peers, "status.peers"))))


class _Message:
    """A link message: `TAG` names its class on the wire, `_fields` gives what follows the
    tag, `_parse` builds the record from that (checking every field)."""

    __slots__ = ()
    TAG: ClassVar[int]
    ARITY: ClassVar[int]  # fields after the tag

    def _fields(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def _parse(cls, f: list[Any]) -> Any:
        raise NotImplementedError


# Member to worker.

@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """The first message: everything a worker needs to start serving."""
    config: ServerConfig
    log_level: str
    log_file: str | None
    port: int
    member_id: int
    status: MemberStatus
    snapshot: bytes  # the member's tree (DataTree.snapshot())
    TAG: ClassVar[int] = 1
    ARITY: ClassVar[int] = 7

    def _fields(self) -> list[Any]:
        return [pickle.dumps(self.config), self.log_level, self.log_file, self.port,
                self.member_id, self.status.to_wire(), self.snapshot]

    @classmethod
    def _parse(cls, f: list[Any]) -> Hello:
        blob, level, log_file, port, member_id, status, snapshot = f
        try:
            config = pickle.loads(_bytes(blob, "hello.config"))
        except LinkError:
            raise
        except Exception as exc:  # pickle raises many types on garbage
            raise LinkError(f"hello.config: not a pickled configuration ({exc})") from None
        if not isinstance(config, ServerConfig):
            raise LinkError(f"hello.config: a {type(config).__name__}, not a ServerConfig")
        if log_file is not None:
            _str(log_file, "hello.log_file")
        port = _int(port, "hello.port")
        if not 0 < port < 65536:
            raise LinkError(f"hello.port: {port} is not a port")
        return cls(config, _str(level, "hello.log_level"), log_file, port,
                   _uint(member_id, "hello.member_id"), MemberStatus.from_wire(status),
                   _bytes(snapshot, "hello.snapshot"))


@dataclass(frozen=True, slots=True)
class Entries(_Message):
    """Entries the member applied, in order; `data` b"" is a no-op entry (it moves the
    zxid only)."""
    entries: tuple[Entry, ...]
    TAG: ClassVar[int] = 2
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [[[e.term, e.index, e.data] for e in self.entries]]

    @classmethod
    def _parse(cls, f: list[Any]) -> Entries:
        # Every write crosses here on every worker: the checks are inline, not calls.
        out = []
        for e in _list(f[0], "entries"):
            if type(e) is not list or len(e) != 3:
                raise LinkError(f"entry: expected [term, index, data], got {e!r:.40}")
            term, index, data = e
            if (type(term) is not int or type(index) is not int or type(data) is not bytes
                    or not 0 <= term < _U64 or not 0 <= index < _U64):
                raise LinkError(f"entry: expected [term, index, data], got {e!r:.40}")
            out.append(Entry(index, term, data))
        return cls(tuple(out))


@dataclass(frozen=True, slots=True)
class Opened(_Message):
    """The answer to `Open`: the member's ConnectResponse (None: no session, the client is
    to try again) and what the connection is to do with it."""
    token: int
    response: jute.ConnectResponse | None
    read_only: bool
    close: bool
    TAG: ClassVar[int] = 3
    ARITY: ClassVar[int] = 4

    def _fields(self) -> list[Any]:
        r = self.response
        return [self.token,
                None if r is None else
                [r.protocol_version, r.timeout, r.session_id, r.passwd, r.read_only],
                self.read_only, self.close]

    @classmethod
    def _parse(cls, f: list[Any]) -> Opened:
        token, r, read_only, close = f
        response = None
        if r is not None:
            version, timeout, session_id, passwd, ro = _list(r, "opened.response", 5)
            if passwd is not None:
                _bytes(passwd, "opened.passwd")
            response = jute.ConnectResponse(
                _int(version, "opened.protocol_version", _I32),
                _int(timeout, "opened.timeout", _I32),
                _int(session_id, "opened.session_id"), passwd, _bool(ro, "opened.read_only"))
        return cls(_uint(token, "opened.token"), response, _bool(read_only, "opened.read_only"),
                   _bool(close, "opened.close"))


@dataclass(frozen=True, slots=True)
class Synced(_Message):
    """The answer to `Sync`: True once the member applied what the leader had committed."""
    request: int
    ok: bool
    TAG: ClassVar[int] = 4
    ARITY: ClassVar[int] = 2

    def _fields(self) -> list[Any]:
        return [self.request, self.ok]

    @classmethod
    def _parse(cls, f: list[Any]) -> Synced:
        return cls(_uint(f[0], "synced.request"), _bool(f[1], "synced.ok"))


@dataclass(frozen=True, slots=True)
class Failed(_Message):
    """Forwarded writes (by origin sequence) that could not be proposed."""
    seqs: tuple[int, ...]
    TAG: ClassVar[int] = 5
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [list(self.seqs)]

    @classmethod
    def _parse(cls, f: list[Any]) -> Failed:
        return cls(tuple(_uint(s, "failed.seq") for s in _list(f[0], "failed")))


@dataclass(frozen=True, slots=True)
class Drop(_Message):
    """Close the connection `token` (its session moved elsewhere, or expired)."""
    token: int
    reason: str
    TAG: ClassVar[int] = 6
    ARITY: ClassVar[int] = 2

    def _fields(self) -> list[Any]:
        return [self.token, self.reason]

    @classmethod
    def _parse(cls, f: list[Any]) -> Drop:
        return cls(_uint(f[0], "drop.token"), _str(f[1], "drop.reason"))


@dataclass(frozen=True, slots=True)
class Gone(_Message):
    """A session the worker touched is no longer live on the member."""
    session_id: int
    TAG: ClassVar[int] = 7
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [self.session_id]

    @classmethod
    def _parse(cls, f: list[Any]) -> Gone:
        return cls(_int(f[0], "gone.session_id"))


@dataclass(frozen=True, slots=True)
class Status(_Message):
    status: MemberStatus
    TAG: ClassVar[int] = 8
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [self.status.to_wire()]

    @classmethod
    def _parse(cls, f: list[Any]) -> Status:
        return cls(MemberStatus.from_wire(f[0]))


@dataclass(frozen=True, slots=True)
class NewTree(_Message):
    """The member installed a snapshot from its leader: this is its tree now."""
    snapshot: bytes
    TAG: ClassVar[int] = 9
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [self.snapshot]

    @classmethod
    def _parse(cls, f: list[Any]) -> NewTree:
        return cls(_bytes(f[0], "new tree"))


# Worker to member.

@dataclass(frozen=True, slots=True)
class Forward(_Message):
    """Writes of the worker's clients, each carrying the worker's origin."""
    txns: tuple[txns.Txn, ...]
    TAG: ClassVar[int] = 10
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [[txns.encode(t) for t in self.txns]]

    @classmethod
    def _parse(cls, f: list[Any]) -> Forward:
        out = []
        decode_txn = txns.decode  # it refuses anything but msgpack bytes
        try:
            for data in _list(f[0], "forward"):
                txn = decode_txn(data)
                if txn.origin is None:
                    raise LinkError("forward: a write without its origin")
                out.append(txn)
        except txns.TxnDecodeError as exc:
            raise LinkError(f"forward: {exc}") from None
        return cls(tuple(out))


@dataclass(frozen=True, slots=True)
class Touch(_Message):
    """Sessions the worker's clients used since the last report; its connection count."""
    sessions: tuple[int, ...]
    connections: int
    TAG: ClassVar[int] = 11
    ARITY: ClassVar[int] = 2

    def _fields(self) -> list[Any]:
        return [list(self.sessions), self.connections]

    @classmethod
    def _parse(cls, f: list[Any]) -> Touch:
        return cls(tuple(_int(s, "touch.session") for s in _list(f[0], "touch")),
                   _uint(f[1], "touch.connections"))


@dataclass(frozen=True, slots=True)
class Open(_Message):
    """A connection `token` asks for a session (the member runs it as for its own)."""
    token: int
    peer: tuple[str, int]
    auth: tuple[tuple[str, str], ...]
    request: jute.ConnectRequest
    TAG: ClassVar[int] = 12
    ARITY: ClassVar[int] = 5

    def _fields(self) -> list[Any]:
        r = self.request
        return [self.token, self.peer[0], self.peer[1], [list(a) for a in self.auth],
                [r.protocol_version, r.last_zxid_seen, r.timeout, r.session_id, r.passwd,
                 r.read_only]]

    @classmethod
    def _parse(cls, f: list[Any]) -> Open:
        token, host, port, auth, r = f
        version, last_zxid, timeout, session_id, passwd, ro = _list(r, "open.request", 6)
        if passwd is not None:
            _bytes(passwd, "open.passwd")
        request = jute.ConnectRequest(
            _int(version, "open.protocol_version", _I32), _int(last_zxid, "open.last_zxid"),
            _int(timeout, "open.timeout", _I32), _int(session_id, "open.session_id"), passwd,
            _bool(ro, "open.read_only"))
        if type(port) is not int or not 0 <= port < 65536:
            raise LinkError(f"open.port: {port!r:.40} is not a port")
        return cls(_uint(token, "open.token"), (_str(host, "open.host"), port),
                   tuple((_str(a[0], "open.auth scheme"), _str(a[1], "open.auth id"))
                         for a in (_list(a, "open.auth", 2) for a in _list(auth, "open.auth"))),
                   request)


@dataclass(frozen=True, slots=True)
class Sync(_Message):
    """Answer `request` once everything the leader committed is applied."""
    request: int
    path: str
    TAG: ClassVar[int] = 13
    ARITY: ClassVar[int] = 2

    def _fields(self) -> list[Any]:
        return [self.request, self.path]

    @classmethod
    def _parse(cls, f: list[Any]) -> Sync:
        return cls(_uint(f[0], "sync.request"), _str(f[1], "sync.path"))


@dataclass(frozen=True, slots=True)
class Closed(_Message):
    """The connection `token` (which held a session) ended."""
    token: int
    TAG: ClassVar[int] = 14
    ARITY: ClassVar[int] = 1

    def _fields(self) -> list[Any]:
        return [self.token]

    @classmethod
    def _parse(cls, f: list[Any]) -> Closed:
        return cls(_uint(f[0], "closed.token"))


ToWorker = Union[Hello, Entries, Opened, Synced, Failed, Drop, Gone, Status, NewTree]
ToMember = Union[Forward, Touch, Open, Sync, Closed]
LinkMessage = Union[ToWorker, ToMember]

TO_WORKER: tuple[type[_Message], ...] = (Hello, Entries, Opened, Synced, Failed, Drop, Gone,
                                          Status, NewTree)
TO_MEMBER: tuple[type[_Message], ...] = (Forward, Touch, Open, Sync, Closed)


# -- the codec --------------------------------------------------------------------------------

def encode(message: LinkMessage) -> bytes:
    """One frame: the length prefix and the message."""
    payload = msgpack.packb([message.TAG, *message._fields()], use_bin_type=True)
    if len(payload) > MAX_LINK_FRAME:
        raise LinkError(f"a {type(message).__name__} of {len(payload)} bytes is over the "
                        f"link's frame limit ({MAX_LINK_FRAME})")
    return _LEN.pack(len(payload)) + payload


def decode(payload: bytes, accept: tuple[type[_Message], ...] = TO_WORKER + TO_MEMBER
           ) -> LinkMessage:
    """The message in one frame's payload (without its length prefix)."""
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise LinkError(f"not msgpack ({type(exc).__name__}: {exc})") from None
    if type(obj) is not list or not obj:
        raise LinkError(f"expected [tag, fields...], got {obj!r:.40}")
    cls = _BY_TAG.get(obj[0]) if type(obj[0]) is int else None
    if cls is None or cls not in accept:
        raise LinkError(f"unexpected message tag {obj[0]!r:.40}")
    if len(obj) != cls.ARITY + 1:
        raise LinkError(f"{cls.__name__}: expected {cls.ARITY} fields, got {len(obj) - 1}")
    try:
        message: LinkMessage = cls._parse(obj[1:])
    except LinkError as exc:
        raise LinkError(f"{cls.__name__}: {exc}") from None
    except (TypeError, ValueError) as exc:  # unpacking a field of the wrong shape
        raise LinkError(f"{cls.__name__}: malformed ({exc})") from None
    return message


_BY_TAG: dict[int, type[_Message]] = {cls.TAG: cls for cls in TO_WORKER + TO_MEMBER}
assert len(_BY_TAG) == len(TO_WORKER) + len(TO_MEMBER), "two message classes share a tag"


class LinkDecoder:
    """Messages from a byte stream fed in chunks of any size. `accept` is what this end may
    receive (TO_WORKER on a worker, TO_MEMBER on the member)."""

    def __init__(self, accept: tuple[type[_Message], ...],
                 max_frame: int = MAX_LINK_FRAME) -> None:
        self._accept = accept
        self._frames = jute.FrameDecoder(max_frame)

    def feed(self, data: bytes) -> list[LinkMessage]:
        """Every message completed by `data`, in order (none if it completes none)."""
        self._frames.feed(data)
        try:
            payloads = self._frames.frames()
        except jute.FrameTooLarge as exc:
            raise LinkError(str(exc)) from None
        accept = self._accept
        return [decode(p, accept) for p in payloads]

    def end(self) -> None:
        """The stream ended: LinkError if it ended inside a frame."""
        if self._frames.buffered:
            raise LinkError(f"the link ended inside a frame ({self._frames.buffered} bytes "
                            f"buffered)")
