"""Boot: start the kernel on an image or a block device, and route system calls.

``boot(source, options)`` is an async context manager. It builds the supervisor tree::

    kernel (one-for-one)
    ├── driver            the block-device driver actor (unless one was passed in)
    ├── volume            superblock actor + one actor per block group (chanos.fs.volume)
    ├── vnode-table       inode number -> live vnode actor (chanos.fs.vnode_table)
    ├── vnodes            supervisor of the vnode actors (one-for-one, transient children)
    ├── orphans           the on-disk orphan list (chanos.fs.orphans)
    └── rename            the rename coordinator (chanos.fs.rename)

then frees the orphans a crash left behind, and yields a ``Kernel``. Leaving the block
unmounts: open handles are released, every vnode is written back and retired, the groups
and the superblock are synced and marked clean, and the driver is flushed.

``await kernel.syscall(msg)`` answers every message of ``chanos.personality.syscalls``:

* messages naming an inode (GetAttr, Open, xattrs, ...) and messages naming a parent
  directory (Lookup, MkDir, Unlink, ...) go to that inode's vnode, found through the vnode
  table and pinned for the duration of the call; GetAttr, GetXattr, ListXattr, ReadLink,
  Lookup and SetAttr go without a pin to a vnode whose address the kernel remembers (one
  message instead of three; see "The fast path" in chanos.fs.vnode_table);
* messages carrying a Handle (Read, Write, ReadDir, ...) go straight to ``handle.vnode``:
  the address travelled in the handle, no table lookup;
* lookup references: every Entry reply (Lookup, MkNod, MkDir, Symlink, Link, Create) and
  every counted entry of a ReadDir reply (readdirplus) is one reference, counted in the
  table; Forget gives references back;
* Rename goes to the rename coordinator (within one directory: to that directory's
  vnode); StatFs to the volume (every group's counts to the superblock actor, then the
  superblock actor); Forget to the
  table (``vnode_table.forget``: the last one for an unlinked inode frees it before the
  reply);
* Create is one message to the parent (``CreateOpen``: it makes the inode, starts its
  vnode with the new record and opens it; an existing name falls back to Lookup + Open
  here); Link is composed here from vnode messages (AddLink + InsertEntry + Lookup).

A vnode that crashes while serving a request is restarted by the vnode supervisor from
its on-disk state; that request fails with EIO, every other request goes on.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from chanos.fs.format.inode import in_use_without_xattrs
from chanos.fs.format.xattr import split_name
from chanos.fs.vnode import ATIME_POLICIES, RELATIME
from chanos.fs.vnode_protocol import AddLink, CreateOpen, InsertEntry, RemoveEntry
from chanos.fs.vnode_table import (
    DEFAULT_MAX_VNODES,
    VnodeTable,
    forget,
    free_held,
    supervised_starter,
    tell,
    write_back_all,
)
from chanos.fs.vnode_table_protocol import (
    NEEDS_PIN,
    Closed,
    Crashed,
    GetStats,
    Pin,
    Referenced,
    RetireAll,
    TableStats,
    Unpin,
    Unpinned,
)
from chanos.personality import (
    ONE_FOR_ONE,
    PERMANENT,
    ActorDied,
    ActorRef,
    CallError,
    ChildSpec,
    call,
    cast,
    open_supervisor,
)
from chanos.personality.syscalls import (
    NAME_MAX,
    Create,
    Entry,
    Flush,
    Forget,
    FSync,
    FSyncDir,
    GetAttr,
    GetXattr,
    Handle,
    Link,
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
    StatFs,
    Symlink,
    Unlink,
    Write,
)

log = logging.getLogger("chanos.kernel")

DEFAULT_WRITE_BEHIND = 4 << 20

_FT_FROM_MODE = {
    stat.S_IFREG: 1,
    stat.S_IFDIR: 2,
    stat.S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    stat.S_IFLNK: 7,
}


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How to mount.

    ``read_only``: refuse every change with EROFS (also forced when the image has
    ro_compat features chanos does not know). ``max_vnodes``: the bound on live vnode
    actors (soft: pinned vnodes are never retired, see chanos.fs.vnode_table).
    ``cleanup_orphans``: free the inodes a crash left on the orphan list at mount.
    ``write_behind``: bytes an image-file driver queues before it writes them out (its
    write cache; up to three times this much is held while write-outs are in flight).
    4 MiB keeps writes as large contiguous ``pwritev`` runs at a quarter of the memory of
    the driver's default. ``acl``: POSIX ACLs, as ext4's mount option of that name: a new
    inode inherits its directory's default ACL (see chanos.fs.acl). ``atime``: when a read
    or a directory listing moves the access time, as Linux's mount options of the same
    names: ``"relatime"`` (the default: when it is not newer than the last change, or a
    day old), ``"strictatime"`` (every time) or ``"noatime"`` (never); ``diratime=False``
    (nodiratime) never moves a directory's.
    """

    read_only: bool = False
    max_vnodes: int = DEFAULT_MAX_VNODES
    cleanup_orphans: bool = True
    write_behind: int = DEFAULT_WRITE_BEHIND
    max_restarts: int = 10
    restart_window: float = 5.0
    acl: bool = True
    atime: str = RELATIME
    diratime: bool = True

    def __post_init__(self) -> None:
        if self.atime not in ATIME_POLICIES:
            raise ValueError(f"atime policy {self.atime!r} is not one of {sorted(ATIME_POLICIES)}")


@dataclass(frozen=True, slots=True)
class VnodeContext:
    """What a vnode actor is given by the kernel: the mounted volume (superblock and group
    actors, geometry, device, allocator), the vnode table (to reach other vnodes with
    ``chanos.fs.vnode_table.call_vnode``), the orphan list, the read-only flag, whether
    new inodes inherit default ACLs, and the atime policy (see MountOptions)."""

    volume: Any
    table: ActorRef
    orphans: ActorRef
    read_only: bool
    acl: bool = True
    atime: str = RELATIME
    diratime: bool = True


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    if not name:
        raise OSError(errno.ENOENT, "empty name")
    if b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, "name contains / or NUL")


def _check_new_name(name: bytes) -> None:
    _check_name(name)
    if name in (b".", b".."):
        raise OSError(errno.EEXIST, "name exists")


class Kernel:
    """The system-call entry point ``boot`` yields. Not an actor: ``syscall`` runs in the
    caller's task and only sends messages; all file-system state lives in actors."""

    def __init__(
        self,
        *,
        volume: Any,
        table: ActorRef,
        rename: ActorRef,
        options: MountOptions,
    ) -> None:
        self.volume = volume
        self.table = table
        # Vnode addresses the table gave out, by inode, oldest first, for requests sent
        # without a pin (``_unpinned``); a stale one answers ActorDied and is dropped.
        # An OrderedDict: dropping the oldest key of a plain dict scans the holes that
        # earlier drops left at its front.
        self._refs: OrderedDict[int, ActorRef] = OrderedDict()
        self._refs_max = max(options.max_vnodes, 1)
        self.rename = rename
        self.options = options
        self._fh = itertools.count(1)
        # Open handles by fh, so unmount can release the ones nobody released.
        self._handles: dict[int, tuple[Handle, bool]] = {}

    # -- routing ---------------------------------------------------------------------------

    async def _to_inode(
        self, ino: int, msg: Any, *, looked_up: bool = False, absent: bool = False
    ) -> Any:
        """Call ``ino``'s vnode, pinned; count an Entry reply as a lookup reference.

        ``absent``: the message is a Lookup that must fail with ENOENT; an answer is
        EEXIST.
        """
        table = self.table
        ref = await call(table, Pin(ino))
        self._remember(ino, ref)
        entry_ino = 0
        try:
            if absent:
                try:
                    await call(ref, msg)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        return None
                    raise
                raise OSError(errno.EEXIST, "name exists")
            reply = await call(ref, msg)
            if looked_up and isinstance(reply, Entry):
                entry_ino = reply.inode
            return reply
        except CallError as exc:
            raise self._crashed(ino, ref, msg, exc) from exc
        finally:
            await tell(table, Unpin(ino, 0, entry_ino))

    async def _to_vnode(self, ino: int, msg: Any, *, looked_up: bool = False) -> Any:
        """A request that never asks the vnode table: unpinned to ``ino``'s vnode when its
        address is known and the vnode can take it that way, else pinned (``_to_inode``).
        ``looked_up``: count an Entry reply as a lookup reference."""
        ref = self._refs.get(ino)
        if ref is not None:
            reply = await self._unpinned(ino, ref, msg)
            if reply is not NEEDS_PIN:
                if looked_up:
                    # Counted before the host kernel can send the Forget that gives it back.
                    await tell(self.table, Referenced((reply.inode,)))
                return reply
        return await self._to_inode(ino, msg, looked_up=looked_up)

    async def _unpinned(self, ino: int, ref: ActorRef, msg: Any) -> Any:
        """Send ``msg`` to ``ino``'s vnode at ``ref`` without a pin (one message instead
        of three; see chanos.fs.vnode_table, "The fast path"). Only for requests whose
        handling never asks the vnode table (the vnode checks its own state and answers
        NEEDS_PIN otherwise). -> the reply, or NEEDS_PIN: send it pinned."""
        try:
            return await call(ref, Unpinned(msg))
        except ActorDied:
            # Retired (stopped before the request ran): forget the address.
            if self._refs.get(ino) is ref:
                del self._refs[ino]
            return NEEDS_PIN
        except CallError as exc:
            raise self._crashed(ino, ref, msg, exc) from exc

    def _remember(self, ino: int, ref: ActorRef) -> None:
        """Keep ``ino``'s vnode address for unpinned requests (at most ``max_vnodes``
        addresses, the oldest dropped first)."""
        refs = self._refs
        if ino not in refs and len(refs) >= self._refs_max:
            refs.popitem(last=False)
        refs[ino] = ref

    def _crashed(self, ino: int, ref: ActorRef, msg: Any, exc: CallError) -> OSError:
        """Tell the table ``ino``'s vnode ``ref`` crashed serving ``msg``; the EIO to raise."""
        cast(self.table, Crashed(ino, ref))
        log.error("vnode %d crashed serving %r: %r", ino, msg, exc)
        return OSError(errno.EIO, f"I/O error (vnode {ino} failed)")

    async def _to_handle(self, handle: Handle, msg: Any) -> Any:
        try:
            return await call(handle.vnode, msg)
        except CallError as exc:
            raise self._crashed(handle.inode, handle.vnode, msg, exc) from exc

    async def _open(self, ino: int, msg: Any) -> Handle:
        """Open through ``ino``'s vnode; the handle pins the vnode until released."""
        table = self.table
        ref = await call(table, Pin(ino))
        self._remember(ino, ref)
        opened = 0
        try:
            handle = await call(ref, msg)
            # Built directly: dataclasses.replace costs more than the rest of the line.
            handle = Handle(handle.inode, ref, handle.flags, next(self._fh))
            opened = 1
            self._handles[handle.fh] = (handle, type(msg) is OpenDir)
            return handle
        except CallError as exc:
            raise self._crashed(ino, ref, msg, exc) from exc
        finally:
            await tell(table, Unpin(ino, opened))

    async def _create_open(self, parent: int, msg: CreateOpen) -> tuple[Handle, Entry]:
        """CreateOpen through the parent's vnode: the reply's Entry is a lookup reference,
        and the new vnode is pinned for the handle (by the parent's Pin) until Closed."""
        table = self.table
        ref = await call(table, Pin(parent))
        self._remember(parent, ref)
        entry_ino = 0
        try:
            handle, entry = await call(ref, msg)
            entry_ino = entry.inode
        except CallError as exc:
            raise self._crashed(parent, ref, msg, exc) from exc
        finally:
            await tell(table, Unpin(parent, 0, entry_ino))
        handle = Handle(handle.inode, handle.vnode, handle.flags, next(self._fh))
        self._handles[handle.fh] = (handle, False)
        self._remember(entry_ino, handle.vnode)
        return handle, entry

    async def _release(self, handle: Handle, msg: Any) -> None:
        if self._handles.pop(handle.fh, None) is None:
            raise OSError(errno.EBADF, "handle not open")
        try:
            await self._to_handle(handle, msg)
        finally:
            await tell(self.table, Closed(handle.inode))

    def _writable(self) -> None:
        if self.options.read_only:
            raise OSError(errno.EROFS, "read-only file system")

    async def syscall(self, msg: Any) -> Any:
        """Serve one system-call message -> its reply; errors as OSError(errno)."""
        match msg:
            # The commonest requests first (ls -l, stat, cp): a case is an isinstance test.
            case GetXattr(ino, name):
                # A vnode whose address is known is asked without a pin; otherwise the
                # record may show there is no attribute at all without starting one.
                if ino not in self._refs and await self._no_xattrs(ino, name):
                    raise OSError(errno.ENODATA, f"no attribute {name!r}")
                return await self._to_vnode(ino, msg)
            case GetAttr(ino) | ReadLink(ino) | ListXattr(ino):
                return await self._to_vnode(ino, msg)
            case Lookup(parent, name):
                _check_name(name)
                return await self._to_vnode(parent, msg, looked_up=True)
            case Read(handle) | FSync(handle) | FSyncDir(handle):
                return await self._to_handle(handle, msg)
            case ReadDir(handle):
                entries = await self._to_handle(handle, msg)
                # readdirplus: each counted entry is a lookup reference, like an Entry.
                counted = tuple(d.inode for d in entries if d.counted)
                if counted:
                    cast(self.table, Referenced(counted))
                return entries
            case Write(handle) | Flush(handle):
                if type(msg) is Write:
                    self._writable()
                return await self._to_handle(handle, msg)
            case Release(handle) | ReleaseDir(handle):
                return await self._release(handle, msg)
            case MkNod(parent, name) | MkDir(parent, name) | Symlink(parent, name):
                self._writable()
                _check_new_name(name)
                return await self._to_inode(parent, msg, looked_up=True)
            case Unlink(parent, name) | RmDir(parent, name):
                self._writable()
                _check_name(name)
                if name in (b".", b".."):
                    raise OSError(
                        errno.EISDIR if type(msg) is Unlink else errno.EINVAL,
                        "cannot remove . or ..",
                    )
                return await self._to_inode(parent, msg)
            case SetXattr(ino) | RemoveXattr(ino):
                self._writable()
                return await self._to_inode(ino, msg)
            case SetAttr(ino, handle=handle):
                self._writable()
                if handle is not None:
                    return await self._to_handle(handle, msg)
                return await self._to_vnode(ino, msg)
            case Open(ino, flags):
                if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
                    self._writable()
                return await self._open(ino, msg)
            case OpenDir(ino):
                return await self._open(ino, msg)
            case Create():
                self._writable()
                return await self._create(msg)
            case Link():
                self._writable()
                return await self._link(msg)
            case Rename(old_parent, old_name, new_parent, new_name):
                self._writable()
                _check_name(old_name)
                _check_name(new_name)
                if old_parent == new_parent:
                    # Within one directory nothing moves between directories, so there
                    # is no loop to check and no other directory to change: the parent
                    # does it in one turn (as it does an unlink), without the coordinator.
                    return await self._to_inode(old_parent, msg)
                try:
                    return await call(self.rename, msg)
                except CallError as exc:
                    log.error("rename coordinator crashed serving %r: %r", msg, exc)
                    raise OSError(errno.EIO, "I/O error (rename failed)") from exc
            case StatFs():
                return await self.volume.statfs()
            case Forget(ino, nlookup):
                await forget(self.table, ino, nlookup)
                return None
            case _:
                raise OSError(errno.ENOSYS, f"unknown system call {type(msg).__name__}")

    async def _no_xattrs(self, ino: int, name: bytes) -> bool:
        """Whether ``ino`` (no vnode address known) certainly has no attribute ``name``.

        ``ls -l`` asks every file for security.selinux and system.posix_acl_access, and
        almost no file has either: the answer is read from the inode record in its group
        actor, without starting a vnode. Anything but a plain "in use, no xattr at all"
        (an invalid name, a free inode, an xattr area or block) -> False: the vnode answers.
        """
        try:
            split_name(name)
            return in_use_without_xattrs(await self.volume.read_inode(ino))
        except OSError:
            return False

    async def _create(self, msg: Create) -> tuple[Handle, Entry]:
        """Create = the parent makes the inode and its name and opens it (CreateOpen); a
        name that exists already is looked up and opened instead (unless O_EXCL)."""
        _check_new_name(msg.name)
        flags = msg.flags & ~(os.O_CREAT | os.O_EXCL)
        try:
            # A new file is empty already: no O_TRUNC.
            new = CreateOpen(msg.name, msg.mode, msg.uid, msg.gid, flags & ~os.O_TRUNC, msg.umask)
            return await self._create_open(msg.parent, new)
        except OSError as exc:
            if exc.errno != errno.EEXIST or msg.flags & os.O_EXCL:
                raise
        entry = await self._to_inode(msg.parent, Lookup(msg.parent, msg.name), looked_up=True)
        if stat.S_ISDIR(entry.attr.mode):
            raise OSError(errno.EISDIR, "is a directory") from None
        handle = await self._open(entry.inode, Open(entry.inode, flags))
        if flags & os.O_TRUNC:
            entry = replace(entry, attr=await self._to_inode(entry.inode, GetAttr(entry.inode)))
        return handle, entry

    async def _link(self, msg: Link) -> Entry:
        """Link = the new name, then one more link on the inode (undone if that fails).

        The name goes first so the errors come in Linux's order: EEXIST (the name) before
        EPERM (a directory) and EMLINK (the count).
        """
        _check_new_name(msg.new_name)
        attr = await self._to_inode(msg.inode, GetAttr(msg.inode))
        if stat.S_ISDIR(attr.mode):
            await self._to_inode(msg.new_parent, Lookup(msg.new_parent, msg.new_name), absent=True)
            raise OSError(errno.EPERM, "hard link to a directory")
        ftype = _FT_FROM_MODE.get(stat.S_IFMT(attr.mode), 0)
        await self._to_inode(msg.new_parent, InsertEntry(msg.new_name, msg.inode, ftype))
        try:
            await self._to_inode(msg.inode, AddLink())
        except OSError:
            await self._to_inode(msg.new_parent, RemoveEntry(msg.new_name, msg.inode))
            raise
        return await self._to_inode(
            msg.new_parent, Lookup(msg.new_parent, msg.new_name), looked_up=True
        )

    # -- administration --------------------------------------------------------------------

    async def sync(self) -> None:
        """Write every vnode back, then the groups and the superblock (sync(2))."""
        await write_back_all(self.table)
        await self.volume.sync()

    async def vnode_stats(self) -> TableStats:
        return await call(self.table, GetStats())

    async def _unmount(self) -> None:
        for handle, is_dir in list(self._handles.values()):
            # Handles nobody released (a test that stopped early, a killed front end):
            # release them so unlinked-but-open inodes are freed now, not at next mount.
            msg = ReleaseDir(handle) if is_dir else Release(handle)
            try:
                await self._release(handle, msg)
            except OSError as exc:
                log.error("unmount: release of inode %d failed: %s", handle.inode, exc)
        # Unlinked inodes kept only for the host kernel's lookup references: the mount
        # ends those references, so they are freed now (a crash leaves them orphans).
        await free_held(self.table)
        await call(self.table, RetireAll())


# ---------------------------------------------------------------------------------------
# boot
# ---------------------------------------------------------------------------------------


def _driver_spec(source: Any, options: MountOptions) -> Callable[[], Any] | None:
    """A factory for the driver actor, or None when ``source`` is a running driver."""
    if isinstance(source, (str, os.PathLike)):
        from chanos.drivers import ImageFileDriver

        path = os.fspath(source)
        ro, wb = options.read_only, options.write_behind
        return lambda: ImageFileDriver(path, read_only=ro, write_behind=wb)
    if callable(source) and not isinstance(source, ActorRef):
        return source
    return None


@asynccontextmanager
async def boot(source: Any, options: MountOptions | None = None) -> AsyncIterator[Kernel]:
    """Mount ``source`` and yield a Kernel; unmount on exit.

    ``source``: an image file path; a running driver actor's ``ActorRef``; or a zero-
    argument factory returning a driver actor (e.g. ``lambda: RamDiskDriver(size)``), which
    is then started under the kernel's supervisor.
    Raises OSError for a mount that is refused (unknown incompat features, a journal that
    needs recovery, a corrupt superblock) with a message naming the reason.
    """
    from chanos.drivers.client import BlockDevice
    from chanos.fs.orphans import OrphanList, cleanup_orphans
    from chanos.fs.rename import RenameCoordinator
    from chanos.fs.volume import mount

    options = options or MountOptions()
    async with open_supervisor(
        name="kernel",
        strategy=ONE_FOR_ONE,
        max_restarts=options.max_restarts,
        within=options.restart_window,
    ) as sup:
        factory = _driver_spec(source, options)
        if factory is not None:
            driver = await sup.start(ChildSpec(name="driver", factory=factory, restart=PERMANENT))
        else:
            driver = source
        volume = await mount(BlockDevice(driver), read_only=options.read_only, supervisor=sup)
        read_only = options.read_only or bool(getattr(volume, "read_only", False))
        if read_only != options.read_only:
            options = replace(options, read_only=read_only)
        clean = False
        try:
            vnodes = await sup.start_supervisor(
                name="vnodes",
                strategy=ONE_FOR_ONE,
                max_restarts=options.max_restarts,
                within=options.restart_window,
            )
            # The table and the orphan list refer to each other only through the vnode
            # context, which needs both addresses: start the table with a late-bound
            # factory and fill it in once both exist.
            holder: dict[str, VnodeContext] = {}
            from chanos.fs.vnode import VnodeActor  # once per mount, not per vnode started

            def make_vnode(ino: int) -> Any:
                return VnodeActor(ino, holder["ctx"])

            table = await sup.start(
                ChildSpec(
                    name="vnode-table",
                    factory=lambda: VnodeTable(
                        supervised_starter(vnodes, make_vnode),
                        options.max_vnodes,
                        running=lambda: vnodes.children,
                    ),
                    restart=PERMANENT,
                )
            )
            orphans = await sup.start(
                ChildSpec(
                    name="orphans",
                    factory=lambda: OrphanList(volume.superblock, table),
                    restart=PERMANENT,
                )
            )
            holder["ctx"] = VnodeContext(
                volume, table, orphans, read_only, options.acl, options.atime, options.diratime
            )
            rename = await sup.start(
                ChildSpec(name="rename", factory=lambda: RenameCoordinator(table))
            )
            kernel = Kernel(
                volume=volume,
                table=table,
                rename=rename,
                options=options,
            )
            if options.cleanup_orphans and not read_only:
                geo = volume.geometry
                n = await cleanup_orphans(
                    volume.superblock,
                    orphans,
                    table,
                    volume.read_inode,
                    geo.inodes_count,
                    geo.first_ino,
                )
                if n:
                    log.info("mount: freed %d orphan inode(s) left by a crash", n)
            yield kernel
            await kernel._unmount()
            clean = True
        finally:
            if clean:
                await volume.unmount()
            else:
                # An error escaped: stop without marking the image clean.
                log.error("kernel stopped on an error; image left marked not clean")
