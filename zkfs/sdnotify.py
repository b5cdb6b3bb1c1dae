"""systemd's notify protocol (sd_notify(3)) and journal-aware logging, for zkfsd and the mount.

Both daemons run under `Type=notify` units: they send READY=1 once they are usable, STATUS=
lines a human reads in `systemctl status`, WATCHDOG=1 keep-alives when the unit sets
WatchdogSec=, and STOPPING=1 on the way out. Without $NOTIFY_SOCKET every call is a no-op, so
nothing changes outside systemd. No dependency on libsystemd: the protocol is one datagram on
an AF_UNIX socket (a leading '@' names an abstract socket).

The same module decides how the daemons log: under systemd ($JOURNAL_STREAM set and naming
our stderr), lines carry `<N>` syslog priority prefixes (sd-daemon(3)) and no timestamp of
their own, since journald adds both.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable

import trio

__all__ = ["Notifier", "notifier", "watchdog_interval", "run_watchdog", "under_journal",
           "JournalFormatter", "log_handler", "syslog_handler"]


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET (if set); never raises."""

    def __init__(self, address: str | None) -> None:
        self.address: str | bytes | None = None
        if address and address[0] in "/@":
            # '@name' is the abstract namespace: a leading NUL byte on the wire.
            self.address = "\0" + address[1:] if address[0] == "@" else address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; True if it was delivered."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            # systemd may be gone (shutdown) or the socket full; the daemon must carry on.
            logging.getLogger("zkfs.sdnotify").debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def notifier() -> Notifier:
    """The notifier for this process. $NOTIFY_SOCKET is removed from the environment so that
    children (a mount's helpers, `zkfs elect`'s command) cannot speak for us."""
    return Notifier(os.environ.pop("NOTIFY_SOCKET", None))


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked.

    $WATCHDOG_PID, when set, must be our pid (systemd sets it for the main process only)."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


async def run_watchdog(notify: Notifier, interval: float,
                       healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping the watchdog every `interval` seconds while `healthy()`; a hung event loop (or an
    unhealthy daemon) stops the pings and systemd restarts the unit."""
    while True:
        if healthy():
            notify.watchdog()
        await trio.sleep(interval)


# ---------------------------------------------------------------------------- logging

def under_journal(stream: object = None) -> bool:
    """True when `stream` (stderr) is connected to journald: $JOURNAL_STREAM is `dev:inode`
    of that file descriptor (systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
        dev, _, ino = value.partition(":")
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """`<6>name: message`: journald parses the priority and stamps the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        # A traceback spans lines; each line is its own journal entry and needs the prefix.
        return "\n".join(prefix + line for line in text.split("\n"))


def log_handler(stream_format: str, body_format: str = "%(name)s: %(message)s"
                ) -> logging.Handler:
    """A stderr handler: journal style under systemd, `stream_format` otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter(body_format))
    else:
        handler.setFormatter(logging.Formatter(stream_format))
    return handler


#: The local syslog socket; journald listens on it under systemd.
SYSLOG_ADDRESS = "/dev/log"


def syslog_handler(ident: str) -> logging.Handler | None:
    """A handler writing to the local syslog socket (SYSLOG_ADDRESS), or None when there is
    none (a container without syslog)."""
    if not os.path.exists(SYSLOG_ADDRESS):
        return None
    try:
        handler = logging.handlers.SysLogHandler(address=SYSLOG_ADDRESS,
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return None
    handler.ident = f"{ident}[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler
