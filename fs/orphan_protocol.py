"""Messages of the orphan list (chanos.fs.orphans).

The orphan-list actor owns the order of ext4's on-disk list of inodes that have no name
left but are still open or still referenced by the host kernel (``s_last_orphan`` in the
superblock, the next link in each orphan's ``i_dtime``). A vnode calls ``AddOrphan`` when
its last link goes while the inode is still in use (the reply is the next orphan, which
the vnode stores in its ``i_dtime``) and ``RemoveOrphan`` when it frees an orphan (reply
None). The orphan list casts ``SetOrphanNext`` to the vnode of an orphan whose successor
changed, and mount-time cleanup sends it to a live inode found on the list; vnodes
answer it. ``LoadChain`` (mount-time cleanup) and ``ListOrphans`` (tests) are calls to the
orphan list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AddOrphan:
    """Put ``ino`` at the head of the list -> int: the next orphan (store it in i_dtime)."""

    ino: int


@dataclass(frozen=True, slots=True)
class RemoveOrphan:
    """Take ``ino`` off the list -> None (no-op when it is not on it)."""

    ino: int


@dataclass(frozen=True, slots=True)
class SetOrphanNext:
    """To a vnode (cast): the orphan after you is now ``next_ino``; store it in i_dtime."""

    next_ino: int


@dataclass(frozen=True, slots=True)
class LoadChain:
    """Adopt the chain found on disk (head first) -> None. Used by ``cleanup_orphans``."""

    chain: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ListOrphans:
    """-> tuple[int, ...]: the list, head first."""
