"""`zkfs mount`: run the FUSE filesystem of zkfs.fs against a ZooKeeper ensemble.

`run_mount` parses the options, then (unless in the foreground) forks: the child connects,
mounts and serves; the parent waits on a pipe until the child reports the mount ready (exit 0)
or failed (its one-line error, exit 1), so `zkfs mount SERVERS /zk && ls /zk` works.

Shutdown is always the same path: SIGTERM, SIGINT or SIGHUP ends the FUSE loop, as does
`umount`/`fusermount3 -u` from outside; then the filesystem is unmounted and the ZooKeeper
session closed (closeSession), so its ephemeral (`session`) files vanish for everyone at once.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import subprocess
import sys
import time

import pyfuse3
import trio

from zkfs.acls import CREATOR_ALL, AclTextError, parse_acl
from zkfs.client import ClientState, ZkClient, open_client
from zkfs.credentials import CredentialError, load_credentials
from zkfs.jute import ACL
from zkfs.errors import ConnectionLossError, ZkError
from zkfs.events import ChangeFollower
from zkfs.fs import MountConfig, ZkOperations
from zkfs.meta import LIFETIMES
from zkfs.mountinfo import mounted_at

__all__ = ["parse_options", "run_mount", "build_config", "MountOptionError"]

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT = 10.0
# Options of mount(8)/fstab/systemd that mean nothing here (mount.fuse3 passes some through).
_IGNORED = frozenset({"defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner",
                      "group", "_netdev", "nofail", "dev", "nodev", "suid", "nosuid", "exec",
                      "noexec", "atime", "relatime", "sync", "async", "sw", "loop"})
_KNOWN = frozenset({"session_timeout", "ro", "hard", "soft", "timeout", "allow_other",
                    "allow_root", "uid", "gid", "lifetime", "sequential", "fsname",
                    "entry_timeout", "attr_timeout", "debug", "logfile", "auto_unmount",
                    "watch", "umask", "file_mode", "dir_mode", "noatime", "nodiratime",
                    "strictatime", "replace", "auth", "acl", "page_cache"})
#: Options of which only the last given counts (`-o ro,rw` is read-write, as with mount(8)).
_EXCLUSIVE = (frozenset({"ro", "rw"}), frozenset({"hard", "soft"}),
              frozenset({"atime", "noatime", "relatime", "strictatime"}),
              frozenset({"exec", "noexec"}), frozenset({"suid", "nosuid"}),
              frozenset({"dev", "nodev"}), frozenset({"sync", "async"}))
#: Passed to the kernel as mount flags (shown in /proc/mounts).
_KERNEL_FLAGS = ("noatime", "nodiratime")
FOLLOW_MODES = ("auto", "oneshot", "none")
#: Requests served at once (pyfuse3 worker tasks). Each process waiting for a lock occupies
#: one, and an unlock must still find one free: far above pyfuse3's default of 99.
MAX_REQUESTS = 10_000
#: How long an unmount by signal waits for requests in progress (lock waits never end).
SHUTDOWN_GRACE = 2.0
#: Kernel cache timeouts: long when the mount follows changes (they are invalidated on every
#: event), short without (`watch=none`).
FOLLOWED_CACHE_TIMEOUT = 60.0
UNFOLLOWED_CACHE_TIMEOUT = 1.0


class MountOptionError(ValueError):
    pass


def parse_options(text: str) -> dict[str, str]:
    """`"a=b,c"` → `{"a": "b", "c": ""}`. Later options override earlier ones, as with
    mount(8): a repeated key keeps its last value, and of `ro`/`rw`, `hard`/`soft`,
    `noatime`/`relatime`/... only the last one given stays."""
    options: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise MountOptionError(f"empty option name in {item!r}")
        for group in _EXCLUSIVE:
            if key in group:
                for other in group:
                    options.pop(other, None)
        options.pop(key, None)
        options[key] = value.strip()
    return options


def _mode(options: dict[str, str], key: str, default: int) -> int:
    if key not in options:
        return default
    try:
        value = int(options[key], 8)
    except ValueError:
        raise MountOptionError(f"{key}= needs an octal mode such as 0644, "
                               f"not {options[key]!r}") from None
    if not 0 <= value <= 0o7777:
        raise MountOptionError(f"{key}= must be between 0 and 07777")
    return value


def _seconds(options: dict[str, str], key: str, default: float) -> float:
    if key not in options:
        return default
    try:
        value = float(options[key])
    except ValueError:
        raise MountOptionError(f"{key}= needs a number of seconds, not {options[key]!r}") from None
    if value < 0 or (value == 0 and key in ("session_timeout", "timeout")):
        raise MountOptionError(f"{key}= must be positive")
    return value


def _id(options: dict[str, str], key: str, default: int) -> int:
    if key not in options:
        return default
    try:
        return int(options[key])
    except ValueError:
        raise MountOptionError(f"{key}= needs a numeric id, not {options[key]!r}") from None


def build_config(options: dict[str, str], servers: str = "zkfs"
                 ) -> tuple[MountConfig, float, set[str]]:
    """(filesystem config, session timeout in seconds, FUSE mount options) from `options`."""
    unknown = sorted(k for k in options
                     if k not in _KNOWN and k not in _IGNORED and not k.startswith("x-"))
    if unknown:
        raise MountOptionError(f"unknown option(s): {', '.join(unknown)}")
    if "strictatime" in options:
        raise MountOptionError("strictatime: zkfs keeps no access times (a file's atime is "
                               "its znode's mtime); use noatime or relatime")
    session_timeout = _seconds(options, "session_timeout", DEFAULT_SESSION_TIMEOUT)
    lifetime = options.get("lifetime", "persistent")
    if lifetime not in LIFETIMES:
        raise MountOptionError(f"lifetime= must be one of {', '.join(LIFETIMES)}")
    follow = options.get("watch", "auto")
    if follow not in FOLLOW_MODES:
        raise MountOptionError(f"watch= must be one of {', '.join(FOLLOW_MODES)}")
    cache_default = (UNFOLLOWED_CACHE_TIMEOUT if follow == "none"
                     else FOLLOWED_CACHE_TIMEOUT)
    sequential = options.get("sequential", "0")
    if sequential not in ("0", "1"):
        raise MountOptionError("sequential= must be 0 or 1")
    try:
        auth = load_credentials(options.get("auth"))
    except CredentialError as exc:
        raise MountOptionError(f"auth=: {exc}") from None
    cfg = MountConfig(
        uid=_id(options, "uid", os.getuid()),
        gid=_id(options, "gid", os.getgid()),
        read_only="ro" in options,
        hard="hard" in options,
        timeout=_seconds(options, "timeout", session_timeout),
        lifetime=lifetime,
        sequential=sequential == "1",
        entry_timeout=_seconds(options, "entry_timeout", cache_default),
        attr_timeout=_seconds(options, "attr_timeout", cache_default),
        follow=follow,
        file_mode=_mode(options, "file_mode", 0o666),
        dir_mode=_mode(options, "dir_mode", 0o777),
        umask=_mode(options, "umask", 0o022),
        create_acl=_create_acl(options.get("acl", "world")),
        auth=auth,
        page_cache="page_cache" in options,
    )
    # The source column of /proc/mounts and df: the connect string, like host:path for NFS.
    # libfuse splits its option string at commas, and a connect string has them: escape them.
    fsname = (options.get("fsname") or servers).replace("\\", "\\\\").replace(",", "\\,")
    fuse_options = {f"fsname={fsname}", "subtype=zkfs",
                    # The kernel checks modes against our uid/gid/mode bits.
                    "default_permissions"}
    for flag in ("allow_other", "allow_root", "ro", "auto_unmount", *_KERNEL_FLAGS):
        if flag in options:
            fuse_options.add(flag)
    return cfg, session_timeout, fuse_options


def _create_acl(text: str) -> list[ACL] | None:
    """acl=: world (everyone may do everything, ZooKeeper's usual default), creator (only the
    identities this mount authenticated as), or entries in zkCli's form separated by `;`
    (commas separate mount options), e.g. `acl=auth::cdrwa;world:anyone:r`."""
    if text == "world":
        return None
    if text == "creator":
        return list(CREATOR_ALL)
    try:
        return parse_acl(text.replace(";", ","))
    except AclTextError as exc:
        raise MountOptionError(f"acl=: {exc} (or acl=world, acl=creator)") from None


def _setup_logging(options: dict[str, str], foreground: bool) -> None:
    """logfile= if given; else stderr in the foreground (journal style under systemd), and
    syslog (/dev/log, i.e. the journal) in the background, where stderr is /dev/null."""
    from zkfs.sdnotify import log_handler, syslog_handler

    level = logging.DEBUG if "debug" in options else logging.WARNING
    stream_format = "%(asctime)s zkfs[%(process)d] %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler | None = None
    if options.get("logfile"):
        handler = logging.FileHandler(options["logfile"])
        handler.setFormatter(logging.Formatter(stream_format))
    elif not foreground:
        handler = syslog_handler("zkfs-mount")
    if handler is None:
        handler = log_handler(stream_format)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _Sessions:
    """The mount's ZooKeeper session, and a new one whenever it expires.

    After an expiry the mount does not stay dead: it opens a new session, and the follower
    compares what the kernel holds with the tree (changes missed meanwhile become events).
    The first session is handed over by `run`'s task_status; later ones go to `on_new`.
    """

    def __init__(self, servers: str, session_timeout: float,
                 auth: list[tuple[str, bytes]]) -> None:
        self.servers = servers
        self.session_timeout = session_timeout
        self.auth = auth
        self.on_new: callable | None = None  # type: ignore[valid-type]
        self._stop = trio.Event()

    def stop(self) -> None:
        """End the session cleanly (closeSession) instead of cancelling it mid-request."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[ZkClient] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        first = True
        while True:
            try:
                async with open_client(self.servers, session_timeout=self.session_timeout,
                                       auth=self.auth) as zk:
                    if first:
                        first = False
                        task_status.started(zk)
                    else:
                        log.warning("new ZooKeeper session 0x%x after expiry", zk.session_id)
                        if self.on_new is not None:
                            await self.on_new(zk)
                    states = zk.subscribe_state()
                    async with trio.open_nursery() as waiting:
                        async def until_terminal() -> None:
                            if not zk.state.is_terminal:
                                async for state in states:
                                    if state.is_terminal:
                                        break
                            waiting.cancel_scope.cancel()
                        waiting.start_soon(until_terminal)
                        await self._stop.wait()
                        waiting.cancel_scope.cancel()
                    if self._stop.is_set() or zk.state is not ClientState.EXPIRED:
                        return
                    log.warning("ZooKeeper session 0x%x expired; opening a new one",
                                zk.session_id)
            except ConnectionLossError:
                if first:
                    raise
                await trio.sleep(0.5)


async def _serve(servers: str, mountpoint: str, cfg: MountConfig, session_timeout: float,
                 fuse_options: set[str], report: callable) -> int:  # type: ignore[valid-type]
    sessions = _Sessions(servers, session_timeout, cfg.auth)
    try:
        async with trio.open_nursery() as nursery:
            zk = await nursery.start(sessions.run)
            if await zk.exists("/") is None:
                report(f"error: {servers}: the chroot does not exist")
                sessions.stop()
                return 1
            ops = ZkOperations(zk, cfg)
            follower: ChangeFollower | None = None
            if cfg.follow != "none":
                follower = ChangeFollower(ops.state, mountpoint,
                                          one_shot=cfg.follow == "oneshot",
                                          replay=not cfg.read_only)

                async def on_new(new_zk: ZkClient) -> None:
                    ops.new_session(new_zk)
                    await follower.attach(new_zk, new_session=True)
                sessions.on_new = on_new
            try:
                pyfuse3.init(ops, mountpoint, fuse_options)
            except RuntimeError as exc:
                report(f"error: cannot mount on {mountpoint}: {exc}")
                sessions.stop()
                return 1
            try:
                async with trio.open_nursery() as inner:
                    if follower is not None:
                        await follower.attach(zk, new_session=False)
                        inner.start_soon(follower.run)
                    report("ok")
                    inner.start_soon(_on_signals, inner.cancel_scope)
                    inner.start_soon(ops.reap_killed_waits)
                    await pyfuse3.main(max_tasks=MAX_REQUESTS)
                    inner.cancel_scope.cancel()
            finally:
                # Unmounts if still mounted (signal); harmless after an outside umount.
                pyfuse3.close(unmount=True)
                sessions.stop()
            # Leaving the session's `open_client` closes it: our ephemeral files go at once.
        return 0
    except (ZkError, OSError) as exc:
        report(f"error: cannot connect to {servers}: {exc}")
        return 1
    except BaseExceptionGroup as group:
        leaf = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, (ZkError, OSError)):
            report(f"error: cannot connect to {servers}: {leaf}")
            return 1
        raise


async def _on_signals(serving: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            # pyfuse3.main() returns once every request in progress is answered; a process
            # waiting for a lock (or on a hard mount for an absent ensemble) would keep it
            # forever. After a grace period those requests are abandoned: unmounting then ends
            # them in the kernel (the waiting process gets an error).
            await trio.sleep(SHUTDOWN_GRACE)
            log.warning("requests still waiting after %gs: abandoning them", SHUTDOWN_GRACE)
            serving.cancel()
            return


def _check_mountpoint(mountpoint: str, replace: bool) -> tuple[str, int] | None:
    """Refuse to stack a mount on a mounted path: (message, exit status), or None if fine.
    A dead FUSE mount ("Transport endpoint is not connected") is lazily unmounted first
    when `replace` is given; a live one is always refused."""
    dead = False
    try:
        is_dir = os.path.isdir(mountpoint) if os.stat(mountpoint) else False
        # The kernel may answer stat of a dead FUSE mount's root from its cache; statfs
        # always asks the (gone) filesystem process.
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return f"{mountpoint}: {exc.strerror}", 2
        dead, is_dir = True, True
    on = mounted_at(mountpoint) or mounted_at(os.path.realpath(mountpoint))
    if on is not None and not dead:
        return (f"{mountpoint}: already mounted ({on.fstype} {on.source}); unmount it first "
                f"(fusermount3 -u {mountpoint})", 1)
    if dead:
        what = f"{on.fstype} {on.source}" if on is not None else "a FUSE mount"
        if not replace:
            return (f"{mountpoint}: a dead mount is there ({what}: transport endpoint is not "
                    f"connected); unmount it (fusermount3 -u {mountpoint}) or mount with "
                    f"-o replace", 1)
        log.warning("replacing the dead mount on %s (%s)", mountpoint, what)
        for cmd in (["fusermount3", "-uz", mountpoint], ["umount", "-l", mountpoint]):
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            try:
                os.statvfs(mountpoint)
                break
            except OSError:
                continue
        try:
            is_dir = os.path.isdir(mountpoint) if os.stat(mountpoint) else False
            os.statvfs(mountpoint)
        except OSError as exc:
            return f"{mountpoint}: cannot replace the dead mount: {exc.strerror}", 1
    if not is_dir:
        return f"{mountpoint}: not a directory", 2
    return None


def run_mount(servers: str, mountpoint: str, options: dict[str, str], foreground: bool) -> int:
    """Mount ZooKeeper `servers` on `mountpoint`; the exit status of `zkfs mount`."""
    try:
        cfg, session_timeout, fuse_options = build_config(options, servers)
    except MountOptionError as exc:
        print(f"zkfs mount: {exc}", file=sys.stderr)
        return 2
    if not (hasattr(pyfuse3, "interruptible") and hasattr(pyfuse3.Operations, "setlk")):
        # Without lock operations the kernel would lock on this host only: flock on the mount
        # would seem to work and exclude nobody elsewhere.
        print("zkfs mount: the installed pyfuse3 lacks lock operations (cluster-wide locks "
              "would be host-local); install the patched build: scripts/setup.sh, "
              "contrib/pyfuse3", file=sys.stderr)
        return 1
    mountpoint = os.path.abspath(mountpoint)
    problem = _check_mountpoint(mountpoint, replace="replace" in options)
    if problem is not None:
        message, code = problem
        print(f"zkfs mount: {message}", file=sys.stderr)
        return code
    cfg.mountpoint = mountpoint

    if foreground:
        from zkfs.sdnotify import notifier, run_watchdog, watchdog_interval

        _setup_logging(options, foreground=True)
        # systemd (Type=notify): READY=1 once mounted, WATCHDOG=1, STOPPING=1 on the way out.
        notify = notifier()
        interval = watchdog_interval()

        def report_fg(message: str) -> None:
            if message == "ok":
                notify.ready(f"mounted {servers} on {mountpoint}")
            else:
                print(f"zkfs mount: {message}", file=sys.stderr)

        async def serve_fg() -> int:
            async with trio.open_nursery() as nursery:
                if interval is not None:
                    nursery.start_soon(run_watchdog, notify, interval)
                code = await _serve(servers, mountpoint, cfg, session_timeout, fuse_options,
                                    report_fg)
                nursery.cancel_scope.cancel()
            return code
        try:
            return trio.run(serve_fg)
        finally:
            notify.stopping(f"unmounted {mountpoint}")

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: becomes the filesystem daemon
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            _setup_logging(options, foreground=False)
            reported = False

            def report_bg(message: str) -> None:
                nonlocal reported
                if not reported:
                    reported = True
                    os.write(write_fd, message.encode() + b"\n")
                    os.close(write_fd)
            code = trio.run(_serve, servers, mountpoint, cfg, session_timeout, fuse_options,
                            report_bg)
        except BaseException:  # noqa: BLE001 - a daemon child must never return to the caller
            logging.getLogger(__name__).exception("zkfs mount failed")
        finally:
            os._exit(code)

    os.close(write_fd)
    # Connecting may take up to the session timeout; mounting itself is quick.
    deadline = time.monotonic() + session_timeout + 15
    message = b""
    while time.monotonic() < deadline and not message.endswith(b"\n"):
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        message += chunk
    os.close(read_fd)
    text = message.decode(errors="replace").strip()
    if text == "ok":
        return 0
    if not text:
        text = "error: the filesystem process did not report a mount in time"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    print(f"zkfs mount: {text}", file=sys.stderr)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    return 1
