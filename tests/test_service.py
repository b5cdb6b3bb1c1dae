"""zkfsd and `zkfs mount -f` as system services: the systemd notify protocol (READY, STATUS,
WATCHDOG, STOPPING) read from a socket the test binds itself, journal-style logs, SIGHUP,
one-line configuration errors, and the units in contrib/systemd checked by systemd-analyze.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ensemble_helpers import ensemble
from helpers import ZKFSD_BIN, ZkfsdProcess, kazoo_client

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.path.abspath(sys.executable)).parent
UNITS = ROOT / "contrib" / "systemd"

pytestmark = pytest.mark.timeout(90)


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.messages.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float, value: str | None = None) -> dict[str, str]:
        for m in self.messages:
            if key in m and (value is None or re.search(value, m[key])):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.receive(max(0.01, deadline - time.monotonic()))
            if m is not None and key in m and (value is None or re.search(value, m[key])):
                return m
        pytest.fail(f"no {key}{'~' + value if value else ''} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        yield s
    finally:
        s.close()


def _with_env(proc: ZkfsdProcess, **extra: str) -> None:
    base = proc.env

    def env() -> dict[str, str]:
        return {**base(), **extra}
    proc.env = env  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- zkfsd readiness

def test_zkfsd_notifies_ready_watchdog_status_and_stopping(tmp_path, notify_socket):  # type: ignore[no-untyped-def]
    proc = ZkfsdProcess(tmp_path / "d", log_path=tmp_path / "zkfsd.log")
    _with_env(proc, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000")
    proc.start()
    try:
        ready = notify_socket.wait_for("READY", 10)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"standalone, serving clients on 127.0.0.1:{proc.port}"
        # Clients are served by the time READY=1 was sent.
        with kazoo_client(proc.hosts) as k:
            k.create("/ready", b"x")
        # WatchdogSec=0.4 s: a ping at least every 0.2 s.
        notify_socket.messages.clear()
        pings = 0
        deadline = time.monotonic() + 3
        while pings < 3 and time.monotonic() < deadline:
            m = notify_socket.receive(1.0)
            pings += bool(m and m.get("WATCHDOG") == "1")
        assert pings >= 3
        assert proc.stop() == 0
        notify_socket.wait_for("STOPPING", 5)
    finally:
        proc.kill9()


def test_zkfsd_notify_abstract_socket(tmp_path):  # type: ignore[no-untyped-def]
    sock = NotifySocket(f"@zkfs-test-{uuid.uuid4().hex}")
    proc = ZkfsdProcess(tmp_path / "d", log_path=tmp_path / "zkfsd.log")
    _with_env(proc, NOTIFY_SOCKET=sock.address)
    try:
        proc.start()
        assert sock.wait_for("READY", 10)["READY"] == "1"
    finally:
        proc.stop()
        sock.close()


@pytest.mark.timeout(120)
def test_ensemble_members_report_role_and_leader_changes(tmp_path):  # type: ignore[no-untyped-def]
    sockets = {sid: NotifySocket(str(tmp_path / f"notify{sid}.sock")) for sid in (1, 2, 3)}
    try:
        from ensemble_helpers import Ensemble

        ens = Ensemble(tmp_path / "ens", 3)
        for sid, m in ens.members.items():
            _with_env(m, NOTIFY_SOCKET=sockets[sid].address)
        try:
            ens.start()
            leader = ens.wait_stable()
            for sid, s in sockets.items():
                ready = s.wait_for("READY", 15)
                status = s.wait_for("STATUS", 15,
                                    rf"^leader \(member {sid} of 3\)" if sid == leader
                                    else rf"^follower of leader {leader} ")
                assert "serving clients on 127.0.0.1:" in status["STATUS"], ready
            ens.kill9(leader)
            rest = [sid for sid in (1, 2, 3) if sid != leader]
            new = ens.wait_stable(rest)
            for sid in rest:
                sockets[sid].wait_for("STATUS", 15,
                                      rf"^leader \(member {sid} of 3\)" if sid == new
                                      else rf"^follower of leader {new} ")
        finally:
            ens.stop_all()
    finally:
        for s in sockets.values():
            s.close()


# ---------------------------------------------------------------------------- SIGHUP, logs, errors

def test_sighup_reopens_the_log_and_rereads_the_config(tmp_path):  # type: ignore[no-untyped-def]
    log = tmp_path / "zkfsd-file.log"
    cfg = tmp_path / "zoo.cfg"
    cfg.write_text(f"dataDir={tmp_path / 'd'}\n4lw.commands.whitelist=ruok\n")
    proc = ZkfsdProcess(tmp_path / "d", log_path=tmp_path / "out.log",
                        extra_args=["--config", str(cfg), "--log-file", str(log)])
    proc.start()
    try:
        from helpers import four_letter_word
        assert "not executed" in four_letter_word(proc.host, proc.port, "srvr")
        # logrotate: move the file away, change the config, SIGHUP.
        log.rename(tmp_path / "zkfsd-file.log.1")
        cfg.write_text(f"dataDir={tmp_path / 'd'}\n4lw.commands.whitelist=ruok,srvr\n"
                       "tickTime=3000\n")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "SIGHUP" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        lines = [line for line in log.read_text().splitlines() if "SIGHUP" in line]
        assert len(lines) == 1, lines
        assert "log reopened" in lines[0] and "applied four_letter_words" in lines[0], lines
        assert "tick_time take effect at restart" not in lines[0]  # --tick-time given: wins
        assert "Zookeeper version" in four_letter_word(proc.host, proc.port, "srvr")
        assert proc.running  # SIGHUP never kills
        assert proc.stop() == 0
    finally:
        proc.kill9()


def test_journal_stream_gives_priority_prefixes_and_no_timestamps(tmp_path):  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([str(ZKFSD_BIN), "--data-dir", str(tmp_path / "d"), "--client-port",
                          "0"], stderr=write_fd, stdout=subprocess.DEVNULL, env=env)
    os.close(write_fd)
    try:
        out = b""
        deadline = time.monotonic() + 10
        os.set_blocking(read_fd, False)
        while b"ready:" not in out and time.monotonic() < deadline:
            try:
                out += os.read(read_fd, 65536)
            except BlockingIOError:
                time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        os.set_blocking(read_fd, True)
        out += os.read(read_fd, 65536)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(read_fd)
    lines = out.decode().splitlines()
    assert lines and all(re.match(r"<[0-7]>zkfsd", line) for line in lines), lines
    assert any(line.startswith("<6>zkfsd: ready:") for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines), lines


@pytest.mark.parametrize("args", [
    ["--data-dir", "/proc/nope"],
    ["--data-dir", "/dev/null/x"],
    ["--config", "/nonexistent/zoo.cfg"],
    ["--data-dir", "/tmp", "--log-file", "/proc/nope/log"],
    ["--data-dir", "/tmp", "--client-port", "abc"],
    ["--bogus-option"],
])
def test_bad_configuration_is_one_line_and_exit_2(args):  # type: ignore[no-untyped-def]
    r = subprocess.run([str(ZKFSD_BIN), *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("zkfsd: "), r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- the mount

def test_mount_foreground_notifies_ready_once_mounted(zkfsd, tmp_path, notify_socket):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="1000000")
    p = subprocess.Popen([str(BIN / "zkfs"), "mount", "-f", zkfsd.hosts, str(mnt)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = notify_socket.wait_for("READY", 20)
        assert ready["STATUS"] == f"mounted {zkfsd.hosts} on {mnt}"
        # Mounted by the time READY=1 arrives: usable at once.
        assert os.path.ismount(mnt)
        (mnt / "hello").write_text("hi")
        with kazoo_client(zkfsd.hosts) as k:
            assert k.get("/hello")[0] == b"hi"
        notify_socket.wait_for("WATCHDOG", 5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
        notify_socket.wait_for("STOPPING", 5)
        assert not os.path.ismount(mnt)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


# ---------------------------------------------------------------------------- the units

def _units_for_analysis(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The units with ExecStart= pointing at this venv, instances named, and a man tree for
    their Documentation=man:... lines (systemd-analyze verify checks those exist)."""
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/zkfs/.venv/bin/", f"{BIN}/")
        name = unit.name.replace("@.", "@1.") if unit.name.startswith("zkfsd@") else \
            unit.name.replace("@.", "@zk.")
        (units / name).write_text(text)
    man = tmp_path / "man"
    for page in (ROOT / "man").iterdir():
        section = page.suffix[1:]
        (man / f"man{section}").mkdir(parents=True, exist_ok=True)
        shutil.copy(page, man / f"man{section}" / page.name)
    return units, dict(os.environ, MANPATH=str(man), SYSTEMD_LOG_COLOR="0")


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: scripts/setup.sh installs the systemd package")
    return path


def test_units_verify(tmp_path):  # type: ignore[no-untyped-def]
    analyze = _systemd_analyze()
    units, env = _units_for_analysis(tmp_path)
    names = sorted(str(u) for u in units.iterdir())
    assert len(names) == 6, names  # the daemons and the three examples
    r = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, env=env,
                       timeout=60, cwd=units)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    for unit in UNITS.glob("*.service"):
        if unit.name in ("zkfsd.service", "zkfsd@.service", "zkfs-mount@.service"):
            assert "Type=notify" in unit.read_text(), unit


@pytest.mark.parametrize("unit,limit", [("zkfsd.service", 2.5), ("zkfsd@1.service", 2.5),
                                        ("zkfs-mount@zk.service", 5.0)])
def test_units_security_exposure(tmp_path, unit, limit):  # type: ignore[no-untyped-def]
    analyze = _systemd_analyze()
    units, env = _units_for_analysis(tmp_path)
    r = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(units / unit)],
                       capture_output=True, text=True, env=env, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, (r.stdout[-2000:], r.stderr)
    assert float(m.group(1)) <= limit, r.stdout


def test_background_mount_logs_to_syslog(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Without -f and without logfile=, the mount's stderr is /dev/null: it logs to the syslog
    socket (journald's /dev/log under systemd) instead, one datagram per line."""
    import logging

    from zkfs import mount, sdnotify

    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5)
    monkeypatch.setattr(sdnotify, "SYSLOG_ADDRESS", address)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        mount._setup_logging({}, foreground=False)
        logging.getLogger("zkfs.fs").warning("lost the connection")
        line = server.recv(4096).decode()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        server.close()
    # <28> is facility daemon (3 * 8) + priority warning (4).
    assert line.startswith(f"<28>zkfs-mount[{os.getpid()}]: zkfs.fs: lost the connection"), line
