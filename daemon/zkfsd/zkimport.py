"""Reading Apache ZooKeeper's data directory (`version-2`) for `zkfsd import --from-zookeeper`.

Two layers. The readers (`read_snapshot`, `read_txn_log`) are sans-IO: they take the bytes of one
file and yield typed records, so they are testable without a ZooKeeper. `ZkTreeBuilder` replays
those records the way ZooKeeper's DataTree.processTxn does when it loads its database (snapshot,
then every logged transaction past the snapshot's zxid), and `load_zookeeper_dir` does the file
I/O around both. Turning the result into zkfsd's own files is zkfsd.cli's job (DataTree,
Storage).

Formats (all big-endian jute, as ZooKeeper 3.4-3.8 write them):
  snapshot.<hex zxid>: FileHeader(int magic "ZKSN", int version, long dbid), sessions
      (int count, then long id + int timeout each), the ACL cache (int count, then long key +
      vector<ACL> each), nodes in pre-order (string path, buffer data, long acl key,
      StatPersisted) ended by the path "/", then a long Adler-32 of everything before it.
  log.<hex zxid>: FileHeader(magic "ZKLG"), then per transaction: long Adler-32, buffer
      (TxnHeader + record), byte 'B'. The file is preallocated with zeros, so a zero length
      ends it.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zkfs.constants import CONTAINER_EPHEMERAL_OWNER, MAX_TTL, TTL_EPHEMERAL_OWNER_MASK
from zkfsd.tree import _is_session_ephemeral

__all__ = ["ZkImportError", "ImportedTree", "ImportedNode", "SnapshotNode", "SessionRecord",
           "Txn", "ZkTreeBuilder", "is_zookeeper_dir", "load_zookeeper_dir", "read_snapshot",
           "read_txn_log"]

SNAP_MAGIC = 0x5A4B534E  # "ZKSN"
LOG_MAGIC = 0x5A4B4C47  # "ZKLG"
_END_OF_RECORD = 0x42  # 'B'

# ZooDefs.OpCode values of the transactions DataTree.processTxn applies.
OP_CREATE, OP_DELETE, OP_SET_DATA, OP_SET_ACL = 1, 2, 5, 7
OP_CHECK, OP_MULTI, OP_CREATE2, OP_RECONFIG = 13, 14, 15, 16
OP_CREATE_CONTAINER, OP_DELETE_CONTAINER, OP_CREATE_TTL = 19, 20, 21
OP_CREATE_SESSION, OP_CLOSE_SESSION, OP_ERROR = -10, -11, -1

Acl = tuple[int, str, str]
OPEN_ACL_UNSAFE: list[Acl] = [(31, "world", "anyone")]

# zookeeper.snapshot.compression.method=gz|snappy adds a suffix; gz is read, snappy is refused.
_SNAP_RE = re.compile(r"^snapshot\.([0-9a-fA-F]+)(\.gz|\.snappy)?$")
_LOG_RE = re.compile(r"^log\.([0-9a-fA-F]+)$")


class ZkImportError(Exception):
    """The ZooKeeper data cannot be read (one line for the operator)."""


# -- typed records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionRecord:
    session_id: int
    timeout: int


@dataclass(frozen=True)
class SnapshotNode:
    """One znode as a ZooKeeper snapshot holds it (StatPersisted has no dataLength/numChildren)."""
    path: str
    data: bytes | None
    acl: list[Acl]
    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    pzxid: int


@dataclass(frozen=True)
class Txn:
    """One logged transaction: TxnHeader fields plus the decoded record (None for types that
    carry nothing the tree needs). A multi's parts are Txns of their own, sharing its header."""
    session_id: int
    cxid: int
    zxid: int
    time: int
    type: int
    path: str | None = None
    data: bytes | None = None
    acl: list[Acl] | None = None
    ephemeral: bool = False
    parent_cversion: int = -1
    version: int = -1
    ttl: int = -1
    timeout: int = 0
    parts: list[Txn] = field(default_factory=list)


# -- jute decoding ----------------------------------------------------------------------------------

class _Reader:
    def __init__(self, buf: bytes, offset: int = 0) -> None:
        self.buf = buf
        self.pos = offset

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ZkImportError("truncated record")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def long(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def byte(self) -> int:
        return self.take(1)[0]

    def bool(self) -> bool:
        return self.take(1)[0] != 0

    def buffer(self) -> bytes | None:
        n = self.int()
        return None if n < 0 else self.take(n)

    def string(self) -> str | None:
        raw = self.buffer()
        return None if raw is None else raw.decode("utf-8")

    def acl_vector(self) -> list[Acl]:
        n = self.int()
        out: list[Acl] = []
        for _ in range(max(n, 0)):
            perms = self.int()
            scheme = self.string() or ""
            ident = self.string() or ""
            out.append((perms, scheme, ident))
        return out

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos


def _header(r: _Reader, magic: int, what: str) -> None:
    if r.left < 16 or r.int() != magic:
        raise ZkImportError(f"not a ZooKeeper {what} (bad magic)")
    r.int()  # format version
    r.long()  # dbid


def read_snapshot(buf: bytes) -> tuple[list[SessionRecord], list[SnapshotNode]]:
    """Sessions and nodes (pre-order, root first as "/") of one snapshot file's bytes."""
    r = _Reader(buf)
    _header(r, SNAP_MAGIC, "snapshot")
    sessions = [SessionRecord(r.long(), r.int()) for _ in range(r.int())]
    acls: dict[int, list[Acl]] = {}
    for _ in range(r.int()):
        key = r.long()
        acls[key] = r.acl_vector()
    nodes: list[SnapshotNode] = []
    while True:
        path = r.string()
        if path == "/":
            break
        if path is None:
            raise ZkImportError("snapshot: node without a path")
        data = r.buffer()
        acl_key = r.long()
        # ReferenceCountedACLCache: -1 stands for OPEN_ACL_UNSAFE without a cache entry.
        acl = list(OPEN_ACL_UNSAFE) if acl_key == -1 else acls.get(acl_key)
        if acl is None:
            raise ZkImportError(f"snapshot: {path or '/'} refers to unknown ACL {acl_key}")
        czxid, mzxid, ctime, mtime = r.long(), r.long(), r.long(), r.long()
        version, cversion, aversion = r.int(), r.int(), r.int()
        owner, pzxid = r.long(), r.long()
        nodes.append(SnapshotNode(path or "/", data, acl, czxid, mzxid, ctime, mtime, version,
                                  cversion, aversion, owner, pzxid))
    # SnapStream.sealStream: the Adler-32 of every byte before it. A snapshot torn by a crash
    # fails here and the caller falls back to an older one, as ZooKeeper does.
    checked = r.pos
    if r.left >= 8:
        if r.long() != zlib.adler32(buf[:checked]):
            raise ZkImportError("snapshot checksum mismatch")
    return sessions, nodes


def _decode_record(txn_type: int, r: _Reader, header: dict[str, int]) -> Txn:
    if txn_type in (OP_CREATE, OP_CREATE2):
        path, data, acl = r.string(), r.buffer(), r.acl_vector()
        ephemeral = r.bool()
        parent_cversion = r.int() if r.left >= 4 else -1
        return Txn(**header, type=txn_type, path=path, data=data, acl=acl, ephemeral=ephemeral,
                   parent_cversion=parent_cversion)
    if txn_type == OP_CREATE_CONTAINER:
        path, data, acl = r.string(), r.buffer(), r.acl_vector()
        return Txn(**header, type=txn_type, path=path, data=data, acl=acl,
                   parent_cversion=r.int())
    if txn_type == OP_CREATE_TTL:
        path, data, acl = r.string(), r.buffer(), r.acl_vector()
        parent_cversion = r.int()
        return Txn(**header, type=txn_type, path=path, data=data, acl=acl,
                   parent_cversion=parent_cversion, ttl=r.long())
    if txn_type in (OP_DELETE, OP_DELETE_CONTAINER):
        return Txn(**header, type=txn_type, path=r.string())
    if txn_type in (OP_SET_DATA, OP_RECONFIG):
        path, data = r.string(), r.buffer()
        return Txn(**header, type=txn_type, path=path, data=data, version=r.int())
    if txn_type == OP_SET_ACL:
        path, acl = r.string(), r.acl_vector()
        return Txn(**header, type=txn_type, path=path, acl=acl, version=r.int())
    if txn_type == OP_CREATE_SESSION:
        return Txn(**header, type=txn_type, timeout=r.int())
    if txn_type == OP_MULTI:
        parts = []
        for _ in range(max(r.int(), 0)):
            sub_type = r.int()
            sub = r.buffer() or b""
            parts.append(_decode_record(sub_type, _Reader(sub), header))
        return Txn(**header, type=txn_type, parts=parts)
    # closeSession (its optional record only lists paths the tree knows anyway), error, check,
    # and anything newer: nothing to apply.
    return Txn(**header, type=txn_type)


def read_txn_log(buf: bytes) -> Iterator[Txn]:
    """The transactions of one log file's bytes, up to its (zero-filled or torn) end."""
    r = _Reader(buf)
    _header(r, LOG_MAGIC, "transaction log")
    while r.left >= 12:
        crc = r.long()
        n = r.int()
        if n <= 0 or n > r.left - 1:
            return  # preallocated zeros, or a record torn by a crash: the end of the log
        entry = r.take(n)
        if r.byte() != _END_OF_RECORD or zlib.adler32(entry) != crc & 0xFFFFFFFF:
            return
        e = _Reader(entry)
        header = {"session_id": e.long(), "cxid": e.int(), "zxid": e.long(), "time": e.long()}
        yield _decode_record(e.int(), e, header)


# -- replay -----------------------------------------------------------------------------------------

@dataclass
class ImportedNode:
    data: bytes | None
    acl: list[Acl]
    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    pzxid: int
    children: set[str] = field(default_factory=set)


@dataclass
class ImportedTree:
    nodes: dict[str, ImportedNode]
    last_zxid: int
    snapshot_zxid: int
    txns_replayed: int
    ephemerals: list[str]  # session-owned nodes found (dropped or made persistent)


def _parent(path: str) -> tuple[str, str]:
    head, _, name = path.rpartition("/")
    return head or "/", name


class ZkTreeBuilder:
    """ZooKeeper's DataTree as it replays a snapshot plus logs. Replay is idempotent where
    ZooKeeper's is (a snapshot is fuzzy: it may already hold some of the transactions logged
    after its zxid), because every record sets absolute values (version, parentCVersion)."""

    def __init__(self, sessions: list[SessionRecord], nodes: list[SnapshotNode],
                 snapshot_zxid: int) -> None:
        self.nodes: dict[str, ImportedNode] = {}
        self.sessions = {s.session_id for s in sessions}
        self.snapshot_zxid = snapshot_zxid
        self.last_zxid = snapshot_zxid
        self.replayed = 0
        for n in nodes:
            self.nodes[n.path] = ImportedNode(n.data, n.acl, n.czxid, n.mzxid, n.ctime, n.mtime,
                                              n.version, n.cversion, n.aversion,
                                              n.ephemeral_owner, n.pzxid)
        for path in self.nodes:
            if path != "/":
                parent, name = _parent(path)
                if parent not in self.nodes:
                    raise ZkImportError(f"snapshot: {path} has no parent")
                self.nodes[parent].children.add(name)

    def apply(self, txn: Txn) -> None:
        if txn.zxid <= self.snapshot_zxid:
            return
        self.replayed += 1
        self.last_zxid = max(self.last_zxid, txn.zxid)
        self._apply(txn)

    def _apply(self, t: Txn) -> None:
        if t.type in (OP_CREATE, OP_CREATE2, OP_CREATE_CONTAINER, OP_CREATE_TTL):
            if t.type == OP_CREATE_CONTAINER:
                owner = CONTAINER_EPHEMERAL_OWNER
            elif t.type == OP_CREATE_TTL:
                owner = TTL_EPHEMERAL_OWNER_MASK | (t.ttl & MAX_TTL)
            else:
                owner = t.session_id if t.ephemeral else 0
            self._create(t, owner)
        elif t.type in (OP_DELETE, OP_DELETE_CONTAINER):
            self._delete(t.path or "", t.zxid)
        elif t.type in (OP_SET_DATA, OP_RECONFIG):
            node = self.nodes.get(t.path or "")
            if node is not None:
                node.data, node.version, node.mzxid, node.mtime = t.data, t.version, t.zxid, t.time
        elif t.type == OP_SET_ACL:
            node = self.nodes.get(t.path or "")
            if node is not None:
                node.acl, node.aversion = list(t.acl or []), t.version
        elif t.type == OP_CREATE_SESSION:
            self.sessions.add(t.session_id)
        elif t.type == OP_CLOSE_SESSION:
            # DataTree.killSession: the session's ephemerals go, each a delete at this zxid.
            for path in sorted(p for p, n in self.nodes.items()
                               if n.ephemeral_owner == t.session_id):
                self._delete(path, t.zxid)
            self.sessions.discard(t.session_id)
        elif t.type == OP_MULTI:
            # A failed multi is logged with every part turned into an error txn: a no-op.
            for part in t.parts:
                self._apply(part)

    def _create(self, t: Txn, owner: int) -> None:
        path = t.path or ""
        parent_path, name = _parent(path)
        parent = self.nodes.get(parent_path)
        if parent is None or path in self.nodes:
            return  # NoNode / NodeExists: ZooKeeper's replay ignores both
        cversion = t.parent_cversion if t.parent_cversion != -1 else parent.cversion + 1
        # DataTree.createNode only moves the parent's cversion (and with it pzxid) forward.
        if cversion > parent.cversion:
            parent.cversion, parent.pzxid = cversion, t.zxid
        parent.children.add(name)
        self.nodes[path] = ImportedNode(t.data, list(t.acl or OPEN_ACL_UNSAFE), t.zxid, t.zxid,
                                        t.time, t.time, 0, 0, 0, owner, t.zxid)

    def _delete(self, path: str, zxid: int) -> None:
        node = self.nodes.pop(path, None)
        if node is None:
            return
        parent_path, name = _parent(path)
        parent = self.nodes.get(parent_path)
        if parent is not None:
            parent.children.discard(name)
            if zxid > parent.pzxid:
                parent.pzxid = zxid

    def finish(self, keep_ephemerals: bool) -> ImportedTree:
        """The tree without sessions: session ephemerals are dropped (their sessions cannot be
        resumed on zkfsd) or, with keep_ephemerals, kept as persistent nodes."""
        ephemerals = sorted(p for p, n in self.nodes.items()
                            if _is_session_ephemeral(n.ephemeral_owner))
        for path in ephemerals:
            if keep_ephemerals:
                self.nodes[path].ephemeral_owner = 0
            else:
                node = self.nodes.pop(path)
                assert not node.children  # ZooKeeper never lets an ephemeral have children
                parent_path, name = _parent(path)
                self.nodes[parent_path].children.discard(name)
        return ImportedTree(self.nodes, self.last_zxid, self.snapshot_zxid, self.replayed,
                            ephemerals)


# -- files ------------------------------------------------------------------------------------------

def version2_dir(path: str | os.PathLike[str]) -> Path | None:
    """`path/version-2` if path is a ZooKeeper data directory (or version-2 itself)."""
    p = Path(path)
    if p.name == "version-2" and p.is_dir():
        return p
    if (p / "version-2").is_dir():
        return p / "version-2"
    return None


def is_zookeeper_dir(path: str | os.PathLike[str]) -> bool:
    return version2_dir(path) is not None


def _zxid_files(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    out = []
    for entry in directory.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_file():
            out.append((int(m.group(1), 16), entry))
    return sorted(out)


def _snapshot_bytes(path: Path) -> bytes:
    # SnapStream checksums the uncompressed stream, so a gz snapshot parses like a plain one.
    if path.name.endswith(".snappy"):
        raise ZkImportError("snappy-compressed snapshots are not supported; restart ZooKeeper "
                            "without zookeeper.snapshot.compression.method to write a plain one")
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def load_zookeeper_dir(data_dir: str | os.PathLike[str],
                       log_dir: str | os.PathLike[str] | None = None, *,
                       keep_ephemerals: bool = False) -> ImportedTree:
    """Newest readable snapshot in data_dir/version-2 plus every later transaction in the logs
    (log_dir/version-2, ZooKeeper's dataLogDir, defaults to data_dir)."""
    snap_dir = version2_dir(data_dir)
    if snap_dir is None:
        raise ZkImportError(f"{data_dir}: no version-2 directory (not a ZooKeeper dataDir)")
    txn_dir = version2_dir(log_dir) if log_dir is not None else snap_dir
    if txn_dir is None:
        raise ZkImportError(f"{log_dir}: no version-2 directory (not a ZooKeeper dataLogDir)")
    builder: ZkTreeBuilder | None = None
    problems = []
    for zxid, path in reversed(_zxid_files(snap_dir, _SNAP_RE)):
        try:
            sessions, nodes = read_snapshot(_snapshot_bytes(path))
        except (ZkImportError, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        builder = ZkTreeBuilder(sessions, nodes, zxid)
        break
    if builder is None:
        # ZooKeeper writes snapshot.0 when it first starts, so there is always one.
        raise ZkImportError(f"{snap_dir}: no readable snapshot"
                            + (f" ({'; '.join(problems)})" if problems else ""))
    logs = _zxid_files(txn_dir, _LOG_RE)
    # The newest log starting at or before the snapshot may hold transactions after it.
    first = max((i for i, (start, _) in enumerate(logs) if start <= builder.snapshot_zxid),
                default=0)
    for _, path in logs[first:]:
        for txn in read_txn_log(path.read_bytes()):
            builder.apply(txn)
    return builder.finish(keep_ephemerals)


# -- writing zkfsd's data directory -----------------------------------------------------------------

def write_zkfsd_data_dir(imported: ImportedTree, data_dir: str | os.PathLike[str],
                         log_dir: str | os.PathLike[str] | None = None) -> int:
    """Store `imported` as zkfsd's first snapshot in a fresh data directory; returns the Raft
    term it starts at.

    zkfsd's zxids are (term << 32 | log index). The snapshot's term is one past the imported
    last zxid's epoch, so every zxid zkfsd hands out afterwards is above every imported one
    (clients refuse a server whose zxid is behind what they have seen)."""
    from zkfsd.consensus import HardState, Snapshot
    from zkfsd.storage import Storage
    from zkfsd.tree import DataTree

    rows = [(path, n.data, n.acl, n.czxid, n.mzxid, n.ctime, n.mtime, n.version, n.cversion,
             n.aversion, n.ephemeral_owner, n.pzxid)
            for path, n in sorted(imported.nodes.items())]
    tree = DataTree.from_nodes(imported.last_zxid, {}, rows)
    term = (imported.last_zxid >> 32) + 1
    storage = Storage(data_dir, log_dir)
    try:
        storage.load()
        storage.save_snapshot(Snapshot(1, term, tree.snapshot()))
        storage.set_hard_state(HardState(term, 0, 1))
        storage.sync()
    finally:
        storage.close()
    return term
