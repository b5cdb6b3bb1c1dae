"""`zkfs`: the command line for scripts and recipes, and `zkfs-mount`, the mount.fuse3 helper.

Every command runs one ZooKeeper session (`trio.run` + `open_client`) and ends it on exit, so
ephemeral nodes live exactly as long as the command that created them. Errors are one line on
stderr, `zkfs: COMMAND PATH: reason`, with an exit status per kind of error (documented in
man/zkfs.1 and below); click's usage errors are reformatted to one line too (status 2).
"""
from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click

from zkfs.constants import EventType, WatchMode
from zkfs.errors import (
    AuthFailedError,
    BadVersionError,
    ConnectionLossError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
    UnimplementedError,
    ZkError,
)
from zkfs.paths import ancestors, is_within, join_path
from zkfs.watching import OneShotWatches

# Exit status, also documented in man/zkfs.1 (EXIT STATUS).
EXIT_OK = 0
EXIT_ERROR = 1          # anything not listed below
EXIT_USAGE = 2          # bad command line (click's usage errors), invalid connect string or path
EXIT_NO_NODE = 3        # NoNode
EXIT_NODE_EXISTS = 4    # NodeExists
EXIT_BAD_VERSION = 5    # BadVersion (--version compare-and-set lost)
EXIT_NOT_EMPTY = 6      # NotEmpty (rm without -r of a node with children)
EXIT_CONNECTION = 7     # cannot connect, connection lost, timeout, session expired
EXIT_NO_AUTH = 8        # NoAuth, AuthFailed
EXIT_PIPE = 141         # stdout closed early (128 + SIGPIPE), as a shell pipeline would say

DEFAULT_SERVERS = "127.0.0.1:2181"
DEFAULT_TIMEOUT = 10.0
# ZooKeeper's default jute.maxbuffer bounds a znode's data to about 1 MiB; zkfsd enforces 1 MiB.
MAX_DATA = 1024 * 1024

# Options that only mean something to mount(8), fstab or systemd; dropped before the mount
# module sees the rest. mount.fuse3 already strips user/nouser/users/auto/noauto/_netdev/nofail,
# but passes rw, defaults, x-* and adds dev,suid when run as root.
FSTAB_ONLY_OPTIONS = frozenset({
    "defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group",
    "_netdev", "nofail", "dev", "suid", "exec", "sw", "loop",
})
FSTAB_ONLY_PREFIXES = ("x-", "comment=")

_ERRORS: list[tuple[type[ZkError], int, str]] = [
    (NoNodeError, EXIT_NO_NODE, "no such node"),
    (NodeExistsError, EXIT_NODE_EXISTS, "node exists"),
    (BadVersionError, EXIT_BAD_VERSION, "version mismatch"),
    (NotEmptyError, EXIT_NOT_EMPTY, "node has children"),
    (SessionExpiredError, EXIT_CONNECTION, "session expired"),
    (ConnectionLossError, EXIT_CONNECTION, "connection lost"),
    (NoAuthError, EXIT_NO_AUTH, "not authorized"),
    (AuthFailedError, EXIT_NO_AUTH, "authentication failed"),
    (UnimplementedError, EXIT_ERROR, "not supported by the server"),
]
_REASONS = {
    "BAD_ARGUMENTS": "invalid path or arguments",
    "NO_CHILDREN_FOR_EPHEMERALS": "ephemeral nodes cannot have children",
    "INVALID_ACL": "invalid ACL",
    "OPERATION_TIMEOUT": "operation timed out",
    "REQUEST_TIMEOUT": "request timed out",
    "QUOTA_EXCEEDED": "quota exceeded",
    "THROTTLED": "request throttled by the server",
    "NOT_READ_ONLY": "server is read-only",
    "MARSHALLING_ERROR": "protocol error",
}

T = TypeVar("T")


class CommandError(Exception):
    """A failure already phrased for the user: one line, one exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def _fail(message: str, status: int = EXIT_ERROR) -> NoReturn:
    raise CommandError(message, status)


def describe(exc: ZkError) -> tuple[int, str]:
    """(exit status, short reason) for a ZooKeeper error."""
    if isinstance(exc, SessionLostError):
        return EXIT_CONNECTION, "session lost: disconnected for longer than the session timeout"
    for cls, status, reason in _ERRORS:
        if isinstance(exc, cls):
            return status, reason
    name = exc.code.name if hasattr(exc.code, "name") else str(exc.code)
    return EXIT_ERROR, _REASONS.get(name, name.lower().replace("_", " "))


# ---------------------------------------------------------------------------- session plumbing

@dataclass
class Conn:
    """How to reach the ensemble: from --servers/--timeout of the command or of the group, and
    the credentials of --auth and ZKFS_AUTH."""
    servers: str
    timeout: float
    auth: list[tuple[str, bytes]] = field(default_factory=list)


def _conn(ctx: click.Context, servers: str | None, timeout: float | None) -> Conn:
    from zkfs.credentials import CredentialError, load_credentials

    root = ctx.find_root().params
    try:
        auth = load_credentials(root.get("auth"))
    except CredentialError as exc:
        _fail(f"--auth: {exc}", EXIT_USAGE)
    return Conn(servers if servers is not None else root.get("servers") or DEFAULT_SERVERS,
                timeout if timeout is not None else root.get("timeout") or DEFAULT_TIMEOUT,
                auth)


def run_session(ctx: click.Context, conn: Conn, label: str,
                body: Callable[[Any], Awaitable[int | None]]) -> None:
    """Run `body(zk)` in one session; turn every failure into one stderr line and a status."""
    import trio

    from zkfs.client import open_client, parse_connect_string

    try:
        parse_connect_string(conn.servers)
    except ValueError as exc:
        _fail(f"{label}: invalid --servers: {exc}", EXIT_USAGE)
    if not conn.timeout > 0 or math.isinf(conn.timeout):
        _fail(f"{label}: --timeout must be a positive number of seconds", EXIT_USAGE)

    async def main() -> int | None:
        connected = False
        try:
            async with open_client(conn.servers, session_timeout=conn.timeout,
                                   connect_timeout=conn.timeout, auth=conn.auth) as zk:
                connected = True
                return await body(zk)
        except ConnectionLossError as exc:
            if not connected:
                _fail(f"{label}: cannot connect to {conn.servers} within {conn.timeout:g}s",
                      EXIT_CONNECTION)
            raise exc

    try:
        try:
            status = trio.run(main)
        except BaseExceptionGroup as group:
            raise _leaf(group) from None
    except BrokenPipeError:
        # The reader went away (`zkfs watch | head -1`): quietly, as a shell pipeline would.
        _silence_stdout()
        ctx.exit(EXIT_PIPE)
    except ZkError as exc:
        status_code, reason = describe(exc)
        path = exc.path or ""
        command = label.split(" ")[0]
        where = f"{command} {path}" if path else label
        _fail(f"{where}: {reason}", status_code)
    ctx.exit(status or EXIT_OK)


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The exception that matters in a (nested) group from concurrent requests."""
    leaves: list[BaseException] = []

    def flatten(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                flatten(e)
        else:
            leaves.append(exc)
    flatten(group)
    for kind in (KeyboardInterrupt, CommandError, ZkError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0] if len(leaves) == 1 else group


def _check_path(label: str, path: str) -> None:
    if not path.startswith("/"):
        _fail(f"{label}: path must be absolute (start with /): {path!r}", EXIT_USAGE)


def _read_data(label: str, data: str | None) -> bytes | None:
    if data is None:
        return None
    raw = sys.stdin.buffer.read() if data == "-" else os.fsencode(data)
    if len(raw) > MAX_DATA:
        _fail(f"{label}: data too large ({len(raw)} bytes; the limit is {MAX_DATA})")
    return raw


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---------------------------------------------------------------------------- formatting

STAT_FIELDS = ["czxid", "mzxid", "pzxid", "ctime", "mtime", "version", "cversion", "aversion",
               "ephemeralOwner", "dataLength", "numChildren"]


def format_stat(stat: Any) -> str:
    values = {
        "czxid": f"0x{stat.czxid:x}", "mzxid": f"0x{stat.mzxid:x}", "pzxid": f"0x{stat.pzxid:x}",
        "ctime": str(stat.ctime), "mtime": str(stat.mtime),
        "version": str(stat.version), "cversion": str(stat.cversion),
        "aversion": str(stat.aversion), "ephemeralOwner": f"0x{stat.ephemeral_owner:x}",
        "dataLength": str(stat.data_length), "numChildren": str(stat.num_children),
    }
    return "".join(f"{name}={values[name]}\n" for name in STAT_FIELDS)


def stat_dict(stat: Any) -> dict[str, int]:
    """The Stat as a JSON object, ZooKeeper's field names, plain integers."""
    return {"czxid": stat.czxid, "mzxid": stat.mzxid, "pzxid": stat.pzxid,
            "ctime": stat.ctime, "mtime": stat.mtime, "version": stat.version,
            "cversion": stat.cversion, "aversion": stat.aversion,
            "ephemeralOwner": stat.ephemeral_owner, "dataLength": stat.data_length,
            "numChildren": stat.num_children}


def data_fields(data: bytes | None) -> dict[str, Any]:
    """`data` as JSON: text if it is UTF-8, else base64 in `data_base64`; null stays null."""
    if data is None:
        return {"data": None}
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        import base64
        return {"data": None, "data_base64": base64.b64encode(data).decode()}


def _json_line(obj: Any) -> None:
    import json
    _out(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead (see zkfs(1), JSON OUTPUT).")(f)


def format_time(ms: int) -> str:
    t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


async def _gather(funcs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls concurrently (one pipelined burst on the session); results in order."""
    import trio

    funcs = list(funcs)
    results: list[Any] = [None] * len(funcs)

    async def one(i: int, f: Callable[[], Awaitable[T]]) -> None:
        results[i] = await f()
    async with trio.open_nursery() as nursery:
        for i, f in enumerate(funcs):
            nursery.start_soon(one, i, f)
    return results


async def _stat_or_none(zk: Any, path: str) -> Any:
    return await zk.exists(path)


async def _children_or_none(zk: Any, path: str) -> list[str] | None:
    try:
        return sorted(await zk.get_children(path))
    except NoNodeError:
        return None


# ---------------------------------------------------------------------------- signals

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SessionLostError(ConnectionLossError):
    """Disconnected for longer than the session timeout: the server has (or will have) expired
    the session, and its ephemeral nodes with it."""


async def _until_stopped(zk: Any, task_status: Any = None, *, strict: bool = False) -> None:
    """Return on SIGINT/SIGTERM/SIGHUP; raise if the session dies (expired, auth failed), and,
    if `strict`, as soon as the connection has been down for a whole session timeout."""
    import trio

    from zkfs.client import ClientState

    states = zk.subscribe_state()
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        if task_status is not None:
            task_status.started()
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            timer: list[trio.CancelScope] = []

            async def lost_after(scope: trio.CancelScope) -> None:
                with scope:
                    await trio.sleep(zk.negotiated_timeout)
                    raise SessionLostError()

            async def on_state() -> None:
                async for state in states:
                    if state is ClientState.EXPIRED:
                        raise SessionExpiredError()
                    if state is ClientState.AUTH_FAILED:
                        raise AuthFailedError()
                    if state.is_terminal:
                        raise ConnectionLossError("session closed")
                    if strict and state is ClientState.SUSPENDED and not timer:
                        timer.append(trio.CancelScope())
                        nursery.start_soon(lost_after, timer[0])
                    elif state is ClientState.CONNECTED and timer:
                        timer.pop().cancel()
                if zk.state is ClientState.EXPIRED:
                    raise SessionExpiredError()
            nursery.start_soon(on_signal)
            nursery.start_soon(on_state)


async def _until_stopped_then_cancel(zk: Any, scope: Any, strict: bool = False,
                                     task_status: Any = None) -> None:
    await _until_stopped(zk, task_status=task_status, strict=strict)
    scope.cancel()


# ---------------------------------------------------------------------------- click setup

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--timeout", type=float, default=None, metavar="SECONDS",
                     help=f"Session and connect timeout [default: {DEFAULT_TIMEOUT:g}; "
                          "env ZKFS_TIMEOUT].")(f)
    f = click.option("--servers", "-s", default=None, metavar="HOSTS",
                     help=f"Connect string h1:p1,h2:p2[/chroot] [default: {DEFAULT_SERVERS}; "
                          "env ZKFS_SERVERS].")(f)
    return f


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("zkfs")
    except metadata.PackageNotFoundError:
        return "unknown"


def _version_option(prog: str) -> Callable[[Any], Any]:
    # Resolved only when --version is given: every other run starts faster.
    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(f"{prog} {_version()}")
            ctx.exit(0)
    return click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True,
                        callback=show, help="Show the version and exit.")


@click.group(context_settings=CONTEXT,
             epilog="Exit status: 0 ok, 1 error, 2 usage, 3 no such node, 4 node exists, "
                    "5 version mismatch, 6 node has children, 7 connection/session, "
                    "8 not authorized. See zkfs(1).")
@_version_option("zkfs")
@click.option("--servers", "-s", envvar="ZKFS_SERVERS", default=DEFAULT_SERVERS,
              show_default=True, metavar="HOSTS",
              help="ZooKeeper connect string h1:p1,h2:p2[/chroot] (env ZKFS_SERVERS).")
@click.option("--timeout", envvar="ZKFS_TIMEOUT", type=float, default=DEFAULT_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Session timeout, also the time allowed to connect (env ZKFS_TIMEOUT).")
@click.option("--auth", envvar="ZKFS_AUTH_FILE", default=None, metavar="FILE",
              help="Authenticate with the scheme:credential lines of FILE (mode 0600; env "
                   "ZKFS_AUTH_FILE); ZKFS_AUTH may hold one more, e.g. digest:alice:secret.")
def cli(servers: str, timeout: float, auth: str | None) -> None:
    """Use a ZooKeeper (or zkfsd) ensemble from the shell.

    Every command connects, does its work in one session and ends that session. --servers and
    --timeout may be given before the command or after it.
    """


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--stat", "show_stat", is_flag=True,
              help="Print the node's Stat (name=value lines) instead of its data.")
@json_option
@connection_options
@click.pass_context
def get(ctx: click.Context, path: str, show_stat: bool, as_json: bool, servers: str | None,
        timeout: float | None) -> None:
    """Print the data of PATH as it is (no newline added; null data prints nothing)."""
    label = f"get {path}"
    _check_path(label, path)

    async def body(zk: Any) -> None:
        data, stat = await zk.get(path)
        if as_json:
            _json_line({"path": path, **data_fields(data), "stat": stat_dict(stat)})
        elif show_stat:
            _out(format_stat(stat))
        elif data:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command("set", context_settings=CONTEXT)
@click.argument("path")
@click.argument("data")
@click.option("--version", "version", type=int, default=-1, metavar="N",
              help="Only if the node's version is N (compare-and-set); else exit 5.")
@click.option("--create", "-c", "create_missing", is_flag=True,
              help="Create the node (with this data) if it does not exist.")
@click.option("--stat", "show_stat", is_flag=True, help="Print the new Stat.")
@connection_options
@click.pass_context
def set_(ctx: click.Context, path: str, data: str, version: int, create_missing: bool,
         show_stat: bool, servers: str | None, timeout: float | None) -> None:
    """Set the data of PATH to DATA (- reads it from standard input)."""
    label = f"set {path}"
    _check_path(label, path)
    if create_missing and version != -1:
        _fail(f"{label}: --create and --version cannot be combined", EXIT_USAGE)
    raw = _read_data(label, data)

    async def body(zk: Any) -> None:
        try:
            stat = await zk.set(path, raw, version)
        except NoNodeError:
            if not create_missing:
                raise
            try:
                await zk.create(path, raw)
                stat = await zk.exists(path) if show_stat else None
            except NodeExistsError:
                # Someone else created it meanwhile: ours is the later write.
                stat = await zk.set(path, raw)
        if show_stat and stat is not None:
            _out(format_stat(stat))
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("-l", "long", is_flag=True,
              help="Long listing: ephemeral flag (e or -), version, data length, "
                   "mtime (UTC), name.")
@click.option("-R", "--recursive", is_flag=True,
              help="List all descendants, as paths relative to PATH.")
@json_option
@connection_options
@click.pass_context
def ls(ctx: click.Context, path: str, long: bool, recursive: bool, as_json: bool,
       servers: str | None, timeout: float | None) -> None:
    """List the children of PATH, one per line, sorted."""
    label = f"ls {path}"
    _check_path(label, path)

    async def body(zk: Any) -> None:
        names = sorted(await zk.get_children(path))
        entries: list[str] = []  # relative names, depth-first
        if recursive:
            async def walk(rel_prefix: str, full: str, children: list[str]) -> None:
                subs = await _gather(
                    [lambda c=c: _children_or_none(zk, join_path(full, c)) for c in children])
                for child, grand in zip(children, subs):
                    rel = rel_prefix + child
                    entries.append(rel)
                    if grand:
                        await walk(rel + "/", join_path(full, child), grand)
            await walk("", path, names)
        else:
            entries = names
        if as_json and not long:
            _json_line({"path": path, "children": entries})
            return
        if not long:
            _out("".join(f"{e}\n" for e in entries))
            return
        stats = await _gather([lambda e=e: _stat_or_none(zk, join_path(path, e)) for e in entries])
        if as_json:
            _json_line({"path": path, "children": [
                {"name": e, "stat": stat_dict(st)} for e, st in zip(entries, stats)
                if st is not None]})
            return
        rows = [(("e" if s.ephemeral_owner else "-"), str(s.version), str(s.data_length),
                 format_time(s.mtime), e) for e, s in zip(entries, stats) if s is not None]
        wv = max((len(r[1]) for r in rows), default=0)
        wl = max((len(r[2]) for r in rows), default=0)
        _out("".join(f"{f} {v:>{wv}} {n:>{wl}} {t} {e}\n" for f, v, n, t, e in rows))
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.argument("data", required=False)
@click.option("--ephemeral", "-e", is_flag=True,
              help="Ephemeral node: print its path, then hold the session (and the node) until "
                   "SIGINT, SIGTERM or SIGHUP.")
@click.option("--sequential", "-S", "sequential", is_flag=True,
              help="Append ZooKeeper's 10-digit sequence number to the name.")
@click.option("--container", is_flag=True,
              help="Container node (the server deletes it once its last child is gone).")
@click.option("--ttl", type=click.IntRange(min=1), default=None, metavar="MS",
              help="TTL node: deleted after MS milliseconds without changes or children.")
@click.option("--parents", "-p", is_flag=True,
              help="Create missing ancestors first (persistent, null data).")
@click.option("--null", "null", is_flag=True,
              help="Null data (a directory for zkfs mount); DATA must not be given.")
@click.option("--acl", "acl_text", default=None, metavar="ACL",
              help="ACL of the new node in zkCli's form, e.g. auth::cdrwa,world:anyone:r "
                   "[default: world:anyone:cdrwa].")
@connection_options
@click.pass_context
def create(ctx: click.Context, path: str, data: str | None, ephemeral: bool, sequential: bool,
           container: bool, ttl: int | None, parents: bool, null: bool, acl_text: str | None,
           servers: str | None, timeout: float | None) -> None:
    """Create PATH with DATA (- reads standard input; default empty) and print its path."""
    from zkfs.acls import AclTextError, parse_acl

    label = f"create {path}"
    _check_path(label, path)
    try:
        acl = parse_acl(acl_text) if acl_text is not None else None
    except AclTextError as exc:
        _fail(f"{label}: --acl: {exc}", EXIT_USAGE)
    if null and data is not None:
        _fail(f"{label}: --null and DATA cannot be combined", EXIT_USAGE)
    if container and (ephemeral or sequential or ttl is not None):
        _fail(f"{label}: --container cannot be combined with --ephemeral, --sequential or --ttl",
              EXIT_USAGE)
    if ephemeral and ttl is not None:
        _fail(f"{label}: --ttl cannot be combined with --ephemeral", EXIT_USAGE)
    raw = None if null else (_read_data(label, data) if data is not None else b"")

    async def body(zk: Any) -> None:
        import trio

        if parents:
            for a in ancestors(path):
                if await zk.exists(a) is None:
                    try:
                        await zk.create(a, None)
                    except NodeExistsError:
                        pass
        if not ephemeral:
            _out(await zk.create(path, raw, acl=acl, sequential=sequential,
                                 container=container, ttl=ttl) + "\n")
            return
        async with trio.open_nursery() as nursery:
            # Signals are caught before the path is printed: a script may kill us right after
            # reading it, and the session must still be closed (taking the node with it).
            await nursery.start(_until_stopped_then_cancel, zk, nursery.cancel_scope, True)
            _out(await zk.create(path, raw, acl=acl, ephemeral=True,
                                 sequential=sequential) + "\n")
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("-r", "-R", "--recursive", is_flag=True, help="Delete PATH and all its descendants.")
@click.option("-f", "--force", is_flag=True, help="No error if PATH does not exist.")
@click.option("--version", "version", type=int, default=-1, metavar="N",
              help="Only if PATH's version is N; else exit 5.")
@connection_options
@click.pass_context
def rm(ctx: click.Context, path: str, recursive: bool, force: bool, version: int,
       servers: str | None, timeout: float | None) -> None:
    """Delete PATH (a node with children needs -r)."""
    label = f"rm {path}"
    _check_path(label, path)

    async def delete_tree(zk: Any, node: str, node_version: int) -> None:
        for _attempt in range(10):
            children = await _children_or_none(zk, node)
            if children is None:
                raise NoNodeError(path=node)
            await _gather([lambda c=c: delete_tree_quiet(zk, join_path(node, c)) for c in children])
            try:
                await zk.delete(node, node_version)
                return
            except NotEmptyError:
                continue  # a child appeared meanwhile: go again
        raise NotEmptyError(path=node)

    async def delete_tree_quiet(zk: Any, node: str) -> None:
        try:
            await delete_tree(zk, node, -1)
        except NoNodeError:
            pass

    async def body(zk: Any) -> None:
        try:
            if recursive:
                await delete_tree(zk, path, version)
            else:
                await zk.delete(path, version)
        except NoNodeError as exc:
            if not (force and exc.path in (None, path)):
                raise
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@json_option
@connection_options
@click.pass_context
def stat(ctx: click.Context, path: str, as_json: bool, servers: str | None,
         timeout: float | None) -> None:
    """Print every Stat field of PATH as name=value lines (zxids and ephemeralOwner in hex,
    times in milliseconds since the epoch)."""
    label = f"stat {path}"
    _check_path(label, path)

    async def body(zk: Any) -> None:
        st = await zk.exists(path)
        if st is None:
            raise NoNodeError(path=path)
        if as_json:
            _json_line({"path": path, "stat": stat_dict(st)})
        else:
            _out(format_stat(st))
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


# ---------------------------------------------------------------------------- ACLs

@cli.command(context_settings=CONTEXT)
@click.argument("path")
@connection_options
@click.pass_context
def getacl(ctx: click.Context, path: str, servers: str | None, timeout: float | None) -> None:
    """Print the ACL of PATH in zkCli's form: scheme:id:perms entries, comma-separated."""
    from zkfs.acls import format_acl

    label = f"getacl {path}"
    _check_path(label, path)

    async def body(zk: Any) -> None:
        acl, _stat = await zk.get_acl(path)
        _out(format_acl(acl) + "\n")
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.argument("acl")
@click.option("--version", "version", type=int, default=-1, show_default=True,
              help="Only if the ACL version (aversion) is this (-1: any).")
@connection_options
@click.pass_context
def setacl(ctx: click.Context, path: str, acl: str, version: int, servers: str | None,
           timeout: float | None) -> None:
    """Set the ACL of PATH, given as zkCli does (world:anyone:r,digest:alice:HASH:cdrwa)."""
    from zkfs.acls import AclTextError, parse_acl

    label = f"setacl {path}"
    _check_path(label, path)
    try:
        entries = parse_acl(acl)
    except AclTextError as exc:
        _fail(f"{label}: {exc}", EXIT_USAGE)

    async def body(zk: Any) -> None:
        await zk.set_acl(path, entries, version=version)
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


# ---------------------------------------------------------------------------- watch

_EVENT_NAMES = {
    EventType.NODE_CREATED: "CREATED",
    EventType.NODE_DELETED: "DELETED",
    EventType.NODE_DATA_CHANGED: "CHANGED",
    EventType.NODE_CHILDREN_CHANGED: "CHILD",
}


class _OneShotWatcher:
    """Persistent(-recursive) watch semantics from re-armed one-shot watches (zkfs.watching,
    shared with the mount), for servers without addWatch (ZooKeeper before 3.6). Changes
    between an event and its re-arming can be missed."""

    def __init__(self, zk: Any, root: str, recursive: bool, callback: Callable[..., None]) -> None:
        self.watches = OneShotWatches(zk, callback)
        self.root = root
        self.recursive = recursive
        self.known: set[str] = set()

    async def arm(self, node: str, emit: Callable[[str, str], None] | None = None) -> None:
        """Watch `node` (and, recursively, what is below it); report newly seen nodes via emit."""
        with_children = node == self.root or self.recursive
        st = await self.watches.arm(node, children=with_children)
        if st is None:
            self.known.discard(node)
            return
        if node != self.root and node not in self.known and emit is not None:
            emit("CREATED", node)
        self.known.add(node)
        if self.recursive:
            for name in sorted(self.watches.children_of(node)):
                full = join_path(node, name)
                if full not in self.known:
                    await self.arm(full, emit)

    async def handle(self, event: Any, emit: Callable[[str, str], None]) -> None:
        kind, p = event.type, event.path
        if kind == EventType.NODE_DELETED:
            if p in self.known or p == self.root:
                emit("DELETED", p)
            self.known = {k for k in self.known if not is_within(k, p)}
            self.watches.forget(p, subtree=True)
            if p == self.root:
                await self.arm(p, emit)
        elif kind == EventType.NODE_CREATED:
            emit("CREATED", p)
            self.known.add(p)
            await self.arm(p, emit)
        elif kind == EventType.NODE_DATA_CHANGED:
            emit("CHANGED", p)
            await self.watches.rearm(p)
        elif kind == EventType.NODE_CHILDREN_CHANGED:
            if not self.recursive:
                emit("CHILD", p)
            if (await self.watches.children_changed(p)).gone:
                return
            if self.recursive:
                await self.arm(p, emit)


class _Done(Exception):
    pass


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("-r", "-R", "--recursive", is_flag=True,
              help="Also report creations, deletions and changes of all descendants "
                   "(no CHILD lines then).")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None, metavar="N",
              help="Exit after N events.")
@click.option("--ready", is_flag=True,
              help="Print 'READY PATH' once the watch is set (not counted by --count).")
@click.option("--one-shot", is_flag=True,
              help="Use re-armed one-shot watches even if the server has persistent ones.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line instead: {"event": "CREATED", "path": "/a"}.')
@connection_options
@click.pass_context
def watch(ctx: click.Context, path: str, recursive: bool, count: int | None, ready: bool,
          one_shot: bool, as_json: bool, servers: str | None, timeout: float | None) -> None:
    """Print one line per change of PATH until interrupted: CREATED, DELETED, CHANGED (data)
    or CHILD (children of PATH changed), then the path. PATH need not exist yet."""
    label = f"watch {path}"
    _check_path(label, path)

    async def body(zk: Any) -> None:
        import trio

        send, receive = trio.open_memory_channel[Any](math.inf)

        def callback(event: Any) -> None:
            if event.type in _EVENT_NAMES:
                send.send_nowait(event)

        printed = 0

        def emit(kind: str, p: str) -> None:
            nonlocal printed
            if as_json:
                _json_line({"event": kind, "path": p})
            else:
                _out(f"{kind} {p}\n")
            printed += 1
            if count is not None and printed >= count:
                raise _Done()

        async def arm() -> _OneShotWatcher | None:
            if not one_shot:
                mode = WatchMode.PERSISTENT_RECURSIVE if recursive else WatchMode.PERSISTENT
                try:
                    await zk.add_watch(path, mode, callback)
                    return None
                except UnimplementedError:
                    pass  # ZooKeeper before 3.6: no addWatch
            fallback = _OneShotWatcher(zk, path, recursive, callback)
            await fallback.arm(path)
            return fallback

        async def consume(cancel: Any) -> None:
            fallback = await arm()
            if ready:
                if as_json:
                    _json_line({"event": "READY", "path": path})
                else:
                    _out(f"READY {path}\n")
            try:
                async for event in receive:
                    if fallback is not None:
                        await fallback.handle(event, emit)
                    else:
                        emit(_EVENT_NAMES[event.type], event.path)
            except _Done:
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            # Signals first, so that READY means a SIGTERM from now on ends us cleanly.
            await nursery.start(_until_stopped_then_cancel, zk, nursery.cancel_scope)
            nursery.start_soon(consume, nursery.cancel_scope)
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


# ---------------------------------------------------------------------------- recipes

class _CommandAfterDashes(click.Command):
    """A command whose trailing `-- CMD [ARGS...]` is kept verbatim (options of CMD included)
    in ctx.meta["zkfs.argv"]; everything before `--` is parsed as usual."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["zkfs.argv"] = args[i + 1:]
            args = args[:i]
        else:
            ctx.meta["zkfs.argv"] = []
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return super().collect_usage_pieces(ctx) + ["[-- CMD [ARGS]...]"]


def _note(text: str) -> None:
    """One line on stderr about what a recipe does (the journal under systemd)."""
    click.echo(f"zkfs: {text}", err=True)


async def _run_command(label: str, argv: list[str], signals: Any, wait_lost: Any,
                       kill_deadline: Callable[[], float]) -> Any:
    from zkfs import supervise

    try:
        child = supervise.start(argv)
    except FileNotFoundError:
        _fail(f"{label}: {argv[0]}: command not found", 127)
    except PermissionError:
        _fail(f"{label}: {argv[0]}: permission denied", 126)
    return await supervise.run_supervised(
        child, signals, wait_lost, kill_deadline,
        on_lost=lambda reason: _note(f"{label}: lost ({reason}): stopping the command"))


async def _unless_stopped(signals: Any, wait: Callable[[], Awaitable[object]], *,
                          also: Sequence[Callable[[], Awaitable[object]]] = ()) -> bool:
    """Run `wait` (and the `also` tasks beside it, which end with it) until it returns or a
    stopping signal arrives; True if a signal came first."""
    import trio

    from zkfs.supervise import STOPPING

    stopped = False
    async with trio.open_nursery() as nursery:
        async def waiting() -> None:
            await wait()
            nursery.cancel_scope.cancel()

        async def until_stopped() -> None:
            nonlocal stopped
            async for sig in signals:
                if sig in STOPPING:
                    stopped = True
                    nursery.cancel_scope.cancel()
                    return
        nursery.start_soon(waiting)
        nursery.start_soon(until_stopped)
        for task in also:
            nursery.start_soon(task)
    return stopped


async def _session_alive(zk: Any) -> None:
    """Raise once the session is over (expired, closed): a candidate's node went with it."""
    states = zk.subscribe_state()
    if not zk.state.is_terminal:
        async for state in states:
            if state.is_terminal:
                break
    raise SessionExpiredError()


@cli.command(cls=_CommandAfterDashes, context_settings=CONTEXT)
@click.argument("path")
@click.option("--id", "identifier", default=None, metavar="ID",
              help="This candidate's identifier, the data of its node [default: hostname].")
@click.option("--who", is_flag=True, help="Print the current leader's identifier and exit "
                                          "(exit 3 if there is none); no CMD.")
@connection_options
@click.pass_context
def elect(ctx: click.Context, path: str, identifier: str | None, who: bool,
          servers: str | None, timeout: float | None) -> None:
    """Run CMD (after --) only while this process leads PATH: zkfs elect PATH [--id ID] -- CMD.

    Candidates wait in line (ZooKeeper's lock recipe, kazoo's Election layout:
    PATH/<uuid>__lock__<seq>, data = ID). When the leader's CMD exits, zkfs elect exits
    with CMD's status and the next candidate takes over. If leadership is lost (no answer
    from the ensemble for half the session timeout, or the session expired), CMD gets SIGTERM
    at once and SIGKILL at 0.8 x the session timeout, before the session can expire and
    another candidate start; zkfs elect then exits 7. SIGTERM/SIGINT are passed on to CMD
    (while waiting they end zkfs elect with 0); SIGHUP, SIGUSR1/2 are passed on.
    """
    from zkfs.leadership import Candidacy, LeadershipLost, Lease, default_identifier, leader

    label = f"elect {path}"
    _check_path(label, path)
    argv: list[str] = ctx.meta.get("zkfs.argv", [])
    if who:
        if argv or identifier is not None:
            _fail(f"{label}: --who takes no --id and no command", EXIT_USAGE)

        async def show(zk: Any) -> int:
            current = await leader(zk, path)
            if current is None:
                _fail(f"{label}: no leader", EXIT_NO_NODE)
            _out(current.identifier + "\n")
            return EXIT_OK
        run_session(ctx, _conn(ctx, servers, timeout), label, show)
        return
    if not argv:
        _fail(f"{label}: missing the command to run: zkfs elect PATH -- CMD [ARGS...]",
              EXIT_USAGE)
    ident = identifier if identifier is not None else default_identifier()

    async def body(zk: Any) -> int:
        import trio

        from zkfs.supervise import FORWARDED, STOPPING

        with trio.open_signal_receiver(*STOPPING, *FORWARDED) as signals:
            candidacy = Candidacy(zk, path, ident)
            await candidacy.join()
            stopped = await _unless_stopped(signals, candidacy.wait_leading,
                                            also=[functools.partial(_session_alive, zk)])
            if stopped:
                await candidacy.resign()
                return EXIT_OK
            lease = Lease(zk, candidacy.node_path, since=candidacy.checked_at)
            _note(f"{label}: leading as {ident!r} ({candidacy.node}); running {argv[0]}")
            outcome = await _run_command(label, argv, signals, lease.wait_lost,
                                         lambda: lease.kill_deadline)
            if outcome.lost is not None:
                _fail(f"{label}: leadership lost ({outcome.lost}); the command was stopped",
                      EXIT_CONNECTION)
            await candidacy.resign()
            return outcome.status

    try:
        run_session(ctx, _conn(ctx, servers, timeout), label, body)
    except LeadershipLost as exc:
        _fail(f"{label}: candidacy lost: {exc}", EXIT_CONNECTION)


@cli.command(cls=_CommandAfterDashes, context_settings=CONTEXT)
@click.argument("directory")
@click.argument("name", required=False)
@click.option("--data", default=None, metavar="DATA",
              help="The member node's data [default: empty]; - reads standard input.")
@click.option("--party", is_flag=True,
              help="Name the node as kazoo's Party does (<uuid>__party__, data = NAME), so "
                   "kazoo's Party(DIRECTORY) counts this member.")
@connection_options
@click.pass_context
def register(ctx: click.Context, directory: str, name: str | None, data: str | None,
             party: bool, servers: str | None, timeout: float | None) -> None:
    """Keep the ephemeral node DIRECTORY/NAME while CMD (after --) runs:
    zkfs register DIRECTORY [NAME] [--data DATA] -- CMD.

    NAME defaults to the hostname. The node goes when CMD exits (zkfs register exits with
    CMD's status), when zkfs register is stopped, or when its session ends (kill -9: after
    the session timeout). If the session expires or the node is deleted, CMD gets SIGTERM,
    then SIGKILL, and zkfs register exits 7. A node of that name left by an earlier,
    not yet expired session is waited for.
    """
    from zkfs.leadership import Lease, Registration, default_identifier

    label = f"register {directory}"
    _check_path(label, directory)
    argv: list[str] = ctx.meta.get("zkfs.argv", [])
    if not argv:
        _fail(f"{label}: missing the command to run: zkfs register DIRECTORY [NAME] -- CMD",
              EXIT_USAGE)
    member = name if name is not None else default_identifier()
    if not member or "/" in member or member in (".", ".."):
        _fail(f"{label}: invalid member name {member!r}", EXIT_USAGE)
    raw = _read_data(label, data)
    payload = raw if raw is not None else (member.encode() if party else b"")

    async def body(zk: Any) -> int:
        import trio

        from zkfs.supervise import FORWARDED, STOPPING

        with trio.open_signal_receiver(*STOPPING, *FORWARDED) as signals:
            registration = Registration(zk, directory, member, payload, party=party)
            stopped = await _unless_stopped(signals, functools.partial(
                registration.join, on_wait=lambda owner: _note(
                    f"{label}: {registration.node_path} is still held by session "
                    f"0x{owner:x}; waiting for it to go")))
            if stopped:
                return EXIT_OK
            lease = Lease(zk, registration.node_path, strict=False)
            _note(f"{label}: registered {registration.node_path}; running {argv[0]}")
            outcome = await _run_command(label, argv, signals, lease.wait_lost,
                                         lambda: lease.kill_deadline)
            if outcome.lost is not None:
                _fail(f"{label}: registration lost ({outcome.lost}); the command was stopped",
                      EXIT_CONNECTION)
            await registration.leave()
            return outcome.status
    run_session(ctx, _conn(ctx, servers, timeout), label, body)


# ---------------------------------------------------------------------------- lock

# flock(1)'s exit status when the command cannot be executed (sysexits' EX_UNAVAILABLE).
EXIT_EXEC_FAILED = 69


@cli.command("lock", cls=_CommandAfterDashes,
             context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.argument("path")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-s", "--shared", is_flag=True, help="Take a shared (read) lock.")
@click.option("-x", "-e", "--exclusive", is_flag=True,
              help="Take an exclusive (write) lock; the default.")
@click.option("-n", "--nonblock", is_flag=True,
              help="Fail (exit 1, or -E) instead of waiting if the lock is held.")
@click.option("-w", "--wait", "--timeout", "wait", type=float, default=None, metavar="SECONDS",
              help="Fail (exit 1, or -E) if the lock is not acquired within SECONDS.")
@click.option("-E", "--conflict-exit-code", type=click.IntRange(0, 255), default=1,
              metavar="N", help="Exit status for -n and -w failures [default: 1].")
@click.option("-c", "--command", "shell_command", default=None, metavar="COMMAND",
              help="Run COMMAND with /bin/sh -c instead of CMD ARGS.")
@click.option("--servers", default=None, metavar="HOSTS",
              help=f"Connect string h1:p1,h2:p2[/chroot] [default: {DEFAULT_SERVERS}; "
                   "env ZKFS_SERVERS].")
@click.pass_context
def lock(ctx: click.Context, path: str, command: tuple[str, ...], shared: bool,
         exclusive: bool, nonblock: bool, wait: float | None, conflict_exit_code: int,
         shell_command: str | None, servers: str | None) -> None:
    """Run CMD holding the cluster-wide lock of PATH, like flock(1):
    zkfs lock PATH -- CMD [ARGS...].

    It is the lock that flock(1) and fcntl locks on the file PATH take through a mount of the
    same SERVERS (and kazoo's WriteLock/ReadLock on /.zkfs/locks/ENCODED, PATH
    percent-encoded); PATH need not exist. Exit status: CMD's (128+N if killed by signal N),
    1 (or -E) if -n or -w gave up, 69 if CMD could not be run, 7 if the lock was lost while
    CMD ran (CMD was then stopped, as under zkfs elect)."""
    label = f"lock {path}"
    _check_path(label, path)
    if shared and exclusive:
        _fail(f"{label}: -s and -x exclude each other", EXIT_USAGE)
    # `PATH -- CMD` (after --, verbatim) or, as with flock(1), `PATH CMD ARGS`.
    command = tuple(ctx.meta.get("zkfs.argv") or ()) or command
    if shell_command is not None:
        if command:
            _fail(f"{label}: -c and CMD exclude each other", EXIT_USAGE)
        argv = ["/bin/sh", "-c", shell_command]
    else:
        argv = list(command)
    if not argv:
        _fail(f"{label}: no command given (zkfs lock PATH -- CMD [ARGS...])", EXIT_USAGE)
    if wait is not None and (wait < 0 or math.isnan(wait)):
        _fail(f"{label}: -w needs a number of seconds >= 0", EXIT_USAGE)

    async def body(zk: Any) -> int:
        import socket

        import trio

        from zkfs import supervise
        from zkfs.leadership import Lease
        from zkfs.lock import LockMode, ZkLock, lock_dir

        mode = LockMode.SHARED if shared else LockMode.EXCLUSIVE
        data = f"{socket.gethostname()} pid {os.getpid()} (zkfs lock)".encode()
        contender = ZkLock(zk, lock_dir(path), mode, data)
        # The signals are ours from the start, so none can end us with our node left behind:
        # while waiting they end the wait (128+N, as flock(1) dies of them), while the
        # command runs they are passed on to it (zkfs.supervise).
        with trio.open_signal_receiver(*supervise.STOPPING, *supervise.FORWARDED) as sigs:
            stopped_by: list[int] = []
            acquired = False
            async with trio.open_nursery() as nursery:
                async def stop_waiting() -> None:
                    async for signum in sigs:
                        stopped_by.append(signum)
                        nursery.cancel_scope.cancel()
                        return
                nursery.start_soon(stop_waiting)
                # -w 0 is -n, as in flock(1).
                acquired = await contender.acquire(blocking=not nonblock and wait != 0,
                                                   timeout=wait)
                nursery.cancel_scope.cancel()
            if stopped_by:
                return 128 + stopped_by[0]
            if not acquired:
                return conflict_exit_code
            try:
                try:
                    child = supervise.start(argv)
                except OSError as exc:
                    print(f"zkfs: lock: failed to execute {argv[0]}: {exc.strerror}",
                          file=sys.stderr)
                    return EXIT_EXEC_FAILED
                # As for zkfs elect: a lock is a claim that can go stale. Cut off from the
                # ensemble, the command is stopped before the session can expire and another
                # host take the lock.
                assert contender.path is not None
                lease = Lease(zk, contender.path, since=contender.checked_at)
                outcome = await supervise.run_supervised(
                    child, sigs, lease.wait_lost, lambda: lease.kill_deadline,
                    on_lost=lambda reason: _note(f"{label}: lost ({reason}): stopping the "
                                                 "command"))
                if outcome.lost is not None:
                    _fail(f"{label}: lock lost ({outcome.lost}); the command was stopped",
                          EXIT_CONNECTION)
                return outcome.status
            finally:
                with trio.CancelScope(shield=True):
                    await contender.release()
    conn = _conn(ctx, servers, None)
    run_session(ctx, conn, label, body)


# ---------------------------------------------------------------------------- mount

def filter_mount_options(option_strings: Iterable[str]) -> str:
    """Join -o arguments into one comma list, without fstab/mount(8)/systemd-only options."""
    kept: list[str] = []
    for s in option_strings:
        for opt in s.split(","):
            opt = opt.strip()
            if opt == "rw":
                # Later options win (mount(8)): `ro,rw` is read-write.
                kept = [k for k in kept if k != "ro"]
                continue
            if not opt or opt in FSTAB_ONLY_OPTIONS or opt.startswith(FSTAB_ONLY_PREFIXES):
                continue
            kept.append(opt)
    return ",".join(kept)


def _do_mount(label: str, servers: str, mountpoint: str, options: Iterable[str],
              foreground: bool) -> int:
    from zkfs.client import parse_connect_string
    try:
        parse_connect_string(servers)
    except ValueError as exc:
        _fail(f"{label}: invalid SERVERS: {exc}", EXIT_USAGE)
    try:
        from zkfs.mount import parse_options, run_mount
    except ImportError as exc:
        _fail(f"{label}: FUSE mounting is not available: {exc}")
    try:
        kept = filter_mount_options(options)
        opts = parse_options(kept) if kept else {}
    except ValueError as exc:
        _fail(f"{label}: bad mount option: {exc}", EXIT_USAGE)
    return int(run_mount(servers, mountpoint, opts, foreground) or 0)


_MOUNT_HELP = ("Mount the znode tree of SERVERS (h1:p1,h2:p2[/chroot]) on MOUNTPOINT. "
               "Without -f the filesystem process goes to the background once the mount is "
               "ready. Unmount with fusermount3 -u MOUNTPOINT. Options: see zkfs(5); "
               "fstab-only options (defaults, _netdev, noauto, nofail, x-systemd.*, ...) are "
               "ignored.")


@cli.command(context_settings=CONTEXT, help=_MOUNT_HELP)
@click.argument("servers", metavar="SERVERS")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (for systemd).")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options, comma-separated; may be repeated.")
@click.pass_context
def mount(ctx: click.Context, servers: str, mountpoint: str, foreground: bool,
          options: tuple[str, ...]) -> None:
    ctx.exit(_do_mount("mount", servers, mountpoint, options, foreground))


@click.command("zkfs-mount", context_settings=CONTEXT,
               help=_MOUNT_HELP + " This is the helper mount.fuse3 runs for fstab entries of "
                                  "type fuse.zkfs-mount: zkfs-mount SOURCE MOUNTPOINT -o OPTS.")
@_version_option("zkfs-mount")
@click.argument("servers", metavar="SERVERS")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options, comma-separated; may be repeated.")
@click.pass_context
def mount_command(ctx: click.Context, servers: str, mountpoint: str, foreground: bool,
                  options: tuple[str, ...]) -> None:
    ctx.exit(_do_mount("mount", servers, mountpoint, options, foreground))


def mount_helper(argv: list[str]) -> int:
    """`mount.fuse.zkfs SOURCE DIR [-sfnvN] [-o OPTIONS] [-t TYPE]`: what mount(8) runs for
    `mount -t fuse.zkfs` and fstab lines of type fuse.zkfs (its external helper convention,
    mount(8) "EXTERNAL HELPERS"). -f (fake) only checks the arguments; -s, -n and -v are
    accepted; -N (another mount namespace) is not supported."""
    prog = "mount.fuse.zkfs"
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "-t", "-N"):
            if i + 1 >= len(argv):
                click.echo(f"{prog}: {arg} needs a value", err=True)
                return EXIT_USAGE
            if arg == "-o":
                options.append(argv[i + 1])
            elif arg == "-N":
                click.echo(f"{prog}: -N (mount namespaces) is not supported", err=True)
                return EXIT_USAGE
            elif argv[i + 1] not in ("fuse.zkfs", "zkfs"):
                click.echo(f"{prog}: type {argv[i + 1]!r} is not fuse.zkfs", err=True)
                return EXIT_USAGE
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnv"):
            fake = fake or "f" in arg
        elif arg.startswith("-"):
            click.echo(f"{prog}: unknown flag {arg}", err=True)
            return EXIT_USAGE
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        click.echo(f"usage: {prog} SERVERS MOUNTPOINT [-o OPTIONS]", err=True)
        return EXIT_USAGE
    if fake:
        return EXIT_OK
    try:
        return _do_mount(prog, positional[0], positional[1], options, foreground=False)
    except CommandError as exc:
        click.echo(str(exc), err=True)  # already "mount.fuse.zkfs: ..."
        return exc.status


# ---------------------------------------------------------------------------- entry points

def _run(command: click.Command, prog: str, argv: list[str] | None) -> NoReturn:
    try:
        status = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except CommandError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        status = exc.status
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        status = EXIT_USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog
        # One line, like every other error, with the pointer to --help.
        message = " ".join(exc.format_message().split())
        click.echo(f"{prog}: {message} (see '{where} --help')", err=True)
        status = EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"{prog}: {' '.join(exc.format_message().split())}", err=True)
        status = exc.exit_code
    except click.Abort:
        # Ctrl-C while click itself was busy (reading a prompt); nothing was done.
        status = 130
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        status = EXIT_PIPE
    if status is None or not isinstance(status, int):
        status = EXIT_OK
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or EXIT_PIPE
    if status == EXIT_PIPE or status == 130:
        _silence_stdout()
    sys.exit(status)


def _silence_stdout() -> None:
    """Nothing more may reach a closed pipe, not even the flush at interpreter exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> NoReturn:
    """Console script `zkfs`."""
    _run(cli, "zkfs", argv)


def mount_main(argv: list[str] | None = None) -> NoReturn:
    """Console script `zkfs-mount`: `zkfs-mount SERVERS MOUNTPOINT [-o OPTS]` (mount.fuse3)."""
    _run(mount_command, "zkfs-mount", argv)


def mount_helper_main() -> NoReturn:
    """Console script `mount.fuse.zkfs` (scripts/setup.sh links it into /sbin)."""
    sys.exit(mount_helper(sys.argv[1:]))


if __name__ == "__main__":
    main()
