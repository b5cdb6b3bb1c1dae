"""Differential tests: the same client steps against zkfsd and against Apache ZooKeeper 3.8.

Each scenario is a function of a `Target` (one server) that returns a *trace*: a list of
normalized step results. It runs once against a fresh zkfsd and once against the session-scoped
Apache ZooKeeper (inside a unique top-level path, so tests do not see each other there), both
runs in parallel, and the two traces must be equal.

What a trace holds: return values, exception class names (kazoo's exception classes name the
ZooKeeper error code; raw requests record the code's name), sorted children lists, watch events
as (type, path) in arrival order, and the parts of a Stat that do not depend on the clock or on
zxid numbering: version, cversion, aversion, dataLength, numChildren, the kind of
ephemeralOwner (none / which session; ZooKeeper 3.8 reports 0 for container and TTL nodes), and
zxid *relations* (czxid == mzxid, pzxid >= czxid, ...). Paths are written relative to the
scenario's base path.

kazoo 2.11 has no API for TTL or container nodes, addWatch, removeWatches/checkWatches,
getAllChildrenNumber, getEphemerals or whoAmI; those, and server-side path validation (kazoo
never sends a path it would refuse), go through `RawSession`, a minimal blocking client built on
zkfs.jute.

Intentional differences, tested on zkfsd's side only (see the tests named *_zkfsd_only):
- Data size: zkfsd accepts data up to exactly 1 MiB (1048576 bytes) and answers a larger
  create/setData with BadArguments, keeping the connection. ZooKeeper has no data limit of its
  own: it refuses any request frame longer than jute.maxbuffer (0xfffff by default, one byte
  short of 1 MiB) by closing the connection, so kazoo sees ConnectionLoss and retries.
- A top-level check (op 13, outside a multi): zkfsd answers it as ZooKeeper 3.9 does
  (OK / BadVersion / NoNode); ZooKeeper 3.8 closes the connection.
- An unknown op code: both answer Unimplemented, then ZooKeeper closes the connection while
  zkfsd keeps it (daemon/zkfsd/wire.py: "an unknown op code with a well-formed frame is
  answered and the connection lives"). Only the answer is compared.
- checkWatches/removeWatches with a one-segment relative path ("a"): ZooKeeper 3.8 fails with
  StringIndexOutOfBoundsException and answers MarshallingError; zkfsd answers NoWatcher. Those
  requests are left out of the comparison.
- Sessions: zkfsd (tick 200 ms in the tests) allows 400..4000 ms, the reference 4000..40000 ms.
  kazoo clients ask for 10 s (zkfsd grants 4 s; traces do not show it); the expiry scenario
  asks for 4 s, which both grant, and compares the negotiated value.

- removeWatches of type DATA or CHILDREN on a persistent watch: ZooKeeper removes only that half
  of it; zkfsd removes the whole persistent watch (checkWatches answers the same on both).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.protocol.states import Callback, ZnodeStat
from kazoo.security import ACL, Id, make_digest_acl

from helpers import ApacheZooKeeper, ZkfsdProcess, kazoo_client
from zkfs import jute
from zkfs.constants import (CONTAINER_EPHEMERAL_OWNER, MAX_DATA, MAX_TTL,
                            TTL_EPHEMERAL_OWNER_MASK, CreateMode, Err, EventType, OpCode, Perm,
                            WatcherType, WatchMode, Xid)

OPEN_ACL = [jute.ACL(int(Perm.ALL), jute.Id("world", "anyone"))]


# -- a minimal blocking raw client ----------------------------------------------------------------

class ConnectionClosed(Exception):
    """The server closed the connection (recorded as 'closed' in traces)."""


class RawSession:
    """One ZooKeeper session over a plain socket: request/response, events collected in order.

    Nothing pings in the background: a RawSession that is not used goes silent, which is how the
    expiry scenario lets its session time out.
    """

    def __init__(self, hosts: str, timeout_ms: int = 10000) -> None:
        host, port = hosts.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.decoder = jute.FrameDecoder(max_frame=64 * 1024 * 1024)
        self.events: list[tuple[str, str]] = []
        self.xid = 0
        self.closed = False
        self.sock.sendall(jute.encode_connect_request(
            jute.ConnectRequest(0, 0, timeout_ms, 0, bytes(16), False)))
        resp = jute.decode_connect_response(self._frame())
        self.session_id = resp.session_id
        self.timeout_ms = resp.timeout

    def _frame(self) -> bytes:
        while True:
            payload = self.decoder.next_frame()
            if payload is not None:
                return payload
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError) as exc:
                self.closed = True
                raise ConnectionClosed(str(exc)) from None
            if not data:
                self.closed = True
                raise ConnectionClosed("EOF")
            self.decoder.feed(data)

    def call(self, op: int, record: Any) -> tuple[str, Any]:
        """(error code name, reply body); raises ConnectionClosed if the server hangs up."""
        if self.closed:
            raise ConnectionClosed("already closed")
        self.xid += 1
        xid = self.xid
        try:
            self.sock.sendall(jute.encode_request(xid, op, record))
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from None
        while True:
            header, body = jute.decode_reply(self._frame(), op)
            if header.xid == Xid.NOTIFICATION:
                self.events.append((EventType(body.type).name, body.path))
                continue
            if header.xid in (Xid.PING, Xid.AUTH):
                continue
            assert header.xid == xid, (header.xid, xid)
            return Err(header.err).name, body

    def code(self, op: int, record: Any) -> str:
        try:
            return self.call(op, record)[0]
        except ConnectionClosed:
            return "closed"

    def auth(self, scheme: str, credential: bytes) -> None:
        self.sock.sendall(jute.encode_request(Xid.AUTH, OpCode.AUTH,
                                              jute.AuthPacket(0, scheme, credential)))

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(ConnectionClosed, OSError):
                self.call(OpCode.CLOSE_SESSION, None)
        self.closed = True
        self.sock.close()

    def drop(self) -> None:
        """Close the socket without closing the session."""
        self.closed = True
        self.sock.close()


# -- normalization --------------------------------------------------------------------------------

def _owner_kind(owner: int, sessions: dict[int, str]) -> str:
    if owner == 0:
        return "none"
    if owner == CONTAINER_EPHEMERAL_OWNER:
        return "container"
    if owner & TTL_EPHEMERAL_OWNER_MASK == TTL_EPHEMERAL_OWNER_MASK:
        return f"ttl:{owner & MAX_TTL}"
    return f"session:{sessions.get(owner, '?')}"


def norm_stat(stat: Any, sessions: dict[int, str]) -> dict[str, Any]:
    """The clock- and numbering-free part of a kazoo ZnodeStat or a jute.Stat."""
    if isinstance(stat, ZnodeStat):
        czxid, mzxid, pzxid = stat.czxid, stat.mzxid, stat.pzxid
        owner, length = stat.ephemeralOwner, stat.dataLength
        children = stat.numChildren
    else:
        czxid, mzxid, pzxid = stat.czxid, stat.mzxid, stat.pzxid
        owner, length = stat.ephemeral_owner, stat.data_length
        children = stat.num_children
    return {
        "version": stat.version, "cversion": stat.cversion, "aversion": stat.aversion,
        "dataLength": length, "numChildren": children,
        "owner": _owner_kind(owner, sessions),
        "czxid==mzxid": czxid == mzxid, "mzxid>czxid": mzxid > czxid,
        "pzxid==czxid": pzxid == czxid, "pzxid>czxid": pzxid > czxid,
        "pzxid>=mzxid": pzxid >= mzxid, "ctime==mtime": stat.ctime == stat.mtime,
    }


@dataclass
class Target:
    """One server under test, as a scenario sees it."""
    name: str
    hosts: str
    base: str
    sessions: dict[int, str] = field(default_factory=dict)
    trace: list[Any] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # clients ----------------------------------------------------------------------------------
    def kazoo(self, label: str, timeout: float = 10.0) -> KazooClient:
        client = self._stack.enter_context(kazoo_client(self.hosts, timeout=timeout))
        self.sessions[client.client_id[0]] = label
        return client

    def raw(self, label: str, timeout_ms: int = 10000) -> RawSession:
        session = RawSession(self.hosts, timeout_ms)
        self._stack.callback(session.close)
        self.sessions[session.session_id] = label
        return session

    def p(self, rel: str = "") -> str:
        """Absolute path for a path relative to the base ('' is the base itself)."""
        return self.base + rel

    # normalization ----------------------------------------------------------------------------
    def rel(self, path: Any) -> Any:
        if isinstance(path, str) and path.startswith(self.base):
            return "~" + path[len(self.base):]
        return path

    def norm(self, value: Any) -> Any:
        if isinstance(value, (ZnodeStat, jute.Stat)):
            return norm_stat(value, self.sessions)
        if isinstance(value, BaseException):
            return type(value).__name__
        if isinstance(value, str):
            return self.rel(value)
        if isinstance(value, (list, tuple)):
            return [self.norm(v) for v in value]
        if isinstance(value, dict):
            return {k: self.norm(v) for k, v in value.items()}
        if isinstance(value, ACL):
            return (value.perms, value.id.scheme, value.id.id)
        if isinstance(value, jute.ACL):
            return (value.perms, value.id.scheme, value.id.id)
        if isinstance(value, (jute.GetChildrenResponse, jute.GetChildren2Response,
                              jute.GetEphemeralsResponse)):
            # ZooKeeper lists children in HashSet order: compare them sorted.
            fields = {k: self.norm(getattr(value, k)) for k, _ in value.schema()}
            for key in ("children", "ephemerals"):
                if key in fields:
                    fields[key] = sorted(fields[key])
            return fields
        if isinstance(value, jute.WhoAmIResponse):
            # The order of a session's auth ids is not part of the protocol.
            return sorted((i.auth_scheme, i.user) for i in value.client_info)
        if isinstance(value, jute.MultiResponse):
            return [(OpCode(typ).name, Err(err).name, self.norm(body))
                    for typ, err, body in value.results]
        if isinstance(value, jute.Record):
            return {k: self.norm(getattr(value, k)) for k, _ in value.schema()}
        return value

    def step(self, label: str, fn: Callable[[], Any] | None = None, *, value: Any = None) -> Any:
        """Run fn (or take `value`), record its normalized result or exception class name."""
        if fn is None:
            self.trace.append((label, self.norm(value)))
            return value
        try:
            result = fn()
        except (KazooException, ConnectionClosed, TypeError, ValueError) as exc:
            self.trace.append((label, "raises " + type(exc).__name__))
            return exc
        self.trace.append((label, self.norm(result)))
        return result

    def raw_step(self, label: str, session: RawSession, op: int, record: Any) -> Any:
        try:
            err, body = session.call(op, record)
        except ConnectionClosed:
            self.trace.append((label, "closed"))
            return None
        self.trace.append((label, err, self.norm(body)))
        return body

    def close(self) -> None:
        self._stack.close()


class EventLog:
    """Watch events a kazoo client delivered, in order, with a barrier to wait for them."""

    def __init__(self, target: Target, client: KazooClient) -> None:
        self.target = target
        self.client = client
        self.events: list[tuple[str, str, str]] = []

    def watch(self, tag: str = "") -> Callable[[Any], None]:
        def callback(event: Any) -> None:
            self.events.append((tag, event.type, self.target.rel(event.path)))
        return callback

    def settle(self) -> list[Any]:
        """Every event the server sent before now, in order; then forget them.

        A read round trip puts the server's earlier notifications ahead of its reply on the
        wire; a marker queued behind them on kazoo's single callback thread runs after theirs.
        """
        self.client.exists("/")
        done = threading.Event()
        self.client.handler.dispatch_callback(Callback("watch", done.set, ()))
        assert done.wait(10), "kazoo's callback thread is stuck"
        events, self.events = self.events, []
        # kazoo calls every callback registered for one event in a row, in set order: group
        # them so the trace shows each server event once, with the sorted callbacks it hit.
        out: list[Any] = []
        for tag, type_, path in events:
            if out and out[-1][1:] == (type_, path):
                out[-1] = (tuple(sorted((*out[-1][0], tag))), type_, path)
            else:
                out.append(((tag,), type_, path))
        return out

    def record(self, label: str) -> None:
        self.target.trace.append((label, "events", self.settle()))


def settle_raw(target: Target, session: RawSession, label: str) -> None:
    """Record and forget a raw session's events (a round trip first, so all have arrived)."""
    session.call(OpCode.EXISTS, jute.ExistsRequest("/", False))
    target.trace.append((label, "events", [(t, target.rel(p)) for t, p in session.events]))
    session.events.clear()


def _run(scenario: Callable[[Target], None], name: str, hosts: str, base: str) -> list[Any]:
    target = Target(name, hosts, base)
    try:
        with kazoo_client(hosts) as setup:
            setup.create(base, b"")
        scenario(target)
    finally:
        target.close()
    return target.trace


def compare(scenario: Callable[[Target], None], zkfsd: ZkfsdProcess,
            apache_zk: ApacheZooKeeper) -> list[Any]:
    """Run `scenario` against both servers in parallel and assert equal traces."""
    base = f"/diff-{uuid.uuid4().hex[:12]}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ours = pool.submit(_run, scenario, "zkfsd", zkfsd.hosts, base)
        ref = pool.submit(_run, scenario, "zookeeper", apache_zk.hosts, base)
        ours_trace, ref_trace = ours.result(), ref.result()
    diffs = [f"step {i} differs:\n  zkfsd:     {a!r}\n  zookeeper: {b!r}"
             for i, (a, b) in enumerate(zip(ours_trace, ref_trace)) if a != b]
    if len(ours_trace) != len(ref_trace):
        diffs.append(f"trace lengths differ: zkfsd {len(ours_trace)}, zookeeper {len(ref_trace)}")
    assert not diffs, "\n".join(diffs)
    assert ours_trace, "empty trace"
    return ours_trace


# -- scenarios ------------------------------------------------------------------------------------

def scenario_create_modes(t: Target) -> None:
    zk = t.kazoo("A")
    t.step("persistent", lambda: zk.create(t.p("/p"), b"data", include_data=True))
    t.step("ephemeral", lambda: zk.create(t.p("/e"), b"", ephemeral=True, include_data=True))
    t.step("sequential", lambda: zk.create(t.p("/s-"), b"x", sequence=True, include_data=True))
    t.step("sequential2", lambda: zk.create(t.p("/s-"), b"x", sequence=True))
    t.step("eph-seq", lambda: zk.create(t.p("/es-"), b"y", ephemeral=True, sequence=True))
    t.step("seq-noname", lambda: zk.create(t.p("/"), b"", sequence=True))
    t.step("null-data", lambda: zk.create(t.p("/null"), None))
    t.step("get-null", lambda: zk.get(t.p("/null")))
    t.step("empty-data", lambda: zk.create(t.p("/empty"), b""))
    t.step("get-empty", lambda: zk.get(t.p("/empty")))
    t.step("makepath", lambda: zk.create(t.p("/m/n/o"), b"deep", makepath=True))
    t.step("get-makepath-parent", lambda: zk.get(t.p("/m/n")))
    t.step("children", lambda: sorted(zk.get_children(t.p(""))))
    t.step("base-stat", lambda: zk.exists(t.p("")))
    t.step("children-with-data", lambda: (lambda r: (sorted(r[0]), r[1]))(
        zk.get_children(t.p(""), include_data=True)))
    # Sequence numbers come from the parent's cversion, which deletes do not lower.
    for name in ("/s-0000000000", "/s-0000000001"):
        t.step("delete " + name, lambda name=name: zk.delete(t.p(name)))
    t.step("sequential-after-delete", lambda: zk.create(t.p("/s-"), sequence=True))
    t.step("base-stat-after", lambda: zk.exists(t.p("")))

    raw = t.raw("R")
    create = jute.CreateRequest
    t.raw_step("container", raw, OpCode.CREATE_CONTAINER,
               create(t.p("/c"), b"c", OPEN_ACL, int(CreateMode.CONTAINER)))
    t.raw_step("ttl", raw, OpCode.CREATE_TTL,
               jute.CreateTTLRequest(t.p("/ttl"), b"t", OPEN_ACL,
                                     int(CreateMode.PERSISTENT_WITH_TTL), 60000))
    t.raw_step("ttl-seq", raw, OpCode.CREATE_TTL,
               jute.CreateTTLRequest(t.p("/ttls-"), b"t", OPEN_ACL,
                                     int(CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL), 60000))
    t.raw_step("ttl-zero", raw, OpCode.CREATE_TTL,
               jute.CreateTTLRequest(t.p("/ttl0"), b"t", OPEN_ACL,
                                     int(CreateMode.PERSISTENT_WITH_TTL), 0))
    t.raw_step("ttl-too-big", raw, OpCode.CREATE_TTL,
               jute.CreateTTLRequest(t.p("/ttlbig"), b"t", OPEN_ACL,
                                     int(CreateMode.PERSISTENT_WITH_TTL), MAX_TTL + 1))
    t.raw_step("create2-plain", raw, OpCode.CREATE2, create(t.p("/c2"), None, OPEN_ACL, 0))
    t.raw_step("create-ephemeral-raw", raw, OpCode.CREATE,
               create(t.p("/re"), b"", OPEN_ACL, int(CreateMode.EPHEMERAL)))
    t.raw_step("stat-raw-ephemeral", raw, OpCode.EXISTS, jute.ExistsRequest(t.p("/re"), False))
    t.raw_step("container-child", raw, OpCode.CREATE2, create(t.p("/c/k"), b"", OPEN_ACL, 0))
    t.raw_step("container-stat", raw, OpCode.EXISTS, jute.ExistsRequest(t.p("/c"), False))
    t.raw_step("bad-flags", raw, OpCode.CREATE2, create(t.p("/bf"), b"", OPEN_ACL, 99))


def scenario_errors(t: Target) -> None:
    zk = t.kazoo("A")
    t.step("create", lambda: zk.create(t.p("/a"), b"1"))
    t.step("no-node-parent", lambda: zk.create(t.p("/x/y"), b""))
    t.step("node-exists", lambda: zk.create(t.p("/a"), b""))
    t.step("child", lambda: zk.create(t.p("/a/b"), b""))
    t.step("not-empty", lambda: zk.delete(t.p("/a")))
    t.step("get-missing", lambda: zk.get(t.p("/missing")))
    t.step("exists-missing", lambda: zk.exists(t.p("/missing")))
    t.step("children-missing", lambda: sorted(zk.get_children(t.p("/missing"))))
    t.step("set-missing", lambda: zk.set(t.p("/missing"), b""))
    t.step("delete-missing", lambda: zk.delete(t.p("/missing")))
    t.step("set-bad-version", lambda: zk.set(t.p("/a"), b"2", version=5))
    t.step("set-v0", lambda: zk.set(t.p("/a"), b"2", version=0))
    t.step("set-v1", lambda: zk.set(t.p("/a"), b"3", version=1))
    t.step("set-any", lambda: zk.set(t.p("/a"), b"", version=-1))
    t.step("set-null", lambda: zk.set(t.p("/a"), None))
    t.step("get-after-set", lambda: zk.get(t.p("/a")))
    t.step("delete-child-bad-version", lambda: zk.delete(t.p("/a/b"), version=3))
    t.step("delete-child-v0", lambda: zk.delete(t.p("/a/b"), version=0))
    t.step("stat-after-child-delete", lambda: zk.exists(t.p("/a")))
    t.step("ephemeral", lambda: zk.create(t.p("/e"), b"", ephemeral=True))
    t.step("no-children-for-ephemerals", lambda: zk.create(t.p("/e/c"), b""))
    t.step("no-children-for-ephemerals-seq", lambda: zk.create(t.p("/e/c"), b"", sequence=True))
    t.step("delete-root", lambda: zk.delete("/"))
    t.step("delete-zookeeper", lambda: zk.delete("/zookeeper"))
    t.step("delete-quota", lambda: zk.delete("/zookeeper/quota"))
    # /zookeeper takes children (ZooKeeper does not protect it); remove it again at once, as
    # the reference server is shared by every test.
    name = f"/zookeeper/{t.base[1:]}"
    t.step("create-under-zookeeper", lambda: t.rel(zk.create(name, b"")))
    t.step("delete-under-zookeeper", lambda: zk.delete(name))
    t.step("set-config", lambda: zk.set("/zookeeper/config", b""))
    t.step("root-children-has-zookeeper", lambda: "zookeeper" in zk.get_children("/"))
    t.step("zookeeper-children", lambda: sorted(zk.get_children("/zookeeper")))
    # The reference is shared, so /zookeeper's child changes are not comparable.
    t.step("zookeeper-stat", value={k: v for k, v in norm_stat(zk.exists("/zookeeper"), {}).items()
                                    if k not in ("cversion", "pzxid==czxid", "pzxid>czxid",
                                                 "pzxid>=mzxid")})
    t.step("quota-stat", lambda: zk.exists("/zookeeper/quota"))
    t.step("config-acl", lambda: zk.get_acls("/zookeeper/config"))
    t.step("config-get", lambda: zk.get("/zookeeper/config"))
    # The root's Stat is all zeros but for its children, which the shared reference has more of.
    root = zk.exists("/")
    t.step("root-stat", value={k: v for k, v in norm_stat(root, {}).items()
                               if k not in ("cversion", "numChildren", "pzxid==czxid",
                                            "pzxid>czxid", "pzxid>=mzxid")})
    t.step("root-czxid", value=(root.czxid, root.mzxid, root.version, root.aversion,
                                root.ephemeralOwner, root.dataLength, root.ctime, root.mtime))
    t.step("root-get", lambda: zk.get("/")[0])
    t.step("root-acl", lambda: zk.get_acls("/")[0])


def scenario_acl(t: Target) -> None:
    owner = t.kazoo("owner")
    other = t.kazoo("other")
    owner.add_auth("digest", "alice:secret")
    acl = [make_digest_acl("alice", "secret", all=True)]
    t.step("create-digest", lambda: owner.create(t.p("/d"), b"secret", acl=acl))
    t.step("get-acl", lambda: owner.get_acls(t.p("/d")))
    t.step("owner-get", lambda: owner.get(t.p("/d")))
    t.step("other-get", lambda: other.get(t.p("/d")))
    t.step("other-exists", lambda: other.exists(t.p("/d")))
    t.step("other-set", lambda: other.set(t.p("/d"), b"x"))
    t.step("other-children", lambda: sorted(other.get_children(t.p("/d"))))
    t.step("other-create-child", lambda: other.create(t.p("/d/c"), b""))
    t.step("other-get-acl", lambda: other.get_acls(t.p("/d")))
    t.step("other-set-acl", lambda: other.set_acls(t.p("/d"), [ACL(31, Id("world", "anyone"))]))
    t.step("owner-create-child", lambda: owner.create(t.p("/d/c"), b""))
    t.step("other-delete-child", lambda: other.delete(t.p("/d/c")))
    t.step("other-add-wrong-auth", lambda: other.add_auth("digest", "alice:wrong"))
    t.step("other-get-wrong-auth", lambda: other.get(t.p("/d")))
    t.step("other-add-auth", lambda: other.add_auth("digest", "alice:secret"))
    t.step("other-get-authed", lambda: other.get(t.p("/d")))
    t.step("set-acl-bad-version", lambda: owner.set_acls(
        t.p("/d"), [ACL(31, Id("world", "anyone"))], version=7))
    t.step("set-acl-v0", lambda: owner.set_acls(
        t.p("/d"), [ACL(Perm.READ, Id("world", "anyone")), *acl], version=0))
    t.step("acl-after-set", lambda: owner.get_acls(t.p("/d")))
    t.step("set-acl-any", lambda: owner.set_acls(t.p("/d"), [ACL(31, Id("world", "anyone"))]))
    t.step("acl-after-set2", lambda: owner.get_acls(t.p("/d")))
    # InvalidACL: empty list, unknown scheme, 'auth' with no authenticated id, bad digest id.
    t.step("acl-empty", lambda: owner.create(t.p("/i1"), b"", acl=[]))
    t.step("acl-unknown-scheme", lambda: owner.create(t.p("/i2"), b"",
                                                      acl=[ACL(31, Id("foo", "bar"))]))
    t.step("acl-auth-unauthenticated", lambda: t.kazoo("plain").create(
        t.p("/i3"), b"", acl=[ACL(31, Id("auth", ""))]))
    t.step("acl-auth-expands", lambda: owner.create(t.p("/i4"), b"",
                                                    acl=[ACL(31, Id("auth", ""))]))
    t.step("acl-auth-expanded", lambda: owner.get_acls(t.p("/i4"))[0])
    t.step("acl-bad-digest", lambda: owner.create(t.p("/i5"), b"",
                                                  acl=[ACL(31, Id("digest", "nocolon"))]))
    t.step("acl-world-other", lambda: owner.create(t.p("/i6"), b"",
                                                   acl=[ACL(31, Id("world", "someone"))]))
    t.step("acl-ip", lambda: owner.create(t.p("/i7"), b"", acl=[ACL(31, Id("ip", "127.0.0.1"))]))
    t.step("acl-ip-get", lambda: other.get(t.p("/i7")))
    t.step("acl-ip-bad", lambda: owner.create(t.p("/i8"), b"", acl=[ACL(31, Id("ip", "1.2.3"))]))
    t.step("acl-ip-cidr", lambda: owner.create(t.p("/i9"), b"",
                                               acl=[ACL(31, Id("ip", "10.0.0.0/8"))]))
    t.step("acl-ip-cidr-get", lambda: other.get(t.p("/i9")))
    t.step("read-only-acl", lambda: owner.create(t.p("/ro"), b"r",
                                                 acl=[ACL(Perm.READ, Id("world", "anyone"))]))
    t.step("read-only-set", lambda: other.set(t.p("/ro"), b"w"))
    t.step("read-only-child", lambda: other.create(t.p("/ro/c"), b""))
    t.step("read-only-delete-self", lambda: other.delete(t.p("/ro")))
    t.step("noperm-acl", lambda: owner.create(t.p("/np"), b"r",
                                              acl=[ACL(Perm.WRITE, Id("world", "anyone"))]))
    t.step("noperm-get", lambda: other.get(t.p("/np")))
    t.step("noperm-exists", lambda: other.exists(t.p("/np")))
    t.step("noperm-get-acl", lambda: other.get_acls(t.p("/np")))
    t.step("noperm-set", lambda: other.set(t.p("/np"), b"w"))

    raw = t.raw("R")
    t.raw_step("whoami", raw, OpCode.WHO_AM_I, None)
    raw.auth("digest", b"bob:pw")
    t.raw_step("whoami-after-auth", raw, OpCode.WHO_AM_I, None)
    raw.auth("digest", b"bob:pw")
    t.raw_step("whoami-after-second-auth", raw, OpCode.WHO_AM_I, None)


def scenario_bad_paths(t: Target) -> None:
    """Server-side path validation, one raw request per (op, path); kazoo would refuse most."""
    bad_paths = ["", "a", "//a", "/a/", "/a//b", "/a/./b", "/a/../b", "/.", "/..",
                 "/\u0001", "/a\u007fb", "/\ud7ff", "/\ufff0", "/zookeeper/", "/a\0b"]
    # Paths relative to the base so nothing collides between runs on the shared reference.
    raw = t.raw("R")
    for rel in ("/a", "/a/b"):
        raw.call(OpCode.CREATE, jute.CreateRequest(t.p(rel), b"", OPEN_ACL, 0))

    def absolute(path: str) -> str:
        return path if not path.startswith("/") else t.p(path)

    ops: list[tuple[str, int, Callable[[str], Any]]] = [
        ("create", OpCode.CREATE, lambda p: jute.CreateRequest(p, b"", OPEN_ACL, 0)),
        ("create-seq", OpCode.CREATE, lambda p: jute.CreateRequest(p, b"", OPEN_ACL, 2)),
        ("delete", OpCode.DELETE, lambda p: jute.DeleteRequest(p, -1)),
        ("set", OpCode.SET_DATA, lambda p: jute.SetDataRequest(p, b"", -1)),
        ("get", OpCode.GET_DATA, lambda p: jute.GetDataRequest(p, False)),
        ("exists", OpCode.EXISTS, lambda p: jute.ExistsRequest(p, False)),
        ("children", OpCode.GET_CHILDREN, lambda p: jute.GetChildrenRequest(p, False)),
        ("get-acl", OpCode.GET_ACL, lambda p: jute.GetACLRequest(p)),
        ("set-acl", OpCode.SET_ACL, lambda p: jute.SetACLRequest(p, OPEN_ACL, -1)),
        ("children2", OpCode.GET_CHILDREN2, lambda p: jute.GetChildren2Request(p, False)),
        ("sync", OpCode.SYNC, lambda p: jute.SyncRequest(p)),
        ("all-children-number", OpCode.GET_ALL_CHILDREN_NUMBER,
         lambda p: jute.GetAllChildrenNumberRequest(p)),
        ("check-watches", OpCode.CHECK_WATCHES,
         lambda p: jute.RemoveWatchesRequest(p, int(WatcherType.ANY))),
    ]
    for path in bad_paths:
        for label, op, make in ops:
            # Absolute paths go inside the base: nothing may be created outside it on the
            # shared reference (a sequential '/zookeeper/' would be, for instance).
            variant = absolute(path)
            if label == "check-watches" and not variant.startswith("/"):
                continue  # ZooKeeper fails on some relative paths here (see module doc)
            if raw.closed:
                raw = t.raw("R")
            code = raw.code(op, make(variant))
            t.trace.append((label, t.rel(variant), code))
    # Reads of the root's "" alias: ZooKeeper's tree holds the root under "" too.
    for label, op, make in ops[4:8]:
        if raw.closed:
            raw = t.raw("R")
        t.trace.append((label + "-empty-path", raw.code(op, make(""))))
    # An op code nobody knows: Unimplemented (what follows differs, see the module doc).
    t.trace.append(("unknown-op", t.raw("U").code(999, jute.SyncRequest("/"))))
    # Creating a sequential node whose name would end in '/': the suffix makes it valid.
    t.raw_step("create-seq-trailing-slash", raw, OpCode.CREATE,
               jute.CreateRequest(t.p("/a/"), b"", OPEN_ACL, 2))


def scenario_multi(t: Target) -> None:
    zk = t.kazoo("A")
    zk.create(t.p("/m"), b"m")

    def commit(build: Callable[[Any], None]) -> list[Any]:
        tx = zk.transaction()
        build(tx)
        return tx.commit()

    t.step("ok", lambda: commit(lambda tx: (
        tx.create(t.p("/m/a"), b"a"),
        tx.create(t.p("/m/s-"), b"", sequence=True),
        tx.set_data(t.p("/m"), b"mm"),
        tx.check(t.p("/m"), 1),
        tx.create(t.p("/m/e"), b"", ephemeral=True),
        tx.delete(t.p("/m/a")))))
    t.step("children-after-ok", lambda: sorted(zk.get_children(t.p("/m"))))
    t.step("stat-after-ok", lambda: zk.exists(t.p("/m")))
    t.step("fail-check", lambda: commit(lambda tx: (
        tx.create(t.p("/m/b"), b"b"),
        tx.check(t.p("/m"), 0),
        tx.set_data(t.p("/m"), b"never"))))
    t.step("fail-nonode", lambda: commit(lambda tx: (
        tx.set_data(t.p("/m"), b"x"),
        tx.delete(t.p("/m/missing")),
        tx.create(t.p("/m/c"), b""))))
    t.step("fail-exists", lambda: commit(lambda tx: (
        tx.create(t.p("/m/d"), b""),
        tx.create(t.p("/m/d"), b""))))
    t.step("fail-notempty", lambda: commit(lambda tx: tx.delete(t.p("/m"))))
    t.step("fail-eph-child", lambda: commit(lambda tx: tx.create(t.p("/m/e/x"), b"")))
    t.step("fail-bad-version-delete", lambda: commit(lambda tx: (
        tx.delete(t.p("/m/e"), version=4),)))
    t.step("fail-last", lambda: commit(lambda tx: (
        tx.create(t.p("/m/f"), b""),
        tx.delete(t.p("/m/f")),
        tx.check(t.p("/m/f"), -1))))
    t.step("state-unchanged", lambda: (sorted(zk.get_children(t.p("/m"))), zk.get(t.p("/m"))))
    t.step("create-then-delete", lambda: commit(lambda tx: (
        tx.create(t.p("/m/g"), b""),
        tx.create(t.p("/m/g/h"), b""),
        tx.delete(t.p("/m/g/h")),
        tx.delete(t.p("/m/g")))))
    t.step("stat-after", lambda: zk.exists(t.p("/m")))
    t.step("sequential-after", lambda: zk.create(t.p("/m/s-"), sequence=True))
    t.step("empty", lambda: commit(lambda tx: None))

    raw = t.raw("R")
    ok = jute.MultiRequest([(OpCode.CREATE2, jute.CreateRequest(t.p("/m/r"), b"r", OPEN_ACL, 0)),
                            (OpCode.CREATE_CONTAINER, jute.CreateRequest(
                                t.p("/m/rc"), b"", OPEN_ACL, int(CreateMode.CONTAINER))),
                            (OpCode.CREATE_TTL, jute.CreateTTLRequest(
                                t.p("/m/rt"), b"", OPEN_ACL,
                                int(CreateMode.PERSISTENT_WITH_TTL), 5000)),
                            (OpCode.SET_DATA, jute.SetDataRequest(t.p("/m/r"), b"q", 0))])
    t.raw_step("raw-multi-create2", raw, OpCode.MULTI, ok)
    read = jute.MultiRequest([(OpCode.GET_DATA, jute.GetDataRequest(t.p("/m/r"), False)),
                              (OpCode.GET_CHILDREN, jute.GetChildrenRequest(t.p("/m/r"), False)),
                              (OpCode.GET_DATA, jute.GetDataRequest(t.p("/m/nope"), False)),
                              (OpCode.GET_CHILDREN, jute.GetChildrenRequest(t.p("/m/nope"),
                                                                            False))])
    t.raw_step("raw-multi-read", raw, OpCode.MULTI_READ, read)
    bad_path = jute.MultiRequest([(OpCode.CREATE, jute.CreateRequest(t.p("/m/ok"), b"", OPEN_ACL,
                                                                     0)),
                                  (OpCode.CREATE, jute.CreateRequest(t.p("/m//x"), b"",
                                                                     OPEN_ACL, 0))])
    t.raw_step("raw-multi-bad-path", raw, OpCode.MULTI, bad_path)


def scenario_watches(t: Target) -> None:
    a = t.kazoo("A")
    b = t.kazoo("B")
    log = EventLog(t, a)
    a.create(t.p("/w"), b"")

    # exists watch on a missing node → NodeCreated; one-shot.
    t.step("exists-missing-watch", lambda: a.exists(t.p("/w/n"), watch=log.watch("exists")))
    t.step("children-watch", lambda: sorted(a.get_children(t.p("/w"), watch=log.watch("children"))))
    b.create(t.p("/w/n"), b"1")
    b.create(t.p("/w/n2"), b"1")
    log.record("after-create")
    # data watch and exists watch on an existing node → one NodeDataChanged each callback
    t.step("get-watch", lambda: a.get(t.p("/w/n"), watch=log.watch("get")))
    t.step("exists-watch", lambda: a.exists(t.p("/w/n"), watch=log.watch("exists2")))
    t.step("children-watch2", lambda: sorted(a.get_children(t.p("/w"),
                                                            watch=log.watch("children2"))))
    t.step("child-watch-on-n", lambda: sorted(a.get_children(t.p("/w/n"),
                                                             watch=log.watch("nkids"))))
    b.set(t.p("/w/n"), b"2")
    b.set(t.p("/w/n"), b"3")
    log.record("after-two-sets")
    t.step("get-watch-again", lambda: a.get(t.p("/w/n"), watch=log.watch("get2")))
    b.delete(t.p("/w/n"))
    log.record("after-delete")
    # The sibling's creation/deletion fires the child watch on the parent only once.
    t.step("children-watch3", lambda: sorted(a.get_children(t.p("/w"),
                                                            watch=log.watch("children3"))))
    b.delete(t.p("/w/n2"))
    b.create(t.p("/w/n3"), b"")
    log.record("after-sibling-changes")
    # A setData on the parent does not fire child watches; setACL fires nothing.
    t.step("children-watch4", lambda: sorted(a.get_children(t.p("/w"),
                                                            watch=log.watch("children4"))))
    t.step("exists-watch-w", lambda: a.exists(t.p("/w"), watch=log.watch("w")))
    b.set_acls(t.p("/w"), [ACL(31, Id("world", "anyone"))])
    b.set(t.p("/w"), b"parent")
    log.record("after-parent-set")
    # A failing write fires nothing.
    with contextlib.suppress(KazooException):
        b.set(t.p("/w"), b"", version=42)
    with contextlib.suppress(KazooException):
        b.create(t.p("/w/n3"), b"")
    log.record("after-failed-writes")
    # A watch on a node by its own session fires for its own change.
    t.step("self-watch", lambda: a.get(t.p("/w/n3"), watch=log.watch("self")))
    a.set(t.p("/w/n3"), b"me")
    log.record("after-self-set")
    # Multi: events for each op, in op order.
    t.step("exists-m1", lambda: a.exists(t.p("/w/m1"), watch=log.watch("m1")))
    t.step("exists-m2", lambda: a.exists(t.p("/w/m2"), watch=log.watch("m2")))
    t.step("children-watch5", lambda: sorted(a.get_children(t.p("/w"),
                                                            watch=log.watch("children5"))))
    tx = b.transaction()
    tx.create(t.p("/w/m2"), b"")
    tx.create(t.p("/w/m1"), b"")
    tx.commit()
    log.record("after-multi")

    # Raw: persistent and recursive watches, removeWatches/checkWatches.
    raw = t.raw("R")
    t.raw_step("add-persistent", raw, OpCode.ADD_WATCH,
               jute.AddWatchRequest(t.p("/w"), int(WatchMode.PERSISTENT)))
    t.raw_step("add-recursive", raw, OpCode.ADD_WATCH,
               jute.AddWatchRequest(t.p("/r"), int(WatchMode.PERSISTENT_RECURSIVE)))
    b.create(t.p("/r/x/y"), b"", makepath=True)
    b.set(t.p("/r/x/y"), b"1")
    b.set(t.p("/w"), b"again")
    b.create(t.p("/w/p"), b"")
    b.delete(t.p("/w/p"))
    b.set(t.p("/w"), b"again2")
    b.delete(t.p("/r/x/y"))
    b.delete(t.p("/r/x"))
    settle_raw(t, raw, "persistent-events")
    t.raw_step("check-persistent-any", raw, OpCode.CHECK_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w"), int(WatcherType.ANY)))
    t.raw_step("check-none", raw, OpCode.CHECK_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w/n3"), int(WatcherType.ANY)))
    t.raw_step("remove-persistent", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w"), int(WatcherType.ANY)))
    t.raw_step("remove-again", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w"), int(WatcherType.ANY)))
    settle_raw(t, raw, "remove-events")
    t.raw_step("get-watch", raw, OpCode.GET_DATA, jute.GetDataRequest(t.p("/w/n3"), True))
    t.raw_step("children-watch", raw, OpCode.GET_CHILDREN,
               jute.GetChildrenRequest(t.p("/w/n3"), True))
    t.raw_step("check-child", raw, OpCode.CHECK_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w/n3"), int(WatcherType.CHILDREN)))
    t.raw_step("remove-child", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w/n3"), int(WatcherType.CHILDREN)))
    t.raw_step("remove-child-again", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w/n3"), int(WatcherType.CHILDREN)))
    t.raw_step("remove-data", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/w/n3"), int(WatcherType.DATA)))
    settle_raw(t, raw, "removed-events")
    b.set(t.p("/w/n3"), b"after-remove")
    settle_raw(t, raw, "after-remove-set")
    t.raw_step("remove-missing-node", raw, OpCode.REMOVE_WATCHES,
               jute.RemoveWatchesRequest(t.p("/nope"), int(WatcherType.ANY)))
    # A persistent watch survives the deletion of its node.
    t.raw_step("add-persistent-2", raw, OpCode.ADD_WATCH,
               jute.AddWatchRequest(t.p("/w/n3"), int(WatchMode.PERSISTENT)))
    b.delete(t.p("/w/n3"))
    b.create(t.p("/w/n3"), b"")
    settle_raw(t, raw, "persistent-after-delete")


def scenario_misc_reads(t: Target) -> None:
    zk = t.kazoo("A")
    raw = t.raw("R")
    zk.create(t.p("/x/y/z"), b"", makepath=True)
    zk.create(t.p("/x/q"), b"")
    zk.create(t.p("/e1"), b"", ephemeral=True)
    t.raw_step("all-children-number", raw, OpCode.GET_ALL_CHILDREN_NUMBER,
               jute.GetAllChildrenNumberRequest(t.p("")))
    t.raw_step("all-children-number-x", raw, OpCode.GET_ALL_CHILDREN_NUMBER,
               jute.GetAllChildrenNumberRequest(t.p("/x")))
    t.raw_step("all-children-number-leaf", raw, OpCode.GET_ALL_CHILDREN_NUMBER,
               jute.GetAllChildrenNumberRequest(t.p("/x/q")))
    t.raw_step("all-children-number-missing", raw, OpCode.GET_ALL_CHILDREN_NUMBER,
               jute.GetAllChildrenNumberRequest(t.p("/missing")))
    t.raw_step("all-children-number-quota", raw, OpCode.GET_ALL_CHILDREN_NUMBER,
               jute.GetAllChildrenNumberRequest("/zookeeper/quota"))
    for rel in ("/e2", "/x/e3", "/x/y/e4", "/xe5"):
        raw.call(OpCode.CREATE, jute.CreateRequest(t.p(rel), b"", OPEN_ACL, 1))
    t.raw_step("ephemerals-all", raw, OpCode.GET_EPHEMERALS, jute.GetEphemeralsRequest("/"))
    t.raw_step("ephemerals-base", raw, OpCode.GET_EPHEMERALS,
               jute.GetEphemeralsRequest(t.p("")))
    t.raw_step("ephemerals-x", raw, OpCode.GET_EPHEMERALS, jute.GetEphemeralsRequest(t.p("/x")))
    t.raw_step("ephemerals-x-slash", raw, OpCode.GET_EPHEMERALS,
               jute.GetEphemeralsRequest(t.p("/x/")))
    t.raw_step("ephemerals-none", raw, OpCode.GET_EPHEMERALS,
               jute.GetEphemeralsRequest(t.p("/nope")))
    t.raw_step("sync", raw, OpCode.SYNC, jute.SyncRequest(t.p("/x")))
    t.raw_step("sync-missing", raw, OpCode.SYNC, jute.SyncRequest(t.p("/missing")))
    t.step("kazoo-sync", lambda: zk.sync(t.p("/x")))
    t.raw_step("children2", raw, OpCode.GET_CHILDREN2, jute.GetChildren2Request(t.p("/x"), False))
    t.raw_step("get-acl", raw, OpCode.GET_ACL, jute.GetACLRequest(t.p("/x")))


def scenario_session_close(t: Target) -> None:
    watcher = t.kazoo("watcher")
    log = EventLog(t, watcher)
    watcher.create(t.p("/s"), b"")
    owner = KazooClient(hosts=t.hosts, timeout=10)
    owner.start(timeout=15)
    try:
        t.sessions[owner.client_id[0]] = "owner"
        t.step("create-ephemeral", lambda: owner.create(t.p("/s/e"), b"", ephemeral=True))
        t.step("stat", lambda: watcher.exists(t.p("/s/e"), watch=log.watch("exists")))
        t.step("children", lambda: sorted(watcher.get_children(t.p("/s"),
                                                               watch=log.watch("children"))))
    finally:
        owner.stop()
        owner.close()
    log.record("after-close")
    t.step("gone", lambda: watcher.exists(t.p("/s/e")))
    t.step("parent", lambda: watcher.exists(t.p("/s")))


def scenario_session_expiry(t: Target) -> None:
    watcher = t.kazoo("watcher")
    log = EventLog(t, watcher)
    watcher.create(t.p("/x"), b"")
    # 4 s: the smallest timeout the reference allows (2 ticks of 2 s); zkfsd's range covers it.
    silent = RawSession(t.hosts, timeout_ms=4000)
    t.sessions[silent.session_id] = "silent"
    try:
        t.step("negotiated", value=silent.timeout_ms)
        t.raw_step("create-ephemeral", silent, OpCode.CREATE2,
                   jute.CreateRequest(t.p("/x/e"), b"", OPEN_ACL, int(CreateMode.EPHEMERAL)))
        t.step("stat", lambda: watcher.exists(t.p("/x/e"), watch=log.watch("exists")))
        t.step("children", lambda: sorted(watcher.get_children(t.p("/x"),
                                                               watch=log.watch("children"))))
        # Now the raw session says nothing at all.
        deadline = time.monotonic() + 20
        while watcher.exists(t.p("/x/e")) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        log.record("after-expiry")
        t.step("gone", lambda: watcher.exists(t.p("/x/e")))
        # The expired session's connection is closed by the server (or its reconnect refused).
        t.step("silent-closed", value=silent.code(OpCode.EXISTS, jute.ExistsRequest("/", False)))
    finally:
        silent.drop()


def scenario_pipelined_reads(t: Target) -> None:
    # kazoo sends async requests without waiting for replies: each read is queued behind a write
    # of its own session while the later writes are already proposed; it must see exactly the
    # write before it.
    zk = t.kazoo("pipeline")
    zk.create(t.p("/p"), b"0")
    pending = []
    for i in range(1, 31):
        pending.append(zk.set_async(t.p("/p"), str(i).encode()))
        pending.append(zk.get_async(t.p("/p")))
    for n, result in enumerate(pending):
        value = result.get(timeout=10)
        if n % 2:
            data, stat = value
            t.step(f"get-{n // 2 + 1}", value=(data, stat.version))


# -- tests ----------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_create_modes(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_create_modes, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_errors_versions_and_builtin_nodes(zkfsd: ZkfsdProcess,
                                           apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_errors, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_acls_and_auth(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_acl, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_server_side_path_validation(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_bad_paths, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_multi(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_multi, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_watches(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_watches, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_misc_reads(zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_misc_reads, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_session_close_removes_ephemerals(zkfsd: ZkfsdProcess,
                                          apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_session_close, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_session_expiry_removes_ephemerals(zkfsd: ZkfsdProcess,
                                           apache_zk: ApacheZooKeeper) -> None:
    trace = compare(scenario_session_expiry, zkfsd, apache_zk)
    assert ("after-expiry", "events", [(("exists",), "DELETED", "~/x/e"),
                                       (("children",), "CHILD", "~/x")]) in trace


# -- intentional differences: zkfsd's side only ---------------------------------------------------

@pytest.mark.timeout(60)
def test_data_size_limit_zkfsd_only(zkfsd: ZkfsdProcess) -> None:
    """zkfsd: data of exactly 1 MiB is fine, one byte more is BadArguments on a live connection.

    (ZooKeeper closes the connection for any frame over jute.maxbuffer instead.)
    """
    raw = RawSession(zkfsd.hosts)
    try:
        err, body = raw.call(OpCode.CREATE2,
                             jute.CreateRequest("/big", b"x" * MAX_DATA, OPEN_ACL, 0))
        assert err == "OK" and body.stat.data_length == MAX_DATA
        err, _ = raw.call(OpCode.CREATE2,
                          jute.CreateRequest("/big2", b"x" * (MAX_DATA + 1), OPEN_ACL, 0))
        assert err == "BAD_ARGUMENTS"
        err, _ = raw.call(OpCode.SET_DATA, jute.SetDataRequest("/big", b"y" * (MAX_DATA + 1), -1))
        assert err == "BAD_ARGUMENTS"
        err, body = raw.call(OpCode.GET_DATA, jute.GetDataRequest("/big", False))
        assert err == "OK" and body.data == b"x" * MAX_DATA and body.stat.version == 0
        assert raw.call(OpCode.EXISTS, jute.ExistsRequest("/big2", False))[0] == "NO_NODE"
    finally:
        raw.close()
    with kazoo_client(zkfsd.hosts) as zk:
        zk.set("/big", b"z" * MAX_DATA)
        assert zk.get("/big")[1].dataLength == MAX_DATA


@pytest.mark.timeout(30)
def test_top_level_check_zkfsd_only(zkfsd: ZkfsdProcess) -> None:
    """zkfsd answers a top-level check (op 13) as ZooKeeper 3.9 does; 3.8 drops the connection."""
    raw = RawSession(zkfsd.hosts)
    try:
        raw.call(OpCode.CREATE, jute.CreateRequest("/c", b"", OPEN_ACL, 0))
        assert raw.call(OpCode.CHECK, jute.CheckVersionRequest("/c", 0))[0] == "OK"
        assert raw.call(OpCode.CHECK, jute.CheckVersionRequest("/c", 1))[0] == "BAD_VERSION"
        assert raw.call(OpCode.CHECK, jute.CheckVersionRequest("/nope", -1))[0] == "NO_NODE"
    finally:
        raw.close()


def scenario_check_watches_by_type(t: Target) -> None:
    raw = t.raw("R")
    raw.call(OpCode.CREATE, jute.CreateRequest(t.p("/w"), b"", OPEN_ACL, 0))
    raw.call(OpCode.ADD_WATCH, jute.AddWatchRequest(t.p("/w"), int(WatchMode.PERSISTENT)))
    raw.call(OpCode.ADD_WATCH, jute.AddWatchRequest(t.p("/r"), int(WatchMode.PERSISTENT_RECURSIVE)))
    for path in ("/w", "/r"):
        for kind in (WatcherType.DATA, WatcherType.CHILDREN, WatcherType.ANY):
            t.raw_step(f"check {path} {kind.name}", raw, OpCode.CHECK_WATCHES,
                       jute.RemoveWatchesRequest(t.p(path), int(kind)))


@pytest.mark.timeout(60)
def test_check_watches_by_type_matches_persistent_watches(
        zkfsd: ZkfsdProcess, apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_check_watches_by_type, zkfsd, apache_zk)


@pytest.mark.timeout(60)
def test_pipelined_reads_see_the_write_before_them(zkfsd: ZkfsdProcess,
                                                    apache_zk: ApacheZooKeeper) -> None:
    compare(scenario_pipelined_reads, zkfsd, apache_zk)
