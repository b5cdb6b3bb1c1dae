"""zkfs.mountstate without a mount: the coherence sequence, cached views and the events the
mount expects from its own writes (the mount tests exercise them through FUSE)."""
from __future__ import annotations

from zkfs.client import Op
from zkfs.constants import EventType
from zkfs.inodes import NO_DATA, Kind
from zkfs.meta import DirSettings, meta_path
from zkfs.mountstate import Expected, MountState, expected_events, fake_stat


def _following() -> MountState:
    state = MountState()
    bound = []
    state.follow(bound.append)
    state.coherent = True
    return state


def test_nothing_is_cached_without_a_follower() -> None:
    state = MountState()
    state.inodes.bind("/a", Kind.FILE)
    assert state.seq == -1
    state.store_view("/a", Kind.FILE, fake_stat(1), b"x", state.seq)
    assert state.view("/a") is None
    state.expect([Expected(EventType.NODE_CREATED, "/a")])
    assert not state.own(EventType.NODE_CREATED, "/a")


def test_a_read_overtaken_by_an_event_is_not_cached() -> None:
    state = _following()
    state.inodes.bind("/d", Kind.DIR)
    state.inodes.bind("/d/f", Kind.FILE)
    seq = state.seq
    state.store_view("/d/f", Kind.FILE, fake_stat(1), b"x", seq)
    view = state.view("/d/f")
    assert view is not None and (view.kind, view.data) == (Kind.FILE, b"x")
    # An event for the node drops its view and its directory's; a read from before it is
    # not cached, one from after it is.
    state.note("/d/f")
    assert state.view("/d/f") is None
    assert not state.unchanged_since(seq, "/d/f")
    assert not state.unchanged_since(seq, "/d")
    assert state.unchanged_since(seq, "/other")
    state.store_view("/d/f", Kind.FILE, fake_stat(2), b"yy", seq)
    assert state.view("/d/f") is None
    state.store_view("/d", Kind.DIR, fake_stat(), NO_DATA, state.seq)
    assert state.view("/d") is not None
    # Kernel pages of the node are suspect until invalidated up to the event.
    node = state.inodes.find("/d/f", Kind.FILE)
    assert node is not None and node.noted_seq == state.seq > node.inval_seq
    # Losing coherence (a suspended session) trusts nothing.
    state.coherent = False
    assert state.view("/d") is None and not state.unchanged_since(state.seq, "/d")


def test_settings_events_drop_the_settings() -> None:
    state = _following()
    mp = meta_path("/d")
    state.store_settings(mp, DirSettings(lifetime="session"), state.seq)
    assert state.settings(mp) == DirSettings(lifetime="session")
    state.note(mp)
    assert state.settings(mp) is None


def test_own_events_from_the_ops_sent() -> None:
    state = _following()
    ops = [Op.create("/d/job-", b"", sequential=True), Op.set("/d/x", b"1"), Op.delete("/d/y")]
    expected = expected_events(ops)
    assert expected == [Expected(EventType.NODE_CREATED, "/d/job-", True),
                        Expected(EventType.NODE_DATA_CHANGED, "/d/x"),
                        Expected(EventType.NODE_DELETED, "/d/y")]
    state.expect(expected)
    assert state.own(EventType.NODE_CREATED, "/d/job-0000000007")
    assert not state.own(EventType.NODE_CREATED, "/d/job-0000000008")
    assert state.own(EventType.NODE_DATA_CHANGED, "/d/x")
    assert not state.own(EventType.NODE_DATA_CHANGED, "/d/x")
    # A write that failed causes no event: its expectations are withdrawn.
    state.unexpect([Expected(EventType.NODE_DELETED, "/d/y")])
    assert not state.own(EventType.NODE_DELETED, "/d/y")


def test_a_created_child_keeps_its_directorys_view_only() -> None:
    """NodeCreated of a child: the directory stays a directory and its shown attributes do
    not move, so its view stays (its listing does not); a file that gains a child (it becomes
    a directory) and every other event drop the view."""
    state = _following()
    d = state.inodes.bind("/d", Kind.DIR)[0]
    f = state.inodes.bind("/f", Kind.FILE)[0]
    state.store_view("/d", Kind.DIR, fake_stat(), None, state.seq)
    state.store_view("/f", Kind.FILE, fake_stat(1), b"x", state.seq)
    d.listed = f.listed = True
    state.note("/d/new", created=True)
    assert state.view("/d") is not None and not d.listed
    state.note("/f/child", created=True)
    assert state.view("/f") is None
    state.note("/d/new")  # deleted or changed: the directory may have lost its last child
    assert state.view("/d") is None


def test_an_own_write_is_cached_unless_another_write_overtook_it() -> None:
    """store_written: what this mount's write left is cached if at most the write's own
    events came for the path since it was sent; one more means another write came too."""
    state = _following()
    state.inodes.bind("/f", Kind.FILE)
    seq = state.seq
    state.note("/f")  # the write's own event, before its reply
    state.store_written("/f", Kind.FILE, fake_stat(3), b"new", seq)
    view = state.view("/f")
    assert view is not None and view.data == b"new"
    seq = state.seq
    state.note("/f")
    state.note("/f")  # someone else's write too
    state.store_written("/f", Kind.FILE, fake_stat(3), b"mine", seq)
    assert state.view("/f") is None
    # An event after the reply drops it as any view.
    seq = state.seq
    state.store_written("/f", Kind.FILE, fake_stat(3), b"mine", seq)
    state.note("/f")
    assert state.view("/f") is None
    # Not coherent (events may be missed): nothing is cached.
    state.coherent = False
    state.store_written("/f", Kind.FILE, fake_stat(3), b"mine", state.seq)
    state.coherent = True
    assert state.view("/f") is None
