"""FaultInjectionDriver: injected errors, read-only switch, crash simulation, write log."""

from __future__ import annotations

import errno
import random

import pytest
from chanos.drivers import (
    BlockDevice,
    ClearErrors,
    Crash,
    FaultInjectionDriver,
    GetLog,
    GetStats,
    ImageFileDriver,
    InjectError,
    IOErrorEvent,
    LoggedFlush,
    RamDiskDriver,
    ReadOnlyEvent,
    Remove,
    RemovedEvent,
    SetReadOnly,
)
from chanos.drivers.writelog import SECTOR
from chanos.personality import Channel, ChildSpec, call, open_supervisor
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import ROOT_INO, Lookup, MkDir
from conftest import assert_fsck_clean, k_read_file, k_write_file

SIZE = 256 * 1024


@pytest.fixture
async def sup():
    async with open_supervisor(name="test") as s:
        yield s


async def stack(sup, data=None, **kw):
    """A RAM disk with a fault-injection driver on top: (fault ref, fault dev, ram dev)."""
    ram = await sup.start(
        ChildSpec(name="ram", factory=lambda: RamDiskDriver(data if data else SIZE))
    )
    fault = await sup.start(
        ChildSpec(name="fault", factory=lambda: FaultInjectionDriver(ram, **kw))
    )
    return fault, BlockDevice(fault), BlockDevice(ram)


async def expect_errno(code, coro):
    with pytest.raises(OSError) as ei:
        await coro
    assert ei.value.errno == code
    return ei.value


# ------------------------------------------------------------------ injected errors


async def test_error_by_range(sup):
    ref, dev, _ = await stack(sup)
    events = Channel(8)
    await dev.subscribe(events)
    await call(ref, InjectError(op="read", start=8192, end=12288))
    await dev.read(0, 8192)
    await dev.read(12288, 4096)
    await expect_errno(errno.EIO, dev.read(12000, 512))  # overlaps the range's start
    await dev.write(8192, b"w" * 4096)  # only reads fail
    assert events.receive_nowait() == IOErrorEvent("fault", "read", 12000, 512, errno.EIO)
    await call(ref, ClearErrors())
    assert bytes(await dev.read(8192, 4096)) == b"w" * 4096


async def test_error_by_count_with_skip(sup):
    ref, dev, ram = await stack(sup)
    await call(ref, InjectError(op="write", skip=2, count=2, errno=errno.ENOSPC))
    outcomes = []
    for i in range(6):
        try:
            await dev.write(i * 512, bytes([i + 1]) * 512)
            outcomes.append("ok")
        except OSError as e:
            outcomes.append(errno.errorcode[e.errno])
    assert outcomes == ["ok", "ok", "ENOSPC", "ENOSPC", "ok", "ok"]
    await dev.flush()
    # a failed write changed nothing
    data = bytes(await ram.read(0, 6 * 512))
    for i in range(6):
        want = bytes(512) if i in (2, 3) else bytes([i + 1]) * 512
        assert data[i * 512 : (i + 1) * 512] == want
    assert (await call(ref, GetStats())).injected == 2


async def test_random_errors_repeat_with_the_seed(sup):
    patterns = []
    for run in range(2):
        ram = await sup.start(ChildSpec(name=f"ram{run}", factory=lambda: RamDiskDriver(SIZE)))
        f = await sup.start(
            ChildSpec(name=f"f{run}", factory=lambda r=ram: FaultInjectionDriver(r))
        )
        await call(f, InjectError(op="read", probability=0.3, seed=42))
        dev = BlockDevice(f)
        pattern = []
        for i in range(60):
            try:
                await dev.read(i * 512, 512)
                pattern.append(0)
            except OSError:
                pattern.append(1)
        patterns.append(pattern)
    assert patterns[0] == patterns[1]
    assert 5 < sum(patterns[0]) < 40


async def test_flush_error_keeps_writes_unflushed(sup):
    ref, dev, ram = await stack(sup)
    rule = await call(ref, InjectError(op="flush", count=1))
    await dev.write(0, b"p" * 512)
    await expect_errno(errno.EIO, dev.flush())
    assert bytes(await ram.read(0, 512)) == bytes(512)  # still only in the volatile cache
    await call(ref, ClearErrors(rule))
    await dev.flush()
    assert bytes(await ram.read(0, 512)) == b"p" * 512


async def test_bad_rule_is_refused(sup):
    ref, _dev, _ = await stack(sup)
    await expect_errno(errno.EINVAL, call(ref, InjectError(op="sideways")))


# ------------------------------------------------------------------ read-only, removal


async def test_read_only_switch(sup):
    ref, dev, _ = await stack(sup)
    events = Channel(8)
    await dev.subscribe(events)
    await call(ref, SetReadOnly(True))
    assert isinstance(events.receive_nowait(), ReadOnlyEvent)
    assert (await dev.info()).read_only
    await expect_errno(errno.EROFS, dev.write(0, b"x"))
    await expect_errno(errno.EROFS, dev.discard(0, 512))
    await dev.read(0, 512)
    await call(ref, SetReadOnly(False))
    await dev.write(0, b"x")


async def test_remove(sup):
    ref, dev, ram = await stack(sup)
    events = Channel(8)
    await dev.subscribe(events)
    await call(ref, Remove())
    assert isinstance(events.receive_nowait(), RemovedEvent)
    for op in (dev.read(0, 1), dev.write(0, b"x"), dev.flush(), dev.info()):
        await expect_errno(errno.ENODEV, op)
    await ram.read(0, 1)  # the inner device is untouched


# ------------------------------------------------------------------ crash simulation


async def test_reads_see_unflushed_writes(sup):
    _ref, dev, ram = await stack(sup)
    await dev.write(1000, b"a" * 3000)
    await dev.write(2000, b"b" * 10)
    got = bytes(await dev.read(0, 8192))
    assert got[1000:2000] == b"a" * 1000 and got[2000:2010] == b"b" * 10
    assert got[2010:4000] == b"a" * 1990 and got[4000:] == bytes(4192)
    assert bytes(await ram.read(1000, 10)) == bytes(10)  # not on the medium yet


async def test_crash_drops_unflushed_writes(sup):
    ref, dev, ram = await stack(sup)
    events = Channel(8)
    await dev.subscribe(events)
    await dev.write(0, b"durable!" * 64)
    await dev.flush()
    await dev.write(0, b"lost" * 128)
    await dev.write(8192, b"lost" * 128)
    outcome = await call(ref, Crash())
    assert outcome.kept == () and outcome.dropped == (0, 1)
    assert bytes(await ram.read(0, 512)) == b"durable!" * 64
    assert bytes(await ram.read(8192, 512)) == bytes(512)
    assert isinstance(events.receive_nowait(), RemovedEvent)
    await expect_errno(errno.ENODEV, dev.read(0, 512))


async def test_crash_keep_all_is_a_flush(sup):
    ref, dev, ram = await stack(sup)
    for i in range(10):
        await dev.write(i * 1024, bytes([i + 1]) * 1024)
    outcome = await call(ref, Crash(keep=1.0))
    assert outcome.kept == tuple(range(10))
    for i in range(10):
        assert bytes(await ram.read(i * 1024, 1024)) == bytes([i + 1]) * 1024


async def test_crash_subset_and_torn_write(sup):
    base = bytes(SIZE)
    for seed in range(6):
        ram = await sup.start(ChildSpec(name=f"ram{seed}", factory=lambda: RamDiskDriver(base)))
        f = await sup.start(
            ChildSpec(name=f"f{seed}", factory=lambda r=ram: FaultInjectionDriver(r))
        )
        dev, inner = BlockDevice(f), BlockDevice(ram)
        writes = [(i * 4096, bytes([i + 1]) * 4096) for i in range(12)]
        for off, data in writes:
            await dev.write(off, data)
        outcome = await call(f, Crash(keep=0.5, seed=seed, tear=True))
        assert outcome.torn is not None
        image = bytes(await inner.read(0, 12 * 4096))
        for i, (off, data) in enumerate(writes):
            got = image[off : off + 4096]
            if i in outcome.kept:
                assert got == data
            elif i in outcome.dropped:
                assert got == bytes(4096)
            else:  # torn: exactly the chosen sectors landed
                assert i == outcome.torn
                for s in range(8):
                    sector = off // SECTOR + s
                    piece = got[s * SECTOR : (s + 1) * SECTOR]
                    landed = sector in outcome.torn_sectors
                    assert piece == (data[:SECTOR] if landed else bytes(SECTOR))
                assert 0 < len(outcome.torn_sectors) < 8


# ------------------------------------------------------------------ write log


async def test_write_log_rebuilds_every_prefix(sup):
    base = random.Random(5).randbytes(SIZE)
    ref, dev, _ram = await stack(sup, data=base, record=True)
    rng = random.Random(6)
    states = [base]  # device contents after each logged entry
    model = bytearray(base)
    for _ in range(40):
        if rng.random() < 0.2:
            await dev.flush()
        elif rng.random() < 0.1:
            off, n = rng.randrange(0, SIZE - 8192), rng.randrange(1, 8192)
            await dev.discard(off, n)
            model[off : off + n] = bytes(n)
        else:
            off, n = rng.randrange(0, SIZE - 8192), rng.randrange(1, 8192)
            data = rng.randbytes(n)
            await dev.write(off, data)
            model[off : off + n] = data
        states.append(bytes(model))
    log = await call(ref, GetLog())
    assert len(log) == 40 and log.base == base
    for n in range(len(log) + 1):
        assert log.image_at(n) == states[n]
    assert bytes(await dev.read(0, SIZE)) == states[-1]


async def test_log_crash_image_matches_simulated_crash(sup):
    """The crash image rebuilt from the log equals what Crash left on the medium."""
    ref, dev, ram = await stack(sup, record=True)
    rng = random.Random(11)
    for i in range(30):
        await dev.write(rng.randrange(0, SIZE - 4096), rng.randbytes(rng.randrange(1, 4096)))
        if i % 9 == 8:
            await dev.flush()
    log = await call(ref, GetLog())
    assert isinstance(log.entries[9], LoggedFlush)
    expected, outcome = log.crash_image(len(log), keep=0.4, seed=3, tear=True)
    actual = await call(ref, Crash(keep=0.4, seed=3, tear=True))
    assert actual == outcome
    assert bytes(await ram.read(0, SIZE)) == expected


async def test_write_through_mode_and_failed_writes_are_not_logged(sup):
    ref, dev, ram = await stack(sup, volatile=False, record=True)
    await call(ref, InjectError(op="write", start=4096, end=8192))
    await dev.write(0, b"t" * 512)
    assert bytes(await ram.read(0, 512)) == b"t" * 512  # straight through
    await expect_errno(errno.EIO, dev.write(4096, b"u" * 512))
    log = await call(ref, GetLog())
    assert [(e.offset, e.data[:1]) for e in log.entries] == [(0, b"t")]


async def test_log_not_recording_is_an_error(sup):
    ref, _dev, _ = await stack(sup)
    await expect_errno(errno.EINVAL, call(ref, GetLog()))


async def test_fault_over_an_image_file(sup, tmp_path):
    path = tmp_path / "f.img"
    path.write_bytes(bytes(SIZE))
    img = await sup.start(ChildSpec(name="img", factory=lambda: ImageFileDriver(path)))
    f = await sup.start(ChildSpec(name="f", factory=lambda: FaultInjectionDriver(img)))
    dev = BlockDevice(f)
    await dev.write(0, b"first" * 100)
    await dev.flush()
    await dev.write(4096, b"second" * 100)
    await call(f, Crash())
    await BlockDevice(img).flush()
    data = path.read_bytes()
    assert data[:500] == b"first" * 100 and data[4096:4696] == bytes(600)


# ------------------------------------------------------------------ with the file system


async def test_write_log_of_a_mounted_file_system(ext4_image, tmp_path):
    """The file system on a recording fault driver: the log rebuilds the unmounted image
    exactly; it is e2fsck-clean and mounts with every file intact."""
    img = ext4_image("16M", 4096)
    base = img.read_bytes()
    async with open_supervisor(name="test") as sup:
        ram = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(base)))
        fault = await sup.start(
            ChildSpec(name="fault", factory=lambda: FaultInjectionDriver(ram, record=True))
        )
        async with boot(fault, MountOptions()) as k:
            d = (await k.syscall(MkDir(ROOT_INO, b"d", 0o755))).inode
            for i in range(5):
                await k_write_file(k, d, f"f{i}".encode(), bytes([65 + i]) * (5000 * i + 1))
        log = await call(fault, GetLog())
        assert log.base == base and log.flush_points()
        final = log.image_at()
        assert final == bytes(await BlockDevice(ram).read(0, len(base)))
        out = tmp_path / "rebuilt.img"
        out.write_bytes(final)
        assert_fsck_clean(out)
        # the rebuilt image mounts and holds the files
        ram2 = await sup.start(ChildSpec(name="ram2", factory=lambda: RamDiskDriver(final)))
        async with boot(ram2, MountOptions(read_only=True)) as k:
            d = (await k.syscall(Lookup(ROOT_INO, b"d"))).inode
            for i in range(5):
                ino = (await k.syscall(Lookup(d, f"f{i}".encode()))).inode
                assert await k_read_file(k, ino) == bytes([65 + i]) * (5000 * i + 1)
