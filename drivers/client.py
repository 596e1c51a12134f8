"""BlockDevice: the convenience client of a driver (a thin layer over ``call``).

    dev = BlockDevice(ref)
    data = await dev.read(offset, length)     # bytes or read-only memoryview
    await dev.write(offset, data)
    await dev.flush()
    await dev.discard(offset, length)
    info = await dev.info()                    # DeviceInfo(size, block_size, read_only)

Every method is exactly ``await call(ref, <message>)``: errors are the driver's
``OSError`` replies. ``subscribe(channel)`` asks the driver to publish its events there.
"""

from __future__ import annotations

from typing import Any

from chanos.drivers.protocol import (
    DeviceInfo,
    Discard,
    Flush,
    Info,
    Read,
    Subscribe,
    Unsubscribe,
    Write,
)
from chanos.personality import call


class BlockDevice:
    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        return await call(self.ref, Read(offset, length))

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        await call(self.ref, Write(offset, data))

    async def flush(self) -> None:
        await call(self.ref, Flush())

    async def discard(self, offset: int, length: int) -> None:
        await call(self.ref, Discard(offset, length))

    async def info(self) -> DeviceInfo:
        return await call(self.ref, Info())

    async def subscribe(self, events: Any) -> None:
        await call(self.ref, Subscribe(events))

    async def unsubscribe(self, events: Any) -> None:
        await call(self.ref, Unsubscribe(events))
