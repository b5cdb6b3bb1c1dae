"""One zkfsd member on trio: the log loop around the consensus core, sessions, and listeners.

Owner tree of tasks (one nursery each):
  ZkServer.run
    ├─ log loop: Readys of the Raft core → snapshot install, storage (append + one fsync per
    │  batch), peer messages, apply committed entries to the tree (watches fire here)
    ├─ ticker: Raft ticks for the time that passed; followers report active sessions to the
    │  leader; the leader turns sessions that sessions.py says are expired into closeSession
    ├─ peer transport (ensembles): msgpack frames to and from the other members (peers.py)
    ├─ reaper loop (leader): empty containers and expired TTL nodes → deleteContainer
    ├─ the client listener → one ClientConnection per socket (clientport.py, clients.py)
    ├─ client workers (clientWorkers > 1): processes that share the client port (workers.py)
    └─ signal watcher: SIGTERM/SIGINT cancel everything; the log is fsync'd and closed on the way out

Every state change, sessions included, is a transaction proposed through the leader and applied
to the tree on every member in log order once committed; a write is answered only after this
member applied it, so an acknowledged write is durable on a majority. A standalone server is an
ensemble of one and takes the same path.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from zkfs.constants import Err

from zkfsd import reconfig, tls, txns
from zkfsd.backend import MemberBackend
from zkfsd.clientport import ClientPort
from zkfsd.clients import ClientConnection
from zkfsd.config import ServerConfig
from zkfsd.adminserver import start_monitoring
from zkfsd.consensus import Entry, ReadyDriver, Snapshot, make_zxid
from zkfsd.logsync import SMALL_BATCH, LogSyncer
from zkfsd.snapshotter import ChildSnapshot, SnapshotFailed
from zkfsd.peers import PeerTransport
from zkfsd.raft import ConfChangeRefused, Message, RaftNode, is_urgent
from zkfsd.sessions import ReportAck, SessionIdGenerator, SessionKeeper, SessionReport, new_password
from zkfsd.storage import PREALLOCATE, Storage
from zkfsd.tree import ApplyResult, DataTree
from zkfsd.watches import WatchManager
from zkfsd.workers import WorkerHub

log = logging.getLogger("zkfsd.server")

# Raft ticks per ZooKeeper tick (tickTime): leases, timeouts and session rules are counted in
# raft ticks, finer than tickTime, but never shorter than 20 ms.
RAFT_TICKS_PER_TICK = 10
MIN_RAFT_TICK = 0.02
# A follower whose leader's connection died campaigns within this many raft ticks (a third of
# a tickTime), instead of waiting out the election timeout; pre-vote keeps that safe.
LOST_LEADER_TICKS = 3



class Proposal:
    """A transaction on its way through the log; `done` is set once it is applied here.

    `result` stays None if the proposal failed before it could commit (this member lost its
    leader, or never had one): the client's connection is then closed, as ZooKeeper does, and
    the client learns the outcome when it reconnects. `zxid` is the transaction's, from its
    log position, once applied.
    """
    __slots__ = ("txn", "done", "result", "zxid", "on_applied")

    def __init__(self, txn: txns.Txn) -> None:
        self.txn = txn
        self.done = trio.Event()
        self.result: ApplyResult | None = None
        self.zxid = 0
        # Called as soon as it is applied, before the next transaction is: the connection
        # answers the reads queued behind this write against exactly the state it left.
        self.on_applied: Callable[[], None] | None = None

    def fail(self) -> None:
        self.done.set()


class LogEntryError(Exception):
    """A committed log entry this zkfsd cannot read: applying anything after it would make this
    member's tree differ from the others', so the member stops instead."""


class _Applier:
    """The server as the driver's Application (consensus.ReadyDriver)."""

    def __init__(self, server: ZkServer) -> None:
        self.server = server

    def install_snapshot(self, snap: Snapshot) -> None:
        self.server._install_snapshot(snap)

    def apply(self, entry: Entry) -> None:
        self.server._apply(entry.index, entry.term, entry.data)

    def read_state(self, index: int, context: bytes) -> None:
        self.server._read_state(index, context)


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.packets_received = 0
        self.packets_sent = 0
        self.latency_min = math.inf
        self.latency_max = 0.0
        self.latency_total = 0.0
        self.latency_count = 0
        self.fsyncs = 0
        self.txns = 0

    def record_latency(self, seconds: float) -> None:
        ms = seconds * 1000
        self.latency_min = min(self.latency_min, ms)
        self.latency_max = max(self.latency_max, ms)
        self.latency_total += ms
        self.latency_count += 1

    def reset(self) -> None:
        self.__init__()


class ZkServer(ClientPort):
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.member_id = config.my_id or 1
        self.voters = config.participants if config.servers else [self.member_id]
        # Observers get the log, hold sessions and serve clients, but never vote.
        self.observers = sorted(config.observers)
        self.members = sorted([*self.voters, *self.observers])
        # Dynamic reconfiguration: the static server.N lines are the initial membership; the
        # log and snapshots hold every change (reconfig.py).
        self.memberships = reconfig.Memberships(
            reconfig.from_static(config.servers, config.observers, config.server_clients)
            if len(config.servers) > 1 else None)
        self._conf_index = -1  # the core's conf_index when the membership was last adopted
        self._nursery: trio.Nursery | None = None
        self.storage = Storage(config.data_dir, config.data_log_dir, preallocate=PREALLOCATE)
        self._rebuild_marker = Path(config.data_dir) / "REBUILDING"
        # Whether the marker may exist: the log loop looks for the file only then, not with a
        # stat(2) per Ready.
        self._rebuild_marker_maybe = True
        self.tree = DataTree()
        self.watches = WatchManager()
        self.stats = Stats()
        self._init_client_port()  # connections, listeners (clientport.py)
        self.by_session: dict[int, ClientConnection] = {}
        self.session_ids = SessionIdGenerator(self.member_id, int(time.time() * 1000))
        self.core: RaftNode | None = None
        self.transport: PeerTransport | None = None
        self._pending: dict[int, Proposal] = {}  # by the sequence number in txn.origin
        # sync (read index): by context, those not answered yet with the tick last asked, and
        # those answered, waiting for this member to apply up to their index.
        self._syncs: dict[bytes, tuple[Proposal, int]] = {}
        self._syncs_applying: list[tuple[int, Proposal]] = []
        # A follower's writes on their way to the leader: sent by the sender task, all that
        # arrived in one scheduling round in one frame (the leader proposes them together).
        self._forwards: list[txns.Txn] = []
        # Forwarded writes (this member's and its client workers') handed to the transport and
        # not applied here yet, by (incarnation, seq), with the leader they went to: a forward
        # is sent once, so when the link to that leader drops (its frame may be lost) they fail
        # at once, and their clients get a lost connection instead of waiting forever.
        self._in_flight: dict[tuple[int, int], tuple[int, txns.Origin]] = {}
        self._next_seq = 0
        # The transactions this member proposed as leader, by the identity of their encoding
        # (the log entry's data is that very object): applying them needs no decoding. Entries
        # that never commit here are forgotten when the leader changes.
        self._own_txns: dict[int, tuple[bytes, txns.Txn]] = {}
        # Sequence numbers restart with every process run, and a member catching up applies
        # entries its earlier runs proposed: a random id per run in txn.origin keeps such an
        # entry from completing a new proposal that happens to have the same number.
        self._incarnation = int.from_bytes(os.urandom(8), "big") >> 1
        self._leader = 0
        self._leader_term = 0
        self._replayed = False
        self.driver: ReadyDriver | None = None  # the core's Readys -> storage, peers, tree
        self._wakeup = trio.Event()  # the log loop: the core may have a Ready
        self._urgent = trio.Event()  # the sender: the core may have urgent messages
        self._since_snapshot = 0
        # Snapshots are serialized in a forked child (snapshotter.py): whether one is under way,
        # the one made and not saved yet, and which tree it is of (a snapshot installed from
        # the leader replaces the tree; one made of the old tree is then dropped).
        self._snapshotting = False
        self._snapshot_made: tuple[Snapshot, float] | None = None
        self._tree_generation = 0
        # ZooKeeper's proportions: a member unheard for syncLimit ticks is given up on (a
        # follower campaigns after syncLimit to 2*syncLimit ticks without its leader, Raft's
        # randomized election timeout; a leader without a majority for syncLimit ticks steps
        # down), the leader pings every half tick, and a snapshot transfer may take initLimit
        # ticks. A dead leader's closed connection starts an election at once (leader_lost), so
        # failover after a crash does not wait for the timeout.
        self.raft_tick = max(MIN_RAFT_TICK, config.tick_time / 1000.0 / RAFT_TICKS_PER_TICK)
        per_tick = config.tick_time / 1000.0 / self.raft_tick
        self.heartbeat_ticks = max(1, round(per_tick / 2))
        self.election_ticks = max(self.heartbeat_ticks + 1, round(config.sync_limit * per_tick))
        self.snapshot_timeout_ticks = max(1, round(config.init_limit * per_tick))
        # The log's fsyncs: on the event loop where nothing can starve behind them, else on a
        # thread (logsync.py).
        self.syncer = LogSyncer(self._may_sync_inline)
        # Without a leader to wait for (at start, after losing it, after a split vote), a
        # member campaigns again after one to two ticks, whatever syncLimit says.
        self.retry_ticks = min(self.election_ticks, max(1, round(per_tick)))
        self._ticks_due = 0  # raft ticks of real time since _tick_origin
        self._tick_origin = 0.0
        # Followers report every half tickTime; a follower whose reports stop being
        # acknowledged stops serving after `cutoff` ticks, which must cover a cut-off leader's
        # check-quorum step-down (two election timeouts) as well; see sessions.py.
        report_every = max(1, round(config.tick_time / 1000.0 / 2 / self.raft_tick))
        # Observers serve sessions too: the leader must hear their reports before it expires
        # anything they might be keeping alive.
        self.keeper = SessionKeeper(self.member_id, self.members, report_every=report_every,
                                    cutoff=2 * self.election_ticks + 2 * report_every)
        self._was_serving = False
        self.monitoring_ports: dict[str, int] = {}  # AdminServer / Prometheus, once bound
        self.backend = MemberBackend(self)  # what client connections see of this member
        self.workers: WorkerHub | None = None  # clientWorkers > 1 (workers.py)

    @property
    def standalone(self) -> bool:
        return self.members == [self.member_id]

    @property
    def is_observer(self) -> bool:
        return self.member_id in self.observers

    @property
    def read_only(self) -> bool:
        """Serving read-only sessions only: readonlymode.enabled and cut off from the leader
        (ZooKeeper's ReadOnlyZooKeeperServer)."""
        return (self.config.read_only_mode and not self.standalone and self._replayed
                and not self.serving)

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.is_leader

    @property
    def serving(self) -> bool:
        """Clients are served only while this member has replayed its log, has a leader and,
        as a follower, gets its session reports acknowledged by that leader (sessions.py)."""
        core = self.core
        if not self._replayed or core is None or core.leader_id == 0:
            return False
        if self.member_id not in self.members:
            return False  # a reconfig removed this member
        return core.is_leader or self.keeper.follower_serving(core.ticks)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def role(self) -> str:
        if self.standalone:
            return "standalone"
        if self.read_only:
            return "read-only"
        if self.is_observer:
            return "observer"
        if self.core is None or self.core.leader_id == 0:
            return "looking"
        return "leader" if self.core.is_leader else "follower"

    def peer_states(self) -> dict[int, str]:
        """Each other member as this one sees it: connection and, on the leader, replication."""
        states: dict[int, str] = {}
        progress = self.core.status().get("progress", {}) if self.core else {}
        for sid in self.members:
            if sid == self.member_id:
                continue
            connected = self.transport is not None and sid in self.transport.connected_out
            state = "connected" if connected else "unreachable"
            if sid in progress and self.core is not None:
                lag = self.core.commit - progress[sid]["match"]
                state = ("synced" if lag <= 0 else f"behind by {lag}") + f" ({state})"
            states[sid] = state
        return states

    # -- startup and shutdown -------------------------------------------------------------------
    def recover(self) -> None:
        started = time.monotonic()
        loaded = self.storage.load()
        if loaded.snapshot is not None:
            self.tree = DataTree.from_snapshot(loaded.snapshot.data)
            self._reset_sessions(0)
        self._init_config_node()
        if self.memberships.static is not None:
            conf = self.memberships.snapshot_conf(loaded.snapshot.data) if loaded.snapshot \
                else self.memberships.static.conf
            assert conf is not None
            self.voters, self.observers = list(conf.voters), list(conf.learners)
            self.members = sorted([*self.voters, *self.observers])
            self.memberships.note_entries(loaded.entries)
        if self.voters == [self.member_id]:
            # A majority of one: everything durable here is committed and replays at once.
            self._replay_target = loaded.entries[-1].index if loaded.entries else 0
        else:
            self._replay_target = loaded.hard_state.commit
        # An ensemble member that starts with nothing may have lost its data dir: until a
        # leader has brought it up to date it must not vote (beyond a brand-new ensemble) or
        # campaign. The marker file keeps that true across restarts during the rebuild.
        empty = (not loaded.entries and loaded.snapshot is None
                 and loaded.hard_state.term == 0)
        rebuilding = not self.standalone and (empty or self._rebuild_marker.exists())
        if rebuilding and not self._rebuild_marker.exists():
            self._rebuild_marker.write_bytes(b"rebuilding from the leader\n")
            fd = os.open(self._rebuild_marker.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._rebuild_marker_maybe = self._rebuild_marker.exists()
        if rebuilding:
            log.warning("empty or partly rebuilt data directory: this member neither votes nor "
                        "campaigns until a leader has brought it up to date")
        self.core = RaftNode(self.member_id, self.voters, hard_state=loaded.hard_state,
                             snapshot=loaded.snapshot, entries=loaded.entries,
                             rng=random.Random(), election_ticks=self.election_ticks,
                             heartbeat_ticks=self.heartbeat_ticks, learners=self.observers,
                             rebuilding=rebuilding, lost_leader_ticks=LOST_LEADER_TICKS,
                             snapshot_timeout_ticks=self.snapshot_timeout_ticks,
                             retry_ticks=self.retry_ticks,
                             conf_of_entry=reconfig.entry_conf if self.memberships.static else None,
                             conf_of_snapshot=self.memberships.snapshot_conf
                             if self.memberships.static else None)
        self.driver = ReadyDriver(self.core, self.storage, self._send, _Applier(self),
                                  is_urgent,
                                  synced_vote=(loaded.hard_state.term, loaded.hard_state.vote),
                                  on_append=self._entries_appended)
        self._since_snapshot = len(loaded.entries)
        log.info("loaded snapshot at index %d and %d log entries (commit %d) in %.3fs",
                 loaded.snapshot.index if loaded.snapshot else 0, len(loaded.entries),
                 loaded.hard_state.commit, time.monotonic() - started)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.recover()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._signal_watcher, nursery.cancel_scope)
                nursery.start_soon(self._log_loop)
                self._wakeup.set()
                await self._wait_replayed()
                if not self.standalone:
                    secret = None
                    if self.config.peer_secret_file:
                        with open(self.config.peer_secret_file, "rb") as f:
                            secret = f.read().strip()
                    addresses = {sid: (spec.host, spec.peer_port)
                                 for sid, spec in self.memberships.known.items()}
                    quorum_tls = self.config.security.quorum_tls
                    self.transport = PeerTransport(
                        self.member_id, addresses, self._on_peer_message, secret,
                        on_lost=self._on_peer_lost,
                        tls=(tls.server_context(quorum_tls), tls.client_context(quorum_tls))
                        if quorum_tls is not None else None,
                        on_link_down=self._on_link_down)
                    await nursery.start(self.transport.run)
                    self._adopt_membership()
                    self._urgent.set()  # what the core made before there was a transport
                nursery.start_soon(self._sender)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._reaper_loop)
                await self._listen(nursery)
                if self.config.client_workers > 1:
                    self.workers = WorkerHub(self)
                    await nursery.start(self.workers.run)
                self.monitoring_ports = await start_monitoring(self, nursery)
                log.info("serving clients on %s (%s, member %d of %s%s, tickTime %d ms, "
                         "session timeout %d..%d ms)", self.listening_on(),
                         "standalone" if self.standalone else "ensemble",
                         self.member_id, self.voters,
                         f", observers {self.observers}" if self.observers else "",
                         self.config.tick_time,
                         self.config.min_timeout, self.config.max_timeout)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                self.syncer.close()
                self.storage.close()
            log.info("stopped; log synced at zxid 0x%x", self.tree.last_zxid)

    async def _wait_replayed(self) -> None:
        assert self.core is not None
        while self.core.applied < self._replay_target:
            await trio.sleep(0.005)
        self._replayed = True
        log.info("replayed the log: %d nodes, %d sessions, last zxid 0x%x", self.tree.node_count,
                 len(self.tree.sessions), self.tree.last_zxid)

    async def _signal_watcher(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    async def _ticker(self) -> None:
        assert self.core is not None
        self._tick_origin = trio.current_time()
        last_round = 0
        while True:
            await trio.sleep(self.raft_tick)
            self._catch_up()
            if self.core.ticks - last_round >= self.keeper.report_every:
                last_round = self.core.ticks
                self._session_round()

    def _catch_up(self) -> None:
        """Tick the core for all the time that passed. After a pause (SIGSTOP, a stalled VM, a
        starved loop) that is many ticks at once, so leases, election timeouts and session
        rules see the real elapsed time before this member acts on anything again; client
        activity calls this first too."""
        assert self.core is not None
        due = int((trio.current_time() - self._tick_origin) / self.raft_tick)
        if due > self._ticks_due and self._tick_origin:
            self.core.tick(due - self._ticks_due)
            self._ticks_due = due
            self._kick()
        self.keeper.set_role(self.core.term if self.core.is_leader else None, self.core.ticks)

    def _session_round(self) -> None:
        """Every report interval: followers report, the leader expires, and a member that
        stopped serving lets its clients go find one that serves."""
        core = self.core
        assert core is not None
        if core.is_leader:
            for session_id in self.keeper.expired(core.ticks, lease=core.has_lease()):
                log.info("session 0x%x timed out", session_id)
                self.close_session(session_id, expired=True)
        elif core.leader_id and self.transport is not None:
            self._report_sessions()
        self._retry_syncs()
        serving = self.serving
        if serving and not self._was_serving:
            # Back in the quorum: read-only clients go find a read-write session (ZooKeeper
            # closes them when its read-only server shuts down).
            for conn in list(self.connections):
                if conn.read_only:
                    conn.abort("this member rejoined the quorum; read-only session ends")
        if self._was_serving and not serving:
            log.warning("member %d: no acknowledged contact with the leader for %d ticks; "
                        "closing client connections", self.member_id, self.keeper.cutoff)
            for conn in list(self.connections):
                conn.abort("this member lost contact with the leader")
        self._was_serving = serving

    # -- proposing -------------------------------------------------------------------------------
    def propose(self, txn: txns.Txn) -> Proposal:
        """Send a transaction to the log (through the leader); the Proposal completes once this
        member has applied it."""
        self._next_seq += 1
        txn = txn.with_origin(txns.Origin(self.member_id, self._incarnation, self._next_seq))
        proposal = Proposal(txn)
        self._pending[self._next_seq] = proposal
        if not self._submit(txn):
            del self._pending[self._next_seq]
            proposal.fail()
        return proposal

    def submit_forwarded(self, txn: txns.Txn) -> bool:
        """A write a client worker of this member (workers.py) proposes, its origin set by
        the worker; False if it cannot be sent to a leader now."""
        return self._submit(txn)

    def _submit(self, txn: txns.Txn, *, decided: bool = False) -> bool:
        assert self.core is not None
        body = txn.body
        if self.core.is_leader and isinstance(body, txns.Reconfig) and not decided:
            # Decided by the leader, which may first have to catch a new voter up; whatever
            # a request carries besides the plan is not for the asker to say.
            txn = dataclasses.replace(txn, body=dataclasses.replace(body, members=None, err=None))
            assert self._nursery is not None
            # A joining voter gets a few election timeouts, and never less than 5 s, to
            # catch up (ZooKeeper gives a syncing learner initLimit ticks).
            self._nursery.start_soon(reconfig.lead_reconfig, self, txn,
                                     max(5.0, 4 * self.election_ticks * self.raft_tick))
            return True
        if self.core.is_leader:
            # The leader's clock is the transaction's time on every member (mtime, ctime).
            txn = txn.stamped(int(time.time() * 1000))
            data = txns.encode(txn)
            self.core.propose(data)
            self._own_txns[id(data)] = (data, txn)
            self._kick()
            return True
        if self.core.leader_id and self.transport is not None:
            self._forwards.append(txn)
            self._urgent.set()
            return True
        return False

    # -- reconfig (reconfig.py decides; these are its handles on the member) ---------------------
    def reconfig_request(self, record: Any, session_id: int,
                         auth: list[tuple[str, str]]) -> txns.Txn:
        """The transaction for a client's reconfig request; ReconfigError for what this
        member can refuse by itself (disabled, standalone, malformed)."""
        return reconfig.request_txn(self.config.reconfig_enabled,
                                    self.memberships.static is not None, record, session_id, auth)

    def current_membership(self) -> reconfig.Membership:
        assert self.core is not None
        node = self.tree.get(reconfig.CONFIG_PATH)
        members = self.memberships.current(self.core.conf_index, node.data if node else None)
        assert members is not None
        return members

    def learn_servers(self, specs: list[Any]) -> None:
        for spec in self.memberships.learn(specs) if specs else []:
            if self.transport is not None:
                self.transport.add_peer(spec.sid, (spec.host, spec.peer_port))

    def wakeup(self) -> None:
        self._kick()

    def log_reconfig(self, message: str) -> None:
        log.info("member %d: %s", self.member_id, message)

    def submit_decided(self, txn: txns.Txn) -> None:
        """Log a decided reconfig (the leader); the core may still refuse a change."""
        assert self.core is not None and isinstance(txn.body, txns.Reconfig)
        if not self.core.is_leader:
            return
        try:
            self._submit(txn, decided=True)
        except ConfChangeRefused as exc:
            err = Err.RECONFIG_IN_PROGRESS if exc.in_progress else Err.BAD_ARGUMENTS
            log.info("member %d: reconfig refused: %s", self.member_id, exc)
            self._submit(dataclasses.replace(
                txn, body=dataclasses.replace(txn.body, members=None, err=int(err))), decided=True)

    def _entries_appended(self, entries: list[Entry]) -> None:
        """The driver wrote these entries to the log: note the memberships they carry (and
        the addresses of servers they name) before anything is applied or adopted."""
        if self.memberships.static is not None:
            self.learn_servers(self.memberships.note_entries(entries))

    def _adopt_membership(self) -> None:
        """Follow the consensus core's configuration: who votes, who observes, and where they
        are. Runs after every Ready; does something only when the configuration changed."""
        core = self.core
        if core is None or self.memberships.static is None or core.conf_index == self._conf_index:
            return
        self._conf_index = core.conf_index
        voters, observers = list(core.voters), list(core.learners)
        if (voters, observers) != (self.voters, self.observers):
            log.info("member %d: membership is now voters %s, observers %s (log index %d)",
                     self.member_id, voters, observers, core.conf_index)
        was_member = self.member_id in self.members
        self.voters, self.observers = voters, observers
        self.members = sorted([*voters, *observers])
        self.keeper.set_members(self.members, core.ticks)
        if was_member and self.member_id not in self.members:
            # As ZooKeeper's removed servers do: clients go find a member (their pings here
            # would no longer reach the leader's session bookkeeping).
            log.warning("member %d: removed from the ensemble by a reconfig; not serving",
                        self.member_id)
            for conn in list(self.connections):
                conn.abort("this member was removed from the ensemble")
        if self.transport is not None:
            for sid in self.members:
                spec = self.memberships.known.get(sid)
                if spec is not None:
                    self.transport.add_peer(sid, (spec.host, spec.peer_port))

    def _init_config_node(self) -> None:
        """An ensemble's /zookeeper/config starts as the static membership (zxid 0), as
        ZooKeeper's initConfigInZKDatabase does; a logged reconfig replaces it."""
        node = self.tree.get(reconfig.CONFIG_PATH)
        if self.memberships.static is not None and node is not None and node.mzxid == 0:
            self.tree.set_config(self.memberships.static.config_data(), 0, 0)
    def _forward(self) -> None:
        """Send the batch of writes for the leader; if it cannot leave, they fail at once."""
        batch, self._forwards = self._forwards, []
        leader = self.core.leader_id if self.core is not None else 0
        if leader and self.transport is not None and self.transport.send(
                leader, ["fwd", [txns.encode(txn) for txn in batch]]):
            for txn in batch:
                if txn.origin is not None:
                    self._in_flight[(txn.origin.incarnation, txn.origin.seq)] = (
                        leader, txn.origin)
            return
        for txn in batch:
            if txn.origin is not None:
                self._forward_failed(txn.origin)

    def _forward_failed(self, origin: txns.Origin) -> None:
        """A forwarded write will not reach the leader (or may not have): its proposal fails,
        the client's connection closes (ConnectionLoss) and the client retries."""
        if origin.incarnation != self._incarnation:
            # A client worker's write (workers.py): the worker fails it.
            if self.workers is not None:
                self.workers.forward_failed(origin)
            return
        proposal = self._pending.pop(origin.seq, None)
        if proposal is not None:
            proposal.fail()

    def _fail_in_flight(self, leader: int | None, why: str) -> None:
        """Fail the forwards handed to the transport for `leader` (None: for any member)."""
        lost = [key for key, (to, _origin) in self._in_flight.items()
                if leader is None or to == leader]
        if lost:
            log.info("member %d: %d forwarded write(s) failed: %s", self.member_id, len(lost),
                     why)
        for key in lost:
            _to, origin = self._in_flight.pop(key)
            self._forward_failed(origin)

    def _on_link_down(self, member: int) -> None:
        """The connection this member dialled to `member` ended: forwards sent over it may
        have been lost (a batch whose send failed, frames written into a connection the other
        side had closed), and none is ever resent. Failing them all is ZooKeeper's way (a
        write whose fate is unknown is a lost connection to its client), and never applies a
        write twice: one that did arrive still commits, and the retrying client sees it."""
        self._fail_in_flight(member, f"the link to member {member} dropped")

    def _on_peer_message(self, frm: int, obj: Any) -> None:
        """A frame from another member. Malformed input raises ValueError (drops that peer)."""
        assert self.core is not None
        if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], str):
            raise ValueError("peer message: expected [kind, body]")
        kind, body = obj
        if kind == "raft":
            message = Message.from_wire(body)
            if message.frm != frm:
                raise ValueError(f"member {frm} sent a message signed as {message.frm}")
            self.core.step(message)
        elif kind == "fwd":
            if not isinstance(body, list) or not all(isinstance(b, bytes) for b in body):
                raise ValueError("forwarded transactions are malformed")
            # Decoded (and so validated) here, before they can reach the log; TxnDecodeError is
            # a ValueError and drops the peer like any other malformed frame.
            batch = [txns.decode(b) for b in body]
            # A forward that reaches a member that is no longer leader is dropped; the origin
            # closes its client's connection when it learns of the new leader.
            if self.core.is_leader:
                for txn in batch:
                    self._submit(txn)
        elif kind == "touch":
            report = SessionReport.from_wire(body)
            self._catch_up()
            ack = self.keeper.on_report(frm, report, self.core.ticks,
                                        lease=self.core.has_lease())
            if ack is not None and self.transport is not None:
                self.transport.send(frm, ["touched", ack.to_wire()])
        elif kind == "touched":
            self.keeper.acknowledged(ReportAck.from_wire(body))
        else:
            raise ValueError(f"unknown peer message kind {kind!r}")
        self._kick()

    def _on_peer_lost(self, member: int) -> None:
        assert self.core is not None
        if member == self.core.leader_id:
            log.info("member %d: connection from the leader (%d) ended", self.member_id, member)
        self.core.peer_lost(member)
        self._kick()

    # -- the log ---------------------------------------------------------------------------------
    def _kick(self) -> None:
        """The core took input (a message, ticks, a proposal): wake the log loop, and the
        sender for what may leave before the next fsync (only with peers: a standalone
        member's sender would wake for nothing after every proposal)."""
        self._wakeup.set()
        if self.transport is not None:
            self._urgent.set()

    async def _sender(self) -> None:
        """Heartbeats and their answers leave as soon as the core makes them, never behind a
        Ready's fsync: a busy disk or a long batch must not look like a dead leader to the
        followers (or dead followers to the leader). Appends of new proposals leave with the
        next Ready, one per follower, before the leader's own fsync (the driver sends them
        first), so leader and followers write in parallel. Forwarded writes go out here too,
        all that arrived in one scheduling round in one frame."""
        assert self.core is not None
        while True:
            await self._urgent.wait()
            self._urgent = trio.Event()
            if self.transport is not None:
                self._send(self.core.take_urgent())
            if self._forwards:
                self._forward()

    def _send(self, messages: list[Message]) -> None:
        if self.transport is not None:
            for message in messages:
                self.transport.send(message.to, ["raft", message.to_wire()])

    async def _log_loop(self) -> None:
        assert self.core is not None and self.driver is not None
        core, driver = self.core, self.driver
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while core.has_ready():
                # One Ready carries every proposal and message since the last one, and one
                # fsync covers them all (group commit); the blocking steps run on a worker
                # thread while new proposals and peer messages keep reaching the core.
                syncs = driver.syncs
                for work in driver.steps():
                    # driver.last is the Ready being handled: inline only a small batch's sync.
                    await self.syncer.run(work, may_inline=work == self.storage.sync and len(
                        driver.last.entries) <= SMALL_BATCH)
                self.stats.fsyncs += driver.syncs - syncs
                ready = driver.last
                assert ready is not None
                if (self._rebuild_marker_maybe and not core.rebuilding
                        and self._rebuild_marker.exists()):
                    self._rebuild_marker.unlink()
                    self._rebuild_marker_maybe = False
                    log.info("member %d is up to date with the leader and votes again",
                             self.member_id)
                self._adopt_membership()
                self._release_syncs()
                self._check_leader()
                if (ready.committed and self._since_snapshot >= self.config.snap_count
                        and not self._snapshotting):
                    self._start_snapshot(ready.committed[-1].index, ready.committed[-1].term)
            if self._snapshot_made is not None:
                await self._save_snapshot()

    def _may_sync_inline(self) -> bool:
        # On an ensemble's leader only once its appends are on the wire (the transport wrote
        # them straight to idle links): the followers then sync while the leader does, and the
        # thread's hand-off (0.3-0.6 ms, BENCHMARKS.md "Ensemble write latency") leaves the
        # commit path. Appends still queued would wait behind the sync, so then the thread.
        if self.standalone or self.core is None or not self.core.is_leader:
            return True
        return self.transport is not None and self.transport.all_sent()

    def _apply(self, index: int, term: int, data: bytes) -> None:
        zxid = make_zxid(term, index)
        if not data:
            # A new leader's empty entry: it only opens its term (ZooKeeper's new epoch).
            self.tree.last_zxid = max(self.tree.last_zxid, zxid)
            return
        own = self._own_txns.pop(id(data), None)
        try:
            txn = own[1] if own is not None and own[0] is data else txns.decode(data)
        except txns.TxnDecodeError as exc:
            raise LogEntryError(f"committed log entry {index} (zxid 0x{zxid:x}) cannot be read: "
                                f"{exc}; was it written by a newer zkfsd?") from None
        body = txn.body
        result = self.tree.apply(txn, zxid)
        self.stats.txns += 1
        self._since_snapshot += 1
        if isinstance(body, txns.CreateSession) and result.err == Err.OK:
            self.keeper.opened(txn.session, self._timeout_ticks(body.timeout),
                               self.core.ticks if self.core else 0)
        for event_type, path in result.events:
            for conn in self.watches.trigger(event_type, path):
                conn.notify(event_type, path)
        if isinstance(body, txns.CloseSession):
            self._session_closed(txn.session, expired=body.expired)
        if isinstance(body, txns.Reconfig) and result.err == Err.OK:
            log.info("member %d: reconfig committed, /zookeeper/config version %x",
                     self.member_id, zxid)
            if self.core is not None:
                self.memberships.prune(self.core.commit)
        origin = txn.origin
        if origin is not None and origin.member == self.member_id and self._in_flight:
            self._in_flight.pop((origin.incarnation, origin.seq), None)
        if (origin is not None and origin.member == self.member_id
                and origin.incarnation == self._incarnation):
            proposal = self._pending.pop(origin.seq, None)
            if proposal is not None:
                proposal.txn = txn  # as committed: stamped with the leader's time
                proposal.zxid = zxid
                proposal.result = result
                proposal.done.set()
                if proposal.on_applied is not None:
                    proposal.on_applied()

    def _check_leader(self) -> None:
        assert self.core is not None
        leader = self.core.leader_id
        if leader == self._leader:
            if leader and self.core.term != self._leader_term:
                # The same leader in a new term stepped down in between, and a forward that
                # reached it then was dropped (it was not leader): fail what is in flight.
                self._leader_term = self.core.term
                self._fail_in_flight(None, f"member {leader} was re-elected")
            return
        previous, self._leader = self._leader, leader
        self._leader_term = self.core.term
        self._own_txns.clear()
        log.info("member %d: leader is now %s (term %d, was %s)", self.member_id,
                 leader or "unknown", self.core.term, previous or "unknown")
        if previous:
            # As ZooKeeper does when a follower loses its leader: drop every client and every
            # write in flight here. Clients reconnect (to a member with a leader) and resume
            # their sessions; a write whose fate is unknown is reported as a lost connection.
            for proposal in self._pending.values():
                proposal.fail()
            self._pending.clear()
            self._forwards.clear()  # meant for the old leader; their proposals just failed
            # The client workers fail theirs on the status that names the new leader.
            self._in_flight.clear()
            # Unanswered syncs die with the leadership (the core drops them); answered ones
            # only wait for this member to apply what was committed.
            for proposal, _asked in self._syncs.values():
                proposal.fail()
            self._syncs.clear()
            for conn in list(self.connections):
                conn.abort("this member lost its leader")
        # A new leader's deadlines start afresh (SessionKeeper.set_role); a follower tells its
        # new leader at once what it serves, so that its reports are acknowledged soon.
        self.keeper.set_role(self.core.term if self.core.is_leader else None, self.core.ticks)
        if leader and leader != self.member_id and self.transport is not None:
            self._report_sessions()

    def _timeout_ticks(self, timeout_ms: int) -> int:
        return max(1, math.ceil(timeout_ms / 1000.0 / self.raft_tick))

    def _reset_sessions(self, now: int) -> None:
        """The live sessions are the tree's (after loading or installing a snapshot)."""
        self.keeper.reset({sid: self._timeout_ticks(info.timeout)
                           for sid, info in self.tree.sessions.items()}, now)

    def _install_snapshot(self, snap: Snapshot) -> None:
        """A snapshot from the leader, saved by the driver: it replaces the tree."""
        started = time.monotonic()
        self.tree = DataTree.from_snapshot(snap.data)
        self._tree_generation += 1
        if self._snapshot_made is not None:  # of the tree just replaced
            self._snapshot_made = None
            self._snapshotting = False
        self._init_config_node()
        self._reset_sessions(self.core.ticks if self.core else 0)
        self._since_snapshot = 0
        # Watches were set against the old tree; clients re-register them on reconnect and
        # setWatches reports what changed meanwhile.
        for conn in list(self.connections):
            conn.abort("state replaced by a snapshot from the leader")
        log.info("installed snapshot from the leader at index %d (%d nodes) in %.3fs",
                 snap.index, self.tree.node_count, time.monotonic() - started)

    def _read_state(self, index: int, context: bytes) -> None:
        """The leader's answer to a sync: done once this member has applied up to `index`."""
        asked = self._syncs.pop(context, None)
        if asked is not None:
            self._syncs_applying.append((index, asked[0]))

    def _release_syncs(self) -> None:
        assert self.core is not None
        if not self._syncs_applying:
            return
        applied, waiting = self.core.applied, []
        for index, proposal in self._syncs_applying:
            if index <= applied:
                proposal.zxid = self.tree.last_zxid
                proposal.result = ApplyResult(Err.OK, None, [])
                proposal.done.set()
            else:
                waiting.append((index, proposal))
        self._syncs_applying = waiting

    def _retry_syncs(self) -> None:
        """A read-index request or its answer can be lost with a peer connection; ask again
        (the core answers a repeated context again, the first answer wins)."""
        core = self.core
        assert core is not None
        for context, (proposal, asked) in list(self._syncs.items()):
            if core.ticks - asked >= 2 * self.heartbeat_ticks:
                self._syncs[context] = (proposal, core.ticks)
                core.read_index(context)
                self._kick()

    def _start_snapshot(self, index: int, term: int) -> None:
        """Snapshot the tree as it is now (applied up to `index`): fork the child that
        serializes it (snapshotter.py) before anything else is applied; the log loop saves
        the result when it arrives."""
        assert self._nursery is not None
        self._since_snapshot = 0
        self._snapshotting = True
        started = time.monotonic()
        try:
            child = ChildSnapshot(self.tree.snapshot)
        except OSError as exc:
            # No fork (memory, process limits): serialize here, as before there was a child.
            log.warning("snapshot at index %d: cannot fork (%s); serializing on the event loop",
                        index, exc)
            self._snapshot_made = (Snapshot(index, term, self.tree.snapshot()), started)
            return
        self._nursery.start_soon(self._snapshot_task, child, index, term,
                                 self._tree_generation, started)

    async def _snapshot_task(self, child: ChildSnapshot, index: int, term: int,
                             generation: int, started: float) -> None:
        try:
            data = await child.result()
        except (OSError, SnapshotFailed) as exc:
            # The tree has moved on since the fork: the next snapshot is due after another
            # snapCount transactions.
            log.warning("snapshot at index %d failed: %s", index, exc)
            self._snapshotting = False
            return
        if generation != self._tree_generation:
            # The tree was replaced by the leader's snapshot meanwhile: this one is stale.
            self._snapshotting = False
            return
        self._snapshot_made = (Snapshot(index, term, data), started)
        self._wakeup.set()

    async def _save_snapshot(self) -> None:
        """Save the snapshot the child made and let the core drop the log it covers; on the
        log loop, between Readys, which are the storage's only other users."""
        assert self.core is not None and self._snapshot_made is not None
        (snap, started), self._snapshot_made = self._snapshot_made, None
        try:
            await self.syncer.run(functools.partial(self.storage.save_snapshot, snap),
                                  may_inline=False)
            self.core.compact(snap.index, snap.term, snap.data)
        finally:
            self._snapshotting = False
        log.info("snapshot at index %d (%d bytes) in %.3fs", snap.index, len(snap.data),
                 time.monotonic() - started)

    # -- sessions --------------------------------------------------------------------------------
    def negotiate_timeout(self, requested: int) -> int:
        return max(self.config.min_timeout, min(self.config.max_timeout, requested))

    async def create_session(self, timeout_ms: int) -> tuple[int, bytes] | None:
        session_id = self.session_ids.next(self.tree.sessions)
        password = new_password()
        proposal = self.propose(txns.Txn(txns.CreateSession(timeout_ms, password), session_id))
        await proposal.done.wait()
        if proposal.result is None:
            return None
        log.info("session 0x%x established, timeout %d ms", session_id, timeout_ms)
        return session_id, password

    def sync(self, session_id: int, path: str) -> Proposal:
        """ZooKeeper's sync: completes once this member has applied everything the leader had
        committed when it received the request. Raft's read index, not a log entry: the leader
        confirms with one heartbeat round that it still leads and answers its commit index,
        so a sync costs no fsync anywhere. Fails (like a proposal) without a leader or when
        leadership changes before the answer."""
        assert self.core is not None
        proposal = Proposal(txns.Txn(txns.Sync(path), session_id))
        if self.core.leader_id == 0:
            proposal.fail()
            return proposal
        self._next_seq += 1
        context = self._next_seq.to_bytes(8, "big")
        self._syncs[context] = (proposal, self.core.ticks)
        self.core.read_index(context)
        self._kick()
        return proposal

    async def sync_barrier(self) -> None:
        """Return once this member has applied everything the leader had committed when this
        was called; at once if that fails."""
        await self.sync(0, "/").done.wait()

    def touch_session(self, session_id: int) -> bool:
        """Client activity on this member; False if the session is gone or expiring."""
        assert self.core is not None
        self._catch_up()
        return self.keeper.touch(session_id, self.core.ticks)

    def _report_sessions(self) -> None:
        # Followers tell the leader which sessions were active here, as ZooKeeper's learners do
        # in their pings; only the leader decides expiry (sessions.py has the rules).
        core = self.core
        assert core is not None and self.transport is not None
        report = self.keeper.report(core.term, core.leader_tick, core.ticks)
        self.transport.send(core.leader_id, ["touch", report.to_wire()])

    def close_session(self, session_id: int, *, expired: bool = False) -> Proposal:
        return self.propose(txns.Txn(txns.CloseSession(expired), session_id))

    def _session_closed(self, session_id: int, *, expired: bool) -> None:
        self.keeper.closed(session_id)
        conn = self.by_session.pop(session_id, None)
        log.info("session 0x%x %s", session_id, "expired" if expired else "closed")
        if conn is not None and expired:
            conn.abort("session expired")

    async def _reaper_loop(self) -> None:
        # ZooKeeper checks containers every 60 s; a few ticks keeps tests and users from waiting.
        interval = max(1.0, 5 * self.config.tick_time / 1000.0)
        while True:
            await trio.sleep(interval)
            if not self.is_leader:
                continue
            for path in self.tree.reapable(int(time.time() * 1000)):
                self.propose(txns.Txn(txns.DeleteContainer(path)))


async def serve(config: ServerConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run one zkfsd member until SIGTERM/SIGINT or cancellation."""
    os.makedirs(config.data_dir, exist_ok=True)
    server = ZkServer(config)
    await server.run(task_status=task_status)
