# TEMPORARY latency tracing for issue 12 (not for merge): ZKFSD_TRACE=prefix writes
# "t_ns name" lines to prefix.<pid> at exit / every 4000 marks.
import atexit
import os
import time

_path = os.environ.get("ZKFSD_TRACE")
on = bool(_path)
_buf: list = []


def mark(name: str) -> None:
    _buf.append((time.monotonic_ns(), name))
    if len(_buf) >= 4000:
        flush()


def flush() -> None:
    if not _buf:
        return
    with open(f"{_path}.{os.getpid()}", "a") as f:
        f.writelines(f"{t} {n}\n" for t, n in _buf)
    _buf.clear()


if on:
    atexit.register(flush)
