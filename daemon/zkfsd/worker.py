"""A client worker process (zoo.cfg `clientWorkers`): serves clients on its member's client
port from its own copy of the tree; workers.py describes the design, workerlink.py the
messages of the link.

Started by the member as `python -m zkfsd.worker --fd N --index I`, N being its end of a
socket pair; it exits when the member closes that (the member stopped, or died: the kernel
closes a dead process's descriptors), so a worker never outlives its member.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from zkfs import jute
from zkfs.constants import Err, OpCode

from zkfsd import fourlw, handlers, metrics, reconfig, txns
from zkfsd.backend import (Connection, MemberBackend, SessionGrant, SubmittedWrite,
                            process_status_parts)
from zkfsd.clientport import ClientPort, open_shared_listeners
from zkfsd.clients import ClientConnection
from zkfsd.config import ServerConfig
from zkfsd.consensus import make_zxid
from zkfsd.server import Proposal, Stats, RAFT_TICKS_PER_TICK, MIN_RAFT_TICK
from zkfsd.service import Logging
from zkfsd.tree import ApplyResult, DataTree
from zkfsd.watches import WatchManager
from zkfsd.workerlink import (TO_WORKER, Drop, Entries, Failed, Gone, Hello, LinkDecoder,
                              LinkError, LinkMessage, MemberStatus, NewTree, Open, Opened,
                              Status, Sync, Synced, Touch, Closed)
from zkfsd.workers import Outbox, read_link

log = logging.getLogger("zkfsd.worker")


class WorkerBackend(MemberBackend):
    """What the worker's client connections talk to. Reads, watches, write replies and the
    accounting are the member's own code (MemberBackend) over the worker's tree; sessions,
    writes and syncs go to the member."""

    server: WorkerServer  # type: ignore[assignment]

    def __init__(self, worker: WorkerServer) -> None:
        self.server = worker  # type: ignore[assignment]
        self.config = worker.config
        self.stats = worker.stats

    async def open_session(self, conn: Connection, request: jute.ConnectRequest) -> SessionGrant:
        if self.server.member_silent():
            return SessionGrant(None)  # the client tries again, maybe on another process
        return await self.server.open_session(conn, request)  # type: ignore[arg-type]

    def refuse_request(self, conn: Connection) -> str | None:
        worker = self.server
        if not conn.session_id:
            return None
        status = worker.member
        if worker.member_silent():
            return "the member is not answering"
        if conn.read_only:
            return ("this member is back in the quorum: read-only session ends"
                    if not status.read_only else None)
        if not status.serving:
            return "this member is not serving"
        if conn.session_id not in worker.tree.sessions:
            return "session is no longer live"
        worker.touched.add(conn.session_id)
        return None

    def submit(self, conn: Connection, xid: int, op: int,
               record: Any) -> SubmittedWrite | Err | None:
        worker = self.server
        if op == OpCode.SYNC:
            return SubmittedWrite(xid, op, worker.sync(conn.session_id, record.path))
        try:
            if op == OpCode.RECONFIG:
                txn = reconfig.request_txn(self.config.reconfig_enabled,
                                           len(self.config.servers) > 1, record,
                                           conn.session_id, conn.auth)
            else:
                txn = handlers.write_txn(op, record, conn.session_id, conn.auth)
        except handlers.RequestError as exc:
            return exc.err
        except reconfig.ReconfigError as exc:
            log.info("session 0x%x: reconfig refused (%s): %s", conn.session_id,
                     exc.err.name, exc)
            return exc.err
        return SubmittedWrite(xid, op, worker.propose(txn))

    def status(self, needs: frozenset[str] = frozenset()) -> fourlw.ServerStatus:
        """This process's connections, requests and tree, with its member's role: a
        four-letter word asked on the client port reports the process that took it."""
        worker, stats, tree, config = self.server, self.stats, self.server.tree, self.config
        member, watches = worker.member, worker.watches
        parts = process_status_parts(
            needs, worker.connections, watches, tree, config,
            port=worker.listen_port, member_id=worker.member_id,
            config_rows=(("clientWorkers", config.client_workers), ("clientWorker", worker.index)))
        mntr_rows: tuple[tuple[str, object], ...] = ()
        if "mntr" in needs:
            low, avg, high = metrics.latency(worker)  # type: ignore[arg-type]
            mntr_rows = (
                ("zk_version", fourlw.VERSION), ("zk_server_state", member.mode),
                ("zk_avg_latency", round(avg, 4)), ("zk_max_latency", high),
                ("zk_min_latency", low), ("zk_packets_received", stats.packets_received),
                ("zk_packets_sent", stats.packets_sent),
                ("zk_num_alive_connections", len(worker.connections)),
                ("zk_outstanding_requests", len(worker.pending)),
                ("zk_znode_count", tree.node_count), ("zk_watch_count", watches.count()),
                ("zk_ephemerals_count", sum(len(tree.ephemerals(sid)) for sid in tree.sessions)),
                ("zk_approximate_data_size", tree.approximate_data_size),
                ("zk_global_sessions", len(tree.sessions)),
                ("zk_last_zxid", f"0x{tree.last_zxid:x}"),
                ("zk_client_workers", config.client_workers),
                ("zk_client_worker", worker.index))
        whitelist = getattr(config, "four_letter_words", None)
        return fourlw.ServerStatus(
            mode=member.mode, serving=member.serving, read_only=member.read_only,
            standalone=member.standalone, latency=metrics.latency(worker),  # type: ignore[arg-type]
            packets_received=stats.packets_received, packets_sent=stats.packets_sent,
            outstanding=len(worker.pending), connection_count=len(worker.connections),
            last_zxid=tree.last_zxid, node_count=tree.node_count, epoch=member.epoch,
            leader_id=member.leader_id, peers=dict(member.peers),
            four_letter_words=frozenset(whitelist) if whitelist is not None else None,
            mntr_rows=mntr_rows, **parts)


class WorkerServer(ClientPort):
    """One client worker: its tree and watches, its connections, its link to the member."""

    def __init__(self, config: ServerConfig, index: int, member_id: int,
                 status: MemberStatus, snapshot: bytes) -> None:
        self.config = config
        self.index = index
        self.member_id = member_id
        self.member = status
        self.tree = DataTree.from_snapshot(snapshot)
        self.watches = WatchManager()
        self.stats = Stats()
        self._init_client_port()
        self.by_session: dict[int, ClientConnection] = {}
        self.backend = WorkerBackend(self)
        self.outbox = Outbox()
        # Writes proposed here come back in the log with this origin; a restarted worker
        # has another incarnation, so an entry of its earlier run completes nothing.
        self.incarnation = int.from_bytes(os.urandom(8), "big") >> 1
        self._next_seq = 0
        self.pending: dict[int, Proposal] = {}       # writes, by origin sequence
        self._syncs: dict[int, Proposal] = {}        # syncs, by request number
        self._opens: dict[int, tuple[trio.Event, list[Opened]]] = {}  # by connection token
        # Connections that asked for a session, by the token the member knows them by.
        self._tokens: dict[int, ClientConnection] = {}
        self._token_of: dict[ClientConnection, int] = {}
        self.touched: set[int] = set()  # sessions active since the last report
        self.raft_tick = max(MIN_RAFT_TICK, config.tick_time / 1000.0 / RAFT_TICKS_PER_TICK)
        # The member sends its status every half tick; unheard for syncLimit ticks (what
        # ZooKeeper allows a follower), it is taken for stopped or wedged.
        self._silence_limit = config.sync_limit * config.tick_time / 1000.0
        self._heard = trio.current_time()
        self._silent = False

    def member_silent(self) -> bool:
        return trio.current_time() - self._heard > self._silence_limit

    # -- requests for the member -----------------------------------------------------------------
    def propose(self, txn: txns.Txn) -> Proposal:
        self._next_seq += 1
        txn = txn.with_origin(txns.Origin(self.member_id, self.incarnation, self._next_seq))
        proposal = Proposal(txn)
        self.pending[self._next_seq] = proposal
        self.outbox.add_write(txn)
        return proposal

    def sync(self, session_id: int, path: str) -> Proposal:
        """Done once this worker applied everything its member had applied after the
        leader's read index, which is what a sync on the member itself waits for."""
        self._next_seq += 1
        proposal = Proposal(txns.Txn(txns.Sync(path), session_id))
        self._syncs[self._next_seq] = proposal
        self.outbox.put(Sync(self._next_seq, path))
        return proposal

    async def open_session(self, conn: ClientConnection,
                           request: jute.ConnectRequest) -> SessionGrant:
        self._next_seq += 1
        token = self._next_seq
        done = trio.Event()
        self._opens[token] = (done, [])
        self._tokens[token] = conn
        self._token_of[conn] = token
        self.outbox.put(Open(token, (conn.peer[0], conn.peer[1]), tuple(conn.auth), request))
        try:
            await done.wait()
        finally:
            _, answers = self._opens.pop(token)
        answer = answers[0]
        response = answer.response
        if response is None:
            return SessionGrant(None)
        grant = SessionGrant(response, read_only=answer.read_only, close=answer.close)
        if response.session_id and not answer.read_only and not answer.close:
            self.by_session[response.session_id] = conn
        return grant

    # -- the feed from the member ----------------------------------------------------------------
    def _apply(self, term: int, index: int, data: bytes) -> None:
        zxid = make_zxid(term, index)
        if not data:
            self.tree.last_zxid = max(self.tree.last_zxid, zxid)
            return
        txn = txns.decode(data)
        result = self.tree.apply(txn, zxid)
        for event_type, path in result.events:
            for conn in self.watches.trigger(event_type, path):
                conn.notify(event_type, path)
        body = txn.body
        if isinstance(body, txns.CloseSession):
            conn = self.by_session.pop(txn.session, None)
            if conn is not None and body.expired:
                conn.abort("session expired")
        origin = txn.origin
        if (origin is not None and origin.member == self.member_id
                and origin.incarnation == self.incarnation):
            proposal = self.pending.pop(origin.seq, None)
            if proposal is not None:
                proposal.txn = txn
                proposal.zxid = zxid
                proposal.result = result
                proposal.done.set()
                if proposal.on_applied is not None:
                    proposal.on_applied()

    def _reset(self, snapshot: bytes) -> None:
        self.tree = DataTree.from_snapshot(snapshot)
        self._fail_all("state replaced by a snapshot from the leader")
        log.info("client worker %d: tree replaced by the member's (%d nodes)", self.index,
                 self.tree.node_count)

    def _fail_all(self, reason: str) -> None:
        """As the member does when it loses its leader: every write in flight fails and every
        client reconnects and resumes its session."""
        for proposal in [*self.pending.values(), *self._syncs.values()]:
            proposal.fail()
        self.pending.clear()
        self._syncs.clear()
        for conn in list(self.connections):
            conn.abort(reason)

    def _set_status(self, status: MemberStatus) -> None:
        previous, self.member = self.member, status
        if previous.leader_id and status.leader_id != previous.leader_id:
            self._fail_all("this member lost its leader")
        elif previous.serving and not status.serving:
            self._fail_all("this member lost contact with the leader")
        elif status.serving and not previous.serving:
            for conn in list(self.connections):
                if conn.read_only:
                    conn.abort("this member rejoined the quorum; read-only session ends")

    def _on_message(self, message: LinkMessage) -> None:
        match message:
            case Entries():
                for entry in message.entries:
                    self._apply(entry.term, entry.index, entry.data)
            case Opened():
                waiting = self._opens.get(message.token)
                if waiting is not None:
                    waiting[1].append(message)
                    waiting[0].set()
            case Synced():
                proposal = self._syncs.pop(message.request, None)
                if proposal is not None:
                    if message.ok:
                        proposal.zxid = self.tree.last_zxid
                        proposal.result = ApplyResult(Err.OK, None, [])
                    proposal.done.set()
                    if message.ok and proposal.on_applied is not None:
                        proposal.on_applied()
            case Failed():
                for seq in message.seqs:
                    proposal = self.pending.pop(seq, None)
                    if proposal is not None:
                        proposal.fail()
            case Drop():
                conn = self._tokens.get(message.token)
                if conn is not None:
                    conn.abort(message.reason)
            case Gone():
                conn = self.by_session.get(message.session_id)
                if conn is not None:
                    conn.abort("session is no longer live")
            case Status():
                self._set_status(message.status)
            case NewTree():
                self._reset(message.snapshot)
            case _:  # a second Hello: the decoder accepts only what a member sends
                raise LinkError(f"the member sent {type(message).__name__} after its hello")

    # -- tasks -----------------------------------------------------------------------------------
    async def run(self, stream: trio.SocketStream, messages: AsyncIterator[LinkMessage],
                  port: int) -> None:
        """Serve until the member closes the link (`messages`, after its Hello)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.outbox.write_to, stream)
            nursery.start_soon(self._toucher)
            listeners = await open_shared_listeners(self.config.client_address, port)
            self.listen_port = port
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery, None)
            log.info("client worker %d (pid %d) serving clients on %s:%d, %d nodes", self.index,
                     os.getpid(), self.config.client_address, port, self.tree.node_count)
            try:
                async for message in messages:
                    self._heard = trio.current_time()
                    self._on_message(message)
                log.info("client worker %d: the member closed the link; exiting", self.index)
            except LinkError as exc:
                # The member is this zkfsd: a message it cannot have meant is a bug there.
                # Exiting ends the link; the member starts this worker afresh.
                log.error("client worker %d: bad message from the member (%s); exiting",
                          self.index, exc)
            nursery.cancel_scope.cancel()

    async def _toucher(self) -> None:
        """Every raft tick, the sessions this worker's clients used: the member touches them
        (and its reports to the leader carry them), as for its own clients."""
        reported = -1
        while True:
            await trio.sleep(self.raft_tick)
            silent = self.member_silent()
            if silent and not self._silent:
                log.warning("client worker %d: nothing from the member for %.1f s; dropping "
                            "clients until it answers", self.index, self._silence_limit)
                self._fail_all("the member is not answering")
            elif self._silent and not silent:
                log.info("client worker %d: the member answers again", self.index)
            self._silent = silent
            if self.touched or reported != len(self.connections):
                touched, self.touched = self.touched, set()
                reported = len(self.connections)
                self.outbox.put(Touch(tuple(sorted(touched)), reported))

    def _connection_closed(self, conn: ClientConnection) -> None:
        # The member forgets which connection held the session (its by_session entry).
        token = self._token_of.pop(conn, None)
        if token is not None:
            del self._tokens[token]
            self.outbox.put(Closed(token))


async def _main(sock: socket.socket, index: int) -> None:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    messages = read_link(stream, LinkDecoder(TO_WORKER))
    try:
        hello = await anext(messages, None)
    except LinkError as exc:
        raise SystemExit(f"client worker {index}: bad hello from the member: {exc}") from None
    if not isinstance(hello, Hello):
        raise SystemExit(f"client worker {index}: no hello from the member")
    logs = Logging(level=hello.log_level, log_file=hello.log_file)
    logs.install()
    if logs.handler is not None:
        # Connections log under zkfsd.server in every process: say which one wrote the line
        # (in the name, so that the journal's formatter keeps its priority prefix).
        def tag(record: logging.LogRecord) -> bool:
            record.name = f"{record.name}[worker {index}]"
            return True
        logs.handler.addFilter(tag)
    started = time.monotonic()
    worker = WorkerServer(hello.config, index, hello.member_id, hello.status, hello.snapshot)
    log.info("client worker %d: loaded the member's tree (%d nodes) in %.3fs", index,
             worker.tree.node_count, time.monotonic() - started)
    await worker.run(stream, messages, hello.port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zkfsd-worker",
                                     description="a zkfsd client worker (started by zkfsd)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    # The member decides when this process ends (it closes the link); a terminal's ^C or a
    # SIGHUP for the member's log must not end the worker on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    trio.run(_main, sock, args.index)


if __name__ == "__main__":
    main()
