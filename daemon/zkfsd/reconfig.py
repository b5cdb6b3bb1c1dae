"""Dynamic reconfiguration: ZooKeeper 3.5+'s membership format and the `reconfig` request.

The membership of an ensemble is ZooKeeper's dynamic configuration: `server.N=host:peerport:
electionport:role;clientaddress:clientport` lines, a version (the zxid of the reconfig that made
it, 0 for the static zoo.cfg lines), and is what `/zookeeper/config` holds:

    server.1=127.0.0.1:2888:3888:participant;0.0.0.0:2181
    version=100000003

Where it lives: the static `server.N` lines of zoo.cfg are the initial membership; every change
is a RECONFIG transaction in the replicated log, which sets /zookeeper/config in the tree, so the
current membership is in the log and in every snapshot (there is no zoo.cfg.dynamic file to keep
in step). The consensus core reads a membership out of a log entry with `entry_conf` (Raft:
a configuration takes effect as soon as it is in a member's log) and out of a snapshot with
`snapshot_conf`.

Changes are single-server (Raft §4.1 of Ongaro's thesis): a reconfig may add, remove or re-role
at most one voting member; observers (Raft learners) never count towards a quorum and may change
freely. A non-incremental request (`newMembers`) that changes more than one voter is refused with
BadArguments; do it as a sequence of requests. Single-server changes need no joint configuration:
any majority of the old voters and any majority of the new voters overlap, so two leaders cannot
be elected in one term across a change.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from zkfs.constants import Err, Perm

from zkfsd import txns
from zkfsd.consensus import Entry, make_zxid
from zkfsd.raft import ConfState
from zkfsd.tree import check_acl, config_node_data

CONFIG_PATH = "/zookeeper/config"
_SERVER_KEY = re.compile(r"server\.(\d+)\Z")


class ReconfigError(Exception):
    """A reconfig request answered with this ZooKeeper error code."""

    def __init__(self, err: Err, reason: str) -> None:
        super().__init__(reason)
        self.err = err


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One `server.N` line: where member N listens and whether it votes."""

    sid: int
    host: str
    peer_port: int
    election_port: int
    observer: bool = False
    client_host: str | None = None
    client_port: int | None = None

    def line(self) -> str:
        """ZooKeeper's QuorumServer.toString, as /zookeeper/config shows it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = (f"server.{self.sid}={host}:{self.peer_port}:{self.election_port}:"
                f"{'observer' if self.observer else 'participant'}")
        if self.client_port is not None:
            client_host = self.client_host or "0.0.0.0"
            client_host = f"[{client_host}]" if ":" in client_host else client_host
            text += f";{client_host}:{self.client_port}"
        return text

    def same_address(self, other: ServerSpec) -> bool:
        return (self.host, self.peer_port) == (other.host, other.peer_port) or \
            (self.host, self.election_port) == (other.host, other.election_port)


def _port(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ReconfigError(Err.BAD_ARGUMENTS, f"{what}: bad port {text!r}")
    return int(text)


def _host_port(text: str, what: str) -> tuple[str, list[str]]:
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ReconfigError(Err.BAD_ARGUMENTS, f"{what}: unterminated '['")
        return text[1:close], [p for p in text[close + 1:].split(":")[1:]]
    host, *rest = text.split(":")
    return host, rest


def parse_server(key: str, value: str) -> ServerSpec:
    """`server.N` = `host:peerport:electionport[:role][;[clientaddress:]clientport]`.

    As in ZooKeeper's reconfig, all three ports are required (the client port too); anything
    else is BadArguments."""
    m = _SERVER_KEY.match(key.strip())
    if m is None:
        raise ReconfigError(Err.BAD_ARGUMENTS, f"expected server.N, got {key!r}")
    sid = int(m.group(1))
    if sid <= 0:
        raise ReconfigError(Err.BAD_ARGUMENTS, f"{key}: server ids are positive")
    addr, sep, client = value.partition(";")
    host, rest = _host_port(addr, key)
    observer = False
    if rest and rest[-1].strip().lower() in ("participant", "observer"):
        observer = rest.pop().strip().lower() == "observer"
    if len(rest) != 2 or not host:
        raise ReconfigError(Err.BAD_ARGUMENTS,
                            f"{key}: expected host:port:port[:role];[address:]port")
    client_host, client_port = None, None
    if sep and client.strip():
        chost, crest = _host_port(client, key)
        if not crest:  # just a port
            client_host, client_port = "0.0.0.0", _port(chost, key)
        elif len(crest) == 1:
            client_host, client_port = chost or "0.0.0.0", _port(crest[0], key)
        else:
            raise ReconfigError(Err.BAD_ARGUMENTS, f"{key}: bad client address {client!r}")
    return ServerSpec(sid, host.strip(), _port(rest[0], key), _port(rest[1], key), observer,
                      client_host, client_port)


@dataclass(frozen=True, slots=True)
class Membership:
    """An ensemble's membership and its version (ZooKeeper's QuorumVerifier)."""

    servers: tuple[ServerSpec, ...]
    version: int = 0

    @property
    def voters(self) -> tuple[int, ...]:
        return tuple(sorted(s.sid for s in self.servers if not s.observer))

    @property
    def observers(self) -> tuple[int, ...]:
        return tuple(sorted(s.sid for s in self.servers if s.observer))

    @property
    def conf(self) -> ConfState:
        return ConfState(self.voters, self.observers)

    def get(self, sid: int) -> ServerSpec | None:
        return next((s for s in self.servers if s.sid == sid), None)

    def lines(self) -> list[str]:
        return [s.line() for s in sorted(self.servers, key=lambda s: s.sid)]

    def config_data(self) -> bytes:
        """/zookeeper/config's content (QuorumMaj.toString)."""
        return config_node_data(self.lines(), self.version)


def parse_config_data(data: bytes | None) -> Membership | None:
    """The membership in /zookeeper/config's data; None when it holds none (standalone)."""
    if not data:
        return None
    servers, version = [], 0
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key.strip() == "version":
            version = int(value.strip(), 16)
        else:
            servers.append(parse_server(key, value))
    return Membership(tuple(servers), version) if servers else None


def from_static(servers: dict[int, tuple[str, int, int]], observers: set[int],
                client_addresses: dict[int, tuple[str, int]]) -> Membership:
    """The initial membership: zoo.cfg's server.N lines, version 0."""
    specs = []
    for sid, (host, peer, election) in sorted(servers.items()):
        chost, cport = client_addresses.get(sid, (None, None))
        specs.append(ServerSpec(sid, host, peer, election, sid in observers, chost, cport))
    return Membership(tuple(specs), 0)


# -- the request --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReconfigPlan:
    """What a reconfig request asks for, validated as far as it can be without the leader."""

    joining: tuple[ServerSpec, ...] = ()
    leaving: tuple[int, ...] = ()
    new_members: tuple[ServerSpec, ...] | None = None
    from_config: int = -1

    def to_txn(self, members: Membership | None = None, err: Err | None = None) -> txns.Reconfig:
        """The transaction body: this request, and the leader's outcome if decided."""
        return txns.Reconfig(tuple(s.line() for s in self.joining), self.leaving,
                             None if self.new_members is None
                             else tuple(s.line() for s in self.new_members),
                             self.from_config,
                             None if members is None else tuple(members.lines()),
                             None if err is None else int(err))

    @classmethod
    def from_txn(cls, body: txns.Reconfig) -> ReconfigPlan:
        """The request a (forwarded, so untrusted) transaction carries; ReconfigError if a
        server line does not parse."""
        def specs(lines: tuple[str, ...]) -> tuple[ServerSpec, ...]:
            return tuple(parse_server(*line.split("=", 1)) for line in lines)
        new = body.new_members
        return cls(specs(body.joining), body.leaving, None if new is None else specs(new),
                   body.from_config)


def _split_specs(text: str, separators: str) -> list[str]:
    return [p.strip() for p in re.split(f"[{separators}]", text) if p.strip()]


def parse_request(joining: str | None, leaving: str | None, new_members: str | None,
                  cur_config_id: int) -> ReconfigPlan:
    """A ReconfigRequest's strings, as PrepRequestProcessor reads them (BadArguments else)."""
    def spec(item: str) -> ServerSpec:
        key, sep, value = item.partition("=")
        if not sep:
            raise ReconfigError(Err.BAD_ARGUMENTS, "Wrong format of server string")
        return parse_server(key, value)

    if new_members is not None:
        # Non-incremental: newline or comma separated, java.util.Properties style.
        members = [spec(item) for item in _split_specs(new_members, ",\n")]
        ids = [s.sid for s in members]
        if len(set(ids)) != len(ids):
            raise ReconfigError(Err.BAD_ARGUMENTS, "a server is listed twice")
        return ReconfigPlan(new_members=tuple(members), from_config=cur_config_id)
    joins = tuple(spec(item) for item in _split_specs(joining or "", ","))
    if any(s.client_port is None for s in joins):
        raise ReconfigError(Err.BAD_ARGUMENTS, "Wrong format of server string - each server "
                            "should have 3 ports specified")
    try:
        leaves = tuple(int(x) for x in _split_specs(leaving or "", ","))
    except ValueError:
        raise ReconfigError(Err.BAD_ARGUMENTS, f"leaving: expected server ids, got {leaving!r}")
    return ReconfigPlan(joins, leaves, None, cur_config_id)


def next_membership(current: Membership, plan: ReconfigPlan) -> Membership:
    """The membership the plan asks for, checked as ZooKeeper's leader checks it, plus zkfsd's
    rule of at most one voter changed per reconfig. Its version is set when it is logged."""
    if plan.from_config != -1 and plan.from_config != current.version:
        raise ReconfigError(Err.BAD_VERSION, f"reconfig from version {plan.from_config:x}: the "
                            f"current version is {current.version:x}")
    if plan.new_members is not None:
        servers = {s.sid: s for s in plan.new_members}
    else:
        servers = {s.sid: s for s in current.servers}
        for sid in plan.leaving:
            servers.pop(sid, None)
        for spec in plan.joining:
            for other in servers.values():
                if other.sid != spec.sid and spec.same_address(other):
                    raise ReconfigError(Err.BAD_ARGUMENTS,
                                        f"server.{spec.sid} uses an address of server.{other.sid}")
            servers[spec.sid] = spec
    new = Membership(tuple(servers[sid] for sid in sorted(servers)), current.version)
    # ZooKeeper with standaloneEnabled (its default) wants at least two voters.
    if len(new.voters) < 2:
        raise ReconfigError(Err.BAD_ARGUMENTS,
                            "Reconfig failed - new configuration must include at least 2 followers")
    changed = set(current.voters) ^ set(new.voters)
    if len(changed) > 1:
        raise ReconfigError(Err.BAD_ARGUMENTS,
                            f"zkfsd changes one voting member per reconfig (this one changes "
                            f"{sorted(changed)}); do it as several reconfigs")
    for spec in new.servers:
        old = current.get(spec.sid)
        if (old is not None and not old.observer and not spec.observer
                and (old.host, old.peer_port) != (spec.host, spec.peer_port)
                and spec.sid not in changed):
            # Moving a voter is removing it and adding it back: two voter changes.
            raise ReconfigError(Err.BAD_ARGUMENTS,
                                f"server.{spec.sid} changes its peer address: remove it first")
    return new


def reconfig_txn(plan: ReconfigPlan, session: int, auth: list[tuple[str, str]]) -> txns.Txn:
    """The RECONFIG transaction of a client's request, for the leader to decide."""
    return txns.Txn(plan.to_txn(), session, tuple((s, i) for s, i in auth))


def request_txn(enabled: bool, ensemble: bool, record: Any, session: int,
                auth: list[tuple[str, str]]) -> txns.Txn:
    """The transaction for a client's reconfig request, on whichever process took it (the
    member or one of its client workers); ReconfigError for what can be refused there
    (reconfigEnabled off, a standalone server, a malformed request)."""
    if not enabled:
        raise ReconfigError(Err.RECONFIG_DISABLED, "reconfigEnabled is false")
    if not ensemble:
        # ZooKeeper's standalone server cannot reconfigure either.
        raise ReconfigError(Err.UNIMPLEMENTED, "standalone")
    plan = parse_request(record.joining_servers, record.leaving_servers,
                         record.new_members, record.cur_config_id)
    return reconfig_txn(plan, session, auth)


def txn_membership(body: txns.Reconfig, zxid: int) -> Membership | None:
    """The membership a logged RECONFIG transaction (at `zxid`) set, if it set one."""
    if body.members is None:
        return None
    return Membership(tuple(parse_server(*line.split("=", 1)) for line in body.members), zxid)


def entry_membership(entry: Entry) -> Membership | None:
    """The membership a log entry's RECONFIG transaction sets, if it is one (cheap otherwise)."""
    data = entry.data
    if not data or not txns.may_be_reconfig(data):
        return None
    try:
        txn = txns.decode(data)
        if not isinstance(txn.body, txns.Reconfig):
            return None
        return txn_membership(txn.body, make_zxid(entry.term, entry.index))
    except (ReconfigError, txns.TxnDecodeError):
        return None  # not ours to judge; the tree reports malformed entries


def entry_conf(data: bytes) -> ConfState | None:
    """For the consensus core: the voters and learners a log entry switches to, if any."""
    members = entry_membership(Entry(0, 0, data))
    return members.conf if members is not None else None


def snapshot_membership(data: bytes) -> Membership | None:
    """The membership recorded in a tree snapshot's /zookeeper/config (None: static config)."""
    state = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    for row in state.get("nodes", ()):
        if row[0] == CONFIG_PATH:
            # mzxid 0: never reconfigured; the static lines (which the caller has) rule.
            return parse_config_data(row[1]) if row[4] else None
    return None


def snapshot_conf(data: bytes) -> ConfState | None:
    members = snapshot_membership(data)
    return members.conf if members is not None else None


class Memberships:
    """A member's knowledge of memberships: the static one, every one seen in its log (by
    index, so the one the consensus core has in force can be looked up with its addresses),
    and every server ever named, for the peer transport's addresses."""

    def __init__(self, static: Membership | None) -> None:
        self.static = static
        self.by_index: dict[int, Membership] = {}
        self.known: dict[int, ServerSpec] = {s.sid: s for s in static.servers} if static else {}
        self.busy = False  # the leader is working on a reconfig (catching a new voter up)

    def snapshot_conf(self, data: bytes) -> ConfState | None:
        members = snapshot_membership(data) or self.static
        if members is not None:
            self.learn(members.servers)
        return members.conf if members is not None else None

    def learn(self, specs: tuple[ServerSpec, ...] | list[ServerSpec]) -> list[ServerSpec]:
        """Remember addresses; returns the specs that are new or changed."""
        fresh = [s for s in specs if self.known.get(s.sid) != s]
        self.known.update((s.sid, s) for s in fresh)
        return fresh

    def note_entries(self, entries: Any) -> list[ServerSpec]:
        fresh: list[ServerSpec] = []
        for e in entries:
            members = entry_membership(e)
            if members is not None:
                self.by_index[e.index] = members
                fresh += self.learn(members.servers)
        return fresh

    def current(self, conf_index: int, tree_config: bytes | None) -> Membership | None:
        """The membership in force: logged at `conf_index`, or else the one the tree holds
        (from a snapshot), or else the static one."""
        members = self.by_index.get(conf_index)
        if members is None:
            members = parse_config_data(tree_config) or self.static
        return members

    def prune(self, commit: int) -> None:
        """Forget logged memberships older than the newest committed one (no truncation can
        bring those back)."""
        committed = [i for i in self.by_index if i <= commit]
        if committed:
            newest = max(committed)
            for index in committed:
                if index < newest:
                    del self.by_index[index]


# -- the leader's part --------------------------------------------------------------------------

def _synced(core: Any, voter: int, target: int) -> bool:
    """`voter` answered the leader lately and holds its log up to `target`."""
    match = core.match_of(voter)
    return match is not None and match >= target


async def lead_reconfig(server: Any, txn: txns.Txn, catch_up_seconds: float) -> None:
    """On the leader: decide a forwarded or local reconfig request and log the outcome (the new
    membership, or the error) with the request's origin, so the asking member answers its
    client when it applies it. Mirrors PrepRequestProcessor's checks and their order."""
    import trio  # the rest of this module is sans-IO

    core = server.core
    plan = ReconfigPlan()
    members = None
    joining: int | None = None
    try:
        assert isinstance(txn.body, txns.Reconfig)
        try:
            plan = ReconfigPlan.from_txn(txn.body)
        except ReconfigError as exc:
            # Another member forwarded it; a bad one must not take the leader down.
            raise ReconfigError(Err.BAD_ARGUMENTS, f"malformed reconfig request: {exc}")
        if server.memberships.busy or core.conf_change_pending:
            raise ReconfigError(Err.RECONFIG_IN_PROGRESS, "a reconfig is in progress")
        current = server.current_membership()
        new = next_membership(current, plan)
        server.memberships.busy = True
        # What the leader had when the request came: the members that count must hold it.
        target = core.last_index
        added = set(new.voters) - set(current.voters)
        if added:
            # Raft's catch-up round: the new voter gets the log as a learner first, so the
            # new majority is not left waiting for it (and a dead one is found out now).
            joining = added.pop()
            server.learn_servers([new.get(joining)])
            core.start_catch_up(joining)
            server.wakeup()

        def ready() -> bool:
            quorum = sum(_synced(core, v, target) for v in new.voters) > len(new.voters) // 2
            return quorum and (joining is None or _synced(core, joining, target))

        # A joiner that never answers within a second is not there (ZooKeeper decides at once;
        # the client's connection waits meanwhile, so a dead server must not take long).
        started = trio.current_time()
        with trio.move_on_after(catch_up_seconds):
            while core.is_leader and not ready():
                if (joining is not None and core.match_of(joining) is None
                        and trio.current_time() - started > 1.0):
                    break
                await trio.sleep(0.02)
        if not core.is_leader:
            return  # the asking member fails the request when it learns of the new leader
        if sum(_synced(core, v, target) for v in new.voters) < len(new.voters) // 2 + 1:
            raise ReconfigError(Err.NEW_CONFIG_NO_QUORUM, "Reconfig failed - there must be a "
                                "connected and synced quorum in new configuration")
        if joining is not None and not _synced(core, joining, target):
            # zkfs: ZooKeeper would take a voter that is not up yet if the others make a
            # quorum. Here it must have caught up: a voter that joins empty does not vote
            # until it has the log, so it would leave the ensemble one failure from a stall.
            raise ReconfigError(Err.NEW_CONFIG_NO_QUORUM, f"server.{joining} did not catch up "
                                f"with the leader within {catch_up_seconds:.1f}s")
        node = server.tree.get(CONFIG_PATH)
        if not check_acl(node.acl, Perm.WRITE, list(txn.auth)):
            raise ReconfigError(Err.NO_AUTH, "no write permission on /zookeeper/config")
        members = new
    except ReconfigError as exc:
        err: Err | None = exc.err
        server.log_reconfig(f"reconfig refused ({exc.err.name}): {exc}")
    else:
        err = None
    finally:
        server.memberships.busy = False
    # The request's origin stays: the asking member answers its client when it applies this.
    server.submit_decided(dataclasses.replace(txn, body=plan.to_txn(members, err)))
    if joining is not None:
        core.stop_catch_up(joining)  # a no-op once the logged change made it a member
