"""Vnodes under concurrent use: several tasks create, rename (within and across
directories), unlink and remove directories at once, while stale requests touch freed
inode numbers, the host kernel "forgets" inodes (retiring vnodes) and sync writes every
live vnode back. Each task keeps a model of its own directories; at the end the listings
must match the models and ``e2fsck -fn`` must find the image clean.
"""

from __future__ import annotations

import errno
import os
import random

import trio
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Create,
    Forget,
    GetAttr,
    MkDir,
    OpenDir,
    ReadDir,
    Release,
    ReleaseDir,
    Rename,
    RmDir,
    Unlink,
    Write,
)
from conftest import assert_fsck_clean


def _source(path):
    """The image path once chanos.drivers has its image driver; until then a minimal local
    driver actor over the file."""
    import chanos.drivers as d

    if hasattr(d, "ImageFileDriver"):
        return path
    from chanos.drivers.protocol import DeviceInfo, Discard, Flush, Info, Read, Write
    from chanos.personality import Actor

    class _FileDriver(Actor):
        async def started(self) -> None:
            self.fd = os.open(path, os.O_RDWR)

        async def stopped(self) -> None:
            os.close(self.fd)

        async def handle(self, msg):
            match msg:
                case Read(off, n):
                    return os.pread(self.fd, n, off)
                case Write(off, data):
                    os.pwrite(self.fd, data, off)
                    return None
                case Flush() | Discard():
                    return None
                case Info():
                    return DeviceInfo(os.fstat(self.fd).st_size, 512, False)

    return _FileDriver


async def _names(k, ino: int) -> set[bytes]:
    h = await k.syscall(OpenDir(ino))
    out: set[bytes] = set()
    off = 0
    while batch := await k.syscall(ReadDir(h, off)):
        out |= {e.name for e in batch}
        off = batch[-1].next_offset
    await k.syscall(ReleaseDir(h))
    return out - {b".", b".."}


async def _worker(k, tag: int, steps: int, freed: list[int]) -> None:
    rnd = random.Random(tag)
    top = (await k.syscall(MkDir(ROOT_INO, b"w%d" % tag, 0o755))).inode
    dirs = {}
    for side in (b"a", b"b"):
        dirs[side] = (await k.syscall(MkDir(top, side, 0o755))).inode
    model: dict[bytes, dict[bytes, int]] = {b"a": {}, b"b": {}}
    for step in range(steps):
        side = rnd.choice((b"a", b"b"))
        files = model[side]
        op = rnd.random()
        if op < 0.4 or not files:
            name = b"f%d" % step
            h, e = await k.syscall(Create(dirs[side], name, 0o644, os.O_WRONLY | os.O_CREAT))
            await k.syscall(Write(h, 0, name * 50))
            await k.syscall(Release(h))
            files[name] = e.inode
        elif op < 0.7:
            name = rnd.choice(sorted(files))
            other = rnd.choice((b"a", b"b"))
            new = b"r%d" % step
            await k.syscall(Rename(dirs[side], name, dirs[other], new))
            model[other][new] = files.pop(name)
        elif op < 0.9:
            name = rnd.choice(sorted(files))
            await k.syscall(Unlink(dirs[side], name))
            freed.append(files.pop(name))
        else:
            # the host kernel forgets an inode; a stale request looks at a freed one
            ino = rnd.choice(list(files.values()))
            await k.syscall(Forget(ino, 1))
            if freed:
                try:
                    await k.syscall(GetAttr(rnd.choice(freed)))
                except OSError as e:
                    assert e.errno == errno.ENOENT
        if step % 25 == 0:
            await k.sync()
        await trio.sleep(0)
    for side in (b"a", b"b"):
        assert await _names(k, dirs[side]) == set(model[side])
    # tear one side down completely
    for name in list(model[b"a"]):
        await k.syscall(Unlink(dirs[b"a"], name))
    await k.syscall(RmDir(top, b"a"))


async def test_concurrent_changes_keep_the_image_consistent(ext4_image):
    img = ext4_image("32M", 1024)
    freed: list[int] = []
    async with boot(_source(img), MountOptions(max_vnodes=8)) as k, trio.open_nursery() as n:
        for tag in range(4):
            n.start_soon(_worker, k, tag, 120, freed)
    assert_fsck_clean(img)
