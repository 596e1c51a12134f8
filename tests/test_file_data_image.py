"""Extent trees and block maps on real images made and written by e2fsprogs.

Files written by ``debugfs -w`` (small, large, sparse, and a fragmented file whose extent
tree is two levels deep) must read back byte-identical through ExtentTree / BlockMap +
FileData over a plain image-file BlockStore. Then the same files are modified through
FileData (truncate, punch, appends, writes into holes, a write past 4 GiB), the new
i_block / size / i_blocks are stored into the raw inode, and e2fsck — which checks the
tree shape, index keys, i_blocks and the size against the mapping — must find nothing
wrong in passes 1-4 (pass 5 only sees the bitmaps this test does not maintain, fixed by
``e2fsck -fy``; after that ``e2fsck -fn`` must be clean and debugfs must read our bytes).
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
from chanos.fs.block_map import BlockMap
from chanos.fs.extent_tree import ExtentTree
from chanos.fs.file_data import FileData
from conftest import E2FSCK, assert_fsck_clean, debugfs, make_ext4_image

BS = 1024
EXTENTS_FL = 0x80000


class ImageStore:
    """A synchronous BlockStore over an image file (pread/pwrite)."""

    def __init__(self, path: Path, block_size: int) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.bs = block_size

    async def read_blocks(self, start: int, count: int) -> memoryview:
        data = os.pread(self.fd, count * self.bs, start * self.bs)
        assert len(data) == count * self.bs
        return memoryview(data)  # as the image driver answers

    async def write_blocks(self, start: int, data) -> None:
        assert len(data) % self.bs == 0
        os.pwrite(self.fd, data, start * self.bs)

    def close(self) -> None:
        os.close(self.fd)


class FreeListAllocator:
    """Hands out blocks e2fsprogs reported free; checks every free against ownership."""

    def __init__(self, free: list[int], owned: set[int]) -> None:
        self.free_set = set(free)
        self.owned = set(owned)

    async def allocate(self, goal: int, count: int) -> tuple[int, int]:
        cands = sorted(b for b in self.free_set if b >= goal) or sorted(self.free_set)
        if not cands:
            raise OSError(28, "no space")
        start = cands[0]
        n = 1
        while n < count and start + n in self.free_set:
            n += 1
        for b in range(start, start + n):
            self.free_set.remove(b)
            self.owned.add(b)
        return start, n

    async def free(self, start: int, count: int) -> None:
        for b in range(start, start + count):
            assert b in self.owned, f"free of block {b} the file does not hold"
            self.owned.remove(b)


def free_blocks(img: Path, n: int, goal: int = 1) -> list[int]:
    out = debugfs(img, f"ffb {n} {goal}").decode()
    return [int(x) for x in out.split("found:")[1].split()]


class RawInode:
    """The few inode fields this test needs, read and written in place in the image."""

    def __init__(self, img: Path, name: str, bs: int = BS) -> None:
        out = debugfs(img, f"imap {name}").decode()
        m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
        assert m, out
        self.img = img
        self.off = int(m.group(1)) * bs + int(m.group(2), 16)
        with open(img, "rb") as f:
            f.seek(self.off)
            raw = f.read(128)
        self.size = (
            struct.unpack_from("<I", raw, 0x4)[0] | struct.unpack_from("<I", raw, 0x6C)[0] << 32
        )
        self.i_blocks = (
            struct.unpack_from("<I", raw, 0x1C)[0] | struct.unpack_from("<H", raw, 0x74)[0] << 32
        )
        self.flags = struct.unpack_from("<I", raw, 0x20)[0]
        self.i_block = raw[0x28:0x64]

    def store(self, size: int, i_blocks: int, i_block: bytes, flags: int | None = None) -> None:
        with open(self.img, "r+b") as f:
            f.seek(self.off + 0x4)
            f.write(struct.pack("<I", size & 0xFFFFFFFF))
            f.seek(self.off + 0x6C)
            f.write(struct.pack("<I", size >> 32))
            f.seek(self.off + 0x1C)
            f.write(struct.pack("<I", i_blocks & 0xFFFFFFFF))
            f.seek(self.off + 0x74)
            f.write(struct.pack("<H", i_blocks >> 32))
            f.seek(self.off + 0x28)
            f.write(i_block)
            if flags is not None:
                f.seek(self.off + 0x20)
                f.write(struct.pack("<I", flags))


def open_file(
    img: Path, name: str, store: ImageStore, alloc, bs: int = BS
) -> tuple[RawInode, FileData]:
    ino = RawInode(img, name, bs)
    fd = FileData(
        ino.i_block,
        extents=bool(ino.flags & EXTENTS_FL),
        store=store,
        allocator=alloc,
        block_size=bs,
        fs_blocks=ino.i_blocks // (bs // 512),
        goal=1,
        extent_feature=bool(ino.flags & EXTENTS_FL),
    )
    return ino, fd


async def held(fd: FileData) -> set[int]:
    m = fd.mapping
    if isinstance(m, ExtentTree):
        out = set(await m.tree_blocks())
        for _s, p, n, _u in await m.extents():
            out.update(range(p, p + n))
        return out
    assert isinstance(m, BlockMap)
    out = set(await m.indirect_blocks())
    for r in await m.map(0, m.limit):
        if r.physical is not None:
            out.update(range(r.physical, r.physical + r.length))
    return out


# e2fsck's pass-1E hints ("extent tree could be narrower/shorter") are optimisations,
# not faults: PR_NO_OK | PR_NOT_A_FIX, so ``e2fsck -fn`` still exits 0. Trees the kernel
# builds get them too. Everything else before pass 5 is a real fault.
HINT = re.compile(r"extent tree \(at level \d+\) could be (narrower|shorter)")


def fsck_fix_only_bitmaps(img: Path) -> None:
    """e2fsck -fy may fix pass-5 summaries only; then -fn must be clean."""
    proc = subprocess.run([E2FSCK, "-fy", str(img)], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    before_pass5 = proc.stdout.split("Pass 5:")[0]
    problems = [
        ln
        for ln in before_pass5.splitlines()
        if ln.strip() and not ln.startswith("Pass ") and "e2fsck" not in ln and not HINT.search(ln)
    ]
    assert not problems, proc.stdout
    assert_fsck_clean(img)


class Modeled:
    """A FileData and a bytearray that every operation is applied to."""

    def __init__(self, fd: FileData, data: bytes) -> None:
        self.fd = fd
        self.model = bytearray(data)

    async def write(self, off: int, data: bytes) -> None:
        n = await self.fd.write(off, data, size=len(self.model))
        assert n == len(data)
        if off + n > len(self.model):
            self.model.extend(bytes(off + n - len(self.model)))
        self.model[off : off + n] = data

    async def truncate(self, new: int) -> None:
        await self.fd.truncate(len(self.model), new)
        if new < len(self.model):
            del self.model[new:]
        else:
            self.model.extend(bytes(new - len(self.model)))

    async def punch(self, off: int, n: int) -> None:
        await self.fd.punch_hole(off, n)
        self.model[off : off + n] = bytes(len(self.model[off : off + n]))


def sparse_host_file(path: Path, pieces: list[tuple[int, bytes]]) -> bytes:
    with open(path, "wb") as f:
        for off, data in pieces:
            f.seek(off)
            f.write(data)
    return path.read_bytes()


@pytest.fixture
def ext4_1k(tmp_path: Path):
    """A 1 KiB-block ext4 image with small, big, sparse and fragmented files."""
    img = make_ext4_image(tmp_path, "32M", BS)
    rnd = random.Random(7)
    files = {
        "small": rnd.randbytes(3000),
        "big": rnd.randbytes(3 << 20),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    files["sparse"] = sparse_host_file(
        tmp_path / "sparse",
        [(0, rnd.randbytes(100 << 10)), (2 << 20, rnd.randbytes(50 << 10) + b"tail")],
    )
    (tmp_path / "one").write_bytes(rnd.randbytes(BS))
    reqs = [f"write {tmp_path / n} {n}" for n in ("small", "big", "sparse")]
    # 900 one-block files, every other one removed: the next file fills 450 holes
    reqs += [f"write {tmp_path / 'one'} f{i}" for i in range(900)]
    reqs += [f"rm f{i}" for i in range(0, 900, 2)]
    files["frag"] = rnd.randbytes(2 << 20)
    (tmp_path / "frag").write_bytes(files["frag"])
    reqs.append(f"write {tmp_path / 'frag'} frag")
    debugfs(img, *reqs, write=True)
    assert_fsck_clean(img)
    return img, files


async def test_debugfs_files_read_back_identical(ext4_1k) -> None:
    img, files = ext4_1k
    store = ImageStore(img, BS)
    try:
        for name, data in files.items():
            ino, fd = open_file(img, name, store, FreeListAllocator([], set()))
            assert fd.uses_extents and ino.size == len(data)
            assert await fd.read(0, ino.size) == data, name
            n = min(5000, ino.size - 1234)  # the caller clamps reads to EOF
            assert await fd.read(1234, n) == data[1234 : 1234 + n]
            # i_blocks as e2fsprogs counted it == data blocks + tree blocks we find
            assert len(await held(fd)) == ino.i_blocks // 2 == fd.fs_blocks, name
        _, frag = open_file(img, "frag", store, FreeListAllocator([], set()))
        tree = frag.mapping
        assert isinstance(tree, ExtentTree)
        assert tree.depth == 2 and len(await tree.extents()) > 336
        await tree.check()
    finally:
        store.close()


async def test_4k_image_files_read_back_identical(tmp_path: Path) -> None:
    """The same on the 4 KiB-block images chanos mounts: a fragmented file of 600 extents
    (two leaves under the root) and a 40 MiB one spanning block groups."""
    bs = 4096
    img = make_ext4_image(tmp_path, "96M", bs)
    rnd = random.Random(9)
    (tmp_path / "one").write_bytes(rnd.randbytes(bs))
    files = {"frag": rnd.randbytes(600 * bs), "large": rnd.randbytes(40 << 20)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reqs = [f"write {tmp_path / 'one'} f{i}" for i in range(1200)]
    reqs += [f"rm f{i}" for i in range(0, 1200, 2)]
    reqs += [f"write {tmp_path / n} {n}" for n in files]
    debugfs(img, *reqs, write=True)
    assert_fsck_clean(img)
    store = ImageStore(img, bs)
    try:
        for name, data in files.items():
            ino, fd = open_file(img, name, store, FreeListAllocator([], set()), bs)
            assert await fd.read(0, ino.size) == data, name
            assert len(await held(fd)) == ino.i_blocks // 8 == fd.fs_blocks, name
        _, frag = open_file(img, "frag", store, FreeListAllocator([], set()), bs)
        assert frag.mapping.depth == 1 and len(await frag.mapping.extents()) > 340
        await frag.mapping.check()
    finally:
        store.close()


async def test_modified_extent_trees_pass_e2fsck(ext4_1k, tmp_path: Path) -> None:
    img, files = ext4_1k
    store = ImageStore(img, BS)
    models = {}
    # one allocator for all files: the free blocks e2fsprogs reported before we started
    alloc = FreeListAllocator(free_blocks(img, 3000, 1), set())
    try:
        for name in ("frag", "big", "sparse", "small"):
            ino, fd = open_file(img, name, store, alloc)
            alloc.owned = await held(fd)
            m = Modeled(fd, files[name])
            rnd = random.Random(name)
            size = len(m.model)
            await m.punch(size // 3 + 17, size // 4)
            await m.punch(100, 50)
            await m.truncate(size * 3 // 4 + 123)
            await m.write(len(m.model) + 5000, rnd.randbytes(300 << 10))
            await m.write(size // 3 + 1000, rnd.randbytes(20 << 10))  # into the hole
            await m.truncate(len(m.model) + 777)
            await m.write(len(m.model) - 10, rnd.randbytes(3000))
            if name == "frag":
                # 250 one-block extents into the middle of the two-level tree: leaves split
                # in the middle and index entries are inserted under the root's children
                await m.punch(100 * BS, 600 * BS)
                for k in range(100, 600, 2):
                    await m.write(k * BS + 7, rnd.randbytes(BS - 7))
                assert fd.mapping.depth == 2
                assert len(await fd.mapping.extents()) > 4 * 84
                await fd.mapping.check()
            await fd.flush()
            assert alloc.owned == await held(fd)
            ino.store(len(m.model), fd.i_blocks, fd.i_block)
            assert await fd.read(0, len(m.model)) == bytes(m.model)
            models[name] = bytes(m.model)
        # shrink the fragmented file until its tree is back in the inode
        ino, fd = open_file(img, "frag", store, alloc)
        alloc.owned = await held(fd)
        await fd.truncate(len(models["frag"]), 3 * BS + 5)
        assert fd.mapping.depth == 0
        await fd.flush()
        ino.store(3 * BS + 5, fd.i_blocks, fd.i_block)
        models["frag"] = models["frag"][: 3 * BS + 5]
    finally:
        store.close()
    fsck_fix_only_bitmaps(img)
    for name, data in models.items():
        out = tmp_path / f"{name}.out"
        debugfs(img, f"dump {name} {out}")
        assert out.read_bytes() == data, name


async def test_write_past_4gib_is_read_by_debugfs(tmp_path: Path) -> None:
    img = make_ext4_image(tmp_path, "16M", BS)
    (tmp_path / "empty").write_bytes(b"")
    debugfs(img, f"write {tmp_path / 'empty'} huge", write=True)
    store = ImageStore(img, BS)
    try:
        ino, fd = open_file(img, "huge", store, None)
        alloc = FreeListAllocator(free_blocks(img, 200, 1), set())
        fd._alloc.inner = alloc
        off = (5 << 30) + 100
        data = random.Random(3).randbytes(10_000)
        await fd.write(0, b"head")
        await fd.write(off, data, size=4)
        await fd.flush()
        ino.store(off + len(data), fd.i_blocks, fd.i_block)
    finally:
        store.close()
    fsck_fix_only_bitmaps(img)
    lblk = off // BS
    out = debugfs(img, f"bmap huge {lblk}").decode().split()
    phys = int(out[-1])
    with open(img, "rb") as f:
        f.seek(phys * BS + off % BS)
        assert f.read(BS - off % BS) == data[: BS - off % BS]
    assert b"Size: %d" % (off + len(data)) in debugfs(img, "stat huge")


@pytest.fixture
def ext2_1k(tmp_path: Path):
    """An ext2 image (no extents) with a sparse file reaching the triple indirect block."""
    img = tmp_path / "ext2.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", str(BS), str(img), "16M"], check=True)
    rnd = random.Random(11)
    pieces = [
        (0, rnd.randbytes(5000)),
        (300 << 10, rnd.randbytes(2000)),  # double indirect range
        (70 << 20, rnd.randbytes(3000)),  # triple indirect range
    ]
    data = sparse_host_file(tmp_path / "sp", pieces)
    big = rnd.randbytes(400 << 10)  # direct + single + double, contiguous
    (tmp_path / "big").write_bytes(big)
    debugfs(img, f"write {tmp_path / 'sp'} sp", f"write {tmp_path / 'big'} big", write=True)
    assert_fsck_clean(img)
    return img, {"sp": data, "big": big}


async def test_block_mapped_files_read_write_truncate(ext2_1k, tmp_path: Path) -> None:
    img, files = ext2_1k
    store = ImageStore(img, BS)
    try:
        for name, data in files.items():
            ino, fd = open_file(img, name, store, FreeListAllocator([], set()))
            assert not fd.uses_extents
            assert await fd.read(0, len(data)) == data
            assert len(await held(fd)) == ino.i_blocks // 2 == fd.fs_blocks
        # truncate: the triple-indirect part goes, the double-indirect block is trimmed
        ino, fd = open_file(img, "sp", store, None)
        fd._alloc.inner = FreeListAllocator([], await held(fd))
        await fd.truncate(len(files["sp"]), (300 << 10) + 1000)
        await fd.flush()
        ino.store((300 << 10) + 1000, fd.i_blocks, fd.i_block)
        assert fd.fs_blocks == len(await held(fd))
        # no extent feature: writes go in place, adding indirect blocks where needed
        alloc = FreeListAllocator(free_blocks(img, 600, 1), set())
        ino2, fd2 = open_file(img, "big", store, alloc)
        alloc.owned = await held(fd2)
        m = Modeled(fd2, files["big"])
        await m.truncate(200 << 10)  # inside the single-indirect range
        await m.write(100, b"in place")
        await m.write(190 << 10, random.Random(1).randbytes(300 << 10))  # into double
        await m.punch(5 << 10, 20 << 10)
        await m.write(80 << 20, b"triple")  # a sparse tail through the triple block
        assert not fd2.converted and not fd2.uses_extents
        await fd2.flush()
        assert alloc.owned == await held(fd2)
        ino2.store(len(m.model), fd2.i_blocks, fd2.i_block)
        assert await fd2.read(0, 600 << 10) == bytes(m.model[: 600 << 10])
    finally:
        store.close()
    fsck_fix_only_bitmaps(img)
    expect = files["sp"][: (300 << 10) + 1000]
    debugfs(img, f"dump sp {tmp_path / 'sp.out'}", f"dump big {tmp_path / 'big.out'}")
    assert (tmp_path / "sp.out").read_bytes() == expect
    assert (tmp_path / "big.out").read_bytes() == bytes(m.model)


async def test_block_mapped_file_converts_to_extents_on_write(ext2_1k, tmp_path: Path) -> None:
    """After ``tune2fs -O extent`` old files stay block-mapped; a write converts one."""
    img, files = ext2_1k
    subprocess.run(["tune2fs", "-O", "extent", str(img)], check=True, capture_output=True)
    store = ImageStore(img, BS)
    alloc = FreeListAllocator(free_blocks(img, 500, 1), set())
    try:
        ino, fd = open_file(img, "sp", store, alloc)
        fd._extent_feature = True
        alloc.owned = await held(fd)
        m = Modeled(fd, files["sp"])
        await m.write(301 * BS + 5, b"converted")
        await m.write(len(m.model), b"appended")
        assert fd.converted and fd.uses_extents
        # the indirect blocks are gone: the file holds its data blocks only
        assert fd.fs_blocks == len(await held(fd)) == len(alloc.owned)
        await fd.flush()
        ino.store(len(m.model), fd.i_blocks, fd.i_block, ino.flags | EXTENTS_FL)
        assert await fd.read(0, len(m.model)) == bytes(m.model)
    finally:
        store.close()
    fsck_fix_only_bitmaps(img)
    debugfs(img, f"dump sp {tmp_path / 'sp.out'}")
    assert (tmp_path / "sp.out").read_bytes() == bytes(m.model)
    assert b"Flags: 0x80000" in debugfs(img, "stat sp")


async def test_unwritten_extents_from_debugfs_fallocate(tmp_path: Path) -> None:
    """Unwritten extents made by e2fsprogs read as zeros whatever their blocks hold; a write
    inside one splits it, and e2fsck and debugfs agree with the result."""
    img = make_ext4_image(tmp_path, "8M", BS)
    head = random.Random(5).randbytes(5000)
    (tmp_path / "head").write_bytes(head)
    size = 41 * BS
    debugfs(
        img,
        f"write {tmp_path / 'head'} f",
        "fallocate f 5 40",
        f"sif f size {size}",
        write=True,
    )
    assert b"Uninit" in debugfs(img, "ex f")
    store = ImageStore(img, BS)
    alloc = FreeListAllocator(free_blocks(img, 100, 1), set())
    try:
        ino, fd = open_file(img, "f", store, alloc)
        alloc.owned = await held(fd)
        tree = fd.mapping
        assert isinstance(tree, ExtentTree)
        for _s, p, n, u in await tree.extents():
            if u:  # stale bytes in the preallocated blocks must not show
                await store.write_blocks(p, b"\xee" * (n * BS))
        m = Modeled(fd, head + bytes(size - len(head)))
        assert await fd.read(0, size) == bytes(m.model)
        await m.write(20 * BS + 100, b"inside")
        ext = await tree.extents()
        assert [(s, n, u) for s, _p, n, u in ext] == [
            (0, 5, False),
            (5, 15, True),
            (20, 1, False),
            (21, 20, True),
        ]
        await fd.flush()
        ino.store(size, fd.i_blocks, fd.i_block)
        assert await fd.read(0, size) == bytes(m.model)
    finally:
        store.close()
    fsck_fix_only_bitmaps(img)
    debugfs(img, f"dump f {tmp_path / 'f.out'}")
    assert (tmp_path / "f.out").read_bytes() == bytes(m.model)
