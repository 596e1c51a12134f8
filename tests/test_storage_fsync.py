"""Durability of inode records with the written-back inode-table cache.

Block groups keep changed inode-table blocks in memory until a Sync. These tests read the
image with debugfs while the kernel still has it mounted, so only what fsync / sync wrote
to the device is visible.
"""

from __future__ import annotations

import os
import re

import pytest
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import ROOT_INO, Create, FSync, Release, Write
from conftest import assert_fsck_clean, debugfs


def _size(image, path: str) -> int | None:
    out = debugfs(image, f"stat {path}").decode()
    m = re.search(r"Size: (\d+)", out)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("block_size", [4096, 1024])
async def test_fsync_makes_the_inode_durable(ext4_image, block_size: int) -> None:
    img = ext4_image("64M", block_size)
    data = os.urandom(3 * block_size + 123)
    async with boot(str(img), MountOptions()) as k:
        h, _ = await k.syscall(Create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT))
        assert await k.syscall(Write(h, 0, data)) == len(data)
        await k.syscall(FSync(h, False))
        # Still mounted and the file still open: the new size is on the device.
        assert _size(img, "/f") == len(data)
        assert debugfs(img, "cat /f") == data
        # A later change is durable after the next fsync too (the block is dirty again).
        more = os.urandom(block_size)
        await k.syscall(Write(h, len(data), more))
        await k.syscall(FSync(h, True))
        assert _size(img, "/f") == len(data) + len(more)
        await k.syscall(Release(h))
        # sync(2) reaches every group as well.
        h2, _ = await k.syscall(Create(ROOT_INO, b"g", 0o644, os.O_RDWR | os.O_CREAT))
        await k.syscall(Write(h2, 0, b"x" * 77))
        await k.syscall(Release(h2))
        await k.sync()
        assert _size(img, "/g") == 77
    assert_fsck_clean(img)
