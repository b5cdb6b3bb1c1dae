"""The narrow interface between client connections and the member that serves them.

A connection (clients.py) only moves bytes; everything it needs from the member goes through
`Backend`: open a session, check that a session may still send requests (its touch), submit a
write and learn its reply once applied, answer a read, re-set watches, answer a four-letter
word. `MemberBackend` implements it over one `ZkServer`; tests can run connections against it
in-process (tests/test_server_inprocess.py), and a client-serving process other than the
consensus one would implement the same interface.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from zkfs import jute
from zkfs.constants import Err, EventType, OpCode

from zkfsd import fourlw, handlers, metrics
from zkfsd.config import ServerConfig
from zkfsd.reconfig import ReconfigError
from zkfsd.sessions import new_password

if TYPE_CHECKING:
    from zkfsd.server import Proposal, ZkServer

log = logging.getLogger("zkfsd.server")

PROTOCOL_VERSION = 0


class Connection(Protocol):
    """What the member knows of a client connection; it is also a handlers.ReadContext (its
    `watcher`, itself, is what the watch tables hold)."""
    session_id: int
    auth: list[tuple[str, str]]
    peer: tuple[str, int]
    read_only: bool

    @property
    def watcher(self) -> Any: ...

    def notify(self, event_type: EventType, path: str) -> None: ...

    def abort(self, reason: str) -> None: ...


@dataclass(frozen=True)
class SessionGrant:
    """The answer to a connect request. `response` None: close without a reply (the client
    moves on to another member); `close`: send the response, then close (an expired or
    unknown session is told so with a zero timeout)."""
    response: jute.ConnectResponse | None
    read_only: bool = False
    close: bool = False


class SubmittedWrite:
    """A write on its way through the log; `done` is set once it is applied on this member
    (or once it failed: `Backend.write_reply` then returns None)."""
    __slots__ = ("xid", "op", "started", "done", "proposal")

    def __init__(self, xid: int, op: int, proposal: Proposal) -> None:
        self.xid = xid
        self.op = op
        self.started = time.monotonic()
        self.proposal = proposal
        self.done: trio.Event = proposal.done

    def on_applied(self, callback: Callable[[], None]) -> None:
        """Call `callback` right after the write is applied here, before the member applies
        the next transaction (not if it fails: `done` tells that)."""
        self.proposal.on_applied = callback


class Backend(Protocol):
    config: ServerConfig

    @property
    def last_zxid(self) -> int:
        """The zxid of the last transaction applied here (reply headers carry it)."""

    async def open_session(self, conn: Connection, request: jute.ConnectRequest) -> SessionGrant:
        """Create, resume or refuse the session a connect request asks for."""

    def refuse_request(self, conn: Connection) -> str | None:
        """Touch conn's session; a reason to close the connection if it may not go on."""

    def submit(self, conn: Connection, xid: int, op: int,
               record: Any) -> SubmittedWrite | Err | None:
        """Send a write (or a sync) into the log. An Err refuses it at once; None means there
        is nothing to replicate (sync on a standalone member) and it is answered as a read."""

    def write_reply(self, write: SubmittedWrite) -> tuple[int, int, Any] | None:
        """(zxid, err, body) of an applied write; None if it failed before it could commit."""

    def read(self, conn: Connection, op: int, record: Any) -> tuple[int, int, Any]:
        """(zxid, err, body) of a read, its watch registered in the same step."""

    def set_watches(self, conn: Connection, record: Any) -> list[tuple[EventType, str]]:
        """Re-register a reconnecting client's watches; the events it missed meanwhile."""

    def four_letter_word(self, command: str) -> str: ...

    def account_reply_bytes(self, conn: Connection, delta: int) -> None:
        """Replies encoded for conn but not yet written grew (or shrank) by delta bytes."""

    def count_received(self, requests: int) -> None: ...

    def count_sent(self, replies: int) -> None: ...

    def record_latency(self, seconds: float) -> None: ...


class MemberBackend:
    """The Backend of one zkfsd member (all the connection-facing uses of ZkServer)."""

    def __init__(self, server: ZkServer) -> None:
        self.server = server
        self.config = server.config
        self.stats = server.stats

    @property
    def last_zxid(self) -> int:
        return self.server.tree.last_zxid

    # -- sessions --------------------------------------------------------------------------------
    async def open_session(self, conn: Connection, request: jute.ConnectRequest) -> SessionGrant:
        server = self.server
        peer = conn.peer
        if not server.serving and not request.read_only:
            # Like a ZooKeeper member that is not in a quorum: close, so the client moves on
            # to the next server in its list.
            log.info("refusing session for %s:%s: this member has no leader", *peer)
            return SessionGrant(None)
        if not server.serving and not server.read_only:
            log.info("refusing read-only session for %s:%s: this member has no leader and "
                     "readonlymode.enabled is off", *peer)
            return SessionGrant(None)
        if request.last_zxid_seen > server.tree.last_zxid:
            log.info("refusing session for %s:%s: it has seen zxid 0x%x, ours is 0x%x",
                     peer[0], peer[1], request.last_zxid_seen, server.tree.last_zxid)
            return SessionGrant(None)
        timeout = server.negotiate_timeout(request.timeout)
        if not server.serving:
            return self._open_read_only(conn, request, timeout)
        if request.session_id == 0:
            created = await server.create_session(timeout)
            if created is None:
                return SessionGrant(None)
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
                log.info("session 0x%x from %s:%s is unknown or expired", session_id, *peer)
                return SessionGrant(jute.ConnectResponse(PROTOCOL_VERSION, 0, 0, bytes(16),
                                                         False), close=True)
            timeout = info.timeout
            log.info("session 0x%x resumed from %s:%s", session_id, *peer)
        previous = server.by_session.get(session_id)
        if previous is not None and previous is not conn:
            previous.abort("session moved to another connection")
        server.by_session[session_id] = conn  # type: ignore[assignment]
        return SessionGrant(jute.ConnectResponse(PROTOCOL_VERSION, timeout, session_id,
                                                 password, False))

    def _open_read_only(self, conn: Connection, request: jute.ConnectRequest,
                        timeout: int) -> SessionGrant:
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
        log.info("read-only session 0x%x for %s:%s (this member has no quorum)", session_id,
                 conn.peer[0], conn.peer[1])
        return SessionGrant(jute.ConnectResponse(PROTOCOL_VERSION, timeout, session_id,
                                                 password, True), read_only=True)

    def refuse_request(self, conn: Connection) -> str | None:
        server = self.server
        if not conn.session_id:
            return None
        if conn.read_only:
            if not server.read_only:
                return "this member is back in the quorum: read-only session ends"
            return None
        if not server.serving:
            # Cut off from the leader: the client must take its session to a member that
            # can vouch for it, before the leader could expire it.
            return "this member is not serving"
        if not server.touch_session(conn.session_id):
            return "session is no longer live"
        return None

    # -- requests --------------------------------------------------------------------------------
    def submit(self, conn: Connection, xid: int, op: int,
               record: Any) -> SubmittedWrite | Err | None:
        server = self.server
        if op == OpCode.SYNC:
            if server.standalone:
                return None
            # Through the leader (read index): done once everything the leader had committed
            # when it got the request is applied here.
            return SubmittedWrite(xid, op, server.sync(conn.session_id, record.path))
        if op == OpCode.RECONFIG:
            try:
                txn = server.reconfig_request(record, conn.session_id, conn.auth)
            except ReconfigError as exc:
                log.info("session 0x%x: reconfig refused (%s): %s", conn.session_id,
                         exc.err.name, exc)
                return exc.err
            return SubmittedWrite(xid, op, server.propose(txn))
        try:
            txn = handlers.write_txn(op, record, conn.session_id, conn.auth)
        except handlers.RequestError as exc:
            return exc.err
        return SubmittedWrite(xid, op, server.propose(txn))

    def write_reply(self, write: SubmittedWrite) -> tuple[int, int, Any] | None:
        proposal = write.proposal
        if proposal.result is None:
            return None
        if write.op == OpCode.SYNC:
            err, body = Err.OK, jute.SyncResponse(proposal.txn.body.path)
        else:
            err, body = handlers.write_response(write.op, proposal.result)
        return proposal.zxid, err, body

    def read(self, conn: Connection, op: int, record: Any) -> tuple[int, int, Any]:
        server = self.server
        err, body = handlers.execute_read(server.tree, server.watches, conn, op, record)
        return server.tree.last_zxid, err, body

    def set_watches(self, conn: Connection, record: Any) -> list[tuple[EventType, str]]:
        server = self.server
        return handlers.set_watches(server.tree, server.watches, conn, record)

    def four_letter_word(self, command: str) -> str:
        whitelist = getattr(self.config, "four_letter_words", None)
        if command in fourlw.ACTIONS and fourlw.allowed(command, whitelist):
            self.server.stats.reset()  # srst
        return fourlw.answer(command, self.status(fourlw.NEEDS.get(command, frozenset())))

    def status(self, needs: frozenset[str] = frozenset()) -> fourlw.ServerStatus:
        """A snapshot for the four-letter words; `needs` names the costly parts to include
        (fourlw.NEEDS)."""
        server, stats, tree, config = self.server, self.server.stats, self.server.tree, self.config
        core = server.core
        watches = server.watches
        parts = process_status_parts(
            needs, server.connections, watches, tree, config,
            port=server.listen_port or config.client_port, member_id=server.member_id,
            config_rows=(("snapCount", config.snap_count),))
        whitelist = getattr(config, "four_letter_words", None)
        return fourlw.ServerStatus(
            mode=server.role(), serving=server.serving, read_only=server.read_only,
            standalone=server.standalone or core is None, latency=metrics.latency(server),
            packets_received=stats.packets_received, packets_sent=stats.packets_sent,
            outstanding=server.outstanding, connection_count=len(server.connections),
            last_zxid=tree.last_zxid, node_count=tree.node_count,
            epoch=core.term if core is not None else 0,
            leader_id=core.leader_id if core is not None else 0,
            peers=server.peer_states() if not server.standalone and core is not None else {},
            four_letter_words=frozenset(whitelist) if whitelist is not None else None,
            mntr_rows=tuple(metrics.mntr_rows(server, fourlw.VERSION)) if "mntr" in needs else (),
            **parts)

    # -- accounting ------------------------------------------------------------------------------
    def account_reply_bytes(self, conn: Connection, delta: int) -> None:
        self.server.reserve_reply_bytes(conn, delta)  # type: ignore[arg-type]

    def count_received(self, requests: int) -> None:
        self.stats.packets_received += requests

    def count_sent(self, replies: int) -> None:
        self.stats.packets_sent += replies

    def record_latency(self, seconds: float) -> None:
        self.stats.record_latency(seconds)


def process_status_parts(needs: frozenset[str], connections: Any, watches: Any, tree: Any,
                         config: ServerConfig, *, port: int, member_id: int,
                         config_rows: tuple[tuple[str, object], ...] = ()) -> dict[str, Any]:
    """The parts of a four-letter-word snapshot (fourlw.ServerStatus keywords) that describe
    one client-serving process, member or client worker: its connections, its watches, its
    tree's ephemerals and the `conf` rows common to both; `needs` names the costly parts to
    include (fourlw.NEEDS)."""
    conns: tuple[fourlw.ConnectionStatus, ...] = ()
    if "connections" in needs:
        conns = tuple(fourlw.ConnectionStatus(c.peer, c.session_id, c.timeout_ms, c.received,
                                              c.sent, c.connected_at) for c in connections)
    rows: tuple[tuple[str, object], ...] = ()
    if "config" in needs:
        rows = (("clientPort", port),
                ("clientPortAddress", config.client_address),
                ("dataDir", config.data_dir),
                ("dataLogDir", config.data_log_dir or config.data_dir),
                ("tickTime", config.tick_time),
                ("minSessionTimeout", config.min_timeout),
                ("maxSessionTimeout", config.max_timeout),
                ("serverId", member_id)) + config_rows
    by_session: tuple[tuple[int, tuple[str, ...]], ...] = ()
    watched: tuple[str, ...] = ()
    if "watches" in needs:
        by_session = tuple((getattr(w, "session_id", 0), tuple(paths))
                           for w, paths in watches.by_watcher().items())
        watched = tuple(sorted(set(watches.data) | set(watches.child)))
    ephemerals: tuple[tuple[int, tuple[str, ...]], ...] = ()
    if "ephemerals" in needs:
        ephemerals = tuple((sid, tuple(tree.ephemerals(sid))) for sid in sorted(tree.sessions))
    return dict(connections=conns, config_rows=rows,
                watch_count=watches.count() if "watches" in needs else 0,
                watch_paths=watches.paths() if "watches" in needs else 0,
                watches_by_session=by_session, watched_paths=watched,
                ephemerals_by_session=ephemerals)
