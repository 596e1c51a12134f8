"""LookupCounts: the host kernel's references on each inode, about a byte per inode.

The vnode table counts every reference the host kernel holds (each entry reply and
readdirplus entry takes one, a FORGET gives some back). The host kernel keeps whatever
it has looked up until memory pressure or a forget of the whole cache, so the counts
grow with its caches: after 100,000 creates in one directory it held 100,000 inodes. A
dict of inode number to count cost about 80 bytes each (the slot and the number); here
the counts of 1,024 consecutive inode numbers share one ``bytearray`` (a byte each,
made when the first of them is counted, dropped when the last one's count is gone). A
count of 255 or more, which only repeated lookups of one inode reach, goes to a dict.
Inode numbers are allocated near their directories, so the counts of a tree fill few
chunks densely.
"""

from __future__ import annotations

_SHIFT = 10
_CHUNK = 1 << _SHIFT
_LOW = _CHUNK - 1
_BIG = 255  # the byte of a count kept in the overflow dict


class LookupCounts:
    """Inode number -> count (> 0); absent numbers count 0."""

    __slots__ = ("_big", "_chunks", "_used")

    def __init__(self) -> None:
        self._chunks: dict[int, bytearray] = {}
        self._used: dict[int, int] = {}  # chunk -> how many of its numbers count > 0
        self._big: dict[int, int] = {}

    def __len__(self) -> int:
        """Inodes with a count."""
        return sum(self._used.values())

    def __contains__(self, ino: int) -> bool:
        chunk = self._chunks.get(ino >> _SHIFT)
        return chunk is not None and chunk[ino & _LOW] != 0

    def get(self, ino: int) -> int:
        chunk = self._chunks.get(ino >> _SHIFT)
        if chunk is None:
            return 0
        v = chunk[ino & _LOW]
        return self._big[ino] if v == _BIG else v

    def add(self, ino: int, n: int = 1) -> None:
        self.set(ino, self.get(ino) + n)

    def set(self, ino: int, count: int) -> None:
        """Make ``ino``'s count ``count`` (0 forgets it)."""
        key = ino >> _SHIFT
        chunk = self._chunks.get(key)
        if chunk is None:
            if count <= 0:
                return
            chunk = self._chunks[key] = bytearray(_CHUNK)
            self._used[key] = 0
        i = ino & _LOW
        old = chunk[i]
        if old == _BIG:
            del self._big[ino]
        if count <= 0:
            if old:
                chunk[i] = 0
                self._used[key] -= 1
                if not self._used[key]:
                    del self._chunks[key], self._used[key]
            return
        if not old:
            self._used[key] += 1
        if count >= _BIG:
            chunk[i] = _BIG
            self._big[ino] = count
        else:
            chunk[i] = count
