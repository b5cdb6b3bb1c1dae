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

Everything on the socket pair is a length-prefixed msgpack frame (peers.py's framing), a
list [kind, ...]. Both ends are this zkfsd, started together, so the frames are trusted;
the configuration travels pickled (a ServerConfig, with its nested dataclasses).
"""
from __future__ import annotations

import logging
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from zkfs import jute
from zkfs.constants import EventType

from zkfsd import txns
from zkfsd.consensus import Entry, Snapshot
from zkfsd.peers import _frame, _FrameReader

if TYPE_CHECKING:
    from zkfsd.consensus import Application
    from zkfsd.server import ZkServer

log = logging.getLogger("zkfsd.workers")

# The member's tree travels in one frame; the socket pair is private to the two processes.
MAX_LINK_FRAME = 1 << 31
# Entries queued for a worker and not yet written to it: past this the worker is not keeping
# up (stopped, or starved); it is killed and started afresh from the member's tree, so that the
# member's memory stays bounded.
MAX_BACKLOG_BYTES = 256 << 20
# A worker that exits is started again after this, doubled while it keeps dying young.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0


class Outbox:
    """Messages for the other end of a link, sent in order by one writer task; consecutive
    messages of a batching kind ("entries", "fwd") share one message."""

    BATCHED = ("entries", "fwd")

    def __init__(self) -> None:
        self.messages: list[list[Any]] = []
        self.wake = trio.Event()
        self.backlog = 0  # bytes of batched items put and not yet taken by the writer

    def put(self, message: list[Any]) -> None:
        self.messages.append(message)
        self.wake.set()

    def add(self, kind: str, item: Any, size: int = 0) -> None:
        self.backlog += size
        messages = self.messages
        if messages and messages[-1][0] == kind:
            messages[-1][1].append(item)
        else:
            messages.append([kind, [item]])
        self.wake.set()

    async def write_to(self, stream: trio.abc.SendStream) -> None:
        """Send everything put, for ever, one send per batch."""
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            messages, self.messages = self.messages, []
            self.backlog = 0
            if messages:
                await stream.send_all(b"".join(_frame(m) for m in messages))


def link_reader(stream: trio.abc.ReceiveStream) -> _FrameReader:
    reader = _FrameReader(stream)
    reader.limit = MAX_LINK_FRAME
    return reader


@dataclass(frozen=True)
class MemberStatus:
    """What a worker knows of its member's state (for serving decisions and the 4lw)."""
    serving: bool
    read_only: bool
    mode: str
    standalone: bool
    leader_id: int
    epoch: int
    peers: tuple[tuple[int, str], ...]

    def to_wire(self) -> list[Any]:
        return [self.serving, self.read_only, self.mode, self.standalone, self.leader_id,
                self.epoch, [list(p) for p in self.peers]]

    @classmethod
    def from_wire(cls, obj: list[Any]) -> MemberStatus:
        serving, read_only, mode, standalone, leader_id, epoch, peers = obj
        return cls(bool(serving), bool(read_only), str(mode), bool(standalone), int(leader_id),
                   int(epoch), tuple((int(sid), str(state)) for sid, state in peers))


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
        self.link.outbox.put(["drop", self.token, reason])


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
                outbox.add("entries", [entry.term, entry.index, entry.data], len(entry.data))
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
                link.outbox.put(["failed", [origin.seq]])

    def connections(self) -> int:
        return sum(link.connections for link in self.links if link.live)

    # -- the feed --------------------------------------------------------------------------------
    def _hello(self) -> list[Any]:
        server = self.server
        logging_ = logging.getLogger()
        log_file = next((h.baseFilename for h in logging_.handlers  # type: ignore[attr-defined]
                         if isinstance(h, logging.FileHandler)), None)
        return ["hello", pickle.dumps(server.config), logging.getLevelName(logging_.level),
                log_file, server.listen_port, server.member_id, self.status().to_wire(),
                server.tree.snapshot()]

    def reset_all(self) -> None:
        """The member replaced its tree (a snapshot from the leader): so do the workers."""
        for link in self.links:
            if link.live:
                link.outbox.put(["snapshot", self.server.tree.snapshot()])

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
                        link.outbox.put(["status", status.to_wire()])
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
        reader = link_reader(stream)
        while True:
            try:
                message = await reader.read()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                log.warning("client worker %d: link failed: %s", link.index, exc)
                return
            if message is None:
                return
            try:
                self._dispatch(link, message, nursery)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                # The worker is this zkfsd; a frame it cannot have meant is a bug there:
                # end the link (the worker exits and is started afresh).
                log.error("client worker %d sent a bad frame (%s); restarting it", link.index,
                          exc)
                return

    def _forget_sessions(self, link: _WorkerLink) -> None:
        """A worker's connections are gone with it; its sessions live on (their clients
        reconnect, to any process) and expire by the usual rules if they do not."""
        by_session = self.server.by_session
        for remote in link.sessions.values():
            if by_session.get(remote.session_id) is remote:
                del by_session[remote.session_id]
        link.sessions.clear()

    # -- requests from a worker ------------------------------------------------------------------
    def _dispatch(self, link: _WorkerLink, message: list[Any], nursery: trio.Nursery) -> None:
        server = self.server
        kind = message[0]
        if kind == "fwd":
            failed = []
            for data in message[1]:
                txn = txns.decode(data)
                if txn.origin is None:
                    raise ValueError("a forwarded write without its origin")
                link.incarnation = txn.origin.incarnation
                if not server.submit_forwarded(txn):
                    failed.append(txn.origin.seq)
            if failed:
                link.outbox.put(["failed", failed])
        elif kind == "touch":
            for session_id in message[1]:
                if not server.touch_session(session_id):
                    link.outbox.put(["gone", session_id])
            link.connections = int(message[2])
        elif kind == "open":
            nursery.start_soon(self._open, link, message)
        elif kind == "sync":
            nursery.start_soon(self._sync, link, message[1], message[2])
        elif kind == "closed":
            remote = link.sessions.pop(message[1], None)
            if remote is not None and server.by_session.get(remote.session_id) is remote:
                del server.by_session[remote.session_id]
        else:
            raise ValueError(f"client worker {link.index} sent {kind!r}")

    async def _open(self, link: _WorkerLink, message: list[Any]) -> None:
        _, token, host, port, auth, fields = message
        remote = _RemoteSession(link, token, (host, port), [tuple(a) for a in auth])
        request = jute.ConnectRequest(*fields)
        grant = await self.server.backend.open_session(remote, request)  # type: ignore[arg-type]
        response = grant.response
        if response is not None and response.session_id and not grant.read_only \
                and not grant.close:
            remote.session_id = response.session_id
            link.sessions[token] = remote
        link.outbox.put(["opened", token,
                         None if response is None else
                         [response.protocol_version, response.timeout, response.session_id,
                          response.passwd, response.read_only],
                         grant.read_only, grant.close])

    async def _sync(self, link: _WorkerLink, request: int, path: str) -> None:
        server = self.server
        if server.standalone:
            ok = True  # everything committed is applied here, hence queued for the worker
        else:
            proposal = server.sync(0, path)
            await proposal.done.wait()
            ok = proposal.result is not None
        link.outbox.put(["synced", request, ok])
