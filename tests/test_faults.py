"""zkfsd under faults: kill -9 mid-write, torn log tails, hostile bytes, clients that never read,
SIGTERM. Real zkfsd subprocesses; kazoo and raw sockets.

Every test checks the promise behind it: an acknowledged write survives anything; nothing a
client sends can take the server or another session down.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kazoo.client import KazooClient, KazooState

from helpers import ZkfsdProcess, four_letter_word, is_ok, kazoo_client
from test_server import FAST_RETRY, RawClient, create_req, raw_session
from zkfs import jute
from zkfs.constants import MAX_DATA, MAX_FRAME, Err, OpCode, Xid
from zkfsd import txns


# ---------------------------------------------------------------------------------------------
# (a) kill -9 while writes are in flight


class Writer(threading.Thread):
    """One kazoo session writing as fast as it can (pipelined, a few requests in flight),
    recording every write it attempted and every write the server acknowledged."""

    def __init__(self, hosts: str, base: str, idx: int) -> None:
        super().__init__(daemon=True)
        self.client = KazooClient(hosts=hosts, timeout=4.0, connection_retry=FAST_RETRY)
        self.client.start(timeout=10)
        self.base, self.idx = base, idx
        self.counter_path = f"{base}/counter{idx}"
        self.client.create(self.counter_path, b"-1")
        self.attempted: dict[str, bytes] = {}
        self.acked: dict[str, bytes] = {}
        self.counter_attempted: list[int] = [-1]
        self.counter_acked = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while True:
                batch = []
                for _ in range(8):
                    i += 1
                    if i % 3 == 0:
                        self.counter_attempted.append(i)
                        batch.append((None, i, self.client.set_async(self.counter_path, b"%d" % i)))
                    else:
                        path = f"{self.base}/w{self.idx}-{i:06d}"
                        value = f"value {self.idx} {i}".encode()
                        self.attempted[path] = value
                        batch.append((path, value, self.client.create_async(path, value)))
                for path, value, result in batch:
                    # Raises once the server is gone (kazoo fails requests still queued on
                    # its side only by this timeout, so keep it short).
                    result.get(timeout=3)
                    if path is None:
                        self.counter_acked = max(self.counter_acked, value)
                    else:
                        self.acked[path] = value
        except Exception as exc:  # noqa: BLE001 - the kill shows up as ConnectionLoss & co.
            self.error = exc

    def close(self) -> None:
        try:
            self.client.stop()
        finally:
            self.client.close()


@pytest.mark.parametrize("snap_count", [None, 40], ids=["default", "snapshots"])
@pytest.mark.timeout(60)
def test_kill9_keeps_every_acknowledged_write(zkfsd_factory: Callable[..., ZkfsdProcess],
                                              tmp_path: Path, snap_count: int | None) -> None:
    """Kill -9 at random moments under concurrent writers; with snapCount 40 the crash also
    lands around snapshots and log compaction."""
    extra: list[str] = []
    if snap_count is not None:
        cfg = tmp_path / "zoo.cfg"
        cfg.write_text(f"snapCount={snap_count}\n")
        extra = ["--config", str(cfg)]
    zkfsd = zkfsd_factory("zkfsd", extra_args=extra)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"seed {seed}")
    for rnd in range(3):
        base = f"/dur{rnd}"
        with kazoo_client(zkfsd.hosts) as zk:
            zk.create(base, b"")
        writers = [Writer(zkfsd.hosts, base, i) for i in range(4)]
        try:
            for w in writers:
                w.start()
            # Let some writes through, then crash at a random moment while writes are in flight.
            deadline = time.monotonic() + 10
            while sum(len(w.acked) for w in writers) < 50:
                assert time.monotonic() < deadline, "writers made no progress"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            assert all(w.is_alive() for w in writers)
            zkfsd.kill9()
            for w in writers:
                w.join(15)
                assert not w.is_alive(), "writer still running after the server died"
        finally:
            for w in writers:
                w.close()

        zkfsd.start()
        with kazoo_client(zkfsd.hosts) as zk:
            children = set(zk.get_children(base))
            for w in writers:
                # Every acknowledged create is there with its value.
                for path, value in w.acked.items():
                    assert zk.get(path)[0] == value, (rnd, path)
                # Nothing is there that nobody wrote; anything present has the written value.
                mine = {f"{base}/{c}" for c in children if c.startswith(f"w{w.idx}-")}
                assert mine <= set(w.attempted), (rnd, mine - set(w.attempted))
                for path in mine - set(w.acked):
                    assert zk.get(path)[0] == w.attempted[path]
                # The counter holds a value that was written, no older than the last acked one.
                counter = int(zk.get(w.counter_path)[0])
                assert counter in w.counter_attempted and counter >= w.counter_acked, (
                    rnd, counter, w.counter_acked)
            assert sum(len(w.acked) for w in writers) >= 50
        assert "Traceback" not in zkfsd.log_text()
    if snap_count is not None:
        assert "snapshot at index" in zkfsd.log_text()


# ---------------------------------------------------------------------------------------------
# (b) torn log tail


def log_segments(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if p.name.startswith("log."))


def log_records(path: Path) -> list[tuple[int, int, list[Any]]]:
    """(offset, total length, decoded payload) of every record: [u32 len][u32 crc][payload]."""
    buf = path.read_bytes()
    out, off = [], 0
    while off + 8 <= len(buf):
        n, _crc = struct.unpack_from("<II", buf, off)
        if off + 8 + n > len(buf):
            break
        out.append((off, 8 + n, msgpack.unpackb(buf[off + 8:off + 8 + n], raw=False,
                                                strict_map_key=False)))
        off += 8 + n
    assert off == len(buf), "the segment should end on a record boundary after a clean stop"
    return out


def created_paths(records: list[tuple[int, int, list[Any]]]) -> set[str]:
    paths = set()
    for _off, _n, rec in records:
        if rec[0] == 1:
            txn = txns.decode(rec[3])
            if isinstance(txn.body, txns.Create):
                paths.add(txn.body.path)
    return paths


def damage(segment: Path, how: str) -> set[str]:
    """Damage the tail of `segment`; returns the paths whose create may be lost with it."""
    records = log_records(segment)
    size = segment.stat().st_size
    if how == "garbage":
        with open(segment, "ab") as f:
            f.write(b"\x37\x00\x00\x00\xde\xad\xbe\xef" + os.urandom(40))
        return set()
    if how == "zeros":  # what a preallocated or half-written block looks like
        with open(segment, "ab") as f:
            f.write(b"\0" * 4096)
        return set()
    # Cut inside the last entry record (mid-payload or mid-header) and drop what follows.
    idx = max(i for i, r in enumerate(records) if r[2][0] == 1)
    off, n, _ = records[idx]
    cut = off + n // 2 if how == "mid_record" else off + 5
    assert cut < size
    os.truncate(segment, cut)
    return created_paths(records[idx:])


@pytest.mark.parametrize("how", ["garbage", "zeros", "mid_record", "mid_header"])
@pytest.mark.timeout(30)
def test_torn_log_tail_is_truncated_on_restart(zkfsd: ZkfsdProcess, how: str) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/torn", b"")
        for i in range(30):
            zk.create(f"/torn/n{i}", b"v%d" % i)
        zk.set("/torn/n0", b"updated")
        # The last transactions in the log: their loss is what a torn tail may cost.
        zk.create("/torn-last", b"")
    assert zkfsd.stop() == 0
    segments = log_segments(zkfsd.data_dir)
    assert segments, f"no log.* segments in {list(zkfsd.data_dir.iterdir())}"
    maybe_lost = damage(segments[-1], how)
    log_before = len(zkfsd.log_text())

    zkfsd.start()
    new_log = zkfsd.log_text()[log_before:]
    repairs = [line for line in new_log.splitlines() if "truncated" in line and "tail" in line]
    assert len(repairs) == 1, new_log
    assert "Traceback" not in new_log
    with kazoo_client(zkfsd.hosts) as zk:
        for i in range(30):
            path = f"/torn/n{i}"
            if path not in maybe_lost:
                assert zk.get(path)[0] == (b"updated" if i == 0 else b"v%d" % i)
        if how in ("garbage", "zeros"):
            assert zk.exists("/torn-last") is not None
        # The log takes new writes after the repair...
        zk.create("/after-repair", b"ok")
    # ...and a second restart has nothing left to repair.
    assert zkfsd.stop() == 0
    log_before = len(zkfsd.log_text())
    zkfsd.start()
    assert not [line for line in zkfsd.log_text()[log_before:].splitlines()
                if "truncated" in line and "tail" in line]
    with kazoo_client(zkfsd.hosts) as zk:
        assert zk.get("/after-repair")[0] == b"ok"


# ---------------------------------------------------------------------------------------------
# (c) malformed input against a live server


class Bystander:
    """A kazoo session connected throughout; it must never notice anything."""

    def __init__(self, hosts: str) -> None:
        self.states: list[str] = []
        self.client = KazooClient(hosts=hosts, timeout=4.0)
        self.client.start(timeout=10)
        self.client.add_listener(self.states.append)
        self.client.ensure_path("/bystander")
        self.client.set("/bystander", b"precious")

    def check(self, server: ZkfsdProcess) -> None:
        assert server.running, f"zkfsd died:\n{server.log_tail()}"
        assert is_ok(server.host, server.port), "zkfsd no longer answers ruok"
        assert self.client.get("/bystander")[0] == b"precious"
        assert self.states == [], f"the bystander session saw {self.states}"

    def close(self) -> None:
        self.client.stop()
        self.client.close()


@pytest.fixture
def bystander(zkfsd: ZkfsdProcess) -> Iterator[Bystander]:
    b = Bystander(zkfsd.hosts)
    try:
        yield b
    finally:
        b.close()
    assert "Traceback" not in zkfsd.log_text(), zkfsd.log_tail()


def raw_socket(server: ZkfsdProcess) -> socket.socket:
    s = socket.create_connection((server.host, server.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_server(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _garbage_before_connect(server: ZkfsdProcess) -> None:
    with raw_socket(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_server(s)


def _binary_garbage(server: ZkfsdProcess) -> None:
    with raw_socket(server) as s:
        s.sendall(bytes(random.Random(7).randrange(256) for _ in range(5000)))
        assert closed_by_server(s)


def _truncated_frame_then_close(server: ZkfsdProcess) -> None:
    with raw_socket(server) as s:
        s.sendall(struct.pack(">i", 100) + b"\x00" * 10)
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s)


def _length_over_limit(server: ZkfsdProcess) -> None:
    with raw_socket(server) as s:
        s.sendall(struct.pack(">i", MAX_FRAME + 1) + b"\x00" * 64)
        assert closed_by_server(s)
    with raw_session(server) as c:  # after connect, too
        c.send_raw(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64)
        assert c.wait_closed()


def _negative_length(server: ZkfsdProcess) -> None:
    with raw_socket(server) as s:
        s.sendall(struct.pack(">i", -5) + b"\x00" * 16)
        assert closed_by_server(s)
    with raw_session(server) as c:
        c.send_raw(struct.pack(">i", -1))
        assert c.wait_closed()


def _unknown_opcode(server: ZkfsdProcess) -> None:
    with raw_session(server) as c:
        for op in (999, 10, -20, 0x7FFF):
            c.send_raw(jute.frame(struct.pack(">ii", 42, op) + b"body"))
            header, _ = c.read_reply(None)
            assert (header.xid, header.err) == (42, Err.UNIMPLEMENTED)
        # still usable
        assert c.call(OpCode.CREATE, create_req("/after-unknown-op"))[0] == Err.OK
        c.ping()


def _truncated_body(server: ZkfsdProcess) -> None:
    with raw_session(server) as c:
        # getData whose path claims 50 bytes but carries 3
        c.send_raw(jute.frame(struct.pack(">iii", 7, OpCode.GET_DATA, 50) + b"/ab"))
        payload = c.recv_frame()
        if payload is not None:  # an error reply, then the connection is closed
            header, _ = jute.decode_reply(payload, OpCode.GET_DATA)
            assert header.xid == 7 and header.err != 0
        assert c.wait_closed()
    with raw_session(server) as c:
        # a header cut short: 5 bytes of payload
        c.send_raw(jute.frame(b"\x00\x00\x00\x01\x00"))
        assert c.wait_closed()
    with raw_session(server) as c:
        # a create whose ACL vector claims a billion entries
        body = (struct.pack(">ii", 9, OpCode.CREATE) + struct.pack(">i", 2) + b"/x"
                + struct.pack(">i", -1) + struct.pack(">i", 10**9))
        c.send_raw(jute.frame(body))
        payload = c.recv_frame()
        if payload is not None:
            assert jute.decode_reply(payload, OpCode.CREATE)[0].err != 0
        assert c.wait_closed()
    with raw_session(server) as c:
        # invalid UTF-8 in a path
        c.send_raw(jute.frame(struct.pack(">iii", 11, OpCode.EXISTS, 3) + b"/\xff\xfe" + b"\x00"))
        payload = c.recv_frame()
        if payload is not None:
            assert jute.decode_reply(payload, OpCode.EXISTS)[0].err != 0


def _requests_before_connect(server: ZkfsdProcess) -> None:
    for frame in (jute.encode_request(Xid.PING, OpCode.PING, None),
                  jute.encode_request(1, OpCode.GET_DATA, jute.GetDataRequest("/bystander", False)),
                  jute.encode_request(1, OpCode.CLOSE_SESSION, None),
                  jute.frame(b"")):
        with raw_socket(server) as s:
            s.sendall(frame)
            s.shutdown(socket.SHUT_WR)
            assert closed_by_server(s)


def _oversized_set_data(server: ZkfsdProcess) -> None:
    with raw_session(server) as c:
        assert c.call(OpCode.CREATE, create_req("/big", b"small"))[0] == Err.OK
        c.send(OpCode.SET_DATA, jute.SetDataRequest("/big", b"x" * (MAX_DATA + 1), -1))
        try:
            header, _ = c.read_reply(OpCode.SET_DATA)
        except ConnectionError:
            pass  # closing the connection is allowed too
        else:
            assert header.err == Err.BAD_ARGUMENTS
            assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/big", False))[1].data == b"small"
        # Exactly 1 MiB is fine.
    with raw_session(server) as c:
        err, body = c.call(OpCode.SET_DATA, jute.SetDataRequest("/big", b"y" * MAX_DATA, -1))
        assert err == Err.OK and body.stat.data_length == MAX_DATA
        err, _ = c.call(OpCode.CREATE, create_req("/big2", b"z" * (MAX_DATA + 1)))
        assert err == Err.BAD_ARGUMENTS


def _thousands_of_tiny_frames(server: ZkfsdProcess) -> None:
    rng = random.Random(3)
    with raw_session(server) as c:
        n = 5000
        blob = jute.encode_request(Xid.PING, OpCode.PING, None) * n
        # delivered in random small pieces
        pos = 0
        while pos < len(blob):
            step = rng.randint(1, 64)
            c.send_raw(blob[pos:pos + step])
            pos += step
        for _ in range(n):
            header, _ = c.read_reply(OpCode.PING)
            assert header.xid == Xid.PING and header.err == 0
    with raw_session(server) as c:
        # thousands of tiny one-request-per-segment exists calls
        for i in range(2000):
            c.send(OpCode.EXISTS, jute.ExistsRequest("/bystander", False))
        for _ in range(2000):
            assert c.read_reply(OpCode.EXISTS)[0].err == Err.OK


def _many_connections(server: ZkfsdProcess) -> None:
    socks = [raw_socket(server) for _ in range(200)]
    for i, s in enumerate(socks):
        s.sendall(struct.pack(">i", 100)[: i % 4])  # partial length prefixes, then nothing
    for s in socks:
        s.close()


def _reconnect_storm_same_session(server: ZkfsdProcess) -> None:
    c = raw_session(server)
    sid, pw = c.session_id, c.passwd
    clients = [c]
    for _ in range(20):
        d = RawClient(server.host, server.port)
        resp = d.connect(session_id=sid, passwd=pw)
        assert resp is not None and resp.session_id == sid
        clients.append(d)
    clients[-1].ping()
    for d in clients[:-1]:
        assert d.wait_closed(), "an older connection of a moved session must be closed"
    for d in clients:
        d.close()


def _reset_while_server_writes(server: ZkfsdProcess) -> None:
    """RST from a client while the server is in the middle of writing replies to it. (This used
    to crash the whole server: the writer task's BrokenResourceError escaped in an
    ExceptionGroup.)"""
    with raw_session(server) as c:
        c.call(OpCode.CREATE, create_req("/fat-reset", b"r" * (512 * 1024)))
    for _ in range(5):
        c = raw_session(server)
        for _ in range(40):
            c.send(OpCode.GET_DATA, jute.GetDataRequest("/fat-reset", False))
        c.sock.recv(1000)  # the server is writing now
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # unread data + linger 0: the kernel sends RST


MALFORMED: dict[str, Callable[[ZkfsdProcess], None]] = {
    "garbage_before_connect": _garbage_before_connect,
    "binary_garbage": _binary_garbage,
    "truncated_frame_then_close": _truncated_frame_then_close,
    "length_over_limit": _length_over_limit,
    "negative_length": _negative_length,
    "unknown_opcode": _unknown_opcode,
    "truncated_body": _truncated_body,
    "requests_before_connect": _requests_before_connect,
    "oversized_set_data": _oversized_set_data,
    "thousands_of_tiny_frames": _thousands_of_tiny_frames,
    "many_half_open_connections": _many_connections,
    "reconnect_storm_same_session": _reconnect_storm_same_session,
    "reset_while_server_writes": _reset_while_server_writes,
}


@pytest.mark.timeout(30)
def test_malformed_input_harms_nobody(zkfsd: ZkfsdProcess, bystander: Bystander) -> None:
    for name, case in MALFORMED.items():
        try:
            case(zkfsd)
            bystander.check(zkfsd)
        except BaseException as exc:
            raise AssertionError(f"case {name}: {exc}") from exc


@pytest.mark.timeout(60)
def test_random_bytes_after_connect(zkfsd: ZkfsdProcess, bystander: Bystander) -> None:
    valid_prefixes = [b"", jute.encode_request(1, OpCode.EXISTS, jute.ExistsRequest("/", False))]

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(prefix=st.sampled_from(valid_prefixes), junk=st.binary(min_size=1, max_size=300),
           framed=st.booleans())
    def check(prefix: bytes, junk: bytes, framed: bool) -> None:
        with raw_session(zkfsd) as c:
            c.send_raw(prefix + (jute.frame(junk) if framed else junk))
            c.sock.shutdown(socket.SHUT_WR)
            # Whatever it made of the bytes, the server closes once we do.
            assert c.wait_closed(5)
        assert zkfsd.running

    check()
    bystander.check(zkfsd)


# ---------------------------------------------------------------------------------------------
# (d) a client that never reads


@pytest.mark.timeout(60)
def test_client_that_never_reads_is_dropped(zkfsd: ZkfsdProcess, bystander: Bystander) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/fat", b"f" * (256 * 1024))
    c = raw_session(zkfsd)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sock.setblocking(False)
    request = jute.encode_request(5, OpCode.GET_DATA, jute.GetDataRequest("/fat", False))
    pending = b""
    sent = 0
    dropped = False
    deadline = time.monotonic() + 30
    proc = psutil.Process(zkfsd.pid)
    peak_rss = 0
    while time.monotonic() < deadline:
        if not pending:
            pending = request * 64
        try:
            n = c.sock.send(pending)
            pending = pending[n:]
            sent += n
        except BlockingIOError:
            time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
        peak_rss = max(peak_rss, proc.memory_info().rss)
        if peak_rss > 600 * 1024 * 1024:
            break  # fail below rather than run the machine out of memory
        # A closed connection also shows up as a readable EOF (or RST) on our side.
        try:
            if c.sock.recv(1, socket.MSG_PEEK) == b"":
                dropped = True
                break
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            dropped = True
            break
    c.close()
    assert dropped, f"the server never dropped a client that does not read ({sent} bytes sent)"
    assert "not reading" in zkfsd.log_text()
    # The server buffered a bounded amount for it (not gigabytes of replies).
    assert peak_rss < 600 * 1024 * 1024, f"zkfsd grew to {peak_rss >> 20} MiB"
    bystander.check(zkfsd)


# ---------------------------------------------------------------------------------------------
# (e) SIGTERM


@pytest.mark.timeout(40)
def test_sigterm_exits_zero_with_log_synced(zkfsd: ZkfsdProcess) -> None:
    writers = []
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/term", b"")
        for i in range(100):
            zk.create(f"/term/n{i}", b"%d" % i)
    writers = [Writer(zkfsd.hosts, "/term", i) for i in range(2)]
    try:
        for w in writers:
            w.start()
        time.sleep(0.3)
        assert zkfsd.stop() == 0  # SIGTERM while writes are in flight
        for w in writers:
            w.join(15)
    finally:
        for w in writers:
            w.close()
    text = zkfsd.log_text()
    assert "SIGTERM" in text and "log synced" in text
    zkfsd.start()
    with kazoo_client(zkfsd.hosts) as zk:
        for i in range(100):
            assert zk.get(f"/term/n{i}")[0] == b"%d" % i
        for w in writers:
            for path, value in w.acked.items():
                assert zk.get(path)[0] == value
            assert int(zk.get(w.counter_path)[0]) >= w.counter_acked
    assert zkfsd.stop() == 0
