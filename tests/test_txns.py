"""Typed transactions (zkfsd.txns): the log's encoding, validation at decode, and data
directories written before it (upgraded on read)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest

from helpers import ZKFSD_BIN, ZkfsdProcess, free_port, kazoo_client
from zkfs.constants import OpCode
from zkfsd.consensus import make_zxid
from zkfsd.consensus import Entry, HardState
from zkfsd.storage import Storage, StorageError
from zkfsd.txns import (TXN_FORMAT, Check, CloseSession, Create, CreateSession, Delete,
                        DeleteContainer, Multi, Origin, SetACL, SetData, Sync, Txn, TxnDecodeError,
                        decode, encode, from_legacy)

OPEN = ((31, "world", "anyone"),)

EVERY_KIND = [
    Create(int(OpCode.CREATE), "/a", b"x", OPEN, 0),
    Create(int(OpCode.CREATE2), "/a", None, ((31, "auth", None),), 3),
    Create(int(OpCode.CREATE_CONTAINER), "/c", b"", OPEN, 4),
    Create(int(OpCode.CREATE_TTL), "/t", b"", OPEN, 5, 1000),
    Delete("/a", 3),
    DeleteContainer("/c"),
    SetData("/a", b"\x00\xff", -1),
    SetData("/a", None, 7),
    SetACL("/a", ((1, "digest", "u:h"), (31, "ip", "10.0.0.0/8")), 2),
    Check("/a", 0),
    Multi((Create(int(OpCode.CREATE), "/m", b"", OPEN), Delete("/m"), SetData("/n", b"d"),
           Check("/n", -1))),
    Multi(()),
    CreateSession(30000, b"0123456789abcdef"),
    CloseSession(),
    CloseSession(expired=True),
    Sync("/"),
]


@pytest.mark.parametrize("body", EVERY_KIND, ids=lambda b: type(b).__name__)
def test_every_kind_round_trips(body: Any) -> None:
    txn = Txn(body, session=0x1234, auth=(("digest", "u:h"), ("ip", "127.0.0.1")), time=17,
              origin=Origin(2, 1 << 62, 99))
    assert decode(encode(txn)) == txn
    bare = Txn(body)
    assert decode(encode(bare)) == bare
    assert bare.op in (OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL) \
        or bare.op == type(body).KIND


def _raw(body: list[Any], *, version: Any = TXN_FORMAT, session: Any = 0, auth: Any = (),
         time: Any = 0, origin: Any = None) -> bytes:
    return msgpack.packb([version, session, list(auth), time, origin, body], use_bin_type=True)


def test_write_requests_round_trip_as_proposed() -> None:
    # The leader applies its own proposals without decoding them (server._own_txns): that is
    # only sound if what write_txn builds from a client's request is exactly what decoding its
    # encoding gives back.
    from zkfs import jute
    from zkfsd.handlers import write_txn

    acl = [jute.ACL(31, jute.Id("world", "anyone")), jute.ACL(1, jute.Id("digest", "u:h"))]
    requests = [
        (OpCode.CREATE, jute.CreateRequest("/a", b"x", acl, 0)),
        (OpCode.CREATE2, jute.CreateRequest("/b", None, acl, 2)),
        (OpCode.SET_DATA, jute.SetDataRequest("/a", b"\x00" * 100, 4)),
        (OpCode.DELETE, jute.DeleteRequest("/a", -1)),
        (OpCode.SET_ACL, jute.SetACLRequest("/a", acl, 1)),
        (OpCode.CHECK, jute.CheckVersionRequest("/a", 3)),
        (OpCode.CLOSE_SESSION, None),
    ]
    for auth in ([], [("digest", "u:h"), ("ip", "127.0.0.1")]):
        for op, record in requests:
            # Through the wire encoding, as a connection decodes it.
            if record is not None:
                record = type(record).from_bytes(record.to_bytes())
            txn = write_txn(int(op), record, 0x1234, auth).with_origin(Origin(1, 2, 3))
            txn = txn.stamped(1700000000000)
            assert decode(encode(txn)) == txn, (op, auth)


@pytest.mark.parametrize("data, reason", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb(7), "expected an array"),
    (_raw([OpCode.DELETE, "/a", -1], version=2), "unsupported transaction format 2"),
    (_raw([OpCode.DELETE, "/a", -1], version=True), "unsupported transaction format"),
    (_raw([OpCode.DELETE, "/a", -1])[:-1], "not msgpack"),
    (_raw([999, "/a"]), "unknown transaction kind 999"),
    (_raw([OpCode.GET_DATA, "/a", False]), "unknown transaction kind 4"),
    (_raw([OpCode.DELETE, "/a"]), "expected 2 fields"),
    (_raw([OpCode.DELETE, b"/a", -1]), "path: expected a string"),
    (_raw([OpCode.DELETE, "/a", True]), "version: expected a 64-bit integer"),
    (_raw([OpCode.DELETE, "/a", 1 << 63]), "version: expected a 64-bit integer"),
    (_raw([OpCode.SET_DATA, "/a", "text", -1]), "data: expected bytes or nil"),
    (_raw([OpCode.CREATE, "/a", b"", [[31, "world"]], 0, -1]), "acl entry"),
    (_raw([OpCode.CREATE, "/a", b"", [["31", "world", "anyone"]], 0, -1]), "acl perms"),
    (_raw([OpCode.CREATE, "/a", b"", [[31, "world", 5]], 0, -1]), "acl id"),
    (_raw([OpCode.MULTI, [[OpCode.SET_ACL, "/a", [], -1]]]), "kind 7 in a multi"),
    (_raw([OpCode.MULTI, [[OpCode.MULTI, []]]]), "in a multi"),
    (_raw([OpCode.CLOSE_SESSION, 1]), "expired: expected a boolean"),
    (_raw([OpCode.CREATE_SESSION, 1000, "pw"]), "password: expected bytes"),
    (_raw([OpCode.SYNC, "/"], auth=[["digest"]]), "auth id"),
    (_raw([OpCode.SYNC, "/"], origin=[1, 2]), "origin"),
    (_raw([OpCode.SYNC, "/"], session="1"), "session"),
])
def test_decode_refuses_what_is_not_a_transaction(data: bytes, reason: str) -> None:
    with pytest.raises(TxnDecodeError, match=reason):
        decode(data)


# What zkfsd wrote before typed transactions: msgpack maps stamped with zxid and time.
LEGACY = [
    ({"type": 15, "session": 5, "auth": [["digest", "u:h"]], "path": "/a", "data": b"x",
      "acl": [[31, "world", "anyone"]], "flags": 1, "origin": [1, 77, 3], "zxid": 9, "time": 4},
     Txn(Create(15, "/a", b"x", OPEN, 1), 5, (("digest", "u:h"),), 4, Origin(1, 77, 3))),
    ({"type": 21, "session": 0, "auth": [], "path": "/t", "data": None,
      "acl": [[31, "world", "anyone"]], "flags": 5, "ttl": 10, "zxid": 9, "time": 4},
     Txn(Create(21, "/t", None, OPEN, 5, 10), time=4)),
    ({"type": 5, "session": 0, "auth": [], "path": "/a", "data": b"y", "version": 2, "zxid": 1,
      "time": 2}, Txn(SetData("/a", b"y", 2), time=2)),
    ({"type": 14, "session": 0, "auth": [], "zxid": 1, "time": 2,
      "ops": [{"type": 2, "path": "/a", "version": -1}, {"type": 13, "path": "/b", "version": 1}]},
     Txn(Multi((Delete("/a"), Check("/b", 1))), time=2)),
    ({"type": -10, "session": 8, "auth": [], "timeout": 4000, "password": b"pw", "zxid": 1,
      "time": 2}, Txn(CreateSession(4000, b"pw"), 8, time=2)),
    ({"type": -11, "session": 8, "auth": [], "expired": True, "zxid": 1, "time": 2},
     Txn(CloseSession(True), 8, time=2)),
    ({"type": 20, "session": 0, "auth": [], "path": "/c", "version": -1, "zxid": 1, "time": 2},
     Txn(DeleteContainer("/c"), time=2)),
    ({"type": 9, "session": 3, "auth": [], "path": "/x", "zxid": 1, "time": 2},
     Txn(Sync("/x"), 3, time=2)),
    ({"type": 7, "session": 0, "auth": [], "path": "/a", "acl": [[1, "ip", "1.2.3.4"]],
      "version": -1, "zxid": 1, "time": 2}, Txn(SetACL("/a", ((1, "ip", "1.2.3.4"),)), time=2)),
]


@pytest.mark.parametrize("old, new", LEGACY, ids=lambda v: str(v["type"]) if isinstance(v, dict)
                         else "")
def test_old_untyped_entries_are_upgraded_when_read(old: dict[str, Any], new: Txn) -> None:
    assert decode(msgpack.packb(old, use_bin_type=True)) == new
    assert from_legacy(old) == new


def test_old_entry_missing_a_field_is_refused() -> None:
    with pytest.raises(TxnDecodeError, match="lacks a field"):
        decode(msgpack.packb({"type": 2, "session": 0}, use_bin_type=True))


# -- data directories -------------------------------------------------------------------------------

def _legacy_data_dir(path: Path) -> None:
    """A standalone data directory as the previous zkfsd left it: format marker 1 and untyped
    entries (a leader's empty entry, a session, a create, a setData)."""
    path.mkdir(parents=True)
    (path / "VERSION").write_text("zkfs-storage 1\n")
    old = [
        b"",
        {"type": -10, "session": 0x77, "auth": [], "timeout": 4000, "password": b"p" * 16,
         "zxid": make_zxid(1, 2), "time": 1_700_000_000_000, "origin": [1, 5, 1]},
        {"type": 1, "session": 0x77, "auth": [], "path": "/old", "data": b"v1",
         "acl": [[31, "world", "anyone"]], "flags": 0, "zxid": make_zxid(1, 3),
         "time": 1_700_000_000_001, "origin": [1, 5, 2]},
        {"type": 5, "session": 0x77, "auth": [], "path": "/old", "data": b"v2", "version": 0,
         "zxid": make_zxid(1, 4), "time": 1_700_000_000_002, "origin": [1, 5, 3]},
    ]
    storage = Storage(path)
    storage.load()
    storage.append([Entry(i + 1, 1, e if isinstance(e, bytes) else
                          msgpack.packb(e, use_bin_type=True)) for i, e in enumerate(old)])
    storage.set_hard_state(HardState(1, 1, 4))
    storage.close()
    # Storage.load() marked the directory as format 2; put the old marker back.
    (path / "VERSION").write_text("zkfs-storage 1\n")


def test_storage_upgrades_format_1_and_refuses_unknown_formats(tmp_path: Path) -> None:
    _legacy_data_dir(tmp_path / "d")
    storage = Storage(tmp_path / "d")
    loaded = storage.load()
    storage.close()
    assert (tmp_path / "d" / "VERSION").read_text() == "zkfs-storage 2\n"
    assert [decode(e.data).body for e in loaded.entries[1:]] == [
        CreateSession(4000, b"p" * 16), Create(1, "/old", b"v1", OPEN, 0),
        SetData("/old", b"v2", 0)]
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "VERSION").write_text("zkfs-storage 3\n")
    with pytest.raises(StorageError, match="unsupported storage format 'zkfs-storage 3'.*newer"):
        Storage(tmp_path / "n").load()


def test_zkfsd_serves_a_data_dir_of_the_old_format(tmp_path: Path) -> None:
    """The znodes, Stat zxids (derived from the log positions, equal to the stamped ones) and
    session survive the upgrade; new writes go on above them."""
    data_dir = tmp_path / "old"
    _legacy_data_dir(data_dir)
    server = ZkfsdProcess(data_dir, log_path=tmp_path / "old.log")
    server.start()
    try:
        with kazoo_client(server.hosts) as kz:
            data, stat = kz.get("/old")
            assert data == b"v2"
            assert (stat.czxid, stat.mzxid, stat.version) == (make_zxid(1, 3), make_zxid(1, 4), 1)
            assert stat.ctime == 1_700_000_000_001 and stat.mtime == 1_700_000_000_002
            kz.create("/new", b"n")
            assert kz.exists("/new").czxid > make_zxid(1, 4)
    finally:
        server.stop()
    assert (data_dir / "VERSION").read_text() == "zkfs-storage 2\n"
    # ... and a restart reads the mixed log (old entries, then typed ones).
    server = ZkfsdProcess(data_dir, log_path=tmp_path / "old2.log")
    server.start()
    try:
        with kazoo_client(server.hosts) as kz:
            assert kz.get("/old")[0] == b"v2" and kz.get("/new")[0] == b"n"
    finally:
        server.stop()


def test_zkfsd_refuses_a_newer_data_dir_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "newer"
    data_dir.mkdir()
    (data_dir / "VERSION").write_text("zkfs-storage 3\n")
    done = subprocess.run([str(ZKFSD_BIN), "--data-dir", str(data_dir), "--client-port",
                           str(free_port())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("zkfsd:")]
    assert len(lines) == 1 and "unsupported storage format 'zkfs-storage 3'" in lines[0]
    assert "Traceback" not in done.stderr
