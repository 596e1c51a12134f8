"""Mount validation, superblock state and whole-volume write-back, checked with e2fsprogs.

These tests drive the plain state classes (``examine``, ``SuperblockState``, ``BlockGroup``)
over an image file; the actor-level tests are in test_storage_actors.py.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
import trio
from chanos.fs.block_group import BlockGroup
from chanos.fs.format.superblock import SUPERBLOCK_OFFSET, Superblock
from chanos.fs.superblock import load_state
from chanos.fs.volume import MountError, examine
from conftest import assert_fsck_clean, fsck


class DevInfo:
    def __init__(self, size: int, read_only: bool = False) -> None:
        self.size, self.block_size, self.read_only = size, 512, read_only


class FileDev:
    """The BlockDevice client surface over an image file (read, write, flush, info)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.read_only = read_only

    async def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    async def write(self, offset: int, data: bytes) -> None:
        assert not self.read_only
        os.pwrite(self.fd, data, offset)

    async def flush(self) -> None:
        os.fsync(self.fd)

    async def info(self) -> DevInfo:
        return DevInfo(os.fstat(self.fd).st_size, self.read_only)

    def close(self) -> None:
        os.close(self.fd)


class MemDev(FileDev):
    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data if isinstance(data, bytearray) else bytearray(data)
        self.read_only = False

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    async def flush(self) -> None:
        pass

    async def info(self) -> DevInfo:
        return DevInfo(len(self.data))


def dumpe2fs_header(image: Path) -> dict[str, str]:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    hdr = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            hdr[k.strip()] = v.strip()
    return hdr


def patch_sb(image: Path, **fields: int) -> None:
    with open(image, "r+b") as f:
        f.seek(SUPERBLOCK_OFFSET)
        sb = Superblock.parse(f.read(1024))
        for k, v in fields.items():
            setattr(sb, k, v)
        f.seek(SUPERBLOCK_OFFSET)
        f.write(sb.build())


def read_sb(image: Path) -> Superblock:
    with open(image, "rb") as f:
        f.seek(SUPERBLOCK_OFFSET)
        return Superblock.parse(f.read(1024))


# -- examine: geometry and refusals ------------------------------------------------------------


@pytest.mark.parametrize("bs", [4096, 1024])
async def test_examine_geometry(ext4_image, bs: int) -> None:
    img = ext4_image("64M", bs)
    hdr = dumpe2fs_header(img)
    dev = FileDev(img)
    c = await examine(dev)
    geo = c.geometry
    assert geo.block_size == bs
    assert geo.blocks_count == int(hdr["Block count"])
    assert geo.inodes_count == int(hdr["Inode count"])
    assert geo.inodes_per_group == int(hdr["Inodes per group"])
    assert geo.inode_size == 256
    assert geo.first_data_block == int(hdr["First block"])
    assert geo.group_count == (1 if bs == 4096 else 8)
    assert c.read_only_reason is None
    # Every group's own bitmaps and inode table are protected in the group they lie in.
    for lay in c.layouts:
        owner = c.layouts[(lay.inode_table - geo.first_data_block) // geo.blocks_per_group]
        assert any(s <= lay.inode_table < s + n for s, n in owner.protected)
    if bs == 1024:
        assert c.layouts[7].nblocks == 8191  # the short last group
        assert (c.layouts[1].first_block, c.layouts[1].protected[0]) == (8193, (8193, 258))
    dev.close()


async def expect_refusal(img: Path, code: int, *words: str) -> str:
    dev = FileDev(img)
    with pytest.raises(MountError) as ei:
        await examine(dev)
    dev.close()
    assert ei.value.errno == code, ei.value
    for w in words:
        assert w in ei.value.strerror, ei.value.strerror
    return ei.value.strerror


async def test_refuses_bad_magic(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    patch_sb(img, magic=0x1234)
    await expect_refusal(img, errno.EINVAL, "magic", "0x1234")


async def test_refuses_unknown_incompat_naming_it(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    sb = read_sb(img)
    patch_sb(img, feature_incompat=sb.feature_incompat | (1 << 20) | 0x8000)
    await expect_refusal(img, errno.EOPNOTSUPP, "FEATURE_I20", "inline_data")


async def test_refuses_journal_needing_recovery(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    sb = read_sb(img)
    patch_sb(img, feature_incompat=sb.feature_incompat | 0x4)
    await expect_refusal(img, errno.EUCLEAN, "journal needs recovery", "e2fsck")


async def test_unknown_ro_compat_is_read_only(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    sb = read_sb(img)
    patch_sb(img, feature_ro_compat=sb.feature_ro_compat | 0x400)
    dev = FileDev(img)
    c = await examine(dev)
    assert c.read_only_reason is not None and "metadata_csum" in c.read_only_reason
    dev.close()


async def test_refuses_impossible_geometry(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    sb = read_sb(img)
    await expect_refusal_after(img, {"blocks_count_lo": 30000}, "device holds only")
    await expect_refusal_after(img, {"blocks_per_group": 0}, "corrupt superblock")
    await expect_refusal_after(
        img,
        {"blocks_per_group": 8, "inodes_count": 512 * sb.inodes_per_group},
        "8 blocks per group",
    )
    await expect_refusal_after(img, {"log_block_size": 30}, "block size")
    await expect_refusal_after(img, {"inodes_per_group": sb.inodes_per_group + 8}, "inode count")
    await expect_refusal_after(img, {"first_data_block": 1}, "first data block")


async def expect_refusal_after(img: Path, fields: dict[str, int], words: str) -> None:
    with open(img, "rb") as f:
        f.seek(SUPERBLOCK_OFFSET)
        orig = f.read(1024)
    patch_sb(img, **fields)
    try:
        await expect_refusal(img, errno.EINVAL, words)
    finally:
        with open(img, "r+b") as f:
            f.seek(SUPERBLOCK_OFFSET)
            f.write(orig)


async def test_refuses_hostile_descriptors(ext4_image) -> None:
    img = ext4_image("64M", 1024)
    c = await examine(FileDev(img))
    gdt_off = 2 * 1024
    dsz = c.geometry.desc_size

    def put(group: int, field_off: int, value: int) -> None:
        with open(img, "r+b") as f:
            f.seek(gdt_off + group * dsz + field_off)
            f.write(value.to_bytes(4, "little"))

    put(3, 8, 70000)  # inode table past the end
    await expect_refusal(img, errno.EINVAL, "group 3 inode table", "outside the volume")
    put(3, 8, c.layouts[3].inode_table)
    put(5, 0, c.layouts[4].inode_table + 3)  # block bitmap inside group 4's inode table
    await expect_refusal(img, errno.EINVAL, "overlaps", "group 4 inode table")
    put(5, 0, c.layouts[5].block_bitmap)
    put(2, 4, 8194)  # inode bitmap on group 1's descriptor backup
    await expect_refusal(img, errno.EINVAL, "overlaps", "superblock/descriptors")


async def test_truncated_image_is_refused(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    os.truncate(img, 8 * 1024 * 1024)
    await expect_refusal(img, errno.EINVAL, "device holds only")
    os.truncate(img, 1500)
    await expect_refusal(img, errno.EINVAL, "too small")


async def test_random_corruption_never_crashes(ext4_image) -> None:
    """Random bytes in the superblock and descriptors: a clean MountError or a mount,
    never another exception and never a hang."""
    img = ext4_image("8M", 1024)
    data = bytearray(img.read_bytes())
    dev = MemDev(data)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        saved = []
        for _ in range(rng.randint(1, 6)):
            pos = rng.choice([rng.randrange(1024, 1024 + 0x200), rng.randrange(2048, 2048 + 64)])
            saved.append((pos, data[pos]))
            data[pos] = rng.randrange(256)
        with trio.fail_after(5):
            try:
                await examine(dev)
                outcomes["ok"] += 1
            except MountError:
                outcomes["refused"] += 1
        for pos, byte in reversed(saved):
            data[pos] = byte
    assert outcomes["ok"] and outcomes["refused"]


# -- superblock state and whole-volume write-back ------------------------------------------------


async def open_all(img: Path) -> tuple[FileDev, object, list[BlockGroup]]:
    dev = FileDev(img)
    c = await examine(dev)
    st = await load_state(dev, read_only=False)
    groups = []
    for lay, d in zip(c.layouts, c.descs, strict=True):
        g = BlockGroup(
            lay,
            dev,
            used_dirs=d.used_dirs_count,
            on_counts=st.set_group_counts,
        )
        await g.load()
        groups.append(g)
    return dev, st, groups


async def test_statfs_matches_dumpe2fs(ext4_image) -> None:
    for bs in (4096, 1024):
        img = ext4_image("64M", bs)
        hdr = dumpe2fs_header(img)
        dev, st, _ = await open_all(img)
        s = st.statfs()
        overhead = int(hdr["Overhead clusters"])
        assert s.f_bsize == s.f_frsize == bs
        assert s.f_blocks == int(hdr["Block count"]) - overhead
        assert s.f_bfree == int(hdr["Free blocks"])
        assert s.f_bavail == int(hdr["Free blocks"]) - int(hdr["Reserved block count"])
        assert s.f_files == int(hdr["Inode count"])
        assert s.f_ffree == s.f_favail == int(hdr["Free inodes"])
        assert s.f_namemax == 255
        # Computed overhead (when mke2fs recorded none) agrees with mke2fs's figure.
        st.sb.overhead_clusters = 0
        from chanos.fs.superblock import overhead_blocks

        assert overhead_blocks(st.sb, st.descs) == overhead
        dev.close()


@pytest.mark.parametrize("bs", [4096, 1024])
async def test_allocate_free_sync_is_fsck_clean(ext4_image, bs: int) -> None:
    img = ext4_image("64M", bs)
    before = dumpe2fs_header(img)
    dev, st, groups = await open_all(img)
    await st.mark_mounted()
    hdr = dumpe2fs_header(img)
    assert hdr["Filesystem state"] == "not clean"
    assert hdr["Mount count"] == "1"

    # Allocate inodes (marked used, records left as mkfs wrote them: free-looking inodes
    # that are in use would upset e2fsck, so give each a minimal valid record) and blocks.
    inos = []
    for g in groups:
        ino = await g.alloc_inode(is_dir=False)
        inos.append(ino)
    runs = []
    for g in groups:
        runs.append(await g.alloc_blocks(g.layout.first_block + 100, 50))
    # Free everything again except one inode + block run, owned by a real file record.
    for ino, g in zip(inos[1:], groups[1:], strict=True):
        await g.free_inode(ino, is_dir=False)
    for (start, n), g in zip(runs[1:], groups[1:], strict=True):
        await g.free_blocks_run(start, n)
    start, n = runs[0]
    await groups[0].write_inode(inos[0], regular_file_record(start, n, bs))
    for g in groups:
        await g.sync()
    await st.unmount()
    await dev.flush()
    dev.close()

    hdr = dumpe2fs_header(img)
    assert hdr["Filesystem state"] == "clean"
    assert int(hdr["Free blocks"]) == int(before["Free blocks"]) - n
    assert int(hdr["Free inodes"]) == int(before["Free inodes"]) - 1
    # The unreferenced inode is a disconnected file: link it into / with debugfs so the
    # image is a consistent file system, then e2fsck must find nothing else.
    code, _ = fsck(img)
    assert code != 0  # an allocated inode in no directory: e2fsck must notice
    subprocess.run(
        ["debugfs", "-w", "-R", f"link <{inos[0]}> f", str(img)], capture_output=True, check=True
    )
    assert_fsck_clean(img)
    listing = subprocess.run(
        ["debugfs", "-R", f"stat <{inos[0]}>", str(img)], capture_output=True, text=True
    ).stdout
    assert re.search(rf"\(0-{n - 1}\):\s*{start}-{start + n - 1}", listing), listing


def regular_file_record(start: int, n: int, bs: int) -> bytes:
    """A 256-byte inode: regular file, one link, one extent (start, n). Built by hand here
    so the test does not depend on chanos's own inode codec."""
    rec = bytearray(256)
    size = n * bs
    rec[0:2] = (0o100644).to_bytes(2, "little")
    rec[4:8] = size.to_bytes(4, "little")
    rec[26:28] = (1).to_bytes(2, "little")  # links
    rec[28:32] = (n * bs // 512).to_bytes(4, "little")  # i_blocks
    rec[32:36] = (0x80000).to_bytes(4, "little")  # EXTENTS_FL
    eh = (0xF30A).to_bytes(2, "little") + (1).to_bytes(2, "little") + (4).to_bytes(2, "little")
    eh += bytes(6)
    ext = (0).to_bytes(4, "little") + n.to_bytes(2, "little") + (0).to_bytes(2, "little")
    ext += start.to_bytes(4, "little")
    rec[40 : 40 + 24] = eh + ext
    rec[128:130] = (32).to_bytes(2, "little")  # i_extra_isize
    return bytes(rec)


async def test_orphan_head_and_error_state(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    dev, st, groups = await open_all(img)
    await st.mark_mounted()
    await st.set_last_orphan(12)
    await st.sync()  # the head is written with the inode tables, at a sync
    assert dumpe2fs_header(img)["First orphan inode"] == "12"
    await st.set_last_orphan(0)
    await st.sync()
    assert "First orphan inode" not in dumpe2fs_header(img)
    with pytest.raises(OSError) as ei:
        await st.set_last_orphan(10**9)
    assert ei.value.errno == errno.EINVAL
    # A double free is an fs error: recorded in the superblock and kept at unmount.
    st_errors = []
    groups[0]._on_error = lambda w, i, b: st_errors.append((w, i, b))
    with pytest.raises(OSError):
        await groups[0].free_inode(12, is_dir=False)
    with pytest.raises(OSError):
        await groups[0].free_inode(12, is_dir=False)
    assert len(st_errors) == 1  # logged and reported once
    await st.report_error(*st_errors[0])
    await st.unmount()
    dev.close()
    hdr = dumpe2fs_header(img)
    assert hdr["Filesystem state"] == "clean with errors"
    assert hdr["FS Error count"] == "1"


def journal_block(img: Path) -> int:
    out = subprocess.run(
        ["debugfs", "-R", "bmap <8> 0", str(img)], capture_output=True, text=True
    ).stdout
    return int(out.strip())


@pytest.mark.parametrize("bs", [4096, 1024])
async def test_refuses_journal_with_transactions(ext4_image, bs: int) -> None:
    img = ext4_image("64M", bs)
    jblock = journal_block(img)
    assert (await examine(FileDev(img))).geometry.journal_inum == 8
    with open(img, "r+b") as f:
        f.seek(jblock * bs + 24)
        f.write((7).to_bytes(4, "big") + (1).to_bytes(4, "big"))  # s_sequence 7, s_start 1
    await expect_refusal(img, errno.EUCLEAN, "journal needs recovery", "sequence 7", "e2fsck")
    with open(img, "r+b") as f:
        f.seek(jblock * bs)
        f.write(b"\0\0\0\0")  # magic gone
    await expect_refusal(img, errno.EINVAL, "journal is unreadable", "magic")


async def test_metadata_marked_free_in_a_bitmap_is_never_allocated(ext4_image) -> None:
    """A damaged bitmap that shows group 1's superblock backup, descriptor copy and
    reserved GDT blocks as free: the group still never hands them out."""
    img = ext4_image("64M", 1024)
    c = await examine(FileDev(img))
    lay = c.layouts[1]
    with open(img, "r+b") as f:
        f.seek(lay.block_bitmap * 1024)
        f.write(bytes(32))  # bits 0..255 of group 1 cleared: blocks 8193..8448
    dev = FileDev(img)
    g = BlockGroup(lay, dev, used_dirs=0, write_through=False)
    await g.load()
    protected = set()
    for s, n in lay.protected:
        protected.update(range(s, s + n))
    assert set(range(8193, 8193 + 256)) <= protected
    got = set()
    while (r := await g.alloc_blocks(8193, 300)) is not None:
        got.update(range(r[0], r[0] + r[1]))
    assert got and not got & protected
    assert got == set(range(8451, 16385))
    dev.close()
