"""The FUSE front end: every pyfuse3 request becomes one system-call message.

``ChanosOperations`` is a ``pyfuse3.Operations`` subclass that owns no file-system state.
Each request is translated into the matching message of ``chanos.personality.syscalls``
and handed to ``await kernel.syscall(msg)``; the reply is translated back. What it does
keep is bookkeeping of the FUSE protocol itself:

* inode numbers: FUSE's ROOT_ID 1 <-> ext4's root inode 2 (every other number is the ext4
  inode number, which the kernel never sees as 1: ext4 inode 1 is the bad-blocks inode and
  is never named by a directory entry);
* file handles: the kernel's ``Handle.fh`` is what the host kernel gets as the file
  handle; the front end maps it back to the ``Handle`` (which carries the vnode's address,
  so reads and writes go straight to the vnode actor);
* lookup counts: the host kernel takes a reference for every entry reply (lookup, mknod,
  mkdir, symlink, link, create) and for each readdirplus entry other than ``.`` and
  ``..``; it identifies an inode by (node id, generation). The chanos kernel counts the
  same references: each ``Entry`` reply and each counted ``DirEntry`` of a ReadDir reply
  (it carries the attributes and the inode's true generation), so a readdirplus entry
  costs no extra message. A ReadDir reply usually holds more entries than one READDIR
  buffer takes: the rest are kept, already counted, for the READDIR that continues at
  their offset, and given back (``Forget``) if the directory is read elsewhere or closed
  instead, or if a request that changes the file system has run since they were read
  (see ``_CHANGING``). The references the host kernel got are tallied here so a forget of
  more references than were handed out is logged and clamped; ``Forget(inode, n)`` is then
  forwarded, while the daemon waits for requests (``idle_work``): the chanos kernel's
  count reaches zero when the host kernel's does, or a little later, never sooner.

Files opened with O_DIRECT get FOPEN_DIRECT_IO (``direct_io``) while the writeback cache
is off: the host kernel then passes every read and write of the handle straight to the
daemon, as O_DIRECT asks, instead of through its O_DIRECT path over the page cache. What
that saves is a request per write(2) where the mount lacks FUSE_HANDLE_KILLPRIV_V2 (below):
on that path the kernel asks for the file's ``security.capability`` before each write, to
drop it. On the direct path the daemon drops what a write takes away itself
(``Write.drop``): file capabilities, and the set-ID bits when the opener is not root (the
FUSE WRITE carries no caller, and pyfuse3 does not pass on the kernel's flag for it). The
price: a MAP_SHARED mapping of such a handle fails with ENODEV (the kernel maps
direct-I/O handles shared only with FUSE_DIRECT_IO_ALLOW_MMAP, another flag this libfuse
lacks). With the writeback cache on, O_DIRECT keeps the kernel's own
path, which writes dirty cached pages back before it reads around them; so it does on
host kernels before Linux 6.6, where a direct-I/O write left other descriptors' cached
pages of the range stale.

Set-ID bits and file capabilities: when the host kernel was granted
FUSE_HANDLE_KILLPRIV_V2 (``chanos.compat.init_reply``; ``nokillpriv`` leaves it out) it
no longer takes them away itself on write, truncate, chown and open with O_TRUNC, and it
stops asking for ``security.capability`` before every buffered write. The front end
then tells the file system what each of those takes (``Write.drop`` for every writable
handle, ``SetAttr.drop``, ``Open.drop``), by ext4's rules: capabilities go on any write
or truncate, the set-ID bits when the caller (for a write, the opener) is not root, who
stands for CAP_FSETID, and on any change of owner.

POSIX ACLs (``acl``, on unless ``noacl`` or ``nodefault_permissions``): the host kernel
is asked to check them (pyfuse3's ``enable_acl``, FUSE_POSIX_ACL), as ext4 does: it reads
an inode's ACLs with GETXATTR, caches them, and applies them in its permission checks; a
new inode inherits its directory's default ACL, and the mode and the access ACL follow
each other, in the file system (``chanos.fs.acl``, as ext4 does; the host kernel leaves
both to the daemon). After an access ACL is set the front end drops the host kernel's
attributes of the inode, since its mode may have changed.
The umask: libfuse does not ask the host kernel for FUSE_DONT_MASK (pyfuse3 offers no way
to), so ``chanos.compat.init_reply`` adds it to the answer to INIT. The kernel then
leaves a new inode's mode unmasked and the file system applies the caller's umask,
unless a default ACL takes its place, as on ext4. (Without the flag, the kernel's own
masking, which ignores default ACLs, would have narrowed the mode already.)

Errors: an ``OSError`` from the kernel becomes ``FUSEError(errno)``; any other exception
is a bug somewhere below, answered with EIO and logged once with the request that hit it.
No exception other than ``FUSEError`` may escape a handler: pyfuse3 would end its main
loop, which leaves the mount hanging.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pyfuse3
import trio
from chanos.compat.init_reply import FUSE_HANDLE_KILLPRIV_V2, InitReply
from chanos.fs import acl
from chanos.personality.syscalls import (
    DROP_CAPABILITY,
    DROP_SET_ID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Attr,
    Create,
    DirEntry,
    Entry,
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

log = logging.getLogger("chanos.fuse")

FUSE_ROOT = pyfuse3.ROOT_INODE  # 1
# Deferred forgets beyond which a FORGET is served at once (a daemon kept busy without a
# pause would otherwise hold them, and the space of unlinked files, indefinitely).
MAX_DEFERRED_FORGETS = 64


class Kernel(Protocol):
    """What the front end needs from the kernel ``boot()`` yields."""

    async def syscall(self, msg: Any) -> Any: ...


def to_fuse(ino: int) -> int:
    """ext4 inode number -> FUSE node id."""
    return FUSE_ROOT if ino == ROOT_INO else ino


def _write_drop(ctx: pyfuse3.RequestContext) -> int:
    """What a write(2) by the caller of ``ctx`` takes away from a file: capabilities
    always, the set-ID bits unless the caller is root (who stands for CAP_FSETID here:
    the request carries no capabilities)."""
    return DROP_CAPABILITY | (DROP_SET_ID if ctx.uid else 0)


def to_ext4(ino: int) -> int:
    """FUSE node id -> ext4 inode number."""
    return ROOT_INO if ino == FUSE_ROOT else ino


@dataclass(frozen=True, slots=True)
class FrontEndConfig:
    """How the front end presents the file system to the host kernel.

    Timeouts are in seconds. Long entry/attribute timeouts are valid because every change
    to the image goes through this mount (the image is locked against other writers), so
    the host kernel's caches only go stale by changes it made itself and already knows.
    ``uid``/``gid``/``umask`` override what stat reports (as libfuse's options of the same
    names do); they do not change what is stored. ``acl``: have the host kernel check and
    cache POSIX ACLs (it turns default_permissions on). ``io_size`` is the preferred I/O size
    stat reports (st_blksize; 0: the file system's block size). Programs size their
    buffers by it (cp, cat and Python's open() read and write that much per call), and
    through FUSE every call is a round trip: 1 MiB, the largest request the host kernel
    sends, makes a copy one request per MiB instead of one per 128 KiB. Network file
    systems report their transfer size the same way (NFS: its wsize).
    """

    entry_timeout: float = 10.0
    attr_timeout: float = 10.0
    negative_timeout: float = 10.0
    writeback_cache: bool = False
    keep_cache: bool = True
    read_only: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    io_size: int = 1 << 20
    acl: bool = False


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _shown(args: Sequence[Any]) -> tuple:
    """Request arguments for a log line (no context objects, no bulk data)."""
    return tuple(
        f"<{len(a)} bytes>" if isinstance(a, bytes) and len(a) > 64 else a
        for a in args
        if not isinstance(a, pyfuse3.RequestContext)
    )


def _reply(r: Any) -> Any:
    if isinstance(r, pyfuse3.EntryAttributes):
        return f"<ino {r.st_ino} mode {r.st_mode:o} size {r.st_size} nlink {r.st_nlink}>"
    if isinstance(r, tuple):
        return tuple(_reply(x) for x in r)
    if isinstance(r, pyfuse3.FileInfo):
        return f"<fh {r.fh}>"
    if isinstance(r, bytes) and len(r) > 64:
        return f"<{len(r)} bytes>"
    return r


# Requests that can change names, attributes or which inode numbers are in use. Between
# two READDIRs of one directory the host kernel does not hold the directory's lock, so
# read-ahead entries can go stale: a name unlinked, its inode freed and its number given
# to a new file. A readdirplus entry naming that number with the old generation makes the
# host kernel take its live inode for a stale one (every later I/O on it fails with EIO),
# and old attributes (a smaller size without the writeback cache) would be taken as new:
# the host kernel dates a reply by when its request was sent, not when the data was read.
_CHANGING = frozenset(
    {"setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "create",
     "write", "release", "setxattr", "removexattr"}
)  # fmt: skip


# Requests that may allocate, or report or make durable what is allocated: the forgets
# still deferred (see ``ChanosOperations.idle_work``) go first, so space that an unlink
# frees at its forget is free for them, as it would be without the deferral.
_AFTER_FORGETS = frozenset(
    {"mknod", "mkdir", "symlink", "rename", "link", "create", "write", "setxattr", "statfs",
     "fsync", "fsyncdir"}
)  # fmt: skip


def _guarded(fn: F) -> F:
    """Make a handler answer every failure with a FUSEError and nothing else."""
    name = fn.__name__
    changing = name in _CHANGING
    after_forgets = name in _AFTER_FORGETS

    @functools.wraps(fn)
    async def wrapper(self: ChanosOperations, *args: Any) -> Any:
        if changing:
            self._changes += 1  # one in flight now: read-ahead taken from here on is unsafe
        try:
            if after_forgets and self._deferred:
                await self.run_deferred()
            if self._debug:
                reply = await fn(self, *args)
                log.debug("%s%r -> %s", name, _shown(args), _reply(reply))
                return reply
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s%r -> %s", name, _shown(args), exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:
            self._unexpected(name, args, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if changing:
                self._changes += 1

    return wrapper  # type: ignore[return-value]


def _linux_release(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the host kernel's release ("6.18.44-...", "6.6-rc1"); (0, 0)
    if it cannot be told."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release if release is None else release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


# Since Linux 6.6 a direct-I/O WRITE first drops the cached pages it overwrites, so other
# descriptors of the file (with keep_cache) never read stale data from their page cache.
DIRECT_WRITES_DROP_CACHED_PAGES = _linux_release() >= (6, 6)


class ChanosOperations(pyfuse3.Operations):
    """pyfuse3 operations that forward each request to ``kernel.syscall``."""

    supports_dot_lookup = True

    def __init__(self, kernel: Kernel, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.kernel = kernel
        self.config = config or FrontEndConfig()
        # pyfuse3 reads it at init: the host kernel then checks permissions with ACLs
        # and caches them (see the module docstring).
        self.enable_acl = self.config.acl
        self.enable_writeback_cache = self.config.writeback_cache
        self._syscall = kernel.syscall
        self._handles: dict[int, Handle] = {}
        # What each write through a handle must take away from the file (Write.drop), for
        # the handles whose writes the host kernel leaves that to the file system: direct
        # I/O, and every writable one once INIT granted FUSE_HANDLE_KILLPRIV_V2 (see the
        # module docstring).
        self._drops: dict[int, int] = {}
        # The answer to INIT, when the front end added flags to it (set before serving).
        self.init_reply: InitReply | None = None
        # Forgets not yet sent to the kernel, oldest first (see ``idle_work``); only
        # once whoever waits for requests has said it calls ``idle_work``.
        self._deferred: deque[Forget] = deque()
        self.defer_forgets = False
        # Per open directory: (offset, entries, changes) of a ReadDir reply read ahead of
        # the host kernel's buffer; its counted entries are references not yet handed out.
        # ``changes``: ``_changes`` when it was read (served only while still equal).
        self._ahead: dict[int, tuple[int, list[DirEntry], int]] = {}
        self._changes = 0  # bumped as each changing request starts and as it ends
        self._logged: set[tuple[str, type]] = set()
        self.unexpected_errors = 0
        self._debug = log.isEnabledFor(logging.DEBUG)  # log every request and reply
        self._entry_timeout = self.config.entry_timeout
        self._attr_timeout = self.config.attr_timeout
        self._io_size = self.config.io_size
        c = self.config
        self._override = c.uid is not None or c.gid is not None or c.umask is not None
        # Set once the host kernel's INIT has been answered: settings the kernel fixes
        # while taking that answer (such as the read-ahead window) can be changed after.
        self.initialized = trio.Event()

    def init(self) -> None:
        # pyfuse3 calls this while answering INIT; whoever waits runs after the answer.
        self.initialized.set()

    # ------------------------------------------------------------------ bookkeeping

    def _unexpected(self, op: str, args: Sequence[Any], exc: BaseException) -> None:
        """Log an unexpected failure: with its traceback the first time per (op, type)."""
        self.unexpected_errors += 1
        key = (op, type(exc))
        shown = _shown(args)
        if key in self._logged:
            log.error("%s%r failed: %r (answered EIO)", op, shown, exc)
        else:
            self._logged.add(key)
            log.error("%s%r failed: %r (answered EIO)", op, shown, exc, exc_info=exc)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            log.error("request on unknown file handle %d", fh)
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def _attrs(self, a: Attr, generation: int = 0) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = to_fuse(a.ino)
        e.generation = generation
        e.entry_timeout = self._entry_timeout
        e.attr_timeout = self._attr_timeout
        mode, uid, gid = a.mode, a.uid, a.gid
        if self._override:
            c = self.config
            if c.uid is not None:
                uid = c.uid
            if c.gid is not None:
                gid = c.gid
            if c.umask is not None:
                mode &= ~c.umask
        e.st_mode = mode
        e.st_nlink = a.nlink
        e.st_uid = uid
        e.st_gid = gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = self._io_size or a.blksize
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        e.st_birthtime_ns = a.crtime_ns
        return e

    def _entry(self, entry: Entry) -> pyfuse3.EntryAttributes:
        """An entry reply: the host kernel takes one lookup reference on it (which the
        vnode table counted when the kernel made the Entry)."""
        return self._attrs(entry.attr, entry.generation)

    def _check_writable(self) -> None:
        # The host kernel already refuses writes on an "ro" mount; this guards the
        # paths it does not (e.g. setxattr on some kernels) so the image stays untouched.
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _open_flags(self, flags: int) -> int:
        """Adapt open flags to the writeback cache.

        With the writeback cache the host kernel reads pages of files opened write-only
        (to fill partial pages) and implements O_APPEND itself (it sends writes at the
        end offset it knows), so the handle must allow reads and must not append again.
        """
        if self.config.writeback_cache:
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    def _file_info(
        self, handle: Handle, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        fh = handle.fh
        self._handles[fh] = handle
        # keep_cache is valid: nothing but this mount changes the file, and the host
        # kernel keeps its own page cache coherent with its own writes and truncates
        # (direct-I/O writes included: it drops the cached pages they overwrite).
        info = pyfuse3.FileInfo(fh=fh, keep_cache=self.config.keep_cache)
        if (
            flags & os.O_DIRECT
            and DIRECT_WRITES_DROP_CACHED_PAGES
            and not self.config.writeback_cache
        ):
            info.direct_io = True
        if info.direct_io or (flags & os.O_ACCMODE != os.O_RDONLY and self._fs_drops_privileges()):
            self._drops[fh] = _write_drop(ctx)
        return info

    def _fs_drops_privileges(self) -> bool:
        """Whether the host kernel leaves taking set-ID bits and file capabilities away
        to the file system (FUSE_HANDLE_KILLPRIV_V2, see the module docstring)."""
        reply = self.init_reply
        return reply is not None and bool(reply.granted & FUSE_HANDLE_KILLPRIV_V2)

    # ------------------------------------------------------------------ names

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            entry = await self._syscall(Lookup(to_ext4(parent_inode), name))
        except FileNotFoundError:
            if self.config.negative_timeout <= 0:
                raise
            # A cached negative entry: valid for the same reason as the timeouts (the
            # host kernel drops it itself when it creates the name).
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.config.negative_timeout
            return neg
        return self._entry(entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # No reply goes back for a forget, so nothing may raise out of here.
        # The vnode table holds the counts (a second copy here cost the daemon ~60 bytes
        # per inode the host kernel has cached); it also refuses to go below zero.
        # A batch can name tens of thousands of inodes (the host kernel dropping its
        # caches): the queue is sent whenever it grows past its bound, not only at the end.
        for fuse_ino, nlookup in inode_list:
            if nlookup:
                self._deferred.append(Forget(to_ext4(fuse_ino), nlookup))
                if len(self._deferred) > MAX_DEFERRED_FORGETS:
                    await self.run_deferred()
        if not self.defer_forgets:
            await self.run_deferred()

    async def idle_work(self) -> bool:
        """Send one deferred forget to the kernel; False if none is waiting.

        The request wait calls this when no request is waiting (``chanos.compat.
        request_wait``). A FORGET has no reply: the program whose unlink or close caused
        it does not wait for it, yet the host kernel queues it ahead of that program's
        next request, so served at once it delays that request by all the kernel's work
        on it (for an unlinked file: freeing the inode and its blocks). Deferred, that
        work overlaps with the program's turnaround instead. Nothing observes the delay:
        requests that allocate or report free space send the deferred forgets first
        (``_AFTER_FORGETS``), a count reaches zero only later than it would have, and an
        unlinked inode kept meanwhile has no name to be found by.
        """
        if not self._deferred:
            return False
        await self._send_forget(self._deferred.popleft())
        return True

    async def run_deferred(self) -> None:
        """Send every deferred forget now."""
        while self._deferred:
            await self._send_forget(self._deferred.popleft())

    async def _send_forget(self, msg: Forget) -> None:
        try:
            await self._syscall(msg)
        except Exception as exc:  # no reply to give an error to
            self._unexpected("forget", (msg.inode, msg.nlookup), exc)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(await self._syscall(GetAttr(to_ext4(inode))))

    @_guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._check_writable()
        # pyfuse3 has already turned UTIME_NOW into the current time in ``attr``;
        # UTIME_OMIT arrives as a field not to update, i.e. None here.
        msg = SetAttr(
            to_ext4(inode),
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
            handle=self._handles.get(fh) if fh is not None else None,
            drop=self._setattr_drop(fields, ctx),
        )
        return self._attrs(await self._syscall(msg))

    def _setattr_drop(self, fields: pyfuse3.SetattrFields, ctx: pyfuse3.RequestContext) -> int:
        """What a SETATTR takes away (SetAttr.drop) when the file system has that job: a
        truncate what a write takes, a change of owner the set-ID bits and capabilities
        whoever makes it (ext4's chown rules)."""
        if not self._fs_drops_privileges():
            return 0
        drop = 0
        if fields.update_size:
            drop |= _write_drop(ctx)
        if fields.update_uid or fields.update_gid:
            drop |= DROP_CAPABILITY | DROP_SET_ID
        return drop

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._syscall(ReadLink(to_ext4(inode)))

    @_guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_writable()
        msg = MkNod(to_ext4(parent_inode), name, mode, rdev, ctx.uid, ctx.gid, ctx.umask)
        return self._entry(await self._syscall(msg))

    @_guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_writable()
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        msg = MkDir(to_ext4(parent_inode), name, mode, ctx.uid, ctx.gid, ctx.umask)
        return self._entry(await self._syscall(msg))

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        await self._syscall(Unlink(to_ext4(parent_inode), name))

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        await self._syscall(RmDir(to_ext4(parent_inode), name))

    @_guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_writable()
        msg = Symlink(to_ext4(parent_inode), name, target, ctx.uid, ctx.gid)
        return self._entry(await self._syscall(msg))

    @_guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            # RENAME_WHITEOUT (overlayfs) and contradictory combinations.
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._syscall(
            Rename(to_ext4(parent_inode_old), name_old, to_ext4(parent_inode_new), name_new, flags)
        )

    @_guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_writable()
        msg = Link(to_ext4(inode), to_ext4(new_parent_inode), new_name)
        return self._entry(await self._syscall(msg))

    # ------------------------------------------------------------------ files

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        drop = _write_drop(ctx) if flags & os.O_TRUNC and self._fs_drops_privileges() else 0
        handle = await self._syscall(Open(to_ext4(inode), self._open_flags(flags), drop))
        return self._file_info(handle, flags, ctx)

    @_guarded
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable()
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        opened = self._open_flags(flags)
        msg = Create(to_ext4(parent_inode), name, mode, opened, ctx.uid, ctx.gid, ctx.umask)
        handle, entry = await self._syscall(msg)
        return self._file_info(handle, flags, ctx), self._entry(entry)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._syscall(Read(self._handle(fh), off, size))

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        # One message per request, however large: the host kernel gathers up to 1 MiB
        # (max_pages) per WRITE and the vnode writes it as one contiguous extent.
        return await self._syscall(Write(self._handle(fh), off, buf, self._drops.get(fh, 0)))

    async def flush(self, fh: int) -> None:
        # Declined once, for the whole mount: ENOSYS makes the host kernel stop sending
        # FLUSH (one request less per close). Nothing is lost by it: without the writeback
        # cache every write was already answered by the vnode, and with it the host kernel
        # writes a closing file's dirty pages back (reporting their errors to close) before
        # it would send FLUSH. chanos holds no locks a FLUSH would have to drop.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_guarded
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        self._drops.pop(fh, None)
        if handle is None:
            log.error("release of unknown file handle %d", fh)
            return
        await self._syscall(Release(handle))

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._syscall(FSync(self._handle(fh), datasync))

    # ------------------------------------------------------------------ directories

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        handle = await self._syscall(OpenDir(to_ext4(inode)))
        self._handles[handle.fh] = handle
        return handle.fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handle(fh)
        offset = start_id
        entries: list[DirEntry] | None = None
        read_at = self._changes
        ahead = self._ahead.pop(fh, None)
        if ahead is not None:
            if ahead[0] == offset and ahead[2] == self._changes:
                entries = ahead[1]
            else:  # a seek (rewinddir), or maybe stale: read afresh, give the references back
                await self._give_back(ahead[1])
        # Fill the host kernel's buffer: ask the directory for more until it is full or
        # the directory ends. Offsets come from the file system and stay valid across
        # concurrent changes, so a later READDIR resumes exactly after the last entry.
        while True:
            if entries is None:
                read_at = self._changes
                entries = await self._syscall(ReadDir(handle, offset))
            if not entries:
                return
            for i, d in enumerate(entries):
                try:
                    sent = await self._readdir_entry(token, handle, d)
                except Exception:
                    # Only an uncounted entry's Lookup can fail: the READDIR fails; the
                    # entries after it will never be sent.
                    await self._give_back(entries[i + 1 :])
                    raise
                if not sent:
                    # Buffer full: the rest is for the READDIR that continues here.
                    self._ahead[fh] = (offset, entries[i:], read_at)
                    return
                offset = d.next_offset
            entries = None

    async def _readdir_entry(
        self, token: pyfuse3.ReaddirToken, handle: Handle, d: DirEntry
    ) -> bool:
        """Reply one readdirplus entry; False (nothing taken) when the buffer is full."""
        if d.name in (b".", b".."):
            # The host kernel ignores the attributes of . and .. and takes no reference
            # on them.
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = to_fuse(d.inode)
            attrs.st_mode = d.mode
            return pyfuse3.readdir_reply(token, d.name, attrs, d.next_offset)
        if d.counted:  # the kernel counted the reference this entry hands out
            attrs = self._attrs(d.attr, d.generation)
            return pyfuse3.readdir_reply(token, d.name, attrs, d.next_offset)
        # The directory could not read the entry's inode: a Lookup gives the answer (an
        # error, or a counted entry if it has become readable since).
        try:
            entry = await self._syscall(Lookup(handle.inode, d.name))
        except FileNotFoundError:
            return True  # removed since ReadDir: skip it, as if read a moment later
        if not pyfuse3.readdir_reply(
            token, d.name, self._attrs(entry.attr, entry.generation), d.next_offset
        ):
            await self._syscall(Forget(entry.inode, 1))  # not sent: give it back
            return False
        return True

    async def _give_back(self, entries: list[DirEntry]) -> None:
        """Forget the references of counted entries the host kernel never got."""
        unsent: dict[int, int] = {}
        for d in entries:
            if d.counted:
                unsent[d.inode] = unsent.get(d.inode, 0) + 1
        for ino, n in unsent.items():
            try:
                await self._syscall(Forget(ino, n))
            except Exception as exc:
                self._unexpected("forget", (ino, n), exc)

    @_guarded
    async def releasedir(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            log.error("releasedir of unknown file handle %d", fh)
            return
        ahead = self._ahead.pop(fh, None)
        if ahead is not None:
            await self._give_back(ahead[1])
        await self._syscall(ReleaseDir(handle))

    @_guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._syscall(FSyncDir(self._handle(fh), datasync))

    # ------------------------------------------------------------------ file system

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self._syscall(StatFs())
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.f_bsize
        out.f_frsize = s.f_frsize
        out.f_blocks = s.f_blocks
        out.f_bfree = s.f_bfree
        out.f_bavail = s.f_bavail
        out.f_files = s.f_files
        out.f_ffree = s.f_ffree
        out.f_favail = s.f_favail
        out.f_namemax = s.f_namemax
        return out

    # ------------------------------------------------------------------ xattrs

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._syscall(GetXattr(to_ext4(inode), name))

    @_guarded
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        # pyfuse3 does not pass setxattr(2)'s XATTR_CREATE/XATTR_REPLACE flags on; the
        # call is forwarded as a plain set (see docs/architecture.md).
        self._check_writable()
        await self._syscall(SetXattr(to_ext4(inode), name, value, 0))
        if name == acl.ACCESS:
            # The mode follows an access ACL, and the host kernel does not know (with
            # FUSE_POSIX_ACL it drops the attributes itself; without, it does not).
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:
                log.debug("attribute invalidation of %d failed: %s", inode, exc)

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(await self._syscall(ListXattr(to_ext4(inode))))

    @_guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        await self._syscall(RemoveXattr(to_ext4(inode), name))

    @_guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only reached without default_permissions (the host kernel checks permissions
        # itself otherwise): check the mode bits as the kernel's generic_permission does.
        a = await self._syscall(GetAttr(to_ext4(inode)))
        return _permitted(a, mode, ctx.uid, ctx.gid, pyfuse3.get_sup_groups(ctx.pid))


def _permitted(a: Attr, want: int, uid: int, gid: int, groups: set[int]) -> bool:
    """POSIX permission check of ``want`` (R_OK/W_OK/X_OK bits) against ``a``."""
    if uid == 0:
        # root may do anything except execute a file no one may execute.
        return not (want & os.X_OK) or stat.S_ISDIR(a.mode) or bool(a.mode & 0o111)
    if uid == a.uid:
        bits = (a.mode >> 6) & 7
    elif gid == a.gid or a.gid in groups:
        bits = (a.mode >> 3) & 7
    else:
        bits = a.mode & 7
    return want & ~bits == 0
