"""RamDiskDriver, the events channel, and drivers under supervision."""

from __future__ import annotations

import errno

import pytest
import trio
from chanos.drivers import (
    BlockDevice,
    FaultInjectionDriver,
    InjectError,
    IOErrorEvent,
    RamDiskDriver,
    Read,
    Unsubscribe,
    Write,
)
from chanos.personality import CallError, Channel, ChildSpec, WouldBlock, call, open_supervisor


@pytest.fixture
async def sup():
    async with open_supervisor(name="test") as s:
        yield s


async def test_ramdisk_basics(sup):
    ref = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(64 * 1024)))
    dev = BlockDevice(ref)
    info = await dev.info()
    assert (info.size, info.block_size, info.read_only) == (64 * 1024, 512, False)
    await dev.write(100, b"hello")
    reply = await dev.read(98, 9)
    assert bytes(reply) == b"\0\0hello\0\0"
    await dev.write(100, b"HELLO")
    assert bytes(reply) == b"\0\0hello\0\0"  # replies are copies
    await dev.discard(0, 512)
    assert bytes(await dev.read(0, 512)) == bytes(512)
    await dev.flush()
    with pytest.raises(OSError) as ei:
        await call(ref, Read(64 * 1024 - 1, 2))
    assert ei.value.errno == errno.EINVAL


async def test_ramdisk_from_bytes_and_bad_sizes(sup):
    ref = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(b"ab" * 512)))
    assert bytes(await BlockDevice(ref).read(0, 4)) == b"abab"
    with pytest.raises(ValueError, match="whole number"):
        RamDiskDriver(1000)
    with pytest.raises(ValueError, match="whole number"):
        RamDiskDriver(8192, block_size=3000)


async def test_crash_in_a_driver_is_contained(sup):
    """A request that crashes the driver gets CallError; the restarted driver serves on."""
    ref = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(b"\1" * 4096)))
    dev = BlockDevice(ref)
    await dev.write(0, b"\2" * 512)
    with pytest.raises(CallError):
        await call(ref, Write(0, 12345))  # not bytes: a bug in the caller crashes the turn
    # restarted from its factory: fresh contents, same address
    assert bytes(await dev.read(0, 2)) == b"\1\1"


async def test_events_fan_out_and_lost_counts(sup):
    ram = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(8192)))
    ref = await sup.start(ChildSpec(name="f", factory=lambda: FaultInjectionDriver(ram)))
    dev = BlockDevice(ref)
    small, big, closed = Channel(1), Channel(16), Channel(4)
    for ch in (small, big, closed):
        await dev.subscribe(ch)
    closed.close()
    await call(ref, InjectError(op="read"))
    for i in range(3):
        with pytest.raises(OSError):
            await dev.read(i * 512, 512)
    got = [big.receive_nowait() for _ in range(3)]
    assert [e.offset for e in got] == [0, 512, 1024]
    assert all(isinstance(e, IOErrorEvent) and e.lost_before == 0 for e in got)
    first = small.receive_nowait()
    assert first.offset == 0
    with pytest.raises(WouldBlock):
        small.receive_nowait()
    # the subscriber missed two events; the next one that fits says so
    with pytest.raises(OSError):
        await dev.read(1536, 512)
    ev = small.receive_nowait()
    assert (ev.offset, ev.lost_before) == (1536, 2)
    big.receive_nowait()
    await call(ref, Unsubscribe(big))
    with pytest.raises(OSError):
        await dev.read(0, 512)
    with pytest.raises(WouldBlock):
        big.receive_nowait()


async def test_events_can_be_watched_by_an_actor_task(sup):
    """A watcher task blocked on the events channel wakes on a device error."""
    ram = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(8192)))
    ref = await sup.start(ChildSpec(name="f", factory=lambda: FaultInjectionDriver(ram)))
    dev = BlockDevice(ref)
    events = Channel(8)
    await dev.subscribe(events)
    seen = []

    async def watcher():
        seen.append(await events.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.sleep(0.01)
        await call(ref, InjectError(op="write", count=1, errno=errno.EIO))
        with pytest.raises(OSError):
            await dev.write(0, b"x")
    assert seen == [IOErrorEvent("fault", "write", 0, 1, errno.EIO)]
