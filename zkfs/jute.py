"""ZooKeeper's client wire protocol (jute), sans-IO, for both directions.

The server uses it to decode requests and encode replies, the client to encode requests and
decode replies. Nothing here touches a socket: bytes in, records out (and back).

Encoding: big-endian; int = 4 bytes signed, long = 8 bytes signed, bool = 1 byte,
buffer = int length + bytes (-1 = None), ustring = int length + UTF-8 (-1 = None),
vector = int count (-1 = null, decoded as an empty list) + items. Each frame is a 4-byte
big-endian length followed by the payload.

Records are dataclasses whose fields carry their jute kind in the field metadata (see the
``int32()``/``ustring()``/... helpers); ``Record.serialize``/``Record.deserialize`` walk that
schema, so field order is exactly the declaration order, which mirrors ``zookeeper.jute``.
A ustring that arrives as -1 decodes as None, hence the ``str | None`` annotations.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar, Union

from zkfs import constants
from zkfs.constants import OpCode

__all__ = [
    "JuteError", "UnknownOpCode", "FrameTooLarge", "Writer", "Reader", "Record",
    "record_schema",
    "ConnectRequest", "ConnectResponse", "RequestHeader", "ReplyHeader", "Stat", "Id", "ACL",
    "CreateRequest", "CreateTTLRequest", "DeleteRequest", "ExistsRequest", "GetDataRequest",
    "SetDataRequest", "GetACLRequest", "SetACLRequest", "GetChildrenRequest",
    "GetChildren2Request", "SyncRequest", "CheckVersionRequest", "GetAllChildrenNumberRequest",
    "GetEphemeralsRequest", "SetWatches", "SetWatches2", "AddWatchRequest",
    "RemoveWatchesRequest", "AuthPacket", "GetSASLRequest", "SetSASLResponse",
    "CloseSessionRequest", "PingRequest", "WhoAmIRequest",
    "CreateResponse", "Create2Response", "ExistsResponse", "GetDataResponse", "SetDataResponse",
    "GetACLResponse", "SetACLResponse", "GetChildrenResponse", "GetChildren2Response",
    "SyncResponse", "GetAllChildrenNumberResponse", "GetEphemeralsResponse", "ClientInfo",
    "WhoAmIResponse", "ErrorResponse", "WatcherEvent", "MultiHeader", "MultiRequest",
    "MultiResponse", "MULTI_REQUEST_RECORDS", "MULTI_RESPONSE_RECORDS",
    "REQUEST_RECORDS", "RESPONSE_RECORDS", "frame", "FrameDecoder",
    "encode_request", "decode_request", "encode_reply", "append_reply", "decode_reply",
    "encode_connect_request", "decode_connect_request",
    "encode_connect_response", "decode_connect_response",
]


# ---------------------------------------------------------------------------------------------
# Errors


class JuteError(ValueError):
    """Malformed or unencodable jute data."""


class UnknownOpCode(JuteError):
    """A well-formed header carrying an op code we have no record for.

    Carries the xid so a server can still answer that request (with Err.UNIMPLEMENTED).
    """

    def __init__(self, xid: int, op: int, message: str | None = None) -> None:
        super().__init__(message or f"unknown op code {op} (xid {xid})")
        self.xid = xid
        self.op = op


class FrameTooLarge(JuteError):
    """A frame length prefix is negative or exceeds the configured maximum."""


# ---------------------------------------------------------------------------------------------
# Primitives

_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1

T = TypeVar("T")


class Writer:
    """Accumulates jute-encoded bytes."""

    def __init__(self, buf: bytearray | None = None) -> None:
        """`buf`: append to this buffer (a connection's outgoing bytes) instead of a new one."""
        self._buf = bytearray() if buf is None else buf

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def write_raw(self, data: bytes) -> None:
        self._buf += data

    def write_int(self, value: int) -> None:
        # Checked here so callers get JuteError rather than struct.error.
        if not isinstance(value, int) or not _INT_MIN <= value <= _INT_MAX:
            raise JuteError(f"int out of range: {value!r}")
        self._buf += _INT.pack(value)

    def write_long(self, value: int) -> None:
        if not isinstance(value, int) or not _LONG_MIN <= value <= _LONG_MAX:
            raise JuteError(f"long out of range: {value!r}")
        self._buf += _LONG.pack(value)

    def write_bool(self, value: bool) -> None:
        self._buf.append(1 if value else 0)

    def write_buffer(self, value: bytes | None) -> None:
        if value is None:
            self.write_int(-1)
            return
        self.write_int(len(value))
        self._buf += value

    def write_ustring(self, value: str | None) -> None:
        # Unlike kazoo we encode "" as length 0, as ZooKeeper's Java archive does.
        if value is None:
            self.write_int(-1)
            return
        try:
            data = value.encode("utf-8")
        except (UnicodeEncodeError, AttributeError) as e:
            raise JuteError(f"cannot encode ustring {value!r}") from e
        self.write_int(len(data))
        self._buf += data

    def write_vector(self, items: list[T] | None, write_item: Callable[[T], None]) -> None:
        if items is None:
            self.write_int(-1)
            return
        self.write_int(len(items))
        for item in items:
            write_item(item)

    def write_record(self, record: Record) -> None:
        record.serialize(self)


class Reader:
    """Reads jute-encoded values from one payload; every failure is a JuteError."""

    def __init__(self, payload: bytes) -> None:
        self._data = bytes(payload)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def _take(self, n: int) -> bytes:
        if n > self.remaining:
            raise JuteError(f"truncated record: need {n} bytes at offset {self._pos}, "
                            f"have {self.remaining}")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def read_int(self) -> int:
        value: int = _INT.unpack(self._take(4))[0]
        return value

    def read_long(self) -> int:
        value: int = _LONG.unpack(self._take(8))[0]
        return value

    def read_bool(self) -> bool:
        # Java's DataInput.readBoolean treats any non-zero byte as true.
        return self._take(1)[0] != 0

    def _read_length(self, what: str) -> int | None:
        n = self.read_int()
        if n == -1:
            return None
        if n < 0:
            raise JuteError(f"negative {what} length {n}")
        if n > self.remaining:
            raise JuteError(f"{what} length {n} past end of record ({self.remaining} left)")
        return n

    def read_buffer(self) -> bytes | None:
        n = self._read_length("buffer")
        return None if n is None else self._take(n)

    def read_ustring(self) -> str | None:
        n = self._read_length("ustring")
        if n is None:
            return None
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JuteError(f"invalid UTF-8 in ustring: {e}") from e

    def read_vector(self, read_item: Callable[[], T]) -> list[T]:
        count = self.read_int()
        if count == -1:
            return []
        if count < 0:
            raise JuteError(f"negative vector count {count}")
        # Every item takes at least one byte; refusing early stops a forged count from
        # spinning through billions of iterations.
        if count > self.remaining:
            raise JuteError(f"vector count {count} past end of record")
        return [read_item() for _ in range(count)]

    def read_record(self, cls: type[R]) -> R:
        return cls.deserialize(self)


# ---------------------------------------------------------------------------------------------
# Record schema machinery

# A kind is "int" | "long" | "bool" | "buffer" | "ustring" | a Record subclass
# | ("vector", kind).
Kind = Union[str, type, tuple]
_META = "jute"


def int32() -> Any:
    return dataclasses.field(metadata={_META: "int"})


def int64() -> Any:
    return dataclasses.field(metadata={_META: "long"})


def boolean(default: bool | None = None) -> Any:
    if default is None:
        return dataclasses.field(metadata={_META: "bool"})
    return dataclasses.field(default=default, metadata={_META: "bool"})


def buffer() -> Any:
    return dataclasses.field(metadata={_META: "buffer"})


def ustring() -> Any:
    return dataclasses.field(metadata={_META: "ustring"})


def vector(item: Kind) -> Any:
    return dataclasses.field(metadata={_META: ("vector", item)})


def record(cls: type) -> Any:
    return dataclasses.field(metadata={_META: cls})


def _write_kind(w: Writer, kind: Kind, value: Any) -> None:
    if kind == "int":
        w.write_int(value)
    elif kind == "long":
        w.write_long(value)
    elif kind == "bool":
        w.write_bool(value)
    elif kind == "buffer":
        if value is not None and not isinstance(value, (bytes, bytearray, memoryview)):
            raise JuteError(f"buffer must be bytes or None, not {type(value).__name__}")
        w.write_buffer(bytes(value) if value is not None else None)
    elif kind == "ustring":
        w.write_ustring(value)
    elif isinstance(kind, tuple):
        inner = kind[1]
        w.write_vector(value, lambda item: _write_kind(w, inner, item))
    else:
        if not isinstance(value, kind):
            raise JuteError(f"expected {kind.__name__}, got {type(value).__name__}")
        value.serialize(w)


def _read_kind(r: Reader, kind: Kind) -> Any:
    if kind == "int":
        return r.read_int()
    if kind == "long":
        return r.read_long()
    if kind == "bool":
        return r.read_bool()
    if kind == "buffer":
        return r.read_buffer()
    if kind == "ustring":
        return r.read_ustring()
    if isinstance(kind, tuple):
        inner = kind[1]
        if inner == "ustring":
            return r.read_vector(lambda: _read_vector_string(r))
        return r.read_vector(lambda: _read_kind(r, inner))
    return kind.deserialize(r)


def _read_vector_string(r: Reader) -> str:
    # Null elements in a vector<ustring> (paths, children) are never legitimate; rejecting them
    # keeps list[str] honest instead of leaking None into path handling.
    s = r.read_ustring()
    if s is None:
        raise JuteError("null string inside vector")
    return s


R = TypeVar("R", bound="Record")


class Record:
    """Base of all jute records (subclasses are dataclasses).

    A subclass that does not write its own serialize/deserialize gets code compiled from its
    schema on first use (one struct.Struct per run of fixed-width fields, strings and buffers
    inline): the schema walk costs several times more per record, and records are the
    server's and the client's hot path."""

    _schema: ClassVar[tuple[tuple[str, Kind], ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Per class, so that a subclass of a compiled record compiles its own schema.
        if "serialize" not in cls.__dict__:
            cls.serialize = _lazy_serialize  # type: ignore[method-assign]
        if "deserialize" not in cls.__dict__:
            cls.deserialize = classmethod(_lazy_deserialize)  # type: ignore[assignment]

    @classmethod
    def schema(cls) -> tuple[tuple[str, Kind], ...]:
        # Computed lazily: @dataclass runs after __init_subclass__, so fields aren't known then.
        sch = cls.__dict__.get("_schema")
        if sch is None:
            sch = tuple((f.name, f.metadata[_META]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                        if _META in f.metadata)
            cls._schema = sch
        return sch

    def serialize(self, w: Writer) -> None:
        for name, kind in self.schema():
            _write_kind(w, kind, getattr(self, name))

    @classmethod
    def deserialize(cls: type[R], r: Reader) -> R:
        return cls(**{name: _read_kind(r, kind) for name, kind in cls.schema()})

    def to_bytes(self) -> bytes:
        """Serialized body (no frame, no header)."""
        w = Writer()
        self.serialize(w)
        return w.getvalue()

    @classmethod
    def from_bytes(cls: type[R], data: bytes) -> R:
        """Decode one record; trailing bytes are an error here (a standalone body)."""
        r = Reader(data)
        rec = cls.deserialize(r)
        if r.remaining:
            raise JuteError(f"{r.remaining} trailing bytes after {cls.__name__}")
        return rec


# ---------------------------------------------------------------------------------------------
# Compiled codecs (see Record)

_FIXED = {"int": ("i", 4), "long": ("q", 8), "bool": ("?", 1)}
_NULL = _INT.pack(-1)


def _lazy_serialize(self: Record, w: Writer) -> None:
    cls = type(self)
    fn = _compile_serialize(cls)
    cls.serialize = fn  # type: ignore[method-assign]
    fn(self, w)


def _lazy_deserialize(cls: type[R], r: Reader) -> R:
    fn = _compile_deserialize(cls)
    cls.deserialize = classmethod(fn)  # type: ignore[assignment]
    return fn(cls, r)


def _fixed_runs(schema: tuple[tuple[str, Kind], ...]) -> list[tuple[str, Any]]:
    """The schema with consecutive fixed-width fields merged: ("fixed", (fmt, size, names))
    or (name, kind)."""
    out: list[tuple[str, Any]] = []
    for name, kind in schema:
        if isinstance(kind, str) and kind in _FIXED:
            code, size = _FIXED[kind]
            if out and out[-1][0] == "\0fixed":
                fmt, total, names = out[-1][1]
                out[-1] = ("\0fixed", (fmt + code, total + size, names + [name]))
            else:
                out.append(("\0fixed", (">" + code, size, [name])))
        else:
            out.append((name, kind))
    return out


def _compile(source: str, env: dict[str, Any], name: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<jute {name}>", "exec"), env, namespace)  # noqa: S102 - own code
    return namespace[name]


def _compile_serialize(cls: type[Record]) -> Callable[[Record, Writer], None]:
    env: dict[str, Any] = {"JuteError": JuteError, "_INT": _INT, "_NULL": _NULL,
                           "struct_error": struct.error, "_write_kind": _write_kind,
                           "_BYTES": (bytes, bytearray, memoryview)}
    body = ["def serialize(self, w):", "    buf = w._buf"]
    for n, (name, kind) in enumerate(_fixed_runs(cls.schema())):
        if name == "\0fixed":
            fmt, _size, names = kind
            env[f"_S{n}"] = struct.Struct(fmt)
            args = ", ".join(f"self.{f}" for f in names)
            body += ["    try:",
                     f"        buf += _S{n}.pack({args})",
                     "    except struct_error as e:",
                     f"        raise JuteError('cannot encode {cls.__name__}: ' + str(e)) from None"]
        elif kind == "ustring":
            body += [f"    v = self.{name}",
                     "    if v is None:",
                     "        buf += _NULL",
                     "    else:",
                     "        try:",
                     "            v = v.encode('utf-8')",
                     "        except (UnicodeEncodeError, AttributeError) as e:",
                     "            raise JuteError(f'cannot encode ustring {v!r}') from e",
                     "        buf += _INT.pack(len(v))",
                     "        buf += v"]
        elif kind == "buffer":
            body += [f"    v = self.{name}",
                     "    if v is None:",
                     "        buf += _NULL",
                     "    elif isinstance(v, _BYTES):",
                     "        v = bytes(v)",
                     "        buf += _INT.pack(len(v))",
                     "        buf += v",
                     "    else:",
                     "        raise JuteError('buffer must be bytes or None, not '"
                     " + type(v).__name__)"]
        else:
            env[f"_K{n}"] = kind
            body.append(f"    _write_kind(w, _K{n}, self.{name})")
    return _compile("\n".join(body) + "\n", env, "serialize")  # type: ignore[no-any-return]


def _compile_deserialize(cls: type[R]) -> Callable[[type[R], Reader], R]:
    env: dict[str, Any] = {"JuteError": JuteError, "_INT": _INT, "_read_kind": _read_kind,
                           "_truncated": _truncated}
    schema = cls.schema()
    body = ["def deserialize(cls, r):", "    data = r._data", "    pos = r._pos",
            "    end = len(data)"]
    for n, (name, kind) in enumerate(_fixed_runs(schema)):
        if name == "\0fixed":
            fmt, size, names = kind
            env[f"_S{n}"] = struct.Struct(fmt)
            targets = "".join(f"f_{f}, " for f in names)
            body += [f"    if pos + {size} > end:",
                     f"        _truncated(r, pos, {size})",
                     f"    {targets}= _S{n}.unpack_from(data, pos)",
                     f"    pos += {size}"]
        elif kind in ("ustring", "buffer"):
            what = kind
            body += ["    if pos + 4 > end:",
                     "        _truncated(r, pos, 4)",
                     "    (n,) = _INT.unpack_from(data, pos)",
                     "    pos += 4",
                     "    if n == -1:",
                     f"        f_{name} = None",
                     "    else:",
                     "        if n < 0:",
                     f"            raise JuteError(f'negative {what} length {{n}}')",
                     "        if n > end - pos:",
                     f"            raise JuteError(f'{what} length {{n}} past end of record "
                     "({end - pos} left)')"]
            if kind == "ustring":
                body += ["        try:",
                         f"            f_{name} = data[pos:pos + n].decode('utf-8')",
                         "        except UnicodeDecodeError as e:",
                         "            raise JuteError(f'invalid UTF-8 in ustring: {e}') from e"]
            else:
                body.append(f"        f_{name} = data[pos:pos + n]")
            body.append("        pos += n")
        else:
            env[f"_K{n}"] = kind
            body += ["    r._pos = pos",
                     f"    f_{name} = _read_kind(r, _K{n})",
                     "    pos = r._pos"]
    body.append("    r._pos = pos")
    if len(dataclasses.fields(cls)) == len(schema):  # type: ignore[arg-type]
        body.append(f"    return cls({', '.join(f'f_{name}' for name, _ in schema)})")
    else:
        body.append(f"    return cls({', '.join(f'{name}=f_{name}' for name, _ in schema)})")
    return _compile("\n".join(body) + "\n", env, "deserialize")  # type: ignore[no-any-return]


def _truncated(r: Reader, pos: int, n: int) -> None:
    r._pos = pos
    r._take(n)  # raises the JuteError
    raise AssertionError("unreachable")


def record_schema(cls: type[Record]) -> tuple[tuple[str, Kind], ...]:
    """(field name, jute kind) pairs of a schema-driven record, in wire order."""
    return cls.schema()


# ---------------------------------------------------------------------------------------------
# Records (names and field order as zookeeper.jute)


@dataclass
class Id(Record):
    scheme: str | None = ustring()
    id: str | None = ustring()


@dataclass
class ACL(Record):
    perms: int = int32()
    id: Id = record(Id)


@dataclass
class Stat(Record):
    czxid: int = int64()
    mzxid: int = int64()
    ctime: int = int64()
    mtime: int = int64()
    version: int = int32()
    cversion: int = int32()
    aversion: int = int32()
    ephemeral_owner: int = int64()
    data_length: int = int32()
    num_children: int = int32()
    pzxid: int = int64()


@dataclass
class ConnectRequest(Record):
    protocol_version: int = int32()
    last_zxid_seen: int = int64()
    timeout: int = int32()
    session_id: int = int64()
    passwd: bytes | None = buffer()
    read_only: bool = boolean(default=False)

    @classmethod
    def deserialize(cls, r: Reader) -> ConnectRequest:
        protocol_version = r.read_int()
        last_zxid_seen = r.read_long()
        timeout = r.read_int()
        session_id = r.read_long()
        passwd = r.read_buffer()
        # Clients older than 3.4 omit the readOnly byte; ZooKeeper tolerates that too.
        read_only = r.read_bool() if r.remaining else False
        return cls(protocol_version, last_zxid_seen, timeout, session_id, passwd, read_only)


@dataclass
class ConnectResponse(Record):
    protocol_version: int = int32()
    timeout: int = int32()
    session_id: int = int64()
    passwd: bytes | None = buffer()
    read_only: bool = boolean(default=False)

    @classmethod
    def deserialize(cls, r: Reader) -> ConnectResponse:
        protocol_version = r.read_int()
        timeout = r.read_int()
        session_id = r.read_long()
        passwd = r.read_buffer()
        read_only = r.read_bool() if r.remaining else False
        return cls(protocol_version, timeout, session_id, passwd, read_only)


@dataclass
class RequestHeader(Record):
    xid: int = int32()
    type: int = int32()


@dataclass
class ReplyHeader(Record):
    xid: int = int32()
    zxid: int = int64()
    err: int = int32()


@dataclass
class MultiHeader(Record):
    type: int = int32()
    done: bool = boolean()
    err: int = int32()


@dataclass
class CreateRequest(Record):
    path: str | None = ustring()
    data: bytes | None = buffer()
    acl: list[ACL] = vector(ACL)
    flags: int = int32()


@dataclass
class CreateTTLRequest(Record):
    path: str | None = ustring()
    data: bytes | None = buffer()
    acl: list[ACL] = vector(ACL)
    flags: int = int32()
    ttl: int = int64()


@dataclass
class DeleteRequest(Record):
    path: str | None = ustring()
    version: int = int32()


@dataclass
class ExistsRequest(Record):
    path: str | None = ustring()
    watch: bool = boolean()


@dataclass
class GetDataRequest(Record):
    path: str | None = ustring()
    watch: bool = boolean()


@dataclass
class SetDataRequest(Record):
    path: str | None = ustring()
    data: bytes | None = buffer()
    version: int = int32()


@dataclass
class GetACLRequest(Record):
    path: str | None = ustring()


@dataclass
class SetACLRequest(Record):
    path: str | None = ustring()
    acl: list[ACL] = vector(ACL)
    version: int = int32()


@dataclass
class GetChildrenRequest(Record):
    path: str | None = ustring()
    watch: bool = boolean()


@dataclass
class GetChildren2Request(Record):
    path: str | None = ustring()
    watch: bool = boolean()


@dataclass
class SyncRequest(Record):
    path: str | None = ustring()


@dataclass
class CheckVersionRequest(Record):
    path: str | None = ustring()
    version: int = int32()


@dataclass
class GetAllChildrenNumberRequest(Record):
    path: str | None = ustring()


@dataclass
class ReconfigRequest(Record):
    """reconfig (16): incremental (joining/leaving) or non-incremental (new_members); each a
    comma-separated string or null. cur_config_id is -1 for "whatever is current"."""
    joining_servers: str | None = ustring()
    leaving_servers: str | None = ustring()
    new_members: str | None = ustring()
    cur_config_id: int = int64()


@dataclass
class GetEphemeralsRequest(Record):
    prefix_path: str | None = ustring()


@dataclass
class SetWatches(Record):
    relative_zxid: int = int64()
    data_watches: list[str] = vector("ustring")
    exist_watches: list[str] = vector("ustring")
    child_watches: list[str] = vector("ustring")


@dataclass
class SetWatches2(Record):
    relative_zxid: int = int64()
    data_watches: list[str] = vector("ustring")
    exist_watches: list[str] = vector("ustring")
    child_watches: list[str] = vector("ustring")
    persistent_watches: list[str] = vector("ustring")
    persistent_recursive_watches: list[str] = vector("ustring")


@dataclass
class AddWatchRequest(Record):
    path: str | None = ustring()
    mode: int = int32()


@dataclass
class RemoveWatchesRequest(Record):
    """Body of both checkWatches (17) and removeWatches (18)."""
    path: str | None = ustring()
    type: int = int32()


@dataclass
class AuthPacket(Record):
    type: int = int32()
    scheme: str | None = ustring()
    auth: bytes | None = buffer()


@dataclass
class GetSASLRequest(Record):
    """One SASL token from the client (op 102); the reply is a SetSASLResponse."""
    token: bytes | None = buffer()


@dataclass
class SetSASLResponse(Record):
    token: bytes | None = buffer()


@dataclass
class CloseSessionRequest(Record):
    pass


@dataclass
class PingRequest(Record):
    pass


@dataclass
class WhoAmIRequest(Record):
    pass


@dataclass
class CreateResponse(Record):
    path: str | None = ustring()


@dataclass
class Create2Response(Record):
    path: str | None = ustring()
    stat: Stat = record(Stat)


@dataclass
class ExistsResponse(Record):
    stat: Stat = record(Stat)


@dataclass
class GetDataResponse(Record):
    data: bytes | None = buffer()
    stat: Stat = record(Stat)


@dataclass
class SetDataResponse(Record):
    stat: Stat = record(Stat)


@dataclass
class GetACLResponse(Record):
    acl: list[ACL] = vector(ACL)
    stat: Stat = record(Stat)


@dataclass
class SetACLResponse(Record):
    stat: Stat = record(Stat)


@dataclass
class GetChildrenResponse(Record):
    children: list[str] = vector("ustring")


@dataclass
class GetChildren2Response(Record):
    children: list[str] = vector("ustring")
    stat: Stat = record(Stat)


@dataclass
class SyncResponse(Record):
    path: str | None = ustring()


@dataclass
class GetAllChildrenNumberResponse(Record):
    total_number: int = int32()


@dataclass
class GetEphemeralsResponse(Record):
    ephemerals: list[str] = vector("ustring")


@dataclass
class ClientInfo(Record):
    auth_scheme: str | None = ustring()
    user: str | None = ustring()


@dataclass
class WhoAmIResponse(Record):
    client_info: list[ClientInfo] = vector(ClientInfo)


@dataclass
class ErrorResponse(Record):
    err: int = int32()


@dataclass
class WatcherEvent(Record):
    type: int = int32()
    state: int = int32()
    path: str | None = ustring()


# ---------------------------------------------------------------------------------------------
# Multi

# Sub-op body records inside a multi / multiRead request (ZooKeeper's MultiOperationRecord).
MULTI_REQUEST_RECORDS: dict[int, type[Record]] = {
    OpCode.CREATE: CreateRequest,
    OpCode.CREATE2: CreateRequest,
    OpCode.CREATE_CONTAINER: CreateRequest,
    OpCode.CREATE_TTL: CreateTTLRequest,
    OpCode.DELETE: DeleteRequest,
    OpCode.SET_DATA: SetDataRequest,
    OpCode.CHECK: CheckVersionRequest,
    OpCode.GET_CHILDREN: GetChildrenRequest,
    OpCode.GET_DATA: GetDataRequest,
}

# Per-result body inside a MultiResponse; None = header only.
MULTI_RESPONSE_RECORDS: dict[int, type[Record] | None] = {
    OpCode.CREATE: CreateResponse,
    OpCode.CREATE2: Create2Response,
    OpCode.DELETE: None,
    OpCode.CHECK: None,
    OpCode.SET_DATA: SetDataResponse,
    OpCode.GET_CHILDREN: GetChildrenResponse,
    OpCode.GET_DATA: GetDataResponse,
    OpCode.ERROR: ErrorResponse,
}


def _write_multi_end(w: Writer) -> None:
    MultiHeader(-1, True, -1).serialize(w)


@dataclass
class MultiRequest(Record):
    """multi (14) / multiRead (22) body: ``ops`` is a list of (op code, request record)."""
    ops: list[tuple[int, Record]] = dataclasses.field(default_factory=list)

    def serialize(self, w: Writer) -> None:
        for op, rec in self.ops:
            cls = MULTI_REQUEST_RECORDS.get(op)
            if cls is None:
                raise JuteError(f"op {op} not allowed inside a multi")
            if not isinstance(rec, cls):
                raise JuteError(f"multi op {op} needs {cls.__name__}, got {type(rec).__name__}")
            MultiHeader(op, False, -1).serialize(w)
            rec.serialize(w)
        _write_multi_end(w)

    @classmethod
    def deserialize(cls, r: Reader) -> MultiRequest:
        ops: list[tuple[int, Record]] = []
        while True:
            h = MultiHeader.deserialize(r)
            if h.done:
                return cls(ops)
            rec_cls = MULTI_REQUEST_RECORDS.get(h.type)
            if rec_cls is None:
                raise JuteError(f"invalid op {h.type} inside multi")
            ops.append((h.type, rec_cls.deserialize(r)))


@dataclass
class MultiResponse(Record):
    """multi / multiRead reply body: ``results`` is a list of (type, err, record or None).

    An error result has type -1 and an ErrorResponse(err) body; delete and check results have
    no body (record None).
    """
    results: list[tuple[int, int, Record | None]] = dataclasses.field(default_factory=list)

    def serialize(self, w: Writer) -> None:
        for typ, err, rec in self.results:
            if typ not in MULTI_RESPONSE_RECORDS:
                raise JuteError(f"result type {typ} not allowed inside a multi response")
            body_cls = MULTI_RESPONSE_RECORDS[typ]
            if typ == OpCode.ERROR and rec is None:
                rec = ErrorResponse(err)
            MultiHeader(typ, False, err).serialize(w)
            if body_cls is None:
                continue
            if not isinstance(rec, body_cls):
                raise JuteError(f"multi result {typ} needs {body_cls.__name__}, "
                                f"got {type(rec).__name__}")
            rec.serialize(w)
        _write_multi_end(w)

    @classmethod
    def deserialize(cls, r: Reader) -> MultiResponse:
        results: list[tuple[int, int, Record | None]] = []
        while True:
            h = MultiHeader.deserialize(r)
            if h.done:
                return cls(results)
            if h.type not in MULTI_RESPONSE_RECORDS:
                raise JuteError(f"invalid result type {h.type} inside multi response")
            body_cls = MULTI_RESPONSE_RECORDS[h.type]
            rec = body_cls.deserialize(r) if body_cls is not None else None
            results.append((h.type, h.err, rec))


# ---------------------------------------------------------------------------------------------
# Op tables

REQUEST_RECORDS: dict[int, type[Record]] = {
    OpCode.CREATE: CreateRequest,
    OpCode.CREATE2: CreateRequest,
    OpCode.CREATE_CONTAINER: CreateRequest,
    OpCode.CREATE_TTL: CreateTTLRequest,
    OpCode.DELETE: DeleteRequest,
    OpCode.DELETE_CONTAINER: DeleteRequest,
    OpCode.EXISTS: ExistsRequest,
    OpCode.GET_DATA: GetDataRequest,
    OpCode.SET_DATA: SetDataRequest,
    OpCode.GET_ACL: GetACLRequest,
    OpCode.SET_ACL: SetACLRequest,
    OpCode.GET_CHILDREN: GetChildrenRequest,
    OpCode.GET_CHILDREN2: GetChildren2Request,
    OpCode.SYNC: SyncRequest,
    OpCode.PING: PingRequest,
    OpCode.CHECK: CheckVersionRequest,
    OpCode.MULTI: MultiRequest,
    OpCode.MULTI_READ: MultiRequest,
    OpCode.CHECK_WATCHES: RemoveWatchesRequest,
    OpCode.REMOVE_WATCHES: RemoveWatchesRequest,
    OpCode.AUTH: AuthPacket,
    OpCode.SASL: GetSASLRequest,
    OpCode.SET_WATCHES: SetWatches,
    OpCode.SET_WATCHES2: SetWatches2,
    OpCode.GET_EPHEMERALS: GetEphemeralsRequest,
    OpCode.GET_ALL_CHILDREN_NUMBER: GetAllChildrenNumberRequest,
    OpCode.ADD_WATCH: AddWatchRequest,
    OpCode.WHO_AM_I: WhoAmIRequest,
    OpCode.RECONFIG: ReconfigRequest,
    OpCode.CLOSE_SESSION: CloseSessionRequest,
}

# Reply body per request op; None = the reply is a bare ReplyHeader.
RESPONSE_RECORDS: dict[int, type[Record] | None] = {
    OpCode.CREATE: CreateResponse,
    # ZooKeeper answers create2, createContainer and createTTL with a Create2Response.
    OpCode.CREATE2: Create2Response,
    OpCode.CREATE_CONTAINER: Create2Response,
    OpCode.CREATE_TTL: Create2Response,
    OpCode.DELETE: None,
    OpCode.DELETE_CONTAINER: None,
    OpCode.EXISTS: ExistsResponse,
    OpCode.GET_DATA: GetDataResponse,
    OpCode.SET_DATA: SetDataResponse,
    OpCode.GET_ACL: GetACLResponse,
    OpCode.SET_ACL: SetACLResponse,
    OpCode.GET_CHILDREN: GetChildrenResponse,
    OpCode.GET_CHILDREN2: GetChildren2Response,
    OpCode.SYNC: SyncResponse,
    OpCode.PING: None,
    OpCode.CHECK: None,
    OpCode.MULTI: MultiResponse,
    OpCode.MULTI_READ: MultiResponse,
    OpCode.CHECK_WATCHES: None,
    OpCode.REMOVE_WATCHES: None,
    OpCode.AUTH: None,
    OpCode.SASL: SetSASLResponse,
    OpCode.SET_WATCHES: None,
    OpCode.SET_WATCHES2: None,
    OpCode.GET_EPHEMERALS: GetEphemeralsResponse,
    OpCode.GET_ALL_CHILDREN_NUMBER: GetAllChildrenNumberResponse,
    OpCode.ADD_WATCH: None,
    OpCode.WHO_AM_I: WhoAmIResponse,
    # The new /zookeeper/config, as getConfig would read it.
    OpCode.RECONFIG: GetDataResponse,
    OpCode.CLOSE_SESSION: None,
}

# Xids whose replies never carry a body, whatever op the caller thinks they belong to.
_HEADER_ONLY_XIDS = frozenset({int(constants.Xid.PING), int(constants.Xid.AUTH),
                               int(constants.Xid.SET_WATCHES)})


# ---------------------------------------------------------------------------------------------
# Framing


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    return _INT.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental splitter of a byte stream into length-prefixed frames."""

    def __init__(self, max_frame: int = constants.MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def peek_raw4(self) -> bytes | None:
        """First four raw bytes (for four-letter-word detection), or None if not yet here."""
        if len(self._buf) < 4:
            return None
        return bytes(self._buf[:4])

    def peek_length(self) -> int | None:
        """The pending length prefix as a signed int, unchecked; None until 4 bytes arrive."""
        if len(self._buf) < 4:
            return None
        value: int = _INT.unpack_from(self._buf, 0)[0]
        return value

    def next_frame(self) -> bytes | None:
        """Next complete payload, or None if more bytes are needed."""
        n = self.peek_length()
        if n is None:
            return None
        if n < 0 or n > self.max_frame:
            raise FrameTooLarge(f"frame length {n} outside 0..{self.max_frame}")
        if len(self._buf) < 4 + n:
            return None
        payload = bytes(self._buf[4:4 + n])
        del self._buf[:4 + n]
        return payload

    def frames(self) -> list[bytes]:
        """Every complete payload buffered, consumed with one deletion (deleting frame by frame
        moves the rest of the buffer each time). A bad length prefix behind good frames stays
        buffered and raises FrameTooLarge on the next call, so the good ones come first."""
        buf = self._buf
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (n,) = _INT.unpack_from(buf, pos)
            if n < 0 or n > self.max_frame:
                if not out:
                    raise FrameTooLarge(f"frame length {n} outside 0..{self.max_frame}")
                break
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


# ---------------------------------------------------------------------------------------------
# Convenience encode/decode


def _body(record: Record | None) -> bytes:
    return b"" if record is None else record.to_bytes()


def encode_request(xid: int, op: int, record: Record | None) -> bytes:
    """Framed RequestHeader(xid, op) + body (``record`` None = no body, e.g. ping)."""
    w = Writer()
    RequestHeader(xid, op).serialize(w)
    if record is not None:
        record.serialize(w)
    return frame(w.getvalue())


def decode_request(payload: bytes) -> tuple[RequestHeader, Record]:
    """Decode one request frame's payload (not the connect request).

    Raises UnknownOpCode (with .xid/.op) for an op not in REQUEST_RECORDS. Trailing bytes after
    a complete record are tolerated, as ZooKeeper does.
    """
    r = Reader(payload)
    header = RequestHeader.deserialize(r)
    cls = REQUEST_RECORDS.get(header.type)
    if cls is None:
        raise UnknownOpCode(header.xid, header.type)
    return header, cls.deserialize(r)


_FRAMED_REPLY_HEADER = struct.Struct(">iiqi")  # frame length, xid, zxid, err


def append_reply(out: bytearray, xid: int, zxid: int, err: int, record: Record | None) -> None:
    """encode_reply, appended to `out` in place (no intermediate bytes objects): the frame's
    length is patched in once the body is written."""
    start = len(out)
    try:
        out += _FRAMED_REPLY_HEADER.pack(16, xid, zxid, err)
    except struct.error as e:
        raise JuteError(f"cannot encode ReplyHeader: {e}") from None
    if err == 0 and record is not None:
        try:
            record.serialize(Writer(out))
        except BaseException:
            del out[start:]
            raise
        _INT.pack_into(out, start, len(out) - start - 4)


def encode_reply(xid: int, zxid: int, err: int, record: Record | None) -> bytes:
    """Framed ReplyHeader + body; the body is sent only when err == 0 and record is given."""
    out = bytearray()
    append_reply(out, xid, zxid, err, record)
    return bytes(out)


def decode_reply(payload: bytes, op: int | None) -> tuple[ReplyHeader, Record | None]:
    """Decode one reply payload.

    ``op`` is the op code of the outstanding request with this xid, or None. Xid -1 is a
    WatcherEvent; ping/auth/setWatches xids and non-zero err carry no body.
    """
    r = Reader(payload)
    header = ReplyHeader.deserialize(r)
    if header.xid == constants.Xid.NOTIFICATION:
        return header, WatcherEvent.deserialize(r)
    if header.err != 0 or op is None or header.xid in _HEADER_ONLY_XIDS:
        return header, None
    if op not in RESPONSE_RECORDS:
        raise UnknownOpCode(header.xid, op)
    cls = RESPONSE_RECORDS[op]
    return header, (cls.deserialize(r) if cls is not None else None)


_EXISTS_REPLY = struct.Struct(">iqiqqqqiiiqiiq")


def decode_exists_reply(payload: bytes) -> tuple[ReplyHeader, Record | None]:
    """`decode_reply(payload, OpCode.EXISTS)` in one struct unpack: a directory listing
    decodes one of these per child (see zkfs.client.ZkClient.read_many)."""
    if len(payload) == _EXISTS_REPLY.size:
        xid, zxid, err, *fields = _EXISTS_REPLY.unpack(payload)
        if err == 0:
            return ReplyHeader(xid, zxid, err), ExistsResponse(Stat(*fields))
    return decode_reply(payload, OpCode.EXISTS)


def encode_connect_request(req: ConnectRequest) -> bytes:
    """Framed ConnectRequest (always with the read_only byte, as modern clients send)."""
    return frame(req.to_bytes())


def decode_connect_request(payload: bytes) -> ConnectRequest:
    """Decode the first frame of a session; read_only defaults to False when omitted."""
    return ConnectRequest.deserialize(Reader(payload))


def encode_connect_response(resp: ConnectResponse) -> bytes:
    return frame(resp.to_bytes())


def decode_connect_response(payload: bytes) -> ConnectResponse:
    return ConnectResponse.deserialize(Reader(payload))
