"""The znode tree as a pure, deterministic state machine.

Every state change of zkfsd is a transaction (a typed record of txns.py) in a replicated log.
Every member applies the same log with `DataTree.apply(txn, zxid)` and must reach the same state
and the same results, so nothing here reads a clock, draws a random number, does I/O, or lets the
iteration order of a set or dict leak into a result (str hashing differs between processes).

Semantics follow Apache ZooKeeper 3.8: the checks of PrepRequestProcessor, in its order (which
decides the error a client sees when several apply), and the state changes of DataTree,
including every Stat field. Deliberate differences are marked "zkfs:" in comments.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgpack

from zkfs.constants import (CONTAINER_EPHEMERAL_OWNER, MAX_DATA, MAX_TTL, TTL_EPHEMERAL_OWNER_MASK,
                            CreateMode, Err, EventType, OpCode, Perm)

from zkfsd.txns import (Check, CloseSession, Create, CreateSession, Delete, DeleteContainer,
                        Multi, Reconfig, SetACL, SetData, Sync, Txn)

__all__ = ["ApplyResult", "DataTree", "Node", "SessionInfo", "Stat", "check_acl",
           "digest_auth_id", "validate_path"]

Acl = tuple[int, str, str]
Event = tuple[EventType, str]

SNAPSHOT_FORMAT = 1

OPEN_ACL_UNSAFE: list[Acl] = [(int(Perm.ALL), "world", "anyone")]
READ_ACL_UNSAFE: list[Acl] = [(int(Perm.READ), "world", "anyone")]

# DataTree.isSpecialPath: ZooKeeper refuses to delete these whatever their ACL says.
SPECIAL_PATHS = frozenset({"/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"})

# Schemes whose ids count as "authenticated" when an ACL uses the 'auth' pseudo-scheme.
# ip is a provider but not an authenticated one; world and super have no provider at all.
_AUTHENTICATED_SCHEMES = frozenset({"digest", "sasl", "x509"})
# Providers whose ids are matched exactly. sasl and x509 are always valid here (ZooKeeper
# accepts them once their providers are configured): validity must not depend on one member's
# configuration, or members could disagree about a transaction.
_EXACT_SCHEMES = frozenset({"sasl", "x509"})

_INT32 = 1 << 32
_EXTENDED_RESERVED_BITS = 0x00FFFF0000000000

# PathUtils rejects these UTF-16 code units; a code point above U+FFFF would reach Java as a
# surrogate pair (\ud800-\udfff), so it is rejected too.
_BAD_PATH_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\uffff\U00010000-\U0010ffff]")
# Integer.parseInt accepts an optional sign and ASCII digits; Python's int() also takes spaces
# and underscores, which would make more IP ACLs valid than in ZooKeeper.
_JAVA_INT = re.compile(r"[+-]?[0-9]+\Z")


class _Ctx(NamedTuple):
    """What an op applies with: its position in the log and the envelope of its transaction."""
    zxid: int
    time: int
    session: int
    auth: list[tuple[str, str]]


class Stat(NamedTuple):
    """ZooKeeper's Stat, field for field and in wire order."""
    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int


class SessionInfo(NamedTuple):
    timeout: int
    password: bytes


class ApplyResult(NamedTuple):
    """err: ZooKeeper error code; value: the op's result; events: watch triggers, in order."""
    err: int
    value: Any
    events: list[Event]


class _Fail(Exception):
    """A check failed; raised before any state is touched (or rolled back, inside a multi)."""

    def __init__(self, code: Err) -> None:
        super().__init__(code.name)
        self.code = code


class Node:
    """One znode. Treat as read-only outside this module: the tree owns every field."""
    __slots__ = ("data", "acl", "children", "czxid", "mzxid", "ctime", "mtime", "version",
                 "cversion", "aversion", "ephemeral_owner", "pzxid")

    def __init__(self, data: bytes | None, acl: list[Acl], zxid: int, time: int,
                 ephemeral_owner: int) -> None:
        # DataTree.createStat: a new node starts with every zxid equal and all versions 0.
        self.data = data
        self.acl = acl
        self.children: set[str] = set()
        self.czxid = self.mzxid = self.pzxid = zxid
        self.ctime = self.mtime = time
        self.version = self.cversion = self.aversion = 0
        self.ephemeral_owner = ephemeral_owner

    def stat(self) -> Stat:
        return Stat(self.czxid, self.mzxid, self.ctime, self.mtime, self.version, self.cversion,
                    self.aversion, self.ephemeral_owner,
                    0 if self.data is None else len(self.data), len(self.children), self.pzxid)

    def __repr__(self) -> str:
        return f"Node(data={self.data!r}, acl={self.acl!r}, stat={self.stat()!r})"


# -- pure helpers ---------------------------------------------------------------------------------

def _int32(value: int) -> int:
    # Stat versions are Java ints and wrap around like them.
    return (value + (1 << 31)) % _INT32 - (1 << 31)


def _next_version(current: int) -> int:
    # checkAndIncVersion skips -1 on wrap-around, since -1 means "any version" (ZOOKEEPER-4743).
    nxt = _int32(current + 1)
    return 0 if nxt == -1 else nxt


def _is_ttl_owner(owner: int) -> bool:
    return (owner & TTL_EPHEMERAL_OWNER_MASK) == TTL_EPHEMERAL_OWNER_MASK \
        and owner & _EXTENDED_RESERVED_BITS == 0


def _is_container_or_ttl(owner: int) -> bool:
    return owner == CONTAINER_EPHEMERAL_OWNER or _is_ttl_owner(owner)


def _is_session_ephemeral(owner: int) -> bool:
    """EphemeralType.NORMAL: owned by a session (not persistent, container or TTL)."""
    return owner != 0 and not _is_container_or_ttl(owner)


def ttl_of(ephemeral_owner: int) -> int:
    """The TTL in ms encoded in a TTL node's ephemeralOwner (EphemeralType.TTL.getValue)."""
    return ephemeral_owner & MAX_TTL


def _path_error(path: Any) -> str | None:
    """Why PathUtils.validatePath would reject `path`, or None if it is valid."""
    if not isinstance(path, str):
        return "path must be a string"
    if not path:
        return "path length must be > 0"
    if path[0] != "/":
        return "path must start with / character"
    if len(path) == 1:
        return None
    if path[-1] == "/":
        return "path must not end with / character"
    for name in path[1:].split("/"):
        if not name:
            return "empty node name specified"
        if name == "." or name == "..":
            return "relative paths not allowed"
    bad = _BAD_PATH_CHARS.search(path)
    if bad is not None:
        return f"invalid character @{bad.start()}"
    return None


def validate_path(path: str, sequential: bool = False) -> bool:
    """ZooKeeper's PathUtils.validatePath: True, or ValueError saying why not.

    A sequential path is checked as if its suffix were already there, so it may end in '/'.
    """
    reason = _path_error(path + "1" if sequential and isinstance(path, str) else path)
    if reason is not None:
        raise ValueError(f"invalid path {path!r}: {reason}")
    return True


def digest_auth_id(user: str, password: str) -> str:
    """The id ZooKeeper's digest scheme gives `user:password`: user:base64(sha1(user:password))."""
    digest = hashlib.sha1(f"{user}:{password}".encode()).digest()
    return f"{user}:{base64.b64encode(digest).decode('ascii')}"


def _digest_id_valid(ident: str) -> bool:
    # DigestAuthenticationProvider.isValid: id.split(":").length == 2, and Java's split drops
    # trailing empty strings, so "user:" is invalid while ":x" is valid.
    parts = ident.split(":")
    while parts and parts[-1] == "":
        parts.pop()
    return len(parts) == 2


def _addr_bytes(addr: str) -> bytes | None:
    """IPAuthenticationProvider.addr2Bytes: IPv4 dotted quad, or IPv6 when it has a ':'."""
    if ":" in addr:
        try:
            return ipaddress.IPv6Address(addr).packed
        except ValueError:
            return None
    parts = addr.split(".")
    if len(parts) != 4:
        return None
    out = bytearray()
    for part in parts:
        if not _JAVA_INT.match(part):
            return None
        value = int(part)
        if not 0 <= value <= 255:
            return None
        out.append(value)
    return bytes(out)


def _parse_ip_acl(expr: str) -> tuple[bytes, int] | None:
    """(address, prefix bits) of an ip ACL id 'a.b.c.d' or 'a.b.c.d/bits', None if invalid."""
    addr_text, slash, bits_text = expr.partition("/")
    addr = _addr_bytes(addr_text)
    if addr is None:
        return None
    width = len(addr) * 8
    if not slash:
        return addr, width
    if not _JAVA_INT.match(bits_text):
        return None
    bits = int(bits_text)
    if not 0 <= bits <= width:
        return None
    return addr, bits


def _ip_matches(client: str, expr: str) -> bool:
    parsed = _parse_ip_acl(expr)
    if parsed is None:
        return False
    acl_addr, bits = parsed
    remote = _addr_bytes(client)
    if remote is None or len(remote) != len(acl_addr):
        return False
    width = len(acl_addr) * 8
    mask = ((1 << bits) - 1) << (width - bits)
    return (int.from_bytes(remote, "big") & mask) == (int.from_bytes(acl_addr, "big") & mask)


def check_acl(node_acl: Iterable[Acl], perm: int, auth: Iterable[Any]) -> bool:
    """ZooKeeperServer.checkACL: may a session holding `auth` ids do `perm` on a node?

    An empty ACL allows everything and a 'super' id passes every check; otherwise some entry
    granting `perm` must be world:anyone or match one of the ids (digest: exactly; ip: by
    address or CIDR prefix).
    """
    if type(node_acl) is not list and type(node_acl) is not tuple:
        node_acl = list(node_acl)
    if not node_acl:
        return True
    # world:anyone first, before the ids are looked at: it is most nodes' ACL, every read and
    # write checks it, and a 'super' id would only give the same answer.
    for perms, scheme, ident in node_acl:
        if perms & perm and scheme == "world" and ident == "anyone":
            return True
    ids = [(scheme, ident) for scheme, ident in auth]
    if any(scheme == "super" for scheme, _ in ids):
        return True
    for perms, scheme, ident in node_acl:
        if not perms & perm:
            continue
        if scheme == "world" and ident == "anyone":
            return True
        for auth_scheme, auth_id in ids:
            if auth_scheme != scheme:
                continue
            if (scheme == "digest" or scheme in _EXACT_SCHEMES) and auth_id == ident:
                return True
            if scheme == "ip" and _ip_matches(auth_id, ident):
                return True
    return False


def _fixup_acl(acl: Iterable[tuple[int, str, str | None]],
               auth: list[tuple[str, str]]) -> list[Acl]:
    """PrepRequestProcessor.fixupACL: validate an ACL list and expand its 'auth' entries.
    (Types were checked when the transaction was decoded.)"""
    acl = list(acl)
    if not acl:
        raise _Fail(Err.INVALID_ACL)
    unique: list[Acl] = []
    for perms, scheme, ident in acl:
        # The 'auth' pseudo-scheme ignores its id, which may be null: kazoo sends "" as null.
        if ident is None and scheme != "auth":
            raise _Fail(Err.INVALID_ACL)
        item = (perms, scheme, ident)
        # Duplicates are dropped before 'auth' expansion, exactly like removeDuplicates.
        if item not in unique:
            unique.append(item)
    result: list[Acl] = []
    for perms, scheme, ident in unique:
        if scheme == "world" and ident == "anyone":
            result.append((perms, scheme, ident))
        elif scheme == "auth":
            expanded = [(perms, s, i) for s, i in auth if s in _AUTHENTICATED_SCHEMES]
            if not expanded:
                raise _Fail(Err.INVALID_ACL)
            result.extend(expanded)
        elif scheme == "digest" and _digest_id_valid(ident):
            result.append((perms, scheme, ident))
        elif scheme == "ip" and _parse_ip_acl(ident) is not None:
            result.append((perms, scheme, ident))
        elif scheme in _EXACT_SCHEMES and ident:
            result.append((perms, scheme, ident))
        else:
            # Unknown scheme, or a world id other than 'anyone' (no 'world' provider exists).
            raise _Fail(Err.INVALID_ACL)
    return result


def _check_data_size(data: bytes | None) -> None:
    # zkfs: ZooKeeper refuses oversize data at the jute layer (jute.maxbuffer) by dropping the
    # connection; here it is an explicit BadArguments after the other checks.
    if data is not None and len(data) > MAX_DATA:
        raise _Fail(Err.BAD_ARGUMENTS)


def config_node_data(lines: list[str], version: int) -> bytes:
    """/zookeeper/config's content: the server.N lines, then the version in hex
    (ZooKeeper's QuorumMaj.toString)."""
    return "".join(f"{line}\n" for line in lines).encode() + f"version={version:x}".encode()


def _check_version(current: int, expected: int) -> None:
    if expected != -1 and expected != current:
        raise _Fail(Err.BAD_VERSION)


def _parent_of(path: str) -> tuple[str, str]:
    """(parent path, child name); the parent of a top-level node is '/' (ZooKeeper's '' alias)."""
    slash = path.rfind("/")
    return (path[:slash] or "/"), path[slash + 1:]


# -- the tree -------------------------------------------------------------------------------------

class DataTree:
    """ZooKeeper's DataTree plus the transaction checks of its PrepRequestProcessor."""

    def __init__(self) -> None:
        self._reset()
        # ZooKeeper 3.8's built-in nodes: all-zero Stats, no cversion for their own children.
        root = self._bare_node(b"", list(OPEN_ACL_UNSAFE))
        proc = self._bare_node(b"", list(OPEN_ACL_UNSAFE))
        quota = self._bare_node(b"", list(OPEN_ACL_UNSAFE))
        # addConfigNode sets READ_ACL_UNSAFE with DataTree.setACL(..., -1), leaving aversion -1.
        config = self._bare_node(b"", list(READ_ACL_UNSAFE))
        config.aversion = -1
        root.children.add("zookeeper")
        proc.children.update(("quota", "config"))
        for path, node in (("/", root), ("/zookeeper", proc), ("/zookeeper/quota", quota),
                           ("/zookeeper/config", config)):
            self._nodes[path] = node
            self.approximate_data_size += len(path)

    def _reset(self) -> None:
        self._nodes: dict[str, Node] = {}
        self.sessions: dict[int, SessionInfo] = {}
        self._ephemerals: dict[int, set[str]] = {}
        self._containers: set[str] = set()
        self._ttls: set[str] = set()
        self.last_zxid = 0
        # DataTree's cachedApproximateDataSize: path length plus data length of every node.
        # Valid paths hold no surrogates, so len() equals Java's UTF-16 String.length().
        self.approximate_data_size = 0
        # While a multi runs: callables restoring the state, newest last.
        self._undo: list[Callable[[], None]] | None = None

    @staticmethod
    def _bare_node(data: bytes, acl: list[Acl]) -> Node:
        return Node(data, acl, 0, 0, 0)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def children(self, path: str) -> list[str]:
        """Sorted child names; [] for a missing node."""
        node = self._nodes.get(path)
        return sorted(node.children) if node is not None else []

    @property
    def node_count(self) -> int:
        # ZooKeeper counts its '' alias of the root too: a fresh server reports 5 znodes.
        return len(self._nodes) + 1

    def count_descendants(self, path: str) -> int:
        """getAllChildrenNumber: every node below `path`, not counting itself (0 if missing)."""
        if path == "/":
            return len(self._nodes) - 1
        node = self._nodes.get(path)
        if node is None:
            return 0
        count = 0
        stack = [(path, node)]
        while stack:
            base, current = stack.pop()
            for name in current.children:
                child_path = f"{base}/{name}"
                count += 1
                child = self._nodes[child_path]
                if child.children:
                    stack.append((child_path, child))
        return count

    def ephemerals(self, session: int, prefix: str = "/") -> list[str]:
        """Sorted ephemeral paths of a session; a prefix other than '/' filters by startswith."""
        paths = self._ephemerals.get(session, ())
        if prefix is None or prefix.strip() in ("", "/"):
            return sorted(paths)
        return sorted(p for p in paths if p.startswith(prefix))

    def reapable(self, now_ms: int, max_never_used_ms: int = 0) -> list[str]:
        """ContainerManager.getCandidates: nodes the reaper should DELETE_CONTAINER, sorted.

        Containers with no children that once had one (cversion > 0), or that were never used
        for longer than `max_never_used_ms` (0 = never); TTL nodes with no children unchanged
        for longer than their TTL.
        """
        out = []
        for path in self._containers:
            node = self._nodes[path]
            if node.children:
                continue
            if node.cversion > 0 or (max_never_used_ms and now_ms - node.mtime > max_never_used_ms):
                out.append(path)
        for path in self._ttls:
            node = self._nodes[path]
            if not node.children and now_ms - node.mtime > ttl_of(node.ephemeral_owner):
                out.append(path)
        out.sort()
        return out

    # -- transactions -----------------------------------------------------------------------------

    def apply(self, txn: Txn, zxid: int) -> ApplyResult:
        """Apply one transaction of the log at `zxid` (derived from its log position).
        Deterministic: same tree + same txn + same zxid = same result."""
        ctx = _Ctx(zxid, txn.time, txn.session, list(txn.auth))
        body = txn.body
        try:
            if isinstance(body, Multi):
                return self._apply_multi(body, ctx)
            try:
                value, events = self._HANDLERS[type(body)](self, body, ctx)
            except _Fail as failure:
                return ApplyResult(failure.code, None, [])
            return ApplyResult(Err.OK, value, events)
        finally:
            # Failed transactions still consume their zxid, as in ZooKeeper.
            self.last_zxid = zxid

    def _apply_multi(self, multi: Multi, ctx: _Ctx) -> ApplyResult:
        self._undo = []
        results: list[tuple[int, int, Any]] = []
        events: list[Event] = []
        failed_at, code = -1, Err.OK
        try:
            for index, op in enumerate(multi.ops):
                try:
                    value, op_events = self._HANDLERS[type(op)](self, op, ctx)
                except _Fail as failure:
                    failed_at, code = index, failure.code
                    break
                results.append((OpCode(op.op if isinstance(op, Create) else op.KIND), Err.OK,
                                value))
                events.extend(op_events)
            if failed_at >= 0:
                for undo in reversed(self._undo):
                    undo()
                # ZooKeeper's layout: earlier ops report OK, the culprit its error, the rest
                # RUNTIMEINCONSISTENCY, all typed ERROR; the multi itself answers OK.
                results = ([(OpCode.ERROR, Err.OK, None)] * failed_at
                           + [(OpCode.ERROR, code, None)]
                           + [(OpCode.ERROR, Err.RUNTIME_INCONSISTENCY, None)]
                           * (len(multi.ops) - failed_at - 1))
                events = []
        finally:
            self._undo = None
        return ApplyResult(Err.OK, results, events)

    def _record(self, undo: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    # -- primitive mutations (each one undoable) --------------------------------------------------

    def _add_node(self, path: str, parent: Node, name: str, node: Node, zxid: int) -> None:
        old_cversion, old_pzxid = parent.cversion, parent.pzxid
        new_cversion = _int32(parent.cversion + 1)
        # DataTree.createNode only moves cversion forward; on int overflow it stays put.
        if new_cversion > parent.cversion:
            parent.cversion = new_cversion
            parent.pzxid = zxid
        parent.children.add(name)
        self._nodes[path] = node
        self._index(path, node.ephemeral_owner)
        size = len(path) + (len(node.data) if node.data is not None else 0)
        self.approximate_data_size += size

        def undo() -> None:
            parent.cversion, parent.pzxid = old_cversion, old_pzxid
            parent.children.discard(name)
            del self._nodes[path]
            self._unindex(path, node.ephemeral_owner)
            self.approximate_data_size -= size
        self._record(undo)

    def _remove_node(self, path: str, parent: Node, name: str, node: Node, zxid: int) -> None:
        old_pzxid = parent.pzxid
        parent.children.discard(name)
        # DataTree.deleteNode: pzxid only moves forward, and cversion is left alone (only
        # creates count in cversion, so sequence numbers are not burnt by deletes).
        if zxid > parent.pzxid:
            parent.pzxid = zxid
        del self._nodes[path]
        self._unindex(path, node.ephemeral_owner)
        size = len(path) + (len(node.data) if node.data is not None else 0)
        self.approximate_data_size -= size

        def undo() -> None:
            parent.pzxid = old_pzxid
            parent.children.add(name)
            self._nodes[path] = node
            self._index(path, node.ephemeral_owner)
            self.approximate_data_size += size
        self._record(undo)

    def _index(self, path: str, owner: int) -> None:
        if owner == 0:
            return
        if owner == CONTAINER_EPHEMERAL_OWNER:
            self._containers.add(path)
        elif _is_ttl_owner(owner):
            self._ttls.add(path)
        else:
            self._ephemerals.setdefault(owner, set()).add(path)

    def _unindex(self, path: str, owner: int) -> None:
        if owner == 0:
            return
        if owner == CONTAINER_EPHEMERAL_OWNER:
            self._containers.discard(path)
        elif _is_ttl_owner(owner):
            self._ttls.discard(path)
        else:
            paths = self._ephemerals.get(owner)
            if paths is not None:
                paths.discard(path)
                if not paths:
                    del self._ephemerals[owner]

    # -- op handlers: (self, txn) -> (value, events), raising _Fail before any change -------------

    def _create(self, txn: Create, ctx: _Ctx) -> tuple[Any, list[Event]]:
        op = txn.op
        path = txn.path
        zxid, time = ctx.zxid, ctx.time
        auth = ctx.auth
        data = txn.data
        try:
            mode = CreateMode(txn.flags)
        except ValueError:
            raise _Fail(Err.BAD_ARGUMENTS) from None
        # EphemeralType.validateTTL: a TTL mode needs 0 < ttl <= MAX_TTL, any other mode no ttl.
        ttl = txn.ttl if op == OpCode.CREATE_TTL else -1
        if mode.is_ttl:
            if not 0 < ttl <= MAX_TTL:
                raise _Fail(Err.BAD_ARGUMENTS)
        elif ttl >= 0 or op == OpCode.CREATE_TTL:
            # zkfs: ZooKeeper would let createTTL with a negative ttl and non-TTL flags through
            # and then fail while applying it; refuse the mismatch outright.
            raise _Fail(Err.BAD_ARGUMENTS)
        session = ctx.session
        if mode.is_ephemeral and session not in self.sessions:
            # checkGlobalSession: an ephemeral of a closed session would never be cleaned up.
            raise _Fail(Err.SESSION_EXPIRED)
        # validatePathForCreate checks only for a '/' and NUL; the full PathUtils check waits
        # until the sequential suffix is on, after the parent and ACL checks.
        if not isinstance(path, str) or "/" not in path or "\0" in path:
            raise _Fail(Err.BAD_ARGUMENTS)
        acl = _fixup_acl(txn.acl, auth)
        parent_path, _ = _parent_of(path)
        parent = self._nodes.get(parent_path)
        if parent is None:
            raise _Fail(Err.NO_NODE)
        if not check_acl(parent.acl, Perm.CREATE, auth):
            raise _Fail(Err.NO_AUTH)
        if mode.is_sequential:
            path = f"{path}{parent.cversion:010d}"
        if _path_error(path) is not None:
            raise _Fail(Err.BAD_ARGUMENTS)
        if path in self._nodes:
            raise _Fail(Err.NODE_EXISTS)
        if _is_session_ephemeral(parent.ephemeral_owner):
            raise _Fail(Err.NO_CHILDREN_FOR_EPHEMERALS)
        _check_data_size(data)
        # The txn type, not the flags, decides the node kind (DataTree.processTxn): create with
        # CONTAINER flags makes a plain persistent node, as in ZooKeeper.
        if op == OpCode.CREATE_CONTAINER:
            owner = CONTAINER_EPHEMERAL_OWNER
        elif op == OpCode.CREATE_TTL:
            owner = TTL_EPHEMERAL_OWNER_MASK | ttl
        elif mode.is_ephemeral:
            owner = session
        else:
            owner = 0
        node = Node(data, acl, zxid, time, owner)
        self._add_node(path, parent, _parent_of(path)[1], node, zxid)
        return (path, node.stat()), [(EventType.NODE_CREATED, path),
                                     (EventType.NODE_CHILDREN_CHANGED, parent_path)]

    def _parent_for_delete(self, path: Any) -> str:
        # getParentPathAndValidate: no full path check, only '/', NUL and the special nodes.
        if not isinstance(path, str) or "/" not in path or "\0" in path or path in SPECIAL_PATHS:
            raise _Fail(Err.BAD_ARGUMENTS)
        return _parent_of(path)[0]

    def _delete(self, txn: Delete, ctx: _Ctx) -> tuple[Any, list[Event]]:
        path = txn.path
        version = txn.version
        zxid = ctx.zxid
        auth = ctx.auth
        parent_path = self._parent_for_delete(path)
        parent = self._nodes.get(parent_path)
        if parent is None:
            raise _Fail(Err.NO_NODE)
        # ZooKeeper checks DELETE on the parent before it looks the node up, so a caller
        # without the permission learns nothing about the node's existence.
        if not check_acl(parent.acl, Perm.DELETE, auth):
            raise _Fail(Err.NO_AUTH)
        node = self._nodes.get(path)
        if node is None:
            raise _Fail(Err.NO_NODE)
        _check_version(node.version, version)
        if node.children:
            raise _Fail(Err.NOT_EMPTY)
        self._remove_node(path, parent, _parent_of(path)[1], node, zxid)
        return None, [(EventType.NODE_DELETED, path),
                      (EventType.NODE_CHILDREN_CHANGED, parent_path)]

    def _delete_container(self, txn: DeleteContainer, ctx: _Ctx) -> tuple[Any, list[Event]]:
        path = txn.path
        zxid = ctx.zxid
        parent_path = self._parent_for_delete(path)
        node = self._nodes.get(path)
        if node is None:
            raise _Fail(Err.NO_NODE)
        if node.children:
            raise _Fail(Err.NOT_EMPTY)
        if not _is_container_or_ttl(node.ephemeral_owner):
            # zkfs: ZooKeeper refuses only session ephemerals (BadVersion) and would delete a
            # persistent node recreated at the path since the reaper looked; refuse all others.
            raise _Fail(Err.BAD_ARGUMENTS)
        parent = self._nodes[parent_path]
        self._remove_node(path, parent, _parent_of(path)[1], node, zxid)
        return None, [(EventType.NODE_DELETED, path),
                      (EventType.NODE_CHILDREN_CHANGED, parent_path)]

    def _set_data(self, txn: SetData, ctx: _Ctx) -> tuple[Any, list[Event]]:
        path = txn.path
        version = txn.version
        zxid, time = ctx.zxid, ctx.time
        auth = ctx.auth
        data = txn.data
        node = self._nodes.get(path)
        if node is None:
            # Only a missing node's path needs checking: every node in the tree has a valid one.
            raise _Fail(Err.BAD_ARGUMENTS if _path_error(path) is not None else Err.NO_NODE)
        if not check_acl(node.acl, Perm.WRITE, auth):
            raise _Fail(Err.NO_AUTH)
        _check_version(node.version, version)
        _check_data_size(data)
        old = (node.data, node.mtime, node.mzxid, node.version)
        size_delta = (len(data) if data is not None else 0) - \
            (len(node.data) if node.data is not None else 0)
        node.data, node.mtime, node.mzxid = data, time, zxid
        node.version = _next_version(node.version)
        self.approximate_data_size += size_delta

        def undo() -> None:
            node.data, node.mtime, node.mzxid, node.version = old
            self.approximate_data_size -= size_delta
        self._record(undo)
        return node.stat(), [(EventType.NODE_DATA_CHANGED, path)]

    def _set_acl(self, txn: SetACL, ctx: _Ctx) -> tuple[Any, list[Event]]:
        path = txn.path
        version = txn.version
        auth = ctx.auth
        if _path_error(path) is not None:
            raise _Fail(Err.BAD_ARGUMENTS)
        acl = _fixup_acl(txn.acl, auth)
        node = self._nodes.get(path)
        if node is None:
            raise _Fail(Err.NO_NODE)
        if not check_acl(node.acl, Perm.ADMIN, auth):
            raise _Fail(Err.NO_AUTH)
        _check_version(node.aversion, version)
        old = (node.acl, node.aversion)
        node.acl = acl
        node.aversion = _next_version(node.aversion)

        def undo() -> None:
            node.acl, node.aversion = old
        self._record(undo)
        return node.stat(), []

    def _check(self, txn: Check, ctx: _Ctx) -> tuple[Any, list[Event]]:
        path = txn.path
        version = txn.version
        auth = ctx.auth
        node = self._nodes.get(path)
        if node is None:
            # As in _set_data: a node in the tree has a valid path.
            raise _Fail(Err.BAD_ARGUMENTS if _path_error(path) is not None else Err.NO_NODE)
        if not check_acl(node.acl, Perm.READ, auth):
            raise _Fail(Err.NO_AUTH)
        _check_version(node.version, version)
        return None, []

    def _create_session(self, txn: CreateSession, ctx: _Ctx) -> tuple[Any, list[Event]]:
        self.sessions[ctx.session] = SessionInfo(txn.timeout, txn.password)
        return None, []

    def _close_session(self, txn: CloseSession, ctx: _Ctx) -> tuple[Any, list[Event]]:
        session = ctx.session
        zxid = ctx.zxid
        # Sorted so every member deletes (and reports) in the same order.
        paths = sorted(self._ephemerals.get(session, ()))
        events: list[Event] = []
        for path in paths:
            node = self._nodes[path]
            parent_path, name = _parent_of(path)
            self._remove_node(path, self._nodes[parent_path], name, node, zxid)
            events.append((EventType.NODE_DELETED, path))
            events.append((EventType.NODE_CHILDREN_CHANGED, parent_path))
        self.sessions.pop(session, None)
        return paths, events

    def _sync(self, txn: Sync, ctx: _Ctx) -> tuple[Any, list[Event]]:
        # An empty transaction: once it is applied on a member, so is everything the leader had
        # committed before it.
        return None, []

    def _reconfig(self, txn: Reconfig, ctx: _Ctx) -> tuple[Any, list[Event]]:
        # The leader decided (reconfig.py): either a refusal to report, or the new membership,
        # written as ZooKeeper writes it (a SetDataTxn with version -1, so the Stat's version
        # reads -1 and the zxid is the config's version).
        if txn.err is not None:
            raise _Fail(Err(txn.err))
        if txn.members is None:
            raise _Fail(Err.BAD_ARGUMENTS)  # an undecided request never reaches the log
        return self.set_config(config_node_data(list(txn.members), ctx.zxid), ctx.zxid, ctx.time)

    def set_config(self, data: bytes, zxid: int, time: int) -> tuple[Any, list[Event]]:
        """Set /zookeeper/config (a reconfig; or the static membership at startup, as
        ZooKeeper's initConfigInZKDatabase does with zxid 0)."""
        node = self._nodes["/zookeeper/config"]
        self.approximate_data_size += len(data) - len(node.data or b"")
        node.data, node.mzxid, node.mtime, node.version = data, zxid, time, -1
        return (data, node.stat()), [(EventType.NODE_DATA_CHANGED, "/zookeeper/config")]

    _HANDLERS: dict[type, Callable[[DataTree, Any, _Ctx], tuple[Any, list[Event]]]] = {
        Create: _create,
        Delete: _delete,
        DeleteContainer: _delete_container,
        SetData: _set_data,
        SetACL: _set_acl,
        Check: _check,
        CreateSession: _create_session,
        CloseSession: _close_session,
        Sync: _sync,
        Reconfig: _reconfig,
    }

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as msgpack; equal states give byte-identical snapshots."""
        nodes = []
        for path in sorted(self._nodes):
            n = self._nodes[path]
            nodes.append((path, n.data, n.acl, n.czxid, n.mzxid, n.ctime, n.mtime, n.version,
                          n.cversion, n.aversion, n.ephemeral_owner, n.pzxid))
        sessions = [(sid, info.timeout, info.password)
                    for sid, info in sorted(self.sessions.items())]
        return msgpack.packb({"format": SNAPSHOT_FORMAT, "last_zxid": self.last_zxid,
                              "sessions": sessions, "nodes": nodes}, use_bin_type=True)

    @classmethod
    def from_snapshot(cls, data: bytes) -> DataTree:
        state = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
        if state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {state.get('format')!r}")
        sessions = {sid: SessionInfo(timeout, password)
                    for sid, timeout, password in state["sessions"]}
        return cls.from_nodes(state["last_zxid"], sessions, state["nodes"])

    @classmethod
    def from_nodes(cls, last_zxid: int, sessions: dict[int, SessionInfo],
                   rows: Iterable[tuple[Any, ...]]) -> DataTree:
        """A tree from rows laid out as in snapshot() (path, data, acl, czxid, mzxid, ctime,
        mtime, version, cversion, aversion, ephemeral_owner, pzxid); every parent must be there.
        Also how `zkfsd import` turns a ZooKeeper tree into a zkfsd one."""
        tree = cls.__new__(cls)
        tree._reset()
        tree.last_zxid = last_zxid
        tree.sessions.update(sessions)
        nodes = tree._nodes
        size = 0
        for (path, node_data, acl, czxid, mzxid, ctime, mtime, version, cversion, aversion,
             owner, pzxid) in rows:
            node = Node.__new__(Node)
            node.data = node_data
            node.acl = [(perms, scheme, ident) for perms, scheme, ident in acl]
            node.children = set()
            node.czxid, node.mzxid, node.ctime, node.mtime = czxid, mzxid, ctime, mtime
            node.version, node.cversion, node.aversion = version, cversion, aversion
            node.ephemeral_owner, node.pzxid = owner, pzxid
            nodes[path] = node
            size += len(path) + (len(node_data) if node_data is not None else 0)
            tree._index(path, owner)
        # Children are derived from the paths rather than stored twice.
        for path in nodes:
            if path != "/":
                parent_path, name = _parent_of(path)
                nodes[parent_path].children.add(name)
        tree.approximate_data_size = size
        return tree
