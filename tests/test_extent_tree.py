"""ExtentTree over in-memory fakes: mapping, merging, splits, depth growth and shrink,
truncate and punch, against a dict model, with leak and double-free checks."""

from __future__ import annotations

import errno
import itertools

import pytest
from chanos.fs.extent_tree import ExtentTree, Run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extent_fakes import BitmapAllocator, MemStore


def make(block_size: int = 1024, nblocks: int = 1 << 20):
    store = MemStore(block_size, nblocks)
    alloc = BitmapAllocator(nblocks)
    tree = ExtentTree(ExtentTree.empty_root(), store, alloc, block_size, goal=1)
    return store, alloc, tree


async def reopen(tree: ExtentTree, store: MemStore, alloc: BitmapAllocator) -> ExtentTree:
    await tree.flush()
    return ExtentTree(tree.i_block, store, alloc, store.block_size, goal=1)


async def flat(tree: ExtentTree) -> dict[int, int]:
    out = {}
    for s, p, n, _u in await tree.extents():
        for i in range(n):
            out[s + i] = p + i
    return out


async def assert_accounted(tree: ExtentTree, alloc: BitmapAllocator, model: dict[int, int]):
    """Every allocated block is a mapped data block or a tree block, exactly once."""
    tree_blocks = await tree.tree_blocks()
    assert len(set(tree_blocks)) == len(tree_blocks)
    expect = set(model.values()) | set(tree_blocks)
    assert len(expect) == len(model) + len(tree_blocks)
    assert alloc.used_blocks() == expect


async def test_empty_tree_is_one_hole() -> None:
    _, _, tree = make()
    assert await tree.map(5, 10) == [Run(5, None, 10)]
    assert tree.depth == 0
    assert await tree.lookup(0) is None
    assert len(ExtentTree.empty_root()) == 60


async def test_insert_merges_contiguous_neighbours() -> None:
    _, _, tree = make()
    await tree.insert(0, 100, 10)
    await tree.insert(20, 120, 5)
    await tree.insert(10, 110, 10)  # bridges both neighbours
    assert await tree.extents() == [(0, 100, 25, False)]
    assert await tree.map(0, 30) == [Run(0, 100, 25), Run(25, None, 5)]
    await tree.insert(30, 500, 1)  # not physically contiguous
    assert len(await tree.extents()) == 2
    assert await tree.map(24, 8) == [
        Run(24, 124, 1),
        Run(25, None, 5),
        Run(30, 500, 1),
        Run(31, None, 1),
    ]


async def test_insert_respects_extent_length_limits() -> None:
    _, _, tree = make()
    await tree.insert(0, 1000, 40000)
    assert await tree.extents() == [(0, 1000, 32768, False), (32768, 33768, 7232, False)]
    await tree.insert(50000, 100000, 40000, unwritten=True)
    ext = await tree.extents()
    assert ext[2:] == [(50000, 100000, 32767, True), (82767, 132767, 7233, True)]
    # written and unwritten neighbours never merge
    _, _, t2 = make()
    await t2.insert(0, 10, 5, unwritten=True)
    await t2.insert(5, 15, 5)
    assert len(await t2.extents()) == 2


async def test_insert_over_mapped_range_is_refused() -> None:
    _, _, tree = make()
    await tree.insert(10, 100, 10)
    for lblk, n in ((15, 1), (5, 6), (19, 3)):
        with pytest.raises(OSError) as e:
            await tree.insert(lblk, 900, n)
        assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        await tree.insert((1 << 32) - 2, 900, 2)  # block 2**32 - 1 is never mapped
    assert e.value.errno == errno.EFBIG


async def test_deep_tree_grows_and_shrinks_back() -> None:
    """1 KiB blocks: 84 entries a tree block, so 30000 extents need depth 3."""
    store, alloc, tree = make(1024, 1 << 17)
    model = {}
    n_ext = 30000
    for i in range(n_ext):
        p, _ = await alloc.allocate(1 + 2 * i, 1)  # every other block: never contiguous
        await tree.insert(2 * i, p, 1)
        model[2 * i] = p
    assert tree.depth == 3
    await tree.check()
    blocks = await tree.tree_blocks()
    # 30000 leaves entries in full 84-entry leaves (appends keep nodes full)
    leaves = -(-n_ext // 84)
    assert len(blocks) == leaves + -(-leaves // 84) + 1
    await assert_accounted(tree, alloc, model)

    tree = await reopen(tree, store, alloc)
    assert await flat(tree) == model
    await tree.check()
    runs = await tree.map(59990, 20)
    # 59990..59998 alternate mapped/hole; the last extent is 59998, then one hole
    assert len(runs) == 10
    assert runs[-1] == Run(59999, None, 11)
    assert [r.physical for r in runs[:-1:2]] == [model[k] for k in range(59990, 59999, 2)]
    assert all(r.physical is None and r.length == 1 for r in runs[1:-1:2])

    # truncate in the middle, then punch, then everything
    freed = await tree.remove(20001)
    for lb in [k for k in model if k >= 20001]:
        del model[lb]
    assert freed == n_ext - 10001
    await tree.check()
    await assert_accounted(tree, alloc, model)
    assert tree.depth == 2

    await tree.remove(0, 19000)
    for lb in [k for k in model if k < 19000]:
        del model[lb]
    await tree.check()
    await assert_accounted(tree, alloc, model)
    assert tree.depth == 2  # 501 extents do not fit under a depth-1 root (4 * 84)

    await tree.remove(19000, 996)
    for lb in [k for k in model if k < 19996]:
        del model[lb]
    assert len(model) == 3
    await tree.check()
    await assert_accounted(tree, alloc, model)
    assert tree.depth == 0  # three extents fit in the inode again

    await tree.remove(0)
    assert tree.depth == 0 and await tree.extents() == []
    assert alloc.used_blocks() == set()
    tree = await reopen(tree, store, alloc)
    assert await tree.extents() == []


async def test_punch_inside_one_extent_splits_it() -> None:
    _store, alloc, tree = make()
    p, _n = await alloc.allocate(100, 50)
    await tree.insert(0, p, 50)
    assert await tree.remove(10, 5) == 5
    assert await tree.extents() == [(0, p, 10, False), (15, p + 15, 35, False)]
    assert alloc.used_blocks() == set(range(p, p + 10)) | set(range(p + 15, p + 50))
    # re-inserting the same blocks merges everything back into one extent
    p2, n2 = await alloc.allocate(p + 10, 5)
    assert (p2, n2) == (p + 10, 5)
    await tree.insert(10, p2, 5)
    assert await tree.extents() == [(0, p, 50, False)]


async def test_punch_split_in_full_root_grows_depth() -> None:
    _, alloc, tree = make()
    for i in range(4):
        p, _ = await alloc.allocate(100 * i + 100, 10)
        await tree.insert(20 * i, p, 10)
    assert tree.depth == 0
    await tree.remove(2, 3)
    assert tree.depth == 1
    await tree.check()
    assert len(await tree.extents()) == 5


async def test_enospc_during_split_leaves_tree_unchanged() -> None:
    _store, alloc, tree = make(1024, 200)
    for i in range(4):
        await tree.insert(10 * i, 20 + 10 * i, 5)
    before = await tree.extents()
    alloc.used[:] = b"\x01" * len(alloc.used)  # device full
    with pytest.raises(OSError) as e:
        await tree.insert(100, 150, 1)
    assert e.value.errno == errno.ENOSPC
    assert tree.depth == 0 and await tree.extents() == before
    with pytest.raises(OSError):
        await tree.remove(1, 1, free=False)  # punch needs a fifth entry
    assert await tree.extents() == before


async def test_index_keys_follow_first_entry() -> None:
    _, _alloc, tree = make(64, 1 << 14)  # 64-byte blocks: 4 entries a node
    for i in range(1, 40):
        await tree.insert(10 * i, 1000 + 10 * i, 1)
    assert tree.depth >= 2
    await tree.insert(0, 5, 3)  # new first extent: keys along the left edge change
    await tree.check()
    await tree.remove(0, 11, free=False)  # drop the first two extents
    await tree.check()
    assert (await tree.extents())[0] == (20, 1020, 1, False)


async def test_corrupt_tree_block_is_eio() -> None:
    store, alloc, tree = make(1024, 4096)
    for i in range(10):
        await tree.insert(2 * i, 100 + 2 * i, 1)
    await tree.flush()
    blk = (await tree.tree_blocks())[0]
    raw = bytearray(store.blocks[blk])
    raw[0] = 0
    store.blocks[blk] = bytes(raw)
    t2 = ExtentTree(tree.i_block, store, alloc, 1024)
    with pytest.raises(OSError) as e:
        await t2.map(0, 10)
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        ExtentTree(bytes(60), store, alloc, 1024)
    assert e.value.errno == errno.EIO
    # pointers past the end of the file system: the root's extent, a tree block's child
    _, _, small = make(1024, 4096)
    await small.insert(0, 4000, 50)
    with pytest.raises(OSError) as e:
        ExtentTree(small.i_block, store, alloc, 1024, blocks_count=4040)
    assert e.value.errno == errno.EIO
    ExtentTree(small.i_block, store, alloc, 1024, blocks_count=4050)  # exactly fits
    ExtentTree(tree.i_block, store, alloc, 1024, blocks_count=blk + 1)
    with pytest.raises(OSError) as e:
        ExtentTree(tree.i_block, store, alloc, 1024, blocks_count=blk)
    assert e.value.errno == errno.EIO


async def test_mark_written_splits_unwritten_extent() -> None:
    _, _, tree = make()
    await tree.insert(0, 100, 20, unwritten=True)
    await tree.mark_written(5, 3)
    assert await tree.extents() == [
        (0, 100, 5, True),
        (5, 105, 3, False),
        (8, 108, 12, True),
    ]


async def test_mark_written_enospc_leaves_mapping_unchanged() -> None:
    _, alloc, tree = make(1024, 200)
    for i in range(4):
        await tree.insert(20 * i, 20 + 20 * i, 10, unwritten=i == 1)
    before = await tree.extents()
    alloc.used[:] = b"\x01" * len(alloc.used)
    with pytest.raises(OSError) as e:
        await tree.mark_written(23, 4)  # needs two more entries in a full root
    assert e.value.errno == errno.ENOSPC
    assert await tree.extents() == before and tree.depth == 0
    await tree.mark_written(20, 10)  # the whole extent: flipped in place, no allocation
    assert (await tree.extents())[1] == (20, 40, 10, False)


# ----- random operations against a model -------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "insert", "insert", "punch", "truncate", "written"]),
        st.integers(0, 400),
        st.integers(1, 60),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)


@pytest.mark.parametrize("block_size", [64, 1024])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
async def test_random_operations_match_model(block_size: int, ops) -> None:
    store, alloc, tree = make(block_size, 1 << 14)
    alloc.max_run = 7  # fragment the data so trees get deep
    model: dict[int, int] = {}
    unwritten: set[int] = set()
    for step, (op, lblk, n, flag) in enumerate(ops):
        if op == "insert":
            for run in await tree.map(lblk, n):
                if run.physical is not None:
                    continue
                pos, left = run.logical, run.length
                while left:
                    goal = 2000 + 37 * pos if flag else await tree.goal_for(pos)
                    p, got = await alloc.allocate(goal, left)
                    await tree.insert(pos, p, got, unwritten=flag and step % 3 == 0)
                    for i in range(got):
                        model[pos + i] = p + i
                        if flag and step % 3 == 0:
                            unwritten.add(pos + i)
                    pos += got
                    left -= got
        elif op == "written":
            await tree.mark_written(lblk, n)
            unwritten.difference_update(range(lblk, lblk + n))
        elif op == "punch":
            await tree.remove(lblk, n)
            for k in range(lblk, lblk + n):
                model.pop(k, None)
                unwritten.discard(k)
        else:
            await tree.remove(lblk)
            for k in [k for k in model if k >= lblk]:
                del model[k]
                unwritten.discard(k)
        await tree.check()
        assert await flat(tree) == model
        await assert_accounted(tree, alloc, model)
        got_u = {s + k for s, _p, n, u in await tree.extents() if u for k in range(n)}
        assert got_u == unwritten
        if step % 7 == 0:
            tree = await reopen(tree, store, alloc)
    got_unwritten = set()
    for s, _p, n, u in await tree.extents():
        if u:
            got_unwritten.update(range(s, s + n))
    assert got_unwritten == unwritten
    # a full map over the range agrees with lookups
    for r in await tree.map(0, 500):
        for k in range(r.logical, r.logical + r.length):
            assert model.get(k) == (None if r.physical is None else r.physical + k - r.logical)
    await tree.remove(0)
    assert tree.depth == 0 and alloc.used_blocks() == set()


@given(
    depth=st.integers(0, 2),
    entries=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 40_000),
            st.integers(1, 2**48 - 40_000),
            st.integers(1, 32768),
            st.booleans(),
        ),
        max_size=4,
    ),
)
def test_root_encoding_matches_the_codec(depth: int, entries: list) -> None:
    # The root's direct packing gives the codec's bytes, and they decode back.
    from chanos.fs.extent_tree import _decode_node, _encode_node, _encode_root

    if depth == 0:
        ents = [(lb, p, min(n, 32767) if u else n, u) for lb, p, n, u in entries]
    else:
        ents = [(lb, p) for lb, p, _n, _u in entries]
    ents.sort()
    raw = _encode_root(depth, ents)
    assert raw == _encode_node(depth, 4, ents, in_inode=True)
    if depth == 0 and all(a[0] + a[2] <= b[0] for a, b in itertools.pairwise(ents)):
        assert _decode_node(raw, in_inode=True) == (0, 4, ents)


def test_empty_root_decodes_and_bad_roots_are_refused() -> None:
    from chanos.fs.extent_tree import _decode_node

    assert _decode_node(ExtentTree.empty_root(), in_inode=True) == (0, 4, [])
    bad = bytearray(ExtentTree.empty_root())
    bad[4] = 7  # eh_max larger than the root holds
    with pytest.raises(OSError):
        _decode_node(bytes(bad), in_inode=True)
    bad = bytearray(ExtentTree.empty_root())
    bad[0] = 0
    with pytest.raises(OSError):
        _decode_node(bytes(bad), in_inode=True)


@given(
    entries=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 40_000),
            st.integers(1, 2**40),
            st.integers(1, 32768),
            st.booleans(),
        ),
        max_size=4,
    ),
    depth=st.integers(0, 1),
)
def test_root_runs_are_the_roots_extents_read_straight(entries: list, depth: int) -> None:
    # Every extent's blocks, unwritten ones too, as the codec decodes them; nothing for a
    # deeper tree, an extent past the volume's end or a malformed root.
    from chanos.fs.extent_tree import _decode_node, _encode_root, root_runs

    if depth:
        raw = _encode_root(1, sorted((lb, p) for lb, p, _n, _u in entries))
        assert root_runs(raw, 2**48) is None
        return
    ents = sorted((lb, p, min(n, 32767) if u else n, u) for lb, p, n, u in entries)
    raw = _encode_root(0, ents)
    if not all(a[0] + a[2] <= b[0] for a, b in itertools.pairwise(ents)):
        assert root_runs(raw, 2**48) is None  # overlapping: the tree reports it
        return
    decoded = _decode_node(raw, in_inode=True)[2]
    assert root_runs(raw, 2**48) == [(p, n) for _lb, p, n, _u in decoded]
    if ents:
        end = max(p + n for _lb, p, n, _u in ents)
        assert root_runs(raw, end) is not None and root_runs(raw, end - 1) is None
    bad = bytearray(raw)
    bad[0] ^= 0xFF  # not an extent header
    assert root_runs(bytes(bad), 2**48) is None
    assert root_runs(raw[:40], 2**48) is None
