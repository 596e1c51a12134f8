"""Block maps of old indirect-block (ext2/ext3) files: map logical -> physical, and free.

An inode without the extents flag keeps its block map in the 15 words of ``i_block``:
12 direct pointers, then the single, double and triple indirect block. Each indirect block
holds ``block_size / 4`` little-endian 32-bit pointers; 0 is a hole.

This module reads such maps (``map`` with the same ``Run`` results as the extent tree) and
frees blocks from a logical block on (``remove``: truncate and unlink), zeroing the
pointers that go and freeing indirect blocks that become empty. It does not write new
mappings: a write to such a file converts it to an extent tree first when the image has
the extent feature (see ``chanos.fs.file_data``), as ``chattr +e`` / e2fsck's bmap2extent
do.
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

    @property
    def dirty(self) -> bool:
        return self.root_dirty or bool(self._dirty)

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
        """Free every block from logical block lblk on (count must be None: truncate).

        Indirect blocks left with no pointers are freed too. Returns the number of data
        blocks freed.
        """
        if count is not None:
            raise OSError(errno.EOPNOTSUPP, "hole punching in a block-mapped file")
        frees = _Frees(self._alloc)
        data = 0
        for i in range(max(lblk, 0), N_DIRECT):
            if self._root[i]:
                self._check_ptr(self._root[i])
                await frees.add(self._root[i])
                self._root[i] = 0
                self.root_dirty = True
                data += 1
        for n, (base, depth) in enumerate(self._trees):
            top = self._root[N_DIRECT + n]
            if not top or lblk >= base + self.per_block**depth:
                continue
            freed, empty = await self._trim(top, depth, base, lblk, frees)
            data += freed
            if empty:
                await frees.add(top)
                self._root[N_DIRECT + n] = 0
                self.root_dirty = True
        await frees.done()
        return data

    async def _trim(
        self, blk: int, depth: int, base: int, frm: int, frees: _Frees
    ) -> tuple[int, bool]:
        """Free what lies at or past logical block frm under indirect block blk.

        Returns (data blocks freed, whether blk now holds no pointer at all); blk itself is
        freed by the caller.
        """
        ptrs = await self._ptrs(blk)
        span = self.per_block ** (depth - 1)
        freed = 0
        changed = False
        start = max(0, (frm - base) // span)
        for i in range(start, self.per_block):
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
            f, empty = await self._trim(p, depth - 1, cb, max(frm, cb), frees)
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
