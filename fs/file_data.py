"""A file's data at byte level: read, write, truncate and punch over its block mapping.

Owns the translation of byte ranges into block I/O for one inode, on top of its mapping
(an ``ExtentTree`` or, for old ext2/ext3 files, a ``BlockMap``):

- ``read``: holes and unwritten extents read as zeros; every physically contiguous run of
  blocks is one device request; the caller clamps the size to EOF. A file read
  sequentially has the blocks a few MiB ahead of the reader announced to the store
  (``prefetch_blocks``, where the store has it), so the device reads them ahead.
- ``write``: missing blocks are allocated in large contiguous runs near a goal (the block
  after the previous block of the file, else near the inode); only partial edge blocks
  are read-modify-written, and the block the previous write ended in part-way is kept
  until the last Release, so an appending writer reads nothing back; the untouched parts
  of newly allocated edge blocks are zeroed; one device request per physically
  contiguous run.
- ``truncate`` and ``punch_hole`` free whole blocks and zero partial ones on disk, so the
  bytes past EOF in the last block are always zero (as the kernel keeps them).
- ``fs_blocks`` / ``i_blocks``: blocks the file holds (data and mapping metadata; the
  xattr block is the vnode's), kept exact by counting every allocation and free.

A write to a block-mapped file converts it to an extent tree first when the image has the
extent feature, and then behaves as any extent file; ``converted`` tells the vnode to set
EXT4_EXTENTS_FL. Without the extent feature (ext2/ext3 images) such files are written in
place, indirect blocks added as needed.
"""

from __future__ import annotations

import errno

from chanos.fs.block_map import BlockMap
from chanos.fs.extent_tree import LBLK_LIMIT, BlockAllocator, BlockStore, ExtentTree, Run

# How far ahead of a sequential reader its file's blocks are announced to the store, and
# the least announced at once: with the host kernel's 1 MiB READs, one hint per 4 MiB
# keeps 12-16 MiB of the image in flight ahead of the reader. A 4 MiB window (2 MiB
# hints) left a cold reader waiting for the device on about a third of its READs.
READ_AHEAD = 16 << 20
READ_AHEAD_STEP = 4 << 20


class _CountingAllocator:
    """Passes requests through and counts blocks taken and given back."""

    __slots__ = ("allocated", "freed", "inner")

    def __init__(self, inner: BlockAllocator) -> None:
        self.inner = inner
        self.allocated = 0
        self.freed = 0

    async def allocate(self, goal: int, count: int) -> tuple[int, int]:
        start, n = await self.inner.allocate(goal, count)
        self.allocated += n
        return start, n

    async def free(self, start: int, count: int) -> None:
        await self.inner.free(start, count)
        self.freed += count


class FileData:
    """Byte-level data of one inode (owned by its vnode actor)."""

    def __init__(
        self,
        i_block: bytes,
        *,
        extents: bool,
        store: BlockStore,
        allocator: BlockAllocator,
        block_size: int,
        fs_blocks: int,
        goal: int = 0,
        extent_feature: bool = True,
        fs_blocks_count: int | None = None,
    ) -> None:
        """``i_block``: the inode's 60-byte block array; ``extents``: EXT4_EXTENTS_FL is set;
        ``fs_blocks``: file-system blocks the file holds now (i_blocks without the xattr
        block); ``goal``: a block near the inode, where the first data block should go;
        ``fs_blocks_count``: the file system's size in blocks (s_blocks_count): mapping
        pointers at or past it make the file EIO instead of reaching outside the volume."""
        self._store = store
        self._alloc = _CountingAllocator(allocator)
        self.block_size = block_size
        self._base_blocks = fs_blocks
        self._goal = goal
        self._extent_feature = extent_feature
        self._blocks_count = fs_blocks_count
        self.mapping: ExtentTree | BlockMap
        if extents:
            self.mapping = ExtentTree(
                i_block, store, self._alloc, block_size, goal=goal, blocks_count=fs_blocks_count
            )
        else:
            self.mapping = BlockMap(
                i_block, store, self._alloc, block_size, blocks_count=fs_blocks_count, goal=goal
            )
        self.converted = False
        # Whether the last ``write`` changed the mapping (allocated, converted, or turned
        # unwritten extents into written ones): an overwrite in place leaves it False, and
        # the vnode then has nothing of the mapping to store.
        self.remapped = False
        # Read-ahead (see ``_read_ahead``): where a sequential reader's next read starts,
        # and how far the mapping ahead of it was announced to the store.
        self._next_read = -1
        self._announced = 0
        self._prefetch = getattr(store, "prefetch_blocks", None)
        # (lblk, pblk, bytes) of the block the last write ended in part-way, exactly as
        # that write stored it: the next write of an appending writer starts in that block
        # and takes its old bytes from here instead of reading them back. Only ``write``
        # sets it; everything else that changes blocks or the mapping clears it.
        self._tail: tuple[int, int, bytes] | None = None

    # ----- state the vnode stores back into the inode -------------------------------------

    @property
    def uses_extents(self) -> bool:
        return isinstance(self.mapping, ExtentTree)

    @property
    def i_block(self) -> bytes:
        return self.mapping.i_block

    @property
    def inode_dirty(self) -> bool:
        """i_block changed (the vnode also compares i_blocks itself)."""
        return self.mapping.root_dirty

    def clear_inode_dirty(self) -> None:
        self.mapping.root_dirty = False

    @property
    def fs_blocks(self) -> int:
        return self._base_blocks + self._alloc.allocated - self._alloc.freed

    @property
    def i_blocks(self) -> int:
        """Blocks held, in 512-byte units (without the xattr block)."""
        return self.fs_blocks * (self.block_size // 512)

    @property
    def blocks_dirty(self) -> bool:
        """Whether mapping blocks (extent tree / indirect blocks) wait for ``flush``."""
        return self.mapping.blocks_dirty

    async def flush(self) -> None:
        """Write the modified mapping blocks (extent tree / indirect blocks) back."""
        await self.mapping.flush()

    # ----- read ---------------------------------------------------------------------------

    async def read(self, offset: int, size: int, *, view: bool = False) -> bytes | memoryview:
        """``size`` bytes at ``offset`` (the caller has clamped the range to EOF).

        With ``view`` the answer may be a read-only memoryview of what the store answered
        (or of the assembly buffer) instead of a copy: for a caller that only hands the
        bytes on (a READ reply), that saves a copy of up to 1 MiB per request."""
        if size <= 0:
            return b""
        bs = self.block_size
        first = offset // bs
        last = (offset + size - 1) // bs
        if last >= LBLK_LIMIT:
            raise OSError(errno.EFBIG, "offset beyond the largest file")
        if offset != self._next_read:
            self._announced = 0  # a new stream (a reader that starts over gets hints again)
        elif self._prefetch is not None:
            await self._read_ahead(offset + size)
        self._next_read = offset + size
        runs = await self.mapping.map(first, last - first + 1)
        groups = _device_groups(runs, _holds_data)
        skip = offset - first * bs
        if len(groups) == 1 and groups[0][0] == first and groups[0][2] == last - first + 1:
            # The whole range is one physical run: no assembly buffer.
            data = await self._store.read_blocks(groups[0][1], groups[0][2])
            if type(data) is bytes and skip == 0 and len(data) == size:
                return data
            if view:
                return memoryview(data)[skip : skip + size].toreadonly()
            return bytes(memoryview(data)[skip : skip + size])
        out = bytearray((last - first + 1) * bs)
        for lblk, pblk, n in groups:
            data = await self._store.read_blocks(pblk, n)
            pos = (lblk - first) * bs
            out[pos : pos + n * bs] = data
        if view:
            return memoryview(out)[skip : skip + size].toreadonly()
        return bytes(memoryview(out)[skip : skip + size])

    async def _read_ahead(self, pos: int) -> None:
        """A sequential reader has reached ``pos``: keep the next READ_AHEAD bytes of the
        file announced to the store (``prefetch_blocks``, a hint), in pieces of at least
        READ_AHEAD_STEP, so the device has them in flight before they are asked for."""
        target = pos + READ_AHEAD
        start = max(self._announced, pos)
        if target - start < READ_AHEAD_STEP:
            return
        self._announced = target
        bs = self.block_size
        first = start // bs
        last = min((target - 1) // bs, LBLK_LIMIT - 1)
        if last < first:
            return
        for _lblk, pblk, n in _device_groups(
            await self.mapping.map(first, last - first + 1), _holds_data
        ):
            await self._prefetch(pblk, n)

    # ----- write --------------------------------------------------------------------------

    async def _writable(self) -> ExtentTree | BlockMap:
        """The mapping to write through: block-mapped files become extent files on images
        with the extent feature, and are written in place on the others (ext2/ext3)."""
        if isinstance(self.mapping, BlockMap) and self._extent_feature:
            await self._convert()
        return self.mapping

    async def _convert(self) -> None:
        """Rebuild a block-mapped file as an extent tree; free its indirect blocks."""
        self._tail = None
        old = self.mapping
        assert isinstance(old, BlockMap)
        runs = [r for r in await old.map(0, old.limit) if r.physical is not None]
        tree = ExtentTree(
            ExtentTree.empty_root(),
            self._store,
            self._alloc,
            self.block_size,
            goal=self._goal,
            blocks_count=self._blocks_count,
        )
        try:
            for r in runs:
                await tree.insert(r.logical, r.physical, r.length)
        except OSError:
            # Give back the tree blocks of the half-built tree; the old map is untouched.
            for blk in await tree.tree_blocks():
                await self._alloc.free(blk, 1)
            raise
        for blk in sorted(await old.indirect_blocks()):
            await self._alloc.free(blk, 1)
        tree.root_dirty = True
        self.mapping = tree
        self.converted = True
        self.remapped = True

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, size: int | None = None
    ) -> int:
        """Write ``data`` at ``offset``; returns the number of bytes written.

        ``size`` is the file size before the write: when the write starts past EOF, the
        rest of the old last block is zeroed (the gap reads as zeros), and an edge block
        that ends the file is zero past the new EOF. If the device fills
        up part-way, the bytes whose blocks could be allocated are written and their count
        returned (a short write); ENOSPC is raised only when nothing could be written.
        """
        self.remapped = False
        # The last block the previous write left partly written (see ``_tail``): taken
        # now, so that any failure below leaves no cache behind.
        tail = self._tail
        self._tail = None
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = len(mv)
        if n == 0:
            return 0
        bs = self.block_size
        end = offset + n
        first = offset // bs
        last = (end - 1) // bs
        if last >= LBLK_LIMIT:
            raise OSError(errno.EFBIG, "file too large")
        tree = self.mapping
        if type(tree) is not ExtentTree:
            tree = await self._writable()
            if isinstance(tree, BlockMap) and last >= tree.limit:
                raise OSError(errno.EFBIG, "file too large for a block map")
        if size is not None and offset > size and size % bs and size // bs < first:
            await self._zero_range(size, bs - size % bs)
        runs = await tree.map(first, last - first + 1)
        if len(runs) == 1 and not (offset % bs or end % bs):
            r = runs[0]
            if r.physical is not None and not r.unwritten:
                # Whole blocks over written ones of one extent (an overwrite in place):
                # one device write, nothing to read, allocate or convert.
                await self._store.write_blocks(r.physical, mv)
                return n

        # Edge blocks that are only partly overwritten keep their old bytes before the old
        # EOF (read now, before any allocation reshapes the tree); the rest of them, new
        # blocks and unwritten ones start as zeros: the gap between the old EOF and the
        # write and the tail past the new EOF read as zeros, whatever another writer left
        # there. ``edges``: lblk -> (the old bytes, how many of them to keep). The block
        # the previous write ended in is taken from ``tail`` when it is still mapped where
        # that write put it: an appending writer's next write reads nothing.
        edges: dict[int, tuple[bytes | memoryview, int]] = {}
        if offset % bs:
            await self._edge(edges, runs, first, size, tail)
        if end % bs and last not in edges:
            await self._edge(edges, runs, last, size, tail)

        segs: list[Run] = []
        short_at: int | None = None
        for r in runs:
            if r.physical is not None:
                segs.append(r)
                continue
            lblk, left = r.logical, r.length
            while left:
                try:
                    goal = await tree.goal_for(lblk)
                    start, got = await self._alloc.allocate(goal, left)
                    self.remapped = True
                    try:
                        await tree.insert(lblk, start, got)
                    except OSError:
                        await self._alloc.free(start, got)
                        raise
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    short_at = lblk
                    break
                segs.append(Run(lblk, start, got))
                lblk += got
                left -= got
            if short_at is not None:
                break
        if short_at is not None:
            if short_at * bs <= offset:
                raise OSError(errno.ENOSPC, "no space left on device")
            end = short_at * bs
            last = short_at - 1
            mv = mv[: end - offset]

        new_tail: tuple[int, int, bytes] | None = None
        for lblk, pblk, cnt in _device_groups(segs):
            lo = lblk * bs
            hi = (lblk + cnt) * bs
            if lo >= offset and hi <= end:
                await self._store.write_blocks(pblk, mv[lo - offset : hi - offset])
                continue
            buf = bytearray(cnt * bs)
            for e in (first, last):
                if lblk <= e < lblk + cnt and e in edges:
                    old, keep = edges[e]
                    p = (e - lblk) * bs
                    buf[p : p + keep] = old if keep == bs else memoryview(old)[:keep]
            a = max(lo, offset)
            b = min(hi, end)
            buf[a - lo : b - lo] = mv[a - offset : b - offset]
            await self._store.write_blocks(pblk, buf)
            if end % bs and lblk <= last < lblk + cnt:
                p = (last - lblk) * bs
                new_tail = (last, pblk + (last - lblk), bytes(buf[p : p + bs]))

        # Written unwritten extents become initialized.
        for r in runs:
            if r.physical is not None and r.unwritten and r.logical <= last:
                assert isinstance(tree, ExtentTree)  # only extents can be unwritten
                self.remapped = True
                await tree.mark_written(r.logical, min(r.length, last + 1 - r.logical))
        self._tail = new_tail
        return end - offset

    async def _edge(
        self,
        edges: dict[int, tuple[bytes | memoryview, int]],
        runs: list[Run],
        lblk: int,
        size: int | None,
        tail: tuple[int, int, bytes] | None,
    ) -> None:
        """Record the old bytes of partly overwritten edge block ``lblk`` that stay (those
        before the old EOF), if it holds written data."""
        bs = self.block_size
        keep = bs if size is None else min(max(size - lblk * bs, 0), bs)
        if not keep:
            return
        r = _run_at(runs, lblk)
        if r.physical is None or r.unwritten:
            return
        pblk = r.physical + (lblk - r.logical)
        if tail is not None and tail[0] == lblk and tail[1] == pblk:
            edges[lblk] = (tail[2], keep)
        else:
            edges[lblk] = (await self._store.read_blocks(pblk, 1), keep)

    def drop_tail(self) -> None:
        """Forget the cached last block (the writer is gone: keep no block per idle file)."""
        self._tail = None

    # ----- truncate / punch ---------------------------------------------------------------

    async def _zero_range(self, offset: int, length: int) -> None:
        """Zero bytes in place inside one block, if that block is mapped and written."""
        self._tail = None
        bs = self.block_size
        lblk = offset // bs
        r = (await self.mapping.map(lblk, 1))[0]
        if r.physical is None or r.unwritten:
            return
        block = bytearray(await self._store.read_blocks(r.physical, 1))
        a = offset - lblk * bs
        block[a : a + length] = bytes(length)
        await self._store.write_blocks(r.physical, block)

    async def truncate(self, old_size: int, new_size: int) -> None:
        """Change the size from ``old_size`` to ``new_size``.

        Down: blocks wholly past the new EOF are freed, the tail of the new last block is
        zeroed on disk. Up: nothing is allocated (the new range is a hole); the tail of the
        old last block is zeroed in case another writer left bytes there.
        """
        self._tail = None
        bs = self.block_size
        if new_size < 0:
            raise OSError(errno.EINVAL, "negative size")
        if (new_size + bs - 1) // bs > LBLK_LIMIT:
            raise OSError(errno.EFBIG, "file too large")
        if new_size < old_size:
            await self.mapping.remove((new_size + bs - 1) // bs)
            if new_size % bs:
                await self._zero_range(new_size, bs - new_size % bs)
        elif new_size > old_size and old_size % bs:
            await self._zero_range(old_size, bs - old_size % bs)

    async def punch_hole(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, freeing the whole blocks inside."""
        self._tail = None
        if length <= 0:
            return
        bs = self.block_size
        end = offset + length
        first_whole = (offset + bs - 1) // bs
        end_whole = end // bs
        tree = await self._writable()
        if first_whole >= end_whole:
            # Inside one block, or across one block boundary with no whole block between.
            if offset // bs == (end - 1) // bs:
                await self._zero_range(offset, length)
            else:
                await self._zero_range(offset, first_whole * bs - offset)
                await self._zero_range(end_whole * bs, end - end_whole * bs)
            return
        if offset % bs:
            await self._zero_range(offset, first_whole * bs - offset)
        if end % bs:
            await self._zero_range(end_whole * bs, end - end_whole * bs)
        await tree.remove(first_whole, end_whole - first_whole)


def _holds_data(r: Run) -> bool:
    return r.physical is not None and not r.unwritten


def _run_at(runs: list[Run], lblk: int) -> Run:
    for r in runs:
        if r.logical <= lblk < r.logical + r.length:
            return r
    raise AssertionError("block outside the mapped range")


def _device_groups(runs: list[Run], take=None) -> list[tuple[int, int, int]]:
    """Merge logically adjacent, physically contiguous runs into (lblk, pblk, count)
    (only the runs ``take`` accepts, when given)."""
    out: list[tuple[int, int, int]] = []
    for r in runs:
        if r.physical is None or (take is not None and not take(r)):
            continue
        if out:
            lb, pb, n = out[-1]
            if lb + n == r.logical and pb + n == r.physical:
                out[-1] = (lb, pb, n + r.length)
                continue
        out.append((r.logical, r.physical, r.length))
    return out
