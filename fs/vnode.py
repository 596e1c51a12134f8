"""VnodeActor: one actor per active inode; everything that happens to one inode.

The vnode owns its inode's in-memory state: the decoded ``Inode``, the file data (extent
tree or block map, through ``FileData``), the entries of a directory (``Directory``) and
the extended attributes (``Xattrs``). All operations on one inode are serialized by the
actor's mailbox, so none of this needs a lock.

Life cycle. The vnode table starts a vnode on the first message for its inode;
``started`` reads the inode through the owning block-group actor (ReadInode). Every
change is written through to the group actor (WriteInode) at the end of the message that
made it, and file-data mapping blocks are flushed to the device before that, so the
group actors always hold the current inode: ``stopped`` (retirement, unmount) only has
to repeat the write. A vnode whose inode was freed forgets it; a later message re-reads
the inode from disk (the number may have been allocated again, by a directory writing
the new inode straight to its group actor).

Who calls whom. Directories call their children (link counts, emptiness) through the
vnode table, never the other way round, and the kernel composes Create and Link out of
vnode messages, so two vnodes never wait on each other. Entry attributes for Lookup and
ReadDir are read from the group actor, which holds the children's current inodes.

Semantics follow Linux ext4: timestamps in nanoseconds (ctime on every change, mtime on
content changes, relatime for atime), dir_nlink link counting, fast symlinks (< 60
bytes) in i_block, device numbers in i_block, EXTENTS_FL on new files, directories and
slow symlinks, i_extra_isize 32 and crtime on new inodes, setgid directories passing
their group on, htree directories read linearly and their index flag cleared on the
first change. An inode whose last link goes while it is open, or while the host kernel
still holds lookup references on it, is put on the orphan list (``chanos.fs.orphans``) and
freed when both are gone: at its last Release, or at ``Forgotten`` (the vnode table's
lookup count reached zero, or unmount), whichever comes last. Until then its number is
not reused, so a late request for the old file (a SETATTR flushing cached times right
after an unlink) reaches the old inode, never a new file that took the number.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import struct
import time
from typing import Any

from chanos.fs import acl
from chanos.fs import vnode_protocol as vp
from chanos.fs.directory import Directory, first_block
from chanos.fs.extent_tree import ExtentTree, root_runs
from chanos.fs.file_data import FileData
from chanos.fs.format import dirent
from chanos.fs.format import features as F
from chanos.fs.format.inode import (
    APPEND_FL,
    COMPR_FL,
    DIRSYNC_FL,
    EXTENTS_FL,
    FT_DIR,
    FT_UNKNOWN,
    HUGE_FILE_FL,
    IMMUTABLE_FL,
    INDEX_FL,
    JOURNAL_DATA_FL,
    LINK_MAX,
    NOATIME_FL,
    NOCOMPR_FL,
    NODUMP_FL,
    NOTAIL_FL,
    PROJINHERIT_FL,
    SECRM_FL,
    SYNC_FL,
    TOPDIR_FL,
    UNRM_FL,
    Inode,
    decode_device,
    file_type_from_mode,
    stat_view,
)
from chanos.fs.format.xattr import MAGIC as XATTR_MAGIC
from chanos.fs.format.xattr import split_name
from chanos.fs.orphan_protocol import AddOrphan, RemoveOrphan, SetOrphanNext
from chanos.fs.vnode_table import call_vnode
from chanos.fs.vnode_table_protocol import (
    NEEDS_PIN,
    Closed,
    Hold,
    IsHeld,
    OpenCount,
    Pin,
    Unpin,
    Unpinned,
)
from chanos.fs.xattrs import Xattrs
from chanos.personality import Actor, call, cast
from chanos.personality.syscalls import (
    DROP_CAPABILITY,
    DROP_SET_ID,
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attr,
    DirEntry,
    Entry,
    Flush,
    FSync,
    FSyncDir,
    GetAttr,
    GetXattr,
    Handle,
    ListXattr,
    Lookup,
    MkDir,
    MkNod,
    Open,
    OpenDir,
    Read,
    ReadDir,
    ReadLink,
    Release,
    ReleaseDir,
    RemoveXattr,
    Rename,
    RmDir,
    SetAttr,
    SetXattr,
    Symlink,
    Unlink,
    Write,
)

log = logging.getLogger(__name__)

_U32 = struct.Struct("<I")
CAPABILITY_XATTR = b"security.capability"

# Flags a new inode inherits from its directory (ext4's EXT4_FL_INHERITED) and the masks
# ext4_mask_flags applies by file type.
_INHERITED = (
    SECRM_FL
    | UNRM_FL
    | COMPR_FL
    | SYNC_FL
    | NODUMP_FL
    | NOATIME_FL
    | NOCOMPR_FL
    | JOURNAL_DATA_FL
    | NOTAIL_FL
    | DIRSYNC_FL
    | TOPDIR_FL
    | PROJINHERIT_FL
)
_REG_MASK = ~(DIRSYNC_FL | TOPDIR_FL | PROJINHERIT_FL)
_OTHER_MASK = NODUMP_FL | NOATIME_FL

READDIR_BATCH = 256  # entries per ReadDir reply
RELATIME_SECS = 24 * 3600
# Atime policies (the mount options of these names; see _touch_atime).
RELATIME = "relatime"
STRICTATIME = "strictatime"
NOATIME = "noatime"
ATIME_POLICIES = frozenset({RELATIME, STRICTATIME, NOATIME})


# CLOCK_REALTIME_COARSE (Linux); the time module has no name for it.
_COARSE_CLOCK = 5


def _now() -> int:
    """The time file changes are stamped with: the coarse clock (CLOCK_REALTIME_COARSE,
    one scheduler tick), as ext4 stamps them. The host kernel stamps a write's mtime in
    its inode cache from the same clock before it sends the WRITE; when the record says
    the same, its next attribute refresh finds the mtime unchanged and keeps the file's
    cached pages (libfuse's auto_inval_data drops them on any mtime change), so a file
    read right after it was written is not read from the daemon again."""
    return time.clock_gettime_ns(_COARSE_CLOCK)


def _time_granule_ns() -> int:
    """How finely file changes are dated: the resolution of the coarse clock."""
    try:
        res = time.clock_getres(_COARSE_CLOCK)
    except (OSError, AttributeError):
        res = 0.001
    return min(int(res * 1e9), 10_000_000)


# Writes this close together after the previous write's times leave them as they are.
# Requests that leave the stored record as it was, or change it only on a path that
# marks the vnode changed itself and saves at once (an atime moved by Read or ReadDir, an
# O_TRUNC open, the last close of an unlinked file, an orphan joining the list at a
# write-back). After them a retirement or a sync writes nothing back, not even a build to
# compare: with a full table every new vnode retires an old one, typically a file just
# created, written or read and closed.
_READ_ONLY = frozenset(
    [
        *(GetAttr, GetXattr, ListXattr, ReadLink, Lookup),
        *(Open, OpenDir, Read, ReadDir, Flush, Release, ReleaseDir, vp.WriteBack),
    ]
)

TIME_GRANULE_NS = _time_granule_ns()


class _Store:
    """BlockStore over the volume's device client (block numbers -> byte offsets)."""

    __slots__ = ("bs", "device")

    def __init__(self, device: Any, block_size: int) -> None:
        self.device = device
        self.bs = block_size

    async def read_blocks(self, start: int, count: int) -> bytes | memoryview:
        # The driver's reply as it is (often a read-only memoryview): no copy here.
        return await self.device.read(start * self.bs, count * self.bs)

    async def write_blocks(self, start: int, data: bytes | bytearray | memoryview) -> None:
        await self.device.write(start * self.bs, data)

    async def prefetch_blocks(self, start: int, count: int) -> None:
        # A hint: the driver starts reading them ahead and answers at once.
        await self.device.prefetch(start * self.bs, count * self.bs)


class VnodeActor(Actor):
    """The vnode of inode ``ino``. ``ctx`` is the kernel's VnodeContext: ``volume``
    (chanos.fs.volume.Volume), ``table`` (the vnode table), ``orphans`` (the orphan list
    actor), ``read_only``."""

    # The mtime (= ctime) the last write stored; 0 until this instance wrote.
    _write_time = 0

    def __init__(self, ino: int, ctx: Any) -> None:
        self.ino = ino
        self.ctx = ctx
        vol = ctx.volume
        self.vol = vol
        geo = vol.geometry
        self.geo = geo
        self.bs = geo.block_size
        self.huge_file = geo.has_ro_compat(F.RO_COMPAT_HUGE_FILE)
        self.extent_feature = geo.has_incompat(F.INCOMPAT_EXTENTS)
        self.dir_nlink = geo.has_ro_compat(F.RO_COMPAT_DIR_NLINK)
        self.filetype = geo.has_incompat(F.INCOMPAT_FILETYPE)
        self.store = _Store(vol.device, self.bs)
        self.inode: Inode | None = None
        self.load_error: OSError | None = None
        self._data: FileData | None = None
        self._dir: Directory | None = None
        self._xattrs: Xattrs | None = None
        self.opens = 0
        self.on_orphan_list = False
        # Unlinked, nothing open, but kept for the host kernel's lookup references (the
        # vnode table said so: Hold / IsHeld); freed at Forgotten.
        self.held = False
        # Set by the vnode table's starter on an instance made for a restart: the count
        # of open handles (not on disk) is asked from the table before the first request.
        self.restarted = False
        # Set by the starter for a vnode a directory starts as it creates the inode: the
        # record just made, used instead of reading it (see ``vp.CreateOpen``).
        self.fresh: Inode | None = None
        # The record as this vnode last read or wrote it: the vnode is the only writer of
        # its inode's record while it lives, so a save that would write the same bytes
        # is skipped (a write-back at sync or retirement of an unchanged inode). None:
        # unknown, the next save writes.
        self._written: bytes | None = None
        # False while only read-only requests (_READ_ONLY) ran since the record was last
        # read or written: a write-back then has nothing to compare, not even a build.
        self._changed = True

    # ----- life cycle -----------------------------------------------------------------------

    async def started(self) -> None:
        fresh = self.fresh
        if fresh is not None:
            self.fresh = None
            self.inode = fresh
            self.opens = 1  # the handle CreateOpen hands out (see Pin)
            # The directory wrote exactly this record last, in the turn that made it (see
            # _create), and changed nothing after: a vnode retired unchanged (a file only
            # created) then writes nothing back.
            self._written = fresh.build()
            self._changed = False
            return
        await self._load()

    async def stopped(self) -> None:
        await self._write_back()

    async def _write_back(self) -> None:
        """Write the inode back if this vnode owns a live one.

        A record read for an inode that is not in use (links 0, nothing open: freed, or
        looked at by a stale request) is never written: the number may have been
        allocated again since, and writing the old record would destroy the new inode.
        """
        i = self.inode
        if i is None or self.ctx.read_only or i.mode == 0:
            return
        if i.links_count == 0:
            if self.opens == 0 and not self.held:
                return
            if not self.on_orphan_list:
                # Held for the host kernel's references only (an open inode joined the
                # list at its unlink): it joins at its first write-back, at sync (which
                # writes every vnode back before the superblock) or when this vnode goes,
                # not at the unlink: the host kernel forgets an unlinked file at once, so
                # nearly all such inodes are freed first and never touch the list. Until
                # then no program can reach the inode; a crash leaves it for e2fsck.
                i.dtime = await call(self.ctx.orphans, AddOrphan(self.ino))
                self.on_orphan_list = True
                self._changed = True
        if not self._changed and self._written is not None:
            return  # only read-only requests since it was last read or written
        await self._save()

    async def _load(self) -> None:
        self.inode = None
        self._data = self._dir = self._xattrs = None
        self.load_error = None
        self._written = None
        try:
            raw = await self.vol.read_inode(self.ino)
            self.inode = Inode.parse(raw)
            self._written = bytes(raw)
            self._changed = False
        except OSError as e:
            self.load_error = e
        except Exception as e:  # a corrupt record: this inode answers EIO, nothing else
            self.load_error = OSError(errno.EIO, f"inode {self.ino}: {e}")
        if self.inode is not None:
            self.on_orphan_list = self.inode.links_count == 0 and self.inode.mode != 0

    def _live(self) -> Inode:
        """The inode, if it exists (in use, or unlinked but still open)."""
        if self.inode is None:
            if self.load_error is not None:
                raise self.load_error
            raise OSError(errno.ENOENT, f"inode {self.ino} does not exist")
        i = self.inode
        if i.mode == 0 or (i.links_count == 0 and self.opens == 0 and not self.held):
            raise OSError(errno.ENOENT, f"inode {self.ino} does not exist")
        return i

    def _writable(self) -> None:
        if self.ctx.read_only:
            raise OSError(errno.EROFS, "read-only file system")

    def _fs_blocks_held(self, inode: Inode) -> int:
        """Blocks the file's data and mapping hold (i_blocks without the xattr block)."""
        n = inode.get_blocks(self.huge_file, self.bs) // (self.bs // 512)
        return n - (1 if inode.file_acl else 0)

    def _goal(self) -> int:
        return self.vol.allocator.goal_for_inode(self.ino)

    def _data_of(self, inode: Inode) -> FileData:
        if self._data is None:
            self._data = FileData(
                inode.i_block,
                extents=inode.uses_extents,
                store=self.store,
                allocator=self.vol.allocator,
                block_size=self.bs,
                fs_blocks=self._fs_blocks_held(inode),
                goal=self._goal(),
                extent_feature=self.extent_feature,
                fs_blocks_count=self.geo.blocks_count,
            )
        return self._data

    def _has_data_blocks(self, inode: Inode) -> bool:
        return not inode.is_special and not inode.is_fast_symlink

    async def _directory(self) -> Directory:
        inode = self._live()
        if not inode.is_dir:
            raise OSError(errno.ENOTDIR, f"inode {self.ino} is not a directory")
        if self._dir is None:
            d = Directory(
                self._data_of(inode),
                self.bs,
                inode.size // self.bs,
                max_inode=self.geo.inodes_count,
                filetype=self.filetype,
                store=self.store,
            )
            await d.load()
            self._dir = d
        return self._dir

    async def _xattr_store(self, inode: Inode | None = None) -> Xattrs:
        inode = inode or self._live()
        if self._xattrs is None:
            x = Xattrs(self.store, self.vol.allocator, self.bs, goal=self._goal())
            await x.load(inode)
            self._xattrs = x
        return self._xattrs

    async def _save(self) -> None:
        """Write the inode through to its group actor (mapping blocks first)."""
        inode = self.inode
        assert inode is not None
        d = self._data
        if d is not None:
            if d.blocks_dirty:
                await d.flush()
            if d.inode_dirty:  # i_block is encoded only when the mapping's root changed
                inode.i_block = d.i_block
                d.clear_inode_dirty()
            if d.converted:
                inode.flags |= EXTENTS_FL
            blocks = d.fs_blocks + (1 if inode.file_acl else 0)
            inode.set_blocks(blocks * (self.bs // 512), self.huge_file, self.bs)
        elif not self._has_data_blocks(inode):
            blocks = 1 if inode.file_acl else 0
            inode.set_blocks(blocks * (self.bs // 512), self.huge_file, self.bs)
        if self._dir is not None:
            inode.size = self._dir.size
        raw = inode.build()
        if raw == self._written:
            self._changed = False
            return
        self._written = None  # unknown until the group actor has it
        await self.vol.write_inode(self.ino, raw)
        self._written = raw
        self._changed = False

    def _attr(self, inode: Inode | None = None, ino: int | None = None) -> Attr:
        inode = inode or self.inode
        assert inode is not None
        return attr_of(ino or self.ino, inode, self.bs, self.huge_file)

    # ----- dispatch -------------------------------------------------------------------------

    async def handle(self, msg: Any) -> Any:
        if type(msg) is Unpinned:
            # Sent without a pin (the kernel's fast path): this vnode counts as idle, so
            # the table may be retiring it and waiting for this turn. Anything that would
            # ask the table first goes back to the kernel, which sends it pinned.
            inode = self.inode
            if (
                self.restarted
                or inode is None
                or (inode.links_count == 0 and self.opens == 0 and not self.held)
            ):
                return NEEDS_PIN
            msg = msg.msg
        # WriteBack comes from the vnode table's own turn, and SetOrphanNext is a cast that
        # may run while the table's turn retires this vnode (waiting for it): neither may
        # ask the table anything. SetOrphanNext needs only the record in hand; with none
        # (freed by this vnode, which took it off the orphan list first) it is dropped.
        quiet = type(msg) is vp.WriteBack or type(msg) is SetOrphanNext
        if self.restarted and not quiet:
            self.restarted = False
            self.opens = await call(self.ctx.table, OpenCount(self.ino))
            inode = self.inode
            if (
                inode is not None
                and inode.links_count
                and await call(self.ctx.table, IsHeld(self.ino))
            ):
                # Held means unlinked: the crash came before the record said so (an
                # inode kept for the host's references is written lazily, _drop_link).
                inode.links_count = 0
                self.held = True
        inode = self.inode
        if (
            inode is None or (inode.links_count == 0 and self.opens == 0 and not self.held)
        ) and not quiet:
            # Freed (or never loaded): the number may be in use again; read it afresh.
            await self._load()
            inode = self.inode
            if inode is not None and inode.mode and inode.links_count == 0 and self.opens == 0:
                # Unlinked on disk: freed, or kept for the host kernel's references by a
                # vnode retired since. Only the table knows which.
                self.held = await call(self.ctx.table, IsHeld(self.ino))
        if type(msg) not in _READ_ONLY:
            self._changed = True
        match msg:
            # --- attributes ---
            case GetAttr():
                return self._attr(self._live())
            case SetAttr():
                self._writable()
                return await self._setattr(msg)
            # --- files ---
            case Open(_, flags, drop):
                return await self._open(flags, drop)
            case Read(handle, offset, size):
                return await self._read(handle, offset, size)
            case Write(handle, offset, data, drop):
                self._writable()
                return await self._write(handle, offset, data, drop)
            case Flush():
                self._live()
                return None
            case Release() | ReleaseDir():
                return await self._release()
            case FSync() | FSyncDir():
                return await self._fsync()
            # --- directories ---
            case OpenDir():
                await self._directory()
                self.opens += 1
                return Handle(self.ino, self.ref, os.O_RDONLY | os.O_DIRECTORY)
            case ReadDir(_, offset):
                return await self._readdir(offset)
            case Lookup(_, name):
                return await self._lookup(name)
            case MkDir(_, name, mode, uid, gid, umask):
                self._writable()
                mode = stat.S_IFDIR | stat.S_IMODE(mode)
                return (await self._create(name, mode, 0, uid, gid, umask=umask))[0]
            case MkNod(_, name, mode, rdev, uid, gid, umask):
                self._writable()
                fmt = stat.S_IFMT(mode) or stat.S_IFREG
                if fmt == stat.S_IFDIR or fmt == stat.S_IFLNK:
                    raise OSError(errno.EINVAL, "mknod of a directory or symlink")
                mode = fmt | stat.S_IMODE(mode)
                return (await self._create(name, mode, rdev, uid, gid, umask=umask))[0]
            case vp.CreateOpen(name, mode, uid, gid, flags, umask):
                self._writable()
                return await self._create_open(name, mode, uid, gid, flags, umask)
            case Symlink(_, name, target, uid, gid):
                self._writable()
                return (await self._create(name, stat.S_IFLNK | 0o777, 0, uid, gid, target))[0]
            case ReadLink():
                return await self._readlink()
            case Unlink(_, name):
                self._writable()
                return await self._unlink(name, want_dir=False)
            case RmDir(_, name):
                self._writable()
                return await self._unlink(name, want_dir=True)
            # Each unlink of a file sends these two (a case is an isinstance test).
            case vp.DropLink():
                self._writable()
                return await self._drop_link()
            case vp.Forgotten(unpin):
                try:
                    await self._forgotten()
                finally:
                    if unpin:
                        cast(self.ctx.table, Unpin(self.ino))  # the pin the table took
                return None
            case Rename(old_parent, old_name, new_parent, new_name, flags):
                self._writable()
                if old_parent != self.ino or new_parent != self.ino:
                    raise OSError(errno.EINVAL, "cross-directory rename goes to the coordinator")
                return await self._rename_here(old_name, new_name, flags)
            # --- xattrs ---
            case GetXattr(_, name):
                inode = self._live()
                if name.startswith(b"user.") and not (inode.is_reg or inode.is_dir):
                    raise OSError(errno.ENODATA, "no user attributes on this file type")
                if self._xattrs is None and _no_xattr_area(inode):
                    # Nothing stored (the common case: a write(2) asks security.capability
                    # first): answered without building the attribute store.
                    split_name(name)  # an invalid name fails as the store would fail it
                    raise OSError(errno.ENODATA, f"no attribute {name!r}")
                return (await self._xattr_store()).get(name)
            case ListXattr():
                return (await self._xattr_store()).names()
            case SetXattr(_, name, value, flags):
                self._writable()
                return await self._setxattr(name, value, flags)
            case RemoveXattr(_, name):
                self._writable()
                return await self._setxattr(name, None, 0)
            # --- between vnodes ---
            case vp.LookupEntry(name):
                found = await (await self._directory()).lookup(name)
                if found is None:
                    raise OSError(errno.ENOENT, f"no entry {name!r}")
                if found[1] == FT_UNKNOWN:
                    # An image without the filetype feature: the type is in the inode.
                    found = (found[0], (await self._child(found[0])).file_type)
                return found
            case vp.InsertEntry(name, ino, file_type):
                self._writable()
                d = await self._dir_for_change()
                await d.add(name, ino, file_type)
                await self._touch_dir()
                return None
            case vp.RemoveEntry(name, expect_ino):
                self._writable()
                d = await self._dir_for_change()
                found = await d.remove(name, expect_ino)
                await self._touch_dir()
                return found
            case vp.ReplaceEntry(name, ino, file_type, expect_ino):
                self._writable()
                d = await self._dir_for_change()
                found = await d.replace(name, ino, file_type, expect_ino)
                await self._touch_dir()
                return found
            case vp.CheckEmpty():
                if not (await self._directory()).is_empty():
                    raise OSError(errno.ENOTEMPTY, "directory not empty")
                return None
            case vp.AdjustLinks(delta):
                self._writable()
                return await self._adjust_links(delta)
            case vp.AddLink():
                self._writable()
                return await self._add_link()
            case vp.Renamed(new_parent):
                self._writable()
                inode = self._live()
                if new_parent and inode.is_dir:
                    d = await self._directory()
                    await d.set_dotdot(new_parent)
                inode.ctime_ns = _now()
                await self._save()
                return None
            case SetOrphanNext(next_ino):
                inode = self.inode
                # A cast: it may arrive after this inode was freed (its own Forgotten or
                # Release ran first); a freed record carries its deletion time in dtime,
                # an orphan a next-orphan number, and a freed record is never rewritten.
                if (
                    inode is not None
                    and inode.mode
                    and (
                        (self.on_orphan_list and inode.dtime <= self.geo.inodes_count)
                        or (inode.links_count and not next_ino)
                    )
                ):
                    inode.dtime = next_ino
                    await self._save()
                return None
            case vp.Reclaim():
                inode = self.inode
                if inode is None or inode.mode == 0:
                    return None
                if inode.links_count != 0:
                    raise OSError(errno.EINVAL, f"inode {self.ino} on the orphan list has links")
                await self._free()
                return None
            case vp.WriteBack():
                await self._write_back()
                return None
            case _:
                raise OSError(errno.ENOSYS, f"vnode: unsupported message {type(msg).__name__}")

    async def _forgotten(self) -> None:
        """The table's last lookup reference on this held inode is gone: free it, unless a
        handle is still open (then its last Release frees it)."""
        # Sent only for an inode the table held, so an unlinked record here is that inode
        # (a freed one carries its deletion time in dtime, an orphan the next orphan's
        # number, at most the inode count).
        self.held = False
        inode = self.inode
        if (
            inode is not None
            and inode.mode
            and inode.links_count == 0
            and inode.dtime <= self.geo.inodes_count
            and self.opens == 0
            and not self.ctx.read_only
        ):
            await self._free()

    # ----- attributes -----------------------------------------------------------------------

    async def _setattr(self, msg: SetAttr) -> Attr:
        inode = self._live()
        now = _now()
        changed = False
        if msg.size is not None:
            if inode.is_dir:
                raise OSError(errno.EISDIR, "is a directory")
            if not inode.is_reg:
                raise OSError(errno.EINVAL, "truncate of a special file")
            if inode.flags & (IMMUTABLE_FL | APPEND_FL):
                raise OSError(errno.EPERM, "immutable or append-only file")
            if msg.size != inode.size:
                await self._truncate(inode, msg.size)
                inode.mtime_ns = now
            changed = True
        if msg.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (msg.mode & 0o7777)
            changed = True
        if msg.uid is not None:
            inode.uid = msg.uid
            changed = True
        if msg.gid is not None:
            inode.gid = msg.gid
            changed = True
        if msg.atime_ns is not None:
            inode.atime_ns = msg.atime_ns
            changed = True
        if msg.mtime_ns is not None:
            inode.mtime_ns = msg.mtime_ns
            changed = True
        if msg.drop and msg.mode is None and not inode.is_dir:
            changed = await self._drop_privileges(inode, msg.drop) or changed
        if msg.ctime_ns is not None:
            inode.ctime_ns = msg.ctime_ns
        elif changed:
            inode.ctime_ns = now
        if msg.mode is not None:
            await self._chmod_acl(inode)
        await self._save()
        return self._attr(inode)

    async def _chmod_acl(self, inode: Inode) -> None:
        """chmod: an access ACL's owner, mask (or owning group) and other entries take
        the new mode's bits (the VFS's posix_acl_chmod, which ext4 runs in its setattr)."""
        if self._xattrs is None and _no_xattr_area(inode):
            return
        x = await self._xattr_store()
        try:
            value = x.get(acl.ACCESS)
        except OSError as e:
            if e.errno == errno.ENODATA:
                return
            raise
        entries = acl.parse(value)
        if entries is not None:
            new = acl.with_mode(entries, inode.mode)
            if new != value:
                await self._store_xattr(inode, x, acl.ACCESS, new, 0)

    # ----- regular files --------------------------------------------------------------------

    async def _open(self, flags: int, drop: int = 0) -> Handle:
        inode = self._live()
        acc = flags & os.O_ACCMODE
        if inode.is_dir and (acc != os.O_RDONLY or flags & os.O_TRUNC):
            raise OSError(errno.EISDIR, "is a directory")
        if flags & os.O_TRUNC and inode.is_reg:
            self._writable()
            self._changed = True  # Open is in _READ_ONLY
            now = _now()
            if inode.size:
                await self._truncate(inode, 0)
            if drop:
                await self._drop_privileges(inode, drop)
            inode.set_times(now)
            await self._save()
        self.opens += 1
        return Handle(self.ino, self.ref, flags)

    async def _truncate(self, inode: Inode, size: int) -> None:
        """Change the file's size; blocks freed before a failure are still accounted."""
        try:
            await self._data_of(inode).truncate(inode.size, size)
        except BaseException:
            await self._save()
            raise
        inode.size = size

    async def _read(self, handle: Handle, offset: int, size: int) -> bytes | memoryview:
        inode = self._live()
        if inode.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        if offset < 0 or size < 0:
            raise OSError(errno.EINVAL, "negative offset or size")
        if not inode.is_reg:
            raise OSError(errno.EINVAL, "read of a special file")
        end = min(inode.size, offset + size)
        if end <= offset:
            data = b""
        else:
            # A view, not a copy: the reply is only handed on (FUSE takes any buffer).
            data = await self._data_of(inode).read(offset, end - offset, view=True)
        await self._touch_atime(inode)
        return data

    async def _touch_atime(self, inode: Inode) -> None:
        """Move atime for a read or a listing as the mount's policy says: relatime (when
        it is not newer than mtime/ctime, or a day old), strictatime (always), noatime
        (never); nodiratime leaves directories alone. The file's noatime flag wins."""
        ctx = self.ctx
        policy = ctx.atime
        if (
            ctx.read_only
            or policy == NOATIME
            or inode.flags & NOATIME_FL
            or (not ctx.diratime and inode.is_dir)
        ):
            return
        at = inode.atime_ns
        now = _now()
        if at == now:
            return  # within the tick that last moved it: nothing would change
        if (
            policy == STRICTATIME
            or at <= inode.mtime_ns
            or at <= inode.ctime_ns
            or now - at >= RELATIME_SECS * 10**9
        ):
            inode.atime_ns = now
            self._changed = True  # Read and ReadDir are in _READ_ONLY
            await self._save()

    async def _write(self, handle: Handle, offset: int, data: bytes, drop: int = 0) -> int:
        inode = self._live()
        if not inode.is_reg:
            raise OSError(errno.EINVAL if not inode.is_dir else errno.EISDIR, "not a file")
        if handle.flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "handle not open for writing")
        if inode.flags & IMMUTABLE_FL:
            raise OSError(errno.EPERM, "immutable file")
        if handle.flags & os.O_APPEND or inode.flags & APPEND_FL:
            offset = inode.size
        if offset < 0:
            raise OSError(errno.EINVAL, "negative offset")
        if not data:
            return 0
        fd = self._data_of(inode)
        try:
            n = await fd.write(offset, data, size=inode.size)
        except BaseException:
            # Even a failed write may have allocated blocks: keep i_blocks exact. (A
            # write that succeeds is saved once, below, with its new size and times.)
            if fd.inode_dirty or fd.fs_blocks != self._fs_blocks_held(inode):
                await self._save()
            raise
        now = _now()
        dropped = drop and await self._drop_privileges(inode, drop)
        if offset + n > inode.size:
            inode.size = offset + n
        elif (
            not dropped
            and not fd.remapped
            and now - self._write_time < TIME_GRANULE_NS
            and inode.mtime_ns == inode.ctime_ns == self._write_time
        ):
            # An overwrite in place within one tick of the previous write's times: the
            # inode would not change (the kernel stamps file times from its coarse clock,
            # so it leaves them too), and the group actor already holds it.
            return n
        inode.set_times(now)
        await self._save()
        self._write_time = inode.mtime_ns  # as stored (whole seconds without extra fields)
        return n

    async def _drop_privileges(self, inode: Inode, drop: int) -> bool:
        """Take away what a write(2), truncate(2) or chown(2) takes from a file (see
        ``DROP_SET_ID``): whether anything changed. The caller saves the inode."""
        changed = False
        if drop & DROP_SET_ID:
            kill = inode.mode & stat.S_ISUID
            # Only with group execute: without it the bit marks mandatory locking.
            if inode.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
                kill |= stat.S_ISGID
            if kill:
                inode.mode &= ~kill
                changed = True
        if drop & DROP_CAPABILITY and not (self._xattrs is None and _no_xattr_area(inode)):
            x = await self._xattr_store()
            if CAPABILITY_XATTR in x.names():
                await self._store_xattr(inode, x, CAPABILITY_XATTR, None, 0)
                changed = True
        return changed

    async def _release(self) -> None:
        if self.opens == 0:
            return None  # not opened through this vnode's life: nothing to give back
        self.opens -= 1
        if self.opens == 0 and self._data is not None:
            self._data.drop_tail()  # no writer left to append: hold no block for it
        inode = self.inode
        if self.opens == 0 and inode is not None and inode.links_count == 0 and inode.mode:
            self._changed = True  # Release is in _READ_ONLY
            await self._free_unless_referenced()
            if self.inode is not None:
                await self._save()
        return None

    async def _fsync(self) -> None:
        self._live()
        if self.ctx.read_only:
            return None
        await self._save()
        await self.vol.sync()
        return None

    # ----- directories ----------------------------------------------------------------------

    async def _dir_for_change(self) -> Directory:
        """The directory, about to be modified: an htree index is dropped first (the
        image stays valid as a linear directory)."""
        d = await self._directory()
        inode = self.inode
        assert inode is not None
        if inode.links_count == 0:
            raise OSError(errno.ENOENT, "directory was removed")
        if inode.flags & INDEX_FL:
            inode.flags &= ~INDEX_FL
            await self._save()
        return d

    async def _touch_dir(self) -> None:
        inode = self.inode
        assert inode is not None
        inode.set_times(_now())
        await self._save()

    async def _child(self, ino: int) -> Inode:
        """The current record of an inode named by an entry of this directory.

        Read from the group actor: every vnode writes its inode through, so the record
        there is current, and asking the group (not the child's vnode) keeps calls
        flowing one way.
        """
        if ino == self.ino:
            assert self.inode is not None
            return self.inode
        raw = await self.vol.read_inode(ino)
        try:
            child = Inode.parse(raw)
        except Exception as e:
            raise OSError(errno.EIO, f"inode {ino}: {e}") from None
        if child.mode == 0:
            raise OSError(errno.EIO, f"entry names a free inode {ino}")
        return child

    async def _child_stat(self, ino: int) -> tuple[Attr, int]:
        """(attributes, generation) of an inode named by an entry of this directory, as
        ``_child`` reads it, straight from the record (``_stat_record``: every LOOKUP
        asks)."""
        if ino == self.ino:
            assert self.inode is not None
            return self._attr(), self.inode.generation
        return self._stat_record(ino, await self.vol.read_inode(ino))

    def _stat_record(self, ino: int, raw: bytes) -> tuple[Attr, int]:
        """(attributes, generation) from inode ``ino``'s record, without building an
        ``Inode`` (``stat_view``)."""
        try:
            v = stat_view(raw)
        except Exception as e:
            raise OSError(errno.EIO, f"inode {ino}: {e}") from None
        mode = v[0]
        if mode == 0:
            raise OSError(errno.EIO, f"entry names a free inode {ino}")
        fmt = mode & 0o170000
        rdev = 0
        if fmt == stat.S_IFCHR or fmt == stat.S_IFBLK:
            rdev = os.makedev(*decode_device(bytes(raw[40:100])))
        blocks = v[5]
        if self.huge_file:
            blocks |= v[6] << 32
            if v[7] & HUGE_FILE_FL:
                blocks *= self.bs // 512
        attr = Attr(ino, mode, v[1], v[2], v[3], rdev, v[4], blocks, self.bs, *v[8:12])
        return attr, v[12]

    async def _child_attr(self, ino: int) -> Attr:
        return attr_of(ino, await self._child(ino), self.bs, self.huge_file)

    async def _lookup(self, name: bytes) -> Entry:
        d = await self._directory()
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        found = await d.lookup(name)
        if found is None:
            raise OSError(errno.ENOENT, f"no entry {name!r}")
        ino = found[0]
        attr, generation = await self._child_stat(ino)
        return Entry(ino, generation, attr)

    async def _readdir(self, offset: int) -> list[DirEntry]:
        d = await self._directory()
        inode = self.inode
        assert inode is not None
        if inode.links_count == 0:
            return []  # removed while open: no entries at all, as Linux reports
        if offset == 0:
            await self._touch_atime(inode)
        found = await d.entries(offset, READDIR_BATCH)
        # The children's records in one message per group (most live in this one).
        raws = iter(await self.vol.read_inodes([e.inode for e in found if e.inode != self.ino]))
        out = []
        for e in found:
            try:
                if e.inode == self.ino:
                    attr, gen = self._attr(), inode.generation
                else:
                    raw = next(raws)
                    if isinstance(raw, OSError):
                        raise raw
                    attr, gen = self._stat_record(e.inode, raw)
                mode = attr.mode
            except OSError:
                attr, gen = None, 0
                mode = dirent.mode_format_from_file_type(e.file_type)
            out.append(DirEntry(e.name, e.inode, mode, e.position + 1, attr, gen))
        return out

    async def _check_new(self, d: Directory, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        dirent.check_name(name)
        if name in (b".", b"..") or await d.lookup(name) is not None:
            raise OSError(errno.EEXIST, f"{name!r} exists")

    async def _create_open(
        self, name: bytes, mode: int, uid: int, gid: int, flags: int, umask: int = 0
    ) -> tuple[Handle, Entry]:
        """CreateOpen: a new regular file, its vnode started with the record made here
        (current: no other request can name the inode before this turn ends), opened;
        the Pin taken here is the handle's (see ``vp.CreateOpen``)."""
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        entry, child = await self._create(name, mode, 0, uid, gid, umask=umask)
        table = self.ctx.table
        ino = entry.inode
        ref, started = await call(table, Pin(ino, child))
        if started:
            # It began with the record just made, opened once (see started()): a new,
            # empty regular file, so an Open would check and change nothing more.
            return Handle(ino, ref, flags), entry
        try:
            handle = await call(ref, Open(ino, flags))
        except BaseException:
            cast(table, Closed(ino))
            raise
        return handle, entry

    async def _create(
        self,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        target: bytes | None = None,
        umask: int = 0,
    ) -> tuple[Entry, Inode]:
        """MkNod / MkDir / Symlink / CreateOpen: a new inode and its entry in this
        directory -> (Entry, the new record). ``umask`` narrows ``mode`` unless a
        default ACL is inherited instead."""
        d = await self._dir_for_change()
        parent = self.inode
        assert parent is not None
        await self._check_new(d, name)
        is_dir = stat.S_ISDIR(mode)
        if target is not None:
            if not target:
                raise OSError(errno.ENOENT, "empty symlink target")
            if len(target) + 1 > self.bs:
                raise OSError(errno.ENAMETOOLONG, "symlink target too long")
        if is_dir:
            self._check_dir_link_room(parent)

        # setgid directories pass their group (and, to directories, the bit) on.
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if is_dir:
                mode |= stat.S_ISGID
        # A default ACL passes on as the new inode's ACLs and narrows its mode; without
        # one the umask does (a symlink's mode is fixed).
        acls: list[tuple[bytes, bytes]] = []
        default = None
        if self.ctx.acl and target is None:
            default = await self._default_acl(parent)
            if default is not None:
                mode, access, inherited = acl.inherit(default, mode)
                acls = [(n, v) for n, v in ((acl.ACCESS, access), (acl.DEFAULT, inherited)) if v]
        if default is None and target is None:
            mode &= ~(umask & 0o777)

        now = _now()
        child = Inode.new(self.geo.inode_size)
        child.mode = mode
        child.uid = uid
        child.gid = gid
        child.links_count = 2 if is_dir else 1
        child.set_times(now, atime=True, crtime=True)
        child.generation = random.getrandbits(32)
        flags = parent.flags & _INHERITED
        if is_dir:
            pass
        elif stat.S_ISREG(mode):
            flags &= _REG_MASK
        else:
            flags &= _OTHER_MASK
        child.flags = flags
        fmt = stat.S_IFMT(mode)
        fast_link = target is not None and len(target) < 60
        if (
            self.extent_feature
            and fmt in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
            and not (fast_link)
        ):
            child.flags |= EXTENTS_FL
            child.i_block = ExtentTree.empty_root()
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            child.rdev = (os.major(rdev), os.minor(rdev))
        if fast_link:
            assert target is not None
            child.set_fast_symlink(target)
        # Directories and slow symlinks get a first block near their inode, so their
        # record is complete only after the allocation; any other new record does not
        # depend on its number and is written with the allocation, in one message.
        with_block = not fast_link and (target is not None or is_dir)
        xattrs = None
        try:
            if acls:
                # Placed before the record is written (an xattr block goes near the parent).
                xattrs = Xattrs(self.store, self.vol.allocator, self.bs, goal=self._goal())
                await xattrs.load(child)
                for acl_name, value in acls:
                    await xattrs.set(child, acl_name, value, 0)
            xattr_blocks = (self.bs // 512) if child.file_acl else 0
            if xattr_blocks:
                child.set_blocks(xattr_blocks, self.huge_file, self.bs)
            if with_block:
                ino = await self.vol.allocator.alloc_inode(self.ino, is_dir)
            else:
                ino = await self.vol.allocator.alloc_inode(self.ino, is_dir, child.build())
        except BaseException:
            if xattrs is not None:
                await xattrs.release(child)
            raise

        data: FileData | None = None
        try:
            if with_block:
                data = FileData(
                    child.i_block,
                    extents=child.uses_extents,
                    store=self.store,
                    allocator=self.vol.allocator,
                    block_size=self.bs,
                    fs_blocks=0,
                    goal=self.vol.allocator.goal_for_inode(ino),
                    extent_feature=self.extent_feature,
                    fs_blocks_count=self.geo.blocks_count,
                )
                if is_dir:
                    content = bytes(first_block(self.bs, ino, self.ino, self.filetype))
                else:
                    assert target is not None
                    content = target
                await data.write(0, content, size=0)
                await data.flush()
                child.i_block = data.i_block
                child.size = self.bs if is_dir else len(content)
                child.set_blocks(data.i_blocks + xattr_blocks, self.huge_file, self.bs)
                await self.vol.write_inode(ino, child.build())
            await d.add(name, ino, file_type_from_mode(mode) if self.filetype else FT_UNKNOWN)
        except BaseException:
            if xattrs is not None:
                await xattrs.release(child)
            await self._undo_create(ino, child, data, is_dir)
            raise
        if is_dir:
            self._inc_dir_links(parent)
        parent.set_times(now)
        await self._save()
        # ``child`` is now the record as written; CreateOpen starts the vnode from it, which
        # relies on that (VnodeActor.started): change nothing in it past the write above.
        return Entry(ino, child.generation, attr_of(ino, child, self.bs, self.huge_file)), child

    async def _default_acl(self, parent: Inode) -> bytes | None:
        """This directory's default ACL; None if it has none."""
        if self._xattrs is None and _no_xattr_area(parent):
            return None  # the common case, answered without building the attribute store
        try:
            return (await self._xattr_store(parent)).get(acl.DEFAULT)
        except OSError as e:
            if e.errno == errno.ENODATA:
                return None
            raise

    async def _undo_create(
        self, ino: int, child: Inode, data: FileData | None, is_dir: bool
    ) -> None:
        """Give back what a failed create took (blocks, then the inode)."""
        try:
            if data is not None and data.fs_blocks:
                await data.truncate(max(child.size, self.bs), 0)
                await data.flush()
            child.links_count = 0
            child.dtime = int(time.time()) & 0xFFFFFFFF
            child.size = 0
            child.set_blocks(0, self.huge_file, self.bs)
            await self.vol.allocator.free_inode(ino, is_dir, child.build())
        except OSError as e:
            log.error("undoing the creation of inode %d failed: %s", ino, e)

    def _check_dir_link_room(self, parent: Inode) -> None:
        """EMLINK for a new subdirectory when the count is full and cannot go to 1."""
        if parent.links_count >= LINK_MAX and not self.dir_nlink:
            raise OSError(errno.EMLINK, "too many links")

    def _inc_dir_links(self, parent: Inode) -> None:
        """ext4_inc_count: past LINK_MAX (with dir_nlink) the count becomes 1, "many"."""
        n = parent.links_count
        if n == 1 and self.dir_nlink:
            return
        n += 1
        if n > LINK_MAX:
            if not self.dir_nlink:
                raise OSError(errno.EMLINK, "too many links")
            n = 1
        parent.links_count = n

    def _dec_dir_links(self, parent: Inode) -> None:
        """ext4_dec_count for a directory: a count of 1 ("many") or 2 stays."""
        if parent.links_count > 2:
            parent.links_count -= 1

    async def _adjust_links(self, delta: int) -> int:
        inode = self._live()
        if not inode.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        for _ in range(abs(delta)):
            if delta > 0:
                self._check_dir_link_room(inode)
                self._inc_dir_links(inode)
            else:
                self._dec_dir_links(inode)
        inode.ctime_ns = _now()
        await self._save()
        return inode.links_count

    async def _readlink(self) -> bytes:
        inode = self._live()
        if not inode.is_symlink:
            raise OSError(errno.EINVAL, "not a symbolic link")
        if inode.is_fast_symlink:
            return bytes(inode.fast_symlink_target)
        if inode.size > self.bs or inode.size == 0:
            raise OSError(errno.EIO, f"symlink {self.ino} has a bad size {inode.size}")
        return await self._data_of(inode).read(0, inode.size)

    async def _call_child(self, ino: int, msg: Any) -> Any:
        if ino == self.ino:
            raise OSError(errno.EINVAL, "directory entry names the directory itself")
        return await call_vnode(self.ctx.table, ino, msg)

    async def _unlink(self, name: bytes, want_dir: bool) -> None:
        d = await self._dir_for_change()
        if name == b".":
            raise OSError(errno.EINVAL if want_dir else errno.EISDIR, "cannot remove '.'")
        if name == b"..":
            raise OSError(errno.ENOTEMPTY if want_dir else errno.EISDIR, "cannot remove '..'")
        found = await d.lookup(name)
        if found is None:
            if len(name) > NAME_MAX:
                raise OSError(errno.ENAMETOOLONG, "name too long")
            raise OSError(errno.ENOENT, f"no entry {name!r}")
        ino, ft = found
        if ft == FT_UNKNOWN:
            ft = file_type_from_mode((await self._child_attr(ino)).mode)
        is_dir = ft == FT_DIR
        if want_dir and not is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        if not want_dir and is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        if is_dir:
            # The child checks emptiness and drops to 0 links in one turn of its own.
            await self._call_child(ino, vp.DropLink())
            await d.remove(name, ino)
            self._dec_dir_links(self.inode)
        else:
            await d.remove(name, ino)
            await self._call_child(ino, vp.DropLink())
        await self._touch_dir()

    async def _rename_here(self, old: bytes, new: bytes, flags: int) -> None:
        """rename(2) inside this directory."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
            flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "invalid rename flags")
        d = await self._dir_for_change()
        for n in (old, new):
            if len(n) > NAME_MAX:
                raise OSError(errno.ENAMETOOLONG, "name too long")
            if n in (b".", b".."):
                raise OSError(errno.EBUSY, "cannot rename '.' or '..'")
        src = await d.lookup(old)
        if src is None:
            raise OSError(errno.ENOENT, f"no entry {old!r}")
        dst = await d.lookup(new)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise OSError(errno.ENOENT, f"no entry {new!r}")
            if src[0] == dst[0]:
                return None
            await d.replace(old, dst[0], dst[1], src[0])
            await d.replace(new, src[0], src[1], dst[0])
            await self._call_child(src[0], vp.Renamed())
            await self._call_child(dst[0], vp.Renamed())
            await self._touch_dir()
            return None
        if dst is not None and flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, f"{new!r} exists")
        if old == new or (dst is not None and dst[0] == src[0]):
            return None
        src_dir = src[1] == FT_DIR
        if dst is None:
            await d.add(new, src[0], src[1])
            await d.remove(old, src[0])
        else:
            dst_dir = dst[1] == FT_DIR
            if src_dir and not dst_dir:
                raise OSError(errno.ENOTDIR, "not a directory")
            if dst_dir and not src_dir:
                raise OSError(errno.EISDIR, "is a directory")
            if dst_dir:
                await self._call_child(dst[0], vp.DropLink())  # ENOTEMPTY before any change
                await d.replace(new, src[0], src[1], dst[0])
                await d.remove(old, src[0])
                self._dec_dir_links(self.inode)
            else:
                await d.replace(new, src[0], src[1], dst[0])
                await d.remove(old, src[0])
                await self._call_child(dst[0], vp.DropLink())
        await self._call_child(src[0], vp.Renamed())
        await self._touch_dir()
        return None

    # ----- links ----------------------------------------------------------------------------

    async def _add_link(self) -> Attr:
        inode = self._live()
        if inode.is_dir:
            raise OSError(errno.EPERM, "hard link to a directory")
        if inode.links_count == 0:
            raise OSError(errno.ENOENT, "file was removed")
        if inode.links_count >= LINK_MAX:
            raise OSError(errno.EMLINK, "too many links")
        inode.links_count += 1
        inode.ctime_ns = _now()
        await self._save()
        return self._attr(inode)

    async def _drop_link(self) -> int:
        inode = self._live()
        if inode.is_dir:
            if not (await self._directory()).is_empty():
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            inode.links_count = 0
        elif inode.links_count > 0:
            inode.links_count -= 1
        inode.ctime_ns = _now()
        if inode.links_count == 0:
            if self.opens == 0:
                # Held for the host kernel's references at most: see _write_back.
                await self._free_unless_referenced()
                if self.inode is None:
                    return 0
                # Kept for the host kernel's references: no longer written here. No name
                # leads to the record any more (lookups read records from the groups), the
                # host forgets it at once, and freeing it writes it again; a sync or this
                # vnode's retirement writes it first if it comes before (_write_back).
                self._changed = True
                return 0
            elif not self.on_orphan_list:
                # Open: on the orphan list at once, as ext4 does, so an fsync of any file
                # (it writes the superblock) keeps a crash from leaking it.
                inode.dtime = await call(self.ctx.orphans, AddOrphan(self.ino))
                self.on_orphan_list = True
        await self._save()
        return inode.links_count

    async def _free_unless_referenced(self) -> None:
        """Links 0, nothing open: free the inode now, unless the host kernel still holds
        lookup references on it; then keep it until the table sends Forgotten. The caller
        saves a kept inode."""
        self.held = await call(self.ctx.table, Hold(self.ino))
        if not self.held:
            await self._free()

    async def _free(self) -> None:
        """Give back the blocks, the xattr block and the inode (links 0, nothing open)."""
        inode = self.inode
        assert inode is not None
        is_dir = inode.is_dir
        runs: list[tuple[int, int]] = []
        # A file that holds no blocks (and has no mapping loaded) has nothing to give back.
        if self._has_data_blocks(inode) and (
            self._data is not None or self._fs_blocks_held(inode) > 0
        ):
            # A file whose extents all sit in its inode (every small file) gives its runs
            # to the inode's group with the inode itself; anything else is truncated. A
            # loaded mapping the record is current with (saved, nothing dirty) says what
            # the record says.
            d = self._data
            shallow = None
            if inode.uses_extents and (d is None or not (d.inode_dirty or d.blocks_dirty)):
                shallow = root_runs(inode.i_block, self.geo.blocks_count)
            if shallow is not None:
                runs = shallow
                inode.i_block = ExtentTree.empty_root()
            else:
                d = self._data_of(inode)
                await d.truncate(inode.size, 0)
                await d.flush()
                inode.i_block = d.i_block
        if inode.file_acl:
            x = await self._xattr_store(inode)
            await x.release(inode)
        if self.on_orphan_list:
            await call(self.ctx.orphans, RemoveOrphan(self.ino))
            self.on_orphan_list = False
        inode.links_count = 0
        inode.size = 0
        inode.set_blocks(0, self.huge_file, self.bs)
        inode.dtime = int(time.time()) & 0xFFFFFFFF
        self._written = None
        await self.vol.allocator.free_inode(self.ino, is_dir, inode.build(), runs)
        self.held = False
        self.inode = None
        self._data = self._dir = self._xattrs = None

    # ----- xattrs ---------------------------------------------------------------------------

    async def _setxattr(self, name: bytes, value: bytes | None, flags: int) -> None:
        inode = self._live()
        if name.startswith(b"user.") and not (inode.is_reg or inode.is_dir):
            raise OSError(errno.EPERM, "no user attributes on this file type")
        x = await self._xattr_store()
        if name == acl.ACCESS and value is not None:
            # The mode follows the ACL, and an ACL that says no more than the mode is not
            # kept at all (the VFS's posix_acl_update_mode, as ext4 sets an ACL).
            entries = acl.parse(value)
            if entries is None:
                raise OSError(errno.EINVAL, "malformed POSIX ACL")
            if inode.is_symlink:
                raise OSError(errno.EOPNOTSUPP, "no ACLs on a symlink")
            perms, equivalent = acl.equivalent_mode(entries)
            inode.mode = (inode.mode & ~0o777) | perms
            if equivalent:
                value = None
                if name not in x.names():
                    inode.ctime_ns = _now()
                    await self._save()
                    return
        await self._store_xattr(inode, x, name, value, flags)
        inode.ctime_ns = _now()
        await self._save()

    async def _store_xattr(
        self, inode: Inode, x: Xattrs, name: bytes, value: bytes | None, flags: int
    ) -> None:
        """Set (or with None remove) one attribute of this vnode's inode; the caller saves."""
        if self._has_data_blocks(inode):
            # Count the data blocks before i_file_acl changes (_save recounts i_blocks).
            self._data_of(inode)
        if value is None:
            await x.remove(inode, name)
        else:
            await x.set(inode, name, value, flags)


def _no_xattr_area(inode: Inode) -> bool:
    """Whether ``inode`` stores no extended attribute: no xattr block and no in-inode
    area (the area's magic absent)."""
    if inode.file_acl_lo or inode.file_acl_high:
        return False
    tail = inode.tail
    return len(tail) < 8 or _U32.unpack_from(tail)[0] != XATTR_MAGIC


def attr_of(ino: int, inode: Inode, block_size: int, huge_file: bool) -> Attr:
    """stat(2) attributes of an inode record."""
    mode = inode.mode
    fmt = mode & 0o170000
    rdev = os.makedev(*inode.rdev) if fmt == stat.S_IFCHR or fmt == stat.S_IFBLK else 0
    atime, mtime, ctime, crtime = inode.stat_times()
    # Positional, in Attr's field order (ino, mode, nlink, uid, gid, rdev, size, blocks,
    # blksize, atime, mtime, ctime, crtime): every GETATTR and LOOKUP builds one.
    return Attr(
        ino,
        mode,
        inode.links_count,
        inode.uid_lo | inode.uid_high << 16,
        inode.gid_lo | inode.gid_high << 16,
        rdev,
        inode.size_lo | inode.size_high << 32,
        inode.get_blocks(huge_file, block_size),
        block_size,
        atime,
        mtime,
        ctime,
        crtime,
    )
