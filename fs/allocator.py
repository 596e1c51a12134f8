"""Allocation policy: which group an inode or a run of blocks comes from.

The block-group actors own the bitmaps and do the bit work; this module only decides
whom to ask, as FFS and ext4 do:

- a new directory goes to a group with above-average free inodes and free blocks and
  the fewest directories (Orlov-like spreading), so unrelated trees do not crowd one group;
- a new file's inode goes to its parent directory's group, else the following groups
  that have free inodes;
- blocks come from the goal's group first (the caller passes a goal next to the file's
  last block, or the inode's group start), then the following groups, wrapping.

``Allocator`` holds no mutable state (only the volume's geometry and actor addresses), so
any number of vnode actors may use one instance at once: every decision is made from
replies of the group and superblock actors. It implements the BlockAllocator interface
(``allocate`` / ``free``) that the file-data layer consumes.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any, Protocol

from chanos.fs.group_protocol import AllocBlocks, AllocInode, FreeBlocks, FreeInode, GroupCounts
from chanos.fs.superblock_protocol import GetGroupCounts
from chanos.personality import call

ROOT_INO = 2


class _Geometry(Protocol):
    first_data_block: int
    blocks_count: int
    blocks_per_group: int
    inodes_per_group: int
    inodes_count: int
    group_count: int

    def group_of_block(self, block: int) -> int: ...

    def group_of_inode(self, ino: int) -> int: ...

    def group_first_block(self, group: int) -> int: ...


class _VolumeLike(Protocol):
    geometry: _Geometry
    groups: Sequence[Any]
    superblock: Any


class Allocator:
    """Inode and block allocation over a mounted volume's group actors."""

    def __init__(self, volume: _VolumeLike) -> None:
        self.volume = volume
        self.geo = volume.geometry
        self.groups = volume.groups
        self.superblock = volume.superblock
        self.group_of_block = self.geo.group_of_block
        self.group_of_inode = self.geo.group_of_inode
        self.group_first_block = self.geo.group_first_block

    # -- geometry helpers --------------------------------------------------------------------

    def goal_for_inode(self, ino: int) -> int:
        """Where a file's first data block should go: the start of its inode's group."""
        return self.group_first_block(self.group_of_inode(ino))

    async def group_counts(self) -> tuple[GroupCounts, ...]:
        """Every group's counts as the superblock last heard them: directories used, and
        which groups are full, exactly; free counts within the groups' report slack
        (``Volume.collect_counts`` first for exact ones)."""
        return await call(self.superblock, GetGroupCounts())

    # -- inodes ------------------------------------------------------------------------------

    async def alloc_inode(self, parent: int, is_dir: bool, raw: bytes = b"") -> int:
        """A fresh inode number for a child of directory ``parent``; OSError(ENOSPC) if none.
        ``raw``: the new inode's record, written with the allocation (see ``AllocInode``)."""
        n = self.geo.group_count
        home = self.group_of_inode(parent) if 1 <= parent <= self.geo.inodes_count else 0
        if is_dir and n > 1:
            order = self._spread_order(await self.group_counts(), home)
        else:
            ino = await call(self.groups[home], AllocInode(is_dir, raw))
            if ino is not None:
                return ino
            # The parent's group is full: the following groups that have free inodes, as
            # the superblock counts them. Asking each in turn cost a message per full
            # group on every create once a large directory had filled a few.
            counts = await self.group_counts()
            order = [(home + i) % n for i in range(1, n) if counts[(home + i) % n].free_inodes]
        for g in order:
            ino = await call(self.groups[g], AllocInode(is_dir, raw))
            if ino is not None:
                return ino
        raise OSError(errno.ENOSPC, "no free inodes")

    @staticmethod
    def _spread_order(counts: Sequence[GroupCounts], home: int) -> list[int]:
        """Groups to try for a new directory, best first (Orlov-like)."""
        n = len(counts)
        avg_inodes = sum(c.free_inodes for c in counts) / n
        avg_blocks = sum(c.free_blocks for c in counts) / n
        good = [
            c
            for c in counts
            if c.free_inodes > 0 and c.free_inodes >= avg_inodes and c.free_blocks >= avg_blocks
        ]
        # Fewest directories first; then the most free blocks; then nearest after home.
        good.sort(key=lambda c: (c.used_dirs, -c.free_blocks, (c.group - home) % n))
        first = [c.group for c in good]
        chosen = set(first)
        rest = [(home + i) % n for i in range(n) if (home + i) % n not in chosen]
        return first + rest

    async def free_inode(
        self, ino: int, is_dir: bool, raw: bytes = b"", blocks: Sequence[tuple[int, int]] = ()
    ) -> None:
        """Free inode ``ino``; ``raw``: its final record, written first (see ``FreeInode``);
        ``blocks``: runs ``(start, count)`` the file held, freed before that. Runs inside
        the inode's group travel with the inode's message, others go first on their own."""
        if not 1 <= ino <= self.geo.inodes_count:
            raise OSError(errno.EUCLEAN, f"freeing inode {ino}: out of range")
        g = self.group_of_inode(ino)
        lo, hi = self.group_first_block(g), self.group_first_block(g + 1)
        local = []
        for start, count in blocks:
            if lo <= start and start + count <= hi:
                local.append((start, count))
            else:
                await self.free(start, count)
        await call(self.groups[g], FreeInode(ino, is_dir, raw, tuple(local)))

    # -- blocks (the BlockAllocator interface) -------------------------------------------------

    async def allocate(self, goal: int, count: int) -> tuple[int, int]:
        """A contiguous run of 1..count blocks near ``goal`` -> (start, n); ENOSPC if none."""
        if count < 1:
            raise OSError(errno.EINVAL, f"allocation of {count} blocks")
        geo = self.geo
        if not geo.first_data_block <= goal < geo.blocks_count:
            goal = geo.first_data_block
        home = self.group_of_block(goal)
        run = await call(self.groups[home], AllocBlocks(goal, count))
        if run is not None:
            return run
        # The goal's group is full: the following groups that have free blocks, wrapping.
        counts = await self.group_counts()
        n = geo.group_count
        for i in range(1, n):
            g = (home + i) % n
            if counts[g].free_blocks == 0:
                continue
            run = await call(self.groups[g], AllocBlocks(self.group_first_block(g), count))
            if run is not None:
                return run
        raise OSError(errno.ENOSPC, "no free blocks")

    async def free(self, start: int, count: int) -> None:
        """Free ``count`` blocks from ``start``; the run may span groups."""
        geo = self.geo
        if count < 1:
            return
        if start < geo.first_data_block or start + count > geo.blocks_count:
            raise OSError(errno.EUCLEAN, f"freeing blocks {start}+{count}: outside the volume")
        while count:
            g = self.group_of_block(start)
            end = min(start + count, self.group_first_block(g + 1))
            await call(self.groups[g], FreeBlocks(start, end - start))
            count -= end - start
            start = end
