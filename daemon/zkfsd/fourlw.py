"""ZooKeeper's four-letter words (ruok, srvr, stat, mntr, ...): plain text about a running server.

The formats follow ZooKeeper's, since monitoring scripts parse them line by line. The words
see a `ServerStatus`, a snapshot the member builds for the word asked (backend.py), never the
server object: what they print is all they can reach.
"""
from __future__ import annotations

import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable

import zkfs

VERSION = f"3.8.0-zkfsd-{zkfs.__version__}, built on zkfs"


@dataclass(frozen=True)
class ConnectionStatus:
    """One client connection, as `cons` and `stat` list it."""
    peer: tuple[str, int]
    session_id: int
    timeout_ms: int
    received: int
    sent: int
    connected_at: float  # seconds since the epoch


@dataclass(frozen=True)
class ServerStatus:
    """What the four-letter words report. The expensive parts (mntr's rows, the watch and
    ephemeral tables) are filled only for the words that print them (`needs`)."""
    mode: str                      # standalone, leader, follower, observer, read-only, looking
    serving: bool
    read_only: bool
    standalone: bool
    latency: tuple[float, float, float]  # min, avg, max ms
    packets_received: int
    packets_sent: int
    outstanding: int
    connection_count: int
    last_zxid: int
    node_count: int
    epoch: int = 0
    leader_id: int = 0
    peers: dict[int, str] = field(default_factory=dict)
    connections: tuple[ConnectionStatus, ...] = ()
    config_rows: tuple[tuple[str, object], ...] = ()
    four_letter_words: frozenset[str] | None = None  # the whitelist; None: all
    mntr_rows: tuple[tuple[str, object], ...] = ()
    watch_count: int = 0
    watch_paths: int = 0
    watches_by_session: tuple[tuple[int, tuple[str, ...]], ...] = ()
    watched_paths: tuple[str, ...] = ()  # data and child watches (wchp)
    ephemerals_by_session: tuple[tuple[int, tuple[str, ...]], ...] = ()


# What each word needs beyond the cheap fields (backend.MemberBackend.status fills them).
NEEDS: dict[str, frozenset[str]] = {
    "stat": frozenset({"connections"}), "cons": frozenset({"connections"}),
    "conf": frozenset({"config"}), "mntr": frozenset({"mntr"}),
    "wchs": frozenset({"watches"}), "wchc": frozenset({"watches"}),
    "wchp": frozenset({"watches"}), "dump": frozenset({"ephemerals"}),
}


def _ensemble_lines(st: ServerStatus) -> str:
    """Extra srvr lines for an ensemble member: term (ZooKeeper's epoch), leader, peers."""
    if st.standalone:
        return ""
    peers = ", ".join(f"{sid}={state}" for sid, state in st.peers.items())
    return (f"Epoch: {st.epoch}\n"
            f"Leader: {st.leader_id or 'unknown'}\n"
            f"Peers: {peers}\n")


def _srvr(st: ServerStatus) -> str:
    lo, avg, hi = st.latency
    if not st.serving and not st.standalone and not st.read_only:
        return ("This ZooKeeper instance is not currently serving requests\n"
                + _ensemble_lines(st))
    return (f"Zookeeper version: {VERSION}\n"
            f"Latency min/avg/max: {lo:.0f}/{avg:.4f}/{hi:.0f}\n"
            f"Received: {st.packets_received}\n"
            f"Sent: {st.packets_sent}\n"
            f"Connections: {st.connection_count}\n"
            f"Outstanding: {st.outstanding}\n"
            f"Zxid: 0x{st.last_zxid:x}\n"
            f"Mode: {st.mode}\n"
            f"Node count: {st.node_count}\n"
            + _ensemble_lines(st))


def _cons(st: ServerStatus) -> str:
    lines = []
    for c in sorted(st.connections, key=lambda c: c.connected_at):
        lines.append(f" /{c.peer[0]}:{c.peer[1]}[1](queued=0,recved={c.received},sent={c.sent},"
                     f"sid=0x{c.session_id:x},lop=NA,est={int(c.connected_at * 1000)},"
                     f"to={c.timeout_ms})")
    return "\n".join(lines) + "\n\n"


def _stat(st: ServerStatus) -> str:
    text = _srvr(st)
    head, _, rest = text.partition("Latency")
    return head + "Clients:\n" + _cons(st) + "Latency" + rest


def _mntr(st: ServerStatus) -> str:
    return "".join(f"{k}\t{v}\n" for k, v in st.mntr_rows)


def _conf(st: ServerStatus) -> str:
    return "".join(f"{k}={v}\n" for k, v in st.config_rows)


def _wchs(st: ServerStatus) -> str:
    return (f"{len(st.watches_by_session)} connections watching {st.watch_paths} paths\n"
            f"Total watches:{st.watch_count}\n")


def _wchc(st: ServerStatus) -> str:
    return "".join(f"0x{sid:x}\n" + "".join(f"\t{p}\n" for p in paths)
                   for sid, paths in st.watches_by_session)


def _dump(st: ServerStatus) -> str:
    sessions = st.ephemerals_by_session
    lines = ["SessionTracker dump:", f"Session count: {len(sessions)}",
             "ephemeral nodes dump:", f"Sessions with Ephemerals ({len(sessions)}):"]
    for sid, paths in sessions:
        lines.append(f"0x{sid:x}:")
        lines.extend(f"\t{p}" for p in paths)
    return "\n".join(lines) + "\n"


def _envi(st: ServerStatus) -> str:
    rows = [
        ("zookeeper.version", VERSION),
        ("host.name", socket.gethostname()),
        ("python.version", sys.version.split()[0]),
        ("python.implementation", platform.python_implementation()),
        ("os.name", platform.system()),
        ("os.arch", platform.machine()),
        ("os.version", platform.release()),
        ("user.name", os.environ.get("USER", "")),
        ("user.dir", os.getcwd()),
        ("process.id", os.getpid()),
    ]
    return "Environment:\n" + "".join(f"{k}={v}\n" for k, v in rows)


def _isro(st: ServerStatus) -> str:
    # ZooKeeper: "null" when not serving at all; kazoo's read-only clients move to a "rw" one.
    if st.serving:
        return "rw"
    return "ro" if st.read_only else "null"


# Words that change something; the member does it before it takes the snapshot.
ACTIONS = frozenset({"srst"})

COMMANDS: dict[str, Callable[[ServerStatus], str]] = {
    "ruok": lambda st: "imok",
    "srvr": _srvr,
    "stat": _stat,
    "mntr": _mntr,
    "conf": _conf,
    "cons": _cons,
    "wchs": _wchs,
    "wchc": _wchc,
    "dump": _dump,
    "envi": _envi,
    "isro": _isro,
    "srst": lambda st: "Server stats reset.\n",
    "crst": lambda st: "Connection stats reset.\n",
    "dirs": lambda st: "datadir_size: 0\nlogdir_size: 0\n",
    "wchp": lambda st: "".join(f"{p}\n" for p in st.watched_paths),
}


def allowed(command: str, whitelist: frozenset[str] | set[str] | None) -> bool:
    return whitelist is None or command in whitelist


def answer(command: str, status: ServerStatus) -> str:
    if not allowed(command, status.four_letter_words):
        return f"{command} is not executed because it is not in the whitelist.\n"
    return COMMANDS.get(command, lambda st: f"unknown command {command}\n")(status)
