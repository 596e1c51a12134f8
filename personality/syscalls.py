"""The system-call protocol: the messages through which everything reaches the file system.

One small immutable class per POSIX file operation. The FUSE front end and the in-process
tests build these messages and hand them to ``await kernel.syscall(msg)`` (see
``chanos.personality.boot``); the kernel routes each one to the actor that serves it and
returns the reply, or raises ``OSError(errno, message)``.

Conventions
-----------
* Names, symlink targets, xattr names and values are ``bytes`` (no encoding is assumed).
* Inode numbers are ext4 inode numbers; the root directory is ``ROOT_INO`` (2). The FUSE
  front end maps FUSE's root id 1 to 2 and back.
* A new inode's ``mode`` (MkNod, MkDir, Create) is narrowed by the caller's ``umask``
  unless its directory has a default ACL, which takes the umask's place (POSIX.1e, as
  ext4 does). A caller that has applied the umask already passes 0.
* Times are integer nanoseconds since the epoch. In ``SetAttr`` a field left at ``None``
  is not changed (UTIME_OMIT); UTIME_NOW is resolved by the caller to a concrete
  timestamp before the message is built, so the file system never reads a clock for it.
* ``Open``/``Create``/``OpenDir`` return a ``Handle`` that carries the address of the
  vnode actor serving the inode; later ``Read``/``Write``/``ReadDir``/... on that handle go
  straight to that actor without a table lookup.
* Every reply type is documented on its message class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROOT_INO = 2
"""ext4's root directory inode number."""

NAME_MAX = 255
"""Longest directory entry name in bytes (ENAMETOOLONG beyond)."""

# rename(2) flags (linux/fs.h values).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# setxattr(2) flags (linux/xattr.h values).
XATTR_CREATE = 1
XATTR_REPLACE = 2


# ---------------------------------------------------------------------------------------
# Reply values
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attr:
    """An inode's attributes, as stat(2) reports them.

    ``blocks`` is in 512-byte units (st_blocks); ``blksize`` is the preferred I/O size
    (the file system's block size). ``mode`` includes the file-type bits (S_IFMT).
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """A name resolved to an inode: the reply of Lookup, MkNod, MkDir, Symlink, Link.

    Each Entry returned to the front end counts as one lookup reference on the inode,
    given back later with ``Forget(inode, nlookup)``.
    """

    inode: int
    generation: int
    attr: Attr


@dataclass(frozen=True, slots=True)
class Handle:
    """An open file or directory.

    ``vnode`` is the address (ActorRef) of the vnode actor serving ``inode``: requests on
    the handle go straight to it. ``fh`` is a number unique among the open handles of the
    mount (the front end gives it to the host kernel as the file handle). ``flags`` are the
    open(2) flags the handle was opened with (O_ACCMODE, O_APPEND, ...).
    """

    inode: int
    vnode: Any
    flags: int
    fh: int = 0


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry returned by ReadDir.

    ``mode`` carries at least the file-type bits (S_IFMT) of the entry. ``next_offset`` is
    the opaque, stable offset to pass to the next ReadDir to continue after this entry.
    ``attr`` (with the inode's ``generation``) is filled when the vnode could read the
    entry's inode (readdirplus), else ``None``. ``.`` and ``..`` are included.

    An entry other than ``.`` and ``..`` that carries ``attr`` is a *counted* entry: like
    an ``Entry`` reply, it gives the caller one lookup reference on ``inode``, which a
    ``Forget`` gives back (see ``DirEntry.counted``).
    """

    name: bytes
    inode: int
    mode: int
    next_offset: int
    attr: Attr | None = None
    generation: int = 0

    @property
    def counted(self) -> bool:
        """Whether this entry handed the caller one lookup reference on ``inode``."""
        return self.attr is not None and self.name != b"." and self.name != b".."


@dataclass(frozen=True, slots=True)
class FsStat:
    """statvfs(3) figures of the mounted file system (field names as os.statvfs)."""

    f_bsize: int
    f_frsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int
    f_favail: int
    f_namemax: int = NAME_MAX


# ---------------------------------------------------------------------------------------
# Names and inodes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    """Resolve ``name`` in directory ``parent``. -> Entry. ENOENT, ENOTDIR, ENAMETOOLONG."""

    parent: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop ``nlookup`` lookup references the front end held on ``inode``. -> None.

    When an inode's lookup count reaches zero and it has no open handles, its vnode may be
    retired; an unlinked inode is freed at that point.
    """

    inode: int
    nlookup: int


@dataclass(frozen=True, slots=True)
class GetAttr:
    """The attributes of ``inode``. -> Attr."""

    inode: int


# What a change takes away from a file (Write.drop, SetAttr.drop, Open.drop), as write(2),
# truncate(2), chown(2) and open(2) with O_TRUNC do on a local file system: the host
# kernel's file_remove_privs and its chown rules. For callers that did not do it themselves
# (the host kernel does, unless the file system has taken the job over).
DROP_CAPABILITY = 1
"""The ``security.capability`` attribute (file capabilities), whoever writes."""
DROP_SET_ID = 2
"""Set-user-ID, and set-group-ID with group execute: for a writer without CAP_FSETID,
and for any change of owner."""


@dataclass(frozen=True, slots=True)
class SetAttr:
    """Change attributes of ``inode``; ``None`` fields are left alone. -> Attr (new).

    ``size`` truncates up or down (EISDIR on a directory). ``handle`` is the open handle
    the change was made through, if any (ftruncate/futimens).
    ``ctime_ns`` is normally left ``None``: any change sets ctime to now.
    ``drop`` (DROP_CAPABILITY | DROP_SET_ID): what the change takes away from a file that
    is not a directory, unless it sets the mode itself.
    """

    inode: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    handle: Handle | None = None
    drop: int = 0


@dataclass(frozen=True, slots=True)
class MkNod:
    """Create a regular file, fifo, socket or char/block device node. -> Entry.

    ``mode`` includes the file-type bits; ``rdev`` is the device number for S_IFCHR and
    S_IFBLK; ``umask`` is the caller's (see the module docstring). EEXIST, ENOENT,
    ENOTDIR, ENAMETOOLONG, ENOSPC.
    """

    parent: int
    name: bytes
    mode: int
    rdev: int = 0
    uid: int = 0
    gid: int = 0
    umask: int = 0


@dataclass(frozen=True, slots=True)
class MkDir:
    """Create a directory (``mode`` permission bits; S_IFDIR implied). -> Entry.

    ``umask`` is the caller's (see the module docstring). EEXIST, ENOENT, ENOTDIR, ENAMETOOLONG,
    EMLINK (parent link count full), ENOSPC.
    """

    parent: int
    name: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    umask: int = 0


@dataclass(frozen=True, slots=True)
class Create:
    """Create and open a regular file. -> (Handle, Entry).

    ``flags`` are open(2) flags; with O_EXCL an existing name is EEXIST, without it an
    existing regular file is opened (and truncated with O_TRUNC). ``umask`` is the
    caller's (see the module docstring).
    """

    parent: int
    name: bytes
    mode: int
    flags: int
    uid: int = 0
    gid: int = 0
    umask: int = 0


@dataclass(frozen=True, slots=True)
class Unlink:
    """Remove a non-directory name. -> None. ENOENT, EISDIR (a directory), ENOTDIR.

    An inode whose last link goes while it is open or still looked up stays (on the orphan
    list) until its last Release/Forget.
    """

    parent: int
    name: bytes


@dataclass(frozen=True, slots=True)
class RmDir:
    """Remove an empty directory. -> None. ENOENT, ENOTDIR, ENOTEMPTY, EINVAL for ``.``."""

    parent: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Symlink:
    """Create a symbolic link ``name`` -> ``target``. -> Entry."""

    parent: int
    name: bytes
    target: bytes
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class ReadLink:
    """The target of symlink ``inode``. -> bytes. EINVAL if not a symlink."""

    inode: int


@dataclass(frozen=True, slots=True)
class Link:
    """Make a new hard link ``new_name`` in ``new_parent`` to ``inode``. -> Entry.

    EPERM for a directory, EMLINK at the link-count limit, EEXIST.
    """

    inode: int
    new_parent: int
    new_name: bytes


@dataclass(frozen=True, slots=True)
class Rename:
    """rename(2)/renameat2(2). -> None.

    ``flags``: 0, RENAME_NOREPLACE (EEXIST if the target exists) or RENAME_EXCHANGE (swap
    two existing names; ENOENT if either is missing). EINVAL when a directory would move
    into its own subtree; ENOTEMPTY, EISDIR, ENOTDIR as rename(2). Never EXDEV.
    """

    old_parent: int
    old_name: bytes
    new_parent: int
    new_name: bytes
    flags: int = 0


# ---------------------------------------------------------------------------------------
# Open files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    """Open ``inode`` with open(2) ``flags``. -> Handle. EISDIR for a directory opened
    for writing; O_TRUNC truncates, and then takes ``drop`` away (see SetAttr)."""

    inode: int
    flags: int
    drop: int = 0


@dataclass(frozen=True, slots=True)
class Read:
    """Read up to ``size`` bytes at ``offset``. -> bytes (short at end of file)."""

    handle: Handle
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``data`` at ``offset`` (at end of file for O_APPEND handles). -> int written.

    ``drop`` (DROP_CAPABILITY | DROP_SET_ID): what the write takes away from the file
    when it succeeds.
    """

    handle: Handle
    offset: int
    data: bytes
    drop: int = 0


@dataclass(frozen=True, slots=True)
class Flush:
    """close(2) of one file descriptor of the handle. -> None."""

    handle: Handle


@dataclass(frozen=True, slots=True)
class Release:
    """The last reference to the handle is gone. -> None."""

    handle: Handle


@dataclass(frozen=True, slots=True)
class FSync:
    """fsync(2) (``datasync`` False) or fdatasync(2) (True). -> None."""

    handle: Handle
    datasync: bool = False


@dataclass(frozen=True, slots=True)
class OpenDir:
    """Open directory ``inode`` for reading. -> Handle. ENOTDIR."""

    inode: int


@dataclass(frozen=True, slots=True)
class ReadDir:
    """Entries of an open directory from ``offset`` (0 = start). -> list[DirEntry].

    An empty list means the end. Offsets stay valid across concurrent changes: an entry
    present for the whole scan is returned exactly once. Every counted entry of the reply
    (``DirEntry.counted``) is one lookup reference for the caller, as readdirplus gives the
    host kernel one: the caller ``Forget``s those it does not pass on.
    """

    handle: Handle
    offset: int


@dataclass(frozen=True, slots=True)
class ReleaseDir:
    """Close an open directory. -> None."""

    handle: Handle


@dataclass(frozen=True, slots=True)
class FSyncDir:
    """fsync(2) on a directory. -> None."""

    handle: Handle
    datasync: bool = False


# ---------------------------------------------------------------------------------------
# File system and extended attributes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatFs:
    """statvfs(3) of the mount. -> FsStat (true free blocks and inodes)."""


@dataclass(frozen=True, slots=True)
class GetXattr:
    """Value of extended attribute ``name`` (e.g. b"user.x"). -> bytes. ENODATA."""

    inode: int
    name: bytes


@dataclass(frozen=True, slots=True)
class SetXattr:
    """Set extended attribute. ``flags``: 0, XATTR_CREATE (EEXIST) or XATTR_REPLACE
    (ENODATA). -> None. ENOSPC when it fits neither in the inode nor an xattr block."""

    inode: int
    name: bytes
    value: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class ListXattr:
    """Names of the inode's extended attributes. -> list[bytes]."""

    inode: int


@dataclass(frozen=True, slots=True)
class RemoveXattr:
    """Remove extended attribute ``name``. -> None. ENODATA."""

    inode: int
    name: bytes


# Messages routed by the inode they name (the vnode of that inode serves them).
INODE_OPS = (GetAttr, ReadLink, Open, OpenDir, GetXattr, SetXattr, ListXattr, RemoveXattr)
# Messages served by the directory they create in or remove from.
PARENT_OPS = (Lookup, MkNod, MkDir, Create, Unlink, RmDir, Symlink)
# Messages carrying a Handle: they go straight to ``handle.vnode``.
HANDLE_OPS = (Read, Write, Flush, Release, FSync, ReadDir, ReleaseDir, FSyncDir)

Syscall = (
    Lookup
    | Forget
    | GetAttr
    | SetAttr
    | MkNod
    | MkDir
    | Create
    | Unlink
    | RmDir
    | Symlink
    | ReadLink
    | Link
    | Rename
    | Open
    | Read
    | Write
    | Flush
    | Release
    | FSync
    | OpenDir
    | ReadDir
    | ReleaseDir
    | FSyncDir
    | StatFs
    | GetXattr
    | SetXattr
    | ListXattr
    | RemoveXattr
)
"""Any system-call message."""

__all__ = [
    "HANDLE_OPS",
    "INODE_OPS",
    "NAME_MAX",
    "PARENT_OPS",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INO",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "Attr",
    "Create",
    "DirEntry",
    "Entry",
    "FSync",
    "FSyncDir",
    "Flush",
    "Forget",
    "FsStat",
    "GetAttr",
    "GetXattr",
    "Handle",
    "Link",
    "ListXattr",
    "Lookup",
    "MkDir",
    "MkNod",
    "Open",
    "OpenDir",
    "Read",
    "ReadDir",
    "ReadLink",
    "Release",
    "ReleaseDir",
    "RemoveXattr",
    "Rename",
    "RmDir",
    "SetAttr",
    "SetXattr",
    "StatFs",
    "Symlink",
    "Syscall",
    "Unlink",
    "Write",
]
