"""zkfs.client against real servers (Apache ZooKeeper 3.8 as the reference).

Every scenario is a plain test function running `trio.run`; the `hosts` fixture is parametrized
over the server fixtures in SERVERS. Each test works below its own unique znode, so tests share
one server without interfering.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from zkfs import errors
from zkfs.client import (
    CREATOR_ALL_ACL,
    OPEN_ACL_UNSAFE,
    READ_ACL_UNSAFE,
    ClientState,
    Op,
    WatchedEvent,
    ZkClient,
    digest_id,
    make_acl,
    open_client,
    parse_connect_string,
)
from zkfs.constants import (
    CONTAINER_EPHEMERAL_OWNER,
    TTL_EPHEMERAL_OWNER_MASK,
    EventType,
    Perm,
    WatcherType,
    WatchMode,
)

# Server fixtures (from conftest.py) every server-facing test runs against.
SERVERS = ["apache_zk", "zkfsd"]

_unique = itertools.count()


@pytest.fixture(params=SERVERS)
def hosts(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param).hosts


@pytest.fixture
def base() -> str:
    """A znode path no other test uses (the server outlives single tests)."""
    return f"/client-test-{os.getpid()}-{next(_unique)}"


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def wait_state(client: ZkClient, state: ClientState, timeout: float = 20.0) -> None:
    await wait_for(lambda: client.state is state, timeout)


def types(events: list[WatchedEvent]) -> list[tuple[EventType, str]]:
    return [(e.type, e.path) for e in events]


class Proxy:
    """A TCP relay to the server that a test can cut: `cut()` kills every relayed connection
    and refuses new ones until `restore()`. Lets a test keep a client away from the server."""

    def __init__(self, target: str) -> None:
        (self.target,), _ = parse_connect_string(target)
        self.blocked = False
        self.port = 0
        self._scopes: set[trio.CancelScope] = set()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._relay, listeners, handler_nursery=nursery)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            if self.blocked:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await trio.open_tcp_stream(*self.target)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, scope)
                        nursery.start_soon(self._pump, server, client, scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def cut(self) -> None:
        self.blocked = True
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self.blocked = False


# --------------------------------------------------------------------------- no server needed


def test_parse_connect_string() -> None:
    assert parse_connect_string("a:1,b:2/app/x") == ([("a", 1), ("b", 2)], "/app/x")
    assert parse_connect_string("a,b:3") == ([("a", 2181), ("b", 3)], None)
    assert parse_connect_string("a:1/") == ([("a", 1)], None)
    assert parse_connect_string("[::1]:5,[::2]/r/") == ([("::1", 5), ("::2", 2181)], "/r")
    for bad in ("", "/x", "a:notaport", "a:1/x//y", "a:1/.."):
        with pytest.raises(ValueError):
            parse_connect_string(bad)


def test_error_for_maps_codes() -> None:
    e = errors.error_for(-101, "/x")
    assert isinstance(e, errors.NoNodeError) and e.path == "/x" and e.code == -101
    assert isinstance(errors.error_for(-112), errors.SessionExpiredError)
    odd = errors.error_for(-9999)
    assert type(odd) is errors.ZkError and odd.code == -9999
    assert issubclass(errors.ClientClosedError, errors.ConnectionLossError)


@pytest.mark.timeout(60)
def test_connect_timeout_raises_connection_loss() -> None:
    async def main() -> None:
        # A listener that never answers: TCP connects, the handshake never completes.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        with pytest.raises(errors.ConnectionLossError):
            async with open_client(f"127.0.0.1:{port}", session_timeout=4, connect_timeout=1):
                pytest.fail("must not connect")
        assert trio.current_time() - start < 3
        for listener in listeners:
            await listener.aclose()
    run(main)


# --------------------------------------------------------------------------- operations


@pytest.mark.timeout(60)
def test_every_operation(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk:
            assert zk.state is ClientState.CONNECTED and zk.session_id != 0
            assert len(zk.session_passwd) == 16 and zk.negotiated_timeout > 0
            assert await zk.create(base, None) == base
            assert await zk.get(base) == (None, (await zk.exists(base)))  # null data
            path, stat = await zk.create(f"{base}/f", b"v1", include_stat=True)
            assert path == f"{base}/f" and stat.version == 0 and stat.data_length == 2
            assert zk.last_zxid >= stat.czxid
            data, stat = await zk.get(f"{base}/f")
            assert data == b"v1" and stat.ephemeral_owner == 0
            await zk.create(f"{base}/empty")
            assert (await zk.get(f"{base}/empty"))[0] == b""
            stat = await zk.set(f"{base}/f", b"v2", version=0)
            assert stat.version == 1 and (await zk.get(f"{base}/f"))[0] == b"v2"
            assert (await zk.exists(f"{base}/f")) == stat
            assert await zk.exists(f"{base}/missing") is None

            seq = await zk.create(f"{base}/s-", b"", sequential=True)
            assert seq.startswith(f"{base}/s-") and len(seq) == len(f"{base}/s-") + 10
            eph = await zk.create(f"{base}/e", b"", ephemeral=True)
            assert (await zk.exists(eph)).ephemeral_owner == zk.session_id
            eph_seq = await zk.create(f"{base}/es-", b"", ephemeral=True, sequential=True)
            assert sorted(await zk.get_ephemerals(base)) == sorted([eph, eph_seq])

            children = await zk.get_children(base)
            assert sorted(children) == sorted(["f", "empty", seq.rsplit("/", 1)[1], "e",
                                               eph_seq.rsplit("/", 1)[1]])
            children2, pstat = await zk.get_children(base, include_stat=True)
            assert sorted(children2) == sorted(children) and pstat.num_children == 5
            assert await zk.get_all_children_number(base) == 5

            acl, astat = await zk.get_acl(f"{base}/f")
            assert acl == OPEN_ACL_UNSAFE and astat.aversion == 0
            astat = await zk.set_acl(f"{base}/f", READ_ACL_UNSAFE, version=0)
            assert astat.aversion == 1
            assert (await zk.get_acl(f"{base}/f"))[0] == READ_ACL_UNSAFE
            with pytest.raises(errors.NoAuthError):
                await zk.set(f"{base}/f", b"v3")

            assert await zk.sync(base) == base
            who = await zk.whoami()
            assert [(c.auth_scheme, c.user) for c in who] == [("ip", "127.0.0.1")]
            await zk.add_auth("digest", b"alice:secret")
            assert ("digest", "alice") in [(c.auth_scheme, c.user) for c in await zk.whoami()]

            await zk.delete(f"{base}/empty", version=0)
            assert await zk.exists(f"{base}/empty") is None
    run(main)


@pytest.mark.timeout(60)
def test_container_and_ttl_nodes(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk:
            await zk.create(base)
            path, stat = await zk.create(f"{base}/c", None, container=True, include_stat=True)
            # Apache ZooKeeper shows a container's ephemeralOwner as 0, not the marker.
            assert path == f"{base}/c" and stat.version == 0 and stat.ephemeral_owner in (
                0, CONTAINER_EPHEMERAL_OWNER)
            assert await zk.create(f"{base}/c2", container=True) == f"{base}/c2"
            with pytest.raises(errors.BadArgumentsError):
                await zk.create(f"{base}/x", ephemeral=True, container=True)
            with pytest.raises(errors.BadArgumentsError):
                await zk.create(f"{base}/x", ephemeral=True, ttl=1000)
            try:
                path = await zk.create(f"{base}/t-", b"x", ttl=60_000, sequential=True)
            except errors.UnimplementedError:
                pytest.skip("server has TTL nodes disabled")
            assert path.startswith(f"{base}/t-") and len(path) == len(f"{base}/t-") + 10
            # Apache ZooKeeper hides the TTL marker from Stat too; zkfsd may show it.
            owner = (await zk.exists(path)).ephemeral_owner
            assert owner == 0 or owner & TTL_EPHEMERAL_OWNER_MASK == TTL_EPHEMERAL_OWNER_MASK
    run(main)


@pytest.mark.timeout(60)
def test_errors_map_to_exceptions(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as other:
            missing = f"{base}/missing"
            for call in (zk.get(missing), zk.set(missing, b""), zk.delete(missing),
                         zk.get_children(missing), zk.get_acl(missing)):
                with pytest.raises(errors.NoNodeError) as info:
                    await call
                assert info.value.path == missing and info.value.code == -101
            await zk.create(base)
            await zk.create(f"{base}/a", b"x")
            with pytest.raises(errors.NodeExistsError):
                await zk.create(f"{base}/a")
            with pytest.raises(errors.NotEmptyError):
                await zk.delete(base)
            with pytest.raises(errors.BadVersionError):
                await zk.set(f"{base}/a", b"y", version=7)
            with pytest.raises(errors.BadVersionError):
                await zk.delete(f"{base}/a", version=7)
            eph = await zk.create(f"{base}/eph", ephemeral=True)
            with pytest.raises(errors.NoChildrenForEphemeralsError):
                await zk.create(f"{eph}/child")
            with pytest.raises(errors.NoNodeError):
                await zk.create(f"{base}/no/parent")
            with pytest.raises(errors.BadArgumentsError):
                await zk.create(f"{base}/a/")  # parent exists, so the path itself is refused
            with pytest.raises(errors.BadArgumentsError):
                await zk.get("relative")
            with pytest.raises(errors.InvalidACLError):
                await zk.create(f"{base}/noacl", acl=[])
            # Only alice may read this one.
            await zk.add_auth("digest", b"alice:pw")
            await zk.create(f"{base}/secret", b"s", acl=CREATOR_ALL_ACL)
            assert (await zk.get_acl(f"{base}/secret"))[0] == [
                make_acl("digest", digest_id("alice", "pw"), Perm.ALL)]
            with pytest.raises(errors.NoAuthError):
                await other.get(f"{base}/secret")
            await other.add_auth("digest", b"alice:pw")
            assert (await other.get(f"{base}/secret"))[0] == b"s"
            with pytest.raises(errors.NoWatcherError):
                await zk.remove_watches(f"{base}/a", WatcherType.DATA)
            # The session survives all of that.
            assert (await zk.get(f"{base}/a"))[0] == b"x"
    run(main)


@pytest.mark.timeout(60)
def test_auth_failure_is_terminal(hosts: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk:
            with pytest.raises(errors.AuthFailedError):
                await zk.add_auth("no-such-scheme", b"x")
            assert zk.state is ClientState.AUTH_FAILED
            with pytest.raises(errors.AuthFailedError):
                await zk.exists("/")
    run(main)


@pytest.mark.timeout(60)
def test_chroot(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as root:
            await root.create(base)
            async with open_client(hosts + base) as zk:
                assert zk.chroot == base
                assert await zk.create("/a", b"1") == "/a"
                path, _ = await zk.create("/s-", sequential=True, include_stat=True)
                assert path.startswith("/s-")
                assert (await root.get(f"{base}/a"))[0] == b"1"
                assert sorted(await zk.get_children("/")) == sorted(["a", path[1:]])
                await zk.create("/d", None)
                events: list[WatchedEvent] = []
                await zk.exists("/a", watch=events.append)
                await zk.get_children("/d", watch=events.append)
                # Not on /d itself: Apache ZooKeeper 3.8 forgets a session's one-shot child
                # watch on a path when a recursive watch is added on the same path.
                await zk.add_watch("/", WatchMode.PERSISTENT_RECURSIVE, events.append)
                await root.set(f"{base}/a", b"2")
                await root.create(f"{base}/d/b")
                await wait_for(lambda: len(events) >= 3)
                await zk.sync("/")  # anything still in flight would now have arrived
                # /a matches the exists watch and the recursive one, but it is one watcher, so
                # one call; ZooKeeper reports a creation before the parent's child change.
                assert types(events) == [
                    (EventType.NODE_DATA_CHANGED, "/a"),
                    (EventType.NODE_CREATED, "/d/b"),
                    (EventType.NODE_CHILDREN_CHANGED, "/d"),
                ]
                eph = await zk.create("/e", ephemeral=True)
                assert await zk.get_ephemerals() == [eph] == ["/e"]
                assert await zk.sync("/") == "/"
                results = await zk.multi([Op.create("/m"), Op.create("/m2", include_stat=True)])
                assert results[0] == "/m" and results[1][0] == "/m2"
                assert await zk.exists("/") is not None
                assert (await root.exists(f"{base}/m2")) is not None
    run(main)


# --------------------------------------------------------------------------- watches


@pytest.mark.timeout(60)
def test_one_shot_watches_fire_once_and_in_order(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as writer:
            await writer.create(base)
            await writer.create(f"{base}/d", b"0")
            events: list[WatchedEvent] = []
            await zk.get(f"{base}/d", watch=events.append)            # data watch
            assert await zk.exists(f"{base}/n", watch=events.append) is None  # exists watch
            await zk.get_children(base, watch=events.append)          # child watch
            await writer.set(f"{base}/d", b"1")
            await writer.set(f"{base}/d", b"2")  # the data watch is spent: no second event
            await writer.create(f"{base}/n")     # NodeCreated, then the child change of base
            await writer.create(f"{base}/m")     # the child watch is spent
            await writer.delete(f"{base}/n")     # no watch left on n
            await wait_for(lambda: len(events) >= 3)
            await zk.sync(base)
            assert types(events) == [
                (EventType.NODE_DATA_CHANGED, f"{base}/d"),
                (EventType.NODE_CREATED, f"{base}/n"),
                (EventType.NODE_CHILDREN_CHANGED, base),
            ]
            # Deletion reaches data and child watches of the node itself.
            events.clear()
            await zk.get(f"{base}/m", watch=events.append)
            await zk.get_children(f"{base}/m", watch=events.append)
            await writer.delete(f"{base}/m")
            await wait_for(lambda: len(events) >= 1)
            await zk.sync(base)
            assert types(events) == [(EventType.NODE_DELETED, f"{base}/m")]
            assert not zk._data_watches and not zk._exist_watches and not zk._child_watches
    run(main)


@pytest.mark.timeout(60)
def test_notification_precedes_later_reply(hosts: str, base: str) -> None:
    """A read that sees the new data returns only after the event announcing the change."""
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as writer:
            await writer.create(base, b"0")
            for i in range(1, 30):
                events: list[WatchedEvent] = []
                await zk.get(base, watch=events.append)
                await writer.set(base, str(i).encode())
                while (await zk.get(base))[0] != str(i).encode():
                    pass
                assert types(events) == [(EventType.NODE_DATA_CHANGED, base)]
    run(main)


@pytest.mark.timeout(60)
def test_persistent_and_recursive_watches(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as writer:
            await writer.create(base)
            await writer.create(f"{base}/p", b"")
            await writer.create(f"{base}/r", b"")
            persistent: list[WatchedEvent] = []
            recursive: list[WatchedEvent] = []
            await zk.add_watch(f"{base}/p", WatchMode.PERSISTENT, persistent.append)
            await zk.add_watch(f"{base}/r", WatchMode.PERSISTENT_RECURSIVE, recursive.append)
            for i in range(3):
                await writer.set(f"{base}/p", str(i).encode())
            await writer.create(f"{base}/p/c")
            await writer.create(f"{base}/r/a")
            await writer.create(f"{base}/r/a/b")
            await writer.set(f"{base}/r/a/b", b"x")
            await writer.delete(f"{base}/r/a/b")
            await writer.set(f"{base}/r", b"y")
            await wait_for(lambda: len(persistent) >= 4 and len(recursive) >= 5)
            await zk.sync(base)
            assert types(persistent) == [(EventType.NODE_DATA_CHANGED, f"{base}/p")] * 3 + [
                (EventType.NODE_CHILDREN_CHANGED, f"{base}/p")]
            # No NODE_CHILDREN_CHANGED for recursive watches.
            assert types(recursive) == [
                (EventType.NODE_CREATED, f"{base}/r/a"),
                (EventType.NODE_CREATED, f"{base}/r/a/b"),
                (EventType.NODE_DATA_CHANGED, f"{base}/r/a/b"),
                (EventType.NODE_DELETED, f"{base}/r/a/b"),
                (EventType.NODE_DATA_CHANGED, f"{base}/r"),
            ]
            # Removing them: one PERSISTENT_WATCH_REMOVED each, then silence.
            await zk.remove_watches(f"{base}/p", WatcherType.ANY)
            await zk.remove_watches(f"{base}/r", WatcherType.ANY, recursive.append)
            assert types(persistent[-1:]) == [(EventType.PERSISTENT_WATCH_REMOVED, f"{base}/p")]
            assert types(recursive[-1:]) == [(EventType.PERSISTENT_WATCH_REMOVED, f"{base}/r")]
            counts = len(persistent), len(recursive)
            await writer.set(f"{base}/p", b"z")
            await writer.create(f"{base}/r/z")
            await zk.sync(base)
            await trio.sleep(0.2)
            assert (len(persistent), len(recursive)) == counts
    run(main)


@pytest.mark.timeout(60)
def test_remove_watches(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as writer:
            await writer.create(base, b"")
            first: list[WatchedEvent] = []
            second: list[WatchedEvent] = []
            await zk.get(base, watch=first.append)
            await zk.exists(base, watch=second.append)
            # Removing one of two local watchers keeps the server's watch for the other.
            await zk.remove_watches(base, WatcherType.DATA, first.append)
            assert types(first) == [(EventType.DATA_WATCH_REMOVED, base)]
            with pytest.raises(errors.NoWatcherError):
                await zk.remove_watches(base, WatcherType.DATA, first.append)
            children: list[WatchedEvent] = []
            await zk.get_children(base, watch=children.append)
            await zk.remove_watches(base, WatcherType.CHILDREN)
            assert types(children) == [(EventType.CHILD_WATCH_REMOVED, base)]
            await writer.set(base, b"1")
            await writer.create(f"{base}/c")
            await wait_for(lambda: len(second) == 1)
            await zk.sync(base)
            assert types(second) == [(EventType.NODE_DATA_CHANGED, base)]
            assert len(first) == 1 and len(children) == 1
            with pytest.raises(errors.NoWatcherError):
                await zk.remove_watches(base, WatcherType.ANY)
    run(main)


# --------------------------------------------------------------------------- multi


@pytest.mark.timeout(60)
def test_multi(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk:
            await zk.create(base)
            results = await zk.multi([
                Op.create(f"{base}/a", b"1"),
                Op.create(f"{base}/s-", sequential=True),
                Op.set(f"{base}/a", b"2", version=0),
                Op.check(f"{base}/a", 1),
                Op.create(f"{base}/b"),
                Op.delete(f"{base}/b"),
            ])
            assert results[0] == f"{base}/a" and results[1].startswith(f"{base}/s-")
            assert results[2].version == 1 and results[3:] == [None, f"{base}/b", None]
            assert (await zk.get(f"{base}/a"))[0] == b"2"

            with pytest.raises(errors.BadVersionError) as info:
                await zk.multi([
                    Op.create(f"{base}/c"),
                    Op.check(f"{base}/a", 0),
                    Op.delete(f"{base}/a"),
                ])
            results = info.value.results
            assert results is not None and len(results) == 3
            assert results[0] is None
            assert isinstance(results[1], errors.BadVersionError)
            assert isinstance(results[2], errors.RuntimeInconsistencyError)
            # All or nothing.
            assert await zk.exists(f"{base}/c") is None
            assert await zk.exists(f"{base}/a") is not None
            with pytest.raises(errors.NodeExistsError):
                await zk.multi([Op.create(f"{base}/a")])
            assert await zk.multi([]) == []

            reads = await zk.multi_read([Op.get(f"{base}/a"), Op.get_children(base),
                                         Op.get(f"{base}/missing")])
            assert reads[0][0] == b"2" and reads[0][1].version == 1
            assert "a" in reads[1]
            assert isinstance(reads[2], errors.NoNodeError)
    run(main)


@pytest.mark.timeout(60)
def test_read_many_pipelines_independent_reads(hosts: str, base: str) -> None:
    """read_many: exists/get/get_children in one batch, a result (or the error) per op, in
    order; a big batch comes back whole; the session goes on after it."""
    async def main() -> None:
        async with open_client(hosts) as zk:
            await zk.create(base, None)
            await zk.create(f"{base}/f", b"data")
            await zk.create(f"{base}/e", b"")
            await zk.create(f"{base}/secret", b"", acl=[make_acl("digest", digest_id("u", "p"),
                                                               Perm.ALL)])
            got = await zk.read_many([Op.exists(f"{base}/f"), Op.exists(f"{base}/missing"),
                                      Op.get(f"{base}/e"), Op.get(base),
                                      Op.get(f"{base}/missing"), Op.get(f"{base}/secret"),
                                      Op.get_children(base)])
            assert got[0].data_length == 4 and got[1] is None
            assert got[2][0] == b"" and got[3][0] is None and got[3][1].num_children == 3
            assert isinstance(got[4], errors.NoNodeError)
            assert isinstance(got[5], errors.NoAuthError)
            assert sorted(got[6]) == ["e", "f", "secret"]
            assert await zk.read_many([]) == []
            with pytest.raises(errors.BadArgumentsError):
                await zk.read_many([Op.delete(f"{base}/f")])
            many = await zk.read_many([Op.exists(f"{base}/{'f' if i % 2 else 'x'}")
                                       for i in range(3000)])
            assert [s is not None for s in many] == [bool(i % 2) for i in range(3000)]
            assert (await zk.get(f"{base}/f"))[0] == b"data"
    run(main)


@pytest.mark.timeout(60)
def test_send_reads_answers_by_range(hosts: str, base: str) -> None:
    """send_reads: all sent at once, results awaited by range (the first chunk usable while
    the rest are answered), in order, the same as read_many's."""
    async def main() -> None:
        async with open_client(hosts) as zk:
            await zk.create(base, None)
            for i in range(10):
                await zk.create(f"{base}/n{i}", b"x" * i)
            ops = [Op.exists(f"{base}/n{i % 12}") for i in range(1000)]
            reads = await zk.send_reads(ops, chunk=100)
            assert len(reads) == 1000
            first = await reads.results(0, 3)
            assert [s.data_length for s in first] == [0, 1, 2]
            assert await reads.results(5, 5) == []
            whole = await reads.results(0, 1000)
            assert [s is not None for s in whole] == [i % 12 < 10 for i in range(1000)]
            assert whole == await zk.read_many(ops)
            assert len(await zk.send_reads([])) == 0
    run(main)


# --------------------------------------------------------------------------- sessions


@pytest.mark.timeout(60)
def test_ephemeral_disappears_after_close(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as observer:
            await observer.create(base)
            gone: list[WatchedEvent] = []
            async with open_client(hosts) as zk:
                await zk.create(f"{base}/e", b"", ephemeral=True)
                await observer.exists(f"{base}/e", watch=gone.append)
                states = zk.subscribe_state()
            assert zk.state is ClientState.CLOSED
            assert [s async for s in states] == [ClientState.CLOSED]
            with pytest.raises(errors.ClientClosedError):
                await zk.exists("/")
            await wait_for(lambda: len(gone) == 1)
            assert types(gone) == [(EventType.NODE_DELETED, f"{base}/e")]
            assert await observer.exists(f"{base}/e") is None
    run(main)


@pytest.mark.timeout(60)
def test_session_resumes_after_dropped_connection(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk, open_client(hosts) as writer:
            await zk.create(base, b"0")
            await zk.create(f"{base}/e", ephemeral=True)
            await zk.add_auth("digest", b"bob:pw")
            events: list[WatchedEvent] = []
            recursive: list[WatchedEvent] = []
            await zk.get(base, watch=events.append)
            await zk.add_watch(base, WatchMode.PERSISTENT_RECURSIVE, recursive.append)
            states = zk.subscribe_state()
            session = zk.session_id
            zk._drop_connection()
            # Requests made while reconnecting wait for the new connection.
            assert (await zk.get(base))[0] == b"0"
            assert [states.receive_nowait(), states.receive_nowait()] == [
                ClientState.SUSPENDED, ClientState.CONNECTED]
            assert zk.session_id == session
            assert await writer.exists(f"{base}/e") is not None
            assert ("digest", "bob") in [(c.auth_scheme, c.user) for c in await zk.whoami()]
            await writer.set(base, b"1")
            await writer.create(f"{base}/x")
            await wait_for(lambda: len(events) == 1 and len(recursive) == 2)
            assert types(events) == [(EventType.NODE_DATA_CHANGED, base)]
            assert types(recursive) == [(EventType.NODE_DATA_CHANGED, base),
                                        (EventType.NODE_CREATED, f"{base}/x")]
    run(main)


@pytest.mark.timeout(60)
def test_changes_while_disconnected_are_reported(hosts: str, base: str) -> None:
    async def main() -> None:
        proxy = Proxy(hosts)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            async with open_client(proxy.hosts) as zk, open_client(hosts) as writer:
                await writer.create(base, b"0")
                await writer.create(f"{base}/gone")
                data: list[WatchedEvent] = []
                created: list[WatchedEvent] = []
                deleted: list[WatchedEvent] = []
                await zk.get(base, watch=data.append)
                await zk.exists(f"{base}/new", watch=created.append)
                await zk.exists(f"{base}/gone", watch=deleted.append)
                proxy.cut()
                await wait_state(zk, ClientState.SUSPENDED)
                await writer.set(base, b"1")
                await writer.create(f"{base}/new")
                await writer.delete(f"{base}/gone")
                proxy.restore()
                await wait_state(zk, ClientState.CONNECTED)
                await wait_for(lambda: len(data) + len(created) + len(deleted) == 3)
                assert types(data) == [(EventType.NODE_DATA_CHANGED, base)]
                assert types(created) == [(EventType.NODE_CREATED, f"{base}/new")]
                assert types(deleted) == [(EventType.NODE_DELETED, f"{base}/gone")]
            nursery.cancel_scope.cancel()
    run(main)


@pytest.mark.timeout(90)
def test_requests_time_out_while_disconnected_then_session_expires(hosts: str,
                                                                   base: str) -> None:
    async def main() -> None:
        proxy = Proxy(hosts)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            async with open_client(hosts) as observer:
                await observer.create(base)
                async with open_client(proxy.hosts, session_timeout=4) as zk:
                    timeout = zk.negotiated_timeout
                    await zk.create(f"{base}/e", ephemeral=True)
                    seen: list[ClientState] = []
                    zk.add_state_listener(seen.append)
                    proxy.cut()
                    await wait_state(zk, ClientState.SUSPENDED)
                    start = trio.current_time()
                    with pytest.raises(errors.ConnectionLossError):
                        await zk.get(base)
                    waited = trio.current_time() - start
                    assert timeout * 0.5 <= waited <= timeout * 1.5 + 1
                    assert zk.state is ClientState.SUSPENDED
                    # Let the server expire the session, then let the client talk to it again.
                    with trio.fail_after(timeout * 3 + 10):
                        while await observer.exists(f"{base}/e") is not None:
                            await trio.sleep(0.1)
                    proxy.restore()
                    await wait_state(zk, ClientState.EXPIRED)
                    assert seen == [ClientState.SUSPENDED, ClientState.EXPIRED]
                    with pytest.raises(errors.SessionExpiredError):
                        await zk.get(base)
                    with pytest.raises(errors.SessionExpiredError):
                        async with open_client(hosts, session_id=zk.session_id,
                                               session_passwd=zk.session_passwd):
                            pass
            nursery.cancel_scope.cancel()
    run(main)


@pytest.mark.timeout(60)
def test_cancelled_and_concurrent_requests(hosts: str, base: str) -> None:
    async def main() -> None:
        async with open_client(hosts) as zk:
            await zk.create(base)
            # A request abandoned by its caller must not disturb the session.
            with trio.move_on_after(0):
                await zk.get(base, watch=lambda e: pytest.fail("abandoned watch fired"))
            created: list[str] = []

            async def make(i: int) -> None:
                created.append(await zk.create(f"{base}/n{i:03d}", str(i).encode()))
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(make, i)
            assert len(created) == 200
            assert await zk.get_all_children_number(base) == 200
            data = await zk.multi_read([Op.get(p) for p in sorted(created)])
            assert [d for d, _ in data] == [str(i).encode() for i in range(200)]
            await zk.set(base, b"changed")
    run(main)
