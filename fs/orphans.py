"""The orphan list: inodes with no name left that are still open or still referenced by
the host kernel (lookup count not yet forgotten).

ext4 keeps such inodes on a singly linked list on disk so that a crash does not leak
them: the superblock's ``s_last_orphan`` names the first, and each orphan's ``i_dtime``
field (unused while the inode is live) names the next; 0 ends the list. The next mount
frees everything on the list before anything else happens.

``OrphanList`` is the actor that owns the list's order (its messages are in
chanos.fs.orphan_protocol). It never writes an inode itself:
an inode's record belongs to its vnode actor, so

* a vnode whose inode has lost its last link while a handle is open calls
  ``AddOrphan(ino)`` at the unlink; one whose inode only the host kernel's lookup
  references keep calls it when it writes the inode back (sync, which writes every vnode
  back before the superblock, or its retirement), so an inode the host kernel forgets
  right after the unlink, as it does, never joins the list. The reply is the inode that
  follows it (the old head), which the vnode stores in its ``i_dtime`` and writes with
  its inode; the actor then points ``s_last_orphan`` at it;
* a vnode that frees an orphan (last release, ``Forgotten``, or ``Reclaim`` at mount) calls
  ``RemoveOrphan(ino)``. Unlinking from the head only moves ``s_last_orphan``; unlinking
  from the middle makes the predecessor skip it, by casting ``SetOrphanNext(next)`` to the
  predecessor's vnode through the vnode table (``Deliver``, also a cast). The list never
  waits on a vnode or the table, since vnodes call it from turns the table waits for. A
  vnode must accept ``SetOrphanNext`` at any time while it is on the list.

``cleanup_orphans`` runs at mount, before the kernel serves anything: it walks the chain
left on disk, sends ``Reclaim()`` to each orphan's vnode (which frees its blocks and the
inode), and leaves ``s_last_orphan`` = 0. A hostile chain (a loop, an inode number out of
range, a live inode on the list) is cut short without crashing the mount.
"""

from __future__ import annotations

import errno
import logging
import struct
from typing import Any

from chanos.fs.orphan_protocol import AddOrphan, ListOrphans, LoadChain, RemoveOrphan, SetOrphanNext
from chanos.fs.superblock_protocol import GetLastOrphan, SetLastOrphan
from chanos.fs.vnode_protocol import Reclaim
from chanos.fs.vnode_table import call_vnode
from chanos.fs.vnode_table_protocol import Deliver
from chanos.personality import Actor, ActorRef, call, cast

log = logging.getLogger(__name__)

# i_links_count at 0x1A (u16), i_dtime at 0x14 (u32) in the on-disk inode.
_DTIME = struct.Struct("<I")
_LINKS = struct.Struct("<H")
DTIME_OFFSET = 0x14
LINKS_OFFSET = 0x1A


# ---------------------------------------------------------------------------------------
# The actor
# ---------------------------------------------------------------------------------------


class OrphanList(Actor):
    """Owns the order of the orphan list and ``s_last_orphan``.

    ``superblock``: the superblock actor; ``table``: the vnode table (to reach a
    predecessor's vnode with ``SetOrphanNext``).
    """

    def __init__(self, superblock: ActorRef, table: ActorRef) -> None:
        self._sb = superblock
        self._table = table
        # Head first. Orphans are few (open-but-unlinked files), so a list is right.
        self._chain: list[int] = []

    async def handle(self, msg: Any) -> Any:
        match msg:
            case AddOrphan(ino):
                if ino in self._chain:
                    i = self._chain.index(ino)
                    return self._chain[i + 1] if i + 1 < len(self._chain) else 0
                nxt = self._chain[0] if self._chain else 0
                self._chain.insert(0, ino)
                await call(self._sb, SetLastOrphan(ino))
                return nxt
            case RemoveOrphan(ino):
                if ino not in self._chain:
                    return None
                i = self._chain.index(ino)
                nxt = self._chain[i + 1] if i + 1 < len(self._chain) else 0
                del self._chain[i]
                if i == 0:
                    await call(self._sb, SetLastOrphan(nxt))
                else:
                    # Through the table, which starts the predecessor if it was retired
                    # (the vnode ignores the message if it has been freed since). A cast:
                    # vnodes call this actor from turns the table waits for.
                    cast(self._table, Deliver(self._chain[i - 1], SetOrphanNext(nxt)))
                return None
            case LoadChain(chain):
                self._chain = list(chain)
                return None
            case ListOrphans():
                return tuple(self._chain)
            case _:
                raise TypeError(f"orphan list: unknown message {msg!r}")


# ---------------------------------------------------------------------------------------
# Mount-time cleanup
# ---------------------------------------------------------------------------------------


async def read_chain(
    superblock: ActorRef,
    read_inode: Any,
    inodes_count: int,
    first_ino: int,
) -> tuple[tuple[int, ...], int]:
    """The orphan chain on disk, head first, and the linked inode it stopped at (or 0).

    ``read_inode(ino) -> bytes`` reads an inode record (through its group actor). The walk
    stops at 0, at an inode number out of range, at an inode seen before (a loop) or at an
    inode that still has links (ext4 would truncate such an inode; it is taken off the
    list here and reported, since its size is already what the inode says).
    """
    head = await call(superblock, GetLastOrphan())
    chain: list[int] = []
    seen: set[int] = set()
    ino = head
    while ino:
        if ino in seen or not (first_ino <= ino <= inodes_count):
            log.warning("orphan list: bad link to inode %d; list cut there", ino)
            break
        seen.add(ino)
        raw = await read_inode(ino)
        (links,) = _LINKS.unpack_from(raw, LINKS_OFFSET)
        (nxt,) = _DTIME.unpack_from(raw, DTIME_OFFSET)
        if links != 0:
            log.warning("orphan list: inode %d still has %d links; not freed", ino, links)
            return tuple(chain), ino
        chain.append(ino)
        ino = nxt
    return tuple(chain), 0


async def cleanup_orphans(
    superblock: ActorRef,
    orphans: ActorRef,
    table: ActorRef,
    read_inode: Any,
    inodes_count: int,
    first_ino: int,
) -> int:
    """Free every inode left on the on-disk orphan list -> how many were freed.

    Each orphan's vnode gets ``Reclaim()``; it frees the blocks and the inode and takes
    itself off the list (``RemoveOrphan``). Whatever is left on the list afterwards (a cut
    chain) is dropped, so ``s_last_orphan`` ends at 0. Not for a read-only mount: the
    caller skips it there, and the list stays for the next writable mount.
    """
    head = await call(superblock, GetLastOrphan())
    if not head:
        return 0
    chain, linked = await read_chain(superblock, read_inode, inodes_count, first_ino)
    await call(orphans, LoadChain(chain))
    freed = 0
    for ino in chain:
        try:
            await call_vnode(table, ino, Reclaim())
            freed += 1
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EUCLEAN, errno.ENOENT):
                raise
            log.error("orphan list: cannot free inode %d: %s", ino, exc)
        # Whatever the vnode did, the inode is off the list now.
        await call(orphans, RemoveOrphan(ino))
    await call(orphans, LoadChain(()))
    if linked:
        # A live inode found on the list keeps its links; its i_dtime must read 0 again.
        await call_vnode(table, linked, SetOrphanNext(0))
    if await call(superblock, GetLastOrphan()):
        await call(superblock, SetLastOrphan(0))
    return freed
