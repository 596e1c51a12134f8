"""Queue discipline: turn a backlog of block requests into as few system calls as possible.

This is pure planning (no I/O). A driver takes its whole backlog in arrival order and asks
``plan`` for a list of runs; it then executes the runs in list order. The rules:

* Runs are built from *consecutive* requests of the same kind, so a read never passes a
  write it follows (it sees that write's data) and a write never passes a read it follows.
* A flush is a barrier: nothing before it moves after it, nothing after it moves before it.
  Consecutive flushes collapse into one flush run (one fdatasync answers all of them).
* Inside a run of consecutive reads, order is free (reads commute): they are sorted by
  offset and byte-contiguous neighbours become one read.
* Inside a run of consecutive writes, the writes are sorted by offset only when no two of
  them overlap (then they commute); with an overlap, arrival order is kept so the later
  write wins. Byte-contiguous neighbours become one vectored write.
* Discards merge like writes (they are writes of zeros).
* A run never exceeds ``max_bytes`` or ``max_segments`` (IOV_MAX) buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chanos.drivers.protocol import Discard, Flush, Read, Write

IOV_MAX = 1024
MAX_RUN_BYTES = 16 << 20


@dataclass(slots=True)
class ReadRun:
    offset: int
    length: int
    # (index of the request in the batch, its length); contiguous from ``offset`` in order
    members: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class WriteRun:
    offset: int
    length: int
    # (index of the request in the batch, its data); contiguous from ``offset`` in order
    members: list[tuple[int, memoryview]] = field(default_factory=list)


@dataclass(slots=True)
class DiscardRun:
    offset: int
    length: int
    members: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class FlushRun:
    members: list[int] = field(default_factory=list)


Run = ReadRun | WriteRun | DiscardRun | FlushRun


def _overlapping(items: list[tuple[int, int, int]]) -> bool:
    """True if any two (offset, length, _) ranges overlap."""
    ordered = sorted(items)
    end = -1
    for off, length, _ in ordered:
        if off < end:
            return True
        end = max(end, off + length)
    return False


def plan(
    batch: Sequence[tuple[int, Read | Write | Flush | Discard]],
    max_bytes: int = MAX_RUN_BYTES,
    max_segments: int = IOV_MAX,
) -> list[Run]:
    """Plan the execution of ``batch`` ((index, request) pairs in arrival order)."""
    runs: list[Run] = []
    i = 0
    n = len(batch)
    while i < n:
        kind = type(batch[i][1])
        j = i + 1
        while j < n and type(batch[j][1]) is kind:
            j += 1
        group = batch[i:j]
        i = j
        match group[0][1]:
            case Flush():
                runs.append(FlushRun([idx for idx, _ in group]))
            case Read():
                reads = sorted(((m.offset, m.length, idx) for idx, m in group))
                runs.extend(_coalesce_ranges(reads, ReadRun, max_bytes, max_segments))
            case Write():
                writes = [(m.offset, len(m.data), idx) for idx, m in group]
                if not _overlapping(writes):
                    writes.sort()
                data = {idx: m.data for idx, m in group}
                runs.extend(_coalesce_writes(writes, data, max_bytes, max_segments))
            case Discard():
                discards = [(m.offset, m.length, idx) for idx, m in group]
                if not _overlapping(discards):
                    discards.sort()
                # A discard is one fallocate whatever its members: no segment bound.
                runs.extend(_coalesce_ranges(discards, DiscardRun, max_bytes, len(discards)))
            case other:
                raise TypeError(f"not an I/O request: {other!r}")
    return runs


def _coalesce_ranges(
    ranges: list[tuple[int, int, int]],
    run_type: type[ReadRun] | type[DiscardRun],
    max_bytes: int,
    max_segments: int,
) -> list[ReadRun] | list[DiscardRun]:
    """Merge sorted (offset, length, index) ranges into byte-contiguous runs of ``run_type``."""
    out: list = []
    cur = None
    for off, length, idx in ranges:
        if (
            cur is not None
            and cur.offset + cur.length == off
            and cur.length + length <= max_bytes
            and len(cur.members) < max_segments
        ):
            cur.length += length
            cur.members.append((idx, length))
        else:
            cur = run_type(off, length, [(idx, length)])
            out.append(cur)
    return out


def _coalesce_writes(
    writes: list[tuple[int, int, int]],
    data: dict[int, bytes | bytearray | memoryview],
    max_bytes: int,
    max_segments: int,
) -> list[WriteRun]:
    out: list[WriteRun] = []
    cur: WriteRun | None = None
    for off, length, idx in writes:
        view = data[idx]
        if not isinstance(view, memoryview):
            view = memoryview(view)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if (
            cur is not None
            and cur.offset + cur.length == off
            and cur.length + length <= max_bytes
            and len(cur.members) < max_segments
        ):
            cur.length += length
            cur.members.append((idx, view))
        else:
            cur = WriteRun(off, length, [(idx, view)])
            out.append(cur)
    return out
