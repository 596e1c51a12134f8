"""Vnodes over on-disk states other tools made: old block-mapped files, shared xattr
blocks, orphans left by a crash; POSIX ACL values; the vnode's own same-directory rename.

Images are prepared with e2fsprogs (mkfs, debugfs, tune2fs) and, where no tool makes the
state, by patching one documented field; every test ends with ``e2fsck -fn`` clean.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess

from chanos.fs.vnode_table import call_vnode
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
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
    Rename,
    SetXattr,
    StatFs,
    Unlink,
    Write,
)
from conftest import MKFS, assert_fsck_clean, debugfs, errno_of, fsck, last_orphan

LOW = MountOptions(max_vnodes=3)


def _stat(img, path) -> str:
    return debugfs(img, f"stat {path}").decode()


def _field(img, path, name) -> int:
    return int(re.search(name + r":\s*(\d+)", _stat(img, path)).group(1))


async def test_block_mapped_file_is_read_and_converted_on_write(tmp_path):
    img = tmp_path / "old.img"
    host = tmp_path / "host.bin"
    payload = os.urandom(100_000)  # 25 blocks: direct blocks and one indirect block
    host.write_bytes(payload)
    subprocess.run(
        [MKFS, "-q", "-F", "-b", "4096", "-O", "^metadata_csum,^extent,^64bit", img, "16M"],
        check=True,
    )
    debugfs(img, f"write {host} f", write=True)
    subprocess.run(["tune2fs", "-O", "extent", str(img)], check=True, capture_output=True)
    assert "(IND)" in _stat(img, "/f")
    async with boot(img, LOW) as k:
        ino = (await k.syscall(Lookup(ROOT_INO, b"f"))).inode
        h = await k.syscall(Open(ino, os.O_RDWR))
        assert await k.syscall(Read(h, 0, 1 << 20)) == payload
        await k.syscall(Write(h, 99_990, b"0123456789ABCDEF"))
        await k.syscall(Release(h))
    out = _stat(img, "/f")
    assert "EXTENTS" in out and "(IND)" not in out
    assert int(re.search(r"Flags: (0x[0-9a-f]+)", out).group(1), 16) & 0x80000
    assert debugfs(img, "cat /f") == payload[:99_990] + b"0123456789ABCDEF"
    assert_fsck_clean(img)


async def test_shared_xattr_block_is_copied_not_edited(ext4_image):
    img = ext4_image("16M", 4096)
    debugfs(img, "write /dev/null f1", "write /dev/null f2", write=True)
    debugfs(img, "ea_set /f1 user.shared " + "s" * 600, write=True)
    blk = _field(img, "/f1", "File ACL")
    assert blk
    # Make f2 share f1's block as the Linux driver would: i_file_acl, i_blocks, refcount 2.
    debugfs(img, f"sif f2 file_acl {blk}", "sif f2 blocks 8", write=True)
    with open(img, "r+b") as f:
        f.seek(blk * 4096 + 4)
        f.write(struct.pack("<I", 2))
    assert fsck(img)[0] == 0, fsck(img)[1]
    async with boot(img, LOW) as k:
        f1 = (await k.syscall(Lookup(ROOT_INO, b"f1"))).inode
        f2 = (await k.syscall(Lookup(ROOT_INO, b"f2"))).inode
        assert await k.syscall(GetXattr(f2, b"user.shared")) == b"s" * 600
        await k.syscall(SetXattr(f2, b"user.mine", b"m" * 300))
        assert sorted(await k.syscall(ListXattr(f2))) == [b"user.mine", b"user.shared"]
        assert await k.syscall(ListXattr(f1)) == [b"user.shared"]
        free = (await k.syscall(StatFs())).f_bfree
        await k.syscall(RemoveXattr(f1, b"user.shared"))  # f1's reference: block freed
        assert (await k.syscall(StatFs())).f_bfree == free + 1
        assert (await k.syscall(GetAttr(f1))).blocks == 0
    assert _field(img, "/f1", "File ACL") == 0
    new = _field(img, "/f2", "File ACL")
    assert new and new != blk
    assert b"m" * 64 in debugfs(img, "ea_get /f2 user.mine")
    assert_fsck_clean(img)


async def test_orphan_left_by_a_crash_is_freed_at_mount(ext4_image, tmp_path):
    img = ext4_image("16M", 1024)
    host = tmp_path / "h.bin"
    host.write_bytes(os.urandom(40_000))
    fresh_free = None
    async with boot(img, LOW) as k:
        fresh_free = (await k.syscall(StatFs())).f_bfree
    debugfs(img, f"write {host} gone", write=True)
    ino = int(re.search(r"Inode: (\d+)", _stat(img, "/gone")).group(1))
    # What a crash with the file open and unlinked leaves: no name, 0 links, on the list.
    debugfs(img, "unlink gone", f"sif <{ino}> links_count 0", f"ssv last_orphan {ino}", write=True)
    assert last_orphan(img) == ino
    async with boot(img, LOW) as k:
        assert await errno_of(k.syscall(GetAttr(ino))) == errno.ENOENT
        assert (await k.syscall(StatFs())).f_bfree == fresh_free
    assert last_orphan(img) == 0
    assert_fsck_clean(img)


async def test_posix_acl_round_trip(ext4_image):
    img = ext4_image("16M", 4096)
    und = 0xFFFFFFFF
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident)
        for tag, perm, ident in (
            (0x01, 6, und),  # user::rw-
            (0x02, 4, 1000),  # user:1000:r--
            (0x04, 4, und),  # group::r--
            (0x10, 4, und),  # mask::r--
            (0x20, 0, und),  # other::---
        )
    )
    async with boot(img, LOW) as k:
        f = (await k.syscall(MkNod(ROOT_INO, b"f", 0o100640))).inode
        await k.syscall(SetXattr(f, b"system.posix_acl_access", acl))
        assert await k.syscall(GetXattr(f, b"system.posix_acl_access")) == acl
        bad = struct.pack("<I", 2) + b"\x01\x00"
        assert await errno_of(k.syscall(SetXattr(f, b"system.posix_acl_access", bad))) == (
            errno.EINVAL
        )
    # On disk it is ext4's compact form: version 1, short entries without ids.
    raw = debugfs(img, "ea_get -x /f system.posix_acl_access")
    assert raw  # debugfs decodes it; e2fsck checks the structure
    assert_fsck_clean(img)


async def test_vnode_serves_same_directory_rename(ext4_image):
    img = ext4_image("16M", 4096)
    async with boot(img, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        a = (await k.syscall(MkNod(d, b"a", 0o100644))).inode
        b = (await k.syscall(MkNod(d, b"b", 0o100644))).inode
        s = (await k.syscall(MkDir(d, b"s", 0o755))).inode
        t = (await k.syscall(MkDir(d, b"t", 0o755))).inode

        async def ren(old, new, flags=0):
            return await call_vnode(k.table, d, Rename(d, old, d, new, flags))

        async def at(name):
            return (await k.syscall(Lookup(d, name))).inode

        await ren(b"a", b"a1")
        assert await at(b"a1") == a
        assert await errno_of(ren(b"a", b"x")) == errno.ENOENT
        assert await errno_of(ren(b"a1", b"b", RENAME_NOREPLACE)) == errno.EEXIST
        await ren(b"a1", b"b", RENAME_EXCHANGE)
        assert (await at(b"a1"), await at(b"b")) == (b, a)
        assert await errno_of(ren(b"s", b"b")) == errno.ENOTDIR
        assert await errno_of(ren(b"b", b"s")) == errno.EISDIR
        await k.syscall(MkNod(t, b"in", 0o100644))
        assert await errno_of(ren(b"s", b"t")) == errno.ENOTEMPTY
        await ren(b"a1", b"b")  # replaces: inode a unlinked, kept for its 3 lookups
        assert (await k.syscall(GetAttr(a))).nlink == 0
        await k.syscall(Forget(a, 3))  # MkNod, at(b"a1"), at(b"b"): now freed
        assert await errno_of(k.syscall(GetAttr(a))) == errno.ENOENT
        links = (await k.syscall(GetAttr(d))).nlink
        await ren(b"t", b"s")  # a directory over an empty one
        assert (await k.syscall(GetAttr(d))).nlink == links - 1
        assert await at(b"s") == t and (await k.syscall(GetAttr(s))).nlink == 0
        await k.syscall(Forget(s, 1))
        assert await errno_of(k.syscall(GetAttr(s))) == errno.ENOENT
        assert (
            await errno_of(call_vnode(k.table, d, Rename(d, b"b", ROOT_INO, b"b"))) == errno.EINVAL
        )  # cross-directory renames belong to the coordinator
    assert_fsck_clean(img)


async def test_stale_vnode_of_a_reused_inode_number_never_writes_back(ext4_image):
    """A vnode that read a freed record (a late request for an unlinked file) must not
    write it back over the inode that later gets the same number."""
    img = ext4_image("16M", 4096)
    async with boot(img, MountOptions(max_vnodes=1000)) as k:
        old = (await k.syscall(MkNod(ROOT_INO, b"old", 0o100644))).inode
        await k.syscall(Unlink(ROOT_INO, b"old"))
        await k.syscall(Forget(old, 1))  # the host kernel's last reference: freed
        assert await errno_of(k.syscall(GetAttr(old))) == errno.ENOENT  # stale request
        new = await k.syscall(MkNod(ROOT_INO, b"new", 0o100600))
        assert new.inode == old  # the lowest free number comes back
        await k.sync()  # every live vnode writes back, the stale one included
        assert (await k.syscall(GetAttr(old))).nlink == 1
        h = await k.syscall(Open(old, os.O_RDWR))
        await k.syscall(Write(h, 0, b"still here"))
        await k.syscall(Release(h))
    assert debugfs(img, "cat /new") == b"still here"
    assert_fsck_clean(img)


async def test_file_past_4gib_and_debugfs_slow_symlink(ext4_image):
    img = ext4_image("16M", 4096)
    target = "/very/long/" + "t" * 150
    debugfs(img, f"symlink slowln {target}", write=True)
    async with boot(img, LOW) as k:
        ln = (await k.syscall(Lookup(ROOT_INO, b"slowln"))).inode
        assert await k.syscall(ReadLink(ln)) == target.encode()
        f = (await k.syscall(MkNod(ROOT_INO, b"huge", 0o100644))).inode
        h = await k.syscall(Open(f, os.O_RDWR))
        off = 5 << 30  # 5 GiB: i_size_high in use, one data block
        await k.syscall(Write(h, off, b"far away"))
        assert await k.syscall(Read(h, off - 4, 12)) == bytes(4) + b"far away"
        await k.syscall(Release(h))
        a = await k.syscall(GetAttr(f))
        assert a.size == off + 8 and a.blocks == 8
    assert re.search(rf"Size: {(5 << 30) + 8}\b", _stat(img, "/huge"))
    assert_fsck_clean(img)


async def test_emlink_for_subdirectories_without_dir_nlink(ext4_image):
    img = ext4_image("16M", 4096, features=("^metadata_csum", "^dir_nlink"))
    debugfs(img, "mkdir d", "sif d links_count 65000", write=True)
    async with boot(img, LOW) as k:
        d = (await k.syscall(Lookup(ROOT_INO, b"d"))).inode
        assert await errno_of(k.syscall(MkDir(d, b"s", 0o755))) == errno.EMLINK
        await k.syscall(MkNod(d, b"file-is-fine", 0o100644))
        assert (await k.syscall(GetAttr(d))).nlink == 65000
    debugfs(img, "sif d links_count 2", write=True)
    assert_fsck_clean(img)


async def test_image_without_filetype_feature(ext4_image):
    img = ext4_image("16M", 1024, features=("^metadata_csum", "^filetype"))
    async with boot(img, LOW) as k:
        a = (await k.syscall(MkDir(ROOT_INO, b"a", 0o755))).inode
        b = (await k.syscall(MkDir(ROOT_INO, b"b", 0o755))).inode
        sub = (await k.syscall(MkDir(a, b"sub", 0o755))).inode
        await k.syscall(MkNod(a, b"f", 0o100644))
        await k.syscall(Rename(a, b"sub", b, b"moved"))  # a directory: `..` and counts move
        assert (await k.syscall(Lookup(sub, b".."))).inode == b
        assert (await k.syscall(GetAttr(a))).nlink == 2
        assert (await k.syscall(GetAttr(b))).nlink == 3
        assert await errno_of(k.syscall(Unlink(b, b"moved"))) == errno.EISDIR
    assert "filetype" not in debugfs(img, "features").decode()
    assert_fsck_clean(img)


async def test_vnode_block_store_passes_driver_views_through():
    """The vnode's BlockStore hands the driver's reply (a read-only memoryview) to the
    extent tree, file data and xattrs as it is: no copy on the read path."""
    from chanos.fs.vnode import _Store

    view = memoryview(bytes(range(256)) * 16).toreadonly()
    asked = []

    class Device:
        async def read(self, offset: int, length: int) -> memoryview:
            asked.append((offset, length))
            return view

    assert await _Store(Device(), 1024).read_blocks(3, 4) is view
    assert asked == [(3 * 1024, 4 * 1024)]
