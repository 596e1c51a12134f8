"""On-disk inodes: the 128-byte base, the extra fields, and the in-inode xattr area.

``Inode.parse(raw)`` takes a whole inode record (``s_inode_size`` bytes, 128 or more).
It decodes the base 128 bytes and, when ``i_extra_isize`` covers them, the extra
fields (``*_extra`` timestamps, ``crtime``, ``version_hi``, ``projid``); everything
after ``128 + i_extra_isize`` (the in-inode xattr area, see ``xattr.py``) is kept as
raw ``tail`` bytes.  ``build()`` returns exactly ``len(raw)`` bytes, identical to the
input if nothing was changed.  Extra fields that ``i_extra_isize`` does not cover read
as 0 and are not written.

Semantics implemented here (as the Linux ext4 driver and e2fsprogs do them):
- 64-bit size (``size``), 32-bit uid/gid, 48-bit file ACL block (``file_acl``);
- timestamps in nanoseconds: a signed 32-bit seconds field plus, in the extra field,
  two epoch bits extending the seconds and 30 bits of nanoseconds;
- ``i_blocks``: 512-byte units, 48 bits with huge_file, in file-system blocks when the
  inode has HUGE_FILE_FL (``get_blocks`` / ``set_blocks``);
- device numbers in ``i_block`` (old 8:8 encoding in word 0, or new encoding in word 1);
- the fast-symlink rule e2fsck uses; mode -> directory file_type.
"""

from __future__ import annotations

import errno
import stat
import struct
from operator import attrgetter
from typing import Any, Self

from chanos.fs.format._record import CorruptError, Record, field_names
from construct import Bytes, Int16ul, Int32ul, Struct

GOOD_OLD_INODE_SIZE = 128
I_BLOCK_SIZE = 60  # i_block: 15 x le32

ROOT_INO = 2
BAD_INO = 1
USR_QUOTA_INO = 3
GRP_QUOTA_INO = 4
BOOT_LOADER_INO = 5
UNDEL_DIR_INO = 6
RESIZE_INO = 7
JOURNAL_INO = 8
EXCLUDE_INO = 9
REPLICA_INO = 10

LINK_MAX = 65000  # with dir_nlink a directory past this stores i_links_count = 1

# --- i_flags ---------------------------------------------------------------------------
SECRM_FL = 0x00000001
UNRM_FL = 0x00000002
COMPR_FL = 0x00000004
SYNC_FL = 0x00000008
IMMUTABLE_FL = 0x00000010
APPEND_FL = 0x00000020
NODUMP_FL = 0x00000040
NOATIME_FL = 0x00000080
DIRTY_FL = 0x00000100
COMPRBLK_FL = 0x00000200
NOCOMPR_FL = 0x00000400
ENCRYPT_FL = 0x00000800
INDEX_FL = 0x00001000  # hashed (htree) directory
IMAGIC_FL = 0x00002000
JOURNAL_DATA_FL = 0x00004000
NOTAIL_FL = 0x00008000
DIRSYNC_FL = 0x00010000
TOPDIR_FL = 0x00020000
HUGE_FILE_FL = 0x00040000
EXTENTS_FL = 0x00080000
VERITY_FL = 0x00100000
EA_INODE_FL = 0x00200000
DAX_FL = 0x02000000
INLINE_DATA_FL = 0x10000000
PROJINHERIT_FL = 0x20000000
CASEFOLD_FL = 0x40000000

# --- directory entry file types (ext4 dir entry v2) ----------------------------------
FT_UNKNOWN = 0
FT_REG_FILE = 1
FT_DIR = 2
FT_CHRDEV = 3
FT_BLKDEV = 4
FT_FIFO = 5
FT_SOCK = 6
FT_SYMLINK = 7
FT_MAX = 8

_FT_BY_FMT = {
    stat.S_IFREG: FT_REG_FILE,
    stat.S_IFDIR: FT_DIR,
    stat.S_IFCHR: FT_CHRDEV,
    stat.S_IFBLK: FT_BLKDEV,
    stat.S_IFIFO: FT_FIFO,
    stat.S_IFSOCK: FT_SOCK,
    stat.S_IFLNK: FT_SYMLINK,
}
_FMT_BY_FT = {v: k for k, v in _FT_BY_FMT.items()}


def file_type_from_mode(mode: int) -> int:
    """Directory-entry file_type for an inode mode (FT_UNKNOWN for a bad format)."""
    return _FT_BY_FMT.get(stat.S_IFMT(mode), FT_UNKNOWN)


def mode_format_from_file_type(file_type: int) -> int:
    """S_IFxxx bits for a directory-entry file_type (0 if unknown)."""
    return _FMT_BY_FT.get(file_type, 0)


# --- timestamps ---------------------------------------------------------------------------
EPOCH_BITS = 2
EPOCH_MASK = (1 << EPOCH_BITS) - 1
NSEC_MASK = ~EPOCH_MASK & 0xFFFFFFFF
# Representable range with the extra field: signed 32-bit seconds + 2 epoch bits.
TIME_MIN = -(1 << 31)
TIME_MAX = (1 << 31) - 1 + (EPOCH_MASK << 32)
TIME_MAX_NO_EXTRA = (1 << 31) - 1


def decode_time(lo: int, extra: int | None) -> int:
    """Seconds field + optional extra field -> nanoseconds since the epoch."""
    sec = lo - (1 << 32) if lo & 0x80000000 else lo
    if extra is None:
        return sec * 1_000_000_000
    sec += (extra & EPOCH_MASK) << 32
    return sec * 1_000_000_000 + (extra >> EPOCH_BITS)


def encode_time(ns: int, with_extra: bool = True) -> tuple[int, int]:
    """Nanoseconds -> (seconds field, extra field), clamped to the representable range."""
    sec, nsec = divmod(ns, 1_000_000_000)
    hi = TIME_MAX if with_extra else TIME_MAX_NO_EXTRA
    if sec < TIME_MIN:
        sec, nsec = TIME_MIN, 0
    elif sec > hi:
        sec, nsec = hi, 999_999_999 if with_extra else 0
    lo = sec & 0xFFFFFFFF
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    epoch = ((sec - signed_lo) >> 32) & EPOCH_MASK
    return lo, (epoch | nsec << EPOCH_BITS) if with_extra else 0


# --- device numbers -----------------------------------------------------------------------


def old_valid_dev(major: int, minor: int) -> bool:
    return major < 256 and minor < 256


def encode_device(major: int, minor: int) -> bytes:
    """i_block contents for a device node (60 bytes), as ext4 writes them."""
    if old_valid_dev(major, minor):
        return struct.pack("<II", (major << 8) | minor, 0) + bytes(52)
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return struct.pack("<III", 0, new & 0xFFFFFFFF, 0) + bytes(48)


def decode_device(i_block: bytes) -> tuple[int, int]:
    """(major, minor) from a device inode's i_block."""
    w0, w1 = struct.unpack_from("<II", i_block)
    if w0:
        return (w0 >> 8) & 0xFF, w0 & 0xFF
    return (w1 & 0xFFF00) >> 8, (w1 & 0xFF) | ((w1 >> 12) & 0xFFF00)


# --- reading a record without decoding it ---------------------------------------------

_IN_INODE_XATTR_MAGIC = 0xEA020000  # the in-inode xattr area's header (see xattr.py)


def in_use_without_xattrs(raw: bytes | bytearray | memoryview) -> bool:
    """Whether the inode record ``raw`` is in use (a mode, at least one link) and has no
    extended attribute at all: no xattr block (``i_file_acl``) and no in-inode xattr area
    (no magic after ``128 + i_extra_isize``).

    False for anything else, a malformed record included: the caller then asks the
    inode's vnode. Reads four fields with ``struct.unpack_from`` instead of decoding the
    record (``ls -l`` asks every file for two attributes that almost none has).
    """
    size = len(raw)
    if size < GOOD_OLD_INODE_SIZE:
        return False
    if not _U16.unpack_from(raw, 0x00)[0] or not _U16.unpack_from(raw, 0x1A)[0]:
        return False
    if _U32.unpack_from(raw, 0x68)[0] or _U16.unpack_from(raw, 0x76)[0]:
        return False  # an xattr block
    if size == GOOD_OLD_INODE_SIZE:
        return True
    extra = _U16.unpack_from(raw, GOOD_OLD_INODE_SIZE)[0]
    at = GOOD_OLD_INODE_SIZE + extra
    if extra & 3 or at > size:
        return False  # malformed: the vnode reports it
    if at + 4 > size:
        return True  # no room for an in-inode area
    return _U32.unpack_from(raw, at)[0] != _IN_INODE_XATTR_MAGIC


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
# What stat(2) needs, at 0x00: mode uid_lo size_lo atime ctime mtime (dtime) gid_lo links
# blocks_lo flags; at 0x64: generation (file_acl_lo) size_high (obso_faddr) blocks_high
# (file_acl_high) uid_high gid_high; at 0x80: extra_isize (checksum_hi) ctime_extra
# mtime_extra atime_extra crtime crtime_extra.
_STAT_LO = struct.Struct("<HHIIII4xHHII")
_STAT_HI = struct.Struct("<I4xI4xH2xHH")
_STAT_EXTRA = struct.Struct("<H2xIIIII")


def stat_view(
    raw: bytes | bytearray | memoryview,
) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int, int]:
    """What stat(2) and a LOOKUP reply need from an inode record, without building an
    ``Inode``: (mode, links_count, uid, gid, size, blocks_lo, blocks_high, flags,
    atime_ns, mtime_ns, ctime_ns, crtime_ns, generation), each as the ``Inode`` property
    of that name gives it. Raises CorruptError where ``Inode.parse`` does."""
    size = len(raw)
    if size < GOOD_OLD_INODE_SIZE or size & (size - 1):
        raise CorruptError(f"inode record of {size} bytes")
    mode, uid_lo, size_lo, atime, ctime, mtime, gid_lo, links, blocks_lo, flags = (
        _STAT_LO.unpack_from(raw, 0)
    )
    generation, size_hi, blocks_hi, uid_hi, gid_hi = _STAT_HI.unpack_from(raw, 0x64)
    n = 0
    if size > GOOD_OLD_INODE_SIZE:
        # A record over 128 bytes is at least 256 (a power of two): room for all of it.
        n, ctime_x, mtime_x, atime_x, crtime, crtime_x = _STAT_EXTRA.unpack_from(raw, 128)
        if n & 3 or GOOD_OLD_INODE_SIZE + n > size:
            raise CorruptError(f"bad i_extra_isize {n}")
    return (
        mode,
        links,
        uid_lo | uid_hi << 16,
        gid_lo | gid_hi << 16,
        size_lo | size_hi << 32,
        blocks_lo,
        blocks_hi,
        flags,
        decode_time(atime, atime_x if n >= _ATIME_X else None),
        decode_time(mtime, mtime_x if n >= _MTIME_X else None),
        decode_time(ctime, ctime_x if n >= _CTIME_X else None),
        decode_time(crtime, crtime_x if n >= _CRTIME_X else None) if n >= _CRTIME else 0,
        generation,
    )


# --- the record -------------------------------------------------------------------------

INODE_BASE_STRUCT = Struct(
    "mode" / Int16ul,  # 0x00
    "uid_lo" / Int16ul,
    "size_lo" / Int32ul,
    "atime" / Int32ul,  # 0x08
    "ctime" / Int32ul,
    "mtime" / Int32ul,  # 0x10
    "dtime" / Int32ul,
    "gid_lo" / Int16ul,  # 0x18
    "links_count" / Int16ul,
    "blocks_lo" / Int32ul,
    "flags" / Int32ul,  # 0x20
    "version_lo" / Int32ul,  # osd1 (Linux: l_i_version)
    "i_block" / Bytes(I_BLOCK_SIZE),  # 0x28
    "generation" / Int32ul,  # 0x64
    "file_acl_lo" / Int32ul,
    "size_high" / Int32ul,
    "obso_faddr" / Int32ul,
    "blocks_high" / Int16ul,  # 0x74 osd2 (Linux)
    "file_acl_high" / Int16ul,
    "uid_high" / Int16ul,
    "gid_high" / Int16ul,
    "checksum_lo" / Int16ul,
    "osd2_reserved" / Int16ul,
)
INODE_EXTRA_STRUCT = Struct(
    "extra_isize" / Int16ul,  # 0x80
    "checksum_hi" / Int16ul,
    "ctime_extra" / Int32ul,
    "mtime_extra" / Int32ul,
    "atime_extra" / Int32ul,
    "crtime" / Int32ul,  # 0x90
    "crtime_extra" / Int32ul,
    "version_hi" / Int32ul,
    "projid" / Int32ul,  # 0x9C
)
EXTRA_KNOWN = INODE_EXTRA_STRUCT.sizeof()  # 32: the size mkfs uses for i_extra_isize
# End offset (relative to 128) of each extra field: present iff extra_isize >= end.
_EXTRA_END = {
    "checksum_hi": 4,
    "ctime_extra": 8,
    "mtime_extra": 12,
    "atime_extra": 16,
    "crtime": 20,
    "crtime_extra": 24,
    "version_hi": 28,
    "projid": 32,
}
_ATIME_X = _EXTRA_END["atime_extra"]
_MTIME_X = _EXTRA_END["mtime_extra"]
_CTIME_X = _EXTRA_END["ctime_extra"]
_CRTIME = _EXTRA_END["crtime"]
_CRTIME_X = _EXTRA_END["crtime_extra"]
_BASE_NAMES = field_names(INODE_BASE_STRUCT)
_EXTRA_NAMES = field_names(INODE_EXTRA_STRUCT)
assert INODE_BASE_STRUCT.sizeof() == GOOD_OLD_INODE_SIZE


def _packer(decl: Struct) -> struct.Struct:
    """The ``struct`` layout of a declaration made of little-endian ints and Bytes.

    Inodes are decoded on every lookup, stat and directory listing, and encoded on every
    change: ``struct`` does that several times faster than construct's compiled parser,
    and the construct declaration stays the one description of the layout.
    """
    codes = {Int16ul: "H", Int32ul: "I"}
    fmt = "<"
    for sc in decl.subcons:
        inner = sc.subcon
        if inner in codes:
            fmt += codes[inner]
        else:
            n = inner.sizeof()
            assert inner.build(bytes(n)) == bytes(n)  # a plain Bytes(n) field
            fmt += f"{n}s"
    packer = struct.Struct(fmt)
    assert packer.size == decl.sizeof()
    return packer


_BASE_S = _packer(INODE_BASE_STRUCT)
_EXTRA_S = _packer(INODE_EXTRA_STRUCT)
_I_BLOCK_AT = _BASE_NAMES.index("i_block")
# The fields' values in layout order, for packing (one C call instead of a getattr each).
_base_values = attrgetter(*_BASE_NAMES)
_extra_values = attrgetter(*_EXTRA_NAMES)


def _assigner(names: tuple[str, ...] | list[str]) -> Any:
    """``f(obj, values)`` setting ``obj.<name> = value`` for each name, in one statement.

    An unpacking assignment to attributes runs as straight bytecode: inodes are decoded
    on every lookup, stat and vnode start, and a setattr loop over 40 fields was most of
    that decoding's cost."""
    src = f"def assign(o, v):\n    {', '.join('o.' + n for n in names)}, = v\n"
    scope: dict[str, Any] = {}
    exec(src, scope)  # names are the declaration's field names (identifiers)
    return scope["assign"]


_set_base = _assigner(_BASE_NAMES)
_set_extra = _assigner(_EXTRA_NAMES)


def _pack(packer: struct.Struct, values: tuple) -> bytes:
    """Encode, refusing what construct refuses: an int out of range, a Bytes field of
    the wrong length (``struct`` would pad or cut it)."""
    if packer is _BASE_S and len(values[_I_BLOCK_AT]) != I_BLOCK_SIZE:
        raise ValueError(f"i_block of {len(values[_I_BLOCK_AT])} bytes, not {I_BLOCK_SIZE}")
    try:
        return packer.pack(*values)
    except struct.error as e:
        raise ValueError(f"inode field out of range: {e}") from None


# Zeroed records by (class, inode size, extra size): Inode.new copies one (every create).
_BLANK: dict[tuple[type, int, int], Inode] = {}


class Inode(Record):
    """A mutable inode record.  See the module docstring.

    ``inode_size`` is the record size; ``tail`` holds the bytes after
    ``128 + extra_isize`` (the in-inode xattr area) verbatim.
    """

    __slots__ = (*_BASE_NAMES, *_EXTRA_NAMES, "inode_size", "tail", "extra_rest")
    _struct = INODE_BASE_STRUCT

    inode_size: int
    tail: bytes
    extra_rest: bytes  # extra-field bytes past the 32 known ones (i_extra_isize > 32)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        size = len(data)
        if size < GOOD_OLD_INODE_SIZE or size & (size - 1):
            raise CorruptError(f"inode record of {size} bytes")
        raw = bytes(data)
        obj = cls.__new__(cls)
        _set_base(obj, _BASE_S.unpack_from(raw))
        obj.inode_size = size
        if size > GOOD_OLD_INODE_SIZE:
            extra_isize = int.from_bytes(raw[128:130], "little")
            if extra_isize & 3 or 128 + extra_isize > size:
                # e2fsck repairs this; the kernel refuses the inode.  Treat as corrupt.
                raise CorruptError(f"bad i_extra_isize {extra_isize}")
            body = raw[128 : 128 + extra_isize]
            known = body + bytes(EXTRA_KNOWN - len(body)) if extra_isize < 32 else body
            _set_extra(obj, _EXTRA_S.unpack_from(known))
            obj.extra_rest = body[EXTRA_KNOWN:]
            obj.tail = raw[128 + extra_isize :]
        else:
            _set_extra(obj, (0,) * len(_EXTRA_NAMES))
            obj.extra_rest = b""
            obj.tail = b""
        return obj

    @classmethod
    def new(cls, inode_size: int = 256, extra_isize: int = EXTRA_KNOWN, **fields: int) -> Self:  # type: ignore[override]
        """A zeroed inode record with ``i_extra_isize`` set (0 for 128-byte inodes)."""
        key = (cls, inode_size, extra_isize)
        blank = _BLANK.get(key)
        if blank is None:
            raw = bytearray(inode_size)
            if inode_size > GOOD_OLD_INODE_SIZE:
                raw[128:130] = extra_isize.to_bytes(2, "little")
            blank = _BLANK[key] = cls.parse(raw)
        obj = blank.copy()
        for name, value in fields.items():
            setattr(obj, name, value)
        return obj

    def build(self) -> bytes:
        base = _pack(_BASE_S, _base_values(self))
        if self.inode_size == GOOD_OLD_INODE_SIZE:
            return base
        n = self.extra_isize
        rest = self.extra_rest if n > EXTRA_KNOWN else b""
        if n > EXTRA_KNOWN and len(rest) != n - EXTRA_KNOWN:
            rest = rest[: n - EXTRA_KNOWN].ljust(n - EXTRA_KNOWN, b"\0")
        if n & 3 or 128 + n + len(self.tail) != self.inode_size:
            raise ValueError(
                f"inconsistent inode layout: extra_isize {n}, tail {len(self.tail)}, "
                f"size {self.inode_size}"
            )
        extra = _pack(_EXTRA_S, _extra_values(self))
        return base + extra[:n] + rest + self.tail

    def copy(self) -> Self:
        obj = type(self).__new__(type(self))
        _set_base(obj, _base_values(self))
        _set_extra(obj, _extra_values(self))
        obj.inode_size = self.inode_size
        obj.tail = self.tail
        obj.extra_rest = self.extra_rest
        return obj

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.build() == other.build()

    def has_extra(self, field: str) -> bool:
        """Whether an extra field (e.g. "crtime", "atime_extra") is stored in this inode."""
        return self.inode_size > GOOD_OLD_INODE_SIZE and self.extra_isize >= _EXTRA_END[field]

    # --- xattr area --------------------------------------------------------------

    @property
    def xattr_area_offset(self) -> int:
        """Byte offset in the record of the in-inode xattr area (0 if none)."""
        if self.inode_size == GOOD_OLD_INODE_SIZE:
            return 0
        return GOOD_OLD_INODE_SIZE + self.extra_isize

    # --- type --------------------------------------------------------------------

    @property
    def file_format(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_device(self) -> bool:
        return stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)

    @property
    def is_special(self) -> bool:
        """Device, fifo or socket: no data blocks."""
        fmt = stat.S_IFMT(self.mode)
        return fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)

    @property
    def file_type(self) -> int:
        return file_type_from_mode(self.mode)

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)

    # --- flags -------------------------------------------------------------------

    @property
    def uses_extents(self) -> bool:
        return bool(self.flags & EXTENTS_FL)

    @property
    def is_indexed_dir(self) -> bool:
        return bool(self.flags & INDEX_FL)

    @property
    def has_inline_data(self) -> bool:
        return bool(self.flags & INLINE_DATA_FL)

    @property
    def is_fast_symlink(self) -> bool:
        """e2fsprogs' rule (ext2fs_is_fast_symlink): a symlink whose size is 1..59.

        The target then lives in i_block and the inode has no data block.  (e2fsck
        also demands no EXTENTS_FL on such an inode and strnlen(i_block) == size.)
        """
        return self.is_symlink and 0 < self.size < I_BLOCK_SIZE and not self.has_inline_data

    @property
    def fast_symlink_target(self) -> bytes:
        if not self.is_fast_symlink:
            raise CorruptError("not a fast symlink")
        return self.i_block[: self.size]

    def set_fast_symlink(self, target: bytes) -> None:
        """Store ``target`` (1..59 bytes) in i_block, as ext4 does (no EXTENTS_FL)."""
        if not 0 < len(target) < I_BLOCK_SIZE:
            raise OSError(errno.ENAMETOOLONG, "target too long for a fast symlink")
        self.i_block = target + bytes(I_BLOCK_SIZE - len(target))
        self.size = len(target)
        self.flags &= ~EXTENTS_FL

    # --- combined fields -------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.size_lo | self.size_high << 32

    @size.setter
    def size(self, value: int) -> None:
        if value < 0 or value >> 64:
            raise ValueError(f"bad inode size {value}")
        self.size_lo = value & 0xFFFFFFFF
        self.size_high = value >> 32

    @property
    def uid(self) -> int:
        return self.uid_lo | self.uid_high << 16

    @uid.setter
    def uid(self, value: int) -> None:
        if value < 0 or value >> 32:
            raise ValueError(f"bad uid {value}")
        self.uid_lo = value & 0xFFFF
        self.uid_high = value >> 16

    @property
    def gid(self) -> int:
        return self.gid_lo | self.gid_high << 16

    @gid.setter
    def gid(self, value: int) -> None:
        if value < 0 or value >> 32:
            raise ValueError(f"bad gid {value}")
        self.gid_lo = value & 0xFFFF
        self.gid_high = value >> 16

    @property
    def file_acl(self) -> int:
        """Block number of the xattr block (0 = none)."""
        return self.file_acl_lo | self.file_acl_high << 32

    @file_acl.setter
    def file_acl(self, value: int) -> None:
        if value < 0 or value >> 48:
            raise ValueError(f"bad file_acl block {value}")
        self.file_acl_lo = value & 0xFFFFFFFF
        self.file_acl_high = value >> 32

    def get_blocks(self, huge_file: bool, block_size: int) -> int:
        """i_blocks in 512-byte units, as stat(2) reports it.

        ``huge_file``: whether the file system has the huge_file feature.
        """
        if not huge_file:
            return self.blocks_lo
        n = self.blocks_lo | self.blocks_high << 32
        if self.flags & HUGE_FILE_FL:
            return n * (block_size // 512)
        return n

    def set_blocks(self, count_512: int, huge_file: bool, block_size: int) -> None:
        """Store i_blocks (512-byte units) the way ext4_inode_blocks_set does.

        Raises OSError(EFBIG) when the count does not fit.
        """
        if count_512 < 0:
            raise ValueError("negative block count")
        if count_512 <= 0xFFFFFFFF:
            self.blocks_lo, self.blocks_high = count_512, 0
            self.flags &= ~HUGE_FILE_FL
            return
        if not huge_file:
            raise OSError(errno.EFBIG, "i_blocks overflow without huge_file")
        if count_512 <= 0xFFFFFFFFFFFF:
            self.blocks_lo, self.blocks_high = count_512 & 0xFFFFFFFF, count_512 >> 32
            self.flags &= ~HUGE_FILE_FL
            return
        n = count_512 // (block_size // 512)
        if n > 0xFFFFFFFFFFFF:
            raise OSError(errno.EFBIG, "i_blocks overflow")
        self.blocks_lo, self.blocks_high = n & 0xFFFFFFFF, n >> 32
        self.flags |= HUGE_FILE_FL

    # --- timestamps (nanoseconds) ----------------------------------------------------

    def _get_time(self, name: str) -> int:
        extra = getattr(self, name + "_extra") if self.has_extra(name + "_extra") else None
        return decode_time(getattr(self, name), extra)

    def _set_time(self, name: str, ns: int) -> None:
        has = self.has_extra(name + "_extra")
        lo, extra = encode_time(ns, has)
        setattr(self, name, lo)
        if has:
            setattr(self, name + "_extra", extra)

    @property
    def atime_ns(self) -> int:
        return self._get_time("atime")

    @atime_ns.setter
    def atime_ns(self, ns: int) -> None:
        self._set_time("atime", ns)

    @property
    def mtime_ns(self) -> int:
        return self._get_time("mtime")

    @mtime_ns.setter
    def mtime_ns(self, ns: int) -> None:
        self._set_time("mtime", ns)

    @property
    def ctime_ns(self) -> int:
        return self._get_time("ctime")

    @ctime_ns.setter
    def ctime_ns(self, ns: int) -> None:
        self._set_time("ctime", ns)

    @property
    def crtime_ns(self) -> int:
        """Creation time; 0 when the inode has no room for it."""
        if not self.has_extra("crtime"):
            return 0
        return self._get_time("crtime")

    @crtime_ns.setter
    def crtime_ns(self, ns: int) -> None:
        if self.has_extra("crtime"):
            self._set_time("crtime", ns)

    def set_times(self, ns: int, atime: bool = False, crtime: bool = False) -> None:
        """mtime = ctime = ``ns``, and atime and crtime too when asked, as the ``*_ns``
        setters store them: what every change of a file's data or a directory's entries
        stamps. The time is encoded once for all of them (each setter encodes it again)
        when the record has room for every extra field, as mkfs makes them."""
        if self.inode_size == GOOD_OLD_INODE_SIZE or self.extra_isize < _CRTIME_X:
            self.mtime_ns = self.ctime_ns = ns
            if atime:
                self.atime_ns = ns
            if crtime:
                self.crtime_ns = ns
            return
        lo, extra = encode_time(ns)
        self.mtime = self.ctime = lo
        self.mtime_extra = self.ctime_extra = extra
        if atime:
            self.atime = lo
            self.atime_extra = extra
        if crtime:
            self.crtime = lo
            self.crtime_extra = extra

    # --- devices -----------------------------------------------------------------

    def stat_times(self) -> tuple[int, int, int, int]:
        """(atime, mtime, ctime, crtime) in nanoseconds, as the four ``*_ns`` properties
        give them, in one call: every GETATTR and LOOKUP reply carries all four."""
        n = self.extra_isize if self.inode_size > GOOD_OLD_INODE_SIZE else 0
        return (
            decode_time(self.atime, self.atime_extra if n >= _ATIME_X else None),
            decode_time(self.mtime, self.mtime_extra if n >= _MTIME_X else None),
            decode_time(self.ctime, self.ctime_extra if n >= _CTIME_X else None),
            decode_time(self.crtime, self.crtime_extra if n >= _CRTIME_X else None)
            if n >= _CRTIME
            else 0,
        )

    @property
    def rdev(self) -> tuple[int, int]:
        """(major, minor) of a device node."""
        return decode_device(self.i_block)

    @rdev.setter
    def rdev(self, dev: tuple[int, int]) -> None:
        self.i_block = encode_device(*dev)

    def __repr__(self) -> str:
        return (
            f"Inode(mode={self.mode:#o}, links={self.links_count}, uid={self.uid}, "
            f"gid={self.gid}, size={self.size}, flags={self.flags:#x}, "
            f"blocks_lo={self.blocks_lo}, extra_isize={self.extra_isize})"
        )


Inode._setup()
