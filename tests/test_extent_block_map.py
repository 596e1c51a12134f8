"""BlockMap (indirect-block files) over in-memory fakes: mapping through direct, single,
double and triple indirect blocks; truncate at every level freeing exactly the right data
and indirect blocks; conversion to an extent tree on write, and its ENOSPC rollback."""

from __future__ import annotations

import errno
import random
import struct

import pytest
from chanos.fs.block_map import BlockMap
from chanos.fs.extent_tree import Run
from chanos.fs.file_data import FileData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extent_fakes import BitmapAllocator, MemStore

BS = 64  # 16 pointers a block: every level is reached with small numbers
K = BS // 4


class Builder:
    """Writes a block map by hand, allocating every block from the fake allocator."""

    def __init__(self, nblocks: int = 1 << 14) -> None:
        self.store = MemStore(BS, nblocks)
        self.alloc = BitmapAllocator(nblocks)
        self.root = [0] * 15
        self.ind: dict[int, list[int]] = {}
        self.data: dict[int, int] = {}

    def _take(self) -> int:
        b = self.alloc.used.find(0, 1)
        self.alloc.used[b] = 1
        return b

    def _slot(self, ptrs: list[int], i: int) -> int:
        if not ptrs[i]:
            ptrs[i] = self._take()
            self.ind[ptrs[i]] = [0] * K
        return ptrs[i]

    def map(self, lblk: int) -> int:
        p = self._take()
        self.data[lblk] = p
        self.store.blocks[p] = bytes([lblk % 251]) * BS
        if lblk < 12:
            self.root[lblk] = p
            return p
        rel = lblk - 12
        for n, depth in enumerate((1, 2, 3)):
            span = K**depth
            if rel < span:
                blk = self._slot(self.root, 12 + n)
                for d in range(depth, 1, -1):
                    blk = self._slot(self.ind[blk], rel // K ** (d - 1) % K)
                self.ind[blk][rel % K] = p
                return p
            rel -= span
        raise AssertionError("too far")

    def finish(self) -> bytes:
        for b, ptrs in self.ind.items():
            self.store.blocks[b] = struct.pack(f"<{K}I", *ptrs)
        return struct.pack("<15I", *self.root)


SINGLE = 12
DOUBLE = 12 + K
TRIPLE = 12 + K + K * K


def sample() -> Builder:
    b = Builder()
    for lblk in [0, 1, 2, 5, 11, SINGLE, SINGLE + 3, DOUBLE, DOUBLE + 40, TRIPLE + 1000]:
        b.map(lblk)
    return b


async def test_map_walks_every_level() -> None:
    b = sample()
    bm = BlockMap(b.finish(), b.store, b.alloc, BS)
    for lblk, p in b.data.items():
        assert await bm.lookup(lblk) == p
    assert await bm.lookup(3) is None
    assert await bm.lookup(TRIPLE + 999) is None
    runs = await bm.map(0, 6)
    assert runs[0] == Run(0, b.data[0], 3)  # blocks 0-2 were allocated contiguously
    assert runs[1] == Run(3, None, 2)
    assert runs[2] == Run(5, b.data[5], 1)
    assert sorted(await bm.indirect_blocks()) == sorted(b.ind)
    # a map over the whole space only visits the indirect blocks that exist
    mapped = [r for r in await bm.map(0, bm.limit) if r.physical is not None]
    assert sum(r.length for r in mapped) == len(b.data)


@pytest.mark.parametrize("cut", [0, 3, 12, SINGLE + 1, DOUBLE, DOUBLE + 1, DOUBLE + 41, TRIPLE])
async def test_truncate_frees_data_and_empty_indirect_blocks(cut: int) -> None:
    b = sample()
    bm = BlockMap(b.finish(), b.store, b.alloc, BS)
    freed = await bm.remove(cut)
    await bm.flush()
    keep = {lb: p for lb, p in b.data.items() if lb < cut}
    assert freed == len(b.data) - len(keep)
    # a fresh map over the written-back blocks sees exactly the kept blocks
    bm2 = BlockMap(bm.i_block, b.store, b.alloc, BS)
    got = {}
    for r in await bm2.map(0, bm2.limit):
        if r.physical is not None:
            for i in range(r.length):
                got[r.logical + i] = r.physical + i
    assert got == keep
    still = set(keep.values()) | set(await bm2.indirect_blocks())
    assert b.alloc.used_blocks() == still
    # every indirect block left holds at least one pointer
    for blk in await bm2.indirect_blocks():
        assert any(struct.unpack(f"<{K}I", b.store.blocks[blk]))


async def test_bad_pointer_is_eio() -> None:
    b = sample()
    bm = BlockMap(b.finish(), b.store, b.alloc, BS, blocks_count=b.store.nblocks)
    root = list(struct.unpack("<15I", bm.i_block))
    root[4] = 1 << 30
    bad = BlockMap(struct.pack("<15I", *root), b.store, b.alloc, BS, blocks_count=1 << 14)
    with pytest.raises(OSError) as e:
        await bad.map(0, 10)
    assert e.value.errno == errno.EIO


def file_data(b: Builder, i_block: bytes) -> FileData:
    held = len(b.data) + len(b.ind)
    return FileData(
        i_block,
        extents=False,
        store=b.store,
        allocator=b.alloc,
        block_size=BS,
        fs_blocks=held,
        goal=1,
        extent_feature=True,
    )


async def test_write_converts_to_extents() -> None:
    b = sample()
    fd = file_data(b, b.finish())
    before = await fd.read(0, (TRIPLE + 1001) * BS)
    await fd.write(4 * BS, b"new data")
    assert fd.converted and fd.uses_extents and fd.inode_dirty
    after = await fd.read(0, (TRIPLE + 1001) * BS)
    assert after[: 4 * BS] == before[: 4 * BS]
    assert after[4 * BS : 4 * BS + 8] == b"new data"
    assert after[4 * BS + 8 :] == before[4 * BS + 8 :]
    # indirect blocks freed; the tree needs blocks of its own (11 extents, 4 a node)
    tree = fd.mapping
    tree_blocks = set(await tree.tree_blocks())
    data = {p for _s, p0, n, _u in await tree.extents() for p in range(p0, p0 + n)}
    assert b.alloc.used_blocks() == data | tree_blocks
    assert fd.fs_blocks == len(data) + len(tree_blocks)
    await tree.check()


async def test_conversion_enospc_keeps_the_block_map() -> None:
    b = sample()
    fd = file_data(b, b.finish())
    before = await fd.read(0, (TRIPLE + 1001) * BS)
    used = b.alloc.used_blocks()
    b.alloc.used[:] = b"\x01" * len(b.alloc.used)
    for _blk in used:  # only the file's own blocks stay allocated... and nothing is free
        pass
    with pytest.raises(OSError) as e:
        await fd.write(4 * BS, b"x")
    assert e.value.errno == errno.ENOSPC
    assert not fd.converted and not fd.uses_extents
    assert await fd.read(0, (TRIPLE + 1001) * BS) == before


async def held(bm: BlockMap) -> dict[int, int]:
    out = {}
    for r in await bm.map(0, bm.limit):
        if r.physical is not None:
            for i in range(r.length):
                out[r.logical + i] = r.physical + i
    return out


def plain_file(b: Builder) -> FileData:
    return FileData(
        struct.pack("<15I", *([0] * 15)),
        extents=False,
        store=b.store,
        allocator=b.alloc,
        block_size=BS,
        fs_blocks=0,
        goal=100,
        extent_feature=False,
    )


async def test_in_place_writes_reach_every_level() -> None:
    b = Builder()
    fd = plain_file(b)
    data = random.Random(1).randbytes(10 * BS)  # the four pieces do not overlap
    for off in (0, SINGLE * BS - 100, DOUBLE * BS + 5, (TRIPLE + 300) * BS + 63):
        assert await fd.write(off, data) == len(data)
    assert not fd.converted and not fd.uses_extents
    await fd.flush()
    # a fresh map over the written-back indirect blocks sees the data
    fresh = FileData(
        fd.i_block,
        extents=False,
        store=b.store,
        allocator=b.alloc,
        block_size=BS,
        fs_blocks=fd.fs_blocks,
        extent_feature=False,
    )
    for off in (0, SINGLE * BS - 100, DOUBLE * BS + 5, (TRIPLE + 300) * BS + 63):
        assert await fresh.read(off, len(data)) == data
    assert await fresh.read(22 * BS, 10) == bytes(10)  # a hole between two pieces
    bm = fresh.mapping
    assert isinstance(bm, BlockMap)
    used = set((await held(bm)).values()) | set(await bm.indirect_blocks())
    assert b.alloc.used_blocks() == used and fd.fs_blocks == len(used)
    # sequential data stays physically contiguous apart from the indirect blocks
    runs = [r for r in await bm.map(0, 10) if r.physical is not None]
    assert len(runs) == 1


async def test_in_place_insert_enospc_changes_nothing() -> None:
    b = Builder(64)
    bm = BlockMap(struct.pack("<15I", *([0] * 15)), b.store, b.alloc, BS)
    await bm.insert(0, 10, 12)
    b.alloc.used[:] = b"\x01" * len(b.alloc.used)
    with pytest.raises(OSError) as e:
        await bm.insert(DOUBLE, 20, 1)  # needs two indirect blocks
    assert e.value.errno == errno.ENOSPC
    assert [r for r in await bm.map(0, bm.limit) if r.physical] == [Run(0, 10, 12)]
    with pytest.raises(OSError) as e:
        await bm.insert(5, 30, 1)
    assert e.value.errno == errno.EEXIST
    fd = plain_file(b)
    with pytest.raises(OSError) as e:
        await fd.write(bm.limit * BS - 1, b"xy")  # past the triple indirect block's reach
    assert e.value.errno == errno.EFBIG


op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 4300 * BS), st.integers(1, 60 * BS)),
    st.tuples(st.just("truncate"), st.integers(0, 4300 * BS), st.just(0)),
    st.tuples(st.just("punch"), st.integers(0, 4300 * BS), st.integers(1, 500 * BS)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=15), max_run=st.integers(1, 5))
async def test_random_in_place_operations_match_model(ops, max_run: int) -> None:
    b = Builder(1 << 15)
    b.alloc.max_run = max_run
    fd = plain_file(b)
    model = bytearray()
    for step, (kind, a, n) in enumerate(ops):
        size = len(model)
        if kind == "write":
            data = random.Random(step).randbytes(n)
            assert await fd.write(a, data, size=size) == n
            if a + n > size:
                model.extend(bytes(a + n - size))
            model[a : a + n] = data
        elif kind == "truncate":
            await fd.truncate(size, a)
            model = model[:a] if a < size else model + bytes(a - size)
        else:
            a, n = min(a, size), min(n, max(size - a, 0))
            await fd.punch_hole(a, n)
            model[a : a + n] = bytes(n)
        bm = fd.mapping
        assert isinstance(bm, BlockMap)
        mapped = await held(bm)
        ind = await bm.indirect_blocks()
        used = set(mapped.values()) | set(ind)
        assert len(used) == len(mapped) + len(ind)
        assert b.alloc.used_blocks() == used and fd.fs_blocks == len(used)
        assert not mapped or max(mapped) < -(-len(model) // BS)
        assert await fd.read(0, len(model)) == bytes(model)
        await fd.flush()
        for blk in ind:  # no indirect block is left without a pointer
            assert any(struct.unpack(f"<{K}I", b.store.blocks[blk]))
    await fd.truncate(len(model), 0)
    assert b.alloc.used_blocks() == set() and fd.fs_blocks == 0
