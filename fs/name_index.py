"""NameIndex: a directory's entry names -> the entries' positions, in two flat arrays.

A directory vnode finds an entry by name for every lookup, create, unlink and rename.
A dict of names cost about 220 bytes per entry (the name, a tuple of where it is, the
slot): 22 MiB of the daemon's memory for one directory of 100,000 files. This index
keeps only 32 bits of each name's hash and its entry's stable position (see
``chanos.fs.directory``; records are 4-byte aligned, so a quarter of it fits 32 bits
for directories up to 16 GiB) in two ``array`` s of 4-byte items, open addressing with
linear probing, at most 70% full: about 15 bytes per entry. The name itself stays in the
directory block: ``positions`` answers the entries whose names hash alike, and the
directory reads their names back (a block it may have to fetch) to find the one that
matches, since two names may share a hash.
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Iterator

_EMPTY = 0xFFFF_FFFF
_GONE = 0xFFFF_FFFE  # a removed entry's slot: a probe goes on past it
_MASK32 = 0xFFFF_FFFF
_MIN_CAPACITY = 8


class NameIndex:
    """Names -> positions."""

    __slots__ = ("_gone", "_hashes", "_mask", "_pos", "_used")

    def __init__(self) -> None:
        self._reset(_MIN_CAPACITY)

    def _reset(self, capacity: int) -> None:
        self._hashes = array("I", bytes(4 * capacity))
        self._pos = array("I", [_EMPTY]) * capacity  # position // 4
        self._mask = capacity - 1
        self._used = 0
        self._gone = 0

    def __len__(self) -> int:
        return self._used

    def clear(self) -> None:
        self._reset(_MIN_CAPACITY)

    def positions(self, name: bytes) -> Iterator[int]:
        """The positions of the entries whose names hash as ``name`` does, in probe order
        (usually none or one). The caller reads each one's name to find ``name``; it must
        not change the index while it iterates."""
        h = hash(name) & _MASK32
        hashes, pos, mask = self._hashes, self._pos, self._mask
        i = h & mask
        while True:
            p = pos[i]
            if p == _EMPTY:
                return
            if p < _GONE and hashes[i] == h:
                yield p << 2
            i = (i + 1) & mask

    def _slot(self, h: int, position: int) -> int:
        """The slot of the entry with hash ``h`` at ``position``; -1 if there is none."""
        hashes, pos, mask = self._hashes, self._pos, self._mask
        quarter = position >> 2
        i = h & mask
        while True:
            p = pos[i]
            if p == _EMPTY:
                return -1
            if p == quarter and hashes[i] == h:
                return i
            i = (i + 1) & mask

    def add(self, name: bytes, position: int) -> None:
        """Index ``name`` (not in the index) at ``position`` (a multiple of 4)."""
        if position >> 2 >= _GONE:
            raise OSError(errno.EFBIG, "directory too large to index")
        if (self._used + self._gone + 1) * 10 > (self._mask + 1) * 7:
            self._resize(max(_MIN_CAPACITY, _pow2_above(2 * (self._used + 1))))
        self._place(hash(name) & _MASK32, position >> 2)
        self._used += 1

    def _place(self, h: int, quarter: int) -> None:
        pos, mask = self._pos, self._mask
        i = h & mask
        while pos[i] < _GONE:
            i = (i + 1) & mask
        if pos[i] == _GONE:
            self._gone -= 1
        self._hashes[i] = h
        pos[i] = quarter

    def remove(self, name: bytes, position: int) -> None:
        """Forget entry ``name``, indexed at ``position``."""
        i = self._slot(hash(name) & _MASK32, position)
        if i < 0:
            raise KeyError(name)
        self._pos[i] = _GONE
        self._used -= 1
        self._gone += 1
        capacity = self._mask + 1
        if capacity > _MIN_CAPACITY and self._used * 8 < capacity:
            self._resize(max(_MIN_CAPACITY, _pow2_above(2 * self._used)))

    def _resize(self, capacity: int) -> None:
        # Straight from the old arrays: a list of the live pairs would hold two Python
        # ints and a tuple per entry, several times the arrays, at the peak.
        hashes, pos, used = self._hashes, self._pos, self._used
        self._reset(capacity)
        for h, p in zip(hashes, pos, strict=True):
            if p < _GONE:
                self._place(h, p)
        self._used = used


def _pow2_above(n: int) -> int:
    """The smallest power of two > ``n``."""
    return 1 << n.bit_length()
