"""zkfsd end to end: every client operation, sessions and their lifetimes, ordering guarantees.

Each test runs its own zkfsd subprocess (the `zkfsd` fixture: tick 200 ms, so session timeouts
are 400..4000 ms) and talks to it with kazoo or, for what kazoo cannot express (a session that
stops pinging, resuming with an explicit id, ops kazoo lacks), with `RawClient`, a blocking
socket speaking ZooKeeper's jute protocol through `zkfs.jute`.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import pytest
from kazoo.client import KazooState
from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.security import make_digest_acl

from helpers import ZkfsdProcess, four_letter_word, kazoo_client
from zkfs import jute
from zkfs.constants import Err, EventType, OpCode, WatcherType, WatchMode, Xid

# Kazoo reconnects quickly in tests (its default back-off grows to seconds).
FAST_RETRY = {"max_tries": -1, "delay": 0.05, "backoff": 1.2, "max_delay": 0.3}


# ---------------------------------------------------------------------------------------------
# A minimal blocking jute client (also imported by test_faults.py)


class RawClient:
    """One TCP connection speaking ZooKeeper's client protocol, with nothing hidden.

    Replies are matched to requests by order (the server answers in order); watch notifications
    (xid -1) that arrive in between are collected in `events` in arrival order, each as
    ("event", type, path), and a reply is appended to `log` as ("reply", xid) so tests can check
    what came first.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = jute.FrameDecoder(64 * 1024 * 1024)
        self.events: list[tuple[int, str]] = []
        self.log: list[tuple[Any, ...]] = []
        self.session_id = 0
        self.passwd = b"\0" * 16
        self.timeout_ms = 0
        self.last_zxid = 0
        self._xid = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- framing ---------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self) -> bytes | None:
        """The next frame's payload; None at EOF (the server closed the connection)."""
        while True:
            payload = self.decoder.next_frame()
            if payload is not None:
                return payload
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Read (and drop) until the server closes; False if it is still open after `timeout`."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    data = self.sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    return True
                if not data:
                    return True
        except TimeoutError:
            return False
        return False

    # -- session ---------------------------------------------------------------------------------
    def connect(self, *, timeout_ms: int = 4000, session_id: int = 0, passwd: bytes | None = None,
                last_zxid: int = 0) -> jute.ConnectResponse | None:
        """Send a ConnectRequest; the ConnectResponse, or None if the server just closed."""
        req = jute.ConnectRequest(0, last_zxid, timeout_ms, session_id,
                                  passwd if passwd is not None else b"\0" * 16, False)
        self.send_raw(jute.encode_connect_request(req))
        payload = self.recv_frame()
        if payload is None:
            return None
        resp = jute.decode_connect_response(payload)
        if resp.session_id:
            self.session_id, self.passwd, self.timeout_ms = resp.session_id, resp.passwd, resp.timeout
        return resp

    # -- requests --------------------------------------------------------------------------------
    def next_xid(self) -> int:
        self._xid += 1
        return self._xid

    def send(self, op: int, record: jute.Record | None, xid: int | None = None) -> int:
        xid = self.next_xid() if xid is None else xid
        self.send_raw(jute.encode_request(xid, op, record))
        return xid

    def read_reply(self, op: int | None) -> tuple[jute.ReplyHeader, Any]:
        """The next non-notification reply (notifications are collected on the way)."""
        while True:
            payload = self.recv_frame()
            if payload is None:
                raise ConnectionError("server closed the connection")
            header, body = jute.decode_reply(payload, op)
            if header.xid == Xid.NOTIFICATION:
                self.events.append((body.type, body.path))
                self.log.append(("event", body.type, body.path))
                continue
            if header.zxid > self.last_zxid:
                self.last_zxid = header.zxid
            self.log.append(("reply", header.xid))
            return header, body

    def call(self, op: int, record: jute.Record | None = None) -> tuple[int, Any]:
        """Send one request and wait for its reply: (err, body)."""
        xid = self.send(op, record)
        header, body = self.read_reply(op)
        assert header.xid == xid, (header, xid)
        return header.err, body

    def ping(self) -> None:
        self.send(OpCode.PING, None, xid=Xid.PING)
        header, _ = self.read_reply(OpCode.PING)
        assert header.xid == Xid.PING

    def wait_event(self, timeout: float = 5.0) -> tuple[int, str]:
        """The next watch notification (pinging meanwhile so the session stays alive)."""
        deadline = time.monotonic() + timeout
        while not self.events:
            assert time.monotonic() < deadline, "no watch event arrived"
            self.sock.settimeout(0.2)
            try:
                payload = self.recv_frame()
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(10.0)
            if payload is None:
                raise ConnectionError("server closed the connection")
            header, body = jute.decode_reply(payload, None)
            if header.xid == Xid.NOTIFICATION:
                self.events.append((body.type, body.path))
        return self.events.pop(0)


def raw_session(server: ZkfsdProcess, **kwargs: Any) -> RawClient:
    client = RawClient(server.host, server.port)
    resp = client.connect(**kwargs)
    assert resp is not None and resp.session_id != 0
    return client


def server_zxid(server: ZkfsdProcess) -> int:
    match = re.search(r"^Zxid: 0x([0-9a-f]+)$", four_letter_word(server.host, server.port, "srvr"),
                      re.M)
    assert match, "srvr has no Zxid line"
    return int(match.group(1), 16)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(interval)


def create_req(path: str, data: bytes | None = b"", flags: int = 0) -> jute.CreateRequest:
    return jute.CreateRequest(path, data, [jute.ACL(31, jute.Id("world", "anyone"))], flags)


# ---------------------------------------------------------------------------------------------
# Every operation


@pytest.mark.timeout(30)
def test_basic_operations(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        # create / create2 (include_data asks for the Stat)
        assert zk.create("/a", b"one") == "/a"
        path, stat = zk.create("/a/b", b"two", include_data=True)
        assert path == "/a/b" and stat.version == 0 and stat.dataLength == 3
        assert stat.czxid == stat.mzxid == stat.pzxid and stat.numChildren == 0
        with pytest.raises(NodeExistsError):
            zk.create("/a", b"")
        with pytest.raises(NoNodeError):
            zk.create("/missing/child", b"")
        seq1 = zk.create("/a/seq-", b"", sequence=True)
        seq2 = zk.create("/a/seq-", b"", sequence=True)
        assert re.fullmatch(r"/a/seq-\d{10}", seq1) and seq2 > seq1
        assert zk.create("/deep/er/path", b"x", makepath=True) == "/deep/er/path"
        eph = zk.create("/a/eph", b"e", ephemeral=True)
        assert zk.exists(eph).ephemeralOwner == zk.client_id[0]

        # get / exists / set with versions
        data, stat = zk.get("/a")
        assert data == b"one" and stat.numChildren == 4
        assert zk.exists("/nope") is None
        stat = zk.set("/a/b", b"three", version=0)
        assert stat.version == 1 and stat.dataLength == 5
        with pytest.raises(BadVersionError):
            zk.set("/a/b", b"x", version=0)
        assert zk.get("/a/b")[0] == b"three"

        # children / children2
        assert sorted(zk.get_children("/a")) == sorted(["b", "eph", seq1[3:], seq2[3:]])
        children, stat = zk.get_children("/a", include_data=True)
        assert len(children) == 4 and stat.numChildren == 4
        assert stat.cversion == 4

        # delete with version; NotEmpty
        with pytest.raises(NotEmptyError):
            zk.delete("/a")
        with pytest.raises(BadVersionError):
            zk.delete("/a/b", version=0)
        zk.delete("/a/b", version=1)
        assert zk.exists("/a/b") is None
        with pytest.raises(NoNodeError):
            zk.delete("/a/b")
        zk.delete("/deep", recursive=True)
        assert zk.exists("/deep") is None

        # sync
        assert zk.sync("/a") == "/a"


@pytest.mark.timeout(30)
def test_multi_is_all_or_nothing(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/m", b"0")
        t = zk.transaction()
        t.create("/m/x", b"x")
        t.set_data("/m", b"1", version=0)
        t.check("/m", 1)
        t.delete("/m/x")
        results = t.commit()
        assert results[0] == "/m/x" and results[1].version == 1
        assert results[2] is True and results[3] is True
        assert zk.get("/m")[0] == b"1" and zk.exists("/m/x") is None

        zxid_before = server_zxid(zkfsd)
        t = zk.transaction()
        t.create("/m/y", b"y")
        t.set_data("/m", b"2", version=0)  # wrong version: the whole multi fails
        results = t.commit()
        assert isinstance(results[1], BadVersionError)
        assert zk.exists("/m/y") is None and zk.get("/m")[0] == b"1"
        # A failed multi is still one transaction in the log, not a partial application.
        assert server_zxid(zkfsd) - zxid_before == 1


@pytest.mark.timeout(30)
def test_acls_and_digest_auth(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as owner, kazoo_client(zkfsd.hosts) as other:
        acl = make_digest_acl("alice", "secret", all=True)
        owner.add_auth("digest", "alice:secret")
        owner.create("/private", b"hidden", acl=[acl])
        acls, stat = owner.get_acls("/private")
        assert [(a.perms, a.id.scheme, a.id.id) for a in acls] == [
            (31, "digest", acl.id.id)]
        assert stat.aversion == 0
        assert owner.get("/private")[0] == b"hidden"
        with pytest.raises(NoAuthError):
            other.get("/private")
        with pytest.raises(NoAuthError):
            other.set("/private", b"x")
        other.add_auth("digest", "alice:wrong")
        with pytest.raises(NoAuthError):
            other.get("/private")
        other.add_auth("digest", "alice:secret")
        assert other.get("/private")[0] == b"hidden"

        # setACL with aversion check, then world-readable
        from kazoo.security import OPEN_ACL_UNSAFE, READ_ACL_UNSAFE
        stat = owner.set_acls("/private", READ_ACL_UNSAFE + [acl], version=0)
        assert stat.aversion == 1
        with pytest.raises(BadVersionError):
            owner.set_acls("/private", OPEN_ACL_UNSAFE, version=0)
    with kazoo_client(zkfsd.hosts) as anon:
        assert anon.get("/private")[0] == b"hidden"
        with pytest.raises(NoAuthError):
            anon.set("/private", b"x")


@pytest.mark.timeout(30)
def test_raw_only_operations(zkfsd: ZkfsdProcess) -> None:
    """whoAmI, getEphemerals, getAllChildrenNumber, addWatch, checkWatches, removeWatches."""
    with raw_session(zkfsd) as c, kazoo_client(zkfsd.hosts) as zk:
        assert c.call(OpCode.CREATE, create_req("/r"))[0] == Err.OK
        assert c.call(OpCode.CREATE, create_req("/r/a"))[0] == Err.OK
        assert c.call(OpCode.CREATE, create_req("/r/a/b"))[0] == Err.OK
        assert c.call(OpCode.CREATE, create_req("/r/e1", flags=1))[0] == Err.OK
        assert c.call(OpCode.CREATE, create_req("/r/a/e2", flags=1))[0] == Err.OK
        zk.create("/r/other-eph", b"", ephemeral=True)

        err, body = c.call(OpCode.GET_ALL_CHILDREN_NUMBER, jute.GetAllChildrenNumberRequest("/r"))
        assert err == Err.OK and body.total_number == 5
        err, _ = c.call(OpCode.GET_ALL_CHILDREN_NUMBER, jute.GetAllChildrenNumberRequest("/nope"))
        assert err == Err.NO_NODE

        err, body = c.call(OpCode.GET_EPHEMERALS, jute.GetEphemeralsRequest("/"))
        assert err == Err.OK and sorted(body.ephemerals) == ["/r/a/e2", "/r/e1"]
        err, body = c.call(OpCode.GET_EPHEMERALS, jute.GetEphemeralsRequest("/r/a"))
        assert err == Err.OK and body.ephemerals == ["/r/a/e2"]

        err, body = c.call(OpCode.WHO_AM_I, jute.WhoAmIRequest())
        assert err == Err.OK and [(i.auth_scheme, i.user) for i in body.client_info] == [
            ("ip", "127.0.0.1")]
        c.send(OpCode.AUTH, jute.AuthPacket(0, "digest", b"bob:pw"), xid=Xid.AUTH)
        assert c.read_reply(OpCode.AUTH)[0].err == Err.OK
        err, body = c.call(OpCode.WHO_AM_I, jute.WhoAmIRequest())
        assert ("digest", "bob") in [(i.auth_scheme, i.user) for i in body.client_info]

        # multiRead
        err, body = c.call(OpCode.MULTI_READ, jute.MultiRequest([
            (OpCode.GET_DATA, jute.GetDataRequest("/r/a", False)),
            (OpCode.GET_CHILDREN, jute.GetChildrenRequest("/r/a", False)),
            (OpCode.GET_DATA, jute.GetDataRequest("/r/none", False))]))
        assert err == Err.OK
        assert [r[0] for r in body.results] == [OpCode.GET_DATA, OpCode.GET_CHILDREN, OpCode.ERROR]
        assert sorted(body.results[1][2].children) == ["b", "e2"]
        assert body.results[2][1] == Err.NO_NODE

        # addWatch: persistent-recursive fires for changes anywhere below and keeps firing.
        err, _ = c.call(OpCode.ADD_WATCH, jute.AddWatchRequest("/r", WatchMode.PERSISTENT_RECURSIVE))
        assert err == Err.OK
        zk.set("/r/a/b", b"1")
        assert c.wait_event() == (EventType.NODE_DATA_CHANGED, "/r/a/b")
        zk.create("/r/a/b/c", b"")
        assert c.wait_event() == (EventType.NODE_CREATED, "/r/a/b/c")
        zk.set("/r/a/b", b"2")
        assert c.wait_event() == (EventType.NODE_DATA_CHANGED, "/r/a/b")

        # checkWatches / removeWatches
        err, _ = c.call(OpCode.CHECK_WATCHES, jute.RemoveWatchesRequest("/r", WatcherType.ANY))
        assert err == Err.OK
        err, _ = c.call(OpCode.CHECK_WATCHES, jute.RemoveWatchesRequest("/r/a", WatcherType.DATA))
        assert err == Err.NO_WATCHER
        err, _ = c.call(OpCode.REMOVE_WATCHES, jute.RemoveWatchesRequest("/r", WatcherType.ANY))
        assert err == Err.OK
        err, _ = c.call(OpCode.REMOVE_WATCHES, jute.RemoveWatchesRequest("/r", WatcherType.ANY))
        assert err == Err.NO_WATCHER
        zk.set("/r/a/b", b"3")
        # Nothing more arrives: prove it with a round trip after the write.
        err, body = c.call(OpCode.GET_DATA, jute.GetDataRequest("/r/a/b", True))
        assert err == Err.OK and body.data == b"3"
        assert all(e[0] != EventType.NODE_DATA_CHANGED for e in c.events)

        # a one-shot data watch set by getData, removed with removeWatches(DATA)
        err, _ = c.call(OpCode.REMOVE_WATCHES, jute.RemoveWatchesRequest("/r/a/b", WatcherType.DATA))
        assert err == Err.OK
        zk.set("/r/a/b", b"4")
        assert c.call(OpCode.EXISTS, jute.ExistsRequest("/r", False))[0] == Err.OK
        assert c.events == []


@pytest.mark.timeout(30)
def test_kazoo_watches(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk, kazoo_client(zkfsd.hosts) as writer:
        got: list[tuple[str, str]] = []
        cond = threading.Condition()

        def record(event: Any) -> None:
            with cond:
                got.append((event.type, event.path))
                cond.notify_all()

        def expect(n: int) -> None:
            with cond:
                assert cond.wait_for(lambda: len(got) >= n, timeout=5), got

        assert zk.exists("/w", watch=record) is None
        writer.create("/w", b"")
        expect(1)
        zk.get("/w", watch=record)
        zk.get_children("/w", watch=record)
        writer.create("/w/c", b"")
        expect(2)
        writer.set("/w", b"x")
        expect(3)
        zk.get("/w", watch=record)
        zk.get_children("/w", watch=record)
        writer.delete("/w", recursive=True)
        expect(5)
        assert got[:3] == [("CREATED", "/w"), ("CHILD", "/w"), ("CHANGED", "/w")]
        # deleting /w/c fires the child watch on /w; deleting /w fires the data watch
        assert sorted(got[3:]) == [("CHILD", "/w"), ("DELETED", "/w")]


# ---------------------------------------------------------------------------------------------
# Sessions


@pytest.mark.timeout(30)
def test_pings_keep_a_session_alive(zkfsd: ZkfsdProcess) -> None:
    with raw_session(zkfsd, timeout_ms=800) as c, kazoo_client(zkfsd.hosts) as zk:
        assert c.timeout_ms == 800
        assert c.call(OpCode.CREATE, create_req("/alive", flags=1))[0] == Err.OK
        end = time.monotonic() + 2.4  # three session timeouts
        while time.monotonic() < end:
            c.ping()
            time.sleep(0.2)
        assert zk.exists("/alive") is not None
        assert c.call(OpCode.EXISTS, jute.ExistsRequest("/alive", False))[0] == Err.OK
    # kazoo pings on its own: a short-timeout kazoo session outlives many timeouts
    with kazoo_client(zkfsd.hosts, timeout=1.0) as zk:
        sid = zk.client_id[0]
        zk.create("/kazoo-alive", b"", ephemeral=True)
        time.sleep(2.5)
        assert zk.client_id[0] == sid and zk.exists("/kazoo-alive") is not None


@pytest.mark.timeout(30)
def test_resume_after_socket_cut_keeps_ephemerals_and_watches(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/data", b"v0")
        zk.create("/gone", b"")
        c = raw_session(zkfsd, timeout_ms=4000)
        assert c.call(OpCode.CREATE, create_req("/eph", flags=1))[0] == Err.OK
        assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/data", True))[0] == Err.OK
        assert c.call(OpCode.EXISTS, jute.ExistsRequest("/later", True))[0] == Err.NO_NODE
        assert c.call(OpCode.GET_CHILDREN, jute.GetChildrenRequest("/", True))[0] == Err.OK
        assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/gone", True))[0] == Err.OK
        assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/eph", True))[0] == Err.OK
        sid, passwd, seen = c.session_id, c.passwd, c.last_zxid
        c.close()  # cut: no closeSession

        # Changes while the client is away.
        zk.set("/data", b"v1")
        zk.create("/later", b"")
        zk.delete("/gone")
        assert zk.exists("/eph") is not None  # the session lives on

        c = RawClient(zkfsd.host, zkfsd.port)
        resp = c.connect(session_id=sid, passwd=passwd, last_zxid=seen)
        assert resp is not None and resp.session_id == sid and resp.timeout == 4000
        assert resp.passwd == passwd
        c.send(OpCode.SET_WATCHES, jute.SetWatches(seen, ["/data", "/gone", "/eph"], ["/later"],
                                                      ["/"]), xid=Xid.SET_WATCHES)
        header, _ = c.read_reply(OpCode.SET_WATCHES)
        assert header.xid == Xid.SET_WATCHES and header.err == Err.OK
        assert sorted(c.events) == sorted([
            (EventType.NODE_DATA_CHANGED, "/data"), (EventType.NODE_CREATED, "/later"),
            (EventType.NODE_CHILDREN_CHANGED, "/"), (EventType.NODE_DELETED, "/gone")])
        c.events.clear()
        # The unchanged watch on /eph was re-registered and still fires.
        zk.set("/eph", b"changed")
        assert c.wait_event() == (EventType.NODE_DATA_CHANGED, "/eph")
        # And the ephemeral still belongs to the resumed session.
        err, body = c.call(OpCode.EXISTS, jute.ExistsRequest("/eph", False))
        assert err == Err.OK and body.stat.ephemeral_owner == sid
        c.close()


@pytest.mark.timeout(30)
def test_wrong_password_is_refused(zkfsd: ZkfsdProcess) -> None:
    with raw_session(zkfsd) as c:
        sid, passwd = c.session_id, c.passwd
        with RawClient(zkfsd.host, zkfsd.port) as thief:
            resp = thief.connect(session_id=sid, passwd=bytes(16) if passwd != bytes(16) else b"x" * 16)
            assert resp is not None and resp.timeout == 0 and resp.session_id == 0
            assert thief.wait_closed()
        c.ping()  # the real owner is unaffected


@pytest.mark.timeout(30)
def test_kazoo_resumes_after_socket_cut(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts, timeout=4.0, connection_retry=FAST_RETRY) as zk, \
            kazoo_client(zkfsd.hosts) as writer:
        states: list[str] = []
        zk.add_listener(states.append)
        sid = zk.client_id[0]
        zk.create("/k-eph", b"", ephemeral=True)
        events: list[Any] = []
        writer.create("/k-data", b"0")
        zk.get("/k-data", watch=events.append)

        # The TCP connection dies under kazoo (shutdown, not close: kazoo's loop needs a valid fd).
        zk._connection._socket.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: KazooState.SUSPENDED in states, what="kazoo noticing the cut")
        wait_for(lambda: states[-1] == KazooState.CONNECTED, what="kazoo reconnecting")
        assert KazooState.LOST not in states
        assert zk.client_id[0] == sid
        assert writer.exists("/k-eph").ephemeralOwner == sid
        # kazoo 2.11 does not send setWatches: it drops its one-shot watches on a disconnect
        # and tells them with a NONE event (its recipes re-register). The raw-socket test above
        # covers the server's setWatches.
        wait_for(lambda: events, what="kazoo's NONE event")
        assert events[0].type == "NONE"


@pytest.mark.timeout(30)
def test_silent_session_expires_in_one_transaction(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as observer:
        observer.create("/svc", b"")
        c = raw_session(zkfsd, timeout_ms=1000)
        for i in range(5):
            assert c.call(OpCode.CREATE, create_req(f"/svc/n{i}", flags=1))[0] == Err.OK
        assert c.call(OpCode.CREATE, create_req("/solo", flags=1))[0] == Err.OK
        sid, passwd = c.session_id, c.passwd

        seen: list[tuple[str, list[str] | None]] = []
        done = threading.Event()

        def child_watch(event: Any) -> None:
            # Read the children as soon as the first event arrives: one transaction means the
            # reader can never observe a half-expired session.
            seen.append((event.type, observer.get_children("/svc")))
            done.set()

        deleted = threading.Event()
        assert len(observer.get_children("/svc", watch=child_watch)) == 5
        assert observer.exists("/solo", watch=lambda e: deleted.set()) is not None
        before = server_zxid(zkfsd)
        started = time.monotonic()

        # c stops talking. Within a couple of timeouts the server expires it.
        assert done.wait(10) and deleted.wait(5)
        elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 5, elapsed
        assert seen == [("CHILD", [])]
        assert observer.exists("/solo") is None
        # Exactly one transaction (the closeSession) removed all six ephemerals.
        assert server_zxid(zkfsd) - before == 1
        # The server closed the expired session's connection.
        assert c.wait_closed(5)
        c.close()

        # Reconnecting with the dead session's id is answered "expired": timeout 0.
        with RawClient(zkfsd.host, zkfsd.port) as late:
            resp = late.connect(session_id=sid, passwd=passwd)
            assert resp is not None and resp.timeout == 0 and resp.session_id == 0
            assert late.wait_closed()
        assert "expired" in zkfsd.log_text()


@pytest.mark.timeout(30)
def test_close_session_removes_ephemerals_at_once(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as observer:
        zk = kazoo_client(zkfsd.hosts)
        client = zk.__enter__()
        client.create("/bye", b"", ephemeral=True)
        client.create("/bye2", b"", ephemeral=True)
        events: list[Any] = []
        observer.exists("/bye", watch=events.append)
        zk.__exit__(None, None, None)  # kazoo sends closeSession and waits for its reply
        # No waiting: the reply to closeSession came after the deletion was applied.
        assert observer.exists("/bye") is None and observer.exists("/bye2") is None
        wait_for(lambda: events, what="deletion event")
        assert events[0].type == "DELETED"


@pytest.mark.timeout(40)
def test_session_survives_server_restart(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts, timeout=4.0, connection_retry=FAST_RETRY) as zk:
        states: list[str] = []
        zk.add_listener(states.append)
        sid = zk.client_id[0]
        zk.create("/persist", b"p")
        zk.create("/eph-restart", b"e", ephemeral=True)
        events: list[Any] = []
        zk.get("/persist", watch=events.append)

        zkfsd.restart()  # clean stop + start on the same data dir and port

        wait_for(lambda: states and states[-1] == KazooState.CONNECTED and
                 KazooState.SUSPENDED in states, timeout=10, what="reconnect after restart")
        assert KazooState.LOST not in states
        assert zk.client_id[0] == sid
        assert zk.get("/persist")[0] == b"p"
        assert zk.exists("/eph-restart").ephemeralOwner == sid


@pytest.mark.timeout(40)
def test_watches_survive_server_restart(zkfsd: ZkfsdProcess) -> None:
    """A raw client resumes its session after a restart and re-sets its watches (setWatches):
    changes made while it was away are reported, unchanged watches stay armed."""
    c = raw_session(zkfsd, timeout_ms=4000)
    assert c.call(OpCode.CREATE, create_req("/w1"))[0] == Err.OK
    assert c.call(OpCode.CREATE, create_req("/w2"))[0] == Err.OK
    assert c.call(OpCode.CREATE, create_req("/w-eph", flags=1))[0] == Err.OK
    assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/w1", True))[0] == Err.OK
    assert c.call(OpCode.GET_DATA, jute.GetDataRequest("/w2", True))[0] == Err.OK
    sid, passwd, seen = c.session_id, c.passwd, c.last_zxid
    c.close()
    zkfsd.restart()
    with kazoo_client(zkfsd.hosts) as other:
        other.set("/w1", b"changed while away")
        c = RawClient(zkfsd.host, zkfsd.port)
        resp = c.connect(session_id=sid, passwd=passwd, last_zxid=seen)
        assert resp is not None and resp.session_id == sid
        c.send(OpCode.SET_WATCHES, jute.SetWatches(seen, ["/w1", "/w2"], [], []),
               xid=Xid.SET_WATCHES)
        assert c.read_reply(OpCode.SET_WATCHES)[0].err == Err.OK
        assert c.events == [(EventType.NODE_DATA_CHANGED, "/w1")]
        c.events.clear()
        other.set("/w2", b"x")
        assert c.wait_event() == (EventType.NODE_DATA_CHANGED, "/w2")
        assert other.exists("/w-eph").ephemeralOwner == sid
        c.close()


@pytest.mark.timeout(40)
def test_session_of_absent_client_expires_after_restart(zkfsd: ZkfsdProcess) -> None:
    """A session whose client never comes back after a restart still expires (fresh timeout)."""
    c = raw_session(zkfsd, timeout_ms=1000)
    assert c.call(OpCode.CREATE, create_req("/orphan", flags=1))[0] == Err.OK
    c.close()
    zkfsd.kill9()
    zkfsd.start()
    with kazoo_client(zkfsd.hosts) as zk:
        wait_for(lambda: zk.exists("/orphan") is None, timeout=6, what="orphan expiry")


# ---------------------------------------------------------------------------------------------
# Ordering guarantees


@pytest.mark.timeout(30)
def test_pipelined_writes_then_read_sees_all(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/pipe", b"")
        for _round in range(3):
            creates = [zk.create_async(f"/pipe/n{_round}-{i:04d}", b"%d" % i) for i in range(300)]
            sets = [zk.set_async("/pipe", b"%d" % i) for i in range(100)]
            children = zk.get_children_async("/pipe")
            data = zk.get_async("/pipe")
            # The reads were sent last: they see every earlier write of this session.
            names = children.get(timeout=10)
            assert len([n for n in names if n.startswith(f"n{_round}-")]) == 300
            value, stat = data.get(timeout=10)
            assert value == b"99" and stat.version == 100 * (_round + 1)
            for r in creates + sets:
                r.get(timeout=10)


@pytest.mark.timeout(30)
def test_pipelined_raw_replies_in_order(zkfsd: ZkfsdProcess) -> None:
    with raw_session(zkfsd) as c:
        xids = [c.send(OpCode.CREATE, create_req(f"/o{i}")) for i in range(200)]
        xids.append(c.send(OpCode.GET_CHILDREN, jute.GetChildrenRequest("/", False)))
        got = [c.read_reply(OpCode.CREATE)[0] for _ in range(200)]
        header, body = c.read_reply(OpCode.GET_CHILDREN)
        assert [h.xid for h in got] + [header.xid] == xids
        assert all(h.err == 0 for h in got)
        zxids = [h.zxid for h in got]
        assert zxids == sorted(zxids) and len(set(zxids)) == 200
        assert len([n for n in body.children if n.startswith("o")]) == 200


@pytest.mark.timeout(30)
def test_watch_event_arrives_before_the_data_it_announces(zkfsd: ZkfsdProcess) -> None:
    with kazoo_client(zkfsd.hosts) as writer:
        writer.create("/ord", b"0")
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                writer.set("/ord", b"%d" % i)

        t = threading.Thread(target=write, daemon=True)
        with raw_session(zkfsd) as c:
            t.start()
            try:
                last_version = -1
                checked = 0
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    before = len(c.events)
                    err, body = c.call(OpCode.GET_DATA, jute.GetDataRequest("/ord", True))
                    assert err == Err.OK
                    version = body.stat.version
                    if last_version >= 0 and version > last_version:
                        # The watch set by the previous read must have fired before this reply.
                        checked += 1
                        assert len(c.events) > before, (last_version, version)
                    last_version = version
            finally:
                stop.set()
                t.join(5)
        assert checked > 10


@pytest.mark.timeout(30)
def test_java_style_prime_connection(zkfsd: ZkfsdProcess) -> None:
    """The Java client sends its ConnectRequest, auth packets, setWatches and queued requests in
    one go, before the ConnectResponse arrives; they are answered in order."""
    with kazoo_client(zkfsd.hosts) as zk:
        zk.create("/prime", b"p")
    with RawClient(zkfsd.host, zkfsd.port) as c:
        c.send_raw(
            jute.encode_connect_request(jute.ConnectRequest(0, 0, 4000, 0, bytes(16), False))
            + jute.encode_request(Xid.AUTH, OpCode.AUTH, jute.AuthPacket(0, "digest", b"u:p"))
            + jute.encode_request(Xid.SET_WATCHES, OpCode.SET_WATCHES,
                                  jute.SetWatches(0, ["/prime"], [], []))
            + jute.encode_request(1, OpCode.GET_DATA, jute.GetDataRequest("/prime", False)))
        resp = jute.decode_connect_response(c.recv_frame())
        assert resp.session_id != 0 and resp.timeout == 4000
        assert c.read_reply(OpCode.AUTH)[0].xid == Xid.AUTH
        # /prime changed after zxid 0: setWatches reports it at once
        header, _ = c.read_reply(OpCode.SET_WATCHES)
        assert header.xid == Xid.SET_WATCHES
        assert c.events == [(EventType.NODE_DATA_CHANGED, "/prime")]
        header, body = c.read_reply(OpCode.GET_DATA)
        assert header.xid == 1 and body.data == b"p"


@pytest.mark.timeout(30)
def test_client_from_the_future_is_refused(zkfsd: ZkfsdProcess) -> None:
    """A client that has seen a newer zxid than the server has must not get a session here."""
    with RawClient(zkfsd.host, zkfsd.port) as c:
        assert c.connect(last_zxid=1 << 60) is None
    assert int(re.search(r"zk_global_sessions\t(\d+)",
                         four_letter_word(zkfsd.host, zkfsd.port, "mntr")).group(1)) == 0
