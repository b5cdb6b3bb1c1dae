"""One client connection of zkfsd: the ZooKeeper client protocol on a socket, on trio.

The connection only moves bytes: `wire.ServerConnection` turns what arrives into events and
encodes replies into one outgoing buffer, and the member behind it is reached through the
narrow `backend.Backend` (open a session, touch it, submit a write, read). Two tasks:
  reader   everything readable on the socket, decoded in one go; reads are answered at once
           (encoded straight into the outgoing buffer) unless an earlier write of this session
           is still in flight, writes are submitted and queued in order
  sender   answers the queue's head as it becomes ready (a write once applied here, a read
           after the writes before it), then sends all encoded bytes with one syscall
Replies thus leave in request order and a session reads its own writes; a watch event is
encoded when the change is applied, so it precedes every reply that could show the change.
There is no task or channel hop per request: the sender wakes once per turn, not per reply.
A client that stops reading is disconnected once its unsent replies pass a bound; nothing it
does can reach the server's other connections.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Union

import trio

from zkfs import jute
from zkfs.constants import Err, EventType, OpCode, Xid

from zkfsd import sasl, wire
from zkfsd.backend import Backend, SubmittedWrite
from zkfsd.handlers import WRITE_OPS
from zkfsd.tree import digest_auth_id

log = logging.getLogger("zkfsd.server")

MAX_PENDING_REQUESTS = 1000   # per connection; past this we stop reading its socket
# Unsent replies of one connection: a client that never reads its socket must not make the
# server buffer gigabytes of 1 MiB replies (test_faults); the server-wide budget is
# maxClientReplyBytes (Backend.account_reply_bytes).
MAX_OUTBOUND_BYTES = 64 * 1024 * 1024
# Errors a client connection can end with; none of them may reach the listener's nursery (an
# exception escaping a connection handler would take the whole server down with it).
_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
RECEIVE_SIZE = 256 * 1024
ACCOUNT_EVERY = 256 * 1024  # encoded bytes between two checks of the reply budgets


class _Read:
    """A read that waits behind a write of its session (so that it sees that write)."""
    __slots__ = ("xid", "op", "record", "started")

    def __init__(self, xid: int, op: int, record: Any, started: float) -> None:
        self.xid, self.op, self.record, self.started = xid, op, record, started


class _Header:
    """A reply without a body (an error, an auth result) that keeps its place in the order;
    `close` ends the connection once it is sent."""
    __slots__ = ("xid", "err", "close")

    def __init__(self, xid: int, err: int, close: bool) -> None:
        self.xid, self.err, self.close = xid, err, close


_Queued = Union[_Read, _Header, SubmittedWrite]


class ClientConnection:
    """One client socket: bytes → wire events → backend → replies → bytes."""

    def __init__(self, backend: Backend, stream: trio.abc.Stream, peer: tuple[str, int],
                 auth: Sequence[tuple[str, str]] = ()) -> None:
        """`stream` is a TCP stream or a TLS stream over one (or one end of a memory stream in
        tests); `auth` holds the ids that the transport already proved (a client
        certificate's x509 id)."""
        self.backend = backend
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
        self._queue: deque[_Queued] = deque()  # replies owed, in request order
        self._wake = trio.lowlevel.ParkingLot()     # the sender waits here for work
        self._drained = trio.lowlevel.ParkingLot()  # the reader waits here for queue room
        self._closing = False  # the last reply is encoded: send it, then close
        self._scope: trio.CancelScope | None = None
        self._in_send = 0      # bytes handed to the stream, not yet confirmed written
        self.received = 0
        self.sent = 0
        self.queued_bytes = 0  # encoded or being sent, not yet written (the reply budget)
        self.connected_at = time.time()
        # Set by the first frame (a handshake or a four-letter word): a connection that says
        # nothing is closed after the sessionless-connection timeout.
        self.introduced = False

    def __hash__(self) -> int:
        return id(self)

    @property
    def watcher(self) -> ClientConnection:
        """Watches are registered for the connection (handlers.ReadContext)."""
        return self

    # -- what the member calls ------------------------------------------------------------------
    def notify(self, event_type: EventType, path: str) -> None:
        """A watch of this connection fired (called while the change is applied)."""
        if self._closing:
            return
        self.codec.send_event(event_type, path)
        self._encoded()

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

    # -- main ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._handshake_deadline)
                nursery.start_soon(self._sender)
                await self._reader()
                # The peer closed its side (or sent something unforgivable): nothing is left
                # to say to it, except a last reply already encoded.
                if not self._closing:
                    nursery.cancel_scope.cancel()
        except* _CONNECTION_ERRORS:
            # trio wraps a child task's error in an ExceptionGroup, so a plain `except` never
            # matched here and a reset connection crashed the server: match inside the group.
            pass

    async def _handshake_deadline(self) -> None:
        # ZooKeeper closes connections that establish no session within 10 s (its
        # sessionlessCnxnTimeout); idle sockets would otherwise hold descriptors for ever.
        await trio.sleep(self.backend.config.sessionless_timeout / 1000.0)
        if not self.introduced:
            self.abort("no handshake within the sessionless-connection timeout")

    @property
    def _aborted(self) -> bool:
        return self._scope is not None and self._scope.cancel_called

    def _encoded(self) -> None:
        """Bytes were added to the outgoing buffer: account them and wake the sender."""
        queued = self.codec.outgoing + self._in_send
        if queued != self.queued_bytes:
            delta, self.queued_bytes = queued - self.queued_bytes, queued
            if queued > MAX_OUTBOUND_BYTES:
                self.abort("client is not reading its replies")
            self.backend.account_reply_bytes(self, delta)
        self._wake.unpark_all()

    # -- reader ----------------------------------------------------------------------------------
    async def _reader(self) -> None:
        while not self._closing:
            while len(self._queue) >= MAX_PENDING_REQUESTS:
                await self._drained.park()
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except _CONNECTION_ERRORS:
                return
            if not data:
                return
            self.codec.receive_data(data)
            if not await self._handle(self.codec.events()):
                return
            # The sender sends what this turn encoded. Sending from here would save a task
            # switch per turn, but a client that pipelines requests and reads its replies only
            # after sending them all would deadlock with a reader blocked in send.
            self._encoded()

    async def _handle(self, events: list[wire.Event]) -> bool:
        """Handle one turn's events; False once the connection must end (without a reply)."""
        checked = False
        requests = 0
        for event in events:
            if self._closing or self._aborted:
                break
            self.introduced = True
            if isinstance(event, wire.Request):
                if not checked:
                    # Once per turn, not per request: the session is live and this member
                    # still serves it (ZooKeeper touches per request; the outcome is the same).
                    reason = self.backend.refuse_request(self)
                    if reason is not None:
                        self.abort(reason)
                        return False
                    checked = True
                requests += 1
                self._request(event.xid, event.op, event.record)
            elif isinstance(event, wire.Connect):
                await self._connect(event.request)
            elif isinstance(event, wire.BadRequest):
                log.info("bad request from %s:%s (xid %d, op %d): %s", self.peer[0],
                         self.peer[1], event.xid, event.op, event.err.name)
                requests += 1
                self._header(event.xid, event.err, event.fatal)
            elif isinstance(event, wire.FourLetterWord):
                self.codec.send_text(self.backend.four_letter_word(event.command))
                self._closing = True
            else:
                assert isinstance(event, wire.ProtocolError)
                log.info("closing connection from %s:%s: %s", self.peer[0], self.peer[1],
                         event.reason)
                return False
        self.received += requests
        self.backend.count_received(requests)
        return True

    async def _connect(self, request: jute.ConnectRequest) -> None:
        grant = await self.backend.open_session(self, request)
        if grant.response is None:
            self._closing = True  # refused without an answer: the client tries another member
            return
        if grant.response.session_id:
            self.session_id = grant.response.session_id
            self.timeout_ms = grant.response.timeout
            self.read_only = grant.read_only
        self.codec.send_connect_response(grant.response)
        if grant.close:
            self._closing = True

    def _header(self, xid: int, err: int, close: bool) -> None:
        if self._queue:
            self._queue.append(_Header(xid, err, close))
            return
        self.codec.send_reply(xid, self.backend.last_zxid, err)
        self._closing = self._closing or close

    def _request(self, xid: int, op: int, record: Any) -> None:
        if self.session_id == 0:
            return  # requests before a session was granted are ignored, as before
        if (self.backend.config.security.require_sasl and op not in _BEFORE_SASL
                and not any(scheme == "sasl" for scheme, _ in self.auth)):
            # requireClientAuthScheme=sasl: nothing but the SASL exchange until it succeeded.
            log.info("session 0x%x sent op %d before authenticating with SASL; closing",
                     self.session_id, op)
            self._header(xid, Err.SESSION_CLOSED_REQUIRE_SASL_AUTH, True)
            return
        if op == OpCode.AUTH:
            # addauth is applied at once, so that the requests after it (a create with an
            # `auth` ACL, say) already carry the new id; its reply keeps its place.
            err = self._authenticate(record)
            self._header(Xid.AUTH, err, err != Err.OK)
            return
        if self.read_only:
            if op == OpCode.CLOSE_SESSION:
                # The session exists only on this connection: nothing to propose.
                self._header(xid, Err.OK, True)
                return
            if op in WRITE_OPS or op in (OpCode.SYNC, OpCode.RECONFIG):
                self._header(xid, Err.NOT_READ_ONLY, False)
                return
        if op in WRITE_OPS or op in (OpCode.SYNC, OpCode.RECONFIG):
            submitted = self.backend.submit(self, xid, op, record)
            if isinstance(submitted, SubmittedWrite):
                submitted.on_applied(self._write_applied)
                self._queue.append(submitted)
                return
            if submitted is not None:
                self._header(xid, submitted, False)
                return
            # None: nothing to replicate (sync on a standalone member), a read after all.
        if self._queue:
            self._queue.append(_Read(xid, op, record, time.monotonic()))
        else:
            self._answer_read(xid, op, record)

    def _answer_read(self, xid: int, op: int, record: Any) -> None:
        backend = self.backend
        if op == OpCode.PING:
            self.codec.send_reply(Xid.PING, backend.last_zxid, 0)
        elif op == OpCode.SASL:
            self._sasl_step(xid, record)
        elif op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
            for event_type, path in backend.set_watches(self, record):
                self.codec.send_event(event_type, path)
            self.codec.send_reply(xid, backend.last_zxid, 0)
        else:
            zxid, err, body = backend.read(self, op, record)
            self.codec.send_reply(xid, zxid, err, body)
        if self.codec.outgoing + self._in_send - self.queued_bytes > ACCOUNT_EVERY:
            # Big replies (up to 1 MiB each) count against the budgets at once, not only at
            # the end of a turn that may hold hundreds of them.
            self._encoded()

    # -- sender ----------------------------------------------------------------------------------
    def _answer_ready(self) -> bool:
        """Encode the replies owed at the queue's head that can be given now: applied writes
        and the reads and headers behind them, up to the first write still in flight.
        False if the connection must end (a write of it could not be committed)."""
        queue = self._queue
        backend = self.backend
        replied = 0
        while queue and not self._closing and not self._aborted:
            head = queue[0]
            if isinstance(head, SubmittedWrite):
                if not head.done.is_set():
                    break
                queue.popleft()
                reply = backend.write_reply(head)
                if reply is None:
                    self.abort("its write could not be committed (leader, or the link to it, lost)")
                    return False
                self.codec.send_reply(head.xid, *reply)
                backend.record_latency(time.monotonic() - head.started)
                if head.op == OpCode.CLOSE_SESSION:
                    self._closing = True
            elif isinstance(head, _Read):
                queue.popleft()
                self._answer_read(head.xid, head.op, head.record)
                backend.record_latency(time.monotonic() - head.started)
            else:
                queue.popleft()
                self.codec.send_reply(head.xid, backend.last_zxid, head.err)
                self._closing = head.close
            replied += 1
        if replied:
            self._drained.unpark_all()
        return True

    def _write_applied(self) -> None:
        """One of this session's writes was just applied here, and the member has not applied
        the next transaction yet: answer it and the reads queued behind it now, so that they
        see exactly the state it left (a session's later writes may be applied in the same
        batch), as ZooKeeper's final request processor answers in commit order."""
        if self._answer_ready() and self.codec.outgoing:
            self._wake.unpark_all()

    async def _sender(self) -> None:
        queue = self._queue
        while True:
            if not self._answer_ready():
                return
            if self.codec.outgoing:
                if not await self._send_encoded():
                    # The peer is gone (e.g. reset while we wrote): end the whole connection.
                    assert self._scope is not None
                    self._scope.cancel()
                    return
                self._encoded()
                continue
            if self._closing:
                assert self._scope is not None
                self._scope.cancel()
                return
            if not queue or not isinstance(queue[0], SubmittedWrite):
                await self._wake.park()
            else:
                # One wait per turn: the writes behind it are applied in the same batch.
                await queue[0].done.wait()

    async def _send_encoded(self) -> bool:
        """Send everything encoded so far with one call; False if the peer is gone."""
        data = self.codec.data_to_send()
        self._in_send = len(data)
        try:
            await self.stream.send_all(data)
        except _CONNECTION_ERRORS:
            return False
        self._in_send = 0
        frames = self.codec.take_frame_count()
        self.sent += frames
        self.backend.count_sent(frames)
        return True

    # -- authentication --------------------------------------------------------------------------
    def _authenticate(self, record: Any) -> Err:
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
                return Err.OK
        log.info("authentication with scheme %r failed for session 0x%x", record.scheme,
                 self.session_id)
        return Err.AUTH_FAILED

    def _sasl_step(self, xid: int, record: jute.GetSASLRequest) -> None:
        zxid = self.backend.last_zxid
        users = self.backend.config.security.sasl_users
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
            self.codec.send_reply(xid, zxid, Err.AUTH_FAILED)
            self._closing = True
            return
        if step.username is not None:
            ident = ("sasl", step.username)
            if ident not in self.auth:
                self.auth.append(ident)
            log.info("session 0x%x authenticated with SASL as %s", self.session_id,
                     step.username)
        self.codec.send_reply(xid, zxid, 0, jute.SetSASLResponse(step.token))

    def _grant_super(self, ident: tuple[str, str]) -> None:
        """An id named as the administrator (superDigest, X509 superUser) passes every ACL."""
        if (ident in self.backend.config.security.super_ids
                and ("super", ident[1]) not in self.auth):
            self.auth.append(("super", ident[1]))
            log.info("session 0x%x is the administrator (%s:%s)", self.session_id, *ident)


# Requests a session may send before its SASL authentication under requireClientAuthScheme.
_BEFORE_SASL = frozenset({OpCode.SASL, OpCode.PING, OpCode.AUTH, OpCode.CLOSE_SESSION})
