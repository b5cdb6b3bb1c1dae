"""A small fault-injecting TCP proxy for the links between ensemble members (loopback only).

zkfsd's peer transport dials every other member and uses a dialled connection only for messages
*to* that member. So one proxy per ordered pair (i -> j), listening where member i believes
member j's peer port is and forwarding to j's real peer port, carries exactly the traffic i -> j
(plus j's half of the join handshake). Cutting that proxy cuts the direction i -> j.

Modes of one link:
  "pass"       forward bytes both ways.
  "blackhole"  accept connections and swallow everything in both directions (like a dead route:
               the sender's writes succeed, nothing arrives). On heal the affected connections
               are closed, since a frame stream with a hole in it is garbage; the dialler reconnects.
  "reset"      close existing connections and refuse new ones (accept, then close at once).
A link in "pass" mode can also be slowed down: `set_rate(bytes_per_second)` (None: full speed).

Everything runs on daemon threads with bounded waits; `close()` stops them and closes every
socket. Nothing here signals any process.
"""
from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterable

LOCALHOST = "127.0.0.1"
_POLL = 0.05  # seconds; every loop re-checks its stop flag at least this often


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.tainted = False  # bytes were swallowed: the stream is no longer usable
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class FaultProxy:
    """One TCP proxy: LOCALHOST:listen_port -> LOCALHOST:target_port, with a fault switch."""

    def __init__(self, target_port: int, listen_port: int = 0, name: str = "") -> None:
        self.target_port = target_port
        self.name = name or f"->{target_port}"
        self._mode = "pass"
        self._rate: float | None = None
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, listen_port))
        self._listener.listen(16)
        self._listener.settimeout(_POLL)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.swallowed_bytes = 0
        t = threading.Thread(target=self._accept_loop, name=f"proxy{self.name}", daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in ("pass", "blackhole", "reset"):
            raise ValueError(mode)
        with self._lock:
            self._mode = mode
            conns = list(self._conns)
        if mode == "reset":
            for c in conns:
                c.close()
        elif mode == "pass":
            for c in conns:
                if c.tainted:
                    c.close()

    def set_rate(self, bytes_per_second: float | None) -> None:
        """Throttle forwarding (both directions) to about this many bytes a second."""
        self._rate = bytes_per_second

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._mode == "reset":
                with contextlib.suppress(OSError):
                    client.close()
                continue
            try:
                upstream = socket.create_connection((LOCALHOST, self.target_port), timeout=2.0)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._pump, args=(conn,), name=f"pump{self.name}",
                                 daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _pump(self, conn: _Conn) -> None:
        pairs = {conn.client: conn.upstream, conn.upstream: conn.client}
        try:
            while not self._stop.is_set() and not conn.closed:
                try:
                    readable, _, _ = select.select(list(pairs), [], [], _POLL)
                except (OSError, ValueError):
                    return
                for src in readable:
                    rate = self._rate
                    try:
                        data = src.recv(65536 if rate is None else max(1, min(65536, int(rate / 20))))
                    except OSError:
                        return
                    if not data:
                        return
                    if self._mode != "pass":
                        conn.tainted = True
                        self.swallowed_bytes += len(data)
                        continue
                    try:
                        pairs[src].sendall(data)
                    except OSError:
                        return
                    if rate is not None:
                        self._stop.wait(len(data) / rate)
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        for t in self._threads:
            t.join(timeout=2.0)


class ProxyMesh:
    """One FaultProxy per ordered pair of members: `port_for(i, j)` is the port member i must be
    told member j's peer port is."""

    def __init__(self, real_peer_ports: dict[int, int]) -> None:
        self.real = dict(real_peer_ports)
        self.links: dict[tuple[int, int], FaultProxy] = {}
        try:
            for i in self.real:
                for j in self.real:
                    if i != j:
                        self.links[(i, j)] = FaultProxy(self.real[j], name=f"{i}->{j}")
        except BaseException:
            self.close()
            raise

    def port_for(self, i: int, j: int) -> int:
        return self.real[i] if i == j else self.links[(i, j)].port

    def cut(self, frm: int, to: int, mode: str = "blackhole") -> None:
        """Drop traffic in one direction only."""
        self.links[(frm, to)].set_mode(mode)

    def isolate(self, member: int, mode: str = "blackhole") -> None:
        """Cut `member` off from every other member, both directions."""
        for (i, j), link in self.links.items():
            if member in (i, j):
                link.set_mode(mode)

    def partition(self, *groups: Iterable[int], mode: str = "blackhole") -> None:
        """Only members in the same group can talk."""
        group_of = {m: n for n, g in enumerate(groups) for m in g}
        for (i, j), link in self.links.items():
            if group_of.get(i, -1 - i) != group_of.get(j, -1 - j):
                link.set_mode(mode)

    def heal(self) -> None:
        for link in self.links.values():
            link.set_rate(None)
            link.set_mode("pass")

    def close(self) -> None:
        for link in self.links.values():
            link.close()
