"""`zkfs elect` and `zkfs register` on real processes: two "hosts" (separate `zkfs` processes,
each with its own session) against a real zkfsd or Apache ZooKeeper, with kill -9, SIGTERM,
partitions (a blackholing proxy between one host and the server) and kazoo's recipes on the
same paths. The supervised commands log `start`/`stop` lines with their pid and time to a file,
which is how the tests see who ran when.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fault_proxy import FaultProxy
from helpers import kazoo_client

BIN = Path(os.path.abspath(sys.executable)).parent
ZKFS = BIN / "zkfs"
SESSION = 2.0  # seconds; zkfsd in the tests grants 0.4-4 s (tick 200 ms)

pytestmark = pytest.mark.timeout(90)

# The supervised command: logs start, and stop on SIGTERM, then exits 0 (or STATUS on its own).
WORKER = r"""
import os, signal, sys, time
log, ident, run_for, status = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
def write(what):
    with open(log, "a") as f:
        f.write(f"{what} {ident} {os.getpid()} {time.time():.3f}\n")
def term(*_):
    write("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
write("start")
end = time.monotonic() + run_for
while time.monotonic() < end:
    time.sleep(0.02)
write("exit")
sys.exit(status)
"""


@dataclass(frozen=True)
class Line:
    what: str
    ident: str
    pid: int
    at: float


def events(log: Path) -> list[Line]:
    if not log.exists():
        return []
    out = []
    for raw in log.read_text().splitlines():
        what, ident, pid, at = raw.split()
        out.append(Line(what, ident, int(pid), float(at)))
    return out


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Procs:
    """`zkfs` processes started by a test; all stopped by PID (and their command's process
    group, found from the log) afterwards."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, servers: str, *args: str, timeout: float = SESSION) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZKFS_")}
        env["ZKFS_SERVERS"] = servers
        p = subprocess.Popen([str(ZKFS), "--timeout", str(timeout), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def worker(self, ident: str, run_for: float = 60.0, status: int = 0) -> list[str]:
        return [sys.executable, "-c", WORKER, str(self.log), ident, str(run_for), str(status)]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for line in events(self.log):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(line.pid, signal.SIGKILL)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "events.log")
    try:
        yield p
    finally:
        p.close()


def started(procs: Procs) -> list[Line]:
    return [e for e in events(procs.log) if e.what == "start"]


def zkfs_run(servers: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKFS_")}
    env["ZKFS_SERVERS"] = servers
    return subprocess.run([str(ZKFS), *args], env=env, capture_output=True, text=True,
                          timeout=30)


# ---------------------------------------------------------------------------- elect

def test_elect_one_leader_then_takeover_only_after_the_session_expires(zkfsd, procs):  # type: ignore[no-untyped-def]
    a = procs.start(zkfsd.hosts, "elect", "/svc/one", "--id", "host-a", "--",
                    *procs.worker("A"))
    first = wait_for(lambda: started(procs), 15, "the first leader's command")[0]
    assert first.ident == "A"
    b = procs.start(zkfsd.hosts, "elect", "/svc/one", "--id", "host-b", "--",
                    *procs.worker("B"))
    with kazoo_client(zkfsd.hosts) as k:
        wait_for(lambda: len(k.get_children("/svc/one")) == 2, 10, "the second candidate")
        # kazoo sees the same election: its contenders() lists both, the leader first.
        assert k.Election("/svc/one").contenders() == ["host-a", "host-b"]
    time.sleep(0.5)
    assert [e.ident for e in started(procs)] == ["A"], "a candidate ran its command"
    assert zkfs_run(zkfsd.hosts, "elect", "--who", "/svc/one").stdout == "host-a\n"

    # The leader's host process dies: its command dies with it (PR_SET_PDEATHSIG), and the
    # candidate takes over only once the server expired the leader's session.
    killed_at = time.time()
    a.kill()
    a.wait(timeout=10)
    wait_for(lambda: not alive(first.pid), 5, "the dead leader's command to die with it")
    second = wait_for(lambda: started(procs)[1:], 20, "the candidate to take over")[0]
    assert second.ident == "B"
    # The session (2 s) cannot expire before the last ping/probe + 2 s; the probe runs every
    # 0.2 s, so no takeover may come sooner than 1.5 s after the kill.
    assert second.at - killed_at >= 0.75 * SESSION, (second.at - killed_at)
    assert zkfs_run(zkfsd.hosts, "elect", "--who", "/svc/one").stdout == "host-b\n"
    assert b.poll() is None


def test_elect_passes_sigterm_on_and_exits_with_the_command_status(zkfsd, procs):  # type: ignore[no-untyped-def]
    a = procs.start(zkfsd.hosts, "elect", "/svc/term", "--", *procs.worker("A"))
    wait_for(lambda: started(procs), 15, "the command")
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=15) == 0  # the worker exits 0 on SIGTERM
    assert [e.what for e in events(procs.log)] == ["start", "stop"]
    with kazoo_client(zkfsd.hosts) as k:
        assert k.get_children("/svc/term") == []  # leadership released

    # The command's own exit ends zkfs elect with its status, and hands over at once.
    b = procs.start(zkfsd.hosts, "elect", "/svc/term", "--id", "b", "--",
                    *procs.worker("B", run_for=0.5, status=3))
    assert b.wait(timeout=15) == 3
    assert [e.what for e in events(procs.log)][-2:] == ["start", "exit"]
    assert zkfs_run(zkfsd.hosts, "elect", "--who", "/svc/term").returncode == 3


def test_elect_candidate_stopped_while_waiting_leaves_the_line(zkfsd, procs):  # type: ignore[no-untyped-def]
    procs.start(zkfsd.hosts, "elect", "/svc/line", "--id", "a", "--", *procs.worker("A"))
    wait_for(lambda: started(procs), 15, "the leader")
    b = procs.start(zkfsd.hosts, "elect", "/svc/line", "--id", "b", "--", *procs.worker("B"))
    with kazoo_client(zkfsd.hosts) as k:
        wait_for(lambda: len(k.get_children("/svc/line")) == 2, 10, "the candidate")
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=10) == 0
        assert len(k.get_children("/svc/line")) == 1
    assert [e.ident for e in started(procs)] == ["A"]


def test_elect_partitioned_leader_stops_its_command_before_the_next_one_starts(zkfsd, procs):  # type: ignore[no-untyped-def]
    proxy = FaultProxy(zkfsd.port, name="host-a")
    try:
        a = procs.start(f"127.0.0.1:{proxy.port}", "elect", "/svc/cut", "--id", "a", "--",
                        *procs.worker("A"))
        wait_for(lambda: started(procs), 15, "the leader")
        b = procs.start(zkfsd.hosts, "elect", "/svc/cut", "--id", "b", "--",
                        *procs.worker("B"))
        with kazoo_client(zkfsd.hosts) as k:
            wait_for(lambda: len(k.get_children("/svc/cut")) == 2, 10, "the candidate")
        cut_at = time.time()
        proxy.set_mode("blackhole")  # host A's packets vanish: it cannot tell the server died
        second = wait_for(lambda: started(procs)[1:], 20, "the candidate to take over")[0]
        lines = events(procs.log)
        stop_a = [e for e in lines if e.what == "stop" and e.ident == "A"]
        assert stop_a, lines
        # A's command got SIGTERM (at half the session timeout) before B's started.
        assert stop_a[0].at < second.at, lines
        assert cut_at + 0.25 * SESSION <= stop_a[0].at, (cut_at, lines)
        assert b.poll() is None
        # A gave up: status 7, one line saying why.
        assert a.wait(timeout=20) == 7
        err = a.stderr.read().decode() if a.stderr else ""
        assert "leadership lost (no answer from the ensemble" in err, err
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_elect_with_kazoo_on_the_same_path(target, kz, procs):  # type: ignore[no-untyped-def]
    """kazoo's Election and zkfs elect share one line of candidates, on zkfsd and ZooKeeper."""
    import threading

    election = kz.Election("/svc/mixed", "kazoo-host")
    leading = threading.Event()
    release = threading.Event()

    def lead() -> None:
        leading.set()
        release.wait(30)
    t = threading.Thread(target=election.run, args=(lead,), daemon=True)
    t.start()
    assert leading.wait(15)
    z = procs.start(target.hosts, "elect", "/svc/mixed", "--id", "zkfs-host", "--",
                    *procs.worker("Z"), timeout=target.session_timeout)
    wait_for(lambda: len(kz.get_children("/svc/mixed")) == 2, 15, "zkfs elect's candidate")
    assert election.contenders() == ["kazoo-host", "zkfs-host"]
    r = zkfs_run(target.hosts, "elect", "--who", "/svc/mixed")
    assert r.stdout == "kazoo-host\n", r
    time.sleep(0.5)
    assert started(procs) == []
    release.set()  # kazoo's leader function returns: it releases the lock
    wait_for(lambda: started(procs), 15, "zkfs elect to lead after kazoo")
    assert election.contenders() == ["zkfs-host"]
    z.send_signal(signal.SIGTERM)
    assert z.wait(timeout=15) == 0
    t.join(5)


def test_elect_usage_errors_exit_2_at_once(zkfsd):  # type: ignore[no-untyped-def]
    for args in (["elect", "/svc"], ["elect", "svc", "--", "true"],
                 ["elect", "--who", "/svc", "--", "true"], ["register", "/w"],
                 ["register", "/w", "a/b", "--", "true"]):
        r = zkfs_run(zkfsd.hosts, *args)
        assert r.returncode == 2, (args, r)
        assert len(r.stderr.splitlines()) == 1, r.stderr
    r = zkfs_run(zkfsd.hosts, "elect", "/svc/nf", "--", "/nonexistent/cmd")
    assert r.returncode == 127, r


# ---------------------------------------------------------------------------- register

def test_register_lives_as_long_as_the_command(zkfsd, procs):  # type: ignore[no-untyped-def]
    with kazoo_client(zkfsd.hosts) as k:
        p = procs.start(zkfsd.hosts, "register", "/workers", "w1", "--data", "10.0.0.1:80",
                        "--", *procs.worker("W", run_for=1.0, status=5))
        wait_for(lambda: started(procs), 15, "the worker")
        data, stat = k.get("/workers/w1")
        assert data == b"10.0.0.1:80" and stat.ephemeralOwner != 0
        assert p.wait(timeout=15) == 5
        assert k.exists("/workers/w1") is None

        # Default name: the hostname.
        p = procs.start(zkfsd.hosts, "register", "/workers", "--", *procs.worker("H"))
        name = os.uname().nodename
        wait_for(lambda: k.exists(f"/workers/{name}"), 15, "the hostname member")
        wait_for(lambda: len(started(procs)) == 2, 15, "the second worker")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
        assert k.exists(f"/workers/{name}") is None


def test_register_kill9_member_vanishes_after_the_session_timeout(zkfsd, procs):  # type: ignore[no-untyped-def]
    with kazoo_client(zkfsd.hosts) as k:
        seen = []
        p = procs.start(zkfsd.hosts, "register", "/workers", "w2", "--", *procs.worker("W"))
        cmd = wait_for(lambda: started(procs), 15, "the worker")[0]
        assert k.exists("/workers/w2") is not None
        k.ChildrenWatch("/workers", lambda children: seen.append(list(children)))
        p.kill()
        p.wait(timeout=10)
        wait_for(lambda: not alive(cmd.pid), 5, "the command to die with zkfs register")
        assert k.exists("/workers/w2") is not None  # the session is not over yet
        wait_for(lambda: k.exists("/workers/w2") is None, 4 * SESSION, "the member to expire")
        wait_for(lambda: seen and seen[-1] == [], 5, "kazoo's ChildrenWatch to see it go")

        # A restart right after a crash waits for the old registration to expire.
        p = procs.start(zkfsd.hosts, "register", "/workers", "w3", "--", *procs.worker("X"))
        wait_for(lambda: len(started(procs)) == 2, 15, "the second worker")
        p.kill()
        p.wait(timeout=10)
        q = procs.start(zkfsd.hosts, "register", "/workers", "w3", "--", *procs.worker("Y"))
        time.sleep(0.5)
        assert [e.ident for e in started(procs)] == ["W", "X"]
        wait_for(lambda: len(started(procs)) == 3, 4 * SESSION + 5, "the restarted worker")
        assert q.poll() is None


@pytest.mark.timeout(120)
def test_register_party_is_counted_by_kazoo(target, kz, procs):  # type: ignore[no-untyped-def]
    p = procs.start(target.hosts, "register", "/party", "member-1", "--party", "--",
                    *procs.worker("P"), timeout=target.session_timeout)
    wait_for(lambda: started(procs), 15, "the member")
    party = kz.Party("/party")
    assert list(party) == ["member-1"]
    assert len(party) == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=15) == 0
    assert list(party) == []
