"""`inotifywait -m` as a bounded subprocess of a test, its lines collected by a thread."""
from __future__ import annotations

import contextlib
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

INOTIFYWAIT = shutil.which("inotifywait")


class Watcher:
    """`inotifywait -m [-r] --format '%e %w%f' PATH`; `events()` gives ("CREATE", path) pairs
    (one per flag combination, e.g. "CREATE,ISDIR")."""

    def __init__(self, path: Path, recursive: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        args = [INOTIFYWAIT or "inotifywait", "-m", "-q", "--format", "%e %w%f", *extra]
        if recursive:
            args.append("-r")
        args.append(str(path))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()
        # inotifywait prints "Watches established." on stderr (even with -q it is quiet, so
        # wait for the process to have set its watches by polling /proc for the inotify fd).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._has_inotify_fd():
            if self.proc.poll() is not None:
                raise RuntimeError(f"inotifywait exited: {''.join(self._stderr)}")
            time.sleep(0.02)
        time.sleep(0.2 if recursive else 0.05)

    def _has_inotify_fd(self) -> bool:
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if "inotify" in str(fd.readlink()):
                        info = Path(f"/proc/{self.proc.pid}/fdinfo/{fd.name}").read_text()
                        return "inotify wd:" in info
        except OSError:
            pass
        return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _drain(self, timeout: float) -> bool:
        try:
            self.seen.append(self.lines.get(timeout=timeout))
            return True
        except queue.Empty:
            return False

    def wait_for(self, event: str, path: str | Path, timeout: float = 10.0) -> float:
        """Wait until a line with flag `event` on `path` was seen; its arrival time."""
        want = str(path)
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.seen:
                flags, _, p = line.partition(" ")
                if p == want and set(event.split(",")) <= set(flags.split(",")):
                    return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} on {want} within {timeout}s; saw:\n"
                                     + "\n".join(line for _, line in self.seen))
            self._drain(min(left, 0.2))

    def settle(self, quiet: float = 0.5, limit: float = 5.0) -> list[str]:
        """Collect until nothing arrives for `quiet` seconds; all lines so far."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self._drain(quiet):
            pass
        return [line for _, line in self.seen]

    def take(self) -> list[str]:
        lines = [line for _, line in self.seen]
        self.seen.clear()
        return lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def watching(path: Path, recursive: bool = False,
             events: tuple[str, ...] = ()) -> Iterator[Watcher]:
    """`events`: only these (inotifywait -e), e.g. ("modify", "close_write")."""
    w = Watcher(path, recursive, tuple(a for e in events for a in ("-e", e)))
    try:
        yield w
    finally:
        w.stop()


def count(lines: list[str], event: str, path: str | Path) -> int:
    want = str(path)
    n = 0
    for line in lines:
        flags, _, p = line.partition(" ")
        if p == want and set(event.split(",")) <= set(flags.split(",")):
            n += 1
    return n
