"""The rename coordinator: the kernel's rename mutex, as an actor.

Every ``Rename`` between two directories goes through this one actor, so those renames
are serialized against each other. That is what makes the loop check sound: only such a
rename can move a directory, so while the coordinator walks ``..`` from the target
directory up to the root, no other rename can change the path it walks. (The kernel
sends a rename within one directory to that directory's vnode instead: it changes no
``..``; the coordinator still serves one correctly if sent it.) Everything else the
coordinator does is messages to the vnodes involved (``chanos.fs.vnode_protocol``); each
directory serializes its own entry changes through its mailbox, and ``expect_ino`` on
Replace/RemoveEntry guards against a concurrent unlink, create or same-directory rename
between the coordinator's lookups and its changes.

Order of changes: the new name is made to point at the source before the old name goes,
so at no moment is the source reachable by no name. Link counts of both parents follow
the moved directory's ``..``; a directory renamed within its parent changes no counts.
Errors: ENOENT (no source, or no target with RENAME_EXCHANGE), EEXIST (target with
RENAME_NOREPLACE), EINVAL (bad flags; a directory into its own subtree), EBUSY (``.`` or
``..`` as a name), ENAMETOOLONG, ENOTDIR / EISDIR (type mismatch with the target),
ENOTEMPTY (non-empty directory target), EMLINK (target parent's link count full).
Never EXDEV: there is one file system.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from chanos.fs.vnode_protocol import (
    AdjustLinks,
    CheckEmpty,
    DropLink,
    InsertEntry,
    LookupEntry,
    RemoveEntry,
    Renamed,
    ReplaceEntry,
)
from chanos.fs.vnode_table import call_vnode
from chanos.personality import Actor, ActorRef
from chanos.personality.syscalls import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Rename,
)

log = logging.getLogger(__name__)

FT_DIR = 2  # dirent file_type of a directory
_MAX_DEPTH = 1 << 16  # a `..` walk longer than this is a corrupt tree, not a deep one


def check_name(name: bytes) -> None:
    """Raise the errno a component name earns: ENAMETOOLONG, EINVAL, EBUSY, ENOENT."""
    if not name:
        raise OSError(errno.ENOENT, "empty name")
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    if name in (b".", b".."):
        raise OSError(errno.EBUSY, "cannot rename . or ..")
    if b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, "name contains / or NUL")


class RenameCoordinator(Actor):
    """Serves ``syscalls.Rename``; ``table`` is the vnode table."""

    def __init__(self, table: ActorRef, root: int = ROOT_INO) -> None:
        self._table = table
        self._root = root

    async def handle(self, msg: Any) -> Any:
        match msg:
            case Rename(old_parent, old_name, new_parent, new_name, flags):
                return await self._rename(old_parent, old_name, new_parent, new_name, flags)
            case _:
                raise TypeError(f"rename coordinator: unknown message {msg!r}")

    async def _v(self, ino: int, msg: Any) -> Any:
        return await call_vnode(self._table, ino, msg)

    async def _lookup(self, parent: int, name: bytes) -> tuple[int, int] | None:
        try:
            ino, ftype = await self._v(parent, LookupEntry(name))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return ino, ftype

    async def _is_ancestor(self, ancestor: int, start: int) -> bool:
        """Whether directory ``ancestor`` is ``start`` or above it (walks ``..``)."""
        ino = start
        for _ in range(_MAX_DEPTH):
            if ino == ancestor:
                return True
            if ino == self._root:
                return False
            found = await self._lookup(ino, b"..")
            if found is None:
                # A directory already removed: it has no way up, so nothing is above it.
                return False
            parent = found[0]
            if parent == ino:
                return False
            ino = parent
        raise OSError(errno.EIO, "directory tree deeper than any sane tree: corrupt `..`")

    async def _rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
            flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "invalid rename flags")
        check_name(old_name)
        check_name(new_name)

        src = await self._lookup(old_parent, old_name)
        if src is None:
            raise OSError(errno.ENOENT, "rename: no such source")
        dst = await self._lookup(new_parent, new_name)
        src_ino, src_ft = src
        src_dir = src_ft == FT_DIR

        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise OSError(errno.ENOENT, "rename exchange: no such target")
            return await self._exchange(old_parent, old_name, src, new_parent, new_name, dst)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "rename: target exists")
        if dst is not None and dst[0] == src_ino:
            # Two names of one inode (or one name twice): POSIX says do nothing.
            return None

        cross = old_parent != new_parent
        if src_dir and cross and await self._is_ancestor(src_ino, new_parent):
            raise OSError(errno.EINVAL, "rename: directory into its own subtree")

        dst_dir = False
        if dst is not None:
            dst_ino, dst_ft = dst
            dst_dir = dst_ft == FT_DIR
            if dst_dir and cross and await self._is_ancestor(dst_ino, old_parent):
                # The target holds the source somewhere below it (Linux's "trap").
                raise OSError(errno.ENOTEMPTY, "rename: target is an ancestor of the source")
            if src_dir and not dst_dir:
                raise OSError(errno.ENOTDIR, "rename: directory over non-directory")
            if dst_dir and not src_dir:
                raise OSError(errno.EISDIR, "rename: non-directory over directory")
            if dst_dir:
                await self._v(dst_ino, CheckEmpty())

        # Link counts: the target parent gains the source's `..` (when it moves in) and
        # loses a replaced directory's `..`; the source parent loses the source's `..`.
        new_delta = (1 if src_dir and cross else 0) - (1 if dst_dir else 0)
        old_delta = -1 if src_dir and cross else 0
        if new_delta > 0:
            # EMLINK before any entry changes, so a refusal leaves nothing to undo.
            await self._v(new_parent, AdjustLinks(+1))

        try:
            if dst is not None:
                await self._v(new_parent, ReplaceEntry(new_name, src_ino, src_ft, dst[0]))
            else:
                await self._v(new_parent, InsertEntry(new_name, src_ino, src_ft))
        except OSError:
            if new_delta > 0:
                await self._v(new_parent, AdjustLinks(-1))
            raise

        await self._v(old_parent, RemoveEntry(old_name, src_ino))
        if dst is not None:
            await self._v(dst[0], DropLink())
        if new_delta < 0:
            await self._v(new_parent, AdjustLinks(new_delta))
        if old_delta:
            await self._v(old_parent, AdjustLinks(old_delta))
        await self._v(src_ino, Renamed(new_parent if src_dir and cross else 0))
        return None

    async def _exchange(
        self,
        old_parent: int,
        old_name: bytes,
        src: tuple[int, int],
        new_parent: int,
        new_name: bytes,
        dst: tuple[int, int],
    ) -> None:
        src_ino, src_ft = src
        dst_ino, dst_ft = dst
        if src_ino == dst_ino:
            return None
        src_dir, dst_dir = src_ft == FT_DIR, dst_ft == FT_DIR
        cross = old_parent != new_parent
        if cross:
            # Each directory lands where the other was: neither may land inside itself.
            if src_dir and await self._is_ancestor(src_ino, new_parent):
                raise OSError(errno.EINVAL, "rename exchange: directory into its own subtree")
            if dst_dir and await self._is_ancestor(dst_ino, old_parent):
                raise OSError(errno.EINVAL, "rename exchange: directory into its own subtree")
        # Only when exactly one of them is a directory do the parents' counts change.
        delta = (1 if src_dir else 0) - (1 if dst_dir else 0) if cross else 0
        if delta > 0:
            await self._v(new_parent, AdjustLinks(+1))
        elif delta < 0:
            await self._v(old_parent, AdjustLinks(+1))
        try:
            await self._v(new_parent, ReplaceEntry(new_name, src_ino, src_ft, dst_ino))
        except OSError:
            if delta:
                await self._v(new_parent if delta > 0 else old_parent, AdjustLinks(-1))
            raise
        await self._v(old_parent, ReplaceEntry(old_name, dst_ino, dst_ft, src_ino))
        if delta > 0:
            await self._v(old_parent, AdjustLinks(-1))
        elif delta < 0:
            await self._v(new_parent, AdjustLinks(-1))
        await self._v(src_ino, Renamed(new_parent if src_dir and cross else 0))
        await self._v(dst_ino, Renamed(old_parent if dst_dir and cross else 0))
        return None
