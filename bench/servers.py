"""Process shapes for the benchmarks: zkfsd and Apache ZooKeeper, standalone and 3-member ensembles.

Process start/stop comes from tests/helpers.py (imported by path, as bench/kazoo_load.py does), so
the benchmarks run servers exactly the way the test suite does. Every process is stopped by the
PID we started it with. A shape is a context manager:

    with ZkfsdStandalone(tmp, tick_ms=2000) as shape:
        shape.hosts        # "127.0.0.1:p1,127.0.0.1:p2,..."
        shape.addresses    # [(host, port), ...]
        shape.fsync_count()  # summed over members, from mntr
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import (  # noqa: E402
    LOCALHOST,
    ApacheZooKeeper,
    ZkfsdProcess,
    apache_zookeeper_missing,
    four_letter_word,
    free_port,
    kazoo_client,
)

from bench.driver import Session  # noqa: E402

__all__ = [
    "Unavailable", "Shape", "ZkfsdStandalone", "ZooKeeperStandalone", "ZkfsdEnsemble",
    "ZooKeeperEnsemble", "mntr", "free_port", "kazoo_client", "four_letter_word",
    "apache_zookeeper_missing", "LOCALHOST",
]


class Unavailable(RuntimeError):
    """This shape cannot run here (missing package, mode not implemented, did not come up)."""


def mntr(host: str, port: int, timeout: float = 3.0) -> dict[str, str]:
    """`mntr` as a dict (empty if the server does not answer)."""
    try:
        text = four_letter_word(host, port, "mntr", timeout=timeout)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if value:
            out[key.strip()] = value.strip()
    return out


def _accepts_session(host: str, port: int) -> bool:
    try:
        with Session(host, port, timeout_ms=4000):
            return True
    except (OSError, ConnectionError, ValueError):
        return False


def _state(host: str, port: int) -> str:
    """'leader', 'follower', 'standalone' or '' (not serving / not answering)."""
    m = mntr(host, port, timeout=1.0)
    return m.get("zk_server_state", "")


class Shape:
    """A running set of server processes of one implementation."""

    impl = "?"            # "zkfsd" | "zookeeper"
    kind = "?"            # "standalone" | "ensemble"
    # mntr key holding the number of fsyncs of the transaction log so far.
    fsync_key = ""

    def __init__(self, base: Path, tick_ms: int) -> None:
        self.base = Path(base)
        self.tick_ms = tick_ms
        self.members: list = []

    @property
    def label(self) -> str:
        return f"{self.impl} {self.kind}"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(m.host, m.port) for m in self.members]

    @property
    def hosts(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.addresses)

    def live_members(self) -> list:
        return [m for m in self.members if m.running]

    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.running]

    def fsync_count(self) -> int | None:
        """Transaction-log fsyncs so far, summed over live members (None if not reported)."""
        total, seen = 0, False
        for m in self.live_members():
            value = mntr(m.host, m.port).get(self.fsync_key)
            if value is not None:
                total += int(float(value))
                seen = True
        return total if seen else None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.stop()

    def __enter__(self) -> Shape:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- ensembles -----------------------------------------------------------------------------

    def leader(self):
        for m in self.live_members():
            if _state(m.host, m.port) == "leader":
                return m
        return None

    def kill_member(self, member) -> None:
        member.kill9()

    def restart_member(self, member) -> None:
        raise NotImplementedError


class ZkfsdStandalone(Shape):
    impl, kind, fsync_key = "zkfsd", "standalone", "zk_fsync_count"

    def start(self) -> None:
        self.members = [ZkfsdProcess(self.base / "zkfsd", tick_time=self.tick_ms, log_level="WARNING")]
        self.members[0].start()


class ZooKeeperStandalone(Shape):
    impl, kind, fsync_key = "zookeeper", "standalone", "zk_cnt_fsynctime"

    def start(self) -> None:
        missing = apache_zookeeper_missing()
        if missing:
            raise Unavailable(missing)
        self.members = [ApacheZooKeeper(self.base / "zk", tick_time=self.tick_ms)]
        self.members[0].start()


# ---------------------------------------------------------------------------------------------
# Ensembles: three members on loopback, each with its own data dir and myid file.


def _ensemble_ports(n: int) -> list[tuple[int, int, int]]:
    ports: set[int] = set()
    while len(ports) < 3 * n:
        ports.add(free_port())
    it = iter(sorted(ports))
    return [(next(it), next(it), next(it)) for _ in range(n)]


def _server_lines(ports: list[tuple[int, int, int]]) -> list[str]:
    return [f"server.{i}={LOCALHOST}:{peer}:{election}"
            for i, (_client, peer, election) in enumerate(ports, 1)]


def _launch(proc) -> None:
    """Popen without waiting for readiness (ensemble members only become ready together).

    Mirrors helpers._ManagedProcess.start() minus wait_ready()."""
    cmd = proc.command()
    proc.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(proc.log_path, "ab") as log:
        log.write(f"===== {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        proc.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=proc.env())


class _Ensemble(Shape):
    kind = "ensemble"
    size = 3
    form_timeout = 60.0

    def _make_member(self, sid: int, ports: tuple[int, int, int], lines: list[str]):
        raise NotImplementedError

    def start(self) -> None:
        ports = _ensemble_ports(self.size)
        lines = _server_lines(ports)
        self.members = [self._make_member(i, p, lines) for i, p in enumerate(ports, 1)]
        for m in self.members:
            _launch(m)
        self.wait_formed(self.form_timeout)

    def formed(self) -> bool:
        states = [_state(m.host, m.port) for m in self.live_members()]
        if states.count("leader") != 1 or states.count("follower") != len(states) - 1:
            return False
        # A member may say "follower" before it serves clients (a zkfsd follower opens
        # sessions once the leader has acknowledged its session report): a cell's first
        # session must not meet a refusal, so every member must open one first.
        return all(_accepts_session(m.host, m.port) for m in self.live_members())

    def wait_formed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [m for m in self.members if m.proc is not None and m.proc.poll() is not None]
            if dead:
                raise Unavailable(f"{self.impl} ensemble member exited (status "
                                  f"{dead[0].proc.returncode}): {dead[0].log_tail(8)}")
            if self.formed():
                return
            time.sleep(0.2)
        states = {m.port: _state(m.host, m.port) or "-" for m in self.members}
        raise Unavailable(f"{self.impl} ensemble did not elect a leader within {timeout:.0f}s "
                          f"(mntr zk_server_state per client port: {states})")

    def restart_member(self, member) -> None:
        _launch(member)
        deadline = time.monotonic() + self.form_timeout
        while time.monotonic() < deadline:
            if member.proc.poll() is not None:
                raise RuntimeError(f"restarted member exited: {member.log_tail(8)}")
            if _state(member.host, member.port) in ("leader", "follower") and self.formed():
                return
            time.sleep(0.2)
        raise RuntimeError(f"restarted {self.impl} member did not rejoin within {self.form_timeout}s")


class ZkfsdEnsemble(_Ensemble):
    """zkfsd --config zoo.cfg (server.N lines) --my-id N, plus a myid file in each data dir."""

    impl, fsync_key = "zkfsd", "zk_fsync_count"
    form_timeout = 30.0

    def _make_member(self, sid, ports, lines):
        client, _peer, _election = ports
        data = self.base / f"zkfsd{sid}"
        data.mkdir(parents=True, exist_ok=True)
        (data / "myid").write_text(f"{sid}\n")
        cfg = self.base / f"zkfsd{sid}.cfg"
        cfg.write_text("\n".join([f"tickTime={self.tick_ms}", f"dataDir={data}",
                                  f"clientPort={client}", f"clientPortAddress={LOCALHOST}",
                                  "initLimit=10", "syncLimit=5", *lines, ""]))
        return ZkfsdProcess(data, client, tick_time=self.tick_ms, log_level="WARNING",
                            extra_args=["--config", str(cfg), "--my-id", str(sid)])


class _QuorumPeer(ApacheZooKeeper):
    """One member of an Apache ZooKeeper ensemble: QuorumPeerMain with a myid file, fsync on."""

    def __init__(self, base_dir: Path, port: int, tick_time: int, sid: int, lines: list[str]):
        super().__init__(base_dir, port, tick_time=tick_time)
        self.sid = sid
        self.lines = lines

    def is_ready(self) -> bool:
        return _state(self.host, self.port) in ("leader", "follower")

    def write_config(self) -> None:
        super().write_config()
        (self.data_dir / "myid").write_text(f"{self.sid}\n")
        with open(self.cfg_path, "a") as f:
            f.write("\n".join(["initLimit=10", "syncLimit=5", "forceSync=yes",
                               "standaloneEnabled=false", *self.lines, ""]))

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("org.apache.zookeeper.server.ZooKeeperServerMain")] = \
            "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        return cmd


class ZooKeeperEnsemble(_Ensemble):
    impl, fsync_key = "zookeeper", "zk_cnt_fsynctime"

    def _make_member(self, sid, ports, lines):
        missing = apache_zookeeper_missing()
        if missing:
            raise Unavailable(missing)
        return _QuorumPeer(self.base / f"zk{sid}", ports[0], self.tick_ms, sid, lines)


STANDALONE = {"zkfsd": ZkfsdStandalone, "zookeeper": ZooKeeperStandalone}
ENSEMBLE = {"zkfsd": ZkfsdEnsemble, "zookeeper": ZooKeeperEnsemble}


def rss_bytes(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def machine_info() -> dict[str, str]:
    import platform
    info = {"nproc": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version()}
    with contextlib.suppress(Exception):
        import psutil
        info["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    with contextlib.suppress(Exception):
        from helpers import find_java
        out = subprocess.run([find_java(), "-version"], capture_output=True, text=True, timeout=20)
        info["java"] = (out.stderr or out.stdout).splitlines()[0]
    with contextlib.suppress(Exception):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    return info
