"""Write logs and crash images: what a device could hold after a power cut.

A ``WriteLog`` is the base image of a device plus every write and flush it acknowledged,
in order. ``image_at(n)`` rebuilds the device as it was after the first ``n`` entries;
``crash_image(n, ...)`` rebuilds what a power cut right after entry ``n`` may have left:
everything before the last flush inside the prefix is durable, while the writes after it
were only in the volatile write cache and each survives or not (seeded), one of them
possibly torn at sector granularity.

The crash model (``choose_crash``, ``surviving_writes``) is shared with
``FaultInjectionDriver.Crash``: unflushed writes are kept with probability ``keep``;
``tear`` picks one unflushed write and keeps a random non-empty proper subset of its
512-byte sectors (sectors counted on absolute device offsets, as a disk would), so a
multi-sector write lands partially.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

SECTOR = 512


@dataclass(frozen=True, slots=True)
class LoggedWrite:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LoggedFlush:
    pass


LogEntry = LoggedWrite | LoggedFlush


@dataclass(frozen=True, slots=True)
class CrashOutcome:
    """Which unflushed writes reached the medium in a simulated crash."""

    kept: tuple[int, ...]  # positions (in the unflushed list) applied whole
    dropped: tuple[int, ...]  # positions lost entirely
    torn: int | None = None  # position applied in part
    torn_sectors: tuple[int, ...] = ()  # absolute sector numbers of the torn write that landed


def _sectors(offset: int, length: int) -> list[tuple[int, int, int]]:
    """(sector number, start, end) byte pieces of [offset, offset+length) cut at sectors."""
    out = []
    pos, end = offset, offset + length
    while pos < end:
        sector = pos // SECTOR
        stop = min(end, (sector + 1) * SECTOR)
        out.append((sector, pos, stop))
        pos = stop
    return out


def choose_crash(
    writes: Sequence[LoggedWrite], keep: float = 0.0, seed: int = 0, tear: bool = False
) -> CrashOutcome:
    """Decide (deterministically from ``seed``) the fate of each unflushed write."""
    rng = random.Random(seed)
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(writes)):
        (kept if rng.random() < keep else dropped).append(i)
    torn: int | None = None
    torn_sectors: tuple[int, ...] = ()
    if tear:
        # Only a write that spans two or more sectors can tear.
        candidates = [
            i
            for i in range(len(writes))
            if len(_sectors(writes[i].offset, len(writes[i].data))) > 1
        ]
        if candidates:
            torn = rng.choice(candidates)
            pieces = _sectors(writes[torn].offset, len(writes[torn].data))
            k = rng.randrange(1, len(pieces))
            torn_sectors = tuple(sorted(p[0] for p in rng.sample(pieces, k)))
            if torn in kept:
                kept.remove(torn)
            else:
                dropped.remove(torn)
    return CrashOutcome(tuple(kept), tuple(dropped), torn, torn_sectors)


def surviving_writes(writes: Sequence[LoggedWrite], outcome: CrashOutcome) -> list[LoggedWrite]:
    """The parts of ``writes`` that reach the medium under ``outcome``, in their original
    order: the kept writes whole, the torn one as its landed sector pieces."""
    kept = set(outcome.kept)
    torn_sectors = set(outcome.torn_sectors)
    out: list[LoggedWrite] = []
    for i, w in enumerate(writes):
        if i in kept:
            out.append(w)
        elif i == outcome.torn:
            for sector, start, stop in _sectors(w.offset, len(w.data)):
                if sector in torn_sectors:
                    out.append(LoggedWrite(start, w.data[start - w.offset : stop - w.offset]))
    return out


def apply_crash(image: bytearray, writes: Sequence[LoggedWrite], outcome: CrashOutcome) -> None:
    """Apply the surviving parts of ``writes`` to ``image`` in their original order."""
    for w in surviving_writes(writes, outcome):
        image[w.offset : w.offset + len(w.data)] = w.data


@dataclass(slots=True)
class WriteLog:
    """A base image and the acknowledged writes and flushes that followed, in order."""

    base: bytes
    entries: list[LogEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def flush_points(self) -> list[int]:
        """Prefix lengths that end just after a flush."""
        return [i + 1 for i, e in enumerate(self.entries) if isinstance(e, LoggedFlush)]

    def image_at(self, n: int | None = None) -> bytearray:
        """The device contents after the first ``n`` entries (all of them by default)."""
        n = len(self.entries) if n is None else n
        if not 0 <= n <= len(self.entries):
            raise ValueError(f"prefix {n} outside log of {len(self.entries)} entries")
        image = bytearray(self.base)
        for e in self.entries[:n]:
            if isinstance(e, LoggedWrite):
                image[e.offset : e.offset + len(e.data)] = e.data
        return image

    def unflushed_at(self, n: int) -> tuple[int, list[LoggedWrite]]:
        """(durable prefix length, writes after it) for a crash right after entry ``n``."""
        durable = 0
        for i, e in enumerate(self.entries[:n]):
            if isinstance(e, LoggedFlush):
                durable = i + 1
        pending = [e for e in self.entries[durable:n] if isinstance(e, LoggedWrite)]
        return durable, pending

    def crash_image(
        self, n: int, keep: float = 0.0, seed: int = 0, tear: bool = False
    ) -> tuple[bytearray, CrashOutcome]:
        """What a power cut right after entry ``n`` may leave on the medium."""
        durable, pending = self.unflushed_at(n)
        image = self.image_at(durable)
        outcome = choose_crash(pending, keep, seed, tear)
        apply_crash(image, pending, outcome)
        return image, outcome

    def crash_points(self) -> Iterator[int]:
        """Every prefix length at which a crash could happen (0 .. len)."""
        return iter(range(len(self.entries) + 1))
