"""Client workers, the member's side (zoo.cfg `clientWorkers=N`, N > 1).

One Python process serves at most one core (one interpreter lock), so a member serves its
clients from N processes: its own (consensus, storage, sessions' authority, and clients like
any zkfsd) and N-1 client workers (worker.py) that accept on the same client port
(SO_REUSEPORT: the kernel spreads new connections over the processes).

A worker is an observer that is not in the membership, fed by its own member over a socket
pair: the member sends it its tree once (at start, and again after installing a snapshot),
then every entry it applies, in apply order and batched per scheduling round. The worker
applies them to its own tree and watch tables, answers reads and fires its connections'
watches itself, and sends the member:
  - writes, as transactions whose origin is the worker's (member id, worker incarnation,
    sequence): the member proposes them (or forwards them to its leader) like its own, and
    the worker answers its client when it applies the entry that carries its origin, so a
    session reads its own writes and an event precedes every reply that could show it;
  - session opens (the member runs them exactly as for its own clients, `MemberBackend`,
    and answers after the createSession is applied, so the answer follows the entry on the
    same ordered stream), syncs (answered once the member applied what the leader had
    committed: the worker has then applied it too), and, every raft tick, the sessions its
    clients touched (the member touches them in its SessionKeeper, which reports to the
    leader as always: expiry rules do not change);
and the member sends it its status (serving, role, leader) when that changes and every half
tick (a worker that hears nothing for syncLimit ticks stops serving). The worker's connection
count rides along with its session report (for the member's mntr).

The messages are typed records, one class per kind, encoded and decoded by workerlink.py
(sans-IO; every field checked once, when decoded), and each end dispatches on their class.
The link's I/O, which worker.py shares, is here: `Outbox` (messages in order from one writer
task, consecutive entries or forwarded writes batched into one message) and `read_link`.
"""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from zkfs.constants import EventType

from zkfsd import txns
from zkfsd.consensus import Entry, Snapshot
from zkfsd.workerlink import (TO_MEMBER, Closed, Drop, Entries, Failed, Forward, Gone, Hello,
                              LinkDecoder, LinkError, LinkMessage, MemberStatus, NewTree, Open,
                              Opened, Status, Sync, Synced, Touch, encode)

if TYPE_CHECKING:
    from zkfsd.consensus import Application
    from zkfsd.server import ZkServer

log = logging.getLogger("zkfsd.workers")

# Entries queued for a worker and not yet written to it: past this the worker is not keeping
# up (stopped, or starved); it is killed and started afresh from the member's tree, so that the
# member's memory stays bounded.
MAX_BACKLOG_BYTES = 256 << 20
# A worker that exits is started again after this, doubled while it keeps dying young.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0


class _Batch:
    """Consecutive entries (or forwarded writes) put in one scheduling round: one message."""
    __slots__ = ("kind", "items")

    def __init__(self, kind: type[Entries] | type[Forward], item: Any) -> None:
        self.kind = kind
        self.items = [item]

    def message(self) -> LinkMessage:
        return self.kind(tuple(self.items))


class Outbox:
    """Messages for the other end of a link, sent in order by one writer task; consecutive
    entries (`add_entry`) or forwarded writes (`add_write`) share one message."""

    def __init__(self) -> None:
        self.messages: list[LinkMessage | _Batch] = []
        self.wake = trio.Event()
        self.backlog = 0  # bytes of entries put and not yet taken by the writer

    def put(self, message: LinkMessage) -> None:
        self.messages.append(message)
        self.wake.set()

    def add_entry(self, entry: Entry) -> None:
        self.backlog += len(entry.data)
        self._add(Entries, entry)

    def add_write(self, txn: txns.Txn) -> None:
        self._add(Forward, txn)

    def _add(self, kind: type[Entries] | type[Forward], item: Any) -> None:
        messages = self.messages
        if messages:
            last = messages[-1]
            if type(last) is _Batch and last.kind is kind:
                last.items.append(item)
                return
        messages.append(_Batch(kind, item))
        self.wake.set()

    async def write_to(self, stream: trio.abc.SendStream) -> None:
        """Send everything put, for ever, one send per batch."""
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            messages, self.messages = self.messages, []
            self.backlog = 0
            if messages:
                await stream.send_all(b"".join(
                    encode(m.message() if type(m) is _Batch else m)  # type: ignore[union-attr,arg-type]
                    for m in messages))


# A worker's tree can be large; read the link in chunks of this (one receive per chunk).
_RECEIVE = 1 << 20


async def read_link(stream: trio.abc.ReceiveStream,
                    decoder: LinkDecoder) -> AsyncIterator[LinkMessage]:
    """The messages arriving on `stream`, until it ends; LinkError if one is malformed or the
    stream ends inside one."""
    while True:
        data = await stream.receive_some(_RECEIVE)
        if not data:
            decoder.end()
            return
        for message in decoder.feed(data):
            yield message


class _RemoteSession:
    """A session whose connection is on a worker, as the member's `by_session` table sees it
    (backend.Connection): the member aborting it (the session moved to another connection,
    or expired) tells the worker to close that connection."""

    read_only = False

    def __init__(self, link: _WorkerLink, token: int, peer: tuple[str, int],
                 auth: list[tuple[str, str]]) -> None:
        self.link = link
        self.token = token
        self.peer = peer
        self.auth = auth
        self.session_id = 0

    @property
    def watcher(self) -> _RemoteSession:
        return self

    def notify(self, event_type: EventType, path: str) -> None:
        pass  # the worker holds this session's watches and fires them itself

    def abort(self, reason: str) -> None:
        self.link.outbox.put(Drop(self.token, reason))


class _WorkerLink:
    """One worker process and the socket pair to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.outbox = Outbox()
        self.live = False  # sent its hello: gets every applied entry from now on
        self.sessions: dict[int, _RemoteSession] = {}  # by connection token
        self.pid = 0
        self.process: trio.Process | None = None
        self.connections = 0  # as the worker last reported
        self.incarnation = -1  # the origin its writes carry (learnt from them)


class _Tee:
    """The member's Application (consensus.ReadyDriver) with the workers listening in."""

    def __init__(self, inner: Application, hub: WorkerHub) -> None:
        self.inner = inner
        self.hub = hub

    def install_snapshot(self, snap: Snapshot) -> None:
        self.inner.install_snapshot(snap)
        self.hub.reset_all()

    def apply(self, entry: Entry) -> None:
        self.inner.apply(entry)
        for link in self.hub.links:
            if link.live:
                outbox = link.outbox
                outbox.add_entry(entry)
                if outbox.backlog > MAX_BACKLOG_BYTES:
                    self.hub.restart(link, f"{outbox.backlog} bytes of entries not taken")

    def read_state(self, index: int, context: bytes) -> None:
        self.inner.read_state(index, context)


class WorkerHub:
    """The member's side of its client workers: starts them (again when one exits), feeds
    them the applied log, and serves their requests."""

    def __init__(self, server: ZkServer) -> None:
        self.server = server
        self.links = [_WorkerLink(i) for i in range(1, server.config.client_workers)]
        self._status: MemberStatus | None = None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        server = self.server
        assert server.driver is not None and server.listen_port is not None
        server.driver.app = _Tee(server.driver.app, self)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._status_loop)
            for link in self.links:
                nursery.start_soon(self._supervise, link)
            task_status.started()

    def restart(self, link: _WorkerLink, reason: str) -> None:
        """Kill a worker that cannot keep up; its supervisor starts it afresh."""
        log.warning("client worker %d (pid %d) is not keeping up (%s): killing it", link.index,
                    link.pid, reason)
        link.live = False
        link.outbox = Outbox()
        if link.process is not None and link.process.returncode is None:
            link.process.kill()

    def pids(self) -> list[int]:
        return [link.pid for link in self.links if link.pid]

    def forward_failed(self, origin: txns.Origin) -> None:
        """A worker's write could not be sent on to the leader: the worker fails it (its
        client's connection closes, as for the member's own writes)."""
        for link in self.links:
            if link.live and link.incarnation == origin.incarnation:
                link.outbox.put(Failed((origin.seq,)))

    def connections(self) -> int:
        return sum(link.connections for link in self.links if link.live)

    # -- the feed --------------------------------------------------------------------------------
    def _hello(self) -> Hello:
        server = self.server
        assert server.listen_port is not None
        logging_ = logging.getLogger()
        log_file = next((h.baseFilename for h in logging_.handlers  # type: ignore[attr-defined]
                         if isinstance(h, logging.FileHandler)), None)
        return Hello(server.config, logging.getLevelName(logging_.level), log_file,
                     server.listen_port, server.member_id, self.status(),
                     server.tree.snapshot())

    def reset_all(self) -> None:
        """The member replaced its tree (a snapshot from the leader): so do the workers."""
        for link in self.links:
            if link.live:
                link.outbox.put(NewTree(self.server.tree.snapshot()))

    def status(self) -> MemberStatus:
        server = self.server
        core = server.core
        peers = server.peer_states() if not server.standalone and core is not None else {}
        return MemberStatus(server.serving, server.read_only, server.role(), server.standalone,
                            core.leader_id if core is not None else 0,
                            core.term if core is not None else 0, tuple(sorted(peers.items())))

    async def _status_loop(self) -> None:
        """The member's status to every worker when it changes, and every half tick anyway:
        a worker that hears nothing for syncLimit ticks stops serving (worker.py), so that a
        stopped or wedged member's workers do not go on answering from a stale tree."""
        server = self.server
        every = max(1, round(server.config.tick_time / 1000.0 / 2 / server.raft_tick))
        rounds = 0
        while True:
            status = self.status()
            rounds += 1
            if status != self._status or rounds >= every:
                self._status = status
                rounds = 0
                for link in self.links:
                    if link.live:
                        link.outbox.put(Status(status))
            await trio.sleep(server.raft_tick)

    # -- worker processes ------------------------------------------------------------------------
    async def _supervise(self, link: _WorkerLink) -> None:
        delay = RESTART_DELAY
        while True:
            started = time.monotonic()
            try:
                await self._run_worker(link)
            except Exception:  # noqa: BLE001 - a worker's failure must not stop the member
                log.exception("client worker %d: link failed", link.index)
            if time.monotonic() - started > 10 * MAX_RESTART_DELAY:
                delay = RESTART_DELAY
            log.warning("client worker %d exited; starting it again in %.1f s", link.index,
                        delay)
            await trio.sleep(delay)
            delay = min(MAX_RESTART_DELAY, delay * 2)

    async def _run_worker(self, link: _WorkerLink) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "zkfsd.worker", "--fd", str(theirs.fileno()),
                 "--index", str(link.index)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        link.pid = process.pid
        link.process = process
        log.info("client worker %d started (pid %d)", link.index, process.pid)
        link.outbox = Outbox()
        link.outbox.put(self._hello())
        link.live = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, link, stream, nursery.cancel_scope)
                await self._read(link, stream, nursery)
                nursery.cancel_scope.cancel()
        finally:
            link.live = False
            link.pid = 0
            link.process = None
            self._forget_sessions(link)
            with trio.CancelScope(shield=True):
                await stream.aclose()
                # The worker exits when its end of the pair closes; wait for that briefly.
                with trio.move_on_after(2):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    async def _write(self, link: _WorkerLink, stream: trio.SocketStream,
                     scope: trio.CancelScope) -> None:
        try:
            await link.outbox.write_to(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()

    async def _read(self, link: _WorkerLink, stream: trio.SocketStream,
                    nursery: trio.Nursery) -> None:
        try:
            async for message in read_link(stream, LinkDecoder(TO_MEMBER)):
                self._dispatch(link, message, nursery)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("client worker %d: link failed: %s", link.index, exc)
        except LinkError as exc:
            # The worker is this zkfsd; a frame it cannot have meant is a bug there: end the
            # link (the worker exits and is started afresh).
            log.error("client worker %d sent a bad frame (%s); restarting it", link.index, exc)

    def _forget_sessions(self, link: _WorkerLink) -> None:
        """A worker's connections are gone with it; its sessions live on (their clients
        reconnect, to any process) and expire by the usual rules if they do not."""
        by_session = self.server.by_session
        for remote in link.sessions.values():
            if by_session.get(remote.session_id) is remote:
                del by_session[remote.session_id]
        link.sessions.clear()

    # -- requests from a worker ------------------------------------------------------------------
    def _dispatch(self, link: _WorkerLink, message: LinkMessage, nursery: trio.Nursery) -> None:
        server = self.server
        match message:
            case Forward():
                failed = []
                for txn in message.txns:
                    origin = txn.origin
                    assert origin is not None  # checked when decoded
                    link.incarnation = origin.incarnation
                    if not server.submit_forwarded(txn):
                        failed.append(origin.seq)
                if failed:
                    link.outbox.put(Failed(tuple(failed)))
            case Touch():
                for session_id in message.sessions:
                    if not server.touch_session(session_id):
                        link.outbox.put(Gone(session_id))
                link.connections = message.connections
            case Open():
                nursery.start_soon(self._open, link, message)
            case Sync():
                nursery.start_soon(self._sync, link, message)
            case Closed():
                remote = link.sessions.pop(message.token, None)
                if remote is not None and server.by_session.get(remote.session_id) is remote:
                    del server.by_session[remote.session_id]
            case _:  # the decoder accepts TO_MEMBER only
                raise AssertionError(f"client worker {link.index}: {message!r:.60}")

    async def _open(self, link: _WorkerLink, message: Open) -> None:
        remote = _RemoteSession(link, message.token, message.peer, list(message.auth))
        grant = await self.server.backend.open_session(
            remote, message.request)  # type: ignore[arg-type]
        response = grant.response
        if response is not None and response.session_id and not grant.read_only \
                and not grant.close:
            remote.session_id = response.session_id
            link.sessions[message.token] = remote
        link.outbox.put(Opened(message.token, response, grant.read_only, grant.close))

    async def _sync(self, link: _WorkerLink, message: Sync) -> None:
        server = self.server
        if server.standalone:
            ok = True  # everything committed is applied here, hence queued for the worker
        else:
            proposal = server.sync(0, message.path)
            await proposal.done.wait()
            ok = proposal.result is not None
        link.outbox.put(Synced(message.request, ok))
