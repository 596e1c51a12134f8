"""A directory's entries over its data blocks: lookup, add, remove, replace, iterate.

``Directory`` is owned by the vnode actor of one directory (never shared): it keeps a
name index over the directory's entries (names' hashes and positions only,
``chanos.fs.name_index``: the names stay in the blocks), the most recently used blocks
(at most ``_CACHE_BYTES``; a large directory's blocks would otherwise all stay in the
daemon's memory while its vnode lives), and two per-block hints so that an insert
neither tries every block nor scans a whole block: the largest hole (an upper bound) and
the record of the block's latest insert (which took the rest of the hole it split, so in
a directory filled in order it is where the next entry fits). A changed block is written
back at once, so a block can leave the cache at any time and be read again.
An insert tries the block of the latest insert first, from that record on; then every
block in order; a block is appended only when none has room. Record editing is the
format codec's (``chanos.fs.format.dirent``); this module decides which block an entry
goes to, keeps the index right, and writes changed blocks back through the directory's
``FileData``.

Stable offsets. The position of an entry is ``block * block_size + offset_in_block``.
The codec never moves a live record (an insert splits a record's slack, a delete merges
into the previous record), so an entry keeps its position for its whole life. ReadDir
cookies are ``position + 1`` of the last entry returned ("resume after this entry"), so
a scan resumed after any insertions and deletions returns every entry that existed for
the whole scan exactly once. 0 stays free to mean "from the start".

Htree (dir_index) directories read correctly by a linear scan: a dx_root block shows
only "." and ".." (".." spans the index), a dx_node block is one unused record. The
index is not maintained: the vnode clears EXT4_INDEX_FL before the first change, after
which the old index bytes are plain slack and the image stays valid.

Blocks that fail the codec's checks are kept aside as corrupt: their entries cannot be
found, iteration skips them, and nothing is ever inserted into them.
"""

from __future__ import annotations

import errno
import itertools
from collections import OrderedDict
from typing import Any, NamedTuple

from chanos.fs.format import dirent
from chanos.fs.format._record import CorruptError
from chanos.fs.name_index import NameIndex

_LOAD_CHUNK = 256 << 10  # bytes per read while loading a directory
_CACHE_BYTES = 256 << 10  # blocks kept per directory: all of one up to ~5,000 entries


class DirEntryInfo(NamedTuple):
    """A live entry as iteration reports it."""

    position: int  # block * block_size + offset: stable for the entry's life
    name: bytes
    inode: int
    file_type: int


def _largest_room(block: bytes | bytearray) -> int:
    """The longest record ``dirent.insert`` could place in this block (0 = none)."""
    best = 0
    for r in dirent.records(block):
        room = r.slack if r.inode else r.rec_len
        if room > best:
            best = room
    return best


class Directory:
    """The entries of one directory (see the module docstring).

    ``data`` is the directory's ``FileData`` (byte-level read/write over its blocks);
    ``nblocks`` its size in blocks; ``max_inode`` the volume's inode count (entries
    naming a larger inode make their block corrupt); ``filetype``: whether entries carry
    file types (the filetype feature). ``store`` (optional): the BlockStore under
    ``data``; with it, a changed block that is already mapped is written straight to
    its physical block (see ``_write_block``). ``cache_bytes``: how much of the
    directory's blocks to keep in memory (default ``_CACHE_BYTES``).
    """

    def __init__(
        self,
        data: Any,
        block_size: int,
        nblocks: int,
        *,
        max_inode: int,
        filetype: bool = True,
        store: Any = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.data = data
        self.store = store
        # Physical block of each logical block written straight (see ``_write_block``).
        self._physical: dict[int, int] = {}
        self.block_size = block_size
        self.nblocks = nblocks
        self.max_inode = max_inode
        self.filetype = filetype
        # Block number -> contents, least recently used first.
        self._cache: OrderedDict[int, bytearray] = OrderedDict()
        self._cache_max = max(1, (cache_bytes or _CACHE_BYTES) // block_size)
        self.corrupt: set[int] = set()
        self._index = NameIndex()
        self._dots = 0  # indexed entries named "." or ".." (see ``is_empty``)
        self._room: list[int] = []
        # Per block: offset of the record of its latest insert (0 = none known). Records
        # never move; only a delete of that very record (merged away) invalidates it.
        self._tail: list[int] = []
        self._last = 0  # block of the latest insert
        # The latest name looked for and what _entry found (None: absent), until the next
        # change: an unlink looks its name up, then removes it; a create checks that its
        # name is free, then adds it. Every change clears it before it touches a block.
        self._found: tuple[bytes, tuple[int, int, int, int] | None] | None = None

    # ----- loading ------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every block and build the index (the last blocks read stay cached)."""
        bs = self.block_size
        # In reads of at most _LOAD_CHUNK bytes: one read of a large directory would hold
        # it whole at the peak.
        per_read = max(1, _LOAD_CHUNK // bs)
        self._found = None
        self._cache.clear()
        self._index.clear()
        self._dots = 0
        self._room = [0] * self.nblocks
        self._tail = [0] * self.nblocks
        self._last = 0
        self.corrupt.clear()
        for first in range(0, self.nblocks, per_read):
            n = min(per_read, self.nblocks - first)
            mv = memoryview(await self.data.read(first * bs, n * bs))
            for i in range(n):
                block = bytearray(mv[i * bs : (i + 1) * bs])
                self._keep(first + i, block)
                await self._index_block(first + i, block)

    async def _index_block(self, i: int, block: bytearray) -> None:
        try:
            recs = dirent.live_entries(block, self.max_inode)
            room = _largest_room(block)
        except CorruptError:
            self.corrupt.add(i)
            self._room[i] = 0
            return
        base = i * self.block_size
        for r in recs:
            # A name present twice (a damaged image) resolves to its first occurrence.
            if await self._entry(r.name) is None:
                self._indexed(r.name, base + r.offset)
        self._room[i] = room

    def _indexed(self, name: bytes, position: int) -> None:
        self._found = None  # (loading asks _entry about each name before indexing it)
        self._index.add(name, position)
        if name == b"." or name == b"..":
            self._dots += 1

    def _keep(self, i: int, block: bytearray) -> None:
        cache = self._cache
        cache[i] = block
        if len(cache) > self._cache_max:
            cache.popitem(last=False)

    async def _block(self, i: int) -> bytearray:
        """Block ``i``, from the cache or read again (it was written back when changed)."""
        block = self._cache.get(i)
        if block is not None:
            self._cache.move_to_end(i)
            return block
        bs = self.block_size
        data = await self.data.read(i * bs, bs)
        if len(data) != bs:
            raise OSError(errno.EIO, f"directory block {i}: short read")
        block = bytearray(data)
        self._keep(i, block)
        return block

    async def _entry(self, name: bytes) -> tuple[int, int, int, int] | None:
        """(block, offset, inode, file_type) of entry ``name``, or None."""
        found = self._found
        if found is not None and found[0] == name:
            return found[1]
        bs = self.block_size
        w = None
        for p in list(self._index.positions(name)):
            i, off = divmod(p, bs)
            ino, ft, stored = dirent.entry_at(await self._block(i), off)
            if stored == name:
                w = (i, off, ino, ft)
                break
        self._found = (name, w)
        return w

    @property
    def size(self) -> int:
        """The directory's i_size."""
        return self.nblocks * self.block_size

    # ----- queries --------------------------------------------------------------------------

    async def lookup(self, name: bytes) -> tuple[int, int] | None:
        """(inode, file_type) of entry ``name``, or None."""
        w = await self._entry(name)
        return None if w is None else (w[2], w[3])

    def __len__(self) -> int:
        """Number of live entries, "." and ".." included."""
        return len(self._index)

    def is_empty(self) -> bool:
        """Only "." and ".." (or less, in a damaged directory) are left."""
        return len(self._index) == self._dots and not self.corrupt

    async def dotdot(self) -> int:
        """The parent recorded in ".." (0 when block 0 is missing or damaged)."""
        if not self.nblocks or 0 in self.corrupt:
            return 0
        try:
            return dirent.dotdot_inode(await self._block(0))
        except CorruptError:
            return 0

    async def entries(self, position: int = 0, limit: int = 0) -> list[DirEntryInfo]:
        """Live entries at stable positions >= ``position``, in order (at most ``limit``,
        0 = all)."""
        bs = self.block_size
        out: list[DirEntryInfo] = []
        for i in range(max(0, position // bs), self.nblocks):
            if i in self.corrupt:
                continue
            base = i * bs
            for r in dirent.records(await self._block(i)):
                if r.inode and base + r.offset >= position:
                    out.append(DirEntryInfo(base + r.offset, r.name, r.inode, r.file_type))
                    if limit and len(out) >= limit:
                        return out
        return out

    # ----- changes --------------------------------------------------------------------------

    async def _write_block(self, i: int, block: bytearray) -> None:
        """Write ``block``, block ``i``, after a change.

        Every entry change rewrites one block that is already part of the directory, so
        with a store its physical block is looked up once and the block written there:
        a directory's blocks never move while it lives (it only grows; its blocks are
        freed only with the inode, and this object with them). A hole or an unwritten
        extent (a damaged or foreign image) goes through the file data as before.
        """
        pblk = self._physical.get(i)
        if pblk is None and self.store is not None:
            run = (await self.data.mapping.map(i, 1))[0]
            if run.physical is not None and not run.unwritten:
                pblk = self._physical[i] = run.physical
        if pblk is not None:
            await self.store.write_blocks(pblk, block)
            return
        bs = self.block_size
        await self.data.write(i * bs, block, size=self.size)

    async def add(self, name: bytes, ino: int, file_type: int) -> int:
        """Add ``name`` -> ``ino``; returns its position. EEXIST if present.

        Goes into the first block with room; otherwise a new block is appended (ENOSPC
        from the allocator leaves the directory unchanged).
        """
        dirent.check_name(name)
        if await self._entry(name) is not None:
            raise OSError(errno.EEXIST, f"{name!r} exists")
        self._found = None
        ft = file_type if self.filetype else 0
        need = dirent.rec_len_for(len(name))
        last = self._last
        order = range(self.nblocks)
        if 0 < last < self.nblocks:
            order = itertools.chain((last,), order)
        for i in order:
            if self._room[i] < need or i in self.corrupt:
                continue
            block = await self._block(i)
            off = self._insert(i, block, ino, name, ft)
            if off is None:  # the hint was stale; recompute and go on
                self._room[i] = _largest_room(block)
                continue
            try:
                await self._write_block(i, block)
            except OSError:
                dirent.delete(block, off)
                self._tail[i] = 0
                raise
            # The hint stays an upper bound (an insert only shrinks holes); it is
            # made exact again when an insert finds the block fuller than hinted.
            self._tail[i] = off
            self._last = i
            self._indexed(name, i * self.block_size + off)
            return i * self.block_size + off
        # No room anywhere: a new block at the end.
        i = self.nblocks
        block = dirent.empty_block(self.block_size)
        off = dirent.insert(block, ino, name, ft)
        assert off is not None
        await self.data.write(i * self.block_size, block, size=self.size)
        self._keep(i, block)
        self._room.append(_largest_room(block))
        self._tail.append(off)
        self._last = i
        self.nblocks += 1
        self._indexed(name, i * self.block_size + off)
        return i * self.block_size + off

    def _insert(self, i: int, block: bytearray, ino: int, name: bytes, ft: int) -> int | None:
        """Insert into ``block``, block ``i``: first into the records from its latest
        insert on (the codec's first fit over that tail of the block, which is itself a
        valid record chain), then, if they are full, first fit over the whole block."""
        t = self._tail[i]
        if t and len(block) < 65536:  # (huge blocks encode rec_len by block size)
            off = dirent.insert(memoryview(block)[t:], ino, name, ft)
            if off is not None:
                return t + off
        return dirent.insert(block, ino, name, ft)

    async def remove(self, name: bytes, expect_ino: int = 0) -> tuple[int, int]:
        """Remove ``name``; returns (inode, file_type) it named. ENOENT if absent (or, with
        ``expect_ino``, naming another inode)."""
        w = await self._entry(name)
        if w is None or (expect_ino and w[2] != expect_ino):
            raise OSError(errno.ENOENT, f"no entry {name!r}")
        self._found = None
        i, off, ino, ft = w
        block = await self._block(i)
        saved = bytes(block)
        gone = dirent.delete(block, off)
        try:
            await self._write_block(i, block)
        except OSError:
            block[:] = saved
            raise
        self._index.remove(name, i * self.block_size + off)
        if name == b"." or name == b"..":
            self._dots -= 1
        if self._tail[i] == off:
            self._tail[i] = 0  # merged into the previous record: no longer one
        # The merged hole is at most the old bound plus the freed record: still a bound.
        self._room[i] = min(self.block_size, self._room[i] + gone.rec_len)
        return ino, ft

    async def replace(
        self, name: bytes, ino: int, file_type: int, expect_ino: int = 0
    ) -> tuple[int, int]:
        """Point existing ``name`` at ``ino``; returns the old (inode, file_type)."""
        w = await self._entry(name)
        if w is None or (expect_ino and w[2] != expect_ino):
            raise OSError(errno.ENOENT, f"no entry {name!r}")
        self._found = None
        i, off, old_ino, old_ft = w
        ft = file_type if self.filetype else 0
        block = await self._block(i)
        dirent.set_entry(block, off, ino, ft)
        try:
            await self._write_block(i, block)
        except OSError:
            dirent.set_entry(block, off, old_ino, old_ft)
            raise
        return old_ino, old_ft

    async def set_dotdot(self, parent: int) -> None:
        """Rewrite ".." to name ``parent`` (a directory moved to another parent)."""
        if not self.nblocks or 0 in self.corrupt:
            raise OSError(errno.EIO, "directory block 0 is damaged")
        self._found = None
        block = await self._block(0)
        dirent.set_dotdot(block, parent)
        await self._write_block(0, block)


def first_block(block_size: int, ino: int, parent: int, filetype: bool = True) -> bytearray:
    """The first block of a new directory ("." and "..")."""
    return dirent.new_dir_block(block_size, ino, parent, filetype)
