"""Unit tests for zkfsd.raft: elections, replication, conflicts, pre-vote, check-quorum,
snapshots, read index, the persistence contract and the peer wire format."""
from __future__ import annotations

import random
from collections.abc import Sequence

import msgpack
import pytest

from zkfsd.consensus import Entry, HardState, NotLeader, ReadyDriver, Snapshot, make_zxid
from zkfsd.raft import Message, MsgType, RaftNode, Role, is_urgent
from zkfsd.storage import MemoryStorage


class Cluster:
    """Members wired together with immediate, in-order delivery; `cut` isolates members. Each
    member's Readys go through the server's driver (consensus.ReadyDriver) into its own
    MemoryStorage (`disk`), which `make` restarts it from."""

    def __init__(self, n: int = 3, learners: int = 0, **kw: object) -> None:
        """`n` voters 1..n, then `learners` learners (observers) n+1..n+learners."""
        self.voters = list(range(1, n + 1))
        self.ids = list(range(1, n + learners + 1))
        self.kw = kw
        self.nodes: dict[int, RaftNode] = {}
        self.disk: dict[int, MemoryStorage] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.snapshots: dict[int, list[Snapshot]] = {i: [] for i in self.ids}
        self.read_states: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.ids}
        self.queue: list[Message] = []
        self.cut: set[int] = set()
        self.sent: list[Message] = []
        for i in self.ids:
            self.disk[i] = MemoryStorage()
            self.nodes[i] = self.make(i)

    def make(self, i: int, **extra: object) -> RaftNode:
        """Member i (re)started from what its disk holds."""
        self.disk[i] = disk = self.disk[i].crash()
        loaded = disk.load()
        kw = dict(self.kw)
        kw.update(extra)
        kw.setdefault("learners", [j for j in self.ids if j not in self.voters])
        return RaftNode(i, self.voters, hard_state=loaded.hard_state, snapshot=loaded.snapshot,
                        entries=loaded.entries, rng=random.Random(i), **kw)  # type: ignore[arg-type]

    def blocked(self, m: Message) -> bool:
        return m.frm in self.cut or m.to in self.cut

    def send(self, messages: Sequence[Message]) -> None:
        for m in messages:
            self.sent.append(m)
            if not self.blocked(m):
                self.queue.append(m)

    def handle_ready(self, i: int) -> None:
        cluster = self

        class App:
            def install_snapshot(self, snap: Snapshot) -> None:
                cluster.snapshots[i].append(snap)

            def apply(self, entry: Entry) -> None:
                cluster.applied[i].append(entry)

            def read_state(self, index: int, context: bytes) -> None:
                cluster.read_states[i].append((index, context))

        ReadyDriver(self.nodes[i], self.disk[i], self.send, App(), is_urgent).run()

    def settle(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            for i in self.ids:
                self.handle_ready(i)
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                self.nodes[m.to].step(m)
        raise AssertionError("cluster did not settle")

    def tick(self, times: int = 1, only: list[int] | None = None) -> None:
        for _ in range(times):
            for i in only or self.ids:
                self.nodes[i].tick()
            self.settle()

    def elect(self, i: int) -> RaftNode:
        node = self.nodes[i]
        for _ in range(4 * node.election_ticks):
            node.tick()
            self.settle()
            if node.is_leader:
                return node
        raise AssertionError(f"{i} was not elected")

    def leaders(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i].is_leader]

    def data(self, i: int) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.data]


def single(**kw: object) -> RaftNode:
    return RaftNode(1, [1], hard_state=HardState(), rng=random.Random(0), **kw)  # type: ignore[arg-type]


# -- elections ---------------------------------------------------------------------------------
def test_single_member_leads_at_once_and_commits_after_persisting() -> None:
    node = single()
    assert node.is_leader and node.role == "leader" and node.leader_id == 1 and node.term == 1
    term, index = node.next_position()
    assert (term, index) == (1, 2)  # index 1 is the leader's no-op
    entry = node.propose(b"a")
    assert entry == Entry(2, 1, b"a")
    rd = node.ready()
    assert [e.index for e in rd.entries] == [1, 2] and rd.entries[0].data == b""
    assert rd.hard_state == HardState(1, 1, 0)
    assert rd.committed == []  # nothing is committed before it is durable
    node.advance(rd)
    assert node.commit == 2 and node.has_ready()
    rd = node.ready()
    assert [e.data for e in rd.committed] == [b"", b"a"]
    assert rd.hard_state == HardState(1, 1, 2)
    node.advance(rd)
    assert node.applied == 2 and not node.has_ready()


def test_single_member_restart_starts_a_new_term_with_higher_zxids() -> None:
    node = single()
    node.propose(b"a")
    while node.has_ready():
        rd = node.ready()
        node.advance(rd)
    old = make_zxid(*node.next_position())
    again = RaftNode(1, [1], hard_state=node.hard_state,
                     entries=node.entries(1, node.last_index + 1), rng=random.Random(1))
    assert again.is_leader and again.term == 2
    assert make_zxid(*again.next_position()) > old
    rd = again.ready()
    # The stored log is handed back as committed only up to the stored commit index, then the
    # new no-op once durable.
    assert [e.data for e in rd.committed] == [b"", b"a"]


def test_three_members_elect_exactly_one_leader() -> None:
    c = Cluster(3)
    for _ in range(100):
        c.tick()
        if c.leaders():
            break
    assert len(c.leaders()) == 1
    leader = c.leaders()[0]
    c.tick(3)
    for i in c.ids:
        assert c.nodes[i].leader_id == leader
        assert c.nodes[i].term == c.nodes[leader].term
    # The leader's empty entry commits everywhere (once a heartbeat carries the commit index).
    assert all(c.applied[i] and c.applied[i][0].data == b"" for i in c.ids)


def test_randomized_election_timeout_in_range() -> None:
    for seed in range(50):
        c = Cluster(3)
        node = c.nodes[1]
        node._rng = random.Random(seed)  # noqa: SLF001 - probing the timer's range
        node._reset(node.term)  # noqa: SLF001
        ticks = 0
        while node.role == Role.FOLLOWER:
            node.tick()
            ticks += 1
        assert 10 <= ticks < 20
        assert node.role == Role.PRE_CANDIDATE and node.term == 0  # pre-vote keeps the term


def test_vote_is_persisted_before_the_reply_leaves() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    node.step(Message(MsgType.VOTE, 1, 2, 1, log_term=0, index=0))
    rd = node.ready()
    assert rd.hard_state == HardState(1, 1, 0)
    assert [(m.type, m.to, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, 1, False)]
    node.advance(rd)
    # A second candidate in the same term is refused.
    node.step(Message(MsgType.VOTE, 3, 2, 1))
    rd = node.ready()
    assert rd.messages[0].reject and rd.hard_state is None


def test_vote_refused_to_candidate_with_older_log() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(2, 0, 0),
                    entries=[Entry(1, 1, b"x"), Entry(2, 2, b"y")], rng=random.Random(0))
    node.step(Message(MsgType.VOTE, 1, 2, 3, log_term=1, index=5))
    rd = node.ready()
    assert rd.messages[0].reject and rd.messages[0].term == 3 and node.vote == 0


def test_member_with_an_empty_log_votes_only_for_empty_candidates() -> None:
    # It may have lost its data dir: voting for a candidate with entries could elect one that
    # misses committed entries the wiped member had acknowledged.
    wiped = RaftNode(3, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    wiped.step(Message(MsgType.VOTE, 1, 3, 5, log_term=4, index=7))
    rd = wiped.ready()
    assert rd.messages[0].reject and wiped.vote == 0
    wiped.advance(rd)
    fresh = RaftNode(3, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    fresh.step(Message(MsgType.VOTE, 1, 3, 1, log_term=0, index=0))
    rd = fresh.ready()
    assert not rd.messages[0].reject and fresh.vote == 1


def test_wiped_member_is_rebuilt_by_the_leader_then_votes_normally() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    for i in range(5):
        leader.propose(f"v{i}".encode())
        c.settle()
    c.disk[3] = MemoryStorage()
    c.applied[3] = []
    c.nodes[3] = c.make(3)
    leader.propose(b"after")  # its append is rejected, and the leader backs up to index 1
    c.tick(3)
    assert c.nodes[3].last_index == leader.last_index
    assert c.data(3) == c.data(1)


def test_rebuilding_member_neither_votes_nor_campaigns_until_caught_up() -> None:
    # Restarted part-way through a rebuild: it holds an entry but not all it once acknowledged.
    node = RaftNode(3, [1, 2, 3], hard_state=HardState(2, 0, 0), entries=[Entry(1, 1, b"x")],
                    rng=random.Random(0), rebuilding=True)
    node.step(Message(MsgType.VOTE, 2, 3, 3, log_term=1, index=1))
    rd = node.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [True]
    node.advance(rd)
    for _ in range(4 * node.election_ticks):
        node.tick()
    assert node.role == Role.FOLLOWER and node.term == 3
    # The leader brings it up to date: then it is an ordinary member again.
    c = Cluster(3)
    leader = c.elect(1)
    for i in range(5):
        leader.propose(f"v{i}".encode())
        c.settle()
    c.disk[3] = MemoryStorage()
    c.applied[3] = []
    c.nodes[3] = c.make(3, rebuilding=True)
    leader.propose(b"after")
    c.tick(3)
    assert not c.nodes[3].rebuilding and c.data(3) == c.data(1)


def test_leader_lost_shortens_the_wait_and_a_live_leader_survives_it() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    # A follower that merely lost its connection: its pre-vote is refused by the other
    # follower, which still hears the leader.
    c.nodes[2].leader_lost(1)
    c.tick(c.nodes[2].election_ticks // 3 + 1, only=[2])
    assert leader.is_leader and c.leaders() == [1]
    # The leader really died: both followers hear of it and one wins within a few ticks.
    c.cut = {1}
    for i in (2, 3):
        c.nodes[i].leader_lost(1)
    c.tick(c.nodes[2].election_ticks // 3 + 2, only=[2, 3])
    assert [i for i in (2, 3) if c.nodes[i].is_leader]


def test_messages_from_non_voters_and_other_destinations_are_ignored() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    node.step(Message(MsgType.VOTE, 9, 2, 5))
    node.step(Message(MsgType.VOTE, 1, 3, 5))
    node.step(Message(MsgType.APPEND, 2, 2, 5))
    assert node.term == 0 and not node.has_ready()


def test_stale_term_messages_are_ignored() -> None:
    c = Cluster(3, check_quorum=False)  # no lease, so member 2 can take over at once
    c.elect(1)
    c.elect(2)
    n3 = c.nodes[3]
    term = n3.term
    n3.step(Message(MsgType.APPEND, 1, 3, 1, log_term=0, index=0,
                    entries=(Entry(1, 1, b"stale"),), commit=5))
    assert n3.term == term and n3.leader_id == 2
    rd = n3.ready()
    # The stale leader is told about the newer term.
    assert [(m.type, m.to, m.term) for m in rd.messages] == [(MsgType.APPEND_RESP, 1, term)]
    n3.advance(rd)


# -- replication -------------------------------------------------------------------------------
def test_log_replication_and_commit() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    for v in (b"a", b"b", b"c"):
        leader.propose(v)
    c.settle()
    c.tick(2)
    for i in c.ids:
        assert c.data(i) == [b"a", b"b", b"c"]
        assert c.nodes[i].commit == leader.last_index


def test_proposal_on_follower_raises_not_leader_with_hint() -> None:
    c = Cluster(3)
    c.elect(2)
    with pytest.raises(NotLeader) as info:
        c.nodes[1].propose(b"x")
    assert info.value.leader_id == 2  # type: ignore[attr-defined]


def test_leader_commits_old_entries_only_through_its_own_entry() -> None:
    # Raft §5.4.2: a new leader with an uncommitted entry of an older term must not count
    # replicas of that entry; its no-op commits both.
    c = Cluster(3)
    leader = c.elect(1)
    c.cut = {2, 3}
    leader.propose(b"old")
    c.settle()
    old = leader.last_index
    c.cut = set()
    # Member 1 is re-elected in a new term (its log is the longest).
    for i in c.ids:
        c.disk[i] = MemoryStorage(None, c.nodes[i].hard_state, c.disk[i].durable.entries)
    nodes = {i: c.make(i) for i in c.ids}
    c.nodes = nodes
    c.applied = {i: [] for i in c.ids}
    new = c.elect(1)
    assert new.term == 2
    assert new.term_at(old) == 1 and new.entries(old + 1, old + 2)[0] == Entry(old + 1, 2, b"")
    c.tick(2)
    assert c.data(2) == [b"old"] and new.commit == old + 1


def test_conflicting_suffix_is_overwritten() -> None:
    # Member 3 led term 1 alone and appended entries nobody else has; member 1 then led term 2.
    common = [Entry(1, 1, b"")]
    n3_log = common + [Entry(2, 1, b"lost1"), Entry(3, 1, b"lost2"), Entry(4, 1, b"lost3")]
    n1_log = common + [Entry(2, 2, b""), Entry(3, 2, b"kept")]
    c = Cluster(3)
    c.disk[1] = MemoryStorage(None, HardState(2, 1, 1), n1_log)
    c.disk[2] = MemoryStorage(None, HardState(2, 1, 1), n1_log[:2])
    c.disk[3] = MemoryStorage(None, HardState(1, 3, 1), n3_log)
    c.nodes = {i: c.make(i) for i in c.ids}
    leader = c.elect(1)
    leader.propose(b"new")
    c.settle()
    c.tick(2)
    n3 = c.nodes[3]
    expect = [(e.index, e.term, e.data) for e in leader.entries(1, leader.last_index + 1)]
    assert [(e.index, e.term, e.data) for e in n3.entries(1, n3.last_index + 1)] == expect
    assert [(e.index, e.term, e.data) for e in c.disk[3].durable.entries] == expect
    assert c.data(3) == [b"kept", b"new"]


def test_fast_backtracking_skips_a_whole_conflicting_term() -> None:
    # Follower holds 50 entries of a dead term; the leader should not probe them one by one.
    leader_log = [Entry(1, 1, b"")] + [Entry(i, 3, b"") for i in range(2, 5)]
    follower_log = [Entry(1, 1, b"")] + [Entry(i, 2, b"x") for i in range(2, 52)]
    c = Cluster(3)
    c.disk[1] = MemoryStorage(None, HardState(3, 1, 1), leader_log)
    c.disk[2] = MemoryStorage(None, HardState(3, 1, 1), leader_log)
    c.disk[3] = MemoryStorage(None, HardState(2, 3, 1), follower_log)
    c.nodes = {i: c.make(i) for i in c.ids}
    c.cut = {3}
    c.elect(1)
    c.cut = set()
    c.sent.clear()
    c.tick(3)
    appends_to_3 = [m for m in c.sent if m.type == MsgType.APPEND and m.to == 3]
    assert len(appends_to_3) <= 5
    assert c.nodes[3].last_index == c.nodes[1].last_index
    assert c.nodes[3].term_at(2) == 3


def test_flow_control_limits_inflight_appends_and_entries_per_message() -> None:
    c = Cluster(3, max_inflight=2, max_msg_entries=3)
    leader = c.elect(1)
    c.tick(2)  # followers in replicate state
    c.cut = {3}  # member 3 stops answering
    c.sent.clear()
    for i in range(30):
        leader.propose(b"%d" % i)
    c.settle()
    to3 = [m for m in c.sent if m.type == MsgType.APPEND and m.to == 3]
    assert len(to3) == 2 and all(len(m.entries) <= 3 for m in to3)
    to2 = [m for m in c.sent if m.type == MsgType.APPEND and m.to == 2]
    assert all(len(m.entries) <= 3 for m in to2)
    assert c.nodes[2].last_index == leader.last_index  # the live follower keeps up
    c.cut = set()
    c.tick(3)
    assert c.nodes[3].last_index == leader.last_index


def test_step_between_ready_and_advance_replacing_entries() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(1, 1, 0), entries=[Entry(1, 1, b"")],
                    rng=random.Random(0))
    node.step(Message(MsgType.APPEND, 1, 2, 1, log_term=1, index=1,
                      entries=(Entry(2, 1, b"a"), Entry(3, 1, b"b")), commit=1))
    rd1 = node.ready()
    assert [e.index for e in rd1.entries] == [2, 3]
    assert [e.index for e in rd1.committed] == [1]
    # While rd1 is being fsynced, a new leader overwrites entry 3.
    node.step(Message(MsgType.APPEND, 3, 2, 2, log_term=1, index=2,
                      entries=(Entry(3, 2, b"c"),), commit=3))
    with pytest.raises(RuntimeError):
        node.ready()  # one Ready at a time
    node.advance(rd1)
    rd2 = node.ready()
    assert rd2.entries == [Entry(3, 2, b"c")]
    # Entry 3 of term 2 is committed but not yet durable here: not handed out for applying.
    assert [e.index for e in rd2.committed] == [2]
    node.advance(rd2)
    rd3 = node.ready()
    assert rd3.committed == [Entry(3, 2, b"c")]


# -- pre-vote and check-quorum -----------------------------------------------------------------
@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_keeps_a_rejoining_partitioned_member_from_deposing_the_leader(
    pre_vote: bool,
) -> None:
    c = Cluster(3, pre_vote=pre_vote)
    leader = c.elect(1)
    term = leader.term
    c.cut = {3}
    c.tick(100)  # member 3 campaigns again and again on its side of the partition
    c.cut = set()
    c.tick(5)
    if pre_vote:
        assert c.nodes[3].term == term
        assert leader.is_leader and leader.term == term
        assert c.nodes[3].leader_id == 1
    else:
        # Without pre-vote the lonely member's term ran away and the healthy leader is gone.
        assert leader.term > term
        assert leader.term != term or not leader.is_leader


def test_followers_in_a_leader_lease_ignore_vote_requests() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    term = leader.term
    n2 = c.nodes[2]
    # A member with a higher term (say it ran without pre-vote in a partition) asks for votes.
    n2.step(Message(MsgType.VOTE, 3, 2, term + 5, log_term=term, index=leader.last_index))
    assert n2.term == term and n2.vote == 1 and not n2.ready().messages


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.cut = {1}
    c.tick(leader.election_ticks - 1, only=[1])
    assert leader.is_leader
    # Within two election timeouts: the first check may still count the replies that came
    # before the cut.
    c.tick(leader.election_ticks + 1, only=[1])
    assert leader.role == Role.FOLLOWER and leader.leader_id == 0
    with pytest.raises(NotLeader):
        leader.propose(b"x")


def test_without_check_quorum_leader_keeps_leading_alone() -> None:
    c = Cluster(3, check_quorum=False)
    leader = c.elect(1)
    c.cut = {1}
    c.tick(5 * leader.election_ticks, only=[1])
    assert leader.is_leader


def test_failover_after_leader_loss() -> None:
    c = Cluster(5)
    leader = c.elect(1)
    leader.propose(b"before")
    c.settle()
    c.tick(2)
    c.cut = {1}
    for _ in range(200):
        c.tick(only=[2, 3, 4, 5])
        if any(c.nodes[i].is_leader for i in (2, 3, 4, 5)):
            break
    (new,) = [i for i in (2, 3, 4, 5) if c.nodes[i].is_leader]
    assert c.nodes[new].term > leader.term
    c.nodes[new].propose(b"after")
    c.settle()
    c.tick(2, only=[2, 3, 4, 5])
    assert c.data(new) == [b"before", b"after"]
    c.cut = set()
    c.tick(3)
    assert not leader.is_leader
    assert c.data(1) == [b"before", b"after"]


# -- snapshots ---------------------------------------------------------------------------------
def test_snapshot_sent_to_follower_behind_the_compacted_log() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.cut = {3}
    for i in range(20):
        leader.propose(b"v%d" % i)
    c.settle()
    c.tick(2)
    applied = leader.applied
    assert applied == leader.last_index
    leader.compact(applied, leader.term_at(applied), b"STATE@%d" % applied)  # type: ignore[arg-type]
    assert leader.first_index == applied + 1
    c.cut = set()
    c.sent.clear()
    leader.propose(b"after")
    c.tick(3)
    assert [m.type for m in c.sent if m.to == 3 and m.type == MsgType.SNAPSHOT]
    assert [s.index for s in c.snapshots[3]] == [applied]
    assert c.snapshots[3][0].data == b"STATE@%d" % applied
    n3 = c.nodes[3]
    assert n3.applied == leader.applied and n3.last_index == leader.last_index
    assert c.data(3)[-1] == b"after"
    assert c.disk[3].durable.snapshot is not None and c.disk[3].durable.snapshot.index == applied


def test_compact_keep_spares_slightly_lagging_followers_a_snapshot() -> None:
    c = Cluster(3, compact_keep=50)
    leader = c.elect(1)
    c.cut = {3}
    for i in range(20):
        leader.propose(b"v%d" % i)
    c.settle()
    c.tick(2)
    leader.compact(leader.applied, leader.term_at(leader.applied), b"S")  # type: ignore[arg-type]
    c.cut = set()
    c.sent.clear()
    c.tick(3)
    assert not [m for m in c.sent if m.type == MsgType.SNAPSHOT]
    assert c.nodes[3].last_index == leader.last_index


def test_follower_restart_from_snapshot_gets_committed_entries_after_it() -> None:
    snap = Snapshot(5, 1, b"S")
    ents = [Entry(6, 1, b"a"), Entry(7, 2, b"b"), Entry(8, 2, b"c")]
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(2, 1, 7), snapshot=snap, entries=ents,
                    rng=random.Random(0))
    assert node.applied == 5 and node.commit == 7 and node.first_index == 6
    rd = node.ready()
    assert [e.index for e in rd.committed] == [6, 7] and rd.entries == []


def test_restart_with_torn_hard_state_never_runs_a_term_below_its_log() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(1, 1, 0),
                    entries=[Entry(1, 1, b""), Entry(2, 3, b"")], rng=random.Random(0))
    assert node.term == 3 and node.vote == 0


# -- read index --------------------------------------------------------------------------------
def test_read_index_on_leader_and_follower() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.tick(2)
    leader.propose(b"x")
    c.settle()
    leader.read_index(b"r1")
    c.nodes[2].read_index(b"r2")
    c.settle()
    assert c.read_states[1] == [(leader.commit, b"r1")]
    assert c.read_states[2] == [(leader.commit, b"r2")]


# -- wire format -------------------------------------------------------------------------------
WIRE_SAMPLES = [
    Message(MsgType.PRE_VOTE, 1, 2, 5, log_term=4, index=10),
    Message(MsgType.PRE_VOTE_RESP, 2, 1, 5, reject=True),
    Message(MsgType.VOTE, 1, 2, 5, log_term=4, index=10),
    Message(MsgType.VOTE_RESP, 2, 1, 5),
    Message(MsgType.APPEND, 1, 2, 5, log_term=4, index=10,
            entries=(Entry(11, 4, b"a"), Entry(12, 5, b"")), commit=9),
    Message(MsgType.APPEND_RESP, 2, 1, 5, index=10, reject=True, reject_hint=7, log_term=3),
    Message(MsgType.HEARTBEAT, 1, 2, 5, commit=9, context=b"ctx", sent_tick=77),
    Message(MsgType.HEARTBEAT_RESP, 2, 1, 5, context=b"ctx", sent_tick=77),
    Message(MsgType.SNAPSHOT, 1, 2, 5, snapshot=Snapshot(100, 4, b"\x00state")),
    Message(MsgType.READ_INDEX, 2, 1, 5, context=b"r"),
    Message(MsgType.READ_INDEX_RESP, 1, 2, 5, index=12, context=b"r"),
]


@pytest.mark.parametrize("msg", WIRE_SAMPLES, ids=lambda m: m.type.name)
def test_wire_round_trip(msg: Message) -> None:
    frame = msgpack.packb(msg.to_wire(), use_bin_type=True)
    back = Message.from_wire(msgpack.unpackb(frame, raw=False))
    assert back == msg and isinstance(back.type, MsgType)


def _wire(**changes: object) -> list[object]:
    w = WIRE_SAMPLES[4].to_wire()
    names = ["type", "frm", "to", "term", "log_term", "index", "entries", "commit", "reject",
             "reject_hint", "snapshot", "context", "sent_tick"]
    for k, v in changes.items():
        w[names.index(k)] = v
    return w


@pytest.mark.parametrize("obj", [
    None, 5, b"x", {}, [], [1, 2, 3],
    _wire()[:-1],
    _wire() + [0],
    _wire(type=99),
    _wire(type=0),
    _wire(type="APPEND"),
    _wire(frm=-1),
    _wire(frm=0),
    _wire(to=True),
    _wire(term=1 << 64),
    _wire(term=1.5),
    _wire(index="10"),
    _wire(reject=1),
    _wire(context="text"),
    _wire(sent_tick=-1),
    _wire(entries="nope"),
    _wire(entries=[[11, 4]]),
    _wire(entries=[[11, 4, "str"]]),
    _wire(entries=[[12, 4, b"gap"]]),
    _wire(entries=[[11, 9, b"future term"]]),
    _wire(entries=[[11, 5, b""], [12, 4, b"term goes back"]]),
    _wire(snapshot=[1, 1, b""]),
    _wire(type=int(MsgType.HEARTBEAT)),  # entries on a heartbeat
    _wire(type=int(MsgType.SNAPSHOT), entries=[]),  # snapshot missing
    _wire(type=int(MsgType.SNAPSHOT), entries=[], snapshot=[0, 1, b""]),
    _wire(type=int(MsgType.SNAPSHOT), entries=[], snapshot=[5, 1, "s"]),
])
def test_wire_rejects_malformed_input(obj: object) -> None:
    with pytest.raises(ValueError):
        Message.from_wire(obj)


def test_wire_fuzz_never_raises_anything_but_value_error() -> None:
    rng = random.Random(7)
    pool: list[object] = [0, 1, -1, 2**64, True, None, b"", b"x", "s", 1.0, [], [1, 1, b""]]
    for _ in range(3000):
        w: list[object] = list(rng.choice(WIRE_SAMPLES).to_wire())
        for _ in range(rng.randint(1, 3)):
            w[rng.randrange(len(w))] = rng.choice(pool)
        try:
            Message.from_wire(w)
        except ValueError:
            pass


def test_follower_commits_only_what_the_append_vouched_for() -> None:
    # Entries 3..4 here are leftovers of a dead term; the leader's commit (4) refers to its own
    # entries 3..4, which this append has not delivered yet.
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(1, 0, 1),
                    entries=[Entry(1, 1, b""), Entry(2, 1, b"a"), Entry(3, 1, b"x"),
                             Entry(4, 1, b"y")], rng=random.Random(0))
    node.step(Message(MsgType.APPEND, 1, 2, 2, log_term=1, index=1,
                      entries=(Entry(2, 1, b"a"),), commit=4))
    assert node.commit == 2
    rd = node.ready()
    assert rd.messages[0].index == 2 and not rd.messages[0].reject


def _make_leader_by_hand(node: RaftNode) -> None:
    """Run `node` through pre-vote and vote with member 2 granting both."""
    while node.role == Role.FOLLOWER:
        node.tick()
    node.step(Message(MsgType.PRE_VOTE_RESP, 2, node.id, node.term + 1))
    assert node.role == Role.CANDIDATE
    node.step(Message(MsgType.VOTE_RESP, 2, node.id, node.term))
    assert node.is_leader


def test_replicas_of_an_older_term_entry_do_not_commit_it() -> None:
    # Raft §5.4.2 / figure 8: a majority holding entry 2 of term 1 is not enough for a term-3
    # leader to call it committed; only its own entry 3 of term 3 commits 2 along with it.
    node = RaftNode(1, [1, 2, 3], hard_state=HardState(2, 1, 1),
                    entries=[Entry(1, 1, b""), Entry(2, 1, b"old")], rng=random.Random(0))
    _make_leader_by_hand(node)
    assert node.term == 3 and node.entries(3, 4) == [Entry(3, 3, b"")]
    node.advance(node.ready())  # our own no-op is durable
    node.step(Message(MsgType.APPEND_RESP, 2, 1, 3, index=2))
    assert node.commit == 1
    node.step(Message(MsgType.APPEND_RESP, 2, 1, 3, index=3))
    assert node.commit == 3


def test_vote_survives_restart() -> None:
    node = RaftNode(2, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    node.step(Message(MsgType.VOTE, 1, 2, 1))
    rd = node.ready()
    assert rd.hard_state is not None
    again = RaftNode(2, [1, 2, 3], hard_state=rd.hard_state, rng=random.Random(0))
    again.step(Message(MsgType.VOTE, 3, 2, 1))
    assert again.ready().messages[0].reject


def test_read_index_waits_for_quorum_and_for_own_term_commit() -> None:
    node = RaftNode(1, [1, 2, 3], hard_state=HardState(2, 1, 1),
                    entries=[Entry(1, 1, b""), Entry(2, 1, b"old")], rng=random.Random(0))
    _make_leader_by_hand(node)
    node.advance(node.ready())
    node.read_index(b"early")
    # Nothing of our term is committed yet: our commit index may be behind the real one.
    rd = node.ready()
    assert not rd.read_states and not [m for m in rd.messages if m.context == b"early"]
    node.advance(rd)
    node.step(Message(MsgType.APPEND_RESP, 2, 1, 3, index=3))
    rd = node.ready()
    beats = [m for m in rd.messages if m.type == MsgType.HEARTBEAT and m.context == b"early"]
    assert len(beats) == 2 and not rd.read_states  # leadership not confirmed yet
    node.advance(rd)
    node.step(Message(MsgType.HEARTBEAT_RESP, 3, 1, 3, context=b"early"))
    rd = node.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(3, b"early")]


# -- leader lease (what session expiry relies on) ---------------------------------------------
def test_lease_needs_a_majority_that_heard_us_recently() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.tick(1)
    assert lead.has_lease()
    assert not c.nodes[2].has_lease()  # followers never hold one
    c.cut = {2, 3}
    # The last answered message was sent at most election_ticks - 2 ticks ago: still ours.
    c.tick(lead.election_ticks - 2, only=[1])
    assert lead.has_lease()
    c.tick(1, only=[1])
    assert not lead.has_lease() and lead.is_leader  # not deposed yet, but proves nothing


def test_one_member_answering_is_enough_in_three() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.cut = {3}
    c.tick(3 * lead.election_ticks)
    assert lead.is_leader and lead.has_lease()


def test_time_that_passed_in_one_call_ends_the_lease_and_the_leadership() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.tick(1)
    before = lead.ticks
    lead.tick(1000)  # back from a long pause: the clock jumps, the work is bounded
    assert lead.ticks == before + 1000
    assert not lead.has_lease()
    assert not lead.is_leader  # check-quorum: nobody answered within an election timeout


def test_an_answer_cannot_stretch_the_lease_into_the_future() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.cut = {2, 3}
    c.tick(lead.election_ticks, only=[1])
    assert not lead.has_lease()
    forged = Message(MsgType.HEARTBEAT_RESP, 2, 1, lead.term, sent_tick=lead.ticks + 10_000)
    lead.step(forged)
    assert lead.has_lease()  # counted as heard now, no later
    c.tick(lead.election_ticks - 1, only=[1])
    assert not lead.has_lease()


def test_a_follower_learns_the_leaders_tick() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.tick(2)
    assert c.nodes[2].leader_tick == lead.ticks


def test_the_lease_drops_a_member_whose_connection_died() -> None:
    c = Cluster(3)
    lead = c.elect(1)
    c.tick(1)
    c.cut = {3}
    c.tick(lead.election_ticks)  # member 3's answers are too old to count by now
    assert lead.has_lease()
    lead.peer_lost(2)  # member 2 may now campaign early (leader_lost on its side)
    assert not lead.has_lease()


def test_single_member_always_holds_its_lease() -> None:
    node = single()
    node.tick(500)
    assert node.has_lease()


# -- learners (ZooKeeper's observers) ------------------------------------------------------------
def test_learner_receives_the_log_but_never_campaigns_or_votes() -> None:
    c = Cluster(3, learners=1)
    learner = c.nodes[4]
    assert learner.is_learner and learner.learners == [4]
    c.tick(60, only=[4])  # many election timeouts: a learner never campaigns
    assert learner.role == Role.FOLLOWER and learner.term == 0
    assert not any(m.frm == 4 and m.type in (MsgType.VOTE, MsgType.PRE_VOTE) for m in c.sent)
    leader = c.elect(1)
    assert not any(m.to == 4 and m.type in (MsgType.VOTE, MsgType.PRE_VOTE) for m in c.sent)
    leader.propose(b"x")
    c.settle()
    assert c.data(4) == [b"x"] and learner.leader_id == 1
    assert 4 in leader.status()["progress"] and leader.status()["progress"][4]["match"] >= 2
    # A vote request that reaches a learner anyway is ignored: no answer, term unchanged.
    term = learner.term
    learner.step(Message(MsgType.VOTE, 2, 4, term + 5, log_term=9, index=99))
    learner.step(Message(MsgType.PRE_VOTE, 3, 4, term + 5, log_term=9, index=99))
    assert learner.term == term == leader.term
    assert not learner.has_ready()


def test_learners_never_count_towards_commit_lease_or_check_quorum() -> None:
    c = Cluster(3, learners=2)
    leader = c.elect(1)
    c.cut = {2, 3}  # only the learners still hear the leader
    before = leader.commit
    leader.propose(b"lost?")
    c.settle()
    assert leader.commit == before  # two learners acked, no voter did: not committed
    assert c.data(4) == [] and c.data(5) == []
    for _ in range(leader.election_ticks):
        leader.tick()
        c.settle()
    assert not leader.has_lease()
    c.tick(leader.election_ticks * 2, only=[1])
    assert not leader.is_leader  # check-quorum: learners' answers do not keep it in office


def test_read_index_and_lease_need_voters_not_learners() -> None:
    node = RaftNode(1, [1, 2, 3], learners=[4, 5], hard_state=HardState(), rng=random.Random(0))
    _make_leader_by_hand(node)
    rd = node.ready()
    assert {m.to for m in rd.messages if m.type == MsgType.APPEND} == {2, 3, 4, 5}
    node.advance(rd)
    node.step(Message(MsgType.APPEND_RESP, 2, 1, node.term, index=1, sent_tick=node.ticks))
    node.advance(node.ready())
    assert node.commit == 1
    node.read_index(b"r")
    rd = node.ready()
    node.advance(rd)
    for learner in (4, 5):  # both learners confirm: still no majority of voters
        node.step(Message(MsgType.HEARTBEAT_RESP, learner, 1, node.term, context=b"r",
                          sent_tick=node.ticks))
    rd = node.ready()
    assert not rd.read_states
    node.advance(rd)
    node.step(Message(MsgType.HEARTBEAT_RESP, 3, 1, node.term, context=b"r"))
    rd = node.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(1, b"r")]
    node.advance(rd)
    # The lease likewise: learners hearing us recently prove nothing about the voters.
    for _ in range(node.election_ticks):
        node.tick()
        for learner in (4, 5):
            node.step(Message(MsgType.HEARTBEAT_RESP, learner, 1, node.term,
                              sent_tick=node.ticks))
    assert not node.has_lease()


def test_learner_reads_through_the_leader_and_two_voters_commit_without_it() -> None:
    c = Cluster(3, learners=1)
    leader = c.elect(1)
    c.cut = {4, 3}
    leader.propose(b"b")
    c.settle()
    assert c.data(2) == [b"b"] and c.data(4) == []
    c.cut = set()
    c.tick(2)
    assert c.data(4) == [b"b"]
    c.nodes[4].read_index(b"ctx")
    c.settle()
    assert c.applied[4]  # answered via READ_INDEX_RESP; nothing hangs


def test_learner_ids_must_be_distinct_from_voters() -> None:
    with pytest.raises(ValueError):
        RaftNode(1, [1, 2], learners=[2], hard_state=HardState(), rng=random.Random(0))
    with pytest.raises(ValueError):
        RaftNode(4, [1, 2, 3], hard_state=HardState(), rng=random.Random(0))
    node = RaftNode(4, [1, 2, 3], learners=[4], hard_state=HardState(), rng=random.Random(0))
    assert node.is_learner and not node.is_leader


def test_without_a_leader_a_member_retries_sooner_than_the_election_timeout() -> None:
    """retry_ticks (the server: one to two tickTimes) bounds how long a member that knows no
    leader waits before campaigning (again), e.g. after a split vote; a follower that knows
    its leader still gives it the whole election timeout (syncLimit ticks)."""
    def pre_votes(node: RaftNode) -> int:
        rd = node.ready()
        node.advance(rd)
        return sum(1 for m in rd.messages if m.type == MsgType.PRE_VOTE)

    node = RaftNode(2, [1, 2, 3], hard_state=HardState(), rng=random.Random(3),
                    election_ticks=50, heartbeat_ticks=5, retry_ticks=10)
    for attempt in range(3):  # nobody answers: every retry comes within 2 * retry_ticks
        for tick in range(20):
            node.tick()
            if pre_votes(node):
                break
        else:
            raise AssertionError(f"attempt {attempt}: no campaign within 20 ticks")
    follower = RaftNode(2, [1, 2, 3], hard_state=HardState(term=1), rng=random.Random(3),
                        election_ticks=50, heartbeat_ticks=5, retry_ticks=10)
    follower.step(Message(MsgType.HEARTBEAT, 1, 2, 1))
    pre_votes(follower)
    for _ in range(49):
        follower.tick()
        assert not pre_votes(follower)
    follower.leader_lost(1)  # its connection closed: it campaigns within lost_leader_ticks
    for _ in range(follower.lost_leader_ticks):
        follower.tick()
        if pre_votes(follower):
            break
    else:
        raise AssertionError("no campaign after the leader's connection was lost")
