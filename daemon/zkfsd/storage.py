"""Durable write-ahead log + snapshots for zkfsd's Raft-style replicated log.

Contract: every entry / hard state handed to `append` / `set_hard_state` before a `sync()` that
returned survives kill -9 and power loss; `load()` returns it.  A torn or corrupt tail (what a
crash in the middle of a write leaves behind) is cut off with ONE warning instead of an
exception, because an exception here would crash-loop the server on every restart.

Layout
------
data_dir/VERSION                      format marker ("zkfs-storage 2")
data_dir/snapshot.<index:020d>        [header][u32 crc32 of header][data]
log_dir/log.<first_index:020d>        sequence of records [u32 len][u32 crc32(payload)][payload]

Payloads are msgpack arrays tagged by their first element:
    [1, index, term, data]     log entry
    [2, index]                 "the next entry has this index": discards any entry >= index
                               (Raft conflict truncation) or, after a snapshot installed past
                               the end of the log, marks the gap as intentional
    [3, term, vote, commit]    hard state; the last one in the stream wins

Format 2 (this one) differs from 1 only in what entry data holds: typed transactions of
txns.py (an array led by its own format number) instead of untyped maps. txns.decode still reads
the maps, so a format-1 directory is upgraded in place on load (the marker is rewritten to 2 and
new entries use the new encoding); a zkfsd that knows only format 1 then refuses the directory
with "unsupported storage format" instead of misreading the new entries.

With `preallocate` (the server uses PREALLOCATE, ZooKeeper's default preAllocSize of 64 MiB)
the active segment is preallocated (posix_fallocate, up to that many bytes past its records)
and synced with fdatasync: writes then land in allocated blocks of a file whose size does not
change, so the sync has less metadata to commit. The true
end of a segment is where its records end: the zero-filled rest reads as a zero-length record,
which replay treats like any torn tail (cut off, with the one warning), and a segment that is
rolled over or closed is first trimmed to its records. So only a crash leaves a zero tail, and
only in the newest segment or in a rolled-over one whose trim was not yet synced (whose later
segments then hold nothing a returned sync() vouched for: sync() fsyncs older segments first).

Each segment starts with a hard-state record so that dropping old segments (compaction) never
loses the current vote.  Segment names only have to sort in write order: after a conflict
truncation into an older segment, a new segment is named max(next index, previous name + 1).

Log compaction keeps enough log to fall back to the OLDER of the two retained snapshots, so a
corrupt newest snapshot is recoverable: with snapshots at S1 < S2, segments wholly <= S1 are
dropped.  The in-memory view (first_index / entries) always starts right after the newest one.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from zkfsd.consensus import Entry, HardState, Snapshot
from zkfsd.metrics import Summary

__all__ = [
    "LoadedState",
    "MemoryStorage",
    "Storage",
    "StorageError",
    "FORMAT_VERSION",
    "PREALLOCATE",
]

logger = logging.getLogger("zkfsd.storage")

FORMAT_VERSION = 2
_VERSION_FILE = "VERSION"
_VERSION_TEXT = f"zkfs-storage {FORMAT_VERSION}\n"
# Formats this code reads and upgrades on load (see the module docstring).
_UPGRADABLE = {"zkfs-storage 1\n"}

# How far the server preallocates its active log segment (ZooKeeper's preAllocSize default).
PREALLOCATE = 64 << 20

_REC_HDR = struct.Struct("<II")  # payload length, crc32(payload)
_REC_ENTRY, _REC_TRUNC, _REC_HARD = 1, 2, 3

_SNAP_MAGIC = b"ZKFSSNP1"
_SNAP_HDR = struct.Struct("<8sQQQI")  # magic, index, term, data length, crc32(data)
_SNAP_HCRC = struct.Struct("<I")  # crc32 of the packed _SNAP_HDR
_KEEP_SNAPSHOTS = 2

# fdatasync where the platform has it (the data and the size, not the times).
_datasync = getattr(os, "fdatasync", os.fsync)

_SEG_RE = re.compile(r"^log\.(\d{20})$")
_SNAP_RE = re.compile(r"^snapshot\.(\d{20})$")


@dataclass
class LoadedState:
    snapshot: Snapshot | None
    hard_state: HardState
    entries: list[Entry]  # entries after the snapshot, contiguous indexes


class StorageError(Exception):
    """Unrecoverable storage problem (unknown format, data genuinely missing)."""


class _Corrupt(Exception):
    pass


@dataclass
class _Segment:
    name: int
    path: Path
    size: int = 0
    max_index: int = 0  # highest entry index ever written here (0: none) - decides compaction


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode_record(buf: bytes, off: int) -> tuple[list[Any], int]:
    """Decode the record at `off`; return (payload, next offset) or raise _Corrupt(reason)."""
    remaining = len(buf) - off
    if remaining < _REC_HDR.size:
        raise _Corrupt(f"partial record header ({remaining} bytes)")
    length, crc = _REC_HDR.unpack_from(buf, off)
    # A zero length would make an all-zero tail (preallocated / zero-filled blocks after a crash)
    # look like a valid record, since crc32(b"") == 0.
    if length == 0 or length > remaining - _REC_HDR.size:
        raise _Corrupt(f"bad record length {length} ({remaining - _REC_HDR.size} bytes left)")
    start = off + _REC_HDR.size
    payload = buf[start : start + length]
    if zlib.crc32(payload) != crc:
        raise _Corrupt("checksum mismatch")
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise _Corrupt(f"undecodable payload ({type(exc).__name__})") from None
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
        raise _Corrupt("malformed payload")
    return obj, start + length


def _is_uint(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _pack_snapshot_header(snap: Snapshot) -> bytes:
    hdr = _SNAP_HDR.pack(_SNAP_MAGIC, snap.index, snap.term, len(snap.data), zlib.crc32(snap.data))
    return hdr + _SNAP_HCRC.pack(zlib.crc32(hdr))


def _read_snapshot(path: Path, expected_index: int) -> Snapshot:
    buf = path.read_bytes()
    head = _SNAP_HDR.size + _SNAP_HCRC.size
    if len(buf) < head:
        raise _Corrupt(f"short file ({len(buf)} bytes)")
    (hcrc,) = _SNAP_HCRC.unpack_from(buf, _SNAP_HDR.size)
    if zlib.crc32(buf[: _SNAP_HDR.size]) != hcrc:
        raise _Corrupt("header checksum mismatch")
    magic, index, term, length, dcrc = _SNAP_HDR.unpack_from(buf)
    if magic != _SNAP_MAGIC:
        raise _Corrupt("bad magic")
    if index != expected_index:
        raise _Corrupt(f"index {index} does not match file name")
    data = buf[head:]
    if len(data) != length:
        raise _Corrupt(f"data length {len(data)} != {length}")
    if zlib.crc32(data) != dcrc:
        raise _Corrupt("data checksum mismatch")
    return Snapshot(index=index, term=term, data=data)


class Storage:
    """Write-ahead log + snapshots.  Not thread-safe: callers serialize all methods (sync() may
    run on a worker thread, but never concurrently with another method)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        log_dir: str | os.PathLike[str] | None = None,
        *,
        segment_bytes: int = 64 << 20,
        preallocate: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self.segment_bytes = segment_bytes
        if preallocate < 0:
            raise ValueError("preallocate must not be negative")
        # How far past its records the active segment is allocated (0: no preallocation).
        self.preallocate = min(preallocate, segment_bytes)
        self._allocated = 0  # the active segment's file size, when preallocated past its end
        # One packer for every record (msgpack.packb builds a new one per call); callers
        # serialize all methods, so it is never used by two threads at once.
        self._packer = msgpack.Packer(use_bin_type=True)
        self.fsync_count = 0
        # Durations in ms, for mntr and the Prometheus endpoint (ZooKeeper's fsynctime,
        # snapshottime, dbinittime) and how many entries the last load() replayed.
        self.fsync_ms = Summary()
        self.snapshot_ms = Summary()
        self.load_ms = Summary()
        self.loaded_entries = Summary()
        self._loaded = False
        self._closed = False
        self._snap_index = 0
        self._snap_term = 0
        self._entries: list[Entry] = []  # entries after the newest snapshot
        self._hs = HardState()
        self._segments: list[_Segment] = []
        self._file: BinaryIO | None = None
        # Rolled-over segments whose tail is not fsynced yet; sync() handles them first so
        # that a durable newer segment never follows a torn older one.
        self._unsynced: list[BinaryIO] = []
        self._dir_dirty = False
        # What the replayed stream expects as the next entry index (None: stream has no entry
        # yet, anything goes).  A mismatch on append is encoded as a truncation record.
        self._stream_next: int | None = None

    # ------------------------------------------------------------------ loading

    def load(self) -> LoadedState:
        if self._loaded:
            raise RuntimeError("load() may only be called once")
        started = time.monotonic()
        self._check_version()
        segments = self._list_segments()
        replay = self._replay(segments)
        entries, start, hs, stream_next = replay
        snap = self._choose_snapshot(start)

        base = snap.index if snap is not None else 0
        self._snap_index = base
        self._snap_term = snap.term if snap is not None else 0
        self._entries = [e for e in entries if e.index > base]
        self._hs = hs
        self._stream_next = stream_next
        self._segments = segments
        self._loaded = True
        if segments:
            # Not append mode: writes go to the end of the records, which preallocated space
            # may follow.
            self._file = open(segments[-1].path, "r+b")
            self._file.seek(segments[-1].size)
            if segments[-1].size == 0:
                # Torn before its leading hard-state record: restore it, or compaction of the
                # older segments could later lose the vote.
                self._write([_REC_HARD, hs.term, hs.vote, hs.commit])
        else:
            self._roll(base + 1)
        self.load_ms.add((time.monotonic() - started) * 1000)
        self.loaded_entries.add(len(self._entries))
        return LoadedState(
            snapshot=snap,
            hard_state=HardState(hs.term, hs.vote, hs.commit),
            entries=list(self._entries),
        )

    def _check_version(self) -> None:
        path = self.data_dir / _VERSION_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = None
        if text in _UPGRADABLE:
            logger.info("%s: upgrading storage format %r to %r (old log entries are read as "
                        "they are)", self.data_dir, text.strip(), _VERSION_TEXT.strip())
        if text is None or text in _UPGRADABLE:
            tmp = path.with_name(_VERSION_FILE + ".tmp")
            with open(tmp, "w") as f:
                f.write(_VERSION_TEXT)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.data_dir)
            return
        if text != _VERSION_TEXT:
            # Refusing beats misparsing data written by a different format.
            raise StorageError(f"{path}: unsupported storage format {text.strip()!r} (this "
                               f"zkfsd reads {_VERSION_TEXT.strip()!r} and upgrades "
                               f"{', '.join(repr(t.strip()) for t in sorted(_UPGRADABLE))}; "
                               f"was it written by a newer zkfsd?)")

    def _list_segments(self) -> list[_Segment]:
        segs = []
        for name in os.listdir(self.log_dir):
            m = _SEG_RE.match(name)
            if m:
                segs.append(_Segment(int(m.group(1)), self.log_dir / name))
        segs.sort(key=lambda s: s.name)
        return segs

    def _replay(
        self, segments: list[_Segment]
    ) -> tuple[list[Entry], int | None, HardState, int | None]:
        """Replay the record stream; cut it at the first bad record (repairing the files).

        Returns (entries, start, hard_state, stream_next) where `entries` are contiguous and
        `start` is the lowest index the stream can vouch for (entries below it were compacted
        away or deliberately skipped), None if the stream says nothing about indexes.
        """
        entries: list[Entry] = []
        start: int | None = None
        stream_next: int | None = None
        hs = HardState()
        for i, seg in enumerate(segments):
            buf = seg.path.read_bytes()
            off = 0
            problem: str | None = None
            while off < len(buf):
                try:
                    obj, nxt = _decode_record(buf, off)
                    kind = obj[0]
                    if kind == _REC_ENTRY and len(obj) == 4:
                        _, index, term, data = obj
                        if not _is_uint(index, term) or index == 0 or not isinstance(data, bytes):
                            raise _Corrupt("malformed entry record")
                        if stream_next is not None and index != stream_next:
                            raise _Corrupt(f"entry {index} does not follow {stream_next - 1}")
                        if not entries:
                            start = index
                        entries.append(Entry(index, term, data))
                        stream_next = index + 1
                        seg.max_index = max(seg.max_index, index)
                    elif kind == _REC_TRUNC and len(obj) == 2:
                        index = obj[1]
                        if not _is_uint(index) or index == 0:
                            raise _Corrupt("malformed truncation record")
                        if entries and start is not None and start < index <= entries[-1].index + 1:
                            del entries[index - start :]
                        else:
                            # Truncating below what we hold, or skipping past the end (snapshot
                            # installed beyond the log): nothing below `index` is usable.
                            entries.clear()
                        if not entries:
                            start = index
                        stream_next = index
                    elif kind == _REC_HARD and len(obj) == 4:
                        if not _is_uint(*obj[1:]):
                            raise _Corrupt("malformed hard-state record")
                        hs = HardState(obj[1], obj[2], obj[3])
                    else:
                        raise _Corrupt(f"unknown record type {kind}")
                except _Corrupt as exc:
                    problem = str(exc)
                    break
                off = nxt
            seg.size = off
            if problem is not None:
                self._repair_tail(segments, i, off, len(buf), problem)
                break
        return entries, start, hs, stream_next

    def _repair_tail(
        self, segments: list[_Segment], i: int, off: int, file_len: int, problem: str
    ) -> None:
        seg = segments[i]
        later = segments[i + 1 :]
        # Newest first, so a crash during repair still leaves a clean prefix of the stream.
        for s in reversed(later):
            os.unlink(s.path)
        with open(seg.path, "r+b") as f:
            f.truncate(off)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.log_dir)
        del segments[i + 1 :]
        extra = f"; removed {len(later)} later segment(s)" if later else ""
        logger.warning(
            "log %s: %s at offset %d; truncated torn/corrupt tail of %d bytes%s",
            seg.path,
            problem,
            off,
            file_len - off,
            extra,
        )

    def _snapshot_files(self) -> list[tuple[int, Path]]:
        """Snapshot files newest first; leftover temp files from a crashed save are removed."""
        snaps = []
        for name in os.listdir(self.data_dir):
            m = _SNAP_RE.match(name)
            if m:
                snaps.append((int(m.group(1)), self.data_dir / name))
            elif name.startswith("snapshot.") and name.endswith(".tmp"):
                os.unlink(self.data_dir / name)
        snaps.sort(reverse=True)
        return snaps

    def _choose_snapshot(self, start: int | None) -> Snapshot | None:
        for index, path in self._snapshot_files():
            try:
                snap = _read_snapshot(path, index)
            except (_Corrupt, OSError) as exc:
                # Keep the file for post-mortem but take it out of rotation, so retention never
                # deletes a good older snapshot in favour of this one.
                bad = path.with_name(path.name + ".corrupt")
                os.replace(path, bad)
                _fsync_dir(self.data_dir)
                logger.warning(
                    "snapshot %s is corrupt (%s); moved to %s, falling back to an older one",
                    path,
                    exc,
                    bad.name,
                )
                continue
            if start is not None and start > snap.index + 1:
                raise StorageError(
                    f"snapshot {snap.index} is the newest usable one but the log starts at "
                    f"{start}: entries {snap.index + 1}..{start - 1} are lost"
                )
            return snap
        if start is not None and start > 1:
            raise StorageError(f"no usable snapshot and the log starts at {start}")
        return None

    # ------------------------------------------------------------------ writing

    def _check_open(self) -> None:
        if not self._loaded:
            raise RuntimeError("call load() first")
        if self._closed:
            raise RuntimeError("storage is closed")

    def _write(self, obj: list[Any]) -> None:
        assert self._file is not None
        payload = self._packer.pack(obj)
        rec = _REC_HDR.pack(len(payload), zlib.crc32(payload)) + payload
        self._file.write(rec)
        self._segments[-1].size += len(rec)

    def _roll(self, next_index: int) -> None:
        prev = self._segments[-1] if self._segments else None
        name = next_index if prev is None else max(next_index, prev.name + 1)
        if self._file is not None:
            self._trim()
            self._unsynced.append(self._file)
        path = self.log_dir / f"log.{name:020d}"
        self._file = open(path, "xb")
        self._allocated = 0
        self._segments.append(_Segment(name, path))
        self._dir_dirty = True
        hs = self._hs
        self._write([_REC_HARD, hs.term, hs.vote, hs.commit])

    def _trim(self) -> None:
        """Flush the active segment and cut its preallocated space (before it is rolled over
        or closed: only the newest segment may end in zeros after a clean stop)."""
        assert self._file is not None
        self._file.flush()
        if self._allocated > self._segments[-1].size:
            os.ftruncate(self._file.fileno(), self._segments[-1].size)
        self._allocated = 0

    def _reserve(self, nbytes: int) -> None:
        """Make sure the active segment is allocated for `nbytes` more (an estimate: writing
        past the allocation is still correct, only the file grows as it did without it)."""
        if not self.preallocate:
            return
        seg = self._segments[-1]
        end = seg.size + nbytes
        if end <= self._allocated:
            return
        assert self._file is not None
        target = max(end, min(seg.size + self.preallocate, self.segment_bytes + nbytes))
        try:
            os.posix_fallocate(self._file.fileno(), 0, target)
        except OSError as exc:
            logger.info("log %s: no preallocation (%s)", seg.path, exc)
            self.preallocate = 0
            return
        self._allocated = target

    def _maybe_roll(self, next_index: int) -> None:
        if self._segments[-1].size >= self.segment_bytes:
            self._roll(next_index)

    def append(self, entries: list[Entry]) -> None:
        self._check_open()
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after last index {self.last_index()}")
        if first <= self._snap_index:
            raise ValueError(f"entry {first} is covered by snapshot {self._snap_index}")
        for i, e in enumerate(entries):
            if e.index != first + i:
                raise ValueError("entries must have contiguous indexes")
            if not isinstance(e.data, bytes) or not _is_uint(e.term):
                raise TypeError("Entry.data must be bytes and Entry.term a non-negative int")
        del self._entries[first - self._snap_index - 1 :]
        self._maybe_roll(first)
        if self._stream_next is not None and self._stream_next != first:
            self._write([_REC_TRUNC, first])
        # Record header, msgpack framing of [1, index, term, data]: at most 32 bytes.
        self._reserve(sum(len(e.data) for e in entries) + 32 * len(entries))
        # The hot path of every write: the records of a batch are framed here (one packer, no
        # call per record) and written together; a segment that fills up mid-batch is rolled
        # over between two records as before.
        pack, header, crc32 = self._packer.pack, _REC_HDR.pack, zlib.crc32
        limit = self.segment_bytes
        seg = self._segments[-1]
        records: list[bytes] = []
        for e in entries:
            if seg.size >= limit:
                assert self._file is not None
                self._file.write(b"".join(records))
                records.clear()
                seg.max_index = max(seg.max_index, e.index - 1)
                self._roll(e.index)
                seg = self._segments[-1]
            payload = pack([_REC_ENTRY, e.index, e.term, e.data])
            record = header(len(payload), crc32(payload)) + payload
            records.append(record)
            seg.size += len(record)
        assert self._file is not None
        self._file.write(b"".join(records))
        seg.max_index = max(seg.max_index, entries[-1].index)
        self._entries.extend(entries)
        self._stream_next = entries[-1].index + 1

    def set_hard_state(self, hs: HardState) -> None:
        self._check_open()
        if not _is_uint(hs.term, hs.vote, hs.commit):
            raise TypeError("HardState fields must be non-negative ints")
        new = HardState(hs.term, hs.vote, hs.commit)  # copy: the caller may mutate theirs
        if new == self._hs:
            return
        self._hs = new
        self._write([_REC_HARD, new.term, new.vote, new.commit])

    def sync(self) -> None:
        self._check_open()
        assert self._file is not None
        started = time.monotonic()
        while self._unsynced:
            f = self._unsynced[0]
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._unsynced.pop(0)
        self._file.flush()
        _datasync(self._file.fileno())
        if self._dir_dirty:
            _fsync_dir(self.log_dir)
            self._dir_dirty = False
        self.fsync_count += 1
        self.fsync_ms.add((time.monotonic() - started) * 1000)

    def save_snapshot(self, snap: Snapshot) -> None:
        self._check_open()
        if not _is_uint(snap.index, snap.term) or snap.index == 0:
            raise ValueError("snapshot index must be >= 1")
        if snap.index < self._snap_index:
            raise ValueError(f"snapshot {snap.index} is older than snapshot {self._snap_index}")
        if snap.index == self._snap_index and snap.term == self._snap_term:
            return
        local = self.term_at(snap.index)
        if local is not None and local != snap.term:
            # Our suffix conflicts with the snapshot (Raft: discard the log).  Make the discard
            # durable first: a crash then leaves a shorter log, never snapshot + foreign suffix.
            del self._entries[:]
            self._write([_REC_TRUNC, snap.index + 1])
            self._stream_next = snap.index + 1
        elif local is not None:
            del self._entries[: snap.index - self._snap_index]
        else:
            # Snapshot past our log end: nothing kept; the next append writes a truncation
            # record that marks the gap.
            del self._entries[:]
        self.sync()

        started = time.monotonic()
        path = self.data_dir / f"snapshot.{snap.index:020d}"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_pack_snapshot_header(snap))
            f.write(snap.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.data_dir)
        self.snapshot_ms.add((time.monotonic() - started) * 1000)
        self._snap_index, self._snap_term = snap.index, snap.term
        self._compact()

    def _compact(self) -> None:
        snaps = self._snapshot_files()
        for _, old in snaps[_KEEP_SNAPSHOTS:]:
            os.unlink(old)
        kept = [i for i, _ in snaps[:_KEEP_SNAPSHOTS]]
        if len(snaps) > _KEEP_SNAPSHOTS:
            _fsync_dir(self.data_dir)
        # Start a fresh segment once the active one holds nothing past the newest snapshot, so
        # it becomes droppable by a later compaction.
        active = self._segments[-1]
        if 0 < active.max_index <= self._snap_index:
            self._roll(self.last_index() + 1)
            self.sync()
        if len(kept) < _KEEP_SNAPSHOTS:
            return  # keep the whole log: it is the fallback if the only snapshot rots
        compact_to = min(kept)
        dropped = 0
        for seg in self._segments[:-1]:
            if seg.max_index > compact_to:
                break
            os.unlink(seg.path)  # oldest first: a crash leaves a valid suffix of the stream
            dropped += 1
        if dropped:
            del self._segments[:dropped]
            _fsync_dir(self.log_dir)

    def close(self) -> None:
        if self._closed or not self._loaded:
            self._closed = True
            return
        self.sync()
        assert self._file is not None
        if self._allocated > self._segments[-1].size:
            self._trim()
            os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._closed = True

    # ------------------------------------------------------------------ in-memory view

    def first_index(self) -> int:
        return self._snap_index + 1

    def last_index(self) -> int:
        return self._snap_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        if index == self._snap_index:
            return self._snap_term
        if self._snap_index < index <= self.last_index():
            return self._entries[index - self._snap_index - 1].term
        return None

    def entries(self, lo: int, hi: int) -> list[Entry]:
        if lo < self.first_index() or hi > self.last_index() + 1 or lo > hi:
            raise IndexError(
                f"entries[{lo}, {hi}) outside [{self.first_index()}, {self.last_index() + 1})"
            )
        base = self._snap_index + 1
        return self._entries[lo - base : hi - base]


class MemoryStorage:
    """Storage's interface and crash semantics, in memory: for the test harnesses (and anything
    else that runs the consensus core without a disk).

    Like Storage, `append` and `set_hard_state` change the in-memory view at once but become
    durable only at `sync()`; `save_snapshot` syncs first and is durable when it returns.
    `crash(rng)` returns what a restart would find: the durable state plus a random prefix of
    the writes since the last sync (a torn tail), as a new, not yet loaded MemoryStorage.
    """

    def __init__(self, snapshot: Snapshot | None = None, hard_state: HardState | None = None,
                 entries: list[Entry] | tuple[Entry, ...] = ()) -> None:
        self.durable = LoadedState(snapshot, hard_state or HardState(),
                                   [e for e in entries if e.index > (snapshot.index
                                                                     if snapshot else 0)])
        self._pending: list[list[Entry] | HardState] = []  # writes since the last sync
        self._view = LoadedState(self.durable.snapshot, self.durable.hard_state,
                                 list(self.durable.entries))
        self._loaded = False
        self.fsync_count = 0

    # -- Storage's interface -------------------------------------------------------------------
    def load(self) -> LoadedState:
        if self._loaded:
            raise RuntimeError("load() may only be called once")
        self._loaded = True
        d = self.durable
        hs = d.hard_state
        return LoadedState(d.snapshot, HardState(hs.term, hs.vote, hs.commit), list(d.entries))

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        _append_to(self._view, entries)
        self._pending.append(list(entries))

    def set_hard_state(self, hs: HardState) -> None:
        new = HardState(hs.term, hs.vote, hs.commit)
        if new != self._view.hard_state:
            self._view.hard_state = new
            self._pending.append(new)

    def sync(self) -> None:
        self._apply_durably(self._pending)
        self._pending = []
        self.fsync_count += 1

    def save_snapshot(self, snap: Snapshot) -> None:
        base = self.first_index() - 1
        if snap.index < base:
            raise ValueError(f"snapshot {snap.index} is older than snapshot {base}")
        if snap.index == base and self._view.snapshot is not None \
                and self._view.snapshot.term == snap.term:
            return
        self.sync()
        for state in (self.durable, self._view):
            keep = state.entries if _term_in(state, snap.index) == snap.term else []
            state.entries = [e for e in keep if e.index > snap.index]
            state.snapshot = snap

    def close(self) -> None:
        self.sync()

    # -- the in-memory view, as Storage's ------------------------------------------------------
    def first_index(self) -> int:
        snap = self._view.snapshot
        return (snap.index if snap is not None else 0) + 1

    def last_index(self) -> int:
        return self.first_index() - 1 + len(self._view.entries)

    def term_at(self, index: int) -> int | None:
        return _term_in(self._view, index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        if lo < self.first_index() or hi > self.last_index() + 1 or lo > hi:
            raise IndexError(f"entries[{lo}, {hi}) outside [{self.first_index()}, "
                             f"{self.last_index() + 1})")
        base = self.first_index()
        return self._view.entries[lo - base: hi - base]

    # -- crashes ---------------------------------------------------------------------------------
    def durable_base(self) -> int:
        """The index of the durable snapshot (0: none)."""
        snap = self.durable.snapshot
        return snap.index if snap is not None else 0

    def durable_term_at(self, index: int) -> int | None:
        """The term of entry `index` as a restart would find it (None: not there)."""
        return _term_in(self.durable, index)

    def crash(self, rng: Any = None) -> MemoryStorage:
        """What a restart finds: the durable state plus a random prefix (rng.randint) of the
        unsynced writes, none without an rng."""
        cut = rng.randint(0, len(self._pending)) if rng is not None and self._pending else 0
        d = self.durable
        found = LoadedState(d.snapshot, d.hard_state, list(d.entries))
        _apply_writes(found, self._pending[:cut])
        hs = found.hard_state
        return MemoryStorage(found.snapshot, HardState(hs.term, hs.vote, hs.commit),
                             found.entries)

    def _apply_durably(self, writes: list[list[Entry] | HardState]) -> None:
        _apply_writes(self.durable, writes)


def _apply_writes(state: LoadedState, writes: list[list[Entry] | HardState]) -> None:
    for w in writes:
        if isinstance(w, HardState):
            state.hard_state = w
        else:
            _append_to(state, w)


def _term_in(state: LoadedState, index: int) -> int | None:
    base = state.snapshot.index if state.snapshot is not None else 0
    if index == base:
        return state.snapshot.term if state.snapshot is not None else 0
    if base < index <= base + len(state.entries):
        return state.entries[index - base - 1].term
    return None


def _append_to(state: LoadedState, entries: list[Entry]) -> None:
    """Storage.append's rules: no gap, nothing under the snapshot, a conflicting suffix goes."""
    base = state.snapshot.index if state.snapshot is not None else 0
    first = entries[0].index
    if first > base + len(state.entries) + 1:
        raise ValueError(f"gap: appending {first} after last index {base + len(state.entries)}")
    if first <= base:
        raise ValueError(f"entry {first} is covered by snapshot {base}")
    for i, e in enumerate(entries):
        if e.index != first + i:
            raise ValueError("entries must have contiguous indexes")
    del state.entries[first - base - 1:]
    state.entries.extend(entries)
