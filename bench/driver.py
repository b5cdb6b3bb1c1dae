"""The load generator: a lean pipelined driver speaking ZooKeeper's wire protocol with zkfs.jute.

No client library in the hot path: requests are jute records encoded once (or once per request
for creates), replies are only split into frames and their 16-byte ReplyHeader read. Sessions are
spread over worker processes (multiprocessing, spawn), each running a selectors loop that keeps
`window` requests in flight per session. Workers report their own CPU time, so the report can
show that the driver is not the bottleneck.

`Session` is a small blocking client (one request at a time, watch events queued) for the
non-throughput measurements: ephemeral expiry, leader failover, restart time, populating.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import selectors
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from zkfs import jute
from zkfs.constants import OpCode

PAYLOAD = b"x" * 100
OPEN_ACL = [jute.ACL(31, jute.Id("world", "anyone"))]
EPHEMERAL = 1
_HDR = struct.Struct(">iqi")  # ReplyHeader: xid, zxid, err
_LEN = struct.Struct(">i")
_REQ = struct.Struct(">iii")  # frame length, xid, op
OPS = ("create", "setData", "getData", "mix90/10")
WRITE_OPS = ("create", "setData")


class ZkRequestError(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(f"ZooKeeper error {err}")
        self.err = err


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    return _recv_exact(sock, n)


def handshake(host: str, port: int, timeout_ms: int, connect_timeout: float = 5.0
              ) -> tuple[socket.socket, int, int]:
    """Open a new session; returns (socket, session id, negotiated timeout ms)."""
    sock = socket.create_connection((host, port), timeout=connect_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = jute.ConnectRequest(0, 0, timeout_ms, 0, b"\0" * 16, False)
        sock.sendall(jute.encode_connect_request(req))
        resp = jute.decode_connect_response(_recv_frame(sock))
        if resp.timeout <= 0 or resp.session_id == 0:
            raise ConnectionError("server refused the session")
        return sock, resp.session_id, resp.timeout
    except BaseException:
        sock.close()
        raise


class Session:
    """A blocking ZooKeeper session, one request at a time."""

    def __init__(self, host: str, port: int, timeout_ms: int = 30000,
                 connect_timeout: float = 5.0) -> None:
        self.sock, self.session_id, self.timeout_ms = handshake(host, port, timeout_ms,
                                                                connect_timeout)
        self.xid = 0
        self.events: deque[jute.WatcherEvent] = deque()
        self.last_sent = time.monotonic()

    def request(self, op: int, record: jute.Record | None, timeout: float = 10.0):
        """Send one request, return its decoded reply body; raises ZkRequestError on err != 0."""
        self.xid += 1
        xid = self.xid
        self.sock.settimeout(timeout)
        self.sock.sendall(jute.encode_request(xid, op, record))
        self.last_sent = time.monotonic()
        while True:
            header, body = jute.decode_reply(_recv_frame(self.sock), op)
            if header.xid == -1:
                self.events.append(body)
            elif header.xid == xid:
                if header.err:
                    raise ZkRequestError(header.err)
                return body

    def create(self, path: str, data: bytes | None = PAYLOAD, flags: int = 0, **kw) -> str:
        return self.request(OpCode.CREATE, jute.CreateRequest(path, data, OPEN_ACL, flags), **kw).path

    def set(self, path: str, data: bytes = PAYLOAD, **kw) -> None:
        self.request(OpCode.SET_DATA, jute.SetDataRequest(path, data, -1), **kw)

    def get(self, path: str, **kw) -> bytes | None:
        return self.request(OpCode.GET_DATA, jute.GetDataRequest(path, False), **kw).data

    def exists_watch(self, path: str) -> bool:
        try:
            self.request(OpCode.EXISTS, jute.ExistsRequest(path, True))
            return True
        except ZkRequestError as e:
            if e.err == -101:
                return False
            raise

    def wait_event(self, path: str, deadline: float, event_type: int = 2
                   ) -> tuple[int, float] | None:
        """Block until a watch event of `event_type` (default NodeDeleted) for `path` arrives
        (pinging meanwhile); (type, monotonic time of arrival), or None at `deadline`."""
        while time.monotonic() < deadline:
            while self.events:
                ev = self.events.popleft()
                if ev.path == path and ev.type == event_type:
                    return ev.type, time.monotonic()
            if time.monotonic() - self.last_sent > self.timeout_ms / 3000:
                self.xid_ping()
            self.sock.settimeout(max(0.001, min(0.2, deadline - time.monotonic())))
            try:
                header, body = jute.decode_reply(_recv_frame(self.sock), None)
            except (TimeoutError, socket.timeout):
                continue
            if header.xid == -1:
                now = time.monotonic()
                if body.path == path and body.type == event_type:
                    return body.type, now
                self.events.append(body)
        return None

    def xid_ping(self) -> None:
        self.sock.sendall(jute.encode_request(-2, OpCode.PING, None))
        self.last_sent = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.settimeout(2.0)
            self.request(OpCode.CLOSE_SESSION, None, timeout=2.0)
        with contextlib.suppress(Exception):
            self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_path(session: Session, path: str) -> None:
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        with contextlib.suppress(ZkRequestError):
            session.create("/" + "/".join(parts[:i]), None)


def made_path(address: tuple[str, int], path: str) -> str:
    """`path` (and its parents) created on the server at `address`, for a cell's prefix."""
    with Session(*address) as s:
        ensure_path(s, path)
    return path


# ---------------------------------------------------------------------------------------------
# Pipelined load


@dataclass
class Cell:
    """One measurement: `op` with `sessions` sessions and `window` requests in flight each."""

    op: str
    sessions: int
    window: int
    duration: float          # seconds of load (each session stops sending after it)
    max_ops: int             # per session, whatever the duration
    prefix: str              # an existing znode under which this cell works
    keys: int = 50           # nodes per session for setData/getData/mix
    timeout_ms: int = 30000


@dataclass
class CellResult:
    ops: int = 0
    errors: int = 0
    elapsed: float = 0.0                 # wall seconds from go to the last reply
    cpu: float = 0.0                     # driver CPU seconds, all workers
    latencies: list[float] = field(default_factory=list)  # seconds; capped sample
    failure: str = ""

    @property
    def throughput(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0


class _Load:
    """One session's request stream inside a worker."""

    __slots__ = ("sock", "xid", "sent", "times", "op", "n", "bodies", "prefix", "buf", "done",
                 "replies", "errors")

    def __init__(self, sock: socket.socket, op: str, prefix: str, bodies) -> None:
        self.sock = sock
        self.xid = 0
        self.sent = 0
        self.times: deque[float] = deque()
        self.op = op
        self.prefix = prefix
        self.bodies = bodies
        self.buf = bytearray()
        self.done = False
        self.replies = 0
        self.errors = 0

    def next_frame(self) -> bytes:
        i = self.sent
        self.sent += 1
        self.xid += 1
        if self.op == "create":
            op = OpCode.CREATE
            body = jute.CreateRequest(f"{self.prefix}/n{i}", PAYLOAD, OPEN_ACL, 0).to_bytes()
        else:
            gets, sets = self.bodies
            k = i % len(gets)
            if self.op == "getData" or (self.op == "mix90/10" and i % 10 != 0):
                op, body = OpCode.GET_DATA, gets[k]
            else:
                op, body = OpCode.SET_DATA, sets[k]
        return _REQ.pack(8 + len(body), self.xid, op) + body


def _prepare(sock: socket.socket, cell: Cell, base: str) -> tuple[list[bytes], list[bytes]]:
    """Create this session's key nodes (pipelined) and pre-encode its get/set bodies."""
    paths = [f"{base}/k{i}" for i in range(cell.keys)]
    frames = [jute.encode_request(i + 1, OpCode.CREATE,
                                  jute.CreateRequest(p, PAYLOAD, OPEN_ACL, 0))
              for i, p in enumerate(paths)]
    frames.insert(0, jute.encode_request(len(paths) + 1, OpCode.CREATE,
                                         jute.CreateRequest(base, None, OPEN_ACL, 0)))
    sock.settimeout(20.0)
    sock.sendall(b"".join(frames))
    for _ in frames:
        _recv_frame(sock)
    gets = [jute.GetDataRequest(p, False).to_bytes() for p in paths]
    sets = [jute.SetDataRequest(p, PAYLOAD, -1).to_bytes() for p in paths]
    return gets, sets


def _worker(address: tuple[str, int], cell: Cell, first_session: int, count: int,
            ready: mp.Queue, go, finish, results: mp.Queue) -> None:
    loads: list[_Load] = []
    try:
        for j in range(first_session, first_session + count):
            sock, _sid, _t = handshake(address[0], address[1], cell.timeout_ms, 10.0)
            base = f"{cell.prefix}/s{j}"
            bodies = None
            if cell.op == "create":
                sock.settimeout(10.0)
                sock.sendall(jute.encode_request(1, OpCode.CREATE,
                                                 jute.CreateRequest(base, None, OPEN_ACL, 0)))
                _recv_frame(sock)
            else:
                bodies = _prepare(sock, cell, base)
            loads.append(_Load(sock, cell.op, base, bodies))
            loads[-1].xid = 1000
    except Exception as e:  # noqa: BLE001 - reported to the parent as a failed cell
        ready.put(f"{type(e).__name__}: {e}")
        for ld in loads:
            ld.sock.close()
        return
    ready.put("")
    if not go.wait(60):
        return
    res = _run(loads, cell)
    results.put(res)
    finish.wait(60)  # the parent reads its counters (fsyncs) before our closeSessions land
    for ld in loads:
        with contextlib.suppress(Exception):
            ld.sock.setblocking(True)
            ld.sock.settimeout(2.0)
            ld.sock.sendall(jute.encode_request(ld.xid + 1, OpCode.CLOSE_SESSION, None))
            _recv_frame(ld.sock)
        ld.sock.close()


def _run(loads: list[_Load], cell: Cell) -> CellResult:
    sel = selectors.DefaultSelector()
    for ld in loads:
        ld.sock.setblocking(False)
        sel.register(ld.sock, selectors.EVENT_READ, ld)
    cpu0 = time.process_time()
    start = time.monotonic()
    stop_at = start + cell.duration
    hard_stop = stop_at + 30.0  # a server that stops answering does not hang the harness
    lat: list[float] = []
    lat_cap = 200_000
    unpack_len, unpack_hdr = _LEN.unpack_from, _HDR.unpack_from
    window, max_ops = cell.window, cell.max_ops

    def fill(ld: _Load, now: float) -> None:
        want = min(window - len(ld.times), max_ops - ld.sent)
        if want <= 0 or now >= stop_at:
            return
        out = b"".join(ld.next_frame() for _ in range(want))
        ld.times.extend([now] * want)
        ld.sock.setblocking(True)
        ld.sock.sendall(out)
        ld.sock.setblocking(False)

    now = time.monotonic()
    for ld in loads:
        fill(ld, now)
    active = [ld for ld in loads if ld.times]
    while active and time.monotonic() < hard_stop:
        for key, _ev in sel.select(timeout=1.0):
            ld: _Load = key.data
            try:
                data = ld.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("server closed the connection during the load")
            buf = ld.buf
            buf += data
            pos, end = 0, len(buf)
            now = time.monotonic()
            while end - pos >= 4:
                (n,) = unpack_len(buf, pos)
                if end - pos - 4 < n:
                    break
                xid, _zxid, err = unpack_hdr(buf, pos + 4)
                pos += 4 + n
                if xid < 0:
                    continue  # watch event / ping reply
                t = ld.times.popleft()
                ld.replies += 1
                if err:
                    ld.errors += 1
                if len(lat) < lat_cap:
                    lat.append(now - t)
            del buf[:pos]
            fill(ld, now)
            if not ld.times:
                ld.done = True
        active = [ld for ld in loads if not ld.done]
    end = time.monotonic()
    sel.close()
    res = CellResult(ops=sum(ld.replies for ld in loads), errors=sum(ld.errors for ld in loads),
                     elapsed=end - start, cpu=time.process_time() - cpu0, latencies=lat)
    if active:
        res.failure = f"{len(active)} sessions got no reply within 30s of the end"
    return res


def run_cell(address: tuple[str, int], cell: Cell, procs: int = 2,
             probe: Callable[[], object] | None = None) -> tuple[CellResult, object, object]:
    """Run one cell against `address` with the sessions spread over up to `procs` processes.

    `probe` (e.g. reading the servers' fsync counters) is called right before the load starts
    and right after the last reply, with every session still open; returns (result, probe
    before, probe after)."""
    ctx = mp.get_context("spawn")
    before = after = None
    nproc = max(1, min(procs, cell.sessions))
    shares = [cell.sessions // nproc + (1 if i < cell.sessions % nproc else 0) for i in range(nproc)]
    ready, results, go, finish = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    workers, first = [], 0
    for share in shares:
        p = ctx.Process(target=_worker, args=(address, cell, first, share, ready, go, finish, results),
                        daemon=True)
        p.start()
        workers.append(p)
        first += share
    try:
        problems = [p for p in _collect(ready, workers, 60.0) if p]
        if problems:
            return CellResult(failure=problems[0]), None, None
        before = probe() if probe else None
        go.set()
        parts: list[CellResult] = _collect(results, workers, cell.duration + 90)
        after = probe() if probe else None
    except Exception as e:  # noqa: BLE001
        return CellResult(failure=f"driver: {type(e).__name__}: {e}"), None, None
    finally:
        finish.set()
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()  # by PID: our own worker
                p.join(timeout=5)
    total = CellResult()
    for part in parts:
        total.ops += part.ops
        total.errors += part.errors
        total.elapsed = max(total.elapsed, part.elapsed)
        total.cpu += part.cpu
        total.latencies.extend(part.latencies)
        total.failure = total.failure or part.failure
    return total, before, after


def _collect(queue, workers, timeout: float) -> list:
    """One item per worker from `queue`; fails fast if a worker died without sending one."""
    items: list = []
    deadline = time.monotonic() + timeout
    while len(items) < len(workers):
        try:
            items.append(queue.get(timeout=0.2))
        except Exception:  # queue.Empty
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the driver workers within {timeout:.0f}s")
            if any(not p.is_alive() and p.exitcode not in (0, None) for p in workers):
                raise RuntimeError("a driver worker died (exit status "
                                   f"{[p.exitcode for p in workers]})")
    return items


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# ---------------------------------------------------------------------------------------------
# A process that holds an ephemeral node until it is killed (kill -9: no closeSession).


def _hold_ephemeral(address: tuple[str, int], path: str, timeout_ms: int, ready: mp.Queue) -> None:
    try:
        s = Session(address[0], address[1], timeout_ms)
        s.create(path, b"alive", EPHEMERAL)
        ready.put("")
    except Exception as e:  # noqa: BLE001
        ready.put(f"{type(e).__name__}: {e}")
        return
    deadline = time.monotonic() + 300  # bounded even if nobody kills us
    while time.monotonic() < deadline:
        time.sleep(timeout_ms / 3000)
        with contextlib.suppress(Exception):
            s.xid_ping()
            s.sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError, socket.timeout):
                _recv_frame(s.sock)


def start_ephemeral_holder(address: tuple[str, int], path: str, timeout_ms: int):
    """A separate process holding ephemeral `path`; returns the started Process."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    p = ctx.Process(target=_hold_ephemeral, args=(address, path, timeout_ms, ready), daemon=True)
    p.start()
    problem = ready.get(timeout=30)
    if problem:
        p.join(timeout=5)
        raise RuntimeError(f"ephemeral holder failed: {problem}")
    return p


def kill9(process) -> None:
    """kill -9 of one of our processes, by its PID."""
    os.kill(process.pid, 9)
    process.join(timeout=10)
