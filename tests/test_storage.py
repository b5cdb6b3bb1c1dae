"""Durability tests for zkfsd.storage: restarts, torn tails, corruption, compaction, kill -9."""
from __future__ import annotations

import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import struct
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from zkfsd.consensus import Entry, HardState, Snapshot
from zkfsd.storage import LoadedState, MemoryStorage, Storage, StorageError

LOGGER = "zkfsd.storage"


def ents(lo: int, hi: int, term: int = 1, tag: str = "") -> list[Entry]:
    return [Entry(i, term, f"{tag}e{i}".encode() * 3) for i in range(lo, hi + 1)]


def reopen(path: Path, **kw: int) -> tuple[Storage, LoadedState]:
    st = Storage(path, **kw)
    return st, st.load()


def log_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("log."))


def storage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_fresh_dir_round_trip(tmp_path: Path) -> None:
    st, ls = reopen(tmp_path / "d")
    assert ls == LoadedState(snapshot=None, hard_state=HardState(), entries=[])
    assert (st.first_index(), st.last_index(), st.term_at(0), st.term_at(1)) == (1, 0, 0, None)
    st.append(ents(1, 5, term=2))
    st.set_hard_state(HardState(term=2, vote=3, commit=4))
    st.sync()
    assert st.fsync_count == 1
    assert st.entries(2, 4) == ents(2, 3, term=2)
    assert st.term_at(5) == 2 and st.term_at(6) is None
    with pytest.raises(IndexError):
        st.entries(0, 2)
    st.close()
    assert (tmp_path / "d" / "VERSION").read_text().startswith("zkfs-storage")

    st, ls = reopen(tmp_path / "d")
    assert ls.entries == ents(1, 5, term=2)
    assert ls.hard_state == HardState(term=2, vote=3, commit=4)
    assert ls.snapshot is None
    assert st.last_index() == 5
    st.close()


def test_separate_log_dir(tmp_path: Path) -> None:
    st = Storage(tmp_path / "data", tmp_path / "wal")
    st.load()
    st.append(ents(1, 3))
    st.close()
    assert log_files(tmp_path / "wal") and not log_files(tmp_path / "data")
    st = Storage(tmp_path / "data", tmp_path / "wal")
    assert st.load().entries == ents(1, 3)


def test_append_validation(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 3))
    with pytest.raises(ValueError):
        st.append(ents(5, 6))  # gap
    with pytest.raises(ValueError):
        st.append([Entry(4, 1, b""), Entry(6, 1, b"")])  # non-contiguous batch
    st.append([])
    assert st.last_index() == 3


def test_unsynced_hard_state_is_latest_after_clean_close(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    for t in range(1, 6):
        st.set_hard_state(HardState(term=t, vote=t % 3, commit=0))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.hard_state == HardState(term=5, vote=2, commit=0)


def test_conflict_truncation_survives_restart(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 10, term=1))
    st.sync()
    st.append(ents(6, 8, term=2, tag="new"))  # discards 6..10 of term 1
    assert st.last_index() == 8 and st.term_at(6) == 2
    st.sync()
    st.close()
    st, ls = reopen(tmp_path)
    assert ls.entries == ents(1, 5, term=1) + ents(6, 8, term=2, tag="new")
    # Truncate again after restart, then continue appending past the old end.
    st.append(ents(3, 12, term=3))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.entries == ents(1, 2, term=1) + ents(3, 12, term=3)


def test_segment_rollover_and_truncation_across_segments(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path, segment_bytes=200)
    st.append(ents(1, 60))
    st.sync()
    assert len(log_files(tmp_path)) > 5
    # Conflict-truncate deep into an old segment; later segments must still sort correctly.
    st.append(ents(10, 70, term=2))
    st.set_hard_state(HardState(term=2, vote=1, commit=9))
    st.close()
    names = log_files(tmp_path)
    assert names == sorted(names, key=lambda n: int(n.split(".")[1]))
    _, ls = reopen(tmp_path, segment_bytes=200)
    assert ls.entries == ents(1, 9) + ents(10, 70, term=2)
    assert ls.hard_state == HardState(term=2, vote=1, commit=9)


def test_snapshot_compaction_and_load(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path, segment_bytes=300)
    st.append(ents(1, 100))
    st.set_hard_state(HardState(term=1, vote=1, commit=90))
    st.sync()
    n_before = len(log_files(tmp_path))
    st.save_snapshot(Snapshot(50, 1, b"state@50"))
    assert st.first_index() == 51 and st.term_at(50) == 1 and st.term_at(49) is None
    assert st.entries(51, 53) == ents(51, 52)
    # The only snapshot: the log is kept whole as its fallback.
    assert len(log_files(tmp_path)) >= n_before
    st.save_snapshot(Snapshot(80, 1, b"state@80"))
    # Now segments wholly <= 50 (the older kept snapshot) are gone.
    remaining = log_files(tmp_path)
    assert len(remaining) < n_before
    assert int(remaining[0].split(".")[1]) <= 51
    st.append(ents(101, 110))
    st.close()

    st, ls = reopen(tmp_path, segment_bytes=300)
    assert ls.snapshot == Snapshot(80, 1, b"state@80")
    assert ls.entries == ents(81, 110)
    assert ls.hard_state.commit == 90  # the vote/commit survive dropping the old segments
    assert (st.first_index(), st.last_index()) == (81, 110)
    # Third snapshot: only 2 snapshot files retained.
    st.save_snapshot(Snapshot(105, 1, b"state@105"))
    snaps = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("snapshot."))
    assert snaps == [f"snapshot.{80:020d}", f"snapshot.{105:020d}"]
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.snapshot is not None and ls.snapshot.index == 105
    assert ls.entries == ents(106, 110)


def test_snapshot_beyond_log_end_and_conflicting_snapshot(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 5))
    st.save_snapshot(Snapshot(1000, 7, b"installed"))
    assert (st.first_index(), st.last_index(), st.term_at(1000)) == (1001, 1000, 7)
    st.append(ents(1001, 1003, term=7))
    st.close()
    st, ls = reopen(tmp_path)
    assert ls.snapshot == Snapshot(1000, 7, b"installed")
    assert ls.entries == ents(1001, 1003, term=7)
    # A snapshot whose term disagrees with our entry at its index discards our suffix.
    st.save_snapshot(Snapshot(1002, 9, b"other"))
    assert st.last_index() == 1002
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.snapshot == Snapshot(1002, 9, b"other") and ls.entries == []


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_model(tmp_path: Path, seed: int) -> None:
    # Random appends / conflict truncations / snapshots / restarts against a dict model.
    rng = random.Random(seed)
    st, _ = reopen(tmp_path, segment_bytes=rng.choice([150, 600, 1 << 20]))
    model: dict[int, Entry] = {}
    snap: Snapshot | None = None
    hs = HardState()
    term = 1
    for _ in range(300):
        last = st.last_index()
        op = rng.random()
        if op < 0.55:
            lo = max(st.first_index(), last + 1 - rng.choice([0, 0, 0, 1, 3, 10]))
            term += rng.random() < 0.3
            n = rng.randrange(1, 6)
            batch = [Entry(i, term, rng.randbytes(rng.randrange(30))) for i in range(lo, lo + n)]
            st.append(batch)
            for i in [i for i in model if i >= lo]:
                del model[i]
            model.update((e.index, e) for e in batch)
        elif op < 0.65:
            hs = HardState(term, rng.randrange(5), rng.randrange(last + 1))
            st.set_hard_state(hs)
        elif op < 0.75:
            st.sync()
        elif op < 0.85:
            s = rng.randrange(st.first_index(), last + 4)
            t = model[s].term if s in model and rng.random() < 0.8 else term + 1
            snap = Snapshot(s, t, rng.randbytes(20))
            st.save_snapshot(snap)
            if s not in model or model[s].term != t:
                model.clear()
            model = {i: e for i, e in model.items() if i > s}
        else:
            st.close()
            st, ls = reopen(tmp_path, segment_bytes=st.segment_bytes)
            assert ls.snapshot == snap
            assert ls.hard_state == hs
            assert ls.entries == [model[i] for i in sorted(model)]
        base = snap.index if snap else 0
        assert st.first_index() == base + 1
        assert st.last_index() == base + len(model)
        expected = [model[i] for i in sorted(model)]
        assert st.entries(st.first_index(), st.last_index() + 1) == expected
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.snapshot == snap and ls.entries == [model[i] for i in sorted(model)]


def _synced_base(path: Path) -> tuple[int, int]:
    """Sync entries 1..5, then entry 6 as the last record; return file sizes around record 6."""
    st, _ = reopen(path)
    st.append(ents(1, 5))
    st.set_hard_state(HardState(term=1, vote=2, commit=5))
    st.sync()
    (seg,) = log_files(path)
    before = (path / seg).stat().st_size
    st.append([Entry(6, 1, b"x" * 40)])
    st.close()
    return before, (path / seg).stat().st_size


def test_torn_tail_at_every_byte_offset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "base"
    before, after = _synced_base(base)
    (seg,) = log_files(base)
    for cut in range(before, after):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(base, d)
        os.truncate(d / seg, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            st, ls = reopen(d)
        assert ls.entries == ents(1, 5), cut
        assert ls.hard_state == HardState(term=1, vote=2, commit=5)
        assert len(storage_warnings(caplog)) == (0 if cut == before else 1), cut
        assert (d / seg).stat().st_size == before  # repaired on disk
        st.append([Entry(6, 2, b"again")])
        st.sync()
        st.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            _, ls = reopen(d)
        assert ls.entries == ents(1, 5) + [Entry(6, 2, b"again")], cut
        assert storage_warnings(caplog) == []
        shutil.rmtree(d)


def test_flipped_bits_in_last_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "base"
    before, after = _synced_base(base)
    (seg,) = log_files(base)
    pristine = (base / seg).read_bytes()
    d = tmp_path / "d"
    rng = random.Random(1)
    for pos in range(before, after):
        for bit in {0, 7, rng.randrange(8)}:
            if d.exists():
                shutil.rmtree(d)
            shutil.copytree(base, d)
            buf = bytearray(pristine)
            buf[pos] ^= 1 << bit
            (d / seg).write_bytes(bytes(buf))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                st, ls = reopen(d)
            assert ls.entries == ents(1, 5), (pos, bit)
            assert len(storage_warnings(caplog)) == 1
            st.append([Entry(6, 3, b"fixed")])
            st.close()
            _, ls = reopen(d)
            assert ls.entries[-1] == Entry(6, 3, b"fixed")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 4096,  # zero-filled blocks
        bytes(random.Random(7).randrange(256) for _ in range(1000)),
        b"\xff\xff\xff\x7f" + b"\x00" * 20,  # header claiming a huge record
        b"\x03\x00\x00\x00\x00\x00\x00\x00abc",  # wrong crc
    ],
    ids=["zeros", "random", "huge-length", "bad-crc"],
)
def test_garbage_appended(tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    _synced_base(tmp_path)
    (seg,) = log_files(tmp_path)
    with open(tmp_path / seg, "ab") as f:
        f.write(garbage)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st, ls = reopen(tmp_path)
    assert ls.entries == ents(1, 5) + [Entry(6, 1, b"x" * 40)]
    assert len(storage_warnings(caplog)) == 1
    st.append(ents(7, 8))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.entries[-1].index == 8


def test_torn_older_segment_drops_later_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A crash before the rolled-over segment was fsynced can tear it while a newer one has data.
    st, _ = reopen(tmp_path, segment_bytes=100)
    st.append(ents(1, 20))
    st.close()
    names = log_files(tmp_path)
    assert len(names) >= 3
    victim = tmp_path / names[1]
    os.truncate(victim, victim.stat().st_size - 3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st, ls = reopen(tmp_path, segment_bytes=100)
    assert len(storage_warnings(caplog)) == 1
    assert log_files(tmp_path) == names[:2]
    n = len(ls.entries)
    assert ls.entries == ents(1, n) and 0 < n < 20
    st.append(ents(n + 1, 25))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.entries == ents(1, 25)


def test_corrupt_newest_snapshot_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st, _ = reopen(tmp_path, segment_bytes=200)
    st.append(ents(1, 40))
    st.save_snapshot(Snapshot(10, 1, b"s10"))
    st.save_snapshot(Snapshot(30, 1, b"s30" * 50))
    st.close()
    newest = tmp_path / f"snapshot.{30:020d}"
    buf = bytearray(newest.read_bytes())
    buf[-5] ^= 0x10
    newest.write_bytes(bytes(buf))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st, ls = reopen(tmp_path, segment_bytes=200)
    assert len(storage_warnings(caplog)) == 1
    assert ls.snapshot == Snapshot(10, 1, b"s10")
    assert ls.entries == ents(11, 40)
    # The bad file is out of rotation, so the next save keeps the good older snapshot.
    st.save_snapshot(Snapshot(35, 1, b"s35"))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.snapshot == Snapshot(35, 1, b"s35") and ls.entries == ents(36, 40)


def test_truncated_snapshot_and_leftover_tmp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 10))
    st.save_snapshot(Snapshot(5, 1, b"five"))
    st.close()
    (tmp_path / f"snapshot.{8:020d}.tmp").write_bytes(b"half-written")
    os.truncate(tmp_path / f"snapshot.{5:020d}", 10)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, ls = reopen(tmp_path)
    # The only snapshot is bad, but no log was compacted away: full log, no snapshot.
    assert ls.snapshot is None and ls.entries == ents(1, 10)
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_format_version_refused(tmp_path: Path) -> None:
    (tmp_path / "VERSION").write_text("zkfs-storage 99\n")
    with pytest.raises(StorageError):
        Storage(tmp_path).load()


_CHILD = textwrap.dedent(
    """
    import sys
    from zkfsd.consensus import Entry, HardState, Snapshot
    from zkfsd.storage import Storage
    st = Storage(sys.argv[1], segment_bytes=2048, preallocate=int(sys.argv[2]))
    st.load()
    i = st.last_index() + 1
    while True:
        # An unsynced entry that is immediately conflict-truncated, so truncation records
        # are in flight at kill time too.
        st.append([Entry(i, 1, b"doomed")])
        st.append([Entry(i, 2, b"v%d" % i + b"." * (i % 50))])
        st.set_hard_state(HardState(term=2, vote=1, commit=i))
        st.sync()
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
        if i % 97 == 0:
            st.save_snapshot(Snapshot(i - 10, 2, b"snap%d" % (i - 10)))
        i += 1
    """
)


@pytest.mark.parametrize("preallocate", [0, 1500], ids=["growing", "preallocated"])
def test_kill_9_keeps_every_synced_entry(tmp_path: Path, preallocate: int) -> None:
    rng = random.Random()
    deadline = time.monotonic() + 4.0
    acked: list[int] = []
    rounds = 0
    while rounds < 4 and time.monotonic() < deadline:
        rounds += 1
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(preallocate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        # Wait for the first ack so each round really writes, then kill at a random moment.
        ready, _, _ = select.select([proc.stdout], [], [], 3.0)
        assert ready, "child produced no output"
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        acked.extend(int(line) for line in out.decode().split())

        st, ls = reopen(tmp_path)
        have = {e.index: e for e in ls.entries}
        snap_index = ls.snapshot.index if ls.snapshot else 0
        for i in acked:
            if i <= snap_index:
                continue
            assert i in have, (i, snap_index, rounds)
            assert have[i].term == 2 and have[i].data.startswith(b"v%d" % i)
        assert ls.hard_state.commit >= max(acked)
        st.close()
    assert len(acked) > 0


# -- preallocated segments (what the server uses) ----------------------------------------------

def _records_end(path: Path) -> int:
    """Offset where the records of a segment end (what follows may only be zeros)."""
    buf, off = path.read_bytes(), 0
    while off + 8 <= len(buf):
        n, crc = struct.unpack_from("<II", buf, off)
        if n == 0 or off + 8 + n > len(buf) or zlib.crc32(buf[off + 8:off + 8 + n]) != crc:
            break
        off += 8 + n
    return off


def test_preallocated_segment_is_trimmed_on_close(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    st, _ = reopen(tmp_path, preallocate=1 << 20)
    st.append(ents(1, 5))
    st.set_hard_state(HardState(term=1, vote=2, commit=5))
    st.sync()
    (seg,) = log_files(tmp_path)
    # While open, the segment is allocated past its records, and the rest reads as zeros.
    end = _records_end(tmp_path / seg)
    size = (tmp_path / seg).stat().st_size
    assert size >= 1 << 20
    assert (tmp_path / seg).read_bytes()[end:] == bytes(size - end)
    st.close()
    assert (tmp_path / seg).stat().st_size == end
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st, ls = reopen(tmp_path, preallocate=1 << 20)
    assert storage_warnings(caplog) == []
    assert ls.entries == ents(1, 5)
    # Appending after a reopen writes after the records, not after the allocation.
    st.append(ents(6, 7))
    st.close()
    _, ls = reopen(tmp_path)
    assert ls.entries == ents(1, 7)


def test_crash_with_preallocated_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A copy taken while the storage is open is what a crash leaves: synced records, then the
    # unused allocation (zeros), possibly with part of an unsynced record in it.
    base = tmp_path / "base"
    st, _ = reopen(base, preallocate=64 << 10)
    st.append(ents(1, 5))
    st.set_hard_state(HardState(term=1, vote=2, commit=5))
    st.sync()
    (seg,) = log_files(base)
    synced_end = _records_end(base / seg)
    st.append([Entry(6, 1, b"x" * 40)])
    st._file.flush()  # in the page cache, not synced: may or may not survive a crash
    full = (base / seg).read_bytes()
    record_end = _records_end(base / seg)
    assert record_end > synced_end and len(full) >= 64 << 10
    for cut in [synced_end, synced_end + 3, (synced_end + record_end) // 2, record_end - 1,
                record_end]:
        d = tmp_path / f"cut{cut}"
        shutil.copytree(base, d)
        # What reached the disk of the unsynced record: its first `cut` bytes.
        (d / seg).write_bytes(full[:cut] + bytes(len(full) - cut))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            st2, ls = reopen(d, preallocate=64 << 10)
        expect = ents(1, 5) + ([Entry(6, 1, b"x" * 40)] if cut == record_end else [])
        assert ls.entries == expect, cut
        assert ls.hard_state == HardState(term=1, vote=2, commit=5)
        assert len(storage_warnings(caplog)) == 1, cut  # the zero tail is cut off
        assert (d / seg).stat().st_size == (record_end if cut == record_end else synced_end)
        st2.append([Entry(len(expect) + 1, 2, b"again")])
        st2.sync()
        st2.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            _, ls = reopen(d)
        assert ls.entries == expect + [Entry(len(expect) + 1, 2, b"again")], cut
        assert storage_warnings(caplog) == []
    st.close()


def test_rolled_over_segments_are_trimmed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st, _ = reopen(tmp_path, segment_bytes=300, preallocate=300)
    for i in range(1, 41, 4):
        st.append(ents(i, i + 3))
        st.sync()
    names = log_files(tmp_path)
    assert len(names) >= 3
    # Every segment but the active one ends with its last record.
    for name in names[:-1]:
        assert (tmp_path / name).stat().st_size == _records_end(tmp_path / name), name
    st.close()
    for name in names:
        assert (tmp_path / name).stat().st_size == _records_end(tmp_path / name), name
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, ls = reopen(tmp_path, segment_bytes=300, preallocate=300)
    assert storage_warnings(caplog) == []
    assert ls.entries == ents(1, 40)


# -- MemoryStorage: the test harnesses' disk must behave like the real one -------------------------

def _scenario(st: Storage | MemoryStorage, rng: random.Random) -> list[object]:
    """Random appends (with conflicting overwrites), hard states, syncs and snapshots; returns
    what the in-memory view showed after each step."""
    views: list[object] = []
    term = 1
    for step in range(60):
        last = st.last_index()
        first = st.first_index()
        what = rng.random()
        if what < 0.5:
            lo = rng.randint(max(first, last - 3), last + 1)
            term += rng.random() < 0.3
            st.append(ents(lo, lo + rng.randint(0, 4), term=term, tag=f"s{step}"))
        elif what < 0.7:
            st.set_hard_state(HardState(term, rng.randint(0, 3), rng.randint(0, last)))
        elif what < 0.9:
            st.sync()
        elif last >= first:
            index = rng.randint(first, last)
            st.save_snapshot(Snapshot(index, st.term_at(index) or 0, b"snap%d" % index))
        views.append((st.first_index(), st.last_index(),
                      [st.term_at(i) for i in range(st.first_index() - 1, st.last_index() + 2)],
                      st.entries(st.first_index(), st.last_index() + 1)))
    return views


@pytest.mark.parametrize("seed", range(8))
def test_memory_storage_behaves_like_storage(tmp_path: Path, seed: int) -> None:
    real, _ = reopen(tmp_path / "d", segment_bytes=512)
    mem = MemoryStorage()
    mem.load()
    assert _scenario(real, random.Random(seed)) == _scenario(mem, random.Random(seed))
    real.close()
    mem.close()
    _, loaded = reopen(tmp_path / "d")
    assert mem.crash().load() == loaded


def test_memory_storage_crash_keeps_synced_writes_and_a_prefix_of_the_rest() -> None:
    mem = MemoryStorage()
    mem.load()
    mem.append(ents(1, 3))
    mem.set_hard_state(HardState(1, 1, 2))
    mem.sync()
    mem.append(ents(4, 5))
    mem.set_hard_state(HardState(1, 1, 5))
    assert mem.crash().load() == LoadedState(None, HardState(1, 1, 2), ents(1, 3))
    kept = {len(mem.crash(random.Random(seed)).load().entries) for seed in range(40)}
    assert kept == {3, 5}  # nothing, the append, or the append and the hard state
    with pytest.raises(ValueError, match="gap"):
        mem.append(ents(9, 9))
    mem.save_snapshot(Snapshot(4, 1, b"s"))  # syncs first, like Storage
    assert mem.crash().load() == LoadedState(Snapshot(4, 1, b"s"), HardState(1, 1, 5),
                                              ents(5, 5))
