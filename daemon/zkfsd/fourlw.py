"""ZooKeeper's four-letter words (ruok, srvr, stat, mntr, ...): plain text about a running server.

The formats follow ZooKeeper's, since monitoring scripts parse them line by line.
"""
from __future__ import annotations

import os
import platform
import socket
import sys
from typing import TYPE_CHECKING, Callable

import zkfs
from zkfsd.metrics import latency, mntr_rows

if TYPE_CHECKING:
    from zkfsd.server import ZkServer

VERSION = f"3.8.0-zkfsd-{zkfs.__version__}, built on zkfs"


def _mode(server: ZkServer) -> str:
    return server.role()


def _ensemble_lines(server: ZkServer) -> str:
    """Extra srvr lines for an ensemble member: term (ZooKeeper's epoch), leader, peers."""
    if server.standalone or server.core is None:
        return ""
    peers = ", ".join(f"{sid}={state}" for sid, state in server.peer_states().items())
    return (f"Epoch: {server.core.term}\n"
            f"Leader: {server.core.leader_id or 'unknown'}\n"
            f"Peers: {peers}\n")


def _srvr(server: ZkServer) -> str:
    lo, avg, hi = latency(server)
    s = server.stats
    if not server.serving and not server.standalone and not server.read_only:
        return ("This ZooKeeper instance is not currently serving requests\n"
                + _ensemble_lines(server))
    return (f"Zookeeper version: {VERSION}\n"
            f"Latency min/avg/max: {lo:.0f}/{avg:.4f}/{hi:.0f}\n"
            f"Received: {s.packets_received}\n"
            f"Sent: {s.packets_sent}\n"
            f"Connections: {len(server.connections)}\n"
            f"Outstanding: {server.outstanding}\n"
            f"Zxid: 0x{server.tree.last_zxid:x}\n"
            f"Mode: {_mode(server)}\n"
            f"Node count: {server.tree.node_count}\n"
            + _ensemble_lines(server))


def _cons(server: ZkServer) -> str:
    lines = []
    for c in sorted(server.connections, key=lambda c: c.connected_at):
        lines.append(f" /{c.peer[0]}:{c.peer[1]}[1](queued=0,recved={c.received},sent={c.sent},"
                     f"sid=0x{c.session_id:x},lop=NA,est={int(c.connected_at * 1000)},"
                     f"to={c.timeout_ms})")
    return "\n".join(lines) + "\n\n"


def _stat(server: ZkServer) -> str:
    text = _srvr(server)
    head, _, rest = text.partition("Latency")
    return head + "Clients:\n" + _cons(server) + "Latency" + rest


def _mntr(server: ZkServer) -> str:
    return "".join(f"{k}\t{v}\n" for k, v in mntr_rows(server, VERSION))


def _conf(server: ZkServer) -> str:
    c = server.config
    rows = [
        ("clientPort", server.listen_port or c.client_port),
        ("clientPortAddress", c.client_address),
        ("dataDir", c.data_dir),
        ("dataLogDir", c.data_log_dir or c.data_dir),
        ("tickTime", c.tick_time),
        ("minSessionTimeout", c.min_timeout),
        ("maxSessionTimeout", c.max_timeout),
        ("serverId", server.member_id),
        ("snapCount", c.snap_count),
    ]
    return "".join(f"{k}={v}\n" for k, v in rows)


def _wchs(server: ZkServer) -> str:
    w = server.watches
    conns = len(w.by_watcher())
    return f"{conns} connections watching {w.paths()} paths\nTotal watches:{w.count()}\n"


def _wchc(server: ZkServer) -> str:
    out = []
    for conn, paths in server.watches.by_watcher().items():
        out.append(f"0x{getattr(conn, 'session_id', 0):x}\n" + "".join(f"\t{p}\n" for p in paths))
    return "".join(out)


def _dump(server: ZkServer) -> str:
    lines = ["SessionTracker dump:", f"Session count: {len(server.tree.sessions)}",
             "ephemeral nodes dump:", f"Sessions with Ephemerals ({len(server.tree.sessions)}):"]
    for sid in sorted(server.tree.sessions):
        lines.append(f"0x{sid:x}:")
        lines.extend(f"\t{p}" for p in server.tree.ephemerals(sid))
    return "\n".join(lines) + "\n"


def _envi(server: ZkServer) -> str:
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


def _isro(server: ZkServer) -> str:
    # ZooKeeper: "null" when not serving at all; kazoo's read-only clients move to a "rw" one.
    if server.serving:
        return "rw"
    return "ro" if server.read_only else "null"


def _srst(server: ZkServer) -> str:
    server.stats.reset()
    return "Server stats reset.\n"


COMMANDS: dict[str, Callable[["ZkServer"], str]] = {
    "ruok": lambda server: "imok",
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
    "srst": _srst,
    "crst": lambda server: "Connection stats reset.\n",
    "dirs": lambda server: "datadir_size: 0\nlogdir_size: 0\n",
    "wchp": lambda server: "".join(f"{p}\n" for p in sorted(set(server.watches.data)
                                                            | set(server.watches.child))),
}


def answer(command: str, server: ZkServer) -> str:
    allowed = getattr(server.config, "four_letter_words", None)
    if allowed is not None and command not in allowed:
        return f"{command} is not executed because it is not in the whitelist.\n"
    return COMMANDS.get(command, lambda s: f"unknown command {command}\n")(server)
