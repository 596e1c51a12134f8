"""Block maps of old indirect-block (ext2/ext3) files: map logical -> physical, and free.

An inode without the extents flag keeps its block map in the 15 words of ``i_block``:
12 direct pointers, then the single, double and triple indirect block. Each indirect block
holds ``block_size / 4`` little-endian 32-bit pointers; 0 is a hole.

This module reads such maps (``map`` with the same ``Run`` results as the extent tree),
frees blocks of a range (``remove``: truncate, unlink, punch), zeroing the pointers that go
and freeing indirect blocks that become empty, and adds mappings in place (``insert``,
creating indirect blocks) for images without the extent feature. On images with it, a
write converts the file to an extent tree instead (see ``chanos.fs.file_data``), as
``chattr +e`` / e2fsck's bmap2extent do.
"""

from __future__ import annotations

import errno
import struct
from array import array
from sys import byteorder

from chanos.fs.extent_tree import BlockAllocator, BlockStore, Run

N_DIRECT = 12
_I_BLOCK = struct.Struct("<15I")


def _corrupt(what: str) -> OSError:
    return OSError(errno.EIO, f"corrupt block map: {what}")


class _Frees:
    """Collects freed blocks into contiguous runs: one free request per run."""

    def __init__(self, allocator: BlockAllocator) -> None:
        self._alloc = allocator
        self._start = 0
        self._count = 0
        self.total = 0

    async def add(self, blk: int) -> None:
        self.total += 1
        if self._count and blk == self._start + self._count:
            self._count += 1
            return
        await self.done()
        self._start, self._count = blk, 1

    async def done(self) -> None:
        if self._count:
            await self._alloc.free(self._start, self._count)
            self._count = 0


class BlockMap:
    """The indirect block map of one inode (owned by its vnode actor, like ExtentTree)."""

    def __init__(
        self,
        i_block: bytes,
        store: BlockStore,
        allocator: BlockAllocator,
        block_size: int,
        *,
        blocks_count: int | None = None,
        goal: int = 0,
    ) -> None:
        self._root = list(_I_BLOCK.unpack(bytes(i_block[:60])))
        self._store = store
        self._alloc = allocator
        self.block_size = block_size
        self.per_block = block_size // 4
        self._blocks_count = blocks_count
        self._cache: dict[int, array] = {}
        self._dirty: set[int] = set()
        self.root_dirty = False
        self.goal = goal
        k = self.per_block
        # (first logical block, depth) of the subtrees under i_block[12], [13], [14].
        self._trees = ((N_DIRECT, 1), (N_DIRECT + k, 2), (N_DIRECT + k + k * k, 3))
        self.limit = N_DIRECT + k + k * k + k * k * k

    @property
    def i_block(self) -> bytes:
        return _I_BLOCK.pack(*self._root)

    def _check_ptr(self, p: int) -> None:
        if self._blocks_count is not None and p >= self._blocks_count:
            raise _corrupt(f"pointer {p} beyond the end of the file system")

    async def _ptrs(self, blk: int) -> array:
        a = self._cache.get(blk)
        if a is None:
            self._check_ptr(blk)
            a = array("I")
            a.frombytes(await self._store.read_blocks(blk, 1))
            if byteorder != "little":
                a.byteswap()
            self._cache[blk] = a
        return a

    @property
    def blocks_dirty(self) -> bool:
        """Whether an indirect block waits to be written back (``flush``)."""
        return bool(self._dirty)

    async def flush(self) -> None:
        """Write modified indirect blocks back."""
        for blk in sorted(self._dirty):
            a = self._cache[blk]
            if byteorder != "little":
                a = array("I", a)
                a.byteswap()
            await self._store.write_blocks(blk, a.tobytes())
        self._dirty.clear()

    async def _walk(self, lblk: int, end: int, out: list[tuple[int, int]]) -> None:
        """Append (logical, physical) for every mapped block in [lblk, end)."""
        for i in range(max(lblk, 0), min(end, N_DIRECT)):
            if self._root[i]:
                self._check_ptr(self._root[i])
                out.append((i, self._root[i]))
        for n, (base, depth) in enumerate(self._trees):
            span = self.per_block**depth
            if end <= base or lblk >= base + span:
                continue
            top = self._root[N_DIRECT + n]
            if top:
                await self._walk_tree(top, depth, base, max(lblk, base), min(end, base + span), out)

    async def _walk_tree(
        self, blk: int, depth: int, base: int, lo: int, hi: int, out: list[tuple[int, int]]
    ) -> None:
        ptrs = await self._ptrs(blk)
        span = self.per_block ** (depth - 1)
        first = (lo - base) // span
        last = (hi - 1 - base) // span
        for i in range(first, last + 1):
            p = ptrs[i]
            if not p:
                continue
            cb = base + i * span
            if depth == 1:
                self._check_ptr(p)
                out.append((cb, p))
            else:
                await self._walk_tree(p, depth - 1, cb, max(lo, cb), min(hi, cb + span), out)

    async def map(self, lblk: int, count: int) -> list[Run]:
        """Mapping of [lblk, lblk+count): physically contiguous blocks merged, holes too."""
        end = lblk + count
        pairs: list[tuple[int, int]] = []
        await self._walk(lblk, min(end, self.limit), pairs)
        runs: list[Run] = []
        pos = lblk
        cur_l = cur_p = cur_n = 0
        for lb, pb in pairs:
            if cur_n and lb == cur_l + cur_n and pb == cur_p + cur_n:
                cur_n += 1
                continue
            if cur_n:
                runs.append(Run(cur_l, cur_p, cur_n))
                pos = cur_l + cur_n
            if lb > pos:
                runs.append(Run(pos, None, lb - pos))
            cur_l, cur_p, cur_n = lb, pb, 1
        if cur_n:
            runs.append(Run(cur_l, cur_p, cur_n))
            pos = cur_l + cur_n
        if pos < end:
            runs.append(Run(pos, None, end - pos))
        return runs

    async def lookup(self, lblk: int) -> int | None:
        runs = await self.map(lblk, 1)
        return runs[0].physical

    async def indirect_blocks(self) -> list[int]:
        """Every indirect block of the map (they count in i_blocks)."""
        out: list[int] = []

        async def walk(blk: int, depth: int) -> None:
            out.append(blk)
            if depth > 1:
                for p in await self._ptrs(blk):
                    if p:
                        await walk(p, depth - 1)

        for n, (_base, depth) in enumerate(self._trees):
            if self._root[N_DIRECT + n]:
                await walk(self._root[N_DIRECT + n], depth)
        return out

    async def remove(self, lblk: int, count: int | None = None) -> int:
        """Free the blocks of [lblk, lblk+count) (to the end of the file if count is None).

        The pointers that go are zeroed; indirect blocks left with no pointer are freed
        too. Returns the number of data blocks freed.
        """
        to = self.limit if count is None else min(lblk + count, self.limit)
        frm = max(lblk, 0)
        if frm >= to:
            return 0
        frees = _Frees(self._alloc)
        data = 0
        for i in range(frm, min(to, N_DIRECT)):
            if self._root[i]:
                self._check_ptr(self._root[i])
                await frees.add(self._root[i])
                self._root[i] = 0
                self.root_dirty = True
                data += 1
        for n, (base, depth) in enumerate(self._trees):
            top = self._root[N_DIRECT + n]
            if not top or frm >= base + self.per_block**depth or to <= base:
                continue
            freed, empty = await self._trim(top, depth, base, frm, to, frees)
            data += freed
            if empty:
                await frees.add(top)
                self._root[N_DIRECT + n] = 0
                self.root_dirty = True
        await frees.done()
        return data

    async def _trim(
        self, blk: int, depth: int, base: int, frm: int, to: int, frees: _Frees
    ) -> tuple[int, bool]:
        """Free what lies in [frm, to) under indirect block blk (covering from base).

        Returns (data blocks freed, whether blk now holds no pointer at all); blk itself is
        freed by the caller.
        """
        ptrs = await self._ptrs(blk)
        span = self.per_block ** (depth - 1)
        freed = 0
        changed = False
        start = max(0, (frm - base) // span)
        stop = min(self.per_block, (to - base + span - 1) // span)
        for i in range(start, stop):
            p = ptrs[i]
            if not p:
                continue
            cb = base + i * span
            if depth == 1:
                self._check_ptr(p)
                await frees.add(p)
                freed += 1
                ptrs[i] = 0
                changed = True
                continue
            f, empty = await self._trim(p, depth - 1, cb, max(frm, cb), min(to, cb + span), frees)
            freed += f
            if empty:
                await frees.add(p)
                ptrs[i] = 0
                changed = True
        empty = not any(ptrs)
        if empty:
            # The block is about to be freed: never write it back afterwards.
            self._cache.pop(blk, None)
            self._dirty.discard(blk)
        elif changed:
            self._dirty.add(blk)
        return freed, empty

    # ----- writing in place (images without the extent feature) ---------------------------

    def _path(self, lblk: int) -> tuple[int, list[int]]:
        """(slot in i_block, indices in the indirect blocks below it) of logical lblk."""
        if lblk < N_DIRECT:
            return lblk, []
        k = self.per_block
        for n, (base, depth) in enumerate(self._trees):
            rel = lblk - base
            if rel < k**depth:
                return N_DIRECT + n, [rel // k ** (d - 1) % k for d in range(depth, 0, -1)]
        raise OSError(errno.EFBIG, "beyond the largest block-mapped file")

    async def goal_for(self, lblk: int) -> int:
        """Where to allocate lblk: after the block before it, else near the inode."""
        if lblk > 0:
            prev = await self.lookup(lblk - 1)
            if prev is not None:
                return prev + 1
        return self.goal

    async def insert(self, lblk: int, pblk: int, count: int, unwritten: bool = False) -> None:
        """Map the hole [lblk, lblk+count) to [pblk, pblk+count), adding indirect blocks.

        The indirect blocks the range needs are allocated (near the data) before any
        pointer changes, so ENOSPC leaves the map as it was. New indirect blocks start
        zeroed and are written by ``flush()``.
        """
        if unwritten:
            raise OSError(errno.EOPNOTSUPP, "block-mapped files have no unwritten blocks")
        if count <= 0:
            return
        if lblk < 0 or lblk + count > self.limit:
            raise OSError(errno.EFBIG, "beyond the largest block-mapped file")
        # Pass 1: which indirect blocks are missing, and is the range really a hole?
        missing: set[tuple[int, ...]] = set()
        for b in range(lblk, lblk + count):
            slot, idxs = self._path(b)
            blk = self._root[slot]
            key: tuple[int, ...] = (slot,)
            for i in idxs:
                if blk == 0:
                    missing.add(key)
                else:
                    blk = (await self._ptrs(blk))[i]
                key = (*key, i)
            if blk:
                raise OSError(errno.EEXIST, f"logical block {b} already mapped")
        pool: list[int] = []
        goal = pblk
        try:
            while len(pool) < len(missing):
                start, got = await self._alloc.allocate(goal, len(missing) - len(pool))
                pool.extend(range(start, start + got))
                goal = start + got
        except OSError:
            for b in pool:
                await self._alloc.free(b, 1)
            raise
        # Pass 2: create the missing blocks in key order and set the pointers.
        for key in sorted(missing, key=len):
            blk = pool.pop(0)
            self._cache[blk] = array("I", bytes(self.block_size))
            self._dirty.add(blk)
            if len(key) == 1:
                self._root[key[0]] = blk
                self.root_dirty = True
            else:
                # Parents come first (shorter keys), so the walk to this one succeeds.
                parent = await self._block_at(key[:-1])
                (await self._ptrs(parent))[key[-1]] = blk
                self._dirty.add(parent)
        for b in range(lblk, lblk + count):
            slot, idxs = self._path(b)
            p = pblk + (b - lblk)
            if not idxs:
                self._root[slot] = p
                self.root_dirty = True
                continue
            blk = self._root[slot]
            for i in idxs[:-1]:
                blk = (await self._ptrs(blk))[i]
            (await self._ptrs(blk))[idxs[-1]] = p
            self._dirty.add(blk)

    async def _block_at(self, key: tuple[int, ...]) -> int:
        blk = self._root[key[0]]
        for i in key[1:]:
            blk = (await self._ptrs(blk))[i]
        return blk
