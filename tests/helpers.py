"""Process helpers shared by the whole test suite: zkfsd and Apache ZooKeeper as subprocesses.

Processes are only ever signalled by the PID this module started; nothing is killed by name, so a
developer's own zkfsd or ZooKeeper on the same machine is never touched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kazoo.client import KazooClient

LOCALHOST = "127.0.0.1"

# The console script installed next to the interpreter running the tests (the venv's bin/).
ZKFSD_BIN = Path(os.path.abspath(sys.executable)).parent / "zkfsd"

ZOOKEEPER_HOME = Path("/usr/share/zookeeper")
ZKCLI = ZOOKEEPER_HOME / "bin" / "zkCli.sh"
# Debian's zookeeper.jar names its runtime dependencies in its manifest Class-Path, so this jar
# alone is a complete classpath (that is all zkEnv.sh puts on it, besides /etc/zookeeper/conf).
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
# Debian ships ZooKeeper with slf4j-api but no binding, so the server would log nothing at all.
# slf4j-simple (same slf4j version, from libslf4j-java, a dependency of the package) gives it a
# plain stderr log; the log4j.properties in /etc/zookeeper/conf is unused by 3.8.
SLF4J_SIMPLE_JAR = Path("/usr/share/java/slf4j-simple.jar")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def four_letter_word(host: str, port: int, word: str, timeout: float = 5.0) -> str:
    """Send a four-letter word (ruok, srvr, stat, mntr, ...) and return the whole reply.

    The server closes the connection after answering; we read until then (or until `timeout`).
    """
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode("ascii"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (to check that a flood or an oversized frame is bounded)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def is_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if the server on host:port answers `ruok` with `imok`."""
    try:
        return four_letter_word(host, port, "ruok", timeout=timeout).strip() == "imok"
    except OSError:
        return False


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


class _ManagedProcess:
    """Common start/stop logic: one subprocess, its log file, and its PID only."""

    name = "process"
    start_timeout = 15.0
    stop_timeout = 10.0

    def __init__(self, log_path: Path, host: str, port: int) -> None:
        self.log_path = log_path
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        """Connect string for ZooKeeper clients: '127.0.0.1:PORT'."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so the log of a restarted process still shows what happened before the restart.
        with open(self.log_path, "ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env()
            )
        self.wait_ready()

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def is_ready(self) -> bool:
        return is_ok(self.host, self.port, timeout=1.0)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server answers `ruok` with `imok`; fail with the log tail if it
        exits or does not come up in time."""
        assert self.proc is not None
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise RuntimeError(
                    f"{self.name} exited with status {rc} before it answered ruok on {self.hosts}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.05)
        # Do not leave a half-started process behind for the next test to trip over.
        self.kill9()
        raise RuntimeError(
            f"{self.name} did not answer ruok on {self.hosts} within {timeout or self.start_timeout:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL if it is still there. Returns the exit status (negative
        for a signal, as in subprocess), or None if it was not running."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(f"===== did not stop within {timeout or self.stop_timeout}s of SIGTERM; SIGKILL\n".encode())
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.proc = None
        return proc.returncode

    def kill9(self) -> int | None:
        """SIGKILL (a crash: no chance to flush anything). Returns the exit status."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        self.proc = None
        return proc.returncode

    def restart(self) -> None:
        """Clean stop, then start again on the same data and port."""
        self.stop()
        self.start()

    def __enter__(self) -> _ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ZkfsdProcess(_ManagedProcess):
    """A zkfsd started from the venv's console script.

    `extra_args` are appended to the command line (e.g. ["--config", cfg, "--my-id", "2"]); when
    they include --config, data_dir/port may still be given and then override the file.
    """

    name = "zkfsd"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        tick_time: int = 200,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "DEBUG",
    ) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(
            log_path or self.data_dir.parent / f"{self.data_dir.name}.zkfsd.log",
            LOCALHOST,
            port or free_port(),
        )
        self.tick_time = tick_time
        self.extra_args = list(extra_args)
        self.log_level = log_level

    def command(self) -> list[str]:
        if not ZKFSD_BIN.exists():
            raise RuntimeError(f"{ZKFSD_BIN} not found: install the project (pip install -e '.[test]')")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(ZKFSD_BIN),
            "--data-dir", str(self.data_dir),
            "--client-port", str(self.port),
            "--client-address", self.host,
            "--tick-time", str(self.tick_time),
            "--log-level", self.log_level,
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file before a kill -9
        return env


def find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def apache_zookeeper_missing() -> str | None:
    """Why Apache ZooKeeper cannot be started here, or None if it can."""
    if find_java() is None:
        return "java not found (apt-get install default-jre-headless)"
    if not ZOOKEEPER_JAR.exists():
        return f"{ZOOKEEPER_JAR} not found (apt-get install zookeeper)"
    return None


class ApacheZooKeeper(_ManagedProcess):
    """A standalone Apache ZooKeeper 3.8 from Debian's `zookeeper` package, as the reference
    implementation zkfsd is compared against."""

    name = "Apache ZooKeeper"
    # A cold JVM on a loaded CI machine can take a while.
    start_timeout = 40.0

    def __init__(self, base_dir: Path, port: int | None = None, *, tick_time: int = 2000) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.cfg_path = self.base_dir / "zoo.cfg"
        self.tick_time = tick_time
        super().__init__(self.base_dir / "zookeeper.log", LOCALHOST, port or free_port())

    def is_ready(self) -> bool:
        # ZooKeeper answers imok as soon as it listens, before it has loaded its database; until
        # then srvr says "not currently serving requests" and clients get their connection dropped.
        if not is_ok(self.host, self.port, timeout=1.0):
            return False
        try:
            return "Mode:" in four_letter_word(self.host, self.port, "srvr", timeout=1.0)
        except OSError:
            return False

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cfg_path.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_time}",
                    f"dataDir={self.data_dir}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.host}",
                    # Same session-timeout bounds ZooKeeper derives by default, written out so a
                    # test can rely on them.
                    f"minSessionTimeout={2 * self.tick_time}",
                    f"maxSessionTimeout={20 * self.tick_time}",
                    "maxClientCnxns=0",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        missing = apache_zookeeper_missing()
        if missing:
            raise RuntimeError(missing)
        self.write_config()
        classpath = [str(ZOOKEEPER_JAR)]
        if SLF4J_SIMPLE_JAR.exists():
            classpath.append(str(SLF4J_SIMPLE_JAR))
        java = find_java()
        assert java is not None
        return [
            java,
            "-Xmx256m",
            "-Djava.awt.headless=true",
            # TTL nodes (CREATE_TTL) exist only with extended types enabled.
            "-Dzookeeper.extendedTypesEnabled=true",
            "-Dzookeeper.admin.enableServer=false",
            f"-Dzookeeper.log.dir={self.base_dir}",
            "-Dzookeeper.log.file=zookeeper.log",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp", os.pathsep.join(classpath),
            # ZooKeeperServerMain, not QuorumPeerMain: always standalone, no myid needed.
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.cfg_path),
        ]


def run_zkcli(hosts: str, *command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one zkCli.sh command non-interactively (`zkCli.sh -server H:P create /x data`).

    zkCli.sh exits 0 on success and 1 when the command fails; its output goes to stdout.
    """
    # Debian's zkEnv.sh fixes the client log dir to /var/log/zookeeper, but with no slf4j binding
    # on zkCli's classpath nothing is written there; SLF4J's "NOP logger" notice goes to stderr.
    return subprocess.run(
        ["bash", str(ZKCLI), "-server", hosts, *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def kazoo_client(
    hosts: str, *, timeout: float = 10.0, connect_timeout: float = 15.0, **kwargs: Any
) -> Iterator[KazooClient]:
    """A started kazoo client for `hosts`; always stopped and closed afterwards.

    `timeout` is the requested session timeout in seconds; `connect_timeout` bounds start().
    """
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=timeout, **kwargs)
    try:
        client.start(timeout=connect_timeout)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.stop()
        with contextlib.suppress(Exception):
            client.close()
