"""RamDiskDriver: a block device in memory, for fast tests.

``RamDiskDriver(size)`` is all zeros; ``RamDiskDriver(data)`` starts as a private copy of
``data`` (e.g. an image made by mkfs.ext4 read into memory). Every request completes
inline; reads return a copy (a read-only memoryview of fresh bytes), so a caller never sees
later writes through an old reply. ``snapshot()`` returns the contents as bytes; the
contents survive a supervisor restart only if the factory passes them in again.
"""

from __future__ import annotations

from chanos.drivers.base import BlockDriver


class RamDiskDriver(BlockDriver):
    def __init__(
        self,
        size_or_data: int | bytes | bytearray | memoryview,
        block_size: int = 512,
        name: str = "ramdisk",
    ) -> None:
        super().__init__(name)
        mem = bytearray(size_or_data)  # zeros for a size, a private copy of given bytes
        if block_size <= 0 or len(mem) == 0 or len(mem) % block_size:
            raise ValueError(
                f"RAM disk size {len(mem)} is not a positive whole number of "
                f"{block_size}-byte blocks"
            )
        self.mem = mem
        self.view = memoryview(mem)
        self.size = len(mem)
        self.block_size = block_size

    async def do_read(self, offset: int, length: int) -> memoryview:
        return memoryview(self.view[offset : offset + length].tobytes())

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.view[offset : offset + len(data)] = data

    async def do_flush(self) -> None:
        pass

    async def do_discard(self, offset: int, length: int) -> None:
        self.view[offset : offset + length] = bytes(length)

    def snapshot(self) -> bytes:
        return bytes(self.mem)
