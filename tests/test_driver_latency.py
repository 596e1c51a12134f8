"""LatencyDriver: service times from the model, a single queue, data passed through."""

from __future__ import annotations

import pytest
import trio
from chanos.drivers import BlockDevice, LatencyDriver, RamDiskDriver
from chanos.personality import ChildSpec, open_supervisor


@pytest.fixture
async def sup():
    async with open_supervisor(name="test") as s:
        yield s


async def slow_stack(sup, **kw):
    ram = await sup.start(ChildSpec(name="ram", factory=lambda: RamDiskDriver(1 << 20)))
    ref = await sup.start(ChildSpec(name="slow", factory=lambda: LatencyDriver(ram, **kw)))
    return BlockDevice(ref), BlockDevice(ram)


async def test_service_time_model(sup, autojump_clock):
    dev, ram = await slow_stack(sup, fixed=0.005, per_byte=1e-6, flush=0.020)
    t0 = trio.current_time()
    await dev.write(0, b"x" * 4000)
    t1 = trio.current_time()
    assert t1 - t0 == pytest.approx(0.005 + 0.004)
    assert bytes(await dev.read(0, 4000)) == b"x" * 4000
    assert trio.current_time() - t1 == pytest.approx(0.009)
    t2 = trio.current_time()
    await dev.flush()
    assert trio.current_time() - t2 == pytest.approx(0.020)
    assert bytes(await ram.read(0, 4)) == b"xxxx"  # passed through
    info = await dev.info()
    assert info.size == 1 << 20


async def test_one_queue_requests_wait_for_each_other(sup, autojump_clock):
    dev, _ = await slow_stack(sup, fixed=0.010)
    done = []

    async def client(i):
        await dev.read(i * 512, 512)
        done.append(trio.current_time())

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(client, i)
    assert [round(t - t0, 6) for t in sorted(done)] == [0.01, 0.02, 0.03, 0.04, 0.05]


def test_negative_latency_is_refused():
    with pytest.raises(ValueError):
        LatencyDriver(None, fixed=-1)
