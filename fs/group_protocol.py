"""Messages understood by a block-group actor (chanos.fs.block_group).

One block-group actor owns one group's block bitmap, inode bitmap and slice of the inode
table. Inode numbers are ext4 inode numbers (1-based, global); block numbers are absolute
file-system block numbers. Errors come back as ``OSError``: EUCLEAN for on-disk
inconsistencies (double free, freeing metadata), EINVAL for a request outside the group,
EROFS on a read-only volume.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AllocInode:
    """Allocate a free inode in this group -> ino, or None when the group has none free.

    ``raw`` (optional): the new inode's whole record, written in the same turn (one
    message instead of AllocInode + WriteInode); if that write fails the inode is freed
    again and the error raised."""

    is_dir: bool = False
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class FreeInode:
    """Mark inode ``ino`` free (its record is left as the caller last wrote it) -> None.

    ``raw`` (optional): the freed inode's final record, written first in the same turn
    (one message instead of WriteInode + FreeInode); if that write fails nothing is
    freed. ``blocks`` (optional): runs ``(start, count)`` inside this group that the
    file held, freed before the record is written (a small file's data lives in its
    inode's group: one message instead of FreeBlocks + FreeInode); if one cannot be
    freed, neither the record nor the inode changes (the runs before it stay freed, as
    those of a truncate that failed part-way do)."""

    ino: int
    is_dir: bool = False
    raw: bytes = b""
    blocks: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ReadInode:
    """Read inode ``ino``'s on-disk record -> bytes of the volume's inode size."""

    ino: int


@dataclass(frozen=True, slots=True)
class ReadInodes:
    """Read the records of inodes ``inos`` (all in this group) -> a list of bytes, in order.

    One message for a batch of a directory's entries (readdirplus) instead of one each."""

    inos: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WriteInode:
    """Replace the first ``len(raw)`` bytes of inode ``ino``'s record (written through)."""

    ino: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class AllocBlocks:
    """Allocate up to ``count`` contiguous blocks near ``goal`` -> (start, n) or None if full.

    The run starts at ``goal`` when that block is free; otherwise the first run from the
    goal onwards (wrapping inside the group) that holds all ``count`` blocks; otherwise the
    longest free run of the group.
    """

    goal: int
    count: int


@dataclass(frozen=True, slots=True)
class FreeBlocks:
    """Free ``count`` blocks from ``start`` (all inside this group) -> None."""

    start: int
    count: int


@dataclass(frozen=True, slots=True)
class GetCounts:
    """-> GroupCounts: this group's exact free-block, free-inode and used-directory counts,
    which the superblock actor is sent too (between reports its copy may trail them)."""


@dataclass(frozen=True, slots=True)
class Sync:
    """Write back every dirty bitmap and inode-table block -> GroupCounts."""


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """One group's descriptor counters (the reply to GetCounts, Sync and GetGroupCounts)."""

    group: int
    free_blocks: int
    free_inodes: int
    used_dirs: int
