"""Directory entries: stable positions, slack reuse, growth, htree images, errors, links.

The first tests drive ``chanos.fs.directory.Directory`` over an in-memory stand-in for
``FileData`` (the block codec is the real one); the rest boot the kernel on fresh
``mkfs.ext4`` images, drive directory vnodes with system-call messages, and end with
``e2fsck -fn`` clean.
"""

from __future__ import annotations

import errno
import random
import re
import subprocess

import pytest
from chanos.fs.directory import Directory, first_block
from chanos.fs.format import dirent
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Forget,
    GetAttr,
    Link,
    Lookup,
    MkDir,
    MkNod,
    OpenDir,
    ReadDir,
    ReleaseDir,
    Rename,
    RmDir,
    Unlink,
)
from conftest import E2FSCK, assert_fsck_clean, debugfs, errno_of

LOW = MountOptions(max_vnodes=3)
# A Forget count above any number of lookup references a test takes (listings count too).
ALL_REFS = 1 << 20
IMAGE_SIZE = "32M"


# ---------------------------------------------------------------------------------------
# Directory over an in-memory file
# ---------------------------------------------------------------------------------------


class MemData:
    """The part of FileData a Directory uses, over a bytearray."""

    def __init__(self, content: bytes = b"") -> None:
        self.buf = bytearray(content)
        self.writes = 0

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(self.buf[offset : offset + size])

    async def write(self, offset: int, data, *, size=None) -> int:
        end = offset + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data
        self.writes += 1
        return len(data)


async def _new_dir(bs: int = 1024) -> tuple[Directory, MemData]:
    data = MemData(bytes(first_block(bs, 12, 2)))
    d = Directory(data, bs, 1, max_inode=10_000)
    await d.load()
    return d, data


async def test_positions_never_move_and_scan_resumes_exactly_once():
    d, data = await _new_dir()
    rnd = random.Random(7)
    names = [b"n%04d-" % i + b"x" * rnd.randrange(0, 40) for i in range(300)]
    pos = {}
    for i, n in enumerate(names):
        pos[n] = await d.add(n, 100 + i, 1)
    assert d.nblocks > 1  # grew past one block
    # Remove every third entry, then add new ones: nothing that stayed may move.
    for n in names[::3]:
        await d.remove(n)
    for i in range(50):
        await d.add(b"late%02d" % i, 5000 + i, 1)
    for n in names:
        if n not in names[::3]:
            assert pos[n] in {e.position for e in await d.entries() if e.name == n}

    # A scan that resumes after each entry while the directory changes underneath.
    survivors = {n for n in names if n not in names[::3]}
    seen: list[bytes] = []
    cookie = 0
    step = 0
    while True:
        batch = await d.entries(cookie, 7)
        if not batch:
            break
        seen += [e.name for e in batch]
        cookie = batch[-1].position + 1
        step += 1
        # churn: drop a not-yet-seen late entry, add a fresh one, delete a seen survivor
        await d.add(b"churn%03d" % step, 9000 + step, 1)
        victims = [n for n in seen if n in survivors]
        if victims and step % 2:
            await d.remove(victims[0])
            survivors.discard(victims[0])
            seen_set = set(seen)
            assert victims[0] in seen_set
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert survivors <= set(seen), "an entry present for the whole scan was skipped"
    # The bytes on "disk" are what the cached blocks say.
    assert d._cache
    for i, block in d._cache.items():
        assert bytes(data.buf[i * 1024 : (i + 1) * 1024]) == bytes(block)


class MemMapping:
    """Logical block i of a MemData at physical block ``base + i``; ``holes`` unmapped."""

    def __init__(self, base: int, holes: set[int]) -> None:
        self.base = base
        self.holes = holes
        self.lookups: list[int] = []

    async def map(self, lblk: int, count: int):
        from chanos.fs.extent_tree import Run

        self.lookups.append(lblk)
        if lblk in self.holes:
            return [Run(lblk, None, count)]
        return [Run(lblk, self.base + lblk, count)]


class MemStore:
    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}

    async def write_blocks(self, start: int, data) -> None:
        self.blocks[start] = bytes(data)


async def test_changed_blocks_go_straight_to_their_physical_block():
    bs = 1024
    data = MemData(bytes(first_block(bs, 12, 2)) + dirent.empty_block(bs))
    data.mapping = MemMapping(500, holes={1})
    store = MemStore()
    d = Directory(data, bs, 2, max_inode=10_000, store=store)
    await d.load()
    for i in range(5):
        await d.add(b"f%d" % i, 100 + i, 1)
    await d.remove(b"f2")
    # Block 0 is mapped: written to physical block 500, its mapping looked up once.
    assert data.writes == 0 and list(store.blocks) == [500]
    assert store.blocks[500] == bytes(await d._block(0)) and data.mapping.lookups == [0]
    # Block 1 is a hole (a damaged image): its change goes through the file data.
    names = [b"g%03d-" % i + b"y" * 40 for i in range(40)]
    for i, n in enumerate(names):
        await d.add(n, 200 + i, 1)
    assert data.writes > 0 and 1 in data.mapping.lookups
    assert bytes(data.buf[bs : 2 * bs]) == bytes(await d._block(1))
    assert store.blocks[500] == bytes(await d._block(0))


async def test_deleted_space_is_reused_before_growing():
    d, _ = await _new_dir()
    for i in range(40):
        await d.add(b"file%02d" % i, 20 + i, 1)
    blocks = d.nblocks
    for i in range(0, 40, 2):
        await d.remove(b"file%02d" % i)
    for i in range(20):
        await d.add(b"new%03d" % i, 200 + i, 1)
    assert d.nblocks == blocks
    assert len(d) == 2 + 40


async def test_lookup_remove_replace_and_errors():
    d, _ = await _new_dir()
    await d.add(b"a", 20, 1)
    with pytest.raises(OSError) as ei:
        await d.add(b"a", 21, 1)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(OSError) as ei:
        await d.add(b"x" * 256, 21, 1)
    assert ei.value.errno == errno.ENAMETOOLONG
    assert await d.replace(b"a", 30, 2) == (20, 1)
    assert await d.lookup(b"a") == (30, 2)
    with pytest.raises(OSError) as ei:
        await d.remove(b"a", expect_ino=20)
    assert ei.value.errno == errno.ENOENT
    assert not d.is_empty()
    assert await d.remove(b"a") == (30, 2)
    assert d.is_empty()
    assert await d.lookup(b"a") is None
    assert await d.dotdot() == 2
    await d.set_dotdot(77)
    assert await d.dotdot() == 77 and await d.lookup(b"..") == (77, 2)


async def test_a_lookup_sees_every_change_made_after_it():
    """The directory remembers its latest answer (an unlink looks a name up, then removes
    it): every change, and a reload, must make it look again."""
    d, data = await _new_dir()
    assert await d.lookup(b"n") is None
    await d.add(b"n", 20, 1)
    assert await d.lookup(b"n") == (20, 1)
    await d.replace(b"n", 21, 1)
    assert await d.lookup(b"n") == (21, 1)
    assert await d.remove(b"n") == (21, 1)
    assert await d.lookup(b"n") is None
    assert await d.lookup(b"..") == (2, 2)
    await d.set_dotdot(9)
    assert await d.lookup(b"..") == (9, 2)

    # A change whose write fails leaves the entries as they were, and lookups say so.
    await d.add(b"k", 30, 1)
    assert await d.lookup(b"k") == (30, 1)

    async def broken(offset, block, *, size=None):
        raise OSError(errno.EIO, "write failed")

    data.write = broken
    with pytest.raises(OSError):
        await d.remove(b"k")
    assert await d.lookup(b"k") == (30, 1)
    assert await d.lookup(b"m") is None
    with pytest.raises(OSError):
        await d.add(b"m", 31, 1)
    assert await d.lookup(b"m") is None
    del data.write

    # A reload reads the blocks as they are now.
    assert await d.lookup(b"k") == (30, 1)
    data.buf[:] = bytes(first_block(1024, 12, 2))
    await d.load()
    # Loading asked about each name before indexing it: the last one is found now.
    assert await d.lookup(b"..") == (2, 2)
    assert await d.lookup(b"k") is None


async def test_corrupt_block_is_skipped_not_written():
    d, data = await _new_dir()
    for i in range(200):
        await d.add(b"entry-%03d" % i, 20 + i, 1)
    assert d.nblocks >= 3
    raw = bytearray(data.buf)
    raw[1024 + 4 : 1024 + 6] = (3).to_bytes(2, "little")  # rec_len 3: invalid
    d2 = Directory(MemData(bytes(raw)), 1024, d.nblocks, max_inode=10_000)
    await d2.load()
    assert d2.corrupt == {1}
    names = {e.name for e in await d2.entries()}
    assert b"entry-000" in names and len(names) < 202
    before = bytes(raw[1024:2048])
    await d2.add(b"fresh", 999, 1)
    assert bytes(await d2._block(1)) == before
    assert not d2.is_empty()


# ---------------------------------------------------------------------------------------
# Through the kernel, on images
# ---------------------------------------------------------------------------------------


async def _listdir(k, ino: int) -> list:
    h = await k.syscall(OpenDir(ino))
    out = []
    off = 0
    while True:
        batch = await k.syscall(ReadDir(h, off))
        if not batch:
            break
        out += batch
        off = batch[-1].next_offset
    await k.syscall(ReleaseDir(h))
    return out


async def test_errors_and_link_counts(image):
    async with boot(image, LOW) as k:
        root_links = (await k.syscall(GetAttr(ROOT_INO))).nlink
        d = await k.syscall(MkDir(ROOT_INO, b"d", 0o755))
        assert d.attr.nlink == 2
        assert (await k.syscall(GetAttr(ROOT_INO))).nlink == root_links + 1
        f = await k.syscall(MkNod(d.inode, b"f", 0o100644))
        sub = await k.syscall(MkDir(d.inode, b"sub", 0o700))
        assert (await k.syscall(GetAttr(d.inode))).nlink == 3

        assert await errno_of(k.syscall(MkDir(d.inode, b"f", 0o755))) == errno.EEXIST
        assert await errno_of(k.syscall(MkNod(d.inode, b"sub", 0o100644))) == errno.EEXIST
        assert await errno_of(k.syscall(Lookup(d.inode, b"nope"))) == errno.ENOENT
        assert await errno_of(k.syscall(Lookup(d.inode, b"n" * 256))) == errno.ENAMETOOLONG
        assert await errno_of(k.syscall(MkNod(d.inode, b"n" * 256, 0o100644))) == errno.ENAMETOOLONG
        assert await errno_of(k.syscall(Lookup(f.inode, b"x"))) == errno.ENOTDIR
        assert await errno_of(k.syscall(MkNod(f.inode, b"x", 0o100644))) == errno.ENOTDIR
        assert await errno_of(k.syscall(Unlink(d.inode, b"sub"))) == errno.EISDIR
        assert await errno_of(k.syscall(RmDir(d.inode, b"f"))) == errno.ENOTDIR
        assert await errno_of(k.syscall(RmDir(ROOT_INO, b"d"))) == errno.ENOTEMPTY
        assert await errno_of(k.syscall(Unlink(d.inode, b"gone"))) == errno.ENOENT
        name255 = b"L" * 255
        assert (await k.syscall(MkNod(d.inode, name255, 0o100600))).attr.nlink == 1
        assert (await k.syscall(Lookup(d.inode, name255))).inode

        # "." and ".." resolve; ".." of a subdirectory is its parent
        assert (await k.syscall(Lookup(sub.inode, b".."))).inode == d.inode
        assert (await k.syscall(Lookup(sub.inode, b"."))).inode == sub.inode
        entries = {e.name: e for e in await _listdir(k, d.inode)}
        assert set(entries) == {b".", b"..", b"f", b"sub", name255}
        assert entries[b".."].inode == ROOT_INO
        assert entries[b"sub"].attr.nlink == 2

        # removed while open: the handle reads no entries, the inode goes at release
        hs = await k.syscall(OpenDir(sub.inode))
        await k.syscall(RmDir(d.inode, b"sub"))
        assert await k.syscall(ReadDir(hs, 0)) == []
        assert await errno_of(k.syscall(MkNod(sub.inode, b"late", 0o100644))) == errno.ENOENT
        await k.syscall(ReleaseDir(hs))
        assert (await k.syscall(GetAttr(d.inode))).nlink == 2
        await k.syscall(Unlink(d.inode, b"f"))
        await k.syscall(Unlink(d.inode, name255))
        await k.syscall(RmDir(ROOT_INO, b"d"))
        assert (await k.syscall(GetAttr(ROOT_INO))).nlink == root_links
        # Kept while the host kernel holds lookup references (nlink 0); freed once it
        # forgets them all (ALL_REFS covers every one the test took).
        assert (await k.syscall(GetAttr(sub.inode))).nlink == 0
        await k.syscall(Forget(sub.inode, ALL_REFS))
        assert await errno_of(k.syscall(GetAttr(sub.inode))) == errno.ENOENT
    assert_fsck_clean(image)


async def test_same_directory_rename(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
        a = (await k.syscall(MkNod(d, b"a", 0o100644))).inode
        b = (await k.syscall(MkNod(d, b"b", 0o100644))).inode
        x = (await k.syscall(MkDir(d, b"x", 0o755))).inode
        y = (await k.syscall(MkDir(d, b"y", 0o755))).inode
        await k.syscall(MkNod(y, b"inside", 0o100644))

        async def names():
            return {e.name: e.inode for e in await _listdir(k, d) if e.name not in (b".", b"..")}

        await k.syscall(Rename(d, b"a", d, b"a2"))
        assert (await names())[b"a2"] == a
        assert await errno_of(k.syscall(Rename(d, b"a2", d, b"b", RENAME_NOREPLACE))) == (
            errno.EEXIST
        )
        await k.syscall(Rename(d, b"a2", d, b"b", RENAME_EXCHANGE))
        assert (await names())[b"b"] == a and (await names())[b"a2"] == b
        await k.syscall(Rename(d, b"a2", d, b"b"))  # replaces: inode a loses its link
        assert await names() == {b"b": b, b"x": x, b"y": y}
        assert (await k.syscall(GetAttr(a))).nlink == 0  # still referenced: kept
        await k.syscall(Forget(a, ALL_REFS))
        assert await errno_of(k.syscall(GetAttr(a))) == errno.ENOENT  # forgotten: freed
        assert await errno_of(k.syscall(Rename(d, b"x", d, b"b"))) == errno.ENOTDIR
        assert await errno_of(k.syscall(Rename(d, b"b", d, b"x"))) == errno.EISDIR
        assert await errno_of(k.syscall(Rename(d, b"x", d, b"y"))) == errno.ENOTEMPTY
        links = (await k.syscall(GetAttr(d))).nlink
        assert links == 4
        await k.syscall(Unlink(y, b"inside"))
        await k.syscall(Rename(d, b"x", d, b"y"))  # a directory over an empty one
        assert (await k.syscall(GetAttr(d))).nlink == 3
        assert (await names())[b"y"] == x
        assert (await k.syscall(Lookup(x, b".."))).inode == d
        # hard links: renaming one name over another of the same inode does nothing
        await k.syscall(Link(b, d, b"b-too"))
        await k.syscall(Rename(d, b"b", d, b"b-too"))
        assert (await names())[b"b"] == b and (await k.syscall(GetAttr(b))).nlink == 2
    assert_fsck_clean(image)


async def test_readdir_offsets_stable_through_the_kernel(image):
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"big", 0o755))).inode
        for i in range(600):
            await k.syscall(MkNod(d, b"f%04d" % i, 0o100644))
        h = await k.syscall(OpenDir(d))
        seen: list[bytes] = []
        off = 0
        removed: set[bytes] = set()
        n = 0
        while True:
            batch = await k.syscall(ReadDir(h, off))
            if not batch:
                break
            # consume only part of each batch, as a small getdents buffer would
            batch = batch[:37]
            seen += [e.name for e in batch]
            off = batch[-1].next_offset
            n += 1
            if n < 100:
                await k.syscall(MkNod(d, b"new%03d" % n, 0o100644))
            victim = b"f%04d" % (599 - n)
            if n < 300 and victim not in seen:
                await k.syscall(Unlink(d, victim))
                removed.add(victim)
        await k.syscall(ReleaseDir(h))
        assert len(seen) == len(set(seen))
        stayed = {b"f%04d" % i for i in range(600)} - removed
        assert stayed <= set(seen)
        assert not (removed & set(seen))
    assert_fsck_clean(image)


def _make_htree_dir(img, count: int) -> None:
    """A directory with ``count`` entries, indexed by e2fsck -D (so it has INDEX_FL)."""
    script = ["mkdir /h", "cd /h"] + [f"mknod entry-{i:05d} p" for i in range(count)]
    debugfs(img, *script, write=True)
    subprocess.run([E2FSCK, "-fyD", str(img)], capture_output=True)
    out = debugfs(img, "stat /h").decode()
    assert int(re.search(r"Flags: (0x[0-9a-f]+)", out).group(1), 16) & 0x1000, out


async def test_htree_directory_read_linearly_and_index_dropped_on_change(ext4_image):
    img = ext4_image("32M", 1024)
    _make_htree_dir(img, 400)
    async with boot(img, LOW) as k:
        h = (await k.syscall(Lookup(ROOT_INO, b"h"))).inode
        for i in range(0, 400, 37):
            assert (await k.syscall(Lookup(h, b"entry-%05d" % i))).attr.mode & 0o170000 == (
                0o010000
            )
        names = [e.name for e in await _listdir(k, h)]
        assert len(names) == len(set(names)) == 402
        await k.syscall(MkNod(h, b"added", 0o100644))
        await k.syscall(Unlink(h, b"entry-00007"))
    out = debugfs(img, "stat /h").decode()
    flags_after = int(re.search(r"Flags: (0x[0-9a-f]+)", out).group(1), 16)
    assert not flags_after & 0x1000
    listing = debugfs(img, "ls /h").decode()
    assert "added" in listing and "entry-00007" not in listing and "entry-00399" in listing
    assert_fsck_clean(img)


async def test_link_limit_and_dir_nlink(ext4_image):
    img = ext4_image("16M", 4096)
    debugfs(img, "write /dev/null f", "mkdir d", write=True)
    # Counts near the limit, set directly (creating 65000 names would be slow).
    debugfs(img, "sif f links_count 64999", "sif d links_count 65000", write=True)
    async with boot(img, LOW) as k:
        f = (await k.syscall(Lookup(ROOT_INO, b"f"))).inode
        d = (await k.syscall(Lookup(ROOT_INO, b"d"))).inode
        e = await k.syscall(Link(f, ROOT_INO, b"f2"))
        assert e.attr.nlink == 65000
        assert await errno_of(k.syscall(Link(f, ROOT_INO, b"f3"))) == errno.EMLINK
        await k.syscall(Unlink(ROOT_INO, b"f2"))
        assert (await k.syscall(GetAttr(f))).nlink == 64999
        # dir_nlink: past 65000 a directory's count reads 1 ("many") and stays there
        sub = await k.syscall(MkDir(d, b"s", 0o755))
        assert sub.attr.nlink == 2
        assert (await k.syscall(GetAttr(d))).nlink == 1
        await k.syscall(RmDir(d, b"s"))
        assert (await k.syscall(GetAttr(d))).nlink == 1
        assert await errno_of(k.syscall(Link(d, ROOT_INO, b"dl"))) == errno.EPERM
    # Put the true counts back for the checker (1 name; 2 for an empty directory).
    debugfs(img, "sif f links_count 1", "sif d links_count 2", write=True)
    assert_fsck_clean(img)


def test_first_block_layout():
    b = first_block(4096, 12, 2)
    recs = list(dirent.records(b))
    assert [(r.name, r.inode, r.rec_len, r.file_type) for r in recs] == [
        (b".", 12, 12, 2),
        (b"..", 2, 4084, 2),
    ]


async def test_directory_larger_than_its_cache_on_an_image(image, monkeypatch):
    """A directory whose blocks do not all fit its cache (two blocks here): entries are
    found, listed, renamed and removed by reading evicted blocks back from the image,
    across a remount, and e2fsck agrees with the result."""
    from chanos.fs import directory as directory_mod

    monkeypatch.setattr(directory_mod, "_CACHE_BYTES", 2 * 4096)
    names = [b"entry-with-a-long-name-%05d" % i for i in range(1000)]
    async with boot(image, LOW) as k:
        d = (await k.syscall(MkDir(ROOT_INO, b"big", 0o755))).inode
        inos = {n: (await k.syscall(MkNod(d, n, 0o100644))).inode for n in names}
        assert (await k.syscall(GetAttr(d))).size >= 4 * 2 * 4096  # well past the cache
    async with boot(image, LOW) as k:
        d = (await k.syscall(Lookup(ROOT_INO, b"big"))).inode
        rnd = random.Random(3)
        for n in rnd.sample(names, 100):  # found in any block, cold and evicted
            assert (await k.syscall(Lookup(d, n))).inode == inos[n]
        for n in names[::3]:
            await k.syscall(Rename(d, n, d, n + b".moved"))
            inos[n + b".moved"] = inos.pop(n)
        for n in names[1::3]:
            await k.syscall(Unlink(d, n))
            del inos[n]
        listed = {e.name: e.inode for e in await _listdir(k, d) if e.name not in (b".", b"..")}
        assert listed == inos
        assert await errno_of(k.syscall(Lookup(d, names[1]))) == errno.ENOENT
    assert_fsck_clean(image)
    async with boot(image, LOW) as k:
        d = (await k.syscall(Lookup(ROOT_INO, b"big"))).inode
        listed = {e.name: e.inode for e in await _listdir(k, d) if e.name not in (b".", b"..")}
        assert listed == inos
