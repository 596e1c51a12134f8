"""Block group descriptors: 32 bytes, or 64 (s_desc_size) with the 64bit feature.

The descriptor table starts in the block after the superblock's block
(``Superblock.gdt_first_block``).  ``GroupDesc`` exposes the lo/hi halves as combined
properties (``block_bitmap``, ``inode_bitmap``, ``inode_table``, ``free_blocks_count``,
``free_inodes_count``, ``used_dirs_count``, ``itable_unused``, ``exclude_bitmap``);
with a 32-byte descriptor the hi halves do not exist and setting a value that needs
them raises ValueError.  Bytes past the 64 known ones (desc_size > 64) are kept raw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from chanos.fs.format._record import CorruptError, Record, field_names
from construct import Int16ul, Int32ul, Struct

BG_INODE_UNINIT = 0x0001  # inode table and bitmap not initialised
BG_BLOCK_UNINIT = 0x0002  # block bitmap not initialised
BG_INODE_ZEROED = 0x0004  # inode table zeroed

GROUP_DESC_STRUCT = Struct(
    "block_bitmap_lo" / Int32ul,  # 0x00
    "inode_bitmap_lo" / Int32ul,
    "inode_table_lo" / Int32ul,
    "free_blocks_count_lo" / Int16ul,  # 0x0C
    "free_inodes_count_lo" / Int16ul,
    "used_dirs_count_lo" / Int16ul,  # 0x10
    "flags" / Int16ul,
    "exclude_bitmap_lo" / Int32ul,
    "block_bitmap_csum_lo" / Int16ul,  # 0x18
    "inode_bitmap_csum_lo" / Int16ul,
    "itable_unused_lo" / Int16ul,
    "checksum" / Int16ul,  # 0x1E
    # --- 64bit feature only (desc_size >= 64) ---
    "block_bitmap_hi" / Int32ul,  # 0x20
    "inode_bitmap_hi" / Int32ul,
    "inode_table_hi" / Int32ul,
    "free_blocks_count_hi" / Int16ul,  # 0x2C
    "free_inodes_count_hi" / Int16ul,
    "used_dirs_count_hi" / Int16ul,  # 0x30
    "itable_unused_hi" / Int16ul,
    "exclude_bitmap_hi" / Int32ul,
    "block_bitmap_csum_hi" / Int16ul,  # 0x38
    "inode_bitmap_csum_hi" / Int16ul,
    "reserved" / Int32ul,  # 0x3C
)
_HI_FIELDS = tuple(n for n in field_names(GROUP_DESC_STRUCT)[12:])


def _combined(lo: str, hi: str, lo_bits: int) -> property:
    mask = (1 << lo_bits) - 1

    def get(self: GroupDesc) -> int:
        return getattr(self, lo) | getattr(self, hi) << lo_bits

    def set_(self: GroupDesc, value: int) -> None:
        top = value >> lo_bits
        if value < 0 or top >> lo_bits:
            raise ValueError(f"{lo[:-3]}: {value} out of range")
        if top and self.size < 64:
            raise ValueError(f"{lo[:-3]}: {value} needs a 64-byte group descriptor")
        setattr(self, lo, value & mask)
        setattr(self, hi, top)

    return property(get, set_, doc=f"{lo[:-3]} (lo | hi << {lo_bits})")


class GroupDesc(Record):
    """One group descriptor.  ``size`` is its on-disk size (32 or desc_size)."""

    __slots__ = (*field_names(GROUP_DESC_STRUCT), "size", "tail")
    _struct = GROUP_DESC_STRUCT

    size: int
    tail: bytes  # bytes past offset 64 when desc_size > 64

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, size: int = 64) -> Self:  # type: ignore[override]
        if size not in (32,) and (size < 64 or size & (size - 1)):
            raise CorruptError(f"bad group descriptor size {size}")
        if len(data) < size:
            raise CorruptError(f"group descriptor: need {size} bytes, got {len(data)}")
        raw = bytes(data[:size])
        obj = super().parse(raw + bytes(64 - size) if size == 32 else raw)
        obj.size = size
        obj.tail = raw[64:]
        return obj

    @classmethod
    def new(cls, size: int = 64, **fields: int) -> Self:  # type: ignore[override]
        obj = cls.parse(bytes(size), size)
        for name, value in fields.items():
            setattr(obj, name, value)
        return obj

    def build(self) -> bytes:
        raw = super().build()
        if self.size == 32:
            if any(getattr(self, n) for n in _HI_FIELDS):
                raise ValueError("32-byte group descriptor with non-zero high halves")
            return raw[:32]
        return raw + self.tail

    def copy(self) -> Self:
        obj = super().copy()
        obj.size = self.size
        obj.tail = self.tail
        return obj

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.build() == other.build()  # type: ignore[union-attr]

    block_bitmap = _combined("block_bitmap_lo", "block_bitmap_hi", 32)
    inode_bitmap = _combined("inode_bitmap_lo", "inode_bitmap_hi", 32)
    inode_table = _combined("inode_table_lo", "inode_table_hi", 32)
    exclude_bitmap = _combined("exclude_bitmap_lo", "exclude_bitmap_hi", 32)
    free_blocks_count = _combined("free_blocks_count_lo", "free_blocks_count_hi", 16)
    free_inodes_count = _combined("free_inodes_count_lo", "free_inodes_count_hi", 16)
    used_dirs_count = _combined("used_dirs_count_lo", "used_dirs_count_hi", 16)
    itable_unused = _combined("itable_unused_lo", "itable_unused_hi", 16)

    @property
    def inode_uninit(self) -> bool:
        return bool(self.flags & BG_INODE_UNINIT)

    @property
    def block_uninit(self) -> bool:
        return bool(self.flags & BG_BLOCK_UNINIT)


GroupDesc._setup()
assert GroupDesc.SIZE == 64


def parse_table(data: bytes | bytearray | memoryview, count: int, size: int) -> list[GroupDesc]:
    """Decode ``count`` consecutive descriptors of ``size`` bytes from ``data``."""
    if len(data) < count * size:
        raise CorruptError(f"group descriptor table: need {count * size} bytes")
    mv = memoryview(data)
    return [GroupDesc.parse(mv[i * size : (i + 1) * size], size) for i in range(count)]


def build_table(descs: Iterable[GroupDesc]) -> bytes:
    """Encode descriptors back to back (pad to the block size yourself)."""
    return b"".join(d.build() for d in descs)
