"""Deterministic whole-ensemble simulation of zkfsd.raft.

3 or 5 voting RaftNodes (plus 1 or 2 learners, ZooKeeper's observers, in about a third of the
seeds; no invariant may depend on them) in one process on a seeded, in-memory network that
drops, duplicates, delays, reorders and partitions messages. Members crash and lose everything
not persisted through a Ready (a crash in the middle of persisting keeps a torn prefix),
restart from their "disk", take snapshots and compact. Clients propose values. Every message
goes through Message.to_wire -> msgpack -> Message.from_wire.

Invariants are checked after every single action (a message delivered, a Ready taken or
persisted, a tick, a crash):
  - election safety: at most one leader per term, ever, and never a learner;
  - a new leader's first entry of its term is the empty no-op, terms never decrease in its log;
  - committed entries never change: every index any member ever counted as committed keeps
    one (term, data), on every member, across crashes (this is log matching + state machine
    safety as seen from the commit index);
  - leader completeness: a member that becomes leader holds every entry committed so far;
  - state machine safety: each member applies indexes 1, 2, 3, ... (or jumps by installing a
    snapshot) and what it applies at an index is what everybody applies there;
  - commit never goes backwards within one incarnation of a member;
  - sessions (zkfsd.sessions on every member, with the server's rules): clients ping their
    sessions through random members; no session's expiry commits while its client had a ping
    accepted by some member within the session's timeout. Members are also paused (they stop
    for a while, then tick for all the time that passed, as the server does after SIGSTOP).
Then liveness: the network heals, crashed members restart, and within a bounded number of
ticks a leader must be elected and a fresh proposal applied on every member.

Everything is driven by one random.Random(seed): a failing seed reproduces exactly with
    ZKFS_RAFT_SEED=<seed> [ZKFS_RAFT_N=<n>] .venv/bin/pytest tests/test_raft_sim.py -k seed_from_env
(the failure message prints that line).
Longer soak: ZKFS_RAFT_SOAK=<seeds> (optionally ZKFS_RAFT_SOAK_STEPS, ZKFS_RAFT_SOAK_START).
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field

import msgpack
import pytest

from raft_stepping import SteppedDriver, SteppedMember
from zkfsd.consensus import Entry, NotLeader, ReadyDriver, Snapshot
from zkfsd.raft import Message, RaftNode, Role, is_urgent
from zkfsd.sessions import ReportAck, SessionKeeper, SessionReport
from zkfsd.storage import MemoryStorage

CHAOS_STEPS = 250  # ticks of faults per seed in the default run
LIVENESS_TICKS = 400  # a healed ensemble must elect and commit within this many ticks
SEEDS = 1000
CHUNK = 100


class SimFailure(AssertionError):
    pass


@dataclass
class Client:
    """One ZooKeeper client and its session, pinging through whichever member it is on."""

    session: int
    timeout: int  # ticks
    member: int
    live: bool = False  # its createSession committed and no expiry has
    last_ok: int = -1  # tick of the last ping a member accepted (or of the create's commit)
    accepted: list[int] = field(default_factory=list)  # ticks of every accepted ping
    last_try: int = -1
    silent_until: int = -1  # the client stops pinging (its host hangs) until then


def session_entry(kind: bytes, session: int, arg: int = 0) -> bytes:
    """S<session>:<timeout> creates a session; X<session>:<tick> expires it, as judged by the
    leader at that (global) tick."""
    return kind + b"%d:%d" % (session, arg)


def parse_session_entry(data: bytes) -> tuple[bytes, int, int] | None:
    if data[:1] not in (b"S", b"X"):
        return None
    sid, timeout = data[1:].split(b":")
    return data[:1], int(sid), int(timeout)


class Member(SteppedMember):
    def __init__(self, sim: Sim, mid: int) -> None:
        self.sim = sim
        self.id = mid
        # The "disk": Storage's semantics in memory (writes durable at sync, a crash keeps a
        # random prefix of what was not synced yet).
        self.disk = MemoryStorage()
        self.node: RaftNode | None = None
        # The server's Ready handling, one blocking step (snapshot save, fsync) at a time:
        # `outstanding` is the step the member is "in" (a crash now tears what it writes).
        self.stepper: SteppedDriver | None = None
        self.app_index = 0
        self.seen_commit = 0
        self.last_leader_term = -1
        self.keeper: SessionKeeper | None = None
        self.paused_until = -1
        self.last_ticked = 0

    @property
    def alive(self) -> bool:
        return self.node is not None

    @property
    def running(self) -> bool:
        return self.node is not None and self.paused_until < 0

    def sync_role(self) -> None:
        node, keeper = self.node, self.keeper
        assert node is not None and keeper is not None
        keeper.set_role(node.term if node.is_leader else None, node.ticks)

    def serving(self) -> bool:
        """ZkServer.serving: a leader while it leads, a follower while its reports are acked."""
        node, keeper = self.node, self.keeper
        if node is None or keeper is None or not self.running or node.leader_id == 0:
            return False
        return node.is_leader or keeper.follower_serving(node.ticks)

    def tick(self) -> None:
        node, keeper = self.node, self.keeper
        assert node is not None and keeper is not None
        node.tick()
        self.last_ticked = self.sim.now
        self.session_round()

    def resume(self) -> None:
        """Back from a pause: first tick for all the time that passed (ZkServer._catch_up)."""
        node = self.node
        assert node is not None
        missed = self.sim.now - 1 - self.last_ticked
        self.paused_until = -1
        if missed > 0:
            node.tick(missed)
            self.last_ticked = self.sim.now - 1
        self.sync_role()

    def session_round(self) -> None:
        node, keeper = self.node, self.keeper
        assert node is not None and keeper is not None
        self.sync_role()
        if node.ticks % keeper.report_every:
            return
        if node.is_leader:
            for sid in keeper.expired(node.ticks, lease=node.has_lease()):
                self.sim.expiry_proposed(self, sid)
                node.propose(session_entry(b"X", sid, self.sim.now))
        elif node.leader_id:
            report = keeper.report(node.term, node.leader_tick, node.ticks)
            self.sim.net.send_session(self.id, node.leader_id, "touch", report.to_wire())

    def on_session_message(self, frm: int, kind: str, body: object) -> None:
        node, keeper = self.node, self.keeper
        assert node is not None and keeper is not None
        self.sync_role()
        if kind == "touch":
            ack = keeper.on_report(frm, SessionReport.from_wire(body), node.ticks,
                                   lease=node.has_lease())
            if ack is not None:
                self.sim.net.send_session(self.id, frm, "touched", ack.to_wire())
        else:
            keeper.acknowledged(ReportAck.from_wire(body))

    def ping(self, sid: int) -> bool:
        """A client's ping arrives here; True if it was accepted (ClientConnection)."""
        node, keeper = self.node, self.keeper
        if node is None or keeper is None or not self.running:
            return False
        self.sync_role()
        if not self.serving():
            return False
        return keeper.touch(sid, node.ticks)

    def start(self) -> None:
        sim = self.sim
        d = self.disk.load()
        self.node = RaftNode(
            self.id, sim.voters, learners=sim.learners,
            hard_state=d.hard_state, snapshot=d.snapshot, entries=d.entries,
            rng=random.Random(sim.rng.getrandbits(64)),
            election_ticks=sim.election_ticks, heartbeat_ticks=sim.heartbeat_ticks,
            pre_vote=sim.pre_vote, check_quorum=sim.check_quorum,
            max_inflight=sim.max_inflight, max_msg_entries=sim.max_msg_entries,
            compact_keep=sim.compact_keep,
        )
        self.stepper = SteppedDriver(ReadyDriver(
            self.node, self.disk, self.send, self, is_urgent,
            synced_vote=(d.hard_state.term, d.hard_state.vote)))
        self.app_index = 0
        self.paused_until = -1
        self.last_ticked = sim.now
        self.keeper = SessionKeeper(self.id, sim.ids, cutoff=sim.session_cutoff,
                                    report_every=sim.report_every)
        if d.snapshot is not None:
            self.install_app_snapshot(d.snapshot)
        # What survived the crash must agree with what was ever committed.
        self.sim.record_commits(self, self.node, 1, self.node.commit)
        self.seen_commit = self.node.commit
        self.last_leader_term = -1

    def crash(self) -> None:
        # Dying mid-persist: any prefix of the unsynced writes may have reached the disk.
        self.disk = self.disk.crash(self.sim.rng)
        self.node = None
        self.stepper = None
        self.keeper = None
        self.paused_until = -1

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            self.sim.net.send(m)

    # The driver's Application.
    def install_snapshot(self, snap: Snapshot) -> None:
        self.install_app_snapshot(snap)

    def read_state(self, index: int, context: bytes) -> None:
        self.sim.check_read(self, index, context)

    def install_app_snapshot(self, s: Snapshot) -> None:
        idx, digest = msgpack.unpackb(s.data)
        if idx != s.index or idx > len(self.sim.chain):
            raise SimFailure(f"m{self.id}: snapshot {s.index} of unknown state")
        if self.sim.chain[idx - 1][2] != digest:
            raise SimFailure(f"m{self.id}: snapshot {idx} state differs from the common one")
        if idx < self.app_index:
            raise SimFailure(f"m{self.id}: snapshot {idx} behind applied {self.app_index}")
        self.app_index = idx
        assert self.keeper is not None and self.node is not None
        self.keeper.reset(self.sim.sessions_at(idx), self.node.ticks)

    def apply(self, e: Entry) -> None:
        sim = self.sim
        if e.index != self.app_index + 1:
            raise SimFailure(f"m{self.id}: applied {e.index} after {self.app_index}")
        if e.index <= len(sim.chain):
            term, data, _ = sim.chain[e.index - 1]
            if (term, data) != (e.term, e.data):
                raise SimFailure(f"m{self.id}: applied ({e.term}, {e.data!r}) at {e.index}, others "
                                 f"applied ({term}, {data!r})")
        else:
            prev = sim.chain[-1][2] if sim.chain else b""
            if sim.chain and e.term < sim.chain[-1][0]:
                raise SimFailure(f"term goes backwards at {e.index}: zxids would too")
            digest = hashlib.blake2b(prev + e.term.to_bytes(8, "big") + e.data,
                                     digest_size=8).digest()
            sim.chain.append((e.term, e.data, digest))
        self.app_index = e.index
        sim.applied_events += 1
        parsed = parse_session_entry(e.data)
        if parsed is not None:
            assert self.keeper is not None and self.node is not None
            kind, sid, timeout = parsed
            if kind == b"S":
                self.keeper.opened(sid, timeout, self.node.ticks)
            elif self.keeper.is_live(sid):
                self.keeper.closed(sid)

    def compact(self) -> None:
        node = self.node
        assert node is not None
        idx = self.app_index
        if idx == 0 or idx <= self.disk.durable_base() or node.applied != idx:
            return
        term = node.term_at(idx)
        assert term is not None
        snap = Snapshot(idx, term, msgpack.packb([idx, self.sim.chain[idx - 1][2]]))
        self.disk.save_snapshot(snap)
        node.compact(idx, term, snap.data)


class Network:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.queue: list[tuple[int, int, bytes]] = []  # (deliver at tick, to, encoded frame)
        self.blocked: set[tuple[int, int]] = set()
        self.drop = 0.0
        self.dup = 0.0
        self.delay = 0.0
        self.sent = 0

    def send(self, m: Message) -> None:
        self._send(m.frm, m.to, ["raft", m.to_wire()])

    def send_session(self, frm: int, to: int, kind: str, body: object) -> None:
        """The server's "touch"/"touched" peer messages, with the same faults as Raft's."""
        self._send(frm, to, [kind, frm, body])

    def _send(self, frm: int, to: int, obj: object) -> None:
        self.sent += 1
        rng = self.sim.rng
        if (frm, to) in self.blocked or rng.random() < self.drop:
            return
        frame = msgpack.packb(obj, use_bin_type=True)
        copies = 2 if rng.random() < self.dup else 1
        for _ in range(copies):
            at = self.sim.now
            if rng.random() < self.delay:
                at += rng.randint(1, self.sim.max_delay)
            self.queue.append((at, to, frame))

    def due(self) -> list[int]:
        # A paused member reads nothing: its messages wait in the socket buffers.
        now, members = self.sim.now, self.sim.members
        return [i for i, (at, to, _) in enumerate(self.queue)
                if at <= now and members[to].paused_until < 0]

    def deliver(self, i: int) -> None:
        _, to, frame = self.queue.pop(i)
        kind, *rest = msgpack.unpackb(frame, raw=False)
        member = self.sim.members[to]
        if kind == "raft":
            m = Message.from_wire(rest[0])
            # A partition that starts while the message is in flight swallows it too.
            if (m.frm, m.to) in self.blocked or member.node is None:
                return
            member.node.step(m)
        else:
            frm, body = rest
            if (frm, to) in self.blocked or member.node is None:
                return
            member.on_session_message(frm, kind, body)

    def heal(self) -> None:
        self.blocked.clear()
        self.drop = self.dup = self.delay = 0.0


class Sim:
    def __init__(self, seed: int, n: int | None = None) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.n = n or rng.choice((3, 5))
        # Learners come from their own generator so that seeds without any run exactly as
        # they did before learners existed.
        n_learners = random.Random(seed * 7919 + 17).choice((0, 0, 0, 0, 1, 2))
        self.voters = list(range(1, self.n + 1))
        self.learners = list(range(self.n + 1, self.n + n_learners + 1))
        self.ids = self.voters + self.learners
        self.election_ticks = rng.choice((3, 5, 10))
        self.heartbeat_ticks = rng.choice((1, 2))
        # Mostly the defaults the server runs with; sometimes without the optimizations, since
        # safety must never depend on them.
        self.pre_vote = rng.random() < 0.85
        self.check_quorum = rng.random() < 0.85
        self.max_inflight = rng.choice((1, 2, 8))
        self.max_msg_entries = rng.choice((1, 3, 64))
        self.compact_keep = rng.choice((0, 0, 2, 10))
        # Per-seed fault intensity, so some runs are calm and some are a storm.
        self.crash_rate = rng.choice((0.0, 0.01, 0.05, 0.1))
        self.partition_rate = rng.choice((0.0, 0.02, 0.1))
        self.max_delay = rng.choice((3, 3, 20))
        self.propose_rate = rng.choice((0.3, 0.8))
        self.pause_rate = rng.choice((0.0, 0.02, 0.05))
        # Sessions with the server's proportions: reports every half tickTime (half an election
        # timeout), timeouts of two to five election timeouts (ZooKeeper's 2..20 tickTimes).
        self.report_every = max(1, self.election_ticks // 2)
        self.session_cutoff = 2 * self.election_ticks + 2 * self.report_every
        self.clients: dict[int, Client] = {}
        self.session_ops: list[tuple[int, bytes, int, int]] = []  # committed (index, kind, sid, t)
        self.expiries = 0
        self.expiries_proposed = 0
        self.pings_ok = 0
        self.now = 0
        self.net = Network(self)
        self.members = {i: Member(self, i) for i in self.ids}
        self.chain: list[tuple[int, bytes, bytes]] = []  # index-1 -> (term, data, state digest)
        self.committed: list[tuple[int, bytes]] = []  # index-1 -> (term, data), ever committed
        self.leaders: dict[int, int] = {}  # term -> leader
        self.proposals = 0
        self.reads: dict[bytes, int] = {}  # read context -> committed prefix when asked
        self.reads_answered = 0
        self.applied_events = 0
        self.actions = 0
        for m in self.members.values():
            m.start()

    # -- invariants ------------------------------------------------------------------------
    def fail(self, msg: str) -> None:
        exc = SimFailure(f"seed {self.seed} (n={self.n}, learners={self.learners}, tick "
                         f"{self.now}, action {self.actions}): {msg}\nreproduce: "
                         f"ZKFS_RAFT_SEED={self.seed} ZKFS_RAFT_N={self.n} "
                         f".venv/bin/pytest tests/test_raft_sim.py -k seed_from_env")
        exc.prefixed = True  # type: ignore[attr-defined]
        raise exc

    def check(self) -> None:
        for mem in self.members.values():
            node = mem.node
            if node is None:
                continue
            if node.role == Role.LEADER and mem.last_leader_term != node.term:
                self.check_new_leader(mem, node)
            if node.commit < mem.seen_commit:
                self.fail(f"m{mem.id} commit went back {mem.seen_commit} -> {node.commit}")
            if node.commit > mem.seen_commit:
                self.record_commits(mem, node, mem.seen_commit + 1, node.commit)
                mem.seen_commit = node.commit

    def record_commits(self, mem: Member, node: RaftNode, lo: int, hi: int) -> None:
        for i in range(max(lo, node.first_index), hi + 1):
            e = node.entries(i, i + 1)[0]
            if i <= len(self.committed):
                if self.committed[i - 1] != (e.term, e.data):
                    self.fail(f"m{mem.id} committed ({e.term}, {e.data!r}) at {i}, but "
                              f"{self.committed[i - 1]} was committed there before")
            elif i == len(self.committed) + 1:
                # Durable on a majority of the voters: learners' copies never count.
                holders = [v for v in self.voters if self.members[v].disk.durable_base() >= i
                           or self.members[v].disk.durable_term_at(i) == e.term]
                if len(holders) <= len(self.voters) // 2:
                    self.fail(f"m{mem.id} committed {i} held on disk by voters {holders} only")
                self.committed.append((e.term, e.data))
                self.session_committed(i, e.data)
            else:
                # Only reachable when the entries in between were compacted here; they were
                # committed (and recorded) elsewhere first.
                self.fail(f"m{mem.id} committed {i} past the known prefix {len(self.committed)}")

    # -- sessions ----------------------------------------------------------------------------
    def sessions_at(self, index: int) -> dict[int, int]:
        """The live sessions (id -> timeout) once the log is applied up to `index`."""
        live: dict[int, int] = {}
        for i, kind, sid, timeout in self.session_ops:
            if i > index:
                break
            if kind == b"S":
                live[sid] = timeout
            else:
                live.pop(sid, None)
        return live

    def session_committed(self, index: int, data: bytes) -> None:
        parsed = parse_session_entry(data)
        if parsed is None:
            return
        kind, sid, arg = parsed
        self.session_ops.append((index, kind, sid, arg))
        client = self.clients[sid]
        if kind == b"S":
            client.live, client.last_ok = True, self.now
            client.accepted.append(self.now)
            return
        if not client.live:
            return  # a second expiry of the same session is a no-op
        self.check_timed_out(client, judged=arg, what=f"committed at tick {self.now}")
        client.live = False
        self.expiries += 1

    def check_timed_out(self, client: Client, judged: int, what: str) -> None:
        """THE session invariant: a session is expired only if, before the leader judged it,
        it once went unpinged for its whole timeout. (A ping that a follower accepts after that
        does not revive it, as in ZooKeeper: the session had already timed out; the leader's
        rules make sure no member serving it knew better when it judged.)"""
        pings = [t for t in client.accepted if t < judged] + [judged]
        if all(b - a < client.timeout for a, b in zip(pings, pings[1:])):
            self.fail(f"session {client.session} expired (judged at tick {judged}, {what}), "
                      f"but it was never unpinged for its timeout of {client.timeout} ticks: "
                      f"pings accepted at {pings[-8:-1]}")

    def expiry_proposed(self, mem: Member, sid: int) -> None:
        client = self.clients[sid]
        if client.live:
            self.check_timed_out(client, judged=self.now, what=f"by m{mem.id}")
        self.expiries_proposed += 1

    def new_session(self) -> None:
        leaders = [m for m in self.members.values() if m.running and m.node.is_leader]  # type: ignore[union-attr]
        if not leaders:
            return
        sid = len(self.clients) + 1
        timeout = self.rng.choice((2, 3, 5)) * self.election_ticks
        self.clients[sid] = Client(sid, timeout, leaders[0].id)
        try:
            leaders[0].node.propose(session_entry(b"S", sid, timeout))  # type: ignore[union-attr]
        except NotLeader:
            pass

    def pings(self, chaos: bool) -> None:
        rng = self.rng
        for client in self.clients.values():
            if not client.live or self.now < client.silent_until:
                continue
            if chaos and rng.random() < 0.003:
                # The client's host hangs for a while, sometimes past its session timeout.
                client.silent_until = self.now + rng.randint(1, 2 * client.timeout)
                continue
            # ZooKeeper clients ping after a third of the timeout without traffic, and retry
            # at once elsewhere when their server is gone.
            if self.now - client.last_try < max(1, client.timeout // 3):
                continue
            client.last_try = self.now
            member = self.members[client.member]
            if member.ping(client.session):
                client.last_ok = self.now
                client.accepted.append(self.now)
                self.pings_ok += 1
            else:
                client.member = rng.choice(self.ids)
                client.last_try = self.now - client.timeout  # try the next one next tick

    def check_read(self, mem: Member, index: int, context: bytes) -> None:
        # Linearizable reads: the read index covers every write committed before the request.
        # (The network duplicates messages, so one request may be answered twice.)
        asked = self.reads.get(context)
        if asked is None:
            self.fail(f"m{mem.id}: read state for unknown context {context!r}")
        if index < asked:
            self.fail(f"m{mem.id}: read index {index} misses writes committed up to {asked}")
        self.reads_answered += 1

    def read(self, mem: Member) -> None:
        assert mem.node is not None
        ctx = b"r%d" % len(self.reads)
        self.reads[ctx] = len(self.committed)
        mem.node.read_index(ctx)

    def check_new_leader(self, mem: Member, node: RaftNode) -> None:
        mem.last_leader_term = node.term
        if mem.id in self.learners:
            self.fail(f"learner m{mem.id} became leader of term {node.term}")
        other = self.leaders.setdefault(node.term, mem.id)
        if other != mem.id:
            self.fail(f"two leaders in term {node.term}: m{other} and m{mem.id}")
        if node.last_index < len(self.committed):
            self.fail(f"leader m{mem.id} lacks committed entries past {node.last_index}")
        prev_term = node.term_at(node.first_index - 1) or 0
        first_of_term = None
        for i in range(node.first_index, node.last_index + 1):
            e = node.entries(i, i + 1)[0]
            if e.term < prev_term:
                self.fail(f"leader m{mem.id}: term goes backwards at {i}")
            prev_term = e.term
            if e.term == node.term and first_of_term is None:
                first_of_term = e
            if i <= len(self.committed) and self.committed[i - 1] != (e.term, e.data):
                self.fail(f"leader m{mem.id} of term {node.term} has ({e.term}) at committed "
                          f"index {i}, committed was {self.committed[i - 1]}")
        if first_of_term is None or first_of_term.data != b"":
            self.fail(f"leader m{mem.id} of term {node.term} did not start with a no-op")

    # -- driving ---------------------------------------------------------------------------
    def act(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.actions += 1
        try:
            fn(*args)
        except SimFailure as exc:
            if getattr(exc, "prefixed", False):
                raise
            self.fail(str(exc))
        except Exception as exc:
            raise SimFailure(f"seed {self.seed} (n={self.n}, tick {self.now}, action "
                             f"{self.actions}): {type(exc).__name__}: {exc}") from exc
        self.check()

    def propose(self, mem: Member) -> None:
        assert mem.node is not None
        self.proposals += 1
        try:
            mem.node.propose(b"v%d" % self.proposals)
        except NotLeader as exc:
            # The hint must name a member or nobody.
            if exc.leader_id not in (0, *self.ids):  # type: ignore[attr-defined]
                self.fail(f"bad leader hint {exc.leader_id}")  # type: ignore[attr-defined]

    def tick(self, chaos: bool) -> None:
        rng = self.rng
        self.now += 1
        members = [self.members[i] for i in self.ids]
        if chaos:
            self.faults()
        for mem in members:
            if mem.node is not None and 0 <= mem.paused_until <= self.now:
                self.act(mem.resume)
            if mem.running:
                self.act(mem.tick)
        if len([c for c in self.clients.values() if c.live]) < 3 and rng.random() < 0.05:
            self.act(self.new_session)
        self.act(self.pings, chaos)
        if rng.random() < (self.propose_rate if chaos else 0.5):
            alive = [m for m in members if m.running]
            if alive:
                leaders = [m for m in alive if m.node.is_leader]  # type: ignore[union-attr]
                # Clients mostly find the leader, sometimes knock at the wrong door.
                target = rng.choice(leaders if leaders and rng.random() < 0.8 else alive)
                self.act(self.propose, target)
        if rng.random() < 0.2:
            alive = [m for m in members if m.running]
            if alive:
                self.act(self.read, rng.choice(alive))
        # Work within the tick in random order: deliveries, Ready handling (possibly with
        # deliveries between ready() and advance()).
        for _ in range(400):
            options: list[tuple[str, int]] = [("msg", i) for i in self.net.due()]
            for mem in members:
                if not mem.running:
                    continue
                if mem.outstanding is not None:
                    options.append(("done", mem.id))
                elif mem.node.has_ready():
                    options.append(("ready", mem.id))
            if not options:
                break
            kind, arg = options[rng.randrange(len(options))]
            if kind == "msg":
                self.act(self.net.deliver, arg)
            elif kind == "ready":
                self.act(self.members[arg].take_ready)
            else:
                self.act(self.members[arg].complete_ready)
            if chaos and rng.random() < self.crash_rate / 10:
                self.crash_one(mid_persist=True)

    def crash_one(self, mid_persist: bool = False) -> None:
        alive = [m for m in self.members.values() if m.node is not None]
        if mid_persist:
            # The interesting crashes: a leader or voter dying with a Ready half written.
            alive = [m for m in alive if m.outstanding is not None]
        if alive:
            self.act(self.rng.choice(alive).crash)

    def faults(self) -> None:
        rng = self.rng
        if rng.random() < self.crash_rate:
            self.crash_one()
        if rng.random() < self.pause_rate:
            # SIGSTOP: mostly the leader, for up to a few election timeouts.
            running = [m for m in self.members.values() if m.running]
            leaders = [m for m in running if m.node.is_leader]  # type: ignore[union-attr]
            if running:
                victim = rng.choice(leaders if leaders and rng.random() < 0.7 else running)
                victim.paused_until = self.now + rng.randint(1, 3 * self.election_ticks)
        for mem in self.members.values():
            if mem.node is None and rng.random() < 0.1:
                self.act(mem.start)
        if rng.random() < self.partition_rate:
            # A random split, or one member cut off, possibly one-way.
            group = set(rng.sample(self.ids, rng.randint(1, self.n // 2)))
            one_way = rng.random() < 0.2
            self.net.blocked = {(a, b) for a in self.ids for b in self.ids
                                if (a in group) != (b in group) and (not one_way or a in group)}
        elif self.net.blocked and rng.random() < 0.05:
            self.net.blocked = set()
        if rng.random() < 0.05:
            self.net.drop = rng.choice((0.0, 0.05, 0.2, 0.5))
            self.net.dup = rng.choice((0.0, 0.05, 0.2))
            self.net.delay = rng.choice((0.0, 0.1, 0.5))
        if rng.random() < 0.03:
            alive = [m for m in self.members.values() if m.node is not None]
            if alive:
                self.act(rng.choice(alive).compact)

    def run(self, steps: int) -> dict[str, int]:
        for _ in range(steps):
            self.tick(chaos=True)
        # Heal everything; now the ensemble must make progress.
        self.net.heal()
        for mem in self.members.values():
            if mem.node is None:
                self.act(mem.start)
            elif mem.paused_until >= 0:
                mem.paused_until = self.now
        healed_at = self.now
        marker = None
        while self.now - healed_at < LIVENESS_TICKS:
            self.tick(chaos=False)
            leaders = [m for m in self.members.values() if m.node and m.node.is_leader]
            if marker is None and leaders:
                node = leaders[0].node
                assert node is not None
                marker = node.propose(b"marker")
            if marker is not None:
                if len(self.committed) >= marker.index:
                    if self.committed[marker.index - 1] == (marker.term, marker.data) and all(
                        m.app_index >= marker.index for m in self.members.values()
                    ):
                        break
                    if self.committed[marker.index - 1] != (marker.term, marker.data):
                        marker = None  # that leader lost it before commit: try again
                elif not any(m.node and m.node.is_leader and m.node.term == marker.term
                             for m in self.members.values()):
                    marker = None
        else:
            states = {m.id: m.node.status() for m in self.members.values() if m.node}
            self.fail(f"no progress {LIVENESS_TICKS} ticks after healing: {states}")
        return {
            "ticks": self.now, "actions": self.actions, "heal_ticks": self.now - healed_at,
            "committed": len(self.committed), "terms": len(self.leaders),
            "messages": self.net.sent, "reads": self.reads_answered,
            "sessions": len(self.clients), "expiries": self.expiries,
            "pings": self.pings_ok,
        }

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.now, self.actions, self.net.sent, sorted(self.leaders.items()),
                       self.committed)).encode())
        return h.hexdigest()


def run_seed(seed: int, steps: int = CHAOS_STEPS, n: int | None = None) -> dict[str, int]:
    return Sim(seed, n).run(steps)


@pytest.mark.parametrize("chunk", range(SEEDS // CHUNK))
def test_simulation_seeds(chunk: int) -> None:
    committed = expiries = pings = 0
    for seed in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        stats = run_seed(seed)
        committed += stats["committed"]
        expiries += stats["expiries"]
        pings += stats["pings"]
    # The scenarios must actually exercise replication, not just elections, and sessions must
    # both live (pings accepted) and die (a silent client's session expires).
    assert committed > CHUNK * 10
    assert pings > CHUNK * 10
    assert expiries > 0


@pytest.mark.parametrize("n", [3, 5])
def test_simulation_sizes(n: int) -> None:
    for seed in range(20):
        run_seed(10_000 + seed, n=n)


def test_simulation_is_deterministic() -> None:
    a, b = Sim(4242), Sim(4242)
    a.run(CHAOS_STEPS)
    b.run(CHAOS_STEPS)
    assert a.fingerprint() == b.fingerprint()
    c = Sim(4243)
    c.run(CHAOS_STEPS)
    assert c.fingerprint() != a.fingerprint()


@pytest.mark.skipif("ZKFS_RAFT_SEED" not in os.environ, reason="set ZKFS_RAFT_SEED=<seed>")
def test_seed_from_env() -> None:
    seed = int(os.environ["ZKFS_RAFT_SEED"])
    steps = int(os.environ.get("ZKFS_RAFT_SOAK_STEPS", CHAOS_STEPS))
    n = int(os.environ["ZKFS_RAFT_N"]) if "ZKFS_RAFT_N" in os.environ else None
    print(run_seed(seed, steps, n))


@pytest.mark.skipif("ZKFS_RAFT_SOAK" not in os.environ, reason="set ZKFS_RAFT_SOAK=<seeds>")
def test_soak() -> None:
    count = int(os.environ["ZKFS_RAFT_SOAK"])
    start = int(os.environ.get("ZKFS_RAFT_SOAK_START", 1_000_000))
    steps = int(os.environ.get("ZKFS_RAFT_SOAK_STEPS", 1000))
    for seed in range(start, start + count):
        run_seed(seed, steps)
