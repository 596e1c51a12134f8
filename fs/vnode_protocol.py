"""Messages between vnode actors (chanos.fs.vnode) beyond the system-call protocol.

A directory vnode sends these to the vnode of a child (link counts, ``..``), and the
rename coordinator (chanos.fs.rename) sends them to the directories and inodes a
cross-directory rename touches. Every message is a call; errors come back as
``OSError``. Names are ``bytes``; file types are the dirent ``file_type`` codes
(chanos.fs.format: 1 regular, 2 directory, ... 7 symlink).

Calls only ever go from a directory to its children (down the tree) or from the rename
coordinator to vnodes, never from a child to its parent, so two vnodes never wait on
each other.

A cross-directory ``rename(src_dir/a -> dst_dir/b)`` is, in the coordinator::

    src = LookupEntry(a) on src_dir              # (ino, file_type)   ENOENT
    dst = LookupEntry(b) on dst_dir              # or ENOENT -> no target
    loop check: walk LookupEntry(b"..") from dst_dir up to the root; EINVAL if src.ino
    if dst and src is a dir: CheckEmpty() on dst  (ENOTEMPTY); types: EISDIR / ENOTDIR
    if dst: ReplaceEntry(b, src.ino, src.file_type) on dst_dir; DropLink() on dst.ino;
            if dst is a dir: AdjustLinks(-1) on dst_dir
    else:   InsertEntry(b, src.ino, src.file_type) on dst_dir
    if src is a dir and not (dst is a dir): AdjustLinks(+1) on dst_dir   (EMLINK first)
    RemoveEntry(a, src.ino) on src_dir
    if src is a dir: AdjustLinks(-1) on src_dir
    Renamed(new_parent=dst_dir if src is a dir else None) on src.ino

``RENAME_EXCHANGE`` across directories is two ``ReplaceEntry`` calls, a ``Renamed`` on
each inode, and link-count adjustments when exactly one of the two is a directory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LookupEntry:
    """Directory: the entry ``name`` -> (ino, file_type). ENOENT, ENOTDIR."""

    name: bytes


@dataclass(frozen=True, slots=True)
class CreateOpen:
    """Directory: create(2) of a new regular file ``name``, opened with ``flags``
    -> (Handle, Entry). EEXIST (and every MkNod error) before anything is made.

    The directory makes the inode as for MkNod, then starts the new inode's vnode with
    the record it just wrote (nobody else can know the number before this turn ends, so
    that record is current: no read), already opened (see ``Pin``). The new vnode stays
    pinned for the handle, until the caller's ``Closed``. ``umask`` as for ``Create``.
    """

    name: bytes
    mode: int
    uid: int
    gid: int
    flags: int
    umask: int = 0


@dataclass(frozen=True, slots=True)
class InsertEntry:
    """Directory: add ``name`` -> ``ino`` (must not exist) -> None.

    Updates the directory's mtime/ctime. EEXIST, ENAMETOOLONG, ENOSPC. The target's link
    count is the caller's business (``AddLink``); a subdirectory's effect on this
    directory's link count is ``AdjustLinks``.
    """

    name: bytes
    ino: int
    file_type: int


@dataclass(frozen=True, slots=True)
class RemoveEntry:
    """Directory: remove ``name`` -> (ino, file_type) it named. ENOENT.

    With ``expect_ino`` set, ENOENT unless the entry still names that inode (guards a
    rename against a concurrent change between its lookup and its removal).
    """

    name: bytes
    expect_ino: int = 0


@dataclass(frozen=True, slots=True)
class ReplaceEntry:
    """Directory: point existing entry ``name`` at ``ino`` -> (old_ino, old_file_type).

    ENOENT if the name is absent. With ``expect_ino`` set, ENOENT unless the entry names
    that inode now.
    """

    name: bytes
    ino: int
    file_type: int
    expect_ino: int = 0


@dataclass(frozen=True, slots=True)
class CheckEmpty:
    """Directory: -> None if it holds only ``.`` and ``..``; ENOTEMPTY otherwise."""


@dataclass(frozen=True, slots=True)
class AdjustLinks:
    """Directory: a subdirectory was added (+1) or removed (-1) -> new i_links_count.

    Follows ext4's dir_nlink rules: past 65000 the count becomes 1 ("many") and stays
    there; without dir_nlink, +1 at 65000 is EMLINK.
    """

    delta: int


@dataclass(frozen=True, slots=True)
class AddLink:
    """Inode: one more name refers to it (hard link) -> Attr. EMLINK at 65000, EPERM for a
    directory, ENOENT when it was already unlinked."""


@dataclass(frozen=True, slots=True)
class DropLink:
    """Inode: one name referring to it was removed -> new i_links_count.

    A directory goes to 0 at once (its ``.`` link goes with its name), and only when it
    is empty (ENOTEMPTY otherwise: check and drop happen in one turn). At 0 the inode is
    freed when no handle is open; otherwise it goes on the orphan list until the last
    Release.
    """


@dataclass(frozen=True, slots=True)
class Renamed:
    """Inode: it was moved or renamed -> None. Sets ctime; a directory moved to another
    parent rewrites its ``..`` entry to ``new_parent``."""

    new_parent: int = 0


@dataclass(frozen=True, slots=True)
class WriteBack:
    """Write every dirty piece of state (inode, directory blocks) to the group actors and
    the device -> None. Sent by sync(2) and before unmount."""


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Inode on the orphan list found at mount (links 0, nothing open): free its blocks and
    the inode -> None. Sent by the orphan-list cleanup (chanos.fs.orphans)."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The host kernel's lookup count of this unlinked inode reached zero (or the file
    system is being unmounted): free the inode if it has no link and no open handle left
    -> None. Sent for inodes the vnode table holds (``chanos.fs.vnode_table_protocol.Hold``); the
    vnode is pinned while it handles it, as for any request (freeing calls the orphan
    list, which pins the neighbouring orphans through the table). ``unpin``: the vnode
    casts the table ``Unpin`` for that pin when done (the table's own cast); a caller
    that called it unpins itself, outside the vnode's turn."""

    unpin: bool = True


__all__ = [
    "AddLink",
    "AdjustLinks",
    "CheckEmpty",
    "CreateOpen",
    "DropLink",
    "Forgotten",
    "InsertEntry",
    "LookupEntry",
    "Reclaim",
    "RemoveEntry",
    "Renamed",
    "ReplaceEntry",
    "WriteBack",
]
