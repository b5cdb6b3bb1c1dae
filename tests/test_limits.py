"""Client-port floods: per-address limits, silent connections, a shared reply budget, and running
out of descriptors. Each holds memory and service within a stated bound, and `ruok` answers."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import LOCALHOST, is_ok, rss_kib
from zkfs import jute

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, *lines: str) -> list[str]:
    cfg = tmp_path / "limits.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return ["--config", str(cfg)]


@contextlib.contextmanager
def _sockets(port: int, source: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to the server from `source` (another loopback address)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.settimeout(5)
            s.connect((LOCALHOST, port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True




def test_max_client_cnxns_per_address(zkfsd_factory, tmp_path) -> None:
    server = zkfsd_factory(extra_args=_config(tmp_path, "maxClientCnxns=5"))
    with _sockets(server.port, "127.0.0.2", 8) as socks:
        time.sleep(0.3)
        refused = [s for s in socks if _closed_by_server(s, 0.5)]
        assert len(refused) == 3, "the 6th and later connections from one address are refused"
        # Another address is not affected.
        assert is_ok(LOCALHOST, server.port)
    log = server.log_text()
    assert log.count("too many connections from 127.0.0.2") == 1, "logged once, not per refusal"


def test_connections_that_never_handshake_are_closed(zkfsd_factory, tmp_path) -> None:
    server = zkfsd_factory(extra_args=_config(tmp_path, "maxClientCnxns=0",
                                              "sessionlessCnxnTimeout=800"))
    with _sockets(server.port, "127.0.0.3", 300) as socks:
        assert is_ok(LOCALHOST, server.port)
        time.sleep(1.5)
        assert all(_closed_by_server(s, 2.0) for s in socks)
    assert is_ok(LOCALHOST, server.port)


def test_out_of_descriptors_one_log_line_and_ruok_still_answers(zkfsd_factory, tmp_path) -> None:
    server = zkfsd_factory(extra_args=_config(tmp_path, "maxClientCnxns=0"))
    assert server.pid is not None
    subprocess.run(["prlimit", f"--pid={server.pid}", "--nofile=64:64"], check=True)
    with _sockets(server.port, "127.0.0.4", 150):
        # The flood took every descriptor; the server drops silent connections to make room.
        deadline = time.monotonic() + 15
        while not is_ok(LOCALHOST, server.port, timeout=1.0):
            assert time.monotonic() < deadline, "ruok got no answer while flooded"
            time.sleep(0.2)
    log = server.log_text()
    assert 1 <= log.count("cannot accept clients") <= 2
    assert "Traceback" not in log


def test_one_reply_budget_for_all_clients(zkfsd_factory, tmp_path) -> None:
    """Four clients ask for a 1 MiB node over and over and never read: together they may queue
    at most maxClientReplyBytes (16 MiB here) before the worst of them is dropped."""
    from helpers import kazoo_client

    server = zkfsd_factory(extra_args=_config(tmp_path, "maxClientReplyBytes=16777216"))
    with kazoo_client(server.hosts) as k:
        k.create("/big", b"x" * (1 << 20))
    assert server.pid is not None
    before = rss_kib(server.pid)
    request = jute.encode_request(1, 4, jute.GetDataRequest("/big", False))  # getData
    hogs: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.create_connection((LOCALHOST, server.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(jute.encode_connect_request(
                jute.ConnectRequest(0, 0, 10000, 0, bytes(16), False)))
            hogs.append(s)
        time.sleep(0.5)
        for s in hogs:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                for _ in range(60):
                    s.send(request)
        time.sleep(2)
        grown_mib = (rss_kib(server.pid) - before) / 1024
        assert grown_mib < 80, f"the server grew by {grown_mib:.0f} MiB"
        with kazoo_client(server.hosts) as k:  # the others are still served
            assert len(k.get("/big")[0]) == 1 << 20
    finally:
        for s in hogs:
            s.close()
    assert "client is not reading its replies" in server.log_text()
