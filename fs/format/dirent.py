"""Directory blocks: ext4 directory entries (v2, with file_type) and htree nodes.

A directory block is a chain of records covering the whole block, each
``inode (le32), rec_len (le16), name_len (u8), file_type (u8), name``; ``rec_len``
is a multiple of 4, at least ``rec_len_for(name_len)``, and the last record ends
exactly at the block end.  A record with inode 0 is unused space.

Editing follows the Linux ext4 driver, so that entries never move and a directory
offset (block, byte in block) names the same entry for the entry's whole life:
- insert: the first record with enough slack is split (a live record keeps exactly
  its own size and the new entry takes the rest) or, if unused, reused whole;
- delete: the record is merged into the previous record of the same block, or, if it
  is the first record of the block, its inode is zeroed.
Functions taking a ``bytearray`` edit it in place.

Htree (dir_index) directories: block 0 is a *dx_root* whose "." and ".." records,
seen by a linear scan, cover the whole block (".." has rec_len = block size - 12);
interior *dx_node* blocks are one unused record of rec_len = block size.  So a linear
scan of an indexed directory sees exactly its entries; ``parse_dx_root`` and
``parse_dx_node`` decode the index for whoever wants it.

The record header is declared with construct (``DIRENT_HEADER_STRUCT``); block scans
use the equivalent ``struct`` format (checked at import) because a directory block
holds up to hundreds of records and the compiled construct costs ~2.7 us per record
against ~0.1 us.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from chanos.fs.format._record import CorruptError
from chanos.fs.format.inode import (  # re-exported: dirent file types live with the mode
    FT_BLKDEV,
    FT_CHRDEV,
    FT_DIR,
    FT_FIFO,
    FT_MAX,
    FT_REG_FILE,
    FT_SOCK,
    FT_SYMLINK,
    FT_UNKNOWN,
    file_type_from_mode,
    mode_format_from_file_type,
)
from construct import Int8ul, Int16ul, Int32ul, Struct

__all__ = [
    "FT_BLKDEV",
    "FT_CHRDEV",
    "FT_DIR",
    "FT_FIFO",
    "FT_MAX",
    "FT_REG_FILE",
    "FT_SOCK",
    "FT_SYMLINK",
    "FT_UNKNOWN",
    "DirRecord",
    "DxEntry",
    "DxNode",
    "DxRoot",
    "check_name",
    "delete",
    "dotdot_inode",
    "dx_select",
    "empty_block",
    "file_type_from_mode",
    "find",
    "has_room",
    "insert",
    "is_empty_block",
    "live_entries",
    "mode_format_from_file_type",
    "new_dir_block",
    "parse_dx_node",
    "parse_dx_root",
    "rec_len_for",
    "records",
    "set_dotdot",
    "set_entry",
]

NAME_MAX = 255
HEADER_SIZE = 8
MIN_REC_LEN = 12  # rec_len_for(1)
CSUM_TAIL_FT = 0xDE  # fake file_type of the metadata_csum tail record
CSUM_TAIL_SIZE = 12

DIRENT_HEADER_STRUCT = Struct(
    "inode" / Int32ul,
    "rec_len" / Int16ul,
    "name_len" / Int8ul,
    "file_type" / Int8ul,
)
DIRENT_HEADER = DIRENT_HEADER_STRUCT.compile()
_HDR = struct.Struct("<IHBB")
_REC_LEN = struct.Struct("<H")
assert _HDR.size == DIRENT_HEADER_STRUCT.sizeof() == HEADER_SIZE

DX_ROOT_INFO_STRUCT = Struct(
    "reserved_zero" / Int32ul,
    "hash_version" / Int8ul,
    "info_length" / Int8ul,  # 8
    "indirect_levels" / Int8ul,
    "unused_flags" / Int8ul,
)
DX_COUNTLIMIT_STRUCT = Struct(
    "limit" / Int16ul,
    "count" / Int16ul,
    "block" / Int32ul,  # the "hash 0" entry's block: the countlimit shares entry 0
)
DX_ENTRY_STRUCT = Struct("hash" / Int32ul, "block" / Int32ul)
_DX_ROOT_INFO = DX_ROOT_INFO_STRUCT.compile()
_DX_ENTRY = struct.Struct("<II")
_COUNTLIMIT = struct.Struct("<HH")
assert _DX_ENTRY.size == DX_ENTRY_STRUCT.sizeof() == DX_COUNTLIMIT_STRUCT.sizeof()

DX_HASH_LEGACY = 0
DX_HASH_HALF_MD4 = 1
DX_HASH_TEA = 2
DX_HASH_LEGACY_UNSIGNED = 3
DX_HASH_HALF_MD4_UNSIGNED = 4
DX_HASH_TEA_UNSIGNED = 5
DX_HASH_SIPHASH = 6
DX_ROOT_INFO_OFFSET = 24
DX_ROOT_ENTRIES_OFFSET = 32
DX_NODE_ENTRIES_OFFSET = 8


def rec_len_for(name_len: int) -> int:
    """Smallest record for a name of ``name_len`` bytes: 8 + name, rounded up to 4."""
    return (HEADER_SIZE + name_len + 3) & ~3


def rec_len_from_disk(raw: int, block_size: int) -> int:
    """Decode rec_len; 64 KiB blocks store 65536 as 65535 (or 0)."""
    if block_size < 65536:
        return raw
    if raw in (65535, 0):
        return block_size
    return (raw & 65532) | ((raw & 3) << 16)


def rec_len_to_disk(length: int, block_size: int) -> int:
    if length < 65536:
        return length
    if length == block_size:
        return 65535
    return (length & 65532) | ((length >> 16) & 3)


def check_name(name: bytes) -> None:
    """Validate a directory entry name: 1..255 bytes, no "/" or NUL."""
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    if not name or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, f"invalid name {name!r}")


class DirRecord(NamedTuple):
    """One record of a directory block; ``offset`` is its byte offset in the block."""

    offset: int
    inode: int
    rec_len: int
    name: bytes
    file_type: int

    @property
    def used_len(self) -> int:
        """Bytes the record needs (0 for an unused record)."""
        return rec_len_for(len(self.name)) if self.inode else 0

    @property
    def slack(self) -> int:
        return self.rec_len - self.used_len


def _headers(
    block: bytes | bytearray | memoryview, max_inode: int = 0
) -> Iterator[tuple[int, int, int, int, int]]:
    """(offset, inode, rec_len, name_len, file_type) of every record, checked."""
    size = len(block)
    off = 0
    unpack = _HDR.unpack_from
    big = size >= 65536
    while off < size:
        if off + HEADER_SIZE > size:
            raise CorruptError(f"directory entry header overruns block at {off}")
        ino, rl, nl, ft = unpack(block, off)
        if big:
            rl = rec_len_from_disk(rl, size)
        if rl < MIN_REC_LEN or rl & 3:
            raise CorruptError(f"bad directory rec_len {rl} at offset {off}")
        if rl < (nl + 11) & ~3:  # rec_len_for(nl), inlined: this is the hot loop
            raise CorruptError(f"rec_len {rl} too small for name_len {nl} at offset {off}")
        if off + rl > size:
            raise CorruptError(f"directory entry overruns block at offset {off}")
        if max_inode and ino > max_inode:
            raise CorruptError(f"directory entry inode {ino} out of range at offset {off}")
        yield off, ino, rl, nl, ft
        off += rl


def records(block: bytes | bytearray | memoryview, max_inode: int = 0) -> Iterator[DirRecord]:
    """Every record of the block, unused ones included, in order.

    Checks each record as the kernel's ``__ext4_check_dir_entry`` does and raises
    CorruptError on a rec_len below 12, not a multiple of 4, too small for the name,
    or running past the block; and, if ``max_inode`` is given, an inode number above it.
    """
    for off, ino, rl, nl, ft in _headers(block, max_inode):
        yield DirRecord(off, ino, rl, bytes(block[off + 8 : off + 8 + nl]), ft)


def live_entries(block: bytes | bytearray | memoryview, max_inode: int = 0) -> list[DirRecord]:
    """The records naming an inode (inode != 0), in block order ("." and ".." included)."""
    return [
        DirRecord(off, ino, rl, bytes(block[off + 8 : off + 8 + nl]), ft)
        for off, ino, rl, nl, ft in _headers(block, max_inode)
        if ino
    ]


def find(block: bytes | bytearray | memoryview, name: bytes) -> DirRecord | None:
    """The live record called ``name``, or None.

    Like the kernel, records are checked as the scan passes them; the scan stops at
    the match, so damage after it is found by a later scan.
    """
    want = len(name)
    for off, ino, rl, nl, ft in _headers(block):
        if ino and nl == want and block[off + 8 : off + 8 + nl] == name:
            return DirRecord(off, ino, rl, bytes(name), ft)
    return None


def entry_at(block: bytes | bytearray | memoryview, offset: int) -> tuple[int, int, bytes]:
    """(inode, file_type, name) of the record at ``offset``, a record boundary the caller
    knows (no checks: a directory reads back entries it has indexed)."""
    ino, _rl, nl, ft = _HDR.unpack_from(block, offset)
    return ino, ft, bytes(block[offset + 8 : offset + 8 + nl])


def _is_csum_tail(off: int, ino: int, rl: int, nl: int, ft: int, size: int) -> bool:
    return (
        ino == 0
        and rl == CSUM_TAIL_SIZE
        and off == size - CSUM_TAIL_SIZE
        and ft == CSUM_TAIL_FT
        and nl == 0
    )


def _write_entry(block: bytearray, off: int, ino: int, rec_len: int, name: bytes, ft: int) -> None:
    _HDR.pack_into(block, off, ino, rec_len_to_disk(rec_len, len(block)), len(name), ft)
    end = off + 8 + len(name)
    block[off + 8 : end] = name
    pad = off + rec_len_for(len(name))
    block[end:pad] = bytes(pad - end)


def _slot(block: bytes | bytearray | memoryview, need: int) -> tuple[int, int, int] | None:
    """First record with ``need`` free bytes: (offset, rec_len, bytes it keeps).

    The records are checked as ``_headers`` checks them; the loop is written out here
    because every insert scans a block this way (a generator costs twice as much).
    """
    size = len(block)
    if size >= 65536:  # rec_len encoding of huge blocks: the general path
        for off, ino, rl, nl, ft in _headers(block):
            if ino:
                used = max((nl + 11) & ~3, MIN_REC_LEN)
                if rl - used >= need:
                    return off, rl, used
            elif rl >= need and not _is_csum_tail(off, ino, rl, nl, ft, size):
                return off, rl, 0
        return None
    unpack = _HDR.unpack_from
    off = 0
    while off < size:
        if off + HEADER_SIZE > size:
            raise CorruptError(f"directory entry header overruns block at {off}")
        ino, rl, nl, ft = unpack(block, off)
        used = (nl + 11) & ~3
        if rl < MIN_REC_LEN or rl & 3:
            raise CorruptError(f"bad directory rec_len {rl} at offset {off}")
        if rl < used:
            raise CorruptError(f"rec_len {rl} too small for name_len {nl} at offset {off}")
        if off + rl > size:
            raise CorruptError(f"directory entry overruns block at offset {off}")
        if ino:
            # A live record keeps at least the smallest valid rec_len, even one whose
            # name_len is 0 (corrupt, but readable: splitting it to 8 bytes would not be).
            if rl - max(used, MIN_REC_LEN) >= need:
                return off, rl, max(used, MIN_REC_LEN)
        elif rl >= need and not _is_csum_tail(off, ino, rl, nl, ft, size):
            return off, rl, 0
        off += rl
    return None


def insert(block: bytearray, ino: int, name: bytes, file_type: int) -> int | None:
    """Add an entry in the first record with enough room; its offset, or None if full.

    Never moves existing entries.  Does not check for duplicates (use ``find``).
    """
    check_name(name)
    if ino <= 0:
        raise ValueError("directory entry needs an inode number")
    slot = _slot(block, rec_len_for(len(name)))
    if slot is None:
        return None
    off, rl, used = slot
    if used:
        # Split: the live record keeps exactly its own size, the new entry the rest.
        _REC_LEN.pack_into(block, off + 4, rec_len_to_disk(used, len(block)))
    _write_entry(block, off + used, ino, rl - used, name, file_type)
    return off + used


def has_room(block: bytes | bytearray, name_len: int) -> bool:
    """Whether ``insert`` of a name of this length would succeed."""
    return _slot(block, rec_len_for(name_len)) is not None


def delete(block: bytearray, offset: int) -> DirRecord:
    """Remove the live record at ``offset``; return it as it was.

    Merges it into the previous record, or zeroes its inode if it is the block's first
    record.  The freed bytes are wiped, as ext4 does.
    """
    size = len(block)
    prev_off = prev_rl = -1
    for off, ino, rl, nl, ft in _headers(block):
        if off == offset:
            if not ino:
                break
            gone = DirRecord(off, ino, rl, bytes(block[off + 8 : off + 8 + nl]), ft)
            if prev_off < 0:
                # Keep rec_len; wipe inode, name_len, file_type and the name.
                block[off : off + 4] = bytes(4)
                block[off + 6 : off + rl] = bytes(rl - 6)
            else:
                _REC_LEN.pack_into(block, prev_off + 4, rec_len_to_disk(prev_rl + rl, size))
                block[off : off + rl] = bytes(rl)
            return gone
        if off > offset:
            break
        prev_off, prev_rl = off, rl
    raise CorruptError(f"no directory entry at offset {offset}")


def set_entry(block: bytearray, offset: int, ino: int, file_type: int) -> None:
    """Point the live record at ``offset`` to another inode (rename over a target)."""
    old_ino, _rl, _nl, _ft = _HDR.unpack_from(block, offset)
    if not old_ino:
        raise CorruptError(f"no directory entry at offset {offset}")
    struct.pack_into("<I", block, offset, ino)
    block[offset + 7] = file_type


def empty_block(block_size: int) -> bytearray:
    """A directory block holding one unused record spanning the block."""
    block = bytearray(block_size)
    _HDR.pack_into(block, 0, 0, rec_len_to_disk(block_size, block_size), 0, 0)
    return block


def new_dir_block(block_size: int, ino: int, parent: int, filetype: bool = True) -> bytearray:
    """The first block of a new directory: "." (rec_len 12) and ".." (the rest)."""
    block = bytearray(block_size)
    ft = FT_DIR if filetype else 0
    _write_entry(block, 0, ino, MIN_REC_LEN, b".", ft)
    _write_entry(block, MIN_REC_LEN, parent, block_size - MIN_REC_LEN, b"..", ft)
    return block


def dotdot_inode(block: bytes | bytearray | memoryview) -> int:
    """The parent inode recorded in a directory's first block (the ".." record)."""
    recs = records(block)
    dot = next(recs, None)
    dotdot = next(recs, None)
    if dot is None or dotdot is None or dot.name != b"." or dotdot.name != b"..":
        raise CorruptError("directory block 0 does not start with '.' and '..'")
    return dotdot.inode


def set_dotdot(block: bytearray, parent: int) -> None:
    """Rewrite the ".." record of a directory's first block."""
    recs = records(block)
    next(recs, None)
    dotdot = next(recs, None)
    if dotdot is None or dotdot.name != b"..":
        raise CorruptError("directory block 0 has no '..' entry")
    struct.pack_into("<I", block, dotdot.offset, parent)


def is_empty_block(block: bytes | bytearray | memoryview, first: bool) -> bool:
    """No entries besides "." and ".." (``first``: block 0 of the directory)."""
    return not any(r.inode and not (first and r.name in (b".", b"..")) for r in records(block))


# --- htree ---------------------------------------------------------------------------------


class DxEntry(NamedTuple):
    hash: int
    block: int  # logical block of the directory


@dataclass(frozen=True, slots=True)
class DxRoot:
    hash_version: int
    indirect_levels: int
    limit: int
    entries: tuple[DxEntry, ...]  # entries[0].hash is 0 on disk (it holds count/limit)


@dataclass(frozen=True, slots=True)
class DxNode:
    limit: int
    entries: tuple[DxEntry, ...]


def dx_root_limit(block_size: int, csum: bool = False) -> int:
    return (block_size - DX_ROOT_ENTRIES_OFFSET - (8 if csum else 0)) // 8


def dx_node_limit(block_size: int, csum: bool = False) -> int:
    return (block_size - DX_NODE_ENTRIES_OFFSET - (8 if csum else 0)) // 8


def _dx_entries(block: bytes | bytearray | memoryview, off: int) -> tuple[int, tuple[DxEntry, ...]]:
    limit, count = _COUNTLIMIT.unpack_from(block, off)
    if count == 0 or count > limit or off + limit * 8 > len(block):
        raise ValueError("bad dx count/limit")
    first_block = struct.unpack_from("<I", block, off + 4)[0]
    ents = [DxEntry(0, first_block)]
    for i in range(1, count):
        ents.append(DxEntry(*_DX_ENTRY.unpack_from(block, off + 8 * i)))
    return limit, tuple(ents)


def parse_dx_root(block: bytes | bytearray | memoryview, largedir: bool = False) -> DxRoot | None:
    """Decode block 0 of an INDEX_FL directory; None if it is not a valid dx_root."""
    size = len(block)
    try:
        recs = records(block)
        dot, dotdot = next(recs), next(recs)
    except (CorruptError, StopIteration):
        return None
    if dot.name != b"." or dot.rec_len != MIN_REC_LEN or dotdot.name != b"..":
        return None
    if dotdot.rec_len != size - MIN_REC_LEN:
        return None
    info = _DX_ROOT_INFO.parse(bytes(block[DX_ROOT_INFO_OFFSET:DX_ROOT_ENTRIES_OFFSET]))
    if info.reserved_zero or info.info_length != 8 or info.hash_version > DX_HASH_SIPHASH:
        return None
    if info.indirect_levels > (2 if largedir else 1):
        return None
    try:
        limit, ents = _dx_entries(block, DX_ROOT_ENTRIES_OFFSET)
    except ValueError:
        return None
    if limit not in (dx_root_limit(size), dx_root_limit(size, csum=True)):
        return None
    return DxRoot(info.hash_version, info.indirect_levels, limit, ents)


def parse_dx_node(block: bytes | bytearray | memoryview) -> DxNode | None:
    """Decode an htree interior block; None if the block is not one.

    A dx_node is an unused record spanning the block (what a linear scan sees: no
    entries) followed by the count/limit header and the index entries.
    """
    size = len(block)
    ino, rl, nl, _ft = _HDR.unpack_from(block, 0)
    if ino or nl or rec_len_from_disk(rl, size) != size:
        return None
    try:
        limit, ents = _dx_entries(block, DX_NODE_ENTRIES_OFFSET)
    except ValueError:
        return None
    if limit not in (dx_node_limit(size), dx_node_limit(size, csum=True)):
        return None
    return DxNode(limit, ents)


def dx_select(entries: tuple[DxEntry, ...], hash_: int) -> int:
    """Index of the entry whose subtree holds ``hash_`` (the last with hash <= it).

    ``entries[0]`` covers everything below ``entries[1].hash``.  The low bit of an
    entry's hash is the collision flag and is ignored for the comparison, as the
    kernel's dx_probe does (names hash to even values).
    """
    lo, hi = 1, len(entries) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if entries[mid].hash & ~1 > hash_:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo - 1
