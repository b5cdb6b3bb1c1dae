"""zkfsd ensembles of 3 or 5 real processes on loopback, for tests/test_ensemble.py.

    ens = Ensemble(tmp_path, size=3, proxied=True)   # proxied: member links go through a
    ens.start()                                       # tests/fault_proxy.ProxyMesh
    Ensemble(tmp_path, size=4, observers=[4])         # member 4 is `server.4=...:observer`
    leader = ens.wait_stable()                        # one leader, every live member follows it
    ens.kill9(leader); ens.restart(leader); ens.wipe(2)
    ens.hosts()                                       # "127.0.0.1:p1,127.0.0.1:p2,..."
    ens.stop_all()                                    # by PID, always (the fixture does it)

Each member gets its own zoo.cfg: its own server.N line names its real peer port (it listens
there), the other members' lines name either their real peer ports or, when proxied, the port of
the proxy for that ordered pair. Processes are only ever signalled by the PID started here.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fault_proxy import ProxyMesh
from helpers import LOCALHOST, ZkfsdProcess, four_letter_word, free_port, kazoo_client

TICK_MS = 200


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def parse_srvr(text: str) -> dict[str, str]:
    """srvr as a dict; "serving" is "no" when the member says it is not serving requests."""
    out: dict[str, str] = {"serving": "no" if "not currently serving" in text else "yes"}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class Ensemble:
    def __init__(self, base: Path, size: int = 3, *, tick_time: int = TICK_MS,
                 proxied: bool = False, snap_count: int | None = None,
                 extra_cfg: Iterable[str] = (), log_level: str = "INFO",
                 observers: Iterable[int] = (), sync_limit: int = 5) -> None:
        self.base = Path(base)
        # The election timeout, in ticks (zkfsd(8), syncLimit).
        self.sync_limit = sync_limit
        self.size = size
        self.ids = list(range(1, size + 1))
        self.observers = set(observers)
        self.tick_time = tick_time
        ports = _distinct_ports(3 * size)
        self.client_ports = dict(zip(self.ids, ports[:size]))
        self.peer_ports = dict(zip(self.ids, ports[size:2 * size]))
        self.election_ports = dict(zip(self.ids, ports[2 * size:]))
        self.mesh: ProxyMesh | None = ProxyMesh(self.peer_ports) if proxied else None
        self.snap_count = snap_count
        self.extra_cfg = list(extra_cfg)
        self.members: dict[int, ZkfsdProcess] = {}
        for sid in self.ids:
            cfg = self._write_config(sid)
            self.members[sid] = ZkfsdProcess(
                self.data_dir(sid), self.client_ports[sid], tick_time=tick_time,
                log_path=self.base / f"m{sid}.log", log_level=log_level,
                extra_args=["--config", str(cfg), "--my-id", str(sid)])

    # -- configuration ---------------------------------------------------------------------------
    def data_dir(self, sid: int) -> Path:
        return self.base / f"m{sid}"

    def _peer_port(self, me: int, other: int) -> int:
        if self.mesh is not None:
            return self.mesh.port_for(me, other)
        return self.peer_ports[other]

    def _write_config(self, sid: int) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        lines = [f"tickTime={self.tick_time}", f"dataDir={self.data_dir(sid)}",
                 f"clientPort={self.client_ports[sid]}", f"clientPortAddress={LOCALHOST}",
                 "initLimit=10", f"syncLimit={self.sync_limit}"]
        if self.snap_count is not None:
            lines.append(f"snapCount={self.snap_count}")
        lines += self.extra_cfg
        lines += [f"server.{j}={LOCALHOST}:{self._peer_port(sid, j)}:{self.election_ports[j]}"
                  + (":observer" if j in self.observers else "") for j in self.ids]
        path = self.base / f"m{sid}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def add_member(self, sid: int) -> None:
        """A new member (for reconfig): its zoo.cfg lists the current members and itself, as a
        server joining a ZooKeeper ensemble must; not started, and not in anyone else's file."""
        if self.mesh is not None:
            raise RuntimeError("add_member does not work with a proxied ensemble")
        client, peer, election = _distinct_ports(3)
        self.ids.append(sid)
        self.client_ports[sid], self.peer_ports[sid], self.election_ports[sid] = \
            client, peer, election
        cfg = self._write_config(sid)
        self.members[sid] = ZkfsdProcess(
            self.data_dir(sid), client, tick_time=self.tick_time,
            log_path=self.base / f"m{sid}.log", log_level=self.members[self.ids[0]].log_level,
            extra_args=["--config", str(cfg), "--my-id", str(sid)])

    def server_line(self, sid: int, role: str = "participant") -> str:
        """`server.N=...;client` as a reconfig's joining list names member `sid`."""
        return (f"server.{sid}={LOCALHOST}:{self.peer_ports[sid]}:{self.election_ports[sid]}"
                f":{role};{LOCALHOST}:{self.client_ports[sid]}")

    def drop_member(self, sid: int) -> None:
        """Stop a member a reconfig removed and forget it (running(), hosts() leave it out)."""
        self.members[sid].stop()
        self.ids.remove(sid)

    # -- processes -------------------------------------------------------------------------------
    def start(self) -> None:
        for sid in self.ids:
            self.start_member(sid)

    def start_member(self, sid: int) -> None:
        self.members[sid].start()  # waits for ruok (answered before a leader is known)

    def kill9(self, sid: int) -> None:
        self.members[sid].kill9()

    def stop(self, sid: int) -> None:
        self.members[sid].stop()

    def restart(self, sid: int) -> None:
        m = self.members[sid]
        if m.running:
            m.stop()
        m.start()

    def wipe(self, sid: int) -> None:
        """rm -rf the data dir of a member that is down (the next start begins empty)."""
        if self.members[sid].running:
            raise RuntimeError(f"member {sid} is running; stop it before wiping its data")
        shutil.rmtree(self.data_dir(sid), ignore_errors=True)

    def running(self) -> list[int]:
        return [sid for sid in self.ids if self.members[sid].running]

    def pids(self) -> dict[int, int]:
        return {sid: m.pid for sid, m in self.members.items() if m.pid is not None}

    def stop_all(self) -> None:
        """SIGTERM (then SIGKILL) every member by PID, close every proxy. Never raises early."""
        errors: list[BaseException] = []
        for m in self.members.values():
            try:
                m.stop(timeout=5.0)
            except BaseException as e:  # noqa: BLE001 - stop the others first
                errors.append(e)
        if self.mesh is not None:
            self.mesh.close()
        if errors:
            raise errors[0]

    # -- clients ---------------------------------------------------------------------------------
    def hosts(self, ids: Iterable[int] | None = None) -> str:
        ids = self.ids if ids is None else list(ids)
        return ",".join(f"{LOCALHOST}:{self.client_ports[s]}" for s in ids)

    def client(self, ids: Iterable[int] | int | None = None, **kwargs: Any):
        """kazoo_client context manager for one member (int) or several (all by default)."""
        if isinstance(ids, int):
            ids = [ids]
        kwargs.setdefault("connect_timeout", 10.0)
        return kazoo_client(self.hosts(ids), **kwargs)

    # -- observation -----------------------------------------------------------------------------
    def srvr(self, sid: int, timeout: float = 1.0) -> dict[str, str]:
        try:
            return parse_srvr(four_letter_word(LOCALHOST, self.client_ports[sid], "srvr",
                                               timeout=timeout))
        except OSError:
            return {"serving": "down"}

    def mntr(self, sid: int, timeout: float = 1.0) -> dict[str, str]:
        try:
            text = four_letter_word(LOCALHOST, self.client_ports[sid], "mntr", timeout=timeout)
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            key, sep, value = line.partition("\t")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def states(self, ids: Iterable[int] | None = None) -> dict[int, dict[str, str]]:
        ids = self.running() if ids is None else list(ids)
        return {sid: self.srvr(sid) for sid in ids}

    def stable_leader(self, ids: Iterable[int] | None = None) -> int | None:
        """The leader if exactly one of `ids` (default: running members) leads and all the
        others serve as its followers; else None."""
        states = self.states(ids)
        leaders = [s for s, st in states.items() if st.get("Mode") == "leader"]
        if len(leaders) != 1:
            return None
        lead = leaders[0]
        for sid, st in states.items():
            if st.get("serving") != "yes" or st.get("Leader") != str(lead):
                return None
            want = "observer" if sid in self.observers else "follower"
            if sid != lead and st.get("Mode") != want:
                return None
        return lead

    def wait_stable(self, ids: Iterable[int] | None = None, timeout: float = 15.0) -> int:
        ids = None if ids is None else list(ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.stable_leader(ids)
            if lead is not None:
                return lead
            time.sleep(0.05)
        raise AssertionError(f"no stable leader among {ids or self.running()} within "
                             f"{timeout}s: {self.states(ids)}")

    def leader(self) -> int | None:
        for sid in self.running():
            if self.srvr(sid).get("Mode") == "leader":
                return sid
        return None

    def wait_not_serving(self, sid: int, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.srvr(sid)
            if st.get("serving") == "no":
                return st
            time.sleep(0.05)
        raise AssertionError(f"member {sid} still serving after {timeout}s: {self.srvr(sid)}")

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"----- member {sid} log ({m.log_path}) -----\n{m.log_tail(lines)}"
                         for sid, m in self.members.items())


# -- tree comparison ------------------------------------------------------------------------------
def read_tree(client: Any, root: str) -> dict[str, bytes | None]:
    """Every znode under `root` (inclusive) with its data, read through one client."""
    out: dict[str, bytes | None] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        data, _stat = client.get(path)
        out[path] = data
        for child in client.get_children(path):
            stack.append(path.rstrip("/") + "/" + child)
    return out


def trees_by_member(ens: Ensemble, root: str, ids: Iterable[int] | None = None,
                    retry_for: float = 10.0) -> dict[int, dict[str, bytes | None]]:
    """`root`'s subtree as each member serves it, read after a `sync` through that member."""
    from kazoo.exceptions import ConnectionLoss, SessionExpiredError

    ids = ens.running() if ids is None else list(ids)
    out = {}
    for sid in ids:
        deadline = time.monotonic() + retry_for
        while True:
            try:
                # kazoo waits session timeout / number of hosts for the answer to its connect
                # request, and start(timeout) returns only once that wait is over: with the
                # default 10 s session one unanswered connect used the whole retry window
                # (test_partitioned_leader_and_follower failed so under load). A session
                # timeout equal to the connect timeout leaves room for another attempt.
                with ens.client(sid, connect_timeout=5.0, timeout=5.0) as k:
                    k.sync(root)
                    out[sid] = read_tree(k, root)
                break
            except (ConnectionLoss, SessionExpiredError, OSError, Exception) as e:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {root} through member {sid}: {e!r}")
                time.sleep(0.1)
    return out


def assert_converged(ens: Ensemble, root: str, expected: dict[str, bytes] | None = None,
                     ids: Iterable[int] | None = None) -> dict[str, bytes | None]:
    """All members serve the same tree under `root` after sync; every path in `expected`
    (acknowledged writes) is there with its data. Returns the tree."""
    trees = trees_by_member(ens, root, ids)
    first_sid, first = next(iter(trees.items()))
    for sid, tree in trees.items():
        if tree != first:
            only_a = sorted(set(first) - set(tree))[:10]
            only_b = sorted(set(tree) - set(first))[:10]
            diff = sorted(p for p in set(tree) & set(first) if tree[p] != first[p])[:10]
            raise AssertionError(f"member {sid} differs from member {first_sid} under {root}: "
                                 f"missing {only_a}, extra {only_b}, different data {diff}")
    if expected:
        lost = {p: v for p, v in expected.items() if first.get(p) != v}
        assert not lost, f"acknowledged writes lost or changed: {sorted(lost)[:20]} " \
                         f"(of {len(lost)})"
    return first


@contextlib.contextmanager
def ensemble(base: Path, size: int = 3, **kwargs: Any) -> Iterator[Ensemble]:
    """A started, stable ensemble; every process stopped by PID afterwards, whatever happens."""
    ens = Ensemble(base, size, **kwargs)
    try:
        ens.start()
        ens.wait_stable()
        yield ens
    finally:
        ens.stop_all()
