"""Vnode behaviour on real images: file data, attributes and times, symlinks, device nodes,
extended attributes, unlink of open files, new-inode fields, running out of inodes.

Each test boots the kernel on a fresh ``mkfs.ext4`` image with a very low live-vnode bound
(vnodes are retired and restarted underneath), drives it with system-call messages, and
ends with ``e2fsck -fn`` clean. e2fsprogs' ``debugfs`` reads back what chanos wrote and
writes what chanos must read.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
import struct

import pytest
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Create,
    Forget,
    GetAttr,
    GetXattr,
    ListXattr,
    Lookup,
    MkDir,
    MkNod,
    Open,
    Read,
    ReadLink,
    Release,
    RemoveXattr,
    SetAttr,
    SetXattr,
    StatFs,
    Symlink,
    Unlink,
    Write,
)
from conftest import assert_fsck_clean, debugfs, errno_of

LOW = MountOptions(max_vnodes=3)
IMAGE_SIZE = "32M"


async def _create(k, parent, name, data=b"", mode=0o644):
    h, e = await k.syscall(Create(parent, name, mode, os.O_RDWR | os.O_CREAT))
    if data:
        assert await k.syscall(Write(h, 0, data)) == len(data)
    await k.syscall(Release(h))
    return e.inode


def _stat(img, path) -> str:
    return debugfs(img, f"stat {path}").decode()


def _flags(img, path) -> int:
    return int(re.search(r"Flags: (0x[0-9a-f]+)", _stat(img, path)).group(1), 16)


def _inode_raw(img, ino) -> bytes:
    """The raw inode record, located by debugfs (independent of chanos' codec)."""
    out = debugfs(img, f"imap <{ino}>").decode()
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(img, "stats").decode()).group(1))
    with open(img, "rb") as f:
        f.seek(int(m.group(1)) * bs + int(m.group(2), 16))
        return f.read(256)


# ---------------------------------------------------------------------------------------


async def test_file_data_sizes_blocks_and_debugfs_readback(image):
    payload = os.urandom(200_000)
    async with boot(image, LOW) as k:
        bs = (await k.syscall(GetAttr(ROOT_INO))).blksize
        ino = await _create(k, ROOT_INO, b"f", payload)
        a = await k.syscall(GetAttr(ino))
        assert a.size == len(payload)
        assert a.blocks * 512 >= len(payload) and a.blocks % (bs // 512) == 0
        h = await k.syscall(Open(ino, os.O_RDWR))
        assert await k.syscall(Read(h, 0, 1 << 20)) == payload
        assert await k.syscall(Read(h, 150_000, 10)) == payload[150_000:150_010]
        assert await k.syscall(Read(h, len(payload), 10)) == b""
        # sparse: a write far past the end leaves a hole that reads as zeros
        await k.syscall(Write(h, 5_000_000, b"tail"))
        assert await k.syscall(Read(h, 4_000_000, 8)) == bytes(8)
        sparse = await k.syscall(GetAttr(ino))
        assert sparse.size == 5_000_004
        assert sparse.blocks < 1_000_000 // 512
        # truncate down then up: the cut bytes read back as zeros
        await k.syscall(SetAttr(ino, size=1000))
        await k.syscall(SetAttr(ino, size=3000))
        got = await k.syscall(Read(h, 0, 4000))
        assert got == payload[:1000] + bytes(2000)
        assert (await k.syscall(GetAttr(ino))).blocks == bs // 512
        await k.syscall(Release(h))
        assert await errno_of(k.syscall(SetAttr(ROOT_INO, size=0))) == errno.EISDIR
        await _create(k, ROOT_INO, b"big", payload)
    assert debugfs(image, "cat /big") == payload
    assert debugfs(image, "cat /f") == payload[:1000] + bytes(2000)
    assert_fsck_clean(image)


def _ticking_clock(monkeypatch) -> None:
    """File times from a clock a tick further on at every reading: the real one (the
    coarse clock, as ext4's) gives changes made within one tick the same time."""
    from chanos.fs import vnode

    ticks = itertools.count(2 * 10**18, vnode.TIME_GRANULE_NS)
    monkeypatch.setattr(vnode, "_now", lambda: next(ticks))


async def test_times_and_attributes(image, monkeypatch):
    _ticking_clock(monkeypatch)
    async with boot(image, LOW) as k:
        ino = await _create(k, ROOT_INO, b"t")
        a0 = await k.syscall(GetAttr(ino))
        assert a0.crtime_ns and a0.atime_ns == a0.mtime_ns == a0.ctime_ns == a0.crtime_ns
        root0 = await k.syscall(GetAttr(ROOT_INO))
        h = await k.syscall(Open(ino, os.O_WRONLY))
        await k.syscall(Write(h, 0, b"x"))
        await k.syscall(Release(h))
        a1 = await k.syscall(GetAttr(ino))
        assert a1.mtime_ns > a0.mtime_ns and a1.ctime_ns == a1.mtime_ns
        a2 = await k.syscall(SetAttr(ino, mode=0o600))
        assert stat.S_IMODE(a2.mode) == 0o600 and stat.S_ISREG(a2.mode)
        assert a2.ctime_ns > a1.ctime_ns and a2.mtime_ns == a1.mtime_ns
        a3 = await k.syscall(
            SetAttr(ino, uid=1234, gid=70000, atime_ns=1_000_000_123, mtime_ns=2_500_000_999)
        )
        assert (a3.uid, a3.gid) == (1234, 70000)
        assert (a3.atime_ns, a3.mtime_ns) == (1_000_000_123, 2_500_000_999)
        # a time past 2038 (epoch bits) and before 1970
        a4 = await k.syscall(SetAttr(ino, mtime_ns=4_000_000_000_000_000_001, atime_ns=-5 * 10**9))
        assert a4.mtime_ns == 4_000_000_000_000_000_001 and a4.atime_ns == -5 * 10**9
        # creating an entry changes the directory's mtime and ctime
        await k.syscall(MkNod(ROOT_INO, b"other", 0o100644))
        root1 = await k.syscall(GetAttr(ROOT_INO))
        assert root1.mtime_ns > root0.mtime_ns and root1.ctime_ns == root1.mtime_ns
        # relatime: a read after a change moves atime
        await k.syscall(SetAttr(ino, atime_ns=1, mtime_ns=2))
        h = await k.syscall(Open(ino, os.O_RDONLY))
        await k.syscall(Read(h, 0, 1))
        await k.syscall(Release(h))
        assert (await k.syscall(GetAttr(ino))).atime_ns > 10**18
        assert (await k.syscall(StatFs())).f_bsize in (1024, 4096)
    assert re.search(r"User:\s+1234\s+Group:\s+70000", _stat(image, "/t"))
    assert_fsck_clean(image)


async def test_overwrites_within_a_tick_keep_the_times_of_the_first(image, monkeypatch):
    from chanos.fs import vnode

    clock = [2 * 10**18]
    monkeypatch.setattr(vnode, "_now", lambda: clock[0])
    tick = vnode.TIME_GRANULE_NS
    assert 0 < tick <= 10**7

    async def times():
        # GetAttr answers from the vnode, Lookup from the record the group actor holds:
        # they must agree after every write (the inode is written through).
        a = await k.syscall(GetAttr(ino))
        e = await k.syscall(Lookup(ROOT_INO, b"w"))
        assert (e.attr.size, e.attr.mtime_ns, e.attr.ctime_ns) == (a.size, a.mtime_ns, a.ctime_ns)
        return a.size, a.mtime_ns, a.ctime_ns

    async with boot(image, MountOptions()) as k:
        h, e = await k.syscall(Create(ROOT_INO, b"w", 0o644, os.O_RDWR | os.O_CREAT))
        ino = e.inode
        t0 = clock[0] = clock[0] + 1
        await k.syscall(Write(h, 0, b"a" * 8192))
        assert await times() == (8192, t0, t0)
        clock[0] += tick - 1  # an overwrite in the same tick: times unchanged
        await k.syscall(Write(h, 4096, b"b" * 4096))
        assert await times() == (8192, t0, t0)
        clock[0] += 1  # a tick after the first: the times move
        await k.syscall(Write(h, 0, b"c" * 100))
        t1 = clock[0]
        assert await times() == (8192, t1, t1)
        clock[0] += 1  # growing the file always stores the new size and times
        await k.syscall(Write(h, 8192, b"d"))
        assert await times() == (8193, t1 + 1, t1 + 1)
        clock[0] += 1  # after another change of the times, a write stores its own
        await k.syscall(SetAttr(ino, mode=0o600))
        clock[0] += 1
        await k.syscall(Write(h, 0, b"e"))
        assert await times() == (8193, t1 + 3, t1 + 3)
        await k.syscall(Release(h))
        h = await k.syscall(Open(ino, os.O_RDONLY))
        assert (
            await k.syscall(Read(h, 0, 8193)) == b"e" + b"c" * 99 + b"a" * 3996 + b"b" * 4096 + b"d"
        )
        await k.syscall(Release(h))
    assert_fsck_clean(image)


async def test_symlinks_fast_and_slow(image):
    slow_target = b"/some/where/" + b"d" * 300
    async with boot(image, LOW) as k:
        fast = await k.syscall(Symlink(ROOT_INO, b"fast", b"target-file"))
        slow = await k.syscall(Symlink(ROOT_INO, b"slow", slow_target))
        assert stat.S_ISLNK(fast.attr.mode) and fast.attr.size == 11 and fast.attr.blocks == 0
        assert slow.attr.size == len(slow_target) and slow.attr.blocks > 0
        assert await k.syscall(ReadLink(fast.inode)) == b"target-file"
        assert await k.syscall(ReadLink(slow.inode)) == slow_target
        edge = await k.syscall(Symlink(ROOT_INO, b"edge59", b"e" * 59))
        assert edge.attr.blocks == 0
        edge60 = await k.syscall(Symlink(ROOT_INO, b"edge60", b"e" * 60))
        assert edge60.attr.blocks > 0
        bs = fast.attr.blksize
        too_long = b"z" * bs
        assert await errno_of(k.syscall(Symlink(ROOT_INO, b"long", too_long))) == (
            errno.ENAMETOOLONG
        )
        assert await errno_of(k.syscall(Symlink(ROOT_INO, b"empty", b""))) == errno.ENOENT
        f = await _create(k, ROOT_INO, b"plain")
        assert await errno_of(k.syscall(ReadLink(f))) == errno.EINVAL
        await k.syscall(Unlink(ROOT_INO, b"edge60"))
    assert 'Fast link dest: "target-file"' in _stat(image, "/fast")
    assert not _flags(image, "/fast") & 0x80000  # no EXTENTS_FL on a fast symlink
    assert _flags(image, "/slow") & 0x80000
    assert debugfs(image, "cat /slow") == slow_target
    assert_fsck_clean(image)


async def test_device_nodes_fifos_sockets(image):
    async with boot(image, LOW) as k:
        c = await k.syscall(MkNod(ROOT_INO, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
        b = await k.syscall(MkNod(ROOT_INO, b"big", stat.S_IFBLK | 0o600, os.makedev(259, 70000)))
        p = await k.syscall(MkNod(ROOT_INO, b"pipe", stat.S_IFIFO | 0o644))
        s = await k.syscall(MkNod(ROOT_INO, b"sock", stat.S_IFSOCK | 0o644))
        assert c.attr.rdev == os.makedev(1, 3) and stat.S_ISCHR(c.attr.mode)
        assert (await k.syscall(GetAttr(b.inode))).rdev == os.makedev(259, 70000)
        assert stat.S_ISFIFO(p.attr.mode) and stat.S_ISSOCK(s.attr.mode)
        assert await errno_of(k.syscall(SetAttr(p.inode, size=0))) == errno.EINVAL
    out = _stat(image, "/null")
    assert "Type: character special" in out and "Device major/minor number: 01:03" in out
    assert re.search(r"major/minor number: 259:70000", _stat(image, "/big"))
    for name in ("null", "big", "pipe", "sock"):
        assert not _flags(image, "/" + name) & 0x80000
    assert_fsck_clean(image)


async def test_new_inode_fields(image):
    async with boot(image, LOW) as k:
        d = await k.syscall(MkDir(ROOT_INO, b"dir", 0o2775, uid=5, gid=6))
        f = await k.syscall(MkNod(d.inode, b"file", 0o100644, uid=7, gid=8))
        sub = await k.syscall(MkDir(d.inode, b"sub", 0o755, uid=7, gid=8))
        assert f.attr.gid == 6  # setgid directory passes its group on
        assert sub.attr.gid == 6 and sub.attr.mode & stat.S_ISGID
        assert f.generation == (await k.syscall(Lookup(d.inode, b"file"))).generation
    for path, ino in (("/dir", d.inode), ("/dir/file", f.inode)):
        raw = _inode_raw(image, ino)
        (extra_isize,) = struct.unpack_from("<H", raw, 0x80)
        (crtime,) = struct.unpack_from("<I", raw, 0x90)
        assert extra_isize == 32 and crtime != 0
        assert _flags(image, path) & 0x80000
    out = _stat(image, "/dir")
    assert "Links: 3" in out and "Size: " in out
    assert_fsck_clean(image)


async def test_xattrs_inode_then_block(image):
    async with boot(image, LOW) as k:
        bs = (await k.syscall(GetAttr(ROOT_INO))).blksize
        ino = await _create(k, ROOT_INO, b"x", b"data" * 10)
        blocks0 = (await k.syscall(GetAttr(ino))).blocks
        await k.syscall(SetXattr(ino, b"user.small", b"v1"))
        assert (await k.syscall(GetAttr(ino))).blocks == blocks0  # in the inode
        await k.syscall(SetXattr(ino, b"trusted.big", b"B" * 400))
        assert (await k.syscall(GetAttr(ino))).blocks == blocks0 + bs // 512  # xattr block
        assert await k.syscall(GetXattr(ino, b"trusted.big")) == b"B" * 400
        assert sorted(await k.syscall(ListXattr(ino))) == [b"trusted.big", b"user.small"]
        assert await errno_of(k.syscall(SetXattr(ino, b"user.small", b"z", XATTR_CREATE))) == (
            errno.EEXIST
        )
        assert await errno_of(k.syscall(SetXattr(ino, b"user.none", b"z", XATTR_REPLACE))) == (
            errno.ENODATA
        )
        await k.syscall(SetXattr(ino, b"user.small", b"v2", XATTR_REPLACE))
        assert await k.syscall(GetXattr(ino, b"user.small")) == b"v2"
        assert await errno_of(k.syscall(GetXattr(ino, b"user.none"))) == errno.ENODATA
        assert await errno_of(k.syscall(RemoveXattr(ino, b"user.none"))) == errno.ENODATA
        assert await errno_of(k.syscall(SetXattr(ino, b"user." + b"n" * 251, b""))) == errno.ERANGE
        assert await errno_of(k.syscall(SetXattr(ino, b"user.v", bytes(70_000)))) == errno.E2BIG
        assert await errno_of(k.syscall(SetXattr(ino, b"user.v", bytes(bs)))) == errno.ENOSPC
        assert await errno_of(k.syscall(SetXattr(ino, b"bogus.x", b"1"))) == errno.EOPNOTSUPP
        await k.syscall(SetXattr(ino, b"security.selinux", b"label\0"))
        # on a directory and a fast symlink too
        await k.syscall(SetXattr(ROOT_INO, b"user.onroot", b"r" * 300))
        ln = await k.syscall(Symlink(ROOT_INO, b"ln", b"x"))
        await k.syscall(SetXattr(ln.inode, b"trusted.t", b"t" * 200))
        assert (await k.syscall(GetAttr(ln.inode))).blocks == bs // 512
        assert await errno_of(k.syscall(SetXattr(ln.inode, b"user.u", b"1"))) == errno.EPERM
        await k.syscall(RemoveXattr(ino, b"trusted.big"))
        assert (await k.syscall(GetAttr(ino))).blocks == blocks0
        await k.syscall(SetXattr(ino, b"user.again", b"A" * 500))
        before = (await k.syscall(StatFs())).f_bfree
        await k.syscall(Unlink(ROOT_INO, b"x"))
        # Kept while the host kernel holds Create's lookup reference; freed when forgotten.
        await k.syscall(Forget(ino, 1))
        assert await errno_of(k.syscall(GetAttr(ino))) == errno.ENOENT
        after = (await k.syscall(StatFs())).f_bfree
        assert after > before  # data and xattr block given back
    assert b"r" * 64 in debugfs(image, "ea_get / user.onroot")
    assert b"trusted.t (200)" in debugfs(image, "ea_list /ln")
    assert_fsck_clean(image)


async def test_xattrs_written_by_debugfs_are_read(ext4_image):
    img = ext4_image("16M", 4096)
    debugfs(img, "write /dev/null f", "ea_set /f user.from_debugfs hello", write=True)
    debugfs(img, "ea_set /f user.big " + "q" * 600, write=True)
    async with boot(img, LOW) as k:
        ino = (await k.syscall(Lookup(ROOT_INO, b"f"))).inode
        assert await k.syscall(GetXattr(ino, b"user.from_debugfs")) == b"hello"
        assert await k.syscall(GetXattr(ino, b"user.big")) == b"q" * 600
        await k.syscall(SetXattr(ino, b"user.from_debugfs", b"changed"))
    assert b"changed" in debugfs(img, "ea_get /f user.from_debugfs")
    assert_fsck_clean(img)


async def test_unlink_open_file_keeps_it_until_release(image):
    data = os.urandom(50_000)
    async with boot(image, LOW) as k:
        free0 = (await k.syscall(StatFs())).f_bfree
        ifree0 = (await k.syscall(StatFs())).f_ffree
        ino = await _create(k, ROOT_INO, b"victim", data)
        h = await k.syscall(Open(ino, os.O_RDWR))
        await k.syscall(Unlink(ROOT_INO, b"victim"))
        assert await errno_of(k.syscall(Lookup(ROOT_INO, b"victim"))) == errno.ENOENT
        assert (await k.syscall(GetAttr(ino))).nlink == 0
        assert await k.syscall(Read(h, 0, 100_000)) == data
        await k.syscall(Write(h, 50_000, b"more"))
        await k.sync()  # the orphan head reaches the disk with the inode records
        with open(image, "rb") as f:
            f.seek(1024 + 0xE8)
            assert struct.unpack("<I", f.read(4))[0] == ino  # s_last_orphan
        await k.syscall(Release(h))
        # Still known to the host kernel (Create's lookup reference): kept, an orphan.
        assert (await k.syscall(GetAttr(ino))).nlink == 0
        await k.syscall(Forget(ino, 1))
        assert await errno_of(k.syscall(GetAttr(ino))) == errno.ENOENT
        st = await k.syscall(StatFs())
        assert (st.f_bfree, st.f_ffree) == (free0, ifree0)
    with open(image, "rb") as f:
        f.seek(1024 + 0xE8)
        assert struct.unpack("<I", f.read(4))[0] == 0
    assert_fsck_clean(image)


async def test_debugfs_written_files_read_through_chanos(ext4_image, tmp_path):
    img = ext4_image("16M", 1024)
    host = tmp_path / "host.bin"
    payload = os.urandom(123_457)
    host.write_bytes(payload)
    debugfs(
        img,
        "mkdir dd",
        f"write {host} dd/file",
        "symlink dd/ln /dd/file",
        write=True,
    )
    async with boot(img, LOW) as k:
        d = (await k.syscall(Lookup(ROOT_INO, b"dd"))).inode
        f = await k.syscall(Lookup(d, b"file"))
        assert f.attr.size == len(payload)
        h = await k.syscall(Open(f.inode, os.O_RDONLY))
        assert await k.syscall(Read(h, 0, 1 << 20)) == payload
        await k.syscall(Release(h))
        ln = (await k.syscall(Lookup(d, b"ln"))).inode
        assert await k.syscall(ReadLink(ln)) == b"/dd/file"
        # append through chanos, read back with debugfs
        h = await k.syscall(Open(f.inode, os.O_WRONLY | os.O_APPEND))
        await k.syscall(Write(h, 0, b"APPENDED"))
        await k.syscall(Release(h))
    assert debugfs(img, "cat /dd/file") == payload + b"APPENDED"
    assert_fsck_clean(img)


async def test_running_out_of_inodes_leaves_image_consistent(ext4_image):
    img = ext4_image("8M", 4096, extra_args=["-N", "64"])
    async with boot(img, LOW) as k:
        made = 0
        with pytest.raises(OSError) as ei:
            for i in range(200):
                if i % 5 == 0:
                    await k.syscall(MkDir(ROOT_INO, b"d%03d" % i, 0o755))
                else:
                    await _create(k, ROOT_INO, b"f%03d" % i, b"z" * 5000)
                made += 1
        assert ei.value.errno == errno.ENOSPC
        assert made > 20
        assert (await k.syscall(StatFs())).f_ffree == 0
    assert_fsck_clean(img)


async def test_opening_reading_and_closing_leave_nothing_to_write_back(image, monkeypatch):
    from chanos.fs.format.inode import Inode

    async def read_once(k, ino):
        h = await k.syscall(Open(ino, os.O_RDONLY))
        assert bytes(await k.syscall(Read(h, 0, 4))) == b"xxxx"
        await k.syscall(Release(h))

    _ticking_clock(monkeypatch)  # a read's atime is then newer than the write's mtime
    async with boot(image, LOW) as k:
        inos = [await _create(k, ROOT_INO, b"f%d" % i, b"x" * 5000) for i in range(6)]
        for ino in inos:
            await read_once(k, ino)  # the first read moves atime (relatime), saved at once
        await k.sync()
        built: list[int] = []
        build = Inode.build
        monkeypatch.setattr(Inode, "build", lambda self: built.append(1) or build(self))
        # Six files, three live vnodes: every start retires another, and each retired
        # vnode was only opened, read and closed. Nothing is built to be compared.
        for ino in inos:
            await read_once(k, ino)
        await k.sync()
        assert built == []
        # A read that does move atime (it is older than mtime again) still saves it.
        await k.syscall(SetAttr(inos[0], atime_ns=0))
        built.clear()
        await read_once(k, inos[0])
        assert built
        atime = (await k.syscall(GetAttr(inos[0]))).atime_ns
    async with boot(image, LOW) as k:
        assert (await k.syscall(GetAttr(inos[0]))).atime_ns == atime > 0
    assert_fsck_clean(image)


async def test_running_out_of_blocks_leaves_image_consistent(ext4_image):
    img = ext4_image("4M", 1024)
    async with boot(img, LOW) as k:
        chunk = os.urandom(64 * 1024)
        with pytest.raises(OSError) as ei:
            for i in range(200):
                h, _ = await k.syscall(Create(ROOT_INO, b"f%03d" % i, 0o644, os.O_WRONLY))
                try:
                    for off in range(0, 1 << 20, len(chunk)):
                        n = await k.syscall(Write(h, off, chunk))
                        if n < len(chunk):
                            raise OSError(errno.ENOSPC, "short write")
                finally:
                    await k.syscall(Release(h))
        assert ei.value.errno == errno.ENOSPC
        # directories need a block each: they fail with ENOSPC and leak nothing
        with pytest.raises(OSError) as ei:
            for i in range(50):
                await k.syscall(MkDir(ROOT_INO, b"dir%02d" % i, 0o755))
        assert ei.value.errno == errno.ENOSPC
        assert (await k.syscall(StatFs())).f_bfree == 0
    assert_fsck_clean(img)


async def test_unchanged_inode_is_not_written_again_and_changes_still_are(image, monkeypatch):
    from chanos.personality import trace

    _ticking_clock(monkeypatch)  # every create changes the directory's times

    sent: list[str] = []

    def hook(ev) -> None:
        if ev.kind == "send" and ev.msg == "WriteInode":
            sent.append(ev.msg)

    async with boot(image, LOW) as k:
        inos = [await _create(k, ROOT_INO, b"f%d" % i, b"x" * 5000) for i in range(6)]
        trace.enable(record=False, hooks=[hook])
        try:
            await k.sync()  # every live vnode is written back: all are unchanged
            for ino in inos:  # six files, three live vnodes: retired and started again
                assert (await k.syscall(GetAttr(ino))).size == 5000
            await k.sync()
            assert sent == []
            await k.syscall(SetAttr(inos[0], mode=0o600))
            assert sent == ["WriteInode"]
            # A vnode retired since (written back or not) and started again: its change
            # is written too.
            await k.syscall(SetAttr(inos[5], mode=0o640))
            assert len(sent) == 2
            # Files only created: each create writes the directory's record (its times)
            # and hands the new record to its group with the allocation; the new vnodes
            # are retired (three live at most) without writing anything back.
            sent.clear()
            for i in range(6):
                await _create(k, ROOT_INO, b"e%d" % i)
            await k.sync()
            assert len(sent) == 6
        finally:
            trace.disable()
    async with boot(image, LOW) as k:
        assert stat.S_IMODE((await k.syscall(GetAttr(inos[0]))).mode) == 0o600
        assert stat.S_IMODE((await k.syscall(GetAttr(inos[5]))).mode) == 0o640
        assert (await k.syscall(GetAttr(inos[3]))).size == 5000
    assert_fsck_clean(image)
