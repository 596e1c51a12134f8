"""Block-group state (chanos.fs.block_group.BlockGroup) on real mkfs.ext4 images.

The group layouts and expected counts come from dumpe2fs, not from chanos's own codecs, so
these tests check the bitmap logic against e2fsprogs directly.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
import trio
from chanos.fs.block_group import BlockGroup, GroupLayout, _run_starts
from hypothesis import given, settings
from hypothesis import strategies as st


class FileDev:
    """The BlockDevice client surface (read/write at byte offsets) over an image file."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.writes: list[tuple[int, int]] = []
        self.reads: list[tuple[int, int]] = []

    async def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return os.pread(self.fd, length, offset)

    async def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, len(data)))
        os.pwrite(self.fd, data, offset)

    def close(self) -> None:
        os.close(self.fd)


def dumpe2fs(image: Path) -> tuple[dict[str, str], list[dict]]:
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True).stdout
    head, _, groups_text = out.partition("\n\n\n")
    sb = {}
    for line in head.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            sb[k.strip()] = v.strip()
    groups = []
    for m in re.finditer(
        r"Group (\d+): \(Blocks (\d+)-(\d+)\).*?Block bitmap at (\d+).*?Inode bitmap at (\d+)"
        r".*?Inode table at (\d+)-(\d+).*?\n\s+(\d+) free blocks, (\d+) free inodes, "
        r"(\d+) directories",
        groups_text,
        re.S,
    ):
        g = [int(x) for x in m.groups()]
        groups.append(
            dict(
                index=g[0],
                first=g[1],
                last=g[2],
                bbitmap=g[3],
                ibitmap=g[4],
                itable=g[5],
                free_blocks=g[7],
                free_inodes=g[8],
                dirs=g[9],
            )
        )
    return sb, groups


def layout_of(sb: dict[str, str], g: dict) -> GroupLayout:
    return GroupLayout(
        index=g["index"],
        first_block=g["first"],
        nblocks=g["last"] - g["first"] + 1,
        block_bitmap=g["bbitmap"],
        inode_bitmap=g["ibitmap"],
        inode_table=g["itable"],
        block_size=int(sb["Block size"]),
        inodes_per_group=int(sb["Inodes per group"]),
        inode_size=int(sb["Inode size"]),
        first_ino=int(sb["First inode"]),
    )


@pytest.fixture
def img1k(ext4_image) -> Path:
    return ext4_image("64M", 1024)


async def open_group(image: Path, index: int, **kw) -> tuple[BlockGroup, FileDev, dict]:
    sb, groups = dumpe2fs(image)
    dev = FileDev(image)
    g = BlockGroup(layout_of(sb, groups[index]), dev, used_dirs=groups[index]["dirs"], **kw)
    await g.load()
    return g, dev, groups[index]


def test_run_starts() -> None:
    free = 0b0111_0011_1110
    assert _run_starts(free, 1) == free
    # bits 1..5 and 8..10 are free
    assert _run_starts(free, 3) == (1 << 1) | (1 << 2) | (1 << 3) | (1 << 8)
    assert _run_starts(free, 4) == (1 << 1) | (1 << 2)
    assert _run_starts(free, 5) == 1 << 1
    assert _run_starts(free, 6) == 0


async def test_load_counts_match_dumpe2fs(img1k: Path) -> None:
    sb, groups = dumpe2fs(img1k)
    assert len(groups) == 8
    dev = FileDev(img1k)
    for gd in groups:
        g = BlockGroup(layout_of(sb, gd), dev, used_dirs=gd["dirs"])
        await g.load()
        assert (g.free_blocks, g.free_inodes, g.used_dirs) == (
            gd["free_blocks"],
            gd["free_inodes"],
            gd["dirs"],
        )
    dev.close()


async def test_inode_alloc_free(img1k: Path) -> None:
    g, dev, gd = await open_group(img1k, 0, write_through=True)
    reported = []
    g._on_counts = lambda *counts: reported.append(counts)
    ino = await g.alloc_inode(is_dir=True)
    assert ino == 12  # first non-reserved inode; 11 is lost+found
    assert g.free_inodes == gd["free_inodes"] - 1 and g.used_dirs == gd["dirs"] + 1
    assert reported[-1] == (0, g.free_blocks, g.free_inodes, g.used_dirs)
    ino2 = await g.alloc_inode(is_dir=False)
    assert ino2 == 13
    await g.free_inode(ino, is_dir=True)
    assert g.used_dirs == gd["dirs"]
    # Reuses the lowest free inode.
    assert await g.alloc_inode(is_dir=False) == 12
    # Double free is an fs error, and changes nothing.
    await g.free_inode(13, is_dir=False)
    before = (g.free_inodes, g.used_dirs, bytes(g._imap))
    with pytest.raises(OSError) as ei:
        await g.free_inode(13, is_dir=False)
    assert ei.value.errno == errno.EUCLEAN
    with pytest.raises(OSError) as ei:
        await g.free_inode(2, is_dir=True)  # the root directory: reserved
    assert ei.value.errno == errno.EUCLEAN
    assert (g.free_inodes, g.used_dirs, g._imap) == before
    with pytest.raises(OSError) as ei:
        await g.free_inode(5000, is_dir=False)  # not in group 0
    assert ei.value.errno == errno.EINVAL
    # Written through: a fresh load sees the same bitmap.
    g2, _, _ = await open_group(img1k, 0)
    assert g2._imap == g._imap and g2.free_inodes == g.free_inodes
    dev.close()


async def test_inode_full_group_returns_none(img1k: Path) -> None:
    g, dev, gd = await open_group(img1k, 3, write_through=False)
    got = [await g.alloc_inode(False) for _ in range(gd["free_inodes"])]
    assert got == list(range(6145, 8193))
    assert await g.alloc_inode(False) is None
    assert g.free_inodes == 0
    dev.close()


async def test_block_alloc_goal_and_runs(img1k: Path) -> None:
    g, dev, gd = await open_group(img1k, 1)  # free 8451-16384
    assert await g.alloc_blocks(9000, 10) == (9000, 10)
    # Goal taken: first run holding all 10 blocks after the goal.
    assert await g.alloc_blocks(9005, 10) == (9010, 10)
    # Goal free but the run there is short: the goal run is extended (contiguity first).
    assert await g.alloc_blocks(8995, 10) == (8995, 5)
    # Goal outside the group: start of the group; first free run.
    assert await g.alloc_blocks(1, 3) == (8451, 3)
    assert g.free_blocks == gd["free_blocks"] - 28
    await g.free_blocks_run(9003, 4)
    assert g.free_blocks == gd["free_blocks"] - 24
    # A hole of 4 at 9003: a request for 8 at 9001 (used) skips it for a whole run...
    assert await g.alloc_blocks(9001, 8) == (9020, 8)
    # ...and when only short runs are left, the longest one is returned.
    start, n = await g.alloc_blocks(9001, 20000)
    assert n == 16384 - 9028 + 1 and start == 9028
    assert await g.alloc_blocks(9001, 10) == (8454, 10)
    dev.close()


async def test_block_free_errors_change_nothing(img1k: Path) -> None:
    g, dev, _ = await open_group(img1k, 1)
    start, n = await g.alloc_blocks(10000, 4)
    await g.free_blocks_run(start, n)
    before = (g.free_blocks, bytes(g._bmap))
    for s, c in [(start, n), (start - 1, 2), (8192, 1), (16380, 10), (3, 1), (start, 0)]:
        with pytest.raises(OSError) as ei:
            await g.free_blocks_run(s, c)
        assert ei.value.errno == errno.EUCLEAN
    assert (g.free_blocks, g._bmap) == before
    dev.close()


async def test_short_last_group_keeps_padding(img1k: Path) -> None:
    g, dev, gd = await open_group(img1k, 7, write_through=False)
    total = 0
    while (r := await g.alloc_blocks(0, 1000)) is not None:
        total += r[1]
        assert r[0] + r[1] - 1 <= 65535
    assert total == gd["free_blocks"] and g.free_blocks == 0
    await g.sync()
    raw = await dev.read(g.layout.block_bitmap * 1024, 1024)
    assert raw == b"\xff" * 1024  # every block used, and the padding bit (65536) too
    for s in range(57603, 65536, 1000):
        await g.free_blocks_run(s, min(1000, 65536 - s))
    await g.sync()
    g2, _, _ = await open_group(img1k, 7)
    assert g2.free_blocks == gd["free_blocks"]
    raw = await dev.read(g.layout.block_bitmap * 1024, 1024)
    assert raw[1023] & 0x80  # bit 8191 = block 65536, past the end: still set
    dev.close()


async def test_protected_blocks_never_allocated_or_freed(img1k: Path) -> None:
    sb, groups = dumpe2fs(img1k)
    lay = layout_of(sb, groups[1])
    lay = GroupLayout(**{**{f: getattr(lay, f) for f in lay.__slots__}, "protected": ((9000, 5),)})
    dev = FileDev(img1k)
    g = BlockGroup(lay, dev, used_dirs=0)
    await g.load()
    assert await g.alloc_blocks(8998, 100) == (8998, 2)
    assert await g.alloc_blocks(9000, 100) == (9005, 100)
    with pytest.raises(OSError):
        await g.free_blocks_run(8999, 2)
    dev.close()


async def test_inode_records_read_modify_write(ext4_image) -> None:
    img = ext4_image("64M", 4096)
    g, dev, _ = await open_group(img, 0)
    root = await g.read_inode(2)
    assert len(root) == 256
    assert int.from_bytes(root[0:2], "little") & 0o170000 == 0o040000  # a directory
    rec = bytes(range(256))
    dev.writes.clear()
    await g.write_inode(17, rec)
    await g.write_inode(18, b"\x01\x02")
    assert await g.read_inode(17) == rec  # served from the dirty cached block
    # Written back: nothing reaches the device before Sync, then one write of the block.
    assert dev.writes == []
    g2, _, _ = await open_group(img, 0)
    assert await g2.read_inode(17) != rec
    await g.sync()
    itable_block = g.layout.inode_table + 16 * 256 // 4096
    assert dev.writes == [(itable_block * 4096, 4096)]
    dev.writes.clear()
    await g.sync()
    assert dev.writes == []  # clean again: nothing to write
    # Neighbours in the same inode-table block are untouched.
    g2, _, _ = await open_group(img, 0)
    assert await g2.read_inode(17) == rec
    assert (await g2.read_inode(18))[:2] == b"\x01\x02"
    assert await g2.read_inode(2) == root
    with pytest.raises(OSError) as ei:
        await g.write_inode(19, b"x" * 257)
    assert ei.value.errno == errno.EINVAL
    ro, _, _ = await open_group(img, 0, read_only=True)
    with pytest.raises(OSError) as ei:
        await ro.write_inode(17, rec)
    assert ei.value.errno == errno.EROFS
    dev.close()


async def test_new_inode_alone_in_its_table_block_is_written_without_a_read(
    ext4_image,
) -> None:
    img = ext4_image("64M", 4096)
    g, dev, _ = await open_group(img, 0)
    # Inodes 33-48 share one 4 KiB table block; all are free on a new image. Old bytes
    # stand in the block on disk (a deleted inode's record, say).
    itable_block = g.layout.inode_table + 32 * 256 // 4096
    os.pwrite(dev.fd, b"\x5a" * 4096, itable_block * 4096)
    ino = await g.alloc_inode(False)
    while ino < 33:
        ino = await g.alloc_inode(False)
    assert ino == 33
    dev.reads.clear()
    rec = bytes(range(256))
    await g.write_inode(33, rec)
    assert dev.reads == []  # nothing in the block is in use: not read, zeros instead
    assert await g.read_inode(34) == bytes(256)
    await g.sync()
    g2, _, _ = await open_group(img, 0)
    assert await g2.read_inode(33) == rec and await g2.read_inode(48) == bytes(256)
    # A neighbour in use: the block is read, and the neighbour's record kept.
    assert await g2.alloc_inode(False) == 34
    g2.drop_cache()
    g2.device.reads.clear()
    await g2.write_inode(34, b"\x01" * 256)
    assert g2.device.reads == [(itable_block * 4096, 4096)]
    assert await g2.read_inode(33) == rec
    # A partial record keeps the rest of its own bytes: read, even with no neighbour.
    g3, dev3, _ = await open_group(img, 0)
    dev3.reads.clear()
    await g3.write_inode(50, b"\x02\x03")
    assert dev3.reads == [((itable_block + 1) * 4096, 4096)]
    dev3.close()
    dev.close()


async def test_inode_writes_through_or_back_on_eviction(ext4_image) -> None:
    img = ext4_image("64M", 1024)
    # A cache of two 1 KiB blocks (4 inodes each): the third block evicts the first.
    g, dev, _ = await open_group(img, 0, itable_cache_bytes=2 * 1024)
    blk = [g.layout.inode_table + i for i in range(3)]
    dev.writes.clear()
    await g.write_inode(13, b"\xaa" * 256)  # block 3 of the table (inodes 13-16)
    await g.write_inode(17, b"\xbb" * 256)  # block 4
    await g.read_inode(5)  # block 1: evicts block 3, which is dirty, so it is written
    assert dev.writes == [((blk[0] + 3) * 1024, 1024)]
    g2, _, _ = await open_group(img, 0)
    assert await g2.read_inode(13) == b"\xaa" * 256
    assert await g2.read_inode(17) != b"\xbb" * 256  # still only in g's cache
    # A clean block is evicted without a write.
    dev.writes.clear()
    await g.read_inode(9)  # block 2: evicts block 4 (dirty) -> written
    await g.read_inode(1)  # block 0: evicts block 1 (clean) -> no write
    assert dev.writes == [((blk[0] + 4) * 1024, 1024)]
    # With write_through every record is on the device before write_inode returns.
    gt, devt, _ = await open_group(img, 0, write_through=True)
    devt.writes.clear()
    await gt.write_inode(21, b"\xcc" * 256)
    assert devt.writes == [((blk[0] + 5) * 1024, 1024)]
    dev.close()
    devt.close()


async def test_write_back_reaches_the_device_on_sync_only(img1k: Path) -> None:
    g, dev, gd = await open_group(img1k, 4)
    dev.writes.clear()
    ino = await g.alloc_inode(is_dir=False)
    run = await g.alloc_blocks(32769, 100)
    assert dev.writes == []  # nothing written yet
    fresh, _, _ = await open_group(img1k, 4)
    assert fresh.free_blocks == gd["free_blocks"] and not fresh.inode_in_use(ino)
    counts = await g.sync()
    assert (counts.free_blocks, counts.free_inodes) == (gd["free_blocks"] - 100, 2047)
    assert len(dev.writes) == 2  # one block bitmap, one inode bitmap
    fresh, _, _ = await open_group(img1k, 4)
    assert fresh.inode_in_use(ino) and fresh.block_in_use(run[0] + 99)
    assert not fresh.block_in_use(run[0] + 100)
    dev.writes.clear()
    await g.sync()
    assert dev.writes == []  # clean: nothing to write
    dev.close()


class MemIO:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data


def _small_layout(first: int, nblocks: int, protected: tuple[tuple[int, int], ...]) -> GroupLayout:
    """A 1 KiB-block group of ``nblocks`` blocks and 64 inodes over a ``MemIO``."""
    return GroupLayout(
        index=0,
        first_block=first,
        nblocks=nblocks,
        block_bitmap=1,
        inode_bitmap=2,
        inode_table=3,
        block_size=1024,
        inodes_per_group=64,
        inode_size=128,
        first_ino=11,
        protected=protected,
    )


def _reference_choice(free: set[int], nblocks: int, goal: int, count: int) -> tuple[int, int]:
    """The allocation policy, spelled out block by block."""

    def run_at(s: int) -> int:
        n = 0
        while s + n < nblocks and s + n in free and n < count:
            n += 1
        return n

    if goal in free:
        return goal, run_at(goal)
    order = list(range(goal, nblocks)) + list(range(goal))
    for s in order:
        if run_at(s) == count:
            return s, count
    best = max(run_at(s) for s in free)
    for s in order:
        if run_at(s) == best:
            return s, best
    raise AssertionError


@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 999), st.integers(1, 120)), max_size=60),
    used=st.sets(st.integers(0, 999), max_size=300),
)
@settings(max_examples=150, deadline=None)
def test_block_allocation_matches_reference_model(ops, used) -> None:
    """Random allocations and frees on a short group with protected metadata: the runs
    handed out follow the policy exactly, never overlap, and the counts stay exact."""
    bs, first, nblocks = 1024, 5000, 1000
    protected = ((5010, 3), (5500, 20))
    prot = {b - first for s, n in protected for b in range(s, s + n)}
    used = used - prot
    lay = _small_layout(first, nblocks, protected)
    io = MemIO(16 * bs)
    bitmap = 0
    for b in used | prot:
        bitmap |= 1 << b
    bitmap |= ((1 << (8 * bs)) - 1) ^ ((1 << nblocks) - 1)  # padding past the end
    io.data[bs : 2 * bs] = bitmap.to_bytes(bs, "little")
    io.data[2 * bs : 3 * bs] = b"\xff" * bs

    async def run() -> None:
        g = BlockGroup(lay, io, used_dirs=0)
        await g.load()
        free = set(range(nblocks)) - used - prot
        assert g.free_blocks == nblocks - len(used | prot)
        mine: list[tuple[int, int]] = []
        for is_alloc, goal, count in ops:
            if is_alloc or not mine:
                got = await g.alloc_blocks(first + goal, count)
                if not free:
                    assert got is None
                    continue
                assert got is not None
                assert (got[0] - first, got[1]) == _reference_choice(free, nblocks, goal, count)
                blocks = set(range(got[0] - first, got[0] - first + got[1]))
                assert blocks <= free
                free -= blocks
                mine.append(got)
            else:
                start, n = mine.pop(goal % len(mine))
                await g.free_blocks_run(start, n)
                free |= set(range(start - first, start - first + n))
            assert g.free_blocks == len(free)
        await g.sync()
        on_disk = int.from_bytes(io.data[bs : 2 * bs], "little")
        assert {b for b in range(nblocks) if not (on_disk >> b) & 1} == free

    trio.run(run)


@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(1, 12)), max_size=150),
    used=st.sets(st.integers(0, 299), max_size=120),
)
@settings(max_examples=100, deadline=None)
def test_allocation_from_the_group_start_matches_reference_model(ops, used) -> None:
    """Allocations aimed at the group's start (a new file's first blocks, the lowest free
    inode) go through the first-free hints: random frees below the hint and allocations
    that fill the group keep both bitmaps exactly as the policy says."""
    bs, first, nblocks = 1024, 5000, 300
    lay = _small_layout(first, nblocks, ((first, 9),))
    prot = set(range(9))
    used = used - prot
    io = MemIO(16 * bs)
    bitmap = sum(1 << b for b in used | prot) | ((1 << (8 * bs)) - 1) ^ ((1 << nblocks) - 1)
    io.data[bs : 2 * bs] = bitmap.to_bytes(bs, "little")
    io.data[2 * bs : 3 * bs] = (((1 << (8 * bs)) - 1) ^ ((1 << 64) - 1) | 0x3FF).to_bytes(
        bs, "little"
    )

    async def run() -> None:
        g = BlockGroup(lay, io, used_dirs=0)
        await g.load()
        free = set(range(nblocks)) - used - prot
        free_inos = set(range(11, 65))
        mine: list[tuple[int, int]] = []
        inos: list[int] = []
        for is_alloc, goal, count in ops:
            if is_alloc or not mine:
                got = await g.alloc_blocks(first + goal, count)
                ino = await g.alloc_inode(is_dir=False)
                assert ino == (min(free_inos) if free_inos else None)
                if ino is not None:
                    free_inos.discard(ino)
                    inos.append(ino)
                if not free:
                    assert got is None
                    continue
                assert got is not None
                assert (got[0] - first, got[1]) == _reference_choice(free, nblocks, goal, count)
                free -= set(range(got[0] - first, got[0] - first + got[1]))
                mine.append(got)
            else:
                start, n = mine.pop(count % len(mine))
                await g.free_blocks_run(start, n)
                free |= set(range(start - first, start - first + n))
                if inos:
                    ino = inos.pop(count % len(inos))
                    await g.free_inode(ino, is_dir=False)
                    free_inos.add(ino)
            assert (g.free_blocks, g.free_inodes) == (len(free), len(free_inos))
        await g.sync()
        on_disk = int.from_bytes(io.data[bs : 2 * bs], "little")
        assert {b for b in range(nblocks) if not (on_disk >> b) & 1} == free
        on_disk = int.from_bytes(io.data[2 * bs : 3 * bs], "little")
        assert {i + 1 for i in range(64) if not (on_disk >> i) & 1} == free_inos

    trio.run(run)
