"""One block group of the volume: its block bitmap, inode bitmap and inode-table slice.

``BlockGroup`` is the plain state machine (loadable, unit-testable without actors);
``BlockGroupActor`` serves it through the messages of ``chanos.fs.group_protocol``. The
actor is the only writer of its bitmaps and of its inode-table blocks, so its in-memory
copies and its inode-table block cache are always coherent with the device.

Durability and restarts: bitmaps and inode-table blocks are written back. ``WriteInode``
changes the cached inode-table block and marks it dirty; dirty blocks and bitmaps reach the
device on ``Sync`` (the volume syncs every group on fsync, sync and unmount), when the
actor stops, and, for an inode-table block, before it is evicted from the cache. With
``write_through=True`` every bitmap change and every inode record is written before the
reply instead, and a failed write is undone in memory. A crashed group actor is restarted
with the same ``BlockGroup`` (see ``BlockGroupActor``) and keeps its bitmaps and its dirty
inode-table blocks, so it can never hand out a block or an inode twice, nor forget an
inode record it acknowledged, because unsaved state was lost.

Bitmaps are kept as bytearrays in ext4's own layout (bit i = block ``group_start + i`` /
inode ``group * inodes_per_group + i + 1``, bit i of byte i // 8), each with a "busy" twin
that also has the never-allocated bits set. Setting, clearing or testing a run touches only
its own bytes (a 32,768-bit integer was rebuilt whole by every change, several times per
allocation); the common searches are C scans for the first byte that is not 0xFF, started
at a per-bitmap hint below which every byte is full. Only a multi-block run search whose
goal is taken turns the bitmap into one integer (``int.from_bytes(raw, "little")`` has
exactly ext4's bit order) and searches it with a handful of big-integer operations.
"""

from __future__ import annotations

import errno
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from chanos.fs.group_protocol import (
    AllocBlocks,
    AllocInode,
    FreeBlocks,
    FreeInode,
    GetCounts,
    GroupCounts,
    ReadInode,
    ReadInodes,
    Sync,
    WriteInode,
)
from chanos.fs.superblock_protocol import GroupCountsChanged, ReportError
from chanos.personality import Actor, CallError, call, cast
from chanos.personality.actor import caller_cancelled

log = logging.getLogger(__name__)

# The in-memory state one bitmap mutation changes, restored if its write-through fails
# (the bytearrays are copied by ``_snapshot``).
_UNDO_FIELDS = (
    "_bmap",
    "_imap",
    "_bbusy",
    "_ibusy",
    "_bhint",
    "_ihint",
    "free_blocks",
    "free_inodes",
    "used_dirs",
    "_bmap_dirty",
    "_imap_dirty",
)
_undo_state = attrgetter(*_UNDO_FIELDS)

#: bg_flags bits (ext4): inode table / bitmaps not initialised (only with group checksums).
BG_INODE_UNINIT = 0x1
BG_BLOCK_UNINIT = 0x2

#: Bytes of inode-table blocks kept in memory per group at most (4096 inodes of 256 bytes):
#: enough that the inodes of recently active files are rewritten without a device read.
ITABLE_CACHE_BYTES = 1 << 20
#: ... and for all groups together: the mount divides this among its groups (each keeps at
#: least one block), so the cache does not grow with the image's size.
ITABLE_CACHE_TOTAL = 4 << 20


class BlockIO(Protocol):
    """What a group needs from the device: the ``chanos.drivers.BlockDevice`` client."""

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class GroupLayout:
    """Where one group's pieces are (absolute block numbers) and the volume geometry."""

    index: int
    first_block: int  # absolute number of the group's first block (bit 0 of its bitmap)
    nblocks: int  # blocks in this group (the last group may be short)
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    block_size: int
    inodes_per_group: int
    inode_size: int
    first_ino: int  # first non-reserved inode number (s_first_ino)
    flags: int = 0  # bg_flags
    # Metadata lying in this group (sb/GDT copies, reserved GDT, bitmaps and inode tables
    # of any group under flex_bg) as absolute (start, count) runs: never allocated, never
    # freed, whatever the bitmap says.
    protected: tuple[tuple[int, int], ...] = ()

    @property
    def first_ino_of_group(self) -> int:
        return self.index * self.inodes_per_group + 1


#: A byte with at least one zero (free) bit.
_NOT_FULL = re.compile(rb"[^\xff]")


def _lowest_zero(b: int) -> int:
    """Index of the lowest clear bit of the byte b != 0xFF."""
    return (~b & (b + 1)).bit_length() - 1


def _get_bits(ba: bytes | bytearray, start: int, n: int) -> int:
    """Bits start .. start+n-1 of the bitmap ``ba`` as an integer (bit 0 = bit ``start``)."""
    lo = start >> 3
    if n == 1:
        return ba[lo] >> (start & 7) & 1
    return (int.from_bytes(ba[lo : (start + n + 7) >> 3], "little") >> (start & 7)) & ((1 << n) - 1)


def _set_bits(ba: bytearray, start: int, n: int, value: bool) -> None:
    """Set (``value``) or clear bits start .. start+n-1 of ``ba``, rewriting only their bytes."""
    lo = start >> 3
    if n == 1:
        if value:
            ba[lo] |= 1 << (start & 7)
        else:
            ba[lo] &= ~(1 << (start & 7))
        return
    hi = (start + n + 7) >> 3
    v = int.from_bytes(ba[lo:hi], "little")
    mask = ((1 << n) - 1) << (start & 7)
    v = v | mask if value else v & ~mask
    ba[lo:hi] = v.to_bytes(hi - lo, "little")


def _lowest_bit(x: int) -> int:
    """Index of the lowest set bit of x > 0."""
    return (x & -x).bit_length() - 1


def _run_starts(free: int, k: int) -> int:
    """Bit i set iff bits i .. i+k-1 of ``free`` are all set."""
    x = free
    have = 1
    while have < k and x:
        s = min(have, k - have)
        x &= x >> s
        have += s
    return x


def _first_at_or_after(x: int, pos: int) -> int | None:
    """Lowest set bit of x at index >= pos, else the lowest set bit overall (wrap), else None."""
    if not x:
        return None
    y = x >> pos
    if y:
        return pos + _lowest_bit(y)
    return _lowest_bit(x)


class BlockGroup:
    """The state of one block group, with its device I/O. Not thread/task-safe by design:
    exactly one actor drives it, one message at a time."""

    def __init__(
        self,
        layout: GroupLayout,
        device: BlockIO,
        *,
        used_dirs: int,
        read_only: bool = False,
        write_through: bool = False,
        on_counts: Callable[[int, int, int, int], None] | None = None,
        on_error: Callable[[str, int, int], None] | None = None,
        itable_cache_bytes: int = ITABLE_CACHE_BYTES,
    ) -> None:
        self.layout = layout
        self.device = device
        self.read_only = read_only
        self.write_through = write_through
        self._on_counts = on_counts
        self._on_error = on_error
        self.used_dirs = used_dirs
        self.free_blocks = 0
        self.free_inodes = 0
        self._bmap = bytearray()  # the on-disk bitmaps (set at load)
        self._imap = bytearray()
        # The same with the never-allocated bits set: what the searches look at.
        self._bbusy = bytearray()
        self._ibusy = bytearray()
        # Every byte of the busy bitmap before the hint is 0xFF (all used): searches from
        # the group's start (a new file's first block, the lowest free inode) begin there.
        self._bhint = 0
        self._ihint = 0
        self._bmap_dirty = False
        self._imap_dirty = False
        self._nbits = layout.block_size * 8
        self._full = (1 << self._nbits) - 1
        self._blocks_mask = (1 << layout.nblocks) - 1
        self._inodes_mask = (1 << layout.inodes_per_group) - 1
        # Bits never handed out: padding past the group's end, protected metadata,
        # reserved inodes (group 0).
        self._bnever = self._full ^ self._blocks_mask
        for start, count in layout.protected:
            lo = max(start - layout.first_block, 0)
            hi = min(start + count - layout.first_block, layout.nblocks)
            if hi > lo:
                self._bnever |= ((1 << (hi - lo)) - 1) << lo
        self._inever = self._full ^ self._inodes_mask
        reserved = min(
            max(layout.first_ino - layout.first_ino_of_group, 0), layout.inodes_per_group
        )
        self._inever |= (1 << reserved) - 1
        self._bnever_raw = self._bnever.to_bytes(layout.block_size, "little")
        self._inever_raw = self._inever.to_bytes(layout.block_size, "little")
        self._itable: OrderedDict[int, bytearray] = OrderedDict()
        self._itable_max = max(itable_cache_bytes // layout.block_size, 1)
        # Cached inode-table blocks changed since they were last written (write-back).
        self._itable_dirty: set[int] = set()
        self._logged: set[str] = set()
        self.loaded = False

    # -- loading and writing back ----------------------------------------------------------

    async def load(self) -> None:
        """Read both bitmaps and compute the exact free counts from them."""
        lay = self.layout
        bs = lay.block_size
        if lay.flags & BG_BLOCK_UNINIT:
            # Only possible with group checksums (a read-only mount for us): treat every
            # block as free except the group's own metadata.
            bmap = self._bnever
        else:
            bmap = int.from_bytes(await self.device.read(lay.block_bitmap * bs, bs), "little")
        if lay.flags & BG_INODE_UNINIT:
            imap = self._full ^ self._inodes_mask
        else:
            imap = int.from_bytes(await self.device.read(lay.inode_bitmap * bs, bs), "little")
        self._bmap = bytearray(bmap.to_bytes(bs, "little"))
        self._imap = bytearray(imap.to_bytes(bs, "little"))
        self._bbusy = bytearray((bmap | self._bnever).to_bytes(bs, "little"))
        self._ibusy = bytearray((imap | self._inever).to_bytes(bs, "little"))
        self._bhint = self._ihint = 0
        self.free_blocks = lay.nblocks - (bmap & self._blocks_mask).bit_count()
        self.free_inodes = lay.inodes_per_group - (imap & self._inodes_mask).bit_count()
        self.loaded = True

    def drop_cache(self) -> None:
        """Forget the clean cached inode-table blocks (they are re-read on demand). Dirty
        ones are kept: they are the only copy of acknowledged inode records until written."""
        for block in [b for b in self._itable if b not in self._itable_dirty]:
            del self._itable[block]

    async def sync(self) -> GroupCounts:
        """Write back the dirty inode-table blocks and bitmaps; report and return the counts."""
        await self._write_itable()
        await self._write_bitmaps()
        if self._on_counts is not None:
            self._on_counts(self.layout.index, self.free_blocks, self.free_inodes, self.used_dirs)
        return self.counts()

    async def _write_itable(self) -> None:
        """Write the dirty inode-table blocks, adjacent ones in one device write. A block
        whose write fails stays dirty (and cached) for the next attempt."""
        if not self._itable_dirty:
            return
        bs = self.layout.block_size
        blocks = sorted(self._itable_dirty)
        i = 0
        while i < len(blocks):
            j = i + 1
            while j < len(blocks) and blocks[j] == blocks[j - 1] + 1:
                j += 1
            run = blocks[i:j]
            await self.device.write(run[0] * bs, b"".join(self._itable[b] for b in run))
            self._itable_dirty.difference_update(run)
            i = j

    async def _write_bitmaps(self) -> None:
        bs = self.layout.block_size
        if self._bmap_dirty:
            await self.device.write(self.layout.block_bitmap * bs, bytes(self._bmap))
            self._bmap_dirty = False
        if self._imap_dirty:
            await self.device.write(self.layout.inode_bitmap * bs, bytes(self._imap))
            self._imap_dirty = False

    def _snapshot(self) -> tuple[Any, ...] | None:
        """What ``_persist`` restores if the write-through fails (nothing without it)."""
        if not self.write_through:
            return None
        return tuple(bytearray(v) if type(v) is bytearray else v for v in _undo_state(self))

    async def _persist(self, before: tuple[Any, ...]) -> None:
        """Write a mutation through; if the write fails, undo the mutation in memory so the
        caller's error leaves nothing half-allocated."""
        try:
            await self._write_bitmaps()
        except Exception:
            for name, value in zip(_UNDO_FIELDS, before, strict=True):
                setattr(self, name, value)
            raise

    def _report(self) -> None:
        """Hand the new counts to ``on_counts`` (the group's actor, which sends them on)."""
        if self._on_counts is not None:
            self._on_counts(self.layout.index, self.free_blocks, self.free_inodes, self.used_dirs)

    def counts(self) -> GroupCounts:
        return GroupCounts(self.layout.index, self.free_blocks, self.free_inodes, self.used_dirs)

    # -- errors ------------------------------------------------------------------------------

    def _fs_error(self, kind: str, message: str, *, ino: int = 0, block: int = 0) -> OSError:
        """An on-disk inconsistency: log once per kind, report, and return EUCLEAN."""
        text = f"group {self.layout.index}: {message}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("file-system error: %s", text)
            if self._on_error is not None:
                self._on_error(text, ino, block)
        return OSError(errno.EUCLEAN, text)

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only file system")

    # -- inodes ------------------------------------------------------------------------------

    def _inode_index(self, ino: int) -> int:
        idx = ino - self.layout.first_ino_of_group
        if not 0 <= idx < self.layout.inodes_per_group:
            raise OSError(errno.EINVAL, f"inode {ino} is not in group {self.layout.index}")
        return idx

    async def alloc_inode(self, is_dir: bool) -> int | None:
        self._check_writable()
        idx = self._find_free(self._ibusy, 0, inodes=True)
        if idx is None:
            return None
        before = self._snapshot()
        self._imap[idx >> 3] |= 1 << (idx & 7)
        self._ibusy[idx >> 3] |= 1 << (idx & 7)
        self._imap_dirty = True
        self.free_inodes -= 1
        if is_dir:
            self.used_dirs += 1
        if before is not None:
            await self._persist(before)
        self._report()
        return self.layout.first_ino_of_group + idx

    async def free_inode(self, ino: int, is_dir: bool) -> None:
        self._check_writable()
        idx = self._inode_index(ino)
        byte, bit = idx >> 3, 1 << (idx & 7)
        if self._inever_raw[byte] & bit:
            raise self._fs_error("free-reserved-inode", f"freeing reserved inode {ino}", ino=ino)
        if not self._imap[byte] & bit:
            raise self._fs_error("inode-double-free", f"inode {ino} freed twice", ino=ino)
        before = self._snapshot()
        self._imap[byte] &= ~bit
        self._ibusy[byte] &= ~bit
        if byte < self._ihint:
            self._ihint = byte
        self._imap_dirty = True
        self.free_inodes += 1
        if is_dir:
            if self.used_dirs == 0:
                self._fs_error("used-dirs-underflow", "directory count underflow", ino=ino)
            else:
                self.used_dirs -= 1
        if before is not None:
            await self._persist(before)
        self._report()

    def _inode_place(self, ino: int) -> tuple[int, int]:
        """(absolute inode-table block, byte offset inside it) of inode ``ino``."""
        idx = self._inode_index(ino)
        byte = idx * self.layout.inode_size
        bs = self.layout.block_size
        return self.layout.inode_table + byte // bs, byte % bs

    def _alone_in_block(self, idx: int) -> bool:
        """Whether every other inode sharing inode ``idx``'s table block is free."""
        per_block = self.layout.block_size // self.layout.inode_size
        first = idx - idx % per_block
        others = ((1 << per_block) - 1) & ~(1 << (idx - first))
        return not _get_bits(self._imap, first, per_block) & others

    async def _itable_block(self, block: int, fresh: bool = False) -> bytearray:
        """The cached inode-table block ``block``, read on a miss. ``fresh``: nothing in
        it is worth reading (every inode in it is free but the one about to be written
        whole), so a miss starts from zeros, as ext4's __ext4_get_inode_loc does."""
        buf = self._itable.get(block)
        if buf is not None:
            self._itable.move_to_end(block)
            return buf
        bs = self.layout.block_size
        if fresh or self.layout.flags & BG_INODE_UNINIT:
            buf = bytearray(bs)
        else:
            buf = bytearray(await self.device.read(block * bs, bs))
        self._itable[block] = buf
        if len(self._itable) > self._itable_max:
            await self._evict_one()
        return buf

    async def _evict_one(self) -> None:
        """Drop the least recently used inode-table block, writing it first if dirty. If
        that write fails the block stays cached and dirty (the cache is over its bound by
        one until a later eviction or Sync succeeds) and the error goes to the caller."""
        victim = next(iter(self._itable))
        if victim in self._itable_dirty:
            bs = self.layout.block_size
            await self.device.write(victim * bs, bytes(self._itable[victim]))
            self._itable_dirty.discard(victim)
        del self._itable[victim]

    async def read_inode(self, ino: int) -> bytes:
        block, off = self._inode_place(ino)
        buf = await self._itable_block(block)
        return bytes(buf[off : off + self.layout.inode_size])

    async def write_inode(self, ino: int, raw: bytes) -> None:
        self._check_writable()
        if not 0 < len(raw) <= self.layout.inode_size:
            raise OSError(
                errno.EINVAL,
                f"inode record of {len(raw)} bytes (inode size {self.layout.inode_size})",
            )
        idx = self._inode_index(ino)
        byte = idx * self.layout.inode_size
        bs = self.layout.block_size
        block, off = self.layout.inode_table + byte // bs, byte % bs
        # A whole record for the only inode in use in its block (a new inode in an
        # untouched block, in a create loop once every block's worth of inodes): the
        # block's other records are free, so it is not read from the device.
        buf = self._itable.get(block)
        if buf is None:
            fresh = len(raw) == self.layout.inode_size and self._alone_in_block(idx)
            buf = await self._itable_block(block, fresh)
        else:
            self._itable.move_to_end(block)  # a hit, without the coroutine of a miss
        buf[off : off + len(raw)] = raw
        if not self.write_through:
            self._itable_dirty.add(block)  # written back (Sync, eviction, stop)
            return
        # Written through: a clean cached block only ever holds what is on the device (a
        # failed write drops the block, to be read again).
        try:
            await self.device.write(block * self.layout.block_size, bytes(buf))
        except Exception:
            self._itable.pop(block, None)
            raise

    # -- blocks ------------------------------------------------------------------------------

    def _find_free(self, busy: bytearray, pos: int, *, inodes: bool) -> int | None:
        """The lowest clear bit of ``busy`` at index >= ``pos``, else the lowest clear bit
        overall (wrapping), else None. Full bytes are skipped by a C scan that starts at the
        bitmap's hint when ``pos`` lies before it (everything before the hint is in use)."""
        hint = self._ihint if inodes else self._bhint
        i = pos >> 3
        if i > hint or (i == hint and pos & 7):
            b = busy[i] | ((1 << (pos & 7)) - 1)  # bits before pos in its byte: not wanted
            if b != 0xFF:
                return (i << 3) + _lowest_zero(b)
            m = _NOT_FULL.search(busy, i + 1)
            if m is not None:
                return (m.start() << 3) + _lowest_zero(busy[m.start()])
            # Wrap: from the hint up to and including pos's byte (its bits before pos).
            m = _NOT_FULL.search(busy, hint, i + 1)
        else:
            m = _NOT_FULL.search(busy, hint)
        if m is None:
            return None
        # Every byte from the hint up to the one found was scanned and is full.
        j = m.start()
        if inodes:
            self._ihint = j
        else:
            self._bhint = j
        return (j << 3) + _lowest_zero(busy[j])

    def _search_runs(self, rel_goal: int, count: int) -> tuple[int, int]:
        """(start, n) of the first run of ``count`` free blocks from ``rel_goal`` on
        (wrapping), else of the longest free run; the group has a free block."""
        free = self._full ^ int.from_bytes(self._bbusy, "little")
        start = _first_at_or_after(_run_starts(free, count), rel_goal)
        if start is not None:
            return start, count
        # No run holds all of it: the longest run (binary search on its length).
        lo, hi = 1, count - 1  # a run of length lo exists; none of length count
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _run_starts(free, mid):
                lo = mid
            else:
                hi = mid - 1
        start = _first_at_or_after(_run_starts(free, lo), rel_goal)
        assert start is not None
        return start, lo

    async def alloc_blocks(self, goal: int, count: int) -> tuple[int, int] | None:
        self._check_writable()
        if count < 1:
            raise OSError(errno.EINVAL, f"allocation of {count} blocks")
        lay = self.layout
        busy = self._bbusy
        rel_goal = goal - lay.first_block
        if not 0 <= rel_goal < lay.nblocks:
            rel_goal = 0
        count = min(count, lay.nblocks)
        if not busy[rel_goal >> 3] >> (rel_goal & 7) & 1:
            # Goal free: extend from it (contiguous with whatever the caller has there).
            start = rel_goal
            n = min(count, self._nbits - start)
            used = _get_bits(busy, start, n)
            if used:
                n = _lowest_bit(used)
        else:
            # The first free bit from the goal (wrapping): it answers a single block (a
            # small file's first block), and a longer request when the whole run is free
            # there (a new file in a group filled from its start), without the run search.
            start = self._find_free(busy, rel_goal, inodes=False)
            if start is None:
                return None
            n = count
            if count > 1 and (start + count > self._nbits or _get_bits(busy, start, count)):
                start, n = self._search_runs(rel_goal, count)
        before = self._snapshot()
        _set_bits(self._bmap, start, n, True)
        _set_bits(busy, start, n, True)
        self._bmap_dirty = True
        self.free_blocks -= n
        if before is not None:
            await self._persist(before)
        self._report()
        return lay.first_block + start, n

    async def free_blocks_run(self, start: int, count: int) -> None:
        self._check_writable()
        lay = self.layout
        rel = start - lay.first_block
        if count < 1 or rel < 0 or rel + count > lay.nblocks:
            raise self._fs_error(
                "free-out-of-group",
                f"freeing blocks {start}+{count} outside the group",
                block=start,
            )
        if _get_bits(self._bnever_raw, rel, count):
            raise self._fs_error(
                "free-metadata", f"freeing metadata blocks in {start}+{count}", block=start
            )
        if _get_bits(self._bmap, rel, count) != (1 << count) - 1:
            raise self._fs_error(
                "block-double-free", f"blocks in {start}+{count} freed twice", block=start
            )
        before = self._snapshot()
        _set_bits(self._bmap, rel, count, False)
        _set_bits(self._bbusy, rel, count, False)
        if rel >> 3 < self._bhint:
            self._bhint = rel >> 3
        self._bmap_dirty = True
        self.free_blocks += count
        if before is not None:
            await self._persist(before)
        self._report()

    # -- introspection for tests and fsck-like checks -----------------------------------------

    def block_in_use(self, block: int) -> bool:
        rel = block - self.layout.first_block
        return bool(self._bmap[rel >> 3] >> (rel & 7) & 1)

    def inode_in_use(self, ino: int) -> bool:
        idx = self._inode_index(ino)
        return bool(self._imap[idx >> 3] >> (idx & 7) & 1)


# How far the superblock's copy of a group's free counts may trail them (see
# ``BlockGroupActor._report``): a few creates, a megabyte of 4 KiB blocks.
INODE_SLACK = 16
BLOCK_SLACK = 256


def _within_slack(sent: tuple[int, int, int, int], now: tuple[int, int, int, int]) -> bool:
    """Whether counts ``sent`` to the superblock still do for ``now``: the same directory
    count, the same full groups, free counts within the slack."""
    _, sent_blocks, sent_inodes, sent_dirs = sent
    _, blocks, inodes, dirs = now
    return (
        dirs == sent_dirs
        and (blocks == 0) == (sent_blocks == 0)
        and (inodes == 0) == (sent_inodes == 0)
        and abs(blocks - sent_blocks) < BLOCK_SLACK
        and abs(inodes - sent_inodes) < INODE_SLACK
    )


class BlockGroupActor(Actor):
    """Serves one ``BlockGroup`` through ``chanos.fs.group_protocol`` messages.

    The ``BlockGroup`` is made by the volume and handed to every incarnation of this actor
    by its factory: a restarted group actor resumes the bitmaps and the dirty inode-table
    blocks held in memory (with write-back they are the only complete copy until the next
    Sync), drops its clean cached inode-table blocks, and writes the dirty state back at
    once. Each mutation of the group
    state is validated before its first field changes and is undone if its write-through
    fails, so a crash cannot leave the state half-changed.

    ``superblock`` (an ActorRef, optional) receives ``GroupCountsChanged`` at the end of
    a turn that changed the counts, unless the counts it last received are still within
    the slack of the new ones (see ``_report``), and ``ReportError`` casts for on-disk
    inconsistencies.
    """

    def __init__(self, group: BlockGroup, *, superblock: Any = None) -> None:
        self.group = group
        self.superblock = superblock
        # The counts not yet reported (see ``_report``), and the last ones reported.
        self._counts: tuple[int, int, int, int] | None = None
        self._sent: tuple[int, int, int, int] | None = None
        if superblock is not None:
            group._on_counts = self._counts_changed
            group._on_error = _error_reporter(superblock)

    def _counts_changed(self, group: int, free_blocks: int, free_inodes: int, used: int) -> None:
        self._counts = (group, free_blocks, free_inodes, used)

    async def _report(self, exact: bool = False) -> None:
        """Send the counts the last turns changed to the superblock actor.

        Not after every change: a turn that leaves the counts the superblock holds within
        the slack of the new ones (``_within_slack``) keeps them for a later report. A
        report was a message per allocation and free (a tenth of a create's work, and of
        an unlink's forget). What the superblock's counts are used for stays exact:
        directories used, and whether a group is full (the allocator skips full groups);
        free counts trail by less than the slack. ``exact`` reports whatever is pending:
        ``Sync`` (the counts written to disk), ``GetCounts`` (``Volume.statfs`` asks every
        group first, so statfs is exact) and a (re)start.

        Called, not cast, when the superblock is idle and this turn is not cancelled: a
        cast to an idle actor spawns a task to run its turn, several times the cost of the
        inline call. The call cannot close a cycle (the superblock actor never calls a
        group); the counts are absolute, so a report that has to be cast instead changes
        nothing but the cost. The superblock's state is its own: the counts reach it only
        in a message, never by a write from this actor's turn.
        """
        counts = self._counts
        if counts is None:
            return
        if not exact and self._sent is not None and _within_slack(self._sent, counts):
            return
        self._counts = None
        self._sent = counts
        sb = self.superblock
        msg = GroupCountsChanged(*counts)
        if sb.idle and not caller_cancelled():
            try:
                await call(sb, msg)
            except CallError as exc:
                log.error("superblock failed on the counts of group %d: %r", counts[0], exc)
        else:
            cast(sb, msg)

    async def started(self) -> None:
        g = self.group
        if g.loaded:
            g.drop_cache()  # a restart: keep bitmaps and dirty blocks, re-read the rest
        else:
            await g.load()
        await g.sync()  # write back anything pending; report the exact counts
        await self._report(exact=True)

    async def handle(self, msg: object) -> Any:
        g = self.group
        match msg:
            case ReadInode(ino):
                return await g.read_inode(ino)
            case ReadInodes(inos):
                return [await g.read_inode(ino) for ino in inos]
            case WriteInode(ino, raw):
                return await g.write_inode(ino, raw)
            case AllocBlocks(goal, count):
                run = await g.alloc_blocks(goal, count)
                await self._report()
                return run
            case FreeBlocks(start, count):
                freed = await g.free_blocks_run(start, count)
                await self._report()
                return freed
            case AllocInode(is_dir, raw):
                ino = await g.alloc_inode(is_dir)
                if ino is not None and raw:
                    try:
                        await g.write_inode(ino, raw)
                    except BaseException:
                        await g.free_inode(ino, is_dir)
                        raise
                await self._report()
                return ino
            case FreeInode(ino, is_dir, raw, blocks):
                for start, count in blocks:
                    await g.free_blocks_run(start, count)
                if raw:
                    await g.write_inode(ino, raw)
                freed = await g.free_inode(ino, is_dir)
                await self._report()
                return freed
            case GetCounts():
                await self._report(exact=True)
                return g.counts()
            case Sync():
                counts = await g.sync()
                await self._report(exact=True)
                return counts
            case _:
                raise OSError(errno.ENOSYS, f"block group: unknown message {type(msg).__name__}")

    async def stopped(self) -> None:
        if self.group.loaded and not self.group.read_only:
            await self.group.sync()


def _error_reporter(superblock: Any) -> Callable[[str, int, int], None]:
    def on_error(where: str, ino: int, block: int) -> None:
        cast(superblock, ReportError(where, ino, block))

    return on_error
