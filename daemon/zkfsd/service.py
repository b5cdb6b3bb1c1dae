"""zkfsd as a system service: systemd readiness and status, the watchdog, SIGHUP, logging.

`run` wraps `server.serve` without reaching into it: it starts the member, then
- sends READY=1 once the member serves clients (its log is replayed, the client port is open
  and it knows a leader; a member of an ensemble without a majority is not ready),
- keeps STATUS= current with the member's role and leader (checked a few times a second: a
  comparison of two integers, far cheaper than a hook into the consensus loop),
- pings WATCHDOG=1 every WatchdogSec/2 from the event loop (a stuck loop stops the pings),
- on SIGHUP reopens --log-file and re-reads --config, applying what can change at run time,
- sends STOPPING=1 when the member stops.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import trio

from zkfs.sdnotify import Notifier, log_handler, notifier, run_watchdog, watchdog_interval
from zkfsd.config import ConfigError, ServerConfig, build_config

log = logging.getLogger("zkfsd")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Settings a running member can take from a re-read config file; the rest need a restart.
RELOADABLE = ("four_letter_words", "snap_count")
# How often STATUS= is compared with the member's role and leader.
STATUS_INTERVAL = 0.25


@dataclass
class Logging:
    """Where zkfsd logs: --log-file (reopened on SIGHUP, for logrotate) or stderr."""
    level: str = "INFO"
    log_file: str | None = None
    handler: logging.Handler | None = field(default=None, repr=False)

    def install(self) -> None:
        new: logging.Handler
        if self.log_file:
            new = logging.FileHandler(self.log_file)
            new.setFormatter(logging.Formatter(LOG_FORMAT))
        else:
            new = log_handler(LOG_FORMAT)
        root = logging.getLogger()
        old, self.handler = self.handler, new
        # Replace rather than add handlers, so calling main() twice in one process (tests)
        # does not print every line twice.
        root.handlers[:] = [new]
        root.setLevel(self.level.upper())
        if old is not None:
            old.close()


@dataclass
class Reloader:
    """What SIGHUP does: the config file and command-line overrides zkfsd started with."""
    logging: Logging
    config_file: str | None
    overrides: dict[str, Any]

    def reload(self, config: ServerConfig) -> str:
        """Reopen the log, re-read the config, apply what may change; one line saying what."""
        self.logging.install()
        done = ["log reopened" if self.logging.log_file else "nothing to reopen (stderr)"]
        if not self.config_file:
            return "; ".join(done + ["no --config to re-read"])
        try:
            fresh = build_config(self.config_file, **self.overrides)
        except (ConfigError, OSError) as exc:
            return "; ".join(done + [f"{self.config_file} not applied: {exc}"])
        applied = [name for name in RELOADABLE if getattr(fresh, name) != getattr(config, name)]
        for name in applied:
            setattr(config, name, getattr(fresh, name))
        ignored = [name for name, value in vars(fresh).items()
                   if name not in RELOADABLE and name != "extra" and value != getattr(config, name)]
        done.append(f"{self.config_file} re-read")
        done.append(f"applied {', '.join(applied)}" if applied else "nothing to apply")
        if ignored:
            done.append(f"changes to {', '.join(sorted(ignored))} take effect at restart")
        return "; ".join(done)


def status_line(server: Any) -> str:
    """`systemctl status` text: role, leader and where clients connect."""
    where = server.listening_on()
    role = server.role()
    if role == "standalone":
        return f"standalone, serving clients on {where}"
    members = f"member {server.member_id} of {len(server.voters)}"
    if role == "read-only":
        return f"read-only: no quorum ({members}), serving read-only clients on {where}"
    if role == "observer":
        members = f"member {server.member_id}, beside {len(server.voters)} voting members"
        if not server.core.leader_id:
            return f"observer looking for a leader ({members}); not serving clients"
        return (f"observer of leader {server.core.leader_id} ({members}), serving clients on "
                f"{where}")
    if role == "looking":
        return f"looking for a leader ({members}); not serving clients"
    if role == "leader":
        return f"leader ({members}), serving clients on {where}"
    return f"follower of leader {server.core.leader_id} ({members}), serving clients on {where}"


async def _track_status(server: Any, notify: Notifier) -> None:
    ready = False
    last = ""
    while True:
        line = status_line(server)
        if server.serving and not ready:
            ready = True
            last = line
            notify.ready(line)
            log.info("ready: %s", line)
        elif line != last:
            # Before READY too: `systemctl status` shows a member waiting for a majority.
            last = line
            notify.status(line)
        await trio.sleep(STATUS_INTERVAL)


async def _hangups(config: ServerConfig, reloader: Reloader,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    # The member shares `config` (ZkServer keeps the object), so what is applied here is
    # what it uses from the next request on.
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            log.info("SIGHUP: %s", reloader.reload(config))


async def run(config: ServerConfig, reloader: Reloader) -> None:
    """Run one member (zkfsd.server.serve) with the service machinery around it."""
    from zkfsd.server import serve

    notify = notifier()
    interval = watchdog_interval()
    try:
        async with trio.open_nursery() as nursery:
            # SIGHUP is ignored until here (cli.main) and handled from here on: it never kills.
            await nursery.start(_hangups, config, reloader)
            if interval is not None:
                nursery.start_soon(run_watchdog, notify, interval)

            async def member(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                             ) -> None:
                await serve(config, task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped (SIGTERM): end the helpers too

            server = await nursery.start(member)
            nursery.start_soon(_track_status, server, notify)
    finally:
        notify.stopping("stopping")
        notify.close()
