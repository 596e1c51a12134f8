"""Cross-checks with e2fsprogs, which nobody here wrote.

* What ``debugfs -w`` writes (files, directories, symlinks, hard links) reads correctly
  through chanos.
* What chanos writes reads back byte-for-byte with ``debugfs -R 'cat PATH'`` and ``dump``,
  and debugfs sees the same tree, modes, sizes and link targets.
* Refusals: unknown incompat features refuse the mount naming the feature; a journal that
  needs recovery refuses the mount; an unknown ro_compat feature (metadata_csum) mounts
  read-only.
* EMLINK at ext4's link limit (the count set up with debugfs, as making 65,000 links
  through the kernel would only test patience).
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    GetAttr,
    Link,
    MkDir,
    ReadLink,
    StatFs,
    Symlink,
)
from conftest import (
    Errno,
    assert_fsck_clean,
    debugfs,
    k_listdir,
    k_read_file,
    k_resolve,
    k_write_file,
)

LOW = MountOptions(max_vnodes=4)


async def test_debugfs_written_tree_reads_through_chanos(image, tmp_path):
    small = os.urandom(5000)
    big = os.urandom(3 * 1024 * 1024 + 77)  # many extents' worth on 1 KiB blocks
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "empty").write_bytes(b"")
    debugfs(
        image,
        "mkdir top",
        "mkdir top/nested",
        f"write {tmp_path / 'small'} top/small",
        f"write {tmp_path / 'big'} top/nested/big",
        f"write {tmp_path / 'empty'} empty",
        "symlink top/fastlink nested/big",
        "symlink slowlink /" + "s" * 120,
        "ln top/small top/hardlink",
        "sif top/small links_count 2",
        write=True,
    )
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        assert await k_read_file(k, await k_resolve(k, "/top/small")) == small
        assert await k_read_file(k, await k_resolve(k, "/top/nested/big")) == big
        assert await k_read_file(k, await k_resolve(k, "/empty")) == b""
        fast = await k_resolve(k, "/top/fastlink")
        assert await k.syscall(ReadLink(fast)) == b"nested/big"
        slow = await k_resolve(k, "/slowlink")
        assert await k.syscall(ReadLink(slow)) == b"/" + b"s" * 120
        small_ino = await k_resolve(k, "/top/small")
        assert await k_resolve(k, "/top/hardlink") == small_ino
        assert (await k.syscall(GetAttr(small_ino))).nlink == 2
        top = await k_resolve(k, "/top")
        assert set(await k_listdir(k, top)) == {b"nested", b"small", b"fastlink", b"hardlink"}
        assert (await k.syscall(GetAttr(top))).nlink == 3
        # and change what debugfs made
        await k_write_file(k, top, b"small", b"rewritten")
        await k.syscall(MkDir(await k_resolve(k, "/top/nested"), b"more", 0o700))
    assert_fsck_clean(image)
    assert debugfs(image, "cat top/hardlink") == b"rewritten"


async def test_chanos_written_tree_reads_back_with_debugfs(image, tmp_path):
    files = {
        "a.bin": os.urandom(1),
        "b.bin": os.urandom(4096),
        "c.bin": os.urandom(4097),
        "d/e.bin": os.urandom(1 << 20),
        "d/f/g.bin": os.urandom(2 * (1 << 20) + 333),
    }
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o750))).inode
        f = (await k.syscall(MkDir(d, b"f", 0o755))).inode
        where = {"": ROOT_INO, "d": d, "d/f": f}
        for path, data in files.items():
            parent, _, name = path.rpartition("/")
            await k_write_file(k, where[parent], name.encode(), data, chunk=100_000)
        await k.syscall(Symlink(d, b"link", b"f/g.bin"))
        await k.syscall(Symlink(ROOT_INO, b"longlink", b"/" + b"L" * 300))
        await k.syscall(Link(await k_resolve(k, "/b.bin"), f, b"b-again"))
    assert_fsck_clean(image)
    for path, data in files.items():
        assert debugfs(image, f"cat {path}") == data, path
    out = tmp_path / "dumped"
    debugfs(image, f"dump d/f/g.bin {out}")
    assert out.read_bytes() == files["d/f/g.bin"]
    assert debugfs(image, "cat d/f/b-again") == files["b.bin"]
    st = debugfs(image, "stat d/link").decode()
    assert 'Fast link dest: "f/g.bin"' in st
    assert debugfs(image, "cat longlink") == b"/" + b"L" * 300
    st = debugfs(image, "stat d").decode()
    assert "Type: directory" in st and "Mode:  0750" in st and "Links: 3" in st
    st = debugfs(image, "stat b.bin").decode()
    assert "Links: 2" in st and "Size: 4096" in st
    ls = debugfs(image, "ls -l d/f").decode()
    assert "g.bin" in ls and "b-again" in ls


async def test_unknown_incompat_feature_refuses_mount_naming_it(ext4_image):
    img = ext4_image("32M", 4096)
    debugfs(img, "feature +encrypt", write=True)
    with pytest.raises(OSError) as ei:
        async with boot(img):
            pass
    assert "encrypt" in str(ei.value)
    # An incompat bit no one knows: refused, named by its bit.
    img2 = ext4_image("32M", 4096)
    out = debugfs(img2, "stats").decode()
    assert "Filesystem features:" in out
    debugfs(img2, "ssv feature_incompat 0x200002c2", write=True)  # + bit 29
    with pytest.raises(OSError) as ei:
        async with boot(img2):
            pass
    assert "incompat" in str(ei.value)


async def test_journal_needing_recovery_refuses_mount(ext4_image):
    img = ext4_image("32M", 4096)
    debugfs(img, "feature +needs_recovery", write=True)
    with pytest.raises(OSError) as ei:
        async with boot(img):
            pass
    assert "recovery" in str(ei.value)


async def test_metadata_csum_image_mounts_read_only(ext4_image):
    img = ext4_image("32M", 4096, features=())  # mke2fs's default: with metadata_csum
    debugfs(img, "mkdir existing", write=True)
    async with boot(img) as k:
        assert await k_listdir(k, ROOT_INO) == {
            b"lost+found": 11,
            b"existing": await k_resolve(k, "/existing"),
        }
        with Errno(errno.EROFS):
            await k.syscall(MkDir(ROOT_INO, b"new", 0o755))
        await k.syscall(StatFs())
    assert_fsck_clean(img)


async def test_emlink_at_the_link_limit(ext4_image):
    img = ext4_image("32M", 4096)
    async with boot(img) as k:
        await k_write_file(k, ROOT_INO, b"f", b"x")
    debugfs(img, "sif f links_count 65000", write=True)
    async with boot(img) as k:
        f = await k_resolve(k, "/f")
        assert (await k.syscall(GetAttr(f))).nlink == 65000
        with Errno(errno.EMLINK):
            await k.syscall(Link(f, ROOT_INO, b"one-too-many"))
        assert b"one-too-many" not in await k_listdir(k, ROOT_INO)
        assert stat.S_ISREG((await k.syscall(GetAttr(f))).mode)
    debugfs(img, "sif f links_count 1", write=True)
    assert_fsck_clean(img)
