"""The file system through the system-call protocol, on real ext4 images.

Every test boots the kernel on a fresh ``mkfs.ext4`` image (4 KiB and 1 KiB blocks), drives
it only with ``kernel.syscall`` messages, unmounts, and has ``e2fsck -fn`` check the image.
Most run with the live-vnode bound set very low (``max_vnodes=4``), so vnodes are retired
and restarted all the time underneath the operations.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import time

import pytest
import trio
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    DROP_CAPABILITY,
    DROP_SET_ID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Create,
    Forget,
    FSync,
    GetAttr,
    GetXattr,
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
from conftest import (
    Errno,
    assert_fsck_clean,
    debugfs,
    k_listdir,
    k_read_file,
    k_resolve,
    k_write_file,
    last_orphan,
)

LOW = MountOptions(max_vnodes=4)


async def synced_last_orphan(kernel, img) -> int:
    """s_last_orphan as written on the image (after a sync) by the kernel."""
    if kernel is not None:
        await kernel.sync()
    return last_orphan(img)


async def test_create_write_read_persists_across_remount(image):
    data = os.urandom(300_000)
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"dir", 0o755))).inode
        ino = await k_write_file(k, d, b"file", data)
        assert await k_read_file(k, ino) == data
        a = await k.syscall(GetAttr(ino))
        assert a.size == len(data) and stat.S_ISREG(a.mode) and a.nlink == 1
        assert stat.S_IMODE(a.mode) == 0o644
        assert a.blocks * 512 >= len(data)
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        ino2 = await k_resolve(k, "/dir/file")
        assert ino2 == ino
        assert await k_read_file(k, ino2) == data
        assert await k_listdir(k, ROOT_INO) == {b"lost+found": 11, b"dir": d}
        d_attr = await k.syscall(GetAttr(d))
        assert stat.S_ISDIR(d_attr.mode) and d_attr.nlink == 2
        root = await k.syscall(GetAttr(ROOT_INO))
        assert root.nlink == 4  # ., .. , lost+found/.., dir/..
    assert_fsck_clean(image)


async def test_name_errors(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        f = await k_write_file(k, ROOT_INO, b"f", b"x")
        with Errno(errno.EEXIST):
            await k.syscall(MkDir(ROOT_INO, b"d", 0o755))
        with Errno(errno.EEXIST):
            await k.syscall(MkNod(ROOT_INO, b"f", stat.S_IFREG | 0o644, 0))
        with Errno(errno.EEXIST):
            await k.syscall(Symlink(ROOT_INO, b"d", b"target"))
        with Errno(errno.EEXIST):
            await k.syscall(Create(ROOT_INO, b"f", 0o644, os.O_CREAT | os.O_EXCL | os.O_RDWR))
        with Errno(errno.EEXIST):
            await k.syscall(Link(f, ROOT_INO, b"d"))
        with Errno(errno.ENOENT):
            await k.syscall(Lookup(ROOT_INO, b"missing"))
        with Errno(errno.ENOENT):
            await k.syscall(Unlink(ROOT_INO, b"missing"))
        with Errno(errno.ENOENT):
            await k.syscall(RmDir(ROOT_INO, b"missing"))
        with Errno(errno.ENOTDIR):
            await k.syscall(Lookup(f, b"x"))
        with Errno(errno.ENOTDIR):
            await k.syscall(MkDir(f, b"x", 0o755))
        with Errno(errno.ENOTDIR):
            await k.syscall(RmDir(ROOT_INO, b"f"))
        with Errno(errno.ENOTDIR):
            await k.syscall(OpenDir(f))
        with Errno(errno.EISDIR):
            await k.syscall(Unlink(ROOT_INO, b"d"))
        with Errno(errno.EISDIR):
            await k.syscall(Open(d, os.O_WRONLY))
        with Errno(errno.EPERM):
            await k.syscall(Link(d, ROOT_INO, b"dlink"))
        await k_write_file(k, d, b"inner", b"y")
        with Errno(errno.ENOTEMPTY):
            await k.syscall(RmDir(ROOT_INO, b"d"))
        long = b"n" * 256
        ok = b"n" * 255
        for msg in (
            Lookup(ROOT_INO, long),
            MkDir(ROOT_INO, long, 0o755),
            MkNod(ROOT_INO, long, stat.S_IFREG | 0o644, 0),
            Symlink(ROOT_INO, long, b"t"),
            Link(f, ROOT_INO, long),
            Rename(ROOT_INO, b"f", ROOT_INO, long),
        ):
            with Errno(errno.ENAMETOOLONG):
                await k.syscall(msg)
        await k.syscall(MkDir(ROOT_INO, ok, 0o755))
        assert ok in await k_listdir(k, ROOT_INO)
        with Errno(errno.ENOENT):
            await k.syscall(Lookup(ROOT_INO, b"n" * 254))
        # Nothing above left a trace: exactly the names we made.
        assert set(await k_listdir(k, ROOT_INO)) == {b"lost+found", b"d", b"f", ok}
    assert_fsck_clean(image)


async def test_rmdir_unlink_and_link_counts(image):
    async with boot(image, LOW) as k:
        a = (await k.syscall(MkDir(ROOT_INO, b"a", 0o755))).inode
        for i in range(5):
            await k.syscall(MkDir(a, b"sub%d" % i, 0o700))
        assert (await k.syscall(GetAttr(a))).nlink == 7
        await k.syscall(RmDir(a, b"sub3"))
        assert (await k.syscall(GetAttr(a))).nlink == 6
        f = await k_write_file(k, a, b"f", b"data")
        e = await k.syscall(Link(f, ROOT_INO, b"hard"))
        assert e.inode == f and e.attr.nlink == 2
        assert (await k.syscall(GetAttr(f))).nlink == 2
        await k.syscall(Unlink(a, b"f"))
        assert (await k.syscall(GetAttr(f))).nlink == 1
        assert await k_read_file(k, f) == b"data"
        with Errno(errno.EINVAL):
            await k.syscall(RmDir(a, b"."))
        assert set(await k_listdir(k, a)) == {b"sub0", b"sub1", b"sub2", b"sub4"}
    assert_fsck_clean(image)


async def test_rename_semantics(image):
    async with boot(image, LOW) as k:
        a = (await k.syscall(MkDir(ROOT_INO, b"a", 0o755))).inode
        b = (await k.syscall(MkDir(ROOT_INO, b"b", 0o755))).inode
        sub = (await k.syscall(MkDir(a, b"sub", 0o755))).inode
        deep = (await k.syscall(MkDir(sub, b"deep", 0o755))).inode
        f = await k_write_file(k, a, b"f", b"F")
        g = await k_write_file(k, b, b"g", b"G")
        # file across directories, over an existing file
        await k.syscall(Rename(a, b"f", b, b"g"))
        assert await k_listdir(k, b) == {b"g": f}
        assert await k_read_file(k, f) == b"F"
        with Errno(errno.ENOENT):
            await k.syscall(Lookup(a, b"f"))
        # The replaced file has no link left; the lookup reference its Create returned
        # keeps it (as Linux keeps an inode the host kernel still knows) until forgotten.
        assert (await k.syscall(GetAttr(g))).nlink == 0
        await k.syscall(Forget(g, 1))
        with Errno(errno.ENOENT):  # now it is freed
            await k.syscall(GetAttr(g))
        # a directory into its own subtree
        with Errno(errno.EINVAL):
            await k.syscall(Rename(ROOT_INO, b"a", deep, b"a"))
        with Errno(errno.EINVAL):
            await k.syscall(Rename(ROOT_INO, b"a", a, b"x"))
        # directory moves: `..` and both parents' link counts
        await k.syscall(Rename(a, b"sub", b, b"sub"))
        assert (await k.syscall(Lookup(sub, b".."))).inode == b
        assert (await k.syscall(GetAttr(a))).nlink == 2
        assert (await k.syscall(GetAttr(b))).nlink == 3
        # replace an empty dir; refuse a non-empty one; type mismatches
        empty = (await k.syscall(MkDir(a, b"empty", 0o755))).inode
        with Errno(errno.ENOTEMPTY):
            await k.syscall(Rename(a, b"empty", b, b"sub"))
        with Errno(errno.ENOTDIR):
            await k.syscall(Rename(a, b"empty", b, b"g"))
        with Errno(errno.EISDIR):
            await k.syscall(Rename(b, b"g", a, b"empty"))
        e2 = (await k.syscall(MkDir(b, b"e2", 0o755))).inode
        await k.syscall(Rename(b, b"e2", a, b"empty"))
        assert (await k.syscall(Lookup(a, b"empty"))).inode == e2
        assert (await k.syscall(Lookup(e2, b".."))).inode == a
        assert (await k.syscall(GetAttr(a))).nlink == 3
        assert (await k.syscall(GetAttr(b))).nlink == 3
        # The replaced directory has no link; MkDir's lookup reference keeps it until
        # forgotten, then it is freed.
        assert (await k.syscall(GetAttr(empty))).nlink == 0
        await k.syscall(Forget(empty, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(empty))
        # NOREPLACE and EXCHANGE
        with Errno(errno.EEXIST):
            await k.syscall(Rename(b, b"g", a, b"empty", RENAME_NOREPLACE))
        await k.syscall(Rename(b, b"g", a, b"new", RENAME_NOREPLACE))
        await k.syscall(Rename(a, b"new", b, b"sub", RENAME_EXCHANGE))
        assert (await k.syscall(Lookup(a, b"new"))).inode == sub
        assert (await k.syscall(Lookup(b, b"sub"))).inode == f
        assert (await k.syscall(Lookup(sub, b".."))).inode == a
        assert (await k.syscall(GetAttr(a))).nlink == 4
        assert (await k.syscall(GetAttr(b))).nlink == 2
        with Errno(errno.ENOENT):
            await k.syscall(Rename(a, b"new", b, b"nothing", RENAME_EXCHANGE))
        # same name, hard links: no-ops
        await k.syscall(Rename(b, b"sub", b, b"sub"))
        await k.syscall(Link(f, b, b"alias"))
        await k.syscall(Rename(b, b"sub", b, b"alias"))
        assert set(await k_listdir(k, b)) == {b"sub", b"alias"}
        assert (await k.syscall(GetAttr(f))).nlink == 2
    assert_fsck_clean(image)


async def test_unlink_open_file_keeps_it_until_release(image):
    data = os.urandom(50_000)
    async with boot(image, LOW) as k:
        before = await k.syscall(StatFs())
        h, e = await k.syscall(Create(ROOT_INO, b"tmp", 0o600, os.O_RDWR | os.O_CREAT))
        await k.syscall(Write(h, 0, data))
        await k.syscall(Unlink(ROOT_INO, b"tmp"))
        with Errno(errno.ENOENT):
            await k.syscall(Lookup(ROOT_INO, b"tmp"))
        # Still readable and writable through the handle; on the on-disk orphan list.
        assert await k.syscall(Read(h, 0, len(data) + 10)) == data
        await k.syscall(Write(h, len(data), b"tail"))
        await k.syscall(FSync(h, False))
        assert (await k.syscall(GetAttr(e.inode))).nlink == 0
        assert await synced_last_orphan(k, image) == e.inode
        # Touch many other inodes so the vnode table is under pressure meanwhile.
        for i in range(10):
            await k_write_file(k, ROOT_INO, b"other%d" % i, b"o")
        assert await k.syscall(Read(h, len(data), 10)) == b"tail"
        mid = await k.syscall(StatFs())
        assert mid.f_ffree == before.f_ffree - 11
        await k.syscall(Release(h))
        # Released, but the host kernel still holds Create's lookup reference: kept.
        assert await synced_last_orphan(k, image) == e.inode
        assert (await k.syscall(GetAttr(e.inode))).nlink == 0
        await k.syscall(Forget(e.inode, 1))
        assert await synced_last_orphan(k, image) == 0
        after = await k.syscall(StatFs())
        assert after.f_ffree == before.f_ffree - 10
        assert after.f_bfree >= before.f_bfree - 10 * 4  # the 50 KB went back
    assert_fsck_clean(image)


async def test_unlink_open_file_freed_at_unmount_if_never_released(image):
    async with boot(image, LOW) as k:
        h, _ = await k.syscall(Create(ROOT_INO, b"tmp", 0o600, os.O_RDWR | os.O_CREAT))
        await k.syscall(Write(h, 0, b"z" * 10_000))
        await k.syscall(Unlink(ROOT_INO, b"tmp"))
        assert await synced_last_orphan(k, image) != 0
    assert await synced_last_orphan(None, image) == 0
    assert_fsck_clean(image)


def make_orphans(img, n: int) -> list[int]:
    """Leave ``n`` files on the on-disk orphan list, as a crash with open-but-unlinked
    files would: names gone, links 0, chained through i_dtime from s_last_orphan."""
    src = img.parent / "payload"
    src.write_bytes(os.urandom(70_000))
    inos = []
    for i in range(n):
        debugfs(img, f"write {src} orphan{i}", write=True)
        out = debugfs(img, f"stat orphan{i}").decode()
        inos.append(int(out.split("Inode:")[1].split()[0]))
    reqs = []
    for i, ino in enumerate(inos):
        nxt = inos[i - 1] if i else 0
        reqs += [f"unlink orphan{i}", f"sif <{ino}> links_count 0", f"sif <{ino}> dtime {nxt}"]
    reqs.append(f"ssv last_orphan {inos[-1]}")
    debugfs(img, *reqs, write=True)
    return inos


async def test_orphans_left_by_a_crash_are_freed_at_mount(image):
    async with boot(image, LOW) as k:
        baseline = await k.syscall(StatFs())
    inos = make_orphans(image, 3)
    assert await synced_last_orphan(None, image) == inos[-1]
    async with boot(image, LOW) as k:
        assert await synced_last_orphan(k, image) == 0
        st = await k.syscall(StatFs())
        assert (st.f_bfree, st.f_ffree) == (baseline.f_bfree, baseline.f_ffree)
        for ino in inos:
            with pytest.raises(OSError):
                await k.syscall(GetAttr(ino))
    assert_fsck_clean(image)


async def test_truncate_up_down_and_sparse(image):
    async with boot(image, LOW) as k:
        data = os.urandom(100_000)
        f = await k_write_file(k, ROOT_INO, b"t", data)
        a = await k.syscall(SetAttr(f, size=5000))
        assert a.size == 5000
        assert await k_read_file(k, f) == data[:5000]
        a = await k.syscall(SetAttr(f, size=70_000))
        assert a.size == 70_000
        # Truncated-away bytes never come back: the extension reads as zeros.
        assert await k_read_file(k, f) == data[:5000] + bytes(65_000)
        await k.syscall(SetAttr(f, size=0))
        assert (await k.syscall(GetAttr(f))).blocks == 0
        # A sparse file: a byte at 1 GiB uses a block or two, not a gigabyte.
        h = await k.syscall(Open(f, os.O_RDWR))
        await k.syscall(Write(h, 1 << 30, b"end"))
        await k.syscall(Write(h, 0, b"start"))
        a = await k.syscall(GetAttr(f))
        assert a.size == (1 << 30) + 3
        assert a.blocks * 512 <= 64 * 1024
        assert await k.syscall(Read(h, (1 << 30) - 4, 100)) == bytes(4) + b"end"
        assert await k.syscall(Read(h, 5, 4096)) == bytes(4096)
        assert await k.syscall(Read(h, (1 << 30) + 3, 10)) == b""
        await k.syscall(Release(h))
        # SetAttr through a handle (ftruncate) and of times and mode.
        h = await k.syscall(Open(f, os.O_RDWR))
        a = await k.syscall(SetAttr(f, size=3, handle=h))
        assert a.size == 3
        await k.syscall(Release(h))
        a = await k.syscall(SetAttr(f, mode=0o600, atime_ns=1_000_000_123, mtime_ns=2_000_000_456))
        assert stat.S_IMODE(a.mode) == 0o600 and stat.S_ISREG(a.mode)
        assert (a.atime_ns, a.mtime_ns) == (1_000_000_123, 2_000_000_456)
        a = await k.syscall(SetAttr(f, uid=1234, gid=5678))
        assert (a.uid, a.gid) == (1234, 5678)
        d = (await k.syscall(MkDir(ROOT_INO, b"dir", 0o755))).inode
        with Errno(errno.EISDIR):
            await k.syscall(SetAttr(d, size=0))
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        a = await k.syscall(GetAttr(f))
        assert (a.size, a.atime_ns, a.mtime_ns, a.uid) == (3, 1_000_000_123, 2_000_000_456, 1234)
        assert await k_read_file(k, f) == b"sta"


async def test_file_over_4_gib(ext4_image):
    img = ext4_image("64M", 4096)
    async with boot(img, LOW) as k:
        h, e = await k.syscall(Create(ROOT_INO, b"big", 0o644, os.O_RDWR | os.O_CREAT))
        off = 5 * (1 << 30) + 12345
        await k.syscall(Write(h, off, b"beyond 4 GiB"))
        await k.syscall(Write(h, (1 << 32) - 2, b"wrap"))
        await k.syscall(Release(h))
    assert_fsck_clean(img)
    out = debugfs(img, "stat big").decode()
    assert f"Size: {off + 12}" in out
    async with boot(img, LOW) as k:
        h = await k.syscall(Open(e.inode, os.O_RDONLY))
        assert await k.syscall(Read(h, off, 100)) == b"beyond 4 GiB"
        assert await k.syscall(Read(h, (1 << 32) - 4, 8)) == b"\0\0wrap\0\0"
        await k.syscall(Release(h))
        await k.syscall(SetAttr(e.inode, size=(1 << 32) + 1))
    assert_fsck_clean(img)


async def fill_disk(k):
    """Write /fill until ENOSPC -> (its open handle, its Entry, the chunk written over
    and over, how many bytes were written)."""
    h, e = await k.syscall(Create(ROOT_INO, b"fill", 0o644, os.O_RDWR | os.O_CREAT))
    chunk = os.urandom(64 * 1024)
    off = 0
    with Errno(errno.ENOSPC):
        while True:
            off += await k.syscall(Write(h, off, chunk))
            assert off < 8 << 20, "wrote more than the device holds"
    return h, e, chunk, off


async def test_enospc_leaves_image_consistent_and_space_returns(ext4_image):
    img = ext4_image("4M", 1024)
    async with boot(img, LOW) as k:
        before = await k.syscall(StatFs())
        h, e, chunk, off = await fill_disk(k)
        size = (await k.syscall(GetAttr(e.inode))).size
        assert size >= off
        full = await k.syscall(StatFs())
        assert full.f_bfree < 16
        with pytest.raises(OSError) as ei:
            await k.syscall(MkDir(ROOT_INO, b"nospace-dir", 0o755))
        assert ei.value.errno == errno.ENOSPC
        # What was written reads back.
        assert await k.syscall(Read(h, 0, len(chunk))) == chunk
        await k.syscall(Release(h))
        await k.syscall(Unlink(ROOT_INO, b"fill"))
        await k.syscall(Forget(e.inode, 1))
        with Errno(errno.ENOENT):  # freed once forgotten (and ordered after the free)
            await k.syscall(GetAttr(e.inode))
        after = await k.syscall(StatFs())
        assert (after.f_bfree, after.f_ffree) == (before.f_bfree, before.f_ffree)
    assert_fsck_clean(img)


async def test_inherited_acl_without_room_for_its_block_is_enospc(ext4_image):
    """A default ACL too big for the inode body needs an xattr block for each new inode;
    on a full disk the create fails with ENOSPC and takes nothing (no inode, no entry)."""
    img = ext4_image("4M", 1024)
    u = 0xFFFFFFFF
    big = _acl((1, 7, u), *[(2, 6, 2000 + i) for i in range(40)], (4, 5, u), (0x10, 7, u),
               (0x20, 0, u))  # fmt: skip
    async with boot(img, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        await k.syscall(SetXattr(d, b"system.posix_acl_default", big))
        before = await k.syscall(StatFs())
        h, e, _chunk, _off = await fill_disk(k)
        await k.syscall(Release(h))
        full = await k.syscall(StatFs())
        with Errno(errno.ENOSPC):
            await k.syscall(MkNod(d, b"f", stat.S_IFREG | 0o644))
        assert await k_listdir(k, d) == {}
        after = await k.syscall(StatFs())
        assert (after.f_bfree, after.f_ffree) == (full.f_bfree, full.f_ffree)
        await k.syscall(Unlink(ROOT_INO, b"fill"))
        await k.syscall(Forget(e.inode, 1))
        f = (await k.syscall(MkNod(d, b"f", stat.S_IFREG | 0o644))).inode  # room again
        assert (await k.syscall(GetAttr(f))).blocks > 0  # its xattr block
        assert (await k.syscall(StatFs())).f_ffree == before.f_ffree - 1
    assert_fsck_clean(img)


async def test_create_reusing_a_number_whose_vnode_is_still_live(image):
    """A new file's vnode normally starts with the record its directory just made, already
    opened. When the number comes round again while the old inode's vnode is still live
    (freed by its last close, not yet retired), that vnode is opened as usual and reads
    the new record: the new file behaves like any other."""
    from chanos.personality import trace

    sent: list[str] = []
    async with boot(image, MountOptions(max_vnodes=64)) as k:
        h, e = await k.syscall(Create(ROOT_INO, b"a", 0o644, os.O_RDWR | os.O_CREAT))
        await k.syscall(Forget(e.inode, 1))  # only the open handle keeps it now
        await k.syscall(Unlink(ROOT_INO, b"a"))
        await k.syscall(Release(h))  # the last close frees the inode
        trace.enable(record=False, hooks=[lambda ev: ev.kind == "send" and sent.append(ev.msg)])
        try:
            h2, e2 = await k.syscall(Create(ROOT_INO, b"b", 0o600, os.O_RDWR | os.O_CREAT))
        finally:
            trace.disable()
        assert e2.inode == e.inode  # the lowest free number again
        assert "Open" in sent  # the live vnode was opened, not started afresh
        assert stat.S_IMODE((await k.syscall(GetAttr(e2.inode))).mode) == 0o600
        await k.syscall(Write(h2, 0, b"second life"))
        await k.syscall(Unlink(ROOT_INO, b"b"))  # open: kept until the last close
        assert await k.syscall(Read(h2, 0, 100)) == b"second life"
        await k.syscall(Forget(e2.inode, 1))
        free = (await k.syscall(StatFs())).f_ffree
        await k.syscall(Release(h2))
        assert (await k.syscall(StatFs())).f_ffree == free + 1  # freed at the last close
    assert_fsck_clean(image)


async def test_inode_exhaustion(ext4_image):
    img = ext4_image("8M", 1024, extra_args=["-N", "48"])
    async with boot(img, LOW) as k:
        st = await k.syscall(StatFs())
        made = []
        with Errno(errno.ENOSPC):
            for i in range(st.f_ffree + 1):
                e = await k.syscall(MkNod(ROOT_INO, b"f%d" % i, stat.S_IFREG | 0o644, 0))
                made.append(e.inode)
        assert len(made) == st.f_ffree
        assert (await k.syscall(StatFs())).f_ffree == 0
        with Errno(errno.ENOSPC):
            await k.syscall(MkDir(ROOT_INO, b"d", 0o755))
        assert b"d" not in await k_listdir(k, ROOT_INO)
        await k.syscall(Unlink(ROOT_INO, b"f0"))
        # The host kernel still knows f0 (references from MkNod and from the listing's
        # readdirplus entry): its number is kept until both are forgotten.
        with Errno(errno.ENOSPC):
            await k.syscall(MkDir(ROOT_INO, b"d", 0o755))
        await k.syscall(Forget(made[0], 1))
        assert (await k.syscall(GetAttr(made[0]))).nlink == 0
        await k.syscall(Forget(made[0], 1))
        with Errno(errno.ENOENT):  # freed (and ordered after the free)
            await k.syscall(GetAttr(made[0]))
        d = await k.syscall(MkDir(ROOT_INO, b"d", 0o755))
        assert d.inode == made[0]  # the only free number
    assert_fsck_clean(img)


async def test_statfs_is_true(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        for i in range(20):
            await k_write_file(k, d, b"f%d" % i, os.urandom(9000 * i))
        st = await k.syscall(StatFs())
    out = debugfs(image, "stats").decode()

    def field(name):
        return int(out.split(name + ":")[1].split()[0])

    assert st.f_bfree == field("Free blocks")
    assert st.f_ffree == field("Free inodes")
    # f_blocks leaves out the metadata overhead, as Linux's ext4 statfs does.
    assert st.f_bfree < st.f_blocks <= field("Block count")
    assert st.f_files == field("Inode count")
    assert st.f_bavail == max(0, field("Free blocks") - field("Reserved block count"))
    assert st.f_bsize == field("Block size") and st.f_namemax == 255
    assert_fsck_clean(image)


async def test_symlinks_devices_fifos(image):
    slow_target = b"/" + b"x" * 200 + b"/target"
    async with boot(image, LOW) as k:
        fast = await k.syscall(Symlink(ROOT_INO, b"fast", b"short/target"))
        slow = await k.syscall(Symlink(ROOT_INO, b"slow", slow_target))
        assert stat.S_ISLNK(fast.attr.mode) and fast.attr.size == len(b"short/target")
        assert await k.syscall(ReadLink(fast.inode)) == b"short/target"
        assert await k.syscall(ReadLink(slow.inode)) == slow_target
        fifo = await k.syscall(MkNod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o644, 0))
        sock = await k.syscall(MkNod(ROOT_INO, b"sock", stat.S_IFSOCK | 0o644, 0))
        chr_ = await k.syscall(MkNod(ROOT_INO, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
        blk = await k.syscall(MkNod(ROOT_INO, b"sda", stat.S_IFBLK | 0o660, os.makedev(8, 0)))
        assert stat.S_ISFIFO(fifo.attr.mode) and stat.S_ISSOCK(sock.attr.mode)
        assert chr_.attr.rdev == os.makedev(1, 3) and blk.attr.rdev == os.makedev(8, 0)
        with Errno(errno.EINVAL):
            await k.syscall(ReadLink(fifo.inode))
    assert_fsck_clean(image)
    assert debugfs(image, "cat slow") == slow_target  # debugfs cat of a symlink: its target
    out = debugfs(image, "stat null").decode()
    assert "Type: character special" in out and "Device major/minor number: 01:03" in out
    async with boot(image, LOW) as k:
        assert await k.syscall(ReadLink(await k_resolve(k, "/slow"))) == slow_target
        a = await k.syscall(GetAttr(await k_resolve(k, "/sda")))
        assert stat.S_ISBLK(a.mode) and a.rdev == os.makedev(8, 0)


async def test_xattrs(image):
    big = os.urandom(700)  # too big for the inode body, fits a 1 KiB xattr block
    async with boot(image, LOW) as k:
        f = await k_write_file(k, ROOT_INO, b"f", b"x")
        await k.syscall(SetXattr(f, b"user.small", b"v1"))
        await k.syscall(SetXattr(f, b"trusted.t", b"tv"))
        await k.syscall(SetXattr(f, b"user.big", big))
        with Errno(errno.ENOSPC):  # fits neither the inode nor one block
            await k.syscall(SetXattr(f, b"user.huge", bytes(5000)))
        assert await k.syscall(GetXattr(f, b"user.small")) == b"v1"
        assert await k.syscall(GetXattr(f, b"user.big")) == big
        with Errno(errno.EEXIST):
            await k.syscall(SetXattr(f, b"user.small", b"v2", XATTR_CREATE))
        with Errno(errno.ENODATA):
            await k.syscall(SetXattr(f, b"user.none", b"v2", XATTR_REPLACE))
        await k.syscall(SetXattr(f, b"user.small", b"v2", XATTR_REPLACE))
        assert await k.syscall(GetXattr(f, b"user.small")) == b"v2"
        assert set(await k.syscall(ListXattr(f))) == {b"user.small", b"trusted.t", b"user.big"}
        await k.syscall(RemoveXattr(f, b"trusted.t"))
        with Errno(errno.ENODATA):
            await k.syscall(GetXattr(f, b"trusted.t"))
        with Errno(errno.ENODATA):
            await k.syscall(RemoveXattr(f, b"trusted.t"))
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        f = await k_resolve(k, "/f")
        assert set(await k.syscall(ListXattr(f))) == {b"user.small", b"user.big"}
        assert await k.syscall(GetXattr(f, b"user.big")) == big
        await k.syscall(Unlink(ROOT_INO, b"f"))  # frees the xattr block too
    assert_fsck_clean(image)


async def test_a_write_takes_away_what_it_is_told_to(image):
    """Write.drop, for writes the host kernel passes straight through (direct I/O):
    file capabilities go whoever writes; set-user-ID, and set-group-ID with group
    execute, go for a writer without CAP_FSETID; a plain write leaves all of them."""
    cap = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)
    big = os.urandom(700)  # with it the attributes live in an xattr block on 1 KiB images
    async with boot(image, LOW) as k:
        files = {}
        for name, mode in ((b"setid", 0o6755), (b"lockmark", 0o2644), (b"plain", 0o6755)):
            ino = await k_write_file(k, ROOT_INO, name, b"." * 100)
            await k.syscall(SetAttr(ino, mode=mode))
            await k.syscall(SetXattr(ino, b"security.capability", cap))
            await k.syscall(SetXattr(ino, b"user.big", big))
            files[name] = ino

        async def write(name: bytes, drop: int) -> None:
            h = await k.syscall(Open(files[name], os.O_WRONLY))
            assert await k.syscall(Write(h, 10, b"w", drop)) == 1
            await k.syscall(Release(h))

        await write(b"plain", 0)
        before = await k.syscall(GetAttr(files[b"setid"]))
        await write(b"setid", DROP_CAPABILITY | DROP_SET_ID)
        await write(b"lockmark", DROP_CAPABILITY | DROP_SET_ID)
        after = await k.syscall(GetAttr(files[b"setid"]))
        assert after.ctime_ns >= before.ctime_ns

    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        want = {b"setid": 0o755, b"lockmark": 0o2644, b"plain": 0o6755}
        for name, mode in want.items():
            ino = await k_resolve(k, "/" + name.decode())
            assert stat.S_IMODE((await k.syscall(GetAttr(ino))).mode) == mode, name
            names = set(await k.syscall(ListXattr(ino)))
            kept = name == b"plain"
            assert names == ({b"security.capability"} if kept else set()) | {b"user.big"}
            assert await k.syscall(GetXattr(ino, b"user.big")) == big
            assert (await k_read_file(k, ino))[9:12] == b".w."
    assert_fsck_clean(image)


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


async def test_new_inodes_inherit_the_default_acl(image):
    """As on ext4: a file, a device node and a directory made in a directory with a
    default ACL get it as their access ACL (narrowed by the mode asked for) and the mode
    narrowed by it; the directory also gets the default ACL; a symlink gets neither. An
    ACL too big for the inode body goes to an xattr block that e2fsck counts."""
    u = 0xFFFFFFFF
    small = _acl((1, 7, u), (2, 7, 1000), (4, 5, u), (0x10, 7, u), (0x20, 5, u))
    named = [(2, 6, 2000 + i) for i in range(40)]  # 40 named users: an xattr block
    big = _acl((1, 7, u), *named, (4, 5, u), (0x10, 7, u), (0x20, 0, u))
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"shared", 0o755))).inode
        await k.syscall(SetXattr(d, b"system.posix_acl_default", small))
        f = await k_write_file(k, d, b"f", b"data")  # asked for 0644
        sub = (await k.syscall(MkDir(d, b"sub", 0o750))).inode
        fifo = (await k.syscall(MkNod(d, b"fifo", stat.S_IFIFO | 0o600))).inode
        link = (await k.syscall(Symlink(d, b"l", b"f"))).inode
        plain = (await k.syscall(MkDir(ROOT_INO, b"plain", 0o755))).inode
        await k.syscall(SetXattr(plain, b"system.posix_acl_default", big))
        g = await k_write_file(k, plain, b"g", b"data")
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:  # read back from the image
        a = await k.syscall(GetAttr(f))
        assert stat.S_IMODE(a.mode) == 0o644  # mask r (from the group bits of 0644)
        assert await k.syscall(GetXattr(f, b"system.posix_acl_access")) == _acl(
            (1, 6, u), (2, 7, 1000), (4, 5, u), (0x10, 4, u), (0x20, 4, u)
        )
        with Errno(errno.ENODATA):
            await k.syscall(GetXattr(f, b"system.posix_acl_default"))
        a = await k.syscall(GetAttr(sub))
        assert stat.S_IMODE(a.mode) == 0o750
        assert await k.syscall(GetXattr(sub, b"system.posix_acl_default")) == small
        assert await k.syscall(GetXattr(sub, b"system.posix_acl_access")) == _acl(
            (1, 7, u), (2, 7, 1000), (4, 5, u), (0x10, 5, u), (0x20, 0, u)
        )
        # a directory made inside inherits again (its parent's default ACL is the same)
        subsub = (await k.syscall(MkDir(sub, b"deeper", 0o777))).inode
        assert await k.syscall(GetXattr(subsub, b"system.posix_acl_default")) == small
        assert stat.S_IMODE((await k.syscall(GetAttr(fifo))).mode) == 0o600
        assert await k.syscall(GetXattr(fifo, b"system.posix_acl_access")) == _acl(
            (1, 6, u), (2, 7, 1000), (4, 5, u), (0x10, 0, u), (0x20, 0, u)
        )
        assert stat.S_IMODE((await k.syscall(GetAttr(link))).mode) == 0o777
        assert await k.syscall(ListXattr(link)) == []
        a = await k.syscall(GetAttr(g))
        assert stat.S_IMODE(a.mode) == 0o640 and a.blocks > 0  # data + xattr block
        got = await k.syscall(GetXattr(g, b"system.posix_acl_access"))
        assert got == _acl((1, 6, u), *named, (4, 5, u), (0x10, 4, u), (0x20, 0, u))
        await k.syscall(Unlink(plain, b"g"))  # frees its xattr block with it
    assert_fsck_clean(image)


async def test_the_umask_narrows_new_modes_unless_a_default_acl_takes_its_place(image):
    """POSIX.1e, as on ext4: a new file, node or directory loses the umask's bits from
    the mode asked for; in a directory with a default ACL the ACL narrows the mode
    instead and the umask is not applied; a symlink is 0777 whatever the umask."""
    u = 0xFFFFFFFF
    everyone = _acl((1, 7, u), (4, 7, u), (0x20, 7, u))  # rwx for owner, group, other
    async with boot(image, LOW) as k:
        plain = (await k.syscall(MkDir(ROOT_INO, b"plain", 0o777, umask=0o027))).inode
        shared = (await k.syscall(MkDir(ROOT_INO, b"shared", 0o777))).inode
        await k.syscall(SetXattr(shared, b"system.posix_acl_default", everyone))
        made = {}
        for name, d in ((b"plain", plain), (b"shared", shared)):
            h, e = await k.syscall(Create(d, b"f", 0o666, os.O_WRONLY, umask=0o077))
            await k.syscall(Release(h))
            sub = await k.syscall(MkDir(d, b"sub", 0o777, umask=0o077))
            fifo = await k.syscall(MkNod(d, b"fifo", stat.S_IFIFO | 0o666, umask=0o077))
            link = await k.syscall(Symlink(d, b"l", b"f"))
            made[name] = (e.inode, sub.inode, fifo.inode, link.inode)
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        assert stat.S_IMODE((await k.syscall(GetAttr(plain))).mode) == 0o750
        want = {b"plain": (0o600, 0o700, 0o600, 0o777), b"shared": (0o666, 0o777, 0o666, 0o777)}
        for name, modes in want.items():
            for ino, mode in zip(made[name], modes, strict=True):
                assert stat.S_IMODE((await k.syscall(GetAttr(ino))).mode) == mode, name


async def test_an_access_acl_and_the_mode_follow_each_other(image):
    """As ext4 (the VFS's posix_acl_update_mode and posix_acl_chmod): setting an access
    ACL sets the mode's bits (the group bits from the mask), an ACL that says no more
    than the mode is not kept, and chmod rewrites the owner, mask and other entries."""
    u = 0xFFFFFFFF
    async with boot(image, LOW) as k:
        f = await k_write_file(k, ROOT_INO, b"f", b"x", mode=0o600)
        await k.syscall(
            SetXattr(f, b"system.posix_acl_access", _acl((1, 7, u), (4, 5, u), (0x20, 4, u)))
        )
        assert stat.S_IMODE((await k.syscall(GetAttr(f))).mode) == 0o754
        assert await k.syscall(ListXattr(f)) == []  # no more than the mode: not kept
        full = _acl((1, 6, u), (2, 6, 1000), (4, 4, u), (0x10, 6, u), (0x20, 0, u))
        await k.syscall(SetXattr(f, b"system.posix_acl_access", full))
        assert stat.S_IMODE((await k.syscall(GetAttr(f))).mode) == 0o660
        assert await k.syscall(GetXattr(f, b"system.posix_acl_access")) == full
        a = await k.syscall(SetAttr(f, mode=0o4640))
        assert stat.S_IMODE(a.mode) == 0o4640
        chmodded = _acl((1, 6, u), (2, 6, 1000), (4, 4, u), (0x10, 4, u), (0x20, 0, u))
        assert await k.syscall(GetXattr(f, b"system.posix_acl_access")) == chmodded
        # an equivalent ACL replaces a fuller one: the mode is set and the ACL goes
        await k.syscall(
            SetXattr(f, b"system.posix_acl_access", _acl((1, 6, u), (4, 0, u), (0x20, 0, u)))
        )
        assert stat.S_IMODE((await k.syscall(GetAttr(f))).mode) == 0o4600
        assert await k.syscall(ListXattr(f)) == []
        with Errno(errno.EINVAL):
            await k.syscall(SetXattr(f, b"system.posix_acl_access", b"\x02\x00\x00\x00\x01"))
        link = (await k.syscall(Symlink(ROOT_INO, b"l", b"f"))).inode
        with Errno(errno.EOPNOTSUPP):
            await k.syscall(SetXattr(link, b"system.posix_acl_access", full))
        await k.syscall(SetXattr(f, b"system.posix_acl_access", full))
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        f = await k_resolve(k, "/f")
        assert stat.S_IMODE((await k.syscall(GetAttr(f))).mode) == 0o4660
        assert await k.syscall(GetXattr(f, b"system.posix_acl_access")) == full


async def test_acl_mount_option_off_inherits_nothing(image):
    u = 0xFFFFFFFF
    default = _acl((1, 7, u), (2, 7, 1000), (4, 5, u), (0x10, 7, u), (0x20, 5, u))
    async with boot(image, MountOptions(max_vnodes=4, acl=False)) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        await k.syscall(SetXattr(d, b"system.posix_acl_default", default))
        f = await k_write_file(k, d, b"f", b"x")
        assert stat.S_IMODE((await k.syscall(GetAttr(f))).mode) == 0o644
        assert await k.syscall(ListXattr(f)) == []
    assert_fsck_clean(image)


async def test_getxattr_answered_without_a_vnode_only_when_certain(image):
    big = os.urandom(700)  # lands in an xattr block
    async with boot(image, LOW) as k:
        await k_write_file(k, ROOT_INO, b"plain", b"x")
        small = await k_write_file(k, ROOT_INO, b"small", b"x")
        await k.syscall(SetXattr(small, b"user.a", b"1"))
        inblock = await k_write_file(k, ROOT_INO, b"inblock", b"x")
        await k.syscall(SetXattr(inblock, b"user.big", big))
        gone = await k_write_file(k, ROOT_INO, b"gone", b"x")
        await k.syscall(Unlink(ROOT_INO, b"gone"))
    async with boot(image, LOW) as k:  # nothing is live after a mount
        plain = await k_resolve(k, "/plain")
        small = await k_resolve(k, "/small")
        inblock = await k_resolve(k, "/inblock")
        for ino in (plain, small, inblock):
            await k.syscall(Forget(ino, 1))  # k_resolve's lookup: the vnodes retire
        started = (await k.vnode_stats()).started
        for name in (b"security.selinux", b"system.posix_acl_access", b"user.a"):
            with Errno(errno.ENODATA):
                await k.syscall(GetXattr(plain, name))
        assert (await k.vnode_stats()).started == started  # answered from the record
        # The vnode answers everything else: attributes in the inode and in a block,
        # a bad namespace, a free inode.
        assert await k.syscall(GetXattr(small, b"user.a")) == b"1"
        with Errno(errno.ENODATA):
            await k.syscall(GetXattr(small, b"user.b"))
        assert await k.syscall(GetXattr(inblock, b"user.big")) == big
        with Errno(errno.EOPNOTSUPP):
            await k.syscall(GetXattr(plain, b"bogus.name"))
        with Errno(errno.ENOENT):
            await k.syscall(GetXattr(gone, b"user.a"))
        # A live vnode is asked even for a file without attributes, and a set is seen.
        await k.syscall(SetXattr(plain, b"user.new", b"v"))
        assert await k.syscall(GetXattr(plain, b"user.new")) == b"v"
    assert_fsck_clean(image)


async def test_readdir_offsets_stable_across_changes(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        names = [b"entry-%03d" % i for i in range(150)]
        for n in names:
            await k.syscall(MkNod(d, n, stat.S_IFREG | 0o644, 0))
        h = await k.syscall(OpenDir(d))
        seen: list[bytes] = []
        off = 0
        step = 0
        while True:
            batch = await k.syscall(ReadDir(h, off))
            if not batch:
                break
            for e in batch[:7]:  # consume a few, then change the directory
                seen.append(e.name)
                off = e.next_offset
            step += 1
            await k.syscall(Unlink(d, names[-step]))  # remove from the end
            await k.syscall(MkNod(d, b"new-%03d" % step, stat.S_IFREG | 0o644, 0))
        await k.syscall(ReleaseDir(h))
        assert len(seen) == len(set(seen)), "an entry came twice"
        # Every entry present for the whole scan was returned.
        survivors = set(names[: len(names) - step])
        assert survivors <= set(seen)
    assert_fsck_clean(image)


@pytest.mark.parametrize("policy", ["relatime", "strictatime", "noatime"])
async def test_reads_and_listings_move_atime_as_the_mount_says(image, policy):
    old = 1_000_000_000 * 10**9  # before the last change
    async with boot(image, MountOptions(atime=policy)) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        f = await k_write_file(k, d, b"f", b"data")
        for ino in (f, d):
            await k.syscall(SetAttr(ino, atime_ns=old))
        before = time.time_ns()
        assert await k_read_file(k, f) == b"data"
        await k_listdir(k, d)
        moved = policy != "noatime"  # older than the last change: relatime moves it too
        for ino in (f, d):
            at = (await k.syscall(GetAttr(ino))).atime_ns
            assert (at >= before - 10**9) if moved else (at == old)
        # Newer than the last change and less than a day old: only strictatime moves it.
        ahead = time.time_ns() + 3600 * 10**9
        for ino in (f, d):
            await k.syscall(SetAttr(ino, atime_ns=ahead))
        await k_read_file(k, f)
        await k_listdir(k, d)
        last = {}
        for ino in (f, d):
            last[ino] = at = (await k.syscall(GetAttr(ino))).atime_ns
            assert (at < ahead) if policy == "strictatime" else (at == ahead)
    async with boot(image, MountOptions(atime=policy)) as k:  # and it was written
        for ino in (f, d):
            assert (await k.syscall(GetAttr(ino))).atime_ns == last[ino]
    assert_fsck_clean(image)


async def test_nodiratime_leaves_directories_alone(image):
    old = 1_000_000_000 * 10**9
    async with boot(image, MountOptions(diratime=False)) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        f = await k_write_file(k, d, b"f", b"data")
        for ino in (f, d):
            await k.syscall(SetAttr(ino, atime_ns=old))
        await k_read_file(k, f)
        await k_listdir(k, d)
        assert (await k.syscall(GetAttr(d))).atime_ns == old
        assert (await k.syscall(GetAttr(f))).atime_ns > old
    with pytest.raises(ValueError):
        MountOptions(atime="sometimes")


async def test_readdir_gives_an_unreadable_entry_its_type_and_no_attributes(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        files = {}
        for n in (b"a", b"b", b"c"):
            files[n] = (await k.syscall(MkNod(d, n, stat.S_IFREG | 0o644, 0))).inode
        await k.syscall(Symlink(d, b"s", b"a", 0, 0))
    # An entry naming a free inode of the last group: no record to read, as after a crash
    # that wrote the entry but not the inode.
    count = int(re.search(rb"Inode count:\s+(\d+)", debugfs(image, "stats")).group(1))
    debugfs(image, f"ln <{count}> /d/ghost", write=True)
    async with boot(image, LOW) as k:
        h = await k.syscall(OpenDir(d))
        got = {e.name: e for e in await k.syscall(ReadDir(h, 0))}
        await k.syscall(ReleaseDir(h))
        assert set(got) == {b".", b"..", b"a", b"b", b"c", b"s", b"ghost"}
        ghost = got[b"ghost"]
        assert ghost.inode == count and ghost.attr is None and not ghost.counted
        for n, ino in files.items():
            e = got[n]
            assert e.counted and e.attr.ino == ino and stat.S_ISREG(e.attr.mode)
        assert got[b"s"].counted and stat.S_ISLNK(got[b"s"].attr.mode)
        assert got[b"."].attr.ino == d and got[b".."].attr.ino == ROOT_INO


async def test_many_files_many_dirs_with_two_live_vnodes(image):
    """The vnode bound at its minimum under a mixed workload; content checked after."""
    contents = {}
    async with boot(image, MountOptions(max_vnodes=2)) as k:
        dirs = [(await k.syscall(MkDir(ROOT_INO, b"d%d" % i, 0o755))).inode for i in range(5)]
        for i in range(60):
            data = os.urandom(i * 97)
            d = dirs[i % 5]
            await k_write_file(k, d, b"f%d" % i, data)
            contents[(i % 5, i)] = data
        for i in range(0, 60, 3):
            await k.syscall(Rename(dirs[i % 5], b"f%d" % i, dirs[(i + 1) % 5], b"m%d" % i))
        st = await k.vnode_stats()
        assert st.peak <= 8 and st.retired > 50
    assert_fsck_clean(image)
    async with boot(image, MountOptions(max_vnodes=2)) as k:
        for (di, i), data in contents.items():
            path = f"/d{(di + 1) % 5}/m{i}" if i % 3 == 0 else f"/d{di}/f{i}"
            assert await k_read_file(k, await k_resolve(k, path)) == data
    assert_fsck_clean(image)


async def test_concurrent_clients(image):
    """Several tasks at once, each with its own directory, plus cross renames."""
    async with boot(image, LOW) as k:
        dirs = [(await k.syscall(MkDir(ROOT_INO, b"c%d" % i, 0o755))).inode for i in range(4)]

        async def worker(i):
            for j in range(15):
                await k_write_file(k, dirs[i], b"w%d" % j, bytes([i]) * (j * 300))
                if j % 4 == 0:
                    await k.syscall(
                        Rename(dirs[i], b"w%d" % j, dirs[(i + 1) % 4], b"x%d-%d" % (i, j))
                    )

        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(worker, i)
        total = 0
        for d in dirs:
            total += len(await k_listdir(k, d))
        assert total == 60
    assert_fsck_clean(image)


async def test_directory_grows_over_many_blocks_and_shrinks(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"big", 0o755))).inode
        names = [b"%04d-" % i + b"n" * 60 for i in range(400)]
        for n in names:
            await k.syscall(MkNod(d, n, stat.S_IFREG | 0o644, 0))
        assert set(await k_listdir(k, d)) == set(names)
        assert (await k.syscall(GetAttr(d))).size > 8 * 1024
        for n in names[::2]:
            await k.syscall(Unlink(d, n))
        assert set(await k_listdir(k, d)) == set(names[1::2])
        for n in names[1::2]:
            await k.syscall(Unlink(d, n))
        await k.syscall(RmDir(ROOT_INO, b"big"))
    assert_fsck_clean(image)


async def test_read_only_mount_refuses_changes(image):
    async with boot(image) as k:
        await k_write_file(k, ROOT_INO, b"f", b"data")
    async with boot(image, MountOptions(read_only=True)) as k:
        f = await k_resolve(k, "/f")
        assert await k_read_file(k, f) == b"data"
        for msg in (
            MkDir(ROOT_INO, b"d", 0o755),
            Unlink(ROOT_INO, b"f"),
            SetAttr(f, size=0),
            Open(f, os.O_WRONLY),
            Rename(ROOT_INO, b"f", ROOT_INO, b"g"),
        ):
            with Errno(errno.EROFS):
                await k.syscall(msg)
    assert_fsck_clean(image)


def _crash_next_getattr(monkeypatch) -> set[int]:
    """Vnodes crash (RuntimeError) on the next GetAttr for an inode added to the set."""
    from chanos.fs import vnode as vnode_mod
    from chanos.fs.vnode_table_protocol import Unpinned

    real_handle = vnode_mod.VnodeActor.handle
    crash_next: set[int] = set()

    async def flaky_handle(self, msg):
        # A GetAttr to a live vnode comes wrapped (sent without a pin).
        asked = msg.msg if isinstance(msg, Unpinned) else msg
        if self.ino in crash_next and isinstance(asked, GetAttr):
            crash_next.discard(self.ino)
            raise RuntimeError("injected crash")
        return await real_handle(self, msg)

    monkeypatch.setattr(vnode_mod.VnodeActor, "handle", flaky_handle)
    return crash_next


async def test_crashed_vnode_gives_eio_and_the_rest_goes_on(image, monkeypatch):
    crash_next = _crash_next_getattr(monkeypatch)
    async with boot(image, LOW) as k:
        f = await k_write_file(k, ROOT_INO, b"f", b"before")
        g = await k_write_file(k, ROOT_INO, b"g", b"other")
        h = await k.syscall(Open(f, os.O_RDWR))
        crash_next.add(f)
        with Errno(errno.EIO):
            await k.syscall(GetAttr(f))
        # Restarted from disk: the same inode answers again, its open handle still works,
        # and other inodes never noticed.
        assert (await k.syscall(GetAttr(f))).size == 6
        assert await k.syscall(Read(h, 0, 100)) == b"before"
        await k.syscall(Write(h, 6, b"+after"))
        await k.syscall(Release(h))
        assert await k_read_file(k, g) == b"other"
        assert await k_read_file(k, f) == b"before+after"
    assert_fsck_clean(image)


async def test_unlinked_inode_kept_for_a_reference_survives_a_vnode_crash(image, monkeypatch):
    """The record of an inode unlinked while the host still refers to it is written
    lazily; a vnode restarted before that learns from the vnode table that the inode is
    unlinked, so the last Forget still frees it."""
    crash_next = _crash_next_getattr(monkeypatch)
    async with boot(image, LOW) as k:
        free_inodes = (await k.syscall(StatFs())).f_ffree
        f = await k_write_file(k, ROOT_INO, b"f", b"data")  # the Create's reference
        await k.syscall(Unlink(ROOT_INO, b"f"))
        crash_next.add(f)
        with Errno(errno.EIO):
            await k.syscall(GetAttr(f))
        assert (await k.syscall(GetAttr(f))).nlink == 0
        await k.syscall(Forget(f, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(f))
        assert (await k.syscall(StatFs())).f_ffree == free_inodes
    assert_fsck_clean(image)


async def test_unlink_while_open_survives_a_vnode_crash(image, monkeypatch):
    """A vnode restarted after a crash recovers its open-handle count from the vnode
    table: the file, unlinked afterwards, stays readable through both handles and is
    freed at the last release, not before."""
    crash_next = _crash_next_getattr(monkeypatch)
    async with boot(image, LOW) as k:
        f = await k_write_file(k, ROOT_INO, b"f", b"kept while open")
        h1 = await k.syscall(Open(f, os.O_RDWR))
        h2 = await k.syscall(Open(f, os.O_RDONLY))
        crash_next.add(f)
        with Errno(errno.EIO):
            await k.syscall(GetAttr(f))
        await k.syscall(Unlink(ROOT_INO, b"f"))
        assert await k.syscall(Read(h1, 0, 100)) == b"kept while open"
        await k.syscall(Write(h1, 15, b"!"))
        await k.syscall(Release(h1))
        # one handle left: still there
        assert await k.syscall(Read(h2, 0, 100)) == b"kept while open!"
        assert (await k.syscall(GetAttr(f))).nlink == 0
        await k.syscall(Release(h2))
        assert (await k.syscall(GetAttr(f))).nlink == 0  # k_write_file's Create reference
        await k.syscall(Forget(f, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(f))
        free_inodes = (await k.syscall(StatFs())).f_ffree
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        # freed at the last release: nothing left on the orphan list for this mount
        assert (await k.syscall(StatFs())).f_ffree == free_inodes
