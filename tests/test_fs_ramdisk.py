"""The kernel on a RAM disk: booted on a driver actor started by the caller.

The driver outlives the mount, so the test unmounts, copies the device to a file for
e2fsck and debugfs, and mounts the same running driver again.
"""

from __future__ import annotations

import os
import stat

import pytest
from chanos.drivers import BlockDevice, RamDiskDriver
from chanos.personality import ChildSpec, open_supervisor
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Create,
    Forget,
    GetAttr,
    MkDir,
    Read,
    Release,
    Rename,
    StatFs,
    Symlink,
    Unlink,
    Write,
)
from conftest import assert_fsck_clean, debugfs, k_listdir, k_read_file, k_resolve, k_write_file


async def dump(driver, path) -> None:
    dev = BlockDevice(driver)
    size = (await dev.info()).size
    with open(path, "wb") as f:
        for off in range(0, size, 1 << 22):
            f.write(bytes(await dev.read(off, min(1 << 22, size - off))))


async def test_ramdisk_mount_unmount_remount(ext4_image, tmp_path):
    img = ext4_image("32M", 4096)
    data = {f"f{i}".encode(): os.urandom(i * 1000 + 1) for i in range(20)}
    async with open_supervisor(name="test") as sup:
        ram = await sup.start(
            ChildSpec(name="ram", factory=lambda: RamDiskDriver(img.read_bytes()))
        )
        async with boot(ram, MountOptions(max_vnodes=3)) as k:
            before = await k.syscall(StatFs())
            d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
            for name, content in data.items():
                await k_write_file(k, d, name, content)
            await k.syscall(Symlink(d, b"link", b"f3"))
            await k.syscall(Rename(d, b"f0", ROOT_INO, b"moved"))
            h, e = await k.syscall(Create(d, b"open", 0o600, os.O_RDWR | os.O_CREAT))
            await k.syscall(Write(h, 0, b"still here"))
            await k.syscall(Unlink(d, b"open"))
            assert await k.syscall(Read(h, 0, 100)) == b"still here"
            await k.syscall(Release(h))
            assert (await k.syscall(GetAttr(e.inode))).nlink == 0  # kept: Create's reference
            await k.syscall(Forget(e.inode, 1))
            with pytest.raises(FileNotFoundError):  # freed, ordered after the free
                await k.syscall(GetAttr(e.inode))
            after = await k.syscall(StatFs())
            assert after.f_ffree == before.f_ffree - 22  # d, 19 files + moved, link
        out = tmp_path / "ram.img"
        await dump(ram, out)
        assert_fsck_clean(out)
        assert debugfs(out, "cat moved") == data[b"f0"]
        assert debugfs(out, "cat d/f19") == data[b"f19"]
        async with boot(ram, MountOptions(max_vnodes=3)) as k:
            d = await k_resolve(k, "/d")
            names = set(await k_listdir(k, d))
            assert names == (set(data) - {b"f0"}) | {b"link"}
            for name in names - {b"link"}:
                assert await k_read_file(k, await k_resolve(k, b"/d/" + name)) == data[name]
            a = await k.syscall(GetAttr(await k_resolve(k, "/d/link")))
            assert stat.S_ISLNK(a.mode)
        await dump(ram, out)
        assert_fsck_clean(out)
