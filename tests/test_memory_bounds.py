"""The daemon's memory bounds: malloc settings and their options, the memory report, the
inode-table cache bound, the image driver's read-buffer pool and write cache defaults."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from chanos.compat import memory
from chanos.compat.options import OptionError, parse_options
from chanos.drivers.image import ImageFileDriver
from chanos.drivers.image_io import BufferPool
from chanos.fs.block_group import BlockGroup
from chanos.fs.volume import examine


def test_memory_options_parse_sizes_and_bounds() -> None:
    c = parse_options(["write_cache=2M,malloc_arenas=1,malloc_mmap_threshold=128k"])
    assert c.write_cache == 2 << 20
    assert c.malloc_arenas == 1
    assert c.malloc_mmap_threshold == 128 << 10
    c = parse_options(["malloc_trim_threshold=64K,malloc_trim_interval=0.5"])
    assert c.malloc_trim_threshold == 64 << 10
    assert c.malloc_trim_interval == 0.5
    assert parse_options([]).write_cache == 1 << 20
    for bad in ("malloc_arenas=0", "malloc_mmap_threshold=1", "write_cache=lots"):
        with pytest.raises(OptionError):
            parse_options([bad])


def test_mount_options_carry_the_write_cache() -> None:
    from chanos.compat.cli import mount_options_for
    from chanos.personality.boot import MountOptions

    opts = mount_options_for(parse_options(["write_cache=1M"]))
    if "write_behind" not in MountOptions.__dataclass_fields__:
        pytest.skip("this kernel has no write_behind option")
    assert opts.write_behind == 1 << 20
    config = parse_options([])
    config.write_cache = None  # None: the kernel's own default
    assert mount_options_for(config).write_behind == MountOptions().write_behind


def test_configure_malloc_on_glibc() -> None:
    if os.confstr("CS_GNU_LIBC_VERSION") is None:
        pytest.skip("not glibc")
    # The process-wide settings this test leaves behind are the daemon's own defaults.
    assert memory.configure_malloc(arena_max=2, mmap_threshold=256 << 10, trim_threshold=1 << 20)
    memory.trim()
    rss = memory.rss_kib()
    assert rss["VmRSS"] > 0 and rss["VmHWM"] >= rss["VmRSS"]


def test_memtrace_reports_on_signal_and_close(tmp_path: Path) -> None:
    out = tmp_path / "mem.txt"
    t = memory.MemTrace(str(out), frames=2, top=5)
    try:
        keep = [bytearray(200_000) for _ in range(3)]  # noqa: F841 - traced while alive
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        t.close()
    text = out.read_text()
    assert text.count("== ") == 2 and "SIGUSR1" in text and "unmount" in text
    first = text.split("== ")[1]
    # the largest site is this test's allocation, 3 x ~195 KiB, named by file and line
    top = first.splitlines()[1]
    assert "test_memory_bounds.py" in top and int(top.split()[0]) >= 585
    assert signal.getsignal(signal.SIGUSR1) is not None


async def test_inode_table_cache_keeps_its_bound(ext4_image) -> None:
    img = ext4_image("16M", 1024)
    fd = os.open(img, os.O_RDONLY)

    class Dev:
        reads = 0

        async def read(self, offset: int, length: int) -> bytes:
            Dev.reads += 1
            return os.pread(fd, length, offset)

        async def info(self):
            class I:  # noqa: E742
                size, block_size, read_only = os.fstat(fd).st_size, 512, True

            return I()

    try:
        c = await examine(Dev(), read_only=True)
        lay = c.layouts[0]
        g = BlockGroup(lay, Dev(), used_dirs=0, read_only=True, itable_cache_bytes=2 * 1024)
        await g.load()
        per_block = 1024 // lay.inode_size
        inos = [1 + i * per_block for i in range(6)]  # one inode in each of 6 table blocks
        for ino in inos:
            await g.read_inode(ino)
        assert len(g._itable) == 2
        before = Dev.reads
        await g.read_inode(inos[-1])  # still cached
        assert Dev.reads == before
        await g.read_inode(inos[0])  # evicted long ago: read again
        assert Dev.reads == before + 1
    finally:
        os.close(fd)


def test_buffer_pool_total_is_bounded() -> None:
    pool = BufferPool()
    held = []
    for size in (64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 3 << 20):
        for _ in range(4):
            held.append(pool.get(size))  # all in use: the pool must hand out new ones
    assert pool.total <= BufferPool.MAX_BYTES
    assert all(len(v) <= BufferPool.PER_SIZE for v in pool.free.values())
    del held
    b = pool.get(1 << 20)  # a pooled buffer is reused once its users let go
    assert any(b is x for x in pool.free[1 << 20])


def test_image_driver_write_cache_default(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    d = ImageFileDriver(img)
    assert d.write_behind == 4 << 20  # at most three times this is held in write-outs


async def test_rewrite_of_a_queued_range_supersedes_it(tmp_path: Path, monkeypatch) -> None:
    from chanos.drivers.client import BlockDevice
    from chanos.personality import ChildSpec, open_supervisor

    img = tmp_path / "q.img"
    img.write_bytes(bytes(1 << 20))
    writes: list[tuple[int, int]] = []
    real = os.pwritev

    def logged(fd, bufs, offset, *a):
        writes.append((offset, sum(len(b) for b in bufs)))
        return real(fd, bufs, offset, *a)

    monkeypatch.setattr(os, "pwritev", logged)
    async with open_supervisor(name="t") as sup:
        drv = ImageFileDriver(img, write_behind=64 << 10)
        ref = await sup.start(ChildSpec(name="driver", factory=lambda: drv))
        dev = BlockDevice(ref)
        for i in range(100):  # one inode-table block rewritten again and again
            await dev.write(4096, bytes([i]) * 4096)
        assert drv.queued_bytes == 4096 and drv.live == 1
        await dev.write(0, b"a" * 8192)  # overlaps the queued block, then is overlapped
        await dev.write(4096, b"z" * 4096)
        assert drv.queued_bytes == 12288 and drv.live == 2
        assert bytes(await dev.read(0, 12288)) == b"a" * 4096 + b"z" * 4096 + bytes(4096)
        await dev.flush()
        assert writes == [(0, 8192), (4096, 4096)]  # arrival order kept, one copy each
        await ref.stop()
    assert img.read_bytes()[:12288] == b"a" * 4096 + b"z" * 4096 + bytes(4096)


async def test_retired_vnodes_are_freed_without_the_cycle_collector(ext4_image) -> None:
    """A vnode per file makes every reference cycle left by a retired vnode a leak until
    the next full collection (and, after it, fragmentation): retiring file and directory
    vnodes must leave nothing for the cycle collector."""
    import gc

    from chanos.personality.boot import MountOptions, boot
    from chanos.personality.syscalls import ROOT_INO, Create, MkDir, Release

    img = ext4_image("32M")
    async with boot(str(img), MountOptions(max_vnodes=16)) as k:
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(8):  # directories with entries, retired as the table turns over
                d = (await k.syscall(MkDir(ROOT_INO, b"d%d" % i, 0o755))).inode
                for j in range(20):
                    h, _ = await k.syscall(Create(d, b"f%d" % j, 0o644, os.O_WRONLY | os.O_CREAT))
                    await k.syscall(Release(h))
            for n in range(200):  # every create retires the least recently used vnode
                h, _ = await k.syscall(
                    Create(ROOT_INO, b"g%d" % n, 0o644, os.O_WRONLY | os.O_CREAT)
                )
                await k.syscall(Release(h))
            gc.collect()
            kinds = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            gc.collect()
    assert not kinds & {"_Cell", "ActorRef", "ChildSpec", "Directory", "NameIndex", "VnodeActor"}, (
        kinds
    )
