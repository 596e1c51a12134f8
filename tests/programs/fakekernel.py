"""A tiny in-memory kernel speaking the system-call protocol, for front-end tests only.

It answers the messages of ``chanos.personality.syscalls`` from plain dicts, so the FUSE
front end can be tested against a real FUSE mount independently of the real file system.
It also keeps the lookup references it has handed out, per inode, so a test can check
that the front end gives back (Forget) exactly what the host kernel took.

Run as a program it mounts itself: ``python fakekernel.py MOUNTPOINT STATS.json``; on
unmount it writes the outstanding lookup references and counters to STATS.json.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import sys
import time
from dataclasses import dataclass, field

from chanos.personality.syscalls import (
    ROOT_INO,
    Attr,
    Create,
    DirEntry,
    Entry,
    Flush,
    Forget,
    FsStat,
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


@dataclass
class Node:
    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    rdev: int = 0
    data: bytearray = field(default_factory=bytearray)
    target: bytes = b""
    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # name->(ino,cookie)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    parent: int = ROOT_INO
    atime: int = 0
    mtime: int = 0
    ctime: int = 0


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FakeKernel:
    """Answers ``syscall(msg)`` from memory; counts lookups and forgets per inode."""

    def __init__(self) -> None:
        now = time.time_ns()
        self.nodes: dict[int, Node] = {
            ROOT_INO: Node(ROOT_INO, stat.S_IFDIR | 0o755, nlink=2, atime=now, mtime=now, ctime=now)
        }
        self.next_ino = 11
        self.cookies = itertools.count(3)
        self.fhs = itertools.count(1)
        self.lookups: dict[int, int] = {}
        self.open_handles: dict[int, Handle] = {}
        self.calls: dict[str, int] = {}
        self.write_sizes: list[int] = []
        self.write_drops: list[int] = []  # Write.drop of each write, in order
        self.crash: tuple[str, int] | None = None  # (message name, every n-th call raises)

    # -- helpers
    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        n = self._node(ino)
        if not stat.S_ISDIR(n.mode):
            raise _err(errno.ENOTDIR)
        return n

    def _attr(self, n: Node) -> Attr:
        size = len(n.data) if stat.S_ISREG(n.mode) else len(n.target)
        if stat.S_ISDIR(n.mode):
            size = 4096
        return Attr(
            n.ino,
            n.mode,
            n.nlink,
            n.uid,
            n.gid,
            n.rdev,
            size,
            (size + 511) // 512,
            4096,
            n.atime,
            n.mtime,
            n.ctime,
        )

    def _entry(self, n: Node) -> Entry:
        self.lookups[n.ino] = self.lookups.get(n.ino, 0) + 1
        return Entry(n.ino, 0, self._attr(n))

    def _new(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        d = self._dir(parent)
        if name in d.entries:
            raise _err(errno.EEXIST)
        if len(name) > 255:
            raise _err(errno.ENAMETOOLONG)
        now = time.time_ns()
        n = Node(self.next_ino, mode, uid, gid, atime=now, mtime=now, ctime=now, parent=parent)
        self.next_ino += 1
        self.nodes[n.ino] = n
        d.entries[name] = (n.ino, next(self.cookies))
        d.mtime = d.ctime = now
        return n

    def _drop_link(self, ino: int) -> None:
        n = self.nodes[ino]
        n.nlink -= 1 if not stat.S_ISDIR(n.mode) else n.nlink
        n.ctime = time.time_ns()

    def _handle(self, ino: int, flags: int) -> Handle:
        h = Handle(ino, None, flags, next(self.fhs))
        self.open_handles[h.fh] = h
        return h

    # -- the protocol
    async def syscall(self, msg):
        name = type(msg).__name__
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.crash and self.crash[0] == name and self.calls[name] % self.crash[1] == 0:
            raise RuntimeError(f"injected failure of {name}")
        match msg:
            case Lookup(parent, nm):
                d = self._dir(parent)
                if nm == b".":
                    return self._entry(d)
                if nm == b"..":
                    return self._entry(self.nodes[d.parent])
                if nm not in d.entries:
                    raise _err(errno.ENOENT)
                return self._entry(self.nodes[d.entries[nm][0]])
            case Forget(ino, nlookup):
                held = self.lookups.get(ino, 0)
                assert nlookup <= held, f"forget {nlookup} of inode {ino} holding {held}"
                self.lookups[ino] = held - nlookup
                if not self.lookups[ino]:
                    del self.lookups[ino]
                return None
            case GetAttr(ino):
                return self._attr(self._node(ino))
            case SetAttr(ino, mode, uid, gid, size, atime, mtime, ctime, _h):
                n = self._node(ino)
                if mode is not None:
                    n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(mode)
                if uid is not None:
                    n.uid = uid
                if gid is not None:
                    n.gid = gid
                if size is not None:
                    if stat.S_ISDIR(n.mode):
                        raise _err(errno.EISDIR)
                    del n.data[size:]
                    n.data.extend(bytes(size - len(n.data)))
                    n.mtime = time.time_ns()
                if atime is not None:
                    n.atime = atime
                if mtime is not None:
                    n.mtime = mtime
                n.ctime = ctime if ctime is not None else time.time_ns()
                return self._attr(n)
            case MkNod(parent, nm, mode, rdev, uid, gid):
                n = self._new(parent, nm, mode, uid, gid)
                n.rdev = rdev
                return self._entry(n)
            case MkDir(parent, nm, mode, uid, gid):
                n = self._new(parent, nm, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)
                n.nlink = 2
                self.nodes[parent].nlink += 1
                return self._entry(n)
            case Create(parent, nm, mode, flags, uid, gid):
                d = self._dir(parent)
                if nm in d.entries:
                    if flags & os.O_EXCL:
                        raise _err(errno.EEXIST)
                    n = self.nodes[d.entries[nm][0]]
                else:
                    n = self._new(parent, nm, stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
                return self._handle(n.ino, flags), self._entry(n)
            case Unlink(parent, nm) | RmDir(parent, nm):
                d = self._dir(parent)
                if nm not in d.entries:
                    raise _err(errno.ENOENT)
                n = self.nodes[d.entries[nm][0]]
                if isinstance(msg, Unlink) and stat.S_ISDIR(n.mode):
                    raise _err(errno.EISDIR)
                if isinstance(msg, RmDir):
                    if not stat.S_ISDIR(n.mode):
                        raise _err(errno.ENOTDIR)
                    if n.entries:
                        raise _err(errno.ENOTEMPTY)
                    d.nlink -= 1
                del d.entries[nm]
                self._drop_link(n.ino)
                return None
            case Symlink(parent, nm, target, uid, gid):
                n = self._new(parent, nm, stat.S_IFLNK | 0o777, uid, gid)
                n.target = target
                return self._entry(n)
            case ReadLink(ino):
                n = self._node(ino)
                if not stat.S_ISLNK(n.mode):
                    raise _err(errno.EINVAL)
                return n.target
            case Link(ino, new_parent, new_name):
                n = self._node(ino)
                d = self._dir(new_parent)
                if stat.S_ISDIR(n.mode):
                    raise _err(errno.EPERM)
                if new_name in d.entries:
                    raise _err(errno.EEXIST)
                d.entries[new_name] = (ino, next(self.cookies))
                n.nlink += 1
                return self._entry(n)
            case Rename(op, on, np_, nn, flags):
                src, dst = self._dir(op), self._dir(np_)
                if on not in src.entries:
                    raise _err(errno.ENOENT)
                ino = src.entries[on][0]
                if nn in dst.entries:
                    if flags & 1:
                        raise _err(errno.EEXIST)
                    if flags & 2:
                        other = dst.entries[nn][0]
                        src.entries[on] = (other, next(self.cookies))
                        dst.entries[nn] = (ino, next(self.cookies))
                        return None
                    victim = self.nodes[dst.entries[nn][0]]
                    if stat.S_ISDIR(victim.mode) and victim.entries:
                        raise _err(errno.ENOTEMPTY)
                    self._drop_link(victim.ino)
                elif flags & 2:
                    raise _err(errno.ENOENT)
                del src.entries[on]
                dst.entries[nn] = (ino, next(self.cookies))
                self.nodes[ino].parent = np_
                return None
            case Open(ino, flags):
                n = self._node(ino)
                if flags & os.O_TRUNC and stat.S_ISREG(n.mode):
                    n.data.clear()
                return self._handle(ino, flags)
            case Read(h, off, size):
                return bytes(self.nodes[h.inode].data[off : off + size])
            case Write(h, off, data, drop):
                buf = self.nodes[h.inode].data
                self.write_sizes.append(len(data))
                self.write_drops.append(drop)
                if off > len(buf):
                    buf.extend(bytes(off - len(buf)))
                buf[off : off + len(data)] = data
                self.nodes[h.inode].mtime = time.time_ns()
                return len(data)
            case Flush(_) | FSync(_) | FSyncDir(_):
                return None
            case Release(h) | ReleaseDir(h):
                del self.open_handles[h.fh]
                return None
            case OpenDir(ino):
                self._dir(ino)
                return self._handle(ino, os.O_RDONLY)
            case ReadDir(h, offset):
                d = self.nodes[h.inode]
                out = []
                if offset < 1:
                    out.append(DirEntry(b".", d.ino, d.mode, 1))
                if offset < 2:
                    out.append(DirEntry(b"..", d.parent, stat.S_IFDIR, 2))
                for nm, (ino, cookie) in sorted(d.entries.items(), key=lambda kv: kv[1][1]):
                    if cookie > offset:
                        n = self.nodes[ino]
                        # every other entry without attributes: the front end fetches them
                        attr = self._attr(n) if cookie % 2 else None
                        out.append(DirEntry(nm, ino, n.mode, cookie, attr))
                        if attr is not None:  # a counted entry, as the real kernel counts it
                            self.lookups[ino] = self.lookups.get(ino, 0) + 1
                    # Small batches (the front end must ask again), except the first,
                    # which holds more than one READDIR buffer takes (the front end keeps
                    # the rest, already counted, for the READDIR that continues there).
                    if len(out) >= (7 if offset else 300):
                        break
                return out
            case StatFs():
                return FsStat(4096, 4096, 1000, 500, 400, 100, 50, 50)
            case GetXattr(ino, nm):
                n = self._node(ino)
                if nm not in n.xattrs:
                    raise _err(errno.ENODATA)
                return n.xattrs[nm]
            case SetXattr(ino, nm, value, _flags):
                self._node(ino).xattrs[nm] = value
                return None
            case ListXattr(ino):
                return list(self._node(ino).xattrs)
            case RemoveXattr(ino, nm):
                n = self._node(ino)
                if nm not in n.xattrs:
                    raise _err(errno.ENODATA)
                del n.xattrs[nm]
                return None
        raise _err(errno.ENOSYS)


def main() -> None:
    """Mount a FakeKernel at argv[1]; write stats to argv[2] when unmounted."""
    import logging
    import signal

    import pyfuse3
    import trio
    from chanos.compat.fuse_ops import ChanosOperations, FrontEndConfig

    logging.basicConfig(level=logging.WARNING)
    mountpoint, stats_path = sys.argv[1], sys.argv[2]
    extra = sys.argv[3:]
    kernel = FakeKernel()
    for arg in extra:
        if arg.startswith("crash="):
            op, _, n = arg[6:].partition(":")
            kernel.crash = (op, int(n))
    wb = "nowriteback" not in extra
    ops = ChanosOperations(kernel, FrontEndConfig(writeback_cache=wb))

    async def run() -> None:
        pyfuse3.init(ops, mountpoint, {"fsname=fake", "subtype=chanos", "default_permissions"})
        try:
            async with trio.open_nursery() as nursery:

                async def dump_on_usr1() -> None:
                    with trio.open_signal_receiver(signal.SIGUSR1) as sigs:
                        async for _ in sigs:
                            dump()

                nursery.start_soon(dump_on_usr1)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
        dump()

    def dump() -> None:
        with open(stats_path + ".tmp", "w") as f:
            json.dump(
                {
                    "kernel_lookups": {str(k): v for k, v in kernel.lookups.items()},
                    "open_handles": len(kernel.open_handles),
                    "calls": kernel.calls,
                    "max_write": max(kernel.write_sizes, default=0),
                    "write_drops": kernel.write_drops,
                    "unexpected_errors": ops.unexpected_errors,
                },
                f,
            )
        os.replace(stats_path + ".tmp", stats_path)

    trio.run(run)


if __name__ == "__main__":
    main()
