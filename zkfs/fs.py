"""The FUSE operations of `zkfs mount`: ZooKeeper's tree as files and directories.

One Operations class that translates between the kernel's requests and ZooKeeper calls; the
protocol is the client's (`zkfs.client`). The contract is DESIGN.md §3 and man/zkfs.5; the
choices made here where the design leaves room are listed in the man page:

* a znode is a directory if its data is null or it has children, else a regular file;
* a directory with non-empty data shows it as the pseudo-file `.data` (a real child wins) and in
  the xattr `user.zkfs.data`;
* writes are buffered per open file and committed as one setData on flush/fsync/release
  (see `OpenFile` and man/zkfs.5 "When errors are reported"): what can be known before
  close() is reported by open() or write() (ACL, reserved path, size, the node deleted or
  changed since open); O_APPEND data is merged onto the current data at commit, O_TRUNC
  content replaces it, an in-place edit is version-checked (ESTALE);
* chmod/chown/utimens are accepted and ignored (modes and owners come from mount options,
  times from the znode);
* kernel caches are long (entry_timeout/attr_timeout, 60 s by default) and data and Stat of
  what the kernel holds are cached here (`Inode.view`); zkfs.events keeps both coherent:
  every change anywhere in the ensemble invalidates them and is replayed through the
  mountpoint as the inotify event a local change gives. Requests of that replay (recognised by
  the request's pid: the replay thread's id) are answered from `ReplayState` without touching
  the ensemble;
* read-only opens are served through the kernel's page cache while the follower keeps it
  coherent (see `_new_handle`): a cached file is re-read without reaching this process's
  read handler; writers use direct I/O (their buffers never reach the page cache);
* directory listings are cached by the kernel (FOPEN_CACHE_DIR) until a child event.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import logging
import math
import os
import random
import select
import stat as st
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from zkfs.access import Identity, may
from zkfs.acls import AclTextError, format_acl, parse_acl
from zkfs.client import OPEN_ACL_UNSAFE, Op, PendingReads, Stat, ZkClient
from zkfs.constants import MAX_DATA, CreateMode, EventType, OpCode, Perm
from zkfs.errors import (
    BadArgumentsError,
    BadVersionError,
    ConnectionLossError,
    InvalidACLError,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    NotReadOnlyError,
    QuotaExceededError,
    SessionExpiredError,
    UnimplementedError,
    ZkError,
)
from zkfs.inodes import NO_DATA, Inode, Kind
from zkfs.lock import LockMode
from zkfs.meta import (
    LIFETIMES,
    META_NAME,
    META_ROOT,
    DirSettings,
    decode_settings,
    encode_settings,
    meta_key_path,
    meta_path,
)
from zkfs.mountlocks import FlockKey, MountLocks, PosixKey, fatal_signal_pending
from zkfs.mountinfo import mounted_at
from zkfs.mountstate import (
    DATA_NAME,
    MountState,
    ReplayState,
    expected_events,
    fake_stat,
    inval_inode,
)
from zkfs.paths import is_within, join_path, parent_path
from zkfs.probing import Entry, Listing, Probe, kind_from_data, kind_from_stat

__all__ = ["DATA_NAME", "STALE_ERRNO", "MountConfig", "ZkOperations", "errno_for"]

log = logging.getLogger(__name__)

#: What close()/fsync() return when the znode changed since it was read (BadVersion) or vanished.
STALE_ERRNO = errno.ESTALE
NAME_MAX = 255
# Directory renames are one multi transaction; past these sizes mv gets EXDEV (it then copies).
MAX_RENAME_NODES = 1000
MAX_RENAME_BYTES = 512 * 1024
# statfs (see ZkOperations.statfs): nominal size and inode count, and how long it waits for
# the znode count before answering with the last one (df must not hang on a hard mount).
STATFS_BLOCK = 4096
STATFS_BYTES = 64 * 1024 ** 3
STATFS_FILES = 1 << 24
STATFS_WAIT = 2.0
# An O_APPEND commit re-reads and retries this often when other hosts keep writing, with a
# growing random pause (so that many appenders on many hosts all get through: a failure here
# is at close, which shells ignore).
_APPEND_RETRIES = 200
# How long a directory's ACL read by a lookup still judges the create of the O_CREAT open
# right behind it (the same open(2); anything older is read again).
_PARENT_ACL_FRESH = 0.5
_APPEND_BACKOFF = 0.002

STAT_XATTRS: dict[str, Callable[[Stat], str]] = {
    "user.zk.czxid": lambda s: str(s.czxid),
    "user.zk.mzxid": lambda s: str(s.mzxid),
    "user.zk.pzxid": lambda s: str(s.pzxid),
    "user.zk.ctime": lambda s: str(s.ctime),
    "user.zk.mtime": lambda s: str(s.mtime),
    "user.zk.version": lambda s: str(s.version),
    "user.zk.cversion": lambda s: str(s.cversion),
    "user.zk.aversion": lambda s: str(s.aversion),
    "user.zk.ephemeral_owner": lambda s: f"0x{s.ephemeral_owner & 0xFFFFFFFFFFFFFFFF:x}",
    "user.zk.data_length": lambda s: str(s.data_length),
    "user.zk.num_children": lambda s: str(s.num_children),
}
XATTR_DATA = "user.zkfs.data"
XATTR_LIFETIME = "user.zkfs.lifetime"
XATTR_SEQUENTIAL = "user.zkfs.sequential"
#: On a directory: how many of its children the listing cannot show (names over NAME_MAX).
XATTR_HIDDEN = "user.zkfs.hidden_names"
# The znode's ACL in zkCli's text form (zkfs.acls); setting it is setACL.
XATTR_ACL = "user.zk.acl"


def errno_for(exc: ZkError) -> int:
    """The errno a ZooKeeper error becomes at the filesystem interface."""
    table: list[tuple[type[ZkError], int]] = [
        (NoNodeError, errno.ENOENT),
        (NodeExistsError, errno.EEXIST),
        (NotEmptyError, errno.ENOTEMPTY),
        (BadVersionError, STALE_ERRNO),
        (NoAuthError, errno.EACCES),
        (InvalidACLError, errno.EINVAL),
        (BadArgumentsError, errno.EINVAL),
        # Ephemeral znodes cannot have children: creating inside one is not permitted.
        (NoChildrenForEphemeralsError, errno.EPERM),
        (NotReadOnlyError, errno.EROFS),
        (QuotaExceededError, errno.EDQUOT),
        (SessionExpiredError, errno.EIO),
        (ConnectionLossError, errno.EIO),
    ]
    for cls, code in table:
        if isinstance(exc, cls):
            return code
    return errno.EIO


@dataclass
class MountConfig:
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    read_only: bool = False
    #: hard: block while the ensemble is unreachable (like NFS); soft: EIO after `timeout`.
    hard: bool = False
    timeout: float = 10.0
    #: Defaults for directories without `user.zkfs.*` settings.
    lifetime: str = "persistent"
    sequential: bool = False
    entry_timeout: float = 60.0
    attr_timeout: float = 60.0
    #: How the mount follows changes (zkfs.events): auto (addWatch, else one-shot watches),
    #: oneshot, or none (no events; short kernel caches).
    follow: str = "auto"
    #: Permission bits shown (sshfs/rclone style): file_mode/dir_mode, then umask cleared.
    file_mode: int = 0o666
    dir_mode: int = 0o777
    umask: int = 0o022
    #: Absolute mountpoint (to recognise this mount's files in /proc/PID/fdinfo).
    mountpoint: str = ""
    #: ACL of the znodes this mount creates (acl= option); None is world:anyone:cdrwa.
    create_acl: list[Any] | None = None
    #: Credentials (scheme, credential) the session authenticates with (auth= option).
    auth: list[tuple[str, bytes]] = field(default_factory=list)
    #: Serve read-only opens through the kernel's page cache (page_cache option; see
    #: `_new_handle`). Off by default: under concurrent remote rewrites and several readers of
    #: one file, the kernel can keep a stale, larger size when it drops an attribute reply
    #: that raced an invalidation, and zero-fill a short read up to it (a torn read; see
    #: zkfs(5), "page_cache"). Direct I/O has no such window.
    page_cache: bool = False


@dataclass
class OpenFile:
    """One open file description of the mount and its buffered content.

    The content is committed as one setData when flushed (close, fsync). How it is committed
    depends on how the file was opened: O_TRUNC content replaces whatever the znode holds
    (last writer wins); O_APPEND data is appended to the znode's current data (`appended`,
    version-checked retry); anything else is an in-place edit of the content read at open,
    committed only if the znode's version is still `version` (else ESTALE).
    """
    inode: Inode
    #: The znode the content is committed to (for Kind.DATA, the directory).
    path: str
    data: bytearray
    #: Version of the content in `data` (as read at open, or as last committed).
    version: int
    #: Commit with `version` (the content depends on what was read), else unconditionally.
    conditional: bool
    dirty: bool = False
    append: bool = False
    writable: bool = False
    tgid: int = 0
    #: poll(2): the znode changed since the descriptor was opened; the pending poll handle.
    changed: bool = False
    poll_handle: Any = None
    #: Opened through the kernel's page cache (keep_cache): one of `inode.pins`.
    cached: bool = False
    #: Opened with O_TRUNC and nothing committed yet: the empty content is still to commit.
    #: It is not committed on its own while the opener still holds another descriptor of the
    #: file (the shell's dup2+close before `echo` writes), so a rewrite is one version.
    truncate_pending: bool = False
    #: For O_APPEND: the bytes appended since the last commit (what the merge appends).
    appended: bytearray | None = None
    #: An errno that poisons the handle (EFBIG, ENOENT, ESTALE): every later write fails with
    #: it and nothing more is committed through it.
    failed: int = 0
    #: An errno the next write reports (the node was deleted, replaced or, for an in-place
    #: edit, changed since open); becomes `failed` there.
    pending_error: int = 0
    #: The znode's czxid at open: a node of that name with another czxid is a replacement.
    czxid: int = 0
    #: This handle created the znode (O_CREAT): a poisoned handle removes it again.
    created: bool = False
    #: O_CREAT of a new file whose create is deferred to the first commit, which creates it
    #: with its content (one write; nothing visible before): see `ZkOperations.create`.
    pending_create: bool = False
    #: For a pending create: the lifetime of the znode to create and its ACL.
    ephemeral: bool = False


@dataclass
class AclRead:
    """A znode's ACL as read for the mode bits (`ZkOperations._acl_mode`)."""
    #: None: not known (the node vanished, or the ensemble is away).
    acl: list[Any] | None
    aversion: int
    #: False: not even the ACL may be read (NoAuth).
    readable: bool = True


@dataclass
class OpenLifetime:
    """An `open`-lifetime file: deleted when `tgid` closes its last handle on it."""
    tgid: int
    handles: set[int] = field(default_factory=set)


@dataclass
class DirHandle:
    inode: Inode
    listing: Listing | None = None
    #: The follower's event count when the listing was read (see `readdir`).
    seq: int = -1


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _translate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """ZooKeeper errors become errnos; anything unexpected is logged and becomes EIO instead of
    stopping pyfuse3's main loop."""
    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ZkError as exc:
            log.debug("%s: %r", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _tgid(pid: int) -> int:
    """The process of a request's thread (the FUSE context carries the thread id)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


def check_name(name: bytes) -> str:
    """A name ZooKeeper can hold as one path component, or EINVAL / ENAMETOOLONG."""
    if len(name) > NAME_MAX:
        raise _fail(errno.ENAMETOOLONG)
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(errno.EINVAL) from None
    if text in ("", ".", "..") or "/" in text:
        raise _fail(errno.EINVAL)
    for ch in text:
        c = ord(ch)
        # ZooKeeper's PathUtils.validatePath; it works on UTF-16 units, so anything outside
        # the BMP (a surrogate pair there) is refused too.
        if (c <= 0x1F or 0x7F <= c <= 0x9F or 0xD800 <= c <= 0xF8FF or 0xFFF0 <= c):
            raise _fail(errno.EINVAL)
    return text


def _replayed(fn: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """A handler whose requests may come from the follower's replay (zkfs.events): those
    are answered by the ReplayResponder's method of the same name, the others by the
    handler itself."""
    name = fn.__name__
    # read, write, flush, fsync and release get no request context: the handle says it.
    by_handle = name in ("read", "write", "flush", "fsync", "release")

    @functools.wraps(fn)
    async def wrapper(self: ZkOperations, *args: Any) -> Any:
        if self.responder.owns(args[0] if by_handle else None,
                               None if by_handle else args[-1]):
            return getattr(self.responder, name)(*args)
        return await fn(self, *args)
    return wrapper


class ReplayResponder:
    """Answers the requests of the follower's replay: the system calls zkfs.events makes
    through the mountpoint so that inotify reports a remote change (DESIGN.md §4). They are
    recognised by the requesting thread (the replay thread's id, `state.tid`) or by the
    handle its open got, and answered from `state` (what the change made the node), never
    from the ensemble."""

    def __init__(self, ops: ZkOperations) -> None:
        self.ops = ops
        self._fhs: set[int] = set()

    def owns(self, fh: int | None, ctx: pyfuse3.RequestContext | None) -> bool:
        """Whether the request (on handle `fh`, or from `ctx`) is the replay's."""
        if fh is not None:
            return fh in self._fhs
        r = self.ops.state.replay
        return r is not None and ctx is not None and ctx.pid == r.tid

    def _path(self, parent_inode: int, name: bytes) -> str:
        parent = self.ops._inode(parent_inode)
        if name == b".":
            return parent.path
        if name == b"..":
            return parent_path(parent.path)
        return join_path(parent.path, name.decode("utf-8", "replace"))

    def _shown(self, path: str) -> tuple[Kind, Stat, Any] | None | bool:
        """What the replay shows at `path`: (kind, stat, data), None (absent), or False
        (the replay says nothing about it)."""
        return self._replay().entries.get(path, False)

    def _replay(self) -> ReplayState:
        replay = self.ops.state.replay
        assert replay is not None  # owns() said the request is the replay's
        return replay

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        entry = self._shown(node.path)
        if entry:
            return self.ops._attr(node, entry[1])
        if node.last_attr is not None:
            return node.last_attr
        return self.ops._attr(node, fake_stat())

    def _create(self, path: str) -> pyfuse3.EntryAttributes:
        made = self._replay().creates.get(path)
        if made is None:
            raise _fail(errno.EEXIST)
        kind, stat, _ = made
        self._replay().entries[path] = made  # later lookups of the replay find it
        return self.ops._entry(path, kind, stat)

    def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        ops, path = self.ops, self._path(parent_inode, name)
        entry = self._shown(path)
        if entry is None:
            raise _fail(errno.ENOENT)
        if entry is not False:
            kind, stat, _ = entry
            return ops._entry(path, kind, stat)
        for inode in ops.inodes.bound_at(path):
            if inode.kind is not Kind.DATA and inode.last_attr is not None:
                ops.inodes.incref(inode)
                return inode.last_attr
        raise _fail(errno.ENOENT)

    def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self.ops._inode(inode))

    def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
                ) -> pyfuse3.EntryAttributes:
        return self._attr(self.ops._inode(inode))

    def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
              ) -> pyfuse3.EntryAttributes:
        return self._create(self._path(parent_inode, name))

    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
              ) -> pyfuse3.EntryAttributes:
        return self._create(self._path(parent_inode, name))

    def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.ops.inodes.unbind(self._path(parent_inode, name))

    def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.ops.inodes.unbind(self._path(parent_inode, name), (Kind.FILE,), subtree=False)

    def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh = self.ops._fh()
        self._fhs.add(fh)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return b""

    def write(self, fh: int, off: int, buf: bytes) -> int:
        return len(buf)

    def flush(self, fh: int) -> None:
        return None

    def fsync(self, fh: int, datasync: bool) -> None:
        return None

    def release(self, fh: int) -> None:
        self._fhs.discard(fh)


class ZkOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    #: flock(2) and fcntl locks are cluster-wide ZooKeeper locks (zkfs.mountlocks); this
    #: needs pyfuse3 with lock operations (contrib/pyfuse3, built by scripts/setup.sh).
    enable_posix_locks = True
    enable_flock_locks = True
    #: How often a request waiting on the ensemble looks whether its process was killed.
    KILL_CHECK_INTERVAL = 0.25

    def __init__(self, zk: ZkClient, config: MountConfig) -> None:
        super().__init__()
        self.zk = zk
        self.cfg = config
        #: Inodes, cached views, coherence, expected own events (zkfs.mountstate), shared
        #: with the change follower; `inodes` is short for its inode table.
        self.state = MountState()
        self.state.handles = self
        self.inodes = self.state.inodes
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._open_lifetime: dict[str, OpenLifetime] = {}
        #: Answers the requests of the follower's replay (see ReplayResponder).
        self.responder = ReplayResponder(self)
        # At the ensemble root (no chroot) /zookeeper is ZooKeeper's own reserved subtree.
        self._ensemble_root = zk.chroot is None
        self.locks = MountLocks(lambda: self.zk, self._zk)
        #: Requests now waiting on the ensemble: their cancel scope -> the requesting thread.
        self._waits: dict[trio.CancelScope, int] = {}
        #: whoami of the session `_identity_zk` (see _identities).
        self._identity: tuple[list[Identity], bool] = ([], False)
        self._identity_zk: ZkClient | None = None
        self._mount_id: int | None = None
        #: Directory path → names not shown (see _list); each logged once.
        self._hidden_logged: set[str] = set()
        #: Last znode count for statfs (answered from it while the ensemble is away).
        self._znodes = 1
        #: Path a lookup found absent → (when, the directory's ACL and Stat as read with it):
        #: the O_CREAT open that follows uses it (see `_create_deferred`).
        self._parent_acls: dict[str, tuple[float, tuple[list[Any], Stat]]] = {}

    # ------------------------------------------------------------------ plumbing

    async def _zk(self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """Call the client, retrying through connection loss: until `timeout` (then EIO) on a
        soft mount, forever on a hard one; a request whose process is killed meanwhile ends
        with EINTR (see `reap_killed_waits`)."""
        ctx = pyfuse3.current_request_context()
        if ctx is None:  # not for a request (the change follower)
            return await self._zk_retrying(fn, *args, **kwargs)
        with trio.CancelScope() as scope:
            self._waits[scope] = ctx.pid
            try:
                return await self._zk_retrying(fn, *args, **kwargs)
            finally:
                del self._waits[scope]
        raise _fail(errno.EINTR)

    async def reap_killed_waits(self) -> None:
        """Cancel the waits of requests whose process got SIGKILL. The kernel interrupts a
        request only once, on the first signal, and then waits uninterruptibly for our answer;
        so a killed process stays in D state until we answer, however long the ensemble is
        away. Runs for the life of the mount; costs nothing while no request waits."""
        while True:
            await trio.sleep(self.KILL_CHECK_INTERVAL)
            for scope, pid in list(self._waits.items()):
                if fatal_signal_pending(pid):
                    scope.cancel()

    async def _zk_retrying(self, fn: Callable[..., Awaitable[_T]], *args: Any,
                           **kwargs: Any) -> _T:
        deadline = math.inf if self.cfg.hard else trio.current_time() + self.cfg.timeout
        while True:
            if self.zk.state.is_terminal:
                # After an expiry the mount opens a new session (zkfs.mount): wait for it.
                if not self.state.following or self.zk.state.name == "CLOSED":
                    raise _fail(errno.EIO)
                with trio.move_on_at(deadline):
                    while self.zk.state.is_terminal:
                        await trio.sleep(0.05)
                    continue
                raise _fail(errno.EIO)
            with trio.move_on_at(deadline):
                try:
                    return await fn(*args, **kwargs)
                except ConnectionLossError:
                    if self.zk.state.is_terminal:
                        raise
                    await trio.sleep(0.1)
                    continue
            raise _fail(errno.EIO)

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise _fail(errno.ENOENT)
        return inode

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise _fail(errno.EROFS)

    def _reserved(self, path: str) -> bool:
        """Paths the mount never shows or creates."""
        return self.state.reserved(path)

    def _check_create(self, parent: Inode, name: bytes, *, data_ok: bool = False
                      ) -> tuple[str, str]:
        text = check_name(name)
        path = join_path(parent.path, text)
        if self._reserved(path):
            raise _fail(errno.EINVAL)
        if text == DATA_NAME and not data_ok:
            # `.data` names the directory's own data; the mount makes no child of that name.
            raise _fail(errno.EINVAL)
        self._check_reserved_write(path)
        return text, path

    # ------------------------------------------------------------------ change following

    def _coherent(self) -> bool:
        return self.state.coherent

    def _seq(self) -> int:
        return self.state.seq

    def new_session(self, zk: ZkClient) -> None:
        """The mount goes on with `zk` after its session expired (zkfs.mount): files that
        lived for the old session's open files, and its locks, went with it."""
        self.zk = zk
        self._open_lifetime.clear()
        self.locks.forget_all()

    def _cached_probe(self, path: str) -> Probe | None:
        view = self.state.view(path)
        if view is None:
            return None
        if view.data is NO_DATA:
            return Probe(view.stat, view.kind)
        return Probe(view.stat, view.kind, view.data, has_data=True)

    async def _write(self, *ops: Op) -> Any:
        """Send `ops` to the ensemble: one op as its own request (a create returns (path,
        Stat)), several as one multi transaction. The events they will cause are derived
        from the ops themselves (zkfs.mountstate.expected_events) and announced to the follower
        first, so that it does not replay this mount's own changes."""
        expected = expected_events(ops)
        self.state.expect(expected)
        try:
            if len(ops) > 1:
                return await self._zk(self._send_multi, list(ops))
            return await self._zk(self._send, ops[0])
        except BaseException:
            self.state.unexpect(expected)
            raise

    async def _read_many(self, ops: list[Op]) -> list[Any]:
        return await self._zk(self._read_many_now, ops)

    async def _read_many_now(self, ops: list[Op]) -> list[Any]:
        return await self.zk.read_many(ops)  # the session now (a new one after expiry)

    async def _send_reads(self, ops: list[Op]) -> PendingReads:
        return await self.zk.send_reads(ops)

    async def _send_multi(self, ops: list[Op]) -> list[Any]:
        return await self.zk.multi(ops)  # the session now (a new one after expiry)

    async def _send(self, op: Op) -> Any:
        zk = self.zk
        if op.code is OpCode.SET_DATA:
            return await zk.set(op.path, op.data, op.version)
        if op.code is OpCode.DELETE:
            return await zk.delete(op.path, op.version)
        if op.code in (OpCode.CREATE, OpCode.CREATE2):
            mode = CreateMode(op.flags)
            return await zk.create(op.path, op.data,
                                   acl=list(op.acl) if op.acl is not None else None,
                                   ephemeral=mode.is_ephemeral, sequential=mode.is_sequential,
                                   include_stat=True)
        raise ValueError(f"not a write of the mount: {op.code!r}")

    async def _drop_kernel_data(self, inode: Inode) -> None:
        """After our own commit: the kernel's attributes of `inode` are stale now (stat
        after close must show the new size). Its pages need not go: the writer's I/O was
        direct, readers of the old version read their pinned version, and a later open of
        the new one is told to drop them (keep_cache off, see `_new_handle`). Attributes
        only touch no page or lock, so this is safe inside the request, with no thread hop;
        the follower drops the pages when the event arrives."""
        self.state.drop_attrs(inode)

    def notify_pollers(self, path: str) -> None:
        for f in list(self._files.values()):
            if f.path == path:
                f.changed = True
                ph, f.poll_handle = f.poll_handle, None
                if ph is not None:
                    try:
                        ph.notify()
                    except (OSError, RuntimeError) as exc:
                        log.debug("poll notify: %r", exc)

    # ------------------------------------------------------------------ probing

    async def _probe(self, path: str, cached: bool = False) -> Probe | None:
        """Stat and kind of the znode at `path`, or None if there is none. `cached`: a value
        the follower keeps coherent may answer instead of the ensemble."""
        if cached:
            probe = self._cached_probe(path)
            if probe is not None:
                return probe
        seq = self._seq()
        if cached and path != "/" and self.state.following:
            # Data and stat together: the kernel's page cache and size must agree.
            try:
                data, stat = await self._zk(self.zk.get, path)
            except NoNodeError:
                return None
            except NoAuthError:
                return await self._probe_unreadable(path, seq)
            return Probe(stat, kind_from_data(stat, data), data, seq=seq, has_data=True)
        stat = await self._zk(self.zk.exists, path)
        if stat is None:
            return None
        kind = kind_from_stat(path, stat)
        if kind is not None:
            return Probe(stat, kind, seq=seq)
        # Empty and childless: null data (directory) or empty data (file) — only get tells.
        try:
            data, stat = await self._zk(self.zk.get, path)
        except NoNodeError:
            return None
        except NoAuthError:
            return await self._probe_unreadable(path, seq)
        return Probe(stat, kind_from_data(stat, data), data, seq=seq, has_data=True)

    async def _probe_unreadable(self, path: str, seq: int) -> Probe | None:
        """A znode whose data this mount may not read still has a Stat (exists needs no
        permission), so stat and ls -l work as on any filesystem; only reading fails. Without
        its data an empty childless znode cannot be told from a directory: it shows as a file."""
        stat = await self._zk(self.zk.exists, path)
        if stat is None:
            return None
        return Probe(stat, Kind.DIR if stat.num_children > 0 else Kind.FILE, seq=seq)

    def _attr(self, inode: Inode, stat: Stat) -> pyfuse3.EntryAttributes:
        """The attributes of `inode` at `stat` (remembered as what the kernel was told)."""
        known = inode.known_stat
        pinned = inode.pinned if inode.kind is Kind.FILE else None
        stale = False
        if pinned is not None and pinned.mzxid != stat.mzxid:
            # Page-cache handles are open on the version `pinned`: their reads are sized by
            # the size the kernel holds, so it stays that version's until they are closed
            # (close-to-open), told with no timeout so that the kernel asks again.
            stat, stale = pinned, True
        elif (known is not None and known.czxid == stat.czxid and known.mzxid > stat.mzxid):
            # An older read (an event's replay fetched before a newer change, say) must never
            # take the kernel's attributes of this znode backwards: mzxid only grows.
            stat = known
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = 0
        a.entry_timeout = self.cfg.entry_timeout
        a.attr_timeout = self.cfg.attr_timeout
        is_dir = inode.kind is Kind.DIR
        perm = (self.cfg.dir_mode if is_dir else self.cfg.file_mode) & ~self.cfg.umask & 0o7777
        if inode.acl_mode is not None:
            perm &= inode.acl_mode[1]
        if self.cfg.read_only:
            perm &= ~0o222
        a.st_mode = (st.S_IFDIR if is_dir else st.S_IFREG) | perm
        a.st_nlink = 2 if is_dir else 1
        a.st_uid = self.cfg.uid
        a.st_gid = self.cfg.gid
        size = stat.data_length
        # A writer's own uncommitted buffer is what it must see (e.g. fstat after write).
        for f in self._files.values():
            if f.inode is inode and f.dirty:
                size = len(f.data)
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        mtime_ns = stat.mtime * 1_000_000
        a.st_mtime_ns = mtime_ns
        a.st_ctime_ns = mtime_ns
        a.st_atime_ns = mtime_ns
        if inode.kind is Kind.FILE and (stale or size != stat.data_length):
            a.attr_timeout = 0
        inode.last_attr = a
        inode.known_stat = stat
        return a

    def _entry(self, path: str, kind: Kind, stat: Stat, probe: Probe | None = None,
               acl_mode: tuple[int, int] | None = None) -> pyfuse3.EntryAttributes:
        """Bind `path` to an inode, count the kernel's new reference, return its attributes."""
        inode = self.state.bind(path, kind)
        self.inodes.incref(inode)
        if acl_mode is not None:
            inode.acl_mode = acl_mode
        self._remember(inode, probe)
        return self._attr(inode, stat)

    def _remember(self, inode: Inode, probe: Probe | None) -> None:
        if not self.state.following:
            return
        self.state.bound(inode)
        if probe is not None and probe.seq >= 0 and inode.kind is not Kind.DATA:
            self.state.store_view(inode.path, inode.kind, probe.stat,
                            probe.data if probe.has_data else NO_DATA, probe.seq)

    # ------------------------------------------------------------------ directory settings

    async def _settings(self, dir_path: str) -> DirSettings:
        """The directory's settings; kept while the follower keeps them coherent (events of
        the settings' side tree drop them, see MountState.note)."""
        mp = meta_path(dir_path)
        cached = self.state.settings(mp)
        if cached is not None:
            return cached
        seq = self._seq()
        try:
            data, _ = await self._zk(self.zk.get, mp)
        except NoNodeError:
            data = None
        settings = decode_settings(data)
        self.state.store_settings(mp, settings, seq)
        return settings

    async def _effective(self, dir_path: str) -> tuple[str, bool]:
        s = await self._settings(dir_path)
        return (s.lifetime or self.cfg.lifetime,
                self.cfg.sequential if s.sequential is None else s.sequential)

    async def _store_settings(self, dir_path: str, change: dict[str, Any]) -> None:
        mp = meta_path(dir_path)
        self.state.forget_settings(mp)
        for _ in range(10):
            try:
                data, stat = await self._zk(self.zk.get, mp)
            except NoNodeError:
                data, stat = None, None
            current = decode_settings(data)
            new = DirSettings(**{"lifetime": current.lifetime,
                                 "sequential": current.sequential, **change})
            try:
                if stat is None:
                    if new.empty:
                        return
                    try:
                        await self._zk(self.zk.create, META_ROOT, None)
                    except NodeExistsError:
                        pass
                    await self._zk(self.zk.create, mp, encode_settings(new))
                elif new.empty:
                    await self._zk(self.zk.delete, mp, stat.version)
                else:
                    await self._zk(self.zk.set, mp, encode_settings(new), stat.version)
                return
            except (NodeExistsError, BadVersionError, NoNodeError):
                continue  # raced with another host: read again
        raise _fail(errno.EBUSY)

    # ------------------------------------------------------------------ lookups and attributes

    @_translate
    @_replayed
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if name == b".":
            path = parent.path
        elif name == b"..":
            path = parent_path(parent.path)
        else:
            try:
                text = check_name(name)
            except pyfuse3.FUSEError:
                raise _fail(errno.ENOENT) from None
            path = join_path(parent.path, text)
            if self._reserved(path):
                raise _fail(errno.ENOENT)
        probe, acl_read = await self._probe_with_acl(path)
        if probe is None:
            if name == DATA_NAME.encode():
                dir_probe = await self._probe(parent.path, cached=True)
                if dir_probe is not None and dir_probe.stat.data_length > 0:
                    return self._entry(parent.path, Kind.DATA, dir_probe.stat)
            raise _fail(errno.ENOENT)
        known = self.inodes.find(path, probe.kind)
        acl_mode = await self._acl_mode(path, probe.kind, probe.stat,
                                        known.acl_mode if known is not None else None,
                                        acl_read)
        return self._entry(path, probe.kind, probe.stat, probe, acl_mode)

    async def _probe_with_acl(self, path: str) -> tuple[Probe | None, AclRead | None]:
        """A lookup's probe, and the ACL (for the mode bits `ls -l` shows) when no cached
        mode can serve: both requests go out together, one round trip (the client
        pipelines them)."""
        cached = self._cached_probe(path)
        if cached is not None:
            return cached, None
        if any(i.acl_mode is not None for i in self.inodes.bound_at(path)):
            return await self._probe(path, cached=True), None
        result: list[Any] = [None, None, None]

        async def probe() -> None:
            result[0] = await self._probe(path, cached=True)

        async def acl() -> None:
            result[1] = await self._read_acl(path)

        async def parent_acl() -> None:
            try:
                result[2] = await self._zk(self.zk.get_acl, parent_path(path))
            except (ZkError, pyfuse3.FUSEError):
                pass  # the create reads it again (and reports what it finds)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe)
                nursery.start_soon(acl)
                if path != "/":
                    # If there is no such file, an O_CREAT open follows this lookup at once:
                    # its create is judged by the directory's ACL, read in this round trip.
                    nursery.start_soon(parent_acl)
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        if result[0] is None and result[2] is not None:
            if len(self._parent_acls) > 256:
                self._parent_acls.clear()  # lookups of names never created (a PATH search)
            self._parent_acls[path] = (trio.current_time(), result[2])
        return result[0], result[1]

    @_translate
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    def _is_open(self, inode: Inode) -> bool:
        return any(f.inode is inode for f in self._files.values())

    def _creating(self, inode: Inode) -> bool:
        """An open handle will create `inode`'s znode at its commit (see `_create_deferred`):
        until then the handle, not the ensemble, knows the file."""
        return any(f.inode is inode and f.pending_create for f in self._files.values())

    @_translate
    @_replayed
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        if not node.bound:
            if node.last_attr is not None and self._is_open(node):
                return node.last_attr
            raise _fail(errno.ENOENT)
        # A file an open handle creates at its commit is not asked for: not created yet.
        probe = None if self._creating(node) else await self._probe(node.path, cached=True)
        if probe is None:
            if node.known_stat is not None and self._is_open(node):
                # fstat on an open file deleted elsewhere, or not created yet (its size is
                # what was written so far).
                return self._attr(node, node.known_stat)
            self.state.detach_inode(node)
            raise _fail(errno.ENOENT)
        if node.kind is Kind.DATA:
            if probe.kind is not Kind.DIR or probe.stat.data_length == 0:
                raise _fail(errno.ENOENT)
            return self._attr(node, probe.stat)
        if node.ino != pyfuse3.ROOT_INODE and probe.kind is not node.kind:
            # The znode changed kind (a file gained a child): it has a new inode now. ESTALE
            # makes the VFS look the path up again, which finds that new inode.
            self.state.detach_inode(node)
            raise _fail(errno.ESTALE)
        self._remember(node, probe)
        acl_mode = await self._acl_mode(node.path, node.kind, probe.stat, node.acl_mode)
        if acl_mode is not None:
            node.acl_mode = acl_mode
        return self._attr(node, probe.stat)

    @_translate
    @_replayed
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        if fields.update_size:
            self._writable()
            self._check_reserved_write(node.path)
            if node.kind is Kind.DIR:
                raise _fail(errno.EISDIR)
            size = attr.st_size
            if size > MAX_DATA:
                raise _fail(errno.EFBIG)
            f = self._files.get(fh) if fh is not None else None
            if f is not None:
                # ftruncate: part of the open file's buffered content, committed with it.
                if f.failed:
                    raise _fail(f.failed)
                if f.appended is not None:
                    # No longer "data appended to whatever is there": an in-place edit.
                    f.appended = None
                del f.data[size:]
                f.data.extend(b"\0" * (size - len(f.data)))
                f.dirty = True
            else:
                await self._truncate(node.path, size)
                await self._drop_kernel_data(node)
        # chmod, chown and utimens are accepted and ignored: modes and owners come from mount
        # options and times from the znode (server-set), so tools like cp -p and sed -i work.
        return await self.getattr(inode, ctx)

    async def _truncate(self, path: str, size: int) -> None:
        for _ in range(10):
            data, stat = await self._zk(self.zk.get, path)
            if data is None:
                raise _fail(errno.EISDIR)
            if size == 0:
                await self._write(Op.set(path, b""))
                return
            new = data[:size] + b"\0" * max(0, size - len(data))
            try:
                await self._write(Op.set(path, new, stat.version))
                return
            except BadVersionError:
                continue  # someone wrote meanwhile: truncate what is there now
        raise _fail(errno.EBUSY)

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Nominal figures (man/zkfs.5, "statfs"): ZooKeeper has no fixed capacity, but tools
        and scripts that check free space need plausible ones. Size STATFS_BYTES, one block
        used per znode, inodes used = the znodes under the mount root."""
        with trio.move_on_after(STATFS_WAIT):
            try:
                self._znodes = 1 + await self.zk.get_all_children_number("/")
            except ZkError as exc:
                log.debug("statfs: %r", exc)
        s = pyfuse3.StatvfsData()
        s.f_bsize = STATFS_BLOCK
        s.f_frsize = STATFS_BLOCK
        s.f_blocks = STATFS_BYTES // STATFS_BLOCK
        used = min(self._znodes, s.f_blocks)
        s.f_bfree = s.f_blocks - used
        s.f_bavail = 0 if self.cfg.read_only else s.f_bfree
        s.f_files = STATFS_FILES
        s.f_ffree = max(0, STATFS_FILES - self._znodes)
        s.f_favail = 0 if self.cfg.read_only else s.f_ffree
        s.f_namemax = NAME_MAX
        return s

    # ------------------------------------------------------------------ directories

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._inode(inode)
        if node.kind is not Kind.DIR:
            raise _fail(errno.ENOTDIR)
        fh = self._fh()
        self._dirs[fh] = DirHandle(node)
        # The kernel caches the listing (FOPEN_CACHE_DIR) while the follower keeps it coherent,
        # and keeps a listing it holds as long as no child event came since (`Inode.listed`,
        # cleared by the follower); else it drops it and reads the directory again.
        coherent = self._coherent()
        keep = coherent and node.listed
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, cache_readdir=coherent)

    def _showable(self, path: str, names: list[str]) -> list[str]:
        """The names a listing can show. Longer than NAME_MAX bytes, a name cannot pass the
        kernel's interface: it is left out, logged once, and counted in the directory's
        `user.zkfs.hidden_names` (never silently dropped)."""
        shown = []
        for name in names:
            if len(name.encode()) > NAME_MAX:
                key = join_path(path, name)
                if key not in self._hidden_logged:
                    self._hidden_logged.add(key)
                    log.warning("%s: name of %d bytes cannot be shown (over %d); counted in "
                                "%s", key, len(name.encode()), NAME_MAX, XATTR_HIDDEN)
                continue
            shown.append(name)
        return shown

    async def _list(self, path: str) -> Listing:
        names = sorted(await self._zk(self.zk.get_children, path))
        if path == "/":
            names = [n for n in names if n != META_NAME]
        names = self._showable(path, names)
        paths = [join_path(path, n) for n in names]
        cached: dict[str, Probe] = {}
        for p in paths:
            probe = self._cached_probe(p)
            if probe is not None:
                cached[p] = probe
        sent = [p for p in paths if p not in cached]
        seq = self._seq()
        reads = await self._zk(self._send_reads, [Op.exists(p) for p in sent]) if sent else None
        # While the server answers those: the directory's own entries.
        own = await self._probe(path, cached=True)
        head: list[Entry] = []
        if DATA_NAME not in names and own is not None and own.stat.data_length > 0:
            head.append((DATA_NAME, path, Kind.DATA, own.stat))
        # `.` and `..` (ls -a); the kernel takes no reference for them.
        up = parent_path(path)
        up_probe = own if up == path else await self._probe(up, cached=True)
        dots = [(".", path, Kind.DIR, own.stat if own is not None else None),
                ("..", up, Kind.DIR, up_probe.stat if up_probe is not None else None)]
        head = [(n, p, k, st_) for n, p, k, st_ in dots if st_ is not None] + head
        return Listing(head, names, paths, cached, sent, reads, self._read_many, seq)

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        if start_id == 0 or handle.listing is None:
            handle.seq = self._seq()
            try:
                handle.listing = await self._list(handle.inode.path)
            except NoNodeError:
                handle.listing = Listing.empty()
        listing = handle.listing
        i = start_id
        while (entry := await listing.entry(i)) is not None:
            name, path, kind, stat = entry
            if name in (".", ".."):
                inode = self.inodes.find(path, Kind.DIR) or handle.inode
                if not pyfuse3.readdir_reply(token, name.encode(),
                                             self._dot_attr(inode, stat), i + 1):
                    return
                i += 1
                continue
            inode = self.state.bind(path, kind)
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(inode, stat), i + 1):
                self.inodes.forget(inode.ino, 0)  # drop it again if nobody references it
                return
            self.inodes.incref(inode)
            self._remember(inode, None)
            i += 1
        handle.inode.children = {n for n, _, k, _ in listing.entries
                                 if k is not Kind.DATA and n not in (".", "..")}
        # The kernel read the whole listing (and cached it): later opens may keep it, unless
        # an event about the directory's children came since it was read.
        if handle.seq >= 0 and self.state.unchanged_since(handle.seq, handle.inode.path):
            handle.inode.listed = True

    def _dot_attr(self, inode: Inode, stat: Stat) -> pyfuse3.EntryAttributes:
        """Attributes for a `.`/`..` entry, without touching what the kernel was told."""
        last, known = inode.last_attr, inode.known_stat
        try:
            return self._attr(inode, stat)
        finally:
            inode.last_attr, inode.known_stat = last, known

    @_translate
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_translate
    @_replayed
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        self._writable()
        _, path = self._check_create(parent, name)
        # Directories are always persistent: an ephemeral znode cannot have children.
        _, stat = await self._write(Op.create(path, None, acl=self.cfg.create_acl))
        return self._entry(path, Kind.DIR, stat)

    async def _removal(self, parent_inode: int, name: bytes
                       ) -> tuple[Inode, str, Probe | None]:
        """The directory, path and znode (None: absent) an rmdir or unlink of `name` removes,
        once it may be removed at all (a writable mount, a path the mount shows)."""
        parent = self._inode(parent_inode)
        self._writable()
        path = join_path(parent.path, check_name(name))
        self._check_reserved_write(path)
        return parent, path, await self._probe(path)

    @_translate
    @_replayed
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, path, probe = await self._removal(parent_inode, name)
        if probe is None:
            raise _fail(errno.ENOENT)
        if probe.kind is not Kind.DIR:
            raise _fail(errno.ENOTDIR)
        ops = [Op.delete(path)]
        # The directory's settings go with it, in the same transaction, so that a directory
        # made later under the same name does not inherit them.
        if await self._zk(self.zk.exists, meta_path(path)) is not None:
            ops.append(Op.delete(meta_path(path)))
        await self._write(*ops)
        self.state.detach(path)

    # ------------------------------------------------------------------ files

    def _new_handle(self, inode: Inode, path: str, data: bytes, stat: Stat, flags: int,
                    ctx: pyfuse3.RequestContext, *, created: bool = False) -> pyfuse3.FileInfo:
        fh = self._fh()
        truncated = bool(flags & os.O_TRUNC)
        append = bool(flags & os.O_APPEND) and not truncated
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        f = OpenFile(
            inode=inode, path=path, data=bytearray(b"" if truncated else data),
            version=stat.version,
            # O_TRUNC content replaces whatever is there (last writer wins); anything else
            # builds on what was read at open.
            conditional=not truncated, truncate_pending=truncated,
            append=append, appended=bytearray() if append else None,
            writable=writable,
            # The opener's process (reading /proc costs): for a writer (see _held_elsewhere)
            # and for an open-lifetime file's handles.
            tgid=_tgid(ctx.pid) if writable or path in self._open_lifetime else 0,
            czxid=stat.czxid, created=created)
        self._files[fh] = f
        owned = self._open_lifetime.get(path)
        if owned is not None and owned.tgid == f.tgid:
            owned.handles.add(fh)
        # Read-only opens use the page cache when the follower keeps it coherent and the size
        # the kernel holds is this very version's (the one read here). Then the handle is a pin
        # of that version: until the last such handle is closed the kernel is told that
        # version's size (`_attr`), so that every page it reads through the handle (served from
        # the handle's data) agrees with the size it clamps the read to, and a reader's
        # successive read(2)s see one version (close-to-open, as NFS). The pages already cached
        # are kept only if they were read for this version. Otherwise direct I/O, as for
        # writers (whose uncommitted buffers must never reach the page cache): the next stat
        # tells the kernel the current size, and the next open is cached.
        known = inode.known_stat
        if (self.cfg.page_cache and not f.writable and not truncated
                and self._coherent() and inode.kind is Kind.FILE and inode.bound
                and inode.inval_seq >= inode.noted_seq
                and known is not None and known.mzxid == stat.mzxid
                and known.czxid == stat.czxid
                and (inode.pinned is None or inode.pinned.mzxid == stat.mzxid)):
            keep = inode.pages_mzxid == stat.mzxid
            if not keep:
                # The first page-cache open of this version: the kernel may have discarded the
                # reply that told it this size (a reply older than an invalidation is ignored),
                # so its attributes are invalidated now and the first read asks again (answered
                # with this pinned version). Attributes only: safe inside the request.
                inval_inode(inode.ino, attr_only=True)
            inode.pages_mzxid = stat.mzxid
            inode.pinned = stat
            inode.pins += 1
            f.cached = True
            return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=keep)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _check_reserved_write(self, path: str) -> None:
        """ZooKeeper's own /zookeeper subtree (config, quota) is never written through the
        mount: EACCES, at open, so `echo x > /zk/zookeeper/config` fails visibly."""
        if self._ensemble_root and (path == "/zookeeper" or path.startswith("/zookeeper/")):
            raise _fail(errno.EACCES)

    async def _identities(self) -> tuple[list[Identity], bool]:
        """The session's identities (whoami) and whether its ip identity is among them."""
        zk = self.zk
        if self._identity_zk is zk:
            return self._identity
        try:
            infos = await self._zk(zk.whoami)
        except UnimplementedError:
            infos = []  # a server before 3.7: only world is known for sure
        except (pyfuse3.FUSEError, ZkError) as exc:
            # Not known now (not remembered): judge as if only world were known, which
            # refuses nothing that another identity could be allowed.
            log.debug("whoami: %r", exc)
            return [], False
        ids = [Identity(i.auth_scheme or "", i.user or "") for i in infos]
        self._identity = (ids, any(i.scheme == "ip" for i in ids))
        self._identity_zk = zk
        return self._identity

    async def _read_acl(self, path: str) -> AclRead:
        try:
            acl, acl_stat = await self._zk(self.zk.get_acl, path)
        except NoAuthError:
            return AclRead(None, -1, readable=False)
        except (NoNodeError, pyfuse3.FUSEError):
            return AclRead(None, -1)
        return AclRead(acl, acl_stat.aversion)

    async def _acl_mode(self, path: str, kind: Kind, stat: Stat,
                        known: tuple[int, int] | None, read: AclRead | None = None
                        ) -> tuple[int, int] | None:
        """The permission bits `ls -l` shows for the znode at `path`: what this mount's
        identities may do by its ACL (r: READ; w: WRITE for a file, CREATE or DELETE for a
        directory; x stays). Fetched again only when the Stat's aversion moved past `known`
        (unless `read`, fetched alongside the Stat, is given); None if it cannot be known now
        (the configured modes are shown)."""
        if kind is Kind.DATA:
            return None
        if known is not None and known[0] == stat.aversion:
            return known
        if read is None:
            read = await self._read_acl(path)
        if not read.readable:
            return (stat.aversion, 0o7111)  # not even the ACL may be read: no r, no w
        if read.acl is None:
            return None
        return await self._mode_of(read.acl, read.aversion, kind)

    async def _mode_of(self, acl: list[Any], aversion: int, kind: Kind) -> tuple[int, int]:
        """(aversion, the permission bits `acl` gives this mount's identities)."""
        ids, ip_known = await self._identities()
        mask = 0o7111
        if may(acl, Perm.READ, ids, ip_known):
            mask |= 0o444
        writes = (Perm.CREATE, Perm.DELETE) if kind is Kind.DIR else (Perm.WRITE,)
        if any(may(acl, p, ids, ip_known) for p in writes):
            mask |= 0o222
        return (aversion, mask)

    async def _created_mode(self) -> tuple[int, int] | None:
        """The permission bits of a file this mount creates, known without reading its ACL
        back: the ACL it creates with, at aversion 0 (unless it names the session's own
        identities, scheme `auth`, which the server expands)."""
        acl = self.cfg.create_acl if self.cfg.create_acl is not None else OPEN_ACL_UNSAFE
        if any(a.id.scheme == "auth" for a in acl):
            return None
        return await self._mode_of(list(acl), 0, Kind.FILE)

    async def _check_write_access(self, acl: list[Any]) -> None:
        ids, ip_known = await self._identities()
        if not may(acl, Perm.WRITE, ids, ip_known):
            raise _fail(errno.EACCES)

    async def _read_for_write(self, path: str, cached: Probe | None
                              ) -> tuple[bytes | None, Stat]:
        """Data and Stat of `path` for a handle that may write, with the write permission
        checked against the znode's ACL. The ACL is read every time: ZooKeeper sends no event
        when an ACL changes, so a cached one could not be kept coherent. The data comes from
        the cache when it is as new as the ACL's Stat says; else both are read in parallel
        (one round trip)."""
        result: dict[str, Any] = {}

        async def read_acl() -> None:
            result["acl"] = await self._zk(self.zk.get_acl, path)

        async def read_data() -> None:
            result["data"] = await self._zk(self.zk.get, path)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_acl)
                if cached is None:
                    nursery.start_soon(read_data)
            acl, acl_stat = result["acl"]
            if cached is not None:
                if cached.stat.mzxid == acl_stat.mzxid:
                    result["data"] = (cached.data, cached.stat)
                else:
                    result["data"] = await self._zk(self.zk.get, path)
        except BaseExceptionGroup as group:
            leaf = group.exceptions[0]
            if isinstance(leaf, NoNodeError):
                raise _fail(errno.ENOENT) from None
            raise leaf from None
        except NoNodeError:
            raise _fail(errno.ENOENT) from None
        await self._check_write_access(acl)
        return result["data"]

    @_translate
    @_replayed
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if node.kind is Kind.DIR:
            raise _fail(errno.EISDIR)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._writable()
            self._check_reserved_write(node.path)
        cached = self._cached_probe(node.path) if node.bound else None
        if cached is not None and not (cached.has_data and (
                cached.kind is node.kind or node.kind is Kind.DATA)):
            cached = None
        if writing:
            data, stat = await self._read_for_write(node.path, cached)
        elif cached is not None:
            data, stat = cached.data, cached.stat
        else:
            seq = self._seq()
            try:
                data, stat = await self._zk(self.zk.get, node.path)
            except NoNodeError:
                raise _fail(errno.ENOENT) from None
            kind = Kind.DIR if (data is None or stat.num_children > 0) else Kind.FILE
            self.state.store_view(node.path, kind, stat, data, seq)
        if node.kind is Kind.FILE and (data is None or stat.num_children > 0):
            # Became a directory: ESTALE makes the VFS look it up again (and find a directory).
            self.state.detach_inode(node)
            raise _fail(errno.ESTALE)
        if node.kind is Kind.DATA and not data and not writing:
            raise _fail(errno.ENOENT)
        return self._new_handle(node, node.path, data or b"", stat, flags, ctx)

    async def _create_data(self, parent: Inode, flags: int, ctx: pyfuse3.RequestContext
                           ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """O_CREAT of `.data` where no pseudo-file is shown (the directory's data is null or
        empty): it is the directory's data all the same (man/zkfs.5: one rule for `.data`).
        The mount never creates a real child of that name."""
        self._check_reserved_write(parent.path)
        data, stat = await self._read_for_write(parent.path, None)
        if data is not None and stat.num_children == 0:
            raise _fail(errno.ENOTDIR)  # it is a file now
        attr = self._entry(parent.path, Kind.DATA, stat)
        node = self._inode(attr.st_ino)
        return self._new_handle(node, parent.path, data or b"", stat, flags, ctx), attr

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        self._writable()
        parent = self._inode(parent_inode)
        if name == DATA_NAME.encode():
            if await self._probe(join_path(parent.path, DATA_NAME)) is None:
                return await self._create_data(parent, flags, ctx)
        text, path = self._check_create(parent, name, data_ok=True)
        lifetime, sequential = await self._effective(parent.path)
        if sequential and len(name) + 10 > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        if not (flags & os.O_EXCL) and not sequential and lifetime != "open":
            return await self._create_deferred(parent, path, lifetime, flags, ctx)
        try:
            created, stat = await self._write(Op.create(
                path, b"", acl=self.cfg.create_acl, ephemeral=lifetime != "persistent",
                sequential=sequential))
        except NodeExistsError:
            if flags & os.O_EXCL:
                raise
            # Created elsewhere between the kernel's lookup and now: open that one instead.
            probe = await self._probe(path)
            if probe is None or probe.kind is not Kind.FILE:
                raise _fail(errno.EEXIST) from None
            attr = self._entry(path, Kind.FILE, probe.stat)
            return await self.open(attr.st_ino, flags, ctx), attr
        attr = self._entry(created, Kind.FILE, stat)
        inode = self._inode(attr.st_ino)
        if lifetime == "open":
            self._open_lifetime[created] = OpenLifetime(_tgid(ctx.pid))
        # Nothing to truncate in a file just created: its empty content is committed already.
        fi = self._new_handle(inode, created, b"", stat, flags & ~os.O_TRUNC, ctx,
                              created=True)
        if created != path:
            # Sequential: the kernel must not remember the requested name; the file's real
            # name (with ZooKeeper's suffix) is what lookups and listings show.
            attr.entry_timeout = 0
        return fi, attr

    async def _create_deferred(self, parent: Inode, path: str, lifetime: str, flags: int,
                               ctx: pyfuse3.RequestContext
                               ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """O_CREAT without O_EXCL of a file that does not exist: created by the handle's first
        commit, with its content, as one create (`echo x > f` is one write to the ensemble,
        and nobody sees an empty file first). What the create could be refused for is
        checked now, so that open() reports it (DESIGN.md §3): the parent's ACL (CREATE),
        its existence and that it can hold children (not ephemeral). O_EXCL (the lock idiom)
        and sequential or open-lifetime files are created at open: their creation is the point.
        If another host creates the name meanwhile, the commit overwrites it (O_TRUNC's last
        writer wins; O_APPEND appends to it)."""
        read = self._parent_acls.pop(path, None)
        if read is not None and trio.current_time() - read[0] < _PARENT_ACL_FRESH:
            acl, parent_stat = read[1]  # read by the lookup of this very open
        else:
            try:
                acl, parent_stat = await self._zk(self.zk.get_acl, parent.path)
            except NoNodeError:
                raise _fail(errno.ENOENT) from None
        ids, ip_known = await self._identities()
        if not may(acl, Perm.CREATE, ids, ip_known):
            raise _fail(errno.EACCES)
        if parent_stat.ephemeral_owner != 0:
            raise _fail(errno.EPERM)  # an ephemeral znode cannot have children
        stat = fake_stat()
        attr = self._entry(path, Kind.FILE, stat, acl_mode=await self._created_mode())
        inode = self._inode(attr.st_ino)
        fi = self._new_handle(inode, path, b"", stat, flags & ~os.O_TRUNC, ctx)
        f = self._files[fi.fh]
        f.pending_create = True
        f.conditional = False
        f.ephemeral = lifetime != "persistent"
        # The kernel asks for the attributes again once the file exists.
        attr.attr_timeout = 0
        return fi, attr

    @_translate
    @_replayed
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not st.S_ISREG(mode):
            raise _fail(errno.EPERM)  # znodes hold data; no devices, fifos or sockets
        self._writable()
        _, path = self._check_create(parent, name)
        lifetime, sequential = await self._effective(parent.path)
        created, stat = await self._write(Op.create(
            path, b"", acl=self.cfg.create_acl, ephemeral=lifetime != "persistent",
            sequential=sequential))
        attr = self._entry(created, Kind.FILE, stat)
        if created != path:
            attr.entry_timeout = 0
        return attr

    @_translate
    @_replayed
    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self._files[fh]
        # A page-cache handle reads the pinned version, whose size the kernel holds (see
        # `_attr`); a direct one its own snapshot: either way, the data read at open.
        return bytes(f.data[off:off + size])

    def _poison(self, f: OpenFile, code: int) -> pyfuse3.FUSEError:
        """The handle commits nothing more; every later write fails with `code`."""
        f.failed = code
        f.pending_error = 0
        f.dirty = False
        f.truncate_pending = False
        return _fail(code)

    @_translate
    @_replayed
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self._files[fh]
        if f.failed:
            raise _fail(f.failed)
        if f.pending_error:
            # Deleted, replaced or (for an in-place edit) changed since open: say so now, not
            # at close, where `echo >` would never show it.
            raise self._poison(f, f.pending_error)
        if f.append:
            # The kernel computes append offsets from its cached size, which may be stale.
            off = len(f.data)
        end = off + len(buf)
        if end > MAX_DATA:
            # This handle's content can never be committed: none of it will be.
            raise self._poison(f, errno.EFBIG)
        if off > len(f.data):
            f.data.extend(b"\0" * (off - len(f.data)))
        f.data[off:end] = buf
        if f.appended is not None:
            f.appended.extend(buf)
        f.dirty = True
        return len(buf)

    def note_remote(self, path: str, kind: EventType) -> None:
        """A change of `path` the open handles did not make (another host's, reported by
        zkfs.events, or an unlink by another process here): they learn that their next write
        must fail (see OpenFile.pending_error)."""
        for f in self._files.values():
            if f.path != path or not f.writable or f.failed:
                continue
            if kind is EventType.NODE_DELETED:
                f.pending_error = errno.ENOENT
            elif kind is EventType.NODE_CREATED:
                if f.pending_error == errno.ENOENT:
                    f.pending_error = errno.ESTALE  # replaced by a new node of that name
            elif kind is EventType.NODE_DATA_CHANGED:
                if f.conditional and f.appended is None and not f.pending_error:
                    f.pending_error = STALE_ERRNO

    def _mnt_id(self) -> int | None:
        """This mount's id in /proc/self/mountinfo (what /proc/PID/fdinfo's mnt_id shows)."""
        if self._mount_id is None and self.cfg.mountpoint:
            entry = mounted_at(self.cfg.mountpoint)
            if entry is not None and entry.fstype.startswith("fuse"):
                self._mount_id = entry.mount_id
        return self._mount_id

    def _held_elsewhere(self, f: OpenFile) -> bool:
        """Whether the process that opened `f` still has a descriptor on its file, as after
        the shell's `dup2(fd, 1); close(fd)` of `cmd > file` (the kernel flushes at that
        close; the descriptor closing is no longer in the table when we are asked)."""
        mnt_id = self._mnt_id()
        if mnt_id is None:
            return False
        want = (f"mnt_id:\t{mnt_id}", f"ino:\t{f.inode.ino}")
        base = f"/proc/{f.tgid}/fdinfo"
        try:
            fds = os.listdir(base)
        except OSError:
            return False
        for fd in fds[:4096]:
            try:
                with open(f"{base}/{fd}") as info:
                    lines = info.read().splitlines()
            except OSError:
                continue
            if want[0] in lines and want[1] in lines:
                return True
        return False

    async def _commit(self, f: OpenFile, *, last: bool = False) -> None:
        """Commit `f`'s content if it has something to commit. `last`: the handle is being
        released (or fsync'd), so a pending truncation is committed even if alone."""
        if f.failed:
            # Reported at write(); nothing of this handle is committed, not even the file
            # its open created (removed at the opener's last close, or at release).
            f.pending_create = False
            if f.created and (last or not self._held_elsewhere(f)):
                await self._uncreate(f)
            return
        if not f.dirty:
            if not f.truncate_pending and not f.pending_create:
                return
            if not last and self._held_elsewhere(f):
                # `echo new > f`: the shell's close before echo writes. Committing the empty
                # content now would publish an empty version in the middle of a rewrite.
                return
        if f.pending_error:
            raise self._poison(f, f.pending_error)
        seq = self._seq()
        if f.pending_create:
            stat = await self._commit_create(f)
        elif f.appended is not None:
            stat = await self._commit_append(f)
        else:
            data: bytes | None = bytes(f.data)
            if f.inode.kind is Kind.DATA and not data:
                data = None  # an empty `.data` is no data: the directory stays a directory
            try:
                stat = await self._write(Op.set(f.path, data,
                                                f.version if f.conditional else -1))
            except BadVersionError:
                # Changed by someone else in the instant before close: refuse to overwrite
                # their update (only an in-place edit is version-checked).
                raise self._poison(f, STALE_ERRNO) from None
            except NoNodeError:
                raise self._poison(f, errno.ENOENT) from None
        f.version = stat.version
        f.czxid = stat.czxid
        f.dirty = False
        f.truncate_pending = False
        f.pending_create = False
        f.created = False  # what it committed stays, whatever happens to the handle later
        # Another handle of this mount editing the old content in place is stale now.
        for other in self._files.values():
            if (other is not f and other.path == f.path and other.writable
                    and other.conditional and other.appended is None):
                other.pending_error = other.pending_error or STALE_ERRNO
        # Read-after-close on this host: the kernel must not keep the old pages or size.
        await self._drop_kernel_data(f.inode)
        if f.inode.kind is Kind.FILE and f.appended is None:
            # The attributes the kernel asks for next (stat after close, the permission
            # check of the next open) come from what this write left, not from a read.
            self.state.store_written(f.path, Kind.FILE, stat, bytes(f.data), seq)

    async def _commit_create(self, f: OpenFile) -> Stat:
        """The deferred create of `f` (see `_create_deferred`), carrying its content."""
        data = bytes(f.data)
        try:
            _, stat = await self._write(Op.create(f.path, data, acl=self.cfg.create_acl,
                                                  ephemeral=f.ephemeral))
            if f.appended is not None:
                f.appended = bytearray()  # committed: what the next commit appends starts anew
            return stat
        except NodeExistsError:
            pass
        except NoNodeError:
            raise self._poison(f, errno.ENOENT) from None  # the directory went meanwhile
        # Created by someone else since open: this handle's content goes onto it, as an
        # O_TRUNC rewrite (last writer wins) or appended. Its ACL is theirs.
        f.pending_create = False
        f.inode.acl_mode = None
        try:
            current, now = await self._zk(self.zk.get, f.path)
        except NoNodeError:
            raise self._poison(f, errno.ENOENT) from None
        if current is None or now.num_children > 0:
            raise self._poison(f, errno.EISDIR)
        f.czxid, f.version = now.czxid, now.version
        if f.appended is not None:
            f.data = bytearray(current)
            f.appended = bytearray(data)
            f.data.extend(data)
            return await self._commit_append(f)
        try:
            return await self._write(Op.set(f.path, data))
        except NoNodeError:
            raise self._poison(f, errno.ENOENT) from None

    async def _uncreate(self, f: OpenFile) -> None:
        """Delete the file `f`'s open created, if it is still as created (version-checked)."""
        f.created = False
        if f.inode.kind is not Kind.FILE:
            return
        try:
            await self._write(Op.delete(f.path, f.version))
        except (NoNodeError, BadVersionError, NotEmptyError):
            return
        self._open_lifetime.pop(f.path, None)
        self.state.detach(f.path, (Kind.FILE,), subtree=False)

    async def _commit_append(self, f: OpenFile) -> Stat:
        """O_APPEND: the bytes written through `f` since its last commit go after whatever the
        znode holds now. First try: nothing changed since we read it; else read and retry."""
        assert f.appended is not None
        tail = bytes(f.appended)
        data, version = bytes(f.data), f.version
        for attempt in range(_APPEND_RETRIES):
            if len(data) > MAX_DATA:
                # Someone else's data made it too big: could not be known at write().
                raise self._poison(f, errno.EFBIG)
            try:
                stat = await self._write(Op.set(f.path, data, version))
            except BadVersionError:
                pass
            except NoNodeError:
                raise self._poison(f, errno.ENOENT) from None
            else:
                f.data = bytearray(data)
                f.appended = bytearray()
                return stat
            try:
                current, now = await self._zk(self.zk.get, f.path)
            except NoNodeError:
                raise self._poison(f, errno.ENOENT) from None
            if now.czxid != f.czxid:
                raise self._poison(f, errno.ESTALE)  # a new node of that name
            data, version = (current or b"") + tail, now.version
            await trio.sleep(random.uniform(0, _APPEND_BACKOFF * min(attempt, 25)))
        raise self._poison(f, errno.EBUSY)

    @_translate
    @_replayed
    async def flush(self, fh: int) -> None:
        await self._commit(self._files[fh])

    @_translate
    @_replayed
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._commit(self._files[fh], last=True)

    @_translate
    async def poll(self, inode: int, fh: int, poll_handle: Any,
                   ctx: pyfuse3.RequestContext) -> int:
        """Readable (POLLIN|POLLPRI) once the znode changed or was deleted since the descriptor
        was opened; until then the poller sleeps and is woken by the change."""
        f = self._files.get(fh)
        if f is None:
            return select.POLLIN | select.POLLRDNORM
        if f.changed:
            return select.POLLIN | select.POLLRDNORM | select.POLLPRI
        if poll_handle is not None:
            f.poll_handle = poll_handle
        return 0

    @_translate
    @_replayed
    async def release(self, fh: int) -> None:
        f = self._files.pop(fh, None)
        if f is None:
            return
        if f.cached:
            inode = f.inode
            inode.pins -= 1
            if inode.pins <= 0:
                inode.pins = 0
                inode.pinned = None
        try:
            await self._commit(f, last=True)
        except pyfuse3.FUSEError as exc:
            log.info("commit of %s at release failed: %s", f.path, exc)
        owned = self._open_lifetime.get(f.path)
        if owned is not None and fh in owned.handles:
            owned.handles.discard(fh)
            if not owned.handles:
                # The creating process closed its last descriptor: the file goes (ORCLOSE).
                del self._open_lifetime[f.path]
                try:
                    await self._write(Op.delete(f.path))
                except NoNodeError:
                    pass
                self.state.detach(f.path, (Kind.FILE,), subtree=False)

    @_translate
    @_replayed
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, path, probe = await self._removal(parent_inode, name)
        if probe is None:
            if name == DATA_NAME.encode():
                # Removing the pseudo-file makes the directory's data null again.
                await self._write(Op.set(parent.path, None))
                self.inodes.unbind(parent.path, (Kind.DATA,), subtree=False)
                return
            raise _fail(errno.ENOENT)
        if probe.kind is Kind.DIR:
            raise _fail(errno.EISDIR)
        await self._write(Op.delete(path))
        self._open_lifetime.pop(path, None)
        # Descriptors other processes here hold on it: their next write says ENOENT.
        self.note_remote(path, EventType.NODE_DELETED)
        self.inodes.unbind(path, (Kind.FILE,), subtree=False)

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EPERM)  # a znode has exactly one path

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EPERM)

    # ------------------------------------------------------------------ rename

    @_translate
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fail(errno.EINVAL)  # ZooKeeper has no atomic swap of two paths' contents
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        old_parent = self._inode(parent_inode_old)
        new_parent = self._inode(parent_inode_new)
        old = join_path(old_parent.path, check_name(name_old))
        self._check_reserved_write(old)
        _, new = self._check_create(new_parent, name_new, data_ok=True)
        if old == new:
            return
        for _ in range(10):
            src = await self._probe(old)
            if src is None:
                if name_old == DATA_NAME.encode():
                    raise _fail(errno.EXDEV)  # mv copies the pseudo-file, then unlinks it
                raise _fail(errno.ENOENT)
            try:
                if src.kind is Kind.DIR:
                    await self._rename_dir(old, new, noreplace)
                else:
                    await self._rename_file(old, new, new_parent.path,
                                            name_new == DATA_NAME.encode(), noreplace)
            except (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError) as exc:
                # Lost a race with another host between our reads and the transaction.
                log.debug("rename %s -> %s: %r, retrying", old, new, exc)
                await trio.sleep(0.01)
                continue
            break
        else:
            raise _fail(errno.EBUSY)
        owned = self._open_lifetime.pop(old, None)
        if owned is not None:
            self._open_lifetime[new] = owned
        self.inodes.rename(old, new)

    async def _rename_file(self, old: str, new: str, new_dir: str, to_data: bool,
                           noreplace: bool) -> None:
        data, sstat = await self._zk(self.zk.get, old)
        if data is None or sstat.num_children > 0:
            raise NotEmptyError(path=old)  # became a directory meanwhile: retry as one
        target = await self._probe(new)
        if target is None and to_data:
            own = await self._probe(new_dir)
            if own is None:
                raise NoNodeError(path=new_dir)
            # Onto `.data`: becomes the directory's data (sed -i DIR/.data), whether or not
            # the directory had data (one rule for `.data`; the mount makes no such child).
            await self._write(Op.set(new_dir, data or None, own.stat.version),
                              Op.delete(old, sstat.version))
            return
        ops: list[Op] = []
        if target is not None:
            if noreplace:
                raise _fail(errno.EEXIST)
            if target.kind is Kind.DIR:
                raise _fail(errno.EISDIR)
            ops.append(Op.delete(new, target.stat.version))
        # The file is created anew in the target directory, so that directory's lifetime
        # applies (a sequential directory keeps the name given: mv names it explicitly).
        lifetime, _ = await self._effective(new_dir)
        ops += [Op.create(new, data, acl=self.cfg.create_acl,
                          ephemeral=lifetime != "persistent"),
                Op.delete(old, sstat.version)]
        await self._write(*ops)

    async def _rename_dir(self, old: str, new: str, noreplace: bool) -> None:
        # Collect the subtree (parents before children); too big or ephemeral → EXDEV, and
        # mv falls back to copying and deleting.
        nodes: list[tuple[str, bytes | None, Stat]] = []
        queue = [old]
        total = 0
        while queue:
            path = queue.pop(0)
            data, stat = await self._zk(self.zk.get, path)
            if stat.ephemeral_owner != 0:
                raise _fail(errno.EXDEV)
            total += len(data or b"")
            nodes.append((path, data, stat))
            if len(nodes) > MAX_RENAME_NODES or total > MAX_RENAME_BYTES:
                raise _fail(errno.EXDEV)
            if stat.num_children:
                children = sorted(await self._zk(self.zk.get_children, path))
                queue.extend(join_path(path, c) for c in children)
        ops: list[Op] = []
        target = await self._probe(new)
        if target is not None:
            if noreplace:
                raise _fail(errno.EEXIST)
            if target.kind is not Kind.DIR:
                raise _fail(errno.ENOTDIR)
            if target.stat.num_children:
                raise _fail(errno.ENOTEMPTY)
            ops.append(Op.delete(new, target.stat.version))
            if await self._zk(self.zk.exists, meta_path(new)) is not None:
                ops.append(Op.delete(meta_path(new)))
        for path, data, _ in nodes:
            ops.append(Op.create(new + path[len(old):], data))
        for path, _, stat in reversed(nodes):
            ops.append(Op.delete(path, stat.version))
        # Directory settings move with their directories.
        try:
            keys = await self._zk(self.zk.get_children, META_ROOT)
        except NoNodeError:
            keys = []
        for key in keys:
            dpath = meta_key_path(key)
            if is_within(dpath, old):
                mdata, mstat = await self._zk(self.zk.get, join_path(META_ROOT, key))
                ops.append(Op.create(meta_path(new + dpath[len(old):]), mdata))
                ops.append(Op.delete(join_path(META_ROOT, key), mstat.version))
        await self._write(*ops)

    # ------------------------------------------------------------------ extended attributes

    async def _is_dir_now(self, node: Inode) -> bool:
        """Whether the znode of `node` is a directory now. A file inode whose znode just gained
        a child (or another client created it with children) is a directory before the
        follower has replaced its inode: its extended attributes are the directory's."""
        if node.kind is not Kind.FILE:
            return node.kind is Kind.DIR
        stat = await self._zk(self.zk.exists, node.path)
        if stat is None:
            return False
        if stat.num_children > 0:
            return True
        if stat.data_length > 0:
            return False
        try:
            data, _ = await self._zk(self.zk.get, node.path)
        except NoNodeError:
            return False
        return data is None

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._inode(inode)
        key = name.decode("utf-8", "replace")
        if key in STAT_XATTRS:
            stat = await self._zk(self.zk.exists, node.path)
            if stat is None:
                raise _fail(errno.ENOENT)
            return STAT_XATTRS[key](stat).encode()
        if key == XATTR_ACL:
            acl, _ = await self._zk(self.zk.get_acl, node.path)
            return format_acl(acl).encode()
        if key not in (XATTR_DATA, XATTR_HIDDEN, XATTR_LIFETIME, XATTR_SEQUENTIAL):
            # Not ours (ls -l asks every file for security.selinux): no round trip.
            raise _fail(pyfuse3.ENOATTR)
        if await self._is_dir_now(node):
            if key == XATTR_DATA:
                data, _ = await self._zk(self.zk.get, node.path)
                if data is None:
                    raise _fail(pyfuse3.ENOATTR)
                return data
            if key == XATTR_HIDDEN:
                names = await self._zk(self.zk.get_children, node.path)
                return str(len(names) - len(self._showable(node.path, names))).encode()
            if key in (XATTR_LIFETIME, XATTR_SEQUENTIAL):
                # The effective value, mount default included, so scripts can just ask.
                lifetime, sequential = await self._effective(node.path)
                return (lifetime if key == XATTR_LIFETIME else str(int(sequential))).encode()
        raise _fail(pyfuse3.ENOATTR)

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._inode(inode)
        names = [k.encode() for k in STAT_XATTRS] + [XATTR_ACL.encode()]
        if await self._is_dir_now(node):
            data, _ = await self._zk(self.zk.get, node.path)
            if data is not None:
                names.append(XATTR_DATA.encode())
            # Only what is explicitly set, so `cp -a` copies settings, not mount defaults.
            s = await self._settings(node.path)
            if s.lifetime is not None:
                names.append(XATTR_LIFETIME.encode())
            if s.sequential is not None:
                names.append(XATTR_SEQUENTIAL.encode())
            children = await self._zk(self.zk.get_children, node.path)
            if len(self._showable(node.path, children)) < len(children):
                names.append(XATTR_HIDDEN.encode())
        return names

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        key = name.decode("utf-8", "replace")
        if key in STAT_XATTRS:
            raise _fail(errno.EPERM)  # the server keeps the Stat
        if key == XATTR_ACL:
            self._writable()
            self._check_reserved_write(node.path)
            try:
                acl = parse_acl(value.decode("utf-8", "replace"))
            except AclTextError:
                raise _fail(errno.EINVAL) from None
            await self._zk(self.zk.set_acl, node.path, acl)
            # The next getattr fetches the new ACL and ls -l shows the new bits. (Other mounts
            # get no event for an ACL change: they show it once their cached Stat is refreshed.)
            node.acl_mode = None
            # attr_only touches no page or lock, so it is safe inside this request.
            pyfuse3.invalidate_inode(node.ino, attr_only=True)
            return
        if key not in (XATTR_DATA, XATTR_LIFETIME, XATTR_SEQUENTIAL):
            raise _fail(errno.ENOTSUP)
        self._writable()
        self._check_reserved_write(node.path)
        if node.kind is not Kind.DIR:
            raise _fail(errno.EINVAL)
        if key == XATTR_DATA:
            if len(value) > MAX_DATA:
                raise _fail(errno.EFBIG)
            await self._write(Op.set(node.path, value))
            return
        text = value.decode("utf-8", "replace").strip()
        if key == XATTR_LIFETIME:
            if text not in LIFETIMES:
                raise _fail(errno.EINVAL)
            await self._store_settings(node.path, {"lifetime": text})
        else:
            if text not in ("0", "1"):
                raise _fail(errno.EINVAL)
            await self._store_settings(node.path, {"sequential": text == "1"})

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        key = name.decode("utf-8", "replace")
        if key in STAT_XATTRS:
            raise _fail(errno.EPERM)
        self._writable()
        if node.kind is Kind.DIR and key == XATTR_DATA:
            await self._write(Op.set(node.path, None))
            return
        if node.kind is Kind.DIR and key in (XATTR_LIFETIME, XATTR_SEQUENTIAL):
            await self._store_settings(
                node.path, {"lifetime" if key == XATTR_LIFETIME else "sequential": None})
            return
        raise _fail(pyfuse3.ENOATTR)

    # ------------------------------------------------------------------ locks

    @staticmethod
    def _whole_file(lock: pyfuse3.FileLock) -> None:
        # ZooKeeper's recipe locks a whole file; a byte range cannot be honoured cluster-wide,
        # and locking more than asked could deadlock programs that lock disjoint ranges.
        if lock.start != 0 or lock.length != 0:
            raise _fail(errno.ENOLCK)

    @_translate
    async def flock(self, inode: int, fh: int, owner: int, op: int,
                    ctx: pyfuse3.RequestContext) -> None:
        key = FlockKey(fh)
        if op & fcntl.LOCK_UN:
            await self.locks.unlock(key)
            return
        node = self._inode(inode)
        mode = LockMode.EXCLUSIVE if op & fcntl.LOCK_EX else LockMode.SHARED
        # A waiting flock() ends with EINTR on any signal its process handles (flock -w uses
        # SIGALRM, Ctrl-C) or on SIGKILL: the kernel interrupts the request.
        with pyfuse3.interruptible():
            if not await self.locks.lock(key, node.path, mode,
                                         blocking=not op & fcntl.LOCK_NB, pid=ctx.pid):
                raise _fail(errno.EWOULDBLOCK)

    @_translate
    async def setlk(self, inode: int, fh: int, owner: int, lock: pyfuse3.FileLock,
                    sleep: bool, ctx: pyfuse3.RequestContext) -> None:
        key = PosixKey(owner, inode)
        if lock.type == fcntl.F_UNLCK:
            # Also every close() of the owner's descriptors (pyfuse3, before flush): cheap
            # when nothing is held.
            await self.locks.unlock(key)
            return
        self._whole_file(lock)
        node = self._inode(inode)
        mode = LockMode.EXCLUSIVE if lock.type == fcntl.F_WRLCK else LockMode.SHARED
        with pyfuse3.interruptible():
            if not await self.locks.lock(key, node.path, mode, blocking=sleep,
                                         pid=_tgid(ctx.pid)):
                raise _fail(errno.EAGAIN)

    @_translate
    async def getlk(self, inode: int, fh: int, owner: int, lock: pyfuse3.FileLock,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.FileLock:
        self._whole_file(lock)
        node = self._inode(inode)
        mode = LockMode.EXCLUSIVE if lock.type == fcntl.F_WRLCK else LockMode.SHARED
        holder = await self.locks.conflict(PosixKey(owner, inode), node.path, mode)
        if holder is None:
            return pyfuse3.FileLock(fcntl.F_UNLCK, 0, 0, 0)
        # The holder's pid if it is a process on this host, else 0 (it is on another host).
        return pyfuse3.FileLock(fcntl.F_WRLCK if holder.mode is LockMode.EXCLUSIVE
                                else fcntl.F_RDLCK, 0, 0, self.locks.local_pid(holder.name))
