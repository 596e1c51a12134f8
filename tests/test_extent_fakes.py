"""In-memory fakes of the BlockStore and BlockAllocator the extent layer consumes.

``MemStore`` is a dict of blocks (unwritten blocks read as a fill pattern, so a read of a
block nobody wrote is visible in test failures) that counts device requests.
``BitmapAllocator`` hands out contiguous runs near a goal and tracks every block: a double
free, a free of a never-allocated block or a leak at the end of a test fails it.
The tests at the bottom check the fakes themselves.
"""

from __future__ import annotations

import errno

import pytest

GARBAGE = 0xA5


class MemStore:
    def __init__(self, block_size: int, nblocks: int) -> None:
        self.block_size = block_size
        self.nblocks = nblocks
        self.blocks: dict[int, bytes] = {}
        self.reads = 0
        self.writes = 0
        self.read_blocks_total = 0

    async def read_blocks(self, start: int, count: int) -> memoryview:
        assert count >= 1 and start > 0 and start + count <= self.nblocks, (start, count)
        self.reads += 1
        self.read_blocks_total += count
        junk = bytes([GARBAGE]) * self.block_size
        # A memoryview, as the block drivers answer: callers must not rely on bytes methods.
        return memoryview(b"".join(self.blocks.get(b, junk) for b in range(start, start + count)))

    async def write_blocks(self, start: int, data) -> None:
        data = bytes(data)
        bs = self.block_size
        assert len(data) % bs == 0 and data, len(data)
        count = len(data) // bs
        assert start > 0 and start + count <= self.nblocks, (start, count)
        self.writes += 1
        for i in range(count):
            self.blocks[start + i] = data[i * bs : (i + 1) * bs]


class BitmapAllocator:
    """First-fit-from-goal allocator over blocks [first, nblocks)."""

    def __init__(self, nblocks: int, first: int = 1) -> None:
        self.nblocks = nblocks
        self.first = first
        self.used = bytearray(nblocks)
        for b in range(first):
            self.used[b] = 1
        self.reserved = first
        self.allocs = 0
        self.frees = 0
        self.max_run: int | None = None  # cap run length to force fragmentation

    @property
    def in_use(self) -> int:
        return sum(self.used) - self.reserved

    def used_blocks(self) -> set[int]:
        return {b for b in range(self.first, self.nblocks) if self.used[b]}

    async def allocate(self, goal: int, count: int) -> tuple[int, int]:
        assert count >= 1
        if self.max_run is not None:
            count = min(count, self.max_run)
        goal = goal if self.first <= goal < self.nblocks else self.first
        start = self.used.find(0, goal)
        if start < 0:
            start = self.used.find(0, self.first)
        if start < 0:
            raise OSError(errno.ENOSPC, "no space")
        n = 1
        while n < count and start + n < self.nblocks and not self.used[start + n]:
            n += 1
        self.used[start : start + n] = b"\x01" * n
        self.allocs += 1
        return start, n

    async def free(self, start: int, count: int) -> None:
        assert count >= 1
        for b in range(start, start + count):
            assert self.first <= b < self.nblocks, f"free of block {b} out of range"
            assert self.used[b], f"double free / free of unallocated block {b}"
            self.used[b] = 0
        self.frees += 1


async def test_allocator_detects_double_free() -> None:
    a = BitmapAllocator(64)
    s, n = await a.allocate(10, 4)
    assert (s, n) == (10, 4)
    await a.free(s, n)
    with pytest.raises(AssertionError):
        await a.free(s, 1)


async def test_allocator_runs_and_enospc() -> None:
    a = BitmapAllocator(16)
    assert await a.allocate(5, 100) == (5, 11)
    assert await a.allocate(5, 100) == (1, 4)
    with pytest.raises(OSError) as e:
        await a.allocate(1, 1)
    assert e.value.errno == errno.ENOSPC
    assert a.in_use == 15


async def test_store_round_trip() -> None:
    st = MemStore(64, 10)
    await st.write_blocks(2, b"x" * 128)
    assert bytes(await st.read_blocks(2, 3)) == b"x" * 128 + bytes([GARBAGE]) * 64
    assert st.reads == 1 and st.writes == 1
