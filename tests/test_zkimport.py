"""`zkfsd import --from-zookeeper`: a tree written by Apache ZooKeeper (Debian's package, started
here with its own dataDir) is served unchanged by zkfsd; zkfsd refuses ZooKeeper's data dir."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kazoo.security import make_digest_acl

from helpers import (ZKFSD_BIN, ApacheZooKeeper, ZkfsdProcess, apache_zookeeper_missing,
                     kazoo_client)
from zkfsd.zkimport import ZkImportError, load_zookeeper_dir, read_txn_log

AUTH = [("digest", "alice:secret")]


class SmallSnapZooKeeper(ApacheZooKeeper):
    """A throw-away ZooKeeper that snapshots every few transactions, so its data directory holds
    several snapshots and logs that overlap them (fuzzy snapshots)."""

    def write_config(self) -> None:
        super().write_config()
        with open(self.cfg_path, "a") as f:
            f.write("snapCount=8\n")


def _tree(client: Any, path: str = "/") -> dict[str, tuple[bytes, tuple[int, ...], list[Any]]]:
    """path -> (data, Stat fields, ACL) of every znode outside /zookeeper."""
    out = {}
    data, stat = client.get(path)
    acl, _ = client.get_acls(path)
    out[path] = (data, tuple(stat), sorted((a.perms, a.id.scheme, a.id.id) for a in acl))
    for child in sorted(client.get_children(path)):
        child_path = f"{path.rstrip('/')}/{child}"
        if child_path != "/zookeeper":
            out.update(_tree(client, child_path))
    return out


def _populate(zk: ApacheZooKeeper) -> tuple[dict[str, Any], list[str]]:
    """Writes a varied tree; returns it as seen by a client (ephemerals still alive) and the
    ephemeral paths. ZooKeeper is stopped before the ephemeral's session ends."""
    owner = kazoo_client(zk.hosts, auth_data=AUTH)
    ephemeral_client = owner.__enter__()
    with kazoo_client(zk.hosts, auth_data=AUTH) as k:
        k.create("/app/config", b"name=demo\n", makepath=True)
        k.create("/app/nested/deep/leaf", bytes(range(256)), makepath=True)
        k.create("/app/empty", b"")
        k.create("/app/secret", b"s3cret", acl=[make_digest_acl("alice", "secret", all=True)])
        k.create("/app/readonly", b"ro")
        k.set_acls("/app/readonly", [make_digest_acl("alice", "secret", read=True, admin=True),
                                     make_digest_acl("bob", "pw", all=True)])
        for i in range(3):
            k.create("/app/queue/item-", str(i).encode(), sequence=True, makepath=True)
        k.delete(k.get_children("/app/queue")[0] and "/app/queue/item-0000000000")
        for i in range(40):  # many transactions: several snapshots and logs
            k.set("/app/config", f"name=demo\nround={i}\n".encode())
        t = k.transaction()
        t.create("/app/multi-a", b"a")
        t.set_data("/app/empty", b"filled")
        t.delete("/app/nested/deep/leaf")
        t.commit()
        k.create("/app/gone", b"x")
        k.delete("/app/gone")
        ephemeral_client.create("/app/members/worker-1", b"host1", ephemeral=True, makepath=True)
        k.create("/app/members/worker-", b"seq", ephemeral=True, sequence=True)
        ephemerals = ["/app/members/worker-1"] + [
            f"/app/members/{c}" for c in k.get_children("/app/members") if c != "worker-1"]
        for i in range(5):
            k.set("/app/nested/deep", str(i).encode())
        tree = _tree(k)
        zk.stop()  # sessions still open: their ephemerals are in ZooKeeper's files
    owner.__exit__(None, None, None)
    return tree, ephemerals


def _expected(tree: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """The tree without the dropped paths: their parents count them as deleted children, as in
    ZooKeeper once the sessions expired (ZooKeeper reports cversion as twice the creations minus
    numChildren, Stat fields 5 and 9)."""
    out = {}
    for path, (data, stat, acl) in tree.items():
        if path in dropped:
            continue
        stat = list(stat)
        gone = sum(1 for d in dropped if d.rpartition("/")[0] == path)
        stat[9] -= gone
        stat[5] += gone
        out[path] = (data, tuple(stat), acl)
    return out


@pytest.fixture(scope="module")
def zk_written(tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[ApacheZooKeeper, dict[str, Any], list[str]]:
    """A stopped ZooKeeper's data directory, the tree a client saw before the stop and the
    ephemeral paths in it."""
    missing = apache_zookeeper_missing()
    if missing:
        pytest.skip(f"Apache ZooKeeper unavailable: {missing}")
    zk = SmallSnapZooKeeper(tmp_path_factory.mktemp("zk-written"))
    zk.start()
    try:
        tree, ephemerals = _populate(zk)
    finally:
        zk.stop()
    return zk, tree, ephemerals


def test_import_serves_the_same_tree(
        tmp_path: Path, zk_written: tuple[ApacheZooKeeper, dict[str, Any], list[str]]) -> None:
    zk, tree, ephemerals = zk_written
    version2 = zk.data_dir / "version-2"
    assert len(list(version2.glob("snapshot.*"))) >= 2
    assert list(version2.glob("log.*"))

    # zkfsd refuses to start on ZooKeeper's own directory, naming the import command.
    refused = subprocess.run([str(ZKFSD_BIN), "--data-dir", str(zk.data_dir), "--client-port", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "zkfsd import --from-zookeeper" in lines[0], refused.stderr

    for keep, target in ((False, tmp_path / "imported"), (True, tmp_path / "kept")):
        cmd = [str(ZKFSD_BIN), "import", "--from-zookeeper", str(zk.data_dir),
               "--data-dir", str(target)] + (["--keep-ephemerals"] if keep else [])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"{len(ephemerals)} ephemeral znodes" in done.stdout
        newest = max(int(p.name.split(".")[1], 16) for p in version2.glob("snapshot.*"))
        assert f"(snapshot 0x{newest:x} +" in done.stdout, done.stdout  # its checksum held
        # zkfsd's current storage format, so the first start needs no upgrade.
        assert (target / "VERSION").read_text() == "zkfs-storage 2\n"
        server = ZkfsdProcess(target, log_path=tmp_path / f"{target.name}.log")
        server.start()
        try:
            with kazoo_client(server.hosts, auth_data=AUTH) as k:
                got = _tree(k)
                if keep:
                    expected = dict(tree)
                    for path in ephemerals:
                        data, stat, acl = expected[path]
                        expected[path] = (data, stat[:7] + (0,) + stat[8:], acl)
                else:
                    expected = _expected(tree, ephemerals)
                assert sorted(got) == sorted(expected)
                for path in expected:
                    assert got[path] == expected[path], path
                # New writes get zxids above every imported one.
                last = max(max(stat[1], stat[10]) for _, stat, _ in expected.values())
                stat = k.set("/app/config", b"after import")
                assert stat.mzxid > last and stat.version == expected["/app/config"][1][4] + 1
        finally:
            assert server.stop() == 0

    # A torn newest snapshot (a crash while ZooKeeper wrote it) fails its checksum: the import
    # falls back to the one before and replays more of the log, reaching the same tree.
    torn = tmp_path / "torn"
    shutil.copytree(zk.data_dir, torn)
    snaps = sorted(torn.glob("version-2/snapshot.*"), key=lambda p: int(p.name[9:], 16))
    raw = bytearray(snaps[-1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snaps[-1].write_bytes(bytes(raw))
    whole, fallback = load_zookeeper_dir(zk.data_dir), load_zookeeper_dir(torn)
    assert fallback.snapshot_zxid < whole.snapshot_zxid
    assert fallback.txns_replayed > whole.txns_replayed
    assert fallback.nodes == whole.nodes and fallback.last_zxid == whole.last_zxid

    # Importing again into a used directory is refused rather than mixing two trees.
    again = subprocess.run([str(ZKFSD_BIN), "import", "--from-zookeeper", str(zk.data_dir),
                            "--data-dir", str(tmp_path / "imported")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_import_rejects_a_directory_without_zookeeper_data(tmp_path: Path) -> None:
    (tmp_path / "zk" / "version-2").mkdir(parents=True)
    (tmp_path / "zk" / "version-2" / "snapshot.0").write_bytes(b"garbage")
    done = subprocess.run([str(ZKFSD_BIN), "import", "--from-zookeeper", str(tmp_path / "nope"),
                           "--data-dir", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no version-2" in done.stderr
    done = subprocess.run([str(ZKFSD_BIN), "import", "--from-zookeeper", str(tmp_path / "zk"),
                           "--data-dir", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no readable snapshot" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_into_an_ensemble(
        tmp_path: Path, zk_written: tuple[ApacheZooKeeper, dict[str, Any], list[str]]) -> None:
    """The same import in every member's data directory makes an ensemble that elects a leader,
    serves the tree on every member and commits new writes above the imported zxids."""
    from ensemble_helpers import Ensemble

    zk, tree, ephemerals = zk_written
    expected = _expected(tree, ephemerals)
    ens = Ensemble(tmp_path / "ens", 3)
    for sid in ens.ids:
        done = subprocess.run([str(ZKFSD_BIN), "import", "--from-zookeeper", str(zk.data_dir),
                               "--data-dir", str(ens.data_dir(sid))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    try:
        ens.start()
        leader = ens.wait_stable()
        last = max(max(stat[1], stat[10]) for _, stat, _ in expected.values())
        with ens.client(leader, auth_data=AUTH) as k:
            stat = k.set("/app/config", b"ensemble")
            assert stat.mzxid > last
        for sid in ens.ids:
            with ens.client(sid, auth_data=AUTH) as k:
                k.sync("/")
                got = _tree(k)
                assert got["/app/config"][0] == b"ensemble"
                got.pop("/app/config")
                assert got == {p: v for p, v in expected.items() if p != "/app/config"}, sid
    finally:
        ens.stop_all()


class GzipSnapZooKeeper(SmallSnapZooKeeper):
    """Writes gzip-compressed snapshots (zookeeper.snapshot.compression.method=gz)."""

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], "-Dzookeeper.snapshot.compression.method=gz", *cmd[1:]]


def test_import_reads_gzip_snapshots(tmp_path: Path) -> None:
    missing = apache_zookeeper_missing()
    if missing:
        pytest.skip(f"Apache ZooKeeper unavailable: {missing}")
    zk = GzipSnapZooKeeper(tmp_path / "zk")
    zk.start()
    try:
        with kazoo_client(zk.hosts) as k:
            for i in range(12):
                k.create(f"/gz/n{i}", bytes([i]) * i, makepath=True)
            k.set("/gz/n3", b"changed")
            tree = _tree(k)
    finally:
        zk.stop()
    snaps = list((zk.data_dir / "version-2").glob("snapshot.*.gz"))
    imported = load_zookeeper_dir(zk.data_dir)
    # The newest one was read (its checksum held), not an older fallback.
    assert imported.snapshot_zxid == max(int(p.name.split(".")[1], 16) for p in snaps) > 0
    for path, (data, stat, acl) in tree.items():
        node = imported.nodes[path]
        assert node.data == data and sorted(node.acl) == acl, path
        reported_cversion = node.cversion * 2 - len(node.children)
        assert (node.czxid, node.mzxid, node.ctime, node.mtime, node.version, reported_cversion,
                node.aversion, node.ephemeral_owner, node.pzxid) \
            == stat[:8] + (stat[10],) and len(node.children) == stat[9], path


def test_txn_log_reader_stops_at_a_torn_record(
        zk_written: tuple[ApacheZooKeeper, dict[str, Any], list[str]]) -> None:
    """A log cut in the middle of a record (a crash while ZooKeeper appended it) yields the whole
    records before it and then ends, as ZooKeeper's own reader does; a wrong CRC ends it too."""
    zk, _, _ = zk_written
    logs = sorted((zk.data_dir / "version-2").glob("log.*"), key=lambda p: int(p.name[4:], 16))
    raw = max((p.read_bytes() for p in logs), key=lambda b: len(list(read_txn_log(b))))
    txns = list(read_txn_log(raw))
    assert len(txns) >= 3 and all(a.zxid < b.zxid for a, b in zip(txns, txns[1:]))
    # Where the last record ends: zeros (preallocation) follow it.
    end = len(raw.rstrip(b"\0"))
    assert [t.zxid for t in read_txn_log(raw[:end - 3])] == [t.zxid for t in txns[:-1]]
    flipped = bytearray(raw)
    flipped[end - 5] ^= 0xFF  # inside the last record's payload: its Adler-32 no longer holds
    assert [t.zxid for t in read_txn_log(bytes(flipped))] == [t.zxid for t in txns[:-1]]
    with pytest.raises(ZkImportError):
        list(read_txn_log(b"ZKSN" + raw[4:]))
