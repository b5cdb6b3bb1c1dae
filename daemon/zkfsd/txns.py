"""Transactions: the typed records of zkfsd's replicated log, and their versioned encoding.

Every state change is one `Txn`: an envelope (requesting session, its auth ids, the leader's
clock, where it was proposed) around one body record per kind (`Create`, `Delete`, `SetData`,
`SetACL`, `Check`, `Multi`, `DeleteContainer`, `CreateSession`, `CloseSession`, `Sync`,
`Reconfig`).
The records are frozen; `decode` is the one place that checks types and shapes, so
`DataTree.apply` and the server never see a malformed transaction. What the tree still refuses
(a bad path, an invalid ACL, a wrong version) is ZooKeeper's semantics with ZooKeeper's error
codes, not a decoding matter.

Encoding (msgpack), one log entry's data:

    [TXN_FORMAT, session, [[scheme, id], ...], time_ms, origin | nil, body]
    origin = [member, incarnation, sequence]
    body   = [kind, fields...]    kind is the ZooKeeper op code (create/create2/createContainer/
                                   createTTL all decode to Create, keeping the op)

The zxid is not stored: it is derived from the entry's log position when it is applied
(`consensus.make_zxid(term, index)`), so it cannot disagree with the log.

Entries written before this format (zkfs-storage 1: a msgpack map with "type", "zxid", ...) are
upgraded when read (`decode` accepts them, `from_legacy`); the zxid they carry was stamped from
the same log position and is ignored. Nothing here depends on the server, so the tree, the
storage tools and the tests import it without cycles.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import msgpack

from zkfs.constants import OpCode

__all__ = [
    "TXN_FORMAT", "Acl", "Body", "Check", "CloseSession", "Create", "CreateSession",
    "Delete", "DeleteContainer", "Multi", "MultiOp", "Origin", "RECONFIG_MARK", "Reconfig",
    "SetACL", "SetData", "Sync", "Txn", "TxnDecodeError", "decode", "encode", "from_legacy", "may_be_reconfig",
]

TXN_FORMAT = 1

Acl = tuple[int, str, Union[str, None]]  # perms, scheme, id (None only for the 'auth' scheme)

_I64 = 1 << 63


class TxnDecodeError(ValueError):
    """Bytes that are not a transaction this zkfsd understands."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Which member proposed a transaction, in which run, under which sequence number: lets
    that member complete the waiting request when the entry comes back committed."""

    member: int
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class Create:
    """create, create2, createContainer or createTTL (`op`); the op decides the node kind."""

    KINDS: ClassVar[frozenset[int]] = frozenset({OpCode.CREATE, OpCode.CREATE2,
                                                OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL})
    op: int
    path: str
    data: bytes | None
    acl: tuple[Acl, ...]
    flags: int = 0
    ttl: int = -1  # createTTL only


@dataclass(frozen=True, slots=True)
class Delete:
    KIND: ClassVar[int] = OpCode.DELETE
    path: str
    version: int = -1


@dataclass(frozen=True, slots=True)
class DeleteContainer:
    """The leader's reaper removing an empty container or an expired TTL node."""

    KIND: ClassVar[int] = OpCode.DELETE_CONTAINER
    path: str


@dataclass(frozen=True, slots=True)
class SetData:
    KIND: ClassVar[int] = OpCode.SET_DATA
    path: str
    data: bytes | None
    version: int = -1


@dataclass(frozen=True, slots=True)
class SetACL:
    KIND: ClassVar[int] = OpCode.SET_ACL
    path: str
    acl: tuple[Acl, ...]
    version: int = -1


@dataclass(frozen=True, slots=True)
class Check:
    KIND: ClassVar[int] = OpCode.CHECK
    path: str
    version: int = -1


MultiOp = Union[Create, Delete, SetData, Check]


@dataclass(frozen=True, slots=True)
class Multi:
    KIND: ClassVar[int] = OpCode.MULTI
    ops: tuple[MultiOp, ...]


@dataclass(frozen=True, slots=True)
class CreateSession:
    """A new session (its id is the envelope's session)."""

    KIND: ClassVar[int] = OpCode.CREATE_SESSION
    timeout: int
    password: bytes


@dataclass(frozen=True, slots=True)
class CloseSession:
    """The envelope's session ends, with its ephemeral nodes; `expired`: by timeout."""

    KIND: ClassVar[int] = OpCode.CLOSE_SESSION
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Sync:
    """An empty transaction through the leader; `path` is echoed to the client."""

    KIND: ClassVar[int] = OpCode.SYNC
    path: str


# Only a Reconfig body holds this string: the consensus core looks for membership changes in
# every log entry it takes (reconfig.entry_conf), and skips the others without decoding them.
RECONFIG_MARK = "zkfs.reconfig"
_RECONFIG_MARK_BYTES = msgpack.packb(RECONFIG_MARK)


@dataclass(frozen=True, slots=True)
class Reconfig:
    """A membership change (ZooKeeper's reconfig). The request part: `joining` server lines
    (`server.N=...`), `leaving` ids, or the whole `new_members`, and the `from_config` version
    it expects. The leader decides (reconfig.lead_reconfig) and logs the outcome: `members`,
    the new membership's server lines, or `err`, the ZooKeeper error code of the refusal.
    An undecided request (neither) only travels from a member to its leader."""
    KIND: ClassVar[int] = OpCode.RECONFIG
    joining: tuple[str, ...] = ()
    leaving: tuple[int, ...] = ()
    new_members: tuple[str, ...] | None = None
    from_config: int = -1
    members: tuple[str, ...] | None = None
    err: int | None = None


Body = Union[Create, Delete, DeleteContainer, SetData, SetACL, Check, Multi, CreateSession,
             CloseSession, Sync, Reconfig]


@dataclass(frozen=True, slots=True)
class Txn:
    body: Body
    session: int = 0
    auth: tuple[tuple[str, str], ...] = ()
    time: int = 0  # ms since the epoch, stamped by the leader when it proposes
    origin: Origin | None = None

    @property
    def op(self) -> int:
        """The ZooKeeper op code of the body."""
        body = self.body
        return body.op if isinstance(body, Create) else body.KIND

    # Built directly rather than with dataclasses.replace: once per write on the hot path,
    # where replace costs several times as much.
    def stamped(self, time_ms: int) -> Txn:
        return Txn(self.body, self.session, self.auth, time_ms, self.origin)

    def with_origin(self, origin: Origin) -> Txn:
        return Txn(self.body, self.session, self.auth, self.time, origin)


# -- encoding --------------------------------------------------------------------------------------

def _acl_out(acl: tuple[Acl, ...]) -> tuple[Acl, ...]:
    # msgpack packs a tuple as the same array as a list: no copy needed.
    return acl


def _body_out(body: Body) -> list[Any]:
    if isinstance(body, Create):
        return [body.op, body.path, body.data, _acl_out(body.acl), body.flags, body.ttl]
    if isinstance(body, (Delete, Check)):
        return [body.KIND, body.path, body.version]
    if isinstance(body, SetData):
        return [body.KIND, body.path, body.data, body.version]
    if isinstance(body, SetACL):
        return [body.KIND, body.path, _acl_out(body.acl), body.version]
    if isinstance(body, Multi):
        return [body.KIND, [_body_out(op) for op in body.ops]]
    if isinstance(body, CreateSession):
        return [body.KIND, body.timeout, body.password]
    if isinstance(body, CloseSession):
        return [body.KIND, body.expired]
    if isinstance(body, (DeleteContainer, Sync)):
        return [body.KIND, body.path]
    if isinstance(body, Reconfig):
        return [body.KIND, RECONFIG_MARK, list(body.joining), list(body.leaving),
                None if body.new_members is None else list(body.new_members), body.from_config,
                None if body.members is None else list(body.members), body.err]
    raise TypeError(f"not a transaction body: {body!r}")


# msgpack.packb builds a Packer per call; one per thread is reused instead (a Packer is not
# thread-safe, and the daemon encodes on its event loop only, tests and tools anywhere).
_packers = threading.local()


def encode(txn: Txn) -> bytes:
    origin = txn.origin
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    return pack(
        [TXN_FORMAT, txn.session, txn.auth, txn.time,
         None if origin is None else (origin.member, origin.incarnation, origin.seq),
         _body_out(txn.body)])


# -- decoding: every check happens here ------------------------------------------------------------

def _int(what: str, v: Any) -> int:
    if type(v) is int and -_I64 <= v < _I64:  # what msgpack gives: one test, not three
        return v
    if not isinstance(v, int) or isinstance(v, bool) or not -_I64 <= v < _I64:
        raise TxnDecodeError(f"{what}: expected a 64-bit integer, got {type(v).__name__}")
    return v


def _str(what: str, v: Any) -> str:
    if type(v) is str:
        return v
    if not isinstance(v, str):
        raise TxnDecodeError(f"{what}: expected a string, got {type(v).__name__}")
    return v


def _strs(what: str, v: Any) -> tuple[str, ...]:
    return tuple(_str(what, x) for x in _array(what, v))


def _data(what: str, v: Any) -> bytes | None:
    # None and b'' stay distinct: clients can tell a null znode value from an empty one.
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise TxnDecodeError(f"{what}: expected bytes or nil, got {type(v).__name__}")


def _array(what: str, v: Any, n: int | None = None) -> list[Any] | tuple[Any, ...]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        raise TxnDecodeError(f"{what}: expected an array" + (f" of {n}" if n is not None else ""))
    return v


def _acl_in(v: Any) -> tuple[Acl, ...]:
    out = []
    for entry in _array("acl", v):
        perms, scheme, ident = _array("acl entry", entry, 3)
        if ident is not None:
            ident = _str("acl id", ident)
        out.append((_int("acl perms", perms), _str("acl scheme", scheme), ident))
    return tuple(out)


def _body_in(v: Any, *, in_multi: bool = False) -> Body:
    arr = _array("body", v)
    if not arr:
        raise TxnDecodeError("body: empty")
    kind, fields = _int("kind", arr[0]), arr[1:]

    def want(n: int) -> None:
        if len(fields) != n:
            raise TxnDecodeError(f"kind {kind}: expected {n} fields, got {len(fields)}")

    if kind in Create.KINDS:
        want(5)
        path, data, acl, flags, ttl = fields
        return Create(kind, _str("path", path), _data("data", data), _acl_in(acl),
                      _int("flags", flags), _int("ttl", ttl))
    if kind in (Delete.KIND, Check.KIND):
        want(2)
        cls = Delete if kind == Delete.KIND else Check
        return cls(_str("path", fields[0]), _int("version", fields[1]))
    if kind == SetData.KIND:
        want(3)
        return SetData(_str("path", fields[0]), _data("data", fields[1]),
                       _int("version", fields[2]))
    if not in_multi:
        if kind == SetACL.KIND:
            want(3)
            return SetACL(_str("path", fields[0]), _acl_in(fields[1]), _int("version", fields[2]))
        if kind == Multi.KIND:
            want(1)
            ops = tuple(_body_in(op, in_multi=True) for op in _array("multi ops", fields[0]))
            return Multi(ops)  # type: ignore[arg-type]
        if kind == CreateSession.KIND:
            want(2)
            password = fields[1]
            if not isinstance(password, bytes):
                raise TxnDecodeError("password: expected bytes")
            return CreateSession(_int("timeout", fields[0]), password)
        if kind == CloseSession.KIND:
            want(1)
            if not isinstance(fields[0], bool):
                raise TxnDecodeError("expired: expected a boolean")
            return CloseSession(fields[0])
        if kind == DeleteContainer.KIND:
            want(1)
            return DeleteContainer(_str("path", fields[0]))
        if kind == Sync.KIND:
            want(1)
            return Sync(_str("path", fields[0]))
        if kind == Reconfig.KIND:
            want(7)
            mark, joining, leaving, new_members, from_config, members, err = fields
            if mark != RECONFIG_MARK:
                raise TxnDecodeError("reconfig: missing its mark")
            return Reconfig(_strs("joining", joining),
                            tuple(_int("leaving", x) for x in _array("leaving", leaving)),
                            None if new_members is None else _strs("new members", new_members),
                            _int("from config", from_config),
                            None if members is None else _strs("members", members),
                            None if err is None else _int("err", err))
    raise TxnDecodeError(f"unknown transaction kind {kind}" + (" in a multi" if in_multi else ""))


def _auth_in(v: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in _array("auth", v):
        scheme, ident = _array("auth id", pair, 2)
        out.append((_str("auth scheme", scheme), _str("auth id", ident)))
    return tuple(out)


def may_be_reconfig(data: bytes) -> bool:
    """False only for an entry that certainly holds no Reconfig (cheap: no decoding)."""
    return _RECONFIG_MARK_BYTES in data


def decode(data: bytes) -> Txn:
    """The transaction in a log entry's data, or TxnDecodeError saying what is wrong."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise TxnDecodeError(f"not msgpack ({type(exc).__name__})") from None
    if isinstance(obj, dict):
        return from_legacy(obj)
    arr = _array("transaction", obj)
    if not arr or arr[0] != TXN_FORMAT or isinstance(arr[0], bool):
        raise TxnDecodeError(f"unsupported transaction format {arr[0] if arr else None!r} "
                             f"(this zkfsd reads format {TXN_FORMAT})")
    if len(arr) != 6:
        raise TxnDecodeError("transaction: expected 6 elements")
    _, session, auth, time_ms, origin, body = arr
    org = None
    if origin is not None:
        m, inc, seq = _array("origin", origin, 3)
        org = Origin(_int("origin member", m), _int("origin incarnation", inc),
                     _int("origin seq", seq))
    return Txn(_body_in(body), _int("session", session), _auth_in(auth), _int("time", time_ms),
               org)


# -- the format before this one --------------------------------------------------------------------

def _legacy_body(d: dict[Any, Any], *, in_multi: bool = False) -> Body:
    try:
        kind = d["type"]
        fields: list[Any]
        if kind in Create.KINDS:
            fields = [d["path"], d.get("data"), d["acl"], d.get("flags", 0),
                      d["ttl"] if kind == OpCode.CREATE_TTL else -1]
        elif kind in (Delete.KIND, Check.KIND):
            fields = [d["path"], d.get("version", -1)]
        elif kind == SetData.KIND:
            fields = [d["path"], d.get("data"), d.get("version", -1)]
        elif kind == SetACL.KIND and not in_multi:
            fields = [d["path"], d["acl"], d.get("version", -1)]
        elif kind == Multi.KIND and not in_multi:
            ops = tuple(_legacy_body(op, in_multi=True) for op in d["ops"])
            return Multi(ops)  # type: ignore[arg-type]
        elif kind == CreateSession.KIND and not in_multi:
            fields = [int(d["timeout"]), bytes(d.get("password") or b"")]
        elif kind == CloseSession.KIND and not in_multi:
            fields = [bool(d.get("expired"))]
        elif kind in (DeleteContainer.KIND, Sync.KIND) and not in_multi:
            fields = [d["path"]]
        else:
            fields = []
    except (KeyError, TypeError) as exc:
        raise TxnDecodeError(f"old-format transaction lacks a field ({exc})") from None
    return _body_in([kind, *fields], in_multi=in_multi)


def from_legacy(d: dict[Any, Any]) -> Txn:
    """Upgrade a transaction of the old untyped format (a map); its "zxid" is ignored (the
    log position gives the same value)."""
    origin = d.get("origin")
    org = None
    if origin is not None:
        m, inc, seq = _array("origin", origin, 3)
        org = Origin(_int("origin member", m), _int("origin incarnation", inc),
                     _int("origin seq", seq))
    return Txn(_legacy_body(d), _int("session", d.get("session", 0)),
               _auth_in(d.get("auth") or ()), _int("time", d.get("time", 0)), org)
