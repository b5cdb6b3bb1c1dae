"""Per-directory settings of the mount (lifetime, sequential), stored in ZooKeeper itself.

They must be visible to every host and survive restarts, and they must work on a plain Apache
ZooKeeper too, so they live in ordinary znodes: a reserved side tree `<mount root>/.zkfs`
(hidden from the mount's listing) holding one znode per configured directory. The znode's name
is the directory's mount-relative path, percent-encoded into one path component
(`/workers` → `%2Fworkers`); its data is a JSON object such as
`{"lifetime": "session", "sequential": true}`.

The same side tree holds the lock directories of the mount's file locks, under
`<mount root>/.zkfs/locks` (zkfs.lock); that child's name never starts with `%2F`, so it is
never taken for a directory's settings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["META_NAME", "META_ROOT", "LIFETIMES", "DirSettings", "meta_path", "meta_key_path",
           "decode_settings", "encode_settings"]

META_NAME = ".zkfs"
META_ROOT = "/" + META_NAME
LIFETIMES = ("persistent", "session", "open")


@dataclass(frozen=True)
class DirSettings:
    """What is explicitly configured for one directory; None means "use the mount's default"."""
    lifetime: str | None = None
    sequential: bool | None = None

    @property
    def empty(self) -> bool:
        return self.lifetime is None and self.sequential is None


def meta_path(dir_path: str) -> str:
    """The settings znode of the directory at mount-relative `dir_path`."""
    return f"{META_ROOT}/{quote(dir_path, safe='')}"


def meta_key_path(key: str) -> str:
    """Inverse of `meta_path` for one child name of META_ROOT."""
    return unquote(key)


def decode_settings(data: bytes | None) -> DirSettings:
    try:
        raw = json.loads(data or b"{}")
    except ValueError:
        # Somebody wrote garbage there by hand: behave as if nothing were configured.
        return DirSettings()
    if not isinstance(raw, dict):
        return DirSettings()
    lifetime = raw.get("lifetime")
    sequential = raw.get("sequential")
    return DirSettings(lifetime if lifetime in LIFETIMES else None,
                       bool(sequential) if isinstance(sequential, bool) else None)


def encode_settings(settings: DirSettings) -> bytes:
    raw: dict[str, object] = {}
    if settings.lifetime is not None:
        raw["lifetime"] = settings.lifetime
    if settings.sequential is not None:
        raw["sequential"] = settings.sequential
    return json.dumps(raw, sort_keys=True).encode()
