"""Four-letter words on zkfsd's client port, in the formats ZooKeeper's monitoring tools parse.

Each word is sent on its own connection (the server answers and closes), against a real zkfsd
subprocess; values are checked against activity the test caused.
"""
from __future__ import annotations

import os
import re
import socket
import time

import pytest

from helpers import ZkfsdProcess, four_letter_word, kazoo_client


def word(server: ZkfsdProcess, w: str) -> str:
    return four_letter_word(server.host, server.port, w)


def srvr_fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def mntr_fields(text: str) -> dict[str, str]:
    rows = [line.split("\t") for line in text.splitlines() if line]
    assert all(len(r) == 2 for r in rows), f"mntr lines must be 'key<TAB>value': {text!r}"
    return dict(rows)  # type: ignore[arg-type]


def kv_fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.timeout(20)
def test_ruok(zkfsd: ZkfsdProcess) -> None:
    assert word(zkfsd, "ruok") == "imok"


@pytest.mark.timeout(20)
def test_srvr_format_and_values(zkfsd: ZkfsdProcess) -> None:
    fields = srvr_fields(word(zkfsd, "srvr"))
    assert list(fields) == ["Zookeeper version", "Latency min/avg/max", "Received", "Sent",
                            "Connections", "Outstanding", "Zxid", "Mode", "Node count"]
    assert fields["Mode"] == "standalone"
    assert re.fullmatch(r"0x[0-9a-f]+", fields["Zxid"])
    assert re.fullmatch(r"\d+/[\d.]+/\d+", fields["Latency min/avg/max"])
    # Tools split the version on '-' and ',' ("3.8.0-..., built on ...").
    assert re.match(r"\d+\.\d+\.\d+", fields["Zookeeper version"])
    nodes0, zxid0 = int(fields["Node count"]), int(fields["Zxid"], 16)
    received0 = int(fields["Received"])

    with kazoo_client(zkfsd.hosts) as zk:
        for i in range(5):
            zk.create(f"/n{i}", b"x")
        zk.get("/n0")
        fields = srvr_fields(word(zkfsd, "srvr"))
        assert int(fields["Node count"]) == nodes0 + 5
        assert int(fields["Zxid"], 16) >= zxid0 + 5  # + the createSession
        assert int(fields["Received"]) >= received0 + 6
        assert int(fields["Sent"]) >= 6
        # the kazoo session and this srvr probe
        assert int(fields["Connections"]) >= 1
        assert int(fields["Outstanding"]) == 0
        lo, avg, hi = fields["Latency min/avg/max"].split("/")
        assert float(lo) <= float(avg) <= float(hi)


@pytest.mark.timeout(20)
def test_stat_lists_clients(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        sid = zk.client_id[0]
        text = word(zkfsd, "stat")
        assert text.startswith("Zookeeper version: ")
        head, _, rest = text.partition("Clients:\n")
        assert rest, text
        clients, _, tail = rest.partition("\n\n")
        assert f"sid=0x{sid:x}" in clients
        assert all(re.match(r" /[\d.]+:\d+\[\d+\]\(.*\)$", line) for line in clients.splitlines())
        fields = srvr_fields(tail)
        assert fields["Mode"] == "standalone" and "Zxid" in fields and "Node count" in fields


@pytest.mark.timeout(20)
def test_mntr_format_and_values(zkfsd: ZkfsdProcess) -> None:
    m0 = mntr_fields(word(zkfsd, "mntr"))
    for key in ("zk_version", "zk_server_state", "zk_avg_latency", "zk_max_latency",
                "zk_min_latency", "zk_packets_received", "zk_packets_sent",
                "zk_num_alive_connections", "zk_outstanding_requests", "zk_znode_count",
                "zk_watch_count", "zk_ephemerals_count", "zk_approximate_data_size",
                "zk_open_file_descriptor_count", "zk_max_file_descriptor_count"):
        assert key in m0, key
    assert m0["zk_server_state"] == "standalone"
    assert int(m0["zk_ephemerals_count"]) == 0 and int(m0["zk_watch_count"]) == 0
    for key in ("zk_packets_received", "zk_packets_sent", "zk_znode_count",
                "zk_approximate_data_size", "zk_open_file_descriptor_count",
                "zk_max_file_descriptor_count", "zk_outstanding_requests"):
        assert re.fullmatch(r"\d+", m0[key]), (key, m0[key])
    float(m0["zk_avg_latency"])

    with kazoo_client(zkfsd.hosts) as zk, kazoo_client(zkfsd.hosts) as zk2:
        zk.create("/data", b"x" * 1000)
        zk.create("/e1", b"", ephemeral=True)
        zk2.create("/e2", b"", ephemeral=True)
        zk.get("/data", watch=lambda e: None)
        zk.get_children("/", watch=lambda e: None)
        zk2.exists("/nothing", watch=lambda e: None)
        m = mntr_fields(word(zkfsd, "mntr"))
        assert int(m["zk_znode_count"]) == int(m0["zk_znode_count"]) + 3
        assert int(m["zk_ephemerals_count"]) == 2
        assert int(m["zk_watch_count"]) == 3
        assert int(m["zk_num_alive_connections"]) >= 2
        assert int(m["zk_approximate_data_size"]) >= int(m0["zk_approximate_data_size"]) + 1000
        assert int(m["zk_packets_received"]) > int(m0["zk_packets_received"])
        assert int(m["zk_packets_sent"]) > int(m0["zk_packets_sent"])
        if "zk_global_sessions" in m:
            assert int(m["zk_global_sessions"]) == 2
    # The sessions are closed (their ephemerals went with the closeSession); the connections
    # and their watches go once the server has seen each socket end, a moment later.
    deadline = time.monotonic() + 5
    while True:
        m = mntr_fields(word(zkfsd, "mntr"))
        if int(m["zk_watch_count"]) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert int(m["zk_ephemerals_count"]) == 0
    assert int(m["zk_watch_count"]) == 0  # the watchers' connections are gone


@pytest.mark.timeout(20)
def test_conf_envi(zkfsd: ZkfsdProcess) -> None:
    conf = kv_fields(word(zkfsd, "conf"))
    assert int(conf["clientPort"]) == zkfsd.port
    assert os.path.realpath(conf["dataDir"]) == os.path.realpath(zkfsd.data_dir)
    assert int(conf["tickTime"]) == 200
    assert int(conf["minSessionTimeout"]) == 400 and int(conf["maxSessionTimeout"]) == 4000

    envi = word(zkfsd, "envi")
    assert envi.startswith("Environment:\n")
    env = kv_fields(envi)
    assert env["zookeeper.version"] and env["host.name"] == socket.gethostname()
    assert int(env["process.id"]) == zkfsd.pid


@pytest.mark.timeout(20)
def test_cons_wchs_dump(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk, kazoo_client(zkfsd.hosts) as zk2:
        sid, sid2 = zk.client_id[0], zk2.client_id[0]
        zk.create("/a", b"")
        zk.create("/a/eph", b"", ephemeral=True)
        zk.get("/a", watch=lambda e: None)
        zk.exists("/b", watch=lambda e: None)
        zk2.get("/a", watch=lambda e: None)

        cons = word(zkfsd, "cons")
        assert f"sid=0x{sid:x}," in cons and f"sid=0x{sid2:x}," in cons
        line = next(l for l in cons.splitlines() if f"sid=0x{sid:x}," in l)
        stats = dict(kv.split("=", 1) for kv in re.search(r"\((.*)\)", line).group(1).split(","))
        assert int(stats["recved"]) >= 4 and int(stats["sent"]) >= 4
        assert int(stats["to"]) == 4000

        assert word(zkfsd, "wchs") == "2 connections watching 2 paths\nTotal watches:3\n"

        dump = word(zkfsd, "dump")
        assert dump.startswith("SessionTracker dump:")
        assert f"0x{sid:x}" in dump and "\t/a/eph" in dump
        eph_section = dump.split("ephemeral nodes dump:", 1)[1]
        assert re.search(rf"0x{sid:x}:\n\t/a/eph\n", eph_section)
    # After both sessions closed nothing is listed.
    dump = word(zkfsd, "dump")
    assert "/a/eph" not in dump
    assert word(zkfsd, "wchs").startswith("0 connections watching 0 paths")


@pytest.mark.timeout(20)
def test_words_outside_whitelist_and_unknown(zkfsd: ZkfsdProcess) -> None:
    assert "not in the whitelist" in word(zkfsd, "wchc")
    # A word zkfsd does not know at all is not a four-letter word: the 4 bytes are read as a
    # (huge) frame length and the connection is closed without an answer, as ZooKeeper does.
    assert word(zkfsd, "zzzz") == ""
    assert word(zkfsd, "ruok") == "imok"


@pytest.mark.timeout(20)
def test_four_letter_word_split_across_packets(zkfsd: ZkfsdProcess) -> None:
    with socket.create_connection((zkfsd.host, zkfsd.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for ch in b"ruok":
            s.sendall(bytes([ch]))
            time.sleep(0.05)
        data = b""
        while chunk := s.recv(100):
            data += chunk
    assert data == b"imok"


@pytest.mark.timeout(60)
def test_srvr_and_mntr_keys_match_apache_zookeeper(zkfsd: ZkfsdProcess, apache_zk) -> None:  # type: ignore[no-untyped-def]
    ours = srvr_fields(word(zkfsd, "srvr"))
    theirs = srvr_fields(four_letter_word(apache_zk.host, apache_zk.port, "srvr"))
    assert set(ours) == set(theirs)
    assert ours["Mode"] == theirs["Mode"] == "standalone"
    m_ours = mntr_fields(word(zkfsd, "mntr"))
    m_theirs = dict(line.split("\t", 1) for line in
                    four_letter_word(apache_zk.host, apache_zk.port, "mntr").splitlines() if "\t" in line)
    missing = set(m_ours) - set(m_theirs)
    # Every key zkfsd reports is one ZooKeeper reports too (tools look them up by name).
    assert missing <= {"zk_fsync_count", "zk_txn_count", "zk_last_zxid"}, missing
