"""One client connection of zkfsd: the ZooKeeper client protocol on a socket, on trio.

Three tasks per connection, in one nursery the connection owns:
  reader   bytes → protocol events (wire.ServerConnection); writes are proposed at once (so
           they pipeline and share fsyncs), every request is queued for the replier in order
  replier  answers strictly in arrival order: a write once it is applied here, a read when
           it reaches the head of the queue, so a session reads its own writes
  writer   sends queued replies and watch notifications, coalescing them into few syscalls
A client that stops reading is disconnected once its queue passes a bound; nothing it does
can reach the server's other connections.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from zkfs import jute
from zkfs.constants import Err, EventType, KeeperState, OpCode, Xid

from zkfsd import fourlw, handlers, sasl, wire
from zkfsd.sessions import new_password
from zkfsd.tree import digest_auth_id

if TYPE_CHECKING:
    from zkfsd.server import ZkServer

log = logging.getLogger("zkfsd.server")

MAX_PENDING_REQUESTS = 1000   # per connection; past this we stop reading its socket
MAX_OUTBOUND_MESSAGES = 20000  # per connection; a client that stops reading is disconnected
# Also bound the *bytes* queued for one connection: 20000 replies of up to 1 MiB each would let
# one client that never reads its socket make the server buffer gigabytes (test_faults).
MAX_OUTBOUND_BYTES = 64 * 1024 * 1024
# Errors a client connection can end with; none of them may reach the listener's nursery (an
# exception escaping a connection handler would take the whole server down with it).
_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
PROTOCOL_VERSION = 0


class ClientConnection:
    """One client socket: reader → (ordered replies) → writer."""

    def __init__(self, server: ZkServer, stream: trio.abc.Stream, peer: tuple[str, int],
                 auth: Sequence[tuple[str, str]] = ()) -> None:
        """`stream` is a TCP stream or a TLS stream over one; `auth` holds the ids that the
        transport already proved (a client certificate's x509 id)."""
        self.server = server
        self.stream = stream
        self.peer = peer
        self.session_id = 0
        self.timeout_ms = 0
        # A read-only session (readonlymode.enabled, member cut off from the majority): reads
        # only, never touched or reported, closed once the member rejoins (as ZooKeeper does).
        self.read_only = False
        self.auth: list[tuple[str, str]] = [("ip", str(self.peer[0])), *auth]
        self._sasl: sasl.DigestMd5Server | None = None
        for ident in auth:
            self._grant_super(ident)
        self.codec = wire.ServerConnection()
        self._out_send, self._out_recv = trio.open_memory_channel[Any](MAX_OUTBOUND_MESSAGES)
        self._pending_send, self._pending_recv = trio.open_memory_channel[Any](MAX_PENDING_REQUESTS)
        self._scope: trio.CancelScope | None = None
        self.received = 0
        self.sent = 0
        self.queued_bytes = 0  # replies handed to the writer but not yet written to the socket
        self.connected_at = time.time()
        # Set by the first frame (a handshake or a four-letter word): a connection that says
        # nothing is closed after the sessionless-connection timeout.
        self.introduced = False

    def __hash__(self) -> int:
        return id(self)

    # -- outbound --------------------------------------------------------------------------------
    def _send(self, data: bytes | None) -> None:
        if data is not None:
            if self.queued_bytes + len(data) > MAX_OUTBOUND_BYTES:
                self.abort("client is not reading its replies")
                return
            self.queued_bytes += len(data)
            self.server.reserve_reply_bytes(self, len(data))
        try:
            self._out_send.send_nowait(data)
        except trio.WouldBlock:
            self.abort("client is not reading its replies")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def notify(self, event_type: EventType, path: str) -> None:
        event = jute.WatcherEvent(int(event_type), int(KeeperState.SYNC_CONNECTED), path)
        self._send(jute.encode_reply(Xid.NOTIFICATION, -1, 0, event))

    def abort(self, reason: str) -> None:
        if self._scope is not None and self._scope.cancel_called:
            return  # already closing; a slow reader would otherwise log this once per reply
        log.info("closing connection from %s:%s (session 0x%x): %s", self.peer[0], self.peer[1],
                 self.session_id, reason)
        if self._scope is not None:
            self._scope.cancel()

    async def close_stream(self) -> None:
        try:
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _writer(self) -> None:
        async for first in self._out_recv:
            batch = [first]
            # Coalesce whatever else is queued into one send (fewer syscalls under load).
            while len(batch) < 256:
                try:
                    batch.append(self._out_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            closing = None in batch
            data = b"".join(b for b in batch if b is not None)
            if data:
                try:
                    await self.stream.send_all(data)
                except _CONNECTION_ERRORS:
                    # The peer is gone (e.g. reset while we wrote): end the whole connection.
                    assert self._scope is not None
                    self._scope.cancel()
                    return
                self.queued_bytes -= len(data)
                self.server.reply_bytes -= len(data)
                self.sent += len(batch)
                self.server.stats.packets_sent += len(batch)
            if closing:
                assert self._scope is not None
                self._scope.cancel()
                return

    # -- main ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._handshake_deadline)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._replier)
                await self._reader()
                # The peer closed its side: nothing left to say to it.
                nursery.cancel_scope.cancel()
        except* _CONNECTION_ERRORS:
            # trio wraps a child task's error in an ExceptionGroup, so a plain `except` never
            # matched here and a reset connection crashed the server: match inside the group.
            pass

    async def _handshake_deadline(self) -> None:
        # ZooKeeper closes connections that establish no session within 10 s (its
        # sessionlessCnxnTimeout); idle sockets would otherwise hold descriptors for ever.
        await trio.sleep(self.server.config.sessionless_timeout / 1000.0)
        if not self.introduced:
            self.abort("no handshake within the sessionless-connection timeout")

    async def _reader(self) -> None:
        while True:
            event = self.codec.next_event()
            if event is wire.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                self.codec.receive_data(data)
                continue
            self.introduced = True
            if isinstance(event, wire.FourLetterWord):
                text = fourlw.answer(event.command, self.server)
                self._send(text.encode())
                self._send(None)
                await trio.sleep_forever()
            if isinstance(event, wire.ProtocolError):
                log.info("closing connection from %s:%s: %s", self.peer[0], self.peer[1],
                         event.reason)
                return
            if isinstance(event, wire.Connect):
                if not await self._connect(event.request):
                    await trio.sleep_forever()  # the writer closes after the refusal is sent
                continue
            self.received += 1
            self.server.stats.packets_received += 1
            if self.read_only:
                if not self.server.read_only:
                    self.abort("this member is back in the quorum: read-only session ends")
                    await trio.sleep_forever()
            elif self.session_id and not self.server.serving:
                # Cut off from the leader: the client must take its session to a member that
                # can vouch for it, before the leader could expire it.
                self.abort("this member is not serving")
                await trio.sleep_forever()
            elif self.session_id and not self.server.touch_session(self.session_id):
                self.abort("session is no longer live")
                await trio.sleep_forever()
            if isinstance(event, wire.BadRequest):
                log.info("bad request from %s:%s (xid %d, op %d): %s", self.peer[0],
                         self.peer[1], event.xid, event.op, event.err.name)
                await self._pending_send.send(("error", event.xid, event.op, event.err,
                                               event.fatal))
                if event.fatal:
                    await trio.sleep_forever()
                continue
            await self._dispatch(event)

    async def _connect(self, request: Any) -> bool:
        server = self.server
        if not server.serving and not request.read_only:
            # Like a ZooKeeper member that is not in a quorum: close, so the client moves on
            # to the next server in its list.
            log.info("refusing session for %s:%s: this member has no leader", self.peer[0],
                     self.peer[1])
            self._send(None)
            return False
        if not server.serving and not server.read_only:
            log.info("refusing read-only session for %s:%s: this member has no leader and "
                     "readonlymode.enabled is off", self.peer[0], self.peer[1])
            self._send(None)
            return False
        if request.last_zxid_seen > server.tree.last_zxid:
            log.info("refusing session for %s:%s: it has seen zxid 0x%x, ours is 0x%x",
                     self.peer[0], self.peer[1], request.last_zxid_seen, server.tree.last_zxid)
            self._send(None)
            return False
        timeout = server.negotiate_timeout(request.timeout)
        if not server.serving:
            return self._connect_read_only(request, timeout)
        if request.session_id == 0:
            created = await server.create_session(timeout)
            if created is None:
                self._send(None)
                return False
            session_id, password = created
        else:
            session_id, password = request.session_id, request.passwd
            if session_id not in server.tree.sessions and not server.is_leader:
                # This member may simply lag behind the createSession: only after applying
                # everything the leader has committed may it call the session expired.
                await server.sync_barrier()
            info = server.tree.sessions.get(session_id)
            if (info is None or info.password != password
                    or not server.touch_session(session_id)):
                log.info("session 0x%x from %s:%s is unknown or expired", session_id,
                         self.peer[0], self.peer[1])
                self._send(jute.encode_connect_response(
                    jute.ConnectResponse(PROTOCOL_VERSION, 0, 0, bytes(16), False)))
                self._send(None)
                return False
            timeout = info.timeout
            log.info("session 0x%x resumed from %s:%s", session_id, self.peer[0], self.peer[1])
        previous = server.by_session.get(session_id)
        if previous is not None and previous is not self:
            previous.abort("session moved to another connection")
        server.by_session[session_id] = self
        self.session_id = session_id
        self.timeout_ms = timeout
        self._send(jute.encode_connect_response(
            jute.ConnectResponse(PROTOCOL_VERSION, timeout, session_id, password, False)))
        return True

    def _connect_read_only(self, request: Any, timeout: int) -> bool:
        """ZooKeeper's read-only server: the session lives on this member only (nothing is
        proposed, nothing keeps a real session alive); a client that brings a live session
        keeps its id, so its ephemeral nodes read as its own."""
        server = self.server
        info = server.tree.sessions.get(request.session_id) if request.session_id else None
        if info is not None and info.password == request.passwd:
            session_id, password, timeout = request.session_id, request.passwd, info.timeout
        else:
            session_id = server.session_ids.next(server.tree.sessions)
            password = new_password()
        self.session_id, self.timeout_ms, self.read_only = session_id, timeout, True
        log.info("read-only session 0x%x for %s:%s (this member has no quorum)", session_id,
                 self.peer[0], self.peer[1])
        self._send(jute.encode_connect_response(
            jute.ConnectResponse(PROTOCOL_VERSION, timeout, session_id, password, True)))
        return True

    async def _dispatch(self, event: wire.Request) -> None:
        op, xid, record = event.op, event.xid, event.record
        started = time.monotonic()
        if self.session_id == 0:
            return
        if (self.server.config.security.require_sasl and op not in _BEFORE_SASL
                and not any(scheme == "sasl" for scheme, _ in self.auth)):
            # requireClientAuthScheme=sasl: nothing but the SASL exchange until it succeeded.
            log.info("session 0x%x sent op %d before authenticating with SASL; closing",
                     self.session_id, op)
            await self._pending_send.send(("error", xid, op,
                                           Err.SESSION_CLOSED_REQUIRE_SASL_AUTH, True))
            return
        if op == OpCode.AUTH:
            reply, fatal = self._authenticate(record)
            await self._pending_send.send(("reply", reply, fatal))
            return
        if self.read_only and op == OpCode.CLOSE_SESSION:
            # The session exists only on this connection: nothing to propose.
            zxid = self.server.tree.last_zxid
            await self._pending_send.send(("reply", jute.encode_reply(xid, zxid, 0, None), True))
            return
        if self.read_only and (op in handlers.WRITE_OPS or op == OpCode.SYNC):
            await self._pending_send.send(("error", xid, op, Err.NOT_READ_ONLY, False))
            return
        if op in handlers.WRITE_OPS:
            try:
                txn = handlers.write_txn(op, record, self.session_id, self.auth)
            except handlers.RequestError as exc:
                await self._pending_send.send(("error", xid, op, exc.err, False))
                return
            proposal = self.server.propose(txn)
            await self._pending_send.send(("write", xid, op, proposal, started))
        elif op == OpCode.SYNC and not self.server.standalone:
            # Through the leader (read index): done once everything the leader had committed
            # when it got the request is applied here.
            proposal = self.server.sync(self.session_id, record.path)
            await self._pending_send.send(("write", xid, op, proposal, started))
        else:
            await self._pending_send.send(("read", xid, op, record, started))

    async def _replier(self) -> None:
        """Answers requests strictly in arrival order; a read waits for this session's writes."""
        server = self.server
        async for item in self._pending_recv:
            kind = item[0]
            if kind == "write":
                _, xid, op, proposal, started = item
                await proposal.done.wait()
                if proposal.result is None:
                    self.abort("its write could not be committed (leader lost)")
                    return
                if op == OpCode.SYNC:
                    err, body = Err.OK, jute.SyncResponse(proposal.txn.body.path)
                else:
                    err, body = handlers.write_response(op, proposal.result)
                zxid = proposal.zxid
                self._send(jute.encode_reply(xid, zxid, err, body))
                server.stats.record_latency(time.monotonic() - started)
                if op == OpCode.CLOSE_SESSION:
                    self._send(None)
                    return
            elif kind == "read":
                _, xid, op, record, started = item
                self._answer_read(xid, op, record)
                server.stats.record_latency(time.monotonic() - started)
            elif kind == "reply":
                _, reply, fatal = item
                self._send(reply)
                if fatal:
                    self._send(None)
                    return
            else:
                _, xid, op, err, fatal = item
                self._send(jute.encode_reply(xid, server.tree.last_zxid, err, None))
                if fatal:
                    self._send(None)
                    return

    def _answer_read(self, xid: int, op: int, record: Any) -> None:
        server = self.server
        zxid = server.tree.last_zxid
        if op == OpCode.PING:
            self._send(jute.encode_reply(Xid.PING, zxid, 0, None))
            return
        if op == OpCode.SASL:
            self._sasl_step(xid, record)
            return
        if op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
            for event_type, path in handlers.set_watches(server.tree, server.watches, self, record):
                self.notify(event_type, path)
            self._send(jute.encode_reply(xid, zxid, 0, None))
            return
        ctx = handlers.ReadContext(self, self.session_id, self.auth)
        err, body = handlers.execute_read(server.tree, server.watches, ctx, op, record)
        self._send(jute.encode_reply(xid, zxid, err, body))

    def _authenticate(self, record: Any) -> tuple[bytes, bool]:
        """addauth, applied at once by the reader so that the requests after it (a create
        with an `auth` ACL, say) already carry the new id; the reply keeps its place."""
        zxid = self.server.tree.last_zxid
        credential = record.auth or b""
        if record.scheme == "digest":
            try:
                user, password = credential.decode("utf-8").split(":", 1)
            except (UnicodeDecodeError, ValueError):
                user = None
            if user is not None:
                ident = ("digest", digest_auth_id(user, password))
                if ident not in self.auth:
                    self.auth.append(ident)
                self._grant_super(ident)
                return jute.encode_reply(Xid.AUTH, zxid, 0, None), False
        log.info("authentication with scheme %r failed for session 0x%x", record.scheme,
                 self.session_id)
        return jute.encode_reply(Xid.AUTH, zxid, Err.AUTH_FAILED, None), True

    def _sasl_step(self, xid: int, record: jute.GetSASLRequest) -> None:
        zxid = self.server.tree.last_zxid
        users = self.server.config.security.sasl_users
        try:
            if users is None:
                raise sasl.SaslError("SASL is not configured (jaasLoginFile)")
            if self._sasl is None:
                self._sasl = sasl.DigestMd5Server(users)
            step = self._sasl.step(record.token or b"")
        except sasl.SaslError as exc:
            # As ZooKeeper: a failed SASL exchange ends the connection.
            log.info("SASL authentication failed for session 0x%x from %s: %s", self.session_id,
                     self.peer[0], exc)
            self._send(jute.encode_reply(xid, zxid, Err.AUTH_FAILED, None))
            self._send(None)
            return
        if step.username is not None:
            ident = ("sasl", step.username)
            if ident not in self.auth:
                self.auth.append(ident)
            log.info("session 0x%x authenticated with SASL as %s", self.session_id,
                     step.username)
        self._send(jute.encode_reply(xid, zxid, 0, jute.SetSASLResponse(step.token)))

    def _grant_super(self, ident: tuple[str, str]) -> None:
        """An id named as the administrator (superDigest, X509 superUser) passes every ACL."""
        if ident in self.server.config.security.super_ids and ("super", ident[1]) not in self.auth:
            self.auth.append(("super", ident[1]))
            log.info("session 0x%x is the administrator (%s:%s)", self.session_id, *ident)


# Requests a session may send before its SASL authentication under requireClientAuthScheme.
_BEFORE_SASL = frozenset({OpCode.SASL, OpCode.PING, OpCode.AUTH, OpCode.CLOSE_SESSION})
