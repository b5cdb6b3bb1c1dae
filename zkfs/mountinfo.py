"""What /proc/self/mountinfo says about a path: used to refuse mounting onto a mounted path
(zkfs.mount) and to find this mount's id, which /proc/PID/fdinfo shows per descriptor
(zkfs.fs)."""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MountEntry", "mounted_at"]


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_at(path: str) -> MountEntry | None:
    """The mount on top at `path` (an absolute, normalised path), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) > 4 and len(rest) >= 2 and _unescape(fields[4]) == path:
            try:
                found = MountEntry(int(fields[0]), rest[0], _unescape(rest[1]))
            except ValueError:
                continue
    return found
