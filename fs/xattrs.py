"""Extended attributes of one inode: where they live (storage policy over the codec).

The codec (``chanos.fs.format.xattr``) encodes the in-inode area and xattr blocks; this
module decides placement and keeps the on-disk objects right, as ext4 does:

- attributes live in the inode body (the area after ``128 + i_extra_isize``) while they
  fit, the rest in one xattr block named by ``i_file_acl`` (counted in ``i_blocks`` by
  the vnode);
- an xattr block shared by several inodes (``h_refcount`` > 1, which the Linux driver
  creates for identical attribute sets) is never edited in place: this inode's copy is
  written to a fresh block and the shared block's refcount is decremented;
- a block left with no attribute is released (freed at refcount 1);
- POSIX ACLs (``system.posix_acl_access`` / ``_default``) are converted between the
  xattr-API form and ext4's compact on-disk form, as the kernel does.

Errors are the ones Linux gives: ENODATA (absent; XATTR_REPLACE of an absent name),
EEXIST (XATTR_CREATE of a present name), ERANGE (name over 255 bytes), E2BIG (value over
64 KiB), ENOSPC (neither the inode nor one block can hold the set), EOPNOTSUPP (a
namespace ext4 does not store).

``Xattrs`` is owned by the vnode actor of its inode (one message at a time), so it needs
no locking; a shared block is the one piece of state two inodes touch, and it is only
ever read-modified-written within one turn of the vnode that drops its reference.
"""

from __future__ import annotations

import errno
from typing import Any

from chanos.fs.format import xattr as X
from chanos.fs.format._record import CorruptError
from chanos.fs.format.inode import Inode
from chanos.personality.syscalls import XATTR_CREATE, XATTR_REPLACE

_ACL_INDEXES = (X.INDEX_POSIX_ACL_ACCESS, X.INDEX_POSIX_ACL_DEFAULT)
_SETTABLE = (
    X.INDEX_USER,
    X.INDEX_TRUSTED,
    X.INDEX_SECURITY,
    X.INDEX_POSIX_ACL_ACCESS,
    X.INDEX_POSIX_ACL_DEFAULT,
)


class Xattrs:
    """The attributes of one inode. ``store`` reads/writes blocks (BlockStore);
    ``allocator`` allocates/frees them (BlockAllocator); ``goal`` is where a new xattr
    block should go (near the inode)."""

    def __init__(self, store: Any, allocator: Any, block_size: int, goal: int = 0) -> None:
        self.store = store
        self.allocator = allocator
        self.block_size = block_size
        self.goal = goal
        self._ibody: list[X.Xattr] = []
        self._block: list[X.Xattr] = []
        self._header: X.XattrBlockHeader | None = None
        self._loaded_for = -1

    # ----- loading ------------------------------------------------------------------------

    async def load(self, inode: Inode) -> None:
        """Read the attributes of ``inode`` (in-inode area and xattr block)."""
        try:
            self._ibody = X.parse_ibody(inode.tail) if inode.tail else []
        except CorruptError as e:
            raise OSError(errno.EIO, f"corrupt in-inode xattr area: {e}") from None
        self._block, self._header = [], None
        blk = inode.file_acl
        if blk:
            raw = await self.store.read_blocks(blk, 1)
            try:
                self._header, self._block = X.parse_block(raw)
            except CorruptError as e:
                raise OSError(errno.EIO, f"corrupt xattr block {blk}: {e}") from None
        self._loaded_for = blk

    def _all(self) -> list[X.Xattr]:
        return self._ibody + self._block

    def _find(self, index: int, name: bytes) -> X.Xattr | None:
        for x in self._all():
            if x.index == index and x.name == name:
                return x
        return None

    # ----- queries --------------------------------------------------------------------------

    def get(self, full: bytes) -> bytes:
        index, name = X.split_name(full)
        x = self._find(index, name)
        if x is None:
            raise OSError(errno.ENODATA, f"no attribute {full!r}")
        if x.value_inum:
            raise OSError(errno.EOPNOTSUPP, "attribute value stored in an EA inode")
        if index in _ACL_INDEXES:
            try:
                return X.acl_from_disk(x.value)
            except CorruptError:
                raise OSError(errno.EIO, f"corrupt ACL in {full!r}") from None
        return x.value

    def names(self) -> list[bytes]:
        return [x.full_name for x in self._all()]

    # ----- changes --------------------------------------------------------------------------

    async def set(self, inode: Inode, full: bytes, value: bytes, flags: int) -> None:
        """Set (or with ``value is None`` remove) one attribute; updates ``inode.tail`` and
        ``inode.file_acl``; the caller writes the inode and recounts i_blocks."""
        index, name = X.split_name(full)
        if index not in _SETTABLE:
            raise OSError(errno.EOPNOTSUPP, f"attribute namespace of {full!r} not supported")
        if len(value) > X.SIZE_MAX:
            raise OSError(errno.E2BIG, "attribute value too large")
        old = self._find(index, name)
        if flags & XATTR_CREATE and old is not None:
            raise OSError(errno.EEXIST, f"attribute {full!r} exists")
        if flags & XATTR_REPLACE and old is None:
            raise OSError(errno.ENODATA, f"no attribute {full!r}")
        if index in _ACL_INDEXES:
            value = X.acl_to_disk(value)
        new = X.Xattr(index, name, bytes(value))
        if old is not None:
            wanted = [new if x is old else x for x in self._all()]
        else:
            wanted = [*self._all(), new]
        await self._store(inode, wanted)

    async def remove(self, inode: Inode, full: bytes) -> None:
        index, name = X.split_name(full)
        old = self._find(index, name)
        if old is None:
            raise OSError(errno.ENODATA, f"no attribute {full!r}")
        await self._store(inode, [x for x in self._all() if x is not old])

    async def _store(self, inode: Inode, wanted: list[X.Xattr]) -> None:
        area = len(inode.tail)
        ibody, block = X.place(wanted, area, self.block_size)
        new_tail = X.build_ibody(ibody, area) if area else b""
        if block:
            raw = X.build_block(block, self.block_size, 1)
            await self._put_block(inode, raw)
        elif inode.file_acl:
            await self.release(inode)
        inode.tail = new_tail
        self._ibody, self._block = ibody, block

    async def _put_block(self, inode: Inode, raw: bytes) -> None:
        """Write this inode's block: in place when it owns it alone, else a fresh one."""
        blk = inode.file_acl
        if blk and self._header is not None and self._header.refcount <= 1:
            await self.store.write_blocks(blk, raw)
            self._header, _ = X.parse_block(raw)
            return
        start, _n = await self.allocator.allocate(self.goal, 1)
        try:
            await self.store.write_blocks(start, raw)
        except OSError:
            await self.allocator.free(start, 1)
            raise
        if blk:
            await self._drop_shared(blk)
        inode.file_acl = start
        self._header, _ = X.parse_block(raw)

    async def _drop_shared(self, blk: int) -> None:
        """Decrement a shared block's refcount (free it at the last reference)."""
        raw = await self.store.read_blocks(blk, 1)
        try:
            hdr, entries = X.parse_block(raw)
        except CorruptError as e:
            raise OSError(errno.EIO, f"corrupt xattr block {blk}: {e}") from None
        if hdr.refcount <= 1:
            await self.allocator.free(blk, 1)
            return
        await self.store.write_blocks(
            blk, X.build_block(entries, self.block_size, hdr.refcount - 1, hdr)
        )

    async def release(self, inode: Inode) -> None:
        """Drop this inode's reference to its xattr block (inode freed or block emptied)."""
        blk = inode.file_acl
        if not blk:
            return
        if self._header is not None and self._header.refcount <= 1 and self._loaded_for == blk:
            await self.allocator.free(blk, 1)
        else:
            await self._drop_shared(blk)
        inode.file_acl = 0
        self._header, self._block = None, []
        self._loaded_for = 0
