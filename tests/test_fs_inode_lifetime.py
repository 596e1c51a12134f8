"""Inode lifetime: an unlinked inode lives until its last handle is released AND the host
kernel has forgotten it (lookup count zero), or until unmount.

Until then its number is not reused, late requests for it (a SETATTR flushing cached
times after an unlink) answer as Linux does (nlink 0), and it sits on the on-disk orphan
list, so a crash leaves it for the next mount's orphan cleanup: an open one from its
unlink, one held only for the host kernel's references from its first write-back (sync,
or its vnode's retirement).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from chanos.fs.vnode_table_protocol import IsLive
from chanos.personality import call
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Create,
    Forget,
    GetAttr,
    Lookup,
    MkDir,
    MkNod,
    Open,
    Read,
    Release,
    RmDir,
    SetAttr,
    StatFs,
    Unlink,
    Write,
)
from conftest import Errno, assert_fsck_clean, k_write_file, last_orphan

# Few live vnodes: the held inode's vnode is retired and started again in between.
LOW = MountOptions(max_vnodes=3)


async def _synced_orphan(k, img) -> int:
    await k.sync()
    return last_orphan(img)


async def test_unlinked_inode_kept_while_referenced_then_freed_by_forget(image):
    async with boot(image, LOW) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        old = await k_write_file(k, ROOT_INO, b"old", b"x" * 20_000)  # one lookup (Create)
        await k.syscall(Unlink(ROOT_INO, b"old"))
        with Errno(errno.ENOENT):
            await k.syscall(Lookup(ROOT_INO, b"old"))
        # Kept: on the on-disk orphan list, its number not given to a new file.
        assert await _synced_orphan(k, image) == old
        new = await k_write_file(k, ROOT_INO, b"new", b"n")
        assert new != old
        # Late requests for the old inode answer like Linux: nlink 0, times settable.
        a = await k.syscall(GetAttr(old))
        assert a.nlink == 0 and a.size == 20_000 and stat.S_ISREG(a.mode)
        t = 1_234_567_890_123_456_789
        a = await k.syscall(SetAttr(old, mtime_ns=t, ctime_ns=t))
        assert a.nlink == 0 and a.mtime_ns == t
        assert (await k.syscall(GetAttr(new))).mtime_ns != t  # the new file is untouched
        # Many other inodes meanwhile: the held inode's vnode is retired and restarted.
        for i in range(6):
            await k_write_file(k, ROOT_INO, b"o%d" % i, b"o")
        assert (await k.syscall(GetAttr(old))).mtime_ns == t
        assert (await k.syscall(StatFs())).f_ffree == free0 - 8
        # The last reference forgotten: freed, off the orphan list, its number free again.
        await k.syscall(Forget(old, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(old))
        assert await _synced_orphan(k, image) == 0
        assert (await k.syscall(StatFs())).f_ffree == free0 - 7
        again = (await k.syscall(MkNod(ROOT_INO, b"again", stat.S_IFREG | 0o644, 0))).inode
        assert again == old  # the lowest free number
    assert_fsck_clean(image)


async def test_forget_counts_every_reference(image):
    async with boot(image, LOW) as k:
        ino = (await k.syscall(MkNod(ROOT_INO, b"f", stat.S_IFREG | 0o644, 0))).inode
        await k.syscall(Lookup(ROOT_INO, b"f"))
        await k.syscall(Lookup(ROOT_INO, b"f"))  # three references in all
        await k.syscall(Unlink(ROOT_INO, b"f"))
        await k.syscall(Forget(ino, 2))
        assert (await k.syscall(GetAttr(ino))).nlink == 0  # one left
        await k.syscall(Forget(ino, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(ino))
    assert_fsck_clean(image)


async def test_open_and_referenced_freed_by_whichever_comes_last(image):
    async with boot(image, LOW) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        # Release first, then Forget.
        a = await k_write_file(k, ROOT_INO, b"a", b"A" * 5000)
        ha = await k.syscall(Open(a, os.O_RDWR))
        await k.syscall(Unlink(ROOT_INO, b"a"))
        await k.syscall(Release(ha))
        assert (await k.syscall(GetAttr(a))).nlink == 0
        assert await _synced_orphan(k, image) == a
        await k.syscall(Forget(a, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(a))
        # Forget first, then Release.
        b = await k_write_file(k, ROOT_INO, b"b", b"B" * 5000)
        hb = await k.syscall(Open(b, os.O_RDWR))
        await k.syscall(Unlink(ROOT_INO, b"b"))
        await k.syscall(Forget(b, 1))
        assert await k.syscall(Read(hb, 0, 10)) == b"B" * 10  # the handle keeps it
        await k.syscall(Write(hb, 0, b"still"))
        await k.syscall(Release(hb))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(b))
        assert await _synced_orphan(k, image) == 0
        assert (await k.syscall(StatFs())).f_ffree == free0
    assert_fsck_clean(image)


async def test_removed_directory_kept_while_referenced(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        await k.syscall(RmDir(ROOT_INO, b"d"))
        a = await k.syscall(GetAttr(d))
        assert a.nlink == 0 and stat.S_ISDIR(a.mode)
        with Errno(errno.ENOENT):  # a removed directory takes no new entry
            await k.syscall(MkNod(d, b"x", stat.S_IFREG | 0o644, 0))
        assert (await k.syscall(GetAttr(ROOT_INO))).nlink == 3  # lost+found and root
        other = (await k.syscall(MkDir(ROOT_INO, b"e", 0o755))).inode
        assert other != d
        await k.syscall(Forget(d, 1))
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(d))
    assert_fsck_clean(image)


async def test_never_forgotten_inodes_are_freed_at_unmount(image):
    """In-process users never send Forget: unmount ends the references and frees them."""
    async with boot(image, LOW) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        bfree0 = (await k.syscall(StatFs())).f_bfree
        inos = [await k_write_file(k, ROOT_INO, b"f%d" % i, os.urandom(9000)) for i in range(5)]
        h, e = await k.syscall(Create(ROOT_INO, b"open", 0o600, os.O_RDWR | os.O_CREAT))
        await k.syscall(Write(h, 0, b"o" * 9000))
        for i in range(5):
            await k.syscall(Unlink(ROOT_INO, b"f%d" % i))
        await k.syscall(Unlink(ROOT_INO, b"open"))
        assert [(await k.syscall(GetAttr(i))).nlink for i in inos] == [0] * 5
        assert (await k.syscall(StatFs())).f_ffree == free0 - 6
        assert await _synced_orphan(k, image) in {*inos, e.inode}
        # the handle is left open: unmount releases it
    assert last_orphan(image) == 0
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        st = await k.syscall(StatFs())
        assert (st.f_ffree, st.f_bfree) == (free0, bfree0)


async def test_crash_leaves_referenced_inode_on_orphan_list_for_next_mount(image, tmp_path):
    crashed = tmp_path / "crashed.img"
    async with boot(image, LOW) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        ino = await k_write_file(k, ROOT_INO, b"f", os.urandom(30_000))
        await k.syscall(Unlink(ROOT_INO, b"f"))
        await k.sync()
        # The device as a power cut at this point leaves it: the inode is an orphan.
        shutil.copyfile(image, crashed)
    assert last_orphan(crashed) == ino
    async with boot(crashed, LOW) as k:  # the orphan cleanup at mount frees it
        assert (await k.syscall(StatFs())).f_ffree == free0
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(ino))
    assert last_orphan(crashed) == 0
    assert_fsck_clean(crashed)


async def test_forgotten_unlinked_inode_frees_before_forget_returns_and_its_vnode_retires(image):
    async with boot(image, MountOptions()) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        ino = await k_write_file(k, ROOT_INO, b"f", b"x" * 9000)  # one lookup (Create)
        keep = await k_write_file(k, ROOT_INO, b"keep", b"k")
        await k.syscall(Unlink(ROOT_INO, b"f"))
        assert (await k.syscall(StatFs())).f_ffree == free0 - 2  # held for the reference
        await k.syscall(Forget(ino, 1))
        # Freed by the time Forget returns; its vnode does not linger in the table
        # (a vnode still referenced does).
        assert (await k.syscall(StatFs())).f_ffree == free0 - 1
        assert not await call(k.table, IsLive(ino))
        assert await call(k.table, IsLive(keep))
        assert await _synced_orphan(k, image) == 0
    assert_fsck_clean(image)


async def test_orphans_relinked_under_retirement_pressure_without_a_cycle(image, caplog):
    # Two live vnodes at most: unlinking from the middle of the orphan chain reaches a
    # predecessor that was retired; it is started again for SetOrphanNext and retired
    # once more while that cast is still queued, and must not ask the busy table back.
    async with boot(image, MountOptions(max_vnodes=2)) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        inos = [await k_write_file(k, ROOT_INO, b"f%d" % i, b"x" * 5000) for i in range(6)]
        for i in range(6):
            await k.syscall(Unlink(ROOT_INO, b"f%d" % i))
        for ino in inos:  # the oldest orphan first: each one's predecessor is relinked
            await k.syscall(Forget(ino, 1))
        assert (await k.syscall(StatFs())).f_ffree == free0
        assert await _synced_orphan(k, image) == 0
    bad = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not bad, bad
    assert_fsck_clean(image)


async def test_orphan_list_untouched_by_an_unlink_forgotten_before_any_write_back(image):
    from chanos.personality import trace

    sent: list[str] = []

    def hook(ev) -> None:
        if ev.kind == "send" and ev.msg in ("AddOrphan", "RemoveOrphan", "SetLastOrphan"):
            sent.append(ev.msg)

    async with boot(image, MountOptions()) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        gone = await k_write_file(k, ROOT_INO, b"gone", b"g" * 5000)  # one lookup
        h, e = await k.syscall(Create(ROOT_INO, b"open", 0o644, os.O_RDWR | os.O_CREAT))
        trace.enable(record=False, hooks=[hook])
        try:
            # Held only for the host kernel, forgotten before any write-back: freed
            # without ever joining the list.
            await k.syscall(Unlink(ROOT_INO, b"gone"))
            await k.syscall(Forget(gone, 1))
            assert sent == []
            # Open: on the list at its unlink.
            await k.syscall(Unlink(ROOT_INO, b"open"))
            assert sent == ["AddOrphan", "SetLastOrphan"]
        finally:
            trace.disable()
        assert await _synced_orphan(k, image) == e.inode
        await k.syscall(Release(h))
        await k.syscall(Forget(e.inode, 1))
        assert await _synced_orphan(k, image) == 0
        assert (await k.syscall(StatFs())).f_ffree == free0
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(gone))
    assert_fsck_clean(image)


async def test_files_freed_with_their_inode_leave_what_the_tree_would(image, monkeypatch):
    """A file whose extents all sit in its inode gives its runs back in its inode's
    FreeInode (``root_runs``), a deeper tree is truncated: both leave the same freed
    record, every block free again and e2fsck clean."""
    from chanos.fs import allocator, vnode
    from chanos.fs.format.inode import Inode

    shapes = {
        b"empty": [],
        b"one": [(0, 4096)],
        b"sparse": [(0, 4096), (40960, 4096), (409600, 8192)],
        b"deep": [(i * 81920, 1024) for i in range(12)],  # > 4 extents: a tree block
    }
    sent: list[tuple] = []  # the runs each FreeInode carried
    free_inode = allocator.Allocator.free_inode

    async def spy(self, ino, is_dir, raw=b"", blocks=()):
        sent.append(tuple(blocks))
        return await free_inode(self, ino, is_dir, raw, blocks)

    monkeypatch.setattr(allocator.Allocator, "free_inode", spy)

    async def free_each(k, tag: bytes) -> dict[bytes, tuple[tuple, Inode]]:
        bfree = (await k.syscall(StatFs())).f_bfree
        freed = {}
        for name, pieces in shapes.items():
            h, e = await k.syscall(Create(ROOT_INO, tag + name, 0o644, os.O_WRONLY | os.O_CREAT))
            for off, n in pieces:
                await k.syscall(Write(h, off, b"d" * n))
            await k.syscall(Release(h))
            await k.syscall(Unlink(ROOT_INO, tag + name))
            await k.syscall(Forget(e.inode, 1))
            freed[name] = (sent[-1], Inode.parse(await k.volume.read_inode(e.inode)))
        assert (await k.syscall(StatFs())).f_bfree == bfree
        return freed

    async with boot(image) as k:
        with_inode = await free_each(k, b"a-")
        monkeypatch.setattr(vnode, "root_runs", lambda i_block, count: None)
        by_tree = await free_each(k, b"b-")
    for name in shapes:
        (runs, a), (none, b) = with_inode[name], by_tree[name]
        assert (a.links_count, a.size, a.blocks_lo, a.i_block, a.flags, a.mode) == (
            b.links_count,
            b.size,
            b.blocks_lo,
            b.i_block,
            b.flags,
            b.mode,
        ), name
        assert a.links_count == 0 and a.dtime and a.blocks_lo == 0
        assert none == ()
        # Only the shallow files' runs went with the inode, one per extent.
        assert len(runs) == (len(shapes[name]) if name != b"deep" else 0), name
    assert_fsck_clean(image)
