"""Messages understood by the superblock actor (chanos.fs.superblock).

The superblock actor owns the on-disk superblock and the group descriptor table: global
free counts, mount state, the orphan-list head, statfs figures and the read-only flag.
Block-group actors report their counters to it with ``GroupCountsChanged`` (a call when
the superblock is idle, else a cast); every other message is a call except
``ReportError``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupCountsChanged:
    """From a group actor: its exact current counters (absolute values, idempotent)."""

    group: int
    free_blocks: int
    free_inodes: int
    used_dirs: int


@dataclass(frozen=True, slots=True)
class StatFs:
    """-> chanos.personality.syscalls.FsStat of the volume."""


@dataclass(frozen=True, slots=True)
class GetGroupCounts:
    """-> tuple[GroupCounts, ...], one per group, exact (allocation policy input)."""


@dataclass(frozen=True, slots=True)
class GetLastOrphan:
    """-> int: s_last_orphan, the head of the on-disk orphan list (0 = empty)."""


@dataclass(frozen=True, slots=True)
class SetLastOrphan:
    """Set s_last_orphan to ``ino`` (0 = empty list) and write the superblock -> None."""

    ino: int


@dataclass(frozen=True, slots=True)
class IsReadOnly:
    """-> bool: whether the volume is mounted read-only."""


@dataclass(frozen=True, slots=True)
class ReportError:
    """Cast when an on-disk inconsistency is found: the superblock records the error state
    (s_state |= ERROR_FS, error count and first/last error fields)."""

    where: str
    ino: int = 0
    block: int = 0


@dataclass(frozen=True, slots=True)
class Sync:
    """Write the superblock and the group descriptor table (primary copies only) -> None."""


@dataclass(frozen=True, slots=True)
class Unmount:
    """Restore the mount-time state (clean when it was clean), write sb + GDT -> None."""
