"""`zkfsd`: command-line entry point of the zkfs coordination server."""
from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sys

import click

from zkfsd.config import ConfigError, build_config
from zkfsd.service import Logging, Reloader
from zkfsd.zkimport import ZkImportError, is_zookeeper_dir, load_zookeeper_dir, write_zkfsd_data_dir

log = logging.getLogger("zkfsd")

# Exit status, also documented in man/zkfsd.8.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def setup_logging(level: str, log_file: str | None = None) -> Logging:
    """stderr (journal style under systemd) or --log-file; see zkfsd.service.Logging."""
    logs = Logging(level=level, log_file=log_file)
    logs.install()
    return logs


def _check_dir(what: str, path: str) -> str | None:
    """Why `path` cannot hold zkfsd's files (one line), or None if it can."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"{what} {path}: {exc.strerror or exc}"
    if not os.path.isdir(path):
        return f"{what} {path}: not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {path}: not writable"
    return None


def _single_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` if it is one, possibly wrapped in (nested) one-member groups.

    trio wraps errors from nurseries in ExceptionGroups; an operator should still get one clear line
    for "address already in use" instead of a traceback.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


def _single_error(exc: BaseException, types: tuple[type[BaseException], ...]
                  ) -> BaseException | None:
    """Like _single_os_error, for any of `types`."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, types) else None


# Allocations between young-generation collections (CPython's default: 700).
_GC_YOUNG = 20000

_STARTUP_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EROFS, errno.ENOSPC}


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Options given on the command line override the same setting in --config. "
        "SIGTERM (or SIGINT) stops the server cleanly; SIGHUP reopens --log-file and re-reads --config. Exit status: 0 clean stop, 1 failure, "
        "2 bad configuration. 'zkfsd import --from-zookeeper ZK_DATA_DIR --data-dir DIR' converts "
        "Apache ZooKeeper's data (see 'zkfsd import --help'). See zkfsd(8) for zoo.cfg keys and "
        "four-letter words."
    ),
)
@click.option("--config", "config_file", metavar="FILE",
              help="ZooKeeper-style zoo.cfg to read (dataDir, clientPort, tickTime, server.N, ...).")
@click.option("--data-dir", metavar="DIR",
              help="Directory for snapshots, the myid file and (by default) the transaction log. "
                   "Required here or as dataDir in --config.")
@click.option("--data-log-dir", metavar="DIR",
              help="Put the transaction log on its own directory (ideally its own disk).")
@click.option("--client-port", type=int, metavar="PORT",
              help="TCP port for ZooKeeper clients and four-letter words.  [default: 2181]")
@click.option("--client-address", metavar="ADDR",
              help="Address to listen on for clients.  [default: 127.0.0.1]")
@click.option("--tick-time", type=int, metavar="MS",
              help="Basic time unit in milliseconds; session timeout bounds derive from it.  "
                   "[default: 2000]")
@click.option("--min-session-timeout", type=int, metavar="MS",
              help="Smallest session timeout granted to clients.  [default: 2 x tick time]")
@click.option("--max-session-timeout", type=int, metavar="MS",
              help="Largest session timeout granted to clients.  [default: 20 x tick time]")
@click.option("--my-id", type=int, metavar="N",
              help="This server's id among the server.N lines (instead of DATA_DIR/myid).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Least severe log messages written to stderr.")
@click.option("--log-file", metavar="FILE",
              help="Append the log to FILE instead of stderr; SIGHUP reopens it (logrotate).")
@click.version_option(package_name="zkfs", prog_name="zkfsd")
def main(
    config_file: str | None,
    data_dir: str | None,
    data_log_dir: str | None,
    client_port: int | None,
    client_address: str | None,
    tick_time: int | None,
    min_session_timeout: int | None,
    max_session_timeout: int | None,
    my_id: int | None,
    log_level: str,
    log_file: str | None,
) -> None:
    """Run zkfsd, a server that speaks ZooKeeper's client protocol.

    Unmodified ZooKeeper clients (zkCli.sh, kazoo, Curator) connect to it on the client port.
    It runs in the foreground and logs to stderr, one line per event.

    \b
    Example:
      zkfsd --data-dir /var/lib/zkfs --client-port 2181
      zkfsd --config /etc/zkfs/zoo.cfg
    """
    # SIGHUP (a closed terminal, `systemctl reload`) must never kill zkfsd: ignored until the
    # service loop handles it (zkfsd.service).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        logs = setup_logging(log_level, log_file)
    except OSError as e:
        click.echo(f"zkfsd: configuration error: --log-file {log_file}: {e.strerror or e}",
                   err=True)
        sys.exit(EXIT_CONFIG)
    overrides = dict(
        data_dir=data_dir,
        data_log_dir=data_log_dir,
        client_port=client_port,
        client_address=client_address,
        tick_time=tick_time,
        min_session_timeout=min_session_timeout,
        max_session_timeout=max_session_timeout,
        my_id=my_id,
    )
    try:
        config = build_config(config_file, **overrides)
    except (ConfigError, OSError) as e:
        # One line, no traceback: the message is for the operator, not a bug report.
        click.echo(f"zkfsd: configuration error: {e}", err=True)
        sys.exit(EXIT_CONFIG)
    for what, path in (("data directory", config.data_dir), ("log directory", config.log_dir)):
        if is_zookeeper_dir(path):
            # Starting would serve an empty tree beside ZooKeeper's files: the data is there,
            # just in another format.
            click.echo(f"zkfsd: configuration error: {what} {path} holds Apache ZooKeeper data "
                       f"(version-2); convert it with 'zkfsd import --from-zookeeper {path} "
                       f"--data-dir NEW_DIR' and start on NEW_DIR", err=True)
            sys.exit(EXIT_CONFIG)
        problem = _check_dir(what, path)
        if problem is not None:
            click.echo(f"zkfsd: configuration error: {problem}", err=True)
            sys.exit(EXIT_CONFIG)

    # Imported here so `zkfsd --help` and config errors do not pay for (or depend on) the server.
    import trio

    from zkfsd import service
    from zkfsd.server import LogEntryError
    from zkfsd.storage import StorageError

    log.info(
        "starting: data_dir=%s log_dir=%s client=%s:%s tick=%dms session timeout %d-%dms%s",
        config.data_dir, config.log_dir, config.client_address,
        "none (TLS only)" if config.client_port is None else config.client_port,
        config.tick_time, config.min_timeout, config.max_timeout,
        f" my_id={config.my_id} servers={sorted(config.servers)}" if config.servers else " standalone",
    )
    # The cyclic garbage collector's default thresholds run a young-generation pass every 700
    # allocations and an older one every 7,000: a write allocates dozens of short-lived
    # containers (records, transactions, the Ready), so under load the collector took a tenth
    # of the CPU (bench/cpu.py profiles, "Write path (issue 12, second pass)" in BENCHMARKS.md).
    # Nothing on the request path relies on cycles being freed promptly.
    gc.set_threshold(_GC_YOUNG, 20, 10)
    try:
        trio.run(service.run, config, Reloader(logs, config_file, overrides))
    except KeyboardInterrupt:
        # Only reachable before serve() installs its own SIGINT handling (during start-up).
        log.info("interrupted, exiting")
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as e:  # noqa: BLE001 - only to turn common start-up failures into one line
        data_error = _single_error(e, (StorageError, LogEntryError))
        if data_error is not None:
            # A data directory this zkfsd cannot read (a newer format, lost entries) or a log
            # entry it cannot apply: one line for the operator, not a traceback.
            log.error("cannot continue: %s", data_error)
            click.echo(f"zkfsd: {data_error}", err=True)
            sys.exit(EXIT_CONFIG if isinstance(data_error, StorageError) else EXIT_FAILURE)
        os_error = _single_os_error(e)
        if os_error is not None and os_error.errno in _STARTUP_ERRNOS:
            log.error("cannot start: %s", os_error)
            sys.exit(EXIT_FAILURE)
        raise
    log.info("stopped")
    sys.exit(EXIT_OK)


@click.command(
    "import",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit status: 0 imported, 1 failed to write, 2 unreadable ZooKeeper data or unusable "
           "target. See zkfsd(8).",
)
@click.option("--from-zookeeper", "zk_data_dir", required=True, metavar="ZK_DATA_DIR",
              help="ZooKeeper's dataDir (the directory holding version-2), read only.")
@click.option("--from-zookeeper-log-dir", "zk_log_dir", metavar="ZK_LOG_DIR",
              help="ZooKeeper's dataLogDir, if its transaction logs are not in ZK_DATA_DIR.")
@click.option("--data-dir", required=True, metavar="DIR",
              help="New zkfsd data directory to create (must be empty or missing).")
@click.option("--data-log-dir", metavar="DIR",
              help="zkfsd transaction log directory, if it is to be separate.")
@click.option("--keep-ephemerals", is_flag=True,
              help="Keep session-owned ephemeral znodes as persistent ones instead of dropping "
                   "them (their sessions cannot move to zkfsd).")
def import_main(zk_data_dir: str, zk_log_dir: str | None, data_dir: str,
                data_log_dir: str | None, keep_ephemerals: bool) -> None:
    """Convert a stopped Apache ZooKeeper's data into a new zkfsd data directory.

    Reads the newest snapshot and every later transaction of the logs, and writes the same tree
    (data, Stat fields, ACLs) as zkfsd's first snapshot. ZooKeeper's files are not changed.
    For an ensemble, import into every member's data directory (each gets its own myid).
    """
    for path in filter(None, (data_dir, data_log_dir)):
        if os.path.isdir(path) and os.listdir(path) and set(os.listdir(path)) != {"myid"}:
            click.echo(f"zkfsd import: {path} is not empty; import into a new directory", err=True)
            sys.exit(EXIT_CONFIG)
    try:
        imported = load_zookeeper_dir(zk_data_dir, zk_log_dir, keep_ephemerals=keep_ephemerals)
    except (ZkImportError, OSError) as e:
        click.echo(f"zkfsd import: cannot read ZooKeeper data: {e}", err=True)
        sys.exit(EXIT_CONFIG)
    for what, path in (("data directory", data_dir), ("log directory", data_log_dir)):
        problem = path and _check_dir(what, path)
        if problem:
            click.echo(f"zkfsd import: {problem}", err=True)
            sys.exit(EXIT_CONFIG)
    try:
        write_zkfsd_data_dir(imported, data_dir, data_log_dir)
    except OSError as e:
        click.echo(f"zkfsd import: cannot write {data_dir}: {e.strerror or e}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"imported {len(imported.nodes)} znodes (snapshot 0x{imported.snapshot_zxid:x} "
               f"+ {imported.txns_replayed} logged transactions, last zxid "
               f"0x{imported.last_zxid:x}) into {data_dir}; "
               f"{len(imported.ephemerals)} ephemeral znodes "
               f"{'kept as persistent' if keep_ephemerals else 'dropped'}; new zxids continue "
               f"above the imported ones")


def run(argv: list[str] | None = None) -> None:
    """Console script `zkfsd`: `main`, with click's usage errors as one line and exit 2, like
    every other configuration error (systemd's journal shows one clear line).

    `zkfsd import ...` is the one subcommand; it is dispatched here rather than by a click group
    so that `zkfsd --data-dir ...` keeps parsing exactly as before."""
    args = sys.argv[1:] if argv is None else argv
    command, prog = main, "zkfsd"
    if args[:1] == ["import"]:
        command, prog, args = import_main, "zkfsd import", args[1:]
    try:
        status = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.UsageError as e:
        message = " ".join(e.format_message().split())
        click.echo(f"{prog}: {message} (see '{prog} --help')", err=True)
        status = EXIT_CONFIG
    except click.ClickException as e:
        click.echo(f"{prog}: {' '.join(e.format_message().split())}", err=True)
        status = e.exit_code
    except click.Abort:
        status = EXIT_INTERRUPTED
    sys.exit(status if isinstance(status, int) else EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    run()
