"""HTTP listeners: ZooKeeper's AdminServer commands (/commands/NAME, JSON) and the Prometheus
endpoint (/metrics), each on its own port as in ZooKeeper.

A deliberately small HTTP/1.1 server on trio: GET (and HEAD) only, one request per
connection, a bounded header and a deadline, since these ports answer monitoring scrapes and
operators' curl, not browsers.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from zkfsd import fourlw
from zkfsd.metrics import latency, mntr_rows, prometheus_text

if TYPE_CHECKING:
    from zkfsd.server import ZkServer

log = logging.getLogger("zkfsd.admin")

_MAX_HEADER = 8192
_DEADLINE = 10.0  # seconds for a client to send its request
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[str], Response]


async def serve_http(host: str, port: int, handler: Handler, what: str, *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `handler(path)` on host:port until cancelled; task_status gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("%s listening on http://%s:%d/", what, host, bound)
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(_DEADLINE):
                await _one_request(stream, handler)

    await trio.serve_listeners(handle, listeners)


async def _one_request(stream: trio.SocketStream, handler: Handler) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > _MAX_HEADER:
            await _send(stream, Response(400, b'{"error": "request header too large"}'), True)
            return
        try:
            chunk = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return
        if not chunk:
            return
        buf += chunk
    request_line = buf.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _send(stream, Response(400, b'{"error": "malformed request line"}'), True)
        return
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        await _send(stream, Response(405, b'{"error": "only GET is supported"}'), True)
        return
    path = target.split("?", 1)[0]
    try:
        response = handler(path)
    except Exception:  # noqa: BLE001 - a monitoring request must never take the server down
        log.exception("error answering %s", path)
        response = Response(500, b'{"error": "internal error"}')
    await _send(stream, response, method == "GET")


async def _send(stream: trio.SocketStream, r: Response, with_body: bool) -> None:
    head = (f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Error')}\r\n"
            f"Content-Type: {r.content_type}\r\n"
            f"Content-Length: {len(r.body)}\r\n"
            "Connection: close\r\n\r\n").encode("ascii")
    try:
        await stream.send_all(head + (r.body if with_body else b""))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# -- AdminServer commands ---------------------------------------------------------------------------

def _monitor(server: ZkServer) -> dict[str, Any]:
    # The mntr rows are typed already: numbers stay JSON numbers, as in ZooKeeper's answer.
    return {key.removeprefix("zk_"): value for key, value in mntr_rows(server, fourlw.VERSION)}


def _connections(server: ZkServer) -> list[dict[str, Any]]:
    return [{"remote_socket_address": f"{c.peer[0]}:{c.peer[1]}",
             "packets_received": c.received, "packets_sent": c.sent,
             "session_id": f"0x{c.session_id:x}", "session_timeout": c.timeout_ms,
             "established": int(c.connected_at * 1000)}
            for c in sorted(server.connections, key=lambda c: c.connected_at)]


def _server_stats(server: ZkServer) -> dict[str, Any]:
    lo, avg, hi = latency(server)
    s = server.stats
    return {"version": fourlw.VERSION, "read_only": False,
            "server_stats": {"packets_sent": s.packets_sent,
                             "packets_received": s.packets_received,
                             "server_state": server.role(),
                             "outstanding_requests": server.outstanding,
                             "min_latency": lo, "avg_latency": avg, "max_latency": hi,
                             "last_processed_zxid": server.tree.last_zxid,
                             "num_alive_client_connections": len(server.connections)},
            "node_count": server.tree.node_count}


def _stats(server: ZkServer) -> dict[str, Any]:
    return {**_server_stats(server), "connections": _connections(server),
            "secure_connections": []}


def _configuration(server: ZkServer) -> dict[str, Any]:
    c = server.config
    return {"client_port": server.listen_port or c.client_port,
            "client_port_address": c.client_address, "data_dir": c.data_dir,
            "data_log_dir": c.data_log_dir or c.data_dir, "tick_time": c.tick_time,
            "max_client_cnxns": c.max_client_cnxns, "min_session_timeout": c.min_timeout,
            "max_session_timeout": c.max_timeout, "server_id": server.member_id,
            "snap_count": c.snap_count}


def _dump(server: ZkServer) -> dict[str, Any]:
    return {"expiry_time_to_session_ids": {},
            "session_id_to_ephemeral_paths": {f"0x{sid:x}": server.tree.ephemerals(sid)
                                              for sid in sorted(server.tree.sessions)}}


def _environment(server: ZkServer) -> dict[str, Any]:
    return {"zookeeper.version": fourlw.VERSION, "host.name": socket.gethostname(),
            "python.version": sys.version.split()[0],
            "python.implementation": platform.python_implementation(),
            "os.name": platform.system(), "os.arch": platform.machine(),
            "os.version": platform.release(), "user.name": os.environ.get("USER", ""),
            "user.dir": os.getcwd(), "process.id": os.getpid()}


def _watch_summary(server: ZkServer) -> dict[str, Any]:
    w = server.watches
    return {"num_connections": len(w.by_watcher()), "num_paths": w.paths(),
            "num_total_watches": w.count()}


def _watches(server: ZkServer) -> dict[str, Any]:
    return {"session_id_to_watched_paths": {
        f"0x{getattr(conn, 'session_id', 0):x}": sorted(paths)
        for conn, paths in server.watches.by_watcher().items()}}


def _watches_by_path(server: ZkServer) -> dict[str, Any]:
    by_path: dict[str, list[str]] = {}
    for conn, paths in server.watches.by_watcher().items():
        for p in paths:
            by_path.setdefault(p, []).append(f"0x{getattr(conn, 'session_id', 0):x}")
    return {"path_to_session_ids": {p: sorted(set(ids)) for p, ids in sorted(by_path.items())}}


# ZooKeeper's command name, its aliases (the four-letter word among them) and the function.
ADMIN_COMMANDS: list[tuple[str, tuple[str, ...], Callable[[ZkServer], dict[str, Any]]]] = [
    ("ruok", (), lambda server: {}),
    ("monitor", ("mntr",), _monitor),
    ("stats", ("stat",), _stats),
    ("server_stats", ("srvr",), _server_stats),
    ("configuration", ("conf", "config"), _configuration),
    ("connections", ("cons",), lambda server: {"connections": _connections(server),
                                               "secure_connections": []}),
    ("dump", (), _dump),
    ("environment", ("envi", "env"), _environment),
    ("watch_summary", ("wchs",), _watch_summary),
    ("watches", ("wchc",), _watches),
    ("watches_by_path", ("wchp",), _watches_by_path),
    ("is_read_only", ("isro",), lambda server: {"read_only": False}),
]
_BY_NAME = {alias: (name, fn) for name, aliases, fn in ADMIN_COMMANDS
            for alias in (name, *aliases)}


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(obj, indent=2) + "\n").encode())


def admin_handler(server: ZkServer) -> Handler:
    def handle(path: str) -> Response:
        if path.rstrip("/") == "/commands":
            return _json({"commands": sorted(_BY_NAME), "error": None})
        prefix = "/commands/"
        if not path.startswith(prefix):
            return _json({"error": f"unknown path {path}; try /commands"}, 404)
        found = _BY_NAME.get(path[len(prefix):].strip("/"))
        if found is None:
            return _json({"command": path[len(prefix):], "error": "Unknown command"}, 404)
        name, fn = found
        return _json({**fn(server), "command": name, "error": None})
    return handle


def metrics_handler(server: ZkServer) -> Handler:
    def handle(path: str) -> Response:
        if path.rstrip("/") not in ("/metrics", ""):
            return Response(404, b"not found; try /metrics\n", "text/plain")
        return Response(200, prometheus_text(server, fourlw.VERSION).encode(),
                        "text/plain; version=0.0.4; charset=utf-8")
    return handle


async def start_monitoring(server: ZkServer, nursery: trio.Nursery) -> dict[str, int]:
    """Open the AdminServer and Prometheus listeners the configuration asks for; returns the
    bound ports by name ("admin", "metrics")."""
    c = server.config
    ports: dict[str, int] = {}
    if c.admin_enabled:
        ports["admin"] = await nursery.start(serve_http, c.admin_address, c.admin_port,
                                             admin_handler(server), "AdminServer")
    if c.metrics_prometheus:
        ports["metrics"] = await nursery.start(serve_http, c.metrics_address, c.metrics_port,
                                               metrics_handler(server), "Prometheus metrics")
    return ports


__all__ = ["ADMIN_COMMANDS", "Response", "admin_handler", "metrics_handler",
           "serve_http", "start_monitoring"]
