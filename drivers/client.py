"""BlockDevice: the convenience client of a driver (a thin layer over ``call``).

    dev = BlockDevice(ref)
    data = await dev.read(offset, length)     # bytes or read-only memoryview
    await dev.prefetch(offset, length)        # a hint: that range is read next
    await dev.write(offset, data)
    await dev.flush()
    await dev.discard(offset, length)
    info = await dev.info()                    # DeviceInfo(size, block_size, read_only)

Every method is exactly ``await call(ref, <message>)``: errors are the driver's
``OSError`` replies. ``subscribe(channel)`` asks the driver to publish its events there.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from chanos.drivers.protocol import (
    DeviceInfo,
    Discard,
    Flush,
    Info,
    Prefetch,
    Read,
    Subscribe,
    Unsubscribe,
    Write,
)
from chanos.personality import call


class BlockDevice:
    # The methods return the call's coroutine instead of awaiting it in a coroutine of
    # their own: ``await dev.read(...)`` is then exactly ``await call(...)``, one frame less.
    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def read(self, offset: int, length: int) -> Awaitable[bytes | memoryview]:
        return call(self.ref, Read(offset, length))

    def prefetch(self, offset: int, length: int) -> Awaitable[None]:
        return call(self.ref, Prefetch(offset, length))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> Awaitable[None]:
        return call(self.ref, Write(offset, data))

    def flush(self) -> Awaitable[None]:
        return call(self.ref, Flush())

    def discard(self, offset: int, length: int) -> Awaitable[None]:
        return call(self.ref, Discard(offset, length))

    def info(self) -> Awaitable[DeviceInfo]:
        return call(self.ref, Info())

    def subscribe(self, events: Any) -> Awaitable[None]:
        return call(self.ref, Subscribe(events))

    def unsubscribe(self, events: Any) -> Awaitable[None]:
        return call(self.ref, Unsubscribe(events))
