"""FileData over in-memory fakes: byte-level reads and writes, holes, truncate, punch,
unwritten extents, files over 4 GiB, request counts, and random operations checked against
a bytearray model with exact block accounting."""

from __future__ import annotations

import errno
import itertools
import random

import pytest
from chanos.fs.extent_tree import ExtentTree
from chanos.fs.file_data import FileData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extent_fakes import GARBAGE, BitmapAllocator, MemStore


def make(block_size: int = 1024, nblocks: int = 1 << 16, goal: int = 100):
    store = MemStore(block_size, nblocks)
    alloc = BitmapAllocator(nblocks)
    fd = FileData(
        ExtentTree.empty_root(),
        extents=True,
        store=store,
        allocator=alloc,
        block_size=block_size,
        fs_blocks=0,
        goal=goal,
    )
    return store, alloc, fd


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def held_blocks(fd: FileData) -> set[int]:
    tree = fd.mapping
    assert isinstance(tree, ExtentTree)
    out = set(await tree.tree_blocks())
    for s, p, n, _u in await tree.extents():
        out.update(range(p, p + n))
        del s
    return out


async def test_sequential_write_is_one_allocation_and_one_request() -> None:
    store, alloc, fd = make()
    data = pattern(1 << 20, 1)
    assert await fd.write(0, data) == len(data)
    assert alloc.allocs == 1 and store.writes == 1
    assert await fd.mapping.extents() == [(0, 100, 1024, False)]
    assert fd.fs_blocks == 1024 and fd.i_blocks == 2048
    store.reads = 0
    assert await fd.read(0, len(data)) == data
    assert store.reads == 1
    assert await fd.read(1000, 5000) == data[1000:6000]


async def test_appends_continue_physically() -> None:
    _store, _alloc, fd = make()
    size = 0
    chunks = [pattern(3000, i) for i in range(10)]
    for c in chunks:
        size += await fd.write(size, c, size=size)
    assert await fd.read(0, size) == b"".join(chunks)
    ext = await fd.mapping.extents()
    assert len(ext) == 1 and ext[0][2] == -(-size // 1024)


async def test_partial_block_write_reads_only_edges() -> None:
    store, _alloc, fd = make()
    base = pattern(8192, 2)
    await fd.write(0, base)
    store.reads = store.writes = 0
    await fd.write(100, b"x" * 5000)
    # two edge blocks read, one contiguous write
    assert store.reads == 2 and store.writes == 1
    expect = bytearray(base)
    expect[100:5100] = b"x" * 5000
    assert await fd.read(0, 8192) == bytes(expect)


async def test_new_partial_blocks_are_zero_filled() -> None:
    store, _alloc, fd = make()
    await fd.write(1500, b"abc")
    (blk,) = await held_blocks(fd)
    raw = store.blocks[blk]
    assert raw == bytes(476) + b"abc" + bytes(545)
    assert store.reads == 0  # nothing to read-modify-write in a new block


async def test_holes_read_as_zeros_and_cost_no_io() -> None:
    store, _alloc, fd = make()
    await fd.write(10 * 1024, b"A" * 1024)
    await fd.write(30 * 1024 + 10, b"B" * 10)
    store.reads = 0
    out = await fd.read(0, 31 * 1024)
    assert out[: 10 * 1024] == bytes(10 * 1024)
    assert out[10 * 1024 : 11 * 1024] == b"A" * 1024
    assert out[11 * 1024 : 30 * 1024 + 10] == bytes(19 * 1024 + 10)
    assert out[30 * 1024 + 10 : 30 * 1024 + 20] == b"B" * 10
    assert store.reads == 2
    assert fd.fs_blocks == 2


async def test_truncate_down_frees_and_zeroes_tail() -> None:
    store, alloc, fd = make()
    data = pattern(10000, 3)
    await fd.write(0, data)
    await fd.truncate(10000, 2500)
    assert alloc.in_use == 3 and fd.fs_blocks == 3
    (last,) = [p for s, p, n, _ in await fd.mapping.extents() for p in [p + 2]]
    assert store.blocks[last] == data[2048:2500] + bytes(1024 - 452)
    # growing again exposes zeros, not the old bytes
    await fd.truncate(2500, 10000)
    assert alloc.in_use == 3
    assert await fd.read(0, 10000) == data[:2500] + bytes(7500)
    await fd.truncate(10000, 0)
    assert alloc.in_use == 0 and fd.fs_blocks == 0
    assert fd.mapping.i_block == ExtentTree.empty_root()


async def test_write_past_eof_zeroes_old_tail() -> None:
    store, _alloc, fd = make()
    await fd.write(0, b"x" * 100)
    # somebody else left garbage past EOF in the last block
    (blk,) = await held_blocks(fd)
    store.blocks[blk] = b"x" * 100 + b"G" * 924
    await fd.write(5000, b"y", size=100)
    out = await fd.read(0, 5001)
    assert out == b"x" * 100 + bytes(4900) + b"y"


async def test_write_past_eof_in_the_same_block_zeroes_the_gap() -> None:
    store, _alloc, fd = make()
    await fd.write(0, b"x" * 100)
    (blk,) = await held_blocks(fd)
    store.blocks[blk] = b"x" * 100 + b"G" * 924  # another writer left bytes past EOF
    await fd.write(500, b"y", size=100)
    assert await fd.read(0, 501) == b"x" * 100 + bytes(400) + b"y"
    assert store.blocks[blk][501:] == bytes(523)  # and past the new EOF: zeros again


async def test_punch_hole_frees_whole_blocks_and_zeroes_edges() -> None:
    _store, _alloc, fd = make()
    data = pattern(20 * 1024, 4)
    await fd.write(0, data)
    await fd.punch_hole(1000, 10 * 1024)
    # blocks 1..9 freed entirely; block 0 tail and block 10 head zeroed
    assert fd.fs_blocks == 11
    expect = bytearray(data)
    expect[1000 : 1000 + 10 * 1024] = bytes(10 * 1024)
    assert await fd.read(0, len(data)) == bytes(expect)
    await fd.punch_hole(15 * 1024 + 5, 10)  # inside one block
    expect[15 * 1024 + 5 : 15 * 1024 + 15] = bytes(10)
    assert await fd.read(0, len(data)) == bytes(expect)
    assert fd.fs_blocks == 11


async def test_unwritten_extent_reads_zero_and_converts_on_write() -> None:
    store, alloc, fd = make()
    p, _n = await alloc.allocate(500, 8)
    await fd.mapping.insert(0, p, 8, unwritten=True)
    fd._base_blocks = 8
    for b in range(p, p + 8):
        store.blocks[b] = bytes([GARBAGE]) * 1024
    assert await fd.read(0, 8192) == bytes(8192)
    await fd.write(2048 + 10, b"hello")
    assert await fd.read(0, 8192) == bytes(2058) + b"hello" + bytes(8192 - 2063)
    assert await fd.mapping.extents() == [
        (0, p, 2, True),
        (2, p + 2, 1, False),
        (3, p + 3, 5, True),
    ]
    assert store.blocks[p + 2] == bytes(10) + b"hello" + bytes(1009)
    assert fd.fs_blocks == 8


async def test_files_over_4gib() -> None:
    _store, _alloc, fd = make()
    top = ((1 << 32) - 3) * 1024  # the last two usable logical blocks (4 TiB at 1 KiB)
    assert await fd.write(top + 1000, b"end" * 100) == 300
    assert await fd.read(top + 1000, 300) == b"end" * 100
    assert await fd.read(5 << 30, 10) == bytes(10)
    ext = await fd.mapping.extents()
    assert ext[0][0] == (1 << 32) - 3 and ext[0][2] == 2
    with pytest.raises(OSError) as e:
        await fd.write(((1 << 32) - 1) * 1024, b"x")  # past the largest file
    assert e.value.errno == errno.EFBIG
    with pytest.raises(OSError) as e:
        await fd.truncate(0, ((1 << 32) - 1) * 1024 + 1)
    assert e.value.errno == errno.EFBIG
    await fd.truncate(top + 1300, 6 << 30)
    assert fd.fs_blocks == 0


async def test_enospc_gives_short_write_then_error() -> None:
    _store, alloc, fd = make(1024, 20)
    # 19 usable blocks; a tree block may be needed, so write fewer pieces
    n = await fd.write(0, b"z" * (30 * 1024))
    assert n == 19 * 1024
    assert await fd.read(0, n) == b"z" * n
    with pytest.raises(OSError) as e:
        await fd.write(n, b"more")
    assert e.value.errno == errno.ENOSPC
    assert fd.fs_blocks == 19 and alloc.in_use == 19


async def test_fragmented_write_one_request_per_run() -> None:
    store, alloc, fd = make()
    for b in range(104, 160, 5):  # free space in runs of 4 blocks from block 100
        alloc.used[b] = 1
    data = pattern(40 * 1024 + 77, 5)
    await fd.write(0, data)
    ext = await fd.mapping.extents()
    # runs of at most 4 blocks (the leaf block, allocated near the data, takes one slot)
    assert len(ext) >= 11 and all(n <= 4 for _, _, n, _ in ext)
    assert all(p1 + n1 < p2 for (_, p1, n1, _), (_, p2, _, _) in itertools.pairwise(ext))
    assert fd.mapping.depth == 1
    assert store.writes == len(ext)  # one device request per physical run
    store.reads = 0
    assert await fd.read(0, len(data)) == data
    assert store.reads == len(ext)
    await fd.flush()
    assert store.writes == len(ext) + 1  # the leaf block


# ----- random operations against a bytearray model ----------------------------------------

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 300_000), st.integers(1, 40_000)),
    st.tuples(st.just("truncate"), st.integers(0, 320_000), st.just(0)),
    st.tuples(st.just("punch"), st.integers(0, 300_000), st.integers(1, 60_000)),
)


async def apply_op(fd: FileData, model: bytearray, kind: str, a: int, b: int, step: int) -> None:
    """Do one operation on ``fd`` and on the bytearray ``model`` of the file."""
    size = len(model)
    if kind == "write":
        data = pattern(b, step)
        try:
            n = await fd.write(a, data, size=size)
        except OSError as e:
            assert e.errno == errno.ENOSPC
            n = 0
        if n:
            if a + n > size:
                model.extend(bytes(a + n - size))
            model[a : a + n] = data[:n]
    elif kind == "truncate":
        await fd.truncate(size, a)
        if a < size:
            del model[a:]
        else:
            model.extend(bytes(a - size))
    else:
        a, b = min(a, size), min(b, max(size - a, 0))
        await fd.punch_hole(a, b)
        model[a : a + b] = bytes(b)


@pytest.mark.parametrize("block_size", [1024, 4096])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=25), max_run=st.integers(1, 6))
async def test_random_file_operations_match_model(block_size: int, ops, max_run: int) -> None:
    store, alloc, fd = make(block_size, 4096)
    alloc.max_run = max_run
    model = bytearray()
    for step, (kind, a, b) in enumerate(ops):
        await apply_op(fd, model, kind, a, b, step)
        await fd.mapping.check()
        held = await held_blocks(fd)
        assert alloc.used_blocks() == held
        assert fd.fs_blocks == len(held)
        # nothing mapped past EOF, and the bytes past EOF in the last block are zero
        nb = -(-len(model) // block_size)
        ext = await fd.mapping.extents()
        assert not ext or ext[-1][0] + ext[-1][2] <= nb
        if len(model) % block_size:
            runs = await fd.mapping.map(nb - 1, 1)
            if runs[0].physical is not None:
                raw = store.blocks[runs[0].physical]
                assert raw[len(model) % block_size :] == bytes(block_size - len(model) % block_size)
        assert await fd.read(0, len(model)) == bytes(model)
    if model:
        for off in (0, len(model) // 3, len(model) - 1):
            n = min(5000, len(model) - off)  # the caller clamps reads to EOF
            assert await fd.read(off, n) == bytes(model[off : off + n])
    await fd.truncate(len(model), 0)
    assert alloc.used_blocks() == set() and fd.fs_blocks == 0


async def test_write_past_eof_into_a_mapped_block_reads_zeros_before_it() -> None:
    """A written block wholly past EOF (left by a crash, say) is not read back into a
    write that starts inside it: the bytes before the write are past the old EOF and
    must read as zeros, as must the rest of the block after the new EOF."""
    store, alloc, fd = make()
    await fd.write(0, b"x" * 100)
    p, _n = await alloc.allocate(500, 1)
    await fd.mapping.insert(5, p, 1)
    fd._base_blocks = 1
    store.blocks[p] = b"G" * 1024
    store.reads = 0
    await fd.write(5 * 1024 + 10, b"y", size=100)
    assert store.reads == 1  # the old EOF block, to zero its tail; not the block past EOF
    assert await fd.read(0, 5 * 1024 + 11) == b"x" * 100 + bytes(5 * 1024 - 90) + b"y"
    assert store.blocks[p] == bytes(10) + b"y" + bytes(1013)


async def test_edge_blocks_from_a_read_only_view_store() -> None:
    """Stores answer read-only memoryviews (as the drivers do): partial writes at both
    edges, inside and at the end of the file, work on them without converting them."""
    store, _alloc, fd = make()
    data = bytearray(pattern(10 * 1024, 7))
    await fd.write(0, data)
    reads = store.read_blocks

    async def read_only(start: int, count: int) -> memoryview:
        return (await reads(start, count)).toreadonly()

    store.read_blocks = read_only
    await fd.write(1000, b"a" * 3000, size=len(data))  # both edges inside the file
    data[1000:4000] = b"a" * 3000
    await fd.write(10 * 1024 - 24, b"b" * 100, size=len(data))  # last edge past EOF
    data[10 * 1024 - 24 :] = b"b" * 100
    assert await fd.read(0, len(data)) == bytes(data)
    (last,) = [p + 10 - s for s, p, n, _u in await fd.mapping.extents() if s <= 10 < s + n]
    assert store.blocks[last] == b"b" * 76 + bytes(1024 - 76)


class PrefetchingStore(MemStore):
    """A store that records the read-ahead hints it gets (block ranges)."""

    def __init__(self, block_size: int, nblocks: int) -> None:
        super().__init__(block_size, nblocks)
        self.hints: list[tuple[int, int]] = []

    async def prefetch_blocks(self, start: int, count: int) -> None:
        self.hints.append((start, count))


async def test_sequential_reads_announce_the_blocks_ahead() -> None:
    from chanos.fs.file_data import READ_AHEAD, READ_AHEAD_STEP

    bs = 4096
    store = PrefetchingStore(bs, 1 << 14)
    fd = FileData(
        ExtentTree.empty_root(),
        extents=True,
        store=store,
        allocator=BitmapAllocator(1 << 14),
        block_size=bs,
        fs_blocks=0,
        goal=100,
    )
    size = 16 << 20
    data = pattern(size, 5)
    await fd.write(0, data[: 8 << 20])
    # a hole of 1 MiB, then data written elsewhere on the device (not contiguous)
    await fd.write(9 << 20, data[9 << 20 :])
    ext = await fd.mapping.extents()
    assert [(e[0], e[2]) for e in ext] == [(0, 2048), (2304, 1792)]
    # random reads announce nothing
    for off in (5 << 20, 1 << 20, 12 << 20):
        assert await fd.read(off, 4096) == data[off : off + 4096]
    assert store.hints == []
    # a sequential reader of 128 KiB pieces: hints start with its second read and keep
    # READ_AHEAD bytes announced, in pieces of READ_AHEAD_STEP or more
    chunk = 128 << 10
    announced: set[int] = set()
    for off in range(0, size, chunk):
        got = await fd.read(off, chunk)
        assert got == (data[off : off + chunk] if not (8 << 20) <= off < 9 << 20 else bytes(chunk))
        for start, n in store.hints:
            assert announced.isdisjoint(range(start, start + n))  # each block once
            announced.update(range(start, start + n))
        store.hints.clear()
        if off:  # every block of the next READ_AHEAD bytes that holds data was announced
            for pos in range(
                off + chunk, min(off + chunk + READ_AHEAD - READ_AHEAD_STEP, size), bs
            ):
                lblk = pos // bs
                for s, p, n, _u in ext:
                    if s <= lblk < s + n:
                        assert p + lblk - s in announced, (off, pos)
    # nothing but the file's own blocks (none for the hole)
    mapped = {p + i for _s, p, n, _u in ext for i in range(n)}
    assert announced <= mapped
    # a reader that starts over is read ahead again
    await fd.read(0, chunk)
    await fd.read(chunk, chunk)
    assert store.hints and store.hints[0][0] == ext[0][1] + 2 * chunk // bs


async def test_aligned_overwrite_in_place_is_one_write_and_nothing_else() -> None:
    store, alloc, fd = make()
    data = pattern(64 * 1024, 7)
    await fd.write(0, data)
    assert fd.remapped
    fd.clear_inode_dirty()  # the vnode stored i_block
    store.reads = store.writes = 0
    allocs, root = alloc.allocs, fd.i_block
    new = pattern(8192, 8)
    assert await fd.write(4096, new, size=len(data)) == 8192
    assert (store.reads, store.writes, alloc.allocs) == (0, 1, allocs)
    assert not fd.remapped and not fd.inode_dirty and fd.i_block == root
    assert await fd.read(0, len(data)) == data[:4096] + new + data[12288:]
    # an unaligned one reads its edge blocks and still changes no mapping
    await fd.write(100, b"x" * 10, size=len(data))
    assert store.reads == 2 and not fd.remapped


async def test_read_as_a_view_hands_on_the_store_reply_without_a_copy() -> None:
    store, _alloc, fd = make()
    data = pattern(16 * 1024, 9)
    await fd.write(0, data)
    replies = []
    real = store.read_blocks

    async def read_blocks(start, count):
        replies.append(await real(start, count))
        return replies[-1]

    store.read_blocks = read_blocks
    got = await fd.read(1000, 9000, view=True)
    assert type(got) is memoryview and got.readonly and got == data[1000:10000]
    assert got.obj is replies[-1].obj  # a slice of the store's reply, not a copy
    plain = await fd.read(1000, 9000)
    assert type(plain) is bytes and plain == data[1000:10000]
    # across a hole: one assembly buffer, viewed
    await fd.write(40 * 1024, data[:1024])
    got = await fd.read(15 * 1024, 26 * 1024, view=True)
    assert got.readonly and got == data[15 * 1024 :] + bytes(24 * 1024) + data[:1024]


async def test_appending_writer_reads_nothing_back() -> None:
    # tar's 10 KiB records: each write after the first starts in the block the previous
    # one ended in; that block's old bytes come from the last write, not from the device.
    store, _alloc, fd = make(4096)
    model = bytearray()
    for i in range(6):
        data = pattern(10240, i)
        assert await fd.write(len(model), data, size=len(model)) == len(data)
        model += data
    assert store.reads == 0
    assert await fd.read(0, len(model)) == bytes(model)
    store.reads = 0
    # Anything else that touches the blocks drops the remembered block: after a truncate
    # into the last block, an append reads the (now shorter, zero-tailed) block again.
    await fd.truncate(len(model), len(model) - 5000)
    del model[-5000:]
    data = pattern(3000, 99)
    assert await fd.write(len(model), data, size=len(model)) == len(data)
    model += data
    assert store.reads == 2  # the truncate's zeroing, then the append's edge
    assert await fd.read(0, len(model)) == bytes(model)
    store.reads = 0
    # A writer that is gone leaves nothing behind.
    fd.drop_tail()
    assert await fd.write(len(model), b"z" * 10, size=len(model)) == 10
    model += b"z" * 10
    assert store.reads == 1
    assert await fd.read(0, len(model)) == bytes(model)


near_eof = st.one_of(
    st.tuples(st.just("write"), st.integers(-3000, 3000), st.integers(1, 12_000)),
    st.tuples(st.just("truncate"), st.integers(-6000, 2000), st.just(0)),
    st.tuples(st.just("punch"), st.integers(-9000, 0), st.integers(1, 6000)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(near_eof, min_size=1, max_size=30))
async def test_writes_around_eof_match_model(ops) -> None:
    # Writes, truncates and punches near EOF: the block the last write ended in is taken
    # from memory only while it is what the device holds.
    _store, alloc, fd = make(1024, 4096)
    model = bytearray()
    for step, (kind, rel, b) in enumerate(ops):
        await apply_op(fd, model, kind, max(len(model) + rel, 0), b, step)
        assert await fd.read(0, len(model)) == bytes(model)
    assert alloc.used_blocks() == await held_blocks(fd)
