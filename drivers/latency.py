"""Latency: a driver that makes another driver slow, to study the system on slow devices.

The model is a single-queue device: each request occupies the device for
``fixed + per_byte * length`` seconds (flushes: ``flush`` seconds; discards: ``fixed``)
before it is passed to the inner driver, and requests are served one after another in
arrival order. So a request's latency is its own service time plus the queue in front of
it, which is what a file system sees from a slow disk. Delays are real ``trio.sleep``
calls (other tasks run meanwhile; under ``trio.testing.MockClock`` they cost no wall time).
"""

from __future__ import annotations

from typing import Any

import trio
from chanos.drivers.base import BlockDriver
from chanos.drivers.client import BlockDevice


class LatencyDriver(BlockDriver):
    def __init__(
        self,
        inner: Any,
        *,
        fixed: float = 0.0001,
        per_byte: float = 0.0,
        flush: float | None = None,
        name: str = "latency",
    ) -> None:
        if fixed < 0 or per_byte < 0 or (flush is not None and flush < 0):
            raise ValueError("latencies must not be negative")
        super().__init__(name)
        self.inner = BlockDevice(inner)
        self.fixed = fixed
        self.per_byte = per_byte
        self.flush_delay = fixed if flush is None else flush
        self.busy_time = 0.0  # total simulated service time, for studies

    async def started(self) -> None:
        info = await self.inner.info()
        self.size, self.block_size, self.read_only = info.size, info.block_size, info.read_only

    async def _busy(self, seconds: float) -> None:
        self.busy_time += seconds
        if seconds:
            await trio.sleep(seconds)

    async def do_read(self, offset: int, length: int) -> Any:
        await self._busy(self.fixed + self.per_byte * length)
        return await self.inner.read(offset, length)

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        await self._busy(self.fixed + self.per_byte * len(data))
        await self.inner.write(offset, data)

    async def do_discard(self, offset: int, length: int) -> None:
        await self._busy(self.fixed)
        await self.inner.discard(offset, length)

    async def do_flush(self) -> None:
        await self._busy(self.flush_delay)
        await self.inner.flush()
