"""Async ZooKeeper client on trio: one session, pipelined requests, watches, reconnects.

Usage::

    async with open_client("h1:2181,h2:2181/app") as zk:
        await zk.create("/jobs", None)
        data, stat = await zk.get("/jobs/1", watch=on_change)

Structure (all tasks live in the nursery of `open_client`):

* the *supervisor* task (`ZkClient._run`) owns the connection: it connects (round-robin over the
  hosts), runs one nursery per connection with a reader, a writer and a pinger, and reconnects
  with the same session id/password when that connection dies;
* the *reader* is the only task that receives: replies and watch notifications are handled in
  wire order, and watch callbacks are called synchronously there. A notification is therefore
  always delivered before the reply of any later request is handed back (ZooKeeper's ordering
  guarantee), but it also means **callbacks must not block**: hand the event over with
  `trio.MemorySendChannel.send_nowait` (or `trio.lowlevel.spawn_system_task`) and return;
* the *writer* is the only task that sends, draining an unbounded channel of frames: a caller
  queues its frame with `send_nowait`, so a cancelled caller can never leave half a frame on
  the socket.

Watches are ZooKeeper's: one-shot data/exists/child watches fire once; persistent and
persistent-recursive watches (`add_watch`) fire until removed. All outstanding watches are
re-registered (setWatches2, relative to the last zxid seen) after a reconnect, so changes made
while disconnected are still reported.

Not implemented: SASL, reconfig, searching for a read-write server while connected read-only.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import logging
import math
import random
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, overload

import trio

from zkfs import jute
from zkfs.constants import (
    CreateMode,
    Err,
    EventType,
    KeeperState,
    OpCode,
    Perm,
    WatcherType,
    WatchMode,
    Xid,
)
from zkfs.errors import (
    AuthFailedError,
    BadArgumentsError,
    ClientClosedError,
    ConnectionLossError,
    MarshallingError,
    NoWatcherError,
    SessionExpiredError,
    ZkError,
    error_for,
)
from zkfs.jute import ACL, Id, Stat
from zkfs.paths import is_within, lineage

__all__ = [
    "DEFAULT_PORT", "ClientState", "WatchedEvent", "WatchCallback", "Op", "ZkClient",
    "PendingReads",
    "open_client", "parse_connect_string", "make_acl", "digest_id",
    "OPEN_ACL_UNSAFE", "READ_ACL_UNSAFE", "CREATOR_ALL_ACL", "ACL", "Id", "Stat",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 2181
# ZooKeeper's protocol version in ConnectRequest; every 3.x server speaks 0.
_PROTOCOL_VERSION = 0
# Like the Java client: bound one setWatches2 frame well below the server's jute.maxbuffer.
_SET_WATCHES_MAX_BYTES = 128 * 1024
_RECV_BYTES = 256 * 1024
_MAX_XID = (1 << 31) - 1


def make_acl(scheme: str, credential: str, perms: int = Perm.ALL) -> ACL:
    """An ACL entry, e.g. `make_acl("digest", digest_id("bob", "pw"), Perm.READ)`."""
    return ACL(int(perms), Id(scheme, credential))


def digest_id(username: str, password: str) -> str:
    """The id of a digest ACL for `username:password` (what `add_auth("digest", ...)` proves)."""
    raw = hashlib.sha1(f"{username}:{password}".encode()).digest()
    return f"{username}:{base64.b64encode(raw).decode()}"


OPEN_ACL_UNSAFE: list[ACL] = [make_acl("world", "anyone", Perm.ALL)]
READ_ACL_UNSAFE: list[ACL] = [make_acl("world", "anyone", Perm.READ)]
# "auth" means: every identity this session has authenticated as.
CREATOR_ALL_ACL: list[ACL] = [make_acl("auth", "", Perm.ALL)]


class ClientState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: The connection is lost but the session may still be alive; the client is reconnecting.
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    #: The server rejected our credentials (it closes the connection); terminal, like Java's.
    AUTH_FAILED = "auth_failed"
    CLOSED = "closed"

    @property
    def is_terminal(self) -> bool:
        return self in (ClientState.EXPIRED, ClientState.AUTH_FAILED, ClientState.CLOSED)


@dataclass(frozen=True)
class WatchedEvent:
    """A watch notification; `path` is relative to the client's chroot."""
    type: EventType
    state: KeeperState
    path: str


WatchCallback = Callable[[WatchedEvent], None]
StateCallback = Callable[[ClientState], None]


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host.partition("%")[0])  # a zone (fe80::1%eth0) is allowed
        return True
    except ValueError:
        return False


def parse_connect_string(connect: str) -> tuple[list[tuple[str, int]], str | None]:
    """Split `h1:p1,h2:p2/chroot` into ([(host, port), ...], chroot or None).

    Ports default to 2181; IPv6 literals go in brackets (`[::1]:2181`). A chroot of "/" is None.
    """
    hosts_part, slash, chroot_part = connect.partition("/")
    chroot: str | None = None
    if slash:
        chroot = ("/" + chroot_part).rstrip("/") or None
        if chroot is not None and any(c in ("", ".", "..") for c in chroot.split("/")[1:]):
            raise ValueError(f"invalid chroot in connect string: {connect!r}")
    hosts: list[tuple[str, int]] = []
    for item in hosts_part.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid host in connect string: {item!r}")
            port_text = rest[1:]
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"invalid port in connect string: {item!r}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"invalid host in connect string: {item!r}")
        if ":" in host and not _is_ipv6(host):
            # `::::` or `a:b:c`: not an address, and no DNS name has colons. Failing here
            # makes it a usage error at once instead of a connect timeout.
            raise ValueError(f"invalid host in connect string: {item!r}")
        hosts.append((host, port))
    if not hosts:
        raise ValueError(f"no hosts in connect string: {connect!r}")
    return hosts, chroot


def _create_mode(ephemeral: bool, sequential: bool, container: bool,
                 ttl: int | None) -> CreateMode:
    if container:
        if ephemeral or sequential or ttl is not None:
            raise BadArgumentsError("a container node cannot be ephemeral, sequential or TTL")
        return CreateMode.CONTAINER
    if ttl is not None:
        if ephemeral:
            raise BadArgumentsError("a TTL node cannot be ephemeral")
        return (CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL if sequential
                else CreateMode.PERSISTENT_WITH_TTL)
    return CreateMode(int(ephemeral) | (int(sequential) << 1))


@dataclass(frozen=True)
class Op:
    """One operation of `ZkClient.multi` / `multi_read`; build it with the static methods."""
    code: OpCode
    path: str
    data: bytes | None = None
    version: int = -1
    acl: tuple[ACL, ...] | None = None
    flags: int = 0
    ttl: int | None = None

    @staticmethod
    def create(path: str, data: bytes | None = b"", *, acl: Sequence[ACL] | None = None,
               ephemeral: bool = False, sequential: bool = False, container: bool = False,
               ttl: int | None = None, include_stat: bool = False) -> Op:
        mode = _create_mode(ephemeral, sequential, container, ttl)
        if container:
            code = OpCode.CREATE_CONTAINER
        elif ttl is not None:
            code = OpCode.CREATE_TTL
        else:
            code = OpCode.CREATE2 if include_stat else OpCode.CREATE
        return Op(code, path, data, acl=tuple(acl) if acl is not None else None,
                  flags=int(mode), ttl=ttl)

    @staticmethod
    def delete(path: str, version: int = -1) -> Op:
        return Op(OpCode.DELETE, path, version=version)

    @staticmethod
    def set(path: str, data: bytes | None, version: int = -1) -> Op:
        return Op(OpCode.SET_DATA, path, data, version=version)

    @staticmethod
    def check(path: str, version: int) -> Op:
        return Op(OpCode.CHECK, path, version=version)

    @staticmethod
    def get(path: str) -> Op:
        """multi_read and read_many: (data, stat)."""
        return Op(OpCode.GET_DATA, path)

    @staticmethod
    def exists(path: str) -> Op:
        """read_many only (ZooKeeper's multiRead has no exists): the Stat, or None."""
        return Op(OpCode.EXISTS, path)

    @staticmethod
    def get_children(path: str) -> Op:
        """multi_read only: list of child names."""
        return Op(OpCode.GET_CHILDREN, path)


# A reply hook run by the reader, in wire order, before the caller is woken: (err, record).
_ReplyHook = Callable[[int, "jute.Record | None"], None]


class _Pending:
    """One outstanding request: filled in by the reader (or failed by the supervisor)."""
    __slots__ = ("op", "on_reply", "event", "err", "record", "error", "abandoned")

    def __init__(self, op: int, on_reply: _ReplyHook | None = None) -> None:
        self.op = op
        self.on_reply = on_reply
        self.event = trio.Event()
        self.err = 0
        self.record: jute.Record | None = None
        self.error: BaseException | None = None
        # Set when the caller was cancelled: its reply must not register watches for nobody.
        self.abandoned = False

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class _Batch:
    """Wakes the caller of `ZkClient.read_many` once all its requests are answered: one
    Event for the batch instead of one per request (and no task per request)."""
    __slots__ = ("left", "done")

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = trio.Event()

    def set(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


class _BatchSlot(_Pending):
    """One request of a batch: `event` is its own completion flag, counted into the batch."""
    __slots__ = ("batch", "finished")

    def __init__(self, op: int, batch: _Batch) -> None:
        # No trio.Event of its own (what makes a request cheap); see `set`/`is_set`.
        self.op = op
        self.on_reply = None
        self.err = 0
        self.record = None
        self.error = None
        self.abandoned = False
        self.batch = batch
        self.finished = False
        self.event = self  # type: ignore[assignment]

    def is_set(self) -> bool:
        return self.finished

    def set(self) -> None:
        if not self.finished:
            self.finished = True
            self.batch.set()


class PendingReads:
    """Reads sent by `ZkClient.send_reads`, answered chunk by chunk."""

    def __init__(self, client: ZkClient, ops: list[Op], slots: list[_BatchSlot],
                 batches: list[_Batch], chunk: int) -> None:
        self._client = client
        self._ops = ops
        self._slots = slots
        self._batches = batches
        self._chunk = chunk

    def __len__(self) -> int:
        return len(self._ops)

    async def results(self, start: int, stop: int) -> list[Any]:
        """The results of ops[start:stop] (as `ZkClient.read_many`'s), once their replies
        are in; raises what ended the connection if it was lost before they came (the caller
        sends them again)."""
        if start >= stop:
            return []
        for b in range(start // self._chunk, (stop - 1) // self._chunk + 1):
            await self._batches[b].done.wait()
        out: list[Any] = []
        for op, slot in zip(self._ops[start:stop], self._slots[start:stop]):
            if slot.error is not None:
                raise slot.error
            err, record = slot.err, slot.record
            if op.code == OpCode.EXISTS and err == Err.NO_NODE:
                out.append(None)
            elif err != Err.OK:
                out.append(error_for(err, op.path))
            elif isinstance(record, jute.ExistsResponse):
                out.append(record.stat)
            else:
                out.append(self._client._op_result(op, op.code, err, record))
        return out


class _Connection:
    """One TCP connection of the session; lives exactly as long as its nursery."""

    def __init__(self, stream: trio.SocketStream, decoder: jute.FrameDecoder,
                 timeout: float, read_only: bool) -> None:
        self.stream = stream
        self.decoder = decoder
        self.timeout = timeout
        self.read_only = read_only
        self.pending: dict[int, _Pending] = {}
        # Auth replies all carry xid -4 and come back in the order the packets were sent.
        self.auth_waiters: deque[_Pending] = deque()
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](math.inf)
        self.last_send = trio.current_time()
        self.cancel_scope = trio.CancelScope()

    def send(self, frame: bytes) -> None:
        # Never blocks (unbounded channel), so queueing a frame is atomic w.r.t. cancellation.
        self.send_channel.send_nowait(frame)
        self.last_send = trio.current_time()

    def fail_all(self, error_factory: Callable[[], BaseException]) -> None:
        waiters = list(self.pending.values()) + list(self.auth_waiters)
        self.pending.clear()
        self.auth_waiters.clear()
        for p in waiters:
            p.fail(error_factory())


class ZkClient:
    """A ZooKeeper session. Get one from `open_client`; do not construct it directly.

    Paths given to and returned by every method are relative to the chroot of the connect
    string. Server errors are raised as `zkfs.errors.ZkError` subclasses; a request made while
    disconnected waits up to the session timeout for a reconnect, then raises
    ConnectionLossError; requests in flight when the connection drops raise it at once (they may
    or may not have been applied).
    """

    def __init__(self, hosts: list[tuple[str, int]], chroot: str | None, *,
                 session_timeout: float, read_only: bool,
                 auth: Iterable[tuple[str, bytes]],
                 session_id: int | None, session_passwd: bytes | None) -> None:
        if session_timeout <= 0:
            raise ValueError("session_timeout must be positive")
        self._hosts = list(hosts)
        # Spread clients of the same ensemble over its members, as the Java client does.
        self._host_index = random.randrange(len(self._hosts))
        self._chroot = chroot
        self._requested_timeout = session_timeout
        self._read_only_wanted = read_only
        self._auth: list[tuple[str, bytes]] = [(s, bytes(c)) for s, c in auth]
        self._session_id = session_id or 0
        self._passwd = session_passwd if session_passwd is not None else b"\x00" * 16
        self._timeout = session_timeout  # negotiated, seconds
        self._last_zxid = 0
        self._xid = 0
        self._state = ClientState.CONNECTING
        self._state_changed = trio.Event()
        self._state_listeners: list[StateCallback] = []
        self._state_channels: list[trio.MemorySendChannel[ClientState]] = []
        self._conn: _Connection | None = None
        self._closing = False
        self._run_scope = trio.CancelScope()
        # Keys are server paths (chroot included): that is what notifications carry.
        self._data_watches: dict[str, list[WatchCallback]] = {}
        self._exist_watches: dict[str, list[WatchCallback]] = {}
        self._child_watches: dict[str, list[WatchCallback]] = {}
        self._persistent_watches: dict[str, list[WatchCallback]] = {}
        self._recursive_watches: dict[str, list[WatchCallback]] = {}

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def session_id(self) -> int:
        return self._session_id

    @property
    def session_passwd(self) -> bytes:
        return self._passwd

    @property
    def negotiated_timeout(self) -> float:
        """Session timeout granted by the server, in seconds."""
        return self._timeout

    @property
    def last_zxid(self) -> int:
        """Highest zxid seen in a reply: the connect request tells the server about it."""
        return self._last_zxid

    @property
    def read_only(self) -> bool:
        """True while connected to a server in read-only mode."""
        return self._conn is not None and self._conn.read_only

    @property
    def chroot(self) -> str | None:
        return self._chroot

    # ------------------------------------------------------------------ state notification

    def add_state_listener(self, callback: StateCallback) -> None:
        """Call `callback(new_state)` on every state change (synchronously: must not block)."""
        self._state_listeners.append(callback)

    def remove_state_listener(self, callback: StateCallback) -> None:
        self._state_listeners.remove(callback)

    def subscribe_state(self) -> trio.MemoryReceiveChannel[ClientState]:
        """A channel receiving every later state change; closed after a terminal state."""
        send, receive = trio.open_memory_channel[ClientState](math.inf)
        if self._state.is_terminal:
            send.close()
        else:
            self._state_channels.append(send)
        return receive

    def _set_state(self, state: ClientState) -> None:
        if state is self._state or self._state.is_terminal:
            return
        log.debug("session 0x%x: %s -> %s", self._session_id, self._state.name, state.name)
        self._state = state
        changed, self._state_changed = self._state_changed, trio.Event()
        changed.set()
        for callback in list(self._state_listeners):
            try:
                callback(state)
            except Exception:
                log.exception("state listener %r failed", callback)
        for channel in list(self._state_channels):
            try:
                channel.send_nowait(state)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._state_channels.remove(channel)
        if state.is_terminal:
            for channel in self._state_channels:
                channel.close()
            self._state_channels.clear()

    def _finish(self, state: ClientState, error_factory: Callable[[], BaseException]) -> None:
        """Enter a terminal state: nothing will be sent on this session again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail_all(error_factory)
            conn.cancel_scope.cancel()
        for table in self._watch_tables():
            table.clear()
        self._set_state(state)
        self._run_scope.cancel()

    # ------------------------------------------------------------------ paths

    def _full(self, path: str) -> str:
        if not isinstance(path, str) or not path.startswith("/"):
            raise BadArgumentsError(f"path must be an absolute str: {path!r}", path=str(path))
        if self._chroot is None:
            return path
        return self._chroot if path == "/" else self._chroot + path

    def _strip(self, server_path: str) -> str:
        root = self._chroot
        if root is None:
            return server_path
        if server_path == root:
            return "/"
        if server_path.startswith(root + "/"):
            return server_path[len(root):]
        # Outside the chroot: cannot be expressed relative to it, so leave it whole (as Java).
        return server_path

    # ------------------------------------------------------------------ connection machinery

    def _next_host(self) -> tuple[str, int]:
        host = self._hosts[self._host_index]
        self._host_index = (self._host_index + 1) % len(self._hosts)
        return host

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervisor: connect, serve the connection, reconnect; ends in a terminal state."""
        started = False
        failures = 0
        with self._run_scope:
            while not self._state.is_terminal and not self._closing:
                host, port = self._next_host()
                # As Java: one try may use a fair share of the session timeout.
                attempt_timeout = max(self._requested_timeout / len(self._hosts), 1.0)
                try:
                    conn = await self._handshake(host, port, attempt_timeout)
                except SessionExpiredError:
                    self._finish(ClientState.EXPIRED, SessionExpiredError)
                    if not started:
                        raise SessionExpiredError("session expired (or bad password)") from None
                    return
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, jute.JuteError,
                        ConnectionLossError) as exc:
                    log.debug("connecting to %s:%s failed: %r", host, port, exc)
                    failures += 1
                    if failures % len(self._hosts) == 0:
                        # A whole round failed: back off (bounded, jittered) before the next.
                        rounds = failures // len(self._hosts)
                        await trio.sleep(min(0.05 * 2 ** rounds, 1.0) * (0.5 + random.random()))
                    continue
                failures = 0
                await self._serve(conn, task_status if not started else None)
                started = True

    async def _handshake(self, host: str, port: int, timeout: float) -> _Connection:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            try:
                request = jute.ConnectRequest(
                    _PROTOCOL_VERSION, self._last_zxid, int(self._requested_timeout * 1000),
                    self._session_id, self._passwd, self._read_only_wanted)
                await stream.send_all(jute.encode_connect_request(request))
                decoder = jute.FrameDecoder()
                while (payload := decoder.next_frame()) is None:
                    data = await stream.receive_some(_RECV_BYTES)
                    if not data:
                        raise ConnectionLossError("server closed the connection during handshake")
                    decoder.feed(data)
                response = jute.decode_connect_response(payload)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        if response.timeout <= 0:
            await trio.aclose_forcefully(stream)
            raise SessionExpiredError()
        self._session_id = response.session_id
        self._passwd = response.passwd or b"\x00" * 16
        self._timeout = response.timeout / 1000
        log.debug("connected to %s:%s, session 0x%x, timeout %.3fs%s", host, port,
                  self._session_id, self._timeout, " (read-only)" if response.read_only else "")
        return _Connection(stream, decoder, self._timeout, response.read_only)

    def _prime(self, conn: _Connection) -> None:
        """Queue auth, then watch re-registration, before any caller can use `conn`."""
        for scheme, credential in self._auth:
            # Nobody awaits these; the placeholder keeps auth replies matched to packets.
            placeholder = _Pending(OpCode.AUTH)
            placeholder.abandoned = True
            conn.auth_waiters.append(placeholder)
            conn.send(jute.encode_request(Xid.AUTH, OpCode.AUTH,
                                          jute.AuthPacket(0, scheme, credential)))
        tables = [sorted(t) for t in self._watch_tables()]
        if not any(tables):
            return
        # Split like the Java client so no frame nears the server's maximum.
        batch: list[list[str]] = [[] for _ in tables]
        size = 0
        for i, paths in enumerate(tables):
            for path in paths:
                batch[i].append(path)
                size += len(path.encode()) + 4
                if size >= _SET_WATCHES_MAX_BYTES:
                    self._send_set_watches(conn, batch)
                    batch = [[] for _ in tables]
                    size = 0
        if any(batch):
            self._send_set_watches(conn, batch)

    def _send_set_watches(self, conn: _Connection, batch: list[list[str]]) -> None:
        data, exist, child, persistent, recursive = batch
        record = jute.SetWatches2(self._last_zxid, data, exist, child, persistent, recursive)
        conn.send(jute.encode_request(Xid.SET_WATCHES, OpCode.SET_WATCHES2, record))

    async def _serve(self, conn: _Connection,
                     task_status: trio.TaskStatus[None] | None) -> None:
        try:
            async with trio.open_nursery() as nursery:
                conn.cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer, conn)
                nursery.start_soon(self._reader, conn)
                nursery.start_soon(self._pinger, conn)
                self._prime(conn)
                self._conn = conn
                self._set_state(ClientState.CONNECTED)
                if task_status is not None:
                    task_status.started()
        finally:
            if self._conn is conn:
                self._conn = None
            conn.fail_all(ConnectionLossError)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn.stream)
            if not self._state.is_terminal and not self._closing:
                self._set_state(ClientState.SUSPENDED)

    async def _writer(self, conn: _Connection) -> None:
        try:
            async for frame in conn.receive_channel:
                # Coalesce what is queued: pipelined requests leave in one write.
                frames = [frame]
                while True:
                    try:
                        frames.append(conn.receive_channel.receive_nowait())
                    except trio.WouldBlock:
                        break
                await conn.stream.send_all(b"".join(frames))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("session 0x%x: write failed: %r", self._session_id, exc)
        finally:
            conn.cancel_scope.cancel()

    async def _pinger(self, conn: _Connection) -> None:
        interval = conn.timeout / 3
        while True:
            due = conn.last_send + interval
            if trio.current_time() >= due:
                conn.send(jute.encode_request(Xid.PING, OpCode.PING, None))
                due = conn.last_send + interval
            await trio.sleep_until(due)

    async def _reader(self, conn: _Connection) -> None:
        # As Java: silence for 2/3 of the timeout (pings go out every 1/3) means a dead link.
        read_timeout = conn.timeout * 2 / 3
        try:
            while True:
                while (payload := conn.decoder.next_frame()) is not None:
                    self._handle_frame(conn, payload)
                    if conn.cancel_scope.cancel_called:
                        return
                with trio.move_on_after(read_timeout) as timeout_scope:
                    data = await conn.stream.receive_some(_RECV_BYTES)
                if timeout_scope.cancelled_caught:
                    log.info("session 0x%x: no reply for %.1fs, reconnecting",
                             self._session_id, read_timeout)
                    return
                if not data:
                    log.debug("session 0x%x: server closed the connection", self._session_id)
                    return
                conn.decoder.feed(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                jute.JuteError) as exc:
            log.info("session 0x%x: connection lost: %r", self._session_id, exc)
        finally:
            conn.cancel_scope.cancel()

    def _handle_frame(self, conn: _Connection, payload: bytes) -> None:
        if len(payload) < 4:
            raise jute.JuteError("reply shorter than its header")
        (xid,) = struct.unpack_from(">i", payload)
        if xid == Xid.NOTIFICATION:
            _, event = jute.decode_reply(payload, None)
            assert isinstance(event, jute.WatcherEvent)
            self._dispatch(event)
            return
        if xid == Xid.PING:
            return
        if xid == Xid.SET_WATCHES:
            header, _ = jute.decode_reply(payload, OpCode.SET_WATCHES2)
            if header.err:
                log.warning("session 0x%x: setWatches failed: %s", self._session_id,
                            error_for(header.err))
            return
        if xid == Xid.AUTH:
            header, _ = jute.decode_reply(payload, OpCode.AUTH)
            waiter = conn.auth_waiters.popleft() if conn.auth_waiters else None
            if header.err == Err.AUTH_FAILED:
                # The server drops the connection after this; Java makes it terminal too.
                if waiter is not None:
                    waiter.fail(AuthFailedError())
                self._finish(ClientState.AUTH_FAILED, AuthFailedError)
            elif waiter is not None:
                waiter.err = header.err
                waiter.event.set()
            return
        pending = conn.pending.pop(xid, None)
        if pending is None:
            log.warning("session 0x%x: reply for unknown xid %d", self._session_id, xid)
            return
        try:
            if pending.op == OpCode.EXISTS:
                header, record = jute.decode_exists_reply(payload)
            else:
                header, record = jute.decode_reply(payload, pending.op)
        except jute.JuteError as exc:
            pending.fail(MarshallingError(f"undecodable reply: {exc}"))
            raise
        if header.zxid > 0:
            self._last_zxid = header.zxid
        pending.err = header.err
        pending.record = record
        if pending.on_reply is not None and not pending.abandoned:
            pending.on_reply(header.err, record)
        pending.event.set()

    # ------------------------------------------------------------------ watches

    def _watch_tables(self) -> list[dict[str, list[WatchCallback]]]:
        # Order matches SetWatches2's fields.
        return [self._data_watches, self._exist_watches, self._child_watches,
                self._persistent_watches, self._recursive_watches]

    @staticmethod
    def _add(table: dict[str, list[WatchCallback]], path: str, callback: WatchCallback) -> None:
        callbacks = table.setdefault(path, [])
        if callback not in callbacks:
            callbacks.append(callback)

    def _dispatch(self, event: jute.WatcherEvent) -> None:
        path = event.path or "/"
        try:
            kind = EventType(event.type)
        except ValueError:
            log.warning("unknown watch event type %d on %s", event.type, path)
            return
        callbacks: list[WatchCallback] = []
        # Which one-shot watches an event consumes: ZooKeeper's ZKWatchManager.materialize.
        if kind in (EventType.NODE_CREATED, EventType.NODE_DATA_CHANGED):
            callbacks += self._data_watches.pop(path, [])
            callbacks += self._exist_watches.pop(path, [])
        elif kind == EventType.NODE_CHILDREN_CHANGED:
            callbacks += self._child_watches.pop(path, [])
        elif kind == EventType.NODE_DELETED:
            callbacks += self._data_watches.pop(path, [])
            callbacks += self._exist_watches.pop(path, [])
            callbacks += self._child_watches.pop(path, [])
        callbacks += self._persistent_watches.get(path, [])
        if kind != EventType.NODE_CHILDREN_CHANGED:
            # Recursive watches never get child events: creations and deletions below say it all.
            for parent in lineage(path):
                callbacks += self._recursive_watches.get(parent, [])
        try:
            state = KeeperState(event.state)
        except ValueError:
            state = KeeperState.SYNC_CONNECTED
        self._fire(callbacks, WatchedEvent(kind, state, self._strip(path)))

    @staticmethod
    def _fire(callbacks: list[WatchCallback], event: WatchedEvent) -> None:
        called: list[WatchCallback] = []
        for callback in callbacks:
            # One watcher registered several ways hears an event once, as in ZooKeeper.
            if callback in called:
                continue
            called.append(callback)
            try:
                callback(event)
            except Exception:
                log.exception("watch callback %r failed on %s", callback, event)

    def _watch_hook(self, table_for_err: Callable[[int], dict[str, list[WatchCallback]] | None],
                    server_path: str, callback: WatchCallback | None) -> _ReplyHook | None:
        if callback is None:
            return None

        def on_reply(err: int, record: jute.Record | None) -> None:
            table = table_for_err(err)
            if table is not None:
                self._add(table, server_path, callback)
        return on_reply

    # ------------------------------------------------------------------ request plumbing

    async def _connection(self, *, closing_ok: bool = False) -> _Connection:
        """The live connection, waiting up to the session timeout while reconnecting."""
        with trio.move_on_after(self._timeout):
            while True:
                if self._state is ClientState.EXPIRED:
                    raise SessionExpiredError()
                if self._state is ClientState.AUTH_FAILED:
                    raise AuthFailedError()
                if self._state is ClientState.CLOSED or (self._closing and not closing_ok):
                    raise ClientClosedError("client is closed")
                if self._conn is not None:
                    return self._conn
                await self._state_changed.wait()
        raise ConnectionLossError("not connected within the session timeout")

    def _next_xid(self) -> int:
        self._xid = self._xid + 1 if self._xid < _MAX_XID else 1
        return self._xid

    async def _call(self, op: int, record: jute.Record | None, *, path: str | None = None,
                    allow: tuple[int, ...] = (), on_reply: _ReplyHook | None = None,
                    closing_ok: bool = False) -> tuple[int, jute.Record | None]:
        """Send one request and wait for its reply: (err, record); raises unless err is OK or
        in `allow`. `path` (chroot-relative) only labels the exception."""
        conn = await self._connection(closing_ok=closing_ok)
        pending = _Pending(op, on_reply)
        if op == OpCode.AUTH:
            frame = jute.encode_request(Xid.AUTH, op, record)
            conn.auth_waiters.append(pending)
        else:
            xid = self._next_xid()
            # Encode first: a record the codec rejects must fail the caller, not the session.
            frame = jute.encode_request(xid, op, record)
            conn.pending[xid] = pending
        conn.send(frame)
        try:
            await pending.event.wait()
        except BaseException:
            pending.abandoned = True
            raise
        if pending.error is not None:
            raise pending.error
        if pending.err != Err.OK and pending.err not in allow:
            raise error_for(pending.err, path)
        return pending.err, pending.record

    # ------------------------------------------------------------------ public operations

    @overload
    async def create(self, path: str, data: bytes | None = ..., *,
                     acl: Sequence[ACL] | None = ..., ephemeral: bool = ...,
                     sequential: bool = ..., container: bool = ..., ttl: int | None = ...,
                     include_stat: Literal[False] = ...) -> str: ...

    @overload
    async def create(self, path: str, data: bytes | None = ..., *,
                     acl: Sequence[ACL] | None = ..., ephemeral: bool = ...,
                     sequential: bool = ..., container: bool = ..., ttl: int | None = ...,
                     include_stat: Literal[True]) -> tuple[str, Stat]: ...

    async def create(self, path: str, data: bytes | None = b"", *,
                     acl: Sequence[ACL] | None = None, ephemeral: bool = False,
                     sequential: bool = False, container: bool = False,
                     ttl: int | None = None,
                     include_stat: bool = False) -> str | tuple[str, Stat]:
        """Create a znode; returns its path (with the sequence suffix), and its Stat if asked.

        `data=None` creates a znode with null data (a directory for the FUSE mount). `ttl` is
        in milliseconds (the server needs extended types enabled). Container and TTL creates
        always return a Stat from the server; it is returned only if `include_stat`.
        """
        op = Op.create(path, data, acl=acl, ephemeral=ephemeral, sequential=sequential,
                       container=container, ttl=ttl, include_stat=include_stat)
        code, record = self._op_record(op)
        _, response = await self._call(code, record, path=path)
        if isinstance(response, jute.Create2Response):
            created = self._strip(response.path or "")
            return (created, response.stat) if include_stat else created
        assert isinstance(response, jute.CreateResponse)
        return self._strip(response.path or "")

    async def delete(self, path: str, version: int = -1) -> None:
        await self._call(OpCode.DELETE, jute.DeleteRequest(self._full(path), version), path=path)

    async def exists(self, path: str, watch: WatchCallback | None = None) -> Stat | None:
        """The node's Stat, or None. `watch` fires on creation, deletion or data change."""
        full = self._full(path)

        def table(err: int) -> dict[str, list[WatchCallback]] | None:
            if err == Err.OK:
                return self._data_watches
            return self._exist_watches if err == Err.NO_NODE else None
        err, response = await self._call(
            OpCode.EXISTS, jute.ExistsRequest(full, watch is not None), path=path,
            allow=(Err.NO_NODE,), on_reply=self._watch_hook(table, full, watch))
        if err == Err.NO_NODE:
            return None
        assert isinstance(response, jute.ExistsResponse)
        return response.stat

    async def get(self, path: str,
                  watch: WatchCallback | None = None) -> tuple[bytes | None, Stat]:
        """(data, stat); data is None for a znode created with null data."""
        full = self._full(path)
        _, response = await self._call(
            OpCode.GET_DATA, jute.GetDataRequest(full, watch is not None), path=path,
            on_reply=self._watch_hook(lambda e: self._data_watches if e == Err.OK else None,
                                      full, watch))
        assert isinstance(response, jute.GetDataResponse)
        return response.data, response.stat

    async def set(self, path: str, data: bytes | None, version: int = -1) -> Stat:
        _, response = await self._call(
            OpCode.SET_DATA, jute.SetDataRequest(self._full(path), data, version), path=path)
        assert isinstance(response, jute.SetDataResponse)
        return response.stat

    @overload
    async def get_children(self, path: str, watch: WatchCallback | None = ...,
                           include_stat: Literal[False] = ...) -> list[str]: ...

    @overload
    async def get_children(self, path: str, watch: WatchCallback | None = ..., *,
                           include_stat: Literal[True]) -> tuple[list[str], Stat]: ...

    async def get_children(self, path: str, watch: WatchCallback | None = None,
                           include_stat: bool = False) -> list[str] | tuple[list[str], Stat]:
        """Child names (unsorted, as the server sends them), plus the parent's Stat if asked."""
        full = self._full(path)
        hook = self._watch_hook(lambda e: self._child_watches if e == Err.OK else None,
                                full, watch)
        if include_stat:
            _, response = await self._call(
                OpCode.GET_CHILDREN2, jute.GetChildren2Request(full, watch is not None),
                path=path, on_reply=hook)
            assert isinstance(response, jute.GetChildren2Response)
            return response.children, response.stat
        _, response = await self._call(
            OpCode.GET_CHILDREN, jute.GetChildrenRequest(full, watch is not None),
            path=path, on_reply=hook)
        assert isinstance(response, jute.GetChildrenResponse)
        return response.children

    async def get_acl(self, path: str) -> tuple[list[ACL], Stat]:
        _, response = await self._call(OpCode.GET_ACL, jute.GetACLRequest(self._full(path)),
                                       path=path)
        assert isinstance(response, jute.GetACLResponse)
        return response.acl, response.stat

    async def set_acl(self, path: str, acl: Sequence[ACL], version: int = -1) -> Stat:
        _, response = await self._call(
            OpCode.SET_ACL, jute.SetACLRequest(self._full(path), list(acl), version), path=path)
        assert isinstance(response, jute.SetACLResponse)
        return response.stat

    async def sync(self, path: str = "/") -> str:
        """Bring the connected server up to the leader's commit point (for later reads)."""
        _, response = await self._call(OpCode.SYNC, jute.SyncRequest(self._full(path)),
                                       path=path)
        assert isinstance(response, jute.SyncResponse)
        return self._strip(response.path or self._full(path))

    async def get_all_children_number(self, path: str) -> int:
        """Number of all descendants of `path` (not counting itself)."""
        _, response = await self._call(
            OpCode.GET_ALL_CHILDREN_NUMBER, jute.GetAllChildrenNumberRequest(self._full(path)),
            path=path)
        assert isinstance(response, jute.GetAllChildrenNumberResponse)
        return response.total_number

    async def get_ephemerals(self, prefix: str = "/") -> list[str]:
        """Paths of this session's ephemeral nodes whose path starts with `prefix`."""
        server_prefix = self._full(prefix)
        if self._chroot is not None and prefix == "/":
            # The chroot itself plus a "/" would also match siblings like /app2 otherwise.
            server_prefix = self._chroot + "/"
        _, response = await self._call(OpCode.GET_EPHEMERALS,
                                       jute.GetEphemeralsRequest(server_prefix), path=prefix)
        assert isinstance(response, jute.GetEphemeralsResponse)
        root = self._chroot
        return [self._strip(p) for p in response.ephemerals
                if root is None or is_within(p, root)]

    async def add_watch(self, path: str, mode: WatchMode, callback: WatchCallback) -> None:
        """A persistent (or persistent-recursive) watch: fires on every change until removed.

        A recursive watch reports creations, deletions and data changes of the node and all its
        descendants, but no NODE_CHILDREN_CHANGED (ZooKeeper's semantics).
        """
        full = self._full(path)
        mode = WatchMode(mode)
        table = (self._recursive_watches if mode == WatchMode.PERSISTENT_RECURSIVE
                 else self._persistent_watches)
        await self._call(OpCode.ADD_WATCH, jute.AddWatchRequest(full, int(mode)), path=path,
                         on_reply=self._watch_hook(lambda e: table if e == Err.OK else None,
                                                   full, callback))

    async def remove_watches(self, path: str, watcher_type: WatcherType,
                             callback: WatchCallback | None = None) -> None:
        """Remove watches on `path`: all of `watcher_type` (DATA: data and exists watches,
        CHILDREN, ANY: also persistent ones), or only `callback`'s. Each removed callback gets
        one DATA_WATCH_REMOVED / CHILD_WATCH_REMOVED / PERSISTENT_WATCH_REMOVED event.
        Raises NoWatcherError if there is nothing to remove.
        """
        full = self._full(path)
        watcher_type = WatcherType(watcher_type)
        tables: list[tuple[dict[str, list[WatchCallback]], EventType]] = []
        if watcher_type in (WatcherType.DATA, WatcherType.ANY):
            tables += [(self._data_watches, EventType.DATA_WATCH_REMOVED),
                       (self._exist_watches, EventType.DATA_WATCH_REMOVED)]
        if watcher_type in (WatcherType.CHILDREN, WatcherType.ANY):
            tables += [(self._child_watches, EventType.CHILD_WATCH_REMOVED)]
        if watcher_type == WatcherType.ANY:
            tables += [(self._persistent_watches, EventType.PERSISTENT_WATCH_REMOVED),
                       (self._recursive_watches, EventType.PERSISTENT_WATCH_REMOVED)]

        def remove_locally() -> None:
            for table, removed_type in tables:
                callbacks = table.get(full, [])
                gone = [c for c in callbacks if callback is None or c == callback]
                kept = [c for c in callbacks if not (callback is None or c == callback)]
                if kept:
                    table[full] = kept
                else:
                    table.pop(full, None)
                self._fire(gone, WatchedEvent(removed_type, KeeperState.SYNC_CONNECTED, path))

        if callback is not None:
            if not any(callback in table.get(full, []) for table, _ in tables):
                raise NoWatcherError(path=path)
            others = any(c != callback for table, _ in tables for c in table.get(full, []))
            if others:
                # The server keeps one watch per session and path: it must stay for the others.
                remove_locally()
                return

        def on_reply(err: int, record: jute.Record | None) -> None:
            # NO_WATCHER with a local watcher means it fired meanwhile: still drop ours.
            if err == Err.OK or (err == Err.NO_WATCHER and callback is not None):
                remove_locally()
        await self._call(OpCode.REMOVE_WATCHES,
                         jute.RemoveWatchesRequest(full, int(watcher_type)), path=path,
                         allow=(Err.NO_WATCHER,) if callback is not None else (),
                         on_reply=on_reply)

    async def whoami(self) -> list[jute.ClientInfo]:
        """The identities (auth scheme, user) the server associates with this session."""
        _, response = await self._call(OpCode.WHO_AM_I, jute.WhoAmIRequest())
        assert isinstance(response, jute.WhoAmIResponse)
        return response.client_info

    async def add_auth(self, scheme: str, credential: bytes) -> None:
        """Authenticate (e.g. `"digest", b"user:pw"`); re-sent after every reconnect.

        A rejected credential makes the session unusable (state AUTH_FAILED), as in ZooKeeper.
        """
        entry = (scheme, bytes(credential))
        if entry not in self._auth:
            self._auth.append(entry)
        await self._call(OpCode.AUTH, jute.AuthPacket(0, scheme, bytes(credential)))

    def _op_record(self, op: Op) -> tuple[int, jute.Record]:
        full = self._full(op.path)
        if op.code in (OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER):
            acl = list(op.acl) if op.acl is not None else list(OPEN_ACL_UNSAFE)
            return op.code, jute.CreateRequest(full, op.data, acl, op.flags)
        if op.code == OpCode.CREATE_TTL:
            acl = list(op.acl) if op.acl is not None else list(OPEN_ACL_UNSAFE)
            return op.code, jute.CreateTTLRequest(full, op.data, acl, op.flags, op.ttl or 0)
        if op.code == OpCode.DELETE:
            return op.code, jute.DeleteRequest(full, op.version)
        if op.code == OpCode.SET_DATA:
            return op.code, jute.SetDataRequest(full, op.data, op.version)
        if op.code == OpCode.CHECK:
            return op.code, jute.CheckVersionRequest(full, op.version)
        if op.code == OpCode.GET_DATA:
            return op.code, jute.GetDataRequest(full, False)
        if op.code == OpCode.GET_CHILDREN:
            return op.code, jute.GetChildrenRequest(full, False)
        raise BadArgumentsError(f"op {op.code!r} cannot be part of a multi", path=op.path)

    def _op_result(self, op: Op, kind: int, err: int, record: jute.Record | None) -> Any:
        if kind == OpCode.ERROR or err != Err.OK:
            code = record.err if isinstance(record, jute.ErrorResponse) else err
            return None if code == Err.OK else error_for(code, op.path)
        if isinstance(record, jute.Create2Response):
            created = self._strip(record.path or "")
            return (created, record.stat) if op.code == OpCode.CREATE2 else created
        if isinstance(record, jute.CreateResponse):
            created = self._strip(record.path or "")
            # Apache ZooKeeper 3.8 answers create2 inside a multi without a Stat (as Java's
            # CreateResult.getStat() returning null); keep the result's shape anyway.
            return (created, None) if op.code == OpCode.CREATE2 else created
        if isinstance(record, jute.SetDataResponse):
            return record.stat
        if isinstance(record, jute.GetDataResponse):
            return record.data, record.stat
        if isinstance(record, jute.GetChildrenResponse):
            return record.children
        return None

    async def _multi(self, code: OpCode, ops: Sequence[Op]) -> list[Any]:
        ops = list(ops)
        request = jute.MultiRequest([self._op_record(op) for op in ops])
        _, response = await self._call(code, request)
        assert isinstance(response, jute.MultiResponse)
        if len(response.results) != len(ops):
            raise MarshallingError(f"{len(ops)} ops but {len(response.results)} results")
        return [self._op_result(op, kind, err, record)
                for op, (kind, err, record) in zip(ops, response.results)]

    async def multi(self, ops: Sequence[Op]) -> list[Any]:
        """Apply `ops` atomically; one result per op: create → path (or (path, Stat | None) for
        `include_stat`: Apache ZooKeeper sends no Stat there), set → Stat, delete/check → None.

        On failure nothing is applied and the first failing op's error is raised with
        `.results`: per op, None (would have succeeded) or a ZkError (the cause, and
        RuntimeInconsistencyError for the ops after it).
        """
        results = await self._multi(OpCode.MULTI, ops)
        failure = next((r for r in results if isinstance(r, ZkError)), None)
        if failure is not None:
            exc = error_for(failure.code, failure.path)
            exc.results = results
            raise exc
        return results

    async def multi_read(self, ops: Sequence[Op]) -> list[Any]:
        """Read several nodes at one point in time (Op.get / Op.get_children); failures do not
        abort: each result is (data, stat), a list of children, or a ZkError instance."""
        return await self._multi(OpCode.MULTI_READ, ops)

    async def read_many(self, ops: Sequence[Op]) -> list[Any]:
        """Independent reads (Op.exists, Op.get, Op.get_children) sent in one write, answered
        when all replies are in; each result as from the single call (exists: Stat or None;
        get: (data, stat); get_children: names), or the ZkError instance it failed with.
        Unlike `multi_read` the reads are not one point in time, and exists is allowed. Costs
        no task and no Event per request: what makes probing a 1000-entry directory cheap."""
        reads = await self.send_reads(ops)
        return await reads.results(0, len(reads))

    async def send_reads(self, ops: Sequence[Op], chunk: int = 128) -> PendingReads:
        """`read_many`'s requests, sent now; their results are awaited by range
        (`PendingReads.results`), each `chunk` of them as soon as its replies are in: a
        caller can use the first ones while the server still answers the rest."""
        ops = list(ops)
        conn = await self._connection() if ops else None
        slots: list[_BatchSlot] = []
        batches: list[_Batch] = []
        frames: list[bytes] = []
        xids: list[int] = []
        for i, op in enumerate(ops):
            full = self._full(op.path)
            if op.code == OpCode.EXISTS:
                code, record = OpCode.EXISTS, jute.ExistsRequest(full, False)
            elif op.code in (OpCode.GET_DATA, OpCode.GET_CHILDREN):
                code, record = self._op_record(op)
            else:
                raise BadArgumentsError(f"op {op.code!r} is not a read", path=op.path)
            if i % chunk == 0:
                batches.append(_Batch(min(chunk, len(ops) - i)))
            xids.append(self._next_xid())
            frames.append(jute.encode_request(xids[-1], code, record))
            slots.append(_BatchSlot(code, batches[-1]))
        if conn is not None:
            # Registered only once all are encoded: a record the codec rejects sends nothing.
            conn.pending.update(zip(xids, slots))
            conn.send(b"".join(frames))
        return PendingReads(self, ops, slots, batches, chunk)

    async def close(self) -> None:
        """End the session (its ephemeral nodes go at once) and close the connection.

        Idempotent. Waits a bounded time for the server's answer; then closes regardless.
        """
        if self._state.is_terminal or self._closing:
            return
        self._closing = True
        if self._conn is not None:
            with trio.move_on_after(min(self._timeout, 5.0)):
                try:
                    await self._call(OpCode.CLOSE_SESSION, jute.CloseSessionRequest(),
                                     closing_ok=True)
                except ZkError as exc:
                    log.debug("closeSession: %r", exc)
        self._finish(ClientState.CLOSED, lambda: ClientClosedError("client is closed"))

    def _drop_connection(self) -> None:
        """Test hook: kill the TCP connection abruptly (RST), as a network failure would."""
        conn = self._conn
        if conn is None:
            return
        # Later requests wait for the reconnect instead of dying with this connection.
        self._conn = None
        conn.cancel_scope.cancel()
        sock = conn.stream.socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()


@asynccontextmanager
async def open_client(hosts: str, *, session_timeout: float = 10.0,
                      connect_timeout: float | None = None, read_only: bool = False,
                      auth: Iterable[tuple[str, bytes]] = (), session_id: int | None = None,
                      session_passwd: bytes | None = None) -> AsyncIterator[ZkClient]:
    """Connect to `hosts` (`h1:p1,h2:p2[/chroot]`) and yield a connected ZkClient.

    Raises ConnectionLossError if no server accepts the session within `connect_timeout`
    (default: `session_timeout`), SessionExpiredError if `session_id` names a dead session.
    On exit the session is closed (closeSession, bounded wait) and all tasks are ended.
    """
    host_list, chroot = parse_connect_string(hosts)
    client = ZkClient(host_list, chroot, session_timeout=session_timeout, read_only=read_only,
                      auth=auth, session_id=session_id, session_passwd=session_passwd)
    limit = session_timeout if connect_timeout is None else connect_timeout
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(limit) as connect_scope:
                await nursery.start(client._run)
            if connect_scope.cancelled_caught:
                client._finish(ClientState.CLOSED, ClientClosedError)
                raise ConnectionLossError(f"could not connect to {hosts} within {limit}s")
            try:
                yield client
            finally:
                # Shielded so a cancelled caller still ends its session; close() is bounded.
                with trio.CancelScope(shield=True):
                    await client.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The machinery never raises, so a group holds the one exception of the body (or of
        # the connect): unwrap it so callers can `except NoNodeError` around the block.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
