"""zkfs.paths: the one copy of ZooKeeper path arithmetic."""
from __future__ import annotations

from zkfs.paths import ancestors, base_name, is_within, join_path, lineage, parent_path


def test_parent_and_base_name() -> None:
    assert parent_path("/a/b") == "/a"
    assert parent_path("/a") == "/"
    assert parent_path("/") == "/"
    assert base_name("/a/b") == "b"
    assert base_name("/a") == "a"
    assert base_name("/") == ""


def test_join_path_ignores_a_trailing_slash() -> None:
    assert join_path("/", "a") == "/a"
    assert join_path("/a", "b") == "/a/b"
    assert join_path("/a/", "b") == "/a/b"
    assert join_path(parent_path("/x/y"), base_name("/x/y")) == "/x/y"


def test_lineage_and_ancestors() -> None:
    assert list(lineage("/a/b/c")) == ["/a/b/c", "/a/b", "/a", "/"]
    assert list(lineage("/")) == ["/"]
    assert ancestors("/a/b/c") == ["/a", "/a/b"]
    assert ancestors("/a") == []
    assert ancestors("/") == []


def test_is_within() -> None:
    assert is_within("/a", "/a")
    assert is_within("/a/b", "/a")
    assert not is_within("/ab", "/a")
    assert not is_within("/", "/a")
    assert is_within("/a", "/")
