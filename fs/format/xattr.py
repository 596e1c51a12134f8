"""Extended attributes: the in-inode area, the xattr block, names, hashes, ACLs.

Layout (as the Linux ext4 driver and e2fsprogs write it):
- In-inode area: starts at ``128 + i_extra_isize`` in the inode record (``Inode.tail``)
  with the magic 0xEA020000, then the entry table; value offsets count from the first
  entry (just after the magic).  Values are packed from the end of the area.
- Xattr block: a 32-byte header (magic, refcount, blocks = 1, hash, checksum), the
  entry table sorted by (name index, name length, name), values packed from the end of
  the block; value offsets count from the block start.
- An entry: name_len (u8), name_index (u8), value_offs (le16), value_inum (le32),
  value_size (le32), hash (le32), name padded to 4 bytes.  The table ends with four
  zero bytes.  Values are padded with zeros to 4 bytes.

Names are stored as (name index, suffix): ``user.foo`` -> (1, b"foo").

Hashes are computed exactly as e2fsprogs ``ext2fs_ext_attr_hash_entry`` and
``ext2fs_ext_attr_block_rehash`` do (e2fsck checks the entry hashes).

Limits give the errors a real file system gives: a name over 255 bytes -> ERANGE, a
value over 64 KiB -> E2BIG, attributes that do not fit -> ENOSPC, an unknown
namespace -> EOPNOTSUPP.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chanos.fs.format._record import CorruptError, Record, field_names
from construct import Bytes, Int8ul, Int16ul, Int32ul, Struct

MAGIC = 0xEA020000
HEADER_SIZE = 32  # block header
ENTRY_HEADER_SIZE = 16
PAD = 4
NAME_MAX = 255
SIZE_MAX = 65536  # XATTR_SIZE_MAX

INDEX_USER = 1
INDEX_POSIX_ACL_ACCESS = 2
INDEX_POSIX_ACL_DEFAULT = 3
INDEX_TRUSTED = 4
INDEX_LUSTRE = 5
INDEX_SECURITY = 6
INDEX_SYSTEM = 7
INDEX_RICHACL = 8

# Most specific first: "system.posix_acl_access" must win over "system.".
PREFIXES: tuple[tuple[bytes, int], ...] = (
    (b"system.posix_acl_default", INDEX_POSIX_ACL_DEFAULT),
    (b"system.posix_acl_access", INDEX_POSIX_ACL_ACCESS),
    (b"system.richacl", INDEX_RICHACL),
    (b"security.", INDEX_SECURITY),
    (b"trusted.", INDEX_TRUSTED),
    (b"system.", INDEX_SYSTEM),
    (b"user.", INDEX_USER),
)
PREFIX_BY_INDEX: dict[int, bytes] = {i: p for p, i in PREFIXES}
PREFIX_BY_INDEX[INDEX_LUSTRE] = b"lustre."
# Indexes whose prefix is a complete name (no suffix follows).
_WHOLE_NAME = {INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, INDEX_RICHACL}

XATTR_BLOCK_HEADER_STRUCT = Struct(
    "magic" / Int32ul,
    "refcount" / Int32ul,
    "blocks" / Int32ul,
    "hash" / Int32ul,
    "checksum" / Int32ul,
    "reserved" / Bytes(12),
)
XATTR_ENTRY_STRUCT = Struct(
    "name_len" / Int8ul,
    "name_index" / Int8ul,
    "value_offs" / Int16ul,
    "value_inum" / Int32ul,
    "value_size" / Int32ul,
    "hash" / Int32ul,
)
_ENTRY = struct.Struct("<BBHIII")
assert _ENTRY.size == XATTR_ENTRY_STRUCT.sizeof() == ENTRY_HEADER_SIZE


class XattrBlockHeader(Record):
    """The 32-byte header of an xattr block."""

    __slots__ = field_names(XATTR_BLOCK_HEADER_STRUCT)
    _struct = XATTR_BLOCK_HEADER_STRUCT


XattrBlockHeader._setup()
assert XattrBlockHeader.SIZE == HEADER_SIZE


# --- names --------------------------------------------------------------------------------


def split_name(full: bytes) -> tuple[int, bytes]:
    """``b"user.foo"`` -> (INDEX_USER, b"foo").

    Raises OSError: ERANGE for a name over 255 bytes or an empty suffix where one is
    needed, EOPNOTSUPP for an unknown namespace.
    """
    if len(full) > NAME_MAX:
        raise OSError(errno.ERANGE, "xattr name too long")
    for prefix, index in PREFIXES:
        if full.startswith(prefix):
            suffix = full[len(prefix) :]
            if index in _WHOLE_NAME:
                if suffix:
                    break  # e.g. "system.posix_acl_accessX": falls to "system."
                return index, b""
            if not suffix:
                raise OSError(errno.EINVAL, f"empty xattr name after {prefix!r}")
            return index, suffix
    else:
        raise OSError(errno.EOPNOTSUPP, f"unsupported xattr namespace: {full!r}")
    # "system.<something unknown>" after a whole-name prefix mismatch
    return INDEX_SYSTEM, full[len(b"system.") :]


def full_name(index: int, name: bytes) -> bytes:
    """(index, suffix) -> full name; an unknown index yields the bare suffix."""
    return PREFIX_BY_INDEX.get(index, b"") + name


# --- sizes and hashes ---------------------------------------------------------------------


def entry_len(name_len: int) -> int:
    """Bytes an entry takes in the table (EXT2_EXT_ATTR_LEN)."""
    return (name_len + ENTRY_HEADER_SIZE + PAD - 1) & ~(PAD - 1)


def value_len(size: int) -> int:
    """Bytes a value takes in the value area (EXT2_EXT_ATTR_SIZE)."""
    return (size + PAD - 1) & ~(PAD - 1)


def entry_hash(name: bytes, value: bytes, value_inum: int = 0, signed: bool = False) -> int:
    """The entry hash e2fsck verifies: names rotated by 5, values (le32 words) by 16.

    ``signed=True`` reproduces the variant computed with a signed ``char`` (what
    older kernels and e2fsprogs produced for name bytes >= 0x80; e2fsck accepts both).
    """
    h = 0
    for c in name:
        if signed and c >= 0x80:
            c -= 256
        h = ((h << 5) ^ (h >> 27) ^ c) & 0xFFFFFFFF
    if value_inum == 0 and value:
        padded = value + bytes(-len(value) % PAD)
        for (w,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) ^ (h >> 16) ^ w) & 0xFFFFFFFF
    return h


def block_hash(entry_hashes: Iterable[int]) -> int:
    """The block header hash: entry hashes rotated by 16; 0 if any entry hash is 0."""
    h = 0
    for eh in entry_hashes:
        if eh == 0:
            return 0
        h = ((h << 16) ^ (h >> 16) ^ eh) & 0xFFFFFFFF
    return h


# --- entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Xattr:
    """One attribute.  ``hash`` is the stored hash (parse) — build recomputes it."""

    index: int
    name: bytes
    value: bytes
    value_inum: int = 0
    hash: int = 0

    @property
    def full_name(self) -> bytes:
        return full_name(self.index, self.name)

    @property
    def space(self) -> int:
        """Bytes needed in an area: entry + padded value."""
        return entry_len(len(self.name)) + (0 if self.value_inum else value_len(len(self.value)))

    @classmethod
    def make(cls, full: bytes, value: bytes) -> Xattr:
        """From a full name; checks the name (ERANGE/EOPNOTSUPP) and size (E2BIG)."""
        index, name = split_name(full)
        if len(value) > SIZE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large")
        return cls(index, name, bytes(value))

    def computed_hash(self, signed: bool = False) -> int:
        return entry_hash(self.name, self.value, self.value_inum, signed)


def block_sort_key(x: Xattr) -> tuple[int, int, bytes]:
    """Order of entries in an xattr block (index, name length, name)."""
    return x.index, len(x.name), x.name


def _parse_entries(
    area: bytes, table_start: int, value_base: int, ea_inode: bool = False
) -> list[Xattr]:
    """Decode the entry table at ``table_start``; value offsets are from ``value_base``.

    An entry whose value lives in an EA inode is corrupt unless the file system has
    the ea_inode feature (``ea_inode``); then its value is left empty for the caller
    to fetch from inode ``value_inum``.
    """
    out: list[Xattr] = []
    off = table_start
    size = len(area)
    spans: list[tuple[int, int]] = []
    while True:
        if off + 4 > size:
            raise CorruptError("xattr entry table runs off the end")
        if area[off : off + 4] == b"\0\0\0\0":
            break
        if off + ENTRY_HEADER_SIZE > size:
            raise CorruptError("xattr entry runs off the end")
        nl, idx, voff, vino, vsize, h = _ENTRY.unpack_from(area, off)
        nend = off + ENTRY_HEADER_SIZE + nl
        if nend > size:
            raise CorruptError("xattr name runs off the end")
        name = area[off + ENTRY_HEADER_SIZE : nend]
        if vino == 0:
            start = value_base + voff
            if vsize and (start + vsize > size or voff & (PAD - 1)):
                raise CorruptError(f"xattr value of {name!r} out of bounds")
            value = area[start : start + vsize] if vsize else b""
            if vsize:
                spans.append((start, start + value_len(vsize)))
        else:
            if not ea_inode:
                raise CorruptError(f"xattr {name!r} refers to EA inode {vino} (no ea_inode)")
            if vsize > SIZE_MAX:
                raise CorruptError(f"xattr inode value of {name!r} too large")
            value = b""
        out.append(Xattr(idx, name, value, vino, h))
        off += entry_len(nl)
    table_end = off + 4
    spans.sort()
    prev = table_end
    for s, e in spans:
        if s < prev:
            raise CorruptError("xattr values overlap the entry table or each other")
        prev = e
    return out


def _build_entries(
    xattrs: Sequence[Xattr],
    buf: bytearray,
    table_start: int,
    value_base: int,
    with_hash: bool,
) -> list[int]:
    """Write entries + values into ``buf`` (zeroed by the caller); return the hashes.

    Values are laid out from the end in entry order, exactly like e2fsprogs'
    write_xattrs_to_buffer, so e2fsprogs-made areas rebuild byte-identically.
    """
    end = len(buf)
    off = table_start
    hashes = []
    for x in xattrs:
        nl = len(x.name)
        if x.value_inum:
            voff = 0
        else:
            end -= value_len(len(x.value))
            buf[end : end + len(x.value)] = x.value
            voff = end - value_base
        h = entry_hash(x.name, x.value, x.value_inum) if with_hash or x.value_inum else 0
        hashes.append(h)
        _ENTRY.pack_into(buf, off, nl, x.index, voff, x.value_inum, len(x.value), h)
        buf[off + ENTRY_HEADER_SIZE : off + ENTRY_HEADER_SIZE + nl] = x.name
        off += entry_len(nl)
    if off + 4 > end:
        raise OSError(errno.ENOSPC, "no space for extended attributes")
    return hashes


def _check(xattrs: Sequence[Xattr]) -> None:
    seen = set()
    for x in xattrs:
        if len(x.name) > NAME_MAX:
            raise OSError(errno.ERANGE, "xattr name too long")
        if len(x.value) > SIZE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large")
        key = (x.index, x.name)
        if key in seen:
            raise ValueError(f"duplicate xattr {x.full_name!r}")
        seen.add(key)


def used_space(xattrs: Iterable[Xattr]) -> int:
    return sum(x.space for x in xattrs)


# --- in-inode area ------------------------------------------------------------------------


def ibody_capacity(area_size: int) -> int:
    """Bytes available to entries + values in an in-inode area of ``area_size`` bytes.

    The magic and the table's terminating zero word take 8 bytes; an inode with no
    room for them has capacity 0.
    """
    return max(0, area_size - 8)


def parse_ibody(area: bytes | bytearray | memoryview, ea_inode: bool = False) -> list[Xattr]:
    """Attributes in an in-inode area (``Inode.tail``); [] if the magic is absent.

    ``ea_inode``: whether the file system has the ea_inode feature.
    """
    area = bytes(area)
    if len(area) < 8 or struct.unpack_from("<I", area)[0] != MAGIC:
        return []
    return _parse_entries(area, 4, 4, ea_inode)


def build_ibody(xattrs: Sequence[Xattr], area_size: int, with_hash: bool = True) -> bytes:
    """Encode attributes into an in-inode area of ``area_size`` bytes.

    No attributes -> all zeros (no magic), as ext4 leaves an inode without xattrs.
    ``with_hash``: the kernel stores entry hashes in the inode too; e2fsprogs writes 0.
    Raises OSError(ENOSPC) if they do not fit.
    """
    buf = bytearray(area_size)
    if not xattrs:
        return bytes(buf)
    _check(xattrs)
    if used_space(xattrs) > ibody_capacity(area_size):
        raise OSError(errno.ENOSPC, "no space for extended attributes in the inode")
    struct.pack_into("<I", buf, 0, MAGIC)
    _build_entries(xattrs, buf, 4, 4, with_hash)
    return bytes(buf)


# --- xattr block --------------------------------------------------------------------------


def block_capacity(block_size: int) -> int:
    """Bytes available to entries + values in an xattr block."""
    return block_size - HEADER_SIZE - 4


def parse_block(
    block: bytes | bytearray | memoryview, ea_inode: bool = False
) -> tuple[XattrBlockHeader, list[Xattr]]:
    """Decode an xattr block; CorruptError on a bad magic, h_blocks != 1, bad entries."""
    block = bytes(block)
    hdr = XattrBlockHeader.parse(block)
    if hdr.magic != MAGIC:
        raise CorruptError(f"bad xattr block magic {hdr.magic:#010x}")
    if hdr.blocks != 1:
        raise CorruptError(f"xattr block h_blocks = {hdr.blocks}")
    return hdr, _parse_entries(block, HEADER_SIZE, 0, ea_inode)


def build_block(
    xattrs: Sequence[Xattr],
    block_size: int,
    refcount: int = 1,
    header: XattrBlockHeader | None = None,
    with_block_hash: bool = True,
) -> bytes:
    """Encode a whole xattr block: entries sorted, hashes and block hash computed.

    ``header`` (from parse_block) keeps fields chanos does not manage (checksum,
    reserved); refcount is set from ``refcount``.  ``with_block_hash``: the kernel
    stores the block hash (it keys block sharing); e2fsprogs leaves 0, and e2fsck
    does not check it.  Raises OSError(ENOSPC).
    """
    _check(xattrs)
    if used_space(xattrs) > block_capacity(block_size):
        raise OSError(errno.ENOSPC, "no space for extended attributes in the block")
    ordered = sorted(xattrs, key=block_sort_key)
    buf = bytearray(block_size)
    hashes = _build_entries(ordered, buf, HEADER_SIZE, 0, True)
    hdr = header.copy() if header is not None else XattrBlockHeader.new()
    hdr.magic, hdr.refcount, hdr.blocks = MAGIC, refcount, 1
    hdr.hash = block_hash(hashes) if with_block_hash else 0
    buf[:HEADER_SIZE] = hdr.build()
    return bytes(buf)


def place(
    xattrs: Sequence[Xattr], ibody_area_size: int, block_size: int
) -> tuple[list[Xattr], list[Xattr]]:
    """Split attributes between the inode and a block: (in_inode, in_block).

    Policy (the kernel's, roughly): keep them in the inode while they fit, in the
    given order; the rest go to the block.  Raises OSError(ENOSPC) when the block
    cannot hold the rest.  An empty second list means no block is needed.
    """
    _check(xattrs)
    room = ibody_capacity(ibody_area_size)
    ibody: list[Xattr] = []
    block: list[Xattr] = []
    for x in xattrs:
        if not block and x.space <= room:
            ibody.append(x)
            room -= x.space
        else:
            block.append(x)
    if used_space(block) > block_capacity(block_size):
        # Second chance: small attributes may still fit in the inode after a big one.
        ibody, block, room = [], [], ibody_capacity(ibody_area_size)
        for x in sorted(xattrs, key=lambda x: x.space):
            if x.space <= room:
                ibody.append(x)
                room -= x.space
            else:
                block.append(x)
        if used_space(block) > block_capacity(block_size):
            raise OSError(errno.ENOSPC, "no space for extended attributes")
    return ibody, block


# --- POSIX ACLs ---------------------------------------------------------------------------

ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
POSIX_ACL_XATTR_VERSION = 2
EXT4_ACL_VERSION = 1
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def acl_to_disk(value: bytes) -> bytes:
    """The xattr-API form of a POSIX ACL (version 2) -> ext4's compact on-disk form."""
    if len(value) < 4 or (len(value) - 4) % 8:
        raise OSError(errno.EINVAL, "malformed POSIX ACL")
    (version,) = struct.unpack_from("<I", value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise OSError(errno.EOPNOTSUPP, f"POSIX ACL version {version}")
    out = bytearray(struct.pack("<I", EXT4_ACL_VERSION))
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        if tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER):
            out += struct.pack("<HH", tag, perm)
        elif tag in (ACL_USER, ACL_GROUP):
            out += struct.pack("<HHI", tag, perm, ident)
        else:
            raise OSError(errno.EINVAL, f"bad ACL tag {tag:#x}")
    return bytes(out)


def acl_from_disk(value: bytes) -> bytes:
    """ext4's on-disk ACL -> the xattr-API form (version 2, 8-byte entries)."""
    if len(value) < 4 or struct.unpack_from("<I", value)[0] != EXT4_ACL_VERSION:
        raise CorruptError("bad ext4 ACL header")
    out = bytearray(struct.pack("<I", POSIX_ACL_XATTR_VERSION))
    off = 4
    while off < len(value):
        if off + 4 > len(value):
            raise CorruptError("truncated ext4 ACL entry")
        tag, perm = struct.unpack_from("<HH", value, off)
        if tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER):
            out += struct.pack("<HHI", tag, perm, _ACL_UNDEFINED_ID)
            off += 4
        elif tag in (ACL_USER, ACL_GROUP):
            if off + 8 > len(value):
                raise CorruptError("truncated ext4 ACL entry")
            out += struct.pack("<HHI", tag, perm, struct.unpack_from("<I", value, off + 4)[0])
            off += 8
        else:
            raise CorruptError(f"bad ext4 ACL tag {tag:#x}")
    return bytes(out)
