"""The znode tree state machine: every op, every error and its precedence, every Stat field.

Expected values come from ZooKeeper 3.8's PrepRequestProcessor and DataTree.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkfs.constants import (CONTAINER_EPHEMERAL_OWNER, MAX_DATA, MAX_TTL, TTL_EPHEMERAL_OWNER_MASK,
                            CreateMode, Err, EventType, OpCode, Perm)
from zkfsd.tree import (ApplyResult, DataTree, SessionInfo, Stat, check_acl, digest_auth_id,
                        validate_path)
from zkfsd.txns import Check, Txn, TxnDecodeError, decode, encode, from_legacy

OPEN = [[31, "world", "anyone"]]
ALICE = digest_auth_id("alice", "secret")
BOB = digest_auth_id("bob", "hunter2")
CREATED, DELETED, DATA, CHILDREN = (EventType.NODE_CREATED, EventType.NODE_DELETED,
                                    EventType.NODE_DATA_CHANGED, EventType.NODE_CHILDREN_CHANGED)


def typed(fields: dict[str, Any], *, through_log: bool = False) -> Txn:
    """The typed transaction for a map in the old untyped layout (how these tests spell them);
    `through_log`: also through the log encoding and back, as members read it. (Some tests
    apply paths no client could send, e.g. with lone surrogates, which msgpack cannot encode.)"""
    txn = from_legacy(fields)
    return decode(encode(txn)) if through_log else txn


class Log:
    """Applies transactions with increasing zxid (1, 2, ...) and time (1010, 1020, ...)."""

    def __init__(self, tree: DataTree | None = None) -> None:
        self.tree = tree if tree is not None else DataTree()
        self.zxid = 0
        self.time = 1000

    def txn(self, op: int, **fields: Any) -> Txn:
        self.time += 10
        return typed({"type": int(op), "time": self.time, "session": fields.pop("session", 0),
                      "auth": fields.pop("auth", []), **fields})

    def apply(self, op: int, **fields: Any) -> ApplyResult:
        txn = self.txn(op, **fields)
        self.zxid += 1
        return self.tree.apply(txn, self.zxid)

    def create(self, path: str, data: bytes | None = b"", acl: Any = None, flags: int = 0,
               op: int = OpCode.CREATE2, **kw: Any) -> ApplyResult:
        return self.apply(op, path=path, data=data, acl=OPEN if acl is None else acl,
                          flags=int(flags), **kw)

    def delete(self, path: str, version: int = -1, **kw: Any) -> ApplyResult:
        return self.apply(OpCode.DELETE, path=path, version=version, **kw)

    def set_data(self, path: str, data: bytes | None, version: int = -1, **kw: Any) -> ApplyResult:
        return self.apply(OpCode.SET_DATA, path=path, data=data, version=version, **kw)

    def set_acl(self, path: str, acl: Any, version: int = -1, **kw: Any) -> ApplyResult:
        return self.apply(OpCode.SET_ACL, path=path, acl=acl, version=version, **kw)

    def check(self, path: str, version: int, **kw: Any) -> ApplyResult:
        return self.apply(OpCode.CHECK, path=path, version=version, **kw)

    def multi(self, *ops: dict[str, Any], **kw: Any) -> ApplyResult:
        return self.apply(OpCode.MULTI, ops=list(ops), **kw)

    def session(self, sid: int, timeout: int = 30000, password: bytes = b"pw") -> ApplyResult:
        return self.apply(OpCode.CREATE_SESSION, session=sid, timeout=timeout, password=password)

    def close(self, sid: int) -> ApplyResult:
        return self.apply(OpCode.CLOSE_SESSION, session=sid)

    def stat(self, path: str) -> Stat:
        node = self.tree.get(path)
        assert node is not None, path
        return node.stat()


def c_op(path: str, data: bytes | None = b"", flags: int = 0, op: int = OpCode.CREATE2,
         acl: Any = None) -> dict[str, Any]:
    return {"type": int(op), "path": path, "data": data, "acl": OPEN if acl is None else acl,
            "flags": int(flags)}


def d_op(path: str, version: int = -1) -> dict[str, Any]:
    return {"type": int(OpCode.DELETE), "path": path, "version": version}


def s_op(path: str, data: bytes | None, version: int = -1) -> dict[str, Any]:
    return {"type": int(OpCode.SET_DATA), "path": path, "data": data, "version": version}


def k_op(path: str, version: int) -> dict[str, Any]:
    return {"type": int(OpCode.CHECK), "path": path, "version": version}


@pytest.fixture
def log() -> Log:
    return Log()


def unchanged_by(log: Log, result_fn: Any) -> ApplyResult:
    """Run a failing txn and check it changed nothing but last_zxid."""
    before = log.tree.snapshot()
    result = result_fn()
    assert result.events == []
    assert log.tree.last_zxid == log.zxid
    restored = DataTree.from_snapshot(before)
    restored.last_zxid = log.zxid
    assert restored.snapshot() == log.tree.snapshot()
    return result


# -- the initial tree ----------------------------------------------------------------------------

def test_initial_tree_matches_zookeeper() -> None:
    tree = DataTree()
    zero = Stat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert tree.get("/").stat() == zero._replace(num_children=1)
    assert tree.get("/zookeeper").stat() == zero._replace(num_children=2)
    assert tree.get("/zookeeper/quota").stat() == zero
    # addConfigNode sets its ACL with version -1, which lands in aversion.
    assert tree.get("/zookeeper/config").stat() == zero._replace(aversion=-1)
    assert tree.get("/").data == b""
    assert tree.get("/").acl == [(31, "world", "anyone")]
    assert tree.get("/zookeeper").acl == [(31, "world", "anyone")]
    assert tree.get("/zookeeper/config").acl == [(1, "world", "anyone")]
    assert tree.children("/") == ["zookeeper"]
    assert tree.children("/zookeeper") == ["config", "quota"]
    assert tree.children("/nope") == []
    assert tree.get("/nope") is None
    assert tree.node_count == 5  # ZooKeeper counts the '' alias of the root
    builtin = ("/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config")
    assert tree.approximate_data_size == sum(map(len, builtin))
    assert tree.count_descendants("/") == 3
    assert tree.count_descendants("/zookeeper") == 2
    assert tree.last_zxid == 0
    assert tree.sessions == {}


# -- create --------------------------------------------------------------------------------------

def test_create_stats_events_and_value(log: Log) -> None:
    result = log.create("/a", b"hello")
    child = Stat(czxid=1, mzxid=1, ctime=1010, mtime=1010, version=0, cversion=0, aversion=0,
                 ephemeral_owner=0, data_length=5, num_children=0, pzxid=1)
    assert result == ApplyResult(Err.OK, ("/a", child), [(CREATED, "/a"), (CHILDREN, "/")])
    assert log.stat("/a") == child
    assert log.tree.get("/a").data == b"hello"
    assert log.tree.get("/a").acl == [(31, "world", "anyone")]
    assert log.stat("/") == Stat(0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1)
    assert log.tree.last_zxid == 1

    log.create("/a/b", b"", op=OpCode.CREATE)
    assert log.stat("/a") == child._replace(cversion=1, num_children=1, pzxid=2)
    assert log.stat("/") == Stat(0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1)  # grandparent untouched
    assert log.tree.children("/a") == ["b"]
    assert log.tree.node_count == 7
    assert log.tree.approximate_data_size == 44 + len("/a") + 5 + len("/a/b")


def test_null_and_empty_data_stay_apart(log: Log) -> None:
    log.create("/null", None)
    log.create("/empty", b"")
    assert log.tree.get("/null").data is None
    assert log.tree.get("/empty").data == b""
    assert log.stat("/null").data_length == log.stat("/empty").data_length == 0
    log.set_data("/empty", None)
    log.set_data("/null", b"")
    assert log.tree.get("/empty").data is None
    assert log.tree.get("/null").data == b""
    restored = DataTree.from_snapshot(log.tree.snapshot())
    assert restored.get("/empty").data is None
    assert restored.get("/null").data == b""


def test_data_accepts_bytearray(log: Log) -> None:
    assert log.create("/a", bytearray(b"xy")).err == Err.OK
    assert log.tree.get("/a").data == b"xy" and type(log.tree.get("/a").data) is bytes


def test_sequential_numbering_counts_creates_only(log: Log) -> None:
    log.create("/s")
    assert log.create("/s/x-", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/s/x-0000000000"
    assert log.create("/s/plain").err == Err.OK  # every create bumps cversion, sequential or not
    assert log.create("/s/x-", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/s/x-0000000002"
    before = log.stat("/s")
    assert log.delete("/s/x-0000000002").err == Err.OK
    # DataTree.deleteNode moves pzxid but leaves cversion: deletes do not burn numbers.
    assert log.stat("/s") == before._replace(num_children=2, pzxid=log.zxid)
    assert log.stat("/s").cversion == 3
    assert log.create("/s/x-", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/s/x-0000000003"
    # A sequential path may end in '/': the name is then just the counter.
    assert log.create("/s/", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/s/0000000004"
    assert log.create("/", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/0000000001"
    assert log.tree.children("/s") == ["0000000004", "plain", "x-0000000000", "x-0000000003"]


def test_sequential_collision_is_node_exists(log: Log) -> None:
    log.create("/s")
    log.create("/s/n0000000001")  # cversion is now 1, so the next sequential name is taken
    result = unchanged_by(log, lambda: log.create("/s/n", flags=CreateMode.PERSISTENT_SEQUENTIAL))
    assert result.err == Err.NODE_EXISTS
    assert log.stat("/s").cversion == 1
    assert log.create("/s/m", flags=CreateMode.PERSISTENT_SEQUENTIAL).value[0] == "/s/m0000000001"


def test_create_ephemeral_needs_live_session(log: Log) -> None:
    assert log.create("/e", flags=CreateMode.EPHEMERAL, session=7).err == Err.SESSION_EXPIRED
    log.session(7)
    result = log.create("/e", flags=CreateMode.EPHEMERAL, session=7)
    assert result.err == Err.OK and result.value[1].ephemeral_owner == 7
    result = log.create("/e-", flags=CreateMode.EPHEMERAL_SEQUENTIAL, session=7)
    assert result.value[0] == "/e-0000000001"
    assert log.tree.ephemerals(7) == ["/e", "/e-0000000001"]


def test_create_container_and_ttl_owners(log: Log) -> None:
    result = log.create("/c", op=OpCode.CREATE_CONTAINER, flags=CreateMode.CONTAINER)
    assert result.value[1].ephemeral_owner == CONTAINER_EPHEMERAL_OWNER
    result = log.create("/t", op=OpCode.CREATE_TTL, flags=CreateMode.PERSISTENT_WITH_TTL, ttl=500)
    assert result.value[1].ephemeral_owner == TTL_EPHEMERAL_OWNER_MASK | 500
    assert result.value[1].ephemeral_owner == -0x0100000000000000 + 500  # 0xff000000000001f4
    result = log.create("/t-", op=OpCode.CREATE_TTL, ttl=MAX_TTL,
                        flags=CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL)
    assert result.value[0] == "/t-0000000002"
    assert result.value[1].ephemeral_owner == TTL_EPHEMERAL_OWNER_MASK | MAX_TTL
    # Children are fine under containers and TTL nodes (they are not session ephemerals).
    assert log.create("/c/x").err == Err.OK
    assert log.create("/t/x").err == Err.OK
    # The txn type decides the node kind, as in DataTree.processTxn.
    result = log.create("/p", op=OpCode.CREATE, flags=CreateMode.CONTAINER)
    assert result.value[1].ephemeral_owner == 0


@pytest.mark.parametrize("op, flags, ttl", [
    (OpCode.CREATE, 99, None),                                    # unknown CreateMode
    (OpCode.CREATE, CreateMode.PERSISTENT_WITH_TTL, None),         # TTL flags need createTTL
    (OpCode.CREATE2, CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL, None),
    (OpCode.CREATE_CONTAINER, CreateMode.PERSISTENT_WITH_TTL, None),
    (OpCode.CREATE_TTL, CreateMode.PERSISTENT_WITH_TTL, 0),
    (OpCode.CREATE_TTL, CreateMode.PERSISTENT_WITH_TTL, -5),
    (OpCode.CREATE_TTL, CreateMode.PERSISTENT_WITH_TTL, MAX_TTL + 1),
    (OpCode.CREATE_TTL, CreateMode.PERSISTENT, 100),               # ttl for a non-TTL mode
    (OpCode.CREATE_TTL, CreateMode.PERSISTENT, -1),
])
def test_create_bad_mode_or_ttl(log: Log, op: int, flags: int, ttl: int | None) -> None:
    extra = {} if ttl is None else {"ttl": ttl}
    # Precedes even the ACL check: an empty ACL would otherwise be InvalidACL.
    result = unchanged_by(log, lambda: log.create("/x", op=op, flags=flags, acl=[], **extra))
    assert result.err == Err.BAD_ARGUMENTS


def test_create_check_order(log: Log) -> None:
    log.create("/locked", acl=[[Perm.ALL & ~Perm.CREATE, "world", "anyone"]])
    log.create("/open")
    log.session(9)
    log.create("/eph", flags=CreateMode.EPHEMERAL, session=9)
    cases = [
        # (path, acl, auth, expected)
        ("relative", [], [], Err.BAD_ARGUMENTS),        # no '/': before the ACL check
        ("/open/a\0b", [], [], Err.BAD_ARGUMENTS),      # NUL: before the ACL check
        ("/missing/x", [], [], Err.INVALID_ACL),        # ACL before parent lookup
        ("/missing/x", OPEN, [], Err.NO_NODE),
        ("/missing/./x", OPEN, [], Err.NO_NODE),        # full path check comes later
        ("/open//x", OPEN, [], Err.NO_NODE),            # parent '/open/' does not exist
        ("/locked/x", OPEN, [], Err.NO_AUTH),
        ("/locked/", OPEN, [], Err.NO_AUTH),            # no CREATE beats the bad path
        ("/open/", OPEN, [], Err.BAD_ARGUMENTS),        # trailing '/' on a non-sequential path
        ("/open/.", OPEN, [], Err.BAD_ARGUMENTS),
        ("/open/..", OPEN, [], Err.BAD_ARGUMENTS),
        ("/open/a\x01", OPEN, [], Err.BAD_ARGUMENTS),
        ("/open/a\ud800", OPEN, [], Err.BAD_ARGUMENTS),
        ("/open/\U0001f600", OPEN, [], Err.BAD_ARGUMENTS),
        ("/open", OPEN, [], Err.NODE_EXISTS),
        ("/", OPEN, [], Err.NODE_EXISTS),
        ("/eph/x", OPEN, [], Err.NO_CHILDREN_FOR_EPHEMERALS),
        ("/eph", OPEN, [], Err.NODE_EXISTS),            # exists beats ephemeral parent
    ]
    for path, acl, auth, expected in cases:
        result = unchanged_by(log, lambda: log.create(path, acl=acl, auth=auth))
        assert result.err == expected, (path, acl, result)


def test_create_data_size_is_checked_last(log: Log) -> None:
    log.session(3)
    log.create("/eph", flags=CreateMode.EPHEMERAL, session=3)
    big = b"x" * (MAX_DATA + 1)
    assert log.create("/eph", big).err == Err.NODE_EXISTS
    assert log.create("/eph/x", big).err == Err.NO_CHILDREN_FOR_EPHEMERALS
    assert unchanged_by(log, lambda: log.create("/big", big)).err == Err.BAD_ARGUMENTS
    assert log.create("/max", b"x" * MAX_DATA).err == Err.OK


def test_failed_txn_sets_last_zxid_only(log: Log) -> None:
    log.create("/a")
    before = log.stat("/")
    result = log.create("/a")
    assert result == ApplyResult(Err.NODE_EXISTS, None, [])
    assert log.tree.last_zxid == 2
    assert log.stat("/") == before
    # The zxid comes from the caller (the log position), failed or not.
    assert log.tree.apply(Txn(Check("/nope")), 50).err == Err.NO_NODE
    assert log.tree.last_zxid == 50


def test_malformed_txn_never_reaches_the_tree(log: Log) -> None:
    # Types are checked once, when a transaction is decoded; the tree sees typed records only.
    with pytest.raises(TxnDecodeError, match="data"):
        log.apply(OpCode.CREATE2, path="/a", acl=OPEN, data="str")
    with pytest.raises(TxnDecodeError, match="lacks a field"):
        log.apply(OpCode.SET_DATA, data=b"")
    with pytest.raises(TxnDecodeError, match="unknown transaction kind 999"):
        log.apply(999)
    assert log.zxid == 0 and log.tree.last_zxid == 0


# -- ACLs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("acl, auth", [
    ([], []),
    # sasl and x509 ids are valid (as with ZooKeeper's providers configured), empty ones not.
    ([[31, "sasl", ""]], []),
    ([[31, "x509", ""]], []),
    ([[31, "world", "bob"]], []),
    ([[31, "digest", "nocolon"]], []),
    ([[31, "digest", "user:"]], []),
    ([[31, "digest", "a:b:c"]], []),
    ([[31, "ip", "1.2.3"]], []),
    ([[31, "ip", "1.2.3.256"]], []),
    ([[31, "ip", "1.2.3.4/33"]], []),
    ([[31, "ip", "1.2.3.4/x"]], []),
    ([[31, "auth", ""]], []),
    ([[31, "auth", ""]], [["ip", "127.0.0.1"]]),       # ip ids are not "authenticated"
    ([[31, "auth", ""]], [["super", ""]]),
    ([[31, "world", "anyone"], [31, "bogus", "x"]], []),
])
def test_invalid_acls(log: Log, acl: Any, auth: Any) -> None:
    assert unchanged_by(log, lambda: log.create("/x", acl=acl, auth=auth)).err == Err.INVALID_ACL
    log.create("/y")
    assert unchanged_by(log, lambda: log.set_acl("/y", acl, auth=auth)).err == Err.INVALID_ACL


@pytest.mark.parametrize("acl", [[["31", "world", "anyone"]], [[31, "world"]], "world"])
def test_malformed_acls_do_not_decode(log: Log, acl: Any) -> None:
    with pytest.raises(TxnDecodeError, match="acl"):
        log.create("/x", acl=acl)
    log.create("/y")
    with pytest.raises(TxnDecodeError, match="acl"):
        log.set_acl("/y", acl)


def test_acl_fixup_dedups_and_expands_auth(log: Log) -> None:
    auth = [["ip", "10.1.2.3"], ["digest", ALICE], ["digest", BOB]]
    acl = [[Perm.READ, "world", "anyone"], [Perm.READ, "world", "anyone"], [Perm.ALL, "auth", ""],
           [Perm.WRITE, "ip", "10.0.0.0/8"], [3, "digest", ":x"]]
    assert log.create("/a", acl=acl, auth=auth).err == Err.OK
    assert log.tree.get("/a").acl == [(1, "world", "anyone"), (31, "digest", ALICE),
                                      (31, "digest", BOB), (2, "ip", "10.0.0.0/8"),
                                      (3, "digest", ":x")]


def test_check_acl() -> None:
    acl = [(Perm.READ, "world", "anyone"), (Perm.WRITE | Perm.DELETE, "digest", ALICE),
           (Perm.ADMIN, "ip", "192.168.0.0/16"), (Perm.CREATE, "ip", "10.0.0.7"),
           (Perm.CREATE, "ip", "fe80::/10")]
    assert check_acl(acl, Perm.READ, [])
    assert not check_acl(acl, Perm.WRITE, [])
    assert check_acl(acl, Perm.WRITE, [("digest", ALICE)])
    assert check_acl(acl, Perm.DELETE, [["digest", ALICE]])
    assert not check_acl(acl, Perm.WRITE, [("digest", BOB)])
    assert not check_acl(acl, Perm.ADMIN, [("digest", ALICE)])
    assert check_acl(acl, Perm.ADMIN, [("ip", "192.168.44.1")])
    assert not check_acl(acl, Perm.ADMIN, [("ip", "192.169.0.1")])
    assert check_acl(acl, Perm.CREATE, [("ip", "10.0.0.7")])
    assert not check_acl(acl, Perm.CREATE, [("ip", "10.0.0.8")])
    assert check_acl(acl, Perm.CREATE, [("ip", "fe80::1")])
    assert not check_acl(acl, Perm.CREATE, [("ip", "::1")])
    assert not check_acl(acl, Perm.ADMIN, [("digest", "192.168.1.1")])  # scheme must match
    assert check_acl(acl, Perm.ADMIN, [("super", "")])
    assert check_acl([], Perm.ADMIN, [])  # an empty ACL allows everything
    assert check_acl([(31, "ip", "0.0.0.0/0")], Perm.READ, [("ip", "8.8.8.8")])


def test_digest_auth_id() -> None:
    # The example from ZooKeeper's administrator guide (superDigest for super:admin).
    assert digest_auth_id("super", "admin") == "super:xQJmxLMiHGwaqBvst5y6rkB6HQs="


def test_acl_enforced_per_op(log: Log) -> None:
    mine = [[Perm.ALL, "digest", ALICE], [Perm.READ, "world", "anyone"]]
    me, other = [["digest", ALICE]], [["digest", BOB]]
    log.create("/p", acl=mine, auth=me)
    assert log.create("/p/c", auth=other).err == Err.NO_AUTH
    assert log.create("/p/c", auth=me).err == Err.OK
    assert log.set_data("/p", b"x", auth=other).err == Err.NO_AUTH
    assert log.set_data("/p", b"x", auth=me).err == Err.OK
    assert log.delete("/p/c", auth=other).err == Err.NO_AUTH  # DELETE is checked on the parent
    assert log.set_acl("/p", OPEN, auth=other).err == Err.NO_AUTH
    assert log.check("/p", -1, auth=other).err == Err.OK  # world has READ
    log.set_acl("/p/c", [[Perm.WRITE, "world", "anyone"]], auth=me)
    assert log.check("/p/c", -1, auth=me).err == Err.NO_AUTH  # check needs READ
    assert log.delete("/p/c", auth=me).err == Err.OK
    assert log.set_acl("/p", OPEN, auth=[["super", ""]]).err == Err.OK


# -- delete --------------------------------------------------------------------------------------

def test_delete_stats_and_events(log: Log) -> None:
    log.create("/a")
    log.create("/a/b")
    parent = log.stat("/a")
    result = log.delete("/a/b", version=0)
    assert result == ApplyResult(Err.OK, None, [(DELETED, "/a/b"), (CHILDREN, "/a")])
    assert log.stat("/a") == parent._replace(num_children=0, pzxid=3)
    assert log.tree.get("/a/b") is None
    assert log.tree.node_count == 6
    assert log.tree.approximate_data_size == 44 + 2
    assert log.delete("/a").events == [(DELETED, "/a"), (CHILDREN, "/")]
    assert log.stat("/") == Stat(0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 4)


def test_delete_check_order(log: Log) -> None:
    log.create("/locked", acl=[[Perm.ALL & ~Perm.DELETE, "world", "anyone"]])
    log.create("/locked/x")
    log.create("/a")
    log.create("/a/b")
    log.set_data("/a", b"v1")
    log.create("/zookeeper/mine")
    cases = [
        ("/", -1, Err.BAD_ARGUMENTS),
        ("/zookeeper", -1, Err.BAD_ARGUMENTS),
        ("/zookeeper/quota", -1, Err.BAD_ARGUMENTS),
        ("/zookeeper/config", -1, Err.BAD_ARGUMENTS),
        ("rel", -1, Err.BAD_ARGUMENTS),
        ("/a\0", -1, Err.BAD_ARGUMENTS),
        ("/missing/x", -1, Err.NO_NODE),
        ("/locked/nope", -1, Err.NO_AUTH),   # DELETE on the parent is checked before lookup
        ("/locked/x", -1, Err.NO_AUTH),
        ("/a/", -1, Err.NO_NODE),           # no full path validation for delete
        ("/a/nope", -1, Err.NO_NODE),
        ("/a", 0, Err.BAD_VERSION),         # version before children
        ("/a", -1, Err.NOT_EMPTY),
        ("/a", 1, Err.NOT_EMPTY),
    ]
    for path, version, expected in cases:
        result = unchanged_by(log, lambda: log.delete(path, version))
        assert result.err == expected, (path, version, result)
    assert log.delete("/zookeeper/mine").err == Err.OK


# -- setData / setACL / check ---------------------------------------------------------------------

def test_set_data(log: Log) -> None:
    log.create("/a", b"one")
    created = log.stat("/a")
    result = log.set_data("/a", b"three", version=0)
    stat = created._replace(mzxid=2, mtime=1020, version=1, data_length=5)
    assert result == ApplyResult(Err.OK, stat, [(DATA, "/a")])
    assert log.tree.approximate_data_size == 44 + 2 + 5
    assert log.stat("/") == Stat(0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1)  # parent untouched
    assert unchanged_by(log, lambda: log.set_data("/a", b"x", version=0)).err == Err.BAD_VERSION
    assert unchanged_by(log, lambda: log.set_data("/nope", b"x")).err == Err.NO_NODE
    assert unchanged_by(log, lambda: log.set_data("/a/", b"x")).err == Err.BAD_ARGUMENTS
    assert unchanged_by(log, lambda: log.set_data("/./a", b"x")).err == Err.BAD_ARGUMENTS
    assert unchanged_by(log, lambda: log.set_data("/a", b"x" * (MAX_DATA + 1))).err \
        == Err.BAD_ARGUMENTS
    assert log.set_data("/a", b"x" * MAX_DATA).err == Err.OK
    log.set_acl("/a", [[Perm.READ, "world", "anyone"]])
    # WRITE is checked before the version.
    assert unchanged_by(log, lambda: log.set_data("/a", b"x", version=99)).err == Err.NO_AUTH
    assert log.set_data("/", b"root").value.version == 1


def test_set_acl(log: Log) -> None:
    log.create("/a")
    created = log.stat("/a")
    result = log.set_acl("/a", [[Perm.ALL, "digest", ALICE]], version=0)
    assert result == ApplyResult(Err.OK, created._replace(aversion=1), [])
    assert log.tree.get("/a").acl == [(31, "digest", ALICE)]
    assert unchanged_by(log, lambda: log.set_acl("/a", OPEN, auth=[["digest", ALICE]],
                                                 version=0)).err == Err.BAD_VERSION
    assert unchanged_by(log, lambda: log.set_acl("/a", OPEN, version=1)).err == Err.NO_AUTH
    assert unchanged_by(log, lambda: log.set_acl("/nope", OPEN)).err == Err.NO_NODE
    assert unchanged_by(log, lambda: log.set_acl("/nope", [])).err == Err.INVALID_ACL  # ACL first
    assert unchanged_by(log, lambda: log.set_acl("nope", [])).err == Err.BAD_ARGUMENTS
    assert log.set_acl("/a", OPEN, auth=[["digest", ALICE]], version=1).value.aversion == 2
    assert log.stat("/a") == created._replace(aversion=2)  # no zxid or mtime change
    # /zookeeper/config is world-readable only, and starts at aversion -1.
    assert log.set_acl("/zookeeper/config", OPEN).err == Err.NO_AUTH
    assert log.set_acl("/zookeeper/config", OPEN, auth=[["super", ""]]).value.aversion == 0


def test_check(log: Log) -> None:
    log.create("/a")
    log.set_data("/a", b"x")
    assert log.check("/a", 1) == ApplyResult(Err.OK, None, [])
    assert log.check("/a", -1).err == Err.OK
    assert unchanged_by(log, lambda: log.check("/a", 0)).err == Err.BAD_VERSION
    assert unchanged_by(log, lambda: log.check("/nope", 0)).err == Err.NO_NODE
    assert unchanged_by(log, lambda: log.check("/a/", 0)).err == Err.BAD_ARGUMENTS


def test_versions_wrap_like_java_ints(log: Log) -> None:
    log.create("/a")
    node = log.tree.get("/a")
    node.version = 2**31 - 1
    assert log.set_data("/a", b"").value.version == -2**31
    node.version = -2
    assert log.set_data("/a", b"").value.version == 0  # never -1, which means "any"


# -- multi ---------------------------------------------------------------------------------------

def test_multi_success(log: Log) -> None:
    log.create("/a", b"v0")
    log.create("/gone")
    result = log.multi(c_op("/a/b", b"1"), c_op("/a/s-", None, CreateMode.PERSISTENT_SEQUENTIAL),
                       s_op("/a", b"v1", 0), k_op("/a", 1), d_op("/gone", 0),
                       c_op("/a/b/c", op=OpCode.CREATE))
    assert result.err == Err.OK
    z = log.zxid
    b_stat = Stat(z, z, 1030, 1030, 0, 0, 0, 0, 1, 0, z)
    assert result.value == [
        (OpCode.CREATE2, Err.OK, ("/a/b", b_stat)),
        (OpCode.CREATE2, Err.OK, ("/a/s-0000000001", b_stat._replace(data_length=0))),
        (OpCode.SET_DATA, Err.OK, Stat(1, z, 1010, 1030, 1, 2, 0, 0, 2, 2, z)),
        (OpCode.CHECK, Err.OK, None),
        (OpCode.DELETE, Err.OK, None),
        (OpCode.CREATE, Err.OK, ("/a/b/c", b_stat._replace(data_length=0))),
    ]
    assert result.events == [
        (CREATED, "/a/b"), (CHILDREN, "/a"), (CREATED, "/a/s-0000000001"), (CHILDREN, "/a"),
        (DATA, "/a"), (DELETED, "/gone"), (CHILDREN, "/"), (CREATED, "/a/b/c"), (CHILDREN, "/a/b"),
    ]
    assert log.stat("/a/b") == b_stat._replace(cversion=1, num_children=1)
    assert log.tree.last_zxid == z


def test_multi_failure_changes_nothing(log: Log) -> None:
    log.session(5)
    log.create("/a", b"v0")
    log.create("/gone")
    log.create("/c", op=OpCode.CREATE_CONTAINER)
    ops = [c_op("/a/b"), c_op("/a/b/c"), c_op("/e", flags=CreateMode.EPHEMERAL),
           c_op("/c/x"), c_op("/t", op=OpCode.CREATE_TTL, flags=CreateMode.PERSISTENT_WITH_TTL),
           s_op("/a", b"v1"), d_op("/gone"), k_op("/a", 1), c_op("/a/s-", flags=2),
           d_op("/a/b", version=5), s_op("/a", b"never")]
    ops[4]["ttl"] = 10
    result = unchanged_by(log, lambda: log.multi(*ops, session=5))
    assert result.err == Err.OK  # failures are reported inside the results
    assert result.value == [(OpCode.ERROR, Err.OK, None)] * 9 + [
        (OpCode.ERROR, Err.BAD_VERSION, None), (OpCode.ERROR, Err.RUNTIME_INCONSISTENCY, None)]
    assert log.tree.ephemerals(5) == []
    assert log.tree.reapable(10**15) == []
    assert log.tree.node_count == 8 and log.tree.approximate_data_size == 44 + 4 + 5 + 2
    # The rolled-back creates did not consume sequence numbers.
    assert log.create("/a/s-", flags=2).value[0] == "/a/s-0000000000"


def test_multi_first_op_fails(log: Log) -> None:
    result = unchanged_by(log, lambda: log.multi(d_op("/nope"), c_op("/x")))
    assert result.value == [(OpCode.ERROR, Err.NO_NODE, None),
                            (OpCode.ERROR, Err.RUNTIME_INCONSISTENCY, None)]


def test_multi_sees_its_own_changes(log: Log) -> None:
    result = log.multi(c_op("/a"), d_op("/a"), c_op("/a", b"again"), k_op("/a", 0))
    assert [r[1] for r in result.value] == [Err.OK] * 4
    assert log.tree.get("/a").data == b"again"
    assert log.stat("/").cversion == 2  # two creates, the delete does not count
    result = unchanged_by(log, lambda: log.multi(d_op("/a"), d_op("/a")))
    assert result.value == [(OpCode.ERROR, Err.OK, None), (OpCode.ERROR, Err.NO_NODE, None)]


def test_multi_edge_cases(log: Log) -> None:
    assert log.multi() == ApplyResult(Err.OK, [], [])
    # ZooKeeper's multi holds create/delete/setData/check only (handlers.write_txn answers
    # UNIMPLEMENTED); a log entry with anything else, or a sub-op missing a field, does not
    # decode.
    bad = {"type": int(OpCode.SET_ACL), "path": "/", "acl": OPEN, "version": -1}
    with pytest.raises(TxnDecodeError, match="in a multi"):
        log.multi(c_op("/x"), bad)
    with pytest.raises(TxnDecodeError):
        log.multi(c_op("/x"), {"type": int(OpCode.DELETE)})
    # Sub-ops take identity and auth from the multi, not from their own fields.
    log.create("/p", acl=[[31, "digest", ALICE]], auth=[["digest", ALICE]])
    sneaky = {**c_op("/p/x"), "auth": [["super", ""]]}
    assert log.multi(sneaky).value == [(OpCode.ERROR, Err.NO_AUTH, None)]
    assert log.multi(c_op("/p/x"), auth=[["digest", ALICE]]).value[0][1] == Err.OK


# -- sessions and ephemerals ---------------------------------------------------------------------

def test_sessions_and_close(log: Log) -> None:
    assert log.session(0x100, 4000, b"secret") == ApplyResult(Err.OK, None, [])
    assert log.tree.sessions == {0x100: SessionInfo(4000, b"secret")}
    log.session(0x200)
    log.create("/d")
    log.create("/d/e2", flags=CreateMode.EPHEMERAL, session=0x100)
    log.create("/e1", flags=CreateMode.EPHEMERAL, session=0x100)
    log.create("/d/other", flags=CreateMode.EPHEMERAL, session=0x200)
    assert log.tree.ephemerals(0x100) == ["/d/e2", "/e1"]
    assert log.tree.ephemerals(0x100, "/d") == ["/d/e2"]
    assert log.tree.ephemerals(0x100, "") == ["/d/e2", "/e1"]
    assert log.tree.ephemerals(0x999) == []
    assert log.create("/e1/x").err == Err.NO_CHILDREN_FOR_EPHEMERALS
    d_before = log.stat("/d")
    result = log.close(0x100)
    assert result == ApplyResult(Err.OK, ["/d/e2", "/e1"], [
        (DELETED, "/d/e2"), (CHILDREN, "/d"), (DELETED, "/e1"), (CHILDREN, "/")])
    assert log.tree.get("/e1") is None and log.tree.get("/d/e2") is None
    assert log.stat("/d") == d_before._replace(num_children=1, pzxid=log.zxid)
    assert log.tree.ephemerals(0x100) == []
    assert list(log.tree.sessions) == [0x200]
    assert log.close(0x100) == ApplyResult(Err.OK, [], [])
    assert log.tree.last_zxid == log.zxid
    # Session ephemerals deleted explicitly leave the index too.
    assert log.delete("/d/other").err == Err.OK
    assert log.tree.ephemerals(0x200) == []


# -- containers and TTL nodes --------------------------------------------------------------------

def test_containers_reapable_and_delete_container(log: Log) -> None:
    log.create("/c", op=OpCode.CREATE_CONTAINER, flags=CreateMode.CONTAINER)
    assert log.tree.reapable(10**15) == []  # never had a child
    assert log.tree.reapable(10**15, max_never_used_ms=1) == ["/c"]
    log.create("/c/x")
    assert log.tree.reapable(10**15) == []  # has a child
    log.delete("/c/x")
    assert log.tree.reapable(0) == ["/c"]
    txn = {"path": "/c", "version": -1}
    result = log.apply(OpCode.DELETE_CONTAINER, **txn)
    assert result == ApplyResult(Err.OK, None, [(DELETED, "/c"), (CHILDREN, "/")])
    assert log.tree.reapable(10**15) == []
    assert unchanged_by(log, lambda: log.apply(OpCode.DELETE_CONTAINER, **txn)).err == Err.NO_NODE
    log.create("/c")  # recreated as a plain node since the reaper looked
    assert unchanged_by(log, lambda: log.apply(OpCode.DELETE_CONTAINER, **txn)).err \
        == Err.BAD_ARGUMENTS
    log.create("/k", op=OpCode.CREATE_CONTAINER)
    log.create("/k/x")
    assert unchanged_by(log, lambda: log.apply(OpCode.DELETE_CONTAINER, path="/k")).err \
        == Err.NOT_EMPTY
    assert unchanged_by(log, lambda: log.apply(OpCode.DELETE_CONTAINER, path="/")).err \
        == Err.BAD_ARGUMENTS


def test_ttl_reapable(log: Log) -> None:
    log.create("/t", op=OpCode.CREATE_TTL, flags=CreateMode.PERSISTENT_WITH_TTL, ttl=100)
    mtime = log.stat("/t").mtime
    assert log.tree.reapable(mtime + 100) == []
    assert log.tree.reapable(mtime + 101) == ["/t"]
    log.create("/t/x")
    assert log.tree.reapable(mtime + 10**6) == []
    log.delete("/t/x")
    log.set_data("/t", b"touch")  # setData moves mtime, restarting the clock
    mtime = log.stat("/t").mtime
    assert log.tree.reapable(mtime + 100) == []
    assert log.tree.reapable(mtime + 101) == ["/t"]
    assert log.apply(OpCode.DELETE_CONTAINER, path="/t").err == Err.OK
    assert log.tree.reapable(10**15) == []


# -- queries -------------------------------------------------------------------------------------

def test_count_descendants(log: Log) -> None:
    for path in ["/a", "/a/b", "/a/b/c", "/a/d", "/ab", "/ab/x"]:
        log.create(path)
    assert log.tree.count_descendants("/a") == 3
    assert log.tree.count_descendants("/a/b/c") == 0
    assert log.tree.count_descendants("/ab") == 1
    assert log.tree.count_descendants("/") == 3 + 6
    assert log.tree.count_descendants("/nope") == 0


@pytest.mark.parametrize("path, sequential, ok", [
    ("/", False, True), ("/a", False, True), ("/a/b-c_d.e", False, True), ("/a/...", False, True),
    ("/a/.b", False, True), ("/a/b.", False, True), ("/\u00e9t\u00e9", False, True),
    ("/\uffef", False, True), ("/\uf900", False, True),
    ("", False, False), ("a", False, False), ("/a/", False, False), ("//a", False, False),
    ("/a//b", False, False), ("/.", False, False), ("/..", False, False), ("/a/./b", False, False),
    ("/a/../b", False, False), ("/a\0", False, False), ("/a\x1f", False, False),
    ("/a\x7f", False, False), ("/a\x9f", False, False), ("/a\ud800", False, False),
    ("/a\uf8ff", False, False), ("/a\ufff0", False, False), ("/a\uffff", False, False),
    ("/\U0001f600", False, False),
    ("/a/", True, True), ("/", True, True), ("/a//", True, False), ("/a/.", True, True),
])
def test_validate_path(path: str, sequential: bool, ok: bool) -> None:
    if ok:
        assert validate_path(path, sequential) is True
    else:
        with pytest.raises(ValueError):
            validate_path(path, sequential)


# -- snapshots -----------------------------------------------------------------------------------

def _populate(log: Log) -> None:
    log.session(1, 5000, b"p1")
    log.session(2, 6000, b"p2")
    log.create("/a", b"data", acl=[[31, "digest", ALICE], [1, "ip", "10.0.0.0/8"]])
    log.create("/n", None)
    log.create("/a2")
    log.create("/a2/s", flags=CreateMode.PERSISTENT_SEQUENTIAL)
    log.create("/e", flags=CreateMode.EPHEMERAL, session=1)
    log.create("/c", op=OpCode.CREATE_CONTAINER)
    log.create("/c/x")
    log.delete("/c/x")
    log.create("/t", op=OpCode.CREATE_TTL, flags=CreateMode.PERSISTENT_WITH_TTL, ttl=5)
    log.set_data("/n", b"")
    log.set_acl("/a2", [[31, "world", "anyone"]])


def _same_state(a: DataTree, b: DataTree) -> None:
    assert a.snapshot() == b.snapshot()
    assert a.last_zxid == b.last_zxid and a.sessions == b.sessions
    assert a.node_count == b.node_count and a.approximate_data_size == b.approximate_data_size
    assert a.reapable(10**15) == b.reapable(10**15)
    stack = ["/"]
    while stack:
        path = stack.pop()
        na, nb = a.get(path), b.get(path)
        assert (na.data, na.acl, na.stat(), na.children) \
            == (nb.data, nb.acl, nb.stat(), nb.children)
        stack.extend(f"{path.rstrip('/')}/{c}" for c in na.children)
    for sid in a.sessions:
        assert a.ephemerals(sid) == b.ephemerals(sid)


def test_snapshot_round_trip(log: Log) -> None:
    _populate(log)
    restored = DataTree.from_snapshot(log.tree.snapshot())
    _same_state(log.tree, restored)
    assert restored.ephemerals(1) == ["/e"]
    assert restored.reapable(10**15) == ["/c", "/t"]
    # The restored copy goes on exactly like the original.
    other = Log(restored)
    other.zxid, other.time = log.zxid, log.time
    for action in (lambda lg: lg.close(1), lambda lg: lg.create("/a2/s", flags=2),
                   lambda lg: lg.multi(c_op("/m"), d_op("/t"))):
        assert action(log) == action(other)
    _same_state(log.tree, restored)


def test_snapshot_rejects_unknown_format() -> None:
    import msgpack
    with pytest.raises(ValueError):
        DataTree.from_snapshot(msgpack.packb({"format": 99}))


def test_deep_and_wide_trees_snapshot_quickly() -> None:
    log = Log()
    path = ""
    for i in range(1500):  # deeper than Python's recursion limit
        path += f"/{i % 10}"
        assert log.create(path).err == Err.OK
    for i in range(20000):
        log.create(f"/w{i % 7}" if i < 7 else f"/w{i % 7}/n{i}")
    started = time.monotonic()
    data = log.tree.snapshot()
    restored = DataTree.from_snapshot(data)
    assert time.monotonic() - started < 3
    assert restored.snapshot() == data
    assert restored.count_descendants("/") == log.tree.count_descendants("/") == 1500 + 20000 + 3
    assert restored.count_descendants("/0") == 1499
    assert restored.approximate_data_size == log.tree.approximate_data_size


DETERMINISM_SCRIPT = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from test_tree import Log, _populate
log = Log()
_populate(log)
for i in range(40):
    log.create(f"/p{i}", flags=3, session=2)
    log.create(f"/a2/q{i % 5}", flags=2)
log.close(2)
print(hashlib.sha256(log.tree.snapshot()).hexdigest(), log.tree.reapable(10**15))
"""


def test_same_log_same_state_across_hash_seeds() -> None:
    # str hashing differs per process: set iteration must never leak into results or snapshots.
    here = os.path.dirname(os.path.abspath(__file__))
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, here], env=env,
                             capture_output=True, text=True, check=True, timeout=60)
        outputs.add(out.stdout)
    assert len(outputs) == 1


# -- random logs ---------------------------------------------------------------------------------

# Shallow paths weigh more so that deeper ones often find their parent.
PATHS = ["/a"] * 4 + ["/b"] * 2 + ["/a/b"] * 2 + ["/a/c", "/b/a", "/a/b/c", "/zookeeper/x", "/"]
SESSIONS = [1, 2, 3]
ACLS = [OPEN, OPEN, [[Perm.READ | Perm.CREATE, "world", "anyone"]], [[31, "auth", ""]],
        [[31, "digest", ALICE]], []]
AUTHS = [[], [["digest", ALICE]], [["digest", BOB], ["ip", "127.0.0.1"]]]

data_st = st.one_of(st.none(), st.binary(max_size=4))
version_st = st.sampled_from([-1, 0, 1, 2])
path_st = st.sampled_from(PATHS)


@st.composite
def sub_ops(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["create"] * 3 + ["ttl", "delete", "set", "check"]))
    path = draw(path_st)
    if kind == "create":
        op = draw(st.sampled_from([OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER]))
        flags = draw(st.sampled_from([0, 1, 2, 3, 4]))
        return {"type": int(op), "path": path, "data": draw(data_st),
                "acl": draw(st.sampled_from(ACLS)), "flags": flags}
    if kind == "ttl":
        return {"type": int(OpCode.CREATE_TTL), "path": path, "data": draw(data_st), "acl": OPEN,
                "flags": draw(st.sampled_from([5, 6])), "ttl": draw(st.sampled_from([0, 1, 1000]))}
    if kind == "delete":
        return {"type": int(OpCode.DELETE), "path": path, "version": draw(version_st)}
    if kind == "set":
        return {"type": int(OpCode.SET_DATA), "path": path, "data": draw(data_st),
                "version": draw(version_st)}
    return {"type": int(OpCode.CHECK), "path": path, "version": draw(version_st)}


@st.composite
def raw_txns(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["sub"] * 6 + ["acl", "multi", "multi", "session", "close",
                                                "reap"]))
    common = {"session": draw(st.sampled_from(SESSIONS)), "auth": draw(st.sampled_from(AUTHS))}
    if kind == "sub":
        return {**draw(sub_ops()), **common}
    if kind == "acl":
        return {"type": int(OpCode.SET_ACL), "path": draw(path_st),
                "acl": draw(st.sampled_from(ACLS)), "version": draw(version_st), **common}
    if kind == "multi":
        return {"type": int(OpCode.MULTI), "ops": draw(st.lists(sub_ops(), max_size=4)), **common}
    if kind == "session":
        return {"type": int(OpCode.CREATE_SESSION), "timeout": 1000, "password": b"x", **common}
    if kind == "close":
        return {"type": int(OpCode.CLOSE_SESSION), **common}
    return {"type": int(OpCode.DELETE_CONTAINER), "path": draw(path_st), **common}


def _stamp(raw: list[dict[str, Any]]) -> list[tuple[Txn, int]]:
    return [(typed({**t, "time": 1000 * (i + 1)}, through_log=True), i + 1)
            for i, t in enumerate(raw)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_txns(), max_size=40), st.integers(min_value=0, max_value=40))
def test_random_logs_restore_and_replay(raw: list[dict[str, Any]], cut: int) -> None:
    log = _stamp(raw)
    cut = min(cut, len(log))
    original = DataTree()
    results = [original.apply(*t) for t in log[:cut]]
    copy = DataTree.from_snapshot(original.snapshot())
    _same_state(original, copy)
    for txn in log[cut:]:
        a, b = original.apply(*txn), copy.apply(*txn)
        assert a == b
        results.append(a)
        if a.err != Err.OK:
            assert a.events == []
    _same_state(original, copy)

    replay = DataTree()
    assert [replay.apply(*t) for t in log] == results
    assert replay.snapshot() == original.snapshot()

    # Invariants of any reachable state.
    tree = original
    assert tree.last_zxid == len(log)
    total = 0
    stack = ["/"]
    while stack:
        path = stack.pop()
        node = tree.get(path)
        total += 1
        for name in node.children:
            stack.append(f"{path.rstrip('/')}/{name}")
        owner = node.ephemeral_owner
        if owner in SESSIONS:
            assert owner in tree.sessions and path in tree.ephemerals(owner)
            assert not node.children
    assert tree.node_count == total + 1


# -- found by tests/test_differential.py ----------------------------------------------------------

def test_auth_acl_with_null_id_expands(log: Log) -> None:
    # kazoo sends ACL(31, Id("auth", "")) with a null id (it writes "" as null); ZooKeeper's
    # fixupACL never looks at an 'auth' entry's id.
    result = log.create("/a", acl=[[31, "auth", None]],
                        auth=[["ip", "127.0.0.1"], ["digest", ALICE]])
    assert result.err == Err.OK
    assert log.tree.get("/a").acl == [(31, "digest", ALICE)]
    # Still invalid without an authenticated id, and a null id stays invalid for other schemes.
    assert unchanged_by(log, lambda: log.create("/b", acl=[[31, "auth", None]])).err \
        == Err.INVALID_ACL
    for acl in ([[31, "world", None]], [[31, "digest", None]], [[31, "ip", None]]):
        assert unchanged_by(log, lambda: log.create("/c", acl=acl, auth=[["digest", ALICE]])).err \
            == Err.INVALID_ACL


def test_client_stat_translation() -> None:
    # The tree keeps StatPersisted; zkfsd.handlers.to_stat gives clients DataNode.copyStat's view:
    # cversion = 2 * creations - children, ephemeralOwner 0 for container and TTL nodes.
    from zkfsd.handlers import to_stat

    log = Log()
    log.session(7)
    log.create("/p")
    for name in ("a", "b", "c"):
        log.create(f"/p/{name}")
    log.delete("/p/a")
    log.delete("/p/b")
    assert log.stat("/p").cversion == 3  # sequence numbers still count creations only
    assert to_stat(log.stat("/p")).cversion == 5
    assert to_stat(log.stat("/")).cversion == 2 * 1 - 2
    assert to_stat(log.stat("/zookeeper")).cversion == -2  # as a fresh ZooKeeper 3.8 reports
    log.create("/cont", flags=CreateMode.CONTAINER, op=OpCode.CREATE_CONTAINER)
    log.create("/ttl", flags=CreateMode.PERSISTENT_WITH_TTL, op=OpCode.CREATE_TTL, ttl=500)
    log.create("/eph", flags=CreateMode.EPHEMERAL, session=7)
    assert log.stat("/cont").ephemeral_owner == CONTAINER_EPHEMERAL_OWNER
    assert to_stat(log.stat("/cont")).ephemeral_owner == 0
    assert to_stat(log.stat("/ttl")).ephemeral_owner == 0
    assert to_stat(log.stat("/eph")).ephemeral_owner == 7
