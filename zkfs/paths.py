"""ZooKeeper path arithmetic, in one place for the mount, the command line and the recipes.

Paths are absolute and "/"-separated as ZooKeeper's; "/" is the root. These helpers do not
validate (the server refuses a bad path with BadArguments, and the command line checks its
arguments before it connects).
"""
from __future__ import annotations

from collections.abc import Iterator

__all__ = ["parent_path", "base_name", "join_path", "lineage", "ancestors", "is_within"]


def parent_path(path: str) -> str:
    """The directory of `path` ("/" for a child of the root and for the root itself)."""
    return path.rsplit("/", 1)[0] or "/"


def base_name(path: str) -> str:
    """The last component of `path` ("" for the root)."""
    return path.rsplit("/", 1)[1]


def join_path(parent: str, name: str) -> str:
    """`name` inside `parent`; a trailing "/" on `parent` (as a user may type it) is ignored."""
    return parent.rstrip("/") + "/" + name


def lineage(path: str) -> Iterator[str]:
    """`path` itself, then each ancestor up to and including "/"."""
    yield path
    while path != "/":
        path = parent_path(path)
        yield path


def ancestors(path: str) -> list[str]:
    """The ancestors of `path` below the root, outermost first ("/a", "/a/b" for "/a/b/c"):
    what has to exist before `path` can be created."""
    return [p for p in reversed(list(lineage(path))) if p not in ("/", path)]


def is_within(path: str, root: str) -> bool:
    """`path` is `root` or lies below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")
