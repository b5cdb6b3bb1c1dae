"""What each client request means: writes become transactions, reads are answered from the tree.

Pure functions over the tree and watch tables; the server module owns sockets and the log.
Reads follow ZooKeeper's FinalRequestProcessor: the same existence and ACL checks, and a watch is
registered in the same step as the read, so no change can slip between them.
"""
from __future__ import annotations

from typing import Any, Hashable, Protocol

from zkfs import jute
from zkfs.constants import MAX_DATA, Err, EventType, OpCode, Perm

from zkfsd import txns
from zkfsd.tree import ApplyResult, DataTree, _int32, _is_container_or_ttl, check_acl
from zkfsd.watches import WatchManager

WRITE_OPS = frozenset({OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL,
                       OpCode.DELETE, OpCode.DELETE_CONTAINER, OpCode.SET_DATA, OpCode.SET_ACL,
                       OpCode.CHECK, OpCode.MULTI, OpCode.CLOSE_SESSION})
CREATE_OPS = frozenset({OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL})


class RequestError(Exception):
    """A request answered with a ZooKeeper error code."""

    def __init__(self, err: Err) -> None:
        super().__init__(err.name)
        self.err = err


def to_stat(stat: Any) -> jute.Stat:
    """The Stat a client sees, from the tree's Stat (ZooKeeper's DataNode.copyStat).

    The tree keeps ZooKeeper's StatPersisted: cversion counts child creations only (it numbers
    sequential children) and container/TTL kinds live in ephemeralOwner. Clients are told
    cversion*2 - numChildren (creations plus deletions: "the number of changes to the
    children") and ephemeralOwner 0 for container and TTL nodes.
    """
    (czxid, mzxid, ctime, mtime, version, cversion, aversion, owner, data_length, children,
     pzxid) = stat
    if owner and _is_container_or_ttl(owner):
        owner = 0
    return jute.Stat(czxid, mzxid, ctime, mtime, version, _int32(cversion * 2 - children),
                     aversion, owner, data_length, children, pzxid)


def node_stat(node: Any) -> jute.Stat:
    """to_stat(node.stat()) without the intermediate tuples (reads build one per reply)."""
    owner = node.ephemeral_owner
    if owner and _is_container_or_ttl(owner):
        owner = 0
    children = len(node.children)
    data = node.data
    return jute.Stat(node.czxid, node.mzxid, node.ctime, node.mtime, node.version,
                     _int32(node.cversion * 2 - children), node.aversion, owner,
                     0 if data is None else len(data), children, node.pzxid)


def _acl_to_txn(acl: list[jute.ACL] | None) -> tuple[txns.Acl, ...]:
    return tuple((a.perms, a.id.scheme, a.id.id) for a in (acl or []))


def _acl_to_wire(acl: list) -> list[jute.ACL]:
    return [jute.ACL(perms, jute.Id(scheme, ident)) for perms, scheme, ident in acl]


def _op_body(op: int, record: Any) -> txns.Body:
    """The typed body of a write, for top-level requests and multi sub-ops alike."""
    if op in CREATE_OPS:
        return txns.Create(int(op), record.path, record.data, _acl_to_txn(record.acl),
                           record.flags, record.ttl if op == OpCode.CREATE_TTL else -1)
    if op == OpCode.DELETE:
        return txns.Delete(record.path, getattr(record, "version", -1))
    if op == OpCode.DELETE_CONTAINER:
        return txns.DeleteContainer(record.path)
    if op == OpCode.SET_DATA:
        return txns.SetData(record.path, record.data, record.version)
    if op == OpCode.SET_ACL:
        return txns.SetACL(record.path, _acl_to_txn(record.acl), record.version)
    if op == OpCode.CHECK:
        return txns.Check(record.path, record.version)
    raise RequestError(Err.UNIMPLEMENTED)


_MULTI_SUB_OPS = CREATE_OPS | {OpCode.DELETE, OpCode.SET_DATA, OpCode.CHECK}


def write_txn(op: int, record: Any, session_id: int, auth: list[tuple[str, str]]) -> txns.Txn:
    """The transaction for a write request (its time is stamped when the leader proposes it,
    its zxid comes from its log position)."""
    body: txns.Body
    if op == OpCode.MULTI:
        ops = []
        for sub_op, sub in record.ops:
            if sub_op not in _MULTI_SUB_OPS:
                # ZooKeeper's multi takes create/delete/setData/check only.
                raise RequestError(Err.UNIMPLEMENTED)
            ops.append(_op_body(sub_op, sub))
        body = txns.Multi(tuple(ops))  # type: ignore[arg-type]
    elif op == OpCode.CLOSE_SESSION:
        body = txns.CloseSession()
    else:
        body = _op_body(op, record)
        # Refuse oversized data before it costs a log record and an fsync (the tree checks
        # again, for multi sub-ops and for logs written by anyone).
        data = getattr(body, "data", None)
        if data is not None and len(data) > MAX_DATA:
            raise RequestError(Err.BAD_ARGUMENTS)
    return txns.Txn(body, session_id, tuple((str(s), str(i)) for s, i in auth) if auth else ())


def _op_response(op: int, value: Any) -> tuple[int, Any]:
    """(result type, body record) of one successful write, as ZooKeeper reports it."""
    if op == OpCode.CREATE:
        return OpCode.CREATE, jute.CreateResponse(value[0])
    if op in CREATE_OPS:
        return OpCode.CREATE2, jute.Create2Response(value[0], to_stat(value[1]))
    if op == OpCode.SET_DATA:
        return OpCode.SET_DATA, jute.SetDataResponse(to_stat(value))
    if op == OpCode.SET_ACL:
        return OpCode.SET_ACL, jute.SetACLResponse(to_stat(value))
    if op == OpCode.RECONFIG:
        # The new /zookeeper/config, as getConfig reads it.
        return OpCode.RECONFIG, jute.GetDataResponse(value[0], to_stat(value[1]))
    return op, None


def write_response(op: int, result: ApplyResult) -> tuple[int, Any]:
    """(err, body) of a write's reply from the result of applying its transaction."""
    if op == OpCode.MULTI:
        results = []
        for sub_type, sub_err, sub_value in result.value:
            if sub_type == OpCode.ERROR:
                results.append((int(OpCode.ERROR), int(sub_err), jute.ErrorResponse(int(sub_err))))
            elif sub_type == OpCode.CREATE2:
                # ZooKeeper 3.8 logs a multi's create2 as a plain create: its result is a
                # CreateResponse (path only), typed CREATE.
                results.append((int(OpCode.CREATE), 0, jute.CreateResponse(sub_value[0])))
            else:
                rtype, body = _op_response(sub_type, sub_value)
                results.append((int(rtype), 0, body))
        return Err.OK, jute.MultiResponse(results)
    if result.err != Err.OK:
        return result.err, None
    return Err.OK, _op_response(op, result.value)[1]


class ReadContext(Protocol):
    """What a read needs to know about the connection that sent it (a client connection is
    one): its watcher identity, its session and the ids it authenticated as."""
    session_id: int
    auth: list[tuple[str, str]]

    @property
    def watcher(self) -> Hashable: ...


def _lookup(tree: DataTree, path: Any) -> Any:
    """DataTree.getNode: ZooKeeper's tree also holds the root under "", and reads look paths up
    as they are, without validating them (a NUL or '//' simply finds nothing)."""
    if not isinstance(path, str):
        return None
    return tree.get("/" if path == "" else path)


def _node_or_raise(tree: DataTree, path: str) -> Any:
    node = _lookup(tree, path)
    if node is None:
        raise RequestError(Err.NO_NODE)
    return node


def _require(node: Any, perm: int, ctx: ReadContext) -> None:
    for perms, scheme, ident in node.acl:
        # world:anyone granting the permission passes whoever asks: the common case, decided
        # without check_acl's walk over the session's ids.
        if perms & perm == perm and scheme == "world" and ident == "anyone":
            return
    if not check_acl(node.acl, perm, ctx.auth):
        raise RequestError(Err.NO_AUTH)


def execute_read(tree: DataTree, watches: WatchManager, ctx: ReadContext, op: int,
                 record: Any) -> tuple[int, Any]:
    """(err, body) of a read request, registering its watch if it asked for one."""
    try:
        return Err.OK, _read(tree, watches, ctx, op, record)
    except RequestError as exc:
        return exc.err, None


def _read(tree: DataTree, watches: WatchManager, ctx: ReadContext, op: int, record: Any) -> Any:
    if op == OpCode.EXISTS:
        # exists is the one read that refuses a NUL (FinalRequestProcessor).
        if record.path is None or "\0" in record.path:
            raise RequestError(Err.BAD_ARGUMENTS)
        node = _lookup(tree, record.path)
        if record.watch:
            watches.add_data(record.path, ctx.watcher)
        if node is None:
            raise RequestError(Err.NO_NODE)
        return jute.ExistsResponse(node_stat(node))
    if op == OpCode.GET_DATA:
        node = _node_or_raise(tree, record.path)
        _require(node, Perm.READ, ctx)
        if record.watch:
            watches.add_data(record.path, ctx.watcher)
        return jute.GetDataResponse(node.data, node_stat(node))
    if op in (OpCode.GET_CHILDREN, OpCode.GET_CHILDREN2):
        node = _node_or_raise(tree, record.path)
        _require(node, Perm.READ, ctx)
        if record.watch:
            watches.add_child(record.path, ctx.watcher)
        children = sorted(node.children)
        if op == OpCode.GET_CHILDREN:
            return jute.GetChildrenResponse(children)
        return jute.GetChildren2Response(children, node_stat(node))
    if op == OpCode.GET_ACL:
        node = _node_or_raise(tree, record.path)
        _require(node, Perm.READ | Perm.ADMIN, ctx)
        return jute.GetACLResponse(_acl_to_wire(node.acl), node_stat(node))
    if op == OpCode.GET_ALL_CHILDREN_NUMBER:
        node = _node_or_raise(tree, record.path)
        _require(node, Perm.READ, ctx)
        return jute.GetAllChildrenNumberResponse(tree.count_descendants(record.path))
    if op == OpCode.GET_EPHEMERALS:
        prefix = record.prefix_path or "/"
        return jute.GetEphemeralsResponse(tree.ephemerals(ctx.session_id, prefix))
    if op == OpCode.SYNC:
        return jute.SyncResponse(record.path)
    if op == OpCode.MULTI_READ:
        return _multi_read(tree, watches, ctx, record)
    if op == OpCode.ADD_WATCH:
        if "\0" in (record.path or "\0"):
            raise RequestError(Err.BAD_ARGUMENTS)
        watches.add_persistent(record.path, ctx.watcher, record.mode)
        return None
    if op in (OpCode.CHECK_WATCHES, OpCode.REMOVE_WATCHES):
        found = watches.remove(record.path, ctx.watcher, record.type,
                               dry_run=(op == OpCode.CHECK_WATCHES))
        if not found:
            raise RequestError(Err.NO_WATCHER)
        return None
    if op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
        raise AssertionError("setWatches is answered by the server (it sends events)")
    if op == OpCode.WHO_AM_I:
        return jute.WhoAmIResponse([jute.ClientInfo(scheme, _user_of(scheme, ident))
                                    for scheme, ident in ctx.auth])
    raise RequestError(Err.UNIMPLEMENTED)


def _user_of(scheme: str, ident: str) -> str:
    # ZooKeeper's digest provider reports the user name, not the hash.
    return ident.split(":", 1)[0] if scheme == "digest" else ident


def _multi_read(tree: DataTree, watches: WatchManager, ctx: ReadContext, record: Any) -> Any:
    results = []
    for sub_op, sub in record.ops:
        err, body = execute_read(tree, watches, ctx, sub_op, sub)
        if err != Err.OK:
            results.append((int(OpCode.ERROR), int(err), jute.ErrorResponse(int(err))))
        else:
            results.append((int(sub_op), 0, body))
    return jute.MultiResponse(results)


def set_watches(tree: DataTree, watches: WatchManager, watcher: Hashable,
                record: Any) -> list[tuple[EventType, str]]:
    """Re-register a reconnecting client's watches; returns the events it missed meanwhile."""
    rel = record.relative_zxid
    missed: list[tuple[EventType, str]] = []
    for path in record.data_watches or []:
        node = tree.get(path)
        if node is None:
            missed.append((EventType.NODE_DELETED, path))
        elif node.stat().mzxid > rel:
            missed.append((EventType.NODE_DATA_CHANGED, path))
        else:
            watches.add_data(path, watcher)
    for path in record.exist_watches or []:
        if tree.get(path) is not None:
            missed.append((EventType.NODE_CREATED, path))
        else:
            watches.add_data(path, watcher)
    for path in record.child_watches or []:
        node = tree.get(path)
        if node is None:
            missed.append((EventType.NODE_DELETED, path))
        elif node.stat().pzxid > rel:
            missed.append((EventType.NODE_CHILDREN_CHANGED, path))
        else:
            watches.add_child(path, watcher)
    for path in getattr(record, "persistent_watches", None) or []:
        watches.add_persistent(path, watcher, 0)
    for path in getattr(record, "persistent_recursive_watches", None) or []:
        watches.add_persistent(path, watcher, 1)
    return missed
