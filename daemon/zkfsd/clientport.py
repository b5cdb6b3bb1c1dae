"""The client port of a process that serves clients: listeners, accepting within
maxClientCnxns and the descriptor limit, TLS handshakes, the reply budget, and one
`ClientConnection` per socket.

A mixin: the member (server.ZkServer) and each client-serving worker process (worker.py) use
it the same way. The class it is mixed into provides `config`, `backend` (what connections
talk to) and `watches` (its watch tables), and calls `_init_client_port()`.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
from typing import TYPE_CHECKING

import trio

from zkfsd import tls
from zkfsd.clients import ClientConnection
from zkfsd.config import ServerConfig

if TYPE_CHECKING:
    from zkfsd.backend import Backend
    from zkfsd.watches import WatchManager

log = logging.getLogger("zkfsd.server")


async def open_shared_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listeners on host:port with SO_REUSEPORT, so that the member and its client workers
    (clientWorkers) accept on the same port and the kernel spreads the connections over
    them. Port 0 picks a free port; the workers are then given the one picked."""
    listeners: list[trio.SocketListener] = []
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    for family, type_, proto, _name, address in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            for listener in listeners:
                await listener.aclose()
            raise
        listeners.append(trio.SocketListener(sock))
        if port == 0:
            # One family is enough for a port picked by the kernel (the next could collide).
            break
    return listeners


class ClientPort:
    """Mixin: the client listeners and connections of one client-serving process."""

    config: ServerConfig
    backend: Backend
    watches: WatchManager
    by_session: dict[int, ClientConnection]

    def _init_client_port(self) -> None:
        self.connections: set[ClientConnection] = set()
        self._per_address: dict[str, int] = {}  # open client connections by remote address
        self._refusals_logged: dict[str, float] = {}
        self.reply_bytes = 0  # replies queued for all clients, not yet written
        self.listen_port: int | None = None
        self.secure_listen_port: int | None = None

    # -- clients ---------------------------------------------------------------------------------
    async def _listen(self, nursery: trio.Nursery) -> None:
        """The client port and/or the secure (TLS) client port, as configured."""
        config, security = self.config, self.config.security
        if config.client_port is not None:
            if config.client_workers > 1:
                listeners = await open_shared_listeners(config.client_address,
                                                        config.client_port)
            else:
                listeners = await trio.open_tcp_listeners(config.client_port,
                                                          host=config.client_address)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery, None)
            self.listen_port = listeners[0].socket.getsockname()[1]
        if security.secure_client_port is not None:
            assert security.client_tls is not None
            context = tls.server_context(security.client_tls)
            listeners = await trio.open_tcp_listeners(
                security.secure_client_port,
                host=security.secure_client_address or config.client_address)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery, context)
            self.secure_listen_port = listeners[0].socket.getsockname()[1]

    def listening_on(self) -> str:
        """The client ports, for logs and systemd's STATUS=."""
        ports = []
        if self.listen_port is not None:
            ports.append(f"{self.config.client_address}:{self.listen_port}")
        if self.secure_listen_port is not None:
            address = self.config.security.secure_client_address or self.config.client_address
            ports.append(f"{address}:{self.secure_listen_port} (TLS)")
        return " and ".join(ports)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery,
                           context: ssl.SSLContext | None) -> None:
        """Accept clients, within maxClientCnxns per address and the descriptor limit.

        Out of descriptors (EMFILE and friends), the oldest connection that never sent a
        handshake is dropped to make room, and accepting pauses briefly; this is logged once a
        minute, not once per attempt, so a flood cannot fill the log."""
        limit = self.config.max_client_cnxns
        last_warning = -math.inf
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                if trio.current_time() - last_warning > 60:
                    last_warning = trio.current_time()
                    log.warning("cannot accept clients: %s; dropping connections that sent no "
                                "handshake and backing off (next warning in a minute)",
                                os.strerror(exc.errno))
                self._drop_oldest_idle()
                await trio.sleep(0.1)
                continue
            try:
                address = stream.socket.getpeername()[0]
            except OSError:
                await stream.aclose()
                continue
            if limit and self._per_address.get(address, 0) >= limit:
                if trio.current_time() - self._refusals_logged.get(address, -math.inf) > 60:
                    self._refusals_logged[address] = trio.current_time()
                    log.warning("too many connections from %s (maxClientCnxns is %d); refusing "
                                "more (logged once a minute per address)", address, limit)
                await stream.aclose()
                continue
            self._per_address[address] = self._per_address.get(address, 0) + 1
            nursery.start_soon(self._handle_client, stream, address, context)

    def _connection_gone(self, address: str) -> None:
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    async def _tls_handshake(self, stream: trio.SocketStream, context: ssl.SSLContext,
                             peer: tuple[str, int]) -> tuple[trio.SSLStream | None, list]:
        """TLS on the secure client port; the client certificate, if any, gives its x509 id."""
        tls_stream = trio.SSLStream(stream, context, server_side=True)
        with trio.move_on_after(self.config.sessionless_timeout / 1000.0):
            try:
                await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("TLS handshake with %s:%s failed: %s", peer[0], peer[1],
                         getattr(exc, "__cause__", None) or exc)
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return None, []
            der = tls_stream.getpeercert(binary_form=True)
            return tls_stream, ([("x509", tls.x509_id(der))] if der else [])
        log.info("TLS handshake with %s:%s timed out", peer[0], peer[1])
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return None, []

    def _drop_oldest_idle(self) -> None:
        idle = [c for c in self.connections if not c.introduced]
        if idle:
            min(idle, key=lambda c: c.connected_at).abort("making room: out of descriptors")

    def reserve_reply_bytes(self, conn: ClientConnection, size: int) -> None:
        """Account `size` bytes queued for `conn` against the budget shared by all clients.
        Past the budget, the connection holding the most unsent replies is dropped: it is the
        one not reading them."""
        self.reply_bytes += size
        if self.reply_bytes > self.config.max_client_reply_bytes:
            hog = max(self.connections, key=lambda c: c.queued_bytes, default=conn)
            hog.abort(f"client is not reading its replies ({hog.queued_bytes} bytes queued; "
                      f"all clients together may queue {self.config.max_client_reply_bytes})")

    async def _handle_client(self, stream: trio.SocketStream, address: str,
                             context: ssl.SSLContext | None) -> None:
        try:
            peer = stream.socket.getpeername()[:2]
        except OSError:
            peer = (address, 0)
        client: trio.abc.Stream = stream
        auth: list[tuple[str, str]] = []
        if context is not None:
            client, auth = await self._tls_handshake(stream, context, peer)
            if not client:
                self._connection_gone(address)
                return
        try:
            await self.serve_connection(client, peer, auth)
        finally:
            self._connection_gone(address)

    async def serve_connection(self, stream: trio.abc.Stream, peer: tuple[str, int],
                               auth: list[tuple[str, str]] | None = None) -> None:
        """Serve one client over `stream` until either side ends it: a socket accepted
        above, or one end of a trio memory stream (the in-process tests)."""
        conn = ClientConnection(self.backend, stream, peer, auth or [])
        self.connections.add(conn)
        try:
            await conn.serve()
        except Exception:  # noqa: BLE001 - a bug in one connection must not stop the server
            log.exception("connection from %s:%s (session 0x%x) failed", conn.peer[0],
                          conn.peer[1], conn.session_id)
        finally:
            self.connections.discard(conn)
            self.reply_bytes -= conn.queued_bytes
            conn.queued_bytes = 0
            self.watches.remove_watcher(conn)
            if conn.session_id and self.by_session.get(conn.session_id) is conn:
                del self.by_session[conn.session_id]
            self._connection_closed(conn)
            with trio.CancelScope(shield=True):
                await conn.close_stream()

    def _connection_closed(self, conn: ClientConnection) -> None:
        """A connection ended (after the tables above forgot it); for the class mixed into."""
