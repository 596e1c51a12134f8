"""The superblock actor: superblock, group descriptor table, global counters, mount state.

``SuperblockState`` is the plain state (unit-testable); ``SuperblockActor`` serves it
through ``chanos.fs.superblock_protocol``.

Who is authoritative for what:
- per-group free-block / free-inode / used-directory counts belong to the group actors;
  they send ``GroupCountsChanged`` (absolute values) at the end of each turn that
  changed them, and this actor copies them into its descriptor table. The global free
  counts in the superblock are always the sums of the per-group counts, as the kernel
  keeps them.
- everything else in the superblock and the descriptors (locations, flags, features) is
  read at mount and only written back, never changed, except: ``s_state`` (not clean
  while mounted read-write; the mount-time state restored at unmount, plus ERROR_FS when
  an inconsistency was found), ``s_mnt_count`` (+1 per read-write mount), ``s_mtime`` (at
  mount), ``s_wtime`` (at every superblock write), ``s_last_orphan``, and the error
  fields (``s_error_count``, first/last error time, inode, block, function).

Sync writes the primary superblock and the primary descriptor-table blocks whose
descriptors changed. Backup superblocks and backup descriptor tables are not rewritten:
e2fsck compares backups with the primary only for geometry and features, which chanos
never changes, and the kernel likewise leaves them alone in normal operation.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from chanos.fs.format.group_desc import GroupDesc
from chanos.fs.format.superblock import (
    STATE_ERROR,
    STATE_VALID,
    SUPERBLOCK_OFFSET,
    Superblock,
)
from chanos.fs.group_protocol import GroupCounts
from chanos.fs.superblock_protocol import (
    GetGroupCounts,
    GetLastOrphan,
    GroupCountsChanged,
    IsReadOnly,
    ReportError,
    SetLastOrphan,
    StatFs,
    Sync,
    Unmount,
)
from chanos.personality import Actor
from chanos.personality.syscalls import FsStat

log = logging.getLogger(__name__)

NAME_MAX = 255


class BlockIO(Protocol):
    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> None: ...


def _set_time(sb: Superblock, field: str, t: int) -> None:
    """Set a 40-bit superblock timestamp (low 32 bits + ``<field>_hi`` byte)."""
    setattr(sb, field, t & 0xFFFFFFFF)
    setattr(sb, field + "_hi", (t >> 32) & 0xFF)


def overhead_blocks(sb: Superblock, descs: Sequence[GroupDesc]) -> int:
    """Blocks the file system itself uses (as statfs leaves out of f_blocks).

    The s_overhead_clusters value when mke2fs recorded one; otherwise the kernel's sum:
    superblock/descriptor copies and reserved GDT blocks, bitmaps and inode tables of
    every group, and the internal journal.
    """
    if sb.overhead_clusters:
        return sb.overhead_clusters
    total = 0
    for g in range(sb.group_count):
        total += sb.group_super_overhead(g)
        if g == 0 and sb.first_data_block:
            total += sb.first_data_block  # block 0 before a 1 KiB volume's superblock
    total += len(descs) * (2 + sb.inode_table_blocks)
    if sb.journal_inum and sb.jnl_backup_type == 1:
        size = int.from_bytes(sb.jnl_blocks[64:68], "little") | (
            int.from_bytes(sb.jnl_blocks[60:64], "little") << 32
        )
        total += size // sb.block_size
    return total


class SuperblockState:
    """The superblock, the descriptor table and the mount state of one mounted volume."""

    def __init__(
        self,
        sb: Superblock,
        descs: list[GroupDesc],
        gdt_raw: bytes,
        device: BlockIO,
        *,
        read_only: bool,
        mount_state: int,
        clock: Any = time.time,
    ) -> None:
        self.sb = sb
        self.descs = descs
        self.gdt = bytearray(gdt_raw)  # the primary table's blocks, exactly as on disk
        self.device = device
        self.read_only = read_only
        self.mount_state = mount_state  # s_state when mounted: restored at unmount
        self.clock = clock
        self.errors_seen = False
        self._dirty_groups: set[int] = set()
        self._sb_dirty = False
        self._counts: tuple[GroupCounts, ...] | None = None
        # Running sums of the per-group counts (the superblock's global free counts).
        self._free_blocks = sum(d.free_blocks_count for d in descs)
        self._free_inodes = sum(d.free_inodes_count for d in descs)
        self._overhead = overhead_blocks(sb, descs)

    # -- counters -------------------------------------------------------------------------

    def group_counts(self) -> tuple[GroupCounts, ...]:
        if self._counts is None:
            self._counts = tuple(
                GroupCounts(i, d.free_blocks_count, d.free_inodes_count, d.used_dirs_count)
                for i, d in enumerate(self.descs)
            )
        return self._counts

    def set_group_counts(self, g: int, free_blocks: int, free_inodes: int, used_dirs: int) -> None:
        """Group ``g``'s new counts (absolute), as its actor reported them."""
        d = self.descs[g]
        if (
            d.free_blocks_count == free_blocks
            and d.free_inodes_count == free_inodes
            and d.used_dirs_count == used_dirs
        ):
            return
        self._free_blocks += free_blocks - d.free_blocks_count
        self._free_inodes += free_inodes - d.free_inodes_count
        d.free_blocks_count = free_blocks
        d.free_inodes_count = free_inodes
        d.used_dirs_count = used_dirs
        self._counts = None
        self._dirty_groups.add(g)
        self._sb_dirty = True

    def free_blocks(self) -> int:
        return self._free_blocks

    def free_inodes(self) -> int:
        return self._free_inodes

    def statfs(self) -> FsStat:
        sb = self.sb
        bfree = self.free_blocks()
        ffree = self.free_inodes()
        return FsStat(
            f_bsize=sb.block_size,
            f_frsize=sb.block_size,
            f_blocks=sb.blocks_count - self._overhead,
            f_bfree=bfree,
            f_bavail=max(0, bfree - sb.r_blocks_count),
            f_files=sb.inodes_count,
            f_ffree=ffree,
            f_favail=ffree,
            f_namemax=NAME_MAX,
        )

    # -- mount state, orphans, errors ----------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only file system")

    async def mark_mounted(self) -> None:
        """Read-write mount: not clean while mounted, one more mount, mount time now."""
        self._check_writable()
        now = int(self.clock())
        self.sb.state &= ~STATE_VALID
        self.sb.mnt_count = (self.sb.mnt_count + 1) & 0xFFFF
        _set_time(self.sb, "mtime", now)
        await self.write_superblock()

    async def set_last_orphan(self, ino: int) -> None:
        self._check_writable()
        if not 0 <= ino <= self.sb.inodes_count:
            raise OSError(errno.EINVAL, f"orphan list head {ino} out of range")
        self.sb.last_orphan = ino
        # Only marked dirty: the orphan chain lives in inode records (i_dtime) that reach
        # the disk only at a sync, so the head needs to be on disk only at a sync too
        # (``sync`` writes a dirty superblock with the inode tables). Writing the whole
        # superblock at every orphan add and remove was a device write per unlink.
        self._sb_dirty = True

    async def report_error(self, where: str, ino: int, block: int) -> None:
        """Record an inconsistency in the superblock, as the kernel's ext4_error does."""
        self.errors_seen = True
        if self.read_only:
            return
        sb = self.sb
        now = int(self.clock())
        func = where.encode()[:31].ljust(32, b"\0")
        sb.state |= STATE_ERROR
        sb.error_count += 1
        if not sb.first_error_time:
            _set_time(sb, "first_error_time", now)
            sb.first_error_ino = ino
            sb.first_error_block = block
            sb.first_error_func = func
        _set_time(sb, "last_error_time", now)
        sb.last_error_ino = ino
        sb.last_error_block = block
        sb.last_error_func = func
        await self.write_superblock()

    # -- writing back ---------------------------------------------------------------------------

    async def write_superblock(self) -> None:
        if self.read_only:
            return
        sb = self.sb
        sb.free_blocks_count = self.free_blocks()
        sb.free_inodes_count = self.free_inodes()
        _set_time(sb, "wtime", int(self.clock()))
        await self.device.write(SUPERBLOCK_OFFSET, sb.build())
        self._sb_dirty = False

    async def write_gdt(self) -> None:
        if self.read_only or not self._dirty_groups:
            return
        sb = self.sb
        bs = sb.block_size
        dsz = sb.group_desc_size
        blocks = set()
        for g in sorted(self._dirty_groups):
            off = g * dsz
            self.gdt[off : off + dsz] = self.descs[g].build()
            blocks.add(off // bs)
        self._dirty_groups.clear()
        # Contiguous dirty blocks go out as one write each.
        for first, count in _runs(sorted(blocks)):
            data = bytes(self.gdt[first * bs : (first + count) * bs])
            await self.device.write((sb.gdt_first_block + first) * bs, data)

    async def sync(self) -> None:
        if self.read_only:
            return
        await self.write_gdt()
        await self.write_superblock()

    async def unmount(self) -> None:
        """Restore the mount-time state (plus ERROR_FS if errors were found); write back."""
        if self.read_only:
            return
        state = self.mount_state | (self.sb.state & STATE_ERROR)
        if self.errors_seen:
            state |= STATE_ERROR
        self.sb.state = state
        await self.sync()


def _runs(sorted_ints: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted_ints:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


async def load_state(
    device: BlockIO, *, read_only: bool, mount_state: int | None = None
) -> SuperblockState:
    """Read the primary superblock and descriptor table (the volume validated them at mount).

    ``mount_state`` is s_state as found at mount time (None: as found now).
    """
    from chanos.fs.format.group_desc import parse_table

    sb = Superblock.parse(await device.read(SUPERBLOCK_OFFSET, Superblock.SIZE))
    bs = sb.block_size
    raw = await device.read(sb.gdt_first_block * bs, sb.gdt_blocks * bs)
    descs = parse_table(raw, sb.group_count, sb.group_desc_size)
    return SuperblockState(
        sb,
        descs,
        raw,
        device,
        read_only=read_only,
        mount_state=sb.state if mount_state is None else mount_state,
    )


class SuperblockActor(Actor):
    """Serves a ``SuperblockState``; see ``chanos.fs.superblock_protocol``.

    The state is made by the volume at mount and handed to every incarnation of this actor
    by its factory, so a restarted superblock actor keeps the counters, the orphan head and
    the error state (none of which can be rebuilt from the disk until the next sync).
    Every change to the state is complete before any await (a failed write leaves it
    dirty, to be written by the next sync).
    """

    def __init__(self, state: SuperblockState) -> None:
        self.state = state

    async def handle(self, msg: object) -> Any:
        st = self.state
        match msg:
            case GroupCountsChanged(group, free_blocks, free_inodes, used_dirs):
                st.set_group_counts(group, free_blocks, free_inodes, used_dirs)
                return None
            case GetGroupCounts():
                return st.group_counts()
            case StatFs():
                return st.statfs()
            case GetLastOrphan():
                return st.sb.last_orphan
            case SetLastOrphan(ino):
                return await st.set_last_orphan(ino)
            case IsReadOnly():
                return st.read_only
            case ReportError(where, ino, block):
                return await st.report_error(where, ino, block)
            case Sync():
                return await st.sync()
            case Unmount():
                return await st.unmount()
            case _:
                raise OSError(errno.ENOSYS, f"superblock: unknown message {type(msg).__name__}")
