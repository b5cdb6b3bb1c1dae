"""Which change fires which watch (ZooKeeper's WatchManager rules)."""
from zkfs.constants import EventType as E, WatcherType, WatchMode
from zkfsd.watches import WatchManager


def test_one_shot_data_watch_fires_once() -> None:
    w = WatchManager()
    w.add_data("/a", "c1")
    assert w.trigger(E.NODE_DATA_CHANGED, "/a") == ["c1"]
    assert w.trigger(E.NODE_DATA_CHANGED, "/a") == []


def test_delete_fires_data_and_child_watch_once_per_watcher() -> None:
    w = WatchManager()
    w.add_data("/a", "c1")
    w.add_child("/a", "c1")
    w.add_child("/a", "c2")
    assert sorted(w.trigger(E.NODE_DELETED, "/a")) == ["c1", "c2"]
    assert w.count() == 0


def test_children_changed_only_for_child_watches() -> None:
    w = WatchManager()
    w.add_data("/a", "c1")
    w.add_child("/a", "c2")
    assert w.trigger(E.NODE_CHILDREN_CHANGED, "/a") == ["c2"]
    assert w.trigger(E.NODE_DATA_CHANGED, "/a") == ["c1"]


def test_persistent_stays_and_recursive_skips_children_changed() -> None:
    w = WatchManager()
    w.add_persistent("/a", "p", WatchMode.PERSISTENT)
    w.add_persistent("/", "r", WatchMode.PERSISTENT_RECURSIVE)
    assert w.trigger(E.NODE_CHILDREN_CHANGED, "/a") == ["p"]
    assert sorted(w.trigger(E.NODE_DATA_CHANGED, "/a")) == ["p", "r"]
    assert w.trigger(E.NODE_CREATED, "/a/b/c") == ["r"]
    assert sorted(w.trigger(E.NODE_DATA_CHANGED, "/a")) == ["p", "r"]


def test_remove_and_check() -> None:
    w = WatchManager()
    w.add_child("/a", "c")
    assert not w.remove("/a", "c", WatcherType.DATA)
    assert w.remove("/a", "c", WatcherType.CHILDREN, dry_run=True)
    assert w.remove("/a", "c", WatcherType.ANY)
    assert not w.remove("/a", "c", WatcherType.ANY)


def test_remove_watcher_forgets_everything() -> None:
    w = WatchManager()
    w.add_data("/a", "c")
    w.add_persistent("/b", "c", WatchMode.PERSISTENT_RECURSIVE)
    w.remove_watcher("c")
    assert w.count() == 0 and w.trigger(E.NODE_CREATED, "/b/x") == []
